//! Tasks: what an engineer submits (`task.toml`), what data agents must
//! hold to take part, and what an agent's policy allows.
//!
//! A task file has a `kind`: `"training"` (the default, so files written
//! before evaluation existed mean what they meant) or `"evaluation"`, which
//! names an ONNX model for agents to score on their data ([`EvaluationSpec`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use yilian_models::{ModelSpec, OnnxModel, Optimizer, OutputKind, TrainConfig};

use crate::FlError;

/// The shape of the data a task trains on; agents must hold exactly this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSchema {
    pub features: usize,
    pub label_column: String,
    pub classes: usize,
}

impl DataSchema {
    /// Checks that an agent's data (`self`) fits `task`'s schema; the error
    /// names the first field that differs.
    pub fn check_against(&self, task: &DataSchema) -> Result<(), FlError> {
        let mismatch = |field, t: &dyn ToString, a: &dyn ToString| FlError::SchemaMismatch {
            field,
            task: t.to_string(),
            agent: a.to_string(),
        };
        if self.features != task.features {
            return Err(mismatch("feature count", &task.features, &self.features));
        }
        if self.label_column != task.label_column {
            return Err(mismatch(
                "label column",
                &task.label_column,
                &self.label_column,
            ));
        }
        // Fewer classes present locally is normal (non-IID); more is not.
        if self.classes > task.classes {
            return Err(mismatch("class count", &task.classes, &self.classes));
        }
        Ok(())
    }
}

/// Server-side strategy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Sample-weighted average of the agents' models (McMahan et al. 2017).
    #[default]
    FedAvg,
    /// FedAvg aggregation with a proximal term in local training (Li et al. 2020).
    FedProx { mu: f64 },
    /// Server-side Adam on the averaged pseudo-gradient (Reddi et al. 2021).
    FedAdam {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "tau")]
        tau: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.99
}
fn tau() -> f64 {
    1e-3
}

/// Byzantine-robust combination of the agents' models.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Robust {
    #[default]
    None,
    CoordinateMedian,
    /// Drops the `beta` fraction of largest and of smallest values per coordinate.
    TrimmedMean {
        beta: f64,
    },
    /// Keeps the single update closest to its `n - f - 2` nearest neighbours.
    Krum {
        f: usize,
    },
}

/// A training task as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    pub model: ModelSpec,
    /// Initial weights (safetensors); fresh seeded weights if absent.
    #[serde(default)]
    pub initial_weights: Option<PathBuf>,
    #[serde(default)]
    pub init_seed: u64,
    pub schema: DataSchema,
    pub rounds: u32,
    pub agents_per_round: usize,
    pub min_agents: usize,
    pub local_epochs: u32,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub robust: Robust,
    /// The coordinator's validation set: a CSV with a header naming the label column.
    pub validation: PathBuf,
    pub reward_budget: u64,
    /// How long a round waits for updates before closing with what it has.
    pub round_timeout_ms: u64,
    /// Unix time (ms) after which the task stops starting rounds.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Agents send masked updates and the coordinator learns only sums
    /// ([`crate::secagg`]); the settings are in `[secagg]`.
    #[serde(default)]
    pub secure_aggregation: bool,
    #[serde(default)]
    pub secagg: SecAggSettings,
    /// Client-level differential privacy (DP-FedAvg), if set.
    #[serde(default)]
    pub privacy: Option<Privacy>,
    /// Synchronous rounds (the default), or FedBuff's buffered asynchronous
    /// aggregation.
    #[serde(default)]
    pub aggregation: Aggregation,
}

/// How secure aggregation runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggSettings {
    /// L2 norm each agent's change to the model is clipped to.
    #[serde(default = "default_clip")]
    pub clip: f32,
    /// Fraction of an agent's neighbours whose shares recover its secrets;
    /// also the fraction of a group that must survive.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Smallest group whose sum the coordinator may learn. Each round's
    /// cohort is split into random groups of at least this many agents,
    /// aggregated separately; group sums are what contributions are scored on.
    #[serde(default = "default_min_group")]
    pub min_group: usize,
}

fn default_clip() -> f32 {
    2.0
}
fn default_threshold() -> f64 {
    0.6
}
fn default_min_group() -> usize {
    5
}

