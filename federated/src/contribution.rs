//! Measuring each agent's contribution to a round, and splitting the
//! round's reward by it.
//!
//! # GTG-Shapley
//!
//! The Shapley value of agent `i` is its marginal gain in utility averaged
//! over every order in which agents could join:
//! `phi_i = sum over S not containing i of |S|!(n-|S|-1)!/n! (U(S+i) - U(S))`.
//! Here `U(S)` is the validation accuracy of the model the coordinator would
//! have produced from the updates of `S` alone (the task's own combination
//! rule applied to `S`), and `U(empty)` is the accuracy of the previous
//! global model. Exact values need `2^n` models and evaluations.
//!
//! GTG-Shapley (Liu, Chen, Sun, Yu, Yang; ACM TIST 2022, "GTG-Shapley:
//! Efficient and Accurate Participant Contribution Evaluation in Federated
//! Learning") estimates them from the round's updates alone, without any
//! retraining, by Monte Carlo over permutations with three savings:
//!
//! 1. *between-round truncation*: if the full round gains less than `eps`
//!    over the previous model, every contribution is zero;
//! 2. *within-round truncation*: walking a permutation, once the prefix's
//!    utility is within `eps` of the full round's, the remaining agents'
//!    marginal gains are taken as zero;
//! 3. *guided sampling*: each pass makes every agent lead one permutation,
//!    since the first position carries the largest marginal gains.
//!
//! Sampling stops when the estimates move by less than `tolerance`
//! (relative) over a pass, after `max_passes`, or once `max_evaluations`
//! coalition evaluations (memo misses and hits alike) were spent. Utilities are memoised by
//! coalition. `exact_shapley` is kept for small rounds and for testing the
//! estimate.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

/// Exact Shapley values of `n` players (n <= 20) under `utility`, which
/// receives the indices of a coalition in increasing order.
pub fn exact_shapley(n: usize, mut utility: impl FnMut(&[usize]) -> f64) -> Vec<f64> {
    assert!(n <= 20, "exact Shapley is exponential");
    let members = |mask: usize| (0..n).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>();
    let values: Vec<f64> = (0..1usize << n).map(|m| utility(&members(m))).collect();
    let fact: Vec<f64> = (0..=n)
        .scan(1.0, |f, k| {
            let out = *f;
            *f *= (k + 1) as f64;
            Some(out)
        })
        .collect();
    (0..n)
        .map(|i| {
            (0..1usize << n)
                .filter(|m| m & (1 << i) == 0)
                .map(|m| {
                    let s = m.count_ones() as usize;
                    fact[s] * fact[n - s - 1] / fact[n] * (values[m | (1 << i)] - values[m])
                })
                .sum()
        })
        .collect()
}

/// Most groups a round is split into: exact group Shapley costs 2^groups
/// coalition evaluations.
pub const MAX_GROUPS: usize = 8;

/// `items` shuffled by `rng` and dealt round-robin into groups of at least
/// `min_group` (as many as fit, at most [`MAX_GROUPS`], at least one).
pub fn random_groups<T>(
    mut items: Vec<T>,
    min_group: usize,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<T>> {
    items.shuffle(rng);
    let n_groups = (items.len() / min_group.max(1)).clamp(1, MAX_GROUPS);
    let mut groups: Vec<Vec<T>> = (0..n_groups).map(|_| Vec::new()).collect();
    for (i, a) in items.into_iter().enumerate() {
        groups[i % n_groups].push(a);
    }
    groups
}

/// Contributions from group aggregates alone: the exact Shapley value of
/// each group, with `utility` over coalitions of group indices, split
/// equally among its members (indices below `n`). This is all secure
/// aggregation lets a coordinator score; drawing groups afresh over rounds
/// (or over `draws` in [`group_shapley_draws`]) separates the members.
pub fn group_shapley(
    groups: &[Vec<usize>],
    n: usize,
    utility: impl FnMut(&[usize]) -> f64,
) -> Vec<f64> {
    let values = exact_shapley(groups.len(), utility);
    let mut out = vec![0.0; n];
    for (g, v) in groups.iter().zip(values) {
        for &m in g {
            out[m] = v / g.len() as f64;
        }
    }
    out
}

/// The mean of [`group_shapley`] over `draws` random partitions of `n`
/// agents into groups of at least `min_group`, with `utility` over agent
/// coalitions: the estimate a secure task converges to over rounds.
pub fn group_shapley_draws(
    n: usize,
    min_group: usize,
    draws: usize,
    seed: u64,
    mut utility: impl FnMut(&[usize]) -> f64,
) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sum = vec![0.0; n];
    for _ in 0..draws {
        let groups = random_groups((0..n).collect(), min_group, &mut rng);
        let est = group_shapley(&groups, n, |c| {
            let mut members: Vec<usize> = c.iter().flat_map(|&g| groups[g].clone()).collect();
            members.sort_unstable();
            utility(&members)
        });
        for (s, e) in sum.iter_mut().zip(est) {
            *s += e;
        }
    }
    sum.into_iter().map(|s| s / draws.max(1) as f64).collect()
}

/// GTG-Shapley parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GtgConfig {
    /// Utility gains below this count as none (truncation).
    pub eps: f64,
    /// Relative change of the estimates under which sampling stops.
    pub tolerance: f64,
    pub max_passes: usize,
    /// Stop sampling once this many coalition evaluations were spent
    /// (bounds the cost for rounds with hundreds of agents).
    pub max_evaluations: usize,
    pub seed: u64,
}

