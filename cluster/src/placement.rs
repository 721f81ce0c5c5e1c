//! Where a chunk lives: a pure function of the layout and the chunk id, so every node computes
//! the same homes without asking anyone, and nothing per chunk is stored.
//!
//! Weighted rendezvous hashing: each storage node scores `capacity / -ln(u)` with `u` a uniform
//! draw from hash(chunk, node); the highest score is the first home. The first home is node i
//! with probability capacity_i / Σ capacity, and a node's arrival or departure only moves the
//! chunks it wins or loses. Replicas take the best-scoring node of each not-yet-used zone
//! first, then the best remaining nodes when there are fewer zones than copies.

use std::collections::BTreeSet;

use crate::ChunkId;
use crate::layout::{Layout, NodeId};

/// The chunk's homes in preference order (readers try them in this order); as many as the
/// layout's effective replication factor.
pub fn homes(layout: &Layout, id: &ChunkId) -> Vec<NodeId> {
    let r = layout.effective_replication();
    let key = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap_or_default());
    let mut scored: Vec<(f64, NodeId, &str)> = layout
        .storage_nodes()
        .map(|(n, role)| (score(key, *n, role.capacity), *n, role.zone.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = Vec::with_capacity(r);
    let mut zones = BTreeSet::new();
    let mut rest = Vec::new();
    for (_, node, zone) in scored {
        if out.len() < r && zones.insert(zone) {
            out.push(node);
        } else {
            rest.push(node);
        }
    }
    out.extend(rest.into_iter().take(r - out.len()));
    out
}

/// Weighted rendezvous score of `node` for the chunk whose id starts with `key`. Chunk ids
/// are BLAKE3 digests, so their first 8 bytes are already uniform; the node id goes through a
/// mixer so that consecutive ids do not give correlated scores.
fn score(key: u64, node: NodeId, capacity: u64) -> f64 {
    let h = mix(key ^ mix(node));
    // A uniform draw in (0, 1): 53 bits, offset by half a step so it is never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    capacity as f64 / -u.ln()
}

/// The splitmix64 finalizer: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::layout::{NodeRole, NodeState};

    fn layout(nodes: &[(NodeId, &str, u64)], r: u8) -> Layout {
        Layout {
            version: 1,
            nodes: nodes
                .iter()
                .map(|(n, z, c)| {
                    (
                        *n,
                        NodeRole {
                            zone: z.to_string(),
                            capacity: *c,
                            state: NodeState::Active,
                        },
                    )
                })
                .collect(),
            replication: r,
            write_quorum: r.min(2),
        }
    }

    /// Deterministic, well-spread chunk ids (as BLAKE3 ids are).
    fn id(i: u64) -> ChunkId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&mix(i ^ 0x5eed).to_le_bytes());
        ChunkId::from_bytes(b)
    }

    const IDS: u64 = 1_000_000;

    /// Share of replicas (or of first homes) each node gets over IDS chunks.
    fn shares(l: &Layout, first_only: bool) -> BTreeMap<NodeId, f64> {
        let mut count = BTreeMap::new();
        let mut total = 0u64;
        for i in 0..IDS {
            let h = homes(l, &id(i));
            let take = if first_only { 1 } else { h.len() };
            for n in &h[..take] {
                *count.entry(*n).or_insert(0u64) += 1;
                total += 1;
            }
        }
        count
            .into_iter()
            .map(|(n, c)| (n, c as f64 / total as f64))
            .collect()
    }

    #[test]
    fn first_homes_follow_capacity_shares() {
        let l = layout(&[(1, "a", 1), (2, "b", 2), (3, "c", 3), (4, "d", 4)], 1);
        for (n, share) in shares(&l, true) {
            let want = n as f64 / 10.0;
            assert!(
                (share - want).abs() / want < 0.02,
                "node {n}: {share:.4} of chunks, want {want:.4}"
            );
        }
    }

    #[test]
    fn replicas_spread_evenly_over_equal_nodes() {
        let l = layout(
            &[
                (11, "a", 8),
                (12, "b", 8),
                (13, "c", 8),
                (14, "d", 8),
                (15, "e", 8),
            ],
            3,
        );
        for (n, share) in shares(&l, false) {
            assert!(
                (share - 0.2).abs() / 0.2 < 0.02,
                "node {n}: {share:.4} of replicas, want 0.2"
            );
        }
    }

    #[test]
    fn replicas_follow_moderately_unequal_capacities() {
        // With R copies on distinct nodes a node cannot hold more than one copy of a chunk, so
        // replica shares follow capacity closely only while no node is much larger than the
        // rest. Measured here: the smallest nodes get up to 6% more than their share and the
        // largest up to 4% less (sampling without replacement favours small weights).
        let l = layout(
            &[
                (1, "a", 4),
                (2, "b", 4),
                (3, "c", 5),
                (4, "d", 5),
                (5, "e", 6),
                (6, "f", 6),
            ],
            3,
        );
        let total = 30.0;
        for (n, share) in shares(&l, false) {
            let cap = [4.0, 4.0, 5.0, 5.0, 6.0, 6.0][(n - 1) as usize];
            let want = cap / total;
            assert!(
                (share - want).abs() / want < 0.07,
                "node {n}: {share:.4} of replicas, want {want:.4}"
            );
        }
    }

    /// Fraction of (chunk, replica) slots whose node changes between two layouts.
    fn moved(a: &Layout, b: &Layout, n: u64) -> f64 {
        let mut moved = 0usize;
        let mut total = 0usize;
        for i in 0..n {
            let (ha, hb) = (homes(a, &id(i)), homes(b, &id(i)));
            total += hb.len();
            moved += hb.iter().filter(|x| !ha.contains(x)).count();
        }
        moved as f64 / total as f64
    }

    #[test]
    fn adding_a_node_moves_close_to_one_nth() {
        for r in [1u8, 3] {
            let four: Vec<(NodeId, &str, u64)> =
                vec![(1, "a", 10), (2, "b", 10), (3, "c", 10), (4, "d", 10)];
            let mut five = four.clone();
            five.push((5, "e", 10));
            let m = moved(&layout(&four, r), &layout(&five, r), IDS);
            // Ideal: the new node takes its 1/5 share and nothing else moves.
            assert!(
                (0.19..0.215).contains(&m),
                "R={r}: {m:.4} of replicas moved, ideal 0.2"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_replicas() {
        let five = layout(
            &[
                (1, "a", 10),
                (2, "b", 10),
                (3, "c", 10),
                (4, "d", 10),
                (5, "e", 10),
            ],
            3,
        );
        let mut four = five.clone();
        four.nodes.remove(&5);
        let m = moved(&five, &four, IDS);
        // The removed node held 1/5 of the replicas; they are the ones that move.
        assert!((0.19..0.215).contains(&m), "{m:.4} of replicas moved");
    }

    #[test]
    fn draining_nodes_get_nothing() {
        let mut l = layout(&[(1, "a", 10), (2, "b", 10), (3, "c", 10), (4, "d", 10)], 3);
        l.nodes.get_mut(&2).unwrap().state = NodeState::Draining;
        for i in 0..10_000 {
            let h = homes(&l, &id(i));
            assert_eq!(h.len(), 3);
            assert!(!h.contains(&2));
        }
    }

    proptest! {
        #[test]
        fn homes_are_distinct_zone_diverse_and_stable(
            nodes in proptest::collection::btree_map(1u64..1000, (0u8..4, 1u64..100), 1..9),
            r in 1u8..=5,
            seed in any::<u64>(),
        ) {
            let spec: Vec<(NodeId, String, u64)> = nodes
                .iter()
                .map(|(n, (z, c))| (*n, format!("z{z}"), *c))
                .collect();
            let l = Layout {
                version: 1,
                nodes: spec
                    .iter()
                    .map(|(n, z, c)| (*n, NodeRole { zone: z.clone(), capacity: *c, state: NodeState::Active }))
                    .collect(),
                replication: r,
                write_quorum: 1,
            };
            let zones: BTreeSet<&String> = spec.iter().map(|(_, z, _)| z).collect();
            for i in 0..50 {
                let chunk = id(seed.wrapping_add(i));
                let h = homes(&l, &chunk);
                prop_assert_eq!(h.len(), (r as usize).min(spec.len()));
                let distinct: BTreeSet<_> = h.iter().collect();
                prop_assert_eq!(distinct.len(), h.len(), "a node got two copies");
                // As many distinct zones as possible.
                let used: BTreeSet<&String> = h.iter().map(|n| &l.nodes[n].zone).collect();
                prop_assert_eq!(used.len(), h.len().min(zones.len()));
                prop_assert_eq!(&h, &homes(&l, &chunk), "not deterministic");
            }
        }
    }
}
