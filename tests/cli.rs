//! The `yilian` binary as a newcomer uses it: init a network, run a node,
//! admit through it, fetch proofs into files and verify them offline;
//! a tampered file is refused; the node exposes Prometheus metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use yilian_testkit::{NodeProcess, free_port};

fn yilian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(args)
        .output()
        .expect("run yilian")
}

fn ok(args: &[&str]) -> String {
    let out = yilian(args);
    assert!(
        out.status.success(),
        "yilian {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(port: u16, path: &str) -> String {
    yilian_testkit::http_get(([127, 0, 0, 1], port).into(), path).1
}

#[test]
fn a_newcomer_runs_a_network_and_verifies_proofs_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("net");
    let d = data.to_str().unwrap();
    let (grpc, metrics) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{grpc}");
    ok(&[
        "admin",
        "init-network",
        "--data",
        d,
        "--network",
        "clitest",
        "--listen",
        &listen,
    ]);
    // A second init on the same directory is refused, and changes nothing.
    let again = yilian(&["admin", "init-network", "--data", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a network"));

    let config = data.join("node.toml");
    let _node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &config)
        // Its own explorer port: node.toml's 7480 may be another test's.
        .arg("--explorer")
        .arg("127.0.0.1:0")
        .arg("--metrics")
        .arg(format!("127.0.0.1:{metrics}"))
        .started();
    wait_for(grpc);

    let out = ok(&[
        "admin",
        "admit",
        "--data",
        d,
        "--node",
        &listen,
        "--org",
        "acme-bank",
        "--role",
        "verifier",
        "--name",
        "alice",
    ]);
    assert!(out.contains("admitted acme-bank/alice (verifier)"), "{out}");
    let bad_role = yilian(&[
        "admin", "admit", "--data", d, "--org", "x", "--role", "admin", "--name", "y",
    ]);
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role `admin`"));

    let alice = data.join("identities/alice");
    let a = alice.to_str().unwrap();
    let head = tmp.path().join("head.json");
    let h = head.to_str().unwrap();
    let save_head = |out: &str| {
        ok(&[
            "ledger",
            "head",
            "--node",
            &listen,
            "--identity",
            a,
            "--out",
            out,
        ])
    };
    save_head(h);
    let note = |body: &str| {
        ok(&[
            "ledger",
            "note",
            "--node",
            &listen,
            "--identity",
            a,
            "--topic",
            "kyc",
            "--body",
            body,
        ])
    };
    let out = note("checked");
    assert!(out.contains("note recorded as entry 5"), "{out}");

    let proof = tmp.path().join("proof.json");
    let p = proof.to_str().unwrap();
    ok(&[
        "ledger",
        "prove",
        "--node",
        &listen,
        "--identity",
        a,
        "--index",
        "5",
        "--out",
        p,
    ]);
    let cons = tmp.path().join("cons.json");
    let c = cons.to_str().unwrap();
    ok(&[
        "ledger",
        "consistency",
        "--node",
        &listen,
        "--identity",
        a,
        "--old",
        h,
        "--out",
        c,
    ]);

    // Offline: no node needed.
    let out = ok(&["ledger", "verify", "--head", h, "--inclusion", p]);
    assert!(
        out.contains("OK: entry 5 (note) is in the log of size 6"),
        "{out}"
    );
    let out = ok(&["ledger", "verify", "--head", h, "--consistency", c]);
    assert!(
        out.contains("OK: the trusted log of size 5 (root "),
        "{out}"
    );
    assert!(
        out.contains(") is a prefix of the log of size 6 (root "),
        "{out}"
    );
    // Trusting the newer head, the same proof shows the older one is its prefix.
    let head6 = tmp.path().join("head6.json");
    let h6 = head6.to_str().unwrap();
    save_head(h6);
    let out = ok(&["ledger", "verify", "--head", h6, "--consistency", c]);
    assert!(
        out.contains(") is a prefix of the trusted log of size 6 (root "),
        "{out}"
    );
    // A valid proof that reaches neither end of what the verifier trusts
    // proves nothing about it: refused, saying what to fetch instead.
    note("again");
    let head7 = tmp.path().join("head7.json");
    let h7 = head7.to_str().unwrap();
    save_head(h7);
    let out = yilian(&["ledger", "verify", "--head", h7, "--consistency", c]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the proof runs from size 5 to size 6 and neither end is the trusted head of size 7"
        ),
        "{err}"
    );
    assert!(err.contains("yilian ledger consistency --old"), "{err}");

    // Tampering with the proof file is caught.
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    let path0 = bundle["proof"]["path"][0].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if path0.starts_with('0') { "1" } else { "0" },
        &path0[1..]
    );
    bundle["proof"]["path"][0] = serde_json::Value::String(flipped);
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let out = yilian(&[
        "ledger",
        "verify",
        "--head",
        h,
        "--inclusion",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("REFUSED"));
    // A corrupt file gets a clear error too.
    std::fs::write(&bad, b"{not json").unwrap();
    let out = yilian(&[
        "ledger",
        "verify",
        "--head",
        h,
        "--inclusion",
        bad.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a valid file of this kind"));

    // A 130 KB note is refused, naming the field once, and the log stays
    // at 7 entries (the metric below).
    let big = "x".repeat(130_000);
    let out = yilian(&[
        "ledger",
        "note",
        "--node",
        &listen,
        "--identity",
        a,
        "--topic",
        "kyc",
        "--body",
        &big,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("`note.body` is 130000 bytes").count(),
        1,
        "{err}"
    );
    assert!(err.contains("record its hash"), "{err}");

    let m = http_get(metrics, "/metrics");
    assert!(m.contains("yilian_ledger_appended_total"), "{m}");
    assert!(m.contains("yilian_ledger_size 7"), "{m}");

    // While the node runs, the local ledger file is in use: a clear error.
    let out = yilian(&[
        "admin", "admit", "--data", d, "--org", "x", "--role", "device", "--name", "z",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running node"));
    assert!(!Path::new(&data.join("identities/z")).exists());
}

/// An engineer's `yilian task` commands against a running node's gRPC
/// control plane: a task is submitted and shown, bad input is refused with
/// what to change, and a device identity may not use the control plane.
#[test]
fn an_engineer_submits_and_follows_a_task_through_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("net");
    let d = data.to_str().unwrap();
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    let fl = yilian_testkit::free_udp_addr().to_string();
    ok(&[
        "admin",
        "init-network",
        "--data",
        d,
        "--network",
        "fltest",
        "--listen",
        &listen,
    ]);
    let config = data.join("node.toml");
    let _node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &config)
        // Its own explorer port: node.toml's 7480 may be another test's.
        .arg("--explorer")
        .arg("127.0.0.1:0")
        .arg("--federated")
        .arg(&fl)
        // Its own metrics port: the default one is another test's.
        .arg("--metrics")
        .arg(format!("127.0.0.1:{}", free_port()))
        .started();
    wait_for(grpc);
    for (role, name) in [("engineer", "eng"), ("device", "phone")] {
        ok(&[
            "admin", "admit", "--data", d, "--node", &listen, "--org", "lab", "--role", role,
            "--name", name,
        ]);
    }
    let eng = data.join("identities/eng");
    let e = eng.to_str().unwrap();
    let work = tmp.path().join("task");
    std::fs::create_dir_all(&work).unwrap();
    let mut csv = (0..30)
        .map(|i| format!("x{i}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",y\n";
    for r in 0..20 {
        let row: Vec<String> = (0..30).map(|i| format!("{}", (r * i) % 7)).collect();
        csv += &format!("{},{}\n", row.join(","), r % 2);
    }
    std::fs::write(work.join("validation.csv"), csv).unwrap();
    let task = r#"id = "cli-task"
rounds = 2
agents_per_round = 2
min_agents = 2
local_epochs = 1
batch_size = 8
validation = "validation.csv"
reward_budget = 100
round_timeout_ms = 60000
optimizer = { sgd = { lr = 0.1 } }
[model]
input = [30]
layers = [{ linear = { out = 2 } }, "softmax"]
[schema]
features = 30
label_column = "y"
classes = 2
"#;
    let path = work.join("task.toml");
    std::fs::write(&path, task).unwrap();
    let p = path.to_str().unwrap();
    let task = |args: &[&str], identity: &str| {
        let mut all = vec!["task"];
        all.extend_from_slice(args);
        all.extend(["--node", listen.as_str(), "--identity", identity]);
        yilian(&all)
    };
    let stdout = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = stdout(task(&["submit", p], e));
    assert!(
        out.starts_with("task cli-task submitted (62 parameters, ledger entry "),
        "{out}"
    );
    let out = stdout(task(&["status", "cli-task"], e));
    assert!(
        out.contains("task cli-task: waiting for agents (0 of 2 rounds done)"),
        "{out}"
    );

    // The same id again, an unknown task, and a device: refused, each saying why.
    for (args, expected) in [
        (
            ["submit", p],
            "a task with id `cli-task` already exists; give the task file another `id`",
        ),
        (["status", "nope"], "task nope not found"),
    ] {
        let out = task(&args, e);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }
    let phone = data.join("identities/phone");
    let out = task(&["status", "cli-task"], phone.to_str().unwrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "role `device` may not read a task's status; use an engineer or member identity"
    ));
    // Nothing the refusals touched changed: the task is as it was.
    let out = stdout(task(&["status", "cli-task"], e));
    assert!(
        out.contains("waiting for agents (0 of 2 rounds done)"),
        "{out}"
    );
}

#[test]
fn a_holder_lets_a_bank_ask_one_question_from_the_command_line() {
    let metrics = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("net");
    let d = data.to_str().unwrap();
    let grpc = free_port();
    let listen = format!("127.0.0.1:{grpc}");
    ok(&[
        "admin",
        "init-network",
        "--data",
        d,
        "--network",
        "zktest",
        "--listen",
        &listen,
    ]);
    let config = data.join("node.toml");
    let _node = NodeProcess::new(env!("CARGO_BIN_EXE_yilian"), &config)
        // Its own explorer port: node.toml's 7480 may be another test's.
        .arg("--explorer")
        .arg("127.0.0.1:0")
        .arg("--insecure-dev-setup")
        .arg("--metrics")
        .arg(format!("127.0.0.1:{metrics}"))
        .started();
    wait_for(grpc);
    for (role, name) in [("data-holder", "holder"), ("verifier", "bank")] {
        ok(&[
            "admin", "admit", "--data", d, "--node", &listen, "--org", "o", "--role", role,
            "--name", name,
        ]);
    }
    let id = |n: &str| data.join("identities").join(n);
    let (holder, bank) = (id("holder"), id("bank"));
    let h = ["--node", &listen, "--identity", holder.to_str().unwrap()];
    let b = ["--node", &listen, "--identity", bank.to_str().unwrap()];
    let with = |cmd: &[&str], conn: &[&str]| ok(&[cmd, conn].concat());
    with(
        &["kms", "create-key"],
        &[&h[..], &["--zk", "customer-1"]].concat(),
    );
    with(&["kms", "create-key"], &[&h[..], &["records"]].concat());
    let revealed = with(
        &["kms", "zk-key"],
        &[&h[..], &["customer-1", "--reveal"]].concat(),
    );
    let v: serde_json::Value = serde_json::from_str(&revealed).unwrap();
    let work = tmp.path();
    let file = |n: &str| work.join(n).to_str().unwrap().to_owned();
    std::fs::write(work.join("zk.key"), v["elements"].as_str().unwrap()).unwrap();
    std::fs::write(
        work.join("customer.json"),
        r#"{"fields": [["id_number", {"identifier": "310101199001011234"}], ["income", {"integer": 120000}]]}"#,
    )
    .unwrap();
    std::fs::write(
        work.join("q.json"),
        r#"[{"op": "gte", "field": "income", "value": 100000}]"#,
    )
    .unwrap();
    ok(&[
        "zk",
        "register-record",
        "--record-id",
        "c1",
        "--record",
        &file("customer.json"),
        "--key-file",
        &file("zk.key"),
        "--nonce",
        "7",
        "--out",
        &file("c1.rec"),
    ]);
    let out = with(
        &["zk", "register"],
        &[
            &h[..],
            &[
                "--record",
                &file("c1.rec"),
                "--key-file",
                &file("zk.key"),
                "--wrap-key",
                "records",
            ],
        ]
        .concat(),
    );
    assert!(out.contains("registered c1"), "{out}");
    let (q, answer) = (file("q.json"), file("answer"));
    let ask = [&b[..], &["--record", "c1", "--query", &q, "--out", &answer]].concat();
    // Without a grant the bank is refused.
    let refused = yilian(&[&["zk", "ask", "--grant", "none"][..], &ask].concat());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"));
    let out = with(
        &["zk", "grant"],
        &[
            &h[..],
            &[
                "--record",
                "c1",
                "--verifier",
                bank.to_str().unwrap(),
                "--allow",
                &file("q.json"),
            ],
        ]
        .concat(),
    );
    let grant = out
        .lines()
        .find_map(|l| l.strip_prefix("grant "))
        .expect("a grant id")
        .to_owned();
    let out = with(&["zk", "ask", "--grant", &grant], &ask);
    assert!(out.contains("answer: true (proof verified"), "{out}");
    let out = ok(&[
        "zk",
        "verify",
        "--vk",
        &file("answer/verification_key.json"),
        "--proof",
        &file("answer/proof.json"),
        "--public",
        &file("answer/public.json"),
    ]);
    assert!(out.contains("the query is true"), "{out}");
    // One use by default: burnt after reading.
    let again = yilian(&[&["zk", "ask", "--grant", &grant][..], &ask].concat());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("PermissionDenied"));
    let out = with(
        &["zk", "revoke-grant"],
        &[&h[..], &["--grant", &grant]].concat(),
    );
    assert!(out.contains("after 1 uses"), "{out}");

    // A client that speaks no TLS at all is a failed handshake.
    let mut junk = TcpStream::connect(("127.0.0.1", grpc)).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let _ = junk.read(&mut [0u8; 64]);
    // What the operator's Prometheus sees of all this (docs/metrics.md).
    let mut m = String::new();
    for _ in 0..50 {
        m = http_get(metrics, "/metrics");
        if m.contains("yilian_raft_term") && m.contains("yilian_tls_handshake_failures_total") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for series in [
        "yilian_kms_operations_total{operation=\"create-key\",outcome=\"ok\"}",
        "yilian_kms_audit_seconds",
        "yilian_zk_proofs_total{outcome=\"answered\"} 1",
        "yilian_zk_prove_seconds",
        "yilian_zk_refusals_total{code=\"PermissionDenied\"}",
        "yilian_tls_handshake_failures_total",
        "yilian_raft_term",
        "yilian_raft_leader 1",
        "yilian_ledger_size",
    ] {
        assert!(m.contains(series), "no `{series}` in:\n{m}");
    }
}

/// Every series the code emits is documented in docs/metrics.md, and the
/// Grafana dashboard queries only documented series.
#[test]
fn every_metric_is_documented_and_the_dashboard_uses_only_those() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let documented = |name: &str| doc.contains(&format!("| `{name}` |"));
    let mut emitted = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", "node_modules", ".git", ".venv", "fuzz"].contains(&name.as_str()) {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for kind in ["counter!(", "gauge!(", "histogram!("] {
                    for part in text.split(kind).skip(1) {
                        let part = part.trim_start();
                        if let Some(rest) = part.strip_prefix("\"yilian_") {
                            let metric = format!("yilian_{}", rest.split('"').next().unwrap());
                            emitted.push((metric, path.clone()));
                        }
                    }
                }
            }
        }
    }
    assert!(emitted.len() > 20, "found only {emitted:?}");
    for (metric, path) in &emitted {
        assert!(
            documented(metric),
            "{metric} ({}) is not in docs/metrics.md",
            path.display()
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("yilian_") {
                    assert!(
                        documented(word),
                        "the dashboard's `{expr}` uses {word}, which docs/metrics.md lacks"
                    );
                }
            }
        }
    }
}