impl Default for GtgConfig {
    fn default() -> Self {
        Self {
            eps: 1e-3,
            tolerance: 0.02,
            max_passes: 20,
            max_evaluations: 2_000,
            seed: 0,
        }
    }
}

/// GTG-Shapley estimates and how many distinct coalitions were evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    pub values: Vec<f64>,
    pub evaluations: usize,
}

pub fn gtg_shapley(n: usize, mut utility: impl FnMut(&[usize]) -> f64, cfg: GtgConfig) -> Estimate {
    let mut memo: HashMap<Vec<usize>, f64> = HashMap::new();
    let mut eval = |coalition: &[usize]| -> f64 {
        let mut key = coalition.to_vec();
        key.sort_unstable();
        *memo.entry(key.clone()).or_insert_with(|| utility(&key))
    };
    let all: Vec<usize> = (0..n).collect();
    let v0 = eval(&[]);
    let vn = eval(&all);
    let mut values = vec![0.0; n];
    if n == 0 || (vn - v0).abs() < cfg.eps {
        return Estimate {
            values,
            evaluations: memo.len(),
        };
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut samples = 0usize;
    let mut evaluated = 2usize;
    'passes: for pass in 0..cfg.max_passes {
        let before = values.clone();
        for lead in 0..n {
            let mut rest: Vec<usize> = (0..n).filter(|&i| i != lead).collect();
            rest.shuffle(&mut rng);
            let mut perm = vec![lead];
            perm.extend(rest);
            let mut prev = v0;
            let mut marginals = vec![0.0; n];
            for k in 0..n {
                if (vn - prev).abs() < cfg.eps {
                    break;
                }
                let v = eval(&perm[..=k]);
                evaluated += 1;
                marginals[perm[k]] = v - prev;
                prev = v;
            }
            samples += 1;
            for (value, m) in values.iter_mut().zip(&marginals) {
                *value += (m - *value) / samples as f64;
            }
            if evaluated >= cfg.max_evaluations {
                break 'passes;
            }
        }
        if pass >= 2 {
            let norm: f64 = values.iter().map(|v| v.abs()).sum::<f64>().max(1e-12);
            let change: f64 = values
                .iter()
                .zip(&before)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / norm;
            if change < cfg.tolerance {
                break;
            }
        }
    }
    Estimate {
        values,
        evaluations: memo.len(),
    }
}

/// Splits `share` among agents in proportion to their (clipped at zero)
/// contributions, in whole units by largest remainder so the parts add up
/// to `share` exactly. If no one contributed positively the share is split
/// equally: the round still happened and its budget is spent.
pub fn split_reward(share: u64, contributions: &[f64]) -> Vec<u64> {
    let n = contributions.len();
    if n == 0 {
        return Vec::new();
    }
    let clipped: Vec<f64> = contributions
        .iter()
        .map(|c| if c.is_finite() { c.max(0.0) } else { 0.0 })
        .collect();
    let total: f64 = clipped.iter().sum();
    let weights: Vec<f64> = if total > 0.0 {
        clipped.iter().map(|c| c / total).collect()
    } else {
        vec![1.0 / n as f64; n]
    };
    let exact: Vec<f64> = weights.iter().map(|w| w * share as f64).collect();
    let mut parts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut left = share - parts.iter().sum::<u64>().min(share);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        // Only agents with a positive weight receive the remainder.
        if weights[i] > 0.0 {
            parts[i] += 1;
            left -= 1;
        }
    }
    parts
}

/// Spearman rank correlation (no tie correction; ties ranked by index).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |x: &[f64]| {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        for (pos, &i) in idx.iter().enumerate() {
            r[i] = pos as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_shapley_of_an_additive_game_is_each_weight() {
        let w = [1.0, 2.0, 3.0, 0.5];
        let phi = exact_shapley(4, |s| s.iter().map(|&i| w[i]).sum());
        for (p, x) in phi.iter().zip(w) {
            assert!((p - x).abs() < 1e-12);
        }
    }

    #[test]
    fn gtg_matches_exact_on_a_non_additive_game() {
        // Diminishing returns: utility saturates with total quality.
        let q = [0.5, 0.3, 0.1, 0.05, 0.0];
        let u = |s: &[usize]| 1.0 - (-s.iter().map(|&i| q[i]).sum::<f64>() * 3.0).exp();
        let exact = exact_shapley(5, u);
        let est = gtg_shapley(5, u, GtgConfig::default());
        assert!(
            spearman(&exact, &est.values) > 0.99,
            "{exact:?} {:?}",
            est.values
        );
        let sum: f64 = est.values.iter().sum();
        assert!((sum - u(&[0, 1, 2, 3, 4])).abs() < 2e-3, "efficiency");
    }

    #[test]
    fn reward_split_adds_up_and_follows_contribution() {
        let parts = split_reward(100, &[0.3, 0.1, -0.2, 0.0, 0.6]);
        assert_eq!(parts.iter().sum::<u64>(), 100);
        assert_eq!(parts[2], 0);
        assert!(parts[4] > parts[0] && parts[0] > parts[1]);
        assert_eq!(split_reward(10, &[0.0, 0.0, f64::NAN]), vec![4, 3, 3]);
        assert_eq!(split_reward(7, &[]), Vec::<u64>::new());
    }

    proptest::proptest! {
        #[test]
        fn reward_split_always_sums_to_share(share in 0u64..1_000_000, c in proptest::collection::vec(-1.0f64..1.0, 1..12)) {
            proptest::prop_assert_eq!(split_reward(share, &c).iter().sum::<u64>(), share);
        }
    }
}
