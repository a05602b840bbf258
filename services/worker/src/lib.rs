//! marktwin-worker: the stream worker.
//!
//! A [`Runner`] runs one [`Operator`] (POS daily sales, the production
//! twin) over a static share of its input partitions, applies each record
//! once, publishes the state to the operator's query tables on a short tick
//! and checkpoints it with its input offsets on a longer one. Records it
//! cannot apply go to the dead-letter topic, late ones to the late topic,
//! with the reason, before the batch counts as done.
//!
//! Processing runs on one blocking thread per operator: it is CPU work
//! (decode, hash, add) and batches of thousands keep the per-record overhead
//! low.

pub mod error;
pub mod operator;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use marktwin_core::backoff::Backoff;
use marktwin_core::events::DeadLetter;
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_core::{Config, now_ms};
use marktwin_kafka::DeadLetterSink;
use marktwin_state::Applied;
use marktwin_state::checkpoint::{Checkpoint, CheckpointStore};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

pub use error::{Error, Result};
pub use operator::{Operator, PartitionState, PosOperator, TwinOperator};

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    records_in: IntCounterVec,
    offset: IntGaugeVec,
    lag: IntGaugeVec,
    rows: IntGaugeVec,
    publish: HistogramVec,
    batch: HistogramVec,
    latency: HistogramVec,
    checkpoint: HistogramVec,
    checkpoint_bytes: IntGaugeVec,
    watermark_lag: prometheus::GaugeVec,
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
            &["operator"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                m::WORKER_PROCESSING_LATENCY_SECONDS,
                "From a record's broker timestamp to the end of the batch that applied it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["operator"],
        )?;
        let checkpoint = HistogramVec::new(
            HistogramOpts::new(
                m::WORKER_CHECKPOINT_DURATION_SECONDS,
                "Writing one checkpoint of all owned partitions.",
            ),
            &["operator"],
        )?;
        let checkpoint_bytes = IntGaugeVec::new(
            Opts::new(m::WORKER_CHECKPOINT_BYTES, "Bytes of the last checkpoint."),
            &["operator", "partition"],
        )?;
        let watermark_lag = prometheus::GaugeVec::new(
            Opts::new(
                m::WORKER_WATERMARK_LAG_SECONDS,
                "Wall clock minus the event-time watermark; idle sources excluded.",
            ),
            &["operator"],
        )?;
        registry.register(Box::new(records_in.clone()))?;
        for g in [&offset, &lag, &rows, &checkpoint_bytes] {
            registry.register(Box::new(g.clone()))?;
        }
        for h in [&publish, &batch, &latency, &checkpoint] {
            registry.register(Box::new(h.clone()))?;
        }
        registry.register(Box::new(watermark_lag.clone()))?;
        Ok(WorkerMetrics {
            records_in,
            offset,
            lag,
            rows,
            publish,
            batch,
            latency,
            checkpoint,
            checkpoint_bytes,
            watermark_lag,
        })
    }
}

/// The readiness check of the operator named `name`.
pub fn readiness_check(name: &str) -> String {
    format!("worker_{name}")
}

/// One owned partition number: its state and the next offset to apply of
/// each input.
struct Part<S> {
    state: S,
    next: Vec<Option<i64>>,
    last_record: Instant,
}

/// Runs one [`Operator`] over a static share of its input partitions
/// (worker `i` of `n` takes the partitions `p` with `p % n == i`), read
/// with a plain librdkafka consumer: no group rebalancing, because Tansu
/// does not evict dead members and our offsets live in our checkpoints.
///
/// Each record is applied once: a record below the partition's next offset
/// is a replay and skipped. Records the state refuses go to the dead-letter
/// topic, late ones to the late topic, both before the batch counts as
/// done. State is published to the operator's tables on a short tick and
/// checkpointed with its offsets on a longer one; a restarted worker loads
/// the checkpoints, seeks to their offsets and replays the rest.
pub struct Runner<O: Operator> {
    cfg: Config,
    bootstrap: String,
    op: O,
    topics: Vec<String>,
    metrics: WorkerMetrics,
    dead_letters: DeadLetterSink,
    late: DeadLetterSink,
    readiness: Readiness,
    store: CheckpointStore,
    parts: BTreeMap<i32, Part<O::State>>,
}

/// Sinks and registries a [`Runner`] shares with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    /// Worker metrics.
    pub metrics: WorkerMetrics,
    /// Where refused records go.
    pub dead_letters: DeadLetterSink,
    /// Where late events go.
    pub late: DeadLetterSink,
    /// The process's readiness.
    pub readiness: Readiness,
    /// Where checkpoints go.
    pub store: CheckpointStore,
}

