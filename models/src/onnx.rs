//! ONNX export (built directly as the protobuf `ModelProto` that tract-onnx
//! re-exports) and inference with tract.
//!
//! The exported graph always takes flat rows `[N, features]` named `input`
//! (a `Reshape` restores image shapes for convolutional models), so that
//! `yilian-agent predict` can feed CSV rows to any exported model. Dropout
//! is omitted: it is the identity at inference time.

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_proto::DataType,
    tensor_shape_proto::{Dimension, dimension::Value as DimValue},
    type_proto::{Tensor as TensorType, Value as TypeValue},
};
use tract_onnx::prelude::{
    DatumExt, Framework, InferenceModelExt, IntoRunnable, TVec, Tensor, tvec,
};

use crate::{Layer, ModelError, ModelSpec};

const OPSET: i64 = 13;
const IR_VERSION: i64 = 8;

fn attr_ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output.to_owned()],
        name,
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut dim = vec![Dimension {
        value: Some(DimValue::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(DimValue::DimValue(d)),
        ..Default::default()
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn as_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// Exports `spec` with `weights` as ONNX bytes (opset 13).
pub fn to_onnx(spec: &ModelSpec, weights: &[f32]) -> Result<Vec<u8>, ModelError> {
    let params = spec.params()?;
    let expected: usize = params.iter().map(|p| p.len()).sum();
    if weights.len() != expected {
        return Err(ModelError::WeightCount {
            expected,
            found: weights.len(),
        });
    }
    let shapes = spec.shapes()?;
    let mut nodes = Vec::new();
    let mut initializer: Vec<TensorProto> = params
        .iter()
        .map(|p| TensorProto {
            dims: as_i64(&p.shape),
            data_type: DataType::Float as i32,
            float_data: weights[p.offset..p.offset + p.len()].to_vec(),
            name: p.name.clone(),
            ..Default::default()
        })
        .collect();
    let mut current = "input".to_owned();
    if spec.input.len() > 1 {
        let mut target = vec![-1i64];
        target.extend(as_i64(&spec.input));
        initializer.push(TensorProto {
            dims: vec![target.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: target,
            name: "input_shape".into(),
            ..Default::default()
        });
        nodes.push(node(
            "Reshape",
            "reshape_input".into(),
            vec![current.clone(), "input_shape".into()],
            "input_reshaped",
            vec![],
        ));
        current = "input_reshaped".into();
    }
    let last = spec.layers.len() - 1;
    for (i, layer) in spec.layers.iter().enumerate() {
        let out = if i == last {
            "output".to_owned()
        } else {
            format!("t{i}")
        };
        let (w, b) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
        let n = match *layer {
            Layer::Linear { .. } => node(
                "Gemm",
                format!("linear_{i}"),
                vec![current.clone(), w, b],
                &out,
                vec![attr_int("transB", 1)],
            ),
            Layer::Conv2d {
                kernel, padding, ..
            } => node(
                "Conv",
                format!("conv_{i}"),
                vec![current.clone(), w, b],
                &out,
                vec![
                    attr_ints("kernel_shape", vec![kernel as i64; 2]),
                    attr_ints("pads", vec![padding as i64; 4]),
                    attr_ints("strides", vec![1, 1]),
                ],
            ),
            Layer::Relu => node(
                "Relu",
                format!("relu_{i}"),
                vec![current.clone()],
                &out,
                vec![],
            ),
            Layer::MaxPool { size } => node(
                "MaxPool",
                format!("maxpool_{i}"),
                vec![current.clone()],
                &out,
                vec![
                    attr_ints("kernel_shape", vec![size as i64; 2]),
                    attr_ints("strides", vec![size as i64; 2]),
                ],
            ),
            Layer::Flatten => node(
                "Flatten",
                format!("flatten_{i}"),
                vec![current.clone()],
                &out,
                vec![attr_int("axis", 1)],
            ),
            // Identity at inference; keep the graph's names uniform.
            Layer::Dropout { .. } => node(
                "Identity",
                format!("dropout_{i}"),
                vec![current.clone()],
                &out,
                vec![],
            ),
            Layer::Softmax => node(
                "Softmax",
                format!("softmax_{i}"),
                vec![current.clone()],
                &out,
                vec![attr_int("axis", -1)],
            ),
        };
        nodes.push(n);
        current = out;
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "yilian-models".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "yilian".into(),
            initializer,
            input: vec![value_info("input", &[spec.input_features() as i64])],
            output: vec![value_info("output", &as_i64(&shapes[last]))],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// An ONNX model loaded for inference with tract.
pub struct OnnxModel {
    bytes: Vec<u8>,
    features: usize,
    outputs: usize,
}

fn tract_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Onnx(e.to_string())
}

impl OnnxModel {
    /// Parses the model and checks that it takes flat rows `[N, features]`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ModelError> {
        let proto = ModelProto::decode(bytes.as_slice()).map_err(tract_err)?;
        let dims = |vi: Option<&ValueInfoProto>| -> Option<i64> {
            let TypeValue::TensorType(t) = vi?.r#type.as_ref()?.value.as_ref()?;
            match t.shape.as_ref()?.dim.get(1)?.value.as_ref()? {
                DimValue::DimValue(d) => Some(*d),
                DimValue::DimParam(_) => None,
            }
        };
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| ModelError::Onnx("no graph".into()))?;
        let features = dims(graph.input.first())
            .filter(|d| *d > 0)
            .ok_or_else(|| ModelError::Onnx("the model must take [N, features] rows".into()))?;
        let outputs = dims(graph.output.first())
            .filter(|d| *d > 0)
            .ok_or_else(|| ModelError::Onnx("the model must output [N, classes]".into()))?;
        let model = Self {
            bytes,
            features: features as usize,
            outputs: outputs as usize,
        };
        // Fail now, not at the first prediction, on a graph tract cannot run.
        model.run(&vec![0.0; model.features])?;
        Ok(model)
    }

    pub fn from_path(path: &std::path::Path) -> Result<Self, ModelError> {
        Self::from_bytes(std::fs::read(path).map_err(|e| ModelError::io(path, e))?)
    }

    pub fn features(&self) -> usize {
        self.features
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Runs the model on row-major `rows`; returns `rows * outputs` values.
    pub fn run(&self, rows: &[f32]) -> Result<Vec<f32>, ModelError> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.features) {
            return Err(ModelError::FeatureCount {
                expected: self.features,
                found: rows.len(),
            });
        }
        let n = rows.len() / self.features;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut self.bytes.as_slice())
            .map_err(tract_err)?
            .with_input_fact(0, <f32 as DatumExt>::fact([n, self.features]).into())
            .map_err(tract_err)?
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        let input = Tensor::from_shape(&[n, self.features], rows).map_err(tract_err)?;
        let out: TVec<_> = plan.run(tvec!(input.into())).map_err(tract_err)?;
        let view = out[0].to_plain_array_view::<f32>().map_err(tract_err)?;
        Ok(view.iter().copied().collect())
    }

    /// The most likely class of each row.
    pub fn classify(&self, rows: &[f32]) -> Result<Vec<usize>, ModelError> {
        let out = self.run(rows)?;
        Ok(out
            .chunks(self.outputs)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, Optimizer, TrainConfig, predict, train};
    use std::path::Path;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn tract_matches_candle_for_each_builtin() {
        let digits =
            Dataset::digits(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"))
                .unwrap();
        let rows = &digits.features[..20 * 64];
        for spec in [
            ModelSpec::logistic_regression(64, 10),
            ModelSpec::mlp(64, 32, 10),
            ModelSpec::small_cnn(8, 10),
        ] {
            let w0 = spec.init_weights(11).unwrap();
            // Trained weights, so the comparison is not between near-uniform outputs.
            let cfg = TrainConfig {
                epochs: 1,
                batch_size: 64,
                optimizer: Optimizer::Adam { lr: 0.01 },
                proximal: None,
                seed: 1,
            };
            let w = train(
                &spec,
                &w0,
                &digits.subset(&(0..400).collect::<Vec<_>>()),
                &cfg,
            )
            .unwrap()
            .weights;
            let onnx = OnnxModel::from_bytes(to_onnx(&spec, &w).unwrap()).unwrap();
            assert_eq!((onnx.features(), onnx.outputs()), (64, 10));
            close(&onnx.run(rows).unwrap(), &predict(&spec, &w, rows).unwrap());
        }
    }

    #[test]
    fn garbage_and_wrong_rows_are_refused() {
        assert!(OnnxModel::from_bytes(b"not onnx".to_vec()).is_err());
        let spec = ModelSpec::logistic_regression(4, 2);
        let m =
            OnnxModel::from_bytes(to_onnx(&spec, &spec.init_weights(0).unwrap()).unwrap()).unwrap();
        assert!(matches!(
            m.run(&[1.0; 5]),
            Err(ModelError::FeatureCount { .. })
        ));
    }
}
