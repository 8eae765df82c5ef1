//! The local node as the API sees it: its status and ring read through Jolokia, and
//! the actions on it (start, stop, restart, drain, flush) that jobs run. It combines
//! the supervisor (is the JVM alive?) with Cassandra's own view (is it NORMAL?), and
//! refuses to start Cassandra while a full-node restore owns the data directory
//! ([`StartGate`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::cassandra::cql::{Cql, CqlError, SchemaElement};
use crate::cassandra::jolokia::{Jolokia, JolokiaError, Request, STORAGE_SERVICE};
use crate::cassandra::supervisor::{ProcessState, ProcessStatus, Supervisor, SupervisorError};
use crate::config::Config;

const SNITCH: &str = "org.apache.cassandra.db:type=EndpointSnitchInfo";
const STORAGE_LOAD: &str = "org.apache.cassandra.metrics:type=Storage,name=Load";
const FAILURE_DETECTOR: &str = "org.apache.cassandra.net:type=FailureDetector";
const QUICK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The JVM is not running, or not answering yet.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Jolokia(#[from] JolokiaError),
    #[error(transparent)]
    Cql(#[from] CqlError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// Cassandra must not be started now: a full-node restore owns the data
    /// directory (see [`StartGate`]).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// NORMAL and serving CQL: what a bootstrap script waits for.
    pub ready: bool,
    /// STARTING, NORMAL, JOINING, LEAVING, DECOMMISSIONED, MOVING, DRAINING, DRAINED…
    pub operation_mode: String,
    pub joined: bool,
    pub cassandra_version: String,
    pub cluster_name: String,
    pub host_id: String,
    pub address: String,
    pub dc: String,
    pub rack: String,
    pub tokens: Vec<String>,
    pub live_nodes: Vec<String>,
    pub unreachable_nodes: Vec<String>,
    pub joining_nodes: Vec<String>,
    pub leaving_nodes: Vec<String>,
    /// Bytes of live data on this node.
    pub load_bytes: u64,
    /// Free bytes on the data directory's filesystem.
    pub disk_free_bytes: Option<u64>,
    pub native_transport_running: bool,
    pub pid: Option<u32>,
    pub uptime_seconds: Option<u64>,
    /// Restarts the sidecar made after Cassandra died unasked.
    pub restarts: u32,
}

/// One endpoint of the ring, as `GET /v1/node/ring` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RingEndpoint {
    pub endpoint: String,
    pub host_id: Option<String>,
    /// UP or DOWN (failure detector).
    pub status: String,
    /// NORMAL, JOINING or LEAVING.
    pub state: String,
    pub load: Option<String>,
    /// Fraction of the ring this endpoint owns (0–1).
    pub ownership: Option<f64>,
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenOwner {
    pub token: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ring {
    /// Every token in ring order with its owner.
    pub tokens: Vec<TokenOwner>,
    pub endpoints: Vec<RingEndpoint>,
}

/// Optional body of `POST /v1/node/{action}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// flush: only this keyspace (all keyspaces without one).
    pub keyspace: Option<String>,
    /// flush: only these tables of the keyspace.
    #[serde(default)]
    pub tables: Vec<String>,
    /// decommission: even if Cassandra counts too few nodes for a keyspace's
    /// replication factor (it counts system keyspaces such as system_distributed,
    /// RF 3, too).
    #[serde(default)]
    pub force: bool,
}

pub struct Node {
    pub config: Arc<Config>,
    pub supervisor: Supervisor,
    pub jolokia: Jolokia,
    pub cql: Cql,
    pub starts: StartGate,
}

/// Who may start Cassandra. A full-node restore owns the data directory from
/// its stop of Cassandra to its end: meanwhile the directory holds no more
/// than part of the backup's layout, and only the restore starts the node
/// (once the layout is whole, or the previous data is back). A sidecar that
/// dies meanwhile leaves the node's previous data aside on disk, which keeps
/// the directory owned until `restore resume` finishes the restore.
#[derive(Default)]
pub struct StartGate {
    /// The running full-node restore that owns the data directory.
    owner: Mutex<Option<String>>,
    /// Held by a start from its check of the owner to the JVM's spawn, and by
    /// a restore taking ownership: a restore that owns the directory and then
    /// stops Cassandra has stopped every JVM a start let through.
    spawning: tokio::sync::Mutex<()>,
}

impl StartGate {
    /// Owns the data directory for full-node restore `id` until the claim
    /// is dropped.
    pub async fn claim(&self, id: &str) -> StartClaim<'_> {
        let _spawning = self.spawning.lock().await;
        *self.owner.lock().expect("start gate lock") = Some(id.to_string());
        StartClaim(self)
    }

    fn owner(&self) -> Option<String> {
        self.owner.lock().expect("start gate lock").clone()
    }
}

