//! A typed XAPI client: one session, one method per XAPI call the engine makes.

use super::{CallError, RawImage, Transport};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use xapi_proto::records::*;
use xapi_proto::{OpaqueRef, Value, codes};

/// API version string sent at login (XenServer 8 / XCP-ng 8.3).
const API_VERSION: &str = "2.21";
/// Originator sent at login, so pool admins can see who is connected.
const ORIGINATOR: &str = "abd";

/// Login credentials. The password never appears in Debug output or logs.
#[derive(Clone)]
pub struct Credentials {
    /// XAPI user name.
    pub user: String,
    /// XAPI password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A logged-in XAPI session on one pool.
pub struct XapiClient {
    transport: Arc<dyn Transport>,
    credentials: Credentials,
    session: Mutex<OpaqueRef>,
    calls: AtomicU64,
    /// How long a call waits out an unreachable pool before it fails.
    unreachable_limit: Duration,
    /// When the pool stopped answering, while it does not, and whether
    /// that was announced.
    unreachable_since: Mutex<Option<(tokio::time::Instant, bool)>>,
    /// Told when the pool stops answering and when it answers again.
    on_reachability: Option<ReachabilityHook>,
    /// The addresses of the pool's hosts, from the last host records read:
    /// where to look for the master when it cannot be reached.
    members: Mutex<Vec<String>>,
    /// Set once the pool refused `event.from`: tasks are polled from then on.
    events_refused: AtomicBool,
}

/// A change in whether the pool can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Calls stopped getting through (why), and will wait up to the limit.
    Lost { why: String, limit: Duration },
    /// Calls get through again, after this long.
    Back { after: Duration },
    /// The host called answered HOST_IS_SLAVE: calls now go to the master at
    /// this address.
    MasterMoved { address: String },
}

/// What an engine does when reachability changes (it logs it).
pub type ReachabilityHook = Arc<dyn Fn(Reachability) + Send + Sync>;

/// First pause before trying an unreachable pool again; it doubles up to the max.
const UNREACHABLE_FIRST_PAUSE: Duration = Duration::from_secs(2);
const UNREACHABLE_MAX_PAUSE: Duration = Duration::from_secs(30);
/// Calls must fail this long before the pool counts as lost (and the hook hears of it).
const OUTAGE_AFTER: Duration = Duration::from_secs(5);
/// Times a read whose reply was lost is sent again.
const LOST_REPLY_RETRIES: u32 = 2;
/// HOST_IS_SLAVE redirections followed for one call (a master that moves
/// again while the client follows it).
const MAX_REDIRECTS: usize = 3;
/// Longest a task is followed: then it is cancelled, and the call counts as
/// unanswered (its work may still land).
const TASK_LIMIT: Duration = Duration::from_secs(3600);
/// Longest one `event.from` waits for a task to change.
const TASK_EVENT_WAIT_S: f64 = 60.0;
/// Pauses between reads of a task where the pool has no events: the first,
/// doubling up to the last.
const TASK_FIRST_POLL: Duration = Duration::from_millis(500);
const TASK_MAX_POLL: Duration = Duration::from_secs(5);

impl XapiClient {
    /// Logs in to the pool behind `transport`, waiting out a pool that cannot
    /// be reached for at most `unreachable_limit`.
    pub async fn login(
        transport: Arc<dyn Transport>,
        credentials: Credentials,
        unreachable_limit: Duration,
    ) -> Result<Self, CallError> {
        Self::login_knowing(transport, credentials, unreachable_limit, Vec::new()).await
    }

    /// As [`login`](Self::login), knowing the addresses of the pool's other
    /// hosts before any host record is read: while the master cannot be
    /// reached they are asked where it is (or answer as master, when HA moved
    /// the role while this engine was not running).
    pub async fn login_knowing(
        transport: Arc<dyn Transport>,
        credentials: Credentials,
        unreachable_limit: Duration,
        hosts: Vec<String>,
    ) -> Result<Self, CallError> {
        let client = XapiClient {
            transport,
            credentials,
            session: Mutex::new(OpaqueRef::null()),
            calls: AtomicU64::new(0),
            unreachable_limit,
            unreachable_since: Mutex::new(None),
            on_reachability: None,
            members: Mutex::new(hosts),
            events_refused: AtomicBool::new(false),
        };
        let session = patiently(
            unreachable_limit,
            "session.login_with_password",
            |_| async {
                let transport = client.transport.as_ref();
                match Self::open_session(transport, &client.credentials, None).await {
                    Err(CallError::Unreachable(why)) => {
                        match client.login_through_members().await {
                            Some(elsewhere) => elsewhere,
                            None => Err(CallError::Unreachable(why)),
                        }
                    }
                    other => other,
                }
            },
        )
        .await?;
        // The login that got through; asking other hosts counts on its own.
        client.calls.fetch_add(1, Ordering::Relaxed);
        *client.session.lock().expect("session lock poisoned") = session;
        Ok(client)
    }

    /// Where calls go now, and the other hosts known.
    fn other_members(&self) -> Option<(String, Vec<String>)> {
        let home = self.transport.address()?;
        let members = self
            .members
            .lock()
            .expect("members lock poisoned")
            .iter()
            .filter(|m| **m != home)
            .cloned()
            .collect();
        Some((home, members))
    }

    /// The master cannot be reached at login: asks the other known hosts in
    /// turn. One naming another master sends the login there; one that
    /// logs in is master now. `None` when none got through.
    async fn login_through_members(&self) -> Option<Result<OpaqueRef, CallError>> {
        let (home, members) = self.other_members()?;
        for member in members {
            let params = login_params(&self.credentials);
            let method = "session.login_with_password";
            let answer = self.transport.call_to(&member, method, params).await;
            if answer.is_err() {
                self.calls.fetch_add(1, Ordering::Relaxed);
            }
            match answer {
                Err(CallError::Unreachable(_)) => continue,
                Err(CallError::Xapi(e)) if e.is(codes::HOST_IS_SLAVE) => {
                    let Some(master) = another_master(&e, &home) else {
                        continue;
                    };
                    self.master_moved_to(&master);
                    let transport = self.transport.as_ref();
                    return Some(Self::open_session(transport, &self.credentials, None).await);
                }
                answered => {
                    self.master_moved_to(&member);
                    return Some(answered.and_then(|reply| decode(method, reply)));
                }
            }
        }
        None
    }

