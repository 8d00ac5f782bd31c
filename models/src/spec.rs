//! The declarative model spec: an input shape and a list of layers.
//!
//! The spec is the contract between the engineer who submits a task, the
//! coordinator that aggregates flat weight vectors and the agents that train:
//! [`ModelSpec::params`] fixes the order and shape of every parameter, so a
//! flat vector means the same thing everywhere.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The spec format version this build reads and writes.
pub const SPEC_VERSION: u32 = 1;

/// The most weights a model may have: 2^26 f32 values, 256 MiB, which is
/// what one model transfer may carry. Engineers submit specs, so a spec
/// must not be able to make a node allocate without bound.
pub const MAX_PARAMS: usize = 1 << 26;
/// The most values any layer may produce for one sample.
pub const MAX_ACTIVATIONS: usize = 1 << 24;
/// The most multiply-adds a forward pass may take for one sample (2^30,
/// about a quarter of ResNet-50's).
pub const MAX_MULTIPLY_ADDS: usize = 1 << 30;
/// The most inputs one convolution output may read (channels x kernel x
/// kernel): the convolution's working tile grows with it.
pub const MAX_KERNEL_VOLUME: usize = 1 << 16;

/// The number of elements of `shape`, if it fits under `limit`.
fn elements(shape: &[usize], limit: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= limit)
}

/// One layer. Shapes exclude the batch dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Fully connected; its input must be one-dimensional (flatten first).
    Linear {
        out: usize,
    },
    /// 2-D convolution, stride 1, square kernel, zero padding on each side.
    Conv2d {
        out_channels: usize,
        kernel: usize,
        #[serde(default)]
        padding: usize,
    },
    Relu,
    /// Square max pooling whose stride equals its size (remainders dropped).
    MaxPool {
        size: usize,
    },
    Flatten,
    /// Active only while training; exported models omit it.
    Dropout {
        p: f32,
    },
    /// Turns the last layer's logits into class probabilities.
    Softmax,
}

impl Layer {
    fn kind(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "linear",
            Layer::Conv2d { .. } => "conv2d",
            Layer::Relu => "relu",
            Layer::MaxPool { .. } => "max_pool",
            Layer::Flatten => "flatten",
            Layer::Dropout { .. } => "dropout",
            Layer::Softmax => "softmax",
        }
    }
}

/// A parameter's place in the flat weight vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamShape {
    /// `layers.{index}.weight` or `layers.{index}.bias` (safetensors names).
    pub name: String,
    pub layer: usize,
    pub shape: Vec<usize>,
    /// Offset of the first value in the flat vector.
    pub offset: usize,
    /// Inputs feeding each output unit, for initialisation.
    pub fan_in: usize,
}

impl ParamShape {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A model: an input shape (without batch) and its layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    pub input: Vec<usize>,
    pub layers: Vec<Layer>,
}

fn default_version() -> u32 {
    SPEC_VERSION
}

impl ModelSpec {
    /// Multinomial logistic regression: one linear layer and a softmax.
    pub fn logistic_regression(features: usize, classes: usize) -> Self {
        Self {
            version: SPEC_VERSION,
            input: vec![features],
            layers: vec![Layer::Linear { out: classes }, Layer::Softmax],
        }
    }

    /// A one-hidden-layer perceptron.
    pub fn mlp(features: usize, hidden: usize, classes: usize) -> Self {
        Self {
            version: SPEC_VERSION,
            input: vec![features],
            layers: vec![
                Layer::Linear { out: hidden },
                Layer::Relu,
                Layer::Linear { out: classes },
                Layer::Softmax,
            ],
        }
    }

    /// A small CNN for single-channel square images (8x8 digits and alike).
    pub fn small_cnn(side: usize, classes: usize) -> Self {
        Self {
            version: SPEC_VERSION,
            input: vec![1, side, side],
            layers: vec![
                Layer::Conv2d {
                    out_channels: 8,
                    kernel: 3,
                    padding: 1,
                },
                Layer::Relu,
                Layer::MaxPool { size: 2 },
                Layer::Flatten,
                Layer::Dropout { p: 0.1 },
                Layer::Linear { out: 32 },
                Layer::Relu,
                Layer::Linear { out: classes },
                Layer::Softmax,
            ],
        }
    }

