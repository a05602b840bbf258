//! Cleaning: what every business record passes before it reaches a topic.
//!
//! In order: the [`Mapper`] (schema validation, type coercion, unit
//! spellings, code mapping, pseudonymisation), built-in plausibility checks
//! per kind (a quantity above zero, an amount no larger than price ×
//! quantity, an event time neither before `min_event_time_ms` nor further
//! than `max_future_ms` ahead), unit normalisation with the `[units]`
//! factors, the configured ranges, and duplicate suppression by event id
//! (natural key, and content for kinds a source may correct).
//!
//! A record that fails becomes a [`DeadLetter`] with the reason, the detail
//! naming the field, the source and the original payload. A duplicate is
//! only counted: it carries nothing new. Both are counted per source and
//! reason in `marktwin_edge_records_rejected_total`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use marktwin_core::codec;
use marktwin_core::config::{InventoryConfig, UnitsConfig};
use marktwin_core::events::{
    AllocationOrder, DeadLetter, Envelope, EventKind, InventorySnapshot, LineCapacity, Payload,
    PosTransaction, PriceObservation, ProductionPlan, ProductionRecord, Retailer, Unit,
};
use marktwin_core::sources::{CleaningConfig, RangeRule, RecordMap};
use marktwin_core::topics::Encoding;
use marktwin_core::{Config, now_ms};
use serde_json::Value;

use crate::map::{Mapper, Reject};
use crate::pseudonym::Pseudonymiser;

/// A cleaned record, encoded for its topic.
#[derive(Clone, Debug)]
pub struct Cleaned {
    /// Partition key.
    pub key: String,
    /// Encoded envelope.
    pub bytes: Vec<u8>,
    /// The payload as JSON, kept when a fusion rule may need it.
    pub payload: Option<Value>,
    /// Event time, ms.
    pub event_time_ms: i64,
    /// The `stock` topic's key (the warehouse's stock region) when the
    /// record counts or moves stock; it goes there too.
    pub stock_key: Option<String>,
    /// The `consumer_pos` topic's key (the pseudonymised consumer id) when
    /// the record is a POS line that names a consumer; it goes there too.
    pub consumer_key: Option<String>,
    id: u128,
}

/// What cleaning made of one record.
#[derive(Debug)]
pub enum Outcome {
    /// Goes to the kind's topic.
    Good(Cleaned),
    /// Seen before (same event id); counted, not sent.
    Duplicate,
    /// Goes to the dead-letter topic.
    Rejected(DeadLetter),
}

/// Built-in plausibility and unit normalisation of one payload type.
pub trait Check: Payload {
    /// Fails with the field named when a value cannot be right.
    fn check(&self) -> Result<(), Reject>;
    /// Converts quantities (and prices per unit) into `to`.
    fn normalise(&mut self, to: Unit, units: &UnitsConfig);
    /// Whether the event time is a real time to check against the clock.
    const TIMED: bool = true;
    /// The (pseudonymised) consumer the record is about, if any: it goes to
    /// the `consumer_pos` topic too, keyed by it.
    fn consumer(&self) -> Option<&str> {
        None
    }
}

fn positive(field: &str, v: f64) -> Result<(), Reject> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Reject::new(
            "bad_value",
            format!("`{field}` is {v}; must be above 0"),
        ))
    }
}

fn non_negative(field: &str, v: f64) -> Result<(), Reject> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Reject::new(
            "bad_value",
            format!("`{field}` is {v}; must be 0 or more"),
        ))
    }
}

/// `(quantity, per-unit price)` converted from `from` into `to`.
fn convert(q: f64, price: f64, from: Unit, to: Unit, u: &UnitsConfig) -> (f64, f64) {
    let r = u.factor(from) / u.factor(to);
    (q * r, price / r)
}

impl Check for PosTransaction {
    fn check(&self) -> Result<(), Reject> {
        positive("quantity", self.quantity)?;
        non_negative("unit_price", self.unit_price)?;
        non_negative("total_amount", self.total_amount)?;
        let expected = self.unit_price * self.quantity;
        // Discounts make the amount smaller than price × qty; never larger.
        if self.total_amount > expected + 0.01 {
            return Err(Reject::new(
                "implausible",
                format!(
                    "`total_amount` is {}; above unit_price × quantity ({expected})",
                    self.total_amount
                ),
            ));
        }
        Ok(())
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        (self.quantity, self.unit_price) =
            convert(self.quantity, self.unit_price, self.unit, to, u);
        self.unit = to;
    }
    fn consumer(&self) -> Option<&str> {
        self.consumer_id.as_deref().filter(|c| !c.is_empty())
    }
}

