//! Joins the engine to the simulator: XAPI transports (in-process, or over
//! HTTP to the served simulator) that take the simulated time each call costs
//! on tokio's (paused) clock. Delegate agents are in `sim_agents`.

use async_trait::async_trait;
use engine::xapi::{CallError, RawImage, Transport};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use xapi_proto::Value;
use xapi_sim::faults::{Delivery, ReplyPath};
use xapi_sim::time::SimTime;
use xapi_sim::{PoolId, Sim};

/// The simulator shared by every link of a run.
pub type SharedSim = Arc<Mutex<Sim>>;

/// Simulated time: tokio time since the run started.
#[derive(Clone, Copy)]
pub struct SimClock {
    start: Instant,
}

impl SimClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        SimClock {
            start: Instant::now(),
        }
    }

    /// The tokio instant at simulated time `t`.
    pub fn instant_at(&self, t: Duration) -> Instant {
        self.start + t
    }

    /// Simulated time now.
    pub fn now(&self) -> SimTime {
        SimTime::from(Instant::now().duration_since(self.start))
    }
}

pub(crate) fn lock(sim: &SharedSim) -> std::sync::MutexGuard<'_, Sim> {
    sim.lock().expect("simulator lock poisoned")
}

/// Wakes blocked `event.from` calls whenever another call lands.
pub type Activity = Arc<tokio::sync::Notify>;

/// Longest `event.from` wait a caller may ask for, in seconds.
const MAX_EVENT_WAIT_S: f64 = 3600.0;

/// How long a refused connection takes to be reported.
const REFUSED_AFTER: Duration = Duration::from_millis(200);

/// How long a connection the network loses takes to time out (the engine's
/// HTTP transports' connect timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `Err(Unreachable)` when the host at `addressed` refuses the connection
/// now (it is down, or an `xapi_unreachable` fault), or a `network` fault on
/// the engine's path to the master loses it (the connect times out); a delay
/// the network adds is taken first.
async fn refused(
    sim: &SharedSim,
    pool: PoolId,
    addressed: &str,
    clock: SimClock,
) -> Result<(), CallError> {
    let refusal = lock(sim).refusal(pool, addressed, clock.now());
    if let Some(why) = refusal {
        tokio::time::sleep(REFUSED_AFTER).await;
        return Err(CallError::Unreachable(why));
    }
    let link = xapi_sim::faults::NetworkLink::EngineMaster;
    let delivery = lock(sim).network_delivery(pool, clock.now(), link, "the pool master");
    match delivery {
        Delivery::Delivered(delay) => {
            tokio::time::sleep(delay).await;
            Ok(())
        }
        Delivery::Lost => {
            tokio::time::sleep(CONNECT_TIMEOUT).await;
            Err(CallError::Unreachable(
                "connecting to the pool master timed out".into(),
            ))
        }
    }
}