impl Default for SecAggSettings {
    fn default() -> Self {
        SecAggSettings {
            clip: default_clip(),
            threshold: default_threshold(),
            min_group: default_min_group(),
        }
    }
}

/// Client-level DP: clipping to `clip` (from `[secagg]`), Gaussian noise of
/// `noise_multiplier · clip` on each round's sum, and a budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    pub noise_multiplier: f64,
    /// The task stops before a round would take epsilon past this.
    pub epsilon_budget: f64,
    pub delta: f64,
}

/// How a task turns updates into global models.
///
/// Buffered is FedBuff (Nguyen et al., AISTATS 2022): up to
/// `agents_per_round` agents train at once, each from the newest model when
/// it starts; an update enters a buffer weighted by `1/sqrt(1 + staleness)`
/// (staleness: how many global models were made since the one it started
/// from), is refused past `max_staleness`, and every `size` updates the
/// buffer's sample-weighted mean change becomes the next global model, a
/// "round" of the task with its own contributions and rewards. An agent
/// counts at most once per buffer, and is given a new model once the buffer
/// it is in has been applied; slow agents never hold a round back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregation {
    #[default]
    Synchronous,
    Buffered {
        size: usize,
        max_staleness: u32,
    },
}

/// Rounds one task may ask for: its history is kept, and served in pages.
pub const MAX_ROUNDS: u32 = 100_000;
/// Agents one round (or evaluation) may recruit: each holds an outbox and
/// a seat in the round's state, and one round's record must fit a page of
/// the status (`HISTORY_PAGE_BYTES`).
pub const MAX_AGENTS: usize = 10_000;

impl TaskSpec {
    pub fn from_toml(text: &str) -> Result<Self, FlError> {
        let spec: Self = toml::from_str(text)?;
        spec.check()?;
        Ok(spec)
    }

    /// Rejects tasks that cannot run.
    pub fn check(&self) -> Result<(), FlError> {
        let bad = FlError::InvalidTask;
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(bad(
                "the task id `id` must be 1 to 128 bytes long; shorten it",
            ));
        }
        if self.model.input_features() != self.schema.features {
            return Err(bad(
                "the model's input size differs from the schema's feature count",
            ));
        }
        if self.model.outputs()? < self.schema.classes {
            return Err(bad(
                "the model has fewer outputs than the schema has classes",
            ));
        }
        if self.rounds == 0 || self.local_epochs == 0 || self.batch_size == 0 {
            return Err(bad("rounds, local epochs and batch size must be positive"));
        }
        if self.round_timeout_ms == 0 {
            return Err(bad("the round timeout must be positive"));
        }
        if self.min_agents == 0 || self.min_agents > self.agents_per_round {
            return Err(bad("need 1 <= min_agents <= agents_per_round"));
        }
        if self.rounds > MAX_ROUNDS {
            return Err(bad(
                "`rounds` may be at most 100000; split the work into tasks",
            ));
        }
        if self.agents_per_round > MAX_AGENTS {
            return Err(bad("`agents_per_round` may be at most 10000; lower it"));
        }
        if let Robust::TrimmedMean { beta } = self.robust
            && !(0.0..0.5).contains(&beta)
        {
            return Err(bad("trimmed-mean beta must be in [0, 0.5)"));
        }
        if let Robust::Krum { f } = self.robust
            && self.min_agents < 2 * f + 3
        {
            return Err(bad("Krum with f attackers needs min_agents >= 2f + 3"));
        }
        if self.secure_aggregation && self.robust != Robust::None {
            return Err(bad(
                "robust: median, trimmed mean and Krum need each update, and secure aggregation reveals only sums; set robust = \"none\" or secure_aggregation = false",
            ));
        }
        let sa = &self.secagg;
        if self.secure_aggregation && self.model.param_count()? > crate::protocol::MAX_SECURE_PARAMS
        {
            return Err(bad(
                "secure aggregation carries each masked update in one 1 MiB frame, at most 262016 parameters; use a smaller model, or set secure_aggregation = false",
            ));
        }
        if !(sa.clip.is_finite() && sa.clip > 0.0) {
            return Err(bad("secagg.clip must be a positive number"));
        }
        if !(sa.threshold > 0.0 && sa.threshold <= 1.0) {
            return Err(bad("secagg.threshold must be in (0, 1]"));
        }
        if self.secure_aggregation && (sa.min_group < 3 || sa.min_group > self.min_agents) {
            return Err(bad(
                "secagg.min_group must be at least 3 and at most min_agents",
            ));
        }
        if let Aggregation::Buffered { size, .. } = self.aggregation {
            if size == 0 || size > self.min_agents {
                return Err(bad(
                    "aggregation.buffered.size must be at least 1 and at most min_agents",
                ));
            }
            if self.robust != Robust::None {
                return Err(bad(
                    "robust: median, trimmed mean and Krum are not applied to buffered updates; set robust = \"none\" or drop aggregation.buffered",
                ));
            }
            if self.secure_aggregation && size < sa.min_group {
                return Err(bad(
                    "aggregation.buffered.size must be at least secagg.min_group: each buffer is one secure aggregation",
                ));
            }
        }
        if let Some(p) = &self.privacy {
            crate::dp::check(0.5, p.noise_multiplier, p.delta).map_err(bad)?;
            if !(p.epsilon_budget.is_finite() && p.epsilon_budget > 0.0) {
                return Err(bad("privacy.epsilon_budget must be a positive number"));
            }
        }
        Ok(())
    }

    /// The local training configuration agents receive for `round`.
    pub fn train_config(&self, round: u32, agent: &crate::AgentId) -> TrainConfig {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&Sha256::digest([&agent[..], &round.to_le_bytes()].concat())[..8]);
        TrainConfig {
            epochs: self.local_epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            proximal: match self.strategy {
                Strategy::FedProx { mu } => Some(yilian_models::Proximal { mu }),
                _ => None,
            },
            seed: u64::from_le_bytes(seed),
        }
    }

    /// SHA-256 of the canonical JSON form: what the ledger's `TaskSubmitted` anchors.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into()
    }

    /// The budget share of `round` (0-based): equal shares, the last round
    /// taking the remainder so the shares add up to the budget.
    pub fn round_budget(&self, round: u32) -> u64 {
        let per = self.reward_budget / u64::from(self.rounds);
        if round + 1 == self.rounds {
            self.reward_budget - per * u64::from(self.rounds - 1)
        } else {
            per
        }
    }
}

