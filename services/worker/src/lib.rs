//! marktwin-worker: the stream worker.
//!
//! A [`Worker`] owns a static share of the POS topic's partitions (worker `i`
//! of `n` takes the partitions `p` with `p % n == i`), reads them with a
//! plain librdkafka consumer (no group rebalancing: Tansu does not evict dead
//! members, and our offsets live with our state), applies each record to a
//! [`marktwin_state::PosState`], and publishes the state to its query
//! [`Tables`] on a short tick. Records it cannot apply go to the dead-letter
//! topic with the reason before the batch counts as done.
//!
//! Processing runs on one blocking thread per worker: it is CPU work
//! (decode, hash, add) and batches of thousands keep the per-record overhead
//! low.

pub mod error;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use marktwin_core::backoff::Backoff;
use marktwin_core::events::DeadLetter;
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_core::topics::id;
use marktwin_core::{Config, now_ms};
use marktwin_kafka::DeadLetterSink;
use marktwin_state::daily_sales::{self, DailySales};
use marktwin_state::{Applied, PosState, SnapshotTable};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

pub use error::{Error, Result};

/// The tables a worker publishes, for the board to register.
#[derive(Clone, Debug)]
pub struct Tables {
    /// POS sales per day, store and SKU.
    pub daily_sales: Arc<SnapshotTable>,
}

impl Tables {
    /// Empty tables.
    pub fn new() -> Self {
        Tables {
            daily_sales: Arc::new(SnapshotTable::new(daily_sales::TABLE, DailySales::schema())),
        }
    }

    /// All tables, for registration.
    pub fn all(&self) -> Vec<Arc<SnapshotTable>> {
        vec![self.daily_sales.clone()]
    }
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    records_in: IntCounterVec,
    offset: IntGaugeVec,
    lag: IntGaugeVec,
    rows: IntGaugeVec,
    publish: HistogramVec,
    batch: HistogramVec,
}

impl WorkerMetrics {
    /// Registers the worker metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let records_in = IntCounterVec::new(
            Opts::new(m::WORKER_RECORDS_IN_TOTAL, "Records consumed."),
            &["topic", "partition"],
        )?;
        let offset = IntGaugeVec::new(
            Opts::new(m::WORKER_OFFSET, "Next offset to process."),
            &["topic", "partition"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                m::WORKER_LAG_RECORDS,
                "High watermark minus our next offset, clamped at 0.",
            ),
            &["topic", "partition"],
        )?;
        let rows = IntGaugeVec::new(
            Opts::new(m::STATE_ROWS, "Rows per state table."),
            &["table"],
        )?;
        let publish = HistogramVec::new(
            HistogramOpts::new(
                m::STATE_PUBLISH_DURATION_SECONDS,
                "Publishing a table snapshot.",
            ),
            &["table"],
        )?;
        let batch = HistogramVec::new(
            HistogramOpts::new(
                m::WORKER_BATCH_DURATION_SECONDS,
                "Decoding and applying one batch.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(records_in.clone()))?;
        for g in [&offset, &lag, &rows] {
            registry.register(Box::new(g.clone()))?;
        }
        for h in [&publish, &batch] {
            registry.register(Box::new(h.clone()))?;
        }
        Ok(WorkerMetrics {
            records_in,
            offset,
            lag,
            rows,
            publish,
            batch,
        })
    }
}

/// The readiness check the worker maintains.
pub const READINESS: &str = "worker_state";

/// A stream worker over the POS topic.
pub struct Worker {
    cfg: Config,
    bootstrap: String,
    topic: String,
    tables: Tables,
    metrics: WorkerMetrics,
    dead_letters: DeadLetterSink,
    readiness: Readiness,
    state: PosState,
}

impl Worker {
    /// A worker with empty state.
    pub fn new(
        cfg: &Config,
        bootstrap: &str,
        tables: Tables,
        metrics: WorkerMetrics,
        dead_letters: DeadLetterSink,
        readiness: Readiness,
    ) -> Self {
        readiness.set(
            READINESS,
            false,
            "starting: reading the input partitions to their end",
        );
        let w = &cfg.worker;
        Worker {
            topic: cfg.topic_name(id::POS),
            state: PosState::new(cfg.units.clone(), w.utc_offset_minutes, w.dedup_window),
            cfg: cfg.clone(),
            bootstrap: bootstrap.to_owned(),
            tables,
            metrics,
            dead_letters,
            readiness,
        }
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut c = marktwin_kafka::client_config(&self.cfg, &self.bootstrap);
        c.set("group.id", "marktwin-worker")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100");
        Ok(c.create()?)
    }

