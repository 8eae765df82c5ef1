//! The HTTP client behind the CLI commands. API errors come back as their
//! `{"error": …}` message; a sidecar that is not there is said so plainly.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client with static settings"),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "no anchises sidecar answers at {} (is `anchises node` running? set --url)",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn check(status: u16, body: Value) -> anyhow::Result<Value> {
        if status < 300 {
            return Ok(body);
        }
        let msg = body["error"].as_str().unwrap_or("no error message");
        bail!("{msg} (http {status})")
    }

    /// GETs `path` and prints it: raw JSON with `--json`, else through `render`.
    pub async fn print_get(
        &self,
        path: &str,
        json_out: bool,
        render: fn(&Value),
    ) -> anyhow::Result<std::process::ExitCode> {
        let body = self.get(path).await?;
        if json_out {
            println!("{body}");
        } else {
            render(&body);
        }
        Ok(std::process::ExitCode::SUCCESS)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Self::check(status, body)
    }

    /// Like `get`, but a 503 (Cassandra down) is `None` rather than an error.
    pub async fn get_optional(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        if status == 503 {
            return Ok(None);
        }
        Self::check(status, body).map(Some)
    }

    /// Like `get`, but a 404 (no such resource, or not yet) is `None`.
    pub async fn get_found(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        if status == 404 {
            return Ok(None);
        }
        Self::check(status, body).map(Some)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if !body.is_null() {
            req = req.json(body);
        }
        let (status, body) = self.send(req).await?;
        Self::check(status, body)
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        Self::check(status, body)
    }

    /// Polls a job until it is no longer running.
    pub async fn wait_job(&self, job: &Value) -> anyhow::Result<Value> {
        self.wait_job_with(job, || async {}).await
    }

    /// Polls a job every 500 ms until it is no longer running; `tick` runs
    /// after each poll that finds it still running (to show progress).
    pub async fn wait_job_with<F, Fut>(&self, job: &Value, mut tick: F) -> anyhow::Result<Value>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let id = job["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no job id in {job}"))?;
        loop {
            let job = self.get(&format!("/v1/jobs/{id}")).await?;
            if job["state"] != "running" {
                return Ok(job);
            }
            tick().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls a job until it is no longer running and, while it runs, reads
    /// `path` (the backup or restore the job works on) after each poll and
    /// hands it to `show`. A resource not visible yet (404) or a failed read
    /// is skipped until the next poll.
    pub async fn wait_job_watching(
        &self,
        job: &Value,
        path: &str,
        show: impl Fn(&Value),
    ) -> anyhow::Result<Value> {
        let show = &show;
        self.wait_job_with(job, move || async move {
            if let Ok(Some(detail)) = self.get_found(path).await {
                show(&detail);
            }
        })
        .await
    }

    /// Polls `GET /v1/node` until the node is ready (NORMAL and serving CQL);
    /// tolerates a sidecar that is not up yet and a Cassandra still starting.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self
                .send(self.http.get(format!("{}/v1/node", self.base)))
                .await
            {
                Ok((200, body)) if body["ready"] == true => return Ok("NORMAL".into()),
                Ok((200, body)) => format!(
                    "operation mode {}, native transport running: {}",
                    body["operation_mode"], body["native_transport_running"]
                ),
                Ok((_, body)) => body["error"].as_str().unwrap_or("?").to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "node not NORMAL after {}: {last}",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
