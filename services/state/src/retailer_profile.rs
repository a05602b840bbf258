//! Retailer profiles per order cycle, from allocation orders and POS.
//!
//! Lines are kept by natural key (order and line number, per retailer and
//! source) for the profile window, so a line sent again changes nothing and
//! a corrected one replaces its earlier version: a profile depends on which
//! lines arrived, never on their order. Lines older than the window are
//! forgotten by [`RetailerProfiles::evict`].
//!
//! # Figures (per retailer and source, over the window)
//!
//! The window is the `window_cycles` cycles up to the current one, the
//! cycle of the newest line the state has seen (event time, so a silent
//! retailer's figures fall as the others move on). Cycles are
//! `cycle_days` long, counted from Monday 1970-01-05.
//!
//! - `qty_per_cycle`, `orders_per_cycle`: totals over the cycles since the
//!   retailer's first line, at most the window;
//! - `amount_per_order`: amount over distinct orders;
//! - `order_gap_days`, `order_gap_cv`: mean and coefficient of variation of
//!   the gaps between distinct order days (the cycle the retailer really
//!   keeps, and how regular it is; 0 when fewer than two gaps);
//! - `sku_count`, `sku_hhi`: distinct SKUs, and the Herfindahl index of
//!   their quantity shares (1 = a single SKU);
//! - `top_brand`, `top_brand_share`, `competitor_share`: quantity shares by
//!   brand (`profiles.brands`); competitor share is the share of known
//!   brands not in `profiles.own_brands`;
//! - `trend`: least-squares slope of quantity over the last `trend_cycles`
//!   complete cycles, divided by their mean (growth per cycle; 0 without
//!   sales);
//! - `rolling_sales`: amount over the last `grade_cycles` cycles, the
//!   current one included, which grading ranks by.
//!
//! The mix by brand and by price band (`profiles.price_bands` on the unit
//! price, amount / quantity) is a second table, one row per share.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use marktwin_core::config::ProfilesConfig;

use crate::bgnbd::BgNbd;
use crate::intern::Interner;
use crate::retention::{Activity, Retention};

/// Where a line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An allocation order line (what the retailer buys from us).
    Orders,
    /// A POS line (what the retailer sells).
    Pos,
}

impl Source {
    /// The name in tables and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Orders => "orders",
            Source::Pos => "pos",
        }
    }

    /// The source grading and activity read (`profiles.grade_source`).
    pub fn graded(cfg: &ProfilesConfig) -> Source {
        if cfg.grade_source == Source::Pos.as_str() {
            Source::Pos
        } else {
            Source::Orders
        }
    }
}

/// One order or POS line, as the profile needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    /// Retailer (store) id.
    pub retailer: &'a str,
    /// Orders or POS.
    pub source: Source,
    /// Order (or receipt) id.
    pub order: &'a str,
    /// Line number within the order.
    pub line_no: u32,
    /// Day of the order, days since 1970-01-01.
    pub day: i32,
    /// SKU code.
    pub sku: &'a str,
    /// Quantity, in the reporting unit.
    pub quantity: f64,
    /// Amount.
    pub amount: f64,
}

/// A kept line as saved in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SavedLine<'a> {
    /// Day, days since 1970-01-01.
    pub day: i32,
    /// SKU code.
    pub sku: &'a str,
    /// Quantity.
    pub quantity: f64,
    /// Amount.
    pub amount: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Kept {
    day: i32,
    sku: u32,
    quantity: f64,
    amount: f64,
}

/// The lines of one retailer and source.
#[derive(Clone, Debug, Default)]
struct Book {
    lines: HashMap<(Arc<str>, u32), Kept>,
    first_day: i32,
}

/// What [`RetailerProfiles::add`] did with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// A line not seen before.
    New,
    /// It replaced a different line with its key (a correction).
    Replaced,
    /// The same line again: nothing changed.
    Same,
    /// Older than the window: refused.
    TooOld,
}