    /// Number of input features (the product of the input shape).
    pub fn input_features(&self) -> usize {
        // Saturating: a spec too large to count fails `shapes` anyway.
        elements(&self.input, usize::MAX).unwrap_or(usize::MAX)
    }

    /// Checks every layer against the shape it receives and returns the
    /// output shape of each layer.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, ModelError> {
        if self.version != SPEC_VERSION {
            return Err(ModelError::UnsupportedSpecVersion {
                found: self.version,
                supported: SPEC_VERSION,
            });
        }
        if self.layers.is_empty() {
            return Err(ModelError::NoLayers);
        }
        let mut shape = self.input.clone();
        if shape.is_empty() || shape.contains(&0) {
            return Err(ModelError::BadLayer {
                index: 0,
                layer: "input",
                input: shape,
                reason: "the input shape needs at least one non-zero dimension",
            });
        }
        if elements(&shape, MAX_ACTIVATIONS).is_none() {
            return Err(ModelError::TooLarge {
                what: "the input's values per sample",
                limit: MAX_ACTIVATIONS,
            });
        }
        let mut out = Vec::with_capacity(self.layers.len());
        let mut work = 0usize;
        let too_much_work = || ModelError::TooLarge {
            what: "the multiply-adds per sample",
            limit: MAX_MULTIPLY_ADDS,
        };
        for (index, layer) in self.layers.iter().enumerate() {
            let bad = |reason: &'static str| ModelError::BadLayer {
                index,
                layer: layer.kind(),
                input: shape.clone(),
                reason,
            };
            shape = match *layer {
                Layer::Linear { out } => {
                    if shape.len() != 1 {
                        return Err(bad("linear takes a flat input; add a flatten layer"));
                    }
                    if out == 0 {
                        return Err(bad("linear needs at least one output"));
                    }
                    work = shape[0]
                        .checked_mul(out)
                        .and_then(|w| w.checked_add(work))
                        .filter(|&w| w <= MAX_MULTIPLY_ADDS)
                        .ok_or_else(too_much_work)?;
                    vec![out]
                }
                Layer::Conv2d {
                    out_channels,
                    kernel,
                    padding,
                } => {
                    let [c, h, w] = shape[..] else {
                        return Err(bad("conv2d takes a [channels, height, width] input"));
                    };
                    if out_channels == 0 || kernel == 0 {
                        return Err(bad("conv2d needs channels and a kernel"));
                    }
                    if padding >= kernel {
                        return Err(bad("padding must be smaller than the kernel"));
                    }
                    let volume = elements(&[c, kernel, kernel], MAX_KERNEL_VOLUME).ok_or(
                        ModelError::TooLarge {
                            what: "a convolution's channels x kernel x kernel",
                            limit: MAX_KERNEL_VOLUME,
                        },
                    )?;
                    let padded = |side: usize| {
                        padding
                            .checked_mul(2)
                            .and_then(|p| p.checked_add(side))
                            .filter(|&s| s <= MAX_ACTIVATIONS)
                    };
                    let (Some(ph), Some(pw)) = (padded(h), padded(w)) else {
                        return Err(bad("padding too large"));
                    };
                    if ph < kernel || pw < kernel {
                        return Err(bad("kernel larger than the padded input"));
                    }
                    let next = vec![out_channels, ph - kernel + 1, pw - kernel + 1];
                    work = elements(&next, MAX_ACTIVATIONS)
                        .and_then(|n| n.checked_mul(volume))
                        .and_then(|w| w.checked_add(work))
                        .filter(|&w| w <= MAX_MULTIPLY_ADDS)
                        .ok_or_else(too_much_work)?;
                    next
                }
                Layer::MaxPool { size } => {
                    let [c, h, w] = shape[..] else {
                        return Err(bad("max_pool takes a [channels, height, width] input"));
                    };
                    if size == 0 || h < size || w < size {
                        return Err(bad("pool size must be between 1 and the input side"));
                    }
                    vec![c, h / size, w / size]
                }
                Layer::Flatten => vec![elements(&shape, usize::MAX).unwrap_or(usize::MAX)],
                Layer::Relu => shape.clone(),
                Layer::Dropout { p } => {
                    if !(0.0..1.0).contains(&p) {
                        return Err(bad("dropout probability must be in [0, 1)"));
                    }
                    shape.clone()
                }
                Layer::Softmax => {
                    if shape.len() != 1 {
                        return Err(bad("softmax takes a flat input"));
                    }
                    if index + 1 != self.layers.len() {
                        return Err(bad("softmax must be the last layer"));
                    }
                    shape.clone()
                }
            };
            if elements(&shape, MAX_ACTIVATIONS).is_none() {
                return Err(ModelError::TooLarge {
                    what: "a layer's values per sample",
                    limit: MAX_ACTIVATIONS,
                });
            }
            out.push(shape.clone());
        }
        if out.last().is_some_and(|s| s.len() != 1) {
            return Err(ModelError::BadLayer {
                index: self.layers.len() - 1,
                layer: self.layers[self.layers.len() - 1].kind(),
                input: shape,
                reason: "the model must end with a flat output (one value per class)",
            });
        }
        Ok(out)
    }

    /// Number of outputs (classes).
    pub fn outputs(&self) -> Result<usize, ModelError> {
        Ok(self.shapes()?.last().map_or(0, |s| s[0]))
    }

    /// Every parameter, in flat-vector order.
    pub fn params(&self) -> Result<Vec<ParamShape>, ModelError> {
        let shapes = self.shapes()?;
        let mut params = Vec::new();
        let mut offset = 0usize;
        let too_large = || ModelError::TooLarge {
            what: "the number of weights",
            limit: MAX_PARAMS,
        };
        let mut push = |name: String, layer: usize, shape: Vec<usize>, fan_in: usize| {
            let total = elements(&shape, MAX_PARAMS)
                .and_then(|len| offset.checked_add(len))
                .filter(|&t| t <= MAX_PARAMS);
            params.push(ParamShape {
                name,
                layer,
                shape,
                offset,
                fan_in,
            });
            offset = total.ok_or(())?;
            Ok::<(), ()>(())
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let input = if i == 0 { &self.input } else { &shapes[i - 1] };
            match *layer {
                Layer::Linear { out } => {
                    push(
                        format!("layers.{i}.weight"),
                        i,
                        vec![out, input[0]],
                        input[0],
                    )
                    .and_then(|()| push(format!("layers.{i}.bias"), i, vec![out], input[0]))
                    .map_err(|()| too_large())?;
                }
                Layer::Conv2d {
                    out_channels,
                    kernel,
                    ..
                } => {
                    let fan_in =
                        elements(&[input[0], kernel, kernel], MAX_PARAMS).ok_or_else(too_large)?;
                    push(
                        format!("layers.{i}.weight"),
                        i,
                        vec![out_channels, input[0], kernel, kernel],
                        fan_in,
                    )
                    .and_then(|()| push(format!("layers.{i}.bias"), i, vec![out_channels], fan_in))
                    .map_err(|()| too_large())?;
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// Length of the flat weight vector.
    pub fn param_count(&self) -> Result<usize, ModelError> {
        Ok(self.params()?.iter().map(ParamShape::len).sum())
    }

    /// Fresh weights, uniform in +-1/sqrt(fan_in) (PyTorch's default), from a
    /// seed so that every party can derive the same starting model.
    pub fn init_weights(&self, seed: u64) -> Result<Vec<f32>, ModelError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = Vec::with_capacity(self.param_count()?);
        for p in self.params()? {
            let bound = 1.0 / (p.fan_in.max(1) as f32).sqrt();
            w.extend((0..p.len()).map(|_| rng.random_range(-bound..bound)));
        }
        Ok(w)
    }

    /// Whether the last layer is a softmax (outputs are probabilities).
    pub fn ends_with_softmax(&self) -> bool {
        matches!(self.layers.last(), Some(Layer::Softmax))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_or_overflowing_specs_are_refused_by_name() {
        let linear = |input: Vec<usize>, out: usize| ModelSpec {
            version: SPEC_VERSION,
            input,
            layers: vec![Layer::Linear { out }],
        };
        // 2^14 inputs to 2^13 outputs: 2^27 weights.
        let e = linear(vec![1 << 14], 1 << 13).param_count().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the model is too large: the number of weights would exceed {MAX_PARAMS}; make the layers smaller"
            )
        );
        // Products that overflow usize are refused, not wrapped or panicked on.
        let e = linear(vec![usize::MAX, 2], 1).shapes().unwrap_err();
        assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
        let e = linear(vec![usize::MAX / 2 + 1], usize::MAX)
            .param_count()
            .unwrap_err();
        assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
        // 2^20 inputs to 2^20 outputs: 2^40 multiply-adds a sample.
        let e = linear(vec![1 << 20], 1 << 20).shapes().unwrap_err();
        assert!(
            e.to_string().contains("the multiply-adds per sample"),
            "{e}"
        );
        let conv = |input: Vec<usize>, out_channels, kernel, padding| ModelSpec {
            version: SPEC_VERSION,
            input,
            layers: vec![
                Layer::Conv2d {
                    out_channels,
                    kernel,
                    padding,
                },
                Layer::Flatten,
                Layer::Linear { out: 2 },
            ],
        };
        assert!(matches!(
            conv(vec![1, 8, 8], 1, 3, usize::MAX / 2).shapes(),
            Err(ModelError::BadLayer {
                reason: "padding must be smaller than the kernel",
                ..
            })
        ));
        // Few weights and outputs, but a huge kernel: bounded by its volume.
        let heavy = conv(vec![1, 5, 6], 1, 2000, 1999);
        assert!(matches!(heavy.shapes(), Err(ModelError::TooLarge { .. })));
        let wide = conv(vec![1, 8, 8], 1 << 20, 3, 1);
        assert!(matches!(wide.shapes(), Err(ModelError::TooLarge { .. })));
        assert_eq!(wide.input_features(), 64);
        assert_eq!(linear(vec![usize::MAX, 2], 1).input_features(), usize::MAX);
    }

    #[test]
    fn builtins_have_expected_parameter_counts() {
        assert_eq!(
            ModelSpec::logistic_regression(30, 2).param_count().unwrap(),
            62
        );
        assert_eq!(
            ModelSpec::mlp(64, 32, 10).param_count().unwrap(),
            64 * 32 + 32 + 32 * 10 + 10
        );
        // conv 8x1x3x3+8, then 8x4x4=128 -> 32 -> 10
        assert_eq!(
            ModelSpec::small_cnn(8, 10).param_count().unwrap(),
            72 + 8 + 128 * 32 + 32 + 320 + 10
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_layer_named() {
        let spec = ModelSpec {
            version: SPEC_VERSION,
            input: vec![1, 8, 8],
            layers: vec![Layer::Linear { out: 3 }],
        };
        assert!(matches!(
            spec.shapes(),
            Err(ModelError::BadLayer {
                index: 0,
                layer: "linear",
                ..
            })
        ));
        let spec = ModelSpec {
            version: 9,
            ..ModelSpec::mlp(4, 4, 2)
        };
        assert!(matches!(
            spec.shapes(),
            Err(ModelError::UnsupportedSpecVersion { found: 9, .. })
        ));
        let mut spec = ModelSpec::mlp(4, 4, 2);
        spec.layers.insert(0, Layer::Softmax);
        assert!(spec.shapes().is_err());
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = ModelSpec::small_cnn(8, 10);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
    }
}
