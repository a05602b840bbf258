//! The worker's POS state: daily sales plus the bookkeeping that makes
//! applying an input record exactly-once.
//!
//! Two guards, for two sources of repetition:
//! - **replayed offsets** (a restart or reassignment re-reads a partition):
//!   each partition's next offset is kept with the state, and a record below
//!   it is skipped;
//! - **resent records** (the edge repeats a page after a crash between the
//!   broker's acknowledgement and its cursor write): event ids are
//!   deterministic, and ids seen within the last `window` records are
//!   skipped. The edge resends at most one page, so a window of a few pages
//!   is enough.

use std::collections::{HashMap, HashSet, VecDeque};

use marktwin_core::codec;
use marktwin_core::config::UnitsConfig;
use marktwin_core::events::{Envelope, EventKind, PosTransaction};

use crate::daily_sales::DailySales;

/// Why an input record was not applied and must go to the dead-letter topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// Bounded reason class: `decode` or `wrong_kind`.
    pub reason: &'static str,
    /// Detail naming the field.
    pub detail: String,
}

/// What happened to one input record.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Its effect is in the state.
    Applied,
    /// Its offset was already applied (a replay).
    ReplayedOffset,
    /// Its event id was seen recently (a resend by the edge).
    DuplicateEvent,
    /// It cannot be applied; send it to the dead-letter topic.
    Rejected(Rejected),
}

/// Recently seen event ids, bounded.
#[derive(Debug, Clone)]
pub struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    window: usize,
}

impl RecentIds {
    /// Remembers at most `window` ids.
    pub fn new(window: usize) -> Self {
        RecentIds {
            set: HashSet::with_capacity(window.min(1 << 20)),
            order: VecDeque::with_capacity(window.min(1 << 20)),
            window: window.max(1),
        }
    }

    /// True when `id` is new (and remembers it); false when seen.
    pub fn insert(&mut self, id: u128) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.window
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

fn parse_id(hex: &str) -> Option<u128> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

/// POS state of the partitions one worker owns.
#[derive(Debug, Clone)]
pub struct PosState {
    sales: DailySales,
    next_offset: HashMap<i32, i64>,
    recent: RecentIds,
    applied: u64,
}

impl PosState {
    /// Empty state.
    pub fn new(units: UnitsConfig, utc_offset_minutes: i32, dedup_window: usize) -> Self {
        PosState {
            sales: DailySales::new(units, utc_offset_minutes),
            next_offset: HashMap::new(),
            recent: RecentIds::new(dedup_window),
            applied: 0,
        }
    }

    /// Decodes (JSON or protobuf, recognised per record) and applies the
    /// record at `partition`/`offset`.
    pub fn apply(&mut self, partition: i32, offset: i64, value: &[u8]) -> Applied {
        let next = self.next_offset.entry(partition).or_insert(0);
        if offset < *next {
            return Applied::ReplayedOffset;
        }
        *next = offset + 1;
        let env: Envelope<PosTransaction> = match codec::decode_any(value) {
            Ok(e) => e,
            Err(e) => {
                return Applied::Rejected(Rejected {
                    reason: "decode",
                    detail: format!("not a pos_transaction envelope: {e}"),
                });
            }
        };
        if env.kind != EventKind::PosTransaction {
            return Applied::Rejected(Rejected {
                reason: "wrong_kind",
                detail: format!(
                    "`kind` is `{}`; this topic carries pos_transaction",
                    env.kind.as_str()
                ),
            });
        }
        let Some(id) = parse_id(&env.event_id) else {
            return Applied::Rejected(Rejected {
                reason: "decode",
                detail: format!("`event_id` `{}` is not 32 hex digits", env.event_id),
            });
        };
        if !self.recent.insert(id) {
            return Applied::DuplicateEvent;
        }
        self.sales.apply(&env.payload);
        self.applied += 1;
        Applied::Applied
    }

    /// The next offset to read of `partition`, if any was applied.
    pub fn next_offset(&self, partition: i32) -> Option<i64> {
        self.next_offset.get(&partition).copied()
    }

    /// Records applied since the state was created.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The daily sales aggregate.
    pub fn sales(&self) -> &DailySales {
        &self.sales
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::events::Unit;
    use marktwin_core::topics::Encoding;

    fn rec(order: &str) -> Vec<u8> {
        let t = PosTransaction {
            store_code: "S1".into(),
            order_number: order.into(),
            line_no: 1,
            consumer_id: None,
            consumer_phone: None,
            sku_code: "K1".into(),
            sku_name: "K1".into(),
            unit_price: 10.0,
            quantity: 1.0,
            unit: Unit::Pack,
            total_amount: 10.0,
            transaction_time_ms: 0,
        };
        serde_json::to_vec(&Envelope::wrap("pos", 1, t)).unwrap()
    }

    #[test]
    fn replayed_offsets_and_resent_events_count_once() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        assert_eq!(s.apply(0, 0, &rec("A")), Applied::Applied);
        assert_eq!(s.apply(0, 1, &rec("B")), Applied::Applied);
        // The partition is read again from the start.
        assert_eq!(s.apply(0, 0, &rec("A")), Applied::ReplayedOffset);
        assert_eq!(s.apply(0, 1, &rec("B")), Applied::ReplayedOffset);
        // The edge resent B at a new offset.
        assert_eq!(s.apply(0, 2, &rec("B")), Applied::DuplicateEvent);
        // Another partition has its own offsets.
        assert_eq!(s.apply(1, 0, &rec("C")), Applied::Applied);
        assert_eq!(s.applied(), 3);
        assert_eq!(s.next_offset(0), Some(3));
        assert_eq!(s.sales().len(), 1);
    }

    #[test]
    fn undecodable_records_are_rejected_with_the_reason_and_consume_their_offset() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        match s.apply(0, 0, b"{not json") {
            Applied::Rejected(r) => assert_eq!(r.reason, "decode"),
            other => panic!("{other:?}"),
        }
        let mut v: serde_json::Value = serde_json::from_slice(&rec("A")).unwrap();
        v["payload"]["unit"] = "bale".into();
        match s.apply(0, 1, &serde_json::to_vec(&v).unwrap()) {
            Applied::Rejected(r) => assert!(r.detail.contains("bale"), "{}", r.detail),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_offset(0), Some(2));
        assert_eq!(s.applied(), 0);
    }

    #[test]
    fn protobuf_records_apply_like_json() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        let env: serde_json::Value = serde_json::from_slice(&rec("A")).unwrap();
        let pb = codec::encode(&env, Encoding::Protobuf).unwrap();
        assert_eq!(s.apply(0, 0, &pb), Applied::Applied);
        // The same event as JSON is recognised as the same event.
        assert_eq!(s.apply(0, 1, &rec("A")), Applied::DuplicateEvent);
        match s.apply(0, 2, b"\x0a\xff") {
            Applied::Rejected(r) => assert_eq!(r.reason, "decode"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.applied(), 1);
        assert_eq!(s.next_offset(0), Some(3));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut r = RecentIds::new(2);
        assert!(r.insert(1));
        assert!(r.insert(2));
        assert!(!r.insert(1));
        assert!(r.insert(3));
        assert!(r.insert(1), "1 fell out of the window");
    }
}
