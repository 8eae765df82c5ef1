//! Online restores of keyspaces and tables into this node: plan (the slot's
//! backup or point in time), check the schema against the live one, stage
//! every file (downloaded and hash-checked) under the data directory's
//! filesystem, then load each table with `importNewSSTables`. The node keeps
//! serving throughout. Nothing live is touched before every file is staged and
//! every schema check passed.
//!
//! A cluster restore (scope `cluster`) asks every node's sidecar, through the
//! backup store, to restore its own slot: see [`cluster`].
//!
//! Each restore keeps its state in `<data_dir>/anchises/restore/<id>/`: the
//! request, the staged files, and the tables already imported. The same
//! request made again after a crash continues that restore.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anchises_backup::catalog::Catalog;
use anchises_backup::files::{Progress, ProgressView};
use anchises_backup::manifest::{BackupId, SlotRef};
use anchises_backup::restore::{
    is_system_keyspace, links, plan_slot, stage, Fetched, Point, Selection, SlotPlan,
};
use anchises_backup::BackupError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::backup::{Backups, Scope, StartError, GROUP};
use crate::cassandra::cql::SchemaElement;
use crate::jobs::Job;

pub mod cluster;
pub(crate) mod full;

/// `POST /v1/restores`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRestore {
    /// The cluster whose backups to restore from (default: this node's).
    pub source_cluster: Option<String>,
    /// A backup id; without it and without `at`, the newest backup.
    pub backup_id: Option<String>,
    /// A point in time (RFC 3339): the newest backup finished by then plus the
    /// incremental SSTables written up to it.
    pub at: Option<String>,
    /// Keyspaces to restore (all non-system ones when both lists are empty).
    #[serde(default)]
    pub keyspaces: Vec<String>,
    /// Tables to restore, as `ks.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Create keyspaces, types and tables missing from the live schema, from
    /// the backed-up schema.
    #[serde(default)]
    pub create_schema: bool,
    /// Only return the plan.
    #[serde(default)]
    pub dry_run: bool,
    /// `online` (default): load tables into the running node. `full`: replace
    /// the whole node (system keyspaces included) with the backup: stop
    /// Cassandra, move the current data aside, lay out every file, start, and
    /// move the old data back if the node does not come up.
    #[serde(default)]
    pub mode: RestoreMode,
    /// `node` (default): this node. `cluster`: every node of the cluster (or
    /// those in `nodes`) restores its own slot, from this one request.
    #[serde(default)]
    pub scope: Scope,
    /// With scope `cluster`: only the nodes at these addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    #[default]
    Online,
    Full,
}

impl CreateRestore {
    fn point(&self) -> Result<Point, String> {
        match (&self.backup_id, &self.at) {
            (Some(_), Some(_)) => Err("give backup_id or at, not both".into()),
            (Some(id), None) => anchises_backup::manifest::BackupId::parse(id).map(Point::Backup),
            (None, Some(at)) => {
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map(Point::At)
                    .map_err(|e| {
                        format!(
                            "at {at:?} is not an RFC 3339 time (e.g. 2026-11-26T09:55:00Z): {e}"
                        )
                    })
            }
            (None, None) => Ok(Point::Latest),
        }
    }

    fn selection(&self) -> Result<Selection, String> {
        if self.scope == Scope::Node && !self.nodes.is_empty() {
            return Err(
                "nodes names the nodes of a cluster restore: give it with \"scope\": \"cluster\""
                    .into(),
            );
        }
        if self.scope == Scope::Cluster && self.mode == RestoreMode::Full {
            return Err("a full-node restore replaces one node at a time: ask each node's sidecar (scope node)".into());
        }
        if self.mode == RestoreMode::Full {
            if !self.keyspaces.is_empty() || !self.tables.is_empty() || self.create_schema {
                return Err("a full-node restore restores everything: it takes no keyspaces, tables or create_schema".into());
            }
            return Ok(Selection {
                include_system: true,
                ..Selection::default()
            });
        }
        let name_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        for ks in &self.keyspaces {
            if !name_ok(ks) {
                return Err(format!("invalid keyspace name {ks:?}"));
            }
            if is_system_keyspace(ks) {
                return Err(format!(
                    "{ks} is a system keyspace: an online restore leaves those alone"
                ));
            }
        }
        for t in &self.tables {
            match t.split_once('.') {
                Some((ks, table)) if name_ok(ks) && name_ok(table) && !is_system_keyspace(ks) => {}
                _ => {
                    return Err(format!(
                        "invalid table {t:?}: use keyspace.table (not a system keyspace)"
                    ))
                }
            }
        }
        Ok(Selection {
            keyspaces: self.keyspaces.clone(),
            tables: self.tables.clone(),
            include_system: false,
            schema_tables: false,
        })
    }
}

/// A time in RFC 3339 (`2026-11-26T09:55:00Z`), or the same without seconds
/// (`2026-11-26T09:55Z`).
pub fn parse_time(at: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(at, &Rfc3339)
        .or_else(|e| {
            // Insert ":00" seconds after HH:MM.
            match at.find('T') {
                Some(t)
                    if at.len() > t + 6
                        && at.as_bytes()[t + 3] == b':'
                        && !at[t + 6..].starts_with(':') =>
                {
                    OffsetDateTime::parse(&format!("{}:00{}", &at[..t + 6], &at[t + 6..]), &Rfc3339)
                }
                _ => Err(e),
            }
        })
        .map_err(|e| format!("{at:?} is not an RFC 3339 time (e.g. 2026-11-26T09:55:00Z): {e}"))
}

/// The plan as the API shows it (without the file list).
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub source: SlotRef,
    pub target: SlotRef,
    pub base_backup: String,
    #[serde(with = "time::serde::rfc3339")]
    pub base_finished_at: OffsetDateTime,
    pub files: usize,
    pub incremental_files: usize,
    pub bytes: u64,
    pub tables: Vec<String>,
    /// Tables to create from the backed-up schema.
    pub create: Vec<String>,
    /// What stops the restore; empty when it can run.
    pub blockers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestoreState {
    /// A node of a cluster restore that has not started its part yet.
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
    /// Left unfinished by a sidecar that stopped mid-restore (found on disk
    /// at start): the same request continues it, `DELETE` discards it.
    Interrupted,
}

/// `GET /v1/restores/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreView {
    pub id: String,
    /// `node`, or `cluster` on the node that coordinates a cluster restore.
    pub scope: Scope,
    pub state: RestoreState,
    /// `plan`, `stage`, `schema`, `import`, `done`.
    pub phase: String,
    pub node: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The job that ran it; none for an interrupted restore.
    pub job: Option<uuid::Uuid>,
    pub request: CreateRestore,
    pub plan: Option<PlanView>,
    pub progress: ProgressView,
    pub imported_tables: Vec<String>,
    pub error: Option<String>,
    /// Per node, for a cluster restore: its slot, address, state, phase,
    /// source slot, progress and error. The restore's `progress` sums them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<cluster::NodePart>>,
}

/// What survives a crash: the request, the tables already imported, and the
/// table whose import was under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SavedState {
    request: CreateRestore,
    imported: Vec<String>,
    /// Cassandra moves a table's staged SSTables into the table one by one,
    /// each SSTable's `Data.db` last: after a crash mid-import, an SSTable
    /// whose `Data.db` is gone from staging was imported whole and is not
    /// downloaded again (that would import it twice); one whose `Data.db` is
    /// still staged gets its missing components downloaded again and is
    /// imported with the rest.
    #[serde(default)]
    importing: Option<String>,
    finished: bool,
    /// When the restore first started (absent from older versions' states).
    #[serde(default, with = "time::serde::rfc3339::option")]
    started_at: Option<OffsetDateTime>,
    /// A node's part of a cluster restore (its directory is named after the
    /// cluster restore): of no use once that request is gone, since making
    /// the cluster restore again gives it a new id.
    #[serde(default)]
    cluster_part: bool,
    /// The backup the restore started from: a restore that continues goes
    /// on from it (its staged files are that backup's), also when its
    /// request names no backup and a newer one has been taken since.
    #[serde(default)]
    base: Option<BackupId>,
}

struct Run {
    id: String,
    scope: Scope,
    job: Option<uuid::Uuid>,
    started_at: OffsetDateTime,
    request: CreateRestore,
    cancel: CancellationToken,
    progress: Arc<Progress>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    phase: String,
    plan: Option<PlanView>,
    imported: Vec<String>,
    state: Option<RestoreState>,
    error: Option<String>,
    finished_at: Option<OffsetDateTime>,
    nodes: Option<Vec<cluster::NodePart>>,
}

pub struct Restores {
    backups: Arc<Backups>,
    runs: Mutex<Vec<Run>>,
}

const TABLES_MBEAN: &str = "org.apache.cassandra.db:type=Tables";

impl Restores {
    /// Restores left unfinished by an earlier sidecar are listed as
    /// `interrupted`.
    pub fn new(backups: Arc<Backups>) -> Arc<Self> {
        let root = crate::backup::state_dir(&backups.config).join("restore");
        Arc::new(Restores {
            backups,
            runs: Mutex::new(interrupted(&root)),
        })
    }

