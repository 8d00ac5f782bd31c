//! The KYC statement: "the anchored ciphertext decrypts, under the committed
//! key, to a record on which this query evaluates to `result`".
//!
//! One circuit per record size ([`Shape`]: 8, 16 or 32 fields), each with
//! four comparison slots and one set slot, combined in conjunctive normal
//! form ([`crate::formula`]): AND, OR, or an AND of ORs. A comparison is a
//! field against a constant or against another field of the same record
//! (`balance >= loan`). Unused slots carry op 0. Public inputs, in order:
//!
//! | # | input |
//! |---|---|
//! | 0 | record binding (`identifier(record_id)`) |
//! | 1 | ciphertext hash (see [`ciphertext_hash`]) |
//! | 2 | key commitment `Poseidon(k0, k1)` |
//! | 3 | nonce (< 2^128) |
//! | 4 + 4i .. 8 + 4i | comparison slot i: field index, op code, a, b |
//! | 20, 21, 22 | set slot: field index, op code, Merkle root |
//! | 23 | clause indices of the five slots, packed ([`crate::formula::pack`]) |
//! | 24 | result bit |

use ark_bn254::Fr;
use ark_ff::{AdditiveGroup, BigInteger, PrimeField, Zero};
use ark_r1cs_std::{
    alloc::AllocVar,
    boolean::Boolean,
    eq::EqGadget,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};
use sha2::{Digest, Sha256};

use crate::CircuitError;
use crate::cipher;
use crate::cmp::{self, enforce_bits, is_less_than};
use crate::formula;
use crate::index::{one_hot, select};
use crate::poseidon;
use crate::set::{self, LowLeafPath, SET_VALUE_BITS};

/// Comparison predicates per query.
pub const COMPARISON_SLOTS: usize = 4;
/// Predicate slots: the comparisons and the set slot.
pub const SLOTS: usize = COMPARISON_SLOTS + 1;
/// Width of integer fields and of ordering constants.
pub const INT_BITS: usize = 64;
/// Number of public inputs (the same for every shape).
pub const PUBLIC_INPUTS: usize = 4 + 4 * COMPARISON_SLOTS + 3 + 2;
/// The most fields a record may have.
pub const MAX_FIELDS: usize = 32;

/// A record size the statement comes in: its circuit, keys and ceremony
/// are its own. A record takes the smallest shape it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape(usize);

impl Shape {
    pub const F8: Shape = Shape(8);
    pub const F16: Shape = Shape(16);
    pub const F32: Shape = Shape(32);
    pub const ALL: [Shape; 3] = [Self::F8, Self::F16, Self::F32];

    pub fn fields(self) -> usize {
        self.0
    }

    /// The smallest shape with room for `fields` fields.
    pub fn for_fields(fields: usize) -> Option<Shape> {
        Self::ALL.into_iter().find(|s| s.0 >= fields)
    }

    /// The shape whose records encrypt to `len` elements.
    pub fn for_ciphertext(len: usize) -> Option<Shape> {
        Self::ALL.into_iter().find(|s| s.ciphertext_len() == len)
    }

    pub fn ciphertext_len(self) -> usize {
        cipher::ciphertext_len(self.0)
    }

    /// The statement's name, under which its keys, ceremony and verifying
    /// key anchors go.
    pub fn statement(self) -> &'static str {
        match self.0 {
            8 => "kyc8-v2",
            16 => "kyc16-v2",
            _ => "kyc32-v2",
        }
    }

    /// The shape of a statement name.
    pub fn for_statement(name: &str) -> Option<Shape> {
        Self::ALL.into_iter().find(|s| s.statement() == name)
    }
}

/// An identifier (ID number, name, record id) as a field element: SHA-256 of
/// its UTF-8 bytes, first 31 bytes big-endian, so it is below 2^248 and can
/// be a set member.
pub fn identifier(text: &str) -> Fr {
    let digest = Sha256::digest(text.as_bytes());
    Fr::from_be_bytes_mod_order(&digest[..31])
}

/// The anchored hash of a ciphertext, bound to its record and nonce: the
/// [`poseidon::tree_hash`] of `c0, .., c_{n-1}, binding, nonce`. For an
/// eight-field record that is `P(P(c0..c3), P(c4..c7), P(c8, c9, binding, nonce))`.
pub fn ciphertext_hash(binding: Fr, nonce: u128, ciphertext: &[Fr]) -> Result<Fr, CircuitError> {
    if Shape::for_ciphertext(ciphertext.len()).is_none() {
        return Err(CircuitError::NoShapeForCiphertext(ciphertext.len()));
    }
    let mut elements = ciphertext.to_vec();
    elements.extend([binding, Fr::from(nonce)]);
    Ok(poseidon::tree_hash(&elements))
}

/// The KMS's commitment to a cipher key: `Poseidon(k0, k1)`.
pub fn key_commitment(key: &[Fr; 2]) -> Fr {
    poseidon::hash(key)
}

/// Comparison operators (op codes are public inputs). The `*Field` ones
/// compare with another field of the record, whose index is operand `a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CmpOp {
    /// An unused slot.
    Always = 0,
    Eq = 1,
    Ne = 2,
    Lt = 3,
    Lte = 4,
    Gt = 5,
    Gte = 6,
    /// `a <= v <= b`.
    Between = 7,
    EqField = 8,
    NeField = 9,
    LtField = 10,
    LteField = 11,
    GtField = 12,
    GteField = 13,
}

