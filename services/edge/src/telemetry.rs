//! Where a telemetry source's readings go: envelopes on the telemetry
//! topic through the sink (acknowledged or spooled), with the source's
//! counters, latency histogram, `up` gauge and readiness check. Shared by
//! the Modbus pollers and the OPC UA sources.
//!
//! Cleaning for readings is what fits a sampled signal: configured ranges
//! for `telemetry_reading` (a reading outside goes to the dead-letter topic
//! with reason `out_of_range`) and fusion rules (a fused reading is written
//! beside its members). Non-Good readings are kept and flagged, never
//! dropped; repeated samples are told apart by their event ids (asset, tag,
//! time, value, status) downstream.

use marktwin_core::codec;
use marktwin_core::events::{DeadLetter, Envelope, EventKind, TelemetryReading};
use marktwin_core::health::Readiness;
use marktwin_core::sources::RangeRule;
use marktwin_core::topics::{Encoding, id};
use marktwin_core::{Config, now_ms};
use marktwin_kafka::DeadLetterSink;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::watch;
use tracing::error;

use crate::EdgeMetrics;
use crate::sink::Sink;

/// The telemetry output of one source (`modbus:<name>`, `opcua:<name>`).
#[derive(Clone)]
pub struct TelemetryOut {
    source: String,
    readiness_name: String,
    topic: String,
    encoding: Encoding,
    sink: Sink,
    readiness: Readiness,
    metrics: EdgeMetrics,
    read: IntCounter,
    produced: IntCounter,
    age: Histogram,
    age_at_read: Histogram,
    up: IntGauge,
    errors: IntCounter,
    ranges: Vec<RangeRule>,
    fuses: bool,
    dead_letter_topic: String,
}

impl TelemetryOut {
    /// The output of `source`; its readiness check is `source_<source>`.
    pub fn new(
        cfg: &Config,
        source: String,
        sink: Sink,
        metrics: EdgeMetrics,
        readiness: Readiness,
    ) -> Self {
        let topic = cfg.topic_name(id::TELEMETRY);
        let one = [source.as_str()];
        let ranges = cfg
            .edge
            .cleaning
            .ranges
            .iter()
            .filter(|r| r.kind == EventKind::TelemetryReading)
            .cloned()
            .collect();
        let fuses = sink.fuses(&source, EventKind::TelemetryReading);
        TelemetryOut {
            readiness_name: format!("source_{source}"),
            encoding: cfg.topic(id::TELEMETRY).encoding,
            read: metrics.read.with_label_values(&one),
            produced: metrics
                .produced
                .with_label_values(&[source.as_str(), topic.as_str()]),
            age: metrics.sample_age.with_label_values(&one),
            age_at_read: metrics.age_at_read.with_label_values(&one),
            up: metrics.up.with_label_values(&one),
            errors: metrics.errors.with_label_values(&one),
            dead_letter_topic: cfg.topic_name(id::DEAD_LETTER),
            ranges,
            fuses,
            topic,
            sink,
            readiness,
            metrics,
            source,
        }
    }

    /// The source name written into each envelope.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The edge's metrics, for what only one kind of source reports.
    pub fn metrics(&self) -> &EdgeMetrics {
        &self.metrics
    }

    /// Sets the source's readiness check and its `up` gauge.
    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        self.readiness
            .set(self.readiness_name.clone(), ready, reason);
        self.up.set(i64::from(ready));
    }

    /// Records how old a sample sampled at `sampled_ms` was when it was
    /// received at `received_ms` (sources that receive samples stamped
    /// elsewhere, such as OPC UA).
    pub fn received(&self, sampled_ms: i64, received_ms: i64) {
        self.age_at_read
            .observe((received_ms - sampled_ms).max(0) as f64 / 1000.0);
    }

    /// Counts a failed read, connect or session.
    pub fn failed(&self) {
        self.errors.inc();
    }

    /// Wraps `readings` (each with the time it was sampled, for the latency
    /// histogram) in envelopes and stores them: acknowledged, or spooled.
    /// While the spool is full it waits, so the source pauses. False when
    /// `shutdown` came first.
    pub async fn store(
        &self,
        readings: Vec<(TelemetryReading, i64)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        self.read.inc_by(readings.len() as u64);
        let ingest = now_ms();
        let mut records = Vec::with_capacity(readings.len());
        let mut sampled = Vec::with_capacity(readings.len());
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut fused = Vec::new();
        for (r, t) in readings {
            if self.fuses || !self.ranges.is_empty() {
                let v = serde_json::to_value(&r).unwrap_or_default();
                if let Err(why) = crate::clean::check_ranges(&self.ranges, &v) {
                    letters.push(DeadLetter {
                        reason: why.reason.to_owned(),
                        detail: format!("{}/{}: {}", r.asset, r.tag, why.detail),
                        stage: "edge".into(),
                        source: self.source.clone(),
                        partition: None,
                        offset: None,
                        original: v.to_string(),
                        rejected_at_ms: ingest,
                    });
                    continue;
                }
                if self.fuses {
                    for f in self
                        .sink
                        .fuse(&self.source, EventKind::TelemetryReading, &v, t)
                    {
                        match crate::clean::encode_value(
                            EventKind::TelemetryReading,
                            &f.source,
                            ingest,
                            f.payload,
                            self.encoding,
                        ) {
                            Ok(rec) => {
                                fused.push(rec);
                                self.metrics.fused.with_label_values(&[&f.rule]).inc();
                            }
                            Err(e) => error!(
                                fusion = f.rule,
                                error = e.detail,
                                "Cannot encode a fused reading."
                            ),
                        }
                    }
                }
            }
            let env = Envelope::wrap(&self.source, ingest, r);
            match codec::encode(&env, self.encoding) {
                Ok(bytes) => {
                    records.push((env.key, bytes));
                    sampled.push(t);
                }
                Err(e) => {
                    error!(source = self.source, tag = env.payload.tag, error = %e, "Cannot encode a reading.")
                }
            }
        }
        records.extend(fused);
        let dead = DeadLetterSink::records(&letters);
        if !self
            .sink
            .send_until_stored(
                &[
                    (self.topic.as_str(), &records),
                    (self.dead_letter_topic.as_str(), &dead),
                ],
                &self.source,
                shutdown,
            )
            .await
        {
            return false;
        }
        self.produced.inc_by(records.len() as u64);
        for d in &letters {
            self.metrics
                .rejected
                .with_label_values(&[&self.source, &d.reason])
                .inc();
        }
        let stored = now_ms();
        for t in sampled {
            self.age.observe((stored - t).max(0) as f64 / 1000.0);
        }
        true
    }
}
