//! Human output of the CLI (tables and key/value lists, progress bars), or the
//! JSON as received.

use std::time::Duration;

use bytesize::ByteSize;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub(super) fn pairs(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

pub fn status(process: &Value, node: Option<&Value>, json: bool) {
    if json {
        println!("{}", serde_json::json!({"process": process, "node": node}));
        return;
    }
    let mut rows = vec![
        ("process", text(&process["state"])),
        ("pid", text(&process["pid"])),
        ("restarts", text(&process["restarts"])),
    ];
    if let Some(msg) = process["message"].as_str() {
        rows.push(("message", msg.into()));
    }
    if let Some(n) = node {
        let tokens = n["tokens"].as_array().map_or(0, Vec::len);
        rows.extend([
            ("mode", text(&n["operation_mode"])),
            ("version", text(&n["cassandra_version"])),
            ("cluster", text(&n["cluster_name"])),
            ("address", text(&n["address"])),
            (
                "dc/rack",
                format!("{}/{}", text(&n["dc"]), text(&n["rack"])),
            ),
            ("host id", text(&n["host_id"])),
            (
                "tokens",
                if tokens == 1 {
                    text(&n["tokens"])
                } else {
                    format!("{tokens} tokens")
                },
            ),
            ("live", text(&n["live_nodes"])),
            ("unreachable", text(&n["unreachable_nodes"])),
            ("load", format!("{} bytes", text(&n["load_bytes"]))),
            ("native transport", text(&n["native_transport_running"])),
            ("uptime", format!("{} s", text(&n["uptime_seconds"]))),
        ]);
    }
    pairs(&rows);
}

pub fn ring(ring: &Value, json: bool) {
    if json {
        println!("{ring}");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "endpoint", "status", "state", "load", "owns", "tokens", "host id",
    ]);
    for e in ring["endpoints"].as_array().into_iter().flatten() {
        let owns = e["ownership"]
            .as_f64()
            .map_or("-".into(), |o| format!("{:.1}%", o * 100.0));
        let tokens = e["tokens"].as_array().map_or(0, Vec::len);
        let tokens = if tokens == 1 {
            text(&e["tokens"])
        } else {
            tokens.to_string()
        };
        t.add_row([
            text(&e["endpoint"]),
            text(&e["status"]),
            text(&e["state"]),
            text(&e["load"]),
            owns,
            tokens,
            text(&e["host_id"]),
        ]);
    }
    println!("{t}");
}

pub fn schema(schema: &Value, json: bool) {
    if json {
        println!("{schema}");
        return;
    }
    for e in schema.as_array().into_iter().flatten() {
        println!("{}\n", text(&e["create_statement"]));
    }
}

pub fn job(job: &Value, json: bool) {
    if json {
        println!("{job}");
        return;
    }
    let mut rows = vec![
        ("job", text(&job["id"])),
        ("kind", text(&job["kind"])),
        ("state", text(&job["state"])),
        ("started", text(&job["started_at"])),
        ("finished", text(&job["finished_at"])),
    ];
    if !job["error"].is_null() {
        rows.push(("error", text(&job["error"])));
    }
    if !job["result"].is_null() {
        rows.push(("result", job["result"].to_string()));
    }
    pairs(&rows);
}

