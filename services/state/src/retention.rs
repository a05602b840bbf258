//! Retention: cohort retention, churn risk, and the at-risk list.
//!
//! [`Activity`] remembers, per customer (retailer or consumer), the cycles
//! in which it bought: one bit per cycle from its first, so a year of
//! weekly cycles costs a single `u64`. From it:
//!
//! - **Cohort retention**: customers grouped by the cycle of their first
//!   purchase (in cohorts of `cohort_cycles` cycles), and for each later
//!   cycle the share of the cohort that bought in it.
//! - **Churn risk**: the probability that the customer buys nothing in the
//!   next `horizon` cycles, from BG/NBD fitted on the customers' active
//!   cycles (repeat cycles, the last active cycle, age, all in cycles): it
//!   has dropped out, or it is still active and quiet for that long at its
//!   own rate. Not 1 − P(alive) alone: BG/NBD holds a customer without a
//!   repeat purchase alive for certain, and on CDNOW most customers are
//!   such, so that risk would call the one-time buyers safest. A customer
//!   that kept a steady rhythm and then fell silent gets a high risk sooner
//!   than an irregular one.
//! - **At-risk list**: customers whose risk is at least a threshold,
//!   ordered by risk times value (what the caller says a customer is worth,
//!   for example its rolling sales), so an account manager calls the
//!   costliest losses first.

use foldhash::{HashMap, HashMapExt};

use crate::bgnbd::{BgNbd, Summary};

/// The cycles one customer was active in.
#[derive(Clone, Debug, Default, PartialEq)]
struct Active {
    first: i32,
    bits: Vec<u64>,
}

impl Active {
    fn mark(&mut self, cycle: i32) {
        if self.bits.is_empty() {
            self.first = cycle;
        } else if cycle < self.first {
            // An earlier first cycle: re-set every active cycle from it.
            let was: Vec<i32> = (self.first..self.first + 64 * self.bits.len() as i32)
                .filter(|c| self.active(*c))
                .collect();
            self.bits.clear();
            self.first = cycle;
            for c in was {
                self.set(c - cycle);
            }
        }
        self.set(cycle - self.first);
    }

    fn set(&mut self, k: i32) {
        let k = k as usize;
        if self.bits.len() <= k / 64 {
            self.bits.resize(k / 64 + 1, 0);
        }
        self.bits[k / 64] |= 1 << (k % 64);
    }

    fn active(&self, cycle: i32) -> bool {
        let k = cycle - self.first;
        k >= 0
            && self
                .bits
                .get(k as usize / 64)
                .is_some_and(|w| w >> (k as usize % 64) & 1 == 1)
    }

    /// (active cycles, last active cycle), both up to `now`.
    fn up_to(&self, now: i32) -> (u32, i32) {
        let (mut n, mut last) = (0, self.first);
        for c in self.first..=now {
            if self.active(c) {
                n += 1;
                last = c;
            }
        }
        (n, last)
    }
}

/// One cohort's retention in one cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Retention {
    /// First cycle of the cohort.
    pub cohort: i32,
    /// Cycles since the cohort's first cycle.
    pub age: i32,
    /// Customers in the cohort.
    pub size: u32,
    /// Of them, active in that cycle.
    pub active: u32,
}

/// One customer's churn risk.
#[derive(Clone, Debug, PartialEq)]
pub struct Risk {
    /// Customer id.
    pub customer: u32,
    /// Probability of no purchase over the horizon.
    pub risk: f64,
    /// The last cycle it bought in.
    pub last_active: i32,
}

/// The active cycles of every customer.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    customers: HashMap<u32, Active>,
}

impl Activity {
    /// Empty.
    pub fn new() -> Self {
        Activity::default()
    }

    /// Records that `customer` bought in `cycle` (again is harmless).
    pub fn mark(&mut self, customer: u32, cycle: i32) {
        self.customers.entry(customer).or_default().mark(cycle);
    }

    /// Customers known.
    pub fn len(&self) -> usize {
        self.customers.len()
    }