impl CmpOp {
    pub const ALL: [CmpOp; 14] = [
        Self::Always,
        Self::Eq,
        Self::Ne,
        Self::Lt,
        Self::Lte,
        Self::Gt,
        Self::Gte,
        Self::Between,
        Self::EqField,
        Self::NeField,
        Self::LtField,
        Self::LteField,
        Self::GtField,
        Self::GteField,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    /// Ordering operators compare bounded integers.
    pub fn is_ordering(self) -> bool {
        matches!(
            self,
            Self::Lt
                | Self::Lte
                | Self::Gt
                | Self::Gte
                | Self::Between
                | Self::LtField
                | Self::LteField
                | Self::GtField
                | Self::GteField
        )
    }

    /// Whether operand `a` names another field rather than a constant.
    pub fn against_field(self) -> bool {
        self.code() >= Self::EqField.code()
    }

    /// The constant-operand operator this one applies to the other field.
    fn base(self) -> Self {
        match self {
            Self::EqField => Self::Eq,
            Self::NeField => Self::Ne,
            Self::LtField => Self::Lt,
            Self::LteField => Self::Lte,
            Self::GtField => Self::Gt,
            Self::GteField => Self::Gte,
            op => op,
        }
    }
}

/// Set operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SetOp {
    None = 0,
    In = 1,
    NotIn = 2,
}

impl SetOp {
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::None, Self::In, Self::NotIn]
            .get(code as usize)
            .copied()
    }
}

/// One comparison predicate on a record field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub field: u8,
    pub op: CmpOp,
    pub a: Fr,
    pub b: Fr,
}

impl Comparison {
    pub const UNUSED: Self = Self {
        field: 0,
        op: CmpOp::Always,
        a: Fr::ZERO,
        b: Fr::ZERO,
    };

    /// `field op other_field`, for the `*Field` operators.
    pub fn against_field(field: u8, op: CmpOp, other: u8) -> Self {
        Self {
            field,
            op,
            a: Fr::from(other as u64),
            b: Fr::ZERO,
        }
    }
}

/// The set predicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetPredicate {
    pub field: u8,
    pub op: SetOp,
    pub root: Fr,
}

impl SetPredicate {
    pub const UNUSED: Self = Self {
        field: 0,
        op: SetOp::None,
        root: Fr::ZERO,
    };
}

/// One predicate of a clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atom {
    Compare(Comparison),
    Set(SetPredicate),
}

/// A query: comparison predicates and an optional set predicate in
/// conjunctive normal form, `clauses[i]` naming slot i's clause (slot
/// [`COMPARISON_SLOTS`] is the set slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub comparisons: [Comparison; COMPARISON_SLOTS],
    pub set: SetPredicate,
    pub clauses: [u8; SLOTS],
}

impl Query {
    /// The AND of the predicates.
    pub fn new(
        comparisons: &[Comparison],
        set: Option<SetPredicate>,
    ) -> Result<Self, CircuitError> {
        let mut clauses: Vec<Vec<Atom>> = comparisons
            .iter()
            .map(|c| vec![Atom::Compare(*c)])
            .collect();
        clauses.extend(set.map(|s| vec![Atom::Set(s)]));
        Self::from_clauses(&clauses)
    }

    /// The AND of the clauses, each the OR of its atoms. Comparisons fill
    /// the comparison slots in order.
    pub fn from_clauses(clauses: &[Vec<Atom>]) -> Result<Self, CircuitError> {
        let mut query = Self {
            comparisons: [Comparison::UNUSED; COMPARISON_SLOTS],
            set: SetPredicate::UNUSED,
            clauses: [0; SLOTS],
        };
        let mut used = 0;
        let mut set_used = false;
        for (j, clause) in clauses.iter().enumerate() {
            if clause.is_empty() {
                return Err(CircuitError::EmptyClause);
            }
            for atom in clause {
                match atom {
                    Atom::Compare(c) if c.op == CmpOp::Always => {}
                    Atom::Compare(c) => {
                        if used == COMPARISON_SLOTS {
                            return Err(CircuitError::TooManyPredicates(used + 1));
                        }
                        query.comparisons[used] = *c;
                        query.clauses[used] = j as u8;
                        used += 1;
                    }
                    Atom::Set(s) if s.op == SetOp::None => {}
                    Atom::Set(s) => {
                        if set_used {
                            return Err(CircuitError::TooManySetPredicates);
                        }
                        set_used = true;
                        query.set = *s;
                        query.clauses[COMPARISON_SLOTS] = j as u8;
                    }
                }
            }
        }
        if clauses.len() > SLOTS {
            return Err(CircuitError::TooManyPredicates(clauses.len()));
        }
        query.check(MAX_FIELDS)?;
        Ok(query)
    }

    /// Which slots are in use.
    pub fn active(&self) -> [bool; SLOTS] {
        let mut out = [false; SLOTS];
        for (o, c) in out.iter_mut().zip(&self.comparisons) {
            *o = c.op != CmpOp::Always;
        }
        out[COMPARISON_SLOTS] = self.set.op != SetOp::None;
        out
    }

