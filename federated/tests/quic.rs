//! Both ends over loopback QUIC with mutual TLS from a real admission
//! authority, a real ledger, and real training on the breast-cancer data.

mod common;

use common::*;
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::client::{self, Endpoint};
use yilian_federated::coordinator::{Coordinator, MAX_CONNECTIONS};
use yilian_federated::{AgentPolicy, FlError, pb};
use yilian_identity::ca::Authority;
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_ledger::{Ledger, Payload};

/// A network with an authority, a ledger, a coordinator node, an engineer
/// and `devices` admitted devices, with `task` submitted by the engineer.
struct Net {
    dir: tempfile::TempDir,
    ca: Authority,
    ledger: Ledger,
    addr: std::net::SocketAddr,
    eng: Endpoint,
    devices: Vec<Identity>,
    _node: Coordinator,
}

async fn network(devices: usize, task: &str, validation: &yilian_models::Dataset) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-test").unwrap();
    let coord = certify(&ca, Role::Member, "node-1", dir.path());
    let engineer = certify(&ca, Role::Engineer, "eng", dir.path());
    let devices: Vec<Identity> = (0..devices)
        .map(|i| certify(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    let ledger = Ledger::open(&dir.path().join("ledger.redb"), ca.signing_key()).unwrap();
    let ids: Vec<&Identity> = devices.iter().chain([&coord, &engineer]).collect();
    genesis(&ledger, &ca, &ids).await;
    let node = Coordinator::serve(
        "127.0.0.1:0".parse().unwrap(),
        Identity::load(&dir.path().join("node-1")).unwrap(),
        RevocationList::default(),
        Some(ledger.clone()),
        &dir.path().join("coordinator"),
    )
    .await
    .unwrap();
    let addr = node.local_addr().unwrap();
    let control = serve_control(&node, &coord, "127.0.0.1:0").await;
    let work = dir.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    validation
        .write_csv(&work.join("validation.csv"), "y")
        .unwrap();
    std::fs::write(work.join("task.toml"), task).unwrap();
    let eng = Endpoint {
        node: control,
        identity: dir.path().join("eng"),
    };
    client::submit(&eng, &work.join("task.toml"), None)
        .await
        .unwrap();
    Net {
        dir,
        ca,
        ledger,
        addr,
        eng,
        devices,
        _node: node,
    }
}

fn agent_config(addr: std::net::SocketAddr, data: yilian_models::Dataset) -> AgentConfig {
    AgentConfig {
        node: addr,
        server_name: "localhost".into(),
        data,
        label_column: "y".into(),
        policy: AgentPolicy::default(),
        single_task: true,
        earlier_today: Default::default(),
    }
}

/// Runs one agent per shard to the end of the task; what each earned.
async fn train_all(
    net: &Net,
    shards: Vec<yilian_models::Dataset>,
) -> Vec<Vec<agent::EarnedReward>> {
    let mut handles = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let id = Identity::load(&net.dir.path().join(format!("dev-{i}"))).unwrap();
        let c = agent_config(net.addr, shard);
        handles.push(tokio::spawn(
            async move { agent::run(&id, c, |_| {}).await },
        ));
    }
    let mut earned = Vec::new();
    for h in handles {
        earned.push(h.await.unwrap().unwrap());
    }
    earned
}

