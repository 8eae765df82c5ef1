//! The sidecar's configuration: one typed struct, read from a TOML file, then
//! overridden by `ANCHISES_<SECTION>__<KEY>` environment variables, then validated.
//! Defaults run a single local node on 127.0.0.1 with everything under the data dir.
//! This module only reads and checks configuration; it never touches Cassandra.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The port the HTTP API listens on unless configured otherwise.
pub const DEFAULT_API_PORT: u16 = 7878;
/// The Cassandra version fetched by `ops-scripts/fetch-cassandra.sh` by default.
pub const DEFAULT_CASSANDRA_VERSION: &str = "5.0.9";
const JOLOKIA_AGENT_VERSION: &str = "2.6.0";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub node: NodeConfig,
    pub cassandra: CassandraConfig,
    pub supervisor: SupervisorConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub backup: BackupConfig,
}

/// Cluster mode: with a coordinator, the node's slot, tokens and seeds come from
/// the registry there, not from `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The coordinator store (a directory shared by the cluster's sidecars).
    pub coordinator: Option<PathBuf>,
    /// This node's identity in the registry; default `<dc>-<rack>-<address>`.
    pub node_id: Option<String>,
    /// A slot whose heartbeat is older than this, and whose node is gone, may be
    /// taken over by a new node.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            coordinator: None,
            node_id: None,
            stale_after: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP API. Loopback by default: the API can stop the node.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub cluster_name: String,
    pub dc: String,
    pub rack: String,
    /// Cassandra's `listen_address` and `rpc_address`.
    pub address: IpAddr,
    /// Everything of this node lives below: `data/`, `commitlog/`, `conf/`, `logs/`…
    pub data_dir: PathBuf,
    /// Seed addresses (`ip` or `ip:port`); empty means this node seeds itself.
    pub seeds: Vec<String>,
    /// Comma-separated tokens for `initial_token`; their count must equal `num_tokens`.
    pub initial_token: Option<String>,
    pub num_tokens: u32,
    /// `allocate_tokens_for_local_replication_factor` when Cassandra picks vnode tokens.
    pub allocate_tokens_for_rf: Option<u32>,
    /// `auto_bootstrap`; unset leaves Cassandra's default (true).
    pub auto_bootstrap: Option<bool>,
    /// Started with `-Dcassandra.replace_address_first_boot` to take a dead node's place.
    pub replace_address: Option<IpAddr>,
    pub storage_port: u16,
    pub native_port: u16,
    /// JMX binds 127.0.0.1 only, so nodes sharing a machine need distinct ports.
    pub jmx_port: u16,
    /// The Jolokia agent binds 127.0.0.1 on this port.
    pub jolokia_port: u16,
    pub heap: ByteSize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraConfig {
    pub version: String,
    /// A directory with `lib/*.jar` (as `fetch-cassandra.sh` lays it out); by default
    /// `$ANCHISES_CACHE/cassandra/<version>`.
    pub home: Option<PathBuf>,
    /// A JDK 17; by default found under `/usr/lib/jvm` or from `java` on the PATH.
    pub java_home: Option<PathBuf>,
    /// The Jolokia JVM agent jar; by default the one `fetch-cassandra.sh` fetched.
    pub jolokia_agent: Option<PathBuf>,
    /// Extra JVM options, appended last.
    pub jvm_opts: Vec<String>,
    /// cassandra.yaml keys merged over the generated file, key by key.
    pub yaml: toml::Table,
    /// Shorter gossip settle and ring delay: for clusters on one machine (tests, dev).
    pub fast_start: bool,
    /// Class data sharing: the JVM maps the classes it loaded at an earlier
    /// start from an archive instead of loading them from the jars again.
    pub class_sharing: bool,
    /// Where the class archives go, one per JDK and set of jars, shared by
    /// the nodes of a machine; by default `$ANCHISES_CACHE/cds`.
    pub class_archive_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How long a drain plus a clean JVM exit may take before SIGKILL.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Start Cassandra when the sidecar starts.
    pub auto_start: bool,
    /// Unplanned restarts allowed in any hour before the sidecar gives up.
    pub max_restarts_per_hour: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

/// Backups: where they go, when they run, how long they are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// `filesystem` (the default) or `s3`.
    pub store: StoreKind,
    /// The filesystem store's root. Default: `backups/` beside the cluster
    /// coordinator directory when there is one (so a local cluster's nodes
    /// share it), otherwise `<node.data_dir>/backup-store`.
    pub path: Option<PathBuf>,
    pub s3: S3Settings,
    /// When snapshot backups run: a cron expression with seconds
    /// (`sec min hour day-of-month month day-of-week`), or `off`.
    pub schedule: String,
    /// Upload each flushed SSTable within seconds; also sets Cassandra's
    /// `incremental_backups`.
    pub incremental: bool,
    /// The incremental watcher's safety-net rescan of `backups/` directories.
    #[serde(with = "humantime_serde")]
    pub rescan: Duration,
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Upload rate limit in bytes per second; 0 means unlimited.
    pub rate_limit: ByteSize,
    pub zstd_level: i32,
    /// Compress `Data.db` even when Cassandra compressed it already.
    pub compress_compressed_data: bool,
    /// Retention: keep the newest N backups (any rule set keeps a backup).
    pub keep_last: Option<u32>,
    /// Retention: keep backups younger than N days; 0 turns the age rule off.
    pub keep_days: Option<u32>,
    /// A restore is refused (a blocker in its plan) when staging its files
    /// would leave less than this free on the data directory's filesystem.
    pub restore_min_free: ByteSize,
    /// The slot backups are filed under when the node has no registry slot
    /// (a node without `cluster.coordinator`).
    pub slot: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Filesystem,
            path: None,
            s3: S3Settings::default(),
            schedule: "0 0 3 * * *".into(),
            incremental: true,
            rescan: Duration::from_secs(60),
            concurrency: 4,
            rate_limit: ByteSize::b(0),
            zstd_level: 3,
            compress_compressed_data: false,
            keep_last: None,
            keep_days: Some(7),
            restore_min_free: ByteSize::gib(1),
            slot: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Filesystem,
    S3,
}

