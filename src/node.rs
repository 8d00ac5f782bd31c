//! `yilian node`: one process serving the ledger (and the other capabilities)
//! over gRPC with mutual TLS, with a Prometheus endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use yilian_identity::Identity;
use yilian_ledger::Ledger;
use yilian_ledger::peer::{ConsortiumService, IdentityConnector};
use yilian_ledger::service::LedgerService;
use yilian_ledger::store::{ClusterOptions, MemberName};

/// The node's settings; the TOML file's keys are these field names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The network directory holding `ledger.redb`.
    pub data_dir: PathBuf,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Prometheus metrics address (`/metrics`), if any.
    pub metrics: Option<SocketAddr>,
    /// The node's identity directory (certificate, key, CA).
    pub identity: PathBuf,
    /// Start the KMS sealed, to be unsealed by t-of-n operator shares
    /// (`yilian kms unseal`); otherwise its root key is the file
    /// `kms-root.key` in the data directory (created on first start).
    #[serde(default)]
    pub kms_sealed: bool,
    /// Let the ZK API make its proving keys by a single-party setup when it
    /// has none. Whoever runs that setup can forge proofs: development only.
    /// Otherwise keys come from the members' ceremony (`zk_ceremony`).
    #[serde(default)]
    pub insecure_dev_setup: bool,
    /// The members' ceremony transcript the ZK API takes its keys from,
    /// after verifying it and finding every contribution anchored (default
    /// `<data_dir>/zk/ceremony`).
    #[serde(default)]
    pub zk_ceremony: Option<PathBuf>,
    /// QUIC address of the federated-learning coordinator (agents connect
    /// here; engineers use the gRPC address); `None` serves no federated
    /// learning.
    #[serde(default)]
    pub federated: Option<SocketAddr>,
    /// How many authenticated gRPC connections the node holds open
    /// (`per_identity`, `total`) and TLS handshakes under way at once
    /// (`handshakes`); the defaults fit a consortium member.
    #[serde(default)]
    pub connections: yilian_identity::grpc::ConnectionLimits,
    /// How this node takes part in the consortium.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The read-only explorer web page (`[explorer]`), if served.
    #[serde(default)]
    pub explorer: Option<crate::explorer::ExplorerConfig>,
}

/// The `[cluster]` section: this member among its peers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The address the other members dial for this node (default: `listen`).
    pub advertise: Option<String>,
    /// The other members' addresses. A node whose data directory has no
    /// ledger yet and lists peers starts empty and waits to be added
    /// (`yilian admin add-member`), then catches up from them.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Dial another address for a peer's (tests route peers through a proxy).
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
    /// Raft heartbeat and election timeouts, in milliseconds.
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    /// Test-only fault: apply committed entries that fail validation (the
    /// other members must refuse to cosign them).
    #[serde(default)]
    pub test_accept_invalid: bool,
}

/// Command-line and environment overrides for a [`NodeConfig`].
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NodeOverrides {
    /// Network data directory.
    #[arg(long, env = "YILIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, e.g. 127.0.0.1:7400.
    #[arg(long, env = "YILIAN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics listen address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "YILIAN_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Node identity directory.
    #[arg(long, env = "YILIAN_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// Start the KMS sealed (unseal with `yilian kms unseal`).
    #[arg(long, env = "YILIAN_KMS_SEALED")]
    pub kms_sealed: bool,
    /// Make ZK proving keys by a single-party setup if there are none
    /// (forgeable: development only; production keys come from
    /// `yilian zk ceremony`).
    #[arg(long)]
    pub insecure_dev_setup: bool,
    /// The members' ZK ceremony transcript directory (default
    /// `<data_dir>/zk/ceremony`).
    #[arg(long, env = "YILIAN_ZK_CEREMONY")]
    pub zk_ceremony: Option<PathBuf>,
    /// Federated-learning (QUIC) listen address, e.g. 127.0.0.1:7401.
    #[arg(long, env = "YILIAN_FEDERATED")]
    pub federated: Option<SocketAddr>,
    /// Explorer web page address, e.g. 127.0.0.1:7480 (overrides `[explorer] listen`).
    #[arg(long, env = "YILIAN_EXPLORER")]
    pub explorer: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    identity: Option<PathBuf>,
    #[serde(default)]
    kms_sealed: bool,
    #[serde(default)]
    insecure_dev_setup: bool,
    zk_ceremony: Option<PathBuf>,
    federated: Option<SocketAddr>,
    #[serde(default)]
    cluster: ClusterConfig,
    #[serde(default)]
    connections: yilian_identity::grpc::ConnectionLimits,
    explorer: Option<crate::explorer::ExplorerConfig>,
}

