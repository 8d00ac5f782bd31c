//! The user guides in `docs/` work when followed literally: every `sh`
//! block of each guide, in the guides' order, runs in one bash session in a
//! fresh directory holding the repository's `data/` and `federated/examples/`,
//! with the `yilian` and `yilian-agent` just built first on the `PATH` and
//! `HOME` in that directory. A command that fails fails the test. Where the
//! machine allows it (root), the session gets a network namespace of its own,
//! so the guides' fixed ports (7400, 7401, 7410, 7480, 9464) cannot meet
//! another test's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// In the order a network comes to life: each guide uses what the ones
/// before it made.
const GUIDES: &[&str] = &[
    "operator",
    "data-holder",
    "bank",
    "device-owner",
    "ml-engineer",
    "auditor",
];

/// The lines of each fenced `sh` block, as a script. Two readings of what
/// a reader does: `cargo install` is skipped (the binaries under test are on
/// the `PATH` instead), and a line starting `! ` is a command the guide says
/// is refused, so it must fail (bash's own `!` would never stop the script).
fn script(markdown: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        if !inside {
            inside = line.trim_end() == "```sh";
            continue;
        }
        if line.trim_end() == "```" {
            inside = false;
            continue;
        }
        if line.trim_start().starts_with("cargo install") {
            continue;
        }
        match line.strip_prefix("! ") {
            Some(refused) => out.push_str(&format!(
                "if {refused}\nthen echo 'this should have been refused: {}' >&2; exit 1; fi\n",
                refused.replace('\'', "")
            )),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn only_sh_blocks_are_run_and_refusals_must_fail() {
    let md = "text\n```sh\necho one\n! false\ncargo install --path .\n```\n```toml\nx = 1\n```\n```sh\necho two\n```\n";
    let s = script(md);
    assert!(s.starts_with("echo one\nif false\n"), "{s}");
    assert!(s.contains("exit 1; fi\necho two\n"), "{s}");
    assert!(!s.contains("x = 1") && !s.contains("cargo"), "{s}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Whether this machine lets the test give the session its own loopback.
fn own_network() -> bool {
    Command::new("unshare")
        .args(["--net", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_guides_run_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yilian = PathBuf::from(env!("CARGO_BIN_EXE_yilian"));
    let bin = yilian.parent().unwrap();
    assert!(
        bin.join("yilian-agent").exists(),
        "{} is missing: build the workspace (`cargo test --workspace` does)",
        bin.join("yilian-agent").display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    copy_dir(&repo.join("data"), &work.join("data"));
    copy_dir(
        &repo.join("federated/examples"),
        &work.join("federated/examples"),
    );
    std::fs::create_dir_all(work.join("home")).unwrap();
    let mut session = String::from(
        "set -euo pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n\
         set -x\n",
    );
    for g in GUIDES {
        let md = std::fs::read_to_string(repo.join("docs").join(format!("{g}.md"))).unwrap();
        let s = script(&md);
        assert!(!s.trim().is_empty(), "docs/{g}.md has no sh block");
        session.push_str(&format!(": docs/{g}.md\n{s}"));
    }
    std::fs::write(work.join("guides.sh"), &session).unwrap();
    let mut cmd = if own_network() {
        let mut c = Command::new("unshare");
        c.args([
            "--net",
            "bash",
            "-c",
            "ip link set lo up && exec bash guides.sh",
        ]);
        c
    } else {
        let mut c = Command::new("bash");
        c.arg("guides.sh");
        c
    };
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (k, _) in std::env::vars() {
        if k.starts_with("YILIAN_") {
            cmd.env_remove(k);
        }
    }
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(work.join("guides.log")).unwrap();
    let mut child = cmd
        .current_dir(work)
        .env("PATH", path)
        .env("HOME", work.join("home"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("run bash");
    let deadline = Instant::now() + Duration::from_secs(1200);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            // The session and the nodes and agents it started.
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(work.join("guides.log")).unwrap_or_default();
    let tail = |p: &str| {
        let text = std::fs::read_to_string(work.join(p)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the guides stopped ({status:?}):\n{output}\n--- node.log\n{}\n--- bank-b.log\n{}\n--- home/yilian/agent.log\n{}",
        tail("node.log"),
        tail("bank-b.log"),
        tail("home/yilian/agent.log"),
    );
    // What the guides promise, seen in what the commands printed (not in
    // bash's trace of them).
    let printed: String = output
        .lines()
        .filter(|l| !l.starts_with('+'))
        .map(|l| format!("{l}\n"))
        .collect();
    // Shown with `--nocapture`: what a reader of the guides sees.
    println!("{printed}");
    for promised in [
        "admitted acme-bank/holder (data-holder)",
        "room 101",
        "answer: true (proof verified",
        "valid proof; the query is true",
        "task digits-guide submitted",
        "entry 3 (",
        "OK: the trusted log of size",
    ] {
        assert!(printed.contains(promised), "no `{promised}` in:\n{output}");
    }
}
