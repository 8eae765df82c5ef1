//! Replacing dead nodes: a node whose process exited unasked and whose registry
//! heartbeat has gone stale is replaced by a new node in the same data center and
//! rack. The new node takes over the dead node's slot through the registry and
//! starts with `replace_address_first_boot`, streaming the slot's data back.

use std::sync::Arc;
use std::time::Duration;

use anchises_topology::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::local::NodeLaunch;
use super::ControlPlane;

/// Longer than a node's registry `stale_after` (30 s by default), so that the
/// replacement's claim sees the dead node's heartbeat as stale.
const DEAD_AFTER: Duration = Duration::from_secs(35);
const EVERY: Duration = Duration::from_secs(5);

impl ControlPlane {
    pub async fn replace_dead_nodes_until(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            if let Err(e) = self.replace_dead_nodes().await {
                warn!(error = %e, "checking for dead nodes failed");
            }
        }
    }

    async fn replace_dead_nodes(self: &Arc<Self>) -> anyhow::Result<()> {
        for cluster in self.specs.list().await? {
            // A create, grow or shrink in progress owns the cluster's nodes.
            if self.jobs.busy(&cluster) {
                continue;
            }
            let Some((spec, _)) = self.specs.get(&cluster).await? else {
                continue;
            };
            let registry: Registry = Registry::new(self.specs.store(), cluster.as_str());
            for dead in self.provider.nodes(&cluster) {
                if !self.provider.exited(&dead.node_id) {
                    continue;
                }
                let claims = registry.claims(&dead.dc).await?;
                let Some((claim, _)) = claims.values().find(|(c, _)| c.node_id == dead.node_id)
                else {
                    continue;
                };
                if time::OffsetDateTime::now_utc() - claim.heartbeat_at < DEAD_AFTER {
                    continue;
                }
                let slot = claim.slot;
                let this = self.clone();
                let version = spec.cassandra_version.clone();
                let cluster_name = cluster.clone();
                warn!(
                    cluster,
                    node = dead.node_id,
                    slot,
                    "node is dead; replacing it"
                );
                self.jobs.start(&cluster, "cluster.replace", move |cancel| async move {
                    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
                    let node = this
                        .provider
                        .launch(NodeLaunch {
                            cluster: &cluster_name,
                            dc: &dead.dc,
                            rack: &dead.rack,
                            node_id: format!("{cluster_name}-{}-{slot}-{stamp}", dead.dc),
                            cassandra_version: &version,
                        })
                        .map_err(|e| format!("{e:#}"))?;
                    this.provider
                        .forget(&cluster_name, &dead.node_id)
                        .map_err(|e| format!("{e:#}"))?;
                    this.wait_ready(&node, &cancel)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    info!(cluster = cluster_name, slot, node = node.node_id, "dead node replaced");
                    Ok(json!({"slot": slot, "replaced": dead.node_id, "by": node.node_id, "address": node.address}))
                })?;
                // One replacement at a time per cluster: the job holds the group.
                break;
            }
        }
        Ok(())
    }
}
