//! What Yilian's tests and benches share, so that none of them copies the
//! network bootstrap: a fresh admission authority with a ledger that
//! carries its genesis and admissions, identities saved where the CLI
//! expects them, a gRPC server with mutual TLS on loopback, free loopback
//! addresses, and the machine probes every benchmark prints beside its
//! figures (load and synced-write latency, because fsync time differs up to
//! 30x between machines of one kind).
//!
//! Nothing here is used by a shipped binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::tls::RevocationList;
use yilian_identity::{Identity, Role};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Ledger, Payload, Transaction};

/// The organisation every identity the kit makes belongs to.
pub const ORG: &str = "org";

/// A network in a temporary directory: an authority, the node identity
/// `node` (a member) whose key signs the ledger's heads, and that ledger
/// with the genesis entry and the node's admission on it.
pub struct Network {
    pub dir: tempfile::TempDir,
    pub ca: Authority,
    pub node: Identity,
    pub ledger: Ledger,
}

impl Network {
    /// A network named `name`: its authority, node and ledger, ready for
    /// [`Network::admit`].
    pub async fn new(name: &str) -> Network {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create(name).unwrap();
        let node = certify(&ca, Role::Member, "node", dir.path());
        let ledger = Ledger::open(&dir.path().join("ledger.redb"), node.signing_key().clone())
            .expect("the test ledger opens");
        genesis(&ledger, &ca, &[&node]).await;
        Network {
            dir,
            ca,
            node,
            ledger,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The identity saved as `name` by [`Network::admit`] or
    /// [`Network::certify`] (`node` is the node's).
    pub fn load(&self, name: &str) -> Identity {
        Identity::load(&self.path(name)).unwrap()
    }

    /// The authority's key, which signs admissions and revocations.
    pub fn authority(&self) -> SigningKey {
        self.ca.signing_key()
    }

    /// Certifies `name` with `role`, saves it under the network's
    /// directory and admits it on the ledger.
    pub async fn admit(&self, role: Role, name: &str) -> Identity {
        let id = self.certify(role, name);
        register(&self.ledger, &self.ca, &id).await;
        id
    }

    /// [`Network::admit`] for each `(name, role)`, in order.
    pub async fn admit_all(&self, names: &[(&str, Role)]) -> Vec<Identity> {
        let mut ids = Vec::with_capacity(names.len());
        for (name, role) in names {
            ids.push(self.admit(*role, name).await);
        }
        ids
    }

    /// A certificate from this network's authority that the ledger has not
    /// (yet) recorded: what a device holds before its admission lands.
    pub fn certify(&self, role: Role, name: &str) -> Identity {
        certify(&self.ca, role, name, self.dir.path())
    }

    /// Admits a bare key with `role`, for tests that sign with keys rather
    /// than hold certificates.
    pub async fn admit_key(&self, key: &SigningKey, role: Role) {
        let public_key = key.verifying_key().to_bytes();
        let p = yilian_identity::Principal {
            org: ORG.into(),
            role,
            name: format!("key-{:02x}{:02x}", public_key[0], public_key[1]),
            public_key,
            serial: public_key[..8].to_vec(),
        };
        submit(
            &self.ledger,
            Payload::admission(&p, u64::MAX),
            &self.authority(),
        )
        .await;
    }

    /// Records the revocation of `public_key` on the ledger.
    pub async fn revoke(&self, public_key: [u8; 32]) {
        let revoke = Payload::Revoke {
            public_key,
            reason: "test".into(),
        };
        submit(&self.ledger, revoke, &self.authority()).await;
    }
}

/// Certifies `name` with `role` under `ca`, saves it in `dir/name` (where
/// the CLI's `--identity` finds it) and loads it back from there.
pub fn certify(ca: &Authority, role: Role, name: &str, dir: &Path) -> Identity {
    let id = ca.admit(&AdmissionRequest::new(ORG, role, name)).unwrap();
    id.save(&dir.join(name)).unwrap();
    Identity::load(&dir.join(name)).unwrap()
}

/// Starts `ledger` as `ca`'s network and admits `ids` on it.
pub async fn genesis(ledger: &Ledger, ca: &Authority, ids: &[&Identity]) {
    let genesis = Payload::Genesis {
        network: ca.network().into(),
        authority: ca.signing_key().verifying_key().to_bytes(),
    };
    submit(ledger, genesis, &ca.signing_key()).await;
    for id in ids {
        register(ledger, ca, id).await;
    }
}

/// Records `id`'s admission on `ledger`, as the admission authority does.
pub async fn register(ledger: &Ledger, ca: &Authority, id: &Identity) {
    let admit = Payload::admission(id.principal(), u64::MAX);
    submit(ledger, admit, &ca.signing_key()).await;
}

async fn submit(ledger: &Ledger, payload: Payload, signer: &SigningKey) {
    ledger
        .submit(Transaction::new(payload).sign(signer))
        .await
        .expect("the test ledger takes the entry");
}

/// Serves `routes` over gRPC with mutual TLS as `id` on a free loopback
/// port, refusing `revoked`; the address clients dial.
pub async fn serve(
    id: &Identity,
    revoked: RevocationList,
    routes: tonic::service::Routes,
) -> String {
    serve_at("127.0.0.1:0", id, revoked, routes).await
}

/// [`serve`] on `addr`, for a test that must know the address beforehand.
pub async fn serve_at(
    addr: &str,
    id: &Identity,
    revoked: RevocationList,
    routes: tonic::service::Routes,
) -> String {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = yilian_identity::grpc::incoming(listener, id, revoked).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A loopback address nothing listens on at the time of the call.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A loopback TCP port nothing listens on at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `yilian node --config FILE` process, killed with SIGKILL when
/// dropped: tests that must show nothing acknowledged is lost kill it
/// mid-stream with [`NodeProcess::kill9`] and start it again.
pub struct NodeProcess {
    command: Vec<OsString>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl NodeProcess {
    /// The node binary `bin` (a test's `env!("CARGO_BIN_EXE_yilian")`) on
    /// `config`; not started yet.
    pub fn new(bin: &str, config: &Path) -> NodeProcess {
        NodeProcess {
            command: vec![bin.into(), "node".into(), "--config".into(), config.into()],
            env: Vec::new(),
            log: None,
            child: None,
        }
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.command.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends the node's standard error to `path` across restarts.
    pub fn log(mut self, path: &Path) -> Self {
        self.log = Some(path.to_owned());
        self
    }

    pub fn start(&mut self) {
        let stderr = match &self.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the node binary starts");
        self.child = Some(child);
    }

    /// Started, as [`NodeProcess::start`] does.
    pub fn started(mut self) -> Self {
        self.start();
        self
    }

    /// SIGKILL (what `Child::kill` sends on Unix): no destructors, no
    /// flush, whatever the node was doing.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits for the node to exit on its own; panics after `within` (a
    /// hang guard).
    pub fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("the node was started");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the node did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A ledger client of the node at `addr` as `id`, once the node answers a
/// tree-head read; panics after `within` (a hang guard, not a timing
/// assertion: a restarted node is back within seconds).
pub async fn ledger_client(addr: &str, id: &Identity, within: Duration) -> LedgerClient {
    let deadline = Instant::now() + within;
    loop {
        let last = match yilian_identity::grpc::connect(addr, id).await {
            Ok(ch) => {
                let mut c = LedgerClient::new(ch);
                match c.tree_head().await {
                    Ok(_) => return c,
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the node at {addr} did not answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` until it holds; panics naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// What `cmd` printed to standard output. It must exit successfully;
/// otherwise the panic names the command and shows its standard error.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback UDP address nothing is bound to at the time of the call.
pub fn free_udp_addr() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// What benchmarks print beside their figures.
pub mod machine {
    use super::*;

    /// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Median latency of a 4 KiB write followed by fdatasync in `dir`, in ms.
    pub fn synced_write_ms(dir: &Path) -> f64 {
        use std::io::Write as _;
        let path = dir.join("fsync-probe");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![7u8; 4096];
        let mut times: Vec<f64> = (0..100)
            .map(|_| {
                let t = Instant::now();
                f.write_all(&block).unwrap();
                f.sync_data().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let _ = std::fs::remove_file(path);
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }

    /// One line with both, for a benchmark's header.
    pub fn report(dir: &Path) -> String {
        format!(
            "load average {}; synced 4 KiB write {:.3} ms (median of 100)",
            load_average(),
            synced_write_ms(dir)
        )
    }
}

/// A size-limited tmpfs mounted on a fresh temporary directory, for
/// disk-full faults; unmounted when dropped. Needs root (`mount`).
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `bytes` of tmpfs, or says why not: tests that need it skip
    /// where the machine cannot make one, saying so.
    pub fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={bytes}"),
            "tmpfs",
            &dir.path().display().to_string(),
        ])?;
        Ok(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows or shrinks the filesystem (not below what it holds).
    pub fn resize(&self, bytes: u64) {
        mount(&[
            "-o",
            &format!("remount,size={bytes}"),
            &self.path().display().to_string(),
        ])
        .unwrap();
    }

    /// Bytes in use, as statfs reports them.
    pub fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--block-size=1", "--output=used"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df reports the bytes used")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a node killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A benchmark's record of what it measured, so that its figures travel
/// between machines: the machine first (cores, load, synced-write
/// latency), then each figure beside its same-run baseline as a ratio, and
/// the load again at the end. Printed, and written as JSON lines to
/// `target/bench/<bench>.jsonl` (one object a line, `"event"` saying
/// which kind).
pub struct Report {
    bench: &'static str,
    path: PathBuf,
    out: std::fs::File,
}

impl Report {
    /// Probes the machine and prints what it found; call it before any
    /// work, on a quiet machine.
    pub fn start(bench: &'static str) -> Report {
        let probe = tempfile::tempdir().expect("a temporary directory");
        let fsync = machine::synced_write_ms(probe.path());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load = machine::load_average();
        println!(
            "{bench}: {cores} cores; load average {load}; synced 4 KiB write {fsync:.3} ms (median of 100)"
        );
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("bench");
        std::fs::create_dir_all(&dir).expect("the bench results directory");
        let path = dir.join(format!("{bench}.jsonl"));
        let out = std::fs::File::create(&path).expect("the bench results file");
        let mut r = Report { bench, path, out };
        r.write(serde_json::json!({
            "event": "start",
            "cores": cores,
            "load_average": load,
            "synced_write_ms": fsync,
        }));
        r
    }

    fn write(&mut self, mut line: serde_json::Value) {
        use std::io::Write as _;
        line["bench"] = self.bench.into();
        writeln!(self.out, "{line}").expect("writing the bench results");
    }

    /// Records a figure and the same run's baseline it is read against,
    /// without printing (for benches that print a table of their own).
    /// Returns value / baseline.
    pub fn record(
        &mut self,
        figure: &str,
        value: f64,
        unit: &str,
        baseline: &str,
        baseline_value: f64,
    ) -> f64 {
        let ratio = value / baseline_value;
        self.write(serde_json::json!({
            "event": "figure",
            "figure": figure,
            "value": value,
            "unit": unit,
            "baseline": baseline,
            "baseline_value": baseline_value,
            "ratio": ratio,
        }));
        ratio
    }

    /// Records a figure and prints it beside its baseline and the ratio.
    pub fn figure(
        &mut self,
        figure: &str,
        value: f64,
        unit: &str,
        baseline: &str,
        baseline_value: f64,
    ) -> f64 {
        let ratio = self.record(figure, value, unit, baseline, baseline_value);
        println!(
            "{figure}: {} {unit}; {baseline}: {} {unit}; ratio {ratio:.3}",
            significant(value),
            significant(baseline_value)
        );
        ratio
    }

    /// Prints the load at the end and where the results are.
    pub fn finish(mut self) {
        let load = machine::load_average();
        self.write(serde_json::json!({ "event": "end", "load_average": load }));
        println!(
            "{}: load average at the end {load}; results in {}",
            self.bench,
            self.path.display()
        );
    }
}

/// Three significant figures, without an exponent for everyday sizes.
fn significant(x: f64) -> String {
    let digits = if x == 0.0 {
        0
    } else {
        (2 - x.abs().log10().floor() as i32).max(0) as usize
    };
    format!("{x:.digits$}")
}

/// A Python interpreter in `<dir>/.venv` with the packages `dir/requirements.txt`
/// pins, installed from PyPI when the file changed since the last install.
/// `python3` with its `venv` module must be on the machine.
pub fn python_venv(dir: &Path) -> PathBuf {
    let requirements = std::fs::read_to_string(dir.join("requirements.txt"))
        .unwrap_or_else(|e| panic!("{}/requirements.txt: {e}", dir.display()));
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".yilian-requirements");
    // Tests in one binary, or test binaries run side by side, install once.
    let lock = std::fs::File::create(dir.join(".venv.lock")).unwrap();
    lock.lock().unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot start it: {e}"));
        assert!(
            out.status.success(),
            "{what} failed; run it by hand in {} to see why:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv .venv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(dir.join("requirements.txt")),
        ".venv/bin/python -m pip install -r requirements.txt",
    );
    std::fs::write(&stamp, &requirements).unwrap();
    python
}

/// One plain HTTP/1.1 GET on loopback: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|b| b.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_print_with_three_significant_digits() {
        assert_eq!(significant(205.4), "205");
        assert_eq!(significant(1.0734), "1.07");
        assert_eq!(significant(0.2371), "0.237");
        assert_eq!(significant(27_400.0), "27400");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn a_report_is_one_json_object_a_line() {
        let mut r = Report::start("testkit-selftest");
        assert_eq!(r.figure("fast", 3.0, "ms", "slow", 6.0), 0.5);
        let path = r.path.clone();
        r.finish();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["start", "figure", "end"]);
        assert_eq!(lines[1]["ratio"], 0.5);
        assert_eq!(lines[1]["baseline"], "slow");
        assert!(lines[0]["synced_write_ms"].as_f64().unwrap() > 0.0);
    }
}
