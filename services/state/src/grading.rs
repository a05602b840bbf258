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
//! a whole-region fact). [`Grades::regrade`] compares a grading with the
//! published grades: a retailer's row is published again only when its
//! grade, class, key mark or region changes, carrying the grade and class
//! before, so every row on the topic is a change event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, BooleanArray, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::config::{KeyRule, ProfilesConfig};

use crate::error::Result;
use crate::record::{Cols, build, strings, ts, ts_field};
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

    /// The class named `name`.
    pub fn parse(name: &str) -> Option<Class> {
        match name {
            "potential" => Some(Class::Potential),
            "mature" => Some(Class::Mature),
            _ => None,
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

/// The published table of grades, one row per graded retailer.
pub const GRADES_TABLE: &str = "retailer_grades";
/// Its key column.
pub const GRADES_KEY: &[&str] = &["retailer_id"];

/// A retailer's labels as published: set by the grading that last changed
/// one of them, with the reasons of that grading and the grade and class
/// before it. A row changes only when the grade, the class, the key mark or
/// the region does, so each published row is a change event.
#[derive(Clone, Debug, PartialEq)]
pub struct GradeRow {
    /// Retailer id.
    pub retailer: String,
    /// Region.
    pub region: String,
    /// 1 (lowest) to the number of grades.
    pub grade: u32,
    /// Why the retailer is a key customer; `None` if it is not one.
    pub key_reason: Option<String>,
    /// Potential or mature.
    pub class: Class,
    /// Why that class.
    pub class_reason: String,
    /// The grade before the last change of grade or class (`None` for a
    /// retailer graded once).
    pub previous_grade: Option<u32>,
    /// The class before it.
    pub previous_class: Option<Class>,
    /// When the grade or class last changed, ms since epoch.
    pub changed_at_ms: i64,
}

/// What a grading changes in the published grades.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regraded {
    /// New and changed rows.
    pub rows: Vec<GradeRow>,
    /// Retailers no longer graded (no profile left).
    pub gone: Vec<String>,
}

impl Regraded {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.gone.is_empty()
    }
}

/// The published grades, by retailer.
#[derive(Clone, Debug, Default)]
pub struct Grades {
    rows: HashMap<String, GradeRow>,
}

