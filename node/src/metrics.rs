//! Metric names (all `strata_*`, units in the name) and the Prometheus exporter.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const CERT_RENEWALS: &str = "strata_cert_renewals_total";
pub const CERT_EXPIRY: &str = "strata_node_cert_expiry_timestamp_seconds";
pub const GRPC_REQUESTS: &str = "strata_grpc_requests_total";
pub const GRPC_DURATION: &str = "strata_grpc_request_duration_seconds";
pub const UPLOAD_BYTES: &str = "strata_upload_bytes_total";
pub const DOWNLOAD_BYTES: &str = "strata_download_bytes_total";
pub const DEDUP_BYTES: &str = "strata_upload_dedup_bytes_total";
pub const CHUNK_STORE_OPS: &str = "strata_chunk_store_ops_total";
pub const CHUNK_STORE_ERRORS: &str = "strata_chunk_store_errors_total";
pub const CHUNK_STORE_WRITTEN_BYTES: &str = "strata_chunk_store_written_bytes_total";
pub const CHUNK_CORRUPT: &str = "strata_chunk_corrupt_total";
pub const CHUNK_STORE_CHUNKS: &str = "strata_chunk_store_chunks";
pub const CHUNK_STORE_BYTES: &str = "strata_chunk_store_bytes";
pub const SESSIONS_OPEN: &str = "strata_upload_sessions_open";
pub const SESSIONS_EXPIRED: &str = "strata_upload_sessions_expired_total";
pub const TRASH_PURGED: &str = "strata_trash_purged_total";
pub const CHUNKS_COLLECTED: &str = "strata_chunks_collected_total";
pub const ACTOR_RESTARTS: &str = "strata_actor_restarts_total";
pub const UPTIME: &str = "strata_uptime_seconds";
pub const DISK_TOTAL: &str = "strata_disk_total_bytes";
pub const DISK_FREE: &str = "strata_disk_free_bytes";
pub const RAFT_TERM: &str = "strata_raft_term";
pub const RAFT_IS_LEADER: &str = "strata_raft_is_leader";
pub const RAFT_HAS_LEADER: &str = "strata_raft_has_leader";
pub const RAFT_LAST_LOG_INDEX: &str = "strata_raft_last_log_index";
pub const RAFT_APPLIED_INDEX: &str = "strata_raft_applied_index";
pub const RAFT_APPLY_LAG: &str = "strata_raft_apply_lag_entries";
pub const RAFT_VOTERS: &str = "strata_raft_voters";
pub const RAFT_MAX_FOLLOWER_LAG: &str = "strata_raft_max_follower_lag_entries";
pub const READ_INDEX_RETRIES: &str = "strata_raft_read_index_retries_total";
pub const FORWARDS_LEFT: &str = "strata_raft_forwards_left_total";
pub const QUIC_SENT_BYTES: &str = "strata_quic_sent_bytes_total";
pub const QUIC_RECEIVED_BYTES: &str = "strata_quic_received_bytes_total";
pub const QUIC_ERRORS: &str = "strata_quic_errors_total";
pub const PEER_REQUESTS: &str = "strata_peer_requests_total";
pub const REPLICA_RECEIVED_BYTES: &str = "strata_replica_received_bytes_total";
pub const REPLICA_SENT_BYTES: &str = "strata_replica_sent_bytes_total";
pub const REPLICATION_QUEUE: &str = "strata_replication_queue_chunks";
pub const PEER_CORRUPT: &str = "strata_peer_corrupt_chunks_total";
pub const PEER_READ_BYTES: &str = "strata_peer_read_bytes_total";
pub const READ_CACHE_HITS: &str = "strata_read_cache_hits_total";
pub const REBALANCE_TO_MOVE_CHUNKS: &str = "strata_rebalance_remaining_chunks";
pub const REBALANCE_TO_MOVE_BYTES: &str = "strata_rebalance_remaining_bytes";
pub const REBALANCE_MOVED_BYTES: &str = "strata_rebalance_moved_bytes_total";
pub const REBALANCE_RELEASED_CHUNKS: &str = "strata_rebalance_released_chunks_total";
pub const LAYOUT_VERSION: &str = "strata_layout_version";
pub const TIER_BYTES: &str = "strata_tier_bytes";
pub const TIER_MOVES: &str = "strata_tier_moves_total";
pub const TIER_MOVED_BYTES: &str = "strata_tier_moved_bytes_total";
pub const TIER_MOVES_PENDING: &str = "strata_tier_moves_pending";
pub const RESTORES_IN_FLIGHT: &str = "strata_restores_in_flight";
pub const TIER_REHYDRATED_BYTES: &str = "strata_tier_rehydrated_bytes_total";
pub const TIER_COLD_READ_BYTES: &str = "strata_tier_cold_read_bytes_total";
pub const TIER_BACKEND_REQUESTS: &str = strata_cold::metrics::BACKEND_REQUESTS;
pub const TIER_BACKEND_ERRORS: &str = strata_cold::metrics::BACKEND_ERRORS;
pub const INGRESS_REFUSED: &str = "strata_ingress_refused_total";
pub const PLAN_REFUSALS: &str = "strata_plan_refusals_total";
pub const PLAN_PACED_BYTES: &str = "strata_plan_paced_bytes_total";
pub const TENANT_STORED_BYTES: &str = "strata_tenant_stored_bytes";
pub const TENANT_OBJECTS: &str = "strata_tenant_objects";
pub const TENANT_OPEN_UPLOADS: &str = "strata_tenant_open_uploads";
pub const STREAMS_OPEN: &str = "strata_streams_open";
pub const MEMORY_IN_USE: &str = "strata_chunk_memory_bytes";
pub const SCRUB_BYTES: &str = "strata_scrub_bytes_total";
pub const SCRUB_CHUNKS: &str = "strata_scrub_chunks_total";
pub const SCRUB_CORRUPTIONS: &str = "strata_scrub_corruptions_total";
pub const SCRUB_PASSES: &str = "strata_scrub_passes_total";
pub const CHUNKS_UNDER_REPLICATED: &str = "strata_chunks_under_replicated";
pub const REPAIRS: &str = "strata_repairs_total";
pub const UNRECOVERABLE_CHUNKS: &str = "strata_unrecoverable_chunks";
pub const CHECK_PASSES: &str = "strata_anti_entropy_passes_total";
pub const COLD_VERIFY: &str = "strata_cold_verify_total";

