//! Backups of a real Cassandra node: to S3 (moto) and to the filesystem store;
//! dedup, incrementals, verify, retention, a killed sidecar, a bad store.
//! Node-heavy: run with `--test-threads=1`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anchises_backup::catalog::Catalog;
use anchises_backup::manifest::{BackupId, SlotRef};
use anchises_backup::testing::MotoServer;
use anchises_backup::{ObjectKey, ObjectStore};
use anchises_integration::{find, s3_store_toml, NodeSpec, TestNode};
use futures::future::try_join_all;
use serde_json::Value;

/// Three tables of different shapes in keyspace `ks`, `rows` rows each with
/// ~1 KB of incompressible payload in `ks.events`.
async fn load(node: &TestNode, rows: i32) {
    let session = anchises_integration::cql(node.address).await;
    for stmt in [
        "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        "CREATE TABLE IF NOT EXISTS ks.events (id int, seq int, payload blob, PRIMARY KEY (id, seq)) WITH CLUSTERING ORDER BY (seq DESC)",
        "CREATE TABLE IF NOT EXISTS ks.users (id int PRIMARY KEY, name text, tags set<text>)",
        "CREATE TABLE IF NOT EXISTS ks.visits (id int PRIMARY KEY, n counter)",
    ] {
        session.query_unpaged(stmt, ()).await.unwrap();
    }
    let events = session
        .prepare("INSERT INTO ks.events (id, seq, payload) VALUES (?, ?, ?)")
        .await
        .unwrap();
    let users = session
        .prepare("INSERT INTO ks.users (id, name, tags) VALUES (?, ?, ?)")
        .await
        .unwrap();
    let visits = session
        .prepare("UPDATE ks.visits SET n = n + 1 WHERE id = ?")
        .await
        .unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(200) {
        let mut writes = Vec::new();
        for &i in chunk {
            let payload: Vec<u8> = (0..1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            writes.push(session.execute_unpaged(&events, (i % 100, i, payload)));
        }
        try_join_all(writes).await.unwrap();
        let mut small = Vec::new();
        for &i in chunk.iter().step_by(10) {
            let tags: HashSet<String> = [format!("t{}", i % 7)].into();
            small.push(session.execute_unpaged(&users, (i, format!("user {i}"), tags)));
        }
        try_join_all(small).await.unwrap();
        for &i in chunk.iter().step_by(50) {
            session.execute_unpaged(&visits, (i,)).await.unwrap();
        }
    }
}

/// The snapshot directories under the node's data directory whose tag
/// starts with `tag_prefix`.
fn snapshots_of(node: &TestNode, tag_prefix: &str) -> Vec<String> {
    let path = format!("*/snapshots/{tag_prefix}*");
    find(&node.data_dir(), &["-path", &path, "-prune"])
}

/// Starts a backup, expects 202, waits for its job; returns (id, job).
async fn back_up(node: &TestNode, body: &str) -> (String, Value) {
    let (status, _, started) = node.request("POST", "/v1/backups", Some(body)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let job = node
        .wait_job(&format!(
            "/v1/jobs/{}",
            started["job"]["id"].as_str().unwrap()
        ))
        .await;
    (id, job)
}

async fn run_job(node: &TestNode, method: &str, path: &str, body: Option<&str>) -> Value {
    let (status, _, started) = node.request(method, path, body).await;
    assert_eq!(status, 202, "{method} {path}: {started}");
    node.wait_job(&format!(
        "/v1/jobs/{}",
        started["job"]["id"].as_str().unwrap()
    ))
    .await
}

fn slot(cluster: &str) -> SlotRef {
    SlotRef {
        cluster: cluster.into(),
        dc: "dc1".into(),
        slot: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_backs_up_to_s3_dedups_picks_up_incrementals_verifies_and_purges() {
    let moto = MotoServer::start();
    let s3 = moto.create_bucket().await;
    let mut spec = NodeSpec::new("bk-s3", 71);
    spec.extra_toml = format!(
        "\n[backup]\nschedule = \"off\"\n{}part_size = \"5MiB\"\n",
        s3_store_toml(moto.endpoint(), &s3.bucket, "test", "test")
    );
    let node = TestNode::start(spec).await;
    node.wait_normal().await;
    load(&node, 3_000).await;
    let store = ObjectStore::s3(&s3).await.unwrap();
    let catalog = Catalog::new(store.clone());
    let slot = slot("bk-s3");

    // A whole-node backup (system keyspaces included); a second one at the
    // same time is refused.
    let (status, _, started) = node.request("POST", "/v1/backups", Some("{}")).await;
    assert_eq!(status, 202, "{started}");
    let (status, _, refused) = node
        .request("POST", "/v1/backups", Some(r#"{"keyspaces": ["ks"]}"#))
        .await;
    assert_eq!(status, 409, "{refused}");
    let full_id = started["id"].as_str().unwrap().to_string();
    let job = node
        .wait_job(&format!(
            "/v1/jobs/{}",
            started["job"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, shown) = node.get(&format!("/v1/backups/{full_id}")).await;
    assert_eq!(shown["state"], "done", "{shown}");
    // Incremental links written since the node started may already be in the
    // store (the watcher uploads them), so the first backup either uploads a
    // file or reuses it: together they are the whole node.
    let carried =
        shown["uploaded_bytes"].as_u64().unwrap() + shown["reused_bytes"].as_u64().unwrap();
    assert_eq!(carried, shown["bytes"].as_u64().unwrap(), "{shown}");
    assert!(carried > 2_000_000, "{shown}");
    assert_eq!(shown["manifest"]["cassandra_version"], "5.0.9", "{shown}");
    let manifest = catalog
        .manifest(&slot, &BackupId::parse(&full_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let tables: HashSet<(String, String)> = manifest
        .files
        .iter()
        .map(|f| {
            (
                f.keyspace.clone(),
                f.table_dir.split('-').next().unwrap().to_string(),
            )
        })
        .collect();
    for t in ["events", "users", "visits"] {
        assert!(
            tables.contains(&("ks".into(), t.into())),
            "ks.{t} missing: {tables:?}"
        );
    }
    assert!(
        tables.iter().any(|(ks, _)| ks == "system_schema"),
        "system keyspaces are backed up"
    );
    assert!(
        manifest.schema.contains("CREATE TABLE ks.events"),
        "{}",
        manifest.schema
    );
    assert!(
        !manifest.tokens.is_empty(),
        "the node's tokens are recorded"
    );
    // The snapshot was cleared.
    assert_eq!(snapshots_of(&node, "anchises-"), Vec::<String>::new());

    // Dedup: two backups of unchanged ks; the second uploads no byte.
    let (first_ks, job) = back_up(&node, r#"{"keyspaces": ["ks"]}"#).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (second_ks, job) = back_up(&node, r#"{"keyspaces": ["ks"]}"#).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["totals"]["uploaded_bytes"], 0, "{job}");
    assert!(
        job["result"]["totals"]["reused_bytes"].as_u64().unwrap() > 2_000_000,
        "{job}"
    );

    // Incremental: a flush's SSTable is uploaded within seconds (inotify; the
    // rescan is a minute away) and its backups/ link removed.
    let known: HashSet<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
    let session = anchises_integration::cql(node.address).await;
    session
        .query_unpaged(
            "INSERT INTO ks.users (id, name) VALUES (999999, 'late')",
            (),
        )
        .await
        .unwrap();
    let flushed = Instant::now();
    let job = node
        .action("flush", Some(r#"{"keyspace": "ks", "tables": ["users"]}"#))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let latency = loop {
        let log = catalog.incremental_log(&slot).await.unwrap();
        let new_users = log.iter().flat_map(|(_, e)| &e.files).any(|f| {
            f.keyspace == "ks" && f.table_dir.starts_with("users-") && !known.contains(&f.name)
        });
        if new_users {
            break flushed.elapsed();
        }
        assert!(
            flushed.elapsed() < Duration::from_secs(30),
            "no incremental upload after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "incremental upload {:.2} s after the flush",
        latency.as_secs_f64()
    );
    let links = std::process::Command::new("find")
        .arg(node.data_dir().join("ks"))
        .args(["-path", "*/backups/*", "-name", "*Data.db"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .all(|l| !l.contains("users-")),
        "uploaded links are removed: {}",
        String::from_utf8_lossy(&links.stdout)
    );

    // Verify: delete one object, corrupt another; a shallow check finds the
    // first, a deep one both.
    let second = catalog
        .manifest(&slot, &BackupId::parse(&second_ks).unwrap())
        .await
        .unwrap()
        .unwrap();
    let data = second
        .files
        .iter()
        .find(|f| f.name.ends_with("-Data.db") && f.table_dir.starts_with("events-"))
        .unwrap();
    let stats = second
        .files
        .iter()
        .find(|f| f.name.ends_with("-Statistics.db"))
        .unwrap();
    store
        .delete(&ObjectKey::new(data.key.clone()).unwrap())
        .await
        .unwrap();
    let stats_key = ObjectKey::new(stats.key.clone()).unwrap();
    let mut bytes = store.get(&stats_key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    store.put(&stats_key, bytes.into()).await.unwrap();
    let shallow = run_job(
        &node,
        "POST",
        &format!("/v1/backups/{second_ks}/verify"),
        None,
    )
    .await;
    assert_eq!(shallow["result"]["ok"], false, "{shallow}");
    assert_eq!(
        shallow["result"]["problems"].as_array().unwrap().len(),
        1,
        "{shallow}"
    );
    let deep = run_job(
        &node,
        "POST",
        &format!("/v1/backups/{second_ks}/verify"),
        Some(r#"{"deep": true}"#),
    )
    .await;
    let problems = deep["result"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{deep}");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains(&data.name)
                && p.as_str().unwrap().contains("missing")),
        "{deep}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains(&stats.name)
                && p.as_str().unwrap().contains("hash")),
        "{deep}"
    );

    // Metrics.
    let (_, metrics) = node.get_text("/metrics").await;
    let last = metrics
        .lines()
        .find(|l| l.starts_with("anchises_backup_last_success_timestamp_seconds "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        last.split(' ').nth(1).unwrap().parse::<i64>().unwrap() > 1_700_000_000,
        "{last}"
    );
    assert!(
        metrics.contains("anchises_backup_incremental_files_total"),
        "{metrics}"
    );

    // Retention: keep the newest only. Backups of one keyspace never make
    // the only full backup expire, and those newer than it add to it: a dry
    // run of `keep_last: 1` has nothing to delete.
    let dry_run = |body: &'static str| {
        let node = &node;
        async move {
            let (status, _, dry) = node.request("POST", "/v1/backups/purge", Some(body)).await;
            assert_eq!(status, 200, "{dry}");
            let ids = |list: &str| -> HashSet<String> {
                dry["plan"][list]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap().to_string())
                    .collect()
            };
            (ids("backups"), ids("kept"))
        }
    };
    let (doomed, kept) = dry_run(r#"{"dry_run": true, "keep_last": 1}"#).await;
    assert!(doomed.is_empty(), "{doomed:?}");
    assert_eq!(
        kept,
        HashSet::from([full_id.clone(), first_ks.clone(), second_ks.clone()])
    );
    // A newer full backup: now the three older ones go. The dry run deletes
    // nothing; the purge then leaves the newest.
    let (newest, job) = back_up(&node, "{}").await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (doomed, _) = dry_run(r#"{"dry_run": true, "keep_last": 1}"#).await;
    assert_eq!(
        doomed,
        HashSet::from([full_id.clone(), first_ks.clone(), second_ks.clone()])
    );
    assert_eq!(catalog.backup_ids(&slot).await.unwrap().len(), 4);
    let purge = run_job(
        &node,
        "POST",
        "/v1/backups/purge",
        Some(r#"{"keep_last": 1}"#),
    )
    .await;
    assert_eq!(purge["state"], "succeeded", "{purge}");
    assert_eq!(
        catalog.backup_ids(&slot).await.unwrap(),
        vec![BackupId::parse(&newest).unwrap()]
    );
    let (_, list) = node.get("/v1/backups").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![newest.as_str()], "{list}");
    // Unknown and malformed ids.
    assert_eq!(node.get("/v1/backups/20200101T000000Z-000000").await.0, 404);
    assert_eq!(node.get("/v1/backups/..%2Fx").await.0, 400);
    let (status, _, body) = node
        .request("POST", "/v1/backups", Some(r#"{"scope": "galaxy"}"#))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sidecar_resumes_its_backup_and_a_bad_store_fails_clearly() {
    let mut spec = NodeSpec::new("bk-crash", 72);
    // Throttled so the backup is still running when the sidecar is killed.
    spec.extra_toml =
        "\n[backup]\nschedule = \"off\"\nincremental = false\nrate_limit = \"6MiB\"\nconcurrency = 2\n"
            .into();
    let mut node = TestNode::start(spec.clone()).await;
    node.wait_normal().await;
    load(&node, 30_000).await;
    let job = node.action("flush", None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let store = ObjectStore::filesystem(node.dir.join("backup-store")).unwrap();
    let catalog = Catalog::new(store.clone());
    let slot = slot("bk-crash");

    let (status, _, started) = node
        .request("POST", "/v1/backups", Some(r#"{"keyspaces": ["ks"]}"#))
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done_before_kill = loop {
        let (_, b) = node.get(&format!("/v1/backups/{id}")).await;
        let p = &b["progress"];
        let done = p["files_uploaded"].as_u64().unwrap_or(0);
        if done >= 2 && p["bytes_done"].as_u64() < p["bytes_total"].as_u64() {
            break done;
        }
        assert_eq!(
            b["state"], "running",
            "the backup ended before the kill: {b}"
        );
        assert!(Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let jvm = node.cassandra_pid().unwrap();
    node.kill_sidecar();
    assert!(
        TestNode::wait_gone(jvm, Duration::from_secs(30)),
        "the JVM follows its sidecar"
    );
    assert!(
        catalog.backup_ids(&slot).await.unwrap().is_empty(),
        "no manifest after the kill"
    );
    let stored_before = store.list(&slot.sstable_prefix()).await.unwrap().len();
    assert!(
        stored_before >= done_before_kill as usize,
        "{stored_before} objects"
    );

    node.respawn(None).await;
    node.wait_normal().await;

    // Two more kills at random moments of the backups that continue it: each
    // backup that did finish verifies deep (no manifest names a missing or
    // wrong object).
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 1..=2 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(100 + (seed >> 33) % 1500);
        let (status, _, started) = node
            .request("POST", "/v1/backups", Some(r#"{"keyspaces": ["ks"]}"#))
            .await;
        assert_eq!(status, 202, "{started}");
        tokio::time::sleep(delay).await;
        let (_, b) = node
            .get(&format!("/v1/backups/{}", started["id"].as_str().unwrap()))
            .await;
        println!(
            "kill {round}: {} ms after the request, backup {} {}",
            delay.as_millis(),
            b["state"],
            b["progress"]
        );
        let jvm = node.cassandra_pid().unwrap();
        node.kill_sidecar();
        assert!(TestNode::wait_gone(jvm, Duration::from_secs(30)));
        node.respawn(None).await;
        node.wait_normal().await;
        let (status, list) = node.get("/v1/backups").await;
        assert_eq!(status, 200, "{list}");
        for b in list
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "done")
        {
            let verify = run_job(
                &node,
                "POST",
                &format!("/v1/backups/{}/verify", b["id"].as_str().unwrap()),
                Some(r#"{"deep": true}"#),
            )
            .await;
            assert_eq!(verify["result"]["ok"], true, "after kill {round}: {verify}");
        }
    }

    // The next backup reuses what the killed ones finished.
    let (second, job) = back_up(&node, r#"{"keyspaces": ["ks"]}"#).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let totals = &job["result"]["totals"];
    assert!(
        totals["reused_files"].as_u64().unwrap() >= done_before_kill,
        "files finished before the kill are reused: {totals}"
    );
    let verify = run_job(
        &node,
        "POST",
        &format!("/v1/backups/{second}/verify"),
        Some(r#"{"deep": true}"#),
    )
    .await;
    assert_eq!(verify["result"]["ok"], true, "{verify}");
    // The killed backups' snapshots (the first one's at least was taken) are
    // cleared by the next backup, which also cleared its own.
    assert_eq!(snapshots_of(&node, "anchises-"), Vec::<String>::new());

    // A bucket that does not exist: the job fails with a clear error, the
    // failure is listed, and the snapshot is cleared.
    let moto = MotoServer::start();
    node.stop();
    let toml = format!(
        "{}\n[backup]\nschedule = \"off\"\nincremental = false\n{}",
        NodeSpec::new("bk-crash", 72).toml(&node.dir),
        s3_store_toml(moto.endpoint(), "no-such-bucket", "test", "test")
    );
    node.respawn(Some(toml)).await;
    node.wait_normal().await;
    let (failed_id, job) = back_up(&node, r#"{"keyspaces": ["ks"]}"#).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("bucket"), "{error}");
    let (status, shown) = node.get(&format!("/v1/backups/{failed_id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["state"], "failed", "{shown}");
    assert_eq!(shown["error"], error, "{shown}");
    // Listing needs the store: a clear 502 naming it.
    let (status, list) = node.get("/v1/backups").await;
    assert_eq!(status, 502, "{list}");
    assert!(
        list["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("bucket"),
        "{list}"
    );
    assert_eq!(
        snapshots_of(&node, &format!("anchises-{failed_id}")),
        Vec::<String>::new()
    );
    let (_, metrics) = node.get_text("/metrics").await;
    assert!(
        metrics.contains("anchises_backup_failures_total 1"),
        "{metrics}"
    );

    // Credentials the store refuses: the same clear failure, naming them.
    let bucket = moto.create_bucket().await.bucket;
    moto.enforce_auth();
    node.kill_sidecar();
    let toml = format!(
        "{}\n[backup]\nschedule = \"off\"\nincremental = false\n{}",
        NodeSpec::new("bk-crash", 72).toml(&node.dir),
        s3_store_toml(moto.endpoint(), &bucket, "AKIAWRONG", "wrong")
    );
    node.respawn(Some(toml)).await;
    node.wait_normal().await;
    let (refused_id, job) = back_up(&node, r#"{"keyspaces": ["ks"]}"#).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("credentials"), "{error}");
    let (status, list) = node.get("/v1/backups").await;
    assert_eq!(status, 502, "{list}");
    assert!(
        list["error"].as_str().unwrap().contains("credentials"),
        "{list}"
    );
    assert_eq!(
        snapshots_of(&node, &format!("anchises-{refused_id}")),
        Vec::<String>::new(),
        "the snapshot is cleared"
    );
    drop(moto);

    // The schedule: back on the filesystem store with a backup every 10 s,
    // a new finished backup appears without any request.
    node.kill_sidecar();
    let toml = format!(
        "{}\n[backup]\nschedule = \"*/10 * * * * *\"\nincremental = false\n",
        NodeSpec::new("bk-crash", 72).toml(&node.dir)
    );
    node.respawn(Some(toml)).await;
    node.wait_normal().await;
    let ids = |list: &Value| -> HashSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, list) = node.get("/v1/backups").await;
    assert_eq!(status, 200, "{list}");
    let before = ids(&list);
    let waited = Instant::now();
    let scheduled = loop {
        let (_, list) = node.get("/v1/backups").await;
        let new: Vec<Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| !before.contains(b["id"].as_str().unwrap()) && b["state"] == "done")
            .cloned()
            .collect();
        if let Some(b) = new.first() {
            break b.clone();
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no scheduled backup after 60 s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "scheduled backup {} listed {:.1} s after the sidecar started",
        scheduled["id"],
        waited.elapsed().as_secs_f64()
    );
}
