//! Customer records, their encryption under a KMS key, and their anchors.

use ark_bn254::Fr;
use ark_ff::Zero;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use yilian_circuits::kyc::Shape;
use yilian_circuits::{cipher, kyc};

use crate::{Result, ZkError, fr_to_bytes};

/// A typed field value. Integers are compared as 64-bit unsigned numbers
/// (a birth date as YYYYMMDD, an income in whole currency units, a score);
/// identifiers (ID number, name) are mapped to field elements by
/// [`kyc::identifier`] (SHA-256, first 31 bytes big-endian).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldValue {
    Integer(u64),
    Identifier(String),
}

impl FieldValue {
    pub fn kind(&self) -> FieldKind {
        match self {
            Self::Integer(_) => FieldKind::Integer,
            Self::Identifier(_) => FieldKind::Identifier,
        }
    }

    pub fn encode(&self) -> Fr {
        match self {
            Self::Integer(v) => Fr::from(*v),
            Self::Identifier(s) => kyc::identifier(s),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    Integer,
    Identifier,
}

/// A field's public description: verifiers name fields by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
}

/// A plaintext customer record: up to 32 named, typed fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub fields: Vec<(String, FieldValue)>,
}

impl Record {
    pub fn schema(&self) -> Vec<FieldSpec> {
        self.fields
            .iter()
            .map(|(n, v)| FieldSpec {
                name: n.clone(),
                kind: v.kind(),
            })
            .collect()
    }

    /// The statement shape the record takes: the smallest it fits.
    pub fn shape(&self) -> Result<Shape> {
        Shape::for_fields(self.fields.len()).ok_or(ZkError::TooManyFields(self.fields.len()))
    }

    /// The record as its shape's field elements (unused fields 0).
    pub fn encode(&self) -> Result<Vec<Fr>> {
        let mut out = vec![Fr::zero(); self.shape()?.fields()];
        for (slot, (_, v)) in out.iter_mut().zip(&self.fields) {
            *slot = v.encode();
        }
        Ok(out)
    }
}

/// The Poseidon-cipher key: two field elements issued by the KMS (its
/// `ZkKey` elements, 32-byte little-endian each). Zeroized on drop.
#[derive(Clone)]
pub struct CipherKey([Fr; 2]);

impl CipherKey {
    pub fn new(elements: [Fr; 2]) -> Self {
        Self(elements)
    }

    /// From the KMS's 64-byte encoding (two canonical little-endian elements).
    pub fn from_kms_bytes(bytes: &[u8]) -> Result<Self> {
        let malformed = || ZkError::Malformed {
            what: "cipher key",
            detail: "expected 64 canonical bytes".into(),
        };
        if bytes.len() != 64 {
            return Err(malformed());
        }
        let k0 = crate::fr_from_bytes(bytes[..32].try_into().expect("32 bytes"))?;
        let k1 = crate::fr_from_bytes(bytes[32..].try_into().expect("32 bytes"))?;
        Ok(Self([k0, k1]))
    }

    pub fn elements(&self) -> &[Fr; 2] {
        &self.0
    }

    /// The KMS's 64-byte encoding, the inverse of [`Self::from_kms_bytes`].
    pub fn to_kms_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(64));
        for e in &self.0 {
            out.extend_from_slice(zeroize::Zeroizing::new(crate::fr_to_bytes(e)).as_slice());
        }
        out
    }

    /// `Poseidon(k0, k1)`: what the KMS publishes as the key commitment.
    pub fn commitment(&self) -> Fr {
        kyc::key_commitment(&self.0)
    }
}

impl Drop for CipherKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for CipherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CipherKey(..)")
    }
}

/// What a data holder stores and the ledger anchors: the ciphertext, its
/// nonce and the public schema. Field elements are decimal strings in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedRecord {
    pub record_id: String,
    pub schema: Vec<FieldSpec>,
    #[serde(with = "nonce_string")]
    pub nonce: u128,
    #[serde(with = "crate::snarkjs::fr_vec")]
    pub ciphertext: Vec<Fr>,
    #[serde(with = "crate::snarkjs::fr_string")]
    pub key_commitment: Fr,
}

mod nonce_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(n: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The record anchor as the ledger's `RecordAnchor` payload carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAnchor {
    pub record_id: String,
    pub ciphertext_hash: [u8; 32],
    pub key_commitment: [u8; 32],
}

impl EncryptedRecord {
    /// Encrypts `record` under `key` with a nonce below 2^128 (never reuse a
    /// nonce with the same key: the cipher is a stream cipher).
    pub fn encrypt(record_id: &str, record: &Record, key: &CipherKey, nonce: u128) -> Result<Self> {
        let plain = record.encode()?;
        Ok(Self {
            record_id: record_id.to_owned(),
            schema: record.schema(),
            nonce,
            ciphertext: cipher::encrypt(&plain, key.elements(), nonce),
            key_commitment: key.commitment(),
        })
    }

    /// The statement shape of the record: its ciphertext's length says.
    pub fn shape(&self) -> Result<Shape> {
        let shape = Shape::for_ciphertext(self.ciphertext.len()).ok_or(ZkError::Circuit(
            yilian_circuits::CircuitError::NoShapeForCiphertext(self.ciphertext.len()),
        ))?;
        if self.schema.len() > shape.fields() {
            return Err(ZkError::TooManyFields(self.schema.len()));
        }
        Ok(shape)
    }

    /// Decrypts and authenticates the shape's field elements.
    pub fn decrypt(&self, key: &CipherKey) -> Result<Vec<Fr>> {
        let fields = self.shape()?.fields();
        Ok(cipher::decrypt(
            &self.ciphertext,
            key.elements(),
            self.nonce,
            fields,
        )?)
    }

    pub fn binding(&self) -> Fr {
        kyc::identifier(&self.record_id)
    }

    pub fn ciphertext_hash(&self) -> Result<Fr> {
        Ok(kyc::ciphertext_hash(
            self.binding(),
            self.nonce,
            &self.ciphertext,
        )?)
    }

    pub fn anchor(&self) -> Result<RecordAnchor> {
        Ok(RecordAnchor {
            record_id: self.record_id.clone(),
            ciphertext_hash: fr_to_bytes(&self.ciphertext_hash()?),
            key_commitment: fr_to_bytes(&self.key_commitment),
        })
    }

    pub fn field_index(&self, name: &str) -> Result<(u8, FieldKind)> {
        self.schema
            .iter()
            .position(|f| f.name == name)
            .map(|i| (i as u8, self.schema[i].kind))
            .ok_or_else(|| ZkError::UnknownField(name.to_owned()))
    }
}