/// Installs the global recorder; the handle renders the Prometheus text (see `http.rs`).
pub fn install() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let latency_buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe();
    // Series appear in the output once touched: start the unlabelled ones at zero so alerts
    // and dashboards see them before the first event.
    for name in [
        UPLOAD_BYTES,
        DOWNLOAD_BYTES,
        DEDUP_BYTES,
        CHUNK_STORE_WRITTEN_BYTES,
        CHUNK_CORRUPT,
        SESSIONS_EXPIRED,
        TRASH_PURGED,
        CHUNKS_COLLECTED,
        ACTOR_RESTARTS,
        QUIC_SENT_BYTES,
        QUIC_RECEIVED_BYTES,
        REPLICA_RECEIVED_BYTES,
        REPLICA_SENT_BYTES,
        PEER_CORRUPT,
        PEER_READ_BYTES,
        READ_CACHE_HITS,
        REBALANCE_MOVED_BYTES,
        REBALANCE_RELEASED_CHUNKS,
        TIER_REHYDRATED_BYTES,
        TIER_COLD_READ_BYTES,
        SCRUB_BYTES,
        SCRUB_CHUNKS,
        SCRUB_CORRUPTIONS,
        SCRUB_PASSES,
        CHECK_PASSES,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        CHUNK_STORE_CHUNKS,
        CHUNK_STORE_BYTES,
        SESSIONS_OPEN,
        UPTIME,
        REPLICATION_QUEUE,
        REBALANCE_TO_MOVE_CHUNKS,
        REBALANCE_TO_MOVE_BYTES,
        LAYOUT_VERSION,
        CHUNKS_UNDER_REPLICATED,
        UNRECOVERABLE_CHUNKS,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for source in ["peer", "read"] {
        metrics::counter!(REPAIRS, "source" => source).increment(0);
    }
    for kind in ["put", "get"] {
        metrics::gauge!(STREAMS_OPEN, "kind" => kind).set(0.0);
    }
    for pool in ["client", "peer"] {
        metrics::gauge!(MEMORY_IN_USE, "pool" => pool).set(0.0);
    }
    Ok(handle)
}

