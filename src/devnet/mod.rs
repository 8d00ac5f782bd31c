//! `yilian devnet`: a whole local network on an embedded store, doing real
//! work end to end, then a summary. Each capability adds its act here.

mod clock;
mod keys;
mod learning;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Role};
use yilian_ledger::bundle::{BUNDLE_VERSION, ConsistencyBundle, InclusionBundle};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};

use crate::network::{self, NetworkDir, Recorder};

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
const DIGITS: &[u8] = include_bytes!("../../data/digits.csv.gz");

pub async fn run(dir: Option<PathBuf>, keep_running: bool) -> Result<()> {
    let _tmp;
    // A temporary directory goes when the devnet ends: paths into it say so.
    let keeps_files = dir.is_some() || keep_running;
    let root = match dir {
        Some(d) => d,
        None => {
            _tmp = tempfile::tempdir()?;
            _tmp.path().to_owned()
        }
    };
    let net = NetworkDir::new(&root);
    println!("== Yilian devnet in {}", root.display());
    let mut clock = clock::Clock::start(&[]);

    // Admission: an authority, the first member's node, and organisations' identities.
    let first_addr = free_addr()?;
    network::init_network(&net, "devnet", &first_addr).await?;
    {
        let ledger = net.open_ledger()?;
        let mut rec = Recorder::Local(&ledger);
        for (org, role, name) in PARTICIPANTS {
            network::admit(&net, &AdmissionRequest::new(*org, *role, *name), &mut rec).await?;
        }
        for org in &MEMBER_ORGS[1..] {
            let req = AdmissionRequest::new(*org, Role::Member, format!("node-{org}"));
            network::admit(&net, &req, &mut rec).await?;
        }
    }
    println!(
        "admission: authority created; {} identities admitted (node, operator, {}, and the member nodes of {})",
        PARTICIPANTS.len() + MEMBER_ORGS.len() + 1,
        PARTICIPANTS
            .iter()
            .map(|p| p.2)
            .collect::<Vec<_>>()
            .join(", "),
        MEMBER_ORGS[1..].join(", ")
    );

    // Every member node is its own process, with its own data directory and port.
    let fl: SocketAddr = free_udp_addr()?.parse()?;
    let mut members: Vec<MemberNode> = Vec::new();
    for (i, org) in MEMBER_ORGS.iter().enumerate() {
        let (data, identity, addr) = if i == 0 {
            (
                root.clone(),
                net.identity(network::NODE_IDENTITY),
                first_addr.clone(),
            )
        } else {
            (
                root.join("members").join(org),
                net.identity(&format!("node-{org}")),
                free_addr()?,
            )
        };
        let peers = if i == 0 {
            vec![]
        } else {
            vec![first_addr.clone()]
        };
        members.push(MemberNode::new(
            org,
            data,
            identity,
            addr,
            (i == 0).then_some(fl),
            &peers,
        )?);
    }
    clock.lap("admission", &[]);
    let result = async {
        let pids = |m: &[MemberNode]| m.iter().map(MemberNode::pid).filter(|p| *p != 0).collect::<Vec<_>>();
        let addr = members[0].addr.clone();
        members[0].spawn()?;
        wait_reachable(&net, &addr).await?;
        println!(
            "node: {} serving gRPC with mutual TLS on {addr} (pid {})",
            MEMBER_ORGS[0],
            members[0].pid()
        );
        consortium_act(&net, &mut members).await?;
        clock.lap("consortium", &pids(&members));
        let (b, c) = (members[1].addr.clone(), members[2].addr.clone());
        // The acts run through different members: writes reach the leader from any of them.
        println!("ledger act through {} ({b})", MEMBER_ORGS[1]);
        ledger_act(&net, &b).await?;
        clock.lap("ledger", &pids(&members));
        println!("keys act through {} ({addr}): its KMS store stays on that node", MEMBER_ORGS[0]);
        kms_act(&net, &addr).await?;
        clock.lap("keys", &pids(&members));
        let vk_hash = ceremony_act(&root, &members[..3], &members[2]).await?;
        clock.lap("ceremony", &pids(&members));
        println!("zk act through {} ({c}): its ZK records stay on that node", MEMBER_ORGS[2]);
        zk_act(&net, &c, vk_hash).await?;
        clock.lap("zk", &pids(&members));
        learning_act(&net, &root, &addr, fl, keeps_files).await?;
        clock.lap("learning", &pids(&members));
        let survivor = failover_act(&net, &mut members).await?;
        clock.lap("failover", &pids(&members));
        let mut auditor = client(&net, "auditor", &survivor).await?.0;
        let end = auditor.cosigned_head().await?;
        let cp = end.checkpoint.context("no cosigned head")?;
        println!(
            "summary: {} ledger entries (admissions, membership, transfers, key audit, record anchors, \
             contributions, rewards), cosigned by {} of {} members, root {}",
            cp.body.size,
            cp.cosignatures.len(),
            end.cosigners.len(),
            hex::encode(cp.body.root)
        );
        let shown = members.iter().find(|m| m.addr == survivor).unwrap_or(&members[0]);
        let served = explorer_head_size(&shown.explorer).await?;
        println!(
            "explorer: http://{}/ ({}'s node; every member serves its own) shows the head of {served} entries",
            shown.explorer, shown.org
        );
        if keep_running {
            println!("keeping the network up: ctrl-c to stop");
            tokio::signal::ctrl_c().await?;
        }
        anyhow::Ok(())
    }
    .await;
    for m in &mut members {
        m.stop();
    }
    if result.is_err() {
        for m in &members {
            eprintln!("(log of {}: {})", m.org, m.log.display());
        }
    }
    result?;
    print!("{}", clock.report());
    println!("== devnet finished: every step above was checked");
    Ok(())
}

