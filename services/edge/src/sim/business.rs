//! The business-system simulators: CRM retailers, ERP allocation orders and
//! production plans, SCM inventory and a WMS stock log, each in a vendor's
//! own shape (field names, paging, time formats, unit spellings), seeded and
//! deterministic like the POS simulator: every answer is a pure function of
//! the seed, the start and the time asked at.
//!
//! - CRM (`GET /crm/retailers?modifiedSince=&skip=&top=`, `updated_since`
//!   paging, answer `{"data": [...]}`): one record per retailer, its current
//!   revision; a retailer is re-graded every 6 hours, mostly to the same
//!   grade (a touch without change, which cleaning recognises as a
//!   duplicate). Revisions are stamped on whole minutes, so many retailers
//!   share a last-modified time and paging must handle ties.
//! - ERP orders (`GET /erp/allocation-orders?after=&pageSize=`, opaque
//!   text cursor, `{"items", "next", "more"}`): every retailer orders once a
//!   day, 2–6 lines, mostly in cartons (`CTN`), sometimes packs (`PAK`),
//!   dates as `YYYYMMDD`.
//! - ERP plans (`GET /erp/production-plans?cursor=&limit=`): one plan per
//!   line and day, in cases (`CS`) of 2,500 packs, about 85 % of the line's
//!   rated output, released 12 hours ahead; the MES ([`super::mes`]) makes
//!   the planned SKU.
//! - SCM inventory (`GET /scm/inventory?updated_since=&offset=&limit=`,
//!   a bare array, last-modified in ms): the latest hourly count of each
//!   warehouse and SKU, quantities as text, local times (UTC+8).
//! - WMS stock (`GET /wms/stock?cursor=&limit=`): the same counts as the
//!   warehouse system sees them, in packs, within ±2 % of the SCM's: the
//!   two are fused (`docs/sources.md`).
//!
//! About one record in 1,500 is defective, so the dead-letter path is
//! exercised.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use marktwin_core::config::SimulatorConfig;
use serde_json::{Value, json};

use super::{mes, mix, pack_price};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// How often the CRM re-grades a retailer.
pub const REGRADE_MS: i64 = 6 * HOUR_MS;
const GRADES: [&str; 5] = ["A", "B", "C", "D", "E"];

/// The seeded business systems.
#[derive(Clone, Debug)]
pub struct Business {
    seed: u64,
    stores: u64,
    skus: u64,
    regions: u64,
    warehouses: u64,
    lines: u64,
    start_ms: i64,
    end_ms: Option<i64>,
}

pub(super) fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn local(ms: i64) -> String {
    let cst = FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&cst)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

pub(super) fn date(ms: i64, fmt: &str) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format(fmt)
        .to_string()
}

/// A page of a cursor-paged log: records, the next cursor, more waiting.
#[derive(Clone, Debug, PartialEq)]
pub struct LogPage {
    /// The records.
    pub records: Vec<Value>,
    /// Where to go on.
    pub next: u64,
    /// Whether more records are released.
    pub more: bool,
}

impl Business {
    /// The business systems of `cfg`, simulated time starting at `start_ms`.
    pub fn new(cfg: &SimulatorConfig, start_ms: i64) -> Self {
        Business {
            seed: cfg.seed,
            stores: u64::from(cfg.stores),
            skus: u64::from(cfg.skus),
            regions: u64::from(cfg.regions),
            warehouses: u64::from(cfg.warehouses),
            lines: u64::from(cfg.lines),
            start_ms,
            end_ms: cfg.end_ms,
        }
    }

    fn until(&self, now_ms: i64) -> i64 {
        self.end_ms.map_or(now_ms, |e| e.min(now_ms))
    }

    /// The region of retailer `s` (0-based), as the CRM has it.
    pub fn region_of(&self, s: u64) -> u64 {
        mix(self.seed, 22, s) % self.regions
    }

    fn warehouse_code(&self, w: u64) -> String {
        format!("WH{:02}", w + 1)
    }

    // --- CRM ---

    fn retailer_base_ms(&self, s: u64) -> i64 {
        self.start_ms - DAY_MS + (mix(self.seed, 20, s) % 360) as i64 * 60_000
    }

    /// The current revision of retailer `s` and when it was made.
    pub fn retailer_revision(&self, s: u64, now_ms: i64) -> (i64, i64) {
        let base = self.retailer_base_ms(s);
        let r = (self.until(now_ms) - base).max(0) / REGRADE_MS;
        (r, base + r * REGRADE_MS)
    }

