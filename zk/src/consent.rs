//! Consent: which questions a verifier may ask about a record, and how much
//! it may learn. Sans-IO: the service loads a grant and the disclosure so
//! far, asks [`admit`], and stores what it returns.
//!
//! A query grant is issued by the record's holder on the customer's behalf.
//! It names the verifier, the record, the predicates allowed (each a field,
//! an operator and a constant; several constants for one field and operator
//! give "an operator with a bounded set of constants"), and per field a
//! disclosure budget. Its uses and time window are a KMS grant on the key
//! that seals the record's key at rest, so a use is counted atomically and
//! durably by the KMS (the same semantics as any KMS read grant, one use,
//! "burn after reading", by default), audited on the ledger, and revocable
//! there.
//!
//! # Disclosure budget
//!
//! Per record, field and verifier the node remembers the distinct constants
//! the verifier's answered predicates compared that field with (a
//! `between` compares with two). A query that would take the count past the
//! budget is refused, whatever grant it comes under, and a grant that
//! allows more constants on a field than its budget is refused when issued.
//!
//! What a budget of k reveals at most: every predicate on an integer field
//! (`lt`, `lte`, `gt`, `gte`, `eq`, `ne`, `between`) is decided by where the
//! value lies relative to its constants. k distinct constants cut the range
//! into at most 2k + 1 classes (the k points and the k + 1 open intervals
//! between them), and every answer the verifier can get is a function of
//! the class: at most log2(2k + 1) bits, 2.32 bits at the default k = 2,
//! however those predicates are combined or repeated. On an identifier
//! field, k constants (values or set roots) give at most k + 1 classes for
//! equality (equal to one of them, or to none) and 2^k for sets (in each or
//! not): at most k bits. In general, t thresholds or values and s set roots
//! on one field give at most (2t + 1)·2^s classes, and t + s ≤ k. Binary
//! search needs log2(range) distinct thresholds, so with k = 2 a verifier
//! learns at most which of 5 classes an income is in.
//!
//! A comparison of two fields (`balance >= loan`) counts the other field as
//! one constant of each: the answer depends on the pair's order, one more
//! cut of each field's range. An OR is allowed when the grant names it, or
//! names each of its members; it counts its members' constants (its answer
//! is a function of theirs, so it reveals no more than they would). A
//! member of an allowed OR is not allowed alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::query::Predicate;
use crate::record::FieldValue;

/// Distinct constants a verifier may learn about one field of one record
/// when the grant does not say otherwise.
pub const DEFAULT_BUDGET: u32 = 2;

/// Most predicates one grant may allow (its terms are stored and hashed).
pub const MAX_ALLOWED: usize = 64;

/// What the holder allows: the grant's terms besides its uses and time
/// window, which the KMS grant holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryGrant {
    /// The KMS grant that counts its uses.
    pub grant_id: String,
    pub record_id: String,
    #[serde(with = "hex::serde")]
    pub holder: [u8; 32],
    #[serde(with = "hex::serde")]
    pub verifier: [u8; 32],
    pub allowed: Vec<Predicate>,
    /// Per field, when not [`DEFAULT_BUDGET`].
    pub budget: BTreeMap<String, u32>,
    /// The customer's own consent, for a record whose customer has an
    /// identity: without it no grant is issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countersignature: Option<Countersignature>,
}

/// What a record's customer countersigns: the grant's terms exactly as the
/// holder asks the node for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Chosen by the customer, fresh for each consent: one consent issues
    /// one grant, never more.
    pub consent_id: String,
    pub record_id: String,
    #[serde(with = "hex::serde")]
    pub verifier: [u8; 32],
    pub allowed: Vec<Predicate>,
    pub max_uses: u32,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    pub budget: BTreeMap<String, u32>,
}

