//! The worker's consumer state of one partition number: POS lines that name
//! a consumer, from the `consumer_pos` topic (keyed by the pseudonymised
//! consumer id, so one partition holds all of a consumer's lines).
//!
//! It keeps the [`ConsumerProfiles`] of its consumers and publishes them as
//! the `consumer_profiles` table: RFM with scores and segment (against the
//! partition's consumers, a hash sample of all), favourites, loyalty, price
//! band and purchase intent. The purchase-intent models are refitted on the
//! partition's data whenever it changed since the last fit, at the publish
//! before the rows are rendered, so the published rows depend only on the
//! lines applied, not on when a publish happened. Resent lines are dropped
//! by event id (the last `worker.dedup_window` ids).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, ListBuilder, StringBuilder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use foldhash::HashMap;
use marktwin_core::Config;
use marktwin_core::config::{ProfilesConfig, UnitsConfig};
use marktwin_core::events::{EventKind, PosTransaction};
use marktwin_core::topics::id;

use crate::consumer_profile::{ConsumerLine, ConsumerProfiles, ConsumerRow};
use crate::error::Result;
use crate::recommend::{CoBought, Reason};
use crate::record::{
    Applied, Cols, RecentIds, Rejected, build, ck, decode, finite, float64s, int64s, parse_id,
    strings,
};
use crate::window::local_day;

/// Input topic ids, in the order [`ConsumerState::apply`] numbers them.
pub const INPUTS: [&str; 1] = [id::CONSUMER_POS];
/// Consumer profiles, one row per consumer.
pub const PROFILES_TABLE: &str = "consumer_profiles";
/// Its key.
pub const PROFILES_KEY: &[&str] = &["consumer_id"];

/// What the consumer state needs from the config.
#[derive(Clone, Debug)]
pub struct ConsumerParams {
    profiles: Arc<ProfilesConfig>,
    units: UnitsConfig,
    offset_ms: i64,
    dedup_window: usize,
}

impl ConsumerParams {
    /// From the config.
    pub fn from_config(cfg: &Config) -> Self {
        ConsumerParams {
            profiles: Arc::new(cfg.profiles.clone()),
            units: cfg.units.clone(),
            offset_ms: i64::from(cfg.worker.utc_offset_minutes) * 60_000,
            dedup_window: cfg.worker.dedup_window,
        }
    }
}

/// The consumer state of one partition.
#[derive(Clone, Debug)]
pub struct ConsumerState {
    params: Arc<ConsumerParams>,
    profiles: ConsumerProfiles,
    /// Items bought together, learned from this partition's baskets.
    co: CoBought,
    recent: RecentIds,
    applied: u64,
    /// Lines applied since the last refit.
    unfitted: bool,
}

/// Baskets still open to the co-occurrence model (a receipt's lines
/// arrive together).
const OPEN_BASKETS: usize = 10_000;
/// Suggestions per consumer.
const SUGGESTIONS: usize = 5;
/// Favourites a consumer's suggestions start from.
const SEEDS: usize = 5;
/// Partners kept per seed SKU: the candidates of its contribution.
const PARTNERS: usize = 50;

impl ConsumerState {
    /// Empty.
    pub fn new(params: Arc<ConsumerParams>) -> Self {
        ConsumerState {
            profiles: ConsumerProfiles::new(params.profiles.clone()),
            co: CoBought::new(OPEN_BASKETS),
            recent: RecentIds::new(params.dedup_window),
            params,
            applied: 0,
            unfitted: false,
        }
    }

    /// Records applied since the state began.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Consumers held.
    pub fn rows(&self) -> usize {
        self.profiles.len()
    }

    /// The profiles.
    pub fn profiles(&self) -> &ConsumerProfiles {
        &self.profiles
    }

    /// Decodes and applies one record of `consumer_pos`.
    pub fn apply(&mut self, _input: usize, value: &[u8]) -> Applied {
        match self.line(value) {
            Ok(a) => a,
            Err(r) => Applied::Rejected(r),
        }
    }