/// Every reward reached its agent with a verified inclusion proof, and the
/// ledger's balances add up to `budget`.
fn rewards_on_the_ledger(net: &Net, earned: &[Vec<agent::EarnedReward>], budget: u64) {
    let mut total = 0;
    for (dev, rewards) in net.devices.iter().zip(earned) {
        assert!(
            rewards.iter().all(|r| r.ledger_index.is_some()),
            "{rewards:?}"
        );
        let sum: u64 = rewards.iter().map(|r| r.amount).sum();
        assert_eq!(net.ledger.balance(&dev.principal().public_key), sum);
        total += sum;
    }
    assert_eq!(total, budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_train_over_mutual_tls_quic_and_rewards_land_on_the_ledger() {
    let (train, validation, test) = breast_cancer_splits();
    let net = network(4, &bc_task_toml("bc-quic", 3, 4, 3, 3000), &validation).await;
    let odd_device = certify(&net.ca, Role::Device, "dev-odd", net.dir.path());
    register(&net.ledger, &net.ca, &odd_device).await;
    let outsider_ca = Authority::create("elsewhere").unwrap();
    let outsider = certify(&outsider_ca, Role::Device, "intruder", net.dir.path());

    // Not admitted by this network: the handshake fails.
    let refused = agent::run(&outsider, agent_config(net.addr, train.clone()), |_| {}).await;
    assert!(
        matches!(refused, Err(FlError::Connection(_))),
        "{refused:?}"
    );

    // Admitted, but its data has the wrong shape: refused with the reason.
    let digits = digits_splits().0;
    let err = agent::run(&odd_device, agent_config(net.addr, digits), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("data schema mismatch on feature count: the task needs 30, the agent has 64"),
        "{err}"
    );

    // The engineer follows the task over gRPC while the agents train.
    let watcher = {
        let eng = net.eng.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            let end = client::watch(&eng, "bc-quic", |e| events.push(e.event.clone().unwrap()))
                .await
                .unwrap();
            (events, end)
        })
    };
    let earned = train_all(&net, train.partition_iid(4, 8)).await;
    let (events, end) = watcher.await.unwrap();
    assert_eq!(
        (end.phase(), end.rounds_closed),
        (pb::TaskPhase::Finished, 3)
    );
    use pb::task_event::Event;
    let told: Vec<(&str, u32)> = events
        .iter()
        .map(|e| match e {
            Event::Started(s) => ("started", s.round),
            Event::Closed(r) => ("closed", r.round),
            Event::Ended(e) => ("ended", e.rounds_closed),
        })
        .collect();
    assert_eq!(
        told,
        [
            ("started", 0),
            ("closed", 0),
            ("started", 1),
            ("closed", 1),
            ("started", 2),
            ("closed", 2),
            ("ended", 3)
        ]
    );
    let status = client::status(&net.eng, "bc-quic").await.unwrap();
    assert_eq!(
        (status.phase(), status.rounds, status.history.len()),
        (pb::TaskPhase::Finished, 3, 3)
    );
    assert_eq!(status.rewards_paid, 3000);
    // The stream's closed rounds are the status's.
    let closed: Vec<&pb::Round> = events
        .iter()
        .filter_map(|e| match e {
            Event::Closed(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(closed, status.history.iter().collect::<Vec<_>>());
    rewards_on_the_ledger(&net, &earned, 3000);

    let (rounds, onnx) = client::download(&net.eng, "bc-quic", pb::ModelFormat::Onnx)
        .await
        .unwrap();
    assert_eq!(rounds, 3);
    let onnx = yilian_models::OnnxModel::from_bytes(onnx).unwrap();
    let predicted = onnx.classify(&test.features).unwrap();
    let acc = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count() as f64
        / test.len() as f64;
    assert!(acc > 0.9, "ONNX accuracy {acc}");
}

/// The same over QUIC with secure aggregation and DP: agents send only
/// masked vectors, the coordinator learns two group sums a round, and
/// rewards and epsilon still come out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation_over_quic_trains_and_pays() {
    let (train, validation, test) = breast_cancer_splits();
    let task = bc_task_toml("bc-secure", 3, 6, 6, 3000)
        .replace("local_epochs", "secure_aggregation = true\nlocal_epochs")
        + "\n[secagg]\nclip = 5.0\nmin_group = 3\n\n[privacy]\nnoise_multiplier = 0.3\nepsilon_budget = 1000.0\ndelta = 1e-5\n";
    let net = network(6, &task, &validation).await;
    let earned = train_all(&net, train.partition_iid(6, 9)).await;
    let status = client::status(&net.eng, "bc-secure").await.unwrap();
    assert_eq!(
        (status.phase(), status.rounds, status.history.len()),
        (pb::TaskPhase::Finished, 3, 3)
    );
    assert!(status.secure_aggregation);
    let history = status.history;
    for r in &history {
        assert_eq!(r.participants.len(), 6, "{r:?}");
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert!(r.epsilon.is_some_and(|e| e > 0.0));
        // Two groups of three, scored by group Shapley: 2^2 coalitions.
        assert_eq!(r.evaluations, 4);
    }
    rewards_on_the_ledger(&net, &earned, 3000);
    // Epsilon spent, round by round, on the ledger.
    let spent: Vec<(u32, f64)> = net
        .ledger
        .indexed("privacy-spent", b"bc-secure", 0, 100)
        .unwrap()
        .into_iter()
        .map(|i| match net.ledger.entry(i).unwrap().tx.payload {
            Payload::PrivacySpent { round, epsilon, .. } => (round, epsilon),
            other => panic!("{other:?}"),
        })
        .collect();
    let from_status: Vec<(u32, f64)> = history
        .iter()
        .map(|r| (r.round, r.epsilon.unwrap()))
        .collect();
    assert_eq!(spent, from_status);
    assert_eq!(
        status.privacy.map(|p| p.epsilon_spent),
        history.last().and_then(|r| r.epsilon)
    );
    let (spec, weights) = client::download_model(&net.eng, "bc-secure").await.unwrap();
    let acc = yilian_models::evaluate(&spec, &weights, &test)
        .unwrap()
        .accuracy;
    assert!(acc > 0.85, "accuracy {acc}");
}

/// Each bad submission to the control plane is refused with what to change,
/// and leaves no task, no file and no ledger entry behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_refuses_bad_submissions_and_changes_nothing() {
    let (_, validation, _) = breast_cancer_splits();
    let net = network(1, &bc_task_toml("bc-ctl", 2, 1, 1, 100), &validation).await;
    let work = net.dir.path().join("task");
    let entries = net.ledger.len();
    let tasks_dir = net.dir.path().join("coordinator/tasks");
    let dirs = || std::fs::read_dir(&tasks_dir).unwrap().count();
    assert_eq!(dirs(), 1);
    // Straight to the node, past the CLI's own reading of the file.
    let eng_id = Identity::load(&net.dir.path().join("eng")).unwrap();
    let channel = yilian_identity::grpc::connect(&net.eng.node, &eng_id)
        .await
        .unwrap();
    let mut raw = pb::federated_client::FederatedClient::new(channel);
    let csv = std::fs::read(work.join("validation.csv")).unwrap();
    let base = bc_task_toml("bc-bad", 2, 1, 1, 100);
    use pb::submit_task_request::Part;
    let header =
        |task_toml: String, validation_bytes: u64, weights_bytes: u64| pb::SubmitTaskRequest {
            part: Some(Part::Header(pb::TaskHeader {
                task_toml,
                validation_bytes,
                weights_bytes,
            })),
        };
    let chunk = |c: &[u8]| pb::SubmitTaskRequest {
        part: Some(Part::ValidationChunk(c.to_vec())),
    };
    // A header and the validation set in one chunk.
    let whole =
        |task_toml: String, csv: &[u8]| vec![header(task_toml, csv.len() as u64, 0), chunk(csv)];
    let cases = [
        (
            "same id",
            whole(bc_task_toml("bc-ctl", 2, 1, 1, 100), &csv),
            tonic::Code::AlreadyExists,
            "a task with id `bc-ctl` already exists; give the task file another `id`",
        ),
        (
            "median",
            whole(
                base.replace(
                    "local_epochs",
                    "secure_aggregation = true\nrobust = \"coordinate_median\"\nlocal_epochs",
                ),
                &csv,
            ),
            tonic::Code::InvalidArgument,
            "secure_aggregation = false",
        ),
        (
            "bad field",
            whole(base.replace("rounds = 2", "rounds = \"two\""), &csv),
            tonic::Code::InvalidArgument,
            "rounds",
        ),
        (
            "no label column",
            whole(
                base.replace("label_column = \"y\"", "label_column = \"outcome\""),
                &csv,
            ),
            tonic::Code::InvalidArgument,
            "validation_csv",
        ),
        (
            "oversized model",
            whole(
                base.replace(
                    "layers = [{ linear = { out = 2 } }",
                    "layers = [{ linear = { out = 100000000 } }, { linear = { out = 2 } }",
                ),
                &csv,
            ),
            tonic::Code::InvalidArgument,
            "the model is too large",
        ),
        (
            "not a csv",
            whole(base.clone(), b"\xff\x00 not a table"),
            tonic::Code::InvalidArgument,
            "validation_csv",
        ),
        (
            "chunk first",
            vec![chunk(&csv), header(base.clone(), csv.len() as u64, 0)],
            tonic::Code::InvalidArgument,
            "a submission starts with its header",
        ),
        (
            "fewer bytes than announced",
            vec![header(base.clone(), csv.len() as u64 + 1, 0), chunk(&csv)],
            tonic::Code::InvalidArgument,
            &format!(
                "validation_bytes announced {} bytes, {} arrived",
                csv.len() + 1,
                csv.len()
            ),
        ),
        (
            "more bytes than announced",
            vec![header(base.clone(), 10, 0), chunk(&csv)],
            tonic::Code::InvalidArgument,
            "validation_bytes announced 10 bytes",
        ),
        (
            "too large",
            vec![header(base.clone(), 1 << 40, 0)],
            tonic::Code::InvalidArgument,
            "validation_bytes: 1099511627776 is over the limit of 268435456 bytes",
        ),
        (
            "weights announced, none sent",
            vec![header(base.clone(), csv.len() as u64, 64), chunk(&csv)],
            tonic::Code::InvalidArgument,
            "weights_bytes announced 64 bytes, 0 arrived",
        ),
    ];
    for (what, parts, code, expected) in cases {
        let status = raw
            .submit_task(tokio_stream::iter(parts))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {status:?}");
    }
    // The CLI reads the file first, and says which file and why.
    let path = work.join("bad.toml");
    std::fs::write(&path, base.replace("rounds = 2", "rounds = \"two\"")).unwrap();
    let err = client::submit(&net.eng, &path, None).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with(&format!("{} is not a valid task file: ", path.display())),
        "{text}"
    );
    assert!(text.contains("rounds"), "{text}");
    // A missing file is named once, with what the system said.
    let missing = work.join("missing.toml");
    let err = client::submit(&net.eng, &missing, None).await.unwrap_err();
    assert!(
        matches!(&err, yilian_federated::FlError::File { path, .. } if path == &missing),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    // Initial weights of another model.
    let path = work.join("weights.toml");
    std::fs::write(&path, &base).unwrap();
    let other = yilian_models::ModelSpec::logistic_regression(64, 10);
    let weights = work.join("other.safetensors");
    yilian_models::save_safetensors(&weights, &other, &other.init_weights(1).unwrap()).unwrap();
    let err = client::submit(&net.eng, &path, Some(&weights))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("model"), "{err}");
    // A device may not use the control plane at all.
    let device = Endpoint {
        identity: net.dir.path().join("dev-0"),
        ..net.eng.clone()
    };
    let err = client::submit(&device, &path, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "role `device` may not submit a task; use an engineer or member identity"
    );
    let err = client::status(&device, "bc-ctl").await.unwrap_err();
    assert!(
        err.to_string().contains("may not read a task's status"),
        "{err}"
    );
    // Unknown tasks.
    let err = client::status(&net.eng, "bc-bad").await.unwrap_err();
    assert_eq!(err.to_string(), "task bc-bad not found");
    let err = client::download(&net.eng, "nope", pb::ModelFormat::Onnx)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "task nope not found");
    // Engineers no longer speak QUIC: told where to go instead.
    let eng = Identity::load(&net.dir.path().join("eng")).unwrap();
    let err = agent::run(&eng, agent_config(net.addr, validation), |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gRPC"), "{err}");
    // Nothing changed: one task, one directory, no new ledger entry.
    assert_eq!(dirs(), 1);
    assert_eq!(net.ledger.len(), entries);
    let status = client::status(&net.eng, "bc-ctl").await.unwrap();
    assert_eq!(status.phase(), pb::TaskPhase::Waiting);

    // A validation set beyond one gRPC message (4 MiB) arrives in chunks.
    let text = String::from_utf8(csv.clone()).unwrap();
    let (head, rows) = text.split_once('\n').unwrap();
    let mut big = format!("{head}\n");
    while big.len() <= 5 << 20 {
        big.push_str(rows);
    }
    let accepted = client::submit_training(
        &net.eng,
        bc_task_toml("bc-big", 2, 1, 1, 100),
        big.into_bytes(),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(accepted.task_id, "bc-big");
    assert_eq!(dirs(), 2);
}

/// FedBuff over QUIC: four agents train asynchronously, every two updates
/// make a global model, and each buffer's rewards reach the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_aggregation_over_quic_trains_and_pays() {
    let (train, validation, test) = breast_cancer_splits();
    let task = bc_task_toml("bc-buffered", 6, 4, 4, 6000).replace(
        "local_epochs",
        "aggregation = { buffered = { size = 2, max_staleness = 2 } }\nlocal_epochs",
    );
    let net = network(4, &task, &validation).await;
    let earned = train_all(&net, train.partition_iid(4, 10)).await;
    let status = client::status(&net.eng, "bc-buffered").await.unwrap();
    assert_eq!(
        (status.phase(), status.history.len()),
        (pb::TaskPhase::Finished, 6)
    );
    for r in &status.history {
        assert_eq!(r.participants.len(), 2, "{r:?}");
    }
    rewards_on_the_ledger(&net, &earned, 6000);
    let (spec, weights) = client::download_model(&net.eng, "bc-buffered")
        .await
        .unwrap();
    let acc = yilian_models::evaluate(&spec, &weights, &test)
        .unwrap()
        .accuracy;
    assert!(acc > 0.85, "accuracy {acc}");
}

