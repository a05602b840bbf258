//! The inventory twin of one `stock` partition: stock on hand per warehouse
//! and SKU, stock cover per stock region and SKU, and the alerts raised when
//! cover leaves its bounds.
//!
//! The edge writes every record that counts or moves stock a second time to
//! the `stock` topic, keyed by the warehouse's stock region
//! ([`marktwin_core::config::InventoryConfig`]), so one partition holds
//! everything about its regions: inventory counts, allocation orders going
//! out (their shipping party `from_id` is the warehouse) and production
//! coming in (through `inventory.line_warehouses`).
//!
//! # Figures
//!
//! - **On hand** (warehouse, SKU) = the newest count (by its `as_of_ms`;
//!   at equal times the later record) + production that ended after it −
//!   orders dated after it (an order's time is the start of its date).
//!   Without a count, the movements alone.
//! - **Trailing demand** (region, SKU) = allocation orders out of the
//!   region's warehouses over the `inventory.demand_days` complete days
//!   before today, divided by `demand_days`; today is the day of the newest
//!   event time in the partition.
//! - **Cover** = on hand / trailing demand, in days; unknown without demand.
//!   Below `inventory.cover_min_days` raises `cover_low`, above
//!   `cover_max_days` raises `cover_high`; the alert row leaves the alerts
//!   table when cover returns within bounds (a tombstone on the alerts
//!   topic).
//!
//! # Order of arrival
//!
//! Orders and production records are kept by natural key (order and line
//! number; line and period start), so a record sent again changes nothing
//! and a corrected one replaces its earlier version. A count older than
//! the current one changes nothing. The figures therefore depend on which
//! records arrived, not on how the three sources interleave, except for
//! counts of equal time, where the partition's order decides. Movements
//! are forgotten once a newer count covers them and they are outside the
//! demand window; neither can come back, so forgetting changes no figure.
//!
//! Quantities are in the configured reporting unit.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::config::{InventoryConfig, UnitsConfig};
use marktwin_core::events::{
    AllocationOrder, Envelope, EventKind, InventorySnapshot, ProductionRecord, Unit,
};
use marktwin_core::topics::id;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Result;
use crate::record::{
    Applied, Cols, Rejected, build, ck, float64s, int64s, strings, ts_field, ts_opt,
};

/// Input topic ids, in the order [`Inventory::apply`] numbers them.
pub const INPUTS: [&str; 1] = [id::STOCK];
/// Stock on hand per warehouse and SKU.
pub const INVENTORY_TABLE: &str = "twin_inventory";
/// Stock cover per stock region and SKU.
pub const COVER_TABLE: &str = "twin_stock_cover";
/// Open stock-cover alerts per stock region and SKU.
pub const ALERTS_TABLE: &str = "twin_stock_alerts";

const DAY_MS: i64 = 86_400_000;
const CK_COUNTS: &str = "counts";
const CK_MOVES: &str = "moves";
const CK_META: &str = "meta";

/// The rules an [`Inventory`] applies, from the config.
#[derive(Clone, Debug)]
pub struct InventoryParams {
    units: UnitsConfig,
    inventory: InventoryConfig,
}

impl InventoryParams {
    /// The rules in `cfg`.
    pub fn from_config(cfg: &Config) -> Self {
        InventoryParams {
            units: cfg.units.clone(),
            inventory: cfg.inventory.clone(),
        }
    }

