//! Consumer profiles from pseudonymised POS lines: recency, frequency,
//! monetary value, favourite SKUs, brands and store, price band, loyalty,
//! and purchase intent.
//!
//! Built for millions of consumers: each profile is a small record updated
//! in place per line, its size bounded whatever the consumer buys (see the
//! `profiles` benchmark for the bytes per consumer).
//!
//! - **Baskets** are counted on a basket's first line: the last four basket
//!   keys of a consumer are remembered, and a receipt's lines arrive
//!   together. Resent lines are dropped before this by event id.
//! - **Purchase days** (for BG/NBD, which counts days with a purchase) are
//!   counted the same way against the last four days.
//! - **Favourites**: SKUs by Filtered Space-Saving in 32 slots (see
//!   [`Favourites`]); brands and stores by Space-Saving (Metwally et al.
//!   2005) in four slots, so a brand or store with more than a quarter of
//!   the lines is always there. Counts are upper bounds.
//! - **Loyalty**: the share of lines of the favourite brand (brand loyalty)
//!   and of baskets at the favourite store (store loyalty).
//! - **Purchase intent**: BG/NBD ([`crate::bgnbd`]) and Gamma-Gamma
//!   ([`crate::gamma_gamma`]) parameters are refitted on demand
//!   ([`ConsumerProfiles::refit`], on a sample of at most 20,000 consumers)
//!   and applied to each consumer when the rows are rendered.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, Int32Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use marktwin_core::config::ProfilesConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bgnbd::{BgNbd, Summary};
use crate::error::Result;
use crate::gamma_gamma::{GammaGamma, Spend};
use crate::intern::Interner;
use crate::record::{Cols, ck, strings};
use crate::retailer_profile::band_label;
use crate::rfm::{self, Breaks, Rfm, Segment};

/// Space-Saving top-`N` counter.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TopK<const N: usize> {
    items: [u32; N],
    counts: [u32; N],
}

impl<const N: usize> Default for TopK<N> {
    fn default() -> Self {
        TopK {
            items: [0; N],
            counts: [0; N],
        }
    }
}

impl<const N: usize> TopK<N> {
    fn add(&mut self, item: u32) {
        // Item ids are stored + 1 so that 0 marks a free slot.
        let key = item + 1;
        if let Some(i) = self.items.iter().position(|x| *x == key) {
            self.counts[i] += 1;
            return;
        }
        let (i, _) = self
            .counts
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| **c)
            .expect("N > 0");
        self.items[i] = key;
        self.counts[i] += 1;
    }

    /// Items with their counts, most first.
    fn top(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .items
            .iter()
            .zip(&self.counts)
            .filter(|(i, _)| **i > 0)
            .map(|(i, c)| (i - 1, *c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

// Serde has no impls for arrays of a generic length: as two slices.
impl<const N: usize> Serialize for TopK<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.items[..], &self.counts[..]).serialize(s)
    }
}

impl<'de, const N: usize> Deserialize<'de> for TopK<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (items, counts): (Vec<u32>, Vec<u32>) = Deserialize::deserialize(d)?;
        let mut t = TopK::default();
        if items.len() != N || counts.len() != N {
            return Err(serde::de::Error::invalid_length(
                items.len(),
                &"N items and N counts",
            ));
        }
        t.items.copy_from_slice(&items);
        t.counts.copy_from_slice(&counts);
        Ok(t)
    }
}

/// Favourite items by Filtered Space-Saving (Homem and Carvalho 2010):
/// up to `SLOTS` monitored items with counts, and once they are full, 128
/// hashed counters that an unmonitored item must climb before it may evict
/// the least counted one. The filter keeps one-off purchases from churning
/// the slots, which matters for broad shoppers: on Complete Journey's
/// households (median 277 distinct products) it finds the favourite product
/// of about nine in ten, where plain Space-Saving of the same size finds
/// about five. A consumer buying few SKUs never allocates the filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Favourites {
    slots: Vec<(u32, u32)>,
    filter: Vec<u16>,
}

const SLOTS: usize = 32;
const FILTER: usize = 128;

