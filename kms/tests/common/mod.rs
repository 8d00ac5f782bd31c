//! A real ledger in a temp dir with a genesis entry and an admitted node,
//! and a KMS over it with a clock the test moves.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use yilian_identity::Role;
use yilian_kms::{Caller, Kms, LedgerAudit};
use yilian_ledger::Ledger;
use yilian_testkit::Network;

pub fn key() -> SigningKey {
    SigningKey::from_bytes(&yilian_kms::crypto::random::<32>().unwrap())
}

pub struct Env {
    pub net: Network,
    pub ledger: Ledger,
    pub authority: SigningKey,
    pub node: SigningKey,
    pub now: Arc<AtomicU64>,
    pub root: yilian_kms::Key32,
}

pub const T0: u64 = 1_800_000_000_000;

impl Env {
    pub async fn new() -> Env {
        let net = Network::new("test").await;
        Env {
            ledger: net.ledger.clone(),
            authority: net.authority(),
            node: net.node.signing_key().clone(),
            net,
            now: Arc::new(AtomicU64::new(T0)),
            root: yilian_kms::crypto::random_key().unwrap(),
        }
    }

    /// Admits `k` on the ledger with `role`, as the admission authority does.
    pub async fn admit(&self, k: &SigningKey, role: Role) {
        self.net.admit_key(k, role).await;
    }

    pub async fn revoke(&self, k: &SigningKey) {
        self.net.revoke(k.verifying_key().to_bytes()).await;
    }

    pub fn clock(&self) -> yilian_kms::Clock {
        let now = self.now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    }

    pub fn set_now(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }

    pub fn kms_path(&self) -> std::path::PathBuf {
        self.net.path("kms.redb")
    }

    pub fn open(&self) -> Kms<LedgerAudit> {
        open_at(&self.kms_path(), self)
    }
}

pub fn open_at(path: &Path, env: &Env) -> Kms<LedgerAudit> {
    Kms::open(
        path,
        env.root.clone(),
        LedgerAudit::new(env.ledger.clone(), env.node.clone()),
        env.clock(),
    )
    .unwrap()
}

pub fn caller(k: &SigningKey, role: Role) -> Caller {
    Caller {
        account: k.verifying_key().to_bytes(),
        role,
    }
}
