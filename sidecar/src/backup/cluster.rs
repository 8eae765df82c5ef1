//! Cluster-wide backups, coordinated through the backup store: no node drives
//! another. The node asked writes a request naming every claimed slot; each
//! node's sidecar sees it, backs itself up under the request's id and writes
//! its status; the asking node collects the statuses and writes the cluster
//! index, which says whether every node finished. A node that fails, or never
//! picks the request up, is reported in the index and the job's error.
//!
//! ```text
//! <cluster>/backups/requests/<id>.json               the request
//! <cluster>/backups/status/<id>/<dc>/<slot>.json      each node's state
//! <cluster>/backups/<id>.json                         the cluster index
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchises_backup::manifest::{
    BackupId, ClusterIndex, ClusterNode, NodeBackupState, SlotRef, Totals, FORMAT,
};
use anchises_backup::{BackupError, ObjectKey, ObjectStore, StoreError};
use anchises_topology::Registry;
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

pub struct ClusterBackups {
    store: ObjectStore,
    cluster: String,
    dcs: Vec<String>,
    registry: Registry,
    /// Requests this process has started a backup for.
    handled: Mutex<HashSet<BackupId>>,
}

fn request_key(cluster: &str, id: &BackupId) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!("{cluster}/backups/requests/{id}.json"))
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
    pub fn new(store: ObjectStore, cluster: String, dcs: Vec<String>, registry: Registry) -> Self {
        ClusterBackups {
            store,
            cluster,
            dcs,
            registry,
            handled: Mutex::new(HashSet::new()),
        }
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
                        .coordinate(&job_id, keyspaces, &cancel)
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
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let nodes = self.claimed().await?;
        let request = Request {
            backup_id: id.clone(),
            requested_at: OffsetDateTime::now_utc(),
            keyspaces: keyspaces.clone(),
            nodes: nodes.clone(),
        };
        let request_key = request_key(&self.cluster, id)?;
        put_json(&self.store, &request_key, &request).await?;
        let started = tokio::time::Instant::now();
        let statuses = loop {
            let statuses = self.statuses(id, &nodes).await?;
            let now = OffsetDateTime::now_utc();
            let pending = statuses.iter().any(|(_, s)| match s {
                None => started.elapsed() < PICKUP_TIMEOUT,
                Some(s) => s.awaited(now),
            });
            if !pending {
                break statuses;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = cancel.cancelled() => return Err(BackupError::Cancelled),
            }
        };
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
            keyspaces,
            nodes: index_nodes,
        };
        anchises_backup::catalog::Catalog::new(self.store.clone())
            .put_cluster_index(&index)
            .await?;
        self.store.delete(&request_key).await?;
        // The index now holds what each node's status said.
        let statuses: Vec<ObjectKey> = nodes
            .iter()
            .map(|n| status_key(id, &n.slot))
            .collect::<Result<_, _>>()?;
        self.store.delete_many(&statuses).await?;
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

    /// Runs until `stop`: picks up requests naming this node's slot.
    pub async fn watch(self: Arc<Self>, backups: Arc<Backups>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.pick_up(&backups).await {
                tracing::warn!(error = %e, "cannot check for cluster backup requests");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn pick_up(&self, backups: &Arc<Backups>) -> Result<(), BackupError> {
        let prefix = format!("{}/backups/requests/", self.cluster);
        let me = backups.slot().clone();
        for object in self.store.list(&prefix).await? {
            let Some(request) = get_json::<Request>(&self.store, &object.key).await? else {
                continue;
            };
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
}
