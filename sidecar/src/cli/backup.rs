//! `anchises backup …`: start a backup and follow its progress, list, show,
//! verify, delete and purge backups, through the node sidecar's `/v1/backups`.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::client::ApiClient;
use super::output::{self, duration, pairs, progress_line, shorten, size, text, when};
use super::WaitArgs;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up this node (or every node) and follow the progress until it ends.
    Create {
        /// Back up every node of the cluster under one id (needs cluster mode).
        #[arg(long)]
        cluster_wide: bool,
        /// Only this keyspace; repeat for more (all keyspaces without one).
        #[arg(long, short)]
        keyspace: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the backups of this node and its cluster, newest first.
    List,
    /// Show a backup: totals, progress while it runs, manifest, per-node states.
    Show {
        #[arg(value_parser = backup_id)]
        id: String,
    },
    /// Check that every object a backup names is stored; exits 1 on any problem.
    Verify {
        #[arg(value_parser = backup_id)]
        id: String,
        /// Download every object and check its size and BLAKE3 hash (otherwise:
        /// that it exists with its stored size).
        #[arg(long)]
        deep: bool,
    },
    /// Delete a backup, then every stored object nothing else names.
    Delete {
        #[arg(value_parser = backup_id)]
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Apply retention: delete the backups it no longer keeps, then what only they named.
    ///
    /// Given either, --keep-last and --keep-days replace both configured rules
    /// for this purge.
    Purge {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Keep the newest N backups.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        keep_last: Option<u32>,
        /// Keep backups younger than N days.
        #[arg(long)]
        keep_days: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Backup ids are letters, digits, `-` and `_` (`20250102T030000Z-1a2b3c`).
pub(super) fn backup_id(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(s.to_string())
    } else {
        Err("a backup id is letters, digits, '-' and '_' (e.g. 20250102T030000Z-1a2b3c)".into())
    }
}

pub async fn run(
    api: &ApiClient,
    command: BackupCommand,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create {
            cluster_wide,
            keyspace,
            wait,
        } => create(api, cluster_wide, keyspace, wait.no_wait, json_out).await,
        BackupCommand::List => api.print_get("/v1/backups", json_out, print_list).await,
        BackupCommand::Show { id } => {
            api.print_get(&format!("/v1/backups/{id}"), json_out, print_detail)
                .await
        }
        BackupCommand::Verify { id, deep } => verify(api, &id, deep, json_out).await,
        BackupCommand::Delete { id, wait } => {
            let started = api.delete(&format!("/v1/backups/{id}")).await?;
            finish(api, &started["job"], wait.no_wait, json_out, |r| {
                format!(
                    "deleted backup {id}: {} objects, {} freed",
                    text(&r["objects_deleted"]),
                    size(&r["bytes_freed"])
                )
            })
            .await
        }
        BackupCommand::Purge {
            dry_run,
            keep_last,
            keep_days,
            wait,
        } => {
            let mut body = json!({"dry_run": dry_run});
            if let Some(n) = keep_last {
                body["keep_last"] = json!(n);
            }
            if let Some(n) = keep_days {
                body["keep_days"] = json!(n);
            }
            let answer = api.post("/v1/backups/purge", &body).await?;
            if dry_run {
                if json_out {
                    println!("{answer}");
                } else {
                    print_plan(&answer["plan"]);
                }
                return Ok(ExitCode::SUCCESS);
            }
            finish(api, &answer["job"], wait.no_wait, json_out, purge_done).await
        }
    }
}

/// Starts a backup and, unless `no_wait`, follows it to its end.
async fn create(
    api: &ApiClient,
    cluster_wide: bool,
    keyspaces: Vec<String>,
    no_wait: bool,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let scope = if cluster_wide { "cluster" } else { "node" };
    let started = api
        .post(
            "/v1/backups",
            &json!({"scope": scope, "keyspaces": keyspaces}),
        )
        .await?;
    let id = started["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no backup id in {started}"))?
        .to_string();
    if no_wait {
        if json_out {
            println!("{started}");
        } else {
            pairs(&[
                ("backup", id),
                ("scope", scope.into()),
                ("job", text(&started["job"]["id"])),
            ]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json_out {
        if cluster_wide {
            eprintln!("backing up every node of the cluster as {id}…");
        } else {
            eprintln!("backing up this node as {id}…");
        }
    }
    let bar = if cluster_wide {
        output::spinner(json_out)
    } else {
        output::bytes_bar(json_out)
    };
    let path = format!("/v1/backups/{id}");
    // A cluster backup is not visible until its request is written.
    let job = api
        .wait_job_watching(&started["job"], &path, |detail| {
            show_progress(&bar, detail, cluster_wide)
        })
        .await;
    bar.finish_and_clear();
    let job = job?;
    let detail = api.get_found(&path).await.unwrap_or_else(|e| {
        eprintln!("warning: cannot read backup {id}: {e:#}");
        None
    });
    if json_out {
        println!("{}", json!({"id": id, "job": job, "backup": detail}));
    } else {
        print_outcome(&id, &job, detail.as_ref());
    }
    if job["state"] == "failed" {
        if !json_out {
            eprintln!("error: backup {id} failed: {}", text(&job["error"]));
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn show_progress(bar: &ProgressBar, detail: &Value, cluster_wide: bool) {
    if cluster_wide {
        bar.set_message(cluster_line(detail));
        return;
    }
    output::set_bytes(bar, &detail["progress"]);
    bar.set_message(progress_line(detail));
}

/// `2/3 nodes done, 1 running · this node: upload …`.
fn cluster_line(detail: &Value) -> String {
    let Some(nodes) = detail["nodes"].as_array() else {
        return "waiting for the nodes to pick up the request".into();
    };
    let count = |state: &str| nodes.iter().filter(|n| n["state"] == state).count();
    let mut line = format!("{}/{} nodes done", count("done"), nodes.len());
    for state in ["running", "pending", "failed"] {
        let n = count(state);
        if n > 0 {
            line.push_str(&format!(", {n} {state}"));
        }
    }
    if !detail["progress"].is_null() && detail["state"] == "running" {
        line.push_str(&format!(" · this node: {}", progress_line(detail)));
    }
    line
}

fn print_outcome(id: &str, job: &Value, detail: Option<&Value>) {
    let mut rows = vec![("backup", id.to_string())];
    match detail {
        Some(d) => {
            rows.push(("state", text(&d["state"])));
            rows.extend(summary_rows(d));
        }
        None => rows.push(("state", text(&job["state"]))),
    }
    let purged = &job["result"]["purged_backups"];
    if purged.as_array().is_some_and(|a| !a.is_empty()) {
        rows.push(("retention", format!("deleted {}", text(purged))));
    }
    pairs(&rows);
    if let Some(nodes) = detail.and_then(|d| d["nodes"].as_array()) {
        println!();
        print_nodes(nodes);
    }
}

/// Files, bytes (uploaded now vs already stored) and duration of a backup.
fn summary_rows(b: &Value) -> Vec<(&'static str, String)> {
    let mut files = format!("{}, {}", text(&b["files"]), size(&b["bytes"]));
    if b["stored_bytes"].as_u64().unwrap_or(0) > 0 {
        files.push_str(&format!(" ({} stored)", size(&b["stored_bytes"])));
    }
    vec![
        ("files", files),
        (
            "uploaded",
            format!(
                "{} files, {}",
                text(&b["uploaded_files"]),
                size(&b["uploaded_bytes"])
            ),
        ),
        (
            "reused",
            format!(
                "{} files, {}",
                text(&b["reused_files"]),
                size(&b["reused_bytes"])
            ),
        ),
        ("duration", duration(&b["duration_secs"])),
    ]
}

fn print_list(list: &Value) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "backup",
        "scope",
        "state",
        "started (UTC)",
        "duration",
        "size",
        "uploaded",
        "reused",
        "error",
    ]);
    for b in list.as_array().into_iter().flatten() {
        t.add_row(list_row(b));
    }
    println!("{t}");
}

fn list_row(b: &Value) -> [String; 9] {
    [
        text(&b["id"]),
        text(&b["scope"]),
        text(&b["state"]),
        when(&b["started_at"]),
        duration(&b["duration_secs"]),
        size(&b["bytes"]),
        size(&b["uploaded_bytes"]),
        size(&b["reused_bytes"]),
        shorten(&text(&b["error"]), 60),
    ]
}

fn print_detail(d: &Value) {
    let mut rows = vec![
        ("backup", text(&d["id"])),
        ("scope", text(&d["scope"])),
        ("state", text(&d["state"])),
    ];
    if !d["phase"].is_null() {
        rows.push(("phase", text(&d["phase"])));
    }
    rows.push(("started", when(&d["started_at"])));
    rows.push(("finished", when(&d["finished_at"])));
    rows.extend(summary_rows(d));
    if !d["progress"].is_null() && d["state"] == "running" {
        rows.push(("progress", progress_line(d)));
    }
    for e in d["progress"]["errors"].as_array().into_iter().flatten() {
        rows.push(("upload error", text(e)));
    }
    if !d["job"].is_null() {
        rows.push(("job", text(&d["job"])));
    }
    let m = &d["manifest"];
    if !m.is_null() {
        let tokens = m["tokens"].as_array().map_or(0, Vec::len);
        rows.extend([
            (
                "slot",
                format!(
                    "{} {}/{}",
                    text(&m["slot"]["cluster"]),
                    text(&m["slot"]["dc"]),
                    text(&m["slot"]["slot"])
                ),
            ),
            ("address", text(&m["address"])),
            ("cassandra", text(&m["cassandra_version"])),
            (
                "tokens",
                if tokens == 1 {
                    text(&m["tokens"])
                } else {
                    format!("{tokens} tokens")
                },
            ),
            (
                "keyspaces",
                if m["keyspaces"].as_array().is_some_and(|k| !k.is_empty()) {
                    text(&m["keyspaces"])
                } else {
                    "all".into()
                },
            ),
            ("tables", text(&m["tables"])),
        ]);
    }
    if !d["error"].is_null() {
        rows.push(("error", text(&d["error"])));
    }
    pairs(&rows);
    if let Some(nodes) = d["nodes"].as_array() {
        println!();
        print_nodes(nodes);
    }
}

/// The nodes of a cluster backup.
fn print_nodes(nodes: &[Value]) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "dc/slot", "address", "state", "files", "size", "uploaded", "error",
    ]);
    for n in nodes {
        let totals = &n["totals"];
        t.add_row([
            format!("{}/{}", text(&n["slot"]["dc"]), text(&n["slot"]["slot"])),
            text(&n["address"]),
            text(&n["state"]),
            text(&totals["files"]),
            size(&totals["bytes"]),
            size(&totals["uploaded_bytes"]),
            text(&n["error"]),
        ]);
    }
    println!("{t}");
}