impl NodeConfig {
    /// A node of the network in `data_dir`, serving gRPC on `listen` as
    /// `identity`, with nothing else on: no metrics, explorer or federated
    /// learning, an unsealed KMS, keys from the ceremony and no peers. Set
    /// the fields to turn the rest on.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        identity: impl Into<PathBuf>,
    ) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            listen,
            metrics: None,
            identity: identity.into(),
            kms_sealed: false,
            insecure_dev_setup: false,
            zk_ceremony: None,
            federated: None,
            connections: Default::default(),
            cluster: Default::default(),
            explorer: None,
        }
    }

    /// File, then environment and flags on top (clap merges those two).
    pub fn load(file: Option<&Path>, over: &NodeOverrides) -> Result<NodeConfig> {
        let f: FileConfig = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = over
            .data_dir
            .clone()
            .or(f.data_dir)
            .context("no data_dir: set it in the config file, --data-dir or YILIAN_DATA_DIR")?;
        Ok(NodeConfig {
            identity: over.identity.clone().or(f.identity).unwrap_or_else(|| {
                data_dir
                    .join("identities")
                    .join(crate::network::NODE_IDENTITY)
            }),
            listen: over
                .listen
                .or(f.listen)
                .unwrap_or_else(|| "127.0.0.1:7400".parse().expect("valid address")),
            metrics: over.metrics.or(f.metrics),
            kms_sealed: over.kms_sealed || f.kms_sealed,
            insecure_dev_setup: over.insecure_dev_setup || f.insecure_dev_setup,
            zk_ceremony: over.zk_ceremony.clone().or(f.zk_ceremony),
            federated: over.federated.or(f.federated),
            cluster: f.cluster,
            connections: f.connections,
            explorer: over
                .explorer
                .map(|listen| crate::explorer::ExplorerConfig { listen })
                .or(f.explorer),
            data_dir,
        })
    }
}

