use super::*;
use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::util::pretty::pretty_format_batches;
use marktwin_core::events::{Payload, Unit};

const JAN1: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday
const MIN: i64 = 60_000;
const H: i64 = 3_600_000;

fn params() -> Arc<TwinParams> {
    let mut cfg = Config::default();
    cfg.worker.twin.shifts = vec!["06:00".into(), "18:00".into()];
    cfg.worker.twin.out_of_orderness_ms = 60_000;
    cfg.worker.twin.allowed_lateness_ms = 10 * 60_000;
    Arc::new(TwinParams::from_config(&cfg))
}

fn bytes<P: Payload>(p: P) -> Vec<u8> {
    serde_json::to_vec(&Envelope::wrap("test", 0, p)).unwrap()
}

fn prod(
    line: &str,
    sku: &str,
    start: i64,
    mins: i64,
    state: LineState,
    good: u64,
    reject: u64,
) -> Vec<u8> {
    bytes(ProductionRecord {
        line_id: line.into(),
        sku_code: sku.into(),
        good_count: good,
        reject_count: reject,
        unit: Unit::Pack,
        state,
        period_start_ms: start,
        period_end_ms: start + mins * MIN,
    })
}

fn cap(line: &str, sku: Option<&str>, per_min: f64) -> Vec<u8> {
    bytes(LineCapacity {
        line_id: line.into(),
        sku_code: sku.map(Into::into),
        rated_per_minute: per_min,
        unit: Unit::Pack,
        valid_from: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
    })
}

fn plan(id: &str, line: &str, sku: &str, qty: f64) -> Vec<u8> {
    bytes(ProductionPlan {
        plan_id: id.into(),
        line_id: line.into(),
        sku_code: sku.into(),
        plan_date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        planned_quantity: qty,
        unit: Unit::Carton,
    })
}

fn table(b: &RecordBatch, filter: impl Fn(usize) -> bool) -> String {
    let idx: Vec<u32> = (0..b.num_rows() as u32)
        .filter(|i| filter(*i as usize))
        .collect();
    let taken = datafusion::arrow::compute::take_record_batch(
        b,
        &datafusion::arrow::array::UInt32Array::from(idx),
    )
    .unwrap();
    let sorted = sort(&taken);
    pretty_format_batches(&[sorted]).unwrap().to_string()
}

fn sort(b: &RecordBatch) -> RecordBatch {
    use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let cols: Vec<SortColumn> = b
        .columns()
        .iter()
        .take(4)
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    take_record_batch(b, &lexsort_to_indices(&cols, None).unwrap()).unwrap()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref()
        .unwrap()
}

/// Line L1: 50 min running SKU A (950 good, 50 reject packs), 10 min
/// fault; capacity 25 packs/min for the line; a plan of 10 cartons.
fn scripted() -> LineTwin {
    let mut t = LineTwin::new(params());
    let t0 = JAN1 + 8 * H;
    assert_eq!(t.apply(2, &cap("L1", None, 25.0)), Applied::Applied);
    assert_eq!(t.apply(1, &plan("P1", "L1", "A", 10.0)), Applied::Applied);
    for m in 0..50 {
        let (good, reject) = if m % 5 == 0 { (15, 5) } else { (20, 0) };
        let r = prod("L1", "A", t0 + m * MIN, 1, LineState::Running, good, reject);
        assert_eq!(t.apply(0, &r), Applied::Applied);
    }
    let r = prod("L1", "A", t0 + 50 * MIN, 10, LineState::Fault, 0, 0);
    assert_eq!(t.apply(0, &r), Applied::Applied);
    t
}

