//! The production twin is exact on restart: a seeded workload (production
//! minutes with disorder, late records, duplicates, bad records, plan and
//! capacity revisions) goes through a real Tansu broker in chunks while a
//! worker *process* is killed with SIGKILL at random points after each
//! chunk. A last worker restores the last checkpoint and replays the rest;
//! every twin table must then equal a batch recomputation of the same input
//! done by DataFusion SQL (the late rule as a window function), and the
//! late and dead-letter topics must hold exactly the records the batch
//! finds late or bad.
//!
//! Between the kills the workers scale from one process to three sharing
//! the partitions (static assignment, worker i of n) and back to one.
//!
//! The worker processes are this test binary started again on the
//! `#[ignore]`d test [`twin_worker_child`], which runs the same
//! `app::start` as `marktwin worker`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::prelude::SessionContext;
use marktwin::app::{self, Parts, Running};
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::config::Assignment;
use marktwin_core::events::{
    Envelope, LineCapacity, LineState, ProductionPlan, ProductionRecord, Unit,
};
use marktwin_kafka::EmbeddedBroker;
use marktwin_state::checkpoint::CheckpointStore;
use marktwin_tests::{Record, log_to_test_output, metric, read_topic, sql};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const CHILD_ENV: &str = "MARKTWIN_TWIN_CHILD_CONFIG";
const CHILD_LISTEN_ENV: &str = "MARKTWIN_TWIN_CHILD_LISTEN";
const LINES: usize = 6;
const PARTITIONS: i32 = 3;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// Chunks of input, each followed by a worker process killed at random.
const CHUNKS: usize = 12;

/// Worker only, as `marktwin worker` runs it.
const WORKER_ONLY: Parts = Parts {
    embedded_broker: false,
    simulator: false,
    edge: false,
    worker: true,
};

