//! `yilian-agent`: runs on a device owner's machine, long-lived, from an
//! `agent.toml`. It joins a node's federated tasks over QUIC with the
//! device's admitted certificate, trains on local data that never leaves the
//! machine, within the owner's policy (tasks, threads, CPU share, windows,
//! idleness, bytes per day), and keeps a status file that `yilian-agent
//! status` reads. It also runs exported models locally. This library holds
//! the configuration, the status book and the prediction helper; the
//! protocol lives in `yilian-federated`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use yilian_federated::AgentPolicy;
use yilian_federated::agent::AgentEvent;
use yilian_federated::protocol::RewardProof;
use yilian_federated::schedule::DailyBytes;
use yilian_models::{Dataset, LabelColumn, OnnxModel};

/// An agent configuration file (TOML); command-line flags override it.
/// Relative paths in it are relative to the file's directory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub node: Option<SocketAddr>,
    pub identity: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub label_column: Option<String>,
    pub classes: Option<usize>,
    pub server_name: Option<String>,
    /// Where the agent keeps its status (default: `agent-state` beside
    /// the file).
    pub state: Option<PathBuf>,
    #[serde(default)]
    pub policy: Option<AgentPolicy>,
}

impl AgentFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut file: AgentFile = toml::from_str(&text)
            .with_context(|| format!("{}: fix the field named below", path.display()))?;
        if let Some(policy) = &file.policy {
            policy
                .schedule
                .check()
                .with_context(|| path.display().to_string())?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.identity, &mut file.data, &mut file.state]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        file.state.get_or_insert_with(|| base.join("agent-state"));
        Ok(file)
    }
}

/// The status file's name inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// A task as this device saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub rounds: u32,
    /// Rounds this device trained and sent an update for.
    pub trained: u32,
    /// Rounds the owner's schedule kept it out of.
    pub sat_out: u32,
    pub last_pause: Option<String>,
    pub finished: bool,
    /// The last rounds counted, so that a round retried after it was
    /// abandoned counts once.
    #[serde(default)]
    pub last_trained: Option<u32>,
    #[serde(default)]
    pub last_sat_out: Option<u32>,
}

/// Counts `round` once: `last` is the round counted before.
fn count_once(count: &mut u32, last: &mut Option<u32>, round: u32) {
    if *last != Some(round) {
        *count += 1;
        *last = Some(round);
    }
}

/// A reward as the agent received it, with the proof it verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredReward {
    pub task_id: String,
    pub round: u32,
    pub amount: u64,
    pub contribution: f64,
    pub proof: Option<RewardProof>,
}

/// What the agent has done, kept in `status.json` so that `yilian-agent
/// status` can tell the owner without asking the node. It holds counts and
/// proofs only, never the owner's data or the models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The device's account (hex of its ledger key).
    pub account: String,
    pub node: String,
    /// What the agent is doing now, in words.
    pub state: String,
    pub updated_unix: u64,
    /// Bytes sent and received today (UTC), for the daily budget.
    pub today: DailyBytes,
    pub sent_total: u64,
    pub received_total: u64,
    pub tasks: BTreeMap<String, TaskProgress>,
    pub rewards: Vec<StoredReward>,
    /// The task the current session takes part in.
    #[serde(skip)]
    current: Option<String>,
    /// This session's counts so far, to add only what is new.
    #[serde(skip)]
    session: (u64, u64),
}

impl Status {
    /// The status kept in `dir`, or a fresh one.
    pub fn load(dir: &Path) -> anyhow::Result<Status> {
        let path = dir.join(STATUS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{}: not an agent status file; move it away and the agent starts a new one",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Status::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the status whole to `dir`, replacing the old file only once
    /// the new one is complete, stamped with the time it was written: every
    /// change of state is saved, so the stamp says how fresh the state is.
    pub fn save(&mut self, dir: &Path) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.updated_unix = self.updated_unix.max(now);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!("{STATUS_FILE}.new"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STATUS_FILE))
            .with_context(|| format!("replacing {}", dir.join(STATUS_FILE).display()))
    }

    /// A new session begins: its traffic counts from zero.
    pub fn new_session(&mut self) {
        self.session = (0, 0);
        self.current = None;
    }