    fn line(&mut self, value: &[u8]) -> Result<Applied, Rejected> {
        let env = decode::<PosTransaction>(value, EventKind::PosTransaction)?;
        let Some(id) = parse_id(&env.event_id) else {
            return Err(Rejected {
                reason: "decode",
                detail: format!("`event_id` `{}` is not 32 hex digits", env.event_id),
            });
        };
        let t = env.payload;
        let consumer = t.consumer_id.as_deref().unwrap_or_default();
        if consumer.is_empty() {
            return Err(Rejected {
                reason: "range",
                detail: "`payload.consumer_id` is empty; consumer_pos carries lines that name a consumer".into(),
            });
        }
        finite("payload.quantity", t.quantity)?;
        finite("payload.total_amount", t.total_amount)?;
        if !self.recent.insert(id) {
            return Ok(Applied::DuplicateEvent);
        }
        let day = local_day(t.transaction_time_ms, self.params.offset_ms);
        let (sku, basket) = self.profiles.add(&ConsumerLine {
            consumer,
            store: &t.store_code,
            basket: basket_id(&t.order_number),
            day,
            sku: &t.sku_code,
            quantity: self.params.units.to_report(t.quantity, t.unit),
            amount: t.total_amount,
        });
        self.co.add(basket, None, sku);
        self.applied += 1;
        self.unfitted = true;
        Ok(Applied::Applied)
    }

    /// Refits purchase intent and refreshes the popular items if lines
    /// came since the last fit.
    pub fn evict(&mut self) {
        if std::mem::take(&mut self.unfitted) {
            self.profiles.refit();
            self.co.refresh_popular();
        }
    }

    /// Next-basket suggestions for a consumer with favourites `ids` (most
    /// bought first): SKUs most bought together with the first few, never
    /// one the consumer already buys often, popular ones filling up; each
    /// with its reason. `neighbours` holds each seed's best partners.
    fn suggest(
        &self,
        neighbours: &HashMap<u32, Vec<(u32, f64)>>,
        ids: &[u32],
    ) -> Vec<(String, String)> {
        let seeds = &ids[..ids.len().min(SEEDS)];
        self.co
            .recommend_from(neighbours, seeds, ids, SUGGESTIONS)
            .into_iter()
            .map(|s| {
                let why = match s.reason {
                    Reason::BoughtWith(i) => format!("bought with {}", self.profiles.sku_name(i)),
                    Reason::BoughtBefore(n) => format!("bought in {n} baskets before"),
                    Reason::Popular => "popular".to_owned(),
                };
                (self.profiles.sku_name(s.item).to_owned(), why)
            })
            .collect()
    }

    /// The best partners of every consumer's seeds in `rows`, once.
    fn neighbours(&self, rows: &[ConsumerRow]) -> HashMap<u32, Vec<(u32, f64)>> {
        let seeds = rows
            .iter()
            .flat_map(|r| r.favourite_sku_ids.iter().take(SEEDS).copied());
        self.co.neighbours(seeds, PARTNERS)
    }

    /// The schema of [`PROFILES_TABLE`].
    pub fn schema() -> SchemaRef {
        let utf8 = |n: &str| Field::new(n, DataType::Utf8, false);
        let f64f = |n: &str| Field::new(n, DataType::Float64, false);
        let f64n = |n: &str| Field::new(n, DataType::Float64, true);
        let u32f = |n: &str| Field::new(n, DataType::UInt32, false);
        let list = |n: &str| {
            let item = Arc::new(Field::new_list_field(DataType::Utf8, true));
            Field::new(n, DataType::List(item), false)
        };
        Arc::new(Schema::new(vec![
            utf8("consumer_id"),
            Field::new("recency_days", DataType::Int32, false),
            u32f("frequency"),
            f64f("monetary"),
            u32f("r_score"),
            u32f("f_score"),
            u32f("m_score"),
            utf8("segment"),
            list("favourite_skus"),
            utf8("favourite_brand"),
            f64f("brand_loyalty"),
            utf8("favourite_store"),
            f64f("store_loyalty"),
            utf8("price_band"),
            f64n("p_alive"),
            f64n("expected_purchases"),
            f64n("expected_spend"),
            list("suggested_skus"),
            list("suggestion_reasons"),
        ]))
    }