/// A node serving in the background of this process.
pub struct RunningNode {
    pub addr: SocketAddr,
    /// Where the federated-learning coordinator listens (QUIC), if it runs.
    pub federated: Option<SocketAddr>,
    pub ledger: Ledger,
    /// The explorer page, if this node serves it.
    pub explorer: Option<crate::explorer::Explorer>,
    data_dir: PathBuf,
    coordinator: Option<yilian_federated::coordinator::Coordinator>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningNode {
    /// The node's data directory (its ledger, KMS and ZK stores).
    pub fn ledger_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// Stops serving: in-flight requests get a few seconds to finish, then
    /// connections still open (idle clients) are dropped.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(c) = self.coordinator.take() {
            c.shutdown();
        }
        // Leave the consensus at once, whoever else still holds the ledger.
        self.ledger.shutdown().await;
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(3), &mut self.task).await {
            Ok(r) => r??,
            Err(_) => self.task.abort(),
        }
        Ok(())
    }

    /// Waits until the server ends (on its own or at ctrl-c), or until the
    /// ledger's storage fails: a member that can no longer write must not
    /// go on serving reads that silently fall behind, so the node exits
    /// with the cause, for its operator (or supervisor) to mend and restart.
    pub async fn wait(mut self) -> Result<()> {
        let halted = async {
            loop {
                if let Some(cause) = self.ledger.halted() {
                    return cause;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        };
        tokio::select! {
            r = &mut self.task => { r??; }
            cause = halted => {
                anyhow::bail!(
                    "the ledger in {} stopped taking writes: {cause}. Free space on that disk or \
                     repair it, then start the node again; it replays everything it acknowledged",
                    self.data_dir.display()
                );
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                if let Some(s) = self.shutdown.take() { let _ = s.send(()); }
                (&mut self.task).await??;
            }
        }
        Ok(())
    }
}

/// Opens the ledger and starts serving on `cfg.listen` (port 0 picks one).
pub async fn start(cfg: &NodeConfig) -> Result<RunningNode> {
    let identity = Identity::load(&cfg.identity)
        .with_context(|| format!("cannot load node identity from {}", cfg.identity.display()))?;
    let ledger_path = cfg.data_dir.join("ledger.redb");
    let joining = !ledger_path.exists();
    if joining && cfg.cluster.peers.is_empty() {
        anyhow::bail!(
            "no ledger at {} (run `yilian admin init-network --data {}` first, or list the \
             other members under [cluster] peers to join them)",
            ledger_path.display(),
            cfg.data_dir.display()
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let revocations = yilian_identity::tls::RevocationList::default();
    let defaults = yilian_ledger::raft::Timing::default();
    let advertise = cfg
        .cluster
        .advertise
        .clone()
        .unwrap_or_else(|| cfg.listen.to_string());
    let options = ClusterOptions {
        me: MemberName {
            org: identity.principal().org.clone(),
            name: identity.principal().name.clone(),
        },
        addr: advertise,
        bootstrap: !joining,
        connector: Some(Arc::new(IdentityConnector::new(
            identity.clone(),
            cfg.cluster.routes.clone(),
            revocations.clone(),
        ))),
        timing: yilian_ledger::raft::Timing {
            heartbeat_ms: cfg.cluster.heartbeat_ms.unwrap_or(defaults.heartbeat_ms),
            election_min_ms: cfg
                .cluster
                .election_min_ms
                .unwrap_or(defaults.election_min_ms),
            election_max_ms: cfg
                .cluster
                .election_max_ms
                .unwrap_or(defaults.election_max_ms),
        },
        accept_invalid: cfg.cluster.test_accept_invalid,
    };
    let ledger = Ledger::open_member(
        &ledger_path,
        identity.signing_key().clone(),
        revocations.clone(),
        options,
    )
    .with_context(|| format!("cannot open the ledger {}", ledger_path.display()))?;
    if let Some(addr) = cfg.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    // Sampled only for an exporter that will show them.
    let raft_gauges = cfg
        .metrics
        .map(|_| tokio::spawn(report_raft(ledger.clone())));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let incoming = yilian_identity::grpc::incoming_within(
        listener,
        &identity,
        revocations.clone(),
        cfg.connections,
    )?;
    let coordinator = match cfg.federated {
        Some(fl_addr) => Some(
            yilian_federated::coordinator::Coordinator::serve(
                fl_addr,
                identity.clone(),
                revocations,
                Some(ledger.clone()),
                &cfg.data_dir.join("federated"),
            )
            .await
            .with_context(|| format!("cannot start the federated coordinator on {fl_addr}"))?,
        ),
        None => None,
    };
    let federated = match &coordinator {
        Some(c) => Some(c.local_addr()?),
        None => None,
    };
    let node_key = identity.signing_key().clone();
    let (kms, kms_server) = if cfg.kms_sealed {
        yilian_kms::service::sealed(&cfg.data_dir, ledger.clone(), node_key)
    } else {
        yilian_kms::service::with_key_file(&cfg.data_dir, ledger.clone(), node_key)
            .context("cannot open the KMS")?
    };
    // Destroys grant-only keys whose grants have all ended (crypto-shredding).
    let sweeper = kms.spawn_sweeper(std::time::Duration::from_secs(60));
    // The ZK API: proving keys are made or loaded on first use, so start stays fast.
    let zk = yilian_zk::service::ZkService::open(
        &cfg.data_dir,
        ledger.clone(),
        &identity,
        kms.clone(),
        if cfg.insecure_dev_setup {
            yilian_zk::service::KeySource::InsecureDevSetup
        } else {
            yilian_zk::service::KeySource::Ceremony(
                cfg.zk_ceremony
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("zk").join("ceremony")),
            )
        },
    )
    .context("cannot open the ZK API")?;
    let ledger_server = LedgerService::new(ledger.clone()).into_server();
    let consortium_server = ConsortiumService::new(ledger.clone()).into_server();
    let zk_server = zk.into_server();
    let control_server = coordinator.as_ref().map(|c| c.control().into_server());
    let mut serving = vec![
        name_of(&ledger_server),
        name_of(&consortium_server),
        name_of(&kms_server),
        name_of(&zk_server),
    ];
    serving.extend(control_server.as_ref().map(name_of));
    // A sealed KMS answers only Unseal: it is not serving until operators
    // unseal it. The watch ends with the KMS, when the node stops.
    let kms_name = name_of(&kms_server);
    let mut sealed = kms.sealed_changes();
    let status = |serving: bool| {
        if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    let (health, health_server) = tonic_health::server::health_reporter();
    for &name in &serving {
        let up = name != kms_name || !*sealed.borrow_and_update();
        health.set_service_status(name, status(up)).await;
    }
    let kms_health = health.clone();
    tokio::spawn(async move {
        while sealed.changed().await.is_ok() {
            let up = !*sealed.borrow_and_update();
            kms_health.set_service_status(kms_name, status(up)).await;
        }
    });
    // Both reflection versions: grpcurl asks for v1, grpcio-reflection's
    // client for v1alpha. Each lists only what this node serves.
    serving.push(name_of(&health_server));
    let reflection = |own: &str| {
        serving.iter().chain([&own]).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(
                    yilian_ledger::service::pb::FILE_DESCRIPTOR_SET,
                )
                .register_encoded_file_descriptor_set(yilian_kms::service::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(yilian_zk::service::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(yilian_federated::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .context("cannot build the gRPC reflection service")?;
    let router = tonic::transport::Server::builder()
        // grpcurl and grpc_health_probe work against the node without .proto files.
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ledger_server)
        .add_service(consortium_server)
        .add_service(kms_server)
        .add_service(zk_server)
        // The engineer's control plane, when this node coordinates learning.
        .add_optional_service(control_server);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = rx.await;
        sweeper.abort();
        if let Some(g) = raft_gauges {
            g.abort();
        }
    }));
    tracing::info!(%addr, principal = %identity.principal(), size = ledger.len(), "node serving");
    if let Some(fl) = federated {
        tracing::info!(%fl, "federated coordinator serving over QUIC");
    }
    let explorer = match &cfg.explorer {
        Some(e) => {
            let rounds = coordinator.as_ref().map(|c| c.histories());
            let explorer = crate::explorer::serve(e.listen, ledger.clone(), rounds)
                .await
                .with_context(|| format!("cannot serve the explorer on {}", e.listen))?;
            tracing::info!(url = %explorer.url(), "explorer serving");
            Some(explorer)
        }
        None => None,
    };
    Ok(RunningNode {
        addr,
        federated,
        coordinator,
        explorer,
        ledger,
        data_dir: cfg.data_dir.clone(),
        shutdown: Some(tx),
        task,
    })
}

/// The gRPC name a service answers to, as the health service reports it.
fn name_of<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// The consensus state as gauges, once a second (docs/metrics.md).
async fn report_raft(ledger: Ledger) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = ledger.status();
        metrics::gauge!("yilian_raft_term").set(s.term as f64);
        metrics::gauge!("yilian_raft_leader").set(if s.is_leader { 1.0 } else { 0.0 });
        metrics::gauge!("yilian_raft_voters").set(s.voters.len() as f64);
        if let Some(ms) = s.last_contact_ms {
            metrics::gauge!("yilian_raft_last_contact_seconds").set(ms as f64 / 1000.0);
        }
    }
}
