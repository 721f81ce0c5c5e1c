//! Background workers in one shape (`strata worker list|set`, `strata scrub ...`) and the
//! repair report (`strata repair status`): what each member says about its own workers,
//! gathered through the internal NodeInfo call, and the controls sent to one member or all.

use std::collections::{BTreeMap, HashSet};

use strata_cluster::layout::NodeId;
use strata_cluster::{ChunkId, StateMachine};
use strata_proto::v1 as pb;

use super::layout::{NodeReport, node_infos, resolve_node};
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;
use crate::workers::{WorkerReport, WorkerState};

/// Unrecoverable chunks one member reports at most (its count is exact).
const LOST_SHOWN: usize = 100;
/// Versions named per repair report.
const USES_SHOWN: usize = 1000;

fn worker(name: &str, w: WorkerReport) -> pb::Worker {
    pb::Worker {
        name: name.into(),
        state: w.state.as_str().into(),
        progress: w.progress.unwrap_or(-1.0),
        bytes_per_second: w.bytes_per_second,
        last_error: w.last_error.unwrap_or_default(),
        last_done_ms: w.last_done_ms,
        next_run_ms: w.next_run_ms,
        tunables: w.tunables.into_iter().collect(),
        figures: w.figures.into_iter().collect(),
    }
}

