//! The OPC UA connector against the project's own simulator server
//! (async-opcua): a server that takes at most 1,000 monitored items per
//! subscription gets 2,500 points spread over three subscriptions, every
//! point delivered, and the simulated lines report Uncertain samples after
//! a start.

use std::collections::BTreeSet;
use std::time::Duration;

use marktwin_core::events::Quality;
use marktwin_edge::opcua::sim::PlantOpcua;
use marktwin_tests::{free_port, telemetry_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_spills_into_another_and_every_point_arrives() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let plant = PlantOpcua {
        lines: 2,
        bench_points: 2_500,
        tick_ms: 100,
        seed: 7,
        pki_dir: dir.path().join("sim-pki"),
        max_items_per_subscription: 1_000,
    };
    let mut srv = plant.server_config("sim", &format!("opc.tcp://127.0.0.1:{port}/"));
    srv.trust_server_certificates = true;
    srv.publishing_interval_ms = 100;
    let sim = plant.start("127.0.0.1", port).unwrap();

    let (broker, running, cfg) =
        marktwin_tests::start_edge(dir.path(), |c| c.edge.opcua.servers = vec![srv]).await;
    let mut ready = false;
    for _ in 0..600 {
        if running
            .readiness
            .report()
            .iter()
            .any(|(n, ok, why)| n == "source_opcua:sim" && *ok && why.contains("reads 2510 nodes"))
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{:?}", running.readiness.report());
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.shutdown().await;
    sim.stop();
    let envs = telemetry_on(broker.bootstrap(), cfg.topic_name("telemetry")).await;
    broker.stop().await;

    let mut lag: Vec<i64> = envs
        .iter()
        .map(|e| e.ingest_time_ms - e.payload.source_time_ms.unwrap_or(e.ingest_time_ms))
        .collect();
    lag.sort_unstable();
    eprintln!(
        "lag ms: p50 {} p90 {} p99 {} max {}",
        lag[lag.len() / 2],
        lag[lag.len() * 9 / 10],
        lag[lag.len() * 99 / 100],
        lag[lag.len() - 1]
    );
    let bench: BTreeSet<&str> = envs
        .iter()
        .filter(|e| e.payload.asset == "bench")
        .map(|e| e.payload.tag.as_str())
        .collect();
    let per_point = envs.iter().filter(|e| e.payload.asset == "bench").count() as f64 / 2_500.0;
    eprintln!(
        "{} readings; bench points seen {}, {per_point:.1} readings each",
        envs.len(),
        bench.len()
    );
    assert_eq!(
        bench.len(),
        2_500,
        "every point, across three subscriptions"
    );
    assert!(per_point >= 5.0, "points keep changing: {per_point}");

    let temp: Vec<Quality> = envs
        .iter()
        .filter(|e| e.payload.tag == "motor_temp")
        .map(|e| e.payload.quality)
        .collect();
    assert!(temp.contains(&Quality::Uncertain), "{temp:?}");
    let lines: BTreeSet<&str> = envs
        .iter()
        .filter(|e| e.payload.tag == "good_count")
        .map(|e| e.payload.asset.as_str())
        .collect();
    assert_eq!(lines, BTreeSet::from(["line-1", "line-2"]));
}