/// A full-node restore's ownership of the data directory (see [`StartGate`]).
pub struct StartClaim<'a>(&'a StartGate);

impl Drop for StartClaim<'_> {
    fn drop(&mut self) {
        *self.0.owner.lock().expect("start gate lock") = None;
    }
}

impl Node {
    /// Fails with `Unavailable` unless the JVM is alive; the message says why not.
    fn require_running(&self) -> Result<ProcessStatus, NodeError> {
        let p = self.supervisor.status();
        if p.state == ProcessState::Running {
            return Ok(p);
        }
        let mut msg = format!(
            "cassandra is not running (process state: {})",
            serde_json::to_value(p.state)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        );
        if let Some(why) = &p.message {
            msg.push_str(": ");
            msg.push_str(why);
        }
        Err(NodeError::Unavailable(msg))
    }

    /// While the JVM starts, the Jolokia agent is up before Cassandra registers its
    /// MBeans: both "nothing listens" and "no such MBean" mean "not ready yet".
    fn unreachable_while_starting(e: JolokiaError) -> NodeError {
        match e {
            JolokiaError::Unreachable { .. } | JolokiaError::Timeout(_) => {
                NodeError::Unavailable(format!("cassandra is running but not answering yet ({e})"))
            }
            JolokiaError::Remote { ref error_type, .. }
                if error_type.ends_with("InstanceNotFoundException") =>
            {
                NodeError::Unavailable("cassandra is starting".into())
            }
            other => other.into(),
        }
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let process = self.require_running()?;
        let answers = self
            .jolokia
            .bulk(
                vec![
                    Request::read_many(
                        STORAGE_SERVICE,
                        &[
                            "OperationMode",
                            "Joined",
                            "ReleaseVersion",
                            "ClusterName",
                            "Tokens",
                            "LocalHostId",
                            "LiveNodesWithPort",
                            "UnreachableNodesWithPort",
                            "JoiningNodesWithPort",
                            "LeavingNodesWithPort",
                            "NativeTransportRunning",
                        ],
                    ),
                    Request::read_many(SNITCH, &["Datacenter", "Rack"]),
                    Request::read(STORAGE_LOAD, "Count"),
                ],
                QUICK,
            )
            .await
            .map_err(Self::unreachable_while_starting)?;
        let mut answers = answers.into_iter();
        let ss = answers
            .next()
            .expect("three answers")
            .map_err(Self::unreachable_while_starting)?;
        // The snitch MBean and the metrics register late in startup.
        let snitch = answers.next().expect("three answers").unwrap_or_default();
        let load = answers.next().expect("three answers").unwrap_or_default();
        let operation_mode = str_of(&ss["OperationMode"]);
        let native_transport_running = ss["NativeTransportRunning"].as_bool().unwrap_or(false);
        Ok(NodeStatus {
            ready: operation_mode == "NORMAL" && native_transport_running,
            operation_mode,
            joined: ss["Joined"].as_bool().unwrap_or(false),
            cassandra_version: str_of(&ss["ReleaseVersion"]),
            cluster_name: str_of(&ss["ClusterName"]),
            host_id: str_of(&ss["LocalHostId"]),
            address: self.config.node.address.to_string(),
            dc: str_of(&snitch["Datacenter"]),
            rack: str_of(&snitch["Rack"]),
            tokens: strings(&ss["Tokens"]),
            live_nodes: strings(&ss["LiveNodesWithPort"]),
            unreachable_nodes: strings(&ss["UnreachableNodesWithPort"]),
            joining_nodes: strings(&ss["JoiningNodesWithPort"]),
            leaving_nodes: strings(&ss["LeavingNodesWithPort"]),
            load_bytes: load.as_u64().unwrap_or(0),
            disk_free_bytes: nix::sys::statvfs::statvfs(&self.config.node.data_dir)
                .ok()
                .map(|v| v.blocks_available() * v.fragment_size()),
            native_transport_running,
            pid: process.pid,
            uptime_seconds: process.uptime().map(|d| d.as_secs()),
            restarts: process.restarts,
        })
    }

