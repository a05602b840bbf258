//! Customer profiles and recommendations, each figure next to a baseline
//! measured in the same run:
//! 1. updates per second per core while replaying Complete Journey's
//!    1,469,307 POS lines in time order (fetched from PyPI like the tests'
//!    data): retailer profiles, consumer profiles and the basket
//!    co-occurrence model, against the least any per-line update does (one
//!    hash-map sum per store and per household);
//! 2. memory per million consumer profiles: a million synthetic consumers
//!    (pseudonymised 64-hex ids, a few SKUs each, as tobacco shoppers buy),
//!    each in its own process, ours against exact per-consumer maps of the
//!    same facts;
//!    The worker's partition states (profiles and consumers operators) are
//!    measured on the same lines as JSON records, against decoding them;
//! 3. time to refresh: every store's profile, grading, SKU proposals for
//!    every retailer, consumer purchase-intent refit and rows, and one
//!    publish of the consumers operator.
//!
//! `cargo bench --workspace --bench profiles`. Goal (issue 5): at most
//! 500 MB per million consumer profiles.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use marktwin_benches::{child, cpu_secs, env_num, field, rss_mib};
use marktwin_core::Config;
use marktwin_core::codec;
use marktwin_core::config::ProfilesConfig;
use marktwin_core::events::{Envelope, PosTransaction};
use marktwin_state::assortment::Assortments;
use marktwin_state::consumer_profile::{ConsumerLine, ConsumerProfiles};
use marktwin_state::consumer_state::{ConsumerParams, ConsumerState};
use marktwin_state::grading;
use marktwin_state::recommend::CoBought;
use marktwin_state::retailer_profile::{Line, RetailerProfiles, Source};
use marktwin_state::retailer_state::{RetailerParams, RetailerState};

/// Synthetic consumer lines: `n` consumers, 12 lines each over 6 baskets,
/// 3 of 40 SKUs per consumer, in time order.
fn synthetic(n: u64) -> impl Iterator<Item = (String, String, u64, i32, String, f64)> {
    let mut x: u64 = 0x5EED;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..12 * n).map(move |i| {
        let c = i % n;
        let trip = i / n;
        let sku = (c * 7 + (next() % 3)) % 40;
        (
            format!("{:064x}", c.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            format!("R{:05}", c % 5_000),
            trip / 2,
            20_000 + (trip as i32) * 5,
            format!("SKU{sku:04}"),
            25.0,
        )
    })
}

/// Child role: builds a million (`CONSUMERS`) consumer profiles, ours or
/// the exact maps, and prints the memory they take.
fn memory_role(ours: bool) {
    let n = env_num("CONSUMERS", 1_000_000);
    let before = rss_mib();
    let cfg = Arc::new(ProfilesConfig {
        price_bands: vec![20.0, 40.0],
        ..ProfilesConfig::default()
    });
    // Measured while the profiles are alive: freed memory may go back to
    // the system.
    let mib = if ours {
        let mut p = ConsumerProfiles::new(cfg);
        for (consumer, store, basket, day, sku, amount) in synthetic(n) {
            p.add(&ConsumerLine {
                consumer: &consumer,
                store: &store,
                basket,
                day,
                sku: &sku,
                quantity: 1.0,
                amount,
            });
        }
        black_box(&p);
        assert_eq!(p.len() as u64, n);
        rss_mib() - before
    } else {
        // Exact: every SKU and store with its count, every purchase day,
        // every basket, the amount.
        #[derive(Default)]
        struct Exact {
            skus: HashMap<String, u32>,
            stores: HashMap<String, u32>,
            days: Vec<i32>,
            baskets: Vec<u64>,
            amount: f64,
        }
        let mut m: HashMap<String, Exact> = HashMap::new();
        for (consumer, store, basket, day, sku, amount) in synthetic(n) {
            let e = m.entry(consumer).or_default();
            *e.skus.entry(sku).or_default() += 1;
            *e.stores.entry(store).or_default() += 1;
            if !e.days.contains(&day) {
                e.days.push(day);
            }
            if !e.baskets.contains(&basket) {
                e.baskets.push(basket);
            }
            e.amount += amount;
        }
        black_box(&m);
        assert_eq!(m.len() as u64, n);
        rss_mib() - before
    };
    println!(
        "FIGURES mib={mib:.1} bytes_per_consumer={:.0}",
        mib * 1024.0 * 1024.0 / n as f64
    );
}

