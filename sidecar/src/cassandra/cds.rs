//! Class data sharing (AppCDS) for Cassandra's JVM. A start without an archive
//! records the classes it loads (`-XX:DumpLoadedClassList`); once the list stops
//! growing, a low-priority `java -Xshare:dump` builds an archive from it; later
//! starts map that archive (`-XX:SharedArchiveFile`) instead of loading and
//! verifying those classes from the jars again.
//!
//! An archive belongs to one JDK and one set of jars: its name is a hash of both,
//! so a new Cassandra version or JDK gets its own, and the nodes of a machine share
//! one. The JVM checks an archive against its class path and ignores one that does
//! not match (`-Xshare:auto`), so a stale archive costs the gain, never a start.
//!
//! ```text
//! <dir>/<key>.jsa                 the archive
//! <dir>/<key>.<uuid>.classlist    a list being recorded by one start
//! <dir>/<key>.failed              why the archive could not be built (delete to retry)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::files::Runtime;
use crate::config::Config;

/// How often a recorded list is looked at, and for how many looks it must
/// not have grown before the archive is built from it.
const LOOK_EVERY: Duration = Duration::from_secs(5);
const QUIET_LOOKS: u32 = 3;
/// A list still growing after this long is used as it is.
const RECORD_AT_MOST: Duration = Duration::from_secs(600);

/// Feeds a file's path, size and modification time to `hasher`: what names
/// a JDK or a jar as it is installed.
pub(super) fn stamp_file(hasher: &mut blake3::Hasher, path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(&meta.len().to_le_bytes());
    hasher.update(&modified.as_nanos().to_le_bytes());
    Ok(())
}

/// What a start does about class sharing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// Map this archive.
    Use(PathBuf),
    /// Record the loaded classes into this list, for an archive to come.
    Record(PathBuf),
    Off,
}

impl Sharing {
    /// The JVM options for this start.
    pub fn jvm_options(&self) -> Vec<String> {
        match self {
            Sharing::Use(archive) => vec![
                format!("-XX:SharedArchiveFile={}", archive.display()),
                "-Xshare:auto".into(),
            ],
            Sharing::Record(list) => vec![format!("-XX:DumpLoadedClassList={}", list.display())],
            Sharing::Off => Vec::new(),
        }
    }
}

/// The archive of `rt` under `dir`, and its siblings.
#[derive(Debug, Clone)]
pub struct ClassArchive {
    dir: PathBuf,
    key: String,
}

