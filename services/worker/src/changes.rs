//! Query-table rows as keyed records of a compacted topic, and what changed
//! since the last publish.
//!
//! Each row becomes a record keyed `<table>/<key>` (the key columns'
//! values joined with `/`) whose value is a [`StateChange`] JSON object
//! carrying the row as Arrow's JSON writer writes it. A row that left the
//! table becomes a tombstone: its key with no value.
//!
//! [`Sent`] remembers, per key, a hash of the row last stored on the topic,
//! so a publish sends only new and changed rows and tombstones for the rows
//! that went. It is rebuilt on restart from the restored state plus the
//! topic's records since the checkpoint: see [`crate::Runner`].
//!
//! [`StateChange`]: marktwin_core::events::StateChange

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// A query table an operator keeps: name, schema and the columns that
/// identify a row.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// Table name in SQL and in record keys.
    pub name: &'static str,
    /// Arrow schema.
    pub schema: SchemaRef,
    /// Columns whose values identify a row.
    pub key: &'static [&'static str],
    /// The topic id its changes go to, for a global view over all workers
    /// ([`crate::view::View`]); `None` keeps the table in this process,
    /// covering only the partitions it owns. An operator's tables all go to
    /// topics or all stay local.
    pub topic: Option<&'static str>,
}

/// The fields of a change record that the worker and the view read back;
/// the row stays raw JSON text.
#[derive(Deserialize)]
pub(crate) struct Wire<'a> {
    #[serde(borrow)]
    pub operator: std::borrow::Cow<'a, str>,
    pub partition: i32,
    #[serde(borrow)]
    pub row: &'a RawValue,
}

/// The table a record key `<table>/<key>` belongs to.
pub(crate) fn table_of(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    key.split_once('/').map(|(t, _)| t)
}

/// Hash of a row's JSON text; equal text, equal hash, within one build.
pub(crate) fn row_hash(row: &str) -> u64 {
    let mut h = DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

/// A key value with `%` and `/` escaped, so joined keys cannot collide.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
}

/// Calls `each(record key, row JSON)` for every row of `batch`.
pub(crate) fn rows(
    def: &TableDef,
    batch: &RecordBatch,
    mut each: impl FnMut(String, &str),
) -> Result<()> {
    if batch.num_rows() == 0 {
        return Ok(());
    }
    let encode = |e| Error::Encode {
        table: def.name,
        source: e,
    };
    let mut buf = Vec::with_capacity(batch.num_rows() * 256);
    let mut w = LineDelimitedWriter::new(&mut buf);
    w.write(batch).map_err(encode)?;
    w.finish().map_err(encode)?;
    drop(w);
    let text = std::str::from_utf8(&buf).map_err(|e| Error::Encode {
        table: def.name,
        source: datafusion::arrow::error::ArrowError::ExternalError(Box::new(e)),
    })?;
    let opts = FormatOptions::default();
    let formatters = def
        .key
        .iter()
        .map(|c| {
            let col = batch.column_by_name(c).ok_or_else(|| Error::KeyColumn {
                table: def.name,
                column: c,
            })?;
            ArrayFormatter::try_new(col.as_ref(), &opts).map_err(encode)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut value = String::new();
    for (i, row) in text.lines().enumerate() {
        let mut key = String::with_capacity(64);
        key.push_str(def.name);
        for f in &formatters {
            key.push('/');
            value.clear();
            use std::fmt::Write;
            let _ = write!(value, "{}", f.value(i));
            escape(&value, &mut key);
        }
        each(key, row);
    }
    Ok(())
}

/// The change record for a row: a [`marktwin_core::events::StateChange`].
pub(crate) fn record(
    table: &str,
    key: &str,
    operator: &str,
    partition: i32,
    published_at_ms: i64,
    row: &str,
) -> Vec<u8> {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // The record key is `<table>/<key>`; the value repeats the key part.
    let short = key
        .strip_prefix(table)
        .unwrap_or(key)
        .trim_start_matches('/');
    format!(
        r#"{{"table":{},"key":{},"operator":{},"partition":{partition},"published_at_ms":{published_at_ms},"row":{row}}}"#,
        q(table),
        q(short),
        q(operator)
    )
    .into_bytes()
}

/// What is on the topic for one partition's rows: record key to row hash.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    rows: HashMap<String, u64>,
}

/// Records to send and how [`Sent`] changes once they are stored.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    /// `(record key, value)`; no value is a tombstone.
    pub records: Vec<(String, Option<Vec<u8>>)>,
    updates: Vec<(String, Option<u64>)>,
}

impl Sent {
    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Records the topic's current row for `key` (`None`: a tombstone).
    pub fn set(&mut self, key: &str, row: Option<&str>) {
        match row {
            Some(r) => {
                self.rows.insert(key.to_owned(), row_hash(r));
            }
            None => {
                self.rows.remove(key);
            }
        }
    }