/// The S3 store (any S3-compatible endpoint). Credentials come from the
/// standard AWS chain (environment, profile, instance role) unless set here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:9000`; implies path-style addressing.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Multipart part size (at least 5 MiB).
    pub part_size: ByteSize,
    /// Files up to this size that are stored raw go up as one streaming
    /// PutObject (at most 5 GiB); larger ones as multipart uploads whose
    /// parts stream their ranges of the file.
    pub multipart_threshold: ByteSize,
    /// Parts of one upload in flight.
    pub upload_concurrency: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            part_size: ByteSize::mib(8),
            multipart_threshold: ByteSize::mib(512),
            upload_concurrency: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `anchises=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// The cache of fetched jars and tools, shared with the ops scripts.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ANCHISES_CACHE") {
        return PathBuf::from(dir);
    }
    home_dir().join(".cache").join("anchises")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            cluster_name: "anchises".into(),
            dc: "dc1".into(),
            rack: "rack1".into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: home_dir().join(".local/share/anchises/node"),
            seeds: Vec::new(),
            initial_token: None,
            num_tokens: 16,
            allocate_tokens_for_rf: Some(3),
            auto_bootstrap: None,
            replace_address: None,
            storage_port: 7000,
            native_port: 9042,
            jmx_port: 7199,
            jolokia_port: 8778,
            heap: ByteSize::mib(512),
        }
    }
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            version: DEFAULT_CASSANDRA_VERSION.into(),
            home: None,
            java_home: None,
            jolokia_agent: None,
            jvm_opts: Vec::new(),
            yaml: toml::Table::new(),
            fast_start: false,
            class_sharing: true,
            class_archive_dir: None,
            start_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            auto_start: true,
            max_restarts_per_hour: 6,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Plain,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the TOML file (if any), then `ANCHISES_<SECTION>__<KEY>` variables;
    /// then [`Config::validate`].
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("ANCHISES_"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables with a section separator are configuration: ANCHISES_CACHE,
        // ANCHISES_URL and ANCHISES_CONFIG mean other things.
        let env = env.filter(|key| key.as_str().contains("__")).split("__");
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that would only fail later, inside Cassandra or at 3 a.m.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        let n = &self.node;
        for (what, value) in [
            ("node.cluster_name", &n.cluster_name),
            ("node.dc", &n.dc),
            ("node.rack", &n.rack),
        ] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!(
                    "{what} must be non-empty letters, digits, '-' or '_', got {value:?}"
                ));
            }
        }
        if !n.data_dir.is_absolute() {
            return bad(format!(
                "node.data_dir must be an absolute path, got {}",
                n.data_dir.display()
            ));
        }
        if !(1..=256).contains(&n.num_tokens) {
            return bad(format!(
                "node.num_tokens must be 1 to 256, got {}",
                n.num_tokens
            ));
        }
        if let Some(tokens) = &n.initial_token {
            let parsed: Vec<&str> = tokens.split(',').map(str::trim).collect();
            for t in &parsed {
                match t.parse::<i128>() {
                    Ok(v) if v >= i64::MIN as i128 && v <= i64::MAX as i128 => {}
                    _ => {
                        return bad(format!(
                            "node.initial_token: {t:?} is not a Murmur3 token (-2^63 to 2^63-1)"
                        ))
                    }
                }
            }
            if parsed.len() != n.num_tokens as usize {
                return bad(format!(
                    "node.initial_token has {} token(s) but node.num_tokens is {}",
                    parsed.len(),
                    n.num_tokens
                ));
            }
        }
        for seed in &n.seeds {
            if parse_seed(seed, n.storage_port).is_none() {
                return bad(format!(
                    "node.seeds: {seed:?} is not an IP address or ip:port"
                ));
            }
        }
        let ports = [
            ("node.storage_port", n.storage_port),
            ("node.native_port", n.native_port),
            ("node.jmx_port", n.jmx_port),
            ("node.jolokia_port", n.jolokia_port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            if *pa == 0 {
                return bad(format!("{a} must not be 0"));
            }
            for (b, pb) in &ports[i + 1..] {
                if pa == pb {
                    return bad(format!("{a} and {b} are both {pa}"));
                }
            }
        }
        if n.heap < ByteSize::mib(256) {
            return bad(format!("node.heap must be at least 256MiB, got {}", n.heap));
        }
        let c = &self.cassandra;
        if !c
            .version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            || c.version.split('.').count() != 3
        {
            return bad(format!(
                "cassandra.version must look like 5.0.9, got {:?}",
                c.version
            ));
        }
        if c.start_timeout.is_zero() || c.stop_timeout.is_zero() {
            return bad("cassandra.start_timeout and stop_timeout must be positive".into());
        }
        let s = &self.supervisor;
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            return bad(format!(
                "supervisor.backoff_initial ({}) must be positive and at most backoff_max ({})",
                humantime::format_duration(s.backoff_initial),
                humantime::format_duration(s.backoff_max)
            ));
        }
        let cl = &self.cluster;
        if cl.heartbeat.is_zero() || cl.stale_after <= cl.heartbeat * 2 {
            return bad(format!(
                "cluster.stale_after ({}) must exceed two heartbeats ({} each)",
                humantime::format_duration(cl.stale_after),
                humantime::format_duration(cl.heartbeat)
            ));
        }
        if cl.coordinator.as_ref().is_some_and(|c| !c.is_absolute()) {
            return bad("cluster.coordinator must be an absolute path".into());
        }
        self.validate_backup().map_err(ConfigError::Invalid)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(format!(
                "log.level is not a valid filter: {:?}",
                self.log.level
            ));
        }
        Ok(())
    }

    fn validate_backup(&self) -> Result<(), String> {
        let b = &self.backup;
        if b.schedule != "off" {
            cron::Schedule::from_str(&b.schedule).map_err(|e| {
                format!(
                    "backup.schedule {:?} is not a cron expression with seconds \
                     (e.g. \"0 0 3 * * *\" for 03:00 daily) or \"off\": {e}",
                    b.schedule
                )
            })?;
        }
        if b.concurrency == 0 {
            return Err("backup.concurrency must be at least 1".into());
        }
        if !(1..=19).contains(&b.zstd_level) {
            return Err(format!(
                "backup.zstd_level must be 1 to 19, got {}",
                b.zstd_level
            ));
        }
        if b.rescan.is_zero() {
            return Err("backup.rescan must be positive".into());
        }
        if b.keep_last == Some(0) {
            return Err(
                "backup.keep_last must be at least 1 (unset it to keep by age only)".into(),
            );
        }
        if b.path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err("backup.path must be an absolute path".into());
        }
        if b.store == StoreKind::S3 {
            self.s3_config()?.validate()?;
        }
        Ok(())
    }

    /// The backup store's configuration.
    pub fn backup_store(&self) -> Result<anchises_backup::StoreConfig, String> {
        Ok(match self.backup.store {
            StoreKind::Filesystem => anchises_backup::StoreConfig::Filesystem {
                root: self.backup.path.clone().unwrap_or_else(|| {
                    // Beside the coordinator, so a local cluster's nodes share
                    // it, but outside it: backups outlive the cluster.
                    match self.cluster.coordinator.as_deref().and_then(Path::parent) {
                        Some(parent) => parent.join("backups"),
                        None => self.node.data_dir.join("backup-store"),
                    }
                }),
            },
            StoreKind::S3 => anchises_backup::StoreConfig::S3(self.s3_config()?),
        })
    }

    fn s3_config(&self) -> Result<anchises_backup::store::S3Config, String> {
        let s = &self.backup.s3;
        if s.bucket.is_empty() {
            return Err("backup.s3.bucket must be set when backup.store is s3".into());
        }
        let credentials = match (&s.access_key_id, &s.secret_access_key) {
            (Some(id), Some(secret)) => Some(anchises_backup::store::S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: None,
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "backup.s3.access_key_id and secret_access_key must be set together".into(),
                )
            }
        };
        Ok(anchises_backup::store::S3Config {
            prefix: s.prefix.clone(),
            region: s.region.clone(),
            endpoint: s.endpoint.clone(),
            credentials,
            part_size: s.part_size.as_u64(),
            multipart_threshold: s.multipart_threshold.as_u64(),
            upload_concurrency: s.upload_concurrency,
            ..anchises_backup::store::S3Config::new(s.bucket.clone())
        })
    }

    pub fn cassandra_home(&self) -> PathBuf {
        self.cassandra
            .home
            .clone()
            .unwrap_or_else(|| cache_dir().join("cassandra").join(&self.cassandra.version))
    }

    pub fn class_archive_dir(&self) -> PathBuf {
        self.cassandra
            .class_archive_dir
            .clone()
            .unwrap_or_else(|| cache_dir().join("cds"))
    }

    pub fn jolokia_agent(&self) -> PathBuf {
        self.cassandra.jolokia_agent.clone().unwrap_or_else(|| {
            cache_dir().join("jolokia").join(format!(
                "jolokia-agent-jvm-{JOLOKIA_AGENT_VERSION}-javaagent.jar"
            ))
        })
    }

    /// Seeds as `ip:port` strings for the seed provider.
    pub fn seed_list(&self) -> Vec<String> {
        let n = &self.node;
        if n.seeds.is_empty() {
            return vec![SocketAddr::new(n.address, n.storage_port).to_string()];
        }
        n.seeds
            .iter()
            .filter_map(|s| parse_seed(s, n.storage_port))
            .map(|a| a.to_string())
            .collect()
    }
}

fn parse_seed(seed: &str, default_port: u16) -> Option<SocketAddr> {
    seed.parse::<SocketAddr>().ok().or_else(|| {
        seed.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's own error type is what Jail's closure must return.
    #[allow(clippy::result_large_err)]
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        figment::Jail::expect_with(|jail| {
            jail.create_file("anchises.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            let result = Config::load(Some(Path::new("anchises.toml")));
            // Jail wants a figment error type; hand the outcome out through a side channel.
            RESULT.with(|r| *r.borrow_mut() = Some(result));
            Ok(())
        });
        RESULT.with(|r| r.borrow_mut().take().unwrap())
    }

    thread_local! {
        static RESULT: std::cell::RefCell<Option<Result<Config, ConfigError>>> = const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(c.seed_list(), ["127.0.0.1:7000"]);
    }

    #[test]
    fn file_then_environment_overrides() {
        let c = load(
            "[node]\ndc = \"east\"\nheap = \"1GiB\"\n[cassandra]\nstart_timeout = \"2m\"\n[cassandra.yaml]\nconcurrent_reads = 16\n",
            &[("ANCHISES_NODE__RACK", "r2"), ("ANCHISES_URL", "http://x"), ("ANCHISES_API__LISTEN", "127.0.0.5:9000")],
        )
        .unwrap();
        assert_eq!(c.node.dc, "east");
        assert_eq!(c.node.rack, "r2");
        assert_eq!(c.node.heap, ByteSize::gib(1));
        assert_eq!(c.cassandra.start_timeout, Duration::from_secs(120));
        assert_eq!(c.api.listen.to_string(), "127.0.0.5:9000");
        assert_eq!(c.cassandra.yaml["concurrent_reads"].as_integer(), Some(16));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_with_the_key_named() {
        let e = load("[node]\nrackk = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rackk"), "{e}");
        let e = load("[node]\nnum_tokens = 2\ninitial_token = \"1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("initial_token has 1 token(s)"), "{e}");
        let e = load(
            "[node]\ninitial_token = \"99999999999999999999\"\nnum_tokens = 1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a Murmur3 token"), "{e}");
        let e = load("[node]\njmx_port = 7000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.storage_port and node.jmx_port"), "{e}");
        let e = load("[node]\ndc = \"a b\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("node.dc"), "{e}");
        let e = load("[supervisor]\nbackoff_initial = \"2m\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff_initial"), "{e}");
        let e = load("[node]\nseeds = [\"nope\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.seeds"), "{e}");
    }

    #[test]
    fn backup_settings_are_checked_at_load() {
        let c = Config::default();
        assert_eq!(c.backup.schedule, "0 0 3 * * *");
        assert!(c.backup.incremental);
        match c.backup_store().unwrap() {
            anchises_backup::StoreConfig::Filesystem { root } => {
                assert_eq!(root, c.node.data_dir.join("backup-store"))
            }
            other => panic!("{other:?}"),
        }
        let e = load("[backup]\nschedule = \"every day\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup.schedule") && e.contains("cron"), "{e}");
        let e = load("[backup]\nstore = \"s3\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup.s3.bucket"), "{e}");
        let e = load("[backup]\nkeep_last = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep_last"), "{e}");
        let c = load(
            "[backup]\nstore = \"s3\"\nschedule = \"off\"\n[backup.s3]\nendpoint = \"http://127.0.0.1:9000\"\n",
            &[("ANCHISES_BACKUP__S3__BUCKET", "snaps")],
        )
        .unwrap();
        match c.backup_store().unwrap() {
            anchises_backup::StoreConfig::S3(s3) => {
                assert_eq!(s3.bucket, "snaps");
                assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/anchises.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
