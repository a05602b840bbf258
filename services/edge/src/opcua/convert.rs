//! An OPC UA DataValue as a telemetry reading: value, quality from the
//! status code, source and server timestamps. Non-Good samples are kept
//! and flagged, never dropped.

use marktwin_core::events::{Quality, TelemetryReading};
use opcua::types::{DataValue, DateTime, StatusCode, Variant};

/// Tag, asset and unit of one monitored node.
#[derive(Clone, Debug)]
pub struct TagMeta {
    /// Tag name.
    pub tag: String,
    /// Asset.
    pub asset: String,
    /// Engineering unit.
    pub eng_unit: Option<String>,
}

fn millis(t: &DateTime) -> i64 {
    t.as_chrono().timestamp_millis()
}

/// The quality an OPC UA status code stands for (its two severity bits).
pub fn quality(status: StatusCode) -> Quality {
    if status.is_good() {
        Quality::Good
    } else if status.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Bad
    }
}

/// Numbers and booleans become `value`; text and anything else printable
/// becomes `text`.
fn split(v: &Variant) -> (Option<f64>, Option<String>) {
    match v {
        Variant::Empty => (None, None),
        Variant::Boolean(b) => (Some(f64::from(u8::from(*b))), None),
        Variant::String(s) => (None, s.value().clone()),
        Variant::LocalizedText(t) => (None, t.text.value().clone()),
        Variant::DateTime(t) => (Some(millis(t) as f64), None),
        v if v.is_numeric() => (v.as_f64(), None),
        other => (None, Some(other.to_string())),
    }
}

/// A reading for `meta` from one sample. `received_ms` stands in for the
/// server timestamp when the server sent neither timestamp, so every
/// reading has a time.
pub fn reading(meta: &TagMeta, dv: &DataValue, received_ms: i64) -> TelemetryReading {
    let status = dv.status.unwrap_or(StatusCode::Good);
    let (value, text) = dv.value.as_ref().map(split).unwrap_or((None, None));
    let source_time_ms = dv.source_timestamp.as_ref().map(millis);
    let server_time_ms = dv
        .server_timestamp
        .as_ref()
        .map(millis)
        .or(source_time_ms.is_none().then_some(received_ms));
    TelemetryReading {
        tag: meta.tag.clone(),
        asset: meta.asset.clone(),
        value,
        text,
        quality: quality(status),
        status_code: Some(status.bits()),
        source_time_ms,
        server_time_ms,
        eng_unit: meta.eng_unit.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TagMeta {
        TagMeta {
            tag: "speed".into(),
            asset: "line-1".into(),
            eng_unit: Some("packs/min".into()),
        }
    }

    #[test]
    fn good_numbers_keep_both_timestamps() {
        let src = DateTime::now();
        let dv = DataValue {
            value: Some(Variant::Double(412.5)),
            status: Some(StatusCode::Good),
            source_timestamp: Some(src),
            server_timestamp: Some(src),
            ..Default::default()
        };
        let r = reading(&meta(), &dv, 1);
        assert_eq!(r.value, Some(412.5));
        assert_eq!(r.quality, Quality::Good);
        assert_eq!(r.source_time_ms, Some(millis(&src)));
        assert_eq!(r.server_time_ms, Some(millis(&src)));
        assert_eq!(r.status_code, Some(0));
    }

    #[test]
    fn uncertain_and_bad_samples_are_kept_with_their_status() {
        let dv = DataValue {
            value: Some(Variant::Int32(7)),
            status: Some(StatusCode::UncertainLastUsableValue),
            ..Default::default()
        };
        let r = reading(&meta(), &dv, 99);
        assert_eq!(r.quality, Quality::Uncertain);
        assert_eq!(r.value, Some(7.0));
        assert_eq!(r.server_time_ms, Some(99), "receive time stands in");

        let dv = DataValue {
            value: None,
            status: Some(StatusCode::BadSensorFailure),
            ..Default::default()
        };
        let r = reading(&meta(), &dv, 5);
        assert_eq!(r.quality, Quality::Bad);
        assert_eq!(r.value, None);
        assert_eq!(r.status_code, Some(StatusCode::BadSensorFailure.bits()));
    }

    #[test]
    fn text_and_booleans() {
        let dv = DataValue::new_now(Variant::from("running"));
        assert_eq!(reading(&meta(), &dv, 0).text.as_deref(), Some("running"));
        let dv = DataValue::new_now(Variant::Boolean(true));
        assert_eq!(reading(&meta(), &dv, 0).value, Some(1.0));
    }
}
