//! A client for the Jolokia JVM agent inside the Cassandra process: JMX reads and
//! operations as JSON over HTTP on 127.0.0.1, so the sidecar needs no JVM of its own.
//! It knows the wire protocol and Jolokia's error model, not what the MBeans mean.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub const STORAGE_SERVICE: &str = "org.apache.cassandra.db:type=StorageService";

#[derive(Debug, thiserror::Error)]
pub enum JolokiaError {
    /// Nothing answers on the agent's port: the JVM is down or still starting.
    #[error("jolokia at {url} is not reachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("jolokia request timed out after {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error for this request (HTTP 200 can carry one).
    #[error("{mbean}: {error}")]
    Remote {
        mbean: String,
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("unexpected jolokia response: {0}")]
    Protocol(String),
}

/// One Jolokia request. Overloaded operations need the exact signature, e.g.
/// `forceKeyspaceFlush(java.lang.String,[Ljava.lang.String;)`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request {
    Read {
        mbean: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        attribute: Option<Value>,
    },
    Exec {
        mbean: String,
        operation: String,
        arguments: Vec<Value>,
    },
}

impl Request {
    pub fn read(mbean: &str, attribute: &str) -> Self {
        Request::Read {
            mbean: mbean.into(),
            attribute: Some(Value::String(attribute.into())),
        }
    }

    /// Several attributes of one MBean in one request; the value is a map by name.
    pub fn read_many(mbean: &str, attributes: &[&str]) -> Self {
        Request::Read {
            mbean: mbean.into(),
            attribute: Some(Value::from(attributes.to_vec())),
        }
    }

    pub fn exec(mbean: &str, operation: &str, arguments: Vec<Value>) -> Self {
        Request::Exec {
            mbean: mbean.into(),
            operation: operation.into(),
            arguments,
        }
    }

    fn mbean(&self) -> &str {
        match self {
            Request::Read { mbean, .. } | Request::Exec { mbean, .. } => mbean,
        }
    }
}

#[derive(Clone)]
pub struct Jolokia {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Jolokia {
    pub fn new(port: u16, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(4)
            .build()
            .expect("a reqwest client with static settings");
        Self {
            http,
            url: format!("http://127.0.0.1:{port}/jolokia/"),
            timeout,
        }
    }

    pub async fn read(&self, mbean: &str, attribute: &str) -> Result<Value, JolokiaError> {
        self.one(Request::read(mbean, attribute), self.timeout)
            .await
    }

    /// Runs an operation; `timeout` bounds operations that block (flush, drain).
    pub async fn exec(
        &self,
        mbean: &str,
        operation: &str,
        arguments: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, JolokiaError> {
        self.one(Request::exec(mbean, operation, arguments), timeout)
            .await
    }

    pub async fn one(&self, request: Request, timeout: Duration) -> Result<Value, JolokiaError> {
        self.bulk(vec![request], timeout)
            .await?
            .pop()
            .ok_or_else(|| JolokiaError::Protocol("empty response".into()))?
    }

    /// Sends several requests in one HTTP round trip; each answer succeeds or fails
    /// on its own.
    pub async fn bulk(
        &self,
        requests: Vec<Request>,
        timeout: Duration,
    ) -> Result<Vec<Result<Value, JolokiaError>>, JolokiaError> {
        let sent = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .json(&requests)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        if !sent.status().is_success() {
            return Err(JolokiaError::Protocol(format!(
                "http status {}",
                sent.status()
            )));
        }
        let body: Value = sent
            .json()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let answers = body
            .as_array()
            .ok_or_else(|| JolokiaError::Protocol(format!("expected a list, got {body}")))?;
        if answers.len() != requests.len() {
            return Err(JolokiaError::Protocol(format!(
                "{} answers for {} requests",
                answers.len(),
                requests.len()
            )));
        }
        Ok(answers
            .iter()
            .zip(&requests)
            .map(|(a, r)| decode(a, r.mbean()))
            .collect())
    }

    fn transport_error(&self, e: reqwest::Error, timeout: Duration) -> JolokiaError {
        if e.is_timeout() {
            JolokiaError::Timeout(timeout)
        } else if e.is_connect() {
            JolokiaError::Unreachable {
                url: self.url.clone(),
                reason: "connection refused".into(),
            }
        } else {
            JolokiaError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            }
        }
    }
}

/// Jolokia answers HTTP 200 with a per-request `status`: anything but 200 is an error.
fn decode(answer: &Value, mbean: &str) -> Result<Value, JolokiaError> {
    let status = answer.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
    if status == 200 {
        return Ok(answer.get("value").cloned().unwrap_or(Value::Null));
    }
    Err(JolokiaError::Remote {
        mbean: mbean.into(),
        status,
        error_type: answer
            .get("error_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .into(),
        error: answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message")
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_serialize_as_jolokia_expects() {
        let r = Request::exec(
            STORAGE_SERVICE,
            "forceKeyspaceFlush(java.lang.String,[Ljava.lang.String;)",
            vec![json!("ks"), json!([])],
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"type": "exec", "mbean": STORAGE_SERVICE,
                   "operation": "forceKeyspaceFlush(java.lang.String,[Ljava.lang.String;)",
                   "arguments": ["ks", []]})
        );
        let r = Request::read_many(STORAGE_SERVICE, &["OperationMode", "Tokens"]);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"type": "read", "mbean": STORAGE_SERVICE, "attribute": ["OperationMode", "Tokens"]})
        );
    }

    #[test]
    fn a_200_answer_with_an_error_status_is_an_error() {
        let ok = decode(&json!({"status": 200, "value": "NORMAL"}), "m").unwrap();
        assert_eq!(ok, "NORMAL");
        let err = decode(
            &json!({"status": 404, "error_type": "javax.management.InstanceNotFoundException",
                    "error": "javax.management.InstanceNotFoundException : x"}),
            "m",
        )
        .unwrap_err();
        match err {
            JolokiaError::Remote {
                status, error_type, ..
            } => {
                assert_eq!(status, 404);
                assert!(error_type.contains("InstanceNotFound"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Port 9 (discard) is closed on any test machine.
        let j = Jolokia::new(9, Duration::from_secs(2));
        let err = j.read(STORAGE_SERVICE, "OperationMode").await.unwrap_err();
        assert!(matches!(err, JolokiaError::Unreachable { .. }), "{err:?}");
    }
}
