//! The simulator served over HTTP as a XAPI pool master: XML-RPC at `/`,
//! `/RPC2` and any other path, JSON-RPC at `/jsonrpc`. Each call takes its
//! simulated duration (scaled by `speed`) in real time.

use crate::time::SimTime;
use crate::{PoolId, Sim, vhd};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use xapi_proto::wire::{jsonrpc, xmlrpc};
use xapi_proto::{Value, XapiError};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest a request body may go without a byte arriving, on a pool served
/// in real time: a stalled or trickling client gets an error answer and
/// cannot hold a connection for good.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per piece of an `/export_raw_vdi` stream.
const EXPORT_PIECE_BYTES: u64 = 4 << 20;

/// Where a served pool's simulated time comes from.
#[derive(Clone, Debug)]
pub enum ServeClock {
    /// Real time, `speed` times faster; each call takes its simulated duration.
    Real { start: Instant, speed: f64 },
    /// Simulated time set by the caller, in milliseconds; calls take no time of
    /// their own here, because the caller already waited their duration. The
    /// scenario runner uses this to drive the engine over HTTP deterministically.
    External(Arc<AtomicU64>),
}

impl ServeClock {
    /// Real time starting now; `speed` > 0 (1.0 = real time).
    pub fn new(speed: f64) -> Self {
        ServeClock::Real {
            start: Instant::now(),
            speed: if speed > 0.0 { speed } else { 1.0 },
        }
    }

    /// The simulated time now.
    pub fn now(&self) -> SimTime {
        match self {
            ServeClock::Real { start, speed } => SimTime::from(start.elapsed().mul_f64(*speed)),
            ServeClock::External(ms) => SimTime(ms.load(Ordering::SeqCst)),
        }
    }

    fn is_external(&self) -> bool {
        matches!(self, ServeClock::External(_))
    }

    fn real(&self, simulated: Duration) -> Duration {
        match self {
            ServeClock::Real { speed, .. } => simulated.div_f64(*speed),
            ServeClock::External(_) => Duration::ZERO,
        }
    }
}

/// Which host of its pool an endpoint answers as.
#[derive(Clone, Debug, Default)]
pub enum Endpoint {
    /// Whoever is master: the pool's one endpoint.
    #[default]
    Master,
    /// The host at (model) `address`: a member answers HOST_IS_SLAVE, naming
    /// where the master is served (`served` maps model addresses to served ones).
    Host {
        address: String,
        served: Arc<std::collections::BTreeMap<String, String>>,
    },
}

/// What runs after each call, with the model still locked: whatever the
/// caller learns from the reply is already true beside the model (a served
/// delegate's agent listens once its address can be read).
pub type AfterCall = Arc<dyn Fn(&mut Sim, PoolId, SimTime) + Send + Sync>;

/// One pool of a shared simulator, as an HTTP service.
#[derive(Clone)]
pub struct PoolServer {
    pub sim: Arc<Mutex<Sim>>,
    pub pool: PoolId,
    pub clock: ServeClock,
    pub endpoint: Endpoint,
    after_call: Option<AfterCall>,
}

/// How long a call the network lost is held unanswered, in real time:
/// longer than clients wait for a reply (the engine gives up at 600 s).
const UNANSWERED_HOLD: Duration = Duration::from_secs(1800);

/// Longest `event.from` wait, in real seconds.
const MAX_EVENT_WAIT_S: f64 = 60.0;
/// How often a waiting `event.from` looks again.
const EVENT_POLL: Duration = Duration::from_millis(50);

impl PoolServer {
    /// Serves `pool` of `sim` with full records. Its event stream starts with
    /// the first `event.*` call.
    pub fn new(sim: Arc<Mutex<Sim>>, pool: PoolId, clock: ServeClock) -> Self {
        sim.lock()
            .expect("simulator lock poisoned")
            .serve_full_records(pool);
        PoolServer {
            sim,
            pool,
            clock,
            endpoint: Endpoint::Master,
            after_call: None,
        }
    }

    /// The same pool, running `hook` after each call.
    pub fn after_each_call(mut self, hook: AfterCall) -> Self {
        self.after_call = Some(hook);
        self
    }