    /// The same client, telling `hook` when the pool stops and starts answering.
    pub fn with_reachability_hook(mut self, hook: ReachabilityHook) -> Self {
        self.on_reachability = Some(hook);
        self
    }

    /// Records whether a call that started at `started` got through; tells
    /// the hook once per outage. A lone failure that the next try gets past
    /// (a lost connection on a lossy network) is not an outage: the pool is
    /// announced lost only once calls have failed for [`OUTAGE_AFTER`]. A
    /// call already under way when the pool stopped answering proves nothing
    /// about now.
    fn note_reachable(&self, reached: Result<(), &str>, started: tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        let change = {
            let mut outage = self
                .unreachable_since
                .lock()
                .expect("reachability lock poisoned");
            match (reached, *outage) {
                (Ok(()), Some((from, announced))) if started >= from => {
                    *outage = None;
                    announced.then(|| Reachability::Back {
                        after: now.duration_since(from),
                    })
                }
                (Err(_), None) => {
                    *outage = Some((now, false));
                    None
                }
                (Err(why), Some((from, false))) if now.duration_since(from) >= OUTAGE_AFTER => {
                    *outage = Some((from, true));
                    Some(Reachability::Lost {
                        why: why.to_string(),
                        limit: self.unreachable_limit,
                    })
                }
                _ => None,
            }
        };
        if let (Some(change), Some(hook)) = (change, &self.on_reachability) {
            hook(change);
        }
    }

    async fn open_session(
        transport: &dyn Transport,
        credentials: &Credentials,
        hook: Option<&ReachabilityHook>,
    ) -> Result<OpaqueRef, CallError> {
        let params = login_params(credentials);
        let reply = send(transport, hook, "session.login_with_password", params).await?;
        decode("session.login_with_password", reply)
    }

    /// XAPI calls made through this client so far (logins included).
    pub fn call_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn session(&self) -> OpaqueRef {
        self.session.lock().expect("session lock poisoned").clone()
    }

    /// Performs a call with the session; logs in again once if the session
    /// expired, and waits out a pool that cannot be reached (bounded),
    /// looking for the master among the pool's other hosts meanwhile. A read
    /// whose reply was lost is asked again (a few times); any other call's
    /// lost reply is the caller's to resolve, since it may have taken effect.
    pub async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, CallError> {
        let mut asked_again = 0;
        loop {
            match self.call_waiting_out(method, args.clone()).await {
                Err(CallError::Transport(why))
                    if xapi_proto::is_read_only(method) && asked_again < LOST_REPLY_RETRIES =>
                {
                    asked_again += 1;
                    tracing::warn!(method, "reply lost ({why}); asking again");
                }
                other => return other,
            }
        }
    }

    async fn call_waiting_out(&self, method: &str, args: Vec<Value>) -> Result<Value, CallError> {
        patiently(self.unreachable_limit, method, |started| {
            let args = args.clone();
            async move {
                let mut result = self.call_once(method, args.clone()).await;
                if matches!(result, Err(CallError::Unreachable(_)))
                    && let Some(elsewhere) = self.through_members(method, &args).await
                {
                    result = elsewhere;
                }
                match &result {
                    Err(CallError::Unreachable(why)) => self.note_reachable(Err(why), started),
                    // An answer, even an error, proves the pool is there.
                    Ok(_) | Err(CallError::Xapi(_)) => self.note_reachable(Ok(()), started),
                    Err(_) => {}
                }
                result
            }
        })
        .await
    }

    async fn call_once(&self, method: &str, args: Vec<Value>) -> Result<Value, CallError> {
        let hook = self.on_reachability.as_ref();
        let session = self.session();
        let result = self.call_with(&session, method, args.clone(), hook).await;
        match result {
            Err(CallError::Xapi(e)) if e.is(codes::SESSION_INVALID) => {
                tracing::info!(method, "session expired; logging in again");
                let fresh =
                    Self::open_session(self.transport.as_ref(), &self.credentials, hook).await?;
                self.calls.fetch_add(1, Ordering::Relaxed);
                *self.session.lock().expect("session lock poisoned") = fresh.clone();
                self.call_with(&fresh, method, args, hook).await
            }
            other => other,
        }
    }

    /// The master cannot be reached: tries the call on the pool's other
    /// hosts in turn, without moving other calls. A member answers
    /// HOST_IS_SLAVE naming the master: still the lost one (next member), or
    /// another (calls follow it there); a member that answers anything else
    /// is master now (HA took over) and calls go to it. `None` when the link
    /// cannot call other hosts or none got through.
    async fn through_members(
        &self,
        method: &str,
        args: &[Value],
    ) -> Option<Result<Value, CallError>> {
        let (home, members) = self.other_members()?;
        for member in members {
            let mut params = vec![Value::from(self.session().as_str())];
            params.extend_from_slice(args);
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.transport.call_to(&member, method, params).await {
                Err(CallError::Unreachable(_)) => continue,
                Err(CallError::Xapi(e)) if e.is(codes::HOST_IS_SLAVE) => {
                    let Some(master) = another_master(&e, &home) else {
                        continue;
                    };
                    self.master_moved_to(&master);
                    return Some(self.call_once(method, args.to_vec()).await);
                }
                Err(CallError::Xapi(e)) if e.is(codes::SESSION_INVALID) => {
                    // A new master: sessions did not survive the move.
                    self.master_moved_to(&member);
                    return Some(self.call_once(method, args.to_vec()).await);
                }
                answered => {
                    self.master_moved_to(&member);
                    return Some(answered);
                }
            }
        }
        None
    }

    /// Sends later calls to the master at `address`, and says so once.
    fn master_moved_to(&self, address: &str) {
        if let Ok(true) = self.transport.redirect(address) {
            tracing::info!(master = %address, "the master was out of reach; found it among the pool's hosts");
            if let Some(hook) = &self.on_reachability {
                hook(Reachability::MasterMoved {
                    address: address.to_string(),
                });
            }
        }
    }

