//! Producing with acknowledgement, and the dead-letter sink.

use std::time::Duration;

use marktwin_core::Config;
use marktwin_core::events::DeadLetter;
use marktwin_core::metrics::{DEAD_LETTER_RECORDS_TOTAL, LATE_RECORDS_TOTAL};
use marktwin_core::topics::id;
use prometheus::{IntCounterVec, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tracing::warn;

use crate::error::{Error, Result};

/// A producer for source events and dead letters: idempotent, `acks=all`,
/// so an acknowledged record is stored once and durably.
///
/// `linger.ms` and `compression.type` are defaults that `kafka.client`
/// may change; idempotence and `acks=all` are not negotiable.
pub fn producer(cfg: &Config, bootstrap: &str) -> Result<FutureProducer> {
    let mut c = crate::client_config(cfg, bootstrap);
    for (k, v) in [("linger.ms", "5"), ("compression.type", "none")] {
        if !cfg.kafka.client.contains_key(k) {
            c.set(k, v);
        }
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    Ok(c.create()?)
}

/// A producer for the worker's outputs (changes to compacted topics):
/// `acks=all` and one request in flight per connection, so records stay in
/// order across retries, but not idempotent.
///
/// Why not idempotent: after a broker restart librdkafka bumps the epoch of
/// an idempotent producer whose messages timed out, and Tansu 0.6 then
/// panics in its storage task (`idempotent_message_check`: "more or less
/// than one row"), which stops the whole broker. The outputs do not need
/// it: each record is the latest row of its key, so one written twice
/// changes nothing a reader sees.
pub fn output_producer(cfg: &Config, bootstrap: &str) -> Result<FutureProducer> {
    let mut c = crate::client_config(cfg, bootstrap);
    for (k, v) in [("linger.ms", "5"), ("compression.type", "none")] {
        if !cfg.kafka.client.contains_key(k) {
            c.set(k, v);
        }
    }
    c.set("enable.idempotence", "false")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1");
    Ok(c.create()?)
}

/// Sends every `(key, value)` to `topic` and waits until the broker has
/// acknowledged all of them. When the local queue is full it waits for the
/// records in flight and goes on. Any failed delivery fails the call: the
/// caller keeps its input position and sends again (event ids are
/// deterministic, so a resend is recognisable downstream).
pub async fn produce_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    records: &[(K, V)],
) -> Result<usize> {
    send_all(
        producer,
        topic,
        records.iter().map(|(k, v)| (k.as_ref(), Some(v.as_ref()))),
    )
    .await?;
    Ok(records.len())
}

/// Like [`produce_all`], where a record without a value is a tombstone (a
/// compacted topic then forgets the key). Returns where each record was
/// stored, `(partition, offset)`, in input order.
pub async fn produce_keyed<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    records: &[(K, Option<V>)],
) -> Result<Vec<(i32, i64)>> {
    send_all(
        producer,
        topic,
        records
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref().map(AsRef::as_ref))),
    )
    .await
}

async fn send_all<'a>(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<Vec<(i32, i64)>> {
    let mut stored = Vec::new();
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    for (k, v) in records {
        loop {
            let mut rec = FutureRecord::<[u8], [u8]>::to(topic).key(k);
            if let Some(v) = v {
                rec = rec.payload(v);
            }
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let waited = !pending.is_empty();
                    stored.extend(await_all(topic, std::mem::take(&mut pending)).await?);
                    if !waited {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
    }
    stored.extend(await_all(topic, pending).await?);
    Ok(stored)
}

async fn await_all(topic: &str, pending: Vec<DeliveryFuture>) -> Result<Vec<(i32, i64)>> {
    let mut first_err = None;
    let mut stored = Vec::with_capacity(pending.len());
    for f in pending {
        match f.await {
            Ok(Ok(d)) => stored.push((d.partition, d.offset)),
            Ok(Err((e, _))) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(KafkaError::Canceled);
            }
        }
    }
    match first_err {
        None => Ok(stored),
        Some(e) => {
            warn!(topic, error = %e, "Delivery failed.");
            Err(Error::Kafka(e))
        }
    }
}

/// Where rejected records go: the dead-letter topic, with the reason, and a
/// count per stage and reason in metrics. Nothing is dropped silently.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    count: IntCounterVec,
}

impl DeadLetterSink {
    /// A sink producing to this deployment's dead-letter topic; registers
    /// its counter on `registry` (once per process).
    pub fn new(cfg: &Config, producer: FutureProducer, registry: &Registry) -> Result<Self> {
        Self::to_topic(
            cfg.topic_name(id::DEAD_LETTER),
            producer,
            registry,
            DEAD_LETTER_RECORDS_TOTAL,
            "Records sent to the dead-letter topic, by stage and reason.",
        )
    }

    /// A sink for events that came too late to update their windows: the
    /// late topic, counted in `marktwin_late_records_total`.
    pub fn late(cfg: &Config, producer: FutureProducer, registry: &Registry) -> Result<Self> {
        Self::to_topic(
            cfg.topic_name(id::LATE),
            producer,
            registry,
            LATE_RECORDS_TOTAL,
            "Events sent to the late topic, by stage and reason.",
        )
    }

    fn to_topic(
        topic: String,
        producer: FutureProducer,
        registry: &Registry,
        metric: &str,
        help: &str,
    ) -> Result<Self> {
        let count = IntCounterVec::new(Opts::new(metric, help), &["stage", "reason"])
            .and_then(|c| registry.register(Box::new(c.clone())).map(|_| c))?;
        Ok(DeadLetterSink {
            producer,
            topic,
            count,
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// `letters` as `(key, JSON)` records for the dead-letter topic.
    pub fn records(letters: &[DeadLetter]) -> Vec<(String, Vec<u8>)> {
        letters
            .iter()
            .map(|d| (d.source.clone(), serde_json::to_vec(d).unwrap_or_default()))
            .collect()
    }

    /// Counts `letters` once they are stored (acknowledged or spooled).
    pub fn count(&self, letters: &[DeadLetter]) {
        for d in letters {
            self.count
                .with_label_values(&[d.stage.as_str(), d.reason.as_str()])
                .inc();
        }
    }

    /// Sends `letters` and waits for the broker's acknowledgement.
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        produce_all(&self.producer, &self.topic, &Self::records(letters)).await?;
        self.count(letters);
        Ok(())
    }
}
