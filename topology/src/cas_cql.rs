//! The compare-and-swap store on Cassandra lightweight transactions (Paxos),
//! through the scylla driver: the coordinator backend for clusters that would
//! rather keep their leases and slot registry in Cassandra than in S3.
//!
//! One table, `<keyspace>.cas (key text PRIMARY KEY, value blob, version text)`,
//! one partition per key. Every write is an LWT — `INSERT … IF NOT EXISTS`,
//! `UPDATE … IF version = ?`, `DELETE … IF version = ?` — and every write stores
//! a fresh random version (uuid v4), so a key that is deleted and re-created
//! never repeats a version (no ABA). Reads of a key run at SERIAL (LOCAL_SERIAL
//! in [`CqlCasScope::LocalDc`]): a serial read takes part in Paxos and finishes
//! any round left half-done, so it is linearizable with the LWTs; a plain
//! QUORUM read is not (it can miss an accepted but uncommitted proposal).
//!
//! Why a partition per key and not a partition per prefix (first segment as
//! partition key, the rest clustering), which would give efficient prefix
//! queries: Paxos serializes per partition, so every key of a cluster would
//! share one Paxos instance — a lease renewal would contend with a registry
//! claim and with every other lease, and contended LWTs back off and time out
//! (`cas_contention_timeout`). The price is `list`: a partition key cannot be
//! range-scanned in key order, so `list` reads every key of the table (paged,
//! at QUORUM) and filters and sorts on the client. The store holds leases, slot
//! claims and plans — hundreds of small rows — so that scan is cheap; do not
//! put bulk data here. SERIAL is only allowed on single-partition reads, so
//! `list` sees every key whose LWT has returned but may or may not see one whose
//! LWT is still in flight; callers `get` a listed key before acting on it.
//!
//! Errors: a failed LWT is a [`CasError::Backend`], never a success and never a
//! conflict. A timeout (the server's `WriteTimeout` of type CAS, a client
//! timeout, a broken connection) leaves the outcome unknown — the write may
//! still be applied — and the message says so; the caller retries by re-reading
//! the key (the SERIAL read settles the round) and deciding again, never by
//! blindly replaying the write. The LWTs are marked non-idempotent, so the
//! driver's default retry policy only retries them after a rejection that
//! precedes execution (`Unavailable`, `IsBootstrapping`); it never retries a
//! SERIAL read at all, so retries of `get` belong to the caller's retry layer.
//!
//! This module owns the schema of its table and the statements on it; it does
//! not open sessions (the caller passes one) and does not retry.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use tokio::sync::OnceCell;

use crate::cas::{validate_prefix, CasError, CasFuture, CasKey, CasStore, Version, Versioned};

/// The store's table inside its keyspace.
const TABLE: &str = "cas";

/// Where the store's Paxos rounds must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CqlCasScope {
    /// SERIAL rounds, QUORUM commits: linearizable across all data centers.
    /// The default, because leases and the slot registry are cluster-wide.
    #[default]
    Global,
    /// LOCAL_SERIAL rounds, LOCAL_QUORUM commits: linearizable only among
    /// clients of the same data center, but without cross-DC round trips. Only
    /// for state that a single data center ever writes.
    LocalDc,
}

impl CqlCasScope {
    fn serial(self) -> SerialConsistency {
        match self {
            CqlCasScope::Global => SerialConsistency::Serial,
            CqlCasScope::LocalDc => SerialConsistency::LocalSerial,
        }
    }

    /// The consistency of a Paxos commit and of the `list` scan.
    fn quorum(self) -> Consistency {
        match self {
            CqlCasScope::Global => Consistency::Quorum,
            CqlCasScope::LocalDc => Consistency::LocalQuorum,
        }
    }

    /// The consistency of a linearizable single-key read.
    fn serial_read(self) -> Consistency {
        match self {
            CqlCasScope::Global => Consistency::Serial,
            CqlCasScope::LocalDc => Consistency::LocalSerial,
        }
    }
}

