//! Event contracts: one versioned [`Envelope`] around a payload per kind.
//!
//! Every record on a marktwin topic is an `Envelope<P>` where `P` is one of
//! the payload types below. The envelope carries what every consumer needs
//! without looking inside the payload: a deterministic event id (the same
//! source record always gets the same id, so a replay can be recognised), the
//! kind, the source that produced it, the schema version, the event time (when
//! it happened) and the ingest time (when the edge saw it), and the partition
//! key.
//!
//! Times are milliseconds since the Unix epoch, UTC, in fields named `*_ms`;
//! calendar dates (an order date, a plan date) are ISO `YYYY-MM-DD` strings.
//! Quantities always travel with their [`Unit`] of sale: the pipeline never
//! guesses whether `10` means sticks or cartons.
//!
//! The JSON Schemas under `schemas/` and the protobuf messages under `proto/`
//! are generated from, or checked against, these types.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// The schema version written by this build into every envelope.
pub const SCHEMA_VERSION: u32 = 1;

/// The envelope every event travels in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<P> {
    /// Deterministic id: hex SHA-256 (first 16 bytes) of the source and the
    /// record's natural key (and, for kinds a source may correct, its
    /// content). The same source record always gets the same id.
    pub event_id: String,
    /// What the payload is.
    pub kind: EventKind,
    /// The connector instance that produced the event, e.g. `pos-cloud`.
    pub source: String,
    /// Version of the payload schema, [`SCHEMA_VERSION`] for this build.
    pub schema_version: u32,
    /// When the fact happened, ms since the Unix epoch (UTC).
    pub event_time_ms: i64,
    /// When the edge read the fact, ms since the Unix epoch (UTC).
    pub ingest_time_ms: i64,
    /// The partition key: the entity the event is about.
    pub key: String,
    /// The fact itself.
    pub payload: P,
}

/// The kinds of event the sources produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A sampled value of a SCADA / PLC tag.
    TelemetryReading,
    /// Counts produced by a line over a period.
    ProductionRecord,
    /// Planned output of a line for a SKU and day.
    ProductionPlan,
    /// Rated capacity of a line.
    LineCapacity,
    /// Stock on hand at a warehouse.
    InventorySnapshot,
    /// An allocation order line from ERP (wholesale to retail).
    AllocationOrder,
    /// A retailer master record from CRM.
    Retailer,
    /// A point-of-sale transaction line from cloud POS.
    PosTransaction,
    /// A market price collected in the field.
    PriceObservation,
}

impl EventKind {
    /// All kinds, in a stable order.
    pub const ALL: [EventKind; 9] = [
        EventKind::TelemetryReading,
        EventKind::ProductionRecord,
        EventKind::ProductionPlan,
        EventKind::LineCapacity,
        EventKind::InventorySnapshot,
        EventKind::AllocationOrder,
        EventKind::Retailer,
        EventKind::PosTransaction,
        EventKind::PriceObservation,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TelemetryReading => "telemetry_reading",
            EventKind::ProductionRecord => "production_record",
            EventKind::ProductionPlan => "production_plan",
            EventKind::LineCapacity => "line_capacity",
            EventKind::InventorySnapshot => "inventory_snapshot",
            EventKind::AllocationOrder => "allocation_order",
            EventKind::Retailer => "retailer",
            EventKind::PosTransaction => "pos_transaction",
            EventKind::PriceObservation => "price_observation",
        }
    }
}

/// Unit of sale. Conversion factors between units are configuration
/// (`[units]`), not code, because they differ between products and industries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A single piece (for cigarettes: one stick).
    Stick,
    /// A pack of sticks.
    Pack,
    /// A carton of packs.
    Carton,
    /// A shipping case of cartons.
    Case,
}

impl Unit {
    /// All units, smallest first.
    pub const ALL: [Unit; 4] = [Unit::Stick, Unit::Pack, Unit::Carton, Unit::Case];

    /// The snake_case name used on the wire and in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Stick => "stick",
            Unit::Pack => "pack",
            Unit::Carton => "carton",
            Unit::Case => "case",
        }
    }
}

