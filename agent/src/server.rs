//! The agent's HTTP API (axum). Every request must carry the delegate's token;
//! every response carries [`AGENT_HEADER`](crate::protocol::AGENT_HEADER).

use crate::devices::DeviceSet;
use crate::protocol::{
    AGENT_HEADER, BackupRequest, ErrorBody, Health, Identity, RestoreRequest, TaskStarted, Token,
    paths,
};
use crate::store_link::StoreLink;
use crate::tasks::{SharedTasks, Task};
use crate::work::{self, Context, Execution};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// Longest a status request waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How an agent is set up.
pub struct AgentConfig {
    /// The VM the agent runs in.
    pub vm_uuid: String,
    /// The delegate's token: requests must carry it.
    pub token: Token,
    pub devices: Arc<dyn DeviceSet>,
    /// The engine's data store, when one was handed over.
    pub store: Option<Arc<dyn StoreLink>>,
    pub execution: Execution,
}

/// A running agent.
pub struct Agent {
    vm_uuid: String,
    token: Token,
    context: Arc<Context>,
    tasks: SharedTasks,
    /// The tasks' futures, so that the agent's process can die with them.
    running: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            vm_uuid: config.vm_uuid,
            token: config.token.clone(),
            context: Arc::new(Context {
                devices: config.devices,
                store: config.store,
                token: config.token,
                execution: config.execution,
            }),
            tasks: SharedTasks::default(),
            running: std::sync::Mutex::default(),
        })
    }

    /// True while a task is running.
    pub fn busy(&self) -> bool {
        self.tasks().running() > 0
    }

    /// The agent's process dies (a simulated crash): its tasks stop where
    /// they are, and nothing of them is left to ask about.
    pub fn kill(&self) {
        for task in self
            .running
            .lock()
            .expect("running lock poisoned")
            .drain(..)
        {
            task.abort();
        }
    }

    /// The token this agent accepts.
    pub fn token(&self) -> &Token {
        &self.token
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, crate::tasks::Tasks> {
        self.tasks.lock().expect("task table lock poisoned")
    }

    fn task(&self, id: u64) -> Option<Arc<Task>> {
        self.tasks().get(id)
    }

    /// Starts a task running `work` on the runtime; a request whose
    /// idempotency `key` already started one gets that task instead.
    fn spawn<Fut>(
        self: &Arc<Self>,
        key: Option<String>,
        devices: &[u32],
        work: impl FnOnce(Arc<Context>, Arc<Task>) -> Fut,
    ) -> Json<TaskStarted>
    where
        Fut: Future<Output = Result<crate::protocol::TaskResult, String>> + Send + 'static,
    {
        let task = {
            let mut tasks = self.tasks();
            if let Some(id) = key.as_deref().and_then(|k| tasks.started_by(k)) {
                return Json(TaskStarted { task: id });
            }
            let task = tasks.start(devices);
            if let Some(key) = key {
                tasks.note_key(key, task.status().task);
            }
            task
        };
        let id = task.status().task;
        let running = work(Arc::clone(&self.context), Arc::clone(&task));
        let handle = tokio::spawn(async move {
            let outcome = running.await;
            if let Err(e) = &outcome {
                tracing::warn!(task = id, "task failed: {e}");
            }
            task.finish(outcome);
        });
        let mut running = self.running.lock().expect("running lock poisoned");
        running.retain(|t| !t.is_finished());
        running.push(handle.abort_handle());
        Json(TaskStarted { task: id })
    }
}

/// The agent's API.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::IDENTITY, get(identity))
        .route(paths::BACKUP, post(backup))
        .route(paths::RESTORE, post(restore))
        .route("/v1/tasks/{id}", get(task_status))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&agent),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .layer(middleware::map_response(mark_as_agent))
        .with_state(agent)
}

fn no_task(id: u64) -> Response {
    error(StatusCode::NOT_FOUND, format!("no task {id}"))
}

/// A JSON error answer.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

async fn authenticate(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    if !agent
        .token
        .matches_bearer(crate::http::presented_bearer(request.headers()))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong delegate token".into(),
        );
    }
    next.run(request).await
}

async fn mark_as_agent(mut response: Response) -> Response {
    response.headers_mut().insert(
        AGENT_HEADER,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    response
}

async fn health(State(agent): State<Arc<Agent>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        tasks_running: agent.tasks().running(),
    })
}

async fn identity(State(agent): State<Arc<Agent>>) -> Json<Identity> {
    Json(Identity {
        vm_uuid: agent.vm_uuid.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The request's idempotency key, if it has one.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(crate::protocol::IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn backup(
    State(agent): State<Arc<Agent>>,
    headers: axum::http::HeaderMap,
    request: Result<Json<BackupRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("backup request: {e}")),
    };
    if request.disks.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "backup request names no disk".into(),
        );
    }
    let devices: Vec<u32> = request.disks.iter().map(|d| d.device).collect();
    agent
        .spawn(
            idempotency_key(&headers),
            &devices,
            move |ctx, task| async move {
                task.unless_cancelled(work::backup(&ctx, &task, request))
                    .await
            },
        )
        .into_response()
}

