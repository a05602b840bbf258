//! The global view: the change records of a compacted output topic
//! materialised into DataFusion tables, so SQL in any process sees the rows
//! of every partition, whichever worker owns it.
//!
//! A [`View`] reads the topic from the beginning and keeps, per table, the
//! latest row JSON of every key (a tombstone removes the key). Once it has
//! read to the end it publishes the tables and reports ready; after that it
//! rebuilds the tables that changed every `worker.publish_interval_ms`, so
//! the view trails the workers by about two publish intervals. A single
//! process (`marktwin up`) uses the same path: its worker publishes to the
//! topic and its view reads it back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::Config;
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_state::SnapshotTable;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::changes::{TableDef, Wire, table_of};
use crate::error::Result;
use crate::{wait_for_partitions, watermarks};

/// The view's metrics.
#[derive(Clone)]
pub struct ViewMetrics {
    records_in: IntCounterVec,
    rows: IntGaugeVec,
    lag: IntGaugeVec,
    build: HistogramVec,
    rejected: IntCounterVec,
}

impl ViewMetrics {
    /// Registers the view metrics on `registry` (once per process).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let records_in = IntCounterVec::new(
            Opts::new(m::VIEW_RECORDS_IN_TOTAL, "Change records read by the view."),
            &["topic"],
        )?;
        let rows = IntGaugeVec::new(
            Opts::new(m::VIEW_ROWS, "Rows per view table, all partitions."),
            &["table"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                m::VIEW_LAG_RECORDS,
                "Output-topic records the view has yet to read, clamped at 0.",
            ),
            &["topic", "partition"],
        )?;
        let build = HistogramVec::new(
            HistogramOpts::new(
                m::VIEW_BUILD_DURATION_SECONDS,
                "Rebuilding a view table from its rows.",
            ),
            &["table"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                m::VIEW_REJECTED_TOTAL,
                "Change records or rows the view could not read, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(records_in.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(build.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(ViewMetrics {
            records_in,
            rows,
            lag,
            build,
            rejected,
        })
    }
}

/// The readiness check of the view of topic id `topic`.
pub fn readiness_check(topic: &str) -> String {
    format!("view_{topic}")
}

/// One materialised table: the latest row JSON per record key.
struct Rows {
    def: TableDef,
    table: Arc<SnapshotTable>,
    rows: HashMap<String, Box<str>>,
    dirty: bool,
}

/// Materialises a compacted topic of state changes into query tables.
pub struct View {
    cfg: Config,
    bootstrap: String,
    topic_id: &'static str,
    topic: String,
    tables: Vec<Rows>,
    readiness: Readiness,
    metrics: ViewMetrics,
}

impl View {
    /// A view of topic id `topic` holding the tables `defs`; records of
    /// other tables on the topic are skipped.
    pub fn new(
        cfg: &Config,
        bootstrap: &str,
        topic: &'static str,
        defs: Vec<TableDef>,
        readiness: Readiness,
        metrics: ViewMetrics,
    ) -> Self {
        readiness.set(
            readiness_check(topic),
            false,
            "starting: reading the output topic to its end",
        );
        View {
            cfg: cfg.clone(),
            bootstrap: bootstrap.to_owned(),
            topic_id: topic,
            topic: cfg.topic_name(topic),
            tables: defs
                .into_iter()
                .map(|def| Rows {
                    table: Arc::new(SnapshotTable::new(def.name, def.schema.clone())),
                    def,
                    rows: HashMap::new(),
                    dirty: false,
                })
                .collect(),
            readiness,
            metrics,
        }
    }

    /// The query tables.
    pub fn tables(&self) -> Vec<Arc<SnapshotTable>> {
        self.tables.iter().map(|t| t.table.clone()).collect()
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut c = marktwin_kafka::client_config(&self.cfg, &self.bootstrap);
        c.set("group.id", "marktwin-view")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100");
        Ok(c.create()?)
    }

