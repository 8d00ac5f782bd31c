//! The ZK API over gRPC (`proto/zk.proto`), as a data holder's node serves
//! it. The caller is the identity of the mutual-TLS client certificate
//! ([`yilian_identity::grpc::caller`]).
//!
//! - Data holders register encrypted records with the cipher key the KMS
//!   issued them, and the sets their records may be asked about. A record is
//!   accepted only when the caller's latest `RecordAnchor` for it on the
//!   ledger names exactly this ciphertext and key commitment, so the node
//!   never proves about anything the holder has not publicly committed to.
//! - Verifiers ask predicates and get the answer with its Groth16 proof; a
//!   false answer is proven too.
//! - Anyone admitted verifies a proof against a verifying key anchored on
//!   the ledger and against the record's latest anchor.
//!
//! Record keys at rest: the holder names an AES-256-GCM master key of its
//! own in this node's KMS (`wrap_key_id`), and the cipher key is stored only
//! as an envelope under it, bound to the record id
//! ([`record_key_context`]). To prove, the node opens the envelope in
//! memory, acting for the holder, and drops (zeroizes) the key afterwards;
//! both are audited by the KMS. A sealed KMS proves nothing (`Unavailable`).
//! The node process still sees keys while it proves: this protects the
//! disk and its backups, not a node whose memory is read.
//!
//! Proving keys ([`KeySource`]): the node proves each statement (one per
//! record shape, [`Shape`]) only with the key at the end of the members'
//! ceremony transcript for it, and only after it has
//! found every contribution's hash anchored on the ledger by a member and
//! verified the whole transcript from its start itself (it does not take a
//! key file on anyone's word, its operator's included). Only with
//! `--insecure-dev-setup` does it use `<data_dir>/zk/<statement>.{pk,vk}`, made
//! by the single-party development setup ([`keys::setup`]) when absent.
//! Both happen on first use rather than at node start: they take seconds of
//! CPU that a node which never proves should not pay. Once loaded, the node
//! anchors the verifying key's hash on the ledger (`VerifyingKeyAnchor`,
//! signed by the node identity) unless its latest anchor already names it.
//! [`ZkService::prepare_keys`] does this eagerly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ark_bn254::{Bn254, Fr};
use ark_groth16::{PreparedVerifyingKey, Proof, ProvingKey, VerifyingKey};
use ed25519_dalek::SigningKey;
use tonic::{Request, Response, Status};
use yilian_circuits::kyc::{self, KycPublic, SetOp};
use yilian_circuits::set::SortedSet;
use yilian_identity::{Identity, Principal, Role};
use yilian_kms::Caller;
use yilian_kms::service::LedgerKmsNode;
use yilian_ledger::{Ledger, Payload, Transaction};
use zeroize::Zeroizing;

use crate::ceremony::transcript::Step;
use crate::prover::{self, KycProof};
use crate::query::{self, Predicate};
use crate::record::{CipherKey, EncryptedRecord, FieldKind, FieldSpec, FieldValue, RecordAnchor};
use crate::store::{Store, StoredRecord};
use crate::{Result, Shape, ZkError, consent, fr_from_bytes, fr_to_bytes, keys, snarkjs, verifier};

pub mod pb {
    tonic::include_proto!("yilian.zk.v1");

    /// `zk.proto` as a `FileDescriptorSet`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("zk_descriptor");
}

pub use pb::zk_client::ZkClient;
pub use pb::zk_server::ZkServer;

/// Largest request the server decodes: a set of 2^20 members as field
/// elements is about 36 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Longest record id accepted.
pub const MAX_RECORD_ID_LEN: usize = 256;

/// Longest grant id a query may name (the KMS's are 34 bytes).
pub const MAX_GRANT_ID_LEN: usize = 64;

/// Longest identifier a predicate may compare with.
pub const MAX_IDENTIFIER_LEN: usize = 256;

impl std::fmt::Debug for pb::RegisterRecordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRecordRequest")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Drop for pb::RegisterRecordRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

// ---------------------------------------------------------------------------
// Conversions between the wire and the crate's types.

fn fr(bytes: &[u8], what: &'static str) -> Result<Fr> {
    let array: &[u8; 32] = bytes.try_into().map_err(|_| ZkError::Malformed {
        what,
        detail: format!("{} bytes, expected 32", bytes.len()),
    })?;
    fr_from_bytes(array).map_err(|_| ZkError::Malformed {
        what,
        detail: "not a canonical field element (at or above the BN254 scalar modulus)".into(),
    })
}

fn account(bytes: &[u8], what: &'static str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| ZkError::Malformed {
        what,
        detail: "expected a 32-byte ed25519 public key".into(),
    })
}

impl From<&EncryptedRecord> for pb::EncryptedRecord {
    fn from(r: &EncryptedRecord) -> Self {
        pb::EncryptedRecord {
            record_id: r.record_id.clone(),
            schema: r
                .schema
                .iter()
                .map(|f| pb::FieldSpec {
                    name: f.name.clone(),
                    kind: match f.kind {
                        FieldKind::Integer => pb::FieldKind::Integer,
                        FieldKind::Identifier => pb::FieldKind::Identifier,
                    } as i32,
                })
                .collect(),
            nonce: r.nonce.to_le_bytes().to_vec(),
            ciphertext: r
                .ciphertext
                .iter()
                .map(|c| fr_to_bytes(c).to_vec())
                .collect(),
            key_commitment: fr_to_bytes(&r.key_commitment).to_vec(),
        }
    }
}

impl TryFrom<&pb::EncryptedRecord> for EncryptedRecord {
    type Error = ZkError;
    fn try_from(r: &pb::EncryptedRecord) -> Result<Self> {
        let bad = |detail: String| ZkError::Malformed {
            what: "encrypted record",
            detail,
        };
        if r.record_id.is_empty() || r.record_id.len() > MAX_RECORD_ID_LEN {
            return Err(bad(format!(
                "record id must be 1 to {MAX_RECORD_ID_LEN} bytes"
            )));
        }
        if r.schema.len() > kyc::MAX_FIELDS {
            return Err(ZkError::TooManyFields(r.schema.len()));
        }
        let mut schema: Vec<FieldSpec> = Vec::with_capacity(r.schema.len());
        for f in &r.schema {
            if f.name.is_empty() || schema.iter().any(|s| s.name == f.name) {
                return Err(bad(format!(
                    "field names must be non-empty and distinct ({:?})",
                    f.name
                )));
            }
            let kind = match pb::FieldKind::try_from(f.kind) {
                Ok(pb::FieldKind::Integer) => FieldKind::Integer,
                Ok(pb::FieldKind::Identifier) => FieldKind::Identifier,
                Err(_) => return Err(bad(format!("field {:?} has an unknown kind", f.name))),
            };
            schema.push(FieldSpec {
                name: f.name.clone(),
                kind,
            });
        }
        let nonce: [u8; 16] = r
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| bad("nonce must be 16 bytes (little-endian u128)".into()))?;
        match Shape::for_ciphertext(r.ciphertext.len()) {
            Some(shape) if shape.fields() >= r.schema.len() => {}
            _ => {
                return Err(bad(format!(
                    "ciphertext has {} elements; a record of {} fields encrypts to {}",
                    r.ciphertext.len(),
                    r.schema.len(),
                    Shape::for_fields(r.schema.len()).map_or(0, Shape::ciphertext_len)
                )));
            }
        }
        Ok(EncryptedRecord {
            record_id: r.record_id.clone(),
            schema,
            nonce: u128::from_le_bytes(nonce),
            ciphertext: r
                .ciphertext
                .iter()
                .map(|c| fr(c, "ciphertext element"))
                .collect::<Result<_>>()?,
            key_commitment: fr(&r.key_commitment, "key commitment")?,
        })
    }
}