    /// The same pool, answering as the host `endpoint` names.
    pub fn answering_as(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// True while an endpoint at `address` (`None`: the one that answers
    /// as whoever is master) should listen, in the model's time now: see
    /// [`Sim::listens_at`].
    pub fn listens_at(&self, address: Option<&str>) -> bool {
        let mut sim = self.lock();
        let now = self.clock.now().max(sim.now());
        sim.listens_at(self.pool, address, now)
    }

    /// False when a connection to `address` (`None`: the master) arriving
    /// now is refused: its host is down, or an `xapi_unreachable` fault
    /// (drawn at its rate, and logged) refuses it. Asked once per
    /// connection, where an in-process run asks once per call.
    pub fn admits_connection(&self, address: Option<&str>) -> bool {
        let mut sim = self.lock();
        let now = self.clock.now().max(sim.now());
        let addressed = address.map_or_else(|| sim.master_address(self.pool), str::to_string);
        sim.refusal(self.pool, &addressed, now).is_none()
    }

    /// HOST_IS_SLAVE when this endpoint is a member now.
    fn check_master(&self, sim: &mut Sim, now: SimTime) -> Result<(), XapiError> {
        let Endpoint::Host { address, served } = &self.endpoint else {
            return Ok(());
        };
        sim.advance_to(now);
        let master = sim.master_address(self.pool);
        if *address == master {
            return Ok(());
        }
        let reachable = served.get(&master).cloned().unwrap_or(master);
        Err(XapiError::new(
            xapi_proto::codes::HOST_IS_SLAVE,
            [reachable],
        ))
    }

    /// Performs one call as a pool master would.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, XapiError> {
        match method {
            "system.listMethods" => Ok(Value::Array(
                crate::dispatch::method_names()
                    .into_iter()
                    .map(Value::from)
                    .collect(),
            )),
            "event.from" => self.event_from(params).await,
            // `Async.*` too: the model answers a task, and its work lands
            // when due, whoever calls next (an `event.from` that waits polls).
            _ => self.call_over_the_network(method, params).await,
        }
    }

    /// A synchronous call as the network between client and master treats
    /// it, served in real time: a request a `network` fault on
    /// `engine_master` loses never arrives, and its client hears nothing;
    /// a reply a partition holds comes when the path heals, and one that
    /// `reply_lost` (or a partition that never heals) loses never comes.
    /// On an external clock the runner's links do all this themselves.
    async fn call_over_the_network(
        &self,
        method: &str,
        params: &[Value],
    ) -> Result<Value, XapiError> {
        if self.clock.is_external() {
            return self.call_sync(method, params).await;
        }
        let link = crate::faults::NetworkLink::EngineMaster;
        let delivery = {
            let mut sim = self.lock();
            let now = self.clock.now().max(sim.now());
            sim.network_delivery(self.pool, now, link, "the pool master")
        };
        match delivery {
            crate::faults::Delivery::Lost => return self.never_answered(method).await,
            crate::faults::Delivery::Delivered(delay) => {
                tokio::time::sleep(self.clock.real(delay)).await
            }
        }
        let result = self.call_sync(method, params).await;
        let (path, now) = {
            let mut sim = self.lock();
            let now = self.clock.now().max(sim.now());
            (sim.reply_path(self.pool, now, method, result.is_ok()), now)
        };
        match path {
            crate::faults::ReplyPath::Clear => result,
            crate::faults::ReplyPath::HeldUntil(heals) => {
                tokio::time::sleep(self.clock.real(heals.since(now))).await;
                result
            }
            crate::faults::ReplyPath::Cut => self.never_answered(method).await,
        }
    }

    /// What a client whose request or reply the network lost gets: nothing
    /// for longer than any client waits ([`UNANSWERED_HOLD`]), then an error
    /// nobody reads, so the connection's task ends.
    async fn never_answered(&self, method: &str) -> Result<Value, XapiError> {
        tokio::time::sleep(UNANSWERED_HOLD).await;
        Err(XapiError::internal(format!(
            "{method}: the network lost this exchange"
        )))
    }

    /// Waits the call's simulated duration, then dispatches it.
    async fn call_sync(&self, method: &str, params: &[Value]) -> Result<Value, XapiError> {
        if !self.clock.is_external() {
            let duration = {
                let mut sim = self.lock();
                let now = self.clock.now().max(sim.now());
                sim.call_delay(self.pool, now, method)
            };
            tokio::time::sleep(self.clock.real(duration)).await;
        }
        self.dispatch_now(method, params)
    }

