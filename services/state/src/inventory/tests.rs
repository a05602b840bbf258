use super::*;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::arrow::util::pretty::pretty_format_batches;
use marktwin_core::events::{LineState, Payload};

const JAN10: i64 = 1_768_003_200_000; // 2026-01-10T00:00:00Z
const H: i64 = 3_600_000;

fn params(f: impl FnOnce(&mut Config)) -> Arc<InventoryParams> {
    let mut cfg = Config::default();
    cfg.inventory.regions.insert("WH1".into(), "north".into());
    cfg.inventory.regions.insert("WH2".into(), "north".into());
    cfg.inventory
        .line_warehouses
        .insert("L1".into(), "WH1".into());
    cfg.inventory.demand_days = 2;
    cfg.inventory.cover_min_days = 1.0;
    cfg.inventory.cover_max_days = 10.0;
    f(&mut cfg);
    Arc::new(InventoryParams::from_config(&cfg))
}

fn bytes<P: Payload>(source: &str, p: P) -> Vec<u8> {
    serde_json::to_vec(&Envelope::wrap(source, 0, p)).unwrap()
}

fn count(w: &str, sku: &str, cartons: f64, at: i64) -> Vec<u8> {
    bytes(
        "scm",
        InventorySnapshot {
            warehouse_id: w.into(),
            sku_code: sku.into(),
            quantity: cartons,
            unit: Unit::Carton,
            as_of_ms: at,
        },
    )
}

fn order(id: &str, w: &str, sku: &str, packs: f64, day: i64) -> Vec<u8> {
    let date = chrono::DateTime::from_timestamp_millis(JAN10 + day * DAY_MS)
        .unwrap()
        .date_naive();
    bytes(
        "erp",
        AllocationOrder {
            order_id: id.into(),
            line_no: 1,
            from_id: w.into(),
            to_id: "R1".into(),
            sku_code: sku.into(),
            quantity: packs,
            unit: Unit::Pack,
            unit_price: 1.0,
            order_date: date,
        },
    )
}

fn produced(line: &str, sku: &str, packs: u64, end: i64) -> Vec<u8> {
    bytes(
        "mes",
        ProductionRecord {
            line_id: line.into(),
            sku_code: sku.into(),
            good_count: packs,
            reject_count: 0,
            unit: Unit::Pack,
            state: LineState::Running,
            period_start_ms: end - 60_000,
            period_end_ms: end,
        },
    )
}

fn table(inv: &Inventory, i: usize) -> String {
    let b = inv.to_batches().unwrap();
    pretty_format_batches(&[b[i].clone()]).unwrap().to_string()
}

