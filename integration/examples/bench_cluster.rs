//! Benchmark: one request to the control plane → a 3-node cluster with every node
//! NORMAL and serving CQL, next to the same three JVMs started by hand from their
//! bare launcher lines (`anchises node --print-launch`), all three at once, with the
//! same readiness check (Jolokia: NORMAL and native transport running). Alternates
//! which goes first; fresh data every run.
//!
//! Run: `cargo build --release -p anchises -p anchises-integration --bins --examples`
//! then `ANCHISES_BIN=$CARGO_TARGET_DIR/release/anchises $CARGO_TARGET_DIR/release/examples/bench_cluster [ROUNDS]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anchises_integration::{
    anchises_bin, balanced_tokens, ensure_cassandra, test_root, NodeSpec, TestControl,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

async fn ready_via_jolokia(http: &reqwest::Client, port: u16) -> bool {
    let body = serde_json::json!({"type": "read", "mbean": "org.apache.cassandra.db:type=StorageService",
        "attribute": ["OperationMode", "NativeTransportRunning"]});
    let Ok(r) = http
        .post(format!("http://127.0.0.1:{port}/jolokia/"))
        .json(&body)
        .send()
        .await
    else {
        return false;
    };
    let Ok(v) = r.json::<serde_json::Value>().await else {
        return false;
    };
    v["value"]["OperationMode"] == "NORMAL" && v["value"]["NativeTransportRunning"] == true
}

async fn by_hand(round: usize) -> Duration {
    let http = reqwest::Client::new();
    let tokens = balanced_tokens(3);
    let octets = [160u8, 161, 162];
    let mut lines = Vec::new();
    for (i, octet) in octets.iter().enumerate() {
        let spec = NodeSpec {
            initial_token: Some(tokens[i].clone()),
            seeds: vec!["127.0.0.160".into()],
            ..NodeSpec::new("byhand", *octet)
        };
        let dir = test_root().join(format!("bench-byhand-{octet}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("anchises.toml"), spec.toml(&dir)).unwrap();
        let out = Command::new(anchises_bin())
            .args(["node", "--print-launch", "--config"])
            .arg(dir.join("anchises.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines.push((dir, String::from_utf8(out.stdout).unwrap()));
    }
    let t0 = Instant::now();
    let mut jvms = Vec::new();
    for (dir, line) in &lines {
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        jvms.push(
            Command::new("sh")
                .arg("-c")
                .arg(format!("exec {}", line.trim()))
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    for octet in octets {
        while !ready_via_jolokia(&http, 18000 + octet as u16).await {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "by-hand node {octet} not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = t0.elapsed();
    println!(
        "round {round}: 3 JVMs by hand -> all ready in {:.2} s",
        took.as_secs_f64()
    );
    for jvm in &mut jvms {
        kill(Pid::from_raw(jvm.id() as i32), Signal::SIGTERM).unwrap();
    }
    for mut jvm in jvms {
        jvm.wait().unwrap();
    }
    for (dir, _) in lines {
        let _ = std::fs::remove_dir_all(dir);
    }
    took
}

async fn one_request(round: usize) -> Duration {
    let control = TestControl::start("bench", 7985, 150).await;
    let t0 = Instant::now();
    let (status, location, body) = control
        .request(
            "POST",
            "/v1/clusters",
            Some(r#"{"name": "bench", "nodes": 3}"#),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = control.wait_job(&location.unwrap()).await;
    let took = t0.elapsed();
    assert_eq!(job["state"], "succeeded", "{job}");
    println!(
        "round {round}: one request -> 3 nodes ready in {:.2} s",
        took.as_secs_f64()
    );
    let (_, location, _) = control.request("DELETE", "/v1/clusters/bench", None).await;
    control.wait_job(&location.unwrap()).await;
    took
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(3);
    ensure_cassandra();
    println!("binary: {}", anchises_bin().display());
    let (mut anchises, mut hand) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            anchises.push(one_request(round).await);
            hand.push(by_hand(round).await);
        } else {
            hand.push(by_hand(round).await);
            anchises.push(one_request(round).await);
        }
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() / v.len() as f64;
    let (a, h) = (mean(&anchises), mean(&hand));
    println!(
        "3-node cluster ready, mean of {rounds}: one request {a:.2} s, by hand {h:.2} s, overhead {:+.1} %",
        (a - h) / h * 100.0
    );
}
