//! Real federated training on the real data sets in `data/`.

mod common;

use common::*;
use yilian_federated::sim::Behaviour;
use yilian_federated::{Robust, Strategy};
use yilian_models::ModelSpec;

#[test]
fn digits_iid_ten_agents_reach_95_percent_within_20_rounds() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 128, 10);
    let mut t = task("digits-iid", spec.clone(), 10, 20, 10, 8);
    t.local_epochs = 3;
    let (records, global, _) = run(t, validation, agents(train.partition_iid(10, 1), &[]));
    assert_eq!(records.len(), 20);
    let acc = test_accuracy(&spec, &global, &test);
    eprintln!("digits IID: test accuracy {acc:.4} after 20 rounds");
    assert!(acc >= 0.95, "test accuracy {acc}");
    // Every round's rewards add up to its share of the budget.
    assert_eq!(records.iter().flat_map(|r| &r.rewards).sum::<u64>(), 10_000);
}

#[test]
fn digits_non_iid_dirichlet_reaches_90_percent_within_30_rounds() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 64, 10);
    let mut t = task("digits-non-iid", spec.clone(), 10, 30, 10, 8);
    t.strategy = Strategy::FedProx { mu: 0.01 };
    let shards = train.partition_dirichlet(10, 0.5, 3).unwrap();
    let (records, global, _) = run(t, validation, agents(shards, &[]));
    assert_eq!(records.len(), 30);
    let acc = test_accuracy(&spec, &global, &test);
    eprintln!("digits non-IID (Dirichlet 0.5): test accuracy {acc:.4} after 30 rounds");
    assert!(acc >= 0.90, "test accuracy {acc}");
}

#[test]
fn breast_cancer_logistic_regression_reaches_93_percent() {
    let (train, validation, test) = breast_cancer_splits();
    let spec = ModelSpec::logistic_regression(30, 2);
    let t = task("breast-cancer", spec.clone(), 2, 10, 5, 4);
    let (records, global, _) = run(t, validation, agents(train.partition_iid(5, 2), &[]));
    assert_eq!(records.len(), 10);
    let acc = test_accuracy(&spec, &global, &test);
    eprintln!("breast cancer LR: test accuracy {acc:.4}");
    assert!(acc >= 0.93, "test accuracy {acc}");
}

#[test]
fn two_agents_dropping_mid_round_still_complete_the_task() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 32, 10);
    let t = task("dropouts", spec.clone(), 10, 5, 10, 6);
    let shards = train.partition_iid(10, 4);
    let (records, global, _) = run(
        t,
        validation,
        agents(
            shards,
            &[
                (2, Behaviour::DropsAt(1)),
                (7, Behaviour::DropsAt(1)),
                (9, Behaviour::Straggler),
            ],
        ),
    );
    assert_eq!(records.len(), 5, "every round completed");
    let r1 = &records[1];
    assert_eq!(
        r1.participants.len(),
        7,
        "ten selected, two dropped, one straggled"
    );
    assert_eq!(r1.missing.len(), 3);
    // Dropped agents are no longer sampled afterwards.
    assert!(
        records[2..]
            .iter()
            .all(|r| r.participants.len() + r.missing.len() == 8)
    );
    assert!(test_accuracy(&spec, &global, &test) > 0.85);
}

fn malicious_case(robust: Robust, attack: Behaviour) {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 32, 10);
    let mut t = task("malicious", spec.clone(), 10, 10, 10, 8);
    t.robust = robust;
    let evil = 4usize;
    let (records, global, agents) = run(
        t,
        validation,
        agents(train.partition_iid(10, 5), &[(evil, attack)]),
    );
    let acc = test_accuracy(&spec, &global, &test);
    eprintln!("{robust:?} against {attack:?}: test accuracy {acc:.4}");
    assert!(acc >= 0.90, "test accuracy {acc}");
    let evil_id = agents[evil].id;
    let mut contribution = vec![0f64; 10];
    let mut reward = vec![0u64; 10];
    for r in &records {
        for (k, id) in r.participants.iter().enumerate() {
            let i = agents.iter().position(|a| a.id == *id).unwrap();
            contribution[i] += r.contributions[k];
            reward[i] += r.rewards[k];
        }
    }
    eprintln!("contributions {contribution:?}\nrewards {reward:?}");
    let lowest_c = (0..10)
        .min_by(|&a, &b| contribution[a].total_cmp(&contribution[b]))
        .unwrap();
    assert_eq!(
        agents[lowest_c].id, evil_id,
        "malicious agent has the lowest contribution"
    );
    assert!(
        (0..10)
            .filter(|&i| i != evil)
            .all(|i| reward[i] > reward[evil]),
        "and the lowest reward"
    );
}

#[test]
fn scaled_attacker_under_coordinate_median() {
    malicious_case(Robust::CoordinateMedian, Behaviour::Scaled(100.0));
}

#[test]
fn random_attacker_under_trimmed_mean() {
    malicious_case(Robust::TrimmedMean { beta: 0.1 }, Behaviour::Random);
}
