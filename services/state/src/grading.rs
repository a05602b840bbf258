//! Grading (the 档位 of tobacco retail): retailers ranked within their
//! region, key customers marked, each classed potential or mature, with the
//! reason stored next to every label.
//!
//! # Rules
//!
//! - **Grade**: `profiles.grades` tiles (30 by default) of the region's
//!   `rolling_sales`; the top grade is the number of grades. A retailer's
//!   grade is one more than how many tiles of the region sell strictly less,
//!   so retailers with equal sales share a grade.
//! - **Key customer**: any of `profiles.key_rules` holds (each a set of
//!   bounds on profile fields, `grade` included); the reason names the rule
//!   and the values it saw.
//! - **Potential** when growing (`trend` at least `profiles.potential_trend`
//!   per cycle) or under-served (fewer SKUs than `profiles.underserved_ratio`
//!   times the region's median); otherwise **mature** (stable or declining,
//!   and broad). The reason gives the figures.
//!
//! Grading runs over all retailers' current profiles at once (a ranking is
//! a whole-region fact); [`changes`] compares two gradings, and the worker
//! publishes each change as an event.

use std::collections::{BTreeMap, HashMap};

use marktwin_core::config::{KeyRule, ProfilesConfig};

use crate::retailer_profile::Profile;
use crate::rfm::tile;

/// Potential or mature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Growing or under-served.
    Potential,
    /// Stable and broad.
    Mature,
}

impl Class {
    /// The name in tables and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Potential => "potential",
            Class::Mature => "mature",
        }
    }
}

/// One retailer's grading.
#[derive(Clone, Debug, PartialEq)]
pub struct Graded {
    /// Retailer id.
    pub retailer: String,
    /// Region.
    pub region: String,
    /// 1 (lowest) to the number of grades.
    pub grade: u32,
    /// The name and figures of the first key rule that holds.
    pub key: Option<String>,
    /// Potential or mature.
    pub class: Class,
    /// Why that class.
    pub class_reason: String,
}

/// A change of grade or class.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Retailer id.
    pub retailer: String,
    /// Grade before (`None` for a retailer graded the first time).
    pub from_grade: Option<u32>,
    /// Grade now.
    pub to_grade: u32,
    /// Class before.
    pub from_class: Option<Class>,
    /// Class now.
    pub to_class: Class,
}

/// The value of profile field `field` (one of
/// [`marktwin_core::config::PROFILE_FIELDS`]).
fn field(p: &Profile, grade: u32, field: &str) -> f64 {
    match field {
        "grade" => f64::from(grade),
        "qty_per_cycle" => p.qty_per_cycle,
        "amount_per_order" => p.amount_per_order,
        "orders_per_cycle" => p.orders_per_cycle,
        "order_gap_days" => p.order_gap_days,
        "order_gap_cv" => p.order_gap_cv,
        "sku_count" => f64::from(p.sku_count),
        "sku_hhi" => p.sku_hhi,
        "top_brand_share" => p.top_brand_share,
        "competitor_share" => p.competitor_share,
        "trend" => p.trend,
        "rolling_sales" => p.rolling_sales,
        // The config refuses other names.
        other => unreachable!("profile field `{other}` passed validation"),
    }
}