/// A [`CasStore`] on Cassandra LWTs; see the module documentation.
pub struct CqlCasStore {
    session: Arc<Session>,
    keyspace: String,
    scope: CqlCasScope,
    request_timeout: Option<Duration>,
    /// Prepared on first use, so that a store can be built before its table
    /// exists (`ensure_schema` creates it).
    statements: OnceCell<Statements>,
}

struct Statements {
    get: PreparedStatement,
    insert: PreparedStatement,
    update: PreparedStatement,
    delete: PreparedStatement,
    list: PreparedStatement,
}

impl fmt::Debug for CqlCasStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlCasStore")
            .field("keyspace", &self.keyspace)
            .field("scope", &self.scope)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl CqlCasStore {
    /// A store in `keyspace` (an unquoted CQL identifier: a letter, then up to
    /// 47 letters, digits or underscores; CQL folds it to lower case). Does no
    /// I/O: call [`ensure_schema`](Self::ensure_schema) once per cluster first.
    pub fn new(session: Arc<Session>, keyspace: &str) -> Result<Self, CasError> {
        check_keyspace(keyspace)?;
        Ok(Self {
            session,
            keyspace: keyspace.to_ascii_lowercase(),
            scope: CqlCasScope::default(),
            request_timeout: None,
            statements: OnceCell::new(),
        })
    }

    /// The same store with another Paxos scope.
    pub fn with_scope(mut self, scope: CqlCasScope) -> Self {
        self.scope = scope;
        self.statements = OnceCell::new();
        self
    }

    /// A client-side limit for each statement, instead of the session's. A lease
    /// holder wants its renewal to fail well inside the lease's TTL. An LWT that
    /// runs out of time has an unknown outcome, as with any timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self.statements = OnceCell::new();
        self
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Creates the keyspace with `replication` (a CQL map literal such as
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`) and the table, if they
    /// do not exist; an existing keyspace keeps its replication. The driver waits
    /// for schema agreement after each statement.
    ///
    /// Run it from one client at a time (say, the node that creates the
    /// cluster): before Cassandra's transactional metadata, two coordinators
    /// that create the same table concurrently can each assign their own table
    /// id, and the schema disagreement that follows needs an operator.
    pub async fn ensure_schema(&self, replication: &str) -> Result<(), CasError> {
        let replication = replication.trim();
        if !(replication.starts_with('{') && replication.ends_with('}'))
            || replication.contains(';')
        {
            return Err(CasError::Backend {
                message: format!("replication must be one cql map literal, got {replication:?}"),
                source: None,
            });
        }
        let keyspace = &self.keyspace;
        let statements = [
            format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} \
                 (key text PRIMARY KEY, value blob, version text) \
                 WITH comment = 'anchises compare-and-swap store'"
            ),
        ];
        for cql in statements {
            self.session
                .query_unpaged(cql.as_str(), ())
                .await
                .map_err(|e| backend(format!("schema statement failed ({cql}): {e}"), e))?;
        }
        Ok(())
    }

    async fn statements(&self) -> Result<&Statements, CasError> {
        self.statements
            .get_or_try_init(|| async {
                let ks = &self.keyspace;
                Ok(Statements {
                    get: self
                        .prepare(
                            format!("SELECT value, version FROM {ks}.{TABLE} WHERE key = ?"),
                            Kind::SerialRead,
                        )
                        .await?,
                    insert: self
                        .prepare(
                            format!(
                                "INSERT INTO {ks}.{TABLE} (key, value, version) \
                                 VALUES (?, ?, ?) IF NOT EXISTS"
                            ),
                            Kind::Lwt,
                        )
                        .await?,
                    update: self
                        .prepare(
                            format!(
                                "UPDATE {ks}.{TABLE} SET value = ?, version = ? \
                                 WHERE key = ? IF version = ?"
                            ),
                            Kind::Lwt,
                        )
                        .await?,
                    delete: self
                        .prepare(
                            format!("DELETE FROM {ks}.{TABLE} WHERE key = ? IF version = ?"),
                            Kind::Lwt,
                        )
                        .await?,
                    list: self
                        .prepare(format!("SELECT key FROM {ks}.{TABLE}"), Kind::Scan)
                        .await?,
                })
            })
            .await
    }

    async fn prepare(&self, cql: String, kind: Kind) -> Result<PreparedStatement, CasError> {
        let mut statement = self.session.prepare(cql.as_str()).await.map_err(|e| {
            backend(
                format!(
                    "cannot prepare {cql:?} (does the table exist? ensure_schema creates it): {e}"
                ),
                e,
            )
        })?;
        statement.set_request_timeout(self.request_timeout);
        match kind {
            Kind::SerialRead => {
                statement.set_consistency(self.scope.serial_read());
                statement.set_is_idempotent(true);
            }
            Kind::Lwt => {
                statement.set_consistency(self.scope.quorum());
                statement.set_serial_consistency(Some(self.scope.serial()));
                // Replaying an applied `IF NOT EXISTS` would report a conflict for
                // our own write: the driver must never retry these.
                statement.set_is_idempotent(false);
            }
            Kind::Scan => {
                statement.set_consistency(self.scope.quorum());
                statement.set_is_idempotent(true);
            }
        }
        Ok(statement)
    }

    async fn get_versioned(&self, key: &CasKey) -> Result<Option<Versioned>, CasError> {
        let statements = self.statements().await?;
        let result = self
            .session
            .execute_unpaged(&statements.get, (key.as_str(),))
            .await
            .map_err(|e| backend(format!("serial read of {key} failed: {e}"), e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| backend(format!("read of {key} returned no rows result: {e}"), e))?;
        let row = rows
            .maybe_first_row::<(Option<Vec<u8>>, Option<String>)>()
            .map_err(|e| backend(format!("read of {key} returned an unexpected row: {e}"), e))?;
        match row {
            None => Ok(None),
            Some((Some(value), Some(version))) => Ok(Some(Versioned {
                value,
                version: Version::new(version),
            })),
            Some(_) => Err(CasError::Corrupt {
                key: key.to_string(),
                reason: "row without a value or a version".into(),
            }),
        }
    }

    /// Runs one LWT; `Ok(())` if it applied, `Conflict` if its condition failed.
    async fn lwt(
        &self,
        op: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        key: &CasKey,
    ) -> Result<(), CasError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| lwt_error(op, key, e))?;
        // From here on the statement ran: a result we cannot read is an unknown
        // outcome, not a failure.
        let outcome = read_lwt_result(result).map_err(|reason| CasError::Backend {
            message: format!("{op} of {key} has an unknown outcome: {reason}"),
            source: None,
        })?;
        match outcome {
            LwtOutcome::Applied => Ok(()),
            LwtOutcome::NotApplied { current_version } => {
                tracing::debug!(%key, op, ?current_version, "lwt condition failed");
                Err(CasError::Conflict {
                    key: key.to_string(),
                })
            }
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<CasKey>, CasError> {
        validate_prefix(prefix)?;
        let statements = self.statements().await?;
        let mut keys = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, response) = self
                .session
                .execute_single_page(&statements.list, (), paging)
                .await
                .map_err(|e| {
                    backend(format!("scan of {}.{TABLE} failed: {e}", self.keyspace), e)
                })?;
            let rows = result
                .into_rows_result()
                .map_err(|e| backend(format!("scan returned no rows result: {e}"), e))?;
            let page = rows
                .rows::<(String,)>()
                .map_err(|e| backend(format!("scan returned unexpected columns: {e}"), e))?;
            for row in page {
                let (key,) =
                    row.map_err(|e| backend(format!("scan returned a bad row: {e}"), e))?;
                if !key.starts_with(prefix) {
                    continue;
                }
                let key = CasKey::new(key.as_str()).map_err(|e| CasError::Corrupt {
                    key: key.clone(),
                    reason: format!("stored key is not valid: {e}"),
                })?;
                keys.push(key);
            }
            match response {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        keys.sort();
        Ok(keys)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    SerialRead,
    Lwt,
    Scan,
}

fn new_version() -> Version {
    Version::new(uuid::Uuid::new_v4().to_string())
}

impl CasStore for CqlCasStore {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        Box::pin(self.get_versioned(key))
    }

    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        Box::pin(async move {
            let statements = self.statements().await?;
            let version = new_version();
            self.lwt(
                "create",
                &statements.insert,
                (key.as_str(), value, version.as_str()),
                key,
            )
            .await?;
            Ok(version)
        })
    }

    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        Box::pin(async move {
            let statements = self.statements().await?;
            let version = new_version();
            self.lwt(
                "replace",
                &statements.update,
                (value, version.as_str(), key.as_str(), expected.as_str()),
                key,
            )
            .await?;
            Ok(version)
        })
    }

    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        Box::pin(async move {
            let statements = self.statements().await?;
            self.lwt(
                "delete",
                &statements.delete,
                (key.as_str(), expected.as_str()),
                key,
            )
            .await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        Box::pin(self.list_keys(prefix))
    }
}

fn check_keyspace(keyspace: &str) -> Result<(), CasError> {
    let mut chars = keyspace.chars();
    let valid = keyspace.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(CasError::InvalidKey {
            key: keyspace.to_string(),
            reason: "keyspace must be a letter then up to 47 letters, digits or underscores",
        })
    }
}

fn backend(message: String, source: impl std::error::Error + Send + Sync + 'static) -> CasError {
    CasError::Backend {
        message,
        source: Some(Box::new(source)),
    }
}

/// A failed LWT. Only errors raised before the coordinator started Paxos prove
/// that nothing was written; anything else — above all a `WriteTimeout` of type
/// CAS, which Cassandra sends when a round was accepted but not confirmed — may
/// still take effect.
fn lwt_error(op: &'static str, key: &CasKey, error: ExecutionError) -> CasError {
    let message = if never_ran(&error) {
        format!("{op} of {key} failed: {error}")
    } else {
        format!("{op} of {key} has an unknown outcome, re-read the key before retrying: {error}")
    };
    backend(message, error)
}

fn never_ran(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::BadQuery(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::PrepareError(_)
        | ExecutionError::ConnectionPoolError(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::Unprepared { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
        ),
        _ => false,
    }
}

/// What an LWT answered.
#[derive(Debug, PartialEq, Eq)]
enum LwtOutcome {
    Applied,
    /// The condition failed; `current_version` is the row's version as the
    /// server returned it (`None` when the row does not exist).
    NotApplied {
        current_version: Option<String>,
    },
}

fn read_lwt_result(result: QueryResult) -> Result<LwtOutcome, String> {
    let rows = result
        .into_rows_result()
        .map_err(|e| format!("no rows result: {e}"))?;
    let columns: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let row = rows
        .single_row::<Row>()
        .map_err(|e| format!("not a single row: {e}"))?;
    decode_lwt_row(&columns, row)
}

/// Decodes an LWT's result row. Cassandra puts `[applied]` in column 0; when the
/// condition failed, the current values of the row follow — all columns for
/// `IF NOT EXISTS`, the conditioned ones for `IF version = ?` — so the shape
/// varies and the row is read untyped.
fn decode_lwt_row(columns: &[String], row: Row) -> Result<LwtOutcome, String> {
    if columns.first().map(String::as_str) != Some("[applied]") {
        return Err(format!("first column is not [applied]: {columns:?}"));
    }
    if columns.len() != row.columns.len() {
        return Err(format!(
            "{} column names for {} values",
            columns.len(),
            row.columns.len()
        ));
    }
    let mut values = row.columns.into_iter();
    match values.next().flatten() {
        Some(CqlValue::Boolean(true)) => Ok(LwtOutcome::Applied),
        Some(CqlValue::Boolean(false)) => {
            let current_version = columns
                .iter()
                .skip(1)
                .zip(values)
                .find(|(name, _)| *name == "version")
                .and_then(|(_, value)| match value {
                    Some(CqlValue::Text(v)) => Some(v),
                    _ => None,
                });
            Ok(LwtOutcome::NotApplied { current_version })
        }
        other => Err(format!("[applied] is not a boolean: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn row(values: Vec<Option<CqlValue>>) -> Row {
        Row { columns: values }
    }

    #[test]
    fn an_applied_lwt_is_one_true_column() {
        assert_eq!(
            decode_lwt_row(
                &names(&["[applied]"]),
                row(vec![Some(CqlValue::Boolean(true))])
            ),
            Ok(LwtOutcome::Applied)
        );
    }

    #[test]
    fn a_failed_create_carries_the_whole_current_row() {
        let outcome = decode_lwt_row(
            &names(&["[applied]", "key", "value", "version"]),
            row(vec![
                Some(CqlValue::Boolean(false)),
                Some(CqlValue::Text("a/b".into())),
                Some(CqlValue::Blob(b"x".to_vec())),
                Some(CqlValue::Text("v1".into())),
            ]),
        );
        assert_eq!(
            outcome,
            Ok(LwtOutcome::NotApplied {
                current_version: Some("v1".into())
            })
        );
    }

    #[test]
    fn a_failed_replace_of_an_absent_key_has_a_null_version() {
        let outcome = decode_lwt_row(
            &names(&["[applied]", "version"]),
            row(vec![Some(CqlValue::Boolean(false)), None]),
        );
        assert_eq!(
            outcome,
            Ok(LwtOutcome::NotApplied {
                current_version: None
            })
        );
    }

    #[test]
    fn a_result_without_an_applied_boolean_is_an_error() {
        for (columns, values) in [
            (names(&["value"]), vec![Some(CqlValue::Boolean(true))]),
            (names(&["[applied]"]), vec![None]),
            (names(&["[applied]"]), vec![Some(CqlValue::Int(1))]),
            (
                names(&["[applied]", "version"]),
                vec![Some(CqlValue::Boolean(true))],
            ),
            (names(&[]), vec![]),
        ] {
            let decoded = decode_lwt_row(&columns, row(values.clone()));
            assert!(decoded.is_err(), "{columns:?} {values:?} gave {decoded:?}");
        }
    }

    #[test]
    fn keyspace_names_are_plain_cql_identifiers() {
        for good in ["anchises", "Anchises_cas", "a", &"k".repeat(48)] {
            assert!(check_keyspace(good).is_ok(), "{good:?} rejected");
        }
        for bad in [
            "",
            "1ks",
            "_ks",
            "ks-1",
            "ks.cas",
            "ks; DROP",
            &"k".repeat(49),
        ] {
            assert!(
                matches!(check_keyspace(bad), Err(CasError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn timeouts_leave_the_outcome_unknown_and_bad_requests_do_not() {
        let key = CasKey::new("leases/repair.json").unwrap();
        let timeout = lwt_error(
            "replace",
            &key,
            ExecutionError::RequestTimeout(Duration::from_secs(1)),
        );
        assert!(timeout.to_string().contains("unknown outcome"), "{timeout}");
        let write_timeout = lwt_error(
            "create",
            &key,
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::WriteTimeout {
                    consistency: Consistency::Serial,
                    received: 0,
                    required: 1,
                    write_type: scylla::errors::WriteType::Cas,
                },
                "timed out".into(),
            )),
        );
        assert!(
            matches!(&write_timeout, CasError::Backend { message, .. } if message.contains("unknown outcome")),
            "{write_timeout:?}"
        );
        let invalid = lwt_error(
            "create",
            &key,
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Invalid,
                "unconfigured table".into(),
            )),
        );
        assert!(
            matches!(&invalid, CasError::Backend { message, .. } if message.contains("failed") && !message.contains("unknown")),
            "{invalid:?}"
        );
    }
}
