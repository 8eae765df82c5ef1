//! A CQL session to the local node (scylla driver, protocol v4), opened lazily and
//! reopened after a failure. Used for what only CQL tells: the schema.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    #[error("cannot connect to cql at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("cql query failed: {0}")]
    Query(String),
}

/// One schema element, as server-side `DESCRIBE SCHEMA` returns it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SchemaElement {
    pub keyspace: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub create_statement: String,
}

/// A keyspace and its replication map (`class`, `replication_factor` or per DC).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeyspaceReplication {
    pub name: String,
    pub replication: std::collections::BTreeMap<String, String>,
}

pub struct Cql {
    addr: SocketAddr,
    session: Mutex<Option<Arc<Session>>>,
}

impl Cql {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            session: Mutex::new(None),
        }
    }

    async fn session(&self) -> Result<Arc<Session>, CqlError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let session = SessionBuilder::new()
            .known_node_addr(self.addr)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .map_err(|e| CqlError::Connect {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let session = Arc::new(session);
        *guard = Some(session.clone());
        Ok(session)
    }

    /// Runs one statement that returns no rows (schema changes).
    pub async fn execute(&self, statement: &str) -> Result<(), CqlError> {
        let session = self.session().await?;
        session
            .query_unpaged(statement, ())
            .await
            .map(|_| ())
            .map_err(|e| CqlError::Query(e.to_string()))
    }

    /// Forgets the session so that the next call reconnects (after a node restart).
    pub async fn reset(&self) {
        *self.session.lock().await = None;
    }

    pub async fn keyspaces(&self) -> Result<Vec<KeyspaceReplication>, CqlError> {
        let session = self.session().await?;
        let result = match session
            .query_unpaged(
                "SELECT keyspace_name, replication FROM system_schema.keyspaces",
                (),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.reset().await;
                return Err(CqlError::Query(e.to_string()));
            }
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| CqlError::Query(e.to_string()))?;
        let mut out = Vec::new();
        for row in rows
            .rows::<(String, std::collections::BTreeMap<String, String>)>()
            .map_err(|e| CqlError::Query(e.to_string()))?
        {
            let (name, replication) = row.map_err(|e| CqlError::Query(e.to_string()))?;
            out.push(KeyspaceReplication { name, replication });
        }
        Ok(out)
    }

    /// The whole schema, system keyspaces excluded, from server-side `DESCRIBE SCHEMA`.
    pub async fn describe_schema(&self) -> Result<Vec<SchemaElement>, CqlError> {
        let session = self.session().await?;
        let result = match session.query_unpaged("DESCRIBE SCHEMA", ()).await {
            Ok(r) => r,
            Err(e) => {
                self.reset().await;
                return Err(CqlError::Query(e.to_string()));
            }
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| CqlError::Query(e.to_string()))?;
        let mut out = Vec::new();
        for row in rows
            .rows::<(String, String, String, String)>()
            .map_err(|e| CqlError::Query(e.to_string()))?
        {
            let (keyspace, kind, name, create_statement) =
                row.map_err(|e| CqlError::Query(e.to_string()))?;
            out.push(SchemaElement {
                keyspace,
                kind,
                name,
                create_statement,
            });
        }
        Ok(out)
    }
}
