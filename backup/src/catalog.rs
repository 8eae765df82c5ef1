//! Reading and writing what describes backups: node manifests, the incremental
//! log and cluster indexes.

use futures::{StreamExt, TryStreamExt};

use crate::error::BackupError;
use crate::manifest::{
    cluster_index_key, cluster_index_prefix, BackupId, ClusterIndex, IncrementalEntry,
    NodeManifest, SlotRef,
};
use crate::store::{ObjectKey, ObjectStore, StoreError};

/// Manifests and logs are small: this many are read at once.
const READ_CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
pub struct Catalog {
    store: ObjectStore,
}

impl Catalog {
    pub fn new(store: ObjectStore) -> Self {
        Catalog { store }
    }

    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    pub async fn put_manifest(&self, manifest: &NodeManifest) -> Result<(), BackupError> {
        let key = manifest.slot.manifest_key(&manifest.backup_id)?;
        self.store.put(&key, manifest.encode().into()).await?;
        Ok(())
    }

    /// A slot's manifest of backup `id`, if there is one.
    pub async fn manifest(
        &self,
        slot: &SlotRef,
        id: &BackupId,
    ) -> Result<Option<NodeManifest>, BackupError> {
        let key = slot.manifest_key(id)?;
        match self.store.get(&key).await {
            Ok(bytes) => NodeManifest::decode(&bytes)
                .map(Some)
                .map_err(|e| BackupError::Corrupt(format!("{key}: {e}"))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The ids of a slot's backups, oldest first.
    pub async fn backup_ids(&self, slot: &SlotRef) -> Result<Vec<BackupId>, BackupError> {
        let listed = self.store.list(&slot.manifest_prefix()).await?;
        let mut ids: Vec<BackupId> = listed
            .iter()
            .filter_map(|o| slot.backup_id_of_manifest_key(&o.key))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every manifest of a slot, oldest (by start time) first.
    pub async fn manifests(&self, slot: &SlotRef) -> Result<Vec<NodeManifest>, BackupError> {
        let ids = self.backup_ids(slot).await?;
        let manifests: Vec<Option<NodeManifest>> = futures::stream::iter(ids)
            .map(|id| async move { self.manifest(slot, &id).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut manifests: Vec<NodeManifest> = manifests.into_iter().flatten().collect();
        manifests.sort_by(|a, b| (a.started_at, &a.backup_id).cmp(&(b.started_at, &b.backup_id)));
        Ok(manifests)
    }

    pub async fn delete_manifest(&self, slot: &SlotRef, id: &BackupId) -> Result<(), BackupError> {
        self.store.delete(&slot.manifest_key(id)?).await?;
        Ok(())
    }

    /// Appends an entry to a slot's incremental log; returns its key.
    pub async fn put_incremental(
        &self,
        entry: &IncrementalEntry,
    ) -> Result<ObjectKey, BackupError> {
        let key = entry.slot.incremental_key(entry.uploaded_at)?;
        let json = serde_json::to_vec(entry).expect("log entries serialize");
        self.store.put(&key, json.into()).await?;
        Ok(key)
    }

    /// A slot's incremental log, oldest first.
    pub async fn incremental_log(
        &self,
        slot: &SlotRef,
    ) -> Result<Vec<(ObjectKey, IncrementalEntry)>, BackupError> {
        let listed = self.store.list(&slot.incremental_prefix()).await?;
        futures::stream::iter(listed)
            .map(|object| async move {
                let bytes = self.store.get(&object.key).await?;
                let entry: IncrementalEntry = serde_json::from_slice(&bytes).map_err(|e| {
                    BackupError::Corrupt(format!(
                        "{}: not an incremental log entry: {e}",
                        object.key
                    ))
                })?;
                Ok::<_, BackupError>((object.key, entry))
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    pub async fn put_cluster_index(&self, index: &ClusterIndex) -> Result<(), BackupError> {
        let key = cluster_index_key(&index.cluster, &index.backup_id)?;
        let json = serde_json::to_vec_pretty(index).expect("indexes serialize");
        self.store.put(&key, json.into()).await?;
        Ok(())
    }

    pub async fn cluster_index(
        &self,
        cluster: &str,
        id: &BackupId,
    ) -> Result<Option<ClusterIndex>, BackupError> {
        let key = cluster_index_key(cluster, id)?;
        match self.store.get(&key).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| BackupError::Corrupt(format!("{key}: {e}"))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The ids of a cluster's cluster-wide backups that have an index.
    pub async fn cluster_backup_ids(&self, cluster: &str) -> Result<Vec<BackupId>, BackupError> {
        let prefix = cluster_index_prefix(cluster);
        let listed = self.store.list(&prefix).await?;
        let mut ids: Vec<BackupId> = listed
            .iter()
            .filter_map(|o| {
                let rest = o.key.as_str().strip_prefix(&prefix)?;
                BackupId::parse(rest.strip_suffix(".json")?).ok()
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn delete_cluster_index(
        &self,
        cluster: &str,
        id: &BackupId,
    ) -> Result<(), BackupError> {
        self.store.delete(&cluster_index_key(cluster, id)?).await?;
        Ok(())
    }
}
