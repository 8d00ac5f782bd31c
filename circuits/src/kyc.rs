//! The KYC statement: "the anchored ciphertext decrypts, under the committed
//! key, to a record on which this query evaluates to `result`".
//!
//! One circuit shape serves every query: four comparison slots and one set
//! slot, each with its field index and op code as public inputs (unused
//! slots carry op 0, "always true"). Public inputs, in order:
//!
//! | # | input |
//! |---|---|
//! | 0 | record binding (`identifier(record_id)`) |
//! | 1 | ciphertext hash (see [`ciphertext_hash`]) |
//! | 2 | key commitment `Poseidon(k0, k1)` |
//! | 3 | nonce (< 2^128) |
//! | 4 + 4i .. 8 + 4i | comparison slot i: field index, op code, a, b |
//! | 20, 21, 22 | set slot: field index, op code, Merkle root |
//! | 23 | result bit |

use ark_bn254::Fr;
use ark_ff::{AdditiveGroup, BigInteger, PrimeField, Zero};
use ark_r1cs_std::{
    GR1CSVar,
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
use crate::poseidon;
use crate::set::{self, LowLeafPath, SET_VALUE_BITS};

/// Fields in a record (unused fields are 0).
pub const RECORD_FIELDS: usize = 8;
/// Comparison predicates per query.
pub const COMPARISON_SLOTS: usize = 4;
/// Width of integer fields and of ordering constants.
pub const INT_BITS: usize = 64;
/// Ciphertext elements of an 8-field record: 9 (padded) + the tag.
pub const CIPHERTEXT_LEN: usize = 10;
/// Number of public inputs.
pub const PUBLIC_INPUTS: usize = 4 + 4 * COMPARISON_SLOTS + 3 + 1;

/// An identifier (ID number, name, record id) as a field element: SHA-256 of
/// its UTF-8 bytes, first 31 bytes big-endian, so it is below 2^248 and can
/// be a set member.
pub fn identifier(text: &str) -> Fr {
    let digest = Sha256::digest(text.as_bytes());
    Fr::from_be_bytes_mod_order(&digest[..31])
}

/// The anchored hash of a ciphertext, bound to its record and nonce:
/// `P(P(c0..c3), P(c4..c7), P(c8, c9, binding, nonce))`.
pub fn ciphertext_hash(binding: Fr, nonce: u128, ciphertext: &[Fr]) -> Result<Fr, CircuitError> {
    if ciphertext.len() != CIPHERTEXT_LEN {
        return Err(CircuitError::CiphertextLength {
            expected: CIPHERTEXT_LEN,
            got: ciphertext.len(),
        });
    }
    let h1 = poseidon::hash(&ciphertext[0..4]);
    let h2 = poseidon::hash(&ciphertext[4..8]);
    let h3 = poseidon::hash(&[ciphertext[8], ciphertext[9], binding, Fr::from(nonce)]);
    Ok(poseidon::hash(&[h1, h2, h3]))
}

/// The KMS's commitment to a cipher key: `Poseidon(k0, k1)`.
pub fn key_commitment(key: &[Fr; 2]) -> Fr {
    poseidon::hash(key)
}

/// Comparison operators (op codes are public inputs).
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
}

