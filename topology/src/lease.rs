//! The lease protocol: mutual exclusion with fencing tokens over a
//! compare-and-swap store, for operations that must run on one node at a time.
//!
//! `<cluster>/leases/<scope>.json` holds `{holder, op, fencing_token,
//! expires_at}`. Acquiring creates the document, or replaces a free or expired
//! one with a CAS on the version just read, bumping the fencing token; renewing
//! and releasing are CAS writes on the holder's own version, so a holder that
//! lost its lease finds out at its next write instead of overwriting the new
//! holder. Others treat a lease as expired only `clock_skew` after `expires_at`,
//! while the holder itself stops trusting it at a monotonic deadline taken before
//! its last write: that asymmetry is what absorbs clock differences between
//! machines. The fencing token only ever grows (release keeps it), so every step a
//! holder records can be ordered and stale holders rejected downstream. The
//! background renewer lives in `lease_handle`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cas::{get_json, to_json_bytes, CasError, CasKey, CasStore, Version};

/// How many times `try_acquire` re-reads after losing a CAS race before it
/// reports contention; a lost race almost always means someone else now holds it.
const ACQUIRE_ATTEMPTS: usize = 3;

/// Errors of the lease protocol.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {scope} is held by {holder} until {expires_at}")]
    Held {
        scope: String,
        holder: String,
        op: Option<String>,
        expires_at: OffsetDateTime,
    },
    #[error("lease {scope} is contended")]
    Contended { scope: String },
    /// Someone else wrote the lease since we last did: we no longer hold it.
    #[error("lease {scope} was lost")]
    Lost { scope: String },
    #[error("invalid lease scope {0:?}")]
    InvalidScope(String),
    #[error(transparent)]
    Store(#[from] CasError),
}

/// The stored lease document. A free lease has no holder and keeps its fencing
/// token, so the next acquisition still counts up from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub op: Option<String>,
    pub fencing_token: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl LeaseRecord {
    /// Whether another party may take this lease at `now`.
    pub fn is_free_at(&self, now: OffsetDateTime, clock_skew: Duration) -> bool {
        self.holder.is_none() || now > self.expires_at + clock_skew
    }
}

/// Lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease lasts without renewal; the renewer writes every `ttl / 3`.
    pub ttl: Duration,
    /// How much longer others wait past `expires_at` before taking over, to cover
    /// clock differences between machines.
    pub clock_skew: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(30),
            clock_skew: Duration::from_secs(5),
        }
    }
}

/// A lease we hold, as of our last successful write.
#[derive(Debug, Clone)]
pub struct Lease {
    pub scope: String,
    pub holder: String,
    pub op: Option<String>,
    pub fencing_token: u64,
    /// The previous holder, when this acquisition took over an expired lease.
    pub took_over_from: Option<String>,
    /// Until when the holder may act: a monotonic deadline taken before the last
    /// write, so it is never later than what the store says.
    pub valid_until: Instant,
    pub(crate) key: CasKey,
    pub(crate) version: Version,
}

/// Leases of one cluster in one store.
#[derive(Debug)]
pub struct Leases<S: CasStore + ?Sized = dyn CasStore> {
    store: Arc<S>,
    cluster: String,
    config: LeaseConfig,
}

impl<S: CasStore + ?Sized> Clone for Leases<S> {
    fn clone(&self) -> Self {
        Leases {
            store: self.store.clone(),
            cluster: self.cluster.clone(),
            config: self.config,
        }
    }
}

