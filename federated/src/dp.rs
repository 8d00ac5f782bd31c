//! Client-level differential privacy for DP-FedAvg: a Rényi DP (RDP)
//! accountant for the Poisson-subsampled Gaussian mechanism.
//!
//! In DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018, "Learning
//! Differentially Private Recurrent Language Models") each round samples
//! every client independently with probability `q`, clips each client's
//! update to L2 norm `C` and adds Gaussian noise of standard deviation
//! `noise_multiplier * C` to their sum. With one client as the unit of
//! privacy (add or remove one client), a round is the sampled Gaussian
//! mechanism, and `steps` rounds are its `steps`-fold composition. The
//! guarantee is only as good as that match: rounds must really sample, clip
//! and add noise that way.
//!
//! This module ports exactly what Google's `dp-accounting` (0.6.0,
//! `dp_accounting/rdp/rdp_privacy_accountant.py`) computes for
//! `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)`
//! with its default orders:
//!
//! - RDP of one round at order `α` is `ln(A_α) / (α - 1)`, with `A_α` from
//!   Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
//!   Gaussian Mechanism" (arXiv:1908.10530), Section 3.3: case I, a finite
//!   binomial sum, for integer `α`; case II, two series weighted by `erfc`
//!   and split at `z0 = σ² ln(1/q - 1) + 1/2`, for fractional `α`. A
//!   fractional series that has not converged after 1000 terms gives
//!   infinity, which drops that order, as in `dp-accounting`. `q = 0` costs
//!   nothing, `σ = 0` is not private at all, `q = 1` is the plain Gaussian
//!   mechanism `α / (2σ²)`. RDP adds up over rounds.
//! - (ε, δ) is the best over orders of
//!   `ε = rdp + ln(1 - 1/α) - ln(δ·α) / (α - 1)`, the conversion of
//!   Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential
//!   Privacy" (arXiv:2004.00010, Proposition 12 in v4), also Asoodeh et al.
//!   2020 (arXiv:2001.05990, Equation 20 in v1), which `compute_epsilon`
//!   cites; ε is 0 at any order where `δ > sqrt(1 - e^(-rdp))` (the KL
//!   bound), and the formula is used only for `α > 1.01`.
//!
//! `std` has neither `erfc` nor `lgamma`, so this file carries ports of what
//! scipy evaluates there: W. J. Cody's rational Chebyshev approximations
//! (Math. Comp. 1969; netlib `specfun/erf`) for `erfc` and `erfcx`, scipy's
//! `log_ndtr` formulation on top of them, and Cephes' `lgam` (Moshier),
//! which is scipy's `gammaln`.
//!
//! Where `dp-accounting` raises, this module neither panics nor errs on the
//! side of privacy loss: zero steps compose nothing, inputs [`check`]
//! rejects count as a non-private release (infinite RDP), a negative or NaN
//! delta gives infinite epsilon, and an order whose arithmetic gives NaN
//! offers no bound (`dp-accounting` would report ε = 0 from it). An
//! infinite noise multiplier costs nothing, which `dp-accounting` reaches
//! only through NaN arithmetic.

use serde::{Deserialize, Serialize};

