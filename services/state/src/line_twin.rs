//! The production twin of one input partition: line states, event-time
//! windows with OEE, plan against actual and capacity utilisation.
//!
//! Inputs ([`INPUTS`]) are all keyed by `line_id`, so partition `p` of each
//! holds the same lines and one [`LineTwin`] per partition number owns
//! everything about its lines. That is what lets state move with its
//! partitions and be checkpointed per partition.
//!
//! # Event time
//!
//! A production record's event time is its `period_start_ms`; it counts
//! whole in the windows holding that instant. Each partition keeps its own
//! watermark, the newest event time it has applied minus
//! `out_of_orderness_ms`. A record older than the watermark by more than
//! `allowed_lateness_ms` is **late**: it changes nothing and the caller
//! sends it to the late topic. Because the decision depends only on the
//! records before it in the same partition, a replay decides the same way,
//! and a batch query can recompute it (see the twin test).
//!
//! A period sent again with other content (the same line and start, so a
//! new event id) is a **correction**: it replaces the earlier version in
//! every window instead of adding to it; sent again with the same content
//! it changes nothing. What each period added is kept for the minute
//! windows' retention, which outlasts the lateness horizon. Duplicates are
//! recognised by comparing with the current version rather than by event
//! ids seen, so a correction can be taken back (A, B, A ends at A). A late
//! record whose event id was seen in the last `worker.dedup_window`
//! records is a duplicate, not late: a resent record is late once, and an
//! applied one resent after its window closed is not reported. Plans and
//! capacities are duplicates when their content equals the current one.
//!
//! Windows whose end is further behind the newest event time than their
//! retention are forgotten; validation keeps the retention above the
//! lateness horizon, so a forgotten window can only be addressed by a late
//! record. Plans and capacities are reference data, replaced by key, not
//! windowed; plans are forgotten with their day.
//!
//! # Figures
//!
//! Per window and SKU, and per window for the whole line:
//! - availability = running / (running + fault + changeover); `idle` is
//!   time the line was not scheduled to run and is not a loss;
//! - performance = Σ (count / rated rate) / running time, the rated rate
//!   being the line capacity valid on the window's day for that SKU, else
//!   for the line; unknown when any SKU of the window has no capacity;
//! - quality = good / (good + reject); OEE = the product of the three.
//!
//! Quantities are in the configured reporting unit.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::config::UnitsConfig;
use marktwin_core::events::{
    Envelope, EventKind, LineCapacity, LineState, ProductionPlan, ProductionRecord,
};
use marktwin_core::topics::id;

use crate::error::Result;
use crate::intern::Interner;
use crate::record::{
    Applied, Cols, RecentIds, Rejected, build, ck, decode, float64s, int64s, parse_id, strings, ts,
    ts_field,
};
use crate::window::{Calendar, WindowKind};

/// Input topic ids, in the order [`LineTwin::apply`] numbers them.
pub const INPUTS: [&str; 3] = [id::PRODUCTION, id::PRODUCTION_PLAN, id::LINE_CAPACITY];

/// Current state of each line.
pub const STATUS_TABLE: &str = "twin_line_status";
/// Windows per line and SKU.
pub const WINDOWS_TABLE: &str = "twin_line_windows";
/// Windows per line, all SKUs together.
pub const OEE_TABLE: &str = "twin_line_oee";
/// Plan against actual per line, SKU and day.
pub const PLAN_TABLE: &str = "twin_plan_actual";

/// Minutes in the sliding speed window of [`STATUS_TABLE`].
pub const SPEED_WINDOW_MINUTES: i64 = 15;

/// The rules of the twin, from configuration.
#[derive(Clone, Debug)]
pub struct TwinParams {
    units: UnitsConfig,
    calendar: Calendar,
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    /// Retention per [`WindowKind`], in [`WindowKind::ALL`] order.
    retention_ms: [i64; 4],
    dedup_window: usize,
}