pub fn jobs(jobs: &Value, json: bool) {
    if json {
        println!("{jobs}");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(["job", "kind", "state", "started", "error"]);
    for j in jobs.as_array().into_iter().flatten() {
        t.add_row([
            text(&j["id"]),
            text(&j["kind"]),
            text(&j["state"]),
            text(&j["started_at"]),
            text(&j["error"]),
        ]);
    }
    println!("{t}");
}

pub fn clusters(clusters: &Value, json: bool) {
    if json {
        println!("{clusters}");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_header(["cluster", "nodes", "dcs", "version", "created"]);
    for c in clusters.as_array().into_iter().flatten() {
        t.add_row([
            text(&c["name"]),
            text(&c["nodes"]),
            text(&c["dcs"]),
            text(&c["cassandra_version"]),
            text(&c["created_at"]),
        ]);
    }
    println!("{t}");
}

pub fn cluster(view: &Value, json: bool) {
    if json {
        println!("{view}");
        return;
    }
    let spec = &view["spec"];
    println!(
        "cluster {} — cassandra {}, num_tokens {}",
        text(&spec["name"]),
        text(&spec["cassandra_version"]),
        text(&spec["num_tokens"])
    );
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "dc",
        "slot",
        "rack",
        "address",
        "tokens",
        "slot state",
        "mode",
        "ready",
        "node",
    ]);
    for n in view["nodes"].as_array().into_iter().flatten() {
        t.add_row([
            text(&n["dc"]),
            text(&n["slot"]),
            text(&n["rack"]),
            text(&n["address"]),
            text(&n["tokens"]),
            text(&n["slot_state"]),
            text(&n["operation_mode"]),
            text(&n["ready"]),
            text(&n["node_id"]),
        ]);
    }
    println!("{t}");
}

/// A bar of bytes (backups and restores of one node), drawn on stderr, and
/// only when it is a terminal; hidden for `--json`.
pub(super) fn bytes_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    ticking(
        ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {wide_msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
    )
}

/// A spinner with a message (work whose bytes are not known here).
pub(super) fn spinner(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    ticking(
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                .expect("a valid template"),
        ),
    )
}

fn ticking(bar: ProgressBar) -> ProgressBar {
    bar.set_message("starting");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Moves a bytes bar to a backup's or restore's `progress` (bytes done of
/// total); until the total is known the bar stays empty (a length of 0 draws
/// full).
pub(super) fn set_bytes(bar: &ProgressBar, progress: &Value) {
    if let (Some(total @ 1..), Some(done)) = (
        progress["bytes_total"].as_u64(),
        progress["bytes_done"].as_u64(),
    ) {
        bar.set_length(total);
        bar.set_position(done.min(total));
    }
}

/// The phase and `progress` of a backup or restore:
/// `upload 1.2 GiB/3.4 GiB · 120/300 files · 45.0 MiB/s · ETA 40s`.
pub(super) fn progress_line(detail: &Value) -> String {
    let phase = detail["phase"].as_str().unwrap_or("running");
    let p = &detail["progress"];
    if p["files_total"].as_u64().unwrap_or(0) == 0 {
        return phase.to_string();
    }
    let mut parts = vec![
        format!(
            "{phase} {}/{}",
            size(&p["bytes_done"]),
            size(&p["bytes_total"])
        ),
        format!(
            "{}/{} files",
            text(&p["files_done"]),
            text(&p["files_total"])
        ),
    ];
    if let Some(rate) = p["rate_bytes_per_sec"].as_f64().filter(|r| *r >= 1.0) {
        parts.push(format!("{}/s", ByteSize(rate as u64)));
    }
    if let Some(eta) = p["eta_secs"].as_f64() {
        parts.push(format!("ETA {}", secs(eta)));
    }
    let errors = p["errors"].as_array().map_or(0, Vec::len);
    if errors > 0 {
        parts.push(format!("{errors} error(s)"));
    }
    parts.join(" · ")
}

/// Bytes as `1.5 GiB`.
pub(super) fn size(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| text(v), |b| ByteSize(b).to_string())
}

/// Seconds as `4.2s` or `1m 3s`.
pub(super) fn duration(v: &Value) -> String {
    v.as_f64().map_or_else(|| text(v), secs)
}

/// `4.2s` under ten seconds, else whole seconds: `1m 3s`, `2h 5m 1s`.
pub(super) fn secs(s: f64) -> String {
    let s = s.max(0.0);
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
    }
}

/// An RFC 3339 time as `2025-01-02 03:04:05` (UTC).
pub(super) fn when(v: &Value) -> String {
    let Some(s) = v.as_str() else {
        return text(v);
    };
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => s.to_string(),
    }
}

pub(super) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