/// `event.from(session, classes, token, timeout)` as XAPI has it, a call that
/// blocks until something to report or the timeout, on the simulated clock:
/// asks without waiting and, while nothing is reported, sleeps until the
/// simulator next has something due or another call lands.
async fn wait_for_events<F, Fut>(
    sim: &SharedSim,
    clock: SimClock,
    activity: &Activity,
    mut params: Vec<Value>,
    mut ask: F,
) -> Result<Value, CallError>
where
    F: FnMut(Vec<Value>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, CallError>>,
{
    let timeout_s = params
        .get(3)
        .and_then(|t| t.as_f64().or_else(|| t.as_str()?.parse().ok()))
        .unwrap_or(0.0)
        .clamp(0.0, MAX_EVENT_WAIT_S);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
    if let Some(timeout) = params.get_mut(3) {
        *timeout = Value::from(0.0);
    }
    loop {
        let landed = activity.notified();
        tokio::pin!(landed);
        landed.as_mut().enable();
        let reply = ask(params.clone()).await?;
        let empty = reply["events"].as_array().is_none_or(Vec::is_empty);
        if !empty || Instant::now() >= deadline {
            return Ok(reply);
        }
        let due = lock(sim)
            .next_due()
            .map(|t| clock.instant_at(Duration::from_millis(t.as_ms())));
        let wake = due.map_or(deadline, |d| d.min(deadline));
        tokio::select! {
            biased;
            () = &mut landed => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Steps a simulated upload's transfer time is taken in, each followed by a
/// progress report.
const UPLOAD_STEPS: u64 = 20;

/// One call on the simulated clock, whichever link carries it: refused when
/// the host at `addressed` is, takes the call's simulated time, then `send`s
/// it (`event.from` blocks as XAPI's does); a call that may change records
/// wakes waiting `event.from`s.
async fn simulated_call(
    (sim, pool, clock, activity): (&SharedSim, PoolId, SimClock, &Activity),
    addressed: &str,
    method: &str,
    params: Vec<Value>,
    send: impl Fn(Vec<Value>) -> Result<Value, CallError>,
) -> Result<Value, CallError> {
    refused(sim, pool, addressed, clock).await?;
    let sent = Instant::now();
    // The call takes its time first; its effect lands when it completes,
    // if the master is still up to complete it.
    let duration = lock(sim).call_delay(pool, clock.now(), method);
    tokio::time::sleep(duration).await;
    if let Some(down) = lock(sim).host_down(pool, addressed, clock.now()) {
        return Err(CallError::Transport(format!(
            "{method}: the connection broke ({down})"
        )));
    }
    let result = if method == "event.from" {
        let ask = |params: Vec<Value>| std::future::ready(send(params));
        wait_for_events(sim, clock, activity, params, ask).await
    } else {
        let result = send(params);
        if !xapi_sim::is_read_only(method) {
            activity.notify_waiters();
        }
        result
    };
    reply_comes_back((sim, pool, clock), method, sent, result.is_ok()).await?;
    result
}

/// Waits for the reply to `method` (sent at `sent`) to cross a partition
/// between the engine and the master: it arrives when the path heals, or
/// the engine gives up at its call timeout, the call's effect having landed;
/// a `reply_lost` fault loses the reply to a call that `took_effect`.
async fn reply_comes_back(
    (sim, pool, clock): (&SharedSim, PoolId, SimClock),
    method: &str,
    sent: Instant,
    took_effect: bool,
) -> Result<(), CallError> {
    let gave_up = sent + engine::xapi::CALL_TIMEOUT;
    let arrives = match lock(sim).reply_path(pool, clock.now(), method, took_effect) {
        ReplyPath::Clear => return Ok(()),
        ReplyPath::HeldUntil(at) => clock.instant_at(Duration::from_millis(at.as_ms())),
        ReplyPath::Cut => gave_up,
    };
    if arrives < gave_up {
        tokio::time::sleep_until(arrives).await;
        return Ok(());
    }
    tokio::time::sleep_until(gave_up).await;
    Err(CallError::Transport(format!(
        "{method}: no reply within {} s (timed out)",
        engine::xapi::CALL_TIMEOUT.as_secs()
    )))
}

/// An upload (`/import_raw_vdi`) on the simulated clock, whichever link
/// carries it: refused as a call is; then, like a call, it takes its time
/// first (the image's bytes at the VDI's SR bandwidth) and lands when that
/// is over: checked then (the host still there, the session live, the VDI
/// unplugged, the image fits) and `send` then.
async fn simulated_upload(
    (sim, pool, clock): (&SharedSim, PoolId, SimClock),
    addressed: &str,
    session: &str,
    vdi: &str,
    image: RawImage,
    send: impl FnOnce(&str, RawImage) -> Result<(), CallError>,
) -> Result<(), CallError> {
    refused(sim, pool, addressed, clock).await?;
    let bandwidth = lock(sim).import_bandwidth(pool, vdi);
    // The bytes go out over the transfer's time, a step at a time.
    let wire = image.wire_bytes();
    let step = Duration::from_secs_f64(wire as f64 / bandwidth / UPLOAD_STEPS as f64);
    for done in 1..=UPLOAD_STEPS {
        tokio::time::sleep(step).await;
        (image.on_sent)(wire * done / UPLOAD_STEPS);
    }
    if let Some(why) = lock(sim).refusal(pool, addressed, clock.now()) {
        return Err(CallError::Transport(format!(
            "uploading VDI {vdi}: the connection broke ({why})"
        )));
    }
    let target = lock(sim)
        .import_target(pool, clock.now(), session, vdi)
        .map_err(|refusal| match refusal {
            xapi_sim::ImportRefusal::Unauthorized => CallError::Xapi(xapi_proto::XapiError::new(
                xapi_proto::codes::SESSION_INVALID,
                [session],
            )),
            other => CallError::Transport(format!("uploading VDI {vdi}: {other}")),
        })?;
    if image.size > target.virtual_size {
        return Err(CallError::Transport(format!(
            "uploading VDI {vdi}: {} bytes do not fit its {} bytes",
            image.size, target.virtual_size
        )));
    }
    send(&target.vdi_uuid, image)
}

/// An upload's bytes landing in a simulated VDI, in order. A sparse one's
/// writer leaves empty stretches out; they read as zeros after, as the
/// blocks a VHD upload leaves out do.
struct SimUpload<'a> {
    sim: &'a SharedSim,
    pool: PoolId,
    vdi_uuid: &'a str,
    sparse: bool,
    /// Where the writer has written through.
    next: u64,
}

impl SimUpload<'_> {
    /// Zeros what the writer skipped, up to `offset`.
    fn zero_through(&mut self, offset: u64) -> Result<(), String> {
        if offset > self.next {
            lock(self.sim).import_zeros(self.pool, self.vdi_uuid, self.next, offset - self.next)?;
            self.next = offset;
        }
        Ok(())
    }
}

impl ads::DiskTarget for SimUpload<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.zero_through(offset).map_err(std::io::Error::other)?;
        lock(self.sim)
            .import_vdi(self.pool, self.vdi_uuid, offset, data)
            .map_err(std::io::Error::other)?;
        self.next = self.next.max(offset + data.len() as u64);
        Ok(())
    }

    fn zeroed(&self) -> bool {
        self.sparse
    }
}

