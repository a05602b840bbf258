//! Configuration of the business-system sources (ERP, CRM, SCM, cloud POS)
//! read over HTTP JSON or from a drop folder, of the cleaning every record
//! passes before it reaches a topic, and of fusion.
//!
//! A source names the event kind it produces and how its records' fields map
//! onto that kind's fields ([`RecordMap`]); nothing here knows one vendor or
//! one industry. See `docs/sources.md` for worked examples.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{EventKind, Unit};

/// How a source's records become events of one kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordMap {
    /// The event kind the records are, e.g. `allocation_order`, `retailer`.
    pub kind: EventKind,
    /// Event field → the source's field, a dotted path for nested objects
    /// (`customer.code`). Fields not listed are looked up under their own
    /// name.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The source's spellings of units (`CTN`, `条`) → the unit they mean.
    /// The unit names themselves (`carton`) are always understood.
    #[serde(default)]
    pub units: BTreeMap<String, Unit>,
    /// Values for event fields the source does not carry (a single-warehouse
    /// export without a warehouse column).
    #[serde(default)]
    pub constants: BTreeMap<String, serde_json::Value>,
    /// Further event fields to pseudonymise with the edge's HMAC key. POS
    /// consumer ids and phones always are.
    #[serde(default)]
    pub pseudonymise: Vec<String>,
    /// Offset from UTC, minutes, of source times written without one
    /// (`2026-01-01 08:00:00`).
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

impl RecordMap {
    /// The source's offset from UTC for times written without one.
    pub fn utc_offset(&self) -> chrono::FixedOffset {
        chrono::FixedOffset::east_opt(self.utc_offset_minutes * 60)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC"))
    }
}

/// How an HTTP source is read incrementally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Paging {
    /// The API hands out an opaque cursor with each page.
    #[default]
    Cursor,
    /// The API filters on a last-modified time (`updated_since`) and pages
    /// with an offset.
    UpdatedSince,
}

/// An incremental HTTP JSON source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSource {
    /// Poll this source.
    pub enabled: bool,
    /// Source name: written into each envelope, names the cursor file.
    pub source: String,
    /// Endpoint URL; the poller adds its query parameters.
    pub url: String,
    /// What the records are.
    pub map: Option<RecordMap>,
    /// `cursor` or `updated_since`.
    pub paging: Paging,
    /// Where the records are in the answer (a dotted path); empty when the
    /// answer is the array itself.
    pub records_field: String,
    /// Query parameter carrying the page size.
    pub limit_param: String,
    /// Records asked for per request.
    pub page_size: u32,
    /// `cursor` paging: the query parameter carrying the cursor.
    pub cursor_param: String,
    /// `cursor` paging: where the next cursor is in the answer.
    pub next_cursor_field: String,
    /// `cursor` paging: where the "more waiting" flag is in the answer;
    /// empty means "more when the page was full".
    pub has_more_field: String,
    /// `updated_since` paging: the query parameter carrying the watermark.
    pub since_param: String,
    /// `updated_since` paging: the query parameter carrying the offset.
    pub offset_param: String,
    /// `updated_since` paging: the record's last-modified field (RFC 3339
    /// text or ms since epoch). The API must answer records modified at or
    /// after the watermark, oldest first.
    pub updated_field: String,
    /// Header carrying the credential.
    pub auth_header: String,
    /// Put before the credential, e.g. `Bearer`.
    pub auth_scheme: Option<String>,
    /// Environment variable holding the credential (never logged).
    pub auth_env: Option<String>,
    /// File holding the credential; read before every request, so a rotated
    /// token is picked up.
    pub auth_file: Option<PathBuf>,
    /// Most requests per second (0: no limit). An answer `429` with
    /// `Retry-After` is honoured as well.
    pub max_requests_per_sec: f64,
    /// Pause between polls once caught up, ms.
    pub poll_interval_ms: u64,
    /// Request timeout, ms.
    pub timeout_ms: u64,
    /// Upper bound of the retry backoff, ms.
    pub max_backoff_ms: u64,
}

impl Default for HttpSource {
    fn default() -> Self {
        HttpSource {
            enabled: true,
            source: String::new(),
            url: String::new(),
            map: None,
            paging: Paging::Cursor,
            records_field: "records".into(),
            limit_param: "limit".into(),
            page_size: 1000,
            cursor_param: "cursor".into(),
            next_cursor_field: "nextCursor".into(),
            has_more_field: "hasMore".into(),
            since_param: "updated_since".into(),
            offset_param: "offset".into(),
            updated_field: "updatedAt".into(),
            auth_header: "Authorization".into(),
            auth_scheme: None,
            auth_env: None,
            auth_file: None,
            max_requests_per_sec: 0.0,
            poll_interval_ms: 1000,
            timeout_ms: 10_000,
            max_backoff_ms: 30_000,
        }
    }
}

