//! The node's backups: snapshot backups started by the API or the schedule,
//! incremental uploads, cluster-wide backups coordinated through the store,
//! retention, verification and deletion. Cassandra is driven here (flush,
//! snapshot, schema); moving files is the `anchises-backup` crate's job.

pub mod cluster;
pub mod schedule;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anchises_backup::files::{
    snapshot_files, snapshot_tags, Progress, ProgressView, StoreSettings,
};
use anchises_backup::manifest::{BackupId, NodeBackupState, NodeManifest, SlotRef, Totals};
use anchises_backup::node::{NodeInfo, SlotBackups};
use anchises_backup::retention::{verify_files, PurgePlan, Retention, VerifyReport};
use anchises_backup::upload::Throttle;
use anchises_backup::{BackupError, ObjectStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::cassandra::jolokia::JolokiaError;
use crate::config::Config;
use crate::jobs::{Conflict, Job, Jobs};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};

/// The job group of work that writes to this slot's backups (and, later,
/// restores): one at a time.
pub const GROUP: &str = "backup";
const STORAGE_SERVICE: &str = "org.apache.cassandra.db:type=StorageService";

/// `POST /v1/backups`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    /// `node` (default): this node. `cluster`: every node of the cluster,
    /// under one backup id.
    #[serde(default)]
    pub scope: Scope,
    /// Only these keyspaces (all, system keyspaces included, when empty).
    #[serde(default)]
    pub keyspaces: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Node,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Running,
    Done,
    Failed,
    /// A cluster backup some of whose nodes failed.
    Incomplete,
}

/// One line of `GET /v1/backups`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupSummary {
    pub id: String,
    pub scope: Scope,
    pub state: BackupState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<OffsetDateTime>,
    pub duration_secs: Option<f64>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub reused_files: u64,
    pub reused_bytes: u64,
    pub error: Option<String>,
}

impl BackupSummary {
    fn of_manifest(m: &NodeManifest) -> Self {
        let mut s = BackupSummary::new(
            m.backup_id.as_str(),
            Scope::Node,
            BackupState::Done,
            m.started_at,
        );
        s.finished_at = Some(m.finished_at);
        s.duration_secs = Some(m.duration_secs());
        s.set_totals(&m.totals);
        s
    }

    fn new(id: &str, scope: Scope, state: BackupState, started_at: OffsetDateTime) -> Self {
        BackupSummary {
            id: id.to_string(),
            scope,
            state,
            started_at,
            finished_at: None,
            duration_secs: None,
            files: 0,
            bytes: 0,
            stored_bytes: 0,
            uploaded_files: 0,
            uploaded_bytes: 0,
            reused_files: 0,
            reused_bytes: 0,
            error: None,
        }
    }

    fn set_totals(&mut self, t: &Totals) {
        self.files = t.files;
        self.bytes = t.bytes;
        self.stored_bytes = t.stored_bytes;
        self.uploaded_files = t.uploaded_files;
        self.uploaded_bytes = t.uploaded_bytes;
        self.reused_files = t.reused_files;
        self.reused_bytes = t.reused_bytes;
    }
}

/// `GET /v1/backups/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupDetail {
    #[serde(flatten)]
    pub summary: BackupSummary,
    /// What a running backup is doing: `snapshot`, `upload`, `manifest`.
    pub phase: Option<String>,
    #[schema(value_type = Object)]
    pub progress: Option<ProgressView>,
    /// The job running it, for a backup started on this node.
    pub job: Option<uuid::Uuid>,
    /// This node's manifest: files, tokens, Cassandra version.
    #[schema(value_type = Object)]
    pub manifest: Option<ManifestView>,
    /// Per node, for a cluster backup.
    #[schema(value_type = Object)]
    pub nodes: Option<Value>,
}