/// OPC UA style quality of a sample. Non-good samples are kept and flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The value is usable.
    Good,
    /// The value may be wrong (sensor warming up, last usable value).
    Uncertain,
    /// The value must not be used (comm failure, out of service).
    Bad,
}

/// Operating state of a production line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineState {
    /// Producing.
    Running,
    /// Ready but not producing.
    Idle,
    /// Stopped by a fault.
    Fault,
    /// Switching to another SKU.
    Changeover,
}

impl LineState {
    /// All states, in the order tables list their durations.
    pub const ALL: [LineState; 4] = [
        LineState::Running,
        LineState::Idle,
        LineState::Fault,
        LineState::Changeover,
    ];

    /// The snake_case name used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            LineState::Running => "running",
            LineState::Idle => "idle",
            LineState::Fault => "fault",
            LineState::Changeover => "changeover",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A sampled value of a tag read over OPC UA or Modbus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TelemetryReading {
    /// The tag name as configured (not the server's node id).
    pub tag: String,
    /// The asset (line, machine, meter) the tag belongs to.
    pub asset: String,
    /// Numeric value; booleans are 0 or 1. Absent when the source had none.
    pub value: Option<f64>,
    /// String value for string tags.
    pub text: Option<String>,
    /// Quality of the sample.
    pub quality: Quality,
    /// The source's raw status code (OPC UA StatusCode, Modbus exception).
    pub status_code: Option<u32>,
    /// Timestamp given by the device, ms since epoch.
    pub source_time_ms: Option<i64>,
    /// Timestamp given by the server, ms since epoch.
    pub server_time_ms: Option<i64>,
    /// Engineering unit of the value, e.g. `ppm`, `kWh`.
    pub eng_unit: Option<String>,
}

/// Output counted by a line over a period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductionRecord {
    /// Line identifier.
    pub line_id: String,
    /// SKU being produced.
    pub sku_code: String,
    /// Good units in the period.
    pub good_count: u64,
    /// Rejected units in the period.
    pub reject_count: u64,
    /// Unit the counts are in.
    pub unit: Unit,
    /// State of the line at the end of the period.
    pub state: LineState,
    /// Start of the period, ms since epoch.
    pub period_start_ms: i64,
    /// End of the period, ms since epoch.
    pub period_end_ms: i64,
}

/// Planned output of a line for a SKU on a day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductionPlan {
    /// Plan identifier from MES / ERP.
    pub plan_id: String,
    /// Line identifier.
    pub line_id: String,
    /// SKU planned.
    pub sku_code: String,
    /// Production day.
    pub plan_date: NaiveDate,
    /// Planned quantity.
    pub planned_quantity: f64,
    /// Unit of the planned quantity.
    pub unit: Unit,
}

/// Rated capacity of a line, optionally for one SKU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LineCapacity {
    /// Line identifier.
    pub line_id: String,
    /// SKU the rating applies to; absent for all SKUs.
    pub sku_code: Option<String>,
    /// Rated speed, units per minute.
    pub rated_per_minute: f64,
    /// Unit of the rated speed.
    pub unit: Unit,
    /// First day the rating applies.
    pub valid_from: NaiveDate,
}

/// Stock on hand of a SKU at a warehouse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InventorySnapshot {
    /// Warehouse identifier.
    pub warehouse_id: String,
    /// SKU counted.
    pub sku_code: String,
    /// Quantity on hand.
    pub quantity: f64,
    /// Unit of the quantity.
    pub unit: Unit,
    /// When the count was taken, ms since epoch.
    pub as_of_ms: i64,
}

/// One line of an allocation order from ERP (manufacturer or wholesaler to a
/// retailer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AllocationOrder {
    /// Order identifier.
    pub order_id: String,
    /// Line number within the order, from 1.
    pub line_no: u32,
    /// Shipping party (warehouse or distributor id).
    pub from_id: String,
    /// Receiving party (retailer id).
    pub to_id: String,
    /// SKU ordered.
    pub sku_code: String,
    /// Quantity ordered.
    pub quantity: f64,
    /// Unit of the quantity.
    pub unit: Unit,
    /// Price per unit.
    pub unit_price: f64,
    /// Order date.
    pub order_date: NaiveDate,
}