    /// The published table: every consumer's profile and suggestions.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = self.profiles.rows();
        let neighbours = self.neighbours(&rows);
        let suggestions: Vec<_> = rows
            .iter()
            .map(|r| self.suggest(&neighbours, &r.favourite_sku_ids))
            .collect();
        let nan = |v: f64| (!v.is_nan()).then_some(v);
        let u32s = |f: fn(&ConsumerRow) -> u32| -> ArrayRef {
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
        };
        let opt = |f: fn(&ConsumerRow) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| nan(f(r)))))
        };
        let favourites = string_lists(
            rows.iter()
                .map(|r| r.favourite_skus.iter().map(String::as_str)),
        );
        let suggested = string_lists(suggestions.iter().map(|s| s.iter().map(|t| t.0.as_str())));
        let reasons = string_lists(suggestions.iter().map(|s| s.iter().map(|t| t.1.as_str())));
        build(
            PROFILES_TABLE,
            &Self::schema(),
            vec![
                strings(rows.iter().map(|r| r.consumer.as_str())),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.recency_days),
                )),
                u32s(|r| r.frequency),
                float64s(rows.iter().map(|r| r.monetary)),
                u32s(|r| u32::from(r.rfm.r)),
                u32s(|r| u32::from(r.rfm.f)),
                u32s(|r| u32::from(r.rfm.m)),
                strings(rows.iter().map(|r| r.segment.as_str())),
                favourites,
                strings(rows.iter().map(|r| r.favourite_brand.as_str())),
                float64s(rows.iter().map(|r| r.brand_loyalty)),
                strings(rows.iter().map(|r| r.favourite_store.as_str())),
                float64s(rows.iter().map(|r| r.store_loyalty)),
                strings(rows.iter().map(|r| r.price_band.as_str())),
                opt(|r| r.p_alive),
                opt(|r| r.expected_purchases),
                opt(|r| r.expected_spend),
                suggested,
                reasons,
            ],
        )
    }

    /// The state as checkpoint tables.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let mut t = self.profiles.save()?;
        t.extend(self.co.save()?);
        t.push(self.recent.save()?);
        t.push(ck(
            "meta",
            vec![("applied", int64s([self.applied as i64]))],
        )?);
        Ok(t)
    }

    /// State from checkpoint tables written by [`Self::save`].
    pub fn restore(params: Arc<ConsumerParams>, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut s = ConsumerState::new(params.clone());
        s.profiles = ConsumerProfiles::restore(params.profiles.clone(), tables)?;
        s.co = CoBought::restore(OPEN_BASKETS, tables)?;
        s.recent.restore(tables)?;
        if let Some(c) = Cols::of(tables, "meta") {
            s.applied = c.one::<Int64Array>("applied")?.value(0) as u64;
        }
        // The fit is not saved: the next publish makes it again from the
        // same data.
        s.unfitted = !s.profiles.is_empty();
        Ok(s)
    }
}

