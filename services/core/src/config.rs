//! Configuration: one value, built in layers, validated once.
//!
//! The layers, later ones winning:
//!
//! 1. built-in defaults ([`Config::default`]): everything on one machine, the
//!    embedded broker, the built-in simulator, `./data`;
//! 2. the TOML file, if one is given (`marktwin --config marktwin.toml`);
//! 3. environment variables `MARKTWIN__SECTION__KEY`, e.g.
//!    `MARKTWIN__KAFKA__BROKERS=kafka-1:9092` or
//!    `MARKTWIN__TOPICS__POS__PARTITIONS=12`;
//! 4. [`Config::validate`], which names the offending field and the values it
//!    allows.
//!
//! Config is passed as a value to whatever needs it; there is no global.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::events::{EventKind, Unit};
use crate::topics::{Encoding, TopicSpec, topics};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "MARKTWIN__";

/// The whole configuration of a marktwin process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where local state lives: the embedded broker's database, edge cursors,
    /// generated secrets, checkpoints.
    pub data_dir: PathBuf,
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// Per-topic overrides, keyed by topic id (`pos`, `dead_letter`, ...).
    pub topics: BTreeMap<String, TopicOverride>,
    /// Conversion factors between units of sale.
    pub units: UnitsConfig,
    /// Pseudonymisation of consumer identifiers at the edge.
    pub pseudonymisation: PseudonymConfig,
    /// The built-in source simulators.
    pub simulator: SimulatorConfig,
    /// Edge connectors.
    pub edge: EdgeConfig,
    /// Stream worker.
    pub worker: WorkerConfig,
    /// The inventory twin: where stock lives and the stock-cover bounds.
    pub inventory: InventoryConfig,
    /// Retailer profiles and grading.
    pub profiles: ProfilesConfig,
    /// Board and API.
    pub board: BoardConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            kafka: KafkaConfig::default(),
            topics: BTreeMap::new(),
            units: UnitsConfig::default(),
            pseudonymisation: PseudonymConfig::default(),
            simulator: SimulatorConfig::default(),
            edge: EdgeConfig::default(),
            worker: WorkerConfig::default(),
            inventory: InventoryConfig::default(),
            profiles: ProfilesConfig::default(),
            board: BoardConfig::default(),
        }
    }
}

