//! The cluster layout: which nodes hold chunks, in which failure zone, with what capacity
//! weight, and how many copies each chunk gets. Changes are staged, then applied as a new
//! version (as in Garage or Ceph), so an operator can review a whole change before chunks move.
//! The layout lives in the replicated metadata; where a chunk lives is computed from it by
//! [`crate::placement`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;

/// A node's Raft id; the layout names nodes by it.
pub type NodeId = u64;

/// Replication factor bounds (copies of each hot chunk).
pub const MAX_REPLICATION: u8 = 5;
pub const DEFAULT_REPLICATION: u8 = 3;
pub const DEFAULT_WRITE_QUORUM: u8 = 2;
const MAX_ZONE_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds chunks: placement puts replicas on it.
    Active,
    /// Being emptied: placement skips it; its chunks move to their other homes, after which
    /// it can be removed from the layout and the cluster.
    Draining,
    /// Stopped answering for longer than `verify.down_after`: placement skips it, so its
    /// chunks get copies on the next candidates, as if it were draining. Set and cleared by
    /// the Raft leader (`SetNodeDown`); an answering node is made active again, and the copies
    /// made meanwhile are released once every home holds the chunk.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRole {
    /// Failure domain (rack, room, site): replicas go to distinct zones first.
    pub zone: String,
    /// Capacity weight: a node's share of chunks is proportional to it. Any unit, as long as
    /// every node uses the same one; `strata layout assign` takes bytes (e.g. 2TB).
    pub capacity: u64,
    pub state: NodeState,
}

/// One version of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// 0 before any apply; each apply increments it.
    pub version: u64,
    pub nodes: BTreeMap<NodeId, NodeRole>,
    /// Copies of each chunk (R).
    pub replication: u8,
    /// Durable copies an upload waits for before it acknowledges a chunk (W <= R).
    pub write_quorum: u8,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            version: 0,
            nodes: BTreeMap::new(),
            replication: DEFAULT_REPLICATION,
            write_quorum: DEFAULT_WRITE_QUORUM,
        }
    }
}

impl Layout {
    /// Nodes that take replicas: active, with a non-zero capacity.
    pub fn storage_nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeRole)> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.state == NodeState::Active && r.capacity > 0)
    }

    /// Copies a chunk actually gets: R, or fewer when the layout has fewer storage nodes.
    pub fn effective_replication(&self) -> usize {
        (self.replication as usize).min(self.storage_nodes().count())
    }

    /// Copies an upload waits for: W, capped by the effective replication.
    pub fn effective_write_quorum(&self) -> usize {
        (self.write_quorum as usize).min(self.effective_replication())
    }

    /// The chunk's homes in preference order (see [`crate::placement::homes`]).
    pub fn homes(&self, id: &crate::ChunkId) -> Vec<NodeId> {
        crate::placement::homes(self, id)
    }

    fn check(&self) -> Result<(), Rejection> {
        let bad = |m: String| Err(Rejection::InvalidLayout(m));
        if !(1..=MAX_REPLICATION).contains(&self.replication) {
            return bad(format!(
                "replication factor must be 1..={MAX_REPLICATION}, not {}",
                self.replication
            ));
        }
        if self.write_quorum == 0 || self.write_quorum > self.replication {
            return bad(format!(
                "write quorum must be 1..={} (the replication factor), not {}",
                self.replication, self.write_quorum
            ));
        }
        for (id, role) in &self.nodes {
            if role.zone.is_empty()
                || role.zone.len() > MAX_ZONE_LEN
                || !role
                    .zone
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(format!(
                    "node {id}: zone {:?} must be 1-{MAX_ZONE_LEN} characters of a-z, A-Z, 0-9, '-', '_' or '.'",
                    role.zone
                ));
            }
        }
        Ok(())
    }
}

/// A staged change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayoutChange {
    /// Adds a node, or changes its zone and capacity (and makes it active again).
    Assign {
        node: NodeId,
        zone: String,
        capacity: u64,
    },
    /// Marks a node draining: its chunks move elsewhere; it stays in the layout until removed.
    Drain {
        node: NodeId,
    },
    /// Takes a node out of the layout (its chunks move to their new homes first).
    Remove {
        node: NodeId,
    },
    Replication {
        replication: u8,
        write_quorum: u8,
    },
}

