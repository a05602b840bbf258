//! Comparative analysis of SKUs by customer demand: complements, substitutes
//! and clusters.
//!
//! - **Complements** of a SKU are bought in the same basket more often than
//!   chance: lift = baskets with both × all baskets / (baskets with one ×
//!   baskets with the other), from [`CoBought`]'s counts, with a minimum
//!   number of shared baskets so rare pairs do not dominate.
//! - **Substitutes** are bought by the same customers but seldom together:
//!   the customer lift of the two SKUs (shared customers over the number
//!   expected by chance) times the share of the rarer SKU's baskets that do
//!   *not* hold both, so a pair always bought together scores low.
//! - **Clusters** group SKUs bought by the same customers: each SKU links
//!   to its most similar SKUs (customer lift at least `min_similarity`)
//!   and labels spread along the links (label propagation, weighted,
//!   deterministic order) until they settle.
//!
//! Built on demand from the customer histories of a [`CoBought`], over the
//! SKUs with at least `min_customers` customers.

use foldhash::{HashMap, HashMapExt};

use crate::recommend::{CoBought, top_k};

/// SKUs with their customers, for similarity by shared demand.
#[derive(Clone, Debug)]
pub struct SkuGroups {
    /// Per SKU (only those kept), its customers, sorted.
    customers: HashMap<u32, Vec<u32>>,
    /// Per customer, the kept SKUs they bought.
    bought: HashMap<u32, Vec<u32>>,
}

impl SkuGroups {
    /// From the customer histories in `c`, keeping SKUs bought by at least
    /// `min_customers` customers.
    pub fn new(c: &CoBought, min_customers: usize) -> Self {
        let mut by_sku: HashMap<u32, Vec<u32>> = HashMap::new();
        for customer in c.customers() {
            for (sku, _) in c.history(customer) {
                by_sku.entry(sku).or_default().push(customer);
            }
        }
        by_sku.retain(|_, v| v.len() >= min_customers.max(1));
        let mut bought: HashMap<u32, Vec<u32>> = HashMap::new();
        for (sku, cs) in &mut by_sku {
            cs.sort_unstable();
            for c in cs.iter() {
                bought.entry(*c).or_default().push(*sku);
            }
        }
        SkuGroups {
            customers: by_sku,
            bought,
        }
    }

    /// SKUs kept, sorted.
    pub fn skus(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.customers.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The `k` kept SKUs whose customers overlap `sku`'s most, most similar
    /// first, by customer lift: shared customers over the number expected
    /// if the two were bought independently (1 = no affinity). Lift rather
    /// than cosine because with cosine the staples everyone buys are
    /// everyone's nearest neighbours.
    pub fn similar(&self, sku: u32, k: usize) -> Vec<(u32, f64)> {
        let Some(mine) = self.customers.get(&sku) else {
            return Vec::new();
        };
        let mut shared: HashMap<u32, u32> = HashMap::new();
        for c in mine {
            for &other in &self.bought[c] {
                if other != sku {
                    *shared.entry(other).or_default() += 1;
                }
            }
        }
        let n = mine.len() as f64;
        let all = self.bought.len() as f64;
        let sims = shared.into_iter().map(|(o, s)| {
            let m = self.customers[&o].len() as f64;
            (o, f64::from(s) * all / (n * m))
        });
        top_k(sims, k)
    }

    /// The `k` best substitutes of `sku`: similar customers, seldom in one
    /// basket (see the module documentation).
    pub fn substitutes(&self, c: &CoBought, sku: u32, k: usize) -> Vec<(u32, f64)> {
        let candidates = self.similar(sku, 50);
        let scored = candidates.into_iter().map(|(o, sim)| {
            let together = f64::from(c.together(sku, o));
            let fewer = f64::from(c.popularity(sku).min(c.popularity(o))).max(1.0);
            (o, sim * (1.0 - together / fewer).max(0.0))
        });
        top_k(scored, k)
    }

    /// SKU clusters: (SKU, cluster label) for every kept SKU, the label
    /// being the smallest SKU id of the cluster. Each SKU links to at most
    /// `links` similar SKUs with a similarity of at least `min_similarity`.
    pub fn clusters(&self, links: usize, min_similarity: f64) -> Vec<(u32, u32)> {
        let skus = self.skus();
        let edges: HashMap<u32, Vec<(u32, f64)>> = skus
            .iter()
            .map(|s| {
                let e: Vec<(u32, f64)> = self
                    .similar(*s, links)
                    .into_iter()
                    .filter(|(_, w)| *w >= min_similarity)
                    .collect();
                (*s, e)
            })
            .collect();
        let mut label: HashMap<u32, u32> = skus.iter().map(|s| (*s, *s)).collect();
        for _ in 0..30 {
            let mut changed = false;
            for s in &skus {
                let mut weight: HashMap<u32, f64> = HashMap::new();
                *weight.entry(label[s]).or_default() += 1e-9;
                for (o, w) in &edges[s] {
                    *weight.entry(label[o]).or_default() += w;
                }
                let best = weight
                    .into_iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                    .map(|(l, _)| l)
                    .unwrap_or(*s);
                if best != label[s] {
                    label.insert(*s, best);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Name each cluster by its smallest member.
        let mut smallest: HashMap<u32, u32> = HashMap::new();
        for s in &skus {
            let e = smallest.entry(label[s]).or_insert(*s);
            *e = (*e).min(*s);
        }
        skus.iter().map(|s| (*s, smallest[&label[s]])).collect()
    }
}

/// The `k` complements of `sku` by lift, among SKUs bought with it in at
/// least `min_together` baskets, highest lift first.
pub fn complements(c: &CoBought, sku: u32, min_together: u32, k: usize) -> Vec<(u32, f64)> {
    let n = c.baskets() as f64;
    let ni = f64::from(c.popularity(sku));
    let lifts = c
        .partners(sku)
        .filter(|(_, t)| *t >= min_together)
        .map(|(o, t)| (o, f64::from(t) * n / (ni * f64::from(c.popularity(o)))));
    top_k(lifts, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complements_substitutes_and_clusters() {
        // Customers 0-9 buy tea (1) with lemon (2) in one basket, or
        // coffee (3) in another; customers 10-19 buy beer (4) and, in
        // other baskets, wine (5).
        let mut c = CoBought::new(100);
        let mut basket = 0;
        for customer in 0..20u32 {
            let trips: &[&[u32]] = if customer < 10 {
                &[&[1, 2], &[3], &[1, 2]]
            } else {
                &[&[4], &[5], &[4]]
            };
            for items in trips {
                basket += 1;
                for i in *items {
                    c.add(basket, Some(customer), *i);
                }
            }
        }
        let g = SkuGroups::new(&c, 2);
        assert_eq!(complements(&c, 1, 2, 1)[0].0, 2);
        // Coffee is a substitute of tea (same customers, never together);
        // lemon is not (always together).
        let subs = g.substitutes(&c, 1, 2);
        assert_eq!(subs[0].0, 3, "{subs:?}");
        assert!(subs.iter().all(|(o, s)| *o != 2 || *s == 0.0));
        let clusters: HashMap<u32, u32> = g.clusters(5, 1.2).into_iter().collect();
        assert_eq!((clusters[&1], clusters[&2], clusters[&3]), (1, 1, 1));
        assert_eq!((clusters[&4], clusters[&5]), (4, 4));
    }
}