/// Broker connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Empty: `marktwin up` starts the
    /// embedded Tansu broker and uses it.
    pub brokers: String,
    /// Prefix of every topic name, so several deployments can share a cluster.
    pub topic_prefix: String,
    /// The Tansu executable for the embedded broker.
    pub tansu_binary: String,
    /// Loopback port of the embedded broker; 0 picks a free one.
    pub embedded_port: u16,
    /// Seconds to wait for the embedded broker to answer.
    pub embedded_start_timeout_secs: u64,
    /// Where the embedded broker keeps records: `sqlite` (durable, under
    /// the data directory) or `memory` (lost when it stops; for measuring
    /// the pipeline without the broker's disk in the way).
    pub embedded_storage: BrokerStorage,
    /// Replication factor of topics marktwin creates (1 for a single broker).
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`).
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topic_prefix: "marktwin.".into(),
            tansu_binary: "tansu".into(),
            embedded_port: 0,
            embedded_start_timeout_secs: 30,
            embedded_storage: BrokerStorage::Sqlite,
            replication_factor: 1,
            client: BTreeMap::new(),
        }
    }
}

/// Storage of the embedded broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerStorage {
    /// SQLite file under the data directory: survives a restart.
    Sqlite,
    /// In memory: lost when the broker stops.
    Memory,
}

/// Overrides of one topic's declaration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicOverride {
    /// Partition count (only used when the topic is created).
    pub partitions: Option<i32>,
    /// Retention in ms; -1 keeps forever.
    pub retention_ms: Option<i64>,
    /// `json` or `protobuf`.
    pub encoding: Option<Encoding>,
}

/// How many base units one of each unit of sale holds.
///
/// The defaults are the cigarette trade's (20 sticks a pack, 10 packs a
/// carton, 250 cartons a case); other industries set their own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnitsConfig {
    /// Base units in one `stick`.
    pub stick: f64,
    /// Base units in one `pack`.
    pub pack: f64,
    /// Base units in one `carton`.
    pub carton: f64,
    /// Base units in one `case`.
    pub case: f64,
    /// The unit quantities are reported in by the worker's tables.
    pub report_in: Unit,
}

impl Default for UnitsConfig {
    fn default() -> Self {
        UnitsConfig {
            stick: 1.0,
            pack: 20.0,
            carton: 200.0,
            case: 50_000.0,
            report_in: Unit::Pack,
        }
    }
}

impl UnitsConfig {
    /// Base units in one `unit`.
    pub fn factor(&self, unit: Unit) -> f64 {
        match unit {
            Unit::Stick => self.stick,
            Unit::Pack => self.pack,
            Unit::Carton => self.carton,
            Unit::Case => self.case,
        }
    }

    /// Converts `quantity` of `unit` into the reporting unit.
    pub fn to_report(&self, quantity: f64, unit: Unit) -> f64 {
        quantity * self.factor(unit) / self.factor(self.report_in)
    }
}

/// Where the pseudonymisation key comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PseudonymConfig {
    /// File holding the HMAC key (any bytes, at least 16). When neither this
    /// nor the environment variable is set, a random key is created at
    /// `<data_dir>/secrets/pseudonym.key` on first start.
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key (takes precedence).
    pub key_env: Option<String>,
}

/// The built-in simulators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Run the simulators inside `marktwin up`.
    pub enabled: bool,
    /// Address the simulated source APIs listen on.
    pub listen: String,
    /// Address the simulated plant (line PLCs, energy meter) serves
    /// Modbus TCP on; when no `edge.modbus.devices` are configured,
    /// `marktwin up` polls it.
    pub modbus_listen: String,
    /// Address the simulated plant serves OPC UA on (`opc.tcp://` is
    /// implied); when no `edge.opcua.servers` are configured, `marktwin up`
    /// subscribes to it.
    pub opcua_listen: String,
    /// Production lines of the simulated plant.
    pub lines: u16,
    /// Seed: the same seed and start give the same records.
    pub seed: u64,
    /// Number of stores (retailers).
    pub stores: u32,
    /// Number of SKUs.
    pub skus: u32,
    /// Number of sales regions.
    pub regions: u32,
    /// POS transaction lines per second of simulated time.
    pub pos_lines_per_sec: f64,
    /// Business systems' API credential the simulator demands
    /// (`Authorization: Bearer <token>`); absent: none.
    pub api_token: Option<String>,
    /// Answer every n-th API request with HTTP 503 (0: never), to show
    /// retries at work.
    pub api_fail_every: u64,
    /// Answer HTTP 429 with `Retry-After` beyond this many API requests per
    /// second (0: no limit).
    pub api_max_requests_per_sec: f64,
    /// When `edge.http` is empty, poll the simulator's POS, ERP, CRM, SCM
    /// and WMS APIs (and fuse SCM and WMS stock when `edge.fusion` is
    /// empty).
    pub api_sources: bool,
    /// Warehouses of the simulated supply chain.
    pub warehouses: u32,
    /// Hours of history available at the first start.
    pub history_hours: u32,
    /// Fixed start of simulated time, ms since epoch. When absent, the first
    /// start's time minus `history_hours` is stored in the data directory and
    /// reused, so a restarted simulator serves the same records.
    pub start_ms: Option<i64>,
    /// End of simulated time, ms since epoch: no records after it. Absent:
    /// the simulators run for ever. Tests use it for a finite data set.
    pub end_ms: Option<i64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            enabled: true,
            listen: "127.0.0.1:8091".into(),
            modbus_listen: "127.0.0.1:1502".into(),
            opcua_listen: "127.0.0.1:4841".into(),
            lines: 3,
            seed: 42,
            stores: 500,
            skus: 40,
            regions: 12,
            pos_lines_per_sec: 50.0,
            api_token: None,
            api_fail_every: 0,
            api_max_requests_per_sec: 0.0,
            api_sources: true,
            warehouses: 4,
            history_hours: 48,
            start_ms: None,
            end_ms: None,
        }
    }
}

/// Edge connectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Address of the edge's health and metrics listener when run on its own
    /// (`marktwin edge`).
    pub listen: String,
    /// Business sources over HTTP JSON (ERP, CRM, SCM, cloud POS). Empty
    /// while the simulator runs: the simulator's APIs are polled.
    pub http: Vec<crate::sources::HttpSource>,
    /// Folders ERP exports are dropped into.
    pub drop_folders: Vec<crate::sources::DropFolder>,
    /// Cleaning applied to every business record before it reaches a topic.
    pub cleaning: crate::sources::CleaningConfig,
    /// Readings of one object from several sources, combined.
    pub fusion: Vec<crate::sources::FusionConfig>,
    /// Modbus TCP devices.
    pub modbus: crate::modbus::ModbusConfig,
    /// OPC UA servers.
    pub opcua: crate::opcua::OpcuaConfig,
    /// The disk spool that holds records while the broker is away.
    pub spool: SpoolConfig,
}

