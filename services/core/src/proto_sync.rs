//! Keeps `proto/marktwin/v1/events.proto` in step with the Rust types.
//!
//! The check reads the `.proto` file (the subset we write: messages with
//! scalar, enum, message and `optional` fields, one `oneof`) and compares
//! every message with the JSON Schema generated from the Rust type of the
//! same name: the same field names, compatible types, and `optional`
//! exactly where the Rust field is an `Option`.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use crate::events::{DeadLetter, EventKind};
    use crate::schema::envelope_schema;

    #[derive(Debug, Clone, PartialEq)]
    struct ProtoField {
        ty: String,
        optional: bool,
        in_oneof: bool,
    }

    fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, ProtoField>> {
        let mut out: BTreeMap<String, BTreeMap<String, ProtoField>> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut in_oneof = false;
        for raw in text.lines() {
            let line = raw.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("message ") {
                let name = rest.trim_end_matches('{').trim().to_owned();
                out.entry(name.clone()).or_default();
                current = Some(name);
            } else if line.starts_with("oneof ") {
                in_oneof = true;
            } else if line == "}" {
                if in_oneof {
                    in_oneof = false;
                } else {
                    current = None;
                }
            } else if let (Some(msg), Some((decl, _))) = (&current, line.split_once('=')) {
                let words: Vec<&str> = decl.split_whitespace().collect();
                let (optional, ty, name) = match words.as_slice() {
                    ["optional", ty, name] => (true, *ty, *name),
                    [ty, name] => (false, *ty, *name),
                    _ => panic!("cannot read proto line `{raw}`"),
                };
                out.get_mut(msg).unwrap().insert(
                    name.to_owned(),
                    ProtoField {
                        ty: ty.to_owned(),
                        optional,
                        in_oneof,
                    },
                );
            }
        }
        out
    }

    const PROTO: &str = "proto/marktwin/v1/events.proto";

    fn proto() -> BTreeMap<String, BTreeMap<String, ProtoField>> {
        parse(&std::fs::read_to_string(crate::repo_file(PROTO)).unwrap())
    }

    /// The proto type a JSON Schema property must have.
    fn proto_type_of(prop: &Value) -> String {
        if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
            return r.rsplit('/').next().unwrap().to_owned();
        }
        let ty = match prop.get("type") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap()
                .to_owned(),
            other => panic!("no type in {other:?}"),
        };
        match (ty.as_str(), prop.get("format").and_then(Value::as_str)) {
            ("string", _) => "string".into(),
            ("number", _) => "double".into(),
            ("integer", Some(f @ ("uint32" | "uint64" | "int32" | "int64"))) => f.into(),
            ("boolean", _) => "bool".into(),
            other => panic!("no proto type for {other:?}"),
        }
    }

    fn compare(name: &str, schema: &Value, msg: &BTreeMap<String, ProtoField>, skip: &[&str]) {
        let props = schema["properties"].as_object().unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let rust: Vec<&String> = props
            .keys()
            .filter(|k| !skip.contains(&k.as_str()))
            .collect();
        let protos: Vec<&String> = msg
            .iter()
            .filter(|(_, f)| !f.in_oneof)
            .map(|(k, _)| k)
            .collect();
        let mut rust_sorted = rust.clone();
        rust_sorted.sort();
        assert_eq!(
            rust_sorted, protos,
            "{name}: field names differ between Rust and proto"
        );
        for k in rust {
            let f = &msg[k];
            assert_eq!(f.ty, proto_type_of(&props[k]), "{name}.{k}: type");
            assert_eq!(
                f.optional,
                !required.contains(&k.as_str()),
                "{name}.{k}: optional in one, not the other"
            );
        }
    }

    #[test]
    fn proto_matches_the_rust_types() {
        let proto = proto();
        for kind in EventKind::ALL {
            let env = envelope_schema(kind);
            let payload_ref = env["properties"]["payload"]["$ref"].as_str().unwrap();
            let payload_name = payload_ref.rsplit('/').next().unwrap();
            let payload_schema = &env["$defs"][payload_name];
            let msg = proto
                .get(payload_name)
                .unwrap_or_else(|| panic!("no proto message {payload_name}"));
            compare(payload_name, payload_schema, msg, &[]);

            let envelope = &proto["Envelope"];
            compare("Envelope", &env, envelope, &["payload"]);
            let member = envelope
                .get(kind.as_str())
                .unwrap_or_else(|| panic!("Envelope has no oneof member {}", kind.as_str()));
            assert!(member.in_oneof);
            assert_eq!(member.ty, payload_name);
        }
        let members = proto["Envelope"].values().filter(|f| f.in_oneof).count();
        assert_eq!(
            members,
            EventKind::ALL.len(),
            "a oneof member without a Rust kind"
        );

        let dl = serde_json::to_value(schemars::schema_for!(DeadLetter)).unwrap();
        compare("DeadLetter", &dl, &proto["DeadLetter"], &[]);
    }

    #[test]
    fn proto_enums_list_every_rust_variant() {
        let text = std::fs::read_to_string(crate::repo_file(PROTO)).unwrap();
        for k in EventKind::ALL {
            assert!(
                text.contains(&format!("EVENT_KIND_{} =", k.as_str().to_uppercase())),
                "{k:?}"
            );
        }
        for u in crate::events::Unit::ALL {
            assert!(
                text.contains(&format!("UNIT_{} =", u.as_str().to_uppercase())),
                "{u:?}"
            );
        }
    }

    #[test]
    fn a_drifted_proto_is_caught() {
        let mut proto = proto();
        proto.get_mut("PosTransaction").unwrap().remove("unit");
        let env = envelope_schema(EventKind::PosTransaction);
        let r = std::panic::catch_unwind(|| {
            compare(
                "PosTransaction",
                &env["$defs"]["PosTransaction"],
                &proto["PosTransaction"],
                &[],
            )
        });
        assert!(r.is_err());
    }
}
