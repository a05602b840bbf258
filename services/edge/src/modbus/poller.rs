//! The poll loop of one Modbus device: read every tag each interval and
//! produce the readings to the telemetry topic.

use std::time::{Duration, Instant};

use marktwin_core::backoff::Backoff;
use marktwin_core::health::Readiness;
use marktwin_core::modbus::ModbusDevice;
use marktwin_core::{Config, now_ms};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::info;

use super::reader::DeviceReader;
use crate::EdgeMetrics;
use crate::error::Result;
use crate::sink::Sink;
use crate::telemetry::TelemetryOut;

/// Polls one device and produces one `telemetry_reading` per tag per poll.
pub struct ModbusPoller {
    reader: DeviceReader,
    out: TelemetryOut,
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
            out: TelemetryOut::new(cfg, source, sink, metrics, readiness),
            reader: DeviceReader::new(dev),
        }
    }

    /// Polls until `shutdown` turns true. A device that does not answer is
    /// retried with backoff (its tags are reported Bad meanwhile); readings
    /// the broker did not acknowledge are sent again before the next poll.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let dev = self.reader.device().clone();
        let source = self.out.source().to_owned();
        let duration = self
            .out
            .metrics()
            .duration
            .with_label_values(&[source.as_str()]);
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
            let up = !cycle.disconnected;
            if up {
                backoff.reset();
                self.out
                    .set_ready(true, format!("{source} answers at {}", dev.address));
            } else {
                self.out.failed();
                self.out
                    .set_ready(false, format!("{source}: no answer from {}", dev.address));
            }
            let answered = now_ms();
            let readings = cycle
                .readings
                .into_iter()
                .map(|r| {
                    let t = r.source_time_ms.unwrap_or(answered);
                    (r, t)
                })
                .collect();
            if !self.out.store(readings, &mut shutdown).await {
                break;
            }
            duration.observe(started.elapsed().as_secs_f64());
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
