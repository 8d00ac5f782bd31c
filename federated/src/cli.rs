//! `yilian task ...`: the ML engineer's commands, spoken to a node's gRPC
//! control plane (`proto/federated.proto`) with the engineer's admitted
//! certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use yilian_identity::Identity;
use yilian_models::ModelSpec;

use crate::TaskFile;
use crate::pb;
use crate::pb::federated_client::FederatedClient;

/// How to reach a node.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's gRPC address (`host:port`).
    #[arg(long, env = "YILIAN_NODE")]
    pub node: String,
    /// Directory holding the engineer's cert.pem, key.pem and ca.pem.
    #[arg(long, env = "YILIAN_IDENTITY")]
    pub identity: PathBuf,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Safetensors,
    Onnx,
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
    /// Per-round accuracy, loss, participants, rewards and epsilon, and each
    /// agent's contribution; for an evaluation, the aggregate accuracy, mean
    /// loss and confusion matrix.
    Status {
        task_id: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Follow a training task: each round as it starts and closes, until it ends.
    Watch {
        task_id: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Save the global model as `<out>/<task>.safetensors` and `<out>/<task>.onnx`
    /// (or only the `--format` given).
    Download {
        task_id: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, value_enum)]
        format: Option<Format>,
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
                let r = submit(&node, &task, weights.as_deref()).await?;
                println!(
                    "task {} submitted ({} parameters, ledger entry {})",
                    r.task_id, r.params, r.ledger_index
                );
            }
            TaskCommand::Status { task_id, node } => {
                print_status(&task_status(&node, &task_id).await?);
            }
            TaskCommand::Watch { task_id, node } => {
                watch(&node, &task_id, |e| println!("{}", event_line(e))).await?;
            }
            TaskCommand::Download {
                task_id,
                out,
                format,
                node,
            } => {
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                let formats = match format {
                    Some(f) => vec![f],
                    None => vec![Format::Safetensors, Format::Onnx],
                };
                for f in formats {
                    let (ext, pf) = match f {
                        Format::Safetensors => ("safetensors", pb::ModelFormat::Safetensors),
                        Format::Onnx => ("onnx", pb::ModelFormat::Onnx),
                    };
                    let (rounds, bytes) = download(&node, &task_id, pf).await?;
                    let path = out.join(format!("{task_id}.{ext}"));
                    std::fs::write(&path, bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {} (after {rounds} rounds)", path.display());
                }
            }
        }
        Ok(())
    }
}

