//! Where the edge's records go: straight to the broker while it answers,
//! into the disk spool while it does not, and from the spool back to the
//! broker, in order, when it returns.
//!
//! [`Sink::send`] returns once the records are either acknowledged by the
//! broker or written to the spool: both are durable, so a poller may move
//! its source cursor on. While the spool holds anything, new records are
//! appended behind it rather than sent directly, so a key's records reach
//! the topic in the order they were read. A full spool refuses new records
//! ([`SpoolError::Full`]): the poller stops reading its source until the
//! broker drains the spool (backpressure, nothing dropped).
//!
//! A batch that failed half way is spooled whole; the records that did
//! reach the broker arrive twice, with the same event ids, which the worker
//! recognises.
//!
//! After a failed delivery the producer is made anew: an idempotent
//! producer whose messages timed out keeps sequence numbers the broker no
//! longer expects, and Tansu 0.6 then refuses every later batch ("unknown
//! broker error", seen here after a broker restart). A new producer gets a
//! new producer id.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use marktwin_core::backoff::Backoff;
use marktwin_kafka::produce_all;
use prometheus::{IntGauge, Registry};
use rdkafka::producer::{FutureProducer, Producer, PurgeConfig};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::fusion::{Fused, Fusion};
use crate::spool::{Entry, Spool, SpoolError};
use marktwin_core::events::EventKind;
use serde_json::Value;

/// Records for one topic: `(key, value)`.
pub type Batch<'a> = (&'a str, &'a [(String, Vec<u8>)]);

/// Makes a producer; `None` when the client cannot be created.
pub type MakeProducer = Arc<dyn Fn() -> Option<FutureProducer> + Send + Sync>;

/// The edge's way to the broker, shared by its pollers.
#[derive(Clone)]
pub struct Sink {
    producer: Arc<Mutex<FutureProducer>>,
    make: MakeProducer,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    direct_timeout: Duration,
    spooled: IntGauge,
    refusing: IntGauge,
    fusion: Arc<Mutex<Fusion>>,
}

impl Sink {
    /// A sink over producers from `make` and `spool`; `direct_timeout`
    /// bounds a direct send before its records go to the spool instead.
    /// Registers the spool-size gauge on `registry`.
    pub fn new(
        make: MakeProducer,
        spool: Spool,
        direct_timeout: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let spooled = IntGauge::new(
            marktwin_core::metrics::EDGE_SPOOL_BYTES,
            "Bytes in the edge's disk spool waiting for the broker.",
        )?;
        registry.register(Box::new(spooled.clone()))?;
        let refusing = IntGauge::new(
            marktwin_core::metrics::EDGE_SPOOL_REFUSING,
            "1 while the spool refuses records (full or disk error); sources are paused.",
        )?;
        registry.register(Box::new(refusing.clone()))?;
        spooled.set(spool.bytes() as i64);
        let producer = make().ok_or_else(|| {
            prometheus::Error::Msg("cannot create the edge's Kafka producer".into())
        })?;
        Ok(Sink {
            producer: Arc::new(Mutex::new(producer)),
            make,
            spool: Arc::new(Mutex::new(spool)),
            wake: Arc::new(Notify::new()),
            direct_timeout,
            spooled,
            refusing,
            fusion: Arc::default(),
        })
    }

    /// The sink with `fusion`'s rules applied to what the sources offer.
    pub fn with_fusion(mut self, fusion: Fusion) -> Self {
        self.fusion = Arc::new(Mutex::new(fusion));
        self
    }

    /// Whether records of `kind` from `source` take part in a fusion rule.
    pub fn fuses(&self, source: &str, kind: EventKind) -> bool {
        self.fusion
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wants(source, kind)
    }