/// Predicates as the wire carries them: the members of an OR clause share
/// a non-zero `any_of`.
pub fn predicates_to_pb(predicates: &[Predicate]) -> Vec<pb::Predicate> {
    fn flatten(p: &Predicate, group: u32, out: &mut Vec<pb::Predicate>) {
        for a in p.atoms() {
            if let Predicate::Any { .. } = a {
                // An OR inside an OR is the OR of all their members.
                flatten(a, group, out);
            } else {
                out.push(pb::Predicate {
                    any_of: group,
                    ..atom_to_pb(a)
                });
            }
        }
    }
    let mut out = Vec::with_capacity(predicates.len());
    let mut groups = 0;
    for p in predicates {
        let group = if let Predicate::Any { .. } = p {
            groups += 1;
            groups
        } else {
            0
        };
        flatten(p, group, &mut out);
    }
    out
}

/// Predicates from the wire, the members of each `any_of` group gathered
/// into one OR clause where the group first appears.
pub fn predicates_from_pb(predicates: &[pb::Predicate]) -> Result<Vec<Predicate>> {
    let mut out: Vec<Predicate> = Vec::with_capacity(predicates.len());
    let mut groups: HashMap<u32, usize> = HashMap::new();
    for p in predicates {
        let atom = atom_from_pb(p)?;
        if p.any_of == 0 {
            out.push(atom);
            continue;
        }
        match groups.get(&p.any_of) {
            Some(&i) => {
                if let Predicate::Any { any } = &mut out[i] {
                    any.push(atom);
                }
            }
            None => {
                groups.insert(p.any_of, out.len());
                out.push(Predicate::Any { any: vec![atom] });
            }
        }
    }
    Ok(out)
}

fn atom_to_pb(p: &Predicate) -> pb::Predicate {
    {
        use pb::predicate::Value;
        let value = |v: &FieldValue| match v {
            FieldValue::Integer(i) => Value::Integer(*i),
            FieldValue::Identifier(s) => Value::Identifier(s.clone()),
        };
        let (field, op, value, high) = match p {
            Predicate::Eq { field, value: v } => (field, pb::Op::Eq, value(v), None),
            Predicate::Ne { field, value: v } => (field, pb::Op::Ne, value(v), None),
            Predicate::Lt { field, value } => (field, pb::Op::Lt, Value::Integer(*value), None),
            Predicate::Lte { field, value } => (field, pb::Op::Lte, Value::Integer(*value), None),
            Predicate::Gt { field, value } => (field, pb::Op::Gt, Value::Integer(*value), None),
            Predicate::Gte { field, value } => (field, pb::Op::Gte, Value::Integer(*value), None),
            Predicate::Between { field, low, high } => {
                (field, pb::Op::Between, Value::Integer(*low), Some(*high))
            }
            Predicate::In { field, root } => (
                field,
                pb::Op::In,
                Value::Root(fr_to_bytes(root).to_vec()),
                None,
            ),
            Predicate::Nin { field, root } => (
                field,
                pb::Op::Nin,
                Value::Root(fr_to_bytes(root).to_vec()),
                None,
            ),
            Predicate::EqField { field, other } => (field, pb::Op::Eq, other_field(other), None),
            Predicate::NeField { field, other } => (field, pb::Op::Ne, other_field(other), None),
            Predicate::LtField { field, other } => (field, pb::Op::Lt, other_field(other), None),
            Predicate::LteField { field, other } => (field, pb::Op::Lte, other_field(other), None),
            Predicate::GtField { field, other } => (field, pb::Op::Gt, other_field(other), None),
            Predicate::GteField { field, other } => (field, pb::Op::Gte, other_field(other), None),
            Predicate::Any { .. } => unreachable!("predicates_to_pb flattens OR clauses"),
        };
        pb::Predicate {
            field: field.clone(),
            op: op as i32,
            value: Some(value),
            high,
            any_of: 0,
        }
    }
}

fn other_field(name: &str) -> pb::predicate::Value {
    pb::predicate::Value::OtherField(name.to_owned())
}

fn atom_from_pb(p: &pb::Predicate) -> Result<Predicate> {
    {
        use pb::predicate::Value;
        let bad = |detail: &str| ZkError::Malformed {
            what: "predicate",
            detail: format!("{:?}: {detail}", p.field),
        };
        let op = pb::Op::try_from(p.op).map_err(|_| bad("unknown op"))?;
        if p.high.is_some() && op != pb::Op::Between {
            return Err(bad("only between takes a high bound"));
        }
        let field = p.field.clone();
        if let Some(Value::OtherField(other)) = &p.value {
            let other = other.clone();
            if other.is_empty() || other.len() > MAX_IDENTIFIER_LEN {
                return Err(bad(&format!(
                    "other_field must be 1 to {MAX_IDENTIFIER_LEN} bytes"
                )));
            }
            return Ok(match op {
                pb::Op::Eq => Predicate::EqField { field, other },
                pb::Op::Ne => Predicate::NeField { field, other },
                pb::Op::Lt => Predicate::LtField { field, other },
                pb::Op::Lte => Predicate::LteField { field, other },
                pb::Op::Gt => Predicate::GtField { field, other },
                pb::Op::Gte => Predicate::GteField { field, other },
                _ => {
                    return Err(bad(
                        "only eq, ne, lt, lte, gt and gte compare with another field",
                    ));
                }
            });
        }
        let integer = || match &p.value {
            Some(Value::Integer(v)) => Ok(*v),
            _ => Err(bad("this op compares with an integer")),
        };
        let root = || match &p.value {
            Some(Value::Root(r)) => fr(r, "set root"),
            _ => Err(bad("in and nin name a set by its root")),
        };
        let value = || match &p.value {
            Some(Value::Integer(v)) => Ok(FieldValue::Integer(*v)),
            Some(Value::Identifier(s)) if s.len() <= MAX_IDENTIFIER_LEN => {
                Ok(FieldValue::Identifier(s.clone()))
            }
            Some(Value::Identifier(_)) => Err(bad(&format!(
                "identifiers are at most {MAX_IDENTIFIER_LEN} bytes"
            ))),
            _ => Err(bad("eq and ne compare with an integer or an identifier")),
        };
        Ok(match op {
            pb::Op::Unspecified => return Err(bad("op is missing")),
            pb::Op::Eq => Predicate::Eq {
                field,
                value: value()?,
            },
            pb::Op::Ne => Predicate::Ne {
                field,
                value: value()?,
            },
            pb::Op::Lt => Predicate::Lt {
                field,
                value: integer()?,
            },
            pb::Op::Lte => Predicate::Lte {
                field,
                value: integer()?,
            },
            pb::Op::Gt => Predicate::Gt {
                field,
                value: integer()?,
            },
            pb::Op::Gte => Predicate::Gte {
                field,
                value: integer()?,
            },
            pb::Op::Between => {
                let low = integer()?;
                let high = p.high.ok_or_else(|| bad("between needs a high bound"))?;
                if low > high {
                    return Err(bad("between's low bound is above its high bound"));
                }
                Predicate::Between { field, low, high }
            }
            pb::Op::In => Predicate::In {
                field,
                root: root()?,
            },
            pb::Op::Nin => Predicate::Nin {
                field,
                root: root()?,
            },
        })
    }
}

/// A proof as the wire carries it.
pub fn proof_to_pb(p: &KycProof, shape: Shape, vk_hash: &[u8; 32]) -> pb::Proof {
    pb::Proof {
        statement: shape.statement().into(),
        proof: keys::to_bytes(&p.proof),
        public_inputs: p
            .public
            .to_inputs()
            .iter()
            .map(|x| fr_to_bytes(x).to_vec())
            .collect(),
        vk_hash: vk_hash.to_vec(),
    }
}