    fn check(&self, fields: usize) -> Result<(), CircuitError> {
        for c in &self.comparisons {
            if c.field as usize >= fields {
                return Err(CircuitError::NoSuchField(c.field));
            }
            let slack_a = c.op == CmpOp::Always && (c.field != 0 || !c.a.is_zero());
            if slack_a || (c.op != CmpOp::Between && !c.b.is_zero()) {
                return Err(CircuitError::NonCanonicalQuery);
            }
            if c.op.against_field() && !cmp::fits_bits(c.a, 8) {
                return Err(CircuitError::NoSuchField(u8::MAX));
            }
            if c.op.against_field() && other_field(c) as usize >= fields {
                return Err(CircuitError::NoSuchField(other_field(c)));
            }
            if c.op.is_ordering()
                && !c.op.against_field()
                && (!cmp::fits_bits(c.a, INT_BITS)
                    || (c.op == CmpOp::Between && !cmp::fits_bits(c.b, INT_BITS)))
            {
                return Err(CircuitError::OutOfRange(c.field));
            }
        }
        if self.set.field as usize >= fields {
            return Err(CircuitError::NoSuchField(self.set.field));
        }
        if self.set.op == SetOp::None && (self.set.field != 0 || !self.set.root.is_zero()) {
            return Err(CircuitError::NonCanonicalQuery);
        }
        let active = self.active();
        for (c, a) in self.clauses.iter().zip(active) {
            if *c as usize >= SLOTS || (!a && *c != 0) {
                return Err(CircuitError::NonCanonicalQuery);
            }
        }
        Ok(())
    }

    /// Evaluates the query on a plaintext record of one of the shapes (the
    /// native twin of the statement). `set_path` must be the low-leaf path
    /// of the set field's value when the set predicate is used.
    pub fn evaluate(
        &self,
        record: &[Fr],
        set_path: Option<&LowLeafPath>,
    ) -> Result<bool, CircuitError> {
        let shape = Shape::for_fields(record.len())
            .filter(|s| s.fields() == record.len())
            .ok_or(CircuitError::RecordLength(record.len()))?;
        self.check(shape.fields())?;
        let mut holds = [true; SLOTS];
        for (h, c) in holds.iter_mut().zip(&self.comparisons) {
            let v = record[c.field as usize];
            let a = if c.op.against_field() {
                record[other_field(c) as usize]
            } else {
                c.a
            };
            let out_of_range = || {
                CircuitError::OutOfRange(if cmp::fits_bits(v, INT_BITS) {
                    other_field(c)
                } else {
                    c.field
                })
            };
            let lt = |x: Fr, y: Fr| cmp::less_than(x, y, INT_BITS).ok_or_else(out_of_range);
            *h = match c.op.base() {
                CmpOp::Always => true,
                CmpOp::Eq => v == a,
                CmpOp::Ne => v != a,
                CmpOp::Lt => lt(v, a)?,
                CmpOp::Lte => !lt(a, v)?,
                CmpOp::Gt => lt(a, v)?,
                CmpOp::Gte => !lt(v, a)?,
                CmpOp::Between => !lt(v, a)? && !lt(c.b, v)?,
                _ => unreachable!("base() maps every field operator"),
            };
        }
        if self.set.op != SetOp::None {
            let v = record[self.set.field as usize];
            let path = set_path.ok_or(CircuitError::MissingSetPath)?;
            if !cmp::fits_bits(v, SET_VALUE_BITS) {
                return Err(CircuitError::OutOfRange(self.set.field));
            }
            let u = v + Fr::from(1u64);
            let bracketed = path.low.into_bigint() <= u.into_bigint()
                && u.into_bigint() < path.next.into_bigint();
            if path.root() != self.set.root || !bracketed {
                return Err(CircuitError::MissingSetPath);
            }
            let member = path.low == u;
            holds[COMPARISON_SLOTS] = if self.set.op == SetOp::In {
                member
            } else {
                !member
            };
        }
        Ok(formula::evaluate(&self.active(), &holds, &self.clauses))
    }
}

/// The other field's index of a `*Field` comparison (`a` is below 2^8 once
/// checked).
fn other_field(c: &Comparison) -> u8 {
    c.a.into_bigint().as_ref()[0].min(u8::MAX as u64) as u8
}

/// The public side of a statement instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KycPublic {
    pub record_binding: Fr,
    pub ciphertext_hash: Fr,
    pub key_commitment: Fr,
    pub nonce: u128,
    pub query: Query,
    pub result: bool,
}

impl KycPublic {
    /// The public inputs in circuit order.
    pub fn to_inputs(&self) -> Vec<Fr> {
        let mut out = Vec::with_capacity(PUBLIC_INPUTS);
        out.extend([
            self.record_binding,
            self.ciphertext_hash,
            self.key_commitment,
            Fr::from(self.nonce),
        ]);
        for c in &self.query.comparisons {
            out.extend([
                Fr::from(c.field as u64),
                Fr::from(c.op.code() as u64),
                c.a,
                c.b,
            ]);
        }
        let s = &self.query.set;
        out.extend([
            Fr::from(s.field as u64),
            Fr::from(s.op as u64),
            s.root,
            Fr::from(formula::pack(&self.query.clauses)),
            Fr::from(self.result as u64),
        ]);
        out
    }

