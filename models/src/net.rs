//! Training and evaluation with candle on the CPU.
//!
//! The network is rebuilt from a spec and a flat weight vector for every
//! call: federated rounds hand weights in and take weights out, so there is
//! no long-lived model object to keep in sync.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW, SGD};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::{Dataset, Layer, ModelError, ModelSpec};

/// Local optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Sgd { lr: f64 },
    Adam { lr: f64 },
}

/// FedProx's proximal term: `mu/2 * ||w - w_start||^2` keeps local models
/// near the global model they started from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proximal {
    pub mu: f64,
}

/// How an agent trains locally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    #[serde(default)]
    pub proximal: Option<Proximal>,
    #[serde(default)]
    pub seed: u64,
}

/// The result of local training.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    pub weights: Vec<f32>,
    pub samples: usize,
    pub steps: usize,
    /// Mean training loss over the last epoch.
    pub loss: f32,
}

/// Aggregate metrics on a data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub samples: usize,
}

fn check(spec: &ModelSpec, weights: &[f32], data: Option<&Dataset>) -> Result<(), ModelError> {
    let expected = spec.param_count()?;
    if weights.len() != expected {
        return Err(ModelError::WeightCount {
            expected,
            found: weights.len(),
        });
    }
    if weights.iter().any(|w| !w.is_finite()) {
        return Err(ModelError::NonFinite);
    }
    if let Some(d) = data {
        if d.is_empty() {
            return Err(ModelError::EmptyDataset);
        }
        if d.n_features != spec.input_features() {
            return Err(ModelError::FeatureCount {
                expected: spec.input_features(),
                found: d.n_features,
            });
        }
        let outputs = spec.outputs()?;
        if outputs < d.classes {
            return Err(ModelError::ClassCount {
                outputs,
                classes: d.classes,
            });
        }
    }
    Ok(())
}

fn params(spec: &ModelSpec, weights: &[f32]) -> Result<Vec<Tensor>, ModelError> {
    spec.params()?
        .iter()
        .map(|p| {
            Ok(Tensor::from_slice(
                &weights[p.offset..p.offset + p.len()],
                p.shape.as_slice(),
                &Device::Cpu,
            )?)
        })
        .collect()
}

/// Runs the network; `logits` stops before a final softmax.
fn forward(
    spec: &ModelSpec,
    params: &[Tensor],
    x: &Tensor,
    train: bool,
    logits: bool,
) -> Result<Tensor, ModelError> {
    let batch = x.dim(0)?;
    let mut shape = vec![batch];
    shape.extend_from_slice(&spec.input);
    let mut x = x.reshape(shape)?;
    let mut p = params.iter();
    let mut next = || p.next().ok_or(ModelError::NoLayers);
    for layer in &spec.layers {
        x = match *layer {
            Layer::Linear { .. } => {
                let (w, b) = (next()?, next()?);
                x.matmul(&w.t()?)?.broadcast_add(b)?
            }
            Layer::Conv2d { padding, .. } => {
                let (w, b) = (next()?, next()?);
                let c = b.dim(0)?;
                x.conv2d(w, padding, 1, 1, 1)?
                    .broadcast_add(&b.reshape((1, c, 1, 1))?)?
            }
            Layer::Relu => x.relu()?,
            Layer::MaxPool { size } => x.max_pool2d(size)?,
            Layer::Flatten => x.flatten_from(1)?,
            Layer::Dropout { p } if train && p > 0.0 => candle_nn::ops::dropout(&x, p)?,
            Layer::Dropout { .. } => x,
            Layer::Softmax if logits => x,
            Layer::Softmax => candle_nn::ops::softmax_last_dim(&x)?,
        };
    }
    Ok(x)
}

fn tensors(data: &Dataset) -> Result<(Tensor, Tensor), ModelError> {
    let x = Tensor::from_slice(&data.features, (data.len(), data.n_features), &Device::Cpu)?;
    let y = Tensor::from_slice(&data.labels, data.len(), &Device::Cpu)?;
    Ok((x, y))
}

/// Trains a copy of `weights` on `data` and returns the new weights.
pub fn train(
    spec: &ModelSpec,
    weights: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<TrainOutcome, ModelError> {
    check(spec, weights, Some(data))?;
    if cfg.batch_size == 0 {
        return Err(ModelError::BadHyperParameter("batch size must be positive"));
    }
    let lr = match cfg.optimizer {
        Optimizer::Sgd { lr } | Optimizer::Adam { lr } => lr,
    };
    if !(lr.is_finite() && lr > 0.0) {
        return Err(ModelError::BadHyperParameter(
            "learning rate must be positive",
        ));
    }
    let start = params(spec, weights)?;
    let vars: Vec<Var> = start
        .iter()
        .map(Var::from_tensor)
        .collect::<Result<_, _>>()?;
    enum Opt {
        Sgd(SGD),
        Adam(AdamW),
    }
    let mut opt = match cfg.optimizer {
        Optimizer::Sgd { lr } => Opt::Sgd(SGD::new(vars.clone(), lr)?),
        Optimizer::Adam { lr } => Opt::Adam(AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?),
    };
    let (x_all, y_all) = tensors(data)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..data.len() as u32).collect();
    let mut steps = 0;
    let mut last_loss = 0f32;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0f32;
        let mut batches = 0;
        for chunk in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &Device::Cpu)?;
            let x = x_all.index_select(&idx, 0)?;
            let y = y_all.index_select(&idx, 0)?;
            let live: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let logits = forward(spec, &live, &x, true, true)?;
            let mut loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            if let Some(Proximal { mu }) = cfg.proximal {
                let mut prox = Tensor::zeros((), DType::F32, &Device::Cpu)?;
                for (v, s) in vars.iter().zip(&start) {
                    prox = (prox + (v.as_tensor() - s)?.sqr()?.sum_all()?)?;
                }
                loss = (loss + (prox * (mu / 2.0))?)?;
            }
            match &mut opt {
                Opt::Sgd(o) => o.backward_step(&loss)?,
                Opt::Adam(o) => o.backward_step(&loss)?,
            }
            sum += loss.to_scalar::<f32>()?;
            batches += 1;
            steps += 1;
        }
        last_loss = sum / batches.max(1) as f32;
    }
    let mut out = Vec::with_capacity(weights.len());
    for v in &vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    if out.iter().any(|w| !w.is_finite()) {
        return Err(ModelError::NonFinite);
    }
    Ok(TrainOutcome {
        weights: out,
        samples: data.len(),
        steps,
        loss: last_loss,
    })
}

