//! The control plane (`anchises control`): one request creates a whole cluster.
//! It validates the request, writes the cluster spec (slot table) to the
//! coordinator store and has the provider start the nodes; the nodes then organize
//! themselves through the registry there. It also shows clusters (spec, registry
//! and each node's own status) and deletes them. Only the local provider exists so
//! far: nodes are processes on 127.0.0.x.

mod http;
pub mod local;
mod replace;
mod resize;

pub use resize::Resize;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anchises_topology::{FsCasStore, Registry, SlotClaim};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::cluster::{ClusterSpec, Specs};
use crate::http::error::ApiError;
use crate::jobs::{Job, Jobs};
use local::{LocalNode, LocalProvider, NodeLaunch};

/// The control plane API's default address.
pub const DEFAULT_CONTROL_PORT: u16 = 7979;
pub(crate) const MAX_NODES_PER_DC: u64 = 32;
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(600);
pub(crate) const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub listen: SocketAddr,
    /// Holds the coordinator store (`coordinator/`) and the nodes (`clusters/`).
    pub data_dir: PathBuf,
    /// Nodes get 127.0.0.<first_octet> and up.
    pub first_octet: u8,
    /// The `anchises` binary the nodes run.
    pub bin: PathBuf,
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    pub name: String,
    /// Nodes per data center.
    pub nodes: u64,
    /// A number of racks (named rack1…), or their names. Default: one rack.
    pub racks: Option<Racks>,
    /// Data center names. Default: `["dc1"]`.
    pub dcs: Option<Vec<String>>,
    /// A fetched Cassandra 5.0.x. Default: the pinned version.
    pub cassandra_version: Option<String>,
    /// 1 (default): one token per node placed by slot; more: vnodes.
    pub num_tokens: Option<u32>,
    /// Start from another cluster's cluster backup: `CLUSTER` (its newest
    /// complete one), `CLUSTER/BACKUP_ID`, or `CLUSTER@TIME` (the newest
    /// complete one finished by then, RFC 3339). The new cluster takes the
    /// source's data centers, racks and tokens, slot by slot.
    pub restore_from: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Racks {
    Count(u32),
    Names(Vec<String>),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterSummary {
    pub name: String,
    pub nodes: usize,
    pub dcs: Vec<String>,
    pub cassandra_version: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: time::OffsetDateTime,
}

/// One node of `GET /v1/clusters/{name}`: registry, provider and the node's own view.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub dc: String,
    pub rack: String,
    pub address: String,
    pub api: String,
    pub slot: Option<u64>,
    pub tokens: Vec<String>,
    /// The registry's state of the slot (joining, replacing, normal, leaving).
    pub slot_state: Option<String>,
    /// The node sidecar's process is running.
    pub running: bool,
    pub operation_mode: Option<String>,
    pub ready: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterView {
    pub spec: ClusterSpec,
    pub nodes: Vec<NodeView>,
}

pub struct ControlPlane {
    /// The local nodes' shared backup store (`backups/` beside the coordinator).
    pub(crate) backups: anchises_backup::catalog::Catalog,
    pub(crate) specs: Specs,
    pub(crate) provider: LocalProvider,
    pub jobs: Jobs,
    pub(crate) http: reqwest::Client,
}

fn valid_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {name:?} must be 1-48 lowercase letters, digits or '-', starting with a letter"
        )))
    }
}

/// Checks a Cassandra version is a 5.0.x that has been fetched.
fn check_version(version: &str) -> Result<(), ApiError> {
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok());
    if !numeric || parts[0] != "5" || parts[1] != "0" {
        return Err(ApiError::bad_request(format!(
            "cassandra_version {version:?} is not supported (a 5.0.x version, e.g. {})",
            crate::config::DEFAULT_CASSANDRA_VERSION
        )));
    }
    let jar = crate::config::cache_dir()
        .join("cassandra")
        .join(version)
        .join("lib")
        .join(format!("cassandra-all-{version}.jar"));
    if !jar.is_file() {
        return Err(ApiError::bad_request(format!(
            "cassandra {version} is not fetched (run ops-scripts/fetch-cassandra.sh {version})"
        )));
    }
    Ok(())
}

