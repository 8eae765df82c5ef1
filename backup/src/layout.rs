//! Cassandra's on-disk layout of a data directory:
//! `<data_dir>/<keyspace>/<table>-<table id hex>/<sstable components>`.
//! This module only reads directory names; it never opens SSTables.

use std::io;
use std::path::{Path, PathBuf};

/// One table directory found under a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDir {
    pub keyspace: String,
    pub table: String,
    pub path: PathBuf,
}

/// Splits a table directory name `<table>-<32 hex digits>` into the table name.
/// Cassandra appends the table id (a UUID without dashes) so that a dropped and
/// re-created table gets a fresh directory (`Directories` in Cassandra).
pub fn table_name_of_dir(dir_name: &str) -> Option<&str> {
    let (name, id) = dir_name.rsplit_once('-')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
        .then_some(name)
}

/// Lists the table directories of one keyspace (all of them when a table was
/// dropped and re-created: the caller picks).
pub fn table_dirs(data_dir: &Path, keyspace: &str) -> io::Result<Vec<TableDir>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir.join(keyspace))? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(table) = table_name_of_dir(&dir_name) {
            out.push(TableDir {
                keyspace: keyspace.to_string(),
                table: table.to_string(),
                path: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| a.table.cmp(&b.table).then(a.path.cmp(&b.path)));
    Ok(out)
}

/// The live SSTable components of a table directory (files named `*-Data.db`,
/// `*-Index.db`, …), not those under `snapshots/` or `backups/`.
pub fn sstable_components(table_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(table_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && is_sstable_component(&name) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// True for file names of SSTable components, e.g. `nb-1-big-Data.db` or
/// `da-3gzn_0w3k_1xk002ifkiv6ax0xtk-bti-Statistics.db`.
pub fn is_sstable_component(name: &str) -> bool {
    name.ends_with(".db") || name.ends_with("-Digest.crc32") || name.ends_with("-TOC.txt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_dir_names_need_a_32_digit_hex_id() {
        assert_eq!(
            table_name_of_dir("users-6a2f1c70b1e011ee9d3c8b0e1f2a3b4c"),
            Some("users")
        );
        assert_eq!(
            table_name_of_dir("my-table-6a2f1c70b1e011ee9d3c8b0e1f2a3b4c"),
            Some("my-table")
        );
        assert_eq!(table_name_of_dir("users-123"), None);
        assert_eq!(table_name_of_dir("-6a2f1c70b1e011ee9d3c8b0e1f2a3b4c"), None);
        assert_eq!(table_name_of_dir("snapshots"), None);
    }

    #[test]
    fn lists_components_but_not_snapshot_or_backup_dirs() {
        let tmp = std::env::temp_dir().join(format!("anchises-layout-{}", std::process::id()));
        let table = tmp.join("ks").join("t-0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(table.join("snapshots")).unwrap();
        std::fs::create_dir_all(table.join("backups")).unwrap();
        for f in [
            "nb-1-big-Data.db",
            "nb-1-big-TOC.txt",
            "nb-1-big-Digest.crc32",
            "notes",
        ] {
            std::fs::write(table.join(f), b"x").unwrap();
        }
        let dirs = table_dirs(&tmp, "ks").unwrap();
        assert_eq!(dirs.len(), 1);
        assert_eq!(dirs[0].table, "t");
        let names: Vec<String> = sstable_components(&dirs[0].path)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "nb-1-big-Data.db",
                "nb-1-big-Digest.crc32",
                "nb-1-big-TOC.txt"
            ]
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