impl Check for AllocationOrder {
    fn check(&self) -> Result<(), Reject> {
        positive("quantity", self.quantity)?;
        non_negative("unit_price", self.unit_price)
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        (self.quantity, self.unit_price) =
            convert(self.quantity, self.unit_price, self.unit, to, u);
        self.unit = to;
    }
    const TIMED: bool = false;
}

impl Check for InventorySnapshot {
    fn check(&self) -> Result<(), Reject> {
        non_negative("quantity", self.quantity)
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        self.quantity = convert(self.quantity, 1.0, self.unit, to, u).0;
        self.unit = to;
    }
}

impl Check for ProductionPlan {
    fn check(&self) -> Result<(), Reject> {
        non_negative("planned_quantity", self.planned_quantity)
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        self.planned_quantity = convert(self.planned_quantity, 1.0, self.unit, to, u).0;
        self.unit = to;
    }
    const TIMED: bool = false;
}

impl Check for LineCapacity {
    fn check(&self) -> Result<(), Reject> {
        positive("rated_per_minute", self.rated_per_minute)
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        self.rated_per_minute = convert(self.rated_per_minute, 1.0, self.unit, to, u).0;
        self.unit = to;
    }
    const TIMED: bool = false;
}

impl Check for ProductionRecord {
    fn check(&self) -> Result<(), Reject> {
        if self.period_end_ms < self.period_start_ms {
            return Err(Reject::new(
                "implausible",
                format!(
                    "`period_end_ms` ({}) is before `period_start_ms` ({})",
                    self.period_end_ms, self.period_start_ms
                ),
            ));
        }
        Ok(())
    }
    fn normalise(&mut self, _to: Unit, _u: &UnitsConfig) {
        // Whole units counted by a line stay in the line's unit: converting
        // 3 packs into 0.015 cartons would not fit the integer counts.
    }
}

impl Check for Retailer {
    fn check(&self) -> Result<(), Reject> {
        for (field, v, limit) in [
            ("latitude", self.latitude, 90.0),
            ("longitude", self.longitude, 180.0),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v.abs() <= limit)
            {
                return Err(Reject::new(
                    "bad_value",
                    format!("`{field}` is {v}; must be between -{limit} and {limit}"),
                ));
            }
        }
        Ok(())
    }
    fn normalise(&mut self, _to: Unit, _u: &UnitsConfig) {}
    const TIMED: bool = false;
}

impl Check for PriceObservation {
    fn check(&self) -> Result<(), Reject> {
        positive("market_price", self.market_price)?;
        positive("guide_price", self.guide_price)
    }
    fn normalise(&mut self, to: Unit, u: &UnitsConfig) {
        let r = u.factor(to) / u.factor(self.unit);
        self.market_price *= r;
        self.guide_price *= r;
        self.unit = to;
    }
}

/// Event ids recently sent, to suppress duplicates; bounded.
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    pending: Vec<u128>,
    pending_set: HashSet<u128>,
    cap: usize,
}

impl Recent {
    fn seen(&mut self, id: u128) -> bool {
        if self.set.contains(&id) || !self.pending_set.insert(id) {
            return true;
        }
        self.pending.push(id);
        false
    }

    fn commit(&mut self) {
        self.pending_set.clear();
        for id in self.pending.drain(..) {
            if self.cap == 0 {
                continue;
            }
            if self.order.len() == self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
            self.set.insert(id);
            self.order.push_back(id);
        }
    }

    fn abort(&mut self) {
        self.pending.clear();
        self.pending_set.clear();
    }
}

/// Cleans the records of one source.
pub struct Cleaner {
    source: String,
    mapper: Mapper,
    ranges: Vec<RangeRule>,
    cfg: CleaningConfig,
    units: UnitsConfig,
    encoding: Encoding,
    topic: String,
    keep_payload: bool,
    inventory: InventoryConfig,
    recent: Recent,
}

impl std::fmt::Debug for Cleaner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleaner")
            .field("source", &self.source)
            .field("kind", &self.mapper.kind())
            .finish_non_exhaustive()
    }
}