impl Favourites {
    fn cell(item: u32) -> usize {
        (u64::from(item).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as usize
    }

    fn add(&mut self, item: u32) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.0 == item) {
            s.1 = s.1.saturating_add(1);
            return;
        }
        if self.slots.len() < SLOTS {
            self.slots.push((item, 1));
            return;
        }
        if self.filter.is_empty() {
            self.filter = vec![0; FILTER];
        }
        let h = Self::cell(item);
        let (i, &(old, least)) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.1)
            .expect("full slots");
        let climbed = u32::from(self.filter[h]) + 1;
        if climbed >= least {
            // The evicted item's count goes back to its filter cell.
            let o = Self::cell(old);
            self.filter[o] = self.filter[o].max(u16::try_from(least).unwrap_or(u16::MAX));
            self.slots[i] = (item, climbed);
        } else {
            self.filter[h] = self.filter[h].saturating_add(1);
        }
    }

    /// Monitored items with their (upper-bound) counts, most first.
    fn top(&self) -> Vec<(u32, u32)> {
        let mut v = self.slots.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Most price bands (the config allows at most 7 thresholds).
const BANDS: usize = 8;

/// One consumer's running figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Consumer {
    first_day: i32,
    last_day: i32,
    baskets: u32,
    days: u32,
    lines: u32,
    monetary: f64,
    first_day_amount: f64,
    recent_baskets: [u64; 4],
    recent_days: [i32; 4],
    skus: Favourites,
    brands: TopK<4>,
    stores: TopK<4>,
    bands: [u32; BANDS],
}

/// One POS line, as the consumer profile needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerLine<'a> {
    /// Pseudonymised consumer id.
    pub consumer: &'a str,
    /// Store.
    pub store: &'a str,
    /// A key of the basket (receipt), unique per store.
    pub basket: u64,
    /// Day, days since 1970-01-01.
    pub day: i32,
    /// SKU code.
    pub sku: &'a str,
    /// Quantity.
    pub quantity: f64,
    /// Amount paid.
    pub amount: f64,
}

/// One consumer's profile, as rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerRow {
    /// Pseudonymised consumer id.
    pub consumer: String,
    /// Days since the last purchase, at the newest day seen.
    pub recency_days: i32,
    /// Baskets.
    pub frequency: u32,
    /// Amount spent.
    pub monetary: f64,
    /// RFM scores, 1-5.
    pub rfm: rfm::Scores,
    /// RFM segment.
    pub segment: String,
    /// Up to three favourite SKUs, most bought first.
    pub favourite_skus: Vec<String>,
    /// Ids of every SKU the favourites sketch monitors, most bought first.
    pub favourite_sku_ids: Vec<u32>,
    /// Favourite brand (`unknown` for SKUs without one).
    pub favourite_brand: String,
    /// Share of lines of the favourite brand.
    pub brand_loyalty: f64,
    /// Favourite store.
    pub favourite_store: String,
    /// Share of baskets at the favourite store.
    pub store_loyalty: f64,
    /// The price band with most lines.
    pub price_band: String,
    /// Probability that the consumer is still active (BG/NBD).
    pub p_alive: f64,
    /// Expected purchase days in the next cycle (BG/NBD).
    pub expected_purchases: f64,
    /// Expected spend per purchase day (Gamma-Gamma).
    pub expected_spend: f64,
}

/// The consumer profiles of one partition.
#[derive(Clone, Debug)]
pub struct ConsumerProfiles {
    cfg: Arc<ProfilesConfig>,
    /// Consumer id → position in `consumers`. The records sit in a dense
    /// vector rather than in the map: a hash table keeps up to twice as
    /// many slots as entries, which for 200-byte records was most of the
    /// memory.
    index: HashMap<Box<str>, u32>,
    consumers: Vec<Consumer>,
    skus: Interner,
    brands: Interner,
    stores: Interner,
    newest_day: i32,
    intent: Option<(BgNbd, Option<GammaGamma>)>,
}

/// Most consumers a refit looks at.
const REFIT_SAMPLE: usize = 20_000;

impl ConsumerProfiles {
    /// Empty.
    pub fn new(cfg: Arc<ProfilesConfig>) -> Self {
        ConsumerProfiles {
            cfg,
            index: HashMap::new(),
            consumers: Vec::new(),
            skus: Interner::default(),
            brands: Interner::default(),
            stores: Interner::default(),
            newest_day: i32::MIN,
            intent: None,
        }
    }

