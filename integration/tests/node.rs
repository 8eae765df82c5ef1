//! `anchises node` against real Cassandra 5.0 nodes on 127.0.0.x. Node-heavy: run
//! with `--test-threads=1` (ops-scripts/test.sh does). Each test has its own
//! addresses so a failed teardown of one cannot hold another's ports.

use std::time::Duration;

use anchises_integration::{balanced_tokens, cql, NodeSpec, TestNode};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn one_node_starts_takes_writes_flushes_sstables_and_stops_cleanly() {
    let mut node = TestNode::start(NodeSpec {
        initial_token: Some("0".into()),
        ..NodeSpec::new("single", 11)
    })
    .await;
    let status = node.wait_normal().await;
    assert_eq!(status["operation_mode"], "NORMAL");
    assert_eq!(status["tokens"], serde_json::json!(["0"]));
    assert_eq!(status["cassandra_version"], "5.0.9");
    assert_eq!(status["dc"], "dc1");
    assert_eq!(status["rack"], "rack1");
    assert_eq!(status["native_transport_running"], true);
    assert_eq!(status["live_nodes"], serde_json::json!(["127.0.0.11:7000"]));
    assert!(status["uptime_seconds"].as_u64().is_some());
    let jvm = node.cassandra_pid().expect("a cassandra pid file");
    assert_eq!(status["pid"], jvm);

    let session = cql(node.address).await;
    session
        .query_unpaged(
            "CREATE KEYSPACE it WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged("CREATE TABLE it.kv (k int PRIMARY KEY, v text)", ())
        .await
        .unwrap();
    for k in 0..100i32 {
        session
            .query_unpaged(
                "INSERT INTO it.kv (k, v) VALUES (?, ?)",
                (k, format!("value {k}")),
            )
            .await
            .unwrap();
    }
    let row = session
        .query_unpaged("SELECT v FROM it.kv WHERE k = 42", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(String,)>()
        .unwrap();
    assert_eq!(row.0, "value 42");

    // No SSTable before the flush: the writes sit in the memtable.
    let table_dir = || {
        anchises_backup::layout::table_dirs(&node.data_dir(), "it")
            .unwrap()
            .into_iter()
            .find(|t| t.table == "kv")
            .expect("it.kv has a directory")
    };
    let data_files = |dir: &std::path::Path| -> Vec<_> {
        anchises_backup::layout::sstable_components(dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("-Data.db"))
            .collect()
    };
    assert!(data_files(&table_dir().path).is_empty());
    let job = node.action("flush", Some(r#"{"keyspace": "it"}"#)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "node.flush");
    assert_eq!(data_files(&table_dir().path).len(), 1);
    // Incremental backups are on: the flush hard-linked the SSTable into backups/.
    assert!(table_dir().path.join("backups").read_dir().unwrap().count() > 0);

    // The schema over CQL, and the CLI over the API.
    let (status, schema) = node.get("/v1/node/schema").await;
    assert_eq!(status, 200, "{schema}");
    let statements: Vec<&str> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["create_statement"].as_str().unwrap())
        .collect();
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("CREATE TABLE it.kv")),
        "{statements:?}"
    );
    let cli = |args: &[&str]| {
        let (ok, out, _) = node.cli(args);
        (ok, out)
    };
    let (ok, out) = cli(&["--json", "status"]);
    assert!(ok, "{out}");
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["node"]["operation_mode"], "NORMAL");
    assert_eq!(parsed["process"]["state"], "running");
    let (ok, out) = cli(&["node", "flush", "--keyspace", "it", "--table", "kv"]);
    assert!(ok && out.contains("succeeded"), "{out}");
    let (ok, out) = cli(&["node", "flush", "--keyspace", "nosuch"]);
    assert!(!ok, "flush of a missing keyspace fails: {out}");
    let (ok, out) = cli(&["ring"]);
    assert!(
        ok && out.contains("127.0.0.11:7000") && out.contains("UP"),
        "{out}"
    );
    // Output into a pipe closed before anything is read from it
    // (`anchises --json schema | head -c0`): the command ends by SIGPIPE, as
    // Unix tools do, rather than by a panic on the write.
    let mut child = std::process::Command::new(anchises_integration::anchises_bin())
        .args(["--url", &node.api, "--json", "schema"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    const SIGPIPE: i32 = 13;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Drain: Cassandra keeps running, DRAINED, refusing writes.
    let job = node.action("drain", None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, status) = node.get("/v1/node").await;
    assert_eq!(status["operation_mode"], "DRAINED");

    drop(session);
    assert!(node.stop(), "the sidecar exits 0 after SIGTERM");
    assert!(
        TestNode::wait_gone(jvm, Duration::from_secs(5)),
        "no JVM is left after the sidecar stopped"
    );
    // It drained: the system log says so before the JVM exited.
    let log = std::fs::read_to_string(node.dir.join("logs/system.log")).unwrap();
    assert!(
        log.contains("DRAINED"),
        "cassandra was drained before it stopped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_with_balanced_tokens_form_a_ring() {
    let tokens = balanced_tokens(3);
    let seed = "127.0.0.21".to_string();
    let mut nodes = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        nodes.push(
            TestNode::start(NodeSpec {
                initial_token: Some(token.clone()),
                seeds: vec![seed.clone()],
                ..NodeSpec::new("ring", 21 + i as u8)
            })
            .await,
        );
    }
    for node in &nodes {
        node.wait_normal().await;
    }
    // Gossip needs a moment after NORMAL for every node to see every other as UP.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let ring = loop {
        let (status, ring) = nodes[2].get("/v1/node/ring").await;
        assert_eq!(status, 200, "{ring}");
        let endpoints = ring["endpoints"].as_array().unwrap();
        if endpoints.len() == 3
            && endpoints
                .iter()
                .all(|e| e["status"] == "UP" && e["state"] == "NORMAL")
        {
            break ring;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ring never settled: {ring}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let owners: Vec<(String, String)> = ring["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["token"].as_str().unwrap().to_string(),
                t["endpoint"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), format!("127.0.0.{}:7000", 21 + i)))
        .collect();
    assert_eq!(owners, expected);
    for e in ring["endpoints"].as_array().unwrap() {
        // Without a keyspace of RF > 1, ownership is the token range share: a third.
        let owns = e["ownership"].as_f64().unwrap();
        assert!((owns - 1.0 / 3.0).abs() < 0.01, "{e}");
        assert!(e["host_id"].is_string());
    }
    // Every node comes to see all three as live (gossip spreads in a few seconds).
    for node in &nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, status) = node.get("/v1/node").await;
            if status["live_nodes"].as_array().unwrap().len() == 3 {
                assert_eq!(status["unreachable_nodes"], serde_json::json!([]));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{status}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for node in &mut nodes {
        assert!(node.stop());
    }
}

async fn wait_process(node: &TestNode, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = node.process().await;
        if pred(&p) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {what}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_cassandra_is_restarted_within_the_hourly_bound_and_reported() {
    let mut node = TestNode::start(NodeSpec {
        initial_token: Some("0".into()),
        max_restarts_per_hour: 1,
        ..NodeSpec::new("restart", 31)
    })
    .await;
    node.wait_normal().await;
    let first = node.cassandra_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let p = wait_process(&node, "a restart", |p| {
        p["restarts"] == 1 && p["state"] == "running"
    })
    .await;
    assert!(p["last_exit"].as_str().unwrap().contains("SIGKILL"), "{p}");
    let status = node.wait_normal().await;
    assert_eq!(status["restarts"], 1);
    let second = node.cassandra_pid().unwrap();
    assert_ne!(first, second);
    let (_, metrics) = node.get_text("/metrics").await;
    assert!(
        metrics.contains("anchises_cassandra_restarts 1"),
        "{metrics}"
    );
    assert!(metrics.contains("anchises_cassandra_up 1"), "{metrics}");

    // A second death within the hour exceeds max_restarts_per_hour = 1: it stays down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let p = wait_process(&node, "giving up", |p| p["state"] == "failed").await;
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("max_restarts_per_hour"),
        "{p}"
    );
    let (status, body) = node.get("/v1/node").await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");

    // An explicit start brings it back.
    let job = node.action("start", None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["operation_mode"], "NORMAL");

    // A sidecar killed with SIGKILL takes its JVM with it, which runs
    // Cassandra's shutdown hook (flushes) before it exits, holding its ports
    // and writing to the data. A sidecar started again meanwhile waits for
    // that JVM instead of starting a second one on the same data.
    let third = node.cassandra_pid().unwrap();
    node.kill_sidecar();
    assert!(TestNode::is_alive(third), "the JVM drains before it exits");
    node.respawn(None).await;
    node.wait_normal().await;
    assert!(
        !TestNode::is_alive(third),
        "the killed sidecar's JVM is gone"
    );
    let fourth = node.cassandra_pid().unwrap();
    assert_ne!(third, fourth);
    let p = node.process().await;
    assert_eq!(p["restarts"], 0, "it started at the first try: {p}");
    assert!(p["last_exit"].is_null(), "{p}");
    let log = std::fs::read_to_string(node.dir.join("logs/system.log")).unwrap();
    assert!(
        !log.contains("Port already in use"),
        "no JVM started while the previous one held its ports"
    );

    // And once no sidecar is started again, the JVM is gone all the same.
    node.kill_sidecar();
    assert!(
        TestNode::wait_gone(fourth, Duration::from_secs(90)),
        "the JVM outlived its sidecar"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let node = TestNode::start(NodeSpec {
        auto_start: false,
        initial_token: Some("0".into()),
        ..NodeSpec::new("errors", 41)
    })
    .await;
    let expect = anchises_integration::assert_error;
    // Cassandra down.
    let (s, b) = node.get("/v1/node").await;
    expect(s, &b, 503, "not running");
    let (s, b) = node.get("/v1/node/ring").await;
    expect(s, &b, 503, "not running");
    let (s, _, b) = node.request("POST", "/v1/node/drain", None).await;
    expect(s, &b, 503, "not running");
    let (s, _, b) = node.request("POST", "/v1/node/stop", None).await;
    expect(s, &b, 409, "not running");
    // Routing.
    let (s, _, b) = node.request("GET", "/v1/nothing", None).await;
    expect(s, &b, 404, "no route");
    let (s, _, b) = node.request("DELETE", "/v1/node", None).await;
    expect(s, &b, 405, "not allowed");
    let (s, _, b) = node.request("GET", "/v1/node/start", None).await;
    expect(s, &b, 405, "not allowed");
    let (s, _, b) = node.request("POST", "/v1/node/reboot", None).await;
    expect(s, &b, 404, "unknown node action");
    // Bodies and ids.
    let (s, _, b) = node
        .request("POST", "/v1/node/flush", Some("{not json"))
        .await;
    expect(s, &b, 400, "bad request body");
    let (s, _, b) = node
        .request("POST", "/v1/node/flush", Some(r#"{"keyspace": 3}"#))
        .await;
    expect(s, &b, 400, "bad request body");
    let (s, _, b) = node
        .request("POST", "/v1/node/flush", Some(r#"{"keyspaces": "x"}"#))
        .await;
    expect(s, &b, 400, "unknown field");
    let (s, _, b) = node
        .request("POST", "/v1/node/start", Some(r#"{"keyspace": "x"}"#))
        .await;
    expect(s, &b, 400, "takes no keyspace");
    let (s, b) = node.get("/v1/jobs/not-a-uuid").await;
    expect(s, &b, 400, "not a UUID");
    let (s, b) = node
        .get("/v1/jobs/6a2f1c70-b1e0-11ee-9d3c-8b0e1f2a3b4c")
        .await;
    expect(s, &b, 404, "no job");
    // The API describes itself and counts what it served.
    let (s, doc) = node.get("/v1/openapi.json").await;
    assert_eq!(s, 200);
    for path in [
        "/v1/node",
        "/v1/node/ring",
        "/v1/node/{action}",
        "/v1/jobs/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let (s, metrics) = node.get_text("/metrics").await;
    assert_eq!(s, 200);
    assert!(
        metrics.contains(r#"route="/v1/node/{action}",status="404""#),
        "{metrics}"
    );
    assert!(metrics.contains("anchises_cassandra_up 0"), "{metrics}");

    // A conflicting action while one runs: 409 naming the running job.
    let (s, location, job) = node.request("POST", "/v1/node/start", None).await;
    assert_eq!(s, 202, "{job}");
    let location = location.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    let (s, _, b) = node.request("POST", "/v1/node/restart", None).await;
    expect(s, &b, 409, job["id"].as_str().unwrap());
    let done = node.wait_job(&location).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, _, b) = node.request("POST", "/v1/node/start", None).await;
    expect(s, &b, 409, "already running");
    // Restart: a new JVM, NORMAL again; not counted as an unasked restart.
    let before = node.cassandra_pid().unwrap();
    let job = node.action("restart", None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["operation_mode"], "NORMAL");
    let after = node.cassandra_pid().unwrap();
    assert_ne!(before, after);
    assert!(!TestNode::is_alive(before));
    assert_eq!(node.process().await["restarts"], 0);
    let (s, _, b) = node
        .request("POST", "/v1/node/flush", Some(r#"{"keyspace": "nosuch"}"#))
        .await;
    expect(s, &b, 404, "does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_classes_a_first_start_loads_are_mapped_from_an_archive_at_the_next() {
    let archives = anchises_integration::test_root().join("cds-43");
    let _ = std::fs::remove_dir_all(&archives);
    let node = TestNode::start(NodeSpec {
        initial_token: Some("0".into()),
        extra_toml: format!("class_archive_dir = \"{}\"\n", archives.display()),
        ..NodeSpec::new("cds", 43)
    })
    .await;
    node.wait_normal().await;
    let listed = |suffix: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&archives)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The first start records its classes; the archive follows once the
    // list stops growing.
    let first = node.cassandra_pid().unwrap();
    assert!(
        !listed(".classlist").is_empty(),
        "the first start records a class list"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let archive = loop {
        assert!(
            listed(".failed").is_empty(),
            "the archive could not be built"
        );
        if let (Some(archive), true) = (listed(".jsa").pop(), listed(".classlist").is_empty()) {
            break archive;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no class archive in {}",
            archives.display()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let maps = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let name = archive.display().to_string();
    assert!(
        !maps(first).contains(&name),
        "the first start had no archive to map"
    );
    // The first start's estimate of its memtable row overhead is recorded.
    let log = std::fs::read_to_string(node.dir.join("logs/system.log")).unwrap();
    let estimate: u32 = log
        .lines()
        .find_map(|l| {
            l.split_once("Estimated SkipListMemtable row overhead: ")
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .expect("the first start estimates its row overhead");
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.join("row-overhead.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["bytes"], estimate, "{recorded}");
    let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("row_overhead_size"),
        "the first start had no estimate to be given"
    );
    // The next start maps it (the JVM ignores an archive it finds unfit),
    // and is given the estimate instead of making it again.
    let job = node.action("restart", None).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let second = node.cassandra_pid().unwrap();
    assert_ne!(first, second);
    assert!(
        maps(second).contains(&name),
        "the restarted JVM did not map {name}"
    );
    let cmdline = std::fs::read(format!("/proc/{second}/cmdline")).unwrap();
    let option = format!("-Dcassandra.memtable.row_overhead_size={estimate}");
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == option.as_bytes()),
        "the restarted JVM was not given {option}"
    );

    assert!(
        listed(".classlist").is_empty(),
        "a start with an archive records nothing"
    );
    let (s, status) = node.get("/v1/node").await;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    let _ = std::fs::remove_dir_all(&archives);
}
