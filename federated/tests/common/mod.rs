#![allow(dead_code)]

use std::path::{Path, PathBuf};

use yilian_federated::sim::{Behaviour, SimAgent, Simulation};
use yilian_federated::{DataSchema, Robust, RoundMachine, RoundRecord, Strategy, TaskSpec};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Role};
use yilian_ledger::{Ledger, Payload, Transaction};
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

/// Admits `name` with `role`, saves it under `dir` and loads it back.
pub fn admit(ca: &Authority, role: Role, name: &str, dir: &Path) -> Identity {
    let id = ca.admit(&AdmissionRequest::new("org", role, name)).unwrap();
    id.save(&dir.join(name)).unwrap();
    Identity::load(&dir.join(name)).unwrap()
}

pub async fn register(ledger: &Ledger, ca: &Authority, id: &Identity) {
    let p = id.principal();
    let tx = Transaction::new(Payload::Admit {
        org: p.org.clone(),
        role: p.role,
        name: p.name.clone(),
        public_key: p.public_key,
        serial: p.serial.clone(),
        not_after_ms: u64::MAX / 2,
    });
    ledger.submit(tx.sign(&ca.signing_key())).await.unwrap();
}
