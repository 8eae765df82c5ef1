//! `anchises control`: whole clusters from one request, against real Cassandra nodes
//! on 127.0.0.x. Node-heavy: run with `--test-threads=1`.

use std::time::Duration;

use anchises_integration::{cql, TestControl, TestNode};
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn one_request_creates_a_three_node_cluster_with_the_computed_tokens() {
    let control = TestControl::start("create", 7981, 110).await;
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
    writer
        .query_unpaged(
            "CREATE KEYSPACE shop WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}",
            (),
        )
        .await
        .unwrap();
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