    /// Remembers the pool's host addresses (where to look for a master that
    /// cannot be reached).
    fn learn_members(&self, hosts: &BTreeMap<OpaqueRef, HostRecord>) {
        let addresses = hosts
            .values()
            .map(|h| h.address.clone())
            .filter(|a| !a.is_empty())
            .collect();
        *self.members.lock().expect("members lock poisoned") = addresses;
    }

    async fn call_with(
        &self,
        session: &OpaqueRef,
        method: &str,
        args: Vec<Value>,
        hook: Option<&ReachabilityHook>,
    ) -> Result<Value, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut params = Vec::with_capacity(args.len() + 1);
        params.push(Value::from(session.as_str()));
        params.extend(args);
        let result = send(self.transport.as_ref(), hook, method, params).await;
        if let Err(e) = &result {
            tracing::debug!(method, error = %e, "XAPI call failed");
        }
        result
    }

    async fn typed<T: DeserializeOwned>(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<T, CallError> {
        decode(method, self.call(method, args).await?)
    }

    async fn void(&self, method: &str, args: Vec<Value>) -> Result<(), CallError> {
        self.call(method, args).await.map(|_| ())
    }

    /// Performs `method` as XAPI's `Async.<method>`: answered with a task at
    /// once, which is followed to its end (with `event.from`, or read now
    /// and then where the pool has no events), so that waiting for a long
    /// call costs the same few calls however long it takes and no HTTP
    /// request stays open for it. The finished task is destroyed. The result
    /// or error is the call's, as the task carries it.
    async fn call_as_task(&self, method: &str, args: Vec<Value>) -> Result<Value, CallError> {
        let async_method = format!("Async.{method}");
        let task: OpaqueRef = match self.typed(&async_method, args).await {
            Err(e @ CallError::Transport(_)) => {
                self.settle_unanswered(&async_method).await;
                return Err(e);
            }
            answered => answered?,
        };
        // The pool took the work on: whatever stops us following it (an
        // outage past the limit, a cancel), it may land all the same.
        let record = self.await_task(method, &task).await.map_err(|e| match e {
            CallError::Transport(_) | CallError::Decode { .. } => e,
            other => CallError::Transport(format!(
                "{method}: its task {task} was accepted, then following it failed: {other}"
            )),
        })?;
        if let Err(e) = self.void("task.destroy", vec![refv(&task)]).await {
            tracing::debug!(%task, error = %e, "could not destroy a finished task");
        }
        task_outcome(method, &task, record)
    }

    /// The reply to an `Async.` call was lost: its task may be running, its
    /// work not landed yet. Waits (reading the pool's tasks now and then,
    /// at most [`TASK_LIMIT`], or until the work is cancelled) until no task
    /// of that call is pending, so that what it would have made is there
    /// for the caller to look for.
    async fn settle_unanswered(&self, async_method: &str) {
        let deadline = tokio::time::Instant::now() + TASK_LIMIT;
        let cancel = work_cancel(async_method.trim_start_matches("Async."));
        let mut pause = TASK_FIRST_POLL;
        loop {
            let read =
                self.typed::<BTreeMap<OpaqueRef, TaskRecord>>("task.get_all_records", vec![]);
            let Ok(tasks) = read.await else {
                return;
            };
            let pending = tasks
                .values()
                .any(|t| t.name_label == async_method && !task_ended(t));
            if !pending || tokio::time::Instant::now() >= deadline {
                return;
            }
            tracing::debug!(async_method, "reply lost; waiting for its task to end");
            if until_cancelled(&cancel, tokio::time::sleep(pause))
                .await
                .is_none()
            {
                return;
            }
            pause = (pause * 2).min(TASK_MAX_POLL);
        }
    }

    async fn typed_task<T: DeserializeOwned>(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<T, CallError> {
        decode(method, self.call_as_task(method, args).await?)
    }

    async fn void_task(&self, method: &str, args: Vec<Value>) -> Result<(), CallError> {
        self.call_as_task(method, args).await.map(|_| ())
    }

    /// The record of `task` (for `method`) once it is no longer pending; a
    /// task still pending at [`TASK_LIMIT`] is cancelled and counts as
    /// unanswered.
    async fn await_task(&self, method: &str, task: &OpaqueRef) -> Result<TaskRecord, CallError> {
        let deadline = tokio::time::Instant::now() + TASK_LIMIT;
        if !self.events_refused.load(Ordering::Relaxed)
            && let Some(watched) = self.watch_task(method, task, deadline).await
        {
            return watched;
        }
        self.poll_task(method, task, deadline).await
    }

    /// Follows `task` with `event.from` until it ends. `None` when the pool
    /// refuses events (then the caller reads the task instead).
    async fn watch_task(
        &self,
        method: &str,
        task: &OpaqueRef,
        deadline: tokio::time::Instant,
    ) -> Option<Result<TaskRecord, CallError>> {
        let classes = vec![format!("task/{task}")];
        let mut token = String::new();
        let mut cancel = work_cancel(method);
        let mut cancelled = false;
        loop {
            // The first call (empty token) returns the task as it is now, at once.
            let wait = match token.is_empty() {
                true => 0.0,
                false => deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs_f64()
                    .min(TASK_EVENT_WAIT_S),
            };
            let read = beyond_cancel(cancelled, self.event_from(&classes, &token, wait));
            let Some(answer) = until_cancelled(&cancel, read).await else {
                self.cancel_task(method, task).await;
                (cancel, cancelled) = (None, true);
                continue;
            };
            let batch = match answer {
                Ok(batch) => batch,
                Err(e) if token.is_empty() && e.code() == Some(codes::MESSAGE_METHOD_UNKNOWN) => {
                    tracing::debug!("event.from unavailable; reading tasks instead");
                    self.events_refused.store(true, Ordering::Relaxed);
                    return None;
                }
                Err(e) => return Some(Err(e)),
            };
            token = batch.token;
            for event in batch.events.iter().filter(|e| e.reference == *task) {
                if event.operation == "del" {
                    return Some(Err(task_vanished(method, task)));
                }
                let record: TaskRecord = match decode("event.from", event.snapshot.clone()) {
                    Ok(record) => record,
                    Err(e) => return Some(Err(e)),
                };
                if task_ended(&record) {
                    return Some(Ok(record));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Some(Err(self.give_up_on_task(method, task).await));
            }
        }
    }

    /// Reads `task` now and then (the pause doubling, bounded) until it ends.
    async fn poll_task(
        &self,
        method: &str,
        task: &OpaqueRef,
        deadline: tokio::time::Instant,
    ) -> Result<TaskRecord, CallError> {
        let mut pause = TASK_FIRST_POLL;
        let mut cancel = work_cancel(method);
        let mut cancelled = false;
        loop {
            let read = self.typed("task.get_record", vec![refv(task)]);
            let record: TaskRecord = match beyond_cancel(cancelled, read).await {
                Err(e) if e.code() == Some(codes::HANDLE_INVALID) => {
                    return Err(task_vanished(method, task));
                }
                other => other?,
            };
            if task_ended(&record) {
                return Ok(record);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.give_up_on_task(method, task).await);
            }
            if until_cancelled(&cancel, tokio::time::sleep(pause))
                .await
                .is_none()
            {
                self.cancel_task(method, task).await;
                (cancel, cancelled) = (None, true);
            }
            pause = (pause * 2).min(TASK_MAX_POLL);
        }
    }

    /// Passes the work's cancel on to its task (XAPI's cancel is
    /// cooperative: the task ends cancelled, or done if it was too far
    /// along), which is then followed to its end.
    async fn cancel_task(&self, method: &str, task: &OpaqueRef) {
        tracing::info!(%task, method, "the work was cancelled; cancelling its task");
        if let Err(e) = self.void("task.cancel", vec![refv(task)]).await {
            tracing::warn!(%task, error = %e, "could not cancel the task of cancelled work");
        }
    }

    /// Cancels a task that ran past [`TASK_LIMIT`] (best effort: XAPI's
    /// cancel is cooperative) and says the call went unanswered.
    async fn give_up_on_task(&self, method: &str, task: &OpaqueRef) -> CallError {
        if let Err(e) = self.void("task.cancel", vec![refv(task)]).await {
            tracing::warn!(%task, error = %e, "could not cancel a task that ran too long");
        }
        CallError::Transport(format!(
            "{method}: its task {task} did not finish within {} s (cancelled)",
            TASK_LIMIT.as_secs()
        ))
    }

    /// Logs out (best effort).
    pub async fn logout(&self) -> Result<(), CallError> {
        self.void("session.logout", vec![]).await
    }

    // ----- pool, hosts, storage, networks -----

    /// `pool.get_all_records` (a pool has exactly one pool object).
    pub async fn pool_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, PoolRecord>, CallError> {
        self.typed("pool.get_all_records", vec![]).await
    }

    /// `host.get_all_records`.
    pub async fn host_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, HostRecord>, CallError> {
        let hosts = self.typed("host.get_all_records", vec![]).await?;
        self.learn_members(&hosts);
        Ok(hosts)
    }

    /// `host_metrics.get_record`.
    pub async fn host_metrics_get_record(
        &self,
        metrics: &OpaqueRef,
    ) -> Result<HostMetricsRecord, CallError> {
        self.typed("host_metrics.get_record", vec![refv(metrics)])
            .await
    }

    /// `host.compute_free_memory`: bytes a new VM can get on the host now.
    pub async fn host_compute_free_memory(&self, host: &OpaqueRef) -> Result<i64, CallError> {
        let v = self
            .call("host.compute_free_memory", vec![refv(host)])
            .await?;
        int64("host.compute_free_memory", &v)
    }

    /// `SR.get_all_records`.
    pub async fn sr_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, SrRecord>, CallError> {
        self.typed("SR.get_all_records", vec![]).await
    }

    /// `PBD.get_all_records`.
    pub async fn pbd_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, PbdRecord>, CallError> {
        self.typed("PBD.get_all_records", vec![]).await
    }

    /// `network.get_all_records`.
    pub async fn network_get_all_records(
        &self,
    ) -> Result<BTreeMap<OpaqueRef, NetworkRecord>, CallError> {
        self.typed("network.get_all_records", vec![]).await
    }

    /// `PIF.get_all_records`.
    pub async fn pif_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, PifRecord>, CallError> {
        self.typed("PIF.get_all_records", vec![]).await
    }

    // ----- VMs -----

    /// `VM.get_all_records`.
    pub async fn vm_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, VmRecord>, CallError> {
        self.typed("VM.get_all_records", vec![]).await
    }

    /// `VM.get_record`.
    pub async fn vm_get_record(&self, vm: &OpaqueRef) -> Result<VmRecord, CallError> {
        self.typed("VM.get_record", vec![refv(vm)]).await
    }

    /// `VM.get_by_name_label`.
    pub async fn vm_get_by_name_label(&self, name: &str) -> Result<Vec<OpaqueRef>, CallError> {
        self.typed("VM.get_by_name_label", vec![Value::from(name)])
            .await
    }

    /// `VM.get_xenstore_data`.
    pub async fn vm_get_xenstore_data(&self, vm: &OpaqueRef) -> Result<StringMap, CallError> {
        self.typed("VM.get_xenstore_data", vec![refv(vm)]).await
    }

    /// `event.from(classes, token, timeout)`: what changed in `classes`
    /// (`vm`, or one object as `vm/OpaqueRef:...`) since `token`, waiting up
    /// to `timeout_s` for something to report. An empty token gives every
    /// current object of the classes.
    pub async fn event_from(
        &self,
        classes: &[String],
        token: &str,
        timeout_s: f64,
    ) -> Result<EventBatch, CallError> {
        self.typed(
            "event.from",
            vec![
                Value::from(classes.to_vec()),
                Value::from(token),
                Value::from(timeout_s),
            ],
        )
        .await
    }

    /// `VM.get_power_state`.
    pub async fn vm_get_power_state(&self, vm: &OpaqueRef) -> Result<PowerState, CallError> {
        self.typed("VM.get_power_state", vec![refv(vm)]).await
    }

    /// `VM.import(url, sr, full_restore, force)`, as a task (`Async.`): the
    /// imported VMs.
    pub async fn vm_import(&self, url: &str, sr: &OpaqueRef) -> Result<Vec<OpaqueRef>, CallError> {
        self.typed_task(
            "VM.import",
            vec![
                Value::from(url),
                refv(sr),
                Value::from(false),
                Value::from(false),
            ],
        )
        .await
    }

    /// `VM.clone(vm, new_name)`, as a task (`Async.`).
    pub async fn vm_clone(&self, vm: &OpaqueRef, name: &str) -> Result<OpaqueRef, CallError> {
        self.typed_task("VM.clone", vec![refv(vm), Value::from(name)])
            .await
    }

    /// `VM.provision(vm)`, as a task (`Async.`).
    pub async fn vm_provision(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        self.void_task("VM.provision", vec![refv(vm)]).await
    }

    /// `VM.snapshot(vm, new_name)`, as a task (`Async.`).
    pub async fn vm_snapshot(&self, vm: &OpaqueRef, name: &str) -> Result<OpaqueRef, CallError> {
        self.typed_task("VM.snapshot", vec![refv(vm), Value::from(name)])
            .await
    }

    /// `VM.set_is_a_template`.
    pub async fn vm_set_is_a_template(&self, vm: &OpaqueRef, value: bool) -> Result<(), CallError> {
        self.void("VM.set_is_a_template", vec![refv(vm), Value::from(value)])
            .await
    }

    /// `VM.set_name_label`.
    pub async fn vm_set_name_label(&self, vm: &OpaqueRef, name: &str) -> Result<(), CallError> {
        self.void("VM.set_name_label", vec![refv(vm), Value::from(name)])
            .await
    }

    /// `VM.set_name_description`.
    pub async fn vm_set_name_description(
        &self,
        vm: &OpaqueRef,
        text: &str,
    ) -> Result<(), CallError> {
        self.void("VM.set_name_description", vec![refv(vm), Value::from(text)])
            .await
    }

    /// Sets `other_config[key] = value`, replacing any value already there
    /// (`add_to_other_config` refuses existing keys).
    pub async fn vm_set_other_config_key(
        &self,
        vm: &OpaqueRef,
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.set_other_config_key("VM", vm, key, value).await
    }

    /// `<class>.remove_from_other_config` then `add_to_other_config`: XAPI
    /// has no setter for one key, and `add` refuses a key already there.
    async fn set_other_config_key(
        &self,
        class: &str,
        object: &OpaqueRef,
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.void(
            &format!("{class}.remove_from_other_config"),
            vec![refv(object), Value::from(key)],
        )
        .await?;
        self.void(
            &format!("{class}.add_to_other_config"),
            vec![refv(object), Value::from(key), Value::from(value)],
        )
        .await
    }

    /// Sets `xenstore_data[key] = value`, replacing any value already there.
    pub async fn vm_set_xenstore_key(
        &self,
        vm: &OpaqueRef,
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.void(
            "VM.remove_from_xenstore_data",
            vec![refv(vm), Value::from(key)],
        )
        .await?;
        self.void(
            "VM.add_to_xenstore_data",
            vec![refv(vm), Value::from(key), Value::from(value)],
        )
        .await
    }

    /// `VM.start(vm, paused=false, force=false)`, as a task (`Async.`).
    pub async fn vm_start(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        self.void_task(
            "VM.start",
            vec![refv(vm), Value::from(false), Value::from(false)],
        )
        .await
    }

    /// `VM.start_on(vm, host, paused=false, force=false)`, as a task (`Async.`).
    pub async fn vm_start_on(&self, vm: &OpaqueRef, host: &OpaqueRef) -> Result<(), CallError> {
        self.void_task(
            "VM.start_on",
            vec![refv(vm), refv(host), Value::from(false), Value::from(false)],
        )
        .await
    }

    /// `VM.clean_shutdown`, as a task (`Async.`).
    pub async fn vm_clean_shutdown(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        self.void_task("VM.clean_shutdown", vec![refv(vm)]).await
    }

    /// `VM.hard_shutdown`, as a task (`Async.`).
    pub async fn vm_hard_shutdown(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        self.void_task("VM.hard_shutdown", vec![refv(vm)]).await
    }

    /// `VM.create(record)`: a new halted VM without devices.
    pub async fn vm_create(&self, vm: &VmCreate) -> Result<OpaqueRef, CallError> {
        self.typed("VM.create", vec![record(vm)]).await
    }

    /// `VM.get_record`, read as the configuration `VM.create` takes.
    pub async fn vm_get_config(&self, vm: &OpaqueRef) -> Result<VmCreate, CallError> {
        self.typed("VM.get_record", vec![refv(vm)]).await
    }

    /// `VM.add_to_blocked_operations(vm, operation, message)`.
    pub async fn vm_add_to_blocked_operations(
        &self,
        vm: &OpaqueRef,
        operation: &str,
        message: &str,
    ) -> Result<(), CallError> {
        let args = vec![refv(vm), Value::from(operation), Value::from(message)];
        self.void("VM.add_to_blocked_operations", args).await
    }

    /// `VM.destroy` (VBDs and VIFs go with the VM; VDIs do not).
    pub async fn vm_destroy(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        self.void("VM.destroy", vec![refv(vm)]).await
    }

    /// `VM.destroy`, where a VM already gone counts as destroyed: one that
    /// HANDLE_INVALID names, or one whose destroy got no answer and that the
    /// pool no longer knows.
    pub async fn vm_destroy_confirmed(&self, vm: &OpaqueRef) -> Result<(), CallError> {
        let Err(e) = self.vm_destroy(vm).await else {
            return Ok(());
        };
        let names_it = |e: &CallError| {
            matches!(e, CallError::Xapi(x) if x.is(codes::HANDLE_INVALID)
                && x.params.iter().any(|p| p == vm.as_str()))
        };
        if names_it(&e) {
            return Ok(()); // someone else destroyed it
        }
        let gone = e.may_have_taken_effect()
            && self
                .vm_get_record(vm)
                .await
                .is_err_and(|read| read.code() == Some(codes::HANDLE_INVALID));
        match gone {
            true => Ok(()),
            false => Err(e),
        }
    }

    // ----- devices and disks -----

    /// `VIF.create`.
    pub async fn vif_create(&self, vif: &VifCreate) -> Result<OpaqueRef, CallError> {
        self.typed("VIF.create", vec![record(vif)]).await
    }

    /// `VIF.get_record`.
    pub async fn vif_get_record(&self, vif: &OpaqueRef) -> Result<VifRecord, CallError> {
        self.typed("VIF.get_record", vec![refv(vif)]).await
    }

    /// `network.get_name_label`.
    pub async fn network_get_name_label(&self, network: &OpaqueRef) -> Result<String, CallError> {
        self.typed("network.get_name_label", vec![refv(network)])
            .await
    }

    /// `VIF.destroy`.
    pub async fn vif_destroy(&self, vif: &OpaqueRef) -> Result<(), CallError> {
        self.void("VIF.destroy", vec![refv(vif)]).await
    }

    /// `VBD.create`.
    pub async fn vbd_create(&self, vbd: &VbdCreate) -> Result<OpaqueRef, CallError> {
        self.typed("VBD.create", vec![record(vbd)]).await
    }

    /// `VBD.get_record`.
    pub async fn vbd_get_record(&self, vbd: &OpaqueRef) -> Result<VbdRecord, CallError> {
        self.typed("VBD.get_record", vec![refv(vbd)]).await
    }

    /// `VBD.plug`.
    pub async fn vbd_plug(&self, vbd: &OpaqueRef) -> Result<(), CallError> {
        self.void("VBD.plug", vec![refv(vbd)]).await
    }

    /// `VBD.unplug`.
    pub async fn vbd_unplug(&self, vbd: &OpaqueRef) -> Result<(), CallError> {
        self.void("VBD.unplug", vec![refv(vbd)]).await
    }

    /// `VBD.destroy`.
    pub async fn vbd_destroy(&self, vbd: &OpaqueRef) -> Result<(), CallError> {
        self.void("VBD.destroy", vec![refv(vbd)]).await
    }

    /// `VDI.get_record`.
    pub async fn vdi_get_record(&self, vdi: &OpaqueRef) -> Result<VdiRecord, CallError> {
        self.typed("VDI.get_record", vec![refv(vdi)]).await
    }

    /// `VDI.get_by_name_label`.
    pub async fn vdi_get_by_name_label(&self, name: &str) -> Result<Vec<OpaqueRef>, CallError> {
        self.typed("VDI.get_by_name_label", vec![Value::from(name)])
            .await
    }

    /// `VDI.destroy`.
    pub async fn vdi_destroy(&self, vdi: &OpaqueRef) -> Result<(), CallError> {
        self.void("VDI.destroy", vec![refv(vdi)]).await
    }

    /// Uploads `image` into `vdi` (`PUT /import_raw_vdi`): the VDI must be
    /// plugged nowhere. A call on the VDI first proves the session (and finds
    /// the master): a server that refuses an upload may close the connection
    /// before its answer can be read. An upload refused for its session all
    /// the same logs in again once; an unreachable pool is waited out as for
    /// any call.
    pub async fn vdi_import_raw(&self, vdi: &OpaqueRef, image: &RawImage) -> Result<(), CallError> {
        self.call("VDI.get_uuid", vec![refv(vdi)]).await?;
        let upload = |session: OpaqueRef| {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let image = image.clone();
            async move {
                self.transport
                    .import_raw_vdi(session.as_str(), vdi.as_str(), image)
                    .await
            }
        };
        patiently(self.unreachable_limit, "import_raw_vdi", |_| async {
            match upload(self.session()).await {
                Err(CallError::Xapi(e)) if e.is(codes::SESSION_INVALID) => {
                    let hook = self.on_reachability.as_ref();
                    let fresh =
                        Self::open_session(self.transport.as_ref(), &self.credentials, hook)
                            .await?;
                    self.calls.fetch_add(1, Ordering::Relaxed);
                    *self.session.lock().expect("session lock poisoned") = fresh.clone();
                    upload(fresh).await
                }
                other => other,
            }
        })
        .await
    }

    /// `VDI.get_all_records`.
    pub async fn vdi_get_all_records(&self) -> Result<BTreeMap<OpaqueRef, VdiRecord>, CallError> {
        self.typed("VDI.get_all_records", vec![]).await
    }

    /// Sets one `other_config` key of a VDI (remove, then add, as XAPI has no set).
    pub async fn vdi_set_other_config_key(
        &self,
        vdi: &OpaqueRef,
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.set_other_config_key("VDI", vdi, key, value).await
    }

    /// `VDI.create`.
    pub async fn vdi_create(
        &self,
        spec: &xapi_proto::records::VdiCreate,
    ) -> Result<OpaqueRef, CallError> {
        self.typed("VDI.create", vec![record(spec)]).await
    }

    /// `VDI.get_by_uuid`.
    pub async fn vdi_get_by_uuid(&self, uuid: &str) -> Result<OpaqueRef, CallError> {
        self.typed("VDI.get_by_uuid", vec![Value::from(uuid)]).await
    }

    /// `VDI.list_changed_blocks`: XAPI's base64 bitmap, 1 bit per 64 KiB block.
    pub async fn vdi_list_changed_blocks(
        &self,
        from: &OpaqueRef,
        to: &OpaqueRef,
    ) -> Result<String, CallError> {
        self.typed("VDI.list_changed_blocks", vec![refv(from), refv(to)])
            .await
    }

    /// `VDI.data_destroy`: keeps only the VDI's CBT metadata.
    pub async fn vdi_data_destroy(&self, vdi: &OpaqueRef) -> Result<(), CallError> {
        self.void("VDI.data_destroy", vec![refv(vdi)]).await
    }

    /// `VDI.add_to_other_config`.
    pub async fn vdi_add_to_other_config(
        &self,
        vdi: &OpaqueRef,
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.void(
            "VDI.add_to_other_config",
            vec![refv(vdi), Value::from(key), Value::from(value)],
        )
        .await
    }
}

/// The cancel of the work a task for `method` belongs to (see
/// [`giving_up_on`]), if a cancel stops that task: one that builds (a clone,
/// a snapshot, a start) does; a shutdown, which is how cancelled work is
/// cleaned up, runs to its end.
fn work_cancel(method: &str) -> Option<tokio_util::sync::CancellationToken> {
    let cleans_up = matches!(method, "VM.clean_shutdown" | "VM.hard_shutdown");
    match cleans_up {
        true => None,
        false => GIVE_UP.try_with(Clone::clone).ok(),
    }
}

/// `work`'s output, or `None` when `cancel` is raised first (`work` is
/// dropped: pass only waits and reads).
async fn until_cancelled<T>(
    cancel: &Option<tokio_util::sync::CancellationToken>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match cancel {
        Some(token) => tokio::select! {
            biased;
            () = token.cancelled() => None,
            out = work => Some(out),
        },
        None => Some(work.await),
    }
}

/// Runs `read` (a read following a task whose cancel was sent, when
/// `cancelled`) outside the work's cancel: the task may still do its work,
/// so an outage is waited out as for any call, not given up on at once.
async fn beyond_cancel<T>(cancelled: bool, read: impl std::future::Future<Output = T>) -> T {
    match cancelled {
        true => {
            GIVE_UP
                .scope(tokio_util::sync::CancellationToken::new(), read)
                .await
        }
        false => read.await,
    }
}

/// True once a task is no longer pending (`cancelling` is still under way).
fn task_ended(record: &TaskRecord) -> bool {
    !matches!(record.status, TaskStatus::Pending | TaskStatus::Cancelling)
}

/// What a task that ended says of its call: the result (XML-RPC text of the
/// value), or the error it failed with.
fn task_outcome(method: &str, task: &OpaqueRef, record: TaskRecord) -> Result<Value, CallError> {
    match record.status {
        TaskStatus::Success => {
            xapi_proto::wire::xmlrpc::parse_value(&record.result).map_err(|e| CallError::Decode {
                method: method.to_string(),
                detail: format!("task {task} result: {e}"),
            })
        }
        TaskStatus::Cancelled if record.error_info.is_empty() => Err(CallError::Xapi(
            xapi_proto::XapiError::new(codes::TASK_CANCELLED, [task.as_str()]),
        )),
        _ if record.error_info.is_empty() => Err(CallError::Decode {
            method: method.to_string(),
            detail: format!("task {task} failed without saying why"),
        }),
        _ => Err(CallError::Xapi(xapi_proto::XapiError::from_description(
            &record.error_info,
        ))),
    }
}

/// A task destroyed before it ended (by someone else, or lost with its
/// master): its call's work may or may not have landed.
fn task_vanished(method: &str, task: &OpaqueRef) -> CallError {
    CallError::Transport(format!(
        "{method}: its task {task} vanished before it finished"
    ))
}

/// One event from `event.from`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct XapiEvent {
    /// Lowercase class name (`vm`).
    pub class: String,
    /// `add`, `mod` or `del`.
    pub operation: String,
    #[serde(rename = "ref")]
    pub reference: OpaqueRef,
    /// The object's record after the change.
    #[serde(default)]
    pub snapshot: Value,
}