    fn dispatch_now(&self, method: &str, params: &[Value]) -> Result<Value, XapiError> {
        let mut sim = self.lock();
        // Read the clock under the lock, so concurrent calls reach the model in time order.
        let now = self.clock.now().max(sim.now());
        self.check_master(&mut sim, now)?;
        let reply = sim.dispatch(self.pool, now, method, params);
        if let Some(hook) = &self.after_call {
            hook(&mut sim, self.pool, now);
        }
        reply
    }

    /// `event.from(classes, token, timeout)`: waits up to `timeout` real
    /// seconds for something to report.
    async fn event_from(&self, params: &[Value]) -> Result<Value, XapiError> {
        let timeout_s = params
            .get(3)
            .and_then(|t| t.as_f64().or_else(|| t.as_str()?.parse().ok()))
            .unwrap_or(0.0);
        let deadline =
            Instant::now() + Duration::from_secs_f64(timeout_s.clamp(0.0, MAX_EVENT_WAIT_S));
        loop {
            let reply = self.dispatch_now("event.from", params)?;
            let empty = reply["events"].as_array().is_none_or(Vec::is_empty);
            if !empty || Instant::now() >= deadline {
                return Ok(reply);
            }
            tokio::time::sleep(EVENT_POLL).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().expect("simulator lock poisoned")
    }
}

/// The HTTP routes of one pool master. Served in real time, a body that
/// stops arriving for [`BODY_IDLE_TIMEOUT`] is answered with an error (on an
/// external clock, the runner's, time is simulated and nothing stalls).
pub fn router(server: PoolServer) -> Router {
    let real_time = !server.clock.is_external();
    let routes = Router::new()
        .route("/jsonrpc", post(json_rpc))
        .route("/", post(xml_rpc))
        .route("/export_raw_vdi", get(export_raw_vdi))
        .route("/export_raw_vdi/", get(export_raw_vdi))
        // Uploads are as long as their VDI, checked as they arrive.
        .route(
            "/import_raw_vdi",
            put(import_raw_vdi).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/import_raw_vdi/",
            put(import_raw_vdi).layer(DefaultBodyLimit::disable()),
        )
        .fallback(post(xml_rpc))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(server);
    match real_time {
        true => routes.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_IDLE_TIMEOUT,
        )),
        false => routes,
    }
}

fn bad_request(message: String) -> Response {
    // XAPI answers an unparseable body with HTTP 500.
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain")],
        message,
    )
        .into_response()
}