/// One retailer's profile for one source.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Retailer id.
    pub retailer: String,
    /// Orders or POS.
    pub source: Source,
    /// First day of the current cycle (days since 1970-01-01).
    pub cycle_start_day: i32,
    /// Cycles the figures are over.
    pub cycles: u32,
    /// Quantity per cycle.
    pub qty_per_cycle: f64,
    /// Amount per distinct order.
    pub amount_per_order: f64,
    /// Distinct orders per cycle.
    pub orders_per_cycle: f64,
    /// Mean days between distinct order days.
    pub order_gap_days: f64,
    /// Coefficient of variation of those gaps.
    pub order_gap_cv: f64,
    /// Distinct SKUs.
    pub sku_count: u32,
    /// Herfindahl index of SKU quantity shares.
    pub sku_hhi: f64,
    /// Brand with the largest quantity share.
    pub top_brand: String,
    /// Its share.
    pub top_brand_share: f64,
    /// Share of known brands that are not ours.
    pub competitor_share: f64,
    /// Growth per cycle over the trend cycles.
    pub trend: f64,
    /// Amount over the grading cycles.
    pub rolling_sales: f64,
    /// Probability that the retailer is still active (BG/NBD over its
    /// active cycles; NaN before the first fit).
    pub p_alive: f64,
    /// Probability of no order in the next `profiles.churn_horizon_cycles`
    /// cycles (NaN before the first fit).
    pub churn_risk: f64,
    /// Quantity shares by brand, largest first.
    pub brand_mix: Vec<(String, f64)>,
    /// Quantity shares by price band, in band order.
    pub band_mix: Vec<(String, f64)>,
}

/// Profiles of the retailers of one partition.
#[derive(Clone, Debug)]
pub struct RetailerProfiles {
    cfg: Arc<ProfilesConfig>,
    /// The source whose lines count as activity (`profiles.grade_source`).
    graded: Source,
    skus: Interner,
    retailers: Interner,
    books: HashMap<(u32, Source), Book>,
    newest_day: Option<i32>,
    /// Active cycles per retailer, of the grading source's lines.
    activity: Activity,
    /// BG/NBD on the activity, and the cycle it was fitted at.
    fitted: Option<(i32, BgNbd)>,
    /// The first cycle of the window at the last eviction.
    evicted_to: i32,
}

/// Days from 1970-01-01 (a Thursday) to the first Monday.
const MONDAY: i32 = 4;

impl RetailerProfiles {
    /// Empty.
    pub fn new(cfg: Arc<ProfilesConfig>) -> Self {
        let graded = Source::graded(&cfg);
        RetailerProfiles {
            cfg,
            graded,
            skus: Interner::default(),
            retailers: Interner::default(),
            books: HashMap::new(),
            newest_day: None,
            activity: Activity::new(),
            fitted: None,
            evicted_to: i32::MIN,
        }
    }

    /// The cycle a day falls in.
    pub fn cycle_of(&self, day: i32) -> i32 {
        (day - MONDAY).div_euclid(self.cfg.cycle_days as i32)
    }

    /// The first day of a cycle.
    pub fn cycle_start(&self, cycle: i32) -> i32 {
        cycle * self.cfg.cycle_days as i32 + MONDAY
    }

    /// Keeps a line, replacing an earlier line with its key; a line older
    /// than the window can no longer change anything and is refused.
    pub fn add(&mut self, l: &Line<'_>) -> Added {
        if let Some(newest) = self.newest_day
            && self.cycle_of(l.day) <= self.cycle_of(newest) - self.cfg.window_cycles as i32
        {
            return Added::TooOld;
        }
        self.newest_day = Some(self.newest_day.map_or(l.day, |d| d.max(l.day)));
        let sku = self.skus.id(l.sku);
        let retailer = self.retailers.id(l.retailer);
        let book = self
            .books
            .entry((retailer, l.source))
            .or_insert_with(|| Book {
                lines: HashMap::new(),
                first_day: l.day,
            });
        book.first_day = book.first_day.min(l.day);
        let kept = Kept {
            day: l.day,
            sku,
            quantity: l.quantity,
            amount: l.amount,
        };
        let added = match book.lines.insert((Arc::from(l.order), l.line_no), kept) {
            None => Added::New,
            Some(old) if old == kept => Added::Same,
            Some(_) => Added::Replaced,
        };
        if l.source == self.graded {
            let cycle = self.cycle_of(l.day);
            self.activity.mark(retailer, cycle);
        }
        added
    }

