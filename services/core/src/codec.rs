//! Encoding envelopes on topics: JSON (the default) or protobuf per topic.
//!
//! The protobuf form is the `marktwin.v1.Envelope` message of
//! `proto/marktwin/v1/events.proto`, compiled into this crate at build time
//! (by `protox`, a pure-Rust protobuf compiler, so no `protoc` is needed).
//! Encoding goes through the descriptor with `prost-reflect` rather than
//! generated structs, so the Rust types stay the one source of truth and
//! nothing is written twice: a value is serialised with serde as usual and
//! its JSON tree is mapped onto the message by field name, with two naming
//! rules of the contract:
//!
//! - an enum value `stick` of enum `Unit` is the proto value `UNIT_STICK`;
//! - the envelope's `payload` is the `oneof payload` member named by `kind`.
//!
//! A reader recognises each record's encoding from its first byte
//! ([`Encoding::detect`]): a JSON envelope starts with `{`, a protobuf
//! envelope with the tag of field 1 (`0x0a`), and `{` (`0x7b`) would be a
//! deprecated group start that the contract never uses. So a topic can
//! switch encoding without breaking readers of older records. A Kafka
//! `content-type` header would say the same, but Tansu 0.6 serves records
//! that carry headers many times slower (measured here: a 24k-record test
//! that takes 11 s did not finish in four minutes), so none is written.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, Value as PValue,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Number, Value};

use crate::topics::Encoding;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/marktwin_v1.fds")).as_ref())
        .expect("the descriptor compiled by build.rs decodes")
});

/// The descriptor of a message of `marktwin.v1`, e.g. `Envelope`.
pub fn message(name: &str) -> Option<MessageDescriptor> {
    POOL.get_message_by_name(&format!("marktwin.v1.{name}"))
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Protobuf wire format.
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A value that does not fit the message, naming the field.
    #[error("field `{field}`: {detail}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        detail: String,
    },
}

fn field_err(path: &str, detail: impl Into<String>) -> CodecError {
    CodecError::Field {
        field: path.to_owned(),
        detail: detail.into(),
    }
}

impl Encoding {
    /// The encoding of a record, from its first byte that is not white
    /// space: `{` is JSON, anything else is read as protobuf.
    pub fn detect(bytes: &[u8]) -> Encoding {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Encoding::Json,
            Some(_) => Encoding::Protobuf,
            None => Encoding::Json,
        }
    }
}

/// Encodes an envelope (any `Serialize` shaped like one) as `encoding`.
pub fn encode<T: Serialize>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::Json => Ok(serde_json::to_vec(value)?),
        Encoding::Protobuf => {
            let json = serde_json::to_value(value)?;
            let desc = message("Envelope").expect("Envelope is in the contract");
            Ok(to_proto(&json, &desc, "")?.encode_to_vec())
        }
    }
}

/// Decodes an envelope written as `encoding`; see [`decode_any`] for a
/// record of unknown encoding.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<T, CodecError> {
    match encoding {
        Encoding::Json => Ok(serde_json::from_slice(bytes)?),
        Encoding::Protobuf => {
            let desc = message("Envelope").expect("Envelope is in the contract");
            let msg = DynamicMessage::decode(desc, bytes)?;
            Ok(serde_json::from_value(from_proto(&msg))?)
        }
    }
}

/// Decodes an envelope in whichever encoding it was written
/// ([`Encoding::detect`]).
pub fn decode_any<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode(bytes, Encoding::detect(bytes))
}

