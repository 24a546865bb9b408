//! `AgentClient`: drives a delegate's agent over its HTTP API. Starts a task,
//! follows it with long polls (turning its progress into 25/50/75/100 % steps),
//! and cancels it if the engine stops waiting.

use super::{
    AgentError, AgentLink, DiskProgress, LinkError, ReadReport, RestoreSource, StoreTarget, Token,
    TokenRegistry, WrittenDisk,
};
use abd_agent::protocol::{
    AGENT_HEADER, BackupDisk, BackupRequest, ErrorBody, Identity, RestoreRequest, StoreBackup,
    TaskResult, TaskStarted, TaskState, TaskStatus, encode_blocks, paths,
};
use axum::http::{Method, Request, Response, StatusCode, header};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// How long one status request may wait for a change.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Failed status requests (the agent answered with an error) tolerated in a
/// row before the task counts as lost.
const POLL_RETRIES: u32 = 3;
/// How long the engine keeps asking an agent it cannot reach (a network
/// partition, an agent restarting) before the task counts as lost: the agent
/// works on meanwhile, so contact that comes back finds the task where it got.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(300);
/// Pause before asking again.
const POLL_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The engine's client for delegate agents.
pub struct AgentClient {
    link: Arc<dyn AgentLink>,
    tokens: Arc<TokenRegistry>,
    /// Numbers the idempotency keys of task starts.
    next_key: std::sync::atomic::AtomicU64,
}

/// Progress callback.
pub type OnProgress<'a> = &'a (dyn Fn(DiskProgress) + Send + Sync);

/// Asked while an agent cannot be reached: is its delegate VM still running?
/// When it is not, the task is lost and waiting is no use.
pub type StillRunning<'a> = &'a (
        dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>
            + Send
            + Sync
    );