/// The topic id carrying `kind`.
pub fn topic_id(kind: EventKind) -> &'static str {
    marktwin_core::topics::topics()
        .into_iter()
        .find(|t| t.kind == Some(kind))
        .map(|t| t.id)
        .unwrap_or(marktwin_core::topics::id::DEAD_LETTER)
}

impl Cleaner {
    /// The cleaner of `source`, whose records are `map`.
    /// `keep_payload`: hand each good record's payload out as JSON, for
    /// fusion.
    pub fn new(
        cfg: &Config,
        source: &str,
        map: &RecordMap,
        pseudo: Arc<Pseudonymiser>,
        keep_payload: bool,
    ) -> Self {
        let c = &cfg.edge.cleaning;
        let id = topic_id(map.kind);
        Cleaner {
            source: source.to_owned(),
            mapper: Mapper::new(map, pseudo, &c.codes),
            ranges: c
                .ranges
                .iter()
                .filter(|r| r.kind == map.kind)
                .cloned()
                .collect(),
            units: cfg.units.clone(),
            encoding: cfg.topic(id).encoding,
            topic: cfg.topic_name(id),
            keep_payload,
            inventory: cfg.inventory.clone(),
            recent: Recent {
                cap: c.dedup_window,
                ..Recent::default()
            },
            cfg: c.clone(),
        }
    }

    /// The topic good records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The source cleaned.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The kind produced.
    pub fn kind(&self) -> EventKind {
        self.mapper.kind()
    }

    /// The encoding of the kind's topic.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Cleans one raw record read at `ingest_ms`.
    pub fn clean(&mut self, raw: &Value, ingest_ms: i64) -> Outcome {
        let result = self.mapper.map(raw).and_then(|v| match self.mapper.kind() {
            EventKind::PosTransaction => self.finish::<PosTransaction>(v, ingest_ms),
            EventKind::AllocationOrder => self.finish::<AllocationOrder>(v, ingest_ms),
            EventKind::InventorySnapshot => self.finish::<InventorySnapshot>(v, ingest_ms),
            EventKind::ProductionPlan => self.finish::<ProductionPlan>(v, ingest_ms),
            EventKind::LineCapacity => self.finish::<LineCapacity>(v, ingest_ms),
            EventKind::ProductionRecord => self.finish::<ProductionRecord>(v, ingest_ms),
            EventKind::Retailer => self.finish::<Retailer>(v, ingest_ms),
            EventKind::PriceObservation => self.finish::<PriceObservation>(v, ingest_ms),
            EventKind::TelemetryReading => Err(Reject::new(
                "decode",
                "telemetry is read by the OPC UA and Modbus connectors",
            )),
        });
        match result {
            Ok(c) if self.recent.seen(c.id) => Outcome::Duplicate,
            Ok(c) => Outcome::Good(c),
            Err(r) => Outcome::Rejected(self.dead_letter(raw, r, ingest_ms)),
        }
    }

    /// The dead letter for `raw`, rejected for `why`: the original with
    /// pseudonymised fields pseudonymised.
    pub fn dead_letter(&self, raw: &Value, why: Reject, at_ms: i64) -> DeadLetter {
        DeadLetter {
            reason: why.reason.to_owned(),
            detail: why.detail,
            stage: "edge".into(),
            source: self.source.clone(),
            partition: None,
            offset: None,
            original: self.mapper.redact(raw),
            rejected_at_ms: at_ms,
        }
    }

    /// The records cleaned since the last call are stored: remember them.
    pub fn commit(&mut self) {
        self.recent.commit();
    }

    /// The records cleaned since the last commit were not stored: forget
    /// them, they will come again.
    pub fn abort(&mut self) {
        self.recent.abort();
    }