impl ControlPlane {
    pub fn new(config: &ControlConfig, cancel: CancellationToken) -> anyhow::Result<Self> {
        let coordinator = config.data_dir.join("coordinator");
        let store = FsCasStore::open(&coordinator).with_context(|| {
            format!(
                "cannot open the coordinator store {}",
                coordinator.display()
            )
        })?;
        let backups = anchises_backup::ObjectStore::filesystem(config.data_dir.join("backups"))
            .map_err(|e| anyhow::anyhow!("cannot open the backup store: {e}"))?;
        Ok(Self {
            backups: anchises_backup::catalog::Catalog::new(backups),
            specs: Specs::new(Arc::new(store)),
            provider: LocalProvider::new(
                &config.data_dir,
                &coordinator,
                config.bin.clone(),
                config.first_octet,
            ),
            jobs: Jobs::new(cancel),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("a reqwest client with static settings"),
        })
    }

    /// Validates, stores the spec, and starts a job that brings every node up.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateCluster,
    ) -> Result<(ClusterSpec, Job), ApiError> {
        valid_name("cluster name", &req.name)?;
        if req.nodes == 0 || req.nodes > MAX_NODES_PER_DC {
            return Err(ApiError::bad_request(format!(
                "nodes must be 1 to {MAX_NODES_PER_DC} per data center, got {}",
                req.nodes
            )));
        }
        let racks: Vec<String> = match req.racks.clone() {
            None => vec!["rack1".into()],
            Some(Racks::Count(n)) if n >= 1 => (1..=n).map(|i| format!("rack{i}")).collect(),
            Some(Racks::Count(_)) => return Err(ApiError::bad_request("racks must be at least 1")),
            Some(Racks::Names(names)) => names,
        };
        let dcs = req.dcs.clone().unwrap_or_else(|| vec!["dc1".into()]);
        for name in racks.iter().chain(&dcs) {
            valid_name("rack or data center", name)?;
        }
        let version = req
            .cassandra_version
            .clone()
            .unwrap_or_else(|| crate::config::DEFAULT_CASSANDRA_VERSION.into());
        check_version(&version)?;
        let num_tokens = req.num_tokens.unwrap_or(1);
        if !(1..=256).contains(&num_tokens) {
            return Err(ApiError::bad_request(format!(
                "num_tokens must be 1 to 256, got {num_tokens}"
            )));
        }
        let spec = match &req.restore_from {
            None => ClusterSpec::new(&req.name, &dcs, &racks, req.nodes, num_tokens, &version)
                .map_err(ApiError::bad_request)?,
            Some(source) => self.copy_spec(&req, source, &version).await?,
        };
        match self.specs.create(&spec).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    format!("cluster {:?} already exists", spec.name),
                ))
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
        let this = self.clone();
        let work_spec = spec.clone();
        let job = self
            .jobs
            .start(&spec.name, "cluster.create", move |cancel| async move {
                this.bring_up(&work_spec, cancel)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })?;
        Ok((spec, job))
    }

    /// The spec of a cluster that starts from `source`'s cluster backup: its
    /// data centers, racks and tokens, slot by slot.
    async fn copy_spec(
        &self,
        req: &CreateCluster,
        source: &str,
        version: &str,
    ) -> Result<ClusterSpec, ApiError> {
        use anchises_backup::manifest::BackupId;
        let bad = ApiError::bad_request;
        let (cluster, pick) = if let Some((c, id)) = source.split_once('/') {
            (c, Some(Err(BackupId::parse(id).map_err(bad)?)))
        } else if let Some((c, at)) = source.split_once('@') {
            let at = crate::restore::parse_time(at).map_err(bad)?;
            (c, Some(Ok(at)))
        } else {
            (source, None)
        };
        valid_name("source cluster", cluster)?;
        if req.dcs.is_some() || req.racks.is_some() || req.num_tokens.is_some_and(|n| n != 1) {
            return Err(bad("a copy takes the source's data centers, racks and tokens: give no dcs, racks or num_tokens".into()));
        }
        let store_error = |e: anchises_backup::BackupError| {
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                format!("backup store: {e}"),
            )
        };
        let mut candidates = Vec::new();
        for id in self
            .backups
            .cluster_backup_ids(cluster)
            .await
            .map_err(store_error)?
        {
            if let Some(index) = self
                .backups
                .cluster_index(cluster, &id)
                .await
                .map_err(store_error)?
            {
                // A copy starts from every keyspace, its schema included.
                if index.complete && index.keyspaces.is_empty() {
                    candidates.push(index);
                }
            }
        }
        let index = match &pick {
            None => candidates.into_iter().max_by_key(|i| i.finished_at),
            Some(Err(id)) => candidates.into_iter().find(|i| &i.backup_id == id),
            Some(Ok(at)) => candidates
                .into_iter()
                .filter(|i| i.finished_at <= *at)
                .max_by_key(|i| i.finished_at),
        }
        .ok_or_else(|| {
            bad(format!(
                "cluster {cluster:?} has no complete cluster backup of every keyspace matching {source:?}"
            ))
        })?;
        let mut dcs: Vec<String> = Vec::new();
        let mut racks: Vec<String> = Vec::new();
        for n in &index.nodes {
            if !dcs.contains(&n.slot.dc) {
                dcs.push(n.slot.dc.clone());
            }
            if !racks.contains(&n.rack) {
                racks.push(n.rack.clone());
            }
            if n.tokens.len() != 1 {
                return Err(bad(format!(
                    "slot {} of {cluster} has {} tokens: only single-token clusters can be copied",
                    n.slot.label(),
                    n.tokens.len()
                )));
            }
        }
        let per_dc = (index.nodes.len() / dcs.len()) as u64;
        if req.nodes != per_dc || index.nodes.len() as u64 != per_dc * dcs.len() as u64 {
            return Err(bad(format!(
                "backup {} of {cluster} has {} nodes per data center; the copy needs the same (nodes = {per_dc})",
                index.backup_id, per_dc
            )));
        }
        let mut spec =
            ClusterSpec::new(&req.name, &dcs, &racks, req.nodes, 1, version).map_err(bad)?;
        for dc in &mut spec.dcs {
            for slot in &mut dc.slots {
                let node = index
                    .nodes
                    .iter()
                    .find(|n| n.slot.dc == dc.name && u64::from(n.slot.slot) == slot.slot)
                    .ok_or_else(|| {
                        bad(format!(
                            "backup {} has no slot {}/{}",
                            index.backup_id, dc.name, slot.slot
                        ))
                    })?;
                slot.token = Some(node.tokens[0].clone());
                slot.rack = node.rack.clone();
            }
        }
        spec.restore_from = Some(crate::cluster::RestoreFrom {
            cluster: cluster.to_string(),
            backup_id: index.backup_id.to_string(),
        });
        Ok(spec)
    }

    /// Starts every node of a new cluster together and waits until all are ready.
    async fn bring_up(
        &self,
        spec: &ClusterSpec,
        cancel: CancellationToken,
    ) -> anyhow::Result<Value> {
        let mut nodes = Vec::new();
        for dc in &spec.dcs {
            for (k, slot) in dc.slots.iter().enumerate() {
                nodes.push(self.provider.launch(NodeLaunch {
                    cluster: &spec.name,
                    dc: &dc.name,
                    rack: &slot.rack,
                    node_id: format!("{}-{}-{k}", spec.name, dc.name),
                    cassandra_version: &spec.cassandra_version,
                })?);
            }
        }
        for node in &nodes {
            self.wait_ready(node, &cancel).await?;
        }
        info!(cluster = spec.name, nodes = nodes.len(), "cluster is up");
        Ok(json!({
            "cluster": spec.name,
            "cql": nodes.iter().map(|n| format!("{}:9042", n.address)).collect::<Vec<_>>(),
        }))
    }

    pub(crate) async fn node_status(&self, node: &LocalNode) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v1/node", node.api))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    pub(crate) async fn wait_ready(
        &self,
        node: &LocalNode,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(status) = self.node_status(node).await {
                if status["ready"] == true {
                    return Ok(());
                }
            }
            if !self.provider.running(&node.node_id) {
                anyhow::bail!(
                    "node {} exited; see {}",
                    node.node_id,
                    node.dir.join("sidecar.log").display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "node {} not ready after {NODE_READY_TIMEOUT:?}",
                    node.node_id
                );
            }
            // A local HTTP GET: cheap enough to poll often, and a cluster is ready
            // only when its slowest node is seen ready.
            tokio::select! {
                _ = cancel.cancelled() => anyhow::bail!("cancelled"),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    pub async fn list(&self) -> Result<Vec<ClusterSummary>, ApiError> {
        let mut out = Vec::new();
        for name in self.specs.list().await.map_err(ApiError::internal)? {
            if let Some((spec, _)) = self.specs.get(&name).await.map_err(ApiError::internal)? {
                out.push(ClusterSummary {
                    nodes: spec.node_count(),
                    dcs: spec.dcs.iter().map(|d| d.name.clone()).collect(),
                    cassandra_version: spec.cassandra_version.clone(),
                    created_at: spec.created_at,
                    name: spec.name,
                });
            }
        }
        Ok(out)
    }

    pub(crate) async fn spec(&self, name: &str) -> Result<ClusterSpec, ApiError> {
        valid_name("cluster name", name)?;
        self.specs
            .get(name)
            .await
            .map_err(ApiError::internal)?
            .map(|(spec, _)| spec)
            .ok_or_else(|| ApiError::not_found(format!("no cluster {name:?}")))
    }

    pub async fn show(&self, name: &str) -> Result<ClusterView, ApiError> {
        let spec = self.spec(name).await?;
        let registry: Registry = Registry::new(self.specs.store(), name);
        let mut claims: Vec<SlotClaim> = Vec::new();
        for dc in &spec.dcs {
            let by_slot = registry
                .claims(&dc.name)
                .await
                .map_err(ApiError::internal)?;
            claims.extend(by_slot.into_values().map(|(c, _)| c));
        }
        let nodes = self.provider.nodes(name);
        let statuses = futures::future::join_all(nodes.iter().map(|n| self.node_status(n))).await;
        let mut views: Vec<NodeView> = nodes
            .iter()
            .zip(statuses)
            .map(|(n, status)| {
                let claim = claims.iter().find(|c| c.node_id == n.node_id);
                NodeView {
                    node_id: n.node_id.clone(),
                    dc: n.dc.clone(),
                    rack: n.rack.clone(),
                    address: n.address.clone(),
                    api: n.api.clone(),
                    slot: claim.map(|c| c.slot),
                    tokens: claim.map(|c| c.tokens.clone()).unwrap_or_default(),
                    slot_state: claim.map(|c| {
                        serde_json::to_value(c.state)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    }),
                    running: self.provider.running(&n.node_id),
                    operation_mode: status
                        .as_ref()
                        .and_then(|s| s["operation_mode"].as_str().map(String::from)),
                    ready: status.as_ref().is_some_and(|s| s["ready"] == true),
                }
            })
            .collect();
        views.sort_by_key(|v| (v.dc.clone(), v.slot));
        Ok(ClusterView { spec, nodes: views })
    }

    /// Stops every node, then forgets the cluster: spec, registry, directories.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<Job, ApiError> {
        self.spec(name).await?;
        let this = self.clone();
        let name_owned = name.to_string();
        Ok(self
            .jobs
            .start(name, "cluster.delete", move |_| async move {
                let nodes = this.provider.nodes(&name_owned);
                futures::future::join_all(
                    nodes
                        .iter()
                        .map(|n| this.provider.stop(&n.node_id, NODE_STOP_TIMEOUT)),
                )
                .await;
                this.specs
                    .delete_all(&name_owned)
                    .await
                    .map_err(|e| e.to_string())?;
                this.provider.forget_cluster(&name_owned);
                Ok(json!({"deleted": name_owned, "nodes_stopped": nodes.len()}))
            })?)
    }

    /// Restarts the recorded nodes of every stored cluster (after a control plane
    /// restart: the nodes keep their slots, their data and their tokens).
    pub async fn resume(&self) {
        for cluster in self.provider.clusters() {
            match self.specs.get(&cluster).await {
                Ok(Some(_)) => {
                    for node in self.provider.nodes(&cluster) {
                        if let Err(e) = self.provider.spawn(&node) {
                            warn!(node = node.node_id, error = %e, "cannot restart node");
                        }
                    }
                }
                _ => self.provider.forget_cluster(&cluster),
            }
        }
    }

    pub async fn shutdown(&self) {
        self.provider.stop_all(NODE_STOP_TIMEOUT).await;
    }
}

/// Runs the control plane until SIGTERM/SIGINT, then stops every node it runs.
pub async fn run(config: ControlConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let jobs_cancel = CancellationToken::new();
    let control = Arc::new(ControlPlane::new(&config, jobs_cancel.clone())?);
    control.resume().await;
    let replacer_shutdown = CancellationToken::new();
    tokio::spawn(
        control
            .clone()
            .replace_dead_nodes_until(replacer_shutdown.clone()),
    );
    info!(api = %config.listen, data_dir = %config.data_dir.display(), "anchises control plane started");
    let http_shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let router = http::router(control.clone());
        let token = http_shutdown.clone();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        }
    });
    crate::wait_for_signal().await;
    info!("signal received; stopping every node, then the api");
    replacer_shutdown.cancel();
    jobs_cancel.cancel();
    control.shutdown().await;
    http_shutdown.cancel();
    let _ = server.await;
    control.jobs.wait().await;
    Ok(())
}