/// `Unit` → `UNIT_`; `EventKind` → `EVENT_KIND_`.
fn enum_prefix(e: &EnumDescriptor) -> String {
    let mut out = String::new();
    for (i, c) in e.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

fn to_proto(
    json: &Value,
    desc: &MessageDescriptor,
    path: &str,
) -> Result<DynamicMessage, CodecError> {
    let obj = json
        .as_object()
        .ok_or_else(|| field_err(path, "expected an object"))?;
    let mut msg = DynamicMessage::new(desc.clone());
    for (name, v) in obj {
        if v.is_null() {
            continue;
        }
        let at = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        // The envelope's payload is the oneof member named by its kind.
        let field_name = if desc.name() == "Envelope" && name == "payload" {
            obj.get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| field_err("kind", "missing; it names the payload"))?
        } else {
            name.as_str()
        };
        let field = desc
            .get_field_by_name(field_name)
            .ok_or_else(|| field_err(&at, format!("not in {}", desc.full_name())))?;
        let value = if field.is_list() {
            let items = v
                .as_array()
                .ok_or_else(|| field_err(&at, "expected an array"))?;
            PValue::List(
                items
                    .iter()
                    .map(|i| scalar_to_proto(i, &field, &at))
                    .collect::<Result<_, _>>()?,
            )
        } else if field.is_map() {
            return Err(field_err(&at, "maps are not part of the contract"));
        } else {
            scalar_to_proto(v, &field, &at)?
        };
        msg.set_field(&field, value);
    }
    Ok(msg)
}

