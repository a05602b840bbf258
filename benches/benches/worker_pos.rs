//! The worker's POS path in-process: decode + replay guards + aggregate,
//! next to its ceiling, serde_json decode-only of the same records, measured
//! in the same run. `cargo bench --workspace --bench worker_pos`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use marktwin_core::config::UnitsConfig;
use marktwin_core::events::{Envelope, PosTransaction, Unit};
use marktwin_state::PosState;

const N: usize = 100_000;

/// Seeded, realistic records: 2,000 stores, 40 SKUs, 30 days.
fn records() -> Vec<Vec<u8>> {
    let mut x: u64 = 0x5EED;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..N)
        .map(|i| {
            let store = next() % 2000;
            let sku = next() % 40;
            let qty = 1 + next() % 3;
            let t = PosTransaction {
                store_code: format!("R{store:06}"),
                order_number: format!("O{i:010}"),
                line_no: 1,
                consumer_id: Some(format!("{:064x}", next())),
                consumer_phone: Some(format!("{:064x}", next())),
                sku_code: format!("SKU{sku:04}"),
                sku_name: format!("Brand {sku:02} Classic"),
                unit_price: 25.0,
                quantity: qty as f64,
                unit: Unit::Pack,
                total_amount: 25.0 * qty as f64,
                transaction_time_ms: 1_767_225_600_000 + (i as i64) * 25_000,
            };
            serde_json::to_vec(&Envelope::wrap("pos-cloud", 0, t)).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let mut g = c.benchmark_group("worker_pos");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("baseline_decode_only", |b| {
        b.iter(|| {
            for r in &recs {
                let e: Envelope<PosTransaction> = serde_json::from_slice(r).unwrap();
                black_box(e);
            }
        })
    });
    g.bench_function("worker_apply", |b| {
        b.iter(|| {
            let mut s = PosState::new(UnitsConfig::default(), 480, 200_000);
            for r in &recs {
                black_box(s.apply(r));
            }
            s
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
