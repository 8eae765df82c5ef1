//! Growing and shrinking a cluster to a target size per data center, one node at a
//! time. Grow: plan the new slots (doubling splits every range; other sizes split
//! the largest first), add them to the spec, start each new node and wait until it
//! has bootstrapped, then clean up the old nodes one at a time under the ring
//! lease. Shrink: refuse (409) when a DC would drop below a keyspace's replication
//! factor or the remaining nodes lack the disk for the data; otherwise decommission
//! the most recent slots one at a time under the lease and free them.

use std::sync::Arc;
use std::time::Duration;

use anchises_topology::plan::{plan_grow, plan_shrink};
use anchises_topology::{LeaseConfig, Leases, Partitioner, Registry, RingNode};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;
use utoipa::ToSchema;

use super::local::{LocalNode, NodeLaunch};
use super::{ControlPlane, MAX_NODES_PER_DC, NODE_STOP_TIMEOUT};
use crate::cluster::{ClusterSpec, DcState, SlotSpec};
use crate::http::error::ApiError;
use crate::jobs::Job;

/// The lease scope for work that changes the ring or rewrites data on a node.
const RING_SCOPE: &str = "ring";

/// `POST /v1/clusters/{name}/grow` and `/shrink`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// The target number of nodes per data center.
    pub nodes: u64,
}

fn conflict(msg: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, msg)
}

fn ring_of(dc: &DcState) -> Result<Vec<RingNode>, ApiError> {
    dc.slots
        .iter()
        .map(|s| {
            let token = s.token.as_deref().unwrap_or_default();
            Ok(RingNode {
                slot: s.slot,
                rack: dc.racks.iter().position(|r| *r == s.rack).unwrap_or(0),
                token: Partitioner::Murmur3
                    .parse_token(token)
                    .map_err(|e| ApiError::internal(format!("slot {}: {e}", s.slot)))?,
            })
        })
        .collect()
}

