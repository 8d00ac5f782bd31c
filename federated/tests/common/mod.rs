#![allow(dead_code)]

use std::path::{Path, PathBuf};

use yilian_federated::sim::{Behaviour, SimAgent, Simulation};
use yilian_federated::{DataSchema, Robust, RoundMachine, RoundRecord, Strategy, TaskSpec};
use yilian_identity::Identity;
use yilian_models::{Dataset, ModelSpec, Optimizer, Standardizer};

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// Digits split into agents' pool, the coordinator's validation set and a
/// held-out test set nobody trains or validates on.
pub fn digits_splits() -> (Dataset, Dataset, Dataset) {
    let all = Dataset::digits(&data_dir().join("digits.csv.gz")).unwrap();
    let (rest, test) = all.split(0.2, 42);
    let (train, validation) = rest.split(0.125, 43);
    (train, validation, test)
}

pub fn breast_cancer_splits() -> (Dataset, Dataset, Dataset) {
    let all = Dataset::breast_cancer(&data_dir().join("breast_cancer.csv")).unwrap();
    let (rest, mut test) = all.split(0.2, 42);
    let (mut train, mut validation) = rest.split(0.125, 43);
    let s = Standardizer::fit(&train);
    s.apply(&mut train);
    s.apply(&mut validation);
    s.apply(&mut test);
    (train, validation, test)
}

pub fn task(
    id: &str,
    model: ModelSpec,
    classes: usize,
    rounds: u32,
    per_round: usize,
    min: usize,
) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        schema: DataSchema {
            features: model.input_features(),
            label_column: "y".into(),
            classes,
        },
        model,
        initial_weights: None,
        init_seed: 7,
        rounds,
        agents_per_round: per_round,
        min_agents: min,
        local_epochs: 2,
        batch_size: 16,
        optimizer: Optimizer::Adam { lr: 0.01 },
        strategy: Strategy::FedAvg,
        robust: Robust::None,
        validation: PathBuf::from("validation.csv"),
        reward_budget: 10_000,
        round_timeout_ms: 60_000,
        deadline_ms: None,
        secure_aggregation: false,
        secagg: Default::default(),
        privacy: None,
        aggregation: Default::default(),
    }
}

pub fn agents(shards: Vec<Dataset>, behaviours: &[(usize, Behaviour)]) -> Vec<SimAgent> {
    shards
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let b = behaviours
                .iter()
                .find(|(k, _)| *k == i)
                .map_or(Behaviour::Honest, |(_, b)| *b);
            SimAgent::new(i as u32, d, b)
        })
        .collect()
}

/// Runs a task to the end and returns its records and final model.
pub fn run(
    task: TaskSpec,
    validation: Dataset,
    agents: Vec<SimAgent>,
) -> (Vec<RoundRecord>, Vec<f32>, Vec<SimAgent>) {
    let w0 = task.model.init_weights(task.init_seed).unwrap();
    let machine = RoundMachine::new(task, w0, validation).unwrap();
    let mut sim = Simulation::new(machine, agents, None).unwrap();
    let mut records = Vec::new();
    sim.run(|r| records.push(r.clone())).unwrap();
    (records, sim.machine.global().to_vec(), sim.agents)
}

pub fn test_accuracy(spec: &ModelSpec, weights: &[f32], test: &Dataset) -> f64 {
    yilian_models::evaluate(spec, weights, test)
        .unwrap()
        .accuracy
}

/// A digits MLP trained centrally for a few epochs and exported to ONNX:
/// the kind of model an engineer brings to a federated evaluation.
pub fn digits_onnx(train: &Dataset) -> Vec<u8> {
    let spec = ModelSpec::mlp(64, 32, 10);
    let cfg = yilian_models::TrainConfig {
        epochs: 2,
        batch_size: 32,
        optimizer: Optimizer::Adam { lr: 0.01 },
        proximal: None,
        seed: 3,
    };
    let w = yilian_models::train(&spec, &spec.init_weights(5).unwrap(), train, &cfg)
        .unwrap()
        .weights;
    yilian_models::to_onnx(&spec, &w).unwrap()
}

