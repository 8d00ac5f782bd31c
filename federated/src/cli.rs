//! `yilian task ...`: the ML engineer's commands, spoken over the same QUIC
//! protocol as agents with the engineer's admitted certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use yilian_identity::Identity;
use yilian_models::ModelSpec;

use crate::agent::{client_endpoint, connect};
use crate::coordinator::next_message;
use crate::protocol::{ChunkAssembler, Message, model_chunk_count, model_chunks};
use crate::{EvaluationResult, RoundRecord, TaskFile};

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
    /// Submit a task described by a TOML file: training (the default) or,
    /// with `kind = "evaluation"`, an evaluation of an ONNX model.
    Submit {
        task: PathBuf,
        /// Initial weights (safetensors) of a training task; overrides
        /// `initial_weights` in the file.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Per-round accuracy, loss, participants and rewards; for an
    /// evaluation, the aggregate accuracy, mean loss and confusion matrix.
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
            TaskCommand::Status { task_id, node } => match task_status(&node, &task_id).await? {
                TaskStatus::Training {
                    phase,
                    rounds,
                    history,
                } => {
                    println!(
                        "task {task_id}: {phase} ({} of {rounds} rounds done)",
                        history.len()
                    );
                    print_history(&history);
                }
                TaskStatus::Evaluation { phase, result } => {
                    println!("evaluation {task_id}: {phase}");
                    if let Some(r) = result {
                        print_evaluation(&r);
                    }
                }
            },
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

/// Prints a status table; epsilon is shown once a task spends privacy.
pub fn print_history(history: &[RoundRecord]) {
    let dp = history.iter().any(|r| r.epsilon.is_some());
    println!(
        "{:>5} {:>9} {:>8} {:>12} {:>8}{}",
        "round",
        "accuracy",
        "loss",
        "participants",
        "rewards",
        if dp { "  epsilon" } else { "" }
    );
    for r in history {
        let eps = r.epsilon.map(|e| format!(" {e:>8.3}")).unwrap_or_default();
        println!(
            "{:>5} {:>9.4} {:>8.4} {:>12} {:>8}{eps}",
            r.round,
            r.accuracy,
            r.loss,
            r.participants.len(),
            r.rewards.iter().sum::<u64>()
        );
        for f in &r.failures {
            println!("      group failed: {f}");
        }
    }
}

/// Prints an evaluation's aggregate and its confusion matrix.
pub fn print_evaluation(r: &EvaluationResult) {
    println!(
        "{} samples from {} agents ({} missing): accuracy {:.4}, mean loss {:.4}",
        r.samples,
        r.participants.len(),
        r.missing.len(),
        r.accuracy,
        r.loss
    );
    println!("confusion matrix (rows: true class, columns: predicted class)");
    let width = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(r.confusion.len().to_string().len());
    print!("{:>5}", "");
    for c in 0..r.confusion.len() {
        print!(" {c:>width$}");
    }
    println!();
    for (t, row) in r.confusion.iter().enumerate() {
        print!("{t:>5}");
        for n in row {
            print!(" {n:>width$}");
        }
        println!();
    }
}

/// What `status` reports for either kind of task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskStatus {
    Training {
        phase: String,
        rounds: u32,
        history: Vec<RoundRecord>,
    },
    Evaluation {
        phase: String,
        result: Option<EvaluationResult>,
    },
}

async fn request(
    node: &NodeArgs,
    first: Message,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, quinn::RecvStream)> {
    request_all(node, vec![first]).await
}

/// Opens a connection and sends `messages`, in order.
async fn request_all(
    node: &NodeArgs,
    messages: Vec<Message>,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, quinn::RecvStream)> {
    let identity = Identity::load(&node.identity)
        .with_context(|| format!("loading identity from {}", node.identity.display()))?;
    let endpoint = client_endpoint(&identity)?;
    let (conn, tx, recv) = connect(&endpoint, node.node, &node.server_name).await?;
    for m in messages {
        tx.send(m)
            .map_err(|_| anyhow::anyhow!("connection closed"))?;
    }
    Ok((endpoint, conn, recv))
}

/// Submits a task file. A training task's validation set and initial
/// weights, and an evaluation's ONNX model, are read relative to the file.
pub async fn submit(
    node: &NodeArgs,
    task_file: &Path,
    weights: Option<&Path>,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(task_file)
        .with_context(|| format!("reading {}", task_file.display()))?;
    let base = task_file.parent().unwrap_or(Path::new("."));
    let task = match TaskFile::from_toml(&text)? {
        TaskFile::Training(t) => t,
        TaskFile::Evaluation(e) => {
            if weights.is_some() {
                bail!("an evaluation task takes no initial weights");
            }
            let path = base.join(&e.model);
            let model =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut messages = vec![Message::SubmitEvaluation {
                task_toml: text,
                bytes: model.len() as u64,
                chunks: model_chunk_count(model.len()),
            }];
            messages.extend(model_chunks(&model));
            let (_ep, conn, mut recv) = request_all(node, messages).await?;
            return accepted(&conn, next_message(&mut recv).await?);
        }
    };
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
    accepted(&conn, next_message(&mut recv).await?)
}

fn accepted(conn: &quinn::Connection, reply: Option<Message>) -> anyhow::Result<String> {
    conn.close(0u32.into(), b"done");
    match reply {
        Some(Message::TaskAccepted { task_id, .. }) => Ok(task_id),
        Some(Message::Refused { reason }) => bail!("task refused: {reason}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

/// A training task's phase, round count and closed rounds.
pub async fn status(
    node: &NodeArgs,
    task_id: &str,
) -> anyhow::Result<(String, u32, Vec<RoundRecord>)> {
    match task_status(node, task_id).await? {
        TaskStatus::Training {
            phase,
            rounds,
            history,
        } => Ok((phase, rounds, history)),
        TaskStatus::Evaluation { .. } => bail!("task {task_id} is an evaluation"),
    }
}

/// The status of a task of either kind.
pub async fn task_status(node: &NodeArgs, task_id: &str) -> anyhow::Result<TaskStatus> {
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
        }) => Ok(TaskStatus::Training {
            phase,
            rounds,
            history,
        }),
        Some(Message::EvaluationStatus { phase, result, .. }) => {
            Ok(TaskStatus::Evaluation { phase, result })
        }
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
