//! Where a business source's records go: cleaned, good ones to the kind's
//! topic, rejects to the dead-letter topic, fused events beside them, and
//! the records that count or move stock once more to the `stock` topic,
//! keyed by stock region ([`marktwin_core::config::InventoryConfig`]); all
//! in one delivery through the sink (acknowledged or spooled). Shared by
//! the HTTP pollers and the drop folders.

use std::sync::Arc;

use marktwin_core::Config;
use marktwin_core::events::{DeadLetter, EventKind};
use marktwin_core::now_ms;
use marktwin_core::sources::RecordMap;
use marktwin_kafka::DeadLetterSink;
use prometheus::IntCounter;
use serde_json::Value;
use tracing::warn;

use crate::EdgeMetrics;
use crate::clean::{Cleaner, Outcome, encode_value};
use crate::error::{Error, Result};
use crate::map::Reject;
use crate::pseudonym::Pseudonymiser;
use crate::sink::Sink;

/// What one delivery held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Records sent to the kind's topic.
    pub good: usize,
    /// Records sent to the dead-letter topic.
    pub rejected: usize,
    /// Records suppressed as duplicates.
    pub duplicates: usize,
    /// Fused events sent.
    pub fused: usize,
}

/// What the business sources of one process share: the sink, the
/// dead-letter topic, metrics, readiness and the pseudonymisation key.
#[derive(Clone)]
pub struct Outputs {
    /// Acknowledged produce, or the spool.
    pub sink: Sink,
    /// The dead-letter topic.
    pub dead_letters: DeadLetterSink,
    /// The edge's metrics.
    pub metrics: EdgeMetrics,
    /// Readiness checks.
    pub readiness: marktwin_core::health::Readiness,
    /// Consumer identifiers' HMAC.
    pub pseudo: Arc<Pseudonymiser>,
}

impl Outputs {
    /// The output of `source`, whose records are `map` (validated config
    /// always has one).
    pub fn records(
        &self,
        cfg: &Config,
        source: &str,
        map: Option<&RecordMap>,
    ) -> Result<RecordsOut> {
        let map = map.ok_or_else(|| Error::Source {
            source_name: source.to_owned(),
            detail: "has no map (kind, fields)".into(),
        })?;
        Ok(RecordsOut::new(
            cfg,
            source,
            map,
            self.sink.clone(),
            self.dead_letters.clone(),
            self.metrics.clone(),
            self.pseudo.clone(),
        ))
    }
}

/// The output of one business source.
pub struct RecordsOut {
    cleaner: Cleaner,
    sink: Sink,
    dead_letters: DeadLetterSink,
    metrics: EdgeMetrics,
    fuses: bool,
    inventory: marktwin_core::config::InventoryConfig,
    stock_topic: String,
    consumer_topic: String,
    pending: Vec<DeadLetter>,
    read: IntCounter,
    produced: IntCounter,
}

impl RecordsOut {
    /// The output of `source`, whose records are `map`.
    pub fn new(
        cfg: &Config,
        source: &str,
        map: &RecordMap,
        sink: Sink,
        dead_letters: DeadLetterSink,
        metrics: EdgeMetrics,
        pseudo: Arc<Pseudonymiser>,
    ) -> Self {
        let fuses = sink.fuses(source, map.kind);
        let cleaner = Cleaner::new(cfg, source, map, pseudo, fuses);
        RecordsOut {
            read: metrics.read.with_label_values(&[source]),
            produced: metrics
                .produced
                .with_label_values(&[source, cleaner.topic()]),
            cleaner,
            sink,
            dead_letters,
            metrics,
            fuses,
            inventory: cfg.inventory.clone(),
            stock_topic: cfg.topic_name(marktwin_core::topics::id::STOCK),
            consumer_topic: cfg.topic_name(marktwin_core::topics::id::CONSUMER_POS),
            pending: Vec::new(),
        }
    }

    /// The source.
    pub fn source(&self) -> &str {
        self.cleaner.source()
    }

    /// The kind produced.
    pub fn kind(&self) -> EventKind {
        self.cleaner.kind()
    }

