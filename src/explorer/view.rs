//! What the explorer's JSON endpoints answer, computed from the ledger alone,
//! with no HTTP: the server in `mod.rs` only parses parameters into these
//! calls and maps a [`Refusal`] to a status.

use serde_json::{Value, json};
use yilian_ledger::{AccountId, Ledger, LedgerError, Payload, SignedTransaction};

/// The most entries one page lists.
pub const MAX_PAGE: u64 = 100;
/// The page size when the caller gives none.
pub const DEFAULT_PAGE: u64 = 25;
/// The longest search term: longer than any id the ledger indexes.
pub const MAX_QUERY_BYTES: usize = 256;

/// Why a request gets no answer. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: a parameter that is not what the endpoint takes.
    #[error("parameter `{name}`: {expected}")]
    BadParameter {
        name: &'static str,
        expected: &'static str,
    },
    /// 404: nothing at that index, account or id.
    #[error("{0}")]
    NotFound(String),
    /// 500: the ledger could not be read.
    #[error("the ledger could not be read: {0}")]
    Ledger(#[from] LedgerError),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadParameter { .. } => 400,
            Refusal::NotFound(_) => 404,
            Refusal::Ledger(LedgerError::EntryNotFound { .. }) => 404,
            Refusal::Ledger(_) => 500,
        }
    }
}

/// The member's current signed head, and the newest cosigned checkpoint.
pub fn head(ledger: &Ledger) -> Value {
    let h = ledger.tree_head();
    json!({
        "size": h.tree_size,
        "root": hex::encode(h.root_hash),
        "timestamp_ms": h.timestamp_ms,
        "log_key": hex::encode(h.log_key),
        "signature": hex::encode(h.signature),
        "cosigned": ledger.cosigned_head().map(|c| c.to_note()),
        "cosigners": ledger.cosigners(),
        "stale": ledger.is_stale(),
    })
}

/// A page of entries, newest first: those below `before` (default: the
/// log's size), at most `limit` of them.
pub fn entries(ledger: &Ledger, before: Option<u64>, limit: Option<u64>) -> Result<Value, Refusal> {
    let limit = page_limit(limit)?;
    let size = ledger.len();
    let to = before.unwrap_or(size).min(size);
    let from = to.saturating_sub(limit);
    let mut rows: Vec<Value> = ledger
        .entries(from, to)?
        .iter()
        .map(|(i, tx)| summary(*i, tx))
        .collect();
    rows.reverse();
    Ok(json!({ "size": size, "from": from, "to": to, "entries": rows }))
}