/// XAPI calls to one host of a simulated pool: the master, until the master
/// role moves and the engine follows it.
pub struct SimTransport {
    pub sim: SharedSim,
    pub pool: PoolId,
    pub clock: SimClock,
    pub activity: Activity,
    /// The host's address calls go to.
    addressed: Mutex<String>,
}

impl SimTransport {
    /// A link to `pool` at the address clients are configured with.
    pub fn new(sim: SharedSim, pool: PoolId, clock: SimClock, activity: Activity) -> Self {
        let addressed = Mutex::new(lock(&sim).configured_address(pool));
        SimTransport {
            sim,
            pool,
            clock,
            activity,
            addressed,
        }
    }

    fn addressed(&self) -> String {
        self.addressed
            .lock()
            .expect("address lock poisoned")
            .clone()
    }

    fn dispatch(
        &self,
        addressed: &str,
        method: &str,
        params: &[Value],
    ) -> Result<Value, CallError> {
        let now = self.clock.now();
        lock(&self.sim)
            .dispatch_to(self.pool, addressed, now, method, params)
            .map_err(CallError::Xapi)
    }
}

#[async_trait]
impl Transport for SimTransport {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        let addressed = self.addressed();
        self.call_to(&addressed, method, params).await
    }

    async fn call_to(
        &self,
        addressed: &str,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, CallError> {
        let send = |params: Vec<Value>| self.dispatch(addressed, method, &params);
        let link = (&self.sim, self.pool, self.clock, &self.activity);
        simulated_call(link, addressed, method, params, send).await
    }

    async fn import_raw_vdi(
        &self,
        session: &str,
        vdi: &str,
        image: RawImage,
    ) -> Result<(), CallError> {
        let addressed = self.addressed();
        let send = |vdi_uuid: &str, image: RawImage| {
            let mut target = SimUpload {
                sim: &self.sim,
                pool: self.pool,
                vdi_uuid,
                sparse: image.allocated.is_some(),
                next: 0,
            };
            (image.write)(&mut target)
                .and_then(|()| target.zero_through(image.size))
                .map_err(|e| CallError::Transport(format!("uploading VDI {vdi_uuid}: {e}")))
        };
        let link = (&self.sim, self.pool, self.clock);
        simulated_upload(link, &addressed, session, vdi, image, send).await
    }

    fn redirect(&self, address: &str) -> Result<bool, CallError> {
        let mut addressed = self.addressed.lock().expect("address lock poisoned");
        let moved = *addressed != address;
        *addressed = address.to_string();
        Ok(moved)
    }

    fn address(&self) -> Option<String> {
        Some(self.addressed())
    }
}

