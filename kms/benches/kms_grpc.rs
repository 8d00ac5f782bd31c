//! GenerateDataKey and Decrypt over gRPC on loopback with mutual TLS, at 1,
//! 16 and 64 concurrent clients, with the ledger audit on (durable, group
//! commit) and, as the baseline in the same run, with an audit log that
//! records nothing, so the audit's cost shows as a ratio. A third column
//! audits as before this node skipped re-verifying its own audit records
//! (signed, then submitted for signature verification like any client's
//! transaction), to show that change within the same run. "per fsync" is
//! audit entries per durable ledger commit (group commit at work).
//!
//! Run: `cargo bench -p yilian-kms --bench kms_grpc` (env BENCH_SECS, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tonic::service::Routes;
use yilian_identity::{Identity, Role};
use yilian_kms::audit::{AuditLog, AuditReceipt, KeyAudit, Page, TrailPage};
use yilian_kms::client::Client;
use yilian_kms::policy::AccountId;
use yilian_kms::service::{KmsNode, KmsService};
use yilian_kms::{LedgerAudit, system_clock};
use yilian_ledger::{Ledger, Payload, Transaction};
use yilian_testkit::Network;

/// The ledger audit as a client would submit it: the writer verifies the
/// signature again (what `LedgerAudit` did before it used `submit_own`).
#[derive(Clone)]
struct VerifiedSubmitAudit {
    ledger: Ledger,
    key: SigningKey,
}

impl AuditLog for VerifiedSubmitAudit {
    async fn record(&self, a: KeyAudit) -> yilian_kms::Result<AuditReceipt> {
        let tx = Transaction::new(Payload::KeyAudit {
            owner: a.owner,
            actor: a.actor,
            operation: a.operation,
            key_id: a.key_id,
            key_version: a.key_version,
            grant_id: a.grant_id,
            outcome: a.outcome,
            request_hash: a.request_hash,
        })
        .sign(&self.key);
        let r = self
            .ledger
            .submit(tx)
            .await
            .map_err(|e| yilian_kms::KmsError::AuditFailed(e.to_string()))?;
        Ok(AuditReceipt { index: r.index })
    }
    fn trail(&self, _: &AccountId, _: Option<&str>, _: Page) -> yilian_kms::Result<TrailPage> {
        Ok(TrailPage::default())
    }
    fn admission(&self, account: &AccountId) -> Option<yilian_kms::policy::Admission> {
        self.ledger
            .member(account)
            .map(|m| yilian_kms::policy::Admission {
                role: m.role,
                revoked: m.revoked,
                not_after_ms: m.not_after_ms,
            })
    }
}

/// The baseline only: an audit log that keeps nothing.
#[derive(Clone)]
struct NoAudit;

impl AuditLog for NoAudit {
    async fn record(&self, _: KeyAudit) -> yilian_kms::Result<AuditReceipt> {
        Ok(AuditReceipt { index: 0 })
    }
    fn trail(&self, _: &AccountId, _: Option<&str>, _: Page) -> yilian_kms::Result<TrailPage> {
        Ok(TrailPage::default())
    }
    fn admission(&self, _: &AccountId) -> Option<yilian_kms::policy::Admission> {
        None
    }
}

struct Setup {
    net: Network,
    owner: Identity,
}

async fn setup() -> Setup {
    let net = Network::new("bench").await;
    let owner = net.admit(Role::Member, "owner").await;
    Setup { net, owner }
}

async fn serve<A: AuditLog + Clone>(s: &Setup, name: &str, audit: A) -> String {
    let root = yilian_kms::crypto::random_key().unwrap();
    let node = KmsNode::unsealed(s.net.path(name), root, audit, system_clock()).unwrap();
    let routes = Routes::new(KmsService::new(node).into_server());
    yilian_testkit::serve(&s.net.node, Default::default(), routes).await
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    GenerateDataKey,
    Decrypt,
}

struct Figures {
    rps: f64,
    p50_us: u128,
    p99_us: u128,
}

async fn run(addr: &str, owner: &Identity, op: Op, clients: usize, secs: f64) -> Figures {
    // One HTTP/2 connection per 8 clients, as a pool of real clients would.
    let conns = clients.div_ceil(8);
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(Client::connect(addr, owner).await.unwrap());
    }
    let mut c0 = channels[0].clone();
    let wrapped = Arc::new(
        c0.generate_data_key("bench", b"ctx", None)
            .await
            .unwrap()
            .wrapped
            .clone(),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = channels[i % conns].clone();
        let wrapped = wrapped.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                match op {
                    Op::GenerateDataKey => {
                        c.generate_data_key("bench", b"ctx", None).await.unwrap();
                    }
                    Op::Decrypt => {
                        c.decrypt(&wrapped, b"ctx", None).await.unwrap();
                    }
                }
                lat.push(t.elapsed().as_micros());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = yilian_testkit::Report::start("kms_grpc");
    rt.block_on(async {
        let s = setup().await;
        let audited = serve(&s, "kms-audit.redb", LedgerAudit::new(s.net.ledger.clone(), s.net.node.signing_key().clone())).await;
        let bare = serve(&s, "kms-noaudit.redb", NoAudit).await;
        let reverify = serve(
            &s,
            "kms-reverify.redb",
            VerifiedSubmitAudit { ledger: s.net.ledger.clone(), key: s.net.node.signing_key().clone() },
        )
        .await;
        for addr in [&audited, &bare, &reverify] {
            Client::connect(addr, &s.owner).await.unwrap().create_key("bench", false, false).await.unwrap();
        }
        println!(
            "KMS over gRPC, loopback, mutual TLS (ed25519 certs), {} CPU(s), {secs:.1}s per cell; server and clients share the machine",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        println!("{:<16} {:>7} | {:>10} {:>8} {:>8} {:>9} | {:>10} {:>8} {:>8} | {:>10} {:>8} | {:>6}", "operation", "clients", "audit rq/s", "p50 us", "p99 us", "per fsync", "none rq/s", "p50 us", "p99 us", "reverify", "p99 us", "ratio");
        for (name, op) in [("GenerateDataKey", Op::GenerateDataKey), ("Decrypt", Op::Decrypt)] {
            for clients in [1usize, 16, 64] {
                let (n0, c0) = (s.net.ledger.len(), s.net.ledger.commits());
                let a = run(&audited, &s.owner, op, clients, secs).await;
                let per_fsync = (s.net.ledger.len() - n0) as f64 / (s.net.ledger.commits() - c0).max(1) as f64;
                let b = run(&bare, &s.owner, op, clients, secs).await;
                let v = run(&reverify, &s.owner, op, clients, secs).await;
                let ratio = report.record(&format!("{name} audited, {clients} clients"), a.rps, "req/s", "unaudited", b.rps);
                report.record(&format!("{name} audited p99, {clients} clients"), a.p99_us as f64, "us", "unaudited", b.p99_us as f64);
                report.record(&format!("{name} re-verifying audit, {clients} clients"), v.rps, "req/s", "unaudited", b.rps);
                println!(
                    "{:<16} {:>7} | {:>10.0} {:>8} {:>8} {:>9.1} | {:>10.0} {:>8} {:>8} | {:>10.0} {:>8} | {:>6.2}",
                    name, clients, a.rps, a.p50_us, a.p99_us, per_fsync, b.rps, b.p50_us, b.p99_us, v.rps, v.p99_us, ratio
                );
            }
        }
        println!("ledger entries written by the audited runs: {}", s.net.ledger.len());
    });
    report.finish();
}