async fn restore(
    State(agent): State<Arc<Agent>>,
    headers: axum::http::HeaderMap,
    request: Result<Json<RestoreRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("restore request: {e}")),
    };
    let devices = request.devices.clone();
    agent
        .spawn(
            idempotency_key(&headers),
            &devices,
            move |ctx, task| async move {
                task.unless_cancelled(work::restore(&ctx, &task, request))
                    .await
            },
        )
        .into_response()
}

/// `?after=R&wait_ms=W` on a status request.
#[derive(serde::Deserialize)]
struct Poll {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn task_status(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<u64>,
    Query(poll): Query<Poll>,
) -> Response {
    let Some(task) = agent.task(id) else {
        return no_task(id);
    };
    let status = match poll.after {
        Some(after) => {
            let wait = Duration::from_millis(poll.wait_ms.unwrap_or(0)).min(MAX_WAIT);
            task.wait_past(after, wait).await
        }
        None => task.status(),
    };
    Json(status).into_response()
}

async fn cancel(State(agent): State<Arc<Agent>>, Path(id): Path<u64>) -> Response {
    match agent.task(id) {
        Some(task) => {
            task.cancel();
            Json(task.status()).into_response()
        }
        None => no_task(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::OnBytes;
    use crate::protocol::{BackupDisk, TaskState, TaskStatus};
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use axum::http::header;
    use tower::ServiceExt;

    /// One 1 MiB disk whose reads never finish.
    struct StuckDisk;

    #[async_trait::async_trait]
    impl DeviceSet for StuckDisk {
        fn open_read(&self, _: u32) -> std::io::Result<Box<dyn ads::DiskSource>> {
            Ok(Box::new(ads::MemDisk(vec![0; 1 << 20])))
        }
        fn open_write(&self, _: u32) -> std::io::Result<Box<dyn ads::DiskTarget + Send>> {
            Err(std::io::Error::other("read-only"))
        }
        async fn read_through(&self, _: u32, _: OnBytes<'_>) -> std::io::Result<u64> {
            std::future::pending().await
        }
    }

    async fn call(router: &Router, method: &str, uri: &str, body: &str, token: &Token) -> Response {
        let request = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, token.bearer())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    async fn json<T: serde::de::DeserializeOwned>(response: Response) -> T {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_task_is_cancelled_and_says_so() {
        let token = Token::from_bytes([9; 32]);
        let router = router(Agent::new(AgentConfig {
            vm_uuid: "vm-1".into(),
            token: token.clone(),
            devices: Arc::new(StuckDisk),
            store: None,
            execution: Execution::Inline,
        }));
        let request = serde_json::to_string(&BackupRequest {
            disks: vec![BackupDisk {
                device: 1,
                changed_blocks: None,
            }],
            into_store: None,
        })
        .unwrap();
        let started: TaskStarted =
            json(call(&router, "POST", paths::BACKUP, &request, &token).await).await;
        let uri = format!("/v1/tasks/{}?after=1&wait_ms=5000", started.task);
        let status: TaskStatus = json(call(&router, "GET", &uri, "", &token).await).await;
        assert_eq!(status.state, TaskState::Running, "still reading after 5 s");
        let cancel = format!("/v1/tasks/{}/cancel", started.task);
        call(&router, "POST", &cancel, "", &token).await;
        let uri = format!(
            "/v1/tasks/{}?after={}&wait_ms=5000",
            started.task, status.revision
        );
        let status: TaskStatus = json(call(&router, "GET", &uri, "", &token).await).await;
        assert_eq!(status.state, TaskState::Cancelled);
        assert_eq!(status.error.as_deref(), Some("task cancelled"));
        let health: Health = json(call(&router, "GET", paths::HEALTH, "", &token).await).await;
        assert_eq!(health.tasks_running, 0);
        let missing = call(&router, "GET", "/v1/tasks/99", "", &token).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}

#[cfg(test)]
mod idempotency_tests {
    use super::*;
    use crate::protocol::{BackupDisk, IDEMPOTENCY_HEADER};

    async fn start(router: &Router, token: &Token, key: &str) -> u64 {
        let body = serde_json::to_vec(&BackupRequest {
            disks: vec![BackupDisk {
                device: 1,
                changed_blocks: None,
            }],
            into_store: None,
        })
        .unwrap();
        let request = axum::http::Request::post(paths::BACKUP)
            .header(axum::http::header::AUTHORIZATION, token.bearer())
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, key)
            .body(body)
            .unwrap();
        let response = crate::http::call_service(router, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        serde_json::from_slice::<TaskStarted>(response.body())
            .unwrap()
            .task
    }

    #[tokio::test]
    async fn a_task_start_sent_again_with_its_key_starts_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("xvdb"), vec![1u8; 1 << 20]).unwrap();
        let token = Token::from_bytes([3; 32]);
        let agent = Agent::new(AgentConfig {
            vm_uuid: "vm-1".into(),
            token: token.clone(),
            devices: Arc::new(crate::BlockDevices::new(dir.path())),
            store: None,
            execution: Execution::Inline,
        });
        let router = router(agent);
        let first = start(&router, &token, "backup#1").await;
        assert_eq!(start(&router, &token, "backup#1").await, first);
        assert_ne!(start(&router, &token, "backup#2").await, first);
    }
}