async fn xml_rpc(State(server): State<PoolServer>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("request body is not UTF-8".into());
    };
    let (method, params) = match xmlrpc::parse_call(text) {
        Ok(call) => call,
        Err(e) => return bad_request(e.to_string()),
    };
    let result = server.call(&method, &params).await;
    let body = match (&method[..], &result) {
        ("system.listMethods", Ok(v)) => xmlrpc::render_bare_response(v),
        _ => xmlrpc::render_response(&result),
    };
    ([(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

async fn json_rpc(State(server): State<PoolServer>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("request body is not UTF-8".into());
    };
    let request = match jsonrpc::parse_request(text) {
        Ok(r) => r,
        Err(e) => return bad_request(e.to_string()),
    };
    let result = server.call(&request.method, &request.params).await;
    let reply = jsonrpc::render_response(&request, &result);
    (
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
        .into_response()
}

/// Query of `/export_raw_vdi` and `/import_raw_vdi`.
#[derive(serde::Deserialize)]
struct RawVdiQuery {
    vdi: String,
    session_id: String,
    #[serde(default = "raw_format")]
    format: String,
    #[serde(default)]
    base: Option<String>,
}

fn raw_format() -> String {
    "raw".into()
}

fn http_error(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

/// Checks session, format and VDI; returns the VDI's uuid and size, or the
/// HTTP status and message to answer with.
fn raw_vdi_target(
    server: &PoolServer,
    q: &RawVdiQuery,
) -> Result<(String, u64), (StatusCode, String)> {
    let sim = server.lock();
    if !sim.session_is_valid(server.pool, &q.session_id) {
        return Err((StatusCode::UNAUTHORIZED, "invalid session_id".into()));
    }
    if !matches!(q.format.as_str(), "raw" | "vhd") {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("format {:?}: use raw or vhd", q.format),
        ));
    }
    sim.vdi_size(server.pool, &q.vdi)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no VDI {:?}", q.vdi)))
}

/// Which 2 MiB blocks a VHD export holds: those that are not all zeros, or,
/// relative to `base`, those whose bytes differ from the base's.
fn vhd_blocks(
    sim: &crate::Sim,
    pool: crate::PoolId,
    uuid: &str,
    size: u64,
    base: Option<&str>,
) -> Result<Vec<bool>, String> {
    let mut block = vec![0u8; vhd::BLOCK_BYTES as usize];
    let mut other = vec![0u8; vhd::BLOCK_BYTES as usize];
    (0..size.div_ceil(vhd::BLOCK_BYTES))
        .map(|i| {
            let offset = i * vhd::BLOCK_BYTES;
            let len = vhd::BLOCK_BYTES.min(size - offset) as usize;
            sim.read_vdi(pool, uuid, offset, &mut block[..len])?;
            match base {
                None => Ok(block[..len].iter().any(|b| *b != 0)),
                Some(base) => {
                    sim.read_vdi(pool, base, offset, &mut other[..len])?;
                    Ok(block[..len] != other[..len])
                }
            }
        })
        .collect()
}

/// `format=vhd`: the VDI as a dynamic VHD (zero blocks left out), or with
/// `base` as a differencing VHD holding only the blocks that changed.
fn export_vhd(server: PoolServer, uuid: String, size: u64, base: Option<&str>) -> Response {
    let layout = {
        let sim = server.lock();
        let base = match base {
            None => None,
            Some(base) => match sim.vdi_size(server.pool, base) {
                Some((base_uuid, base_size)) if base_size == size => Some(base_uuid),
                Some((base_uuid, base_size)) => {
                    return http_error(
                        StatusCode::BAD_REQUEST,
                        format!("base VDI {base_uuid} is {base_size} bytes, VDI {uuid} is {size}"),
                    );
                }
                None => return http_error(StatusCode::NOT_FOUND, format!("no base VDI {base:?}")),
            },
        };
        match vhd_blocks(&sim, server.pool, &uuid, size, base.as_deref()) {
            Ok(blocks) => vhd::VhdLayout::new(size, &uuid, blocks, base.as_deref()),
            Err(e) => return http_error(StatusCode::CONFLICT, e),
        }
    };
    let total = layout.total_bytes();
    let blocks: Vec<u64> = layout.blocks().collect();
    let layout = std::sync::Arc::new(layout);
    let head = futures_util::stream::iter([Ok(Bytes::from(layout.head()))]);
    let body = {
        let layout = std::sync::Arc::clone(&layout);
        futures_util::stream::iter(blocks).then(move |block| {
            let (server, uuid, layout) = (server.clone(), uuid.clone(), layout.clone());
            async move {
                let offset = block * vhd::BLOCK_BYTES;
                let len = vhd::BLOCK_BYTES.min(size - offset) as usize;
                let mut piece = layout.block_prefix();
                let start = piece.len();
                // A partial last block is padded with zeros to a whole block.
                piece.resize(start + vhd::BLOCK_BYTES as usize, 0);
                server
                    .lock()
                    .read_vdi(server.pool, &uuid, offset, &mut piece[start..start + len])
                    .map(|()| Bytes::from(piece))
                    .map_err(std::io::Error::other)
            }
        })
    };
    let footer = futures_util::stream::iter([Ok(Bytes::from(layout.footer()))]);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, total.to_string()),
        ],
        axum::body::Body::from_stream(head.chain(body).chain(footer)),
    )
        .into_response()
}