    /// Forgets lines older than the window, and refits the churn model
    /// when a new cycle began since the last fit.
    pub fn evict(&mut self) {
        let Some(newest) = self.newest_day else {
            return;
        };
        let now = self.cycle_of(newest);
        if self.fitted.is_none_or(|(at, _)| at != now) {
            self.fitted = self.activity.fit(now).map(|m| (now, m));
        }
        // Lines leave only when the window moves on: a new cycle began.
        let oldest = now - self.cfg.window_cycles as i32 + 1;
        if oldest == self.evicted_to {
            return;
        }
        self.evicted_to = oldest;
        let first_day = self.cycle_start(oldest);
        for book in self.books.values_mut() {
            book.lines.retain(|_, k| k.day >= first_day);
        }
    }

    /// Lines held.
    pub fn lines(&self) -> usize {
        self.books.values().map(|b| b.lines.len()).sum()
    }

    /// Every retailer's profile, ordered by retailer and source.
    pub fn profiles(&self) -> Vec<Profile> {
        let mut keys: Vec<(&str, Source, u32)> = self
            .books
            .keys()
            .map(|(r, s)| (self.retailers.name(*r), *s, *r))
            .collect();
        keys.sort();
        keys.into_iter()
            .map(|(name, source, id)| self.profile_of(name, id, source, &self.books[&(id, source)]))
            .collect()
    }

    /// Retention of the retailers by cohort of `cohort_cycles` cycles, up
    /// to the current cycle.
    pub fn cohorts(&self, cohort_cycles: i32) -> Vec<Retention> {
        match self.newest_day {
            Some(d) => self.activity.cohorts(cohort_cycles, self.cycle_of(d)),
            None => Vec::new(),
        }
    }

    /// Every kept line, for a checkpoint: (retailer, source, order, line
    /// number, line), ordered by retailer, source, order and line.
    pub fn saved_lines(&self) -> Vec<(&str, Source, &str, u32, SavedLine<'_>)> {
        let mut out = Vec::with_capacity(self.lines());
        for ((r, src), book) in &self.books {
            for ((order, no), k) in &book.lines {
                out.push((
                    self.retailers.name(*r),
                    *src,
                    &**order,
                    *no,
                    SavedLine {
                        day: k.day,
                        sku: self.skus.name(k.sku),
                        quantity: k.quantity,
                        amount: k.amount,
                    },
                ));
            }
        }
        out.sort_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
        out
    }

    /// The first day of each retailer and source, for a checkpoint.
    pub fn saved_firsts(&self) -> Vec<(&str, Source, i32)> {
        let mut firsts: Vec<(&str, Source, i32)> = self
            .books
            .iter()
            .map(|((r, s), b)| (self.retailers.name(*r), *s, b.first_day))
            .collect();
        firsts.sort();
        firsts
    }

    /// Each retailer's active cycles up to the current one, ordered.
    pub fn active_cycles(&self) -> Vec<(&str, i32)> {
        let now = self.newest_day.map_or(i32::MIN, |d| self.cycle_of(d));
        let mut active: Vec<(&str, i32)> = self
            .activity
            .cycles(now)
            .into_iter()
            .map(|(r, c)| (self.retailers.name(r), c))
            .collect();
        active.sort();
        active
    }

