//! The `yilian-agent` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use yilian_federated::agent::{AgentConfig, AgentEvent};
use yilian_federated::schedule::DailyBytes;
use yilian_federated::{AgentPolicy, FlError};
use yilian_identity::Identity;
use yilian_node_agent::{AgentFile, Status, load_data, predict, status_report};

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
    /// Join a node's federated tasks that match your data and policy, and
    /// stay: a lost connection is retried, a spent byte budget waits for
    /// the next UTC day.
    Join {
        /// Configuration file (agent.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the status is kept (default: agent-state beside the config).
        #[arg(long)]
        state: Option<PathBuf>,
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
        /// Leave after the first task finishes, or when the byte budget is spent.
        #[arg(long)]
        once: bool,
    },
    /// What this device has done: tasks joined, rounds trained, bytes sent
    /// and received, and rewards, each proof checked again.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state directory, if not the config's.
        #[arg(long)]
        state: Option<PathBuf>,
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
            state,
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
            let state = state
                .or(file.state)
                .unwrap_or_else(|| PathBuf::from("agent-state"));
            let mut policy = file.policy.unwrap_or_default();
            policy.max_threads = max_threads.unwrap_or(policy.max_threads);
            policy.max_epochs = max_epochs.unwrap_or(policy.max_epochs);
            policy.max_params = max_params.unwrap_or(policy.max_params);
            policy.max_model_bytes = max_model_bytes.unwrap_or(policy.max_model_bytes);
            join(
                Session {
                    node,
                    server_name: server_name
                        .or(file.server_name)
                        .unwrap_or_else(|| "localhost".into()),
                    label,
                    classes: classes.or(file.classes),
                    policy,
                    once,
                },
                &identity_dir,
                &data_path,
                &state,
            )
            .await
        }
        Command::Status { config, state } => {
            let file = config
                .as_deref()
                .map(AgentFile::load)
                .transpose()?
                .unwrap_or_default();
            let state = state
                .or(file.state)
                .unwrap_or_else(|| PathBuf::from("agent-state"));
            print!("{}", status_report(&state, now_unix())?);
            Ok(())
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

/// What one connection to the node needs, besides the identity and data.
struct Session {
    node: SocketAddr,
    server_name: String,
    label: String,
    classes: Option<usize>,
    policy: AgentPolicy,
    once: bool,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints a line beside the bar, or alone when the bar is hidden (not a
/// terminal: a service's log).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

async fn join(
    s: Session,
    identity_dir: &Path,
    data_path: &Path,
    state: &Path,
) -> anyhow::Result<()> {
    let identity = Identity::load(identity_dir)
        .with_context(|| format!("loading identity from {}", identity_dir.display()))?;
    let data = load_data(data_path, &s.label, s.classes)?;
    // Bound the CPU the device lends: candle's kernels run on rayon's pool.
    let _ = rayon_threads(s.policy.max_threads);
    let mut status = Status::load(state)?;
    status.account = hex::encode(identity.principal().public_key);
    status.node = s.node.to_string();
    println!(
        "joining {} as {} with {} rows of {} features; status in {}",
        s.node,
        identity.principal(),
        data.len(),
        data.n_features,
        state.display()
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} round {pos}/{len} {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut retry = Duration::from_secs(1);
    loop {
        status.new_session();
        status.state = format!("connecting to {}", s.node);
        status.save(state)?;
        let cfg = AgentConfig {
            node: s.node,
            server_name: s.server_name.clone(),
            data: data.clone(),
            label_column: s.label.clone(),
            policy: s.policy.clone(),
            single_task: s.once,
            earlier_today: status.today,
        };
        let mut saved = Ok(());
        let outcome = yilian_federated::agent::run(&identity, cfg, |e| {
            show(&bar, &e);
            status.record(&e, now_unix());
            // A status that cannot be written stops the agent below.
            if saved.is_ok() {
                saved = status.save(state);
            }
        })
        .await;
        saved?;
        match outcome {
            Ok(_) if s.once => break,
            Ok(_) => {
                status.state = "the node closed the connection; reconnecting".into();
                retry = Duration::from_secs(1);
            }
            Err(FlError::Paused(pause)) => {
                say(&bar, format!("stopped: {pause}"));
                if s.once {
                    status.state = format!("stopped: {pause}");
                    status.save(state)?;
                    bar.finish();
                    anyhow::bail!("{pause}");
                }
                let wait = DailyBytes::until_tomorrow(now_unix());
                status.state = format!("stopped until 00:00 UTC: {pause}");
                status.save(state)?;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            Err(
                e @ (FlError::Connection(_)
                | FlError::Connect(_)
                | FlError::ConnectionClosed
                | FlError::Read(_)
                | FlError::TruncatedFrame),
            ) => {
                say(
                    &bar,
                    format!("connection lost ({e}); retrying in {retry:?}"),
                );
                status.state = format!("connection lost: {e}");
            }
            Err(e) => {
                status.state = format!("stopped: {e}");
                status.save(state)?;
                bar.finish();
                return Err(e.into());
            }
        }
        status.save(state)?;
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(30));
    }
    bar.finish();
    status.state = "left after the task finished".into();
    status.save(state)?;
    println!("rewards earned:");
    for r in &status.rewards {
        let at = r.proof.as_ref().map_or_else(
            || "not on the ledger".to_owned(),
            |p| format!("ledger entry {}", p.index),
        );
        println!(
            "  task {} round {}: {} units (contribution {:.4}; {at})",
            r.task_id, r.round, r.amount, r.contribution
        );
    }
    Ok(())
}

fn show(bar: &ProgressBar, e: &AgentEvent) {
    match e {
        AgentEvent::Joined { task_id, rounds } => {
            bar.set_prefix(task_id.clone());
            bar.set_length(u64::from(*rounds));
            bar.set_position(0);
            say(bar, format!("joined task {task_id} ({rounds} rounds)"));
        }
        AgentEvent::Declined { task_id, reason } => {
            say(bar, format!("declined task {task_id}: {reason}"))
        }
        AgentEvent::Training { round } => bar.set_message(format!("training round {round}")),
        AgentEvent::Sent {
            round,
            samples,
            loss,
        } => bar.set_message(format!(
            "round {round}: sent update ({samples} samples, loss {loss:.4})"
        )),
        AgentEvent::Paused { round, reason } => {
            say(bar, format!("sat out round {round}: {reason}"))
        }
        AgentEvent::Rejected { round, reason } => {
            say(bar, format!("round {round}: update rejected: {reason}"))
        }
        AgentEvent::RoundResult {
            round,
            accuracy,
            reward,
            ..
        } => {
            bar.set_position(u64::from(*round) + 1);
            bar.set_message(format!("global accuracy {accuracy:.3}, reward {reward}"));
        }
        AgentEvent::Done { task_id } => say(bar, format!("task {task_id} finished")),
        AgentEvent::Evaluating { task_id } => {
            bar.set_prefix(task_id.clone());
            bar.set_message("waiting for the model to evaluate");
        }
        AgentEvent::Reported {
            task_id,
            samples,
            correct,
        } => say(
            bar,
            format!(
                "evaluation {task_id}: sent counts only ({correct} of {samples} local examples right)"
            ),
        ),
        _ => {}
    }
}

fn rayon_threads(n: u32) -> anyhow::Result<()> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1) as usize)
        .build_global()?)
}
