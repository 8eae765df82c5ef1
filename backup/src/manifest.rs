//! What a backup is made of, as stored: node manifests, incremental log
//! entries and cluster indexes, and the keys they live under.
//!
//! ```text
//! <cluster>/nodes/<dc>/<slot>/sst/<ks>/<table dir>/<file>[.zst]   SSTable components
//! <cluster>/nodes/<dc>/<slot>/manifests/<backup id>.json.zst      node manifests
//! <cluster>/nodes/<dc>/<slot>/incremental/<millis>-<n>.json       incremental log
//! <cluster>/backups/<backup id>.json                              cluster index
//! ```
//!
//! A manifest only ever names objects that are already stored and hashed, and
//! it is written last: a reader that finds a manifest can trust every entry.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{ObjectKey, StoreError};

/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What the tags of the snapshots backups take start with.
pub const SNAPSHOT_TAG_PREFIX: &str = "anchises-";

/// A backup id: `YYYYMMDDTHHMMSSZ-xxxxxx`, sortable by time, valid as a key
/// segment and (prefixed) as a snapshot tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    pub fn generate(at: OffsetDateTime) -> Self {
        let at = at.to_offset(time::UtcOffset::UTC);
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        BackupId(format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{suffix}",
            at.year(),
            at.month() as u8,
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = s.len() <= 64
            && !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(BackupId(s.to_string()))
        } else {
            Err(format!(
                "invalid backup id {s:?}: use letters, digits, '-' and '_' (at most 64)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The snapshot tag a node backup takes.
    pub fn snapshot_tag(&self) -> String {
        format!("{SNAPSHOT_TAG_PREFIX}{}", self.0)
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BackupId::parse(&s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a node's backups live: its cluster, data center and slot. Backups
/// follow the slot (the token owner), not the address or host id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotRef {
    pub cluster: String,
    pub dc: String,
    pub slot: u32,
}

impl SlotRef {
    fn key(&self, rest: &str) -> Result<ObjectKey, StoreError> {
        ObjectKey::new(format!(
            "{}/nodes/{}/{}/{rest}",
            self.cluster, self.dc, self.slot
        ))
    }

    /// The prefix (with a trailing `/`) of everything this slot stores.
    pub fn prefix(&self) -> String {
        format!("{}/nodes/{}/{}/", self.cluster, self.dc, self.slot)
    }

    pub fn sstable_prefix(&self) -> String {
        format!("{}sst/", self.prefix())
    }

    pub fn sstable_key(
        &self,
        keyspace: &str,
        table_dir: &str,
        object: &str,
    ) -> Result<ObjectKey, StoreError> {
        self.key(&format!("sst/{keyspace}/{table_dir}/{object}"))
    }

    pub fn manifest_prefix(&self) -> String {
        format!("{}manifests/", self.prefix())
    }

    pub fn manifest_key(&self, id: &BackupId) -> Result<ObjectKey, StoreError> {
        self.key(&format!("manifests/{id}.json.zst"))
    }

    /// The backup id named by a manifest key listed under `manifest_prefix`.
    pub fn backup_id_of_manifest_key(&self, key: &ObjectKey) -> Option<BackupId> {
        let name = key.as_str().strip_prefix(&self.manifest_prefix())?;
        BackupId::parse(name.strip_suffix(".json.zst")?).ok()
    }

    pub fn incremental_prefix(&self) -> String {
        format!("{}incremental/", self.prefix())
    }

    /// A new incremental log entry's key: milliseconds since the epoch (13
    /// digits, so keys sort by time) and a random suffix.
    pub fn incremental_key(&self, at: OffsetDateTime) -> Result<ObjectKey, StoreError> {
        let millis = at.unix_timestamp_nanos() / 1_000_000;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        self.key(&format!("incremental/{millis:013}-{suffix}.json"))
    }

    /// A short label, `dc/slot`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.dc, self.slot)
    }
}

/// The cluster index of a cluster-wide backup.
pub fn cluster_index_key(cluster: &str, id: &BackupId) -> Result<ObjectKey, StoreError> {
    ObjectKey::new(format!("{cluster}/backups/{id}.json"))
}

pub fn cluster_index_prefix(cluster: &str) -> String {
    format!("{cluster}/backups/")
}

/// How a stored object is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// One file of a backup and the object that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub keyspace: String,
    /// The table directory's name, `<table>-<table id>`.
    pub table_dir: String,
    /// The file's name in the table directory.
    pub name: String,
    /// The file's size on disk.
    pub size: u64,
    /// BLAKE3 of the file's bytes (before compression), hex.
    pub hash: String,
    /// The object's key and size in the store.
    pub key: String,
    pub stored_size: u64,
    pub compression: Compression,
    /// The file's modification time: when Cassandra wrote (flushed) it. A
    /// point-in-time restore takes incremental files written up to its time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_at: Option<OffsetDateTime>,
}

impl FileEntry {
    pub fn object_key(&self) -> Result<ObjectKey, StoreError> {
        ObjectKey::new(self.key.clone())
    }

    /// The file's path relative to a data directory.
    pub fn relative_path(&self) -> String {
        format!("{}/{}/{}", self.keyspace, self.table_dir, self.name)
    }
}

/// Byte and file counts of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub reused_files: u64,
    pub reused_bytes: u64,
}

/// Everything a node backup consists of. Written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManifest {
    pub format: u32,
    pub backup_id: BackupId,
    pub slot: SlotRef,
    pub rack: String,
    pub address: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    pub cassandra_version: String,
    pub partitioner: String,
    pub tokens: Vec<String>,
    /// The keyspaces backed up; empty means all of them.
    pub keyspaces: Vec<String>,
    /// `DESCRIBE SCHEMA` output at backup time.
    pub schema: String,
    pub files: Vec<FileEntry>,
    pub totals: Totals,
}

