//! The edge starts while the broker is away, spools what it reads, and is
//! stopped with records still in the spool. The broker comes up; the edge
//! is started again on the same data directory and sends every spooled
//! record, once, before anything new.

use std::collections::HashSet;
use std::time::Duration;

use marktwin::app;
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::events::{Envelope, TelemetryReading};
use marktwin_edge::modbus::sim::{self as modbus_sim, PlantSim};
use marktwin_edge::spool::{Spool, SpoolConfig};
use marktwin_kafka::EmbeddedBroker;
use marktwin_tests::{EDGE_ONLY, free_port, metric, telemetry_on};

/// The event ids waiting in the edge's spool.
fn spooled(cfg: &Config) -> Vec<String> {
    let dir = cfg.data_dir.join("spool").join("edge");
    let mut spool = Spool::open(&dir, SpoolConfig::from_config(&cfg.edge.spool)).unwrap();
    let (entries, _) = spool.peek(usize::MAX).unwrap();
    entries
        .iter()
        .map(|e| {
            let env: Envelope<TelemetryReading> = codec::decode_any(&e.value).unwrap();
            env.event_id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_survive_an_edge_restart_and_reach_the_broker_once() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let mut cfg = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    cfg.kafka.brokers = format!("127.0.0.1:{broker_port}");
    cfg.kafka.embedded_port = broker_port;
    cfg.edge.spool.direct_timeout_ms = 300;
    cfg.edge.spool.fsync = "always".into();

    // A Modbus plant to read, in this process.
    let (stop_sim, sim_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let plant = PlantSim::new(marktwin_core::now_ms(), 1);
    let mut dev = plant.device("plant", &addr);
    dev.poll_interval_ms = 100;
    tokio::spawn(modbus_sim::serve(listener, plant, sim_rx));
    cfg.edge.modbus.devices = vec![dev];
    cfg.validate().unwrap();

    // Broker away: the edge starts anyway and spools.
    let running = app::start(cfg.clone(), EDGE_ONLY, "127.0.0.1:0")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.shutdown().await;
    let waiting = spooled(&cfg);
    eprintln!("{} readings spooled when the edge stopped", waiting.len());
    assert!(
        waiting.len() >= 50,
        "the edge spooled while the broker was away"
    );

    // Broker up, edge restarted on the same data directory, source gone:
    // only the spool has anything to send.
    let _ = stop_sim.send(true);
    cfg.edge.modbus.devices.clear();
    let broker = EmbeddedBroker::start(&cfg).await.unwrap();
    let running = app::start(cfg.clone(), EDGE_ONLY, "127.0.0.1:0")
        .await
        .unwrap();
    let mut drained = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if metric(running.http_addr, "marktwin_edge_spool_bytes").await == 0.0 {
            drained = true;
            break;
        }
    }
    running.shutdown().await;
    assert!(drained, "the spool drained after the restart");
    let envs = telemetry_on(broker.bootstrap(), cfg.topic_name("telemetry")).await;
    broker.stop().await;
    let on_topic: HashSet<&str> = envs.iter().map(|e| e.event_id.as_str()).collect();
    let missing = waiting
        .iter()
        .filter(|id| !on_topic.contains(id.as_str()))
        .count();
    assert_eq!(missing, 0, "every spooled reading is on the topic");
    assert_eq!(envs.len(), waiting.len(), "and nothing else, once");
}