impl<S: CasStore + ?Sized> Leases<S> {
    pub fn new(store: Arc<S>, cluster: impl Into<String>, config: LeaseConfig) -> Self {
        Leases {
            store,
            cluster: cluster.into(),
            config,
        }
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// `<cluster>/leases/<scope>.json`; a scope is one key segment.
    pub fn key(&self, scope: &str) -> Result<CasKey, LeaseError> {
        if scope.contains('/') {
            return Err(LeaseError::InvalidScope(scope.to_string()));
        }
        CasKey::new(format!("{}/leases/{scope}.json", self.cluster))
            .map_err(|_| LeaseError::InvalidScope(scope.to_string()))
    }

    /// The stored lease, for observers (`ops show`).
    pub async fn read(&self, scope: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        let key = self.key(scope)?;
        Ok(get_json(&*self.store, &key)
            .await?
            .map(|(record, _)| record))
    }

    /// Takes the lease if it is absent, free or expired; `Held` otherwise. A
    /// holder that restarted must wait out its old lease like anyone else: the
    /// store cannot tell a restart from a second process with the same name.
    pub async fn try_acquire(
        &self,
        scope: &str,
        holder: &str,
        op: Option<&str>,
    ) -> Result<Lease, LeaseError> {
        let key = self.key(scope)?;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let started = Instant::now();
            let now = OffsetDateTime::now_utc();
            let current = get_json::<LeaseRecord>(&*self.store, &key).await?;
            let mut next = LeaseRecord {
                holder: Some(holder.to_string()),
                op: op.map(str::to_string),
                fencing_token: 1,
                expires_at: now + self.config.ttl,
            };
            let (written, took_over_from) = match current {
                None => (
                    self.store.put_if_absent(&key, to_json_bytes(&next)).await,
                    None,
                ),
                Some((record, version)) => {
                    if !record.is_free_at(now, self.config.clock_skew) {
                        return Err(LeaseError::Held {
                            scope: scope.to_string(),
                            holder: record.holder.unwrap_or_default(),
                            op: record.op,
                            expires_at: record.expires_at,
                        });
                    }
                    next.fencing_token = record.fencing_token + 1;
                    let bytes = to_json_bytes(&next);
                    (
                        self.store.put_if_match(&key, bytes, &version).await,
                        record.holder,
                    )
                }
            };
            match written {
                Ok(version) => {
                    if let Some(previous) = &took_over_from {
                        tracing::warn!(
                            scope,
                            holder,
                            previous,
                            fencing_token = next.fencing_token,
                            "took over an expired lease"
                        );
                    }
                    return Ok(Lease {
                        scope: scope.to_string(),
                        holder: holder.to_string(),
                        op: next.op,
                        fencing_token: next.fencing_token,
                        took_over_from,
                        valid_until: started + self.config.ttl,
                        key,
                        version,
                    });
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Contended {
            scope: scope.to_string(),
        })
    }

    /// Polls `try_acquire` every `poll` until it succeeds or fails with anything
    /// but `Held`/`Contended`. Dropping the future is safe between polls; dropped
    /// in the middle of a write it may leave the lease taken by us, and it then
    /// expires after the TTL.
    pub async fn acquire(
        &self,
        scope: &str,
        holder: &str,
        op: Option<&str>,
        poll: Duration,
    ) -> Result<Lease, LeaseError> {
        loop {
            match self.try_acquire(scope, holder, op).await {
                Err(LeaseError::Held { .. } | LeaseError::Contended { .. }) => {
                    tokio::time::sleep(poll).await
                }
                other => return other,
            }
        }
    }

    /// Extends the lease by a TTL from now; `Lost` if anyone wrote it since us.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        let started = Instant::now();
        let record = LeaseRecord {
            holder: Some(lease.holder.clone()),
            op: lease.op.clone(),
            fencing_token: lease.fencing_token,
            expires_at: OffsetDateTime::now_utc() + self.config.ttl,
        };
        let version = self.write_own(lease, &record).await?;
        lease.version = version;
        lease.valid_until = started + self.config.ttl;
        Ok(())
    }

    /// Marks the lease free, keeping its fencing token; `Lost` if anyone wrote it
    /// since us (then there is nothing of ours left to release).
    pub async fn release(&self, lease: Lease) -> Result<(), LeaseError> {
        let record = LeaseRecord {
            holder: None,
            op: None,
            fencing_token: lease.fencing_token,
            expires_at: OffsetDateTime::now_utc(),
        };
        self.write_own(&lease, &record).await.map(|_| ())
    }

    async fn write_own(&self, lease: &Lease, record: &LeaseRecord) -> Result<Version, LeaseError> {
        match self
            .store
            .put_if_match(&lease.key, to_json_bytes(record), &lease.version)
            .await
        {
            Ok(version) => Ok(version),
            Err(e) if e.is_conflict() => Err(LeaseError::Lost {
                scope: lease.scope.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
