//! SKUs to propose to a retailer: what similar retailers carry and it does
//! not, for account managers.
//!
//! Two retailers are similar when their assortments overlap: the cosine of
//! their sets of SKUs (shared SKUs over the geometric mean of the two
//! counts). A retailer's candidates are the SKUs its `neighbours` most
//! similar retailers carry and it does not, scored by the sum of those
//! retailers' similarities; widely carried SKUs fill a short list. Each
//! suggestion names how many of the similar retailers carry it and the
//! most similar of them.
//!
//! The assortments are rebuilt from the retailer profiles' window (what
//! each retailer ordered or sold lately), so a refresh for every retailer
//! is one pass over the retailer × SKU pairs plus, per retailer, one over
//! the retailers sharing its SKUs.

use foldhash::{HashMap, HashMapExt};

use crate::recommend::{best_k, top_k};

/// Why a SKU is proposed.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    /// Carried by `carriers` of the retailer's similar retailers, the most
    /// similar of them being `example` (with that similarity).
    SimilarRetailers {
        /// How many of the similar retailers carry it.
        carriers: u32,
        /// The most similar retailer that carries it.
        example: u32,
        /// That retailer's similarity, 0 to 1.
        similarity: f64,
    },
    /// Carried by this many retailers (the fill when similar retailers
    /// offer too little).
    Widespread(u32),
}

/// One proposed SKU.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// The SKU.
    pub sku: u32,
    /// Its score (the summed similarity; 0 for the fill).
    pub score: f64,
    /// Why.
    pub why: Why,
}

/// Which SKUs each retailer carries.
#[derive(Clone, Debug, Default)]
pub struct Assortments {
    /// Per retailer, its SKUs, sorted.
    carried: Vec<Vec<u32>>,
    /// Per SKU, the retailers carrying it.
    carriers: HashMap<u32, Vec<u32>>,
    /// SKUs by the number of retailers carrying them, most first.
    widespread: Vec<u32>,
}

impl Assortments {
    /// From (retailer, SKU) pairs, repeats allowed; retailers and SKUs are
    /// dense ids.
    pub fn new(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut carried: Vec<Vec<u32>> = Vec::new();
        for (r, s) in pairs {
            if carried.len() <= r as usize {
                carried.resize_with(r as usize + 1, Vec::new);
            }
            carried[r as usize].push(s);
        }
        let mut carriers: HashMap<u32, Vec<u32>> = HashMap::new();
        for (r, skus) in carried.iter_mut().enumerate() {
            skus.sort_unstable();
            skus.dedup();
            for s in skus.iter() {
                carriers.entry(*s).or_default().push(r as u32);
            }
        }
        let mut widespread: Vec<u32> = carriers.keys().copied().collect();
        widespread.sort_by(|a, b| carriers[b].len().cmp(&carriers[a].len()).then(a.cmp(b)));
        Assortments {
            carried,
            carriers,
            widespread,
        }
    }

    /// Retailers known (the largest id + 1).
    pub fn retailers(&self) -> usize {
        self.carried.len()
    }

    /// Whether `retailer` carries `sku`.
    pub fn carries(&self, retailer: u32, sku: u32) -> bool {
        self.carried
            .get(retailer as usize)
            .is_some_and(|s| s.binary_search(&sku).is_ok())
    }

    /// The `neighbours` retailers most similar to `retailer`, most similar
    /// first, with their similarity.
    pub fn similar(&self, retailer: u32, neighbours: usize) -> Vec<(u32, f64)> {
        let Some(mine) = self.carried.get(retailer as usize) else {
            return Vec::new();
        };
        let mut shared: HashMap<u32, u32> = HashMap::new();
        for s in mine {
            for &r in &self.carriers[s] {
                if r != retailer {
                    *shared.entry(r).or_default() += 1;
                }
            }
        }
        let n = mine.len() as f64;
        let sims = shared.into_iter().map(|(r, k)| {
            let m = self.carried[r as usize].len() as f64;
            (r, f64::from(k) / (n * m).sqrt())
        });
        top_k(sims, neighbours)
    }

    /// The `k` SKUs to propose to `retailer`, from its `neighbours` most
    /// similar retailers, best first; never one it carries.
    pub fn propose(&self, retailer: u32, neighbours: usize, k: usize) -> Vec<Proposal> {
        // sku → (score, carriers, most similar carrier and its similarity)
        let mut scores: HashMap<u32, (f64, u32, u32, f64)> = HashMap::new();
        for (r, sim) in self.similar(retailer, neighbours) {
            for &s in &self.carried[r as usize] {
                if self.carries(retailer, s) {
                    continue;
                }
                let e = scores.entry(s).or_insert((0.0, 0, r, sim));
                e.0 += sim;
                e.1 += 1;
            }
        }
        let out: Vec<Proposal> = scores
            .into_iter()
            .map(|(sku, (score, carriers, example, similarity))| Proposal {
                sku,
                score,
                why: Why::SimilarRetailers {
                    carriers,
                    example,
                    similarity,
                },
            })
            .collect();
        let reach = |s: u32| self.carriers.get(&s).map_or(0, Vec::len);
        let order = |a: &Proposal, b: &Proposal| {
            b.score
                .total_cmp(&a.score)
                .then(reach(b.sku).cmp(&reach(a.sku)))
                .then(a.sku.cmp(&b.sku))
        };
        let mut out = best_k(out, k, order);
        for &s in &self.widespread {
            if out.len() >= k {
                break;
            }
            if !self.carries(retailer, s) && !out.iter().any(|p| p.sku == s) {
                out.push(Proposal {
                    sku: s,
                    score: 0.0,
                    why: Why::Widespread(reach(s) as u32),
                });
            }
        }
        out
    }

    /// The `k` most widely carried SKUs that `retailer` does not carry: the
    /// baseline the proposals are measured against.
    pub fn widespread_for(&self, retailer: u32, k: usize) -> Vec<u32> {
        self.widespread
            .iter()
            .copied()
            .filter(|s| !self.carries(retailer, *s))
            .take(k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_come_from_similar_retailers_with_their_reason() {
        // Retailers 0 and 1 carry 1, 2, 3 and 1 also 4; retailer 2 carries
        // 5, 6, 7 and 8; everyone but 0 carries 9.
        let a = Assortments::new([
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 9),
            (2, 5),
            (2, 6),
            (2, 9),
            (3, 9),
            (3, 7),
            (4, 9),
        ]);
        let sim = a.similar(0, 5);
        assert_eq!(sim.len(), 1);
        assert_eq!(sim[0].0, 1);
        assert!((sim[0].1 - 3.0 / (3.0f64 * 5.0).sqrt()).abs() < 1e-12);
        let p = a.propose(0, 5, 3);
        // Equal scores: the more widely carried first.
        assert_eq!((p[0].sku, p[1].sku), (9, 4), "{p:?}");
        assert!(matches!(
            p[1].why,
            Why::SimilarRetailers {
                carriers: 1,
                example: 1,
                ..
            }
        ));
        assert_eq!(p[2].why, Why::Widespread(1));
        assert!(p.iter().all(|x| !a.carries(0, x.sku)));
        assert_eq!(a.widespread_for(0, 2), vec![9, 4]);
    }
}