/// A retailer master record from CRM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Retailer {
    /// Retailer identifier (also the store code used by POS).
    pub retailer_id: String,
    /// Trading name.
    pub name: String,
    /// Region code (province, state, sales territory).
    pub region: String,
    /// Grade assigned by the CRM, if any.
    pub grade: Option<String>,
    /// Licence number.
    pub licence_no: String,
    /// Latitude, WGS84.
    pub latitude: Option<f64>,
    /// Longitude, WGS84.
    pub longitude: Option<f64>,
}

/// One line of a point-of-sale transaction from a retailer's cloud POS.
///
/// `consumer_id` and `consumer_phone` are pseudonymised by the edge (keyed
/// HMAC-SHA256, hex) before the event leaves it: no topic carries them in
/// clear text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PosTransaction {
    /// Store (retailer) code.
    pub store_code: String,
    /// Order number within the store's POS.
    pub order_number: String,
    /// Line number within the order, from 1.
    pub line_no: u32,
    /// Consumer (loyalty) id, pseudonymised at the edge.
    pub consumer_id: Option<String>,
    /// Consumer phone, pseudonymised at the edge.
    pub consumer_phone: Option<String>,
    /// SKU code.
    pub sku_code: String,
    /// SKU name as printed on the receipt.
    pub sku_name: String,
    /// Price per unit.
    pub unit_price: f64,
    /// Quantity sold.
    pub quantity: f64,
    /// Unit of sale.
    pub unit: Unit,
    /// Amount paid for the line.
    pub total_amount: f64,
    /// When the sale happened, ms since epoch.
    pub transaction_time_ms: i64,
}

/// A market price collected in the field next to the guide retail price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriceObservation {
    /// Region code.
    pub region: String,
    /// SKU observed.
    pub sku_code: String,
    /// Price collected in the market.
    pub market_price: f64,
    /// Guide (recommended) retail price.
    pub guide_price: f64,
    /// Unit both prices are for.
    pub unit: Unit,
    /// When the price was observed, ms since epoch.
    pub observed_at_ms: i64,
}

/// A record that could not be accepted, with the reason and the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    /// Short machine-readable reason class, e.g. `decode`, `schema`, `range`.
    pub reason: String,
    /// Human-readable detail naming the field or record.
    pub detail: String,
    /// Stage that rejected it: `edge` or `worker`.
    pub stage: String,
    /// Source connector or input topic.
    pub source: String,
    /// Input partition, when it came from a topic.
    pub partition: Option<i32>,
    /// Input offset, when it came from a topic.
    pub offset: Option<i64>,
    /// The original bytes as UTF-8 (lossy) text.
    pub original: String,
    /// When it was rejected, ms since epoch.
    pub rejected_at_ms: i64,
}

/// One row of a state table as published to a compacted output topic
/// (`twin`, alerts). The record key is `<table>/<key>`, so compaction keeps
/// the latest row of each; a row that left the table is a record with that
/// key and no value (a tombstone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StateChange {
    /// The table the row belongs to, e.g. `twin_line_oee`.
    pub table: String,
    /// The row's primary key values joined with `/` (a `/` or `%` inside a
    /// value is written `%2F` or `%25`).
    pub key: String,
    /// The worker operator that keeps the table, e.g. `twin`.
    pub operator: String,
    /// The input partition whose state holds the row.
    pub partition: i32,
    /// The row, column name to value, as Arrow's JSON writer writes it
    /// (timestamps as RFC 3339 text, dates as `YYYY-MM-DD`; null columns
    /// left out).
    pub row: serde_json::Map<String, serde_json::Value>,
    /// When the worker published it, ms since epoch.
    pub published_at_ms: i64,
}

/// A record of the `stock` topic: an inventory count, an allocation order
/// line or a production record, in its envelope exactly as on its own
/// topic; only the record key differs (the warehouse's stock region).
/// Declared for the topic's schema; readers decode by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StockRecord {
    /// A count of stock on hand.
    Count(Envelope<InventorySnapshot>),
    /// Stock going out to a retailer.
    Order(Envelope<AllocationOrder>),
    /// Stock coming in from a line.
    Production(Envelope<ProductionRecord>),
}

