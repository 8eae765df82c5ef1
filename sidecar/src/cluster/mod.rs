//! A cluster as the coordinator stores it: `<cluster>/spec.json` holds the data
//! centers, their racks and the slot table (slot → rack, token). The control plane
//! writes it; every node reads it at boot to know which slots exist. Slots are never
//! renumbered: backups and the registry are keyed by them.

pub mod boot;

use std::sync::Arc;

use anchises_topology::cas::{get_json, to_json_bytes};
use anchises_topology::{CasError, CasKey, CasStore, DcSpec, Partitioner, RingLayout, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One slot of a data center: where a node sits on the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SlotSpec {
    pub slot: u64,
    pub rack: String,
    /// The slot's token in single-token mode; none with vnodes.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DcState {
    pub name: String,
    pub racks: Vec<String>,
    /// Slots of the first nodes: they start together without bootstrapping.
    pub initial_nodes: u64,
    pub slots: Vec<SlotSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSpec {
    pub name: String,
    pub cassandra_version: String,
    /// 1: one token per node, placed by slot (Priam style); more: vnodes.
    pub num_tokens: u32,
    pub dcs: Vec<DcState>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: time::OffsetDateTime,
    /// The cluster backup every node starts from (a copy of another cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFrom>,
}

/// A cluster backup to start a new cluster's nodes from: slot N of the new
/// cluster starts with the data of slot N of the source (same tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreFrom {
    pub cluster: String,
    pub backup_id: String,
}

impl ClusterSpec {
    /// A new cluster of `nodes` per DC spread over `racks`: slot tokens from the
    /// single-token layout (checked unique across DCs), or none for vnodes.
    pub fn new(
        name: &str,
        dcs: &[String],
        racks: &[String],
        nodes: u64,
        num_tokens: u32,
        cassandra_version: &str,
    ) -> Result<ClusterSpec, String> {
        let specs: Vec<DcSpec> = dcs
            .iter()
            .map(|dc| DcSpec {
                name: dc.clone(),
                racks: racks.to_vec(),
                nodes,
                offset: None,
            })
            .collect();
        let layout = RingLayout::new(Partitioner::Murmur3, &specs).map_err(|e| e.to_string())?;
        let dcs = layout
            .dcs
            .iter()
            .map(|dc| DcState {
                name: dc.name.clone(),
                racks: dc.racks.clone(),
                initial_nodes: nodes,
                slots: dc
                    .slots
                    .iter()
                    .map(|s| SlotSpec {
                        slot: s.slot,
                        rack: dc.rack_name(s).to_string(),
                        token: (num_tokens == 1).then(|| s.token.to_string()),
                    })
                    .collect(),
            })
            .collect();
        Ok(ClusterSpec {
            name: name.to_string(),
            cassandra_version: cassandra_version.to_string(),
            num_tokens,
            dcs,
            created_at: time::OffsetDateTime::now_utc(),
            restore_from: None,
        })
    }

    pub fn dc(&self, name: &str) -> Option<&DcState> {
        self.dcs.iter().find(|d| d.name == name)
    }

    pub fn node_count(&self) -> usize {
        self.dcs.iter().map(|d| d.slots.len()).sum()
    }
}

/// Reads and writes cluster specs in the coordinator store.
#[derive(Clone)]
pub struct Specs {
    store: Arc<dyn CasStore>,
}

fn spec_key(cluster: &str) -> Result<CasKey, CasError> {
    CasKey::new(format!("{cluster}/spec.json"))
}

impl Specs {
    pub fn new(store: Arc<dyn CasStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> Arc<dyn CasStore> {
        self.store.clone()
    }

    pub async fn get(&self, cluster: &str) -> Result<Option<(ClusterSpec, Version)>, CasError> {
        get_json(&*self.store, &spec_key(cluster)?).await
    }

    /// Creates the spec; `Conflict` if a cluster of that name exists.
    pub async fn create(&self, spec: &ClusterSpec) -> Result<Version, CasError> {
        self.store
            .put_if_absent(&spec_key(&spec.name)?, to_json_bytes(spec))
            .await
    }

    pub async fn update(&self, spec: &ClusterSpec, version: &Version) -> Result<Version, CasError> {
        self.store
            .put_if_match(&spec_key(&spec.name)?, to_json_bytes(spec), version)
            .await
    }

    /// Deletes the spec and everything else stored under the cluster's name.
    pub async fn delete_all(&self, cluster: &str) -> Result<(), CasError> {
        for key in self.store.list(&format!("{cluster}/")).await? {
            if let Some(found) = self.store.get(&key).await? {
                match self.store.delete_if_match(&key, &found.version).await {
                    Ok(()) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Names of every stored cluster.
    pub async fn list(&self) -> Result<Vec<String>, CasError> {
        let mut names: Vec<String> = self
            .store
            .list("")
            .await?
            .into_iter()
            .filter_map(|k| k.as_str().strip_suffix("/spec.json").map(String::from))
            .filter(|n| !n.contains('/'))
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_node_single_token_cluster_has_the_balanced_tokens_plus_the_dc_offset() {
        let spec = ClusterSpec::new("c", &["dc1".into()], &["r1".into()], 3, 1, "5.0.9").unwrap();
        let dc = spec.dc("dc1").unwrap();
        let offset = anchises_topology::layout::derived_dc_offset("dc1") as i128;
        let tokens: Vec<i128> = dc
            .slots
            .iter()
            .map(|s| s.token.as_ref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            tokens,
            [
                -9223372036854775808 + offset,
                -3074457345618258603 + offset,
                3074457345618258602 + offset
            ]
        );
        assert_eq!(spec.node_count(), 3);
    }

    #[test]
    fn vnode_clusters_have_slots_without_tokens_and_bad_layouts_are_refused() {
        let spec = ClusterSpec::new(
            "c",
            &["dc1".into()],
            &["a".into(), "b".into()],
            4,
            16,
            "5.0.9",
        )
        .unwrap();
        assert!(spec.dcs[0].slots.iter().all(|s| s.token.is_none()));
        assert_eq!(spec.dcs[0].slots[1].rack, "b");
        let err = ClusterSpec::new(
            "c",
            &["dc1".into()],
            &["a".into(), "b".into()],
            3,
            1,
            "5.0.9",
        )
        .unwrap_err();
        assert!(err.contains("multiple"), "{err}");
    }
}
