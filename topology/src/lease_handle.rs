//! A held lease with its background renewer: a tokio task that renews every
//! TTL/3 and reports, through a watch channel, the moment the lease is lost.
//!
//! The renewer owns the lease (and so its version) while it runs; `release`
//! stops it between two renewals and gets the lease back, so a renewal and the
//! release never race on the same version. Dropping the handle aborts the
//! renewer without releasing: the lease then expires after its TTL, which is
//! what a crash does too. Store errors are retried until the holder's own
//! deadline passes; only then, or on a CAS conflict, is the lease reported lost.

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::cas::CasStore;
use crate::lease::{Lease, LeaseError, Leases};

/// What the renewer knows about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held, and safe to act on until `valid_until`.
    Held { valid_until: Instant },
    /// Another holder took it, or it could not be renewed before its deadline.
    Lost,
}

/// A lease held with a background renewer.
#[derive(Debug)]
pub struct LeaseHandle<S: CasStore + ?Sized + 'static = dyn CasStore> {
    leases: Leases<S>,
    scope: String,
    fencing_token: u64,
    state: watch::Receiver<LeaseState>,
    stop: Option<oneshot::Sender<()>>,
    renewer: Option<JoinHandle<Option<Lease>>>,
}

impl<S: CasStore + ?Sized + 'static> Leases<S> {
    /// Starts renewing `lease` in the background. Needs a tokio runtime.
    pub fn hold(&self, lease: Lease) -> LeaseHandle<S> {
        let (state_tx, state) = watch::channel(LeaseState::Held {
            valid_until: lease.valid_until,
        });
        let (stop, stop_rx) = oneshot::channel();
        let scope = lease.scope.clone();
        let fencing_token = lease.fencing_token;
        let renewer = tokio::spawn(renew_until_stopped(self.clone(), lease, state_tx, stop_rx));
        LeaseHandle {
            leases: self.clone(),
            scope,
            fencing_token,
            state,
            stop: Some(stop),
            renewer: Some(renewer),
        }
    }

    /// Acquires (polling every `poll`) and starts the renewer.
    pub async fn acquire_and_hold(
        &self,
        scope: &str,
        holder: &str,
        op: Option<&str>,
        poll: Duration,
    ) -> Result<LeaseHandle<S>, LeaseError> {
        let lease = self.acquire(scope, holder, op, poll).await?;
        Ok(self.hold(lease))
    }
}

async fn renew_until_stopped<S: CasStore + ?Sized>(
    leases: Leases<S>,
    mut lease: Lease,
    state: watch::Sender<LeaseState>,
    mut stop: oneshot::Receiver<()>,
) -> Option<Lease> {
    let interval = leases.config().ttl / 3;
    let retry = (leases.config().ttl / 10).max(Duration::from_millis(1));
    let mut wait = interval;
    loop {
        tokio::select! {
            // A dropped sender means the handle is gone without a release;
            // stopping either way is right.
            _ = &mut stop => return Some(lease),
            _ = tokio::time::sleep(wait) => {}
        }
        match leases.renew(&mut lease).await {
            Ok(()) => {
                state.send_replace(LeaseState::Held {
                    valid_until: lease.valid_until,
                });
                wait = interval;
            }
            Err(LeaseError::Lost { .. }) => {
                tracing::warn!(
                    scope = lease.scope,
                    fencing_token = lease.fencing_token,
                    "lease lost to another holder"
                );
                state.send_replace(LeaseState::Lost);
                return None;
            }
            Err(error) => {
                if Instant::now() + retry >= lease.valid_until {
                    tracing::warn!(scope = lease.scope, %error, "lease expired while its renewal kept failing");
                    state.send_replace(LeaseState::Lost);
                    return None;
                }
                tracing::info!(scope = lease.scope, %error, "lease renewal failed, retrying");
                wait = retry;
            }
        }
    }
}

impl<S: CasStore + ?Sized + 'static> LeaseHandle<S> {
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// Whether the holder may still act: not lost, and its deadline not passed.
    pub fn is_held(&self) -> bool {
        match self.state() {
            LeaseState::Held { valid_until } => Instant::now() < valid_until,
            LeaseState::Lost => false,
        }
    }

    /// Resolves once the lease is lost or its deadline passes without a renewal;
    /// race it against the guarded work with `select!`. Cancel-safe.
    pub async fn lost(&mut self) {
        loop {
            let valid_until = match *self.state.borrow_and_update() {
                LeaseState::Lost => return,
                LeaseState::Held { valid_until } => valid_until,
            };
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        // The renewer ended without saying lost: it was stopped.
                        return;
                    }
                }
                _ = tokio::time::sleep_until(valid_until.into()) => {
                    if !self.is_held() {
                        return;
                    }
                }
            }
        }
    }

    /// Stops the renewer and marks the lease free. `Lost` if it was lost first.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        let scope = self.scope.clone();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let renewer = self
            .renewer
            .take()
            .expect("the renewer runs until release or drop");
        match renewer.await {
            Ok(Some(lease)) => self.leases.release(lease).await,
            Ok(None) | Err(_) => Err(LeaseError::Lost { scope }),
        }
    }
}

impl<S: CasStore + ?Sized + 'static> Drop for LeaseHandle<S> {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}
