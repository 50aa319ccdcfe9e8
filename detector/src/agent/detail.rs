//! What the agent keeps of stalled sockets when there are many: any remote client can stall
//! thousands of connections (ask for a large answer, never read), and every stalled socket kept
//! in full (samples, verdict notes, holders, a report line) costs ~5 KB. So at most
//! [`DETAIL_MAX`] stalled sockets are kept in full and reported one by one; the rest are
//! counted by reason. Which ones: fairly across owners, so that a flood on one process neither
//! hides every other process's stalls nor holds back their reaps under the rate limit (the
//! reaper takes stalls in this order).
use std::{collections::HashMap, hash::Hash};

/// Stalled sockets kept in full and reported one by one.
pub const DETAIL_MAX: usize = 1024;

/// The order stalled sockets are reported and reaped in: grouped by owner, the groups taken in
/// turn (the group with the longest stall first), each group's sockets longest first. A flood
/// on one owner then takes one place in every round, not the whole report.
pub fn fair_order<K: Hash + Eq + Copy>(stalled: &[(u64, K, u64)]) -> Vec<u64> {
    let mut groups: HashMap<K, Vec<(u64, u64)>> = HashMap::new();
    for &(sk, owner, stalled_for) in stalled {
        groups.entry(owner).or_default().push((stalled_for, sk));
    }
    let mut groups: Vec<Vec<(u64, u64)>> = groups.into_values().collect();
    for g in &mut groups {
        // Longest first, then by socket (a stable order from pass to pass).
        g.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    }
    groups.sort_unstable_by(|a, b| b[0].0.cmp(&a[0].0).then(a[0].1.cmp(&b[0].1)));
    let mut out = Vec::with_capacity(stalled.len());
    for round in 0.. {
        let before = out.len();
        out.extend(groups.iter().filter_map(|g| g.get(round)).map(|&(_, sk)| sk));
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_on_one_owner_takes_one_place_per_round() {
        // Owner 1 holds 100 old stalls; owners 2 and 3 one younger stall each.
        let mut stalled: Vec<(u64, u32, u64)> = (0..100).map(|i| (1_000 + i, 1, 600_000 - i)).collect();
        stalled.extend([(2, 2, 40_000), (3, 3, 35_000)]);
        let order = fair_order(&stalled);
        assert_eq!(&order[..6], &[1_000, 2, 3, 1_001, 1_002, 1_003]);
        assert_eq!(order.len(), 102);
        // Cut at a detail cap, every owner is in.
        assert!(order[..10].contains(&2) && order[..10].contains(&3));
    }

    #[test]
    fn within_an_owner_the_longest_stall_comes_first_and_the_order_is_stable() {
        let stalled = [(7, 9u32, 10), (8, 9, 30), (9, 9, 20), (10, 4, 30)];
        assert_eq!(fair_order(&stalled), vec![8, 10, 9, 7]);
        assert_eq!(fair_order(&stalled), fair_order(&stalled));
        assert!(fair_order::<u32>(&[]).is_empty());
    }
}