impl TwinParams {
    /// The rules in `cfg` (validated: shifts parse).
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.worker.twin;
        let r = &t.retention;
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        TwinParams {
            units: cfg.units.clone(),
            calendar: Calendar::new(
                cfg.worker.utc_offset_minutes,
                &t.shift_starts().unwrap_or_else(|_| vec![0]),
            ),
            out_of_orderness_ms: ms(t.out_of_orderness_ms),
            allowed_lateness_ms: ms(t.allowed_lateness_ms),
            retention_ms: [r.minute_ms, r.hour_ms, r.shift_ms, r.day_ms].map(ms),
            dedup_window: cfg.worker.dedup_window,
        }
    }

    /// The calendar windows are cut by.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    fn retention(&self, kind: WindowKind) -> i64 {
        self.retention_ms[kind as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WinKey {
    line: u32,
    kind: WindowKind,
    start: i64,
    sku: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct WinAcc {
    end: i64,
    /// Milliseconds per [`LineState`], in [`LineState::ALL`] order.
    state_ms: [i64; 4],
    good: f64,
    reject: f64,
    records: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Status {
    state: LineState,
    since_ms: i64,
    sku: u32,
    last_start_ms: i64,
    last_end_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    line: u32,
    sku: u32,
    day: i32,
    quantity: f64,
}

/// What one production period added to its windows, kept so that a
/// correction of the period can take it back.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Period {
    sku: u32,
    /// Index into [`LineState::ALL`].
    state: usize,
    duration: i64,
    good: f64,
    reject: f64,
}

/// Capacity key: line, SKU (`None`: the whole line), first valid day.
type CapKey = (u32, Option<u32>, i32);

/// The twin state of one partition number of [`INPUTS`].
#[derive(Clone, Debug)]
pub struct LineTwin {
    params: Arc<TwinParams>,
    lines: Interner,
    skus: Interner,
    status: HashMap<u32, Status>,
    windows: HashMap<WinKey, WinAcc>,
    /// By line and period start.
    periods: HashMap<(u32, i64), Period>,
    plans: HashMap<String, Plan>,
    capacity: HashMap<CapKey, f64>,
    max_event_ms: Option<i64>,
    recent: RecentIds,
    applied: u64,
    late: u64,
}

impl LineTwin {
    /// Empty state.
    pub fn new(params: Arc<TwinParams>) -> Self {
        let recent = RecentIds::new(params.dedup_window);
        LineTwin {
            params,
            lines: Interner::default(),
            skus: Interner::default(),
            status: HashMap::new(),
            windows: HashMap::new(),
            periods: HashMap::new(),
            plans: HashMap::new(),
            capacity: HashMap::new(),
            max_event_ms: None,
            recent,
            applied: 0,
            late: 0,
        }
    }

    /// Decodes and applies one record of input `input` (an index into
    /// [`INPUTS`]). The caller has already skipped replayed offsets.
    pub fn apply(&mut self, input: usize, value: &[u8]) -> Applied {
        let r = match input {
            0 => self.apply_production(value),
            1 => self.apply_plan(value),
            _ => self.apply_capacity(value),
        };
        match r {
            Ok(a) => {
                if a == Applied::Applied {
                    self.applied += 1;
                }
                a
            }
            Err(rejected) => Applied::Rejected(rejected),
        }
    }

    fn fresh(&mut self, event_id: &str) -> Result<bool, Rejected> {
        let id = parse_id(event_id).ok_or_else(|| Rejected {
            reason: "decode",
            detail: format!("`event_id` `{event_id}` is not 32 hex digits"),
        })?;
        Ok(self.recent.insert(id))
    }

    fn apply_production(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let env: Envelope<ProductionRecord> = decode(value, EventKind::ProductionRecord)?;
        let r = &env.payload;
        if r.period_end_ms < r.period_start_ms {
            return Err(Rejected {
                reason: "range",
                detail: format!(
                    "`period_end_ms` {} is before `period_start_ms` {}",
                    r.period_end_ms, r.period_start_ms
                ),
            });
        }
        let t = r.period_start_ms;
        let p = self.params.clone();
        if let Some(max) = self.max_event_ms {
            let watermark = max - p.out_of_orderness_ms;
            if t < watermark - p.allowed_lateness_ms {
                // A late record sent twice is late once.
                if !self.fresh(&env.event_id)? {
                    return Ok(Applied::DuplicateEvent);
                }
                self.late += 1;
                return Ok(Applied::Late(Rejected {
                    reason: "late",
                    detail: format!(
                        "`period_start_ms` {t} is {} ms behind the watermark {watermark} of line `{}`'s partition; allowed lateness is {} ms",
                        watermark - t,
                        r.line_id,
                        p.allowed_lateness_ms
                    ),
                }));
            }
        }
        // Remembered, so that this record sent again once it is late is a
        // duplicate rather than a late record.
        self.fresh(&env.event_id)?;
        self.max_event_ms = Some(self.max_event_ms.map_or(t, |m| m.max(t)));
        let line = self.lines.id(&r.line_id);
        let sku = self.skus.id(&r.sku_code);
        let good = p.units.to_report(r.good_count as f64, r.unit);
        let reject = p.units.to_report(r.reject_count as f64, r.unit);
        let period = Period {
            sku,
            state: r.state as usize,
            duration: r.period_end_ms - r.period_start_ms,
            good,
            reject,
        };
        // The same content again changes nothing; other content corrects.
        // (Comparing with the current version, not with event ids seen,
        // lets a correction be taken back: A, B, A ends at A.)
        if self.periods.get(&(line, t)) == Some(&period) {
            return Ok(Applied::DuplicateEvent);
        }
        if let Some(earlier) = self.periods.insert((line, t), period) {
            self.add(line, t, &earlier, -1);
        }
        self.add(line, t, &period, 1);
        let next = Status {
            state: r.state,
            since_ms: t,
            sku,
            last_start_ms: t,
            last_end_ms: r.period_end_ms,
        };
        self.status
            .entry(line)
            .and_modify(|s| {
                // Only a record at or after the newest one moves the status.
                if t >= s.last_start_ms {
                    let since = if s.state == r.state { s.since_ms } else { t };
                    *s = Status {
                        since_ms: since,
                        ..next
                    };
                }
            })
            .or_insert(next);
        Ok(Applied::Applied)
    }

    /// Adds (`sign` 1) or takes back (`sign` -1) what `period` of `line`
    /// starting at `t` contributes to each of its windows; a window left
    /// with no period goes.
    fn add(&mut self, line: u32, t: i64, period: &Period, sign: i8) {
        let f = f64::from(sign);
        for kind in WindowKind::ALL {
            let (start, end) = self.params.calendar.window(kind, t);
            let key = WinKey {
                line,
                kind,
                start,
                sku: period.sku,
            };
            let acc = self.windows.entry(key).or_default();
            acc.end = end;
            acc.state_ms[period.state] += i64::from(sign) * period.duration;
            acc.good += f * period.good;
            acc.reject += f * period.reject;
            acc.records = acc.records.wrapping_add_signed(i64::from(sign));
            if acc.records == 0 {
                self.windows.remove(&key);
            }
        }
    }

    fn apply_plan(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let env: Envelope<ProductionPlan> = decode(value, EventKind::ProductionPlan)?;
        let p = &env.payload;
        let plan = Plan {
            line: self.lines.id(&p.line_id),
            sku: self.skus.id(&p.sku_code),
            day: days_since_epoch(p.plan_date),
            quantity: self.params.units.to_report(p.planned_quantity, p.unit),
        };
        // Replaced by id; the same content again is a duplicate.
        if self.plans.insert(p.plan_id.clone(), plan) == Some(plan) {
            return Ok(Applied::DuplicateEvent);
        }
        Ok(Applied::Applied)
    }

    fn apply_capacity(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let env: Envelope<LineCapacity> = decode(value, EventKind::LineCapacity)?;
        let c = &env.payload;
        let key = (
            self.lines.id(&c.line_id),
            c.sku_code.as_deref().map(|s| self.skus.id(s)),
            days_since_epoch(c.valid_from),
        );
        let rate = self.params.units.to_report(c.rated_per_minute, c.unit);
        if self.capacity.insert(key, rate) == Some(rate) {
            return Ok(Applied::DuplicateEvent);
        }
        Ok(Applied::Applied)
    }

    /// Records applied (not late, not duplicates) since the state began.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Records found late since the state began.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// The partition's watermark: newest event time minus the allowed
    /// disorder; `None` before the first production record.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.max_event_ms
            .map(|m| m - self.params.out_of_orderness_ms)
    }

    /// Rows held: windows, periods, lines, plans and capacities.
    pub fn rows(&self) -> usize {
        self.windows.len()
            + self.periods.len()
            + self.status.len()
            + self.plans.len()
            + self.capacity.len()
    }

    /// Forgets windows and plans older than their retention behind the
    /// newest event time. Call before publishing and checkpointing.
    pub fn evict(&mut self) {
        let Some(max) = self.max_event_ms else {
            return;
        };
        let p = &self.params;
        self.windows
            .retain(|k, acc| acc.end >= max - p.retention(k.kind));
        let periods_from = max - p.retention(WindowKind::Minute);
        self.periods.retain(|(_, start), _| *start >= periods_from);
        let day_horizon = max - p.retention(WindowKind::Day);
        let cal = &p.calendar;
        self.plans
            .retain(|_, plan| cal.day_start(plan.day + 1) >= day_horizon);
    }

    /// The rated rate in reporting units per minute of `sku` on `line` on
    /// local day `day`: the SKU's own capacity if one is valid, else the
    /// line's.
    fn rated(&self, line: u32, sku: u32, day: i32) -> Option<f64> {
        let best = |want: Option<u32>| {
            self.capacity
                .iter()
                .filter(|((l, s, from), _)| *l == line && *s == want && *from <= day)
                .max_by_key(|((_, _, from), _)| *from)
                .map(|(_, rate)| *rate)
        };
        best(Some(sku)).or_else(|| best(None))
    }

    fn is_final(&self, end: i64) -> bool {
        let p = &self.params;
        self.watermark_ms()
            .is_some_and(|w| end <= w - p.allowed_lateness_ms)
    }
}

/// Days from 1970-01-01 to `d`.
pub(crate) fn days_since_epoch(d: chrono::NaiveDate) -> i32 {
    (d - chrono::NaiveDate::default()).num_days() as i32
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

/// The three OEE factors and their product from raw sums.
fn oee(acc: &WinAcc, ideal_min: Option<f64>) -> [Option<f64>; 4] {
    let [running, _, fault, changeover] = acc.state_ms.map(|v| v as f64);
    let availability = ratio(running, running + fault + changeover);
    let performance = ideal_min.and_then(|i| ratio(i, running / 60_000.0));
    let quality = ratio(acc.good, acc.good + acc.reject);
    let all = match (availability, performance, quality) {
        (Some(a), Some(p), Some(q)) => Some(a * p * q),
        _ => None,
    };
    [availability, performance, quality, all]
}

const FACTORS: [&str; 4] = ["availability", "performance", "quality", "oee"];

fn window_fields() -> Vec<Field> {
    let mut f = vec![
        Field::new("window", DataType::Utf8, false),
        ts_field("window_start", false),
        ts_field("window_end", false),
    ];
    for s in LineState::ALL {
        f.push(Field::new(
            format!("{}_ms", s.as_str()),
            DataType::Int64,
            false,
        ));
    }
    f.push(Field::new("good", DataType::Float64, false));
    f.push(Field::new("reject", DataType::Float64, false));
    f.push(Field::new("unit", DataType::Utf8, false));
    f.push(Field::new("records", DataType::UInt64, false));
    for n in FACTORS {
        f.push(Field::new(n, DataType::Float64, true));
    }
    f.push(Field::new("final", DataType::Boolean, false));
    f
}

/// Column builder for window rows shared by [`WINDOWS_TABLE`] and
/// [`OEE_TABLE`].
#[derive(Default)]
struct WindowCols {
    kind: Vec<&'static str>,
    start: Vec<i64>,
    end: Vec<i64>,
    state_ms: [Vec<i64>; 4],
    good: Vec<f64>,
    reject: Vec<f64>,
    records: Vec<u64>,
    factors: [Vec<Option<f64>>; 4],
    fin: Vec<bool>,
}

impl WindowCols {
    fn push(&mut self, kind: WindowKind, start: i64, acc: &WinAcc, f: [Option<f64>; 4], fin: bool) {
        self.kind.push(kind.as_str());
        self.start.push(start);
        self.end.push(acc.end);
        for (i, v) in acc.state_ms.iter().enumerate() {
            self.state_ms[i].push(*v);
        }
        self.good.push(acc.good);
        self.reject.push(acc.reject);
        self.records.push(acc.records);
        for (i, v) in f.iter().enumerate() {
            self.factors[i].push(*v);
        }
        self.fin.push(fin);
    }

    fn finish(self, unit: &str) -> Vec<ArrayRef> {
        let n = self.kind.len();
        let mut cols: Vec<ArrayRef> = vec![strings(self.kind), ts(self.start), ts(self.end)];
        for v in self.state_ms {
            cols.push(Arc::new(Int64Array::from(v)));
        }
        cols.push(Arc::new(Float64Array::from(self.good)));
        cols.push(Arc::new(Float64Array::from(self.reject)));
        cols.push(strings(std::iter::repeat_n(unit, n)));
        cols.push(Arc::new(UInt64Array::from(self.records)));
        for v in self.factors {
            cols.push(Arc::new(Float64Array::from(v)));
        }
        cols.push(Arc::new(BooleanArray::from(self.fin)));
        cols
    }
}

/// Schemas of the published tables.
pub mod schemas {
    use super::*;

    /// [`STATUS_TABLE`]: one row per line.
    pub fn status() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("line_id", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            ts_field("state_since", false),
            Field::new("sku_code", DataType::Utf8, false),
            ts_field("last_period_end", false),
            Field::new("output_15m", DataType::Float64, false),
            Field::new("speed_per_min_15m", DataType::Float64, false),
            Field::new("unit", DataType::Utf8, false),
        ]))
    }

    /// [`WINDOWS_TABLE`]: one row per line, SKU and window.
    pub fn windows() -> SchemaRef {
        let mut f = vec![
            Field::new("line_id", DataType::Utf8, false),
            Field::new("sku_code", DataType::Utf8, false),
        ];
        f.extend(window_fields());
        Arc::new(Schema::new(f))
    }

    /// [`OEE_TABLE`]: one row per line and window.
    pub fn oee() -> SchemaRef {
        let mut f = vec![Field::new("line_id", DataType::Utf8, false)];
        f.extend(window_fields());
        Arc::new(Schema::new(f))
    }

    /// [`PLAN_TABLE`]: one row per line, SKU and day with a plan or output.
    pub fn plan_actual() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("line_id", DataType::Utf8, false),
            Field::new("sku_code", DataType::Utf8, false),
            Field::new("day", DataType::Date32, false),
            Field::new("planned", DataType::Float64, true),
            Field::new("good", DataType::Float64, false),
            Field::new("total", DataType::Float64, false),
            Field::new("unit", DataType::Utf8, false),
            Field::new("attainment", DataType::Float64, true),
            Field::new("rated_per_minute", DataType::Float64, true),
            Field::new("utilisation", DataType::Float64, true),
        ]))
    }
}

