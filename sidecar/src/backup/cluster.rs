//! Cluster-wide backups, coordinated through the backup store: no node drives
//! another. The node asked writes a request naming every claimed slot; each
//! node's sidecar sees it, backs itself up under the request's id and writes
//! its status; the asking node collects the statuses and writes the cluster
//! index, which says whether every node finished. A node that fails, or never
//! picks the request up, is reported in the index and the job's error.
//!
//! The asking node holds the request's finisher record in the coordinator
//! store and renews it every [`HEARTBEAT`]. If it goes silent (its sidecar
//! died) for [`SILENT_AFTER`], any node takes the record over once no part
//! is awaited any more, and writes the index in its stead: an outcome is
//! never left unwritten.
//!
//! ```text
//! <cluster>/backups/requests/<id>.json               the request
//! <cluster>/backups/status/<id>/<dc>/<slot>.json      each node's state
//! <cluster>/backups/<id>.json                         the cluster index
//! <cluster>/backups/finisher/<id>.json                who writes it (coordinator store)
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchises_backup::manifest::{
    BackupId, ClusterIndex, ClusterNode, NodeBackupState, SlotRef, Totals, FORMAT,
};
use anchises_backup::{BackupError, ObjectKey, ObjectStore, StoreError};
use anchises_topology::{CasError, CasKey, CasStore, Registry, Version};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{BackupState, BackupSummary, Backups, Scope, StartError};
use crate::jobs::Job;

/// How often nodes look for requests, and the asking node for statuses.
pub(crate) const POLL: Duration = Duration::from_secs(2);
/// A node that has not started a request's backup by then is reported failed.
pub(crate) const PICKUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Requests older than this are ignored (their asker is gone).
pub(crate) const REQUEST_TTL: time::Duration = time::Duration::hours(24);
/// A node whose running part has not reported for this long is given up:
/// its sidecar stopped mid-backup and has not come back (a running part, or
/// one waiting for another backup to end, reports every [`HEARTBEAT`]).
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(120);
const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    backup_id: BackupId,
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
    keyspaces: Vec<String>,
    nodes: Vec<RequestedNode>,
}

/// A node that claims a slot in the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RequestedNode {
    pub slot: SlotRef,
    pub rack: String,
    pub address: String,
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Status {
    state: NodeBackupState,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    totals: Totals,
}

impl Status {
    /// Whether the coordinator goes on waiting for this node as of `now`:
    /// running (or waiting to run) and heard of within [`SILENT_AFTER`].
    fn awaited(&self, now: OffsetDateTime) -> bool {
        matches!(
            self.state,
            NodeBackupState::Running | NodeBackupState::Pending
        ) && now - self.at < SILENT_AFTER
    }

    /// Whether a part that waits to run should say so again: its last
    /// report is a [`HEARTBEAT`] old.
    fn report_due(&self, now: OffsetDateTime) -> bool {
        now - self.at >= HEARTBEAT
    }
}

/// Who collects a cluster backup's outcome and writes its index, as of `at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finisher {
    slot: SlotRef,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

/// Whether a request still waits for a part as of `now`: one not picked up
/// within [`PICKUP_TIMEOUT`] of the request, or one that is [`Status::awaited`].
fn awaits_a_part(
    statuses: &[(SlotRef, Option<Status>)],
    requested_at: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    statuses.iter().any(|(_, s)| match s {
        None => now - requested_at < PICKUP_TIMEOUT,
        Some(s) => s.awaited(now),
    })
}

pub struct ClusterBackups {
    store: ObjectStore,
    cluster: String,
    dcs: Vec<String>,
    registry: Registry,
    /// The coordinator store (the registry's), for the finisher records.
    coordination: Arc<dyn CasStore>,
    /// Requests this process has started a backup for.
    handled: Mutex<HashSet<BackupId>>,
}

fn request_key(cluster: &str, id: &BackupId) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!("{cluster}/backups/requests/{id}.json"))
}