#[test]
fn oee_per_window_follows_the_definitions() {
    let t = scripted();
    let [status, _windows, oee_b, plan_b] = t.to_batches().unwrap();
    // Hour 08:00: running 50 min, fault 10 min: availability 50/60;
    // 1000 packs in 50 min against 25/min: performance 1000/1250;
    // quality 950/1000.
    let kinds = col(&oee_b, "window");
    assert_eq!(
        table(&oee_b, |i| kinds.value(i) == "hour"),
        [
            "+---------+--------+----------------------+----------------------+------------+---------+----------+---------------+-------+--------+------+---------+--------------------+-------------+---------+--------------------+-------+",
            "| line_id | window | window_start         | window_end           | running_ms | idle_ms | fault_ms | changeover_ms | good  | reject | unit | records | availability       | performance | quality | oee                | final |",
            "+---------+--------+----------------------+----------------------+------------+---------+----------+---------------+-------+--------+------+---------+--------------------+-------------+---------+--------------------+-------+",
            "| L1      | hour   | 2026-01-01T08:00:00Z | 2026-01-01T09:00:00Z | 3000000    | 0       | 600000   | 0             | 950.0 | 50.0   | pack | 51      | 0.8333333333333334 | 0.8         | 0.95    | 0.6333333333333334 | false |",
            "+---------+--------+----------------------+----------------------+------------+---------+----------+---------------+-------+--------+------+---------+--------------------+-------------+---------+--------------------+-------+",
        ]
        .join("\n")
    );
    // The 06:00-18:00 shift and the day hold the same figures.
    let day = |k: &str| {
        let i = (0..oee_b.num_rows())
            .find(|i| kinds.value(*i) == k)
            .unwrap();
        let oee: &Float64Array = oee_b
            .column_by_name("oee")
            .unwrap()
            .as_any()
            .downcast_ref()
            .unwrap();
        oee.value(i)
    };
    assert_eq!(day("shift"), day("day"));
    assert_eq!(
        table(&status, |_| true),
        [
            "+---------+-------+----------------------+----------+----------------------+------------+--------------------+------+",
            "| line_id | state | state_since          | sku_code | last_period_end      | output_15m | speed_per_min_15m  | unit |",
            "+---------+-------+----------------------+----------+----------------------+------------+--------------------+------+",
            "| L1      | fault | 2026-01-01T08:50:00Z | A        | 2026-01-01T09:00:00Z | 280.0      | 18.666666666666668 | pack |",
            "+---------+-------+----------------------+----------+----------------------+------------+--------------------+------+",
        ]
        .join("\n")
    );
    // 10 cartons planned = 100 packs; 950 good; 1000 made against
    // 25 packs/min for a whole day.
    assert_eq!(
        table(&plan_b, |_| true),
        [
            "+---------+----------+------------+---------+-------+--------+------+------------+------------------+----------------------+",
            "| line_id | sku_code | day        | planned | good  | total  | unit | attainment | rated_per_minute | utilisation          |",
            "+---------+----------+------------+---------+-------+--------+------+------------+------------------+----------------------+",
            "| L1      | A        | 2026-01-01 | 100.0   | 950.0 | 1000.0 | pack | 9.5        | 25.0             | 0.027777777777777776 |",
            "+---------+----------+------------+---------+-------+--------+------+------------+------------------+----------------------+",
        ]
        .join("\n")
    );
}