    /// Runs until `stop` is set; call from a blocking thread.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<()> {
        let consumer = self.consumer()?;
        // Watermarks on a connection of their own, not behind a held fetch
        // (see `Runner::run`).
        let meta = self.consumer()?;
        let Some(n) = wait_for_partitions(&meta, &self.topic, &stop) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for q in 0..n {
            tpl.add_partition_offset(&self.topic, q, Offset::Beginning)?;
            let (low, high) = watermarks(&meta, &self.topic, q, &stop)?;
            if high > low {
                ends.insert(q, high);
            }
        }
        consumer.assign(&tpl)?;
        let index: HashMap<&'static str, usize> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.def.name, i))
            .collect();
        let labels: Vec<String> = (0..n).map(|q| q.to_string()).collect();
        let mut next = vec![0i64; n as usize];
        let mut caught_up = false;
        let every = Duration::from_millis(self.cfg.worker.publish_interval_ms);
        let (mut last_build, mut last_lag) = (Instant::now(), Instant::now());
        let records_in = self
            .metrics
            .records_in
            .with_label_values(&[self.topic.as_str()]);
        while !stop.load(Ordering::Relaxed) {
            let mut timeout = Duration::from_millis(100);
            for _ in 0..10_000 {
                let Some(msg) = consumer.poll(timeout) else {
                    break;
                };
                timeout = Duration::ZERO;
                let msg = match msg {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(e) => {
                        warn!(topic = self.topic.as_str(), error = %e, "Consumer error.");
                        break;
                    }
                };
                records_in.inc();
                let (q, off) = (msg.partition(), msg.offset());
                next[q as usize] = off + 1;
                if ends.get(&q).is_some_and(|end| off + 1 >= *end) {
                    ends.remove(&q);
                }
                self.apply(&index, &msg, q, off);
            }
            if !caught_up && ends.is_empty() {
                caught_up = true;
                self.build(true);
                last_build = Instant::now();
                let rows: usize = self.tables.iter().map(|t| t.rows.len()).sum();
                self.readiness.set(
                    readiness_check(self.topic_id),
                    true,
                    format!("read the output topic to its end: {rows} rows"),
                );
                info!(topic = self.topic.as_str(), rows, took = ?started.elapsed(), "View caught up.");
            } else if caught_up && last_build.elapsed() >= every {
                self.build(false);
                last_build = Instant::now();
            }
            if last_lag.elapsed() >= Duration::from_secs(5) {
                for q in 0..n {
                    if let Ok((_, high)) =
                        meta.fetch_watermarks(&self.topic, q, Duration::from_millis(500))
                    {
                        self.metrics
                            .lag
                            .with_label_values(&[self.topic.as_str(), &labels[q as usize]])
                            .set((high - next[q as usize]).max(0));
                    }
                }
                last_lag = Instant::now();
            }
        }
        Ok(())
    }

    /// Takes in one change record.
    fn apply(
        &mut self,
        index: &HashMap<&'static str, usize>,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        q: i32,
        off: i64,
    ) {
        let key = msg.key().unwrap_or_default();
        let Some(&i) = table_of(key).and_then(|t| index.get(t)) else {
            // Another operator's table, or not a change record at all.
            return;
        };
        let t = &mut self.tables[i];
        let key = String::from_utf8_lossy(key);
        match msg.payload() {
            None => {
                t.dirty |= t.rows.remove(key.as_ref()).is_some();
            }
            Some(v) => match serde_json::from_slice::<Wire>(v) {
                Ok(w) => {
                    t.rows.insert(key.into_owned(), w.row.get().into());
                    t.dirty = true;
                }
                Err(e) => {
                    self.metrics
                        .rejected
                        .with_label_values(&["not_a_state_change"])
                        .inc();
                    warn!(topic = self.topic.as_str(), partition = q, offset = off, error = %e, "Skipping a record that is not a state change.");
                }
            },
        }
    }

    /// Rebuilds the tables that changed (all with `all`).
    fn build(&mut self, all: bool) {
        for t in &mut self.tables {
            if !(all || t.dirty) {
                continue;
            }
            let started = Instant::now();
            let batch = decode(&t.def, t.rows.iter(), &self.metrics.rejected);
            t.table.publish(batch.into_iter().collect());
            t.dirty = false;
            self.metrics
                .build
                .with_label_values(&[t.def.name])
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .rows
                .with_label_values(&[t.def.name])
                .set(t.rows.len() as i64);
        }
    }
}