fn finisher_key(cluster: &str, id: &BackupId) -> Result<CasKey, BackupError> {
    CasKey::new(format!("{cluster}/backups/finisher/{id}.json"))
        .map_err(|e| BackupError::Invalid(e.to_string()))
}

fn status_key(id: &BackupId, slot: &SlotRef) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!(
        "{}/backups/status/{id}/{}/{}.json",
        slot.cluster, slot.dc, slot.slot
    ))
}

pub(crate) async fn get_json<T: for<'de> Deserialize<'de>>(
    store: &ObjectStore,
    key: &ObjectKey,
) -> Result<Option<T>, BackupError> {
    match store.get(key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BackupError::Corrupt(format!("{key}: {e}"))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn put_json<T: Serialize>(
    store: &ObjectStore,
    key: &ObjectKey,
    value: &T,
) -> Result<(), BackupError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    store.put(key, bytes.into()).await?;
    Ok(())
}

/// Reports a node backup's outcome to its cluster backup's status object.
#[derive(Clone)]
pub struct Reporter {
    store: ObjectStore,
    key: ObjectKey,
}

impl Reporter {
    /// Runs `work` (the node's part), saying every [`HEARTBEAT`] that it is
    /// still running.
    pub async fn while_running<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep(HEARTBEAT) => self.still_running().await,
            }
        }
    }

    /// Says the part is running (or waiting to run), as of now.
    async fn running(&self) -> Result<(), BackupError> {
        let status = Status {
            state: NodeBackupState::Running,
            at: OffsetDateTime::now_utc(),
            error: None,
            totals: Totals::default(),
        };
        put_json(&self.store, &self.key, &status).await
    }

    /// [`Reporter::running`], a failure logged (the next one tries again).
    async fn still_running(&self) {
        if let Err(e) = self.running().await {
            tracing::warn!(key = %self.key, error = %e, "cannot report the node backup as running");
        }
    }

    pub async fn report(&self, outcome: &Result<Value, BackupError>) {
        let status = match outcome {
            Ok(v) => Status {
                state: NodeBackupState::Done,
                at: OffsetDateTime::now_utc(),
                error: None,
                totals: serde_json::from_value(v["totals"].clone()).unwrap_or_default(),
            },
            Err(e) => Status {
                state: NodeBackupState::Failed,
                at: OffsetDateTime::now_utc(),
                error: Some(e.to_string()),
                totals: Totals::default(),
            },
        };
        if let Err(e) = put_json(&self.store, &self.key, &status).await {
            tracing::error!(key = %self.key, error = %e, "cannot report the node backup's outcome");
        }
    }
}

impl ClusterBackups {
    /// `coordination` is the coordinator store, which holds the registry.
    pub fn new(
        store: ObjectStore,
        cluster: String,
        dcs: Vec<String>,
        coordination: Arc<dyn CasStore>,
    ) -> Self {
        ClusterBackups {
            store,
            registry: Registry::new(coordination.clone(), cluster.clone()),
            cluster,
            dcs,
            coordination,
            handled: Mutex::new(HashSet::new()),
        }
    }

    /// Makes `me` the finisher of backup `id`: creates the record (`held`
    /// `None`), or replaces the one at version `held` (a renewal, or a
    /// silent finisher's). `None` when another node holds it.
    async fn hold_finisher(
        &self,
        id: &BackupId,
        me: &SlotRef,
        held: Option<&Version>,
    ) -> Result<Option<Version>, BackupError> {
        let key = finisher_key(&self.cluster, id)?;
        let record = anchises_topology::cas::to_json_bytes(&Finisher {
            slot: me.clone(),
            at: OffsetDateTime::now_utc(),
        });
        let written = match held {
            None => self.coordination.put_if_absent(&key, record).await,
            Some(version) => self.coordination.put_if_match(&key, record, version).await,
        };
        match written {
            Ok(version) => Ok(Some(version)),
            Err(CasError::Conflict { .. }) => Ok(None),
            Err(e) => Err(BackupError::Invalid(format!(
                "cannot write the finisher record of cluster backup {id}: {e}"
            ))),
        }
    }