/// The edge's disk spool (`<data_dir>/spool/edge`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Largest size of records waiting for the broker; beyond it the edge
    /// stops reading its sources until the broker takes records again.
    pub max_bytes: u64,
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// `always` (fsync every append), `interval` (at most every
    /// `fsync_interval_ms`), or `never` (the OS decides).
    pub fsync: String,
    /// For `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// How long a direct send may wait for the broker before its records
    /// go to the spool instead; keep it well below librdkafka's
    /// `message.timeout.ms` (300 s).
    pub direct_timeout_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: "interval".into(),
            fsync_interval_ms: 200,
            direct_timeout_ms: 10_000,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:8093".into(),
            http: Vec::new(),
            drop_folders: Vec::new(),
            cleaning: crate::sources::CleaningConfig::default(),
            fusion: Vec::new(),
            modbus: crate::modbus::ModbusConfig::default(),
            opcua: crate::opcua::OpcuaConfig::default(),
            spool: SpoolConfig::default(),
        }
    }
}

/// Stream worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// How often state is published to the query tables, ms.
    pub publish_interval_ms: u64,
    /// Most records decoded and applied in one batch.
    pub max_batch: usize,
    /// How worker processes share the input partitions: `static` (worker
    /// `instance` of `instances` takes the partitions `p` with
    /// `p % instances == instance`) or `group` (the Kafka group protocol
    /// moves partitions to the live members; needs a broker that evicts a
    /// silent member, which Tansu does not).
    pub assignment: Assignment,
    /// This worker's index, from 0 (static partition assignment).
    pub instance: u32,
    /// Number of worker instances sharing the partitions (static
    /// assignment).
    pub instances: u32,
    /// Group assignment: a member silent for this long, ms, loses its
    /// partitions to the others.
    pub session_timeout_ms: u64,
    /// Address of the worker's health, metrics and query listener when run
    /// on its own (`marktwin worker`).
    pub listen: String,
    /// Offset of the business day from UTC, minutes (480 for China): a sale
    /// at 23:30 local time counts on that local day.
    pub utc_offset_minutes: i32,
    /// Event ids remembered per worker to drop records the edge resent after
    /// a crash; keep it above a few edge pages.
    pub dedup_window: usize,
    /// Checkpoints of the worker's state and the input offsets it reflects.
    pub checkpoint: CheckpointConfig,
    /// The production twin: windows, watermarks, lateness.
    pub twin: TwinConfig,
}

/// How worker processes share the input partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    /// Worker `i` of `n` takes the partitions `p` with `p % n == i`.
    #[default]
    Static,
    /// The Kafka group protocol (cooperative sticky) assigns partitions.
    Group,
}

/// Where and how often the worker checkpoints its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where checkpoints go: empty for `<data_dir>/checkpoints`, a local
    /// directory, `file:///abs/dir`, or `memory:` (tests; lost on exit).
    pub url: String,
    /// Time between checkpoints, ms.
    pub interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            url: String::new(),
            interval_ms: 10_000,
        }
    }
}

/// Event-time rules of the production twin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinConfig {
    /// Local start times of the shifts, `HH:MM`, e.g. `["06:00", "14:00",
    /// "22:00"]`; a shift lasts until the next one starts.
    pub shifts: Vec<String>,
    /// How far behind the newest event time of a source its watermark
    /// trails, ms: the disorder expected within one input partition.
    pub out_of_orderness_ms: u64,
    /// How far behind the watermark an event may still be and update its
    /// windows, ms. Older events go to the late topic.
    pub allowed_lateness_ms: u64,
    /// A source with no record for this long, ms, stops holding back the
    /// worker's overall watermark (SCADA tags go quiet).
    pub idle_timeout_ms: u64,
    /// How long windows of each size are kept behind the newest event, ms.
    pub retention: WindowRetention,
}