/// What one `event.from` returned.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct EventBatch {
    pub events: Vec<XapiEvent>,
    /// Where the next call starts.
    pub token: String,
}

/// Decodes XAPI's CBT bitmap (base64, most significant bit first) into one
/// bool per 64 KiB block of a disk of `size_bytes`.
pub fn decode_cbt_bitmap(text: &str, size_bytes: u64) -> Result<Vec<bool>, String> {
    let blocks = size_bytes.div_ceil(ads::chunking::CBT_BLOCK_BYTES) as usize;
    abd_agent::protocol::decode_blocks(text, blocks)
}

/// The master a member's HOST_IS_SLAVE names, unless it is `home` (the one
/// that cannot be reached) or none.
fn another_master(e: &xapi_proto::XapiError, home: &str) -> Option<String> {
    e.params
        .first()
        .filter(|master| !master.is_empty() && *master != home)
        .cloned()
}

/// `session.login_with_password`'s parameters.
fn login_params(credentials: &Credentials) -> Vec<Value> {
    vec![
        Value::from(credentials.user.as_str()),
        Value::from(credentials.password.as_str()),
        Value::from(API_VERSION),
        Value::from(ORIGINATOR),
    ]
}

fn refv(r: &OpaqueRef) -> Value {
    Value::from(r.as_str())
}