impl ClassArchive {
    /// Names the archive after the JDK (its `release` file and the `java`
    /// binary's size and time) and every jar of the class path (name, size,
    /// time).
    pub fn of(dir: &Path, rt: &Runtime) -> std::io::Result<ClassArchive> {
        let mut hasher = blake3::Hasher::new();
        let java = std::fs::canonicalize(&rt.java)?;
        hasher.update(java.as_os_str().as_encoded_bytes());
        let mut stamp = |path: &Path| stamp_file(&mut hasher, path);
        stamp(&java)?;
        if let Some(release) = java
            .parent()
            .and_then(Path::parent)
            .map(|h| h.join("release"))
        {
            if release.is_file() {
                stamp(&release)?;
            }
        }
        let mut jars: Vec<PathBuf> = std::fs::read_dir(&rt.lib_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        for jar in &jars {
            stamp(jar)?;
        }
        Ok(ClassArchive {
            dir: dir.to_path_buf(),
            key: hasher.finalize().to_hex()[..16].to_string(),
        })
    }

    pub fn archive(&self) -> PathBuf {
        self.dir.join(format!("{}.jsa", self.key))
    }

    fn failed(&self) -> PathBuf {
        self.dir.join(format!("{}.failed", self.key))
    }

    fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.key))
    }

    /// What the next start does: map the archive if there is one; else
    /// record a list for it (unless building one failed before, or the
    /// directory cannot be written).
    pub fn sharing(&self) -> Sharing {
        self.remove_stale_lists();
        if self.archive().is_file() {
            return Sharing::Use(self.archive());
        }
        if self.failed().exists() || std::fs::create_dir_all(&self.dir).is_err() {
            return Sharing::Off;
        }
        Sharing::Record(self.dir.join(format!(
            "{}.{}.classlist",
            self.key,
            uuid::Uuid::new_v4().simple()
        )))
    }

    /// Removes the lists of starts whose sidecar stopped before it built the
    /// archive from them (older than any recording can last), also once an
    /// archive exists.
    fn remove_stale_lists(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let stale = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > RECORD_AT_MOST * 2);
            if name.starts_with(&self.key) && name.ends_with(".classlist") && stale {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Waits until `list` has stopped growing (the node has started), then
    /// builds the archive from it at low priority, unless another node has
    /// built it or is building it. The list is removed in any case.
    pub async fn build_from(self, list: PathBuf, java: PathBuf, lib_dir: PathBuf, heap_mib: u64) {
        let mut last = None;
        let mut quiet = 0;
        let started = tokio::time::Instant::now();
        while quiet < QUIET_LOOKS && started.elapsed() < RECORD_AT_MOST {
            tokio::time::sleep(LOOK_EVERY).await;
            let size = std::fs::metadata(&list).map(|m| m.len()).ok();
            quiet = if size.is_some() && size == last {
                quiet + 1
            } else {
                0
            };
            last = size;
        }
        let outcome = tokio::task::spawn_blocking({
            let archive = self.clone();
            let list = list.clone();
            move || archive.dump(&list, &java, &lib_dir, heap_mib)
        })
        .await;
        let _ = std::fs::remove_file(&list);
        match outcome {
            Ok(Ok(true)) => {
                tracing::info!(archive = %self.archive().display(), "class archive built; the next start of Cassandra maps it")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot build a class archive; Cassandra starts without one");
                let _ = std::fs::write(self.failed(), format!("{e:#}\n"));
            }
            Err(e) => tracing::warn!(error = %e, "the class archive task failed"),
        }
    }

    /// Builds the archive from `list`; `false` when there was nothing to do
    /// (built already, being built, or an empty list).
    fn dump(
        &self,
        list: &Path,
        java: &Path,
        lib_dir: &Path,
        heap_mib: u64,
    ) -> anyhow::Result<bool> {
        use anyhow::Context;
        let lock = std::fs::File::create(self.lock())
            .with_context(|| format!("cannot create {}", self.lock().display()))?;
        let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            return Ok(false);
        };
        if self.archive().is_file() || std::fs::metadata(list).map_or(true, |m| m.len() == 0) {
            return Ok(false);
        }
        let tmp = self.dir.join(format!("{}.jsa.tmp", self.key));
        let output = std::process::Command::new("nice")
            .args(["-n", "19"])
            .arg(java)
            .args(["-Xshare:dump", "-XX:+UseG1GC"])
            .arg(format!("-Xmx{heap_mib}M"))
            .arg(format!("-XX:SharedClassListFile={}", list.display()))
            .arg(format!("-XX:SharedArchiveFile={}", tmp.display()))
            .arg("-cp")
            .arg(format!("{}/*", lib_dir.display()))
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run java -Xshare:dump")?;
        if !output.status.success() || !tmp.is_file() {
            let _ = std::fs::remove_file(&tmp);
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            anyhow::bail!(
                "java -Xshare:dump {}: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        std::fs::rename(&tmp, self.archive())
            .with_context(|| format!("cannot rename {}", tmp.display()))?;
        Ok(true)
    }
}

/// The class sharing of the next start of the node of `config`.
pub fn sharing_for(config: &Config, rt: &Runtime) -> (Sharing, Option<ClassArchive>) {
    if !config.cassandra.class_sharing {
        return (Sharing::Off, None);
    }
    match ClassArchive::of(&config.class_archive_dir(), rt) {
        Ok(archive) => (archive.sharing(), Some(archive)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot name the class archive; Cassandra starts without one");
            (Sharing::Off, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> Runtime {
        let home = dir.join("jdk");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::write(home.join("bin/java"), "java").unwrap();
        std::fs::write(home.join("release"), "JAVA_VERSION=\"17.0.1\"").unwrap();
        let lib = dir.join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("cassandra-all.jar"), "classes").unwrap();
        std::fs::write(lib.join("notes.txt"), "not a jar").unwrap();
        Runtime {
            java: home.join("bin/java"),
            lib_dir: lib,
            jolokia_agent: dir.join("jolokia.jar"),
        }
    }

    #[test]
    fn an_archive_is_named_after_the_jdk_and_the_jars() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let cds = dir.path().join("cds");
        let key = |rt: &Runtime| ClassArchive::of(&cds, rt).unwrap().archive();
        let first = key(&rt);
        assert_eq!(first, key(&rt), "the same runtime, the same archive");
        assert!(first.starts_with(&cds));
        // A file that is no jar does not count.
        std::fs::write(rt.lib_dir.join("notes.txt"), "other notes").unwrap();
        assert_eq!(first, key(&rt));
        // Another jar, or another JDK, makes another archive.
        std::fs::write(rt.lib_dir.join("cassandra-all.jar"), "other classes").unwrap();
        let second = key(&rt);
        assert_ne!(first, second);
        std::fs::write(
            rt.java.parent().unwrap().parent().unwrap().join("release"),
            "JAVA_VERSION=\"17.0.2\"",
        )
        .unwrap();
        assert_ne!(second, key(&rt));
    }

    #[test]
    fn a_start_records_until_an_archive_exists_and_not_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let archive = ClassArchive::of(&dir.path().join("cds"), &rt).unwrap();
        let Sharing::Record(list) = archive.sharing() else {
            panic!("no archive yet: record")
        };
        assert!(
            list.starts_with(dir.path().join("cds")),
            "the directory is made"
        );
        assert!(list.to_string_lossy().ends_with(".classlist"));
        let Sharing::Record(other) = archive.sharing() else {
            panic!("record")
        };
        assert_ne!(list, other, "each start records its own list");
        // A list left by a sidecar that stopped long ago goes; a recent one stays.
        std::fs::write(&list, "java/lang/Object").unwrap();
        let old = std::fs::File::options().write(true).open(&list).unwrap();
        old.set_modified(std::time::SystemTime::now() - RECORD_AT_MOST * 3)
            .unwrap();
        std::fs::write(&other, "java/lang/Object").unwrap();
        let _ = archive.sharing();
        assert!(!list.exists(), "a stale list is removed");
        assert!(other.exists(), "a recent list is kept");
        std::fs::write(archive.archive(), "archive").unwrap();
        let old = std::fs::File::options().write(true).open(&other).unwrap();
        old.set_modified(std::time::SystemTime::now() - RECORD_AT_MOST * 3)
            .unwrap();
        assert_eq!(archive.sharing(), Sharing::Use(archive.archive()));
        assert!(
            !other.exists(),
            "stale lists go once the archive exists too"
        );
        std::fs::remove_file(archive.archive()).unwrap();
        std::fs::write(archive.failed(), "dump failed").unwrap();
        assert_eq!(archive.sharing(), Sharing::Off);
    }

    #[test]
    fn class_sharing_off_in_the_config_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let mut config = Config::default();
        config.cassandra.class_archive_dir = Some(dir.path().join("cds"));
        assert!(matches!(sharing_for(&config, &rt).0, Sharing::Record(_)));
        config.cassandra.class_sharing = false;
        assert_eq!(sharing_for(&config, &rt).0, Sharing::Off);
    }
}
