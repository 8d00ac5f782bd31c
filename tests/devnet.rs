//! The README's first command, end to end: `yilian devnet` must run every
//! capability's act and exit 0, and what it prints must show each result.

use std::process::Command;

#[test]
fn devnet_runs_every_act_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yilian"))
        .args(["devnet", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run yilian devnet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "devnet failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "inclusion: entry",
        "verified offline",
        "received fatal alert: UnknownCA",
        "received fatal alert: CertificateRevoked",
        "is exhausted: 1 of 1 uses spent",
        "decrypted with plain AES-GCM",
        "each inclusion proof verified",
        "ceremony: platform-co contributed to phase 2",
        "ceremony: phase 1 finished",
        "the node verified the members' ceremony transcript, found its 6 contributions anchored",
        "not on the sanctions list (1024 entries): true (proof verified offline)",
        "income >= 150000: false (proof verified offline)",
        "income >= 150000 or credit_score >= 700: true (proof verified offline)",
        "savings >= loan (two fields of the record): true (proof verified offline)",
        "its key sealed under",
        "countersignature: refused",
        "countersigned by the customer: grant",
        "credit_score >= 700, not granted: refused",
        "binary search, income >= 100000: true",
        "binary search, income >= 125000: refused",
        "closed 10 rounds",
        "with the exported ONNX model (tract)",
        "time: ceremony",
        "explorer: http://127.0.0.1:",
        "time: all acts",
        "== devnet finished",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    // The network it left behind reopens: the members that cosigned the
    // final head hold its root, and the learning act's contributions and
    // rewards are in their ledgers.
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("summary line");
    let root = summary.rsplit(' ').next().unwrap();
    let size: u64 = summary
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("summary size");
    let node = yilian_identity::Identity::load(&dir.path().join("identities/node")).unwrap();
    let mut ledgers = vec![dir.path().join("ledger.redb")];
    for e in std::fs::read_dir(dir.path().join("members")).unwrap() {
        ledgers.push(e.unwrap().path().join("ledger.redb"));
    }
    let mut matching = 0;
    let mut kinds: Vec<String> = Vec::new();
    for path in &ledgers {
        let ledger = yilian_ledger::Ledger::open(path, node.signing_key().clone()).unwrap();
        if ledger.len() >= size && hex::encode(ledger.root_at(size).unwrap()) == root {
            matching += 1;
            kinds = ledger
                .entries(0, ledger.len())
                .unwrap()
                .iter()
                .map(|(_, tx)| tx.tx.payload.kind().to_owned())
                .collect();
        }
    }
    assert!(
        matching >= 2,
        "only {matching} members hold the cosigned root"
    );
    for kind in [
        "record-anchor",
        "verifying-key-anchor",
        "ceremony-contribution",
        "query-grant",
        "zk-query",
        "contribution",
        "reward",
        "key-audit",
        "member-proposal",
        "member-approval",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no `{kind}` entry on the ledger"
        );
    }
    for expected in [
        "cosigned head (C2SP checkpoint, one cosignature per member)",
        "failover: leader",
        "membership: regulator joined",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
