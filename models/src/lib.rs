//! Models for Yilian's federated learning: what a model is (a declarative,
//! versioned layer list), how it trains on a device's CPU (candle), how its
//! weights travel (one flat `f32` vector, in the spec's parameter order) and
//! how it leaves the network (safetensors for weights, ONNX for inference
//! anywhere, run here with tract).
//!
//! The flat-vector convention is what lets the federated layer aggregate,
//! validate and score updates without knowing anything about layers.

mod data;
mod error;
mod net;
mod onnx;
mod spec;
mod weights;

pub use data::{Dataset, LabelColumn, Standardizer};
pub use error::ModelError;
pub use net::{Metrics, Optimizer, Proximal, TrainConfig, TrainOutcome, evaluate, predict, train};
pub use onnx::{EvalCounts, MAX_SAMPLE_LOSS, MIN_PROBABILITY, OnnxModel, OutputKind, to_onnx};
pub use spec::{Layer, ModelSpec, ParamShape, SPEC_VERSION};
pub use weights::{
    from_safetensors_bytes, load_safetensors, save_safetensors, to_safetensors_bytes,
};
