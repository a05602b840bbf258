//! marktwin-board: the HTTP face of a marktwin process.
//!
//! [`router`] serves, for every service:
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: every readiness check with its reason (503 until all pass);
//! - `GET /metrics`: Prometheus text format;
//!
//! and, where tables are registered:
//! - `GET /api/sql?q=SELECT…[&format=json|csv]` and `POST /api/sql` (the
//!   query as the body): read-only SQL over the live state tables, limited in
//!   time (`board.query_timeout_ms`) and rows (`board.max_rows`), with errors
//!   that say which limit was hit;
//! - `GET /api/tables`: the tables and their row counts.

pub mod error;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use marktwin_core::config::BoardConfig;
use marktwin_core::health::Readiness;
use marktwin_core::metrics as m;
use marktwin_state::SnapshotTable;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use serde::Deserialize;
use serde_json::json;

pub use error::{Error, Result};

/// Board metrics.
#[derive(Clone)]
pub struct BoardMetrics {
    requests: IntCounterVec,
    query: HistogramVec,
}

impl BoardMetrics {
    /// Registers the board metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(m::BOARD_REQUESTS_TOTAL, "API requests answered."),
            &["route", "status"],
        )?;
        let query = HistogramVec::new(
            HistogramOpts::new(
                m::BOARD_QUERY_DURATION_SECONDS,
                "SQL query time, planning to last row.",
            ),
            &["status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(query.clone()))?;
        Ok(BoardMetrics { requests, query })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct BoardState {
    ctx: SessionContext,
    tables: Vec<Arc<SnapshotTable>>,
    registry: Registry,
    readiness: Readiness,
    cfg: BoardConfig,
    metrics: BoardMetrics,
}

impl BoardState {
    /// State serving `tables` (registered under their names), metrics from
    /// `registry` and readiness from `readiness`.
    pub fn new(
        cfg: BoardConfig,
        tables: Vec<Arc<SnapshotTable>>,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<Self> {
        let ctx = SessionContext::new();
        for t in &tables {
            ctx.register_table(t.name(), t.clone())?;
        }
        let metrics = BoardMetrics::register(&registry)?;
        Ok(BoardState {
            ctx,
            tables,
            registry,
            readiness,
            cfg,
            metrics,
        })
    }
}

/// The HTTP routes.
pub fn router(state: BoardState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/tables", get(tables))
        .route("/api/sql", get(sql_get).post(sql_post))
        .with_state(state)
}

async fn readyz(State(s): State<BoardState>) -> Response {
    let checks: Vec<_> = s
        .readiness
        .report()
        .into_iter()
        .map(|(name, ready, reason)| json!({"check": name, "ready": ready, "reason": reason}))
        .collect();
    let ready = s.readiness.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

async fn metrics(State(s): State<BoardState>) -> Response {
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&s.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, enc.format_type().to_owned())], buf).into_response()
}

async fn tables(State(s): State<BoardState>) -> Response {
    let list: Vec<_> = s
        .tables
        .iter()
        .map(|t| {
            let cols: Vec<_> = t
                .schema_ref()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect();
            json!({"name": t.name(), "rows": t.rows(), "columns": cols})
        })
        .collect();
    Json(json!({"tables": list})).into_response()
}

#[derive(Deserialize)]
struct SqlQuery {
    q: Option<String>,
    format: Option<String>,
}

async fn sql_get(State(s): State<BoardState>, Query(q): Query<SqlQuery>) -> Response {
    let Some(sql) = q.q else {
        return error(
            &s,
            StatusCode::BAD_REQUEST,
            "missing query parameter `q` (the SQL text)".into(),
        );
    };
    run_sql(&s, &sql, q.format.as_deref()).await
}

async fn sql_post(
    State(s): State<BoardState>,
    Query(q): Query<SqlQuery>,
    body: String,
) -> Response {
    run_sql(&s, &body, q.format.as_deref()).await
}

fn error(s: &BoardState, code: StatusCode, msg: String) -> Response {
    s.metrics
        .requests
        .with_label_values(&["/api/sql", code.as_str()])
        .inc();
    (code, Json(json!({"error": msg}))).into_response()
}

async fn run_sql(s: &BoardState, sql: &str, format: Option<&str>) -> Response {
    let format = match format.unwrap_or("json") {
        f @ ("json" | "csv") => f,
        other => {
            return error(
                s,
                StatusCode::BAD_REQUEST,
                format!("format `{other}` is not supported; allowed: json, csv"),
            );
        }
    };
    let started = Instant::now();
    let limit = s.cfg.max_rows;
    let timeout = Duration::from_millis(s.cfg.query_timeout_ms);
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let run = async {
        let df = s.ctx.sql_with_options(sql, opts).await?;
        // One row more than allowed tells us the result was too large
        // without materialising all of it.
        df.limit(0, Some(limit + 1))?.collect().await
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let elapsed = started.elapsed().as_secs_f64();
    let batches = match outcome {
        Err(_) => {
            s.metrics
                .query
                .with_label_values(&["timeout"])
                .observe(elapsed);
            return error(
                s,
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "query ran longer than board.query_timeout_ms ({} ms)",
                    s.cfg.query_timeout_ms
                ),
            );
        }
        Ok(Err(e)) => {
            s.metrics
                .query
                .with_label_values(&["error"])
                .observe(elapsed);
            return error(s, StatusCode::BAD_REQUEST, e.to_string());
        }
        Ok(Ok(b)) => b,
    };
    s.metrics.query.with_label_values(&["ok"]).observe(elapsed);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > limit {
        return error(
            s,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("result has more than board.max_rows ({limit}) rows; add a LIMIT or aggregate"),
        );
    }
    match encode(&batches, format) {
        Ok((ctype, body)) => {
            s.metrics
                .requests
                .with_label_values(&["/api/sql", "200"])
                .inc();
            ([(header::CONTENT_TYPE, ctype)], Body::from(body)).into_response()
        }
        Err(e) => error(s, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn encode(batches: &[RecordBatch], format: &str) -> Result<(&'static str, Vec<u8>)> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut buf = Vec::new();
    if format == "csv" {
        let mut w = datafusion::arrow::csv::Writer::new(&mut buf);
        for b in refs {
            w.write(b)?;
        }
        drop(w);
        return Ok(("text/csv", buf));
    }
    let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
    w.write_batches(&refs)?;
    w.finish()?;
    if buf.is_empty() {
        buf.extend_from_slice(b"[]");
    }
    Ok(("application/json", buf))
}

/// A future that completes on Ctrl-C or SIGTERM: the one shutdown signal
/// every service waits on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use marktwin_core::config::UnitsConfig;
    use marktwin_core::events::{PosTransaction, Unit};
    use marktwin_state::DailySales;
    use tower::ServiceExt;

    fn state(max_rows: usize) -> BoardState {
        let mut sales = DailySales::new(UnitsConfig::default(), 0);
        for (store, amount) in [("S1", 10.0), ("S2", 20.0), ("S3", 30.0)] {
            sales.apply(&PosTransaction {
                store_code: store.into(),
                order_number: "O".into(),
                line_no: 1,
                consumer_id: None,
                consumer_phone: None,
                sku_code: "K".into(),
                sku_name: "K".into(),
                unit_price: amount,
                quantity: 1.0,
                unit: Unit::Pack,
                total_amount: amount,
                transaction_time_ms: 0,
            });
        }
        let t = Arc::new(SnapshotTable::new("pos_daily_sales", DailySales::schema()));
        t.publish(sales.to_batches().unwrap());
        let cfg = BoardConfig {
            max_rows,
            ..BoardConfig::default()
        };
        let readiness = Readiness::default();
        readiness.set("state", true, "test");
        BoardState::new(cfg, vec![t], Registry::new(), readiness).unwrap()
    }

    async fn get(s: BoardState, uri: &str) -> (StatusCode, String) {
        let resp = router(s)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (code, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn sql_returns_json_rows() {
        let (code, body) = get(state(100), "/api/sql?q=SELECT%20store_code,%20amount%20FROM%20pos_daily_sales%20ORDER%20BY%20amount%20DESC").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!([{"store_code":"S3","amount":30.0},{"store_code":"S2","amount":20.0},{"store_code":"S1","amount":10.0}])
        );
    }

    #[tokio::test]
    async fn sql_returns_csv() {
        let (code, body) = get(
            state(100),
            "/api/sql?format=csv&q=SELECT%20store_code%20FROM%20pos_daily_sales%20ORDER%20BY%201",
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "store_code\nS1\nS2\nS3\n");
    }

    #[tokio::test]
    async fn row_limit_and_bad_sql_and_writes_are_clear_errors() {
        let (code, body) = get(state(2), "/api/sql?q=SELECT%20*%20FROM%20pos_daily_sales").await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("board.max_rows (2)"), "{body}");
        let (code, body) = get(
            state(2),
            "/api/sql?q=SELECT%20nope%20FROM%20pos_daily_sales",
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("nope"), "{body}");
        let (code, _) = get(state(2), "/api/sql?q=DROP%20TABLE%20pos_daily_sales").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, body) = get(state(2), "/api/sql").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("`q`"), "{body}");
    }

    #[tokio::test]
    async fn health_ready_metrics_tables() {
        let s = state(10);
        assert_eq!(get(s.clone(), "/healthz").await.0, StatusCode::OK);
        let (code, body) = get(s.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let _ = get(s.clone(), "/api/sql?q=SELECT%201").await;
        let (code, body) = get(s.clone(), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("marktwin_board_requests_total"), "{body}");
        let (_, body) = get(s.clone(), "/api/tables").await;
        assert!(body.contains(r#""rows":3"#), "{body}");
        s.readiness.set("broker", false, "unreachable");
        let (code, body) = get(s, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("unreachable"), "{body}");
    }
}