/// XAPI calls to a simulated pool served over HTTP on loopback, through the
/// engine's real HTTP transport and wire codec.
///
/// The call's simulated duration is still taken on the paused clock; then the
/// served pools' clock is set to "now" and this thread blocks until the reply
/// is in, so simulated time cannot move while the call is on the wire. Same
/// calls at the same simulated times: the run is the in-process run, byte for byte.
pub struct HttpLink {
    pub sim: SharedSim,
    pub pool: PoolId,
    pub clock: SimClock,
    /// The served pools' simulated time, in milliseconds.
    pub served_time_ms: Arc<std::sync::atomic::AtomicU64>,
    pub http: Arc<engine::xapi::HttpTransport>,
    /// Each host's model address, and the loopback address it is served at:
    /// the engine sees model addresses (as in-process), the wire served ones.
    pub served: Arc<std::collections::BTreeMap<String, String>>,
    /// The real-time runtime the HTTP client and the servers run on.
    pub io: tokio::runtime::Handle,
    pub activity: Activity,
}

#[async_trait]
impl Transport for HttpLink {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        let addressed = self.address().unwrap_or_default();
        self.call_to(&addressed, method, params).await
    }

    async fn call_to(
        &self,
        addressed: &str,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, CallError> {
        let served = self
            .served
            .get(addressed)
            .map_or(addressed, String::as_str)
            .to_string();
        // The engine sees model addresses, as in-process: a member's
        // HOST_IS_SLAVE names where the master is served.
        let send = |params: Vec<Value>| {
            self.send(&served, method, params).map_err(|e| match e {
                CallError::Xapi(mut e) if e.is(xapi_proto::codes::HOST_IS_SLAVE) => {
                    if let Some(named) = e.params.first_mut()
                        && let Some((model, _)) = self.served.iter().find(|(_, s)| *s == named)
                    {
                        *named = model.clone();
                    }
                    CallError::Xapi(e)
                }
                other => other,
            })
        };
        let link = (&self.sim, self.pool, self.clock, &self.activity);
        simulated_call(link, addressed, method, params, send).await
    }

    async fn import_raw_vdi(
        &self,
        session: &str,
        vdi: &str,
        image: RawImage,
    ) -> Result<(), CallError> {
        let addressed = self.address().unwrap_or_default();
        let send = |_: &str, image: RawImage| {
            let (http, session, vdi) =
                (Arc::clone(&self.http), session.to_string(), vdi.to_string());
            self.blocking(async move { http.import_raw_vdi(&session, &vdi, image).await })
        };
        let link = (&self.sim, self.pool, self.clock);
        simulated_upload(link, &addressed, session, vdi, image, send).await
    }

    fn redirect(&self, address: &str) -> Result<bool, CallError> {
        let served = self.served.get(address).map_or(address, String::as_str);
        self.http.redirect(served)
    }

    /// The model address of the host the HTTP transport calls.
    fn address(&self) -> Option<String> {
        let served = self.http.address()?;
        let model = self.served.iter().find(|(_, s)| **s == served);
        Some(model.map_or(served, |(model, _)| model.clone()))
    }
}

impl HttpLink {
    /// Sends one call to the host served at `served` at the current simulated
    /// time and blocks until its reply.
    fn send(&self, served: &str, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        let (http, method, served) = (
            Arc::clone(&self.http),
            method.to_string(),
            served.to_string(),
        );
        self.blocking(async move { http.call_to(&served, &method, params).await })
    }

    /// Runs `request` on the HTTP runtime at the current simulated time (the
    /// served pools' clock set to it) and blocks until it is done.
    fn blocking<T: Send + 'static>(
        &self,
        request: impl std::future::Future<Output = Result<T, CallError>> + Send + 'static,
    ) -> Result<T, CallError> {
        self.served_time_ms.store(
            self.clock.now().as_ms(),
            std::sync::atomic::Ordering::SeqCst,
        );
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        self.io.spawn(async move {
            let _ = reply_tx.send(request.await);
        });
        reply_rx
            .recv()
            .unwrap_or_else(|_| Err(CallError::Transport("the HTTP worker stopped".into())))
    }
}