    /// Consumers held.
    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    /// Whether no consumer is held.
    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }

    /// Applies one line; returns the SKU's id (see [`Self::sku_name`]) and
    /// the basket's key (basket and store), for models that learn from
    /// the same lines.
    pub fn add(&mut self, l: &ConsumerLine<'_>) -> (u32, u64) {
        self.newest_day = self.newest_day.max(l.day);
        let sku = self.skus.id(l.sku);
        let brand = self
            .brands
            .id(self.cfg.brands.get(l.sku).map_or("unknown", String::as_str));
        let store = self.stores.id(l.store);
        let band = self
            .cfg
            .price_bands
            .partition_point(|t| l.quantity > 0.0 && *t <= l.amount / l.quantity)
            .min(BANDS - 1);
        let basket = l.basket ^ (u64::from(store) << 48);
        let i = match self.index.get(l.consumer) {
            Some(i) => *i as usize,
            None => {
                let i = self.consumers.len();
                let id = u32::try_from(i).expect("fewer than 2^32 consumers per partition");
                self.index.insert(Box::from(l.consumer), id);
                self.consumers.push(Consumer {
                    first_day: l.day,
                    last_day: l.day,
                    baskets: 0,
                    days: 0,
                    lines: 0,
                    monetary: 0.0,
                    first_day_amount: 0.0,
                    recent_baskets: [u64::MAX; 4],
                    recent_days: [i32::MIN; 4],
                    skus: Favourites::default(),
                    brands: TopK::default(),
                    stores: TopK::default(),
                    bands: [0; BANDS],
                });
                i
            }
        };
        let c = &mut self.consumers[i];
        if !c.recent_baskets.contains(&basket) {
            c.recent_baskets.rotate_right(1);
            c.recent_baskets[0] = basket;
            c.baskets += 1;
            c.stores.add(store);
        }
        if !c.recent_days.contains(&l.day) {
            c.recent_days.rotate_right(1);
            c.recent_days[0] = l.day;
            c.days += 1;
        }
        if l.day < c.first_day {
            // An earlier first purchase: the old first day becomes a repeat.
            c.first_day = l.day;
            c.first_day_amount = 0.0;
        }
        if l.day == c.first_day {
            c.first_day_amount += l.amount;
        }
        c.last_day = c.last_day.max(l.day);
        c.lines += 1;
        c.monetary += l.amount;
        c.skus.add(sku);
        c.brands.add(brand);
        c.bands[band] += 1;
        (sku, basket)
    }

    /// The SKU code of an id from [`Self::add`] or
    /// [`ConsumerRow::favourite_sku_ids`].
    pub fn sku_name(&self, id: u32) -> &str {
        self.skus.name(id)
    }

    /// Refits the purchase-intent models on at most 20,000 consumers (every
    /// n-th in key order), in cycles of `profiles.cycle_days`.
    pub fn refit(&mut self) {
        let keys = self.sorted();
        let step = keys.len().div_ceil(REFIT_SAMPLE).max(1);
        let sample: Vec<&Consumer> = keys.iter().step_by(step).map(|(_, c)| *c).collect();
        let summaries: Vec<Summary> = sample.iter().map(|c| self.summary(c)).collect();
        let spends: Vec<Spend> = sample.iter().map(|c| spend(c)).collect();
        self.intent = BgNbd::fit(&summaries).map(|m| (m, GammaGamma::fit(&spends)));
    }

    /// The fitted purchase-intent parameters, after a [`Self::refit`].
    pub fn intent(&self) -> Option<(BgNbd, Option<GammaGamma>)> {
        self.intent
    }

    /// A consumer's BG/NBD summary, in cycles, at the newest day seen.
    pub fn summary_of(&self, consumer: &str) -> Option<Summary> {
        self.index
            .get(consumer)
            .map(|i| self.summary(&self.consumers[*i as usize]))
    }

    /// Every consumer with its id, ordered by id.
    fn sorted(&self) -> Vec<(&str, &Consumer)> {
        let mut v: Vec<(&str, &Consumer)> = self
            .index
            .iter()
            .map(|(k, i)| (&**k, &self.consumers[*i as usize]))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    fn summary(&self, c: &Consumer) -> Summary {
        let unit = f64::from(self.cfg.cycle_days);
        Summary {
            x: f64::from(c.days.saturating_sub(1)),
            t_x: f64::from(c.last_day - c.first_day) / unit,
            t: f64::from(self.newest_day - c.first_day) / unit,
        }
    }

    /// The profiles as checkpoint tables: each consumer's record (postcard
    /// encoded; a record is a handful of small counters and sketches) and
    /// the interned names in id order.
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let keys = self.sorted();
        let mut records: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
        for (k, c) in &keys {
            records.push(postcard::to_stdvec(c).map_err(|e| crate::Error::Restore {
                table: "consumers",
                detail: format!("consumer `{k}` cannot be encoded: {e}"),
            })?);
        }
        let names = |i: &Interner| strings(i.names());
        Ok(vec![
            ck(
                "consumers",
                vec![
                    ("consumer", strings(keys.iter().map(|(k, _)| *k))),
                    (
                        "record",
                        Arc::new(BinaryArray::from_iter_values(records.iter())) as ArrayRef,
                    ),
                ],
            )?,
            ck("consumer_skus", vec![("name", names(&self.skus))])?,
            ck("consumer_brands", vec![("name", names(&self.brands))])?,
            ck("consumer_stores", vec![("name", names(&self.stores))])?,
            ck(
                "consumer_meta",
                vec![(
                    "newest_day",
                    Arc::new(Int32Array::from(vec![self.newest_day])) as ArrayRef,
                )],
            )?,
        ])
    }

    /// Profiles from checkpoint tables written by [`Self::save`]; the
    /// purchase-intent models are fitted again by the next
    /// [`Self::refit`].
    pub fn restore(cfg: Arc<ProfilesConfig>, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut p = ConsumerProfiles::new(cfg);
        for (table, interner) in [
            ("consumer_skus", &mut p.skus),
            ("consumer_brands", &mut p.brands),
            ("consumer_stores", &mut p.stores),
        ] {
            if let Some(c) = Cols::of(tables, table) {
                let names = c.get::<StringArray>("name")?;
                for i in 0..c.rows() {
                    interner.id(names.value(i));
                }
            }
        }
        if let Some(c) = Cols::of(tables, "consumers") {
            let (ids, records) = (
                c.get::<StringArray>("consumer")?,
                c.get::<BinaryArray>("record")?,
            );
            p.consumers.reserve(c.rows());
            for i in 0..c.rows() {
                let rec: Consumer = postcard::from_bytes(records.value(i))
                    .map_err(|e| c.bad(format!("consumer `{}`: {e}", ids.value(i))))?;
                p.index
                    .insert(Box::from(ids.value(i)), p.consumers.len() as u32);
                p.consumers.push(rec);
            }
        }
        if let Some(c) = Cols::of(tables, "consumer_meta") {
            p.newest_day = c.one::<Int32Array>("newest_day")?.value(0);
        }
        Ok(p)
    }

    /// Every consumer's profile, ordered by consumer id, scored against
    /// this partition's population.
    pub fn rows(&self) -> Vec<ConsumerRow> {
        let rfm_of = |c: &Consumer| Rfm {
            recency: f64::from(self.newest_day - c.last_day),
            frequency: f64::from(c.baskets),
            monetary: c.monetary,
        };
        let breaks = Breaks::of(self.consumers.iter().map(rfm_of).collect::<Vec<_>>().iter());
        let map = Segment::default_map();
        let band_names: Vec<String> = (0..=self.cfg.price_bands.len())
            .map(|i| band_label(&self.cfg.price_bands, i))
            .collect();
        self.sorted()
            .into_iter()
            .map(|(k, c)| {
                let scores = breaks.score(&rfm_of(c));
                let brands = c.brands.top();
                let stores = c.stores.top();
                let favourites = c.skus.top();
                let band = (0..band_names.len())
                    .max_by_key(|b| (c.bands[*b], std::cmp::Reverse(*b)))
                    .unwrap_or(0);
                let (p_alive, expected_purchases, expected_spend) = match self.intent {
                    Some((m, gg)) => {
                        let s = self.summary(c);
                        (
                            m.p_alive(&s),
                            m.expected_purchases(&s, 1.0),
                            gg.map_or(f64::NAN, |g| g.expected_spend(&spend(c))),
                        )
                    }
                    None => (f64::NAN, f64::NAN, f64::NAN),
                };
                ConsumerRow {
                    consumer: k.to_string(),
                    recency_days: self.newest_day - c.last_day,
                    frequency: c.baskets,
                    monetary: c.monetary,
                    rfm: scores,
                    segment: rfm::segment(&map, scores).to_owned(),
                    favourite_skus: favourites
                        .iter()
                        .take(3)
                        .map(|(s, _)| self.skus.name(*s).to_owned())
                        .collect(),
                    favourite_sku_ids: favourites.iter().map(|(s, _)| *s).collect(),
                    favourite_brand: brands
                        .first()
                        .map_or_else(String::new, |(b, _)| self.brands.name(*b).to_owned()),
                    brand_loyalty: brands
                        .first()
                        .map_or(0.0, |(_, n)| f64::from(*n) / f64::from(c.lines.max(1))),
                    favourite_store: stores
                        .first()
                        .map_or_else(String::new, |(s, _)| self.stores.name(*s).to_owned()),
                    store_loyalty: stores
                        .first()
                        .map_or(0.0, |(_, n)| f64::from(*n) / f64::from(c.baskets.max(1))),
                    price_band: band_names[band].clone(),
                    p_alive,
                    expected_purchases,
                    expected_spend,
                }
            })
            .collect()
    }
}

