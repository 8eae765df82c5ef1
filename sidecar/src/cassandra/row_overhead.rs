//! Cassandra estimates its memtables' overhead per row at every start, by
//! filling a skip list with 100,000 keys and measuring it: about 0.9 s of a
//! 5 s start on two cores. The figure depends on the JVM, its options and the
//! node's memtable settings, and moves by a byte between starts (the skip
//! list's levels are random: 180 or 181 bytes on JDK 17). The first start of a
//! node logs it; the sidecar records it with a fingerprint of what it depends
//! on (the `java` binary, the JVM's options, the node's `cassandra.yaml`), and
//! a later start with the same fingerprint passes it
//! (`-Dcassandra.memtable.row_overhead_size`), which skips the estimate. A
//! start with another fingerprint estimates and records again.
//!
//! ```text
//! <node root>/row-overhead.json   {"fingerprint": "…", "bytes": 180}
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::files::{jvm_args, write_atomically, NodeLayout, Runtime};
use crate::config::Config;

const LOG_LINE: &str = "Estimated SkipListMemtable row overhead: ";
/// How long after a start its estimate is looked for in the log.
const LOOK_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    fingerprint: String,
    bytes: u32,
}

/// The recorded overhead of one node's starts.
#[derive(Debug, Clone)]
pub struct RowOverhead {
    file: PathBuf,
    log: PathBuf,
    fingerprint: String,
}

/// The JVM option that passes `bytes` to Cassandra.
pub fn jvm_option(bytes: u32) -> String {
    format!("-Dcassandra.memtable.row_overhead_size={bytes}")
}

impl RowOverhead {
    /// For the next start of the node of `config` (its `cassandra.yaml`
    /// written): fingerprinted on its JVM arguments without the options
    /// that vary per start. `None` (logged) if that cannot be done.
    pub fn for_start(config: &Config, layout: &NodeLayout, rt: &Runtime) -> Option<Self> {
        let args = jvm_args(config, layout, rt, &super::cds::Sharing::Off, None);
        RowOverhead::of(layout, &rt.java, &args)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot fingerprint the start for its memtable row overhead")
            })
            .ok()
    }

    /// For a start of `java` with `args` (without class sharing options) on
    /// the node of `layout`, whose `cassandra.yaml` is written.
    pub fn of(layout: &NodeLayout, java: &Path, args: &[String]) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        super::cds::stamp_file(&mut hasher, java)?;
        for arg in args {
            hasher.update(arg.as_bytes());
            hasher.update(&[0]);
        }
        hasher.update(&std::fs::read(layout.yaml())?);
        Ok(RowOverhead {
            file: layout.root.join("row-overhead.json"),
            log: layout.logs.join("system.log"),
            fingerprint: hasher.finalize().to_hex().to_string(),
        })
    }

    /// The recorded overhead, if it was recorded with this fingerprint.
    pub fn known(&self) -> Option<u32> {
        let recorded: Recorded = serde_json::from_slice(&std::fs::read(&self.file).ok()?).ok()?;
        (recorded.fingerprint == self.fingerprint).then_some(recorded.bytes)
    }

    /// Where the log is now: a start's estimate comes after it.
    pub fn log_position(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Waits for the estimate of the start that began when the log was at
    /// `from`, and records it. Gives up quietly if the start logs none.
    pub async fn record_from_log(self, from: u64) {
        let started = tokio::time::Instant::now();
        while started.elapsed() < LOOK_FOR {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(bytes) = estimate_in(&self.log, from) else {
                continue;
            };
            let recorded = Recorded {
                fingerprint: self.fingerprint,
                bytes,
            };
            let json = serde_json::to_string(&recorded).expect("serializes");
            match write_atomically(&self.file, &json) {
                Ok(()) => tracing::info!(
                    bytes,
                    "recorded Cassandra's memtable row overhead; later starts skip its estimate"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record Cassandra's memtable row overhead")
                }
            }
            return;
        }
    }
}

/// The last estimate logged in `log` after byte `from` (from its start if
/// the log is now shorter: it was rolled over).
fn estimate_in(log: &Path, from: u64) -> Option<u32> {
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(if len < from { 0 } else { from }))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .find_map(|line| {
            let rest = &line[line.find(LOG_LINE)? + LOG_LINE.len()..];
            rest.trim().parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> NodeLayout {
        let layout = NodeLayout::new(dir);
        std::fs::create_dir_all(&layout.conf).unwrap();
        std::fs::create_dir_all(&layout.logs).unwrap();
        std::fs::write(layout.yaml(), "memtable_allocation_type: heap_buffers\n").unwrap();
        std::fs::write(dir.join("java"), "java").unwrap();
        layout
    }

    fn args() -> Vec<String> {
        vec!["-Xmx512M".into(), "CassandraDaemon".into()]
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_records_its_estimate_for_the_starts_that_run_alike() {
        let dir = tempfile::tempdir().unwrap();
        let layout = node(dir.path());
        let java = dir.path().join("java");
        let log = layout.logs.join("system.log");
        std::fs::write(
            &log,
            "INFO [main] SkipListMemtable.java:240 - Estimated SkipListMemtable row overhead: 175\n",
        )
        .unwrap();
        let first = RowOverhead::of(&layout, &java, &args()).unwrap();
        assert_eq!(first.known(), None);
        let from = first.log_position();
        // The start's own line, not the earlier start's.
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("INFO [main] 2026-11-28 06:10:28,222 SkipListMemtable.java:240 - Estimated SkipListMemtable row overhead: 180\nINFO [main] Startup complete\n");
        std::fs::write(&log, text).unwrap();
        first.clone().record_from_log(from).await;
        assert_eq!(first.known(), Some(180));
        assert_eq!(
            jvm_option(180),
            "-Dcassandra.memtable.row_overhead_size=180"
        );

        // Other options, or another yaml: estimated again.
        let heap = RowOverhead::of(&layout, &java, &["-Xmx1G".into()]).unwrap();
        assert_eq!(heap.known(), None);
        std::fs::write(layout.yaml(), "memtable_allocation_type: offheap_objects\n").unwrap();
        assert_eq!(
            RowOverhead::of(&layout, &java, &args()).unwrap().known(),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_logs_no_estimate_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = node(dir.path());
        let overhead = RowOverhead::of(&layout, &dir.path().join("java"), &args()).unwrap();
        std::fs::write(
            layout.logs.join("system.log"),
            "INFO [main] Startup complete\n",
        )
        .unwrap();
        overhead.clone().record_from_log(0).await;
        assert_eq!(overhead.known(), None);
        assert!(!dir.path().join("row-overhead.json").exists());
    }

    #[test]
    fn a_rolled_over_log_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("system.log");
        std::fs::write(&log, "x - Estimated SkipListMemtable row overhead: 181\n").unwrap();
        assert_eq!(estimate_in(&log, 1_000_000), Some(181));
        assert_eq!(estimate_in(&log, 10), None);
        assert_eq!(estimate_in(&dir.path().join("missing"), 0), None);
    }
}
