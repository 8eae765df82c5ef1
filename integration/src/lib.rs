//! The test harness: starts real Cassandra nodes through `anchises node` on
//! 127.0.0.x, each with its own directory and ports, gives typed access to their
//! APIs, and tears everything down — sidecar and JVM — even when a test panics.
//! Nothing here is mocked; a missing Cassandra or tool is fetched, never skipped.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The repository root (this crate lives in `<root>/integration`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The `anchises` binary built beside the test binary (`ops-scripts/test.sh` builds
/// it first), or `$ANCHISES_BIN`.
pub fn anchises_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ANCHISES_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary> -> target/<profile>/anchises
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("a target directory")
        .join("anchises");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p anchises` (ops-scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Fetches Cassandra and the Jolokia agent once per test process (idempotent and
/// fast when they are cached). A failure fails the test: tests never skip.
pub fn ensure_cassandra() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(repo_root().join("ops-scripts/fetch-cassandra.sh"))
            .output()
            .expect("ops-scripts/fetch-cassandra.sh runs");
        assert!(
            out.status.success(),
            "fetch-cassandra.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Balanced single tokens for `n` Murmur3 nodes: `i * (2^64 / n) - 2^63`.
pub fn balanced_tokens(n: u32) -> Vec<String> {
    let step = (1i128 << 64) / n as i128;
    (0..n as i128)
        .map(|i| (i * step - (1i128 << 63)).to_string())
        .collect()
}

/// The end of a `[backup]` section that puts backups on S3: `store = "s3"` and
/// the `[backup.s3]` table for `bucket` at `endpoint` with the given keys.
pub fn s3_store_toml(endpoint: &str, bucket: &str, access_key_id: &str, secret: &str) -> String {
    format!(
        "store = \"s3\"\n\n[backup.s3]\nbucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{access_key_id}\"\nsecret_access_key = \"{secret}\"\n"
    )
}

/// Requires an API answer to be status `want` with an `error` that mentions
/// `words`.
/// What `find DIR ARGS…` prints, line by line (nothing when DIR does not
/// exist).
pub fn find(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("find").arg(dir).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn assert_error(status: u16, body: &Value, want: u16, words: &str) {
    assert_eq!(status, want, "{body}");
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {body}"));
    assert!(msg.contains(words), "{msg:?} should mention {words:?}");
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub cluster: String,
    /// The node is 127.0.0.<octet>; its JMX and Jolokia ports derive from it.
    pub octet: u8,
    pub initial_token: Option<String>,
    pub seeds: Vec<String>,
    pub auto_start: bool,
    pub max_restarts_per_hour: u32,
    /// Extra TOML appended to the generated config.
    pub extra_toml: String,
}

impl NodeSpec {
    pub fn new(cluster: &str, octet: u8) -> Self {
        Self {
            cluster: cluster.into(),
            octet,
            initial_token: None,
            seeds: Vec::new(),
            auto_start: true,
            max_restarts_per_hour: 6,
            extra_toml: String::new(),
        }
    }

    fn address(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.octet))
    }

    /// The `anchises node` config for this node, with everything below `dir`.
    pub fn toml(&self, dir: &Path) -> String {
        let mut t = format!(
            "[api]\nlisten = \"{addr}:7878\"\n\n[node]\ncluster_name = \"{cluster}\"\naddress = \"{addr}\"\ndata_dir = \"{dir}\"\njmx_port = {jmx}\njolokia_port = {jolokia}\nheap = \"512MiB\"\nauto_bootstrap = false\n",
            addr = self.address(),
            cluster = self.cluster,
            dir = dir.display(),
            jmx = 17000 + self.octet as u16,
            jolokia = 18000 + self.octet as u16,
        );
        if let Some(token) = &self.initial_token {
            t.push_str(&format!("num_tokens = 1\ninitial_token = \"{token}\"\n"));
        }
        if !self.seeds.is_empty() {
            t.push_str(&format!("seeds = {:?}\n", self.seeds));
        }
        t.push_str(&format!(
            "\n[supervisor]\nauto_start = {}\nbackoff_initial = \"1s\"\nmax_restarts_per_hour = {}\n\n[cassandra]\nfast_start = true\nstart_timeout = \"4m\"\nstop_timeout = \"1m\"\n",
            self.auto_start, self.max_restarts_per_hour
        ));
        t.push_str(&self.extra_toml);
        t
    }
}

/// Starts `anchises node` on `config`, its output appended to `dir/sidecar.log`.
fn spawn_sidecar(config: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("sidecar.log"))
        .expect("sidecar log");
    Command::new(anchises_bin())
        .args(["node", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn anchises node")
}

/// One `anchises node` process and its Cassandra.
pub struct TestNode {
    pub spec: NodeSpec,
    pub address: IpAddr,
    pub dir: PathBuf,
    /// e.g. `http://127.0.0.11:7878`
    pub api: String,
    sidecar: Option<Child>,
    http: reqwest::Client,
}