impl CmpOp {
    pub const ALL: [CmpOp; 8] = [
        Self::Always,
        Self::Eq,
        Self::Ne,
        Self::Lt,
        Self::Lte,
        Self::Gt,
        Self::Gte,
        Self::Between,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    /// Ordering operators compare bounded integers.
    pub fn is_ordering(self) -> bool {
        self.code() >= Self::Lt.code()
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

/// A query: comparison predicates and an optional set predicate, ANDed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub comparisons: [Comparison; COMPARISON_SLOTS],
    pub set: SetPredicate,
}

impl Query {
    pub fn new(
        comparisons: &[Comparison],
        set: Option<SetPredicate>,
    ) -> Result<Self, CircuitError> {
        if comparisons.len() > COMPARISON_SLOTS {
            return Err(CircuitError::TooManyPredicates(comparisons.len()));
        }
        let mut slots = [Comparison::UNUSED; COMPARISON_SLOTS];
        slots[..comparisons.len()].copy_from_slice(comparisons);
        let query = Self {
            comparisons: slots,
            set: set.unwrap_or(SetPredicate::UNUSED),
        };
        query.check()?;
        Ok(query)
    }

    fn check(&self) -> Result<(), CircuitError> {
        for c in &self.comparisons {
            if c.field as usize >= RECORD_FIELDS {
                return Err(CircuitError::NoSuchField(c.field));
            }
            let slack_a = c.op == CmpOp::Always && (c.field != 0 || !c.a.is_zero());
            if slack_a || (c.op != CmpOp::Between && !c.b.is_zero()) {
                return Err(CircuitError::NonCanonicalQuery);
            }
            if c.op.is_ordering()
                && (!cmp::fits_bits(c.a, INT_BITS)
                    || (c.op == CmpOp::Between && !cmp::fits_bits(c.b, INT_BITS)))
            {
                return Err(CircuitError::OutOfRange(c.field));
            }
        }
        if self.set.field as usize >= RECORD_FIELDS {
            return Err(CircuitError::NoSuchField(self.set.field));
        }
        if self.set.op == SetOp::None && (self.set.field != 0 || !self.set.root.is_zero()) {
            return Err(CircuitError::NonCanonicalQuery);
        }
        Ok(())
    }

    /// Evaluates the query on a plaintext record (the native twin of the
    /// statement). `set_path` must be the low-leaf path of the set field's
    /// value when the set predicate is used.
    pub fn evaluate(
        &self,
        record: &[Fr; RECORD_FIELDS],
        set_path: Option<&LowLeafPath>,
    ) -> Result<bool, CircuitError> {
        self.check()?;
        let mut all = true;
        for c in &self.comparisons {
            let v = record[c.field as usize];
            let lt = |x: Fr, y: Fr| {
                cmp::less_than(x, y, INT_BITS).ok_or(CircuitError::OutOfRange(c.field))
            };
            let holds = match c.op {
                CmpOp::Always => true,
                CmpOp::Eq => v == c.a,
                CmpOp::Ne => v != c.a,
                CmpOp::Lt => lt(v, c.a)?,
                CmpOp::Lte => !lt(c.a, v)?,
                CmpOp::Gt => lt(c.a, v)?,
                CmpOp::Gte => !lt(v, c.a)?,
                CmpOp::Between => !lt(v, c.a)? && !lt(c.b, v)?,
            };
            all &= holds;
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
            all &= if self.set.op == SetOp::In {
                member
            } else {
                !member
            };
        }
        Ok(all)
    }
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
            Fr::from(self.result as u64),
        ]);
        out
    }

    /// Parses public inputs (e.g. from `public.json`), refusing malformed ones.
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
        let result = small(inputs[23], 1)? == 1;
        let query = Query { comparisons, set };
        query.check()?;
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

/// The statement as an arkworks circuit.
#[derive(Clone, Debug)]
pub struct KycCircuit {
    pub public: KycPublic,
    pub witness: KycWitness,
}

impl KycCircuit {
    /// A well-shaped instance for key generation (values are irrelevant).
    pub fn blank() -> Self {
        Self {
            public: KycPublic {
                record_binding: Fr::zero(),
                ciphertext_hash: Fr::zero(),
                key_commitment: Fr::zero(),
                nonce: 0,
                query: Query {
                    comparisons: [Comparison::UNUSED; COMPARISON_SLOTS],
                    set: SetPredicate::UNUSED,
                },
                result: true,
            },
            witness: KycWitness {
                ciphertext: vec![Fr::zero(); CIPHERTEXT_LEN],
                key: [Fr::zero(); 2],
                set_path: LowLeafPath::unused(),
            },
        }
    }
}

fn constant_index<F: PrimeField>(i: usize) -> F {
    F::from(i as u64)
}

/// Witness bits `b_i = [selector == i]` for `i < n`, constrained one-hot and
/// to recompose to `selector` (unsatisfiable when `selector >= n`).
fn one_hot<F: PrimeField>(
    selector: &FpVar<F>,
    n: usize,
) -> Result<Vec<Boolean<F>>, SynthesisError> {
    let cs = selector.cs();
    let value = selector.value();
    let bits = (0..n)
        .map(|i| Boolean::new_witness(cs.clone(), || value.map(|v| v == constant_index::<F>(i))))
        .collect::<Result<Vec<_>, _>>()?;
    let count: FpVar<F> = bits.iter().map(|b| FpVar::from(b.clone())).sum();
    count.enforce_equal(&FpVar::one())?;
    let index: FpVar<F> = bits
        .iter()
        .enumerate()
        .map(|(i, b)| FpVar::from(b.clone()) * constant_index::<F>(i))
        .sum();
    index.enforce_equal(selector)?;
    Ok(bits)
}