impl Consent {
    /// SHA-256 of a domain tag and the canonical JSON of the terms: what the
    /// customer signs.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"yilian/zk/consent/v1\0");
        h.update(serde_json::to_vec(self).expect("consents serialise"));
        h.finalize().into()
    }

    /// The customer's ed25519 signature of [`Self::digest`].
    pub fn sign(&self, customer: &ed25519_dalek::SigningKey) -> Countersignature {
        use ed25519_dalek::Signer;
        Countersignature {
            customer: customer.verifying_key().to_bytes(),
            signature: customer.sign(&self.digest()).to_bytes().to_vec(),
        }
    }
}

/// A customer's signature of a [`Consent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Countersignature {
    #[serde(with = "hex::serde")]
    pub customer: [u8; 32],
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

/// Checks that `customer`, the record's customer, signed exactly `terms`.
pub fn check_countersignature(
    customer: &[u8; 32],
    terms: &Consent,
    countersignature: Option<&Countersignature>,
) -> Result<(), Refusal> {
    let c = countersignature.ok_or_else(|| Refusal::NoCountersignature(terms.record_id.clone()))?;
    let bad = || Refusal::BadCountersignature(terms.record_id.clone());
    if &c.customer != customer {
        return Err(bad());
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(customer).map_err(|_| bad())?;
    let signature = ed25519_dalek::Signature::from_slice(&c.signature).map_err(|_| bad())?;
    key.verify_strict(&terms.digest(), &signature)
        .map_err(|_| bad())
}

impl QueryGrant {
    pub fn budget(&self, field: &str) -> u32 {
        self.budget.get(field).copied().unwrap_or(DEFAULT_BUDGET)
    }

    /// SHA-256 of the canonical JSON of the terms: what the ledger records.
    pub fn terms_hash(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(serde_json::to_vec(self).expect("grants serialise")).into()
    }
}

/// The distinct constants a verifier has learned about one field so far.
pub type Disclosed = BTreeSet<String>;

/// Why a query or a grant is refused. Each is a reason the holder or the
/// verifier acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("no grant: ask under a query grant from the record's holder (yilian zk grant)")]
    NoGrant,
    #[error("unknown grant `{0}`: ask the record's holder for one")]
    UnknownGrant(String),
    #[error("grant `{0}` is for another record")]
    OtherRecord(String),
    #[error("grant `{0}` is for another verifier")]
    OtherVerifier(String),
    #[error("grant `{grant_id}` does not allow the predicate {predicate}")]
    NotAllowed { grant_id: String, predicate: String },
    #[error(
        "record `{0}` has a customer with an identity: the grant needs the customer's countersignature of its terms (yilian zk consent)"
    )]
    NoCountersignature(String),
    #[error(
        "the countersignature is not record `{0}`'s customer's signature of these terms; the customer must sign exactly the terms asked for"
    )]
    BadCountersignature(String),
    #[error("record `{0}`'s customer is no longer admitted: no grant can be countersigned")]
    CustomerNotAdmitted(String),
    #[error(
        "the customer's consent `{0}` was already used for a grant; the customer must consent again"
    )]
    ConsentUsed(String),
    #[error(
        "field `{field}`: {wanted} distinct constants would exceed its disclosure budget of {budget}"
    )]
    OverBudget {
        field: String,
        wanted: usize,
        budget: u32,
    },
}

impl Refusal {
    /// A stable label, which the ledger records (never the caller's input).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoGrant => "no-grant",
            Refusal::UnknownGrant(_) => "unknown-grant",
            Refusal::OtherRecord(_) => "other-record",
            Refusal::OtherVerifier(_) => "other-verifier",
            Refusal::NotAllowed { .. } => "not-allowed",
            Refusal::OverBudget { .. } => "over-budget",
            Refusal::NoCountersignature(_) => "no-countersignature",
            Refusal::BadCountersignature(_) => "bad-countersignature",
            Refusal::CustomerNotAdmitted(_) => "customer-not-admitted",
            Refusal::ConsentUsed(_) => "consent-used",
        }
    }
}

