//! The devnet's learning act: about ten agents holding non-IID shares of
//! the digits data train an MLP through a running coordinator over QUIC,
//! under secure aggregation, so the coordinator learns only sums over
//! groups of five. The engineer submits, follows and downloads through the
//! node's gRPC control plane; per-round accuracy shows on a progress bar,
//! rewards are listed, and one agent predicts with the exported ONNX model.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use yilian_identity::Identity;
use yilian_models::{Dataset, OnnxModel};

use yilian_federated::agent::{AgentConfig, EarnedReward};
use yilian_federated::client::{self, Endpoint};
use yilian_federated::{AgentPolicy, pb};

use crate::cli::task::{phase_text, print_history};

/// What the act did.
#[derive(Debug)]
pub struct ActReport {
    pub task_id: String,
    pub history: Vec<pb::Round>,
    /// Per device (in the order given): rewards earned.
    pub rewards: Vec<Vec<EarnedReward>>,
    /// Accuracy of the exported ONNX model, run by the first agent with
    /// tract on held-out digits.
    pub onnx_accuracy: f64,
    pub onnx_path: PathBuf,
}

/// Runs the act against the node at `grpc` whose coordinator is at `node`
/// (QUIC). `engineer` and
/// `devices` are identity directories already admitted to the network
/// (roles engineer and device); `data_dir` holds `digits.csv.gz`.
pub async fn act(
    grpc: &str,
    node: SocketAddr,
    engineer: &Path,
    devices: &[PathBuf],
    data_dir: &Path,
    work_dir: &Path,
    rounds: u32,
) -> anyhow::Result<ActReport> {
    std::fs::create_dir_all(work_dir)?;
    let all = Dataset::digits(&data_dir.join("digits.csv.gz"))?;
    let (rest, test) = all.split(0.2, 42);
    let (train, validation) = rest.split(0.125, 43);
    let shards = train.partition_dirichlet(devices.len(), 0.5, 3)?;
    validation.write_csv(&work_dir.join("validation.csv"), "y")?;
    let task_id = format!("devnet-digits-{}", std::process::id());
    let n = devices.len();
    let task = format!(
        r#"id = "{task_id}"
rounds = {rounds}
agents_per_round = {n}
min_agents = {min}
local_epochs = 2
batch_size = 16
validation = "validation.csv"
reward_budget = 100000
round_timeout_ms = 60000
optimizer = {{ adam = {{ lr = 0.01 }} }}
strategy = {{ fed_prox = {{ mu = 0.01 }} }}
robust = "none"
secure_aggregation = true

[secagg]
clip = 50.0
min_group = 5

[model]
input = [64]
layers = [{{ linear = {{ out = 64 }} }}, "relu", {{ linear = {{ out = 10 }} }}, "softmax"]

[schema]
features = 64
label_column = "y"
classes = 10
"#,
        min = (n * 7).div_ceil(10).max(1),
    );
    let task_path = work_dir.join("task.toml");
    std::fs::write(&task_path, task)?;
    let eng = Endpoint {
        node: grpc.to_owned(),
        identity: engineer.to_owned(),
    };
    let submitted = client::submit(&eng, &task_path, None).await?;
    println!(
        "learning act: task {task_id} (ledger entry {}), {n} agents with non-IID digits \
         (Dirichlet 0.5), MLP 64-64-10, secure aggregation in groups of at least 5",
        submitted.ledger_index
    );

    let bar = ProgressBar::new(u64::from(rounds));
    bar.set_style(
        ProgressStyle::with_template("round {pos}/{len} {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The engineer follows the task over gRPC while the devices train.
    let watcher = {
        let (eng, task_id, bar) = (eng.clone(), task_id.clone(), bar.clone());
        tokio::spawn(async move {
            client::watch(&eng, &task_id, |e| {
                if let Some(pb::task_event::Event::Closed(r)) = &e.event {
                    bar.set_position(u64::from(r.round) + 1);
                    bar.set_message(format!("validation accuracy {:.3}", r.accuracy));
                }
            })
            .await
        })
    };
    let mut handles = Vec::new();
    for (dir, shard) in devices.iter().zip(shards) {
        let identity =
            Identity::load(dir).with_context(|| format!("device identity {}", dir.display()))?;
        handles.push(tokio::spawn(async move {
            let cfg = AgentConfig {
                node,
                server_name: "localhost".into(),
                data: shard,
                label_column: "y".into(),
                policy: AgentPolicy::default(),
                single_task: true,
                earlier_today: Default::default(),
            };
            yilian_federated::agent::run(&identity, cfg, |_| {}).await
        }));
    }
    let mut rewards = Vec::new();
    for h in handles {
        rewards.push(h.await??);
    }
    let ended = watcher.await??;
    bar.finish();
    anyhow::ensure!(
        ended.phase() == pb::TaskPhase::Finished,
        "the task ended {}",
        phase_text(ended.phase())
    );
    let history = client::status(&eng, &task_id).await?.history;
    print_history(&history);
    println!("rewards earned (units):");
    for (dir, r) in devices.iter().zip(&rewards) {
        let total: u64 = r.iter().map(|e| e.amount).sum();
        println!(
            "  {:<24} {total:>8}",
            dir.file_name()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        );
    }
    let (spec, weights) = client::download_model(&eng, &task_id).await?;
    let onnx_path = work_dir.join("model.onnx");
    std::fs::write(&onnx_path, yilian_models::to_onnx(&spec, &weights)?)?;
    yilian_models::save_safetensors(&work_dir.join("model.safetensors"), &spec, &weights)?;
    let model = OnnxModel::from_path(&onnx_path)?;
    let predicted = model.classify(&test.features)?;
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    let onnx_accuracy = correct as f64 / test.len() as f64;
    println!(
        "agent 1 predicted {} held-out digits with the exported ONNX model (tract): accuracy {onnx_accuracy:.3}",
        test.len()
    );
    Ok(ActReport {
        task_id,
        history,
        rewards,
        onnx_accuracy,
        onnx_path,
    })
}