impl TwinConfig {
    /// The shift starts as minutes after local midnight, sorted; an error
    /// names the entry that is not `HH:MM` or repeats another.
    pub fn shift_starts(&self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.shifts.len());
        for (i, s) in self.shifts.iter().enumerate() {
            let field = format!("worker.twin.shifts[{i}]");
            let parsed = s.split_once(':').and_then(|(h, m)| {
                let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
                (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
            });
            let Some(min) = parsed else {
                return Err(Error::invalid(
                    &field,
                    format!("`{s}` is not a time of day HH:MM such as 06:00"),
                ));
            };
            if out.contains(&min) {
                return Err(Error::invalid(&field, format!("`{s}` is listed twice")));
            }
            out.push(min);
        }
        if out.is_empty() {
            return Err(Error::invalid(
                "worker.twin.shifts",
                "must list at least one shift start, e.g. [\"00:00\"] for one shift a day",
            ));
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl Default for TwinConfig {
    fn default() -> Self {
        TwinConfig {
            shifts: vec!["06:00".into(), "14:00".into(), "22:00".into()],
            out_of_orderness_ms: 60_000,
            allowed_lateness_ms: 3_600_000,
            idle_timeout_ms: 60_000,
            retention: WindowRetention::default(),
        }
    }
}

/// Retention of twin windows per size, ms behind the newest event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowRetention {
    /// Minute windows (default 3 hours).
    pub minute_ms: u64,
    /// Hour windows (default 2 days).
    pub hour_ms: u64,
    /// Shift windows (default 14 days).
    pub shift_ms: u64,
    /// Day windows and plans (default 62 days).
    pub day_ms: u64,
}

impl Default for WindowRetention {
    fn default() -> Self {
        const H: u64 = 3_600_000;
        WindowRetention {
            minute_ms: 3 * H,
            hour_ms: 48 * H,
            shift_ms: 14 * 24 * H,
            day_ms: 62 * 24 * H,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            publish_interval_ms: 1000,
            max_batch: 10_000,
            assignment: Assignment::Static,
            instance: 0,
            instances: 1,
            session_timeout_ms: 45_000,
            listen: "127.0.0.1:8092".into(),
            utc_offset_minutes: 0,
            dedup_window: 200_000,
            checkpoint: CheckpointConfig::default(),
            twin: TwinConfig::default(),
        }
    }
}

/// Retailer profiles per order cycle, and the grading of retailers within
/// their region (see `docs/profiles.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// Length of an order cycle in days (7: weekly cycles, starting on
    /// Mondays).
    pub cycle_days: u32,
    /// Cycles a profile looks back over, the current one included.
    pub window_cycles: u32,
    /// Complete cycles the trend is fitted over.
    pub trend_cycles: u32,
    /// Ascending unit-price thresholds (at most 7) that split SKUs into
    /// price bands; empty puts everything in one band.
    pub price_bands: Vec<f64>,
    /// Brand of each SKU code; a SKU not listed has brand `unknown`.
    pub brands: BTreeMap<String, String>,
    /// The brands this company owns; every other known brand is a
    /// competitor's.
    pub own_brands: Vec<String>,
    /// Which lines grading ranks by: `orders` (allocation orders, what the
    /// manufacturer ships) or `pos` (what the retailer sells).
    pub grade_source: String,
    /// Number of grades per region (the top grade is this number).
    pub grades: u32,
    /// Cycles of sales, the current one included, that grading ranks by.
    pub grade_cycles: u32,
    /// Churn risk is the probability of no order in this many cycles.
    pub churn_horizon_cycles: u32,
    /// A trend at least this large (growth per cycle, relative to the
    /// mean) classes a retailer as potential.
    pub potential_trend: f64,
    /// Fewer SKUs than this share of the region's median classes a
    /// retailer as potential (under-served).
    pub underserved_ratio: f64,
    /// Rules that mark key customers; any matching rule does, and its
    /// name is stored as the reason.
    pub key_rules: Vec<KeyRule>,
    /// How often the consumer profiles are published (and purchase intent
    /// refitted) once caught up, ms: every consumer's row is rendered and
    /// compared, which for millions of consumers is too much for every
    /// `worker.publish_interval_ms`.
    pub consumer_publish_interval_ms: u64,
}

/// Profile fields a [`Condition`] can test.
pub const PROFILE_FIELDS: [&str; 12] = [
    "grade",
    "qty_per_cycle",
    "amount_per_order",
    "orders_per_cycle",
    "order_gap_days",
    "order_gap_cv",
    "sku_count",
    "sku_hhi",
    "top_brand_share",
    "competitor_share",
    "trend",
    "rolling_sales",
];

/// A named rule marking key customers: all its conditions hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRule {
    /// Shown as the reason next to the mark.
    pub name: String,
    /// Conditions that must all hold.
    pub all: Vec<Condition>,
}

/// A bound on one profile field (one of [`PROFILE_FIELDS`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The field.
    pub field: String,
    /// Inclusive lower bound.
    #[serde(default)]
    pub min: Option<f64>,
    /// Inclusive upper bound.
    #[serde(default)]
    pub max: Option<f64>,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig {
            cycle_days: 7,
            window_cycles: 13,
            trend_cycles: 8,
            price_bands: Vec::new(),
            brands: BTreeMap::new(),
            own_brands: Vec::new(),
            grade_source: "orders".into(),
            grades: 30,
            grade_cycles: 4,
            churn_horizon_cycles: 4,
            potential_trend: 0.02,
            underserved_ratio: 0.75,
            consumer_publish_interval_ms: 60_000,
            key_rules: vec![KeyRule {
                name: "top grades".into(),
                all: vec![Condition {
                    field: "grade".into(),
                    min: Some(28.0),
                    max: None,
                }],
            }],
        }
    }
}

