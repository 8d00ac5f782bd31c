//! The node over real gRPC and mutual TLS on loopback: who is let in, and
//! what bad input gets (a precise status, and no change to the log).

use std::time::{Duration, SystemTime};

use tonic::Code;
use yilian::network::{self, NetworkDir, Recorder};
use yilian::node::{self, NodeConfig, RunningNode};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Role};
use yilian_ledger::service::{LedgerClient, pb};
use yilian_ledger::{Payload, Transaction};

struct Net {
    _tmp: tempfile::TempDir,
    dir: NetworkDir,
    node: RunningNode,
    addr: String,
}

async fn network(extra: &[(&str, Role, &str)]) -> Net {
    network_with(extra, |_| {}).await
}

async fn network_with(extra: &[(&str, Role, &str)], adjust: impl FnOnce(&mut NodeConfig)) -> Net {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetworkDir::new(tmp.path());
    network::init_network(&dir, "test", "127.0.0.1:0")
        .await
        .unwrap();
    {
        let ledger = dir.open_ledger().unwrap();
        let mut rec = Recorder::Local(&ledger);
        for (org, role, name) in extra {
            network::admit(&dir, &AdmissionRequest::new(*org, *role, *name), &mut rec)
                .await
                .unwrap();
        }
    }
    let mut cfg = NodeConfig {
        explorer: Some(yilian::explorer::ExplorerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
        ..NodeConfig::new(
            tmp.path(),
            "127.0.0.1:0".parse().unwrap(),
            dir.identity(network::NODE_IDENTITY),
        )
    };
    adjust(&mut cfg);
    let node = node::start(&cfg).await.unwrap();
    let addr = node.addr.to_string();
    Net {
        _tmp: tmp,
        dir,
        node,
        addr,
    }
}

async fn client(net: &Net, name: &str) -> (LedgerClient, Identity) {
    let id = net.dir.load_identity(name).unwrap();
    let ch = yilian_identity::grpc::connect(&net.addr, &id)
        .await
        .unwrap();
    (LedgerClient::new(ch), id)
}

async fn refusal(addr: &str, id: &Identity) -> String {
    match yilian_identity::grpc::connect(addr, id).await {
        Err(e) => e.to_string(),
        Ok(ch) => {
            let err = LedgerClient::new(ch)
                .tree_head()
                .await
                .expect_err("must be refused");
            format!("{err:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_clients_are_served_and_others_refused_at_the_handshake() {
    let net = network(&[
        ("bank", Role::Verifier, "alice"),
        ("bank", Role::Device, "stolen"),
    ])
    .await;
    let (mut alice, _) = client(&net, "alice").await;
    let size = alice.tree_head().await.unwrap().tree_size;

    // A certificate from another authority.
    let rogue = Authority::create("rogue").unwrap();
    let rdir = net.dir.root.join("rogue");
    rogue
        .admit(&AdmissionRequest::new("x", Role::Member, "eve"))
        .unwrap()
        .save(&rdir)
        .unwrap();
    std::fs::copy(net.dir.authority().join("ca.pem"), rdir.join("ca.pem")).unwrap();
    let eve = Identity::load(&rdir).unwrap();
    let msg = refusal(&net.addr, &eve).await;
    assert!(msg.contains("UnknownCA"), "{msg}");

    // An expired certificate from the right authority.
    let ca = net.dir.load_authority().unwrap();
    let mut req = AdmissionRequest::new("bank", Role::Verifier, "late");
    req.not_before = SystemTime::now() - Duration::from_secs(7200);
    req.not_after = SystemTime::now() - Duration::from_secs(3600);
    let late = ca.admit(&req).unwrap();
    let msg = refusal(&net.addr, &late).await;
    assert!(msg.contains("CertificateExpired"), "{msg}");

    // A certificate the authority never issued: right subject, self-signed.
    let forger = Authority::create("test").unwrap();
    let forged = forger
        .admit(&AdmissionRequest::new("bank", Role::Verifier, "alice"))
        .unwrap();
    let fdir = net.dir.root.join("forged");
    forged.save(&fdir).unwrap();
    std::fs::copy(net.dir.authority().join("ca.pem"), fdir.join("ca.pem")).unwrap();
    let msg = refusal(&net.addr, &Identity::load(&fdir).unwrap()).await;
    assert!(msg.contains("refused by the node"), "{msg}");

    // Revoked while connected: the next connection is refused.
    let (mut stolen, stolen_id) = client(&net, "stolen").await;
    stolen.tree_head().await.unwrap();
    let (op, _) = client(&net, network::OPERATOR_IDENTITY).await;
    network::revoke(&net.dir, "stolen", "lost", &mut Recorder::Node(op))
        .await
        .unwrap();
    let msg = refusal(&net.addr, &stolen_id).await;
    assert!(msg.contains("CertificateRevoked"), "{msg}");
    // The connection it already had is cut too: the node closes it on the
    // revocation, and the channel's reconnect is refused at the handshake.
    let cut = stolen.tree_head().await;
    assert!(
        cut.is_err(),
        "a revoked identity's live connection still served: {cut:?}"
    );
    // And its signature no longer writes to the ledger, even relayed by someone else.
    let note = Transaction::new(Payload::Note {
        topic: "t".into(),
        body: "b".into(),
    })
    .sign(stolen_id.signing_key());
    let err = alice.submit(&note).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"));

    // None of the refusals wrote anything but the revocation.
    assert_eq!(alice.tree_head().await.unwrap().tree_size, size + 1);
    net.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    let net = network(&[
        ("bank", Role::Verifier, "alice"),
        ("ops", Role::Member, "bob"),
    ])
    .await;
    let (mut alice, alice_id) = client(&net, "alice").await;
    let before = alice.tree_head().await.unwrap();

    // Malformed bytes.
    let err = alice
        .raw()
        .submit(pb::SubmitRequest {
            transaction: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed"));

    // Bad signature.
    let mut tx = Transaction::new(Payload::Note {
        topic: "a".into(),
        body: "b".into(),
    })
    .sign(alice_id.signing_key());
    tx.signature[5] ^= 0x10;
    let err = alice.submit(&tx).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unauthenticated, "bad signature")
    );

    // Role not allowed: a verifier cannot reward.
    let reward = Transaction::new(Payload::Reward {
        task_id: "t".into(),
        round: 1,
        account: alice_id.principal().public_key,
        amount: 1,
    })
    .sign(alice_id.signing_key());
    let err = alice.submit(&reward).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("role `verifier` may not write `reward`"),
        "{}",
        err.message()
    );

    // Not the authority.
    let admit = Transaction::new(Payload::Admit {
        org: "x".into(),
        role: Role::Member,
        name: "x".into(),
        public_key: [7; 32],
        serial: vec![1],
        not_after_ms: u64::MAX,
    })
    .sign(alice_id.signing_key());
    assert_eq!(
        alice.submit(&admit).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Overdraft.
    let (_, bob) = client(&net, "bob").await;
    let t = Transaction::new(Payload::Transfer {
        to: bob.principal().public_key,
        amount: 5,
    })
    .sign(alice_id.signing_key());
    let err = alice.submit(&t).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Unknown entry and proofs beyond the log.
    let err = alice.entry(10_000).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = alice
        .raw()
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            index: 10_000,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = alice
        .raw()
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            old_size: 9_999,
            new_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = alice
        .raw()
        .get_balance(pb::GetBalanceRequest {
            account: vec![1; 5],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let after = alice.tree_head().await.unwrap();
    assert_eq!(
        (after.tree_size, after.root_hash),
        (before.tree_size, before.root_hash)
    );
    net.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_stream_replays_the_backlog_then_follows_new_entries() {
    let net = network(&[("ops", Role::Member, "bob")]).await;
    let (mut bob, bob_id) = client(&net, "bob").await;
    let size = bob.tree_head().await.unwrap().tree_size;
    let mut stream = bob
        .raw()
        .stream_entries(pb::StreamEntriesRequest { from_index: 0 })
        .await
        .unwrap()
        .into_inner();
    for i in 0..size {
        assert_eq!(stream.message().await.unwrap().unwrap().index, i);
    }
    let (mut writer, _) = client(&net, "bob").await;
    for i in 0..3 {
        let note = Transaction::new(Payload::Note {
            topic: "live".into(),
            body: i.to_string(),
        })
        .sign(bob_id.signing_key());
        writer.submit(&note).await.unwrap();
        let e = stream.message().await.unwrap().unwrap();
        assert_eq!(e.index, size + i);
        let tx = yilian_ledger::SignedTransaction::decode(&e.transaction).unwrap();
        assert_eq!(tx, note);
    }
    net.node.stop().await.unwrap();
}

#[test]
fn node_config_layers_file_then_environment_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("node.toml");
    std::fs::write(&file, "data_dir = \"/data\"\nlisten = \"127.0.0.1:1000\"\nmetrics = \"127.0.0.1:2000\"\nidentity = \"/id\"\n").unwrap();
    let over = node::NodeOverrides {
        listen: Some("127.0.0.1:3000".parse().unwrap()),
        ..Default::default()
    };
    let cfg = NodeConfig::load(Some(&file), &over).unwrap();
    assert_eq!(cfg.listen.port(), 3000);
    assert_eq!(cfg.metrics.unwrap().port(), 2000);
    assert_eq!(cfg.data_dir, std::path::PathBuf::from("/data"));
    assert_eq!(cfg.connections, Default::default());
    std::fs::write(
        &file,
        "data_dir = \"/data\"\n[connections]\nper_identity = 8\n",
    )
    .unwrap();
    let cfg = NodeConfig::load(Some(&file), &Default::default()).unwrap();
    assert_eq!(cfg.connections.per_identity, 8);
    assert_eq!(cfg.connections.total, 8192);
    std::fs::write(
        &file,
        "data_dir = \"/data\"\n[connections]\nper_identty = 8\n",
    )
    .unwrap();
    let err = NodeConfig::load(Some(&file), &Default::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown field `per_identty`"),
        "{err:#}"
    );
    std::fs::write(&file, "data_dir = \"/data\"\nlisen = \"typo\"\n").unwrap();
    let err = NodeConfig::load(Some(&file), &Default::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown field `lisen`"),
        "{err:#}"
    );
}

/// What an integration team's own stack sees: the identity files as written
/// load into OpenSSL and into gRPC's C core (grpcio) unchanged, the node's
/// services are listed through reflection, and the health check says serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_stacks_connect_with_the_identity_files_as_written() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };

    let net = network(&[("bank", Role::Verifier, "alice")]).await;
    let dir = net.dir.identity("alice");
    let alice = net.dir.load_identity("alice").unwrap();
    let ch = yilian_identity::grpc::connect(&net.addr, &alice)
        .await
        .unwrap();

    // The standard health service, overall and per service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "yilian.ledger.v1.Ledger", "yilian.kms.v1.Kms"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "`{service}`");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Reflection lists every service, as `grpcurl list` would ask.
    let mut reflection = ServerReflectionClient::new(ch);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let mut listed: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "yilian.consortium.v1.Consortium",
        "yilian.kms.v1.Kms",
        "yilian.ledger.v1.Ledger",
        "yilian.zk.v1.Zk",
    ];
    for name in expected {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
    // This node coordinates no learning, so it does not offer the control plane.
    assert!(
        !listed.iter().any(|l| l == "yilian.federated.v1.Federated"),
        "{listed:?}"
    );

    // OpenSSL 3.0 reads both keys as plain PKCS#8 and completes the mutual
    // TLS 1.3 handshake with the identity's files.
    for key in ["key.pem", "ledger-key.pem"] {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(dir.join(key))
            .output()
            .expect("openssl is on the machine");
        assert!(
            out.status.success(),
            "openssl pkey {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = net.addr.clone();
    let dir2 = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(["s_client", "-tls1_3", "-alpn", "h2", "-verify_return_error"])
            .args(["-connect", &addr, "-servername", "localhost"])
            .arg("-cert")
            .arg(dir2.join("cert.pem"))
            .arg("-key")
            .arg(dir2.join("key.pem"))
            .arg("-CAfile")
            .arg(dir2.join("ca.pem"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is on the machine")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for seen in ["Verify return code: 0 (ok)", "TLSv1.3", "ALPN protocol: h2"] {
        assert!(text.contains(seen), "`{seen}` not in:\n{text}");
    }

    // gRPC's C core, through grpcio from PyPI: mutual TLS, health,
    // reflection (v1alpha, the version grpcio-reflection asks for) and a
    // Yilian call.
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let python = tokio::task::spawn_blocking({
        let client = client.clone();
        move || yilian_testkit::python_venv(&client)
    })
    .await
    .unwrap();
    let addr = net.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(client.join("interop/connect.py"))
            .arg(&addr)
            .arg(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "grpcio could not connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["health"], "SERVING", "{seen}");
    assert_eq!(seen["ledger_health"], "SERVING", "{seen}");
    for name in expected.iter().filter(|n| !n.contains("reflection.v1.")) {
        assert!(
            seen["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == name),
            "{name} not in {seen}"
        );
    }
    assert!(seen["tree_head_bytes"].as_u64().unwrap() > 0, "{seen}");
    net.node.stop().await.unwrap();
}

/// The Python SDK (`clients/python`, stubs generated from `proto/` by
/// grpcio-tools) against a real node: its pytest suite, including the
/// tests that need the node, which must run rather than skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_against_a_real_node() {
    let net = network_with(
        &[
            ("bank", Role::DataHolder, "holder"),
            ("regulator", Role::Auditor, "auditor"),
            ("lab", Role::Engineer, "eng"),
            ("people", Role::Device, "py-dev-0"),
            ("people", Role::Device, "py-dev-1"),
            ("bank", Role::Verifier, "bank"),
        ],
        |cfg| {
            cfg.federated = Some(yilian_testkit::free_udp_addr());
            // A single-party setup is enough to test the bank's checks.
            cfg.insecure_dev_setup = true;
        },
    )
    .await;
    let (record, grant) = record_granted_to_the_bank(&net).await;
    // The engineer's tests submit a digits task; two devices wait for it.
    let data = net.dir.root.join("py-fl");
    std::fs::create_dir_all(&data).unwrap();
    let digits = yilian_models::Dataset::digits(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz"),
    )
    .unwrap();
    let (rest, test) = digits.split(0.2, 5);
    let (train, validation) = rest.split(0.15, 6);
    validation
        .write_csv(&data.join("validation.csv"), "y")
        .unwrap();
    test.write_csv(&data.join("test.csv"), "y").unwrap();
    let quic = net.node.federated.unwrap();
    let agents: Vec<_> = train
        .partition_iid(2, 7)
        .into_iter()
        .enumerate()
        .map(|(i, shard)| {
            let id = net.dir.load_identity(&format!("py-dev-{i}")).unwrap();
            tokio::spawn(async move {
                let cfg = yilian_federated::agent::AgentConfig {
                    node: quic,
                    server_name: "localhost".into(),
                    data: shard,
                    label_column: "y".into(),
                    policy: Default::default(),
                    single_task: true,
                    earlier_today: Default::default(),
                };
                yilian_federated::agent::run(&id, cfg, |_| {}).await
            })
        })
        .collect();
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let identities = net.dir.identity("holder").parent().unwrap().to_owned();
    let addr = net.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        let python = yilian_testkit::python_venv(&client);
        std::process::Command::new(python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                "tests",
            ])
            .current_dir(&client)
            .env("YILIAN_NODE", &addr)
            .env("YILIAN_IDENTITIES", &identities)
            .env("YILIAN_FL_DATA", &data)
            .env("YILIAN_ZK_RECORD", &record)
            .env("YILIAN_ZK_GRANT", &grant[0])
            .env("YILIAN_ZK_EXAMPLE_GRANT", &grant[1])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("skipped"), "a Python test skipped:\n{text}");
    // Each device stayed to the end of the task the Python engineer submitted.
    for a in agents {
        a.await.unwrap().unwrap();
    }
    net.node.stop().await.unwrap();
}

/// The holder's side of a ZK question, as `docs/bank.md` has it done with
/// the CLI: a customer record encrypted, anchored and registered, and a
/// one-use grant for the verifier `bank` to ask `income >= 100000`, and
/// another for the bank's example.
async fn record_granted_to_the_bank(net: &Net) -> (String, [String; 2]) {
    let work = net.dir.root.join("py-zk");
    std::fs::create_dir_all(&work).unwrap();
    let ids = net.dir.identity("holder").parent().unwrap().to_owned();
    let addr = net.addr.clone();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            yilian_testkit::stdout_of(
                std::process::Command::new(env!("CARGO_BIN_EXE_yilian"))
                    .args(args)
                    .current_dir(&work)
                    .env("YILIAN_NODE", &addr)
                    .env("YILIAN_IDENTITY", ids.join("holder")),
            )
        };
        run(&["kms", "create-key", "--zk", "py-customer"]);
        run(&["kms", "create-key", "py-records"]);
        let issued: serde_json::Value =
            serde_json::from_str(&run(&["kms", "zk-key", "py-customer", "--reveal"])).unwrap();
        std::fs::write(work.join("zk.key"), issued["elements"].as_str().unwrap()).unwrap();
        std::fs::write(
            work.join("customer.json"),
            r#"{"fields": [["id_number", {"identifier": "F-0001"}], ["income", {"integer": 120000}]]}"#,
        )
        .unwrap();
        std::fs::write(
            work.join("q.json"),
            r#"[{"op": "gte", "field": "income", "value": 100000}]"#,
        )
        .unwrap();
        run(&[
            "zk", "register-record", "--record-id", "py-c1", "--record", "customer.json",
            "--key-file", "zk.key", "--nonce", "7", "--out", "c1.rec",
        ]);
        run(&[
            "zk", "register", "--record", "c1.rec", "--key-file", "zk.key", "--wrap-key",
            "py-records",
        ]);
        let bank = ids.join("bank").display().to_string();
        let grant = || {
            let granted = run(&[
                "zk", "grant", "--record", "py-c1", "--verifier", &bank, "--allow", "q.json",
            ]);
            granted
                .lines()
                .find_map(|l| l.strip_prefix("grant "))
                .unwrap_or_else(|| panic!("no grant id in {granted}"))
                .to_owned()
        };
        ("py-c1".to_owned(), [grant(), grant()])
    })
    .await
    .unwrap()
}

/// [`yilian_testkit::http_get`], off the runtime's threads.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || yilian_testkit::http_get(addr, &path))
        .await
        .unwrap()
}

/// The explorer in a real headless chromium (Debian's, driven by
/// playwright-core): the entries page lists the entries, an entry's
/// inclusion proof verifies in the page and an altered one shows as failed,
/// and a key owner's account lists its KMS audit entries. Screenshots are
/// left in `target/explorer-screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_works_in_a_real_browser() {
    let net = network(&[
        ("bank", Role::DataHolder, "holder"),
        ("people", Role::Device, "phone-a"),
        ("people", Role::Device, "phone-b"),
    ])
    .await;
    let holder = net.dir.load_identity("holder").unwrap();
    let mut kms = yilian_kms::client::Client::connect(&net.addr, &holder)
        .await
        .unwrap();
    kms.create_key("vault", false, false).await.unwrap();
    kms.generate_data_key("vault", b"order-42", None)
        .await
        .unwrap();
    let (mut ledger, _) = client(&net, "holder").await;
    for i in 0..30 {
        let note = Transaction::new(Payload::Note {
            topic: "kyc".into(),
            body: format!("checked customer {i}"),
        })
        .sign(holder.signing_key());
        ledger.submit(&note).await.unwrap();
    }
    // A federated task's ledger trail, as a coordinating member writes it.
    let member = net.dir.load_identity(network::NODE_IDENTITY).unwrap();
    let phones =
        ["phone-a", "phone-b"].map(|p| net.dir.load_identity(p).unwrap().principal().public_key);
    let mut trail = vec![Payload::TaskSubmitted {
        task_id: "digits".into(),
        spec_hash: [3; 32],
        reward_budget: 600,
    }];
    for round in 1..=3u32 {
        trail.push(Payload::PrivacySpent {
            task_id: "digits".into(),
            round,
            epsilon: 0.4 * f64::from(round),
            delta: 1e-5,
        });
        for (k, agent) in phones.iter().enumerate() {
            trail.push(Payload::Contribution {
                task_id: "digits".into(),
                round,
                agent: *agent,
                score: 0.1 * (k as f64 + 1.0),
            });
            trail.push(Payload::Reward {
                task_id: "digits".into(),
                round,
                account: *agent,
                amount: 100 * (k as u64 + 1),
            });
        }
    }
    for payload in trail {
        ledger
            .submit(&Transaction::new(payload).sign(member.signing_key()))
            .await
            .unwrap();
    }
    let size = ledger.tree_head().await.unwrap().tree_size;
    let explorer = net.node.explorer.as_ref().unwrap();

    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/interop");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "the explorer test needs Debian's chromium: apt-get install chromium (.ci/run does)"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("explorer-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let url = explorer.url();
    let account = hex::encode(holder.principal().public_key);
    // An entry in the middle, so its proof has hashes on both sides.
    let index = (size / 2).to_string();
    let out = tokio::task::spawn_blocking({
        let shots = shots.clone();
        move || {
            std::process::Command::new("node")
                .arg(tools.join("explorer.mjs"))
                .args([
                    &url,
                    shots.to_str().unwrap(),
                    &index,
                    &account,
                    "vault",
                    "digits",
                ])
                .current_dir(&tools)
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed (is tools/interop installed? npm ci --prefix tools/interop):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<u64> = serde_json::from_value(seen["listed"].clone()).unwrap();
    let newest: Vec<u64> = (size.saturating_sub(25)..size).rev().collect();
    assert_eq!(listed, newest, "{seen}");
    assert!(
        seen["head"]
            .as_str()
            .unwrap()
            .contains(&format!("{size} entries")),
        "{seen}"
    );
    assert_eq!(seen["head_signature"], "ok", "{seen}");
    assert_eq!(seen["proof"], "ok", "{seen}");
    assert!(seen["decoded"].as_str().unwrap().contains("Note"), "{seen}");
    assert_eq!(seen["tampered"], "failed", "{seen}");
    assert!(
        seen["tampered_text"]
            .as_str()
            .unwrap()
            .contains("does not lead to the signed root"),
        "{seen}"
    );
    let kinds: Vec<String> = serde_json::from_value(seen["account_kinds"].clone()).unwrap();
    assert!(
        kinds.len() >= 2 && kinds.iter().all(|k| k == "key-audit"),
        "{seen}"
    );
    assert!(
        seen["bad_search"].as_str().unwrap().contains("below 2^64"),
        "{seen}"
    );
    let ops: Vec<String> = serde_json::from_value(seen["key_operations"].clone()).unwrap();
    assert_eq!(ops.len(), kinds.len(), "{seen}");
    assert!(ops.iter().any(|o| o.contains("create")), "{seen}");
    assert!(
        seen["curve_pixels"].as_u64().unwrap() > 50,
        "no epsilon curve drawn: {seen}"
    );
    let agents: Vec<Vec<String>> = serde_json::from_value(seen["task_agents"].clone()).unwrap();
    assert_eq!(agents.len(), 2, "{seen}");
    // phone-b: 3 rounds, contributions 0.2 each, rewards 200 each.
    assert!(
        agents
            .iter()
            .any(|a| a[1] == "3" && a[2] == "0.6000" && a[3] == "600"),
        "{seen}"
    );
    assert_eq!(seen["page_errors"], serde_json::json!([]), "{seen}");
    for shot in [
        "entries.png",
        "entry.png",
        "tampered.png",
        "account.png",
        "key.png",
        "task.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
    net.node.stop().await.unwrap();
}

/// Malformed explorer parameters answer 400 or 404 with a reason, never a
/// 500, and reading changes nothing on the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explorer_parameters_that_are_wrong_get_400_or_404() {
    let net = network(&[("bank", Role::Verifier, "alice")]).await;
    let addr = net.node.explorer.as_ref().unwrap().addr;
    let before = net.node.ledger.tree_head();
    let cases: &[(&str, u16, &str)] = &[
        (
            "/api/entries/18446744073709551616",
            400,
            "parameter `index`",
        ),
        ("/api/entries/-1", 400, "parameter `index`"),
        ("/api/entries/abc", 400, "parameter `index`"),
        ("/api/entries/999999999", 404, "no entry 999999999"),
        ("/api/entries?limit=0", 400, "parameter `limit`"),
        ("/api/entries?limit=101", 400, "parameter `limit`"),
        ("/api/entries?before=x", 400, "parameter `before`"),
        ("/api/accounts/zz", 400, "parameter `account`"),
        ("/api/accounts/00", 400, "parameter `account`"),
        (
            &format!("/api/accounts/{}", "00".repeat(32)),
            404,
            "no account",
        ),
        ("/api/search?q=", 400, "parameter `q`"),
        (
            &format!("/api/search?q={}", "a".repeat(300)),
            400,
            "parameter `q`",
        ),
        ("/api/search?q=99999999999999999999999", 400, "below 2^64"),
        ("/api/search?q=no-such-record", 404, "nothing on the ledger"),
        ("/no/such/page", 404, "no such page"),
        ("/api/tasks/no-such-task", 404, "no task `no-such-task`"),
        (
            &format!("/api/tasks/{}", "t".repeat(300)),
            400,
            "parameter `task`",
        ),
        ("/api/keys/zz/vault", 400, "parameter `owner`"),
        (
            &format!("/api/keys/{}/vault", "00".repeat(32)),
            404,
            "no audited operation",
        ),
        ("/api/zk?limit=1000", 400, "parameter `limit`"),
        ("/api/zk?from=-3", 400, "parameter `from`"),
    ];
    for (path, status, reason) in cases {
        let (got, body) = http_get(addr, path).await;
        assert_eq!(got, *status, "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
    // What works still works, and nothing was written.
    let (ok, body) = http_get(addr, "/api/entries?limit=1").await;
    assert_eq!(ok, 200, "{body}");
    let (ok, body) = http_get(addr, "/").await;
    assert!(ok == 200 && body.contains("Yilian explorer"), "{body}");
    assert_eq!(net.node.ledger.tree_head(), before);
    net.node.stop().await.unwrap();
}

/// A node started with its KMS sealed reports the KMS as not serving (and
/// the rest as serving) until operators unseal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_kms_is_reported_not_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let net = network_with(&[("bank", Role::Verifier, "alice")], |cfg| {
        cfg.kms_sealed = true
    })
    .await;
    let alice = net.dir.load_identity("alice").unwrap();
    let ch = yilian_identity::grpc::connect(&net.addr, &alice)
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let status = |service: &str| {
        let mut h = health.clone();
        let service = service.to_owned();
        async move {
            h.check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    // Set before the node serves: there is no moment it says otherwise.
    let kms = status("yilian.kms.v1.Kms").await;
    assert_eq!(kms, ServingStatus::NotServing as i32);
    assert_eq!(
        status("yilian.ledger.v1.Ledger").await,
        ServingStatus::Serving as i32
    );
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    net.node.stop().await.unwrap();
}