/// `dp-accounting`'s `DEFAULT_RDP_ORDERS`:
/// `[1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]`.
pub const DEFAULT_ORDERS: &[f64] = &[
    1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9,
    3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6, 4.7, 4.8,
    4.9, 5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.7, 5.8, 5.9, 6.0, 6.1, 6.2, 6.3, 6.4, 6.5, 6.6, 6.7,
    6.8, 6.9, 7.0, 7.1, 7.2, 7.3, 7.4, 7.5, 7.6, 7.7, 7.8, 7.9, 8.0, 8.1, 8.2, 8.3, 8.4, 8.5, 8.6,
    8.7, 8.8, 8.9, 9.0, 9.1, 9.2, 9.3, 9.4, 9.5, 9.6, 9.7, 9.8, 9.9, 10.0, 10.1, 10.2, 10.3, 10.4,
    10.5, 10.6, 10.7, 10.8, 10.9, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0,
    22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 36.0, 37.0,
    38.0, 39.0, 40.0, 41.0, 42.0, 43.0, 44.0, 45.0, 46.0, 47.0, 48.0, 49.0, 50.0, 51.0, 52.0, 53.0,
    54.0, 55.0, 56.0, 57.0, 58.0, 59.0, 60.0, 61.0, 62.0, 63.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Privacy spent so far, as RDP at each order.
///
/// Serializes to postcard (the store's format) faithfully; JSON cannot hold
/// the infinite RDP of a non-private release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// The default orders, with no budget spent.
    pub fn new() -> Self {
        Self {
            orders: DEFAULT_ORDERS.to_vec(),
            rdp: vec![0.0; DEFAULT_ORDERS.len()],
        }
    }

    /// Accounts for `steps` rounds, each sampling clients with probability
    /// `q` and adding Gaussian noise of `noise_multiplier` times the
    /// clipping norm.
    ///
    /// Expects values [`check`] accepts; anything else counts as a
    /// non-private release, so a caller that skipped the check fails closed.
    pub fn compose_subsampled_gaussian(&mut self, q: f64, noise_multiplier: f64, steps: u32) {
        // dp-accounting rejects a count of 0; multiplying instead would turn
        // an infinite RDP into NaN.
        if steps == 0 {
            return;
        }
        let valid = check_mechanism(q, noise_multiplier).is_ok();
        let steps = f64::from(steps);
        for (rdp, &order) in self.rdp.iter_mut().zip(&self.orders) {
            let round = if valid {
                subsampled_gaussian(q, noise_multiplier, order)
            } else {
                f64::INFINITY
            };
            *rdp += steps * round;
        }
    }

    /// The smallest epsilon any order proves at `delta`, which should be in
    /// (0, 1) (see [`check`]).
    ///
    /// As in `dp-accounting`, `delta = 0` gives 0 with no budget spent and
    /// infinity otherwise; a negative or NaN delta gives infinity.
    pub fn epsilon(&self, delta: f64) -> f64 {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }

    /// Epsilon after `steps` more such rounds, without changing self: lets a task stop before it would exceed its budget.
    pub fn epsilon_after(&self, q: f64, noise_multiplier: f64, steps: u32, delta: f64) -> f64 {
        let mut next = self.clone();
        next.compose_subsampled_gaussian(q, noise_multiplier, steps);
        next.epsilon(delta)
    }
}

/// Checks the parameters of a DP task before any round runs; the reason
/// names the bad value.
pub fn check(q: f64, noise_multiplier: f64, delta: f64) -> Result<(), &'static str> {
    check_mechanism(q, noise_multiplier)?;
    if delta.is_nan() || delta <= 0.0 || delta >= 1.0 {
        return Err("delta must be in (0, 1)");
    }
    Ok(())
}

fn check_mechanism(q: f64, noise_multiplier: f64) -> Result<(), &'static str> {
    if !(0.0..=1.0).contains(&q) {
        return Err("sampling rate q must be in [0, 1]");
    }
    if noise_multiplier.is_nan() || noise_multiplier < 0.0 {
        return Err("noise multiplier must be >= 0");
    }
    Ok(())
}

/// RDP at `order` of one round (`_compute_rdp_poisson_subsampled_gaussian`).
fn subsampled_gaussian(q: f64, sigma: f64, order: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else if sigma == 0.0 || order.is_infinite() || order.is_nan() || order <= 1.0 {
        // Orders up to 1 come only from a hand-made accountant: dividing by
        // `order - 1` below would give 0/0, or a -inf that reads as free.
        f64::INFINITY
    } else if sigma.is_infinite() {
        // dp-accounting gets here through 0·∞ and NaN arithmetic that its
        // conversion happens to turn into epsilon 0; say so directly.
        0.0
    } else if q == 1.0 {
        order / (2.0 * (sigma * sigma))
    } else if order.fract() == 0.0 {
        log_a_int(q, sigma, order) / (order - 1.0)
    } else {
        log_a_frac(q, sigma, order) / (order - 1.0)
    }
}

