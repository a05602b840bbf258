//! Fusion: readings of one object from several sources, combined.
//!
//! A rule (`[[edge.fusion]]`) names its members (a source, optionally only
//! the records whose fields match `when`), the fields that identify the
//! object (`key_fields`) and the numeric field combined (`value_field`).
//! Whenever a member reports, the rule writes a fused event of the same
//! kind with source `fusion:<name>`: the newest member record, its value
//! replaced by the plain average (`average`) or Σ wᵢxᵢ / Σ wᵢ (`weighted`)
//! of the members whose latest event time is within `max_age_ms` of the
//! newest one, and the `set` fields applied. A member in another unit is
//! converted with the `[units]` factors first; a record whose `quality` is
//! not `good` does not take part. The raw member events stay on the topic
//! as well. See `docs/sources.md` for a worked example.

use std::collections::HashMap;

use marktwin_core::config::UnitsConfig;
use marktwin_core::events::{EventKind, Unit};
use marktwin_core::sources::{FusionConfig, FusionRule};
use serde_json::Value;

use crate::clean::matches;

#[derive(Clone, Debug)]
struct Sample {
    value: f64,
    unit: Option<Unit>,
    time_ms: i64,
    payload: Value,
}

#[derive(Debug)]
struct Rule {
    cfg: FusionConfig,
    source: String,
    /// Object key → latest sample per member.
    groups: HashMap<String, Vec<Option<Sample>>>,
}

/// The fusion rules of one edge process, fed by all its sources.
#[derive(Debug, Default)]
pub struct Fusion {
    rules: Vec<Rule>,
    units: UnitsConfig,
}

/// A fused event: the rule's source name and the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    /// `fusion:<name>`.
    pub source: String,
    /// The fused payload, as JSON of the rule's kind.
    pub payload: Value,
    /// The rule's name, for metrics.
    pub rule: String,
}

fn unit_of(p: &Value) -> Option<Unit> {
    p.get("unit")
        .and_then(|u| serde_json::from_value(u.clone()).ok())
}

impl Fusion {
    /// The rules of `cfg`, converting units with `units`.
    pub fn new(cfg: &[FusionConfig], units: &UnitsConfig) -> Self {
        Fusion {
            rules: cfg
                .iter()
                .map(|c| Rule {
                    source: format!("fusion:{}", c.name),
                    cfg: c.clone(),
                    groups: HashMap::new(),
                })
                .collect(),
            units: units.clone(),
        }
    }

    /// Whether records of `kind` from `source` take part in any rule.
    pub fn wants(&self, source: &str, kind: EventKind) -> bool {
        self.rules
            .iter()
            .any(|r| r.cfg.kind == kind && r.cfg.members.iter().any(|m| m.source == source))
    }

    /// Offers one cleaned record; returns the fused events it causes.
    pub fn offer(
        &mut self,
        source: &str,
        kind: EventKind,
        payload: &Value,
        time_ms: i64,
    ) -> Vec<Fused> {
        let mut out = Vec::new();
        if payload
            .get("quality")
            .is_some_and(|q| q.as_str() != Some("good"))
        {
            return out;
        }
        for rule in self.rules.iter_mut().filter(|r| r.cfg.kind == kind) {
            let Some(member) = rule
                .cfg
                .members
                .iter()
                .position(|m| m.source == source && matches(&m.when, payload))
            else {
                continue;
            };
            let Some(value) = payload.get(&rule.cfg.value_field).and_then(Value::as_f64) else {
                continue;
            };
            let key: Vec<String> = rule
                .cfg
                .key_fields
                .iter()
                .map(|k| match payload.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                })
                .collect();
            let n = rule.cfg.members.len();
            let slots = rule
                .groups
                .entry(key.join("\u{1f}"))
                .or_insert_with(|| vec![None; n]);
            if slots[member].as_ref().is_some_and(|s| s.time_ms > time_ms) {
                continue; // older than what this member already said
            }
            slots[member] = Some(Sample {
                value,
                unit: unit_of(payload),
                time_ms,
                payload: payload.clone(),
            });
            if let Some(f) = fuse(&rule.cfg, slots, &self.units) {
                out.push(Fused {
                    source: rule.source.clone(),
                    payload: f,
                    rule: rule.cfg.name.clone(),
                });
            }
        }
        out
    }
}

