//! The worker's retailer state of one partition number: allocation orders,
//! POS lines and retailer master records, all keyed by retailer id (the
//! `allocation_orders`, `pos` and `retailers` topics are co-partitioned), so
//! one partition holds everything about its retailers.
//!
//! It keeps the [`RetailerProfiles`] of its retailers (see
//! `docs/profiles.md`) and each retailer's region from the master records,
//! and publishes three tables: the profiles, their brand and price-band
//! mix, and the cycles each retailer was active in (from which cohort
//! retention is one query, whichever partitions the retailers are in). Lines are kept by natural key, so a record
//! read twice (a replayed offset, a resent page) changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, StringArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::config::{ProfilesConfig, UnitsConfig};
use marktwin_core::events::{AllocationOrder, EventKind, PosTransaction, Retailer};
use marktwin_core::topics::id;

use crate::error::Result;
use crate::line_twin::days_since_epoch;
use crate::record::{
    Applied, Cols, Rejected, build, ck, decode, finite, float64s, int64s, strings,
};
use crate::retailer_profile::{Added, Line, Profile, RetailerProfiles, Source};
use crate::window::local_day;

/// Input topic ids, in the order [`RetailerState::apply`] numbers them.
pub const INPUTS: [&str; 3] = [id::ALLOCATION_ORDERS, id::POS, id::RETAILERS];
/// Retailer profiles, per retailer and source.
pub const PROFILES_TABLE: &str = "retailer_profiles";
/// Brand and price-band shares per retailer and source.
pub const MIX_TABLE: &str = "retailer_mix";
/// The cycles each retailer was active in (ordered, by the grading
/// source); cohort retention is a query over it (`docs/profiles.md`).
pub const ACTIVITY_TABLE: &str = "retailer_activity";

/// What the retailer state needs from the config.
#[derive(Clone, Debug)]
pub struct RetailerParams {
    profiles: Arc<ProfilesConfig>,
    units: UnitsConfig,
    offset_ms: i64,
}

impl RetailerParams {
    /// From the config.
    pub fn from_config(cfg: &Config) -> Self {
        RetailerParams {
            profiles: Arc::new(cfg.profiles.clone()),
            units: cfg.units.clone(),
            offset_ms: i64::from(cfg.worker.utc_offset_minutes) * 60_000,
        }
    }
}

/// The retailer state of one partition.
#[derive(Clone, Debug)]
pub struct RetailerState {
    params: Arc<RetailerParams>,
    profiles: RetailerProfiles,
    regions: BTreeMap<String, String>,
    applied: u64,
}

impl RetailerState {
    /// Tables in publishing order.
    pub const TABLES: [&'static str; 3] = [PROFILES_TABLE, MIX_TABLE, ACTIVITY_TABLE];
    /// Key columns per table, in [`Self::TABLES`] order.
    pub const KEYS: [&'static [&'static str]; 3] = [
        &["retailer_id", "source"],
        &["retailer_id", "source", "dimension", "value"],
        &["retailer_id", "cycle_start"],
    ];

