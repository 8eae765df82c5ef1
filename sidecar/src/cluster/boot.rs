//! A node joining its cluster through the coordinator, before Cassandra starts:
//! read the cluster spec, claim a slot in the registry (keep ours, take over a dead
//! node's, or the lowest free one of our rack), derive tokens, seeds and bootstrap
//! settings from it, then keep the claim alive with heartbeats. Cassandra itself is
//! started by the supervisor with the config returned here.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anchises_topology::{
    CasStore, Claim, ClaimOutcome, NodeIdentity, PlannedSlot, Registry, RegistryError, SlotState,
};
use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ClusterSpec, Specs};
use crate::cassandra::jolokia::{Jolokia, STORAGE_SERVICE};
use crate::cassandra::supervisor::Supervisor;
use crate::config::Config;

/// How long a node waits for the seed slots of its cluster to be claimed.
const SEED_WAIT: Duration = Duration::from_secs(300);

pub struct Joined {
    /// The node's config with tokens, seeds and bootstrap settings filled in.
    pub config: Config,
    pub claim: Claim,
    pub registry: Registry,
    /// The cluster's data centers.
    pub dcs: Vec<String>,
    /// The backup a node of a copied cluster starts from.
    pub restore_from: Option<super::RestoreFrom>,
}

/// The node's identity in the registry: configured, or dc/rack/address.
fn node_id(config: &Config) -> String {
    config.cluster.node_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            config.node.dc, config.node.rack, config.node.address
        )
    })
}

/// A claimed node whose storage port no longer answers: its process is gone.
/// (Cassandra itself refuses `replace_address` for a node the ring sees alive.)
fn process_gone(address: &str, port: u16) -> bool {
    let Ok(ip) = address.parse() else {
        return true;
    };
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(1)).is_err()
}

pub async fn join(config: &Config, store: Arc<dyn CasStore>) -> anyhow::Result<Joined> {
    let cluster = &config.node.cluster_name;
    let (spec, _) = Specs::new(store.clone())
        .get(cluster)
        .await?
        .ok_or_else(|| {
            anyhow!("cluster {cluster:?} has no spec in the coordinator (create it with `anchises cluster create`)")
        })?;
    let dc = spec.dc(&config.node.dc).ok_or_else(|| {
        anyhow!(
            "cluster {cluster:?} has no data center {:?}",
            config.node.dc
        )
    })?;
    let slots: Vec<PlannedSlot> = dc
        .slots
        .iter()
        .map(|s| PlannedSlot {
            slot: s.slot,
            rack: s.rack.clone(),
            tokens: s.token.iter().cloned().collect(),
        })
        .collect();
    let registry = Registry::new(store, cluster.clone());
    let me = NodeIdentity {
        node_id: node_id(config),
        dc: config.node.dc.clone(),
        rack: config.node.rack.clone(),
        address: config.node.address.to_string(),
    };
    let port = config.node.storage_port;
    let claim = registry
        .claim(&me, &slots, config.cluster.stale_after, |c| {
            process_gone(&c.address, port)
        })
        .await
        .context("cannot claim a slot")?;
    let slot = claim.claim.slot;
    info!(slot, outcome = ?claim.outcome, tokens = ?claim.claim.tokens, "slot claimed");

    let mut joined = config.clone();
    let n = &mut joined.node;
    joined.cassandra.version = spec.cassandra_version.clone();
    if spec.num_tokens == 1 {
        n.num_tokens = claim.claim.tokens.len().max(1) as u32;
        n.initial_token = Some(claim.claim.tokens.join(","));
        n.allocate_tokens_for_rf = None;
    } else {
        n.num_tokens = spec.num_tokens;
        n.initial_token = None;
        n.allocate_tokens_for_rf = Some(3);
    }
    // The first nodes of a new cluster start together without bootstrapping;
    // a node added later, or a replacement, streams its data in.
    let initial = slot < dc.initial_nodes;
    let bootstraps = match &claim.outcome {
        ClaimOutcome::Fresh => !initial,
        ClaimOutcome::Kept => false,
        ClaimOutcome::Takeover { replace_address } => {
            n.replace_address = Some(
                replace_address
                    .parse()
                    .with_context(|| format!("bad address {replace_address:?} in the registry"))?,
            );
            true
        }
    };
    n.auto_bootstrap = Some(bootstraps);
    let seeds = seeds(&spec, &registry, &me.address, bootstraps).await?;
    info!(?seeds, bootstraps, "seeds from the registry");
    joined.node.seeds = seeds;
    joined
        .validate()
        .context("the config derived from the registry is invalid")?;
    Ok(Joined {
        config: joined,
        claim,
        registry,
        dcs: spec.dcs.iter().map(|d| d.name.clone()).collect(),
        restore_from: spec.restore_from.clone(),
    })
}

/// The holder of the lowest slot of every rack of every DC. A bootstrapping node is
/// never its own seed (a seed skips bootstrap); it uses the others.
async fn seeds(
    spec: &ClusterSpec,
    registry: &Registry,
    me: &str,
    bootstraps: bool,
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + SEED_WAIT;
    loop {
        let mut seeds = Vec::new();
        let mut missing = Vec::new();
        for dc in &spec.dcs {
            let claims = registry.claims(&dc.name).await?;
            for rack in &dc.racks {
                let Some(lowest) = dc
                    .slots
                    .iter()
                    .filter(|s| &s.rack == rack)
                    .map(|s| s.slot)
                    .min()
                else {
                    continue;
                };
                match claims.get(&lowest) {
                    Some((c, _)) if bootstraps && c.address == me => {}
                    Some((c, _)) => seeds.push(c.address.clone()),
                    None => missing.push(format!("{}/{lowest}", dc.name)),
                }
            }
        }
        if missing.is_empty() {
            if seeds.is_empty() {
                // Replacing the only seed: any other live node will do.
                seeds = registry
                    .seeds(
                        &spec.dcs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
                        2,
                        Duration::from_secs(60),
                    )
                    .await?
                    .into_iter()
                    .map(|s| s.address)
                    .filter(|a| a != me)
                    .collect();
            }
            if seeds.is_empty() {
                bail!(
                    "no seed: no other live node is registered in cluster {:?}",
                    spec.name
                );
            }
            return Ok(seeds);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("seed slots never claimed: {}", missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refreshes the claim until shutdown. If another node took the slot over, this
/// node must not serve it any more: Cassandra is stopped.
pub async fn heartbeat(
    registry: Registry,
    mut claim: Claim,
    every: Duration,
    jolokia: Jolokia,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) {
    let mut state = claim.claim.state;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Ok(mode) = jolokia.read(STORAGE_SERVICE, "OperationMode").await {
            state = match mode.as_str() {
                Some("NORMAL") => SlotState::Normal,
                Some("LEAVING") | Some("DECOMMISSIONED") => SlotState::Leaving,
                _ => state,
            };
        }
        match registry.heartbeat(&mut claim, state).await {
            Ok(()) => {}
            Err(RegistryError::Lost { dc, slot }) => {
                error!(
                    dc,
                    slot, "another node took over this slot; stopping cassandra"
                );
                let _ = supervisor.stop().await;
                return;
            }
            Err(e) => warn!(error = %e, "heartbeat failed; retrying"),
        }
    }
}