    fn quantity(&self, q: f64, unit: Unit) -> f64 {
        self.units.to_report(q, unit)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Count {
    as_of_ms: i64,
    quantity: f64,
}

/// A movement of stock: production in (positive) or an order out
/// (negative).
#[derive(Clone, Debug, PartialEq)]
struct Move {
    warehouse: String,
    sku: String,
    time_ms: i64,
    quantity: f64,
    /// Days since the epoch of an order's date; `None` for production.
    order_day: Option<i64>,
}

/// Per warehouse and SKU, what the inventory table shows.
#[derive(Default)]
struct Position {
    count: Option<Count>,
    moved_in: f64,
    moved_out: f64,
}

impl Position {
    fn on_hand(&self) -> f64 {
        self.count.as_ref().map_or(0.0, |c| c.quantity) + self.moved_in - self.moved_out
    }
}

/// Stock cover of one region and SKU.
#[derive(Default)]
struct Cover {
    on_hand: f64,
    ordered: f64,
}

/// The inventory twin of one partition.
pub struct Inventory {
    params: Arc<InventoryParams>,
    counts: BTreeMap<(String, String), Count>,
    moves: BTreeMap<String, Move>,
    newest_ms: Option<i64>,
    applied: u64,
}

fn payload<P: DeserializeOwned>(v: Value, kind: EventKind) -> Result<P, Rejected> {
    serde_json::from_value(v).map_err(|e| Rejected {
        reason: "decode",
        detail: format!("`payload` is not a {}: {e}", kind.as_str()),
    })
}

fn range(field: &str, v: f64) -> Result<(), Rejected> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Rejected {
            reason: "range",
            detail: format!("`{field}` is {v}; expected a finite quantity of 0 or more"),
        })
    }
}

fn days_since_epoch(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis())
        .div_euclid(DAY_MS)
}

impl Inventory {
    /// Tables in publishing order.
    pub const TABLES: [&'static str; 3] = [INVENTORY_TABLE, COVER_TABLE, ALERTS_TABLE];
    /// The key columns of each table, in [`Self::TABLES`] order.
    pub const KEYS: [&'static [&'static str]; 3] = [
        &["warehouse_id", "sku_code"],
        &["region", "sku_code"],
        &["region", "sku_code"],
    ];

    /// Empty state under `params`.
    pub fn new(params: Arc<InventoryParams>) -> Self {
        Inventory {
            params,
            counts: BTreeMap::new(),
            moves: BTreeMap::new(),
            newest_ms: None,
            applied: 0,
        }
    }

    /// Records applied since the state began.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Counts and movements held.
    pub fn rows(&self) -> usize {
        self.counts.len() + self.moves.len()
    }

    /// Decodes and applies one record of the `stock` topic.
    pub fn apply(&mut self, _input: usize, value: &[u8]) -> Applied {
        match self.apply_record(value) {
            Ok(a) => {
                if a == Applied::Applied {
                    self.applied += 1;
                }
                a
            }
            Err(r) => Applied::Rejected(r),
        }
    }

    fn apply_record(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let env: Envelope<Value> = codec::decode_any(value).map_err(|e| Rejected {
            reason: "decode",
            detail: format!("not an envelope: {e}"),
        })?;
        let p = self.params.clone();
        let p = &p.inventory;
        let newest = Some(
            self.newest_ms
                .map_or(env.event_time_ms, |n| n.max(env.event_time_ms)),
        );
        Ok(match env.kind {
            EventKind::InventorySnapshot => {
                let s: InventorySnapshot = payload(env.payload, env.kind)?;
                range("payload.quantity", s.quantity)?;
                self.newest_ms = newest;
                let count = Count {
                    as_of_ms: s.as_of_ms,
                    quantity: self.params.quantity(s.quantity, s.unit),
                };
                let key = (s.warehouse_id, s.sku_code);
                let taken = p.count_sources.is_empty() || p.count_sources.contains(&env.source);
                match self.counts.get(&key) {
                    _ if !taken => Applied::Unchanged,
                    Some(c) if c.as_of_ms > count.as_of_ms || *c == count => Applied::Unchanged,
                    _ => {
                        self.counts.insert(key, count);
                        Applied::Applied
                    }
                }
            }
            EventKind::AllocationOrder => {
                let o: AllocationOrder = payload(env.payload, env.kind)?;
                range("payload.quantity", o.quantity)?;
                self.newest_ms = newest;
                let day = days_since_epoch(o.order_date);
                let m = Move {
                    quantity: -self.params.quantity(o.quantity, o.unit),
                    time_ms: day * DAY_MS,
                    order_day: Some(day),
                    warehouse: o.from_id,
                    sku: o.sku_code,
                };
                self.upsert(format!("o/{}/{}", o.order_id, o.line_no), m)
            }
            EventKind::ProductionRecord => {
                let r: ProductionRecord = payload(env.payload, env.kind)?;
                let Some(warehouse) = p.line_warehouses.get(&r.line_id) else {
                    return Err(Rejected {
                        reason: "unmapped",
                        detail: format!(
                            "`payload.line_id` `{}` has no entry in inventory.line_warehouses",
                            r.line_id
                        ),
                    });
                };
                self.newest_ms = newest;
                let m = Move {
                    warehouse: warehouse.clone(),
                    quantity: self.params.quantity(r.good_count as f64, r.unit),
                    time_ms: r.period_end_ms,
                    order_day: None,
                    sku: r.sku_code,
                };
                self.upsert(format!("p/{}/{}", r.line_id, r.period_start_ms), m)
            }
            other => {
                return Err(Rejected {
                    reason: "wrong_kind",
                    detail: format!(
                        "`kind` is `{}`; the stock topic carries inventory_snapshot, allocation_order and production_record",
                        other.as_str()
                    ),
                });
            }
        })
    }

