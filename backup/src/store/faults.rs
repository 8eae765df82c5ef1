//! Fault injection beneath the retry layer, to test retry paths against the
//! real backends instead of a mock: fail the first N attempts, or a seeded
//! random fraction of them, with a retryable (or, to check that it is not
//! retried, a permanent) error.
//!
//! A fault fires either before the request (nothing happened) or after it (the
//! request took effect but its answer was "lost", like a timeout on the
//! response) — the second is what makes retried conditional writes ambiguous.
//! It also counts every attempt it sees, which is how tests check the number of
//! attempts. Install it with [`ObjectStore::with_faults`](super::ObjectStore::with_faults).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The attempt fails without sending anything.
    BeforeRequest,
    /// The request runs (and takes effect), then the attempt fails anyway.
    AfterRequest,
}

#[derive(Debug)]
enum Plan {
    FirstN(usize),
    Fraction(f64, Box<Mutex<StdRng>>),
}

/// Which attempts fail, and how.
#[derive(Debug)]
pub struct Faults {
    plan: Plan,
    point: FaultPoint,
    retryable: bool,
    only: Option<&'static str>,
    attempts: AtomicUsize,
    injected: AtomicUsize,
}

impl Faults {
    /// Fails the first `n` attempts, then lets every attempt through.
    pub fn fail_first(n: usize) -> Self {
        Faults::with_plan(Plan::FirstN(n))
    }

    /// Fails each attempt with probability `fraction`, from a seeded generator
    /// so that a failing run can be replayed.
    pub fn fail_fraction(fraction: f64, seed: u64) -> Self {
        Faults::with_plan(Plan::Fraction(
            fraction.clamp(0.0, 1.0),
            Box::new(Mutex::new(StdRng::seed_from_u64(seed))),
        ))
    }

    /// Fails nothing; only counts attempts.
    pub fn count_only() -> Self {
        Faults::fail_first(0)
    }

    fn with_plan(plan: Plan) -> Self {
        Faults {
            plan,
            point: FaultPoint::BeforeRequest,
            retryable: true,
            only: None,
            attempts: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
        }
    }

    /// Injected errors are permanent, so the retry layer must give up at once.
    pub fn permanent(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// Faults fire after the request has taken effect.
    pub fn after_request(mut self) -> Self {
        self.point = FaultPoint::AfterRequest;
        self
    }

    /// Only attempts of this operation (`"put"`, `"get"`, `"list"`, `"cas put"`,
    /// …) are counted and may fail.
    pub fn only(mut self, op: &'static str) -> Self {
        self.only = Some(op);
        self
    }

    /// Attempts seen so far (of the selected operation).
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Attempts failed so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Whether this attempt of `op` fails, and where.
    pub(crate) fn decide(&self, op: &'static str) -> Option<FaultPoint> {
        if self.only.is_some_and(|only| only != op) {
            return None;
        }
        let seen = self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = match &self.plan {
            Plan::FirstN(n) => seen < *n,
            Plan::Fraction(fraction, rng) => rng
                .lock()
                .expect("fault generator lock")
                .random_bool(*fraction),
        };
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            Some(self.point)
        } else {
            None
        }
    }

    pub(crate) fn error(&self, op: &'static str, key: &str) -> StoreError {
        let detail = "injected fault".to_string();
        if self.retryable {
            StoreError::Transient {
                op,
                key: key.to_string(),
                detail,
                source: None,
            }
        } else {
            StoreError::Permanent {
                op,
                key: key.to_string(),
                detail,
                source: None,
            }
        }
    }
}
