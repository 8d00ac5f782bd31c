//! The coordinator engine without a network: inputs in, commands out.
//! Sessions are keyed by connection, state is persisted before agents are
//! told, a round stays owed to the ledger until acknowledged, and bad input
//! closes only the connection that sent it.

mod common;

use common::*;
use yilian_federated::coordinator::{Command, ConnId, Durable, Engine, Input, Outgoing};
use yilian_federated::protocol::{Message, WeightsPurpose};
use yilian_federated::{AgentId, DataSchema, RoundMachine};
use yilian_identity::{Principal, Role};
use yilian_models::{Dataset, ModelSpec};

fn principal(i: u8, role: Role) -> Principal {
    Principal {
        org: "org".into(),
        role,
        name: format!("agent-{i}"),
        public_key: [i; 32],
        serial: vec![i],
    }
}

fn schema() -> DataSchema {
    DataSchema {
        features: 64,
        label_column: "y".into(),
        classes: 10,
    }
}

/// An engine with one plain digits task of `rounds` rounds for two agents.
fn engine(rounds: u32) -> (Engine, Vec<Dataset>) {
    let (train, validation, _) = digits_splits();
    let spec = ModelSpec::logistic_regression(64, 10);
    let task = task("digits-engine", spec.clone(), 10, rounds, 2, 2);
    let machine = RoundMachine::new(task, spec.init_weights(7).unwrap(), validation).unwrap();
    let mut e = Engine::default();
    let commands = e.add_task(machine).unwrap();
    assert!(matches!(commands[0], Command::Persist(Durable::Task(_))));
    (e, train.partition_iid(2, 5))
}

