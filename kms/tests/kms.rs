//! The KMS engine end to end over real storage and the real ledger.

mod common;

use std::sync::Arc;

use common::{Env, T0, caller, key};
use yilian_identity::Role;
use yilian_kms::audit::Page;
use yilian_kms::envelope::Envelope;
use yilian_kms::{AuditLog, GrantTerms, KeyKind, KmsError, Operation};

#[tokio::test]
async fn data_keys_encrypt_decrypt_and_precise_refusals() {
    let env = Env::new().await;
    let kms = env.open();
    let alice = key();
    let owner = caller(&alice, Role::Member);
    let info = kms
        .create_key(&owner, "payroll", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    assert_eq!(info.latest_version, 1);
    assert!(matches!(
        kms.create_key(&owner, "payroll", KeyKind::Aes256Gcm, false)
            .await,
        Err(KmsError::KeyExists(_))
    ));
    assert!(matches!(
        kms.create_key(&owner, "bad/name", KeyKind::Aes256Gcm, false)
            .await,
        Err(KmsError::BadKeyName(_))
    ));

    let dk = kms
        .generate_data_key(&owner, "payroll", b"file-1", None)
        .await
        .unwrap();
    let unwrapped = kms
        .decrypt(&owner, &dk.wrapped, b"file-1", None)
        .await
        .unwrap();
    assert_eq!(unwrapped.expose(), dk.plaintext.expose());
    let dk2 = kms
        .generate_data_key(&owner, "payroll", b"file-1", None)
        .await
        .unwrap();
    assert_ne!(
        dk.plaintext.expose(),
        dk2.plaintext.expose(),
        "data keys are fresh"
    );

    let ct = kms
        .encrypt(&owner, "payroll", b"salary: 100", b"ctx", None)
        .await
        .unwrap();
    assert_eq!(
        kms.decrypt(&owner, &ct, b"ctx", None)
            .await
            .unwrap()
            .expose(),
        b"salary: 100"
    );

    // Bad input: each gets its own error.
    let mallory = caller(&key(), Role::Member);
    assert!(matches!(
        kms.decrypt(&mallory, &ct, b"ctx", None).await,
        Err(KmsError::NotOwner(_))
    ));
    assert!(matches!(
        kms.encrypt(&owner, "nope", b"x", b"", None).await,
        Err(KmsError::UnknownKey(_))
    ));
    assert!(matches!(
        kms.decrypt(&owner, &ct, b"other", None).await,
        Err(KmsError::AuthenticationFailed)
    ));
    let mut tampered = ct.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(matches!(
        kms.decrypt(&owner, &tampered, b"ctx", None).await,
        Err(KmsError::AuthenticationFailed)
    ));
    assert!(matches!(
        kms.decrypt(&owner, &ct[..10], b"ctx", None).await,
        Err(KmsError::MalformedEnvelope(_))
    ));
    let mut wrong_version = Envelope::decode(&ct).unwrap();
    wrong_version.key_version = 9;
    assert!(matches!(
        kms.decrypt(&owner, &wrong_version.encode(), b"ctx", None)
            .await,
        Err(KmsError::UnknownVersion { .. })
    ));
    let trustee = caller(&key(), Role::Trustee);
    assert!(matches!(
        kms.create_key(&trustee, "t-key", KeyKind::Aes256Gcm, false)
            .await,
        Err(KmsError::WrongRole { .. })
    ));
    assert!(matches!(
        kms.rotate(&mallory, "payroll").await,
        Err(KmsError::NotOwner(_))
    ));
    let auditor = caller(&alice, Role::Auditor);
    assert!(matches!(
        kms.decrypt(&auditor, &ct, b"ctx", None).await,
        Err(KmsError::WrongRole { .. })
    ));
    // Refusals changed nothing.
    assert_eq!(kms.key_info(&owner, "payroll").unwrap().latest_version, 1);

    // Every operation, allowed or refused, is on the ledger and verifies.
    let trail = kms
        .audit_log()
        .trail(&owner.account, Some("payroll"), Page::new(0, 0))
        .unwrap()
        .entries;
    // Paged two at a time, the trail is the same, in order.
    let mut paged = Vec::new();
    let mut from = Some(0);
    while let Some(f) = from {
        let page = kms
            .audit_log()
            .trail(&owner.account, Some("payroll"), Page::new(f, 2))
            .unwrap();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries.into_iter().map(|a| a.index));
        from = page.next;
    }
    assert_eq!(paged, trail.iter().map(|a| a.index).collect::<Vec<_>>());
    assert!(trail.len() > 2, "the paging above crossed pages");
    let ops: Vec<(&str, &str)> = trail
        .iter()
        .map(|a| (a.entry.operation.as_str(), a.entry.outcome.as_str()))
        .collect();
    assert!(ops.contains(&("create-key", "ok")));
    assert!(ops.contains(&("generate-data-key", "ok")));
    assert!(ops.contains(&("decrypt", "denied")));
    assert!(ops.contains(&("decrypt", "tampered")));
    assert!(ops.contains(&("rotate", "denied")));
    assert!(
        trail
            .iter()
            .all(|a| a.bundle.verify(&env.ledger.tree_head().log_key).is_ok())
    );
}

