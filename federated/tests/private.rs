//! Private federated learning on real data: secure aggregation in the
//! simulation driver (the real round machine, real local training).

mod common;

use common::*;
use yilian_federated::sim::{Behaviour, Simulation};
use yilian_federated::{FlError, RoundMachine, Strategy, TaskSpec};
use yilian_models::ModelSpec;

fn secure(mut t: TaskSpec, clip: f32) -> TaskSpec {
    t.secure_aggregation = true;
    t.secagg.clip = clip;
    t
}

#[test]
fn digits_non_iid_with_secure_aggregation_reaches_90_percent_within_30_rounds() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 64, 10);
    let mut t = secure(task("digits-secagg", spec.clone(), 10, 30, 10, 8), 50.0);
    t.strategy = Strategy::FedProx { mu: 0.01 };
    let shards = train.partition_dirichlet(10, 0.5, 3).unwrap();
    let (records, global, _) = run(t, validation, agents(shards, &[]));
    assert_eq!(records.len(), 30);
    let acc = test_accuracy(&spec, &global, &test);
    eprintln!("digits non-IID with SecAgg+: test accuracy {acc:.4} after 30 rounds");
    assert!(acc >= 0.90, "test accuracy {acc}");
    assert!(records.iter().all(|r| r.participants.len() == 10));
    assert_eq!(records.iter().flat_map(|r| &r.rewards).sum::<u64>(), 10_000);
}

/// One round from the same start, securely and in the clear: with equal
/// shards FedAvg's sample weights are equal, and a clip no change reaches
/// leaves the updates as they are, so the two must agree to within the
/// quantisation bound.
#[test]
fn secure_fedavg_equals_plaintext_fedavg_within_the_quantisation_bound() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::mlp(64, 16, 10);
    let shards = train.partition_iid(10, 5);
    let n = shards.iter().map(|s| s.len()).min().unwrap();
    let shards: Vec<_> = shards
        .into_iter()
        .map(|s| s.subset(&(0..n).collect::<Vec<_>>()))
        .collect();
    let plain = task("digits-same", spec.clone(), 10, 1, 10, 10);
    let clip = 1000.0;
    let sec = secure(plain.clone(), clip);
    let (_, g_plain, _) = run(plain, validation.clone(), agents(shards.clone(), &[]));
    let (records, g_sec, _) = run(sec.clone(), validation, agents(shards, &[]));
    assert_eq!(records[0].participants.len(), 10);
    // Two groups of five; each sum is off by at most 5 half-steps of a
    // quantiser for five agents, and the mean divides by ten.
    let enc = yilian_federated::secagg::Encoding::new(clip, 0.0, 5);
    // f32 rounding of the weights themselves adds a little.
    let bound = 2.0 * enc.quantiser().sum_error(5) / 10.0 + 5e-7;
    let worst = g_plain
        .iter()
        .zip(&g_sec)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    eprintln!("secure vs plain FedAvg: largest difference {worst:e}, bound {bound:e}");
    assert!(worst <= bound, "{worst} > {bound}");
    assert!(worst > 0.0, "the secure path really ran");
}

#[test]
fn thirty_percent_dropping_after_masking_still_completes_each_round() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 32, 10);
    // One group of ten: degree 9, threshold 6, so three agents that never
    // reveal leave every survivor six neighbours to recover it from.
    let mut t = secure(task("secagg-dropouts", spec.clone(), 10, 4, 10, 6), 50.0);
    t.secagg.min_group = 6;
    let shards = train.partition_iid(10, 6);
    let drops = [
        (1, Behaviour::DropsAfterMasking(1)),
        (4, Behaviour::DropsAfterMasking(1)),
        (8, Behaviour::DropsAfterMasking(1)),
    ];
    let (records, global, _) = run(t, validation, agents(shards, &drops));
    assert_eq!(records.len(), 4, "every round completed");
    // Their masked inputs were in the sum: the round counts them.
    assert_eq!(records[1].participants.len(), 10);
    assert!(records[1].failures.is_empty());
    // Gone afterwards.
    assert_eq!(records[2].participants.len(), 7);
    let acc = test_accuracy(&spec, &global, &test);
    assert!(acc > 0.8, "test accuracy {acc}");
}

#[test]
fn too_few_survivors_aggregate_nothing_and_the_failure_is_recorded() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::mlp(64, 16, 10);
    // One group of five; the threshold is 3 of its 4 neighbours.
    let mut t = secure(task("secagg-fail", spec.clone(), 10, 1, 5, 5), 50.0);
    t.secagg.min_group = 5;
    let shards = train.partition_iid(5, 7);
    let drops: Vec<(usize, Behaviour)> = (0..3).map(|i| (i, Behaviour::Straggler)).collect();
    let w0 = t.model.init_weights(t.init_seed).unwrap();
    let machine = RoundMachine::new(t, w0.clone(), validation).unwrap();
    let mut sim = Simulation::new(machine, agents(shards, &drops), None).unwrap();
    let mut closed = 0;
    let err = sim.run(|_| closed += 1);
    assert_eq!(closed, 0, "no round closed");
    assert_eq!(sim.machine.global(), &w0[..], "nothing was aggregated");
    // The machine gave up after its attempts, each a recorded failure.
    assert!(
        matches!(sim.machine.state().phase, yilian_federated::Phase::Expired),
        "{err:?}"
    );
}

#[test]
fn a_task_combining_secure_aggregation_with_median_is_refused() {
    let mut t = secure(task("bad", ModelSpec::mlp(64, 16, 10), 10, 3, 5, 5), 2.0);
    t.robust = yilian_federated::Robust::CoordinateMedian;
    let text = toml::to_string(&t).unwrap();
    match TaskSpec::from_toml(&text) {
        Err(FlError::InvalidTask(why)) => {
            assert!(why.starts_with("robust:"), "{why}");
            assert!(why.contains("secure_aggregation = false"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    t.robust = yilian_federated::Robust::None;
    TaskSpec::from_toml(&toml::to_string(&t).unwrap()).unwrap();
}
