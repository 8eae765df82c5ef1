//! The node side of a full-node restore, once every file is staged: move the
//! node's directories aside, lay the backup out in their place, start and
//! check the restored node, and put everything back when it does not come up
//! (or anything before fails). Also what the node's start path asks: whether
//! an unfinished full-node restore still holds the node's previous data, in
//! which case nothing but that restore may start Cassandra.
//!
//! The previous directories stay under `<restore dir>/before` until the
//! restored node is healthy, so a sidecar that dies at any point leaves
//! either the previous node whole or a restore that `restore resume`
//! finishes. A directory that cannot be renamed (a mount point, or one on
//! another filesystem than the restore's) keeps its previous content in a
//! directory inside it instead ([`INSIDE`]), and `before` holds a marker
//! that says so. Planning, staging and the restore's saved state are
//! [`super`]'s.

use std::fmt;
use std::path::{Path, PathBuf};

use anchises_backup::manifest::FileEntry;
use anchises_backup::restore::{is_staged, staged_path, SlotPlan};
use anchises_backup::BackupError;
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cassandra::files::NodeLayout;
use crate::cassandra::supervisor::{ProcessState, SupervisorError};
use crate::config::Config;
use crate::node::Node;

/// Where a rollback puts the backup's files it takes back from the data
/// directory (within the restore's directory): a node ran on them, so each
/// is checked against its hash again before it counts as staged.
pub(super) const RETURNED: &str = "returned";

/// Where the previous content of a live directory that cannot be renamed as
/// a whole goes: a directory inside it, so on the same filesystem. Cassandra
/// reads no such name: keyspaces, commitlog segments, hints and caches have
/// names of their own that never start with a dot.
pub(super) const INSIDE: &str = ".anchises-previous";

/// The marker in `before` of a live directory whose previous content is
/// whole in its [`INSIDE`] directory (named `<dir name>` + this); it holds
/// the live directory's path.
const INSIDE_MARKER: &str = ".inside";

/// The marker of a live directory whose content is on its way into
/// [`INSIDE`]: part of it may still be outside, and nothing was laid out.
const MOVING_MARKER: &str = ".moving";

/// The marker of a live directory whose previous content is on its way back
/// out of [`INSIDE`] (what is left there is the rest of it).
const RETURNING_MARKER: &str = ".returning";

/// An unfinished full-node restore that holds the node's previous data.
#[derive(Debug, PartialEq)]
pub struct HeldData {
    pub id: String,
    /// Its `before` directory.
    pub path: PathBuf,
}

/// The unfinished full-node restore of this node that holds the node's
/// previous data, if any: until it finishes, the data directory holds at
/// most part of the backup's layout.
pub fn held_previous_data(config: &Config) -> Option<HeldData> {
    held_in(&crate::backup::state_dir(config).join("restore"))
}

/// [`held_previous_data`] of the restores under `root`. A restore saved as
/// finished holds nothing any more (its restored node was healthy; only the
/// removal of its directory was cut short); an unreadable state counts as
/// unfinished.
fn held_in(root: &Path) -> Option<HeldData> {
    let entries = std::fs::read_dir(root).ok()?;
    let mut ids: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| super::is_restore_id(id))
        .collect();
    ids.sort();
    ids.into_iter().find_map(|id| {
        let finished = super::read_state(&root.join(&id)).is_some_and(|s| s.finished);
        let path = super::holds_previous_data(root, &id).filter(|_| !finished)?;
        Some(HeldData { id, path })
    })
}

/// Refuses full-node restore `id` while another one holds the node's
/// previous data: the live directories hold part of that one's layout, not
/// data to move aside, and it alone can put the previous data back.
pub(super) fn ensure_no_other_holds(config: &Config, id: &str) -> Result<(), BackupError> {
    held_by_other(config, Some(id)).map_or(Ok(()), |why| Err(BackupError::Invalid(why)))
}

/// Why a full-node restore other than `id` (any, when `None`) cannot run
/// now, if so: see [`ensure_no_other_holds`]. A plan's blocker.
pub(super) fn held_by_other(config: &Config, id: Option<&str>) -> Option<String> {
    let held = held_previous_data(config).filter(|held| Some(held.id.as_str()) != id)?;
    Some(format!(
        "full-node restore {} holds the node's previous data in {}: finish it first (anchises restore resume {})",
        held.id,
        held.path.display(),
        held.id
    ))
}

/// The node's directories a full-node restore replaces (data, commitlog,
/// hints, saved caches), and where its restore keeps things meanwhile.
pub(super) struct Swap {
    data: PathBuf,
    live: [PathBuf; 4],
    /// `<restore dir>/before`: the previous directories.
    aside: PathBuf,
    /// `<restore dir>/returned`: see [`RETURNED`].
    returned: PathBuf,
    id: String,
    /// How a whole directory is renamed (a failure injected in tests).
    rename_dir: fn(&Path, &Path) -> std::io::Result<()>,
}

