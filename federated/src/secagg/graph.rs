//! The sparse communication graph of SecAgg+ (Bell et al. 2020, §3.1):
//! a Harary graph `H(n, k)` on a random relabelling of the cohort. Agent
//! `i` (after relabelling) neighbours `i ± 1, …, i ± k/2` mod `n`, so every
//! agent has exactly `k` neighbours and masks, shares and key exchanges cost
//! `O(k) = O(log n)` per agent instead of `O(n)`. The relabelling comes from
//! a seed the coordinator fixes with the round, so every party derives the
//! same graph.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::AgentId;

/// The neighbour degree SecAgg+ suggests for `n` agents: about
/// `3·log2 n`, even, and the complete graph when that is not smaller.
pub fn default_degree(n: usize) -> usize {
    if n < 2 {
        return 0;
    }
    let log = usize::BITS - (n - 1).leading_zeros();
    let k = 3 * log as usize;
    let k = k + (k % 2);
    k.min(n - 1)
}

/// Each agent's neighbours. `agents` must be distinct; `degree` is capped at
/// `n - 1` (the complete graph), and an odd degree below that is rounded up.
pub fn neighbours(
    agents: &[AgentId],
    degree: usize,
    seed: [u8; 32],
) -> BTreeMap<AgentId, BTreeSet<AgentId>> {
    let n = agents.len();
    let mut order: Vec<AgentId> = agents.to_vec();
    order.sort();
    let mut out: BTreeMap<AgentId, BTreeSet<AgentId>> =
        order.iter().map(|a| (*a, BTreeSet::new())).collect();
    if n < 2 {
        return out;
    }
    if degree >= n - 1 {
        for a in &order {
            let set = out.get_mut(a).expect("every agent has an entry");
            set.extend(order.iter().filter(|b| *b != a));
        }
        return out;
    }
    order.shuffle(&mut ChaCha20Rng::from_seed(seed));
    let half = degree.div_ceil(2);
    for (i, a) in order.iter().enumerate() {
        for d in 1..=half {
            let b = order[(i + d) % n];
            out.get_mut(a).expect("entry").insert(b);
            out.get_mut(&b).expect("entry").insert(*a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<AgentId> {
        (0..n)
            .map(|i| {
                let mut a = [0u8; 32];
                a[..8].copy_from_slice(&(i as u64).to_be_bytes());
                a
            })
            .collect()
    }

    #[test]
    fn the_graph_is_symmetric_regular_and_seeded() {
        for (n, k) in [(10, 4), (100, 20), (1000, 30), (7, 6), (5, 10)] {
            let g = neighbours(&ids(n), k, [3; 32]);
            let want = k.min(n - 1);
            for (a, ns) in &g {
                assert_eq!(ns.len(), want, "n={n} k={k}");
                assert!(!ns.contains(a));
                for b in ns {
                    assert!(g[b].contains(a));
                }
            }
            assert_eq!(g, neighbours(&ids(n), k, [3; 32]));
        }
        assert_ne!(
            neighbours(&ids(100), 10, [1; 32]),
            neighbours(&ids(100), 10, [2; 32])
        );
    }

    #[test]
    fn the_default_degree_grows_with_log_n() {
        assert_eq!(default_degree(1), 0);
        assert_eq!(default_degree(10), 9);
        assert_eq!(default_degree(100), 22);
        assert_eq!(default_degree(1000), 30);
    }
}
