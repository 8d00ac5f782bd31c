//! Both ends over loopback QUIC with mutual TLS from a real admission
//! authority, a real ledger, and real training on the breast-cancer data.

mod common;

use std::path::Path;

use common::*;
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::cli::{self, NodeArgs};
use yilian_federated::coordinator::Coordinator;
use yilian_federated::{AgentPolicy, FlError};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_ledger::{Ledger, Payload, Transaction};

fn admit(ca: &Authority, role: Role, name: &str, dir: &Path) -> Identity {
    let id = ca.admit(&AdmissionRequest::new("org", role, name)).unwrap();
    id.save(&dir.join(name)).unwrap();
    Identity::load(&dir.join(name)).unwrap()
}

async fn register(ledger: &Ledger, ca: &Authority, id: &Identity) {
    let p = id.principal();
    let tx = Transaction::new(Payload::Admit {
        org: p.org.clone(),
        role: p.role,
        name: p.name.clone(),
        public_key: p.public_key,
        serial: p.serial.clone(),
        not_after_ms: u64::MAX / 2,
    });
    ledger.submit(tx.sign(&ca.signing_key())).await.unwrap();
}

const TASK: &str = r#"
id = "bc-quic"
rounds = 3
agents_per_round = 4
min_agents = 3
local_epochs = 2
batch_size = 16
validation = "validation.csv"
reward_budget = 3000
round_timeout_ms = 60000
optimizer = { adam = { lr = 0.02 } }

[model]
input = [30]
layers = [{ linear = { out = 2 } }, "softmax"]

[schema]
features = 30
label_column = "y"
classes = 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_train_over_mutual_tls_quic_and_rewards_land_on_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("fl-test").unwrap();
    let coord = admit(&ca, Role::Member, "node-1", dir.path());
    let engineer = admit(&ca, Role::Engineer, "eng", dir.path());
    let devices: Vec<Identity> = (0..4)
        .map(|i| admit(&ca, Role::Device, &format!("dev-{i}"), dir.path()))
        .collect();
    let odd_device = admit(&ca, Role::Device, "dev-odd", dir.path());
    let outsider_ca = Authority::create("elsewhere").unwrap();
    let outsider = admit(&outsider_ca, Role::Device, "intruder", dir.path());

    let ledger = Ledger::open(&dir.path().join("ledger.redb"), ca.signing_key()).unwrap();
    let genesis = Transaction::new(Payload::Genesis {
        network: "fl-test".into(),
        authority: ca.signing_key().verifying_key().to_bytes(),
    });
    ledger
        .submit(genesis.sign(&ca.signing_key()))
        .await
        .unwrap();
    for id in devices.iter().chain([&coord, &engineer]) {
        register(&ledger, &ca, id).await;
    }

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

    let (train, validation, test) = breast_cancer_splits();
    let work = dir.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    validation
        .write_csv(&work.join("validation.csv"), "y")
        .unwrap();
    std::fs::write(work.join("task.toml"), TASK).unwrap();
    let eng = NodeArgs {
        node: addr,
        identity: dir.path().join("eng"),
        server_name: "localhost".into(),
    };
    assert_eq!(
        cli::submit(&eng, &work.join("task.toml"), None)
            .await
            .unwrap(),
        "bc-quic"
    );

    // Not admitted by this network: the handshake fails.
    let cfg = |data| AgentConfig {
        node: addr,
        server_name: "localhost".into(),
        data,
        label_column: "y".into(),
        policy: AgentPolicy::default(),
        single_task: true,
    };
    let refused = agent::run(&outsider, cfg(train.clone()), |_| {}).await;
    assert!(matches!(refused, Err(FlError::Transport(_))), "{refused:?}");

    // Admitted, but its data has the wrong shape: refused with the reason.
    let digits = digits_splits().0;
    let err = agent::run(&odd_device, cfg(digits), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("data schema mismatch on feature count: the task needs 30, the agent has 64"),
        "{err}"
    );

    let shards = train.partition_iid(4, 8);
    let mut handles = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let id = Identity::load(&dir.path().join(format!("dev-{i}"))).unwrap();
        let c = cfg(shard);
        handles.push(tokio::spawn(
            async move { agent::run(&id, c, |_| {}).await },
        ));
    }
    let mut earned = Vec::new();
    for h in handles {
        earned.push(h.await.unwrap().unwrap());
    }
    let (phase, rounds, history) = cli::status(&eng, "bc-quic").await.unwrap();
    assert_eq!((phase.as_str(), rounds, history.len()), ("finished", 3, 3));

    // Every reward reached its agent with a verified inclusion proof, and
    // the ledger's balances add up to the budget spent.
    let mut total = 0;
    for (dev, rewards) in devices.iter().zip(&earned) {
        assert!(
            rewards.iter().all(|r| r.ledger_index.is_some()),
            "{rewards:?}"
        );
        let sum: u64 = rewards.iter().map(|r| r.amount).sum();
        assert_eq!(ledger.balance(&dev.principal().public_key), sum);
        total += sum;
    }
    assert_eq!(total, 3000);

    let (spec, weights) = cli::download(&eng, "bc-quic").await.unwrap();
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