/// A consumer's repeat purchases for Gamma-Gamma: days after the first and
/// their mean amount.
fn spend(c: &Consumer) -> Spend {
    let x = f64::from(c.days.saturating_sub(1));
    let mean = if x > 0.0 {
        (c.monetary - c.first_day_amount) / x
    } else {
        0.0
    };
    Spend { x, mean }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_saving_keeps_the_heavy_hitters() {
        let mut t = TopK::<2>::default();
        for i in [1, 2, 1, 3, 1, 4, 1, 5, 1] {
            t.add(i);
        }
        assert_eq!(t.top()[0].0, 1);
        assert!(t.top()[0].1 >= 5);
    }

    #[test]
    fn filtered_space_saving_finds_a_favourite_among_many_one_offs() {
        // Item 0 bought every fourth line among a thousand one-off items.
        let mut f = Favourites::default();
        for i in 1..=1_000u32 {
            f.add(i + 10);
            if i % 4 == 0 {
                f.add(0);
            }
        }
        assert_eq!(f.top()[0].0, 0);
        assert!(f.top()[0].1 >= 250);
        assert_eq!(f.slots.len(), SLOTS);
    }

    #[test]
    fn a_consumer_profile() {
        let mut cfg = ProfilesConfig {
            price_bands: vec![2.0],
            ..ProfilesConfig::default()
        };
        cfg.brands.insert("milk".into(), "Dairy Co".into());
        let mut p = ConsumerProfiles::new(Arc::new(cfg));
        let line = |basket, day, store, sku, amount| ConsumerLine {
            consumer: "c1",
            store,
            basket,
            day,
            sku,
            quantity: 1.0,
            amount,
        };
        for l in [
            line(1, 10, "s1", "milk", 1.0),
            line(1, 10, "s1", "bread", 3.0),
            line(2, 17, "s1", "milk", 1.0),
            line(3, 17, "s2", "milk", 1.5),
            line(4, 30, "s1", "jam", 4.0),
        ] {
            p.add(&l);
        }
        p.add(&ConsumerLine {
            consumer: "c2",
            ..line(9, 40, "s2", "bread", 3.0)
        });
        let rows = p.rows();
        let c1 = &rows[0];
        assert_eq!(c1.consumer, "c1");
        assert_eq!(c1.frequency, 4);
        assert_eq!(c1.recency_days, 10);
        assert!((c1.monetary - 10.5).abs() < 1e-12);
        assert_eq!(c1.favourite_skus[0], "milk");
        assert_eq!(c1.favourite_brand, "Dairy Co");
        assert!((c1.brand_loyalty - 0.6).abs() < 1e-12);
        assert_eq!(c1.favourite_store, "s1");
        assert!((c1.store_loyalty - 0.75).abs() < 1e-12);
        assert_eq!(c1.price_band, "<2");
        assert!(c1.p_alive.is_nan(), "no fit yet");
        // Three purchase days: the first (10, spent 4) and two repeats.
        let s = spend(&p.consumers[p.index["c1"] as usize]);
        assert_eq!(s.x, 2.0);
        assert!((s.mean - 3.25).abs() < 1e-12);
        assert!(rows[1].rfm.r > rows[0].rfm.r, "c2 bought last");
    }
}
