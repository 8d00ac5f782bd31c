//! Fault campaign: one real `yilian node` process under mixed load (ledger
//! writes, KMS data keys under one-use grants, ZK queries under one-use
//! query grants, a federated task with four device agents), killed with
//! SIGKILL at random moments and restarted. After every restart:
//! - every acknowledged ledger entry is present, with the id it was acked with;
//! - every tree head seen so far is a prefix of the new one (RFC 6962
//!   consistency proof, checked here);
//! - no one-use grant, KMS or ZK, was used twice, and a used one stays used;
//! - every proof the node answered with still verifies, with its answer.
//!
//! At the end the task finishes, and its rewards on the ledger are exactly
//! the ones its history reports: none paid twice, none lost.
//!
//! A second test fills the node's disk (a size-limited tmpfs) under
//! writes: the write that cannot be made durable is refused, the node exits
//! saying why, and after the disk has room again it restarts with every
//! acknowledged entry. (No slow-disk fault: tmpfs cannot be slowed, and
//! dm-delay needs device-mapper, which this machine lacks.)
//!
//! CI runs 3 cycles. A long campaign:
//! `YILIAN_FAULT_CYCLES=50 cargo test --release --test faults -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use yilian::network::{self, NetworkDir, Recorder};
use yilian_federated::agent::{self, AgentConfig};
use yilian_federated::client::Endpoint;
use yilian_federated::pb as fl;
use yilian_federated::task::AgentPolicy;
use yilian_identity::ca::AdmissionRequest;
use yilian_identity::{Identity, Role};
use yilian_kms::service::pb as kms;
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{ConsistencyProof, Payload, SignedTreeHead, Transaction, TxId, merkle};
use yilian_models::Dataset;
use yilian_testkit::NodeProcess;
use yilian_zk::query::Predicate;
use yilian_zk::record::{EncryptedRecord, FieldValue, Record};
use yilian_zk::service::{ZkClient, pb as zk};

const DEVICES: usize = 4;
const ROUNDS: u32 = 4;
const KEY: &str = "fault-key";
const RECORD: &str = "fault-customer";

/// What the node acknowledged, as the clients saw it.
#[derive(Clone, Default)]
struct Acked {
    entries: Vec<(u64, TxId)>,
    heads: Vec<SignedTreeHead>,
    /// Grant id to the number of uses the node answered with a key.
    grant_uses: BTreeMap<String, u32>,
    /// ZK query grant id to the proofs the node answered with under it.
    query_uses: BTreeMap<String, Vec<zk::Proof>>,
}

async fn ledger_client(addr: &str, id: &Identity) -> LedgerClient {
    yilian_testkit::ledger_client(addr, id, Duration::from_secs(120)).await
}

/// Appends notes until stopped, recording each acknowledged entry and head.
async fn write_entries(
    addr: String,
    id: Identity,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(ch) = yilian_identity::grpc::connect(&addr, &id).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = LedgerClient::new(ch);
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let tx = Transaction::new(Payload::Note {
                topic: "fault".into(),
                body: format!("note {n}"),
            })
            .sign(id.signing_key());
            match client.submit(&tx).await {
                Ok(r) => {
                    let mut a = acked.lock().unwrap();
                    a.entries.push((r.index, r.tx_id));
                    a.heads.push(r.tree_head);
                }
                Err(_) => break,
            }
            // Keeps the log to thousands of entries, which every check reads.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn kms_client(
    ch: tonic::transport::Channel,
) -> yilian_kms::service::KmsClient<tonic::transport::Channel> {
    yilian_kms::service::KmsClient::new(ch)
}