fn scalar_to_proto(v: &Value, field: &FieldDescriptor, at: &str) -> Result<PValue, CodecError> {
    let bad = |want: &str| field_err(at, format!("expected {want}, got {v}"));
    Ok(match field.kind() {
        Kind::Message(m) => PValue::Message(to_proto(v, &m, at)?),
        Kind::Enum(e) => {
            let s = v.as_str().ok_or_else(|| bad("a string"))?;
            let name = format!("{}{}", enum_prefix(&e), s.to_ascii_uppercase());
            let ev = e
                .get_value_by_name(&name)
                .ok_or_else(|| field_err(at, format!("`{s}` is not a value of {}", e.name())))?;
            PValue::EnumNumber(ev.number())
        }
        Kind::Double => PValue::F64(v.as_f64().ok_or_else(|| bad("a number"))?),
        Kind::Float => PValue::F32(v.as_f64().ok_or_else(|| bad("a number"))? as f32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            PValue::I64(v.as_i64().ok_or_else(|| bad("an integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(v.as_u64().ok_or_else(|| bad("an integer"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| bad("a 32-bit integer"))?,
        ),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("an unsigned 32-bit integer"))?,
        ),
        Kind::Bool => PValue::Bool(v.as_bool().ok_or_else(|| bad("true or false"))?),
        Kind::String => PValue::String(v.as_str().ok_or_else(|| bad("a string"))?.to_owned()),
        Kind::Bytes => return Err(field_err(at, "bytes are not part of the contract")),
    })
}

/// The JSON tree serde expects: every field of the message, except unset
/// `optional` fields (absent, so `Option` reads `None`) and unset oneof
/// members; the envelope's oneof member becomes `payload`.
fn from_proto(msg: &DynamicMessage) -> Value {
    let desc = msg.descriptor();
    let mut obj = Map::new();
    for field in desc.fields() {
        let in_oneof = field.containing_oneof().is_some();
        if (in_oneof || field.supports_presence()) && !msg.has_field(&field) {
            continue;
        }
        let v = msg.get_field(&field);
        let name = if desc.name() == "Envelope" && in_oneof {
            "payload".to_owned()
        } else {
            field.name().to_owned()
        };
        obj.insert(name, value_from_proto(&v, &field.kind()));
    }
    Value::Object(obj)
}

fn value_from_proto(v: &PValue, kind: &Kind) -> Value {
    match v {
        PValue::Message(m) => from_proto(m),
        PValue::EnumNumber(n) => {
            let Kind::Enum(e) = kind else {
                return Value::from(*n);
            };
            match e.get_value(*n) {
                Some(ev) => {
                    let prefix = enum_prefix(e);
                    let name = ev.name();
                    Value::String(
                        name.strip_prefix(&prefix)
                            .unwrap_or(name)
                            .to_ascii_lowercase(),
                    )
                }
                None => Value::from(*n),
            }
        }
        PValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        PValue::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        PValue::I64(n) => Value::from(*n),
        PValue::U64(n) => Value::from(*n),
        PValue::I32(n) => Value::from(*n),
        PValue::U32(n) => Value::from(*n),
        PValue::Bool(b) => Value::Bool(*b),
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        PValue::List(items) => {
            Value::Array(items.iter().map(|i| value_from_proto(i, kind)).collect())
        }
        PValue::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (map_key(k), value_from_proto(v, kind)))
                .collect(),
        ),
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Envelope, EventKind};
    use crate::topics::topics;

    /// `(kind, example envelope)` from `schemas/examples/`.
    fn examples() -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for t in topics() {
            let Some(kind) = t.kind else { continue };
            let path = crate::repo_file(&format!("schemas/examples/{}.json", t.name));
            let text = std::fs::read_to_string(&path).unwrap();
            let list: Vec<Value> = serde_json::from_str(&text).unwrap();
            out.extend(list.into_iter().map(|v| (kind.as_str().to_owned(), v)));
        }
        out
    }

    /// Numbers as f64 and no nulls: `2` and `2.0` are the same double, and
    /// an absent optional field is the same as a null one.
    fn norm(v: &Value) -> Value {
        match v {
            Value::Number(n) => Value::from(n.as_f64().unwrap()),
            Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), norm(v)))
                    .collect(),
            ),
            v => v.clone(),
        }
    }

    /// Every example envelope survives JSON → protobuf → JSON unchanged,
    /// and the protobuf form is smaller.
    #[test]
    fn every_example_round_trips_through_protobuf() {
        let mut kinds = std::collections::BTreeSet::new();
        for (kind, json) in examples() {
            let bytes = encode(&json, Encoding::Protobuf).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let back: Value = decode(&bytes, Encoding::Protobuf).unwrap();
            assert_eq!(norm(&back), norm(&json), "{kind}");
            assert!(
                bytes.len() < serde_json::to_vec(&json).unwrap().len(),
                "{kind}"
            );
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), EventKind::ALL.len(), "an example per kind");
    }

    #[test]
    fn typed_envelopes_round_trip() {
        for (kind, json) in examples() {
            if kind != "pos_transaction" {
                continue;
            }
            let env: Envelope<crate::events::PosTransaction> =
                serde_json::from_value(json).unwrap();
            let bytes = encode(&env, Encoding::Protobuf).unwrap();
            let back: Envelope<crate::events::PosTransaction> =
                decode(&bytes, Encoding::Protobuf).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut json = examples()
            .into_iter()
            .find(|(k, _)| k == "pos_transaction")
            .unwrap()
            .1;
        json["payload"]["unit"] = Value::from("bale");
        let e = encode(&json, Encoding::Protobuf).unwrap_err().to_string();
        assert!(e.contains("payload.unit") && e.contains("bale"), "{e}");
        json["payload"]["unit"] = Value::from("pack");
        json["payload"]["colour"] = Value::from("red");
        let e = encode(&json, Encoding::Protobuf).unwrap_err().to_string();
        assert!(e.contains("payload.colour"), "{e}");
        assert!(decode::<Value>(b"\xff\xff\xff", Encoding::Protobuf).is_err());
    }

    #[test]
    fn the_encoding_is_recognised_from_the_first_byte() {
        for (_, json) in examples() {
            let j = encode(&json, Encoding::Json).unwrap();
            let p = encode(&json, Encoding::Protobuf).unwrap();
            assert_eq!(Encoding::detect(&j), Encoding::Json);
            assert_eq!(Encoding::detect(&p), Encoding::Protobuf);
            assert_eq!(p[0], 0x0a, "the envelope starts with field 1, event_id");
            assert_eq!(norm(&decode_any::<Value>(&p).unwrap()), norm(&json));
            assert_eq!(norm(&decode_any::<Value>(&j).unwrap()), norm(&json));
        }
        assert_eq!(Encoding::detect(b"  {}"), Encoding::Json);
    }
}