/// The published tables of one [`LineTwin`], in the order of
/// [`LineTwin::TABLES`].
pub type TwinBatches = [RecordBatch; 4];

impl LineTwin {
    /// Names of the published tables.
    pub const TABLES: [&'static str; 4] = [STATUS_TABLE, WINDOWS_TABLE, OEE_TABLE, PLAN_TABLE];

    /// The columns that identify a row of each table, in [`Self::TABLES`]
    /// order.
    pub const KEYS: [&'static [&'static str]; 4] = [
        &["line_id"],
        &["line_id", "sku_code", "window", "window_start"],
        &["line_id", "window", "window_start"],
        &["line_id", "sku_code", "day"],
    ];

    /// Schemas of the published tables, in [`Self::TABLES`] order.
    pub fn schemas() -> [SchemaRef; 4] {
        [
            schemas::status(),
            schemas::windows(),
            schemas::oee(),
            schemas::plan_actual(),
        ]
    }

    /// The state as the four published tables (rows unordered).
    pub fn to_batches(&self) -> Result<TwinBatches> {
        let unit = self.params.units.report_in.as_str();
        let cal = &self.params.calendar;
        let [s_status, s_windows, s_oee, s_plan] = Self::schemas();

        // Windows per SKU, and their sums per line window.
        let mut per_sku = WindowCols::default();
        let (mut w_line, mut w_sku) = (Vec::new(), Vec::new());
        let mut per_line: BTreeMap<(u32, WindowKind, i64), (WinAcc, Option<f64>)> = BTreeMap::new();
        for (k, acc) in &self.windows {
            let rated = self.rated(k.line, k.sku, cal.day(k.start));
            let ideal = rated.and_then(|r| ratio(acc.good + acc.reject, r));
            per_sku.push(
                k.kind,
                k.start,
                acc,
                oee(acc, ideal),
                self.is_final(acc.end),
            );
            w_line.push(self.lines.name(k.line));
            w_sku.push(self.skus.name(k.sku));
            let (sum, sum_ideal) = per_line
                .entry((k.line, k.kind, k.start))
                .or_insert((WinAcc::default(), Some(0.0)));
            sum.end = acc.end;
            for i in 0..4 {
                sum.state_ms[i] += acc.state_ms[i];
            }
            sum.good += acc.good;
            sum.reject += acc.reject;
            sum.records += acc.records;
            *sum_ideal = match (*sum_ideal, rated) {
                (Some(s), Some(r)) => Some(s + (acc.good + acc.reject) / r),
                _ => None,
            };
        }
        let mut cols = vec![strings(w_line), strings(w_sku)];
        cols.extend(per_sku.finish(unit));
        let windows = build(WINDOWS_TABLE, &s_windows, cols)?;

        let mut lines = WindowCols::default();
        let mut l_line = Vec::new();
        for ((line, kind, start), (acc, ideal)) in &per_line {
            lines.push(*kind, *start, acc, oee(acc, *ideal), self.is_final(acc.end));
            l_line.push(self.lines.name(*line));
        }
        let mut cols = vec![strings(l_line)];
        cols.extend(lines.finish(unit));
        let oee_batch = build(OEE_TABLE, &s_oee, cols)?;

        // Status, with the sliding output of the last minutes.
        let mut st: Vec<(&u32, &Status)> = self.status.iter().collect();
        st.sort_unstable_by_key(|(l, _)| **l);
        let mut output = vec![0.0; st.len()];
        for (i, (line, s)) in st.iter().enumerate() {
            let (last_min, _) = cal.window(WindowKind::Minute, s.last_start_ms);
            let from = last_min - (SPEED_WINDOW_MINUTES - 1) * 60_000;
            output[i] = self
                .windows
                .iter()
                .filter(|(k, _)| {
                    k.line == **line
                        && k.kind == WindowKind::Minute
                        && (from..=last_min).contains(&k.start)
                })
                .map(|(_, a)| a.good + a.reject)
                .sum();
        }
        let speed: Vec<f64> = output
            .iter()
            .map(|o| o / SPEED_WINDOW_MINUTES as f64)
            .collect();
        let status = build(
            STATUS_TABLE,
            &s_status,
            vec![
                strings(st.iter().map(|(l, _)| self.lines.name(**l))),
                strings(st.iter().map(|(_, s)| s.state.as_str())),
                ts(st.iter().map(|(_, s)| s.since_ms).collect()),
                strings(st.iter().map(|(_, s)| self.skus.name(s.sku))),
                ts(st.iter().map(|(_, s)| s.last_end_ms).collect()),
                Arc::new(Float64Array::from(output)),
                Arc::new(Float64Array::from(speed)),
                strings(std::iter::repeat_n(unit, st.len())),
            ],
        )?;

        // Plan against actual: every (line, SKU, day) with a plan or output.
        #[derive(Default)]
        struct PlanActual {
            planned: Option<f64>,
            good: f64,
            total: f64,
        }
        let mut pa: BTreeMap<(u32, u32, i32), PlanActual> = BTreeMap::new();
        for plan in self.plans.values() {
            let e = pa.entry((plan.line, plan.sku, plan.day)).or_default();
            e.planned = Some(e.planned.unwrap_or(0.0) + plan.quantity);
        }
        for (k, acc) in &self.windows {
            if k.kind == WindowKind::Day {
                let e = pa.entry((k.line, k.sku, cal.day(k.start))).or_default();
                e.good += acc.good;
                e.total += acc.good + acc.reject;
            }
        }
        let n = pa.len();
        let (mut planned, mut good, mut total) = (vec![], vec![], vec![]);
        let (mut attain, mut rated, mut util) = (vec![], vec![], vec![]);
        for ((line, sku, day), a) in &pa {
            let (p, g, t) = (&a.planned, &a.good, &a.total);
            let r = self.rated(*line, *sku, *day);
            planned.push(*p);
            good.push(*g);
            total.push(*t);
            attain.push(p.and_then(|p| ratio(*g, p)));
            rated.push(r);
            util.push(r.and_then(|r| ratio(*t, r * 1440.0)));
        }
        let plan = build(
            PLAN_TABLE,
            &s_plan,
            vec![
                strings(pa.keys().map(|(l, _, _)| self.lines.name(*l))),
                strings(pa.keys().map(|(_, s, _)| self.skus.name(*s))),
                Arc::new(Date32Array::from_iter_values(pa.keys().map(|k| k.2))),
                Arc::new(Float64Array::from(planned)),
                Arc::new(Float64Array::from(good)),
                Arc::new(Float64Array::from(total)),
                strings(std::iter::repeat_n(unit, n)),
                Arc::new(Float64Array::from(attain)),
                Arc::new(Float64Array::from(rated)),
                Arc::new(Float64Array::from(util)),
            ],
        )?;
        Ok([status, windows, oee_batch, plan])
    }
}