    fn upsert(&mut self, key: String, m: Move) -> Applied {
        match self.moves.get(&key) {
            Some(old) if *old == m => Applied::Unchanged,
            _ => {
                self.moves.insert(key, m);
                Applied::Applied
            }
        }
    }

    /// The first day of the demand window and today (exclusive end).
    fn demand_days(&self) -> Option<(i64, i64)> {
        let today = self.newest_ms?.div_euclid(DAY_MS);
        Some((today - i64::from(self.params.inventory.demand_days), today))
    }

    fn covered(&self, m: &Move) -> bool {
        self.counts
            .get(&(m.warehouse.clone(), m.sku.clone()))
            .is_some_and(|c| m.time_ms <= c.as_of_ms)
    }

    /// Forgets movements that a newer count covers and that are outside the
    /// demand window.
    pub fn evict(&mut self) {
        let first = self.demand_days().map_or(i64::MIN, |(first, _)| first);
        let gone: Vec<String> = self
            .moves
            .iter()
            .filter(|(_, m)| m.order_day.is_none_or(|d| d < first) && self.covered(m))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.moves.remove(&k);
        }
    }

    fn positions(&self) -> BTreeMap<(&str, &str), Position> {
        let mut out: BTreeMap<(&str, &str), Position> = BTreeMap::new();
        for ((w, s), c) in &self.counts {
            out.entry((w, s)).or_default().count = Some(c.clone());
        }
        for m in self.moves.values() {
            if self.covered(m) {
                continue;
            }
            let p = out.entry((&m.warehouse, &m.sku)).or_default();
            if m.quantity >= 0.0 {
                p.moved_in += m.quantity;
            } else {
                p.moved_out -= m.quantity;
            }
        }
        out
    }

    /// Schemas of the published tables, in [`Self::TABLES`] order.
    pub fn schemas() -> [SchemaRef; 3] {
        let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
        let f64f = |n: &str, null: bool| Field::new(n, DataType::Float64, null);
        [
            Arc::new(Schema::new(vec![
                utf8("warehouse_id"),
                utf8("sku_code"),
                utf8("region"),
                f64f("on_hand", false),
                f64f("counted", true),
                ts_field("counted_at", true),
                f64f("moved_in", false),
                f64f("moved_out", false),
                utf8("unit"),
            ])),
            Arc::new(Schema::new(vec![
                utf8("region"),
                utf8("sku_code"),
                f64f("on_hand", false),
                f64f("demand_per_day", false),
                f64f("cover_days", true),
                utf8("status"),
                utf8("unit"),
            ])),
            Arc::new(Schema::new(vec![
                utf8("region"),
                utf8("sku_code"),
                utf8("alert"),
                f64f("cover_days", false),
                f64f("bound_days", false),
                f64f("on_hand", false),
                f64f("demand_per_day", false),
                utf8("unit"),
            ])),
        ]
    }

    /// The three published tables: inventory, cover, alerts.
    pub fn to_batches(&self) -> Result<[RecordBatch; 3]> {
        let inv = &self.params.inventory;
        let unit = self.params.units.report_in.as_str();
        let [s_inv, s_cover, s_alerts] = Self::schemas();

        let positions = self.positions();
        let mut covers: BTreeMap<(&str, &str), Cover> = BTreeMap::new();
        let mut c = InvCols::default();
        for ((w, s), p) in &positions {
            let region = inv.region_of(w);
            covers.entry((region, s)).or_default().on_hand += p.on_hand();
            c.warehouse.push(w);
            c.sku.push(s);
            c.region.push(region);
            c.on_hand.push(p.on_hand());
            c.counted.push(p.count.as_ref().map(|c| c.quantity));
            c.counted_at.push(p.count.as_ref().map(|c| c.as_of_ms));
            c.moved_in.push(p.moved_in);
            c.moved_out.push(p.moved_out);
        }
        if let Some((first, today)) = self.demand_days() {
            for m in self.moves.values() {
                if let Some(d) = m.order_day
                    && (first..today).contains(&d)
                {
                    covers
                        .entry((inv.region_of(&m.warehouse), &m.sku))
                        .or_default()
                        .ordered -= m.quantity;
                }
            }
        }
        let n = inventory_rows(&c, &s_inv, unit)?;

        let days = f64::from(inv.demand_days);
        let (mut cv, mut al) = (CoverCols::default(), CoverCols::default());
        for ((region, sku), cover) in &covers {
            let demand = cover.ordered / days;
            let days_of = (demand > 0.0).then(|| cover.on_hand / demand);
            let (status, bound) = match days_of {
                None => ("unknown", None),
                Some(d) if d < inv.cover_min_days => ("cover_low", Some(inv.cover_min_days)),
                Some(d) if d > inv.cover_max_days => ("cover_high", Some(inv.cover_max_days)),
                Some(_) => ("ok", None),
            };
            cv.push(region, sku, cover.on_hand, demand, days_of, status);
            if let (Some(d), Some(b)) = (days_of, bound) {
                al.push(region, sku, cover.on_hand, demand, Some(d), status);
                al.bound.push(b);
            }
        }
        let cover = build(
            COVER_TABLE,
            &s_cover,
            vec![
                strings(cv.region.iter().copied()),
                strings(cv.sku.iter().copied()),
                float64s(cv.on_hand.iter().copied()),
                float64s(cv.demand.iter().copied()),
                Arc::new(Float64Array::from(cv.days.clone())),
                strings(cv.status.iter().copied()),
                strings(std::iter::repeat_n(unit, cv.region.len())),
            ],
        )?;
        let alerts = build(
            ALERTS_TABLE,
            &s_alerts,
            vec![
                strings(al.region.iter().copied()),
                strings(al.sku.iter().copied()),
                strings(al.status.iter().copied()),
                float64s(al.days.iter().map(|d| d.unwrap_or_default())),
                float64s(al.bound.iter().copied()),
                float64s(al.on_hand.iter().copied()),
                float64s(al.demand.iter().copied()),
                strings(std::iter::repeat_n(unit, al.region.len())),
            ],
        )?;
        Ok([n, cover, alerts])
    }

    /// The state as checkpoint tables.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let counts: Vec<_> = self.counts.iter().collect();
        let moves: Vec<_> = self.moves.iter().collect();
        Ok(vec![
            ck(
                CK_COUNTS,
                vec![
                    (
                        "warehouse",
                        strings(counts.iter().map(|((w, _), _)| w.as_str())),
                    ),
                    ("sku", strings(counts.iter().map(|((_, s), _)| s.as_str()))),
                    ("as_of", int64s(counts.iter().map(|(_, c)| c.as_of_ms))),
                    ("quantity", float64s(counts.iter().map(|(_, c)| c.quantity))),
                ],
            )?,
            ck(
                CK_MOVES,
                vec![
                    ("key", strings(moves.iter().map(|(k, _)| k.as_str()))),
                    (
                        "warehouse",
                        strings(moves.iter().map(|(_, m)| m.warehouse.as_str())),
                    ),
                    ("sku", strings(moves.iter().map(|(_, m)| m.sku.as_str()))),
                    ("time", int64s(moves.iter().map(|(_, m)| m.time_ms))),
                    ("quantity", float64s(moves.iter().map(|(_, m)| m.quantity))),
                    (
                        "order_day",
                        Arc::new(Int64Array::from_iter(
                            moves.iter().map(|(_, m)| m.order_day),
                        )),
                    ),
                ],
            )?,
            ck(
                CK_META,
                vec![
                    ("newest", Arc::new(Int64Array::from(vec![self.newest_ms]))),
                    ("applied", int64s([self.applied as i64])),
                ],
            )?,
        ])
    }

    /// State from checkpoint tables written by [`Self::save`].
    pub fn restore(params: Arc<InventoryParams>, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut t = Inventory::new(params);
        if let Some(c) = Cols::of(tables, CK_COUNTS) {
            let (w, s) = (
                c.get::<StringArray>("warehouse")?,
                c.get::<StringArray>("sku")?,
            );
            let (a, q) = (
                c.get::<Int64Array>("as_of")?,
                c.get::<Float64Array>("quantity")?,
            );
            for i in 0..c.rows() {
                t.counts.insert(
                    (w.value(i).to_owned(), s.value(i).to_owned()),
                    Count {
                        as_of_ms: a.value(i),
                        quantity: q.value(i),
                    },
                );
            }
        }
        if let Some(c) = Cols::of(tables, CK_MOVES) {
            let (k, w, s) = (
                c.get::<StringArray>("key")?,
                c.get::<StringArray>("warehouse")?,
                c.get::<StringArray>("sku")?,
            );
            let (tm, q, d) = (
                c.get::<Int64Array>("time")?,
                c.get::<Float64Array>("quantity")?,
                c.get::<Int64Array>("order_day")?,
            );
            for i in 0..c.rows() {
                t.moves.insert(
                    k.value(i).to_owned(),
                    Move {
                        warehouse: w.value(i).to_owned(),
                        sku: s.value(i).to_owned(),
                        time_ms: tm.value(i),
                        quantity: q.value(i),
                        order_day: d.is_valid(i).then(|| d.value(i)),
                    },
                );
            }
        }
        if let Some(c) = Cols::of(tables, CK_META) {
            let newest = c.one::<Int64Array>("newest")?;
            t.newest_ms = newest.is_valid(0).then(|| newest.value(0));
            t.applied = c.one::<Int64Array>("applied")?.value(0) as u64;
        }
        Ok(t)
    }
}

