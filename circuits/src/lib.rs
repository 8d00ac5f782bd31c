//! R1CS gadgets and statements of Yilian's ZK capability, over BN254 with
//! arkworks: Poseidon with circomlib's parameters ([`poseidon`]), the
//! Poseidon cipher ([`cipher`]), bounded comparisons ([`cmp`]), sorted
//! Poseidon Merkle sets with membership and non-membership ([`set`]), and
//! the KYC statement that ties them together ([`kyc`]). Every gadget has its
//! native twin beside it, and tests check that both agree.

#![forbid(unsafe_code)]

pub mod cipher;
pub mod cmp;
pub mod formula;
pub mod index;
pub mod kyc;
pub mod poseidon;
pub mod set;

/// Errors of the circuits crate.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitError {
    #[error("Poseidon width {0} is not supported (2..=6)")]
    UnsupportedWidth(usize),
    #[error("ciphertext has {got} elements, expected {expected}")]
    CiphertextLength { expected: usize, got: usize },
    #[error("ciphertext does not authenticate under this key and nonce")]
    Authentication,
    #[error("set members must be distinct")]
    DuplicateSetMember,
    #[error("set value is out of range (must be below 2^248 - 1)")]
    SetValueOutOfRange,
    #[error("set of {0} members does not fit the tree")]
    SetTooLarge(usize),
    #[error(
        "query has {0} comparison predicates or clauses, at most 4 comparisons and 5 clauses fit the statement"
    )]
    TooManyPredicates(usize),
    #[error("query has more than one set predicate; at most one fits the statement")]
    TooManySetPredicates,
    #[error("an OR clause needs at least one predicate")]
    EmptyClause,
    #[error("record has {0} field elements; the statement comes in 8, 16 and 32")]
    RecordLength(usize),
    #[error("ciphertext has {0} elements, which no record shape encrypts to (10, 19 or 34)")]
    NoShapeForCiphertext(usize),
    #[error("record has no field {0}")]
    NoSuchField(u8),
    #[error("field {0} or its constant is out of range for an ordering comparison")]
    OutOfRange(u8),
    #[error("the set predicate needs the value's path in the set named by the query's root")]
    MissingSetPath,
    #[error("statement has {expected} public inputs, got {got}")]
    PublicInputCount { expected: usize, got: usize },
    #[error("query is not canonical: unused operands must be 0")]
    NonCanonicalQuery,
    #[error("malformed public input")]
    MalformedPublicInput,
}