    /// This worker's partitions of the POS topic, waiting for the topic's
    /// metadata if the broker does not have it yet.
    fn my_partitions(&self, consumer: &BaseConsumer, stop: &AtomicBool) -> Result<Vec<i32>> {
        let (i, n) = (
            self.cfg.worker.instance as i32,
            self.cfg.worker.instances as i32,
        );
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.load(Ordering::Relaxed) {
            match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .filter(|t| t.name() == self.topic && t.error().is_none())
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .filter(|p| p % n == i)
                        .collect();
                    if !parts.is_empty() {
                        return Ok(parts);
                    }
                    warn!(topic = %self.topic, "Topic has no partitions yet; waiting.");
                }
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "Metadata request failed; retrying.")
                }
            }
            std::thread::sleep(backoff.next_delay());
        }
        Ok(Vec::new())
    }

    /// Runs until `stop` is set; call from a blocking thread. `rt` runs the
    /// dead-letter producer's futures.
    pub fn run(mut self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) -> Result<()> {
        let consumer = self.consumer()?;
        let parts = self.my_partitions(&consumer, &stop)?;
        if parts.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            let start = self
                .state
                .next_offset(p)
                .map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&self.topic, p, start)?;
        }
        consumer.assign(&tpl)?;
        info!(topic = %self.topic, partitions = ?parts, instance = self.cfg.worker.instance, "Worker assigned.");

        let labels: BTreeMap<i32, String> = parts.iter().map(|p| (*p, p.to_string())).collect();
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut caught_up = false;
        let mut last_progress = Instant::now();
        let publish_every = Duration::from_millis(self.cfg.worker.publish_interval_ms);
        let mut last_publish = Instant::now();
        let mut dirty = false;
        let max_batch = self.cfg.worker.max_batch;
        let mut rejects: Vec<DeadLetter> = Vec::new();
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();

        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut n = 0usize;
            let mut timeout = Duration::from_millis(100);
            while n < max_batch {
                let Some(msg) = consumer.poll(timeout) else {
                    break;
                };
                timeout = Duration::ZERO;
                match msg {
                    Ok(msg) => {
                        n += 1;
                        let (p, off) = (msg.partition(), msg.offset());
                        *counts.entry(p).or_default() += 1;
                        match self.state.apply(p, off, msg.payload().unwrap_or_default()) {
                            Applied::Applied => dirty = true,
                            Applied::ReplayedOffset | Applied::DuplicateEvent => {}
                            Applied::Rejected(r) => rejects.push(DeadLetter {
                                reason: r.reason.to_owned(),
                                detail: r.detail,
                                stage: "worker".into(),
                                source: self.topic.clone(),
                                partition: Some(p),
                                offset: Some(off),
                                original: String::from_utf8_lossy(
                                    msg.payload().unwrap_or_default(),
                                )
                                .into_owned(),
                                rejected_at_ms: now_ms(),
                            }),
                        }
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        at_end.insert(p);
                    }
                    Err(e) => {
                        warn!(topic = %self.topic, error = %e, "Consumer error.");
                        break;
                    }
                }
            }
            if !rejects.is_empty() {
                self.flush_rejects(&rt, &mut rejects, &stop);
            }
            if n > 0 {
                self.metrics
                    .batch
                    .with_label_values(&[&self.topic])
                    .observe(started.elapsed().as_secs_f64());
                for (p, c) in std::mem::take(&mut counts) {
                    self.metrics
                        .records_in
                        .with_label_values(&[self.topic.as_str(), &labels[&p]])
                        .inc_by(c);
                }
            }
            if dirty && last_publish.elapsed() >= publish_every {
                self.publish()?;
                dirty = false;
                last_publish = Instant::now();
            }
            if !caught_up && labels.keys().all(|p| at_end.contains(p)) {
                // Publish what the catch-up built at once, so ready implies
                // queryable.
                self.publish()?;
                dirty = false;
                caught_up = true;
                self.report_ready();
                info!(topic = %self.topic, applied = self.state.applied(), "Worker caught up.");
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                self.observe_progress(&consumer, &labels);
                if caught_up {
                    // Keep the reason current, not the count at catch-up.
                    self.report_ready();
                }
                last_progress = Instant::now();
            }
        }
        if dirty {
            self.publish()?;
        }
        info!(topic = %self.topic, applied = self.state.applied(), "Worker stopped.");
        Ok(())
    }

    fn flush_rejects(
        &self,
        rt: &tokio::runtime::Handle,
        rejects: &mut Vec<DeadLetter>,
        stop: &AtomicBool,
    ) {
        // The batch is not done until its rejects are stored: retry for ever.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match rt.block_on(self.dead_letters.send(rejects)) {
                Ok(()) => {
                    rejects.clear();
                    return;
                }
                Err(e) if !stop.load(Ordering::Relaxed) => {
                    warn!(error = %e, count = rejects.len(), "Dead-letter produce failed; retrying.");
                    std::thread::sleep(backoff.next_delay());
                }
                Err(e) => {
                    warn!(error = %e, count = rejects.len(), "Stopping with dead letters unsent; they are re-read on restart.");
                    return;
                }
            }
        }
    }

    fn publish(&self) -> Result<()> {
        let t = Instant::now();
        let batches = self.state.sales().to_batches()?;
        self.tables.daily_sales.publish(batches);
        let name = self.tables.daily_sales.name();
        self.metrics
            .publish
            .with_label_values(&[name])
            .observe(t.elapsed().as_secs_f64());
        self.metrics
            .rows
            .with_label_values(&[name])
            .set(self.state.sales().len() as i64);
        Ok(())
    }

    fn report_ready(&self) {
        self.readiness.set(
            READINESS,
            true,
            format!("caught up; {} records applied", self.state.applied()),
        );
    }

    fn observe_progress(&self, consumer: &BaseConsumer, labels: &BTreeMap<i32, String>) {
        for (p, label) in labels {
            let next = self.state.next_offset(*p).unwrap_or(0);
            self.metrics
                .offset
                .with_label_values(&[self.topic.as_str(), label])
                .set(next);
            // Tansu may report a high watermark below the true end: clamp
            // at zero. Asked every few seconds, with a short timeout.
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&self.topic, *p, Duration::from_millis(500))
            {
                self.metrics
                    .lag
                    .with_label_values(&[self.topic.as_str(), label])
                    .set((high - next).max(0));
            }
        }
    }
}
