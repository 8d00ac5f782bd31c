//! Consortium ledger benchmark, every figure beside its baseline from the
//! same run:
//!
//! - the machine: load average and the latency of one synced 4 KiB write;
//! - the ceiling: ed25519 batch verification of the same signed entries;
//! - single-member durable append (one node, through openraft), as a ratio
//!   of the ceiling, and its commit latency p50/p99 under 64 writers;
//! - three-member replicated durable append (three nodes in this process,
//!   peers over gRPC with mutual TLS on loopback), as a ratio of the single
//!   member, with commit latency p50/p99;
//! - leader failover: from stopping the leader to the first new commit.
//!
//! `cargo bench --bench consortium` (`-- quick` for fewer entries). Results
//! also go to `target/bench/consortium.jsonl`.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use rayon::prelude::*;
use yilian::network::{self, NetworkDir, Recorder};
use yilian::node::{self, ClusterConfig, NodeConfig, RunningNode};
use yilian_identity::Role;
use yilian_identity::ca::AdmissionRequest;
use yilian_ledger::{Ledger, Payload, SignedTransaction, Transaction};

fn notes(member: &SigningKey, n: usize, tag: &str) -> Vec<SignedTransaction> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            Transaction::new(Payload::Note {
                topic: "bench".into(),
                body: format!("{tag} {i:08}"),
            })
            .sign(member)
        })
        .collect()
}

