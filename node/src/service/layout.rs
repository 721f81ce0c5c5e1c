//! The layout half of the Admin service, and what each member reports about itself for
//! status tables (disk use, replication queue, rebalance progress).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_cluster::layout::{Layout, NodeId};
use strata_cluster::{Command, LayoutChange, LayoutState, StateMachine};
use strata_proto::v1 as pb;

use crate::blocks::BlockManager;
use crate::disk::DiskSpace;
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;

/// How long a status table waits for a member's own report.
const NODE_INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// What this node reports about itself (status tables, the internal NodeInfo call).
pub struct NodeReport {
    pub name: String,
    pub disk: Arc<DiskSpace>,
    pub blocks: Arc<BlockManager>,
    /// What the janitor and tiering actors report.
    pub board: Arc<crate::workers::Board>,
    /// The verifier's intervals (for "next pass due").
    pub verify: crate::config::VerifyConfig,
    /// Archive checks (the leader's records of bad archives).
    pub tiering: Arc<crate::tiering::Tiering>,
}

impl NodeReport {
    pub fn local(&self) -> pb::NodeInfoResponse {
        local_info(self)
    }
}

fn local_info(r: &NodeReport) -> pb::NodeInfoResponse {
    let (chunk_count, chunk_bytes) = r.blocks.store().usage();
    let p = r.blocks.progress();
    let mut info = pb::NodeInfoResponse {
        node_name: r.name.clone(),
        chunk_count,
        chunk_bytes,
        disk_total_bytes: r.disk.total(),
        disk_free_bytes: r.disk.free(),
        replication_queue: r.blocks.queue_len() as u64,
        rebalance: Some(pb::Rebalance {
            layout_version: p.layout_version,
            finished_version: r.blocks.scanned_version(),
            running: p.running,
            to_move_chunks: p.to_move_chunks,
            to_move_bytes: p.to_move_bytes,
            done_chunks: p.done_chunks,
            done_bytes: p.done_bytes,
            copied_bytes: p.copied_bytes,
            bytes_per_second: p.rate,
            pending_chunks: p.pending,
        }),
        workers: super::workers::local_workers(r),
        ..Default::default()
    };
    super::workers::local_repair(r, &mut info);
    info
}