/// Not a test: the worker process of [`twin_is_exact_after_repeated_sigkill`],
/// started by it with the config file in `MARKTWIN_TWIN_CHILD_CONFIG`; runs
/// until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by twin_is_exact_after_repeated_sigkill as its worker process"]
async fn twin_worker_child() {
    log_to_test_output();
    let path = std::env::var(CHILD_ENV).expect("config path in MARKTWIN_TWIN_CHILD_CONFIG");
    let cfg: Config = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let listen = std::env::var(CHILD_LISTEN_ENV).unwrap_or_else(|_| "127.0.0.1:0".into());
    let _running = app::start(cfg, WORKER_ONLY, &listen).await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// SplitMix64: a seeded generator with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One record to produce: topic id, partition, key, value.
struct Out {
    topic: &'static str,
    partition: i32,
    key: String,
    value: Vec<u8>,
}

fn line_id(l: usize) -> String {
    format!("line-{}", l + 1)
}

fn out<P: marktwin_core::events::Payload>(topic: &'static str, l: usize, p: P) -> Out {
    let env = Envelope::wrap("mes-test", 0, p);
    Out {
        topic,
        partition: (l % PARTITIONS as usize) as i32,
        key: line_id(l),
        value: serde_json::to_vec(&env).unwrap(),
    }
}

fn date(ms: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .date_naive()
}

/// The seeded workload, in the order it is produced: two days and a half of
/// minutes for six lines from 02:00 local time (UTC+8), with
/// - 2 % of the minutes held back 5–40 minutes (within the lateness),
/// - 0.3 % held back 100–150 minutes (late: to the late topic),
/// - 1 % sent twice, a little later (duplicates),
/// - 0.5 % corrected 1–10 minutes later (half the count, sometimes a
///   fault instead): the correction replaces the first version; a third
///   of those corrections taken back by the first version again,
/// - 0.1 % undecodable and 0.1 % ending before they start (dead letters),
/// - a few minutes in cartons, the rest in packs,
/// - plans per line and day, 10 % of them revised later,
/// - line-wide capacities, one revised, and one SKU-specific capacity
///   valid from the second day.
fn workload(seed: u64, t0: i64) -> Vec<Out> {
    let mut rng = Rng(seed);
    let minutes = 60 * 60;
    let mut outs = Vec::new();
    for l in 0..LINES {
        outs.push(out(
            "line_capacity",
            l,
            LineCapacity {
                line_id: line_id(l),
                sku_code: None,
                rated_per_minute: 300.0 + 20.0 * l as f64,
                unit: Unit::Pack,
                valid_from: date(t0 - 10 * DAY),
            },
        ));
    }
    let mut held: Vec<(usize, Out)> = Vec::new();
    let mut state = [LineState::Running; LINES];
    for m in 0..minutes {
        let t = t0 + m as i64 * MINUTE;
        // Plans for the next local day, half a day ahead.
        if (t + 8 * 3_600_000 + 12 * 3_600_000) % DAY == 0 {
            let day = date(t + 8 * 3_600_000 + 12 * 3_600_000);
            for l in 0..LINES {
                let plan = |q: f64| ProductionPlan {
                    plan_id: format!("P-{}-{day}", line_id(l)),
                    line_id: line_id(l),
                    sku_code: format!("SKU{:04}", (l + day.ordinal() as usize) % 4 + 1),
                    plan_date: day,
                    planned_quantity: q,
                    unit: Unit::Case,
                };
                outs.push(out(
                    "production_plan",
                    l,
                    plan(150.0 + rng.below(40) as f64),
                ));
                if rng.below(10) == 0 {
                    let revised = out("production_plan", l, plan(120.0 + rng.below(40) as f64));
                    held.push((m + 30 + rng.below(300) as usize, revised));
                }
            }
        }
        if m == minutes / 3 {
            outs.push(out(
                "line_capacity",
                1,
                LineCapacity {
                    line_id: line_id(1),
                    sku_code: None,
                    rated_per_minute: 333.0,
                    unit: Unit::Pack,
                    valid_from: date(t0 - 10 * DAY),
                },
            ));
            outs.push(out(
                "line_capacity",
                0,
                LineCapacity {
                    line_id: line_id(0),
                    sku_code: Some("SKU0002".into()),
                    rated_per_minute: 250.0,
                    unit: Unit::Pack,
                    valid_from: date(t0 + 8 * 3_600_000 + DAY),
                },
            ));
        }
        for (l, st) in state.iter_mut().enumerate() {
            if rng.below(40) == 0 {
                *st = match rng.below(10) {
                    0..=5 => LineState::Running,
                    6 => LineState::Idle,
                    7 | 8 => LineState::Fault,
                    _ => LineState::Changeover,
                };
            }
            let rated = 300.0 + 20.0 * l as f64;
            let made = if *st == LineState::Running {
                (rated * (0.85 + 0.15 * rng.unit())) as u64
            } else {
                0
            };
            let reject = made * rng.below(15) / 1000;
            let cartons = rng.below(50) == 0;
            let (good, reject, unit) = if cartons {
                ((made - reject) / 10, reject / 10, Unit::Carton)
            } else {
                (made - reject, reject, Unit::Pack)
            };
            let bad_period = rng.below(1000) == 0;
            let rec = ProductionRecord {
                line_id: line_id(l),
                sku_code: format!("SKU{:04}", (l + m / 500) % 4 + 1),
                good_count: good,
                reject_count: reject,
                unit,
                state: *st,
                period_start_ms: t,
                period_end_ms: if bad_period { t - MINUTE } else { t + MINUTE },
            };
            let correction = ProductionRecord {
                good_count: good / 2,
                state: if rng.below(3) == 0 {
                    LineState::Fault
                } else {
                    *st
                },
                ..rec.clone()
            };
            let o = out("production", l, rec);
            let r = rng.below(1000);
            if r < 20 {
                held.push((m + 5 + rng.below(36) as usize, o));
            } else if r < 23 {
                held.push((m + 100 + rng.below(51) as usize, o));
            } else {
                if r < 33 {
                    let copy = Out {
                        value: o.value.clone(),
                        key: o.key.clone(),
                        ..o
                    };
                    held.push((m + rng.below(3) as usize, copy));
                } else if r < 38 {
                    let fixed = out("production", l, correction);
                    held.push((m + 1 + rng.below(10) as usize, fixed));
                    if rng.below(3) == 0 {
                        // Taken back: the first version again, later.
                        let revert = Out {
                            value: o.value.clone(),
                            key: o.key.clone(),
                            ..o
                        };
                        held.push((m + 12 + rng.below(5) as usize, revert));
                    }
                }
                outs.push(o);
            }
            if rng.below(1000) == 0 {
                outs.push(Out {
                    topic: "production",
                    partition: (l % PARTITIONS as usize) as i32,
                    key: line_id(l),
                    value: br#"{"event_id": "not an envelope"}"#.to_vec(),
                });
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = held.into_iter().partition(|(at, _)| *at <= m);
        held = later;
        outs.extend(due.into_iter().map(|(_, o)| o));
    }
    outs.extend(held.into_iter().map(|(_, o)| o));
    outs
}

/// Warehouse of line `l`'s output, and the stock region and `stock`
/// partition of each warehouse: four warehouses, three regions.
fn warehouse_of(l: usize) -> String {
    format!("WH{}", l % 4 + 1)
}
const REGIONS: [(&str, &str, i32); 4] = [
    ("WH1", "east", 0),
    ("WH2", "west", 1),
    ("WH3", "south", 2),
    ("WH4", "east", 0),
];

fn stock_out<P: marktwin_core::events::Payload>(warehouse: &str, p: P) -> Out {
    let (_, region, partition) = REGIONS.iter().find(|r| r.0 == warehouse).unwrap();
    Out {
        topic: "stock",
        partition: *partition,
        key: (*region).to_owned(),
        value: serde_json::to_vec(&Envelope::wrap("wms-test", 0, p)).unwrap(),
    }
}

/// The `stock` topic as the edge writes it, merged into `outs` in time
/// order: every valid production record again (each line delivers to
/// its warehouse), hourly counts per warehouse and SKU (5 % sent twice,
/// 5 % held back up to three hours, so older than a newer count), and
/// allocation orders per day (3 % corrected later, 3 % sent twice).
fn with_stock(outs: Vec<Out>, seed: u64, t0: i64, minutes: usize) -> Vec<Out> {
    let mut rng = Rng(seed);
    let end = t0 + minutes as i64 * MINUTE;
    // (position among `outs`, record): inserted before `outs[position]`.
    let mut extra: Vec<(usize, Out)> = Vec::new();
    let at = |t: i64| ((t - t0).max(0) as f64 / (end - t0) as f64 * outs.len() as f64) as usize;
    for (i, o) in outs.iter().enumerate() {
        if o.topic != "production" {
            continue;
        }
        if let Ok(e) = codec::decode_any::<Envelope<ProductionRecord>>(&o.value)
            && e.payload.period_end_ms >= e.payload.period_start_ms
        {
            let l: usize = e.payload.line_id[5..].parse::<usize>().unwrap() - 1;
            extra.push((i + 1, stock_out(&warehouse_of(l), e.payload)));
        }
    }
    let skus = ["SKU0001", "SKU0002", "SKU0003", "SKU0004"];
    let mut h = t0 - t0 % 3_600_000;
    while h < end {
        for (w, _, _) in REGIONS {
            for sku in skus {
                let t = h + rng.below(600) as i64 * 1000;
                let (quantity, unit) = if rng.below(10) == 0 {
                    (rng.below(20_000) as f64, Unit::Pack)
                } else {
                    (500.0 + rng.below(1000) as f64, Unit::Carton)
                };
                let count = |q: f64| marktwin_core::events::InventorySnapshot {
                    warehouse_id: w.into(),
                    sku_code: sku.into(),
                    quantity: q,
                    unit,
                    as_of_ms: t,
                };
                let r = rng.below(100);
                let delay = if r < 5 {
                    rng.below(3 * 3_600_000) as i64
                } else {
                    0
                };
                extra.push((at(t + delay), stock_out(w, count(quantity))));
                if r >= 95 {
                    extra.push((at(t + 60_000), stock_out(w, count(quantity))));
                }
            }
        }
        h += 3_600_000;
    }
    let mut day = t0 - t0 % DAY - 3 * DAY;
    let mut n = 0;
    while day < end {
        for (w, _, _) in REGIONS {
            for sku in skus {
                for _ in 0..3 {
                    n += 1;
                    let to_id = format!("R{:04}", rng.below(50));
                    let q = 20.0 + rng.below(400) as f64;
                    let t = day + rng.below(DAY as u64) as i64;
                    let order = |q: f64| marktwin_core::events::AllocationOrder {
                        order_id: format!("SO{n:06}"),
                        line_no: 1,
                        from_id: w.into(),
                        to_id: to_id.clone(),
                        sku_code: sku.into(),
                        quantity: q,
                        unit: Unit::Carton,
                        unit_price: 250.0,
                        order_date: date(day),
                    };

                    extra.push((at(t), stock_out(w, order(q))));
                    match rng.below(100) {
                        0..3 => extra.push((at(t + 2 * 3_600_000), stock_out(w, order(q / 2.0)))),
                        3..6 => extra.push((at(t + 60_000), stock_out(w, order(q)))),
                        _ => {}
                    }
                }
            }
        }
        day += DAY;
    }
    extra.sort_by_key(|(i, _)| *i);
    let mut merged = Vec::with_capacity(outs.len() + extra.len());
    let mut extra = extra.into_iter().peekable();
    for (i, o) in outs.into_iter().enumerate() {
        while let Some((_, e)) = extra.next_if(|(at, _)| *at <= i) {
            merged.push(e);
        }
        merged.push(o);
    }
    merged.extend(extra.map(|(_, e)| e));
    merged
}

async fn produce(producer: &FutureProducer, cfg: &Config, chunk: &[Out]) {
    let futures: Vec<_> = chunk
        .iter()
        .map(|o| {
            let topic = cfg.topic_name(o.topic);
            let value = o.value.clone();
            let key = o.key.clone();
            let p = o.partition;
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .partition(p)
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for r in futures::future::join_all(futures).await {
        r.expect("produced");
    }
}

/// Writes the config of worker `i` of `n` and returns its path.
fn worker_config(cfg: &Config, dir: &std::path::Path, i: u32, n: u32) -> std::path::PathBuf {
    let mut cfg = cfg.clone();
    cfg.worker.instance = i;
    cfg.worker.instances = n;
    let path = dir.join(format!("worker-{i}-of-{n}.json"));
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    path
}

/// A worker process, killed with SIGKILL when dropped, so a failing test
/// leaves none behind.
struct Worker(Child);

impl Worker {
    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_child(config_path: &std::path::Path) -> Worker {
    spawn_child_on(config_path, "127.0.0.1:0")
}

/// A worker process whose health, metrics and query listener is `listen`.
fn spawn_child_on(config_path: &std::path::Path, listen: &str) -> Worker {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "twin_worker_child", "--nocapture"])
        .env(CHILD_ENV, config_path)
        .env(CHILD_LISTEN_ENV, listen)
        .env(
            "RUST_LOG",
            std::env::var("MARKTWIN_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if std::env::var_os("MARKTWIN_CHILD_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker process");
    Worker(child)
}

/// Next offsets per input topic in the newest checkpoints of both twins,
/// summed over partitions.
async fn checkpointed(store: &CheckpointStore) -> BTreeMap<String, i64> {
    let mut sum = BTreeMap::new();
    for (op, p) in ["twin", "inventory"]
        .into_iter()
        .flat_map(|op| (0..PARTITIONS).map(move |p| (op, p)))
    {
        if let Ok(Some(cp)) = store.load(op, p).await {
            for (t, o) in cp.offsets {
                *sum.entry(t).or_default() += o;
            }
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_is_exact_after_repeated_sigkill() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let broker = EmbeddedBroker::start(&cfg).await.expect("broker");
    cfg.kafka.brokers = broker.bootstrap();
    let outs = setup(&mut cfg).await;
    let config_path = worker_config(&cfg, dir.path(), 0, 1);
    let producer: FutureProducer = marktwin_kafka::client_config(&cfg, &cfg.kafka.brokers)
        .create()
        .unwrap();
    let store = CheckpointStore::open("", &cfg.data_dir).unwrap();

    let mut rng = Rng(99);
    let per_chunk = outs.len().div_ceil(CHUNKS);
    for (i, chunk) in outs.chunks(per_chunk).enumerate() {
        produce(&producer, &cfg, chunk).await;
        // Scale out and back: one worker, then three sharing the
        // partitions (worker i of 3), then one again. State follows its
        // partitions through the shared checkpoint directory.
        let n = if (CHUNKS / 3..2 * CHUNKS / 3).contains(&i) {
            3
        } else {
            1
        };
        let mut children: Vec<Worker> = (0..n)
            .map(|k| spawn_child(&worker_config(&cfg, dir.path(), k, n)))
            .collect();
        let ms = 300 + rng.below(2500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        for child in &mut children {
            child.kill();
        }
        eprintln!(
            "chunk {i}: {n} worker(s) killed after {ms} ms; checkpointed {:?}",
            checkpointed(&store).await
        );
    }
    // One more process, killed once its checkpoints cover the input.
    let total: usize = outs.len();
    let mut child = spawn_child(&config_path);
    for _ in 0..600 {
        if checkpointed(&store).await.values().sum::<i64>() as usize >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill();
    let covered = checkpointed(&store).await;
    eprintln!("final checkpoint {covered:?}");
    last_worker_is_exact(&cfg, &outs).await;
    broker.stop().await;
}

/// The settings both tests share; creates the topics and returns the
/// seeded workload.
async fn setup(cfg: &mut Config) -> Vec<Out> {
    cfg.worker.utc_offset_minutes = 480;
    cfg.worker.publish_interval_ms = 200;
    cfg.worker.checkpoint.interval_ms = 250;
    for (w, region, _) in REGIONS {
        cfg.inventory.regions.insert(w.into(), region.into());
    }
    for l in 0..LINES {
        cfg.inventory
            .line_warehouses
            .insert(line_id(l), warehouse_of(l));
    }
    cfg.inventory.cover_min_days = 1.0;
    cfg.inventory.cover_max_days = 2.0;
    cfg.validate().unwrap();
    marktwin_kafka::topics::ensure_topics(cfg, &cfg.kafka.brokers)
        .await
        .unwrap();
    // 02:00 local time, four days ago.
    let t0 = (marktwin_core::now_ms() / DAY - 4) * DAY - 6 * 3_600_000;
    with_stock(workload(7, t0), 11, t0, 60 * 60)
}

/// Fail-over through the group protocol, on librdkafka's mock cluster
/// (Tansu does not evict a dead group member): two worker processes in
/// `group` assignment share the partitions of the first half of the
/// workload; one is killed with SIGKILL while it works on the third
/// quarter; the other must take its partitions over, after the session
/// timeout, from their checkpoints and the twin topic, and process the
/// rest. A last worker then restores and must equal the
/// batch recomputation, as in [`twin_is_exact_after_repeated_sigkill`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_fails_over_through_the_group_protocol() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let mut cfg = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    cfg.kafka.brokers = mock.bootstrap_servers();
    // The mock cluster has no admin API: the topics are made here, and
    // `ensure_topics` finds them.
    for t in cfg.all_topics() {
        mock.create_topic(&cfg.topic_name(t.id), t.partitions, 1)
            .expect("topic on the mock cluster");
    }
    cfg.worker.assignment = Assignment::Group;
    cfg.worker.session_timeout_ms = 6_000;
    let outs = setup(&mut cfg).await;
    // Publish far more often than checkpoint, so that the killed member
    // leaves changes on the twin topic that its checkpoint does not hold
    // and the new owner must read them back.
    cfg.worker.checkpoint.interval_ms = 2_000;
    let producer: FutureProducer = marktwin_kafka::client_config(&cfg, &cfg.kafka.brokers)
        .create()
        .unwrap();
    let store = CheckpointStore::open("", &cfg.data_dir).unwrap();
    let half = outs.len() / 2;
    let covered = |n: usize| {
        let store = &store;
        async move {
            for _ in 0..1200 {
                if checkpointed(store).await.values().sum::<i64>() as usize >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "checkpoints stopped at {:?} of {n} records",
                checkpointed(store).await
            );
        }
    };

    produce(&producer, &cfg, &outs[..half]).await;
    let path = worker_config(&cfg, dir.path(), 0, 1);
    let listen: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", marktwin_tests::free_port()))
        .collect();
    let mut children: Vec<Worker> = listen.iter().map(|l| spawn_child_on(&path, l)).collect();
    covered(half).await;
    // Both members applied records: each owned partitions.
    let mut applied = Vec::new();
    for l in &listen {
        applied.push(metric(l.parse().unwrap(), "marktwin_worker_records_in_total").await);
    }
    eprintln!("first half: records read per member {applied:?}");
    assert!(applied.iter().all(|n| *n > 0.0), "{applied:?}");

    // Killed while it works on more input: no leave, so the group must
    // time it out, and what it published after its last checkpoint is on
    // the twin topic for the new owner to read back.
    let three_quarters = outs.len() * 3 / 4;
    produce(&producer, &cfg, &outs[half..three_quarters]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    children[0].kill();
    produce(&producer, &cfg, &outs[three_quarters..]).await;
    covered(outs.len()).await;
    let after = metric(
        listen[1].parse().unwrap(),
        "marktwin_worker_records_in_total",
    )
    .await;
    eprintln!("second half: the surviving member read {after} records in all");
    children[1].kill();
    last_worker_is_exact(&cfg, &outs).await;
}

/// Computes the batch truth from the input topics as the broker holds them,
/// starts a last worker that restores the checkpoints and replays the rest,
/// and compares every twin table, the compacted output topics and the late
/// and dead-letter topics with the truth.
async fn last_worker_is_exact(cfg: &Config, outs: &[Out]) {
    let total = outs.len();
    // The batch truth, from the topics as the broker holds them.
    let topics = ["production", "production_plan", "line_capacity", "stock"];
    let mut input: HashMap<&str, Vec<Record>> = HashMap::new();
    for t in topics {
        let (b, name) = (cfg.kafka.brokers.clone(), cfg.topic_name(t));
        let want = outs.iter().filter(|o| o.topic == t).count();
        let recs = tokio::task::spawn_blocking(move || read_topic(&b, &name, want))
            .await
            .unwrap();
        assert_eq!(recs.len(), want, "{t} holds what was produced");
        input.insert(t, recs);
    }
    let truth = Truth::compute(cfg, &input).await;

    // The last worker: restores, replays the rest, publishes.
    let running = app::start(cfg.clone(), WORKER_ONLY, "127.0.0.1:0")
        .await
        .unwrap();
    let applied = truth.applied_production;
    wait_until(&running, || async {
        let v = sql(
            &running,
            "SELECT COALESCE(SUM(records), 0) AS n FROM twin_line_oee WHERE \"window\" = 'day'",
        )
        .await;
        v[0]["n"].as_u64().unwrap_or(0) as usize == applied
    })
    .await;
    let replayed = metric(running.http_addr, "marktwin_worker_records_in_total").await;
    assert!(
        (replayed as usize) < total,
        "the last worker restored a checkpoint: it read {replayed} of {total} records"
    );

    // The inventory twin's tables come through their views too, the
    // alerts through a view of their own that may build a little later.
    for table in ["twin_inventory", "twin_stock_cover", "twin_stock_alerts"] {
        let want = truth.tables[table].len();
        wait_until(&running, || async {
            let v = sql(&running, &format!("SELECT COUNT(*) AS n FROM {table}")).await;
            v[0]["n"].as_u64().unwrap_or(0) as usize == want
        })
        .await;
    }
    worker_metrics_match(&running, cfg, outs, &truth).await;
    for (table, query, key_cols) in TABLES {
        let got = sql(&running, query).await;
        let want = &truth.tables[table];
        assert_rows_equal(table, got.as_array().unwrap(), want, key_cols);
        eprintln!("{table}: {} rows equal the batch", want.len());
    }

    // The tables above came through the compacted `twin` and `alerts`
    // topics (the views); a subscriber that keeps the last record per key
    // sees the same rows. Retention and corrections removed rows, so
    // tombstones were sent.
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut tombstones = 0;
    let mut records = 0;
    for topic in ["twin", "alerts"] {
        let (b, name) = (cfg.kafka.brokers.clone(), cfg.topic_name(topic));
        let changes = tokio::task::spawn_blocking(move || read_topic(&b, &name, 1))
            .await
            .unwrap();
        for r in &changes {
            latest.insert(r.key.clone(), r.value.clone());
        }
        tombstones += changes.iter().filter(|r| r.value.is_none()).count();
        records += changes.len();
    }
    assert!(tombstones > 0, "no tombstones among {records} changes");
    for (table, _, _) in TABLES {
        let live = latest
            .iter()
            .filter(|(k, v)| v.is_some() && k.starts_with(format!("{table}/").as_bytes()))
            .count();
        assert_eq!(
            live,
            truth.tables[table].len(),
            "{table}: live keys on the topics"
        );
    }
    eprintln!(
        "twin and alerts topics: {records} change records, {tombstones} tombstones, {} live keys",
        latest.values().filter(|v| v.is_some()).count()
    );

    // Late and bad records: each in its topic, none missing, no other. A
    // worker killed after sending but before its checkpoint sends them
    // again on restart, so the topics are compared as sets of input
    // positions.
    for (topic, want) in [("late", &truth.late), ("dead_letter", &truth.bad)] {
        let (b, name) = (cfg.kafka.brokers.clone(), cfg.topic_name(topic));
        let n = want.len();
        let recs = tokio::task::spawn_blocking(move || read_topic(&b, &name, n))
            .await
            .unwrap();
        let got: BTreeSet<(String, i32, i64)> = recs
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&r.payload).unwrap();
                assert_eq!(v["stage"], "worker_twin", "{v}");
                (
                    v["source"].as_str().unwrap().to_owned(),
                    v["partition"].as_i64().unwrap() as i32,
                    v["offset"].as_i64().unwrap(),
                )
            })
            .collect();
        let want: BTreeSet<(String, i32, i64)> = want
            .iter()
            .map(|(t, p, o)| (cfg.topic_name(t), *p, *o))
            .collect();
        assert_eq!(got, want, "{topic}: the records the batch finds");
        eprintln!("{topic}: {} records, as the batch finds", want.len());
    }
    running.shutdown().await;
}

/// The worker's metrics agree with the input and the truth: next offsets
/// at each input's end and no lag (clamped at zero), rows per state table
/// as the batch finds them, checkpoints written, a watermark. Waits first
/// for the offsets and a checkpoint: the views can show every row before
/// this worker has caught up (with group assignment, before the group has
/// even given it its partitions), and it checkpoints on its own tick.
async fn worker_metrics_match(running: &Running, cfg: &Config, outs: &[Out], truth: &Truth) {
    let metrics = || marktwin_tests::metrics_text(running.http_addr);
    let series = |text: &str, name: &str, label: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let inputs = ["production", "production_plan", "line_capacity", "stock"];
    let produced = |t: &str| outs.iter().filter(|o| o.topic == t).count() as f64;
    let topic = |t: &str| format!("topic=\"{}\"", cfg.topic_name(t));
    wait_until(running, || async {
        let text = metrics().await;
        inputs.iter().all(|t| {
            series(&text, "marktwin_worker_offset", &topic(t))
                .iter()
                .sum::<f64>()
                == produced(t)
        }) && ["twin", "inventory"].iter().all(|op| {
            series(
                &text,
                "marktwin_worker_checkpoint_bytes",
                &format!("operator=\"{op}\""),
            )
            .len()
                == PARTITIONS as usize
        })
    })
    .await;
    let text = metrics().await;
    for t in inputs {
        let offsets = series(&text, "marktwin_worker_offset", &topic(t));
        assert_eq!(
            offsets.len(),
            PARTITIONS as usize,
            "{t}: offsets per partition"
        );
        let lag = series(&text, "marktwin_worker_lag_records", &topic(t));
        assert_eq!(lag, vec![0.0; PARTITIONS as usize], "{t}: lag");
    }
    for (table, _, _) in TABLES {
        let rows = series(&text, "marktwin_state_rows", &format!("table=\"{table}\""));
        assert_eq!(
            rows,
            vec![truth.tables[table].len() as f64],
            "{table}: state rows"
        );
    }
    for op in ["twin", "inventory"] {
        let op = format!("operator=\"{op}\"");
        let bytes = series(&text, "marktwin_worker_checkpoint_bytes", &op);
        assert!(
            bytes.iter().all(|b| *b > 0.0),
            "{op}: checkpoint bytes {bytes:?}"
        );
        let took = series(
            &text,
            "marktwin_worker_checkpoint_duration_seconds_count",
            &op,
        );
        assert!(took.iter().sum::<f64>() > 0.0, "{op}: checkpoints timed");
    }
    // The workload's events are days old.
    let watermark = series(
        &text,
        "marktwin_worker_watermark_lag_seconds",
        "operator=\"twin\"",
    );
    assert!(
        watermark.len() == 1 && watermark[0] > 3_600.0,
        "watermark lag {watermark:?}"
    );
    eprintln!(
        "worker metrics: next offsets at the inputs' ends, lag 0, state rows as the batch, checkpoints written, watermark lag {:.0} s",
        watermark[0]
    );
}

async fn wait_until<F, Fut>(running: &Running, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not catch up; readiness {:?}",
            running.readiness.report()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The compared tables: name, the worker's query, the key columns.
const TABLES: [(&str, &str, &[&str]); 7] = [
    (
        "twin_line_status",
        "SELECT line_id, state, CAST(state_since AS BIGINT) AS state_since, sku_code, \
         CAST(last_period_end AS BIGINT) AS last_period_end, output_15m, speed_per_min_15m, unit \
         FROM twin_line_status",
        &["line_id"],
    ),
    (
        "twin_line_windows",
        "SELECT line_id, sku_code, \"window\", CAST(window_start AS BIGINT) AS window_start, \
         CAST(window_end AS BIGINT) AS window_end, running_ms, idle_ms, fault_ms, changeover_ms, \
         good, reject, unit, records, availability, performance, quality, oee, \"final\" \
         FROM twin_line_windows",
        &["line_id", "sku_code", "window", "window_start"],
    ),
    (
        "twin_line_oee",
        "SELECT line_id, \"window\", CAST(window_start AS BIGINT) AS window_start, \
         CAST(window_end AS BIGINT) AS window_end, running_ms, idle_ms, fault_ms, changeover_ms, \
         good, reject, unit, records, availability, performance, quality, oee, \"final\" \
         FROM twin_line_oee",
        &["line_id", "window", "window_start"],
    ),
    (
        "twin_plan_actual",
        "SELECT line_id, sku_code, CAST(day AS VARCHAR) AS day, planned, good, total, unit, \
         attainment, rated_per_minute, utilisation FROM twin_plan_actual",
        &["line_id", "sku_code", "day"],
    ),
    (
        "twin_inventory",
        "SELECT warehouse_id, sku_code, region, on_hand, counted, \
         CAST(counted_at AS BIGINT) AS counted_at, moved_in, moved_out, unit FROM twin_inventory",
        &["warehouse_id", "sku_code"],
    ),
    (
        "twin_stock_cover",
        "SELECT region, sku_code, on_hand, demand_per_day, cover_days, status, unit \
         FROM twin_stock_cover",
        &["region", "sku_code"],
    ),
    (
        "twin_stock_alerts",
        "SELECT region, sku_code, alert, cover_days, bound_days, on_hand, demand_per_day, unit \
         FROM twin_stock_alerts",
        &["region", "sku_code"],
    ),
];

/// Rows keyed by `keys`, compared column by column; numbers within a
/// relative 1e-9 (sums in another order), everything else exactly.
fn assert_rows_equal(table: &str, got: &[Value], want: &[Value], keys: &[&str]) {
    let key = |r: &Value| -> String {
        keys.iter()
            .map(|k| r[*k].to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    let index = |rows: &[Value]| -> BTreeMap<String, Value> {
        rows.iter().map(|r| (key(r), r.clone())).collect()
    };
    let (g, w) = (index(got), index(want));
    let missing: Vec<&String> = w.keys().filter(|k| !g.contains_key(*k)).take(5).collect();
    let extra: Vec<&String> = g.keys().filter(|k| !w.contains_key(*k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && g.len() == got.len(),
        "{table}: {} rows, batch {}; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
    for (k, wr) in &w {
        let gr = &g[k];
        // The JSON writers leave out null columns: compare the union.
        let cols: BTreeSet<&String> = wr
            .as_object()
            .unwrap()
            .keys()
            .chain(gr.as_object().unwrap().keys())
            .collect();
        for col in cols {
            let (gv, wv) = (
                gr.get(col).unwrap_or(&Value::Null),
                wr.get(col).unwrap_or(&Value::Null),
            );
            let same = match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                _ => gv == wv,
            };
            assert!(
                same,
                "{table} row {k} column {col}: worker {gv}, batch {wv}\nworker {gr}\nbatch  {wr}"
            );
        }
    }
}

/// What the batch recomputation finds.
struct Truth {
    tables: HashMap<&'static str, Vec<Value>>,
    applied_production: usize,
    late: Vec<(&'static str, i32, i64)>,
    bad: Vec<(&'static str, i32, i64)>,
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
}

fn i64s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
fn i32s(v: impl IntoIterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(v))
}
fn f64s(v: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}
fn strs<S: AsRef<str>>(v: impl IntoIterator<Item = S>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}
fn opt_strs(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

async fn rows(ctx: &SessionContext, q: &str) -> Vec<Value> {
    let batches = ctx.sql(q).await.unwrap().collect().await.unwrap();
    let mut buf = Vec::new();
    let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
    w.write_batches(&batches.iter().collect::<Vec<_>>())
        .unwrap();
    w.finish().unwrap();
    if buf.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&buf).unwrap()
}

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

impl Truth {
    async fn compute(cfg: &Config, input: &HashMap<&str, Vec<Record>>) -> Truth {
        let t = &cfg.worker.twin;
        let off = i64::from(cfg.worker.utc_offset_minutes) * MINUTE;
        let (ooo, lateness) = (t.out_of_orderness_ms, t.allowed_lateness_ms);
        let r = &t.retention;
        let to_report = |q: f64, u: Unit| cfg.units.to_report(q, u);
        let mut bad = Vec::new();

        // production(part, off, event_id, line, sku, good, reject, state, t, t_end)
        let mut prod: Vec<(i32, i64, Envelope<ProductionRecord>)> = Vec::new();
        for rec in &input["production"] {
            match codec::decode_any::<Envelope<ProductionRecord>>(&rec.payload) {
                Ok(e) if e.payload.period_end_ms >= e.payload.period_start_ms => {
                    prod.push((rec.partition, rec.offset, e))
                }
                _ => bad.push(("production", rec.partition, rec.offset)),
            }
        }
        let ctx = SessionContext::new();
        ctx.register_batch(
            "prod",
            batch(vec![
                ("part", i32s(prod.iter().map(|r| r.0))),
                ("off", i64s(prod.iter().map(|r| r.1))),
                ("event_id", strs(prod.iter().map(|r| r.2.event_id.as_str()))),
                (
                    "line",
                    strs(prod.iter().map(|r| r.2.payload.line_id.as_str())),
                ),
                (
                    "sku",
                    strs(prod.iter().map(|r| r.2.payload.sku_code.as_str())),
                ),
                (
                    "good",
                    f64s(
                        prod.iter()
                            .map(|r| to_report(r.2.payload.good_count as f64, r.2.payload.unit)),
                    ),
                ),
                (
                    "reject",
                    f64s(
                        prod.iter()
                            .map(|r| to_report(r.2.payload.reject_count as f64, r.2.payload.unit)),
                    ),
                ),
                (
                    "state",
                    strs(prod.iter().map(|r| r.2.payload.state.as_str())),
                ),
                ("t", i64s(prod.iter().map(|r| r.2.payload.period_start_ms))),
                (
                    "t_end",
                    i64s(prod.iter().map(|r| r.2.payload.period_end_ms)),
                ),
            ]),
        )
        .unwrap();

        let mut plans: Vec<(i32, i64, Envelope<ProductionPlan>)> = Vec::new();
        for rec in &input["production_plan"] {
            let e = codec::decode_any(&rec.payload).expect("plans are all good");
            plans.push((rec.partition, rec.offset, e));
        }
        ctx.register_batch(
            "plan",
            batch(vec![
                ("part", i32s(plans.iter().map(|r| r.0))),
                ("off", i64s(plans.iter().map(|r| r.1))),
                (
                    "event_id",
                    strs(plans.iter().map(|r| r.2.event_id.as_str())),
                ),
                (
                    "plan_id",
                    strs(plans.iter().map(|r| r.2.payload.plan_id.as_str())),
                ),
                (
                    "line",
                    strs(plans.iter().map(|r| r.2.payload.line_id.as_str())),
                ),
                (
                    "sku",
                    strs(plans.iter().map(|r| r.2.payload.sku_code.as_str())),
                ),
                (
                    "day",
                    i32s(plans.iter().map(|r| days(r.2.payload.plan_date))),
                ),
                (
                    "qty",
                    f64s(
                        plans
                            .iter()
                            .map(|r| to_report(r.2.payload.planned_quantity, r.2.payload.unit)),
                    ),
                ),
            ]),
        )
        .unwrap();

        let mut caps: Vec<(i32, i64, Envelope<LineCapacity>)> = Vec::new();
        for rec in &input["line_capacity"] {
            let e = codec::decode_any(&rec.payload).expect("capacities are all good");
            caps.push((rec.partition, rec.offset, e));
        }
        ctx.register_batch(
            "cap",
            batch(vec![
                ("off", i64s(caps.iter().map(|r| r.1))),
                ("event_id", strs(caps.iter().map(|r| r.2.event_id.as_str()))),
                (
                    "line",
                    strs(caps.iter().map(|r| r.2.payload.line_id.as_str())),
                ),
                (
                    "sku",
                    opt_strs(caps.iter().map(|r| r.2.payload.sku_code.clone()).collect()),
                ),
                (
                    "from_day",
                    i32s(caps.iter().map(|r| days(r.2.payload.valid_from))),
                ),
                (
                    "rate",
                    f64s(
                        caps.iter()
                            .map(|r| to_report(r.2.payload.rated_per_minute, r.2.payload.unit)),
                    ),
                ),
            ]),
        )
        .unwrap();

        // The late rule: behind the newest earlier event time of the
        // partition by more than the disorder plus the lateness. A record
        // behind whose event id came before is a duplicate, not late.
        let classified = format!(
            "SELECT *, prev_max IS NOT NULL AND t < prev_max - {ooo} - {lateness} AS behind FROM ( \
               SELECT *, MAX(t) OVER (PARTITION BY part ORDER BY off \
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max, \
                 ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY off) AS rn FROM prod)"
        );
        let df = ctx.sql(&classified).await.unwrap();
        ctx.register_table("classified", df.into_view()).unwrap();
        let late_rows = rows(
            &ctx,
            "SELECT part, off FROM classified WHERE behind AND rn = 1",
        )
        .await;
        let late = late_rows
            .iter()
            .map(|r| {
                (
                    "production",
                    r["part"].as_i64().unwrap() as i32,
                    r["off"].as_i64().unwrap(),
                )
            })
            .collect();
        let df = ctx
            .sql("SELECT * FROM classified WHERE NOT behind")
            .await
            .unwrap();
        ctx.register_table("applied", df.into_view()).unwrap();
        // The last applied version of each period: a correction replaces,
        // the same content again changes nothing.
        let df = ctx
            .sql(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY line, t ORDER BY off DESC) \
                 AS version FROM applied) WHERE version = 1",
            )
            .await
            .unwrap();
        ctx.register_table("current", df.into_view()).unwrap();
        let df = ctx
            .sql("SELECT part, MAX(t) AS pmax FROM applied GROUP BY part")
            .await
            .unwrap();
        ctx.register_table("pmax", df.into_view()).unwrap();

        // Windows: minute and hour (the offset is whole hours), the local
        // day, and shifts at 06:00, 14:00 and 22:00 local time.
        let h = 3_600_000i64;
        let local = format!("(t + {off})");
        let lday = format!("(({local} / {DAY}) * {DAY})");
        let shift_start = format!(
            "(CASE WHEN {local} - {lday} < {s6} THEN {lday} - {h2} \
                   WHEN {local} - {lday} < {s14} THEN {lday} + {s6} \
                   WHEN {local} - {lday} < {s22} THEN {lday} + {s14} \
                   ELSE {lday} + {s22} END - {off})",
            s6 = 6 * h,
            s14 = 14 * h,
            s22 = 22 * h,
            h2 = 2 * h
        );
        let kinds = [
            ("minute", format!("t - t % {MINUTE}"), MINUTE, r.minute_ms),
            ("hour", format!("t - t % {h}"), h, r.hour_ms),
            ("shift", shift_start, 8 * h, r.shift_ms),
            ("day", format!("{lday} - {off}"), DAY, r.day_ms),
        ];
        let per_kind: Vec<String> = kinds
            .iter()
            .map(|(kind, start, len, keep)| {
                format!(
                    "SELECT part, line, sku, '{kind}' AS kind, ws, ws + {len} AS we, \
                       SUM(CASE WHEN state = 'running' THEN t_end - t ELSE 0 END) AS running_ms, \
                       SUM(CASE WHEN state = 'idle' THEN t_end - t ELSE 0 END) AS idle_ms, \
                       SUM(CASE WHEN state = 'fault' THEN t_end - t ELSE 0 END) AS fault_ms, \
                       SUM(CASE WHEN state = 'changeover' THEN t_end - t ELSE 0 END) AS changeover_ms, \
                       SUM(good) AS good, SUM(reject) AS reject, COUNT(*) AS records, {keep} AS keep \
                     FROM (SELECT *, {start} AS ws FROM current) GROUP BY part, line, sku, ws"
                )
            })
            .collect();
        // Retained windows, with the local day of their start and the
        // rated rate that day: the SKU's own capacity, else the line's.
        let caps_dedup = "(SELECT * FROM (SELECT *, ROW_NUMBER() OVER \
              (PARTITION BY line, sku, from_day ORDER BY off DESC) AS k FROM \
              cap) WHERE k = 1)";
        ctx.register_table("capd", ctx.sql(caps_dedup).await.unwrap().into_view())
            .unwrap();
        let win = format!(
            "SELECT w.*, CAST((w.ws + {off}) / {DAY} AS INT) AS lday, \
                 w.we <= pm.pmax - {ooo} - {lateness} AS fin \
             FROM ({}) w JOIN pmax pm ON w.part = pm.part WHERE w.we >= pm.pmax - w.keep",
            per_kind.join(" UNION ALL ")
        );
        ctx.register_table("win0", ctx.sql(&win).await.unwrap().into_view())
            .unwrap();
        // The rated rate of (line, SKU, day): the newest capacity valid
        // that day for the SKU, else for the whole line.
        let rated = |tbl: &str, day: &str| {
            format!(
                "SELECT x.*, COALESCE(s.rate, g.rate) AS rated FROM {tbl} x \
                 LEFT JOIN (SELECT * FROM (SELECT t.line, t.sku, t.{day} AS d, c.rate, ROW_NUMBER() OVER \
                     (PARTITION BY t.line, t.sku, t.{day} ORDER BY c.from_day DESC) AS k \
                     FROM (SELECT DISTINCT line, sku, {day} FROM {tbl}) t JOIN capd c \
                     ON c.line = t.line AND c.sku = t.sku AND c.from_day <= t.{day}) WHERE k = 1) s \
                   ON s.line = x.line AND s.sku = x.sku AND s.d = x.{day} \
                 LEFT JOIN (SELECT * FROM (SELECT t.line, t.{day} AS d, c.rate, ROW_NUMBER() OVER \
                     (PARTITION BY t.line, t.{day} ORDER BY c.from_day DESC) AS k \
                     FROM (SELECT DISTINCT line, {day} FROM {tbl}) t JOIN capd c \
                     ON c.line = t.line AND c.sku IS NULL AND c.from_day <= t.{day}) WHERE k = 1) g \
                   ON g.line = x.line AND g.d = x.{day}"
            )
        };
        ctx.register_table(
            "win",
            ctx.sql(&rated("win0", "lday")).await.unwrap().into_view(),
        )
        .unwrap();

        let factors = |ideal: &str| {
            format!(
                "CASE WHEN running_ms + fault_ms + changeover_ms > 0 \
                   THEN CAST(running_ms AS DOUBLE) / (running_ms + fault_ms + changeover_ms) END AS availability, \
                 CASE WHEN running_ms > 0 THEN {ideal} / (running_ms / 60000.0) END AS performance, \
                 CASE WHEN good + reject > 0 THEN good / (good + reject) END AS quality"
            )
        };
        let with_oee = "*, availability * performance * quality AS oee";
        let unit = cfg.units.report_in.as_str();
        let windows = rows(
            &ctx,
            &format!(
                "SELECT line AS line_id, sku AS sku_code, kind AS \"window\", ws AS window_start, \
                   we AS window_end, running_ms, idle_ms, fault_ms, changeover_ms, good, reject, \
                   '{unit}' AS unit, records, availability, performance, quality, oee, fin AS \"final\" \
                 FROM (SELECT {with_oee} FROM (SELECT *, {} FROM win))",
                factors("(good + reject) / rated")
            ),
        )
        .await;
        let oee = rows(
            &ctx,
            &format!(
                "SELECT line AS line_id, kind AS \"window\", ws AS window_start, \
                   we AS window_end, running_ms, idle_ms, fault_ms, changeover_ms, good, reject, \
                   '{unit}' AS unit, records, availability, performance, quality, oee, fin AS \"final\" \
                 FROM (SELECT {with_oee} FROM (SELECT *, {} FROM ( \
                   SELECT line, kind, ws, MAX(we) AS we, SUM(running_ms) AS running_ms, \
                     SUM(idle_ms) AS idle_ms, SUM(fault_ms) AS fault_ms, \
                     SUM(changeover_ms) AS changeover_ms, SUM(good) AS good, SUM(reject) AS reject, \
                     SUM(records) AS records, BOOL_AND(fin) AS fin, \
                     CASE WHEN COUNT(rated) = COUNT(*) THEN SUM((good + reject) / rated) END AS ideal \
                   FROM win GROUP BY line, kind, ws)))",
                factors("ideal")
            ),
        )
        .await;

        // Plans: the last version of each plan id, kept while its day is
        // within the day retention; joined with the day windows.
        let plan_q = format!(
            "SELECT p.line, p.sku, p.day, SUM(p.qty) AS planned FROM \
               (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY plan_id ORDER BY off DESC) AS k \
                  FROM plan) WHERE k = 1) p \
             LEFT JOIN pmax pm ON p.part = pm.part \
             WHERE pm.pmax IS NULL OR (CAST(p.day AS BIGINT) + 1) * {DAY} - {off} >= pm.pmax - {keep} \
             GROUP BY p.line, p.sku, p.day",
            keep = r.day_ms
        );
        let pa = format!(
            "SELECT COALESCE(p.line, a.line) AS line, COALESCE(p.sku, a.sku) AS sku, \
               COALESCE(p.day, a.lday) AS d, p.planned, COALESCE(a.good, 0.0) AS good, \
               COALESCE(a.total, 0.0) AS total \
             FROM ({plan_q}) p FULL OUTER JOIN \
               (SELECT line, sku, lday, SUM(good) AS good, SUM(good + reject) AS total \
                FROM win WHERE kind = 'day' GROUP BY line, sku, lday) a \
             ON p.line = a.line AND p.sku = a.sku AND p.day = a.lday"
        );
        ctx.register_table("pa", ctx.sql(&pa).await.unwrap().into_view())
            .unwrap();
        let plan_actual = rows(
            &ctx,
            &format!(
                "SELECT line AS line_id, sku AS sku_code, CAST(CAST(d AS DATE) AS VARCHAR) AS day, \
                   planned, good, total, '{unit}' AS unit, \
                   CASE WHEN planned > 0 THEN good / planned END AS attainment, \
                   rated AS rated_per_minute, \
                   CASE WHEN rated > 0 THEN total / (rated * 1440) END AS utilisation \
                 FROM ({})",
                rated("pa", "d")
            ),
        )
        .await;

        // Status: the newest record of each line (a record at or after the
        // newest so far replaces it), since when the state has not changed.
        let mut applied_rows = rows(
            &ctx,
            "SELECT part, off, line, sku, state, t, t_end FROM applied ORDER BY part, off",
        )
        .await;
        let applied_production = rows(&ctx, "SELECT COUNT(*) AS n FROM current").await[0]["n"]
            .as_u64()
            .unwrap() as usize;
        let mut status: BTreeMap<String, (String, i64, String, i64, i64)> = BTreeMap::new();
        for r in applied_rows.drain(..) {
            let line = r["line"].as_str().unwrap().to_owned();
            let (state, sku) = (
                r["state"].as_str().unwrap().to_owned(),
                r["sku"].as_str().unwrap().to_owned(),
            );
            let (t, t_end) = (r["t"].as_i64().unwrap(), r["t_end"].as_i64().unwrap());
            match status.get_mut(&line) {
                None => {
                    status.insert(line, (state, t, sku, t, t_end));
                }
                Some(s) if t >= s.3 => {
                    let since = if s.0 == state { s.1 } else { t };
                    *s = (state, since, sku, t, t_end);
                }
                Some(_) => {}
            }
        }
        ctx.register_batch(
            "status",
            batch(vec![
                ("line", strs(status.keys())),
                ("state", strs(status.values().map(|s| s.0.as_str()))),
                ("since", i64s(status.values().map(|s| s.1))),
                ("sku", strs(status.values().map(|s| s.2.as_str()))),
                ("last_start", i64s(status.values().map(|s| s.3))),
                ("last_end", i64s(status.values().map(|s| s.4))),
            ]),
        )
        .unwrap();
        let status = rows(
            &ctx,
            &format!(
                "SELECT s.line AS line_id, s.state, s.since AS state_since, s.sku AS sku_code, \
                   s.last_end AS last_period_end, COALESCE(SUM(w.good + w.reject), 0.0) AS output_15m, \
                   COALESCE(SUM(w.good + w.reject), 0.0) / 15.0 AS speed_per_min_15m, '{unit}' AS unit \
                 FROM status s LEFT JOIN win w ON w.line = s.line AND w.kind = 'minute' \
                   AND w.ws BETWEEN s.last_start - s.last_start % {MINUTE} - 14 * {MINUTE} \
                                AND s.last_start - s.last_start % {MINUTE} \
                 GROUP BY s.line, s.state, s.since, s.sku, s.last_end"
            ),
        )
        .await;

        let mut tables = HashMap::new();
        tables.insert("twin_line_status", status);
        tables.insert("twin_line_windows", windows);
        tables.insert("twin_line_oee", oee);
        tables.insert("twin_plan_actual", plan_actual);
        for (name, t) in inventory_truth(cfg, &input["stock"]).await {
            tables.insert(name, t);
        }
        Truth {
            tables,
            applied_production,
            late,
            bad,
        }
    }
}

/// The inventory twin recomputed in batch from the `stock` topic: the
/// newest count per warehouse and SKU (at equal times the later record),
/// the last version of each order and production period, the movements
/// after the count, and demand over the `demand_days` complete days before
/// the day of each partition's newest event.
async fn inventory_truth(cfg: &Config, stock: &[Record]) -> Vec<(&'static str, Vec<Value>)> {
    use marktwin_core::events::{AllocationOrder, EventKind, InventorySnapshot};
    let inv = &cfg.inventory;
    let to_report = |q: f64, u: Unit| cfg.units.to_report(q, u);
    // (part, off, kind, warehouse, sku, t, qty, natural key, order day, event time)
    type Row = (
        i32,
        i64,
        &'static str,
        String,
        String,
        i64,
        f64,
        String,
        Option<i64>,
        i64,
    );
    let mut rows_in: Vec<Row> = Vec::new();
    for rec in stock {
        let env: Envelope<Value> = codec::decode_any(&rec.payload).unwrap();
        let (p, o, et) = (rec.partition, rec.offset, env.event_time_ms);
        match env.kind {
            EventKind::InventorySnapshot => {
                let c: InventorySnapshot = serde_json::from_value(env.payload).unwrap();
                rows_in.push((
                    p,
                    o,
                    "count",
                    c.warehouse_id,
                    c.sku_code,
                    c.as_of_ms,
                    to_report(c.quantity, c.unit),
                    String::new(),
                    None,
                    et,
                ));
            }
            EventKind::AllocationOrder => {
                let a: AllocationOrder = serde_json::from_value(env.payload).unwrap();
                let d = i64::from(days(a.order_date));
                rows_in.push((
                    p,
                    o,
                    "move",
                    a.from_id,
                    a.sku_code,
                    d * DAY,
                    -to_report(a.quantity, a.unit),
                    format!("o/{}/{}", a.order_id, a.line_no),
                    Some(d),
                    et,
                ));
            }
            EventKind::ProductionRecord => {
                let r: ProductionRecord = serde_json::from_value(env.payload).unwrap();
                rows_in.push((
                    p,
                    o,
                    "move",
                    inv.line_warehouses[&r.line_id].clone(),
                    r.sku_code,
                    r.period_end_ms,
                    to_report(r.good_count as f64, r.unit),
                    format!("p/{}/{}", r.line_id, r.period_start_ms),
                    None,
                    et,
                ));
            }
            k => panic!("{k:?} on the stock topic"),
        }
    }
    let ctx = SessionContext::new();
    ctx.register_batch(
        "stock",
        batch(vec![
            ("part", i32s(rows_in.iter().map(|r| r.0))),
            ("off", i64s(rows_in.iter().map(|r| r.1))),
            ("kind", strs(rows_in.iter().map(|r| r.2))),
            ("warehouse", strs(rows_in.iter().map(|r| r.3.as_str()))),
            ("sku", strs(rows_in.iter().map(|r| r.4.as_str()))),
            ("t", i64s(rows_in.iter().map(|r| r.5))),
            ("qty", f64s(rows_in.iter().map(|r| r.6))),
            ("nkey", strs(rows_in.iter().map(|r| r.7.as_str()))),
            (
                "order_day",
                Arc::new(Int64Array::from_iter(rows_in.iter().map(|r| r.8))) as ArrayRef,
            ),
            ("event_time", i64s(rows_in.iter().map(|r| r.9))),
        ]),
    )
    .unwrap();
    let whs: BTreeSet<&str> = rows_in.iter().map(|r| r.3.as_str()).collect();
    ctx.register_batch(
        "wh",
        batch(vec![
            ("warehouse", strs(whs.iter())),
            ("region", strs(whs.iter().map(|w| inv.region_of(w)))),
        ]),
    )
    .unwrap();
    let unit = cfg.units.report_in.as_str();
    let (n, lo, hi) = (inv.demand_days, inv.cover_min_days, inv.cover_max_days);
    for q in [
        "CREATE VIEW c AS SELECT warehouse, sku, t, qty FROM (SELECT *, ROW_NUMBER() OVER \
           (PARTITION BY warehouse, sku ORDER BY t DESC, off DESC) AS rn FROM stock \
           WHERE kind = 'count') WHERE rn = 1",
        "CREATE VIEW m AS SELECT part, warehouse, sku, t, qty, order_day FROM (SELECT *, \
           ROW_NUMBER() OVER (PARTITION BY part, nkey ORDER BY off DESC) AS rn FROM stock \
           WHERE kind = 'move') WHERE rn = 1",
        "CREATE VIEW mv AS SELECT m.warehouse, m.sku, \
           SUM(CASE WHEN m.qty >= 0 THEN m.qty ELSE 0.0 END) AS moved_in, \
           SUM(CASE WHEN m.qty < 0 THEN -m.qty ELSE 0.0 END) AS moved_out \
           FROM m LEFT JOIN c ON c.warehouse = m.warehouse AND c.sku = m.sku \
           WHERE c.t IS NULL OR m.t > c.t GROUP BY m.warehouse, m.sku",
        &format!(
            "CREATE VIEW inventory AS SELECT COALESCE(c.warehouse, mv.warehouse) AS warehouse_id, \
               COALESCE(c.sku, mv.sku) AS sku_code, wh.region, \
               COALESCE(c.qty, 0.0) + COALESCE(mv.moved_in, 0.0) - COALESCE(mv.moved_out, 0.0) AS on_hand, \
               c.qty AS counted, c.t AS counted_at, COALESCE(mv.moved_in, 0.0) AS moved_in, \
               COALESCE(mv.moved_out, 0.0) AS moved_out, '{unit}' AS unit \
             FROM c FULL OUTER JOIN mv ON c.warehouse = mv.warehouse AND c.sku = mv.sku \
             JOIN wh ON wh.warehouse = COALESCE(c.warehouse, mv.warehouse)"
        ),
        &format!(
            "CREATE VIEW cover AS WITH \
               today AS (SELECT part, MAX(event_time) / {DAY} AS today FROM stock GROUP BY part), \
               dem AS (SELECT wh.region, m.sku, SUM(-m.qty) / {n}.0 AS demand FROM m \
                 JOIN today d ON d.part = m.part JOIN wh ON wh.warehouse = m.warehouse \
                 WHERE m.order_day >= d.today - {n} AND m.order_day < d.today \
                 GROUP BY wh.region, m.sku), \
               oh AS (SELECT region, sku_code AS sku, SUM(on_hand) AS on_hand FROM inventory \
                 GROUP BY region, sku_code), \
               cv AS (SELECT COALESCE(oh.region, dem.region) AS region, \
                 COALESCE(oh.sku, dem.sku) AS sku, COALESCE(oh.on_hand, 0.0) AS on_hand, \
                 COALESCE(dem.demand, 0.0) AS demand \
                 FROM oh FULL OUTER JOIN dem ON oh.region = dem.region AND oh.sku = dem.sku) \
             SELECT region, sku AS sku_code, on_hand, demand AS demand_per_day, \
               CASE WHEN demand > 0 THEN on_hand / demand END AS cover_days, \
               CASE WHEN demand <= 0 THEN 'unknown' WHEN on_hand / demand < {lo:?} THEN 'cover_low' \
                 WHEN on_hand / demand > {hi:?} THEN 'cover_high' ELSE 'ok' END AS status, \
               '{unit}' AS unit FROM cv"
        ),
    ] {
        ctx.sql(q).await.unwrap();
    }
    let inventory = rows(&ctx, "SELECT * FROM inventory").await;
    let cover = rows(&ctx, "SELECT * FROM cover").await;
    let alerts = rows(
        &ctx,
        &format!(
            "SELECT region, sku_code, status AS alert, cover_days, \
               CASE WHEN status = 'cover_low' THEN {lo:?} ELSE {hi:?} END AS bound_days, \
               on_hand, demand_per_day, unit FROM cover WHERE status IN ('cover_low', 'cover_high')"
        ),
    )
    .await;
    let statuses: BTreeMap<String, usize> = cover.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        m
    });
    eprintln!(
        "inventory batch: {} stock records, {} positions, cover statuses {statuses:?}",
        stock.len(),
        inventory.len()
    );
    vec![
        ("twin_inventory", inventory),
        ("twin_stock_cover", cover),
        ("twin_stock_alerts", alerts),
    ]
}