impl<O: Operator> Runner<O> {
    /// A runner with no partitions loaded yet.
    pub fn new(cfg: &Config, bootstrap: &str, op: O, shared: Shared) -> Self {
        let check = readiness_check(op.name());
        shared.readiness.set(
            &check,
            false,
            "starting: loading checkpoints and reading the input partitions to their end",
        );
        Runner {
            topics: op.inputs().iter().map(|t| cfg.topic_name(t)).collect(),
            cfg: cfg.clone(),
            bootstrap: bootstrap.to_owned(),
            op,
            metrics: shared.metrics,
            dead_letters: shared.dead_letters,
            late: shared.late,
            readiness: shared.readiness,
            store: shared.store,
            parts: BTreeMap::new(),
        }
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut c = marktwin_kafka::client_config(&self.cfg, &self.bootstrap);
        c.set("group.id", format!("marktwin-worker-{}", self.op.name()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100");
        Ok(c.create()?)
    }

    /// This worker's partition numbers, waiting for the topics' metadata if
    /// the broker does not have it yet. Inputs must have equal partition
    /// counts, or keys would not line up.
    fn my_partitions(&self, consumer: &BaseConsumer, stop: &AtomicBool) -> Result<Vec<i32>> {
        let (i, n) = (
            self.cfg.worker.instance as i32,
            self.cfg.worker.instances as i32,
        );
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.load(Ordering::Relaxed) {
            let mut counts = Vec::new();
            for topic in &self.topics {
                match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                    Ok(md) => counts.push(
                        md.topics()
                            .iter()
                            .find(|t| t.name() == topic && t.error().is_none())
                            .map_or(0, |t| t.partitions().len() as i32),
                    ),
                    Err(e) => {
                        warn!(topic, error = %e, "Metadata request failed; retrying.");
                        counts.push(0);
                    }
                }
            }
            if counts.iter().all(|c| *c > 0) {
                if counts.iter().any(|c| *c != counts[0]) {
                    let listed: Vec<String> = self
                        .topics
                        .iter()
                        .zip(&counts)
                        .map(|(t, c)| format!("{t}: {c}"))
                        .collect();
                    return Err(Error::Partitions(format!(
                        "operator `{}` needs its inputs partitioned alike, found {}",
                        self.op.name(),
                        listed.join(", ")
                    )));
                }
                return Ok((0..counts[0]).filter(|p| p % n == i).collect());
            }
            warn!(topics = ?self.topics, "Input topics have no partitions yet; waiting.");
            std::thread::sleep(backoff.next_delay());
        }
        Ok(Vec::new())
    }

    /// Loads partition `p`'s checkpoint, retrying while the store fails in
    /// a way that may pass.
    fn load(&mut self, rt: &tokio::runtime::Handle, p: i32, stop: &AtomicBool) -> Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let cp = loop {
            match rt.block_on(self.store.load(self.op.name(), p)) {
                Ok(cp) => break cp,
                Err(e) if e.is_retryable() && !stop.load(Ordering::Relaxed) => {
                    warn!(operator = self.op.name(), partition = p, error = %e, "Loading the checkpoint failed; retrying.");
                    std::thread::sleep(backoff.next_delay());
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (state, next) = match cp {
            Some(cp) => {
                info!(
                    operator = self.op.name(),
                    partition = p,
                    rows = cp.rows(),
                    offsets = ?cp.offsets,
                    "Restoring from checkpoint."
                );
                let next = self
                    .topics
                    .iter()
                    .map(|t| cp.offsets.get(t).copied())
                    .collect();
                (self.op.restore(&cp.tables)?, next)
            }
            None => (self.op.empty(), vec![None; self.topics.len()]),
        };
        self.parts.insert(
            p,
            Part {
                state,
                next,
                last_record: Instant::now(),
            },
        );
        Ok(())
    }

    /// Runs until `stop` is set; call from a blocking thread. `rt` runs the
    /// producers' and the checkpoint store's futures.
    pub fn run(mut self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) -> Result<()> {
        let name = self.op.name();
        let consumer = self.consumer()?;
        let parts = self.my_partitions(&consumer, &stop)?;
        if parts.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        for &p in &parts {
            self.load(&rt, p, &stop)?;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            for (topic, next) in self.topics.iter().zip(&part.next) {
                tpl.add_partition_offset(
                    topic,
                    *p,
                    next.map_or(Offset::Beginning, Offset::Offset),
                )?;
            }
        }
        consumer.assign(&tpl)?;
        info!(operator = name, topics = ?self.topics, partitions = ?parts, instance = self.cfg.worker.instance, loaded_in = ?started.elapsed(), "Worker assigned.");

        let input_of: HashMap<String, usize> = self
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let labels: BTreeMap<i32, String> = parts.iter().map(|p| (*p, p.to_string())).collect();
        // A partition-EOF arrived since the last look at the positions.
        let mut saw_eof = false;
        let mut caught_up = false;
        let w = &self.cfg.worker;
        let publish_every = Duration::from_millis(w.publish_interval_ms);
        let checkpoint_every = Duration::from_millis(w.checkpoint.interval_ms);
        let idle = Duration::from_millis(w.twin.idle_timeout_ms);
        let max_batch = w.max_batch;
        let (mut last_publish, mut last_checkpoint) = (Instant::now(), Instant::now());
        let mut last_progress = Instant::now();
        let mut dirty = false;
        let mut rejects: Vec<DeadLetter> = Vec::new();
        let mut lates: Vec<DeadLetter> = Vec::new();
        let mut counts: BTreeMap<(usize, i32), u64> = BTreeMap::new();
        // Broker timestamps of the batch's records, for the latency.
        let mut stamps: Vec<i64> = Vec::with_capacity(max_batch);

        while !stop.load(Ordering::Relaxed) {
            let batch_started = Instant::now();
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
                        let Some(&input) = input_of.get(msg.topic()) else {
                            continue;
                        };
                        let Some(part) = self.parts.get_mut(&p) else {
                            continue;
                        };
                        *counts.entry((input, p)).or_default() += 1;
                        if part.next[input].is_some_and(|next| off < next) {
                            continue; // A replay: already applied.
                        }
                        part.next[input] = Some(off + 1);
                        part.last_record = Instant::now();
                        if let Some(ts) = msg.timestamp().to_millis() {
                            stamps.push(ts);
                        }
                        let value = msg.payload().unwrap_or_default();
                        let letter = |r: marktwin_state::Rejected| DeadLetter {
                            reason: r.reason.to_owned(),
                            detail: r.detail,
                            stage: format!("worker_{name}"),
                            source: msg.topic().to_owned(),
                            partition: Some(p),
                            offset: Some(off),
                            original: String::from_utf8_lossy(value).into_owned(),
                            rejected_at_ms: now_ms(),
                        };
                        match part.state.apply(input, value) {
                            Applied::Applied => dirty = true,
                            Applied::ReplayedOffset | Applied::DuplicateEvent => {}
                            Applied::Rejected(r) => rejects.push(letter(r)),
                            Applied::Late(r) => lates.push(letter(r)),
                        }
                    }
                    Err(KafkaError::PartitionEOF(_)) => {
                        // The EOF error does not say which topic; compare
                        // every position with its high watermark instead.
                        saw_eof = true;
                    }
                    Err(e) => {
                        warn!(operator = name, error = %e, "Consumer error.");
                        break;
                    }
                }
            }
            let stored = flush(&rt, &self.dead_letters, &mut rejects, &stop)
                & flush(&rt, &self.late, &mut lates, &stop);
            if !stored {
                // Stopping with records unsent: no checkpoint may cover
                // their offsets, so they are read again on restart.
                info!(
                    operator = name,
                    "Worker stopped without a final checkpoint."
                );
                return Ok(());
            }
            if n > 0 {
                self.metrics
                    .batch
                    .with_label_values(&[name])
                    .observe(batch_started.elapsed().as_secs_f64());
                let now = now_ms();
                let latency = self.metrics.latency.with_label_values(&[name]);
                for ts in stamps.drain(..) {
                    latency.observe((now - ts).max(0) as f64 / 1000.0);
                }
                for ((input, p), c) in std::mem::take(&mut counts) {
                    self.metrics
                        .records_in
                        .with_label_values(&[self.topics[input].as_str(), &labels[&p]])
                        .inc_by(c);
                }
            }
            if dirty && last_publish.elapsed() >= publish_every {
                self.publish()?;
                dirty = false;
                last_publish = Instant::now();
            }
            if last_checkpoint.elapsed() >= checkpoint_every {
                self.checkpoint(&rt);
                last_checkpoint = Instant::now();
            }
            if !caught_up && std::mem::take(&mut saw_eof) && self.read_to_end(&consumer) {
                // Publish what the catch-up built at once, so ready implies
                // queryable.
                self.publish()?;
                dirty = false;
                caught_up = true;
                self.report_ready();
                info!(operator = name, applied = self.applied(), took = ?started.elapsed(), "Worker caught up.");
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                self.observe_progress(&consumer, &labels, idle);
                if caught_up {
                    // Keep the reason current, not the count at catch-up.
                    self.report_ready();
                }
                last_progress = Instant::now();
            }
        }
        self.publish()?;
        self.checkpoint(&rt);
        info!(operator = name, applied = self.applied(), "Worker stopped.");
        Ok(())
    }

