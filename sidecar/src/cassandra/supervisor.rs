//! Supervision of the Cassandra JVM as a child process: start, stop (drain, SIGTERM,
//! then SIGKILL after a timeout; or, for data about to be replaced, a kill),
//! restart with backoff when it dies unasked, bounded
//! per hour. One task owns the child; everyone else sends it commands and reads its
//! state from a watch channel. It does not judge Cassandra's health beyond "alive".

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::files::{jvm_args, write_node_files, NodeLayout, Runtime};
use super::jolokia::{Jolokia, STORAGE_SERVICE};
use super::row_overhead::RowOverhead;
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Not running and not meant to run.
    Stopped,
    /// The JVM is alive.
    Running,
    /// A stop is under way (drain, then exit).
    Stopping,
    /// It died unasked; a restart is scheduled.
    BackingOff,
    /// It died too often, or could not be started; it stays down until started again.
    Failed,
}

/// What the supervisor reports about the process.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessStatus {
    pub state: ProcessState,
    pub pid: Option<u32>,
    /// When the current JVM was spawned (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<time::OffsetDateTime>,
    #[serde(skip)]
    pub started_instant: Option<Instant>,
    /// Restarts the supervisor made after unasked exits, since the sidecar started.
    pub restarts: u32,
    /// How the last JVM ended, if one did.
    pub last_exit: Option<String>,
    /// Why the state is what it is, for `backing_off` and `failed`.
    pub message: Option<String>,
}

impl ProcessStatus {
    pub fn uptime(&self) -> Option<Duration> {
        self.started_instant.map(|t| t.elapsed())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cassandra is already running")]
    AlreadyRunning,
    #[error("cassandra is not running")]
    NotRunning,
    #[error("cannot start cassandra: {0}")]
    Spawn(String),
    #[error("the supervisor has shut down")]
    Gone,
}

enum Cmd {
    Start(oneshot::Sender<Result<u32, SupervisorError>>),
    Stop(StopHow, oneshot::Sender<Result<(), SupervisorError>>),
}

/// How a stop ends the JVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopHow {
    /// Drain (flush every table, stop gossip and clients), then SIGTERM.
    Drain,
    /// Tell the peers it goes (when it has any), then SIGKILL: for data
    /// about to be replaced, which a drain would only flush first. What the
    /// JVM had not flushed stays in the commitlog beside its data.
    Discard,
}

/// A handle to the supervisor task.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<ProcessStatus>,
}

impl Supervisor {
    /// Spawns the supervisor task. When `shutdown` fires it stops Cassandra cleanly and
    /// ends; `done` completes after that.
    pub fn spawn(
        config: Arc<Config>,
        jolokia: Jolokia,
        shutdown: CancellationToken,
    ) -> (Supervisor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8);
        let (status_tx, status) = watch::channel(ProcessStatus {
            state: ProcessState::Stopped,
            pid: None,
            started_at: None,
            started_instant: None,
            restarts: 0,
            last_exit: None,
            message: None,
        });
        let task = Task {
            layout: NodeLayout::new(&config.node.data_dir),
            config,
            jolokia,
            status: status_tx,
            child: None,
            want_running: false,
            restart_at: None,
            recent_restarts: VecDeque::new(),
        };
        let handle = tokio::spawn(task.run(rx, shutdown));
        (Supervisor { tx, status }, handle)
    }

    pub fn status(&self) -> ProcessStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<ProcessStatus> {
        self.status.clone()
    }

    /// Spawns the JVM; returns its pid. Readiness is the caller's to wait for.
    pub async fn start(&self) -> Result<u32, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Start(reply))
            .await
            .map_err(|_| SupervisorError::Gone)?;
        rx.await.map_err(|_| SupervisorError::Gone)?
    }

    /// Drains and stops the JVM; returns when it has exited.
    pub async fn stop(&self) -> Result<(), SupervisorError> {
        self.stop_how(StopHow::Drain).await
    }

    /// Stops the JVM without a drain, for a node whose data is about to be
    /// moved aside and replaced: its peers are told it goes (gossip's
    /// shutdown announcement) and it is killed. Cassandra recovers from that
    /// as from any crash, through its commitlog, should the data come back.
    pub async fn stop_discarding(&self) -> Result<(), SupervisorError> {
        self.stop_how(StopHow::Discard).await
    }

    async fn stop_how(&self, how: StopHow) -> Result<(), SupervisorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Stop(how, reply))
            .await
            .map_err(|_| SupervisorError::Gone)?;
        rx.await.map_err(|_| SupervisorError::Gone)?
    }
}