    fn root(&self) -> PathBuf {
        crate::backup::state_dir(&self.backups.config).join("restore")
    }

    fn catalog(&self) -> &Catalog {
        &self.backups.slot_backups.catalog
    }

    /// Plans a restore of this node and checks it against the live schema
    /// and ring.
    pub async fn plan(&self, req: &CreateRestore) -> Result<(SlotPlan, PlanView), StartError> {
        self.plan_continuing(req, self.unfinished(req).as_deref())
            .await
    }

    /// [`Restores::plan`] for a restore that continues restore `continues`
    /// (when given), whose staged files need no more room on the disk.
    async fn plan_continuing(
        &self,
        req: &CreateRestore,
        continues: Option<&str>,
    ) -> Result<(SlotPlan, PlanView), StartError> {
        let live = if req.mode == RestoreMode::Full {
            Vec::new()
        } else {
            self.live_schema().await?
        };
        let own_tokens = self.own_tokens().await;
        let continued = continues.and_then(|id| read_state(&self.root().join(id)));
        let pinned;
        let req = match continued.as_ref().and_then(|s| s.base.clone()) {
            Some(base) if req.backup_id.is_none() && req.at.is_none() => {
                pinned = CreateRestore {
                    backup_id: Some(base.to_string()),
                    ..req.clone()
                };
                &pinned
            }
            _ => req,
        };
        let (plan, mut view) = self
            .plan_for(req, self.backups.slot(), own_tokens, &live)
            .await?;
        let imported = continued.map(|s| s.imported).unwrap_or_default();
        let data_dir = &self.backups.config.node.data_dir;
        let data = crate::cassandra::files::NodeLayout::new(data_dir).data;
        // A linked file takes no room, unless the import or the layout then
        // copies it onto the data's filesystem.
        let store = &self.backups.slot_backups.store;
        let one_filesystem = {
            use std::os::unix::fs::MetadataExt;
            let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
            device(data_dir).is_some() && device(data_dir) == device(&data)
        };
        let linked =
            |f: &anchises_backup::manifest::FileEntry| one_filesystem && links(store, f, data_dir);
        let to_stage = bytes_to_stage(
            &plan.files,
            continues.map(|id| self.root().join(id)).as_deref(),
            &imported,
            &linked,
        );
        let min_free = self.backups.config.backup.restore_min_free.as_u64();
        view.blockers
            .extend(space_blockers(data_dir, &data, to_stage, min_free));
        if req.mode == RestoreMode::Full {
            view.blockers
                .extend(full::held_by_other(&self.backups.config, continues));
        }
        Ok((plan, view))
    }

    /// Creates those of `tables` that the live schema lacks, as the backup's
    /// `schema` defines them (keyspaces too).
    async fn create_missing(&self, schema: &str, tables: &[String]) -> Result<(), BackupError> {
        let cql = &self.backups.node.cql;
        let live = cql
            .describe_schema()
            .await
            .map_err(|e| BackupError::Invalid(format!("cannot read the live schema: {e}")))?;
        for statement in SchemaCheck::new(schema, &live).creates(tables) {
            cql.execute(&statement).await.map_err(|e| {
                BackupError::Invalid(format!("cannot create {}: {e}", one_line(&statement)))
            })?;
        }
        Ok(())
    }

    async fn live_schema(&self) -> Result<Vec<SchemaElement>, StartError> {
        self.backups.node.cql.describe_schema().await.map_err(|e| {
            StartError::Unavailable(format!("cannot read the live schema over CQL: {e}"))
        })
    }