/// FedBuff with secure aggregation over QUIC: two cohorts of three in
/// flight, each revealing only its sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_secure_aggregation_over_quic_trains_and_pays() {
    let (train, validation, test) = breast_cancer_splits();
    let task = bc_task_toml("bc-buffered-secure", 4, 6, 6, 4000).replace(
        "local_epochs",
        "aggregation = { buffered = { size = 3, max_staleness = 2 } }\nsecure_aggregation = true\nlocal_epochs",
    ) + "\n[secagg]\nclip = 5.0\nmin_group = 3\n";
    let net = network(6, &task, &validation).await;
    let earned = train_all(&net, train.partition_iid(6, 11)).await;
    let status = client::status(&net.eng, "bc-buffered-secure")
        .await
        .unwrap();
    assert_eq!(
        (status.phase(), status.history.len()),
        (pb::TaskPhase::Finished, 4)
    );
    for r in &status.history {
        assert_eq!(r.participants.len(), 3, "{r:?}");
        assert!(r.failures.is_empty(), "{:?}", r.failures);
    }
    rewards_on_the_ledger(&net, &earned, 4000);
    let (spec, weights) = client::download_model(&net.eng, "bc-buffered-secure")
        .await
        .unwrap();
    let acc = yilian_models::evaluate(&spec, &weights, &test)
        .unwrap()
        .accuracy;
    assert!(acc > 0.85, "accuracy {acc}");
}