impl Grades {
    /// Retailers graded.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no retailer is graded.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = &GradeRow> {
        self.rows.values()
    }

    /// A retailer's row.
    pub fn get(&self, retailer: &str) -> Option<&GradeRow> {
        self.rows.get(retailer)
    }

    /// What grading `now` (from [`grade`], at `at_ms`) changes.
    pub fn regrade(&self, now: &[Graded], at_ms: i64) -> Regraded {
        let mut out = Regraded::default();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for g in now {
            seen.insert(&g.retailer);
            let before = self.rows.get(&g.retailer);
            if let Some(b) = before {
                let same = b.grade == g.grade
                    && b.class == g.class
                    && b.key_reason.is_some() == g.key.is_some()
                    && b.region == g.region;
                if same {
                    continue;
                }
            }
            let moved = before.is_some_and(|b| b.grade != g.grade || b.class != g.class);
            let (previous_grade, previous_class, changed_at_ms) = match before {
                Some(b) if moved => (Some(b.grade), Some(b.class), at_ms),
                Some(b) => (b.previous_grade, b.previous_class, b.changed_at_ms),
                None => (None, None, at_ms),
            };
            out.rows.push(GradeRow {
                retailer: g.retailer.clone(),
                region: g.region.clone(),
                grade: g.grade,
                key_reason: g.key.clone(),
                class: g.class,
                class_reason: g.class_reason.clone(),
                previous_grade,
                previous_class,
                changed_at_ms,
            });
        }
        out.gone = self
            .rows
            .keys()
            .filter(|r| !seen.contains(r.as_str()))
            .cloned()
            .collect();
        out.gone.sort_unstable();
        out
    }

    /// Takes in what [`Grades::regrade`] found, once it is published.
    pub fn apply(&mut self, r: Regraded) {
        for g in r.gone {
            self.rows.remove(&g);
        }
        for row in r.rows {
            self.rows.insert(row.retailer.clone(), row);
        }
    }

    /// The table schema.
    pub fn schema() -> SchemaRef {
        let utf8 = |n: &str, null| Field::new(n, DataType::Utf8, null);
        Arc::new(Schema::new(vec![
            utf8("retailer_id", false),
            utf8("region", false),
            Field::new("grade", DataType::UInt32, false),
            Field::new("key_customer", DataType::Boolean, false),
            utf8("key_reason", true),
            utf8("class", false),
            utf8("class_reason", false),
            Field::new("previous_grade", DataType::UInt32, true),
            utf8("previous_class", true),
            ts_field("changed_at", false),
        ]))
    }

    /// `rows` as one batch of [`Grades::schema`].
    pub fn to_batch(rows: &[GradeRow]) -> Result<RecordBatch> {
        build(
            GRADES_TABLE,
            &Self::schema(),
            vec![
                strings(rows.iter().map(|r| r.retailer.as_str())),
                strings(rows.iter().map(|r| r.region.as_str())),
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.grade))),
                Arc::new(BooleanArray::from_iter(
                    rows.iter().map(|r| Some(r.key_reason.is_some())),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter().map(|r| r.key_reason.as_deref()),
                )),
                strings(rows.iter().map(|r| r.class.as_str())),
                strings(rows.iter().map(|r| r.class_reason.as_str())),
                Arc::new(UInt32Array::from_iter(
                    rows.iter().map(|r| r.previous_grade),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter().map(|r| r.previous_class.map(Class::as_str)),
                )),
                ts(rows.iter().map(|r| r.changed_at_ms).collect()),
            ],
        )
    }

    /// The grades in batches of [`Grades::schema`] (a view of the table).
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Self> {
        let mut g = Grades::default();
        for b in batches {
            let c = Cols::table(GRADES_TABLE, b);
            let (id, region, grade, key, class, why, pg, pc, at) = (
                c.get::<StringArray>("retailer_id")?,
                c.get::<StringArray>("region")?,
                c.get::<UInt32Array>("grade")?,
                c.get::<StringArray>("key_reason")?,
                c.get::<StringArray>("class")?,
                c.get::<StringArray>("class_reason")?,
                c.get::<UInt32Array>("previous_grade")?,
                c.get::<StringArray>("previous_class")?,
                c.get::<TimestampMillisecondArray>("changed_at")?,
            );
            let class_of = |v: &str| {
                Class::parse(v)
                    .ok_or_else(|| c.bad(format!("class `{v}` is neither potential nor mature")))
            };
            for i in 0..c.rows() {
                let opt = |a: &'_ StringArray| a.is_valid(i).then(|| a.value(i).to_owned());
                let row = GradeRow {
                    retailer: id.value(i).to_owned(),
                    region: region.value(i).to_owned(),
                    grade: grade.value(i),
                    key_reason: opt(key),
                    class: class_of(class.value(i))?,
                    class_reason: why.value(i).to_owned(),
                    previous_grade: pg.is_valid(i).then(|| pg.value(i)),
                    previous_class: opt(pc).as_deref().map(class_of).transpose()?,
                    changed_at_ms: at.value(i),
                };
                g.rows.insert(row.retailer.clone(), row);
            }
        }
        Ok(g)
    }
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

        // Everyone is new the first time.
        let mut published = Grades::default();
        let first = published.regrade(&g, 1_000);
        assert_eq!(first.rows.len(), 61);
        assert!(first.rows.iter().all(|r| r.previous_grade.is_none()));
        published.apply(first);
        assert!(published.regrade(&g, 2_000).is_empty(), "nothing changed");

        // Retailer n3 overtakes n59 and n60: its row carries the grade
        // before; n1's reason figures move but its labels do not.
        ps[2].1.rolling_sales = 100.0;
        ps[0].1.sku_count = 6;
        ps.pop(); // s1 has no profile any more
        let again = grade(&cfg, &ps);
        let r = published.regrade(&again, 3_000);
        let n3 = r.rows.iter().find(|c| c.retailer == "n3").unwrap();
        assert_eq!((n3.previous_grade, n3.grade), (Some(2), 30));
        assert_eq!(n3.changed_at_ms, 3_000);
        assert!(r.rows.iter().all(|c| c.retailer != "n1"));
        assert_eq!(r.gone, vec!["s1".to_owned()]);
        published.apply(r);
        assert_eq!(published.len(), 60);
        assert!(published.regrade(&again, 4_000).is_empty());

        // The rows survive the table and back.
        let rows: Vec<GradeRow> = published.rows.values().cloned().collect();
        let back = Grades::from_batches(&[Grades::to_batch(&rows).unwrap()]).unwrap();
        assert_eq!(back.rows, published.rows);
    }
}
