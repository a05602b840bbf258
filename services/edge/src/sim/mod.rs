//! The business-system simulators behind one HTTP listener: cloud POS
//! ([`pos`]), CRM, ERP, SCM and WMS ([`business`]), the plant's MES
//! ([`mes`]). Seeded and
//! deterministic; `marktwin up` polls them with the sources of
//! [`sources`] when `edge.http` is empty.
//!
//! For demonstrations and tests the listener can demand a bearer token
//! (`simulator.api_token`), fail every n-th request with 503
//! (`simulator.api_fail_every`) and answer 429 with `Retry-After` beyond a
//! request rate (`simulator.api_max_requests_per_sec`).

pub mod business;
pub mod mes;
pub mod pos;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::DateTime;
use marktwin_core::Config;
use marktwin_core::events::{EventKind, Unit};
use marktwin_core::sources::{
    FusionConfig, FusionMember, FusionRule, HttpSource, Paging, RecordMap,
};
use serde_json::{Value, json};

pub use business::Business;
pub use mes::Mes;
pub use pos::{Page, PosSim};

/// SplitMix64 over (seed, stream, index): a counter-based generator, so any
/// record can be computed directly from its index. `rand`'s generators are
/// sequential and would need replaying from the start.
pub(crate) fn mix(seed: u64, stream: u64, i: u64) -> u64 {
    let mut z =
        seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The price of one pack of SKU `sku` (0-based), the same in every system.
pub(crate) fn pack_price(seed: u64, sku: u64) -> f64 {
    10.0 + (mix(seed, 6, sku) % 11) as f64 * 5.0
}

/// The simulators and their API's behaviour.
pub struct Api {
    /// Cloud POS.
    pub pos: PosSim,
    /// CRM, ERP, SCM, WMS.
    pub business: Business,
    /// The plant's MES.
    pub mes: Mes,
    token: Option<String>,
    fail_every: u64,
    max_per_sec: f64,
    requests: AtomicU64,
    window: Mutex<(i64, u64)>,
}

impl Api {
    /// The simulators of `cfg` with simulated time from `start_ms`.
    pub fn new(cfg: &Config, start_ms: i64) -> Self {
        let s = &cfg.simulator;
        Api {
            pos: PosSim::new(s, start_ms),
            business: Business::new(s, start_ms),
            mes: Mes::new(s, start_ms),
            token: s.api_token.clone(),
            fail_every: s.api_fail_every,
            max_per_sec: s.api_max_requests_per_sec,
            requests: AtomicU64::new(0),
            window: Mutex::new((0, 0)),
        }
    }

    /// The answer refusing a request, if it is refused: auth, rate limit
    /// and injected faults, in that order.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if let Some(t) = &self.token {
            let ok = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {t}"));
            if !ok {
                return Some((StatusCode::UNAUTHORIZED, "bearer token required\n").into_response());
            }
        }
        if self.max_per_sec > 0.0 {
            let second = marktwin_core::now_ms() / 1000;
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if w.0 != second {
                *w = (second, 0);
            }
            w.1 += 1;
            if w.1 as f64 > self.max_per_sec {
                return Some(
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        "rate limit\n",
                    )
                        .into_response(),
                );
            }
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            return Some((StatusCode::SERVICE_UNAVAILABLE, "injected failure\n").into_response());
        }
        None
    }
}

type Params = Query<BTreeMap<String, String>>;

fn num(q: &BTreeMap<String, String>, k: &str, default: u64) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn limit(q: &BTreeMap<String, String>, k: &str) -> usize {
    num(q, k, 1000).clamp(1, 10_000) as usize
}

async fn pos(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    let page = api.pos.page(
        num(&q, "cursor", 0),
        limit(&q, "limit"),
        marktwin_core::now_ms(),
    );
    Json(page).into_response()
}