/// Parses a wire proof (for offline checking with [`verifier`]).
pub fn proof_from_pb(p: &pb::Proof) -> Result<KycProof> {
    let inputs = p
        .public_inputs
        .iter()
        .map(|x| fr(x, "public input"))
        .collect::<Result<Vec<_>>>()?;
    Ok(KycProof {
        proof: keys::from_bytes("proof", &p.proof)?,
        public: KycPublic::from_inputs(&inputs)?,
    })
}

// ---------------------------------------------------------------------------
// What the ledger says: record and verifying-key anchors, indexed as the
// log grows (the ledger has no query by payload, so the service keeps its
// own index and catches up before each lookup).

#[derive(Clone, Debug)]
struct AnchorEntry {
    index: u64,
    holder: [u8; 32],
    anchor: RecordAnchor,
}

#[derive(Clone, Copy, Debug)]
struct VkEntry {
    index: u64,
    signer: [u8; 32],
    vk_hash: [u8; 32],
}

#[derive(Default)]
struct LedgerIndex {
    scanned: u64,
    /// By record binding (`identifier(record_id)`), oldest first: proofs
    /// carry the binding, not the id.
    records: HashMap<[u8; 32], Vec<AnchorEntry>>,
    vks: HashMap<String, Vec<VkEntry>>,
    /// Ceremony contributions anchored by members, by statement and step:
    /// the anchoring entry's index and signer.
    contributions: HashMap<(String, Step), (u64, [u8; 32])>,
}

impl LedgerIndex {
    /// Reads the anchors committed since the last call, through the
    /// ledger's index by payload kind (not a scan of the log).
    fn catch_up(&mut self, ledger: &Ledger) -> Result<()> {
        let len = ledger.len();
        if self.scanned < len {
            let mut found: Vec<u64> = Vec::new();
            for kind in [
                "record-anchor",
                "verifying-key-anchor",
                "ceremony-contribution",
            ] {
                found.extend(ledger.indexed(kind, b"", self.scanned, usize::MAX)?);
            }
            found.retain(|i| *i < len);
            found.sort_unstable();
            for index in found {
                let stx = ledger.entry(index)?;
                match stx.tx.payload {
                    Payload::RecordAnchor {
                        record_id,
                        ciphertext_hash,
                        key_commitment,
                    } => {
                        let binding = fr_to_bytes(&kyc::identifier(&record_id));
                        self.records.entry(binding).or_default().push(AnchorEntry {
                            index,
                            holder: stx.signer,
                            anchor: RecordAnchor {
                                record_id,
                                ciphertext_hash,
                                key_commitment,
                            },
                        });
                    }
                    Payload::VerifyingKeyAnchor { statement, vk_hash } => {
                        self.vks.entry(statement).or_default().push(VkEntry {
                            index,
                            signer: stx.signer,
                            vk_hash,
                        })
                    }
                    // The ledger admits these from members only.
                    Payload::CeremonyContribution {
                        statement,
                        phase,
                        index: step,
                        hash,
                    } => {
                        let step = Step {
                            phase,
                            index: step,
                            hash,
                        };
                        self.contributions
                            .entry((statement, step))
                            .or_insert((index, stx.signer));
                    }
                    _ => {}
                }
            }
            self.scanned = len;
        }
        Ok(())
    }

    /// The latest anchor for a record binding among those `keep` accepts.
    fn latest_anchor(
        &self,
        binding: &[u8; 32],
        keep: impl Fn(&AnchorEntry) -> bool,
    ) -> Option<AnchorEntry> {
        self.records
            .get(binding)?
            .iter()
            .rev()
            .find(|e| keep(e))
            .cloned()
    }
}

// ---------------------------------------------------------------------------
// The service.

/// The keys of the statement in force on this node.
struct StatementKeys {
    prover: prover::Prover,
    vk: VerifyingKey<Bn254>,
    pvk: PreparedVerifyingKey<Bn254>,
    vk_hash: [u8; 32],
    anchor_index: u64,
}

struct Inner {
    key_dir: PathBuf,
    ledger: Ledger,
    node_key: SigningKey,
    store: Store,
    index: Mutex<LedgerIndex>,
    /// Per shape, in [`Shape::ALL`]'s order.
    keys: [tokio::sync::OnceCell<Arc<StatementKeys>>; 3],
    sets: Mutex<SetCache>,
    /// Proving is CPU- and memory-heavy: at most one per core at a time.
    provers: tokio::sync::Semaphore,
    /// Seals record keys at rest under their holders' master keys.
    kms: Arc<LedgerKmsNode>,
    /// One query at a time per (record, verifier), from reserving the
    /// disclosure to the KMS's decision: a refused query's give-back must
    /// not erase a constant a concurrent query had answered.
    consent_locks: Mutex<HashMap<(String, [u8; 32]), ConsentLock>>,
    keys_from: KeySource,
}

/// Where a node's proving keys come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KeySource {
    /// The members' ceremony transcripts under this directory, one per
    /// statement in `<dir>/<statement>/` (laid out as
    /// [`crate::ceremony::transcript`] describes): every contribution
    /// anchored on the ledger by a member, and the transcript verified from
    /// its start by this node, before it proves with the final key.
    Ceremony(PathBuf),
    /// `<data_dir>/zk/<statement>.{pk,vk}`, made by the single-party setup when
    /// absent. Whoever ran that setup can forge proofs: development only.
    InsecureDevSetup,
}

type ConsentLock = Arc<tokio::sync::Mutex<()>>;

/// On drop, removes a consent lock that no other query holds or waits on.
struct ForgetLock<'a> {
    locks: &'a Mutex<HashMap<(String, [u8; 32]), ConsentLock>>,
    key: (String, [u8; 32]),
}

impl Drop for ForgetLock<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours is the map's and the caller's `lock`: two references.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&self.key);
        }
    }
}

