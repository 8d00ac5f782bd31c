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
        "not on the sanctions list (1024 entries): true (proof verified)",
        "income >= 150000: false (proof verified)",
        "record anchored at ledger entry",
        "closed 10 rounds",
        "with the exported ONNX model (tract)",
        "== devnet finished",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    // The network it left behind reopens: its ledger's root is the one printed,
    // and the contributions and rewards of the learning act are in it.
    let node = yilian_identity::Identity::load(&dir.path().join("identities/node")).unwrap();
    let ledger =
        yilian_ledger::Ledger::open(&dir.path().join("ledger.redb"), node.signing_key().clone())
            .unwrap();
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("summary line");
    let root = summary.rsplit(' ').next().unwrap();
    assert_eq!(hex::encode(ledger.tree_head().root_hash), root);
    let kinds: Vec<&str> = ledger
        .entries(0, ledger.len())
        .unwrap()
        .iter()
        .map(|(_, tx)| tx.tx.payload.kind())
        .collect();
    for kind in [
        "record-anchor",
        "verifying-key-anchor",
        "contribution",
        "reward",
        "key-audit",
    ] {
        assert!(kinds.contains(&kind), "no `{kind}` entry on the ledger");
    }
}
