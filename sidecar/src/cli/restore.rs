//! `anchises restore …`: restore keyspaces and tables into the running node
//! from its backups (or another cluster's) and follow the progress; list, show,
//! cancel, resume and delete restores, through the node sidecar's `/v1/restores`.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::backup::backup_id;
use super::client::ApiClient;
use super::output::{self, duration, pairs, shorten, size, text, when};
use super::WaitArgs;

/// `anchises restore [OPTIONS]` starts a restore; `list`, `show`, `cancel`,
/// `resume` and `delete` act on restores.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub start: StartArgs,
    #[command(subcommand)]
    pub command: Option<RestoreCommand>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Restore from the backups of this cluster (default: this node's cluster).
    #[arg(long, value_name = "CLUSTER")]
    pub source_cluster: Option<String>,
    /// Restore this backup (default: the newest one).
    #[arg(long, value_name = "ID", value_parser = backup_id, conflicts_with = "at")]
    pub backup: Option<String>,
    /// Restore to this point in time (RFC 3339, e.g. 2026-11-26T09:55:00Z or
    /// 2026-11-26T09:55Z): the newest backup finished by then plus the
    /// SSTables flushed after it, up to then.
    #[arg(long, value_name = "TIME", value_parser = normalize_at)]
    pub at: Option<String>,
    /// Only this keyspace; repeat for more (all non-system keyspaces without
    /// --keyspace and --table).
    #[arg(long, short)]
    pub keyspace: Vec<String>,
    /// Only this table, as KEYSPACE.TABLE; repeat for more.
    #[arg(long, short, value_name = "KS.TABLE", value_parser = table_name)]
    pub table: Vec<String>,
    /// Create keyspaces, types and tables the live schema lacks, from the
    /// backed-up schema (otherwise a missing table blocks the restore).
    #[arg(long)]
    pub create_schema: bool,
    /// Only print the plan: files, bytes, tables, what would be created, what
    /// blocks it (exits 1 when blocked).
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the whole node (system keyspaces included) with the backup:
    /// stop Cassandra, move its data aside, lay out the backup, start; the old
    /// data comes back if the node does not start healthy.
    #[arg(long, conflicts_with_all = ["keyspace", "table", "create_schema", "cluster"])]
    pub full: bool,
    /// Restore every node of the cluster (each its own slot) from this one
    /// request; this node coordinates and shows every node's part.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: only the node at this address (repeatable).
    #[arg(long, value_name = "ADDRESS", requires = "cluster")]
    pub node: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// List the restores run by this node's sidecar, and those an earlier one left
    /// unfinished (interrupted), newest first.
    List,
    /// Show a restore: state, phase, plan, progress, imported tables, error.
    Show {
        #[arg(value_parser = restore_id)]
        id: String,
    },
    /// Stop a running restore after the current file or table.
    ///
    /// Staged files and imported tables are kept: `resume` (or the same request)
    /// continues it, `delete` removes what is staged.
    Cancel {
        #[arg(value_parser = restore_id)]
        id: String,
    },
    /// Continue a cancelled, failed or interrupted restore of this node.
    ///
    /// Makes its request again, which continues from what it staged and imported;
    /// follows it like a new restore.
    Resume {
        #[arg(value_parser = restore_id)]
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Forget a restore that is not running and remove what it staged.
    ///
    /// A cancelled, failed or interrupted restore cannot be continued afterwards.
    Delete {
        #[arg(value_parser = restore_id)]
        id: String,
    },
}

/// Restore ids are letters, digits, `-` and `_` (`r1a2b3c4d5e6f`).
fn restore_id(s: &str) -> Result<String, String> {
    if crate::restore::is_restore_id(s) {
        Ok(s.to_string())
    } else {
        Err("a restore id is letters, digits, '-' and '_' (e.g. r1a2b3c4d5e6f)".into())
    }
}

fn table_name(s: &str) -> Result<String, String> {
    match s.split_once('.') {
        Some((ks, table)) if !ks.is_empty() && !table.is_empty() && !table.contains('.') => {
            Ok(s.to_string())
        }
        _ => Err("a table is KEYSPACE.TABLE, e.g. shop.orders".into()),
    }
}

/// A point in time as RFC 3339 in UTC (`2026-11-26T09:55:00Z`). Takes RFC 3339
/// with any offset, and also minutes without seconds (`2026-11-26T09:55Z`,
/// `2026-11-26T10:55+01:00`). A time without a zone is refused.
pub(super) fn normalize_at(s: &str) -> Result<String, String> {
    let s = s.trim();
    let full = match s.split_once(['T', 't']) {
        Some((date, clock)) if is_minutes_then_zone(clock) => {
            format!("{date}T{}:00{}", &clock[..5], &clock[5..])
        }
        _ => s.to_string(),
    };
    OffsetDateTime::parse(&full, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok())
        .ok_or_else(|| {
            format!(
                "{s:?} is not a time with a zone: use RFC 3339, e.g. 2026-11-26T09:55:00Z or 2026-11-26T09:55Z"
            )
        })
}

/// `09:55Z`, `09:55+01:00`: hours and minutes, then the zone.
fn is_minutes_then_zone(clock: &str) -> bool {
    let b = clock.as_bytes();
    b.len() > 5
        && b[..2].iter().all(u8::is_ascii_digit)
        && b[2] == b':'
        && b[3..5].iter().all(u8::is_ascii_digit)
        && matches!(b[5], b'Z' | b'z' | b'+' | b'-')
}

pub async fn run(api: &ApiClient, args: RestoreArgs, json_out: bool) -> anyhow::Result<ExitCode> {
    match args.command {
        None => start(api, args.start, json_out).await,
        Some(RestoreCommand::List) => api.print_get("/v1/restores", json_out, print_list).await,
        Some(RestoreCommand::Show { id }) => {
            api.print_get(&format!("/v1/restores/{id}"), json_out, print_detail)
                .await
        }
        Some(RestoreCommand::Cancel { id }) => {
            let answer = api
                .post(&format!("/v1/restores/{id}/cancel"), &Value::Null)
                .await?;
            if json_out {
                println!("{answer}");
            } else {
                println!(
                    "cancelling restore {id}: it stops after the current file or table; \
                     staged files and imported tables are kept; `anchises restore resume {id}` \
                     continues it, `anchises restore delete {id}` removes what is staged"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(RestoreCommand::Resume { id, wait }) => resume(api, &id, wait, json_out).await,
        Some(RestoreCommand::Delete { id }) => {
            let answer = api.delete(&format!("/v1/restores/{id}")).await?;
            if json_out {
                println!("{answer}");
            } else {
                println!(
                    "deleted restore {id}: {} staged files, {} removed",
                    text(&answer["files"]),
                    size(&answer["bytes"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `POST /v1/restores` body.
fn request_body(a: &StartArgs) -> Value {
    let mut body = json!({
        "keyspaces": a.keyspace,
        "tables": a.table,
        "create_schema": a.create_schema,
        "dry_run": a.dry_run,
    });
    if a.full {
        body["mode"] = json!("full");
    }
    if a.cluster {
        body["scope"] = json!("cluster");
        body["nodes"] = json!(a.node);
    }
    for (key, value) in [
        ("source_cluster", &a.source_cluster),
        ("backup_id", &a.backup),
        ("at", &a.at),
    ] {
        if let Some(v) = value {
            body[key] = json!(v);
        }
    }
    body
}

/// Plans (dry run) or starts a restore and, unless `--no-wait`, follows it
/// to its end.
async fn start(api: &ApiClient, args: StartArgs, json_out: bool) -> anyhow::Result<ExitCode> {
    let answer = api.post("/v1/restores", &request_body(&args)).await?;
    if args.dry_run {
        let plan = &answer["plan"];
        if json_out {
            println!("{answer}");
        } else if plan["scope"] == "cluster" {
            pairs(&cluster_plan_rows(plan));
            let blockers = blocker_lines(plan);
            if !blockers.is_empty() {
                println!("blocked by:");
                for b in blockers {
                    println!("{b}");
                }
            }
        } else {
            pairs(&plan_rows(plan));
            let blockers = blocker_lines(plan);
            if !blockers.is_empty() {
                println!("blocked by:");
                for b in blockers {
                    println!("{b}");
                }
            }
        }
        return Ok(if blocked(plan) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    follow(api, &answer, args.wait.no_wait, args.cluster, json_out).await
}

/// Makes the request of restore `id` again, which continues it, and follows it.
async fn resume(
    api: &ApiClient,
    id: &str,
    wait: WaitArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let detail = api.get(&format!("/v1/restores/{id}")).await?;
    if detail["scope"] == "cluster" {
        anyhow::bail!(
            "restore {id} is a cluster restore: its nodes continue their parts after a restart \
             by themselves; a cancelled one is made again with `anchises restore --cluster`"
        );
    }
    match detail["state"].as_str() {
        Some("running") => anyhow::bail!("restore {id} is running"),
        Some("done") => anyhow::bail!("restore {id} is done: there is nothing to continue"),
        _ => {}
    }
    let mut request = detail["request"].clone();
    request["dry_run"] = json!(false);
    let answer = api.post("/v1/restores", &request).await?;
    if answer["id"] != id {
        eprintln!(
            "warning: nothing of restore {id} is left to continue; its request started afresh as {}",
            text(&answer["id"])
        );
    }
    follow(api, &answer, wait.no_wait, false, json_out).await
}

/// Follows a restore just started (`answer` is the 202's body) to its end,
/// unless `no_wait`; exits non-zero if it did not end done.
async fn follow(
    api: &ApiClient,
    answer: &Value,
    no_wait: bool,
    cluster: bool,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let id = answer["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no restore id in {answer}"))?
        .to_string();
    if no_wait {
        if json_out {
            println!("{answer}");
        } else {
            pairs(&[("restore", id), ("job", text(&answer["job"]["id"]))]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json_out && cluster {
        eprintln!(
            "restoring the cluster's nodes as {id}… (Ctrl-C stops following it; \
             `anchises restore cancel {id}` stops every node's part)"
        );
    } else if !json_out {
        eprintln!(
            "restoring into this node as {id}… (Ctrl-C stops following it; \
             `anchises restore cancel {id}` stops the restore)"
        );
    }
    let bar = output::bytes_bar(json_out);
    let path = format!("/v1/restores/{id}");
    let job = api
        .wait_job_watching(&answer["job"], &path, |detail| show_progress(&bar, detail))
        .await;
    bar.finish_and_clear();
    let job = job?;
    let detail = api.get_found(&path).await.unwrap_or_else(|e| {
        eprintln!("warning: cannot read restore {id}: {e:#}");
        None
    });
    if json_out {
        println!("{}", json!({"id": id, "job": job, "restore": detail}));
    } else {
        let mut rows = vec![("restore", id.clone())];
        match &detail {
            Some(d) => {
                rows.push(("state", text(&d["state"])));
                rows.extend(summary_rows(d));
            }
            None => rows.push(("state", text(&job["state"]))),
        }
        pairs(&rows);
    }
    let state = detail.as_ref().map_or(Value::Null, |d| d["state"].clone());
    if job["state"] == "succeeded" && (state.is_null() || state == "done") {
        return Ok(ExitCode::SUCCESS);
    }
    if !json_out {
        if state == "cancelled" && cluster {
            eprintln!("error: cluster restore {id} was cancelled on every node");
        } else if state == "cancelled" {
            eprintln!(
                "error: restore {id} was cancelled; staged files and imported tables are kept: \
                 `anchises restore resume {id}` continues it"
            );
        } else {
            let error = detail
                .as_ref()
                .map(|d| &d["error"])
                .filter(|e| !e.is_null())
                .unwrap_or(&job["error"]);
            eprintln!("error: restore {id} failed: {}", text(error));
        }
    }
    Ok(ExitCode::FAILURE)
}

fn blocked(plan: &Value) -> bool {
    plan["blockers"].as_array().is_some_and(|b| !b.is_empty())
}

fn show_progress(bar: &ProgressBar, detail: &Value) {
    output::set_bytes(bar, &detail["progress"]);
    bar.set_message(progress_line(detail));
}

/// While staging, bytes and files (`stage 1.0 GiB/3.0 GiB · 120/300 files ·
/// 45.0 MiB/s · ETA 45s`); then the tables imported
/// (`import · 1/2 tables imported · 300 files staged`).
fn progress_line(detail: &Value) -> String {
    if let Some(nodes) = detail["nodes"].as_array() {
        let done = nodes.iter().filter(|n| n["state"] == "done").count();
        return format!(
            "{} · {done}/{} nodes done",
            output::progress_line(detail),
            nodes.len()
        );
    }
    match detail["phase"].as_str() {
        None | Some("stage") => output::progress_line(detail),
        Some("plan") => "plan".into(),
        Some(phase) => {
            let total = detail["plan"]["tables"].as_array().map_or(0, Vec::len);
            let imported = detail["imported_tables"].as_array().map_or(0, Vec::len);
            format!(
                "{phase} · {imported}/{total} tables imported · {} files staged",
                text(&detail["progress"]["files_done"])
            )
        }
    }
}

/// What a dry run prints: source, base backup, files, bytes, tables, what
/// would be created, blockers (listed by `blocker_lines`).
fn plan_rows(plan: &Value) -> Vec<(&'static str, String)> {
    let list = |v: &Value, none: &str| {
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            text(v)
        } else {
            none.to_string()
        }
    };
    let blockers = plan["blockers"].as_array().map_or(0, Vec::len);
    vec![
        ("source", slot(&plan["source"])),
        ("target", slot(&plan["target"])),
        (
            "base backup",
            format!(
                "{} (finished {})",
                text(&plan["base_backup"]),
                when(&plan["base_finished_at"])
            ),
        ),
        (
            "files",
            format!(
                "{} ({} incremental), {}",
                text(&plan["files"]),
                text(&plan["incremental_files"]),
                size(&plan["bytes"])
            ),
        ),
        ("tables", list(&plan["tables"], "none")),
        ("would create", list(&plan["create"], "nothing")),
        (
            "blockers",
            if blockers == 0 {
                "none: the restore can run".into()
            } else {
                format!("{blockers}: the restore would be refused")
            },
        ),
    ]
}

/// What a cluster dry run prints: the point, totals, what would be created,
/// and per node its source slot, files and bytes.
fn cluster_plan_rows(plan: &Value) -> Vec<(&'static str, String)> {
    let blockers = plan["blockers"].as_array().map_or(0, Vec::len);
    let mut rows = vec![
        (
            "point",
            if plan["backup_id"].is_null() {
                format!("at {}", when(&plan["at"]))
            } else {
                format!("backup {}", text(&plan["backup_id"]))
            },
        ),
        (
            "files",
            format!("{}, {}", text(&plan["files"]), size(&plan["bytes"])),
        ),
        (
            "would create",
            if plan["create"].as_array().is_some_and(|a| !a.is_empty()) {
                text(&plan["create"])
            } else {
                "nothing".into()
            },
        ),
    ];
    for n in plan["nodes"].as_array().into_iter().flatten() {
        rows.push((
            "node",
            format!(
                "{} {} ← {}: {} files, {}",
                slot(&n["target"]),
                text(&n["address"]),
                slot(&n["source"]),
                text(&n["files"]),
                size(&n["bytes"])
            ),
        ));
    }
    rows.push((
        "blockers",
        if blockers == 0 {
            "none: the restore can run".into()
        } else {
            format!("{blockers}: the restore would be refused")
        },
    ));
    rows
}

/// `  - why`, with a blocker's own further lines (a schema difference) indented.
fn blocker_lines(plan: &Value) -> Vec<String> {
    plan["blockers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| format!("  - {}", text(b).replace('\n', "\n    ")))
        .collect()
}

/// `anchises dc1/0`.
fn slot(s: &Value) -> String {
    if s.is_null() {
        return "-".into();
    }
    format!(
        "{} {}/{}",
        text(&s["cluster"]),
        text(&s["dc"]),
        text(&s["slot"])
    )
}

/// Seconds from `started_at` to `finished_at` (or to now while it runs).
fn elapsed(d: &Value) -> Value {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    let Some(started) = time(&d["started_at"]) else {
        return Value::Null;
    };
    if d["state"] == "interrupted" {
        // Not running: when its sidecar stopped is not known.
        return Value::Null;
    }
    let end = time(&d["finished_at"]).unwrap_or_else(OffsetDateTime::now_utc);
    json!((end - started).as_seconds_f64())
}

/// What the restore comes from: `latest backup`, `backup ID`, `at TIME`.
fn point(request: &Value) -> String {
    if !request["backup_id"].is_null() {
        format!("backup {}", text(&request["backup_id"]))
    } else if !request["at"].is_null() {
        format!("at {}", when(&request["at"]))
    } else {
        "latest backup".into()
    }
}

/// Tables imported, files, bytes (downloaded now vs already staged), duration.
fn summary_rows(d: &Value) -> Vec<(&'static str, String)> {
    let plan = &d["plan"];
    let p = &d["progress"];
    let imported = d["imported_tables"].as_array().map_or(0, Vec::len);
    let total = plan["tables"].as_array().map_or(0, Vec::len);
    let mut tables = format!("{imported} of {total} imported");
    if imported > 0 {
        tables.push_str(&format!(": {}", text(&d["imported_tables"])));
    }
    if let Some(nodes) = d["nodes"].as_array() {
        tables = nodes_done(nodes);
    }
    let mut rows = vec![("tables", tables)];
    if !plan.is_null() {
        rows.push((
            "from",
            format!(
                "{} of {}",
                text(&plan["base_backup"]),
                slot(&plan["source"])
            ),
        ));
        rows.push((
            "files",
            format!(
                "{} ({} incremental), {}",
                text(&plan["files"]),
                text(&plan["incremental_files"]),
                size(&plan["bytes"])
            ),
        ));
        if plan["create"].as_array().is_some_and(|a| !a.is_empty()) {
            rows.push(("created", text(&plan["create"])));
        }
    }
    let files_and_bytes =
        |files: &Value, bytes: &Value| format!("{} files, {}", text(files), size(bytes));
    if d["state"] == "interrupted" {
        // Its progress is what it left staged.
        rows.push((
            "staged",
            files_and_bytes(&p["files_done"], &p["bytes_done"]),
        ));
    } else {
        rows.push((
            "downloaded",
            files_and_bytes(&p["files_uploaded"], &p["bytes_uploaded"]),
        ));
    }
    if p["files_reused"].as_u64().unwrap_or(0) > 0 {
        rows.push((
            "already staged",
            format!("{} files", text(&p["files_reused"])),
        ));
    }
    for n in d["nodes"].as_array().into_iter().flatten() {
        rows.push((
            "node",
            format!(
                "{} {}: {}, {} tables, {}{}",
                slot(&n["slot"]),
                text(&n["address"]),
                text(&n["state"]),
                n["imported_tables"].as_array().map_or(0, Vec::len),
                size(&n["progress"]["bytes_done"]),
                if n["error"].is_null() {
                    String::new()
                } else {
                    format!(" ({})", text(&n["error"]))
                }
            ),
        ));
    }
    rows.push(("duration", duration(&elapsed(d))));
    if !d["error"].is_null() {
        rows.push(("error", text(&d["error"])));
    }
    rows
}

fn print_list(list: &Value) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "restore",
        "state",
        "phase",
        "started (UTC)",
        "duration",
        "from",
        "tables",
        "size",
        "error",
    ]);
    for r in list.as_array().into_iter().flatten() {
        t.add_row(list_row(r));
    }
    println!("{t}");
}

/// `2 of 3 nodes done`.
fn nodes_done(nodes: &[Value]) -> String {
    let done = nodes.iter().filter(|n| n["state"] == "done").count();
    format!("{done} of {} nodes done", nodes.len())
}

fn list_row(r: &Value) -> [String; 9] {
    let imported = r["imported_tables"].as_array().map_or(0, Vec::len);
    let tables = match (r["nodes"].as_array(), r["plan"]["tables"].as_array()) {
        (Some(nodes), _) => nodes_done(nodes),
        (None, Some(all)) => format!("{imported}/{}", all.len()),
        (None, None) => imported.to_string(),
    };
    let bytes = if r["nodes"].is_array() {
        size(&r["progress"]["bytes_total"])
    } else if r["state"] == "interrupted" {
        format!("{} staged", size(&r["progress"]["bytes_done"]))
    } else {
        size(&r["plan"]["bytes"])
    };
    [
        if r["scope"] == "cluster" {
            format!("{} (cluster)", text(&r["id"]))
        } else {
            text(&r["id"])
        },
        text(&r["state"]),
        text(&r["phase"]),
        when(&r["started_at"]),
        duration(&elapsed(r)),
        point(&r["request"]),
        tables,
        bytes,
        shorten(&text(&r["error"]), 60),
    ]
}

fn print_detail(d: &Value) {
    let request = &d["request"];
    let mut rows = vec![
        ("restore", text(&d["id"])),
        ("state", text(&d["state"])),
        ("phase", text(&d["phase"])),
        ("node", text(&d["node"])),
        ("started", when(&d["started_at"])),
        ("finished", when(&d["finished_at"])),
        ("point", point(request)),
    ];
    if !request["source_cluster"].is_null() {
        rows.push(("source cluster", text(&request["source_cluster"])));
    }
    let selected = [&request["keyspaces"], &request["tables"]]
        .into_iter()
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        .map(text)
        .collect::<Vec<_>>();
    rows.push((
        "selection",
        if selected.is_empty() {
            "all keyspaces".into()
        } else {
            selected.join(", ")
        },
    ));
    if request["create_schema"] == true {
        rows.push(("create schema", "yes".into()));
    }
    rows.extend(summary_rows(d));
    if d["state"] == "running" {
        rows.push(("progress", progress_line(d)));
    }
    for e in d["progress"]["errors"].as_array().into_iter().flatten() {
        rows.push(("download error", text(e)));
    }
    rows.push(("job", text(&d["job"])));
    pairs(&rows);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("anchises").chain(args.iter().copied()))
    }

    fn restore(args: &[&str]) -> RestoreArgs {
        match parse(args).unwrap().command {
            Command::Restore(args) => args,
            other => panic!("not a restore command: {other:?}"),
        }
    }

    #[test]
    fn a_restore_starts_without_a_subcommand() {
        let r = restore(&["restore"]);
        assert!(r.command.is_none());
        let s = r.start;
        assert!(s.source_cluster.is_none() && s.backup.is_none() && s.at.is_none());
        assert!(s.keyspace.is_empty() && s.table.is_empty());
        assert!(!s.create_schema && !s.dry_run && !s.wait.no_wait);
        assert_eq!(
            request_body(&s),
            json!({"keyspaces": [], "tables": [], "create_schema": false, "dry_run": false})
        );

        let cli = parse(&[
            "restore",
            "--source-cluster",
            "orders",
            "--at",
            "2026-11-26T09:55Z",
            "-k",
            "shop",
            "--keyspace",
            "users",
            "-t",
            "billing.invoices",
            "--create-schema",
            "--dry-run",
            "--no-wait",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Restore(r) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(r.command.is_none());
        assert!(r.start.wait.no_wait);
        assert_eq!(
            request_body(&r.start),
            json!({"source_cluster": "orders", "at": "2026-11-26T09:55:00Z",
                "keyspaces": ["shop", "users"], "tables": ["billing.invoices"],
                "create_schema": true, "dry_run": true})
        );

        let r = restore(&["restore", "--backup", "20250102T030000Z-1a2b3c"]);
        assert_eq!(
            request_body(&r.start)["backup_id"],
            "20250102T030000Z-1a2b3c"
        );

        let r = restore(&["restore", "--cluster", "--node", "10.0.0.2", "-k", "shop"]);
        let body = request_body(&r.start);
        assert_eq!(body["scope"], "cluster");
        assert_eq!(body["nodes"], json!(["10.0.0.2"]));
        assert!(parse(&["restore", "--node", "10.0.0.2"]).is_err());
        assert!(parse(&["restore", "--cluster", "--full"]).is_err());
    }

    #[test]
    fn list_show_cancel_and_delete_are_subcommands() {
        assert!(matches!(
            restore(&["restore", "list"]).command,
            Some(RestoreCommand::List)
        ));
        assert!(matches!(
            restore(&["restore", "show", "r1a2b3c4d5e6f"]).command,
            Some(RestoreCommand::Show { id }) if id == "r1a2b3c4d5e6f"
        ));
        assert!(matches!(
            restore(&["restore", "cancel", "r1a2b3c4d5e6f", "--json"]).command,
            Some(RestoreCommand::Cancel { id }) if id == "r1a2b3c4d5e6f"
        ));
        assert!(matches!(
            restore(&["restore", "delete", "r1a2b3c4d5e6f"]).command,
            Some(RestoreCommand::Delete { id }) if id == "r1a2b3c4d5e6f"
        ));
        assert!(parse(&["restore", "delete", "../state"]).is_err());
        assert!(matches!(
            restore(&["restore", "resume", "r1a2b3c4d5e6f", "--no-wait"]).command,
            Some(RestoreCommand::Resume { id, wait }) if id == "r1a2b3c4d5e6f" && wait.no_wait
        ));
        assert!(parse(&["restore", "show"]).is_err());
        assert!(parse(&["restore", "show", "../jobs"]).is_err());
        assert!(parse(&["restore", "cancel", ""]).is_err());
        // Start options do not mix with a subcommand.
        assert!(parse(&["restore", "--dry-run", "list"]).is_err());
        assert!(parse(&["restore", "list", "--dry-run"]).is_err());
    }

    #[test]
    fn bad_options_are_refused_before_any_request() {
        assert!(parse(&[
            "restore",
            "--backup",
            "20250102T030000Z-1a2b3c",
            "--at",
            "2026-11-26T09:55Z"
        ])
        .is_err());
        assert!(parse(&["restore", "--backup", "x/../y"]).is_err());
        assert!(parse(&["restore", "--at", "yesterday"]).is_err());
        assert!(parse(&["restore", "--at", "2026-11-26T09:55"]).is_err());
        assert!(parse(&["restore", "-t", "orders"]).is_err());
        assert!(parse(&["restore", "-t", "shop."]).is_err());
        assert!(parse(&["restore", "-t", "a.b.c"]).is_err());
        assert!(parse(&["restore", "--bogus"]).is_err());
    }

    #[test]
    fn times_are_normalized_to_rfc3339_utc() {
        for (given, sent) in [
            ("2026-11-26T09:55:00Z", "2026-11-26T09:55:00Z"),
            ("2026-11-26T09:55Z", "2026-11-26T09:55:00Z"),
            ("2026-11-26t09:55z", "2026-11-26T09:55:00Z"),
            (" 2026-11-26T09:55Z ", "2026-11-26T09:55:00Z"),
            ("2026-11-26T10:55+01:00", "2026-11-26T09:55:00Z"),
            ("2026-11-26T10:55:30+01:00", "2026-11-26T09:55:30Z"),
            ("2026-11-26T04:25-05:30", "2026-11-26T09:55:00Z"),
            ("2026-11-26T09:55:00.250Z", "2026-11-26T09:55:00.25Z"),
        ] {
            assert_eq!(normalize_at(given).as_deref(), Ok(sent), "{given}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-11-26T09:55",
            "2026-11-26T09Z",
            "2026-11-26T25:00Z",
            "2026-02-30T09:55Z",
            "2026-11-26 09:55Z",
        ] {
            let e = normalize_at(bad).unwrap_err();
            assert!(e.contains("2026-11-26T09:55Z"), "{bad}: {e}");
        }
    }

    fn plan() -> Value {
        json!({
            "source": {"cluster": "orders", "dc": "dc1", "slot": 0},
            "target": {"cluster": "anchises", "dc": "dc1", "slot": 0},
            "base_backup": "20250102T030000Z-1a2b3c",
            "base_finished_at": "2025-01-02T03:01:03Z",
            "files": 300, "incremental_files": 12, "bytes": 3u64 << 30,
            "tables": ["shop.items", "shop.orders"], "create": [], "blockers": [],
        })
    }

    #[test]
    fn a_plan_says_what_would_happen_and_what_blocks_it() {
        let ok = plan();
        assert!(!blocked(&ok));
        assert_eq!(
            plan_rows(&ok),
            [
                ("source", "orders dc1/0".to_string()),
                ("target", "anchises dc1/0".into()),
                (
                    "base backup",
                    "20250102T030000Z-1a2b3c (finished 2025-01-02 03:01:03)".into()
                ),
                ("files", "300 (12 incremental), 3.0 GiB".into()),
                ("tables", "shop.items, shop.orders".into()),
                ("would create", "nothing".into()),
                ("blockers", "none: the restore can run".into()),
            ]
        );
        assert!(blocker_lines(&ok).is_empty());
        let mut bad = plan();
        bad["create"] = json!(["shop.orders"]);
        bad["blockers"] = json!([
            "the live schema of shop.items differs from the backup's; restore refused\n  live:   A\n  backup: B"
        ]);
        assert!(blocked(&bad));
        let rows = plan_rows(&bad);
        assert_eq!(rows[5], ("would create", "shop.orders".into()));
        assert_eq!(
            rows[6],
            ("blockers", "1: the restore would be refused".into())
        );
        assert_eq!(
            blocker_lines(&bad),
            ["  - the live schema of shop.items differs from the backup's; restore refused\n      live:   A\n      backup: B"]
        );
    }

    #[test]
    fn a_cluster_restore_shows_its_nodes() {
        let part = |slot: u32, state: &str| {
            json!({"slot": {"cluster": "orders", "dc": "dc1", "slot": slot},
                "address": format!("10.0.0.{slot}"), "state": state, "phase": state,
                "source": null, "progress": {"bytes_done": 1u64 << 20},
                "imported_tables": if state == "done" { json!(["shop.orders"]) } else { json!([]) },
                "error": null})
        };
        let view = json!({
            "id": "r1a2b3c4d5e6f", "scope": "cluster", "state": "running", "phase": "restore",
            "started_at": "2026-11-26T10:00:00Z", "finished_at": null, "job": "j",
            "request": {"keyspaces": ["shop"], "tables": [], "scope": "cluster"},
            "plan": null,
            "progress": {"files_total": 30, "files_done": 10, "bytes_total": 3u64 << 20,
                "bytes_done": 1u64 << 20, "rate_bytes_per_sec": 1048576.0, "eta_secs": 2.0,
                "errors": []},
            "imported_tables": [], "error": null,
            "nodes": [part(0, "done"), part(1, "running"), part(2, "pending")],
        });
        assert!(
            progress_line(&view).ends_with(" · 1/3 nodes done"),
            "{}",
            progress_line(&view)
        );
        let row = list_row(&view);
        assert_eq!(row[0], "r1a2b3c4d5e6f (cluster)");
        assert_eq!(row[6], "1 of 3 nodes done");
        assert_eq!(row[7], "3.0 MiB");
        let rows = summary_rows(&view);
        assert_eq!(rows[0], ("tables", "1 of 3 nodes done".to_string()));
        let nodes: Vec<&String> = rows
            .iter()
            .filter(|(k, _)| *k == "node")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            nodes,
            [
                "orders dc1/0 10.0.0.0: done, 1 tables, 1.0 MiB",
                "orders dc1/1 10.0.0.1: running, 0 tables, 1.0 MiB",
                "orders dc1/2 10.0.0.2: pending, 0 tables, 1.0 MiB",
            ]
        );
    }

    #[test]
    fn progress_summary_and_list_rows() {
        let mut view = json!({
            "id": "r1a2b3c4d5e6f", "state": "running", "phase": "stage", "node": "127.0.0.1",
            "started_at": "2026-11-26T10:00:00Z", "finished_at": null, "job": "j",
            "request": {"source_cluster": null, "backup_id": null, "at": "2026-11-26T09:55:00Z",
                "keyspaces": ["shop"], "tables": [], "create_schema": false, "dry_run": false},
            "plan": plan(),
            "progress": {"files_total": 300, "files_done": 120, "bytes_total": 3u64 << 30,
                "bytes_done": 1u64 << 30, "files_uploaded": 100, "bytes_uploaded": 1u64 << 29,
                "files_reused": 20, "bytes_reused": 0, "rate_bytes_per_sec": 47185920.0,
                "eta_secs": 45.4, "errors": []},
            "imported_tables": [], "error": null,
        });
        assert_eq!(
            progress_line(&view),
            "stage 1.0 GiB/3.0 GiB · 120/300 files · 45.0 MiB/s · ETA 45s"
        );
        view["phase"] = json!("import");
        view["imported_tables"] = json!(["shop.items"]);
        assert_eq!(
            progress_line(&view),
            "import · 1/2 tables imported · 120 files staged"
        );
        view["state"] = json!("done");
        view["phase"] = json!("done");
        view["imported_tables"] = json!(["shop.items", "shop.orders"]);
        view["finished_at"] = json!("2026-11-26T10:01:03Z");
        assert_eq!(
            summary_rows(&view),
            [
                (
                    "tables",
                    "2 of 2 imported: shop.items, shop.orders".to_string()
                ),
                ("from", "20250102T030000Z-1a2b3c of orders dc1/0".into()),
                ("files", "300 (12 incremental), 3.0 GiB".into()),
                ("downloaded", "100 files, 512.0 MiB".into()),
                ("already staged", "20 files".into()),
                ("duration", "1m 3s".into()),
            ]
        );
        assert_eq!(
            list_row(&view),
            [
                "r1a2b3c4d5e6f",
                "done",
                "done",
                "2026-11-26 10:00:00",
                "1m 3s",
                "at 2026-11-26 09:55:00",
                "2/2",
                "3.0 GiB",
                "-",
            ]
        );
        let failed = json!({"id": "r2", "state": "failed", "phase": "plan",
            "started_at": "2026-11-26T10:00:00Z", "finished_at": "2026-11-26T10:00:01.5Z",
            "request": {"backup_id": "b1"}, "plan": null, "progress": {},
            "imported_tables": [], "error": "x".repeat(100)});
        let row = list_row(&failed);
        assert_eq!(row[4], "1.5s");
        assert_eq!(row[5], "backup b1");
        assert_eq!(row[6], "0");
        assert_eq!(row[7], "-");
        assert_eq!(row[8].chars().count(), 60);
        assert_eq!(point(&json!({})), "latest backup");

        // Interrupted: its progress is what is staged; no duration.
        let interrupted = json!({"id": "r3", "state": "interrupted", "phase": "stage",
            "started_at": "2026-11-26T10:00:00Z", "finished_at": null, "job": null,
            "request": {"keyspaces": ["shop"]}, "plan": null,
            "progress": {"files_done": 7, "bytes_done": 3u64 << 20, "files_uploaded": 0,
                "bytes_uploaded": 0, "files_reused": 0},
            "imported_tables": [], "error": "the sidecar stopped during restore r3"});
        let row = list_row(&interrupted);
        assert_eq!(row[1], "interrupted");
        assert_eq!(row[4], "-");
        assert_eq!(row[7], "3.0 MiB staged");
        let rows = summary_rows(&interrupted);
        assert!(
            rows.contains(&("staged", "7 files, 3.0 MiB".into())),
            "{rows:?}"
        );
        assert!(rows.contains(&("duration", "-".into())), "{rows:?}");
        assert!(!rows.iter().any(|(k, _)| *k == "downloaded"), "{rows:?}");
    }
}