#[test]
fn late_records_are_decided_by_the_partition_alone_and_change_nothing() {
    let mut t = scripted();
    let newest = JAN1 + 8 * H + 50 * MIN;
    // Watermark = newest - 1 min; lateness 10 min: 11 min back is the edge.
    let ok = prod("L2", "B", newest - 11 * MIN, 1, LineState::Running, 5, 0);
    assert_eq!(t.apply(0, &ok), Applied::Applied);
    let late = prod(
        "L2",
        "B",
        newest - 11 * MIN - 1,
        1,
        LineState::Running,
        5,
        0,
    );
    let before = t.to_batches().unwrap();
    match t.apply(0, &late) {
        Applied::Late(r) => {
            assert_eq!(r.reason, "late");
            assert!(r.detail.contains("line `L2`"), "{}", r.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.to_batches().unwrap(), before);
    assert_eq!(t.late(), 1);
    // The same late record again is a duplicate, not a second late one.
    assert_eq!(t.apply(0, &late), Applied::DuplicateEvent);
    // A record with its end before its start is refused, naming the field.
    let mut bad: serde_json::Value = serde_json::from_slice(&ok).unwrap();
    bad["payload"]["period_end_ms"] = 0.into();
    match t.apply(0, &serde_json::to_vec(&bad).unwrap()) {
        Applied::Rejected(r) => assert!(r.detail.contains("period_end_ms"), "{}", r.detail),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_correction_replaces_the_period_it_corrects() {
    let mut corrected = scripted();
    let t0 = JAN1 + 8 * H;
    // Minute 45 sent again with other counts, then on another SKU and
    // stopped: each version replaces the one before in every window.
    let v2 = prod("L1", "A", t0 + 45 * MIN, 1, LineState::Running, 12, 8);
    assert_eq!(corrected.apply(0, &v2), Applied::Applied);
    let v3 = prod("L1", "B", t0 + 45 * MIN, 1, LineState::Fault, 0, 0);
    assert_eq!(corrected.apply(0, &v3), Applied::Applied);
    // The same as if minute 45 had only ever been v3.
    let mut direct = LineTwin::new(params());
    direct.apply(2, &cap("L1", None, 25.0));
    direct.apply(1, &plan("P1", "L1", "A", 10.0));
    for m in 0..50 {
        let (good, reject) = if m % 5 == 0 { (15, 5) } else { (20, 0) };
        let r = if m == 45 {
            prod("L1", "B", t0 + 45 * MIN, 1, LineState::Fault, 0, 0)
        } else {
            prod("L1", "A", t0 + m * MIN, 1, LineState::Running, good, reject)
        };
        direct.apply(0, &r);
    }
    direct.apply(
        0,
        &prod("L1", "A", t0 + 50 * MIN, 10, LineState::Fault, 0, 0),
    );
    let [_, w_corrected, oee_corrected, plan_corrected] = corrected.to_batches().unwrap();
    let [_, w_direct, oee_direct, plan_direct] = direct.to_batches().unwrap();
    assert_eq!(table(&w_corrected, |_| true), table(&w_direct, |_| true));
    assert_eq!(
        table(&oee_corrected, |_| true),
        table(&oee_direct, |_| true)
    );
    assert_eq!(
        table(&plan_corrected, |_| true),
        table(&plan_direct, |_| true)
    );
    // A checkpoint carries what the periods added, so a correction after
    // a restart still replaces.
    let named: Vec<(String, RecordBatch)> = corrected
        .save()
        .unwrap()
        .into_iter()
        .map(|(n, b)| (n.to_owned(), b))
        .collect();
    let mut restored = LineTwin::restore(params(), &named).unwrap();
    assert!(restored.same_state(&corrected));
    let v4 = prod("L1", "A", t0 + 45 * MIN, 1, LineState::Running, 15, 5);
    assert_eq!(restored.apply(0, &v4), Applied::Applied);
    let [_, w_after, _, _] = restored.to_batches().unwrap();
    let [_, w_scripted, _, _] = scripted().to_batches().unwrap();
    assert_eq!(table(&w_after, |_| true), table(&w_scripted, |_| true));
}

#[test]
fn windows_become_final_and_are_forgotten_after_their_retention() {
    let mut t = scripted();
    let far = JAN1 + 4 * H + 3 * 24 * H;
    t.apply(0, &prod("L1", "A", far, 1, LineState::Idle, 0, 0));
    t.evict();
    let [_, windows, _, _] = t.to_batches().unwrap();
    let kinds = col(&windows, "window");
    let fin: &BooleanArray = windows
        .column_by_name("final")
        .unwrap()
        .as_any()
        .downcast_ref()
        .unwrap();
    // Minute and hour windows of day one are gone (3 h and 48 h), the
    // shift and day windows stay, and are final.
    let old: Vec<(&str, bool)> = (0..windows.num_rows())
        .filter(|i| {
            let s: &TimestampMillisecondArray = windows
                .column_by_name("window_start")
                .unwrap()
                .as_any()
                .downcast_ref()
                .unwrap();
            s.value(*i) < far - 24 * H
        })
        .map(|i| (kinds.value(i), fin.value(i)))
        .collect();
    let mut kinds_left: Vec<&str> = old.iter().map(|(k, _)| *k).collect();
    kinds_left.sort();
    assert_eq!(kinds_left, ["day", "shift"]);
    assert!(old.iter().all(|(_, f)| *f));
    // The plan for 2026-01-01 is within the 62 days: still there.
    assert_eq!(t.to_batches().unwrap()[3].num_rows(), 2);
}

#[test]
fn a_checkpoint_restores_the_same_state_and_tables() {
    let mut t = scripted();
    t.apply(2, &cap("L1", Some("A"), 20.0));
    let saved = t.save().unwrap();
    let named: Vec<(String, RecordBatch)> =
        saved.into_iter().map(|(n, b)| (n.to_owned(), b)).collect();
    let back = LineTwin::restore(params(), &named).unwrap();
    assert!(back.same_state(&t));
    let sorted = |b: [RecordBatch; 4]| b.map(|b| sort(&b));
    assert_eq!(
        sorted(back.to_batches().unwrap()),
        sorted(t.to_batches().unwrap())
    );
    // The remembered event ids came back too.
    let mut back = back;
    assert_eq!(
        back.apply(
            0,
            &prod("L1", "A", JAN1 + 8 * H, 1, LineState::Running, 15, 5)
        ),
        Applied::DuplicateEvent
    );
    // A damaged checkpoint names the table and column.
    let mut broken = named.clone();
    broken.retain(|(n, _)| n != "windows");
    broken.push((
        "windows".into(),
        RecordBatch::try_from_iter(vec![(
            "line",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap(),
    ));
    let e = LineTwin::restore(params(), &broken)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`windows`") && e.contains("`line`"), "{e}");
}
