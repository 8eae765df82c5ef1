//! A lease contender for the multi-process stress test (`tests/lease_processes.rs`):
//! it takes the lease on a filesystem store, records `start` and `end` lines in an
//! audit file while holding it, and releases — or, at `--abandon-at`, walks away
//! still holding it, to play a dead holder. It is a test tool, not part of
//! Anchises' command line.
//!
//! `lease-contender <store-dir> <scope> <holder> <rounds> <audit-file>
//!     [--ttl-ms N] [--skew-ms N] [--hold-max-ms N] [--abandon-at ROUND]`
//!
//! Audit lines are `<event> <fencing-token> <holder> <unix-nanos> [<unix-nanos>]`;
//! `start` carries the time before the winning attempt and the time after it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anchises_topology::{FsCasStore, LeaseConfig, LeaseError, Leases};

struct Args {
    store: PathBuf,
    scope: String,
    holder: String,
    rounds: usize,
    audit: PathBuf,
    ttl: Duration,
    skew: Duration,
    hold_max_ms: u64,
    abandon_at: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let ms = |name: &str, value: Option<String>| -> Result<u64, String> {
        value
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number"))
    };
    let (mut ttl, mut skew, mut hold_max_ms, mut abandon_at) = (1000, 100, 20, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ttl-ms" => ttl = ms(&arg, args.next())?,
            "--skew-ms" => skew = ms(&arg, args.next())?,
            "--hold-max-ms" => hold_max_ms = ms(&arg, args.next())?,
            "--abandon-at" => abandon_at = Some(ms(&arg, args.next())? as usize),
            _ => positional.push(arg),
        }
    }
    let [store, scope, holder, rounds, audit] =
        <[String; 5]>::try_from(positional).map_err(|_| {
            "usage: lease-contender <store-dir> <scope> <holder> <rounds> <audit-file> [options]"
        })?;
    Ok(Args {
        store: store.into(),
        scope,
        holder,
        rounds: rounds.parse().map_err(|_| "rounds needs a number")?,
        audit: audit.into(),
        ttl: Duration::from_millis(ttl),
        skew: Duration::from_millis(skew),
        hold_max_ms,
        abandon_at,
    })
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// One `write(2)` per line on an `O_APPEND` file: the kernel places each line
/// whole at the end, whatever the other processes do.
fn audit(path: &PathBuf, line: String) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("audit file opens");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("audit line written");
}

/// xorshift64: jitter only, no need for a dependency.
struct Jitter(u64);

impl Jitter {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let store = Arc::new(FsCasStore::open(&args.store).expect("store opens"));
    let config = LeaseConfig {
        ttl: args.ttl,
        clock_skew: args.skew,
    };
    let leases: Leases = Leases::new(store, "stress", config);
    let mut jitter =
        Jitter(u64::from(std::process::id()) << 32 | (now_nanos() as u64 & 0xffff_ffff) | 1);
    let holder = &args.holder;

    for round in 0..args.rounds {
        let (before, lease) = loop {
            let before = now_nanos();
            match leases
                .try_acquire(&args.scope, holder, Some("stress"))
                .await
            {
                Ok(lease) => break (before, lease),
                Err(LeaseError::Held { .. } | LeaseError::Contended { .. }) => {
                    tokio::time::sleep(Duration::from_millis(2 + jitter.below(8))).await;
                }
                Err(e) => {
                    eprintln!("{holder}: acquire failed: {e}");
                    return ExitCode::from(1);
                }
            }
        };
        let fencing = lease.fencing_token;
        let handle = leases.hold(lease);
        audit(
            &args.audit,
            format!("start {fencing} {holder} {before} {}", now_nanos()),
        );
        tokio::time::sleep(Duration::from_millis(jitter.below(args.hold_max_ms + 1))).await;
        if !handle.is_held() {
            audit(
                &args.audit,
                format!("lost {fencing} {holder} {}", now_nanos()),
            );
            return ExitCode::from(3);
        }
        audit(
            &args.audit,
            format!("end {fencing} {holder} {}", now_nanos()),
        );
        if args.abandon_at == Some(round) {
            // Exit still holding the lease: the renewer dies with the process.
            audit(
                &args.audit,
                format!("abandon {fencing} {holder} {}", now_nanos()),
            );
            return ExitCode::SUCCESS;
        }
        if let Err(e) = handle.release().await {
            eprintln!("{holder}: release failed: {e}");
            return ExitCode::from(3);
        }
    }
    ExitCode::SUCCESS
}
