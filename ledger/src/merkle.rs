//! The RFC 6962 / RFC 9162 Merkle tree, sans-IO.
//!
//! Hashing is exactly the RFC's: `leaf = SHA-256(0x00 || entry)`,
//! `node = SHA-256(0x01 || left || right)`, the tree over `n` leaves splits at
//! the largest power of two below `n`. [`MerkleTree`] keeps every complete
//! subtree's hash (about `2n` hashes), so the root, an inclusion proof and a
//! consistency proof each cost `O(log n)` hashes: at most one incomplete
//! subtree per proof is recomputed, from at most `log n` complete ones.
//! Verification ([`verify_inclusion`], [`verify_consistency`]) needs nothing
//! but the proof, the entry and a trusted head.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a proof or a request about the tree was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProofError {
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {requested} exceeds the log's size {size}")]
    SizeOutOfRange { requested: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("proof has {got} hashes, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("proof does not lead to the trusted root")]
    RootMismatch,
    #[error("malformed proof: {0}")]
    Malformed(std::borrow::Cow<'static, str>),
}

/// An RFC 9162 inclusion proof (audit path) for one leaf in a tree of a given size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

/// An RFC 9162 consistency proof between two sizes of the same log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

/// An append-only Merkle tree holding the hash of every complete subtree.
///
/// `levels[k][i]` is the hash of leaves `i*2^k .. (i+1)*2^k`. Appending is
/// amortised O(1) hashes; memory is about `2n * 32` bytes (64 MB at 10^6).
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash (see [`leaf_hash`]) and returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let index = self.levels[0].len() as u64 - 1;
        let mut level = 0;
        // Each time a level gains an even-indexed right sibling, a new complete parent exists.
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
        index
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(index as usize).copied()
    }

    /// `MTH(D[start..end])`, for any range the RFC's recursion produces:
    /// `start` is a multiple of the largest power of two not above `end - start`.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        debug_assert!(start < end && end <= self.len());
        let n = end - start;
        if n.is_power_of_two() {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(start >> k) as usize];
        }
        let k = split(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeOutOfRange {
                requested: size,
                size: self.len(),
            });
        }
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.len()).expect("own size is in range")
    }

    /// RFC 9162 §2.1.3.1: the audit path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeOutOfRange {
                requested: size,
                size: self.len(),
            });
        }
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::with_capacity(64 - size.leading_zeros() as usize);
        let (mut start, mut end, m) = (0u64, size, index);
        // Walk down from the root, collecting siblings; reversed at the end
        // because the RFC lists the path from the leaf upward.
        while end - start > 1 {
            let k = split(end - start);
            if m < start + k {
                path.push(self.subtree(start + k, end));
                end = start + k;
            } else {
                path.push(self.subtree(start, start + k));
                start += k;
            }
        }
        path.reverse();
        Ok(InclusionProof {
            index,
            tree_size: size,
            path,
        })
    }

    /// RFC 9162 §2.1.4.1: the proof that the tree of `old` leaves is a prefix of the tree of `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, ProofError> {
        if new > self.len() {
            return Err(ProofError::SizeOutOfRange {
                requested: new,
                size: self.len(),
            });
        }
        if old > new {
            return Err(ProofError::SizesReversed { old, new });
        }
        let mut path = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut path);
        }
        Ok(ConsistencyProof {
            old_size: old,
            new_size: new,
            path,
        })
    }

    /// SUBPROOF(m, D[start..end], b) from RFC 9162, appending in the RFC's order.
    fn subproof(&self, m: u64, start: u64, end: u64, b: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !b {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, b, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// RFC 9162 §2.1.3.2: checks that `leaf` sits at `proof.index` under `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    proof: &InclusionProof,
    root: &Hash,
) -> Result<(), ProofError> {
    let (index, size) = (proof.index, proof.tree_size);
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in &proof.path {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                got: proof.path.len(),
                expected: inclusion_len(index, size),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            got: proof.path.len(),
            expected: inclusion_len(index, size),
        });
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut fnode, mut snode, mut len) = (index, size - 1, 0);
    while snode != 0 {
        if fnode & 1 == 0 && fnode == snode {
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        }
        fnode >>= 1;
        snode >>= 1;
        len += 1;
    }
    len
}

/// RFC 9162 §2.1.4.2: checks that `old_root` (of `proof.old_size` leaves) is a
/// prefix of `new_root` (of `proof.new_size` leaves).
pub fn verify_consistency(
    proof: &ConsistencyProof,
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    let (first, second) = (proof.old_size, proof.new_size);
    if first > second {
        return Err(ProofError::SizesReversed {
            old: first,
            new: second,
        });
    }
    if first == second {
        if !proof.path.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.path.len(),
                expected: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty one; an empty proof is the only proof.
        return if proof.path.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength {
                got: proof.path.len(),
                expected: 0,
            })
        };
    }
    let mut path: Vec<Hash> = proof.path.clone();
    if first.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let Some((&head, rest)) = path.split_first() else {
        return Err(ProofError::Malformed("consistency proof is empty".into()));
    };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (head, head);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::Malformed(
                "consistency proof is too long".into(),
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Malformed(
            "consistency proof is too short".into(),
        ));
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

