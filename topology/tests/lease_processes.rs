//! The lease between real processes: several `lease-contender` processes race
//! for one lease on a shared filesystem store while the test SIGKILLs some of
//! them at random moments and one walks away holding it. The audit file they
//! append to must show mutual exclusion, strictly increasing fencing tokens, and
//! takeovers of dead holders only after the TTL.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TTL_MS: u64 = 1500;
const SKEW_MS: u64 = 200;
const CONTENDERS: usize = 5;
const ROUNDS: usize = 25;
/// Contender 0 walks away still holding the lease at this round.
const ABANDON_AT: usize = 2;
const KILLS: usize = 2;

#[derive(Debug, Clone)]
struct Line {
    event: String,
    fencing: u64,
    holder: String,
    /// `start`: before the winning attempt; others: when written.
    at: u128,
    /// `start`: after the winning attempt.
    acquired: u128,
}

fn parse(audit: &str) -> Vec<Line> {
    audit
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(fields.len() >= 4, "malformed audit line {line:?}");
            let at = fields[3].parse().expect("time");
            Line {
                event: fields[0].to_string(),
                fencing: fields[1].parse().expect("fencing token"),
                holder: fields[2].to_string(),
                at,
                acquired: fields.get(4).map_or(at, |t| t.parse().expect("time")),
            }
        })
        .collect()
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn spawn(store: &Path, audit: &Path, holder: usize, rounds: usize) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lease-contender"));
    command
        .arg(store)
        .arg("stress")
        .arg(format!("c{holder}"))
        .arg(rounds.to_string())
        .arg(audit)
        .args([
            "--ttl-ms",
            &TTL_MS.to_string(),
            "--skew-ms",
            &SKEW_MS.to_string(),
        ])
        .args(["--hold-max-ms", "30"]);
    if holder == 0 {
        command.args(["--abandon-at", &ABANDON_AT.to_string()]);
    }
    command.spawn().expect("contender starts")
}

/// A small deterministic-per-run generator for kill times and victims.
fn jitter(seed: &mut u64, bound: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % bound
}

#[test]
fn processes_contending_for_a_lease_never_overlap_and_dead_holders_are_taken_over_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit_path) = (dir.path().join("store"), dir.path().join("audit.log"));
    let mut children: Vec<Option<Child>> = (0..CONTENDERS)
        .map(|i| Some(spawn(&store, &audit_path, i, ROUNDS)))
        .collect();
    let mut seed = (now_nanos() as u64) | 1;
    eprintln!("kill seed {seed}");

    // Kill two of contenders 1.. (never the one that abandons) at random moments
    // while they still have rounds to go.
    let mut killed = HashSet::new();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(100 + jitter(&mut seed, 300)));
        let running: Vec<usize> = children
            .iter_mut()
            .enumerate()
            .skip(1)
            .filter_map(|(i, child)| {
                let child = child.as_mut()?;
                child.try_wait().unwrap().is_none().then_some(i)
            })
            .collect();
        assert!(
            !running.is_empty(),
            "every contender finished before the kills"
        );
        let victim = running[jitter(&mut seed, running.len() as u64) as usize];
        let mut child = children[victim].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        killed.insert(format!("c{victim}"));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, slot) in children.iter_mut().enumerate() {
        let Some(child) = slot else { continue };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "contender c{i} failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("contender c{i} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // One last contender: when the abandoned lease was the last one held (the
    // others finished first, as on a loaded machine), it is the one that must
    // take it over after the TTL.
    let mut last = spawn(&store, &audit_path, CONTENDERS, 1);
    assert!(last.wait().unwrap().success(), "the last contender failed");

    let lines = parse(&std::fs::read_to_string(&audit_path).unwrap());
    check_audit(&lines, &killed);
}

fn check_audit(lines: &[Line], killed: &HashSet<String>) {
    let ttl_nanos = u128::from(TTL_MS) * 1_000_000;
    let last_line_of: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (l.holder.as_str(), i))
        .collect();
    // The holding interval open right now, and whether its holder is dead.
    let mut open: Option<&Line> = None;
    let mut dead_holder: Option<&Line> = None;
    let mut last_fencing = 0;
    let mut takeovers = 0;
    let mut ends: HashMap<&str, usize> = HashMap::new();

    for (i, line) in lines.iter().enumerate() {
        match line.event.as_str() {
            "start" => {
                if let Some(previous) = open.take() {
                    // Only a holder killed inside its critical section leaves a
                    // start without an end, and then it never writes again.
                    assert!(
                        killed.contains(&previous.holder)
                            && last_line_of[previous.holder.as_str()] < i,
                        "overlap: {previous:?} then {line:?}"
                    );
                    dead_holder = Some(previous);
                }
                assert!(
                    line.fencing > last_fencing,
                    "fencing token {} after {last_fencing}",
                    line.fencing
                );
                if let Some(dead) = dead_holder.take() {
                    assert!(
                        line.acquired >= dead.at + ttl_nanos,
                        "{} took over {}ms after {} acquired, before the ttl",
                        line.holder,
                        (line.acquired - dead.at) / 1_000_000,
                        dead.holder
                    );
                    takeovers += 1;
                }
                last_fencing = line.fencing;
                open = Some(line);
            }
            "end" => {
                let start = open
                    .take()
                    .unwrap_or_else(|| panic!("end without start: {line:?}"));
                assert_eq!(
                    (start.fencing, &start.holder),
                    (line.fencing, &line.holder),
                    "overlap"
                );
                *ends.entry(line.holder.as_str()).or_default() += 1;
                dead_holder = Some(start);
            }
            "abandon" => {}
            other => panic!("unexpected audit event {other:?} in {line:?}"),
        }
        // A released lease frees the next start from the ttl wait; only an
        // `abandon` right after the `end` keeps the dead-holder check armed.
        if line.event == "end" && lines.get(i + 1).is_none_or(|next| next.event != "abandon") {
            dead_holder = None;
        }
    }

    assert!(
        lines.iter().any(|l| l.event == "abandon"),
        "the abandoning contender never held the lease"
    );
    assert!(takeovers >= 1, "no dead holder was taken over");
    assert_eq!(ends.get("c0"), Some(&(ABANDON_AT + 1)), "c0 ends");
    for i in 1..CONTENDERS {
        let holder = format!("c{i}");
        if !killed.contains(&holder) {
            assert_eq!(
                ends.get(holder.as_str()),
                Some(&ROUNDS),
                "{holder} did not finish its rounds"
            );
        }
    }
    assert_eq!(
        ends.get(format!("c{CONTENDERS}").as_str()),
        Some(&1),
        "the last contender ends"
    );
    eprintln!(
        "{} acquisitions, {} takeovers of dead holders, killed {killed:?}",
        lines.iter().filter(|l| l.event == "start").count(),
        takeovers
    );
}