/// The reason of the first rule in `rules` that holds, if any.
fn key_reason(rules: &[KeyRule], p: &Profile, grade: u32) -> Option<String> {
    rules.iter().find_map(|r| {
        let holds = r.all.iter().all(|c| {
            let v = field(p, grade, &c.field);
            c.min.is_none_or(|m| v >= m) && c.max.is_none_or(|m| v <= m)
        });
        holds.then(|| {
            let seen: Vec<String> = r
                .all
                .iter()
                .map(|c| format!("{} {}", c.field, fmt(field(p, grade, &c.field))))
                .collect();
            format!("{} ({})", r.name, seen.join(", "))
        })
    })
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Grades `profiles` (each with its region) by the rules of `cfg`, in the
/// order given.
pub fn grade(cfg: &ProfilesConfig, profiles: &[(String, Profile)]) -> Vec<Graded> {
    // Per region: sorted sales and the median SKU count.
    let mut regions: BTreeMap<&str, (Vec<f64>, Vec<u32>)> = BTreeMap::new();
    for (region, p) in profiles {
        let r = regions.entry(region).or_default();
        r.0.push(p.rolling_sales);
        r.1.push(p.sku_count);
    }
    let regions: HashMap<&str, (Vec<f64>, f64)> = regions
        .into_iter()
        .map(|(name, (mut sales, mut skus))| {
            sales.sort_by(f64::total_cmp);
            skus.sort_unstable();
            let n = skus.len();
            let median = if n % 2 == 1 {
                f64::from(skus[n / 2])
            } else {
                (f64::from(skus[n / 2 - 1]) + f64::from(skus[n / 2])) / 2.0
            };
            (name, (sales, median))
        })
        .collect();
    profiles
        .iter()
        .map(|(region, p)| {
            let (sales, median_skus) = &regions[region.as_str()];
            let grade = tile(sales, p.rolling_sales, cfg.grades);
            let under = f64::from(p.sku_count) < cfg.underserved_ratio * median_skus;
            let (class, class_reason) = if p.trend >= cfg.potential_trend {
                (
                    Class::Potential,
                    format!(
                        "growing {:+.1} % per cycle (potential from {:.1} %)",
                        100.0 * p.trend,
                        100.0 * cfg.potential_trend
                    ),
                )
            } else if under {
                (
                    Class::Potential,
                    format!(
                        "under-served: {} SKUs, region median {median_skus}",
                        p.sku_count
                    ),
                )
            } else {
                (
                    Class::Mature,
                    format!(
                        "{} {:+.1} % per cycle, broad: {} SKUs, region median {median_skus}",
                        if p.trend < -cfg.potential_trend {
                            "declining"
                        } else {
                            "stable"
                        },
                        100.0 * p.trend,
                        p.sku_count
                    ),
                )
            };
            Graded {
                retailer: p.retailer.clone(),
                region: region.clone(),
                grade,
                key: key_reason(&cfg.key_rules, p, grade),
                class,
                class_reason,
            }
        })
        .collect()
}

/// The retailers whose grade or class differs between `before` and `now`
/// (new retailers included), in the order of `now`.
pub fn changes(before: &[Graded], now: &[Graded]) -> Vec<Change> {
    let before: HashMap<&str, &Graded> = before.iter().map(|g| (g.retailer.as_str(), g)).collect();
    now.iter()
        .filter_map(|g| {
            let b = before.get(g.retailer.as_str());
            let same = b.is_some_and(|b| b.grade == g.grade && b.class == g.class);
            (!same).then(|| Change {
                retailer: g.retailer.clone(),
                from_grade: b.map(|b| b.grade),
                to_grade: g.grade,
                from_class: b.map(|b| b.class),
                to_class: g.class,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retailer_profile::Source;

    fn profile(retailer: &str, sales: f64, skus: u32, trend: f64) -> Profile {
        Profile {
            retailer: retailer.into(),
            source: Source::Orders,
            cycle_start_day: 0,
            cycles: 13,
            qty_per_cycle: sales / 10.0,
            amount_per_order: 0.0,
            orders_per_cycle: 1.0,
            order_gap_days: 7.0,
            order_gap_cv: 0.0,
            sku_count: skus,
            sku_hhi: 0.1,
            top_brand: String::new(),
            top_brand_share: 0.0,
            competitor_share: 0.0,
            trend,
            rolling_sales: sales,
            p_alive: 1.0,
            churn_risk: 0.0,
            brand_mix: Vec::new(),
            band_mix: Vec::new(),
        }
    }

    #[test]
    fn grades_rank_within_the_region_and_classes_give_reasons() {
        let cfg = ProfilesConfig::default();
        // 60 retailers in north with sales 1..=60, two tied at the top;
        // one retailer alone in south.
        let mut ps: Vec<(String, Profile)> = (1..=60)
            .map(|i| {
                (
                    "north".to_owned(),
                    profile(&format!("n{i}"), f64::from(i.min(59)), 20, 0.0),
                )
            })
            .collect();
        ps.push(("south".into(), profile("s1", 5.0, 3, 0.1)));
        ps[0].1.sku_count = 5; // under-served
        ps[10].1.trend = -0.05;
        let g = grade(&cfg, &ps);
        assert_eq!((g[0].grade, g[1].grade, g[2].grade), (1, 1, 2));
        assert_eq!((g[58].grade, g[59].grade), (30, 30), "ties share a grade");
        assert_eq!(g[60].grade, 1, "alone in its region");
        assert!(
            g[58]
                .key
                .as_deref()
                .unwrap()
                .starts_with("top grades (grade 30)")
        );
        assert!(g[20].key.is_none());
        assert_eq!(g[0].class, Class::Potential);
        assert!(
            g[0].class_reason
                .contains("under-served: 5 SKUs, region median 20"),
            "{}",
            g[0].class_reason
        );
        assert_eq!(g[60].class, Class::Potential);
        assert!(g[60].class_reason.starts_with("growing +10.0 %"));
        assert_eq!(g[5].class, Class::Mature);
        assert!(g[10].class_reason.starts_with("declining"));

        // Retailer n3 overtakes n59 and n60; the changes name all three.
        ps[2].1.rolling_sales = 100.0;
        let again = grade(&cfg, &ps);
        let ch = changes(&g, &again);
        let who: Vec<&str> = ch.iter().map(|c| c.retailer.as_str()).collect();
        assert!(who.contains(&"n3"), "{who:?}");
        let n3 = ch.iter().find(|c| c.retailer == "n3").unwrap();
        assert_eq!((n3.from_grade, n3.to_grade), (Some(2), 30));
        assert!(changes(&again, &again).is_empty());
    }
}