/// What the metadata keeps: the current layout, the one before it (chunks may still sit at
/// their old homes while a rebalance runs, so readers look there too) and the staged one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutState {
    pub current: Layout,
    pub previous: Option<Layout>,
    pub staged: Option<Layout>,
}

impl LayoutState {
    pub fn stage(&mut self, change: &LayoutChange) -> Result<(), Rejection> {
        let mut next = self.staged.clone().unwrap_or_else(|| self.current.clone());
        match change {
            LayoutChange::Assign {
                node,
                zone,
                capacity,
            } => {
                if *capacity == 0 {
                    return Err(Rejection::InvalidLayout(format!(
                        "node {node}: capacity must be greater than 0 (use drain or remove to take a node out)"
                    )));
                }
                next.nodes.insert(
                    *node,
                    NodeRole {
                        zone: zone.clone(),
                        capacity: *capacity,
                        state: NodeState::Active,
                    },
                );
            }
            LayoutChange::Drain { node } => match next.nodes.get_mut(node) {
                Some(role) => role.state = NodeState::Draining,
                None => return Err(Rejection::NodeNotInLayout(*node)),
            },
            LayoutChange::Remove { node } => {
                if next.nodes.remove(node).is_none() {
                    return Err(Rejection::NodeNotInLayout(*node));
                }
            }
            LayoutChange::Replication {
                replication,
                write_quorum,
            } => {
                next.replication = *replication;
                next.write_quorum = *write_quorum;
            }
        }
        next.check()?;
        self.staged = Some(next);
        Ok(())
    }

    /// Makes the staged layout current as version `version` (which must be current + 1, so
    /// an operator applies exactly what they reviewed).
    pub fn apply(&mut self, version: u64) -> Result<(), Rejection> {
        let Some(mut next) = self.staged.clone() else {
            return Err(Rejection::NothingStaged);
        };
        let expected = self.next_version()?;
        if version != expected {
            return Err(Rejection::LayoutVersion {
                expected,
                given: version,
            });
        }
        if next.storage_nodes().count() == 0 {
            return Err(Rejection::InvalidLayout(
                "the staged layout has no active node with capacity: chunks would have nowhere to live".into(),
            ));
        }
        next.version = expected;
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.staged = None;
        Ok(())
    }

    /// Marks an active node down (`down`), or a down node active again, as a new current
    /// version (decided by the leader from the current layout `seen_version`; a decision made
    /// on an older layout is refused). The staged layout, if any, gets the same change so
    /// applying it does not undo this one.
    pub fn set_down(
        &mut self,
        node: NodeId,
        down: bool,
        seen_version: u64,
    ) -> Result<(), Rejection> {
        if seen_version != self.current.version {
            return Err(Rejection::LayoutVersion {
                expected: self.current.version,
                given: seen_version,
            });
        }
        let (from, to) = if down {
            (NodeState::Active, NodeState::Down)
        } else {
            (NodeState::Down, NodeState::Active)
        };
        let mut next = self.current.clone();
        match next.nodes.get_mut(&node) {
            Some(role) if role.state == from => role.state = to,
            Some(role) => {
                return Err(Rejection::InvalidLayout(format!(
                    "node {node} is {}, not {}",
                    role.state.as_str(),
                    from.as_str()
                )));
            }
            None => return Err(Rejection::NodeNotInLayout(node)),
        }
        if next.storage_nodes().count() == 0 {
            return Err(Rejection::InvalidLayout(format!(
                "node {node} is the last active node: it is not marked down"
            )));
        }
        if let Some(staged) = &mut self.staged
            && let Some(role) = staged.nodes.get_mut(&node)
            && role.state == from
        {
            role.state = to;
        }
        next.version = self.next_version()?;
        self.previous = Some(std::mem::replace(&mut self.current, next));
        Ok(())
    }

    /// The version the next current layout gets (refused, not wrapped, at the end of u64).
    fn next_version(&self) -> Result<u64, Rejection> {
        self.current
            .version
            .checked_add(1)
            .ok_or_else(|| Rejection::InvalidLayout("the layout version is at its maximum".into()))
    }

