//! Online restores into a real Cassandra node: a dataset of many shapes
//! truncated and dropped, then restored exactly; a point in time with
//! incrementals; schema conflicts refused before anything is touched; a
//! restore from S3 (moto) cancelled and killed mid-download and mid-import.
//! Node-heavy: run with `--test-threads=1`.

use std::time::{Duration, Instant};

use anchises_backup::testing::MotoServer;
use anchises_integration::{assert_error, cql, insert_blobs, s3_store_toml, NodeSpec, TestNode};
use scylla::client::session::Session;
use scylla::statement::Consistency;
use serde_json::Value;

/// Every row of a table, as text, sorted.
async fn scan(session: &Session, table: &str) -> Vec<String> {
    let result = session
        .query_unpaged(format!("SELECT * FROM {table}"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut rows: Vec<String> = result
        .rows::<scylla::value::Row>()
        .unwrap()
        .map(|r| format!("{:?}", r.unwrap().columns))
        .collect();
    rows.sort();
    rows
}

async fn exec(session: &Session, statement: &str) {
    session
        .query_unpaged(statement, ())
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn job_of(node: &TestNode, started: &Value) -> Value {
    node.wait_job(&format!(
        "/v1/jobs/{}",
        started["job"]["id"].as_str().unwrap()
    ))
    .await
}

async fn backup(node: &TestNode, body: &str) -> String {
    let (status, _, started) = node.request("POST", "/v1/backups", Some(body)).await;
    assert_eq!(status, 202, "{started}");
    let job = job_of(node, &started).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    started["id"].as_str().unwrap().to_string()
}

/// Waits until the slot's incremental log holds a file of `table_prefix`
/// newer than `after`.
async fn wait_incremental(node: &TestNode, table_prefix: &str, seen: usize) -> usize {
    let store = anchises_backup::ObjectStore::filesystem(node.dir.join("backup-store")).unwrap();
    let catalog = anchises_backup::catalog::Catalog::new(store);
    let slot = anchises_backup::manifest::SlotRef {
        cluster: node.spec.cluster.clone(),
        dc: "dc1".into(),
        slot: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = catalog
            .incremental_log(&slot)
            .await
            .unwrap()
            .iter()
            .flat_map(|(_, e)| &e.files)
            .filter(|f| f.table_dir.starts_with(table_prefix) && f.name.ends_with("-TOC.txt"))
            .count();
        if n > seen {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no incremental upload of {table_prefix}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node whose backups run only when asked.
async fn start_node(name: &str, octet: u8) -> TestNode {
    TestNode::start(NodeSpec {
        extra_toml: "\n[backup]\nschedule = \"off\"\n".into(),
        ..NodeSpec::new(name, octet)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn online_restores_bring_back_tables_exactly_and_to_a_point_in_time() {
    let node = start_node("rs", 73).await;
    node.wait_normal().await;
    let session = cql(node.address).await;
    for s in [
        "CREATE KEYSPACE shop WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TYPE shop.address (street text, city text)",
        "CREATE TABLE shop.orders (customer int, seq int, note text STATIC, items list<text>, tags set<text>, attrs map<text, int>, ship frozen<address>, PRIMARY KEY (customer, seq)) WITH CLUSTERING ORDER BY (seq DESC)",
        "CREATE TABLE shop.visits (id int PRIMARY KEY, n counter)",
        "CREATE TABLE shop.sessions (id int PRIMARY KEY, v text, w int)",
    ] {
        exec(&session, s).await;
    }
    for c in 0..20 {
        exec(
            &session,
            &format!("UPDATE shop.orders SET note = 'customer {c}' WHERE customer = {c}"),
        )
        .await;
        for s in 0..10 {
            exec(
                &session,
                &format!(
                    "INSERT INTO shop.orders (customer, seq, items, tags, attrs, ship) VALUES ({c}, {s}, ['a{s}', 'b'], {{'t{}'}}, {{'k': {s}}}, {{street: '{s} Main', city: 'C{c}'}})",
                    s % 3
                ),
            )
            .await;
        }
        exec(
            &session,
            &format!("UPDATE shop.visits SET n = n + {} WHERE id = {c}", c + 1),
        )
        .await;
        exec(
            &session,
            &format!(
                "INSERT INTO shop.sessions (id, v, w) VALUES ({c}, 'v{c}', {c}) USING TTL 86400"
            ),
        )
        .await;
    }
    // Deletes: a row, a cell, a range of clustering rows.
    exec(&session, "DELETE FROM shop.sessions WHERE id = 3").await;
    exec(&session, "DELETE w FROM shop.sessions WHERE id = 4").await;
    exec(
        &session,
        "DELETE FROM shop.orders WHERE customer = 5 AND seq < 4",
    )
    .await;
    let tables = ["shop.orders", "shop.visits", "shop.sessions"];
    let mut before = Vec::new();
    for t in tables {
        before.push(scan(&session, t).await);
    }
    assert_eq!(before[0].len(), 196);
    assert_eq!(before[2].len(), 19);

    backup(&node, r#"{"keyspaces": ["shop"]}"#).await;
    exec(&session, "TRUNCATE shop.orders").await;
    exec(&session, "TRUNCATE shop.visits").await;
    exec(&session, "DROP TABLE shop.sessions").await;
    assert!(scan(&session, "shop.orders").await.is_empty());

    // The plan says what blocks it, and what it would create when asked.
    let (_, blockers) = dry_run(&node, r#"{"keyspaces": ["shop"]}"#).await;
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    assert!(
        blockers[0].contains("shop.sessions does not exist"),
        "{blockers:?}"
    );
    let (status, _, refused) = node
        .request("POST", "/v1/restores", Some(r#"{"keyspaces": ["shop"]}"#))
        .await;
    assert_eq!(status, 400, "{refused}");
    let (plan, blockers) =
        dry_run(&node, r#"{"keyspaces": ["shop"], "create_schema": true}"#).await;
    assert_eq!(blockers, Vec::<String>::new(), "{plan}");
    assert_eq!(
        plan["create"],
        serde_json::json!(["shop.sessions"]),
        "{plan}"
    );
    assert_eq!(
        plan["tables"],
        serde_json::json!(["shop.orders", "shop.sessions", "shop.visits"])
    );

    // The restore; a backup meanwhile is refused.
    let (status, location, started) = node
        .request(
            "POST",
            "/v1/restores",
            Some(r#"{"keyspaces": ["shop"], "create_schema": true}"#),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let (status, _, busy) = node.request("POST", "/v1/backups", Some("{}")).await;
    assert_eq!(status, 409, "a backup while the restore runs: {busy}");
    let job = job_of(&node, &started).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, shown) = node.get(&location.unwrap()).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["state"], "done", "{shown}");
    assert_eq!(
        shown["progress"]["bytes_done"], shown["progress"]["bytes_total"],
        "{shown}"
    );
    for (t, rows) in tables.iter().zip(&before) {
        assert_eq!(&scan(&session, t).await, rows, "{t} after the restore");
    }
    // The store is on the data's filesystem: each Data.db was hard-linked
    // from its object, not copied, and Cassandra imported that very file.
    let linked = job["result"]["linked"].as_u64().unwrap();
    assert!(linked >= 3, "one Data.db per table at least: {job}");
    assert_eq!(data_files_linked_to_store(&node, "shop"), linked, "{job}");

    // Point in time: rows written before T come back, rows after T do not.
    exec(
        &session,
        "CREATE TABLE shop.events (id int PRIMARY KEY, v text)",
    )
    .await;
    backup(&node, r#"{"keyspaces": ["shop"]}"#).await;
    for id in 0..50 {
        exec(
            &session,
            &format!("INSERT INTO shop.events (id, v) VALUES ({id}, 'before')"),
        )
        .await;
    }
    node.action(
        "flush",
        Some(r#"{"keyspace": "shop", "tables": ["events"]}"#),
    )
    .await;
    let seen = wait_incremental(&node, "events-", 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in 50..80 {
        exec(
            &session,
            &format!("INSERT INTO shop.events (id, v) VALUES ({id}, 'after')"),
        )
        .await;
    }
    exec(
        &session,
        "UPDATE shop.events SET v = 'changed after' WHERE id = 1",
    )
    .await;
    node.action(
        "flush",
        Some(r#"{"keyspace": "shop", "tables": ["events"]}"#),
    )
    .await;
    wait_incremental(&node, "events-", seen).await;
    exec(&session, "TRUNCATE shop.events").await;
    let at = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = serde_json::json!({"tables": ["shop.events"], "at": at}).to_string();
    let (status, _, started) = node.request("POST", "/v1/restores", Some(&body)).await;
    assert_eq!(status, 202, "{started}");
    let job = job_of(&node, &started).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let rows = scan(&session, "shop.events").await;
    assert_eq!(rows.len(), 50, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains("before")), "{rows:?}");

    // A table whose live schema changed since the backup is refused, before
    // anything is touched.
    exec(&session, "ALTER TABLE shop.orders ADD extra text").await;
    exec(
        &session,
        "INSERT INTO shop.orders (customer, seq, extra) VALUES (99, 1, 'live')",
    )
    .await;
    let (status, _, refused) = node
        .request(
            "POST",
            "/v1/restores",
            Some(r#"{"tables": ["shop.orders"]}"#),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("differs"),
        "{refused}"
    );
    assert_eq!(scan(&session, "shop.orders").await.len(), 197);

    // Bad requests.
    for (body, expect) in [
        (r#"{"at": "yesterday"}"#, "RFC 3339"),
        (r#"{"tables": ["system.local"]}"#, "keyspace.table"),
        (r#"{"keyspaces": ["system"]}"#, "system keyspace"),
        (
            r#"{"backup_id": "20200101T000000Z-000000"}"#,
            "has no backup",
        ),
        (r#"{"shards": 2}"#, "unknown field"),
    ] {
        let (status, _, e) = node.request("POST", "/v1/restores", Some(body)).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(expect), "{body}: {e}");
    }
    assert_eq!(node.get("/v1/restores/nope").await.0, 404);
    let (status, list) = node.get("/v1/restores").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

/// Polls `GET /v1/restores/{id}` until `pred` holds.
async fn wait_restore(
    node: &TestNode,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a restore (202) and returns its id.
async fn start_restore(node: &TestNode, request: &str) -> String {
    let (status, _, started) = node.request("POST", "/v1/restores", Some(request)).await;
    assert_eq!(status, 202, "{started}");
    started["id"].as_str().unwrap().to_string()
}

/// Cancels running restore `id` (202) and waits until it has ended as
/// cancelled; returns it.
async fn cancel_restore(node: &TestNode, id: &str) -> Value {
    let (status, _, body) = node
        .request("POST", &format!("/v1/restores/{id}/cancel"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    let r = wait_restore(node, id, "cancelled", |r| r["state"] != "running").await;
    assert_eq!(r["state"], "cancelled", "{r}");
    r
}

/// `anchises restore resume ID`: makes restore `id`'s request again, which
/// continues it to success.
fn resume_with_cli(node: &TestNode, id: &str) -> Value {
    let (ok, stdout, stderr) = node.cli(&["--json", "restore", "resume", id]);
    assert!(ok, "{stdout}{stderr}");
    let resumed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(resumed["id"], id, "the restore continues: {resumed}");
    assert_eq!(resumed["job"]["state"], "succeeded", "{resumed}");
    assert_eq!(resumed["restore"]["state"], "done", "{resumed}");
    let dir = node.dir.join(format!("anchises/restore/{id}"));
    assert!(
        !dir.exists(),
        "a finished restore leaves nothing: {}",
        dir.display()
    );
    resumed
}

/// The plan of a dry run of restore request `body` (which must not have
/// `dry_run` yet), and its blockers.
async fn dry_run(node: &TestNode, body: &str) -> (Value, Vec<String>) {
    let mut request: Value = serde_json::from_str(body).unwrap();
    request["dry_run"] = Value::Bool(true);
    let request = request.to_string();
    let (status, _, dry) = node.request("POST", "/v1/restores", Some(&request)).await;
    assert_eq!(status, 200, "{dry}");
    let blockers = dry["plan"]["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    (dry["plan"].clone(), blockers)
}

/// Makes `request` again after a crash: it continues restore `id` and succeeds.
async fn continue_after_crash(node: &TestNode, request: &str, id: &str) {
    let (status, _, started) = node.request("POST", "/v1/restores", Some(request)).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["id"], id, "the restore continues after the crash");
    let job = job_of(node, &started).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_or_killed_restore_continues_where_it_stopped() {
    // On S3 (moto), throttled so that the restore is still downloading when
    // it is stopped.
    let moto = MotoServer::start();
    let s3 = moto.create_bucket().await;
    let mut node = TestNode::start(NodeSpec {
        extra_toml: format!(
            "\n[backup]\nschedule = \"off\"\nrate_limit = \"5MiB\"\n{}",
            s3_store_toml(moto.endpoint(), &s3.bucket, "test", "test")
        ),
        ..NodeSpec::new("rs-kill", 74)
    })
    .await;
    node.wait_normal().await;
    let session = cql(node.address).await;
    exec(&session, "CREATE KEYSPACE bulk WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").await;
    exec(
        &session,
        "CREATE TABLE bulk.t (id int PRIMARY KEY, payload blob)",
    )
    .await;
    exec(&session, "CREATE TABLE bulk.u (id int PRIMARY KEY, v text)").await;
    insert_blobs(&session, "bulk.t", 24_000, 1024, Consistency::LocalQuorum).await;
    for i in 0..100 {
        exec(
            &session,
            &format!("INSERT INTO bulk.u (id, v) VALUES ({i}, 'u{i}')"),
        )
        .await;
    }
    let before_t = scan(&session, "bulk.t").await.len();
    let before_u = scan(&session, "bulk.u").await;
    assert_eq!(before_t, 24_000);
    let bulk_backup = backup(&node, r#"{"keyspaces": ["bulk"]}"#).await;
    exec(&session, "TRUNCATE bulk.t").await;
    exec(&session, "TRUNCATE bulk.u").await;
    drop(session);
    let request = r#"{"keyspaces": ["bulk"]}"#;

    // Cancel while downloading: the restore stops, nothing is imported.
    let id = start_restore(&node, request).await;
    // Once some file is whole: the rerun below keeps it.
    wait_restore(&node, &id, "downloading", |r| {
        r["progress"]["files_done"].as_u64() > Some(0)
            && r["progress"]["bytes_done"].as_u64() < r["progress"]["bytes_total"].as_u64()
    })
    .await;
    let (status, _, body) = node
        .request("DELETE", &format!("/v1/restores/{id}"), None)
        .await;
    assert_eq!(status, 409, "a running restore is not discarded: {body}");
    // Other requests meanwhile, the same one included, get 409 and leave no
    // restore state of their own.
    for other in [request, r#"{"tables": ["bulk.u"]}"#] {
        let (status, _, body) = node.request("POST", "/v1/restores", Some(other)).await;
        assert_error(status, &body, 409, "running");
    }
    let restore_dirs: Vec<String> = std::fs::read_dir(node.dir.join("anchises/restore"))
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(restore_dirs, vec![id.clone()]);
    let r = cancel_restore(&node, &id).await;
    assert_eq!(r["imported_tables"], serde_json::json!([]), "{r}");
    let (status, _, body) = node
        .request("POST", &format!("/v1/restores/{id}/cancel"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    // The same request continues it; kill the sidecar mid-download.
    let (status, _, started) = node.request("POST", "/v1/restores", Some(request)).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["id"], id.as_str(), "the same restore continues");
    let r = wait_restore(&node, &id, "downloading again", |r| {
        r["progress"]["files_reused"].as_u64() > Some(0)
            && r["progress"]["bytes_done"].as_u64() < r["progress"]["bytes_total"].as_u64()
    })
    .await;
    let staged_before_kill = r["progress"]["bytes_done"].as_u64().unwrap();
    let bytes_total = r["progress"]["bytes_total"].as_u64().unwrap();
    let jvm = node.cassandra_pid().unwrap();
    node.kill_sidecar();
    assert!(TestNode::wait_gone(jvm, Duration::from_secs(30)));
    // What the kill left staged: whole files under their names (a file being
    // fetched is a dot-named temp until it checked out). Files may have
    // finished between the last look at the progress and the kill.
    let staging = node.dir.join("anchises/restore").join(&id).join("staging");
    let whole_files: u64 = inodes_below(&staging)
        .into_iter()
        .filter(|(path, _)| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(path, _)| std::fs::metadata(path).unwrap().len())
        .sum();
    // Back with 1000 TiB to keep free on the data disk: more than any disk.
    let config = std::fs::read_to_string(node.dir.join("anchises.toml")).unwrap();
    let reserved = config.replacen(
        "[backup]\n",
        "[backup]\nrestore_min_free = \"1000TiB\"\n",
        1,
    );
    assert_ne!(reserved, config);
    node.respawn(Some(reserved)).await;
    // The new sidecar lists the restore as interrupted, with what is staged.
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert_eq!(r["state"], "interrupted", "{r}");
    assert_eq!(r["job"], Value::Null, "{r}");
    assert_eq!(
        r["request"]["keyspaces"],
        serde_json::json!(["bulk"]),
        "{r}"
    );
    let staged = r["progress"]["bytes_done"].as_u64().unwrap();
    assert!(
        staged > 0 && staged < bytes_total && staged == whole_files,
        "{staged} bytes staged of {bytes_total}, {whole_files} in whole files under {}: {r}",
        staging.display()
    );
    let (_, listed) = node.get("/v1/restores").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id.as_str()),
        "{listed}"
    );
    node.wait_normal().await;
    // A restore that would leave less than that free is refused before it
    // stages anything, saying so; the interrupted one stays as it was.
    let (_, blockers) = dry_run(&node, request).await;
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    assert!(
        blockers[0].contains("not enough free space"),
        "{blockers:?}"
    );
    assert!(
        blockers[0].contains("1000.0 TiB must stay free"),
        "{blockers:?}"
    );
    let (status, _, refused) = node.request("POST", "/v1/restores", Some(request)).await;
    assert_error(status, &refused, 400, "not enough free space");
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert_eq!(r["state"], "interrupted", "{r}");
    let jvm = node.cassandra_pid().unwrap();
    node.kill_sidecar();
    assert!(TestNode::wait_gone(jvm, Duration::from_secs(30)));
    node.respawn(Some(config)).await;
    node.wait_normal().await;
    let session = cql(node.address).await;
    assert!(
        scan(&session, "bulk.u").await.is_empty(),
        "nothing imported before the kill"
    );
    continue_after_crash(&node, request, &id).await;
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert!(
        r["progress"]["files_reused"].as_u64().unwrap() > 0,
        "files staged before the kill ({staged_before_kill} bytes) are not downloaded again: {r}"
    );
    assert_eq!(scan(&session, "bulk.t").await.len(), before_t);
    assert_eq!(scan(&session, "bulk.u").await, before_u);
    // Every SSTable in the table directories is whole (a TOC per Data.db).
    let out = std::process::Command::new("find")
        .arg(node.data_dir().join("bulk"))
        .args(["-maxdepth", "2", "-name", "*-Data.db"])
        .output()
        .unwrap();
    for data in String::from_utf8_lossy(&out.stdout).lines() {
        let toc = data.replace("-Data.db", "-TOC.txt");
        assert!(std::path::Path::new(&toc).exists(), "{data} has no TOC");
    }

    // Killed mid-import: the sidecar (and its Cassandra with it) is SIGKILLed
    // as soon as Cassandra has moved the first of t0's 24 staged SSTables into
    // the table. The rerun imports what was left, and no SSTable is imported
    // twice or in part.
    let tables: Vec<String> = (0..4).map(|t| format!("many.t{t}")).collect();
    let sstables_of = |table: &str| if table == "many.t0" { 24 } else { 3 };
    exec(&session, "CREATE KEYSPACE many WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").await;
    for table in &tables {
        exec(
            &session,
            &format!("CREATE TABLE {table} (id int PRIMARY KEY, v text) WITH compaction = {{'class': 'SizeTieredCompactionStrategy', 'enabled': 'false'}}"),
        )
        .await;
        for flush in 0..sstables_of(table) {
            for i in 0..50 {
                let id = flush * 50 + i;
                exec(
                    &session,
                    &format!("INSERT INTO {table} (id, v) VALUES ({id}, '{table} {id}')"),
                )
                .await;
            }
            let name = table.strip_prefix("many.").unwrap();
            let job = node
                .action(
                    "flush",
                    Some(&format!(r#"{{"keyspace": "many", "tables": ["{name}"]}}"#)),
                )
                .await;
            assert_eq!(job["state"], "succeeded", "{job}");
        }
    }
    let live_sstables = |node: &TestNode| -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for dir in std::fs::read_dir(node.data_dir().join("many"))
            .unwrap()
            .flatten()
        {
            let table = dir
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .unwrap()
                .to_string();
            let n = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with("-Data.db"))
                .count();
            *counts.entry(table).or_default() += n;
        }
        counts
    };
    let before_counts = live_sstables(&node);
    let expected: std::collections::BTreeMap<String, usize> = tables
        .iter()
        .map(|t| (t.strip_prefix("many.").unwrap().to_string(), sstables_of(t)))
        .collect();
    assert_eq!(before_counts, expected);
    let mut before = Vec::new();
    for table in &tables {
        before.push(scan(&session, table).await);
    }
    let many_backup = backup(&node, r#"{"keyspaces": ["many"]}"#).await;
    for table in &tables {
        exec(&session, &format!("TRUNCATE {table}")).await;
    }
    drop(session);
    let request = r#"{"keyspaces": ["many"]}"#;
    let id = start_restore(&node, request).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
        if r["phase"] == "import" {
            break;
        }
        assert_eq!(r["state"], "running", "{r}");
        assert!(Instant::now() < deadline, "no import phase: {r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let staged_t0 = std::fs::read_dir(node.dir.join(format!("anchises/restore/{id}/staging/many")))
        .unwrap()
        .flatten()
        .find(|d| d.file_name().to_string_lossy().starts_with("t0-"))
        .unwrap()
        .path();
    let staged_files =
        |dir: &std::path::Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let all = staged_files(&staged_t0);
    assert!(all >= 24 * 5, "t0's SSTables are staged: {all} files");
    while staged_files(&staged_t0) >= all {
        assert!(
            Instant::now() < deadline,
            "Cassandra never moved a staged file"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let jvm = node.cassandra_pid().unwrap();
    node.kill_sidecar();
    let left = staged_files(&staged_t0);
    println!("killed with {left} of t0's {all} staged files not yet moved");
    assert!(TestNode::wait_gone(jvm, Duration::from_secs(30)));
    node.respawn(None).await;
    node.wait_normal().await;
    // A newer backup (of the whole node, so also of the half-imported
    // tables) does not change what the interrupted restore continues from,
    // although its request names none.
    let newer = backup(&node, "{}").await;
    assert_ne!(newer, many_backup);
    resume_with_cli(&node, &id);
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert_eq!(r["plan"]["base_backup"], many_backup.as_str(), "{r}");
    let (ok, _, stderr) = node.cli(&["restore", "resume", &id]);
    assert!(!ok && stderr.contains("is done"), "{stderr}");
    let session = cql(node.address).await;
    for (table, rows) in tables.iter().zip(&before) {
        assert_eq!(&scan(&session, table).await, rows, "{table}");
    }
    assert_eq!(
        live_sstables(&node),
        before_counts,
        "each SSTable imported once"
    );
    // Every SSTable in the tables is whole: each component its TOC names is there.
    let out = std::process::Command::new("find")
        .arg(node.data_dir().join("many"))
        .args(["-maxdepth", "2", "-name", "*-TOC.txt"])
        .output()
        .unwrap();
    let tocs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(tocs.len(), 24 + 3 * 3, "{tocs:?}");
    for toc in tocs {
        for component in std::fs::read_to_string(&toc).unwrap().lines() {
            let file = toc.replace("TOC.txt", component.trim());
            assert!(
                std::path::Path::new(&file).exists(),
                "{toc} names {component}, which is missing"
            );
        }
    }

    // Deleting a cancelled restore removes what it staged; the same request
    // then starts afresh. A finished one is forgotten.
    let (status, _, body) = node
        .request("DELETE", &format!("/v1/restores/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["files"], 0,
        "a finished restore has nothing staged: {body}"
    );
    let (status, _) = node.get(&format!("/v1/restores/{id}")).await;
    assert_eq!(status, 404);
    let request = format!(r#"{{"backup_id": "{bulk_backup}", "tables": ["bulk.t"]}}"#);
    let request = request.as_str();
    let id = start_restore(&node, request).await;
    wait_restore(&node, &id, "downloading", |r| {
        r["progress"]["files_done"].as_u64() > Some(1)
    })
    .await;
    cancel_restore(&node, &id).await;
    let dir = node.dir.join(format!("anchises/restore/{id}"));
    let on_disk = std::fs::read_dir(dir.join("staging/bulk"))
        .unwrap()
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()).unwrap().flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
        .map(|f| f.metadata().unwrap().len())
        .collect::<Vec<_>>();
    assert!(!on_disk.is_empty(), "files are staged");
    let (status, _, body) = node
        .request("DELETE", &format!("/v1/restores/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["files"], on_disk.len(), "{body}");
    assert_eq!(body["bytes"], on_disk.iter().sum::<u64>(), "{body}");
    assert!(!dir.exists(), "{} is removed", dir.display());
    for (method, path) in [
        ("GET", format!("/v1/restores/{id}")),
        ("DELETE", format!("/v1/restores/{id}")),
        ("DELETE", "/v1/restores/..%2Fstate".to_string()),
    ] {
        let (status, _, body) = node.request(method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let again = start_restore(&node, request).await;
    assert_ne!(again, id, "a discarded restore is not continued");
    let r = wait_restore(&node, &again, "downloading", |r| {
        r["progress"]["files_done"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(r["progress"]["files_reused"], 0, "{r}");
    cancel_restore(&node, &again).await;
    let (_, doc) = node.get("/v1/openapi.json").await;
    assert!(
        doc["paths"]["/v1/restores/{id}"]["delete"].is_object(),
        "{}",
        doc["paths"]["/v1/restores/{id}"]
    );
}

/// Writes 10 rows into `kept.t`, backs the whole node up, and writes 10 more;
/// returns all 20 rows.
async fn back_up_then_write_more(node: &TestNode) -> Vec<String> {
    node.wait_normal().await;
    let session = cql(node.address).await;
    exec(&session, "CREATE KEYSPACE kept WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").await;
    exec(&session, "CREATE TABLE kept.t (id int PRIMARY KEY, v text)").await;
    for i in 0..10 {
        exec(
            &session,
            &format!("INSERT INTO kept.t (id, v) VALUES ({i}, 'backed up')"),
        )
        .await;
    }
    backup(node, "{}").await;
    for i in 10..20 {
        exec(
            &session,
            &format!("INSERT INTO kept.t (id, v) VALUES ({i}, 'after')"),
        )
        .await;
    }
    let rows = scan(&session, "kept.t").await;
    assert_eq!(rows.len(), 20);
    rows
}

/// A full-node restore whose sidecar is killed (its Cassandra with it) while
/// the restored node starts: the next sidecar lists the restore as
/// interrupted, naming where the node's previous data is; it does not start
/// Cassandra on the data directory the restore left (not at its start, not
/// when asked), and says why; DELETE refuses to remove the previous data;
/// `restore resume` finishes the restore (NORMAL on the backup's data, the
/// files it had laid out not downloaded again, nothing of the interrupted
/// run's live directories kept) and only then removes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_restore_killed_while_starting_keeps_the_previous_data_until_resumed() {
    let mut node = start_node("rs-swap", 76).await;
    back_up_then_write_more(&node).await;
    let old_jvm = node.cassandra_pid().unwrap();
    let id = start_restore(&node, r#"{"mode": "full"}"#).await;
    wait_restore(&node, &id, "starting", |r| r["phase"] == "start").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored_jvm = loop {
        match node.cassandra_pid() {
            Some(pid) if pid != old_jvm && TestNode::is_alive(pid) => break pid,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the restored node's JVM never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    node.kill_sidecar();
    assert!(TestNode::wait_gone(restored_jvm, Duration::from_secs(30)));
    let aside = node.dir.join(format!("anchises/restore/{id}/before"));
    assert!(
        aside.join("data/kept").is_dir(),
        "the previous data is aside"
    );
    // Stands for whatever a node started on the restore's layout would write.
    let stray = node.data_dir().join("kept/left-by-the-interrupted-run");
    std::fs::write(&stray, "not the backup's").unwrap();

    node.respawn(None).await;
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert_eq!(r["state"], "interrupted", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains(&aside.display().to_string()), "{error}");
    // supervisor.auto_start is on, yet nothing starts Cassandra here.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let process = node.process().await;
        assert_eq!(process["state"], "stopped", "{process}");
        let jvm = node.cassandra_pid().filter(|pid| TestNode::is_alive(*pid));
        assert_eq!(jvm, None, "a JVM runs on the half-restored data");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = node.get("/v1/node").await;
    assert_eq!(status, 503);
    let log = std::fs::read_to_string(node.dir.join("sidecar.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("not starting cassandra") && l.contains(&id)),
        "the sidecar says why it does not start cassandra:\n{}",
        node.log_tail()
    );
    for action in ["start", "restart"] {
        let (status, _, body) = node
            .request("POST", &format!("/v1/node/{action}"), None)
            .await;
        assert_error(status, &body, 409, &format!("anchises restore resume {id}"));
        assert_error(status, &body, 409, &aside.display().to_string());
    }
    let (status, _, body) = node
        .request("DELETE", &format!("/v1/restores/{id}"), None)
        .await;
    assert_error(status, &body, 409, "previous data");
    assert!(
        aside.join("data/kept").is_dir(),
        "the previous data is kept"
    );

    let resumed = resume_with_cli(&node, &id);
    assert!(!aside.exists(), "removed once the restored node is healthy");
    // How long each phase took, and how long the node was down.
    let result = &resumed["job"]["result"];
    let seconds = |phase: &str| result["phase_seconds"][phase].as_f64().unwrap_or(-1.0);
    for phase in ["stage", "stop", "swap", "start", "verify"] {
        assert!(seconds(phase) >= 0.0, "{phase}: {result}");
    }
    let down = result["down_seconds"].as_f64().unwrap();
    assert!(
        seconds("start") > 1.0
            && (down - (seconds("stop") + seconds("swap") + seconds("start"))).abs() < 1e-3,
        "{result}"
    );
    assert!(
        !stray.exists(),
        "the backup is not laid out over what was live"
    );
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert!(
        r["progress"]["files_reused"].as_u64().unwrap() > 0,
        "the files laid out before the kill are not downloaded again: {r}"
    );
    let session = cql(node.address).await;
    let rows = scan(&session, "kept.t").await;
    assert_eq!(rows.len(), 10, "the backup's rows: {rows:?}");
    assert!(rows.iter().all(|r| r.contains("backed up")), "{rows:?}");
}

/// Every file below `dir` with its (device, inode).
fn inodes_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => found.extend(inodes_below(&e.path())),
            Ok(m) => found.push((e.path(), (m.dev(), m.ino()))),
            Err(_) => {}
        }
    }
    found
}

/// How many live `*-Data.db` files of `keyspace` (not snapshots or
/// incremental links) are the very file of an object in the node's
/// filesystem store.
fn data_files_linked_to_store(node: &TestNode, keyspace: &str) -> u64 {
    let store: std::collections::HashSet<_> = inodes_below(&node.dir.join("backup-store"))
        .into_iter()
        .map(|(_, inode)| inode)
        .collect();
    assert!(!store.is_empty(), "the node's store has objects");
    inodes_below(&node.data_dir().join(keyspace))
        .into_iter()
        .filter(|(path, inode)| {
            let p = path.to_string_lossy();
            p.ends_with("-Data.db")
                && !p.contains("/snapshots/")
                && !p.contains("/backups/")
                && store.contains(inode)
        })
        .count() as u64
}

/// How many files are below `dir` (none if it does not exist).
fn files_below(dir: &std::path::Path) -> usize {
    inodes_below(dir).len()
}

/// Polls restore `id` until it is no longer running (a rollback starts the
/// previous node again: minutes); returns it.
async fn wait_restore_ended(node: &TestNode, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
        if r["state"] != "running" {
            return r;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until full-node restore `id` has ended in `state`, and checks it
/// says `why` and that it rolled back, and that the previous node, rows
/// written after the backup (`before`) included, serves again.
async fn assert_rolled_back(
    node: &TestNode,
    id: &str,
    state: &str,
    before: &[String],
    why: &[&str],
) {
    let r = wait_restore_ended(node, id).await;
    assert_eq!(r["state"], state, "{r}");
    let error = r["error"].as_str().unwrap();
    for words in why
        .iter()
        .chain(&["rolled back to the previous data, which is running again"])
    {
        assert!(error.contains(words), "{error}");
    }
    let (_, status) = node.get("/v1/node").await;
    assert_eq!(status["ready"], true, "{status}");
    let session = cql(node.address).await;
    assert_eq!(scan(&session, "kept.t").await, before);
}

/// A full-node restore cancelled while the restored node starts rolls back:
/// the previous node (rows written after the backup included) runs again
/// before the restore ends, which says so, and the backup's files are kept,
/// so that `restore resume` does not download them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_restore_cancelled_while_starting_rolls_back_and_keeps_the_backup() {
    let node = start_node("rs-cancel", 77).await;
    let before = back_up_then_write_more(&node).await;
    let id = start_restore(&node, r#"{"mode": "full"}"#).await;
    wait_restore(&node, &id, "starting", |r| r["phase"] == "start").await;
    let (status, _, body) = node
        .request("POST", &format!("/v1/restores/{id}/cancel"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_rolled_back(&node, &id, "cancelled", &before, &["cancelled"]).await;
    let dir = node.dir.join(format!("anchises/restore/{id}"));
    assert!(
        files_below(&dir.join("staging")) + files_below(&dir.join("returned")) > 0,
        "the backup's files are kept in {}",
        dir.display()
    );

    resume_with_cli(&node, &id);
    let (_, r) = node.get(&format!("/v1/restores/{id}")).await;
    assert!(
        r["progress"]["files_reused"].as_u64().unwrap() > 0,
        "the backup's files are not downloaded again: {r}"
    );
    let session = cql(node.address).await;
    let rows = scan(&session, "kept.t").await;
    assert_eq!(rows.len(), 10, "the backup's rows: {rows:?}");
}

/// A full-node restore whose node does not come back rolls back: here the
/// restored Cassandra cannot bind its storage port (held by the test from the
/// moment the old JVM lets go of it until the rollback begins), so it exits
/// while starting. The restored files go, the previous data (rows written
/// after the backup included) comes back and runs again, and the restore
/// fails saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_restore_whose_node_does_not_start_rolls_back() {
    let node = start_node("rs-back", 75).await;
    let before = back_up_then_write_more(&node).await;
    let id = start_restore(&node, r#"{"mode": "full"}"#).await;
    wait_restore(&node, &id, "stopping", |r| {
        r["phase"] == "stop" || r["phase"] == "swap" || r["phase"] == "start"
    })
    .await;
    let storage: std::net::SocketAddr = format!("{}:7000", node.address).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let held = loop {
        if let Ok(l) = std::net::TcpListener::bind(storage) {
            break l;
        }
        assert!(Instant::now() < deadline, "the old JVM kept {storage}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let r = wait_restore(&node, &id, "rolling back", |r| {
        r["phase"] == "rollback" || r["state"] != "running"
    })
    .await;
    assert_eq!(r["phase"], "rollback", "{r}");
    drop(held);
    assert_rolled_back(
        &node,
        &id,
        "failed",
        &before,
        &["did not come up healthy", "cassandra exited while starting"],
    )
    .await;
    let aside = node.dir.join(format!("anchises/restore/{id}/before"));
    assert!(
        std::fs::read_dir(&aside).map_or(true, |mut e| e.next().is_none()),
        "the previous data went back: nothing is left in {}",
        aside.display()
    );
}
