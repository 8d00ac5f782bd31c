//! Buffered asynchronous aggregation (FedBuff) on the round machine, with
//! real training on digits: agents train at their own speeds, updates
//! arrive stale and are weighted for it, too-stale ones are refused, each
//! buffer makes a round with rewards, and under secure aggregation each
//! buffer is one SecAgg+ cohort.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use yilian_federated::sim::Simulation;
use yilian_federated::{
    AgentId, Aggregation, Effect, RejectReason, RoundMachine, RoundRecord, Strategy, TaskFile,
    TaskSpec, Update,
};
use yilian_models::{Dataset, ModelSpec, TrainConfig};

fn buffered(mut t: TaskSpec, size: usize, max_staleness: u32) -> TaskSpec {
    t.aggregation = Aggregation::Buffered {
        size,
        max_staleness,
    };
    t
}

/// The machine of `task` with agents 1, 2, ... recruited (agent `i` is
/// `i` followed by zeros).
fn recruited(task: TaskSpec, validation: Dataset, agents: u8) -> (RoundMachine, Vec<AgentId>) {
    let w0 = task.model.init_weights(task.init_seed).unwrap();
    let mut m = RoundMachine::new(task, w0, validation).unwrap();
    let schema = yilian_federated::DataSchema {
        features: 64,
        label_column: "y".into(),
        classes: 10,
    };
    let ids: Vec<AgentId> = (1..=agents)
        .map(|i| {
            let mut a = [0u8; 32];
            a[0] = i;
            a
        })
        .collect();
    for id in &ids {
        m.recruit(*id, &schema).unwrap();
    }
    (m, ids)
}

/// The models the effects send: to whom, which version, how to train.
fn models_sent(effects: Vec<Effect>) -> Vec<(AgentId, u32, TrainConfig)> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::SendModel {
                agent,
                round,
                config,
            } => Some((agent, round, config)),
            _ => None,
        })
        .collect()
}

/// An honest update on `data` from the model of `round`.
fn train_from(m: &RoundMachine, round: u32, config: &TrainConfig, data: &Dataset) -> Update {
    let out = yilian_models::train(m.spec(), m.model_for(round), data, config).unwrap();
    Update {
        weights: out.weights,
        samples: out.samples as u64,
        loss: out.loss,
    }
}

/// What an asynchronous run saw.
struct Run {
    records: Vec<RoundRecord>,
    global: Vec<f32>,
    /// (staleness, count) of the updates that counted.
    staleness: BTreeMap<u32, usize>,
    rejected: Vec<(AgentId, RejectReason)>,
}

/// Drives the machine with agents that take `speed[i]` ms per local
/// training: each model sent is trained on the version it was sent and
/// arrives when that agent is done, in time order.
fn run_async(task: TaskSpec, validation: Dataset, shards: Vec<Dataset>, speed: &[u64]) -> Run {
    let (mut m, ids) = recruited(task, validation, shards.len() as u8);
    // (finish time, agent index) -> (round, trained update)
    let mut pending: BTreeMap<(u64, usize), (u32, Update)> = BTreeMap::new();
    let mut out = Run {
        records: Vec::new(),
        global: Vec::new(),
        staleness: BTreeMap::new(),
        rejected: Vec::new(),
    };
    let mut now = 0;
    let mut effects = m.tick(now);
    loop {
        for e in std::mem::take(&mut effects) {
            match e {
                Effect::SendModel {
                    agent,
                    round,
                    config,
                } => {
                    let i = ids.iter().position(|a| *a == agent).unwrap();
                    let update = train_from(&m, round, &config, &shards[i]);
                    pending.insert((now + speed[i], i), (round, update));
                }
                Effect::RoundClosed(r) => out.records.push(r),
                Effect::Rejected { agent, reason } => out.rejected.push((agent, reason)),
                _ => {}
            }
        }
        if m.is_done() {
            break;
        }
        let Some(((at, i), (round, update))) = pending.pop_first() else {
            panic!("nothing in flight and the task is not done");
        };
        now = at;
        let version = m.current_round().unwrap();
        effects = m.submit(ids[i], round, update, now);
        let refused = effects
            .iter()
            .any(|e| matches!(e, Effect::Rejected { agent, .. } if *agent == ids[i]));
        if !refused {
            *out.staleness.entry(version - round).or_default() += 1;
        }
    }
    out.global = m.global().to_vec();
    out
}