impl ProfilesConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: &str| Err(Error::invalid(field, message));
        for (field, v) in [
            ("profiles.cycle_days", self.cycle_days),
            ("profiles.window_cycles", self.window_cycles),
            ("profiles.trend_cycles", self.trend_cycles),
            ("profiles.grades", self.grades),
            ("profiles.grade_cycles", self.grade_cycles),
            ("profiles.churn_horizon_cycles", self.churn_horizon_cycles),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1");
            }
        }
        if self.trend_cycles < 2 || self.trend_cycles >= self.window_cycles {
            return bad(
                "profiles.trend_cycles",
                "must be at least 2 and less than profiles.window_cycles",
            );
        }
        if self.grade_cycles > self.window_cycles {
            return bad(
                "profiles.grade_cycles",
                "must be at most profiles.window_cycles",
            );
        }
        if !self.price_bands.windows(2).all(|w| w[0] < w[1])
            || !self.price_bands.iter().all(|p| p.is_finite())
        {
            return bad(
                "profiles.price_bands",
                "must be finite and strictly ascending",
            );
        }
        if !["orders", "pos"].contains(&self.grade_source.as_str()) {
            return bad("profiles.grade_source", "must be `orders` or `pos`");
        }
        if !(self.potential_trend.is_finite() && self.potential_trend > 0.0) {
            return bad("profiles.potential_trend", "must be above 0");
        }
        if self.consumer_publish_interval_ms == 0 {
            return bad("profiles.consumer_publish_interval_ms", "must be above 0");
        }
        if !(0.0..=1.0).contains(&self.underserved_ratio) {
            return bad("profiles.underserved_ratio", "must be between 0 and 1");
        }
        for (i, rule) in self.key_rules.iter().enumerate() {
            if rule.all.is_empty() {
                return bad(&format!("profiles.key_rules[{i}].all"), "needs a condition");
            }
            for (j, c) in rule.all.iter().enumerate() {
                let at = format!("profiles.key_rules[{i}].all[{j}]");
                if !PROFILE_FIELDS.contains(&c.field.as_str()) {
                    return Err(Error::invalid(
                        format!("{at}.field"),
                        format!("`{}` is not one of {}", c.field, PROFILE_FIELDS.join(", ")),
                    ));
                }
                if c.min.is_none() && c.max.is_none() {
                    return bad(&at, "needs `min`, `max` or both");
                }
            }
        }
        Ok(())
    }
}

/// The inventory twin: stock per warehouse and SKU, stock cover per stock
/// region and SKU. Read by the edge (which writes every stock-moving record
/// a second time, keyed by stock region, to the `stock` topic) and by the
/// worker. Changing `regions` or `line_warehouses` moves records to other
/// partitions: rebuild the inventory twin (remove its checkpoints) after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Stock region of each warehouse, e.g. `{ WH01 = "north", WH02 =
    /// "north" }`. A warehouse not listed is a region of its own.
    pub regions: BTreeMap<String, String>,
    /// Warehouse that each line's good output goes into, e.g. `{ "line-1"
    /// = "WH01" }`. Production of a line not listed moves no stock.
    pub line_warehouses: BTreeMap<String, String>,
    /// Sources whose inventory counts are taken (e.g. `["fusion:stock"]`);
    /// empty takes every source's, the newest count winning.
    pub count_sources: Vec<String>,
    /// Complete days of allocation orders that make the trailing daily
    /// demand.
    pub demand_days: u32,
    /// Stock cover below this many days raises a `cover_low` alert.
    pub cover_min_days: f64,
    /// Stock cover above this many days raises a `cover_high` alert.
    pub cover_max_days: f64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            regions: BTreeMap::new(),
            line_warehouses: BTreeMap::new(),
            count_sources: Vec::new(),
            demand_days: 7,
            cover_min_days: 3.0,
            cover_max_days: 30.0,
        }
    }
}

impl InventoryConfig {
    /// The stock region of `warehouse`.
    pub fn region_of<'a>(&'a self, warehouse: &'a str) -> &'a str {
        self.regions
            .get(warehouse)
            .map_or(warehouse, String::as_str)
    }

    /// The warehouse whose stock a record moves or counts, if any: an
    /// inventory count's warehouse, an allocation order's shipping party,
    /// the warehouse a producing line delivers to. `payload` is the
    /// record's payload as JSON.
    pub fn warehouse_of<'a>(&'a self, kind: EventKind, payload: &'a Value) -> Option<&'a str> {
        let field = |f: &str| payload.get(f).and_then(Value::as_str);
        match kind {
            EventKind::InventorySnapshot => field("warehouse_id"),
            EventKind::AllocationOrder => field("from_id"),
            EventKind::ProductionRecord => field("line_id")
                .and_then(|l| self.line_warehouses.get(l))
                .map(String::as_str),
            _ => None,
        }
    }

    /// The `stock` topic's key for a record: its warehouse's stock region;
    /// `None` when the record moves no stock.
    pub fn stock_key(&self, kind: EventKind, payload: &Value) -> Option<String> {
        self.warehouse_of(kind, payload)
            .map(|w| self.region_of(w).to_owned())
    }
}