/// One list of strings per item of `lists`.
fn string_lists<'a, L: IntoIterator<Item = &'a str>>(lists: impl Iterator<Item = L>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for list in lists {
        for s in list {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// A basket id from an order number: the number itself when it is one,
/// else a stable 64-bit hash of it (the same in every build, as it sits in
/// checkpoints).
fn basket_id(order: &str) -> u64 {
    order
        .parse()
        .unwrap_or_else(|_| twox_hash::XxHash64::oneshot(0, order.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::MS_PER_DAY;
    use marktwin_core::codec;
    use marktwin_core::events::{Envelope, Unit};

    fn line(id: u32, consumer: &str, order: &str, day: i64, sku: &str, amount: f64) -> Vec<u8> {
        let t = day * MS_PER_DAY + 3_600_000;
        let e = Envelope {
            event_id: format!("{id:032x}"),
            kind: EventKind::PosTransaction,
            source: "test".into(),
            schema_version: 1,
            event_time_ms: t,
            ingest_time_ms: t,
            key: "S1".into(),
            payload: PosTransaction {
                store_code: "S1".into(),
                order_number: order.into(),
                line_no: 1,
                consumer_id: Some(consumer.into()),
                consumer_phone: None,
                sku_code: sku.into(),
                sku_name: String::new(),
                unit_price: amount,
                quantity: 1.0,
                unit: Unit::Pack,
                total_amount: amount,
                transaction_time_ms: t,
            },
        };
        codec::encode(&e, marktwin_core::topics::Encoding::Json).unwrap()
    }

    #[test]
    fn lines_make_profiles_that_survive_a_checkpoint() {
        let params = Arc::new(ConsumerParams::from_config(&Config::default()));
        let mut s = ConsumerState::new(params.clone());
        let mut id = 0;
        for c in 0..40u32 {
            for visit in 0..=(c % 7) {
                for sku in ["A", "B"] {
                    id += 1;
                    let order = format!("ord-{c}-{visit}");
                    let day = 20_000 + i64::from(visit * 9 + c % 5);
                    let rec = line(id, &format!("c{c:02}"), &order, day, sku, 5.0);
                    assert_eq!(s.apply(0, &rec), Applied::Applied);
                    assert_eq!(s.apply(0, &rec), Applied::DuplicateEvent);
                }
            }
        }
        let mut nameless = line(id + 1, "", "x", 20_000, "A", 1.0);
        assert!(
            matches!(s.apply(0, &nameless), Applied::Rejected(r) if r.detail.contains("consumer_id"))
        );
        nameless.truncate(10);
        assert!(matches!(s.apply(0, &nameless), Applied::Rejected(_)));
        s.evict();
        let batch = s.to_batch().unwrap();
        assert_eq!(batch.num_rows(), 40);
        let c06 = s
            .profiles()
            .rows()
            .into_iter()
            .find(|r| r.consumer == "c06")
            .unwrap();
        assert_eq!(c06.frequency, 7, "seven baskets of two lines");
        assert_eq!(c06.monetary, 70.0);
        assert!(c06.p_alive.is_finite(), "purchase intent fitted");
        // Everyone buys A and B; c00 also buys C, so C is suggested to the
        // others with A or B as the reason.
        s.apply(0, &line(id + 2, "c00", "ord-0-0", 20_000, "C", 5.0));
        s.evict();
        let c01 = s
            .profiles()
            .rows()
            .into_iter()
            .find(|r| r.consumer == "c01")
            .unwrap();
        let rows = s.profiles().rows();
        let tips = s.suggest(&s.neighbours(&rows), &c01.favourite_sku_ids);
        assert_eq!(tips[0].0, "C", "{tips:?}");
        assert!(tips[0].1.starts_with("bought with "), "{tips:?}");
        let batch = s.to_batch().unwrap();

        let saved = crate::record::owned(s.save().unwrap());
        let mut back = ConsumerState::restore(params, &saved).unwrap();
        back.evict();
        assert_eq!(back.to_batch().unwrap(), batch);
        assert_eq!(back.applied(), s.applied());
        let again = line(1, "c00", "ord-0-0", 20_000, "A", 5.0);
        assert_eq!(
            back.apply(0, &again),
            Applied::DuplicateEvent,
            "ids survive too"
        );
        assert_eq!(basket_id("1234"), 1234);
        assert_eq!(basket_id("O-1"), twox_hash::XxHash64::oneshot(0, b"O-1"));
    }
}
