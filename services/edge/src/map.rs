//! Mapping a source's records onto an event kind's fields.
//!
//! The event types' JSON Schemas (generated from the Rust types) say what
//! each field is, so one mapper serves every kind and every vendor: a field
//! is looked up at the source path the config gives (or under its own name),
//! then read as the schema asks — numbers written as text (`"12.5"`, as CSV
//! and many ERP exports have them) become numbers, times in RFC 3339, in
//! `YYYY-MM-DD HH:MM:SS` (with the source's UTC offset) or as ms since the
//! epoch become `*_ms`, dates in `YYYY-MM-DD`, `YYYYMMDD` or `YYYY/MM/DD`
//! become dates, the source's unit spellings become units, and codes are
//! mapped. Every failure names the event field and the source field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use marktwin_core::events::{EventKind, Unit};
use marktwin_core::schema::envelope_schema;
use marktwin_core::sources::{CodeMap, RecordMap, Unmapped};
use serde_json::{Map, Value};

use crate::pseudonym::Pseudonymiser;

/// Why a record was rejected: a short class for metrics and a detail naming
/// the field.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    /// Bounded reason class: `decode`, `missing_field`, `bad_value`,
    /// `unknown_code`, `out_of_range`, `implausible`.
    pub reason: &'static str,
    /// Human-readable detail naming the field.
    pub detail: String,
}

