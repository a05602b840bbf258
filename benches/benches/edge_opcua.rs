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

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use marktwin::app::{self, Parts};
use marktwin_core::Config;
use marktwin_edge::opcua::client;
use marktwin_edge::opcua::sim::PlantOpcua;
use marktwin_kafka::EmbeddedBroker;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{
    DataChangeNotification, MonitoredItemCreateRequest, NodeId, NotificationMessage,
    TimestampsToReturn,
};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are
    // fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process, MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

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

/// Counts data-change notifications and nothing else.
struct Count(Arc<AtomicU64>);

impl OnSubscriptionNotificationCore for Count {
    fn on_subscription_notification(&mut self, n: NotificationMessage, _: MonitoredItemMap<'_>) {
        for obj in n.notification_data.into_iter().flatten() {
            if let Some(dc) = obj.inner_as::<DataChangeNotification>() {
                let k = dc.monitored_items.as_ref().map_or(0, Vec::len);
                self.0.fetch_add(k as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Measures `count` over `secs` once it moves; prints the figures line.
async fn measure(count: impl Fn() -> u64, secs: u64, p99: impl Fn() -> Option<f64>) {
    let started = Instant::now();
    while count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no data within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm up: let the initial values and the first bursts pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0, w0) = (count(), cpu_secs(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, t1, wall) = (count(), cpu_secs(), w0.elapsed().as_secs_f64());
    println!(
        "FIGURES points_per_s={:.0} cpu_cores={:.3} rss_mib={:.1} p99_ms={}",
        (c1 - c0) as f64 / wall,
        (t1 - t0) / wall,
        peak_rss_mib(),
        p99().map_or("-".to_string(), |s| format!("{:.0}", s * 1000.0)),
    );
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
    let sub = session
        .create_subscription(
            Duration::from_millis(100),
            60,
            10,
            5_000,
            0,
            true,
            Count(count.clone()),
        )
        .await
        .expect("subscription");
    let items: Vec<MonitoredItemCreateRequest> = (0..points)
        .map(|i| NodeId::new(ns, format!("Bench.{i}")).into())
        .collect();
    for part in items.chunks(1_000) {
        session
            .create_monitored_items(sub, TimestampsToReturn::Both, part.to_vec())
            .await
            .expect("monitored items");
    }
    measure(|| count.load(Ordering::Relaxed), secs, || None).await;
}

/// One scrape of the edge's /metrics.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics");
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the bucket holding the 99th percentile.
fn p99_of(text: &str) -> Option<f64> {
    let name = "marktwin_edge_sample_to_stored_seconds_bucket{";
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| *le)
}

async fn edge(port: u16, bootstrap: String, points: usize, secs: u64, dir: &std::path::Path) {
    let mut srv =
        plant(points, dir).server_config("bench", &format!("opc.tcp://127.0.0.1:{port}/"));
    srv.trust_server_certificates = true;
    srv.publishing_interval_ms = 100;
    let mut cfg = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    cfg.kafka.brokers = bootstrap;
    cfg.edge.pos.enabled = false;
    cfg.edge.opcua.servers = vec![srv];
    cfg.validate().expect("config");
    let parts = Parts {
        embedded_broker: false,
        simulator: false,
        edge: true,
        worker: false,
    };
    let running = app::start(cfg, parts, "127.0.0.1:0").await.expect("edge");
    let addr = running.http_addr;
    let produced = move || metric(&scrape(addr), "marktwin_edge_records_produced_total{") as u64;
    measure(produced, secs, || p99_of(&scrape(addr))).await;
    running.shutdown().await;
}

/// Runs this bench binary again as `role`; returns its figures line.
fn child(role: &str, envs: &[(&str, String)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.env("MARKTWIN_BENCH_ROLE", role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("child");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("FIGURES "))
        .map(|l| l.trim_start_matches("FIGURES ").to_string())
        .unwrap_or_else(|| panic!("{role} printed no figures: {text}"))
}

fn field(fig: &str, key: &str) -> String {
    fig.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("-")
        .to_string()
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
        Ok("edge") => rt.block_on(edge(
            env_num("PORT", 0) as u16,
            std::env::var("BOOTSTRAP").expect("BOOTSTRAP"),
            points,
            secs,
            dir.path(),
        )),
        _ => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            let mut server = Command::new(std::env::current_exe().expect("exe"))
                .env("MARKTWIN_BENCH_ROLE", "server")
                .env("PORT", port.to_string())
                .env("POINTS", points.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("server");
            let out = server.stdout.take().expect("stdout");
            let mut lines = BufReader::new(out).lines();
            assert!(
                lines.any(|l| l.map(|l| l == "READY").unwrap_or(false)),
                "simulator did not start"
            );
            let cfg = Config {
                data_dir: dir.path().join("broker-data"),
                ..Config::default()
            };
            let broker = rt.block_on(EmbeddedBroker::start(&cfg)).expect("broker");
            let envs = [
                ("PORT", port.to_string()),
                ("POINTS", points.to_string()),
                ("SECS", secs.to_string()),
                ("BOOTSTRAP", broker.bootstrap()),
            ];
            eprintln!("baseline: async-opcua client counting notifications ...");
            let base = child("baseline", &envs);
            eprintln!("edge: marktwin edge to the telemetry topic ...");
            let full = child("edge", &envs);
            let _ = server.kill();
            let _ = server.wait();
            rt.block_on(broker.stop());

            println!();
            println!(
                "OPC UA -> Kafka: {points} points changing every 100 ms ({} points/s offered), {secs} s measured",
                points * 10
            );
            println!(
                "{:<34} {:>10} {:>10} {:>16} {:>9} {:>14}",
                "", "points/s", "CPU cores", "points/s/core", "peak MiB", "p99 to ack ms"
            );
            for (name, f) in [
                ("baseline (client decode, count)", &base),
                ("edge (to Kafka, acks=all)", &full),
            ] {
                let pps: f64 = field(f, "points_per_s").parse().unwrap_or(0.0);
                let cores: f64 = field(f, "cpu_cores").parse().unwrap_or(0.0);
                println!(
                    "{:<34} {:>10.0} {:>10.2} {:>16.0} {:>9} {:>14}",
                    name,
                    pps,
                    cores,
                    if cores > 0.0 { pps / cores } else { 0.0 },
                    field(f, "rss_mib"),
                    field(f, "p99_ms")
                );
            }
            println!(
                "goal: edge >= 100000 points/s on <= 1 core, <= 150 MiB, p99 < 250 ms (p99 is the upper bound of its histogram bucket)"
            );
        }
    }
}
