//! `yilian task ...`: the ML engineer's commands, spoken over the same QUIC
//! protocol as agents with the engineer's admitted certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use yilian_identity::Identity;
use yilian_models::ModelSpec;

use crate::agent::{client_endpoint, connect};
use crate::coordinator::next_message;
use crate::protocol::{ChunkAssembler, Message};
use crate::{RoundRecord, TaskSpec};

/// How to reach the coordinator.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's federated (QUIC) address.
    #[arg(long, env = "YILIAN_FL_NODE")]
    pub node: SocketAddr,
    /// Directory holding the engineer's cert.pem, key.pem and ca.pem.
    #[arg(long, env = "YILIAN_IDENTITY")]
    pub identity: PathBuf,
    /// Name in the node's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a training task described by a TOML file.
    Submit {
        task: PathBuf,
        /// Initial weights (safetensors); overrides `initial_weights` in the file.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Per-round accuracy, loss, participants and rewards.
    Status {
        task_id: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Save the global model as `<out>/<task>.safetensors` and `<out>/<task>.onnx`.
    Download {
        task_id: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
}

impl TaskCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            TaskCommand::Submit {
                task,
                weights,
                node,
            } => {
                let id = submit(&node, &task, weights.as_deref()).await?;
                println!("task {id} submitted");
            }
            TaskCommand::Status { task_id, node } => {
                let (phase, rounds, history) = status(&node, &task_id).await?;
                println!(
                    "task {task_id}: {phase} ({} of {rounds} rounds done)",
                    history.len()
                );
                print_history(&history);
            }
            TaskCommand::Download { task_id, out, node } => {
                let (spec, weights) = download(&node, &task_id).await?;
                std::fs::create_dir_all(&out)?;
                let st = out.join(format!("{task_id}.safetensors"));
                let onnx = out.join(format!("{task_id}.onnx"));
                yilian_models::save_safetensors(&st, &spec, &weights)?;
                std::fs::write(&onnx, yilian_models::to_onnx(&spec, &weights)?)?;
                println!("wrote {} and {}", st.display(), onnx.display());
            }
        }
        Ok(())
    }
}

/// Prints a status table.
pub fn print_history(history: &[RoundRecord]) {
    println!(
        "{:>5} {:>9} {:>8} {:>12} {:>8}",
        "round", "accuracy", "loss", "participants", "rewards"
    );
    for r in history {
        println!(
            "{:>5} {:>9.4} {:>8.4} {:>12} {:>8}",
            r.round,
            r.accuracy,
            r.loss,
            r.participants.len(),
            r.rewards.iter().sum::<u64>()
        );
    }
}

async fn request(
    node: &NodeArgs,
    first: Message,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, quinn::RecvStream)> {
    let identity = Identity::load(&node.identity)
        .with_context(|| format!("loading identity from {}", node.identity.display()))?;
    let endpoint = client_endpoint(&identity)?;
    let (conn, tx, recv) = connect(&endpoint, node.node, &node.server_name).await?;
    tx.send(first)
        .map_err(|_| anyhow::anyhow!("connection closed"))?;
    Ok((endpoint, conn, recv))
}

/// Submits a task file; the validation set path in it is read relative to the file.
pub async fn submit(
    node: &NodeArgs,
    task_file: &Path,
    weights: Option<&Path>,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(task_file)
        .with_context(|| format!("reading {}", task_file.display()))?;
    let task = TaskSpec::from_toml(&text)?;
    let base = task_file.parent().unwrap_or(Path::new("."));
    let validation = base.join(&task.validation);
    let validation_csv = std::fs::read(&validation)
        .with_context(|| format!("reading validation set {}", validation.display()))?;
    let weights_path = weights
        .map(Path::to_path_buf)
        .or_else(|| task.initial_weights.as_ref().map(|p| base.join(p)));
    let initial_weights = weights_path.map(std::fs::read).transpose()?;
    let (_ep, conn, mut recv) = request(
        node,
        Message::SubmitTask {
            task_toml: text,
            validation_csv,
            initial_weights,
        },
    )
    .await?;
    let reply = next_message(&mut recv).await?;
    conn.close(0u32.into(), b"done");
    match reply {
        Some(Message::TaskAccepted { task_id, .. }) => Ok(task_id),
        Some(Message::Refused { reason }) => bail!("task refused: {reason}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

pub async fn status(
    node: &NodeArgs,
    task_id: &str,
) -> anyhow::Result<(String, u32, Vec<RoundRecord>)> {
    let (_ep, conn, mut recv) = request(
        node,
        Message::StatusRequest {
            task_id: task_id.into(),
        },
    )
    .await?;
    let reply = next_message(&mut recv).await?;
    conn.close(0u32.into(), b"done");
    match reply {
        Some(Message::Status {
            phase,
            rounds,
            history,
            ..
        }) => Ok((phase, rounds, history)),
        Some(Message::Refused { reason }) => bail!("{reason}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

pub async fn download(node: &NodeArgs, task_id: &str) -> anyhow::Result<(ModelSpec, Vec<f32>)> {
    let (_ep, conn, mut recv) = request(
        node,
        Message::DownloadRequest {
            task_id: task_id.into(),
        },
    )
    .await?;
    let spec = match next_message(&mut recv).await? {
        Some(Message::Model { model, .. }) => model,
        Some(Message::Refused { reason }) => bail!("{reason}"),
        other => bail!("unexpected reply: {other:?}"),
    };
    let params = spec.param_count()?;
    let mut asm = None;
    while let Some(m) = next_message(&mut recv).await? {
        match m {
            Message::WeightsHeader {
                round,
                values,
                chunks,
                ..
            } => {
                asm = Some(ChunkAssembler::new(round, values, chunks, params)?);
            }
            Message::WeightsChunk {
                round,
                index,
                values,
            } => {
                let a = asm.as_mut().context("weights before their header")?;
                if let Some(w) = a.push(round, index, values)? {
                    conn.close(0u32.into(), b"done");
                    return Ok((spec, w));
                }
            }
            other => bail!("unexpected message: {other:?}"),
        }
    }
    bail!("connection closed before the model arrived")
}
