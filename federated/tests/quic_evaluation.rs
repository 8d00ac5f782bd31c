//! Federated evaluation over loopback QUIC with mutual TLS: an engineer
//! submits an exported digits model, agents run it with tract on their own
//! (non-IID) shards and send counts only, and the aggregate the coordinator
//! reports equals the metrics computed centrally on the union of the
//! shards. A hand-driven device sends malformed reports, which are refused
//! and leave no trace in the result; a device whose policy caps the model
//! size declines; the result survives a coordinator restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use yilian_federated::agent::{self, AgentConfig, AgentEvent};
use yilian_federated::client::{self, Endpoint};
use yilian_federated::coordinator::{Coordinator, next_message};
use yilian_federated::protocol::Message;
use yilian_federated::{AgentPolicy, DataSchema, RejectReason, pb};
use yilian_identity::ca::Authority;
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_models::{EvalCounts, OnnxModel, OutputKind};

const TASK: &str = r#"
kind = "evaluation"
id = "digits-eval"
model = "digits.onnx"
agents = 5
min_agents = 4
timeout_ms = 120000

[schema]
features = 64
label_column = "y"
classes = 10
"#;

/// Starts a coordinator on `dir`'s store and its control plane; returns
/// the control plane's address too. A stopped one's background tasks let
/// go of the redb file a moment after it is dropped, so a restart retries
/// briefly while the file is still locked.
async fn serve(dir: &Path) -> (Coordinator, String) {
    let node = Identity::load(&dir.join("node-1")).unwrap();
    for _ in 0..100 {
        match Coordinator::serve(
            "127.0.0.1:0".parse().unwrap(),
            Identity::load(&dir.join("node-1")).unwrap(),
            RevocationList::default(),
            None,
            &dir.join("coordinator"),
        )
        .await
        {
            Ok(c) => {
                let control = serve_control(&c, &node, "127.0.0.1:0").await;
                return (c, control);
            }
            Err(yilian_federated::FlError::Store(e)) if e.contains("already open") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the previous coordinator never released its store")
}

fn evaluation(s: pb::TaskStatusResponse) -> pb::EvaluationStatus {
    match s.kind {
        Some(pb::task_status_response::Kind::Evaluation(e)) => e,
        other => panic!("not an evaluation: {other:?}"),
    }
}

async fn wait_for_joined(eng: &Endpoint, joined: u32) {
    for _ in 0..200 {
        let s = evaluation(client::task_status(eng, "digits-eval").await.unwrap());
        if s.phase() == pb::TaskPhase::Waiting && s.joined == joined {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the evaluation never had {joined} agents waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_evaluate_an_onnx_model_and_the_aggregate_equals_the_central_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-eval").unwrap();
    certify(&ca, Role::Member, "node-1", dir.path());
    certify(&ca, Role::Engineer, "eng", dir.path());
    let honest: Vec<Identity> = (0..4)
        .map(|i| certify(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    let forger = certify(&ca, Role::Device, "dev-forger", dir.path());
    let cautious = certify(&ca, Role::Device, "dev-cautious", dir.path());

    let (node, control) = serve(dir.path()).await;
    let addr = node.local_addr().unwrap();
    let (train, _, test) = digits_splits();
    let onnx_bytes = digits_onnx(&train);
    let work = dir.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("digits.onnx"), &onnx_bytes).unwrap();
    std::fs::write(work.join("task.toml"), TASK).unwrap();
    let eng = Endpoint {
        node: control,
        identity: dir.path().join("eng"),
    };
    let accepted = client::submit(&eng, &work.join("task.toml"), None)
        .await
        .unwrap();
    assert_eq!(accepted.task_id, "digits-eval");
    // The same id again is refused.
    let again = client::submit(&eng, &work.join("task.toml"), None).await;
    assert!(again.unwrap_err().to_string().contains("already exists"));

    let shards = test.partition_dirichlet(5, 0.5, 11).unwrap();
    let (forger_data, honest_shards) = (shards[4].clone(), shards[..4].to_vec());

    // A device that joins first, takes a place, and reports counts that do
    // not hold together.
    let endpoint = agent::client_endpoint(&forger).unwrap();
    let (conn, tx, mut recv) = agent::connect(&endpoint, addr, "localhost").await.unwrap();
    let schema = DataSchema {
        features: 64,
        label_column: "y".into(),
        classes: 10,
    };
    tx.send(Message::Hello {
        schema,
        samples: forger_data.len() as u64,
    })
    .await
    .unwrap();
    let Some(Message::EvaluationOffer {
        task_id,
        model_bytes,
        ..
    }) = next_message(&mut recv).await.unwrap()
    else {
        panic!("an evaluation offer")
    };
    assert_eq!(model_bytes, onnx_bytes.len() as u64);
    tx.send(Message::TaskAccept { task_id }).await.unwrap();
    wait_for_joined(&eng, 1).await;

    // A device whose policy refuses a model this large declines the offer.
    let (declined_tx, mut declined_rx) = tokio::sync::mpsc::unbounded_channel();
    let policy = AgentPolicy {
        max_model_bytes: 1_000,
        ..AgentPolicy::default()
    };
    let cfg = |data, policy| AgentConfig {
        node: addr,
        server_name: "localhost".into(),
        data,
        label_column: "y".into(),
        policy,
        single_task: true,
        earlier_today: Default::default(),
    };
    let c = cfg(honest_shards[0].clone(), policy);
    let cautious_run = tokio::spawn(async move {
        agent::run(&cautious, c, |e| {
            if let AgentEvent::Declined { reason, .. } = e {
                let _ = declined_tx.send(reason);
            }
        })
        .await
    });
    let reason = declined_rx.recv().await.unwrap();
    assert!(reason.contains("ONNX model size (bytes)"), "{reason}");
    cautious_run.abort();

    let mut handles = Vec::new();
    for (id, shard) in honest.into_iter().zip(honest_shards.clone()) {
        let c = cfg(shard, AgentPolicy::default());
        handles.push(tokio::spawn(async move {
            let mut reported = None;
            let rewards = agent::run(&id, c, |e| {
                if let AgentEvent::Reported { samples, .. } = e {
                    reported = Some(samples);
                }
            })
            .await
            .unwrap();
            (rewards, reported)
        }));
    }

    // The forger got the model (a place was its); it sends a 9-row matrix,
    // then counts that add up to more than its samples, then leaves.
    match next_message(&mut recv).await.unwrap() {
        Some(Message::EvaluationStart { .. }) => {}
        other => panic!("expected the model, got {other:?}"),
    }
    let mut forged = EvalCounts::zero(10);
    forged.confusion.pop();
    forged.samples = forger_data.len() as u64;
    tx.send(Message::EvaluationReport {
        task_id: "digits-eval".into(),
        counts: forged,
    })
    .await
    .unwrap();
    let mut inflated = EvalCounts::zero(10);
    inflated.samples = forger_data.len() as u64;
    inflated.confusion[3][3] = 10 * inflated.samples;
    tx.send(Message::EvaluationReport {
        task_id: "digits-eval".into(),
        counts: inflated,
    })
    .await
    .unwrap();
    let mut refusals = Vec::new();
    while refusals.len() < 2 {
        match next_message(&mut recv).await.unwrap() {
            Some(Message::UpdateRejected { reason, .. }) => refusals.push(reason),
            Some(Message::ModelChunk { .. }) => {}
            other => panic!("expected refusals, got {other:?}"),
        }
    }
    assert_eq!(
        refusals,
        vec![
            RejectReason::MatrixShape {
                rows: 9,
                cols: 10,
                expected: 10
            },
            RejectReason::CountsDoNotAddUp {
                counted: 10 * forger_data.len() as u64,
                samples: forger_data.len() as u64
            }
        ]
    );
    conn.close(0u32.into(), b"bye");

    for (h, shard) in handles.into_iter().zip(&honest_shards) {
        let (rewards, reported) = h.await.unwrap();
        assert!(rewards.is_empty(), "evaluation earns no reward");
        assert_eq!(reported, Some(shard.len() as u64));
    }

    let status = evaluation(client::task_status(&eng, "digits-eval").await.unwrap());
    assert_eq!(status.phase(), pb::TaskPhase::Finished);
    let result = status.result.unwrap();
    let central = OnnxModel::from_bytes(onnx_bytes.clone())
        .unwrap()
        .evaluate_counts(&union(&honest_shards), OutputKind::Probabilities)
        .unwrap();
    let confusion: Vec<Vec<u64>> = result
        .confusion
        .iter()
        .map(|r| r.predicted.clone())
        .collect();
    assert_eq!(confusion, central.confusion);
    assert_eq!(result.samples, central.samples);
    assert_eq!(result.accuracy, central.accuracy());
    assert!(
        (result.loss - central.mean_loss()).abs() < 1e-5 * central.mean_loss(),
        "{} vs {}",
        result.loss,
        central.mean_loss()
    );
    assert_eq!(result.participants.len(), 4);
    assert_eq!(result.missing, vec![forger.principal().public_key.to_vec()]);
    // A training-only request on an evaluation is refused.
    let err = client::download(&eng, "digits-eval", pb::ModelFormat::Onnx)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task digits-eval is an evaluation: it has no global model or rounds"
    );

    // The result survives a restart of the coordinator.
    node.shutdown();
    drop(node);
    let (_node, control) = serve(dir.path()).await;
    let eng = Endpoint {
        node: control,
        ..eng
    };
    let after = evaluation(client::task_status(&eng, "digits-eval").await.unwrap());
    assert_eq!(
        (after.phase(), after.result),
        (pb::TaskPhase::Finished, Some(result))
    );
}
