//! JSON Schemas of the topics, generated from the Rust types.
//!
//! `schemas/<topic>.schema.json` in the repository is the output of
//! [`topic_schemas`]; a test fails when the two drift, and
//! `UPDATE_GOLDEN=1 cargo test -p marktwin-core schema` rewrites the files.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use crate::events::{
    AllocationOrder, DeadLetter, Envelope, EventKind, InventorySnapshot, LineCapacity,
    PosTransaction, PriceObservation, ProductionPlan, ProductionRecord, Retailer, StateChange,
    StockRecord, TelemetryReading,
};
use crate::topics::{id, topics};

fn schema_of<T: JsonSchema>(title: &str) -> Value {
    let mut v = serde_json::to_value(schema_for!(T)).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), Value::from(title));
    }
    v
}

/// The JSON Schema of the envelope carrying `kind`.
pub fn envelope_schema(kind: EventKind) -> Value {
    let title = format!("marktwin.v1 {} envelope", kind.as_str());
    match kind {
        EventKind::TelemetryReading => schema_of::<Envelope<TelemetryReading>>(&title),
        EventKind::ProductionRecord => schema_of::<Envelope<ProductionRecord>>(&title),
        EventKind::ProductionPlan => schema_of::<Envelope<ProductionPlan>>(&title),
        EventKind::LineCapacity => schema_of::<Envelope<LineCapacity>>(&title),
        EventKind::InventorySnapshot => schema_of::<Envelope<InventorySnapshot>>(&title),
        EventKind::AllocationOrder => schema_of::<Envelope<AllocationOrder>>(&title),
        EventKind::Retailer => schema_of::<Envelope<Retailer>>(&title),
        EventKind::PosTransaction => schema_of::<Envelope<PosTransaction>>(&title),
        EventKind::PriceObservation => schema_of::<Envelope<PriceObservation>>(&title),
    }
}

/// `(file name, schema)` for every topic, in declaration order. File names
/// are the topic names without the deployment prefix.
pub fn topic_schemas() -> Vec<(String, Value)> {
    topics()
        .into_iter()
        .map(|t| {
            let schema = match t.kind {
                Some(kind) => envelope_schema(kind),
                None if t.id == id::DEAD_LETTER || t.id == id::LATE => {
                    schema_of::<DeadLetter>("marktwin.v1 dead letter")
                }
                None if [id::TWIN, id::ALERTS, id::PROFILES].contains(&t.id) => {
                    schema_of::<StateChange>("marktwin.v1 state change")
                }
                None if t.id == id::STOCK => schema_of::<StockRecord>("marktwin.v1 stock record"),
                None if t.id == id::CONSUMER_POS => envelope_schema(EventKind::PosTransaction),
                None => Value::Null,
            };
            (format!("{}.schema.json", t.name), schema)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn schemas_dir() -> PathBuf {
        crate::repo_file("schemas")
    }

    /// The checked-in schemas are exactly what the types generate.
    #[test]
    fn checked_in_schemas_match_the_types() {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        for (file, schema) in topic_schemas() {
            assert!(!schema.is_null(), "{file} has no schema");
            let path = schemas_dir().join(&file);
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            if update {
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run UPDATE_GOLDEN=1 cargo test -p marktwin-core",
                    path.display()
                )
            });
            assert_eq!(
                on_disk, text,
                "{file} drifted from the Rust types; run UPDATE_GOLDEN=1 cargo test -p marktwin-core"
            );
        }
    }

    /// Every example under `schemas/examples/` validates against its topic's
    /// schema, and every topic has at least one example.
    #[test]
    fn examples_validate() {
        let dir = schemas_dir().join("examples");
        for (file, schema) in topic_schemas() {
            let topic = file.trim_end_matches(".schema.json");
            let validator = jsonschema::validator_for(&schema).unwrap();
            let path = dir.join(format!("{topic}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let examples: Vec<Value> = serde_json::from_str(&text).unwrap();
            assert!(!examples.is_empty(), "{} holds no example", path.display());
            for (i, ex) in examples.iter().enumerate() {
                let errors: Vec<String> = validator
                    .iter_errors(ex)
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{} example {i}: {errors:?}",
                    path.display()
                );
            }
        }
    }

    /// The schemas reject what they should: a wrong unit, a missing field.
    #[test]
    fn schema_rejects_bad_records() {
        let schema = envelope_schema(EventKind::PosTransaction);
        let v = jsonschema::validator_for(&schema).unwrap();
        let text = std::fs::read_to_string(schemas_dir().join("examples/pos.json")).unwrap();
        let good: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut bad_unit = good[0].clone();
        bad_unit["payload"]["unit"] = Value::from("bale");
        assert!(!v.is_valid(&bad_unit));
        let mut missing = good[0].clone();
        missing["payload"]
            .as_object_mut()
            .unwrap()
            .remove("sku_code");
        assert!(!v.is_valid(&missing));
    }
}
