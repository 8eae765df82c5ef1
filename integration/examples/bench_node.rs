//! Benchmark of the node sidecar against real Cassandra, printing figures:
//! - time from spawn to NORMAL under `anchises node`, next to the same JVM started by
//!   its bare launcher line (`anchises node --print-launch`), and to `anchises node`
//!   with `class_sharing = false`, in rotating order, fresh data each run; all
//!   measured by polling Jolokia the same way (a first start builds the class archive
//!   the others map);
//! - the sidecar's RSS while idle beside the running node;
//! - `GET /v1/node` latency at a fixed request rate on loopback (open loop).
//!
//! Run: `cargo build --release -p anchises -p anchises-integration --examples` then
//! `ANCHISES_BIN=$CARGO_TARGET_DIR/release/anchises $CARGO_TARGET_DIR/release/examples/bench_node [ROUNDS]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anchises_integration::{anchises_bin, ensure_cassandra, test_root, NodeSpec, TestNode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const OCTET: u8 = 51;

async fn wait_normal_via_jolokia(http: &reqwest::Client, port: u16, since: Instant) -> Duration {
    let body = serde_json::json!({"type": "read", "mbean": "org.apache.cassandra.db:type=StorageService", "attribute": "OperationMode"});
    loop {
        if let Ok(r) = http
            .post(format!("http://127.0.0.1:{port}/jolokia/"))
            .json(&body)
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["value"] == "NORMAL" {
                    return since.elapsed();
                }
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "no NORMAL after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The same read `GET /v1/node` makes, sent straight to Jolokia: what the sidecar
/// adds on top is the difference.
fn jolokia_status_request(port: u16) -> reqwest::Request {
    let body = serde_json::json!([
        {"type": "read", "mbean": "org.apache.cassandra.db:type=StorageService",
         "attribute": ["OperationMode", "Joined", "ReleaseVersion", "ClusterName", "Tokens",
                       "LocalHostId", "LiveNodesWithPort", "UnreachableNodesWithPort",
                       "JoiningNodesWithPort", "LeavingNodesWithPort", "NativeTransportRunning"]},
        {"type": "read", "mbean": "org.apache.cassandra.db:type=EndpointSnitchInfo", "attribute": ["Datacenter", "Rack"]},
        {"type": "read", "mbean": "org.apache.cassandra.metrics:type=Storage,name=Load", "attribute": "Count"},
    ]);
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/jolokia/"))
        .json(&body)
        .build()
        .unwrap()
}

/// Open loop: one request every 1/rate s whatever the answers do.
async fn latency(make: impl Fn() -> reqwest::Request, rate: u32, seconds: u32) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / rate);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..rate * seconds {
        interval.tick().await;
        let http = http.clone();
        let req = make();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http.execute(req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            t.elapsed()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(3);
    ensure_cassandra();
    let http = reqwest::Client::new();
    // The class archive of this benchmark's own, built by a first start.
    let archives = test_root().join("bench-cds");
    let _ = std::fs::remove_dir_all(&archives);
    let spec = NodeSpec {
        initial_token: Some("0".into()),
        extra_toml: format!("class_archive_dir = \"{}\"\n", archives.display()),
        ..NodeSpec::new("bench", OCTET)
    };
    let without_sharing = NodeSpec {
        extra_toml: format!("{}class_sharing = false\n", spec.extra_toml),
        ..spec.clone()
    };
    let jolokia_port = 18000 + OCTET as u16;
    let mut with_sidecar = Vec::new();
    let mut no_sharing = Vec::new();
    let mut bare = Vec::new();
    println!("binary: {}", anchises_bin().display());
    {
        let t0 = Instant::now();
        let mut node = TestNode::start(spec.clone()).await;
        node.wait_normal().await;
        while !std::fs::read_dir(&archives)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "jsa"))
            })
            .unwrap_or(false)
        {
            assert!(t0.elapsed() < Duration::from_secs(300), "no class archive");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "class archive built {:.1} s after the first start began",
            t0.elapsed().as_secs_f64()
        );
        assert!(node.stop());
    }
    for round in 0..rounds {
        // 0: anchises node, 1: the same with class_sharing = false, 2: the bare
        // launcher line; the order rotates from round to round.
        for turn in (0..3).map(|k| (k + round) % 3) {
            if turn < 2 {
                let t0 = Instant::now();
                let mut node = TestNode::start(if turn == 0 {
                    spec.clone()
                } else {
                    without_sharing.clone()
                })
                .await;
                let took = wait_normal_via_jolokia(&http, jolokia_port, t0).await;
                println!(
                    "round {round}: anchises node{} -> NORMAL in {:.2} s",
                    if turn == 0 {
                        ""
                    } else {
                        ", class_sharing = false"
                    },
                    took.as_secs_f64()
                );
                if turn == 1 {
                    no_sharing.push(took);
                    assert!(node.stop());
                    continue;
                }
                with_sidecar.push(took);
                if round == 0 {
                    node.wait_normal().await;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let pid = node.sidecar_pid().unwrap();
                    println!(
                        "sidecar idle beside a running node: VmRSS {} KiB, VmHWM {} KiB",
                        rss_kib(pid, "VmRSS:"),
                        rss_kib(pid, "VmHWM:")
                    );
                    // Alternate the two targets so both see the same JVM phases.
                    let url = format!("{}/v1/node", node.api);
                    let api_request = || reqwest::Client::new().get(&url).build().unwrap();
                    let (mut via_api, mut direct) = (Vec::new(), Vec::new());
                    for _ in 0..3 {
                        via_api.extend(latency(api_request, 200, 5).await);
                        direct
                            .extend(latency(|| jolokia_status_request(jolokia_port), 200, 5).await);
                    }
                    for (what, mut lat) in [
                        ("GET /v1/node (sidecar)", via_api),
                        ("same read straight to jolokia", direct),
                    ] {
                        lat.sort();
                        println!(
                            "{what} at 200 req/s, 3 x 5 s: n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                            lat.len(),
                            percentile(&lat, 0.50).as_secs_f64() * 1e3,
                            percentile(&lat, 0.99).as_secs_f64() * 1e3,
                            lat.last().unwrap().as_secs_f64() * 1e3
                        );
                    }
                    println!(
                        "sidecar after the latency run: VmRSS {} KiB, VmHWM {} KiB",
                        rss_kib(pid, "VmRSS:"),
                        rss_kib(pid, "VmHWM:")
                    );
                }
                assert!(node.stop());
            } else {
                let dir = test_root().join("bench-bare");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let config = dir.join("anchises.toml");
                std::fs::write(&config, spec.toml(&dir)).unwrap();
                let out = Command::new(anchises_bin())
                    .args(["node", "--print-launch", "--config"])
                    .arg(&config)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8(out.stdout).unwrap();
                let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
                let t0 = Instant::now();
                let mut jvm = Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec {}", line.trim()))
                    .current_dir(&dir)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                let took = wait_normal_via_jolokia(&http, jolokia_port, t0).await;
                println!(
                    "round {round}: bare launcher line -> NORMAL in {:.2} s",
                    took.as_secs_f64()
                );
                bare.push(took);
                kill(Pid::from_raw(jvm.id() as i32), Signal::SIGTERM).unwrap();
                jvm.wait().unwrap();
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() / v.len() as f64;
    println!(
        "start to NORMAL, mean of {rounds}: anchises node {:.2} s, bare JVM {:.2} s, overhead {:+.2} s",
        mean(&with_sidecar),
        mean(&bare),
        mean(&with_sidecar) - mean(&bare)
    );
    println!(
        "class sharing: anchises node {:.2} s with the archive, {:.2} s with class_sharing = false ({:+.2} s)",
        mean(&with_sidecar),
        mean(&no_sharing),
        mean(&with_sidecar) - mean(&no_sharing)
    );
    let _ = std::fs::remove_dir_all(&archives);
}