/// The two kinds of task a file can describe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    #[default]
    Training,
    Evaluation,
}

/// A federated evaluation: agents run the engineer's ONNX model on their
/// own data and send back only counts (a confusion matrix, a summed loss and
/// the number of examples), which the coordinator adds up.
///
/// Evaluation earns no reward: there is no model improvement to measure a
/// contribution against, and the coordinator cannot tell honest counts from
/// made-up ones, so paying per report would pay for fabrication too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    pub id: String,
    /// The ONNX model (`[N, features]` in, `[N, outputs]` out), read relative
    /// to the task file; it reaches agents in chunks.
    pub model: PathBuf,
    /// What the model's output rows hold; see [`OutputKind`].
    #[serde(default)]
    pub output: OutputKind,
    pub schema: DataSchema,
    /// How many agents to ask.
    pub agents: usize,
    /// Fewest reports that make a result; with fewer at the timeout the
    /// attempt is abandoned and retried.
    pub min_agents: usize,
    /// How long, once the model went out, to wait for reports.
    pub timeout_ms: u64,
    /// Unix time (ms) after which the task gives up.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

impl EvaluationSpec {
    /// Rejects evaluations that cannot run.
    pub fn check(&self) -> Result<(), FlError> {
        let bad = FlError::InvalidTask;
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(bad(
                "the task id `id` must be 1 to 128 bytes long; shorten it",
            ));
        }
        if self.schema.features == 0 || self.schema.classes == 0 {
            return Err(bad("the schema needs features and classes"));
        }
        if self.timeout_ms == 0 {
            return Err(bad("the timeout must be positive"));
        }
        if self.min_agents == 0 || self.min_agents > self.agents {
            return Err(bad("need 1 <= min_agents <= agents"));
        }
        if self.agents > MAX_AGENTS {
            return Err(bad("`agents` may be at most 10000; lower it"));
        }
        Ok(())
    }

    /// Checks that `model` reads the schema's rows and scores its classes.
    pub fn check_model(&self, model: &OnnxModel) -> Result<(), FlError> {
        if model.features() != self.schema.features {
            return Err(FlError::InvalidTask(
                "the ONNX model's input width differs from the schema's feature count",
            ));
        }
        if model.outputs() < self.schema.classes {
            return Err(FlError::InvalidTask(
                "the ONNX model has fewer outputs than the schema has classes",
            ));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON form and the model's SHA-256: what the
    /// ledger's `TaskSubmitted` anchors.
    pub fn hash(&self, model_sha256: &[u8; 32]) -> [u8; 32] {
        let spec = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest([&spec[..], model_sha256].concat()).into()
    }
}

/// A task file of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskFile {
    Training(Box<TaskSpec>),
    Evaluation(EvaluationSpec),
}