struct Task {
    config: Arc<Config>,
    layout: NodeLayout,
    jolokia: Jolokia,
    status: watch::Sender<ProcessStatus>,
    child: Option<Child>,
    /// True between a start and a stop: an exit in between is unasked.
    want_running: bool,
    restart_at: Option<tokio::time::Instant>,
    recent_restarts: VecDeque<Instant>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Start(reply)) => {
                        let r = self.start(true).await;
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Stop(how, reply)) => {
                        let r = if self.child.is_none() && self.restart_at.is_none() {
                            Err(SupervisorError::NotRunning)
                        } else {
                            self.stop(how).await;
                            Ok(())
                        };
                        let _ = reply.send(r);
                    }
                },
                exit = wait_child(&mut self.child) => self.on_exit(exit),
                _ = sleep_until(self.restart_at) => {
                    self.restart_at = None;
                    if let Err(e) = self.start(false).await {
                        error!(error = %e, "restart of cassandra failed");
                    }
                }
            }
        }
        if self.child.is_some() {
            info!("shutting down: draining and stopping cassandra");
            self.stop(StopHow::Drain).await;
        }
    }

    /// `by_request`: an API or startup start (resets the restart budget), as opposed
    /// to a supervisor restart.
    async fn start(&mut self, by_request: bool) -> Result<u32, SupervisorError> {
        if self.child.is_some() {
            return Err(SupervisorError::AlreadyRunning);
        }
        if by_request {
            self.recent_restarts.clear();
            self.restart_at = None;
        }
        match self.spawn().await {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                // Cassandra only deletes its pid file on exit; writing it is the
                // launcher's job (bin/cassandra does `echo $!`).
                if let Err(e) = std::fs::write(self.layout.pid_file(), format!("{pid}\n")) {
                    warn!(error = %e, "cannot write the cassandra pid file");
                }
                info!(pid, "cassandra started");
                self.child = Some(child);
                self.want_running = true;
                self.status.send_modify(|s| {
                    s.state = ProcessState::Running;
                    s.pid = Some(pid);
                    s.started_at = Some(time::OffsetDateTime::now_utc());
                    s.started_instant = Some(Instant::now());
                    s.message = None;
                    if !by_request {
                        s.restarts += 1;
                    }
                });
                Ok(pid)
            }
            Err(e) => {
                let msg = e.to_string();
                self.status.send_modify(|s| {
                    s.state = ProcessState::Failed;
                    s.message = Some(msg.clone());
                });
                Err(SupervisorError::Spawn(msg))
            }
        }
    }

    async fn spawn(&self) -> anyhow::Result<Child> {
        let rt = Runtime::resolve(&self.config)?;
        stop_leftover_jvms(&self.layout.yaml()).await;
        write_node_files(&self.config, &self.layout)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.stdout_log())?;
        let (sharing, archive) = super::cds::sharing_for(&self.config, &rt);
        // Cassandra's estimate of its memtable row overhead, recorded at an
        // earlier start that ran alike, or to be recorded from this one.
        let overhead = RowOverhead::for_start(&self.config, &self.layout, &rt);
        let known = overhead.as_ref().and_then(RowOverhead::known);
        let record = overhead.filter(|_| known.is_none()).map(|o| {
            let from = o.log_position();
            o.record_from_log(from)
        });
        let args = jvm_args(&self.config, &self.layout, &rt, &sharing, known);
        let mut cmd = Command::new(&rt.java);
        cmd.args(args)
            .current_dir(&self.layout.root)
            // Fewer glibc malloc arenas: RSS otherwise grows with thread count.
            .env("MALLOC_ARENA_MAX", "4")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in a terminal reaches the sidecar only,
            // which then drains and stops the JVM in order.
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        if let Some(record) = record {
            tokio::spawn(record);
        }
        if let (super::cds::Sharing::Record(list), Some(archive)) = (sharing, archive) {
            let heap_mib = self.config.node.heap.as_u64() / (1024 * 1024);
            tokio::spawn(archive.build_from(list, rt.java.clone(), rt.lib_dir.clone(), heap_mib));
        }
        Ok(child)
    }

    fn on_exit(&mut self, exit: std::io::Result<std::process::ExitStatus>) {
        self.child = None;
        let how = match exit {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        if !self.want_running {
            self.status.send_modify(|s| {
                s.state = ProcessState::Stopped;
                s.pid = None;
                s.started_instant = None;
                s.last_exit = Some(how);
            });
            return;
        }
        let s = &self.config.supervisor;
        let hour_ago = Instant::now() - Duration::from_secs(3600);
        while self.recent_restarts.front().is_some_and(|t| *t < hour_ago) {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() as u32 >= s.max_restarts_per_hour {
            self.want_running = false;
            let msg = format!(
                "cassandra exited ({how}) after {} restarts in the last hour; not restarting (supervisor.max_restarts_per_hour = {})",
                self.recent_restarts.len(),
                s.max_restarts_per_hour
            );
            error!("{msg}");
            self.status.send_modify(|st| {
                st.state = ProcessState::Failed;
                st.pid = None;
                st.started_instant = None;
                st.last_exit = Some(how);
                st.message = Some(msg);
            });
            return;
        }
        let n = self.recent_restarts.len() as u32;
        let delay = s
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(n))
            .min(s.backoff_max);
        self.recent_restarts.push_back(Instant::now());
        warn!(exit = %how, delay = ?delay, "cassandra exited unasked; restarting");
        self.restart_at = Some(tokio::time::Instant::now() + delay);
        self.status.send_modify(|st| {
            st.state = ProcessState::BackingOff;
            st.pid = None;
            st.started_instant = None;
            st.last_exit = Some(how.clone());
            st.message = Some(format!(
                "cassandra exited unasked ({how}); restarting in {}",
                humantime::format_duration(delay)
            ));
        });
    }

    /// Drain through JMX so that nothing needs replaying, then SIGTERM (which runs
    /// Cassandra's own drain hook if ours failed), then SIGKILL after the timeout.
    async fn stop(&mut self, how: StopHow) {
        self.want_running = false;
        self.restart_at = None;
        let Some(mut child) = self.child.take() else {
            self.status.send_modify(|s| {
                s.state = ProcessState::Stopped;
                s.message = None;
            });
            return;
        };
        self.status
            .send_modify(|s| s.state = ProcessState::Stopping);
        let timeout = self.config.cassandra.stop_timeout;
        let began = tokio::time::Instant::now();
        let deadline = began + timeout;
        let kill_now = match how {
            StopHow::Drain => false,
            StopHow::Discard if commitlog_written_at_once(&self.config.cassandra.yaml) => true,
            StopHow::Discard => {
                info!("the commitlog holds writes back until its sync: draining before the stop");
                false
            }
        };
        let signal = if kill_now {
            self.announce_shutdown(timeout).await;
            Signal::SIGKILL
        } else {
            if let Err(e) = self
                .jolokia
                .exec(STORAGE_SERVICE, "drain()", vec![], timeout)
                .await
            {
                warn!(error = %e, "drain before stop failed; stopping with SIGTERM");
            }
            Signal::SIGTERM
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        let exit = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                warn!(timeout = ?timeout, "cassandra did not exit in time; sending SIGKILL");
                let _ = child.kill().await;
                "killed after the stop timeout".to_string()
            }
        };
        info!(exit = %exit, seconds = began.elapsed().as_secs_f64(), "cassandra stopped");
        self.status.send_modify(|s| {
            s.state = ProcessState::Stopped;
            s.pid = None;
            s.started_instant = None;
            s.last_exit = Some(exit);
            s.message = None;
        });
    }

    /// Stops gossip when the node has live peers, which announces the
    /// shutdown to them (Cassandra then waits `shutdown_announce_in_ms`, 2 s
    /// by default, for the word to spread): they stop sending it requests
    /// at once rather than after their failure detectors notice. A node
    /// alone, or one that does not answer, is not waited for.
    async fn announce_shutdown(&self, timeout: Duration) {
        let live = match self.jolokia.read(STORAGE_SERVICE, "LiveNodes").await {
            Ok(nodes) => nodes.as_array().map_or(0, Vec::len),
            Err(e) => {
                warn!(error = %e, "cannot read the live nodes; not announcing the shutdown");
                return;
            }
        };
        if live > 1 {
            if let Err(e) = self
                .jolokia
                .exec(STORAGE_SERVICE, "stopGossiping()", vec![], timeout)
                .await
            {
                warn!(error = %e, "cannot stop gossip before the kill");
            }
        }
    }
}

