//! The membership registry: which node holds which slot of a data center, kept
//! as one CAS document per slot at `<cluster>/registry/<dc>/<slot>.json`.
//!
//! A booting node, in Priam's order: keeps the slot it already holds (same node
//! id, e.g. a restarted sidecar); else takes over a dead node's slot in its rack
//! (heartbeat stale *and* the caller confirms the ring sees the node DOWN), and
//! then starts Cassandra with `replace_address_first_boot`; else claims the lowest
//! free slot of its rack with a create-if-absent. Every change is a CAS on the
//! slot's document, so two nodes never hold one slot, and a live node that
//! heartbeats during a takeover attempt makes the takeover fail instead of being
//! replaced. Which slots exist and what tokens they carry comes from the caller
//! (`layout` or a grow plan); this module never computes tokens or talks to
//! Cassandra.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cas::{get_json, to_json_bytes, CasError, CasKey, CasStore, Version};
use crate::layout::DcLayout;

/// How often `claim` starts over after losing a CAS race before giving up.
const CLAIM_ATTEMPTS: usize = 16;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("data center {dc:?} has no slot in rack {rack:?}")]
    NoSlotInRack { dc: String, rack: String },
    #[error("every slot of rack {rack:?} in data center {dc:?} is held by a live node")]
    NoFreeSlot { dc: String, rack: String },
    #[error("slots of data center {dc:?} are contended")]
    Contended { dc: String },
    /// Our claim was overwritten: another node took the slot over.
    #[error("slot {slot} of data center {dc:?} is no longer ours")]
    Lost { dc: String, slot: u64 },
    #[error("invalid name {0:?} for a registry key")]
    InvalidName(String),
    #[error(transparent)]
    Store(#[from] CasError),
}

/// Where the node holding a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Claimed a fresh slot; bootstrapping.
    Joining,
    /// Took over a dead node's slot; streaming its data.
    Replacing,
    /// Cassandra reports NORMAL.
    Normal,
    /// Decommissioning.
    Leaving,
}

/// The stored claim of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotClaim {
    pub slot: u64,
    pub dc: String,
    pub rack: String,
    /// Decimal tokens for `initial_token`; empty for vnodes until known.
    pub tokens: Vec<String>,
    pub node_id: String,
    pub address: String,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    pub state: SlotState,
}

/// A slot a node may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSlot {
    pub slot: u64,
    pub rack: String,
    pub tokens: Vec<String>,
}

impl PlannedSlot {
    /// The slots of a single-token layout.
    pub fn from_layout(dc: &DcLayout) -> Vec<PlannedSlot> {
        dc.slots
            .iter()
            .map(|s| PlannedSlot {
                slot: s.slot,
                rack: dc.rack_name(s).to_string(),
                tokens: vec![s.token.to_string()],
            })
            .collect()
    }
}

/// Who is asking for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Stable across sidecar restarts (instance id, or a name from config).
    pub node_id: String,
    pub dc: String,
    pub rack: String,
    pub address: String,
}

/// How the node came by its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// A free slot: bootstrap normally.
    Fresh,
    /// The slot this node already held.
    Kept,
    /// A dead node's slot: start with `replace_address_first_boot`.
    Takeover { replace_address: String },
}

/// A slot we hold, as of our last write.
#[derive(Debug, Clone)]
pub struct Claim {
    pub claim: SlotClaim,
    pub outcome: ClaimOutcome,
    key: CasKey,
    version: Version,
}

/// A seed node for cassandra.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub dc: String,
    pub rack: String,
    pub slot: u64,
    pub address: String,
}

/// The slot registry of one cluster.
#[derive(Debug)]
pub struct Registry<S: CasStore + ?Sized = dyn CasStore> {
    store: Arc<S>,
    cluster: String,
}

impl<S: CasStore + ?Sized> Registry<S> {
    pub fn new(store: Arc<S>, cluster: impl Into<String>) -> Self {
        Registry {
            store,
            cluster: cluster.into(),
        }
    }

    fn dc_prefix(&self, dc: &str) -> Result<String, RegistryError> {
        if dc.contains('/') || CasKey::new(format!("{}/registry/{dc}", self.cluster)).is_err() {
            return Err(RegistryError::InvalidName(dc.to_string()));
        }
        Ok(format!("{}/registry/{dc}/", self.cluster))
    }

    fn slot_key(&self, dc: &str, slot: u64) -> Result<CasKey, RegistryError> {
        Ok(CasKey::new(format!("{}{slot}.json", self.dc_prefix(dc)?))?)
    }

    /// The claims of one data center by slot, with their versions.
    pub async fn claims(
        &self,
        dc: &str,
    ) -> Result<BTreeMap<u64, (SlotClaim, Version)>, RegistryError> {
        let prefix = self.dc_prefix(dc)?;
        let mut claims = BTreeMap::new();
        for key in self.store.list(&prefix).await? {
            // Deleted between list and get: a decommissioned slot, now free.
            if let Some((claim, version)) = get_json::<SlotClaim>(&*self.store, &key).await? {
                claims.insert(claim.slot, (claim, version));
            }
        }
        Ok(claims)
    }

