//! Background backup work: snapshot backups on the cron schedule, and the
//! incremental watcher (inotify through `notify`, plus a periodic rescan as a
//! safety net) that uploads each flushed SSTable within seconds.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anchises_backup::files::Progress;
use notify::{RecursiveMode, Watcher};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Backups, CreateBackup, StartError};
use crate::cassandra::supervisor::ProcessState;

/// Events are gathered this long before an upload pass: a flush links all
/// of an SSTable's components within milliseconds.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts a snapshot backup at every time of `backup.schedule`.
pub async fn run_schedule(backups: Arc<Backups>, stop: CancellationToken) {
    let expr = backups.config.backup.schedule.clone();
    if expr == "off" {
        return;
    }
    let schedule = match cron::Schedule::from_str(&expr) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(schedule = expr, error = %e, "bad backup schedule; scheduled backups are off");
            return;
        }
    };
    loop {
        let Some(next) = schedule.upcoming(chrono::Utc).next() else {
            return;
        };
        let wait = (next - chrono_utc()).to_std().unwrap_or(Duration::ZERO);
        tracing::info!(next = %next, "next scheduled backup");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        if backups.node.supervisor.status().state != ProcessState::Running {
            tracing::warn!("scheduled backup skipped: cassandra is not running");
            backups.metrics.backup_failed();
            continue;
        }
        match backups.start(CreateBackup::default()) {
            Ok((id, _)) => tracing::info!(backup = %id, "scheduled backup started"),
            Err(StartError::Conflict(c)) => {
                tracing::warn!(running = %c.running.id, "scheduled backup skipped: another backup is running")
            }
            Err(e) => tracing::error!(error = %e, "scheduled backup not started"),
        }
    }
}

fn chrono_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Uploads incremental backup links as they appear, until `stop`.
pub async fn run_incremental(backups: Arc<Backups>, stop: CancellationToken) {
    if !backups.config.backup.incremental {
        return;
    }
    let data_dir = backups.slot_backups.data_dir.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // Kept alive for as long as this task runs.
    let _watcher = match watch(&data_dir, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot watch the data directory; incrementals rely on the periodic rescan");
            None
        }
    };
    let rescan = backups.config.backup.rescan;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(rescan) => {}
            Some(()) = rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = stop.cancelled() => return,
        }
        upload_pass(&backups, &stop).await;
    }
}

async fn upload_pass(backups: &Backups, stop: &CancellationToken) {
    let progress = Progress::default();
    let started = std::time::Instant::now();
    match backups
        .slot_backups
        .upload_incrementals(&progress, stop)
        .await
    {
        Ok(Some(entry)) => {
            let bytes: u64 = entry.files.iter().map(|f| f.size).sum();
            tracing::info!(
                files = entry.files.len(),
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "incremental SSTables uploaded"
            );
            backups.metrics.incremental_uploaded(
                entry.files.len() as u64,
                bytes,
                OffsetDateTime::now_utc(),
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "incremental upload failed; retried at the next pass");
            backups.metrics.incremental_failed();
        }
    }
}

/// Watches the data directory (recursively: keyspaces and tables come and
/// go) and signals when something changes under a `backups/` directory, or
/// when one is created: Cassandra links a new table's first SSTable into it
/// before the recursive watch on the new directory is in place.
fn watch(
    data_dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    std::fs::create_dir_all(data_dir).map_err(notify::Error::io)?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let in_backups = event.paths.iter().any(|p| {
                p.ancestors()
                    .take(2)
                    .any(|a| a.file_name().is_some_and(|n| n == "backups"))
            });
            if in_backups && (event.kind.is_create() || event.kind.is_modify()) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(data_dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}
