//! Cluster restores, coordinated through the backup store like cluster
//! backups: no node drives another. The node asked plans every target node's
//! part (each from the source slot with its tokens), creates missing schema
//! once, and writes a request naming the nodes; each node's sidecar sees it,
//! restores its own slot under the request's id and keeps its status up to
//! date; the asking node follows the statuses. Deleting the request (a cancel)
//! makes every node stop its part.
//!
//! ```text
//! <cluster>/restores/requests/<id>.json               the request
//! <cluster>/restores/status/<id>/<dc>/<slot>.json      each node's part
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchises_backup::files::ProgressView;
use anchises_backup::manifest::{BackupId, SlotRef};
use anchises_backup::restore::{Point, Selection};
use anchises_backup::{BackupError, ObjectKey, ObjectStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{
    finish, new_id, CreateRestore, Discard, PlanView, RestoreState, Restores, Run, Shared,
};
// Polling, pick-up timeout and request lifetime as for cluster backups.
use crate::backup::cluster::{
    get_json, put_json, ClusterBackups, RequestedNode, PICKUP_TIMEOUT, POLL, REQUEST_TTL,
};
use crate::backup::{Scope, StartError};
use crate::jobs::Job;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
    /// What each node restores (scope node, the point resolved).
    request: CreateRestore,
    nodes: Vec<Target>,
    /// The node that follows the parts; after a restart of its sidecar it
    /// takes the restore up again (absent in requests of older versions).
    #[serde(default)]
    coordinator: Option<SlotRef>,
    /// The restore as it was asked (scope cluster), for the API.
    #[serde(default)]
    asked: Option<CreateRestore>,
}

/// What a coordinating job does: the whole restore, or (after a restart of
/// the coordinator's sidecar) following one whose request is in the store.
enum Coordination {
    Plan(ClusterPlan),
    Follow(Request),
}

/// What ends a coordination early: a cancel (the restore ends for every node)
/// or the sidecar's shutdown (the nodes go on; see [`Restores::adopt`]).
struct Stops {
    cancel: CancellationToken,
    shutdown: CancellationToken,
}

impl Stops {
    fn fired(&self) -> bool {
        self.cancel.is_cancelled() || self.shutdown.is_cancelled()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Target {
    slot: SlotRef,
    address: String,
}

/// One node's part of a cluster restore, as its status object and the API
/// show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePart {
    pub slot: SlotRef,
    pub address: String,
    pub state: RestoreState,
    pub phase: String,
    /// The source slot it restores from.
    pub source: Option<SlotRef>,
    pub progress: ProgressView,
    pub imported_tables: Vec<String>,
    pub error: Option<String>,
    /// When the node last wrote this (absent from older versions' statuses).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// A running part whose node has not reported for this long is given up: its
/// sidecar stopped mid-part and has not come back (a sidecar that restarts
/// reports again within seconds, while it waits for Cassandra too).
const SILENT_AFTER: Duration = Duration::from_secs(120);

impl NodePart {
    /// Whether the coordinator goes on waiting for this part, `waited` after
    /// it wrote the request.
    fn awaited(&self, waited: Duration, now: OffsetDateTime) -> bool {
        match self.state {
            RestoreState::Pending => waited < PICKUP_TIMEOUT,
            RestoreState::Running => self.updated_at.is_none_or(|t| now - t < SILENT_AFTER),
            _ => false,
        }
    }

    /// Why a part that the coordinator stopped waiting for did not finish.
    fn why_unfinished(&self) -> String {
        match (self.state, &self.error) {
            (RestoreState::Pending, _) => format!(
                "did not start its part within {}s (is its sidecar running?)",
                PICKUP_TIMEOUT.as_secs()
            ),
            (RestoreState::Running, _) => format!(
                "stopped reporting its part{} (is its sidecar running?)",
                self.updated_at
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            ),
            (_, Some(e)) => e.clone(),
            (state, None) => format!("{state:?}").to_lowercase(),
        }
    }
}

/// A coordinator removes its request within seconds of the last part
/// ending (or, restarted, takes the restore up again within seconds): one
/// left this long after that has lost its coordinator for good, and a node
/// of the restore takes it over ([`Restores::take_over_abandoned`]).
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// How often a node looks for such requests.
const TAKE_OVER_CHECK: Duration = Duration::from_secs(60);

/// Whether `request`, whose nodes' parts are `parts`, lost its coordinator
/// for good as of `now`: no part is awaited any more, and the last of them
/// (or the request, if none reported) was heard of over [`ABANDONED_AFTER`]
/// ago.
fn abandoned(request: &Request, parts: &[NodePart], now: OffsetDateTime) -> bool {
    let waited = Duration::try_from(now - request.requested_at).unwrap_or_default();
    let last = parts
        .iter()
        .filter_map(|p| p.updated_at)
        .fold(request.requested_at, OffsetDateTime::max);
    !parts.iter().any(|p| p.awaited(waited, now)) && now - last > ABANDONED_AFTER
}

/// Where the records of the nodes that took over abandoned cluster
/// restores are, in the coordinator store (under the cluster), named as the
/// requests are.
const TAKEOVERS: &str = "restores/takeover/";

fn takeover_record(id: &str) -> String {
    format!("{TAKEOVERS}{id}.json")
}

/// The cluster's restore requests, each with its key.
async fn requests_of(cluster: &ClusterBackups) -> Result<Vec<(ObjectKey, Request)>, BackupError> {
    let store = cluster.store();
    let prefix = format!("{}/restores/requests/", cluster.cluster());
    let mut requests = Vec::new();
    for object in store.list(&prefix).await? {
        if let Some(request) = get_json::<Request>(store, &object.key).await? {
            requests.push((object.key, request));
        }
    }
    Ok(requests)
}

/// Each node's part of `request` as its status says (pending without one).
async fn parts_of(store: &ObjectStore, request: &Request) -> Result<Vec<NodePart>, BackupError> {
    let mut parts = Vec::with_capacity(request.nodes.len());
    for t in &request.nodes {
        let part = get_json::<NodePart>(store, &status_key(&request.id, &t.slot)?).await?;
        parts.push(part.unwrap_or_else(|| pending(t)));
    }
    Ok(parts)
}

fn request_key(cluster: &str, id: &str) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!("{cluster}/restores/requests/{id}.json"))
}