/// Each member's own report (None where it did not answer in time), asked concurrently.
pub async fn node_infos(
    cluster: &Cluster,
    report: &NodeReport,
) -> BTreeMap<NodeId, Option<pb::NodeInfoResponse>> {
    let asks = cluster.members().into_iter().map(|(id, addr)| async move {
        if id == cluster.id {
            return (id, Some(local_info(report)));
        }
        let info = async {
            let mut client = cluster.peers.client(&addr).ok()?;
            let mut req = tonic::Request::new(pb::NodeInfoRequest {});
            req.set_timeout(NODE_INFO_TIMEOUT);
            let r = tokio::time::timeout(NODE_INFO_TIMEOUT, client.node_info(req))
                .await
                .ok()?;
            r.ok().map(|r| r.into_inner())
        }
        .await;
        (id, info)
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// A node named by raft id, gRPC address or node name.
pub async fn resolve_node(
    cluster: &Cluster,
    report: &NodeReport,
    name: &str,
) -> NodeResult<NodeId> {
    let name = name.trim();
    let members = cluster.members();
    if let Ok(id) = name.parse::<u64>()
        && members.contains_key(&id)
    {
        return Ok(id);
    }
    let bare = |a: &str| {
        a.trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned()
    };
    if let Some((id, _)) = members.iter().find(|(_, a)| bare(a) == bare(name)) {
        return Ok(*id);
    }
    let named: Vec<NodeId> = node_infos(cluster, report)
        .await
        .into_iter()
        .filter(|(_, i)| i.as_ref().is_some_and(|i| i.node_name == name))
        .map(|(id, _)| id)
        .collect();
    match named.as_slice() {
        [one] => Ok(*one),
        [] => Err(NodeError::NotFound(format!(
            "no member of the cluster is {name:?} (give a raft id, gRPC address or node name from `strata status`)"
        ))),
        _ => Err(NodeError::InvalidArgument(format!(
            "several members are named {name:?}: give the raft id instead"
        ))),
    }
}

fn layout_pb(
    l: &Layout,
    names: &BTreeMap<NodeId, String>,
    members: &BTreeMap<NodeId, String>,
) -> pb::Layout {
    pb::Layout {
        version: l.version,
        replication: l.replication.into(),
        write_quorum: l.write_quorum.into(),
        effective_replication: l.effective_replication() as u32,
        nodes: l
            .nodes
            .iter()
            .map(|(id, role)| pb::LayoutNode {
                raft_id: *id,
                name: names.get(id).cloned().unwrap_or_default(),
                address: members.get(id).cloned().unwrap_or_default(),
                zone: role.zone.clone(),
                capacity: role.capacity,
                state: role.state.as_str().into(),
            })
            .collect(),
    }
}

/// Things worth saying about a layout.
/// `version` is the one shown to the operator (a staged layout is named by the version it
/// becomes when applied).
fn warnings(l: &Layout, version: u64, members: &BTreeMap<NodeId, String>) -> Vec<String> {
    let mut w = Vec::new();
    let storage = l.storage_nodes().count();
    if version > 0 && storage < l.replication as usize {
        w.push(format!(
            "layout v{}: replication is {} but only {storage} active node(s) hold chunks: each chunk gets {} cop{}",
            version,
            l.replication,
            l.effective_replication(),
            if l.effective_replication() == 1 { "y" } else { "ies" }
        ));
    }
    let zones: std::collections::BTreeSet<&str> =
        l.storage_nodes().map(|(_, r)| r.zone.as_str()).collect();
    if storage > 0 && zones.len() < l.effective_replication() {
        w.push(format!(
            "layout v{}: {} zone(s) for {} copies: some chunks have two copies in one zone",
            version,
            zones.len(),
            l.effective_replication()
        ));
    }
    for id in l.nodes.keys() {
        if !members.contains_key(id) {
            w.push(format!(
                "layout v{}: node {id} is not a member of the cluster any more: remove it from the layout",
                version
            ));
        }
    }
    w
}

pub async fn layout_response(
    sm: &StateMachine,
    cluster: &Cluster,
    report: &NodeReport,
) -> NodeResult<pb::LayoutResponse> {
    let state = sm.layout()?;
    let members = cluster.members();
    let names: BTreeMap<NodeId, String> = node_infos(cluster, report)
        .await
        .into_iter()
        .filter_map(|(id, i)| i.map(|i| (id, i.node_name)))
        .collect();
    let mut warn = warnings(&state.current, state.current.version, &members);
    if let Some(staged) = &state.staged {
        warn.extend(warnings(staged, state.current.version + 1, &members));
    }
    Ok(pb::LayoutResponse {
        current: Some(layout_pb(&state.current, &names, &members)),
        // Shown as the version it becomes when applied.
        staged: state.staged.as_ref().map(|s| pb::Layout {
            version: state.current.version + 1,
            ..layout_pb(s, &names, &members)
        }),
        warnings: warn,
        unassigned: members
            .iter()
            .filter(|(id, _)| !state.current.nodes.contains_key(id))
            .map(|(id, addr)| pb::LayoutNode {
                raft_id: *id,
                name: names.get(id).cloned().unwrap_or_default(),
                address: addr.clone(),
                state: "-".into(),
                ..Default::default()
            })
            .collect(),
    })
}

/// Turns a StageLayout request into the change to propose.
pub async fn change_of(
    sm: &StateMachine,
    cluster: &Cluster,
    report: &NodeReport,
    req: pb::StageLayoutRequest,
) -> NodeResult<LayoutChange> {
    use pb::stage_layout_request::Change;
    let Some(change) = req.change else {
        return Err(NodeError::InvalidArgument(
            "say which change to stage: assign, drain, remove or replication".into(),
        ));
    };
    Ok(match change {
        Change::Assign(a) => {
            let node = resolve_node(cluster, report, &a.node).await?;
            let capacity = if a.capacity > 0 {
                a.capacity
            } else {
                node_infos(cluster, report)
                    .await
                    .get(&node)
                    .cloned()
                    .flatten()
                    .map(|i| i.disk_total_bytes)
                    .filter(|c| *c > 0)
                    .ok_or_else(|| {
                        NodeError::Unavailable(format!(
                            "node {node} did not report its disk size: give --capacity"
                        ))
                    })?
            };
            LayoutChange::Assign {
                node,
                zone: a.zone,
                capacity,
            }
        }
        Change::Drain(n) => LayoutChange::Drain {
            node: resolve_layout_node(sm, cluster, report, &n).await?,
        },
        Change::Remove(n) => LayoutChange::Remove {
            node: resolve_layout_node(sm, cluster, report, &n).await?,
        },
        Change::Replication(r) => {
            let small = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
            LayoutChange::Replication {
                replication: small(r.replication),
                write_quorum: small(r.write_quorum),
            }
        }
    })
}

/// A node to drain or remove: a member, or a raft id still in the layout (a node that left
/// the cluster without being removed from the layout first).
async fn resolve_layout_node(
    sm: &StateMachine,
    cluster: &Cluster,
    report: &NodeReport,
    name: &str,
) -> NodeResult<NodeId> {
    if let Ok(id) = name.trim().parse::<u64>()
        && sm.layout()?.current.nodes.contains_key(&id)
    {
        return Ok(id);
    }
    resolve_node(cluster, report, name).await
}

pub async fn stage(cluster: &Cluster, change: LayoutChange) -> NodeResult<()> {
    cluster.propose(Command::StageLayout(change)).await?;
    Ok(())
}

pub async fn apply(cluster: &Cluster, version: u64) -> NodeResult<()> {
    cluster.propose(Command::ApplyLayout { version }).await?;
    Ok(())
}

pub async fn revert(cluster: &Cluster) -> NodeResult<()> {
    cluster.propose(Command::RevertLayout).await?;
    Ok(())
}

/// Whether a node may leave the cluster: not while the current layout still places chunks on
/// it (drain it, or remove it from the layout, and apply first).
pub fn check_removable(state: &LayoutState, node: NodeId) -> NodeResult<()> {
    if state.current.nodes.contains_key(&node) {
        return Err(NodeError::FailedPrecondition(format!(
            "node {node} is in layout v{}: drain it (`strata node drain`) or take it out (`strata layout remove` and `strata layout apply`) first, so its chunks move before it leaves",
            state.current.version
        )));
    }
    Ok(())
}
