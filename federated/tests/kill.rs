//! A coordinator process killed with SIGKILL mid-round resumes from its
//! redb store and finishes the task, each update counted exactly once.
//!
//! The test re-runs its own binary as the coordinator child (selected by an
//! environment variable), waits until the child has counted part of a round,
//! kills it, and finishes the task from the store in this process.

mod common;

use common::*;
use yilian_federated::sim::Simulation;
use yilian_federated::{Effect, Phase, RejectReason, RoundMachine, Store, TaskSpec, Update};
use yilian_models::ModelSpec;

const CHILD_ENV: &str = "YILIAN_FL_KILL_CHILD_STORE";

fn the_task() -> TaskSpec {
    task("kill9", ModelSpec::mlp(64, 32, 10), 10, 3, 6, 6)
}

/// The child: runs round 0, counts three of round 1's updates, says so, then hangs.
#[test]
fn coordinator_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when started by the test below
    };
    let (train, validation, _) = digits_splits();
    let t = the_task();
    let w0 = t.model.init_weights(t.init_seed).unwrap();
    let machine = RoundMachine::new(t, w0, validation).unwrap();
    let store = Store::open(std::path::Path::new(&path)).unwrap();
    let mut sim = Simulation::new(
        machine,
        agents(train.partition_iid(6, 11), &[]),
        Some(store),
    )
    .unwrap();
    sim.run_until(|_| {}, |s| s.machine.state().history.len() == 1)
        .unwrap();
    let Phase::Training { selected, .. } = sim.machine.state().phase.clone() else {
        panic!("round 1 open")
    };
    for id in &selected[..3] {
        let a = sim.agents.iter().find(|a| a.id == *id).unwrap();
        let cfg = sim.machine.state().task.train_config(1, id);
        let out =
            yilian_models::train(sim.machine.spec(), sim.machine.global(), &a.data, &cfg).unwrap();
        sim.deliver(
            *id,
            1,
            Update {
                weights: out.weights,
                samples: out.samples as u64,
                loss: out.loss,
            },
        )
        .unwrap();
    }
    println!("READY");
    std::thread::sleep(std::time::Duration::from_secs(600));
}

#[test]
fn coordinator_killed_with_sigkill_mid_round_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.redb");
    let mut child = spawn_ready(
        "coordinator_child_process",
        CHILD_ENV,
        path.to_str().unwrap(),
    );
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let store = Store::open(&path).unwrap();
    let state = store.load("kill9").unwrap().unwrap();
    let Phase::Training {
        round: 1,
        received,
        selected,
        ..
    } = state.phase.clone()
    else {
        panic!("stored mid-round: {:?}", state.phase)
    };
    assert_eq!(received.len(), 3);
    assert_eq!(state.history.len(), 1);
    let counted: Vec<_> = received.keys().copied().collect();
    let (train, validation, _) = digits_splits();
    let machine = RoundMachine::restore(state, validation).unwrap();
    let mut sim = Simulation::new(
        machine,
        agents(train.partition_iid(6, 11), &[]),
        Some(store),
    )
    .unwrap();
    // Agents whose updates were counted resend them after reconnecting: refused as duplicates.
    for id in &counted {
        let u = received[id].clone();
        let effects = sim.machine.submit(*id, 1, u, 0);
        assert!(matches!(
            effects[0],
            Effect::Rejected {
                reason: RejectReason::Duplicate,
                ..
            }
        ));
    }
    sim.run(|_| {}).unwrap();
    let history = &sim.machine.state().history;
    assert_eq!(history.len(), 3);
    let mut round1 = history[1].participants.clone();
    round1.sort_unstable();
    round1.dedup();
    assert_eq!(round1.len(), 6);
    assert_eq!(round1, selected);
}
