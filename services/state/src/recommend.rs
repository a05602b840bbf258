//! Recommendations from baskets: items bought together, a customer's own
//! history, popularity as the fall-back.
//!
//! [`CoBought`] learns one line at a time: when item `j` joins basket `B`
//! (a consumer's receipt, or a retailer's order), every item already in
//! `B` has been bought together with `j` once more. Counting per line
//! rather than per closed basket gives the same counts in any line order
//! and needs no "basket closed" signal; open baskets are forgotten oldest
//! first past a cap (a basket's lines arrive within seconds).
//!
//! [`CoBought::recommend`] ranks items for a customer and the basket so
//! far, with one of three [`Model`]s: popularity; raw co-occurrence (the
//! sum of the times each candidate was bought with the basket's items);
//! and the blend used in production: co-occurrence normalised by both
//! items' popularity (cosine), plus a weighted count of the customer's own
//! past purchases of the candidate, with popularity filling what is left.
//! On Complete Journey the blend's HitRate@10 is well above the other two
//! (`tests/tests/recommendations.rs`). Every suggestion carries its reason:
//! the basket item it was most often bought with, or how often the
//! customer bought it before, or its popularity.
//!
//! Item and customer ids are dense `u32`s handed out by the caller (an
//! [`crate::intern::Interner`]).

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use foldhash::{HashMap, HashMapExt};

use crate::error::Result;
use crate::record::{Cols, ck};

/// Which scores rank the candidates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    /// Most baskets first.
    Popularity,
    /// Raw co-occurrence counts with the basket's items.
    CoOccurrence,
    /// Cosine-normalised co-occurrence plus `history` times the number of
    /// the customer's past baskets with the candidate.
    Blend {
        /// Weight of one past purchase by the customer.
        history: f64,
    },
}

impl Default for Model {
    fn default() -> Self {
        Model::Blend { history: 0.05 }
    }
}

/// Why an item is suggested.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// Most often bought together with this basket item.
    BoughtWith(u32),
    /// The customer bought it in this many baskets before.
    BoughtBefore(u32),
    /// Among the most popular items.
    Popular,
}

/// One suggested item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Suggestion {
    /// The item.
    pub item: u32,
    /// Its score under the model (0 for popularity fill).
    pub score: f64,
    /// Why.
    pub reason: Reason,
}

/// A basket still receiving lines.
#[derive(Clone, Debug)]
struct Open {
    customer: Option<u32>,
    items: Vec<u32>,
}

/// Co-occurrence, history and popularity, learned line by line.
#[derive(Clone, Debug)]
pub struct CoBought {
    /// Baskets containing each item.
    baskets_with: Vec<u32>,
    /// Per item, the items bought together with it and how many times.
    together: Vec<HashMap<u32, u32>>,
    /// Per customer, the items bought and in how many baskets.
    history: HashMap<u32, HashMap<u32, u32>>,
    open: HashMap<u64, Open>,
    open_order: VecDeque<u64>,
    open_cap: usize,
    /// The most popular items, refreshed every `popular_every` baskets.
    popular: Vec<u32>,
    baskets: u64,
    popular_at: u64,
}

/// The `k` first of `v` in `order`, sorted: a partial selection, then a
/// sort of only those.
pub(crate) fn best_k<T>(
    mut v: Vec<T>,
    k: usize,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    if v.len() > k {
        v.select_nth_unstable_by(k, &order);
        v.truncate(k);
    }
    v.sort_by(&order);
    v
}

/// The `k` highest-scoring `(id, score)` pairs, ties by id.
pub(crate) fn top_k(scores: impl Iterator<Item = (u32, f64)>, k: usize) -> Vec<(u32, f64)> {
    best_k(scores.collect(), k, |a: &(u32, f64), b: &(u32, f64)| {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    })
}

/// How many popular items are kept to fill short lists.
const POPULAR_KEPT: usize = 200;
/// Baskets between refreshes of the popular list.
const POPULAR_EVERY: u64 = 1_000;

impl CoBought {
    /// Empty, forgetting open baskets past `open_cap`.
    pub fn new(open_cap: usize) -> Self {
        CoBought {
            baskets_with: Vec::new(),
            together: Vec::new(),
            history: HashMap::new(),
            open: HashMap::new(),
            open_order: VecDeque::new(),
            open_cap: open_cap.max(1),
            popular: Vec::new(),
            baskets: 0,
            popular_at: 0,
        }
    }

