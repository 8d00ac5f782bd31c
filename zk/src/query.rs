//! Verifier queries: predicates on named fields, combined by AND, compiled
//! to the statement's fixed slots.

use ark_bn254::Fr;
use ark_ff::Zero;
use serde::{Deserialize, Serialize};

use yilian_circuits::kyc::{CmpOp, Comparison, Query, SetOp, SetPredicate};

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
}

/// Compiles predicates against a record's schema. At most four comparison
/// predicates and one set predicate fit the statement.
pub fn compile(record: &EncryptedRecord, predicates: &[Predicate]) -> Result<Query> {
    let mut comparisons = Vec::new();
    let mut set = None;
    for p in predicates {
        let integer = |field: &str| -> Result<u8> {
            let (index, kind) = record.field_index(field)?;
            if kind != FieldKind::Integer {
                return Err(ZkError::NotAnInteger(field.to_owned()));
            }
            Ok(index)
        };
        let ordered = |field: &str, op: CmpOp, a: u64, b: u64| -> Result<Comparison> {
            Ok(Comparison {
                field: integer(field)?,
                op,
                a: Fr::from(a),
                b: Fr::from(b),
            })
        };
        match p {
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
                comparisons.push(Comparison {
                    field: index,
                    op,
                    a: value.encode(),
                    b: Fr::zero(),
                });
            }
            Predicate::Lt { field, value } => {
                comparisons.push(ordered(field, CmpOp::Lt, *value, 0)?)
            }
            Predicate::Lte { field, value } => {
                comparisons.push(ordered(field, CmpOp::Lte, *value, 0)?)
            }
            Predicate::Gt { field, value } => {
                comparisons.push(ordered(field, CmpOp::Gt, *value, 0)?)
            }
            Predicate::Gte { field, value } => {
                comparisons.push(ordered(field, CmpOp::Gte, *value, 0)?)
            }
            Predicate::Between { field, low, high } => {
                comparisons.push(ordered(field, CmpOp::Between, *low, *high)?)
            }
            Predicate::In { field, root } | Predicate::Nin { field, root } => {
                if set.is_some() {
                    return Err(ZkError::Malformed {
                        what: "query",
                        detail: "at most one set predicate".into(),
                    });
                }
                let op = if matches!(p, Predicate::In { .. }) {
                    SetOp::In
                } else {
                    SetOp::NotIn
                };
                set = Some(SetPredicate {
                    field: record.field_index(field)?.0,
                    op,
                    root: *root,
                });
            }
        }
    }
    Ok(Query::new(&comparisons, set)?)
}
