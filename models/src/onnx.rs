//! ONNX export (built directly as the protobuf `ModelProto` that tract-onnx
//! re-exports) and inference with tract.
//!
//! The exported graph always takes flat rows `[N, features]` named `input`
//! (a `Reshape` restores image shapes for convolutional models), so that
//! `yilian-agent predict` can feed CSV rows to any exported model. Dropout
//! is omitted: it is the identity at inference time.
//!
//! [`OnnxModel::evaluate_counts`] is what a device computes for federated
//! evaluation: counts only (a confusion matrix and a summed loss), which add
//! up across devices to exactly the counts of the union of their data.

use prost::Message;
use serde::{Deserialize, Serialize};
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

use crate::{Dataset, Layer, ModelError, ModelSpec};

/// Probabilities are clamped to at least this before taking the log, so
/// one confidently wrong example costs at most [`MAX_SAMPLE_LOSS`] rather
/// than infinity, and a report's summed loss has a checkable bound.
pub const MIN_PROBABILITY: f64 = 1e-7;
/// `-ln(MIN_PROBABILITY)`: the largest cross-entropy one example can add.
pub const MAX_SAMPLE_LOSS: f64 = 16.118_095_650_958_32;
/// Rows whose outputs sum this far from 1 are not probabilities.
const PROBABILITY_TOLERANCE: f64 = 1e-3;
/// Rows per tract run when evaluating: bounds activation memory on large
/// local data sets while the plan is built only once per batch size.
const EVAL_BATCH: usize = 1024;

/// What a classifier's output row holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A probability distribution over the classes (the model ends with a
    /// softmax, as every model exported here does). Rows that are not one
    /// (negative values, or a sum more than 1e-3 away from 1) are refused
    /// rather than silently re-normalised.
    #[default]
    Probabilities,
    /// Unnormalised scores; the softmax is applied (in `f64`) before the loss.
    Logits,
}

/// Aggregate counts of a classifier on a data set: nothing per example.
///
/// Counts from disjoint data sets add up (element-wise) to the counts on
/// their union; the summed loss adds up too, up to floating-point rounding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    pub samples: u64,
    /// Summed cross-entropy `-ln(max(p_true, MIN_PROBABILITY))`.
    pub loss_sum: f64,
    /// `confusion[true][predicted]`, square, one row per model output.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalCounts {
    /// All-zero counts for a model with `classes` outputs.
    pub fn zero(classes: usize) -> Self {
        Self {
            samples: 0,
            loss_sum: 0.0,
            confusion: vec![vec![0; classes]; classes],
        }
    }

    /// Adds `other` (of the same shape) to these counts.
    pub fn add(&mut self, other: &EvalCounts) {
        self.samples += other.samples;
        self.loss_sum += other.loss_sum;
        for (row, o) in self.confusion.iter_mut().zip(&other.confusion) {
            for (c, x) in row.iter_mut().zip(o) {
                *c += x;
            }
        }
    }

    /// Correctly classified examples (the trace).
    pub fn correct(&self) -> u64 {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, r)| r.get(i).copied().unwrap_or(0))
            .sum()
    }

    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.samples.max(1) as f64
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }
}