fn record<T: serde::Serialize>(r: &T) -> Value {
    serde_json::to_value(r).expect("records serialize")
}

fn decode<T: DeserializeOwned>(method: &str, v: Value) -> Result<T, CallError> {
    serde_json::from_value(v).map_err(|e| CallError::Decode {
        method: method.to_string(),
        detail: e.to_string(),
    })
}

/// An int64 result: a JSON number, or a string as XML-RPC carries it.
fn int64(method: &str, v: &Value) -> Result<i64, CallError> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| CallError::Decode {
            method: method.to_string(),
            detail: format!("expected an int64, got {v}"),
        })
}

/// Sends one call, following the pool master when the host called answers
/// HOST_IS_SLAVE (a member does nothing before it answers that, so the call
/// is safe to send again); tells `hook` where the master went.
async fn send(
    transport: &dyn Transport,
    hook: Option<&ReachabilityHook>,
    method: &str,
    params: Vec<Value>,
) -> Result<Value, CallError> {
    let mut followed: Option<String> = None;
    for _ in 0..=MAX_REDIRECTS {
        match transport.call(method, params.clone()).await {
            Err(CallError::Xapi(e)) if e.is(codes::HOST_IS_SLAVE) => {
                let address = e.params.first().cloned().unwrap_or_default();
                if followed.as_deref() == Some(address.as_str()) {
                    break;
                }
                let moved = transport.redirect(&address)?;
                tracing::info!(method, master = %address, "pool member answered HOST_IS_SLAVE; following the master");
                // Calls in flight when the master moved all learn it: say it once.
                if let (true, Some(hook)) = (moved, hook) {
                    hook(Reachability::MasterMoved {
                        address: address.clone(),
                    });
                }
                followed = Some(address);
            }
            other => return other,
        }
    }
    Err(CallError::Transport(format!(
        "{method}: too many HOST_IS_SLAVE redirections (last to {})",
        followed.unwrap_or_default()
    )))
}