    /// Claims `what` (a record under the cluster in the coordinator store,
    /// such as the take-over of a cluster restore) for `me`: true for the
    /// first node to ask, false for every later one.
    pub(crate) async fn claim_once(&self, what: &str, me: &SlotRef) -> Result<bool, BackupError> {
        let key = CasKey::new(format!("{}/{what}", self.cluster))
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        let record = anchises_topology::cas::to_json_bytes(&Finisher {
            slot: me.clone(),
            at: OffsetDateTime::now_utc(),
        });
        match self.coordination.put_if_absent(&key, record).await {
            Ok(_) => Ok(true),
            Err(CasError::Conflict { .. }) => Ok(false),
            Err(e) => Err(BackupError::Invalid(format!("cannot write {what}: {e}"))),
        }
    }

    /// Removes the claims under `prefix` (see [`Self::claim_once`]) whose
    /// name (the rest of the key) `keep` rejects.
    pub(crate) async fn release_claims(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), BackupError> {
        let full = format!("{}/{prefix}", self.cluster);
        let cas = |e: CasError| BackupError::Invalid(format!("cannot remove a claim: {e}"));
        for key in self.coordination.list(&full).await.map_err(cas)? {
            if keep(&key.as_str()[full.len()..]) {
                continue;
            }
            if let Some(held) = self.coordination.get(&key).await.map_err(cas)? {
                match self.coordination.delete_if_match(&key, &held.version).await {
                    Ok(()) | Err(CasError::Conflict { .. }) => {}
                    Err(e) => return Err(cas(e)),
                }
            }
        }
        Ok(())
    }

    /// Renews the finisher record the coordinator holds; an error once
    /// another node has taken it over.
    async fn renew_finisher(
        &self,
        id: &BackupId,
        me: &SlotRef,
        held: &Version,
    ) -> Result<Version, BackupError> {
        self.hold_finisher(id, me, Some(held)).await?.ok_or_else(|| {
            BackupError::Invalid(format!(
                "cluster backup {id} is finished by another node: this one stopped collecting its outcome for over {}s",
                SILENT_AFTER.as_secs()
            ))
        })
    }

