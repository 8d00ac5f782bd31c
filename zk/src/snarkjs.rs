//! snarkjs' Groth16 JSON formats (`verification_key.json`, `proof.json`,
//! `public.json`): decimal strings, projective coordinates with z = 1, G2
//! coordinates as `[c0, c1]`. These are also Yilian's proof file formats,
//! so `yilian zk verify` and third-party Groth16 tooling read the same files.

use std::str::FromStr;

use ark_bn254::{Bn254, Fq, Fq2, Fr, G1Affine, G2Affine};
use ark_ec::AffineRepr;
use ark_groth16::{Proof, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Result, ZkError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationKeyJson {
    pub protocol: String,
    pub curve: String,
    #[serde(rename = "nPublic")]
    pub n_public: usize,
    pub vk_alpha_1: [String; 3],
    pub vk_beta_2: [[String; 2]; 3],
    pub vk_gamma_2: [[String; 2]; 3],
    pub vk_delta_2: [[String; 2]; 3],
    #[serde(rename = "IC")]
    pub ic: Vec<[String; 3]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofJson {
    pub pi_a: [String; 3],
    pub pi_b: [[String; 2]; 3],
    pub pi_c: [String; 3],
    pub protocol: String,
    pub curve: String,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> ZkError {
    ZkError::Malformed {
        what,
        detail: detail.into(),
    }
}

fn g1_json(p: &G1Affine) -> [String; 3] {
    match p.xy() {
        Some((x, y)) => [x.to_string(), y.to_string(), "1".into()],
        None => ["0".into(), "1".into(), "0".into()],
    }
}

fn g2_json(p: &G2Affine) -> [[String; 2]; 3] {
    match p.xy() {
        Some((x, y)) => [
            [x.c0.to_string(), x.c1.to_string()],
            [y.c0.to_string(), y.c1.to_string()],
            ["1".into(), "0".into()],
        ],
        None => [
            ["0".into(), "0".into()],
            ["1".into(), "0".into()],
            ["0".into(), "0".into()],
        ],
    }
}

fn decimal<F: FromStr + ToString>(what: &'static str, s: &str) -> Result<F> {
    // FromStr reduces silently; insist on the canonical decimal form.
    let v: F = s
        .parse()
        .map_err(|_| malformed(what, format!("not a decimal field element: {s:?}")))?;
    if v.to_string() != s {
        return Err(malformed(what, format!("not canonical: {s:?}")));
    }
    Ok(v)
}

fn g1_parse(what: &'static str, j: &[String; 3]) -> Result<G1Affine> {
    if j[2] == "0" {
        return Ok(G1Affine::identity());
    }
    if j[2] != "1" {
        return Err(malformed(what, "z must be 1 (affine) or 0 (infinity)"));
    }
    let p = G1Affine::new_unchecked(decimal::<Fq>(what, &j[0])?, decimal::<Fq>(what, &j[1])?);
    if !p.is_on_curve() || !p.is_in_correct_subgroup_assuming_on_curve() {
        return Err(malformed(what, "point is not on the curve"));
    }
    Ok(p)
}

fn g2_parse(what: &'static str, j: &[[String; 2]; 3]) -> Result<G2Affine> {
    if j[2] == ["0", "0"] {
        return Ok(G2Affine::identity());
    }
    if j[2] != ["1", "0"] {
        return Err(malformed(what, "z must be 1 (affine) or 0 (infinity)"));
    }
    let fq2 = |c: &[String; 2]| -> Result<Fq2> {
        Ok(Fq2::new(decimal(what, &c[0])?, decimal(what, &c[1])?))
    };
    let p = G2Affine::new_unchecked(fq2(&j[0])?, fq2(&j[1])?);
    if !p.is_on_curve() || !p.is_in_correct_subgroup_assuming_on_curve() {
        return Err(malformed(
            what,
            "point is not on the curve or not in the subgroup",
        ));
    }
    Ok(p)
}

pub fn export_vk(vk: &VerifyingKey<Bn254>) -> VerificationKeyJson {
    VerificationKeyJson {
        protocol: "groth16".into(),
        curve: "bn128".into(),
        // Every Groth16 key has an IC point for the constant 1; a key
        // without one exports as nPublic 0 and is refused on import.
        n_public: vk.gamma_abc_g1.len().saturating_sub(1),
        vk_alpha_1: g1_json(&vk.alpha_g1),
        vk_beta_2: g2_json(&vk.beta_g2),
        vk_gamma_2: g2_json(&vk.gamma_g2),
        vk_delta_2: g2_json(&vk.delta_g2),
        ic: vk.gamma_abc_g1.iter().map(g1_json).collect(),
    }
}

pub fn import_vk(j: &VerificationKeyJson) -> Result<VerifyingKey<Bn254>> {
    if j.protocol != "groth16"
        || j.curve != "bn128"
        || j.ic.len().checked_sub(1) != Some(j.n_public)
    {
        return Err(malformed(
            "verification key",
            "not a groth16/bn128 key with nPublic + 1 IC points",
        ));
    }
    Ok(VerifyingKey {
        alpha_g1: g1_parse("vk_alpha_1", &j.vk_alpha_1)?,
        beta_g2: g2_parse("vk_beta_2", &j.vk_beta_2)?,
        gamma_g2: g2_parse("vk_gamma_2", &j.vk_gamma_2)?,
        delta_g2: g2_parse("vk_delta_2", &j.vk_delta_2)?,
        gamma_abc_g1: j
            .ic
            .iter()
            .map(|p| g1_parse("IC", p))
            .collect::<Result<_>>()?,
    })
}

pub fn export_proof(proof: &Proof<Bn254>) -> ProofJson {
    ProofJson {
        pi_a: g1_json(&proof.a),
        pi_b: g2_json(&proof.b),
        pi_c: g1_json(&proof.c),
        protocol: "groth16".into(),
        curve: "bn128".into(),
    }
}

pub fn import_proof(j: &ProofJson) -> Result<Proof<Bn254>> {
    if j.protocol != "groth16" || j.curve != "bn128" {
        return Err(malformed("proof", "not a groth16/bn128 proof"));
    }
    Ok(Proof {
        a: g1_parse("pi_a", &j.pi_a)?,
        b: g2_parse("pi_b", &j.pi_b)?,
        c: g1_parse("pi_c", &j.pi_c)?,
    })
}

pub fn export_public(inputs: &[Fr]) -> Vec<String> {
    inputs.iter().map(ToString::to_string).collect()
}

pub fn import_public(j: &[String]) -> Result<Vec<Fr>> {
    j.iter().map(|s| decimal::<Fr>("public input", s)).collect()
}

/// Serde adapter: a field element as a decimal string.
pub mod fr_string {
    use super::*;
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &Fr, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&x.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Fr, D::Error> {
        let s = String::deserialize(d)?;
        decimal::<Fr>("field element", &s).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: field elements as decimal strings.
pub mod fr_vec {
    use super::*;
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &[Fr], s: S) -> std::result::Result<S::Ok, S::Error> {
        export_public(x).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Fr>, D::Error> {
        import_public(&Vec::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