    /// Restores what [`Self::saved_lines`], [`Self::saved_firsts`] and
    /// [`Self::active_cycles`] gave.
    pub fn restore_from(
        &mut self,
        lines: impl IntoIterator<Item = (String, Source, String, u32, i32, String, f64, f64)>,
        firsts: impl IntoIterator<Item = (String, Source, i32)>,
        active: impl IntoIterator<Item = (String, i32)>,
    ) {
        for (retailer, source, order, line_no, day, sku, quantity, amount) in lines {
            // Activity comes from its own table, not again from the lines.
            let r = self.retailers.id(&retailer);
            let sku = self.skus.id(&sku);
            self.newest_day = Some(self.newest_day.map_or(day, |d| d.max(day)));
            self.books
                .entry((r, source))
                .or_insert_with(|| Book {
                    lines: HashMap::new(),
                    first_day: day,
                })
                .lines
                .insert(
                    (Arc::from(order.as_str()), line_no),
                    Kept {
                        day,
                        sku,
                        quantity,
                        amount,
                    },
                );
        }
        for (retailer, source, first) in firsts {
            let r = self.retailers.id(&retailer);
            self.books
                .entry((r, source))
                .or_insert_with(|| Book {
                    lines: HashMap::new(),
                    first_day: first,
                })
                .first_day = first;
        }
        for (retailer, cycle) in active {
            let r = self.retailers.id(&retailer);
            self.activity.mark(r, cycle);
        }
    }

    /// The newest day seen.
    pub fn newest_day(&self) -> Option<i32> {
        self.newest_day
    }

    /// Sets the newest day (from a checkpoint).
    pub fn set_newest_day(&mut self, day: Option<i32>) {
        if let Some(d) = day {
            self.newest_day = Some(self.newest_day.map_or(d, |n| n.max(d)));
        }
    }

