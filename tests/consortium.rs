//! The consortium ledger across real node processes on loopback, each with
//! its own data directory and port: members added by majority approval,
//! replication, cosigned heads, a leader killed with SIGKILL, and peers
//! that are not members refused.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use yilian::network::{self, NetworkDir, Recorder};
use yilian_identity::ca::AdmissionRequest;
use yilian_identity::{Identity, Role};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};
use yilian_testkit::NodeProcess;

fn yilian(args: &[&str]) -> String {
    yilian_testkit::stdout_of(Command::new(env!("CARGO_BIN_EXE_yilian")).args(args))
}

/// One member organisation's node: its data directory, port and process.
struct Member {
    org: String,
    data: PathBuf,
    identity: PathBuf,
    addr: String,
    node: NodeProcess,
}

impl Member {
    fn start(&mut self) {
        self.node.start();
    }

    fn kill9(&mut self) {
        self.node.kill9();
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

fn write_config(m: &Member, peers: &[String], extra: &str) {
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        m.data.join("node.toml"),
        format!(
            "data_dir = {:?}\nlisten = {:?}\nidentity = {:?}\n\n[cluster]\nadvertise = {:?}\npeers = [{}]\n{extra}",
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

async fn wait_until<F, Fut>(what: &str, secs: u64, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    yilian_testkit::wait_until(what, Duration::from_secs(secs), f).await
}

impl Consortium {
    /// Starts the first member, then adds the others one by one, each by
    /// a majority of the members before it.
    async fn start(n: usize) -> Consortium {
        Self::start_with(n, |_, _| String::new()).await
    }

    /// As [`Self::start`], with extra `[cluster]` lines per member (given
    /// its index and every member's address).
    async fn start_with(n: usize, extra: impl Fn(usize, &[String]) -> String) -> Consortium {
        let addrs: Vec<String> = (0..n).map(|_| yilian_testkit::free_addr()).collect();
        let n = addrs.len();
        Self::start_fixed(addrs, extra, n).await
    }

    /// As [`Self::start_with`], on the given addresses.
    async fn start_fixed(
        addrs: Vec<String>,
        extra: impl Fn(usize, &[String]) -> String,
        added: usize,
    ) -> Consortium {
        let n = addrs.len();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
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
            let node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &data.join("node.toml"))
                .env("RUST_LOG", "warn,yilian_ledger=info")
                .log(&data.join("node.log"));
            let m = Member {
                org: format!("org-{i}"),
                data,
                identity,
                addr: addr.clone(),
                node,
            };
            let peers: Vec<String> = addrs.iter().filter(|a| *a != addr).cloned().collect();
            write_config(&m, &peers, &extra(i, &addrs));
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
        for i in 1..added {
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
        let c = client(&m.addr, &self.client).await;
        wait_until(&format!("{} to join", m.org), 60, || {
            let mut c = c.clone();
            async move {
                c.consortium()
                    .await
                    .is_ok_and(|cons| cons.members.len() == i + 1 && cons.leader_raft_id != 0)
            }
        })
        .await;
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
            for m in self.members.iter().filter(|m| m.node.is_running()) {
                let Ok(ch) = yilian_identity::grpc::connect(&m.addr, &self.client).await else {
                    continue;
                };
                if let Ok(cons) = LedgerClient::new(ch).consortium().await
                    && let Some(i) = self
                        .members
                        .iter()
                        .position(|x| x.addr == cons.leader_addr && x.node.is_running())
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

/// The evidence a member serves (JSON), if it answers.
async fn evidence(addr: &str, id: &Identity) -> Option<String> {
    let ch = yilian_identity::grpc::connect(addr, id).await.ok()?;
    let mut peer = yilian_ledger::peer::pb::consortium_client::ConsortiumClient::new(ch);
    let r = peer
        .evidence(yilian_ledger::peer::pb::EvidenceRequest {})
        .await
        .ok()?;
    Some(r.into_inner().evidence)
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
    // The same root at the same size on every member (no write is in flight now).
    let mut roots = BTreeSet::new();
    for c in &mut clients {
        let theirs = c.cosigned_head().await.unwrap();
        assert_eq!(theirs.cosigners.len(), 3);
        roots.insert((theirs.member_head.tree_size, theirs.member_head.root_hash));
    }
    assert_eq!(roots.len(), 1, "members disagree: {roots:?}");
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
    let back = client(&net.members[leader].addr, &net.client).await;
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
        let ev = evidence(&m.addr, &net.client).await.unwrap();
        assert_eq!(ev, "[]", "{}: {ev}", m.org);
    }
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
}

#[tokio::test(flavor = "current_thread")]
async fn a_member_added_after_100k_entries_catches_up_by_log_transfer() {
    let addrs = vec![yilian_testkit::free_addr(), yilian_testkit::free_addr()];
    // Both nodes run; only the first is a member yet.
    let net = Consortium::start_fixed(addrs, |_, _| String::new(), 1).await;
    let mut c = client(&net.members[0].addr, &net.client).await;
    const N: usize = 100_000;
    let key = net.client.signing_key().clone();
    let txs: Vec<yilian_ledger::SignedTransaction> = (0..N)
        .map(|i| {
            Transaction::new(Payload::Note {
                topic: "bulk".into(),
                body: i.to_string(),
            })
            .sign(&key)
        })
        .collect();
    use futures::StreamExt as _;
    let done: Vec<u64> = futures::stream::iter(txs)
        .map(|tx| {
            let mut c = c.clone();
            async move { c.submit(&tx).await.unwrap().index }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    assert_eq!(done.len(), N);
    let size = c.tree_head().await.unwrap().tree_size;
    assert!(size > N as u64);
    net.add(1).await;
    let mut joined = client(&net.members[1].addr, &net.client).await;
    wait_until("the new member to hold all 10^5 entries", 120, || {
        let mut j = joined.clone();
        async move { j.tree_head().await.is_ok_and(|h| h.tree_size >= size) }
    })
    .await;
    let a = c.inclusion_bundle(size - 1).await.unwrap();
    let b = joined.inclusion_bundle(size - 1).await.unwrap();
    assert_eq!(a.entry, b.entry);
}

/// A TCP proxy between two members that the test can cut and heal.
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    pipes: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let pipes: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (c, p) = (cut.clone(), pipes.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                p.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { addr, cut, pipes }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.pipes.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_member_refuses_writes_reads_stale_and_catches_up() {
    const N: usize = 3;
    // proxies[i][j] carries member i's traffic to member j.
    let addrs: Vec<String> = (0..N).map(|_| yilian_testkit::free_addr()).collect();
    let mut proxies: Vec<Vec<Option<Proxy>>> = Vec::new();
    for i in 0..N {
        let mut row = Vec::new();
        for (j, a) in addrs.iter().enumerate() {
            row.push(if i == j {
                None
            } else {
                Some(Proxy::start(a.clone()).await)
            });
        }
        proxies.push(row);
    }
    let routes: Vec<Vec<(String, String)>> = (0..N)
        .map(|i| {
            (0..N)
                .filter(|j| *j != i)
                .map(|j| {
                    (
                        addrs[j].clone(),
                        proxies[i][j].as_ref().unwrap().addr.clone(),
                    )
                })
                .collect()
        })
        .collect();
    let fixed = addrs.clone();
    let net = Consortium::start_fixed(
        fixed,
        |i, _| {
            let lines: Vec<String> = routes[i]
                .iter()
                .map(|(a, p)| format!("{a:?} = {p:?}"))
                .collect();
            format!("[cluster.routes]\n{}\n", lines.join("\n"))
        },
        N,
    )
    .await;
    let mut clients = net.clients().await;
    let leader = net.leader().await;
    let cut = (leader + 1) % N;
    let other = (leader + 2) % N;
    for (i, row) in proxies.iter().enumerate() {
        for (j, p) in row.iter().enumerate() {
            if (i == cut) != (j == cut) {
                p.as_ref().unwrap().cut();
            }
        }
    }
    // The majority keeps committing. On a loaded machine a write just after
    // the cut can miss its quorum deadline, or meet an election in progress
    // (an immediate NotLeader), while the cut member's heartbeats time out;
    // Unavailable says to retry, and a resubmitted transaction is the same
    // entry, so the client retries as it is told to, pausing between tries
    // so that fast refusals do not use up its patience in milliseconds.
    let mut last = 0;
    for k in 0..20 {
        let tx = note(&net.client, format!("majority {k}"));
        let patience = Instant::now() + Duration::from_secs(90);
        last = loop {
            match clients[other].submit(&tx).await {
                Ok(r) => break r.index,
                Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < patience => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => panic!("the majority refused a write: {e:?}"),
            }
        };
    }
    // The cut-off member refuses writes with Unavailable and says why.
    let err = clients[cut]
        .submit(&note(&net.client, "minority".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("leader"), "{}", err.message());
    // Its reads still answer, marked stale, and behind the majority.
    wait_until("the cut-off member to mark its head stale", 20, || {
        let mut c = clients[cut].clone();
        async move { c.cosigned_head().await.is_ok_and(|h| h.stale) }
    })
    .await;
    let h = clients[cut].cosigned_head().await.unwrap();
    assert!(h.member_head.tree_size <= last);
    let fresh = clients[other].cosigned_head().await.unwrap();
    assert!(!fresh.stale);
    // Healed, it catches up.
    for row in &proxies {
        for p in row.iter().flatten() {
            p.heal();
        }
    }
    wait_until("the healed member to catch up", 60, || {
        let mut c = clients[cut].clone();
        async move {
            c.cosigned_head()
                .await
                .is_ok_and(|h| h.member_head.tree_size > last && !h.stale)
        }
    })
    .await;
    let tx = note(&net.client, "after healing".into());
    clients[cut].submit(&tx).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_and_never_cosigned() {
    let mut net = Consortium::start(3).await;
    let mut clients = net.clients().await;
    let marker = "TAMPER-ME-7f3a9c";
    let r = clients[0]
        .submit(&note(&net.client, marker.into()))
        .await
        .unwrap();
    // More writes, so the entry is durable on every member.
    for k in 0..5 {
        clients[0]
            .submit(&note(&net.client, format!("after {k}")))
            .await
            .unwrap();
    }
    let leader = net.leader().await;
    let victim = (leader + 1) % 3;
    wait_until("the victim to apply the marker", 30, || {
        let mut c = clients[victim].clone();
        async move { c.tree_head().await.is_ok_and(|h| h.tree_size > r.index + 5) }
    })
    .await;
    net.members[victim].kill9();
    // Flip one byte of the entry wherever its bytes are in the file.
    let path = net.members[victim].data.join("ledger.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut flipped = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..]
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
    {
        bytes[at + pos + 7] ^= 0x01;
        at += pos + marker.len();
        flipped += 1;
    }
    assert!(flipped > 0, "the entry's bytes are not in the store");
    std::fs::write(&path, &bytes).unwrap();
    // On restart the member detects the damage and refuses to serve.
    let out = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(["node", "--config"])
        .arg(net.members[victim].data.join("node.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a damaged member started serving");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the ledger"), "{err}");
    // The others carry on, and none of them holds a cosignature of another root.
    let mut c = clients[leader].clone();
    c.submit(&note(&net.client, "still going".into()))
        .await
        .unwrap();
    for (i, m) in net.members.iter().enumerate() {
        if i == victim {
            continue;
        }
        let ev = evidence(&m.addr, &net.client).await.unwrap();
        assert_eq!(ev, "[]", "{}: {ev}", m.org);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_leaders_invalid_entry_is_refused_by_the_others_with_evidence() {
    // Member 0 starts alone and leads; it is built to skip signature checks.
    let net = Consortium::start_with(3, |i, _| {
        if i == 0 {
            "test_accept_invalid = true\n".into()
        } else {
            String::new()
        }
    })
    .await;
    let mut clients = net.clients().await;
    assert_eq!(net.leader().await, 0);
    let good = clients[0]
        .submit(&note(&net.client, "good".into()))
        .await
        .unwrap();
    let mut forged = note(&net.client, "forged".into());
    forged.signature[5] ^= 1;
    let bad = clients[0].submit(&forged).await.unwrap();
    assert_eq!(bad.index, good.index + 1, "the faulty leader applied it");
    // The others refuse it and record evidence; no quorum ever cosigns a
    // head that holds it, on any member.
    for m in &net.members[1..] {
        wait_until("evidence on the honest members", 30, || async {
            evidence(&m.addr, &net.client)
                .await
                .is_some_and(|ev| ev.contains("invalid-entry"))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in &mut clients[1..] {
        if let Ok(e) = c.entry(bad.index).await {
            assert_ne!(e, forged, "an honest member applied the forged entry");
        }
    }
    for c in &mut clients {
        let h = c.cosigned_head().await.unwrap();
        let size = h.checkpoint.map(|cp| cp.body.size).unwrap_or(0);
        assert!(
            size <= bad.index,
            "a head holding the forged entry was cosigned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_raft_messages_and_forged_cosignatures_are_refused() {
    let net = Consortium::start(2).await;
    let member = Identity::load(&net.members[1].identity).unwrap();
    let ch = yilian_identity::grpc::connect(&net.members[0].addr, &member)
        .await
        .unwrap();
    let mut peer = yilian_ledger::peer::pb::consortium_client::ConsortiumClient::new(ch);
    let mut c = client(&net.members[0].addr, &net.client).await;
    let before = c.tree_head().await.unwrap();
    for garbage in [vec![], vec![0xff; 7], b"not postcard at all".to_vec()] {
        let err = peer
            .append_entries(yilian_ledger::peer::pb::RaftMessage { payload: garbage })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("undecodable Raft message"),
            "{}",
            err.message()
        );
    }
    // A cosignature line under a member's name that the member did not make.
    let head = c.cosigned_head().await.unwrap();
    let cp = head.checkpoint.unwrap();
    let mut line = cp.cosignatures[0].clone();
    line.signature[9] ^= 1;
    let forged = yilian_ledger::checkpoint::Checkpoint {
        body: cp.body.clone(),
        cosignatures: vec![line],
    };
    let err = peer
        .cosign(yilian_ledger::peer::pb::CosignRequest {
            note: forged.to_note(),
            cosigned: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("does not verify"),
        "{}",
        err.message()
    );
    // Nothing changed.
    let after = c.tree_head().await.unwrap();
    assert_eq!(
        (after.tree_size, after.root_hash),
        (before.tree_size, before.root_hash)
    );
    let ev = peer
        .evidence(yilian_ledger::peer::pb::EvidenceRequest {})
        .await
        .unwrap()
        .into_inner()
        .evidence;
    assert_eq!(ev, "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_only_by_majority_and_the_rest_carry_on() {
    let net = Consortium::start(3).await;
    let mut c = client(&net.members[1].addr, &net.client).await;
    let out = yilian(&[
        "admin",
        "remove-member",
        "--data",
        &net.data(),
        "--via",
        &net.members[1].addr,
        "--org",
        "org-2",
        "--name",
        "node-2",
    ]);
    assert!(out.contains("1 of 3 members approved, 2 needed"), "{out}");
    assert_eq!(c.consortium().await.unwrap().members.len(), 3);
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let who = &net.members[1];
    let approved = yilian(&[
        "admin",
        "approve",
        "--identity",
        who.identity.to_str().unwrap(),
        "--via",
        &who.addr,
        &id,
    ]);
    assert!(approved.contains("has taken effect"), "{approved}");
    let cons = c.consortium().await.unwrap();
    assert_eq!(cons.members.len(), 2);
    assert!(!cons.members.iter().any(|m| m.org == "org-2"));
    // The two remaining members still commit and cosign (2 of 2).
    let r = c
        .submit(&note(&net.client, "after removal".into()))
        .await
        .unwrap();
    wait_until("a head cosigned by the two remaining members", 30, || {
        let mut c = c.clone();
        async move {
            c.cosigned_head().await.is_ok_and(|h| {
                h.cosigners.len() == 2
                    && h.checkpoint.is_some_and(|cp| {
                        cp.body.size > r.index && cp.verify(&h.cosigners, 2).is_ok()
                    })
            })
        }
    })
    .await;
}