fn status_key(id: &str, slot: &SlotRef) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!(
        "{}/restores/status/{id}/{}/{}.json",
        slot.cluster, slot.dc, slot.slot
    ))
}

/// The sum of the nodes' progress: counts and rates add up, the ETA is the
/// slowest node's.
pub fn sum_progress(nodes: &[NodePart]) -> ProgressView {
    let mut sum = ProgressView::default();
    for n in nodes {
        let p = &n.progress;
        sum.files_total += p.files_total;
        sum.files_done += p.files_done;
        sum.bytes_total += p.bytes_total;
        sum.bytes_done += p.bytes_done;
        sum.files_uploaded += p.files_uploaded;
        sum.bytes_uploaded += p.bytes_uploaded;
        sum.files_reused += p.files_reused;
        sum.bytes_reused += p.bytes_reused;
        sum.rate_bytes_per_sec += p.rate_bytes_per_sec;
        sum.eta_secs = match (sum.eta_secs, p.eta_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        sum.errors
            .extend(p.errors.iter().map(|e| format!("{}: {e}", n.slot.label())));
    }
    sum
}

/// The plan of a cluster restore: each target node's, and what blocks it.
pub struct ClusterPlan {
    /// What each node is asked to restore.
    node_request: CreateRestore,
    targets: Vec<(Target, PlanView)>,
    /// Tables to create (once, by the asking node) before the nodes start.
    create: Vec<String>,
    schema: String,
    pub blockers: Vec<String>,
}

impl ClusterPlan {
    pub fn view(&self) -> Value {
        let files: usize = self.targets.iter().map(|(_, p)| p.files).sum();
        let bytes: u64 = self.targets.iter().map(|(_, p)| p.bytes).sum();
        json!({
            "scope": "cluster",
            "backup_id": self.node_request.backup_id,
            "at": self.node_request.at,
            "files": files,
            "bytes": bytes,
            "create": self.create,
            "blockers": self.blockers,
            "nodes": self.targets.iter().map(|(t, p)| {
                let mut v = serde_json::to_value(p).expect("serializes");
                v["address"] = json!(t.address);
                v
            }).collect::<Vec<_>>(),
        })
    }
}

impl Restores {
    fn cluster_backups(&self) -> Result<&Arc<ClusterBackups>, StartError> {
        self.backups.cluster.as_ref().ok_or_else(|| {
            StartError::Invalid(
                "a cluster restore needs cluster mode (cluster.coordinator): this node has no cluster registry".into(),
            )
        })
    }

    /// [`Restores::cluster_backups`] for a running job.
    fn job_cluster(&self) -> Result<&Arc<ClusterBackups>, BackupError> {
        self.cluster_backups()
            .map_err(|e| BackupError::Invalid(e.to_string()))
    }

    /// Plans a cluster restore: the targets (every claimed slot, or those at
    /// `nodes`), the point (by default the source's newest complete cluster
    /// backup), and each target's plan against its registered tokens and the
    /// live schema.
    pub async fn plan_cluster(&self, req: &CreateRestore) -> Result<ClusterPlan, StartError> {
        let cluster = self.cluster_backups()?;
        req.point().map_err(StartError::Invalid)?;
        req.selection().map_err(StartError::Invalid)?;
        let claimed = cluster
            .claimed()
            .await
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        for address in &req.nodes {
            if !claimed.iter().any(|n| &n.address == address) {
                return Err(StartError::Invalid(format!(
                    "{address} is not a node of cluster {}; its nodes are {}",
                    cluster.cluster(),
                    claimed
                        .iter()
                        .map(|n| n.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let targets: Vec<RequestedNode> = claimed
            .into_iter()
            .filter(|n| req.nodes.is_empty() || req.nodes.contains(&n.address))
            .collect();
        let mut node_request = CreateRestore {
            scope: Scope::Node,
            nodes: Vec::new(),
            dry_run: false,
            create_schema: false,
            ..req.clone()
        };
        if req.backup_id.is_none() && req.at.is_none() {
            // One backup for every node: the newest complete cluster backup.
            let source = req
                .source_cluster
                .clone()
                .unwrap_or_else(|| cluster.cluster().to_string());
            let selection = req.selection().map_err(StartError::Invalid)?;
            let id = self
                .newest_complete(&source, &selection)
                .await?
                .ok_or_else(|| {
                    StartError::Invalid(format!(
                        "cluster {source} has no complete cluster backup of every keyspace the restore takes; give backup_id or at"
                    ))
                })?;
            node_request.backup_id = Some(id.to_string());
        }
        debug_assert!(!matches!(node_request.point(), Ok(Point::Latest)));
        let live = self.live_schema().await?;
        let mut plan = ClusterPlan {
            node_request: node_request.clone(),
            targets: Vec::new(),
            create: Vec::new(),
            schema: String::new(),
            blockers: Vec::new(),
        };
        let planning = CreateRestore {
            create_schema: req.create_schema,
            ..node_request
        };
        for n in targets {
            let (slot_plan, view) = self
                .plan_for(&planning, &n.slot, Some(n.tokens.clone()), &live)
                .await
                .map_err(|e| match e {
                    StartError::Invalid(m) => {
                        StartError::Invalid(format!("{} ({}): {m}", n.slot.label(), n.address))
                    }
                    StartError::Store(m) => {
                        StartError::Store(format!("{} ({}): {m}", n.slot.label(), n.address))
                    }
                    other => other,
                })?;
            plan.blockers.extend(
                view.blockers
                    .iter()
                    .map(|b| format!("{} ({}): {b}", n.slot.label(), n.address)),
            );
            for t in &view.create {
                if !plan.create.contains(t) {
                    plan.create.push(t.clone());
                }
            }
            if plan.schema.is_empty() {
                plan.schema = slot_plan.schema;
            }
            plan.targets.push((
                Target {
                    slot: n.slot,
                    address: n.address,
                },
                view,
            ));
        }
        Ok(plan)
    }

    /// The newest complete cluster backup of `cluster` that holds what
    /// `selection` takes.
    async fn newest_complete(
        &self,
        cluster: &str,
        selection: &Selection,
    ) -> Result<Option<BackupId>, StartError> {
        let catalog = self.catalog();
        let read = |e: BackupError| StartError::Store(format!("cannot read the backups: {e}"));
        for id in catalog
            .cluster_backup_ids(cluster)
            .await
            .map_err(read)?
            .iter()
            .rev()
        {
            if let Some(index) = catalog.cluster_index(cluster, id).await.map_err(read)? {
                if index.complete && selection.covered_by(&index.keyspaces) {
                    return Ok(Some(id.clone()));
                }
            }
        }
        Ok(None)
    }

    /// Starts a cluster restore: its job creates the missing schema, writes
    /// the request and follows the nodes' parts until each has finished.
    pub async fn start_cluster(
        self: &Arc<Self>,
        req: CreateRestore,
    ) -> Result<(String, Job), StartError> {
        let plan = self.plan_cluster(&req).await?;
        if !plan.blockers.is_empty() {
            return Err(StartError::Invalid(format!(
                "restore blocked: {}",
                plan.blockers.join("; ")
            )));
        }
        let id = new_id();
        let job = self.coordinate_job(
            &id,
            req,
            OffsetDateTime::now_utc(),
            plan.targets.iter().map(|(t, _)| pending(t)).collect(),
            Coordination::Plan(plan),
        )?;
        Ok((id, job))
    }

    /// Starts the job that coordinates cluster restore `id` and records its run.
    fn coordinate_job(
        self: &Arc<Self>,
        id: &str,
        asked: CreateRestore,
        started_at: OffsetDateTime,
        nodes: Vec<NodePart>,
        work: Coordination,
    ) -> Result<Job, StartError> {
        let phase = match work {
            Coordination::Plan(_) => "schema",
            Coordination::Follow(_) => "restore",
        };
        let shared = Arc::new(Mutex::new(Shared {
            phase: phase.into(),
            state: Some(RestoreState::Running),
            nodes: Some(nodes),
            ..Shared::default()
        }));
        let cancel = CancellationToken::new();
        let this = self.clone();
        let (job_shared, job_cancel, job_id) = (shared.clone(), cancel.clone(), id.to_string());
        let coordinator_asked = asked.clone();
        let job = self
            .backups
            .jobs
            .start(
                "restore-cluster",
                "restore.cluster",
                move |job_token| async move {
                    // A job's token fires when the sidecar shuts down: the
                    // coordination stops and leaves the request to the nodes,
                    // and the restarted sidecar takes it up again. A cancel
                    // asked for withdraws the request.
                    let stops = Stops {
                        cancel: job_cancel.clone(),
                        shutdown: job_token,
                    };
                    let outcome = match work {
                        Coordination::Plan(plan) => {
                            this.coordinate(&job_id, coordinator_asked, plan, &job_shared, &stops)
                                .await
                        }
                        Coordination::Follow(request) => {
                            this.follow(&request, &job_shared, &stops).await
                        }
                    };
                    job_shared.lock().expect("restore lock").phase = "done".into();
                    finish(&job_shared, outcome, false)
                },
            )
            .map_err(StartError::Conflict)?;
        self.runs.lock().expect("runs lock").push(Run {
            id: id.to_string(),
            scope: Scope::Cluster,
            job: Some(job.id),
            started_at,
            request: asked,
            cancel,
            progress: Default::default(),
            shared,
        });
        Ok(job)
    }

    /// Takes up a cluster restore this node coordinated before its sidecar
    /// restarted: follows the nodes' parts to the end, as if it had not.
    fn adopt(self: &Arc<Self>, request: Request) -> Result<Job, StartError> {
        let asked = request.asked.clone().unwrap_or_else(|| CreateRestore {
            scope: Scope::Cluster,
            ..request.request.clone()
        });
        let nodes = request.nodes.iter().map(pending).collect();
        self.coordinate_job(
            &request.id.clone(),
            asked,
            request.requested_at,
            nodes,
            Coordination::Follow(request),
        )
    }

    /// Whether this sidecar has coordinated (or is coordinating) restore `id`.
    fn coordinates(&self, id: &str) -> bool {
        self.runs
            .lock()
            .expect("runs lock")
            .iter()
            .any(|r| r.id == id && r.scope == Scope::Cluster)
    }

    async fn coordinate(
        &self,
        id: &str,
        asked: CreateRestore,
        plan: ClusterPlan,
        shared: &Mutex<Shared>,
        stops: &Stops,
    ) -> Result<Value, BackupError> {
        let cluster = self.job_cluster()?;
        // Missing schema is created here, once: nodes creating the same table
        // at once would give it different ids.
        if !plan.create.is_empty() {
            self.create_missing(&plan.schema, &plan.create).await?;
        }
        if stops.fired() {
            return Err(BackupError::Cancelled);
        }
        shared.lock().expect("restore lock").phase = "restore".into();
        let request = Request {
            id: id.to_string(),
            requested_at: OffsetDateTime::now_utc(),
            request: plan.node_request.clone(),
            nodes: plan.targets.iter().map(|(t, _)| t.clone()).collect(),
            coordinator: Some(self.backups.slot().clone()),
            asked: Some(asked),
        };
        put_json(
            cluster.store(),
            &request_key(cluster.cluster(), id)?,
            &request,
        )
        .await?;
        self.follow(&request, shared, stops).await
    }

    /// Follows the nodes' parts of a requested cluster restore until each has
    /// ended (or has not started in time); then removes the request and the
    /// nodes' statuses and sums up.
    async fn follow(
        &self,
        request: &Request,
        shared: &Mutex<Shared>,
        stops: &Stops,
    ) -> Result<Value, BackupError> {
        let cluster = self.job_cluster()?;
        let store = cluster.store();
        let (id, targets) = (request.id.as_str(), &request.nodes);
        let key = request_key(cluster.cluster(), id)?;
        let started = tokio::time::Instant::now();
        let parts = loop {
            let parts = parts_of(store, request).await?;
            let now = OffsetDateTime::now_utc();
            let waiting = parts.iter().any(|p| p.awaited(started.elapsed(), now));
            shared.lock().expect("restore lock").nodes = Some(parts.clone());
            if !waiting {
                break parts;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stops.cancel.cancelled() => {
                    // The nodes see their request gone and stop their parts.
                    store.delete(&key).await?;
                    return Err(BackupError::Cancelled);
                }
                _ = stops.shutdown.cancelled() => return Err(BackupError::Cancelled),
            }
        };
        store.delete(&key).await?;
        // Every part has ended and its node stopped reporting: the statuses
        // have served their purpose (the result below keeps what they said).
        let statuses: Vec<ObjectKey> = targets
            .iter()
            .map(|t| status_key(id, &t.slot))
            .collect::<Result<_, _>>()?;
        store.delete_many(&statuses).await?;
        let failures: Vec<String> = parts
            .iter()
            .filter(|p| p.state != RestoreState::Done)
            .map(|p| format!("{} ({}): {}", p.slot.label(), p.address, p.why_unfinished()))
            .collect();
        if !failures.is_empty() {
            return Err(BackupError::Invalid(format!(
                "cluster restore {id}: {} of {} nodes did not finish: {}",
                failures.len(),
                parts.len(),
                failures.join("; ")
            )));
        }
        let progress = sum_progress(&parts);
        Ok(json!({
            "id": id,
            "nodes": parts.len(),
            "files": progress.files_total,
            "bytes": progress.bytes_total,
            "tables": parts.iter().flat_map(|p| p.imported_tables.clone()).collect::<HashSet<_>>(),
        }))
    }

    /// Runs until `stop`: picks up cluster restore requests naming this
    /// node's slot, and reports each part's state while it runs.
    pub async fn watch_cluster(self: Arc<Self>, stop: CancellationToken) {
        let Some(cluster) = self.backups.cluster.clone() else {
            return;
        };
        if let Err(e) = self.sweep(&cluster).await {
            tracing::warn!(error = %e, "cannot clear up after ended cluster restores");
        }
        let handled = Arc::new(Mutex::new(HashSet::new()));
        let mut checked = tokio::time::Instant::now();
        loop {
            // One listing serves both looks.
            let looked = match requests_of(&cluster).await {
                Ok(requests) => {
                    if checked.elapsed() >= TAKE_OVER_CHECK {
                        checked = tokio::time::Instant::now();
                        if let Err(e) = self.take_over_abandoned(&cluster, &requests).await {
                            tracing::warn!(error = %e, "cannot check for abandoned cluster restores");
                        }
                    }
                    self.pick_up(&cluster, &requests, &handled, &stop).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = looked {
                tracing::warn!(error = %e, "cannot check for cluster restore requests");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Takes over, on one node of each, the cluster restores whose
    /// coordinator is gone for good ([`abandoned`]): follows it as the
    /// coordinator would have (which ends it at once, every part having
    /// ended), so the request and the statuses go and this node's
    /// `GET /v1/restores/{id}` shows how it went.
    async fn take_over_abandoned(
        self: &Arc<Self>,
        cluster: &Arc<ClusterBackups>,
        requests: &[(ObjectKey, Request)],
    ) -> Result<(), BackupError> {
        let store = cluster.store();
        let me = self.backups.slot().clone();
        let now = OffsetDateTime::now_utc();
        // The take-over records of restores that have ended since.
        let live: HashSet<String> = requests
            .iter()
            .map(|(_, r)| format!("{}.json", r.id))
            .collect();
        cluster
            .release_claims(TAKEOVERS, |name| live.contains(name))
            .await?;
        for (_, request) in requests {
            let id = request.id.clone();
            if request.coordinator.as_ref() == Some(&me)
                || self.coordinates(&id)
                || !request.nodes.iter().any(|n| n.slot == me)
                // (implied by `abandoned`, but spares reading the statuses)
                || now - request.requested_at < ABANDONED_AFTER
                || !abandoned(request, &parts_of(store, request).await?, now)
                || !cluster.claim_once(&takeover_record(&id), &me).await?
            {
                continue;
            }
            tracing::warn!(
                restore = %id,
                coordinator = request.coordinator.as_ref().map(|c| c.label()).unwrap_or_default(),
                "the node coordinating this cluster restore is gone: this node ends it"
            );
            if let Err(e) = self.adopt(request.clone()) {
                // Claimed but not taken up (a job of this node's runs): the
                // claim goes, for the next look here or on another node.
                let record = format!("{id}.json");
                cluster
                    .release_claims(TAKEOVERS, |name| name != record)
                    .await?;
                return Err(BackupError::Invalid(format!(
                    "cannot take over cluster restore {id}: {e}"
                )));
            }
        }
        Ok(())
    }

    async fn pick_up(
        self: &Arc<Self>,
        cluster: &Arc<ClusterBackups>,
        requests: &[(ObjectKey, Request)],
        handled: &Arc<Mutex<HashSet<String>>>,
        stop: &CancellationToken,
    ) -> Result<(), BackupError> {
        let store = cluster.store();
        let me = self.backups.slot().clone();
        for (request_object, request) in requests {
            let id = request.id.clone();
            if request.coordinator.as_ref() == Some(&me) && !self.coordinates(&id) {
                match self.adopt(request.clone()) {
                    Ok(job) => {
                        tracing::info!(restore = %id, job = %job.id, "coordinating the cluster restore again after a restart")
                    }
                    Err(e) => {
                        tracing::warn!(restore = %id, error = %e, "cannot take up coordinating the cluster restore")
                    }
                }
            }
            let Some(target) = request.nodes.iter().find(|n| n.slot == me) else {
                continue;
            };
            if OffsetDateTime::now_utc() - request.requested_at > REQUEST_TTL
                || handled.lock().expect("handled lock").contains(&id)
            {
                continue;
            }
            let key = status_key(&id, &me)?;
            let reported = get_json::<NodePart>(store, &key).await?;
            let part = PartKeys {
                id: id.clone(),
                request: request_object.clone(),
                status: key.clone(),
                requested_at: request.requested_at,
            };
            let report = |part: PartKeys, ended: bool| {
                tokio::spawn(self.clone().report(
                    cluster.clone(),
                    part,
                    target.clone(),
                    handled.clone(),
                    stop.clone(),
                    ended,
                ));
            };
            if reported
                .as_ref()
                .is_some_and(|p| !matches!(p.state, RestoreState::Pending | RestoreState::Running))
            {
                handled.lock().expect("handled lock").insert(id.clone());
                // Ended (failed or cancelled) before this sidecar started,
                // with its files still here: they go with the request.
                if self.show_scoped(&id, Scope::Node).is_some() {
                    report(part, true);
                }
                continue;
            }
            // Not started yet, or started by a sidecar that died: (re)start
            // it; its saved state makes a restarted part continue.
            let outcome = self
                .start_as(request.request.clone(), Some(id.clone()))
                .await;
            match outcome {
                Ok((_, job)) => {
                    handled.lock().expect("handled lock").insert(id.clone());
                    tracing::info!(restore = %id, job = %job.id, "cluster restore request picked up");
                    report(part, false);
                }
                Err(StartError::Conflict(c)) => {
                    tracing::info!(restore = %id, running = %c.running.id, "cluster restore request waits for a running backup or restore");
                }
                // Cassandra not answering yet (a sidecar that just started):
                // the next look tries again.
                Err(StartError::Unavailable(why)) => {
                    tracing::info!(restore = %id, %why, "cluster restore request waits for cassandra");
                    // A part this node had started says it is still alive.
                    if let Some(part) = reported.filter(|p| p.state == RestoreState::Running) {
                        let waiting = NodePart {
                            phase: "waiting for cassandra".into(),
                            updated_at: Some(OffsetDateTime::now_utc()),
                            ..part
                        };
                        put_json(store, &key, &waiting).await?;
                    }
                }
                Err(e) => {
                    handled.lock().expect("handled lock").insert(id.clone());
                    let part = NodePart {
                        state: RestoreState::Failed,
                        error: Some(e.to_string()),
                        ..pending(target)
                    };
                    put_json(store, &key, &part).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes this node's part to its status object until it ends (unless it
    /// has `ended` already, as reported by an earlier sidecar), then
    /// waits for the request to go. Once it is gone (the restore ended, was
    /// cancelled, or its coordinator gave up on this part) the part is
    /// stopped if it still runs, and its staged files and status are
    /// removed: nothing can continue it (the same cluster restore made again
    /// has a new id) and nobody reads the status any more.
    async fn report(
        self: Arc<Self>,
        cluster: Arc<ClusterBackups>,
        part: PartKeys,
        target: Target,
        handled: Arc<Mutex<HashSet<String>>>,
        stop: CancellationToken,
        mut ended: bool,
    ) {
        let store = cluster.store();
        let id = &part.id;
        loop {
            let Some(view) = self.show_scoped(id, Scope::Node) else {
                return;
            };
            if view.state == RestoreState::Cancelled && stop.is_cancelled() {
                // Stopped by this sidecar's shutdown, not by a cancel: the
                // status stays running for the next sidecar to continue.
                handled.lock().expect("handled lock").remove(id);
                return;
            }
            if matches!(
                store.head(&part.request).await,
                Err(StoreError::NotFound { .. })
            ) {
                self.cancel_scoped(id, Scope::Node);
                self.remove_part(store, &part).await;
                return;
            }
            if !ended {
                let part_now = NodePart {
                    slot: target.slot.clone(),
                    address: target.address.clone(),
                    state: view.state,
                    phase: view.phase.clone(),
                    source: view.plan.as_ref().map(|p| p.source.clone()),
                    progress: view.progress.clone(),
                    imported_tables: view.imported_tables.clone(),
                    error: view.error.clone(),
                    updated_at: Some(OffsetDateTime::now_utc()),
                };
                match put_json(store, &part.status, &part_now).await {
                    Ok(()) => ended = view.state != RestoreState::Running,
                    Err(e) => {
                        tracing::warn!(restore = %id, error = %e, "cannot report the restore's state")
                    }
                }
            } else if OffsetDateTime::now_utc() - part.requested_at > REQUEST_TTL {
                // A request nobody ends: its coordinator is gone for good.
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => {
                    // The sidecar stops: the next one picks the part up again
                    // (or, the request gone, removes what is left of it).
                    handled.lock().expect("handled lock").remove(id);
                    return;
                }
            }
        }
    }

    /// Removes what is left of this node's part of a cluster restore whose
    /// request is gone: once the part has stopped (it was just cancelled),
    /// its directory, then its status.
    async fn remove_part(&self, store: &ObjectStore, part: &PartKeys) {
        let id = &part.id;
        let started = tokio::time::Instant::now();
        let mut warn_at = started + PART_STOP_WARNING;
        // An import stops only between tables, so this can take a while.
        while self
            .show_scoped(id, Scope::Node)
            .is_some_and(|v| v.state == RestoreState::Running)
        {
            if tokio::time::Instant::now() >= warn_at {
                tracing::warn!(restore = %id, waited_s = started.elapsed().as_secs(), "the cancelled part has not stopped yet; its staged files go once it has");
                warn_at += PART_STOP_WARNING;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match self.remove_part_files(id).await {
            Discard::Done(staged) if staged.files > 0 => {
                tracing::info!(restore = %id, files = staged.files, bytes = staged.bytes, "removed the staged files of the ended part")
            }
            Discard::Failed(e) => {
                tracing::warn!(restore = %id, error = %e, "cannot remove the part's staged files")
            }
            _ => {}
        }
        if let Err(e) = store.delete(&part.status).await {
            tracing::warn!(restore = %id, error = %e, "cannot remove the part's status");
        }
        // A part an earlier sidecar left has nothing to continue any more.
        self.runs.lock().expect("runs lock").retain(|r| {
            !(r.id == *id
                && r.scope == Scope::Node
                && r.shared.lock().expect("restore lock").state == Some(RestoreState::Interrupted))
        });
    }

    /// At start: this node's parts of cluster restores whose request went
    /// while the sidecar was down lose their staged files, and every status
    /// object whose request is gone is removed (a node writes its status only
    /// after seeing the request, and the request goes first at the end).
    async fn sweep(&self, cluster: &ClusterBackups) -> Result<(), BackupError> {
        let store = cluster.store();
        let me = self.backups.slot().clone();
        let parts: Vec<String> = super::saved_states(&self.root())
            .into_iter()
            .filter(|(_, saved)| saved.cluster_part)
            .map(|(id, _)| id)
            .collect();
        for id in parts {
            let request = request_key(cluster.cluster(), &id)?;
            if matches!(store.head(&request).await, Err(StoreError::NotFound { .. })) {
                let part = PartKeys {
                    status: status_key(&id, &me)?,
                    request,
                    requested_at: OffsetDateTime::now_utc(),
                    id: id.clone(),
                };
                self.remove_part(store, &part).await;
            }
        }
        let orphans = orphan_statuses(store, cluster.cluster()).await?;
        if !orphans.is_empty() {
            tracing::info!(
                count = orphans.len(),
                "removing statuses of cluster restores that have ended"
            );
            store.delete_many(&orphans).await?;
        }
        Ok(())
    }
}

/// The keys of one node's part of a cluster restore.
struct PartKeys {
    id: String,
    request: ObjectKey,
    status: ObjectKey,
    requested_at: OffsetDateTime,
}

/// How often a cancelled part that has not stopped yet is logged.
const PART_STOP_WARNING: Duration = Duration::from_secs(120);

/// Status objects of `cluster`'s restores whose request is gone.
async fn orphan_statuses(store: &ObjectStore, cluster: &str) -> Result<Vec<ObjectKey>, StoreError> {
    let prefix = format!("{cluster}/restores/status/");
    let mut by_id: std::collections::BTreeMap<String, Vec<ObjectKey>> = Default::default();
    for object in store.list(&prefix).await? {
        let Some(id) = object.key.as_str()[prefix.len()..].split('/').next() else {
            continue;
        };
        by_id
            .entry(id.to_string())
            .or_default()
            .push(object.key.clone());
    }
    let mut orphans = Vec::new();
    for (id, keys) in by_id {
        let request = request_key(cluster, &id)?;
        if matches!(store.head(&request).await, Err(StoreError::NotFound { .. })) {
            orphans.extend(keys);
        }
    }
    Ok(orphans)
}

fn pending(t: &Target) -> NodePart {
    NodePart {
        slot: t.slot.clone(),
        address: t.address.clone(),
        state: RestoreState::Pending,
        phase: "pending".into(),
        source: None,
        progress: ProgressView::default(),
        imported_tables: Vec::new(),
        error: None,
        updated_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(state: RestoreState, updated_secs_ago: Option<i64>, now: OffsetDateTime) -> NodePart {
        NodePart {
            state,
            updated_at: updated_secs_ago.map(|s| now - time::Duration::seconds(s)),
            ..pending(&Target {
                slot: SlotRef {
                    cluster: "orders".into(),
                    dc: "dc1".into(),
                    slot: 1,
                },
                address: "10.0.0.2".into(),
            })
        }
    }

    #[test]
    fn the_coordinator_waits_for_live_parts_only() {
        let now = OffsetDateTime::now_utc();
        let early = Duration::from_secs(5);
        let late = PICKUP_TIMEOUT + Duration::from_secs(1);
        // Not started: waited for until the pick-up timeout.
        assert!(part(RestoreState::Pending, None, now).awaited(early, now));
        assert!(!part(RestoreState::Pending, None, now).awaited(late, now));
        // Running: as long as its node reports.
        assert!(part(RestoreState::Running, Some(3), now).awaited(late, now));
        let silent = part(RestoreState::Running, Some(121), now);
        assert!(!silent.awaited(early, now));
        assert!(
            silent
                .why_unfinished()
                .starts_with("stopped reporting its part at "),
            "{}",
            silent.why_unfinished()
        );
        // A status from a version that did not write the time: never silent.
        assert!(part(RestoreState::Running, None, now).awaited(late, now));
        for ended in [
            RestoreState::Done,
            RestoreState::Failed,
            RestoreState::Cancelled,
        ] {
            assert!(!part(ended, Some(0), now).awaited(early, now));
        }
    }

    #[test]
    fn a_request_left_long_after_its_parts_ended_is_abandoned() {
        let now = OffsetDateTime::now_utc();
        let ago = |secs: i64| now - time::Duration::seconds(secs);
        let request = |asked_secs_ago: i64| Request {
            id: "r1".into(),
            requested_at: ago(asked_secs_ago),
            request: CreateRestore::default(),
            nodes: Vec::new(),
            coordinator: None,
            asked: None,
        };
        let long = ABANDONED_AFTER.as_secs() as i64 + 60;
        let ended = [
            part(RestoreState::Done, Some(long), now),
            part(RestoreState::Failed, Some(long + 100), now),
        ];
        assert!(abandoned(&request(long + 600), &ended, now));
        // A part that ended a moment ago: its coordinator may be ending it.
        let recent = [
            part(RestoreState::Done, Some(long), now),
            part(RestoreState::Cancelled, Some(30), now),
        ];
        assert!(!abandoned(&request(long + 600), &recent, now));
        // A part still running and reporting: the restore goes on.
        let running = [
            part(RestoreState::Done, Some(long), now),
            part(RestoreState::Running, Some(2), now),
        ];
        assert!(!abandoned(&request(long + 600), &running, now));
        // A part that never started, long after the request: not awaited.
        let never = [part(RestoreState::Pending, None, now)];
        assert!(abandoned(&request(long), &never, now));
        assert!(!abandoned(&request(60), &never, now));
    }

    #[tokio::test]
    async fn statuses_whose_request_is_gone_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::filesystem(dir.path()).unwrap();
        let put = |key: String| {
            let store = store.clone();
            async move {
                let key = ObjectKey::new(key).unwrap();
                put_json(&store, &key, &json!({})).await.unwrap();
                key
            }
        };
        put("orders/restores/requests/r1.json".into()).await;
        put("orders/restores/status/r1/dc1/0.json".into()).await;
        put("orders/restores/status/r1/dc2/1.json".into()).await;
        let gone0 = put("orders/restores/status/r2/dc1/0.json".into()).await;
        let gone2 = put("orders/restores/status/r2/dc1/2.json".into()).await;
        // Another cluster's, in the same store.
        put("billing/restores/status/r3/dc1/0.json".into()).await;
        assert_eq!(
            orphan_statuses(&store, "orders").await.unwrap(),
            vec![gone0, gone2]
        );
        assert_eq!(orphan_statuses(&store, "empty").await.unwrap(), vec![]);
    }
}
