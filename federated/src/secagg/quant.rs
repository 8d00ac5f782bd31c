//! Fixed-point encoding of clipped updates in `Z_{2^32}`.
//!
//! Masks are added modulo 2^32, so values must be integers there. Each
//! coordinate of every agent lies in `[-range, range]`, so a sum over at
//! most `cohort` agents lies in `[-cohort·range, cohort·range]`; the scale
//! maps that interval inside the signed 32-bit range, so the sum never wraps
//! and decodes by reading it as an `i32`. Rounding to nearest costs at most
//! `1/(2·scale)` per agent and coordinate: [`Quantiser::sum_error`].

/// The encoding shared by a round's agents and its coordinator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiser {
    range: f64,
    scale: f64,
    cohort: usize,
}

impl Quantiser {
    /// For sums of up to `cohort` vectors with coordinates in `[-range, range]`.
    pub fn new(range: f64, cohort: usize) -> Self {
        let cohort = cohort.max(1);
        // Leave one unit per agent for rounding up at the edge.
        let limit = f64::from(i32::MAX) - cohort as f64;
        Quantiser {
            range,
            scale: limit / (cohort as f64 * range),
            cohort,
        }
    }

    /// Saturates to the range, then rounds to the nearest step.
    pub fn encode(&self, values: &[f32]) -> Vec<u32> {
        values
            .iter()
            .map(|&v| {
                let v = f64::from(v).clamp(-self.range, self.range);
                ((v * self.scale).round() as i64) as u32
            })
            .collect()
    }

    /// Reads a sum of at most `cohort` encodings.
    pub fn decode_sum(&self, sum: &[u32]) -> Vec<f64> {
        sum.iter()
            .map(|&s| f64::from(s as i32) / self.scale)
            .collect()
    }

    /// The largest difference between a decoded sum of `agents` encodings and
    /// the exact sum of the saturated values.
    pub fn sum_error(&self, agents: usize) -> f64 {
        agents.min(self.cohort) as f64 * 0.5 / self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sums_decode_within_the_bound(
            vectors in proptest::collection::vec(proptest::collection::vec(-2.0f32..2.0, 5), 1..40),
            range in 0.1f64..3.0,
        ) {
            let q = Quantiser::new(range, vectors.len());
            let mut sum = vec![0u32; 5];
            for v in &vectors {
                for (s, e) in sum.iter_mut().zip(q.encode(v)) {
                    *s = s.wrapping_add(e);
                }
            }
            let got = q.decode_sum(&sum);
            for (i, g) in got.iter().enumerate() {
                let exact: f64 = vectors.iter().map(|v| f64::from(v[i]).clamp(-range, range)).sum();
                prop_assert!((g - exact).abs() <= q.sum_error(vectors.len()) + 1e-12 * exact.abs().max(1.0),
                    "{g} vs {exact}");
            }
        }
    }

    #[test]
    fn the_extremes_do_not_wrap() {
        let q = Quantiser::new(1.0, 1000);
        let one = q.encode(&[1.0, -1.0, 5.0]);
        let mut sum = vec![0u32; 3];
        for _ in 0..1000 {
            for (s, e) in sum.iter_mut().zip(&one) {
                *s = s.wrapping_add(*e);
            }
        }
        let got = q.decode_sum(&sum);
        assert!((got[0] - 1000.0).abs() < 1e-3);
        assert!((got[1] + 1000.0).abs() < 1e-3);
        assert!((got[2] - 1000.0).abs() < 1e-3, "saturated to the range");
    }
}
