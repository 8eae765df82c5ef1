//! Prometheus metrics of the sidecar: HTTP requests and latencies, the Cassandra
//! process (up, restarts, uptime) read from the supervisor at scrape time, and jobs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cassandra::supervisor::{ProcessState, ProcessStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template, never the raw path (bounded cardinality).
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Histogram,
    cassandra_up: Gauge,
    cassandra_restarts: Gauge,
    cassandra_uptime: Gauge,
    backup_last_success: Gauge,
    backup_failures: Counter,
    backup_uploaded_bytes: Counter,
    backup_reused_bytes: Counter,
    incremental_files: Counter,
    incremental_bytes: Counter,
    incremental_last_upload: Gauge,
    incremental_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("anchises");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            http_requests.clone(),
        );
        let http_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ]);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_seconds.clone(),
        );
        let cassandra_up = Gauge::default();
        registry.register(
            "cassandra_up",
            "1 while the Cassandra JVM is running",
            cassandra_up.clone(),
        );
        let cassandra_restarts = Gauge::default();
        registry.register(
            "cassandra_restarts",
            "Restarts made after Cassandra exited unasked, since the sidecar started",
            cassandra_restarts.clone(),
        );
        let cassandra_uptime = Gauge::default();
        registry.register(
            "cassandra_uptime_seconds",
            "Seconds since the current Cassandra JVM was started",
            cassandra_uptime.clone(),
        );
        let backup_last_success = Gauge::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last successful snapshot backup of this node",
            backup_last_success.clone(),
        );
        let backup_failures = Counter::default();
        registry.register(
            "backup_failures",
            "Snapshot backups of this node that failed (or were skipped by the schedule)",
            backup_failures.clone(),
        );
        let backup_uploaded_bytes = Counter::default();
        registry.register(
            "backup_uploaded_bytes",
            "File bytes uploaded by snapshot backups",
            backup_uploaded_bytes.clone(),
        );
        let backup_reused_bytes = Counter::default();
        registry.register(
            "backup_reused_bytes",
            "File bytes that snapshot backups found stored already",
            backup_reused_bytes.clone(),
        );
        let incremental_files = Counter::default();
        registry.register(
            "backup_incremental_files",
            "Incremental SSTable files uploaded",
            incremental_files.clone(),
        );
        let incremental_bytes = Counter::default();
        registry.register(
            "backup_incremental_bytes",
            "Incremental SSTable bytes uploaded",
            incremental_bytes.clone(),
        );
        let incremental_last_upload = Gauge::default();
        registry.register(
            "backup_incremental_last_upload_timestamp_seconds",
            "Unix time of the last incremental upload",
            incremental_last_upload.clone(),
        );
        let incremental_failures = Counter::default();
        registry.register(
            "backup_incremental_failures",
            "Incremental upload passes that failed",
            incremental_failures.clone(),
        );
        Self {
            registry,
            http_requests,
            http_seconds,
            cassandra_up,
            cassandra_restarts,
            cassandra_uptime,
            backup_last_success,
            backup_failures,
            backup_uploaded_bytes,
            backup_reused_bytes,
            incremental_files,
            incremental_bytes,
            incremental_last_upload,
            incremental_failures,
        }
    }
}

impl Metrics {
    pub fn backup_succeeded(&self, at: time::OffsetDateTime) {
        self.backup_last_success.set(at.unix_timestamp());
    }

    pub fn backup_failed(&self) {
        self.backup_failures.inc();
    }

    pub fn backup_bytes(&self, uploaded: u64, reused: u64) {
        self.backup_uploaded_bytes.inc_by(uploaded);
        self.backup_reused_bytes.inc_by(reused);
    }

    pub fn incremental_uploaded(&self, files: u64, bytes: u64, at: time::OffsetDateTime) {
        self.incremental_files.inc_by(files);
        self.incremental_bytes.inc_by(bytes);
        self.incremental_last_upload.set(at.unix_timestamp());
    }

    pub fn incremental_failed(&self) {
        self.incremental_failures.inc();
    }

    /// The text exposition format, with the process gauges refreshed from `process`.
    pub fn render(&self, process: &ProcessStatus) -> String {
        self.cassandra_up
            .set(i64::from(process.state == ProcessState::Running));
        self.cassandra_restarts.set(i64::from(process.restarts));
        self.cassandra_uptime
            .set(process.uptime().map_or(0, |d| d.as_secs() as i64));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