pub fn test_root() -> PathBuf {
    std::env::var_os("ANCHISES_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("anchises-it"))
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

impl TestNode {
    /// Writes the node's config and starts `anchises node` (which starts Cassandra
    /// unless `auto_start` is off). Returns once the sidecar API answers.
    pub async fn start(spec: NodeSpec) -> TestNode {
        ensure_cassandra();
        let dir = test_root().join(format!("{}-{}", spec.cluster, spec.octet));
        // A JVM left by an earlier, aborted run on this directory would hold the ports.
        if let Some(pid) = read_pid(&dir.join("cassandra.pid")) {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test node dir");
        let config = dir.join("anchises.toml");
        std::fs::write(&config, spec.toml(&dir)).expect("write config");
        let child = spawn_sidecar(&config, &dir);
        let address = spec.address();
        let node = TestNode {
            api: format!("http://{address}:7878"),
            address,
            dir,
            spec,
            sidecar: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = node.try_get("/v1/health").await {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar API did not come up; log:\n{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the sidecar again on the same directory (after `kill_sidecar` or
    /// `stop`), with `toml` as its new config if given. Returns once the API
    /// answers.
    pub async fn respawn(&mut self, toml: Option<String>) {
        assert!(self.sidecar.is_none(), "the sidecar is still running");
        let config = self.dir.join("anchises.toml");
        if let Some(toml) = toml {
            std::fs::write(&config, toml).expect("write config");
        }
        let child = spawn_sidecar(&config, &self.dir);
        self.sidecar = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.try_get("/v1/health").await, Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "sidecar API did not come back; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `anchises --url <this node> ARGS`: whether it exited 0, its
    /// stdout and its stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(anchises_bin())
            .args(["--url", &self.api])
            .args(args)
            .output()
            .expect("run the anchises CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn try_get(&self, path: &str) -> reqwest::Result<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.api)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// GET; returns the status and the JSON body (Null when the body is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path).await.expect("GET reaches the sidecar")
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("GET reaches the sidecar");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Any method with an optional raw body; returns status, `Location`, JSON body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        send_raw(&self.http, &self.api, method, path, body).await
    }

    /// POSTs a node action, expects 202, and waits for the job to finish.
    pub async fn action(&self, action: &str, body: Option<&str>) -> Value {
        let (status, location, job) = self
            .request("POST", &format!("/v1/node/{action}"), body)
            .await;
        assert_eq!(status, 202, "POST /v1/node/{action}: {job}");
        let location = location.expect("a Location header");
        self.wait_job(&location).await
    }

    /// Polls a job (by its `Location`) until it is no longer running.
    pub async fn wait_job(&self, location: &str) -> Value {
        poll_job(&self.http, &self.api, location, Duration::from_secs(300)).await
    }

    /// Waits until `GET /v1/node` says ready (NORMAL and serving CQL); returns it.
    pub async fn wait_normal(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (status, body) = self.get("/v1/node").await;
            if status == 200 && body["ready"] == true {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not NORMAL: {status} {body}\n{}",
                self.address,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The supervisor's view of the JVM (`GET /v1/node/process`).
    pub async fn process(&self) -> Value {
        let (status, body) = self.get("/v1/node/process").await;
        assert_eq!(status, 200);
        body
    }

    /// The JVM's pid, from Cassandra's own pid file.
    pub fn cassandra_pid(&self) -> Option<i32> {
        read_pid(&self.dir.join("cassandra.pid"))
    }

    pub fn sidecar_pid(&self) -> Option<i32> {
        self.sidecar.as_ref().map(|c| c.id() as i32)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// SIGTERM to the sidecar, then waits for it (it drains and stops Cassandra
    /// first). Returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.sidecar.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to the sidecar: no chance to stop Cassandra itself.
    pub fn kill_sidecar(&mut self) {
        if let Some(mut child) = self.sidecar.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `pid` is gone; false after `timeout`.
    pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    pub fn is_alive(pid: i32) -> bool {
        alive(pid)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
        // Whatever happened, no JVM outlives the test.
        if let Some(pid) = self.cassandra_pid() {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                TestNode::wait_gone(pid, Duration::from_secs(10));
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "test failed; node {} left in {} for inspection",
                self.address,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A CQL session to one node (protocol v4 via the scylla driver).
pub async fn cql(address: IpAddr) -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(std::net::SocketAddr::new(address, 9042))
        .build()
        .await
        .expect("cql session")
}

/// Inserts rows `0..rows` of `size` pseudo-random (incompressible, but
/// repeatable) bytes into `table` (`id int PRIMARY KEY, payload blob`), 100
/// writes in flight, at `consistency`.
pub async fn insert_blobs(
    session: &scylla::client::session::Session,
    table: &str,
    rows: i32,
    size: usize,
    consistency: scylla::statement::Consistency,
) {
    let mut insert = session
        .prepare(format!("INSERT INTO {table} (id, payload) VALUES (?, ?)"))
        .await
        .expect("prepare the insert");
    insert.set_consistency(consistency);
    let mut x: u64 = 7;
    let ids: Vec<i32> = (0..rows).collect();
    for chunk in ids.chunks(100) {
        let writes = chunk.iter().map(|&id| {
            let payload: Vec<u8> = (0..size)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) as u8
                })
                .collect();
            session.execute_unpaged(&insert, (id, payload))
        });
        futures::future::try_join_all(writes.collect::<Vec<_>>())
            .await
            .expect("insert blobs");
    }
}

/// An `anchises control` process with its own data directory; dropping it stops
/// every node it runs, and kills any JVM left under its directory.
pub struct TestControl {
    pub url: String,
    pub dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    port: u16,
    first_octet: u8,
}

impl TestControl {
    pub async fn start(name: &str, port: u16, first_octet: u8) -> TestControl {
        ensure_cassandra();
        let dir = test_root().join(format!("control-{name}"));
        kill_jvms_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("control dir");
        let mut control = TestControl {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            port,
            first_octet,
        };
        control.spawn().await;
        control
    }

    /// Starts `anchises control` on this directory and waits for its API.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("control.log"))
            .expect("control log");
        let child = Command::new(anchises_bin())
            .args(["control", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--first-address",
                &self.first_octet.to_string(),
                "--data-dir",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn anchises control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/v1/health").await.0 != 200 {
            assert!(Instant::now() < deadline, "control plane did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the control plane (SIGTERM: it stops its nodes, which drain) and
    /// starts it again on the same directory: it starts the recorded nodes
    /// again, with their slots, tokens and data. Returns once its API answers
    /// (the nodes take longer).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// SIGTERM, then waits (≤ 200 s, then SIGKILL) for the control plane to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(200);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self.http.get(format!("{}{path}", self.url)).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Any method with an optional raw JSON body; returns status, `Location`, body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        send_raw(&self.http, &self.url, method, path, body).await
    }

    /// Polls a job until it is no longer running (clusters take minutes).
    pub async fn wait_job(&self, location: &str) -> Value {
        poll_job(&self.http, &self.url, location, Duration::from_secs(600)).await
    }

    /// JVM pids of every node under this control plane's directory.
    pub fn jvm_pids(&self) -> Vec<i32> {
        jvm_pids_under(&self.dir)
    }
}

fn jvm_pids_under(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "cassandra.pid") {
                if let Some(pid) = read_pid(&p) {
                    if alive(pid) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    pids
}

fn kill_jvms_under(dir: &Path) {
    for pid in jvm_pids_under(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        TestNode::wait_gone(pid, Duration::from_secs(10));
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        self.stop();
        kill_jvms_under(&self.dir);
        if std::thread::panicking() {
            eprintln!("test failed; control plane left in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Any method with an optional raw JSON body against `base`; returns status,
/// `Location` and the JSON body (Null when the body is not JSON).
pub async fn send_raw(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Option<String>, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {base}{path} failed: {e}"));
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (status, location, r.json().await.unwrap_or(Value::Null))
}

/// Polls a job (by its `Location` under `base`) until it is no longer running.
pub async fn poll_job(
    http: &reqwest::Client,
    base: &str,
    location: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, _, job) = send_raw(http, base, "GET", location, None).await;
        assert_eq!(status, 200, "{location}: {job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {location} still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_tokens_split_the_murmur3_ring_evenly() {
        assert_eq!(
            balanced_tokens(3),
            [
                "-9223372036854775808",
                "-3074457345618258603",
                "3074457345618258602"
            ]
        );
    }
}
