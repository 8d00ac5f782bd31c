//! What the people-facing parts cost, on one node in this process:
//!
//! - the explorer's pages (the front page's head and entries, one entry
//!   with its proof, an account's page) with 10^5 entries on the ledger,
//!   against the same pages at 10^3 entries: paging should keep them flat;
//! - a Python client's call (grpcio, the SDK's mutual TLS) against the Rust
//!   client's, the same RPC on the same node, one call at a time.
//!
//! `cargo bench --bench clients` (`-- quick`: 2·10^4 entries). Needs the
//! Python venv the node tests make (`clients/python/.venv`; made here if
//! missing).

use std::time::Instant;

use futures::StreamExt as _;
use yilian::network::{self, NetworkDir, Recorder};
use yilian::node::{self, NodeConfig};
use yilian_identity::Role;
use yilian_identity::ca::AdmissionRequest;
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds to fetch each of `paths`, one after another, as a
/// page does.
fn page_ms(addr: std::net::SocketAddr, paths: &[String], reps: usize) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for p in paths {
                    let (status, _) = yilian_testkit::http_get(addr, p);
                    assert_eq!(status, 200, "{p}");
                }
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

async fn fill(c: &LedgerClient, writer: &yilian_identity::Identity, n: usize, tag: &str) {
    let key = writer.signing_key().clone();
    let txs: Vec<_> = (0..n)
        .map(|i| {
            Transaction::new(Payload::Note {
                topic: "bench".into(),
                body: format!("{tag} {i}"),
            })
            .sign(&key)
        })
        .collect();
    let done = futures::stream::iter(txs)
        .map(|tx| {
            let mut c = c.clone();
            async move { c.submit(&tx).await.unwrap() }
        })
        .buffer_unordered(512)
        .count()
        .await;
    assert_eq!(done, n);
}

/// The SDK's median microseconds per GetTreeHead (one call at a time), as
/// a Python program measures them.
fn python_us(addr: &str, identity: &std::path::Path, calls: usize) -> f64 {
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let python = yilian_testkit::python_venv(&client);
    const SCRIPT: &str = r#"
import statistics, sys, time
import yilian
from yilian._pb import ledger_pb2, ledger_pb2_grpc
addr, ident, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with yilian.Identity(ident).channel(addr) as ch:
    stub = ledger_pb2_grpc.LedgerStub(ch)
    stub.GetTreeHead(ledger_pb2.GetTreeHeadRequest())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        stub.GetTreeHead(ledger_pb2.GetTreeHeadRequest())
        times.append((time.perf_counter() - t) * 1e6)
print(statistics.median(times))
"#;
    yilian_testkit::stdout_of(
        std::process::Command::new(python)
            .args(["-c", SCRIPT, addr, &identity.display().to_string()])
            .arg(calls.to_string())
            .current_dir(&client)
            .env("PYTHONPATH", &client),
    )
    .trim()
    .parse()
    .unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let big = if quick { 20_000 } else { 100_000 };
    let small = 1_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = yilian_testkit::Report::start("clients");
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NetworkDir::new(tmp.path());
        network::init_network(&dir, "bench", "127.0.0.1:0")
            .await
            .unwrap();
        {
            let ledger = dir.open_ledger().unwrap();
            let mut rec = Recorder::Local(&ledger);
            for (org, role, name) in [
                ("bank", Role::Verifier, "writer"),
                ("regulator", Role::Auditor, "auditor"),
            ] {
                network::admit(&dir, &AdmissionRequest::new(org, role, name), &mut rec)
                    .await
                    .unwrap();
            }
        }
        let cfg = NodeConfig {
            explorer: Some(yilian::explorer::ExplorerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
            }),
            ..NodeConfig::new(
                tmp.path(),
                "127.0.0.1:0".parse().unwrap(),
                dir.identity(network::NODE_IDENTITY),
            )
        };
        let node = node::start(&cfg).await.unwrap();
        let addr = node.addr.to_string();
        let writer = dir.load_identity("writer").unwrap();
        let account = hex::encode(writer.principal().public_key);
        let connect = |name: &str| {
            let id = dir.load_identity(name).unwrap();
            let addr = addr.clone();
            async move {
                LedgerClient::new(yilian_identity::grpc::connect(&addr, &id).await.unwrap())
            }
        };
        let writer_client = connect("writer").await;
        let explorer = node.explorer.as_ref().unwrap().addr;
        let pages = |size: u64| {
            vec![
                "/api/head".to_owned(),
                "/api/entries".to_owned(),
                format!("/api/entries/{}", size / 2),
                format!("/api/accounts/{account}"),
            ]
        };

        fill(&writer_client, &writer, small, "small").await;
        let mut auditor = connect("auditor").await;
        let size = auditor.tree_head().await.unwrap().tree_size;
        let at_small = page_ms(explorer, &pages(size), 300);
        println!("explorer pages at {size} entries: {at_small:.2} ms");
        fill(&writer_client, &writer, big - small, "big").await;
        let size = auditor.tree_head().await.unwrap().tree_size;
        let at_big = page_ms(explorer, &pages(size), 300);
        report.figure(
            &format!("explorer: head, entries, one entry, an account's page at {size} entries"),
            at_big,
            "ms",
            &format!("the same at {} entries", small),
            at_small,
        );

        // One call at a time, after a warm-up call, on one connection each.
        const CALLS: usize = 2_000;
        auditor.tree_head().await.unwrap();
        let mut times = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            auditor.tree_head().await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let rust = median(times);
        let python = python_us(&addr, &dir.identity("auditor"), CALLS);
        report.figure(
            "Python SDK GetTreeHead, one call at a time",
            python,
            "µs",
            "the Rust client's",
            rust,
        );
        node.stop().await.unwrap();
    });
    report.finish();
}
