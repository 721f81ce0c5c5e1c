//! Node configuration: defaults, then a TOML file, then STRATA_* environment variables, then
//! command-line flags (each layer overrides the one before). Every key has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Every configuration key; also the names accepted as STRATA_<KEY> environment variables.
pub const KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "listen",
    "metrics_listen",
    "max_chunk_bytes",
    "max_inflight_bytes",
    "session_idle_timeout",
    "trash_retention",
    "janitor_interval",
    "log",
    "advertise",
    "join",
    "cluster_secret",
    "raft_snapshot_logs",
    "zone",
    "capacity",
    "replication",
    "write_quorum",
    "read_cache_bytes",
    "rebalance_rate_bytes",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of this node in status output and metrics.
    pub node_id: String,
    /// Where chunks and metadata live.
    pub data_dir: PathBuf,
    /// gRPC address (Storage, Admin, health, reflection).
    pub listen: SocketAddr,
    /// Prometheus /metrics address.
    pub metrics_listen: SocketAddr,
    /// Largest chunk accepted, in bytes (at most 64 MiB).
    pub max_chunk_bytes: u32,
    /// Chunk bytes being verified and written at once across all uploads (memory bound).
    pub max_inflight_bytes: u64,
    /// An upload session with no activity for this long is aborted and its chunks collected.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// How long a deleted key stays in the trash before it is purged.
    #[serde(with = "humantime_serde")]
    pub trash_retention: Duration,
    /// How often the janitor expires sessions, purges trash and collects chunks.
    #[serde(with = "humantime_serde")]
    pub janitor_interval: Duration,
    /// Log filter (tracing's EnvFilter syntax), e.g. "info" or "strata_node=debug".
    pub log: String,
    /// The gRPC URL other nodes use to reach this one (default: http://<listen>).
    pub advertise: String,
    /// gRPC URL of a cluster member to join at first start (empty: do not join).
    pub join: String,
    /// The secret members present to each other. Created by the node that initializes the
    /// cluster (saved in <data_dir>/cluster.secret); a joining node must be given it.
    pub cluster_secret: String,
    /// Raft takes a snapshot (and compacts its log) after this many entries.
    pub raft_snapshot_logs: u64,
    /// This node's failure zone, used when it puts itself in the layout (the node that
    /// creates a cluster, and every node of `dev`); otherwise `strata layout assign` sets it.
    pub zone: String,
    /// This node's capacity weight in bytes, used like `zone` (0: the size of the disk that
    /// holds the data directory).
    pub capacity: u64,
    /// Copies of each chunk (1..=5) and copies an upload waits for (1..=replication), set when
    /// this node creates a cluster; change them later with `strata layout replication`.
    pub replication: u8,
    pub write_quorum: u8,
    /// Bytes of chunks fetched from peers kept in memory for repeated reads (0: no cache).
    pub read_cache_bytes: u64,
    /// Rebalancing copies at most this many bytes per second from this node.
    pub rebalance_rate_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "node-1".into(),
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_chunk_bytes: 16 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            session_idle_timeout: Duration::from_secs(24 * 3600),
            trash_retention: Duration::from_secs(7 * 24 * 3600),
            janitor_interval: Duration::from_secs(30),
            log: "info".into(),
            advertise: String::new(),
            join: String::new(),
            cluster_secret: String::new(),
            raft_snapshot_logs: 5000,
            zone: "default".into(),
            capacity: 0,
            replication: strata_cluster::layout::DEFAULT_REPLICATION,
            write_quorum: strata_cluster::layout::DEFAULT_WRITE_QUORUM,
            read_cache_bytes: 64 * 1024 * 1024,
            rebalance_rate_bytes: 200 * 1024 * 1024,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

pub const MAX_CHUNK_LIMIT: u32 = 64 * 1024 * 1024;

impl Config {
    /// Builds the configuration from its layers and checks it.
    pub fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig
            .merge(Env::prefixed("STRATA_").only(KEYS))
            .merge(Serialized::defaults(overrides));
        let config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.max_chunk_bytes < 1024 || self.max_chunk_bytes > MAX_CHUNK_LIMIT {
            anyhow::bail!("max_chunk_bytes must be between 1024 and {MAX_CHUNK_LIMIT}");
        }
        if self.max_inflight_bytes < u64::from(self.max_chunk_bytes) {
            anyhow::bail!("max_inflight_bytes must be at least max_chunk_bytes");
        }
        if self.raft_snapshot_logs < 10 {
            anyhow::bail!("raft_snapshot_logs must be at least 10");
        }
        if !(1..=strata_cluster::layout::MAX_REPLICATION).contains(&self.replication) {
            anyhow::bail!(
                "replication must be between 1 and {}",
                strata_cluster::layout::MAX_REPLICATION
            );
        }
        if self.write_quorum == 0 || self.write_quorum > self.replication {
            anyhow::bail!("write_quorum must be between 1 and replication");
        }
        if self.rebalance_rate_bytes == 0 {
            anyhow::bail!("rebalance_rate_bytes must be greater than zero");
        }
        if self.janitor_interval.is_zero() {
            anyhow::bail!("janitor_interval must be greater than zero");
        }
        Ok(())
    }

    /// The default configuration as TOML, for `strata-node config`.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("strata.toml");
        std::fs::write(
            &file,
            "node_id = \"from-file\"\nmax_chunk_bytes = 4096\ntrash_retention = \"2h\"\n",
        )
        .expect("write config");
        let over = Overrides {
            node_id: Some("from-flag".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &over).expect("load");
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(c.max_chunk_bytes, 4096);
        assert_eq!(c.trash_retention, Duration::from_secs(7200));
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("strata.toml");
        std::fs::write(&file, "max_chunk_byte = 4096\n").expect("write");
        assert!(Config::load(Some(&file), &Overrides::default()).is_err());
        std::fs::write(&file, "max_chunk_bytes = 10\n").expect("write");
        assert!(Config::load(Some(&file), &Overrides::default()).is_err());
        assert!(
            Config::load(
                Some(&dir.path().join("missing.toml")),
                &Overrides::default()
            )
            .is_err()
        );
    }

    #[test]
    fn default_toml_round_trips() {
        let parsed: Config = toml::from_str(&Config::default_toml()).expect("parse");
        assert_eq!(parsed, Config::default());
    }
}
