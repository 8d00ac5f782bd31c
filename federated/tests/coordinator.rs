//! The round state machine's guarantees: stragglers and deadlines, bad
//! updates refused without effect, schema mismatches refused, durable
//! resumption with every update counted once, and GTG-Shapley's ranking
//! against exact Shapley values on real models.

mod common;

use common::*;
use yilian_federated::contribution::{GtgConfig, exact_shapley, gtg_shapley, spearman};
use yilian_federated::sim::{Behaviour, SimAgent, Simulation};
use yilian_federated::{
    DataSchema, Effect, FlError, Phase, RejectReason, RoundMachine, Store, Update,
};
use yilian_models::{ModelSpec, Optimizer, TrainConfig};

fn small_machine(per_round: usize, min: usize) -> (RoundMachine, Vec<SimAgent>) {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let mut t = task("sm", spec.clone(), 10, 3, per_round, min);
    t.round_timeout_ms = 1_000;
    let w0 = spec.init_weights(1).unwrap();
    let machine = RoundMachine::new(t, w0, validation).unwrap();
    (machine, agents(train.partition_iid(per_round, 9), &[]))
}

fn trained(machine: &RoundMachine, agent: &SimAgent) -> Update {
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 32,
        optimizer: Optimizer::Adam { lr: 0.01 },
        proximal: None,
        seed: 1,
    };
    let out = yilian_models::train(machine.spec(), machine.global(), &agent.data, &cfg).unwrap();
    Update {
        weights: out.weights,
        samples: out.samples as u64,
        loss: out.loss,
    }
}

fn schema() -> DataSchema {
    DataSchema {
        features: 64,
        label_column: "y".into(),
        classes: 10,
    }
}

#[test]
fn round_waits_for_stragglers_until_the_deadline_then_closes_with_the_minimum() {
    let (mut m, agents) = small_machine(5, 3);
    for a in &agents {
        m.recruit(a.id, &schema()).unwrap();
    }
    let effects = m.tick(0);
    let sends: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendModel {
                agent, round: 0, ..
            } => Some(*agent),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 5);
    for a in agents.iter().take(3) {
        let u = trained(&m, a);
        assert!(
            m.submit(a.id, 0, u, 10).is_empty(),
            "no close before the deadline"
        );
    }
    assert!(m.tick(999).is_empty());
    let effects = m.tick(1_000);
    let Some(Effect::RoundClosed(record)) = effects.first() else {
        panic!("round closes at the deadline: {effects:?}")
    };
    assert_eq!(record.participants.len(), 3);
    assert_eq!(record.missing.len(), 2);
    // The straggler's late update is refused as being for a past round.
    let late = trained(&m, &agents[4]);
    let effects = m.submit(agents[4].id, 0, late, 1_001);
    assert!(matches!(
        effects.first(),
        Some(Effect::Rejected {
            reason: RejectReason::WrongRound { got: 0, current: 1 },
            ..
        })
    ));
}

#[test]
fn an_agent_sitting_out_ends_the_wait_for_it_and_stays_recruited() {
    let (mut m, agents) = small_machine(3, 2);
    for a in &agents {
        m.recruit(a.id, &schema()).unwrap();
    }
    m.tick(0);
    for a in agents.iter().take(2) {
        let u = trained(&m, a);
        assert!(m.submit(a.id, 0, u, 10).is_empty(), "the third is awaited");
    }
    // The third sits out: the round closes now, not at the deadline.
    let effects = m.sit_out(agents[2].id, 20);
    let Some(Effect::RoundClosed(record)) = effects.first() else {
        panic!("round closes once nobody is awaited: {effects:?}")
    };
    assert_eq!(record.participants.len(), 2);
    assert!(m.state().recruited.contains(&agents[2].id));
    // The next round starts at once, and it is in it.
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::SendModel { agent, round: 1, .. } if *agent == agents[2].id
        )),
        "it is sent the next round's model: {effects:?}"
    );
    // Sitting out when not selected, or twice, changes nothing.
    assert!(m.sit_out([9; 32], 22).is_empty());
}