    /// This node's tokens: from the running node, else (a stopped node, as in
    /// a full restore after a lost disk) its configured ones.
    async fn own_tokens(&self) -> Option<Vec<String>> {
        let live = self
            .backups
            .node
            .jolokia
            .read("org.apache.cassandra.db:type=StorageService", "Tokens")
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            });
        live.or_else(|| {
            self.backups
                .config
                .node
                .initial_token
                .as_ref()
                .map(|t| t.split(',').map(|t| t.trim().to_string()).collect())
        })
    }

    /// Plans the restore of the node of `target` (which has `own_tokens`)
    /// against the `live` schema. The source slot is the source cluster's
    /// slot with the target's tokens ([`slot_by_tokens`]).
    pub(crate) async fn plan_for(
        &self,
        req: &CreateRestore,
        target: &SlotRef,
        own_tokens: Option<Vec<String>>,
        live: &[SchemaElement],
    ) -> Result<(SlotPlan, PlanView), StartError> {
        let point = req.point().map_err(StartError::Invalid)?;
        let selection = req.selection().map_err(StartError::Invalid)?;
        let same_place = SlotRef {
            cluster: req
                .source_cluster
                .clone()
                .unwrap_or_else(|| target.cluster.clone()),
            dc: target.dc.clone(),
            slot: target.slot,
        };
        let source = match &own_tokens {
            Some(tokens) => slot_by_tokens(self.catalog(), same_place, tokens).await,
            None => same_place,
        };
        let plan = plan_slot(self.catalog(), &source, &point, &selection)
            .await
            .map_err(|e| match e {
                BackupError::Invalid(m) | BackupError::Corrupt(m) => StartError::Invalid(m),
                other => StartError::Store(format!("cannot read the backups: {other}")),
            })?;
        let mut blockers = Vec::new();
        if plan.files.is_empty() {
            blockers.push("the backup holds no file of the tables asked for".to_string());
        }
        for t in req.tables.iter() {
            if !plan.tables.contains(t) {
                blockers.push(format!("table {t} is not in backup {}", plan.base));
            }
        }
        for ks in req.keyspaces.iter() {
            if !plan.tables.iter().any(|t| t.starts_with(&format!("{ks}."))) {
                blockers.push(format!("keyspace {ks} is not in backup {}", plan.base));
            }
        }
        if req.mode == RestoreMode::Full && source.cluster != target.cluster {
            blockers.push(format!(
                "a full-node restore lays out the system keyspaces of cluster {}, under whose name Cassandra would refuse to start as a node of {}; restore its keyspaces online instead",
                source.cluster, target.cluster
            ));
        }
        let schema = SchemaCheck::new(&plan.schema, live);
        let mut create = Vec::new();
        let online_tables: &[String] = if req.mode == RestoreMode::Full {
            &[]
        } else {
            &plan.tables
        };
        for t in online_tables {
            match schema.check(t) {
                TableCheck::Same => {}
                TableCheck::Missing if req.create_schema => create.push(t.clone()),
                TableCheck::Missing => blockers.push(format!(
                    "table {t} does not exist; pass create_schema to create it from the backup's schema"
                )),
                TableCheck::NotInBackupSchema => {
                    blockers.push(format!("table {t} has no CREATE statement in the backup's schema"))
                }
                TableCheck::Differs { live, backup } => blockers.push(format!(
                    "the live schema of {t} differs from the backup's; restore refused\n  live:   {}\n  backup: {}",
                    one_line(&live),
                    one_line(&backup)
                )),
            }
        }
        if let Some(mut own) = own_tokens {
            let mut theirs = plan.tokens.clone();
            own.sort();
            theirs.sort();
            if own != theirs {
                blockers.push(format!(
                    "slot {} of the source had tokens {:?}, this node has {:?}: restore into a node with the same tokens",
                    plan.source.label(),
                    plan.tokens,
                    own
                ));
            }
        }
        let view = PlanView {
            source: plan.source.clone(),
            target: target.clone(),
            base_backup: plan.base.to_string(),
            base_finished_at: plan.base_finished_at,
            files: plan.files.len(),
            incremental_files: plan.incremental_files,
            bytes: plan.bytes,
            tables: plan.tables.clone(),
            create,
            blockers,
        };
        Ok((plan, view))
    }

    /// Starts (or, for the same request as an unfinished one, continues) a
    /// restore of this node.
    pub async fn start(self: &Arc<Self>, req: CreateRestore) -> Result<(String, Job), StartError> {
        self.start_as(req, None).await
    }

    /// [`Restores::start`], under `id` when given (a node's part of a cluster
    /// restore, which continues its own state if it has some).
    pub(crate) async fn start_as(
        self: &Arc<Self>,
        req: CreateRestore,
        id: Option<String>,
    ) -> Result<(String, Job), StartError> {
        // Checked first (and again when the job starts): a request refused
        // with 409 neither leaves a new restore's state behind nor rewrites
        // that of the restore that runs.
        if let Some(c) = self.backups.jobs.conflict(GROUP) {
            return Err(StartError::Conflict(c));
        }
        let cluster_part = id.is_some();
        let continues = id.or_else(|| self.unfinished(&req));
        let (plan, view) = self.plan_continuing(&req, continues.as_deref()).await?;
        if !view.blockers.is_empty() {
            return Err(StartError::Invalid(format!(
                "restore blocked: {}",
                view.blockers.join("; ")
            )));
        }
        let continued = continues.is_some() && !cluster_part;
        let id = continues.unwrap_or_else(new_id);
        let dir = self.root().join(&id);
        let saved = {
            // Under the lock a discard sets a directory aside with.
            let _runs = self.runs.lock().expect("runs lock");
            claim_state(&dir, &id, continued, cluster_part, &req, &plan.base)?
        };
        let shared = Arc::new(Mutex::new(Shared {
            phase: "stage".into(),
            plan: Some(view),
            imported: saved.imported.clone(),
            state: Some(RestoreState::Running),
            ..Shared::default()
        }));
        let progress = Arc::new(Progress::default());
        let cancel = CancellationToken::new();
        let this = self.clone();
        let mode = req.mode;
        let (job_shared, job_progress, job_cancel) =
            (shared.clone(), progress.clone(), cancel.clone());
        let job = self
            .backups
            .jobs
            .start(GROUP, "restore", move |job_token| async move {
                forward_cancel(job_token, job_cancel.clone());
                let outcome = match mode {
                    RestoreMode::Online => {
                        this.run(&dir, plan, &job_shared, &job_progress, &job_cancel)
                            .await
                    }
                    RestoreMode::Full => {
                        this.run_full(&dir, plan, &job_shared, &job_progress, &job_cancel)
                            .await
                    }
                };
                finish(&job_shared, outcome, job_cancel.is_cancelled())
            })
            .map_err(StartError::Conflict)?;
        let mut runs = self.runs.lock().expect("runs lock");
        // A continued restore replaces its earlier (cancelled or failed) run.
        runs.retain(|r| !(r.id == id && r.scope == Scope::Node));
        runs.push(Run {
            id: id.clone(),
            scope: Scope::Node,
            job: Some(job.id),
            started_at: OffsetDateTime::now_utc(),
            request: req,
            cancel,
            progress,
            shared,
        });
        Ok((id, job))
    }

    /// An unfinished restore (on disk) with the same request; never a
    /// node's part of a cluster restore, which only that restore continues
    /// (and removes once its request is gone).
    fn unfinished(&self, req: &CreateRestore) -> Option<String> {
        saved_states(&self.root())
            .into_iter()
            .find(|(_, saved)| !saved.finished && !saved.cluster_part && saved.request == *req)
            .map(|(id, _)| id)
    }

    /// Forgets restore `id` (every scope of it) and removes its directory:
    /// what it staged and its saved state. Refused while it runs.
    pub async fn discard(&self, id: &str) -> Discard {
        let set_aside = {
            let mut runs = self.runs.lock().expect("runs lock");
            let mine: Vec<&Run> = runs.iter().filter(|r| r.id == id).collect();
            if mine.iter().any(|r| {
                r.shared.lock().expect("restore lock").state == Some(RestoreState::Running)
            }) {
                return Discard::Running;
            }
            let known = !mine.is_empty();
            if let Some(previous) = holds_previous_data(&self.root(), id) {
                return Discard::HoldsPreviousData(previous);
            }
            // Renamed while the lock is held, so that the same request made
            // at once starts afresh instead of continuing what goes.
            let set_aside = match set_aside(&self.root(), id) {
                Ok(None) if !known => return Discard::Unknown,
                Ok(dir) => dir,
                // Nothing removed: still listed, so it can be tried again.
                Err(e) => return Discard::Failed(e.to_string()),
            };
            runs.retain(|r| r.id != id);
            set_aside
        };
        remove_set_aside(set_aside).await
    }

    /// Removes the directory of this node's part of cluster restore `id`
    /// (which can no longer continue), keeping the part's record in memory.
    async fn remove_part_files(&self, id: &str) -> Discard {
        remove_restore_dir(&self.root(), id).await
    }

    async fn run(
        &self,
        dir: &Path,
        plan: SlotPlan,
        shared: &Mutex<Shared>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let clock = PhaseClock::default();
        let set_phase = clock.setter(shared);
        let staging = dir.join("staging");
        let mut saved = read_state(dir).unwrap_or_default();
        // Tables already imported are not staged again (their files were
        // moved into the table by the import), nor is the one whose import
        // was interrupted.
        let pending: Vec<_> = plan
            .files
            .iter()
            .filter(|f| !saved.imported.contains(&table_of(f)))
            .cloned()
            .collect();
        let to_stage: Vec<_> = pending
            .iter()
            .filter(|f| {
                saved.importing.as_deref() != Some(table_of(f).as_str())
                    || still_staged(&staging, f)
            })
            .cloned()
            .collect();
        set_phase("stage");
        let staged = self.stage(&to_stage, &staging, progress, cancel).await?;
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        set_phase("schema");
        self.create_missing(&plan.schema, &plan.tables).await?;
        set_phase("import");
        let mut by_table: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for f in &pending {
            let table_dir = staging.join(&f.keyspace).join(&f.table_dir);
            let dirs = by_table.entry(table_of(f)).or_default();
            if !dirs.contains(&table_dir) {
                dirs.push(table_dir);
            }
        }
        let mut tables: Vec<_> = by_table.into_iter().collect();
        tables.sort();
        for (table, dirs) in tables {
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let (ks, name) = table.split_once('.').expect("ks.table");
            let paths: Vec<String> = dirs
                .iter()
                .filter(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
                .map(|d| d.display().to_string())
                .collect();
            saved.importing = Some(table.clone());
            save_state(dir, &saved)?;
            let failed = if paths.is_empty() {
                // An interrupted import that had moved everything already.
                json!([])
            } else {
                self
                .backups
                .node
                .jolokia
                .exec(
                    &format!("{TABLES_MBEAN},keyspace={ks},table={name}"),
                    "importNewSSTables(java.util.Set,boolean,boolean,boolean,boolean,boolean,boolean,boolean,boolean,boolean)",
                    // srcPaths, resetLevel, clearRepaired, verifySSTables,
                    // verifyTokens, invalidateCaches, extendedVerify, copyData,
                    // failOnMissingIndex, validateIndexChecksum. Every staged
                    // file matched its BLAKE3 hash, so Cassandra's own full
                    // read of each SSTable (verifySSTables) is skipped; its
                    // quick check (metadata) and the token ownership check run.
                    vec![json!(paths), json!(true), json!(true), json!(false), json!(true), json!(true), json!(false), json!(false), json!(false), json!(true)],
                    self.backups.config.cassandra.start_timeout,
                )
                .await
                .map_err(|e| BackupError::Invalid(format!("import into {table} failed: {e}")))?
            };
            if failed.as_array().is_some_and(|a| !a.is_empty()) {
                return Err(BackupError::Invalid(format!(
                    "Cassandra could not import into {table} from {failed}"
                )));
            }
            saved.imported.push(table.clone());
            saved.importing = None;
            save_state(dir, &saved)?;
            shared.lock().expect("restore lock").imported.push(table);
        }
        saved.finished = true;
        save_state(dir, &saved)?;
        remove_finished(dir);
        set_phase("done");
        Ok(json!({
            "base_backup": plan.base,
            "files": plan.files.len(),
            "downloaded": staged.downloaded,
            "linked": staged.linked,
            "bytes": plan.bytes,
            "tables": plan.tables,
            "phase_seconds": clock.seconds().0,
        }))
    }

    /// Full-node restore: stage everything, stop Cassandra, move the current
    /// data aside, lay out the backup, start, check ([`full::replace`]); if
    /// anything fails once Cassandra is stopped, put the previous data back
    /// and start it again ([`full::roll_back`]). The old data is deleted only
    /// once the restored node is NORMAL with the backup's tokens. From the
    /// stop on, the restore owns the data directory: nobody else starts
    /// Cassandra.
    async fn run_full(
        &self,
        dir: &Path,
        plan: SlotPlan,
        shared: &Mutex<Shared>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let clock = PhaseClock::default();
        let set_phase = clock.setter(shared);
        let staging = dir.join("staging");
        let node = &self.backups.node;
        let layout = crate::cassandra::files::NodeLayout::new(&self.backups.config.node.data_dir);
        let swap = full::Swap::new(&layout, dir);
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        full::ensure_no_other_holds(&self.backups.config, &id)?;
        set_phase("stage");
        full::take_back_interrupted(node, &swap, &plan.files);
        swap.reclaim(&staging, &plan.files, cancel).await?;
        let staged = self.stage(&plan.files, &staging, progress, cancel).await?;
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        let _owner = node.starts.claim(&id).await;
        set_phase("stop");
        // No drain: the data is moved aside as it is, and a rollback's node
        // replays the commitlog that goes aside with it.
        match node.supervisor.stop_discarding().await {
            Ok(()) | Err(crate::cassandra::supervisor::SupervisorError::NotRunning) => {}
            Err(e) => return Err(BackupError::Invalid(format!("cannot stop cassandra: {e}"))),
        }
        if let Err(failure) = full::replace(node, &swap, &plan, &staging, &set_phase, cancel).await
        {
            set_phase("rollback");
            let why = full::roll_back(node, &swap, &plan, &staging, failure, cancel).await;
            return Err(BackupError::Invalid(why));
        }
        // Finished first: a crash while the old data goes must not offer to
        // restore the node once more.
        let saved = SavedState {
            imported: plan.tables.clone(),
            importing: None,
            finished: true,
            ..read_state(dir).unwrap_or_default()
        };
        save_state(dir, &saved)?;
        remove_finished(dir);
        shared.lock().expect("restore lock").imported = plan.tables.clone();
        set_phase("done");
        let (phase_seconds, down_seconds) = clock.seconds();
        Ok(json!({
            "mode": "full",
            "base_backup": plan.base,
            "files": plan.files.len(),
            "downloaded": staged.downloaded,
            "linked": staged.linked,
            "bytes": plan.bytes,
            "tables": plan.tables,
            "phase_seconds": phase_seconds,
            "down_seconds": down_seconds,
        }))
    }

    /// Downloads (and checks) files into `staging` with the node's backup
    /// concurrency and rate limit.
    async fn stage(
        &self,
        files: &[anchises_backup::manifest::FileEntry],
        staging: &Path,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Fetched, BackupError> {
        stage(
            &self.backups.slot_backups.store,
            files,
            staging,
            self.backups.config.backup.concurrency * 2,
            &self.backups.slot_backups.settings.throttle,
            progress,
            cancel,
        )
        .await
    }

    /// The run of `id`: on the node coordinating a cluster restore, the
    /// cluster's (which shows this node's part among the others) unless
    /// `scope` asks for this node's part.
    fn find<'a>(runs: &'a [Run], id: &str, scope: Option<Scope>) -> Option<&'a Run> {
        let of = |s: Scope| runs.iter().find(move |r| r.id == id && r.scope == s);
        match scope {
            Some(s) => of(s),
            None => of(Scope::Cluster).or_else(|| of(Scope::Node)),
        }
    }

    pub fn cancel(&self, id: &str) -> Option<bool> {
        self.cancel_run(id, None)
    }

    pub(crate) fn cancel_scoped(&self, id: &str, scope: Scope) -> Option<bool> {
        self.cancel_run(id, Some(scope))
    }

    fn cancel_run(&self, id: &str, scope: Option<Scope>) -> Option<bool> {
        let runs = self.runs.lock().expect("runs lock");
        let run = Self::find(&runs, id, scope)?;
        let running = run.shared.lock().expect("restore lock").state == Some(RestoreState::Running);
        if running {
            run.cancel.cancel();
        }
        Some(running)
    }

    pub fn list(&self) -> Vec<RestoreView> {
        let mut out: Vec<RestoreView> = self
            .runs
            .lock()
            .expect("runs lock")
            .iter()
            .map(|r| self.view(r))
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        out
    }

    pub fn show(&self, id: &str) -> Option<RestoreView> {
        let runs = self.runs.lock().expect("runs lock");
        Self::find(&runs, id, None).map(|r| self.view(r))
    }

    pub(crate) fn show_scoped(&self, id: &str, scope: Scope) -> Option<RestoreView> {
        let runs = self.runs.lock().expect("runs lock");
        Self::find(&runs, id, Some(scope)).map(|r| self.view(r))
    }

    fn view(&self, r: &Run) -> RestoreView {
        let s = r.shared.lock().expect("restore lock");
        let progress = match &s.nodes {
            Some(nodes) => cluster::sum_progress(nodes),
            None => r.progress.view(),
        };
        RestoreView {
            id: r.id.clone(),
            scope: r.scope,
            state: s.state.unwrap_or(RestoreState::Running),
            phase: s.phase.clone(),
            node: self.backups.config.node.address.to_string(),
            started_at: r.started_at,
            finished_at: s.finished_at,
            job: r.job,
            request: r.request.clone(),
            plan: s.plan.clone(),
            progress,
            imported_tables: s.imported.clone(),
            error: s.error.clone(),
            nodes: s.nodes.clone(),
        }
    }
}

