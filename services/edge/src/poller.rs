//! The incremental HTTP poller for a cloud-POS API.
//!
//! One poll: ask for a page from the stored cursor, map and validate each
//! record (pseudonymising consumer identifiers), produce the good ones to the
//! POS topic and the rejects to the dead-letter topic, wait until the broker
//! has acknowledged every one, and only then store the next cursor durably.
//! A crash or a broker outage between two steps repeats the page; it never
//! skips one. Records carry deterministic event ids, so a repeated page is
//! recognised downstream (the worker suppresses replays by event id).

use std::time::{Duration, Instant};

use marktwin_core::backoff::Backoff;
use marktwin_core::codec;
use marktwin_core::config::HttpPollerConfig;
use marktwin_core::events::{DeadLetter, Envelope};
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_core::topics::{Encoding, id};
use marktwin_core::{Config, now_ms};
use marktwin_kafka::DeadLetterSink;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cursor::CursorStore;
use crate::error::{Error, Result};
use crate::pos::map_record;
use crate::pseudonym::Pseudonymiser;
use crate::sim::Page;
use crate::sink::Sink;

/// The edge's metrics.
#[derive(Clone)]
pub struct EdgeMetrics {
    pub(crate) read: IntCounterVec,
    pub(crate) produced: IntCounterVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) up: IntGaugeVec,
    pub(crate) reconnects: IntCounterVec,
    pub(crate) sample_age: HistogramVec,
}

impl EdgeMetrics {
    /// Registers the edge metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let read = IntCounterVec::new(
            Opts::new(m::EDGE_RECORDS_READ_TOTAL, "Records read from a source."),
            &["source"],
        )?;
        let produced = IntCounterVec::new(
            Opts::new(
                m::EDGE_RECORDS_PRODUCED_TOTAL,
                "Records acknowledged by the broker.",
            ),
            &["source", "topic"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                m::EDGE_POLL_ERRORS_TOTAL,
                "Failed polls, retried with backoff.",
            ),
            &["source"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                m::EDGE_POLL_DURATION_SECONDS,
                "One poll, from request to acknowledged produce.",
            ),
            &["source"],
        )?;
        let up = IntGaugeVec::new(
            Opts::new(
                m::EDGE_SOURCE_UP,
                "1 when the last poll of the source succeeded.",
            ),
            &["source"],
        )?;
        let reconnects = IntCounterVec::new(
            Opts::new(
                m::EDGE_SOURCE_RECONNECTS_TOTAL,
                "Sessions established with a source, by how.",
            ),
            &["source", "how"],
        )?;
        let sample_age = HistogramVec::new(
            HistogramOpts::new(
                m::EDGE_SAMPLE_TO_STORED_SECONDS,
                "From a sample's timestamp to its acknowledgement or spooling.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.5,
                5.0, 10.0, 30.0,
            ]),
            &["source"],
        )?;
        registry.register(Box::new(sample_age.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(read.clone()))?;
        registry.register(Box::new(produced.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(up.clone()))?;
        Ok(EdgeMetrics {
            read,
            produced,
            errors,
            duration,
            up,
            reconnects,
            sample_age,
        })
    }
}

/// A running POS poller.
pub struct PosPoller {
    cfg: HttpPollerConfig,
    url: String,
    auth: Option<String>,
    topic: String,
    encoding: Encoding,
    sink: Sink,
    dead_letters: DeadLetterSink,
    http: reqwest::Client,
    cursor: CursorStore,
    pseudo: Pseudonymiser,
    metrics: EdgeMetrics,
    readiness: Readiness,
}

