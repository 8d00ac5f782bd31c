//! GenerateDataKey and Decrypt over gRPC on loopback with mutual TLS, at 1,
//! 16 and 64 concurrent clients, with the ledger audit on (durable, records
//! batched into `KeyAudits` entries) and, as the baseline in the same run,
//! with an audit log that records nothing, so the audit's cost shows as a
//! ratio. A third column audits one ledger entry per operation (signed and
//! submitted as the node's own, which is what `LedgerAudit` did before it
//! batched), to show that change within the same run. "per entry" is
//! audit records per ledger entry and "per fsync" ledger entries per durable
//! commit (the ledger's own group commit). The transport's ceiling, also in
//! the same run: a service at the KMS's paths over the same mutual TLS that
//! answers with canned replies of the same size ("echo"); "none/echo" is the
//! unaudited KMS as a ratio of it.
//!
//! Run: `cargo bench -p yilian-kms --bench kms_grpc` (env BENCH_SECS, default
//! 3; AUDIT_IN_FLIGHT, audit entries committing at once, default
//! `yilian_kms::audit::IN_FLIGHT`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tonic::codegen::http;
use tonic::service::Routes;
use yilian_identity::{Identity, Role};
use yilian_kms::audit::{AuditLog, AuditReceipt, KeyAudit, Page, TrailPage};
use yilian_kms::client::Client;
use yilian_kms::policy::AccountId;
use yilian_kms::service::{KmsNode, KmsService, pb};
use yilian_kms::{LedgerAudit, system_clock};
use yilian_ledger::{Ledger, OwnTransaction, Payload, Transaction};
use yilian_testkit::Network;

/// One ledger entry per operation: the audit as it was before batching.
#[derive(Clone)]
struct PerOperationAudit {
    ledger: Ledger,
    key: SigningKey,
}

impl AuditLog for PerOperationAudit {
    async fn record(&self, a: KeyAudit) -> yilian_kms::Result<AuditReceipt> {
        let tx = OwnTransaction::sign(
            Transaction::new(Payload::KeyAudits { records: vec![a] }),
            &self.key,
        );
        let r = self
            .ledger
            .submit_own(tx)
            .await
            .map_err(|e| yilian_kms::KmsError::AuditFailed(e.to_string()))?;
        Ok(AuditReceipt {
            index: r.index,
            position: 0,
        })
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
        Ok(AuditReceipt {
            index: 0,
            position: 0,
        })
    }
    fn trail(&self, _: &AccountId, _: Option<&str>, _: Page) -> yilian_kms::Result<TrailPage> {
        Ok(TrailPage::default())
    }
    fn admission(&self, _: &AccountId) -> Option<yilian_kms::policy::Admission> {
        None
    }
}

/// The transport's ceiling: a service at the KMS's own paths, over the
/// same mutual TLS, that answers GenerateDataKey and Decrypt with canned
/// replies of the real ones' size, doing no work at all.
#[derive(Clone)]
struct Echo {
    data_key: pb::GenerateDataKeyResponse,
    plaintext: pb::DecryptResponse,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = pb::kms_server::SERVICE_NAME;
}

struct Canned<T>(T);

impl<Req: Send + 'static, T: Clone + Send + 'static> tonic::server::UnaryService<Req>
    for Canned<T>
{
    type Response = T;
    type Future = std::future::Ready<Result<tonic::Response<T>, tonic::Status>>;
    fn call(&mut self, _: tonic::Request<Req>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(self.0.clone())))
    }
}

async fn canned<Req, T>(
    reply: T,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    T: prost::Message + Clone + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::<T, Req>::default())
        .unary(Canned(reply), req)
        .await
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            Ok(match req.uri().path().rsplit('/').next() {
                Some("GenerateDataKey") => {
                    canned::<pb::GenerateDataKeyRequest, _>(echo.data_key, req).await
                }
                Some("Decrypt") => canned::<pb::DecryptRequest, _>(echo.plaintext, req).await,
                _ => tonic::Status::unimplemented("the echo answers two calls").into_http(),
            })
        })
    }
}

