//! Mapping and validating cloud-POS records into [`PosTransaction`] events.
//!
//! The vendor format (camelCase, RFC 3339 times) is what the built-in
//! simulator serves; see `docs/sources.md`. Every rule that rejects a record
//! says which field and why, and the record goes to the dead-letter topic.

use chrono::DateTime;
use marktwin_core::events::{PosTransaction, Unit};
use serde::Deserialize;
use serde_json::Value;

use crate::pseudonym::Pseudonymiser;

/// Why a record was rejected: a short class for metrics and a detail naming
/// the field.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    /// Bounded reason class: `decode`, `missing_field`, `bad_value`.
    pub reason: &'static str,
    /// Human-readable detail naming the field.
    pub detail: String,
}

impl Reject {
    fn missing(field: &str) -> Self {
        Reject {
            reason: "missing_field",
            detail: format!("`{field}` is missing or null"),
        }
    }
    fn bad(field: &str, detail: String) -> Self {
        Reject {
            reason: "bad_value",
            detail: format!("`{field}` {detail}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPos {
    store_code: Option<String>,
    order_no: Option<String>,
    line_no: Option<u32>,
    member_id: Option<String>,
    mobile: Option<String>,
    sku_code: Option<String>,
    sku_name: Option<String>,
    price: Option<f64>,
    qty: Option<f64>,
    unit: Option<String>,
    amount: Option<f64>,
    paid_at: Option<String>,
}

fn req<T>(v: Option<T>, field: &str) -> Result<T, Reject> {
    v.ok_or_else(|| Reject::missing(field))
}

fn parse_unit(s: &str) -> Result<Unit, Reject> {
    Unit::ALL
        .into_iter()
        .find(|u| u.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            Reject::bad(
                "unit",
                format!("is `{s}`; allowed: stick, pack, carton, case"),
            )
        })
}

/// Maps one vendor record, pseudonymising the member id and phone.
pub fn map_record(raw: &Value, pseudo: &Pseudonymiser) -> Result<PosTransaction, Reject> {
    let r: RawPos = RawPos::deserialize(raw).map_err(|e| Reject {
        reason: "decode",
        detail: e.to_string(),
    })?;
    let unit = parse_unit(&req(r.unit, "unit")?)?;
    let quantity = req(r.qty, "qty")?;
    if !(quantity.is_finite() && quantity > 0.0) {
        return Err(Reject::bad(
            "qty",
            format!("is {quantity}; must be above 0"),
        ));
    }
    let unit_price = req(r.price, "price")?;
    if !(unit_price.is_finite() && unit_price >= 0.0) {
        return Err(Reject::bad(
            "price",
            format!("is {unit_price}; must be 0 or more"),
        ));
    }
    let total_amount = req(r.amount, "amount")?;
    let expected = unit_price * quantity;
    // Discounts make the amount smaller than price × qty; it is never larger.
    if !(total_amount.is_finite() && total_amount >= 0.0 && total_amount <= expected + 0.01) {
        return Err(Reject::bad(
            "amount",
            format!("is {total_amount}; must be between 0 and price × qty ({expected})"),
        ));
    }
    let paid_at = req(r.paid_at, "paidAt")?;
    let transaction_time_ms = DateTime::parse_from_rfc3339(&paid_at)
        .map_err(|e| {
            Reject::bad(
                "paidAt",
                format!("is `{paid_at}`, not an RFC 3339 time: {e}"),
            )
        })?
        .timestamp_millis();
    let non_empty = |v: Option<String>, field: &str| -> Result<String, Reject> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(Reject::missing(field)),
        }
    };
    Ok(PosTransaction {
        store_code: non_empty(r.store_code, "storeCode")?,
        order_number: non_empty(r.order_no, "orderNo")?,
        line_no: req(r.line_no, "lineNo")?,
        consumer_id: r
            .member_id
            .filter(|s| !s.is_empty())
            .map(|s| pseudo.pseudonymise(&s)),
        consumer_phone: r
            .mobile
            .filter(|s| !s.is_empty())
            .map(|s| pseudo.pseudonymise(&s)),
        sku_code: non_empty(r.sku_code, "skuCode")?,
        sku_name: r.sku_name.unwrap_or_default(),
        unit_price,
        quantity,
        unit,
        total_amount,
        transaction_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> Pseudonymiser {
        Pseudonymiser::new(b"test-key-0123456789").unwrap()
    }

    fn good() -> Value {
        json!({"storeCode":"R000001","orderNo":"O1","lineNo":1,"memberId":"M1","mobile":"13812345678",
               "skuCode":"SKU0001","skuName":"Brand 01 Classic","price":25.0,"qty":2,"unit":"pack",
               "amount":50.0,"paidAt":"2026-01-01T08:00:00.000Z"})
    }

    #[test]
    fn maps_and_pseudonymises() {
        let t = map_record(&good(), &p()).unwrap();
        assert_eq!(t.unit, Unit::Pack);
        assert_eq!(t.transaction_time_ms, 1_767_254_400_000);
        let phone = t.consumer_phone.unwrap();
        assert_eq!(phone, p().pseudonymise("13812345678"));
        assert!(!phone.contains("13812345678"));
    }

    #[test]
    fn rejects_name_the_field() {
        for (field, value, reason, needle) in [
            (
                "unit",
                json!("bale"),
                "bad_value",
                "`unit` is `bale`; allowed: stick, pack, carton, case",
            ),
            ("qty", json!(-1), "bad_value", "`qty` is -1"),
            (
                "skuCode",
                Value::Null,
                "missing_field",
                "`skuCode` is missing",
            ),
            (
                "paidAt",
                json!("yesterday"),
                "bad_value",
                "`paidAt` is `yesterday`",
            ),
            ("lineNo", json!("one"), "decode", "invalid type"),
        ] {
            let mut r = good();
            r[field] = value;
            let e = map_record(&r, &p()).unwrap_err();
            assert_eq!(e.reason, reason, "{field}");
            assert!(e.detail.contains(needle), "{field}: {}", e.detail);
        }
    }
}
