//! Weights in and out as safetensors, one tensor per parameter named as in
//! [`crate::ModelSpec::params`], with the spec itself in the metadata so a
//! file is self-describing.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::{ModelError, ModelSpec};

const SPEC_KEY: &str = "yilian.model_spec";

/// Serialises `weights` for `spec` to safetensors bytes.
pub fn to_safetensors_bytes(spec: &ModelSpec, weights: &[f32]) -> Result<Vec<u8>, ModelError> {
    let params = spec.params()?;
    let expected: usize = params.iter().map(|p| p.len()).sum();
    if weights.len() != expected {
        return Err(ModelError::WeightCount {
            expected,
            found: weights.len(),
        });
    }
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|p| {
            weights[p.offset..p.offset + p.len()]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect()
        })
        .collect();
    let views = params
        .iter()
        .zip(&bytes)
        .map(|(p, b)| {
            Ok((
                p.name.clone(),
                TensorView::new(Dtype::F32, p.shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let meta = HashMap::from([(SPEC_KEY.to_owned(), serde_json::to_string(spec)?)]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Reads weights back. With `spec` given, the file must match it; without,
/// the spec comes from the file's metadata.
pub fn from_safetensors_bytes(
    bytes: &[u8],
    spec: Option<&ModelSpec>,
) -> Result<(ModelSpec, Vec<f32>), ModelError> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let spec = match spec {
        Some(s) => s.clone(),
        None => {
            let json = meta
                .metadata()
                .as_ref()
                .and_then(|m| m.get(SPEC_KEY))
                .ok_or_else(|| ModelError::MissingTensor {
                    name: SPEC_KEY.to_owned(),
                })?;
            serde_json::from_str(json)?
        }
    };
    let st = SafeTensors::deserialize(bytes)?;
    let mut out = Vec::with_capacity(spec.param_count()?);
    for p in spec.params()? {
        let view = st.tensor(&p.name).map_err(|_| ModelError::MissingTensor {
            name: p.name.clone(),
        })?;
        if view.dtype() != Dtype::F32 || view.shape() != p.shape.as_slice() {
            return Err(ModelError::MissingTensor {
                name: p.name.clone(),
            });
        }
        out.extend(
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    if out.iter().any(|w| !w.is_finite()) {
        return Err(ModelError::NonFinite);
    }
    Ok((spec, out))
}

pub fn save_safetensors(path: &Path, spec: &ModelSpec, weights: &[f32]) -> Result<(), ModelError> {
    std::fs::write(path, to_safetensors_bytes(spec, weights)?).map_err(|e| ModelError::io(path, e))
}

pub fn load_safetensors(
    path: &Path,
    spec: Option<&ModelSpec>,
) -> Result<(ModelSpec, Vec<f32>), ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    from_safetensors_bytes(&bytes, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ModelSpec::small_cnn(8, 10);
        let w = spec.init_weights(5).unwrap();
        let path = dir.path().join("m.safetensors");
        save_safetensors(&path, &spec, &w).unwrap();
        let (spec2, w2) = load_safetensors(&path, None).unwrap();
        assert_eq!((spec2, w2), (spec.clone(), w));
        let other = ModelSpec::mlp(64, 16, 10);
        assert!(matches!(
            load_safetensors(&path, Some(&other)),
            Err(ModelError::MissingTensor { .. })
        ));
        assert!(from_safetensors_bytes(b"garbage", None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = from_safetensors_bytes(&bytes, None);
        }
    }
}