/// A folder that ERP exports are dropped into: `*.csv`, `*.json` (an array,
/// or an object with the array under `records_field`) and `*.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropFolder {
    /// Watch this folder.
    pub enabled: bool,
    /// Source name.
    pub source: String,
    /// The folder. Finished files move to `done/` inside it; a file that
    /// cannot be read at all moves to `failed/` with a `.reason` beside it.
    pub dir: PathBuf,
    /// What the records are.
    pub map: Option<RecordMap>,
    /// For `*.json` objects: where the array is.
    pub records_field: String,
    /// CSV field delimiter, one ASCII character.
    pub csv_delimiter: String,
    /// How often the folder is scanned, ms.
    pub poll_interval_ms: u64,
    /// Records sent (and progress stored) per batch.
    pub batch_size: usize,
}

impl Default for DropFolder {
    fn default() -> Self {
        DropFolder {
            enabled: true,
            source: String::new(),
            dir: PathBuf::new(),
            map: None,
            records_field: "records".into(),
            csv_delimiter: ",".into(),
            poll_interval_ms: 2000,
            batch_size: 1000,
        }
    }
}

/// What happens to a code the map does not list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// Pass it on as it is.
    #[default]
    Keep,
    /// Dead-letter the record (`unknown_code`).
    Reject,
}

/// Source codes → the codes used downstream, for one event field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeMap {
    /// Source code → code.
    pub map: BTreeMap<String, String>,
    /// What happens to a code not in `map`.
    pub unmapped: Unmapped,
}

/// A range a numeric field must stay in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeRule {
    /// The event kind.
    pub kind: EventKind,
    /// The numeric event field.
    pub field: String,
    /// Smallest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
    /// Only records whose fields equal these values (`tag = "speed"`).
    #[serde(default)]
    pub when: BTreeMap<String, String>,
}

/// Cleaning applied to every record before it reaches a topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleaningConfig {
    /// Convert quantities (and prices per unit) into this unit with the
    /// `[units]` factors; absent keeps each record's own unit.
    pub normalise_unit: Option<Unit>,
    /// Records remembered per source to suppress duplicates by natural key
    /// and content.
    pub dedup_window: usize,
    /// Latest plausible event time, ms after now (clock skew allowance).
    pub max_future_ms: i64,
    /// Earliest plausible event time, ms since epoch.
    pub min_event_time_ms: i64,
    /// Ranges numeric fields must stay in.
    pub ranges: Vec<RangeRule>,
    /// Code mapping per event field (`sku_code`, `store_code`, ...).
    pub codes: BTreeMap<String, CodeMap>,
}

impl Default for CleaningConfig {
    fn default() -> Self {
        CleaningConfig {
            normalise_unit: None,
            dedup_window: 100_000,
            max_future_ms: 24 * 3600 * 1000,
            // 2000-01-01T00:00:00Z
            min_event_time_ms: 946_684_800_000,
            ranges: Vec::new(),
            codes: BTreeMap::new(),
        }
    }
}

/// How the members of a fusion group are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionRule {
    /// The plain mean of the fresh members.
    #[default]
    Average,
    /// Σ weight × value / Σ weight over the fresh members.
    Weighted,
}

/// One source (and optionally one kind of record from it) in a fusion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionMember {
    /// The source name.
    pub source: String,
    /// Only records whose fields equal these values.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Weight for the `weighted` rule.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Readings of one object from several sources, combined into one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    /// Name; the fused events carry `fusion:<name>` as their source.
    pub name: String,
    /// The event kind (`telemetry_reading`, `inventory_snapshot`).
    pub kind: EventKind,
    /// The numeric field combined (`value`, `quantity`).
    pub value_field: String,
    /// The fields that identify the object (`warehouse_id`, `sku_code`);
    /// members with equal values describe the same object.
    pub key_fields: Vec<String>,
    /// `average` or `weighted`.
    #[serde(default)]
    pub rule: FusionRule,
    /// A member older than this (event time, behind the newest member) is
    /// left out.
    #[serde(default = "default_max_age")]
    pub max_age_ms: i64,
    /// The sources combined.
    pub members: Vec<FusionMember>,
    /// Fields set on the fused event (`tag = "speed"` for two speed sensors).
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
}

fn default_max_age() -> i64 {
    60_000
}

fn bad(field: String, message: impl Into<String>) -> Error {
    Error::invalid(field, message)
}

fn check_source_name(field: String, name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(bad(field, "must be a non-empty name without slashes"));
    }
    Ok(())
}