    /// Empty.
    pub fn new(params: Arc<RetailerParams>) -> Self {
        RetailerState {
            profiles: RetailerProfiles::new(params.profiles.clone()),
            params,
            regions: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Records applied since the state began.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Lines and retailers held.
    pub fn rows(&self) -> usize {
        self.profiles.lines() + self.regions.len()
    }

    /// The profiles.
    pub fn profiles(&self) -> &RetailerProfiles {
        &self.profiles
    }

    /// The region of a retailer (`unknown` until its master record came).
    pub fn region(&self, retailer: &str) -> &str {
        self.regions.get(retailer).map_or("unknown", String::as_str)
    }

    /// Decodes and applies one record of input `input` ([`INPUTS`] order).
    pub fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        let r = match input {
            0 => self.order(value),
            1 => self.pos(value),
            _ => self.retailer(value),
        };
        match r {
            Ok(a) => {
                if a == Applied::Applied {
                    self.applied += 1;
                }
                a
            }
            Err(r) => Applied::Rejected(r),
        }
    }

    fn order(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let o: AllocationOrder = decode(value, EventKind::AllocationOrder)?.payload;
        finite("payload.quantity", o.quantity)?;
        finite("payload.unit_price", o.unit_price)?;
        let day = days_since_epoch(o.order_date);
        let quantity = self.params.units.to_report(o.quantity, o.unit);
        Ok(self.line(&Line {
            retailer: &o.to_id,
            source: Source::Orders,
            order: &o.order_id,
            line_no: o.line_no,
            day,
            sku: &o.sku_code,
            quantity,
            amount: o.quantity * o.unit_price,
        }))
    }

    fn pos(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let t: PosTransaction = decode(value, EventKind::PosTransaction)?.payload;
        finite("payload.quantity", t.quantity)?;
        finite("payload.total_amount", t.total_amount)?;
        let day = local_day(t.transaction_time_ms, self.params.offset_ms);
        let quantity = self.params.units.to_report(t.quantity, t.unit);
        Ok(self.line(&Line {
            retailer: &t.store_code,
            source: Source::Pos,
            order: &t.order_number,
            line_no: t.line_no,
            day,
            sku: &t.sku_code,
            quantity,
            amount: t.total_amount,
        }))
    }

    fn line(&mut self, l: &Line<'_>) -> Applied {
        match self.profiles.add(l) {
            Added::New | Added::Replaced => Applied::Applied,
            Added::Same => Applied::Unchanged,
            Added::TooOld => Applied::Late(Rejected {
                reason: "late",
                detail: format!(
                    "line {}/{} of retailer `{}` is older than the profile window",
                    l.order, l.line_no, l.retailer
                ),
            }),
        }
    }

    fn retailer(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let r: Retailer = decode(value, EventKind::Retailer)?.payload;
        Ok(match self.regions.insert(r.retailer_id, r.region.clone()) {
            Some(old) if old == r.region => Applied::Unchanged,
            _ => Applied::Applied,
        })
    }

    /// Forgets lines older than the window; refits the churn model once a
    /// cycle.
    pub fn evict(&mut self) {
        self.profiles.evict();
    }

    /// Schemas of the published tables, in [`Self::TABLES`] order.
    pub fn schemas() -> [SchemaRef; 3] {
        let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
        let f64f = |n: &str| Field::new(n, DataType::Float64, false);
        let f64n = |n: &str| Field::new(n, DataType::Float64, true);
        [
            Arc::new(Schema::new(vec![
                utf8("retailer_id"),
                utf8("source"),
                utf8("region"),
                Field::new("cycle_start", DataType::Date32, false),
                Field::new("cycles", DataType::UInt32, false),
                f64f("qty_per_cycle"),
                f64f("amount_per_order"),
                f64f("orders_per_cycle"),
                f64f("order_gap_days"),
                f64f("order_gap_cv"),
                Field::new("sku_count", DataType::UInt32, false),
                f64f("sku_hhi"),
                utf8("top_brand"),
                f64f("top_brand_share"),
                f64f("competitor_share"),
                f64f("trend"),
                f64f("rolling_sales"),
                f64n("p_alive"),
                f64n("churn_risk"),
            ])),
            Arc::new(Schema::new(vec![
                utf8("retailer_id"),
                utf8("source"),
                utf8("dimension"),
                utf8("value"),
                f64f("share"),
            ])),
            Arc::new(Schema::new(vec![
                utf8("retailer_id"),
                Field::new("cycle_start", DataType::Date32, false),
            ])),
        ]
    }

    /// The published tables: profiles, mix, activity.
    pub fn to_batches(&self) -> Result<[RecordBatch; 3]> {
        let [s_p, s_m, s_c] = Self::schemas();
        let ps = self.profiles.profiles();
        let nan = |v: f64| (!v.is_nan()).then_some(v);
        let profiles = build(
            PROFILES_TABLE,
            &s_p,
            vec![
                strings(ps.iter().map(|p| p.retailer.as_str())),
                strings(ps.iter().map(|p| p.source.as_str())),
                strings(ps.iter().map(|p| self.region(&p.retailer))),
                Arc::new(Date32Array::from_iter_values(
                    ps.iter().map(|p| p.cycle_start_day),
                )),
                Arc::new(UInt32Array::from_iter_values(ps.iter().map(|p| p.cycles))),
                float64s(ps.iter().map(|p| p.qty_per_cycle)),
                float64s(ps.iter().map(|p| p.amount_per_order)),
                float64s(ps.iter().map(|p| p.orders_per_cycle)),
                float64s(ps.iter().map(|p| p.order_gap_days)),
                float64s(ps.iter().map(|p| p.order_gap_cv)),
                Arc::new(UInt32Array::from_iter_values(
                    ps.iter().map(|p| p.sku_count),
                )),
                float64s(ps.iter().map(|p| p.sku_hhi)),
                strings(ps.iter().map(|p| p.top_brand.as_str())),
                float64s(ps.iter().map(|p| p.top_brand_share)),
                float64s(ps.iter().map(|p| p.competitor_share)),
                float64s(ps.iter().map(|p| p.trend)),
                float64s(ps.iter().map(|p| p.rolling_sales)),
                Arc::new(Float64Array::from_iter(ps.iter().map(|p| nan(p.p_alive)))),
                Arc::new(Float64Array::from_iter(
                    ps.iter().map(|p| nan(p.churn_risk)),
                )),
            ],
        )?;
        let mut mix: Vec<(&str, &str, &str, &str, f64)> = Vec::new();
        for p in &ps {
            for (dimension, shares) in [("brand", &p.brand_mix), ("price_band", &p.band_mix)] {
                for (value, share) in shares {
                    mix.push((&p.retailer, p.source.as_str(), dimension, value, *share));
                }
            }
        }
        let mix = build(
            MIX_TABLE,
            &s_m,
            vec![
                strings(mix.iter().map(|m| m.0)),
                strings(mix.iter().map(|m| m.1)),
                strings(mix.iter().map(|m| m.2)),
                strings(mix.iter().map(|m| m.3)),
                float64s(mix.iter().map(|m| m.4)),
            ],
        )?;
        let active = self.profiles.active_cycles();
        let activity = build(
            ACTIVITY_TABLE,
            &s_c,
            vec![
                strings(active.iter().map(|a| a.0)),
                Arc::new(Date32Array::from_iter_values(
                    active.iter().map(|a| self.profiles.cycle_start(a.1)),
                )),
            ],
        )?;
        Ok([profiles, mix, activity])
    }

    /// The profiles of `source` in batches of the profiles table (a view
    /// over all partitions), each with its region: what grading ranks.
    /// Mixes are left empty; grading does not use them.
    pub fn profiles_of(batches: &[RecordBatch], source: Source) -> Result<Vec<(String, Profile)>> {
        let mut out = Vec::new();
        for b in batches {
            let c = Cols::table(PROFILES_TABLE, b);
            let s = |n| c.get::<StringArray>(n);
            let f = |n| c.get::<Float64Array>(n);
            let u = |n| c.get::<UInt32Array>(n);
            let (id, src, region, top_brand) = (
                s("retailer_id")?,
                s("source")?,
                s("region")?,
                s("top_brand")?,
            );
            let day = c.get::<Date32Array>("cycle_start")?;
            let (cycles, sku_count) = (u("cycles")?, u("sku_count")?);
            let [
                qty,
                amount,
                orders,
                gap,
                cv,
                hhi,
                brand,
                comp,
                trend,
                sales,
                alive,
                churn,
            ] = [
                "qty_per_cycle",
                "amount_per_order",
                "orders_per_cycle",
                "order_gap_days",
                "order_gap_cv",
                "sku_hhi",
                "top_brand_share",
                "competitor_share",
                "trend",
                "rolling_sales",
                "p_alive",
                "churn_risk",
            ]
            .map(f);
            let (qty, amount, orders, gap, cv, hhi) = (qty?, amount?, orders?, gap?, cv?, hhi?);
            let (brand, comp, trend, sales, alive, churn) =
                (brand?, comp?, trend?, sales?, alive?, churn?);
            let nan =
                |a: &Float64Array, i: usize| if a.is_valid(i) { a.value(i) } else { f64::NAN };
            for i in (0..c.rows()).filter(|i| src.value(*i) == source.as_str()) {
                out.push((
                    region.value(i).to_owned(),
                    Profile {
                        retailer: id.value(i).to_owned(),
                        source,
                        cycle_start_day: day.value(i),
                        cycles: cycles.value(i),
                        qty_per_cycle: qty.value(i),
                        amount_per_order: amount.value(i),
                        orders_per_cycle: orders.value(i),
                        order_gap_days: gap.value(i),
                        order_gap_cv: cv.value(i),
                        sku_count: sku_count.value(i),
                        sku_hhi: hhi.value(i),
                        top_brand: top_brand.value(i).to_owned(),
                        top_brand_share: brand.value(i),
                        competitor_share: comp.value(i),
                        trend: trend.value(i),
                        rolling_sales: sales.value(i),
                        p_alive: nan(alive, i),
                        churn_risk: nan(churn, i),
                        brand_mix: Vec::new(),
                        band_mix: Vec::new(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The state as checkpoint tables.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let lines = self.profiles.saved_lines();
        let (firsts, active) = (self.profiles.saved_firsts(), self.profiles.active_cycles());
        Ok(vec![
            ck(
                "lines",
                vec![
                    ("retailer", strings(lines.iter().map(|l| l.0))),
                    ("source", strings(lines.iter().map(|l| l.1.as_str()))),
                    ("order", strings(lines.iter().map(|l| l.2))),
                    (
                        "line_no",
                        Arc::new(UInt32Array::from_iter_values(lines.iter().map(|l| l.3)))
                            as ArrayRef,
                    ),
                    (
                        "day",
                        Arc::new(Int32Array::from_iter_values(lines.iter().map(|l| l.4.day))),
                    ),
                    ("sku", strings(lines.iter().map(|l| l.4.sku))),
                    ("quantity", float64s(lines.iter().map(|l| l.4.quantity))),
                    ("amount", float64s(lines.iter().map(|l| l.4.amount))),
                ],
            )?,
            ck(
                "firsts",
                vec![
                    ("retailer", strings(firsts.iter().map(|f| f.0))),
                    ("source", strings(firsts.iter().map(|f| f.1.as_str()))),
                    (
                        "day",
                        Arc::new(Int32Array::from_iter_values(firsts.iter().map(|f| f.2)))
                            as ArrayRef,
                    ),
                ],
            )?,
            ck(
                "active",
                vec![
                    ("retailer", strings(active.iter().map(|a| a.0))),
                    (
                        "cycle",
                        Arc::new(Int32Array::from_iter_values(active.iter().map(|a| a.1)))
                            as ArrayRef,
                    ),
                ],
            )?,
            ck(
                "regions",
                vec![
                    ("retailer", strings(self.regions.keys().map(String::as_str))),
                    ("region", strings(self.regions.values().map(String::as_str))),
                ],
            )?,
            ck(
                "meta",
                vec![
                    ("applied", int64s([self.applied as i64])),
                    (
                        "newest_day",
                        Arc::new(Int32Array::from(vec![self.profiles.newest_day()])),
                    ),
                ],
            )?,
        ])
    }

    /// State from checkpoint tables written by [`Self::save`].
    pub fn restore(params: Arc<RetailerParams>, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut s = RetailerState::new(params);
        let source = |c: &Cols, v: &str| match v {
            "orders" => Ok(Source::Orders),
            "pos" => Ok(Source::Pos),
            other => Err(c.bad(format!("source `{other}` is neither orders nor pos"))),
        };
        let mut lines = Vec::new();
        if let Some(c) = Cols::of(tables, "lines") {
            let (r, src, o, n, d, sku, q, a) = (
                c.get::<StringArray>("retailer")?,
                c.get::<StringArray>("source")?,
                c.get::<StringArray>("order")?,
                c.get::<UInt32Array>("line_no")?,
                c.get::<Int32Array>("day")?,
                c.get::<StringArray>("sku")?,
                c.get::<Float64Array>("quantity")?,
                c.get::<Float64Array>("amount")?,
            );
            for i in 0..c.rows() {
                lines.push((
                    r.value(i).to_owned(),
                    source(&c, src.value(i))?,
                    o.value(i).to_owned(),
                    n.value(i),
                    d.value(i),
                    sku.value(i).to_owned(),
                    q.value(i),
                    a.value(i),
                ));
            }
        }
        let mut firsts = Vec::new();
        if let Some(c) = Cols::of(tables, "firsts") {
            let (r, src, d) = (
                c.get::<StringArray>("retailer")?,
                c.get::<StringArray>("source")?,
                c.get::<Int32Array>("day")?,
            );
            for i in 0..c.rows() {
                firsts.push((r.value(i).to_owned(), source(&c, src.value(i))?, d.value(i)));
            }
        }
        let mut active = Vec::new();
        if let Some(c) = Cols::of(tables, "active") {
            let (r, cy) = (
                c.get::<StringArray>("retailer")?,
                c.get::<Int32Array>("cycle")?,
            );
            for i in 0..c.rows() {
                active.push((r.value(i).to_owned(), cy.value(i)));
            }
        }
        s.profiles.restore_from(lines, firsts, active);
        if let Some(c) = Cols::of(tables, "regions") {
            let (r, g) = (
                c.get::<StringArray>("retailer")?,
                c.get::<StringArray>("region")?,
            );
            for i in 0..c.rows() {
                s.regions
                    .insert(r.value(i).to_owned(), g.value(i).to_owned());
            }
        }
        if let Some(c) = Cols::of(tables, "meta") {
            s.applied = c.one::<Int64Array>("applied")?.value(0) as u64;
            let d = c.one::<Int32Array>("newest_day")?;
            s.profiles.set_newest_day(d.is_valid(0).then(|| d.value(0)));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::codec;
    use marktwin_core::events::{Envelope, Unit};

    fn env<P: serde::Serialize>(kind: EventKind, id: u32, payload: P) -> Vec<u8> {
        let e = Envelope {
            event_id: format!("{id:032x}"),
            kind,
            source: "test".into(),
            schema_version: 1,
            event_time_ms: 0,
            ingest_time_ms: 0,
            key: String::new(),
            payload,
        };
        codec::encode(&e, marktwin_core::topics::Encoding::Json).unwrap()
    }

    fn order(id: u32, retailer: &str, date: &str, sku: &str, cartons: f64) -> Vec<u8> {
        env(
            EventKind::AllocationOrder,
            id,
            AllocationOrder {
                order_id: format!("o{id}"),
                line_no: 1,
                from_id: "WH01".into(),
                to_id: retailer.into(),
                sku_code: sku.into(),
                quantity: cartons,
                unit: Unit::Carton,
                unit_price: 100.0,
                order_date: date.parse().unwrap(),
            },
        )
    }

    #[test]
    fn orders_and_master_records_make_profiles_that_survive_a_checkpoint() {
        let params = Arc::new(RetailerParams::from_config(&Config::default()));
        let mut s = RetailerState::new(params.clone());
        let master = env(
            EventKind::Retailer,
            99,
            Retailer {
                retailer_id: "R1".into(),
                name: "Corner shop".into(),
                region: "north".into(),
                grade: None,
                licence_no: "L1".into(),
                latitude: None,
                longitude: None,
            },
        );
        assert_eq!(s.apply(2, &master), Applied::Applied);
        assert_eq!(s.apply(2, &master), Applied::Unchanged);
        for (i, date) in ["2026-01-05", "2026-01-12", "2026-01-19"]
            .iter()
            .enumerate()
        {
            let o = order(i as u32, "R1", date, "GL-20", 2.0);
            assert_eq!(s.apply(0, &o), Applied::Applied);
            assert_eq!(s.apply(0, &o), Applied::Unchanged, "a record read twice");
        }
        assert!(matches!(s.apply(0, b"{not json"), Applied::Rejected(_)));
        s.evict();
        let [p, mix, activity] = s.to_batches().unwrap();
        assert_eq!(p.num_rows(), 1);
        let col = |b: &RecordBatch, n: &str| b.column_by_name(n).unwrap().clone();
        let qty = col(&p, "qty_per_cycle");
        // 2 cartons of 10 packs per weekly order.
        assert_eq!(
            qty.as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0),
            20.0
        );
        let region = col(&p, "region");
        assert_eq!(
            region
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "north"
        );
        assert!(mix.num_rows() >= 2);
        assert_eq!(activity.num_rows(), 3, "three weekly cycles with orders");

        let saved = crate::record::owned(s.save().unwrap());
        let mut back = RetailerState::restore(params, &saved).unwrap();
        back.evict();
        assert_eq!(back.to_batches().unwrap(), s.to_batches().unwrap());
        assert_eq!(back.applied(), s.applied());
        let again = order(2, "R1", "2026-01-19", "GL-20", 2.0);
        assert_eq!(
            back.apply(0, &again),
            Applied::Unchanged,
            "restored lines still deduplicate"
        );
    }
}
