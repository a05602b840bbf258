//! One path end to end, real all the way: the POS simulator over HTTP, the
//! edge poller, a real Tansu broker on a free loopback port, the worker, and
//! the board's SQL endpoint. The rows read back are compared with a batch
//! recomputation of the same input done by DataFusion SQL; the whole stack is
//! then restarted on the same data directory and must give the same rows
//! with the topic holding each record once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use marktwin::app::{self, Parts, Running};
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::config::TopicOverride;
use marktwin_core::events::{Envelope, EventKind, PosTransaction};
use marktwin_core::topics::Encoding;
use marktwin_edge::clean::{Cleaner, Outcome};
use marktwin_edge::pseudonym::Pseudonymiser;
use marktwin_edge::sim::{self, PosSim};
use marktwin_tests::{metric, read_topic, sql};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(240);

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    // A finite, fixed data set: 30 minutes of sales at 20 lines/s, in the
    // past, so all of it is released at once.
    let start = (marktwin_core::now_ms() / 3_600_000 - 3) * 3_600_000;
    // Only the POS source, on a port known up front.
    let port = marktwin_kafka::broker::free_port().unwrap();
    cfg.simulator.listen = format!("127.0.0.1:{port}");
    let mut pos = sim::sources(&cfg.simulator.listen).remove(0);
    pos.page_size = 1000;
    cfg.edge.http = vec![pos];
    cfg.simulator.modbus_listen = "127.0.0.1:0".into();
    cfg.simulator.opcua_listen = "127.0.0.1:0".into();
    cfg.simulator.start_ms = Some(start);
    cfg.simulator.end_ms = Some(start + 30 * 60_000);
    cfg.simulator.pos_lines_per_sec = 20.0;
    cfg.simulator.stores = 200;
    cfg.worker.publish_interval_ms = 200;
    cfg
}

/// The expected input: every record the simulator serves, mapped by the
/// edge's own mapping; the rejects counted apart; the clear-text phones.
struct Expected {
    good: Vec<marktwin_core::events::PosTransaction>,
    rejects: usize,
    phones: HashSet<String>,
}

fn expected(cfg: &Config) -> Expected {
    let sim = PosSim::new(&cfg.simulator, cfg.simulator.start_ms.unwrap());
    let pseudo = Arc::new(Pseudonymiser::from_config(cfg).unwrap());
    let src = &cfg.edge.http[0];
    let mut cleaner = Cleaner::new(cfg, &src.source, src.map.as_ref().unwrap(), pseudo, false);
    let mut e = Expected {
        good: Vec::new(),
        rejects: 0,
        phones: HashSet::new(),
    };
    for i in 0..sim.released(i64::MAX / 4) {
        let Some(raw) = sim.slot(i) else { continue };
        if let Some(p) = raw["mobile"].as_str() {
            e.phones.insert(p.to_owned());
        }
        match cleaner.clean(&raw, 0) {
            Outcome::Good(c) => {
                let env: Envelope<PosTransaction> = codec::decode_any(&c.bytes).unwrap();
                e.good.push(env.payload);
            }
            Outcome::Rejected(_) => e.rejects += 1,
            Outcome::Duplicate => panic!("the simulator repeats no sale"),
        }
    }
    e
}

/// Daily sales recomputed in batch by DataFusion SQL over all input lines.
async fn batch_daily_sales(
    cfg: &Config,
    lines: &[marktwin_core::events::PosTransaction],
) -> Vec<Value> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("t_ms", DataType::Int64, false),
        Field::new("store_code", DataType::Utf8, false),
        Field::new("sku_code", DataType::Utf8, false),
        Field::new("qty", DataType::Float64, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                lines.iter().map(|l| l.transaction_time_ms),
            )),
            Arc::new(StringArray::from_iter_values(
                lines.iter().map(|l| l.store_code.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                lines.iter().map(|l| l.sku_code.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                lines
                    .iter()
                    .map(|l| cfg.units.to_report(l.quantity, l.unit)),
            )),
            Arc::new(Float64Array::from_iter_values(
                lines.iter().map(|l| l.total_amount),
            )),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_batch("lines", batch).unwrap();
    let df = ctx
        .sql(
            "SELECT CAST(to_timestamp_millis(t_ms) AS DATE) AS day, store_code, sku_code, \
                    COUNT(*) AS lines, SUM(qty) AS quantity, SUM(amount) AS amount \
             FROM lines GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .await
        .unwrap();
    let batches = df.collect().await.unwrap();
    let mut buf = Vec::new();
    let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
    w.write_batches(&batches.iter().collect::<Vec<_>>())
        .unwrap();
    w.finish().unwrap();
    serde_json::from_slice(&buf).unwrap()
}

async fn wait_for_lines(running: &Running, want: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = sql(
            running,
            "SELECT COALESCE(SUM(lines), 0) AS n FROM pos_daily_sales",
        )
        .await;
        let n = v[0]["n"].as_u64().unwrap_or(0) as usize;
        if n >= want && running.readiness.is_ready() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} of {want} lines arrived; readiness {:?}",
            running.readiness.report()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A phone of `phones` written in clear anywhere in `rec`: every window of
/// eleven digits inside a run of digits is looked up in the set.
fn clear_text_phone(rec: &[u8], phones: &HashSet<String>) -> Option<String> {
    let mut start = None;
    for (i, b) in rec.iter().chain(std::iter::once(&b' ')).enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                for w in rec[s..i].windows(11) {
                    let w = std::str::from_utf8(w).unwrap_or_default();
                    if phones.contains(w) {
                        return Some(w.to_owned());
                    }
                }
                start = None;
            }
            _ => {}
        }
    }
    None
}