    /// Parses public inputs (e.g. from `public.json`), refusing malformed
    /// ones. Field indices are checked against the largest shape; one past
    /// a smaller shape's fields cannot be proven in it.
    pub fn from_inputs(inputs: &[Fr]) -> Result<Self, CircuitError> {
        if inputs.len() != PUBLIC_INPUTS {
            return Err(CircuitError::PublicInputCount {
                expected: PUBLIC_INPUTS,
                got: inputs.len(),
            });
        }
        let small = |x: Fr, bits: usize| -> Result<u128, CircuitError> {
            if !cmp::fits_bits(x, bits) {
                return Err(CircuitError::MalformedPublicInput);
            }
            let bytes = x.into_bigint().to_bytes_le();
            Ok(u128::from_le_bytes(
                bytes[..16].try_into().expect("32-byte encoding"),
            ))
        };
        let byte = |x: Fr| small(x, 8).map(|v| v as u8);
        let mut comparisons = [Comparison::UNUSED; COMPARISON_SLOTS];
        for (i, c) in comparisons.iter_mut().enumerate() {
            let base = 4 + 4 * i;
            *c = Comparison {
                field: byte(inputs[base])?,
                op: CmpOp::from_code(byte(inputs[base + 1])?)
                    .ok_or(CircuitError::MalformedPublicInput)?,
                a: inputs[base + 2],
                b: inputs[base + 3],
            };
        }
        let set = SetPredicate {
            field: byte(inputs[20])?,
            op: SetOp::from_code(byte(inputs[21])?).ok_or(CircuitError::MalformedPublicInput)?,
            root: inputs[22],
        };
        let clauses = formula::unpack(small(inputs[23], 3 * SLOTS)? as u64, SLOTS)
            .ok_or(CircuitError::MalformedPublicInput)?
            .try_into()
            .expect("unpack gives SLOTS indices");
        let result = small(inputs[24], 1)? == 1;
        let query = Query {
            comparisons,
            set,
            clauses,
        };
        query.check(MAX_FIELDS)?;
        Ok(Self {
            record_binding: inputs[0],
            ciphertext_hash: inputs[1],
            key_commitment: inputs[2],
            nonce: small(inputs[3], cipher::NONCE_BITS)?,
            query,
            result,
        })
    }
}

/// The private side: the ciphertext, the key and the set path.
#[derive(Clone, Debug)]
pub struct KycWitness {
    pub ciphertext: Vec<Fr>,
    pub key: [Fr; 2],
    pub set_path: LowLeafPath,
}

/// The statement as an arkworks circuit, for one shape.
#[derive(Clone, Debug)]
pub struct KycCircuit {
    pub shape: Shape,
    pub public: KycPublic,
    pub witness: KycWitness,
}

impl KycCircuit {
    /// A well-shaped instance for key generation (values are irrelevant).
    pub fn blank(shape: Shape) -> Self {
        Self {
            shape,
            public: KycPublic {
                record_binding: Fr::zero(),
                ciphertext_hash: Fr::zero(),
                key_commitment: Fr::zero(),
                nonce: 0,
                query: Query {
                    comparisons: [Comparison::UNUSED; COMPARISON_SLOTS],
                    set: SetPredicate::UNUSED,
                    clauses: [0; SLOTS],
                },
                result: true,
            },
            witness: KycWitness {
                ciphertext: vec![Fr::zero(); shape.ciphertext_len()],
                key: [Fr::zero(); 2],
                set_path: LowLeafPath::unused(),
            },
        }
    }
}

/// One comparison slot: whether it is active, and whether it holds.
fn comparison_gadget(
    record: &[FpVar<Fr>],
    field: &FpVar<Fr>,
    op: &FpVar<Fr>,
    a: &FpVar<Fr>,
    b: &FpVar<Fr>,
) -> Result<(Boolean<Fr>, Boolean<Fr>), SynthesisError> {
    let v = select(record, &one_hot(field, record.len())?)?;
    let s = one_hot(op, CmpOp::ALL.len())?;
    let sel = |op: CmpOp| FpVar::from(s[op as usize].clone());
    // Canonical form: unused operands are 0, so no public input is slack.
    (sel(CmpOp::Always) * field).enforce_equal(&FpVar::zero())?;
    (sel(CmpOp::Always) * a).enforce_equal(&FpVar::zero())?;
    (FpVar::from(!s[CmpOp::Between as usize].clone()) * b).enforce_equal(&FpVar::zero())?;
    // Against a field, `a` is its index (unsatisfiable past the record).
    let against: FpVar<Fr> = CmpOp::ALL
        .iter()
        .filter(|o| o.against_field())
        .map(|o| sel(*o))
        .sum();
    let other = select(record, &one_hot(&(&against * a), record.len())?)?;
    let operand = a + &against * (other - a);
    let ordering: FpVar<Fr> = CmpOp::ALL
        .iter()
        .filter(|o| o.is_ordering())
        .map(|o| sel(*o))
        .sum();
    // Range checks apply only to ordering ops, so `eq` works on identifiers.
    let x = &ordering * &v;
    let a_ord = &ordering * &operand;
    let b_ord = sel(CmpOp::Between) * b;
    enforce_bits(&x, INT_BITS)?;
    enforce_bits(&a_ord, INT_BITS)?;
    enforce_bits(&b_ord, INT_BITS)?;
    let lt_a = is_less_than(&x, &a_ord, INT_BITS)?;
    let gt_a = is_less_than(&a_ord, &x, INT_BITS)?;
    let gt_b = is_less_than(&b_ord, &x, INT_BITS)?;
    let eq = v.is_eq(&operand)?;
    let holds = |op: CmpOp| match op.base() {
        CmpOp::Always => Boolean::TRUE,
        CmpOp::Eq => eq.clone(),
        CmpOp::Ne => !eq.clone(),
        CmpOp::Lt => lt_a.clone(),
        CmpOp::Lte => !gt_a.clone(),
        CmpOp::Gt => gt_a.clone(),
        CmpOp::Gte => !lt_a.clone(),
        _ => !lt_a.clone() & !gt_b.clone(),
    };
    let terms: Vec<Boolean<Fr>> = CmpOp::ALL
        .iter()
        .map(|o| &s[*o as usize] & &holds(*o))
        .collect();
    Ok((
        !s[CmpOp::Always as usize].clone(),
        Boolean::kary_or(&terms)?,
    ))
}

