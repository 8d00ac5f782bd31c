//! The consortium ledger across real node processes on loopback, each with
//! its own data directory and port: members added by majority approval,
//! replication, cosigned heads, a leader killed with SIGKILL, and peers
//! that are not members refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use yilian::network::{self, NetworkDir, Recorder};
use yilian_identity::ca::AdmissionRequest;
use yilian_identity::{Identity, Role};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn yilian(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "yilian {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One member organisation's node: its data directory, port and process.
struct Member {
    org: String,
    data: PathBuf,
    identity: PathBuf,
    addr: String,
    child: Option<Child>,
}

impl Member {
    fn start(&mut self) {
        let log = std::fs::File::create(self.data.join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_yilian"))
            .args(["node", "--config"])
            .arg(self.data.join("node.toml"))
            .env("RUST_LOG", "warn,yilian_ledger=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL on Unix.
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A consortium of `n` member organisations, each on its own node.
struct Consortium {
    _tmp: tempfile::TempDir,
    /// The first member's network directory: the admission authority lives here.
    net: NetworkDir,
    members: Vec<Member>,
    client: Identity,
}

fn write_config(m: &Member, peers: &[String]) {
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        m.data.join("node.toml"),
        format!(
            "data_dir = {:?}\nlisten = {:?}\nidentity = {:?}\n\n[cluster]\nadvertise = {:?}\npeers = [{}]\n",
            m.data.display().to_string(),
            m.addr,
            m.identity.display().to_string(),
            m.addr,
            peers.join(", ")
        ),
    )
    .unwrap();
}

async fn client(addr: &str, id: &Identity) -> LedgerClient {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match yilian_identity::grpc::connect(addr, id).await {
            Ok(ch) => return LedgerClient::new(ch),
            Err(e) if Instant::now() > deadline => panic!("cannot reach {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

impl Consortium {
    /// Starts the first member, then adds the others one by one, each by
    /// a majority of the members before it.
    async fn start(n: usize) -> Consortium {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let first = root.join("org-0");
        let net = NetworkDir::new(&first);
        network::init_network(&net, "consortium", &addrs[0])
            .await
            .unwrap();
        {
            let ledger = net.open_ledger().unwrap();
            let mut rec = Recorder::Local(&ledger);
            for i in 1..n {
                let req =
                    AdmissionRequest::new(format!("org-{i}"), Role::Member, format!("node-{i}"));
                network::admit(&net, &req, &mut rec).await.unwrap();
            }
            let req = AdmissionRequest::new("org-0", Role::Verifier, "client");
            network::admit(&net, &req, &mut rec).await.unwrap();
            let req = AdmissionRequest::new("org-x", Role::Member, "outsider");
            network::admit(&net, &req, &mut rec).await.unwrap();
        }
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let data = if i == 0 {
                first.clone()
            } else {
                let d = root.join(format!("org-{i}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            };
            let identity = if i == 0 {
                net.identity(network::NODE_IDENTITY)
            } else {
                net.identity(&format!("node-{i}"))
            };
            let m = Member {
                org: format!("org-{i}"),
                data,
                identity,
                addr: addr.clone(),
                child: None,
            };
            let peers: Vec<String> = addrs.iter().filter(|a| *a != addr).cloned().collect();
            write_config(&m, &peers);
            members.push(m);
        }
        for m in &mut members {
            m.start();
        }
        let client = net.load_identity("client").unwrap();
        let c = Consortium {
            _tmp: tmp,
            net,
            members,
            client,
        };
        for m in &c.members {
            self::client(&m.addr, &c.client).await;
        }
        for i in 1..n {
            c.add(i).await;
        }
        c
    }

    fn data(&self) -> String {
        self.net.root.display().to_string()
    }

    /// Proposes member `i` through member 0, and has a majority approve it.
    async fn add(&self, i: usize) {
        let m = &self.members[i];
        let cert = m.identity.join("cert.pem");
        let out = yilian(&[
            "admin",
            "add-member",
            "--data",
            &self.data(),
            "--via",
            &self.members[0].addr,
            "--org",
            &m.org,
            "--cert",
            cert.to_str().unwrap(),
            "--node",
            &m.addr,
        ]);
        if !out.contains("has taken effect") {
            let id = out.split_whitespace().nth(1).unwrap().to_owned();
            // Members 1..majority approve, each through its own node.
            for j in 1..(i / 2 + 1) {
                let who = &self.members[j];
                let approve = yilian(&[
                    "admin",
                    "approve",
                    "--identity",
                    who.identity.to_str().unwrap(),
                    "--via",
                    &who.addr,
                    &id,
                ]);
                assert!(approve.contains("proposal"), "{approve}");
            }
        }
        // The new member has caught up and votes.
        let mut c = client(&m.addr, &self.client).await;
        wait_until(&format!("{} to join", m.org), 60, || {
            let mut c = c.clone();
            async move {
                c.consortium()
                    .await
                    .is_ok_and(|cons| cons.members.len() == i + 1 && cons.leader_raft_id != 0)
            }
        })
        .await;
        let _ = &mut c;
    }

    async fn clients(&self) -> Vec<LedgerClient> {
        let mut out = Vec::new();
        for m in &self.members {
            out.push(client(&m.addr, &self.client).await);
        }
        out
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                let Ok(ch) = yilian_identity::grpc::connect(&m.addr, &self.client).await else {
                    continue;
                };
                if let Ok(cons) = LedgerClient::new(ch).consortium().await
                    && let Some(i) = self
                        .members
                        .iter()
                        .position(|x| x.addr == cons.leader_addr && x.child.is_some())
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

fn note(id: &Identity, body: String) -> yilian_ledger::SignedTransaction {
    Transaction::new(Payload::Note {
        topic: "consortium".into(),
        body,
    })
    .sign(id.signing_key())
}

async fn sizes(clients: &mut [LedgerClient]) -> Vec<u64> {
    let mut out = Vec::new();
    for c in clients {
        out.push(c.tree_head().await.map(|h| h.tree_size).unwrap_or(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_cosign_and_survive_a_killed_leader() {
    let mut net = Consortium::start(3).await;
    let mut clients = net.clients().await;

    // Writes through every member, the followers' forwarded to the leader.
    let mut acked = Vec::new();
    for round in 0..5 {
        for (i, c) in clients.iter_mut().enumerate() {
            let tx = note(&net.client, format!("via {i} round {round}"));
            let r = c.submit(&tx).await.unwrap();
            acked.push((r.index, tx));
        }
    }
    let want = acked.iter().map(|(i, _)| i + 1).max().unwrap();
    wait_until("every member to apply every entry", 30, || {
        let mut cs = clients.clone();
        async move { sizes(&mut cs).await.iter().all(|s| *s >= want) }
    })
    .await;
    // The same root at the same size on every member.
    let mut roots = BTreeSet::new();
    for c in &mut clients {
        let b = c.inclusion_bundle(0).await.unwrap();
        let cp = b.checkpoint.unwrap();
        let theirs = c.cosigned_head().await.unwrap();
        assert_eq!(theirs.cosigners.len(), 3);
        roots.insert((cp.body.size, cp.body.root));
    }
    // A head carries all three members' cosignatures once the round completed.
    wait_until("a head cosigned by all three members", 30, || {
        let mut c = clients[0].clone();
        async move {
            c.cosigned_head().await.is_ok_and(|h| {
                h.checkpoint
                    .is_some_and(|cp| cp.body.size >= want && cp.verify(&h.cosigners, 3).is_ok())
            })
        }
    })
    .await;

    // The head, checked offline against the members listed on the ledger.
    let head = net.members[0].data.join("head.json");
    let proof = net.members[0].data.join("proof.json");
    let via = |m: &Member| vec!["--node".to_owned(), m.addr.clone()];
    let id = net.net.identity("client").display().to_string();
    let mut args: Vec<String> = vec!["ledger".into(), "head".into()];
    args.extend(via(&net.members[1]));
    args.extend([
        "--identity".into(),
        id.clone(),
        "--out".into(),
        head.display().to_string(),
    ]);
    yilian(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args: Vec<String> = vec![
        "ledger".into(),
        "prove".into(),
        "--index".into(),
        "3".into(),
    ];
    args.extend(via(&net.members[2]));
    args.extend([
        "--identity".into(),
        id.clone(),
        "--out".into(),
        proof.display().to_string(),
    ]);
    yilian(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = yilian(&[
        "ledger",
        "verify",
        "--head",
        head.to_str().unwrap(),
        "--min-cosigners",
        "2",
        "--inclusion",
        proof.to_str().unwrap(),
    ]);
    assert!(out.starts_with("OK: entry 3"), "{out}");
    // More cosigners than there are members is refused, with the reason.
    let refused = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(["ledger", "verify", "--head", head.to_str().unwrap()])
        .args([
            "--min-cosigners",
            "4",
            "--inclusion",
            proof.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("REFUSED") && err.contains("4 are required"),
        "{err}"
    );

    // Kill the leader with SIGKILL in the middle of a stream of writes.
    let leader = net.leader().await;
    let survivor = (leader + 1) % 3;
    let mut writer = clients[survivor].clone();
    let id = net.client.clone();
    let stream = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut refused = 0;
        for i in 0..400 {
            let tx = note(&id, format!("stream {i}"));
            match writer.submit(&tx).await {
                Ok(r) => acked.push((r.index, tx)),
                Err(_) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        (acked, refused)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    net.members[leader].kill9();
    let (streamed, refused) = stream.await.unwrap();
    eprintln!(
        "leader {leader} killed: {} writes acknowledged, {refused} refused meanwhile, {:?} since the kill",
        streamed.len(),
        killed_at.elapsed()
    );
    let last = streamed.iter().map(|(i, _)| *i).max().unwrap();
    assert!(
        streamed.iter().any(|(i, _)| *i > acked.len() as u64 + 50),
        "writes carried on after the leader was killed"
    );
    let new_leader = net.leader().await;
    assert_ne!(new_leader, leader);

    // The killed member restarts and catches up.
    net.members[leader].start();
    let mut back = client(&net.members[leader].addr, &net.client).await;
    wait_until("the restarted member to catch up", 60, || {
        let mut c = back.clone();
        async move { c.tree_head().await.is_ok_and(|h| h.tree_size > last) }
    })
    .await;
    // Not one acknowledged entry is lost, on any member.
    clients[leader] = back.clone();
    for c in &mut clients {
        for (index, tx) in acked.iter().chain(&streamed) {
            assert_eq!(&c.entry(*index).await.unwrap(), tx, "entry {index}");
        }
    }
    // No member holds evidence of another cosigning a different root.
    for m in &net.members {
        let ch = yilian_identity::grpc::connect(&m.addr, &net.client)
            .await
            .unwrap();
        let mut peer = yilian_ledger::peer::pb::consortium_client::ConsortiumClient::new(ch);
        let ev = peer
            .evidence(yilian_ledger::peer::pb::EvidenceRequest {})
            .await
            .unwrap()
            .into_inner()
            .evidence;
        assert_eq!(ev, "[]", "{}: {ev}", m.org);
    }
    let _ = &mut back;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_cannot_be_peers_and_unapproved_members_do_not_join() {
    let net = Consortium::start(2).await;
    // A member-role certificate of an organisation not in the consortium.
    let outsider = net.net.load_identity("outsider").unwrap();
    let ch = yilian_identity::grpc::connect(&net.members[0].addr, &outsider)
        .await
        .unwrap();
    let mut peer = yilian_ledger::peer::pb::consortium_client::ConsortiumClient::new(ch);
    let err = peer
        .vote(yilian_ledger::peer::pb::RaftMessage {
            payload: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("not a consortium member"),
        "{}",
        err.message()
    );
    // A verifier's certificate is no peer at all.
    let ch = yilian_identity::grpc::connect(&net.members[0].addr, &net.client)
        .await
        .unwrap();
    let mut peer = yilian_ledger::peer::pb::consortium_client::ConsortiumClient::new(ch);
    let err = peer
        .append_entries(yilian_ledger::peer::pb::RaftMessage { payload: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("only member nodes are peers"),
        "{}",
        err.message()
    );

    // With two members, a proposal by one is not a majority: the outsider
    // stays out until the other approves.
    let mut c = client(&net.members[1].addr, &net.client).await;
    let before = c.tree_head().await.unwrap().tree_size;
    let cert = net.net.identity("outsider").join("cert.pem");
    let out = yilian(&[
        "admin",
        "add-member",
        "--data",
        &net.data(),
        "--via",
        &net.members[1].addr,
        "--org",
        "org-x",
        "--cert",
        cert.to_str().unwrap(),
        "--node",
        "127.0.0.1:1",
    ]);
    assert!(out.contains("1 of 2 members approved, 2 needed"), "{out}");
    let cons = c.consortium().await.unwrap();
    assert_eq!(cons.members.len(), 2);
    // Approving twice, or as a non-member, is refused and changes nothing.
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let again = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args([
            "admin",
            "approve",
            "--data",
            &net.data(),
            "--via",
            &net.members[0].addr,
            &id,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already approved"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let stranger = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(["admin", "approve", "--identity"])
        .arg(net.net.identity("outsider"))
        .args(["--via", &net.members[0].addr, &id])
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("not a consortium member"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    assert_eq!(c.tree_head().await.unwrap().tree_size, before + 1);
    assert_eq!(c.consortium().await.unwrap().members.len(), 2);
    let _ = Path::new("");
}
