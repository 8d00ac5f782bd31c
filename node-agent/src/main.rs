//! The `yilian-agent` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use yilian_federated::AgentPolicy;
use yilian_federated::agent::{AgentConfig, AgentEvent};
use yilian_identity::Identity;
use yilian_node_agent::{AgentFile, load_data, predict};

#[derive(Parser)]
#[command(
    name = "yilian-agent",
    version,
    about = "Train or evaluate models on your own data for a Yilian network; your data never leaves this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join a node's federated tasks that match your data and policy.
    Join {
        /// Configuration file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        node: Option<SocketAddr>,
        /// Directory with cert.pem, key.pem and ca.pem from the admission authority.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// CSV with a header; one row per example.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        label_column: Option<String>,
        /// Number of classes (default: one more than the largest label).
        #[arg(long)]
        classes: Option<usize>,
        #[arg(long)]
        server_name: Option<String>,
        #[arg(long)]
        max_threads: Option<u32>,
        #[arg(long)]
        max_epochs: Option<u32>,
        /// Largest model (parameters) this device will train or evaluate.
        #[arg(long)]
        max_params: Option<u64>,
        /// Largest ONNX file (bytes) this device will download for an evaluation.
        #[arg(long)]
        max_model_bytes: Option<u64>,
        /// Leave after the first task finishes.
        #[arg(long)]
        once: bool,
    },
    /// Run an exported ONNX model on rows of a CSV, locally, with tract.
    Predict {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// If the CSV holds true labels in this column, report accuracy.
        #[arg(long)]
        label_column: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Join {
            config,
            node,
            identity,
            data,
            label_column,
            classes,
            server_name,
            max_threads,
            max_epochs,
            max_params,
            max_model_bytes,
            once,
        } => {
            let file = config
                .as_deref()
                .map(AgentFile::load)
                .transpose()?
                .unwrap_or_default();
            let node = node.or(file.node).context("--node is required")?;
            let identity_dir = identity
                .or(file.identity)
                .context("--identity is required")?;
            let data_path = data.or(file.data).context("--data is required")?;
            let label = label_column
                .or(file.label_column)
                .context("--label-column is required")?;
            let mut policy = file.policy.unwrap_or_default();
            policy.max_threads = max_threads.unwrap_or(policy.max_threads);
            policy.max_epochs = max_epochs.unwrap_or(policy.max_epochs);
            policy.max_params = max_params.unwrap_or(policy.max_params);
            policy.max_model_bytes = max_model_bytes.unwrap_or(policy.max_model_bytes);
            join(
                node,
                identity_dir,
                data_path,
                label,
                classes.or(file.classes),
                server_name
                    .or(file.server_name)
                    .unwrap_or_else(|| "localhost".into()),
                policy,
                once,
            )
            .await
        }
        Command::Predict {
            model,
            input,
            label_column,
        } => {
            let p = predict(&model, &input, label_column.as_deref())?;
            for (i, (c, probs)) in p.classes.iter().zip(&p.probabilities).enumerate() {
                let conf = probs.get(*c).copied().unwrap_or(0.0);
                println!("row {i}: class {c} (p = {conf:.3})");
            }
            if let Some(a) = p.accuracy {
                println!("accuracy {a:.4} on {} rows", p.classes.len());
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn join(
    node: SocketAddr,
    identity_dir: PathBuf,
    data_path: PathBuf,
    label: String,
    classes: Option<usize>,
    server_name: String,
    policy: AgentPolicy,
    once: bool,
) -> anyhow::Result<()> {
    let identity = Identity::load(&identity_dir)
        .with_context(|| format!("loading identity from {}", identity_dir.display()))?;
    let data = load_data(&data_path, &label, classes)?;
    // Bound the CPU the device lends: candle's kernels run on rayon's pool.
    let _ = rayon_threads(policy.max_threads);
    println!(
        "joining {node} as {} with {} rows of {} features",
        identity.principal(),
        data.len(),
        data.n_features
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} round {pos}/{len} {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cfg = AgentConfig {
        node,
        server_name,
        data,
        label_column: label,
        policy,
        single_task: once,
    };
    let rewards = yilian_federated::agent::run(&identity, cfg, |e| match e {
        AgentEvent::Joined { task_id, rounds } => {
            bar.set_prefix(task_id);
            bar.set_length(u64::from(rounds));
            bar.set_position(0);
        }
        AgentEvent::Declined { task_id, reason } => {
            bar.println(format!("declined task {task_id}: {reason}"))
        }
        AgentEvent::Training { round } => bar.set_message(format!("training round {round}")),
        AgentEvent::Sent {
            round,
            samples,
            loss,
        } => bar.set_message(format!(
            "round {round}: sent update ({samples} samples, loss {loss:.4})"
        )),
        AgentEvent::Rejected { round, reason } => {
            bar.println(format!("round {round}: update rejected: {reason}"))
        }
        AgentEvent::RoundResult {
            round,
            accuracy,
            reward,
            ..
        } => {
            bar.set_position(u64::from(round) + 1);
            bar.set_message(format!("global accuracy {accuracy:.3}, reward {reward}"));
        }
        AgentEvent::Done { task_id } => bar.println(format!("task {task_id} finished")),
        AgentEvent::Evaluating { task_id } => {
            bar.set_prefix(task_id);
            bar.set_message("waiting for the model to evaluate");
        }
        AgentEvent::Reported {
            task_id,
            samples,
            correct,
        } => bar.println(format!(
            "evaluation {task_id}: sent counts only ({correct} of {samples} local examples right)"
        )),
    })
    .await?;
    bar.finish();
    println!("rewards earned:");
    for r in &rewards {
        let at = r.ledger_index.map_or_else(
            || "not on the ledger".to_owned(),
            |i| format!("ledger entry {i}"),
        );
        println!(
            "  task {} round {}: {} units (contribution {:.4}; {at})",
            r.task_id, r.round, r.amount, r.contribution
        );
    }
    Ok(())
}

fn rayon_threads(n: u32) -> anyhow::Result<()> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1) as usize)
        .build_global()?)
}