/// What every payload type tells the envelope about itself.
pub trait Payload: Serialize + DeserializeOwned + JsonSchema + Clone + Send + 'static {
    /// The kind written into the envelope.
    const KIND: EventKind;
    /// The entity the event is about; used as the partition key.
    fn key(&self) -> String;
    /// The source system's identity for this record; with the source name it
    /// determines the event id.
    fn natural_key(&self) -> String;
    /// When the fact happened, ms since epoch.
    fn event_time_ms(&self) -> i64;
    /// Whether the source may send a corrected version of a record under
    /// the same natural key (master data, orders, plans, counts). The event
    /// id of such a record also covers its content, so a correction is a
    /// new event while a resent identical record is recognised as a replay.
    const MUTABLE: bool = true;
}

fn date_ms(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

impl Payload for TelemetryReading {
    const MUTABLE: bool = false;
    const KIND: EventKind = EventKind::TelemetryReading;
    fn key(&self) -> String {
        self.asset.clone()
    }
    /// Asset, tag, time — and value and status: a device clock may stamp
    /// two different values with the same millisecond, and those are two
    /// readings; the same value sent again (after a reconnect) is one.
    fn natural_key(&self) -> String {
        let value = match (&self.value, &self.text) {
            (Some(v), _) => v.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => String::new(),
        };
        format!(
            "{}/{}/{}/{value}/{}",
            self.asset,
            self.tag,
            self.event_time_ms(),
            self.status_code.unwrap_or_default()
        )
    }
    fn event_time_ms(&self) -> i64 {
        self.source_time_ms
            .or(self.server_time_ms)
            .unwrap_or_default()
    }
}

impl Payload for ProductionRecord {
    const KIND: EventKind = EventKind::ProductionRecord;
    fn key(&self) -> String {
        self.line_id.clone()
    }
    fn natural_key(&self) -> String {
        format!("{}/{}", self.line_id, self.period_start_ms)
    }
    fn event_time_ms(&self) -> i64 {
        self.period_end_ms
    }
}

impl Payload for ProductionPlan {
    const KIND: EventKind = EventKind::ProductionPlan;
    fn key(&self) -> String {
        self.line_id.clone()
    }
    fn natural_key(&self) -> String {
        self.plan_id.clone()
    }
    fn event_time_ms(&self) -> i64 {
        date_ms(self.plan_date)
    }
}

impl Payload for LineCapacity {
    const KIND: EventKind = EventKind::LineCapacity;
    fn key(&self) -> String {
        self.line_id.clone()
    }
    fn natural_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.line_id,
            self.sku_code.as_deref().unwrap_or("*"),
            self.valid_from
        )
    }
    fn event_time_ms(&self) -> i64 {
        date_ms(self.valid_from)
    }
}

impl Payload for InventorySnapshot {
    const KIND: EventKind = EventKind::InventorySnapshot;
    fn key(&self) -> String {
        self.warehouse_id.clone()
    }
    fn natural_key(&self) -> String {
        format!("{}/{}/{}", self.warehouse_id, self.sku_code, self.as_of_ms)
    }
    fn event_time_ms(&self) -> i64 {
        self.as_of_ms
    }
}

impl Payload for AllocationOrder {
    const KIND: EventKind = EventKind::AllocationOrder;
    fn key(&self) -> String {
        self.to_id.clone()
    }
    fn natural_key(&self) -> String {
        format!("{}/{}", self.order_id, self.line_no)
    }
    fn event_time_ms(&self) -> i64 {
        date_ms(self.order_date)
    }
}

impl Payload for Retailer {
    const KIND: EventKind = EventKind::Retailer;
    fn key(&self) -> String {
        self.retailer_id.clone()
    }
    fn natural_key(&self) -> String {
        self.retailer_id.clone()
    }
    fn event_time_ms(&self) -> i64 {
        0
    }
}

impl Payload for PosTransaction {
    const MUTABLE: bool = false;
    const KIND: EventKind = EventKind::PosTransaction;
    fn key(&self) -> String {
        self.store_code.clone()
    }
    fn natural_key(&self) -> String {
        format!("{}/{}/{}", self.store_code, self.order_number, self.line_no)
    }
    fn event_time_ms(&self) -> i64 {
        self.transaction_time_ms
    }
}

