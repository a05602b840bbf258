//! The cloud-POS simulator: a seeded, deterministic HTTP API in the shape a
//! retail cloud-POS vendor exposes.
//!
//! Record `i` (a "slot") is a pure function of the seed and `i`, so the same
//! seed and start always serve the same records, a restarted simulator serves
//! what it served before, and a test can recompute every record without
//! asking the server. Slots are released in real time at
//! `pos_lines_per_sec`: slot `i` exists once `start_ms + i / rate` is past.
//!
//! Each order has three slots of which the first one to three are lines, so
//! orders carry one to three lines. Stores and SKUs are drawn with skewed
//! popularity (a few big shops and best-selling SKUs, a long tail); 60 % of
//! orders carry a loyalty member id and phone. About one slot in 2,000 is a
//! defective record (unknown unit, negative quantity, missing SKU, bad
//! timestamp) as real feeds have, so the dead-letter path is always
//! exercised.
//!
//! API: `GET /pos/transactions?cursor=N&limit=M` answers
//! `{"records": [...], "nextCursor": N', "hasMore": bool}` with records in
//! the vendor's own field names (camelCase, RFC 3339 times).

use chrono::{DateTime, SecondsFormat, Utc};
use marktwin_core::config::SimulatorConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{mix, pack_price, unit_f64};

const SLOTS_PER_ORDER: u64 = 3;
const VARIANTS: [&str; 4] = ["Classic", "Slim", "Blue", "Gold"];

/// The deterministic POS record generator.
#[derive(Clone, Debug)]
pub struct PosSim {
    seed: u64,
    stores: u64,
    skus: u64,
    rate: f64,
    start_ms: i64,
    end_ms: Option<i64>,
}

/// One page of the API's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The records, vendor format.
    pub records: Vec<Value>,
    /// Cursor to ask for next.
    pub next_cursor: u64,
    /// Whether more records are available right now.
    pub has_more: bool,
}

impl PosSim {
    /// A generator for `cfg`, with simulated time starting at `start_ms`.
    pub fn new(cfg: &SimulatorConfig, start_ms: i64) -> Self {
        PosSim {
            seed: cfg.seed,
            stores: u64::from(cfg.stores),
            skus: u64::from(cfg.skus),
            rate: cfg.pos_lines_per_sec,
            start_ms,
            end_ms: cfg.end_ms,
        }
    }

    /// Time of slot `i`, ms since epoch.
    pub fn slot_time_ms(&self, i: u64) -> i64 {
        self.start_ms + (i as f64 * 1000.0 / self.rate) as i64
    }

    /// Number of slots released by `now_ms` (and before `end_ms`).
    pub fn released(&self, now_ms: i64) -> u64 {
        let until = self.end_ms.map_or(now_ms, |e| e.min(now_ms));
        if until < self.start_ms {
            return 0;
        }
        // Slot i is released when slot_time_ms(i) <= until.
        let mut n = (((until - self.start_ms) as f64) * self.rate / 1000.0).floor() as u64 + 1;
        while n > 0 && self.slot_time_ms(n - 1) > until {
            n -= 1;
        }
        while self.slot_time_ms(n) <= until {
            n += 1;
        }
        n
    }

