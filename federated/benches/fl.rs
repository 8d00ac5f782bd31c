//! Federated-learning figures that matter to users, printed as a table:
//!
//! 1. round wall time with 10, 100 and 500 agents over loopback QUIC with
//!    mutual TLS (tiny model: logistic regression on digits), and its ratio
//!    to the 10-agent round;
//! 2. protocol bytes per round (frames both ways, without QUIC/TLS
//!    overhead) against the model's raw size;
//! 3. local training throughput (samples/s) of the digits MLP and the small
//!    CNN with candle on the CPU.
//!
//! Run: `cargo bench -p yilian-federated --bench fl`. On a loaded machine,
//! `YILIAN_FL_BENCH_AGENTS=10,100,250` picks other agent counts for part 1.

use std::path::Path;
use std::time::Instant;

use yilian_federated::AgentPolicy;
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::cli::{self, NodeArgs};
use yilian_federated::coordinator::Coordinator;
use yilian_federated::protocol::{Message, WeightsPurpose, encode, weight_messages};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_models::{Dataset, ModelSpec, Optimizer, TrainConfig};

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

async fn round_time(agents: usize, rounds: u32, digits: &Dataset, validation: &Dataset) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("bench").unwrap();
    let coord = ca
        .admit(&AdmissionRequest::new("o", Role::Member, "node"))
        .unwrap();
    let eng = ca
        .admit(&AdmissionRequest::new("o", Role::Engineer, "eng"))
        .unwrap();
    eng.save(&dir.path().join("eng")).unwrap();
    let node = Coordinator::serve(
        "127.0.0.1:0".parse().unwrap(),
        coord,
        RevocationList::default(),
        None,
        &dir.path().join("c"),
    )
    .await
    .unwrap();
    let addr = node.local_addr().unwrap();
    validation
        .write_csv(&dir.path().join("validation.csv"), "y")
        .unwrap();
    let id = format!("bench-{agents}");
    let task = format!(
        r#"id = "{id}"
rounds = {rounds}
agents_per_round = {agents}
min_agents = {agents}
local_epochs = 1
batch_size = 16
validation = "validation.csv"
reward_budget = 1000
round_timeout_ms = 600000
optimizer = {{ sgd = {{ lr = 0.1 }} }}
[model]
input = [64]
layers = [{{ linear = {{ out = 10 }} }}, "softmax"]
[schema]
features = 64
label_column = "y"
classes = 10
"#
    );
    std::fs::write(dir.path().join("task.toml"), task).unwrap();
    let args = NodeArgs {
        node: addr,
        identity: dir.path().join("eng"),
        server_name: "localhost".into(),
    };
    let identities: Vec<Identity> = (0..agents)
        .map(|i| {
            ca.admit(&AdmissionRequest::new("o", Role::Device, format!("d{i}")))
                .unwrap()
        })
        .collect();
    // Each agent holds 20 rows (drawn with overlap when agents are many).
    let shards: Vec<Dataset> = (0..agents)
        .map(|i| {
            digits.subset(
                &(0..20)
                    .map(|k| (i * 20 + k) % digits.len())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    cli::submit(&args, &dir.path().join("task.toml"), None)
        .await
        .unwrap();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (id, data) in identities.into_iter().zip(shards) {
        let cfg = AgentConfig {
            node: addr,
            server_name: "localhost".into(),
            data,
            label_column: "y".into(),
            policy: AgentPolicy::default(),
            single_task: true,
        };
        handles.push(tokio::spawn(
            async move { agent::run(&id, cfg, |_| {}).await },
        ));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(node.history(&id).unwrap().len(), rounds as usize);
    elapsed / f64::from(rounds)
}

fn frame_bytes(messages: &[Message]) -> usize {
    messages.iter().map(|m| encode(m).unwrap().len()).sum()
}

fn throughput(spec: &ModelSpec, data: &Dataset) -> f64 {
    let w = spec.init_weights(1).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 32,
        optimizer: Optimizer::Adam { lr: 0.01 },
        proximal: None,
        seed: 1,
    };
    // Warm up once so allocation and first-call costs are excluded.
    yilian_models::train(spec, &w, &data.subset(&(0..64).collect::<Vec<_>>()), &cfg).unwrap();
    let start = Instant::now();
    let out = yilian_models::train(spec, &w, data, &cfg).unwrap();
    (out.samples * cfg.epochs as usize) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let digits = Dataset::digits(&data_dir().join("digits.csv.gz")).unwrap();
    let (train, validation) = digits.split(0.1, 1);

    println!(
        "== round wall time over loopback QUIC (mutual TLS), logistic regression 64->10 (650 params), 3 rounds"
    );
    let counts: Vec<usize> = std::env::var("YILIAN_FL_BENCH_AGENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![10, 100, 500]);
    let mut base = None;
    for n in counts {
        let t = round_time(n, 3, &train, &validation).await;
        let (first, b) = *base.get_or_insert((n, t));
        println!(
            "{n:>4} agents: {:>8.3} s/round   ({:>5.1}x the {first}-agent round, {:>6.2} ms per agent)",
            t,
            t / b,
            t * 1000.0 / n as f64
        );
    }

    println!("\n== protocol bytes per agent per round vs raw model size (f32)");
    for spec in [
        ModelSpec::logistic_regression(64, 10),
        ModelSpec::mlp(64, 64, 10),
        ModelSpec::small_cnn(8, 10),
        ModelSpec::mlp(64, 1024, 10),
    ] {
        let w = spec.init_weights(0).unwrap();
        let raw = w.len() * 4;
        let mut msgs = vec![Message::RoundStart {
            task_id: "t".into(),
            round: 1,
            config: TrainConfig {
                epochs: 1,
                batch_size: 16,
                optimizer: Optimizer::Sgd { lr: 0.1 },
                proximal: None,
                seed: 1,
            },
        }];
        msgs.extend(weight_messages(WeightsPurpose::Global, 1, &w));
        msgs.extend(weight_messages(WeightsPurpose::Update, 1, &w));
        msgs.push(Message::UpdateDone {
            round: 1,
            samples: 100,
            loss: 0.5,
        });
        msgs.push(Message::RoundResult {
            round: 1,
            accuracy: 0.9,
            contribution: 0.01,
            reward: 10,
            proof: None,
        });
        let bytes = frame_bytes(&msgs);
        println!(
            "{:>8} params: raw model {:>9} B, per round (down + up) {:>9} B = {:.3}x of 2 raw copies",
            w.len(),
            raw,
            bytes,
            bytes as f64 / (2 * raw) as f64
        );
    }

    println!(
        "\n== local training throughput with candle (CPU, Adam, batch 32, {} samples, 2 epochs)",
        train.len()
    );
    let mlp = throughput(&ModelSpec::mlp(64, 64, 10), &train);
    let cnn = throughput(&ModelSpec::small_cnn(8, 10), &train);
    println!("digits MLP 64-64-10: {mlp:>10.0} samples/s");
    println!(
        "small CNN (conv 8x3x3, pool 2, 32, 10): {cnn:>10.0} samples/s ({:.2}x the MLP)",
        cnn / mlp
    );
}
