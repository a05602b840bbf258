//! What applying one input record does, shared by every operator: the
//! outcome, decoding with a reason that names the field, and the bounded
//! memory of recent event ids that drops records the edge resent.

use std::collections::VecDeque;

use foldhash::{HashSet, HashSetExt};

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::codec;
use marktwin_core::events::{Envelope, EventKind};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Why an input record was not applied: for the dead-letter topic, or for
/// the late topic when it came too late.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// Bounded reason class: `decode`, `wrong_kind`, `range` or `late`.
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
    /// Taken in, but it changes nothing: a fact the state already holds or
    /// one that a newer fact supersedes (an older inventory count).
    Unchanged,
    /// It cannot be applied; send it to the dead-letter topic.
    Rejected(Rejected),
    /// It is older than its windows accept; send it to the late topic.
    Late(Rejected),
}

/// `v` is a finite number, or why field `field` is refused.
pub(crate) fn finite(field: &str, v: f64) -> Result<(), Rejected> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Rejected {
            reason: "range",
            detail: format!("`{field}` is {v}; expected a finite number"),
        })
    }
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

    /// The remembered ids, oldest first, as the checkpoint table `recent`
    /// (high and low halves of each id).
    pub fn save(&self) -> Result<(&'static str, RecordBatch)> {
        let (hi, lo): (Vec<u64>, Vec<u64>) = self
            .order
            .iter()
            .map(|id| ((id >> 64) as u64, *id as u64))
            .unzip();
        ck(
            "recent",
            vec![
                ("hi", Arc::new(UInt64Array::from(hi)) as ArrayRef),
                ("lo", Arc::new(UInt64Array::from(lo))),
            ],
        )
    }

    /// Remembers the ids of the checkpoint table `recent`, if present.
    pub fn restore(&mut self, tables: &[(String, RecordBatch)]) -> Result<()> {
        if let Some(c) = Cols::of(tables, "recent") {
            let (hi, lo) = (c.get::<UInt64Array>("hi")?, c.get::<UInt64Array>("lo")?);
            for i in 0..c.rows() {
                self.insert((u128::from(hi.value(i)) << 64) | u128::from(lo.value(i)));
            }
        }
        Ok(())
    }
}

/// Checkpoint tables with owned names, as a restore receives them.
#[cfg(test)]
pub(crate) fn owned(tables: Vec<(&'static str, RecordBatch)>) -> Vec<(String, RecordBatch)> {
    tables.into_iter().map(|(n, b)| (n.to_owned(), b)).collect()
}

/// A checkpoint table from named columns.
pub(crate) fn ck(
    table: &'static str,
    cols: Vec<(&str, ArrayRef)>,
) -> Result<(&'static str, RecordBatch)> {
    RecordBatch::try_from_iter(cols)
        .map(|b| (table, b))
        .map_err(|source| Error::Build { table, source })
}

/// A timestamp field, ms, UTC.
pub(crate) fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

pub(crate) fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

/// Nullable timestamps, ms, UTC.
pub(crate) fn ts_opt(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

pub(crate) fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

pub(crate) fn int64s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}

pub(crate) fn float64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}

pub(crate) fn build(
    table: &'static str,
    schema: &SchemaRef,
    cols: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Build { table, source })
}

/// Typed column access for restoring a checkpoint or reading a published
/// table back, naming what is wrong.
pub(crate) struct Cols<'a> {
    table: &'static str,
    batch: &'a RecordBatch,
    checkpoint: bool,
}

impl<'a> Cols<'a> {
    /// The checkpoint table `table` among `tables`, if present.
    pub(crate) fn of(tables: &'a [(String, RecordBatch)], table: &'static str) -> Option<Self> {
        tables
            .iter()
            .find(|(n, _)| n == table)
            .map(|(_, batch)| Cols {
                table,
                batch,
                checkpoint: true,
            })
    }

    /// A batch of query table `table`, read back (from a view, say).
    pub(crate) fn table(table: &'static str, batch: &'a RecordBatch) -> Self {
        Cols {
            table,
            batch,
            checkpoint: false,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Column `name` as array type `T`.
    pub(crate) fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let col = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| self.bad(format!("column `{name}` is missing")))?;
        col.as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| self.bad(format!("column `{name}` has type {}", col.data_type())))
    }

    /// Column `name` of a one-row table.
    pub(crate) fn one<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        if self.rows() != 1 {
            return Err(self.bad(format!("has {} rows; expected 1", self.rows())));
        }
        self.get(name)
    }

    /// An error about this table.
    pub(crate) fn bad(&self, detail: String) -> Error {
        let table = self.table;
        if self.checkpoint {
            Error::Restore { table, detail }
        } else {
            Error::Read { table, detail }
        }
    }
}

/// An event id of 32 hex digits as a number.
pub(crate) fn parse_id(hex: &str) -> Option<u128> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

/// Decodes an envelope (JSON or protobuf, recognised per record) that must
/// carry `kind`.
pub(crate) fn decode<T: DeserializeOwned>(
    value: &[u8],
    kind: EventKind,
) -> Result<Envelope<T>, Rejected> {
    let env: Envelope<T> = codec::decode_any(value).map_err(|e| Rejected {
        reason: "decode",
        detail: format!("not a {} envelope: {e}", kind.as_str()),
    })?;
    if env.kind != kind {
        return Err(Rejected {
            reason: "wrong_kind",
            detail: format!(
                "`kind` is `{}`; this topic carries {}",
                env.kind.as_str(),
                kind.as_str()
            ),
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_bounded_and_restores_from_a_checkpoint() {
        let mut r = RecentIds::new(2);
        assert!(r.insert(1));
        assert!(r.insert(2 << 64));
        assert!(!r.insert(1));
        let saved = vec![("recent".to_owned(), r.save().unwrap().1)];
        let mut back = RecentIds::new(2);
        back.restore(&saved).unwrap();
        assert!(!back.insert(2 << 64));
        assert!(r.insert(3));
        assert!(r.insert(1), "1 fell out of the window");
    }
}