async fn retailers(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    let since = match q.get("modifiedSince") {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("modifiedSince: {e}\n")).into_response();
            }
        },
    };
    let data = api.business.retailers(
        since,
        num(&q, "skip", 0) as usize,
        limit(&q, "top"),
        marktwin_core::now_ms(),
    );
    Json(json!({ "data": data })).into_response()
}

async fn orders(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    let after = q
        .get("after")
        .and_then(|c| c.strip_prefix("seq-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let p = api
        .business
        .orders(after, limit(&q, "pageSize"), marktwin_core::now_ms());
    Json(json!({"items": p.records, "next": format!("seq-{:08}", p.next), "more": p.more}))
        .into_response()
}

async fn plans(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    records_page(api.business.plans(
        num(&q, "cursor", 0),
        limit(&q, "limit"),
        marktwin_core::now_ms(),
    ))
}

/// A cursor-paged log answer in the ERP / MES shape.
fn records_page(p: business::LogPage) -> Response {
    Json(json!({"records": p.records, "nextCursor": p.next, "hasMore": p.more})).into_response()
}

async fn production(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    records_page(api.mes.productions(
        num(&q, "cursor", 0),
        limit(&q, "limit"),
        marktwin_core::now_ms(),
    ))
}

async fn capacity(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    records_page(api.mes.capacities(num(&q, "cursor", 0), limit(&q, "limit")))
}

async fn inventory(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    let since = q.get("updated_since").and_then(|v| v.parse().ok());
    let data = api.business.inventory(
        since,
        num(&q, "offset", 0) as usize,
        limit(&q, "limit"),
        marktwin_core::now_ms(),
    );
    Json(Value::from(data)).into_response()
}

async fn wms(State(api): State<Arc<Api>>, Query(q): Params) -> Response {
    records_page(api.business.wms(
        num(&q, "cursor", 0),
        limit(&q, "limit"),
        marktwin_core::now_ms(),
    ))
}

/// Lets a request through to its API unless [`Api::refusal`] refuses it.
async fn admit(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    match api.refusal(req.headers()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The simulators' HTTP API.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/pos/transactions", get(pos))
        .route("/crm/retailers", get(retailers))
        .route("/erp/allocation-orders", get(orders))
        .route("/erp/production-plans", get(plans))
        .route("/scm/inventory", get(inventory))
        .route("/wms/stock", get(wms))
        .route("/mes/production", get(production))
        .route("/mes/line-capacity", get(capacity))
        .route_layer(middleware::from_fn_with_state(api.clone(), admit))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(api)
}

/// Start of simulated time: the configured one, or the one stored in
/// `<data_dir>/simulator/start_ms` by the first start (written then), so a
/// restarted simulator serves the same records.
pub fn start_ms(cfg: &Config) -> std::io::Result<i64> {
    if let Some(s) = cfg.simulator.start_ms {
        return Ok(s);
    }
    let dir = cfg.data_dir.join("simulator");
    let path = dir.join("start_ms");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(v) = text.trim().parse()
    {
        return Ok(v);
    }
    std::fs::create_dir_all(&dir)?;
    let start = marktwin_core::now_ms() - i64::from(cfg.simulator.history_hours) * 3_600_000;
    crate::cursor::write_atomic(&path, start.to_string().as_bytes())?;
    Ok(start)
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn map(kind: EventKind, f: &[(&str, &str)], units: &[(&str, Unit)]) -> RecordMap {
    RecordMap {
        kind,
        fields: fields(f),
        units: units.iter().map(|(a, u)| ((*a).to_owned(), *u)).collect(),
        constants: BTreeMap::new(),
        pseudonymise: Vec::new(),
        utc_offset_minutes: 0,
    }
}

/// The sources that read the simulators at `addr` (host:port): the same
/// configuration a user writes for real systems (see
/// `deploy/marktwin.example.toml`).
pub fn sources(addr: &str) -> Vec<HttpSource> {
    let url = |path: &str| format!("http://{addr}{path}");
    let pos = HttpSource {
        source: "pos-cloud".into(),
        url: url("/pos/transactions"),
        page_size: 2000,
        map: Some(map(
            EventKind::PosTransaction,
            &[
                ("store_code", "storeCode"),
                ("order_number", "orderNo"),
                ("line_no", "lineNo"),
                ("consumer_id", "memberId"),
                ("consumer_phone", "mobile"),
                ("sku_code", "skuCode"),
                ("sku_name", "skuName"),
                ("unit_price", "price"),
                ("quantity", "qty"),
                ("total_amount", "amount"),
                ("transaction_time_ms", "paidAt"),
            ],
            &[],
        )),
        ..HttpSource::default()
    };
    let crm = HttpSource {
        source: "crm".into(),
        url: url("/crm/retailers"),
        paging: Paging::UpdatedSince,
        records_field: "data".into(),
        since_param: "modifiedSince".into(),
        offset_param: "skip".into(),
        limit_param: "top".into(),
        updated_field: "lastModified".into(),
        page_size: 500,
        poll_interval_ms: 5000,
        map: Some(map(
            EventKind::Retailer,
            &[
                ("retailer_id", "custCode"),
                ("name", "custName"),
                ("region", "regionCode"),
                ("grade", "custLevel"),
                ("licence_no", "licenseNo"),
                ("latitude", "geo.lat"),
                ("longitude", "geo.lng"),
            ],
            &[],
        )),
        ..HttpSource::default()
    };
    let orders = HttpSource {
        source: "erp-orders".into(),
        url: url("/erp/allocation-orders"),
        records_field: "items".into(),
        cursor_param: "after".into(),
        next_cursor_field: "next".into(),
        has_more_field: "more".into(),
        limit_param: "pageSize".into(),
        map: Some(map(
            EventKind::AllocationOrder,
            &[
                ("order_id", "orderNo"),
                ("line_no", "itemNo"),
                ("from_id", "whseCode"),
                ("to_id", "custCode"),
                ("sku_code", "goodsCode"),
                ("quantity", "qty"),
                ("unit", "uom"),
                ("unit_price", "price"),
                ("order_date", "orderDate"),
            ],
            &[("CTN", Unit::Carton), ("PAK", Unit::Pack)],
        )),
        ..HttpSource::default()
    };
    let plans = HttpSource {
        source: "erp-plans".into(),
        url: url("/erp/production-plans"),
        poll_interval_ms: 10_000,
        map: Some(map(
            EventKind::ProductionPlan,
            &[
                ("plan_id", "planNo"),
                ("line_id", "lineCode"),
                ("sku_code", "matCode"),
                ("plan_date", "planDate"),
                ("planned_quantity", "planQty"),
                ("unit", "uom"),
            ],
            &[("CS", Unit::Case)],
        )),
        ..HttpSource::default()
    };
    let mut scm_map = map(
        EventKind::InventorySnapshot,
        &[
            ("warehouse_id", "warehouse"),
            ("sku_code", "sku"),
            ("quantity", "onHand"),
            ("unit", "uom"),
            ("as_of_ms", "countedAt"),
        ],
        &[("CTN", Unit::Carton)],
    );
    scm_map.utc_offset_minutes = 480;
    let scm = HttpSource {
        source: "scm".into(),
        url: url("/scm/inventory"),
        paging: Paging::UpdatedSince,
        records_field: String::new(),
        updated_field: "lastModified".into(),
        poll_interval_ms: 5000,
        map: Some(scm_map),
        ..HttpSource::default()
    };
    let mut wms_map = map(
        EventKind::InventorySnapshot,
        &[
            ("warehouse_id", "site"),
            ("sku_code", "item"),
            ("quantity", "qtyPacks"),
            ("as_of_ms", "ts"),
        ],
        &[],
    );
    wms_map.constants.insert("unit".into(), json!("pack"));
    let wms = HttpSource {
        source: "wms".into(),
        url: url("/wms/stock"),
        poll_interval_ms: 5000,
        map: Some(wms_map),
        ..HttpSource::default()
    };
    let production = HttpSource {
        source: "mes-production".into(),
        url: url("/mes/production"),
        page_size: 2000,
        poll_interval_ms: 5000,
        map: Some(map(
            EventKind::ProductionRecord,
            &[
                ("line_id", "lineCode"),
                ("sku_code", "matCode"),
                ("good_count", "goodQty"),
                ("reject_count", "rejectQty"),
                ("unit", "uom"),
                ("state", "status"),
                ("period_start_ms", "periodStart"),
                ("period_end_ms", "periodEnd"),
            ],
            &[("PAK", Unit::Pack)],
        )),
        ..HttpSource::default()
    };
    let capacity = HttpSource {
        source: "mes-capacity".into(),
        url: url("/mes/line-capacity"),
        poll_interval_ms: 60_000,
        map: Some(map(
            EventKind::LineCapacity,
            &[
                ("line_id", "lineCode"),
                ("rated_per_minute", "ratedSpeed"),
                ("unit", "uom"),
                ("valid_from", "validFrom"),
            ],
            &[("PAK", Unit::Pack)],
        )),
        ..HttpSource::default()
    };
    vec![pos, crm, orders, plans, scm, wms, production, capacity]
}

/// When the simulator's systems are the sources (simulator on, no HTTP
/// sources configured) and no stock routing is configured, the simulated
/// plant's: line `k` delivers to warehouse `k` (wrapping around the
/// warehouses), and stock counts come from the fused SCM and WMS counts.
/// Every process calls this, so edge and workers route alike.
pub fn inventory_defaults(cfg: &mut Config) {
    let (s, inv) = (&cfg.simulator, &mut cfg.inventory);
    let simulated = s.enabled && s.api_sources && cfg.edge.http.is_empty();
    if !simulated || !inv.line_warehouses.is_empty() {
        return;
    }
    for l in 0..u32::from(s.lines.max(1)) {
        inv.line_warehouses.insert(
            format!("line-{}", l + 1),
            format!("WH{:02}", l % s.warehouses.max(1) + 1),
        );
    }
    if inv.count_sources.is_empty() && cfg.edge.fusion.is_empty() {
        inv.count_sources = vec!["fusion:stock".into()];
    }
}

/// The fusion of the simulated SCM's and WMS's stock: the warehouse system
/// counts at the shelf and weighs three times as much.
pub fn fusion() -> Vec<FusionConfig> {
    vec![FusionConfig {
        name: "stock".into(),
        kind: EventKind::InventorySnapshot,
        value_field: "quantity".into(),
        key_fields: vec!["warehouse_id".into(), "sku_code".into()],
        rule: FusionRule::Weighted,
        max_age_ms: 2 * 3_600_000,
        members: vec![
            FusionMember {
                source: "scm".into(),
                when: BTreeMap::new(),
                weight: 1.0,
            },
            FusionMember {
                source: "wms".into(),
                when: BTreeMap::new(),
                weight: 3.0,
            },
        ],
        set: BTreeMap::new(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulator_sources_are_valid_config() {
        let mut cfg = Config::default();
        cfg.edge.http = sources("127.0.0.1:8091");
        cfg.edge.fusion = fusion();
        cfg.validate().unwrap();
    }

    /// `deploy/marktwin.example.toml` spells out these sources for users to
    /// copy; it must stay equal to what `marktwin up` configures.
    #[test]
    fn the_example_config_lists_the_simulator_sources() {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run under cargo test");
        let path = std::path::PathBuf::from(dir).join("../../deploy/marktwin.example.toml");
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.edge.http, sources(&cfg.simulator.listen));
        assert_eq!(cfg.edge.fusion, fusion());
        let mut simulated = Config::default();
        inventory_defaults(&mut simulated);
        assert_eq!(cfg.inventory, simulated.inventory);
    }
}