    /// Rejects `raw` for `why` found before cleaning (by the reader); it goes
    /// to the dead-letter topic with the next [`RecordsOut::store`].
    pub fn reject(&mut self, raw: &Value, why: Reject) {
        self.pending
            .push(self.cleaner.dead_letter(raw, why, now_ms()));
    }

    /// Cleans `raws` and stores the outcome: acknowledged by the broker or
    /// spooled. Only then are the records remembered for duplicate
    /// suppression; on an error nothing is, and the caller sends them again.
    pub async fn store(&mut self, raws: &[Value]) -> Result<Stored> {
        let ingest = now_ms();
        let source = self.cleaner.source().to_owned();
        let kind = self.cleaner.kind();
        let mut good = Vec::with_capacity(raws.len());
        let mut fused = Vec::new();
        // Stock-moving records again, keyed by stock region.
        let mut stock = Vec::new();
        // POS lines that name a consumer again, keyed by the consumer.
        let mut consumers = Vec::new();
        let mut fused_rules = Vec::new();
        let mut letters: Vec<DeadLetter> = std::mem::take(&mut self.pending);
        let pre = letters.len();
        let mut duplicates = 0;
        for raw in raws {
            match self.cleaner.clean(raw, ingest) {
                Outcome::Good(c) => {
                    if self.fuses
                        && let Some(p) = &c.payload
                    {
                        for f in self.sink.fuse(&source, kind, p, c.event_time_ms) {
                            let stock_key = self.inventory.stock_key(kind, &f.payload);
                            let consumer_key = consumer_of(kind, &f.payload);
                            match encode_value(
                                kind,
                                &f.source,
                                ingest,
                                f.payload,
                                self.cleaner.encoding(),
                            ) {
                                Ok(r) => {
                                    if let Some(k) = stock_key {
                                        stock.push((k, r.1.clone()));
                                    }
                                    if let Some(k) = consumer_key {
                                        consumers.push((k, r.1.clone()));
                                    }
                                    fused.push(r);
                                    fused_rules.push(f.rule);
                                }
                                Err(e) => warn!(
                                    fusion = f.rule,
                                    error = e.detail,
                                    "Cannot encode a fused event."
                                ),
                            }
                        }
                    }
                    if let Some(k) = c.stock_key {
                        stock.push((k, c.bytes.clone()));
                    }
                    if let Some(k) = c.consumer_key {
                        consumers.push((k, c.bytes.clone()));
                    }
                    good.push((c.key, c.bytes));
                }
                Outcome::Duplicate => duplicates += 1,
                Outcome::Rejected(d) => letters.push(d),
            }
        }
        self.read.inc_by((raws.len() + pre) as u64);
        let dead = DeadLetterSink::records(&letters);
        let topic = self.cleaner.topic().to_owned();
        if let Err(e) = self
            .sink
            .send(&[
                (topic.as_str(), &good),
                (topic.as_str(), &fused),
                (self.stock_topic.as_str(), &stock),
                (self.consumer_topic.as_str(), &consumers),
                (self.dead_letters.topic(), &dead),
            ])
            .await
        {
            self.cleaner.abort();
            letters.truncate(pre);
            self.pending = letters;
            return Err(Error::Produce {
                topic,
                detail: e.to_string(),
            });
        }
        self.cleaner.commit();
        self.dead_letters.count(&letters);
        self.produced.inc_by(good.len() as u64);
        let rejected = &self.metrics.rejected;
        for d in &letters {
            rejected.with_label_values(&[&source, &d.reason]).inc();
        }
        if duplicates > 0 {
            rejected
                .with_label_values(&[&source, "duplicate"])
                .inc_by(duplicates as u64);
        }
        for r in &fused_rules {
            self.metrics.fused.with_label_values(&[r]).inc();
        }
        Ok(Stored {
            good: good.len(),
            rejected: letters.len(),
            duplicates,
            fused: fused.len(),
        })
    }
}

/// The consumer a fused POS event names, for the `consumer_pos` topic.
fn consumer_of(kind: EventKind, payload: &Value) -> Option<String> {
    (kind == EventKind::PosTransaction)
        .then(|| payload.get("consumer_id")?.as_str())
        .flatten()
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}
