//! marktwin-worker: the stream worker.
//!
//! A [`Runner`] runs one [`Operator`] (POS daily sales, the production
//! twin) over a static share of its input partitions, applies each record
//! once, publishes the state on a short tick and checkpoints it with its
//! input offsets on a longer one. Records it cannot apply go to the
//! dead-letter topic, late ones to the late topic, with the reason, before
//! the batch counts as done.
//!
//! An operator's tables are published either to tables in this process or,
//! for a global view over all workers, as changed rows to a compacted topic
//! ([`changes`]) that a [`view::View`] in every process materialises.
//!
//! Processing runs on one blocking thread per operator: it is CPU work
//! (decode, hash, add) and batches of thousands keep the per-record overhead
//! low.

pub mod changes;
pub mod error;
pub mod grader;
mod group;
pub mod operator;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::backoff::Backoff;
use marktwin_core::config::Assignment;
use marktwin_core::events::DeadLetter;
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_core::{Config, now_ms};
use marktwin_kafka::{DeadLetterSink, produce_keyed};
use marktwin_state::checkpoint::{Checkpoint, CheckpointStore};
use marktwin_state::{Applied, SnapshotTable};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

pub use changes::TableDef;
use changes::{Sent, Wire, table_of};
pub use error::{Error, Result};
pub use grader::Grader;
use group::{Move, Moves, OwnerContext, load_checkpoint};
pub use operator::{
    ConsumersOperator, InventoryOperator, Operator, PartitionState, PosOperator, ProfilesOperator,
    TwinOperator,
};
pub use view::View;

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    records_in: IntCounterVec,
    records_out: IntCounterVec,
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
        let records_out = IntCounterVec::new(
            Opts::new(
                m::WORKER_RECORDS_OUT_TOTAL,
                "Change records (rows and tombstones) stored on output topics.",
            ),
            &["topic"],
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
        registry.register(Box::new(records_out.clone()))?;
        for g in [&offset, &lag, &rows, &checkpoint_bytes] {
            registry.register(Box::new(g.clone()))?;
        }
        for h in [&publish, &batch, &latency, &checkpoint] {
            registry.register(Box::new(h.clone()))?;
        }
        registry.register(Box::new(watermark_lag.clone()))?;
        Ok(WorkerMetrics {
            records_in,
            records_out,
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
    /// What the output topic holds of this partition's rows.
    sent: Sent,
    /// Where the output topics must be read from to complete `sent` (the
    /// checkpoint's published offsets; a topic not named, from its
    /// beginning); `None` once read.
    resume: Option<Published>,
}

/// Per output topic (broker name) and partition, the next offset below
/// which every change this runner's partitions sent is stored.
type Published = BTreeMap<String, BTreeMap<i32, i64>>;

/// Where an operator's tables go.
enum Publish {
    /// Tables in this process, over the partitions it owns.
    Local(Vec<Arc<SnapshotTable>>),
    /// Changed rows to compacted topics.
    Topic {
        producer: FutureProducer,
        defs: Vec<TableDef>,
        /// The topic (broker name) of each table.
        topic_of: HashMap<&'static str, String>,
        published: Published,
    },
}

/// Runs one [`Operator`] over a share of its input partitions: a static
/// share by default (worker `i` of `n` takes the partitions `p` with
/// `p % n == i`), read with a plain librdkafka consumer, because Tansu does
/// not evict dead group members; or, with `worker.assignment = "group"`,
/// what the Kafka group protocol assigns ([`group`]). Either way the input
/// offsets live in our checkpoints, not in committed group offsets.
///
/// Each record is applied once: a record below the partition's next offset
/// is a replay and skipped. Records the state refuses go to the dead-letter
/// topic, late ones to the late topic, both before the batch counts as
/// done. State is published on a short tick and checkpointed with its
/// offsets on a longer one; a restarted worker loads the checkpoints, seeks
/// to their offsets and replays the rest.
///
/// # Publishing to a topic, exactly
///
/// With the tables' [`TableDef::topic`] set, each publish sends the rows that are new
/// or changed since the last one and a tombstone for each row that left,
/// and waits for the broker's acknowledgement. A checkpoint is written only
/// right after such a publish, so what the topic holds of a partition's
/// rows is then exactly the checkpointed state's rows; the checkpoint also
/// keeps the topic's end offsets. A restarted worker seeds its record of
/// what was sent from the restored rows, then reads the topic from those
/// offsets to its end, taking in what a killed predecessor sent after the
/// checkpoint. Its next publish then brings the topic to its own state,
/// tombstoning rows the predecessor sent that the replay does not make.
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
    publish: Publish,
    /// Set while this runner owns partition 0 (see [`Runner::leader`]).
    leader: Arc<AtomicBool>,
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
    /// Producer for output topics ([`marktwin_kafka::output_producer`]).
    pub producer: FutureProducer,
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
        let defs = op.tables();
        let topic_of: HashMap<&'static str, String> = defs
            .iter()
            .filter_map(|d| Some((d.name, cfg.topic_name(d.topic?))))
            .collect();
        debug_assert!(topic_of.is_empty() || topic_of.len() == defs.len());
        let publish = if topic_of.is_empty() {
            Publish::Local(
                defs.into_iter()
                    .map(|d| Arc::new(SnapshotTable::new(d.name, d.schema)))
                    .collect(),
            )
        } else {
            Publish::Topic {
                producer: shared.producer,
                defs,
                topic_of,
                published: BTreeMap::new(),
            }
        };
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
            publish,
            leader: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag set while this runner owns partition 0 of its inputs. Work
    /// that must run in one process of all the workers (grading, say) runs
    /// where it is set: exactly one worker owns each partition, and the
    /// flag follows partition 0 through restarts and rebalances.
    pub fn leader(&self) -> Arc<AtomicBool> {
        self.leader.clone()
    }

    /// The tables this runner publishes in this process; none when its
    /// operator publishes to a topic (see [`view::View`]).
    pub fn tables(&self) -> Vec<Arc<SnapshotTable>> {
        match &self.publish {
            Publish::Local(t) => t.clone(),
            Publish::Topic { .. } => Vec::new(),
        }
    }

    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = marktwin_kafka::client_config(&self.cfg, &self.bootstrap);
        c.set("group.id", format!("marktwin-worker-{}", self.op.name()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100");
        c
    }

    /// A consumer that reads by explicit assignment.
    fn consumer(&self) -> Result<BaseConsumer> {
        Ok(self.client_config().create()?)
    }

    /// The owner consumer of group assignment (see [`group`]), subscribed
    /// to the first input.
    fn owner_consumer(&self, moves: &Moves) -> Result<BaseConsumer<OwnerContext>> {
        let mut c = self.client_config();
        let session = self.cfg.worker.session_timeout_ms;
        c.set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).min(3000).to_string());
        let owner: BaseConsumer<OwnerContext> = c.create_with_context(OwnerContext {
            operator: self.op.name(),
            moves: moves.clone(),
        })?;
        owner.subscribe(&[self.topics[0].as_str()])?;
        Ok(owner)
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
            let counts: Vec<i32> = self
                .topics
                .iter()
                .map(|t| partition_count(consumer, t))
                .collect();
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

    /// Takes partition `p` from its checkpoint (`None`: from the
    /// beginning); its output rows are completed by [`Runner::read_published`].
    fn install(&mut self, p: i32, cp: Option<Checkpoint>) -> Result<()> {
        let (state, next, resume) = match cp {
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
                let state = self.op.restore(&cp.tables)?;
                (state, next, Some(cp.published))
            }
            None => (self.op.empty(), vec![None; self.topics.len()], None),
        };
        let mut sent = Sent::default();
        if let (Publish::Topic { defs, .. }, Some(_)) = (&self.publish, &resume) {
            // The checkpoint was written right after a publish that stored
            // exactly these rows.
            sent.seed(defs, &state.tables()?)?;
        }
        let resume = Some(resume.unwrap_or_default());
        if p == 0 {
            self.leader.store(true, Ordering::Release);
        }
        self.parts.insert(
            p,
            Part {
                state,
                next,
                last_record: Instant::now(),
                sent,
                resume,
            },
        );
        Ok(())
    }

    /// Runs until `stop` is set; call from a blocking thread. `rt` runs the
    /// producers' and the checkpoint store's futures.
    pub fn run(mut self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) -> Result<()> {
        let name = self.op.name();
        let moves = Moves::default();
        let consumer = self.consumer()?;
        // Watermarks are asked on a connection of their own: on the
        // reading consumer's, a request waits behind a fetch that the
        // broker may hold for `fetch.wait.max.ms`.
        let meta = self.consumer()?;
        let started = Instant::now();
        let owner = if self.cfg.worker.assignment == Assignment::Group {
            // All inputs must be partitioned alike; the group decides over
            // the first.
            self.my_partitions(&consumer, &stop)?;
            let owner = self.owner_consumer(&moves)?;
            info!(operator = name, topics = ?self.topics, "Worker joined its group; partitions come with the group's assignment.");
            Some(owner)
        } else {
            let parts = self.my_partitions(&consumer, &stop)?;
            if parts.is_empty() {
                return Ok(());
            }
            for &p in &parts {
                let cp = load_checkpoint(&self.store, &rt, name, p, &stop)?;
                self.install(p, cp)?;
            }
            self.read_published(&stop)?;
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
            None
        };

        let input_of: HashMap<String, usize> = self
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        // A partition-EOF arrived since the last look at the positions.
        let mut saw_eof = false;
        let mut caught_up = false;
        let w = &self.cfg.worker;
        let publish_every = Duration::from_millis(
            self.op
                .publish_interval_ms()
                .unwrap_or(w.publish_interval_ms),
        );
        let checkpoint_every = Duration::from_millis(w.checkpoint.interval_ms);
        let idle = Duration::from_millis(w.twin.idle_timeout_ms);
        let max_batch = w.max_batch;
        let (mut last_publish, mut last_checkpoint) = (Instant::now(), Instant::now());
        let mut last_progress = Instant::now();
        // Publish at once: a restored worker's record of what was sent may
        // hold rows its state no longer has.
        let mut dirty = true;
        let mut rejects: Vec<DeadLetter> = Vec::new();
        let mut lates: Vec<DeadLetter> = Vec::new();
        let mut counts: BTreeMap<(usize, i32), u64> = BTreeMap::new();
        // Broker timestamps of the batch's records, for the latency.
        let mut stamps: Vec<i64> = Vec::with_capacity(max_batch);

        while !stop.load(Ordering::Relaxed) {
            if let Some(owner) = &owner {
                // Serves the group's callbacks; the owner reads nothing.
                let _ = owner.poll(Duration::ZERO);
                if self.take_moves(&consumer, &moves, &rt, &stop)? {
                    dirty = true;
                    if caught_up {
                        caught_up = false;
                        self.readiness.set(
                            readiness_check(name),
                            false,
                            "catching up on partitions the group assigned",
                        );
                    }
                }
            }
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
                            Applied::ReplayedOffset
                            | Applied::DuplicateEvent
                            | Applied::Unchanged => {}
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
                && flush(&rt, &self.late, &mut lates, &stop);
            if !stored {
                stopped_unsent(name);
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
                        .with_label_values(&[self.topics[input].as_str(), &p.to_string()])
                        .inc_by(c);
                }
            }
            let checkpoint_due = last_checkpoint.elapsed() >= checkpoint_every;
            // Caught up: every owned partition read to its end, once the
            // group (if any) has given this member its share.
            let catch_up = !caught_up
                && (std::mem::take(&mut saw_eof) || self.parts.is_empty())
                && (owner.is_none() || moves.joined())
                && self.read_to_end(&meta);
            // A checkpoint follows a publish of everything it holds; the
            // end of the catch-up is published at once, so ready implies
            // queryable. While catching up, only those: a replay changes
            // about one window row per record, and publishing every tick
            // would send each intermediate value (and rows that retention
            // removes before the end) through the broker and the views.
            let tick = caught_up && last_publish.elapsed() >= publish_every;
            if dirty && (tick || checkpoint_due || catch_up) {
                if !self.publish(&rt, &stop)? {
                    stopped_unsent(name);
                    return Ok(());
                }
                dirty = false;
                last_publish = Instant::now();
            }
            if checkpoint_due {
                self.checkpoint(&rt);
                last_checkpoint = Instant::now();
            }
            if catch_up {
                caught_up = true;
                self.report_ready();
                info!(operator = name, applied = self.applied(), took = ?started.elapsed(), "Worker caught up.");
            }
            // Every few seconds, and at once when caught up, so that the
            // lag and offsets are there as soon as the worker is ready.
            if catch_up || last_progress.elapsed() >= Duration::from_secs(5) {
                self.observe_progress(&meta, idle);
                if caught_up {
                    // Keep the reason current, not the count at catch-up.
                    self.report_ready();
                }
                last_progress = Instant::now();
            }
        }
        if dirty && !self.publish(&rt, &stop)? {
            stopped_unsent(name);
            return Ok(());
        }
        self.checkpoint(&rt);
        info!(operator = name, applied = self.applied(), "Worker stopped.");
        Ok(())
    }

    /// Builds the partitions the group assigned and drops those it took
    /// away, in the order it did so; true if anything changed. A dropped
    /// partition is not published: its checkpoint and what the output
    /// topics hold are where its next owner starts (see [`Runner`]).
    fn take_moves(
        &mut self,
        consumer: &BaseConsumer,
        moves: &Moves,
        rt: &tokio::runtime::Handle,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let taken = moves.take();
        if taken.is_empty() {
            return Ok(false);
        }
        let mut assigned = false;
        for m in taken {
            let mut tpl = TopicPartitionList::new();
            match m {
                Move::Assigned(p) => {
                    let cp = load_checkpoint(&self.store, rt, self.op.name(), p, stop)?;
                    self.install(p, cp)?;
                    for (topic, next) in self.topics.iter().zip(&self.parts[&p].next) {
                        let at = next.map_or(Offset::Beginning, Offset::Offset);
                        tpl.add_partition_offset(topic, p, at)?;
                    }
                    consumer.incremental_assign(&tpl)?;
                    assigned = true;
                }
                Move::Revoked(p) => {
                    if self.parts.remove(&p).is_none() {
                        continue;
                    }
                    if p == 0 {
                        self.leader.store(false, Ordering::Release);
                    }
                    for topic in &self.topics {
                        tpl.add_partition(topic, p);
                    }
                    consumer.incremental_unassign(&tpl)?;
                    info!(
                        operator = self.op.name(),
                        partition = p,
                        "Partition handed over."
                    );
                    let label = p.to_string();
                    for topic in &self.topics {
                        let labels = [topic.as_str(), label.as_str()];
                        let _ = self.metrics.offset.remove_label_values(&labels);
                        let _ = self.metrics.lag.remove_label_values(&labels);
                    }
                }
            }
        }
        if assigned {
            self.read_published(stop)?;
        }
        Ok(true)
    }

    /// Completes the record of what the output topics hold (seeded from
    /// the checkpoint) of each newly taken partition with what was sent
    /// after its checkpoint: reads each topic from the lowest checkpointed
    /// offset (the beginning for a partition without one) to its end.
    fn read_published(&mut self, stop: &AtomicBool) -> Result<()> {
        let Publish::Topic { topic_of, .. } = &self.publish else {
            return Ok(());
        };
        if self.parts.values().all(|p| p.resume.is_none()) {
            return Ok(());
        }
        let topics: std::collections::BTreeSet<String> = topic_of.values().cloned().collect();
        let consumer = self.consumer()?;
        for topic in topics {
            self.read_published_from(&consumer, &topic, stop)?;
        }
        for part in self.parts.values_mut() {
            part.resume = None;
        }
        Ok(())
    }

    fn read_published_from(
        &mut self,
        consumer: &BaseConsumer,
        topic: &str,
        stop: &AtomicBool,
    ) -> Result<()> {
        let name = self.op.name();
        let Publish::Topic {
            defs, published, ..
        } = &mut self.publish
        else {
            return Ok(());
        };
        let published = published.entry(topic.to_owned()).or_default();
        let started = Instant::now();
        let Some(n) = wait_for_partitions(consumer, topic, stop) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for q in 0..n {
            let from = self
                .parts
                .values()
                .filter_map(|p| p.resume.as_ref())
                .map(|r| r.get(topic).and_then(|r| r.get(&q)).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let (_, high) = watermarks(consumer, topic, q, stop)?;
            published.insert(q, from);
            if high > from {
                ends.insert(q, high);
                tpl.add_partition_offset(topic, q, Offset::Offset(from))?;
            }
        }
        let mut read = 0u64;
        if !ends.is_empty() {
            consumer.assign(&tpl)?;
        }
        while !ends.is_empty() && !stop.load(Ordering::Relaxed) {
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) => {
                    warn!(topic, error = %e, "Reading the output topic failed; retrying.");
                    continue;
                }
            };
            read += 1;
            let (q, off) = (msg.partition(), msg.offset());
            published.insert(q, off + 1);
            if ends.get(&q).is_some_and(|end| off + 1 >= *end) {
                ends.remove(&q);
            }
            let key = msg.key().unwrap_or_default();
            if !table_of(key).is_some_and(|t| defs.iter().any(|d| d.name == t)) {
                continue;
            }
            let key = String::from_utf8_lossy(key);
            match msg.payload() {
                None => {
                    for part in self.parts.values_mut().filter(|p| p.resume.is_some()) {
                        part.sent.set(&key, None);
                    }
                }
                Some(v) => match serde_json::from_slice::<Wire>(v) {
                    Ok(w) if w.operator == name => {
                        if let Some(part) = self
                            .parts
                            .get_mut(&w.partition)
                            .filter(|p| p.resume.is_some())
                        {
                            part.sent.set(&key, Some(w.row.get()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(topic, partition = q, offset = off, error = %e, "Skipping an output record that is not a state change.")
                    }
                },
            }
        }
        info!(operator = name, topic, records = read, took = ?started.elapsed(), "Read what was published after the checkpoints.");
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

    /// Evicts what retention no longer keeps and publishes every owned
    /// partition's tables. False when stopping with changes unsent: no
    /// checkpoint may follow then.
    fn publish(&mut self, rt: &tokio::runtime::Handle, stop: &AtomicBool) -> Result<bool> {
        let t = Instant::now();
        let name = self.op.name();
        for part in self.parts.values_mut() {
            part.state.evict();
        }
        let defs = self.op.tables();
        let mut rows = vec![0usize; defs.len()];
        match &mut self.publish {
            Publish::Local(tables) => {
                let mut per_table: Vec<Vec<RecordBatch>> = vec![Vec::new(); tables.len()];
                for part in self.parts.values() {
                    for (i, batches) in part.state.tables()?.into_iter().enumerate() {
                        rows[i] += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                        per_table[i].extend(batches);
                    }
                }
                for (table, batches) in tables.iter().zip(per_table) {
                    table.publish(batches);
                }
            }
            Publish::Topic {
                producer,
                defs,
                topic_of,
                published,
            } => {
                let now = now_ms();
                let mut records: BTreeMap<&str, Vec<_>> = BTreeMap::new();
                let mut diffs = Vec::new();
                for (p, part) in &self.parts {
                    let tables = part.state.tables()?;
                    for (i, batches) in tables.iter().enumerate() {
                        rows[i] += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                    }
                    let mut diff = part.sent.diff(name, *p, now, defs, &tables)?;
                    for (key, value) in diff.records.drain(..) {
                        let topic = table_of(key.as_bytes())
                            .and_then(|t| topic_of.get(t))
                            .ok_or_else(|| Error::Unrouted(key.clone()))?;
                        records.entry(topic).or_default().push((key, value));
                    }
                    diffs.push((*p, diff));
                }
                for (topic, records) in &records {
                    let Some(stored) =
                        deliver(rt, stop, topic, || produce_keyed(producer, topic, records))
                    else {
                        return Ok(false);
                    };
                    let published = published.entry((*topic).to_owned()).or_default();
                    for (q, off) in stored {
                        let next = published.entry(q).or_insert(0);
                        *next = (*next).max(off + 1);
                    }
                    self.metrics
                        .records_out
                        .with_label_values(&[topic])
                        .inc_by(records.len() as u64);
                }
                for (p, diff) in diffs {
                    if let Some(part) = self.parts.get_mut(&p) {
                        part.sent.apply(diff);
                    }
                }
            }
        }
        let took = t.elapsed().as_secs_f64();
        for (def, n) in defs.iter().zip(rows) {
            self.metrics
                .publish
                .with_label_values(&[def.name])
                .observe(took);
            self.metrics
                .rows
                .with_label_values(&[def.name])
                .set(n as i64);
        }
        Ok(true)
    }

    /// Checkpoints every owned partition; call right after a publish. A
    /// failure is logged and retried at the next tick: the state is still
    /// in memory and the previous checkpoint stays valid.
    fn checkpoint(&mut self, rt: &tokio::runtime::Handle) {
        let name = self.op.name();
        let t = Instant::now();
        let published = match &self.publish {
            Publish::Topic { published, .. } => published.clone(),
            Publish::Local(_) => BTreeMap::new(),
        };
        for (p, part) in self.parts.iter() {
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
                published: published.clone(),
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

    fn observe_progress(&self, consumer: &BaseConsumer, idle: Duration) {
        for (p, part) in &self.parts {
            let label = &p.to_string();
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
        let marks = self
            .parts
            .values()
            .map(|p| (p.state.watermark_ms(), p.last_record.elapsed() >= idle));
        if let Some(w) = overall_watermark(marks) {
            self.metrics
                .watermark_lag
                .with_label_values(&[self.op.name()])
                .set((now_ms() - w) as f64 / 1000.0);
        }
    }
}

/// The overall watermark of partitions given as (watermark, idle): the
/// slowest one that is not idle, so that a partition whose sources went
/// quiet (SCADA tags do) does not hold the others back; the newest when
/// all are idle; `None` before any event.
fn overall_watermark(marks: impl Iterator<Item = (Option<i64>, bool)>) -> Option<i64> {
    let (mut active, mut any) = (None::<i64>, None::<i64>);
    for (w, idle) in marks {
        let Some(w) = w else { continue };
        any = Some(any.map_or(w, |a| a.max(w)));
        if !idle {
            active = Some(active.map_or(w, |a| a.min(w)));
        }
    }
    active.or(any)
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
    let stored = deliver(rt, stop, sink.topic(), || sink.send(letters)).is_some();
    if stored {
        letters.clear();
    }
    stored
}

/// Runs `send` until it succeeds, retrying with backoff until `stop`;
/// `None` if stopped first.
fn deliver<T, F, Fut>(
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
    topic: &str,
    mut send: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = marktwin_kafka::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match rt.block_on(send()) {
            Ok(v) => return Some(v),
            Err(e) if !stop.load(Ordering::Relaxed) => {
                warn!(topic, error = %e, "Produce failed; retrying.");
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => {
                warn!(topic, error = %e, "Stopping with records unsent; they are made again on restart.");
                return None;
            }
        }
    }
}

/// Logs a stop without a final checkpoint, so unsent records are made
/// again on restart.
fn stopped_unsent(operator: &str) {
    info!(operator, "Worker stopped without a final checkpoint.");
}

/// Partitions of `topic`, 0 while the broker does not know it.
pub(crate) fn partition_count(consumer: &BaseConsumer, topic: &str) -> i32 {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(md) => md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32),
        Err(e) => {
            warn!(topic, error = %e, "Metadata request failed; retrying.");
            0
        }
    }
}

/// Partitions of `topic`, waiting until the broker knows it; `None` if
/// stopped first.
pub(crate) fn wait_for_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    stop: &AtomicBool,
) -> Option<i32> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !stop.load(Ordering::Relaxed) {
        let n = partition_count(consumer, topic);
        if n > 0 {
            return Some(n);
        }
        warn!(topic, "Topic has no partitions yet; waiting.");
        std::thread::sleep(backoff.next_delay());
    }
    None
}

/// The low and high watermarks of `topic`'s partition `q`, retried while
/// the broker does not answer.
pub(crate) fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    q: i32,
    stop: &AtomicBool,
) -> Result<(i64, i64)> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match consumer.fetch_watermarks(topic, q, Duration::from_secs(5)) {
            Ok(w) => return Ok(w),
            Err(e) if !stop.load(Ordering::Relaxed) => {
                warn!(topic, partition = q, error = %e, "Asking for the watermarks failed; retrying.");
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::overall_watermark;

    #[test]
    fn an_idle_partition_does_not_hold_the_watermark_back() {
        // Partition 1 went quiet an hour behind the others.
        let marks = [
            (Some(10_000), false),
            (Some(6_400), true),
            (Some(9_000), false),
        ];
        assert_eq!(overall_watermark(marks.into_iter()), Some(9_000));
        // Not idle, it holds it back.
        let marks = [(Some(10_000), false), (Some(6_400), false)];
        assert_eq!(overall_watermark(marks.into_iter()), Some(6_400));
        // All idle: the newest; no event yet: none.
        let marks = [(Some(10_000), true), (Some(6_400), true), (None, false)];
        assert_eq!(overall_watermark(marks.into_iter()), Some(10_000));
        assert_eq!(overall_watermark([(None, false)].into_iter()), None);
    }
}
