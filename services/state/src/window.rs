//! Event-time windows: which minute, hour, shift and day an instant falls
//! in, on the plant's local calendar.
//!
//! Windows are tumbling and aligned to local time (`utc_offset_minutes`), so
//! a day is the plant's day and a shift starts when the plant says. Sliding
//! windows are built from these panes: a 15-minute sliding sum is the sum
//! of the last 15 minute windows.

use std::fmt;

/// The window sizes the twin keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowKind {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// From one configured shift start to the next.
    Shift,
    /// One local day.
    Day,
}

impl WindowKind {
    /// Every kind, smallest first.
    pub const ALL: [WindowKind; 4] = [
        WindowKind::Minute,
        WindowKind::Hour,
        WindowKind::Shift,
        WindowKind::Day,
    ];

    /// The name used in tables and config.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Minute => "minute",
            WindowKind::Hour => "hour",
            WindowKind::Shift => "shift",
            WindowKind::Day => "day",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// The local day number (days since 1970-01-01) of instant `t_ms` on a
/// calendar `offset_ms` ahead of UTC.
pub fn local_day(t_ms: i64, offset_ms: i64) -> i32 {
    (t_ms + offset_ms).div_euclid(MS_PER_DAY) as i32
}

/// The plant's calendar: its offset from UTC and its shift starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Calendar {
    offset_ms: i64,
    /// Shift starts, ms after local midnight, sorted, at least one.
    shifts_ms: Vec<i64>,
}

impl Calendar {
    /// A calendar `utc_offset_minutes` ahead of UTC with shifts starting at
    /// `shift_starts` minutes after local midnight (sorted, non-empty; the
    /// config validates both).
    pub fn new(utc_offset_minutes: i32, shift_starts: &[u32]) -> Self {
        let mut shifts_ms: Vec<i64> = shift_starts
            .iter()
            .map(|m| i64::from(*m) * 60_000)
            .collect();
        shifts_ms.sort_unstable();
        if shifts_ms.is_empty() {
            shifts_ms.push(0);
        }
        Calendar {
            offset_ms: i64::from(utc_offset_minutes) * 60_000,
            shifts_ms,
        }
    }

    /// The local day number (days since 1970-01-01 on the local calendar)
    /// of instant `t_ms`.
    pub fn day(&self, t_ms: i64) -> i32 {
        local_day(t_ms, self.offset_ms)
    }

    /// The UTC instant at which local day `day` starts.
    pub fn day_start(&self, day: i32) -> i64 {
        i64::from(day) * MS_PER_DAY - self.offset_ms
    }

    /// `[start, end)` in UTC ms of the `kind` window holding `t_ms`.
    pub fn window(&self, kind: WindowKind, t_ms: i64) -> (i64, i64) {
        let local = t_ms + self.offset_ms;
        let (start, end) = match kind {
            WindowKind::Minute => aligned(local, 60_000),
            WindowKind::Hour => aligned(local, 3_600_000),
            WindowKind::Day => aligned(local, MS_PER_DAY),
            WindowKind::Shift => {
                let midnight = local.div_euclid(MS_PER_DAY) * MS_PER_DAY;
                let tod = local - midnight;
                let first = self.shifts_ms[0];
                let last = self.shifts_ms[self.shifts_ms.len() - 1];
                // The shift started today at or before `tod`, else
                // yesterday's last shift still runs.
                let start = match self.shifts_ms.iter().rev().find(|s| **s <= tod) {
                    Some(s) => midnight + s,
                    None => midnight - MS_PER_DAY + last,
                };
                let start_tod = start - start.div_euclid(MS_PER_DAY) * MS_PER_DAY;
                let day_of_start = start - start_tod;
                let end = match self.shifts_ms.iter().find(|s| **s > start_tod) {
                    Some(s) => day_of_start + s,
                    None => day_of_start + MS_PER_DAY + first,
                };
                (start, end)
            }
        };
        (start - self.offset_ms, end - self.offset_ms)
    }
}

fn aligned(t: i64, size: i64) -> (i64, i64) {
    let start = t.div_euclid(size) * size;
    (start, start + size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN1: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const H: i64 = 3_600_000;

    #[test]
    fn minutes_hours_and_days_follow_local_time() {
        let c = Calendar::new(480, &[360]);
        // 2026-01-01T17:30:10Z is 2026-01-02 01:30:10 at UTC+8.
        let t = JAN1 + 17 * H + 30 * 60_000 + 10_000;
        assert_eq!(
            c.window(WindowKind::Minute, t),
            (JAN1 + 17 * H + 30 * 60_000, JAN1 + 17 * H + 31 * 60_000)
        );
        assert_eq!(
            c.window(WindowKind::Hour, t),
            (JAN1 + 17 * H, JAN1 + 18 * H)
        );
        assert_eq!(c.window(WindowKind::Day, t), (JAN1 + 16 * H, JAN1 + 40 * H));
        assert_eq!(c.day(t), (JAN1 / MS_PER_DAY) as i32 + 1);
        assert_eq!(c.day_start(c.day(t)), JAN1 + 16 * H);
    }

    #[test]
    fn shifts_wrap_over_midnight() {
        let c = Calendar::new(0, &[6 * 60, 14 * 60, 22 * 60]);
        let at = |h: i64| c.window(WindowKind::Shift, JAN1 + h * H + 1);
        assert_eq!(at(7), (JAN1 + 6 * H, JAN1 + 14 * H));
        assert_eq!(at(14), (JAN1 + 14 * H, JAN1 + 22 * H));
        assert_eq!(at(23), (JAN1 + 22 * H, JAN1 + 30 * H));
        // 03:00 belongs to the night shift that started yesterday at 22:00.
        assert_eq!(at(3), (JAN1 - 2 * H, JAN1 + 6 * H));
        // One shift a day is the day.
        let one = Calendar::new(0, &[0]);
        assert_eq!(
            one.window(WindowKind::Shift, JAN1 + 5 * H),
            one.window(WindowKind::Day, JAN1 + 5 * H)
        );
    }

    #[test]
    fn every_instant_is_in_exactly_one_window_of_each_kind() {
        let c = Calendar::new(-300, &[7 * 60 + 30, 19 * 60 + 30]);
        for kind in WindowKind::ALL {
            let mut t = JAN1;
            let (mut s, mut e) = c.window(kind, t);
            while t < JAN1 + 3 * MS_PER_DAY {
                let (s2, e2) = c.window(kind, t);
                assert!(s2 <= t && t < e2, "{kind} {t}");
                if s2 != s {
                    assert_eq!(s2, e, "{kind}: windows tile without gaps");
                    (s, e) = (s2, e2);
                }
                t += 59_000;
            }
        }
    }
}
