//! Ledger benchmarks: durable append throughput (signed entries, verified,
//! group-committed) and inclusion/consistency proof cost at 10^3, 10^5 and
//! 10^6 entries. Baselines in the same run: one fsync per entry for
//! appends; the SHA-256 compressions a proof's path costs for verifying
//! it; the append of the same entries for reopening. Results also go to
//! `target/bench/ledger.jsonl`.
//!
//! `cargo bench --bench ledger` (add `-- quick` to stop at 10^5).

use std::time::Instant;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use rayon::prelude::*;
use yilian_ledger::merkle::{self, leaf_hash};
use yilian_ledger::{Ledger, Payload, Role, SignedTransaction, Transaction};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn setup(path: &std::path::Path) -> (Ledger, SigningKey) {
    let (authority, log, member) = (key(1), key(2), key(3));
    let ledger = Ledger::open(path, log).unwrap();
    let g = Payload::Genesis {
        network: "bench".into(),
        authority: authority.verifying_key().to_bytes(),
    };
    ledger
        .submit_blocking(Transaction::new(g).sign(&authority))
        .unwrap();
    let admit = Payload::Admit {
        org: "o".into(),
        role: Role::Member,
        name: "m".into(),
        public_key: member.verifying_key().to_bytes(),
        serial: vec![1],
        not_after_ms: u64::MAX,
    };
    ledger
        .submit_blocking(Transaction::new(admit).sign(&authority))
        .unwrap();
    (ledger, member)
}

fn notes(member: &SigningKey, n: usize) -> Vec<SignedTransaction> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            Transaction::new(Payload::Note {
                topic: "bench".into(),
                body: format!("entry {i:08}"),
            })
            .sign(member)
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = yilian_testkit::Report::start("ledger");

    // Baseline: each entry its own durable commit (submit, wait, next).
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, member) = setup(&tmp.path().join("b.redb"));
    let txs = notes(&member, 500);
    let t = Instant::now();
    for tx in txs {
        ledger.submit_blocking(tx).unwrap();
    }
    let baseline = 500.0 / t.elapsed().as_secs_f64();
    println!("baseline, one fsync per entry: {baseline:>10.0} entries/s");
    drop(ledger);

    let sizes: &[usize] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    for &n in sizes {
        let tmp = tempfile::tempdir().unwrap();
        let (ledger, member) = setup(&tmp.path().join("l.redb"));
        let txs = notes(&member, n);
        let bytes: usize = txs.iter().map(|t| t.encode().len()).sum();
        let t = Instant::now();
        rt.block_on(async {
            futures::stream::iter(txs)
                .map(|tx| {
                    let l = ledger.clone();
                    async move { l.submit(tx).await.unwrap() }
                })
                .buffer_unordered(32_768)
                .for_each(|_| async {})
                .await;
        });
        let secs = t.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        println!("{n} signed entries of {} B on average:", bytes / n);
        report.figure(
            &format!("durable append at {n} entries"),
            rate,
            "entries/s",
            "one fsync per entry",
            baseline,
        );

        let size = ledger.len();
        let head = ledger.tree_head();
        let samples = 20_000u64;
        let idx: Vec<u64> = (0..samples).map(|i| (i * 7_919_993) % size).collect();
        let leaves: Vec<_> = idx
            .iter()
            .map(|&i| leaf_hash(&ledger.entry_bytes(i).unwrap()))
            .collect();
        let t = Instant::now();
        let proofs: Vec<_> = idx
            .iter()
            .map(|&i| ledger.inclusion_proof(i, size).unwrap())
            .collect();
        let gen_us = t.elapsed().as_secs_f64() * 1e6 / samples as f64;
        let t = Instant::now();
        for (p, l) in proofs.iter().zip(&leaves) {
            merkle::verify_inclusion(l, p, &head.root_hash).unwrap();
        }
        let ver_us = t.elapsed().as_secs_f64() * 1e6 / samples as f64;
        // The floor of a verification: one SHA-256 of two child hashes per
        // step of the path, and one of the leaf.
        let steps = proofs[0].path.len() + 1;
        let t = Instant::now();
        let mut h = [0u8; 32];
        for _ in 0..samples as usize * steps {
            h = merkle::node_hash(&h, &h);
        }
        std::hint::black_box(h);
        let floor_us = t.elapsed().as_secs_f64() * 1e6 / samples as f64;
        let t = Instant::now();
        let _cons: Vec<_> = idx
            .iter()
            .map(|&i| ledger.consistency_proof(i.max(1), size).unwrap())
            .collect();
        let cgen_us = t.elapsed().as_secs_f64() * 1e6 / samples as f64;
        println!(
            "  proofs at {size:>9} entries: inclusion generate {gen_us:6.2} us, consistency generate {cgen_us:6.2} us"
        );
        report.figure(
            &format!("inclusion verify at {size} entries"),
            ver_us,
            "us",
            &format!("{steps} SHA-256 node hashes"),
            floor_us,
        );
        let t = Instant::now();
        drop(ledger);
        let reopened = Ledger::open(&tmp.path().join("l.redb"), key(2)).unwrap();
        assert_eq!(reopened.tree_head().root_hash, head.root_hash);
        report.figure(
            &format!("reopen (replay and root check) of {size} entries"),
            t.elapsed().as_secs_f64(),
            "s",
            "appending them",
            secs,
        );
    }
    report.finish();
}