    pub(crate) fn store(&self) -> &ObjectStore {
        &self.store
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Every node that claims a slot, data center by data center.
    pub(crate) async fn claimed(&self) -> Result<Vec<RequestedNode>, BackupError> {
        let mut nodes = Vec::new();
        for dc in &self.dcs {
            let claims = self
                .registry
                .claims(dc)
                .await
                .map_err(|e| BackupError::Invalid(format!("cannot read the registry: {e}")))?;
            for (slot, (claim, _)) in claims {
                nodes.push(RequestedNode {
                    slot: SlotRef {
                        cluster: self.cluster.clone(),
                        dc: dc.clone(),
                        slot: slot as u32,
                    },
                    rack: claim.rack,
                    address: claim.address,
                    tokens: claim.tokens,
                });
            }
        }
        if nodes.is_empty() {
            return Err(BackupError::Invalid(
                "the registry has no claimed slot".into(),
            ));
        }
        Ok(nodes)
    }

    /// Writes the request and starts the job that collects the outcome.
    pub fn start(
        &self,
        backups: Arc<Backups>,
        id: BackupId,
        keyspaces: Vec<String>,
    ) -> Result<Job, StartError> {
        let job_id = id.clone();
        backups
            .jobs
            .clone()
            .start(
                "backup-cluster",
                "backup.cluster",
                move |cancel| async move {
                    let Some(cluster) = &backups.cluster else {
                        return Err("no cluster registry".to_string());
                    };
                    cluster
                        .coordinate(&job_id, keyspaces, backups.slot(), &cancel)
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .map_err(StartError::Conflict)
    }

    async fn coordinate(
        &self,
        id: &BackupId,
        keyspaces: Vec<String>,
        me: &SlotRef,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let nodes = self.claimed().await?;
        // Held before the request exists, so no node takes a request for
        // abandoned before its finisher said anything.
        let mut held = self.hold_finisher(id, me, None).await?.ok_or_else(|| {
            BackupError::Invalid(format!("cluster backup {id} already has a finisher"))
        })?;
        let request = Request {
            backup_id: id.clone(),
            requested_at: OffsetDateTime::now_utc(),
            keyspaces,
            nodes,
        };
        put_json(&self.store, &request_key(&self.cluster, id)?, &request).await?;
        let mut renewed = tokio::time::Instant::now();
        let statuses = loop {
            let statuses = self.statuses(id, &request.nodes).await?;
            if !awaits_a_part(&statuses, request.requested_at, OffsetDateTime::now_utc()) {
                break statuses;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = cancel.cancelled() => return Err(BackupError::Cancelled),
            }
            if renewed.elapsed() >= HEARTBEAT {
                held = self.renew_finisher(id, me, &held).await?;
                renewed = tokio::time::Instant::now();
            }
        };
        // Once more right before the index: a coordinator that was taken
        // for dead does not write over what its successor wrote.
        held = self.renew_finisher(id, me, &held).await?;
        self.finish(&request, statuses, &held).await
    }

    /// Writes the index of `request` from its parts' `statuses` (none
    /// awaited any more), then removes the request, the statuses and the
    /// finisher record (at `held`). An error names the parts that failed.
    async fn finish(
        &self,
        request: &Request,
        statuses: Vec<(SlotRef, Option<Status>)>,
        held: &Version,
    ) -> Result<Value, BackupError> {
        let id = &request.backup_id;
        let nodes = &request.nodes;
        let index_nodes: Vec<ClusterNode> = nodes
            .iter()
            .zip(statuses)
            .map(|(n, (_, status))| {
                let (state, error, totals) = match status {
                    // No longer awaited, yet not ended: it went silent.
                    Some(s) if matches!(s.state, NodeBackupState::Running | NodeBackupState::Pending) => (
                        NodeBackupState::Failed,
                        Some(format!(
                            "the node at {} stopped reporting its backup at {} (is its sidecar running?)",
                            n.address,
                            anchises_backup::manifest::rfc3339(s.at)
                        )),
                        s.totals,
                    ),
                    Some(s) => (s.state, s.error, s.totals),
                    None => (
                        NodeBackupState::Failed,
                        Some(format!(
                            "the node at {} did not start the backup within {}s (is its sidecar running?)",
                            n.address,
                            PICKUP_TIMEOUT.as_secs()
                        )),
                        Totals::default(),
                    ),
                };
                ClusterNode {
                    slot: n.slot.clone(),
                    rack: n.rack.clone(),
                    address: n.address.clone(),
                    tokens: n.tokens.clone(),
                    state,
                    error,
                    totals,
                }
            })
            .collect();
        let complete = index_nodes.iter().all(|n| n.state == NodeBackupState::Done);
        let index = ClusterIndex {
            format: FORMAT,
            backup_id: id.clone(),
            cluster: self.cluster.clone(),
            requested_at: request.requested_at,
            finished_at: OffsetDateTime::now_utc(),
            complete,
            keyspaces: request.keyspaces.clone(),
            nodes: index_nodes,
        };
        anchises_backup::catalog::Catalog::new(self.store.clone())
            .put_cluster_index(&index)
            .await?;
        self.store.delete(&request_key(&self.cluster, id)?).await?;
        // The index now holds what each node's status said.
        let statuses: Vec<ObjectKey> = nodes
            .iter()
            .map(|n| status_key(id, &n.slot))
            .collect::<Result<_, _>>()?;
        self.store.delete_many(&statuses).await?;
        let finisher = finisher_key(&self.cluster, id)?;
        if let Err(e) = self.coordination.delete_if_match(&finisher, held).await {
            tracing::warn!(backup = %id, error = %e, "cannot remove the finisher record");
        }
        if !complete {
            let failures: Vec<String> = index
                .nodes
                .iter()
                .filter(|n| n.state != NodeBackupState::Done)
                .map(|n| {
                    format!(
                        "{} ({}): {}",
                        n.slot.label(),
                        n.address,
                        n.error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            return Err(BackupError::Invalid(format!(
                "cluster backup {id} is incomplete: {} of {} nodes failed: {}",
                failures.len(),
                index.nodes.len(),
                failures.join("; ")
            )));
        }
        Ok(json!({
            "backup_id": id,
            "nodes": index.nodes.len(),
            "totals": sum(&index.nodes),
        }))
    }

    async fn statuses(
        &self,
        id: &BackupId,
        nodes: &[RequestedNode],
    ) -> Result<Vec<(SlotRef, Option<Status>)>, BackupError> {
        let mut out = Vec::with_capacity(nodes.len());
        for n in nodes {
            let status = get_json::<Status>(&self.store, &status_key(id, &n.slot)?).await?;
            out.push((n.slot.clone(), status));
        }
        Ok(out)
    }

    /// Per-node states of a cluster backup still running (its request exists).
    pub async fn running_detail(&self, id: &BackupId) -> Option<Value> {
        let request: Request = get_json(&self.store, &request_key(&self.cluster, id).ok()?)
            .await
            .ok()??;
        let statuses = self.statuses(id, &request.nodes).await.ok()?;
        Some(
            statuses
                .into_iter()
                .zip(&request.nodes)
                .map(|((slot, status), n)| {
                    json!({
                        "slot": slot,
                        "address": n.address,
                        "state": status.as_ref().map_or(NodeBackupState::Pending, |s| s.state),
                        "error": status.as_ref().and_then(|s| s.error.clone()),
                        "totals": status.map(|s| s.totals).unwrap_or_default(),
                    })
                })
                .collect(),
        )
    }

    /// Runs until `stop`: picks up requests naming this node's slot, and
    /// finishes those whose finisher went silent.
    pub async fn watch(self: Arc<Self>, backups: Arc<Backups>, stop: CancellationToken) {
        loop {
            // One listing and one read of each request serve both.
            match self.requests().await {
                Ok(requests) => {
                    if let Err(e) = self.pick_up(&backups, &requests).await {
                        tracing::warn!(error = %e, "cannot check for cluster backup requests");
                    }
                    if let Err(e) = self.finish_abandoned(backups.slot(), &requests).await {
                        tracing::warn!(error = %e, "cannot check for abandoned cluster backups");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster backup requests"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The cluster backup requests in the store.
    async fn requests(&self) -> Result<Vec<Request>, BackupError> {
        let prefix = format!("{}/backups/requests/", self.cluster);
        let mut requests = Vec::new();
        for object in self.store.list(&prefix).await? {
            // Gone since the listing: finished meanwhile.
            if let Some(request) = get_json::<Request>(&self.store, &object.key).await? {
                requests.push(request);
            }
        }
        Ok(requests)
    }

    async fn pick_up(
        &self,
        backups: &Arc<Backups>,
        requests: &[Request],
    ) -> Result<(), BackupError> {
        let me = backups.slot().clone();
        for request in requests {
            let id = request.backup_id.clone();
            if OffsetDateTime::now_utc() - request.requested_at > REQUEST_TTL
                || !request.nodes.iter().any(|n| n.slot == me)
                || self.handled.lock().expect("handled lock").contains(&id)
            {
                continue;
            }
            let key = status_key(&id, &me)?;
            let status = get_json::<Status>(&self.store, &key).await?;
            if status
                .as_ref()
                .is_some_and(|s| matches!(s.state, NodeBackupState::Done | NodeBackupState::Failed))
            {
                self.handled.lock().expect("handled lock").insert(id);
                continue;
            }
            // Not started yet, or started by a sidecar that died: (re)start it;
            // the journal makes a restarted one resume. "running" is written
            // first, so the job's own report always comes after it.
            let reporter = Reporter {
                store: self.store.clone(),
                key: key.clone(),
            };
            if status.is_none() {
                reporter.running().await?;
            }
            match backups.start_node_backup(
                id.clone(),
                request.keyspaces.clone(),
                Some(reporter.clone()),
            ) {
                Ok(job) => {
                    self.handled
                        .lock()
                        .expect("handled lock")
                        .insert(id.clone());
                    tracing::info!(backup = %id, job = %job.id, "cluster backup request picked up");
                }
                Err(StartError::Conflict(c)) => {
                    // Waiting is not silence: said once per heartbeat, not
                    // at every poll.
                    let now = OffsetDateTime::now_utc();
                    let due = status.as_ref().is_some_and(|s| s.report_due(now));
                    if status.is_none() || due {
                        tracing::info!(backup = %id, running = %c.running.id, "cluster backup request waits for a running backup");
                    }
                    if due {
                        reporter.still_running().await;
                    }
                }
                Err(e) => return Err(BackupError::Invalid(e.to_string())),
            }
        }
        Ok(())
    }

    /// Finishes, as `me`, every request whose finisher has said nothing for
    /// [`SILENT_AFTER`] (or that never had one) and that awaits no part any
    /// more: its index says what each node's status says.
    async fn finish_abandoned(
        &self,
        me: &SlotRef,
        requests: &[Request],
    ) -> Result<(), BackupError> {
        for request in requests {
            let id = &request.backup_id;
            let finisher = anchises_topology::cas::get_json::<Finisher>(
                self.coordination.as_ref(),
                &finisher_key(&self.cluster, id)?,
            )
            .await
            .map_err(|e| BackupError::Invalid(format!("cannot read the finisher of {id}: {e}")))?;
            let now = OffsetDateTime::now_utc();
            let heard_at = finisher
                .as_ref()
                .map_or(request.requested_at, |(f, _)| f.at);
            if now - heard_at < SILENT_AFTER {
                continue;
            }
            let statuses = self.statuses(id, &request.nodes).await?;
            if awaits_a_part(&statuses, request.requested_at, now) {
                continue;
            }
            let silent = finisher.as_ref().map(|(f, _)| f.slot.label());
            let Some(held) = self
                .hold_finisher(id, me, finisher.as_ref().map(|(_, v)| v))
                .await?
            else {
                continue;
            };
            tracing::warn!(
                backup = %id,
                silent = silent.as_deref().unwrap_or("none"),
                "the node collecting this cluster backup's outcome went silent: this node writes its index"
            );
            match self.finish(request, statuses, &held).await {
                Ok(_) => tracing::info!(backup = %id, "cluster backup finished, complete"),
                Err(e) => tracing::warn!(backup = %id, error = %e, "cluster backup finished"),
            }
        }
        Ok(())
    }
}

fn sum(nodes: &[ClusterNode]) -> Totals {
    let mut t = Totals::default();
    for n in nodes {
        t.files += n.totals.files;
        t.bytes += n.totals.bytes;
        t.stored_bytes += n.totals.stored_bytes;
        t.uploaded_files += n.totals.uploaded_files;
        t.uploaded_bytes += n.totals.uploaded_bytes;
        t.reused_files += n.totals.reused_files;
        t.reused_bytes += n.totals.reused_bytes;
    }
    t
}

/// A cluster index as a line of `GET /v1/backups`.
pub fn summary(index: &ClusterIndex) -> BackupSummary {
    let state = if index.complete {
        BackupState::Done
    } else {
        BackupState::Incomplete
    };
    let mut s = BackupSummary::new(
        index.backup_id.as_str(),
        Scope::Cluster,
        state,
        index.requested_at,
    );
    s.finished_at = Some(index.finished_at);
    s.duration_secs = Some((index.finished_at - index.requested_at).as_seconds_f64());
    s.set_totals(&sum(&index.nodes));
    let failures: Vec<String> = index
        .nodes
        .iter()
        .filter_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.slot.label())))
        .collect();
    if !failures.is_empty() {
        s.error = Some(failures.join("; "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_stops_reporting_its_running_part_is_no_longer_awaited() {
        let now = OffsetDateTime::now_utc();
        let status = |state, ago: Duration| Status {
            state,
            at: now - ago,
            error: None,
            totals: Totals::default(),
        };
        let recent = HEARTBEAT * 2;
        let silent = SILENT_AFTER + Duration::from_secs(1);
        assert!(status(NodeBackupState::Running, recent).awaited(now));
        assert!(status(NodeBackupState::Pending, recent).awaited(now));
        assert!(!status(NodeBackupState::Running, silent).awaited(now));
        assert!(!status(NodeBackupState::Done, recent).awaited(now));
        assert!(!status(NodeBackupState::Failed, recent).awaited(now));
        // Several heartbeats fit in the silence a node is allowed.
        assert!(HEARTBEAT * 6 <= SILENT_AFTER);
        // A waiting part reports once per heartbeat, not at every poll.
        assert!(!status(NodeBackupState::Running, POLL).report_due(now));
        assert!(status(NodeBackupState::Running, HEARTBEAT).report_due(now));
        assert!(POLL < HEARTBEAT);
    }

    /// A request for two nodes made 10 minutes ago: `a` done, `b`
    /// running as of `b_ago`.
    struct Abandoned {
        _dir: tempfile::TempDir,
        backups: ClusterBackups,
        request: Request,
        me: SlotRef,
    }

    impl Abandoned {
        async fn new(b_ago: Duration) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = ObjectStore::filesystem(dir.path().join("store")).unwrap();
            let cas = anchises_topology::FsCasStore::open(dir.path().join("coordination")).unwrap();
            let backups =
                ClusterBackups::new(store, "c1".into(), vec!["dc1".into()], Arc::new(cas));
            let slot = |n| SlotRef {
                cluster: "c1".into(),
                dc: "dc1".into(),
                slot: n,
            };
            let node = |n| RequestedNode {
                slot: slot(n),
                rack: "r1".into(),
                address: format!("127.0.0.{}", n + 1),
                tokens: vec![n.to_string()],
            };
            let now = OffsetDateTime::now_utc();
            let request = Request {
                backup_id: BackupId::parse("20261127T220000Z").unwrap(),
                requested_at: now - Duration::from_secs(600),
                keyspaces: vec![],
                nodes: vec![node(0), node(1)],
            };
            let id = &request.backup_id;
            put_json(&backups.store, &request_key("c1", id).unwrap(), &request)
                .await
                .unwrap();
            let status = |state, ago: Duration| Status {
                state,
                at: now - ago,
                error: None,
                totals: Totals {
                    files: 3,
                    ..Totals::default()
                },
            };
            let done = status(NodeBackupState::Done, Duration::from_secs(300));
            put_json(&backups.store, &status_key(id, &slot(0)).unwrap(), &done)
                .await
                .unwrap();
            let running = status(NodeBackupState::Running, b_ago);
            put_json(&backups.store, &status_key(id, &slot(1)).unwrap(), &running)
                .await
                .unwrap();
            Abandoned {
                _dir: dir,
                backups,
                request,
                me: slot(1),
            }
        }

        /// Writes a finisher record of slot 0 as of `ago`.
        async fn finisher_heard(&self, ago: Duration) -> Version {
            let key = finisher_key("c1", &self.request.backup_id).unwrap();
            let record = Finisher {
                slot: self.request.nodes[0].slot.clone(),
                at: OffsetDateTime::now_utc() - ago,
            };
            self.backups
                .coordination
                .put_if_absent(&key, anchises_topology::cas::to_json_bytes(&record))
                .await
                .unwrap()
        }

        async fn finish_abandoned(&self) {
            let requests = self.backups.requests().await.unwrap();
            self.backups
                .finish_abandoned(&self.me, &requests)
                .await
                .unwrap();
        }

        async fn index(&self) -> Option<ClusterIndex> {
            anchises_backup::catalog::Catalog::new(self.backups.store.clone())
                .cluster_index("c1", &self.request.backup_id)
                .await
                .unwrap()
        }

        async fn request_left(&self) -> bool {
            get_json::<Request>(
                &self.backups.store,
                &request_key("c1", &self.request.backup_id).unwrap(),
            )
            .await
            .unwrap()
            .is_some()
        }
    }

    #[tokio::test]
    async fn a_claim_goes_to_the_first_node_that_asks() {
        async fn claim(backups: &ClusterBackups, id: &str, who: &SlotRef) -> bool {
            let what = format!("restores/takeover/{id}.json");
            backups.claim_once(&what, who).await.unwrap()
        }
        let fx = Abandoned::new(Duration::ZERO).await;
        let b = &fx.backups;
        let (n0, n1) = (&fx.request.nodes[0].slot, &fx.request.nodes[1].slot);
        assert!(claim(b, "r1", n0).await);
        assert!(!claim(b, "r1", n1).await);
        assert!(!claim(b, "r1", n0).await);
        assert!(claim(b, "r2", n1).await);
        // Released, a claim can be made again; the kept one stays held.
        b.release_claims("restores/takeover/", |name| name == "r2.json")
            .await
            .unwrap();
        assert!(claim(b, "r1", n1).await);
        assert!(!claim(b, "r2", n0).await);
    }

    #[tokio::test]
    async fn a_request_whose_finisher_went_silent_is_finished_by_another_node() {
        let silent = SILENT_AFTER + Duration::from_secs(30);
        let fx = Abandoned::new(silent).await;
        let held = fx.finisher_heard(silent).await;
        fx.finish_abandoned().await;
        let index = fx.index().await.expect("an index was written");
        assert!(!index.complete);
        assert_eq!(index.nodes[0].state, NodeBackupState::Done);
        assert_eq!(index.nodes[0].totals.files, 3);
        assert_eq!(index.nodes[1].state, NodeBackupState::Failed);
        let error = index.nodes[1].error.as_deref().unwrap();
        assert!(error.contains("stopped reporting its backup"), "{error}");
        assert!(!fx.request_left().await);
        let id = &fx.request.backup_id;
        for n in &fx.request.nodes {
            let key = status_key(id, &n.slot).unwrap();
            let status = get_json::<Status>(&fx.backups.store, &key).await.unwrap();
            assert!(status.is_none());
        }
        let finisher = finisher_key("c1", id).unwrap();
        assert!(fx
            .backups
            .coordination
            .get(&finisher)
            .await
            .unwrap()
            .is_none());
        // The coordinator, back from its silence, no longer holds the record:
        // it cannot write its index over this one.
        let me = &fx.request.nodes[0].slot;
        let renewed = fx.backups.renew_finisher(id, me, &held).await;
        assert!(renewed.is_err(), "{renewed:?}");
    }

    #[tokio::test]
    async fn a_request_is_left_to_its_finisher_while_it_speaks_or_a_part_runs() {
        let silent = SILENT_AFTER + Duration::from_secs(30);
        // The finisher was heard of a heartbeat ago.
        let fx = Abandoned::new(silent).await;
        fx.finisher_heard(HEARTBEAT).await;
        fx.finish_abandoned().await;
        assert!(fx.index().await.is_none());
        assert!(fx.request_left().await);
        // The finisher is silent, but node b reported a heartbeat ago.
        let fx = Abandoned::new(HEARTBEAT).await;
        fx.finisher_heard(silent).await;
        fx.finish_abandoned().await;
        assert!(fx.index().await.is_none());
        assert!(fx.request_left().await);
        // No finisher record at all (a request older than the records, or
        // one whose finisher died while finishing): the request's age counts.
        let fx = Abandoned::new(silent).await;
        fx.finish_abandoned().await;
        assert!(fx.index().await.is_some());
        assert!(!fx.request_left().await);
    }
}