    /// True when every owned input partition has been read to its high
    /// watermark (or is empty). Tansu may report a high watermark below the
    /// true end, so at or past it counts as the end.
    fn read_to_end(&self, consumer: &BaseConsumer) -> bool {
        self.parts.iter().all(|(p, part)| {
            self.topics.iter().zip(&part.next).all(|(topic, next)| {
                matches!(
                    consumer.fetch_watermarks(topic, *p, Duration::from_millis(500)),
                    Ok((low, high)) if next.unwrap_or(0) >= high || high <= low
                )
            })
        })
    }

    fn applied(&self) -> u64 {
        self.parts.values().map(|p| p.state.applied()).sum()
    }

    fn publish(&mut self) -> Result<()> {
        let t = Instant::now();
        for part in self.parts.values_mut() {
            part.state.evict();
        }
        self.op.publish(self.parts.values().map(|p| &p.state))?;
        let took = t.elapsed().as_secs_f64();
        for table in self.op.tables() {
            self.metrics
                .publish
                .with_label_values(&[table.name()])
                .observe(took);
            self.metrics
                .rows
                .with_label_values(&[table.name()])
                .set(table.rows() as i64);
        }
        Ok(())
    }

    /// Checkpoints every owned partition. A failure is logged and retried
    /// at the next tick: the state is still in memory and the previous
    /// checkpoint stays valid.
    fn checkpoint(&mut self, rt: &tokio::runtime::Handle) {
        let name = self.op.name();
        let t = Instant::now();
        for (p, part) in self.parts.iter_mut() {
            part.state.evict();
            let tables = match part.state.save() {
                Ok(t) => t,
                Err(e) => {
                    error!(operator = name, partition = p, error = %e, "Building the checkpoint failed.");
                    continue;
                }
            };
            let cp = Checkpoint {
                offsets: self
                    .topics
                    .iter()
                    .zip(&part.next)
                    .filter_map(|(t, n)| n.map(|n| (t.clone(), n)))
                    .collect(),
                tables: tables.into_iter().map(|(n, b)| (n.to_owned(), b)).collect(),
                created_ms: now_ms(),
            };
            match rt.block_on(self.store.save(name, *p, &cp)) {
                Ok(bytes) => self
                    .metrics
                    .checkpoint_bytes
                    .with_label_values(&[name, &p.to_string()])
                    .set(bytes as i64),
                Err(e) => {
                    warn!(operator = name, partition = p, error = %e, "Writing the checkpoint failed; retrying at the next tick.")
                }
            }
        }
        self.metrics
            .checkpoint
            .with_label_values(&[name])
            .observe(t.elapsed().as_secs_f64());
    }