/// A cancel of the restore's job cancels the restore.
fn forward_cancel(job: CancellationToken, restore: CancellationToken) {
    tokio::spawn(async move {
        job.cancelled().await;
        restore.cancel();
    });
}

/// Records how a restore ended, and hands the outcome to its job. A restore
/// that was `cancelled` ends so also when its cancel was answered by more
/// than stopping (a full-node restore rolls back), its error saying what.
fn finish(
    shared: &Mutex<Shared>,
    outcome: Result<Value, BackupError>,
    cancelled: bool,
) -> Result<Value, String> {
    let mut s = shared.lock().expect("restore lock");
    s.finished_at = Some(OffsetDateTime::now_utc());
    match &outcome {
        Ok(_) => s.state = Some(RestoreState::Done),
        Err(BackupError::Cancelled) => {
            s.state = Some(RestoreState::Cancelled);
            s.error = Some("cancelled".into());
        }
        Err(e) if cancelled => {
            s.state = Some(RestoreState::Cancelled);
            s.error = Some(e.to_string());
        }
        Err(e) => {
            s.state = Some(RestoreState::Failed);
            s.error = Some(e.to_string());
        }
    }
    outcome.map_err(|e| e.to_string())
}

fn new_id() -> String {
    format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The slot of the source cluster whose node had `tokens`: found in the
/// source's newest cluster backups, so that a target cluster whose slots are
/// numbered differently still restores each node from the node that owned
/// its ranges. Without such a record, the slot of the same data center and
/// number (`same_place`), whose tokens the plan then checks.
pub(crate) async fn slot_by_tokens(
    catalog: &Catalog,
    same_place: SlotRef,
    tokens: &[String],
) -> SlotRef {
    const INDEXES_READ: usize = 20;
    let mut wanted = tokens.to_vec();
    wanted.sort();
    let Ok(ids) = catalog.cluster_backup_ids(&same_place.cluster).await else {
        return same_place;
    };
    for id in ids.iter().rev().take(INDEXES_READ) {
        let Ok(Some(index)) = catalog.cluster_index(&same_place.cluster, id).await else {
            continue;
        };
        let mut owners = index.nodes.iter().filter(|n| {
            let mut t = n.tokens.clone();
            t.sort();
            t == wanted
        });
        if let Some(owner) = owners.next() {
            return owner.slot.clone();
        }
    }
    same_place
}

/// Whether the `Data.db` of `f`'s SSTable is still in `staging` (Cassandra
/// moves it last when it imports the SSTable).
fn still_staged(staging: &Path, f: &anchises_backup::manifest::FileEntry) -> bool {
    let Some((descriptor, _)) = f.name.rsplit_once('-') else {
        return true;
    };
    anchises_backup::restore::staged_path(staging, f)
        .with_file_name(format!("{descriptor}-Data.db"))
        .exists()
}

fn table_of(f: &anchises_backup::manifest::FileEntry) -> String {
    format!(
        "{}.{}",
        f.keyspace,
        anchises_backup::layout::table_name_of_dir(&f.table_dir).unwrap_or(&f.table_dir)
    )
}

/// The bytes of `files` still to download: those neither kept already by
/// the restore continued in `continued_dir` (in its staging, or taken back
/// into `returned` by a full-node restore's rollback) nor of a table in
/// `imported` (Cassandra moved those files into the table), nor `linked`
/// from the store rather than copied.
fn bytes_to_stage(
    files: &[anchises_backup::manifest::FileEntry],
    continued_dir: Option<&Path>,
    imported: &[String],
    linked: &dyn Fn(&anchises_backup::manifest::FileEntry) -> bool,
) -> u64 {
    let kept: Vec<PathBuf> = continued_dir
        .map(|dir| vec![dir.join("staging"), dir.join(full::RETURNED)])
        .unwrap_or_default();
    files
        .iter()
        .filter(|f| {
            !imported.contains(&table_of(f))
                && !linked(f)
                && !kept
                    .iter()
                    .any(|d| anchises_backup::restore::is_staged(d, f))
        })
        .map(|f| f.size)
        .sum()
}

/// [`space_blocker`] for the staging under `staging_root`, and for the data
/// directory `data` too when it is on another filesystem: Cassandra's import
/// then copies the staged files onto it (an online restore), as the layout
/// does (a full-node restore, whose previous data stays there meanwhile).
fn space_blockers(staging_root: &Path, data: &Path, to_stage: u64, min_free: u64) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let device = |dir: &Path| std::fs::metadata(dir).map(|m| m.dev()).ok();
    let mut dirs = vec![staging_root];
    if device(data).is_some_and(|d| Some(d) != device(staging_root)) {
        dirs.push(data);
    }
    dirs.into_iter()
        .filter_map(|dir| space_blocker(dir, to_stage, min_free))
        .collect()
}

/// Why staging `to_stage` bytes under `dir` would leave less than
/// `min_free` bytes free on its filesystem; `None` when it fits (or the free
/// space cannot be read).
fn space_blocker(dir: &Path, to_stage: u64, min_free: u64) -> Option<String> {
    let stat = match nix::sys::statvfs::statvfs(dir) {
        Ok(stat) => stat,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the free space");
            return None;
        }
    };
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    (free < to_stage.saturating_add(min_free)).then(|| {
        format!(
            "not enough free space under {}: staging the restore needs {}, {} is free, and {} must stay free (backup.restore_min_free)",
            dir.display(),
            bytesize::ByteSize::b(to_stage),
            bytesize::ByteSize::b(free),
            bytesize::ByteSize::b(min_free)
        )
    })
}

