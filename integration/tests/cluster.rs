//! `anchises control`: whole clusters from one request, against real Cassandra nodes
//! on 127.0.0.x. Node-heavy: run with `--test-threads=1`.

use std::time::Duration;

use anchises_integration::{cql, insert_blobs, poll_job, send_raw, TestControl, TestNode};
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn one_request_creates_a_three_node_cluster_with_the_computed_tokens() {
    let mut control = TestControl::start("create", 7981, 110).await;
    let (status, location, created) = control
        .request(
            "POST",
            "/v1/clusters",
            Some(r#"{"name": "orders", "nodes": 3}"#),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["cql"].as_array().unwrap().len(), 3);

    // Tokens: balanced over the ring, shifted by dc1's offset, as the spec says.
    let offset = anchises_topology::layout::derived_dc_offset("dc1") as i128;
    let expected: Vec<String> = anchises_integration::balanced_tokens(3)
        .iter()
        .map(|t| (t.parse::<i128>().unwrap() + offset).to_string())
        .collect();
    let spec_tokens: Vec<String> = created["cluster"]["dcs"][0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(spec_tokens, expected);
    let (status, view) = control.get("/v1/clusters/orders").await;
    assert_eq!(status, 200, "{view}");
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["slot"], i, "{n}");
        assert_eq!(n["tokens"], serde_json::json!([expected[i]]), "{n}");
        assert_eq!(n["ready"], true, "{n}");
        assert_eq!(n["operation_mode"], "NORMAL");
    }

    // Every node sees the whole ring UP and NORMAL with those tokens.
    let api = nodes[1]["api"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let ring: Value = http
            .get(format!("{api}/v1/node/ring"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tokens: Vec<&str> = ring["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        let all_up = ring["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "UP" && e["state"] == "NORMAL");
        if all_up && tokens.len() == 3 {
            assert_eq!(tokens, expected);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ring: {ring}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // RF 3 at QUORUM: written through one node, read through another.
    let first: std::net::IpAddr = nodes[0]["address"].as_str().unwrap().parse().unwrap();
    let third: std::net::IpAddr = nodes[2]["address"].as_str().unwrap().parse().unwrap();
    let writer = cql(first).await;
    create_keyspace(&writer, "shop", 3).await;
    writer
        .query_unpaged(
            "CREATE TABLE shop.orders (id int PRIMARY KEY, item text)",
            (),
        )
        .await
        .unwrap();
    let mut insert = Statement::new("INSERT INTO shop.orders (id, item) VALUES (?, ?)");
    insert.set_consistency(Consistency::Quorum);
    for id in 0..50i32 {
        writer
            .query_unpaged(insert.clone(), (id, format!("item {id}")))
            .await
            .unwrap();
    }
    let reader = cql(third).await;
    let mut count = Statement::new("SELECT count(*) FROM shop.orders");
    count.set_consistency(Consistency::Quorum);
    let (n,) = reader
        .query_unpaged(count, ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(i64,)>()
        .unwrap();
    assert_eq!(n, 50);
    drop((writer, reader));

    // A cluster backup asked of one node backs up all three under one id, and
    // the cluster index says so.
    let (started, job) = cluster_backup(&http, &api).await;
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["nodes"], 3, "{job}");
    let (status, _, shown) = send_raw(&http, &api, "GET", &format!("/v1/backups/{id}"), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["scope"], "cluster", "{shown}");
    assert_eq!(shown["state"], "done", "{shown}");
    let per_node = shown["nodes"].as_array().unwrap();
    assert_eq!(per_node.len(), 3, "{shown}");
    for n in per_node {
        assert_eq!(n["state"], "done", "{n}");
        assert!(n["totals"]["files"].as_u64().unwrap() > 0, "{n}");
    }
    // Every node's manifest is in the shared store (beside the coordinator),
    // with its own slot's tokens.
    let store = anchises_backup::ObjectStore::filesystem(control.dir.join("backups")).unwrap();
    let catalog = anchises_backup::catalog::Catalog::new(store);
    let backup_id = anchises_backup::manifest::BackupId::parse(&id).unwrap();
    for (slot, token) in expected.iter().enumerate() {
        let slot_ref = anchises_backup::manifest::SlotRef {
            cluster: "orders".into(),
            dc: "dc1".into(),
            slot: slot as u32,
        };
        let manifest = catalog
            .manifest(&slot_ref, &backup_id)
            .await
            .unwrap()
            .expect("a manifest per node");
        assert_eq!(manifest.tokens, vec![token.clone()]);
        assert!(
            manifest.files.iter().any(|f| f.keyspace == "shop"),
            "shop.orders is in slot {slot}'s backup"
        );
        assert!(
            manifest.schema.contains("CREATE TABLE shop.orders"),
            "{}",
            manifest.schema
        );
    }
    // The nodes' statuses went into the index and are gone from the store.
    assert_eq!(
        files_under(
            &control
                .dir
                .join(format!("backups/orders/backups/status/{id}"))
        ),
        Vec::<String>::new()
    );
    // A verify of the cluster backup checks every node's objects.
    let (status, _, verify) = send_raw(
        &http,
        &api,
        "POST",
        &format!("/v1/backups/{id}/verify"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{verify}");
    let verify_location = format!("/v1/jobs/{}", verify["job"]["id"].as_str().unwrap());
    let job = poll_job(&http, &api, &verify_location, Duration::from_secs(120)).await;
    assert_eq!(job["result"]["ok"], true, "{job}");

    // Full-node restore of the second node from that backup: its data is
    // replaced (system keyspaces included, so it keeps its host id and
    // tokens), it comes back NORMAL in the ring, and the rows are all there.
    let (_, _, status_before) = send_raw(&http, &api, "GET", "/v1/node", None).await;
    let marker = first_table_file(&catalog, &backup_id).await;
    let body = serde_json::json!({"mode": "full", "backup_id": id}).to_string();
    let (status, _, dry) = send_raw(
        &http,
        &api,
        "POST",
        "/v1/restores",
        Some(&serde_json::json!({"mode": "full", "backup_id": id, "dry_run": true}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["plan"]["blockers"], serde_json::json!([]), "{dry}");
    assert!(
        dry["plan"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "system.local"),
        "{dry}"
    );
    let system_log = control
        .dir
        .join("clusters/orders")
        .join(nodes[1]["node_id"].as_str().unwrap())
        .join("node/logs/system.log");
    let log_count = |needle: &str| {
        std::fs::read_to_string(&system_log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let (drains, announced) = (log_count("DRAINED"), log_count("Announcing shutdown"));
    let (status, _, started) = send_raw(&http, &api, "POST", "/v1/restores", Some(&body)).await;
    assert_eq!(status, 202, "{started}");
    let restore_location = format!("/v1/jobs/{}", started["job"]["id"].as_str().unwrap());
    let job = poll_job(&http, &api, &restore_location, Duration::from_secs(400)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // Stopped without a drain, its peers told by gossip.
    assert_eq!(log_count("DRAINED"), drains, "{}", system_log.display());
    assert_eq!(
        log_count("Announcing shutdown"),
        announced + 1,
        "{}",
        system_log.display()
    );
    let (_, _, status_after) = send_raw(&http, &api, "GET", "/v1/node", None).await;
    assert_eq!(status_after["ready"], true, "{status_after}");
    assert_eq!(status_after["host_id"], status_before["host_id"]);
    assert_eq!(status_after["tokens"], status_before["tokens"]);
    let second: std::net::IpAddr = nodes[1]["address"].as_str().unwrap().parse().unwrap();
    let node_dir = control
        .dir
        .join("clusters/orders")
        .join(nodes[1]["node_id"].as_str().unwrap())
        .join("node/data");
    let found = std::process::Command::new("find")
        .arg(&node_dir)
        .args(["-name", &marker])
        .output()
        .unwrap();
    assert!(
        !found.stdout.is_empty(),
        "{marker} is laid out under the restored node's data"
    );
    let n = count_at(second, "shop.orders", Consistency::All).await;
    assert_eq!(n, 50);

    // A cluster restore from one request: each node restores its own slot
    // (found by its tokens) while the cluster serves.
    truncate(first, "shop.orders").await;
    assert_eq!(count_at(third, "shop.orders", Consistency::All).await, 0);
    let restore = |body: Value| {
        let http = http.clone();
        let api = api.clone();
        async move { send_raw(&http, &api, "POST", "/v1/restores", Some(&body.to_string())).await }
    };
    let third_address = nodes[2]["address"].as_str().unwrap();
    let (status, _, dry) = restore(serde_json::json!({
        "scope": "cluster", "nodes": [third_address], "keyspaces": ["shop"], "dry_run": true
    }))
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        dry["plan"]["backup_id"],
        id.as_str(),
        "the newest complete cluster backup: {dry}"
    );
    assert_eq!(dry["plan"]["blockers"], serde_json::json!([]), "{dry}");
    let planned = dry["plan"]["nodes"].as_array().unwrap();
    assert_eq!(planned.len(), 1, "{dry}");
    assert_eq!(planned[0]["address"], third_address, "{dry}");
    assert_eq!(planned[0]["source"]["slot"], 2, "{dry}");
    assert_eq!(planned[0]["target"]["slot"], 2, "{dry}");
    for (body, expect) in [
        (
            serde_json::json!({"scope": "cluster", "nodes": ["127.0.0.250"], "keyspaces": ["shop"]}),
            "is not a node of cluster orders",
        ),
        (
            serde_json::json!({"scope": "cluster", "mode": "full"}),
            "one node at a time",
        ),
        (serde_json::json!({"nodes": [third_address]}), "scope"),
    ] {
        let (status, _, e) = restore(body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(expect), "{body}: {e}");
    }
    // Cancelled at once: the asking node ends it as cancelled, withdraws the
    // request from the store, and no node is left running a part of it.
    let started = cluster_restore(&http, &api, "shop").await;
    let cancelled_id = started["id"].as_str().unwrap().to_string();
    let job = cancel_restore(&http, &api, &started).await;
    assert_ne!(job["state"], "succeeded", "{job}");
    let (_, shown) = restore_view(&http, &api, &cancelled_id).await;
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert!(!control
        .dir
        .join(format!(
            "backups/orders/restores/requests/{cancelled_id}.json"
        ))
        .exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for n in nodes {
        let node_api = n["api"].as_str().unwrap();
        loop {
            let (status, part) = restore_view(&http, node_api, &cancelled_id).await;
            if status == 404 || part["state"] != "running" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{part}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let started = cluster_restore(&http, &api, "shop").await;
    let restore_id = started["id"].as_str().unwrap().to_string();
    let job = job_end(&http, &api, &started, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["nodes"], 3, "{job}");
    let (status, shown) = restore_view(&http, &api, &restore_id).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["scope"], "cluster", "{shown}");
    assert_eq!(shown["state"], "done", "{shown}");
    let parts = shown["nodes"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{shown}");
    let mut files = 0;
    for p in parts {
        assert_eq!(p["state"], "done", "{p}");
        assert_eq!(p["source"]["slot"], p["slot"]["slot"], "{p}");
        assert_eq!(
            p["imported_tables"],
            serde_json::json!(["shop.orders"]),
            "{p}"
        );
        files += p["progress"]["files_total"].as_u64().unwrap();
    }
    assert!(files > 0);
    assert_eq!(shown["progress"]["files_total"], files, "{shown}");
    assert_eq!(
        files_under(
            &control
                .dir
                .join(format!("backups/orders/restores/status/{restore_id}"))
        ),
        Vec::<String>::new(),
        "the nodes' statuses of a finished cluster restore are removed"
    );
    // Each node's own sidecar shows its part under the same id.
    let (status, part) = restore_view(&http, nodes[0]["api"].as_str().unwrap(), &restore_id).await;
    assert_eq!(status, 200, "{part}");
    assert_eq!(part["scope"], "node", "{part}");
    assert_eq!(part["state"], "done", "{part}");
    assert_eq!(count_at(third, "shop.orders", Consistency::All).await, 50);

    // The asking node's sidecar stops mid-restore (with the whole control
    // plane, which stops its nodes and starts them again): the restarted
    // sidecar coordinates the restore again, the nodes finish their parts, and
    // the request and the statuses are removed as usual.
    truncate(first, "shop.orders").await;
    let started = cluster_restore(&http, &api, "shop").await;
    let adopted_id = started["id"].as_str().unwrap().to_string();
    let request_file = control.dir.join(format!(
        "backups/orders/restores/requests/{adopted_id}.json"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !request_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no request in the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The restarted nodes move at most 1 MiB/s to and from the store, so that
    // the cancel further down finds their parts mid-download.
    for node_dir in std::fs::read_dir(control.dir.join("clusters/orders")).unwrap() {
        let toml = node_dir.unwrap().path().join("anchises.toml");
        if toml.is_file() {
            let mut config = std::fs::read_to_string(&toml).unwrap();
            config.push_str("\n[backup]\nrate_limit = \"1MiB\"\n");
            std::fs::write(&toml, config).unwrap();
        }
    }
    control.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(400);
    let shown = loop {
        let (status, shown) = restore_view(&http, &api, &adopted_id).await;
        if status == 200 && shown["scope"] == "cluster" && shown["state"] != "running" {
            break shown;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted sidecar does not show the cluster restore as ended: {status} {shown}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(shown["state"], "done", "{shown}");
    let parts = shown["nodes"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{shown}");
    assert!(parts.iter().all(|p| p["state"] == "done"), "{shown}");
    assert!(!request_file.exists(), "the request is removed");
    // Nor do finished parts leave anything on the nodes' disks.
    nothing_left_of(&control.dir, &adopted_id).await;
    assert_eq!(count_at(third, "shop.orders", Consistency::All).await, 50);

    // A cancel reaches parts that are already running: every node stops its
    // download, imports nothing, and reports its part cancelled.
    write_blobs(first, "bulk", 4000, 4096).await;
    let (_, job) = cluster_backup(&http, &api).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    truncate(first, "bulk.blobs").await;
    let started = cluster_restore(&http, &api, "bulk").await;
    let running_id = started["id"].as_str().unwrap().to_string();
    for n in nodes {
        wait_part(&http, n["api"].as_str().unwrap(), &running_id, |p| {
            p["state"] == "running" && p["phase"] == "stage"
        })
        .await;
    }
    let staging = part_dirs(&control.dir, &running_id);
    assert_eq!(staging.len(), 3);
    for dir in &staging {
        assert!(dir.join("state.json").is_file(), "{}", dir.display());
    }
    cancel_restore(&http, &api, &started).await;
    for n in nodes {
        let node_api = n["api"].as_str().unwrap();
        let part = wait_part(&http, node_api, &running_id, |p| p["state"] != "running").await;
        assert_eq!(part["state"], "cancelled", "{node_api}: {part}");
        assert_eq!(part["imported_tables"], serde_json::json!([]), "{part}");
        let total = part["progress"]["bytes_total"].as_u64().unwrap();
        assert!(
            part["progress"]["bytes_done"].as_u64().unwrap() < total,
            "{node_api} was stopped before its part was downloaded: {part}"
        );
    }
    assert_eq!(count_at(third, "bulk.blobs", Consistency::All).await, 0);
    // The parts of a cancelled restore leave no status behind, and no
    // staged files on the nodes (nothing can continue them).
    nothing_left_of(&control.dir, &running_id).await;

    // A node whose sidecar hangs mid-part (SIGSTOP: its process is there, so
    // the control plane does not replace it) stops reporting: 2 minutes later
    // the restore fails naming it, after the other two parts are done. Woken
    // up, the node finds the request gone and stops its part.
    let started = cluster_restore(&http, &api, "bulk").await;
    let silent_id = started["id"].as_str().unwrap().to_string();
    let hung_api = nodes[2]["api"].as_str().unwrap();
    wait_part(&http, hung_api, &silent_id, |p| p["phase"] == "stage").await;
    let (_, _, health) = send_raw(&http, hung_api, "GET", "/v1/health", None).await;
    let hung = nix::unistd::Pid::from_raw(health["pid"].as_i64().unwrap() as i32);
    nix::sys::signal::kill(hung, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let job = job_end(&http, &api, &started, Duration::from_secs(300)).await;
    nix::sys::signal::kill(hung, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains(&format!("({third})")), "{error}");
    assert!(error.contains("stopped reporting its part"), "{error}");
    assert!(error.contains("1 of 3 nodes"), "{error}");
    let (_, shown) = restore_view(&http, &api, &silent_id).await;
    let parts = shown["nodes"].as_array().unwrap();
    for p in parts {
        let expect = if p["address"] == third.to_string() {
            "running"
        } else {
            "done"
        };
        assert_eq!(p["state"], expect, "{p}");
    }
    let part = wait_part(&http, hung_api, &silent_id, |p| p["state"] != "running").await;
    // Woken, it may finish its last step before it sees the request gone.
    assert!(
        part["state"] == "cancelled" || part["state"] == "done",
        "{part}"
    );
    nothing_left_of(&control.dir, &silent_id).await;
    assert_eq!(count_at(third, "bulk.blobs", Consistency::All).await, 4000);

    // Delete stops every node and forgets the cluster.
    let (status, location, _) = control.request("DELETE", "/v1/clusters/orders", None).await;
    assert_eq!(status, 202);
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(control.jvm_pids().is_empty(), "no JVM is left");
    let (status, _) = control.get("/v1/clusters/orders").await;
    assert_eq!(status, 404);
    let (_, list) = control.get("/v1/clusters").await;
    assert_eq!(list, serde_json::json!([]));
    // Its backups outlive it.
    assert!(catalog
        .cluster_index("orders", &backup_id)
        .await
        .unwrap()
        .is_some());
    // "Give me a copy": a new cluster from that backup, in one request. Bad
    // sources and shapes are refused first.
    for (body, expect) in [
        (
            serde_json::json!({"name": "copy", "nodes": 3, "restore_from": "nope"}),
            "no complete cluster backup",
        ),
        (
            serde_json::json!({"name": "copy", "nodes": 3, "restore_from": "orders/20200101T000000Z-000000"}),
            "no complete cluster backup",
        ),
        (
            serde_json::json!({"name": "copy", "nodes": 2, "restore_from": "orders"}),
            "3 nodes per data center",
        ),
        (
            serde_json::json!({"name": "copy", "nodes": 3, "restore_from": "orders@yesterday"}),
            "RFC 3339",
        ),
    ] {
        let (status, _, e) = control
            .request("POST", "/v1/clusters", Some(&body.to_string()))
            .await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(expect), "{body}: {e}");
    }
    let body = serde_json::json!({"name": "orders-copy", "nodes": 3, "restore_from": format!("orders/{id}")});
    let (status, location, created) = control
        .request("POST", "/v1/clusters", Some(&body.to_string()))
        .await;
    assert_eq!(status, 202, "{created}");
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, copy) = control.get("/v1/clusters/orders-copy").await;
    let copy_nodes = copy["nodes"].as_array().unwrap();
    for (i, n) in copy_nodes.iter().enumerate() {
        assert_eq!(n["tokens"], serde_json::json!([expected[i]]), "{n}");
    }
    let copy_node: std::net::IpAddr = copy_nodes[2]["address"].as_str().unwrap().parse().unwrap();
    let n = count_at(copy_node, "shop.orders", Consistency::All).await;
    assert_eq!(n, 50, "the copy holds the source's rows");
    // A running cluster takes another cluster's backup (the same slot layout)
    // online: each node restores the source slot that holds its tokens.
    truncate(copy_node, "shop.orders").await;
    let copy_api = copy_nodes[0]["api"].as_str().unwrap();
    let body =
        serde_json::json!({"scope": "cluster", "source_cluster": "orders", "keyspaces": ["shop"]});
    let started = accepted(&http, copy_api, "/v1/restores", body).await;
    let job = job_end(&http, copy_api, &started, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, shown) = restore_view(&http, copy_api, started["id"].as_str().unwrap()).await;
    let parts = shown["nodes"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{shown}");
    for p in parts {
        assert_eq!(p["state"], "done", "{p}");
        assert_eq!(p["slot"]["cluster"], "orders-copy", "{p}");
        assert_eq!(p["source"]["cluster"], "orders", "{p}");
        assert_eq!(p["source"]["slot"], p["slot"]["slot"], "{p}");
    }
    assert_eq!(
        count_at(copy_node, "shop.orders", Consistency::All).await,
        50
    );
    let (status, location, _) = control
        .request("DELETE", "/v1/clusters/orders-copy", None)
        .await;
    assert_eq!(status, 202);
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cluster_requests_get_4xx_json_errors() {
    let control = TestControl::start("errors", 7982, 120).await;
    let expect = |(status, _, body): (u16, Option<String>, Value), want: u16, words: &str| {
        assert_eq!(status, want, "{body}");
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {body}"));
        assert!(msg.contains(words), "{msg:?} should mention {words:?}");
    };
    let post = |body: &'static str| control.request("POST", "/v1/clusters", Some(body));
    expect(
        control.request("GET", "/v1/clusters/nosuch", None).await,
        404,
        "no cluster",
    );
    expect(
        control.request("DELETE", "/v1/clusters/nosuch", None).await,
        404,
        "no cluster",
    );
    expect(
        post(r#"{"name": "zero", "nodes": 0}"#).await,
        400,
        "nodes must be",
    );
    expect(
        post(r#"{"name": "Bad Name", "nodes": 1}"#).await,
        400,
        "lowercase",
    );
    expect(
        post(r#"{"name": "old", "nodes": 1, "cassandra_version": "4.1.5"}"#).await,
        400,
        "not supported",
    );
    expect(
        post(r#"{"name": "old", "nodes": 1, "cassandra_version": "5.0.0"}"#).await,
        400,
        "not fetched",
    );
    expect(
        post(r#"{"name": "uneven", "nodes": 2, "racks": 3}"#).await,
        400,
        "multiple",
    );
    expect(
        post(r#"{"name": "x", "nodes": 1, "colour": 1}"#).await,
        400,
        "unknown field",
    );
    expect(post(r#"{"name": "x""#).await, 400, "bad request body");
    expect(
        control.request("PUT", "/v1/clusters", None).await,
        405,
        "not allowed",
    );
    // Nothing was created by any of those.
    assert_eq!(control.get("/v1/clusters").await.1, serde_json::json!([]));

    // A duplicate name, while the first is still coming up.
    let (status, location, body) = post(r#"{"name": "dup", "nodes": 1}"#).await;
    assert_eq!(status, 202, "{body}");
    expect(
        post(r#"{"name": "dup", "nodes": 1}"#).await,
        409,
        "already exists",
    );
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let pids = control.jvm_pids();
    assert_eq!(pids.len(), 1);
    drop(control);
    assert!(
        pids.iter()
            .all(|p| TestNode::wait_gone(*p, Duration::from_secs(30))),
        "stopping the control plane stops its nodes"
    );
}

/// `GET /v1/restores/{id}` on a node's API: status and body.
async fn restore_view(http: &reqwest::Client, api: &str, id: &str) -> (u16, Value) {
    let (status, _, view) = send_raw(http, api, "GET", &format!("/v1/restores/{id}"), None).await;
    (status, view)
}

/// POSTs `body` to `path` and requires 202; returns the answer.
async fn accepted(http: &reqwest::Client, api: &str, path: &str, body: Value) -> Value {
    let (status, _, answer) = send_raw(http, api, "POST", path, Some(&body.to_string())).await;
    assert_eq!(status, 202, "POST {path} {body}: {answer}");
    answer
}

/// Asks `api` for a cluster backup and waits for its job; returns the 202
/// answer and the ended job.
async fn cluster_backup(http: &reqwest::Client, api: &str) -> (Value, Value) {
    let body = serde_json::json!({"scope": "cluster"});
    let started = accepted(http, api, "/v1/backups", body).await;
    let job = job_end(http, api, &started, Duration::from_secs(300)).await;
    (started, job)
}

/// Starts a cluster-wide restore of `keyspace` through `api` (202); returns
/// the answer.
async fn cluster_restore(http: &reqwest::Client, api: &str, keyspace: &str) -> Value {
    let body = serde_json::json!({"scope": "cluster", "keyspaces": [keyspace]});
    accepted(http, api, "/v1/restores", body).await
}

/// Cancels the restore that `started` (a 202 answer from `api`) names, waits
/// for its job, and requires it to end as cancelled; returns the job.
async fn cancel_restore(http: &reqwest::Client, api: &str, started: &Value) -> Value {
    let id = started["id"].as_str().unwrap();
    let (status, _, answer) = send_raw(
        http,
        api,
        "POST",
        &format!("/v1/restores/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let job = job_end(http, api, started, Duration::from_secs(60)).await;
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled"),
        "{job}"
    );
    job
}

/// Polls the job that `started` (a 202 answer from `api`) names until it ends.
async fn job_end(http: &reqwest::Client, api: &str, started: &Value, timeout: Duration) -> Value {
    let location = format!("/v1/jobs/{}", started["job"]["id"].as_str().unwrap());
    poll_job(http, api, &location, timeout).await
}

async fn truncate(address: std::net::IpAddr, table: &str) {
    cql(address)
        .await
        .query_unpaged(format!("TRUNCATE {table}"), ())
        .await
        .unwrap();
}

/// A node's own part of cluster restore `id` (`Null` until it has one), from
/// `GET /v1/restores`: on the asking node, `GET /v1/restores/{id}` shows the
/// whole cluster restore instead.
async fn node_part(http: &reqwest::Client, api: &str, id: &str) -> Value {
    let (status, _, list) = send_raw(http, api, "GET", "/v1/restores", None).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id && r["scope"] == "node")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits (≤ 60 s) until this node's own part of cluster restore `id` is as
/// `wanted` says, and returns it.
async fn wait_part(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let part = node_part(http, api, id).await;
        if wanted(&part) {
            return part;
        }
        assert!(std::time::Instant::now() < deadline, "{api}: {part}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The files below `dir` (none if it does not exist).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    anchises_integration::find(dir, &["-type", "f"])
}

/// Waits (≤ 30 s each) until no status of cluster restore `id` of `orders`
/// is left in the store, and no node has files of its part left on its disk.
async fn nothing_left_of(control_dir: &std::path::Path, id: &str) {
    no_files_left(&control_dir.join(format!("backups/orders/restores/status/{id}"))).await;
    for part in part_dirs(control_dir, id) {
        no_files_left(&part).await;
    }
}

/// Where each node of `orders` keeps its part of cluster restore `id`.
fn part_dirs(control_dir: &std::path::Path, id: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(control_dir.join("clusters/orders"))
        .unwrap()
        .map(|node_dir| node_dir.unwrap().path())
        .filter(|node_dir| node_dir.join("anchises.toml").is_file())
        .map(|node_dir| node_dir.join(format!("node/anchises/restore/{id}")))
        .collect()
}

/// Waits (≤ 30 s) until no file is left below `dir`.
async fn no_files_left(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = files_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count(*)` at `consistency` through `address`. A node that has just
/// started may not see its peers up yet: "unavailable" is retried for a minute.
async fn count_at(address: std::net::IpAddr, table: &str, consistency: Consistency) -> i64 {
    let session = cql(address).await;
    let mut count = Statement::new(format!("SELECT count(*) FROM {table}"));
    count.set_consistency(consistency);
    count.set_request_timeout(Some(Duration::from_secs(60)));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match session.query_unpaged(count.clone(), ()).await {
            Ok(result) => {
                return result
                    .into_rows_result()
                    .unwrap()
                    .single_row::<(i64,)>()
                    .unwrap()
                    .0
            }
            Err(e) if e.to_string().contains("Cannot achieve consistency") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{table} at {consistency:?}: {e}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{table} at {consistency:?}: {e}"),
        }
    }
}

/// Creates `keyspace` with `rf` replicas in dc1.
async fn create_keyspace(session: &scylla::client::session::Session, keyspace: &str, rf: u32) {
    session
        .query_unpaged(
            format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': {rf}}}"),
            (),
        )
        .await
        .unwrap();
}

async fn write_rows(address: std::net::IpAddr, rf: u32, rows: i32) {
    let session = cql(address).await;
    create_keyspace(&session, "data", rf).await;
    session
        .query_unpaged("CREATE TABLE data.rows (id int PRIMARY KEY, v text)", ())
        .await
        .unwrap();
    let mut insert = Statement::new("INSERT INTO data.rows (id, v) VALUES (?, ?)");
    insert.set_consistency(Consistency::All);
    for id in 0..rows {
        session
            .query_unpaged(insert.clone(), (id, format!("row {id}")))
            .await
            .unwrap();
    }
}

/// Creates `keyspace.blobs` (replicated to all three nodes) and writes `rows`
/// rows of `size` random bytes.
async fn write_blobs(address: std::net::IpAddr, keyspace: &str, rows: i32, size: usize) {
    let session = cql(address).await;
    create_keyspace(&session, keyspace, 3).await;
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.blobs (id int PRIMARY KEY, payload blob)"),
            (),
        )
        .await
        .unwrap();
    insert_blobs(
        &session,
        &format!("{keyspace}.blobs"),
        rows,
        size,
        Consistency::All,
    )
    .await;
}

fn node_addresses(view: &Value) -> Vec<std::net::IpAddr> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Creates a cluster through the control plane, waits for its job to succeed, and
/// returns `GET /v1/clusters/{name}`.
async fn create_cluster(control: &TestControl, name: &str, nodes: u32) -> Value {
    let body = serde_json::json!({"name": name, "nodes": nodes}).to_string();
    let (status, location, created) = control.request("POST", "/v1/clusters", Some(&body)).await;
    assert_eq!(status, 202, "{created}");
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    control.get(&format!("/v1/clusters/{name}")).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn grow_two_to_three_and_shrink_back_lose_no_row() {
    let control = TestControl::start("elastic", 7983, 130).await;
    let view = create_cluster(&control, "elastic", 2).await;
    let first = node_addresses(&view)[0];
    write_rows(first, 2, 300).await;
    assert_eq!(count_at(first, "data.rows", Consistency::All).await, 300);

    let (status, _, body) = control
        .request("POST", "/v1/clusters/elastic/grow", Some(r#"{"nodes": 2}"#))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, location, body) = control
        .request("POST", "/v1/clusters/elastic/grow", Some(r#"{"nodes": 3}"#))
        .await;
    assert_eq!(status, 202, "{body}");
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["cleaned_nodes"], 2, "{job}");
    let (_, view) = control.get("/v1/clusters/elastic").await;
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{view}");
    assert!(nodes.iter().all(|n| n["ready"] == true), "{view}");
    assert_eq!(nodes[2]["slot"], 2);
    // The new slot's token splits a range of the two-node ring in half.
    let tokens: Vec<i128> = nodes
        .iter()
        .map(|n| n["tokens"][0].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        tokens[2],
        job["result"]["added_slots"][0]["token"]
            .as_str()
            .unwrap()
            .parse::<i128>()
            .unwrap()
    );
    let half = 1i128 << 62;
    assert!(
        (tokens[2] - tokens[0]).rem_euclid(1i128 << 64) == half
            || (tokens[2] - tokens[1]).rem_euclid(1i128 << 64) == half,
        "{tokens:?}"
    );
    let newest: std::net::IpAddr = nodes[2]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(count_at(newest, "data.rows", Consistency::All).await, 300);

    // Below the replication factor: refused with the reason.
    let (status, _, body) = control
        .request(
            "POST",
            "/v1/clusters/elastic/shrink",
            Some(r#"{"nodes": 1}"#),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("replication factor 2"),
        "{body}"
    );
    let (status, location, body) = control
        .request(
            "POST",
            "/v1/clusters/elastic/shrink",
            Some(r#"{"nodes": 2}"#),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = control.wait_job(&location.unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, view) = control.get("/v1/clusters/elastic").await;
    let slots: Vec<u64> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 1], "the newest slot left: {view}");
    assert_eq!(view["spec"]["dcs"][0]["slots"].as_array().unwrap().len(), 2);
    assert_eq!(count_at(first, "data.rows", Consistency::All).await, 300);
    assert_eq!(
        control.jvm_pids().len(),
        2,
        "the decommissioned node's JVM is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_for_good_is_replaced_on_its_slot_with_its_data() {
    let control = TestControl::start("phoenix", 7984, 140).await;
    let view = create_cluster(&control, "phoenix", 3).await;
    let addresses = node_addresses(&view);
    write_rows(addresses[0], 3, 200).await;
    let victim = view["nodes"][1].clone();
    let token = victim["tokens"][0].clone();

    // Kill the node's sidecar and its JVM at once: a machine gone for good.
    let http = reqwest::Client::new();
    let api = victim["api"].as_str().unwrap();
    let health: Value = http
        .get(format!("{api}/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status: Value = http
        .get(format!("{api}/v1/node"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for pid in [
        health["pid"].as_i64().unwrap(),
        status["pid"].as_i64().unwrap(),
    ] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(420);
    let replacement = loop {
        let (_, view) = control.get("/v1/clusters/phoenix").await;
        let holder = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["slot"] == 1 && n["node_id"] != victim["node_id"])
            .cloned();
        if let Some(n) = holder.filter(|n| n["ready"] == true) {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot 1 not replaced: {view}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert_eq!(replacement["tokens"][0], token, "the slot keeps its token");
    assert_ne!(replacement["address"], victim["address"]);
    let (_, jobs) = control.get("/v1/jobs").await;
    let replace_job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "cluster.replace")
        .expect("a replace job");
    let replace_job = control
        .wait_job(&format!("/v1/jobs/{}", replace_job["id"].as_str().unwrap()))
        .await;
    assert_eq!(replace_job["state"], "succeeded", "{replace_job}");
    assert_eq!(replace_job["result"]["replaced"], victim["node_id"]);
    let new_address: std::net::IpAddr = replacement["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        count_at(new_address, "data.rows", Consistency::All).await,
        200
    );
}

/// The name of a `shop` Data.db file in slot 1's manifest of `id`.
async fn first_table_file(
    catalog: &anchises_backup::catalog::Catalog,
    id: &anchises_backup::manifest::BackupId,
) -> String {
    let slot = anchises_backup::manifest::SlotRef {
        cluster: "orders".into(),
        dc: "dc1".into(),
        slot: 1,
    };
    let manifest = catalog.manifest(&slot, id).await.unwrap().unwrap();
    manifest
        .files
        .iter()
        .find(|f| f.keyspace == "shop" && f.name.ends_with("-Data.db"))
        .expect("shop data in the backup")
        .name
        .clone()
}