/// The set slot: whether it is active, and whether it holds.
fn set_gadget(
    record: &[FpVar<Fr>],
    field: &FpVar<Fr>,
    op: &FpVar<Fr>,
    root: &FpVar<Fr>,
    path: &LowLeafPath,
    cs: &ConstraintSystemRef<Fr>,
) -> Result<(Boolean<Fr>, Boolean<Fr>), SynthesisError> {
    let v = select(record, &one_hot(field, record.len())?)?;
    let s = one_hot(op, 3)?;
    let none = FpVar::from(s[SetOp::None as usize].clone());
    (&none * field).enforce_equal(&FpVar::zero())?;
    (&none * root).enforce_equal(&FpVar::zero())?;
    let active = !s[SetOp::None as usize].clone();
    let v_active = FpVar::from(active.clone()) * &v;
    enforce_bits(&v_active, SET_VALUE_BITS)?;
    let u = v_active + FpVar::one();
    let low = FpVar::new_witness(cs.clone(), || Ok(path.low))?;
    let next = FpVar::new_witness(cs.clone(), || Ok(path.next))?;
    let bits = path
        .index_bits
        .iter()
        .map(|b| Boolean::new_witness(cs.clone(), || Ok(*b)))
        .collect::<Result<Vec<_>, _>>()?;
    let siblings = path
        .siblings
        .iter()
        .map(|x| FpVar::new_witness(cs.clone(), || Ok(*x)))
        .collect::<Result<Vec<_>, _>>()?;
    let params3 = poseidon::bn254_params(3);
    let leaf = poseidon::constraints::hash(params3, &[low.clone(), next.clone()])?;
    let computed = set::root_gadget(params3, leaf, &bits, &siblings)?;
    computed.conditional_enforce_equal(root, &active)?;
    let low_le_u = !is_less_than(&u, &low, SET_VALUE_BITS + 1)?;
    let u_lt_next = is_less_than(&u, &next, SET_VALUE_BITS + 1)?;
    (low_le_u & u_lt_next).conditional_enforce_equal(&Boolean::TRUE, &active)?;
    let member = u.is_eq(&low)?;
    let holds = (&s[SetOp::In as usize] & &member) | (&s[SetOp::NotIn as usize] & &!member);
    Ok((active, holds))
}