impl Payload for PriceObservation {
    const MUTABLE: bool = false;
    const KIND: EventKind = EventKind::PriceObservation;
    fn key(&self) -> String {
        self.region.clone()
    }
    fn natural_key(&self) -> String {
        format!("{}/{}/{}", self.region, self.sku_code, self.observed_at_ms)
    }
    fn event_time_ms(&self) -> i64 {
        self.observed_at_ms
    }
}

/// The deterministic event id of a record: hex of the first 16 bytes of
/// SHA-256 over `source`, a NUL byte and the natural key.
pub fn event_id(source: &str, natural_key: &str) -> String {
    event_id_of(source, natural_key, None)
}

/// [`event_id`], followed by a NUL byte and `content` when given (the
/// payload's JSON for [`Payload::MUTABLE`] kinds).
pub fn event_id_of(source: &str, natural_key: &str, content: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0u8]);
    h.update(natural_key.as_bytes());
    if let Some(c) = content {
        h.update([0u8]);
        h.update(c);
    }
    hex::encode(&h.finalize()[..16])
}

impl<P: Payload> Envelope<P> {
    /// Wraps a payload read by `source` at `ingest_time_ms`.
    pub fn wrap(source: &str, ingest_time_ms: i64, payload: P) -> Self {
        let content = P::MUTABLE.then(|| serde_json::to_vec(&payload).unwrap_or_default());
        Envelope {
            event_id: event_id_of(source, &payload.natural_key(), content.as_deref()),
            kind: P::KIND,
            source: source.to_owned(),
            schema_version: SCHEMA_VERSION,
            event_time_ms: payload.event_time_ms(),
            ingest_time_ms,
            key: payload.key(),
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> PosTransaction {
        PosTransaction {
            store_code: "S0001".into(),
            order_number: "O-1".into(),
            line_no: 1,
            consumer_id: None,
            consumer_phone: None,
            sku_code: "SKU01".into(),
            sku_name: "Test".into(),
            unit_price: 20.0,
            quantity: 2.0,
            unit: Unit::Pack,
            total_amount: 40.0,
            transaction_time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn event_id_is_deterministic_and_source_scoped() {
        let a = Envelope::wrap("pos-a", 1, pos());
        let b = Envelope::wrap("pos-a", 999, pos());
        let c = Envelope::wrap("pos-b", 1, pos());
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, c.event_id);
        assert_eq!(a.event_id.len(), 32);
        assert_eq!(a.key, "S0001");
        assert_eq!(a.kind, EventKind::PosTransaction);
        assert_eq!(a.event_time_ms, 1_700_000_000_000);
    }

    #[test]
    fn corrections_of_mutable_kinds_get_new_ids_facts_do_not() {
        let r = Retailer {
            retailer_id: "R1".into(),
            name: "A".into(),
            region: "X".into(),
            grade: Some("A".into()),
            licence_no: "L".into(),
            latitude: None,
            longitude: None,
        };
        let regraded = Retailer {
            grade: Some("B".into()),
            ..r.clone()
        };
        assert_eq!(
            Envelope::wrap("crm", 1, r.clone()).event_id,
            Envelope::wrap("crm", 2, r.clone()).event_id
        );
        assert_ne!(
            Envelope::wrap("crm", 1, r).event_id,
            Envelope::wrap("crm", 1, regraded).event_id
        );
        // A POS line is a fact: its id is its natural key alone.
        let mut p = pos();
        let a = Envelope::wrap("pos-a", 1, p.clone()).event_id;
        p.sku_name = "renamed".into();
        assert_eq!(a, Envelope::wrap("pos-a", 1, p).event_id);
        assert_eq!(a, event_id("pos-a", "S0001/O-1/1"));
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let e = Envelope::wrap("pos-a", 5, pos());
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""kind":"pos_transaction""#), "{text}");
        assert!(text.contains(r#""unit":"pack""#), "{text}");
        let back: Envelope<PosTransaction> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn kind_names_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::from(k.as_str())
            );
        }
        for u in Unit::ALL {
            assert_eq!(
                serde_json::to_value(u).unwrap(),
                serde_json::Value::from(u.as_str())
            );
        }
    }
}