/// Index of the largest value; ties go to the last one, as in `classify`.
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Cross-entropy of one output row against its true class.
fn sample_loss(row: &[f32], truth: usize, kind: OutputKind) -> Option<f64> {
    let p_true = match kind {
        OutputKind::Probabilities => {
            let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
            let valid = row.iter().all(|p| p.is_finite() && *p >= -1e-6)
                && (sum - 1.0).abs() <= PROBABILITY_TOLERANCE;
            if !valid {
                return None;
            }
            f64::from(row[truth])
        }
        OutputKind::Logits => {
            if !row.iter().all(|z| z.is_finite()) {
                return None;
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse: f64 = row
                .iter()
                .map(|&z| f64::from(z - m).exp())
                .sum::<f64>()
                .ln();
            (f64::from(row[truth] - m) - lse).exp()
        }
    };
    Some(-p_true.max(MIN_PROBABILITY).ln())
}

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
    params: u64,
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
        // Every initializer counts: that is what a device must hold in memory.
        let params = graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
            .sum();
        let model = Self {
            bytes,
            features: features as usize,
            outputs: outputs as usize,
            params,
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

    /// Values held in the graph's initializers (weights, biases, constants).
    pub fn param_count(&self) -> u64 {
        self.params
    }

    /// The model's serialized size.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The ONNX file as it was loaded.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Runs the model on row-major `rows`; returns `rows * outputs` values.
    pub fn run(&self, rows: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        self.run_batches(rows, usize::MAX, |o| {
            out.extend_from_slice(o);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs `rows` through the model `batch` rows at a time, handing each
    /// batch's outputs to `each`; a plan is optimised once per batch size.
    fn run_batches(
        &self,
        rows: &[f32],
        batch: usize,
        mut each: impl FnMut(&[f32]) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.features) {
            return Err(ModelError::FeatureCount {
                expected: self.features,
                found: rows.len(),
            });
        }
        let build = |n: usize| {
            tract_onnx::onnx()
                .model_for_read(&mut self.bytes.as_slice())
                .map_err(tract_err)?
                .with_input_fact(0, <f32 as DatumExt>::fact([n, self.features]).into())
                .map_err(tract_err)?
                .into_optimized()
                .map_err(tract_err)?
                .into_runnable()
                .map_err(tract_err)
        };
        let n = rows.len() / self.features;
        let batch = batch.clamp(1, n);
        let full = build(batch)?;
        let mut rest = None;
        for chunk in rows.chunks(batch * self.features) {
            let m = chunk.len() / self.features;
            let plan = if m == batch {
                &full
            } else {
                &*rest.insert(build(m)?)
            };
            let input = Tensor::from_shape(&[m, self.features], chunk).map_err(tract_err)?;
            let out: TVec<_> = plan.run(tvec!(input.into())).map_err(tract_err)?;
            let view = out[0].to_plain_array_view::<f32>().map_err(tract_err)?;
            if view.len() != m * self.outputs {
                return Err(ModelError::Onnx(format!(
                    "the model produced {} values for {m} rows of {} outputs",
                    view.len(),
                    self.outputs
                )));
            }
            match view.as_slice() {
                Some(s) => each(s)?,
                None => each(&view.iter().copied().collect::<Vec<_>>())?,
            }
        }
        Ok(())
    }

    /// Confusion counts and summed cross-entropy of the model on `data`,
    /// reading its outputs as `kind` says. Only counts come out.
    pub fn evaluate_counts(
        &self,
        data: &Dataset,
        kind: OutputKind,
    ) -> Result<EvalCounts, ModelError> {
        if data.n_features != self.features {
            return Err(ModelError::FeatureCount {
                expected: self.features,
                found: data.n_features,
            });
        }
        if data.classes > self.outputs {
            return Err(ModelError::ClassCount {
                outputs: self.outputs,
                classes: data.classes,
            });
        }
        if data.is_empty() {
            return Err(ModelError::EmptyDataset);
        }
        let mut counts = EvalCounts::zero(self.outputs);
        let mut labels = data.labels.iter();
        let mut row_index = 0usize;
        self.run_batches(&data.features, EVAL_BATCH, |out| {
            for (row, &truth) in out.chunks(self.outputs).zip(labels.by_ref()) {
                let truth = truth as usize;
                let loss = sample_loss(row, truth, kind)
                    .ok_or(ModelError::NotProbabilities { row: row_index })?;
                counts.confusion[truth][argmax(row)] += 1;
                counts.loss_sum += loss;
                counts.samples += 1;
                row_index += 1;
            }
            Ok(())
        })?;
        Ok(counts)
    }

    /// The most likely class of each row.
    pub fn classify(&self, rows: &[f32]) -> Result<Vec<usize>, ModelError> {
        let out = self.run(rows)?;
        Ok(out.chunks(self.outputs).map(argmax).collect())
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
    fn evaluation_counts_match_candle_and_add_up_over_shards() {
        let digits =
            Dataset::digits(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"))
                .unwrap();
        let (train_set, test_set) = digits.split(0.3, 5);
        let spec = ModelSpec::mlp(64, 32, 10);
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 32,
            optimizer: Optimizer::Adam { lr: 0.01 },
            proximal: None,
            seed: 2,
        };
        let w = train(&spec, &spec.init_weights(3).unwrap(), &train_set, &cfg)
            .unwrap()
            .weights;
        let onnx = OnnxModel::from_bytes(to_onnx(&spec, &w).unwrap()).unwrap();
        assert_eq!(onnx.param_count(), spec.param_count().unwrap() as u64);
        let whole = onnx
            .evaluate_counts(&test_set, OutputKind::Probabilities)
            .unwrap();
        let candle = crate::evaluate(&spec, &w, &test_set).unwrap();
        assert_eq!(whole.samples, test_set.len() as u64);
        assert_eq!(whole.confusion, candle.confusion);
        assert!((whole.mean_loss() - candle.loss).abs() < 1e-4);
        assert!((whole.accuracy() - candle.accuracy).abs() < 1e-12);
        let mut batched = Vec::new();
        onnx.run_batches(&test_set.features, 100, |o| {
            batched.extend_from_slice(o);
            Ok(())
        })
        .unwrap();
        close(&batched, &onnx.run(&test_set.features).unwrap());
        // Counts of disjoint shards add up to the counts of their union,
        // whatever batch boundaries tract ran on.
        let mut sum = EvalCounts::zero(10);
        for shard in test_set.partition_iid(3, 1) {
            sum.add(
                &onnx
                    .evaluate_counts(&shard, OutputKind::Probabilities)
                    .unwrap(),
            );
        }
        assert_eq!(
            (sum.samples, &sum.confusion),
            (whole.samples, &whole.confusion)
        );
        // The loss only nearly: tract's kernels tile batches of different
        // sizes differently, so the f32 probabilities differ in the last bits.
        let drift = (sum.loss_sum - whole.loss_sum).abs() / whole.loss_sum;
        assert!(drift < 1e-5, "relative loss drift {drift:e}");

        // The same network without its softmax, declared as logits, has the same loss;
        // declared as probabilities, it is refused rather than mis-scored.
        let mut logits_spec = spec.clone();
        logits_spec.layers.pop();
        let raw = OnnxModel::from_bytes(to_onnx(&logits_spec, &w).unwrap()).unwrap();
        let from_logits = raw.evaluate_counts(&test_set, OutputKind::Logits).unwrap();
        assert_eq!(from_logits.confusion, whole.confusion);
        assert!((from_logits.loss_sum - whole.loss_sum).abs() < 1e-3 * whole.loss_sum);
        assert!(matches!(
            raw.evaluate_counts(&test_set, OutputKind::Probabilities),
            Err(ModelError::NotProbabilities { .. })
        ));
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