async fn verify(api: &ApiClient, id: &str, deep: bool, json_out: bool) -> anyhow::Result<ExitCode> {
    let started = api
        .post(&format!("/v1/backups/{id}/verify"), &json!({"deep": deep}))
        .await?;
    if !json_out {
        eprintln!(
            "verifying backup {id}{}…",
            if deep {
                " (downloading and hashing every object)"
            } else {
                ""
            }
        );
    }
    let job = api.wait_job(&started["job"]).await?;
    if json_out {
        println!("{job}");
    }
    if job["state"] == "failed" {
        if !json_out {
            eprintln!(
                "error: verifying backup {id} failed: {}",
                text(&job["error"])
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    let report = &job["result"];
    if !json_out {
        println!("{}", verify_report(id, report));
    }
    Ok(if report["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_report(id: &str, r: &Value) -> String {
    let checked = format!("{} files, {}", text(&r["files"]), size(&r["bytes"]));
    let problems = r["problems"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if problems.is_empty() && r["ok"] == true {
        let how = if r["deep"] == true {
            "every object matches its size and BLAKE3 hash"
        } else {
            "every object is stored with its size"
        };
        return format!("backup {id} is ok: {checked}; {how}");
    }
    let mut out = format!(
        "backup {id} has {} problem(s) among {checked}:",
        problems.len()
    );
    for p in problems {
        out.push_str(&format!("\n  {}", text(p)));
    }
    out
}

fn print_plan(plan: &Value) {
    let ids = |v: &Value| {
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            text(v)
        } else {
            "none".into()
        }
    };
    let count = |v: &Value| v.as_array().map_or(0, Vec::len);
    pairs(&[
        ("would delete", ids(&plan["backups"])),
        ("would keep", ids(&plan["kept"])),
        (
            "log entries",
            format!(
                "{} incremental log entries older than every kept backup",
                count(&plan["log_entries"])
            ),
        ),
        (
            "objects",
            format!(
                "{} unreferenced objects, {}",
                count(&plan["objects"]),
                size(&plan["bytes"])
            ),
        ),
    ]);
}

fn purge_done(r: &Value) -> String {
    let deleted = r["deleted"].as_array().map_or(0, Vec::len);
    let kept = r["kept"].as_array().map_or(0, Vec::len);
    let names = if deleted > 0 {
        format!(" ({})", text(&r["deleted"]))
    } else {
        String::new()
    };
    format!(
        "deleted {deleted} backup(s){names}, kept {kept}; {} objects deleted, {} freed",
        text(&r["objects_deleted"]),
        size(&r["bytes_freed"])
    )
}

/// Waits for a job (unless `no_wait`), prints `describe(result)` or the job
/// as JSON, and says whether it succeeded.
async fn finish(
    api: &ApiClient,
    job: &Value,
    no_wait: bool,
    json_out: bool,
    describe: impl FnOnce(&Value) -> String,
) -> anyhow::Result<ExitCode> {
    if no_wait {
        output::job(job, json_out);
        return Ok(ExitCode::SUCCESS);
    }
    let job = api.wait_job(job).await?;
    if json_out {
        println!("{job}");
    }
    if job["state"] == "failed" {
        if !json_out {
            eprintln!("error: {}", text(&job["error"]));
        }
        return Ok(ExitCode::FAILURE);
    }
    if !json_out {
        println!("{}", describe(&job["result"]));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::output::secs;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("anchises").chain(args.iter().copied()))
    }

    fn backup(args: &[&str]) -> BackupCommand {
        match parse(args).unwrap().command {
            Command::Backup { command } => command,
            other => panic!("not a backup command: {other:?}"),
        }
    }

    #[test]
    fn create_takes_scope_keyspaces_and_no_wait() {
        match backup(&["backup", "create"]) {
            BackupCommand::Create {
                cluster_wide,
                keyspace,
                wait,
            } => {
                assert!(!cluster_wide && keyspace.is_empty() && !wait.no_wait);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "backup",
            "create",
            "--cluster-wide",
            "-k",
            "orders",
            "--keyspace",
            "users",
            "--no-wait",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Backup {
                command:
                    BackupCommand::Create {
                        cluster_wide,
                        keyspace,
                        wait,
                    },
            } => {
                assert!(cluster_wide && wait.no_wait);
                assert_eq!(keyspace, ["orders", "users"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_and_retention_rules_are_checked_before_any_request() {
        assert!(matches!(
            backup(&["backup", "verify", "20250102T030000Z-1a2b3c", "--deep"]),
            BackupCommand::Verify { deep: true, .. }
        ));
        assert!(matches!(
            backup(&["backup", "purge", "--dry-run", "--keep-last", "3"]),
            BackupCommand::Purge {
                dry_run: true,
                keep_last: Some(3),
                keep_days: None,
                ..
            }
        ));
        assert!(parse(&["backup", "show", "../jobs"]).is_err());
        assert!(parse(&["backup", "delete", ""]).is_err());
        assert!(parse(&["backup", "purge", "--keep-last", "0"]).is_err());
        assert!(parse(&["backup", "show"]).is_err());
    }

    #[test]
    fn a_list_row_has_human_times_sizes_and_durations() {
        let summary = json!({
            "id": "20250102T030000Z-1a2b3c", "scope": "node", "state": "done",
            "started_at": "2025-01-02T03:00:00.123456Z",
            "finished_at": "2025-01-02T03:01:03Z", "duration_secs": 62.9,
            "files": 12, "bytes": 1610612736u64, "stored_bytes": 1073741824u64,
            "uploaded_files": 2, "uploaded_bytes": 1536, "reused_files": 10,
            "reused_bytes": 1610611200u64, "error": null,
        });
        assert_eq!(
            list_row(&summary),
            [
                "20250102T030000Z-1a2b3c",
                "node",
                "done",
                "2025-01-02 03:00:00",
                "1m 3s",
                "1.5 GiB",
                "1.5 KiB",
                "1.5 GiB",
                "-",
            ]
        );
        let rows = summary_rows(&summary);
        assert_eq!(rows[0], ("files", "12, 1.5 GiB (1.0 GiB stored)".into()));
        assert_eq!(rows[1], ("uploaded", "2 files, 1.5 KiB".into()));
        let running = json!({"id": "x", "state": "running", "started_at": "2025-01-02T04:00:00+01:00",
            "duration_secs": null, "bytes": 0, "error": "x".repeat(100)});
        let row = list_row(&running);
        assert_eq!(row[3], "2025-01-02 03:00:00");
        assert_eq!(row[4], "-");
        assert_eq!(row[5], "0 B");
        assert_eq!(row[8].chars().count(), 60);
    }

    #[test]
    fn progress_lines() {
        let detail = json!({"state": "running", "phase": "upload", "progress": {
            "files_total": 300, "files_done": 120, "bytes_total": 3u64 << 30,
            "bytes_done": 1u64 << 30, "rate_bytes_per_sec": 47185920.0, "eta_secs": 45.4,
            "errors": []}});
        assert_eq!(
            progress_line(&detail),
            "upload 1.0 GiB/3.0 GiB · 120/300 files · 45.0 MiB/s · ETA 45s"
        );
        assert_eq!(
            progress_line(&json!({"phase": "snapshot", "progress": {"files_total": 0}})),
            "snapshot"
        );
        let cluster = json!({"state": "running", "phase": "snapshot", "progress": {"files_total": 0},
            "nodes": [{"state": "done"}, {"state": "running"}, {"state": "failed"}]});
        assert_eq!(
            cluster_line(&cluster),
            "1/3 nodes done, 1 running, 1 failed · this node: snapshot"
        );
        assert_eq!(
            cluster_line(&json!({"state": "running"})),
            "waiting for the nodes to pick up the request"
        );
        assert_eq!(secs(4.26), "4.3s");
        assert_eq!(secs(7263.0), "2h 1m 3s");
    }

    #[test]
    fn verify_reports_problems() {
        let ok = json!({"ok": true, "deep": true, "files": 3, "bytes": 2048, "problems": []});
        assert_eq!(
            verify_report("b1", &ok),
            "backup b1 is ok: 3 files, 2.0 KiB; every object matches its size and BLAKE3 hash"
        );
        let bad = json!({"ok": false, "deep": false, "files": 3, "bytes": 2048,
            "problems": ["ks/t-1/nb-1-big-Data.db: object k is missing"]});
        assert_eq!(
            verify_report("b1", &bad),
            "backup b1 has 1 problem(s) among 3 files, 2.0 KiB:\n  ks/t-1/nb-1-big-Data.db: object k is missing"
        );
    }
}
