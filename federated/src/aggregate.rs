//! Combining agents' models: validation of each update, robust rules
//! (coordinate median, trimmed mean, Krum) and the server strategies
//! (FedAvg, FedProx, FedAdam).

use serde::{Deserialize, Serialize};

use crate::{RejectReason, Robust, Strategy};

/// One agent's trained model for a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub weights: Vec<f32>,
    pub samples: u64,
    pub loss: f32,
}

/// Largest sample count an update may claim; bounds an agent's weight in FedAvg.
pub const MAX_SAMPLES: u64 = 1 << 32;

/// Checks an update's shape, values and claims before it can count.
pub fn validate(update: &Update, params: usize) -> Result<(), RejectReason> {
    if update.weights.len() != params {
        return Err(RejectReason::WrongShape {
            got: update.weights.len(),
            expected: params,
        });
    }
    if update.weights.iter().any(|w| !w.is_finite()) || !update.loss.is_finite() {
        return Err(RejectReason::NonFinite);
    }
    if update.samples == 0 || update.samples > MAX_SAMPLES {
        return Err(RejectReason::BadSampleCount(update.samples));
    }
    Ok(())
}

/// Combines the models of `updates` (all validated, same length, non-empty)
/// into one candidate model.
pub fn combine(updates: &[&Update], robust: Robust) -> Vec<f32> {
    let n = updates.len();
    let dim = updates[0].weights.len();
    match robust {
        Robust::None => {
            let total: f64 = updates.iter().map(|u| u.samples as f64).sum();
            let mut out = vec![0f64; dim];
            for u in updates {
                let w = u.samples as f64 / total;
                for (o, x) in out.iter_mut().zip(&u.weights) {
                    *o += w * f64::from(*x);
                }
            }
            out.into_iter().map(|x| x as f32).collect()
        }
        Robust::CoordinateMedian => per_coordinate(updates, dim, |col| {
            let m = col.len() / 2;
            if col.len() % 2 == 1 {
                col[m]
            } else {
                (col[m - 1] + col[m]) / 2.0
            }
        }),
        Robust::TrimmedMean { beta } => {
            let k = ((n as f64) * beta).floor() as usize;
            // Never trim everything away.
            let k = k.min((n - 1) / 2);
            per_coordinate(updates, dim, |col| {
                let kept = &col[k..col.len() - k];
                kept.iter().sum::<f32>() / kept.len() as f32
            })
        }
        Robust::Krum { f } => updates[krum_index(updates, f)].weights.clone(),
    }
}

fn per_coordinate(updates: &[&Update], dim: usize, pick: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let mut col = vec![0f32; updates.len()];
    (0..dim)
        .map(|j| {
            for (c, u) in col.iter_mut().zip(updates) {
                *c = u.weights[j];
            }
            col.sort_by(f32::total_cmp);
            pick(&col)
        })
        .collect()
}

/// Krum (Blanchard et al. 2017): the update whose summed squared distance
/// to its `n - f - 2` nearest neighbours is smallest.
pub fn krum_index(updates: &[&Update], f: usize) -> usize {
    let n = updates.len();
    let neighbours = n.saturating_sub(f + 2).max(1);
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let d = f64::from(x - y);
                d * d
            })
            .sum()
    };
    (0..n)
        .map(|i| {
            let mut d: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .map(|j| dist(&updates[i].weights, &updates[j].weights))
                .collect();
            d.sort_by(f64::total_cmp);
            (i, d.iter().take(neighbours).sum::<f64>())
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i)
}

/// Server optimiser state (FedAdam's moments); empty for the other strategies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// Applies the strategy: the new global model from the old one and the
/// combined candidate.
pub fn apply_strategy(
    strategy: Strategy,
    state: &mut ServerState,
    global: &[f32],
    candidate: Vec<f32>,
) -> Vec<f32> {
    match strategy {
        Strategy::FedAvg | Strategy::FedProx { .. } => candidate,
        Strategy::FedAdam {
            lr,
            beta1,
            beta2,
            tau,
        } => {
            if state.m.len() != global.len() {
                state.m = vec![0.0; global.len()];
                state.v = vec![0.0; global.len()];
            }
            let (b1, b2) = (beta1 as f32, beta2 as f32);
            global
                .iter()
                .zip(&candidate)
                .zip(state.m.iter_mut().zip(state.v.iter_mut()))
                .map(|((g, c), (m, v))| {
                    let delta = c - g;
                    *m = b1 * *m + (1.0 - b1) * delta;
                    *v = b2 * *v + (1.0 - b2) * delta * delta;
                    g + (lr as f32) * *m / (v.sqrt() + tau as f32)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(w: &[f32], samples: u64) -> Update {
        Update {
            weights: w.to_vec(),
            samples,
            loss: 0.0,
        }
    }

    #[test]
    fn fedavg_weights_by_samples() {
        let a = u(&[0.0, 10.0], 1);
        let b = u(&[4.0, 2.0], 3);
        assert_eq!(combine(&[&a, &b], Robust::None), vec![3.0, 4.0]);
    }

    #[test]
    fn robust_rules_ignore_one_outlier() {
        let honest: Vec<Update> = (0..4)
            .map(|i| u(&[1.0 + i as f32 * 0.01, -1.0], 10))
            .collect();
        let evil = u(&[1000.0, 1000.0], 1_000_000);
        let mut all: Vec<&Update> = honest.iter().collect();
        all.push(&evil);
        for rule in [
            Robust::CoordinateMedian,
            Robust::TrimmedMean { beta: 0.2 },
            Robust::Krum { f: 1 },
        ] {
            let out = combine(&all, rule);
            assert!(
                (out[0] - 1.015).abs() < 0.02 && (out[1] + 1.0).abs() < 1e-6,
                "{rule:?}: {out:?}"
            );
        }
        let avg = combine(&all, Robust::None);
        assert!(avg[0] > 900.0);
    }

    #[test]
    fn validation_rejects_bad_updates() {
        assert_eq!(
            validate(&u(&[1.0], 1), 2),
            Err(RejectReason::WrongShape {
                got: 1,
                expected: 2
            })
        );
        assert_eq!(
            validate(&u(&[1.0, f32::INFINITY], 1), 2),
            Err(RejectReason::NonFinite)
        );
        assert_eq!(
            validate(&u(&[1.0, 2.0], 0), 2),
            Err(RejectReason::BadSampleCount(0))
        );
        assert_eq!(validate(&u(&[1.0, 2.0], 5), 2), Ok(()));
    }

    #[test]
    fn fedadam_moves_towards_the_candidate() {
        let mut st = ServerState::default();
        let s = Strategy::FedAdam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        };
        let g = vec![0.0, 0.0];
        let next = apply_strategy(s, &mut st, &g, vec![1.0, -1.0]);
        assert!(next[0] > 0.0 && next[1] < 0.0);
        assert_eq!(st.m.len(), 2);
    }
}