async fn serve_echo(s: &Setup, like: &str) -> String {
    let real = Client::connect(like, &s.owner)
        .await
        .unwrap()
        .generate_data_key("bench", b"ctx", None)
        .await
        .unwrap();
    let echo = Echo {
        data_key: pb::GenerateDataKeyResponse {
            plaintext: vec![7; 32],
            wrapped: real.wrapped.clone(),
            key_version: 1,
        },
        plaintext: pb::DecryptResponse {
            plaintext: vec![7; 32],
        },
    };
    yilian_testkit::serve(&s.net.node, Default::default(), Routes::new(echo)).await
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
    count: usize,
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
        count: all.len(),
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
        let depth = std::env::var("AUDIT_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(yilian_kms::audit::IN_FLIGHT);
        println!("audit entries committing at once: {depth}");
        let audited = serve(&s, "kms-audit.redb", LedgerAudit::with_in_flight(s.net.ledger.clone(), s.net.node.signing_key().clone(), depth)).await;
        let bare = serve(&s, "kms-noaudit.redb", NoAudit).await;
        let per_op = serve(
            &s,
            "kms-per-operation.redb",
            PerOperationAudit { ledger: s.net.ledger.clone(), key: s.net.node.signing_key().clone() },
        )
        .await;
        for addr in [&audited, &bare, &per_op] {
            Client::connect(addr, &s.owner).await.unwrap().create_key("bench", false, false).await.unwrap();
        }
        let echo = serve_echo(&s, &bare).await;
        println!(
            "KMS over gRPC, loopback, mutual TLS (ECDSA P-256 certs), {} CPU(s), {secs:.1}s per cell; server and clients share the machine",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        println!("{:<16} {:>7} | {:>10} {:>8} {:>8} {:>9} {:>9} | {:>10} {:>8} {:>8} | {:>10} {:>8} | {:>6} {:>6} | {:>10} {:>6}", "operation", "clients", "audit rq/s", "p50 us", "p99 us", "per entry", "per fsync", "none rq/s", "p50 us", "p99 us", "1 per op", "p99 us", "ratio", "1/op", "echo rq/s", "none/echo");
        for (name, op) in [("GenerateDataKey", Op::GenerateDataKey), ("Decrypt", Op::Decrypt)] {
            for clients in [1usize, 16, 64] {
                let (n0, c0) = (s.net.ledger.len(), s.net.ledger.commits());
                let a = run(&audited, &s.owner, op, clients, secs).await;
                let entries = s.net.ledger.len() - n0;
                // `run` asks for one data key of its own before the clients start.
                let per_entry = (a.count + 1) as f64 / entries.max(1) as f64;
                let per_fsync = entries as f64 / (s.net.ledger.commits() - c0).max(1) as f64;
                let b = run(&bare, &s.owner, op, clients, secs).await;
                let v = run(&per_op, &s.owner, op, clients, secs).await;
                let e = run(&echo, &s.owner, op, clients, secs).await;
                report.record(&format!("{name} unaudited, {clients} clients"), b.rps, "req/s", "mutual-TLS gRPC echo", e.rps);
                let ratio = report.record(&format!("{name} audited, {clients} clients"), a.rps, "req/s", "unaudited", b.rps);
                report.record(&format!("{name} audited p99, {clients} clients"), a.p99_us as f64, "us", "unaudited", b.p99_us as f64);
                let per_op_ratio = report.record(&format!("{name} audited one entry per operation, {clients} clients"), v.rps, "req/s", "unaudited", b.rps);
                report.record(&format!("{name} audit records per entry, {clients} clients"), per_entry, "records", "one per entry", 1.0);
                println!(
                    "{:<16} {:>7} | {:>10.0} {:>8} {:>8} {:>9.1} {:>9.1} | {:>10.0} {:>8} {:>8} | {:>10.0} {:>8} | {:>6.2} {:>6.2} | {:>10.0} {:>6.2}",
                    name, clients, a.rps, a.p50_us, a.p99_us, per_entry, per_fsync, b.rps, b.p50_us, b.p99_us, v.rps, v.p99_us, ratio, per_op_ratio, e.rps, b.rps / e.rps
                );
            }
        }
        println!("ledger entries written by the audited runs: {}", s.net.ledger.len());
    });
    report.finish();
}