/// Saves the state of restore `id` in `dir` as it starts: its request,
/// base backup and start time, keeping what an earlier run of it saved.
/// When it `continued` an unfinished restore whose directory a discard set
/// aside meanwhile, nothing is written and the request gets 409: the
/// restore is not brought back half (its imported tables forgotten).
fn claim_state(
    dir: &Path,
    id: &str,
    continued: bool,
    cluster_part: bool,
    req: &CreateRestore,
    base: &BackupId,
) -> Result<SavedState, StartError> {
    let existing = read_state(dir);
    if continued && existing.is_none() {
        return Err(StartError::Busy(format!(
            "restore {id} was deleted while this request was planned: make the request again"
        )));
    }
    let mut saved = existing.unwrap_or_default();
    saved.request = req.clone();
    saved.started_at.get_or_insert_with(OffsetDateTime::now_utc);
    saved.cluster_part = cluster_part;
    saved.base = Some(base.clone());
    write_state(dir, &saved)
        .map_err(|e| StartError::Invalid(format!("cannot write the restore state: {e}")))?;
    Ok(saved)
}

/// What [`Restores::discard`] did.
#[derive(Debug, PartialEq)]
pub enum Discard {
    Unknown,
    Running,
    /// A full-node restore that stopped between moving the node's data
    /// aside and finding the restored node healthy: that data is kept.
    HoldsPreviousData(PathBuf),
    Done(Staged),
    Failed(String),
}

/// Files and bytes staged by a restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Staged {
    pub files: u64,
    pub bytes: u64,
}

/// Where a full-node restore keeps the node's previous data until the
/// restored node is healthy (within the restore's directory).
const PREVIOUS_DATA: &str = "before";

/// The previous data a full-node restore `id` under `root` moved aside and
/// still holds, if any.
fn holds_previous_data(root: &Path, id: &str) -> Option<PathBuf> {
    let previous = root.join(id).join(PREVIOUS_DATA);
    std::fs::read_dir(&previous)
        .is_ok_and(|mut entries| entries.next().is_some())
        .then_some(previous)
}

/// Prefix of a restore directory being removed (skipped by every reader;
/// removed at start if a sidecar stopped while removing it).
const DISCARDED: &str = ".discarded-";

/// Every restore directory under `root` with its saved state, by id.
fn saved_states(root: &Path) -> Vec<(String, SavedState)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                return None;
            }
            read_state(&entry.path()).map(|saved| (id, saved))
        })
        .collect()
}

/// The restores under `root` that a sidecar left unfinished, as
/// `interrupted` runs: their request, when they started, the tables already
/// imported and, as progress, what is staged. Also finishes removing
/// directories a stopped sidecar was discarding.
fn interrupted(root: &Path) -> Vec<Run> {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(DISCARDED) {
                let _ = remove_discarded(&entry.path());
            }
        }
    }
    // A sidecar that stopped between saving a restore as finished and
    // removing its directory left what is left of it (of a full-node
    // restore, the previous data): nothing needs it any more.
    for (id, _) in saved_states(root).into_iter().filter(|(_, s)| s.finished) {
        if let Ok(Some(aside)) = set_aside(root, &id) {
            let _ = remove_discarded(&aside);
        }
    }
    saved_states(root)
        .into_iter()
        .filter(|(_, saved)| !saved.finished)
        .map(|(id, saved)| {
            let staged = staged(&root.join(&id).join("staging"));
            let progress = Progress::default();
            progress.files_done.store(staged.files, Ordering::Relaxed);
            progress.bytes_done.store(staged.bytes, Ordering::Relaxed);
            let phase = if saved.importing.is_some() || !saved.imported.is_empty() {
                "import"
            } else {
                "stage"
            };
            let started_at = saved.started_at.unwrap_or_else(|| {
                std::fs::metadata(root.join(&id).join("state.json"))
                    .and_then(|m| m.modified())
                    .map(OffsetDateTime::from)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc())
            });
            Run {
                scope: Scope::Node,
                job: None,
                started_at,
                request: saved.request,
                cancel: CancellationToken::new(),
                progress: Arc::new(progress),
                shared: Arc::new(Mutex::new(Shared {
                    phase: phase.into(),
                    imported: saved.imported,
                    state: Some(RestoreState::Interrupted),
                    error: Some(match holds_previous_data(root, &id) {
                        Some(previous) => format!(
                            "the sidecar stopped during full-node restore {id}, after moving the node's previous data aside to {}; the same request (anchises restore resume {id}) continues it and removes that data once the restored node is healthy",
                            previous.display()
                        ),
                        None => format!(
                            "the sidecar stopped during restore {id}; the same request (anchises restore resume {id}) continues it, DELETE /v1/restores/{id} discards what it staged"
                        ),
                    }),
                    ..Shared::default()
                })),
                id,
            }
        })
        .collect()
}

/// The files and bytes staged below `dir` (none if it does not exist); not
/// counting downloads cut short (`.<name>.<uuid>.part`).
fn staged(dir: &Path) -> Staged {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .fold(Staged::default(), |sum, e| Staged {
            files: sum.files + 1,
            bytes: sum.bytes + e.metadata().map(|m| m.len()).unwrap_or(0),
        })
}

/// Whether `s` can be a restore id: letters, digits, `-` and `_`, at most 64
/// (`r1a2b3c4d5e6f`); so also a plain directory name.
pub fn is_restore_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Renames restore `id`'s directory under `root` out of the way (so nothing
/// continues it); `None` if there is no restore `id` (no saved state, or not
/// a restore id).
fn set_aside(root: &Path, id: &str) -> std::io::Result<Option<PathBuf>> {
    let dir = root.join(id);
    if !is_restore_id(id) || !dir.join("state.json").is_file() {
        return Ok(None);
    }
    let aside = root.join(format!("{DISCARDED}{id}"));
    if aside.exists() {
        remove_discarded(&aside)?;
    }
    std::fs::rename(&dir, &aside)?;
    Ok(Some(aside))
}

/// Removes a restore directory set aside, with the previous data it holds
/// (that of directories that could not be moved aside whole included).
fn remove_discarded(dir: &Path) -> std::io::Result<()> {
    full::remove_inside(&dir.join(PREVIOUS_DATA))?;
    std::fs::remove_dir_all(dir)
}

/// Removes a directory from [`set_aside`] (if there was one) and says what
/// was staged in it.
async fn remove_set_aside(dir: Option<PathBuf>) -> Discard {
    let Some(dir) = dir else {
        return Discard::Done(Staged::default());
    };
    let removed = tokio::task::spawn_blocking(move || {
        let staged = staged(&dir.join("staging"));
        remove_discarded(&dir).map(|()| staged)
    })
    .await;
    match removed {
        Ok(Ok(staged)) => Discard::Done(staged),
        Ok(Err(e)) => Discard::Failed(e.to_string()),
        Err(e) => Discard::Failed(e.to_string()),
    }
}

/// Sets restore `id`'s directory under `root` aside, then removes it.
async fn remove_restore_dir(root: &Path, id: &str) -> Discard {
    match set_aside(root, id) {
        Ok(aside) => remove_set_aside(aside).await,
        Err(e) => Discard::Failed(e.to_string()),
    }
}

/// Removes the directory of a restore that has finished (saved as such):
/// what is left of its staging, the previous data of a full-node restore,
/// its saved state. Set aside first, so a crash while removing it leaves
/// nothing that looks like a restore (the next sidecar removes the rest).
/// The removal itself (gigabytes of previous data, for a full-node restore)
/// goes on in the background: nothing waits for it once the directory is
/// aside.
fn remove_finished(dir: &Path) {
    let (Some(root), Some(id)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let id = id.to_string_lossy().into_owned();
    match set_aside(root, &id) {
        Ok(aside) => {
            tokio::spawn(async move {
                if let Discard::Failed(e) = remove_set_aside(aside).await {
                    tracing::warn!(restore = %id, error = %e, "cannot remove the finished restore's directory");
                }
            });
        }
        Err(e) => {
            tracing::warn!(restore = %id, error = %e, "cannot set the finished restore's directory aside");
        }
    }
}

fn read_state(dir: &Path) -> Option<SavedState> {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
}

fn write_state(dir: &Path, state: &SavedState) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state).expect("serializes"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, dir.join("state.json"))
}