    fn finish<P: Check>(&self, v: Value, ingest_ms: i64) -> Result<Cleaned, Reject> {
        let mut p: P =
            serde_json::from_value(v).map_err(|e| Reject::new("decode", e.to_string()))?;
        p.check()?;
        if P::TIMED {
            let t = p.event_time_ms();
            let latest = now_ms() + self.cfg.max_future_ms;
            if t < self.cfg.min_event_time_ms || t > latest {
                return Err(Reject::new(
                    "implausible",
                    format!(
                        "event time {t} ms is outside edge.cleaning's window ({} .. now + {} ms)",
                        self.cfg.min_event_time_ms, self.cfg.max_future_ms
                    ),
                ));
            }
        }
        if let Some(to) = self.cfg.normalise_unit {
            p.normalise(to, &self.units);
        }
        let moves_stock = matches!(
            P::KIND,
            EventKind::InventorySnapshot | EventKind::AllocationOrder | EventKind::ProductionRecord
        );
        let json = if self.keep_payload || moves_stock || !self.ranges.is_empty() {
            Some(serde_json::to_value(&p).map_err(|e| Reject::new("decode", e.to_string()))?)
        } else {
            None
        };
        if let Some(j) = &json {
            check_ranges(&self.ranges, j)?;
        }
        let consumer_key = p.consumer().map(str::to_owned);
        let env = Envelope::wrap(&self.source, ingest_ms, p);
        let id = u128::from_str_radix(&env.event_id, 16).unwrap_or_default();
        let bytes =
            codec::encode(&env, self.encoding).map_err(|e| Reject::new("decode", e.to_string()))?;
        let stock_key = json
            .as_ref()
            .and_then(|j| self.inventory.stock_key(P::KIND, j));
        Ok(Cleaned {
            key: env.key,
            bytes,
            stock_key,
            consumer_key,
            payload: json.filter(|_| self.keep_payload),
            event_time_ms: env.event_time_ms,
            id,
        })
    }
}

fn encode_as<P: Payload>(
    source: &str,
    ingest_ms: i64,
    v: Value,
    encoding: Encoding,
) -> Result<(String, Vec<u8>), Reject> {
    let p: P = serde_json::from_value(v).map_err(|e| Reject::new("decode", e.to_string()))?;
    let env = Envelope::wrap(source, ingest_ms, p);
    let bytes = codec::encode(&env, encoding).map_err(|e| Reject::new("decode", e.to_string()))?;
    Ok((env.key, bytes))
}

/// A payload given as JSON of `kind` (a fused one), in an envelope from
/// `source`, encoded: `(key, bytes)`.
pub fn encode_value(
    kind: EventKind,
    source: &str,
    ingest_ms: i64,
    v: Value,
    encoding: Encoding,
) -> Result<(String, Vec<u8>), Reject> {
    use marktwin_core::events::TelemetryReading;
    let f = match kind {
        EventKind::TelemetryReading => encode_as::<TelemetryReading>,
        EventKind::PosTransaction => encode_as::<PosTransaction>,
        EventKind::AllocationOrder => encode_as::<AllocationOrder>,
        EventKind::InventorySnapshot => encode_as::<InventorySnapshot>,
        EventKind::ProductionPlan => encode_as::<ProductionPlan>,
        EventKind::LineCapacity => encode_as::<LineCapacity>,
        EventKind::ProductionRecord => encode_as::<ProductionRecord>,
        EventKind::Retailer => encode_as::<Retailer>,
        EventKind::PriceObservation => encode_as::<PriceObservation>,
    };
    f(source, ingest_ms, v, encoding)
}

fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `payload` matches every `field = value` of `when`.
pub fn matches(when: &std::collections::BTreeMap<String, String>, payload: &Value) -> bool {
    when.iter()
        .all(|(k, want)| payload.get(k).is_some_and(|v| field_text(v) == *want))
}