/// Rows of table `i`, values joined by ` | `.
fn rows(inv: &Inventory, i: usize) -> Vec<String> {
    let b = &inv.to_batches().unwrap()[i];
    (0..b.num_rows())
        .map(|r| {
            b.columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

fn run(inv: &mut Inventory, records: &[Vec<u8>]) {
    for r in records {
        let a = inv.apply(0, r);
        assert!(matches!(a, Applied::Applied | Applied::Unchanged), "{a:?}");
    }
}

#[test]
fn on_hand_is_the_newest_count_plus_what_moved_after_it() {
    let mut inv = Inventory::new(params(|_| {}));
    run(
        &mut inv,
        &[
            order("A", "WH1", "S1", 30.0, 0), // before the count: in it
            count("WH1", "S1", 10.0, JAN10 + H),
            produced("L1", "S1", 50, JAN10 + 2 * H),
            produced("L1", "S1", 70, JAN10 + H / 2), // before the count
            order("B", "WH1", "S1", 20.0, 1),
            count("WH1", "S1", 99.0, JAN10), // older than the current count
        ],
    );
    // 10 cartons = 100 packs, + 50 produced − 20 ordered.
    assert_eq!(
        rows(&inv, 0),
        ["WH1 | S1 | north | 130.0 | 100.0 | 2026-01-10T01:00:00Z | 50.0 | 20.0 | pack"]
    );
    assert_eq!(
        inv.apply(0, &count("WH1", "S1", 99.0, JAN10)),
        Applied::Unchanged
    );
    assert_eq!(
        inv.apply(0, &order("B", "WH1", "S1", 20.0, 1)),
        Applied::Unchanged
    );
    // A corrected order replaces the first version.
    assert_eq!(
        inv.apply(0, &order("B", "WH1", "S1", 5.0, 1)),
        Applied::Applied
    );
    assert!(
        rows(&inv, 0)[0].contains("| 145.0 |"),
        "{:?}",
        rows(&inv, 0)
    );
}

#[test]
fn a_low_cover_raises_an_alert_that_clears_when_stock_returns() {
    let mut inv = Inventory::new(params(|_| {}));
    // Day 1, 23:00: one complete day of demand in the window (day 0, 100
    // packs out of the region's two warehouses: 50 a day over 2 days),
    // counted at 150 packs: 3 days of cover, in bounds.
    run(
        &mut inv,
        &[
            order("A", "WH1", "S1", 60.0, 0),
            order("B", "WH2", "S1", 40.0, 0),
            order("C", "WH1", "S1", 100.0, 1),
            count("WH1", "S1", 10.0, JAN10 + 2 * DAY_MS - H),
            count("WH2", "S1", 5.0, JAN10 + 2 * DAY_MS - H),
        ],
    );
    assert_eq!(
        rows(&inv, 1),
        ["north | S1 | 150.0 | 50.0 | 3.0 | ok | pack"]
    );
    assert_eq!(inv.to_batches().unwrap()[2].num_rows(), 0);

    // Day 2: an order of 80 packs leaves 70, and days 0 and 1 make 100
    // packs a day: 0.7 days, below 1.
    run(&mut inv, &[order("D", "WH2", "S1", 80.0, 2)]);
    assert_eq!(
        rows(&inv, 2),
        ["north | S1 | cover_low | 0.7 | 1.0 | 70.0 | 100.0 | pack"]
    );

    // A new count of 2,000 packs: 20 days, above 10.
    run(
        &mut inv,
        &[count("WH1", "S1", 200.0, JAN10 + 2 * DAY_MS + 2 * H)],
    );
    assert!(table(&inv, 2).contains("cover_high"), "{}", table(&inv, 2));

    // Back within bounds: the alert leaves the table.
    run(
        &mut inv,
        &[count("WH1", "S1", 40.0, JAN10 + 2 * DAY_MS + 3 * H)],
    );
    assert_eq!(
        inv.to_batches().unwrap()[2].num_rows(),
        0,
        "{}",
        table(&inv, 1)
    );
}

#[test]
fn the_figures_do_not_depend_on_how_the_sources_interleave() {
    let records = vec![
        order("A", "WH1", "S1", 60.0, 0),
        order("B", "WH2", "S2", 40.0, 1),
        count("WH1", "S1", 10.0, JAN10 + DAY_MS),
        produced("L1", "S1", 500, JAN10 + DAY_MS + H),
        order("C", "WH1", "S1", 100.0, 1),
        order("C", "WH1", "S1", 100.0, 1),
        count("WH2", "S2", 3.0, JAN10 + 2 * DAY_MS),
        order("D", "WH1", "S1", 10.0, 2),
        count("WH1", "S1", 12.0, JAN10 + 2 * DAY_MS + H),
    ];
    let mut forward = Inventory::new(params(|_| {}));
    run(&mut forward, &records);
    let mut backward = Inventory::new(params(|_| {}));
    let mut rev = records.clone();
    rev.reverse();
    run(&mut backward, &rev);
    for i in 0..3 {
        assert_eq!(table(&forward, i), table(&backward, i));
    }
    // Forgetting what no figure needs changes nothing, and a checkpoint
    // brings back the same state.
    let before: Vec<String> = (0..3).map(|i| table(&forward, i)).collect();
    let held = forward.rows();
    forward.evict();
    assert!(forward.rows() < held, "the covered production record goes");
    let saved: Vec<(String, RecordBatch)> = forward
        .save()
        .unwrap()
        .into_iter()
        .map(|(n, b)| (n.to_owned(), b))
        .collect();
    let back = Inventory::restore(params(|_| {}), &saved).unwrap();
    for (i, t) in before.iter().enumerate() {
        assert_eq!(&table(&forward, i), t);
        assert_eq!(&table(&back, i), t);
    }
    assert_eq!(back.applied(), forward.applied());
}

#[test]
fn counts_from_other_sources_and_bad_records_are_told_apart() {
    let mut inv = Inventory::new(params(|c| {
        c.inventory.count_sources = vec!["fusion:stock".into()]
    }));
    assert_eq!(
        inv.apply(0, &count("WH1", "S1", 1.0, JAN10)),
        Applied::Unchanged
    );
    let fused = bytes(
        "fusion:stock",
        InventorySnapshot {
            warehouse_id: "WH1".into(),
            sku_code: "S1".into(),
            quantity: 2.0,
            unit: Unit::Carton,
            as_of_ms: JAN10,
        },
    );
    assert_eq!(inv.apply(0, &fused), Applied::Applied);
    let Applied::Rejected(r) = inv.apply(0, &produced("L9", "S1", 5, JAN10)) else {
        panic!("an unmapped line is refused");
    };
    assert_eq!(r.reason, "unmapped");
    assert!(r.detail.contains("L9"), "{}", r.detail);
    let Applied::Rejected(r) = inv.apply(0, &count("WH1", "S1", -1.0, JAN10 + H)) else {
        panic!("a negative count is refused");
    };
    assert!(r.detail.contains("payload.quantity"), "{}", r.detail);
    let Applied::Rejected(r) = inv.apply(0, b"{\"kind\": 1}") else {
        panic!("garbage is refused");
    };
    assert_eq!(r.reason, "decode");
}
