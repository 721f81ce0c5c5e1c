//! Node configuration: defaults, then a TOML file, then STRATA_* environment variables, then
//! command-line flags (each layer overrides the one before). Every key has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
pub use strata_cold::{BackendConfig, BackendKind};

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
    "join_token",
    "ca_hash",
    "insecure_plaintext",
    "raft_snapshot_logs",
    "zone",
    "capacity",
    "replication",
    "write_quorum",
    "read_cache_bytes",
    "rebalance_rate_bytes",
    "cold_dir",
    "gc_grace",
    "stream_idle_timeout",
    "max_streams",
    "max_streams_per_tenant",
    "min_free_bytes",
    "metrics_tenants",
];

/// Most tenants `metrics_tenants` may name (each adds a few series to every scrape).
pub const MAX_METRICS_TENANTS: usize = 100;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    /// Memory for chunk bytes held at once: uploads being verified and written, download
    /// read-ahead, chunks moving between nodes (at least twice max_chunk_bytes plus 1 MiB).
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
    /// The gRPC URL other nodes use to reach this one (default: https://<listen>).
    pub advertise: String,
    /// gRPC URL of a cluster member to join at first start (empty: do not join).
    pub join: String,
    /// Join token from `strata node token create` (used once, at the first start, or to get a
    /// new certificate after this node's expired).
    pub join_token: String,
    /// The cluster CA's hash (`sha256:...`, printed with the join token): the joining node
    /// checks the member it contacts against it before sending anything.
    pub ca_hash: String,
    /// Also accept plaintext (non-TLS) API connections. Off by default; `strata-node dev` on a
    /// loopback address accepts them anyway. Internal traffic is always mutual TLS.
    pub insecure_plaintext: bool,
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
    /// Directory of the embedded `local` cold backend (empty: <data_dir>/cold). Every node of
    /// a cluster must see the same directory (one machine, or a shared filesystem).
    pub cold_dir: PathBuf,
    /// A chunk file younger than this is never deleted by garbage collection (its reference
    /// may still be on its way through Raft); unreferenced files are collected after it.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// An upload or download stream on which nothing moves for this long is closed.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Upload and download streams open at once on this node, and per tenant.
    pub max_streams: usize,
    pub max_streams_per_tenant: usize,
    /// Free bytes kept on the data directory's filesystem: chunk writes stop above it, metadata
    /// writes (except deletes) at a quarter of it, so the metadata store never meets a full
    /// disk (0: 2% of the filesystem, at least 8 MiB and at most 2 GiB).
    pub min_free_bytes: u64,
    /// Tenants whose usage and plan refusals get their own metric series (by name); the rest
    /// are counted together as `other`, so the series stay bounded.
    pub metrics_tenants: Vec<String>,
    /// Cold tiering: how the leader moves data and which backends exist.
    pub tier: TierConfig,
    /// Scrub and anti-entropy check of this node's chunks.
    pub verify: VerifyConfig,
    /// Certificates.
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain and key (PEM files) shown to API clients, e.g. one from a public CA
    /// (empty: the node certificate from the cluster CA). Members always use node certificates.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Extra host names or addresses for this node's certificate (besides the advertised host
    /// and the listen address).
    pub names: Vec<String>,
    /// Lifetime of node certificates signed by this node (when it is the signer); each node
    /// renews its own after two thirds of it.
    #[serde(with = "humantime_serde")]
    pub cert_lifetime: Duration,
    /// A backup of the cluster CA key to take over signing from a lost signer (copied into
    /// <data_dir>/tls/ca.key at start; empty: none).
    pub ca_key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            names: Vec::new(),
            cert_lifetime: Duration::from_secs(7 * 24 * 3600),
            ca_key: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// The scrub re-hashes at most this many bytes of chunk files per second (`strata worker
    /// set scrub-rate` changes it while the node runs).
    pub scrub_rate: u64,
    /// A new scrub pass starts this long after the last one ended (`strata scrub start` runs
    /// one now).
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
    /// How often every chunk this node is a home of is checked to be here (missing ones are
    /// fetched from other nodes at `rebalance_rate_bytes`).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A storage node that has not answered the leader for this long is marked down: it
    /// leaves placement and its chunks get copies on other nodes (as Ceph's
    /// mon_osd_down_out_interval). It is made active again as soon as it answers.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// Backend requests per day the leader may spend checking cold archives (about four per
    /// archive: HEAD, footer, index, one sampled chunk; HEAD only for archived classes).
    pub cold_requests_per_day: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            scrub_rate: 50 * 1000 * 1000,
            scrub_interval: Duration::from_secs(30 * 24 * 3600),
            check_interval: Duration::from_secs(3600),
            down_after: Duration::from_secs(600),
            cold_requests_per_day: 10_000,
        }
    }
}