#[test]
fn too_few_updates_abandon_the_round_and_resample() {
    let (mut m, agents) = small_machine(5, 3);
    for a in &agents {
        m.recruit(a.id, &schema()).unwrap();
    }
    m.tick(0);
    let u = trained(&m, &agents[0]);
    m.submit(agents[0].id, 0, u, 1);
    let effects = m.tick(1_000);
    assert!(matches!(
        effects[0],
        Effect::RoundAbandoned {
            round: 0,
            received: 1
        }
    ));
    assert!(matches!(
        m.state().phase,
        Phase::Training {
            round: 0,
            attempt: 1,
            ..
        }
    ));
    assert!(m.state().history.is_empty());
}

#[test]
fn malformed_oversized_and_duplicate_updates_are_refused_without_effect() {
    let (mut m, agents) = small_machine(4, 2);
    for a in &agents {
        m.recruit(a.id, &schema()).unwrap();
    }
    m.tick(0);
    let before = m.state().clone();
    let good = trained(&m, &agents[0]);
    let mut wrong_shape = good.clone();
    wrong_shape.weights.truncate(10);
    let mut oversized = good.clone();
    oversized.weights.extend(vec![0.0; 1_000_000]);
    let mut nan = good.clone();
    nan.weights[3] = f32::NAN;
    let mut zero = good.clone();
    zero.samples = 0;
    for (bad, expect) in [
        (
            wrong_shape,
            RejectReason::WrongShape {
                got: 10,
                expected: 650,
            },
        ),
        (
            oversized,
            RejectReason::WrongShape {
                got: 1_000_650,
                expected: 650,
            },
        ),
        (nan, RejectReason::NonFinite),
        (zero, RejectReason::BadSampleCount(0)),
    ] {
        let effects = m.submit(agents[1].id, 0, bad, 1);
        assert_eq!(
            effects,
            vec![Effect::Rejected {
                agent: agents[1].id,
                reason: expect
            }]
        );
    }
    let Phase::Training { received, .. } = &m.state().phase else {
        panic!()
    };
    assert!(received.is_empty());
    assert_eq!(
        m.global(),
        before.global.as_slice(),
        "global model unchanged"
    );
    // An unrecruited agent's update does not count either.
    let effects = m.submit([9; 32], 0, good.clone(), 1);
    assert!(matches!(
        effects[0],
        Effect::Rejected {
            reason: RejectReason::NotSelected,
            ..
        }
    ));
    // A good update counts once; its repeat is refused.
    assert!(m.submit(agents[0].id, 0, good.clone(), 2).is_empty());
    let effects = m.submit(agents[0].id, 0, good, 3);
    assert!(matches!(
        effects[0],
        Effect::Rejected {
            reason: RejectReason::Duplicate,
            ..
        }
    ));
}