/// A node's refusal, as the user reads it: the node's message says what to change.
fn refused(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn client(node: &NodeArgs) -> anyhow::Result<FederatedClient<Channel>> {
    let identity = Identity::load(&node.identity)
        .with_context(|| format!("cannot load the identity in {}", node.identity.display()))?;
    let channel = yilian_identity::grpc::connect(&node.node, &identity).await?;
    Ok(FederatedClient::new(channel))
}

/// Submits a task file. A training task's validation set and initial
/// weights, and an evaluation's ONNX model, are read relative to the file.
pub async fn submit(
    node: &NodeArgs,
    task_file: &Path,
    weights: Option<&Path>,
) -> anyhow::Result<pb::SubmitTaskResponse> {
    let text = std::fs::read_to_string(task_file)
        .with_context(|| format!("cannot read {}", task_file.display()))?;
    let base = task_file.parent().unwrap_or(Path::new("."));
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let task = match TaskFile::from_toml(&text)
        .with_context(|| format!("{} is not a valid task file", task_file.display()))?
    {
        TaskFile::Training(t) => t,
        TaskFile::Evaluation(e) => {
            if weights.is_some() {
                bail!("--weights: an evaluation task takes no initial weights; drop the flag");
            }
            let model = read(&base.join(&e.model))?;
            return submit_evaluation(node, text, model).await;
        }
    };
    let validation_csv = read(&base.join(&task.validation))?;
    let weights_path = weights
        .map(Path::to_path_buf)
        .or_else(|| task.initial_weights.as_ref().map(|p| base.join(p)));
    let initial_weights = weights_path.as_deref().map(read).transpose()?;
    client(node)
        .await?
        .submit_task(pb::SubmitTaskRequest {
            task_toml: text,
            validation_csv,
            initial_weights: initial_weights.unwrap_or_default(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

async fn submit_evaluation(
    node: &NodeArgs,
    task_toml: String,
    model: Vec<u8>,
) -> anyhow::Result<pb::SubmitTaskResponse> {
    use pb::submit_evaluation_request::Part;
    let mut parts = vec![pb::SubmitEvaluationRequest {
        part: Some(Part::Header(pb::EvaluationHeader {
            task_toml,
            model_bytes: model.len() as u64,
        })),
    }];
    parts.extend(
        model
            .chunks(crate::protocol::CHUNK_BYTES)
            .map(|c| pb::SubmitEvaluationRequest {
                part: Some(Part::ModelChunk(c.to_vec())),
            }),
    );
    client(node)
        .await?
        .submit_evaluation(tokio_stream::iter(parts))
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

/// The status of a task of either kind.
pub async fn task_status(node: &NodeArgs, task_id: &str) -> anyhow::Result<pb::TaskStatusResponse> {
    client(node)
        .await?
        .task_status(pb::TaskStatusRequest {
            task_id: task_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

/// A training task's status.
pub async fn status(node: &NodeArgs, task_id: &str) -> anyhow::Result<pb::TrainingStatus> {
    match task_status(node, task_id).await?.kind {
        Some(pb::task_status_response::Kind::Training(t)) => Ok(t),
        _ => bail!("task {task_id} is an evaluation; its status has no rounds"),
    }
}

/// Follows a training task, calling `on_event` for each event, until it
/// ends; returns how it ended.
pub async fn watch(
    node: &NodeArgs,
    task_id: &str,
    mut on_event: impl FnMut(&pb::TaskEvent),
) -> anyhow::Result<pb::TaskEnded> {
    let mut events = client(node)
        .await?
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.into(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    while let Some(e) = events.message().await.map_err(refused)? {
        on_event(&e);
        if let Some(pb::task_event::Event::Ended(end)) = e.event {
            return Ok(end);
        }
    }
    bail!("the node closed the stream before task {task_id} ended; watch it again")
}

/// The global model's file in `format`, checked against its announced
/// size and SHA-256, with the rounds closed into it.
pub async fn download(
    node: &NodeArgs,
    task_id: &str,
    format: pb::ModelFormat,
) -> anyhow::Result<(u32, Vec<u8>)> {
    let mut chunks = client(node)
        .await?
        .download(pb::DownloadRequest {
            task_id: task_id.into(),
            format: format.into(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let first = chunks
        .message()
        .await
        .map_err(refused)?
        .context("the node sent no model")?;
    let mut bytes = first.data;
    while let Some(c) = chunks.message().await.map_err(refused)? {
        bytes.extend_from_slice(&c.data);
        if bytes.len() as u64 > first.total_bytes {
            bail!(
                "the node sent more than the {} bytes it announced",
                first.total_bytes
            );
        }
    }
    if bytes.len() as u64 != first.total_bytes || Sha256::digest(&bytes)[..] != first.sha256[..] {
        bail!("the model arrived damaged (size or SHA-256 differs); download it again");
    }
    Ok((first.rounds, bytes))
}

/// The global model as weights, via its safetensors file.
pub async fn download_model(
    node: &NodeArgs,
    task_id: &str,
) -> anyhow::Result<(ModelSpec, Vec<f32>)> {
    let (_, bytes) = download(node, task_id, pb::ModelFormat::Safetensors).await?;
    Ok(yilian_models::from_safetensors_bytes(&bytes, None)?)
}

pub fn phase_text(p: pb::TaskPhase) -> &'static str {
    match p {
        pb::TaskPhase::Waiting => "waiting for agents",
        pb::TaskPhase::Running => "running",
        pb::TaskPhase::Finished => "finished",
        pb::TaskPhase::Expired => "expired",
        pb::TaskPhase::BudgetSpent => "stopped at its privacy budget",
        pb::TaskPhase::Unspecified => "unknown",
    }
}

fn short(agent: &[u8]) -> String {
    hex::encode(&agent[..agent.len().min(4)])
}

/// One line per event, as `yilian task watch` prints it.
pub fn event_line(e: &pb::TaskEvent) -> String {
    use pb::task_event::Event;
    match &e.event {
        Some(Event::Started(s)) => format!("round {} started with {} agents", s.round, s.selected),
        Some(Event::Closed(r)) => {
            let eps = r
                .epsilon
                .map(|e| format!(", epsilon {e:.3}"))
                .unwrap_or_default();
            format!(
                "round {} closed: accuracy {:.4}, loss {:.4}, {} participants, {} reward units{eps}",
                r.round,
                r.accuracy,
                r.loss,
                r.participants.len(),
                r.participants.iter().map(|p| p.reward).sum::<u64>()
            )
        }
        Some(Event::Ended(end)) => format!(
            "task {} after {} rounds",
            phase_text(end.phase()),
            end.rounds_closed
        ),
        None => "unknown event".into(),
    }
}

/// Prints either kind of status.
pub fn print_status(s: &pb::TaskStatusResponse) {
    match &s.kind {
        Some(pb::task_status_response::Kind::Training(t)) => {
            let phase = match t.phase() {
                pb::TaskPhase::Running => {
                    format!(
                        "round {}: {} of {} updates",
                        t.current_round, t.received, t.selected
                    )
                }
                p => phase_text(p).to_owned(),
            };
            println!(
                "task {}: {phase} ({} of {} rounds done{})",
                s.task_id,
                t.history.len(),
                t.rounds,
                if t.secure_aggregation {
                    ", secure aggregation"
                } else {
                    ""
                }
            );
            if let Some(p) = &t.privacy {
                println!(
                    "privacy: epsilon {:.3} of {:.3} spent at delta {:e} (noise multiplier {})",
                    p.epsilon_spent, p.epsilon_budget, p.delta, p.noise_multiplier
                );
            }
            print_history(&t.history);
            print_contributions(&t.history);
            println!("rewards paid: {} of {}", t.rewards_paid, t.reward_budget);
        }
        Some(pb::task_status_response::Kind::Evaluation(e)) => {
            let phase = match e.phase() {
                pb::TaskPhase::Waiting => {
                    format!(
                        "waiting for agents ({} of at least {} joined)",
                        e.joined, e.min_agents
                    )
                }
                pb::TaskPhase::Running => {
                    format!("evaluating: {} of {} reports", e.received, e.selected)
                }
                p => phase_text(p).to_owned(),
            };
            println!("evaluation {}: {phase}", s.task_id);
            if let Some(r) = &e.result {
                print_evaluation(r);
            }
        }
        None => println!("task {}: the node sent no status", s.task_id),
    }
}

/// Prints a status table; epsilon is shown once a task spends privacy.
pub fn print_history(history: &[pb::Round]) {
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
            r.participants.iter().map(|p| p.reward).sum::<u64>()
        );
        for f in &r.failures {
            println!("      group failed: {f}");
        }
    }
}

/// Each agent's summed contribution and reward over the rounds.
fn print_contributions(history: &[pb::Round]) {
    let mut by_agent: BTreeMap<&[u8], (f64, u64, usize)> = BTreeMap::new();
    for p in history.iter().flat_map(|r| &r.participants) {
        let e = by_agent.entry(&p.agent).or_default();
        e.0 += p.contribution;
        e.1 += p.reward;
        e.2 += 1;
    }
    if by_agent.is_empty() {
        return;
    }
    println!(
        "{:>8} {:>7} {:>13} {:>8}",
        "agent", "rounds", "contribution", "reward"
    );
    for (agent, (c, r, n)) in by_agent {
        println!("{:>8} {n:>7} {c:>13.4} {r:>8}", short(agent));
    }
}

/// Prints an evaluation's aggregate and its confusion matrix.
pub fn print_evaluation(r: &pb::EvaluationResult) {
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
        .flat_map(|row| &row.predicted)
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
        for n in &row.predicted {
            print!(" {n:>width$}");
        }
        println!();
    }
}