fn sends(commands: &[Command], to: ConnId) -> Vec<Message> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Send { conn, out } if *conn == to => Some(out.messages().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn closed(commands: &[Command], to: ConnId) -> Option<String> {
    commands.iter().find_map(|c| match c {
        Command::Close { conn, reason } if *conn == to => Some(reason.clone()),
        _ => None,
    })
}

/// Connects agent `i` on `conn`, says hello and accepts the task; returns
/// the commands of the accept.
fn join(e: &mut Engine, conn: ConnId, i: u8) -> Vec<Command> {
    e.handle(
        Input::Connected {
            conn,
            principal: principal(i, Role::Device),
        },
        0,
    );
    let offer = e.handle(
        Input::Message {
            conn,
            message: Message::Hello {
                schema: schema(),
                samples: 100,
            },
        },
        0,
    );
    assert!(
        matches!(sends(&offer, conn)[..], [Message::TaskOffer { .. }]),
        "{offer:?}"
    );
    e.handle(
        Input::Message {
            conn,
            message: Message::TaskAccept {
                task_id: "digits-engine".into(),
            },
        },
        0,
    )
}

/// Trains on the model the agent was sent and sends the update back.
fn train_and_send(e: &mut Engine, conn: ConnId, got: &[Message], data: &Dataset) -> Vec<Command> {
    let (round, config) = got
        .iter()
        .find_map(|m| match m {
            Message::RoundStart { round, config, .. } => Some((*round, config.clone())),
            _ => None,
        })
        .expect("a round start");
    let global: Vec<f32> = got
        .iter()
        .filter_map(|m| match m {
            Message::WeightsChunk { values, .. } => Some(values.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let spec = ModelSpec::logistic_regression(64, 10);
    let trained = yilian_models::train(&spec, &global, data, &config).unwrap();
    let out = Outgoing::Weights {
        purpose: WeightsPurpose::Update,
        round,
        weights: std::sync::Arc::new(trained.weights),
    };
    for message in out.messages() {
        assert!(e.handle(Input::Message { conn, message }, 1).is_empty());
    }
    e.handle(
        Input::Message {
            conn,
            message: Message::UpdateDone {
                round,
                samples: data.len() as u64,
                loss: trained.loss,
            },
        },
        1,
    )
}

fn record(commands: &[Command]) -> Option<(String, u32, usize)> {
    commands.iter().find_map(|c| match c {
        Command::Record {
            task_id, record, ..
        } => Some((task_id.clone(), record.round, record.participants.len())),
        _ => None,
    })
}

#[test]
fn a_round_runs_persists_before_telling_and_stays_owed_until_the_ledger_acknowledges() {
    let (mut e, shards) = engine(1);
    join(&mut e, 1, 1);
    let started = join(&mut e, 2, 2);
    // The second agent completes the cohort: both get the round and the model.
    let to_1 = sends(&started, 1);
    let to_2 = sends(&started, 2);
    assert!(matches!(to_1[0], Message::RoundStart { round: 0, .. }));
    assert!(matches!(to_2[0], Message::RoundStart { round: 0, .. }));
    assert!(matches!(started[0], Command::Persist(_)), "{started:?}");

    assert!(record(&train_and_send(&mut e, 1, &to_1, &shards[0])).is_none());
    let last = train_and_send(&mut e, 2, &to_2, &shards[1]);
    // The round closes: its scoring goes out as a job, after the state
    // that says so is persisted; meanwhile the task takes no update.
    assert!(
        matches!(last[0], Command::Persist(Durable::Task(_))),
        "{last:?}"
    );
    let (task_id, job) = last
        .into_iter()
        .find_map(|c| match c {
            Command::Compute { task_id, job } => Some((task_id, job)),
            _ => None,
        })
        .expect("a scoring job");
    assert_eq!(e.task("digits-engine").unwrap().state().scoring, Some(0));
    assert!(record(&e.handle(Input::Tick, 1)).is_none());
    let closing = e.handle(
        Input::Computed {
            task_id,
            result: job.run(),
        },
        2,
    );
    // The closed round is persisted first, then written to the ledger.
    assert!(
        matches!(closing[0], Command::Persist(Durable::Task(_))),
        "{closing:?}"
    );
    assert_eq!(record(&closing), Some(("digits-engine".into(), 0, 2)));
    assert_eq!(e.task("digits-engine").unwrap().state().scoring, None);
    // Nothing is told to the agents before the ledger acknowledged.
    assert!(sends(&closing, 1).is_empty() && sends(&closing, 2).is_empty());

    // The write failed: still owed, asked again at the next tick, once.
    let failed = e.handle(
        Input::Recorded {
            task_id: "digits-engine".into(),
            round: 0,
            proofs: None,
        },
        2,
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(e.task("digits-engine").unwrap().unrecorded().len(), 1);
    let tick = e.handle(Input::Tick, 3);
    assert_eq!(record(&tick), Some(("digits-engine".into(), 0, 2)));
    assert!(
        record(&e.handle(Input::Tick, 4)).is_none(),
        "in flight: not asked twice"
    );

    // Acknowledged: marked recorded (persisted), then results and the end.
    let done = e.handle(
        Input::Recorded {
            task_id: "digits-engine".into(),
            round: 0,
            proofs: Some(vec![None, None]),
        },
        5,
    );
    assert!(matches!(done[0], Command::Persist(Durable::Task(_))));
    for conn in [1, 2] {
        let told = sends(&done, conn);
        assert!(
            matches!(told[0], Message::RoundResult { round: 0, .. }),
            "{told:?}"
        );
        assert!(matches!(told[1], Message::TaskDone { .. }), "{told:?}");
    }
    assert!(e.task("digits-engine").unwrap().unrecorded().is_empty());
    assert!(record(&e.handle(Input::Tick, 6)).is_none());
}

#[test]
fn a_reconnected_agent_is_not_evicted_by_its_old_connection_closing_late() {
    let (mut e, _) = engine(1);
    join(&mut e, 1, 1);
    // The agent comes back on connection 7: the old one is closed.
    let back = e.handle(
        Input::Connected {
            conn: 7,
            principal: principal(1, Role::Device),
        },
        0,
    );
    assert!(closed(&back, 1).is_some(), "{back:?}");
    e.handle(
        Input::Message {
            conn: 7,
            message: Message::Hello {
                schema: schema(),
                samples: 100,
            },
        },
        0,
    );
    e.handle(
        Input::Message {
            conn: 7,
            message: Message::TaskAccept {
                task_id: "digits-engine".into(),
            },
        },
        0,
    );
    let recruited = |e: &Engine| {
        e.task("digits-engine")
            .unwrap()
            .state()
            .recruited
            .contains(&[1u8; 32] as &AgentId)
    };
    assert!(recruited(&e));
    // The old connection's close arrives late: the agent stays.
    assert!(e.handle(Input::Closed { conn: 1 }, 1).is_empty());
    assert!(recruited(&e));
    assert_eq!(e.sessions(), 1);
    // The second agent joins and the round goes to connection 7.
    let started = join(&mut e, 2, 2);
    assert!(matches!(sends(&started, 7)[0], Message::RoundStart { .. }));
    assert!(sends(&started, 1).is_empty());
}

#[test]
fn bad_input_closes_only_its_connection_and_changes_no_task() {
    let (mut e, _) = engine(1);
    join(&mut e, 1, 1);
    let before = e.task("digits-engine").unwrap().state().clone();
    // An engineer on QUIC is sent to the control plane.
    e.handle(
        Input::Connected {
            conn: 2,
            principal: principal(9, Role::Engineer),
        },
        0,
    );
    let refused = e.handle(
        Input::Message {
            conn: 2,
            message: Message::Hello {
                schema: schema(),
                samples: 1,
            },
        },
        0,
    );
    assert_eq!(
        closed(&refused, 2).unwrap(),
        "engineers submit and follow tasks over the node's gRPC API (`yilian task --node`), not QUIC"
    );
    // A device that skips its hello, or sends an update's end with no
    // update, or weights larger than the model, is closed with the reason.
    let cases: Vec<(u8, Vec<Message>, &str)> = vec![
        (
            3,
            vec![Message::TaskAccept {
                task_id: "digits-engine".into(),
            }],
            "unexpected a message before hello",
        ),
        (
            4,
            vec![
                Message::Hello {
                    schema: schema(),
                    samples: 1,
                },
                Message::UpdateDone {
                    round: 0,
                    samples: 1,
                    loss: 0.1,
                },
            ],
            "unexpected an update's end before its weights",
        ),
        (
            5,
            vec![
                Message::Hello {
                    schema: schema(),
                    samples: 1,
                },
                Message::WeightsHeader {
                    purpose: WeightsPurpose::Update,
                    round: 0,
                    values: 1 << 30,
                    chunks: 1 << 15,
                },
            ],
            "it has 1073741824 weights, the model has 0",
        ),
        (
            6,
            vec![
                Message::Hello {
                    schema: schema(),
                    samples: 1,
                },
                Message::Hello {
                    schema: schema(),
                    samples: 1,
                },
            ],
            "unexpected a second hello",
        ),
    ];
    for (i, messages, expected) in cases {
        let conn = u64::from(i) + 100;
        e.handle(
            Input::Connected {
                conn,
                principal: principal(i, Role::Device),
            },
            0,
        );
        let mut why = None;
        for message in messages {
            let commands = e.handle(Input::Message { conn, message }, 0);
            why = why.or(closed(&commands, conn));
        }
        let why = why.unwrap_or_else(|| panic!("agent {i} was not closed"));
        assert!(why.contains(expected), "agent {i}: {why}");
    }
    // The first agent's session and the task are as they were.
    let after = e.task("digits-engine").unwrap().state();
    assert_eq!(after.recruited, before.recruited);
    assert_eq!(after.phase, before.phase);
    assert_eq!(after.global, before.global);
    assert_eq!(e.sessions(), 1);
}
