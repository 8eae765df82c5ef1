//! The Cassandra-LWT store against a real one-node Cassandra: the whole shared
//! conformance suite, then what only this backend can get wrong — independent
//! clients racing through separate sessions, keyspace isolation, a store used
//! before its schema exists, and an LWT whose outcome is unknown.
//!
//! Node start costs 10–20 s, so everything runs in one test on one node
//! (127.0.0.61); each part works under fresh keys or its own keyspace.

use std::sync::Arc;
use std::time::Duration;

use anchises_integration::{cql, NodeSpec, TestNode};
use anchises_topology::cas_cql::{CqlCasScope, CqlCasStore};
use anchises_topology::{CasError, CasKey, CasStore};
use scylla::client::session::Session;
use tokio::sync::Barrier;

const REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lwt_store_keeps_the_cas_contract_on_a_real_node() {
    let node = TestNode::start(NodeSpec {
        initial_token: Some("0".into()),
        ..NodeSpec::new("cascql", 61)
    })
    .await;
    node.wait_normal().await;
    let session = Arc::new(cql(node.address).await);

    let store = CqlCasStore::new(session.clone(), "anchises_cas").expect("valid keyspace");
    store.ensure_schema(REPLICATION).await.expect("schema");
    store
        .ensure_schema(REPLICATION)
        .await
        .expect("ensure_schema is idempotent");
    anchises_topology::conformance::run_all(Arc::new(store)).await;

    let local = CqlCasStore::new(session.clone(), "anchises_cas")
        .expect("valid keyspace")
        .with_scope(CqlCasScope::LocalDc);
    anchises_topology::conformance::run_all(Arc::new(local)).await;

    clients_with_their_own_sessions_race_with_one_winner_per_round(node.address).await;
    keyspaces_do_not_see_each_others_keys(session.clone()).await;
    a_store_without_its_table_reports_a_backend_error(session.clone()).await;
    an_lwt_that_runs_out_of_time_is_not_reported_as_done(session).await;
}

/// Two stores on two sessions — two sidecars, in effect — replace one key from
/// the same version; exactly one wins each round, and both then read the winner.
async fn clients_with_their_own_sessions_race_with_one_winner_per_round(address: std::net::IpAddr) {
    const TASKS_PER_CLIENT: usize = 4;
    const ROUNDS: usize = 10;
    let mut clients: Vec<Arc<dyn CasStore>> = Vec::new();
    for _ in 0..2 {
        let session = Arc::new(cql(address).await);
        clients.push(Arc::new(
            CqlCasStore::new(session, "anchises_cas").expect("valid keyspace"),
        ));
    }
    let key = CasKey::new(format!("race/{}/lease.json", std::process::id())).unwrap();
    let mut version = clients[0]
        .put_if_absent(&key, b"start".to_vec())
        .await
        .expect("create");
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(2 * TASKS_PER_CLIENT));
        let mut tasks = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..TASKS_PER_CLIENT {
                let (client, key, barrier, expected) = (
                    client.clone(),
                    key.clone(),
                    barrier.clone(),
                    version.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let value = format!("{round}:{c}:{t}").into_bytes();
                    barrier.wait().await;
                    client
                        .put_if_match(&key, value.clone(), &expected)
                        .await
                        .map(|v| (value, v))
                }));
            }
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("task runs") {
                Ok(win) => winners.push(win),
                Err(e) => assert!(e.is_conflict(), "round {round}: a loser failed: {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (value, new_version) = winners.pop().unwrap();
        for client in &clients {
            let found = client.get(&key).await.expect("get").expect("key exists");
            assert_eq!(
                (found.value, &found.version),
                (value.clone(), &new_version),
                "round {round}"
            );
        }
        version = new_version;
    }
}

async fn keyspaces_do_not_see_each_others_keys(session: Arc<Session>) {
    let first = CqlCasStore::new(session.clone(), "anchises_cas").unwrap();
    let second = CqlCasStore::new(session, "anchises_cas_other").unwrap();
    second.ensure_schema(REPLICATION).await.expect("schema");
    let key = CasKey::new("isolation/only-in-first.json").unwrap();
    first
        .put_if_absent(&key, b"1".to_vec())
        .await
        .expect("create in the first keyspace");
    assert_eq!(second.get(&key).await.expect("get"), None);
    assert_eq!(
        second.list("isolation/").await.expect("list"),
        Vec::<CasKey>::new()
    );
    assert_eq!(
        first.list("isolation/").await.expect("list"),
        vec![key.clone()]
    );
    second
        .put_if_absent(&key, b"2".to_vec())
        .await
        .expect("the same key is free in the second keyspace");
}

async fn a_store_without_its_table_reports_a_backend_error(session: Arc<Session>) {
    let store = CqlCasStore::new(session, "anchises_never_created").unwrap();
    let key = CasKey::new("a/b.json").unwrap();
    match store.put_if_absent(&key, b"x".to_vec()).await {
        Err(CasError::Backend { message, .. }) => assert!(
            message.contains("ensure_schema"),
            "unhelpful message: {message}"
        ),
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(matches!(
        store.list("").await,
        Err(CasError::Backend { .. })
    ));
}

/// A zero client timeout gives up on a statement as soon as the driver's timer
/// fires: the LWT may or may not have reached the node. It must come back as a
/// backend error that says the outcome is unknown — never as a success or a
/// conflict — and a re-read through a healthy store settles what happened. The
/// timer has a millisecond grain, so a fast answer can still win the race; such
/// a create must then really have landed, and at least one of the attempts
/// must time out.
async fn an_lwt_that_runs_out_of_time_is_not_reported_as_done(session: Arc<Session>) {
    let healthy = CqlCasStore::new(session.clone(), "anchises_cas").unwrap();
    let hasty = CqlCasStore::new(session, "anchises_cas")
        .unwrap()
        .with_request_timeout(Duration::ZERO);
    let mut timed_out = 0;
    for attempt in 0..10 {
        let key = CasKey::new(format!("timeout/{}/{attempt}.json", std::process::id())).unwrap();
        match hasty.put_if_absent(&key, b"maybe".to_vec()).await {
            Err(CasError::Backend { message, .. }) => {
                assert!(message.contains("unknown outcome"), "{message}");
                timed_out += 1;
            }
            Ok(_) => {
                let found = healthy.get(&key).await.expect("re-read").expect("created");
                assert_eq!(found.value, b"maybe");
                continue;
            }
            other => panic!("a timed-out create must be a backend error, got {other:?}"),
        }
        // The request may already be on the wire: give it time to reach the node.
        // The SERIAL re-read then finishes any Paxos round it left half-done.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match healthy.get(&key).await.expect("re-read") {
            None => {
                healthy
                    .put_if_absent(&key, b"retried".to_vec())
                    .await
                    .expect("nothing landed, so a retry creates the key");
            }
            Some(found) => assert_eq!(found.value, b"maybe", "a foreign value appeared"),
        }
        if timed_out == 3 {
            break;
        }
    }
    assert!(timed_out > 0, "no create ran out of a zero timeout");
}