// Checkpoint tables.

const CK_LINES: &str = "lines";
const CK_WINDOWS: &str = "windows";
const CK_PERIODS: &str = "periods";
const CK_PLANS: &str = "plans";
const CK_CAPACITY: &str = "capacity";
const CK_META: &str = "meta";

impl LineTwin {
    /// The state as checkpoint tables. Together with the input offsets,
    /// [`LineTwin::restore`] rebuilds exactly this state.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let line = |l: &u32| self.lines.name(*l);
        let sku = |s: &u32| self.skus.name(*s);
        let mut out = Vec::with_capacity(6);

        let st: Vec<(&u32, &Status)> = self.status.iter().collect();
        out.push(ck(
            CK_LINES,
            vec![
                ("line", strings(st.iter().map(|(l, _)| line(l)))),
                ("state", strings(st.iter().map(|(_, s)| s.state.as_str()))),
                ("since", int64s(st.iter().map(|(_, s)| s.since_ms))),
                ("sku", strings(st.iter().map(|(_, s)| sku(&s.sku)))),
                (
                    "last_start",
                    int64s(st.iter().map(|(_, s)| s.last_start_ms)),
                ),
                ("last_end", int64s(st.iter().map(|(_, s)| s.last_end_ms))),
            ],
        )?);

        let w: Vec<(&WinKey, &WinAcc)> = self.windows.iter().collect();
        let i64s = |f: &dyn Fn(&WinAcc) -> i64| -> ArrayRef { int64s(w.iter().map(|(_, a)| f(a))) };
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            ("line", strings(w.iter().map(|(k, _)| line(&k.line)))),
            ("sku", strings(w.iter().map(|(k, _)| sku(&k.sku)))),
            ("kind", strings(w.iter().map(|(k, _)| k.kind.as_str()))),
            ("start", int64s(w.iter().map(|(k, _)| k.start))),
            ("end", i64s(&|a| a.end)),
        ];
        for (i, s) in LineState::ALL.iter().enumerate() {
            cols.push((s.as_str(), i64s(&|a| a.state_ms[i])));
        }
        cols.push(("good", float64s(w.iter().map(|(_, a)| a.good))));
        cols.push(("reject", float64s(w.iter().map(|(_, a)| a.reject))));
        cols.push((
            "records",
            Arc::new(UInt64Array::from_iter_values(
                w.iter().map(|(_, a)| a.records),
            )),
        ));
        out.push(ck(CK_WINDOWS, cols)?);

        let pe: Vec<(&(u32, i64), &Period)> = self.periods.iter().collect();
        out.push(ck(
            CK_PERIODS,
            vec![
                ("line", strings(pe.iter().map(|((l, _), _)| line(l)))),
                ("start", int64s(pe.iter().map(|((_, t), _)| *t))),
                ("sku", strings(pe.iter().map(|(_, p)| sku(&p.sku)))),
                (
                    "state",
                    strings(pe.iter().map(|(_, p)| LineState::ALL[p.state].as_str())),
                ),
                ("duration", int64s(pe.iter().map(|(_, p)| p.duration))),
                ("good", float64s(pe.iter().map(|(_, p)| p.good))),
                ("reject", float64s(pe.iter().map(|(_, p)| p.reject))),
            ],
        )?);

        let p: Vec<(&String, &Plan)> = self.plans.iter().collect();
        out.push(ck(
            CK_PLANS,
            vec![
                ("plan_id", strings(p.iter().map(|(id, _)| id.as_str()))),
                ("line", strings(p.iter().map(|(_, p)| line(&p.line)))),
                ("sku", strings(p.iter().map(|(_, p)| sku(&p.sku)))),
                (
                    "day",
                    Arc::new(Int32Array::from_iter_values(p.iter().map(|(_, p)| p.day))),
                ),
                ("quantity", float64s(p.iter().map(|(_, p)| p.quantity))),
            ],
        )?);

        let c: Vec<(&CapKey, &f64)> = self.capacity.iter().collect();
        out.push(ck(
            CK_CAPACITY,
            vec![
                ("line", strings(c.iter().map(|((l, _, _), _)| line(l)))),
                (
                    "sku",
                    Arc::new(StringArray::from_iter(
                        c.iter().map(|((_, s, _), _)| s.as_ref().map(&sku)),
                    )),
                ),
                (
                    "valid_from",
                    Arc::new(Int32Array::from_iter_values(
                        c.iter().map(|((_, _, d), _)| *d),
                    )),
                ),
                ("rated", float64s(c.iter().map(|(_, r)| **r))),
            ],
        )?);

        out.push(ck(
            CK_META,
            vec![
                (
                    "max_event_ms",
                    Arc::new(Int64Array::from(vec![self.max_event_ms])),
                ),
                ("applied", Arc::new(UInt64Array::from(vec![self.applied]))),
                ("late", Arc::new(UInt64Array::from(vec![self.late]))),
            ],
        )?);
        out.push(self.recent.save()?);
        Ok(out)
    }

    /// Rebuilds the state [`LineTwin::save`] wrote. A table that is absent
    /// restores empty (a checkpoint of an older version without it).
    pub fn restore(params: Arc<TwinParams>, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut t = LineTwin::new(params);
        if let Some(c) = Cols::of(tables, CK_LINES) {
            let (line, state, since) = (
                c.get::<StringArray>("line")?,
                c.get::<StringArray>("state")?,
                c.get::<Int64Array>("since")?,
            );
            let (sku, ls, le) = (
                c.get::<StringArray>("sku")?,
                c.get::<Int64Array>("last_start")?,
                c.get::<Int64Array>("last_end")?,
            );
            for i in 0..c.rows() {
                let st = LineState::parse(state.value(i))
                    .ok_or_else(|| c.bad(format!("`state` `{}` is unknown", state.value(i))))?;
                let l = t.lines.id(line.value(i));
                let s = t.skus.id(sku.value(i));
                t.status.insert(
                    l,
                    Status {
                        state: st,
                        since_ms: since.value(i),
                        sku: s,
                        last_start_ms: ls.value(i),
                        last_end_ms: le.value(i),
                    },
                );
            }
        }
        if let Some(c) = Cols::of(tables, CK_WINDOWS) {
            let (line, sku, kind) = (
                c.get::<StringArray>("line")?,
                c.get::<StringArray>("sku")?,
                c.get::<StringArray>("kind")?,
            );
            let (start, end) = (c.get::<Int64Array>("start")?, c.get::<Int64Array>("end")?);
            let ms: Vec<&Int64Array> = LineState::ALL
                .iter()
                .map(|s| c.get::<Int64Array>(s.as_str()))
                .collect::<Result<_>>()?;
            let (good, reject, records) = (
                c.get::<Float64Array>("good")?,
                c.get::<Float64Array>("reject")?,
                c.get::<UInt64Array>("records")?,
            );
            for i in 0..c.rows() {
                let k = WindowKind::parse(kind.value(i))
                    .ok_or_else(|| c.bad(format!("`kind` `{}` is unknown", kind.value(i))))?;
                let key = WinKey {
                    line: t.lines.id(line.value(i)),
                    kind: k,
                    start: start.value(i),
                    sku: t.skus.id(sku.value(i)),
                };
                let acc = WinAcc {
                    end: end.value(i),
                    state_ms: [0, 1, 2, 3].map(|j| ms[j].value(i)),
                    good: good.value(i),
                    reject: reject.value(i),
                    records: records.value(i),
                };
                t.windows.insert(key, acc);
            }
        }
        if let Some(c) = Cols::of(tables, CK_PERIODS) {
            let (line, start, sku, state) = (
                c.get::<StringArray>("line")?,
                c.get::<Int64Array>("start")?,
                c.get::<StringArray>("sku")?,
                c.get::<StringArray>("state")?,
            );
            let (duration, good, reject) = (
                c.get::<Int64Array>("duration")?,
                c.get::<Float64Array>("good")?,
                c.get::<Float64Array>("reject")?,
            );
            for i in 0..c.rows() {
                let st = LineState::parse(state.value(i))
                    .ok_or_else(|| c.bad(format!("`state` `{}` is unknown", state.value(i))))?;
                let period = Period {
                    sku: t.skus.id(sku.value(i)),
                    state: st as usize,
                    duration: duration.value(i),
                    good: good.value(i),
                    reject: reject.value(i),
                };
                t.periods
                    .insert((t.lines.id(line.value(i)), start.value(i)), period);
            }
        }
        if let Some(c) = Cols::of(tables, CK_PLANS) {
            let (id, line, sku) = (
                c.get::<StringArray>("plan_id")?,
                c.get::<StringArray>("line")?,
                c.get::<StringArray>("sku")?,
            );
            let (day, qty) = (
                c.get::<Int32Array>("day")?,
                c.get::<Float64Array>("quantity")?,
            );
            for i in 0..c.rows() {
                let plan = Plan {
                    line: t.lines.id(line.value(i)),
                    sku: t.skus.id(sku.value(i)),
                    day: day.value(i),
                    quantity: qty.value(i),
                };
                t.plans.insert(id.value(i).to_owned(), plan);
            }
        }
        if let Some(c) = Cols::of(tables, CK_CAPACITY) {
            let (line, sku) = (c.get::<StringArray>("line")?, c.get::<StringArray>("sku")?);
            let (from, rated) = (
                c.get::<Int32Array>("valid_from")?,
                c.get::<Float64Array>("rated")?,
            );
            for i in 0..c.rows() {
                let s = (!sku.is_null(i)).then(|| t.skus.id(sku.value(i)));
                let key = (t.lines.id(line.value(i)), s, from.value(i));
                t.capacity.insert(key, rated.value(i));
            }
        }
        if let Some(c) = Cols::of(tables, CK_META) {
            let max = c.one::<Int64Array>("max_event_ms")?;
            t.max_event_ms = (!max.is_null(0)).then(|| max.value(0));
            t.applied = c.one::<UInt64Array>("applied")?.value(0);
            t.late = c.one::<UInt64Array>("late")?.value(0);
        }
        t.recent.restore(tables)?;
        Ok(t)
    }

    /// True when `other` holds the same state (for tests of checkpoints).
    pub fn same_state(&self, other: &LineTwin) -> bool {
        let named = |t: &LineTwin| {
            let mut w: Vec<_> = t
                .windows
                .iter()
                .map(|(k, a)| {
                    (
                        t.lines.name(k.line).to_owned(),
                        t.skus.name(k.sku).to_owned(),
                        k.kind,
                        k.start,
                        format!("{a:?}"),
                    )
                })
                .collect();
            w.sort();
            let mut p: Vec<_> = t
                .plans
                .iter()
                .map(|(id, p)| {
                    (
                        id.clone(),
                        t.lines.name(p.line).to_owned(),
                        p.day,
                        p.quantity.to_bits(),
                    )
                })
                .collect();
            p.sort();
            (
                w,
                p,
                t.max_event_ms,
                t.applied,
                t.late,
                t.status.len(),
                t.capacity.len(),
                t.periods.len(),
            )
        };
        named(self) == named(other)
    }
}

#[cfg(test)]
mod tests;
