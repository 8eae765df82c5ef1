//! Side-by-side backup and restore benchmark on one real node: the same snapshot of
//! ≥ 2 GB of SSTables backed up by
//! (a) `cp -r` of the snapshot tree, (b) `tar -c | zstd -1 -T0` of it,
//! (c) `medusa backup-node` to local storage, (d) `medusa backup-node` to S3 (moto:
//! one server that serves one request at a time, as the tests use it, and one
//! with a thread per request, as `moto_server` ships),
//! (e) Anchises to its filesystem store, then again unchanged (dedup), (f) `cp -r` of
//! Anchises' store (the restore baseline), (g) an Anchises online restore after
//! TRUNCATE and (h) a full-node restore in place, (i) Anchises to S3 on the same two
//! moto servers,
//! (j) `medusa restore-node` from the local backup (stop, replace the data, start);
//! then the Anchises incremental upload latency after 20 flushes. Prints one table.
//!
//! The load: `BENCH_BACKUP_GB` (default 2) GB on disk in 4 tables of keyspace `bench`,
//! written by concurrent prepared inserts of mostly incompressible blobs (2–32 KiB,
//! deterministic per row id, so a restore can be checked) and some text; then a flush,
//! a wait until compaction settles, and autocompaction off so that every contender
//! sees the same SSTables. Before each timed phase the benchmark waits (≤ 3 min) until
//! the CPUs are ≥ 90 % idle and drops the page cache when the process may (root), so
//! every contender reads the snapshot from disk; each timed phase ends with `sync`;
//! each row's note gives the idle % before it. MB = 10^6 bytes; MB/s = bytes of the
//! `bench` snapshot / seconds (Medusa also backs up the few MB of system keyspaces).
//!
//! `BENCH_SKIP_MEDUSA=1` leaves the Medusa rows out (quicker while tuning).
//!
//! Needs Medusa (`ops-scripts/install-medusa.sh`) and moto
//! (`ops-scripts/install-test-tools.sh`); both are installed if missing.
//!
//! Run:
//! ```sh
//! export CARGO_TARGET_DIR=$HOME/.cache/anchises-target
//! cargo build --release -p anchises --bins
//! cargo run --release -p anchises-integration --example bench_backup
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchises_backup::testing::MotoServer;
use anchises_integration::{
    anchises_bin, ensure_cassandra, repo_root, s3_store_toml, test_root, NodeSpec, TestNode,
};
use serde_json::{json, Value};

const OCTET: u8 = 81;
const KEYSPACE: &str = "bench";
/// Payload size per row of each table: the tables differ in row size.
const PAYLOADS: [usize; 4] = [2 << 10, 8 << 10, 16 << 10, 32 << 10];
/// Inserts in flight.
const WORKERS: u64 = 32;

fn jmx_port() -> u16 {
    17000 + OCTET as u16
}

fn jolokia_port() -> u16 {
    18000 + OCTET as u16
}

/// One contender's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub what: String,
    pub seconds: f64,
    /// Bytes of the snapshot it backed up (or restored).
    pub bytes: u64,
    /// Peak RSS of the tool's own process, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Peak RSS summed over the tool's process tree (e.g. Medusa + its nodetool JVM), KiB.
    pub tree_peak_rss_kib: Option<u64>,
    pub note: String,
}

