//! A real ledger in a temp dir with a genesis entry and an admitted node,
//! and a KMS over it with a clock the test moves.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use yilian_identity::Role;
use yilian_kms::{Caller, Kms, LedgerAudit};
use yilian_ledger::{Ledger, Payload, Transaction};

pub fn key() -> SigningKey {
    SigningKey::from_bytes(&yilian_kms::crypto::random::<32>().unwrap())
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ledger: Ledger,
    pub authority: SigningKey,
    pub node: SigningKey,
    pub now: Arc<AtomicU64>,
    pub root: yilian_kms::Key32,
}

pub const T0: u64 = 1_800_000_000_000;

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let authority = key();
        let node = key();
        let ledger = Ledger::open(&dir.path().join("ledger.redb"), key()).unwrap();
        ledger
            .submit(
                Transaction::new(Payload::Genesis {
                    network: "test".into(),
                    authority: authority.verifying_key().to_bytes(),
                })
                .sign(&authority),
            )
            .await
            .unwrap();
        ledger
            .submit(
                Transaction::new(Payload::Admit {
                    org: "bank".into(),
                    role: Role::Member,
                    name: "node".into(),
                    public_key: node.verifying_key().to_bytes(),
                    serial: vec![1],
                    not_after_ms: u64::MAX,
                })
                .sign(&authority),
            )
            .await
            .unwrap();
        Env {
            dir,
            ledger,
            authority,
            node,
            now: Arc::new(AtomicU64::new(T0)),
            root: yilian_kms::crypto::random_key().unwrap(),
        }
    }

    /// Admits `k` on the ledger with `role`, as the admission authority does.
    pub async fn admit(&self, k: &SigningKey, role: Role) {
        self.ledger
            .submit(
                Transaction::new(Payload::Admit {
                    org: "test".into(),
                    role,
                    name: hex::encode(&k.verifying_key().to_bytes()[..4]),
                    public_key: k.verifying_key().to_bytes(),
                    serial: k.verifying_key().to_bytes()[..8].to_vec(),
                    not_after_ms: u64::MAX,
                })
                .sign(&self.authority),
            )
            .await
            .unwrap();
    }

    pub async fn revoke(&self, k: &SigningKey) {
        self.ledger
            .submit(
                Transaction::new(Payload::Revoke {
                    public_key: k.verifying_key().to_bytes(),
                    reason: "test".into(),
                })
                .sign(&self.authority),
            )
            .await
            .unwrap();
    }

    pub fn clock(&self) -> yilian_kms::Clock {
        let now = self.now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    }

    pub fn set_now(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }

    pub fn kms_path(&self) -> std::path::PathBuf {
        self.dir.path().join("kms.redb")
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