/// The member organisations that run nodes: the first runs the authority's node.
const MEMBER_ORGS: &[&str] = &["devnet-bank", "trust-co", "platform-co", "regulator"];

fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

fn free_udp_addr() -> Result<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.to_string())
}

/// A member organisation's node: a `yilian node` process of this binary.
struct MemberNode {
    /// Where this member serves its explorer page.
    explorer: String,
    org: &'static str,
    addr: String,
    identity: PathBuf,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl MemberNode {
    fn new(
        org: &'static str,
        data: PathBuf,
        identity: PathBuf,
        addr: String,
        federated: Option<SocketAddr>,
        peers: &[String],
    ) -> Result<MemberNode> {
        let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        std::fs::create_dir_all(&data)?;
        let data = std::fs::canonicalize(&data)?;
        let fl = federated
            .map(|a| format!("federated = {:?}\n", a.to_string()))
            .unwrap_or_default();
        let config = data.join("node.toml");
        let explorer = free_addr()?;
        std::fs::write(
            &config,
            format!(
                "# {org}'s member node in the devnet\ndata_dir = {:?}\nlisten = {addr:?}\n\
                 identity = {:?}\n{fl}\n[cluster]\nadvertise = {addr:?}\npeers = [{}]\n\n\
                 [explorer]\nlisten = {explorer:?}\n",
                data.display().to_string(),
                identity.display().to_string(),
                peers.join(", "),
            ),
        )?;
        Ok(MemberNode {
            org,
            addr,
            explorer,
            identity,
            log: data.join("node.log"),
            data,
            config,
            child: None,
        })
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["node", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}'s node", self.org))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: the process gets no chance to flush or say goodbye.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A clean stop (SIGINT, as ctrl-c), then SIGKILL if it lingers.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for MemberNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_reachable(net: &NetworkDir, addr: &str) -> Result<()> {
    let op = net.load_identity(network::OPERATOR_IDENTITY)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match yilian_identity::grpc::connect(addr, &op).await {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                anyhow::bail!("the node at {addr} did not come up: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Proposes `org`'s node through the first member and has a majority approve it.
async fn add_member(
    net: &NetworkDir,
    via: &str,
    org: &str,
    node_addr: &str,
    approvers: &[(&str, String)],
) -> Result<()> {
    let name = format!("node-{org}");
    let new = net.load_identity(&name)?;
    let first = net.load_identity(network::NODE_IDENTITY)?;
    let mut c = LedgerClient::new(yilian_identity::grpc::connect(via, &first).await?);
    let change = yilian_ledger::tx::MembershipChange::Add {
        node: new.principal().public_key,
        addr: node_addr.to_owned(),
    };
    let r = c
        .submit(&network::member_proposal(change, first.signing_key()))
        .await?;
    for (approver, addr) in approvers {
        let id = net.load_identity(approver)?;
        let mut c = LedgerClient::new(yilian_identity::grpc::connect(addr, &id).await?);
        c.submit(&network::member_approval(r.tx_id, id.signing_key()))
            .await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut joined = LedgerClient::new(yilian_identity::grpc::connect(node_addr, &first).await?);
    loop {
        let cons = c.consortium().await?;
        let head = joined.tree_head().await?;
        if cons.members.iter().any(|m| m.addr == node_addr) && head.tree_size > r.index {
            println!(
                "membership: {org} joined by the approval of {} of {} members; it caught up to {} entries",
                approvers.len() + 1,
                cons.members.len() - 1,
                head.tree_size
            );
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{org} did not join in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Three organisations' member nodes replicate the ledger and cosign its heads.
async fn consortium_act(net: &NetworkDir, members: &mut [MemberNode]) -> Result<()> {
    let first = members[0].addr.clone();
    members[1].spawn()?;
    wait_reachable(net, &members[1].addr).await?;
    add_member(net, &first, MEMBER_ORGS[1], &members[1].addr, &[]).await?;
    members[2].spawn()?;
    wait_reachable(net, &members[2].addr).await?;
    let b_name = format!("node-{}", MEMBER_ORGS[1]);
    add_member(
        net,
        &first,
        MEMBER_ORGS[2],
        &members[2].addr,
        &[(b_name.as_str(), members[1].addr.clone())],
    )
    .await?;
    // Each member holds its own secrets: only the ledger is replicated.
    for m in &members[..3] {
        let dir = m.config.parent().context("data directory")?;
        let mut own: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".redb") || n.ends_with(".key") || n == "federated")
            .collect();
        own.sort();
        println!("  {} (pid {}) holds {}", m.org, m.pid(), own.join(", "));
    }
    Ok(())
}

/// Kills the leader with SIGKILL mid-stream, shows the network carrying on
/// with a new one and the killed member catching up once restarted, then
/// adds a fourth member by majority approval. Returns a running member's address.
async fn failover_act(net: &NetworkDir, members: &mut [MemberNode]) -> Result<String> {
    let (mut auditor, _) = client(net, "auditor", &members[0].addr).await?;
    // The cosigned head with every member's signature.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let head = loop {
        let h = auditor.cosigned_head().await?;
        if let Some(cp) = &h.checkpoint
            && cp.cosignatures.len() == 3
        {
            cp.verify(&h.cosigners, 3)?;
            break cp.clone();
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no head cosigned by all members"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    println!("cosigned head (C2SP checkpoint, one cosignature per member):");
    for line in head.to_note().lines() {
        println!("  {line}");
    }
    let cons = auditor.consortium().await?;
    let leader = members[..3]
        .iter()
        .position(|m| m.addr == cons.leader_addr)
        .context("no leader")?;
    let survivor = members[(leader + 1) % 3].addr.clone();
    let (device, device_id) = client(net, "device-3", &survivor).await?;
    let writer = tokio::spawn(async move {
        let mut device = device;
        let (mut acked, mut refused) = (0u32, 0u32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked < 60 && std::time::Instant::now() < deadline {
            let note = Transaction::new(Payload::Note {
                topic: "failover".into(),
                body: format!("write {acked}"),
            })
            .sign(device_id.signing_key());
            match device.submit(&note).await {
                Ok(_) => acked += 1,
                Err(_) => refused += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        (acked, refused)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    let (org, pid) = (members[leader].org, members[leader].pid());
    members[leader].kill9();
    let (acked, refused) = writer.await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cons = loop {
        let cons = auditor_at(net, &survivor).await?;
        if !cons.leader_addr.is_empty() && cons.leader_addr != members[leader].addr {
            break cons;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no new leader after the failover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    ensure!(
        acked == 60,
        "only {acked} of 60 writes were acknowledged across the failover"
    );
    let new = members
        .iter()
        .find(|m| m.addr == cons.leader_addr)
        .map(|m| m.org)
        .unwrap_or("?");
    println!(
        "failover: leader {org} (pid {pid}) killed with SIGKILL mid-stream; {new} leads now; all 60 \
         writes acknowledged ({refused} refused while the election ran, retried), {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The killed member restarts and catches up.
    let target = client(net, "auditor", &survivor)
        .await?
        .0
        .tree_head()
        .await?
        .tree_size;
    members[leader].spawn()?;
    wait_reachable(net, &members[leader].addr).await?;
    let (mut back, _) = client(net, "auditor", &members[leader].addr).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while back.tree_head().await?.tree_size < target {
        ensure!(
            std::time::Instant::now() < deadline,
            "{org} did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("recovery: {org} restarted and caught up to {target} entries from the others");
    // A fourth member, approved by two of the three.
    members[3].spawn()?;
    wait_reachable(net, &members[3].addr).await?;
    let approver = format!("node-{}", MEMBER_ORGS[1]);
    add_member(
        net,
        &survivor,
        MEMBER_ORGS[3],
        &members[3].addr.clone(),
        &[(approver.as_str(), members[1].addr.clone())],
    )
    .await?;
    Ok(survivor)
}

async fn auditor_at(
    net: &NetworkDir,
    addr: &str,
) -> Result<yilian_ledger::service::pb::Consortium> {
    let (mut a, _) = client(net, "auditor", addr).await?;
    Ok(a.consortium().await?)
}

async fn kms_act(net: &NetworkDir, addr: &str) -> Result<()> {
    let id = |n: &str| net.load_identity(n);
    let (owner, reader, recipient) = (
        id("shop-holder")?,
        id("device-2")?,
        id(network::OPERATOR_IDENTITY)?,
    );
    let trustees = [id("trustee-a")?, id("trustee-b")?, id("trustee-c")?];
    let cast = keys::Cast {
        owner: &owner,
        trustees: [&trustees[0], &trustees[1], &trustees[2]],
        reader: &reader,
        recipient: &recipient,
    };
    keys::act(addr, cast).await
}

/// The ZK act through the ZK gRPC API, as a bank would use it: the data
/// holder encrypts a customer record under a KMS-issued BN254 key, anchors
/// it, registers it (its key sealed under the holder's KMS master key) and
/// grants the bank four questions; the bank asks them and checks each
/// proof offline against the anchor; an unconsented question is refused,
/// and a binary search on the income is stopped by the disclosure budget.
/// The members' setup of the KYC statement: phase 1 (powers of tau, sized
/// to the statement's domain) and phase 2, each member contributing in turn
/// and anchoring its transcript hash through its own node. The ZK node then
/// takes its keys from this transcript only after checking every anchor and
/// verifying it all.
async fn ceremony_act(
    root: &std::path::Path,
    members: &[MemberNode],
    zk_node: &MemberNode,
) -> Result<[u8; 32]> {
    use yilian_circuits::kyc::Shape;
    use yilian_zk::ceremony::{derive::Qap, transcript};
    // The customer records here have up to 8 fields: one statement.
    let shape = Shape::F8;
    let dir = root.join("ceremony").join(shape.statement());
    let qap = std::sync::Arc::new(Qap::statement(shape)?);
    let n = transcript::init(&dir, &qap)?;
    println!(
        "ceremony: {} setup among {} members, phase 1 sized to the statement ({n}-point domain)",
        shape.statement(),
        members.len()
    );
    for phase in [1, 2] {
        if phase == 2 {
            let started = std::time::Instant::now();
            let (d, qap) = (dir.clone(), qap.clone());
            tokio::task::spawn_blocking(move || transcript::finish_phase1(&d, &qap)).await??;
            println!(
                "ceremony: phase 1 finished, the statement's initial key derived from it ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
        for m in members {
            let id = Identity::load(&m.identity)?;
            let started = std::time::Instant::now();
            let channel = yilian_identity::grpc::connect(&m.addr, &id).await?;
            let (step, index) =
                crate::cli::zk::contribute_anchored(&dir, shape, channel, &id).await?;
            println!(
                "ceremony: {} contributed to phase {phase} ({:.1} s), transcript hash {} anchored at entry {index}",
                m.org,
                started.elapsed().as_secs_f64(),
                &hex::encode(step.hash)[..16]
            );
        }
    }
    // The transcript is public: the ZK node gets a copy where it looks.
    let to = zk_node
        .data
        .join("zk")
        .join("ceremony")
        .join(shape.statement());
    for phase in ["phase1", "phase2"] {
        std::fs::create_dir_all(to.join(phase))?;
        for f in std::fs::read_dir(dir.join(phase))? {
            let f = f?;
            std::fs::copy(f.path(), to.join(phase).join(f.file_name()))?;
        }
    }
    Ok(yilian_zk::keys::vk_hash(&transcript::last_key(&dir)?.vk))
}

async fn zk_act(net: &NetworkDir, addr: &str, ceremony_vk: [u8; 32]) -> Result<()> {
    use yilian_zk::query::Predicate;
    use yilian_zk::record::{EncryptedRecord, FieldValue, Record};
    use yilian_zk::service::{ZkClient, pb};

    let holder = net.load_identity("shop-holder")?;
    let bank = net.load_identity("acme-verifier")?;
    let mut kms = yilian_kms::client::Client::connect(addr, &holder).await?;
    let key_id = "customer-0001-zk";
    let wrap_key = "shop-holder-records";
    kms.create_key(key_id, true, false).await?;
    kms.create_key(wrap_key, false, false).await?;
    let zk_key = kms
        .raw
        .zk_key(yilian_kms::service::pb::KeyRef {
            key_id: key_id.into(),
        })
        .await?
        .into_inner();
    let key = yilian_zk::record::CipherKey::new(yilian_kms::zk::elements(&zk_key.elements)?);
    println!(
        "zk: KMS issued BN254 key `{key_id}` to shop-holder, Poseidon commitment {}",
        hex::encode(&zk_key.commitment)
    );
    let customer = Record {
        fields: vec![
            (
                "id_number".into(),
                FieldValue::Identifier("310101199001011234".into()),
            ),
            ("birth_date".into(), FieldValue::Integer(19_900_101)),
            ("income".into(), FieldValue::Integer(120_000)),
            ("credit_score".into(), FieldValue::Integer(720)),
            ("savings".into(), FieldValue::Integer(80_000)),
            ("loan".into(), FieldValue::Integer(50_000)),
        ],
    };
    let record =
        EncryptedRecord::encrypt("customer-0001", &customer, &key, rand::random::<u128>())?;
    let anchor = record.anchor()?;
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
    let zk = |id: &Identity| {
        let id = id.clone();
        async move {
            let ch = yilian_identity::grpc::connect(addr, &id).await?;
            anyhow::Ok(
                ZkClient::new(ch).max_decoding_message_size(yilian_zk::service::MAX_MESSAGE_BYTES),
            )
        }
    };
    // The customer has an identity (its phone): no grant without its say.
    let customer_id = net.load_identity("device-1")?;
    let mut as_holder = zk(&holder).await?;
    as_holder
        .register_record(pb::RegisterRecordRequest {
            record: Some((&record).into()),
            key: key.to_kms_bytes().to_vec(),
            wrap_key_id: wrap_key.into(),
            customer: customer_id.principal().public_key.to_vec(),
        })
        .await?;
    let sanctions: Vec<String> = (0..1024).map(|i| format!("SANCTIONED-{i:05}")).collect();
    let set = as_holder
        .register_set(pb::RegisterSetRequest {
            identifiers: sanctions,
            elements: vec![],
        })
        .await?
        .into_inner();
    let root = yilian_zk::fr_from_bytes(set.root.as_slice().try_into()?)?;
    println!(
        "zk: shop-holder anchored customer-0001 at ledger entry {} and registered it, its key sealed under `{wrap_key}`",
        rec.index
    );

    // Adults on the day the devnet runs: born on or before today, 18 years ago.
    let (y, m, d) = civil_date(days_since_epoch());
    let adult_cutoff = (y - 18) * 10_000 + i64::from(m) * 100 + i64::from(d);
    let age_question = format!("age >= 18 (born on or before {}-{m:02}-{d:02})", y - 18);
    let questions = [
        (
            "ID number is 310101199001011234",
            Predicate::Eq {
                field: "id_number".into(),
                value: FieldValue::Identifier("310101199001011234".into()),
            },
        ),
        (
            age_question.as_str(),
            Predicate::Lte {
                field: "birth_date".into(),
                value: u64::try_from(adult_cutoff)?,
            },
        ),
        (
            "income >= 150000",
            Predicate::Gte {
                field: "income".into(),
                value: 150_000,
            },
        ),
        (
            "not on the sanctions list (1024 entries)",
            Predicate::Nin {
                field: "id_number".into(),
                root,
            },
        ),
        (
            "income >= 150000 or credit_score >= 700",
            Predicate::Any {
                any: vec![
                    Predicate::Gte {
                        field: "income".into(),
                        value: 150_000,
                    },
                    Predicate::Gte {
                        field: "credit_score".into(),
                        value: 700,
                    },
                ],
            },
        ),
        (
            "savings >= loan (two fields of the record)",
            Predicate::GteField {
                field: "savings".into(),
                other: "loan".into(),
            },
        ),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    // The customer countersigns each grant's terms on its device.
    let grant = |allowed: Vec<Predicate>, uses: u32| {
        let terms = yilian_zk::consent::Consent {
            consent_id: format!("c-{}", hex::encode(rand::random::<[u8; 8]>())),
            record_id: "customer-0001".into(),
            verifier: bank.principal().public_key,
            allowed,
            max_uses: uses,
            not_before_ms: 0,
            not_after_ms: now + 3_600_000,
            budget: Default::default(),
        };
        pb::GrantRequest {
            record_id: terms.record_id.clone(),
            verifier: terms.verifier.to_vec(),
            allowed: yilian_zk::service::predicates_to_pb(&terms.allowed),
            max_uses: Some(uses),
            not_before_ms: 0,
            not_after_ms: terms.not_after_ms,
            budget: Default::default(),
            customer_signature: terms.sign(customer_id.signing_key()).signature,
            consent_id: terms.consent_id,
        }
    };
    let unsigned = pb::GrantRequest {
        customer_signature: Vec::new(),
        ..grant(questions.iter().map(|(_, p)| p.clone()).collect(), 6)
    };
    let e = as_holder
        .grant(unsigned)
        .await
        .expect_err("a grant without the customer's countersignature must be refused");
    ensure!(e.code() == tonic::Code::PermissionDenied, "{e:?}");
    println!(
        "zk: a grant without the customer's (device-1's) countersignature: refused ({})",
        e.message()
    );
    let g = as_holder
        .grant(grant(questions.iter().map(|(_, p)| p.clone()).collect(), 6))
        .await?
        .into_inner();
    println!(
        "zk: shop-holder granted acme-verifier the six questions, 6 uses, for an hour, countersigned by the customer: grant {} (ledger entry {})",
        g.grant_id, g.ledger_index
    );

    // The bank checks every proof itself, against the verifying key and the
    // record anchor it reads from the ledger.
    let mut as_bank = zk(&bank).await?;
    let vk = as_bank
        .verifying_key(pb::VerifyingKeyRequest::default())
        .await?
        .into_inner();
    let mut bank_ledger = LedgerClient::new(yilian_identity::grpc::connect(addr, &bank).await?);
    match bank_ledger.entry(vk.anchor_index).await?.tx.payload {
        Payload::VerifyingKeyAnchor { vk_hash, .. } if vk_hash.as_slice() == vk.vk_hash => {}
        other => anyhow::bail!("the verifying key is not the anchored one: {other:?}"),
    }
    ensure!(
        vk.vk_hash == ceremony_vk,
        "the node's verifying key is not the ceremony's"
    );
    println!(
        "zk: the node verified the members' ceremony transcript, found its 6 contributions anchored, and anchored \
         the resulting verifying key at entry {} (SHA-256 {})",
        vk.anchor_index,
        &hex::encode(&vk.vk_hash)[..16]
    );
    let pvk = yilian_zk::keys::prepare(&yilian_zk::keys::from_bytes(
        "verifying key",
        &vk.verifying_key,
    )?);
    let ask = |grant_id: &str, p: &Predicate| pb::QueryRequest {
        record_id: "customer-0001".into(),
        predicates: yilian_zk::service::predicates_to_pb(std::slice::from_ref(p)),
        grant_id: grant_id.into(),
    };
    let mut answers = Vec::new();
    for (text, predicate) in &questions {
        let r = as_bank
            .query(ask(&g.grant_id, predicate))
            .await?
            .into_inner();
        let proof = yilian_zk::service::proof_from_pb(r.proof.as_ref().context("no proof")?)?;
        let entry = bank_ledger.entry(r.anchor_index).await?;
        let on_ledger = match entry.tx.payload {
            Payload::RecordAnchor {
                record_id,
                ciphertext_hash,
                key_commitment,
            } if entry.signer == holder.principal().public_key => yilian_zk::record::RecordAnchor {
                record_id,
                ciphertext_hash,
                key_commitment,
            },
            other => anyhow::bail!(
                "entry {} is not the holder's anchor: {other:?}",
                r.anchor_index
            ),
        };
        ensure!(
            on_ledger == anchor,
            "the ledger's anchor is not the holder's record"
        );
        let answer = yilian_zk::verifier::verify_against_anchor(
            &pvk,
            &proof.proof,
            &proof.public,
            &on_ledger,
        )?;
        ensure!(
            answer == r.answer,
            "the node's answer differs from its proof's"
        );
        println!("zk: acme-verifier learned: {text}: {answer} (proof verified offline)");
        answers.push(answer);
    }
    ensure!(
        answers == [true, true, false, true, true, true],
        "unexpected answers {answers:?}"
    );

    let unconsented = Predicate::Gte {
        field: "credit_score".into(),
        value: 700,
    };
    let e = as_bank
        .query(ask(&g.grant_id, &unconsented))
        .await
        .expect_err("an unconsented question must be refused");
    ensure!(e.code() == tonic::Code::PermissionDenied, "{e:?}");
    println!(
        "zk: credit_score >= 700, not granted: refused ({})",
        e.message()
    );

    // A binary search on the income: the holder is asked for two more
    // thresholds; the budget (2 distinct per field, 150000 already answered)
    // lets one through, whoever grants or asks.
    let income = |value| Predicate::Gte {
        field: "income".into(),
        value,
    };
    let mut refused = None;
    for t in [100_000, 125_000] {
        let outcome = match as_holder.grant(grant(vec![income(t)], 1)).await {
            Ok(g) => as_bank
                .query(ask(&g.into_inner().grant_id, &income(t)))
                .await
                .map(|r| r.into_inner().answer),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(answer) => println!("zk: binary search, income >= {t}: {answer}"),
            Err(e) => {
                ensure!(e.code() == tonic::Code::PermissionDenied, "{e:?}");
                println!(
                    "zk: binary search, income >= {t}: refused ({})",
                    e.message()
                );
                refused = Some(t);
            }
        }
    }
    ensure!(
        refused == Some(125_000),
        "the budget did not stop the search"
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
    keeps_files: bool,
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
    let report = learning::act(
        addr,
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
        "learning: task {} closed {} rounds; final validation accuracy {:.3}; model exported to {}{}",
        report.task_id,
        report.history.len(),
        last.accuracy,
        report.onnx_path.display(),
        if keeps_files {
            ""
        } else {
            " (in the devnet's temporary directory, removed when it ends: pass --dir to keep it)"
        }
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
    let start_head = auditor.cosigned_head().await?;

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

    // The cosigned head, inclusion and consistency proofs, verified offline
    // against the members the ledger lists (a majority must have cosigned).
    let head = auditor.cosigned_head().await?;
    let members = head.cosigners.clone();
    let quorum = yilian_ledger::checkpoint::majority(members.len());
    let bundle: InclusionBundle = auditor.inclusion_bundle(r.index).await?;
    let json = serde_json::to_string(&bundle)?;
    let offline: InclusionBundle = serde_json::from_str(&json)?;
    ensure!(offline.version == BUNDLE_VERSION);
    let (tx, who) = offline.verify_cosigned(&members, quorum)?;
    println!(
        "inclusion: entry {} ({}) proven in {} hashes under a head cosigned by {}, verified offline",
        r.index,
        tx.tx.payload.kind(),
        offline.proof.path.len(),
        who.join(", ")
    );
    let mut tampered = offline.clone();
    tampered.entry[20] ^= 1;
    ensure!(
        tampered.verify_cosigned(&members, quorum).is_err(),
        "tampered entry verified"
    );
    let cons: ConsistencyBundle = auditor.consistency_bundle(&start_head).await?;
    let trusted = &start_head
        .checkpoint
        .as_ref()
        .context("the auditor's first head carries no cosigned checkpoint")?
        .body;
    cons.verify_from_trusted(trusted, &members, quorum)?;
    println!(
        "consistency: the auditor's earlier head (size {}) is a prefix of size {} ({} hashes), verified offline",
        cons.proof.old_size,
        cons.proof.new_size,
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

/// The tree size the explorer at `addr` reports, read over plain HTTP as a
/// browser would.
async fn explorer_head_size(addr: &str) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("the explorer at {addr} is not reachable"))?;
    s.write_all(b"GET /api/head HTTP/1.1\r\nHost: devnet\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|b| b.1)
        .context("the explorer sent no body")?;
    let head: serde_json::Value =
        serde_json::from_str(body).context("the explorer's head is not JSON")?;
    head["size"]
        .as_u64()
        .context("the explorer's head has no size")
}

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn day_counts_give_their_calendar_dates() {
        // Reference values from Python's datetime.date.
        for (days, date) in [
            (0, (1970, 1, 1)),
            (10_956, (1999, 12, 31)),
            (11_016, (2000, 2, 29)),
            (20_790, (2026, 12, 3)),
            (-1, (1969, 12, 31)),
        ] {
            assert_eq!(super::civil_date(days), date, "day {days}");
        }
    }
}