    /// The rows of `tables` (per [`TableDef`], in order) as already sent.
    pub fn seed(&mut self, defs: &[TableDef], tables: &[Vec<RecordBatch>]) -> Result<()> {
        self.rows.clear();
        for (def, batches) in defs.iter().zip(tables) {
            for b in batches {
                rows(def, b, |key, row| {
                    self.rows.insert(key, row_hash(row));
                })?;
            }
        }
        Ok(())
    }

    /// The records that bring the topic from what was sent to `tables`.
    pub fn diff(
        &self,
        operator: &str,
        partition: i32,
        now_ms: i64,
        defs: &[TableDef],
        tables: &[Vec<RecordBatch>],
    ) -> Result<Diff> {
        let mut d = Diff::default();
        let mut present = HashSet::with_capacity(self.rows.len());
        for (def, batches) in defs.iter().zip(tables) {
            for b in batches {
                rows(def, b, |key, row| {
                    let h = row_hash(row);
                    if self.rows.get(&key) != Some(&h) {
                        d.records.push((
                            key.clone(),
                            Some(record(def.name, &key, operator, partition, now_ms, row)),
                        ));
                        d.updates.push((key.clone(), Some(h)));
                    }
                    present.insert(key);
                })?;
            }
        }
        for k in self.rows.keys() {
            if !present.contains(k) {
                d.records.push((k.clone(), None));
                d.updates.push((k.clone(), None));
            }
        }
        Ok(d)
    }

    /// Applies a diff whose records are stored.
    pub fn apply(&mut self, diff: Diff) {
        for (k, h) in diff.updates {
            match h {
                Some(h) => {
                    self.rows.insert(k, h);
                }
                None => {
                    self.rows.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use marktwin_core::events::StateChange;
    use std::sync::Arc;

    fn def() -> TableDef {
        TableDef {
            name: "t",
            schema: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("v", DataType::Float64, true),
            ])),
            key: &["k"],
            topic: None,
        }
    }

    fn batch(rows: &[(&str, Option<f64>)]) -> Vec<RecordBatch> {
        let d = def();
        vec![
            RecordBatch::try_new(
                d.schema,
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
                    Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1))),
                ],
            )
            .unwrap(),
        ]
    }

    fn sent_keys(d: &Diff) -> Vec<(String, bool)> {
        let mut v: Vec<_> = d
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.is_some()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sends_new_and_changed_rows_and_tombstones_for_gone_ones() {
        let defs = [def()];
        let mut s = Sent::default();
        let first = batch(&[("a", Some(1.0)), ("b/x", None), ("c", Some(0.1 + 0.2))]);
        let d = s.diff("op", 2, 7, &defs, &[first]).unwrap();
        assert_eq!(
            sent_keys(&d),
            [
                ("t/a".into(), true),
                ("t/b%2Fx".into(), true),
                ("t/c".into(), true)
            ]
        );
        // The value is a StateChange with the row as Arrow writes it.
        let (_, v) = d.records.iter().find(|(k, _)| k == "t/c").unwrap();
        let change: StateChange = serde_json::from_slice(v.as_ref().unwrap()).unwrap();
        assert_eq!(change.table, "t");
        assert_eq!(change.key, "c");
        assert_eq!((change.operator.as_str(), change.partition), ("op", 2));
        assert_eq!(change.row["v"].as_f64(), Some(0.1 + 0.2));
        let wire: Wire = serde_json::from_slice(v.as_ref().unwrap()).unwrap();
        assert_eq!(wire.row.get(), r#"{"k":"c","v":0.30000000000000004}"#);
        s.apply(d);
        assert_eq!(s.len(), 3);

        // Same rows: nothing to send. One changed, one gone, one new.
        let again = batch(&[("c", Some(0.1 + 0.2)), ("a", Some(1.0)), ("b/x", None)]);
        assert!(
            s.diff("op", 2, 8, &defs, &[again])
                .unwrap()
                .records
                .is_empty()
        );
        let next = batch(&[("a", Some(2.0)), ("c", Some(0.1 + 0.2)), ("d", None)]);
        let d = s
            .diff("op", 2, 9, &defs, std::slice::from_ref(&next))
            .unwrap();
        assert_eq!(
            sent_keys(&d),
            [
                ("t/a".into(), true),
                ("t/b%2Fx".into(), false),
                ("t/d".into(), true)
            ]
        );
        s.apply(d);
        assert!(
            s.diff("op", 2, 9, &defs, std::slice::from_ref(&next))
                .unwrap()
                .records
                .is_empty()
        );

        // Seeding from the same rows knows them all as sent.
        let mut seeded = Sent::default();
        seeded.seed(&defs, std::slice::from_ref(&next)).unwrap();
        assert!(
            seeded
                .diff("op", 2, 9, &defs, &[next])
                .unwrap()
                .records
                .is_empty()
        );
    }

    #[test]
    fn a_missing_key_column_is_an_error_naming_it() {
        let mut d = def();
        d.key = &["nope"];
        let err = Sent::default()
            .diff("op", 0, 0, &[d], &[batch(&[("a", None)])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains("`t`"), "{err}");
    }
}