    /// Learns that `item` is in `basket` of `customer`; false (and nothing
    /// learned) when the basket already had it.
    pub fn add(&mut self, basket: u64, customer: Option<u32>, item: u32) -> bool {
        let n = item as usize + 1;
        if self.baskets_with.len() < n {
            self.baskets_with.resize(n, 0);
            self.together.resize_with(n, HashMap::new);
        }
        if !self.open.contains_key(&basket) {
            self.baskets += 1;
            self.open_order.push_back(basket);
            while self.open_order.len() > self.open_cap {
                if let Some(old) = self.open_order.pop_front() {
                    self.open.remove(&old);
                }
            }
        }
        let open = self.open.entry(basket).or_insert_with(|| Open {
            customer,
            items: Vec::new(),
        });
        if open.items.contains(&item) {
            return false;
        }
        for &other in &open.items {
            *self.together[item as usize].entry(other).or_default() += 1;
            *self.together[other as usize].entry(item).or_default() += 1;
        }
        open.items.push(item);
        self.baskets_with[item as usize] += 1;
        if let Some(c) = open.customer {
            *self.history.entry(c).or_default().entry(item).or_default() += 1;
        }
        if self.baskets >= self.popular_at + POPULAR_EVERY || self.popular.is_empty() {
            self.refresh_popular();
        }
        true
    }

    /// Recomputes the popular list now (it is otherwise refreshed every
    /// 1,000 baskets).
    pub fn refresh_popular(&mut self) {
        let items: Vec<u32> = (0..self.baskets_with.len() as u32)
            .filter(|i| self.baskets_with[*i as usize] > 0)
            .collect();
        let by_popularity = |a: &u32, b: &u32| {
            self.baskets_with[*b as usize]
                .cmp(&self.baskets_with[*a as usize])
                .then(a.cmp(b))
        };
        self.popular = best_k(items, POPULAR_KEPT, by_popularity);
        self.popular_at = self.baskets;
    }

    /// Distinct baskets seen.
    pub fn baskets(&self) -> u64 {
        self.baskets
    }

    /// Baskets containing `item`.
    pub fn popularity(&self, item: u32) -> u32 {
        self.baskets_with.get(item as usize).copied().unwrap_or(0)
    }

    /// Times `a` and `b` were in one basket.
    pub fn together(&self, a: u32, b: u32) -> u32 {
        self.together
            .get(a as usize)
            .and_then(|m| m.get(&b))
            .copied()
            .unwrap_or(0)
    }

    /// The items `customer` bought and in how many baskets each.
    pub fn history(&self, customer: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.history
            .get(&customer)
            .into_iter()
            .flat_map(|h| h.iter().map(|(i, n)| (*i, *n)))
    }

    /// The items bought together with `item`, and how many times.
    pub fn partners(&self, item: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.together
            .get(item as usize)
            .into_iter()
            .flat_map(|m| m.iter().map(|(i, n)| (*i, *n)))
    }

