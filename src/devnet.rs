//! `yilian devnet`: a whole local network on an embedded store, doing real
//! work end to end, then a summary. Each capability adds its act here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Role};
use yilian_ledger::bundle::{BUNDLE_VERSION, ConsistencyBundle, InclusionBundle};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};

use crate::network::{self, NetworkDir, Recorder};
use crate::node::{self, NodeConfig};

/// Who takes part in the devnet, as (organisation, role, name).
pub const PARTICIPANTS: &[(&str, Role, &str)] = &[
    ("acme-bank", Role::Verifier, "acme-verifier"),
    ("shop-co", Role::DataHolder, "shop-holder"),
    ("trust-a", Role::Trustee, "trustee-a"),
    ("trust-b", Role::Trustee, "trustee-b"),
    ("trust-c", Role::Trustee, "trustee-c"),
    ("ml-lab", Role::Engineer, "ml-engineer"),
    ("watchdog", Role::Auditor, "auditor"),
    ("households", Role::Device, "device-1"),
    ("households", Role::Device, "device-2"),
    ("households", Role::Device, "device-3"),
    ("households", Role::Device, "device-4"),
    ("households", Role::Device, "device-5"),
    ("households", Role::Device, "device-6"),
    ("households", Role::Device, "device-7"),
    ("households", Role::Device, "device-8"),
    ("households", Role::Device, "device-9"),
    ("households", Role::Device, "device-10"),
    ("households", Role::Device, "mallory-phone"),
];

/// The devices that train in the learning act.
const TRAINING_DEVICES: usize = 10;
/// Federated rounds in the learning act.
const ROUNDS: u32 = 10;
/// The digits data set, embedded so the devnet needs no set-up (see data/README.md).
const DIGITS: &[u8] = include_bytes!("../data/digits.csv.gz");