/// Lines per second per CPU second of `f` over `n` lines.
fn rate(n: usize, f: impl FnOnce()) -> (f64, f64) {
    let (cpu, wall) = (cpu_secs(), Instant::now());
    f();
    let cpu = (cpu_secs() - cpu).max(0.01);
    (n as f64 / cpu, wall.elapsed().as_secs_f64())
}

/// Prints one model's rate next to the baseline's.
fn against_base(name: &str, rate: f64, base: f64, more: &str) {
    println!(
        "{name:<44} {rate:>12.0}  ({:.0} % of baseline{more})",
        100.0 * rate / base
    );
}

fn main() {
    match std::env::var("MARKTWIN_BENCH_ROLE").as_deref() {
        Ok("memory_ours") => return memory_role(true),
        Ok("memory_exact") => return memory_role(false),
        _ => {}
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut lines = marktwin_tests::complete_journey();
    lines.sort_by(|a, b| (&a.timestamp, a.basket).cmp(&(&b.timestamp, b.basket)));
    let n = lines.len();
    // Text ids as the worker sees them, made once outside the timings.
    let text: Vec<(String, String, String, String, i32)> = lines
        .iter()
        .map(|l| {
            (
                l.store.to_string(),
                l.basket.to_string(),
                l.product.to_string(),
                l.household.to_string(),
                l.day(),
            )
        })
        .collect();
    let cfg = Arc::new(ProfilesConfig {
        grade_source: "pos".into(),
        price_bands: vec![1.0, 3.0, 10.0],
        ..ProfilesConfig::default()
    });

    println!("\nProfiles on Complete Journey, {n} POS lines in time order; lines/s per CPU second");
    let (base, _) = rate(n, || {
        let mut by_store: HashMap<&str, f64> = HashMap::new();
        let mut by_household: HashMap<&str, f64> = HashMap::new();
        for (l, t) in lines.iter().zip(&text) {
            *by_store.entry(&t.0).or_default() += l.sales_value;
            *by_household.entry(&t.3).or_default() += l.sales_value;
        }
        black_box((by_store, by_household));
    });
    println!(
        "{:<44} {:>12.0}",
        "baseline: a sum per store and household", base
    );
    let mut retailers = RetailerProfiles::new(cfg.clone());
    let mut line_no: HashMap<u64, u32> = HashMap::new();
    let (r, _) = rate(n, || {
        for (l, t) in lines.iter().zip(&text) {
            let no = line_no.entry(l.basket).or_default();
            *no += 1;
            retailers.add(&Line {
                retailer: &t.0,
                source: Source::Pos,
                order: &t.1,
                line_no: *no,
                day: t.4,
                sku: &t.2,
                quantity: l.quantity,
                amount: l.sales_value,
            });
        }
    });
    against_base("retailer profiles", r, base, "");
    let mut consumers = ConsumerProfiles::new(cfg.clone());
    let (c, _) = rate(n, || {
        for (l, t) in lines.iter().zip(&text) {
            consumers.add(&ConsumerLine {
                consumer: &t.3,
                store: &t.0,
                basket: l.basket,
                day: t.4,
                sku: &t.2,
                quantity: l.quantity,
                amount: l.sales_value,
            });
        }
    });
    against_base("consumer profiles", c, base, "");
    let mut dense: HashMap<u32, u32> = HashMap::new();
    let mut co = CoBought::new(1_000);
    let (k, _) = rate(n, || {
        for l in &lines {
            let next = dense.len() as u32;
            let item = *dense.entry(l.product).or_insert(next);
            co.add(l.basket, Some(l.household), item);
        }
    });
    against_base(
        "recommendations (co-occurrence, history)",
        k,
        base,
        &format!("; {} item pairs", co.pairs()),
    );

    // The worker's partition states, fed the records as they come off the
    // topics (JSON envelopes, encoded once outside the timings), against
    // decoding them alone.
    println!("\nWorker states on the same lines as JSON records; records/s per CPU second");
    let mut line_no: HashMap<u64, u32> = HashMap::new();
    let records: Vec<Vec<u8>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = line_no.entry(l.basket).or_default();
            *n += 1;
            l.pos_record(i, *n)
        })
        .collect();
    let (decode, _) = rate(n, || {
        for r in &records {
            let env: Envelope<PosTransaction> = codec::decode_any(r).expect("a POS envelope");
            black_box(env);
        }
    });
    println!(
        "{:<44} {:>12.0}",
        "baseline: decoding the record alone", decode
    );
    let wcfg = Config {
        profiles: (*cfg).clone(),
        ..Config::default()
    };
    let mut retailer_state = RetailerState::new(Arc::new(RetailerParams::from_config(&wcfg)));
    let (rs, _) = rate(n, || {
        for r in &records {
            black_box(retailer_state.apply(1, r));
        }
    });
    against_base("profiles operator (retailer state)", rs, decode, " decode");
    let mut consumer_state = ConsumerState::new(Arc::new(ConsumerParams::from_config(&wcfg)));
    let (cs, _) = rate(n, || {
        for r in &records {
            black_box(consumer_state.apply(0, r));
        }
    });
    against_base(
        "consumers operator (profiles, co-occurrence)",
        cs,
        decode,
        " decode",
    );
    drop(records);
    let t = Instant::now();
    consumer_state.evict();
    let batch = consumer_state.to_batch().expect("consumer rows");
    println!(
        "{:<44} {:>9.3} s  ({} consumers: refit, rows, suggestions)",
        "one consumers publish (all households)",
        t.elapsed().as_secs_f64(),
        batch.num_rows()
    );
    black_box(batch);

    println!("\nRefresh times (wall, one core)");
    let t = Instant::now();
    retailers.evict();
    let profiles = retailers.profiles();
    let graded = grading::grade(
        &cfg,
        &profiles
            .iter()
            .map(|p| ("all".to_owned(), p.clone()))
            .collect::<Vec<_>>(),
    );
    println!(
        "{:<44} {:>9.3} s  ({} stores, churn refit included)",
        "retailer profiles and grading",
        t.elapsed().as_secs_f64(),
        graded.len()
    );
    let t = Instant::now();
    let mut stores: HashMap<u32, u32> = HashMap::new();
    let pairs: Vec<(u32, u32)> = lines
        .iter()
        .map(|l| {
            let next = stores.len() as u32;
            (*stores.entry(l.store).or_insert(next), dense[&l.product])
        })
        .collect();
    let a = Assortments::new(pairs);
    let proposals: usize = (0..a.retailers() as u32)
        .map(|s| a.propose(s, 20, 10).len())
        .sum();
    println!(
        "{:<44} {:>9.3} s  ({} retailers, {proposals} proposals)",
        "SKU proposals for every retailer",
        t.elapsed().as_secs_f64(),
        a.retailers()
    );
    let t = Instant::now();
    consumers.refit();
    let rows = consumers.rows();
    println!(
        "{:<44} {:>9.3} s  ({} consumers)",
        "consumer purchase-intent refit and rows",
        t.elapsed().as_secs_f64(),
        rows.len()
    );
    black_box(rows);

    let n_consumers = env_num("CONSUMERS", 1_000_000);
    println!(
        "\nMemory for {n_consumers} synthetic consumers (12 lines, 6 baskets, 3 SKUs each), own process each"
    );
    let ours = child("memory_ours", &[]);
    let exact = child("memory_exact", &[]);
    for (name, f) in [
        ("exact per-consumer maps (baseline)", &exact),
        ("consumer profiles", &ours),
    ] {
        println!(
            "{:<44} {:>9} MiB  {:>6} bytes per consumer",
            name,
            field(f, "mib"),
            field(f, "bytes_per_consumer")
        );
    }
    let mib: f64 = field(&ours, "mib").parse().unwrap_or(f64::NAN);
    let per_million = mib * 1_000_000.0 / n_consumers as f64 * 1.048_576;
    println!(
        "goal: <= 500 MB per million consumer profiles: {:.0} MB, {}",
        per_million,
        if per_million <= 500.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