/// Accuracy, mean cross-entropy and the confusion matrix of `weights` on `data`.
pub fn evaluate(spec: &ModelSpec, weights: &[f32], data: &Dataset) -> Result<Metrics, ModelError> {
    check(spec, weights, Some(data))?;
    let p = params(spec, weights)?;
    let (x, y) = tensors(data)?;
    let logits = forward(spec, &p, &x, false, true)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?;
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let classes = spec.outputs()?.max(data.classes);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut correct = 0usize;
    for (&t, &p) in data.labels.iter().zip(&pred) {
        confusion[t as usize][p as usize] += 1;
        correct += usize::from(t == p);
    }
    Ok(Metrics {
        accuracy: correct as f64 / data.len() as f64,
        loss: f64::from(loss),
        confusion,
        samples: data.len(),
    })
}

/// The model's outputs (probabilities if it ends with a softmax) for
/// `rows` (row-major, `spec.input_features()` values a row).
pub fn predict(spec: &ModelSpec, weights: &[f32], rows: &[f32]) -> Result<Vec<f32>, ModelError> {
    check(spec, weights, None)?;
    let nf = spec.input_features();
    if rows.is_empty() || !rows.len().is_multiple_of(nf) {
        return Err(ModelError::FeatureCount {
            expected: nf,
            found: rows.len(),
        });
    }
    let p = params(spec, weights)?;
    let x = Tensor::from_slice(rows, (rows.len() / nf, nf), &Device::Cpu)?;
    Ok(forward(spec, &p, &x, false, false)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn digits() -> Dataset {
        Dataset::digits(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"))
            .unwrap()
    }

    #[test]
    fn mlp_learns_digits_centrally() {
        let (train_set, test_set) = digits().split(0.2, 7);
        let spec = ModelSpec::mlp(64, 32, 10);
        let w0 = spec.init_weights(1).unwrap();
        let before = evaluate(&spec, &w0, &test_set).unwrap();
        let cfg = TrainConfig {
            epochs: 10,
            batch_size: 32,
            optimizer: Optimizer::Adam { lr: 0.01 },
            proximal: None,
            seed: 3,
        };
        let out = train(&spec, &w0, &train_set, &cfg).unwrap();
        let after = evaluate(&spec, &out.weights, &test_set).unwrap();
        assert!(before.accuracy < 0.3, "{before:?}");
        assert!(after.accuracy > 0.94, "accuracy {}", after.accuracy);
        assert_eq!(
            after.confusion.iter().flatten().sum::<u64>(),
            test_set.len() as u64
        );
    }

    #[test]
    fn small_cnn_trains_with_sgd_and_proximal_term() {
        let (train_set, test_set) = digits().split(0.2, 7);
        let spec = ModelSpec::small_cnn(8, 10);
        let w0 = spec.init_weights(1).unwrap();
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 16,
            optimizer: Optimizer::Sgd { lr: 0.1 },
            proximal: Some(Proximal { mu: 0.01 }),
            seed: 3,
        };
        let out = train(&spec, &w0, &train_set, &cfg).unwrap();
        let after = evaluate(&spec, &out.weights, &test_set).unwrap();
        assert!(after.accuracy > 0.8, "accuracy {}", after.accuracy);
    }

    #[test]
    fn wrong_inputs_are_refused() {
        let spec = ModelSpec::mlp(64, 8, 10);
        let d = digits();
        assert!(matches!(
            train(
                &spec,
                &[0.0; 3],
                &d,
                &TrainConfig {
                    epochs: 1,
                    batch_size: 8,
                    optimizer: Optimizer::Sgd { lr: 0.1 },
                    proximal: None,
                    seed: 0
                }
            ),
            Err(ModelError::WeightCount { .. })
        ));
        let mut w = spec.init_weights(0).unwrap();
        w[5] = f32::NAN;
        assert!(matches!(
            evaluate(&spec, &w, &d),
            Err(ModelError::NonFinite)
        ));
        let other = ModelSpec::mlp(30, 8, 2);
        let w = other.init_weights(0).unwrap();
        assert!(matches!(
            evaluate(&other, &w, &d),
            Err(ModelError::FeatureCount { .. })
        ));
    }
}