/// The first of `rules` that `payload` breaks, as a reject.
pub fn check_ranges(rules: &[RangeRule], payload: &Value) -> Result<(), Reject> {
    for r in rules {
        if !matches(&r.when, payload) {
            continue;
        }
        let Some(v) = payload.get(&r.field).and_then(Value::as_f64) else {
            continue;
        };
        let below = r.min.is_some_and(|lo| v < lo);
        let above = r.max.is_some_and(|hi| v > hi);
        if below || above {
            let lo = r.min.map_or("-∞".to_owned(), |x| x.to_string());
            let hi = r.max.map_or("∞".to_owned(), |x| x.to_string());
            return Err(Reject::new(
                "out_of_range",
                format!(
                    "`{}` is {v}; edge.cleaning.ranges allows {lo} .. {hi}",
                    r.field
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        let mut c = Config::default();
        c.edge.cleaning.normalise_unit = Some(Unit::Pack);
        c.edge.cleaning.ranges.push(RangeRule {
            kind: EventKind::PosTransaction,
            field: "quantity".into(),
            min: None,
            max: Some(200.0),
            when: [("store_code".to_owned(), "R1".to_owned())].into(),
        });
        c
    }

    fn pos_map() -> RecordMap {
        RecordMap {
            kind: EventKind::PosTransaction,
            fields: Default::default(),
            units: [("条".to_owned(), Unit::Carton)].into(),
            constants: Default::default(),
            pseudonymise: vec![],
            utc_offset_minutes: 0,
        }
    }

    fn sale() -> Value {
        json!({"store_code":"R1","order_number":"O1","line_no":1,"sku_code":"K","sku_name":"n",
               "unit_price":250.0,"quantity":2,"unit":"条","total_amount":500.0,
               "transaction_time_ms":1_767_225_600_000i64})
    }

    fn cleaner(c: &Config) -> Cleaner {
        let pseudo = Arc::new(Pseudonymiser::new(b"test-key-0123456789").unwrap());
        Cleaner::new(c, "pos-a", &pos_map(), pseudo, false)
    }

    fn good(o: Outcome) -> PosTransaction {
        match o {
            Outcome::Good(c) => {
                let e: Envelope<PosTransaction> = codec::decode_any(&c.bytes).unwrap();
                e.payload
            }
            other => panic!("{other:?}"),
        }
    }

    fn rejected(o: Outcome) -> DeadLetter {
        match o {
            Outcome::Rejected(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn normalises_units_with_the_configured_factors() {
        let c = cfg();
        let p = good(cleaner(&c).clean(&sale(), 1));
        assert_eq!((p.unit, p.quantity, p.unit_price), (Unit::Pack, 20.0, 25.0));
        assert_eq!(p.total_amount, 500.0);
    }

    #[test]
    fn failures_carry_reason_source_and_original() {
        let c = cfg();
        let mut cl = cleaner(&c);
        let cases = [
            ("quantity", json!(0), "bad_value", "`quantity` is 0"),
            (
                "total_amount",
                json!(900),
                "implausible",
                "above unit_price",
            ),
            ("transaction_time_ms", json!(5), "implausible", "outside"),
            ("quantity", json!(30), "out_of_range", "allows -∞ .. 200"),
            ("unit", json!("bale"), "bad_value", "`unit` is \"bale\""),
        ];
        for (field, value, reason, needle) in cases {
            let mut r = sale();
            r[field] = value;
            if field == "quantity" {
                r["total_amount"] = json!(1);
            }
            let d = rejected(cl.clean(&r, 7));
            assert_eq!(d.reason, reason, "{field}");
            assert!(d.detail.contains(needle), "{field}: {}", d.detail);
            assert_eq!(d.source, "pos-a");
            assert_eq!(serde_json::from_str::<Value>(&d.original).unwrap(), r);
        }
        // The range applies only where `when` matches.
        let mut r = sale();
        r["store_code"] = json!("R2");
        r["quantity"] = json!(30);
        r["total_amount"] = json!(1);
        good(cl.clean(&r, 7));
    }

    #[test]
    fn duplicates_are_suppressed_once_stored_and_corrections_pass() {
        let mut c = cfg();
        c.edge.cleaning.ranges.clear();
        let mut cl = cleaner(&c);
        good(cl.clean(&sale(), 1));
        // Not stored yet (a failed send): the same record comes again and
        // is not a duplicate of itself.
        cl.abort();
        good(cl.clean(&sale(), 2));
        assert!(matches!(cl.clean(&sale(), 2), Outcome::Duplicate));
        cl.commit();
        assert!(matches!(cl.clean(&sale(), 3), Outcome::Duplicate));

        // A master-data record corrected under the same key is new.
        let pseudo = Arc::new(Pseudonymiser::new(b"test-key-0123456789").unwrap());
        let map = RecordMap {
            kind: EventKind::Retailer,
            ..pos_map()
        };
        let mut crm = Cleaner::new(&c, "crm", &map, pseudo, false);
        let r = json!({"retailer_id":"R1","name":"A","region":"X","licence_no":"L","grade":"A"});
        assert!(matches!(crm.clean(&r, 1), Outcome::Good(_)));
        crm.commit();
        assert!(matches!(crm.clean(&r, 1), Outcome::Duplicate));
        let mut r2 = r.clone();
        r2["grade"] = json!("B");
        assert!(matches!(crm.clean(&r2, 1), Outcome::Good(_)));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut r = Recent {
            cap: 2,
            ..Recent::default()
        };
        for id in [1, 2, 3] {
            assert!(!r.seen(id));
            r.commit();
        }
        assert!(!r.seen(1), "the oldest was forgotten");
        assert!(r.seen(3));
    }
}