    pub async fn ring(&self) -> Result<Ring, NodeError> {
        self.require_running()?;
        let answers = self
            .jolokia
            .bulk(
                vec![
                    Request::read_many(
                        STORAGE_SERVICE,
                        &[
                            "TokenToEndpointWithPortMap",
                            "OwnershipWithPort",
                            "LoadMapWithPort",
                            "HostIdToEndpointWithPort",
                            "JoiningNodesWithPort",
                            "LeavingNodesWithPort",
                        ],
                    ),
                    Request::read(FAILURE_DETECTOR, "SimpleStatesWithPort"),
                ],
                QUICK,
            )
            .await
            .map_err(Self::unreachable_while_starting)?;
        let mut answers = answers.into_iter();
        let ss = answers
            .next()
            .expect("two answers")
            .map_err(Self::unreachable_while_starting)?;
        let fd = answers.next().expect("two answers").unwrap_or_default();
        Ok(build_ring(&ss, &fd))
    }

    pub async fn schema(&self) -> Result<Vec<SchemaElement>, NodeError> {
        self.require_running()?;
        Ok(self.cql.describe_schema().await?)
    }

    /// Checks a flush names a keyspace that exists, before a job is started for it.
    pub async fn precheck_flush(&self, req: &ActionBody) -> Result<(), NodeError> {
        if req.keyspace.is_none() && !req.tables.is_empty() {
            return Err(NodeError::BadRequest(
                "tables given without a keyspace".into(),
            ));
        }
        if let Some(ks) = &req.keyspace {
            let keyspaces = self
                .jolokia
                .read(STORAGE_SERVICE, "Keyspaces")
                .await
                .map_err(Self::unreachable_while_starting)?;
            if !strings(&keyspaces).contains(ks) {
                return Err(NodeError::NotFound(format!(
                    "keyspace {ks:?} does not exist"
                )));
            }
        }
        Ok(())
    }

    /// Why nobody but a full-node restore may start Cassandra now, if so:
    /// one runs past its stop of the node, or one that a stopped sidecar left
    /// unfinished still holds the node's previous data (the data directory
    /// then holds at most part of the backup's layout, or nothing).
    pub fn start_refusal(&self) -> Option<String> {
        if let Some(id) = self.starts.owner() {
            return Some(format!(
                "full-node restore {id} is replacing the node's data: it starts cassandra itself"
            ));
        }
        let held = crate::restore::full::held_previous_data(&self.config)?;
        Some(format!(
            "cassandra is not started while full-node restore {} holds the node's previous data in {}: the data directory holds at most part of the restored node; `anchises restore resume {}` continues the restore and starts the node",
            held.id,
            held.path.display(),
            held.id
        ))
    }

    fn refuse_start(&self) -> Result<(), NodeError> {
        self.start_refusal()
            .map_or(Ok(()), |why| Err(NodeError::Refused(why)))
    }

