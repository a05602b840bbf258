//! Purchase intent: the BG/NBD model (Fader, Hardie and Lee 2005, "Counting
//! your customers the easy way").
//!
//! Each customer is summarised by three numbers in one time unit (weeks by
//! default): `x`, repeat purchases (distinct purchase periods after the
//! first); `t_x`, the time of the last purchase after the first; `t`, the
//! time from the first purchase to the end of the observation. The model
//! has four parameters: purchases follow a Poisson process whose rate is
//! Gamma(`r`, `alpha`) across customers, and after each purchase a
//! customer drops out with a probability that is Beta(`a`, `b`) across
//! customers. From a fit it gives the expected purchases in the next
//! period and the probability that a customer is still active.
//!
//! The fit maximises the log-likelihood of the paper's equation (6) by
//! Nelder-Mead over the logarithms of the parameters. Hand-written (about
//! 60 lines, below): a four-parameter smooth likelihood needs no more, and
//! an optimisation crate would add several crates to the build for this
//! one use.

use libm::lgamma;

/// One customer's summary, in the model's time unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Repeat purchases: distinct purchase periods after the first.
    pub x: f64,
    /// Time of the last purchase, from the first.
    pub t_x: f64,
    /// Time from the first purchase to the end of the observation.
    pub t: f64,
}

impl Summary {
    /// The summary of purchases on `days` (day numbers, any order, repeats
    /// allowed) observed until day `end` inclusive, in units of
    /// `days_per_unit` days (7 for weeks); `None` when no purchase falls on
    /// or before `end`. Purchases on one day count once.
    pub fn from_days(days: &[i32], end: i32, days_per_unit: f64) -> Option<Summary> {
        let mut seen: Vec<i32> = days.iter().copied().filter(|d| *d <= end).collect();
        seen.sort_unstable();
        seen.dedup();
        let (first, last) = (*seen.first()?, *seen.last()?);
        Some(Summary {
            x: (seen.len() - 1) as f64,
            t_x: f64::from(last - first) / days_per_unit,
            t: f64::from(end - first) / days_per_unit,
        })
    }
}

/// Fitted BG/NBD parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BgNbd {
    /// Shape of the Gamma distribution of purchase rates.
    pub r: f64,
    /// Scale (in time units) of the Gamma distribution of purchase rates.
    pub alpha: f64,
    /// First shape of the Beta distribution of drop-out probabilities.
    pub a: f64,
    /// Second shape of the Beta distribution of drop-out probabilities.
    pub b: f64,
}

impl BgNbd {
    /// The log-likelihood of one customer (the paper's equation 6).
    pub fn log_likelihood_one(&self, s: &Summary) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let Summary { x, t_x, t } = *s;
        let a1 = lgamma(r + x) - lgamma(r) + r * alpha.ln();
        let a2 = lgamma(a + b) + lgamma(b + x) - lgamma(b) - lgamma(a + b + x);
        let a3 = -(r + x) * (alpha + t).ln();
        if x > 0.0 {
            let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + t_x).ln();
            let m = a3.max(a4);
            a1 + a2 + m + ((a3 - m).exp() + (a4 - m).exp()).ln()
        } else {
            a1 + a2 + a3
        }
    }

    /// The log-likelihood of a whole cohort.
    pub fn log_likelihood(&self, cohort: &[Summary]) -> f64 {
        cohort.iter().map(|s| self.log_likelihood_one(s)).sum()
    }

    /// The parameters that maximise the cohort's likelihood; `None` for an
    /// empty cohort.
    pub fn fit(cohort: &[Summary]) -> Option<BgNbd> {
        if cohort.is_empty() {
            return None;
        }
        let of = |p: &[f64; 4]| BgNbd {
            r: p[0].exp(),
            alpha: p[1].exp(),
            a: p[2].exp(),
            b: p[3].exp(),
        };
        let cost = |p: &[f64; 4]| {
            let ll = of(p).log_likelihood(cohort);
            if ll.is_finite() { -ll } else { f64::INFINITY }
        };
        // Start where lifetimes starts (all parameters 1), in logs.
        let best = nelder_mead(cost, [0.0; 4], 1.0, 1e-10, 10_000);
        Some(of(&best))
    }

    /// Expected purchases in the next `t` time units of a customer with
    /// summary `s` (the paper's equation 10).
    pub fn expected_purchases(&self, s: &Summary, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let (x, age) = (s.x, s.t);
        let z = t / (alpha + age + t);
        let hyp = hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - ((alpha + age) / (alpha + age + t)).powf(r + x) * hyp;
        // The equation's denominator is 1 / P(alive).
        first * second * self.p_alive(s)
    }

    /// The probability that a customer with summary `s` is still active at
    /// the end of the observation.
    pub fn p_alive(&self, s: &Summary) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let Summary { x, t_x, t } = *s;
        if x == 0.0 {
            return 1.0;
        }
        let ratio = ((alpha + t) / (alpha + t_x)).powf(r + x);
        1.0 / (1.0 + a / (b + x - 1.0) * ratio)
    }
}

