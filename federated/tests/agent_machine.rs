//! The agent's side of the protocol without a network: what it sends, what
//! it declines, what local work it asks for, and what it refuses.

use yilian_federated::agent::{Action, AgentEvent, AgentMachine};
use yilian_federated::protocol::{Message, WeightsPurpose, weight_messages};
use yilian_federated::{AgentPolicy, DataSchema, FlError};
use yilian_models::{ModelSpec, Optimizer, TrainConfig};

fn schema(features: usize) -> DataSchema {
    DataSchema {
        features,
        label_column: "y".into(),
        classes: 10,
    }
}

fn offer(features: usize, local_epochs: u32) -> Message {
    let model = ModelSpec::logistic_regression(features, 10);
    Message::TaskOffer {
        task_id: "t".into(),
        params: model.param_count().unwrap() as u64,
        model,
        schema: schema(features),
        rounds: 3,
        local_epochs,
    }
}

fn config(epochs: u32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        optimizer: Optimizer::Sgd { lr: 0.1 },
        proximal: None,
        seed: 1,
    }
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn machine() -> AgentMachine {
    let (m, hello) = AgentMachine::new([1; 32], schema(64), 100, AgentPolicy::default(), true);
    assert!(matches!(
        sent(&hello)[..],
        [Message::Hello { samples: 100, .. }]
    ));
    m
}

#[test]
fn a_round_asks_for_training_from_the_model_sent_then_sends_the_update() {
    let mut m = machine();
    let joined = m.handle(offer(64, 2)).unwrap();
    assert!(matches!(sent(&joined)[..], [Message::TaskAccept { .. }]));
    assert!(
        m.handle(Message::RoundStart {
            task_id: "t".into(),
            round: 0,
            config: config(2),
        })
        .unwrap()
        .is_empty()
    );
    let spec = ModelSpec::logistic_regression(64, 10);
    let global = spec.init_weights(3).unwrap();
    let mut train = None;
    for msg in weight_messages(WeightsPurpose::Global, 0, &global) {
        for a in m.handle(msg).unwrap() {
            if let Action::Train {
                round, global: g, ..
            } = a
            {
                train = Some((round, g));
            }
        }
    }
    let (round, from) = train.expect("a training request once the model is whole");
    assert_eq!((round, &from), (0, &global));
    let outcome = yilian_models::TrainOutcome {
        weights: global.iter().map(|w| w + 0.5).collect(),
        samples: 100,
        steps: 7,
        loss: 0.25,
    };
    let out = m.trained(0, outcome, &mut rand::rng()).unwrap();
    let msgs = sent(&out);
    assert!(matches!(
        msgs[0],
        Message::WeightsHeader {
            purpose: WeightsPurpose::Update,
            round: 0,
            ..
        }
    ));
    assert!(matches!(
        msgs.last().unwrap(),
        Message::UpdateDone {
            round: 0,
            samples: 100,
            ..
        }
    ));
    // The same training handed in twice is refused: it was for one round.
    let again = yilian_models::TrainOutcome {
        weights: global.clone(),
        samples: 100,
        steps: 7,
        loss: 0.25,
    };
    assert!(matches!(
        m.trained(0, again, &mut rand::rng()),
        Err(FlError::Unexpected(_))
    ));
    // The end of the task stops a single-task agent.
    let done = m
        .handle(Message::TaskDone {
            task_id: "t".into(),
        })
        .unwrap();
    assert!(matches!(done.last(), Some(Action::Stop)));
}

#[test]
fn offers_beyond_the_data_or_the_policy_are_declined_with_the_reason() {
    let mut m = machine();
    for (bad, expected) in [
        (
            offer(30, 2),
            "feature count: the task needs 30, the agent has 64",
        ),
        (offer(64, 50), "epochs is 50, the policy allows 10"),
    ] {
        let out = m.handle(bad).unwrap();
        let [Message::TaskDecline { reason, .. }] = sent(&out)[..] else {
            panic!("{out:?}")
        };
        assert!(reason.contains(expected), "{reason}");
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Event(AgentEvent::Declined { .. })))
        );
    }
    // Declining joined nothing: weights now are out of place.
    let spec = ModelSpec::logistic_regression(64, 10);
    let mut msgs = weight_messages(WeightsPurpose::Global, 0, &spec.init_weights(1).unwrap());
    let chunk = msgs.pop().unwrap();
    assert!(matches!(m.handle(chunk), Err(FlError::BadChunk { .. })));
}

#[test]
fn a_round_asking_more_than_the_policy_or_a_refusal_is_an_error() {
    let mut m = machine();
    m.handle(offer(64, 2)).unwrap();
    let err = m
        .handle(Message::RoundStart {
            task_id: "t".into(),
            round: 0,
            config: config(99),
        })
        .unwrap_err();
    assert!(matches!(err, FlError::PolicyExceeded { .. }), "{err}");
    let err = m
        .handle(Message::Refused {
            reason: "no".into(),
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "refused by the coordinator: no");
}
