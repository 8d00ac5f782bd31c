//! Two drivers, one result: the in-process round-machine simulation and
//! the whole coordinator engine (sessions, model chunks, updates or SecAgg+
//! steps, scoring jobs, ledger acknowledgements) driven by simulated agents
//! reach the same rounds, contributions, rewards and model.

mod common;

use common::*;
use yilian_federated::RoundMachine;
use yilian_federated::sim::{Behaviour, Network};
use yilian_models::ModelSpec;

fn both(secure: bool, behaviours: &[(usize, Behaviour)]) {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let mut t = task("digits-drivers", spec, 10, 3, 6, 5);
    if secure {
        t.secure_aggregation = true;
        t.secagg.clip = 1000.0;
        t.secagg.min_group = 3;
    }
    let shards = train.partition_iid(6, 21);
    let (records, global, _) = run(
        t.clone(),
        validation.clone(),
        agents(shards.clone(), behaviours),
    );
    let w0 = t.model.init_weights(t.init_seed).unwrap();
    let machine = RoundMachine::new(t, w0, validation).unwrap();
    let mut net = Network::new(machine, agents(shards, behaviours)).unwrap();
    net.run().unwrap();
    assert_eq!(net.records.len(), records.len());
    // The dropout happened: round 1 counted fewer than the six (under
    // SecAgg+ a group of three that loses one falls under its threshold).
    assert!(records[1].participants.len() < 6, "{:?}", records[1]);
    for (a, b) in net.records.iter().zip(&records) {
        assert_eq!(a.round, b.round);
        assert_eq!(a.participants, b.participants, "round {}", a.round);
        assert_eq!(a.rewards, b.rewards, "round {}", a.round);
        assert_eq!(a.contributions, b.contributions, "round {}", a.round);
        assert_eq!(a.accuracy, b.accuracy, "round {}", a.round);
    }
    assert_eq!(
        net.engine.task("digits-drivers").unwrap().global(),
        &global[..]
    );
}

#[test]
fn the_engine_driven_by_simulated_agents_agrees_with_the_round_machine_simulation() {
    both(false, &[(2, Behaviour::DropsAt(1))]);
}

#[test]
fn under_secure_aggregation_too_with_a_dropout_after_masking() {
    both(true, &[(4, Behaviour::DropsAfterMasking(1))]);
}
