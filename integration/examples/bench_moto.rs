//! Benchmark of what moto (the S3 server of the tests and benchmarks) spends per
//! gigabyte on each shape of upload, so that S3 figures measured on it can be read:
//! the same files (4 × 256 MiB), uploaded through `ObjectStore`, 4 at a time, as
//! - one streamed PutObject per file (what a backup sends for files up to
//!   `multipart_threshold`, 512 MiB by default);
//! - one PutObject per file from memory (signed, as small objects are sent);
//! - a multipart upload per file in 16 MiB parts (what a backup sends above the
//!   threshold);
//! - 8 MiB objects from memory (the benchmark's ceiling, not a backup's shape).
//!
//! Each shape runs on a fresh moto, alternating over the rounds, on both servers the
//! backup benchmark uses: one that serves a request at a time (as the tests run it)
//! and one with a thread per request (as `moto_server` ships). The figures are the
//! wall time and moto's CPU time (user + system) per GB.
//!
//! Run: `cargo run --release -p anchises-integration --example bench_moto [ROUNDS]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anchises_backup::store::ObjectKey;
use anchises_backup::testing::MotoServer;
use anchises_backup::ObjectStore;
use anchises_integration::test_root;
use futures::StreamExt;

const FILES: usize = 4;
const FILE_SIZE: usize = 256 << 20;
const SMALL: usize = 8 << 20;
const SHAPES: [&str; 4] = [
    "streamed PutObject per file",
    "PutObject per file from memory",
    "multipart upload per file (16 MiB parts)",
    "8 MiB objects from memory",
];

/// Writes the files once (bytes that no compressor would shrink).
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("bench dir");
    (0..FILES)
        .map(|i| {
            let path = dir.join(format!("file-{i}"));
            let mut data = vec![0u8; FILE_SIZE];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
            std::fs::write(&path, data).expect("write a bench file");
            path
        })
        .collect()
}

async fn store_on(moto: &MotoServer, multipart: bool) -> ObjectStore {
    let mut config = moto.create_bucket().await;
    config.part_size = 16 << 20;
    config.multipart_threshold = if multipart { 16 << 20 } else { 512 << 20 };
    ObjectStore::s3(&config).await.expect("s3 store")
}

/// Uploads the files in `shape`; returns (seconds, moto CPU seconds).
async fn run(shape: usize, threaded: bool, paths: &[PathBuf]) -> (f64, f64) {
    let moto = if threaded {
        MotoServer::start_threaded()
    } else {
        MotoServer::start()
    };
    let store = store_on(&moto, shape == 2).await;
    let small = bytes::Bytes::from(std::fs::read(&paths[0]).expect("read")[..SMALL].to_vec());
    let cpu_before = moto.cpu_seconds();
    let t0 = Instant::now();
    match shape {
        0 | 2 => {
            futures::stream::iter(paths.iter().enumerate())
                .map(|(i, path)| {
                    let store = &store;
                    async move {
                        let key = ObjectKey::new(format!("files/{i}")).expect("key");
                        let sent = store.put_file(&key, path).await.expect("put_file");
                        assert_eq!(sent as usize, FILE_SIZE);
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<()>>()
                .await;
        }
        1 => {
            futures::stream::iter(paths.iter().enumerate())
                .map(|(i, path)| {
                    let store = &store;
                    async move {
                        let body = bytes::Bytes::from(std::fs::read(path).expect("read"));
                        let key = ObjectKey::new(format!("files/{i}")).expect("key");
                        store.put(&key, body).await.expect("put");
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<()>>()
                .await;
        }
        _ => {
            futures::stream::iter(0..FILES * FILE_SIZE / SMALL)
                .map(|i| {
                    let (store, body) = (&store, small.clone());
                    async move {
                        let key = ObjectKey::new(format!("small/{i}")).expect("key");
                        store.put(&key, body).await.expect("put");
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<()>>()
                .await;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = moto.cpu_seconds() - cpu_before;
    // What was stored is what was sent.
    let listed = store.list("").await.expect("list");
    let stored: u64 = listed.iter().map(|o| o.size).sum();
    assert_eq!(stored as usize, FILES * FILE_SIZE, "{listed:?}");
    (seconds, cpu)
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(2);
    let dir = test_root().join("bench-moto");
    let paths = files(&dir);
    let gb = (FILES * FILE_SIZE) as f64 / 1e9;
    let servers = [(false, "one request at a time"), (true, "threaded")];
    let mut figures = vec![Vec::new(); SHAPES.len() * servers.len()];
    for round in 0..rounds {
        for k in 0..figures.len() {
            // Alternate the order, so that no run always comes first.
            let run_no = if round % 2 == 0 {
                k
            } else {
                figures.len() - 1 - k
            };
            let (shape, (threaded, server)) =
                (run_no % SHAPES.len(), servers[run_no / SHAPES.len()]);
            let (seconds, cpu) = run(shape, threaded, &paths).await;
            println!(
                "round {round}: {:<42} {server:<21} {seconds:5.1} s, moto CPU {cpu:5.1} s",
                SHAPES[shape]
            );
            figures[run_no].push((seconds, cpu));
        }
    }
    println!("\n{gb:.2} GB per run, mean of {rounds}:");
    println!("| upload shape | moto | seconds | MB/s | moto CPU s per GB |");
    println!("|---|---|---:|---:|---:|");
    for (run_no, runs) in figures.iter().enumerate() {
        let n = runs.len() as f64;
        let seconds = runs.iter().map(|r| r.0).sum::<f64>() / n;
        let cpu = runs.iter().map(|r| r.1).sum::<f64>() / n;
        println!(
            "| {} | {} | {seconds:.1} | {:.1} | {:.1} |",
            SHAPES[run_no % SHAPES.len()],
            servers[run_no / SHAPES.len()].1,
            gb * 1e3 / seconds,
            cpu / gb
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
