//! Weighted selection as a pure function, the one used for providers and for
//! a provider's keys: among usable candidates prefer non-fallback ones, then
//! the highest priority, then pick at random by weight. Failover is "choose
//! again without the ones that failed". A leaf: it knows no provider.

use rand::Rng;

/// What selection needs to know of a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub usable: bool,
    pub fallback: bool,
    pub priority: i64,
    pub weight: f64,
}

impl Class {
    /// A candidate that differs from its peers by weight alone.
    pub fn weighted(weight: f64) -> Class {
        Class { usable: true, fallback: false, priority: 0, weight }
    }
}

/// The chosen item, or `None` when no candidate is usable.
pub fn choose<'a, T>(items: &'a [T], class: impl Fn(&T) -> Class, rng: &mut impl Rng) -> Option<&'a T> {
    choose_index(items.len(), |i| class(&items[i]), rng).map(|i| &items[i])
}

/// The index of the chosen one of `count` candidates described by `class`.
/// Each candidate is asked once, so the choice is consistent even when what
/// `class` reads (health, key rests) changes meanwhile.
pub fn choose_index(count: usize, class: impl Fn(usize) -> Class, rng: &mut impl Rng) -> Option<usize> {
    const ON_STACK: usize = 8;
    if count <= ON_STACK {
        let mut classes = [Class::weighted(0.0); ON_STACK];
        for (i, slot) in classes.iter_mut().take(count).enumerate() {
            *slot = class(i);
        }
        choose_among(&classes[..count], rng)
    } else {
        choose_among(&(0..count).map(class).collect::<Vec<_>>(), rng)
    }
}

fn choose_among(classes: &[Class], rng: &mut impl Rng) -> Option<usize> {
    // Tier order: non-fallback before fallback, then higher priority.
    let tier = |c: &Class| (!c.fallback, c.priority);
    let best = classes.iter().filter(|c| c.usable).map(tier).max()?;
    let in_tier = |c: &&Class| c.usable && tier(c) == best;
    let total: f64 = classes.iter().filter(in_tier).map(|c| c.weight).sum();
    let mut point = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
    let mut last = None;
    for (i, c) in classes.iter().enumerate().filter(|(_, c)| in_tier(c)) {
        if point < c.weight {
            return Some(i);
        }
        point -= c.weight;
        last = Some(i);
    }
    last // floating-point rounding can leave `point` a hair above the total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn c(usable: bool, fallback: bool, priority: i64, weight: f64) -> Class {
        Class { usable, fallback, priority, weight }
    }

    fn counts(items: &[Class], draws: usize) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = vec![0; items.len()];
        for _ in 0..draws {
            let chosen = choose(items, |c| *c, &mut rng).unwrap();
            let index = items.iter().position(|i| std::ptr::eq(i, chosen)).unwrap();
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn weights_split_traffic_proportionally() {
        let items = [c(true, false, 0, 1.0), c(true, false, 0, 3.0)];
        let n = 20_000;
        let got = counts(&items, n);
        // Expected 5000/15000; 4 standard deviations (~245) of a binomial.
        assert!((got[0] as i64 - 5000).abs() < 250, "{got:?}");
    }

    #[test]
    fn fallbacks_only_when_no_primary_is_usable() {
        let items = [c(true, true, 9, 100.0), c(true, false, 0, 1.0)];
        assert_eq!(counts(&items, 1000), vec![0, 1000]);
        let items = [c(true, true, 0, 1.0), c(false, false, 0, 1.0)];
        assert_eq!(counts(&items, 100), vec![100, 0]);
    }

    #[test]
    fn highest_priority_wins_within_a_tier() {
        let items = [c(true, false, 1, 1.0), c(true, false, 5, 1.0), c(false, false, 9, 1.0)];
        assert_eq!(counts(&items, 500), vec![0, 500, 0]);
    }

    #[test]
    fn many_candidates_choose_alike() {
        let mut items = vec![c(false, false, 0, 1.0); 12];
        items[10] = c(true, false, 0, 1.0);
        assert_eq!(counts(&items, 50)[10], 50);
    }

    #[test]
    fn nothing_usable_is_none() {
        let items = [c(false, false, 0, 1.0)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(choose(&items, |c| *c, &mut rng).is_none());
        assert!(choose(&[] as &[Class], |c| *c, &mut rng).is_none());
    }
}