    /// Takes in what the agent reported at `unix_secs`.
    pub fn record(&mut self, event: &AgentEvent, unix_secs: u64) {
        self.updated_unix = unix_secs;
        let current = self.current.clone().unwrap_or_default();
        match event {
            AgentEvent::Joined { task_id, rounds } => {
                self.tasks.entry(task_id.clone()).or_default().rounds = *rounds;
                self.current = Some(task_id.clone());
                self.state = format!("in task {task_id}");
            }
            AgentEvent::Sent { round, .. } => {
                let t = self.tasks.entry(current).or_default();
                count_once(&mut t.trained, &mut t.last_trained, *round);
                self.state = format!("sent round {round}'s update");
            }
            AgentEvent::Paused { round, reason } => {
                let t = self.tasks.entry(current).or_default();
                count_once(&mut t.sat_out, &mut t.last_sat_out, *round);
                t.last_pause = Some(reason.to_string());
                self.state = format!("sat out round {round}: {reason}");
            }
            AgentEvent::RoundResult {
                round,
                contribution,
                reward,
                proof,
                ..
            } if *reward > 0 => self.rewards.push(StoredReward {
                task_id: current,
                round: *round,
                amount: *reward,
                contribution: *contribution,
                proof: proof.as_deref().cloned(),
            }),
            AgentEvent::Done { task_id } => {
                self.tasks.entry(task_id.clone()).or_default().finished = true;
                self.state = format!("task {task_id} finished");
            }
            AgentEvent::Traffic { sent, received } => {
                let (s0, r0) = self.session;
                let (ds, dr) = (sent.saturating_sub(s0), received.saturating_sub(r0));
                self.session = (*sent, *received);
                self.sent_total += ds;
                self.received_total += dr;
                self.today = self.today.on(unix_secs);
                self.today.bytes += ds + dr;
            }
            _ => {}
        }
    }
}

/// The owner's view of `status.json` in `state`: tasks, rounds, bytes and
/// rewards, each reward's inclusion proof verified again here, offline.
pub fn status_report(state: &Path, now_unix: u64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let path = state.join(STATUS_FILE);
    anyhow::ensure!(
        path.exists(),
        "{} does not exist; start the agent with `yilian-agent join --config agent.toml`, or pass --state with the directory it uses",
        path.display()
    );
    let st = Status::load(state)?;
    let account: yilian_federated::AgentId = hex::decode(&st.account)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: field account: not a 32-byte hex key", path.display()))?;
    let mut out = String::new();
    let ago = now_unix.saturating_sub(st.updated_unix);
    writeln!(out, "device {} on node {}", &st.account, st.node)?;
    writeln!(out, "now: {} (updated {ago} s ago)", st.state)?;
    writeln!(
        out,
        "bytes today (UTC): {}; all time: {} sent, {} received (model updates and protocol only; your data never leaves this machine)",
        st.today.on(now_unix).bytes,
        st.sent_total,
        st.received_total
    )?;
    if st.tasks.is_empty() {
        writeln!(out, "tasks: none joined yet")?;
    }
    for (id, t) in &st.tasks {
        let end = if t.finished { ", finished" } else { "" };
        writeln!(
            out,
            "task {id}: {} of {} rounds trained, {} sat out{end}",
            t.trained, t.rounds, t.sat_out
        )?;
        if let Some(p) = &t.last_pause {
            writeln!(out, "  last sat out: {p}")?;
        }
    }
    let (mut verified, mut total) = (0u64, 0u64);
    writeln!(out, "rewards:")?;
    for r in &st.rewards {
        total += r.amount;
        let check = match &r.proof {
            None => "no proof: not counted as on the ledger".to_owned(),
            Some(p) => match p.verify(&r.task_id, r.round, &account) {
                Ok(amount) if amount == r.amount => {
                    verified += r.amount;
                    format!(
                        "ledger entry {}, inclusion verified under the head of size {}",
                        p.index, p.head.tree_size
                    )
                }
                Ok(amount) => format!("PROOF DISAGREES: the ledger entry says {amount} units"),
                Err(e) => format!("PROOF FAILED: {e}"),
            },
        };
        writeln!(
            out,
            "  task {} round {}: {} units (contribution {:.4}); {check}",
            r.task_id, r.round, r.amount, r.contribution
        )?;
    }
    writeln!(
        out,
        "total: {total} units, {verified} of them with verified proofs"
    )?;
    Ok(out)
}

/// Reads a device's training data: a CSV with a header naming the label column.
pub fn load_data(
    path: &Path,
    label_column: &str,
    classes: Option<usize>,
) -> anyhow::Result<Dataset> {
    Dataset::from_csv_path(path, &LabelColumn::Name(label_column.to_owned()), classes)
        .with_context(|| format!("reading training data {}", path.display()))
}

/// Predictions of an ONNX model for the rows of a CSV.
pub struct Predictions {
    pub classes: Vec<usize>,
    pub probabilities: Vec<Vec<f32>>,
    /// Accuracy, when the CSV carried the label column.
    pub accuracy: Option<f64>,
}

