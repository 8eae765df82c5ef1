//! Long work never runs inside a request: the API starts a job here and answers 202
//! with its id; `GET /v1/jobs/{id}` reports it. Jobs of one exclusive group (e.g. all
//! node actions) never run at once: a second one is refused with the running job's id.
//! This module tracks jobs; what a job does is its caller's business.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};
use utoipa::ToSchema;
use uuid::Uuid;

/// How many finished jobs are remembered.
const KEEP_FINISHED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// What the job does, e.g. `node.start`.
    pub kind: String,
    pub state: JobState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub started_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<time::OffsetDateTime>,
    /// What the job produced, when it succeeded.
    pub result: Option<Value>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("another {group} job is running: {} ({})", .running.id, .running.kind)]
pub struct Conflict {
    pub group: String,
    pub running: Box<Job>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<Uuid, Job>,
    finished: VecDeque<Uuid>,
    exclusive: HashMap<String, Uuid>,
}

impl Inner {
    fn conflict(&self, group: &str) -> Option<Conflict> {
        self.exclusive.get(group).map(|running| Conflict {
            group: group.to_string(),
            running: Box::new(self.jobs[running].clone()),
        })
    }
}

#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Mutex<Inner>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Jobs {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            inner: Arc::default(),
            tracker: TaskTracker::new(),
            cancel,
        }
    }

    /// Starts `work` as a job unless a job of `group` is running.
    pub fn start<F, Fut>(&self, group: &str, kind: &str, work: F) -> Result<Job, Conflict>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        let job = Job {
            id: Uuid::new_v4(),
            kind: kind.to_string(),
            state: JobState::Running,
            started_at: time::OffsetDateTime::now_utc(),
            finished_at: None,
            result: None,
            error: None,
        };
        {
            let mut inner = self.inner.lock().expect("jobs lock");
            if let Some(conflict) = inner.conflict(group) {
                return Err(conflict);
            }
            inner.exclusive.insert(group.to_string(), job.id);
            inner.jobs.insert(job.id, job.clone());
        }
        let fut = work(self.cancel.child_token());
        let inner = self.inner.clone();
        let id = job.id;
        let group = group.to_string();
        let span = tracing::info_span!("job", %id, kind);
        info!(parent: &span, "job started");
        self.tracker.spawn(
            async move {
                let outcome = fut.await;
                match &outcome {
                    Ok(_) => info!("job succeeded"),
                    Err(e) => warn!(error = %e, "job failed"),
                }
                let mut inner = inner.lock().expect("jobs lock");
                if inner.exclusive.get(&group) == Some(&id) {
                    inner.exclusive.remove(&group);
                }
                if let Some(job) = inner.jobs.get_mut(&id) {
                    job.finished_at = Some(time::OffsetDateTime::now_utc());
                    match outcome {
                        Ok(v) => {
                            job.state = JobState::Succeeded;
                            job.result = Some(v);
                        }
                        Err(e) => {
                            job.state = JobState::Failed;
                            job.error = Some(e);
                        }
                    }
                }
                inner.finished.push_back(id);
                while inner.finished.len() > KEEP_FINISHED {
                    if let Some(old) = inner.finished.pop_front() {
                        inner.jobs.remove(&old);
                    }
                }
            }
            .instrument(span),
        );
        Ok(job)
    }

    /// The job of `group` that runs, as the conflict a start would meet.
    pub fn conflict(&self, group: &str) -> Option<Conflict> {
        self.inner.lock().expect("jobs lock").conflict(group)
    }

    /// Whether a job of `group` is running.
    pub fn busy(&self, group: &str) -> bool {
        self.inner
            .lock()
            .expect("jobs lock")
            .exclusive
            .contains_key(group)
    }

    pub fn get(&self, id: Uuid) -> Option<Job> {
        self.inner.lock().expect("jobs lock").jobs.get(&id).cloned()
    }

    /// All remembered jobs, newest first.
    pub fn list(&self) -> Vec<Job> {
        let mut jobs: Vec<Job> = self
            .inner
            .lock()
            .expect("jobs lock")
            .jobs
            .values()
            .cloned()
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.started_at));
        jobs
    }

    /// Waits for running jobs after their cancellation token fired.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_job_of_a_group_conflicts_until_the_first_ends() {
        let jobs = Jobs::new(CancellationToken::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = jobs
            .start("node", "node.stop", |_| async move {
                rx.await.ok();
                Ok(serde_json::json!({"ok": true}))
            })
            .unwrap();
        let conflict = jobs
            .start("node", "node.flush", |_| async { Ok(Value::Null) })
            .unwrap_err();
        assert_eq!(conflict.running.id, first.id);
        // Another group is independent.
        jobs.start("backup", "backup", |_| async { Err("boom".into()) })
            .unwrap();
        tx.send(()).unwrap();
        for _ in 0..100 {
            if jobs.get(first.id).unwrap().state == JobState::Succeeded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done = jobs.get(first.id).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
        assert!(done.finished_at.is_some());
        jobs.start("node", "node.flush", |_| async { Ok(Value::Null) })
            .expect("group is free again");
        jobs.wait().await;
        let failed: Vec<Job> = jobs
            .list()
            .into_iter()
            .filter(|j| j.kind == "backup")
            .collect();
        assert_eq!(failed[0].state, JobState::Failed);
        assert_eq!(failed[0].error.as_deref(), Some("boom"));
    }
}
