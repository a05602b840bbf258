//! The embedded broker keeps acknowledged records across a restart on the
//! same data directory, and a consumer that assigns partitions from the
//! beginning reads every one of them back (what the worker does on start).

use marktwin_core::Config;
use marktwin_kafka::{EmbeddedBroker, ensure_topics, produce_all, producer};
use marktwin_tests::{Record, read_topic};

fn read_all(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    let mut v = read_topic(bootstrap, topic, want);
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_broker_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let topic = cfg.topic_name("pos");

    let broker = EmbeddedBroker::start(&cfg).await.unwrap();
    let bootstrap = broker.bootstrap();
    ensure_topics(&cfg, &bootstrap).await.unwrap();
    let p = producer(&cfg, &bootstrap).unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("k{i}"), format!("{{\"i\":{i}}}").into_bytes()))
        .collect();
    produce_all(&p, &topic, &records).await.unwrap();
    drop(p);
    let (b, t) = (bootstrap.clone(), topic.clone());
    let before = tokio::task::spawn_blocking(move || read_all(&b, &t, 3000))
        .await
        .unwrap();
    assert_eq!(before.len(), records.len());
    broker.stop().await;

    let broker = EmbeddedBroker::start(&cfg).await.unwrap();
    let bootstrap = broker.bootstrap();
    let t = topic.clone();
    let after = tokio::task::spawn_blocking(move || read_all(&bootstrap, &t, 3000))
        .await
        .unwrap();
    assert_eq!(after, before, "the same records at the same offsets");
    broker.stop().await;
}
