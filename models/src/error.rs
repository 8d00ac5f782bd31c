use std::path::PathBuf;

/// Everything that can go wrong with data, specs, weights and exported models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),
    #[error("row {row}: {reason}")]
    BadRow { row: usize, reason: String },
    #[error("label column `{0}` not found in the CSV header")]
    NoLabelColumn(String),
    #[error("label {label} on row {row} is outside 0..{classes}")]
    LabelOutOfRange {
        row: usize,
        label: i64,
        classes: usize,
    },
    #[error("data set is empty")]
    EmptyDataset,
    #[error("model spec version {found} is not supported (this build reads version {supported})")]
    UnsupportedSpecVersion { found: u32, supported: u32 },
    #[error("layer {index} ({layer}) cannot take an input of shape {input:?}: {reason}")]
    BadLayer {
        index: usize,
        layer: &'static str,
        input: Vec<usize>,
        reason: &'static str,
    },
    #[error("model spec has no layers")]
    NoLayers,
    #[error("the model is too large: {what} would exceed {limit}; make the layers smaller")]
    TooLarge { what: &'static str, limit: usize },
    #[error("expected {expected} weights for this model, got {found}")]
    WeightCount { expected: usize, found: usize },
    #[error("data has {found} features but the model takes {expected}")]
    FeatureCount { expected: usize, found: usize },
    #[error("model outputs {outputs} values but the data has {classes} classes")]
    ClassCount { outputs: usize, classes: usize },
    #[error("weights contain a non-finite value")]
    NonFinite,
    #[error("training hyper-parameter out of range: {0}")]
    BadHyperParameter(&'static str),
    #[error("tensor `{name}` missing or of the wrong shape in the safetensors file")]
    MissingTensor { name: String },
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    #[error("spec JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(
        "output row {row} is not a probability distribution (declare the model's output as logits?)"
    )]
    NotProbabilities { row: usize },
    #[error("ONNX (tract): {0}")]
    Onnx(String),
}

impl ModelError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
