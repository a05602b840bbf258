//! The inventory twin end to end: ERP order exports and warehouse counts
//! dropped as files, the edge writing them to their topics and once more to
//! the `stock` topic keyed by stock region, the inventory worker, the
//! compacted `twin` and `alerts` topics and the views that read them back
//! into SQL tables. A scripted breach of the stock-cover bounds raises a
//! `cover_low` alert, then a `cover_high` one, and clears when cover is back
//! within bounds: a tombstone on the alerts topic. The whole process is
//! restarted in the middle; the alert survives the restart and still
//! clears.

use std::path::Path;
use std::time::Duration;

use marktwin::app::{self, Parts, Running};
use marktwin_core::Config;
use marktwin_core::events::{EventKind, StateChange};
use marktwin_core::sources::{DropFolder, RecordMap};
use marktwin_core::topics::id;
use marktwin_tests::{read_topic, sql};
use serde_json::{Value, json};

const DAY: i64 = 86_400_000;
const H: i64 = 3_600_000;
const EDGE_AND_WORKER: Parts = Parts {
    embedded_broker: false,
    simulator: false,
    edge: true,
    worker: true,
};

fn folder(dir: &Path, source: &str, kind: EventKind) -> DropFolder {
    DropFolder {
        source: source.into(),
        dir: dir.join(source),
        poll_interval_ms: 100,
        map: Some(RecordMap {
            kind,
            fields: Default::default(),
            units: Default::default(),
            constants: Default::default(),
            pseudonymise: vec![],
            utc_offset_minutes: 0,
        }),
        ..DropFolder::default()
    }
}

