//! Spend per purchase: the Gamma-Gamma model (Fader and Hardie 2013, "The
//! Gamma-Gamma model of monetary value"), the usual companion of BG/NBD.
//!
//! A customer's purchases have values that are Gamma(`p`, `nu`) around
//! the customer's own mean, and `nu` is Gamma(`q`, `gamma`) across
//! customers. Fitted on the customers with at least one repeat purchase
//! (their count `x` and the mean value `mean` of those repeat purchases),
//! it gives each customer's expected spend per purchase, shrunk from their
//! own mean towards the cohort's in proportion to how little we know.
//! Multiplied by BG/NBD's expected purchases it gives expected revenue.

use crate::bgnbd::nelder_mead;
use libm::lgamma;

/// One customer's repeat purchases: how many, and their mean value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spend {
    /// Repeat purchases (more than zero for the fit).
    pub x: f64,
    /// Mean value of those purchases.
    pub mean: f64,
}

/// Fitted Gamma-Gamma parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GammaGamma {
    /// Shape of the Gamma distribution of one customer's purchase values.
    pub p: f64,
    /// Shape of the Gamma distribution of `nu` across customers.
    pub q: f64,
    /// Scale of the Gamma distribution of `nu` across customers.
    pub gamma: f64,
}

impl GammaGamma {
    /// The log-likelihood of one customer's mean (the note's equation 3,
    /// the density of the mean of `x` values).
    pub fn log_likelihood_one(&self, s: &Spend) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        let Spend { x, mean } = *s;
        let px = p * x;
        lgamma(px + q) - lgamma(px) - lgamma(q)
            + q * gamma.ln()
            + (px - 1.0) * mean.ln()
            + px * x.ln()
            - (px + q) * (gamma + mean * x).ln()
    }

    /// The log-likelihood of a cohort.
    pub fn log_likelihood(&self, cohort: &[Spend]) -> f64 {
        cohort.iter().map(|s| self.log_likelihood_one(s)).sum()
    }

    /// The maximum-likelihood parameters over the customers with at least
    /// one repeat purchase and a positive mean (the others carry no
    /// information about spend); `None` when there are none.
    pub fn fit(cohort: &[Spend]) -> Option<GammaGamma> {
        let used: Vec<Spend> = cohort
            .iter()
            .copied()
            .filter(|s| s.x > 0.0 && s.mean > 0.0)
            .collect();
        if used.is_empty() {
            return None;
        }
        let of = |l: &[f64; 3]| GammaGamma {
            p: l[0].exp(),
            q: l[1].exp(),
            gamma: l[2].exp(),
        };
        let cost = |l: &[f64; 3]| {
            let ll = of(l).log_likelihood(&used);
            if ll.is_finite() { -ll } else { f64::INFINITY }
        };
        Some(of(&nelder_mead(cost, [0.0; 3], 1.0, 1e-12, 10_000)))
    }

    /// The expected value of a customer's next purchase (the note's
    /// equation 5); for a customer without repeat purchases, the cohort's
    /// mean `p * gamma / (q - 1)`.
    pub fn expected_spend(&self, s: &Spend) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        let (x, mean) = if s.x > 0.0 { (s.x, s.mean) } else { (0.0, 0.0) };
        p * (gamma + mean * x) / (p * x + q - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_is_shrunk_towards_the_cohort_mean() {
        let m = GammaGamma {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let population = m.expected_spend(&Spend { x: 0.0, mean: 0.0 });
        assert!((population - 6.25 * 15.44 / 2.74).abs() < 1e-9);
        // One purchase of 100 says less than ten purchases averaging 100.
        let one = m.expected_spend(&Spend {
            x: 1.0,
            mean: 100.0,
        });
        let ten = m.expected_spend(&Spend {
            x: 10.0,
            mean: 100.0,
        });
        assert!(population < one && one < ten && ten < 100.0, "{one} {ten}");
    }

    #[test]
    fn the_fit_recovers_the_parameters_of_simulated_spend() {
        // Means of x Gamma(p, nu) values, with nu ~ Gamma(q, gamma), drawn
        // by a fixed generator; the fit must land near the truth.
        let (p, q, gamma) = (4.0, 3.0, 20.0);
        let mut seed = 7u64;
        let mut uniform = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        // Gamma(k, 1) for integer k as a sum of exponentials.
        let mut gamma_int = |k: u32| (0..k).map(|_| -uniform().ln()).sum::<f64>();
        let cohort: Vec<Spend> = (0..4_000)
            .map(|i| {
                let x = f64::from(1 + i % 6);
                let nu = gamma_int(q as u32) / gamma;
                let total: f64 = gamma_int((p * x) as u32) / nu;
                Spend { x, mean: total / x }
            })
            .collect();
        let m = GammaGamma::fit(&cohort).unwrap();
        for (got, truth) in [(m.p, p), (m.q, q), (m.gamma, gamma)] {
            assert!((got - truth).abs() / truth < 0.15, "{m:?}");
        }
    }
}