pub async fn run(dir: Option<PathBuf>) -> Result<()> {
    let _tmp;
    let root = match dir {
        Some(d) => d,
        None => {
            _tmp = tempfile::tempdir()?;
            _tmp.path().to_owned()
        }
    };
    let net = NetworkDir::new(&root);
    println!("== Yilian devnet in {}", root.display());

    // Admission: an authority, a node, and organisations' identities.
    network::init_network(&net, "devnet", "127.0.0.1:0").await?;
    {
        let ledger = net.open_ledger()?;
        let mut rec = Recorder::Local(&ledger);
        for (org, role, name) in PARTICIPANTS {
            network::admit(&net, &AdmissionRequest::new(*org, *role, *name), &mut rec).await?;
        }
    }
    println!(
        "admission: authority created; {} identities admitted (node, operator, {})",
        PARTICIPANTS.len() + 2,
        PARTICIPANTS
            .iter()
            .map(|p| p.2)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let cfg = NodeConfig {
        data_dir: root.clone(),
        listen: "127.0.0.1:0".parse()?,
        metrics: None,
        identity: net.identity(network::NODE_IDENTITY),
        kms_sealed: false,
        federated: Some("127.0.0.1:0".parse()?),
    };
    let running = node::start(&cfg).await?;
    let addr = running.addr.to_string();
    println!("node: serving gRPC with mutual TLS on {addr}");

    let result = async {
        ledger_act(&net, &addr).await?;
        kms_act(&net, &addr).await?;
        zk_act(&net, &addr).await?;
        let fl = running
            .federated
            .context("the node serves no federated learning")?;
        learning_act(&net, &root, &addr, fl).await?;
        let mut auditor = client(&net, "auditor", &addr).await?.0;
        let end = auditor.tree_head().await?;
        println!(
            "summary: {} ledger entries (admissions, transfers, key audit, record anchors, \
             contributions, rewards), final root {}",
            end.tree_size,
            hex::encode(end.root_hash)
        );
        anyhow::Ok(())
    }
    .await;
    running.stop().await?;
    result?;
    println!("== devnet finished: every step above was checked");
    Ok(())
}

async fn kms_act(net: &NetworkDir, addr: &str) -> Result<()> {
    let id = |n: &str| net.load_identity(n);
    let (owner, reader, recipient) = (
        id("shop-holder")?,
        id("device-2")?,
        id(network::OPERATOR_IDENTITY)?,
    );
    let trustees = [id("trustee-a")?, id("trustee-b")?, id("trustee-c")?];
    let cast = yilian_kms::devnet::Cast {
        owner: &owner,
        trustees: [&trustees[0], &trustees[1], &trustees[2]],
        reader: &reader,
        recipient: &recipient,
    };
    yilian_kms::devnet::act(addr, cast).await
}

/// The data holder encrypts a customer record under a KMS-issued BN254 key,
/// anchors it and the statement's verifying key on the ledger; a bank then
/// checks facts about it from proofs alone.
async fn zk_act(net: &NetworkDir, addr: &str) -> Result<()> {
    let holder = net.load_identity("shop-holder")?;
    let mut kms = yilian_kms::client::Client::connect(addr, &holder).await?;
    let key_id = "customer-0001-zk";
    kms.create_key(key_id, true, false).await?;
    let zk_key = kms
        .raw
        .zk_key(yilian_kms::service::pb::KeyRef {
            key_id: key_id.into(),
        })
        .await?
        .into_inner();
    let elements = yilian_kms::zk::elements(&zk_key.elements)?;
    println!(
        "zk: KMS issued BN254 key `{key_id}` to shop-holder, Poseidon commitment {}",
        hex::encode(&zk_key.commitment)
    );
    let outcome = tokio::task::spawn_blocking(move || {
        let key = yilian_zk::record::CipherKey::new(elements);
        yilian_zk::devnet::act(&mut std::io::stdout(), Some(key))
    })
    .await??;
    let anchor = &outcome.record_anchor;
    ensure!(
        anchor.key_commitment.as_slice() == zk_key.commitment.as_slice(),
        "the record is not bound to the KMS key"
    );
    let mut ledger = LedgerClient::new(yilian_identity::grpc::connect(addr, &holder).await?);
    let rec = ledger
        .submit(
            &Transaction::new(Payload::RecordAnchor {
                record_id: anchor.record_id.clone(),
                ciphertext_hash: anchor.ciphertext_hash,
                key_commitment: anchor.key_commitment,
            })
            .sign(holder.signing_key()),
        )
        .await?;
    let vk = ledger
        .submit(
            &Transaction::new(Payload::VerifyingKeyAnchor {
                statement: yilian_zk::KYC_STATEMENT.into(),
                vk_hash: outcome.vk_hash,
            })
            .sign(holder.signing_key()),
        )
        .await?;
    let yes = outcome.answers.iter().filter(|(_, a)| *a).count();
    println!(
        "zk: record anchored at ledger entry {}, verifying key at entry {}; \
         the bank learned {} answers ({yes} true) and nothing else",
        rec.index,
        vk.index,
        outcome.answers.len()
    );
    Ok(())
}

/// Ten devices train on private non-IID shares through the node's
/// coordinator over QUIC; contributions and rewards land on the ledger.
async fn learning_act(
    net: &NetworkDir,
    root: &std::path::Path,
    addr: &str,
    fl: SocketAddr,
) -> Result<()> {
    let data_dir = root.join("data");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(data_dir.join("digits.csv.gz"), DIGITS)?;
    let devices: Vec<PathBuf> = (1..=TRAINING_DEVICES)
        .map(|i| net.identity(&format!("device-{i}")))
        .collect();
    let (mut auditor, _) = client(net, "auditor", addr).await?;
    let mut accounts = Vec::new();
    for d in &devices {
        accounts.push(Identity::load(d)?.principal().public_key);
    }
    let mut before = 0;
    for a in &accounts {
        before += auditor.balance(a).await?;
    }
    let report = yilian_federated::devnet::act(
        fl,
        &net.identity("ml-engineer"),
        &devices,
        &data_dir,
        &root.join("learning"),
        ROUNDS,
    )
    .await?;
    let last = report.history.last().context("the task closed no round")?;
    ensure!(
        report.onnx_accuracy > 0.8,
        "the federated model is no better than {:.3} on held-out digits",
        report.onnx_accuracy
    );
    // The rewards the coordinator wrote must show in the devices' ledger balances.
    let mut after = 0;
    for a in &accounts {
        after += auditor.balance(a).await?;
    }
    let on_ledger = after - before;
    let earned: u64 = report.rewards.iter().flatten().map(|r| r.amount).sum();
    ensure!(
        on_ledger == earned && earned > 0,
        "rewards earned ({earned}) are not on the ledger ({on_ledger})"
    );
    println!(
        "learning: task {} closed {} rounds; final validation accuracy {:.3}; model exported to {}",
        report.task_id,
        report.history.len(),
        last.accuracy,
        report.onnx_path.display()
    );
    Ok(())
}

async fn client(net: &NetworkDir, name: &str, addr: &str) -> Result<(LedgerClient, Identity)> {
    let id = net.load_identity(name)?;
    let ch = yilian_identity::grpc::connect(addr, &id).await?;
    Ok((LedgerClient::new(ch), id))
}

async fn ledger_act(net: &NetworkDir, addr: &str) -> Result<()> {
    let (mut operator, _) = client(net, network::OPERATOR_IDENTITY, addr).await?;
    let (mut device, device_id) = client(net, "device-1", addr).await?;
    let (mut holder, holder_id) = client(net, "shop-holder", addr).await?;
    let (mut auditor, _) = client(net, "auditor", addr).await?;
    let start_head = auditor.tree_head().await?;

    // Transactions from several identities: a reward by the operator (member),
    // a transfer by the device, notes by the holder and the device.
    let node_key = net.load_identity(network::NODE_IDENTITY)?;
    let reward = Transaction::new(Payload::Reward {
        task_id: "devnet-warmup".into(),
        round: 0,
        account: device_id.principal().public_key,
        amount: 100,
    })
    .sign(node_key.signing_key());
    let r = operator.submit(&reward).await?;
    let again = operator.submit(&reward).await?;
    ensure!(
        again.duplicate && again.index == r.index,
        "resubmitted reward was not idempotent"
    );
    let transfer = Transaction::new(Payload::Transfer {
        to: holder_id.principal().public_key,
        amount: 30,
    })
    .sign(device_id.signing_key());
    device.submit(&transfer).await?;
    let overdraft = Transaction::new(Payload::Transfer {
        to: holder_id.principal().public_key,
        amount: 1_000,
    })
    .sign(device_id.signing_key());
    let refused = device
        .submit(&overdraft)
        .await
        .expect_err("overdraft must be refused");
    for (c, id, topic) in [
        (&mut holder, &holder_id, "records"),
        (&mut device, &device_id, "agent"),
    ] {
        let note = Transaction::new(Payload::Note {
            topic: topic.into(),
            body: format!("hello from {}", id.principal()),
        })
        .sign(id.signing_key());
        c.submit(&note).await?;
    }
    let by_auditor = Transaction::new(Payload::Note {
        topic: "x".into(),
        body: "y".into(),
    })
    .sign(net.load_identity("auditor")?.signing_key());
    let auditor_refused = auditor
        .submit(&by_auditor)
        .await
        .expect_err("auditors are read-only");
    let (bal_dev, bal_holder) = (
        auditor.balance(&device_id.principal().public_key).await?,
        auditor.balance(&holder_id.principal().public_key).await?,
    );
    ensure!(
        (bal_dev, bal_holder) == (70, 30),
        "balances {bal_dev}/{bal_holder}"
    );
    println!(
        "ledger: reward 100 -> device-1 (resubmission acknowledged once), transfer 30 -> shop-holder; \
         balances 70/30\n        refused as expected: overdraft ({}), note by an auditor ({})",
        refused.message(),
        refused_msg(&auditor_refused)
    );

    // Signed tree head, inclusion and consistency proofs, verified offline.
    let head = auditor.tree_head().await?;
    head.verify()?;
    println!(
        "tree head: size {} root {} signed by node key {}",
        head.tree_size,
        hex::encode(head.root_hash),
        &hex::encode(head.log_key)[..16]
    );
    let bundle: InclusionBundle = auditor.inclusion_bundle(r.index).await?;
    let json = serde_json::to_string(&bundle)?;
    let offline: InclusionBundle = serde_json::from_str(&json)?;
    ensure!(offline.version == BUNDLE_VERSION);
    let tx = offline.verify(&head.log_key)?;
    println!(
        "inclusion: entry {} ({}) proven in {} hashes, verified offline",
        r.index,
        tx.tx.payload.kind(),
        offline.proof.path.len()
    );
    let mut tampered = offline.clone();
    tampered.entry[20] ^= 1;
    ensure!(
        tampered.verify(&head.log_key).is_err(),
        "tampered entry verified"
    );
    let cons: ConsistencyBundle = auditor.consistency_bundle(&start_head).await?;
    cons.verify(&head.log_key)?;
    println!(
        "consistency: log of size {} is a prefix of size {} ({} hashes), verified offline",
        cons.old_head.tree_size,
        cons.new_head.tree_size,
        cons.proof.path.len()
    );

    // Refusals at the TLS handshake: an unadmitted client and a revoked one.
    let rogue_dir = net.root.join("rogue");
    let rogue_ca = Authority::create("rogue")?;
    rogue_ca
        .admit(&AdmissionRequest::new(
            "rogue-org",
            Role::Member,
            "intruder",
        ))?
        .save(&rogue_dir)?;
    // It trusts the real network CA (so it would talk to the node) but its
    // own certificate is not from the network's authority.
    std::fs::copy(
        net.authority().join("ca.pem"),
        rogue_dir.join(yilian_identity::CA_FILE),
    )?;
    let rogue = Identity::load(&rogue_dir)?;
    let unadmitted = try_read(addr, &rogue).await;
    ensure!(unadmitted.is_err(), "an unadmitted client was served");

    let (mut mallory, mallory_id) = client(net, "mallory-phone", addr).await?;
    mallory
        .tree_head()
        .await
        .context("mallory before revocation")?;
    let mut rec = Recorder::Node(operator.clone());
    network::revoke(net, "mallory-phone", "device reported stolen", &mut rec).await?;
    let revoked = try_read(addr, &mallory_id).await;
    ensure!(revoked.is_err(), "a revoked client was served");
    println!(
        "refused: unadmitted client ({})\n         revoked client ({})",
        unadmitted.unwrap_err(),
        revoked.unwrap_err()
    );
    Ok(())
}

fn refused_msg(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Connects and makes one call; any refusal comes back as the error text.
async fn try_read(addr: &str, id: &Identity) -> Result<(), String> {
    let ch = yilian_identity::grpc::connect(addr, id)
        .await
        .map_err(|e| e.to_string())?;
    let mut c = LedgerClient::new(ch);
    match c.tree_head().await {
        Ok(_) => Ok(()),
        Err(s) => Err(match std::error::Error::source(&s) {
            Some(src) => yilian_identity::grpc::error_chain(src),
            None => s.message().to_owned(),
        }),
    }
}
