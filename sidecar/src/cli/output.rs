//! Human output of the CLI (tables and key/value lists), or the JSON as received.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;

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