impl Swap {
    pub(super) fn new(layout: &NodeLayout, restore_dir: &Path) -> Self {
        Swap {
            data: layout.data.clone(),
            live: [
                layout.data.clone(),
                layout.commitlog.clone(),
                layout.hints.clone(),
                layout.saved_caches.clone(),
            ],
            aside: restore_dir.join(super::PREVIOUS_DATA),
            returned: restore_dir.join(RETURNED),
            id: restore_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rename_dir: |from, to| std::fs::rename(from, to),
        }
    }

    fn aside_of(&self, live: &Path) -> PathBuf {
        self.aside.join(live.file_name().expect("named dirs"))
    }

    /// The marker that `live`'s previous content is in its [`INSIDE`]
    /// directory, or on its way in or out (`marker` [`INSIDE_MARKER`],
    /// [`MOVING_MARKER`] or [`RETURNING_MARKER`]).
    fn marker_of(&self, live: &Path, marker: &str) -> PathBuf {
        let mut name = live.file_name().expect("named dirs").to_os_string();
        name.push(marker);
        self.aside.join(name)
    }

    /// Whether `live`'s previous content is aside, whole: the directory
    /// itself, or its content inside it.
    fn is_aside(&self, live: &Path) -> bool {
        self.aside_of(live).is_dir() || self.marker_of(live, INSIDE_MARKER).is_file()
    }

    fn live_path(&self, f: &FileEntry) -> PathBuf {
        self.data.join(&f.keyspace).join(&f.table_dir).join(&f.name)
    }

    /// Whether the previous data directory is aside: the live one then holds
    /// this restore's layout (whole or in part) and whatever a node started
    /// on it wrote, nothing of the previous node.
    fn data_aside(&self) -> bool {
        self.is_aside(&self.data)
    }