impl Reject {
    /// A reject of class `reason`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the schema says a field is.
#[derive(Clone, Debug, PartialEq)]
enum FieldType {
    Text,
    Number,
    Integer { min: i64, max: i64 },
    TimeMs,
    Date,
    Unit,
    Choice(Vec<String>),
}

#[derive(Clone, Debug)]
struct Field {
    name: String,
    /// The source field's name as configured, for messages.
    source: String,
    path: Vec<String>,
    ty: FieldType,
    required: bool,
    pseudonymise: bool,
    constant: Option<Value>,
    codes: Option<CodeMap>,
}

/// Maps records of one source onto one event kind.
#[derive(Clone, Debug)]
pub struct Mapper {
    kind: EventKind,
    fields: Vec<Field>,
    units: HashMap<String, Unit>,
    offset: FixedOffset,
    pseudo: Arc<Pseudonymiser>,
}

fn type_of(prop: &Value, defs: &Value, name: &str) -> (FieldType, bool) {
    // `Option<Enum>` is `anyOf: [{$ref}, {type: null}]`; `Option<f64>` is
    // `type: [number, null]`.
    let mut nullable = false;
    let mut p = prop;
    if let Some(any) = prop.get("anyOf").and_then(Value::as_array) {
        nullable = any
            .iter()
            .any(|s| s.get("type") == Some(&Value::from("null")));
        if let Some(s) = any.iter().find(|s| s.get("$ref").is_some()) {
            p = s;
        }
    }
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let def = r.rsplit('/').next().unwrap_or_default();
        if def == "Unit" {
            return (FieldType::Unit, nullable);
        }
        let d = &defs[def];
        let mut values: Vec<String> = d["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["const"].as_str().map(str::to_owned))
            .collect();
        values.extend(
            d["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned)),
        );
        return (FieldType::Choice(values), nullable);
    }
    let types: Vec<&str> = match &p["type"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    nullable |= types.contains(&"null");
    let ty = if types.contains(&"integer") {
        if name.ends_with("_ms") {
            FieldType::TimeMs
        } else {
            let (min, max) = match p["format"].as_str() {
                Some("uint32") => (0, i64::from(u32::MAX)),
                Some("uint64") => (0, i64::MAX),
                Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            FieldType::Integer { min, max }
        }
    } else if types.contains(&"number") {
        FieldType::Number
    } else if p["format"] == "date" {
        FieldType::Date
    } else {
        FieldType::Text
    };
    (ty, nullable)
}

impl Mapper {
    /// A mapper for `map`, with the edge's pseudonymiser and code maps.
    pub fn new(
        map: &RecordMap,
        pseudo: Arc<Pseudonymiser>,
        codes: &BTreeMap<String, CodeMap>,
    ) -> Self {
        let schema = envelope_schema(map.kind);
        let defs = &schema["$defs"];
        let payload = schema["properties"]["payload"]["$ref"]
            .as_str()
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or_default();
        let p = &defs[payload];
        let required: Vec<&str> = p["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut always_pseudo: Vec<&str> = Vec::new();
        if map.kind == EventKind::PosTransaction {
            always_pseudo = vec!["consumer_id", "consumer_phone"];
        }
        let mut fields = Vec::new();
        if let Some(props) = p["properties"].as_object() {
            for (name, prop) in props {
                let (ty, nullable) = type_of(prop, defs, name);
                let source = map
                    .fields
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.clone());
                fields.push(Field {
                    path: path(&source),
                    source,
                    ty,
                    required: required.contains(&name.as_str()) && !nullable,
                    pseudonymise: always_pseudo.contains(&name.as_str())
                        || map.pseudonymise.contains(name),
                    constant: map.constants.get(name).cloned(),
                    codes: codes.get(name).cloned(),
                    name: name.clone(),
                });
            }
        }
        Mapper {
            kind: map.kind,
            fields,
            units: map
                .units
                .iter()
                .map(|(k, v)| (k.trim().to_lowercase(), *v))
                .collect(),
            offset: map.utc_offset(),
            pseudo,
        }
    }

    /// The kind produced.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The event fields this kind has, for checking config against.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// The record as the event kind's JSON, or why not.
    pub fn map(&self, raw: &Value) -> Result<Value, Reject> {
        if !raw.is_object() {
            return Err(Reject::new("decode", "the record is not a JSON object"));
        }
        let mut out = Map::with_capacity(self.fields.len());
        for f in &self.fields {
            let v = match &f.constant {
                Some(c) => Some(c),
                None => lookup(raw, &f.path),
            };
            let v = match v {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(v) => Some(v),
            };
            let value = match v {
                None if f.required => {
                    return Err(Reject::new(
                        "missing_field",
                        format!("`{}` is missing or empty{}", f.source, f.via()),
                    ));
                }
                None => Value::Null,
                Some(v) => self.read(f, v)?,
            };
            out.insert(f.name.clone(), value);
        }
        Ok(Value::Object(out))
    }

    fn read(&self, f: &Field, v: &Value) -> Result<Value, Reject> {
        let bad = |what: String| {
            Reject::new(
                "bad_value",
                format!("`{}` is {}{}: {what}", f.source, shown(v), f.via()),
            )
        };
        Ok(match &f.ty {
            FieldType::Text => {
                let s = match v {
                    Value::String(s) => s.trim().to_owned(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(bad("expected text".into())),
                };
                let s = match &f.codes {
                    Some(c) => match c.map.get(&s) {
                        Some(to) => to.clone(),
                        None if c.unmapped == Unmapped::Reject => {
                            return Err(Reject::new(
                                "unknown_code",
                                format!(
                                    "`{}` is {}{}: not in edge.cleaning.codes.{}",
                                    f.source,
                                    shown(v),
                                    f.via(),
                                    f.name
                                ),
                            ));
                        }
                        None => s,
                    },
                    None => s,
                };
                if f.pseudonymise {
                    Value::from(self.pseudo.pseudonymise(&s))
                } else {
                    Value::from(s)
                }
            }
            FieldType::Number => {
                let n = number(v).ok_or_else(|| bad("expected a number".into()))?;
                if !n.is_finite() {
                    return Err(bad("not a finite number".into()));
                }
                Value::from(n)
            }
            FieldType::Integer { min, max } => {
                let n = number(v).ok_or_else(|| bad("expected a whole number".into()))?;
                if n.fract() != 0.0 || !n.is_finite() {
                    return Err(bad("expected a whole number".into()));
                }
                if n < *min as f64 || n > *max as f64 {
                    return Err(bad(format!("must be between {min} and {max}")));
                }
                Value::from(n as i64)
            }
            FieldType::TimeMs => Value::from(self.time_ms(v).ok_or_else(|| {
                bad("expected an RFC 3339 time, `YYYY-MM-DD HH:MM:SS` or ms since the epoch".into())
            })?),
            FieldType::Date => Value::from(
                self.date(v)
                    .ok_or_else(|| bad("expected a date (YYYY-MM-DD)".into()))?
                    .to_string(),
            ),
            FieldType::Unit => {
                let s = text(v).ok_or_else(|| bad("expected a unit".into()))?;
                let key = s.trim().to_lowercase();
                let unit = self
                    .units
                    .get(&key)
                    .copied()
                    .or_else(|| Unit::ALL.into_iter().find(|u| u.as_str() == key))
                    .ok_or_else(|| {
                        let mut allowed: Vec<&str> = Unit::ALL.iter().map(|u| u.as_str()).collect();
                        allowed.extend(self.units.keys().map(String::as_str));
                        bad(format!("allowed: {}", allowed.join(", ")))
                    })?;
                Value::from(unit.as_str())
            }
            FieldType::Choice(values) => {
                let s = text(v).ok_or_else(|| bad("expected text".into()))?;
                let key = s.trim().to_lowercase();
                if !values.contains(&key) {
                    return Err(bad(format!("allowed: {}", values.join(", "))));
                }
                Value::from(key)
            }
        })
    }

    fn time_ms(&self, v: &Value) -> Option<i64> {
        time_ms(v, self.offset)
    }

    fn date(&self, v: &Value) -> Option<NaiveDate> {
        if let Some(n) = v.as_i64() {
            if (19_000_101..=29_991_231).contains(&n) {
                return parse_date(&n.to_string());
            }
            return DateTime::from_timestamp_millis(n)
                .map(|t| t.with_timezone(&self.offset).date_naive());
        }
        let s = v.as_str()?.trim();
        if let Some(d) = parse_date(s) {
            return Some(d);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&self.offset).date_naive());
        }
        let head = s.get(..10)?;
        parse_date(head)
    }

    /// The original record for the dead-letter topic, with the fields this
    /// mapper pseudonymises pseudonymised: no topic carries them in clear.
    pub fn redact(&self, raw: &Value) -> String {
        let mut v = raw.clone();
        for f in self.fields.iter().filter(|f| f.pseudonymise) {
            if let Some(slot) = lookup_mut(&mut v, &f.path)
                && let Some(s) = text(slot)
            {
                *slot = Value::from(self.pseudo.pseudonymise(&s));
            }
        }
        v.to_string()
    }
}

impl Field {
    /// ` (event field x)` when the source field is named differently.
    fn via(&self) -> String {
        if self.source == self.name {
            String::new()
        } else {
            format!(" (event field `{}`)", self.name)
        }
    }
}

/// A time read as [`Mapper`] reads `*_ms` fields: RFC 3339, naive times
/// at `offset`, dates (midnight at `offset`), or ms since the epoch.
pub fn time_ms(v: &Value, offset: FixedOffset) -> Option<i64> {
    if let Some(n) = number(v).filter(|_| v.is_number()) {
        return (n.fract() == 0.0).then_some(n as i64);
    }
    let s = v.as_str()?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return offset
                .from_local_datetime(&t)
                .single()
                .map(|t| t.timestamp_millis());
        }
    }
    let d = parse_date(s)?;
    offset
        .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .single()
        .map(|t| t.timestamp_millis())
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    ["%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

/// A dotted field path (`geo.lat`) as its parts; empty for `""`, which
/// [`lookup`] reads as the value itself.
pub fn path(dotted: &str) -> Vec<String> {
    dotted
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The value at a path (see [`path`]).
pub fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn lookup_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pseudo() -> Arc<Pseudonymiser> {
        Arc::new(Pseudonymiser::new(b"test-key-0123456789").unwrap())
    }

    fn order_map() -> RecordMap {
        RecordMap {
            kind: EventKind::AllocationOrder,
            fields: [
                ("order_id", "orderNo"),
                ("line_no", "itemNo"),
                ("from_id", "whse.code"),
                ("to_id", "custCode"),
                ("sku_code", "goodsCode"),
                ("quantity", "qty"),
                ("unit", "uom"),
                ("unit_price", "price"),
                ("order_date", "orderDate"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            units: [("CTN".to_owned(), Unit::Carton)].into(),
            constants: BTreeMap::new(),
            pseudonymise: vec![],
            utc_offset_minutes: 480,
        }
    }

    fn order() -> Value {
        json!({"orderNo":"A1","itemNo":"2","whse":{"code":"WH01"},"custCode":1001,
               "goodsCode":"G1","qty":"5","uom":"ctn","price":250,"orderDate":"20260105"})
    }

    #[test]
    fn maps_paths_coerces_text_numbers_and_unit_spellings() {
        let m = Mapper::new(&order_map(), pseudo(), &BTreeMap::new());
        let v = m.map(&order()).unwrap();
        let o: marktwin_core::events::AllocationOrder = serde_json::from_value(v).unwrap();
        assert_eq!(o.line_no, 2);
        assert_eq!(o.from_id, "WH01");
        assert_eq!(o.to_id, "1001");
        assert_eq!(o.quantity, 5.0);
        assert_eq!(o.unit, Unit::Carton);
        assert_eq!(o.order_date.to_string(), "2026-01-05");
    }

    #[test]
    fn rejects_name_the_source_and_event_field() {
        let m = Mapper::new(&order_map(), pseudo(), &BTreeMap::new());
        for (field, value, reason, needle) in [
            (
                "uom",
                json!("BOX"),
                "bad_value",
                "`uom` is \"BOX\" (event field `unit`): allowed: stick, pack, carton, case, ctn",
            ),
            ("qty", json!("five"), "bad_value", "`qty` is \"five\""),
            ("itemNo", json!(1.5), "bad_value", "whole number"),
            ("itemNo", json!(-1), "bad_value", "between 0 and"),
            (
                "goodsCode",
                json!(" "),
                "missing_field",
                "`goodsCode` is missing",
            ),
            ("orderDate", json!("soon"), "bad_value", "expected a date"),
        ] {
            let mut r = order();
            r[field] = value;
            let e = m.map(&r).unwrap_err();
            assert_eq!(e.reason, reason, "{field}");
            assert!(e.detail.contains(needle), "{field}: {}", e.detail);
        }
        assert_eq!(m.map(&json!([1])).unwrap_err().reason, "decode");
    }

    #[test]
    fn times_read_in_several_spellings_with_the_source_offset() {
        let map = RecordMap {
            kind: EventKind::InventorySnapshot,
            fields: [("as_of_ms".to_owned(), "t".to_owned())].into(),
            units: BTreeMap::new(),
            constants: [("warehouse_id".to_owned(), json!("WH9"))].into(),
            pseudonymise: vec![],
            utc_offset_minutes: 480,
        };
        let m = Mapper::new(&map, pseudo(), &BTreeMap::new());
        for (t, ms) in [
            (json!("2026-01-01T00:00:00Z"), 1_767_225_600_000i64),
            (json!("2026-01-01 08:00:00"), 1_767_225_600_000),
            (json!(1_767_225_600_000i64), 1_767_225_600_000),
            (json!("2026-01-01"), 1_767_196_800_000),
        ] {
            let v = m
                .map(&json!({"sku_code":"S","quantity":1,"unit":"pack","t":t}))
                .unwrap();
            assert_eq!(v["as_of_ms"], ms, "{t}");
            assert_eq!(v["warehouse_id"], "WH9");
        }
    }

    #[test]
    fn codes_map_and_unknown_codes_can_be_rejected() {
        let codes: BTreeMap<String, CodeMap> = [(
            "sku_code".to_owned(),
            CodeMap {
                map: [("G1".to_owned(), "SKU0001".to_owned())].into(),
                unmapped: Unmapped::Reject,
            },
        )]
        .into();
        let m = Mapper::new(&order_map(), pseudo(), &codes);
        assert_eq!(m.map(&order()).unwrap()["sku_code"], "SKU0001");
        let mut r = order();
        r["goodsCode"] = json!("G2");
        let e = m.map(&r).unwrap_err();
        assert_eq!(e.reason, "unknown_code");
        assert!(
            e.detail.contains("edge.cleaning.codes.sku_code"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn pos_consumers_are_always_pseudonymised_also_in_the_redacted_original() {
        let map = RecordMap {
            kind: EventKind::PosTransaction,
            fields: [("consumer_phone".to_owned(), "mobile".to_owned())].into(),
            units: BTreeMap::new(),
            constants: BTreeMap::new(),
            pseudonymise: vec![],
            utc_offset_minutes: 0,
        };
        let m = Mapper::new(&map, pseudo(), &BTreeMap::new());
        let raw = json!({"mobile":"13812345678","store_code":"S","order_number":"O","line_no":1,
            "sku_code":"K","sku_name":"n","unit_price":1,"quantity":1,"unit":"pack",
            "total_amount":1,"transaction_time_ms":1});
        let v = m.map(&raw).unwrap();
        assert_eq!(v["consumer_phone"], pseudo().pseudonymise("13812345678"));
        assert!(!m.redact(&raw).contains("13812345678"));
    }
}
