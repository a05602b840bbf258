//! The edge's metrics, shared by every source.

use marktwin_core::metrics as m;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Bucket bounds (seconds) of the sample-to-stored histogram; the benches
/// count their baselines into the same bounds.
pub const SAMPLE_AGE_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

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
    pub(crate) age_at_read: HistogramVec,
    pub(crate) rejected: IntCounterVec,
    pub(crate) fused: IntCounterVec,
    pub(crate) files: IntCounterVec,
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
        // Both sample ages per source, in the same buckets, so one can be
        // read against the other.
        let age = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SAMPLE_AGE_BUCKETS.to_vec()),
                &["source"],
            )
        };
        let sample_age = age(
            m::EDGE_SAMPLE_TO_STORED_SECONDS,
            "From a sample's timestamp to its acknowledgement or spooling.",
        )?;
        let age_at_read = age(
            m::EDGE_SAMPLE_AGE_AT_READ_SECONDS,
            "How old a sample (by its source timestamp) was when the edge received it.",
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                m::EDGE_RECORDS_REJECTED_TOTAL,
                "Records cleaning held back: dead-lettered, or duplicates suppressed.",
            ),
            &["source", "reason"],
        )?;
        let fused = IntCounterVec::new(
            Opts::new(m::EDGE_FUSED_TOTAL, "Events written by a fusion rule."),
            &["fusion"],
        )?;
        let files = IntCounterVec::new(
            Opts::new(m::EDGE_FILES_TOTAL, "Files a drop folder finished."),
            &["source", "outcome"],
        )?;
        for c in [&rejected, &fused, &files] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(sample_age.clone()))?;
        registry.register(Box::new(age_at_read.clone()))?;
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
            age_at_read,
            rejected,
            fused,
            files,
        })
    }
}