impl Figures {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

// ---------------------------------------------------------------------------------
// Anchises
// ---------------------------------------------------------------------------------

/// The benchmark node's `[backup]` section: the filesystem store under the work
/// dir, or S3 on `s3 = (endpoint, bucket)`; no schedule; incrementals only when
/// asked (otherwise the load's flushes would fill the store before the timed
/// backup).
fn backup_toml(store: &Path, s3: Option<(&str, &str)>, incremental: bool) -> String {
    let mut t = format!(
        "\n[backup]\nschedule = \"off\"\nincremental = {incremental}\npath = \"{}\"\n",
        store.display()
    );
    if let Some((endpoint, bucket)) = s3 {
        t.push_str(&s3_store_toml(endpoint, bucket, "test", "test"));
    }
    t
}

/// Restarts the sidecar (SIGKILL + start; Cassandra goes down with it and is
/// started again) with the given `[backup]` section, so the next phase's peak
/// RSS is its own; autocompaction stays off.
async fn fresh_sidecar(node: &mut TestNode, backup: String) {
    let mut spec = node.spec.clone();
    spec.extra_toml = backup;
    node.kill_sidecar();
    node.respawn(Some(spec.toml(&node.dir))).await;
    node.wait_normal().await;
    disable_autocompaction().await;
}

/// Waits for a quiet, cold machine, then POSTs `body` to `path` and polls the job
/// until it ends, then `sync`. Returns the finished job and its run: seconds, the
/// sidecar's peak RSS (VmHWM, so the sidecar's whole life) and the idle % before.
async fn timed_job(node: &TestNode, path: &str, body: Value) -> (Value, Run) {
    let (cold, idle_before) = quiet_and_cold();
    let t0 = Instant::now();
    let (status, _, started) = node.request("POST", path, Some(&body.to_string())).await;
    assert_eq!(status, 202, "POST {path} {body}: {started}");
    let location = format!(
        "/v1/jobs/{}",
        started["job"]["id"].as_str().expect("job id")
    );
    let job = anchises_integration::poll_job(
        &reqwest::Client::new(),
        &node.api,
        &location,
        Duration::from_secs(1800),
    )
    .await;
    sh("sync");
    let seconds = t0.elapsed().as_secs_f64();
    assert_eq!(job["state"], "succeeded", "POST {path} {body}: {job}");
    let pid = node.sidecar_pid().expect("sidecar runs") as u32;
    let hwm = proc_status_kib(pid, "VmHWM:");
    let run = Run {
        seconds,
        cold,
        idle_before,
        own_hwm_kib: hwm,
        tree_peak_kib: None,
        log: String::new(),
    };
    (job, run)
}

/// A restore job's seconds in each of `names` phases: "stage 1.2 s, …".
fn phases(job: &Value, names: &[&str]) -> String {
    names
        .iter()
        .map(|p| {
            let s = job["result"]["phase_seconds"][p]
                .as_f64()
                .unwrap_or(f64::NAN);
            format!("{p} {s:.1} s")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn anchises_figures(what: &str, run: &Run, bytes: u64, note: String) -> Figures {
    Figures {
        what: what.into(),
        seconds: run.seconds,
        bytes,
        peak_rss_kib: run.own_hwm_kib,
        tree_peak_rss_kib: None,
        note: format!("{note}; idle before {:.0}%", run.idle_before),
    }
}

fn backup_note(job: &Value) -> String {
    let t = &job["result"]["totals"];
    format!(
        "{} files; uploaded {:.1} MB, reused {:.1} MB, stored {:.1} MB",
        t["files"],
        t["uploaded_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        t["reused_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        t["stored_bytes"].as_f64().unwrap_or(0.0) / 1e6,
    )
}

/// Anchises' rows: a whole-node backup to the filesystem store, a second backup
/// of the unchanged keyspace, `cp -r` of the store (the restore baseline), an
/// online restore after TRUNCATE, a full-node restore in place, and a whole-node
/// backup to S3 on the same moto server as Medusa's.
async fn anchises_runs(
    node: &mut TestNode,
    motos: [&MotoServer; 2],
    store: &Path,
    snapshot_bytes: u64,
    rows: i64,
    work: &Path,
) -> Vec<Figures> {
    let mut out = Vec::new();
    let fs_toml = backup_toml(store, None, false);

    // Backup to the filesystem store: the whole node, as Medusa does.
    fresh_sidecar(node, fs_toml.clone()).await;
    let (job, run) = timed_job(node, "/v1/backups", json!({})).await;
    let backup_id = job["result"]["backup_id"]
        .as_str()
        .expect("backup id")
        .to_string();
    out.push(anchises_figures(
        "anchises backup (filesystem store)",
        &run,
        snapshot_bytes,
        backup_note(&job),
    ));

    // The same keyspace again, unchanged: nothing to upload.
    let (job, run) = timed_job(node, "/v1/backups", json!({"keyspaces": [KEYSPACE]})).await;
    let uploaded = job["result"]["totals"]["uploaded_bytes"].as_u64();
    println!("anchises second backup of unchanged `{KEYSPACE}`: uploaded {uploaded:?} bytes");
    assert_eq!(
        uploaded,
        Some(0),
        "the second backup uploads nothing: {job}"
    );
    out.push(anchises_figures(
        "anchises 2nd backup (unchanged)",
        &run,
        snapshot_bytes,
        backup_note(&job),
    ));

    // Restore baseline: cp -r of the store (every object the restores read).
    let copy = work.join("store-copy");
    let mut cmd = Command::new("cp");
    cmd.arg("-r").arg(store).arg(&copy);
    let run = run_measured(cmd, &work.join("cp-store.log"));
    let store_bytes = dir_bytes(&copy);
    out.push(Figures {
        what: "cp -r backup store (restore baseline)".into(),
        seconds: run.seconds,
        bytes: store_bytes,
        peak_rss_kib: run.own_hwm_kib,
        tree_peak_rss_kib: None,
        note: format!(
            "{:.1} MB, MB/s of those; idle before {:.0}%",
            store_bytes as f64 / 1e6,
            run.idle_before
        ),
    });
    std::fs::remove_dir_all(&copy).expect("remove store copy");

    // Online restore: TRUNCATE every table, then import the backup's SSTables.
    {
        let session = anchises_integration::cql(node.address).await;
        for t in 0..PAYLOADS.len() {
            session
                .query_unpaged(format!("TRUNCATE {KEYSPACE}.t{t}"), ())
                .await
                .expect("truncate");
        }
        let left = count_rows(&session).await;
        assert_eq!(left, 0, "the tables are empty after TRUNCATE");
    }
    // TRUNCATE's automatic snapshots would double the disk use.
    clear_snapshots().await;
    fresh_sidecar(node, fs_toml.clone()).await;
    let (job, run) = timed_job(
        node,
        "/v1/restores",
        json!({"backup_id": backup_id, "keyspaces": [KEYSPACE]}),
    )
    .await;
    check_sample(node, rows, "online restore").await;
    out.push(anchises_figures(
        "anchises online restore (fs store)",
        &run,
        snapshot_bytes,
        format!(
            "{} files ({} downloaded, {} linked), {:.1} MB; {}",
            job["result"]["files"],
            job["result"]["downloaded"],
            job["result"]["linked"],
            job["result"]["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            phases(&job, &["stage", "schema", "import"]),
        ),
    ));

    // Full-node restore in place: stop, move aside, lay out, start, NORMAL.
    fresh_sidecar(node, fs_toml.clone()).await;
    let (job, run) = timed_job(
        node,
        "/v1/restores",
        json!({"backup_id": backup_id, "mode": "full"}),
    )
    .await;
    node.wait_normal().await;
    check_sample(node, rows, "full-node restore").await;
    disable_autocompaction().await;
    out.push(anchises_figures(
        "anchises full-node restore (fs, in place)",
        &run,
        snapshot_bytes,
        format!(
            "{} files ({} downloaded, {} linked), {:.1} MB; {}, down {:.1} s",
            job["result"]["files"],
            job["result"]["downloaded"],
            job["result"]["linked"],
            job["result"]["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            phases(&job, &["stage", "stop", "swap", "start", "verify"]),
            job["result"]["down_seconds"].as_f64().unwrap_or(f64::NAN)
        ),
    ));

    // On each moto server (one request at a time, then a thread per
    // request): what moto itself takes, the snapshot's bytes as 8 MiB PUTs,
    // 4 at a time, from memory (no reading, hashing or compression), the
    // ceiling of any backup to this server; then the backup.
    for (moto, kind) in motos.into_iter().zip(["S3 on moto", "S3, threaded moto"]) {
        out.push(moto_ceiling(moto, snapshot_bytes, kind).await);
        let bucket = moto.create_bucket().await.bucket;
        fresh_sidecar(
            node,
            backup_toml(store, Some((moto.endpoint(), bucket.as_str())), false),
        )
        .await;
        let moto_before = moto.cpu_seconds();
        let (job, run) = timed_job(node, "/v1/backups", json!({})).await;
        let moto_busy = moto.cpu_seconds() - moto_before;
        out.push(anchises_figures(
            &format!("anchises backup ({kind})"),
            &run,
            snapshot_bytes,
            format!(
                "{}; {}",
                backup_note(&job),
                busy_note(moto_busy, run.seconds)
            ),
        ));
    }
    fresh_sidecar(node, fs_toml).await;
    out
}

/// (d) `medusa backup-node` to a fresh bucket on `moto`; the run's figures and
/// whether the page cache was dropped before it.
async fn medusa_s3_backup(
    node: &TestNode,
    moto: &MotoServer,
    work: &Path,
    snapshot_bytes: u64,
    label: &str,
) -> (Figures, bool) {
    let bucket = moto.create_bucket().await.bucket;
    let port = moto
        .endpoint()
        .rsplit(':')
        .next()
        .expect("endpoint port")
        .to_string();
    let credentials = work.join("medusa-s3-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .expect("write credentials");
    let s3_ini = work.join(format!("medusa-s3-{port}.ini"));
    std::fs::write(
        &s3_ini,
        medusa_ini(
            node,
            &format!(
                "storage_provider = s3_compatible\nhost = 127.0.0.1\nport = {port}\nsecure = False\nssl_verify = False\nregion = us-east-1\ns3_addressing_style = path\nkey_file = {}\nbucket_name = {bucket}",
                credentials.display()
            ),
        ),
    )
    .expect("write medusa ini");
    let moto_before = moto.cpu_seconds();
    let run = run_measured(
        medusa_cmd(
            &s3_ini,
            &["backup-node", "--backup-name", &format!("bench-s3-{port}")],
        ),
        &work.join(format!("medusa-backup-s3-{port}.log")),
    );
    let moto_busy = moto.cpu_seconds() - moto_before;
    let figures = medusa_figures(
        label,
        &run,
        snapshot_bytes,
        format!(
            "{}; {}",
            medusa_summary(&run.log),
            busy_note(moto_busy, run.seconds)
        ),
    );
    (figures, run.cold)
}

async fn moto_ceiling(moto: &MotoServer, bytes: u64, kind: &str) -> Figures {
    use futures::StreamExt;
    const PART: usize = 8 << 20;
    let store = anchises_backup::ObjectStore::s3(&moto.create_bucket().await)
        .await
        .expect("s3 store");
    let body = bytes::Bytes::from((0..PART).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let count = bytes.div_ceil(PART as u64);
    let (_, idle_before) = quiet_and_cold();
    let moto_before = moto.cpu_seconds();
    let t0 = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let (store, body) = (&store, body.clone());
            async move {
                let key =
                    anchises_backup::store::ObjectKey::new(format!("ceiling/{i}")).expect("key");
                store.put(&key, body).await.expect("put to moto");
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let seconds = t0.elapsed().as_secs_f64();
    Figures {
        what: format!("PUTs from memory ({kind}, ceiling)"),
        seconds,
        bytes: count * PART as u64,
        peak_rss_kib: None,
        tree_peak_rss_kib: None,
        note: format!(
            "{count} objects of 8 MiB, 4 at a time; {}; idle before {idle_before:.0}%",
            busy_note(moto.cpu_seconds() - moto_before, seconds)
        ),
    }
}

/// How much CPU time moto used during a run: when it serves one request at a
/// time, how long it was busy.
fn busy_note(busy: f64, seconds: f64) -> String {
    format!(
        "moto CPU {busy:.1} s ({:.0}% of the run)",
        100.0 * busy / seconds
    )
}

/// Incremental pick-up: with incrementals on (a restart, so that Cassandra's
/// `incremental_backups` follows), `rounds` times: write rows, flush, and time
/// until the sidecar has uploaded the flushed SSTables and removed their
/// `backups/` links. Returns the latencies in seconds, sorted.
async fn anchises_incrementals(
    node: &mut TestNode,
    store: &Path,
    first_row: i64,
    rounds: usize,
) -> Vec<f64> {
    let mut spec = node.spec.clone();
    spec.extra_toml = backup_toml(store, None, true);
    assert!(node.stop(), "the sidecar stops");
    node.respawn(Some(spec.toml(&node.dir))).await;
    node.wait_normal().await;
    let session = Arc::new(anchises_integration::cql(node.address).await);
    let ks_dir = node.data_dir().join(KEYSPACE);
    let mut latencies = Vec::new();
    for round in 0..rounds as i64 {
        insert_rows(&session, first_row + round * 400, 400).await;
        flush(node).await;
        let flushed = Instant::now();
        // The flush just made links under backups/; they go once uploaded and logged.
        assert!(
            links_under_backups(&ks_dir) > 0,
            "the flush left backups/ links"
        );
        while links_under_backups(&ks_dir) > 0 {
            assert!(
                flushed.elapsed() < Duration::from_secs(120),
                "incremental links still there after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(flushed.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Data.db files under the keyspace's `backups/` directories.
fn links_under_backups(ks_dir: &Path) -> usize {
    std::fs::read_dir(ks_dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| {
            std::fs::read_dir(t.path().join("backups"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|f| f.file_name().to_string_lossy().ends_with("Data.db"))
        .count()
}

async fn clear_snapshots() {
    let http = reqwest::Client::new();
    jolokia(
        &http,
        json!({"type": "exec", "mbean": "org.apache.cassandra.db:type=StorageService",
               "operation": "clearSnapshot(java.util.Map,java.lang.String,[Ljava.lang.String;)",
               "arguments": [{}, "", [KEYSPACE]]}),
    )
    .await;
}

async fn disable_autocompaction() {
    jolokia(
        &reqwest::Client::new(),
        json!({"type": "exec", "mbean": "org.apache.cassandra.db:type=StorageService",
               "operation": "disableAutoCompaction(java.lang.String,[Ljava.lang.String;)",
               "arguments": [KEYSPACE, []]}),
    )
    .await;
}

async fn count_rows(session: &scylla::client::session::Session) -> i64 {
    let mut n = 0;
    for t in 0..PAYLOADS.len() {
        let (c,) = session
            .query_unpaged(format!("SELECT count(*) FROM {KEYSPACE}.t{t}"), ())
            .await
            .expect("count")
            .into_rows_result()
            .expect("rows")
            .single_row::<(i64,)>()
            .expect("one count");
        n += c;
    }
    n
}

/// 200 rows sampled from `0..rows` read back exactly as written.
async fn check_sample(node: &TestNode, rows: i64, after: &str) {
    let session = anchises_integration::cql(node.address).await;
    let mut rng = Rng(42);
    for _ in 0..200 {
        let id = (rng.next() % rows as u64) as i64;
        let (note, payload) = row(id);
        let (got_note, got_payload) = session
            .query_unpaged(
                format!(
                    "SELECT note, payload FROM {KEYSPACE}.t{} WHERE id = ?",
                    table_of(id)
                ),
                (id,),
            )
            .await
            .unwrap_or_else(|e| panic!("read after {after}: {e}"))
            .into_rows_result()
            .expect("rows")
            .single_row::<(String, Vec<u8>)>()
            .unwrap_or_else(|e| panic!("row {id} after {after}: {e}"));
        assert!(
            got_note == note && got_payload == payload,
            "row {id} differs after {after}"
        );
    }
    println!("after {after}: 200 sampled rows match");
}

// ---------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------

/// splitmix64: a fast deterministic generator, so a row's content follows from its id.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn table_of(id: i64) -> usize {
    (id as u64 % PAYLOADS.len() as u64) as usize
}

/// Row `id`: 7/8 random bytes and 1/8 a repeated phrase (incompressible-ish), and a
/// short text of words.
fn row(id: i64) -> (String, Vec<u8>) {
    const WORDS: [&str; 12] = [
        "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo",
        "juniper", "krypton", "lagoon",
    ];
    let mut rng = Rng(id as u64 ^ 0xA5A5_5A5A_0123_4567);
    let size = PAYLOADS[table_of(id)];
    let mut payload = Vec::with_capacity(size);
    let random = size / 8 * 7;
    while payload.len() < random {
        payload.extend_from_slice(&rng.next().to_le_bytes());
    }
    payload.truncate(random);
    let phrase = format!("anchises bench row {id} ");
    while payload.len() < size {
        payload.extend_from_slice(phrase.as_bytes());
    }
    payload.truncate(size);
    let mut note = format!("row {id}:");
    for _ in 0..12 {
        note.push(' ');
        note.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
    }
    (note, payload)
}

/// Inserts rows `first..first + count` with `WORKERS` inserts in flight.
async fn insert_rows(session: &Arc<scylla::client::session::Session>, first: i64, count: i64) {
    let mut statements = Vec::new();
    for t in 0..PAYLOADS.len() {
        let mut p = session
            .prepare(format!(
                "INSERT INTO {KEYSPACE}.t{t} (id, note, payload) VALUES (?, ?, ?)"
            ))
            .await
            .expect("prepare insert");
        p.set_is_idempotent(true);
        statements.push(p);
    }
    let statements = Arc::new(statements);
    let written = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS as i64 {
        let (session, statements, written) = (session.clone(), statements.clone(), written.clone());
        tasks.spawn(async move {
            let mut id = first + w;
            while id < first + count {
                let (note, payload) = row(id);
                let bytes = (note.len() + payload.len() + 8) as u64;
                let mut attempt = 0;
                loop {
                    match session
                        .execute_unpaged(&statements[table_of(id)], (id, &note, &payload))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if attempt < 10 => {
                            attempt += 1;
                            eprintln!("insert {id} failed ({e}); retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => panic!("insert {id} failed 10 times: {e}"),
                    }
                }
                written.fetch_add(bytes, Ordering::Relaxed);
                id += WORKERS as i64;
            }
        });
    }
    let progress = {
        let written = written.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let w = written.load(Ordering::Relaxed);
                println!(
                    "  load: {:.0} MB written in {:.0} s ({:.1} MB/s)",
                    w as f64 / 1e6,
                    t0.elapsed().as_secs_f64(),
                    w as f64 / 1e6 / t0.elapsed().as_secs_f64()
                );
            }
        })
    };
    while let Some(r) = tasks.join_next().await {
        r.expect("insert worker");
    }
    progress.abort();
    let w = written.load(Ordering::Relaxed);
    println!(
        "  load: {} rows, {:.0} MB in {:.1} s ({:.1} MB/s through CQL)",
        count,
        w as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        w as f64 / 1e6 / t0.elapsed().as_secs_f64()
    );
}

/// Live SSTable bytes and Data.db count under `data/<ks>` (not snapshots/ or backups/).
fn live_bytes(ks_dir: &Path) -> (u64, usize) {
    let (mut bytes, mut sstables) = (0, 0);
    for table in std::fs::read_dir(ks_dir).expect("keyspace dir").flatten() {
        for f in std::fs::read_dir(table.path())
            .expect("table dir")
            .flatten()
        {
            // A compaction may remove a file between the listing and here.
            let Ok(meta) = f.metadata() else {
                continue;
            };
            if meta.is_file() {
                bytes += meta.len();
                sstables += f.file_name().to_string_lossy().ends_with("-Data.db") as usize;
            }
        }
    }
    (bytes, sstables)
}

async fn jolokia(http: &reqwest::Client, body: Value) -> Value {
    let r: Value = http
        .post(format!("http://127.0.0.1:{}/jolokia/", jolokia_port()))
        .json(&body)
        .send()
        .await
        .expect("jolokia answers")
        .json()
        .await
        .expect("jolokia JSON");
    assert_eq!(r["status"], 200, "jolokia: {r}");
    r["value"].clone()
}

async fn flush(node: &TestNode) {
    let job = node
        .action("flush", Some(&json!({ "keyspace": KEYSPACE }).to_string()))
        .await;
    assert_eq!(job["state"], "succeeded", "flush: {job}");
}

/// Waits until no compaction runs or is pending (twice in a row, 5 s apart).
async fn wait_compactions(http: &reqwest::Client) -> Duration {
    let t0 = Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        let pending = jolokia(
            http,
            json!({"type": "read", "mbean": "org.apache.cassandra.metrics:type=Compaction,name=PendingTasks", "attribute": "Value"}),
        )
        .await;
        let active = jolokia(
            http,
            json!({"type": "read", "mbean": "org.apache.cassandra.db:type=CompactionManager", "attribute": "Compactions"}),
        )
        .await;
        let busy =
            pending.as_u64().unwrap_or(1) > 0 || active.as_array().is_none_or(|a| !a.is_empty());
        quiet = if busy { 0 } else { quiet + 1 };
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "compactions still running after an hour"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    t0.elapsed()
}

// ---------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------

fn cache_dir() -> PathBuf {
    std::env::var_os("ANCHISES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/anchises")
        })
}

fn run_script(name: &str) {
    let status = Command::new(repo_root().join("ops-scripts").join(name))
        .status()
        .unwrap_or_else(|e| panic!("ops-scripts/{name}: {e}"));
    assert!(status.success(), "ops-scripts/{name} failed");
}

/// CPU ticks (idle, total) from /proc/stat; iowait counts as busy, so pending
/// writeback shows as not quiet.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    (ticks[3], ticks.iter().sum())
}

/// Bytes read and written so far by the machine's whole disks (`/proc/diskstats`,
/// sectors of 512 B; partitions and virtual devices left out).
fn disk_bytes() -> u64 {
    let stats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(2)?;
            let whole = std::path::Path::new("/sys/block").join(name).exists()
                && !name.starts_with("loop")
                && !name.starts_with("ram")
                && !name.starts_with("zram");
            let sectors = f.get(5)?.parse::<u64>().ok()? + f.get(9)?.parse::<u64>().ok()?;
            whole.then_some(sectors * 512)
        })
        .sum()
}

/// Before a timed phase: waits (up to 3 min) until, over 5 s, the CPUs were ≥ 90 %
/// idle and the disks moved < 1 MB/s, so the phase does not share the 2 cores or the
/// disk with the tail of the load (compaction, which Cassandra throttles to a few
/// percent of a core, writeback) or anything else on the machine; then `sync` and
/// drops the page cache if this process may. Returns whether it could drop it, and
/// the last idle percentage.
fn quiet_and_cold() -> (bool, f64) {
    let t0 = Instant::now();
    let idle = loop {
        let (i0, t0_ticks) = cpu_ticks();
        let d0 = disk_bytes();
        std::thread::sleep(Duration::from_secs(5));
        let (i1, t1_ticks) = cpu_ticks();
        let disk = (disk_bytes() - d0) as f64 / 5e6;
        let idle = (i1 - i0) as f64 * 100.0 / (t1_ticks - t0_ticks).max(1) as f64;
        let waited = t0.elapsed().as_secs_f64();
        if (idle >= 90.0 && disk < 1.0) || waited > 180.0 {
            eprintln!("  quiet after {waited:.0} s: {idle:.0}% idle, disk {disk:.1} MB/s");
            break idle;
        }
    };
    sh("sync");
    (
        std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok(),
        idle,
    )
}

fn sh(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("sh runs");
    assert!(status.success(), "`{script}` failed");
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        {
            parents.push((p, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

struct Run {
    seconds: f64,
    /// Whether the page cache was dropped before it.
    cold: bool,
    /// CPU idle % over the 5 s before it (other work on the machine shows here).
    idle_before: f64,
    own_hwm_kib: Option<u64>,
    tree_peak_kib: Option<u64>,
    log: String,
}

/// Waits for a quiet machine and drops the page cache ([`quiet_and_cold`]), then runs
/// `cmd` (output to `log`) to completion, sampling its memory every 50 ms, then
/// `sync`; panics when it fails.
fn run_measured(mut cmd: Command, log: &Path) -> Run {
    let out = std::fs::File::create(log).expect("log file");
    let (cold, idle_before) = quiet_and_cold();
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (mut own, mut tree_peak) = (None, None::<u64>);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if let Some(hwm) = proc_status_kib(pid, "VmHWM:") {
            own = Some(hwm);
        }
        let rss: u64 = process_tree(pid)
            .into_iter()
            .filter_map(|p| proc_status_kib(p, "VmRSS:"))
            .sum();
        tree_peak = Some(tree_peak.unwrap_or(0).max(rss));
        std::thread::sleep(Duration::from_millis(50));
    };
    sh("sync");
    let seconds = t0.elapsed().as_secs_f64();
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "{cmd:?} failed ({status}); log {}:\n{}",
        log.display(),
        tail(&log_text, 40)
    );
    Run {
        seconds,
        cold,
        idle_before,
        own_hwm_kib: own,
        tree_peak_kib: tree_peak,
        log: log_text,
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Seconds since midnight of a Medusa log line `[YYYY-MM-DD HH:MM:SS,mmm] …` that
/// contains `needle`.
fn medusa_log_time(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let time = line.get(12..24)?; // HH:MM:SS,mmm
    let (hms, ms) = time.split_once(',')?;
    let mut parts = hms.split(':').map(|p| p.parse::<f64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(h * 3600.0 + m * 60.0 + s + ms.parse::<f64>().ok()? / 1000.0)
}

/// The medusa.ini for the benchmark node with the given `[storage]` section.
fn medusa_ini(node: &TestNode, storage: &str) -> String {
    let anchises = anchises_bin();
    format!(
        "\
; Generated by integration/examples/bench_backup.rs.
[cassandra]
; Medusa reads data_file_directories, commitlog_directory, saved_caches_directory,
; listen_address (its CQL contact point) and native_transport_port from here.
config_file = {yaml}
; A Maven-jar install has no nodetool: ops-scripts/nodetool runs NodeTool from the
; cached classpath. Medusa appends -h/-p from these two.
nodetool_executable = {nodetool}
nodetool_host = 127.0.0.1
nodetool_port = {jmx}
; restore-node stops and starts Cassandra with these (the defaults use sudo service).
stop_cmd = {anchises} --url {api} node stop
start_cmd = {anchises} --url {api} node start
; Keep host names as IP addresses: no reverse DNS, and the token map is keyed by the
; node's address, which must equal [storage] fqdn for restore-node to find its tokens.
resolve_ip_addresses = False
use_sudo = False

[storage]
{storage}
; The backup's directory in the bucket: the node's address (not socket.getfqdn()).
fqdn = {address}
; restore-node runs `sudo rm/mv/chown` unless this is off (there is no sudo here).
use_sudo_for_restore = False
; The default caps transfers at 50MB/s; lift it to measure the tool, not the knob.
transfer_max_bandwidth = 10GB/s
; Files in flight (default 1): one per core.
concurrent_transfers = 2

[grpc]
enabled = False

[kubernetes]
enabled = False

[monitoring]
monitoring_provider = None

[logging]
enabled = False
",
        yaml = node.dir.join("conf/cassandra.yaml").display(),
        nodetool = repo_root().join("ops-scripts/nodetool").display(),
        jmx = jmx_port(),
        anchises = anchises.display(),
        api = node.api,
        address = node.address,
    )
}

fn medusa_cmd(ini: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(cache_dir().join("medusa-venv/bin/medusa"));
    cmd.arg("--config-file").arg(ini).args(args);
    cmd
}

fn medusa_figures(what: &str, run: &Run, bytes: u64, note: String) -> Figures {
    Figures {
        what: what.into(),
        seconds: run.seconds,
        bytes,
        peak_rss_kib: run.own_hwm_kib,
        tree_peak_rss_kib: run.tree_peak_kib,
        note: format!("{note}; idle before {:.0}%", run.idle_before),
    }
}

/// Medusa's own summary line, e.g. "296 files, 2.01 GB".
fn medusa_summary(log: &str) -> String {
    log.lines()
        .find(|l| l.contains(" files, ") && l.contains("INFO: - "))
        .and_then(|l| l.split("INFO: - ").nth(1))
        .unwrap_or("?")
        .to_string()
}

fn print_table(rows: &[Figures], snapshot_bytes: u64, cold: bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsnapshot of `{KEYSPACE}`: {:.1} MB; page cache dropped before each phase: {}",
        snapshot_bytes as f64 / 1e6,
        if cold { "yes" } else { "no (not root): warm" }
    );
    let _ = writeln!(
        out,
        "| {:<38} | {:>9} | {:>8} | {:>13} | {:>15} | note",
        "contender", "seconds", "MB/s", "peak RSS MiB", "tree RSS MiB"
    );
    let _ = writeln!(out, "|{}|", "-".repeat(114));
    let mib = |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.0}", k as f64 / 1024.0));
    for f in rows {
        let _ = writeln!(
            out,
            "| {:<38} | {:>9.1} | {:>8.1} | {:>13} | {:>15} | {}",
            f.what,
            f.seconds,
            f.mb_per_s(),
            mib(f.peak_rss_kib),
            mib(f.tree_peak_rss_kib),
            f.note
        );
    }
    println!("{out}");
}

#[tokio::main]
async fn main() {
    let gb: f64 = std::env::var("BENCH_BACKUP_GB")
        .ok()
        .map(|v| v.parse().expect("BENCH_BACKUP_GB is a number"))
        .unwrap_or(2.0);
    let target = (gb * 1e9) as u64;
    ensure_cassandra();
    run_script("install-medusa.sh");
    run_script("install-test-tools.sh");
    let http = reqwest::Client::new();
    let work = test_root().join("bench-backup-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    println!(
        "binary: {}; target {:.1} GB on disk; work dir {}",
        anchises_bin().display(),
        gb,
        work.display()
    );

    // One node.
    let store = work.join("anchises-store");
    let spec = NodeSpec {
        initial_token: Some("0".into()),
        extra_toml: backup_toml(&store, None, false),
        ..NodeSpec::new("benchbk", OCTET)
    };
    let mut node = TestNode::start(spec).await;
    node.wait_normal().await;
    let ks_dir = node.data_dir().join(KEYSPACE);

    // Load until the keyspace holds the target on disk.
    let t_load = Instant::now();
    let session = Arc::new(anchises_integration::cql(node.address).await);
    session
        .query_unpaged(
            format!("CREATE KEYSPACE {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            (),
        )
        .await
        .expect("create keyspace");
    for t in 0..PAYLOADS.len() {
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE {KEYSPACE}.t{t} (id bigint PRIMARY KEY, note text, payload blob)"
                ),
                (),
            )
            .await
            .expect("create table");
    }
    let mean_row = PAYLOADS.iter().sum::<usize>() as f64 / PAYLOADS.len() as f64 + 120.0;
    let mut rows: i64 = 0;
    loop {
        let (on_disk, _) = live_bytes(&ks_dir);
        if on_disk >= target {
            break;
        }
        let more = (((target - on_disk) as f64 * 1.15 / mean_row) as i64).max(1000);
        insert_rows(&session, rows, more).await;
        rows += more;
        flush(&node).await;
    }
    let loaded = t_load.elapsed();
    let settle = wait_compactions(&http).await;
    // Freeze the SSTable set for the rest of the run (not persistent: a restart undoes it).
    disable_autocompaction().await;
    let (on_disk, sstables) = live_bytes(&ks_dir);
    println!(
        "loaded {rows} rows: {:.1} MB on disk in {sstables} SSTables under {} (load + flushes {:.0} s, compactions settled after {:.0} s more)",
        on_disk as f64 / 1e6,
        ks_dir.display(),
        loaded.as_secs_f64(),
        settle.as_secs_f64()
    );

    // The snapshot (a) and (b) copy, seen through a tree of hard links.
    let tag = "bench-base";
    jolokia(
        &http,
        json!({"type": "exec", "mbean": "org.apache.cassandra.db:type=StorageService",
               "operation": "takeSnapshot(java.lang.String,java.util.Map,[Ljava.lang.String;)",
               "arguments": [tag, {}, [KEYSPACE]]}),
    )
    .await;
    let view = work.join("snapshot-view");
    let mut snapshot_files: Vec<(String, u64)> = Vec::new();
    for table in std::fs::read_dir(&ks_dir).expect("keyspace dir").flatten() {
        let snap = table.path().join("snapshots").join(tag);
        let dest = view.join(KEYSPACE).join(table.file_name());
        std::fs::create_dir_all(&dest).expect("view dir");
        for f in std::fs::read_dir(&snap).expect("snapshot dir").flatten() {
            std::fs::hard_link(f.path(), dest.join(f.file_name())).expect("hard link");
            let name = format!(
                "{}/{}",
                table.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            snapshot_files.push((name, f.metadata().expect("stat").len()));
        }
    }
    let snapshot_bytes: u64 = snapshot_files.iter().map(|(_, n)| n).sum();
    // Files above the S3 multipart threshold (512 MiB by default) go up in
    // parts: whether the load made one changes the S3 rows.
    let largest = snapshot_files.iter().map(|(_, n)| *n).max().unwrap_or(0);
    println!(
        "snapshot {tag}: {} files, {:.1} MB; largest {:.1} MiB",
        snapshot_files.len(),
        snapshot_bytes as f64 / 1e6,
        largest as f64 / (1024.0 * 1024.0)
    );

    let mut results = Vec::new();
    let mut cold = true;

    // (a) cp -r
    let target_dir = work.join("cp-target");
    let mut cmd = Command::new("cp");
    cmd.arg("-r").arg(view.join(KEYSPACE)).arg(&target_dir);
    let run = run_measured(cmd, &work.join("cp.log"));
    cold &= run.cold;
    let copied = dir_bytes(&target_dir);
    assert_eq!(copied, snapshot_bytes, "cp -r copied everything");
    results.push(Figures {
        what: "cp -r snapshot".into(),
        seconds: run.seconds,
        bytes: snapshot_bytes,
        peak_rss_kib: run.own_hwm_kib,
        tree_peak_rss_kib: None,
        note: format!("same disk; idle before {:.0}%", run.idle_before),
    });
    std::fs::remove_dir_all(&target_dir).expect("remove cp target");

    // (b) tar | zstd -1 -T0
    let archive = work.join("snapshot.tar.zst");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "tar -C '{}' -cf - {KEYSPACE} | zstd -1 -T0 -q -o '{}'",
        view.display(),
        archive.display()
    ));
    let run = run_measured(cmd, &work.join("tar.log"));
    cold &= run.cold;
    let compressed = std::fs::metadata(&archive).expect("archive").len();
    results.push(Figures {
        what: "tar | zstd -1 -T0".into(),
        seconds: run.seconds,
        bytes: snapshot_bytes,
        peak_rss_kib: None,
        tree_peak_rss_kib: run.tree_peak_kib,
        note: format!(
            "archive {:.1} MB ({:.1}% of input); idle before {:.0}%",
            compressed as f64 / 1e6,
            compressed as f64 * 100.0 / snapshot_bytes as f64,
            run.idle_before
        ),
    });
    std::fs::remove_file(&archive).expect("remove archive");
    jolokia(
        &http,
        json!({"type": "exec", "mbean": "org.apache.cassandra.db:type=StorageService",
               "operation": "clearSnapshot(java.util.Map,java.lang.String,[Ljava.lang.String;)",
               "arguments": [{}, tag, [KEYSPACE]]}),
    )
    .await;
    std::fs::remove_dir_all(&view).expect("remove view");

    // (c) medusa backup-node to local storage
    let local_store = work.join("medusa-local");
    std::fs::create_dir_all(&local_store).expect("medusa store dir");
    let local_ini = work.join("medusa-local.ini");
    std::fs::write(
        &local_ini,
        medusa_ini(
            &node,
            &format!(
                "storage_provider = local\nbase_path = {}\nbucket_name = medusa",
                local_store.display()
            ),
        ),
    )
    .expect("write medusa ini");
    // (BENCH_SKIP_MEDUSA=1 leaves Medusa out, e.g. while tuning Anchises.)
    let medusa = std::env::var_os("BENCH_SKIP_MEDUSA").is_none();
    let moto = MotoServer::start();
    let moto_threaded = MotoServer::start_threaded();
    if medusa {
        let run = run_measured(
            medusa_cmd(&local_ini, &["backup-node", "--backup-name", "bench-local"]),
            &work.join("medusa-backup-local.log"),
        );
        cold &= run.cold;
        let stored = dir_bytes(&local_store);
        results.push(medusa_figures(
            "medusa backup-node (local)",
            &run,
            snapshot_bytes,
            format!(
                "{}; {:.1} MB in the store",
                medusa_summary(&run.log),
                stored as f64 / 1e6
            ),
        ));

        // (d) medusa backup-node to S3 on moto: one request at a time, then
        // moto_server as shipped (a thread per request).
        for (moto, label) in [
            (&moto, "medusa backup-node (S3 on moto)"),
            (&moto_threaded, "medusa backup-node (S3, threaded moto)"),
        ] {
            let (figures, run_cold) =
                medusa_s3_backup(&node, moto, &work, snapshot_bytes, label).await;
            cold &= run_cold;
            results.push(figures);
        }
    }

    // Anchises, same node, same moto.
    results.extend(
        anchises_runs(
            &mut node,
            [&moto, &moto_threaded],
            &store,
            snapshot_bytes,
            rows,
            &work,
        )
        .await,
    );
    drop(moto);
    drop(moto_threaded);

    // (e) medusa restore-node from the local backup (in place: stop, replace, start).
    if medusa {
        let restore_tmp = work.join("restore-tmp");
        std::fs::create_dir_all(&restore_tmp).expect("restore temp dir");
        let run = run_measured(
            medusa_cmd(
                &local_ini,
                &[
                    "restore-node",
                    "--backup-name",
                    "bench-local",
                    "--temp-dir",
                    &restore_tmp.display().to_string(),
                ],
            ),
            &work.join("medusa-restore-local.log"),
        );
        cold &= run.cold;
        // Phases from Medusa's log; "other" is the rest: Python start, reading the backup
        // index, and `anchises node start` until the node is NORMAL again.
        let phase = |from: &str, to: &str| -> Option<f64> {
            Some(medusa_log_time(&run.log, to)? - medusa_log_time(&run.log, from)?)
        };
        let phases = [
            (
                "download",
                phase("Downloading data from backup", "Stopping Cassandra"),
            ),
            ("stop", phase("Stopping Cassandra", "Moving backup data")),
            ("move", phase("Moving backup data", "Starting Cassandra")),
        ];
        let mut note = String::new();
        for (name, secs) in phases {
            let _ = match secs {
                Some(s) => write!(note, "{name} {s:.1} s, "),
                None => write!(note, "{name} ? s, "),
            };
        }
        let known: f64 = phases.iter().filter_map(|(_, s)| *s).sum();
        let _ = write!(
            note,
            "other (start to NORMAL, ...) {:.1} s",
            run.seconds - known
        );
        results.push(medusa_figures(
            "medusa restore-node (local, in place)",
            &run,
            snapshot_bytes,
            note,
        ));

        // The restored node serves the rows it had (sampled), from the same SSTables.
        node.wait_normal().await;
        check_sample(&node, rows, "medusa restore-node").await;
        let (restored_bytes, restored_sstables) = live_bytes(&ks_dir);
        println!(
        "after restore: 200 sampled rows match; {restored_sstables} SSTables, {:.1} MB under {} (before: {sstables}, {:.1} MB)",
        restored_bytes as f64 / 1e6,
        ks_dir.display(),
        on_disk as f64 / 1e6
    );
    }

    // Anchises incrementals: flush-to-uploaded latency.
    let rounds = 20;
    let latencies = anchises_incrementals(&mut node, &store, rows, rounds).await;
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };

    print_table(&results, snapshot_bytes, cold);
    println!(
        "anchises incremental upload after a flush ({rounds} flushes of 400 rows): p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        pct(0.5),
        pct(0.95),
        latencies[latencies.len() - 1]
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&work);
}