#[test]
fn the_task_file_takes_buffered_aggregation_and_refuses_impossible_buffers() {
    let base = r#"
id = "b"
rounds = 5
agents_per_round = 6
min_agents = 6
local_epochs = 1
batch_size = 16
validation = "v.csv"
reward_budget = 100
round_timeout_ms = 1000
optimizer = { sgd = { lr = 0.1 } }
AGG
[model]
input = [64]
layers = [{ linear = { out = 10 } }, "softmax"]
[schema]
features = 64
label_column = "y"
classes = 10
"#;
    let parse = |agg: &str| TaskFile::from_toml(&base.replace("AGG", agg));
    let Ok(TaskFile::Training(t)) =
        parse("aggregation = { buffered = { size = 3, max_staleness = 2 } }")
    else {
        panic!("a buffered task parses")
    };
    assert_eq!(
        t.aggregation,
        Aggregation::Buffered {
            size: 3,
            max_staleness: 2
        }
    );
    let Ok(TaskFile::Training(t)) = parse("") else {
        panic!()
    };
    assert_eq!(t.aggregation, Aggregation::Synchronous);
    for (agg, expected) in [
        (
            "aggregation = { buffered = { size = 0, max_staleness = 2 } }",
            "aggregation.buffered.size must be at least 1 and at most min_agents",
        ),
        (
            "aggregation = { buffered = { size = 7, max_staleness = 2 } }",
            "aggregation.buffered.size must be at least 1 and at most min_agents",
        ),
        (
            "aggregation = { buffered = { size = 3, max_staleness = 2 } }\nrobust = \"coordinate_median\"",
            "robust: median, trimmed mean and Krum are not applied to buffered updates",
        ),
        (
            "aggregation = { buffered = { size = 3, max_staleness = 2 } }\nsecure_aggregation = true\n[secagg]\nmin_group = 4",
            "aggregation.buffered.size must be at least secagg.min_group",
        ),
        ("aggregation = { buffered = { size = 3 } }", "max_staleness"),
    ] {
        let err = parse(agg).unwrap_err().to_string();
        assert!(err.contains(expected), "{agg}: {err}");
    }
}

#[test]
fn digits_non_iid_trains_asynchronously_with_stale_updates_weighted_and_too_stale_refused() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::mlp(64, 32, 10);
    let mut t = buffered(task("digits-fedbuff", spec.clone(), 10, 40, 10, 10), 5, 3);
    t.strategy = Strategy::FedProx { mu: 0.01 };
    let shards = train.partition_dirichlet(10, 0.5, 3).unwrap();
    // Eight agents of similar speed, one twice as slow, one far too slow
    // to ever be fresh.
    let speed = [100, 110, 120, 90, 95, 105, 115, 125, 230, 1_000];
    let run = run_async(t, validation, shards, &speed);
    assert_eq!(run.records.len(), 40);
    let acc = test_accuracy(&spec, &run.global, &test);
    eprintln!(
        "FedBuff digits non-IID: test accuracy {acc:.4} after 40 buffers; staleness {:?}",
        run.staleness
    );
    assert!(acc >= 0.85, "test accuracy {acc}");
    // Updates arrived stale and still counted.
    assert!(run.staleness.keys().any(|s| *s > 0), "{:?}", run.staleness);
    assert!(run.staleness.keys().all(|s| *s <= 3));
    // The far too slow agent's updates were refused as stale, never counted.
    let mut slow = [0u8; 32];
    slow[0] = 10;
    assert!(
        run.rejected
            .iter()
            .any(|(a, r)| *a == slow && matches!(r, RejectReason::Stale { max: 3, .. })),
        "{:?}",
        run.rejected
    );
    for r in &run.records {
        assert_eq!(r.participants.len(), 5);
        let unique: BTreeSet<&AgentId> = r.participants.iter().collect();
        assert_eq!(unique.len(), 5, "an agent counts once per buffer");
        assert!(!r.participants.contains(&slow));
    }
    assert_eq!(
        run.records.iter().flat_map(|r| &r.rewards).sum::<u64>(),
        10_000
    );
}

#[test]
fn each_buffer_is_one_secure_aggregation_under_secagg() {
    let (train, validation, test) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let mut t = buffered(
        task("digits-fedbuff-secure", spec.clone(), 10, 12, 10, 10),
        5,
        2,
    );
    t.secure_aggregation = true;
    t.secagg.clip = 50.0;
    t.secagg.min_group = 5;
    let w0 = t.model.init_weights(t.init_seed).unwrap();
    let machine = RoundMachine::new(t, w0, validation).unwrap();
    let shards = train.partition_dirichlet(10, 0.5, 3).unwrap();
    let mut sim = Simulation::new(machine, agents(shards, &[]), None).unwrap();
    let mut records = Vec::new();
    // Nothing the coordinator holds is a single update: after every round
    // its state has no buffer of plain changes under secure aggregation.
    let mut looked = 0;
    sim.run_until(
        |r| records.push(r.clone()),
        |sim| {
            if let yilian_federated::Phase::Buffered(b) = &sim.machine.state().phase {
                assert!(b.buffer.is_empty());
                looked += 1;
            }
            false
        },
    )
    .unwrap();
    assert!(looked >= 10, "looked at the state after {looked} rounds");
    assert_eq!(records.len(), 12);
    for r in &records {
        // The coordinator learned one sum per cohort of five.
        assert_eq!(r.participants.len(), 5, "{r:?}");
        assert_eq!(
            r.evaluations, 2,
            "one group: the empty and the full coalition"
        );
        assert!(r.failures.is_empty());
    }
    // Two cohorts were in flight at a time; the task still made exactly
    // its rounds and paid exactly its budget.
    assert_eq!(records.iter().flat_map(|r| &r.rewards).sum::<u64>(), 10_000);
    let acc = test_accuracy(&spec, sim.machine.global(), &test);
    eprintln!("FedBuff with SecAgg+ cohorts: test accuracy {acc:.4} after 12 buffers");
    assert!(acc >= 0.8, "test accuracy {acc}");
}

