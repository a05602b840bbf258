//! ERP exports dropped into a folder: a large CSV is imported across an edge
//! restart in the middle of the file, a JSON file and a JSON-lines file
//! beside it; bad rows go to the dead-letter topic naming file and row, an
//! unreadable file moves to `failed/` with its reason, a file still being
//! written (`.tmp`) is left alone. Each good row lands exactly once.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use marktwin::app::Running;
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::events::{AllocationOrder, Envelope, EventKind, Unit};
use marktwin_core::sources::{DropFolder, RecordMap};
use marktwin_tests::{read_topic, restart_edge, start_edge};
use serde_json::Value;

const ROWS: usize = 12_000;

fn folder(dir: &std::path::Path) -> DropFolder {
    DropFolder {
        source: "erp-export".into(),
        dir: dir.to_owned(),
        poll_interval_ms: 100,
        batch_size: 50,
        map: Some(RecordMap {
            kind: EventKind::AllocationOrder,
            fields: [
                ("order_id", "Order"),
                ("line_no", "Line"),
                ("from_id", "Warehouse"),
                ("to_id", "Customer"),
                ("sku_code", "Material"),
                ("quantity", "Qty"),
                ("unit", "UoM"),
                ("unit_price", "Price"),
                ("order_date", "Date"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            units: [("CAR".to_owned(), Unit::Carton)].into(),
            constants: Default::default(),
            pseudonymise: vec![],
            utc_offset_minutes: 0,
        }),
        ..DropFolder::default()
    }
}

async fn metrics(running: &Running) -> String {
    marktwin_tests::metrics_text(running.http_addr).await
}

fn progress(cfg: &Config) -> u64 {
    let p = cfg.data_dir.join("edge/cursors/erp-export.cursor");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["records"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_files_are_imported_once_with_bad_rows_dead_lettered() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();

    // A large CSV export with three bad rows: one field short, a quantity
    // that is not a number, a unit nobody knows.
    let mut csv = String::from("Order,Line,Warehouse,Customer,Material,Qty,UoM,Price,Date\n");
    for i in 0..ROWS {
        match i {
            100 => csv.push_str("SO100,1,WH01,R000001,SKU0001,3,CAR\n"),
            5_000 => csv.push_str("SO5000,1,WH01,R000001,SKU0001,three,CAR,250,2026-01-05\n"),
            9_000 => csv.push_str("SO9000,1,WH01,R000001,SKU0001,3,BALE,250,2026-01-05\n"),
            _ => writeln!(
                csv,
                "SO{i},1,WH0{},R{:06},SKU{:04},{},CAR,250.0,2026-01-05",
                i % 3 + 1,
                i % 97 + 1,
                i % 40 + 1,
                i % 9 + 1
            )
            .unwrap(),
        }
    }
    std::fs::write(drop.join("orders-2026-01-05.csv.tmp"), &csv).unwrap();
    std::fs::rename(
        drop.join("orders-2026-01-05.csv.tmp"),
        drop.join("orders-2026-01-05.csv"),
    )
    .unwrap();
    std::fs::write(
        drop.join("late.json"),
        r#"{"records":[{"Order":"J1","Line":1,"Warehouse":"WH01","Customer":"R000002","Material":"SKU0002","Qty":2,"UoM":"carton","Price":200,"Date":"20260106"}]}"#,
    )
    .unwrap();
    std::fs::write(
        drop.join("more.jsonl"),
        "{\"Order\":\"L1\",\"Line\":1,\"Warehouse\":\"WH02\",\"Customer\":\"R000003\",\"Material\":\"SKU0003\",\"Qty\":1,\"UoM\":\"CAR\",\"Price\":250,\"Date\":\"2026-01-07\"}\nnot json\n",
    )
    .unwrap();
    std::fs::write(drop.join("broken.json"), "{\"records\": [").unwrap();
    std::fs::write(drop.join("still-writing.csv.tmp"), "Order\n").unwrap();
    // The small files are newer than the large one, so it is imported first
    // (files go oldest first), whatever the file system's time resolution.
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for f in ["late.json", "more.jsonl", "broken.json"] {
        std::fs::File::options()
            .write(true)
            .open(drop.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }

    let src = folder(&drop);
    let setup = |cfg: &mut Config| cfg.edge.drop_folders = vec![src.clone()];
    let (broker, running, cfg) = start_edge(dir.path(), setup).await;

    // Stop the edge in the middle of the big file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while progress(&cfg) < 1_000 {
        assert!(tokio::time::Instant::now() < deadline, "import started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
    let at_stop = progress(&cfg);
    assert!(
        at_stop > 0 && (at_stop as usize) < ROWS,
        "stopped inside the file: {at_stop} of {ROWS} rows"
    );

    let running = restart_edge(&cfg, broker.bootstrap()).await;
    // Done when the second run reports all four files finished (the
    // large one resumed, three more).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let text = loop {
        let text = metrics(&running).await;
        let count = |outcome: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("marktwin_edge_files_total")
                        && l.contains(&format!(r#"outcome="{outcome}""#))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if count("done") == 3 && count("failed") == 1 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "files imported in time: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for f in [
        "done/orders-2026-01-05.csv",
        "done/late.json",
        "done/more.jsonl",
        "failed/broken.json",
    ] {
        assert!(drop.join(f).exists(), "{f}");
    }
    running.shutdown().await;

    // Every good row once.
    let good = ROWS - 3 + 1 + 1;
    let (b, t) = (broker.bootstrap(), cfg.topic_name("allocation_orders"));
    let recs = tokio::task::spawn_blocking(move || read_topic(&b, &t, good))
        .await
        .unwrap();
    let orders: Vec<Envelope<AllocationOrder>> = recs
        .iter()
        .map(|r| codec::decode_any(&r.payload).unwrap())
        .collect();
    let ids: HashSet<&str> = orders.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(orders.len(), good, "each good row once");
    assert_eq!(ids.len(), good);
    assert!(
        orders
            .iter()
            .any(|o| o.payload.order_id == "J1" && o.payload.unit == Unit::Carton)
    );

    // Bad rows and the broken file on the dead-letter topic.
    let (b, t) = (broker.bootstrap(), cfg.topic_name("dead_letter"));
    let dlq = tokio::task::spawn_blocking(move || read_topic(&b, &t, 5))
        .await
        .unwrap();
    let letters: Vec<Value> = dlq
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let details: Vec<String> = letters
        .iter()
        .map(|v| format!("{} {}", v["reason"], v["detail"]))
        .collect();
    assert_eq!(letters.len(), 5, "{details:#?}");
    for needle in [
        "row 102",
        "`Qty` is \\\"three\\\"",
        "`UoM` is \\\"BALE\\\"",
        "more.jsonl line 2",
        "broken.json",
    ] {
        assert!(
            details.iter().any(|d| d.contains(needle)),
            "{needle} in {details:#?}"
        );
    }
    assert!(letters.iter().all(|v| v["source"] == "erp-export"));
    let reason = std::fs::read_to_string(drop.join("failed/broken.json.reason")).unwrap();
    assert!(reason.contains("not a JSON document"), "{reason}");
    assert!(
        drop.join("still-writing.csv.tmp").exists(),
        "a .tmp file is left alone"
    );

    // Counts per reason in metrics (of the second run).
    assert!(
        text.lines()
            .any(|l| l.starts_with("marktwin_edge_records_rejected_total")
                && l.contains(r#"source="erp-export""#)
                && l.contains(r#"reason="unreadable_file""#)),
        "{text}"
    );
    broker.stop().await;
}
