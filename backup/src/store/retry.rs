//! The one retry layer of the object store: exponential backoff with full
//! jitter, a bounded number of attempts, and cancellation through a
//! [`CancellationToken`] both while a request runs and while it waits.
//!
//! The AWS SDK's own retries are turned off (`RetryConfig::disabled()` in
//! `s3.rs`) so that attempts are not multiplied across two layers and every
//! retry is counted and logged here. Whether an error is worth another attempt
//! is the error's business ([`StoreError::is_retryable`]); call sites only wrap
//! a request. The delays come from `backon`'s exponential builder, driven by
//! our own loop so that cancellation and logging stay visible.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::StoreError;

/// How often and how patiently a request is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included; at least 1.
    pub max_attempts: usize,
    /// The delay before the second attempt; it doubles after each failure.
    pub min_delay: Duration,
    /// The cap on one delay.
    pub max_delay: Duration,
    /// Randomizes each delay (so that many nodes failing together do not retry
    /// in lock-step). Tests turn it off to keep timings predictable.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// Ten attempts over roughly a minute: S3 asks clients to back off on
    /// `SlowDown` for seconds, not milliseconds.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: one attempt.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1));
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

/// Runs `request` until it succeeds, fails with an error that is not
/// retryable, runs out of attempts (the last error is returned) or `cancel`
/// fires. `op` and `key` name the request in logs and in the cancelled error.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op: &'static str,
    key: &str,
    mut request: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let cancelled = || StoreError::Cancelled {
        op,
        key: key.to_string(),
    };
    let mut delays = policy.delays();
    let mut attempt = 1;
    loop {
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            result = request() => result,
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) => error,
        };
        let Some(delay) = delays.next() else {
            tracing::warn!(op, key, attempt, error = %error, "giving up after retries");
            return Err(error);
        };
        tracing::debug!(op, key, attempt, ?delay, error = %error, "retrying");
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn transient() -> StoreError {
        StoreError::Transient {
            op: "get",
            key: "k".into(),
            detail: "slow down".into(),
            source: None,
        }
    }

    fn quick(max_attempts: usize) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_error_is_returned() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = retry(&quick(4), &CancellationToken::new(), "get", "k", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(result.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 400 ms of backoff between four attempts, on the paused
        // clock (whose timers round each sleep up to the next millisecond).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(710),
            "waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = retry(&quick(5), &CancellationToken::new(), "get", "k", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(StoreError::permanent("get", "k", "access denied")) }
        })
        .await;
        assert!(matches!(result, Err(StoreError::Permanent { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_wait_between_attempts() {
        let cancel = CancellationToken::new();
        let calls = AtomicUsize::new(0);
        let policy = RetryPolicy {
            min_delay: Duration::from_secs(60),
            ..quick(5)
        };
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.cancel();
        });
        let result: Result<(), _> = retry(&policy, &cancel, "put", "k", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(
            matches!(result, Err(StoreError::Cancelled { .. })),
            "{result:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