/// The envelope context (AEAD associated data) of a record's sealed key:
/// an envelope moved to another record id does not open.
pub fn record_key_context(record_id: &str) -> Vec<u8> {
    [
        b"yilian-zk/record-key/v1\0".as_slice(),
        record_id.as_bytes(),
    ]
    .concat()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The disclosure to restore for the fields `after` touched: what `before`
/// had for them (none where it had none).
fn before_of(
    after: &std::collections::BTreeMap<String, consent::Disclosed>,
    before: &std::collections::BTreeMap<String, consent::Disclosed>,
) -> std::collections::BTreeMap<String, consent::Disclosed> {
    after
        .keys()
        .map(|f| (f.clone(), before.get(f).cloned().unwrap_or_default()))
        .collect()
}

/// The KMS caller the node acts as for a record's holder.
fn holder_caller(holder: &[u8; 32]) -> Caller {
    Caller {
        account: *holder,
        role: Role::DataHolder,
    }
}

/// The tonic service. Add `ZkService::open(..)?.into_server()` to the node's router.
#[derive(Clone)]
pub struct ZkService {
    inner: Arc<Inner>,
}

type R<T> = std::result::Result<Response<T>, Status>;

fn require(caller: &Principal, role: Role, action: &'static str) -> Result<()> {
    if caller.role == role {
        Ok(())
    } else {
        Err(ZkError::WrongRole {
            role: caller.role.to_string(),
            action,
        })
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ZkError::Groth16(format!("worker task failed: {e}")))?
}

/// The shape a statement name names; none names the 8-field one.
fn statement(name: &str) -> Result<Shape> {
    if name.is_empty() {
        return Ok(Shape::F8);
    }
    Shape::for_statement(name).ok_or_else(|| ZkError::UnknownStatement(name.to_owned()))
}

/// Loads the statement's development keys from `dir`, or makes and writes
/// them by the single-party setup.
fn load_or_setup(dir: &Path, shape: Shape) -> Result<(ProvingKey<Bn254>, VerifyingKey<Bn254>)> {
    let statement = shape.statement();
    let pk_path = dir.join(format!("{statement}.pk"));
    let vk_path = dir.join(format!("{statement}.vk"));
    if pk_path.exists() && vk_path.exists() {
        let pk = keys::read_proving_key(&pk_path)?;
        let vk = keys::read_verifying_key(&vk_path)?;
        if pk.vk != vk {
            return Err(ZkError::Corrupt(format!(
                "{} and {} are not a key pair",
                pk_path.display(),
                vk_path.display()
            )));
        }
        tracing::warn!(dir = %dir.display(), "loaded {statement} development keys (--insecure-dev-setup)");
        return Ok((pk, vk));
    }
    tracing::warn!(
        dir = %dir.display(),
        "no {statement} keys: running the single-party setup (--insecure-dev-setup: whoever runs it can forge proofs)"
    );
    std::fs::create_dir_all(dir)?;
    let (pk, vk) = keys::setup(shape, &mut keys::os_rng())?;
    // Written beside, synced and renamed, so neither a crash nor a power
    // cut leaves half a key; the verifying key last, since its presence
    // means "the pair is complete".
    for (path, bytes) in [
        (&pk_path, keys::to_bytes(&pk)),
        (&vk_path, keys::to_bytes(&vk)),
    ] {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok((pk, vk))
}

impl ZkService {
    /// Opens (or creates) `<data_dir>/zk.redb`; keys come from `keys_from`
    /// on first use. `node` signs the node's verifying-key anchors (it must
    /// be an admitted member).
    pub fn open(
        data_dir: &Path,
        ledger: Ledger,
        node: &Identity,
        kms: Arc<LedgerKmsNode>,
        keys_from: KeySource,
    ) -> Result<ZkService> {
        std::fs::create_dir_all(data_dir)?;
        let store = Store::open(&data_dir.join("zk.redb"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ZkService {
            inner: Arc::new(Inner {
                key_dir: data_dir.join("zk"),
                ledger,
                node_key: node.signing_key().clone(),
                store,
                index: Mutex::new(LedgerIndex::default()),
                keys: Default::default(),
                sets: Mutex::new(SetCache::default()),
                provers: tokio::sync::Semaphore::new(cores),
                kms,
                consent_locks: Mutex::new(HashMap::new()),
                keys_from,
            }),
        })
    }

    pub fn into_server(self) -> ZkServer<Self> {
        ZkServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Loads or makes the keys of the statement of `shape` now and anchors
    /// the verifying key; returns its hash. Requests wait for this on first
    /// use anyway.
    pub async fn prepare_keys(&self, shape: Shape) -> Result<[u8; 32]> {
        Ok(self.keys(shape).await?.vk_hash)
    }

    async fn keys(&self, shape: Shape) -> Result<Arc<StatementKeys>> {
        let slot = Shape::ALL
            .iter()
            .position(|s| *s == shape)
            .expect("every shape has a slot");
        self.inner.keys[slot]
            .get_or_try_init(|| async {
                // Synthesised once: the ceremony's check and the prover share it.
                let statement: Arc<prover::Statement> =
                    blocking(move || Ok(prover::Statement::kyc(shape)?))
                        .await?
                        .into();
                let (pk, vk) = match &self.inner.keys_from {
                    KeySource::InsecureDevSetup => {
                        let dir = self.inner.key_dir.clone();
                        blocking(move || load_or_setup(&dir, shape)).await?
                    }
                    KeySource::Ceremony(dir) => {
                        self.ceremony_key(&dir.join(shape.statement()), shape, statement.clone())
                            .await?
                    }
                };
                let vk_hash = keys::vk_hash(&vk);
                let anchor_index = self.anchor_verifying_key(shape, vk_hash).await?;
                let prover = prover::Prover::with_statement(pk, shape, statement)?;
                Ok::<_, ZkError>(Arc::new(StatementKeys {
                    pvk: keys::prepare(&vk),
                    prover,
                    vk,
                    vk_hash,
                    anchor_index,
                }))
            })
            .await
            .cloned()
    }

    /// The final key of the ceremony transcript in `dir`, once every
    /// contribution is found anchored by a member (a cheap check, first)
    /// and the transcript verifies from its start.
    async fn ceremony_key(
        &self,
        dir: &Path,
        shape: Shape,
        statement: Arc<prover::Statement>,
    ) -> Result<(ProvingKey<Bn254>, VerifyingKey<Bn254>)> {
        use crate::ceremony::transcript;
        if !transcript::phase2_started(dir) {
            return Err(ZkError::NoKeys(dir.to_owned()));
        }
        let d = dir.to_owned();
        let steps = blocking(move || transcript::steps(&d)).await?;
        let signers = self.with_index(|ix| {
            steps
                .iter()
                .map(|s| {
                    ix.contributions
                        .get(&(shape.statement().to_owned(), *s))
                        .map(|(_, signer)| *signer)
                        .ok_or_else(|| ZkError::CeremonyNotAnchored {
                            dir: dir.to_owned(),
                            phase: s.phase,
                            index: s.index,
                        })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        // No one member may make the whole key: each phase the members ran
        // needs contributions from two admitted members (one, while the
        // network has only one).
        let admitted: Vec<[u8; 32]> = self
            .inner
            .ledger
            .members()
            .into_iter()
            .filter(|(_, m)| m.role == Role::Member && !m.revoked)
            .map(|(k, _)| k)
            .collect();
        let need = admitted.len().min(2);
        for phase in [1u8, 2] {
            let mut by: Vec<[u8; 32]> = steps
                .iter()
                .zip(&signers)
                .filter(|(s, k)| s.phase == phase && admitted.contains(k))
                .map(|(_, k)| *k)
                .collect();
            by.sort_unstable();
            by.dedup();
            let ran = steps.iter().any(|s| s.phase == phase);
            if (ran || phase == 2) && by.len() < need {
                return Err(ZkError::CeremonyTooFewMembers {
                    dir: dir.to_owned(),
                    phase,
                    have: by.len(),
                    need,
                });
            }
        }
        let d = dir.to_owned();
        let (pk, verified) = blocking(move || {
            transcript::verify(
                &d,
                &crate::ceremony::derive::Qap::from_statement(&statement)?,
                &mut keys::os_rng(),
            )
        })
        .await?;
        // Verification recomputes the hashes the anchors were checked for.
        if verified != steps {
            return Err(ZkError::Corrupt(format!(
                "{}: the transcript changed while it was being verified",
                dir.display()
            )));
        }
        let mut members: Vec<String> = signers.iter().map(hex::encode).collect();
        members.sort();
        members.dedup();
        tracing::info!(
            dir = %dir.display(),
            contributions = steps.len(),
            members = ?members,
            statement = shape.statement(),
            "verified the ceremony transcript; every contribution is anchored"
        );
        let vk = pk.vk.clone();
        Ok((pk, vk))
    }

    /// The ledger index of this node's anchor for `vk_hash`, submitting one
    /// unless the node's latest anchor for the statement already names it.
    async fn anchor_verifying_key(&self, shape: Shape, vk_hash: [u8; 32]) -> Result<u64> {
        let statement = shape.statement();
        let me = self.inner.node_key.verifying_key().to_bytes();
        let existing = self.with_index(|ix| {
            Ok(ix
                .vks
                .get(statement)
                .and_then(|v| v.iter().rev().find(|e| e.signer == me))
                .filter(|e| e.vk_hash == vk_hash)
                .map(|e| e.index))
        })?;
        if let Some(index) = existing {
            return Ok(index);
        }
        let receipt = self
            .inner
            .ledger
            .submit(
                Transaction::new(Payload::VerifyingKeyAnchor {
                    statement: statement.into(),
                    vk_hash,
                })
                .sign(&self.inner.node_key),
            )
            .await?;
        tracing::info!(
            index = receipt.index,
            vk_hash = %hex::encode(vk_hash),
            statement,
            "anchored the verifying key"
        );
        Ok(receipt.index)
    }

    /// Runs `f` on the ledger index after catching it up with the log.
    fn with_index<T>(&self, f: impl FnOnce(&LedgerIndex) -> Result<T>) -> Result<T> {
        let mut ix = self
            .inner
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ix.catch_up(&self.inner.ledger)?;
        f(&ix)
    }

    async fn set(&self, root: Fr) -> Result<Arc<SortedSet>> {
        let key = fr_to_bytes(&root);
        if let Some(s) = self.cached_set(&key) {
            return Ok(s);
        }
        let members = self
            .inner
            .store
            .set_members(&key)?
            .ok_or_else(|| ZkError::UnknownSet(hex::encode(key)))?;
        let set = Arc::new(blocking(move || Ok(SortedSet::build(&members)?)).await?);
        if set.root() != root {
            return Err(ZkError::Corrupt(format!("set {}", hex::encode(key))));
        }
        self.cache_set(key, set.clone());
        Ok(set)
    }

    fn cached_set(&self, root: &[u8; 32]) -> Option<Arc<SortedSet>> {
        let mut sets = self.inner.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.get(root)
    }

    fn cache_set(&self, root: [u8; 32], set: Arc<SortedSet>) {
        // Evicted sets are rebuilt from the store on their next query.
        let mut sets = self.inner.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.insert(root, set);
    }

    async fn register_record(
        &self,
        caller: &Principal,
        mut req: pb::RegisterRecordRequest,
    ) -> Result<pb::RegisterRecordResponse> {
        require(caller, Role::DataHolder, "register records")?;
        let key_bytes = Zeroizing::new(std::mem::take(&mut req.key));
        if req.wrap_key_id.is_empty() {
            return Err(ZkError::BadRequest(
                "wrap_key_id is empty: name an AES-256-GCM master key you own in this node's KMS (yilian kms create-key), which seals the record key at rest".into(),
            ));
        }
        let record = EncryptedRecord::try_from(
            req.record
                .as_ref()
                .ok_or_else(|| ZkError::BadRequest("the record is missing".into()))?,
        )?;
        let key = CipherKey::from_kms_bytes(&key_bytes)?;
        if key.commitment() != record.key_commitment {
            return Err(ZkError::BadRequest(
                "the key does not match the record's key commitment".into(),
            ));
        }
        // Decrypting authenticates the ciphertext under the key, and the
        // values must be provable: integers below 2^64, identifiers below
        // 2^248 (the set tree's range).
        let plain = Zeroizing::new(record.decrypt(&key)?);
        for (spec, value) in record.schema.iter().zip(plain.iter()) {
            let bits = match spec.kind {
                FieldKind::Integer => kyc::INT_BITS,
                FieldKind::Identifier => yilian_circuits::set::SET_VALUE_BITS,
            };
            if !yilian_circuits::cmp::fits_bits(*value, bits) {
                return Err(ZkError::BadRequest(format!(
                    "field {:?} decrypts to a value out of range for a {:?} field",
                    spec.name, spec.kind
                )));
            }
        }
        let anchor = record.anchor()?;
        let holder = caller.public_key;
        let binding = fr_to_bytes(&record.binding());
        let latest = self.with_index(|ix| {
            Ok(ix.latest_anchor(&binding, |e| {
                e.holder == holder && e.anchor.record_id == record.record_id
            }))
        })?;
        let entry = match latest {
            None => {
                return Err(ZkError::NotAnchored {
                    record_id: record.record_id,
                    detail: "the ledger has no RecordAnchor for it signed by the caller".into(),
                });
            }
            Some(e) if e.anchor != anchor => {
                return Err(ZkError::NotAnchored {
                    record_id: record.record_id,
                    detail: format!(
                        "the caller's latest anchor (entry {}) names another ciphertext or key",
                        e.index
                    ),
                });
            }
            Some(e) => e,
        };
        // Refused before anything is sealed (and audited); put_record checks
        // again in its transaction.
        let customer = if req.customer.is_empty() {
            None
        } else {
            let c = account(&req.customer, "customer")?;
            match self.inner.ledger.member(&c) {
                Some(m) if m.role == Role::Device && !m.revoked => Some(c),
                _ => {
                    return Err(ZkError::BadRequest(format!(
                        "customer {}: not an admitted device identity; give the customer's certificate key, or leave it out",
                        hex::encode(c)
                    )));
                }
            }
        };
        if let Some((previous, _)) = self.inner.store.record(&record.record_id)? {
            if previous.holder != holder {
                return Err(ZkError::NotRecordHolder(record.record_id));
            }
            crate::store::keeps_customer(&previous, customer)?;
        }
        let kms = self.inner.kms.kms().await?;
        // A grant-only key is destroyed when its grants end, and every record
        // key sealed under it with it: one answered question would do.
        let info = kms.key_info(&holder_caller(&holder), &req.wrap_key_id)?;
        if info.grant_only {
            return Err(ZkError::BadRequest(format!(
                "wrap_key_id `{}` is grant-only, and would be destroyed with its first grant: name a key created without --grant-only",
                req.wrap_key_id
            )));
        }
        let context = record_key_context(&record.record_id);
        let sealed = kms
            .encrypt(
                &holder_caller(&holder),
                &req.wrap_key_id,
                &key_bytes,
                &context,
                None,
            )
            .await?;
        let stored = StoredRecord {
            holder,
            anchor_index: entry.index,
            record,
            customer,
        };
        let replaced = self.inner.store.put_record(&stored, &sealed)?;
        tracing::info!(
            record_id = %stored.record.record_id,
            holder = %caller,
            anchor_index = entry.index,
            replaced,
            "record registered"
        );
        Ok(pb::RegisterRecordResponse {
            record_id: stored.record.record_id,
            ciphertext_hash: anchor.ciphertext_hash.to_vec(),
            key_commitment: anchor.key_commitment.to_vec(),
            anchor_index: entry.index,
            replaced,
        })
    }

    async fn register_set(
        &self,
        caller: &Principal,
        req: pb::RegisterSetRequest,
    ) -> Result<pb::RegisterSetResponse> {
        require(caller, Role::DataHolder, "register sets")?;
        let mut members: Vec<Fr> = req.identifiers.iter().map(|s| kyc::identifier(s)).collect();
        for e in &req.elements {
            members.push(fr(e, "set member")?);
        }
        let set = blocking(move || {
            let set = SortedSet::build(&members)?;
            Ok((set, members))
        })
        .await?;
        let (set, members) = set;
        let root = fr_to_bytes(&set.root());
        self.inner.store.put_set(&root, &members)?;
        let count = set.len() as u64;
        self.cache_set(root, Arc::new(set));
        tracing::info!(root = %hex::encode(root), members = count, holder = %caller, "set registered");
        Ok(pb::RegisterSetResponse {
            root: root.to_vec(),
            members: count,
        })
    }

    async fn grant(&self, caller: &Principal, req: pb::GrantRequest) -> Result<pb::GrantResponse> {
        require(caller, Role::DataHolder, "grant queries")?;
        let verifier = account(&req.verifier, "verifier")?;
        // An expired admission is as good as none: the verifier could not
        // connect to use the grant.
        let current = |m: &yilian_ledger::Member| !m.revoked && m.not_after_ms >= now_ms();
        match self.inner.ledger.member(&verifier) {
            Some(m) if m.role == Role::Verifier && current(&m) => {}
            _ => {
                return Err(ZkError::BadRequest(format!(
                    "verifier {}: not a current admitted verifier; give the certificate key of a verifier whose admission is neither revoked nor expired",
                    hex::encode(verifier)
                )));
            }
        }
        let max_uses = req.max_uses.unwrap_or(1);
        if max_uses == 0 {
            return Err(ZkError::BadRequest(
                "max_uses is 0: give at least 1 (leave it out for one use)".into(),
            ));
        }
        if req.allowed.is_empty() || req.allowed.len() > consent::MAX_ALLOWED {
            return Err(ZkError::BadRequest(format!(
                "allowed: give 1 to {} predicates",
                consent::MAX_ALLOWED
            )));
        }
        let allowed = predicates_from_pb(&req.allowed)?;
        let (stored, sealed) = self
            .inner
            .store
            .record(&req.record_id)?
            .ok_or_else(|| ZkError::UnknownRecord(req.record_id.clone()))?;
        if stored.holder != caller.public_key {
            return Err(ZkError::NotRecordHolder(req.record_id.clone()));
        }
        // Each allowed predicate must be one the statement can answer.
        for p in &allowed {
            query::compile(&stored.record, std::slice::from_ref(p))?;
        }
        let countersignature = match stored.customer {
            None => None,
            Some(customer) => {
                if self
                    .inner
                    .ledger
                    .member(&customer)
                    .is_none_or(|m| !current(&m))
                {
                    return Err(consent::Refusal::CustomerNotAdmitted(req.record_id.clone()).into());
                }
                if req.consent_id.is_empty() || req.consent_id.len() > MAX_GRANT_ID_LEN {
                    return Err(ZkError::BadRequest(format!(
                        "consent_id: give the customer's id of its consent (1 to {MAX_GRANT_ID_LEN} bytes)"
                    )));
                }
                let terms = consent::Consent {
                    consent_id: req.consent_id.clone(),
                    record_id: req.record_id.clone(),
                    verifier,
                    allowed: allowed.clone(),
                    max_uses,
                    not_before_ms: req.not_before_ms,
                    not_after_ms: req.not_after_ms,
                    budget: req.budget.clone().into_iter().collect(),
                };
                let signed =
                    (!req.customer_signature.is_empty()).then(|| consent::Countersignature {
                        customer,
                        signature: req.customer_signature.clone(),
                    });
                consent::check_countersignature(&customer, &terms, signed.as_ref())?;
                // Claimed before the grant is made: a failure after it
                // spends the consent rather than letting it be replayed.
                if !self.inner.store.claim_consent(&terms.digest())? {
                    return Err(consent::Refusal::ConsentUsed(req.consent_id.clone()).into());
                }
                signed
            }
        };
        let now = now_ms();
        let not_before_ms = if req.not_before_ms == 0 {
            now
        } else {
            req.not_before_ms
        };
        if req.not_after_ms <= not_before_ms.max(now) {
            return Err(ZkError::BadRequest(
                "not_after_ms: give the grant's end, later than now and than not_before_ms (ms since the Unix epoch)".into(),
            ));
        }
        let mut grant = consent::QueryGrant {
            grant_id: String::new(),
            record_id: req.record_id.clone(),
            holder: caller.public_key,
            verifier,
            allowed,
            budget: req.budget.into_iter().collect(),
            countersignature,
        };
        let disclosed = self.inner.store.disclosed(&req.record_id, &verifier)?;
        consent::check_terms(&grant, &disclosed)?;
        let wrap_key = yilian_kms::envelope::Envelope::decode(&sealed)
            .map_err(|e| ZkError::Corrupt(format!("sealed key of {:?}: {e}", req.record_id)))?
            .key_id;
        let kms = self.inner.kms.kms().await?;
        let kms_grant = kms
            .grant(
                &holder_caller(&caller.public_key),
                &wrap_key,
                yilian_kms::GrantTerms {
                    reader: verifier,
                    not_before_ms,
                    not_after_ms: req.not_after_ms,
                    max_uses,
                    operations: vec![yilian_kms::Operation::Prove],
                    required_context: Some(record_key_context(&req.record_id)),
                },
            )
            .await?;
        grant.grant_id = kms_grant.grant_id;
        let terms_hash = grant.terms_hash();
        // On the ledger before it can be used: a grant the ledger refused is
        // revoked, and the holder told.
        let recorded = self
            .inner
            .ledger
            .submit(
                Transaction::new(Payload::QueryGrant {
                    grant_id: grant.grant_id.clone(),
                    record_id: grant.record_id.clone(),
                    holder: grant.holder,
                    verifier,
                    terms_hash,
                })
                .sign(&self.inner.node_key),
            )
            .await;
        let receipt = match recorded {
            Ok(r) => r,
            Err(e) => {
                let _ = kms
                    .revoke_grant(&holder_caller(&caller.public_key), &grant.grant_id)
                    .await;
                return Err(e.into());
            }
        };
        self.inner.store.put_grant(&grant)?;
        tracing::info!(grant_id = %grant.grant_id, record_id = %grant.record_id, holder = %caller, "query grant issued");
        Ok(pb::GrantResponse {
            grant_id: grant.grant_id,
            ledger_index: receipt.index,
            terms_hash: terms_hash.to_vec(),
        })
    }

    async fn revoke_grant(
        &self,
        caller: &Principal,
        req: pb::RevokeGrantRequest,
    ) -> Result<pb::RevokeGrantResponse> {
        require(caller, Role::DataHolder, "revoke query grants")?;
        let g = self
            .inner
            .kms
            .kms()
            .await?
            .revoke_grant(&holder_caller(&caller.public_key), &req.grant_id)
            .await?;
        tracing::info!(grant_id = %req.grant_id, holder = %caller, "query grant revoked");
        Ok(pb::RevokeGrantResponse {
            grant_id: g.grant_id,
            uses: g.uses,
        })
    }

    /// Records a query's outcome on the ledger, signed by this node.
    async fn record_query(
        &self,
        req: &pb::QueryRequest,
        verifier: [u8; 32],
        predicates: &[Predicate],
        outcome: String,
    ) -> Result<()> {
        use sha2::{Digest, Sha256};
        let predicates_hash: [u8; 32] =
            Sha256::digest(serde_json::to_vec(predicates).expect("predicates serialise")).into();
        self.inner
            .ledger
            .submit(
                Transaction::new(Payload::ZkQuery {
                    record_id: req.record_id.clone(),
                    grant_id: (!req.grant_id.is_empty()).then(|| req.grant_id.clone()),
                    verifier,
                    predicates_hash,
                    outcome,
                })
                .sign(&self.inner.node_key),
            )
            .await?;
        Ok(())
    }

    /// Admits a query under its (already checked) grant: counts the
    /// disclosure, durably, before anything is proven, then a use of the
    /// KMS grant, which opens the record's key. A refused use gives the
    /// disclosure back. One query per (record, verifier) at a time.
    async fn consent(
        &self,
        req: &pb::QueryRequest,
        grant: &consent::QueryGrant,
        verifier: &[u8; 32],
        predicates: &[Predicate],
        sealed: &[u8],
    ) -> Result<CipherKey> {
        let lock = {
            let mut locks = self
                .inner
                .consent_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks
                .entry((req.record_id.clone(), *verifier))
                .or_default()
                .clone()
        };
        let _turn = lock.lock().await;
        // The map would otherwise keep a lock for every pair ever asked.
        let _forget = ForgetLock {
            locks: &self.inner.consent_locks,
            key: (req.record_id.clone(), *verifier),
        };
        let store = &self.inner.store;
        let before = store.disclosed(&req.record_id, verifier)?;
        let after = consent::admit(grant, &req.record_id, verifier, predicates, &before)?;
        if !store.swap_disclosed(&req.record_id, verifier, &before, &after)? {
            return Err(ZkError::Corrupt(
                "the disclosure changed under the consent lock".into(),
            ));
        }
        let kms = self.inner.kms.kms().await;
        let opened = match kms {
            Ok(kms) => {
                kms.open_to_prove(
                    &Caller {
                        account: *verifier,
                        role: Role::Verifier,
                    },
                    sealed,
                    &record_key_context(&req.record_id),
                    Some(&req.grant_id),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                // Nothing was answered: give the disclosure back.
                store.swap_disclosed(
                    &req.record_id,
                    verifier,
                    &after,
                    &before_of(&after, &before),
                )?;
                use yilian_kms::KmsError as K;
                return Err(match e {
                    K::UnknownGrant(_)
                    | K::NotGrantee(_)
                    | K::GrantNotYetValid { .. }
                    | K::GrantExpired { .. }
                    | K::GrantExhausted { .. }
                    | K::GrantRevoked(_)
                    | K::OperationNotGranted { .. }
                    | K::WrongContext(_)
                    | K::BadGrant(_) => ZkError::GrantRefused(e),
                    e => ZkError::Kms(e),
                });
            }
        };
        CipherKey::from_kms_bytes(opened.expose())
            .map_err(|_| ZkError::Corrupt(format!("sealed key of record {:?}", req.record_id)))
    }

    /// Records a refusal (with its stable code, never the caller's input)
    /// and returns it.
    async fn refuse(
        &self,
        req: &pb::QueryRequest,
        verifier: [u8; 32],
        predicates: &[Predicate],
        e: ZkError,
    ) -> Result<pb::QueryResponse> {
        let code = match &e {
            ZkError::Refused(r) => r.code(),
            ZkError::GrantRefused(k) => k.reason(),
            _ => "error",
        };
        tracing::info!(record_id = %req.record_id, verifier = %hex::encode(verifier), reason = %e, "query refused");
        self.record_query(req, verifier, predicates, format!("refused: {code}"))
            .await?;
        Err(e)
    }

    async fn query(&self, caller: &Principal, req: pb::QueryRequest) -> Result<pb::QueryResponse> {
        require(caller, Role::Verifier, "ask ZK queries")?;
        if req.predicates.is_empty() {
            return Err(ZkError::BadRequest(
                "a query needs at least one predicate".into(),
            ));
        }
        if req.grant_id.len() > MAX_GRANT_ID_LEN {
            return Err(ZkError::BadRequest(format!(
                "grant_id is {} bytes: give the id Grant returned (at most {MAX_GRANT_ID_LEN})",
                req.grant_id.len()
            )));
        }
        let predicates = predicates_from_pb(&req.predicates)?;
        let verifier = caller.public_key;
        // Consent first: without it the verifier learns nothing about the
        // record, not even whether it exists.
        let grant = if req.grant_id.is_empty() {
            None
        } else {
            self.inner.store.grant(&req.grant_id)?
        };
        if let Err(r) =
            consent::check_grant(grant.as_ref(), &req.grant_id, &req.record_id, &verifier)
        {
            return self.refuse(&req, verifier, &predicates, r.into()).await;
        }
        let grant = grant.expect("checked");
        let (stored, sealed) = self
            .inner
            .store
            .record(&req.record_id)?
            .ok_or_else(|| ZkError::UnknownRecord(req.record_id.clone()))?;
        let q = query::compile(&stored.record, &predicates)?;
        let set = match q.set.op {
            SetOp::None => None,
            SetOp::In | SetOp::NotIn => Some(self.set(q.set.root).await?),
        };
        let shape = stored.record.shape()?;
        let sk = self.keys(shape).await?;
        let key = match self
            .consent(&req, &grant, &verifier, &predicates, &sealed)
            .await
        {
            Ok(k) => k,
            Err(e @ (ZkError::Refused(_) | ZkError::GrantRefused(_))) => {
                return self.refuse(&req, verifier, &predicates, e).await;
            }
            Err(e) => return Err(e),
        };
        let _permit = self
            .inner
            .provers
            .acquire()
            .await
            .map_err(|_| ZkError::Groth16("prover pool closed".into()))?;
        let record = stored.record;
        let k = sk.clone();
        let started = std::time::Instant::now();
        let proved = blocking(move || {
            k.prover
                .prove(&record, &key, &q, set.as_deref(), &mut keys::os_rng())
        })
        .await;
        metrics::histogram!("yilian_zk_prove_seconds").record(started.elapsed());
        metrics::counter!(
            "yilian_zk_proofs_total",
            "outcome" => if proved.is_ok() { "answered" } else { "failed" }
        )
        .increment(1);
        let proof = match proved {
            Ok(p) => p,
            Err(e) => {
                // The use is spent: say so on the ledger.
                self.record_query(&req, verifier, &predicates, "failed".into())
                    .await?;
                return Err(e);
            }
        };
        tracing::info!(
            record_id = %req.record_id,
            verifier = %caller,
            answer = proof.public.result,
            ms = started.elapsed().as_millis() as u64,
            "query proved"
        );
        self.record_query(&req, verifier, &predicates, "answered".into())
            .await?;
        Ok(pb::QueryResponse {
            answer: proof.public.result,
            proof: Some(proof_to_pb(&proof, shape, &sk.vk_hash)),
            anchor_index: stored.anchor_index,
            holder: stored.holder.to_vec(),
        })
    }

    async fn verify(&self, req: pb::VerifyRequest) -> Result<pb::VerifyResponse> {
        let shape = statement(&req.statement)?;
        let statement = shape.statement();
        let holder = if req.holder.is_empty() {
            None
        } else {
            Some(account(&req.holder, "holder")?)
        };
        let (pvk, vk_hash) = if req.verifying_key.is_empty() {
            let k = self.keys(shape).await?;
            (k.pvk.clone(), k.vk_hash)
        } else {
            let vk: VerifyingKey<Bn254> = keys::from_bytes("verifying key", &req.verifying_key)?;
            (keys::prepare(&vk), keys::vk_hash(&vk))
        };
        let mut out = pb::VerifyResponse {
            vk_hash: vk_hash.to_vec(),
            ..Default::default()
        };
        let refuse = |mut out: pb::VerifyResponse, reason: String| -> Result<pb::VerifyResponse> {
            out.valid = false;
            out.reason = reason;
            Ok(out)
        };
        let anchored = self.with_index(|ix| {
            Ok(ix
                .vks
                .get(statement)
                .is_some_and(|v| v.iter().any(|e| e.vk_hash == vk_hash)))
        })?;
        if !anchored {
            return refuse(
                out,
                format!("the verifying key is not anchored on the ledger for {statement}"),
            );
        }
        let mut inputs = Vec::with_capacity(req.public_inputs.len());
        for (i, x) in req.public_inputs.iter().enumerate() {
            match fr(x, "public input") {
                Ok(x) => inputs.push(x),
                Err(e) => return refuse(out, format!("public input {i}: {e}")),
            }
        }
        let public = match KycPublic::from_inputs(&inputs) {
            Ok(p) => p,
            Err(e) => return refuse(out, format!("public inputs: {e}")),
        };
        let proof: Proof<Bn254> = match keys::from_bytes("proof", &req.proof) {
            Ok(p) => p,
            Err(e) => return refuse(out, e.to_string()),
        };
        let binding = fr_to_bytes(&public.record_binding);
        let Some(entry) = self.with_index(|ix| {
            Ok(ix.latest_anchor(&binding, |e| holder.is_none_or(|h| e.holder == h)))
        })?
        else {
            return refuse(
                out,
                "the ledger has no record anchor for the proof's record".into(),
            );
        };
        out.anchor_index = entry.index;
        out.holder = entry.holder.to_vec();
        out.record_id = entry.anchor.record_id.clone();
        if verifier::check_anchor(&public, &entry.anchor).is_err() {
            return refuse(
                out,
                format!(
                    "the proof is about another ciphertext or key than the record's latest anchor (entry {})",
                    entry.index
                ),
            );
        }
        let started = std::time::Instant::now();
        let verified = blocking(move || verifier::verify(&pvk, &proof, &public)).await;
        metrics::histogram!("yilian_zk_verify_seconds").record(started.elapsed());
        metrics::counter!("yilian_zk_verifications_total", "valid" => if verified.is_ok() { "true" } else { "false" })
            .increment(1);
        match verified {
            Ok(answer) => {
                out.valid = true;
                out.answer = answer;
                Ok(out)
            }
            Err(ZkError::InvalidProof) => refuse(out, ZkError::InvalidProof.to_string()),
            Err(e) => Err(e),
        }
    }

    async fn verifying_key(
        &self,
        req: pb::VerifyingKeyRequest,
    ) -> Result<pb::VerifyingKeyResponse> {
        let shape = statement(&req.statement)?;
        let k = self.keys(shape).await?;
        Ok(pb::VerifyingKeyResponse {
            statement: shape.statement().into(),
            verifying_key: keys::to_bytes(&k.vk),
            vk_hash: k.vk_hash.to_vec(),
            anchor_index: k.anchor_index,
            snarkjs_json: serde_json::to_string(&snarkjs::export_vk(&k.vk))
                .expect("verifying keys serialise"),
        })
    }
}

fn caller<T>(req: &Request<T>) -> std::result::Result<Principal, Status> {
    yilian_identity::grpc::caller(req)
}

#[tonic::async_trait]
impl pb::zk_server::Zk for ZkService {
    async fn register_record(
        &self,
        req: Request<pb::RegisterRecordRequest>,
    ) -> R<pb::RegisterRecordResponse> {
        let c = caller(&req)?;
        Ok(Response::new(
            ZkService::register_record(self, &c, req.into_inner()).await?,
        ))
    }

    async fn register_set(
        &self,
        req: Request<pb::RegisterSetRequest>,
    ) -> R<pb::RegisterSetResponse> {
        let c = caller(&req)?;
        Ok(Response::new(
            ZkService::register_set(self, &c, req.into_inner()).await?,
        ))
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::GrantResponse> {
        let c = caller(&req)?;
        Ok(Response::new(
            ZkService::grant(self, &c, req.into_inner()).await?,
        ))
    }

    async fn revoke_grant(
        &self,
        req: Request<pb::RevokeGrantRequest>,
    ) -> R<pb::RevokeGrantResponse> {
        let c = caller(&req)?;
        Ok(Response::new(
            ZkService::revoke_grant(self, &c, req.into_inner()).await?,
        ))
    }

    async fn query(&self, req: Request<pb::QueryRequest>) -> R<pb::QueryResponse> {
        let c = caller(&req)?;
        Ok(Response::new(
            ZkService::query(self, &c, req.into_inner()).await?,
        ))
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> R<pb::VerifyResponse> {
        // Any admitted identity may check a proof.
        caller(&req)?;
        Ok(Response::new(
            ZkService::verify(self, req.into_inner()).await?,
        ))
    }

    async fn verifying_key(
        &self,
        req: Request<pb::VerifyingKeyRequest>,
    ) -> R<pb::VerifyingKeyResponse> {
        caller(&req)?;
        Ok(Response::new(
            ZkService::verifying_key(self, req.into_inner()).await?,
        ))
    }
}

/// Sets built for proving, the most recently used kept, so that data
/// holders registering many sets cannot grow the node's memory without
/// bound.
struct SetCache {
    sets: HashMap<[u8; 32], (Arc<SortedSet>, u64)>,
    clock: u64,
    capacity: usize,
}

/// Sets kept built in memory at once.
const CACHED_SETS: usize = 64;

impl Default for SetCache {
    fn default() -> Self {
        SetCache::with_capacity(CACHED_SETS)
    }
}

impl SetCache {
    fn with_capacity(capacity: usize) -> Self {
        SetCache {
            sets: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, root: &[u8; 32]) -> Option<Arc<SortedSet>> {
        self.clock += 1;
        let now = self.clock;
        self.sets.get_mut(root).map(|(set, used)| {
            *used = now;
            set.clone()
        })
    }

    fn insert(&mut self, root: [u8; 32], set: Arc<SortedSet>) {
        self.clock += 1;
        if !self.sets.contains_key(&root)
            && self.sets.len() >= self.capacity
            && let Some(oldest) = self
                .sets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            self.sets.remove(&oldest);
        }
        self.sets.insert(root, (set, self.clock));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_set_cache_keeps_the_most_recently_used_within_its_capacity() {
        use ark_bn254::Fr;
        let set = |n: u64| Arc::new(SortedSet::build(&[Fr::from(n), Fr::from(n + 1)]).unwrap());
        let root = |n: u8| [n; 32];
        let mut cache = SetCache::with_capacity(2);
        cache.insert(root(1), set(1));
        cache.insert(root(2), set(2));
        assert!(cache.get(&root(1)).is_some());
        // Full: the least recently used (2) goes, not the one just read.
        cache.insert(root(3), set(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&root(2)).is_none());
        assert!(cache.get(&root(1)).is_some() && cache.get(&root(3)).is_some());
        // Re-inserting a cached set evicts nothing.
        cache.insert(root(3), set(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&root(1)).is_some());
    }

    #[test]
    fn predicates_cross_the_wire_with_their_ors_and_field_comparisons() {
        let gte = |field: &str, value| Predicate::Gte {
            field: field.into(),
            value,
        };
        let predicates = vec![
            gte("income", 1),
            Predicate::Any {
                any: vec![
                    gte("score", 700),
                    Predicate::LtField {
                        field: "loan".into(),
                        other: "balance".into(),
                    },
                ],
            },
            Predicate::EqField {
                field: "name".into(),
                other: "alias".into(),
            },
            Predicate::Any {
                any: vec![gte("age", 18)],
            },
        ];
        let wire = predicates_to_pb(&predicates);
        assert_eq!(
            wire.iter().map(|p| p.any_of).collect::<Vec<_>>(),
            [0, 1, 1, 0, 2]
        );
        assert_eq!(predicates_from_pb(&wire).unwrap(), predicates);
    }

    fn wire_predicate() -> impl Strategy<Value = pb::Predicate> {
        use pb::predicate::Value;
        let value = prop_oneof![
            Just(None),
            any::<u64>().prop_map(|v| Some(Value::Integer(v))),
            "[a-z]{0,3}".prop_map(|s| Some(Value::Identifier(s))),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|r| Some(Value::Root(r))),
            "[a-z]{0,3}".prop_map(|s| Some(Value::OtherField(s))),
        ];
        (
            "[a-z]{0,3}",
            0i32..12,
            value,
            proptest::option::of(any::<u64>()),
            0u32..3,
        )
            .prop_map(|(field, op, value, high, any_of)| pb::Predicate {
                field,
                op,
                value,
                high,
                any_of,
            })
    }

    proptest! {
        #[test]
        fn the_predicate_decoder_refuses_or_round_trips(
            wire in proptest::collection::vec(wire_predicate(), 0..6)
        ) {
            if let Ok(predicates) = predicates_from_pb(&wire) {
                let again = predicates_from_pb(&predicates_to_pb(&predicates)).unwrap();
                prop_assert_eq!(again, predicates);
            }
        }
    }
}