impl BgNbd {
    /// The probability that a customer with summary `s` makes no purchase
    /// in the next `t` time units: dropped out already, or still active
    /// and buying nothing in that time at its posterior purchase rate
    /// (Gamma(`r` + x, `alpha` + age)).
    pub fn p_no_purchase(&self, s: &Summary, t: f64) -> f64 {
        let alive = self.p_alive(s);
        let quiet = ((self.alpha + s.t) / (self.alpha + s.t + t)).powf(self.r + s.x);
        (1.0 - alive) + alive * quiet
    }
}

/// Gauss's hypergeometric function 2F1(a, b; c; z) for |z| < 1, by its
/// series.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0, 1.0);
    for n in 0..10_000 {
        let n = f64::from(n);
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

/// Minimises `f` from `start` by Nelder-Mead (reflection 1, expansion 2,
/// contraction and shrink 1/2), with an initial simplex of `step` along
/// each axis, until the spread of the simplex's values is below `tol` or
/// after `max_iter` iterations.
pub(crate) fn nelder_mead<const N: usize>(
    f: impl Fn(&[f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    tol: f64,
    max_iter: usize,
) -> [f64; N] {
    let mut simplex: Vec<([f64; N], f64)> = (0..=N)
        .map(|i| {
            let mut p = start;
            if i > 0 {
                p[i - 1] += step;
            }
            (p, f(&p))
        })
        .collect();
    let along = |from: &[f64; N], to: &[f64; N], k: f64| -> [f64; N] {
        std::array::from_fn(|j| from[j] + k * (to[j] - from[j]))
    };
    for _ in 0..max_iter {
        simplex.sort_by(|x, y| x.1.total_cmp(&y.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        if (worst - best).abs() <= tol * (1.0 + best.abs()) {
            break;
        }
        let centroid: [f64; N] =
            std::array::from_fn(|j| simplex[..N].iter().map(|(p, _)| p[j]).sum::<f64>() / N as f64);
        let w = simplex[N].0;
        let reflected = along(&centroid, &w, -1.0);
        let fr = f(&reflected);
        if fr < best {
            let expanded = along(&centroid, &w, -2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let contracted = if fr < worst {
                along(&centroid, &reflected, 0.5)
            } else {
                along(&centroid, &w, 0.5)
            };
            let fc = f(&contracted);
            if fc < worst.min(fr) {
                simplex[N] = (contracted, fc);
            } else {
                let b = simplex[0].0;
                for (p, v) in simplex.iter_mut().skip(1) {
                    *p = along(&b, p, 0.5);
                    *v = f(p);
                }
            }
        }
    }
    simplex.sort_by(|x, y| x.1.total_cmp(&y.1));
    simplex[0].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_distinct_days_until_the_end() {
        let s = Summary::from_days(&[10, 3, 10, 24, 40], 31, 7.0).unwrap();
        assert_eq!(
            s,
            Summary {
                x: 2.0,
                t_x: 3.0,
                t: 4.0
            }
        );
        assert_eq!(Summary::from_days(&[40], 31, 7.0), None);
    }

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let f = |p: &[f64; 2]| (p[0] - 3.0).powi(2) + 10.0 * (p[1] + 1.0).powi(2);
        let m = nelder_mead(f, [0.0, 0.0], 1.0, 1e-14, 10_000);
        assert!(
            (m[0] - 3.0).abs() < 1e-5 && (m[1] + 1.0).abs() < 1e-5,
            "{m:?}"
        );
    }

    #[test]
    fn a_model_whose_customers_never_leave_is_alive() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        let never = Summary {
            x: 0.0,
            t_x: 0.0,
            t: 30.0,
        };
        assert_eq!(m.p_alive(&never), 1.0);
        // A frequent buyer silent for a long time is probably gone.
        let gone = Summary {
            x: 10.0,
            t_x: 5.0,
            t: 38.0,
        };
        let fresh = Summary {
            x: 10.0,
            t_x: 37.0,
            t: 38.0,
        };
        assert!(m.p_alive(&gone) < 0.1 && m.p_alive(&fresh) > 0.9);
        assert!(m.expected_purchases(&fresh, 10.0) > m.expected_purchases(&gone, 10.0));
    }
}
