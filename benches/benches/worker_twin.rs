//! The production twin, each figure next to a baseline measured in the
//! same run:
//! 1. in-process: decode + apply against serde_json decode-only of the same
//!    production records (criterion, then a best-of-5 ratio);
//! 2. restart to ready: a checkpoint of about a million state rows loaded
//!    back from disk (Arrow IPC through the checkpoint store) and restored;
//! 3. through the broker: `TWIN_RECORDS` (default 200,000) production
//!    records on a Tansu broker (in memory; `BROKER_STORAGE=sqlite` for the
//!    durable store), read once by a bare librdkafka consumer assigned all
//!    partitions that only counts them (raw consume), then by the worker as `marktwin worker`
//!    runs it, from start to caught up (its changes published to the twin
//!    topic and read back by the view). CPU seconds are this process's
//!    (the broker is a child process).
//!
//! `cargo bench --workspace --bench worker_twin`. Goals (issue 4): twin
//! processing at least 50 % of the decode-only rate; end to end at least
//! 80 % of raw consume; restart to ready under 5 s per million state rows.
//! Each is printed as met or not.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use marktwin_core::Config;
use marktwin_core::events::{Envelope, LineState, ProductionRecord, Unit};
use marktwin_state::LineTwin;
use marktwin_state::checkpoint::{Checkpoint, CheckpointStore};
use marktwin_state::line_twin::TwinParams;

const N: usize = 100_000;
const MINUTE: i64 = 60_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Seeded production minutes: `lines` lines, one record per line and
/// minute, four SKUs, state changes now and then, 2 % out of order.
fn records(lines: usize, n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x5EED;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let (l, mut m) = (i % lines, (i / lines) as i64);
            if next() % 50 == 0 {
                m = (m - 3).max(0);
            }
            let state = match next() % 40 {
                0 => LineState::Fault,
                1 => LineState::Idle,
                _ => LineState::Running,
            };
            let good = if state == LineState::Running {
                280 + next() % 40
            } else {
                0
            };
            let r = ProductionRecord {
                line_id: format!("line-{}", l + 1),
                sku_code: format!("SKU{:04}", (l + m as usize / 480) % 4 + 1),
                good_count: good,
                reject_count: good / 200,
                unit: Unit::Pack,
                state,
                period_start_ms: T0 + m * MINUTE,
                period_end_ms: T0 + (m + 1) * MINUTE,
            };
            serde_json::to_vec(&Envelope::wrap("mes", 0, r)).unwrap()
        })
        .collect()
}

fn params(cfg: &Config) -> Arc<TwinParams> {
    Arc::new(TwinParams::from_config(cfg))
}

fn bench(c: &mut Criterion) {
    let cfg = Config::default();
    let recs = records(50, N);
    let mut g = c.benchmark_group("worker_twin");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("baseline_decode_only", |b| b.iter(|| decode_all(&recs)));
    g.bench_function("twin_apply", |b| b.iter(|| apply_all(&recs, &cfg)));
    g.finish();
    ratio_goal(&recs, &cfg);
    restart(&cfg);
    through_broker();
}

/// The baseline: decodes every record, nothing more.
fn decode_all(recs: &[Vec<u8>]) {
    for r in recs {
        let e: Envelope<ProductionRecord> = serde_json::from_slice(r).unwrap();
        black_box(e);
    }
}

/// Applies every record to a new twin, evicting every 10,000 records as
/// the worker does before each publish.
fn apply_all(recs: &[Vec<u8>], cfg: &Config) -> LineTwin {
    let mut t = LineTwin::new(params(cfg));
    for (i, r) in recs.iter().enumerate() {
        black_box(t.apply(0, r));
        if i % 10_000 == 9_999 {
            t.evict();
        }
    }
    t
}

