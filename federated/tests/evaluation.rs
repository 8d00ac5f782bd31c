//! The evaluation state machine without a network: agents' counts add up
//! to exactly the counts of their pooled data, malformed reports are
//! refused without any effect, late joiners, timeouts, retries, expiry,
//! and resumption from the redb store.

mod common;

use std::path::PathBuf;

use common::*;
use yilian_federated::{
    AgentId, DataSchema, EvaluationEffect, EvaluationMachine, EvaluationPhase, EvaluationSpec,
    RejectReason, Store,
};
use yilian_models::{Dataset, EvalCounts, OnnxModel, OutputKind};

fn spec(agents: usize, min: usize) -> EvaluationSpec {
    EvaluationSpec {
        id: "eval".into(),
        model: PathBuf::from("digits.onnx"),
        output: OutputKind::Probabilities,
        schema: schema(),
        agents,
        min_agents: min,
        timeout_ms: 1_000,
        deadline_ms: None,
    }
}

fn schema() -> DataSchema {
    DataSchema {
        features: 64,
        label_column: "y".into(),
        classes: 10,
    }
}

fn id(i: u8) -> AgentId {
    [i; 32]
}

/// A model, four agents' shards (non-IID) and each shard's honest counts.
fn setup() -> (OnnxModel, Vec<Dataset>, Vec<EvalCounts>) {
    let (train, _, test) = digits_splits();
    let model = OnnxModel::from_bytes(digits_onnx(&train)).unwrap();
    let shards = test.partition_dirichlet(4, 0.5, 3).unwrap();
    let counts = shards
        .iter()
        .map(|s| model.evaluate_counts(s, OutputKind::Probabilities).unwrap())
        .collect();
    (model, shards, counts)
}

fn sends(effects: &[EvaluationEffect]) -> Vec<AgentId> {
    effects
        .iter()
        .filter_map(|e| match e {
            EvaluationEffect::SendModel { agent } => Some(*agent),
            _ => None,
        })
        .collect()
}

#[test]
fn agents_counts_add_up_to_the_central_metrics_on_their_pooled_data() {
    let (model, shards, counts) = setup();
    let mut m = EvaluationMachine::new(spec(4, 3), &model).unwrap();
    let mut sent = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        sent.extend(sends(
            &m.recruit(id(i as u8), &schema(), s.len() as u64, 0)
                .unwrap(),
        ));
    }
    assert_eq!(
        sent.len(),
        4,
        "three start it, the fourth fills the last place"
    );
    for (i, c) in counts.iter().enumerate().take(3) {
        assert!(m.submit(id(i as u8), c.clone(), 10).is_empty());
    }
    let effects = m.submit(id(3), counts[3].clone(), 20);
    let [EvaluationEffect::Evaluated(result)] = effects.as_slice() else {
        panic!("closes once every place reported: {effects:?}")
    };
    let central = model
        .evaluate_counts(&union(&shards), OutputKind::Probabilities)
        .unwrap();
    assert_eq!(result.confusion, central.confusion);
    assert_eq!(result.samples, central.samples);
    assert_eq!(result.accuracy, central.accuracy());
    assert!((result.loss - central.mean_loss()).abs() < 1e-5 * central.mean_loss());
    assert_eq!(result.participants, (0..4).map(id).collect::<Vec<_>>());
    assert!(result.missing.is_empty());
    // Only the sum is kept; the per-agent counts are gone from the state.
    assert_eq!(m.state().phase, EvaluationPhase::Done(result.clone()));
    assert!(m.is_done());
    // A sane model on digits: the figure is real, not all zeros.
    assert!(result.accuracy > 0.8, "{}", result.accuracy);
}