/// The rows as one batch of `def`'s schema. A row that does not fit the
/// schema (written by another version, say) is skipped with a warning
/// naming its key, and counted.
fn decode<'a>(
    def: &TableDef,
    rows: impl Iterator<Item = (&'a String, &'a Box<str>)> + Clone,
    rejected: &IntCounterVec,
) -> Option<RecordBatch> {
    let all: Vec<&str> = rows.clone().map(|(_, r)| r.as_ref()).collect();
    if let Ok(b) = decode_rows(def, &all) {
        return b;
    }
    // Find the rows at fault; keep the rest.
    let mut good = Vec::with_capacity(all.len());
    for (key, row) in rows {
        match decode_rows(def, &[row.as_ref()]) {
            Ok(_) => good.push(row.as_ref()),
            Err(e) => {
                rejected.with_label_values(&["row_schema"]).inc();
                warn!(table = def.name, key = key.as_str(), error = %e, "Skipping a row that does not fit the table.");
            }
        }
    }
    decode_rows(def, &good).ok().flatten()
}

fn decode_rows(
    def: &TableDef,
    rows: &[&str],
) -> std::result::Result<Option<RecordBatch>, datafusion::arrow::error::ArrowError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let text = rows.join("\n");
    let mut decoder = ReaderBuilder::new(def.schema.clone())
        .with_batch_size(8192)
        .build_decoder()?;
    let mut batches = Vec::new();
    let mut buf = text.as_bytes();
    while !buf.is_empty() {
        let read = decoder.decode(buf)?;
        buf = &buf[read..];
        if let Some(b) = decoder.flush()? {
            batches.push(b);
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    concat_batches(&def.schema, &batches).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Sent;
    use datafusion::arrow::array::{
        ArrayRef, Float64Array, StringArray, TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn def() -> TableDef {
        TableDef {
            name: "t",
            schema: Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new(
                    "at",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
                Field::new("v", DataType::Float64, true),
            ])),
            key: &["k", "at"],
            topic: Some("twin"),
        }
    }

    #[test]
    fn rows_written_as_changes_decode_back_to_the_same_batch() {
        let d = def();
        let batch = RecordBatch::try_new(
            d.schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_767_247_200_123, 0])
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![Some(0.1 + 0.2), None])),
            ],
        )
        .unwrap();
        let diff = Sent::default()
            .diff("op", 0, 1, std::slice::from_ref(&d), &[vec![batch.clone()]])
            .unwrap();
        let rows: HashMap<String, Box<str>> = diff
            .records
            .iter()
            .map(|(k, v)| {
                let w: Wire = serde_json::from_slice(v.as_ref().unwrap()).unwrap();
                (k.clone(), w.row.get().into())
            })
            .collect();
        assert!(
            rows.contains_key("t/a/2026-01-01T06:00:00.123Z"),
            "{rows:?}"
        );
        let rejected = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        let mut got: Vec<_> = rows.iter().collect();
        got.sort();
        let back = decode(&d, got.into_iter(), &rejected).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn a_row_that_does_not_fit_is_skipped_and_counted() {
        let d = def();
        let rows: HashMap<String, Box<str>> = [
            (
                "t/a".to_owned(),
                r#"{"k":"a","at":"2026-01-01T00:00:00Z","v":1.5}"#.into(),
            ),
            ("t/b".to_owned(), r#"{"k":"b","v":2.5}"#.into()),
        ]
        .into_iter()
        .collect();
        let rejected = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        let back = decode(&d, rows.iter(), &rejected).unwrap();
        assert_eq!(back.num_rows(), 1);
        assert_eq!(rejected.with_label_values(&["row_schema"]).get(), 1);
    }
}