    pub fn revert(&mut self) -> Result<(), Rejection> {
        if self.staged.take().is_none() {
            return Err(Rejection::NothingStaged);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(node: NodeId, zone: &str) -> LayoutChange {
        LayoutChange::Assign {
            node,
            zone: zone.into(),
            capacity: 100,
        }
    }

    #[test]
    fn a_down_node_leaves_placement_and_comes_back() {
        let mut s = LayoutState::default();
        s.stage(&assign(1, "a")).expect("stage");
        s.stage(&assign(2, "b")).expect("stage");
        s.apply(1).expect("apply");
        s.stage(&assign(3, "c")).expect("stage a change");
        assert!(matches!(
            s.set_down(2, true, 0),
            Err(Rejection::LayoutVersion { .. })
        ));
        s.set_down(2, true, 1).expect("down");
        assert_eq!(s.current.version, 2);
        assert_eq!(s.current.nodes[&2].state, NodeState::Down);
        assert_eq!(s.previous.as_ref().map(|p| p.version), Some(1));
        assert_eq!(s.current.storage_nodes().count(), 1);
        // The operator's staged change keeps the node down, and applies as the next version.
        assert_eq!(
            s.staged.as_ref().map(|l| l.nodes[&2].state),
            Some(NodeState::Down)
        );
        assert!(s.set_down(2, true, 2).is_err(), "already down");
        assert!(
            s.set_down(1, true, 2).is_err(),
            "the last active node stays"
        );
        s.set_down(2, false, 2).expect("back");
        assert_eq!(s.current.nodes[&2].state, NodeState::Active);
        assert_eq!(s.current.version, 3);
        s.apply(4).expect("apply the staged change");
        assert_eq!(s.current.nodes[&2].state, NodeState::Active);
    }

    #[test]
    fn stage_apply_revert() {
        let mut s = LayoutState::default();
        assert_eq!(s.apply(1), Err(Rejection::NothingStaged));
        s.stage(&assign(1, "a")).unwrap();
        s.stage(&assign(2, "b")).unwrap();
        assert_eq!(s.current.nodes.len(), 0, "staging changes nothing current");
        assert_eq!(
            s.apply(2),
            Err(Rejection::LayoutVersion {
                expected: 1,
                given: 2
            })
        );
        s.apply(1).unwrap();
        assert_eq!(s.current.version, 1);
        assert_eq!(s.current.nodes.len(), 2);
        assert_eq!(s.previous.as_ref().map(|l| l.version), Some(0));
        s.stage(&LayoutChange::Drain { node: 2 }).unwrap();
        s.revert().unwrap();
        assert_eq!(s.revert(), Err(Rejection::NothingStaged));
        assert_eq!(s.current.nodes[&2].state, NodeState::Active);
    }

    #[test]
    fn bad_changes_are_refused_and_stage_nothing() {
        let mut s = LayoutState::default();
        for bad in [
            LayoutChange::Replication {
                replication: 0,
                write_quorum: 0,
            },
            LayoutChange::Replication {
                replication: 6,
                write_quorum: 2,
            },
            LayoutChange::Replication {
                replication: 2,
                write_quorum: 3,
            },
            assign(1, ""),
            assign(1, "bad zone"),
            LayoutChange::Assign {
                node: 1,
                zone: "a".into(),
                capacity: 0,
            },
            LayoutChange::Drain { node: 9 },
            LayoutChange::Remove { node: 9 },
        ] {
            assert!(s.stage(&bad).is_err(), "{bad:?} was accepted");
            assert_eq!(s.staged, None, "{bad:?} staged something");
        }
        // A layout with only draining nodes cannot be applied.
        s.stage(&assign(1, "a")).unwrap();
        s.apply(1).unwrap();
        s.stage(&LayoutChange::Drain { node: 1 }).unwrap();
        assert!(matches!(s.apply(2), Err(Rejection::InvalidLayout(_))));
    }

    #[test]
    fn effective_replication_is_capped_by_nodes() {
        let mut s = LayoutState::default();
        s.stage(&assign(1, "a")).unwrap();
        s.apply(1).unwrap();
        assert_eq!(s.current.effective_replication(), 1);
        assert_eq!(s.current.effective_write_quorum(), 1);
        s.stage(&assign(2, "a")).unwrap();
        s.stage(&assign(3, "b")).unwrap();
        s.stage(&assign(4, "c")).unwrap();
        s.apply(2).unwrap();
        assert_eq!(s.current.effective_replication(), 3);
        assert_eq!(s.current.effective_write_quorum(), 2);
    }
}