/// `ln(exp(log_x) + exp(log_y))` without overflow.
fn log_add(log_x: f64, log_y: f64) -> f64 {
    let (a, b) = if log_y < log_x {
        (log_y, log_x)
    } else {
        (log_x, log_y)
    };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln |binomial(n, k)|` for real `n`, through `ln |Γ|` as `_log_comb` does.
fn log_comb(n: f64, k: f64) -> f64 {
    special::ln_gamma(n + 1.0) - special::ln_gamma(k + 1.0) - special::ln_gamma(n - k + 1.0)
}

/// `ln A_α` for whole `alpha`, 0 < q < 1 (MTZ19 §3.3, case I).
fn log_a_int(q: f64, sigma: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * (sigma * sigma);
    // Counting in f64 is exact for any order that fits in a u32.
    (0..=u32::MAX)
        .map(f64::from)
        .take_while(|&i| i <= alpha)
        .fold(f64::NEG_INFINITY, |log_a, i| {
            let log_coef = log_comb(alpha, i) + i * log_q + (alpha - i) * log_1mq;
            log_add(log_a, log_coef + (i * i - i) / two_var)
        })
}

/// Terms of the fractional series before giving up on an order, as in
/// `dp-accounting` (`_MAX_STEPS_LOG_A_FRAC`).
const MAX_TERMS_FRAC: u32 = 1000;

/// `ln A_α` for fractional `alpha`, 0 < q < 1 (MTZ19 §3.3, case II): the
/// integrals over (-∞, z0] and [z0, ∞) as two series summed in log space.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    use std::f64::consts::{LN_2, SQRT_2};

    let var = sigma * sigma;
    let z0 = var * (1.0 / q - 1.0).ln() + 0.5;
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let scale = SQRT_2 * sigma;

    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in (0..MAX_TERMS_FRAC).map(f64::from) {
        let log_coef = log_comb(alpha, i);
        let j = alpha - i;

        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;

        // ln(erfc(·) / 2)
        let log_e0 = -LN_2 + special::log_erfc((i - z0) / scale);
        let log_e1 = -LN_2 + special::log_erfc((z0 - j) / scale);

        let log_s0 = log_t0 + (i * i - i) / (2.0 * var) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * var) + log_e1;

        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);

        // Both series past their peak, and what is left is below e^-30 of the sum.
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

/// `compute_epsilon(orders, rdp, delta)`, returning only the epsilon.
fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> f64 {
    // Lengths differ only in a hand-edited accountant, which proves nothing.
    if delta.is_nan() || delta < 0.0 || orders.len() != rdp.len() {
        return f64::INFINITY;
    }
    if delta == 0.0 {
        return if rdp.iter().all(|&r| r == 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    // `f64::min` passes over NaN, so an order whose arithmetic broke down
    // offers no bound (dp-accounting would pick it and report 0).
    orders
        .iter()
        .zip(rdp)
        .map(|(&order, &r)| order_epsilon(order, r, delta))
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// The epsilon one order proves.
fn order_epsilon(order: f64, rdp: f64, delta: f64) -> f64 {
    if order.is_nan() || order < 1.0 {
        // Not an RDP order (dp-accounting raises).
        f64::INFINITY
    } else if rdp < 0.0 || delta * delta + (-rdp).exp_m1() > 0.0 {
        // True RDP is never negative, so dp-accounting reads a value below
        // zero as rounding noise and no loss. Otherwise RDP at any order
        // >= 1 bounds the KL divergence, and delta > sqrt(1 - exp(-KL))
        // holds with epsilon 0.
        0.0
    } else if order > 1.01 {
        // The conversion is numerically unstable as the order nears 1, and
        // useless there anyway.
        rdp + (-1.0 / order).ln_1p() - (delta * order).ln() / (order - 1.0)
    } else {
        f64::INFINITY
    }
}

/// `erfc` and `ln Γ` as scipy evaluates them for `dp-accounting`.
mod special {
    #![allow(
        clippy::excessive_precision,
        reason = "coefficients keep the digits their sources print, so they can be checked against them"
    )]

    use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LN_2, PI, SQRT_2};

    const FRAC_1_SQRT_PI: f64 = FRAC_2_SQRT_PI / 2.0;

    // W. J. Cody, "Rational Chebyshev approximations for the error
    // function", Math. Comp. 23 (1969) 631-638; constants and coefficients of
    // netlib specfun CALERF for IEEE double.
    const THRESHOLD: f64 = 0.46875;
    const XSMALL: f64 = 1.11e-16;
    const XBIG: f64 = 26.543;
    const XHUGE: f64 = 6.71e7;
    const XMAX: f64 = 2.53e307;

    /// erf near zero.
    const A: [f64; 5] = [
        3.16112374387056560e00,
        1.13864154151050156e02,
        3.77485237685302021e02,
        3.20937758913846947e03,
        1.85777706184603153e-1,
    ];
    const B: [f64; 4] = [
        2.36012909523441209e01,
        2.44024637934444173e02,
        1.28261652607737228e03,
        2.84423683343917062e03,
    ];
    /// erfc on (0.46875, 4].
    const C: [f64; 9] = [
        5.64188496988670089e-1,
        8.88314979438837594e00,
        6.61191906371416295e01,
        2.98635138197400131e02,
        8.81952221241769090e02,
        1.71204761263407058e03,
        2.05107837782607147e03,
        1.23033935479799725e03,
        2.15311535474403846e-8,
    ];
    const D: [f64; 8] = [
        1.57449261107098347e01,
        1.17693950891312499e02,
        5.37181101862009858e02,
        1.62138957456669019e03,
        3.29079923573345963e03,
        4.36261909014324716e03,
        3.43936767414372164e03,
        1.23033935480374942e03,
    ];
    /// erfc beyond 4, in 1/x².
    const P: [f64; 6] = [
        3.05326634961232344e-1,
        3.60344899949804439e-1,
        1.25781726111229246e-1,
        1.60837851487422766e-2,
        6.58749161529837803e-4,
        1.63153871373020978e-2,
    ];
    const Q: [f64; 5] = [
        2.56852019228982242e00,
        1.87295284992346047e00,
        5.27905102951428412e-1,
        6.05183413124413191e-2,
        2.33520497626869185e-3,
    ];

    /// x², or 0 where x is too small for its square to matter beside 1.
    fn small_square(x: f64) -> f64 {
        if x.abs() > XSMALL { x * x } else { 0.0 }
    }

    /// erfc(x) for |x| <= THRESHOLD.
    fn erfc_near_zero(x: f64) -> f64 {
        let ysq = small_square(x);
        let (num, den) = A[..3]
            .iter()
            .zip(&B[..3])
            .fold((A[4] * ysq, ysq), |(num, den), (a, b)| {
                ((num + a) * ysq, (den + b) * ysq)
            });
        1.0 - x * (num + A[3]) / (den + B[3])
    }

    /// erfcx(y) for THRESHOLD < y <= 4.
    fn erfcx_mid(y: f64) -> f64 {
        let (num, den) = C[..7]
            .iter()
            .zip(&D[..7])
            .fold((C[8] * y, y), |(num, den), (c, d)| {
                ((num + c) * y, (den + d) * y)
            });
        (num + C[7]) / (den + D[7])
    }

    /// erfcx(y) for 4 < y < XHUGE.
    fn erfcx_tail(y: f64) -> f64 {
        let ysq = 1.0 / (y * y);
        let (num, den) = P[..4]
            .iter()
            .zip(&Q[..4])
            .fold((P[5] * ysq, ysq), |(num, den), (p, q)| {
                ((num + p) * ysq, (den + q) * ysq)
            });
        (FRAC_1_SQRT_PI - ysq * (num + P[4]) / (den + Q[4])) / y
    }

    /// exp(-y²), with y² split into a part exact in binary and a small
    /// remainder, so the rounding of y² is not blown up by exp.
    fn exp_neg_square(y: f64) -> f64 {
        let head = (y * 16.0).trunc() / 16.0;
        let rest = (y - head) * (y + head);
        (-head * head).exp() * (-rest).exp()
    }

    pub(super) fn erfc(x: f64) -> f64 {
        let y = x.abs();
        if y <= THRESHOLD {
            return erfc_near_zero(x);
        }
        let upper = if y <= 4.0 {
            exp_neg_square(y) * erfcx_mid(y)
        } else if y < XBIG {
            exp_neg_square(y) * erfcx_tail(y)
        } else {
            0.0
        };
        if x < 0.0 { 2.0 - upper } else { upper }
    }

    /// exp(x²)·erfc(x) for x >= 0, the only side `log_erfc` needs.
    pub(super) fn erfcx(x: f64) -> f64 {
        if x <= THRESHOLD {
            small_square(x).exp() * erfc_near_zero(x)
        } else if x <= 4.0 {
            erfcx_mid(x)
        } else if x >= XMAX {
            0.0
        } else if x >= XHUGE {
            FRAC_1_SQRT_PI / x
        } else {
            erfcx_tail(x)
        }
    }

    /// ln Φ(a), as scipy's `log_ndtr`: through erfcx in the lower tail, so
    /// the logarithm never sees an erfc that underflowed.
    fn log_ndtr(a: f64) -> f64 {
        let t = a * FRAC_1_SQRT_2;
        if a < -1.0 {
            (erfcx(-t) / 2.0).ln() - t * t
        } else {
            (-erfc(t) / 2.0).ln_1p()
        }
    }

    /// ln erfc(x) the way `dp-accounting`'s `_log_erfc` takes it:
    /// `ln 2 + log_ndtr(-x·√2)`.
    pub(super) fn log_erfc(x: f64) -> f64 {
        LN_2 + log_ndtr(-x * SQRT_2)
    }

    // Cephes Math Library `lgam` (S. L. Moshier), as scipy's `gammaln`.
    const LGAM_A: [f64; 5] = [
        8.11614167470508450300e-4,
        -5.95061904284301438324e-4,
        7.93650340457716943945e-4,
        -2.77777777730099687205e-3,
        8.33333333333331927722e-2,
    ];
    const LGAM_B: [f64; 6] = [
        -1.37825152569120859100e3,
        -3.88016315134637840924e4,
        -3.31612992738871184744e5,
        -1.16237097492762307383e6,
        -1.72173700820839662146e6,
        -8.53555664245765465627e5,
    ];
    /// Leading coefficient 1 left out, as Cephes' `p1evl` expects.
    const LGAM_C: [f64; 6] = [
        -3.51815701436523470549e2,
        -1.70642106651881159223e4,
        -2.20528590553854454839e5,
        -1.13933444367982507207e6,
        -2.53252307177582951285e6,
        -2.01889141433532773231e6,
    ];
    /// ln √(2π)
    const LS2PI: f64 = 0.91893853320467274178;
    /// ln π
    const LOG_PI: f64 = 1.14472988584940017414;
    const MAXLGM: f64 = 2.556348e305;

    /// Horner's rule, highest power first (Cephes `polevl`).
    fn polevl(x: f64, coef: &[f64]) -> f64 {
        coef.iter().fold(0.0, |acc, &c| acc * x + c)
    }

    /// Horner's rule with an implied leading 1 (Cephes `p1evl`).
    fn p1evl(x: f64, coef: &[f64]) -> f64 {
        coef.iter().fold(1.0, |acc, &c| acc * x + c)
    }

    /// ln |Γ(x)|; infinity at the poles.
    pub(super) fn ln_gamma(x: f64) -> f64 {
        if !x.is_finite() {
            return x;
        }
        if x < -34.0 {
            // Reflection: |Γ(x)| = π / (|x| |sin(πx)| Γ(|x|)).
            let q = -x;
            let w = ln_gamma(q);
            let mut p = q.floor();
            if p == q {
                return f64::INFINITY;
            }
            let mut z = q - p;
            if z > 0.5 {
                p += 1.0;
                z = p - q;
            }
            // z is in [0, 1/2], where Cephes' sinpi is plain sin(πz).
            let z = q * (PI * z).sin();
            if z == 0.0 {
                return f64::INFINITY;
            }
            return LOG_PI - z.ln() - w;
        }
        if x < 13.0 {
            // Shift into [2, 3) with Γ(x+1) = xΓ(x), then a rational fit there.
            let mut z = 1.0;
            let mut p = 0.0;
            let mut u = x;
            while u >= 3.0 {
                p -= 1.0;
                u = x + p;
                z *= u;
            }
            while u < 2.0 {
                if u == 0.0 {
                    return f64::INFINITY;
                }
                z /= u;
                p += 1.0;
                u = x + p;
            }
            let z = z.abs();
            if u == 2.0 {
                return z.ln();
            }
            let x = x + (p - 2.0);
            return z.ln() + x * polevl(x, &LGAM_B) / p1evl(x, &LGAM_C);
        }
        if x > MAXLGM {
            return f64::INFINITY;
        }
        // Stirling's series.
        let q = (x - 0.5) * x.ln() - x + LS2PI;
        if x > 1.0e8 {
            return q;
        }
        let p = 1.0 / (x * x);
        if x >= 1000.0 {
            q + ((7.9365079365079365079365e-4 * p - 2.7777777777777777777778e-3) * p
                + 0.0833333333333333333333)
                / x
        } else {
            q + polevl(p, &LGAM_A) / x
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issue asks for 1%; the port matches dp-accounting to ~1e-15, so
    /// anything past 1e-6 is a bug, not rounding.
    const TOLERANCE: f64 = 1e-6;

    fn relative_error(got: f64, want: f64) -> f64 {
        if got == want {
            0.0
        } else {
            (got - want).abs() / want.abs()
        }
    }

    fn spent(q: f64, noise_multiplier: f64, steps: u32) -> RdpAccountant {
        let mut accountant = RdpAccountant::new();
        accountant.compose_subsampled_gaussian(q, noise_multiplier, steps);
        accountant
    }

    #[derive(Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        q: f64,
        noise_multiplier: f64,
        steps: u32,
        delta: f64,
        epsilon: f64,
    }

    #[test]
    fn matches_dp_accounting() {
        let vectors: Vectors =
            serde_json::from_str(include_str!("../tests/vectors/dp_accounting.json"))
                .expect("vectors parse");
        assert!(vectors.cases.len() >= 144);
        for case in &vectors.cases {
            let got = spent(case.q, case.noise_multiplier, case.steps).epsilon(case.delta);
            let err = relative_error(got, case.epsilon);
            assert!(
                err <= TOLERANCE,
                "q={} sigma={} steps={} delta={}: got {got}, dp-accounting {} (relative error {err:e})",
                case.q,
                case.noise_multiplier,
                case.steps,
                case.delta,
                case.epsilon,
            );
        }
    }

    #[test]
    fn default_orders_are_dp_accountings() {
        let mut want: Vec<f64> = (1..100_u32).map(|x| 1.0 + f64::from(x) / 10.0).collect();
        want.extend((11..64_u32).map(f64::from));
        want.extend([128.0, 256.0, 512.0, 1024.0]);
        assert_eq!(DEFAULT_ORDERS, want.as_slice());
    }

    #[test]
    fn nothing_spent_is_epsilon_zero() {
        let fresh = RdpAccountant::new();
        assert_eq!(fresh, RdpAccountant::default());
        assert_eq!(fresh.epsilon(1e-5), 0.0);
        assert_eq!(fresh.epsilon(0.0), 0.0);
    }

    #[test]
    fn no_sampling_costs_nothing() {
        for sigma in [0.0, 0.5, 1.0, f64::INFINITY] {
            let accountant = spent(0.0, sigma, 1000);
            for delta in [1e-10, 1e-5, 0.5, 0.0] {
                assert_eq!(
                    accountant.epsilon(delta),
                    0.0,
                    "sigma={sigma} delta={delta}"
                );
            }
        }
    }

    #[test]
    fn no_noise_is_not_private() {
        for q in [1e-6, 0.5, 1.0] {
            assert_eq!(spent(q, 0.0, 1).epsilon(1e-5), f64::INFINITY);
        }
    }

    #[test]
    fn infinite_noise_costs_nothing() {
        for q in [0.1, 0.5, 1.0] {
            assert_eq!(spent(q, f64::INFINITY, 1000).epsilon(1e-5), 0.0);
        }
    }

    #[test]
    fn more_steps_never_decrease_epsilon() {
        for (q, sigma) in [
            (0.001, 1.0),
            (0.01, 0.8),
            (0.1, 1.5),
            (0.3, 10.0),
            (1.0, 3.0),
        ] {
            let mut last = 0.0;
            for steps in [1, 2, 5, 10, 50, 100, 500, 1000, 5000] {
                let eps = spent(q, sigma, steps).epsilon(1e-5);
                assert!(
                    eps >= last,
                    "q={q} sigma={sigma}: {steps} steps give {eps} < {last}"
                );
                last = eps;
            }
        }
    }

    #[test]
    fn rounds_add_up() {
        let mut split = RdpAccountant::new();
        split.compose_subsampled_gaussian(0.05, 1.0, 30);
        split.compose_subsampled_gaussian(0.05, 1.0, 70);
        let whole = spent(0.05, 1.0, 100);
        assert!(relative_error(split.epsilon(1e-5), whole.epsilon(1e-5)) < 1e-12);
    }

    #[test]
    fn epsilon_after_leaves_the_accountant_alone() {
        let accountant = spent(0.01, 1.0, 10);
        let before = accountant.clone();
        let after = accountant.epsilon_after(0.01, 1.0, 90, 1e-5);
        assert_eq!(accountant, before);
        assert!(relative_error(after, spent(0.01, 1.0, 100).epsilon(1e-5)) < 1e-12);
        assert!(after > accountant.epsilon(1e-5));
    }

    #[test]
    fn zero_steps_compose_nothing() {
        let mut accountant = RdpAccountant::new();
        accountant.compose_subsampled_gaussian(0.1, 0.0, 0);
        assert_eq!(accountant, RdpAccountant::new());
    }

    #[test]
    fn unchecked_inputs_fail_closed() {
        for (q, sigma) in [
            (1.5, 1.0),
            (-0.1, 1.0),
            (f64::NAN, 1.0),
            (0.1, -1.0),
            (0.1, f64::NAN),
        ] {
            assert_eq!(
                spent(q, sigma, 1).epsilon(1e-5),
                f64::INFINITY,
                "q={q} sigma={sigma}"
            );
        }
    }

    #[test]
    fn delta_edge_cases() {
        let accountant = spent(0.01, 1.0, 100);
        assert_eq!(accountant.epsilon(0.0), f64::INFINITY);
        assert_eq!(accountant.epsilon(-1e-5), f64::INFINITY);
        assert_eq!(accountant.epsilon(f64::NAN), f64::INFINITY);
        // As in dp-accounting: the KL bound already gives delta 1.
        assert_eq!(accountant.epsilon(1.0), 0.0);
        assert!(accountant.epsilon(1e-3) < accountant.epsilon(1e-5));
    }

    #[test]
    fn check_names_the_bad_input() {
        assert_eq!(check(0.01, 1.1, 1e-5), Ok(()));
        assert_eq!(check(0.0, 0.0, 0.5), Ok(()));
        assert_eq!(check(1.0, f64::INFINITY, 1e-12), Ok(()));
        for q in [-0.1, 1.01, f64::NAN] {
            assert_eq!(
                check(q, 1.0, 1e-5),
                Err("sampling rate q must be in [0, 1]")
            );
        }
        for sigma in [-1.0, f64::NAN] {
            assert_eq!(
                check(0.1, sigma, 1e-5),
                Err("noise multiplier must be >= 0")
            );
        }
        for delta in [0.0, 1.0, -1e-5, f64::NAN] {
            assert_eq!(check(0.1, 1.0, delta), Err("delta must be in (0, 1)"));
        }
    }

    #[test]
    fn survives_the_store_format() {
        for accountant in [spent(0.01, 1.0, 100), spent(0.5, 0.0, 1)] {
            let bytes = postcard::to_stdvec(&accountant).expect("serializes");
            let back: RdpAccountant = postcard::from_bytes(&bytes).expect("deserializes");
            assert_eq!(back, accountant);
        }
    }

    /// Values from scipy 1.17.1 (`scipy.special.erfc`, `erfcx`, `gammaln`)
    /// and dp-accounting 0.6.0 (`_log_erfc`); each also agrees with mpmath
    /// at 40 digits to 6e-16 or better.
    fn assert_matches(name: &str, f: fn(f64) -> f64, cases: &[(f64, f64)]) {
        for &(x, want) in cases {
            let got = f(x);
            assert!(
                relative_error(got, want) < 1e-14,
                "{name}({x}) = {got}, reference {want}"
            );
        }
    }

    #[test]
    fn erfc_matches_scipy() {
        assert_matches(
            "erfc",
            special::erfc,
            &[
                (-3.0, 1.9999779095030015),
                (-0.5, 1.5204998778130465),
                (0.0, 1.0),
                (0.1, 0.8875370839817152),
                (0.46875, 0.507386526782062),
                (0.5, 0.4795001221869535),
                (1.0, 0.15729920705028516),
                (2.0, 0.004677734981047266),
                (4.0, 1.541725790028002e-08),
                (5.0, 1.5374597944280347e-12),
                (10.0, 2.0884875837625446e-45),
                (20.0, 5.395865611607901e-176),
            ],
        );
    }

    #[test]
    fn erfcx_matches_scipy() {
        assert_matches(
            "erfcx",
            special::erfcx,
            &[
                (0.5, 0.6156903441929258),
                (1.0, 0.427583576155807),
                (3.0, 0.17900115118138998),
                (5.0, 0.11070463773306861),
                (30.0, 0.018795888861416754),
                (1000.0, 0.0005641893014533876),
                (1e8, 5.641895835477563e-09),
            ],
        );
    }

    #[test]
    fn log_erfc_matches_dp_accounting() {
        assert_matches(
            "log_erfc",
            special::log_erfc,
            &[
                (-10.0, std::f64::consts::LN_2),
                (-1.0, 0.6112323176780705),
                (0.5, -0.7350111298370848),
                (1.0, -1.849605509933249),
                (3.0, -10.720363041981116),
                (10.0, -102.87988902484493),
                (100.0, -10005.177585122668),
                (1e4, -100000009.78270535),
            ],
        );
    }

    #[test]
    fn ln_gamma_matches_scipy() {
        assert_matches(
            "ln_gamma",
            special::ln_gamma,
            &[
                (0.5, 0.5723649429247),
                (2.5, 0.2846828704729192),
                (11.9, 17.25847745059552),
                (101.0, 363.73937555556347),
                (1025.0, 6078.211884750051),
                (-33.7, -86.16317205615782),
                (-494.7, -2577.0592335734027),
                (-987.1, -5820.776120730302),
            ],
        );
        assert_eq!(special::ln_gamma(-3.0), f64::INFINITY);
        assert_eq!(special::ln_gamma(-40.0), f64::INFINITY);
    }
}
