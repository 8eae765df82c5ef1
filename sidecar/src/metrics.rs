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
        Self {
            registry,
            http_requests,
            http_seconds,
            cassandra_up,
            cassandra_restarts,
            cassandra_uptime,
        }
    }
}

impl Metrics {
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