#[tokio::test]
async fn rotation_rewrap_and_retirement() {
    let env = Env::new().await;
    let kms = env.open();
    let owner = caller(&key(), Role::DataHolder);
    kms.create_key(&owner, "records", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let v1 = kms
        .encrypt(&owner, "records", b"old", b"c", None)
        .await
        .unwrap();
    assert_eq!(
        kms.rotate(&owner, "records").await.unwrap().latest_version,
        2
    );
    let v2 = kms
        .encrypt(&owner, "records", b"new", b"c", None)
        .await
        .unwrap();
    assert_eq!(Envelope::decode(&v1).unwrap().key_version, 1);
    assert_eq!(Envelope::decode(&v2).unwrap().key_version, 2);
    assert_eq!(
        kms.decrypt(&owner, &v1, b"c", None).await.unwrap().expose(),
        b"old"
    );
    let moved = kms.rewrap(&owner, &v1, b"c").await.unwrap();
    assert_eq!(Envelope::decode(&moved).unwrap().key_version, 2);
    assert!(matches!(
        kms.set_min_decryption_version(&owner, "records", 3).await,
        Err(KmsError::BadMinVersion { .. })
    ));
    kms.set_min_decryption_version(&owner, "records", 2)
        .await
        .unwrap();
    assert!(matches!(
        kms.decrypt(&owner, &v1, b"c", None).await,
        Err(KmsError::VersionRetired {
            version: 1,
            min: 2,
            ..
        })
    ));
    assert!(matches!(
        kms.rewrap(&owner, &v1, b"c").await,
        Err(KmsError::VersionRetired { .. })
    ));
    assert_eq!(
        kms.decrypt(&owner, &moved, b"c", None)
            .await
            .unwrap()
            .expose(),
        b"old"
    );
    // Retirement cannot be undone.
    assert!(matches!(
        kms.set_min_decryption_version(&owner, "records", 1).await,
        Err(KmsError::BadMinVersion { .. })
    ));
    // Survives a restart (state and material are at rest under the root key).
    drop(kms);
    let kms = env.open();
    assert_eq!(
        kms.key_info(&owner, "records")
            .unwrap()
            .min_decryption_version,
        2
    );
    assert_eq!(
        kms.decrypt(&owner, &v2, b"c", None).await.unwrap().expose(),
        b"new"
    );
}

#[tokio::test]
async fn hotel_door_key_lives_for_the_stay_then_is_shredded() {
    let env = Env::new().await;
    let kms = env.open();
    let hotel = caller(&key(), Role::Member);
    let guest_key = key();
    env.admit(&guest_key, Role::Device).await;
    let guest = caller(&guest_key, Role::Device);
    let checkin = T0 + 1_000;
    let checkout = T0 + 3 * 86_400_000;
    kms.create_key(&hotel, "door-301", KeyKind::Aes256Gcm, true)
        .await
        .unwrap();
    let door_code = kms
        .encrypt(&hotel, "door-301", b"open-301", b"room-301", None)
        .await
        .unwrap();
    let g = kms
        .grant(
            &hotel,
            "door-301",
            GrantTerms {
                reader: guest.account,
                not_before_ms: checkin,
                not_after_ms: checkout,
                max_uses: 0,
                operations: vec![Operation::Decrypt],
                required_context: Some(b"room-301".to_vec()),
            },
        )
        .await
        .unwrap();
    let gid = Some(g.grant_id.as_str());
    // Before check-in.
    assert!(matches!(
        kms.decrypt(&guest, &door_code, b"room-301", gid).await,
        Err(KmsError::GrantNotYetValid { .. })
    ));
    env.set_now(checkin + 3_600_000);
    assert_eq!(
        kms.decrypt(&guest, &door_code, b"room-301", gid)
            .await
            .unwrap()
            .expose(),
        b"open-301"
    );
    assert_eq!(
        kms.decrypt(&guest, &door_code, b"room-301", gid)
            .await
            .unwrap()
            .expose(),
        b"open-301"
    );
    assert!(matches!(
        kms.decrypt(&guest, &door_code, b"room-302", gid).await,
        Err(KmsError::WrongContext(_))
    ));
    assert!(matches!(
        kms.encrypt(&guest, "door-301", b"x", b"room-301", gid)
            .await,
        Err(KmsError::OperationNotGranted { .. })
    ));
    assert!(matches!(
        kms.decrypt(&guest, &door_code, b"room-301", None).await,
        Err(KmsError::NotOwner(_))
    ));
    // A decrypt grant does not let the node's prover open the key, nor the
    // other way round (a ZK query grant never yields the key).
    assert!(matches!(
        kms.open_to_prove(&guest, &door_code, b"room-301", gid)
            .await,
        Err(KmsError::OperationNotGranted { .. })
    ));
    let prove = kms
        .grant(
            &hotel,
            "door-301",
            GrantTerms {
                reader: guest.account,
                not_before_ms: checkin,
                not_after_ms: checkout,
                max_uses: 1,
                operations: vec![Operation::Prove],
                required_context: Some(b"room-301".to_vec()),
            },
        )
        .await
        .unwrap();
    let pid = Some(prove.grant_id.as_str());
    assert!(matches!(
        kms.decrypt(&guest, &door_code, b"room-301", pid).await,
        Err(KmsError::OperationNotGranted { .. })
    ));
    assert_eq!(
        kms.open_to_prove(&guest, &door_code, b"room-301", pid)
            .await
            .unwrap()
            .expose(),
        b"open-301"
    );
    assert!(matches!(
        kms.open_to_prove(&guest, &door_code, b"room-301", pid)
            .await,
        Err(KmsError::GrantExhausted { .. })
    ));
    let other_guest = caller(&key(), Role::Device);
    assert!(matches!(
        kms.decrypt(&other_guest, &door_code, b"room-301", gid)
            .await,
        Err(KmsError::NotGrantee(_))
    ));
    assert_eq!(
        kms.grant_record(&g.grant_id).unwrap().uses,
        2,
        "refusals are not counted"
    );
    // After checkout.
    env.set_now(checkout);
    assert!(matches!(
        kms.decrypt(&guest, &door_code, b"room-301", gid).await,
        Err(KmsError::GrantExpired { .. })
    ));
    assert_eq!(kms.sweep().await.unwrap(), vec!["door-301".to_string()]);
    assert!(kms.key_info(&hotel, "door-301").unwrap().destroyed);
    assert!(matches!(
        kms.decrypt(&hotel, &door_code, b"room-301", None).await,
        Err(KmsError::KeyDestroyed(_))
    ));
    // Shredding is durable and audited.
    drop(kms);
    let kms = env.open();
    assert!(matches!(
        kms.decrypt(&hotel, &door_code, b"room-301", None).await,
        Err(KmsError::KeyDestroyed(_))
    ));
    let trail = kms
        .audit_log()
        .trail(&hotel.account, Some("door-301"), Page::new(0, 0))
        .unwrap()
        .entries;
    assert!(
        trail
            .iter()
            .any(|a| a.entry.operation == "destroy" && a.entry.outcome == "ok")
    );
    assert!(
        trail
            .iter()
            .any(|a| a.entry.operation == "decrypt" && a.entry.outcome == "grant-expired")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_use_grant_is_used_exactly_once_under_contention_and_restart() {
    let env = Env::new().await;
    let kms = env.open();
    let owner = caller(&key(), Role::Member);
    let reader_key = key();
    env.admit(&reader_key, Role::Device).await;
    let reader = caller(&reader_key, Role::Device);
    kms.create_key(&owner, "secret", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let ct = kms
        .encrypt(&owner, "secret", b"burn after reading", b"", None)
        .await
        .unwrap();
    let g = kms
        .grant(
            &owner,
            "secret",
            GrantTerms {
                reader: reader.account,
                not_before_ms: 0,
                not_after_ms: u64::MAX,
                max_uses: 1,
                operations: vec![Operation::Decrypt],
                required_context: None,
            },
        )
        .await
        .unwrap();
    let ct = Arc::new(ct);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (kms, reader, ct, gid) = (kms.clone(), reader.clone(), ct.clone(), g.grant_id.clone());
        tasks.push(tokio::spawn(async move {
            kms.decrypt(&reader, &ct, b"", Some(&gid)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(pt) => {
                assert_eq!(pt.expose(), b"burn after reading");
                ok += 1;
            }
            Err(KmsError::GrantExhausted { max_uses: 1, .. }) => {}
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert_eq!(ok, 1);
    drop(kms);
    let kms = env.open();
    assert!(matches!(
        kms.decrypt(&reader, &ct, b"", Some(&g.grant_id)).await,
        Err(KmsError::GrantExhausted { .. })
    ));
    assert_eq!(kms.grant_record(&g.grant_id).unwrap().uses, 1);
    // Revocation, and its precise errors.
    let g2 = kms
        .grant(
            &owner,
            "secret",
            GrantTerms {
                reader: reader.account,
                not_before_ms: 0,
                not_after_ms: u64::MAX,
                max_uses: 5,
                operations: vec![Operation::Decrypt],
                required_context: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        kms.revoke_grant(&reader, &g2.grant_id).await,
        Err(KmsError::WrongRole { .. })
    ));
    assert!(matches!(
        kms.revoke_grant(&caller(&key(), Role::Member), &g2.grant_id)
            .await,
        Err(KmsError::NotOwner(_))
    ));
    kms.revoke_grant(&owner, &g2.grant_id).await.unwrap();
    assert!(matches!(
        kms.revoke_grant(&owner, &g2.grant_id).await,
        Err(KmsError::GrantRevoked(_))
    ));
    assert!(matches!(
        kms.revoke_grant(&owner, "g-none").await,
        Err(KmsError::UnknownGrant(_))
    ));
    assert!(matches!(
        kms.decrypt(&reader, &ct, b"", Some(&g2.grant_id)).await,
        Err(KmsError::GrantRevoked(_))
    ));
    assert!(matches!(
        kms.decrypt(&reader, &ct, b"", Some("g-none")).await,
        Err(KmsError::UnknownGrant(_))
    ));
    let bad_terms = GrantTerms {
        reader: reader.account,
        not_before_ms: 10,
        not_after_ms: 5,
        max_uses: 1,
        operations: vec![Operation::Decrypt],
        required_context: None,
    };
    assert!(matches!(
        kms.grant(&owner, "secret", bad_terms).await,
        Err(KmsError::BadGrant(_))
    ));
    // A reader the network never admitted (a mistyped key) is refused, and
    // nothing is granted.
    let grants = kms.grants_for_key("secret").unwrap().len();
    let stranger = GrantTerms {
        reader: key().verifying_key().to_bytes(),
        not_before_ms: 0,
        not_after_ms: u64::MAX,
        max_uses: 1,
        operations: vec![Operation::Decrypt],
        required_context: None,
    };
    let e = kms.grant(&owner, "secret", stranger).await.unwrap_err();
    assert!(matches!(e, KmsError::NotAdmitted(_)), "{e:?}");
    assert!(e.to_string().contains("never admitted"), "{e}");
    assert_eq!(kms.grants_for_key("secret").unwrap().len(), grants);
}

#[tokio::test]
async fn escrow_two_of_three_and_recovery_by_two_trustees() {
    let env = Env::new().await;
    let kms = env.open();
    let owner_key = key();
    let owner = caller(&owner_key, Role::Member);
    let trustees: Vec<_> = (0..3).map(|_| key()).collect();
    let t_pub: Vec<[u8; 32]> = trustees
        .iter()
        .map(|t| t.verifying_key().to_bytes())
        .collect();
    let tc: Vec<_> = trustees.iter().map(|t| caller(t, Role::Trustee)).collect();
    for t in &trustees[..2] {
        env.admit(t, Role::Trustee).await;
    }
    let recipient_key = key();
    env.admit(&recipient_key, Role::Member).await;
    let recipient = caller(&recipient_key, Role::Member);
    kms.create_key(&owner, "vault", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let ct = kms
        .encrypt(&owner, "vault", b"the family silver", b"will", None)
        .await
        .unwrap();

    assert!(matches!(
        kms.escrow(&tc[0], "vault", &t_pub, 2, false).await,
        Err(KmsError::WrongRole { .. })
    ));
    // Trustees must be admitted, with the trustee role: one never admitted,
    // then one admitted as a verifier, is refused by name, and nothing is escrowed.
    let not_admitted = kms.escrow(&owner, "vault", &t_pub, 2, false).await;
    assert!(
        matches!(
            &not_admitted,
            Err(KmsError::TrusteeNotAdmitted { role: None, .. })
        ),
        "{not_admitted:?}"
    );
    assert!(not_admitted.unwrap_err().to_string().contains(&format!(
        "trustee {} is not an admitted identity",
        hex::encode(t_pub[2])
    )));
    env.admit(&trustees[2], Role::Verifier).await;
    let wrong_role = kms.escrow(&owner, "vault", &t_pub, 2, false).await;
    assert!(wrong_role.unwrap_err().to_string().contains(
        "is admitted as verifier, not as a trustee; name identities admitted with the trustee role"
    ));
    assert!(matches!(
        kms.escrow_package(&owner, "vault"),
        Err(KmsError::UnknownEscrow(_))
    ));
    let t_pub = {
        let mut t = t_pub;
        let third = key();
        env.admit(&third, Role::Trustee).await;
        t[2] = third.verifying_key().to_bytes();
        t
    };
    let mut trustees = trustees;
    assert!(matches!(
        kms.escrow(&owner, "vault", &t_pub, 4, false).await,
        Err(KmsError::BadEscrowParameters { .. })
    ));
    assert!(matches!(
        kms.escrow(&owner, "vault", &t_pub, 2, true).await,
        Err(KmsError::UnknownEscrow(_))
    ));
    let first = kms.escrow(&owner, "vault", &t_pub, 2, false).await.unwrap();
    // A second escrow never silently replaces a working one.
    assert!(matches!(
        kms.escrow(&owner, "vault", &t_pub, 3, false).await,
        Err(KmsError::EscrowExists(_))
    ));
    assert_eq!(kms.escrow_package(&owner, "vault").unwrap(), first);
    // A recovery opened under the first escrow is voided by its replacement:
    // its approvals would be checked against shares that no longer exist.
    let stale = kms
        .start_recovery(&owner, "vault", recipient.account)
        .await
        .unwrap();
    // Replacing is explicit, and the new set (all admitted trustees) can recover.
    trustees[2] = key();
    env.admit(&trustees[2], Role::Trustee).await;
    let t_pub: Vec<[u8; 32]> = trustees
        .iter()
        .map(|t| t.verifying_key().to_bytes())
        .collect();
    let tc: Vec<_> = trustees.iter().map(|t| caller(t, Role::Trustee)).collect();
    let pkg = kms.escrow(&owner, "vault", &t_pub, 2, true).await.unwrap();
    assert_ne!(pkg, first);
    assert!(matches!(
        kms.recovery(&stale.recovery_id),
        Err(KmsError::UnknownRecovery(_))
    ));
    // Each trustee checks its share against the Feldman commitments.
    let shares: Vec<_> = trustees
        .iter()
        .map(|t| pkg.open_share(t).unwrap())
        .collect();
    assert_eq!(kms.escrow_package(&tc[1], "vault").unwrap(), pkg);

    // A read-only identity (an auditor) is never a recovery's recipient.
    let auditor = key();
    env.admit(&auditor, Role::Auditor).await;
    let refused = kms
        .start_recovery(&tc[0], "vault", auditor.verifying_key().to_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, KmsError::WrongRole { role, .. } if role == "auditor"),
        "{refused}"
    );
    let rec = kms
        .start_recovery(&tc[0], "vault", recipient.account)
        .await
        .unwrap();
    let rid = rec.recovery_id.as_str();
    // The recovery shows to its recipient, the owner and this escrow's
    // trustees; a trustee of no escrow of this key is refused.
    for who in [&recipient, &owner, &tc[1]] {
        assert_eq!(kms.recovery_for(who, rid).unwrap().nonce, rec.nonce);
    }
    let outsider_key = key();
    env.admit(&outsider_key, Role::Trustee).await;
    let outsider = caller(&outsider_key, Role::Trustee);
    assert!(matches!(
        kms.recovery_for(&outsider, rid),
        Err(KmsError::NotRecipient(_))
    ));
    let sign = |i: usize, rid: &str, nonce: &[u8; 32]| {
        yilian_kms::escrow::sign_approval(
            &trustees[i],
            rid,
            "vault",
            &recipient.account,
            nonce,
            shares[i].0.expose(),
        )
    };
    // Refusals: wrong role, not a trustee, forged, replayed, malformed share.
    let sig0 = sign(0, rid, &rec.nonce);
    let outsider = key();
    assert!(matches!(
        kms.approve_recovery(&owner, rid, shares[0].0.expose(), &sig0)
            .await,
        Err(KmsError::WrongRole { .. })
    ));
    assert!(matches!(
        kms.approve_recovery(
            &caller(&outsider, Role::Trustee),
            rid,
            shares[0].0.expose(),
            &sig0
        )
        .await,
        Err(KmsError::NotTrustee(_))
    ));
    assert!(matches!(
        kms.approve_recovery(&tc[1], rid, shares[0].0.expose(), &sig0)
            .await,
        Err(KmsError::BadApprovalSignature)
    ));
    let other = kms
        .start_recovery(&owner, "vault", recipient.account)
        .await
        .unwrap();
    let replay = sign(0, &other.recovery_id, &other.nonce);
    assert!(matches!(
        kms.approve_recovery(&tc[0], rid, shares[0].0.expose(), &replay)
            .await,
        Err(KmsError::BadApprovalSignature)
    ));
    let mut bad_share = shares[0].0.expose().to_vec();
    bad_share[50] ^= 1;
    let bad_sig = yilian_kms::escrow::sign_approval(
        &trustees[0],
        rid,
        "vault",
        &recipient.account,
        &rec.nonce,
        &bad_share,
    );
    assert!(matches!(
        kms.approve_recovery(&tc[0], rid, &bad_share, &bad_sig)
            .await,
        Err(KmsError::MalformedShare)
    ));
    assert!(matches!(
        kms.approve_recovery(&tc[0], "r-none", shares[0].0.expose(), &sig0)
            .await,
        Err(KmsError::UnknownRecovery(_))
    ));

    assert_eq!(
        kms.approve_recovery(&tc[0], rid, shares[0].0.expose(), &sig0)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        kms.approve_recovery(&tc[0], rid, shares[0].0.expose(), &sig0)
            .await,
        Err(KmsError::DuplicateApproval(_))
    ));
    assert!(matches!(
        kms.recover(&recipient, rid).await,
        Err(KmsError::RecoveryIncomplete {
            approvals: 1,
            threshold: 2,
            ..
        })
    ));
    let sig2 = sign(2, rid, &rec.nonce);
    assert_eq!(
        kms.approve_recovery(&tc[2], rid, shares[2].0.expose(), &sig2)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        kms.recover(&tc[0], rid).await,
        Err(KmsError::NotRecipient(_))
    ));
    let recovered = kms.recover(&recipient, rid).await.unwrap();
    // The recovered key decrypts the owner's ciphertext with plain AES-GCM.
    let env_ct = Envelope::decode(&ct).unwrap();
    let k = yilian_kms::Key32::from_slice(recovered.expose()).unwrap();
    assert_eq!(
        env_ct.open(&k, &owner.account, b"will").unwrap().expose(),
        b"the family silver"
    );
    assert!(matches!(
        kms.recover(&recipient, rid).await,
        Err(KmsError::RecoveryCompleted(_))
    ));
    let trail = kms
        .audit_log()
        .trail(&owner.account, Some("vault"), Page::new(0, 0))
        .unwrap()
        .entries;
    assert!(
        trail
            .iter()
            .any(|a| a.entry.operation == "escrow" && a.entry.outcome == "escrow-exists")
    );
    assert!(
        trail
            .iter()
            .any(|a| a.entry.operation == "escrow" && a.entry.outcome == "trustee-not-admitted")
    );
    for op in [
        "escrow",
        "replace-escrow",
        "start-recovery",
        "approve-recovery",
        "recover",
    ] {
        assert!(
            trail
                .iter()
                .any(|a| a.entry.operation == op && a.entry.outcome == "ok"),
            "{op} not audited"
        );
    }
    assert!(trail.iter().any(
        |a| a.entry.operation == "approve-recovery" && a.entry.outcome == "duplicate-approval"
    ));
}

#[tokio::test]
async fn audit_failure_fails_closed_and_changes_nothing() {
    let env = Env::new().await;
    let owner = caller(&key(), Role::Member);
    {
        // A node identity the ledger never admitted: every audit write is refused.
        let unadmitted = yilian_kms::LedgerAudit::new(env.ledger.clone(), key());
        let kms = yilian_kms::Kms::open(&env.kms_path(), env.root.clone(), unadmitted, env.clock())
            .unwrap();
        assert!(matches!(
            kms.create_key(&owner, "k", KeyKind::Aes256Gcm, false).await,
            Err(KmsError::AuditFailed(_))
        ));
        assert!(matches!(
            kms.key_info(&owner, "k"),
            Err(KmsError::UnknownKey(_))
        ));
    }
    let kms = env.open();
    assert!(
        matches!(kms.key_info(&owner, "k"), Err(KmsError::UnknownKey(_))),
        "the unaudited create was not committed"
    );
    kms.create_key(&owner, "k", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let ct = kms.encrypt(&owner, "k", b"x", b"", None).await.unwrap();
    drop(kms);
    let unadmitted = yilian_kms::LedgerAudit::new(env.ledger.clone(), key());
    let kms =
        yilian_kms::Kms::open(&env.kms_path(), env.root.clone(), unadmitted, env.clock()).unwrap();
    assert!(matches!(
        kms.decrypt(&owner, &ct, b"", None).await,
        Err(KmsError::AuditFailed(_))
    ));
    assert!(matches!(
        kms.generate_data_key(&owner, "k", b"", None).await,
        Err(KmsError::AuditFailed(_))
    ));
}

#[tokio::test]
async fn a_wrong_root_key_does_not_open_the_store() {
    let env = Env::new().await;
    drop(env.open());
    let wrong = yilian_kms::LedgerAudit::new(env.ledger.clone(), env.node.clone());
    let r = yilian_kms::Kms::open(
        &env.kms_path(),
        yilian_kms::crypto::random_key().unwrap(),
        wrong,
        env.clock(),
    );
    assert!(matches!(r, Err(KmsError::WrongRootKey)));
}

#[tokio::test]
async fn no_key_material_in_errors_debug_or_logs() {
    use std::io::Write;
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = Env::new().await;
    let kms = env.open();
    let owner = caller(&key(), Role::Member);
    kms.create_key(&owner, "k", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let dk = kms.generate_data_key(&owner, "k", b"", None).await.unwrap();
    let secret_hex = hex::encode(dk.plaintext.expose());
    let ct = kms
        .encrypt(&owner, "k", b"PLAINTEXT-MARKER", b"", None)
        .await
        .unwrap();
    let pt = kms.decrypt(&owner, &ct, b"", None).await.unwrap();
    let mut texts = vec![
        format!("{dk:?}"),
        format!("{pt:?}"),
        format!("{:?}", env.root),
    ];
    let mut tampered = ct.clone();
    tampered[30] ^= 1;
    for e in [
        kms.decrypt(&owner, &tampered, b"", None).await.unwrap_err(),
        kms.decrypt(&caller(&key(), Role::Member), &ct, b"", None)
            .await
            .unwrap_err(),
        kms.decrypt(&owner, &dk.wrapped, b"wrong", None)
            .await
            .unwrap_err(),
    ] {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
        texts.push(tonic::Status::from(e).message().to_owned());
    }
    // A refusal whose audit fails is logged: the log line must be clean too.
    let unadmitted = yilian_kms::LedgerAudit::new(env.ledger.clone(), key());
    drop(kms);
    let kms2 =
        yilian_kms::Kms::open(&env.kms_path(), env.root.clone(), unadmitted, env.clock()).unwrap();
    let _ = kms2.decrypt(&owner, &tampered, b"", None).await;
    texts.push(String::from_utf8(buf.0.lock().unwrap().clone()).unwrap());
    assert!(
        texts.last().unwrap().contains("could not be audited"),
        "the log was captured"
    );
    let root_hex = hex::encode(env.root.expose());
    for t in &texts {
        assert!(!t.contains(&secret_hex), "data key leaked: {t}");
        assert!(!t.contains(&root_hex), "root key leaked: {t}");
        assert!(!t.contains("PLAINTEXT-MARKER"), "plaintext leaked: {t}");
    }
}

#[tokio::test]
async fn zk_keys_carry_a_poseidon_commitment() {
    use ark_ff::{BigInteger, PrimeField};
    let env = Env::new().await;
    let kms = env.open();
    let owner = caller(&key(), Role::DataHolder);
    let info = kms
        .create_key(&owner, "kyc-record-1", KeyKind::Bn254Poseidon, false)
        .await
        .unwrap();
    assert_eq!(info.kind, "bn254-poseidon");
    let z = kms.zk_key(&owner, "kyc-record-1").await.unwrap();
    let [k0, k1] = yilian_kms::zk::elements(z.elements.expose()).unwrap();
    let expected = yilian_circuits::poseidon::hash(&[k0, k1])
        .into_bigint()
        .to_bytes_le();
    assert_eq!(z.commitment.to_vec(), expected);
    // Stable across a restart (the elements are stored sealed, not re-derived).
    drop(kms);
    let kms = env.open();
    assert_eq!(
        kms.zk_key(&owner, "kyc-record-1").await.unwrap().commitment,
        z.commitment
    );
    // Each kind refuses the other's operations.
    assert!(matches!(
        kms.encrypt(&owner, "kyc-record-1", b"x", b"", None).await,
        Err(KmsError::WrongKeyKind { .. })
    ));
    kms.create_key(&owner, "aes", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    assert!(matches!(
        kms.zk_key(&owner, "aes").await,
        Err(KmsError::WrongKeyKind { .. })
    ));
    assert!(matches!(
        kms.zk_key(&caller(&key(), Role::Member), "kyc-record-1")
            .await,
        Err(KmsError::NotOwner(_))
    ));
}

#[tokio::test]
async fn a_grant_to_a_revoked_identity_is_refused_and_changes_nothing() {
    let env = Env::new().await;
    let kms = env.open();
    let owner = caller(&key(), Role::Member);
    let reader_key = key();
    env.admit(&reader_key, Role::Verifier).await;
    kms.create_key(&owner, "record", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let terms = GrantTerms {
        reader: reader_key.verifying_key().to_bytes(),
        not_before_ms: 0,
        not_after_ms: u64::MAX,
        max_uses: 1,
        operations: vec![Operation::Decrypt],
        required_context: None,
    };
    env.revoke(&reader_key).await;
    let refused = kms.grant(&owner, "record", terms.clone()).await;
    let err = refused.unwrap_err();
    assert!(matches!(err, KmsError::IdentityRevoked(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "identity {} has been revoked",
            hex::encode(reader_key.verifying_key().to_bytes())
        )
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    assert!(kms.grants_for_key("record").unwrap().is_empty());
    let trail = kms
        .audit_log()
        .trail(&owner.account, Some("record"), Page::new(0, 0))
        .unwrap()
        .entries;
    assert!(
        trail
            .iter()
            .any(|a| a.entry.operation == "grant" && a.entry.outcome == "identity-revoked"),
        "the refusal is audited"
    );
}

#[test]
fn wire_messages_that_carry_secrets_print_only_lengths() {
    use yilian_kms::service::pb;
    let secret = b"correct horse battery staple".to_vec();
    let shown = [
        format!(
            "{:?}",
            pb::DecryptResponse {
                plaintext: secret.clone()
            }
        ),
        format!(
            "{:?}",
            pb::GenerateDataKeyResponse {
                plaintext: secret.clone(),
                wrapped: vec![1, 2],
                key_version: 1
            }
        ),
        format!(
            "{:?}",
            pb::RecoverResponse {
                key: secret.clone()
            }
        ),
        format!(
            "{:?}",
            pb::EncryptRequest {
                key_id: "k".into(),
                plaintext: secret.clone(),
                context: vec![],
                grant_id: String::new()
            }
        ),
        format!(
            "{:?}",
            pb::ZkKeyResponse {
                elements: secret.clone(),
                commitment: vec![0; 32]
            }
        ),
        format!(
            "{:?}",
            pb::ApproveRecoveryRequest {
                recovery_id: "r".into(),
                share: secret.clone(),
                signature: vec![0; 64]
            }
        ),
        format!(
            "{:?}",
            pb::UnsealRequest {
                share: String::from_utf8(secret.clone()).unwrap()
            }
        ),
    ];
    for s in &shown {
        assert!(s.contains("<redacted, 28 bytes>"), "{s}");
        assert!(!s.contains("horse") && !s.contains("99, 111, 114"), "{s}");
    }
}

/// The engine depends only on the `KeyStore` contract: on the in-memory
/// store, a one-use grant is spent once, stays spent when the KMS is opened
/// again over the same rows, and a wrong root key is refused there too.
#[tokio::test]
async fn the_engine_runs_on_any_conforming_store() {
    use yilian_kms::{Kms, LedgerAudit, MemKeyStore};
    let env = Env::new().await;
    let store = MemKeyStore::default();
    let audit = || LedgerAudit::new(env.ledger.clone(), env.node.clone());
    let kms = Kms::with_store(store.clone(), env.root.clone(), audit(), env.clock()).unwrap();
    let owner = caller(&key(), Role::Member);
    let reader_key = key();
    env.admit(&reader_key, Role::Device).await;
    let reader = caller(&reader_key, Role::Device);
    kms.create_key(&owner, "secret", KeyKind::Aes256Gcm, false)
        .await
        .unwrap();
    let ct = kms
        .encrypt(&owner, "secret", b"once", b"", None)
        .await
        .unwrap();
    let terms = GrantTerms {
        reader: reader.account,
        not_before_ms: 0,
        not_after_ms: u64::MAX,
        max_uses: 1,
        operations: vec![Operation::Decrypt],
        required_context: None,
    };
    let g = kms.grant(&owner, "secret", terms).await.unwrap();
    let pt = kms.decrypt(&reader, &ct, b"", Some(&g.grant_id)).await;
    assert_eq!(pt.unwrap().expose(), b"once");
    drop(kms);
    let kms = Kms::with_store(store.clone(), env.root.clone(), audit(), env.clock()).unwrap();
    assert!(matches!(
        kms.decrypt(&reader, &ct, b"", Some(&g.grant_id)).await,
        Err(KmsError::GrantExhausted { max_uses: 1, .. })
    ));
    assert_eq!(kms.grant_record(&g.grant_id).unwrap().uses, 1);
    let wrong = Kms::with_store(
        store,
        yilian_kms::crypto::random_key().unwrap(),
        audit(),
        env.clock(),
    );
    assert!(matches!(wrong, Err(KmsError::WrongRootKey)));
}

/// Operations that finish while an audit entry is being committed share the
/// next entry, under one signature, each record in its place and each
/// proven; a record the ledger would refuse is refused alone, failing no
/// operation it would have shared an entry with.
#[tokio::test]
async fn concurrent_audits_share_an_entry_and_a_bad_record_fails_alone() {
    use yilian_kms::LedgerAudit;
    use yilian_kms::audit::KeyAudit;
    let env = Env::new().await;
    let audit = LedgerAudit::new(env.ledger.clone(), env.node.clone());
    let owner = [3u8; 32];
    let records: Vec<KeyAudit> = (0..40u8)
        .map(|i| KeyAudit {
            owner,
            actor: [i; 32],
            operation: "encrypt".into(),
            key_id: if i == 7 { "k".repeat(257) } else { "k".into() },
            key_version: Some(1),
            grant_id: None,
            outcome: "ok".into(),
            request_hash: [i; 32],
        })
        .collect();
    let before = env.ledger.len();
    // This runtime has one thread and runs tasks in the order spawned, so
    // every record is queued before the batcher (spawned by the first) runs.
    let tasks: Vec<_> = records
        .iter()
        .cloned()
        .map(|r| {
            let audit = audit.clone();
            tokio::spawn(async move { audit.record(r).await })
        })
        .collect();
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.unwrap());
    }
    match &receipts[7] {
        Err(KmsError::AuditFailed(why)) => assert!(
            why.starts_with("`key-audits.key_id` is 257 bytes, more than the 256"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    let ok: Vec<_> = receipts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, r)| r.as_ref().unwrap().clone())
        .collect();
    assert_eq!(env.ledger.len(), before + 1, "one entry for all 39 records");
    assert!(ok.iter().all(|r| r.index == before));
    assert_eq!(
        ok.iter().map(|r| r.position).collect::<Vec<_>>(),
        (0..39).collect::<Vec<u32>>()
    );
    // The trail returns each record from that entry, at its place, proven.
    let trail = audit
        .trail(&owner, Some("k"), Page::new(0, 0))
        .unwrap()
        .entries;
    assert_eq!(trail.len(), 39);
    let head = env.ledger.tree_head();
    for (a, want) in trail.iter().zip(records.iter().filter(|r| r.key_id == "k")) {
        assert_eq!(&a.entry, want);
        assert_eq!(a.index, before);
        let proven = a.bundle.verify(&head.log_key).unwrap();
        assert_eq!(
            &yilian_kms::audit::key_audits_of(&proven)[a.position as usize],
            want
        );
    }
    // The refused record left nothing: no entry holds an actor of 7.
    assert!(trail.iter().all(|a| a.entry.actor != [7; 32]));
}