    fn report_ready(&self) {
        self.readiness.set(
            readiness_check(self.op.name()),
            true,
            format!("caught up; {} records applied", self.applied()),
        );
    }

    fn observe_progress(
        &self,
        consumer: &BaseConsumer,
        labels: &BTreeMap<i32, String>,
        idle: Duration,
    ) {
        for (p, part) in &self.parts {
            let label = &labels[p];
            for (input, topic) in self.topics.iter().enumerate() {
                let next = part.next[input].unwrap_or(0);
                self.metrics
                    .offset
                    .with_label_values(&[topic.as_str(), label])
                    .set(next);
                // Tansu may report a high watermark below the true end: clamp
                // at zero. Asked every few seconds, with a short timeout.
                if let Ok((_, high)) =
                    consumer.fetch_watermarks(topic, *p, Duration::from_millis(500))
                {
                    self.metrics
                        .lag
                        .with_label_values(&[topic.as_str(), label])
                        .set((high - next).max(0));
                }
            }
        }
        // The overall watermark: the slowest partition that is not idle.
        let active = self
            .parts
            .values()
            .filter(|p| p.last_record.elapsed() < idle)
            .filter_map(|p| p.state.watermark_ms())
            .min();
        let any = self
            .parts
            .values()
            .filter_map(|p| p.state.watermark_ms())
            .max();
        if let Some(w) = active.or(any) {
            self.metrics
                .watermark_lag
                .with_label_values(&[self.op.name()])
                .set((now_ms() - w) as f64 / 1000.0);
        }
    }
}

/// Sends `letters` to `sink`; the batch is not done until they are stored,
/// so this retries for ever, until `stop`. False if they are not stored.
fn flush(
    rt: &tokio::runtime::Handle,
    sink: &DeadLetterSink,
    letters: &mut Vec<DeadLetter>,
    stop: &AtomicBool,
) -> bool {
    if letters.is_empty() {
        return true;
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match rt.block_on(sink.send(letters)) {
            Ok(()) => {
                letters.clear();
                return true;
            }
            Err(e) if !stop.load(Ordering::Relaxed) => {
                warn!(topic = sink.topic(), error = %e, count = letters.len(), "Produce failed; retrying.");
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => {
                warn!(topic = sink.topic(), error = %e, count = letters.len(), "Stopping with records unsent; they are re-read on restart.");
                return false;
            }
        }
    }
}
