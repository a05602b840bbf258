//! The MES simulator: what the plant's manufacturing execution system
//! reports about its packing lines, in its own shape.
//!
//! - Production (`GET /mes/production?cursor=&limit=`, `{"records",
//!   "nextCursor", "hasMore"}`): one record per line and minute, released
//!   five seconds after the minute ends, with the line's state at the end
//!   of the minute (`running`, `idle`, `fault`, `changeover`), the SKU, and
//!   good and rejected packs (`"uom": "PAK"`), periods as RFC 3339 text.
//!   Each line changes over to the day's planned SKU (the ERP plan's) in the
//!   first 20 minutes of the UTC day; a quarter hour is idle one time in 20
//!   and starts with a fault of 1–15 minutes one time in 30; a running
//!   minute makes 90–98 % of the rated speed with 0.4–1.2 % rejects.
//! - Capacity (`GET /mes/line-capacity?cursor=&limit=`, the same paging):
//!   each line's rated speed in packs a minute, line-wide, valid from 30
//!   days before the start.
//!
//! About one production record in 5,000 has its period end before its
//! start, which cleaning sends to the dead-letter topic.

use marktwin_core::config::SimulatorConfig;
use serde_json::{Value, json};

use super::business::{LogPage, date, log_page, rfc3339};
use super::{mix, unit_f64};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// Minutes of changeover at the start of each UTC day.
pub const CHANGEOVER_MINUTES: i64 = 20;
/// How long after a minute ends its record is released.
const RELEASE_DELAY_MS: i64 = 5_000;

/// The seeded MES.
#[derive(Clone, Debug)]
pub struct Mes {
    seed: u64,
    lines: u64,
    skus: u64,
    start_ms: i64,
    end_ms: Option<i64>,
}

/// The line code of line `l` (0-based), as MES and ERP both spell it.
pub fn line_code(l: u64) -> String {
    format!("line-{}", l + 1)
}

/// The SKU line `l` makes on UTC day `day` (days since the epoch), as the
/// ERP plans it.
pub fn planned_sku(l: u64, day: i64, skus: u64) -> String {
    format!("SKU{:04}", (l * 5 + day as u64) % skus + 1)
}

/// The rated speed of line `l`, packs a minute.
pub fn rated_per_minute(l: u64) -> f64 {
    350.0 + 50.0 * (l % 4) as f64
}

impl Mes {
    /// The MES of `cfg`, simulated time starting at `start_ms`.
    pub fn new(cfg: &SimulatorConfig, start_ms: i64) -> Self {
        Mes {
            seed: cfg.seed,
            lines: u64::from(cfg.lines),
            skus: u64::from(cfg.skus),
            start_ms,
            end_ms: cfg.end_ms,
        }
    }

    fn until(&self, now_ms: i64) -> i64 {
        self.end_ms.map_or(now_ms, |e| e.min(now_ms))
    }

    fn minute0(&self) -> i64 {
        self.start_ms.div_euclid(MINUTE_MS)
    }

    fn minute_of(&self, k: u64) -> i64 {
        self.minute0() + (k / self.lines) as i64
    }

    fn release_ms(&self, k: u64) -> i64 {
        (self.minute_of(k) + 1) * MINUTE_MS + RELEASE_DELAY_MS
    }