/// The statement is written over BN254's scalar field (its native twin and
/// anchors are BN254 values).
impl ConstraintSynthesizer<Fr> for KycCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let inputs = self.public.to_inputs();
        let vars = inputs
            .iter()
            .map(|x| FpVar::new_input(cs.clone(), || Ok(*x)))
            .collect::<Result<Vec<_>, _>>()?;
        let w = &self.witness;
        if w.ciphertext.len() != self.shape.ciphertext_len()
            || w.set_path.siblings.len() != set::SET_DEPTH
        {
            return Err(SynthesisError::Unsatisfiable);
        }
        let ciphertext = w
            .ciphertext
            .iter()
            .map(|c| FpVar::new_witness(cs.clone(), || Ok(*c)))
            .collect::<Result<Vec<_>, _>>()?;
        let key = [
            FpVar::new_witness(cs.clone(), || Ok(w.key[0]))?,
            FpVar::new_witness(cs.clone(), || Ok(w.key[1]))?,
        ];
        let (binding, ct_hash, key_comm, nonce) = (&vars[0], &vars[1], &vars[2], &vars[3]);
        enforce_bits(nonce, cipher::NONCE_BITS)?;

        poseidon::constraints::hash(poseidon::bn254_params(3), &key)?.enforce_equal(key_comm)?;
        let mut hashed = ciphertext.clone();
        hashed.extend([binding.clone(), nonce.clone()]);
        poseidon::constraints::tree_hash(&hashed)?.enforce_equal(ct_hash)?;

        let record = cipher::decrypt_gadget(
            poseidon::bn254_params(4),
            &ciphertext,
            &key,
            nonce,
            self.shape.fields(),
        )?;
        let mut active = Vec::with_capacity(SLOTS);
        let mut holds = Vec::with_capacity(SLOTS);
        for i in 0..COMPARISON_SLOTS {
            let base = 4 + 4 * i;
            let (a, h) = comparison_gadget(
                &record,
                &vars[base],
                &vars[base + 1],
                &vars[base + 2],
                &vars[base + 3],
            )?;
            active.push(a);
            holds.push(h);
        }
        let (a, h) = set_gadget(&record, &vars[20], &vars[21], &vars[22], &w.set_path, &cs)?;
        active.push(a);
        holds.push(h);
        let result = formula::evaluate_gadget(&active, &holds, &vars[23])?;
        FpVar::from(result).enforce_equal(&vars[24])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set::SortedSet;
    use ark_relations::gr1cs::ConstraintSystem;
    use proptest::prelude::*;

    struct Fixture {
        shape: Shape,
        record: Vec<Fr>,
        key: [Fr; 2],
        nonce: u128,
        binding: Fr,
        ciphertext: Vec<Fr>,
        set: SortedSet,
    }

    fn fixture(record: Vec<Fr>) -> Fixture {
        let shape = Shape::for_fields(record.len()).unwrap();
        assert_eq!(shape.fields(), record.len());
        let key = [Fr::from(11u64), Fr::from(22u64)];
        let nonce = 42;
        let binding = identifier("record-1");
        let ciphertext = cipher::encrypt(&record, &key, nonce);
        let members: Vec<Fr> = (0..16u64)
            .map(|i| identifier(&format!("sanctioned-{i}")))
            .collect();
        let set = SortedSet::build(&members).unwrap();
        Fixture {
            shape,
            record,
            key,
            nonce,
            binding,
            ciphertext,
            set,
        }
    }

    fn standard_record() -> Vec<Fr> {
        let mut r = vec![Fr::zero(); 8];
        r[0] = identifier("ID-310101199001011234");
        r[1] = Fr::from(19_900_101u64); // birth date
        r[2] = Fr::from(120_000u64); // income
        r[3] = Fr::from(720u64); // credit score
        r
    }

    impl Fixture {
        fn instance(&self, query: Query) -> (KycCircuit, bool) {
            let path = if query.set.op != SetOp::None {
                self.set
                    .path(self.record[query.set.field as usize])
                    .unwrap()
            } else {
                LowLeafPath::unused()
            };
            let result = query.evaluate(&self.record, Some(&path)).unwrap();
            let public = KycPublic {
                record_binding: self.binding,
                ciphertext_hash: ciphertext_hash(self.binding, self.nonce, &self.ciphertext)
                    .unwrap(),
                key_commitment: key_commitment(&self.key),
                nonce: self.nonce,
                query,
                result,
            };
            let witness = KycWitness {
                ciphertext: self.ciphertext.clone(),
                key: self.key,
                set_path: path,
            };
            (
                KycCircuit {
                    shape: self.shape,
                    public,
                    witness,
                },
                result,
            )
        }
    }

    fn satisfied(circuit: KycCircuit) -> bool {
        let cs = ConstraintSystem::<Fr>::new_ref();
        circuit.generate_constraints(cs.clone()).unwrap();
        cs.is_satisfied().unwrap()
    }

    fn kyc_query(f: &Fixture, income_threshold: u64) -> Query {
        Query::new(
            &[
                Comparison {
                    field: 0,
                    op: CmpOp::Eq,
                    a: identifier("ID-310101199001011234"),
                    b: Fr::zero(),
                },
                Comparison {
                    field: 1,
                    op: CmpOp::Lte,
                    a: Fr::from(20_071_125u64),
                    b: Fr::zero(),
                },
                Comparison {
                    field: 2,
                    op: CmpOp::Gte,
                    a: Fr::from(income_threshold),
                    b: Fr::zero(),
                },
                Comparison {
                    field: 3,
                    op: CmpOp::Between,
                    a: Fr::from(650u64),
                    b: Fr::from(850u64),
                },
            ],
            Some(SetPredicate {
                field: 0,
                op: SetOp::NotIn,
                root: f.set.root(),
            }),
        )
        .unwrap()
    }

    #[test]
    fn true_and_false_answers_are_provable_and_only_those() {
        let f = fixture(standard_record());
        for (threshold, expected) in [(100_000u64, true), (150_000, false)] {
            let (circuit, result) = f.instance(kyc_query(&f, threshold));
            assert_eq!(result, expected);
            let cs = ConstraintSystem::<Fr>::new_ref();
            circuit.clone().generate_constraints(cs.clone()).unwrap();
            assert!(cs.is_satisfied().unwrap());
            assert_eq!(cs.num_instance_variables(), PUBLIC_INPUTS + 1);
            println!("KYC statement: {} constraints", cs.num_constraints());
            let mut lie = circuit.clone();
            lie.public.result = !result;
            assert!(!satisfied(lie), "a false claim must not be provable");
        }
    }

    #[test]
    fn every_public_input_is_bound() {
        let f = fixture(standard_record());
        assert_inputs_bound(&f, kyc_query(&f, 100_000));
    }

    /// Altering any public input leaves the circuit unsatisfiable, unless
    /// it makes another true statement about the same record.
    fn assert_inputs_bound(f: &Fixture, query: Query) {
        let (circuit, _) = f.instance(query);
        let inputs = circuit.public.to_inputs();
        assert_eq!(KycPublic::from_inputs(&inputs).unwrap(), circuit.public);
        for i in 0..PUBLIC_INPUTS {
            let mut altered = inputs.clone();
            altered[i] += Fr::from(1u64);
            // Some alterations do not even parse (op codes, result bit); the
            // rest must leave the circuit unsatisfiable.
            let Ok(public) = KycPublic::from_inputs(&altered) else {
                continue;
            };
            // An altered query constant or clause may still be a true
            // statement about this record (it is then another statement;
            // the Groth16 proof of the original does not transfer, see the
            // zk tests). Anything else must leave the circuit unsatisfiable.
            let still_true = ((4..20).contains(&i) || i == 23)
                && public
                    .query
                    .evaluate(&f.record, Some(&circuit.witness.set_path))
                    == Ok(public.result);
            let c = KycCircuit {
                shape: circuit.shape,
                public,
                witness: circuit.witness.clone(),
            };
            assert_eq!(satisfied(c), still_true, "altered public input {i}");
        }
    }

    #[test]
    fn tampered_witness_and_replay_are_refused() {
        let f = fixture(standard_record());
        assert_tampering_refused(&f, kyc_query(&f, 100_000));
    }

    /// Another key, ciphertext or set path, another record's binding, or
    /// the other answer: none satisfies.
    fn assert_tampering_refused(f: &Fixture, query: Query) {
        let (circuit, _) = f.instance(query);
        assert!(satisfied(circuit.clone()));
        let mut c = circuit.clone();
        c.witness.key[0] += Fr::from(1u64);
        assert!(!satisfied(c));
        for i in [0, 3, circuit.witness.ciphertext.len() - 1] {
            let mut c = circuit.clone();
            c.witness.ciphertext[i] += Fr::from(1u64);
            assert!(!satisfied(c), "altered ciphertext element {i}");
        }
        // Another record's ciphertext under the same key.
        let mut other = f.record.clone();
        other[1] += Fr::from(1u64);
        let mut c = circuit.clone();
        c.witness.ciphertext = cipher::encrypt(&other, &f.key, f.nonce);
        assert!(!satisfied(c), "another record's ciphertext");
        if query.set.op != SetOp::None {
            let mut c = circuit.clone();
            c.witness.set_path.siblings[5] += Fr::from(1u64);
            assert!(!satisfied(c));
        }
        // Replay against another record: same proof inputs but another binding.
        let mut c = circuit.clone();
        c.public.record_binding = identifier("record-2");
        assert!(!satisfied(c));
        let mut c = circuit;
        c.public.result = !c.public.result;
        assert!(!satisfied(c), "the other answer");
    }

    /// A record of `shape` with a balance and a loan in its last two fields.
    fn wide_record(shape: Shape, balance: u64, loan: u64) -> Vec<Fr> {
        let mut r = standard_record();
        r.resize(shape.fields(), Fr::zero());
        for (i, x) in r.iter_mut().enumerate().skip(4) {
            *x = Fr::from(1_000 + i as u64);
        }
        let n = shape.fields();
        r[n - 2] = Fr::from(balance);
        r[n - 1] = Fr::from(loan);
        r
    }

    #[test]
    fn every_shape_answers_or_and_field_comparisons_and_refuses_tampering() {
        let cmp = |field: u8, op: CmpOp, a: u64| {
            Atom::Compare(Comparison {
                field,
                op,
                a: Fr::from(a),
                b: Fr::zero(),
            })
        };
        for shape in Shape::ALL {
            let n = shape.fields() as u8;
            let (balance, loan) = (n - 2, n - 1);
            let f = fixture(wide_record(shape, 50_000, 30_000));
            let vs = |op| Atom::Compare(Comparison::against_field(balance, op, loan));
            let cases = [
                // (income >= 150000 or score >= 700) and balance >= loan
                (
                    vec![
                        vec![cmp(2, CmpOp::Gte, 150_000), cmp(3, CmpOp::Gte, 700)],
                        vec![vs(CmpOp::GteField)],
                    ],
                    true,
                ),
                // income >= 150000 or score >= 800
                (
                    vec![vec![cmp(2, CmpOp::Gte, 150_000), cmp(3, CmpOp::Gte, 800)]],
                    false,
                ),
                // balance < loan, or the last field is not the first's twin
                (
                    vec![vec![vs(CmpOp::LtField)], vec![vs(CmpOp::NeField)]],
                    false,
                ),
                // the sanctions check or-ed with an equality on a far field
                (
                    vec![vec![
                        Atom::Set(SetPredicate {
                            field: 0,
                            op: SetOp::In,
                            root: f.set.root(),
                        }),
                        cmp(balance, CmpOp::Eq, 50_000),
                    ]],
                    true,
                ),
            ];
            for (clauses, expected) in cases {
                let query = Query::from_clauses(&clauses).unwrap();
                let (_, result) = f.instance(query);
                assert_eq!(result, expected, "{shape:?} {clauses:?}");
                assert_tampering_refused(&f, query);
            }
            let query = Query::from_clauses(&[vec![vs(CmpOp::GteField)]]).unwrap();
            assert_inputs_bound(&f, query);
            let cs = ConstraintSystem::<Fr>::new_ref();
            f.instance(query)
                .0
                .generate_constraints(cs.clone())
                .unwrap();
            println!(
                "{}: {} fields, {} constraints",
                shape.statement(),
                shape.fields(),
                cs.num_constraints()
            );
        }
    }

    #[test]
    fn malformed_queries_are_refused_with_their_reason() {
        let f = fixture(standard_record());
        let c = Comparison::against_field(2, CmpOp::GteField, 8);
        assert_eq!(
            Query::new(&[c], None).unwrap().evaluate(&f.record, None),
            Err(CircuitError::NoSuchField(8))
        );
        assert_eq!(
            Query::from_clauses(&[vec![]]),
            Err(CircuitError::EmptyClause)
        );
        let set = SetPredicate {
            field: 0,
            op: SetOp::In,
            root: Fr::from(1u64),
        };
        assert_eq!(
            Query::from_clauses(&[vec![Atom::Set(set)], vec![Atom::Set(set)]]),
            Err(CircuitError::TooManySetPredicates)
        );
        // An identifier field compared by order with another is out of range.
        let mut record = standard_record();
        record[5] = Fr::from(3u64);
        let q = Query::new(&[Comparison::against_field(5, CmpOp::LtField, 0)], None).unwrap();
        assert_eq!(q.evaluate(&record, None), Err(CircuitError::OutOfRange(0)));
        assert_eq!(
            q.evaluate(&record[..7], None),
            Err(CircuitError::RecordLength(7))
        );
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let mut record = standard_record();
        record[2] = Fr::from(1u128 << 64); // income beyond 64 bits
        let f = fixture(record);
        let q = kyc_query(&f, 100_000);
        assert_eq!(
            q.evaluate(&f.record, None),
            Err(CircuitError::OutOfRange(2))
        );
        // Forcing either answer cannot satisfy the statement.
        let path = f.set.path(f.record[0]).unwrap();
        for result in [false, true] {
            let public = KycPublic {
                record_binding: f.binding,
                ciphertext_hash: ciphertext_hash(f.binding, f.nonce, &f.ciphertext).unwrap(),
                key_commitment: key_commitment(&f.key),
                nonce: f.nonce,
                query: q,
                result,
            };
            let witness = KycWitness {
                ciphertext: f.ciphertext.clone(),
                key: f.key,
                set_path: path.clone(),
            };
            assert!(!satisfied(KycCircuit {
                shape: f.shape,
                public,
                witness
            }));
        }
        let bad = Comparison {
            field: 2,
            op: CmpOp::Gte,
            a: Fr::from(1u128 << 64),
            b: Fr::zero(),
        };
        assert_eq!(Query::new(&[bad], None), Err(CircuitError::OutOfRange(2)));
    }

    fn op_strategy() -> impl Strategy<Value = CmpOp> {
        (0u8..14).prop_map(|c| CmpOp::from_code(c).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn proven_result_equals_plaintext_evaluation(
            values in proptest::collection::vec(0u64..64, 8),
            preds in proptest::collection::vec((0u8..8, op_strategy(), 0u64..64, 0u64..64), 0..=4),
            set_op in 0u8..3,
            set_field in 0u8..8,
            groups in proptest::array::uniform4(0u8..5),
            set_group in 0u8..5,
        ) {
            let record: Vec<Fr> = values.iter().map(|v| Fr::from(*v)).collect();
            let mut f = fixture(record);
            f.set = SortedSet::build(&(0..64u64).step_by(3).map(Fr::from).collect::<Vec<_>>()).unwrap();
            let comparisons: Vec<Comparison> = preds
                .iter()
                .map(|&(field, op, a, b)| match op {
                    CmpOp::Always => Comparison::UNUSED,
                    CmpOp::Between => Comparison { field, op, a: Fr::from(a), b: Fr::from(b) },
                    op if op.against_field() => Comparison::against_field(field, op, (a % 8) as u8),
                    _ => Comparison { field, op, a: Fr::from(a), b: Fr::zero() },
                })
                .collect();
            let set = match SetOp::from_code(set_op).unwrap() {
                SetOp::None => SetPredicate::UNUSED,
                op => SetPredicate { field: set_field, op, root: f.set.root() },
            };
            // Slot i joins clause groups[i]: AND, OR and mixtures.
            let mut clauses: Vec<Vec<Atom>> = vec![Vec::new(); SLOTS];
            for (c, g) in comparisons.iter().zip(&groups) {
                clauses[*g as usize].push(Atom::Compare(*c));
            }
            clauses[set_group as usize].push(Atom::Set(set));
            clauses.retain(|c| !c.is_empty());
            let query = Query::from_clauses(&clauses).unwrap();
            let (circuit, result) = f.instance(query);
            let holds = |c: &Comparison| {
                let v = values[c.field as usize];
                let (a, b) = (c.a, c.b);
                let (a, b) = (a.into_bigint().0[0], b.into_bigint().0[0]);
                let a = if c.op.against_field() { values[a as usize] } else { a };
                match c.op.base() {
                    CmpOp::Always => true,
                    CmpOp::Eq => v == a,
                    CmpOp::Ne => v != a,
                    CmpOp::Lt => v < a,
                    CmpOp::Lte => v <= a,
                    CmpOp::Gt => v > a,
                    CmpOp::Gte => v >= a,
                    CmpOp::Between => a <= v && v <= b,
                    _ => unreachable!(),
                }
            };
            let set_holds = match set.op {
                SetOp::None => None,
                SetOp::In => Some(values[set_field as usize] % 3 == 0),
                SetOp::NotIn => Some(values[set_field as usize] % 3 != 0),
            };
            // Each non-empty clause: any of its active atoms holds.
            let plain = clauses.iter().all(|clause| {
                let active: Vec<bool> = clause
                    .iter()
                    .filter_map(|a| match a {
                        Atom::Compare(c) if c.op != CmpOp::Always => Some(holds(c)),
                        Atom::Set(_) => set_holds,
                        _ => None,
                    })
                    .collect();
                active.is_empty() || active.contains(&true)
            });
            prop_assert_eq!(result, plain);
            prop_assert!(satisfied(circuit.clone()));
            let mut lie = circuit;
            lie.public.result = !result;
            prop_assert!(!satisfied(lie));
        }
    }
}