/// Channels as `owner` and as `reader`, once the node takes both (it may
/// be restarting).
async fn channels(
    addr: &str,
    owner: &Identity,
    reader: &Identity,
) -> (tonic::transport::Channel, tonic::transport::Channel) {
    loop {
        if let (Ok(o), Ok(r)) = (
            yilian_identity::grpc::connect(addr, owner).await,
            yilian_identity::grpc::connect(addr, reader).await,
        ) {
            return (o, r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Grants the reader one use of the key, then has it try twice at once.
async fn burn_after_reading(
    addr: String,
    owner: Identity,
    reader: Identity,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let (o, r) = channels(&addr, &owner, &reader).await;
        let (mut owner_kms, reader_kms) = (kms_client(o), kms_client(r));
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let grant = owner_kms
                .grant(kms::GrantRequest {
                    key_id: KEY.into(),
                    reader: reader.principal().public_key.to_vec(),
                    not_before_ms: 0,
                    not_after_ms: u64::MAX / 2,
                    max_uses: 1,
                    operations: vec!["generate-data-key".into()],
                    required_context: None,
                })
                .await;
            let Ok(grant) = grant else { break };
            let grant_id = grant.into_inner().grant_id;
            acked.lock().unwrap().grant_uses.insert(grant_id.clone(), 0);
            let attempt = || {
                let (mut c, g) = (reader_kms.clone(), grant_id.clone());
                async move {
                    c.generate_data_key(kms::GenerateDataKeyRequest {
                        key_id: KEY.into(),
                        context: b"fault".to_vec(),
                        grant_id: g,
                    })
                    .await
                }
            };
            let (a, b) = tokio::join!(attempt(), attempt());
            let used = u32::from(a.is_ok()) + u32::from(b.is_ok());
            *acked.lock().unwrap().grant_uses.get_mut(&grant_id).unwrap() += used;
            if a.is_err() && b.is_err() {
                // Both refused: the node may be down; reconnect.
                break;
            }
        }
    }
}

fn zk_client(ch: tonic::transport::Channel) -> ZkClient<tonic::transport::Channel> {
    ZkClient::new(ch).max_decoding_message_size(yilian_zk::service::MAX_MESSAGE_BYTES)
}

/// The one question the verifier may ask about the record (true for it).
fn question() -> Vec<zk::Predicate> {
    yilian_zk::service::predicates_to_pb(&[Predicate::Gte {
        field: "income".into(),
        value: 100_000,
    }])
}

/// Grants the reader one ZK question about the record, then has it ask it
/// twice at once. `None` when the grant failed; otherwise whether both
/// questions were refused.
async fn ask_twice(
    holder: &mut ZkClient<tonic::transport::Channel>,
    verifier: &ZkClient<tonic::transport::Channel>,
    reader: &Identity,
    consent_id: String,
    acked: &Mutex<Acked>,
) -> Option<bool> {
    let grant = holder
        .grant(zk::GrantRequest {
            record_id: RECORD.into(),
            verifier: reader.principal().public_key.to_vec(),
            allowed: question(),
            max_uses: None,
            not_before_ms: 0,
            not_after_ms: u64::MAX / 2,
            budget: Default::default(),
            customer_signature: Vec::new(),
            consent_id,
        })
        .await
        .ok()?;
    let grant_id = grant.into_inner().grant_id;
    acked
        .lock()
        .unwrap()
        .query_uses
        .insert(grant_id.clone(), Vec::new());
    let attempt = || {
        let (mut c, g) = (verifier.clone(), grant_id.clone());
        async move {
            c.query(zk::QueryRequest {
                record_id: RECORD.into(),
                predicates: question(),
                grant_id: g,
            })
            .await
        }
    };
    let (a, b) = tokio::join!(attempt(), attempt());
    let both_refused = a.is_err() && b.is_err();
    let proofs = [a, b]
        .into_iter()
        .filter_map(|r| r.ok()?.into_inner().proof);
    acked
        .lock()
        .unwrap()
        .query_uses
        .get_mut(&grant_id)
        .unwrap()
        .extend(proofs);
    Some(both_refused)
}

/// Asks ZK questions under one-use grants until stopped.
async fn ask_questions(
    addr: String,
    owner: Identity,
    reader: Identity,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let mut consent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (o, r) = channels(&addr, &owner, &reader).await;
        let (mut holder, verifier) = (zk_client(o), zk_client(r));
        while !stop.load(Ordering::Relaxed) {
            consent += 1;
            let asked = ask_twice(
                &mut holder,
                &verifier,
                &reader,
                format!("fault-{consent}"),
                &acked,
            )
            .await;
            if asked != Some(false) {
                break;
            }
        }
    }
}

/// One device: takes part until the task is finished, reconnecting after
/// every restart of the node.
async fn device(fl_addr: SocketAddr, id: Identity, data: Dataset, done: Arc<AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        let cfg = AgentConfig {
            node: fl_addr,
            server_name: "localhost".into(),
            data: data.clone(),
            label_column: "y".into(),
            policy: AgentPolicy::default(),
            single_task: true,
            earlier_today: Default::default(),
        };
        let _ = agent::run(&id, cfg, |_| {}).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node proves `new` extends `old` (RFC 6962 consistency).
async fn consistent(
    client: &mut LedgerClient,
    old: &SignedTreeHead,
    new: &SignedTreeHead,
) -> Result<(), yilian_ledger::ProofError> {
    let p = client
        .raw()
        .get_consistency_proof(yilian_ledger::service::pb::GetConsistencyProofRequest {
            old_size: old.tree_size,
            new_size: new.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let proof = ConsistencyProof {
        old_size: p.old_size,
        new_size: p.new_size,
        path: p
            .path
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect(),
    };
    merkle::verify_consistency(&proof, &old.root_hash, &new.root_hash)
}

/// The checks after a restart.
async fn check_after_restart(
    client: &mut LedgerClient,
    acked: &Acked,
    reader_kms: &mut yilian_kms::service::KmsClient<tonic::transport::Channel>,
    reader_zk: &mut ZkClient<tonic::transport::Channel>,
    cycle: usize,
) {
    let head = client.tree_head().await.unwrap();
    head.verify().unwrap();
    for &(index, id) in &acked.entries {
        let tx = client
            .entry(index)
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged entry {index} is gone: {e}"));
        assert_eq!(tx.id(), id, "cycle {cycle}: entry {index} changed");
    }
    // Every head seen is a prefix of the new one: each distinct size, or an
    // even sample of 64 of them on a long run.
    let mut sizes = BTreeSet::new();
    let distinct: Vec<&SignedTreeHead> = acked
        .heads
        .iter()
        .filter(|h| sizes.insert(h.tree_size))
        .collect();
    let step = distinct.len().div_ceil(64).max(1);
    for old in distinct.iter().step_by(step).chain(distinct.last()) {
        assert!(
            old.tree_size <= head.tree_size,
            "cycle {cycle}: the log shrank"
        );
        consistent(client, old, &head)
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: head {} forked: {e}", old.tree_size));
    }
    for (grant, &uses) in &acked.grant_uses {
        assert!(
            uses <= 1,
            "cycle {cycle}: one-use grant {grant} was used {uses} times"
        );
        if uses == 1 {
            let again = reader_kms
                .generate_data_key(kms::GenerateDataKeyRequest {
                    key_id: KEY.into(),
                    context: b"fault".to_vec(),
                    grant_id: grant.clone(),
                })
                .await;
            assert!(
                again.is_err(),
                "cycle {cycle}: used grant {grant} was used again after a restart"
            );
        }
    }
    for (grant, proofs) in &acked.query_uses {
        assert!(
            proofs.len() <= 1,
            "cycle {cycle}: one-use query grant {grant} answered {} times",
            proofs.len()
        );
        let Some(p) = proofs.first() else { continue };
        let v = reader_zk
            .verify(zk::VerifyRequest {
                statement: p.statement.clone(),
                proof: p.proof.clone(),
                public_inputs: p.public_inputs.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            v.valid && v.answer && v.record_id == RECORD,
            "cycle {cycle}: the proof under {grant} no longer verifies: {}",
            v.reason
        );
        let again = reader_zk
            .query(zk::QueryRequest {
                record_id: RECORD.into(),
                predicates: question(),
                grant_id: grant.clone(),
            })
            .await;
        assert!(
            again.is_err(),
            "cycle {cycle}: used query grant {grant} answered again after a restart"
        );
    }
}

/// The owner's customer record: anchored on the ledger, registered with
/// the ZK service, its key sealed under a KMS key of the owner's.
async fn register_record(
    addr: &str,
    owner: &Identity,
    kms: &mut yilian_kms::service::KmsClient<tonic::transport::Channel>,
) {
    let (zk_key_id, wrap_key) = ("fault-zk", "fault-records");
    for (key_id, kind) in [
        (zk_key_id, kms::KeyKind::Bn254Poseidon),
        (wrap_key, kms::KeyKind::Aes256Gcm),
    ] {
        kms.create_key(kms::CreateKeyRequest {
            key_id: key_id.into(),
            kind: kind as i32,
            grant_only: false,
        })
        .await
        .unwrap();
    }
    let issued = kms
        .zk_key(kms::KeyRef {
            key_id: zk_key_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let key =
        yilian_zk::record::CipherKey::new(yilian_kms::zk::elements(&issued.elements).unwrap());
    let customer = Record {
        fields: vec![
            ("id_number".into(), FieldValue::Identifier("F-0001".into())),
            ("income".into(), FieldValue::Integer(120_000)),
        ],
    };
    let record = EncryptedRecord::encrypt(RECORD, &customer, &key, 7).unwrap();
    let anchor = record.anchor().unwrap();
    ledger_client(addr, owner)
        .await
        .submit(
            &Transaction::new(Payload::RecordAnchor {
                record_id: anchor.record_id,
                ciphertext_hash: anchor.ciphertext_hash,
                key_commitment: anchor.key_commitment,
            })
            .sign(owner.signing_key()),
        )
        .await
        .unwrap();
    zk_client(yilian_identity::grpc::connect(addr, owner).await.unwrap())
        .register_record(zk::RegisterRecordRequest {
            record: Some((&record).into()),
            key: key.to_kms_bytes().to_vec(),
            wrap_key_id: wrap_key.into(),
            customer: Vec::new(),
        })
        .await
        .unwrap();
}

/// A node.toml in `data_dir` for the network's node, listening on `addr`
/// and, given an address, coordinating learning there.
fn node_config(
    net: &NetworkDir,
    data_dir: &Path,
    addr: &str,
    federated: Option<SocketAddr>,
) -> PathBuf {
    let path = data_dir.join("node.toml");
    let mut text = format!(
        "data_dir = {:?}\nlisten = {addr:?}\nidentity = {:?}\n",
        data_dir.display().to_string(),
        net.identity(network::NODE_IDENTITY).display().to_string(),
    );
    if let Some(fl) = federated {
        text.push_str(&format!("federated = {:?}\n", fl.to_string()));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn task_toml(dir: &Path, task_id: &str, validation: &Path) -> PathBuf {
    let path = dir.join("task.toml");
    std::fs::write(
        &path,
        format!(
            r#"id = "{task_id}"
rounds = {ROUNDS}
agents_per_round = {DEVICES}
min_agents = 3
local_epochs = 1
batch_size = 16
validation = {validation:?}
reward_budget = 10000
round_timeout_ms = 20000
optimizer = {{ adam = {{ lr = 0.01 }} }}

[model]
input = [64]
layers = [{{ linear = {{ out = 16 }} }}, "relu", {{ linear = {{ out = 10 }} }}, "softmax"]

[schema]
features = 64
label_column = "y"
classes = 10
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_random_under_mixed_load_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("YILIAN_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetworkDir::new(tmp.path());
    let port = yilian_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    network::init_network(&dir, "faults", &addr).await.unwrap();
    let fl_addr: SocketAddr = yilian_testkit::free_udp_addr();
    let mut cast = vec![
        ("bank", Role::DataHolder, "owner".to_owned()),
        ("bank", Role::Verifier, "reader".to_owned()),
        ("lab", Role::Engineer, "engineer".to_owned()),
    ];
    cast.extend((1..=DEVICES).map(|i| ("phones", Role::Device, format!("device-{i}"))));
    {
        let ledger = dir.open_ledger().unwrap();
        let mut rec = Recorder::Local(&ledger);
        for (org, role, name) in &cast {
            network::admit(
                &dir,
                &AdmissionRequest::new(*org, *role, name.clone()),
                &mut rec,
            )
            .await
            .unwrap();
        }
    }
    let id = |n: &str| dir.load_identity(n).unwrap();
    let config = node_config(&dir, tmp.path(), &addr, Some(fl_addr));
    // The ZK keys come from a single-party setup here: the campaign is
    // about crashes, not about who ran the ceremony.
    let mut node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &config)
        .arg("--insecure-dev-setup")
        .env("RUST_LOG", "warn")
        .log(&tmp.path().join("node.log"))
        .started();
    let operator = id(network::OPERATOR_IDENTITY);
    let mut auditor = ledger_client(&addr, &operator).await;

    // The key, and the task with its validation data.
    let owner = id("owner");
    let mut owner_kms = kms_client(yilian_identity::grpc::connect(&addr, &owner).await.unwrap());
    owner_kms
        .create_key(kms::CreateKeyRequest {
            key_id: KEY.into(),
            kind: kms::KeyKind::Aes256Gcm as i32,
            grant_only: false,
        })
        .await
        .unwrap();
    register_record(&addr, &owner, &mut owner_kms).await;
    let digits = Dataset::digits(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/digits.csv.gz"
    )))
    .unwrap();
    let (train, validation) = digits.split(0.2, 7);
    let validation_csv = tmp.path().join("validation.csv");
    validation.write_csv(&validation_csv, "y").unwrap();
    let task_id = "fault-digits";
    let engineer = Endpoint {
        node: addr.clone(),
        identity: dir.identity("engineer"),
    };
    yilian_federated::client::submit(
        &engineer,
        &task_toml(tmp.path(), task_id, &validation_csv),
        None,
    )
    .await
    .unwrap();

    // Load. One question first, so the ZK keys exist before the first kill.
    let acked = Arc::new(Mutex::new(Acked::default()));
    let reader = id("reader");
    let (o, r) = channels(&addr, &owner, &reader).await;
    let warm = ask_twice(
        &mut zk_client(o),
        &zk_client(r),
        &reader,
        "fault-0".into(),
        &acked,
    )
    .await;
    assert_eq!(warm, Some(false), "the first ZK question was not answered");
    let stop = Arc::new(AtomicBool::new(false));
    let task_done = Arc::new(AtomicBool::new(false));
    let mut load = vec![
        tokio::spawn(write_entries(
            addr.clone(),
            id("device-1"),
            acked.clone(),
            stop.clone(),
        )),
        tokio::spawn(burn_after_reading(
            addr.clone(),
            owner.clone(),
            id("reader"),
            acked.clone(),
            stop.clone(),
        )),
        tokio::spawn(ask_questions(
            addr.clone(),
            owner.clone(),
            id("reader"),
            acked.clone(),
            stop.clone(),
        )),
    ];
    for (i, shard) in train.partition_iid(DEVICES, 3).into_iter().enumerate() {
        load.push(tokio::spawn(device(
            fl_addr,
            id(&format!("device-{}", i + 1)),
            shard,
            task_done.clone(),
        )));
    }

    let mut rng = rand::rng();
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
        node.kill9();
        node.start();
        auditor = ledger_client(&addr, &operator).await;
        let reader_ch = yilian_identity::grpc::connect(&addr, &reader)
            .await
            .unwrap();
        let (mut reader_kms, mut reader_zk) = (kms_client(reader_ch.clone()), zk_client(reader_ch));
        // What was acknowledged up to now; the load goes on meanwhile.
        let snapshot = acked.lock().unwrap().clone();
        check_after_restart(
            &mut auditor,
            &snapshot,
            &mut reader_kms,
            &mut reader_zk,
            cycle,
        )
        .await;
        println!(
            "cycle {cycle}: killed and restarted; {} entries, {} heads, {} key grants and {} query grants ({} proofs) checked",
            snapshot.entries.len(),
            snapshot.heads.len(),
            snapshot.grant_uses.len(),
            snapshot.query_uses.len(),
            snapshot.query_uses.values().map(Vec::len).sum::<usize>()
        );
    }
    stop.store(true, Ordering::Relaxed);

    // The task finishes (a hang guard only: it needs seconds).
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        match yilian_federated::client::status(&engineer, task_id).await {
            Ok(s) if s.phase() == fl::TaskPhase::Finished => break s,
            Ok(s) => assert!(
                !matches!(
                    s.phase(),
                    fl::TaskPhase::Expired | fl::TaskPhase::BudgetSpent
                ),
                "the task ended {:?}",
                s.phase()
            ),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the task did not finish; see {}",
            tmp.path().join("node.log").display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    task_done.store(true, Ordering::Relaxed);
    let history = status.history;
    assert_eq!(history.len(), ROUNDS as usize, "every round closed once");

    // Rewards on the ledger are the history's, each paid once.
    let size = auditor.tree_head().await.unwrap().tree_size;
    let mut paid: BTreeMap<(u32, [u8; 32]), u64> = BTreeMap::new();
    for i in 0..size {
        if let Payload::Reward {
            task_id: t,
            round,
            account,
            amount,
        } = auditor.entry(i).await.unwrap().tx.payload
            && t == task_id
        {
            assert!(
                paid.insert((round, account), amount).is_none(),
                "round {round}'s reward to {} was paid twice",
                hex::encode(account)
            );
        }
    }
    let mut owed = BTreeMap::new();
    for r in &history {
        for p in r.participants.iter().filter(|p| p.reward > 0) {
            owed.insert(
                (r.round, <[u8; 32]>::try_from(p.agent.as_slice()).unwrap()),
                p.reward,
            );
        }
    }
    assert!(!owed.is_empty(), "the task rewarded no one");
    assert_eq!(
        paid, owed,
        "rewards on the ledger differ from the task's history"
    );
    let acked = acked.lock().unwrap();
    let proofs = acked.query_uses.values().map(Vec::len).sum::<usize>();
    assert!(proofs > 0, "no ZK query was answered in the campaign");
    println!(
        "campaign: {cycles} kills; {} acknowledged entries, {} one-use grants ({} used), {} one-use query grants ({proofs} answered with a proof), {} rewards, all intact",
        acked.entries.len(),
        acked.grant_uses.len(),
        acked.grant_uses.values().filter(|u| **u == 1).count(),
        acked.query_uses.len(),
        paid.len()
    );
    for h in load {
        h.abort();
    }
}

/// A member whose disk fills refuses the write it cannot make durable
/// (Unavailable: another member may take it), exits saying why and what to
/// do, and once the disk has room again restarts with everything it
/// acknowledged and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_refuses_writes_and_loses_nothing_acknowledged() {
    let disk = match yilian_testkit::SmallDisk::mount(256 << 20) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: no size-limited tmpfs on this machine ({why})");
            return;
        }
    };
    let dir = NetworkDir::new(disk.path());
    let addr = yilian_testkit::free_addr();
    network::init_network(&dir, "full", &addr).await.unwrap();
    let config = node_config(&dir, disk.path(), &addr, None);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &config)
        .env("RUST_LOG", "warn")
        .log(log.path())
        .started();
    let operator = dir.load_identity(network::OPERATOR_IDENTITY).unwrap();
    let mut client = ledger_client(&addr, &operator).await;
    let note = |n: u64| {
        Transaction::new(Payload::Note {
            topic: "full".into(),
            body: format!("{n:04000}"),
        })
        .sign(operator.signing_key())
    };
    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(client.submit(&note(n)).await.unwrap());
    }
    // Two MiB of room left: a few hundred notes.
    disk.resize(disk.used() + (2 << 20));
    let mut refusal = None;
    for n in 20..20_000 {
        match client.submit(&note(n)).await {
            Ok(r) => acked.push(r),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk never filled");
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("stopped taking writes")
            && refusal.message().contains("No space left on device"),
        "{refusal:?}"
    );
    let status = node.exited(Duration::from_secs(60));
    assert!(!status.success());
    let said = std::fs::read_to_string(log.path()).unwrap();
    let data_dir = disk.path().display().to_string();
    assert!(
        said.contains(&format!("the ledger in {data_dir} stopped taking writes"))
            && said.contains("Free space on that disk"),
        "{said}"
    );

    disk.resize(256 << 20);
    node.start();
    let mut client = ledger_client(&addr, &operator).await;
    for r in &acked {
        let tx = client.entry(r.index).await.unwrap();
        assert_eq!(tx.id(), r.tx_id, "acknowledged entry {} changed", r.index);
    }
    let last = acked.last().unwrap();
    let head = client.tree_head().await.unwrap();
    assert!(head.tree_size > last.index);
    consistent(&mut client, &last.tree_head, &head)
        .await
        .unwrap();
    let after = client.submit(&note(99_999)).await.unwrap();
    assert!(after.index > last.index);
    println!(
        "disk full after {} acknowledged notes; refused with {:?}; all present after the restart",
        acked.len(),
        refusal.code()
    );
}