/// Copies Raft's state into gauges whenever it changes.
pub async fn follow_raft(raft: strata_cluster::raft::Raft) {
    let mut rx = raft.metrics();
    loop {
        let m = rx.borrow_and_update().clone();
        metrics::gauge!(RAFT_TERM).set(m.current_term as f64);
        metrics::gauge!(RAFT_IS_LEADER).set(if m.state.is_leader() { 1.0 } else { 0.0 });
        metrics::gauge!(RAFT_HAS_LEADER).set(if m.current_leader.is_some() { 1.0 } else { 0.0 });
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        metrics::gauge!(RAFT_LAST_LOG_INDEX).set(last as f64);
        metrics::gauge!(RAFT_APPLIED_INDEX).set(applied as f64);
        metrics::gauge!(RAFT_APPLY_LAG).set(last.saturating_sub(applied) as f64);
        metrics::gauge!(RAFT_VOTERS)
            .set(m.membership_config.membership().voter_ids().count() as f64);
        let follower_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.values()
                    .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        metrics::gauge!(RAFT_MAX_FOLLOWER_LAG).set(follower_lag as f64);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn describe() {
    describe_counter!(
        SCRUB_BYTES,
        Unit::Bytes,
        "bytes of chunk files re-hashed by the scrub"
    );
    describe_counter!(SCRUB_CHUNKS, "chunk files re-hashed by the scrub");
    describe_counter!(
        CERT_RENEWALS,
        "renewals of this node's certificate, by outcome (ok, failed)"
    );
    describe_gauge!(
        CERT_EXPIRY,
        Unit::Seconds,
        "when this node's certificate expires (unix time)"
    );
    describe_counter!(
        "strata_connections_refused_total",
        "gRPC connections closed before serving: failed or slow TLS handshakes, plaintext where TLS is required, too many handshakes at once"
    );
    describe_counter!(
        SCRUB_CORRUPTIONS,
        "chunk files the scrub found corrupt (quarantined, then repaired from a good copy)"
    );
    describe_counter!(
        SCRUB_PASSES,
        "complete scrub passes over this node's chunks"
    );
    describe_gauge!(
        CHUNKS_UNDER_REPLICATED,
        "chunks this node is a home of but does not hold, found by the last check (each is a missing copy)"
    );
    describe_counter!(
        REPAIRS,
        "chunk copies put back on this node, by source (peer: by the verifier; read: by a client read)"
    );
    describe_gauge!(
        UNRECOVERABLE_CHUNKS,
        "referenced chunks with no good copy on any node that answered"
    );
    describe_counter!(
        COLD_VERIFY,
        "cold archive checks by backend and result (ok, missing, corrupt, error)"
    );
    describe_counter!(
        CHECK_PASSES,
        "complete anti-entropy checks of this node's chunks against the metadata"
    );
    describe_counter!(
        QUIC_SENT_BYTES,
        Unit::Bytes,
        "bytes sent to peers over QUIC"
    );
    describe_counter!(
        QUIC_RECEIVED_BYTES,
        Unit::Bytes,
        "bytes received from peers over QUIC"
    );
    describe_counter!(
        QUIC_ERRORS,
        "peer transport errors by kind (handshake, unreachable, timeout, corrupt, protocol, stream, remote)"
    );
    describe_counter!(PEER_REQUESTS, "peer requests made, by op and result");
    describe_counter!(
        REPLICA_RECEIVED_BYTES,
        Unit::Bytes,
        "chunk bytes stored on this node for peers (replication and rebalancing)"
    );
    describe_counter!(
        REPLICA_SENT_BYTES,
        Unit::Bytes,
        "chunk bytes this node sent to their homes (replication and rebalancing)"
    );
    describe_gauge!(
        REPLICATION_QUEUE,
        "chunks written here that have not yet reached all their homes"
    );
    describe_counter!(
        PEER_CORRUPT,
        "chunks a peer reported corrupt or sent with a wrong BLAKE3 (another home was used)"
    );
    describe_counter!(
        PEER_READ_BYTES,
        Unit::Bytes,
        "chunk bytes fetched from peers for reads"
    );
    describe_counter!(
        READ_CACHE_HITS,
        "chunk reads served from the hot-chunk cache"
    );
    describe_gauge!(
        REBALANCE_TO_MOVE_CHUNKS,
        "chunks held here still to copy to their homes or release (current rebalance pass)"
    );
    describe_gauge!(
        REBALANCE_TO_MOVE_BYTES,
        Unit::Bytes,
        "bytes held here still to copy to their homes or release (current rebalance pass)"
    );
    describe_counter!(
        REBALANCE_MOVED_BYTES,
        Unit::Bytes,
        "chunk bytes copied to new homes by rebalancing"
    );
    describe_counter!(
        REBALANCE_RELEASED_CHUNKS,
        "local copies released once all of a chunk's homes held it"
    );
    describe_gauge!(
        TIER_BYTES,
        Unit::Bytes,
        "bytes per tier: tier=\"hot\" is chunk bytes on this node's disk; each cold backend's series is the cluster-wide live chunk bytes stored there"
    );
    describe_counter!(
        TIER_MOVES,
        "object versions moved to a cold backend, by backend and result (ok, failed)"
    );
    describe_counter!(
        TIER_MOVED_BYTES,
        Unit::Bytes,
        "archive bytes uploaded to cold backends and verified"
    );
    describe_gauge!(
        TIER_MOVES_PENDING,
        "object versions the tiering policies select that are not cold yet (leader, last pass)"
    );
    describe_gauge!(
        RESTORES_IN_FLIGHT,
        "restores asked for and not finished (cluster-wide)"
    );
    describe_counter!(
        TIER_REHYDRATED_BYTES,
        Unit::Bytes,
        "chunk bytes brought back from cold backends to hot storage"
    );
    describe_counter!(
        TIER_COLD_READ_BYTES,
        Unit::Bytes,
        "chunk bytes read straight from online cold backends (B2, STANDARD, GLACIER_IR)"
    );
    describe_counter!(
        TIER_BACKEND_REQUESTS,
        "requests to cold backends by backend and operation"
    );
    describe_counter!(
        TIER_BACKEND_ERRORS,
        "failed requests to cold backends by backend and operation"
    );
    describe_counter!(
        INGRESS_REFUSED,
        "requests refused at the door, by the limit that refused them (message_size, max_streams, max_streams_per_tenant)"
    );
    describe_counter!(
        PLAN_REFUSALS,
        "calls refused by a tenant's plan, by tenant (named if in metrics_tenants, else other) and limit (requests, max_object_size, max_bytes, max_objects, max_open_uploads)"
    );
    describe_counter!(
        PLAN_PACED_BYTES,
        Unit::Bytes,
        "chunk bytes that waited for their tenant's plan bandwidth, by tenant (named if in metrics_tenants, else other)"
    );
    describe_gauge!(
        TENANT_STORED_BYTES,
        Unit::Bytes,
        "bytes a tenant stores (every version kept), for the tenants in metrics_tenants"
    );
    describe_gauge!(
        TENANT_OBJECTS,
        "keys a tenant stores (live or in the trash), for the tenants in metrics_tenants"
    );
    describe_gauge!(
        TENANT_OPEN_UPLOADS,
        "upload sessions a tenant has open, for the tenants in metrics_tenants"
    );
    describe_gauge!(
        STREAMS_OPEN,
        "open upload (kind=put) and download (kind=get) streams"
    );
    describe_gauge!(
        MEMORY_IN_USE,
        Unit::Bytes,
        "chunk bytes held in memory against max_inflight_bytes, by pool (client: uploads and downloads; peer: chunks between nodes)"
    );
    describe_gauge!(
        LAYOUT_VERSION,
        "the layout version this node places chunks by"
    );
    describe_counter!(GRPC_REQUESTS, "gRPC requests by method and status code");
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC request latency by method (streams: until the handler returns)"
    );
    describe_counter!(
        UPLOAD_BYTES,
        Unit::Bytes,
        "chunk bytes received from clients"
    );
    describe_counter!(DOWNLOAD_BYTES, Unit::Bytes, "object bytes sent to clients");
    describe_counter!(
        DEDUP_BYTES,
        Unit::Bytes,
        "upload bytes not sent because the tenant already held the chunks"
    );
    describe_counter!(
        CHUNK_STORE_OPS,
        "chunk store operations by op (put, get, delete)"
    );
    describe_counter!(CHUNK_STORE_ERRORS, "chunk store I/O errors by op");
    describe_counter!(
        CHUNK_STORE_WRITTEN_BYTES,
        Unit::Bytes,
        "bytes written to the chunk store"
    );
    describe_counter!(
        CHUNK_CORRUPT,
        "chunks that failed BLAKE3 verification on read"
    );
    describe_gauge!(CHUNK_STORE_CHUNKS, "chunks held by this node");
    describe_gauge!(
        CHUNK_STORE_BYTES,
        Unit::Bytes,
        "bytes of chunks held by this node"
    );
    describe_gauge!(SESSIONS_OPEN, "open upload sessions");
    describe_counter!(
        SESSIONS_EXPIRED,
        "upload sessions aborted after their idle timeout"
    );
    describe_counter!(
        TRASH_PURGED,
        "trashed keys purged after the retention period"
    );
    describe_counter!(CHUNKS_COLLECTED, "unreferenced chunks deleted");
    describe_counter!(
        ACTOR_RESTARTS,
        "actors restarted by their supervisor after a failure"
    );
    describe_gauge!(UPTIME, Unit::Seconds, "seconds since the node started");
    describe_gauge!(
        DISK_TOTAL,
        Unit::Bytes,
        "size of the filesystem holding the data directory"
    );
    describe_gauge!(
        DISK_FREE,
        Unit::Bytes,
        "free space on the filesystem holding the data directory"
    );
    describe_counter!(
        FORWARDS_LEFT,
        "reads and writes forwarded to a leader that stopped leading before it answered, by kind (they go to the next leader, or answer at once)"
    );
    describe_counter!(
        READ_INDEX_RETRIES,
        "leadership confirmations (read barriers) retried because a heartbeat round missed a quorum"
    );
    describe_gauge!(RAFT_TERM, "current Raft term");
    describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader");
    describe_gauge!(RAFT_HAS_LEADER, "1 if this node knows a Raft leader");
    describe_gauge!(
        RAFT_LAST_LOG_INDEX,
        "index of the last entry in this node's Raft log"
    );
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "index of the last Raft entry applied to this node's state machine"
    );
    describe_gauge!(
        RAFT_APPLY_LAG,
        "Raft entries in the log not yet applied on this node"
    );
    describe_gauge!(RAFT_VOTERS, "voting members of the Raft group");
    describe_gauge!(
        RAFT_MAX_FOLLOWER_LAG,
        "largest replication lag of a follower, in entries (leader only; 0 elsewhere)"
    );
}