impl NodeManifest {
    /// zstd-compressed JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("manifests serialize");
        zstd::encode_all(&json[..], 3).expect("zstd into memory does not fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut json = Vec::new();
        zstd::Decoder::new(bytes)
            .and_then(|mut d| d.read_to_end(&mut json))
            .map_err(|e| format!("manifest is not zstd: {e}"))?;
        let manifest: NodeManifest =
            serde_json::from_slice(&json).map_err(|e| format!("manifest is not valid: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this build reads {FORMAT})",
                manifest.format
            ));
        }
        Ok(manifest)
    }

    pub fn duration_secs(&self) -> f64 {
        (self.finished_at - self.started_at).as_seconds_f64()
    }
}

/// One entry of a slot's incremental log: SSTable files that a flush or
/// compaction produced, stored at `uploaded_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalEntry {
    pub format: u32,
    pub slot: SlotRef,
    #[serde(with = "time::serde::rfc3339")]
    pub uploaded_at: OffsetDateTime,
    /// When the oldest of these files appeared on disk (its mtime): the entry
    /// holds data written up to this point.
    #[serde(with = "time::serde::rfc3339")]
    pub written_at: OffsetDateTime,
    pub files: Vec<FileEntry>,
}

/// The state of one node in a cluster backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeBackupState {
    Pending,
    Running,
    Done,
    Failed,
}

/// One node's line in a cluster index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub slot: SlotRef,
    pub rack: String,
    pub address: String,
    pub tokens: Vec<String>,
    pub state: NodeBackupState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub totals: Totals,
}

/// The cluster index, written when every node has finished (or failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIndex {
    pub format: u32,
    pub backup_id: BackupId,
    pub cluster: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// True when every node finished: a cluster backup with failures is kept
    /// and reported as incomplete, never shown as a success.
    pub complete: bool,
    pub keyspaces: Vec<String>,
    pub nodes: Vec<ClusterNode>,
}

/// RFC 3339 text of a time, for messages and JSON built by hand.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> OffsetDateTime {
        time::Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), d)
            .unwrap()
            .with_hms(h, mi, s)
            .unwrap()
            .assume_utc()
    }

    fn slot() -> SlotRef {
        SlotRef {
            cluster: "orders".into(),
            dc: "dc1".into(),
            slot: 2,
        }
    }

    #[test]
    fn backup_ids_sort_by_time_and_reject_path_tricks() {
        let a = BackupId::generate(dt(2026, 11, 26, 9, 5, 7));
        let b = BackupId::generate(dt(2026, 11, 26, 10, 0, 0));
        assert!(a.as_str().starts_with("20261126T090507Z-"), "{a}");
        assert!(a < b);
        for bad in ["", "../x", "a/b", ".hidden", "x y"] {
            assert!(BackupId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_follow_the_store_layout() {
        let s = slot();
        let id = BackupId::parse("20261126T090507Z-abc123").unwrap();
        let key = s.manifest_key(&id).unwrap();
        assert_eq!(
            key.as_str(),
            "orders/nodes/dc1/2/manifests/20261126T090507Z-abc123.json.zst"
        );
        assert_eq!(s.backup_id_of_manifest_key(&key), Some(id));
        assert_eq!(
            s.sstable_key("ks", "t-0123", "nb-1-big-Data.db")
                .unwrap()
                .as_str(),
            "orders/nodes/dc1/2/sst/ks/t-0123/nb-1-big-Data.db"
        );
        assert!(s.sstable_key("..", "t", "f").is_err());
        let inc = s.incremental_key(dt(2026, 1, 1, 0, 0, 0)).unwrap();
        assert!(inc
            .as_str()
            .starts_with("orders/nodes/dc1/2/incremental/1767225600000-"));
    }

    #[test]
    fn manifests_round_trip_and_reject_other_formats() {
        let at = dt(2026, 11, 26, 9, 5, 7);
        let mut m = NodeManifest {
            format: FORMAT,
            backup_id: BackupId::generate(at),
            slot: slot(),
            rack: "r1".into(),
            address: "127.0.0.1".into(),
            started_at: at,
            finished_at: at + time::Duration::seconds(3),
            cassandra_version: "5.0.9".into(),
            partitioner: "org.apache.cassandra.dht.Murmur3Partitioner".into(),
            tokens: vec!["-9223372036854775808".into()],
            keyspaces: vec![],
            schema: "CREATE KEYSPACE ks ...".into(),
            files: vec![FileEntry {
                keyspace: "ks".into(),
                table_dir: "t-0123".into(),
                name: "nb-1-big-Data.db".into(),
                size: 10,
                hash: "ab".into(),
                key: "k".into(),
                stored_size: 10,
                compression: Compression::None,
                modified_at: Some(at),
            }],
            totals: Totals::default(),
        };
        let decoded = NodeManifest::decode(&m.encode()).unwrap();
        assert_eq!(decoded, m);
        assert_eq!(decoded.duration_secs(), 3.0);
        m.format = 99;
        let err = NodeManifest::decode(&m.encode()).unwrap_err();
        assert!(err.contains("format 99"), "{err}");
        assert!(NodeManifest::decode(b"junk").is_err());
    }
}