    /// Checks an action can start now, so that the API answers 409/503 at once
    /// instead of failing inside a job.
    pub fn precheck(&self, action: NodeAction) -> Result<(), NodeError> {
        if matches!(action, NodeAction::Start | NodeAction::Restart) {
            self.refuse_start()?;
        }
        let state = self.supervisor.status().state;
        match action {
            NodeAction::Start if state == ProcessState::Running => {
                Err(SupervisorError::AlreadyRunning.into())
            }
            NodeAction::Stop if matches!(state, ProcessState::Stopped | ProcessState::Failed) => {
                Err(SupervisorError::NotRunning.into())
            }
            NodeAction::Drain
            | NodeAction::Flush
            | NodeAction::Cleanup
            | NodeAction::Decommission => self.require_running().map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Runs an action to its end; `start` and `restart` wait for NORMAL.
    pub async fn run_action(
        &self,
        action: NodeAction,
        body: ActionBody,
        cancel: CancellationToken,
    ) -> Result<Value, NodeError> {
        match action {
            NodeAction::Start => self.start_unless_refused(cancel).await,
            NodeAction::Stop => {
                self.supervisor.stop().await?;
                Ok(json!({"stopped": true}))
            }
            NodeAction::Restart => {
                // Refused before the stop: the node then stays as it is.
                self.refuse_start()?;
                match self.supervisor.stop().await {
                    Ok(()) | Err(SupervisorError::NotRunning) => {}
                    Err(e) => return Err(e.into()),
                }
                self.start_unless_refused(cancel).await
            }
            NodeAction::Drain => {
                self.require_running()?;
                let timeout = self.config.cassandra.stop_timeout;
                self.jolokia
                    .exec(STORAGE_SERVICE, "drain()", vec![], timeout)
                    .await?;
                Ok(json!({"drained": true}))
            }
            NodeAction::Flush => self.flush(body).await,
            NodeAction::Cleanup => self.cleanup().await,
            NodeAction::Decommission => {
                self.require_running()?;
                // Blocks while the node streams its ranges to the others.
                self.jolokia
                    .exec(
                        STORAGE_SERVICE,
                        "decommission(boolean)",
                        vec![json!(body.force)],
                        self.config.cassandra.start_timeout,
                    )
                    .await
                    .map_err(|e| match e {
                        JolokiaError::Remote { error, .. } => {
                            NodeError::Failed(format!("decommission refused: {error}"))
                        }
                        other => other.into(),
                    })?;
                self.supervisor.stop().await?;
                Ok(json!({"decommissioned": true}))
            }
        }
    }

    /// `nodetool cleanup` of every keyspace that is not node-local.
    async fn cleanup(&self) -> Result<Value, NodeError> {
        self.require_running()?;
        let keyspaces = strings(
            &self
                .jolokia
                .read(STORAGE_SERVICE, "NonLocalStrategyKeyspaces")
                .await?,
        );
        for ks in &keyspaces {
            let status = self
                .jolokia
                .exec(
                    STORAGE_SERVICE,
                    "forceKeyspaceCleanup(int,java.lang.String,[Ljava.lang.String;)",
                    vec![json!(0), json!(ks), json!([])],
                    self.config.cassandra.start_timeout,
                )
                .await?;
            if status != json!(0) {
                return Err(NodeError::Failed(format!(
                    "cleanup of {ks} ended with status {status}"
                )));
            }
        }
        Ok(json!({"cleaned_keyspaces": keyspaces}))
    }

    /// Keyspaces and their replication, from `system_schema` over CQL.
    pub async fn keyspaces(
        &self,
    ) -> Result<Vec<crate::cassandra::cql::KeyspaceReplication>, NodeError> {
        self.require_running()?;
        Ok(self.cql.keyspaces().await?)
    }

    /// Starts Cassandra and waits for NORMAL, unless [`Node::start_refusal`]
    /// says why not.
    async fn start_unless_refused(&self, cancel: CancellationToken) -> Result<Value, NodeError> {
        let pid = {
            let _spawning = self.starts.spawning.lock().await;
            self.refuse_start()?;
            self.supervisor.start().await?
        };
        self.wait_started(pid, cancel).await
    }

    /// Starts Cassandra and waits for NORMAL whoever owns the data directory:
    /// for the full-node restore that owns it, on the layout it made (or the
    /// previous data it put back).
    pub async fn start_for_restore(&self, cancel: CancellationToken) -> Result<Value, NodeError> {
        let pid = self.supervisor.start().await?;
        self.wait_started(pid, cancel).await
    }

    async fn wait_started(&self, pid: u32, cancel: CancellationToken) -> Result<Value, NodeError> {
        self.cql.reset().await;
        self.wait_ready(self.config.cassandra.start_timeout, cancel)
            .await?;
        Ok(json!({"pid": pid, "operation_mode": "NORMAL", "ready": true}))
    }

    /// Polls until the node is NORMAL and serving CQL (Cassandra turns NORMAL a
    /// moment before its native transport listens); fails early if the JVM dies.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let p = self.supervisor.status();
            if p.state != ProcessState::Running {
                return Err(NodeError::Failed(format!(
                    "cassandra exited while starting ({}); see {}",
                    p.last_exit.as_deref().unwrap_or("no exit status"),
                    crate::cassandra::files::NodeLayout::new(&self.config.node.data_dir)
                        .logs
                        .join("system.log")
                        .display()
                )));
            }
            if let Ok(v) = self
                .jolokia
                .one(
                    Request::read_many(
                        STORAGE_SERVICE,
                        &["OperationMode", "NativeTransportRunning"],
                    ),
                    QUICK,
                )
                .await
            {
                if v["OperationMode"] == "NORMAL" && v["NativeTransportRunning"] == true {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Failed(format!(
                    "cassandra was not NORMAL and serving cql within {}",
                    humantime::format_duration(timeout)
                )));
            }
            // A short poll: every start (a restore's, a rolling restart's)
            // waits for this, and one loopback read costs next to nothing.
            tokio::select! {
                _ = cancel.cancelled() => return Err(NodeError::Failed("cancelled".into())),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    async fn flush(&self, req: ActionBody) -> Result<Value, NodeError> {
        self.require_running()?;
        let keyspaces: Vec<String> = match &req.keyspace {
            Some(ks) => vec![ks.clone()],
            None => strings(&self.jolokia.read(STORAGE_SERVICE, "Keyspaces").await?),
        };
        let timeout = self.config.cassandra.stop_timeout;
        for ks in &keyspaces {
            self.jolokia
                .exec(
                    STORAGE_SERVICE,
                    "forceKeyspaceFlush(java.lang.String,[Ljava.lang.String;)",
                    vec![json!(ks), json!(req.tables)],
                    timeout,
                )
                .await
                .map_err(|e| match e {
                    JolokiaError::Remote { error, .. } => {
                        NodeError::BadRequest(format!("flush of {ks} failed: {error}"))
                    }
                    other => other.into(),
                })?;
        }
        Ok(json!({"flushed_keyspaces": keyspaces}))
    }
}

/// The actions of `POST /v1/node/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeAction {
    Start,
    Stop,
    Restart,
    Drain,
    Flush,
    /// Remove this node's data that other nodes now own (after a grow).
    Cleanup,
    /// Leave the ring, streaming this node's data away, then stop.
    Decommission,
}

impl NodeAction {
    pub const ALL: [NodeAction; 7] = [
        NodeAction::Start,
        NodeAction::Stop,
        NodeAction::Restart,
        NodeAction::Drain,
        NodeAction::Flush,
        NodeAction::Cleanup,
        NodeAction::Decommission,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NodeAction::Start => "start",
            NodeAction::Stop => "stop",
            NodeAction::Restart => "restart",
            NodeAction::Drain => "drain",
            NodeAction::Flush => "flush",
            NodeAction::Cleanup => "cleanup",
            NodeAction::Decommission => "decommission",
        }
    }

    pub fn parse(s: &str) -> Option<NodeAction> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// JMX maps key endpoints inconsistently: `127.0.0.1:7000` or `/127.0.0.1:7000`.
fn endpoint_key(s: &str) -> String {
    s.trim_start_matches('/').to_string()
}

fn build_ring(ss: &Value, fd: &Value) -> Ring {
    let mut tokens: Vec<TokenOwner> = ss["TokenToEndpointWithPortMap"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(t, e)| TokenOwner {
                    token: t.clone(),
                    endpoint: endpoint_key(e.as_str().unwrap_or_default()),
                })
                .collect()
        })
        .unwrap_or_default();
    tokens.sort_by_key(|t| t.token.parse::<i128>().unwrap_or(i128::MAX));
    let map_of = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (endpoint_key(k), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ownership = map_of(&ss["OwnershipWithPort"]);
    let load = map_of(&ss["LoadMapWithPort"]);
    let states = map_of(fd);
    let host_ids: BTreeMap<String, String> = ss["HostIdToEndpointWithPort"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, e)| (endpoint_key(e.as_str().unwrap_or_default()), id.clone()))
                .collect()
        })
        .unwrap_or_default();
    let joining: Vec<String> = strings(&ss["JoiningNodesWithPort"])
        .iter()
        .map(|e| endpoint_key(e))
        .collect();
    let leaving: Vec<String> = strings(&ss["LeavingNodesWithPort"])
        .iter()
        .map(|e| endpoint_key(e))
        .collect();
    let mut endpoints: BTreeMap<String, RingEndpoint> = BTreeMap::new();
    for t in &tokens {
        endpoints
            .entry(t.endpoint.clone())
            .or_insert_with(|| RingEndpoint {
                endpoint: t.endpoint.clone(),
                host_id: host_ids.get(&t.endpoint).cloned(),
                status: states
                    .get(&t.endpoint)
                    .and_then(Value::as_str)
                    .unwrap_or("UNKNOWN")
                    .to_string(),
                state: if joining.contains(&t.endpoint) {
                    "JOINING"
                } else if leaving.contains(&t.endpoint) {
                    "LEAVING"
                } else {
                    "NORMAL"
                }
                .to_string(),
                load: load
                    .get(&t.endpoint)
                    .and_then(Value::as_str)
                    .map(String::from),
                ownership: ownership.get(&t.endpoint).and_then(Value::as_f64),
                tokens: Vec::new(),
            })
            .tokens
            .push(t.token.clone());
    }
    Ring {
        tokens,
        endpoints: endpoints.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_built_from_jmx_maps_with_either_endpoint_spelling() {
        let ss = json!({
            "TokenToEndpointWithPortMap": {"3074457345618258602": "127.0.0.2:7000", "-9223372036854775808": "127.0.0.1:7000"},
            "OwnershipWithPort": {"/127.0.0.1:7000": 0.66, "/127.0.0.2:7000": 0.34},
            "LoadMapWithPort": {"127.0.0.1:7000": "1 KiB", "127.0.0.2:7000": "2 KiB"},
            "HostIdToEndpointWithPort": {"h1": "127.0.0.1:7000", "h2": "127.0.0.2:7000"},
            "JoiningNodesWithPort": ["127.0.0.2:7000"],
            "LeavingNodesWithPort": [],
        });
        let fd = json!({"/127.0.0.1:7000": "UP", "/127.0.0.2:7000": "DOWN"});
        let ring = build_ring(&ss, &fd);
        assert_eq!(ring.tokens[0].token, "-9223372036854775808");
        assert_eq!(ring.tokens[0].endpoint, "127.0.0.1:7000");
        let e2 = &ring.endpoints[1];
        assert_eq!(e2.endpoint, "127.0.0.2:7000");
        assert_eq!(e2.status, "DOWN");
        assert_eq!(e2.state, "JOINING");
        assert_eq!(e2.ownership, Some(0.34));
        assert_eq!(e2.host_id.as_deref(), Some("h2"));
        assert_eq!(ring.endpoints[0].load.as_deref(), Some("1 KiB"));
    }

    #[tokio::test]
    async fn a_restore_owns_the_data_directory_once_a_start_under_way_has_spawned() {
        let gate = StartGate::default();
        let spawning = gate.spawning.lock().await;
        let waited = tokio::time::timeout(Duration::from_millis(50), gate.claim("r1")).await;
        assert!(waited.is_err(), "the claim waits for the start's spawn");
        assert_eq!(gate.owner(), None);
        drop(spawning);
        let claim = gate.claim("r1").await;
        assert_eq!(gate.owner().as_deref(), Some("r1"));
        drop(claim);
        assert_eq!(gate.owner(), None, "the restore's end frees it");
    }

    #[test]
    fn actions_parse_by_name_only() {
        assert_eq!(NodeAction::parse("flush"), Some(NodeAction::Flush));
        assert_eq!(NodeAction::parse("Flush"), None);
        assert_eq!(NodeAction::parse("reboot"), None);
    }
}
