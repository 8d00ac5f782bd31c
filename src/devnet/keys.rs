//! The devnet's KMS act: a key created, escrowed 2-of-3, a one-use grant
//! consumed then refused, a recovery by two trustees, and the owner's audit
//! trail verified, all over gRPC with mutual TLS against a running node.

use anyhow::{Context, Result, ensure};
use yilian_identity::Identity;

use yilian_kms::Key32;
use yilian_kms::client::Client;
use yilian_kms::envelope::Envelope;

/// Who plays which part. The owner must be a key-owning role (member or
/// data-holder), the trustees have the trustee role.
pub struct Cast<'a> {
    pub owner: &'a Identity,
    pub trustees: [&'a Identity; 3],
    pub reader: &'a Identity,
    pub recipient: &'a Identity,
}

fn code(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

pub async fn act(addr: &str, cast: Cast<'_>) -> Result<()> {
    let mut owner = Client::connect(addr, cast.owner).await?;
    let mut reader = Client::connect(addr, cast.reader).await?;
    let mut recipient = Client::connect(addr, cast.recipient).await?;
    let owner_pk = cast.owner.principal().public_key;
    let key_id = "devnet-vault";

    owner.create_key(key_id, false, false).await?;
    let dk = owner
        .generate_data_key(key_id, b"ledger-backup", None)
        .await?;
    let back = owner.decrypt(&dk.wrapped, b"ledger-backup", None).await?;
    ensure!(
        back.expose() == dk.plaintext.as_slice(),
        "unwrapped data key differs"
    );
    println!(
        "kms: key `{key_id}` created by {}; data key generated and unwrapped",
        cast.owner.principal()
    );

    let trustees: Vec<[u8; 32]> = cast
        .trustees
        .iter()
        .map(|t| t.principal().public_key)
        .collect();
    let pkg = owner.escrow(key_id, &trustees, 2, false).await?;
    for t in cast.trustees {
        pkg.open_share(t.signing_key())
            .context("a trustee's share fails its Feldman check")?;
    }
    println!(
        "kms: escrowed 2-of-3 to trustees; each trustee verified its share against {} Feldman commitments",
        pkg.commitments.len()
    );

    let secret = owner
        .encrypt(key_id, b"vault combination 31-4-15", b"note-7", None)
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let grant = owner
        .raw
        .grant(yilian_kms::service::pb::GrantRequest {
            key_id: key_id.into(),
            reader: cast.reader.principal().public_key.to_vec(),
            not_before_ms: now.saturating_sub(60_000),
            not_after_ms: now + 3_600_000,
            max_uses: 1,
            operations: vec!["decrypt".into()],
            required_context: Some(b"note-7".to_vec()),
        })
        .await?
        .into_inner();
    let first = reader
        .decrypt(&secret, b"note-7", Some(&grant.grant_id))
        .await?;
    ensure!(
        first.expose() == b"vault combination 31-4-15",
        "grant decrypt returned the wrong plaintext"
    );
    let second = reader
        .decrypt(&secret, b"note-7", Some(&grant.grant_id))
        .await;
    let refused = second.err().context("a one-use grant was used twice")?;
    ensure!(
        refused.message().contains("exhausted"),
        "unexpected refusal: {}",
        code(&refused)
    );
    println!(
        "kms: one-use grant {} read once by {}, then refused ({})",
        grant.grant_id,
        cast.reader.principal(),
        code(&refused)
    );

    let rec = owner
        .raw
        .start_recovery(yilian_kms::service::pb::StartRecoveryRequest {
            key_id: key_id.into(),
            recipient: cast.recipient.principal().public_key.to_vec(),
        })
        .await?
        .into_inner();
    let early = recipient
        .raw
        .recover(yilian_kms::service::pb::RecoveryRef {
            recovery_id: rec.recovery_id.clone(),
        })
        .await;
    ensure!(
        early.is_err(),
        "a recovery released the key without approvals"
    );
    for t in [cast.trustees[0], cast.trustees[2]] {
        let mut c = Client::connect(addr, t).await?;
        c.approve_recovery(t, &rec.recovery_id).await?;
    }
    let dup = Client::connect(addr, cast.trustees[0])
        .await?
        .approve_recovery(cast.trustees[0], &rec.recovery_id)
        .await;
    ensure!(dup.is_err(), "a duplicate approval was accepted");
    let recovered = recipient
        .raw
        .recover(yilian_kms::service::pb::RecoveryRef {
            recovery_id: rec.recovery_id.clone(),
        })
        .await?
        .into_inner();
    let key = Key32::from_slice(&recovered.key).context("recovered key is not 32 bytes")?;
    let pt = Envelope::decode(&secret)?.open(&key, &owner_pk, b"note-7")?;
    ensure!(
        pt.expose() == b"vault combination 31-4-15",
        "recovered key does not decrypt"
    );
    println!(
        "kms: recovery {} approved by two trustees (a duplicate refused); {} received the key and decrypted with plain AES-GCM",
        rec.recovery_id,
        cast.recipient.principal()
    );

    let trail = owner.verified_audit(Some(key_id), None).await?;
    let ok = |op: &str| trail.iter().any(|e| e.operation == op && e.outcome == "ok");
    for op in [
        "create-key",
        "generate-data-key",
        "escrow",
        "grant",
        "decrypt",
        "start-recovery",
        "approve-recovery",
        "recover",
    ] {
        ensure!(ok(op), "operation `{op}` missing from the audit trail");
    }
    ensure!(
        trail.iter().any(|e| e.outcome == "grant-exhausted"),
        "the refused grant use is not audited"
    );
    let entries: std::collections::BTreeSet<u64> = trail.iter().map(|e| e.index).collect();
    println!(
        "kms: audit trail of `{key_id}`: {} records in {} ledger entries, each inclusion proof verified",
        trail.len(),
        entries.len()
    );
    Ok(())
}