#[derive(Default)]
struct InvCols<'a> {
    warehouse: Vec<&'a str>,
    sku: Vec<&'a str>,
    region: Vec<&'a str>,
    on_hand: Vec<f64>,
    counted: Vec<Option<f64>>,
    counted_at: Vec<Option<i64>>,
    moved_in: Vec<f64>,
    moved_out: Vec<f64>,
}

fn inventory_rows(c: &InvCols, schema: &SchemaRef, unit: &str) -> Result<RecordBatch> {
    build(
        INVENTORY_TABLE,
        schema,
        vec![
            strings(c.warehouse.iter().copied()),
            strings(c.sku.iter().copied()),
            strings(c.region.iter().copied()),
            float64s(c.on_hand.iter().copied()),
            Arc::new(Float64Array::from(c.counted.clone())),
            ts_opt(c.counted_at.clone()),
            float64s(c.moved_in.iter().copied()),
            float64s(c.moved_out.iter().copied()),
            strings(std::iter::repeat_n(unit, c.warehouse.len())),
        ],
    )
}

#[derive(Default)]
struct CoverCols<'a> {
    region: Vec<&'a str>,
    sku: Vec<&'a str>,
    on_hand: Vec<f64>,
    demand: Vec<f64>,
    days: Vec<Option<f64>>,
    status: Vec<&'a str>,
    bound: Vec<f64>,
}

impl<'a> CoverCols<'a> {
    fn push(
        &mut self,
        region: &'a str,
        sku: &'a str,
        on_hand: f64,
        demand: f64,
        days: Option<f64>,
        status: &'a str,
    ) {
        self.region.push(region);
        self.sku.push(sku);
        self.on_hand.push(on_hand);
        self.demand.push(demand);
        self.days.push(days);
        self.status.push(status);
    }
}

#[cfg(test)]
mod tests;
