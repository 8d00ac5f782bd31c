//! `yilian-agent`: runs on a device owner's machine. It joins a node's
//! federated tasks over QUIC with the device's admitted certificate, trains
//! on local data that never leaves the machine, and runs exported models
//! locally. This library holds the agent's configuration and the
//! prediction helper; the protocol lives in `yilian-federated`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use yilian_federated::AgentPolicy;
use yilian_models::{Dataset, LabelColumn, OnnxModel};

/// An agent configuration file (TOML); command-line flags override it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub node: Option<SocketAddr>,
    pub identity: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub label_column: Option<String>,
    pub classes: Option<usize>,
    pub server_name: Option<String>,
    #[serde(default)]
    pub policy: Option<AgentPolicy>,
}

impl AgentFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(toml::from_str(&text)?)
    }
}

/// Reads a device's training data: a CSV with a header naming the label column.
pub fn load_data(
    path: &Path,
    label_column: &str,
    classes: Option<usize>,
) -> anyhow::Result<Dataset> {
    Dataset::from_csv_path(path, &LabelColumn::Name(label_column.to_owned()), classes)
        .with_context(|| format!("reading training data {}", path.display()))
}

/// Predictions of an ONNX model for the rows of a CSV.
pub struct Predictions {
    pub classes: Vec<usize>,
    pub probabilities: Vec<Vec<f32>>,
    /// Accuracy, when the CSV carried the label column.
    pub accuracy: Option<f64>,
}

/// Runs `model` with tract on `input`. The CSV holds the model's features
/// (header optional); with `label_column` given, that column is the true
/// label and accuracy is reported.
pub fn predict(
    model: &Path,
    input: &Path,
    label_column: Option<&str>,
) -> anyhow::Result<Predictions> {
    let model = OnnxModel::from_path(model)?;
    let (rows, labels) = match label_column {
        Some(label) => {
            let d = Dataset::from_csv_path(input, &LabelColumn::Name(label.to_owned()), None)?;
            (d.features, Some(d.labels))
        }
        None => {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("reading {}", input.display()))?;
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let values: Result<Vec<f32>, _> =
                    line.split(',').map(|f| f.trim().parse::<f32>()).collect();
                match values {
                    Ok(v) => rows.extend(v),
                    Err(_) if i == 0 => continue, // a header
                    Err(_) => anyhow::bail!("row {i} of {} is not numeric", input.display()),
                }
            }
            (rows, None)
        }
    };
    let out = model.run(&rows)?;
    let probabilities: Vec<Vec<f32>> = out.chunks(model.outputs()).map(<[f32]>::to_vec).collect();
    let classes = model.classify(&rows)?;
    let accuracy = labels.map(|l| {
        classes
            .iter()
            .zip(&l)
            .filter(|(p, t)| **p == **t as usize)
            .count() as f64
            / l.len().max(1) as f64
    });
    Ok(Predictions {
        classes,
        probabilities,
        accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yilian_models::{ModelSpec, Optimizer, TrainConfig};

    #[test]
    fn predict_runs_an_exported_model_on_csv_rows_like_candle() {
        let dir = tempfile::tempdir().unwrap();
        let digits =
            Dataset::digits(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"))
                .unwrap();
        let (train, test) = digits.split(0.2, 1);
        let spec = ModelSpec::mlp(64, 32, 10);
        let cfg = TrainConfig {
            epochs: 5,
            batch_size: 32,
            optimizer: Optimizer::Adam { lr: 0.01 },
            proximal: None,
            seed: 1,
        };
        let w = yilian_models::train(&spec, &spec.init_weights(1).unwrap(), &train, &cfg)
            .unwrap()
            .weights;
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, yilian_models::to_onnx(&spec, &w).unwrap()).unwrap();
        let rows = dir.path().join("rows.csv");
        test.write_csv(&rows, "y").unwrap();
        let p = predict(&model, &rows, Some("y")).unwrap();
        let candle = yilian_models::evaluate(&spec, &w, &test).unwrap().accuracy;
        assert_eq!(p.classes.len(), test.len());
        assert!(
            (p.accuracy.unwrap() - candle).abs() < 1e-9,
            "{:?} vs {candle}",
            p.accuracy
        );
        // Without labels: a header line is skipped, rows are features only.
        let bare = dir.path().join("bare.csv");
        let mut text = (0..64)
            .map(|i| format!("x{i}"))
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for i in 0..3 {
            text += &(test
                .row(i)
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
                + "\n");
        }
        std::fs::write(&bare, text).unwrap();
        let q = predict(&model, &bare, None).unwrap();
        assert_eq!(q.classes, p.classes[..3].to_vec());
        // Rows of the wrong width are refused.
        std::fs::write(&bare, "1,2,3\n").unwrap();
        assert!(predict(&model, &bare, None).is_err());
    }
}
