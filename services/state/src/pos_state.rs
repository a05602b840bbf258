//! The worker's POS state of one input partition: daily sales plus the
//! memory of recent event ids.
//!
//! Two guards, for two sources of repetition:
//! - **replayed offsets** (a restart or reassignment re-reads a partition):
//!   the worker keeps each partition's next offset with the state's
//!   checkpoint and skips records below it;
//! - **resent records** (the edge repeats a page after a crash between the
//!   broker's acknowledgement and its cursor write): event ids are
//!   deterministic, and ids seen within the last `window` records are
//!   skipped. The edge resends at most one page, so a window of a few pages
//!   is enough.

use marktwin_core::config::UnitsConfig;
use marktwin_core::events::{Envelope, EventKind, PosTransaction};

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt64Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;

use crate::daily_sales::DailySales;
use crate::error::{Error, Result};
use crate::record::{Applied, Cols, RecentIds, Rejected, ck, decode, parse_id};

/// POS state of one input partition.
#[derive(Debug, Clone)]
pub struct PosState {
    sales: DailySales,
    recent: RecentIds,
    applied: u64,
}

impl PosState {
    /// Empty state.
    pub fn new(units: UnitsConfig, utc_offset_minutes: i32, dedup_window: usize) -> Self {
        PosState {
            sales: DailySales::new(units, utc_offset_minutes),
            recent: RecentIds::new(dedup_window),
            applied: 0,
        }
    }

    /// Decodes (JSON or protobuf, recognised per record) and applies one
    /// record. The caller has already skipped replayed offsets.
    pub fn apply(&mut self, value: &[u8]) -> Applied {
        let env: Envelope<PosTransaction> = match decode(value, EventKind::PosTransaction) {
            Ok(e) => e,
            Err(r) => return Applied::Rejected(r),
        };
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

    /// Records applied since the state began.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The daily sales aggregate.
    pub fn sales(&self) -> &DailySales {
        &self.sales
    }

    /// The state as checkpoint tables.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let sales = self.sales.to_batches()?;
        let sales =
            concat_batches(&DailySales::schema(), &sales).map_err(|source| Error::Build {
                table: "sales",
                source,
            })?;
        Ok(vec![
            ("sales", sales),
            ck(
                "meta",
                vec![(
                    "applied",
                    Arc::new(UInt64Array::from(vec![self.applied])) as ArrayRef,
                )],
            )?,
            self.recent.save()?,
        ])
    }

    /// Rebuilds the state [`PosState::save`] wrote.
    pub fn restore(
        units: UnitsConfig,
        utc_offset_minutes: i32,
        dedup_window: usize,
        tables: &[(String, RecordBatch)],
    ) -> Result<Self> {
        let mut s = PosState::new(units, utc_offset_minutes, dedup_window);
        if let Some(c) = Cols::of(tables, "sales") {
            s.sales.restore(&c)?;
        }
        if let Some(c) = Cols::of(tables, "meta") {
            s.applied = c.one::<UInt64Array>("applied")?.value(0);
        }
        s.recent.restore(tables)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::codec;
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
    fn resent_events_count_once_also_after_a_restore() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        assert_eq!(s.apply(&rec("A")), Applied::Applied);
        assert_eq!(s.apply(&rec("B")), Applied::Applied);
        // The edge resent B.
        assert_eq!(s.apply(&rec("B")), Applied::DuplicateEvent);
        assert_eq!(s.applied(), 2);
        assert_eq!(s.sales().len(), 1);
        let saved = crate::record::owned(s.save().unwrap());
        let mut back = PosState::restore(UnitsConfig::default(), 0, 100, &saved).unwrap();
        assert_eq!(back.applied(), 2);
        assert_eq!(
            back.sales().to_batches().unwrap(),
            s.sales().to_batches().unwrap()
        );
        assert_eq!(back.apply(&rec("A")), Applied::DuplicateEvent);
        assert_eq!(back.apply(&rec("C")), Applied::Applied);
    }

    #[test]
    fn undecodable_records_are_rejected_with_the_reason() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        match s.apply(b"{not json") {
            Applied::Rejected(r) => assert_eq!(r.reason, "decode"),
            other => panic!("{other:?}"),
        }
        let mut v: serde_json::Value = serde_json::from_slice(&rec("A")).unwrap();
        v["payload"]["unit"] = "bale".into();
        match s.apply(&serde_json::to_vec(&v).unwrap()) {
            Applied::Rejected(r) => assert!(r.detail.contains("bale"), "{}", r.detail),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.applied(), 0);
    }

    #[test]
    fn protobuf_records_apply_like_json() {
        let mut s = PosState::new(UnitsConfig::default(), 0, 100);
        let env: serde_json::Value = serde_json::from_slice(&rec("A")).unwrap();
        let pb = codec::encode(&env, Encoding::Protobuf).unwrap();
        assert_eq!(s.apply(&pb), Applied::Applied);
        // The same event as JSON is recognised as the same event.
        assert_eq!(s.apply(&rec("A")), Applied::DuplicateEvent);
        match s.apply(b"\x0a\xff") {
            Applied::Rejected(r) => assert_eq!(r.reason, "decode"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.applied(), 1);
    }
}