/// The rows of every shard, in order, as one data set.
pub fn union(shards: &[Dataset]) -> Dataset {
    Dataset::new(
        shards.iter().flat_map(|s| s.features.clone()).collect(),
        shards[0].n_features,
        shards.iter().flat_map(|s| s.labels.clone()).collect(),
        shards[0].classes,
    )
    .unwrap()
}

#[allow(unused_imports)]
pub use yilian_testkit::{certify, genesis, register};

/// A task file for logistic regression on the breast-cancer data, as the
/// QUIC tests submit it.
pub fn bc_task_toml(id: &str, rounds: u32, per_round: usize, min: usize, budget: u64) -> String {
    format!(
        r#"
id = "{id}"
rounds = {rounds}
agents_per_round = {per_round}
min_agents = {min}
local_epochs = 2
batch_size = 16
validation = "validation.csv"
reward_budget = {budget}
round_timeout_ms = 60000
optimizer = {{ adam = {{ lr = 0.02 }} }}

[model]
input = [30]
layers = [{{ linear = {{ out = 2 }} }}, "softmax"]

[schema]
features = 30
label_column = "y"
classes = 2
"#
    )
}

/// Agents of clearly different worth, for contribution tests: agent `i`
/// trains from `global` on `sizes[i]` rows of `train` (disjoint slices),
/// on shuffled labels if `i` is in `shuffled`. A coalition's utility is the
/// validation accuracy of FedAvg over its members' updates.
pub struct Worth {
    pub spec: ModelSpec,
    pub global: Vec<f32>,
    pub updates: Vec<yilian_federated::Update>,
    pub validation: Dataset,
}

impl Worth {
    pub fn new(sizes: &[usize], shuffled: &[usize]) -> Self {
        let (train, validation, _) = digits_splits();
        let spec = ModelSpec::logistic_regression(64, 10);
        let global = spec.init_weights(3).unwrap();
        let mut start = 0;
        let updates = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut d = train.subset(&(start..start + n).collect::<Vec<_>>());
                start += n;
                if shuffled.contains(&i) {
                    for (k, l) in d.labels.iter_mut().enumerate() {
                        *l = ((k * 7 + 3 + i) % 10) as u32;
                    }
                }
                let cfg = yilian_models::TrainConfig {
                    epochs: 3,
                    batch_size: 16,
                    optimizer: Optimizer::Adam { lr: 0.01 },
                    proximal: None,
                    seed: i as u64,
                };
                let out = yilian_models::train(&spec, &global, &d, &cfg).unwrap();
                yilian_federated::Update {
                    weights: out.weights,
                    samples: out.samples as u64,
                    loss: out.loss,
                }
            })
            .collect();
        Worth {
            spec,
            global,
            updates,
            validation,
        }
    }

    pub fn utility(&self, coalition: &[usize]) -> f64 {
        let w = if coalition.is_empty() {
            self.global.clone()
        } else {
            yilian_federated::aggregate::combine(
                &coalition
                    .iter()
                    .map(|&i| &self.updates[i])
                    .collect::<Vec<_>>(),
                Robust::None,
            )
        };
        yilian_models::evaluate(&self.spec, &w, &self.validation)
            .unwrap()
            .accuracy
    }
}

/// Re-runs this test binary as a child running only `test`, with `env` set
/// to `value`, and waits until it prints READY.
pub fn spawn_ready(test: &str, env: &str, value: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, value)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("READY"));
    assert!(ready, "the child {test} got ready");
    child
}

/// Serves `coordinator`'s gRPC control plane with mutual TLS as `node`, on
/// `addr` (port 0 picks one); returns the address engineers dial.
pub async fn serve_control(
    coordinator: &yilian_federated::coordinator::Coordinator,
    node: &Identity,
    addr: &str,
) -> String {
    let routes = tonic::service::Routes::new(coordinator.control().into_server());
    yilian_testkit::serve_at(addr, node, Default::default(), routes).await
}
