//! The durable log end to end (without a network): group commit, restart,
//! refusals that change nothing, and corrupt files.

use ed25519_dalek::SigningKey;
use yilian_ledger::bundle::{BUNDLE_VERSION, ConsistencyBundle, InclusionBundle};
use yilian_ledger::{Ledger, LedgerError, Payload, Role, Transaction};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn admit(who: &SigningKey, role: Role) -> Payload {
    Payload::Admit {
        org: "org".into(),
        role,
        name: format!("id-{}", who.to_bytes()[0]),
        public_key: who.verifying_key().to_bytes(),
        serial: vec![who.to_bytes()[0]],
        not_after_ms: u64::MAX,
    }
}

fn genesis(ledger: &Ledger, authority: &SigningKey) {
    let g = Payload::Genesis {
        network: "test".into(),
        authority: authority.verifying_key().to_bytes(),
    };
    ledger
        .submit_blocking(Transaction::new(g).sign(authority))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let (authority, log, member) = (key(1), key(2), key(3));
    let head;
    {
        let ledger = Ledger::open(&path, log.clone()).unwrap();
        let g = Payload::Genesis {
            network: "test".into(),
            authority: authority.verifying_key().to_bytes(),
        };
        ledger
            .submit(Transaction::new(g).sign(&authority))
            .await
            .unwrap();
        ledger
            .submit(Transaction::new(admit(&member, Role::Member)).sign(&authority))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let ledger = ledger.clone();
            let member = member.clone();
            tasks.push(tokio::spawn(async move {
                let p = Payload::Note {
                    topic: "n".into(),
                    body: i.to_string(),
                };
                ledger
                    .submit(Transaction::new(p).sign(&member))
                    .await
                    .unwrap()
            }));
        }
        let mut indices = Vec::new();
        for t in tasks {
            indices.push(t.await.unwrap().index);
        }
        indices.sort();
        assert_eq!(indices, (2..502).collect::<Vec<u64>>());
        head = ledger.tree_head();
        assert_eq!(head.tree_size, 502);
    }
    // Reopening replays every entry to the same signed head.
    let ledger = Ledger::open(&path, log).unwrap();
    assert_eq!(ledger.tree_head().root_hash, head.root_hash);
    assert_eq!(ledger.len(), 502);
    let e = ledger.entry(501).unwrap();
    assert!(matches!(e.tx.payload, Payload::Note { .. }));
}

#[test]
fn refused_transactions_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, log, verifier) = (key(1), key(2), key(4));
    let ledger = Ledger::open(&dir.path().join("l.redb"), log).unwrap();
    genesis(&ledger, &authority);
    ledger
        .submit_blocking(Transaction::new(admit(&verifier, Role::Verifier)).sign(&authority))
        .unwrap();
    let before = ledger.tree_head();
    let reward = Payload::Reward {
        task_id: "t".into(),
        round: 0,
        account: verifier.verifying_key().to_bytes(),
        amount: 5,
    };
    // Wrong role.
    let err = ledger
        .submit_blocking(Transaction::new(reward.clone()).sign(&verifier))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::RoleNotAllowed {
                role: Role::Verifier,
                ..
            }
        ),
        "{err}"
    );
    // Bad signature.
    let mut forged = Transaction::new(Payload::Note {
        topic: "a".into(),
        body: "b".into(),
    })
    .sign(&verifier);
    forged.signature[0] ^= 1;
    assert!(matches!(
        ledger.submit_blocking(forged),
        Err(LedgerError::BadSignature)
    ));
    // Unknown signer.
    let err = ledger
        .submit_blocking(
            Transaction::new(Payload::Note {
                topic: "a".into(),
                body: "b".into(),
            })
            .sign(&key(99)),
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::UnknownSigner(_)));
    // Unknown entry.
    assert!(matches!(
        ledger.entry(99),
        Err(LedgerError::EntryNotFound { index: 99, size: 2 })
    ));
    assert_eq!(ledger.tree_head(), before);
    assert_eq!(ledger.balance(&verifier.verifying_key().to_bytes()), 0);
}