fn figures(pairs: &[(&str, u64)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// This node's workers.
pub fn local_workers(r: &NodeReport) -> Vec<pb::Worker> {
    let b = &r.blocks;
    let mut out = vec![worker("janitor", r.board.get("janitor"))];

    let p = b.progress();
    let placement = WorkerReport {
        state: if p.running {
            WorkerState::Throttled
        } else {
            WorkerState::Idle
        },
        progress: (p.running && p.to_move_bytes > 0)
            .then(|| p.done_bytes as f64 / p.to_move_bytes as f64),
        bytes_per_second: if p.running { p.rate } else { 0.0 },
        figures: figures(&[
            ("replication queue", b.queue_len() as u64),
            ("layout", p.layout_version),
            ("finished layout", b.scanned_version()),
            ("pending chunks", p.pending),
            ("copied bytes", p.copied_bytes),
        ]),
        tunables: [("rebalance-rate".to_string(), b.rebalance_rate().to_string())].into(),
        ..Default::default()
    };
    out.push(worker("placement", placement));
    out.push(worker("tiering", r.board.get("tiering")));

    let ctl = b.verify_control();
    let act = b.verify_activity();
    let scrub = b.scrub_record();
    let rate = ctl.scrub_rate();
    let scrub_state = if ctl.paused() {
        WorkerState::Paused
    } else if !act.scrub_running {
        WorkerState::Idle
    } else if act.scrub_rate_now >= 0.8 * rate as f64 {
        WorkerState::Throttled
    } else {
        WorkerState::Busy
    };
    let interval_ms = r.verify.scrub_interval.as_millis() as i64;
    out.push(worker(
        "scrub",
        WorkerReport {
            state: scrub_state,
            progress: (scrub.pass_started_ms != 0).then(|| scrub.progress()),
            bytes_per_second: if act.scrub_running {
                act.scrub_rate_now
            } else {
                0.0
            },
            last_error: act.scrub_error,
            last_done_ms: scrub.last_done_ms,
            next_run_ms: if scrub.pass_started_ms != 0 {
                0
            } else {
                scrub.last_done_ms.saturating_add(interval_ms)
            },
            figures: figures(&[
                ("pass chunks", scrub.pass_chunks),
                ("pass bytes", scrub.pass_bytes),
                ("pass corrupt", scrub.pass_corrupt),
                ("pass repaired", scrub.pass_repaired),
                ("total bytes", scrub.total_bytes),
                ("total corrupt", scrub.total_corrupt),
                ("total repaired", scrub.total_repaired),
                ("last pass bytes/s", scrub.last_pass_rate as u64),
            ]),
            tunables: [("scrub-rate".to_string(), rate.to_string())].into(),
        },
    ));

    let check = b.check_record();
    let check_ms = r.verify.check_interval.as_millis() as i64;
    out.push(worker(
        "check",
        WorkerReport {
            state: if act.check_running {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            },
            last_error: act.check_error,
            last_done_ms: check.last_done_ms,
            next_run_ms: if check.last_done_ms == 0 {
                0
            } else {
                check.last_done_ms.saturating_add(check_ms)
            },
            figures: figures(&[
                ("chunks homed here", check.homed),
                ("missing", check.missing),
                ("restored", check.restored),
                ("waiting", check.waiting),
                ("unrecoverable", check.lost),
            ]),
            ..Default::default()
        },
    ));
    out
}

/// The repair half of this node's NodeInfo: counts and its first unrecoverable chunks.
pub fn local_repair(r: &NodeReport, info: &mut pb::NodeInfoResponse) {
    let b = &r.blocks;
    let check = b.check_record();
    info.unrecoverable_chunks = b.lost_count() as u64;
    info.under_replicated_chunks = check.missing.saturating_sub(check.restored);
    info.repairs_waiting = check.waiting;
    info.unrecoverable = b
        .lost_chunks(LOST_SHOWN)
        .into_iter()
        .map(|(id, l)| pb::UnrecoverableChunk {
            chunk_id: id.as_bytes().to_vec().into(),
            found_by: 0,
            first_seen_ms: l.first_seen_ms,
            quarantined_copy: l.quarantined_here,
            objects: Vec::new(),
        })
        .collect();
    info.bad_archives = r
        .tiering
        .bad_archives(LOST_SHOWN)
        .into_iter()
        .map(|b| pb::BadArchive {
            backend: b.backend,
            object: b.object,
            result: b.result,
            detail: b.detail,
            found_ms: b.found_ms,
            live_chunks: b.live_chunks,
        })
        .collect();
}

/// Carries out one control request on this node; returns what it did, in words.
pub fn control_local(r: &NodeReport, req: &pb::ControlWorkersRequest) -> NodeResult<String> {
    let b = &r.blocks;
    let ctl = b.verify_control();
    match req.action.as_str() {
        "scrub-start" => {
            ctl.start();
            Ok("scrub pass starting (or running)".into())
        }
        "scrub-pause" => {
            ctl.pause();
            Ok("scrub paused".into())
        }
        "scrub-resume" => {
            ctl.resume();
            Ok("scrub resumed".into())
        }
        "set" => {
            let value: u64 = req.value.trim().parse().map_err(|_| {
                NodeError::InvalidArgument(format!(
                    "{:?} is not a rate in bytes per second",
                    req.value
                ))
            })?;
            if value == 0 {
                return Err(NodeError::InvalidArgument(
                    "a rate must be greater than zero (pause the worker instead)".into(),
                ));
            }
            match req.tunable.as_str() {
                "scrub-rate" => {
                    ctl.set_scrub_rate(value);
                    Ok(format!("scrub-rate is now {value} bytes/s"))
                }
                "rebalance-rate" => {
                    b.set_rebalance_rate(value);
                    Ok(format!(
                        "rebalance-rate is now {value} bytes/s (from the next pass)"
                    ))
                }
                other => Err(NodeError::InvalidArgument(format!(
                    "unknown tunable {other:?}: scrub-rate or rebalance-rate"
                ))),
            }
        }
        other => Err(NodeError::InvalidArgument(format!(
            "unknown action {other:?}: scrub-start, scrub-pause, scrub-resume or set"
        ))),
    }
}

/// Every member's workers.
pub async fn list(cluster: &Cluster, report: &NodeReport) -> pb::ListWorkersResponse {
    let members = cluster.members();
    let infos = node_infos(cluster, report).await;
    pb::ListWorkersResponse {
        nodes: infos
            .into_iter()
            .map(|(id, info)| pb::NodeWorkers {
                raft_id: id,
                address: members.get(&id).cloned().unwrap_or_default(),
                error: if info.is_none() {
                    "did not answer".into()
                } else {
                    String::new()
                },
                name: info
                    .as_ref()
                    .map(|i| i.node_name.clone())
                    .unwrap_or_default(),
                workers: info.map(|i| i.workers).unwrap_or_default(),
            })
            .collect(),
    }
}

/// Sends a control request to one member (by raft id, address or name) or to every member.
pub async fn control(
    cluster: &Cluster,
    report: &NodeReport,
    node: &str,
    req: pb::ControlWorkersRequest,
) -> NodeResult<pb::AdminControlWorkersResponse> {
    // Refuse a bad request before sending it anywhere.
    match req.action.as_str() {
        "scrub-start" | "scrub-pause" | "scrub-resume" | "set" => {}
        other => {
            return Err(NodeError::InvalidArgument(format!(
                "unknown action {other:?}: scrub-start, scrub-pause, scrub-resume or set"
            )));
        }
    }
    let members = cluster.members();
    let targets: Vec<NodeId> = if node.trim().is_empty() {
        members.keys().copied().collect()
    } else {
        vec![resolve_node(cluster, report, node).await?]
    };
    let names: BTreeMap<NodeId, String> = node_infos(cluster, report)
        .await
        .into_iter()
        .filter_map(|(id, i)| i.map(|i| (id, i.node_name)))
        .collect();
    let mut out = Vec::new();
    for id in targets {
        let result: Result<String, String> = if id == cluster.id {
            control_local(report, &req).map_err(|e| e.to_string())
        } else {
            match members.get(&id).map(|a| cluster.peers.client(a)) {
                Some(Ok(mut client)) => client
                    .control_workers(req.clone())
                    .await
                    .map(|r| r.into_inner().message)
                    .map_err(|s| format!("{} ({:?})", s.message(), s.code())),
                Some(Err(s)) => Err(format!("{} ({:?})", s.message(), s.code())),
                None => Err(format!("node {id} is not a member")),
            }
        };
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        out.push(pb::ControlResult {
            raft_id: id,
            name: names.get(&id).cloned().unwrap_or_default(),
            ok,
            message,
        });
    }
    Ok(pb::AdminControlWorkersResponse { nodes: out })
}

/// Repair state of every member, with the objects that use each unrecoverable chunk.
pub async fn repair_status(
    sm: &std::sync::Arc<StateMachine>,
    cluster: &Cluster,
    report: &NodeReport,
) -> NodeResult<pb::RepairStatusResponse> {
    let infos = node_infos(cluster, report).await;
    let mut nodes = Vec::new();
    let mut lost: BTreeMap<ChunkId, pb::UnrecoverableChunk> = BTreeMap::new();
    let mut bad_archives: BTreeMap<(String, String), pb::BadArchive> = BTreeMap::new();
    for (id, info) in infos {
        let Some(info) = info else {
            nodes.push(pb::NodeRepair {
                raft_id: id,
                error: "did not answer".into(),
                ..Default::default()
            });
            continue;
        };
        nodes.push(pb::NodeRepair {
            raft_id: id,
            name: info.node_name.clone(),
            error: String::new(),
            under_replicated: info.under_replicated_chunks,
            being_repaired: info.repairs_waiting,
            unrecoverable: info.unrecoverable_chunks,
        });
        for b in info.bad_archives {
            bad_archives
                .entry((b.backend.clone(), b.object.clone()))
                .or_insert(b);
        }
        for mut u in info.unrecoverable {
            let Some(chunk) = ChunkId::from_slice(&u.chunk_id) else {
                continue;
            };
            u.found_by = id;
            lost.entry(chunk).or_insert(u);
        }
    }
    // Only chunks still referenced are lost data; name the versions that use them.
    let ids: HashSet<ChunkId> = lost.keys().copied().collect();
    let sm2 = sm.clone();
    let uses = tokio::task::spawn_blocking(move || sm2.versions_using(&ids, USES_SHOWN))
        .await
        .map_err(|e| NodeError::Internal(format!("repair status: {e}")))??;
    let mut tenants = BTreeMap::new();
    for strata_cluster::query::VersionUse {
        chunk,
        tenant,
        bucket,
        key,
        version,
    } in uses
    {
        let name = match tenants.get(&tenant) {
            Some(n) => Clone::clone(n),
            None => {
                let n = sm
                    .tenant(tenant)?
                    .map(|t| t.name)
                    .unwrap_or_else(|| tenant.0.to_string());
                tenants.insert(tenant, n.clone());
                n
            }
        };
        if let Some(u) = lost.get_mut(&chunk) {
            u.objects.push(pb::ObjectUse {
                tenant: name,
                bucket: bucket.as_str().into(),
                key: key.as_str().into(),
                version,
            });
        }
    }
    let mut unrecoverable = Vec::new();
    for (chunk, u) in lost {
        if sm.chunk_refs(&chunk)? > 0 {
            unrecoverable.push(u);
        }
    }
    // Only archives still recorded (one deleted since as dead is no longer a problem).
    let mut bad = Vec::new();
    for ((backend, object), b) in bad_archives {
        if sm.archive(&backend, &object)?.is_some() {
            bad.push(b);
        }
    }
    Ok(pb::RepairStatusResponse {
        nodes,
        unrecoverable,
        bad_archives: bad,
    })
}