    fn profile_of(&self, retailer: &str, id: u32, source: Source, book: &Book) -> Profile {
        let cfg = &self.cfg;
        let now = self.cycle_of(self.newest_day.unwrap_or(0));
        let window = cfg.window_cycles as i32;
        let first = self.cycle_of(book.first_day).max(now - window + 1);
        let cycles = (now - first + 1).max(1) as u32;

        let mut per_cycle = vec![(0.0f64, 0.0f64); window as usize];
        let mut orders: HashSet<&str> = HashSet::new();
        let mut days: Vec<i32> = Vec::new();
        let mut by_sku: HashMap<u32, f64> = HashMap::new();
        let mut by_brand: HashMap<&str, f64> = HashMap::new();
        let mut by_band = vec![0.0f64; cfg.price_bands.len() + 1];
        let (mut qty, mut amount) = (0.0, 0.0);
        for ((order, _), k) in &book.lines {
            let c = self.cycle_of(k.day);
            if c < now - window + 1 || c > now {
                continue;
            }
            let slot = &mut per_cycle[(c - (now - window + 1)) as usize];
            slot.0 += k.quantity;
            slot.1 += k.amount;
            qty += k.quantity;
            amount += k.amount;
            orders.insert(order);
            days.push(k.day);
            *by_sku.entry(k.sku).or_default() += k.quantity;
            let sku = self.skus.name(k.sku);
            let brand = cfg.brands.get(sku).map_or("unknown", String::as_str);
            *by_brand.entry(brand).or_default() += k.quantity;
            if k.quantity > 0.0 {
                let price = k.amount / k.quantity;
                let band = cfg.price_bands.partition_point(|t| *t <= price);
                by_band[band] += k.quantity;
            }
        }
        days.sort_unstable();
        days.dedup();
        let gaps: Vec<f64> = days.windows(2).map(|w| f64::from(w[1] - w[0])).collect();
        let (gap_mean, gap_cv) = mean_cv(&gaps);
        let share = |v: f64| if qty > 0.0 { v / qty } else { 0.0 };
        let sku_hhi = by_sku.values().map(|v| share(*v).powi(2)).sum();
        let mut brand_mix: Vec<(String, f64)> = by_brand
            .iter()
            .map(|(b, v)| ((*b).to_owned(), share(*v)))
            .collect();
        brand_mix.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let (top_brand, top_brand_share) = brand_mix.first().cloned().unwrap_or_default();
        let (mut own, mut known) = (0.0, 0.0);
        for (b, v) in &by_brand {
            if *b != "unknown" {
                known += v;
                if cfg.own_brands.iter().any(|o| o == b) {
                    own += v;
                }
            }
        }
        let competitor_share = if known > 0.0 { 1.0 - own / known } else { 0.0 };
        let band_mix = by_band
            .iter()
            .enumerate()
            .map(|(i, v)| (band_label(&cfg.price_bands, i), share(*v)))
            .collect();
        // Trend over complete cycles: those before the current one, within
        // the retailer's life.
        let n_trend = (cfg.trend_cycles as i32).min(now - first);
        let trend_qty: Vec<f64> = (now - n_trend..now)
            .map(|c| per_cycle[(c - (now - window + 1)) as usize].0)
            .collect();
        let (p_alive, churn_risk) = match (self.fitted, self.activity.summary(id, now)) {
            (Some((_, m)), Some(s)) => (
                m.p_alive(&s),
                m.p_no_purchase(&s, f64::from(cfg.churn_horizon_cycles)),
            ),
            _ => (f64::NAN, f64::NAN),
        };
        let grade_from = now - cfg.grade_cycles as i32 + 1;
        let rolling_sales = (grade_from.max(now - window + 1)..=now)
            .map(|c| per_cycle[(c - (now - window + 1)) as usize].1)
            .sum();
        Profile {
            retailer: retailer.to_owned(),
            source,
            cycle_start_day: self.cycle_start(now),
            cycles,
            qty_per_cycle: qty / f64::from(cycles),
            amount_per_order: if orders.is_empty() {
                0.0
            } else {
                amount / orders.len() as f64
            },
            orders_per_cycle: orders.len() as f64 / f64::from(cycles),
            order_gap_days: gap_mean,
            order_gap_cv: gap_cv,
            sku_count: by_sku.len() as u32,
            sku_hhi,
            top_brand,
            top_brand_share,
            competitor_share,
            trend: relative_slope(&trend_qty),
            rolling_sales,
            p_alive,
            churn_risk,
            brand_mix,
            band_mix,
        }
    }
}

/// The label of price band `i` of `thresholds`.
pub fn band_label(thresholds: &[f64], i: usize) -> String {
    match (i.checked_sub(1).map(|j| thresholds[j]), thresholds.get(i)) {
        (None, None) => "all".to_owned(),
        (None, Some(hi)) => format!("<{hi}"),
        (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
        (Some(lo), None) => format!(">={lo}"),
    }
}

/// Mean and coefficient of variation (0 for fewer than two values or a
/// zero mean).
fn mean_cv(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 || mean == 0.0 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / mean)
}