#[test]
fn resubmitting_a_reward_credits_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, log, member, device) = (key(1), key(2), key(3), key(5));
    let ledger = Ledger::open(&dir.path().join("l.redb"), log).unwrap();
    genesis(&ledger, &authority);
    ledger
        .submit_blocking(Transaction::new(admit(&member, Role::Member)).sign(&authority))
        .unwrap();
    ledger
        .submit_blocking(Transaction::new(admit(&device, Role::Device)).sign(&authority))
        .unwrap();
    let reward = Transaction::new(Payload::Reward {
        task_id: "t".into(),
        round: 1,
        account: device.verifying_key().to_bytes(),
        amount: 7,
    })
    .sign(&member);
    let first = ledger.submit_blocking(reward.clone()).unwrap();
    let again = ledger.submit_blocking(reward).unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.index, again.index);
    assert_eq!(ledger.balance(&device.verifying_key().to_bytes()), 7);
    assert_eq!(ledger.len(), 4);
}

#[test]
fn proofs_from_the_store_verify_offline_and_catch_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, log, member) = (key(1), key(2), key(3));
    let ledger = Ledger::open(&dir.path().join("l.redb"), log.clone()).unwrap();
    genesis(&ledger, &authority);
    ledger
        .submit_blocking(Transaction::new(admit(&member, Role::Member)).sign(&authority))
        .unwrap();
    let old = ledger.tree_head();
    for i in 0..10 {
        ledger
            .submit_blocking(
                Transaction::new(Payload::Note {
                    topic: "n".into(),
                    body: i.to_string(),
                })
                .sign(&member),
            )
            .unwrap();
    }
    let head = ledger.tree_head();
    let log_key = log.verifying_key().to_bytes();
    let bundle = InclusionBundle {
        version: BUNDLE_VERSION,
        entry: ledger.entry_bytes(5).unwrap(),
        transaction: None,
        proof: ledger.inclusion_proof(5, head.tree_size).unwrap(),
        tree_head: head.clone(),
        checkpoint: ledger.cosigned_head(),
    };
    // A ledger on its own is a consortium of one: its own cosignature is the quorum.
    let members = ledger.cosigners();
    assert_eq!(members.len(), 1);
    bundle.verify_cosigned(&members, 1).unwrap();
    assert!(matches!(
        bundle.verify_cosigned(&members, 2),
        Err(LedgerError::TooFewCosignatures { got: 1, need: 2 })
    ));
    let json = serde_json::to_string(&bundle).unwrap();
    let back: InclusionBundle = serde_json::from_str(&json).unwrap();
    back.verify(&log_key).unwrap();
    let mut tampered = back.clone();
    tampered.entry[10] ^= 1;
    assert!(tampered.verify(&log_key).is_err());
    let mut wrong_head = back.clone();
    wrong_head.tree_head.root_hash[0] ^= 1;
    assert!(matches!(
        wrong_head.verify(&log_key),
        Err(LedgerError::BadTreeHead)
    ));
    assert!(matches!(
        back.verify(&key(7).verifying_key().to_bytes()),
        Err(LedgerError::UntrustedLogKey)
    ));
    let c = ConsistencyBundle {
        version: BUNDLE_VERSION,
        proof: ledger
            .consistency_proof(old.tree_size, head.tree_size)
            .unwrap(),
        old_head: old,
        new_head: head,
        old_checkpoint: None,
        new_checkpoint: None,
    };
    c.verify(&log_key).unwrap();
}

#[test]
fn a_corrupt_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    {
        let ledger = Ledger::open(&path, key(2)).unwrap();
        genesis(&ledger, &key(1));
    }
    std::fs::write(&path, b"this is not a redb file at all, just some bytes").unwrap();
    let err = Ledger::open(&path, key(2)).unwrap_err();
    assert!(
        matches!(err, LedgerError::Storage(_) | LedgerError::Corrupt(_)),
        "{err}"
    );
}