/// The slots a DC gains to reach `target` nodes, and the resulting imbalance.
fn grown_slots(
    num_tokens: u32,
    dc: &DcState,
    target: u64,
) -> Result<(Vec<SlotSpec>, f64), ApiError> {
    let next = dc.slots.iter().map(|s| s.slot + 1).max().unwrap_or(0);
    if num_tokens > 1 {
        // Vnodes: Cassandra allocates the tokens; slots only carry the rack.
        let slots = (next..next + target - dc.slots.len() as u64)
            .map(|slot| SlotSpec {
                slot,
                rack: dc.racks[slot as usize % dc.racks.len()].clone(),
                token: None,
            })
            .collect();
        return Ok((slots, 1.0));
    }
    let plan = plan_grow(
        Partitioner::Murmur3,
        &ring_of(dc)?,
        dc.racks.len(),
        target as usize,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut slots: Vec<SlotSpec> = plan
        .new_nodes
        .iter()
        .map(|n| SlotSpec {
            slot: n.slot,
            rack: dc.racks[n.rack].clone(),
            token: Some(n.token.to_string()),
        })
        .collect();
    slots.sort_by_key(|s| s.slot);
    Ok((slots, plan.imbalance))
}

/// The slots a DC loses to reach `target` nodes: the most recent ones.
fn removed_slots(num_tokens: u32, dc: &DcState, target: u64) -> Result<Vec<u64>, ApiError> {
    if num_tokens > 1 {
        let mut slots: Vec<u64> = dc.slots.iter().map(|s| s.slot).collect();
        slots.sort_unstable_by(|a, b| b.cmp(a));
        slots.truncate(dc.slots.len() - target as usize);
        return Ok(slots);
    }
    let plan = plan_shrink(
        Partitioner::Murmur3,
        &ring_of(dc)?,
        dc.racks.len(),
        target as usize,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(plan.remove.iter().map(|n| n.slot).collect())
}

impl ControlPlane {
    /// Validates a resize and starts it as a job of the cluster.
    pub async fn resize(
        self: &Arc<Self>,
        name: &str,
        req: Resize,
        grow: bool,
    ) -> Result<Job, ApiError> {
        let spec = self.spec(name).await?;
        let current = spec.dcs[0].slots.len() as u64;
        if req.nodes == 0 || req.nodes > MAX_NODES_PER_DC {
            return Err(ApiError::bad_request(format!(
                "nodes must be 1 to {MAX_NODES_PER_DC} per data center, got {}",
                req.nodes
            )));
        }
        if grow && req.nodes <= current || !grow && req.nodes >= current {
            return Err(ApiError::bad_request(format!(
                "cluster {name:?} has {current} nodes per data center; {} to {} is not a {}",
                if grow { "growing" } else { "shrinking" },
                req.nodes,
                if grow { "grow" } else { "shrink" }
            )));
        }
        let this = self.clone();
        let target = req.nodes;
        if grow {
            for dc in &spec.dcs {
                grown_slots(spec.num_tokens, dc, target)?;
            }
            return Ok(self.jobs.start(name, "cluster.grow", move |_| async move {
                this.grow(spec, target).await.map_err(|e| format!("{e:#}"))
            })?);
        }
        let mut removed = Vec::new();
        for dc in &spec.dcs {
            removed.push((dc.name.clone(), removed_slots(spec.num_tokens, dc, target)?));
        }
        self.check_shrink(&spec, target, &removed).await?;
        Ok(self
            .jobs
            .start(name, "cluster.shrink", move |_| async move {
                this.shrink(spec, removed)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })?)
    }

    async fn grow(&self, spec: ClusterSpec, target: u64) -> anyhow::Result<Value> {
        let name = spec.name.clone();
        let (mut spec, version) = self
            .specs
            .get(&name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("cluster {name:?} is gone"))?;
        let mut added = Vec::new();
        let mut imbalance = Vec::new();
        let num_tokens = spec.num_tokens;
        for dc in &mut spec.dcs {
            let (slots, imb) =
                grown_slots(num_tokens, dc, target).map_err(|e| anyhow::anyhow!(e.message))?;
            imbalance.push(json!({"dc": dc.name, "imbalance": imb}));
            added.extend(slots.iter().map(|s| (dc.name.clone(), s.clone())));
            dc.slots.extend(slots);
        }
        self.specs.update(&spec, &version).await?;
        info!(cluster = name, ?imbalance, "grow planned");
        // One node at a time: Cassandra allows one range movement at a time.
        let mut joined = Vec::new();
        for (dc, slot) in &added {
            let node = self.provider.launch(NodeLaunch {
                cluster: &name,
                dc,
                rack: &slot.rack,
                node_id: format!("{name}-{dc}-{}", slot.slot),
                cassandra_version: &spec.cassandra_version,
            })?;
            self.wait_ready(&node, &tokio_util::sync::CancellationToken::new())
                .await?;
            info!(cluster = name, slot = slot.slot, "new node joined");
            joined.push(node.node_id.clone());
        }
        // The old nodes still hold the data of the ranges they handed over.
        let old: Vec<LocalNode> = self
            .provider
            .nodes(&name)
            .into_iter()
            .filter(|n| !joined.contains(&n.node_id))
            .collect();
        for node in &old {
            self.under_ring_lease(&name, "cleanup", self.node_action(node, "cleanup"))
                .await?;
        }
        Ok(json!({
            "added_slots": added
                .iter()
                .map(|(dc, s)| json!({"dc": dc, "slot": s.slot, "rack": s.rack, "token": s.token}))
                .collect::<Vec<_>>(),
            "imbalance": imbalance,
            "cleaned_nodes": old.len(),
        }))
    }

    /// Refuses a shrink that would leave fewer nodes than a keyspace's replicas in
    /// a DC, or more data than the remaining nodes have room for.
    async fn check_shrink(
        &self,
        spec: &ClusterSpec,
        target: u64,
        removed: &[(String, Vec<u64>)],
    ) -> Result<(), ApiError> {
        let nodes = self.provider.nodes(&spec.name);
        let mut statuses = Vec::new();
        for n in &nodes {
            statuses.push((n, self.node_status(n).await));
        }
        let Some((live, _)) = statuses
            .iter()
            .find(|(_, s)| s.as_ref().is_some_and(|s| s["ready"] == true))
        else {
            return Err(conflict(format!(
                "cluster {:?} has no ready node to check replication on",
                spec.name
            )));
        };
        let keyspaces: Value = self
            .http
            .get(format!("{}/v1/node/keyspaces", live.api))
            .send()
            .await
            .map_err(ApiError::internal)?
            .json()
            .await
            .map_err(ApiError::internal)?;
        for ks in keyspaces.as_array().into_iter().flatten() {
            let name = ks["name"].as_str().unwrap_or_default();
            // System keyspaces are Cassandra's own business (system_distributed has
            // RF 3 on any cluster); user keyspaces decide.
            if name.starts_with("system") {
                continue;
            }
            let repl = &ks["replication"];
            let class = repl["class"].as_str().unwrap_or_default();
            for dc in &spec.dcs {
                let rf = if class.ends_with("NetworkTopologyStrategy") {
                    repl[dc.name.as_str()]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                } else if class.ends_with("SimpleStrategy") {
                    repl["replication_factor"]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                } else {
                    0
                };
                if rf > target {
                    return Err(conflict(format!(
                        "shrinking {} to {target} nodes would leave keyspace {name} (replication factor {rf} in {}) with fewer nodes than replicas",
                        dc.name, dc.name
                    )));
                }
            }
        }
        let removed_ids: Vec<String> = removed
            .iter()
            .flat_map(|(dc, slots)| slots.iter().map(move |s| format!("{dc}/{s}")))
            .collect();
        let registry: Registry = Registry::new(self.specs.store(), spec.name.as_str());
        let mut leaving_nodes = Vec::new();
        for dc in &spec.dcs {
            for (slot, (claim, _)) in registry
                .claims(&dc.name)
                .await
                .map_err(ApiError::internal)?
            {
                if removed_ids.contains(&format!("{}/{slot}", dc.name)) {
                    leaving_nodes.push(claim.node_id);
                }
            }
        }
        let load = |s: &Option<Value>| {
            s.as_ref()
                .and_then(|s| s["load_bytes"].as_u64())
                .unwrap_or(0)
        };
        let leaving_load: u64 = statuses
            .iter()
            .filter(|(n, _)| leaving_nodes.contains(&n.node_id))
            .map(|(_, s)| load(s))
            .sum();
        let staying: Vec<&(&LocalNode, Option<Value>)> = statuses
            .iter()
            .filter(|(n, _)| !leaving_nodes.contains(&n.node_id))
            .collect();
        let share = leaving_load / staying.len().max(1) as u64;
        for (n, s) in staying {
            let free = s
                .as_ref()
                .and_then(|s| s["disk_free_bytes"].as_u64())
                .unwrap_or(u64::MAX);
            // Keep a tenth of the disk free: compaction needs headroom.
            if share > free / 10 * 9 {
                return Err(conflict(format!(
                    "node {} would receive about {share} bytes but has {free} bytes free",
                    n.node_id
                )));
            }
        }
        Ok(())
    }

    async fn shrink(
        &self,
        spec: ClusterSpec,
        removed: Vec<(String, Vec<u64>)>,
    ) -> anyhow::Result<Value> {
        let name = spec.name.clone();
        let registry: Registry = Registry::new(self.specs.store(), name.as_str());
        let mut done = Vec::new();
        for (dc, slots) in &removed {
            for slot in slots {
                let claims = registry.claims(dc).await?;
                let node = claims.get(slot).and_then(|(c, _)| {
                    self.provider
                        .nodes(&name)
                        .into_iter()
                        .find(|n| n.node_id == c.node_id)
                });
                if let Some(node) = &node {
                    self.under_ring_lease(
                        &name,
                        "decommission",
                        self.node_action(node, "decommission"),
                    )
                    .await?;
                    self.provider.stop(&node.node_id, NODE_STOP_TIMEOUT).await;
                    self.provider.forget(&name, &node.node_id)?;
                }
                // Free the slot: its claim, then its place in the spec.
                if let Some(found) = registry.claims(dc).await?.get(slot) {
                    let key = anchises_topology::CasKey::new(format!(
                        "{name}/registry/{dc}/{slot}.json"
                    ))?;
                    match self.specs.store().delete_if_match(&key, &found.1).await {
                        Ok(()) => {}
                        Err(e) if e.is_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let (mut current, version) = self
                    .specs
                    .get(&name)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("cluster {name:?} is gone"))?;
                if let Some(d) = current.dcs.iter_mut().find(|d| &d.name == dc) {
                    d.slots.retain(|s| s.slot != *slot);
                    d.initial_nodes = d.initial_nodes.min(d.slots.len() as u64);
                }
                self.specs.update(&current, &version).await?;
                info!(cluster = name, dc, slot, "slot decommissioned and freed");
                done.push(json!({"dc": dc, "slot": slot}));
            }
        }
        Ok(json!({"removed_slots": done}))
    }

    /// Runs a node action through the node's sidecar API and waits for its job.
    async fn node_action(&self, node: &LocalNode, action: &str) -> anyhow::Result<Value> {
        let http = reqwest::Client::new();
        let mut req = http.post(format!("{}/v1/node/{action}", node.api));
        if action == "decommission" {
            // check_shrink has checked the user keyspaces; Cassandra would also
            // refuse for system_distributed (RF 3) on any cluster of 3 nodes.
            req = req.json(&json!({"force": true}));
        }
        let r = req.send().await?;
        let status = r.status();
        let job: Value = r.json().await?;
        if status != reqwest::StatusCode::ACCEPTED {
            anyhow::bail!("{action} on {}: {}", node.node_id, job["error"]);
        }
        let url = format!(
            "{}/v1/jobs/{}",
            node.api,
            job["id"].as_str().unwrap_or_default()
        );
        loop {
            let job: Value = http.get(&url).send().await?.json().await?;
            match job["state"].as_str() {
                Some("running") => tokio::time::sleep(Duration::from_secs(1)).await,
                Some("succeeded") => return Ok(job),
                _ => anyhow::bail!("{action} on {} failed: {}", node.node_id, job["error"]),
            }
        }
    }

    /// Holds the cluster's ring lease (renewed in the background) around `work`:
    /// only one node at a time rewrites data or leaves the ring.
    async fn under_ring_lease<F>(&self, cluster: &str, op: &str, work: F) -> anyhow::Result<Value>
    where
        F: std::future::Future<Output = anyhow::Result<Value>>,
    {
        let leases: Leases = Leases::new(self.specs.store(), cluster, LeaseConfig::default());
        let lease = leases
            .acquire_and_hold(
                RING_SCOPE,
                "control-plane",
                Some(op),
                Duration::from_millis(500),
            )
            .await?;
        info!(
            cluster,
            op,
            fencing_token = lease.fencing_token(),
            "ring lease acquired"
        );
        let outcome = work.await;
        lease.release().await?;
        outcome
    }
}
