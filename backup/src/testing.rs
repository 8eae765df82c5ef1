//! Test fixture: a real moto S3 server as a child process, and S3 store
//! configurations pointing at fresh buckets on it. Behind the `testing` feature
//! so that integration tests elsewhere in the workspace can use it.
//!
//! moto is installed by `ops-scripts/install-test-tools.sh` into
//! `$ANCHISES_CACHE/venv` (default `~/.cache/anchises/venv`); without it the
//! fixture panics with that instruction — a test that needs S3 never skips.
//! The server (moto's app on a single-threaded werkzeug, see [`SERVE`]) listens
//! on 127.0.0.1 on a free port and is stopped on drop; a
//! small shell watchdog also stops it when the test process exits without
//! dropping it (a shared server in a `static`, or a panic that aborts).
//! Credentials are dummies set on the client configuration, never in the
//! process environment, which tests share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::store::{ObjectStore, RetryPolicy, S3Config, S3Credentials, MIN_PART_SIZE};

/// How long moto may take to answer after it starts (it imports a lot of
/// Python on a cold cache).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves moto's app like `moto_server` does, but on a single thread unless
/// the second argument is `threaded`. `moto_server` hard-codes a threaded
/// werkzeug server, and moto 5.2.5 checks `If-Match` / `If-None-Match` and
/// then writes without a lock (`moto/s3/responses.py`, `put_object`), so two
/// racing conditional writes can both win there — never on S3. Serialising
/// requests restores S3's atomicity; [`MotoServer::start_threaded`] is
/// `moto_server` as shipped, for benchmarks that make no racing conditional
/// writes.
const SERVE: &str = r#"
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=sys.argv[2:] == ["threaded"], request_handler=MotoRequestHandler)
"#;

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    watchdog: Child,
    moto_pid: i32,
    endpoint: String,
}

/// Where `install-test-tools.sh` puts moto.
pub fn moto_server_path() -> PathBuf {
    let cache = std::env::var_os("ANCHISES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/anchises")
        });
    cache.join("venv/bin/moto_server")
}

impl MotoServer {
    /// Starts a server of its own, stopped when it is dropped, that serves
    /// one request at a time (see [`SERVE`]).
    pub fn start() -> Self {
        MotoServer::start_serving(false)
    }

    /// Starts a server that serves each request on a thread of its own, as
    /// `moto_server` does: conditional writes can race on it (see
    /// [`SERVE`]), so it is for benchmarks only.
    pub fn start_threaded() -> Self {
        MotoServer::start_serving(true)
    }

    fn start_serving(threaded: bool) -> Self {
        let moto = moto_server_path();
        assert!(
            moto.is_file(),
            "moto_server not found at {}: run ops-scripts/install-test-tools.sh",
            moto.display()
        );
        // The port may be taken between this probe and moto's bind; a few
        // tries make that race harmless.
        let mut last_error = String::new();
        for _ in 0..3 {
            match MotoServer::spawn(&moto, threaded) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    /// One server for the whole test binary, started on first use.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        SHARED.get_or_init(MotoServer::start)
    }

    fn spawn(moto: &std::path::Path, threaded: bool) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        // The shell prints moto's pid, then watches both the test process and
        // moto, and stops moto when the test process is gone.
        let script = r#"
            "$0" -c "$SERVE" "$1" "$4" >/dev/null 2>"$3" &
            moto=$!
            echo "$moto"
            while kill -0 "$2" 2>/dev/null && kill -0 "$moto" 2>/dev/null; do sleep 1; done
            kill "$moto" 2>/dev/null
        "#;
        let log = std::env::temp_dir().join(format!("anchises-moto-{port}.log"));
        let python = moto.with_file_name("python");
        let mut watchdog = Command::new("sh")
            .env("SERVE", SERVE)
            .arg("-c")
            .arg(script)
            .arg(python)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .arg(&log)
            .arg(if threaded { "threaded" } else { "serial" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let mut first_line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped stdout"))
            .read_line(&mut first_line)
            .map_err(|e| format!("cannot read moto's pid: {e}"))?;
        let moto_pid = first_line
            .trim()
            .parse()
            .map_err(|_| format!("unexpected watchdog output {first_line:?}"))?;
        let server = MotoServer {
            watchdog,
            moto_pid,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if kill(Pid::from_raw(moto_pid), None).is_err() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("moto_server exited: {}", log.trim()));
            }
            if answers(port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "moto_server did not answer on port {port} within {START_TIMEOUT:?}"
        ))
    }

    /// From now on, the server checks every request's credentials (and knows
    /// none: it has no IAM users), as AWS does with wrong keys.
    pub fn enforce_auth(&self) {
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint port");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
        stream
            .write_all(
                b"POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0",
            )
            .expect("send reset-auth");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "moto refused reset-auth: {response}"
        );
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// CPU seconds the server has used so far (user + system): when it
    /// serves one request at a time, this is how long it was busy.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.moto_pid))
            .expect("moto's /proc stat");
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("a stat line")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // Linux reports clock ticks of 1/100 s (USER_HZ) on every platform.
        ticks as f64 / 100.0
    }

    /// A configuration for `bucket` on this server, with dummy credentials,
    /// parts of S3's minimum size and raw files above two parts sent as
    /// multipart uploads, so that tests of both kinds of upload stay small.
    pub fn s3_config(&self, bucket: &str) -> S3Config {
        S3Config {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some(S3Credentials {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                session_token: None,
            }),
            part_size: MIN_PART_SIZE,
            multipart_threshold: 2 * MIN_PART_SIZE,
            ..S3Config::new(bucket)
        }
    }

    /// Creates a fresh bucket (a unique name, so tests sharing the server never
    /// meet) and returns its configuration.
    pub async fn create_bucket(&self) -> S3Config {
        let bucket = format!("test-{}", uuid::Uuid::new_v4().simple());
        let config = self.s3_config(&bucket);
        let store = ObjectStore::s3(&config).await.expect("s3 client");
        let s3 = store.s3_backend().expect("an s3 store");
        s3.create_bucket()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {bucket} on moto failed: {e}"));
        config
    }

    /// An S3 object store on a fresh bucket, retrying quickly (moto does not
    /// throttle, so long backoffs would only slow the tests).
    pub async fn store(&self) -> ObjectStore {
        let config = self.create_bucket().await;
        ObjectStore::s3(&config)
            .await
            .expect("s3 store")
            .with_retry_policy(quick_retries())
    }
}

/// Five attempts with millisecond backoff, for tests.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        jitter: true,
    }
}

/// Whether something on `port` answers HTTP.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.moto_pid), Signal::SIGTERM);
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}