    /// Moves each live directory aside. A directory that an interrupted run
    /// already moved aside stays there, and its live namesake (part of this
    /// restore's layout, and what a node started on it wrote) is removed:
    /// the backup is never laid out over it. A missing one (a lost disk) is
    /// recorded aside as an empty directory, so that the start path sees the
    /// swap under way and a rollback removes what the layout put there.
    ///
    /// A directory that cannot be renamed (a mount point, or on another
    /// filesystem) has its content moved into its [`INSIDE`] directory
    /// instead, then a marker written; a run interrupted before the marker
    /// finishes that move (nothing was laid out yet), one interrupted while
    /// putting the content back finishes that first.
    pub(super) fn move_aside(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.aside)
            .with_context(|| format!("cannot create {}", self.aside.display()))?;
        for live in &self.live {
            let aside = self.aside_of(live);
            if self.marker_of(live, RETURNING_MARKER).is_file() {
                self.return_inside(live)?;
            }
            if aside.is_dir() {
                remove_dir_if_exists(live).with_context(|| {
                    format!(
                        "cannot remove {}, left by an interrupted run",
                        live.display()
                    )
                })?;
            } else if self.marker_of(live, INSIDE_MARKER).is_file() {
                clear_except_inside(live).with_context(|| {
                    format!(
                        "cannot clear {}, left by an interrupted run",
                        live.display()
                    )
                })?;
            } else if self.marker_of(live, MOVING_MARKER).is_file() {
                self.move_inside(live)?;
            } else if live.exists() {
                match (self.rename_dir)(live, &aside) {
                    Ok(()) => {}
                    Err(e) if cannot_rename_whole(&e) => {
                        tracing::info!(dir = %live.display(), error = %e, "cannot move the directory itself aside; moving its content into {INSIDE} within it");
                        self.move_inside(live)?;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cannot move {} aside to {}",
                            live.display(),
                            aside.display()
                        )))
                    }
                }
            } else {
                std::fs::create_dir(&aside)
                    .with_context(|| format!("cannot create {}", aside.display()))?;
            }
        }
        Ok(())
    }

    /// Moves everything in `live` into its [`INSIDE`] directory, then marks
    /// it aside. Marked moving meanwhile: the start path then sees the
    /// previous data held, and a rollback puts back what went in.
    fn move_inside(&self, live: &Path) -> anyhow::Result<()> {
        let moving = self.marker_of(live, MOVING_MARKER);
        if !moving.is_file() {
            write_synced(&moving, live.to_string_lossy().as_bytes())?;
        }
        let inside = live.join(INSIDE);
        std::fs::create_dir_all(&inside)
            .with_context(|| format!("cannot create {}", inside.display()))?;
        for entry in read_dir_except_inside(live)? {
            let to = inside.join(entry.file_name().expect("listed entries have names"));
            std::fs::rename(&entry, &to).with_context(|| {
                format!("cannot move {} aside to {}", entry.display(), to.display())
            })?;
        }
        std::fs::rename(&moving, self.marker_of(live, INSIDE_MARKER))
            .with_context(|| format!("cannot mark {} aside", live.display()))
    }

    /// Puts `live`'s previous content back out of its [`INSIDE`] directory,
    /// after removing what the restore put there; marks it returning first,
    /// so that an interrupted return is finished, never taken for content
    /// to move aside.
    fn return_inside(&self, live: &Path) -> anyhow::Result<()> {
        let (aside, moving, returning) = (
            self.marker_of(live, INSIDE_MARKER),
            self.marker_of(live, MOVING_MARKER),
            self.marker_of(live, RETURNING_MARKER),
        );
        if aside.is_file() {
            clear_except_inside(live)
                .with_context(|| format!("cannot clear {}", live.display()))?;
            std::fs::rename(&aside, &returning)
                .with_context(|| format!("cannot mark {} returning", live.display()))?;
        } else if moving.is_file() {
            // Half moved in, nothing laid out: all of it is previous content.
            std::fs::rename(&moving, &returning)
                .with_context(|| format!("cannot mark {} returning", live.display()))?;
        }
        let inside = live.join(INSIDE);
        if inside.is_dir() {
            for entry in read_dir_except_inside(&inside)? {
                let to = live.join(entry.file_name().expect("listed entries have names"));
                std::fs::rename(&entry, &to).with_context(|| {
                    format!("cannot move {} back to {}", entry.display(), to.display())
                })?;
            }
            std::fs::remove_dir(&inside)
                .with_context(|| format!("cannot remove {}", inside.display()))?;
        }
        match std::fs::remove_file(&returning) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("cannot remove {}", returning.display())))
            }
            _ => Ok(()),
        }
    }

    /// Moves the staged files into the data directory, and creates the other
    /// directories empty.
    pub(super) fn lay_out(&self, staging: &Path, files: &[FileEntry]) -> anyhow::Result<()> {
        for f in files {
            let from = staged_path(staging, f);
            let to = self.live_path(f);
            let parent = to.parent().expect("files have a directory");
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            move_file(&from, &to).with_context(|| {
                format!(
                    "cannot move {} into place at {}",
                    from.display(),
                    to.display()
                )
            })?;
        }
        for live in &self.live {
            std::fs::create_dir_all(live)
                .with_context(|| format!("cannot create {}", live.display()))?;
        }
        Ok(())
    }

    /// Takes the backup's files back from the data directory into
    /// `returned`, for [`Swap::reclaim`]: only while the previous data
    /// directory is aside (the live one is then this restore's). A file that
    /// cannot be renamed (a data directory on another filesystem) goes with
    /// the live directory and is downloaded again: this runs before the
    /// previous node starts again, which a copy would hold up. Returns how
    /// many were taken back.
    pub(super) fn take_back_layout(&self, files: &[FileEntry]) -> usize {
        if !self.data_aside() {
            return 0;
        }
        files
            .iter()
            .filter(|f| {
                let (from, to) = (self.live_path(f), staged_path(&self.returned, f));
                from.is_file()
                    && std::fs::create_dir_all(to.parent().expect("files have a directory"))
                        .and_then(|()| std::fs::rename(&from, &to))
                        .is_ok()
            })
            .count()
    }

    /// Whether the live data directory holds nothing (or is missing): after a
    /// rollback, the node had no previous data.
    fn data_is_empty(&self) -> bool {
        read_dir_except_inside(&self.data).map_or(true, |entries| entries.is_empty())
    }

    /// Puts each directory that is aside back in place of its live namesake;
    /// one not aside was never moved (the failure came first) and is left
    /// alone. Goes on past a failure, so that as much as possible is back;
    /// returns each failure.
    pub(super) fn move_back(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for live in &self.live {
            let aside = self.aside_of(live);
            if [INSIDE_MARKER, MOVING_MARKER, RETURNING_MARKER]
                .iter()
                .any(|m| self.marker_of(live, m).is_file())
            {
                if let Err(e) = self.return_inside(live) {
                    failed.push(format!("{e:#}"));
                }
                continue;
            }
            if !aside.is_dir() {
                continue;
            }
            let back = remove_dir_if_exists(live)
                .with_context(|| format!("cannot remove {}", live.display()))
                .and_then(|()| {
                    std::fs::rename(&aside, live).with_context(|| {
                        format!("cannot move {} back to {}", aside.display(), live.display())
                    })
                });
            if let Err(e) = back {
                failed.push(format!("{e:#}"));
            }
        }
        failed
    }

    /// Checks the files in `returned` against their hash: those that match
    /// are staged again (not downloaded again), the rest go (a node that ran
    /// on them may have rewritten one). Stops at a cancel, leaving the rest
    /// for the next run. Returns how many were staged again.
    pub(super) async fn reclaim(
        &self,
        staging: &Path,
        files: &[FileEntry],
        cancel: &CancellationToken,
    ) -> Result<usize, BackupError> {
        if !self.returned.exists() {
            return Ok(0);
        }
        let mut reclaimed = 0;
        for f in files {
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            if is_staged(staging, f) || !is_staged(&self.returned, f) {
                continue;
            }
            let from = staged_path(&self.returned, f);
            let Ok((hash, _)) = anchises_backup::upload::hash_file(&from).await else {
                continue;
            };
            if !hash.eq_ignore_ascii_case(&f.hash) {
                continue;
            }
            let to = staged_path(staging, f);
            std::fs::create_dir_all(to.parent().expect("files have a directory"))
                .and_then(|()| std::fs::rename(&from, &to))
                .map_err(|source| BackupError::File { path: to, source })?;
            reclaimed += 1;
        }
        remove_dir_if_exists(&self.returned).map_err(|source| BackupError::File {
            path: self.returned.clone(),
            source,
        })?;
        Ok(reclaimed)
    }
}