    /// The record in slot `i`, or `None` when the slot holds no line.
    pub fn slot(&self, i: u64) -> Option<Value> {
        let order = i / SLOTS_PER_ORDER;
        let line = i % SLOTS_PER_ORDER;
        let lines = 1 + mix(self.seed, 1, order) % SLOTS_PER_ORDER;
        if line >= lines {
            return None;
        }
        let store = (self.stores as f64 * unit_f64(mix(self.seed, 2, order)).powf(1.8)) as u64;
        let store_code = format!("R{:06}", store + 1);
        let (member, mobile) = if unit_f64(mix(self.seed, 3, order)) < 0.6 {
            let consumer = store * 16 + mix(self.seed, 4, order) % 16;
            let phone = format!(
                "1{}{:09}",
                3 + consumer % 7,
                consumer.wrapping_mul(7919) % 1_000_000_000
            );
            (json!(format!("M{consumer:08}")), json!(phone))
        } else {
            (Value::Null, Value::Null)
        };
        let sku = (self.skus as f64 * unit_f64(mix(self.seed, 5, i)).powi(2)) as u64;
        let pack_price = pack_price(self.seed, sku);
        let carton = unit_f64(mix(self.seed, 7, i)) < 0.12;
        let (unit, price, qty) = if carton {
            ("carton", pack_price * 10.0, 1 + mix(self.seed, 8, i) % 2)
        } else {
            ("pack", pack_price, 1 + mix(self.seed, 8, i) % 3)
        };
        let time = DateTime::<Utc>::from_timestamp_millis(self.slot_time_ms(i)).unwrap_or_default();
        let mut rec = json!({
            "storeCode": store_code,
            "orderNo": format!("O{order:010}"),
            "lineNo": line + 1,
            "memberId": member,
            "mobile": mobile,
            "skuCode": format!("SKU{:04}", sku + 1),
            "skuName": format!("Brand {:02} {}", sku / 4 + 1, VARIANTS[(sku % 4) as usize]),
            "price": price,
            "qty": qty,
            "unit": unit,
            "amount": price * qty as f64,
            "paidAt": time.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if mix(self.seed, 9, i).is_multiple_of(2000) {
            match mix(self.seed, 10, i) % 4 {
                0 => rec["unit"] = json!("bale"),
                1 => rec["qty"] = json!(-1),
                2 => rec["skuCode"] = Value::Null,
                _ => rec["paidAt"] = json!("yesterday"),
            }
        }
        Some(rec)
    }

    /// Up to `limit` records from slot `cursor` on, of those released by
    /// `now_ms`.
    pub fn page(&self, cursor: u64, limit: usize, now_ms: i64) -> Page {
        let released = self.released(now_ms);
        let mut records = Vec::with_capacity(limit.min(10_000));
        let mut i = cursor;
        while i < released && records.len() < limit {
            if let Some(r) = self.slot(i) {
                records.push(r);
            }
            i += 1;
        }
        Page {
            records,
            next_cursor: i,
            has_more: i < released,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> PosSim {
        let cfg = SimulatorConfig {
            pos_lines_per_sec: 10.0,
            ..SimulatorConfig::default()
        };
        PosSim::new(&cfg, 1_767_225_600_000)
    }

    #[test]
    fn same_seed_same_records() {
        let a = sim();
        let b = sim();
        for i in 0..500 {
            assert_eq!(a.slot(i), b.slot(i));
        }
    }

    #[test]
    fn releases_in_real_time_and_pages_resume_at_the_cursor() {
        let s = sim();
        assert_eq!(s.released(s.start_ms - 1), 0);
        assert_eq!(s.released(s.start_ms), 1);
        assert_eq!(s.released(s.start_ms + 1000), 11);
        let all = s.page(0, 10_000, s.start_ms + 60_000);
        assert!(!all.has_more);
        assert_eq!(all.next_cursor, 601);
        let first = s.page(0, 100, s.start_ms + 60_000);
        assert!(first.has_more);
        let rest = s.page(first.next_cursor, 10_000, s.start_ms + 60_000);
        let joined: Vec<_> = first.records.into_iter().chain(rest.records).collect();
        assert_eq!(joined, all.records);
    }

    #[test]
    fn orders_have_one_to_three_lines_and_some_defects() {
        let s = sim();
        let recs: Vec<Value> = (0..300_000).filter_map(|i| s.slot(i)).collect();
        assert!(
            recs.len() > 150_000 && recs.len() < 250_000,
            "{}",
            recs.len()
        );
        let defects = recs
            .iter()
            .filter(|r| {
                r["unit"] == "bale"
                    || r["qty"] == -1
                    || r["skuCode"].is_null()
                    || r["paidAt"] == "yesterday"
            })
            .count();
        assert!((50..250).contains(&defects), "{defects}");
        let members = recs.iter().filter(|r| !r["memberId"].is_null()).count();
        assert!(members * 10 > recs.len() * 5 && members * 10 < recs.len() * 7);
    }

    #[test]
    fn end_ms_bounds_the_data_set() {
        let cfg = SimulatorConfig {
            pos_lines_per_sec: 10.0,
            end_ms: Some(1_767_225_600_000 + 10_000),
            ..SimulatorConfig::default()
        };
        let s = PosSim::new(&cfg, 1_767_225_600_000);
        assert_eq!(s.released(i64::MAX / 2), 101);
    }
}