impl TaskFile {
    /// Parses and checks a task file; without a `kind` it is a training task.
    pub fn from_toml(text: &str) -> Result<Self, FlError> {
        let mut table: toml::Table = toml::from_str(text)?;
        let kind = match table.remove("kind") {
            None => TaskKind::Training,
            Some(v) => v.try_into()?,
        };
        let task = match kind {
            TaskKind::Training => TaskFile::Training(Box::new(table.try_into()?)),
            TaskKind::Evaluation => TaskFile::Evaluation(table.try_into()?),
        };
        match &task {
            TaskFile::Training(t) => t.check()?,
            TaskFile::Evaluation(e) => e.check()?,
        }
        Ok(task)
    }

    pub fn id(&self) -> &str {
        match self {
            TaskFile::Training(t) => &t.id,
            TaskFile::Evaluation(e) => &e.id,
        }
    }
}

/// What a device owner lets tasks use, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentPolicy {
    pub max_threads: u32,
    pub max_epochs: u32,
    pub max_params: u64,
    /// Largest ONNX file (bytes) this device will download and run; absent
    /// from configuration files written before evaluation tasks existed.
    #[serde(default = "default_max_model_bytes")]
    pub max_model_bytes: u64,
    /// Task ids this device takes part in (`digits-*` matches by prefix);
    /// empty: any task its data fits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Windows, idleness, CPU share and byte budget (`[policy.schedule]`).
    #[serde(default)]
    pub schedule: crate::schedule::Schedule,
}

fn default_max_model_bytes() -> u64 {
    16 << 20
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            max_threads: 2,
            max_epochs: 10,
            max_params: 1_000_000,
            max_model_bytes: default_max_model_bytes(),
            tasks: Vec::new(),
            schedule: Default::default(),
        }
    }
}