    /// Offers a cleaned record to the fusion rules; the fused events.
    pub fn fuse(&self, source: &str, kind: EventKind, payload: &Value, time_ms: i64) -> Vec<Fused> {
        self.fusion
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(source, kind, payload, time_ms)
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the producer after a failed delivery (see the module doc).
    /// What the old one still holds is purged first: those records are in
    /// the spool now, and a late delivery would put them on the topic twice.
    fn renew_producer(&self) {
        self.producer()
            .purge(PurgeConfig::default().queue().inflight());
        if let Some(p) = (self.make)() {
            *self.producer.lock().unwrap_or_else(|p| p.into_inner()) = p;
        }
    }

    /// Bytes waiting in the spool.
    pub fn spooled_bytes(&self) -> u64 {
        self.spool().bytes()
    }

    /// Delivers `batches` (acknowledged, or spooled when the broker does
    /// not take them within the direct timeout). Errors only when the
    /// spool is full or the disk fails.
    pub async fn send(&self, batches: &[Batch<'_>]) -> Result<(), SpoolError> {
        if batches.iter().all(|(_, r)| r.is_empty()) {
            return Ok(());
        }
        if self.spool().is_empty() {
            let producer = self.producer();
            let direct = async {
                for (topic, records) in batches {
                    produce_all(&producer, topic, records).await?;
                }
                Ok::<_, marktwin_kafka::Error>(())
            };
            match tokio::time::timeout(self.direct_timeout, direct).await {
                Ok(Ok(())) => {
                    self.refusing.set(0);
                    return Ok(());
                }
                Ok(Err(e)) => warn!(error = %e, "Broker did not take the records; spooling them."),
                Err(_) => {
                    warn!(timeout = ?self.direct_timeout, "Broker did not answer in time; spooling the records.")
                }
            }
            self.renew_producer();
        }
        let entries: Vec<Entry> = batches
            .iter()
            .flat_map(|(topic, records)| {
                records.iter().map(|(k, v)| Entry {
                    topic: (*topic).to_owned(),
                    key: k.as_bytes().to_vec(),
                    value: v.clone(),
                })
            })
            .collect();
        let mut spool = self.spool();
        if let Err(e) = spool.append(&entries) {
            self.refusing.set(1);
            return Err(e);
        }
        self.refusing.set(0);
        self.spooled.set(spool.bytes() as i64);
        drop(spool);
        self.wake.notify_one();
        Ok(())
    }

    /// [`Sink::send`] until the records are stored: while the spool is
    /// full, waits and tries again, so the caller's source pauses
    /// (backpressure). False when `shutdown` came first.
    pub async fn send_until_stored(
        &self,
        batches: &[Batch<'_>],
        source: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.send(batches).await {
                Ok(()) => return true,
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(source, error = %e, retry_in_ms = d.as_millis() as u64, "Cannot store readings; reading paused.");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return false },
                    }
                }
            }
        }
    }

    /// Sends the spool's records to the broker in order until `shutdown`;
    /// run it as one task per process.
    pub async fn drain(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let peeked = self.spool().peek(1000);
            let (entries, upto) = match peeked {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "Cannot read the spool; retrying.");
                    if !pause(&mut shutdown, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    r = shutdown.changed() => if r.is_err() { break },
                }
                continue;
            }
            let sent = tokio::select! {
                r = self.send_in_order(&entries) => r,
                _ = shutdown.wait_for(|v| *v) => {
                    // Stop now: the records stay in the spool for the next
                    // start, and what librdkafka still holds is purged so
                    // it is not delivered behind the spool's back.
                    self.producer().purge(PurgeConfig::default().queue().inflight());
                    break;
                }
            };
            match sent {
                Ok(()) => {
                    backoff.reset();
                    let mut spool = self.spool();
                    if let Err(e) = spool.ack(upto) {
                        warn!(error = %e, "Cannot store the spool head; records may be sent again.");
                    }
                    let left = spool.bytes();
                    self.spooled.set(left as i64);
                    if spool.is_empty() {
                        info!("Spool drained: the broker has every record again.");
                    }
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, spooled = entries.len(), retry_in_ms = d.as_millis() as u64, "Broker still not taking spooled records.");
                    self.renew_producer();
                    if !pause(&mut shutdown, d).await {
                        break;
                    }
                }
            }
        }
        let _ = self.spool().sync();
    }

    /// Produces `entries` topic run by topic run, in order.
    async fn send_in_order(&self, entries: &[Entry]) -> Result<(), marktwin_kafka::Error> {
        let producer = self.producer();
        let mut i = 0;
        while i < entries.len() {
            let topic = &entries[i].topic;
            let run: Vec<(Vec<u8>, &[u8])> = entries[i..]
                .iter()
                .take_while(|e| &e.topic == topic)
                .map(|e| (e.key.clone(), e.value.as_slice()))
                .collect();
            produce_all(&producer, topic, &run).await?;
            i += run.len();
        }
        Ok(())
    }
}

/// Sleeps `d` unless shutdown comes first; false on shutdown.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*shutdown.borrow(),
        r = shutdown.changed() => r.is_ok() && !*shutdown.borrow(),
    }
}