#[test]
fn malformed_reports_are_refused_and_change_nothing() {
    let (model, shards, counts) = setup();
    let mut m = EvaluationMachine::new(spec(3, 3), &model).unwrap();
    for (i, s) in shards.iter().enumerate().take(3) {
        m.recruit(id(i as u8), &schema(), s.len() as u64, 0)
            .unwrap();
    }
    m.submit(id(0), counts[0].clone(), 5);
    let before = m.state().clone();
    let good = counts[1].clone();

    let mut wrong_shape = good.clone();
    wrong_shape.confusion.pop();
    let mut ragged = good.clone();
    ragged.confusion[4].push(0);
    let mut not_adding_up = good.clone();
    not_adding_up.confusion[2][2] += 1;
    let mut fewer_samples = good.clone();
    fewer_samples.samples -= 1;
    fewer_samples.confusion[0][0] = fewer_samples.confusion[0][0].saturating_sub(1);
    let mut bad_loss = good.clone();
    bad_loss.loss_sum = f64::NAN;
    let cases = [
        (
            id(1),
            wrong_shape,
            RejectReason::MatrixShape {
                rows: 9,
                cols: 10,
                expected: 10,
            },
        ),
        (
            id(1),
            ragged,
            RejectReason::MatrixShape {
                rows: 10,
                cols: 11,
                expected: 10,
            },
        ),
        (
            id(1),
            not_adding_up,
            RejectReason::CountsDoNotAddUp {
                counted: good.samples + 1,
                samples: good.samples,
            },
        ),
        (
            id(1),
            fewer_samples.clone(),
            RejectReason::SamplesDiffer {
                reported: good.samples - 1,
                declared: good.samples,
            },
        ),
        (
            id(1),
            bad_loss,
            RejectReason::ImpossibleLoss {
                samples: good.samples,
            },
        ),
        (id(0), counts[0].clone(), RejectReason::Duplicate),
        (id(9), good.clone(), RejectReason::NotSelected),
    ];
    for (agent, report, reason) in cases {
        assert_eq!(
            m.submit(agent, report, 10),
            vec![EvaluationEffect::Rejected {
                agent,
                reason: reason.clone()
            }],
            "{reason}"
        );
        assert_eq!(
            m.state(),
            &before,
            "a refused report ({reason}) changed the state"
        );
    }
    // Even at the deadline, a refused report does not close the evaluation;
    // only the clock does.
    assert_eq!(m.state(), &before);
    assert!(m.submit(id(1), good, 20).is_empty());
    assert!(matches!(
        m.tick(1_000).as_slice(),
        [
            EvaluationEffect::Abandoned { received: 2, .. },
            EvaluationEffect::SendModel { .. },
            ..
        ]
    ));
}