/// Least-squares slope of `y` against 0, 1, 2, … divided by the mean of
/// `y`; 0 for fewer than two points or a zero mean.
pub fn relative_slope(y: &[f64]) -> f64 {
    let n = y.len() as f64;
    if y.len() < 2 {
        return 0.0;
    }
    let mean_y = y.iter().sum::<f64>() / n;
    if mean_y == 0.0 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (v - mean_y);
        sxx += dx * dx;
    }
    sxy / sxx / mean_y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Arc<ProfilesConfig> {
        let mut c = ProfilesConfig {
            price_bands: vec![5.0, 10.0],
            own_brands: vec!["Ours".into()],
            ..ProfilesConfig::default()
        };
        c.brands.insert("A".into(), "Ours".into());
        c.brands.insert("B".into(), "Theirs".into());
        Arc::new(c)
    }

    fn line<'a>(
        order: &'a str,
        line_no: u32,
        day: i32,
        sku: &'a str,
        q: f64,
        amount: f64,
    ) -> Line<'a> {
        Line {
            retailer: "r1",
            source: Source::Orders,
            order,
            line_no,
            day,
            sku,
            quantity: q,
            amount,
        }
    }

    #[test]
    fn a_weekly_retailer_profile() {
        let mut p = RetailerProfiles::new(cfg());
        // Mondays from 1970-01-05 (day 4): one order a week, growing; the
        // last order's line 1 arrives twice.
        for w in 0..10 {
            let day = MONDAY + 7 * w;
            let order = format!("o{w}");
            let q = 10.0 + f64::from(w);
            assert_eq!(p.add(&line(&order, 1, day, "A", q, q * 4.0)), Added::New);
            assert_eq!(p.add(&line(&order, 2, day, "B", 10.0, 120.0)), Added::New);
        }
        assert_eq!(
            p.add(&line("o9", 1, MONDAY + 63, "A", 19.0, 76.0)),
            Added::Same
        );
        assert_eq!(
            p.add(&line("o9", 2, MONDAY + 63, "B", 10.0, 120.0)),
            Added::Same
        );
        let got = p.profiles();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r.cycles, 10);
        assert_eq!(r.cycle_start_day, MONDAY + 63);
        // 10 + … + 19 of A and 10 × 10 of B over 10 cycles.
        assert!((r.qty_per_cycle - 24.5).abs() < 1e-9, "{r:?}");
        assert!((r.orders_per_cycle - 1.0).abs() < 1e-9);
        assert!((r.order_gap_days - 7.0).abs() < 1e-9 && r.order_gap_cv == 0.0);
        assert_eq!(r.sku_count, 2);
        assert_eq!(r.top_brand, "Ours");
        assert!((r.competitor_share - 100.0 / 245.0).abs() < 1e-9);
        // Bands: A at 4 (<5), B at 12 (>=10).
        assert_eq!(r.band_mix[0], ("<5".to_owned(), 145.0 / 245.0));
        assert_eq!(r.band_mix[1].1, 0.0);
        assert_eq!(r.band_mix[2].0, ">=10");
        assert!(r.trend > 0.0);
        // The last 4 cycles' amounts: A 16..19 × 4 + 4 × 120.
        assert!((r.rolling_sales - (4.0 * 70.0 + 480.0)).abs() < 1e-9);
    }

    #[test]
    fn the_order_of_lines_does_not_matter_and_old_lines_are_refused() {
        let lines: Vec<Line> = (0..20)
            .map(|i| {
                line(
                    ["a", "b", "c"][i % 3],
                    i as u32,
                    MONDAY + 3 * i as i32,
                    ["A", "B"][i % 2],
                    1.0 + i as f64,
                    10.0,
                )
            })
            .collect();
        let mut fwd = RetailerProfiles::new(cfg());
        let mut back = RetailerProfiles::new(cfg());
        for l in &lines {
            fwd.add(l);
        }
        for l in lines.iter().rev() {
            back.add(l);
        }
        fwd.evict();
        back.evict();
        assert!(fwd.profiles()[0].churn_risk.is_finite());
        assert_eq!(fwd.profiles(), back.profiles());
        // 13 weekly cycles after the last line, an old line is refused.
        let mut later = fwd.clone();
        later.add(&line("z", 1, MONDAY + 3 * 19 + 7 * 13, "A", 1.0, 1.0));
        assert_eq!(
            later.add(&line("y", 1, MONDAY, "A", 1.0, 1.0)),
            Added::TooOld
        );
        later.evict();
        assert_eq!(later.lines(), 1);
    }

    #[test]
    fn relative_slope_of_a_line() {
        assert!((relative_slope(&[10.0, 11.0, 12.0]) - 1.0 / 11.0).abs() < 1e-12);
        assert_eq!(relative_slope(&[5.0]), 0.0);
        assert_eq!(relative_slope(&[0.0, 0.0]), 0.0);
    }
}