/// Debug output never shows the join token (or, through BackendConfig, S3 keys).
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.clone();
        if !shown.join_token.is_empty() {
            shown.join_token = "<redacted>".into();
        }
        f.write_str(&toml::to_string(&shown).unwrap_or_else(|e| format!("<config: {e}>")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// How often the leader moves versions its policies select, advances restores and deletes
    /// dead archives (each node also records reads this often).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Chunks are packed into archive objects of about this many bytes (0: one object per
    /// chunk). Fewer, larger objects mean fewer requests and restores.
    pub pack_bytes: u64,
    /// Archives uploaded at once.
    pub parallel: usize,
    /// Tiering reads and uploads at most this many bytes per second (0: no limit).
    pub rate_bytes: u64,
    /// How long the embedded `local` backend takes to "restore" an archived object.
    #[serde(with = "humantime_serde")]
    pub local_restore_delay: Duration,
    /// An archive in a backend that no metadata records (left by a leader that crashed or
    /// lost leadership mid-pass) is deleted once it is this old.
    #[serde(with = "humantime_serde")]
    pub orphan_archive_grace: Duration,
    /// Cold backends besides the embedded `local` one.
    pub backends: Vec<BackendConfig>,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            interval: Duration::from_secs(60),
            pack_bytes: 32 * 1024 * 1024,
            parallel: 4,
            rate_bytes: 0,
            local_restore_delay: Duration::from_secs(30),
            orphan_archive_grace: Duration::from_secs(24 * 3600),
            backends: Vec::new(),
        }
    }
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
            join_token: String::new(),
            ca_hash: String::new(),
            insecure_plaintext: false,
            raft_snapshot_logs: 5000,
            zone: "default".into(),
            capacity: 0,
            replication: strata_cluster::layout::DEFAULT_REPLICATION,
            write_quorum: strata_cluster::layout::DEFAULT_WRITE_QUORUM,
            read_cache_bytes: 64 * 1024 * 1024,
            rebalance_rate_bytes: 200 * 1024 * 1024,
            cold_dir: PathBuf::new(),
            gc_grace: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(60),
            max_streams: 256,
            max_streams_per_tenant: 64,
            min_free_bytes: 0,
            metrics_tenants: Vec::new(),
            tier: TierConfig::default(),
            verify: VerifyConfig::default(),
            tls: TlsConfig::default(),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_hash: Option<String>,
}

/// The largest chunk any configuration may allow (and the peer protocol carries).
pub const MAX_CHUNK_LIMIT: u32 = 64 * 1024 * 1024;

/// Most chunks one upload may hold (with 16 MiB chunks, a 1 TiB file): an upload's manifest and
/// its version's chunk list each travel in one Raft command, which must stay far below the
/// Raft message limit.
pub const MAX_UPLOAD_CHUNKS: usize = 65_536;

/// Free bytes kept on a filesystem of `total` bytes: `min_free_bytes`, or when it is 0, 2% of
/// the filesystem, at least 8 MiB and at most 2 GiB.
pub fn reserve_for(min_free_bytes: u64, total: u64) -> u64 {
    if min_free_bytes > 0 {
        return min_free_bytes;
    }
    (total / 50).clamp(8 << 20, 2 << 30)
}