/// GET `/export_raw_vdi`: the VDI's bytes, streamed in pieces.
async fn export_raw_vdi(
    State(server): State<PoolServer>,
    axum::extract::Query(q): axum::extract::Query<RawVdiQuery>,
) -> Response {
    let (uuid, size) = match raw_vdi_target(&server, &q) {
        Ok(target) => target,
        Err((status, message)) => return http_error(status, message),
    };
    match (q.format.as_str(), &q.base) {
        ("vhd", base) => return export_vhd(server, uuid, size, base.as_deref()),
        (_, Some(_)) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "base (a differencing export) needs format=vhd".into(),
            );
        }
        _ => {}
    }
    let pieces = futures_util::stream::unfold(0u64, move |offset| {
        let (server, uuid) = (server.clone(), uuid.clone());
        async move {
            if offset >= size {
                return None;
            }
            let len = EXPORT_PIECE_BYTES.min(size - offset) as usize;
            let mut piece = vec![0u8; len];
            let read = server
                .lock()
                .read_vdi(server.pool, &uuid, offset, &mut piece)
                .map(|()| Bytes::from(piece))
                .map_err(std::io::Error::other);
            Some((read, offset + len as u64))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
}

/// Most of a refused upload's body read (and dropped) before the refusal:
/// a client still sending then reads the answer instead of a reset connection.
const REFUSED_BODY_DRAINED: usize = 16 << 20;

/// Answers a refused upload after draining up to [`REFUSED_BODY_DRAINED`] of
/// its body; nothing of it is written.
async fn refuse_upload(
    mut pieces: axum::body::BodyDataStream,
    status: StatusCode,
    message: String,
) -> Response {
    use futures_util::StreamExt;
    let mut drained = 0;
    while drained < REFUSED_BODY_DRAINED {
        match pieces.next().await {
            Some(Ok(piece)) => drained += piece.len(),
            _ => break,
        }
    }
    http_error(status, message)
}

/// PUT `/import_raw_vdi`: writes the body, as it arrives, into an unplugged
/// VDI: from its start (`format=raw`), or the blocks of a dynamic VHD
/// (`format=vhd`; the blocks it leaves out read as zeros after). A disk
/// larger than the VDI is refused: before anything is written when the
/// Content-Length or the VHD's footer says so, else when it gets there.
async fn import_raw_vdi(
    State(server): State<PoolServer>,
    axum::extract::Query(q): axum::extract::Query<RawVdiQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    let mut pieces = body.into_data_stream();
    let vhd = match q.format.as_str() {
        _ if q.base.is_some() => None,
        "raw" => Some(false),
        "vhd" => Some(true),
        _ => None,
    };
    let Some(vhd) = vhd else {
        let message = format!(
            "import takes format=raw or format=vhd without base, not {:?}",
            q.format
        );
        return refuse_upload(pieces, StatusCode::BAD_REQUEST, message).await;
    };
    let target = {
        let mut sim = server.lock();
        let now = server.clock.now().max(sim.now());
        sim.import_target(server.pool, now, &q.session_id, &q.vdi)
    };
    let target = match target {
        Ok(target) => target,
        Err(refusal) => {
            let status = match refusal {
                crate::ImportRefusal::Unauthorized => StatusCode::UNAUTHORIZED,
                crate::ImportRefusal::NoSuchVdi(_) => StatusCode::NOT_FOUND,
                crate::ImportRefusal::InUse(_) => StatusCode::CONFLICT,
            };
            return refuse_upload(pieces, status, refusal.to_string()).await;
        }
    };
    let (uuid, size) = (target.vdi_uuid, target.virtual_size);
    let too_big = |len: u64| {
        http_error(
            StatusCode::BAD_REQUEST,
            format!("{len} bytes do not fit VDI {uuid} of {size} bytes"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = announced.filter(|len| *len > size && !vhd) {
        let message = format!("{len} bytes do not fit VDI {uuid} of {size} bytes");
        return refuse_upload(pieces, StatusCode::BAD_REQUEST, message).await;
    }
    if vhd {
        return import_vhd(&server, pieces, &uuid, size).await;
    }
    let mut offset = 0u64;
    while let Some(piece) = pieces.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        };
        if offset + piece.len() as u64 > size {
            return too_big(offset + piece.len() as u64);
        }
        if let Err(e) = server.lock().import_vdi(server.pool, &uuid, offset, &piece) {
            return http_error(StatusCode::CONFLICT, e);
        }
        offset += piece.len() as u64;
    }
    StatusCode::OK.into_response()
}

/// The body of a `format=vhd` upload: each allocated block written as it
/// arrives, the blocks the VHD leaves out zeroed at the end.
async fn import_vhd(
    server: &PoolServer,
    mut pieces: axum::body::BodyDataStream,
    uuid: &str,
    size: u64,
) -> Response {
    use futures_util::StreamExt;
    let mut receiver = xapi_proto::vhd::VhdReceiver::new(size);
    let mut write =
        |offset: u64, data: &[u8]| server.lock().import_vdi(server.pool, uuid, offset, data);
    while let Some(piece) = pieces.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        };
        if let Err(e) = receiver.feed(&piece, &mut write) {
            return refuse_upload(pieces, StatusCode::BAD_REQUEST, e.to_string()).await;
        }
    }
    let unallocated = receiver.unallocated().unwrap_or_default();
    if let Err(e) = receiver.finish() {
        return http_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    for (offset, len) in unallocated {
        if let Err(e) = server.lock().import_zeros(server.pool, uuid, offset, len) {
            return http_error(StatusCode::CONFLICT, e);
        }
    }
    StatusCode::OK.into_response()
}
