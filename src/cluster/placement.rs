//! Which live member runs a unit: rendezvous (highest-random-weight)
//! hashing, so that a member joining or leaving moves only the units it
//! wins or held, about 1/N of them.
//!
//! Every member computes placement on its own from the same member list;
//! they agree because the hash is fixed here (not std's, whose algorithm
//! may change between Rust releases, and members of one farm may run
//! different builds during a rolling upgrade). Agreement is an efficiency,
//! not a safety property: the claim keys decide who runs a unit.

#![forbid(unsafe_code)]

/// A live member as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    /// Relative share of the units (`--cluster-weight`, 1.0 by default).
    pub weight: f64,
}

/// Chooses a unit's owner among the live members. A trait so that weights,
/// labels or zones can change the choice without touching the claims.
pub trait Placement {
    /// The member that should run `unit`, or None without members.
    fn owner<'m>(&self, unit: &str, members: &'m [Candidate]) -> Option<&'m Candidate>;
}

/// Weighted rendezvous hashing: each (member, unit) pair gets a score, the
/// highest wins. With equal weights this is plain HRW; with weights, the
/// logarithmic method gives member i a share of w_i / sum(w).
#[derive(Debug, Default, Clone, Copy)]
pub struct Rendezvous;

impl Placement for Rendezvous {
    fn owner<'m>(&self, unit: &str, members: &'m [Candidate]) -> Option<&'m Candidate> {
        members
            .iter()
            .filter(|m| m.weight > 0.0 && m.weight.is_finite())
            .map(|m| (score(&m.name, unit, m.weight), m))
            // Ties (practically impossible) go to the smaller name, so that
            // every member decides the same.
            .max_by(|(a, ma), (b, mb)| a.total_cmp(b).then_with(|| mb.name.cmp(&ma.name)))
            .map(|(_, m)| m)
    }
}

fn score(member: &str, unit: &str, weight: f64) -> f64 {
    let hash = pair_hash(member, unit);
    // A uniform draw in (0, 1): the top 53 bits, never 0 or 1.
    let uniform = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / uniform.ln()
}

/// FNV-1a over both strings (a separator between them, so that ("ab", "c")
/// and ("a", "bc") differ), then a SplitMix64 finaliser for the avalanche
/// FNV lacks. Fixed forever: changing it moves units between members of
/// different versions.
fn pair_hash(member: &str, unit: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for byte in member.bytes().chain(std::iter::once(0xff)).chain(unit.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn members(names: &[&str]) -> Vec<Candidate> {
        names.iter().map(|n| Candidate { name: n.to_string(), weight: 1.0 }).collect()
    }

    fn units(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("job-{}#{}", i / 4, i % 4)).collect()
    }

    fn owners(units: &[String], members: &[Candidate]) -> HashMap<String, String> {
        units.iter().map(|u| (u.clone(), Rendezvous.owner(u, members).unwrap().name.clone())).collect()
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(Rendezvous.owner("a#0", &[]), None);
    }

    #[test]
    fn the_hash_is_fixed() {
        // Members of different builds must agree: these values may never change.
        // Pinned values (computed independently of this code).
        assert_eq!(pair_hash("", ""), 0x4f2d_b50f_1240_40cd);
        assert_eq!(pair_hash("host-a", "job#0"), 0xc8bb_7a59_6822_a0a0);
        assert_eq!(pair_hash("host-b", "crawler#3"), 0x32d2_3a8b_0efd_9b9f);
        assert_ne!(pair_hash("ab", "c"), pair_hash("a", "bc"));
    }

    #[test]
    fn units_spread_evenly_over_equal_members() {
        let m = members(&["a", "b", "c"]);
        let all = units(3000);
        let mut count: HashMap<String, usize> = HashMap::new();
        for owner in owners(&all, &m).into_values() {
            *count.entry(owner).or_default() += 1;
        }
        for name in ["a", "b", "c"] {
            let n = count[name];
            assert!((850..=1150).contains(&n), "{name} got {n} of 3000: {count:?}");
        }
    }

    #[test]
    fn a_joining_member_takes_about_a_quarter_and_nothing_else_moves() {
        let three = members(&["a", "b", "c"]);
        let four = members(&["a", "b", "c", "d"]);
        let all = units(3000);
        let before = owners(&all, &three);
        let after = owners(&all, &four);
        let moved: Vec<_> = all.iter().filter(|u| before[*u] != after[*u]).collect();
        assert!(moved.iter().all(|u| after[*u] == "d"), "a unit moved between old members");
        assert!((600..=900).contains(&moved.len()), "{} of 3000 moved", moved.len());
    }

    #[test]
    fn a_leaving_member_s_units_and_only_those_move() {
        let three = members(&["a", "b", "c"]);
        let two = members(&["a", "c"]);
        let all = units(3000);
        let before = owners(&all, &three);
        let after = owners(&all, &two);
        for unit in &all {
            if before[unit] != "b" {
                assert_eq!(before[unit], after[unit], "{unit} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn order_of_the_member_list_does_not_matter() {
        let one = members(&["a", "b", "c", "d"]);
        let other = members(&["d", "b", "a", "c"]);
        let all = units(500);
        assert_eq!(owners(&all, &one), owners(&all, &other));
    }

    #[test]
    fn weights_give_proportional_shares_and_zero_weight_gets_nothing() {
        let mut m = members(&["a", "b", "c"]);
        m[0].weight = 2.0;
        m[2].weight = 0.0;
        let all = units(3000);
        let mut count: HashMap<String, usize> = HashMap::new();
        for owner in owners(&all, &m).into_values() {
            *count.entry(owner).or_default() += 1;
        }
        assert!(!count.contains_key("c"));
        assert!((1850..=2150).contains(&count["a"]), "{count:?}");
    }
}