    /// Retailer `s` at revision `r`, vendor format.
    pub fn retailer(&self, s: u64, r: i64) -> Value {
        let tier = match s * 100 / self.stores {
            0..5 => 0,
            5..20 => 1,
            20..50 => 2,
            50..80 => 3,
            _ => 4,
        };
        let h = mix(self.seed, 21, s.wrapping_mul(4096) ^ r as u64);
        let grade = match h % 8 {
            0 if tier > 0 => tier - 1,
            1 if tier < 4 => tier + 1,
            _ => tier,
        };
        let lat = 22.0 + (mix(self.seed, 23, s) % 10_000) as f64 / 1000.0;
        let lng = 108.0 + (mix(self.seed, 24, s) % 10_000) as f64 / 1000.0;
        let mut rec = json!({
            "custCode": format!("R{:06}", s + 1),
            "custName": format!("Store {:06}", s + 1),
            "regionCode": format!("RG{:02}", self.region_of(s) + 1),
            "custLevel": GRADES[grade as usize],
            "licenseNo": format!("LIC{:010}", mix(self.seed, 25, s) % 10_000_000_000),
            "geo": {"lat": lat, "lng": lng},
            "lastModified": rfc3339(self.retailer_base_ms(s) + r * REGRADE_MS),
        });
        if h.is_multiple_of(1500) {
            rec["geo"]["lat"] = json!(123.4);
        }
        rec
    }