/// Checks a query's grant before anything about the record is looked at,
/// so that an unconsented verifier learns nothing, not even the schema.
pub fn check_grant(
    grant: Option<&QueryGrant>,
    grant_id: &str,
    record_id: &str,
    verifier: &[u8; 32],
) -> Result<(), Refusal> {
    if grant_id.is_empty() {
        return Err(Refusal::NoGrant);
    }
    let grant = grant.ok_or_else(|| Refusal::UnknownGrant(grant_id.to_owned()))?;
    if grant.record_id != record_id {
        return Err(Refusal::OtherRecord(grant.grant_id.clone()));
    }
    if &grant.verifier != verifier {
        return Err(Refusal::OtherVerifier(grant.grant_id.clone()));
    }
    Ok(())
}

/// Per field a predicate reads, the constants it compares that field
/// with, canonically: what the budget counts. `gte 5` and `lt 5` share the
/// constant 5; a comparison of two fields counts the other field as a
/// constant of each; an OR counts its members'.
pub fn constants(p: &Predicate) -> Vec<(&str, String)> {
    let value = |v: &FieldValue| match v {
        FieldValue::Integer(i) => format!("int:{i}"),
        FieldValue::Identifier(s) => format!("id:{s}"),
    };
    let own: Vec<(&String, String)> = match p {
        Predicate::Eq { field, value: v } | Predicate::Ne { field, value: v } => {
            vec![(field, value(v))]
        }
        Predicate::Lt { field, value: v }
        | Predicate::Lte { field, value: v }
        | Predicate::Gt { field, value: v }
        | Predicate::Gte { field, value: v } => vec![(field, format!("int:{v}"))],
        Predicate::Between { field, low, high } => {
            vec![
                (field, format!("int:{low}")),
                (field, format!("int:{high}")),
            ]
        }
        Predicate::In { field, root } | Predicate::Nin { field, root } => {
            vec![(field, format!("set:{root}"))]
        }
        Predicate::EqField { field, other }
        | Predicate::NeField { field, other }
        | Predicate::LtField { field, other }
        | Predicate::LteField { field, other }
        | Predicate::GtField { field, other }
        | Predicate::GteField { field, other } => vec![
            (field, format!("field:{other}")),
            (other, format!("field:{field}")),
        ],
        Predicate::Any { any } => return any.iter().flat_map(constants).collect(),
    };
    own.into_iter().map(|(f, c)| (f.as_str(), c)).collect()
}

fn by_field<'a>(
    predicates: impl IntoIterator<Item = &'a Predicate>,
) -> BTreeMap<&'a str, BTreeSet<String>> {
    let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in predicates {
        for (field, constant) in constants(p) {
            out.entry(field).or_default().insert(constant);
        }
    }
    out
}

/// Checks a grant's terms before it is issued: within [`MAX_ALLOWED`], and
/// on no field more constants than its budget, counting what the verifier
/// already learned (`disclosed`, per field).
pub fn check_terms(
    grant: &QueryGrant,
    disclosed: &BTreeMap<String, Disclosed>,
) -> Result<(), Refusal> {
    disclosure_after(grant, &grant.allowed, disclosed).map(drop)
}

/// Per field the predicates touch, what the verifier would have learned
/// after them; refused past a field's budget.
fn disclosure_after(
    grant: &QueryGrant,
    predicates: &[Predicate],
    disclosed: &BTreeMap<String, Disclosed>,
) -> Result<BTreeMap<String, Disclosed>, Refusal> {
    let mut after = BTreeMap::new();
    for (field, constants) in by_field(predicates) {
        let mut all = disclosed.get(field).cloned().unwrap_or_default();
        all.extend(constants);
        let budget = grant.budget(field);
        if all.len() > budget as usize {
            return Err(Refusal::OverBudget {
                field: field.to_owned(),
                wanted: all.len(),
                budget,
            });
        }
        after.insert(field.to_owned(), all);
    }
    Ok(after)
}

