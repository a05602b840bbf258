//! OPC UA to Kafka: points per second per core, resident memory and p99
//! sample-to-acknowledgement latency of the edge, next to a baseline
//! measured in the same run.
//!
//! `cargo bench -p marktwin-benches --bench edge_opcua` (needs `tansu`, as
//! the tests do). Environment: `POINTS` (default 10,000 variables, each
//! changed every 100 ms by the simulator: 100,000 points/s offered),
//! `SECS` (measured window, default 20).
//!
//! Each part runs in its own process, so CPU time and memory are the
//! client's alone: the project's OPC UA simulator (async-opcua server), the
//! Tansu broker, then
//! - **baseline**: an async-opcua client subscribed to every point that
//!   only counts the notifications it decodes (the ceiling of any client);
//! - **edge**: `marktwin edge` reading the same points into the telemetry
//!   topic: conversion, envelope, JSON, produce with acks=all, ack.
//!
//! CPU is user + system time from /proc/self/stat; memory is the peak RSS
//! (VmHWM). Latency is from the sample's source timestamp to the broker's
//! acknowledgement, from the edge's histogram (upper bucket bound).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use marktwin_benches::{Ages, env_num, kafka_only, measure, measure_edge, report, run_parts};
use marktwin_edge::opcua::client;
use marktwin_edge::opcua::sim::PlantOpcua;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{
    DataChangeNotification, MonitoredItemCreateRequest, NodeId, NotificationMessage,
    TimestampsToReturn,
};

fn plant(points: usize, dir: &std::path::Path) -> PlantOpcua {
    PlantOpcua {
        lines: 0,
        bench_points: points,
        tick_ms: 100,
        seed: 1,
        pki_dir: dir.join("sim-pki"),
        max_items_per_subscription: 0,
    }
}

/// Counts data-change notifications and how old each sample is when it
/// arrives (from its source timestamp): the server's share of the latency.
struct Count(Arc<AtomicU64>, Arc<Ages>);

impl OnSubscriptionNotificationCore for Count {
    fn on_subscription_notification(&mut self, n: NotificationMessage, _: MonitoredItemMap<'_>) {
        let now = marktwin_core::now_ms();
        for obj in n.notification_data.into_iter().flatten() {
            if let Some(dc) = obj.inner_as::<DataChangeNotification>() {
                let items = dc.monitored_items.as_deref().unwrap_or_default();
                for item in items {
                    if let Some(t) = &item.value.source_timestamp {
                        self.1
                            .observe((now - t.as_chrono().timestamp_millis()) as f64 / 1000.0);
                    }
                }
                self.0.fetch_add(items.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn baseline(port: u16, points: usize, secs: u64, dir: &std::path::Path) {
    let mut srv =
        plant(points, dir).server_config("bench", &format!("opc.tcp://127.0.0.1:{port}/"));
    srv.trust_server_certificates = true;
    srv.pki_dir = Some(dir.join("client-pki"));
    let (session, event_loop) = client::connect(&srv, dir).await.expect("connect");
    let _loop = event_loop.spawn();
    assert!(session.wait_for_connection().await, "session");
    let ns = session
        .get_namespace_index(marktwin_edge::opcua::sim::NAMESPACE)
        .await
        .expect("namespace");
    let count = Arc::new(AtomicU64::new(0));
    let ages = Arc::new(Ages::default());
    let sub = session
        .create_subscription(
            Duration::from_millis(100),
            60,
            10,
            5_000,
            0,
            true,
            Count(count.clone(), ages.clone()),
        )
        .await
        .expect("subscription");
    // The edge's parameters for these nodes: every change (sampling 0),
    // room for bursts between publishes.
    let items: Vec<MonitoredItemCreateRequest> = (0..points)
        .map(|i| {
            let mut r: MonitoredItemCreateRequest = NodeId::new(ns, format!("Bench.{i}")).into();
            r.requested_parameters.sampling_interval = 0.0;
            r.requested_parameters.queue_size = 16;
            r
        })
        .collect();
    for part in items.chunks(1_000) {
        session
            .create_monitored_items(sub, TimestampsToReturn::Both, part.to_vec())
            .await
            .expect("monitored items");
    }
    measure(
        || count.load(Ordering::Relaxed),
        secs,
        || vec![("", ages.buckets())],
    )
    .await;
}

async fn edge(port: u16, bootstrap: String, points: usize, secs: u64, dir: &std::path::Path) {
    let mut srv =
        plant(points, dir).server_config("bench", &format!("opc.tcp://127.0.0.1:{port}/"));
    srv.trust_server_certificates = true;
    srv.publishing_interval_ms = 100;
    measure_edge(dir, bootstrap, secs, |c| c.edge.opcua.servers = vec![srv]).await;
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (like a filter) is ignored.
    let points = env_num("POINTS", 10_000) as usize;
    let secs = env_num("SECS", 20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    match std::env::var("MARKTWIN_BENCH_ROLE").as_deref() {
        Ok("server") => {
            let port = env_num("PORT", 0) as u16;
            rt.block_on(async {
                let _sim = plant(points, dir.path())
                    .start("127.0.0.1", port)
                    .expect("server");
                println!("READY");
                std::future::pending::<()>().await;
            });
        }
        Ok("baseline") => rt.block_on(baseline(
            env_num("PORT", 0) as u16,
            points,
            secs,
            dir.path(),
        )),
        Ok("kafka") => rt.block_on(kafka_only(
            std::env::var("BOOTSTRAP").expect("BOOTSTRAP"),
            points as u64,
            secs,
        )),
        Ok("edge") => rt.block_on(edge(
            env_num("PORT", 0) as u16,
            std::env::var("BOOTSTRAP").expect("BOOTSTRAP"),
            points,
            secs,
            dir.path(),
        )),
        _ => {
            let (base, kafka, full) = run_parts(&rt, points as u64, secs, dir.path());
            report(
                &format!(
                    "OPC UA -> Kafka: {points} points changing every 100 ms ({} points/s offered), {secs} s measured",
                    points * 10
                ),
                &[
                    ("baseline (client decode, count)", &base),
                    ("Kafka only (bare producer, acks=all)", &kafka),
                    ("edge (to Kafka, acks=all)", &full),
                ],
            );
        }
    }
}