/// A manifest without its file list and schema (those can be large).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestView {
    pub slot: SlotRef,
    pub address: String,
    pub cassandra_version: String,
    pub tokens: Vec<String>,
    pub keyspaces: Vec<String>,
    pub tables: usize,
}

/// A backup running or failed on this node, remembered in memory (a
/// finished one is its manifest in the store).
#[derive(Debug, Clone)]
struct Run {
    id: BackupId,
    scope: Scope,
    job: uuid::Uuid,
    started_at: OffsetDateTime,
    phase: Arc<Mutex<String>>,
    progress: Arc<Progress>,
    error: Option<String>,
    finished_at: Option<OffsetDateTime>,
}

pub struct Backups {
    pub config: Arc<Config>,
    pub node: Arc<Node>,
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    pub slot_backups: SlotBackups,
    pub cluster: Option<Arc<cluster::ClusterBackups>>,
    runs: Mutex<Vec<Run>>,
}

/// How many failed runs are remembered.
const KEEP_FAILED: usize = 20;

impl Backups {
    /// `slot`: the registry slot in cluster mode, else `backup.slot`.
    pub async fn open(
        config: Arc<Config>,
        node: Arc<Node>,
        jobs: Jobs,
        metrics: Arc<Metrics>,
        slot: SlotRef,
        cluster: Option<Arc<cluster::ClusterBackups>>,
    ) -> anyhow::Result<Arc<Self>> {
        let store_config = config
            .backup_store()
            .map_err(|e| anyhow::anyhow!("backup store: {e}"))?;
        let store = ObjectStore::open(&store_config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the backup store: {e}"))?;
        let b = &config.backup;
        let settings = StoreSettings {
            concurrency: b.concurrency,
            // Raw files and a filesystem store stream; on S3 a compressed file
            // is held in memory (up to a part) or its parts are: those of files
            // from BUFFERED_ALONE up go one at a time.
            large_concurrency: if store.is_s3() { 1 } else { b.concurrency },
            large_file: BUFFERED_ALONE.min(b.s3.part_size.as_u64()),
            zstd_level: b.zstd_level,
            compress_compressed_data: b.compress_compressed_data,
            throttle: Throttle::new(Some(b.rate_limit.as_u64())),
            file_attempts: 3,
        };
        let layout = crate::cassandra::files::NodeLayout::new(&config.node.data_dir);
        let slot_backups =
            SlotBackups::new(store, slot, &layout.data, &state_dir(&config), settings);
        Ok(Arc::new(Backups {
            config,
            node,
            jobs,
            metrics,
            slot_backups,
            cluster,
            runs: Mutex::new(Vec::new()),
        }))
    }

    pub fn slot(&self) -> &SlotRef {
        &self.slot_backups.slot
    }

    pub fn retention(&self) -> Retention {
        Retention {
            keep_last: self.config.backup.keep_last,
            // 0 turns the age rule off (so `keep_last` alone decides).
            keep_days: self.config.backup.keep_days.filter(|&d| d > 0),
        }
    }

    /// Starts a backup of this node (or, with scope cluster, of every node).
    pub fn start(self: &Arc<Self>, req: CreateBackup) -> Result<(BackupId, Job), StartError> {
        for ks in &req.keyspaces {
            if ks.is_empty() || !ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StartError::Invalid(format!("invalid keyspace name {ks:?}")));
            }
        }
        let id = BackupId::generate(OffsetDateTime::now_utc());
        match req.scope {
            Scope::Node => {
                let job = self.start_node_backup(id.clone(), req.keyspaces, None)?;
                Ok((id, job))
            }
            Scope::Cluster => {
                let Some(cluster) = &self.cluster else {
                    return Err(StartError::Invalid(
                        "a cluster backup needs cluster mode (cluster.coordinator): this node has no cluster registry".into(),
                    ));
                };
                if self.jobs.busy(GROUP) {
                    return Err(StartError::Busy(
                        "another backup or restore is running on this node".into(),
                    ));
                }
                let job = cluster.start(self.clone(), id.clone(), req.keyspaces)?;
                Ok((id, job))
            }
        }
    }

    /// Starts the job of one node backup; `on_done` hears the outcome (cluster
    /// backups report it to the store).
    pub fn start_node_backup(
        self: &Arc<Self>,
        id: BackupId,
        keyspaces: Vec<String>,
        on_done: Option<cluster::Reporter>,
    ) -> Result<Job, StartError> {
        let run = Run {
            id: id.clone(),
            scope: if on_done.is_some() {
                Scope::Cluster
            } else {
                Scope::Node
            },
            job: uuid::Uuid::nil(),
            started_at: OffsetDateTime::now_utc(),
            phase: Arc::new(Mutex::new("starting".into())),
            progress: Arc::new(Progress::default()),
            error: None,
            finished_at: None,
        };
        let this = self.clone();
        let job_run = run.clone();
        let job = self
            .jobs
            .start(GROUP, "backup.create", move |cancel| async move {
                let work = this.run_node_backup(&job_run, keyspaces, &cancel);
                let outcome = match &on_done {
                    Some(reporter) => reporter.while_running(work).await,
                    None => work.await,
                };
                this.finish(&job_run, &outcome);
                if let Some(report) = on_done {
                    report.report(&outcome).await;
                }
                outcome.map_err(|e| e.to_string())
            })
            .map_err(StartError::Conflict)?;
        let mut runs = self.runs.lock().expect("runs lock");
        runs.push(Run { job: job.id, ..run });
        Ok(job)
    }

    fn finish(&self, run: &Run, outcome: &Result<Value, BackupError>) {
        let mut runs = self.runs.lock().expect("runs lock");
        match outcome {
            Ok(_) => {
                runs.retain(|r| r.id != run.id);
                self.metrics.backup_succeeded(OffsetDateTime::now_utc());
            }
            Err(e) => {
                if let Some(r) = runs.iter_mut().find(|r| r.id == run.id) {
                    r.error = Some(e.to_string());
                    r.finished_at = Some(OffsetDateTime::now_utc());
                }
                let failed: Vec<usize> = runs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.error.is_some())
                    .map(|(i, _)| i)
                    .collect();
                if failed.len() > KEEP_FAILED {
                    runs.remove(failed[0]);
                }
                self.metrics.backup_failed();
            }
        }
        let p = run.progress.view();
        self.metrics.backup_bytes(p.bytes_uploaded, p.bytes_reused);
    }

    async fn run_node_backup(
        &self,
        run: &Run,
        keyspaces: Vec<String>,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let set_phase = |p: &str| *run.phase.lock().expect("phase lock") = p.to_string();
        set_phase("snapshot");
        let tag = run.id.snapshot_tag();
        let info = self.node_info().await?;
        self.clear_leftover_snapshots().await;
        self.snapshot(&tag, &keyspaces).await?;
        let result = async {
            set_phase("upload");
            let data_dir = self.slot_backups.data_dir.clone();
            let tag2 = tag.clone();
            let files = tokio::task::spawn_blocking(move || snapshot_files(&data_dir, &tag2))
                .await
                .map_err(|e| BackupError::Internal(e.to_string()))?
                .map_err(|source| BackupError::File {
                    path: self.slot_backups.data_dir.clone(),
                    source,
                })?;
            if files.is_empty() {
                return Err(BackupError::Invalid(format!(
                    "snapshot {tag} holds no SSTable files (nothing flushed yet?)"
                )));
            }
            let manifest = self
                .slot_backups
                .back_up_snapshot(
                    &run.id,
                    run.started_at,
                    info,
                    keyspaces,
                    files,
                    &run.progress,
                    cancel,
                )
                .await?;
            set_phase("retention");
            let purged = self.apply_retention().await;
            Ok((manifest, purged))
        }
        .await;
        set_phase("clearing snapshot");
        if let Err(e) = self.clear_snapshot(&tag).await {
            tracing::warn!(tag, error = %e, "cannot clear the backup's snapshot");
        }
        let (manifest, purged) = result?;
        Ok(json!({
            "backup_id": manifest.backup_id,
            "totals": manifest.totals,
            "duration_secs": manifest.duration_secs(),
            "purged_backups": purged,
        }))
    }

    /// Deletes what retention no longer keeps; failures are logged, never
    /// failing the backup that triggered them.
    async fn apply_retention(&self) -> Vec<String> {
        match self.purge(&self.retention(), false).await {
            Ok(plan) => plan.backups.iter().map(|b| b.to_string()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "retention purge failed");
                Vec::new()
            }
        }
    }

    /// Plans (and unless `dry_run`, carries out) a purge by the configured
    /// retention or the given one.
    pub async fn purge(
        &self,
        retention: &Retention,
        dry_run: bool,
    ) -> Result<PurgePlan, BackupError> {
        let now = OffsetDateTime::now_utc();
        let plan = self
            .slot_backups
            .purge(|manifests| retention.expired(manifests, now), dry_run)
            .await?;
        if !dry_run {
            self.drop_cluster_indexes(&plan.backups).await?;
        }
        Ok(plan)
    }

    /// Deletes one backup: this slot's manifest and the cluster index, then
    /// whatever only it named.
    pub async fn delete(&self, id: &BackupId) -> Result<PurgePlan, BackupError> {
        let plan = self.slot_backups.purge(|_| vec![id.clone()], false).await?;
        self.drop_cluster_indexes(std::slice::from_ref(id)).await?;
        Ok(plan)
    }

    /// A cluster backup one of whose nodes lost its manifest is no longer
    /// whole: its index goes, so it is neither listed nor restored from.
    async fn drop_cluster_indexes(&self, ids: &[BackupId]) -> Result<(), BackupError> {
        for id in ids {
            self.slot_backups
                .catalog
                .delete_cluster_index(&self.slot().cluster, id)
                .await?;
        }
        Ok(())
    }

    /// Checks every object a backup names (this slot's manifest, or every
    /// node's for a cluster backup).
    pub async fn verify(&self, id: &BackupId, deep: bool) -> Result<VerifyReport, BackupError> {
        let catalog = &self.slot_backups.catalog;
        let mut files = Vec::new();
        let mut missing = Vec::new();
        match catalog.cluster_index(&self.slot().cluster, id).await? {
            Some(index) => {
                for node in &index.nodes {
                    match catalog.manifest(&node.slot, id).await? {
                        Some(m) => files.extend(m.files),
                        // A node that finished wrote its manifest: a purge
                        // or a delete on that node has taken it since.
                        None if node.state == NodeBackupState::Done => missing.push(format!(
                            "node {} ({}): its manifest is missing",
                            node.slot.label(),
                            node.address
                        )),
                        None => {}
                    }
                }
            }
            None => match catalog.manifest(self.slot(), id).await? {
                Some(m) => files = m.files,
                None => return Err(BackupError::Invalid(format!("no backup {id}"))),
            },
        }
        let mut report =
            verify_files(catalog, &files, deep, self.config.backup.concurrency * 2).await;
        report.problems.extend(missing);
        Ok(report)
    }

    /// Every backup of this slot and cluster: running, failed, stored.
    pub async fn list(&self) -> Result<Vec<BackupSummary>, BackupError> {
        let catalog = &self.slot_backups.catalog;
        let mut out: Vec<BackupSummary> = self
            .runs
            .lock()
            .expect("runs lock")
            .iter()
            .map(|r| r.summary())
            .collect();
        let seen: HashSet<String> = out.iter().map(|s| s.id.clone()).collect();
        let cluster_ids: HashSet<BackupId> = catalog
            .cluster_backup_ids(&self.slot().cluster)
            .await?
            .into_iter()
            .collect();
        for m in catalog.manifests(self.slot()).await? {
            if seen.contains(m.backup_id.as_str()) || cluster_ids.contains(&m.backup_id) {
                continue;
            }
            out.push(BackupSummary::of_manifest(&m));
        }
        for id in cluster_ids {
            if seen.contains(id.as_str()) {
                continue;
            }
            if let Some(index) = catalog.cluster_index(&self.slot().cluster, &id).await? {
                out.push(cluster::summary(&index));
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.started_at));
        Ok(out)
    }

    pub async fn show(&self, id: &BackupId) -> Result<Option<BackupDetail>, BackupError> {
        let catalog = &self.slot_backups.catalog;
        let run = self
            .runs
            .lock()
            .expect("runs lock")
            .iter()
            .find(|r| &r.id == id)
            .cloned();
        // A run this node knows of is shown even when the store cannot be
        // read (a failed backup to a missing bucket must still be visible).
        let store_read = async {
            let manifest = catalog.manifest(self.slot(), id).await?;
            let index = catalog.cluster_index(&self.slot().cluster, id).await?;
            Ok::<_, BackupError>((manifest, index))
        }
        .await;
        let (manifest, index) = match (store_read, &run) {
            (Ok(found), _) => found,
            (Err(_), Some(_)) => (None, None),
            (Err(e), None) => return Err(e),
        };
        let cluster_running = match &self.cluster {
            Some(c) => c.running_detail(id).await,
            None => None,
        };
        let summary = match (&run, &index, &manifest) {
            (Some(r), _, _) => r.summary(),
            (None, Some(index), _) => cluster::summary(index),
            (None, None, Some(m)) => BackupSummary::of_manifest(m),
            (None, None, None) => return Ok(None),
        };
        let nodes = match (&index, cluster_running) {
            (Some(index), _) => Some(serde_json::to_value(&index.nodes).unwrap_or_default()),
            (None, Some(running)) => Some(running),
            (None, None) => None,
        };
        Ok(Some(BackupDetail {
            summary,
            phase: run
                .as_ref()
                .filter(|r| r.error.is_none())
                .map(|r| r.phase.lock().expect("phase lock").clone()),
            progress: run.as_ref().map(|r| r.progress.view()),
            job: run.as_ref().map(|r| r.job),
            manifest: manifest.map(|m| ManifestView {
                tables: m
                    .files
                    .iter()
                    .map(|f| (&f.keyspace, &f.table_dir))
                    .collect::<HashSet<_>>()
                    .len(),
                slot: m.slot,
                address: m.address,
                cassandra_version: m.cassandra_version,
                tokens: m.tokens,
                keyspaces: m.keyspaces,
            }),
            nodes,
        }))
    }

    /// Version, partitioner, tokens and schema, for the manifest.
    async fn node_info(&self) -> Result<NodeInfo, BackupError> {
        let j = &self.node.jolokia;
        let read = |attr: &'static str| async move {
            j.read(STORAGE_SERVICE, attr)
                .await
                .map_err(|e| cassandra_error(&format!("reading {attr}"), e))
        };
        let version = read("ReleaseVersion").await?;
        let partitioner = read("PartitionerName").await?;
        let tokens = read("Tokens").await?;
        let schema =
            self.node.cql.describe_schema().await.map_err(|e| {
                BackupError::Invalid(format!("cannot read the schema over CQL: {e}"))
            })?;
        Ok(NodeInfo {
            rack: self.config.node.rack.clone(),
            address: self.config.node.address.to_string(),
            cassandra_version: version.as_str().unwrap_or_default().to_string(),
            partitioner: partitioner.as_str().unwrap_or_default().to_string(),
            tokens: tokens
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            schema: schema
                .iter()
                .map(|e| e.create_statement.clone())
                .collect::<Vec<_>>()
                .join("\n\n"),
        })
    }

    /// Flushes and snapshots (Cassandra flushes as part of the snapshot).
    async fn snapshot(&self, tag: &str, keyspaces: &[String]) -> Result<(), BackupError> {
        self.node
            .jolokia
            .exec(
                STORAGE_SERVICE,
                "takeSnapshot(java.lang.String,java.util.Map,[Ljava.lang.String;)",
                vec![json!(tag), json!({}), json!(keyspaces)],
                self.config.cassandra.stop_timeout,
            )
            .await
            .map(|_| ())
            .map_err(|e| cassandra_error("snapshot", e))
    }

    /// Clears the snapshots of earlier backups that never cleared their own
    /// (the sidecar was killed, or stopped with Cassandra): each holds hard
    /// links to SSTables that compaction has since replaced, so disk space.
    /// Also one under this backup's own tag, when a cluster backup's part
    /// starts again after a restart (Cassandra refuses an existing tag).
    /// Backups run one at a time on a node, so none of these is in use.
    async fn clear_leftover_snapshots(&self) {
        let data_dir = self.slot_backups.data_dir.clone();
        let listed = tokio::task::spawn_blocking(move || {
            snapshot_tags(&data_dir, anchises_backup::manifest::SNAPSHOT_TAG_PREFIX)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|tags| tags.map_err(|e| e.to_string()));
        let tags = match listed {
            Ok(tags) => tags,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the snapshots of earlier backups");
                return;
            }
        };
        for tag in tags {
            match self.clear_snapshot(&tag).await {
                Ok(()) => tracing::info!(tag, "cleared the snapshot an earlier backup left"),
                Err(e) => {
                    tracing::warn!(tag, error = %e, "cannot clear the snapshot an earlier backup left")
                }
            }
        }
    }

    async fn clear_snapshot(&self, tag: &str) -> Result<(), BackupError> {
        self.node
            .jolokia
            .exec(
                STORAGE_SERVICE,
                "clearSnapshot(java.util.Map,java.lang.String,[Ljava.lang.String;)",
                vec![json!({}), json!(tag), json!([])],
                self.config.cassandra.stop_timeout,
            )
            .await
            .map(|_| ())
            .map_err(|e| cassandra_error("clearing the snapshot", e))
    }
}