/// Runs `model` with tract on `input`. The CSV holds the model's features
/// (header optional); with `label_column` given, that column is the true
/// label and accuracy is reported.
pub fn predict(
    model: &Path,
    input: &Path,
    label_column: Option<&str>,
) -> anyhow::Result<Predictions> {
    let model = OnnxModel::from_path(model)?;
    let (rows, labels) = match label_column {
        Some(label) => {
            let d = Dataset::from_csv_path(input, &LabelColumn::Name(label.to_owned()), None)?;
            (d.features, Some(d.labels))
        }
        None => {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("reading {}", input.display()))?;
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let values: Result<Vec<f32>, _> =
                    line.split(',').map(|f| f.trim().parse::<f32>()).collect();
                match values {
                    Ok(v) => rows.extend(v),
                    Err(_) if i == 0 => continue, // a header
                    Err(_) => anyhow::bail!("row {i} of {} is not numeric", input.display()),
                }
            }
            (rows, None)
        }
    };
    let out = model.run(&rows)?;
    let probabilities: Vec<Vec<f32>> = out.chunks(model.outputs()).map(<[f32]>::to_vec).collect();
    let classes = model.classify(&rows)?;
    let accuracy = labels.map(|l| {
        classes
            .iter()
            .zip(&l)
            .filter(|(p, t)| **p == **t as usize)
            .count() as f64
            / l.len().max(1) as f64
    });
    Ok(Predictions {
        classes,
        probabilities,
        accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yilian_federated::schedule::Pause;
    use yilian_models::{ModelSpec, Optimizer, TrainConfig};

    #[test]
    fn the_documented_agent_toml_loads_with_its_paths_beside_it() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/agent.toml");
        let f = AgentFile::load(&doc).unwrap();
        let base = doc.parent().unwrap();
        assert_eq!(f.identity.as_deref(), Some(base.join("identity").as_path()));
        assert_eq!(f.state.as_deref(), Some(base.join("agent-state").as_path()));
        let p = f.policy.unwrap();
        assert_eq!(p.tasks, ["digits-*"]);
        assert_eq!(p.schedule.windows.len(), 1);
        assert_eq!(p.schedule.max_cpu_share, Some(0.5));
    }

    #[test]
    fn the_status_counts_rounds_once_and_bytes_by_day_across_sessions() {
        let day = 20_000 * 86_400;
        let mut st = Status::default();
        st.new_session();
        st.record(
            &AgentEvent::Joined {
                task_id: "t".into(),
                rounds: 3,
            },
            day,
        );
        let sent = |round| AgentEvent::Sent {
            round,
            samples: 5,
            loss: 0.1,
        };
        let traffic = |sent, received| AgentEvent::Traffic { sent, received };
        st.record(&sent(0), day);
        // Round 0 abandoned and tried again: still one round trained.
        st.record(&sent(0), day);
        st.record(&traffic(100, 50), day);
        st.record(&traffic(300, 60), day);
        let pause = Pause::ByteBudget { used: 1, limit: 1 };
        st.record(
            &AgentEvent::Paused {
                round: 1,
                reason: pause.clone(),
            },
            day,
        );
        st.record(
            &AgentEvent::Paused {
                round: 1,
                reason: pause,
            },
            day,
        );
        assert_eq!((st.tasks["t"].trained, st.tasks["t"].sat_out), (1, 1));
        assert_eq!(
            (st.sent_total, st.received_total, st.today.bytes),
            (300, 60, 360)
        );
        // A new session counts from zero; the next day's budget from zero.
        st.new_session();
        st.record(&traffic(10, 10), day + 86_400);
        assert_eq!(st.today.bytes, 20);
        assert_eq!(st.sent_total, 310);
        // Kept whole on disk.
        let dir = tempfile::tempdir().unwrap();
        st.save(dir.path()).unwrap();
        let back = Status::load(dir.path()).unwrap();
        assert_eq!((back.tasks, back.today), (st.tasks.clone(), st.today));
        assert!(back.updated_unix > day + 86_400, "stamped as written");
        std::fs::write(dir.path().join(STATUS_FILE), "{").unwrap();
        let e = format!("{:#}", Status::load(dir.path()).unwrap_err());
        assert!(e.contains("status.json: not an agent status file"), "{e}");
    }

    #[test]
    fn predict_runs_an_exported_model_on_csv_rows_like_candle() {
        let dir = tempfile::tempdir().unwrap();
        let digits =
            Dataset::digits(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"))
                .unwrap();
        let (train, test) = digits.split(0.2, 1);
        let spec = ModelSpec::mlp(64, 32, 10);
        let cfg = TrainConfig {
            epochs: 5,
            batch_size: 32,
            optimizer: Optimizer::Adam { lr: 0.01 },
            proximal: None,
            seed: 1,
        };
        let w = yilian_models::train(&spec, &spec.init_weights(1).unwrap(), &train, &cfg)
            .unwrap()
            .weights;
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, yilian_models::to_onnx(&spec, &w).unwrap()).unwrap();
        let rows = dir.path().join("rows.csv");
        test.write_csv(&rows, "y").unwrap();
        let p = predict(&model, &rows, Some("y")).unwrap();
        let candle = yilian_models::evaluate(&spec, &w, &test).unwrap().accuracy;
        assert_eq!(p.classes.len(), test.len());
        assert!(
            (p.accuracy.unwrap() - candle).abs() < 1e-9,
            "{:?} vs {candle}",
            p.accuracy
        );
        // Without labels: a header line is skipped, rows are features only.
        let bare = dir.path().join("bare.csv");
        let mut text = (0..64)
            .map(|i| format!("x{i}"))
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for i in 0..3 {
            text += &(test
                .row(i)
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
                + "\n");
        }
        std::fs::write(&bare, text).unwrap();
        let q = predict(&model, &bare, None).unwrap();
        assert_eq!(q.classes, p.classes[..3].to_vec());
        // Rows of the wrong width are refused.
        std::fs::write(&bare, "1,2,3\n").unwrap();
        assert!(predict(&model, &bare, None).is_err());
    }
}