/// The coordinator of the identity `node-1` in `dir`, on loopback, with
/// no ledger, holding at most `max_connections`.
async fn coordinator_alone(
    dir: &std::path::Path,
    revoked: RevocationList,
    max_connections: usize,
) -> Coordinator {
    Coordinator::serve_within(
        "127.0.0.1:0".parse().unwrap(),
        Identity::load(&dir.join("node-1")).unwrap(),
        revoked,
        None,
        &dir.join("coordinator"),
        max_connections,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_closes_its_live_quic_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-test").unwrap();
    certify(&ca, Role::Member, "node-1", dir.path());
    let device = certify(&ca, Role::Device, "dev-0", dir.path());
    let other = certify(&ca, Role::Device, "dev-1", dir.path());
    let revoked = RevocationList::default();
    let node = coordinator_alone(dir.path(), revoked.clone(), MAX_CONNECTIONS).await;
    let addr = node.local_addr().unwrap();
    let dial = |id: &Identity| {
        let endpoint = agent::client_endpoint(id).unwrap();
        async move { agent::connect(&endpoint, addr, "localhost").await.unwrap() }
    };
    let (conn, _tx, _rx) = dial(&device).await;
    let (bystander, _tx2, _rx2) = dial(&other).await;
    revoked.revoke(&device.principal().serial);
    // A hang guard only: the close is expected at once.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(60), conn.closed())
        .await
        .expect("the revoked device's connection stays open");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, yilian_federated::coordinator::REVOKED.into());
            assert_eq!(&c.reason[..], b"certificate revoked");
        }
        e => panic!("closed for another reason: {e}"),
    }
    // Another device's connection is untouched.
    assert!(bystander.close_reason().is_none());
    // And the revoked device cannot connect again: in TLS 1.3 the client
    // may finish its side first, but the node refuses its certificate.
    let endpoint = agent::client_endpoint(&device).unwrap();
    if let Ok((again, _, _)) = agent::connect(&endpoint, addr, "localhost").await {
        let e = tokio::time::timeout(std::time::Duration::from_secs(60), again.closed())
            .await
            .expect("a revoked device's new connection stays open");
        assert!(e.to_string().to_lowercase().contains("revoked"), "{e}");
    }
}

/// One QUIC connection over the coordinator's cap is refused at once; the
/// ones it holds are untouched, and a closed one gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-test").unwrap();
    certify(&ca, Role::Member, "node-1", dir.path());
    let devices: Vec<Identity> = (0..3)
        .map(|i| certify(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    let node = coordinator_alone(dir.path(), RevocationList::default(), 2).await;
    let addr = node.local_addr().unwrap();
    let dial = |id: &Identity| {
        let endpoint = agent::client_endpoint(id).unwrap();
        async move { agent::connect(&endpoint, addr, "localhost").await }
    };
    let (first, _tx0, _rx0) = dial(&devices[0]).await.unwrap();
    let (second, _tx1, _rx1) = dial(&devices[1]).await.unwrap();
    let refused = match dial(&devices[2]).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a third connection was let in beside two"),
    };
    assert!(refused.to_lowercase().contains("refused"), "{refused}");
    assert!(first.close_reason().is_none() && second.close_reason().is_none());
    first.close(0u32.into(), b"done");
    // The place comes back once the coordinator has seen the close.
    let mut tries = 0;
    loop {
        match dial(&devices[2]).await {
            Ok(_) => break,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a closed connection's place was not given back: {e}"),
        }
    }
}
