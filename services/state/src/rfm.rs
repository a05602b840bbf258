//! Recency, frequency and monetary value: 1-5 scores and the usual ten
//! segments (Champions … Lost).
//!
//! Scores are quintiles of the current population: a customer's score on
//! a dimension is one more than how many fifths of the population are
//! strictly worse on it, so equal values always get equal scores (with many
//! one-time buyers, they all score 1 on frequency and the next score used
//! is higher). Recency is better when smaller, frequency and monetary value
//! when larger. [`Breaks`] holds the sorted population, so the scores are
//! recomputed from a refreshed population in `O(n log n)` and one customer
//! is scored in `O(log n)`.
//!
//! Segments are rules on the three scores, the first that matches wins;
//! [`Segment::default_map`] is the widely used ten-segment map (the R `rfm`
//! package's), ordered so that the narrower rules come first. A customer no
//! rule matches is in "Others".

use serde::{Deserialize, Serialize};

/// One customer's raw values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rfm {
    /// Time since the last purchase (any unit; smaller is better).
    pub recency: f64,
    /// Number of purchases.
    pub frequency: f64,
    /// Money spent (total or mean, as long as it is the same for all).
    pub monetary: f64,
}

/// 1-5 scores, 5 best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scores {
    /// Recency score.
    pub r: u8,
    /// Frequency score.
    pub f: u8,
    /// Monetary score.
    pub m: u8,
}

/// The population's sorted values per dimension, to score against.
#[derive(Clone, Debug, Default)]
pub struct Breaks {
    recency: Vec<f64>,
    frequency: Vec<f64>,
    monetary: Vec<f64>,
}

impl Breaks {
    /// The breaks of a population.
    pub fn of<'a>(population: impl IntoIterator<Item = &'a Rfm>) -> Breaks {
        let mut b = Breaks::default();
        for c in population {
            // Recency negated so that larger is better on every dimension.
            b.recency.push(-c.recency);
            b.frequency.push(c.frequency);
            b.monetary.push(c.monetary);
        }
        for v in [&mut b.recency, &mut b.frequency, &mut b.monetary] {
            v.sort_by(f64::total_cmp);
        }
        b
    }

    /// The population's size.
    pub fn len(&self) -> usize {
        self.recency.len()
    }

    /// Whether the population is empty.
    pub fn is_empty(&self) -> bool {
        self.recency.is_empty()
    }

    /// The scores of one customer against this population (all 3 for an
    /// empty population).
    pub fn score(&self, c: &Rfm) -> Scores {
        Scores {
            r: quintile(&self.recency, -c.recency),
            f: quintile(&self.frequency, c.frequency),
            m: quintile(&self.monetary, c.monetary),
        }
    }
}

/// One more than the number of fifths of `sorted` strictly below `v`.
fn quintile(sorted: &[f64], v: f64) -> u8 {
    if sorted.is_empty() {
        return 3;
    }
    tile(sorted, v, 5) as u8
}

/// One more than the number of `k`-ths of `sorted` (ascending, not empty)
/// strictly below `v`: 1..=k, equal values in one tile.
pub fn tile(sorted: &[f64], v: f64, k: u32) -> u32 {
    let below = sorted.partition_point(|x| *x < v) as u64;
    (1 + u64::from(k) * below / sorted.len().max(1) as u64).min(u64::from(k)) as u32
}

/// A segment rule: inclusive score ranges per dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The segment's name.
    pub name: String,
    /// Recency score range.
    pub r: (u8, u8),
    /// Frequency score range.
    pub f: (u8, u8),
    /// Monetary score range.
    pub m: (u8, u8),
}

impl Segment {
    fn matches(&self, s: Scores) -> bool {
        let within = |(lo, hi): (u8, u8), v: u8| lo <= v && v <= hi;
        within(self.r, s.r) && within(self.f, s.f) && within(self.m, s.m)
    }

    /// The ten-segment map, narrower rules first.
    pub fn default_map() -> Vec<Segment> {
        [
            ("Champions", (4, 5), (4, 5), (4, 5)),
            ("Can't Lose Them", (1, 1), (4, 5), (4, 5)),
            ("Loyal", (2, 5), (3, 5), (3, 5)),
            ("New", (4, 5), (1, 1), (1, 1)),
            ("Promising", (3, 4), (1, 1), (1, 1)),
            ("Potential Loyalist", (3, 5), (1, 3), (1, 3)),
            ("Need Attention", (2, 3), (2, 3), (2, 3)),
            ("About To Sleep", (2, 3), (1, 2), (1, 2)),
            ("At Risk", (1, 2), (2, 5), (2, 5)),
            ("Lost", (1, 2), (1, 2), (1, 2)),
        ]
        .into_iter()
        .map(|(name, r, f, m)| Segment {
            name: name.to_owned(),
            r,
            f,
            m,
        })
        .collect()
    }
}

/// The name of the first segment in `map` that `s` falls in, or "Others".
pub fn segment(map: &[Segment], s: Scores) -> &str {
    map.iter()
        .find(|seg| seg.matches(s))
        .map_or("Others", |seg| seg.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_give_equal_values_equal_scores() {
        let pop: Vec<Rfm> = (0..10)
            .map(|i| Rfm {
                recency: f64::from(i),
                frequency: if i < 6 { 1.0 } else { f64::from(i) },
                monetary: f64::from(i * 10),
            })
            .collect();
        let b = Breaks::of(&pop);
        let s: Vec<Scores> = pop.iter().map(|c| b.score(c)).collect();
        // Recency 0 is the best, 9 the worst.
        assert_eq!((s[0].r, s[9].r), (5, 1));
        // The six one-time buyers all score 1; the next scores 4.
        assert!(s[..6].iter().all(|x| x.f == 1));
        assert_eq!(s[6].f, 4);
        assert_eq!((s[0].m, s[2].m, s[9].m), (1, 2, 5));
    }

    #[test]
    fn segments_take_the_first_matching_rule() {
        let map = Segment::default_map();
        let at = |r, f, m| segment(&map, Scores { r, f, m }).to_owned();
        assert_eq!(at(5, 5, 5), "Champions");
        assert_eq!(at(1, 5, 5), "Can't Lose Them");
        assert_eq!(at(2, 4, 4), "Loyal");
        assert_eq!(at(5, 1, 1), "New");
        assert_eq!(at(3, 1, 1), "Promising");
        assert_eq!(at(4, 2, 2), "Potential Loyalist");
        assert_eq!(at(2, 3, 2), "Need Attention");
        assert_eq!(at(2, 1, 2), "About To Sleep");
        assert_eq!(at(1, 3, 4), "At Risk");
        assert_eq!(at(1, 1, 1), "Lost");
        assert_eq!(at(1, 1, 5), "Others");
    }
}