/// Times `f` over `rounds` runs; the best run, in seconds.
fn best(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The processing goal, measured again side by side (best of 5 each) so it
/// can be printed as met or not.
fn ratio_goal(recs: &[Vec<u8>], cfg: &Config) {
    let decode = best(5, || decode_all(recs));
    let apply = best(5, || {
        black_box(apply_all(recs, cfg));
    });
    let n = recs.len() as f64;
    let ratio = decode / apply;
    println!(
        "twin: decode-only {:.0} records/s, twin apply {:.0} records/s per core: {:.0} % of decode-only (goal >= 50 %: {})",
        n / decode,
        n / apply,
        100.0 * ratio,
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
}

/// Restart to ready per million state rows: a twin whose minute windows
/// are kept for 30 days holds about a million rows; it is checkpointed to a
/// local directory, then loaded and restored (best of 3).
fn restart(cfg: &Config) {
    let mut cfg = cfg.clone();
    cfg.worker.twin.retention.minute_ms = 30 * 86_400_000;
    let p = params(&cfg);
    let lines = 100;
    let recs = records(lines, 400_000);
    let mut t = LineTwin::new(p.clone());
    for r in &recs {
        t.apply(0, r);
    }
    let rows = t.rows();
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open("", dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cp = Checkpoint {
        offsets: [("marktwin.production".to_owned(), recs.len() as i64)].into(),
        published: Default::default(),
        tables: t
            .save()
            .unwrap()
            .into_iter()
            .map(|(n, b)| (n.to_owned(), b))
            .collect(),
        created_ms: 1,
    };
    let bytes = rt.block_on(store.save("twin", 0, &cp)).unwrap();
    let secs = best(3, || {
        let cp = rt.block_on(store.load("twin", 0)).unwrap().unwrap();
        black_box(LineTwin::restore(p.clone(), &cp.tables).unwrap());
    });
    let per_million = secs / rows as f64 * 1e6;
    println!(
        "twin restart: {rows} state rows, checkpoint {:.1} MiB, load + restore {secs:.2} s = {per_million:.2} s per million rows (goal < 5 s: {})",
        bytes as f64 / 1_048_576.0,
        if per_million < 5.0 { "met" } else { "NOT met" }
    );
}

/// Raw consume and the worker over the same topic, one after the other.
fn through_broker() {
    use marktwin::app::{self, Parts};
    use marktwin_benches::{broker_storage, cpu_secs, cpu_secs_of, env_num};
    use marktwin_core::topics::id;
    use marktwin_kafka::EmbeddedBroker;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::Duration;

    let n = env_num("TWIN_RECORDS", 200_000) as usize;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    cfg.kafka.embedded_storage = broker_storage();
    cfg.simulator.enabled = false;
    let broker = rt.block_on(EmbeddedBroker::start(&cfg)).expect("broker");
    cfg.kafka.brokers = broker.bootstrap();
    rt.block_on(marktwin_kafka::topics::ensure_topics(
        &cfg,
        &cfg.kafka.brokers,
    ))
    .unwrap();
    let topic = cfg.topic_name(id::PRODUCTION);
    let producer: FutureProducer = marktwin_kafka::client_config(&cfg, &cfg.kafka.brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let lines = 60;
    let recs = records(lines, n);
    rt.block_on(async {
        for chunk in recs.chunks(10_000) {
            let sends: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let key = format!("line-{}", i % lines + 1);
                    let (producer, topic) = (producer.clone(), topic.clone());
                    async move {
                        producer
                            .send(
                                FutureRecord::to(&topic).key(&key).payload(r),
                                Duration::from_secs(60),
                            )
                            .await
                            .map_err(|(e, _)| e)
                    }
                })
                .collect();
            for r in futures::future::join_all(sends).await {
                r.expect("produced");
            }
        }
    });

    let broker_pid = broker.pid().map(|p| p.to_string()).unwrap_or_default();
    let broker_cpu = || cpu_secs_of(&broker_pid);

    // Raw consume: every partition of `topics` from the beginning until
    // the production records are in; seconds, CPU s here and in the broker.
    let raw = |topics: &[String]| {
        let (c0, b0, t0) = (cpu_secs(), broker_cpu(), Instant::now());
        let consumer: BaseConsumer = marktwin_kafka::client_config(&cfg, &cfg.kafka.brokers)
            .set("group.id", "bench-raw")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // As the worker's consumer.
            .set("fetch.wait.max.ms", "100")
            .create()
            .unwrap();
        // Assigned, not subscribed, as the worker reads: no group join in
        // the time.
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in topics {
            for p in 0..cfg.topic(id::PRODUCTION).partitions {
                tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        let mut got = 0usize;
        while got < n {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                black_box(rdkafka::message::Message::payload(&m));
                got += 1;
            }
        }
        (
            t0.elapsed().as_secs_f64(),
            cpu_secs() - c0,
            broker_cpu() - b0,
        )
    };
    // The production topic alone (the goal's baseline), then all three
    // inputs of the twin as the worker reads them (plan and capacity are
    // empty here).
    let (raw_s, raw_cpu, raw_broker) = raw(std::slice::from_ref(&topic));
    let inputs: Vec<String> = [id::PRODUCTION, id::PRODUCTION_PLAN, id::LINE_CAPACITY]
        .iter()
        .map(|t| cfg.topic_name(t))
        .collect();
    let (raw3_s, _, _) = raw(&inputs);

    // The worker, from start to caught up.
    let (c0, b0, t0) = (cpu_secs(), broker_cpu(), Instant::now());
    let parts = Parts {
        embedded_broker: false,
        simulator: false,
        edge: false,
        worker: true,
    };
    let running = rt
        .block_on(app::start(cfg.clone(), parts, "127.0.0.1:0"))
        .unwrap();
    let ready = |check: &str| {
        running
            .readiness
            .report()
            .iter()
            .any(|(name, ok, _)| name == check && *ok)
    };
    let started = t0.elapsed().as_secs_f64();
    let mut worker_ready = None;
    while !(ready("worker_twin") && ready("view_twin")) {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "worker did not catch up"
        );
        if worker_ready.is_none() && ready("worker_twin") {
            worker_ready = Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (w_s, w_cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
    let w_broker = broker_cpu() - b0;
    println!(
        "twin through the broker: raw consume {raw_s:.2} s (CPU s: this process {raw_cpu:.2}, broker {raw_broker:.2}); worker started in {started:.2} s, caught up at {:.2} s, view ready at {w_s:.2} s (CPU s: this process {w_cpu:.2}, broker {w_broker:.2})",
        worker_ready.unwrap_or(w_s)
    );
    rt.block_on(running.shutdown());
    rt.block_on(broker.stop());

    println!(
        "twin through the broker: raw consume of the three inputs {:.0} records/s; the worker {:.0} % of that",
        n as f64 / raw3_s,
        100.0 * raw3_s / w_s
    );
    let ratio = raw_s / w_s;
    println!(
        "twin through the broker ({n} records, {:?} storage): raw consume {:.0} records/s ({:.0} per CPU s); worker {:.0} records/s ({:.0} per CPU s): {:.0} % of raw consume (goal >= 80 %: {})",
        cfg.kafka.embedded_storage,
        n as f64 / raw_s,
        n as f64 / raw_cpu.max(0.01),
        n as f64 / w_s,
        n as f64 / w_cpu.max(0.01),
        100.0 * ratio,
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