/// The node's own transactions skip only the signature check: they are
/// group-committed with everyone else's, still refused when the signer is
/// not an active member, idempotent, and verify like any other entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_transactions_share_commits_and_still_pass_the_state_checks() {
    use yilian_ledger::OwnTransaction;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let (authority, log, node, stranger) = (key(1), key(2), key(3), key(4));
    let ledger = Ledger::open(&path, log.clone()).unwrap();
    let g = Payload::Genesis {
        network: "test".into(),
        authority: authority.verifying_key().to_bytes(),
    };
    ledger
        .submit(Transaction::new(g).sign(&authority))
        .await
        .unwrap();
    ledger
        .submit(Transaction::new(admit(&node, Role::Member)).sign(&authority))
        .await
        .unwrap();
    let note = |i: u32| Payload::Note {
        topic: "own".into(),
        body: i.to_string(),
    };
    let refused = ledger
        .submit_own(OwnTransaction::sign(Transaction::new(note(0)), &stranger))
        .await;
    assert!(matches!(refused, Err(LedgerError::UnknownSigner(_))));
    assert_eq!(ledger.len(), 2);

    let commits = ledger.commits();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let (ledger, node) = (ledger.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            let own = OwnTransaction::sign(Transaction::new(note(i)), &node);
            let id = own.id();
            assert_eq!(id, own.transaction().id());
            let r = ledger.submit_own(own).await.unwrap();
            assert_eq!(r.tx_id, id);
            r
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ledger.len(), 202);
    assert!(
        ledger.commits() - commits < 200,
        "200 concurrent submissions took {} commits",
        ledger.commits() - commits
    );
    // Resubmitting one of them is recognised, not appended again.
    let entry = ledger.entry(2).unwrap();
    let again = ledger.submit(entry.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.index, 2);
    for (_, stx) in ledger.entries(0, ledger.len()).unwrap() {
        stx.verify_signature().unwrap();
    }
    let head = ledger.tree_head();
    drop(ledger);
    let reopened = Ledger::open(&path, log).unwrap();
    assert_eq!(reopened.tree_head().root_hash, head.root_hash);
}

#[test]
fn entries_are_found_by_kind_and_key_without_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    let (authority, member) = (key(1), key(2));
    {
        let ledger = Ledger::open(&path, key(9)).unwrap();
        genesis(&ledger, &authority);
        ledger
            .submit_blocking(Transaction::new(admit(&member, Role::Member)).sign(&authority))
            .unwrap();
        for i in 0..6u32 {
            let p = if i % 2 == 0 {
                Payload::Reward {
                    task_id: "t".into(),
                    round: i,
                    account: member.verifying_key().to_bytes(),
                    amount: 1,
                }
            } else {
                Payload::Note {
                    topic: "n".into(),
                    body: i.to_string(),
                }
            };
            ledger
                .submit_blocking(Transaction::new(p).sign(&member))
                .unwrap();
        }
        let notes = ledger.indexed("note", b"", 0, 100).unwrap();
        assert_eq!(notes, vec![3, 5, 7]);
        assert_eq!(ledger.indexed("genesis", b"", 0, 10).unwrap(), vec![0]);
        let rewards = ledger
            .indexed("reward", &member.verifying_key().to_bytes(), 0, 100)
            .unwrap();
        assert_eq!(rewards, vec![2, 4, 6]);
        assert_eq!(ledger.indexed("reward", b"", 3, 1).unwrap(), vec![4]);
        assert!(
            ledger
                .indexed("reward", &[0; 32], 0, 100)
                .unwrap()
                .is_empty()
        );
    }
    // The index survives reopening.
    let ledger = Ledger::open(&path, key(9)).unwrap();
    assert_eq!(ledger.indexed("note", b"", 0, 100).unwrap(), vec![3, 5, 7]);
}
