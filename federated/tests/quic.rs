//! Both ends over loopback QUIC with mutual TLS from a real admission
//! authority, a real ledger, and real training on the breast-cancer data.

mod common;

use common::*;
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::cli::{self, NodeArgs};
use yilian_federated::coordinator::Coordinator;
use yilian_federated::{AgentPolicy, FlError};
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
    eng: NodeArgs,
    devices: Vec<Identity>,
    _node: Coordinator,
}

async fn network(devices: usize, task: &str, validation: &yilian_models::Dataset) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-test").unwrap();
    let coord = admit(&ca, Role::Member, "node-1", dir.path());
    let engineer = admit(&ca, Role::Engineer, "eng", dir.path());
    let devices: Vec<Identity> = (0..devices)
        .map(|i| admit(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    let ledger = Ledger::open(&dir.path().join("ledger.redb"), ca.signing_key()).unwrap();
    let ids: Vec<&Identity> = devices.iter().chain([&coord, &engineer]).collect();
    genesis(&ledger, "fl-test", &ca, &ids).await;
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
    let work = dir.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    validation
        .write_csv(&work.join("validation.csv"), "y")
        .unwrap();
    std::fs::write(work.join("task.toml"), task).unwrap();
    let eng = NodeArgs {
        node: addr,
        identity: dir.path().join("eng"),
        server_name: "localhost".into(),
    };
    cli::submit(&eng, &work.join("task.toml"), None)
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
    let odd_device = admit(&net.ca, Role::Device, "dev-odd", net.dir.path());
    register(&net.ledger, &net.ca, &odd_device).await;
    let outsider_ca = Authority::create("elsewhere").unwrap();
    let outsider = admit(&outsider_ca, Role::Device, "intruder", net.dir.path());

    // Not admitted by this network: the handshake fails.
    let refused = agent::run(&outsider, agent_config(net.addr, train.clone()), |_| {}).await;
    assert!(matches!(refused, Err(FlError::Transport(_))), "{refused:?}");

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

    let earned = train_all(&net, train.partition_iid(4, 8)).await;
    let (phase, rounds, history) = cli::status(&net.eng, "bc-quic").await.unwrap();
    assert_eq!((phase.as_str(), rounds, history.len()), ("finished", 3, 3));
    rewards_on_the_ledger(&net, &earned, 3000);

    let (spec, weights) = cli::download(&net.eng, "bc-quic").await.unwrap();
    let onnx =
        yilian_models::OnnxModel::from_bytes(yilian_models::to_onnx(&spec, &weights).unwrap())
            .unwrap();
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
    let (phase, rounds, history) = cli::status(&net.eng, "bc-secure").await.unwrap();
    assert_eq!((phase.as_str(), rounds, history.len()), ("finished", 3, 3));
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
    let (spec, weights) = cli::download(&net.eng, "bc-secure").await.unwrap();
    let acc = yilian_models::evaluate(&spec, &weights, &test)
        .unwrap()
        .accuracy;
    assert!(acc > 0.85, "accuracy {acc}");
}