impl Run {
    fn summary(&self) -> BackupSummary {
        let state = if self.error.is_some() {
            BackupState::Failed
        } else {
            BackupState::Running
        };
        let mut s = BackupSummary::new(self.id.as_str(), self.scope, state, self.started_at);
        s.finished_at = self.finished_at;
        s.duration_secs = self
            .finished_at
            .map(|f| (f - self.started_at).as_seconds_f64());
        let p = self.progress.view();
        s.files = p.files_total;
        s.bytes = p.bytes_total;
        s.uploaded_files = p.files_uploaded;
        s.uploaded_bytes = p.bytes_uploaded;
        s.reused_files = p.files_reused;
        s.reused_bytes = p.bytes_reused;
        s.error = self.error.clone();
        s
    }
}

fn cassandra_error(what: &str, e: JolokiaError) -> BackupError {
    BackupError::Invalid(format!("{what} failed: {}", NodeError::from(e)))
}

/// Zstd-compressed files at least this large, which S3 takes from memory,
/// are uploaded one at a time: four such files just under a part would
/// otherwise hold four parts' worth of memory.
const BUFFERED_ALONE: u64 = 1024 * 1024;

/// Where the sidecar keeps its own state (the upload journal).
pub fn state_dir(config: &Config) -> PathBuf {
    config.node.data_dir.join("anchises")
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(String),
    /// Another backup or restore runs (409).
    #[error("{0}")]
    Busy(String),
    /// Cassandra does not answer yet (503: try again).
    #[error("{0}")]
    Unavailable(String),
    /// The backup store failed (502).
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Conflict(Conflict),
}