impl AgentClient {
    pub fn new(link: Arc<dyn AgentLink>, tokens: Arc<TokenRegistry>) -> Self {
        Self {
            link,
            tokens,
            next_key: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The tokens this client issues (the data store accepts them).
    pub fn tokens(&self) -> &Arc<TokenRegistry> {
        &self.tokens
    }

    async fn request(
        &self,
        ip: Ipv4Addr,
        token: &Token,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Result<Response<Vec<u8>>, AgentError> {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, token.bearer());
        if let Some(key) = key {
            request = request.header(abd_agent::protocol::IDEMPOTENCY_HEADER, key);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.unwrap_or_default())
            .expect("a well-formed request");
        let response = self.link.send(ip, request).await.map_err(|e| match e {
            LinkError::Unreachable(_) => AgentError::Unreachable { ip },
            LinkError::Broken(message) => AgentError::NoReply { ip, message },
        })?;
        if !response.headers().contains_key(AGENT_HEADER) {
            return Err(AgentError::Foreign { ip });
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            // An agent, but not this delegate's: another delegate holds the address.
            return Err(AgentError::Foreign { ip });
        }
        if response.status() != StatusCode::OK {
            let body = response.body();
            let message = serde_json::from_slice::<ErrorBody>(body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
            let message = format!("HTTP {}: {message}", response.status());
            return Err(match response.status() {
                StatusCode::NOT_FOUND => AgentError::NotFound { ip, message },
                _ => AgentError::Failed { ip, message },
            });
        }
        Ok(response)
    }

    async fn request_json<T: serde::de::DeserializeOwned>(
        &self,
        ip: Ipv4Addr,
        token: &Token,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Result<T, AgentError> {
        let response = self.request(ip, token, method, uri, body, key).await?;
        serde_json::from_slice(response.body()).map_err(|e| AgentError::Failed {
            ip,
            message: format!("{uri}: unreadable answer: {e}"),
        })
    }

    /// The VM uuid the agent at `ip` reports as its own.
    pub async fn identity(&self, ip: Ipv4Addr, token: &Token) -> Result<String, AgentError> {
        let identity: Identity = self
            .request_json(ip, token, Method::GET, paths::IDENTITY, None, None)
            .await?;
        Ok(identity.vm_uuid)
    }

    /// Reads the `disks` disks hot-plugged into the delegate at `ip` (devices
    /// 1..n): into the data store when there is a `target`, otherwise only a
    /// read test.
    pub async fn read_disks(
        &self,
        ip: Ipv4Addr,
        token: &Token,
        disks: usize,
        target: Option<StoreTarget<'_>>,
        progress: OnProgress<'_>,
        still_running: StillRunning<'_>,
    ) -> Result<ReadReport, AgentError> {
        let request = BackupRequest {
            disks: (0..disks)
                .map(|i| BackupDisk {
                    device: i as u32 + 1,
                    changed_blocks: target
                        .as_ref()
                        .and_then(|t| t.changed_blocks.get(i).cloned().flatten())
                        .map(|blocks| encode_blocks(&blocks)),
                })
                .collect(),
            into_store: target.as_ref().map(|t| StoreBackup {
                vm: t.vm_id.to_string(),
                previous: t.previous.map(|p| p.seq),
            }),
        };
        let (status, out_of_reach) = self
            .run_task(ip, token, paths::BACKUP, &request, progress, still_running)
            .await?;
        let mut report = ReadReport {
            disks,
            out_of_reach,
            ..Default::default()
        };
        match status.result {
            Some(TaskResult::Backup {
                disks,
                stored,
                store_retries,
            }) => {
                report.store_retries = store_retries;
                for disk in disks {
                    report.bytes_read += disk.read.bytes_read;
                    report.written.push(WrittenDisk {
                        userdevice: disk.device.to_string(),
                        manifest: disk.manifest,
                        read: disk.read,
                    });
                }
                report.stored = stored;
            }
            Some(TaskResult::Read { bytes_read }) => report.bytes_read = bytes_read,
            other => return Err(unexpected(ip, other)),
        }
        Ok(report)
    }

    /// Writes `source`'s disks onto the disks hot-plugged read-write into the
    /// delegate at `ip` (devices 1..n), each verified against its digest. The
    /// report's `bytes_read` counts the bytes written.
    pub async fn write_disks(
        &self,
        ip: Ipv4Addr,
        token: &Token,
        source: RestoreSource<'_>,
        progress: OnProgress<'_>,
        still_running: StillRunning<'_>,
    ) -> Result<ReadReport, AgentError> {
        let disks = source.manifest.disks.len();
        let request = RestoreRequest {
            vm: source.manifest.vm.clone(),
            version: source.manifest.seq,
            base: source.base.map(|b| b.seq),
            devices: (1..=disks as u32).collect(),
        };
        let (status, out_of_reach) = self
            .run_task(ip, token, paths::RESTORE, &request, progress, still_running)
            .await?;
        match status.result {
            Some(TaskResult::Restore {
                bytes_written,
                store_retries,
            }) => Ok(ReadReport {
                disks,
                bytes_read: bytes_written,
                out_of_reach,
                store_retries,
                ..Default::default()
            }),
            other => Err(unexpected(ip, other)),
        }
    }

    /// Starts a task with `request` at `path` and follows it to its end;
    /// also says how long the agent was out of reach meanwhile.
    async fn run_task(
        &self,
        ip: Ipv4Addr,
        token: &Token,
        path: &str,
        request: &impl serde::Serialize,
        progress: OnProgress<'_>,
        still_running: StillRunning<'_>,
    ) -> Result<(TaskStatus, Duration), AgentError> {
        let mut out_of_reach = Duration::ZERO;
        let body = serde_json::to_vec(request).expect("request serialises");
        // The key makes a start sent again (its reply lost, or never
        // connected) answer with the task it started: never two tasks.
        let n = self
            .next_key
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{path}#{n}");
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        let started: TaskStarted = loop {
            match self
                .request_json(
                    ip,
                    token,
                    Method::POST,
                    path,
                    Some(body.clone()),
                    Some(&key),
                )
                .await
            {
                Err(e @ (AgentError::Unreachable { .. } | AgentError::NoReply { .. }))
                    if unreachable_since
                        .is_none_or(|since| since.elapsed() < UNREACHABLE_LIMIT) =>
                {
                    if !still_running().await {
                        return Err(e);
                    }
                    tracing::warn!(%ip, "cannot reach the agent to start its task ({e}); trying again");
                    unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    tokio::time::sleep(POLL_RETRY_PAUSE).await;
                }
                other => break other?,
            }
        };
        if let Some(since) = unreachable_since {
            out_of_reach += since.elapsed();
        }
        let mut guard = CancelOnDrop {
            link: Arc::clone(&self.link),
            ip,
            token: token.clone(),
            task: Some(started.task),
        };
        let mut shown = Vec::new();
        let mut revision = 0;
        let mut failures = 0;
        unreachable_since = None;
        loop {
            let uri = format!(
                "{}/{}?after={revision}&wait_ms={}",
                paths::TASKS,
                started.task,
                LONG_POLL.as_millis()
            );
            let status: TaskStatus = match self
                .request_json(ip, token, Method::GET, &uri, None, None)
                .await
            {
                Ok(status) => status,
                // A blip: ask again a few times.
                Err(e @ AgentError::Failed { .. }) if failures < POLL_RETRIES => {
                    failures += 1;
                    tracing::debug!(%ip, "task status failed ({e}); retrying");
                    tokio::time::sleep(POLL_RETRY_PAUSE).await;
                    continue;
                }
                // Out of reach (the network, or the agent restarting):
                // keep asking for a bounded time. Asking for a status is
                // safe to repeat, so a lost reply is no different.
                Err(e @ (AgentError::Unreachable { .. } | AgentError::NoReply { .. }))
                    if unreachable_since
                        .is_none_or(|since| since.elapsed() < UNREACHABLE_LIMIT) =>
                {
                    if !still_running().await {
                        return Err(e);
                    }
                    if unreachable_since.is_none() {
                        tracing::warn!(%ip, "lost contact with the agent ({e}); asking again for up to {UNREACHABLE_LIMIT:?}");
                    }
                    unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    tokio::time::sleep(POLL_RETRY_PAUSE).await;
                    continue;
                }
                // The agent is there but does not know the task: it restarted.
                Err(AgentError::NotFound { .. }) => {
                    guard.task = None;
                    return Err(AgentError::TaskLost {
                        ip,
                        task: started.task,
                    });
                }
                Err(e) => return Err(e),
            };
            failures = 0;
            if let Some(since) = unreachable_since.take() {
                out_of_reach += since.elapsed();
            }
            revision = status.revision;
            report_progress(&status, &mut shown, progress);
            match status.state {
                TaskState::Running => continue,
                TaskState::Succeeded => {
                    guard.task = None;
                    return Ok((status, out_of_reach));
                }
                TaskState::Failed | TaskState::Cancelled => {
                    guard.task = None;
                    let message = status.error.unwrap_or_else(|| "task failed".into());
                    return Err(if status.retryable {
                        AgentError::StoreUnreachable { ip, message }
                    } else {
                        AgentError::Failed { ip, message }
                    });
                }
            }
        }
    }
}

fn unexpected(ip: Ipv4Addr, result: Option<TaskResult>) -> AgentError {
    AgentError::Failed {
        ip,
        message: format!("unexpected task result {result:?}"),
    }
}

/// Turns disk progress into one callback per quarter reached.
fn report_progress(status: &TaskStatus, shown: &mut Vec<u8>, progress: OnProgress<'_>) {
    shown.resize(status.disks.len(), 0);
    let count = status.disks.len();
    for (i, disk) in status.disks.iter().enumerate() {
        if disk.size_bytes == 0 {
            continue;
        }
        let percent = (disk.done_bytes.min(disk.size_bytes) * 100 / disk.size_bytes) as u8;
        while shown[i] + 25 <= percent {
            shown[i] += 25;
            progress(DiskProgress {
                disk_index: i + 1,
                disk_count: count,
                size_bytes: disk.size_bytes,
                percent: shown[i],
            });
        }
    }
}

/// Cancels the agent's task if the engine stops following it before its end
/// (a job cancelled or timed out).
struct CancelOnDrop {
    link: Arc<dyn AgentLink>,
    ip: Ipv4Addr,
    token: Token,
    task: Option<u64>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(task) = self.task else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (link, ip) = (Arc::clone(&self.link), self.ip);
        let request = Request::post(format!("{}/{task}/cancel", paths::TASKS))
            .header(header::AUTHORIZATION, self.token.bearer())
            .body(Vec::new())
            .expect("a well-formed request");
        runtime.spawn(async move {
            if let Err(e) = link.send(ip, request).await {
                tracing::warn!(%ip, task, "could not cancel the agent's task: {e}");
            }
        });
    }
}