/// A buffer that can no longer fill (its last agent left) is applied as it
/// is once everyone else's update is in; the late update is refused.
#[test]
fn a_buffer_that_cannot_fill_is_applied_when_nobody_else_trains() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let mut t = buffered(task("digits-fedbuff-stuck", spec, 10, 2, 3, 3), 3, 2);
    t.round_timeout_ms = 1_000;
    let (mut m, ids) = recruited(t, validation, 3);
    let shards = train.partition_iid(3, 4);
    let sent = models_sent(m.tick(0));
    assert_eq!(sent.len(), 3);
    let mut late = None;
    for (agent, round, config) in &sent {
        let i = ids.iter().position(|a| a == agent).unwrap();
        let u = train_from(&m, *round, config, &shards[i]);
        if i == 2 {
            late = Some((*agent, *round, u));
            continue;
        }
        let effects = m.submit(*agent, *round, u, 10);
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::RoundClosed(_))),
            "two of three: the buffer is not full"
        );
    }
    // The third agent disconnects: nobody else trains, so the buffer of two
    // is applied.
    let effects = m.leave(ids[2], 20);
    let closed: Vec<&RoundRecord> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::RoundClosed(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{effects:?}");
    assert_eq!(closed[0].participants.len(), 2);
    let (agent, round, u) = late.unwrap();
    let refused = m.submit(agent, round, u, 2_001);
    assert!(
        refused
            .iter()
            .any(|e| matches!(e, Effect::Rejected { agent: a, .. } if *a == agent)),
        "{refused:?}"
    );
}

/// An agent back on a new connection is sent the newest model, which its
/// update must then come from; the others keep the models they were sent.
#[test]
fn a_reconnected_agent_is_resent_the_newest_model_and_no_one_else_is_moved() {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let t = buffered(task("digits-fedbuff-resend", spec, 10, 5, 3, 2), 2, 2);
    let (mut m, ids) = recruited(t, validation, 3);
    let shards = train.partition_iid(3, 6);
    let train_on = |i: usize, round: u32, config: &TrainConfig, m: &RoundMachine| {
        train_from(m, round, config, &shards[i])
    };
    let first = models_sent(m.tick(0));
    assert_eq!(first.len(), 3);
    // Agents 1 and 2 fill the first buffer: version 1; they are sent it.
    let mut again = Vec::new();
    for (agent, round, config) in first.iter().filter(|(a, ..)| *a != ids[2]) {
        let i = ids.iter().position(|a| a == agent).unwrap();
        let u = train_on(i, *round, config, &m);
        again.extend(models_sent(m.submit(*agent, *round, u, 10)));
    }
    assert_eq!(m.current_round(), Some(1));
    assert!(again.iter().all(|(_, r, _)| *r == 1), "{again:?}");
    // Agent 3, still on version 0, comes back: it is sent version 1 alone.
    let resent = models_sent(m.resend_to(ids[2]));
    assert_eq!(resent.len(), 1);
    assert_eq!((resent[0].0, resent[0].1), (ids[2], 1));
    // Its old work no longer counts; its new work does.
    let (_, _, config0) = first.iter().find(|(a, ..)| *a == ids[2]).unwrap();
    let old = train_on(2, 0, config0, &m);
    let refused = m.submit(ids[2], 0, old, 20);
    assert!(refused.iter().any(|e| matches!(
        e,
        Effect::Rejected {
            reason: RejectReason::WrongRound { got: 0, current: 1 },
            ..
        }
    )));
    let new = train_on(2, 1, &resent[0].2, &m);
    let counted = m.submit(ids[2], 1, new, 21);
    assert!(
        !counted.iter().any(|e| matches!(e, Effect::Rejected { .. })),
        "{counted:?}"
    );
    // Agent 1's model of version 1 still counts: it was not moved.
    let (a1, r1, c1) = again.iter().find(|(a, ..)| *a == ids[0]).unwrap();
    let u1 = train_on(0, *r1, c1, &m);
    let effects = m.submit(*a1, *r1, u1, 22);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::RoundClosed(r) if r.participants.len() == 2)),
        "{effects:?}"
    );
}
