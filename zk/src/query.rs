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

/// One atom as a verifier without the record sees it: the operator and its
/// constants, with the holder's field positions left out.
type Seen = (u8, [u8; 32], [u8; 32]);

fn seen_comparison(op: CmpOp, a: Fr, b: Fr) -> Seen {
    if op.against_field() {
        // Operands are field positions, which only the record knows.
        (op.code(), [0; 32], [0; 32])
    } else {
        (op.code(), crate::fr_to_bytes(&a), crate::fr_to_bytes(&b))
    }
}

fn seen_set(op: SetOp, root: Fr) -> Seen {
    (0x80 | op as u8, crate::fr_to_bytes(&root), [0; 32])
}

fn seen_asked(p: &Predicate) -> Seen {
    let int = |v: u64| Fr::from(v);
    match p {
        Predicate::Eq { value, .. } => seen_comparison(CmpOp::Eq, value.encode(), Fr::zero()),
        Predicate::Ne { value, .. } => seen_comparison(CmpOp::Ne, value.encode(), Fr::zero()),
        Predicate::Lt { value, .. } => seen_comparison(CmpOp::Lt, int(*value), Fr::zero()),
        Predicate::Lte { value, .. } => seen_comparison(CmpOp::Lte, int(*value), Fr::zero()),
        Predicate::Gt { value, .. } => seen_comparison(CmpOp::Gt, int(*value), Fr::zero()),
        Predicate::Gte { value, .. } => seen_comparison(CmpOp::Gte, int(*value), Fr::zero()),
        Predicate::Between { low, high, .. } => {
            seen_comparison(CmpOp::Between, int(*low), int(*high))
        }
        Predicate::In { root, .. } => seen_set(SetOp::In, *root),
        Predicate::Nin { root, .. } => seen_set(SetOp::NotIn, *root),
        Predicate::EqField { .. } => seen_comparison(CmpOp::EqField, Fr::zero(), Fr::zero()),
        Predicate::NeField { .. } => seen_comparison(CmpOp::NeField, Fr::zero(), Fr::zero()),
        Predicate::LtField { .. } => seen_comparison(CmpOp::LtField, Fr::zero(), Fr::zero()),
        Predicate::LteField { .. } => seen_comparison(CmpOp::LteField, Fr::zero(), Fr::zero()),
        Predicate::GtField { .. } => seen_comparison(CmpOp::GtField, Fr::zero(), Fr::zero()),
        Predicate::GteField { .. } => seen_comparison(CmpOp::GteField, Fr::zero(), Fr::zero()),
        // Not an atom; [`Predicate::atoms`] opens it.
        Predicate::Any { .. } => (0xff, [0; 32], [0; 32]),
    }
}

/// Whether a proven query states the question `asked`, as far as a
/// verifier without the record can tell: the same clauses (ANDed), each
/// with the same operators and constants (ORed), in any order. Which field
/// each atom reads is the holder's encoding and is not compared.
pub fn states(asked: &[Predicate], proven: &Query) -> bool {
    let mut want: Vec<Vec<Seen>> = asked
        .iter()
        .map(|p| {
            let mut c: Vec<Seen> = p.atoms().iter().map(seen_asked).collect();
            c.sort();
            c
        })
        .collect();
    let mut slots: Vec<Option<Seen>> = proven
        .comparisons
        .iter()
        .map(|c| (c.op != CmpOp::Always).then(|| seen_comparison(c.op, c.a, c.b)))
        .collect();
    slots.push((proven.set.op != SetOp::None).then(|| seen_set(proven.set.op, proven.set.root)));
    let mut got: Vec<Vec<Seen>> = (0..slots.len() as u8)
        .map(|j| {
            let mut c: Vec<Seen> = slots
                .iter()
                .zip(&proven.clauses)
                .filter(|(_, k)| **k == j)
                .filter_map(|(s, _)| *s)
                .collect();
            c.sort();
            c
        })
        .filter(|c| !c.is_empty())
        .collect();
    want.sort();
    got.sort();
    want == got
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CipherKey, Record};

    fn record() -> EncryptedRecord {
        let r = Record {
            fields: vec![
                ("id_number".into(), FieldValue::Identifier("F-0001".into())),
                ("income".into(), FieldValue::Integer(120_000)),
                ("age".into(), FieldValue::Integer(40)),
                ("loan".into(), FieldValue::Integer(50_000)),
            ],
        };
        EncryptedRecord::encrypt(
            "c1",
            &r,
            &CipherKey::new([Fr::from(3u64), Fr::from(4u64)]),
            7,
        )
        .unwrap()
    }

    fn gte(field: &str, value: u64) -> Predicate {
        Predicate::Gte {
            field: field.into(),
            value,
        }
    }

    #[test]
    fn a_compiled_query_states_what_was_asked_and_nothing_else() {
        let rec = record();
        let asked = vec![
            gte("income", 100_000),
            Predicate::Any {
                any: vec![
                    Predicate::Between {
                        field: "age".into(),
                        low: 18,
                        high: 65,
                    },
                    Predicate::GteField {
                        field: "income".into(),
                        other: "loan".into(),
                    },
                ],
            },
            Predicate::Eq {
                field: "id_number".into(),
                value: FieldValue::Identifier("F-0001".into()),
            },
        ];
        let proven = compile(&rec, &asked).unwrap();
        assert!(states(&asked, &proven));
        // Reordered clauses and atoms are the same question.
        let mut reordered = asked.clone();
        reordered.reverse();
        assert!(states(&reordered, &proven));
        // Another constant, a clause ANDed instead of ORed, or one missing
        // is another question.
        let mut other = asked.clone();
        other[0] = gte("income", 100_001);
        assert!(!states(&other, &proven));
        let Predicate::Any { any } = asked[1].clone() else {
            unreachable!()
        };
        let anded = [vec![asked[0].clone(), asked[2].clone()], any].concat();
        assert!(!states(&anded, &proven));
        assert!(!states(&asked[..2], &proven));
        // A compiled question about another field with the same constant is
        // the same as far as the verifier can see: positions are the holder's.
        let same_constant = compile(&rec, &[gte("age", 100_000)]).unwrap();
        assert!(states(&[gte("income", 100_000)], &same_constant));
    }
}