/// One entry decoded, with its inclusion proof in the current head, for
/// the page to check.
pub fn entry(ledger: &Ledger, index: u64) -> Result<Value, Refusal> {
    let head = ledger.tree_head();
    if index >= head.tree_size {
        return Err(no_entry(index, head.tree_size));
    }
    let bytes = ledger.entry_bytes(index)?;
    let tx = SignedTransaction::decode(&bytes)?;
    let proof = ledger.inclusion_proof(index, head.tree_size)?;
    Ok(json!({
        "index": index,
        "kind": tx.tx.payload.kind(),
        "transaction": js_safe(serde_json::to_value(&tx).map_err(|e| LedgerError::Malformed(e.to_string()))?),
        "leaf": hex::encode(&bytes),
        "proof": {
            "tree_size": proof.tree_size,
            "path": proof.path.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "head": {
            "size": head.tree_size,
            "root": hex::encode(head.root_hash),
            "timestamp_ms": head.timestamp_ms,
            "log_key": hex::encode(head.log_key),
            "signature": hex::encode(head.signature),
        },
    }))
}

/// An account's balance, admission and the entries that name it.
/// An account: its admission, balance and entries (a page of them from
/// `from`; `next` says where the next page starts).
pub fn account(ledger: &Ledger, account: &AccountId, from: Option<u64>) -> Result<Value, Refusal> {
    let member = ledger.member(account);
    let (indexes, next) = page_of(ledger, &ACCOUNT_KINDS, account, from, MAX_PAGE)?;
    if member.is_none() && indexes.is_empty() && from.is_none() {
        return Err(Refusal::NotFound(format!(
            "no account {} on the ledger",
            hex::encode(account)
        )));
    }
    Ok(json!({
        "account": hex::encode(account),
        "member": member,
        "balance": ledger.balance(account),
        "entries": summaries(ledger, &indexes)?,
        "next": next,
    }))
}

/// Entries found by an index number, an account (64 hex digits) or an id
/// (record, task, statement).
pub fn search(ledger: &Ledger, q: &str, from: Option<u64>) -> Result<Value, Refusal> {
    let q = q.trim();
    id_param(
        "q",
        q,
        "an entry index, an account (64 hex digits) or an id of at most 256 bytes",
    )?;
    if q.bytes().all(|b| b.is_ascii_digit()) {
        let index = whole_number("q", q)?;
        if index >= ledger.len() {
            return Err(no_entry(index, ledger.len()));
        }
        return Ok(json!({ "found": "index", "entries": summaries(ledger, &[index])? }));
    }
    if let Some(id) = parse_account(q) {
        match account(ledger, &id, from) {
            Ok(mut found) => {
                found["found"] = "account".into();
                return Ok(found);
            }
            // 64 hex digits that name no account may still be an id.
            Err(Refusal::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let (indexes, next) = page_of(ledger, &ID_KINDS, q.as_bytes(), from, MAX_PAGE)?;
    if indexes.is_empty() && from.is_none() {
        return Err(Refusal::NotFound(format!(
            "nothing on the ledger is indexed by `{q}`"
        )));
    }
    Ok(json!({ "found": "id", "entries": summaries(ledger, &indexes)?, "next": next }))
}

/// The most entries a task's or a key's page reads from the ledger.
pub const MAX_HISTORY: usize = 10_000;

/// A federated task: what the ledger says of it (submission, epsilon spent
/// per round, each agent's contribution and reward) and, when this node
/// coordinates it, the rounds' accuracy and loss from `rounds`.
pub fn task(
    ledger: &Ledger,
    task_id: &str,
    rounds: Option<&[yilian_federated::round::RoundRecord]>,
) -> Result<Value, Refusal> {
    id_param("task", task_id, "a task id of 1 to 256 bytes")?;
    let id = task_id.as_bytes();
    let mut submitted = None;
    let mut epsilon = std::collections::BTreeMap::new();
    let mut contributions = Vec::new();
    let mut agents = std::collections::BTreeSet::new();
    for kind in ["task-submitted", "privacy-spent", "contribution"] {
        for i in ledger.indexed(kind, id, 0, MAX_HISTORY)? {
            match ledger.entry(i)?.tx.payload {
                Payload::TaskSubmitted {
                    reward_budget,
                    spec_hash,
                    ..
                } => {
                    submitted = Some(
                        json!({ "index": i, "reward_budget": reward_budget, "spec_hash": hex::encode(spec_hash) }),
                    );
                }
                Payload::PrivacySpent {
                    round,
                    epsilon: e,
                    delta,
                    ..
                } => {
                    epsilon.insert(round, json!({ "epsilon": e, "delta": delta, "index": i }));
                }
                Payload::Contribution {
                    round,
                    agent,
                    score,
                    ..
                } => {
                    agents.insert(agent);
                    contributions.push(json!({ "index": i, "round": round, "agent": hex::encode(agent), "score": score }));
                }
                _ => {}
            }
        }
    }
    // Rewards are indexed by account: read each contributor's, keep this task's.
    let mut rewards = Vec::new();
    for agent in &agents {
        for i in ledger.indexed("reward", agent, 0, MAX_HISTORY)? {
            if let Payload::Reward {
                task_id: t,
                round,
                account,
                amount,
            } = ledger.entry(i)?.tx.payload
                && t == task_id
            {
                rewards.push(json!({ "index": i, "round": round, "account": hex::encode(account), "amount": amount }));
            }
        }
    }
    if submitted.is_none() && contributions.is_empty() && epsilon.is_empty() && rounds.is_none() {
        return Err(Refusal::NotFound(format!(
            "no task `{task_id}` on the ledger"
        )));
    }
    let coordinated = rounds.map(|r| {
        r.iter()
            .map(|r| {
                json!({
                    "round": r.round,
                    "accuracy": r.accuracy,
                    "loss": r.loss,
                    "epsilon": r.epsilon,
                    "participants": r.participants.len(),
                    "missing": r.missing.len(),
                    "closed_at_ms": r.closed_at_ms,
                })
            })
            .collect::<Vec<_>>()
    });
    Ok(json!({
        "task_id": task_id,
        "submitted": submitted,
        "epsilon": epsilon.into_iter().map(|(round, mut v)| { v["round"] = round.into(); v }).collect::<Vec<_>>(),
        "contributions": contributions,
        "rewards": rewards,
        "rounds": coordinated,
    }))
}

/// Every audited operation on one key, in log order.
pub fn key_audit(ledger: &Ledger, owner: &AccountId, key_id: &str) -> Result<Value, Refusal> {
    id_param("key", key_id, "a key id of 1 to 256 bytes")?;
    let mut index_key = owner.to_vec();
    index_key.extend_from_slice(key_id.as_bytes());
    let mut operations = Vec::new();
    for i in ledger.indexed("key-audit", &index_key, 0, MAX_HISTORY)? {
        let tx = ledger.entry(i)?;
        let records = tx.tx.payload.key_audit_records().unwrap_or_default();
        for (r, position) in records.into_iter().zip(0u32..) {
            if &r.owner != owner || r.key_id != key_id {
                continue;
            }
            operations.push(json!({
                "index": i,
                "position": position,
                "operation": r.operation,
                "actor": hex::encode(r.actor),
                "key_version": r.key_version,
                "grant_id": r.grant_id,
                "outcome": r.outcome,
                "timestamp_ms": tx.tx.timestamp_ms,
            }));
        }
    }
    if operations.is_empty() {
        return Err(Refusal::NotFound(format!(
            "no audited operation on key `{key_id}` of {}",
            hex::encode(owner)
        )));
    }
    Ok(json!({ "owner": hex::encode(owner), "key_id": key_id, "operations": operations }))
}

/// The ZK verifications the ledger recorded, `limit` of them from `from`.
pub fn zk_queries(
    ledger: &Ledger,
    from: Option<u64>,
    limit: Option<u64>,
) -> Result<Value, Refusal> {
    let (indexes, next) = page_of(ledger, &["zk-query"], &[], from, page_limit(limit)?)?;
    let mut queries = Vec::new();
    for i in indexes {
        let tx = ledger.entry(i)?;
        if let Payload::ZkQuery {
            record_id,
            grant_id,
            verifier,
            predicates_hash,
            outcome,
        } = tx.tx.payload
        {
            queries.push(json!({
                "index": i,
                "record_id": record_id,
                "grant_id": grant_id,
                "verifier": hex::encode(verifier),
                "predicates_hash": hex::encode(predicates_hash),
                "outcome": outcome,
                "timestamp_ms": tx.tx.timestamp_ms,
            }));
        }
    }
    Ok(json!({ "queries": queries, "next": next }))
}

/// A `limit` parameter: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
fn page_limit(limit: Option<u64>) -> Result<u64, Refusal> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Refusal::BadParameter {
            name: "limit",
            expected: "a number from 1 to 100",
        });
    }
    Ok(limit)
}

/// A text parameter of 1 to [`MAX_QUERY_BYTES`] bytes.
fn id_param(name: &'static str, value: &str, expected: &'static str) -> Result<(), Refusal> {
    if value.is_empty() || value.len() > MAX_QUERY_BYTES {
        return Err(Refusal::BadParameter { name, expected });
    }
    Ok(())
}

fn no_entry(index: u64, size: u64) -> Refusal {
    Refusal::NotFound(format!("no entry {index}: the log has {size} entries"))
}

/// A whole-number parameter, as text from a path or query.
pub fn whole_number(name: &'static str, text: &str) -> Result<u64, Refusal> {
    text.parse().map_err(|_| Refusal::BadParameter {
        name,
        expected: "a whole number below 2^64",
    })
}

/// An account parameter: 64 hex digits.
pub fn account_param(name: &'static str, text: &str) -> Result<AccountId, Refusal> {
    parse_account(text).ok_or(Refusal::BadParameter {
        name,
        expected: "an account: 64 hex digits",
    })
}

/// Payload kinds indexed by a record, task or statement id.
const ID_KINDS: [&str; 8] = [
    "record-anchor",
    "query-grant",
    "zk-query",
    "task-submitted",
    "contribution",
    "privacy-spent",
    "verifying-key-anchor",
    "ceremony-contribution",
];
/// Payload kinds indexed by an account.
const ACCOUNT_KINDS: [&str; 3] = ["reward", "transfer", "key-audit"];

pub fn parse_account(s: &str) -> Option<AccountId> {
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}

/// A page of the entries indexed under `key` by any of `kinds`, from
/// entry `from` on, in log order, and where the next page starts.
fn page_of(
    ledger: &Ledger,
    kinds: &[&str],
    key: &[u8],
    from: Option<u64>,
    limit: u64,
) -> Result<(Vec<u64>, Option<u64>), Refusal> {
    let mut indexes = Vec::new();
    // One more than a page tells whether another page follows.
    let want = limit as usize + 1;
    for kind in kinds {
        indexes.extend(ledger.indexed(kind, key, from.unwrap_or(0), want)?);
    }
    indexes.sort_unstable();
    indexes.dedup();
    let next = indexes.get(limit as usize).copied();
    indexes.truncate(limit as usize);
    Ok((indexes, next))
}

fn summaries(ledger: &Ledger, indexes: &[u64]) -> Result<Vec<Value>, Refusal> {
    indexes
        .iter()
        .map(|&i| Ok(summary(i, &ledger.entry(i)?)))
        .collect()
}

fn summary(index: u64, tx: &SignedTransaction) -> Value {
    json!({
        "index": index,
        "kind": tx.tx.payload.kind(),
        "signer": hex::encode(tx.signer),
        "timestamp_ms": tx.tx.timestamp_ms,
    })
}

/// JavaScript reads JSON numbers as doubles, so integers past 2^53 (nonces,
/// amounts) would show rounded: they go out as decimal strings instead.
fn js_safe(v: Value) -> Value {
    const MAX_SAFE: u64 = (1 << 53) - 1;
    match v {
        Value::Number(n) if n.as_u64().is_some_and(|u| u > MAX_SAFE) => {
            Value::String(n.to_string())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(js_safe).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, js_safe(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yilian_identity::Role;
    use yilian_ledger::{Payload, Transaction};

    async fn ledger_with_notes(n: u64) -> (yilian_testkit::Network, yilian_identity::Identity) {
        let net = yilian_testkit::Network::new("explorer").await;
        let alice = net.admit(Role::DataHolder, "alice").await;
        for i in 0..n {
            let note = Transaction::new(Payload::Note {
                topic: "t".into(),
                body: format!("note {i}"),
            })
            .sign(alice.signing_key());
            net.ledger.submit(note).await.unwrap();
        }
        (net, alice)
    }

    #[tokio::test]
    async fn pages_go_newest_first_and_never_past_the_log() {
        let (net, _) = ledger_with_notes(40).await;
        let size = net.ledger.len();
        let page = entries(&net.ledger, None, Some(10)).unwrap();
        let idx: Vec<u64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, (size - 10..size).rev().collect::<Vec<_>>());
        let first = entries(&net.ledger, Some(3), Some(10)).unwrap();
        assert_eq!(first["entries"].as_array().unwrap().len(), 3);
        // Past the end is clamped, not refused: the newest page.
        let past = entries(&net.ledger, Some(u64::MAX), None).unwrap();
        assert_eq!(past["to"], size);
        for bad in [0, 101] {
            let err = entries(&net.ledger, None, Some(bad)).unwrap_err();
            assert_eq!(err.status(), 400, "{err}");
        }
    }

    #[tokio::test]
    async fn an_entry_comes_with_a_proof_that_verifies_against_its_head() {
        let (net, _) = ledger_with_notes(20).await;
        let e = entry(&net.ledger, 7).unwrap();
        let leaf = hex::decode(e["leaf"].as_str().unwrap()).unwrap();
        let path: Vec<yilian_ledger::Hash> = e["proof"]["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        let root: yilian_ledger::Hash = hex::decode(e["head"]["root"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let proof = yilian_ledger::InclusionProof {
            index: 7,
            tree_size: e["head"]["size"].as_u64().unwrap(),
            path,
        };
        yilian_ledger::merkle::verify_inclusion(
            &yilian_ledger::merkle::leaf_hash(&leaf),
            &proof,
            &root,
        )
        .unwrap();
        // The nonce is past 2^53 almost always; it travels as a string.
        let nonce = &e["transaction"]["tx"]["nonce"];
        assert!(
            nonce.is_string() || nonce.as_u64().unwrap() < 1 << 53,
            "{nonce}"
        );
        assert_eq!(entry(&net.ledger, 10_000).unwrap_err().status(), 404);
    }

    #[tokio::test]
    async fn indexed_pages_follow_each_other_to_the_end() {
        let (net, alice) = ledger_with_notes(5).await;
        let mut seen = Vec::new();
        let mut from = None;
        loop {
            let (page, next) = page_of(&net.ledger, &["note"], &[], from, 2).unwrap();
            assert!(page.len() <= 2);
            seen.extend(page);
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        let all = net.ledger.indexed("note", &[], 0, 100).unwrap();
        assert_eq!(seen, all);
        assert_eq!(all.len(), 5);
        // Past the last entry: an empty page, not a missing account.
        let past =
            super::account(&net.ledger, &alice.principal().public_key, Some(1 << 40)).unwrap();
        assert_eq!(past["entries"], json!([]));
        assert_eq!(past["next"], Value::Null);
    }

    #[tokio::test]
    async fn search_finds_by_index_account_and_id() {
        let (net, alice) = ledger_with_notes(3).await;
        let by_index = search(&net.ledger, "1", None).unwrap();
        assert_eq!(by_index["found"], "index");
        let account = hex::encode(alice.principal().public_key);
        assert_eq!(
            search(&net.ledger, &account, None).unwrap()["found"],
            "account"
        );
        assert_eq!(
            search(&net.ledger, "no-such-id", None)
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(search(&net.ledger, " ", None).unwrap_err().status(), 400);
        assert_eq!(
            search(&net.ledger, "99999999999999999999", None)
                .unwrap_err()
                .status(),
            400
        );
        let a = super::account(&net.ledger, &alice.principal().public_key, None).unwrap();
        assert_eq!(a["member"]["name"], "alice");
        assert_eq!(
            super::account(&net.ledger, &[9; 32], None)
                .unwrap_err()
                .status(),
            404
        );
    }

    #[tokio::test]
    async fn a_task_and_a_key_are_read_from_their_indexes() {
        let (net, alice) = ledger_with_notes(2).await;
        let member = net.load("node");
        let agent = alice.principal().public_key;
        for payload in [
            Payload::PrivacySpent {
                task_id: "t1".into(),
                round: 1,
                epsilon: 0.5,
                delta: 1e-5,
            },
            Payload::Contribution {
                task_id: "t1".into(),
                round: 1,
                agent,
                score: 0.25,
            },
            Payload::Reward {
                task_id: "t1".into(),
                round: 1,
                account: agent,
                amount: 7,
            },
            // Another task's reward to the same agent stays off t1's page.
            Payload::Reward {
                task_id: "t2".into(),
                round: 1,
                account: agent,
                amount: 9,
            },
        ] {
            net.ledger
                .submit(Transaction::new(payload).sign(member.signing_key()))
                .await
                .unwrap();
        }
        let t = task(&net.ledger, "t1", None).unwrap();
        assert_eq!(t["epsilon"][0]["epsilon"], 0.5);
        assert_eq!(t["contributions"][0]["score"], 0.25);
        assert_eq!(t["rewards"].as_array().unwrap().len(), 1);
        assert_eq!(t["rewards"][0]["amount"], 7);
        assert!(t["rounds"].is_null());
        assert_eq!(task(&net.ledger, "t3", None).unwrap_err().status(), 404);
        assert_eq!(task(&net.ledger, "", None).unwrap_err().status(), 400);

        let audit = Transaction::new(Payload::KeyAudit {
            owner: agent,
            actor: agent,
            operation: "create-key".into(),
            key_id: "k".into(),
            key_version: Some(1),
            grant_id: None,
            outcome: "ok".into(),
            request_hash: [0; 32],
        });
        net.ledger
            .submit(audit.sign(member.signing_key()))
            .await
            .unwrap();
        // A batch as the KMS writes it: the key's records in it, and not
        // another key's.
        let record = |key_id: &str, operation: &str| yilian_ledger::KeyAuditRecord {
            owner: agent,
            actor: agent,
            operation: operation.into(),
            key_id: key_id.into(),
            key_version: Some(1),
            grant_id: None,
            outcome: "ok".into(),
            request_hash: [0; 32],
        };
        let batch = Transaction::new(Payload::KeyAudits {
            records: vec![
                record("k", "encrypt"),
                record("other-key", "encrypt"),
                record("k", "decrypt"),
            ],
        });
        net.ledger
            .submit(batch.sign(member.signing_key()))
            .await
            .unwrap();
        let k = key_audit(&net.ledger, &agent, "k").unwrap();
        let ops: Vec<(&str, u64)> = k["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["operation"].as_str().unwrap(),
                    o["position"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ops, [("create-key", 0), ("encrypt", 0), ("decrypt", 2)]);
        assert_eq!(
            key_audit(&net.ledger, &agent, "other")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            zk_queries(&net.ledger, None, Some(0)).unwrap_err().status(),
            400
        );
        assert_eq!(
            zk_queries(&net.ledger, None, None).unwrap()["queries"],
            json!([])
        );
    }

    #[test]
    fn integers_javascript_would_round_travel_as_strings() {
        let v = js_safe(json!({"a": [1u64 << 53, 3], "b": {"c": u64::MAX}, "d": -5}));
        assert_eq!(
            v,
            json!({"a": ["9007199254740992", 3], "b": {"c": "18446744073709551615"}, "d": -5})
        );
    }
}
