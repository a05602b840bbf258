//! Benchmarks of marktwin live under `benches/` (criterion, `cargo bench -p
//! marktwin-benches`); each compares our path with a baseline measured in
//! the same run, because this machine is shared and absolute times are not
//! comparable between runs.
//!
//! This library holds what the process-based harnesses share: each part of
//! a benchmark runs in its own process (the bench binary run again with
//! `MARKTWIN_BENCH_ROLE`), so CPU time and memory are that part's alone.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use marktwin::app::{self, Parts};
use marktwin_core::Config;
use marktwin_core::metrics::{EDGE_SAMPLE_AGE_AT_READ_SECONDS, EDGE_SAMPLE_TO_STORED_SECONDS};
use marktwin_kafka::EmbeddedBroker;

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `KAFKA_CLIENT` (`key=value,key=value`, librdkafka properties) into
/// `cfg.kafka.client`, for trying producer settings in a bench run.
pub fn kafka_client_from_env(cfg: &mut Config) {
    if let Ok(v) = std::env::var("KAFKA_CLIENT") {
        for kv in v.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                cfg.kafka.client.insert(k.trim().into(), v.trim().into());
            }
        }
    }
}

/// User + system CPU seconds of this process so far.
pub fn cpu_secs() -> f64 {
    cpu_secs_of("self")
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for
/// this one); 0 when it cannot be read.
pub fn cpu_secs_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are
    // fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process, MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory of this process now, MiB.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory figure of `/proc/self/status` (given in kB), MiB; 0 when it
/// cannot be read.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Latency histograms by name: (upper bound, cumulative count) per
/// bucket. The figures line gives `<name>p50_ms` and `<name>p99_ms` of each.
pub type Histograms = Vec<(&'static str, Vec<(f64, f64)>)>;

/// Measures `count` over `secs` once it moves; prints the figures line.
/// `histograms` gives the latency histograms so far; their quantiles are
/// taken over the measured window only.
pub async fn measure(count: impl Fn() -> u64, secs: u64, histograms: impl Fn() -> Histograms) {
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
    let (c0, t0, w0, h0) = (count(), cpu_secs(), Instant::now(), histograms());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, t1, wall, h1) = (
        count(),
        cpu_secs(),
        w0.elapsed().as_secs_f64(),
        histograms(),
    );
    let mut line = format!(
        "FIGURES points_per_s={:.0} cpu_cores={:.3} rss_mib={:.1}",
        (c1 - c0) as f64 / wall,
        (t1 - t0) / wall,
        peak_rss_mib(),
    );
    for (name, after) in &h1 {
        let before = h0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice());
        let window: Vec<(f64, f64)> = after
            .iter()
            .map(|(le, n)| {
                let b = before
                    .and_then(|b| b.iter().find(|(l, _)| l == le))
                    .map_or(0.0, |(_, n)| *n);
                (*le, n - b)
            })
            .collect();
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(s) = quantile_of(&window, q) {
                line.push_str(&format!(" {name}{label}_ms={:.0}", s * 1000.0));
            }
        }
    }
    println!("{line}");
}

/// A latency histogram with the edge's bucket bounds, for a baseline
/// client: how old a sample already is when a bare client receives it.
#[derive(Default)]
pub struct Ages(
    [std::sync::atomic::AtomicU64; marktwin_edge::metrics::SAMPLE_AGE_BUCKETS.len() + 1],
);

impl Ages {
    /// Counts one sample that is `secs` old.
    pub fn observe(&self, secs: f64) {
        self.observe_n(secs, 1);
    }

    /// Counts `n` samples that are `secs` old.
    pub fn observe_n(&self, secs: f64, n: u64) {
        let bounds = marktwin_edge::metrics::SAMPLE_AGE_BUCKETS;
        let i = bounds
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(bounds.len());
        self.0[i].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) per bucket.
    pub fn buckets(&self) -> Vec<(f64, f64)> {
        let bounds = marktwin_edge::metrics::SAMPLE_AGE_BUCKETS;
        let mut total = 0.0;
        bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.0)
            .map(|(le, n)| {
                total += n.load(std::sync::atomic::Ordering::Relaxed) as f64;
                (le, total)
            })
            .collect()
    }
}