impl PosPoller {
    /// Builds the poller from config. The auth header, if any, is read from
    /// the environment variable named by `edge.pos.auth_header_env`.
    pub fn new(
        cfg: &Config,
        sink: Sink,
        dead_letters: DeadLetterSink,
        metrics: EdgeMetrics,
        readiness: Readiness,
    ) -> Result<Self> {
        let p = cfg.edge.pos.clone();
        let auth = match &p.auth_header_env {
            Some(var) => Some(std::env::var(var).map_err(|_| Error::Source {
                source_name: p.source.clone(),
                detail: format!("edge.pos.auth_header_env names `{var}`, which is not set"),
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(p.timeout_ms))
            .build()
            .map_err(|e| Error::Source {
                source_name: p.source.clone(),
                detail: e.to_string(),
            })?;
        readiness.set(
            readiness_name(),
            false,
            format!("source {} not polled yet", p.source),
        );
        Ok(PosPoller {
            url: cfg.pos_url(),
            auth,
            topic: cfg.topic_name(id::POS),
            encoding: cfg.topic(id::POS).encoding,
            sink,
            dead_letters,
            http,
            cursor: CursorStore::new(&cfg.data_dir, &p.source)?,
            pseudo: Pseudonymiser::from_config(cfg)?,
            metrics,
            readiness,
            cfg: p,
        })
    }

    /// Polls until `shutdown` turns true. Failures are retried with jittered
    /// backoff for ever; only a broken local cursor file stops it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut cursor = self.cursor.load()?;
        let source = self.cfg.source.as_str();
        info!(source, cursor, url = %self.url, "POS poller starting.");
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_millis(self.cfg.max_backoff_ms),
        );
        let interval = Duration::from_millis(self.cfg.poll_interval_ms);
        while !*shutdown.borrow() {
            let started = Instant::now();
            let wait = match self.poll_once(cursor).await {
                Ok((next, has_more)) => {
                    self.metrics
                        .duration
                        .with_label_values(&[source])
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.up.with_label_values(&[source]).set(1);
                    self.readiness.set(
                        readiness_name(),
                        true,
                        format!("source {source} polled, cursor {next}"),
                    );
                    cursor = next;
                    backoff.reset();
                    if has_more { Duration::ZERO } else { interval }
                }
                Err(Error::Io(e)) => return Err(Error::Io(e)),
                Err(e) => {
                    self.metrics.errors.with_label_values(&[source]).inc();
                    self.metrics.up.with_label_values(&[source]).set(0);
                    self.readiness
                        .set(readiness_name(), false, format!("source {source}: {e}"));
                    let d = backoff.next_delay();
                    warn!(source, error = %e, retry_in_ms = d.as_millis() as u64, attempt = backoff.attempts(), "Poll failed; retrying.");
                    d
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A dropped sender means the process is going away.
                    r = shutdown.changed() => if r.is_err() { break },
                }
            }
        }
        info!(source, cursor, "POS poller stopped.");
        Ok(())
    }

    /// One page: returns the next cursor and whether more is waiting.
    pub async fn poll_once(&self, cursor: u64) -> Result<(u64, bool)> {
        let source = self.cfg.source.as_str();
        let src_err = |detail: String| Error::Source {
            source_name: source.to_owned(),
            detail,
        };
        let mut req = self
            .http
            .get(&self.url)
            .query(&[("cursor", cursor), ("limit", u64::from(self.cfg.page_size))]);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| src_err(format!("request failed: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(src_err(format!("answered HTTP {status}")));
        }
        let page: Page = resp
            .json()
            .await
            .map_err(|e| src_err(format!("page is not the expected JSON: {e}")))?;
        if page.next_cursor < cursor {
            return Err(src_err(format!(
                "next cursor {} is behind the cursor asked for ({cursor})",
                page.next_cursor
            )));
        }
        let ingest = now_ms();
        let mut good: Vec<(String, Vec<u8>)> = Vec::with_capacity(page.records.len());
        let mut rejects = Vec::new();
        for raw in &page.records {
            match map_record(raw, &self.pseudo) {
                Ok(t) => {
                    let env = Envelope::wrap(source, ingest, t);
                    let bytes =
                        codec::encode(&env, self.encoding).map_err(|e| src_err(e.to_string()))?;
                    good.push((env.key, bytes));
                }
                Err(r) => rejects.push(DeadLetter {
                    reason: r.reason.to_owned(),
                    detail: r.detail,
                    stage: "edge".into(),
                    source: source.to_owned(),
                    partition: None,
                    offset: None,
                    original: redact(raw, &self.pseudo),
                    rejected_at_ms: ingest,
                }),
            }
        }
        self.metrics
            .read
            .with_label_values(&[source])
            .inc_by(page.records.len() as u64);
        let letters = DeadLetterSink::records(&rejects);
        self.sink
            .send(&[
                (self.topic.as_str(), &good),
                (self.dead_letters.topic(), &letters),
            ])
            .await
            .map_err(|e| Error::Produce {
                topic: self.topic.clone(),
                detail: e.to_string(),
            })?;
        self.dead_letters.count(&rejects);
        self.metrics
            .produced
            .with_label_values(&[source, &self.topic])
            .inc_by(good.len() as u64);
        if page.next_cursor != cursor {
            self.cursor.store(page.next_cursor)?;
        }
        Ok((page.next_cursor, page.has_more))
    }
}

/// The readiness check this poller maintains.
pub fn readiness_name() -> &'static str {
    "source_pos"
}

/// The original record for the dead-letter topic, with the identifying
/// fields pseudonymised like the good records: no topic carries a phone
/// number in clear text, rejected or not.
fn redact(raw: &serde_json::Value, pseudo: &Pseudonymiser) -> String {
    let mut v = raw.clone();
    for field in ["memberId", "mobile"] {
        if let Some(s) = v
            .get(field)
            .and_then(|x| x.as_str())
            .map(|s| pseudo.pseudonymise(s))
        {
            v[field] = serde_json::Value::from(s);
        }
    }
    v.to_string()
}