    /// The CRM's answer: current retailers modified at or after `since_ms`,
    /// oldest first (ties by code), `offset` skipped, at most `limit`.
    pub fn retailers(
        &self,
        since_ms: Option<i64>,
        offset: usize,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Value> {
        let current = (0..self.stores).map(|s| {
            let (r, t) = self.retailer_revision(s, now_ms);
            (t, s, r)
        });
        modified_since(current, since_ms, offset, limit)
            .map(|(s, r)| self.retailer(s, r))
            .collect()
    }

    // --- ERP orders ---

    fn order_time_ms(&self, k: u64) -> i64 {
        self.start_ms + (k as i128 * DAY_MS as i128 / self.stores as i128) as i64
    }

    /// Orders released by `now_ms`.
    pub fn orders_released(&self, now_ms: i64) -> u64 {
        let until = self.until(now_ms);
        if until < self.start_ms {
            return 0;
        }
        let mut n = ((until - self.start_ms) as i128 * self.stores as i128 / DAY_MS as i128) as u64;
        while self.order_time_ms(n) <= until {
            n += 1;
        }
        n
    }

    /// The lines of order `k`, vendor format.
    pub fn order_lines(&self, k: u64) -> Vec<Value> {
        let s = k % self.stores;
        let t = self.order_time_ms(k);
        let n = 2 + mix(self.seed, 30, k) % 5;
        let first = mix(self.seed, 31, k);
        (0..n)
            .map(|l| {
                let sku = (first + l) % self.skus;
                let h = mix(self.seed, 32, k * 8 + l);
                let (uom, qty, price) = if h.is_multiple_of(8) {
                    ("PAK", 5 + h % 46, pack_price(self.seed, sku))
                } else {
                    ("CTN", 1 + h % 10, pack_price(self.seed, sku) * 10.0)
                };
                let mut rec = json!({
                    "orderNo": format!("SO{k:08}"),
                    "itemNo": l + 1,
                    "whseCode": self.warehouse_code(self.region_of(s) % self.warehouses),
                    "custCode": format!("R{:06}", s + 1),
                    "goodsCode": format!("SKU{:04}", sku + 1),
                    "qty": qty,
                    "uom": uom,
                    "price": price,
                    "orderDate": date(t, "%Y%m%d"),
                });
                let d = mix(self.seed, 33, k * 8 + l);
                if d.is_multiple_of(1500) {
                    match (d / 1500) % 3 {
                        0 => rec["qty"] = json!("x"),
                        1 => rec["uom"] = json!("BOX"),
                        _ => rec["goodsCode"] = Value::Null,
                    }
                }
                rec
            })
            .collect()
    }

    /// Order lines from order `cursor` on, whole orders, about `limit`.
    pub fn orders(&self, cursor: u64, limit: usize, now_ms: i64) -> LogPage {
        let released = self.orders_released(now_ms);
        let mut records = Vec::new();
        let mut k = cursor;
        while k < released && records.len() < limit {
            records.extend(self.order_lines(k));
            k += 1;
        }
        LogPage {
            records,
            next: k,
            more: k < released,
        }
    }

    // --- ERP plans ---

    fn plan_day0(&self) -> i64 {
        day_of(self.start_ms)
    }

    fn plan_release_ms(&self, k: u64) -> i64 {
        (self.plan_day0() + (k / self.lines) as i64) * DAY_MS - 12 * HOUR_MS
    }

    /// Plan `k`: line `k % lines` on day `k / lines` from the start's day.
    pub fn plan(&self, k: u64) -> Value {
        let l = k % self.lines;
        let d = self.plan_day0() + (k / self.lines) as i64;
        let day_ms = d * DAY_MS;
        json!({
            "planNo": format!("PP-{}-L{:02}", date(day_ms, "%Y%m%d"), l + 1),
            "lineCode": format!("line-{}", l + 1),
            "matCode": mes::planned_sku(l, d, self.skus),
            "planDate": date(day_ms, "%Y-%m-%d"),
            "planQty": plan_cases(l, mix(self.seed, 50, k)),
            "uom": "CS",
        })
    }

    /// Plans from `cursor` on.
    pub fn plans(&self, cursor: u64, limit: usize, now_ms: i64) -> LogPage {
        log_page(
            cursor,
            limit,
            self.until(now_ms),
            |k| self.plan_release_ms(k),
            |k| self.plan(k),
        )
    }

    // --- SCM inventory and WMS stock ---

    fn pairs(&self) -> u64 {
        self.warehouses * self.skus
    }

    fn count_ms(&self, p: u64, hour: i64) -> i64 {
        hour * HOUR_MS + (mix(self.seed, 40, p) % 600) as i64 * 1000
    }

    /// Cartons of pair `p` (warehouse `p / skus`, SKU `p % skus`) counted
    /// in hour `hour`.
    pub fn cartons(&self, p: u64, hour: i64) -> u64 {
        let base = 50.0 + (mix(self.seed, 41, p) % 200) as f64;
        let wave = 1.0 + 0.2 * (hour as f64 * 0.3 + p as f64).sin();
        (base * wave) as u64 + mix(self.seed, 42, p.wrapping_mul(100_003) ^ hour as u64) % 10
    }

    fn hour0(&self) -> i64 {
        self.start_ms.div_euclid(HOUR_MS)
    }

    /// The latest count of pair `p` by `now_ms`: its hour, if any.
    pub fn latest_count(&self, p: u64, now_ms: i64) -> Option<i64> {
        let until = self.until(now_ms);
        let mut h = until.div_euclid(HOUR_MS);
        if self.count_ms(p, h) > until {
            h -= 1;
        }
        (h >= self.hour0()).then_some(h)
    }

    /// Pair `p`'s count in hour `h`, SCM format.
    pub fn scm_count(&self, p: u64, h: i64) -> Value {
        let t = self.count_ms(p, h);
        let mut rec = json!({
            "warehouse": self.warehouse_code(p / self.skus),
            "sku": format!("SKU{:04}", p % self.skus + 1),
            "onHand": self.cartons(p, h).to_string(),
            "uom": "CTN",
            "countedAt": local(t),
            "lastModified": t + 2000,
        });
        if mix(self.seed, 43, p.wrapping_mul(7919) ^ h as u64).is_multiple_of(1500) {
            rec["onHand"] = json!("-5");
        }
        rec
    }

    /// The SCM's answer: each pair's latest count modified at or after
    /// `since_ms`, oldest first (ties by pair), `offset` skipped.
    pub fn inventory(
        &self,
        since_ms: Option<i64>,
        offset: usize,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Value> {
        let current = (0..self.pairs()).filter_map(|p| {
            let h = self.latest_count(p, now_ms)?;
            Some((self.count_ms(p, h) + 2000, p, h))
        });
        modified_since(current, since_ms, offset, limit)
            .map(|(p, h)| self.scm_count(p, h))
            .collect()
    }

    /// WMS entry `k`: pair `k % pairs` in hour `hour0 + k / pairs`.
    pub fn wms_entry(&self, k: u64) -> Value {
        let p = k % self.pairs();
        let h = self.hour0() + (k / self.pairs()) as i64;
        let noise = 1.0 + ((mix(self.seed, 44, k) % 401) as f64 - 200.0) / 10_000.0;
        json!({
            "site": self.warehouse_code(p / self.skus),
            "item": format!("SKU{:04}", p % self.skus + 1),
            "qtyPacks": (self.cartons(p, h) as f64 * 10.0 * noise).round(),
            "ts": rfc3339(self.count_ms(p, h)),
        })
    }

    fn wms_release_ms(&self, k: u64) -> i64 {
        (self.hour0() + (k / self.pairs()) as i64) * HOUR_MS + 20 * 60_000
    }

    /// WMS entries from `cursor` on.
    pub fn wms(&self, cursor: u64, limit: usize, now_ms: i64) -> LogPage {
        log_page(
            cursor,
            limit,
            self.until(now_ms),
            |k| self.wms_release_ms(k),
            |k| self.wms_entry(k),
        )
    }
}

/// What an updated-since API answers from the current `(modified, id,
/// version)` of its objects: those modified at or after `since_ms`, oldest
/// first (ties by id), `offset` skipped, at most `limit`, as `(id, version)`.
fn modified_since(
    current: impl Iterator<Item = (i64, u64, i64)>,
    since_ms: Option<i64>,
    offset: usize,
    limit: usize,
) -> impl Iterator<Item = (u64, i64)> {
    let mut all: Vec<(i64, u64, i64)> = current
        .filter(|(t, _, _)| since_ms.is_none_or(|w| *t >= w))
        .collect();
    all.sort_unstable();
    all.into_iter()
        .skip(offset)
        .take(limit)
        .map(|(_, id, version)| (id, version))
}

/// A day's plan for line `l` in cases of 2,500 packs: 85 % of its rated
/// output, give or take 10 %.
fn plan_cases(l: u64, r: u64) -> u64 {
    let day = mes::rated_per_minute(l) * 1440.0 * 0.85 / 2500.0;
    (day * (0.9 + 0.2 * super::unit_f64(r))).round() as u64
}

/// Entries of a log from `cursor` on, those released by `until`, at most
/// `limit`.
pub(super) fn log_page(
    cursor: u64,
    limit: usize,
    until: i64,
    released_at: impl Fn(u64) -> i64,
    entry: impl Fn(u64) -> Value,
) -> LogPage {
    let mut records = Vec::new();
    let mut k = cursor;
    while released_at(k) <= until && records.len() < limit {
        records.push(entry(k));
        k += 1;
    }
    LogPage {
        more: released_at(k) <= until,
        records,
        next: k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn biz() -> Business {
        let cfg = SimulatorConfig {
            stores: 50,
            skus: 10,
            ..SimulatorConfig::default()
        };
        Business::new(&cfg, 1_767_225_600_000)
    }

    #[test]
    fn retailers_page_by_time_with_ties_and_regrade() {
        let b = biz();
        let now = b.start_ms + 13 * HOUR_MS;
        let all = b.retailers(None, 0, 10_000, now);
        assert_eq!(all.len(), 50);
        let times: Vec<&str> = all
            .iter()
            .map(|r| r["lastModified"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        let distinct: std::collections::HashSet<_> = times.iter().collect();
        assert!(distinct.len() < 50, "some retailers share a time");
        // Paging by offset returns the same sequence.
        let mut paged = Vec::new();
        while paged.len() < 50 {
            paged.extend(b.retailers(None, paged.len(), 7, now));
        }
        assert_eq!(paged, all);
        // Six hours later every retailer has a new revision.
        let later = b.retailers(Some(now + 1), 0, 10_000, now + REGRADE_MS);
        assert_eq!(later.len(), 50);
    }

    #[test]
    fn orders_are_daily_per_store_and_resume_at_the_cursor() {
        let b = biz();
        let now = b.start_ms + DAY_MS;
        assert_eq!(b.orders_released(now), 51);
        let all = b.orders(0, 100_000, now);
        assert!(!all.more);
        let first = b.orders(0, 20, now);
        let rest = b.orders(first.next, 100_000, now);
        let joined: Vec<_> = first.records.into_iter().chain(rest.records).collect();
        assert_eq!(joined, all.records);
        assert!(
            all.records
                .iter()
                .all(|r| r["uom"] == "CTN" || r["uom"] == "PAK" || r["uom"] == "BOX")
        );
    }

    #[test]
    fn scm_and_wms_see_the_same_stock_within_two_percent() {
        let b = biz();
        let now = b.start_ms + 3 * HOUR_MS;
        let wms = b.wms(0, 100_000, now).records;
        assert_eq!(wms.len() as u64, 2 * b.pairs() + b.pairs()); // hours 0..=2
        let last = &wms[wms.len() - 1];
        let p = b.pairs() - 1;
        let h = b.hour0() + 2;
        let packs = b.cartons(p, h) as f64 * 10.0;
        let q = last["qtyPacks"].as_f64().unwrap();
        assert!((q - packs).abs() <= packs * 0.021, "{q} vs {packs}");
        let scm = b.inventory(None, 0, 100_000, now);
        assert_eq!(scm.len() as u64, b.pairs());
    }

    #[test]
    fn plans_are_released_half_a_day_ahead() {
        let b = biz();
        let page = b.plans(0, 1000, b.start_ms);
        // The start's day is released 12 h before it; the next day at
        // noon of the start's day.
        assert!(!page.records.is_empty());
        assert_eq!(page.records[0]["lineCode"], "line-1");
    }
}