fn select<F: PrimeField>(
    record: &[FpVar<F>],
    one_hot: &[Boolean<F>],
) -> Result<FpVar<F>, SynthesisError> {
    let mut acc = FpVar::zero();
    for (b, m) in one_hot.iter().zip(record) {
        acc += b.select(m, &FpVar::zero())?;
    }
    Ok(acc)
}

fn comparison_gadget<F: PrimeField>(
    record: &[FpVar<F>],
    field: &FpVar<F>,
    op: &FpVar<F>,
    a: &FpVar<F>,
    b: &FpVar<F>,
) -> Result<FpVar<F>, SynthesisError> {
    let v = select(record, &one_hot(field, RECORD_FIELDS)?)?;
    let s = one_hot(op, CmpOp::ALL.len())?;
    // Canonical form: unused operands are 0, so no public input is slack.
    let always = FpVar::from(s[CmpOp::Always as usize].clone());
    (&always * field).enforce_equal(&FpVar::zero())?;
    (&always * a).enforce_equal(&FpVar::zero())?;
    (FpVar::from(!s[CmpOp::Between as usize].clone()) * b).enforce_equal(&FpVar::zero())?;
    let ordering: FpVar<F> = s[CmpOp::Lt as usize..]
        .iter()
        .map(|b| FpVar::from(b.clone()))
        .sum();
    // Range checks apply only to ordering ops, so `eq` works on identifiers.
    let x = &ordering * &v;
    let a_ord = &ordering * a;
    let b_ord = FpVar::from(s[CmpOp::Between as usize].clone()) * b;
    enforce_bits(&x, INT_BITS)?;
    enforce_bits(&a_ord, INT_BITS)?;
    enforce_bits(&b_ord, INT_BITS)?;
    let lt_a = is_less_than(&x, &a_ord, INT_BITS)?;
    let gt_a = is_less_than(&a_ord, &x, INT_BITS)?;
    let gt_b = is_less_than(&b_ord, &x, INT_BITS)?;
    let eq = v.is_eq(a)?;
    let holds = [
        Boolean::TRUE,
        eq.clone(),
        !eq,
        lt_a.clone(),
        !gt_a.clone(),
        gt_a,
        !lt_a.clone(),
        !lt_a & !gt_b,
    ];
    let mut r = FpVar::zero();
    for (sel, h) in s.iter().zip(holds) {
        r += FpVar::from(sel & &h);
    }
    Ok(r)
}

