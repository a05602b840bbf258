//! The disk under the spool fills up (a 1 MiB tmpfs) while the broker is
//! away: the edge says so (`marktwin_edge_spool_refusing` = 1, a log line
//! naming the file and "No space left on device"), stops reading its source
//! instead of dropping readings, and when the broker returns drains the
//! spool, frees the disk and carries on: every reading it read is on the
//! topic once.
//!
//! Mounting a tmpfs needs root (CAP_SYS_ADMIN), which the CI machine and
//! this one have; elsewhere the test says it was skipped and why.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use marktwin::app;
use marktwin_core::Config;
use marktwin_edge::modbus::sim::{self as modbus_sim, PlantSim};
use marktwin_kafka::EmbeddedBroker;
use marktwin_tests::{EDGE_ONLY, free_port, metric, telemetry_on};

/// A tmpfs of `size`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_reading_and_loses_nothing() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), "1m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full path is untested on this machine"
        );
        return;
    };
    let broker_port = free_port();
    let mut cfg = Config {
        data_dir: disk.0.clone(),
        ..Config::default()
    };
    cfg.kafka.brokers = format!("127.0.0.1:{broker_port}");
    cfg.edge.spool.direct_timeout_ms = 300;
    cfg.edge.spool.fsync = "always".into();
    cfg.edge.spool.segment_bytes = 64 << 10;
    // The limit is far above the disk: the disk fills first.
    cfg.edge.spool.max_bytes = 64 << 20;

    // A Modbus plant with many registers, read every 50 ms.
    let (stop_sim, sim_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let plant = PlantSim::new(marktwin_core::now_ms(), 1).with_bench_registers(200);
    let mut dev = plant.device("plant", &addr);
    dev.poll_interval_ms = 50;
    tokio::spawn(modbus_sim::serve(listener, plant, sim_rx));
    cfg.edge.modbus.devices = vec![dev];
    cfg.validate().unwrap();

    let running = app::start(cfg.clone(), EDGE_ONLY, "127.0.0.1:0")
        .await
        .unwrap();
    let http = running.http_addr;

    // The disk fills; the edge refuses and stops reading.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric(http, "marktwin_edge_spool_refusing").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disk filled in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spool_dir = disk.0.join("spool").join("edge");
    let read_then = metric(http, "marktwin_edge_records_read_total").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read_later = metric(http, "marktwin_edge_records_read_total").await;
    assert_eq!(read_then, read_later, "no reading while the spool refuses");
    assert_eq!(metric(http, "marktwin_edge_spool_refusing").await, 1.0);
    eprintln!(
        "disk full with {} spool bytes, {read_then} readings read",
        used_bytes(&spool_dir)
    );

    // The broker returns: the spool drains, the disk frees, reading goes on.
    let mut bcfg = cfg.clone();
    bcfg.data_dir = dir.path().join("broker-data");
    bcfg.kafka.embedded_port = broker_port;
    let broker = EmbeddedBroker::start(&bcfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric(http, "marktwin_edge_records_read_total").await < read_later + 1_000.0
        || metric(http, "marktwin_edge_spool_refusing").await > 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading resumed in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stop the source, let the edge store what it read, then count.
    let _ = stop_sim.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric(http, "marktwin_edge_spool_bytes").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the spool drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = metric(http, "marktwin_edge_records_read_total").await as usize;
    running.shutdown().await;
    let envs = telemetry_on(broker.bootstrap(), cfg.topic_name("telemetry")).await;
    broker.stop().await;
    let ids: HashSet<&str> = envs.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), envs.len(), "no reading twice");
    assert_eq!(envs.len(), read, "every reading read is on the topic");
}
