//! Nothing acknowledged is lost: a child process appends to the ledger and
//! prints each index once it is durable; we `kill -9` it mid-stream, reopen
//! the store and find every acknowledged entry, under a consistent head.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use yilian::network::{self, NetworkDir};
use yilian_ledger::merkle::{self, leaf_hash};

#[test]
fn acknowledged_appends_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = NetworkDir::new(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(network::init_network(&dir, "crash", "127.0.0.1:0"))
        .unwrap();
    let base = dir.open_ledger().unwrap().len();

    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_yilian"))
            .args(["append-stream", "--data"])
            .arg(tmp.path())
            .args(["--count", "200000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while acked.len() < 3000 {
            let line = lines.next().expect("child ended early").unwrap();
            acked.push(line.strip_prefix("acked ").unwrap().parse::<u64>().unwrap());
        }
        // SIGKILL: no destructors, no flush, mid group-commit.
        child.kill().unwrap();
        child.wait().unwrap();

        let ledger = dir.open_ledger().unwrap();
        let head = ledger.tree_head();
        head.verify().unwrap();
        assert!(
            head.tree_size >= base + acked.len() as u64,
            "round {round}: lost entries"
        );
        for &i in &acked {
            let bytes = ledger.entry_bytes(i).unwrap();
            let proof = ledger.inclusion_proof(i, head.tree_size).unwrap();
            merkle::verify_inclusion(&leaf_hash(&bytes), &proof, &head.root_hash).unwrap();
        }
    }
}