/// Decides a query under a grant. On success returns, per field the query
/// touches, the disclosure after it is answered, for the caller to store
/// before the answer leaves.
pub fn admit(
    grant: &QueryGrant,
    record_id: &str,
    verifier: &[u8; 32],
    predicates: &[Predicate],
    disclosed: &BTreeMap<String, Disclosed>,
) -> Result<BTreeMap<String, Disclosed>, Refusal> {
    check_grant(Some(grant), &grant.grant_id, record_id, verifier)?;
    // An OR the grant names is allowed as named; so is an OR of predicates
    // it allows one by one (its answer is a function of theirs). A member
    // of an allowed OR is not allowed alone: alone it says more.
    let allowed = |p: &Predicate| {
        grant.allowed.contains(p)
            || matches!(p, Predicate::Any { any } if any.iter().all(|a| grant.allowed.contains(a)))
    };
    if let Some(p) = predicates.iter().find(|p| !allowed(p)) {
        return Err(Refusal::NotAllowed {
            grant_id: grant.grant_id.clone(),
            predicate: serde_json::to_string(p).expect("predicates serialise"),
        });
    }
    disclosure_after(grant, predicates, disclosed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gte(v: u64) -> Predicate {
        Predicate::Gte {
            field: "income".into(),
            value: v,
        }
    }

    fn grant(allowed: Vec<Predicate>) -> QueryGrant {
        QueryGrant {
            grant_id: "g1".into(),
            record_id: "r".into(),
            holder: [1; 32],
            verifier: [2; 32],
            allowed,
            budget: BTreeMap::new(),
            countersignature: None,
        }
    }

    #[test]
    fn only_the_customers_signature_of_exactly_these_terms_countersigns() {
        let customer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let me = customer.verifying_key().to_bytes();
        let terms = Consent {
            consent_id: "c1".into(),
            record_id: "r".into(),
            verifier: [2; 32],
            allowed: vec![gte(100)],
            max_uses: 1,
            not_before_ms: 0,
            not_after_ms: 10,
            budget: BTreeMap::new(),
        };
        let signed = terms.sign(&customer);
        check_countersignature(&me, &terms, Some(&signed)).unwrap();
        assert_eq!(
            check_countersignature(&me, &terms, None),
            Err(Refusal::NoCountersignature("r".into()))
        );
        let bad = Err(Refusal::BadCountersignature("r".into()));
        let mut more = terms.clone();
        more.max_uses = 2;
        assert_eq!(check_countersignature(&me, &more, Some(&signed)), bad);
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            check_countersignature(&me, &terms, Some(&terms.sign(&stranger))),
            bad
        );
        let mut garbled = signed.clone();
        garbled.signature.truncate(10);
        assert_eq!(check_countersignature(&me, &terms, Some(&garbled)), bad);
    }

    #[test]
    fn a_binary_search_is_stopped_at_the_budget() {
        // A grant of 16 thresholds is refused under the default budget, and
        // one that allows them anyway (built here without the check) still
        // gets only 2 answered.
        let mut g = grant((0..16).map(|i| gte(i * 10_000)).collect());
        assert_eq!(
            check_terms(&g, &BTreeMap::new()),
            Err(Refusal::OverBudget {
                field: "income".into(),
                wanted: 16,
                budget: 2
            })
        );
        g.budget.insert("income".into(), 16);
        check_terms(&g, &BTreeMap::new()).unwrap();
        g.budget.clear();
        let mut disclosed = BTreeMap::new();
        for (i, t) in [80_000, 40_000].into_iter().enumerate() {
            disclosed = admit(&g, "r", &[2; 32], &[gte(t)], &disclosed).unwrap();
            assert_eq!(disclosed["income"].len(), i + 1);
        }
        // Asking an answered threshold again (or its complement) is free.
        let lt = Predicate::Lt {
            field: "income".into(),
            value: 40_000,
        };
        let mut with_lt = g.clone();
        with_lt.allowed.push(lt.clone());
        assert_eq!(
            admit(&with_lt, "r", &[2; 32], &[lt], &disclosed).unwrap(),
            disclosed
        );
        let e = admit(&g, "r", &[2; 32], &[gte(60_000)], &disclosed).unwrap_err();
        assert!(matches!(e, Refusal::OverBudget { wanted: 3, .. }), "{e}");
    }

    #[test]
    fn ors_and_field_comparisons_are_admitted_as_granted_and_counted() {
        let score = Predicate::Gte {
            field: "score".into(),
            value: 700,
        };
        let either = Predicate::Any {
            any: vec![gte(100), score.clone()],
        };
        let none = BTreeMap::new();
        // Granted one by one: their OR may be asked too.
        let g = grant(vec![gte(100), score.clone()]);
        let after = admit(&g, "r", &[2; 32], std::slice::from_ref(&either), &none).unwrap();
        assert_eq!(after["income"].len(), 1);
        assert_eq!(after["score"].len(), 1);
        // Granted as an OR: a member alone may not be.
        let g = grant(vec![either.clone()]);
        admit(&g, "r", &[2; 32], &[either], &none).unwrap();
        assert!(matches!(
            admit(&g, "r", &[2; 32], &[score], &none),
            Err(Refusal::NotAllowed { .. })
        ));
        // A comparison of two fields is a constant of each.
        let vs = Predicate::GteField {
            field: "balance".into(),
            other: "loan".into(),
        };
        let g = grant(vec![vs.clone()]);
        let after = admit(&g, "r", &[2; 32], &[vs], &none).unwrap();
        assert_eq!(after["balance"], BTreeSet::from(["field:loan".to_owned()]));
        assert_eq!(after["loan"], BTreeSet::from(["field:balance".to_owned()]));
    }

    #[test]
    fn only_the_granted_verifier_record_and_predicates_are_admitted() {
        let g = grant(vec![gte(100)]);
        let none = BTreeMap::new();
        assert_eq!(
            admit(&g, "other", &[2; 32], &[gte(100)], &none),
            Err(Refusal::OtherRecord("g1".into()))
        );
        assert_eq!(
            admit(&g, "r", &[3; 32], &[gte(100)], &none),
            Err(Refusal::OtherVerifier("g1".into()))
        );
        let e = admit(&g, "r", &[2; 32], &[gte(101)], &none).unwrap_err();
        assert!(matches!(e, Refusal::NotAllowed { .. }), "{e}");
        let between = Predicate::Between {
            field: "income".into(),
            low: 1,
            high: 2,
        };
        // A between is two thresholds: with one answered it would be three.
        let mut g2 = grant(vec![gte(100), between.clone()]);
        assert!(check_terms(&g2, &none).is_err());
        g2.budget.insert("income".into(), 3);
        let d = admit(&g2, "r", &[2; 32], &[gte(100)], &none).unwrap();
        assert_eq!(
            admit(&g2, "r", &[2; 32], &[between], &d).unwrap()["income"].len(),
            3
        );
    }

    proptest! {
        /// Whatever a verifier asks, in whatever order, what it has learned
        /// about a field never exceeds the budget.
        #[test]
        fn disclosure_never_exceeds_the_budget(
            asks in proptest::collection::vec(proptest::collection::vec(0u64..20, 1..4), 0..40),
            budget in 0u32..6,
        ) {
            let mut g = grant((0..20).map(gte).collect());
            g.budget.insert("income".into(), budget);
            let mut disclosed = BTreeMap::new();
            for ask in asks {
                let q: Vec<Predicate> = ask.into_iter().map(gte).collect();
                if let Ok(after) = admit(&g, "r", &[2; 32], &q, &disclosed) {
                    disclosed.extend(after);
                }
                let n = disclosed.get("income").map_or(0, |d: &Disclosed| d.len());
                prop_assert!(n <= budget as usize);
            }
        }
    }
}