/// Removes the [`INSIDE`] directories that the markers in `before` (a
/// restore's previous data) name: the previous content of directories that
/// could not be moved aside whole goes with the restore's directory.
pub(super) fn remove_inside(before: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(before) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(INSIDE_MARKER) {
            continue;
        }
        let live = PathBuf::from(std::fs::read_to_string(entry.path())?);
        remove_dir_if_exists(&live.join(INSIDE))?;
        std::fs::remove_file(entry.path())?;
    }
    Ok(())
}

/// Whether a rename of a whole directory failed because of where it is:
/// a mount point (busy), or its target on another filesystem.
fn cannot_rename_whole(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ResourceBusy | std::io::ErrorKind::CrossesDevices
    )
}

/// What is in `dir` but its [`INSIDE`] directory and a filesystem's
/// `lost+found` (at the root of a mount, it belongs to the filesystem, not
/// to any node's data).
fn read_dir_except_inside(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name() != INSIDE && entry.file_name() != "lost+found" {
            paths.push(entry.path());
        }
    }
    Ok(paths)
}

/// Removes everything in `dir` but its [`INSIDE`] directory (and
/// `lost+found`).
fn clear_except_inside(dir: &Path) -> anyhow::Result<()> {
    for path in read_dir_except_inside(dir)? {
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Renames `from` to `to`; across filesystems (a data directory on a mount
/// of its own), copies it, syncs the copy, and removes `from`.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            std::fs::copy(from, to)?;
            std::fs::File::open(to)?.sync_all()?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

/// Writes `path` and syncs it.
fn write_synced(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, content)
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Why a full-node restore rolls back.
pub(super) enum Failure {
    /// Moving the node's directories aside or laying the backup out.
    Swap(anyhow::Error),
    /// The restored node did not start, or not with the backup's tokens.
    Unhealthy(String),
    Cancelled,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Swap(e) => write!(f, "cannot replace the node's data: {e:#}"),
            Failure::Unhealthy(why) => {
                write!(f, "the restored node did not come up healthy ({why})")
            }
            Failure::Cancelled => write!(f, "cancelled before the restored node was up"),
        }
    }
}

/// Before staging: the layout of an earlier run that the sidecar did not
/// see to its end is taken back, to be checked and staged again rather than
/// downloaded. Not while a node runs on it (started before starts were
/// refused in this state): the swap then removes it once the node is
/// stopped.
pub(super) fn take_back_interrupted(node: &Node, swap: &Swap, files: &[FileEntry]) {
    if matches!(
        node.supervisor.status().state,
        ProcessState::Stopped | ProcessState::Failed
    ) {
        let n = swap.take_back_layout(files);
        if n > 0 {
            tracing::info!(restore = %swap.id, files = n, "took back the interrupted run's layout");
        }
    }
}

/// With Cassandra stopped: moves the node's directories aside, lays the
/// backup out, starts the restored node and checks it has the backup's
/// tokens.
pub(super) async fn replace(
    node: &Node,
    swap: &Swap,
    plan: &SlotPlan,
    staging: &Path,
    set_phase: &(dyn Fn(&str) + Sync),
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    if cancel.is_cancelled() {
        return Err(Failure::Cancelled);
    }
    set_phase("swap");
    swap.move_aside().map_err(Failure::Swap)?;
    swap.lay_out(staging, &plan.files).map_err(Failure::Swap)?;
    set_phase("start");
    if let Err(e) = node.start_for_restore(cancel.clone()).await {
        return Err(if cancel.is_cancelled() {
            Failure::Cancelled
        } else {
            Failure::Unhealthy(e.to_string())
        });
    }
    set_phase("verify");
    check_tokens(node, &plan.tokens)
        .await
        .map_err(Failure::Unhealthy)
}

async fn check_tokens(node: &Node, backup: &[String]) -> Result<(), String> {
    let live = node
        .jolokia
        .read("org.apache.cassandra.db:type=StorageService", "Tokens")
        .await
        .map_err(|e| format!("cannot read the restored node's tokens: {e}"))?;
    let mut live: Vec<String> = live
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut expected = backup.to_vec();
    live.sort();
    expected.sort();
    if live == expected {
        Ok(())
    } else {
        Err(format!(
            "the restored node has tokens {live:?}, the backup {expected:?}"
        ))
    }
}

/// Stops the restored node (if it runs), takes the backup's files back (to
/// be staged again), puts the previous directories back and starts the
/// previous node again; unless a directory could not go back: it then stays
/// aside, which keeps Cassandra from being started on the split data.
/// Returns the restore's error, which says what failed and where the node
/// is.
pub(super) async fn roll_back(
    node: &Node,
    swap: &Swap,
    plan: &SlotPlan,
    staging: &Path,
    failure: Failure,
    cancel: &CancellationToken,
) -> String {
    // Once the supervisor has shut down (SIGTERM), its JVM is gone too. No
    // drain: what the restored node wrote goes.
    match node.supervisor.stop_discarding().await {
        Ok(()) | Err(SupervisorError::NotRunning | SupervisorError::Gone) => {}
        Err(e) => tracing::warn!(error = %e, "cannot stop the restored node"),
    }
    swap.take_back_layout(&plan.files);
    let failed = swap.move_back();
    if !failed.is_empty() {
        return format!(
            "{failure}; rolling back failed ({}): what is left of the node's previous data stays in {}, so cassandra is not started; `anchises restore resume {}` continues the restore",
            failed.join("; "),
            swap.aside.display(),
            swap.id
        );
    }
    // A lost disk: started on nothing, the node would come up as a new one
    // with this node's tokens. Otherwise not the restore's token: after a
    // cancel it would cut the previous node's start short, and the error
    // would call it down while it starts.
    let restarted = if swap.data_is_empty() {
        None
    } else {
        Some(node.start_for_restore(CancellationToken::new()).await)
    };
    if let Err(e) = swap.reclaim(staging, &plan.files, cancel).await {
        tracing::warn!(restore = %swap.id, error = %e, "the backup's files taken back are checked at the next run");
    }
    match restarted {
        None => format!(
            "{failure}; rolled back: the node had no previous data, so cassandra stays stopped; the backup stays staged"
        ),
        Some(restarted) => format!(
            "{failure}; rolled back to the previous data, {}; the backup stays staged",
            match restarted {
                Ok(_) => "which is running again".to_string(),
                Err(e) => format!("which did not start either: {e}"),
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The entry of staged file `name` (hashed as it is).
    async fn entry(staging: &Path, name: &str) -> FileEntry {
        let path = staging.join("kept/t-1").join(name);
        let (hash, size) = anchises_backup::upload::hash_file(&path).await.unwrap();
        FileEntry {
            keyspace: "kept".into(),
            table_dir: "t-1".into(),
            name: name.into(),
            size,
            hash,
            key: String::new(),
            stored_size: size,
            compression: anchises_backup::manifest::Compression::None,
            modified_at: None,
        }
    }

    /// A node directory with previous data, and a restore `r1` of it with
    /// two staged files.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        restore: PathBuf,
        staging: PathBuf,
        files: Vec<FileEntry>,
    }

    impl Fixture {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            write(&root.join("data/kept/t-1/nb-1-big-Data.db"), "old data");
            write(&root.join("commitlog/CommitLog-7-1.log"), "old log");
            write(&root.join("hints/h.hints"), "old hint");
            let restore = root.join("anchises/restore/r1");
            let staging = restore.join("staging");
            write(&staging.join("kept/t-1/nb-1-big-Data.db"), "backed-up data");
            write(&staging.join("kept/t-1/nb-1-big-TOC.txt"), "backed-up toc");
            let files = vec![
                entry(&staging, "nb-1-big-Data.db").await,
                entry(&staging, "nb-1-big-TOC.txt").await,
            ];
            Fixture {
                _dir: dir,
                root,
                restore,
                staging,
                files,
            }
        }

        fn swap(&self) -> Swap {
            Swap::new(&NodeLayout::new(&self.root), &self.restore)
        }

        fn assert_previous_node_live(&self) {
            assert_eq!(
                read(&self.root.join("data/kept/t-1/nb-1-big-Data.db")),
                "old data"
            );
            assert_eq!(
                read(&self.root.join("commitlog/CommitLog-7-1.log")),
                "old log"
            );
            assert_eq!(read(&self.root.join("hints/h.hints")), "old hint");
            assert!(!self.root.join("data/kept/t-1/nb-1-big-TOC.txt").exists());
        }
    }

    #[tokio::test]
    async fn a_swap_lays_the_backup_out_and_a_rollback_puts_everything_back() {
        let fx = Fixture::new().await;
        let swap = fx.swap();
        swap.move_aside().unwrap();
        // saved_caches did not exist: recorded aside as empty.
        assert!(fx.restore.join("before/saved_caches").is_dir());
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        let live = fx.root.join("data/kept/t-1/nb-1-big-Data.db");
        assert_eq!(read(&live), "backed-up data");
        assert!(fx
            .root
            .join("commitlog")
            .read_dir()
            .unwrap()
            .next()
            .is_none());
        // What the restored node writes goes with the rollback.
        write(&fx.root.join("commitlog/CommitLog-7-9.log"), "new log");

        assert_eq!(swap.take_back_layout(&fx.files), 2);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
        assert!(!fx.root.join("commitlog/CommitLog-7-9.log").exists());
        assert!(
            fx.restore
                .join("before")
                .read_dir()
                .unwrap()
                .next()
                .is_none(),
            "nothing is left aside"
        );
        // The backup's files are checked and staged again; one the node
        // changed goes (and is downloaded again).
        write(
            &fx.restore.join("returned/kept/t-1/nb-1-big-TOC.txt"),
            "rewritten!!!!",
        );
        let cancel = CancellationToken::new();
        assert_eq!(
            swap.reclaim(&fx.staging, &fx.files, &cancel).await.unwrap(),
            1
        );
        assert_eq!(
            read(&fx.staging.join("kept/t-1/nb-1-big-Data.db")),
            "backed-up data"
        );
        assert!(!fx.staging.join("kept/t-1/nb-1-big-TOC.txt").exists());
        assert!(!fx.restore.join("returned").exists());
    }

    /// Renames as a mount point would: the data and commitlog directories
    /// themselves cannot move (EBUSY); everything else can.
    fn mounted_data_and_commitlog(from: &Path, to: &Path) -> std::io::Result<()> {
        match from.file_name().and_then(|n| n.to_str()) {
            Some("data" | "commitlog") => Err(std::io::ErrorKind::ResourceBusy.into()),
            _ => std::fs::rename(from, to),
        }
    }

    impl Fixture {
        fn mounted_swap(&self) -> Swap {
            Swap {
                rename_dir: mounted_data_and_commitlog,
                ..self.swap()
            }
        }

        /// Nothing of the swap is left: no inside directory, no marker.
        fn assert_no_trace(&self) {
            for dir in ["data", "commitlog"] {
                assert!(!self.root.join(dir).join(INSIDE).exists(), "{dir}");
            }
            let left: Vec<_> = std::fs::read_dir(self.restore.join("before"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left aside: {left:?}");
        }
    }

    #[tokio::test]
    async fn a_mount_point_keeps_its_previous_content_inside_it() {
        let fx = Fixture::new().await;
        let swap = fx.mounted_swap();
        swap.move_aside().unwrap();
        let inside_log = fx
            .root
            .join("commitlog")
            .join(INSIDE)
            .join("CommitLog-7-1.log");
        assert_eq!(read(&inside_log), "old log");
        assert_eq!(
            read(
                &fx.root
                    .join("data")
                    .join(INSIDE)
                    .join("kept/t-1/nb-1-big-Data.db")
            ),
            "old data"
        );
        assert!(fx.restore.join("before/commitlog.inside").is_file());
        assert!(
            fx.restore.join("before/hints").is_dir(),
            "hints moved whole"
        );
        assert!(swap.data_aside());
        assert_eq!(
            held_in(&fx.root.join("anchises/restore")).map(|h| h.id),
            Some("r1".into()),
            "the start path sees the previous data held"
        );
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        assert_eq!(
            read(&fx.root.join("data/kept/t-1/nb-1-big-Data.db")),
            "backed-up data"
        );
        write(&fx.root.join("commitlog/CommitLog-7-9.log"), "new log");

        // A rollback clears what the restore put there and puts it all back.
        assert_eq!(swap.take_back_layout(&fx.files), 2);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
        assert!(!fx.root.join("commitlog/CommitLog-7-9.log").exists());
        fx.assert_no_trace();
    }

    #[tokio::test]
    async fn a_mount_points_lost_and_found_stays_where_it_is() {
        let fx = Fixture::new().await;
        write(&fx.root.join("data/lost+found/#12"), "fsck's");
        let swap = fx.mounted_swap();
        swap.move_aside().unwrap();
        assert!(!fx
            .root
            .join("data")
            .join(INSIDE)
            .join("lost+found")
            .exists());
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
        assert_eq!(read(&fx.root.join("data/lost+found/#12")), "fsck's");
        // A new, empty filesystem mounted after a lost disk holds no data.
        std::fs::remove_dir_all(fx.root.join("data/kept")).unwrap();
        assert!(swap.data_is_empty());
    }

    #[tokio::test]
    async fn a_finished_swap_of_a_mount_point_removes_the_previous_content_with_the_restore() {
        let fx = Fixture::new().await;
        let swap = fx.mounted_swap();
        swap.move_aside().unwrap();
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        remove_inside(&fx.restore.join("before")).unwrap();
        for dir in ["data", "commitlog"] {
            assert!(!fx.root.join(dir).join(INSIDE).exists(), "{dir}");
            assert!(!fx.restore.join(format!("before/{dir}.inside")).exists());
        }
        // The directories moved whole go with the restore's directory.
        assert!(fx.restore.join("before/hints").is_dir());
        assert_eq!(
            read(&fx.root.join("data/kept/t-1/nb-1-big-Data.db")),
            "backed-up data"
        );
    }

    #[tokio::test]
    async fn a_move_into_a_mount_point_cut_short_is_finished_or_undone() {
        for resume in [true, false] {
            let fx = Fixture::new().await;
            write(&fx.root.join("commitlog/CommitLog-7-2.log"), "old log 2");
            let swap = fx.mounted_swap();
            // The sidecar died while moving the commitlog's content inside.
            std::fs::create_dir_all(fx.restore.join("before")).unwrap();
            write_synced(
                &swap.marker_of(&fx.root.join("commitlog"), MOVING_MARKER),
                b"-",
            )
            .unwrap();
            let inside = fx.root.join("commitlog").join(INSIDE);
            std::fs::create_dir_all(&inside).unwrap();
            std::fs::rename(
                fx.root.join("commitlog/CommitLog-7-1.log"),
                inside.join("CommitLog-7-1.log"),
            )
            .unwrap();
            assert!(held_in(&fx.root.join("anchises/restore")).is_some());
            if resume {
                swap.move_aside().unwrap();
                assert_eq!(read(&inside.join("CommitLog-7-2.log")), "old log 2");
                assert_eq!(read(&inside.join("CommitLog-7-1.log")), "old log");
                assert!(fx.restore.join("before/commitlog.inside").is_file());
                assert!(!fx.restore.join("before/commitlog.moving").exists());
            }
            assert_eq!(swap.move_back(), Vec::<String>::new());
            fx.assert_previous_node_live();
            assert_eq!(
                read(&fx.root.join("commitlog/CommitLog-7-2.log")),
                "old log 2"
            );
            fx.assert_no_trace();
        }
    }

    #[tokio::test]
    async fn a_return_out_of_a_mount_point_cut_short_is_finished_before_anything_else() {
        let fx = Fixture::new().await;
        let swap = fx.mounted_swap();
        swap.move_aside().unwrap();
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        // The sidecar died while putting the data back: the layout cleared,
        // part of the previous content out again.
        let data = fx.root.join("data");
        clear_except_inside(&data).unwrap();
        std::fs::rename(
            swap.marker_of(&data, INSIDE_MARKER),
            swap.marker_of(&data, RETURNING_MARKER),
        )
        .unwrap();
        write(&data.join(INSIDE).join("other/t-2/x"), "old other");
        std::fs::rename(data.join(INSIDE).join("kept"), data.join("kept")).unwrap();
        // A resume finishes the return, then moves it all aside again.
        swap.move_aside().unwrap();
        assert_eq!(
            read(&data.join(INSIDE).join("kept/t-1/nb-1-big-Data.db")),
            "old data"
        );
        assert_eq!(read(&data.join(INSIDE).join("other/t-2/x")), "old other");
        assert!(swap.marker_of(&data, INSIDE_MARKER).is_file());
        assert!(!swap.marker_of(&data, RETURNING_MARKER).exists());
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
        fx.assert_no_trace();
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_moved_aside_rolls_back_what_was_moved() {
        let fx = Fixture::new().await;
        // The restore's directory inside the commitlog directory: moving a
        // directory into itself fails (EINVAL), as moving a mount point does
        // (EBUSY, EXDEV), and even for root.
        let swap = Swap::new(
            &NodeLayout::new(&fx.root),
            &fx.root.join("commitlog/restore/r1"),
        );
        let e = format!("{:#}", swap.move_aside().unwrap_err());
        assert!(e.contains("cannot move") && e.contains("commitlog"), "{e}");
        assert!(!fx.root.join("data").exists(), "data was moved aside");
        assert_eq!(swap.take_back_layout(&fx.files), 0);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
    }

    #[tokio::test]
    async fn a_layout_that_fails_midway_rolls_back_without_touching_the_previous_data() {
        let fx = Fixture::new().await;
        let swap = fx.swap();
        swap.move_aside().unwrap();
        std::fs::remove_file(fx.staging.join("kept/t-1/nb-1-big-TOC.txt")).unwrap();
        let e = format!("{:#}", swap.lay_out(&fx.staging, &fx.files).unwrap_err());
        assert!(e.contains("nb-1-big-TOC.txt"), "{e}");
        assert_eq!(swap.take_back_layout(&fx.files), 1);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        fx.assert_previous_node_live();
        assert!(fx
            .restore
            .join("returned/kept/t-1/nb-1-big-Data.db")
            .is_file());
        // Taking back touches nothing of a live data directory that is not
        // this restore's (it holds files of the same names).
        assert_eq!(swap.take_back_layout(&fx.files), 0);
        fx.assert_previous_node_live();
    }

    #[tokio::test]
    async fn a_resumed_swap_clears_what_the_interrupted_run_left_live() {
        let fx = Fixture::new().await;
        let swap = fx.swap();
        swap.move_aside().unwrap();
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        // The sidecar died; a node (or the interrupted layout) left this.
        write(
            &fx.root.join("data/kept/t-1/nb-2-big-Data.db"),
            "written since",
        );
        write(&fx.root.join("commitlog/CommitLog-7-9.log"), "new log");
        assert_eq!(swap.take_back_layout(&fx.files), 2);
        swap.move_aside().unwrap();
        assert!(
            !fx.root.join("data").exists() && !fx.root.join("commitlog").exists(),
            "cleared, not merged with the backup"
        );
        assert_eq!(
            read(&fx.restore.join("before/data/kept/t-1/nb-1-big-Data.db")),
            "old data",
            "the previous data stays aside"
        );
    }

    #[tokio::test]
    async fn a_rollback_after_a_lost_disk_leaves_no_previous_data_to_start() {
        let fx = Fixture::new().await;
        let swap = fx.swap();
        // A node with its data: after a rollback there is something to start.
        swap.move_aside().unwrap();
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        assert!(!swap.data_is_empty(), "the backup is laid out");
        swap.take_back_layout(&fx.files);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        assert!(!swap.data_is_empty(), "the previous data is back");
        // The same node with its disk lost: nothing comes back.
        for dir in ["data", "commitlog", "hints"] {
            std::fs::remove_dir_all(fx.root.join(dir)).unwrap();
        }
        swap.reclaim(&fx.staging, &fx.files, &CancellationToken::new())
            .await
            .unwrap();
        swap.move_aside().unwrap();
        swap.lay_out(&fx.staging, &fx.files).unwrap();
        assert!(!swap.data_is_empty());
        swap.take_back_layout(&fx.files);
        assert_eq!(swap.move_back(), Vec::<String>::new());
        assert!(swap.data_is_empty(), "nothing to start the node on");
    }

    #[test]
    fn the_restore_holding_the_previous_data_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(held_in(root), None);
        let unfinished = super::super::SavedState::default();
        super::super::write_state(&root.join("r1"), &unfinished).unwrap();
        write(&root.join("r1/staging/kept/t-1/x"), "staged");
        assert_eq!(held_in(root), None, "staged only");
        std::fs::create_dir_all(root.join("r1/before/saved_caches")).unwrap();
        assert_eq!(
            held_in(root),
            Some(HeldData {
                id: "r1".into(),
                path: root.join("r1/before")
            }),
            "even an empty directory aside: a lost disk's"
        );
        let finished = super::super::SavedState {
            finished: true,
            ..Default::default()
        };
        super::super::write_state(&root.join("r1"), &finished).unwrap();
        assert_eq!(
            held_in(root),
            None,
            "finished: only its removal was cut short"
        );
        // Not a restore's directory.
        write(&root.join(".discarded-r2/before/data/x"), "going");
        assert_eq!(held_in(root), None);
    }
}
