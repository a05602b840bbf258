//! Grading in the worker: one step over all retailers' profiles.
//!
//! A ranking is a fact about a whole region, and a region's retailers are
//! spread over all partitions, so grading cannot run inside a partition's
//! state. The [`Grader`] reads the `retailer_profiles` table of the view
//! over the profiles topic (every partition's rows), grades it
//! ([`grading::grade`]) whenever it changed, and publishes the rows of
//! `retailer_grades` whose labels changed (see [`Grades::regrade`]) to the
//! same topic, where the view picks them up like any other table.
//!
//! It runs in every worker process but acts only where the profiles runner
//! owns partition 0 ([`crate::Runner::leader`]), and only once that runner
//! and the view have caught up, so a half-read topic is never graded.
//! What is on the topic is read from the view when it takes over, so a new
//! leader goes on from what the previous one published; a row it sends
//! again (the view not having read it back yet) is the same row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::config::ProfilesConfig;
use marktwin_core::health::Readiness;
use marktwin_core::topics::id;
use marktwin_core::{Config, now_ms};
use marktwin_kafka::produce_keyed;
use marktwin_state::SnapshotTable;
use marktwin_state::grading::{self, GRADES_KEY, GRADES_TABLE, Grades};
use marktwin_state::retailer_profile::Source;
use marktwin_state::retailer_state::{PROFILES_TABLE, RetailerState};
use rdkafka::producer::FutureProducer;
use tracing::{error, info};

use crate::changes::{Sent, TableDef};
use crate::error::{Error, Result};
use crate::{WorkerMetrics, deliver, readiness_check};

/// The name in change records and logs.
const NAME: &str = "grading";

/// Grades retailers over the view of the profiles topic.
pub struct Grader {
    cfg: Arc<ProfilesConfig>,
    topic: String,
    every: Duration,
    profiles: Arc<SnapshotTable>,
    grades: Arc<SnapshotTable>,
    producer: FutureProducer,
    leader: Arc<AtomicBool>,
    readiness: Readiness,
    metrics: WorkerMetrics,
}

/// What the leader knows of the published grades.
struct Published {
    grades: Grades,
    sent: Sent,
}

impl Grader {
    /// The grades table, published to the profiles topic.
    pub fn table() -> TableDef {
        TableDef {
            name: GRADES_TABLE,
            schema: Grades::schema(),
            key: GRADES_KEY,
            topic: Some(id::PROFILES),
        }
    }

    /// A grader over `view_tables` (the view of the profiles topic, which
    /// must hold `retailer_profiles` and [`Grader::table`]), acting while
    /// `leader` is set.
    pub fn new(
        cfg: &Config,
        view_tables: &[Arc<SnapshotTable>],
        producer: FutureProducer,
        leader: Arc<AtomicBool>,
        readiness: Readiness,
        metrics: WorkerMetrics,
    ) -> Result<Self> {
        let find = |name: &'static str| {
            view_tables
                .iter()
                .find(|t| t.name() == name)
                .cloned()
                .ok_or_else(|| Error::Setup(format!("the profiles view has no table `{name}`")))
        };
        Ok(Grader {
            cfg: Arc::new(cfg.profiles.clone()),
            topic: cfg.topic_name(id::PROFILES),
            every: Duration::from_millis(cfg.worker.publish_interval_ms),
            profiles: find(PROFILES_TABLE)?,
            grades: find(GRADES_TABLE)?,
            producer,
            leader,
            readiness,
            metrics,
        })
    }

    /// Runs until `stop` is set; call from a blocking thread. `rt` runs
    /// the producer's futures.
    pub fn run(self, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) {
        let checks = [
            readiness_check("profiles"),
            crate::view::readiness_check(id::PROFILES),
        ];
        let mut published: Option<Published> = None;
        let mut graded: Option<Arc<Vec<RecordBatch>>> = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.every.min(Duration::from_millis(200)));
            if !self.leader.load(Ordering::Acquire) {
                // Another worker grades; take over from the topic later.
                published = None;
                graded = None;
                continue;
            }
            if !checks.iter().all(|c| self.readiness.check(c)) {
                continue;
            }
            let input = self.profiles.snapshot();
            if graded.as_ref().is_some_and(|g| Arc::ptr_eq(g, &input)) {
                continue;
            }
            match self.grade(&input, &mut published, &rt, &stop) {
                Ok(true) => graded = Some(input),
                Ok(false) => return,
                Err(e) => {
                    error!(error = %e, "Grading failed; trying again at the next change.");
                    graded = Some(input);
                }
            }
            if let Some(p) = &published {
                self.metrics
                    .rows
                    .with_label_values(&[GRADES_TABLE])
                    .set(p.grades.len() as i64);
            }
        }
    }

    /// Grades `input` and publishes what changed; false when stopped with
    /// changes unsent.
    fn grade(
        &self,
        input: &[RecordBatch],
        published: &mut Option<Published>,
        rt: &tokio::runtime::Handle,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let started = Instant::now();
        let def = [Self::table()];
        let p = match published {
            Some(p) => p,
            None => {
                // What is on the topic, as the view read it.
                let on_topic = self.grades.snapshot();
                let mut sent = Sent::default();
                sent.seed(&def, std::slice::from_ref(&on_topic))?;
                let grades = Grades::from_batches(&on_topic)?;
                published.insert(Published { grades, sent })
            }
        };
        let profiles = RetailerState::profiles_of(input, Source::graded(&self.cfg))?;
        let now = now_ms();
        let changed = p.grades.regrade(&grading::grade(&self.cfg, &profiles), now);
        if changed.is_empty() {
            return Ok(true);
        }
        let (rows, gone) = (changed.rows.len(), changed.gone.len());
        let mut next = p.grades.clone();
        next.apply(changed);
        let all: Vec<_> = next.rows().cloned().collect();
        let tables = [vec![Grades::to_batch(&all)?]];
        let diff = p.sent.diff(NAME, 0, now, &def, &tables)?;
        let records = &diff.records;
        let Some(_) = deliver(rt, stop, &self.topic, || {
            produce_keyed(&self.producer, &self.topic, records)
        }) else {
            return Ok(false);
        };
        self.metrics
            .records_out
            .with_label_values(&[self.topic.as_str()])
            .inc_by(records.len() as u64);
        p.sent.apply(diff);
        p.grades = next;
        self.metrics
            .publish
            .with_label_values(&[GRADES_TABLE])
            .observe(started.elapsed().as_secs_f64());
        info!(
            retailers = profiles.len(),
            changed = rows,
            gone,
            took = ?started.elapsed(),
            "Graded retailers; published the changes."
        );
        Ok(true)
    }
}