fn check_map(field: String, map: &Option<RecordMap>) -> Result<()> {
    let Some(m) = map else {
        return Err(bad(
            field,
            "is missing: say what the records are (kind, fields)",
        ));
    };
    if !(-14 * 60..=14 * 60).contains(&m.utc_offset_minutes) {
        return Err(bad(
            format!("{field}.utc_offset_minutes"),
            "must be between -840 and 840",
        ));
    }
    if m.kind == EventKind::TelemetryReading {
        return Err(bad(
            format!("{field}.kind"),
            "telemetry comes from edge.opcua and edge.modbus, not from business sources",
        ));
    }
    Ok(())
}

/// Checks the business sources, cleaning and fusion; `prefix` is `edge`.
pub fn validate(
    http: &[HttpSource],
    drops: &[DropFolder],
    cleaning: &CleaningConfig,
    fusion: &[FusionConfig],
) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for (i, h) in http.iter().enumerate() {
        let f = |k: &str| format!("edge.http[{i}].{k}");
        check_source_name(f("source"), &h.source)?;
        if !names.insert(h.source.clone()) {
            return Err(bad(f("source"), format!("`{}` is used twice", h.source)));
        }
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err(bad(f("url"), "must start with http:// or https://"));
        }
        check_map(f("map"), &h.map)?;
        if !(1..=100_000).contains(&h.page_size) {
            return Err(bad(f("page_size"), "must be between 1 and 100000"));
        }
        if h.timeout_ms == 0 {
            return Err(bad(f("timeout_ms"), "must be at least 1"));
        }
        if !(h.max_requests_per_sec.is_finite() && h.max_requests_per_sec >= 0.0) {
            return Err(bad(
                f("max_requests_per_sec"),
                "must be 0 (no limit) or more",
            ));
        }
        let needed: &[(&str, &String)] = match h.paging {
            Paging::Cursor => &[
                ("cursor_param", &h.cursor_param),
                ("next_cursor_field", &h.next_cursor_field),
            ],
            Paging::UpdatedSince => &[
                ("since_param", &h.since_param),
                ("offset_param", &h.offset_param),
                ("updated_field", &h.updated_field),
            ],
        };
        for (k, v) in needed {
            if v.is_empty() {
                return Err(bad(f(k), "must not be empty for this paging"));
            }
        }
        if h.auth_env.is_some() && h.auth_file.is_some() {
            return Err(bad(f("auth_env"), "give auth_env or auth_file, not both"));
        }
    }
    for (i, d) in drops.iter().enumerate() {
        let f = |k: &str| format!("edge.drop_folders[{i}].{k}");
        check_source_name(f("source"), &d.source)?;
        if !names.insert(d.source.clone()) {
            return Err(bad(f("source"), format!("`{}` is used twice", d.source)));
        }
        if d.dir.as_os_str().is_empty() {
            return Err(bad(f("dir"), "must name a folder"));
        }
        check_map(f("map"), &d.map)?;
        if d.csv_delimiter.len() != 1 || !d.csv_delimiter.is_ascii() {
            return Err(bad(f("csv_delimiter"), "must be one ASCII character"));
        }
        if d.batch_size == 0 {
            return Err(bad(f("batch_size"), "must be at least 1"));
        }
    }
    for (i, r) in cleaning.ranges.iter().enumerate() {
        if r.min.is_none() && r.max.is_none() {
            return Err(bad(
                format!("edge.cleaning.ranges[{i}]"),
                "give min, max or both",
            ));
        }
        if let (Some(lo), Some(hi)) = (r.min, r.max)
            && lo > hi
        {
            return Err(bad(
                format!("edge.cleaning.ranges[{i}].min"),
                "is above max",
            ));
        }
    }
    if cleaning.max_future_ms < 0 {
        return Err(bad(
            "edge.cleaning.max_future_ms".into(),
            "must be 0 or more",
        ));
    }
    let mut fused = std::collections::BTreeSet::new();
    for (i, fu) in fusion.iter().enumerate() {
        let f = |k: &str| format!("edge.fusion[{i}].{k}");
        check_source_name(f("name"), &fu.name)?;
        if !fused.insert(fu.name.clone()) {
            return Err(bad(f("name"), format!("`{}` is used twice", fu.name)));
        }
        if fu.members.len() < 2 {
            return Err(bad(f("members"), "needs at least two members"));
        }
        if fu.key_fields.is_empty() {
            return Err(bad(f("key_fields"), "needs at least one field"));
        }
        for (j, m) in fu.members.iter().enumerate() {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(bad(
                    format!("edge.fusion[{i}].members[{j}].weight"),
                    "must be above 0",
                ));
            }
        }
        if fu.max_age_ms <= 0 {
            return Err(bad(f("max_age_ms"), "must be above 0"));
        }
    }
    Ok(())
}