mod hex_hashes {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        v.iter()
            .map(|s| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(s, &mut h).map_err(D::Error::custom)?;
                Ok(h)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The RFC 6962 reference inputs and answers, as published with the
    // certificate-transparency reference implementation's tests.
    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    // (leaf index, tree size, path)
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    // (old size, new size, proof)
    const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn h(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    fn reference_tree() -> MerkleTree {
        let mut t = MerkleTree::new();
        for i in INPUTS {
            t.push(leaf_hash(&hex::decode(i).unwrap()));
        }
        t
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(MerkleTree::new().root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn roots_match_the_rfc_reference() {
        let t = reference_tree();
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(
                t.root_at(size as u64 + 1).unwrap(),
                h(root),
                "size {}",
                size + 1
            );
        }
    }

    #[test]
    fn inclusion_proofs_match_the_rfc_reference_and_verify() {
        let t = reference_tree();
        for (index, size, path) in INCLUSION {
            let proof = t.inclusion_proof(index, size).unwrap();
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            assert_eq!(proof.path, want, "leaf {index} of {size}");
            let leaf = t.leaf(index).unwrap();
            verify_inclusion(&leaf, &proof, &t.root_at(size).unwrap()).unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_rfc_reference_and_verify() {
        let t = reference_tree();
        for (old, new, path) in CONSISTENCY {
            let proof = t.consistency_proof(old, new).unwrap();
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            assert_eq!(proof.path, want, "{old} -> {new}");
            verify_consistency(&proof, &t.root_at(old).unwrap(), &t.root_at(new).unwrap()).unwrap();
        }
    }

    #[test]
    fn requests_outside_the_tree_are_refused() {
        let t = reference_tree();
        assert_eq!(
            t.inclusion_proof(8, 8),
            Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            t.inclusion_proof(0, 9),
            Err(ProofError::SizeOutOfRange {
                requested: 9,
                size: 8
            })
        );
        assert_eq!(
            t.consistency_proof(5, 3),
            Err(ProofError::SizesReversed { old: 5, new: 3 })
        );
    }

    fn tree(n: u64) -> MerkleTree {
        let mut t = MerkleTree::new();
        for i in 0..n {
            t.push(leaf_hash(&i.to_le_bytes()));
        }
        t
    }

    /// The RFC's recursive definition, straight from the text, as a second opinion.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_no_other_leaf_does(n in 1u64..300, pick in any::<u64>()) {
            let t = tree(n);
            let leaves: Vec<Hash> = (0..n).map(|i| t.leaf(i).unwrap()).collect();
            prop_assert_eq!(t.root(), reference_root(&leaves));
            let size = 1 + pick % n;
            let index = (pick / 7) % size;
            let root = t.root_at(size).unwrap();
            let proof = t.inclusion_proof(index, size).unwrap();
            prop_assert!(verify_inclusion(&leaves[index as usize], &proof, &root).is_ok());
            let other = (index + 1) % n;
            if other != index {
                prop_assert!(verify_inclusion(&leaves[other as usize], &proof, &root).is_err());
            }
        }

        #[test]
        fn consistency_holds_between_any_two_sizes(n in 1u64..300, a in any::<u64>(), b in any::<u64>()) {
            let t = tree(n);
            let (x, y) = (a % (n + 1), b % (n + 1));
            let (old, new) = (x.min(y), x.max(y));
            let proof = t.consistency_proof(old, new).unwrap();
            let (ro, rn) = (t.root_at(old).unwrap(), t.root_at(new).unwrap());
            prop_assert!(verify_consistency(&proof, &ro, &rn).is_ok());
            if old > 0 && old < new {
                // A different old root must not be accepted.
                let mut bad = ro;
                bad[0] ^= 1;
                prop_assert!(verify_consistency(&proof, &bad, &rn).is_err());
            }
        }

        #[test]
        fn tampered_proofs_never_verify(n in 2u64..200, pick in any::<u64>(), byte in 0usize..32, which in any::<usize>()) {
            let t = tree(n);
            let index = pick % n;
            let mut proof = t.inclusion_proof(index, n).unwrap();
            let leaf = t.leaf(index).unwrap();
            if !proof.path.is_empty() {
                let w = which % proof.path.len();
                proof.path[w][byte] ^= 0x80;
                prop_assert!(verify_inclusion(&leaf, &proof, &t.root()).is_err());
                proof.path[w][byte] ^= 0x80;
                proof.path.pop();
                prop_assert!(verify_inclusion(&leaf, &proof, &t.root()).is_err());
            }
        }
    }
}