    /// The customers with a history.
    pub fn customers(&self) -> impl Iterator<Item = u32> + '_ {
        self.history.keys().copied()
    }

    /// The model as checkpoint tables (`co_items`, `co_pairs`,
    /// `co_history`, `co_open`, `co_meta`).
    pub fn save(&self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let u32s = |v: Vec<u32>| Arc::new(UInt32Array::from(v)) as ArrayRef;
        let u64s = |v: Vec<u64>| Arc::new(UInt64Array::from(v)) as ArrayRef;
        let (mut a, mut b, mut n) = (Vec::new(), Vec::new(), Vec::new());
        for (i, m) in self.together.iter().enumerate() {
            let mut row: Vec<(u32, u32)> = m
                .iter()
                .filter(|(j, _)| **j > i as u32)
                .map(|(j, c)| (*j, *c))
                .collect();
            row.sort_unstable();
            for (j, c) in row {
                a.push(i as u32);
                b.push(j);
                n.push(c);
            }
        }
        let (mut hc, mut hi, mut hn) = (Vec::new(), Vec::new(), Vec::new());
        let mut customers: Vec<&u32> = self.history.keys().collect();
        customers.sort_unstable();
        for c in customers {
            let mut items: Vec<(u32, u32)> =
                self.history[c].iter().map(|(i, n)| (*i, *n)).collect();
            items.sort_unstable();
            for (i, k) in items {
                hc.push(*c);
                hi.push(i);
                hn.push(k);
            }
        }
        let (mut ob, mut oc, mut oi) = (Vec::new(), Vec::new(), Vec::new());
        for basket in &self.open_order {
            if let Some(o) = self.open.get(basket) {
                for item in &o.items {
                    ob.push(*basket);
                    oc.push(o.customer);
                    oi.push(*item);
                }
            }
        }
        Ok(vec![
            ck(
                "co_items",
                vec![("baskets", u32s(self.baskets_with.clone()))],
            )?,
            ck(
                "co_pairs",
                vec![("a", u32s(a)), ("b", u32s(b)), ("n", u32s(n))],
            )?,
            ck(
                "co_history",
                vec![("customer", u32s(hc)), ("item", u32s(hi)), ("n", u32s(hn))],
            )?,
            ck(
                "co_open",
                vec![
                    ("basket", u64s(ob)),
                    ("customer", Arc::new(UInt32Array::from(oc)) as ArrayRef),
                    ("item", u32s(oi)),
                ],
            )?,
            ck(
                "co_meta",
                vec![
                    ("baskets", u64s(vec![self.baskets])),
                    ("popular_at", u64s(vec![self.popular_at])),
                ],
            )?,
        ])
    }

    /// The model from checkpoint tables written by [`Self::save`].
    pub fn restore(open_cap: usize, tables: &[(String, RecordBatch)]) -> Result<Self> {
        let mut m = CoBought::new(open_cap);
        if let Some(c) = Cols::of(tables, "co_items") {
            m.baskets_with = c.get::<UInt32Array>("baskets")?.values().to_vec();
            m.together = vec![HashMap::new(); m.baskets_with.len()];
        }
        let items = m.baskets_with.len();
        if let Some(c) = Cols::of(tables, "co_pairs") {
            let (a, b, n) = (
                c.get::<UInt32Array>("a")?,
                c.get::<UInt32Array>("b")?,
                c.get::<UInt32Array>("n")?,
            );
            for r in 0..c.rows() {
                let (i, j) = (a.value(r), b.value(r));
                if i as usize >= items || j as usize >= items {
                    return Err(c.bad(format!("pair ({i}, {j}) names an item beyond {items}")));
                }
                m.together[i as usize].insert(j, n.value(r));
                m.together[j as usize].insert(i, n.value(r));
            }
        }
        if let Some(c) = Cols::of(tables, "co_history") {
            let (cu, it, n) = (
                c.get::<UInt32Array>("customer")?,
                c.get::<UInt32Array>("item")?,
                c.get::<UInt32Array>("n")?,
            );
            for r in 0..c.rows() {
                m.history
                    .entry(cu.value(r))
                    .or_default()
                    .insert(it.value(r), n.value(r));
            }
        }
        if let Some(c) = Cols::of(tables, "co_open") {
            let (b, cu, it) = (
                c.get::<UInt64Array>("basket")?,
                c.get::<UInt32Array>("customer")?,
                c.get::<UInt32Array>("item")?,
            );
            for r in 0..c.rows() {
                let (basket, item) = (b.value(r), it.value(r));
                if let Some(open) = m.open.get_mut(&basket) {
                    open.items.push(item);
                } else {
                    m.open_order.push_back(basket);
                    let customer = cu.is_valid(r).then(|| cu.value(r));
                    let items = vec![item];
                    m.open.insert(basket, Open { customer, items });
                }
            }
        }
        if let Some(c) = Cols::of(tables, "co_meta") {
            m.baskets = c.one::<UInt64Array>("baskets")?.value(0);
            m.popular_at = c.one::<UInt64Array>("popular_at")?.value(0);
        }
        let at = m.popular_at;
        m.refresh_popular();
        m.popular_at = at;
        Ok(m)
    }

    /// Item pairs held, for the state-size metric.
    pub fn pairs(&self) -> usize {
        self.together.iter().map(HashMap::len).sum()
    }

    /// The `k` best items for `customer` given the `basket` so far, never
    /// an item of `basket` or of `exclude`, best first.
    pub fn recommend(
        &self,
        model: Model,
        customer: Option<u32>,
        basket: &[u32],
        exclude: &[u32],
        k: usize,
    ) -> Vec<Suggestion> {
        // candidate → (score, best single contribution, its reason)
        let mut scores: HashMap<u32, (f64, f64, Reason)> = HashMap::new();
        let mut add = |item: u32, s: f64, why: Reason| {
            let e = scores.entry(item).or_insert((0.0, f64::MIN, why));
            e.0 += s;
            if s > e.1 {
                e.1 = s;
                e.2 = why;
            }
        };
        match model {
            Model::Popularity => {}
            Model::CoOccurrence => {
                for &i in basket {
                    for (&j, &c) in self.together.get(i as usize).into_iter().flatten() {
                        add(j, f64::from(c), Reason::BoughtWith(i));
                    }
                }
            }
            Model::Blend { history } => {
                for &i in basket {
                    for (j, s) in self.cosines(i) {
                        add(j, s, Reason::BoughtWith(i));
                    }
                }
                if let Some(c) = customer {
                    for (j, n) in self.history(c) {
                        add(j, history * f64::from(n), Reason::BoughtBefore(n));
                    }
                }
            }
        }
        self.rank(scores, basket, exclude, k)
    }

    /// The partners of `item` with their cosine: times together over the
    /// root of both popularities.
    fn cosines(&self, item: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        let ni = f64::from(self.popularity(item));
        self.partners(item).map(move |(j, c)| {
            (
                j,
                f64::from(c) / (ni * f64::from(self.popularity(j))).sqrt(),
            )
        })
    }

    /// Per item of `items`, its `k` partners with the highest cosine
    /// (times together over the root of both popularities): made once,
    /// they serve many [`Self::recommend_from`] calls.
    pub fn neighbours(
        &self,
        items: impl IntoIterator<Item = u32>,
        k: usize,
    ) -> HashMap<u32, Vec<(u32, f64)>> {
        let mut out = HashMap::new();
        for i in items {
            if out.contains_key(&i) {
                continue;
            }
            out.insert(i, top_k(self.cosines(i), k));
        }
        out
    }

    /// The blend model without a customer history, from the neighbour
    /// lists of [`Self::neighbours`] (which must hold every item of
    /// `basket`): the same ranking as [`Self::recommend`] except that a
    /// candidate outside an item's list gets nothing from that item.
    pub fn recommend_from(
        &self,
        neighbours: &HashMap<u32, Vec<(u32, f64)>>,
        basket: &[u32],
        exclude: &[u32],
        k: usize,
    ) -> Vec<Suggestion> {
        let mut scores: HashMap<u32, (f64, f64, Reason)> = HashMap::new();
        for &i in basket {
            for &(j, s) in neighbours.get(&i).into_iter().flatten() {
                let e = scores
                    .entry(j)
                    .or_insert((0.0, f64::MIN, Reason::BoughtWith(i)));
                e.0 += s;
                if s > e.1 {
                    e.1 = s;
                    e.2 = Reason::BoughtWith(i);
                }
            }
        }
        self.rank(scores, basket, exclude, k)
    }

    /// The `k` best of `scores` (candidate → total, best contribution, its
    /// reason) outside `basket` and `exclude`, popular items filling up.
    fn rank(
        &self,
        scores: HashMap<u32, (f64, f64, Reason)>,
        basket: &[u32],
        exclude: &[u32],
        k: usize,
    ) -> Vec<Suggestion> {
        let skip = |i: &u32| basket.contains(i) || exclude.contains(i);
        let ranked: Vec<Suggestion> = scores
            .into_iter()
            .filter(|(i, _)| !skip(i))
            .map(|(item, (score, _, reason))| Suggestion {
                item,
                score,
                reason,
            })
            .collect();
        let order = |a: &Suggestion, b: &Suggestion| {
            b.score
                .total_cmp(&a.score)
                .then(self.popularity(b.item).cmp(&self.popularity(a.item)))
                .then(a.item.cmp(&b.item))
        };
        let mut ranked = best_k(ranked, k, order);
        for &item in &self.popular {
            if ranked.len() >= k {
                break;
            }
            if !skip(&item) && !ranked.iter().any(|s| s.item == item) {
                ranked.push(Suggestion {
                    item,
                    score: 0.0,
                    reason: Reason::Popular,
                });
            }
        }
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(c: &mut CoBought, baskets: &[(u64, u32, &[u32])]) {
        for (b, customer, items) in baskets {
            for i in *items {
                c.add(*b, Some(*customer), *i);
            }
        }
        c.refresh_popular();
    }

    #[test]
    fn counts_do_not_depend_on_line_order_and_repeats_count_once() {
        let mut a = CoBought::new(10);
        let mut b = CoBought::new(10);
        learn(&mut a, &[(1, 0, &[1, 2, 3]), (2, 0, &[2, 3])]);
        learn(&mut b, &[(2, 0, &[3, 2, 3]), (1, 0, &[3, 1, 2, 1])]);
        for (x, y) in [(1, 2), (2, 3), (1, 3), (3, 2)] {
            assert_eq!(a.together(x, y), b.together(x, y), "{x} {y}");
        }
        assert_eq!(a.together(2, 3), 2);
        assert_eq!(a.popularity(3), 2);
        assert_eq!(b.popularity(1), 1);
        assert_eq!(a.pairs(), b.pairs());
    }

    #[test]
    fn a_forgotten_open_basket_starts_afresh() {
        let mut c = CoBought::new(1);
        c.add(1, None, 1);
        c.add(2, None, 2);
        // Basket 1 was forgotten: its second line pairs with nothing.
        c.add(1, None, 3);
        assert_eq!(c.together(1, 3), 0);
        assert_eq!(c.baskets(), 3);
    }

    #[test]
    fn suggestions_carry_their_reason_and_skip_the_basket() {
        let mut c = CoBought::new(100);
        // Bread goes with butter; customer 7 keeps buying jam.
        let (bread, butter, jam, milk) = (0, 1, 2, 3);
        let mut baskets: Vec<(u64, u32, Vec<u32>)> =
            (0..20).map(|b| (b, 1, vec![bread, butter])).collect();
        baskets.extend((20..30).map(|b| (b, 7, vec![jam])));
        baskets.extend((30..60).map(|b| (b, 2, vec![milk])));
        for (b, customer, items) in &baskets {
            for i in items {
                c.add(*b, Some(*customer), *i);
            }
        }
        c.refresh_popular();
        let s = c.recommend(Model::default(), Some(7), &[bread], &[], 3);
        assert_eq!(s[0].item, butter);
        assert_eq!(s[0].reason, Reason::BoughtWith(bread));
        assert_eq!(s[1].item, jam);
        assert_eq!(s[1].reason, Reason::BoughtBefore(10));
        assert_eq!(s[2].item, milk);
        assert_eq!(s[2].reason, Reason::Popular);
        assert!(s.iter().all(|x| x.item != bread));
        let p = c.recommend(Model::Popularity, None, &[], &[milk], 2);
        assert_eq!(
            p.iter().map(|s| s.item).collect::<Vec<_>>(),
            vec![bread, butter]
        );
    }

    #[test]
    fn a_restored_model_ranks_and_learns_like_the_original() {
        let mut c = CoBought::new(2);
        learn(
            &mut c,
            &[
                (1, 7, &[1, 2, 3]),
                (2, 8, &[2, 3]),
                (3, 7, &[3, 4]),
                (4, 9, &[1, 4]),
            ],
        );
        // Basket 4 is still open: its next line must pair with 1 and 4.
        let saved = crate::record::owned(c.save().unwrap());
        let mut back = CoBought::restore(2, &saved).unwrap();
        for m in [&mut c, &mut back] {
            m.add(4, Some(9), 2);
        }
        assert_eq!(back.together(2, 4), c.together(2, 4));
        assert_eq!(back.together(2, 4), 1);
        assert_eq!(back.baskets(), c.baskets());
        assert_eq!(back.pairs(), c.pairs());
        let rank = |m: &CoBought| m.recommend(Model::default(), Some(7), &[3], &[], 3);
        assert_eq!(rank(&back), rank(&c));
    }

    #[test]
    fn neighbour_lists_rank_like_the_blend_when_long_enough() {
        let mut c = CoBought::new(10);
        learn(
            &mut c,
            &[
                (1, 1, &[1, 2, 3, 5]),
                (2, 2, &[2, 3]),
                (3, 3, &[3, 4, 1]),
                (4, 4, &[1, 4, 5]),
                (5, 5, &[2, 5]),
            ],
        );
        let basket = [1, 2];
        let full = c.neighbours(basket, 100);
        let blend = Model::Blend { history: 0.0 };
        assert_eq!(
            c.recommend_from(&full, &basket, &[4], 3),
            c.recommend(blend, None, &basket, &[4], 3)
        );
        // One partner per item: only each item's best partner scores.
        let short = c.neighbours(basket, 1);
        assert_eq!(short[&1].len(), 1);
        let got = c.recommend_from(&short, &basket, &[], 3);
        assert!(got.iter().all(|s| s.item != 1 && s.item != 2));
    }
}