fn fuse(cfg: &FusionConfig, slots: &[Option<Sample>], units: &UnitsConfig) -> Option<Value> {
    let newest = slots.iter().flatten().max_by_key(|s| s.time_ms)?.clone();
    let (mut sum, mut weights) = (0.0, 0.0);
    for (s, m) in slots.iter().zip(&cfg.members) {
        let Some(s) = s else { continue };
        if s.time_ms < newest.time_ms - cfg.max_age_ms {
            continue;
        }
        let value = match (s.unit, newest.unit) {
            (Some(from), Some(to)) => s.value * units.factor(from) / units.factor(to),
            _ => s.value,
        };
        let w = match cfg.rule {
            FusionRule::Average => 1.0,
            FusionRule::Weighted => m.weight,
        };
        sum += w * value;
        weights += w;
    }
    let mut out = newest.payload;
    let o = out.as_object_mut()?;
    o.insert(cfg.value_field.clone(), Value::from(sum / weights));
    for (k, v) in &cfg.set {
        o.insert(k.clone(), v.clone());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use marktwin_core::sources::FusionMember;
    use serde_json::json;

    fn stock_rule(rule: FusionRule) -> FusionConfig {
        FusionConfig {
            name: "stock".into(),
            kind: EventKind::InventorySnapshot,
            value_field: "quantity".into(),
            key_fields: vec!["warehouse_id".into(), "sku_code".into()],
            rule,
            max_age_ms: 3_600_000,
            members: vec![
                FusionMember {
                    source: "erp".into(),
                    when: Default::default(),
                    weight: 1.0,
                },
                FusionMember {
                    source: "wms".into(),
                    when: Default::default(),
                    weight: 3.0,
                },
            ],
            set: Default::default(),
        }
    }

    fn stock(q: f64, unit: &str, t: i64) -> Value {
        json!({"warehouse_id":"WH1","sku_code":"K","quantity":q,"unit":unit,"as_of_ms":t})
    }

    #[test]
    fn weighted_combines_fresh_members_in_the_newest_unit() {
        let mut f = Fusion::new(&[stock_rule(FusionRule::Weighted)], &UnitsConfig::default());
        let k = EventKind::InventorySnapshot;
        // One member alone: its own value.
        let a = f.offer("erp", k, &stock(100.0, "carton", 1_000), 1_000);
        assert_eq!(a[0].payload["quantity"], 100.0);
        assert_eq!(a[0].source, "fusion:stock");
        // The worked example of docs/sources.md: the SCM said 104 cartons,
        // the WMS says 1,030 packs; weighted 1:3 in the newest's unit:
        // (1 × 1040 + 3 × 1030) / 4 = 1032.5 packs.
        f.offer("erp", k, &stock(104.0, "carton", 1_500), 1_500);
        let b = f.offer("wms", k, &stock(1030.0, "pack", 2_000), 2_000);
        assert_eq!(b[0].payload["quantity"], 1032.5);
        assert_eq!(b[0].payload["unit"], "pack");
        // Another SKU is another object.
        let mut other = stock(5.0, "pack", 2_000);
        other["sku_code"] = json!("K2");
        assert_eq!(f.offer("wms", k, &other, 2_000)[0].payload["quantity"], 5.0);
        // A stale member drops out.
        let c = f.offer("wms", k, &stock(1000.0, "pack", 4_000_000), 4_000_000);
        assert_eq!(c[0].payload["quantity"], 1000.0);
        // Unknown sources and kinds take no part.
        assert!(f.offer("pos", k, &stock(1.0, "pack", 1), 1).is_empty());
        assert!(!f.wants("pos", k));
        assert!(f.wants("erp", k));
    }

    #[test]
    fn average_of_two_sensors_renamed_and_bad_quality_left_out() {
        let cfg = FusionConfig {
            name: "line1-speed".into(),
            kind: EventKind::TelemetryReading,
            value_field: "value".into(),
            key_fields: vec!["asset".into()],
            rule: FusionRule::Average,
            max_age_ms: 10_000,
            members: ["speed_a", "speed_b"]
                .into_iter()
                .map(|t| FusionMember {
                    source: "modbus:plc".into(),
                    when: [("tag".to_owned(), t.to_owned())].into(),
                    weight: 1.0,
                })
                .collect(),
            set: [("tag".to_owned(), json!("speed"))].into(),
        };
        let mut f = Fusion::new(&[cfg], &UnitsConfig::default());
        let k = EventKind::TelemetryReading;
        let r = |tag: &str, v: f64, q: &str| json!({"asset":"line-1","tag":tag,"value":v,"quality":q,"source_time_ms":1});
        f.offer("modbus:plc", k, &r("speed_a", 400.0, "good"), 1);
        let out = f.offer("modbus:plc", k, &r("speed_b", 410.0, "good"), 2);
        assert_eq!(out[0].payload["value"], 405.0);
        assert_eq!(out[0].payload["tag"], "speed");
        assert!(
            f.offer("modbus:plc", k, &r("speed_b", 0.0, "bad"), 3)
                .is_empty()
        );
        assert!(
            f.offer("modbus:plc", k, &r("other", 1.0, "good"), 3)
                .is_empty()
        );
    }
}