    /// Whether no customer is known.
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }

    /// Every (customer, active cycle) up to `now`, for a checkpoint.
    pub fn cycles(&self, now: i32) -> Vec<(u32, i32)> {
        let mut out = Vec::new();
        for (c, a) in &self.customers {
            for cycle in a.first..=now.min(a.first + 64 * a.bits.len() as i32 - 1) {
                if a.active(cycle) {
                    out.push((*c, cycle));
                }
            }
        }
        out
    }

    /// Retention per cohort (first cycles grouped by `cohort_cycles`,
    /// named by the group's first cycle) and age, up to cycle `now`,
    /// ordered by cohort and age.
    pub fn cohorts(&self, cohort_cycles: i32, now: i32) -> Vec<Retention> {
        let k = cohort_cycles.max(1);
        let mut cells: HashMap<(i32, i32), (u32, u32)> = HashMap::new();
        let mut sizes: HashMap<i32, u32> = HashMap::new();
        for a in self.customers.values().filter(|a| a.first <= now) {
            let cohort = a.first.div_euclid(k) * k;
            *sizes.entry(cohort).or_default() += 1;
            for c in cohort..=now {
                let e = cells.entry((cohort, c - cohort)).or_default();
                e.1 += u32::from(a.active(c));
            }
        }
        let mut out: Vec<Retention> = cells
            .into_iter()
            .map(|((cohort, age), (_, active))| Retention {
                cohort,
                age,
                size: sizes[&cohort],
                active,
            })
            .collect();
        out.sort_by_key(|r| (r.cohort, r.age));
        out
    }

    /// The BG/NBD summary of a customer at cycle `now`, in cycles.
    pub fn summary(&self, customer: u32, now: i32) -> Option<Summary> {
        let a = self.customers.get(&customer)?;
        (a.first <= now).then(|| {
            let (n, last) = a.up_to(now);
            Summary {
                x: f64::from(n.saturating_sub(1)),
                t_x: f64::from(last - a.first),
                t: f64::from(now - a.first),
            }
        })
    }

    /// BG/NBD fitted on every customer's activity up to `now`.
    pub fn fit(&self, now: i32) -> Option<BgNbd> {
        let cohort: Vec<Summary> = self
            .customers
            .keys()
            .filter_map(|c| self.summary(*c, now))
            .collect();
        BgNbd::fit(&cohort)
    }

    /// Every customer's churn risk at `now` over the next `horizon`
    /// cycles under `model`, ordered by customer.
    pub fn risks(&self, model: &BgNbd, now: i32, horizon: f64) -> Vec<Risk> {
        let mut out: Vec<Risk> = self
            .customers
            .iter()
            .filter_map(|(c, a)| {
                let s = self.summary(*c, now)?;
                Some(Risk {
                    customer: *c,
                    risk: model.p_no_purchase(&s, horizon),
                    last_active: a.up_to(now).1,
                })
            })
            .collect();
        out.sort_by_key(|r| r.customer);
        out
    }
}

/// The customers of `risks` at or above `threshold`, with their value from
/// `value` (0 when unknown), costliest expected loss (risk × value) first.
pub fn at_risk(risks: &[Risk], threshold: f64, value: impl Fn(u32) -> f64) -> Vec<(Risk, f64)> {
    let mut out: Vec<(Risk, f64)> = risks
        .iter()
        .filter(|r| r.risk >= threshold)
        .map(|r| (r.clone(), value(r.customer)))
        .collect();
    out.sort_by(|a, b| {
        (b.0.risk * b.1)
            .total_cmp(&(a.0.risk * a.1))
            .then(a.0.customer.cmp(&b.0.customer))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_bits_survive_an_earlier_first_cycle() {
        let mut a = Active::default();
        a.mark(10);
        a.mark(80);
        a.mark(3);
        assert_eq!(a.first, 3);
        assert!(a.active(3) && a.active(10) && a.active(80));
        assert!(!a.active(11) && !a.active(2));
        assert_eq!(a.up_to(50), (2, 10));
    }

    #[test]
    fn cohorts_risk_and_the_at_risk_list() {
        let mut act = Activity::new();
        // Customer 1 buys every cycle from 0; customer 2 bought in 0-5,
        // then stopped; customer 3 joined at cycle 4 and bought twice.
        for c in 0..20 {
            act.mark(1, c);
        }
        for c in 0..6 {
            act.mark(2, c);
        }
        act.mark(3, 4);
        act.mark(3, 9);
        let cohorts = act.cohorts(4, 19);
        let first = cohorts
            .iter()
            .find(|r| r.cohort == 0 && r.age == 3)
            .unwrap();
        assert_eq!((first.size, first.active), (2, 2));
        let later = cohorts
            .iter()
            .find(|r| r.cohort == 0 && r.age == 10)
            .unwrap();
        assert_eq!(later.active, 1);
        let second = cohorts
            .iter()
            .find(|r| r.cohort == 4 && r.age == 5)
            .unwrap();
        assert_eq!((second.size, second.active), (1, 1));

        let m = BgNbd {
            r: 1.0,
            alpha: 1.0,
            a: 1.0,
            b: 3.0,
        };
        let risks = act.risks(&m, 19, 4.0);
        let risk = |c: u32| risks.iter().find(|r| r.customer == c).unwrap().risk;
        assert!(risk(2) > 0.9 && risk(1) < 0.2, "{risks:?}");
        let list = at_risk(&risks, 0.5, |c| f64::from(c) * 100.0);
        assert_eq!(list[0].0.customer, 3, "the costlier loss first: {list:?}");
        assert_eq!(list.len(), 2);
    }
}
