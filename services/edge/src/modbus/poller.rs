//! The poll loop of one Modbus device: read every tag each interval and
//! produce the readings to the telemetry topic.

use std::time::{Duration, Instant};

use marktwin_core::backoff::Backoff;
use marktwin_core::codec;
use marktwin_core::events::Envelope;
use marktwin_core::health::Readiness;
use marktwin_core::modbus::ModbusDevice;
use marktwin_core::topics::{Encoding, id};
use marktwin_core::{Config, now_ms};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::info;

use super::reader::DeviceReader;
use crate::EdgeMetrics;
use crate::error::{Error, Result};
use crate::sink::Sink;

/// Polls one device and produces one `telemetry_reading` per tag per poll.
pub struct ModbusPoller {
    reader: DeviceReader,
    source: String,
    readiness_name: String,
    topic: String,
    encoding: Encoding,
    sink: Sink,
    metrics: EdgeMetrics,
    readiness: Readiness,
}

impl ModbusPoller {
    /// A poller for `dev`, one of `cfg.edge.modbus.devices`.
    pub fn new(
        cfg: &Config,
        dev: ModbusDevice,
        sink: Sink,
        metrics: EdgeMetrics,
        readiness: Readiness,
    ) -> Self {
        let source = format!("modbus:{}", dev.name);
        ModbusPoller {
            readiness_name: format!("source_{source}"),
            source,
            reader: DeviceReader::new(dev),
            topic: cfg.topic_name(id::TELEMETRY),
            encoding: cfg.topic(id::TELEMETRY).encoding,
            sink,
            metrics,
            readiness,
        }
    }

    /// Polls until `shutdown` turns true. A device that does not answer is
    /// retried with backoff (its tags are reported Bad meanwhile); readings
    /// the broker did not acknowledge are sent again before the next poll.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let dev = self.reader.device().clone();
        let source = self.source.clone();
        let mut ticker = tokio::time::interval(Duration::from_millis(dev.poll_interval_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_millis(dev.max_backoff_ms),
        );
        info!(source, address = %dev.address, tags = dev.tags.len(), "Modbus poller starting.");
        while !*shutdown.borrow() {
            tokio::select! {
                _ = ticker.tick() => {}
                r = shutdown.changed() => if r.is_err() { break } else { continue },
            }
            let started = Instant::now();
            let cycle = self.reader.cycle().await;
            let labels = [source.as_str()];
            self.metrics
                .read
                .with_label_values(&labels)
                .inc_by(cycle.readings.len() as u64);
            let up = !cycle.disconnected;
            self.metrics
                .up
                .with_label_values(&labels)
                .set(i64::from(up));
            if up {
                backoff.reset();
                self.readiness.set(
                    self.readiness_name.clone(),
                    true,
                    format!("{source} answers at {}", dev.address),
                );
            } else {
                self.metrics.errors.with_label_values(&labels).inc();
                self.readiness.set(
                    self.readiness_name.clone(),
                    false,
                    format!("{source}: no answer from {}", dev.address),
                );
            }
            let ingest = now_ms();
            let mut records = Vec::with_capacity(cycle.readings.len());
            let sampled: Vec<i64> = cycle
                .readings
                .iter()
                .map(|r| r.source_time_ms.unwrap_or(ingest))
                .collect();
            for r in cycle.readings {
                let env = Envelope::wrap(&source, ingest, r);
                let bytes = codec::encode(&env, self.encoding).map_err(|e| Error::Source {
                    source_name: source.clone(),
                    detail: e.to_string(),
                })?;
                records.push((env.key, bytes));
            }
            if !self
                .sink
                .send_until_stored(&self.topic, &source, &records, &mut shutdown)
                .await
            {
                break;
            }
            self.metrics
                .produced
                .with_label_values(&[source.as_str(), self.topic.as_str()])
                .inc_by(records.len() as u64);
            let stored = now_ms();
            let age = self.metrics.sample_age.with_label_values(&labels);
            for t in sampled {
                age.observe((stored - t).max(0) as f64 / 1000.0);
            }
            self.metrics
                .duration
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            if !up {
                let d = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    r = shutdown.changed() => if r.is_err() { break },
                }
            }
        }
        info!(source, "Modbus poller stopped.");
        Ok(())
    }
}