    /// The state of line `l` at minute `m` (minutes since the epoch).
    pub fn state(&self, l: u64, m: i64) -> &'static str {
        if m.rem_euclid(DAY_MS / MINUTE_MS) < CHANGEOVER_MINUTES {
            return "changeover";
        }
        let quarter = m.div_euclid(15) as u64;
        let r = mix(self.seed, 60, (l << 40) | quarter);
        match r % 60 {
            0..=2 => "idle",
            3 | 4 if (m.rem_euclid(15) as u64) <= (r >> 8) % 15 => "fault",
            _ => "running",
        }
    }

    /// Production record `k`: line `k % lines` in minute `k / lines` from
    /// the start's minute.
    pub fn production(&self, k: u64) -> Value {
        let l = k % self.lines;
        let m = self.minute_of(k);
        let start = m * MINUTE_MS;
        let state = self.state(l, m);
        let (good, reject) = if state == "running" {
            let speed = 0.90 + 0.08 * unit_f64(mix(self.seed, 61, k));
            let made = (rated_per_minute(l) * speed).round();
            let rejects = (made * (0.004 + 0.008 * unit_f64(mix(self.seed, 62, k)))).round();
            (made - rejects, rejects)
        } else {
            (0.0, 0.0)
        };
        let defective = mix(self.seed, 63, k).is_multiple_of(5000);
        let end = if defective {
            start - MINUTE_MS
        } else {
            start + MINUTE_MS
        };
        json!({
            "lineCode": line_code(l),
            "matCode": planned_sku(l, start.div_euclid(DAY_MS), self.skus),
            "goodQty": good as u64,
            "rejectQty": reject as u64,
            "uom": "PAK",
            "status": state,
            "periodStart": rfc3339(start),
            "periodEnd": rfc3339(end),
        })
    }

    /// Production records from `cursor` on, those released by `now_ms`.
    pub fn productions(&self, cursor: u64, limit: usize, now_ms: i64) -> LogPage {
        log_page(
            cursor,
            limit,
            self.until(now_ms),
            |k| self.release_ms(k),
            |k| self.production(k),
        )
    }

    /// Capacity record `k`: line `k`'s rated speed.
    pub fn capacity(&self, k: u64) -> Value {
        let from = self.start_ms - 30 * DAY_MS;
        json!({
            "lineCode": line_code(k),
            "ratedSpeed": rated_per_minute(k),
            "uom": "PAK",
            "validFrom": date(from, "%Y-%m-%d"),
        })
    }

    /// Capacity records from `cursor` on: one per line, all released at
    /// the start.
    pub fn capacities(&self, cursor: u64, limit: usize) -> LogPage {
        log_page(
            cursor,
            limit,
            self.start_ms,
            |k| {
                if k < self.lines {
                    self.start_ms
                } else {
                    i64::MAX
                }
            },
            |k| self.capacity(k),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mes() -> Mes {
        let cfg = SimulatorConfig {
            lines: 3,
            skus: 10,
            ..SimulatorConfig::default()
        };
        Mes::new(&cfg, 1_767_225_600_000) // 2026-01-01T00:00:00Z
    }

    #[test]
    fn a_minute_per_line_released_after_it_ends() {
        let m = mes();
        // Nothing before the first minute has ended.
        assert!(
            m.productions(0, 100, m.start_ms + 59_000)
                .records
                .is_empty()
        );
        let page = m.productions(0, 100, m.start_ms + MINUTE_MS + RELEASE_DELAY_MS);
        assert_eq!(page.records.len(), 3);
        assert!(!page.more);
        assert_eq!(page.records[2]["lineCode"], "line-3");
        assert_eq!(page.records[0]["periodStart"], "2026-01-01T00:00:00.000Z");
        // The day starts with a changeover to the planned SKU.
        assert_eq!(page.records[0]["status"], "changeover");
        assert_eq!(page.records[0]["goodQty"], 0);
    }

    #[test]
    fn a_day_of_a_line_looks_like_a_packing_line() {
        let m = mes();
        let day = m.productions(0, 10_000, m.start_ms + DAY_MS + MINUTE_MS);
        let line1: Vec<&Value> = day
            .records
            .iter()
            .filter(|r| r["lineCode"] == "line-1")
            .take(1440)
            .collect();
        let count = |s: &str| line1.iter().filter(|r| r["status"] == s).count();
        assert_eq!(count("changeover"), CHANGEOVER_MINUTES as usize);
        let running = count("running");
        assert!(running > 1200, "{running} running minutes");
        assert!(count("fault") > 0 || count("idle") > 0);
        let good: u64 = line1.iter().map(|r| r["goodQty"].as_u64().unwrap()).sum();
        let per_min = good as f64 / running as f64;
        assert!(
            (0.88 * 350.0..=0.98 * 350.0).contains(&per_min),
            "{per_min}"
        );
        assert!(line1.iter().all(|r| r["matCode"] == line1[0]["matCode"]));
    }

    #[test]
    fn one_capacity_per_line() {
        let m = mes();
        let page = m.capacities(0, 100);
        assert_eq!(page.records.len(), 3);
        assert!(!page.more);
        assert_eq!(page.records[1]["ratedSpeed"], 400.0);
        assert_eq!(page.records[0]["validFrom"], "2025-12-02");
    }
}