/// [`write_state`], failing as the restore's own error.
fn save_state(dir: &Path, state: &SavedState) -> Result<(), BackupError> {
    write_state(dir, state).map_err(|source| BackupError::File {
        path: dir.to_path_buf(),
        source,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

enum TableCheck {
    Same,
    Missing,
    NotInBackupSchema,
    Differs { live: String, backup: String },
}

/// The backed-up schema (statements of `DESCRIBE SCHEMA`) against the live one.
struct SchemaCheck<'a> {
    backup: Vec<&'a str>,
    live: &'a [SchemaElement],
}

impl<'a> SchemaCheck<'a> {
    fn new(backup: &'a str, live: &'a [SchemaElement]) -> Self {
        SchemaCheck {
            backup: backup
                .split("\n\n")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect(),
            live,
        }
    }

    fn backup_statement(&self, kind: &str, name: &str) -> Option<&'a str> {
        let prefixes = [
            format!("CREATE {kind} {name} "),
            format!("CREATE {kind} {name}("),
            format!("CREATE {kind} IF NOT EXISTS {name} "),
        ];
        self.backup
            .iter()
            .find(|s| prefixes.iter().any(|p| s.starts_with(p.as_str())))
            .copied()
    }

    fn live_statement(&self, kind: &str, ks: &str, name: &str) -> Option<&'a str> {
        self.live
            .iter()
            .find(|e| e.kind == kind && e.keyspace == ks && e.name == name)
            .map(|e| e.create_statement.as_str())
    }

    fn check(&self, table: &str) -> TableCheck {
        let (ks, name) = table.split_once('.').expect("ks.table");
        let Some(backup) = self.backup_statement("TABLE", table) else {
            return TableCheck::NotInBackupSchema;
        };
        match self.live_statement("table", ks, name) {
            None => TableCheck::Missing,
            Some(live) if one_line(live) == one_line(backup) => TableCheck::Same,
            Some(live) => TableCheck::Differs {
                live: live.to_string(),
                backup: backup.to_string(),
            },
        }
    }

    /// Statements creating what `tables` need and the live schema lacks: the
    /// keyspace, its types, the table.
    fn creates(&self, tables: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for table in tables {
            let (ks, name) = table.split_once('.').expect("ks.table");
            if self.live_statement("table", ks, name).is_some() {
                continue;
            }
            if !self
                .live
                .iter()
                .any(|e| e.keyspace == ks && e.kind == "keyspace")
            {
                if let Some(s) = self.backup_statement("KEYSPACE", ks) {
                    let s = s.replacen("CREATE KEYSPACE", "CREATE KEYSPACE IF NOT EXISTS", 1);
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            for s in &self.backup {
                if s.starts_with(&format!("CREATE TYPE {ks}.")) {
                    let s = s.replacen("CREATE TYPE", "CREATE TYPE IF NOT EXISTS", 1);
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            if let Some(s) = self.backup_statement("TABLE", table) {
                out.push(s.replacen("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1));
            }
        }
        out
    }
}

/// Lays out a new node's data from its slot's backup in another cluster
/// before Cassandra first starts: the user keyspaces plus `system_schema` and
/// `system_auth` (never the source node's own system keyspace: the new node
/// gets its own host id and cluster name). Staged files are kept, so a
/// sidecar that dies here continues at its next start.
pub async fn seed_from_backup(
    config: &crate::config::Config,
    slot: u32,
    from: &crate::cluster::RestoreFrom,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = crate::backup::state_dir(config)
        .join("restore")
        .join(format!("seed-{}-{}", from.cluster, from.backup_id));
    if dir.join("done").exists() {
        return Ok(());
    }
    let store_config = config
        .backup_store()
        .map_err(|e| anyhow::anyhow!("backup store: {e}"))?;
    let store = anchises_backup::ObjectStore::open(&store_config).await?;
    let catalog = Catalog::new(store.clone());
    let source = SlotRef {
        cluster: from.cluster.clone(),
        dc: config.node.dc.clone(),
        slot,
    };
    let id = anchises_backup::manifest::BackupId::parse(&from.backup_id)
        .map_err(|e| anyhow::anyhow!(e))?;
    let selection = Selection {
        schema_tables: true,
        ..Selection::default()
    };
    let plan = plan_slot(&catalog, &source, &Point::Backup(id), &selection).await?;
    let staging = dir.join("staging");
    stage(
        &store,
        &plan.files,
        &staging,
        config.backup.concurrency * 2,
        &anchises_backup::upload::Throttle::new(Some(config.backup.rate_limit.as_u64())),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .context("cannot download the backup")?;
    let data = crate::cassandra::files::NodeLayout::new(&config.node.data_dir).data;
    for f in &plan.files {
        let from_path = anchises_backup::restore::staged_path(&staging, f);
        let to = data.join(&f.keyspace).join(&f.table_dir).join(&f.name);
        if to.exists() {
            continue;
        }
        std::fs::create_dir_all(to.parent().expect("files have a directory"))?;
        std::fs::rename(&from_path, &to)
            .with_context(|| format!("cannot move {} into place", from_path.display()))?;
    }
    std::fs::write(dir.join("done"), b"")?;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(anchises_backup::restore::synced_marker(&staging));
    tracing::info!(
        source = %source.label(),
        source_cluster = %source.cluster,
        backup = %plan.base,
        files = plan.files.len(),
        bytes = plan.bytes,
        "node data laid out from the backup"
    );
    Ok(())
}

/// When each phase of a restore began, for its result's `phase_seconds`.
#[derive(Default)]
struct PhaseClock(Mutex<Vec<(String, std::time::Instant)>>);

impl PhaseClock {
    /// What sets a restore's phase: in its shared state, and on this clock.
    fn setter<'a>(&'a self, shared: &'a Mutex<Shared>) -> impl Fn(&str) + Sync + 'a {
        move |phase: &str| {
            self.0
                .lock()
                .expect("phase clock")
                .push((phase.to_string(), std::time::Instant::now()));
            shared.lock().expect("restore lock").phase = phase.to_string();
        }
    }

    /// See [`phase_seconds`].
    fn seconds(&self) -> (Value, Option<f64>) {
        phase_seconds(&self.0.lock().expect("phase clock"))
    }
}

/// How long each phase of a restore took (the phases in the order they ran,
/// each until the next began), and for a full-node restore how long
/// Cassandra was down: from the stop until the restored node was up
/// ("verify" began).
fn phase_seconds(phases: &[(String, std::time::Instant)]) -> (Value, Option<f64>) {
    let mut seconds = std::collections::BTreeMap::<&str, f64>::new();
    for pair in phases.windows(2) {
        *seconds.entry(&pair[0].0).or_default() +=
            pair[1].1.duration_since(pair[0].1).as_secs_f64();
    }
    let at = |name: &str| phases.iter().find(|(p, _)| p == name).map(|(_, t)| *t);
    let down = at("stop")
        .zip(at("verify"))
        .map(|(stop, up)| up.duration_since(stop).as_secs_f64());
    (json!(seconds), down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(ks: &str, kind: &str, name: &str, stmt: &str) -> SchemaElement {
        SchemaElement {
            keyspace: ks.into(),
            kind: kind.into(),
            name: name.into(),
            create_statement: stmt.into(),
        }
    }

    #[test]
    fn phase_seconds_time_each_phase_and_the_downtime() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64, p: &str| (p.to_string(), t0 + std::time::Duration::from_millis(ms));
        let phases = [
            at(0, "stage"),
            at(3000, "stop"),
            at(3500, "swap"),
            at(3600, "start"),
            at(9600, "verify"),
            at(9700, "done"),
        ];
        let (seconds, down) = phase_seconds(&phases);
        let close = |v: &Value, want: f64| (v.as_f64().expect("seconds") - want).abs() < 1e-9;
        assert!(close(&seconds["stage"], 3.0), "{seconds}");
        assert!(close(&seconds["stop"], 0.5), "{seconds}");
        assert!(close(&seconds["swap"], 0.1), "{seconds}");
        assert!(close(&seconds["start"], 6.0), "{seconds}");
        assert!(close(&seconds["verify"], 0.1), "{seconds}");
        assert!(seconds.get("done").is_none(), "{seconds}");
        assert!((down.expect("down") - 6.6).abs() < 1e-9);
        // A restore that never stopped the node had no downtime.
        assert_eq!(phase_seconds(&phases[..1]).1, None);
    }

    const BACKUP: &str = "CREATE KEYSPACE shop WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '1'}  AND durable_writes = true;\n\nCREATE TYPE shop.address (\n    street text\n);\n\nCREATE TABLE shop.orders (\n    id int PRIMARY KEY,\n    ship address\n) WITH comment = '';\n\nCREATE TABLE shop.items (\n    id int PRIMARY KEY\n);";

    #[test]
    fn schema_checks_compare_statements_and_create_what_is_missing() {
        let live = vec![
            el("shop", "keyspace", "shop", "CREATE KEYSPACE shop ..."),
            el(
                "shop",
                "table",
                "items",
                "CREATE TABLE shop.items (\n    id text PRIMARY KEY\n);",
            ),
        ];
        let check = SchemaCheck::new(BACKUP, &live);
        assert!(matches!(check.check("shop.orders"), TableCheck::Missing));
        assert!(matches!(
            check.check("shop.items"),
            TableCheck::Differs { .. }
        ));
        assert!(matches!(
            check.check("shop.nope"),
            TableCheck::NotInBackupSchema
        ));
        let creates = check.creates(&["shop.orders".into()]);
        assert_eq!(creates.len(), 2, "{creates:?}");
        assert!(creates[0].starts_with("CREATE TYPE IF NOT EXISTS shop.address"));
        assert!(creates[1].starts_with("CREATE TABLE IF NOT EXISTS shop.orders"));
        let empty: Vec<SchemaElement> = vec![];
        let creates = SchemaCheck::new(BACKUP, &empty).creates(&["shop.items".into()]);
        assert!(
            creates[0].starts_with("CREATE KEYSPACE IF NOT EXISTS shop"),
            "{creates:?}"
        );
        let same = vec![el(
            "shop",
            "table",
            "items",
            "CREATE TABLE shop.items (\n  id int PRIMARY KEY\n);",
        )];
        assert!(matches!(
            SchemaCheck::new(BACKUP, &same).check("shop.items"),
            TableCheck::Same
        ));
    }

    #[tokio::test]
    async fn the_source_slot_is_the_one_that_had_the_tokens() {
        use anchises_backup::manifest::{
            BackupId, ClusterIndex, ClusterNode, NodeBackupState, FORMAT,
        };
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(anchises_backup::ObjectStore::filesystem(dir.path()).unwrap());
        let slot = |n: u32| SlotRef {
            cluster: "src".into(),
            dc: "dc1".into(),
            slot: n,
        };
        let tokens = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        // Nothing recorded: the slot of the same place.
        assert_eq!(
            slot_by_tokens(&catalog, slot(0), &tokens(&["5"])).await,
            slot(0)
        );
        let node = |n: u32, t: &[&str]| ClusterNode {
            slot: slot(n),
            rack: "r1".into(),
            address: format!("10.0.0.{n}"),
            tokens: tokens(t),
            state: NodeBackupState::Done,
            error: None,
            totals: Default::default(),
        };
        let now = OffsetDateTime::now_utc();
        let index = ClusterIndex {
            format: FORMAT,
            backup_id: BackupId::parse("20261126T030000Z-1a2b3c").unwrap(),
            cluster: "src".into(),
            requested_at: now,
            finished_at: now,
            complete: true,
            keyspaces: vec![],
            nodes: vec![node(0, &["-100", "7"]), node(1, &["5", "300"])],
        };
        catalog.put_cluster_index(&index).await.unwrap();
        // Slots numbered the other way round in the target: found by tokens,
        // in any order.
        assert_eq!(
            slot_by_tokens(&catalog, slot(0), &tokens(&["300", "5"])).await,
            slot(1)
        );
        assert_eq!(
            slot_by_tokens(&catalog, slot(1), &tokens(&["7", "-100"])).await,
            slot(0)
        );
        // Tokens no node had: the same place, which the plan then blocks.
        assert_eq!(
            slot_by_tokens(&catalog, slot(1), &tokens(&["1"])).await,
            slot(1)
        );
        assert_eq!(
            slot_by_tokens(&catalog, slot(1), &tokens(&["5"])).await,
            slot(1)
        );
    }

    #[test]
    fn requests_are_checked() {
        let mut r = CreateRestore {
            backup_id: Some("x/../y".into()),
            ..CreateRestore::default()
        };
        assert!(r.point().is_err());
        r.backup_id = None;
        r.at = Some("yesterday".into());
        assert!(r.point().unwrap_err().contains("RFC 3339"));
        r.at = Some("2026-11-26T09:55:00Z".into());
        assert!(matches!(r.point(), Ok(Point::At(_))));
        assert_eq!(
            parse_time("2026-11-26T09:55Z"),
            parse_time("2026-11-26T09:55:00Z")
        );
        assert!(parse_time("2026-11-26").is_err());
        r.tables = vec!["system.local".into()];
        assert!(r.selection().is_err());
        r.tables = vec!["shop".into()];
        assert!(r.selection().unwrap_err().contains("keyspace.table"));
        r.tables = vec!["shop.orders".into()];
        assert!(r.selection().is_ok());
        r.nodes = vec!["10.0.0.2".into()];
        assert!(r.selection().unwrap_err().contains("scope"));
        r.scope = Scope::Cluster;
        assert!(r.selection().is_ok());
        r.mode = RestoreMode::Full;
        r.tables.clear();
        assert!(r.selection().unwrap_err().contains("one node at a time"));
    }

    fn write(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_nodes_seed_cut_short_mid_layout_is_finished_at_its_next_start() {
        use anchises_backup::files::{snapshot_files, StoreSettings};
        use anchises_backup::node::{NodeInfo, SlotBackups};
        let dir = tempfile::tempdir().unwrap();
        let store_root = dir.path().join("store");
        // The source node's snapshot: a user table, the schema, and its own
        // system keyspace (which a new node never takes).
        let source = dir.path().join("source");
        let tables = [
            ("shop", "orders-0123456789abcdef0123456789abcdef"),
            ("system_schema", "tables-afddfb9dbc1e30688056eed6c302ba09"),
            ("system", "local-7ad54392bcdd35a684174e047860b377"),
        ];
        let content = |i: usize, component: &str| -> Vec<u8> {
            let len = 200_000 + 1000 * i + component.len();
            (0..len).map(|b| (b * 31 + i * 7) as u8).collect()
        };
        for (i, (ks, table)) in tables.iter().enumerate() {
            for component in ["Data.db", "Index.db", "TOC.txt"] {
                let path = source
                    .join(ks)
                    .join(table)
                    .join("snapshots/base")
                    .join(format!("nb-1-big-{component}"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, content(i, component)).unwrap();
            }
        }
        let store = anchises_backup::ObjectStore::filesystem(&store_root).unwrap();
        let slot = SlotRef {
            cluster: "prod".into(),
            dc: "dc1".into(),
            slot: 0,
        };
        let backups = SlotBackups::new(
            store,
            slot,
            &source,
            &dir.path().join("source-state"),
            StoreSettings::default(),
        );
        let id = BackupId::parse("20261126T030000Z-1a2b3c").unwrap();
        let info = NodeInfo {
            rack: "r1".into(),
            address: "127.0.0.9".into(),
            cassandra_version: "5.0.9".into(),
            partitioner: "org.apache.cassandra.dht.Murmur3Partitioner".into(),
            tokens: vec!["0".into()],
            schema: String::new(),
        };
        backups
            .back_up_snapshot(
                &id,
                OffsetDateTime::now_utc(),
                info,
                Vec::new(),
                snapshot_files(&source, "base").unwrap(),
                &Progress::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();

        let mut config = crate::config::Config::default();
        config.node.data_dir = dir.path().join("copy");
        config.node.dc = "dc1".into();
        config.backup.path = Some(store_root.clone());
        let from = crate::cluster::RestoreFrom {
            cluster: "prod".into(),
            backup_id: id.to_string(),
        };
        let data = crate::cassandra::files::NodeLayout::new(&config.node.data_dir).data;
        let seed = crate::backup::state_dir(&config)
            .join("restore")
            .join(format!("seed-prod-{id}"));
        let live = |i: usize, component: &str| {
            let (ks, table) = tables[i];
            data.join(ks)
                .join(table)
                .join(format!("nb-1-big-{component}"))
        };
        seed_from_backup(&config, 0, &from).await.unwrap();
        assert!(seed.join("done").exists());
        assert!(!seed.join("staging").exists());

        // Cut short mid-layout: one file still in staging, one neither staged
        // nor laid out, and the seed not marked done.
        std::fs::remove_file(seed.join("done")).unwrap();
        let staged = seed
            .join("staging")
            .join(tables[0].0)
            .join(tables[0].1)
            .join("nb-1-big-Data.db");
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::rename(live(0, "Data.db"), &staged).unwrap();
        std::fs::remove_file(live(1, "Index.db")).unwrap();

        seed_from_backup(&config, 0, &from).await.unwrap();
        for i in 0..2 {
            for component in ["Data.db", "Index.db", "TOC.txt"] {
                assert!(
                    std::fs::read(live(i, component)).unwrap() == content(i, component),
                    "{} differs from the source",
                    live(i, component).display()
                );
            }
        }
        assert!(
            !data.join("system").exists(),
            "the source's own system keyspace was laid out"
        );
        assert!(seed.join("done").exists());
        assert!(!seed.join("staging").exists());

        // Done: a later start lays nothing out again.
        std::fs::remove_file(live(0, "TOC.txt")).unwrap();
        seed_from_backup(&config, 0, &from).await.unwrap();
        assert!(!live(0, "TOC.txt").exists());
    }

    #[test]
    fn a_resume_whose_restore_was_discarded_while_it_was_planned_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let base = BackupId::parse("20261126T030000Z-1a2b3c").unwrap();
        let request = CreateRestore {
            keyspaces: vec!["shop".into()],
            ..CreateRestore::default()
        };
        let interrupted = SavedState {
            request: request.clone(),
            imported: vec!["shop.items".into()],
            started_at: Some(OffsetDateTime::now_utc() - time::Duration::hours(1)),
            ..SavedState::default()
        };
        write_state(&root.join("r1"), &interrupted).unwrap();

        // Continued while its state is there: what it imported is kept.
        let saved = claim_state(&root.join("r1"), "r1", true, false, &request, &base).unwrap();
        assert_eq!(saved.imported, ["shop.items"]);
        assert_eq!(saved.started_at, interrupted.started_at);
        assert_eq!(
            read_state(&root.join("r1")).unwrap().base,
            Some(base.clone())
        );

        // A DELETE sets the directory aside between the resume's plan and its
        // claim: the resume gets 409 and writes nothing back.
        let aside = set_aside(root, "r1").unwrap().expect("r1 is a restore");
        let refused = claim_state(&root.join("r1"), "r1", true, false, &request, &base);
        match refused {
            Err(StartError::Busy(m)) => assert!(m.contains("r1 was deleted"), "{m}"),
            other => panic!("expected 409, got {other:?}"),
        }
        assert!(!root.join("r1").exists());
        assert!(aside.join("state.json").is_file());

        // A new restore (not a continuation) starts afresh under a new id.
        let fresh = claim_state(&root.join("r2"), "r2", false, false, &request, &base).unwrap();
        assert!(fresh.imported.is_empty());
        assert!(root.join("r2/state.json").is_file());
    }

    #[tokio::test]
    async fn unfinished_restores_are_listed_as_interrupted_and_can_be_discarded() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let started = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let request = CreateRestore {
            keyspaces: vec!["shop".into()],
            ..CreateRestore::default()
        };
        // Mid-download: two files staged.
        let downloading = SavedState {
            request: request.clone(),
            started_at: Some(started),
            ..SavedState::default()
        };
        write_state(&root.join("r1"), &downloading).unwrap();
        write(
            &root.join("r1/staging/shop/orders-1/nb-1-big-Data.db"),
            3000,
        );
        write(
            &root.join("r1/staging/shop/orders-1/nb-1-big-Index.db"),
            200,
        );
        write(
            &root.join("r1/staging/shop/orders-1/.nb-2-big-Data.db.0f.part"),
            99,
        );
        // Mid-import, from a version that did not record the start.
        let importing = SavedState {
            imported: vec!["shop.items".into()],
            importing: Some("shop.orders".into()),
            ..SavedState::default()
        };
        write_state(&root.join("r2"), &importing).unwrap();
        // Finished, but its directory was not removed yet (with the previous
        // data of a full-node restore): removed at start, not listed.
        let finished = SavedState {
            finished: true,
            ..SavedState::default()
        };
        write_state(&root.join("r3"), &finished).unwrap();
        write(&root.join("r3/before/data/ks/t-1/nb-1-big-Data.db"), 10);
        // Not restores: a cluster copy's seed, and a directory a stopped
        // sidecar was removing.
        write(&root.join("seed-orders-x/done"), 0);
        write(&root.join(".discarded-r9/staging/a/b/c"), 10);

        let mut runs = interrupted(root);
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        assert!(!root.join(".discarded-r9").exists());
        assert!(!root.join("r3").exists());
        assert!(!root.join(".discarded-r3").exists());
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"]);
        let r1 = &runs[0];
        assert_eq!(r1.request, request);
        assert_eq!(r1.started_at, started);
        assert_eq!(r1.job, None);
        let view = r1.progress.view();
        assert_eq!((view.files_done, view.bytes_done), (2, 3200));
        {
            let shared = r1.shared.lock().unwrap();
            assert_eq!(shared.state, Some(RestoreState::Interrupted));
            assert_eq!(shared.phase, "stage");
            assert!(shared
                .error
                .as_ref()
                .unwrap()
                .contains("DELETE /v1/restores/r1"));
            let r2 = runs[1].shared.lock().unwrap();
            assert_eq!(r2.phase, "import");
            assert_eq!(r2.imported, ["shop.items"]);
        }

        // Discarding: the directory is set aside at once (nothing continues
        // it), then removed, saying what was staged.
        let aside = set_aside(root, "r1").unwrap().unwrap();
        assert!(!root.join("r1").exists());
        assert!(saved_states(root).iter().all(|(id, _)| id != "r1"));
        assert_eq!(
            remove_set_aside(Some(aside)).await,
            Discard::Done(Staged {
                files: 2,
                bytes: 3200
            })
        );
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 2);
        // A full-node restore that moved the node's data aside keeps it.
        write_state(&root.join("r4"), &SavedState::default()).unwrap();
        assert_eq!(holds_previous_data(root, "r4"), None);
        write(
            &root.join("r4/before/data/system/local-1/nb-1-big-Data.db"),
            10,
        );
        assert_eq!(
            holds_previous_data(root, "r4"),
            Some(root.join("r4/before"))
        );
        let r4 = interrupted(root)
            .into_iter()
            .find(|r| r.id == "r4")
            .unwrap();
        let error = r4.shared.lock().unwrap().error.clone().unwrap();
        assert!(error.contains("previous data aside to"), "{error}");
        // Only restore directories, by a restore id.
        for id in ["seed-orders-x", "..", "", "r2/..", "nothing"] {
            assert_eq!(set_aside(root, id).unwrap(), None, "{id}");
        }
        assert!(root.join("seed-orders-x/done").exists());
        assert!(root.join("r2/state.json").exists());
    }

    #[test]
    fn a_continued_restore_counts_staged_returned_and_imported_files_as_there() {
        let dir = tempfile::tempdir().unwrap();
        let file = |table_dir: &str, name: &str, size: u64| anchises_backup::manifest::FileEntry {
            keyspace: "ks".into(),
            table_dir: table_dir.into(),
            name: name.into(),
            size,
            hash: String::new(),
            key: String::new(),
            stored_size: size,
            compression: anchises_backup::manifest::Compression::None,
            modified_at: None,
        };
        let id = "0123456789abcdef0123456789abcdef";
        let files = [
            file(&format!("staged-{id}"), "nb-1-big-Data.db", 100),
            file(&format!("returned-{id}"), "nb-1-big-Data.db", 1_000),
            file(&format!("imported-{id}"), "nb-1-big-Data.db", 10_000),
            file(&format!("missing-{id}"), "nb-1-big-Data.db", 100_000),
            // Half downloaded: a file of another size is not kept.
            file(&format!("partial-{id}"), "nb-1-big-Data.db", 1_000_000),
        ];
        let place = |under: &str, f: &anchises_backup::manifest::FileEntry, len: u64| {
            let path = anchises_backup::restore::staged_path(&dir.path().join(under), f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        };
        place("staging", &files[0], 100);
        place(full::RETURNED, &files[1], 1_000);
        place("staging", &files[4], 999);
        let imported = vec!["ks.imported".to_string()];
        let copied = |_: &anchises_backup::manifest::FileEntry| false;
        assert_eq!(
            bytes_to_stage(&files, Some(dir.path()), &imported, &copied),
            100_000 + 1_000_000
        );
        // A new restore keeps nothing.
        assert_eq!(bytes_to_stage(&files, None, &[], &copied), 1_111_100);
        // A file linked from the store takes no room.
        let linked = |f: &anchises_backup::manifest::FileEntry| f.table_dir.starts_with("missing-");
        assert_eq!(bytes_to_stage(&files, None, &[], &linked), 1_011_100);
    }

    #[test]
    fn a_data_directory_on_another_filesystem_needs_the_room_too() {
        let staging = tempfile::tempdir().unwrap();
        let free = |dir: &Path| {
            let stat = nix::sys::statvfs::statvfs(dir).unwrap();
            stat.blocks_available() as u64 * stat.fragment_size() as u64
        };
        let huge = free(staging.path()) + (1 << 40);
        // One filesystem: one check.
        let same = staging.path().join("data");
        std::fs::create_dir(&same).unwrap();
        assert_eq!(
            space_blockers(staging.path(), &same, 1 << 10, 0),
            Vec::<String>::new()
        );
        assert_eq!(space_blockers(staging.path(), &same, huge, 0).len(), 1);
        // A data directory not there yet (a lost disk) is not checked.
        let missing = staging.path().join("missing");
        assert_eq!(space_blockers(staging.path(), &missing, huge, 0).len(), 1);
        // Another filesystem (tmpfs): both are checked, each named.
        let other = tempfile::tempdir_in("/dev/shm").expect("/dev/shm, a tmpfs");
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(other.path()),
            dev(staging.path()),
            "/dev/shm is another filesystem"
        );
        let huge = huge.max(free(other.path()) + (1 << 40));
        let both = space_blockers(staging.path(), other.path(), huge, 0);
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(
            both[1].contains(&other.path().display().to_string()),
            "{both:?}"
        );
    }

    #[test]
    fn a_restore_that_would_fill_the_disk_is_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let stat = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        assert!(free > 1 << 20, "the test needs 1 MiB free: {free}");
        assert_eq!(space_blocker(dir.path(), 1 << 10, 1 << 10), None);
        let too_big = space_blocker(dir.path(), free + (1 << 30), 0).unwrap();
        assert!(too_big.contains("staging the restore needs"), "{too_big}");
        assert!(
            too_big.contains(&dir.path().display().to_string()),
            "{too_big}"
        );
        // The room to keep counts as well (by a margin that other writers
        // on the disk cannot change meanwhile).
        let reserved = space_blocker(dir.path(), 1 << 10, free + (1 << 30)).unwrap();
        assert!(reserved.contains("backup.restore_min_free"), "{reserved}");
    }
}