fn set_gadget(
    record: &[FpVar<Fr>],
    field: &FpVar<Fr>,
    op: &FpVar<Fr>,
    root: &FpVar<Fr>,
    path: &LowLeafPath,
    cs: &ConstraintSystemRef<Fr>,
) -> Result<FpVar<Fr>, SynthesisError> {
    let v = select(record, &one_hot(field, RECORD_FIELDS)?)?;
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
    Ok(FpVar::from(s[0].clone())
        + FpVar::from(&s[SetOp::In as usize] & &member)
        + FpVar::from(&s[SetOp::NotIn as usize] & &!member))
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
        if w.ciphertext.len() != CIPHERTEXT_LEN || w.set_path.siblings.len() != set::SET_DEPTH {
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

        let p3 = poseidon::bn254_params(3);
        let p4 = poseidon::bn254_params(4);
        let p5 = poseidon::bn254_params(5);
        poseidon::constraints::hash(p3, &key)?.enforce_equal(key_comm)?;
        let h1 = poseidon::constraints::hash(p5, &ciphertext[0..4])?;
        let h2 = poseidon::constraints::hash(p5, &ciphertext[4..8])?;
        let h3 = poseidon::constraints::hash(
            p5,
            &[
                ciphertext[8].clone(),
                ciphertext[9].clone(),
                binding.clone(),
                nonce.clone(),
            ],
        )?;
        poseidon::constraints::hash(p4, &[h1, h2, h3])?.enforce_equal(ct_hash)?;

        let record = cipher::decrypt_gadget(p4, &ciphertext, &key, nonce, RECORD_FIELDS)?;
        let mut all = FpVar::one();
        for i in 0..COMPARISON_SLOTS {
            let base = 4 + 4 * i;
            let r = comparison_gadget(
                &record,
                &vars[base],
                &vars[base + 1],
                &vars[base + 2],
                &vars[base + 3],
            )?;
            all *= r;
        }
        let r = set_gadget(&record, &vars[20], &vars[21], &vars[22], &w.set_path, &cs)?;
        all *= r;
        all.enforce_equal(&vars[23])?;
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
        record: [Fr; RECORD_FIELDS],
        key: [Fr; 2],
        nonce: u128,
        binding: Fr,
        ciphertext: Vec<Fr>,
        set: SortedSet,
    }

    fn fixture(record: [Fr; RECORD_FIELDS]) -> Fixture {
        let key = [Fr::from(11u64), Fr::from(22u64)];
        let nonce = 42;
        let binding = identifier("record-1");
        let ciphertext = cipher::encrypt(&record, &key, nonce);
        let members: Vec<Fr> = (0..16u64)
            .map(|i| identifier(&format!("sanctioned-{i}")))
            .collect();
        let set = SortedSet::build(&members).unwrap();
        Fixture {
            record,
            key,
            nonce,
            binding,
            ciphertext,
            set,
        }
    }

    fn standard_record() -> [Fr; RECORD_FIELDS] {
        let mut r = [Fr::zero(); RECORD_FIELDS];
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
            (KycCircuit { public, witness }, result)
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
        let (circuit, _) = f.instance(kyc_query(&f, 100_000));
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
            // An altered query constant may still be a true statement about
            // this record (it is then another statement; the Groth16 proof
            // of the original does not transfer, see the zk tests). Anything
            // else must leave the circuit unsatisfiable.
            let still_true = (4..20).contains(&i)
                && public
                    .query
                    .evaluate(&f.record, Some(&circuit.witness.set_path))
                    == Ok(public.result);
            let c = KycCircuit {
                public,
                witness: circuit.witness.clone(),
            };
            assert_eq!(satisfied(c), still_true, "altered public input {i}");
        }
    }

    #[test]
    fn tampered_witness_and_replay_are_refused() {
        let f = fixture(standard_record());
        let (circuit, _) = f.instance(kyc_query(&f, 100_000));
        let mut c = circuit.clone();
        c.witness.key[0] += Fr::from(1u64);
        assert!(!satisfied(c));
        let mut c = circuit.clone();
        c.witness.ciphertext[3] += Fr::from(1u64);
        assert!(!satisfied(c));
        let mut c = circuit.clone();
        c.witness.set_path.siblings[5] += Fr::from(1u64);
        assert!(!satisfied(c));
        // Replay against another record: same proof inputs but another binding.
        let mut c = circuit.clone();
        c.public.record_binding = identifier("record-2");
        assert!(!satisfied(c));
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
            assert!(!satisfied(KycCircuit { public, witness }));
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
        (0u8..8).prop_map(|c| CmpOp::from_code(c).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn proven_result_equals_plaintext_evaluation(
            values in proptest::array::uniform8(0u64..64),
            preds in proptest::collection::vec((0u8..8, op_strategy(), 0u64..64, 0u64..64), 0..=4),
            set_op in 0u8..3,
            set_field in 0u8..8,
        ) {
            let record = values.map(Fr::from);
            let mut f = fixture(record);
            f.set = SortedSet::build(&(0..64u64).step_by(3).map(Fr::from).collect::<Vec<_>>()).unwrap();
            let comparisons: Vec<Comparison> = preds
                .iter()
                .map(|&(field, op, a, b)| match op {
                    CmpOp::Always => Comparison::UNUSED,
                    CmpOp::Between => Comparison { field, op, a: Fr::from(a), b: Fr::from(b) },
                    _ => Comparison { field, op, a: Fr::from(a), b: Fr::zero() },
                })
                .collect();
            let set = match SetOp::from_code(set_op).unwrap() {
                SetOp::None => SetPredicate::UNUSED,
                op => SetPredicate { field: set_field, op, root: f.set.root() },
            };
            let query = Query::new(&comparisons, Some(set)).unwrap();
            let (circuit, result) = f.instance(query);
            let plain = comparisons.iter().all(|c| {
                let v = values[c.field as usize];
                let (a, b) = (c.a, c.b);
                let (a, b) = (a.into_bigint().0[0], b.into_bigint().0[0]);
                match c.op {
                    CmpOp::Always => true,
                    CmpOp::Eq => v == a,
                    CmpOp::Ne => v != a,
                    CmpOp::Lt => v < a,
                    CmpOp::Lte => v <= a,
                    CmpOp::Gt => v > a,
                    CmpOp::Gte => v >= a,
                    CmpOp::Between => a <= v && v <= b,
                }
            }) && match set.op {
                SetOp::None => true,
                SetOp::In => values[set_field as usize] % 3 == 0,
                SetOp::NotIn => values[set_field as usize] % 3 != 0,
            };
            prop_assert_eq!(result, plain);
            prop_assert!(satisfied(circuit.clone()));
            let mut lie = circuit;
            lie.public.result = !result;
            prop_assert!(!satisfied(lie));
        }
    }
}