tokio::task_local! {
    /// Raised when the work a call belongs to is cancelled: a call waiting out
    /// an unreachable pool then gives up at once (it sent nothing), and a
    /// task that builds is cancelled.
    static GIVE_UP: tokio_util::sync::CancellationToken;
}

/// Runs `work` so that its calls stop waiting out an unreachable pool once
/// `give_up` is raised (a cancelled job or VM), and the tasks of calls that
/// build (clones, snapshots, starts) are cancelled; shutdowns run to their
/// end, and no call that got through is cut short.
pub async fn giving_up_on<F: std::future::Future>(
    give_up: tokio_util::sync::CancellationToken,
    work: F,
) -> F::Output {
    GIVE_UP.scope(give_up, work).await
}

/// Runs `attempt` until it gets past an unreachable pool: nothing was sent,
/// so any call may be tried again. Pauses double up to a maximum; gives up
/// once `limit` has passed since the first try, or at once when the work
/// the call belongs to is cancelled (see [`giving_up_on`]).
async fn patiently<T, F, Fut>(limit: Duration, method: &str, mut attempt: F) -> Result<T, CallError>
where
    F: FnMut(tokio::time::Instant) -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let first = tokio::time::Instant::now();
    let deadline = first + limit;
    let mut pause = UNREACHABLE_FIRST_PAUSE;
    loop {
        match attempt(tokio::time::Instant::now()).await {
            Err(CallError::Unreachable(why)) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(CallError::Unreachable(format!(
                        "{why} (still, after {} s of trying)",
                        now.duration_since(first).as_secs()
                    )));
                }
                let pause_now = pause.min(deadline - now);
                tracing::warn!(
                    method,
                    "pool unreachable ({why}); trying again in {pause_now:?}"
                );
                let give_up = GIVE_UP.try_with(Clone::clone).ok();
                let cancelled = async {
                    match &give_up {
                        Some(token) => token.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(pause_now) => {}
                    () = cancelled => {
                        return Err(CallError::Unreachable(format!(
                            "{why} (stopped waiting: the work was cancelled)"
                        )));
                    }
                }
                pause = (pause * 2).min(UNREACHABLE_MAX_PAUSE);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cancel_stops_waiting_out_an_unreachable_pool_and_only_then() {
        let refused = |_| async { Err::<(), _>(CallError::Unreachable("refused".into())) };
        let limit = Duration::from_secs(300);
        // Not cancelled: waits the whole limit.
        let started = tokio::time::Instant::now();
        let err = patiently(limit, "VM.start", refused).await.unwrap_err();
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
        assert!(err.to_string().contains("still"), "{err}");
        // Cancelled after 3 s: gives up then.
        let token = tokio_util::sync::CancellationToken::new();
        let raise = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            raise.cancel();
        });
        let started = tokio::time::Instant::now();
        let err = giving_up_on(token, patiently(limit, "VM.start", refused))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    /// A pool whose master (10.0.0.1) is down: 10.0.0.2 still names it as
    /// master, 10.0.0.3 was made master by HA and takes logins.
    struct MasterDown {
        addressed: Mutex<String>,
    }

    #[async_trait::async_trait]
    impl Transport for MasterDown {
        async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
            let addressed = self.addressed.lock().unwrap().clone();
            self.call_to(&addressed, method, params).await
        }

        async fn call_to(
            &self,
            address: &str,
            _method: &str,
            _params: Vec<Value>,
        ) -> Result<Value, CallError> {
            match address {
                "10.0.0.2" => Err(CallError::Xapi(xapi_proto::XapiError::new(
                    codes::HOST_IS_SLAVE,
                    ["10.0.0.1"],
                ))),
                "10.0.0.3" => Ok(Value::from("OpaqueRef:session")),
                other => Err(CallError::Unreachable(format!("{other}: no route"))),
            }
        }

        fn redirect(&self, address: &str) -> Result<bool, CallError> {
            let mut addressed = self.addressed.lock().unwrap();
            let moved = *addressed != address;
            *addressed = address.to_string();
            Ok(moved)
        }

        fn address(&self) -> Option<String> {
            Some(self.addressed.lock().unwrap().clone())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_while_the_master_is_down_finds_it_through_the_hosts_it_knows() {
        let credentials = Credentials {
            user: "root".into(),
            password: "secret".into(),
        };
        let limit = Duration::from_secs(60);
        let pool = || {
            Arc::new(MasterDown {
                addressed: Mutex::new("10.0.0.1".into()),
            })
        };
        // Told of no other host, the login waits out its limit and fails.
        let alone = XapiClient::login(pool(), credentials.clone(), limit).await;
        assert!(
            matches!(alone, Err(CallError::Unreachable(_))),
            "{:?}",
            alone.err()
        );
        // Told of the others: one still names the dead master, the next is master now.
        let transport = pool();
        let hosts = vec!["10.0.0.2".to_string(), "10.0.0.3".to_string()];
        let started = tokio::time::Instant::now();
        let client = XapiClient::login_knowing(transport.clone(), credentials, limit, hosts)
            .await
            .expect("the new master is found");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no waiting for the dead master"
        );
        assert_eq!(transport.address().as_deref(), Some("10.0.0.3"));
        assert_eq!(client.session().as_str(), "OpaqueRef:session");
        assert_eq!(client.call_count(), 2, "the refused host, then the login");
    }
}