/// Room in a gRPC message besides the chunk bytes.
pub const MESSAGE_OVERHEAD: u64 = 1 << 20;

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
        if self.tls.cert_lifetime < std::time::Duration::from_secs(10)
            || self.tls.cert_lifetime > std::time::Duration::from_secs(366 * 24 * 3600)
        {
            anyhow::bail!("tls.cert_lifetime must be between 10s and 366 days");
        }
        if self.tls.cert.as_os_str().is_empty() != self.tls.key.as_os_str().is_empty() {
            anyhow::bail!("tls.cert and tls.key go together: set both or neither");
        }
        if self.max_chunk_bytes < 1024 || self.max_chunk_bytes > MAX_CHUNK_LIMIT {
            anyhow::bail!("max_chunk_bytes must be between 1024 and {MAX_CHUNK_LIMIT}");
        }
        let largest = self.largest_message();
        if self.max_inflight_bytes < 2 * largest {
            anyhow::bail!(
                "max_inflight_bytes ({}) must be at least twice max_chunk_bytes plus 1 MiB ({}): uploads and chunks moving between nodes each need room for one chunk",
                self.max_inflight_bytes,
                2 * largest
            );
        }
        if self.max_streams == 0 || self.max_streams_per_tenant == 0 {
            anyhow::bail!("max_streams and max_streams_per_tenant must be greater than zero");
        }
        if self.stream_idle_timeout.is_zero() {
            anyhow::bail!("stream_idle_timeout must be greater than zero");
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
        if self.verify.scrub_rate == 0
            || self.verify.scrub_interval.is_zero()
            || self.verify.check_interval.is_zero()
            || self.verify.down_after.is_zero()
        {
            anyhow::bail!(
                "verify.scrub_rate, verify.scrub_interval, verify.check_interval and verify.down_after must be greater than zero"
            );
        }
        if self.janitor_interval.is_zero() {
            anyhow::bail!("janitor_interval must be greater than zero");
        }
        if self.metrics_tenants.len() > MAX_METRICS_TENANTS {
            anyhow::bail!(
                "metrics_tenants names {} tenants; at most {MAX_METRICS_TENANTS} (the others are counted as \"other\")",
                self.metrics_tenants.len()
            );
        }
        self.check_tier()
    }

    fn check_tier(&self) -> anyhow::Result<()> {
        let t = &self.tier;
        if t.interval.is_zero() || t.parallel == 0 {
            anyhow::bail!("tier.interval and tier.parallel must be greater than zero");
        }
        let mut names = std::collections::BTreeSet::new();
        for b in self.tier_backends() {
            if b.name.is_empty()
                || b.name.len() > 64
                || !b
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                anyhow::bail!(
                    "tier backend name {:?} must be 1-64 letters, digits, '-' or '_'",
                    b.name
                );
            }
            if !names.insert(b.name.clone()) {
                anyhow::bail!(
                    "tier backend {:?} is configured twice (\"local\" is built in)",
                    b.name
                );
            }
            let class = strata_cluster::tier::StorageClass::parse(&b.storage_class);
            if !b.storage_class.is_empty() && class.is_none() {
                anyhow::bail!(
                    "tier backend {}: storage_class {:?} is not STANDARD, GLACIER_IR, GLACIER or DEEP_ARCHIVE",
                    b.name,
                    b.storage_class
                );
            }
            match b.kind {
                BackendKind::Local => {}
                BackendKind::S3 | BackendKind::B2 if b.bucket.is_empty() => {
                    anyhow::bail!("tier backend {}: bucket is required", b.name)
                }
                BackendKind::B2
                    if class.is_some_and(|c| c != strata_cluster::tier::StorageClass::Standard) =>
                {
                    anyhow::bail!("tier backend {}: B2 has only the STANDARD class", b.name)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every cold backend: the embedded `local` one, then `[[tier.backends]]`.
    pub fn tier_backends(&self) -> Vec<BackendConfig> {
        let path = if self.cold_dir.as_os_str().is_empty() {
            self.data_dir.join("cold")
        } else {
            self.cold_dir.clone()
        };
        let local = BackendConfig::local(path, self.tier.local_restore_delay);
        std::iter::once(local)
            .chain(self.tier.backends.iter().cloned())
            .collect()
    }

    /// The largest gRPC message accepted: one chunk plus room for the rest of the message.
    pub fn largest_message(&self) -> u64 {
        u64::from(self.max_chunk_bytes) + MESSAGE_OVERHEAD
    }

    /// Free bytes kept on a filesystem of `total` bytes (see `min_free_bytes`).
    pub fn reserve_for(&self, total: u64) -> u64 {
        reserve_for(self.min_free_bytes, total)
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
    fn tier_backends_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("strata.toml");
        let ok = "[tier]\npack_bytes = 1024\n[[tier.backends]]\nname = \"glacier\"\nkind = \"s3\"\nbucket = \"cold\"\nstorage_class = \"deep_archive\"\n";
        std::fs::write(&file, ok).expect("write");
        let c = Config::load(Some(&file), &Overrides::default()).expect("load");
        let names: Vec<_> = c.tier_backends().into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["local", "glacier"]);
        for bad in [
            "[[tier.backends]]\nname = \"local\"\nkind = \"local\"\n",
            "[[tier.backends]]\nname = \"g\"\nkind = \"s3\"\n",
            "[[tier.backends]]\nname = \"g\"\nkind = \"s3\"\nbucket = \"b\"\nstorage_class = \"ONEZONE\"\n",
            "[[tier.backends]]\nname = \"b\"\nkind = \"b2\"\nbucket = \"b\"\nstorage_class = \"GLACIER\"\n",
            "[[tier.backends]]\nname = \"b 2\"\nkind = \"b2\"\nbucket = \"b\"\n",
        ] {
            std::fs::write(&file, bad).expect("write");
            assert!(
                Config::load(Some(&file), &Overrides::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_budget_must_hold_two_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("strata.toml");
        // Equal values used to hang every upload of a largest chunk.
        std::fs::write(
            &file,
            "max_chunk_bytes = 16777216\nmax_inflight_bytes = 16777216\n",
        )
        .expect("write");
        let e = Config::load(Some(&file), &Overrides::default()).expect_err("refused");
        assert!(e.to_string().contains("twice max_chunk_bytes"), "{e}");
        std::fs::write(
            &file,
            "max_chunk_bytes = 16777216\nmax_inflight_bytes = 35651584\n",
        )
        .expect("write");
        Config::load(Some(&file), &Overrides::default()).expect("two chunks and overhead fit");
    }

    #[test]
    fn debug_output_hides_the_join_token() {
        let c = Config {
            join_token: "sjt_very_secret".into(),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("sjt_very_secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn deploy_example_is_the_defaults() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/strata.toml");
        let c = Config::load(Some(&file), &Overrides::default()).expect("deploy/strata.toml");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn default_toml_round_trips() {
        let parsed: Config = toml::from_str(&Config::default_toml()).expect("parse");
        assert_eq!(parsed, Config::default());
    }
}