#[test]
fn late_joiners_take_free_places_and_the_timeout_closes_with_the_minimum() {
    let (model, shards, counts) = setup();
    let mut m = EvaluationMachine::new(spec(4, 2), &model).unwrap();
    assert!(
        m.recruit(id(0), &schema(), shards[0].len() as u64, 0)
            .unwrap()
            .is_empty()
    );
    let started = m
        .recruit(id(1), &schema(), shards[1].len() as u64, 0)
        .unwrap();
    assert_eq!(sends(&started), vec![id(0), id(1)]);
    assert_eq!(
        sends(
            &m.recruit(id(2), &schema(), shards[2].len() as u64, 100)
                .unwrap()
        ),
        vec![id(2)]
    );
    // Agent 2 leaves; agent 3 takes the last place, then agent 2 comes back
    // and is owed the model again.
    assert!(m.leave(id(2), 150).is_empty());
    assert_eq!(
        sends(
            &m.recruit(id(3), &schema(), shards[3].len() as u64, 200)
                .unwrap()
        ),
        vec![id(3)]
    );
    assert_eq!(
        sends(
            &m.recruit(id(2), &schema(), shards[2].len() as u64, 250)
                .unwrap()
        ),
        vec![id(2)]
    );
    // A fifth agent finds every place taken.
    assert!(m.recruit(id(4), &schema(), 10, 260).unwrap().is_empty());
    assert!(m.submit(id(0), counts[0].clone(), 300).is_empty());
    assert!(m.submit(id(3), counts[3].clone(), 300).is_empty());
    assert!(m.tick(999).is_empty(), "not before the timeout");
    let effects = m.tick(1_000);
    let [EvaluationEffect::Evaluated(r)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(r.participants, vec![id(0), id(3)]);
    assert_eq!(r.missing, vec![id(1), id(2)]);
    assert_eq!(r.samples, counts[0].samples + counts[3].samples);
}

#[test]
fn too_few_reports_are_retried_then_the_deadline_expires_the_evaluation() {
    let (model, shards, counts) = setup();
    let mut s = spec(2, 2);
    s.deadline_ms = Some(5_000);
    let mut m = EvaluationMachine::new(s, &model).unwrap();
    m.recruit(id(0), &schema(), shards[0].len() as u64, 0)
        .unwrap();
    m.recruit(id(1), &schema(), shards[1].len() as u64, 0)
        .unwrap();
    m.submit(id(0), counts[0].clone(), 10);
    let effects = m.tick(1_000);
    assert_eq!(
        effects[0],
        EvaluationEffect::Abandoned {
            attempt: 0,
            received: 1
        }
    );
    // The retry asks both again; the earlier report does not carry over.
    assert_eq!(sends(&effects[1..]), vec![id(0), id(1)]);
    assert!(matches!(
        m.state().phase,
        EvaluationPhase::Collecting { attempt: 1, ref received, .. } if received.is_empty()
    ));
    assert_eq!(
        m.tick(5_000),
        vec![
            EvaluationEffect::Abandoned {
                attempt: 1,
                received: 0
            },
            EvaluationEffect::Expired
        ]
    );
    assert!(m.is_done() && m.result().is_none());
}

#[test]
fn a_restored_evaluation_counts_each_report_once_and_finishes_the_same() {
    let (model, shards, counts) = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let mut m = EvaluationMachine::new(spec(3, 3), &model).unwrap();
    for (i, s) in shards.iter().enumerate().take(3) {
        m.recruit(id(i as u8), &schema(), s.len() as u64, 0)
            .unwrap();
    }
    m.submit(id(0), counts[0].clone(), 10);
    m.submit(id(1), counts[1].clone(), 10);
    Store::open(&path)
        .unwrap()
        .save_evaluation(m.state())
        .unwrap();
    let mut straight = m;
    let expected = straight.submit(id(2), counts[2].clone(), 20);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.evaluation_ids().unwrap(), vec!["eval".to_owned()]);
    assert!(store.task_ids().unwrap().is_empty());
    let mut resumed =
        EvaluationMachine::restore(store.load_evaluation("eval").unwrap().unwrap()).unwrap();
    // The reconnecting agent whose report was counted is not asked again
    // and its repeat is refused; the one still owed is sent the model.
    assert!(
        sends(
            &resumed
                .recruit(id(0), &schema(), shards[0].len() as u64, 15)
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(
        resumed.submit(id(0), counts[0].clone(), 15),
        vec![EvaluationEffect::Rejected {
            agent: id(0),
            reason: RejectReason::Duplicate
        }]
    );
    assert_eq!(
        sends(
            &resumed
                .recruit(id(2), &schema(), shards[2].len() as u64, 15)
                .unwrap()
        ),
        vec![id(2)]
    );
    assert_eq!(resumed.submit(id(2), counts[2].clone(), 20), expected);
}

#[test]
fn models_that_do_not_fit_the_schema_are_refused() {
    let (model, _, _) = setup();
    let mut wide = spec(3, 2);
    wide.schema.features = 30;
    assert!(EvaluationMachine::new(wide, &model).is_err());
    let mut many = spec(3, 2);
    many.schema.classes = 11;
    assert!(EvaluationMachine::new(many, &model).is_err());
    let mut m = EvaluationMachine::new(spec(3, 2), &model).unwrap();
    let other = DataSchema {
        label_column: "label".into(),
        ..schema()
    };
    assert!(m.recruit(id(0), &other, 10, 0).is_err());
    assert!(m.recruit(id(0), &schema(), 0, 0).is_err());
    assert!(m.state().recruited.is_empty());
}