/// Board and API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardConfig {
    /// Address the board and API listen on.
    pub listen: String,
    /// Longest an SQL query may run, ms.
    pub query_timeout_ms: u64,
    /// Most rows an SQL query may return.
    pub max_rows: usize,
}

impl Default for BoardConfig {
    fn default() -> Self {
        BoardConfig {
            listen: "127.0.0.1:8080".into(),
            query_timeout_ms: 10_000,
            max_rows: 100_000,
        }
    }
}

impl Config {
    /// Builds the configuration from defaults, an optional TOML file and the
    /// `MARKTWIN__` environment, then validates it.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "config file not found",
                    ),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        let cfg: Config = fig
            .merge(env)
            .extract()
            .map_err(|e| Error::ConfigLoad(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types cannot: names the field and what it allows.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &str, message: impl Into<String>) -> Error {
            Error::invalid(field, message)
        }
        fn addr(field: &str, v: &str) -> Result<()> {
            v.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
                bad(
                    field,
                    format!(
                        "`{v}` is not a socket address; expected host:port such as 127.0.0.1:8080"
                    ),
                )
            })
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty"));
        }
        self.edge.modbus.validate()?;
        self.edge.opcua.validate()?;
        self.profiles.validate()?;
        let sp = &self.edge.spool;
        if !["always", "interval", "never"].contains(&sp.fsync.as_str()) {
            return Err(bad(
                "edge.spool.fsync",
                format!("`{}` is not one of always, interval, never", sp.fsync),
            ));
        }
        if sp.segment_bytes == 0 || sp.max_bytes < sp.segment_bytes {
            return Err(bad(
                "edge.spool.max_bytes",
                "must be at least edge.spool.segment_bytes, which must be > 0",
            ));
        }
        if sp.direct_timeout_ms == 0 {
            return Err(bad("edge.spool.direct_timeout_ms", "must be > 0"));
        }
        for b in self
            .kafka
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(bad(
                    "kafka.brokers",
                    format!(
                        "`{b}` is not host:port; expected a comma-separated list such as kafka-1:9092,kafka-2:9092, or empty for the embedded broker"
                    ),
                ));
            }
        }
        if self
            .kafka
            .topic_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(bad(
                "kafka.topic_prefix",
                "allowed characters are ASCII letters, digits, `.`, `_` and `-`",
            ));
        }
        if !(1..=32).contains(&self.kafka.replication_factor) {
            return Err(bad("kafka.replication_factor", "must be between 1 and 32"));
        }
        if self.kafka.embedded_start_timeout_secs == 0 {
            return Err(bad(
                "kafka.embedded_start_timeout_secs",
                "must be at least 1",
            ));
        }
        let known: Vec<&str> = topics().iter().map(|t| t.id).collect();
        for (id, o) in &self.topics {
            if !known.contains(&id.as_str()) {
                return Err(bad(
                    &format!("topics.{id}"),
                    format!("unknown topic id; allowed: {}", known.join(", ")),
                ));
            }
            if let Some(p) = o.partitions
                && !(1..=10_000).contains(&p)
            {
                return Err(bad(
                    &format!("topics.{id}.partitions"),
                    "must be between 1 and 10000",
                ));
            }
            if let Some(r) = o.retention_ms
                && r < -1
            {
                return Err(bad(
                    &format!("topics.{id}.retention_ms"),
                    "must be -1 (forever) or a positive number of ms",
                ));
            }
        }
        for u in Unit::ALL {
            let f = self.units.factor(u);
            if !(f.is_finite() && f > 0.0) {
                return Err(bad(
                    &format!("units.{}", u.as_str()),
                    "must be a positive number of base units",
                ));
            }
        }
        if let Some(k) = &self.pseudonymisation.key_env
            && k.is_empty()
        {
            return Err(bad(
                "pseudonymisation.key_env",
                "must name an environment variable",
            ));
        }
        let s = &self.simulator;
        if s.enabled {
            addr("simulator.listen", &s.listen)?;
            addr("simulator.modbus_listen", &s.modbus_listen)?;
            addr("simulator.opcua_listen", &s.opcua_listen)?;
            if !(1..=99).contains(&s.lines) {
                return Err(bad("simulator.lines", "must be 1..=99"));
            }
        }
        for (field, v) in [
            ("simulator.stores", s.stores),
            ("simulator.skus", s.skus),
            ("simulator.regions", s.regions),
            ("simulator.warehouses", s.warehouses),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if !(s.api_max_requests_per_sec.is_finite() && s.api_max_requests_per_sec >= 0.0) {
            return Err(bad(
                "simulator.api_max_requests_per_sec",
                "must be 0 (no limit) or more",
            ));
        }
        if !(s.pos_lines_per_sec.is_finite()
            && s.pos_lines_per_sec > 0.0
            && s.pos_lines_per_sec <= 1_000_000.0)
        {
            return Err(bad(
                "simulator.pos_lines_per_sec",
                "must be above 0 and at most 1000000",
            ));
        }
        addr("edge.listen", &self.edge.listen)?;
        crate::sources::validate(
            &self.edge.http,
            &self.edge.drop_folders,
            &self.edge.cleaning,
            &self.edge.fusion,
        )?;
        let w = &self.worker;
        if w.instances == 0 {
            return Err(bad("worker.instances", "must be at least 1"));
        }
        if w.instance >= w.instances {
            return Err(bad(
                "worker.instance",
                format!("must be below worker.instances ({})", w.instances),
            ));
        }
        if w.assignment == Assignment::Group && !(1_000..=3_600_000).contains(&w.session_timeout_ms)
        {
            return Err(bad(
                "worker.session_timeout_ms",
                "must be between 1000 and 3600000 with worker.assignment = \"group\"",
            ));
        }
        if w.max_batch == 0 {
            return Err(bad("worker.max_batch", "must be at least 1"));
        }
        if w.publish_interval_ms == 0 {
            return Err(bad("worker.publish_interval_ms", "must be at least 1"));
        }
        addr("worker.listen", &w.listen)?;
        if !(-14 * 60..=14 * 60).contains(&w.utc_offset_minutes) {
            return Err(bad(
                "worker.utc_offset_minutes",
                "must be between -840 and 840",
            ));
        }
        if w.checkpoint.interval_ms == 0 {
            return Err(bad("worker.checkpoint.interval_ms", "must be at least 1"));
        }
        let t = &w.twin;
        t.shift_starts()?;
        // A window may only be forgotten once no event can still update it,
        // or a replay would rebuild it differently.
        let horizon = t.out_of_orderness_ms + t.allowed_lateness_ms;
        let r = &t.retention;
        for (field, v, len) in [
            ("minute_ms", r.minute_ms, 60_000),
            ("hour_ms", r.hour_ms, 3_600_000),
            ("shift_ms", r.shift_ms, 86_400_000),
            ("day_ms", r.day_ms, 86_400_000),
        ] {
            if v < horizon + len {
                return Err(bad(
                    &format!("worker.twin.retention.{field}"),
                    format!(
                        "must be at least out_of_orderness_ms + allowed_lateness_ms + one window ({} ms)",
                        horizon + len
                    ),
                ));
            }
        }
        let inv = &self.inventory;
        if !(1..=366).contains(&inv.demand_days) {
            return Err(bad("inventory.demand_days", "must be between 1 and 366"));
        }
        if !(inv.cover_min_days.is_finite() && inv.cover_min_days >= 0.0) {
            return Err(bad("inventory.cover_min_days", "must be 0 or more days"));
        }
        if !(inv.cover_max_days.is_finite() && inv.cover_max_days > inv.cover_min_days) {
            return Err(bad(
                "inventory.cover_max_days",
                format!(
                    "must be a number of days above inventory.cover_min_days ({})",
                    inv.cover_min_days
                ),
            ));
        }
        for (field, map) in [
            ("inventory.regions", &inv.regions),
            ("inventory.line_warehouses", &inv.line_warehouses),
        ] {
            if let Some((k, _)) = map.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
                return Err(bad(
                    &format!("{field}.{k}"),
                    "names and values must not be empty",
                ));
            }
        }
        addr("board.listen", &self.board.listen)?;
        if self.board.max_rows == 0 {
            return Err(bad("board.max_rows", "must be at least 1"));
        }
        Ok(())
    }

    /// True when no brokers are configured and the embedded broker is used.
    pub fn embedded_broker(&self) -> bool {
        self.kafka.brokers.trim().is_empty()
    }

    /// The declaration of topic `id` with this config's overrides applied.
    ///
    /// # Panics
    ///
    /// When `id` is not one of [`crate::topics::id`]: that is a programming
    /// error, not a config error (config ids are checked by `validate`).
    pub fn topic(&self, id: &str) -> TopicSpec {
        let mut spec = topics()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("unknown topic id `{id}`"));
        if let Some(o) = self.topics.get(id) {
            spec.partitions = o.partitions.unwrap_or(spec.partitions);
            spec.retention_ms = o.retention_ms.unwrap_or(spec.retention_ms);
            spec.encoding = o.encoding.unwrap_or(spec.encoding);
        }
        spec
    }

    /// All topics with overrides applied.
    pub fn all_topics(&self) -> Vec<TopicSpec> {
        topics().iter().map(|t| self.topic(t.id)).collect()
    }

    /// The broker-side name of topic `id`: the prefix plus its name.
    pub fn topic_name(&self, id: &str) -> String {
        format!("{}{}", self.kafka.topic_prefix, self.topic(id).name)
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert!(Config::default().embedded_broker());
    }

    #[test]
    fn profile_key_rules_are_read_and_a_bad_field_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                r#"
                [profiles]
                price_bands = [20.0, 50.0]
                own_brands = ["Ours"]
                [[profiles.key_rules]]
                name = "big and broad"
                all = [{ field = "rolling_sales", min = 1000.0 }, { field = "sku_count", min = 20 }]
                "#,
            )?;
            let cfg = Config::load(Some(Path::new("m.toml"))).expect("load");
            assert_eq!(cfg.profiles.key_rules[0].all[1].min, Some(20.0));
            assert_eq!(cfg.profiles.grades, 30);
            jail.create_file(
                "bad.toml",
                r#"
                [[profiles.key_rules]]
                name = "typo"
                all = [{ field = "sales", min = 1.0 }]
                "#,
            )?;
            let e = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("profiles.key_rules[0].all[0].field") && e.contains("rolling_sales"),
                "{e}"
            );
            Ok(())
        });
    }

    /// Layer order: defaults < file < environment.
    #[test]
    fn file_then_env_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                r#"
                data_dir = "/var/lib/marktwin"
                [kafka]
                brokers = "file-broker:9092"
                embedded_storage = "memory"
                [topics.pos]
                partitions = 6
                [board]
                max_rows = 10
                "#,
            )?;
            jail.set_env("MARKTWIN__KAFKA__BROKERS", "env-broker:9092");
            jail.set_env("MARKTWIN__TOPICS__POS__ENCODING", "protobuf");
            let cfg = Config::load(Some(Path::new("m.toml"))).expect("load");
            assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/marktwin"));
            assert_eq!(cfg.kafka.brokers, "env-broker:9092");
            assert_eq!(cfg.kafka.embedded_storage, BrokerStorage::Memory);
            assert_eq!(
                Config::default().kafka.embedded_storage,
                BrokerStorage::Sqlite
            );
            assert_eq!(cfg.board.max_rows, 10);
            assert_eq!(cfg.board.query_timeout_ms, 10_000);
            let pos = cfg.topic("pos");
            assert_eq!(pos.partitions, 6);
            assert_eq!(pos.encoding, Encoding::Protobuf);
            assert_eq!(cfg.topic_name("pos"), "marktwin.pos");
            Ok(())
        });
    }

    #[test]
    fn unknown_field_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[board]\nlisen = \"x\"\n")?;
            let err = Config::load(Some(Path::new("m.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_field_and_allowed_values() {
        let mut c = Config::default();
        c.kafka.brokers = "nohost".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("kafka.brokers") && e.contains("host:port"),
            "{e}"
        );

        let mut c = Config::default();
        c.topics.insert("poss".into(), TopicOverride::default());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("topics.poss") && e.contains("dead_letter"),
            "{e}"
        );

        let mut c = Config::default();
        c.worker.instance = 2;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("worker.instance"), "{e}");

        let mut c = Config::default();
        c.units.carton = 0.0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("units.carton"), "{e}");

        let mut c = Config::default();
        c.worker.assignment = Assignment::Group;
        c.worker.session_timeout_ms = 10;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("worker.session_timeout_ms"), "{e}");
    }

    #[test]
    fn group_assignment_from_the_file_and_its_allowed_values() {
        Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[worker]\nassignment = \"group\"\n")?;
            let cfg = Config::load(Some(Path::new("m.toml"))).expect("load");
            assert_eq!(cfg.worker.assignment, Assignment::Group);
            assert_eq!(Config::default().worker.assignment, Assignment::Static);
            jail.set_env("MARKTWIN__WORKER__ASSIGNMENT", "gossip");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("gossip") && err.contains("static") && err.contains("group"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_enum_value_names_the_allowed_ones() {
        Jail::expect_with(|jail| {
            jail.set_env("MARKTWIN__TOPICS__POS__ENCODING", "avro");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("avro") && err.contains("json") && err.contains("protobuf"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_example_config_loads() {
        // In a jail: other tests set `MARKTWIN__` variables meanwhile.
        Jail::expect_with(|_| {
            let path = crate::repo_file("deploy/marktwin.example.toml");
            let cfg = Config::load(Some(&path)).unwrap();
            assert_eq!(cfg.worker.utc_offset_minutes, 480);
            Ok(())
        });
    }

    #[test]
    fn unit_conversion_uses_factors() {
        let u = UnitsConfig::default();
        assert_eq!(u.to_report(1.0, Unit::Carton), 10.0);
        assert_eq!(u.to_report(40.0, Unit::Stick), 2.0);
        assert_eq!(u.to_report(1.0, Unit::Case), 2500.0);
    }
}