#[test]
fn the_phone_scan_finds_a_phone() {
    let phones: HashSet<String> = ["13812345678".to_owned()].into();
    assert_eq!(
        clear_text_phone(br#"{"mobile":"13812345678"}"#, &phones).as_deref(),
        Some("13812345678")
    );
    assert_eq!(
        clear_text_phone(b"x013812345678x", &phones).as_deref(),
        Some("13812345678")
    );
    assert_eq!(clear_text_phone(b"1381234567", &phones), None);
}

fn assert_rows_equal(got: &Value, want: &[Value]) {
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "row count");
    for (g, w) in got.iter().zip(want) {
        for k in ["day", "store_code", "sku_code", "lines"] {
            assert_eq!(g[k], w[k], "{k} in {g} vs {w}");
        }
        for k in ["quantity", "amount"] {
            let (a, b) = (g[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{k}: {a} vs {b} in {g}"
            );
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rdkafka=warn")
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_sales_flow_from_simulator_to_sql_exactly_once() {
    pos_sales_flow(Encoding::Json).await;
}

/// The same flow with the POS topic encoded as protobuf (`marktwin.v1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_sales_flow_with_protobuf_on_the_pos_topic() {
    pos_sales_flow(Encoding::Protobuf).await;
}

async fn pos_sales_flow(encoding: Encoding) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.topics.insert(
        "pos".into(),
        TopicOverride {
            encoding: Some(encoding),
            ..TopicOverride::default()
        },
    );
    let exp = expected(&cfg);
    assert!(
        exp.good.len() > 20_000 && exp.rejects > 0,
        "{} good, {} rejects",
        exp.good.len(),
        exp.rejects
    );
    let want = batch_daily_sales(&cfg, &exp.good).await;

    let query = "SELECT CAST(day AS VARCHAR) AS day, store_code, sku_code, lines, quantity, amount \
                 FROM pos_daily_sales ORDER BY day, store_code, sku_code";
    let running = app::start(cfg.clone(), Parts::ALL, "127.0.0.1:0")
        .await
        .unwrap();
    wait_for_lines(&running, exp.good.len()).await;
    let first = sql(&running, query).await;
    assert_rows_equal(&first, &want);

    // Every reject is in the dead-letter topic with its reason; no topic
    // holds a phone number in clear text.
    let bootstrap = running.bootstrap.clone();
    let pos_topic = cfg.topic_name("pos");
    let dlq_topic = cfg.topic_name("dead_letter");
    let (want_pos, want_dlq) = (exp.good.len(), exp.rejects);
    let (pos, dlq) = tokio::task::spawn_blocking(move || {
        (
            read_topic(&bootstrap, &pos_topic, want_pos),
            read_topic(&bootstrap, &dlq_topic, want_dlq),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        pos.len(),
        exp.good.len(),
        "the POS topic holds each good record once"
    );
    for rec in &pos {
        assert_eq!(Encoding::detect(&rec.payload), encoding);
        let env: Envelope<PosTransaction> = codec::decode(&rec.payload, encoding).unwrap();
        assert_eq!(env.kind, EventKind::PosTransaction);
    }
    assert_eq!(dlq.len(), exp.rejects, "every reject is dead-lettered");
    for d in &dlq {
        let v: Value = serde_json::from_slice(&d.payload).unwrap();
        assert!(
            !v["reason"].as_str().unwrap().is_empty() && !v["detail"].as_str().unwrap().is_empty(),
            "{v}"
        );
        assert_eq!(v["stage"], "edge");
    }
    for rec in pos.iter().chain(&dlq) {
        if let Some(p) = clear_text_phone(&rec.payload, &exp.phones) {
            panic!(
                "clear-text phone {p} in {}",
                String::from_utf8_lossy(&rec.payload)
            );
        }
    }

    running.shutdown().await;
}

/// The same, then everything restarted on the same data directory: the same
/// rows, and the topic still holds each record once.
///
/// This is the test that found Tansu deleting every record of a topic whose
/// `retention.ms` is -1 (see `marktwin_kafka::topics::FOREVER_MS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_sales_survive_a_restart_of_the_whole_stack() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let exp = expected(&cfg);
    let want = batch_daily_sales(&cfg, &exp.good).await;
    let query = "SELECT CAST(day AS VARCHAR) AS day, store_code, sku_code, lines, quantity, amount \
                 FROM pos_daily_sales ORDER BY day, store_code, sku_code";
    let want_pos = exp.good.len();
    let running = app::start(cfg.clone(), Parts::ALL, "127.0.0.1:0")
        .await
        .unwrap();
    wait_for_lines(&running, exp.good.len()).await;
    // Restart everything on the same data directory: the broker keeps its
    // topics, the edge resumes at its cursor, the worker rebuilds.
    running.shutdown().await;
    let running = app::start(cfg.clone(), Parts::ALL, "127.0.0.1:0")
        .await
        .unwrap();
    wait_for_lines(&running, exp.good.len()).await;
    // Give the edge a few polls to prove it adds nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = sql(&running, query).await;
    assert_rows_equal(&second, &want);
    let bootstrap = running.bootstrap.clone();
    let pos_topic = cfg.topic_name("pos");
    let pos = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &pos_topic, want_pos))
        .await
        .unwrap();
    assert_eq!(
        pos.len(),
        exp.good.len(),
        "the restarted edge repeated nothing"
    );
    running.shutdown().await;
}

/// The broker is stopped for longer than librdkafka's `message.timeout.ms`
/// while the simulator keeps releasing sales in real time: the edge spools
/// to disk, sends everything in order when the broker is back, and the
/// worker's table equals the batch recomputation (nothing lost, nothing
/// counted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_sales_survive_a_broker_outage_longer_than_the_message_timeout() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let now = marktwin_core::now_ms();
    // 30 s of history, then 25 s released in real time.
    cfg.simulator.start_ms = Some(now - 30_000);
    cfg.simulator.end_ms = Some(now + 25_000);
    cfg.simulator.pos_lines_per_sec = 300.0;
    cfg.edge.http[0].poll_interval_ms = 200;
    cfg.edge.spool.direct_timeout_ms = 2_000;
    cfg.edge.spool.fsync = "always".into();
    // Shorter than the outage below, so librdkafka gives up on what it holds.
    cfg.kafka
        .client
        .insert("message.timeout.ms".into(), "4000".into());
    cfg.kafka.embedded_port = marktwin_kafka::broker::free_port().unwrap();
    let exp = expected(&cfg);
    let want = batch_daily_sales(&cfg, &exp.good).await;

    let broker = marktwin_kafka::EmbeddedBroker::start(&cfg).await.unwrap();
    let mut app_cfg = cfg.clone();
    app_cfg.kafka.brokers = broker.bootstrap();
    let parts = Parts {
        embedded_broker: false,
        ..Parts::ALL
    };
    let running = app::start(app_cfg, parts, "127.0.0.1:0").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    broker.stop().await;
    let mut spooled_max = 0.0f64;
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        spooled_max = spooled_max.max(metric(running.http_addr, "marktwin_edge_spool_bytes").await);
    }
    assert!(
        spooled_max > 0.0,
        "the edge spooled while the broker was away"
    );
    let broker = marktwin_kafka::EmbeddedBroker::start(&cfg).await.unwrap();

    // Wait for the end of the data, the spool to drain and the worker to
    // have every line.
    tokio::time::sleep(Duration::from_millis(
        (cfg.simulator.end_ms.unwrap() - marktwin_core::now_ms()).max(0) as u64,
    ))
    .await;
    wait_for_lines(&running, exp.good.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let query = "SELECT CAST(day AS VARCHAR) AS day, store_code, sku_code, lines, quantity, amount \
                 FROM pos_daily_sales ORDER BY day, store_code, sku_code";
    assert_rows_equal(&sql(&running, query).await, &want);
    assert_eq!(
        metric(running.http_addr, "marktwin_edge_spool_bytes").await,
        0.0
    );

    let bootstrap = broker.bootstrap();
    let topic = cfg.topic_name("pos");
    let want_pos = exp.good.len();
    let pos = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, want_pos))
        .await
        .unwrap();
    let ids: HashSet<String> = pos
        .iter()
        .map(|r| {
            codec::decode_any::<Envelope<PosTransaction>>(&r.payload)
                .unwrap()
                .event_id
        })
        .collect();
    assert_eq!(
        ids.len(),
        exp.good.len(),
        "every good record reached the topic"
    );
    running.shutdown().await;
    broker.stop().await;
}
