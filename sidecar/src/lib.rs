//! Anchises: a sidecar that runs one Apache Cassandra node — generates its files,
//! supervises its JVM, and serves a local HTTP API to inspect and operate it — and
//! the `anchises` command-line client of that API.
#![deny(unsafe_code)]

pub mod backup;
pub mod cassandra;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod node;
pub mod restore;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cassandra::cql::Cql;
use crate::cassandra::jolokia::Jolokia;
use crate::cassandra::supervisor::Supervisor;
use crate::config::{Config, LogFormat};
use crate::node::{ActionBody, Node, NodeAction, StartGate};

pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

/// Runs the sidecar until SIGTERM or SIGINT; then drains and stops Cassandra, and
/// only then stops serving the API.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // In cluster mode the registry decides the slot, tokens and seeds first.
    let joined = match &config.cluster.coordinator {
        Some(dir) => {
            let store = anchises_topology::FsCasStore::open(dir)
                .with_context(|| format!("cannot open the coordinator store {}", dir.display()))?;
            Some(cluster::boot::join(&config, Arc::new(store)).await?)
        }
        None => None,
    };
    let config = Arc::new(joined.as_ref().map_or(config, |j| j.config.clone()));
    // A node of a copied cluster starts from its source slot's backup: only a
    // first node of the cluster (a later one streams), on a fresh slot or on
    // its own slot before its Cassandra ever started (Cassandra creates its
    // `system` keyspace at the first start): a sidecar that died while
    // laying the data out continues at its next start.
    if let Some(j) = &joined {
        let never_started = !cassandra::files::NodeLayout::new(&config.node.data_dir)
            .data
            .join("system")
            .exists();
        let seeds = match j.claim.outcome {
            anchises_topology::ClaimOutcome::Fresh => true,
            anchises_topology::ClaimOutcome::Kept => never_started,
            anchises_topology::ClaimOutcome::Takeover { .. } => false,
        };
        if let (Some(from), true, Some(false)) =
            (&j.restore_from, seeds, config.node.auto_bootstrap)
        {
            restore::seed_from_backup(&config, j.claim.claim.slot as u32, from)
                .await
                .with_context(|| {
                    format!(
                        "cannot start from backup {} of {}",
                        from.backup_id, from.cluster
                    )
                })?;
        }
    }
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
    let jobs_cancel = CancellationToken::new();
    let supervisor_shutdown = CancellationToken::new();
    let http_shutdown = CancellationToken::new();

    let jolokia = Jolokia::new(config.node.jolokia_port, Duration::from_secs(10));
    let (supervisor, supervisor_done) =
        Supervisor::spawn(config.clone(), jolokia.clone(), supervisor_shutdown.clone());
    let node = Arc::new(Node {
        cql: Cql::new(std::net::SocketAddr::new(
            config.node.address,
            config.node.native_port,
        )),
        config: config.clone(),
        supervisor,
        jolokia,
        starts: StartGate::default(),
    });
    // Backups are filed under the registry slot in cluster mode.
    let backup_slot = anchises_backup::manifest::SlotRef {
        cluster: config.node.cluster_name.clone(),
        dc: config.node.dc.clone(),
        slot: joined
            .as_ref()
            .map_or(config.backup.slot, |j| j.claim.claim.slot as u32),
    };
    let cluster_backups = match (&joined, &config.cluster.coordinator) {
        (Some(joined), Some(dir)) => {
            let store_config = config
                .backup_store()
                .map_err(|e| anyhow::anyhow!("backup store: {e}"))?;
            let store = anchises_backup::ObjectStore::open(&store_config).await?;
            let cas = anchises_topology::FsCasStore::open(dir)
                .with_context(|| format!("cannot open the coordinator store {}", dir.display()))?;
            Some(Arc::new(backup::cluster::ClusterBackups::new(
                store,
                config.node.cluster_name.clone(),
                joined.dcs.clone(),
                Arc::new(cas),
            )))
        }
        _ => None,
    };
    if let Some(joined) = joined {
        tokio::spawn(cluster::boot::heartbeat(
            joined.registry,
            joined.claim,
            config.cluster.heartbeat,
            node.jolokia.clone(),
            node.supervisor.clone(),
            supervisor_shutdown.clone(),
        ));
    }
    let jobs = jobs::Jobs::new(jobs_cancel.clone());
    let metrics = Arc::new(metrics::Metrics::default());
    let backups = backup::Backups::open(
        config.clone(),
        node.clone(),
        jobs.clone(),
        metrics.clone(),
        backup_slot.clone(),
        cluster_backups,
    )
    .await?;
    if let Some(cluster) = &backups.cluster {
        tokio::spawn(cluster.clone().watch(backups.clone(), jobs_cancel.clone()));
    }
    tokio::spawn(backup::schedule::run_schedule(
        backups.clone(),
        jobs_cancel.clone(),
    ));
    tokio::spawn(backup::schedule::run_incremental(
        backups.clone(),
        jobs_cancel.clone(),
    ));
    let restores = restore::Restores::new(backups.clone());
    tokio::spawn(restores.clone().watch_cluster(jobs_cancel.clone()));
    let state = http::AppState {
        node: node.clone(),
        jobs: jobs.clone(),
        metrics,
        backups,
        restores,
    };
    info!(api = %config.api.listen, address = %config.node.address, data_dir = %config.node.data_dir.display(), "anchises node sidecar started");
    if config.supervisor.auto_start {
        // An interrupted full-node restore left a partial layout live: a node
        // started on it could come up NORMAL without the data it lacks.
        if let Some(why) = node.start_refusal() {
            warn!(reason = %why, "not starting cassandra (supervisor.auto_start)");
        } else {
            let n = node.clone();
            jobs.start("node", "node.start", move |cancel| async move {
                n.run_action(NodeAction::Start, ActionBody::default(), cancel)
                    .await
                    .map_err(|e| e.to_string())
            })
            .expect("no job runs yet");
        }
    }
    let server = tokio::spawn({
        let http_shutdown = http_shutdown.clone();
        async move {
            axum::serve(listener, http::router(state))
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
        }
    });

    wait_for_signal().await;
    info!("signal received; stopping cassandra, then the api");
    jobs_cancel.cancel();
    supervisor_shutdown.cancel();
    log_if_slow("stopping cassandra", supervisor_done).await;
    http_shutdown.cancel();
    log_if_slow("stopping the api", server).await;
    log_if_slow("finishing jobs", jobs.wait()).await;
    info!("stopped");
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Awaits a shutdown step, and says so every 30 s while it hangs.
async fn log_if_slow<F: std::future::Future>(what: &str, fut: F) {
    tokio::pin!(fut);
    let mut waited = 0;
    loop {
        tokio::select! {
            _ = &mut fut => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                waited += 30;
                warn!(step = what, waited_seconds = waited, "shutdown step is still running");
            }
        }
    }
}