/// Submits every transaction with `concurrency` in flight; entries/s.
async fn throughput(ledger: &Ledger, txs: Vec<SignedTransaction>, concurrency: usize) -> f64 {
    let n = txs.len();
    let t = Instant::now();
    futures::stream::iter(txs)
        .map(|tx| {
            let l = ledger.clone();
            async move { l.submit(tx).await.unwrap() }
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    n as f64 / t.elapsed().as_secs_f64()
}

/// Commit latency of each write with `writers` closed-loop writers: (p50, p99) in ms.
async fn latency(ledger: &Ledger, txs: Vec<SignedTransaction>, writers: usize) -> (f64, f64) {
    let mut lat: Vec<f64> = futures::stream::iter(txs)
        .map(|tx| {
            let l = ledger.clone();
            async move {
                let t = Instant::now();
                l.submit(tx).await.unwrap();
                t.elapsed().as_secs_f64() * 1e3
            }
        })
        .buffer_unordered(writers)
        .collect()
        .await;
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

struct Net {
    _tmp: tempfile::TempDir,
    nodes: Vec<RunningNode>,
    member: SigningKey,
}

/// A consortium of `n` member nodes in this process, each with its own
/// data directory and port, members added by majority approval.
async fn consortium(n: usize) -> Net {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let net = NetworkDir::new(root.join("org-0"));
    let first = yilian_testkit::free_addr();
    network::init_network(&net, "bench", &first).await.unwrap();
    {
        let ledger = net.open_ledger().unwrap();
        let mut rec = Recorder::Local(&ledger);
        for i in 1..n {
            let req = AdmissionRequest::new(format!("org-{i}"), Role::Member, format!("node-{i}"));
            network::admit(&net, &req, &mut rec).await.unwrap();
        }
    }
    let mut nodes = Vec::new();
    for i in 0..n {
        let listen = if i == 0 {
            first.clone()
        } else {
            yilian_testkit::free_addr()
        };
        let data = if i == 0 {
            net.root.clone()
        } else {
            root.join(format!("org-{i}"))
        };
        let identity = if i == 0 {
            net.identity(network::NODE_IDENTITY)
        } else {
            net.identity(&format!("node-{i}"))
        };
        let cfg = NodeConfig {
            cluster: ClusterConfig {
                advertise: Some(listen.clone()),
                peers: if i == 0 { vec![] } else { vec![first.clone()] },
                ..Default::default()
            },
            ..NodeConfig::new(data, listen.parse().unwrap(), identity)
        };
        nodes.push(node::start(&cfg).await.unwrap());
    }
    let node0 = net.load_identity(network::NODE_IDENTITY).unwrap();
    for i in 1..n {
        let id = net.load_identity(&format!("node-{i}")).unwrap();
        let change = yilian_ledger::tx::MembershipChange::Add {
            node: id.principal().public_key,
            addr: nodes[i].addr.to_string(),
        };
        let r = nodes[0]
            .ledger
            .submit(network::member_proposal(change, node0.signing_key()))
            .await
            .unwrap();
        for (j, node) in nodes.iter().enumerate().take(i / 2 + 1).skip(1) {
            let approver = net.load_identity(&format!("node-{j}")).unwrap();
            node.ledger
                .submit(network::member_approval(r.tx_id, approver.signing_key()))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while nodes[i].ledger.len() <= r.index || nodes[0].ledger.status().voters.len() != i + 1 {
            assert!(Instant::now() < deadline, "member {i} did not join");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let member = net
        .load_identity(network::OPERATOR_IDENTITY)
        .unwrap()
        .signing_key()
        .clone();
    Net {
        _tmp: tmp,
        nodes,
        member,
    }
}

fn leader(net: &Net) -> usize {
    net.nodes
        .iter()
        .position(|n| n.ledger.status().is_leader)
        .expect("a leader")
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 20_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = yilian_testkit::Report::start("consortium");
    rt.block_on(async {
        let single = consortium(1).await;
        // The ceiling: batch verification of the same kind of entries.
        let sample = notes(&single.member, n, "ceiling");
        let refs: Vec<&SignedTransaction> = sample.iter().collect();
        let t = Instant::now();
        let ok = SignedTransaction::verify_signatures(&refs);
        let ceiling = n as f64 / t.elapsed().as_secs_f64();
        assert!(ok.iter().all(|v| v.is_ok()));
        println!("ceiling: ed25519 batch verification {ceiling:>10.0} entries/s");

        let l = single.nodes[0].ledger.clone();
        let one = throughput(&l, notes(&single.member, n, "single"), 32_768).await;
        report.figure(
            "single member durable append",
            one,
            "entries/s",
            "ed25519 batch verification",
            ceiling,
        );
        let (p50_1, p99_1) = latency(&l, notes(&single.member, 5_000, "lat1"), 64).await;
        println!("  commit latency, 64 writers: p50 {p50_1:.2} ms, p99 {p99_1:.2} ms");
        drop(l);
        for node in single.nodes {
            node.stop().await.unwrap();
        }

        let mut three = consortium(3).await;
        let lead = leader(&three);
        let l = three.nodes[lead].ledger.clone();
        let rep = throughput(&l, notes(&three.member, n, "three"), 32_768).await;
        report.figure(
            "three members, replicated durable append",
            rep,
            "entries/s",
            "single member",
            one,
        );
        let (p50_3, p99_3) = latency(&l, notes(&three.member, 5_000, "lat3"), 64).await;
        report.figure(
            "three members, p50 commit latency",
            p50_3,
            "ms",
            "single member",
            p50_1,
        );
        report.figure(
            "three members, p99 commit latency",
            p99_3,
            "ms",
            "single member",
            p99_1,
        );
        drop(l);

        // Failover: stop the leader, time the first commit through a survivor.
        let survivor = three.nodes[(lead + 1) % 3].ledger.clone();
        let stopped = three.nodes.remove(lead);
        let t = Instant::now();
        stopped.stop().await.unwrap();
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let tx = notes(&three.member, 1, &format!("failover {attempt}")).remove(0);
            if survivor.submit(tx).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("leader failover: stop to first new commit, {attempt} attempts");
        report.figure(
            "leader failover",
            t.elapsed().as_secs_f64() * 1e3,
            "ms",
            "the election timeout's upper bound",
            1200.0,
        );
        drop(survivor);
        for node in three.nodes {
            node.stop().await.unwrap();
        }
    });
    report.finish();
}