impl AgentPolicy {
    /// Accepts a task only if the owner listed it, or listed none.
    pub fn admits_task(&self, id: &str) -> Result<(), FlError> {
        let listed = |p: &String| match p.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == p,
        };
        if self.tasks.is_empty() || self.tasks.iter().any(listed) {
            Ok(())
        } else {
            Err(FlError::TaskNotListed {
                task: id.to_owned(),
                listed: self.tasks.join(", "),
            })
        }
    }

    /// Accepts a task only if it fits every limit.
    pub fn admits(&self, epochs: u32, params: u64) -> Result<(), FlError> {
        if epochs > self.max_epochs {
            return Err(FlError::PolicyExceeded {
                limit: "local epochs",
                asked: epochs.into(),
                allowed: self.max_epochs.into(),
            });
        }
        if params > self.max_params {
            return Err(FlError::PolicyExceeded {
                limit: "model size (parameters)",
                asked: params,
                allowed: self.max_params,
            });
        }
        Ok(())
    }

    /// Accepts an ONNX model for evaluation only if both its file size and
    /// its parameter count fit.
    pub fn admits_onnx(&self, bytes: u64, params: u64) -> Result<(), FlError> {
        if bytes > self.max_model_bytes {
            return Err(FlError::PolicyExceeded {
                limit: "ONNX model size (bytes)",
                asked: bytes,
                allowed: self.max_model_bytes,
            });
        }
        self.admits(0, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_task_with_a_field_it_does_not_know_is_refused_by_name() {
        let text = format!("local_epoch = 3\n{}", sample_toml());
        let e = TaskFile::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `local_epoch`"), "{e}");
        assert!(TaskFile::from_toml(sample_toml()).is_ok());
    }

    #[test]
    fn an_agent_policy_lists_its_tasks_and_schedule_and_refuses_unknown_keys() {
        let p: AgentPolicy = toml::from_str(
            "max_threads = 1\ntasks = [\"digits-*\", \"bc\"]\n[schedule]\nwindows = [\"22:00-06:00\"]\nmax_bytes_per_day = 1000000\n",
        )
        .unwrap();
        assert_eq!(
            (p.max_threads, p.max_epochs),
            (1, AgentPolicy::default().max_epochs)
        );
        assert_eq!(p.schedule.max_bytes_per_day, Some(1_000_000));
        assert!(p.admits_task("digits-mlp").is_ok() && p.admits_task("bc").is_ok());
        let e = p.admits_task("bcx").unwrap_err().to_string();
        assert!(
            e.contains("bcx is not in the policy's tasks (digits-*, bc)"),
            "{e}"
        );
        assert!(AgentPolicy::default().admits_task("anything").is_ok());
        for bad in ["max_thread = 1", "[schedule]\nwindow = []"] {
            let e = toml::from_str::<AgentPolicy>(bad).unwrap_err().to_string();
            assert!(e.contains("unknown field"), "{bad}: {e}");
        }
    }

    pub(crate) fn sample_toml() -> &'static str {
        r#"
id = "digits-mlp"
rounds = 20
agents_per_round = 10
min_agents = 8
local_epochs = 2
batch_size = 16
validation = "validation.csv"
reward_budget = 1000
round_timeout_ms = 30000

optimizer = { adam = { lr = 0.01 } }
strategy = { fed_prox = { mu = 0.01 } }
robust = { trimmed_mean = { beta = 0.1 } }

[model]
input = [64]
layers = [{ linear = { out = 32 } }, "relu", { linear = { out = 10 } }, "softmax"]

[schema]
features = 64
label_column = "y"
classes = 10
"#
    }

    #[test]
    fn the_shipped_example_task_parses() {
        let t = TaskSpec::from_toml(include_str!("../examples/digits-task.toml")).unwrap();
        assert_eq!(t.robust, Robust::TrimmedMean { beta: 0.1 });
        assert_eq!(t.model.param_count().unwrap(), 64 * 64 + 64 + 64 * 10 + 10);
    }

    #[test]
    fn parses_a_task_file_and_splits_the_budget() {
        let t = TaskSpec::from_toml(sample_toml()).unwrap();
        assert_eq!(t.strategy, Strategy::FedProx { mu: 0.01 });
        assert_eq!((0..20).map(|r| t.round_budget(r)).sum::<u64>(), 1000);
        let mut odd = t.clone();
        odd.reward_budget = 1003;
        assert_eq!((0..20).map(|r| odd.round_budget(r)).sum::<u64>(), 1003);
    }

    #[test]
    fn bad_tasks_and_schemas_are_refused() {
        let mut t = TaskSpec::from_toml(sample_toml()).unwrap();
        t.min_agents = 11;
        assert!(matches!(t.check(), Err(FlError::InvalidTask(_))));
        let mut t = TaskSpec::from_toml(sample_toml()).unwrap();
        t.rounds = MAX_ROUNDS + 1;
        assert!(matches!(t.check(), Err(FlError::InvalidTask(m)) if m.starts_with("`rounds`")));
        t.rounds = MAX_ROUNDS;
        t.agents_per_round = MAX_AGENTS + 1;
        assert!(
            matches!(t.check(), Err(FlError::InvalidTask(m)) if m.starts_with("`agents_per_round`"))
        );
        t.agents_per_round = MAX_AGENTS;
        t.check().unwrap();
        // A model too big for one masked-update frame, under secure aggregation only.
        t.model = yilian_models::ModelSpec::mlp(512, 512, 10);
        t.schema.features = 512;
        t.robust = Robust::None;
        t.check().unwrap();
        t.secure_aggregation = true;
        assert!(
            matches!(t.check(), Err(FlError::InvalidTask(m)) if m.contains("262016 parameters")),
            "{:?}",
            t.check()
        );
        assert_eq!(
            crate::protocol::MAX_SECURE_PARAMS,
            262016,
            "the message above names it"
        );
        let task = DataSchema {
            features: 64,
            label_column: "y".into(),
            classes: 10,
        };
        let agent = DataSchema {
            features: 30,
            ..task.clone()
        };
        let err = agent.check_against(&task).unwrap_err();
        assert_eq!(
            err.to_string(),
            "data schema mismatch on feature count: the task needs 64, the agent has 30"
        );
        let agent = DataSchema {
            label_column: "label".into(),
            ..task.clone()
        };
        assert!(matches!(
            agent.check_against(&task),
            Err(FlError::SchemaMismatch {
                field: "label column",
                ..
            })
        ));
        assert!(AgentPolicy::default().admits(20, 10).is_err());
        assert!(AgentPolicy::default().admits(2, 10_000_000).is_err());
        assert!(AgentPolicy::default().admits_onnx(1 << 30, 10).is_err());
        assert!(
            AgentPolicy::default()
                .admits_onnx(1 << 10, 10_000_000)
                .is_err()
        );
        assert!(AgentPolicy::default().admits_onnx(1 << 10, 10).is_ok());
    }

    #[test]
    fn the_buffered_example_parses() {
        let t = TaskSpec::from_toml(include_str!("../examples/digits-buffered.toml")).unwrap();
        assert_eq!(
            t.aggregation,
            Aggregation::Buffered {
                size: 5,
                max_staleness: 3
            }
        );
    }

    #[test]
    fn the_private_example_parses_with_its_settings() {
        let t = TaskSpec::from_toml(include_str!("../examples/digits-private.toml")).unwrap();
        assert!(t.secure_aggregation);
        assert_eq!(t.secagg.min_group, 6);
        assert_eq!(t.privacy.as_ref().map(|p| p.epsilon_budget), Some(8.0));
        let mut bad = t.clone();
        bad.secagg.threshold = 0.0;
        assert!(
            matches!(bad.check(), Err(FlError::InvalidTask(m)) if m.starts_with("secagg.threshold"))
        );
        let mut bad = t;
        bad.privacy.as_mut().unwrap().delta = 2.0;
        assert!(matches!(bad.check(), Err(FlError::InvalidTask(m)) if m.contains("delta")));
    }

    #[test]
    fn task_files_default_to_training_and_evaluation_files_parse() {
        let TaskFile::Training(t) = TaskFile::from_toml(sample_toml()).unwrap() else {
            panic!("no kind means training")
        };
        assert_eq!(*t, TaskSpec::from_toml(sample_toml()).unwrap());
        let explicit = format!("kind = \"training\"\n{}", sample_toml());
        assert_eq!(
            TaskFile::from_toml(&explicit).unwrap(),
            TaskFile::Training(t)
        );

        let TaskFile::Evaluation(e) =
            TaskFile::from_toml(include_str!("../examples/digits-eval.toml")).unwrap()
        else {
            panic!("an evaluation")
        };
        assert_eq!(
            (e.agents, e.min_agents, e.output),
            (10, 5, OutputKind::Probabilities)
        );
        assert_eq!(e.model, PathBuf::from("digits.onnx"));
        let logits = "kind = \"evaluation\"\nid = \"e\"\nmodel = \"m.onnx\"\noutput = \"logits\"\n\
                      agents = 3\nmin_agents = 3\ntimeout_ms = 1000\n\
                      [schema]\nfeatures = 4\nlabel_column = \"y\"\nclasses = 2\n";
        let TaskFile::Evaluation(e) = TaskFile::from_toml(logits).unwrap() else {
            panic!("an evaluation")
        };
        assert_eq!(e.output, OutputKind::Logits);
        // Training-only keys are mistakes in an evaluation, not ignored.
        let stray = logits.replace("agents = 3", "agents = 3\nrounds = 2");
        assert!(matches!(
            TaskFile::from_toml(&stray),
            Err(FlError::TaskFile(_))
        ));
        let too_few = logits.replace("min_agents = 3", "min_agents = 4");
        assert!(matches!(
            TaskFile::from_toml(&too_few),
            Err(FlError::InvalidTask(_))
        ));
        assert!(TaskFile::from_toml(&logits.replace("evaluation", "auditing")).is_err());
    }
}