/// One scrape of the edge's /metrics.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics");
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The sum of every sample of the metric lines starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the bucket holding quantile `q` (0.5, 0.99).
pub fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

/// A histogram of the edge's /metrics text, summed over its label sets:
/// (upper bound, cumulative count), ascending.
pub fn histogram(text: &str, metric: &str) -> Vec<(f64, f64)> {
    let name = format!("{metric}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in text.lines().filter(|l| l.starts_with(&name)) {
        let parsed = (|| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse::<f64>().ok()?))
        })();
        // Sum over sources: buckets with the same bound add up.
        if let Some((le, n)) = parsed {
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Runs this bench binary again as `role`; returns its figures line.
pub fn child(role: &str, envs: &[(&str, String)]) -> String {
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

/// One `key=value` of a figures line.
pub fn field(fig: &str, key: &str) -> String {
    fig.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("-")
        .to_string()
}

/// Prints the side-by-side table of a baseline and the edge.
pub fn report(title: &str, rows: &[(&str, &str)]) {
    println!();
    println!(
        "{title}; Tansu storage {:?} (BROKER_STORAGE)",
        broker_storage()
    );
    println!(
        "{:<36} {:>10} {:>10} {:>16} {:>9} {:>16} {:>16}",
        "", "points/s", "CPU cores", "points/s/core", "peak MiB", "p50 / p99 ms", "at read p50/p99"
    );
    for (name, f) in rows {
        let pps: f64 = field(f, "points_per_s").parse().unwrap_or(0.0);
        let cores: f64 = field(f, "cpu_cores").parse().unwrap_or(0.0);
        println!(
            "{:<36} {:>10.0} {:>10.2} {:>16.0} {:>9} {:>16} {:>16}",
            name,
            pps,
            cores,
            if cores > 0.0 { pps / cores } else { 0.0 },
            field(f, "rss_mib"),
            format!("{} / {}", field(f, "p50_ms"), field(f, "p99_ms")),
            format!("{} / {}", field(f, "read_p50_ms"), field(f, "read_p99_ms")),
        );
    }
    println!(
        "latency (upper bounds of histogram buckets): baseline = sample age when a bare client receives it; Kafka only = batch handed to librdkafka to its last ack; edge = sample to ack, and (at read) sample age when the edge received it"
    );
    println!("goal: edge >= 100000 points/s on <= 1 core, <= 150 MiB, p99 < 250 ms");
}

/// Runs `marktwin edge` (configured by `setup`, producing to `bootstrap`)
/// and measures it: points acknowledged and p99 latency from its /metrics.
pub async fn measure_edge(
    dir: &std::path::Path,
    bootstrap: String,
    secs: u64,
    setup: impl FnOnce(&mut Config),
) {
    let mut cfg = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    cfg.kafka.brokers = bootstrap;
    kafka_client_from_env(&mut cfg);
    cfg.edge.spool.direct_timeout_ms =
        env_num("DIRECT_TIMEOUT_MS", cfg.edge.spool.direct_timeout_ms);
    setup(&mut cfg);
    cfg.validate().expect("config");
    let parts = Parts {
        embedded_broker: false,
        simulator: false,
        edge: true,
        worker: false,
    };
    let running = app::start(cfg, parts, "127.0.0.1:0").await.expect("edge");
    let addr = running.http_addr;
    measure(
        || metric(&scrape(addr), "marktwin_edge_records_produced_total{") as u64,
        secs,
        || {
            let text = scrape(addr);
            vec![
                ("", histogram(&text, EDGE_SAMPLE_TO_STORED_SECONDS)),
                ("read_", histogram(&text, EDGE_SAMPLE_AGE_AT_READ_SECONDS)),
            ]
        },
    )
    .await;
    running.shutdown().await;
}

/// The Kafka path alone, as a second baseline: the edge's producer
/// settings (`acks=all`, idempotence), `points` pre-encoded telemetry
/// envelopes sent every 100 ms and all acknowledged before the next batch,
/// as the edge's pollers do. What the broker takes on this machine, without
/// anything the edge does before producing; its latency is from handing a
/// batch to librdkafka to the last acknowledgement of it.
pub async fn kafka_only(bootstrap: String, points: u64, secs: u64) {
    use marktwin_core::events::{Envelope, Quality, TelemetryReading};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut cfg = Config::default();
    kafka_client_from_env(&mut cfg);
    marktwin_kafka::ensure_topics(&cfg, &bootstrap)
        .await
        .expect("topics");
    let producer = marktwin_kafka::producer(&cfg, &bootstrap).expect("producer");
    let topic = cfg.topic_name(marktwin_core::topics::id::TELEMETRY);
    let now = marktwin_core::now_ms();
    let records: Vec<(String, Vec<u8>)> = (0..points)
        .map(|i| {
            let r = TelemetryReading {
                tag: format!("bench.{i}"),
                asset: "bench".into(),
                value: Some(i as f64),
                text: None,
                quality: Quality::Good,
                status_code: None,
                source_time_ms: Some(now),
                server_time_ms: None,
                eng_unit: None,
            };
            let env = Envelope::wrap("kafka-only", now, r);
            let bytes = marktwin_core::codec::encode(&env, Default::default()).expect("json");
            (env.key, bytes)
        })
        .collect();
    let count = Arc::new(AtomicU64::new(0));
    let ages = Arc::new(Ages::default());
    let (counter, acked) = (count.clone(), ages.clone());
    let send = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = Instant::now();
            if marktwin_kafka::produce_all(&producer, &topic, &records)
                .await
                .is_ok()
            {
                let n = records.len() as u64;
                acked.observe_n(started.elapsed().as_secs_f64(), n);
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    };
    tokio::select! {
        _ = send => {}
        _ = measure(|| count.load(Ordering::Relaxed), secs, || vec![("", ages.buckets())]) => {}
    }
}

/// The embedded broker's storage for a run: `memory` by default, so the
/// broker keeps up and the figures are the edge's; `BROKER_STORAGE=sqlite`
/// measures against the durable store `marktwin up` uses, whose ceiling on
/// this machine is below the 100k points/s goal.
pub fn broker_storage() -> marktwin_core::BrokerStorage {
    match std::env::var("BROKER_STORAGE").as_deref() {
        Ok("memory") | Err(_) => marktwin_core::BrokerStorage::Memory,
        Ok("sqlite") => marktwin_core::BrokerStorage::Sqlite,
        Ok(other) => panic!("BROKER_STORAGE={other}: expected sqlite or memory"),
    }
}

/// A child process killed when this goes out of scope, also when a part
/// of the run panics.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole run of a process-based benchmark: starts this binary as the
/// `server` role (it prints READY once it listens on `PORT`), a Tansu
/// broker, then the `baseline`, `kafka` ([`kafka_only`]) and `edge` roles
/// one after the other, and returns their figures lines.
pub fn run_parts(
    rt: &tokio::runtime::Runtime,
    points: u64,
    secs: u64,
    dir: &std::path::Path,
) -> (String, String, String) {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server = Killed(
        Command::new(std::env::current_exe().expect("exe"))
            .env("MARKTWIN_BENCH_ROLE", "server")
            .env("PORT", port.to_string())
            .env("POINTS", points.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server"),
    );
    let out = server.0.stdout.take().expect("stdout");
    let ready = BufReader::new(out)
        .lines()
        .any(|l| l.map(|l| l == "READY").unwrap_or(false));
    assert!(ready, "the simulator did not start");
    let mut cfg = Config {
        data_dir: dir.join("broker-data"),
        ..Config::default()
    };
    cfg.kafka.embedded_storage = broker_storage();
    let broker = rt.block_on(EmbeddedBroker::start(&cfg)).expect("broker");
    let envs = [
        ("PORT", port.to_string()),
        ("POINTS", points.to_string()),
        ("SECS", secs.to_string()),
        ("BOOTSTRAP", broker.bootstrap()),
    ];
    eprintln!("baseline ...");
    let base = child("baseline", &envs);
    eprintln!("Kafka only ...");
    let kafka = child("kafka", &envs);
    eprintln!("edge ...");
    let edge = child("edge", &envs);
    drop(server);
    rt.block_on(broker.stop());
    (base, kafka, edge)
}
