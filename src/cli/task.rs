//! `yilian task ...`: the ML engineer's commands, spoken to a node's gRPC
//! control plane (`proto/federated.proto`) with the engineer's admitted
//! certificate, through [`yilian_federated::client`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use yilian_federated::client::{Endpoint, download_with, submit, task_status, watch};
use yilian_federated::pb;

/// How to reach a node.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's gRPC address (`host:port`).
    #[arg(long, env = "YILIAN_NODE")]
    pub node: String,
    /// Directory holding the engineer's cert.pem, key.pem, ledger-key.pem and ca.pem.
    #[arg(long, env = "YILIAN_IDENTITY")]
    pub identity: PathBuf,
}

impl NodeArgs {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            node: self.node.clone(),
            identity: self.identity.clone(),
        }
    }
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
                let r = submit(&node.endpoint(), &task, weights.as_deref()).await?;
                println!(
                    "task {} submitted ({} parameters, ledger entry {})",
                    r.task_id, r.params, r.ledger_index
                );
            }
            TaskCommand::Status { task_id, node } => {
                print_status(&task_status(&node.endpoint(), &task_id).await?);
            }
            TaskCommand::Watch { task_id, node } => {
                let endpoint = node.endpoint();
                // An evaluation has no rounds: its bar is one step.
                let (rounds, mut closed) = match task_status(&endpoint, &task_id).await?.kind {
                    Some(pb::task_status_response::Kind::Training(t)) => {
                        (t.rounds, t.history.len() as u32)
                    }
                    _ => (1, 0),
                };
                let bar = super::progress::rounds(&task_id, rounds, closed);
                watch(&endpoint, &task_id, |e| {
                    if let Some(pb::task_event::Event::Closed(r)) = &e.event {
                        closed = closed.max(r.round + 1);
                        bar.closed(closed);
                    }
                    bar.say(&event_line(e));
                })
                .await?;
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
                    let bar = super::progress::bytes(format!("{task_id}.{ext}"));
                    let (rounds, bytes) =
                        download_with(&node.endpoint(), &task_id, pf, |got, total| {
                            bar.received(got, total)
                        })
                        .await?;
                    drop(bar);
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
