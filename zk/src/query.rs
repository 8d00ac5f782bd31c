//! Verifier queries: predicates on named fields, ANDed, each a comparison
//! with a constant, with another field, a set test, or an OR of those
//! ([`Predicate::Any`]); compiled to the statement's fixed slots.

use ark_bn254::Fr;
use ark_ff::Zero;
use serde::{Deserialize, Serialize};

use yilian_circuits::kyc::{Atom, CmpOp, Comparison, Query, SetOp, SetPredicate};

use crate::record::{EncryptedRecord, FieldKind, FieldValue};
use crate::{Result, ZkError};

/// One predicate. For an identifier the verifier supplies the value it
/// holds and asks `eq` (or `ne`); sets are named by their Merkle root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Predicate {
    Eq {
        field: String,
        value: FieldValue,
    },
    Ne {
        field: String,
        value: FieldValue,
    },
    Lt {
        field: String,
        value: u64,
    },
    Lte {
        field: String,
        value: u64,
    },
    Gt {
        field: String,
        value: u64,
    },
    Gte {
        field: String,
        value: u64,
    },
    Between {
        field: String,
        low: u64,
        high: u64,
    },
    In {
        field: String,
        #[serde(with = "crate::snarkjs::fr_string")]
        root: Fr,
    },
    Nin {
        field: String,
        #[serde(with = "crate::snarkjs::fr_string")]
        root: Fr,
    },
    /// `field == other` (two fields of the same kind).
    EqField {
        field: String,
        other: String,
    },
    NeField {
        field: String,
        other: String,
    },
    /// `field < other` (two integer fields), and so on.
    LtField {
        field: String,
        other: String,
    },
    LteField {
        field: String,
        other: String,
    },
    GtField {
        field: String,
        other: String,
    },
    GteField {
        field: String,
        other: String,
    },
    /// Holds when any of its predicates does (an OR clause; not nested).
    Any {
        any: Vec<Predicate>,
    },
}

impl Predicate {
    /// The simple predicates it is made of: itself, or an OR's members.
    pub fn atoms(&self) -> &[Predicate] {
        match self {
            Predicate::Any { any } => any,
            p => std::slice::from_ref(p),
        }
    }

    /// The fields it reads (two for a comparison of fields); empty for an OR.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Predicate::Eq { field, .. }
            | Predicate::Ne { field, .. }
            | Predicate::Lt { field, .. }
            | Predicate::Lte { field, .. }
            | Predicate::Gt { field, .. }
            | Predicate::Gte { field, .. }
            | Predicate::Between { field, .. }
            | Predicate::In { field, .. }
            | Predicate::Nin { field, .. } => vec![field],
            Predicate::EqField { field, other }
            | Predicate::NeField { field, other }
            | Predicate::LtField { field, other }
            | Predicate::LteField { field, other }
            | Predicate::GtField { field, other }
            | Predicate::GteField { field, other } => vec![field, other],
            Predicate::Any { .. } => vec![],
        }
    }
}

/// Compiles predicates against a record's schema. At most four comparison
/// predicates and one set predicate fit the statement, in at most five
/// clauses.
pub fn compile(record: &EncryptedRecord, predicates: &[Predicate]) -> Result<Query> {
    let clauses = predicates
        .iter()
        .map(|p| match p {
            Predicate::Any { any } if any.is_empty() => Err(ZkError::Malformed {
                what: "query",
                detail: "an `any` clause needs at least one predicate".into(),
            }),
            Predicate::Any { any } => any.iter().map(|a| atom(record, a)).collect(),
            p => Ok(vec![atom(record, p)?]),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Query::from_clauses(&clauses)?)
}

fn atom(record: &EncryptedRecord, p: &Predicate) -> Result<Atom> {
    let integer = |field: &str| -> Result<u8> {
        let (index, kind) = record.field_index(field)?;
        if kind != FieldKind::Integer {
            return Err(ZkError::NotAnInteger(field.to_owned()));
        }
        Ok(index)
    };
    let ordered = |field: &str, op: CmpOp, a: u64, b: u64| -> Result<Atom> {
        Ok(Atom::Compare(Comparison {
            field: integer(field)?,
            op,
            a: Fr::from(a),
            b: Fr::from(b),
        }))
    };
    let fields = |field: &str, op: CmpOp, other: &str| -> Result<Atom> {
        let (a, b) = if op.is_ordering() {
            (integer(field)?, integer(other)?)
        } else {
            let (a, ka) = record.field_index(field)?;
            let (b, kb) = record.field_index(other)?;
            if ka != kb {
                return Err(ZkError::Malformed {
                    what: "predicate",
                    detail: format!("{field} is {ka:?} and {other} is {kb:?}"),
                });
            }
            (a, b)
        };
        Ok(Atom::Compare(Comparison::against_field(a, op, b)))
    };
    Ok(match p {
        Predicate::Eq { field, value } | Predicate::Ne { field, value } => {
            let (index, kind) = record.field_index(field)?;
            if kind != value.kind() {
                return Err(ZkError::Malformed {
                    what: "predicate",
                    detail: format!("{field} is {kind:?}"),
                });
            }
            let op = if matches!(p, Predicate::Eq { .. }) {
                CmpOp::Eq
            } else {
                CmpOp::Ne
            };
            Atom::Compare(Comparison {
                field: index,
                op,
                a: value.encode(),
                b: Fr::zero(),
            })
        }
        Predicate::Lt { field, value } => ordered(field, CmpOp::Lt, *value, 0)?,
        Predicate::Lte { field, value } => ordered(field, CmpOp::Lte, *value, 0)?,
        Predicate::Gt { field, value } => ordered(field, CmpOp::Gt, *value, 0)?,
        Predicate::Gte { field, value } => ordered(field, CmpOp::Gte, *value, 0)?,
        Predicate::Between { field, low, high } => ordered(field, CmpOp::Between, *low, *high)?,
        Predicate::EqField { field, other } => fields(field, CmpOp::EqField, other)?,
        Predicate::NeField { field, other } => fields(field, CmpOp::NeField, other)?,
        Predicate::LtField { field, other } => fields(field, CmpOp::LtField, other)?,
        Predicate::LteField { field, other } => fields(field, CmpOp::LteField, other)?,
        Predicate::GtField { field, other } => fields(field, CmpOp::GtField, other)?,
        Predicate::GteField { field, other } => fields(field, CmpOp::GteField, other)?,
        Predicate::In { field, root } | Predicate::Nin { field, root } => {
            let op = if matches!(p, Predicate::In { .. }) {
                SetOp::In
            } else {
                SetOp::NotIn
            };
            Atom::Set(SetPredicate {
                field: record.field_index(field)?.0,
                op,
                root: *root,
            })
        }
        Predicate::Any { .. } => {
            return Err(ZkError::Malformed {
                what: "query",
                detail: "an `any` clause may not contain another".into(),
            });
        }
    })
}