#[test]
fn schema_mismatch_is_refused_with_a_clear_error() {
    let (mut m, _) = small_machine(4, 2);
    let bad = DataSchema {
        features: 30,
        label_column: "y".into(),
        classes: 2,
    };
    let err = m.recruit([1; 32], &bad).unwrap_err();
    assert!(matches!(
        err,
        FlError::SchemaMismatch {
            field: "feature count",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "data schema mismatch on feature count: the task needs 64, the agent has 30"
    );
    assert!(m.state().recruited.is_empty());
}

#[test]
fn reopened_store_resumes_mid_round_counting_each_update_once() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::mlp(64, 32, 10);
    let t = task("resume", spec.clone(), 10, 3, 6, 6);
    let shards = train.partition_iid(6, 11);
    let w0 = spec.init_weights(t.init_seed).unwrap();

    // Reference: uninterrupted.
    let (reference, ref_global, _) =
        run(t.clone(), validation.clone(), agents(shards.clone(), &[]));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.redb");
    let counted_before_crash;
    let mut sent = Vec::new();
    {
        let store = Store::open(&path).unwrap();
        let machine = RoundMachine::new(t.clone(), w0, validation.clone()).unwrap();
        let mut sim = Simulation::new(machine, agents(shards.clone(), &[]), Some(store)).unwrap();
        // Finish round 0, then deliver three of round 1's six updates by hand.
        sim.run_until(|_| {}, |s| s.machine.state().history.len() == 1)
            .unwrap();
        let Phase::Training {
            round: 1, selected, ..
        } = sim.machine.state().phase.clone()
        else {
            panic!("round 1 open")
        };
        for id in &selected[..3] {
            let a = sim.agents.iter().find(|a| a.id == *id).unwrap();
            let cfg = sim.machine.state().task.train_config(1, id);
            let out = yilian_models::train(&spec, sim.machine.global(), &a.data, &cfg).unwrap();
            let u = Update {
                weights: out.weights,
                samples: out.samples as u64,
                loss: out.loss,
            };
            sent.push((*id, u.clone()));
            sim.deliver(*id, 1, u).unwrap();
        }
        counted_before_crash = selected[..3].to_vec();
        // The coordinator dies here: nothing is flushed beyond what each event saved.
    }
    let store = Store::open(&path).unwrap();
    let state = store.load("resume").unwrap().expect("state persisted");
    let Phase::Training {
        round: 1, received, ..
    } = &state.phase
    else {
        panic!("resumed mid-round")
    };
    assert_eq!(
        received.keys().copied().collect::<Vec<_>>(),
        counted_before_crash
    );
    let machine = RoundMachine::restore(state, validation).unwrap();
    let mut sim = Simulation::new(machine, agents(shards, &[]), Some(store)).unwrap();
    // Agents that had already sent their update send it again after the restart.
    for (id, u) in sent {
        let effects = sim.machine.submit(id, 1, u, 0);
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
    for (r, reference) in history.iter().zip(&reference) {
        let mut p = r.participants.clone();
        p.dedup();
        assert_eq!(p.len(), 6, "each agent counted exactly once");
        assert_eq!(r.participants, reference.participants);
        assert_eq!(
            r.accuracy, reference.accuracy,
            "same result as without the crash"
        );
    }
    assert_eq!(sim.machine.global(), ref_global.as_slice());
}

#[test]
fn gtg_shapley_ranks_real_agents_like_exact_shapley() {
    // Five agents of clearly different worth: plenty of data, less, little,
    // very little, and plenty of data with shuffled labels.
    let worth = Worth::new(&[400, 150, 40, 10, 300], &[4]);
    let utility = |s: &[usize]| worth.utility(s);
    let exact = exact_shapley(5, utility);
    let est = gtg_shapley(5, utility, GtgConfig::default());
    eprintln!(
        "exact {exact:?}\nGTG   {:?} ({} coalitions)",
        est.values, est.evaluations
    );
    let argmin = |v: &[f64]| (0..v.len()).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(argmin(&est.values), argmin(&exact));
    assert_eq!(argmax(&est.values), argmax(&exact));
    assert!(spearman(&exact, &est.values) >= 0.8);
}

#[test]
fn behaviours_that_send_garbage_are_rejected_in_a_full_run() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let t = task("garbage", spec, 10, 2, 5, 3);
    let shards = train.partition_iid(5, 12);
    let (records, _, agents) = run(
        t,
        validation,
        agents(
            shards,
            &[(1, Behaviour::WrongShape), (3, Behaviour::NotFinite)],
        ),
    );
    for r in &records {
        assert_eq!(r.participants.len(), 3);
        assert_eq!(r.rejected.len(), 2);
    }
    assert_eq!(agents[1].rejections, 2);
    assert_eq!(agents[3].rejections, 2);
}

/// A closed round stays owed to the ledger, in the persisted state, until
/// the driver marks it recorded: a coordinator killed in between replays it.
#[test]
fn closed_rounds_stay_unrecorded_in_the_store_until_marked() {
    let dir = tempfile::tempdir().unwrap();
    let (machine, agents) = small_machine(4, 4);
    let store = Store::open(&dir.path().join("fl.redb")).unwrap();
    let mut sim = Simulation::new(machine, agents, Some(store)).unwrap();
    sim.run_until(|_| {}, |s| s.machine.state().history.len() == 2)
        .unwrap();
    let owed: Vec<u32> = sim.machine.unrecorded().iter().map(|r| r.round).collect();
    assert_eq!(owed, vec![0, 1]);
    let reopened = |sim: &Simulation| {
        let store = sim.store.as_ref().unwrap();
        store.load("sm").unwrap().unwrap().unrecorded
    };
    assert_eq!(reopened(&sim), [0, 1].into());
    sim.machine.mark_recorded(0);
    sim.store
        .as_ref()
        .unwrap()
        .save(sim.machine.state())
        .unwrap();
    assert_eq!(reopened(&sim), [1].into());
    assert_eq!(sim.machine.unrecorded()[0].round, 1);
}