/// Whether the commitlog, as configured, writes each mutation into its
/// segment file (the page cache) when it is made, so that a killed JVM loses
/// nothing acknowledged: not when it is compressed or encrypted, or written
/// with direct I/O, which all buffer the writes until the next sync.
fn commitlog_written_at_once(yaml: &toml::Table) -> bool {
    let compressed = yaml.contains_key("commitlog_compression");
    let encrypted = yaml
        .get("transparent_data_encryption_options")
        .and_then(|t| t.get("enabled"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let buffered_access = yaml
        .get("commitlog_disk_access_mode")
        .and_then(toml::Value::as_str)
        .is_some_and(|mode| !matches!(mode, "legacy" | "mmap"));
    !compressed && !encrypted && !buffered_access
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Before a JVM starts on this node's data: a JVM of an earlier sidecar may
/// still be alive. A sidecar killed takes its JVM with it (the death signal
/// below), but that JVM runs Cassandra's shutdown hook (flushes, seconds)
/// before it exits, holding its ports and writing to the data, and Cassandra
/// removes its pid file as the shutdown begins. So the JVMs are found by
/// their command line, which names this node's yaml, not by the pid file;
/// each is asked to stop and waited for (killed after a minute).
async fn stop_leftover_jvms(yaml: &Path) {
    for pid in jvms_of(yaml, Path::new("/proc")) {
        warn!(
            pid,
            "a cassandra of this node from an earlier run is still alive; waiting for it to stop"
        );
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while kill(pid, None).is_ok() {
            if tokio::time::Instant::now() >= deadline {
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The processes under `proc` (a procfs) whose command line has the
/// argument `-Dcassandra.config=file://<yaml>`.
fn jvms_of(yaml: &Path, proc: &Path) -> Vec<i32> {
    let wanted = format!("-Dcassandra.config=file://{}", yaml.display());
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(proc.join(pid.to_string()).join("cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == wanted.as_bytes())
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Asks the kernel to SIGTERM the JVM when the sidecar dies, even by SIGKILL, so a
/// sidecar never leaves a stray JVM behind. SIGTERM lets Cassandra run its drain hook.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes two
    // async-signal-safe system calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jvms_of_a_node_are_found_by_their_yaml_argument() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: &str, args: &[&str]| {
            let dir = proc.path().join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            let mut cmdline = args.join("\0");
            cmdline.push('\0');
            std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        };
        let yaml = Path::new("/srv/n1/conf/cassandra.yaml");
        process(
            "41",
            &[
                "java",
                "-Dcassandra.config=file:///srv/n1/conf/cassandra.yaml",
                "x",
            ],
        );
        process(
            "7",
            &[
                "java",
                "-Dcassandra.config=file:///srv/n1/conf/cassandra.yaml",
            ],
        );
        // Another node's, one that merely mentions the path, and a non-process.
        process(
            "12",
            &[
                "java",
                "-Dcassandra.config=file:///srv/n10/conf/cassandra.yaml",
            ],
        );
        process("13", &["grep", "file:///srv/n1/conf/cassandra.yaml"]);
        process(
            "self",
            &[
                "java",
                "-Dcassandra.config=file:///srv/n1/conf/cassandra.yaml",
            ],
        );
        assert_eq!(jvms_of(yaml, proc.path()), vec![7, 41]);
        assert!(jvms_of(yaml, &proc.path().join("missing")).is_empty());
    }

    fn yaml(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    #[test]
    fn only_a_commitlog_that_buffers_nothing_allows_a_kill() {
        assert!(commitlog_written_at_once(&yaml("")));
        assert!(commitlog_written_at_once(&yaml(
            "commitlog_disk_access_mode = \"legacy\"\n[transparent_data_encryption_options]\nenabled = false"
        )));
        assert!(!commitlog_written_at_once(&yaml(
            "[[commitlog_compression]]\nclass_name = \"LZ4Compressor\""
        )));
        assert!(!commitlog_written_at_once(&yaml(
            "[transparent_data_encryption_options]\nenabled = true"
        )));
        assert!(!commitlog_written_at_once(&yaml(
            "commitlog_disk_access_mode = \"direct\""
        )));
        assert!(!commitlog_written_at_once(&yaml(
            "commitlog_disk_access_mode = \"auto\""
        )));
    }
}
