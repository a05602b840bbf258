//! Modbus TCP to Kafka: points per second per core, resident memory and
//! p99 sample-to-acknowledgement latency of the edge, next to a baseline
//! measured in the same run.
//!
//! `cargo bench -p marktwin-benches --bench edge_modbus` (needs `tansu`).
//! Environment: `POINTS` (default 10,000 uint16 input registers, each polled
//! every 100 ms: 100,000 points/s asked for), `SECS` (default 20).
//!
//! Each part runs in its own process: the project's Modbus simulator
//! (tokio-modbus server) with a block of registers that change every
//! 100 ms, the Tansu broker, then
//! - **baseline**: a tokio-modbus client reading the block every 100 ms in
//!   125-register requests and counting registers (the protocol's ceiling
//!   for one connection);
//! - **edge**: `marktwin edge` polling the same registers as 10,000 tags
//!   every 100 ms into the telemetry topic: decode, envelope, JSON,
//!   produce with acks=all, ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use marktwin_benches::{env_num, kafka_only, measure, measure_edge, report, run_parts};
use marktwin_edge::modbus::sim::{self as modbus_sim, BENCH_BASE, PlantSim};
use tokio_modbus::client::{Reader, tcp};

fn plant(points: u16) -> PlantSim {
    PlantSim::new(marktwin_core::now_ms(), 0).with_bench_registers(points)
}

async fn baseline(port: u16, points: u16, secs: u64) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut ctx = tcp::connect(addr).await.expect("connect");
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let poll = async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let mut start = 0u16;
            while start < points {
                let n = (points - start).min(125);
                if let Ok(Ok(regs)) = ctx.read_input_registers(BENCH_BASE + start, n).await {
                    counter.fetch_add(regs.len() as u64, Ordering::Relaxed);
                }
                start += n;
            }
        }
    };
    tokio::select! {
        _ = poll => {}
        _ = measure(|| count.load(Ordering::Relaxed), secs, Vec::new) => {}
    }
}

fn main() {
    let points = env_num("POINTS", 10_000).min(60_000) as u16;
    let secs = env_num("SECS", 20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    match std::env::var("MARKTWIN_BENCH_ROLE").as_deref() {
        Ok("server") => rt.block_on(async {
            let port = env_num("PORT", 0) as u16;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            let (_keep, rx) = tokio::sync::watch::channel(false);
            println!("READY");
            modbus_sim::serve(listener, plant(points), rx).await;
        }),
        Ok("baseline") => rt.block_on(baseline(env_num("PORT", 0) as u16, points, secs)),
        Ok("kafka") => rt.block_on(kafka_only(
            std::env::var("BOOTSTRAP").expect("BOOTSTRAP"),
            u64::from(points),
            secs,
        )),
        Ok("edge") => rt.block_on(async {
            let port = env_num("PORT", 0);
            let mut dev = plant(points).device("bench", &format!("127.0.0.1:{port}"));
            dev.poll_interval_ms = 100;
            dev.max_gap = 0;
            let bootstrap = std::env::var("BOOTSTRAP").expect("BOOTSTRAP");
            measure_edge(dir.path(), bootstrap, secs, |c| {
                c.edge.modbus.devices = vec![dev]
            })
            .await
        }),
        _ => {
            let (base, kafka, full) = run_parts(&rt, points as u64, secs, dir.path());
            report(
                &format!(
                    "Modbus TCP -> Kafka: {points} registers polled every 100 ms ({} points/s asked), {secs} s measured",
                    u64::from(points) * 10
                ),
                &[
                    ("baseline (raw reads, count)", &base),
                    ("Kafka only (bare producer, acks=all)", &kafka),
                    ("edge (decode, to Kafka, acks=all)", &full),
                ],
            );
        }
    }
}