    /// Keeps, takes over or claims a slot for `node` among `slots` (see the module
    /// docs for the order). A claim whose heartbeat is older than `stale_after`
    /// is replaced only if `is_down` confirms it.
    pub async fn claim(
        &self,
        node: &NodeIdentity,
        slots: &[PlannedSlot],
        stale_after: Duration,
        is_down: impl Fn(&SlotClaim) -> bool + Send + Sync,
    ) -> Result<Claim, RegistryError> {
        let candidates: Vec<&PlannedSlot> = slots.iter().filter(|s| s.rack == node.rack).collect();
        if candidates.is_empty() {
            return Err(RegistryError::NoSlotInRack {
                dc: node.dc.clone(),
                rack: node.rack.clone(),
            });
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let claims = self.claims(&node.dc).await?;
            let now = OffsetDateTime::now_utc();
            let fresh_claim = |slot: &PlannedSlot, tokens: Vec<String>, state| SlotClaim {
                slot: slot.slot,
                dc: node.dc.clone(),
                rack: node.rack.clone(),
                tokens,
                node_id: node.node_id.clone(),
                address: node.address.clone(),
                heartbeat_at: now,
                state,
            };

            if let Some((mine, version)) = claims.values().find(|(c, _)| c.node_id == node.node_id)
            {
                let kept = SlotClaim {
                    address: node.address.clone(),
                    heartbeat_at: now,
                    ..mine.clone()
                };
                match self.write(&kept, Some(version)).await {
                    Ok(claim) => return Ok(claim.with(ClaimOutcome::Kept)),
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }

            let dead = candidates.iter().find_map(|slot| {
                let (claim, version) = claims.get(&slot.slot)?;
                let stale = now - claim.heartbeat_at > stale_after;
                (stale && is_down(claim)).then_some((slot, claim, version))
            });
            if let Some((slot, dead, version)) = dead {
                // The slot's tokens stay with the slot: the replacement takes the
                // dead node's place on the ring, and its backups' lineage.
                let replacement = fresh_claim(slot, dead.tokens.clone(), SlotState::Replacing);
                match self.write(&replacement, Some(version)).await {
                    Ok(claim) => {
                        tracing::warn!(
                            dc = node.dc,
                            slot = slot.slot,
                            dead = dead.node_id,
                            replace_address = dead.address,
                            "taking over a dead node's slot"
                        );
                        let replace_address = dead.address.clone();
                        return Ok(claim.with(ClaimOutcome::Takeover { replace_address }));
                    }
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            }

            let Some(free) = candidates.iter().find(|s| !claims.contains_key(&s.slot)) else {
                return Err(RegistryError::NoFreeSlot {
                    dc: node.dc.clone(),
                    rack: node.rack.clone(),
                });
            };
            match self
                .write(
                    &fresh_claim(free, free.tokens.clone(), SlotState::Joining),
                    None,
                )
                .await
            {
                Ok(claim) => return Ok(claim.with(ClaimOutcome::Fresh)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contended {
            dc: node.dc.clone(),
        })
    }

    /// Refreshes our claim's heartbeat and state; `Lost` if another node has
    /// taken the slot over, and then this node must stop serving it.
    pub async fn heartbeat(
        &self,
        claim: &mut Claim,
        state: SlotState,
    ) -> Result<(), RegistryError> {
        let next = SlotClaim {
            heartbeat_at: OffsetDateTime::now_utc(),
            state,
            ..claim.claim.clone()
        };
        match self
            .store
            .put_if_match(&claim.key, to_json_bytes(&next), &claim.version)
            .await
        {
            Ok(version) => {
                claim.claim = next;
                claim.version = version;
                Ok(())
            }
            Err(e) if e.is_conflict() => Err(RegistryError::Lost {
                dc: claim.claim.dc.clone(),
                slot: claim.claim.slot,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Frees our slot after a decommission; `Lost` if it is no longer ours.
    pub async fn release(&self, claim: Claim) -> Result<(), RegistryError> {
        match self.store.delete_if_match(&claim.key, &claim.version).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_conflict() => Err(RegistryError::Lost {
                dc: claim.claim.dc,
                slot: claim.claim.slot,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `per_rack` seeds per rack of every listed data center: the lowest
    /// slots whose heartbeat is fresher than `alive_within` and which are not
    /// leaving. Lowest slots first keeps the seed list stable as nodes come and
    /// go. Whether a node lists itself is the caller's call: a seed skips
    /// bootstrap, which only the first nodes of a new cluster should do.
    pub async fn seeds(
        &self,
        dcs: &[&str],
        per_rack: usize,
        alive_within: Duration,
    ) -> Result<Vec<Seed>, RegistryError> {
        let now = OffsetDateTime::now_utc();
        let mut seeds = Vec::new();
        for dc in dcs {
            let mut taken: BTreeMap<String, usize> = BTreeMap::new();
            for (claim, _) in self.claims(dc).await?.into_values() {
                let alive =
                    now - claim.heartbeat_at <= alive_within && claim.state != SlotState::Leaving;
                let count = taken.entry(claim.rack.clone()).or_default();
                if alive && *count < per_rack {
                    *count += 1;
                    seeds.push(Seed {
                        dc: claim.dc,
                        rack: claim.rack,
                        slot: claim.slot,
                        address: claim.address,
                    });
                }
            }
        }
        Ok(seeds)
    }

    async fn write(
        &self,
        claim: &SlotClaim,
        expected: Option<&Version>,
    ) -> Result<Claim, CasError> {
        let key = self
            .slot_key(&claim.dc, claim.slot)
            .map_err(|_| CasError::InvalidKey {
                key: claim.dc.clone(),
                reason: "data center is not a key segment",
            })?;
        let bytes = to_json_bytes(claim);
        let version = match expected {
            None => self.store.put_if_absent(&key, bytes).await?,
            Some(expected) => self.store.put_if_match(&key, bytes, expected).await?,
        };
        Ok(Claim {
            claim: claim.clone(),
            outcome: ClaimOutcome::Fresh,
            key,
            version,
        })
    }
}

impl Claim {
    fn with(mut self, outcome: ClaimOutcome) -> Self {
        self.outcome = outcome;
        self
    }
}