/// Drops `records` as a JSON-lines file into `source`'s folder, written
/// under a temporary name first so the edge never reads half a file.
fn drop_file(cfg: &Config, source: &str, name: &str, records: &[Value]) {
    let dir = cfg.data_dir.join(source);
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

fn order(no: &str, warehouse: &str, packs: f64, at: i64) -> Value {
    json!({"order_id": no, "line_no": 1, "from_id": warehouse, "to_id": "R000001",
           "sku_code": "SKU1", "quantity": packs, "unit": "pack", "unit_price": 10.0,
           "order_date": day(at)})
}

fn count(warehouse: &str, cartons: f64, at: i64) -> Value {
    json!({"warehouse_id": warehouse, "sku_code": "SKU1", "quantity": cartons,
           "unit": "carton", "as_of_ms": at})
}

/// Polls `q` until `done` accepts its rows; panics after two minutes with
/// the last rows.
async fn wait_rows(running: &Running, q: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let within = Duration::from_secs(120);
    marktwin_tests::wait_rows(running, q, within, |r| {
        if done(r) {
            Ok(())
        } else {
            Err(format!("still {r:?}"))
        }
    })
    .await
}

const ALERTS: &str =
    "SELECT region, sku_code, alert, cover_days, bound_days FROM twin_stock_alerts";
const COVER: &str =
    "SELECT region, sku_code, on_hand, demand_per_day, cover_days, status FROM twin_stock_cover";

fn alert_is(rows: &[Value], alert: &str, days: f64) -> bool {
    rows.len() == 1
        && rows[0]["alert"] == alert
        && rows[0]["region"] == "north"
        && (rows[0]["cover_days"].as_f64().unwrap_or(f64::NAN) - days).abs() < 1e-9
}

/// The alerts topic's records for the key of north/SKU1, in order: the
/// alert of each, `None` for a tombstone.
fn alert_history(cfg: &Config, want: usize) -> Vec<Option<String>> {
    let topic = cfg.topic_name(id::ALERTS);
    read_topic(&cfg.kafka.brokers, &topic, want)
        .into_iter()
        .filter(|r| r.key == b"twin_stock_alerts/north/SKU1")
        .map(|r| {
            r.value.map(|v| {
                let c: StateChange = serde_json::from_slice(&v).expect("a state change");
                assert_eq!(c.operator, "inventory");
                c.row["alert"].as_str().unwrap().to_owned()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_cover_breach_raises_an_alert_that_clears_when_it_ends() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, broker) = marktwin_tests::config_with_broker(dir.path()).await;
    cfg.edge.drop_folders = vec![
        folder(dir.path(), "erp-orders", EventKind::AllocationOrder),
        folder(dir.path(), "wms-counts", EventKind::InventorySnapshot),
    ];
    // Two warehouses make one stock region.
    let inv = &mut cfg.inventory;
    inv.regions.insert("WH1".into(), "north".into());
    inv.regions.insert("WH2".into(), "north".into());
    inv.demand_days = 2;
    inv.cover_min_days = 1.0;
    inv.cover_max_days = 10.0;
    cfg.worker.publish_interval_ms = 200;
    cfg.worker.checkpoint.interval_ms = 500;
    cfg.validate().expect("valid config");
    let running = app::start(cfg.clone(), EDGE_AND_WORKER, "127.0.0.1:0")
        .await
        .expect("edge and worker");

    // Day d (yesterday, UTC): two days of orders before it, 100 packs a
    // day from the region; counted at 23:00 the evening before at 150
    // packs. Today in the partition is the day before d, so the demand
    // window holds day d-2 only: 50 packs a day, 3 days of cover.
    let d = (marktwin_core::now_ms() / DAY - 1) * DAY;
    drop_file(
        &cfg,
        "erp-orders",
        "orders-1.jsonl",
        &[
            order("A", "WH1", 60.0, d - 2 * DAY),
            order("B", "WH2", 40.0, d - 2 * DAY),
            order("C", "WH1", 100.0, d - DAY),
        ],
    );
    drop_file(
        &cfg,
        "wms-counts",
        "counts-1.jsonl",
        &[count("WH1", 10.0, d - H), count("WH2", 5.0, d - H)],
    );
    let rows = wait_rows(&running, COVER, |r| {
        r.len() == 1 && r[0]["status"] == "ok" && r[0]["cover_days"] == 3.0
    })
    .await;
    assert_eq!(rows[0]["on_hand"], 150.0);
    assert_eq!(rows[0]["demand_per_day"], 50.0);
    assert!(sql(&running, ALERTS).await.as_array().unwrap().is_empty());

    // An order on day d takes 80 packs out of WH1 and makes today day d:
    // 70 packs against 100 a day is 0.7 days, below the 1-day bound.
    drop_file(
        &cfg,
        "erp-orders",
        "orders-2.jsonl",
        &[order("D", "WH1", 80.0, d)],
    );
    let rows = wait_rows(&running, ALERTS, |r| alert_is(r, "cover_low", 0.7)).await;
    assert_eq!(rows[0]["bound_days"], 1.0);
    // The twin and alerts topics have views of their own: the inventory
    // row may come a moment after the alert.
    let want = json!([
        {"warehouse_id": "WH1", "on_hand": 20.0, "counted": 100.0, "moved_out": 80.0},
        {"warehouse_id": "WH2", "on_hand": 50.0, "counted": 50.0, "moved_out": 0.0},
    ]);
    wait_rows(
        &running,
        "SELECT warehouse_id, on_hand, counted, moved_out FROM twin_inventory ORDER BY warehouse_id",
        |r| want.as_array().is_some_and(|w| w.as_slice() == r),
    )
    .await;

    // A restart of the whole process: the alert is restored, not lost.
    running.shutdown().await;
    let running = app::start(cfg.clone(), EDGE_AND_WORKER, "127.0.0.1:0")
        .await
        .expect("edge and worker again");
    wait_rows(&running, ALERTS, |r| alert_is(r, "cover_low", 0.7)).await;

    // A recount of 2,000 packs at WH1: 20.5 days, above the 10-day bound.
    drop_file(
        &cfg,
        "wms-counts",
        "counts-2.jsonl",
        &[count("WH1", 200.0, d + 2 * H)],
    );
    wait_rows(&running, ALERTS, |r| alert_is(r, "cover_high", 20.5)).await;

    // Another recount, 400 packs: 4.5 days, within bounds; the alert clears.
    drop_file(
        &cfg,
        "wms-counts",
        "counts-3.jsonl",
        &[count("WH1", 40.0, d + 3 * H)],
    );
    wait_rows(&running, ALERTS, <[Value]>::is_empty).await;
    wait_rows(&running, COVER, |r| {
        r.len() == 1 && r[0]["status"] == "ok" && r[0]["cover_days"] == 4.5
    })
    .await;
    running.shutdown().await;

    // What a subscriber of the alerts topic saw for this key: raised low,
    // then high, then cleared, the last record a tombstone.
    let history = alert_history(&cfg, 3);
    let mut distinct = history.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [Some("cover_low".into()), Some("cover_high".into()), None],
        "{history:?}"
    );
    drop(broker);
}
