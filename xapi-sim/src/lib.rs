//! A deterministic, in-process model of XenServer / XCP-ng pools that answers
//! XAPI calls.
//!
//! The simulator is a state machine over simulated time: callers pass `now`
//! with every call, and every state change lands in one ordered event log.
//! One seeded RNG decides ids, MACs and how long operations take. Nothing here
//! knows about backup delegates: the appliance is modelled as a kind of guest
//! OS that honours `vm-data/...` settings, nothing more.

pub mod content;
pub mod dhcp;
mod dispatch;
pub mod endpoints;
pub mod events;
pub mod faults;
pub mod log;
pub mod model;
mod ops;
pub mod rng;
mod schedule;
pub mod server;
pub mod spec;
pub mod time;
mod timing;
pub mod tls;
pub use xapi_proto::vhd;

use log::{Event, EventLog};
use model::PoolModel;
use rng::SimRng;
use schedule::{Schedule, Scheduled};
use spec::{SpecError, WorldSpec};
use std::net::Ipv4Addr;
use std::time::Duration;
use time::SimTime;
use xapi_proto::{Value, XapiError, codes};

pub use ops::ApplianceAnswer;
pub use xapi_proto::is_read_only;

/// Which pool (XAPI endpoint) a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(pub usize);

/// The simulated world: every pool, one clock, one RNG, one event log.
pub struct Sim {
    pools: Vec<PoolModel>,
    rng: SimRng,
    log: EventLog,
    schedule: Schedule,
    spec: WorldSpec,
    faults: faults::Faults,
    now: SimTime,
}

/// A disk attached to an appliance, as its agent sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachedDisk {
    /// XAPI `userdevice` of the VBD (1..n for hot-plugged disks).
    pub userdevice: String,
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// Bytes to read.
    pub virtual_size: i64,
    /// Sequential read bandwidth of the disk's SR.
    pub bandwidth_bytes_per_s: f64,
}

/// A VDI an upload (`/import_raw_vdi`) may write.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportTarget {
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// Bytes it holds.
    pub virtual_size: u64,
    /// Write bandwidth of its SR (taken as its sequential read bandwidth).
    pub bandwidth_bytes_per_s: f64,
}

/// Why `/import_raw_vdi` refuses an upload, as its HTTP status says.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ImportRefusal {
    /// 401: the session is not a live session of the pool.
    #[error("invalid session_id")]
    Unauthorized,
    /// 404: no VDI with that ref or uuid.
    #[error("no VDI {0:?}")]
    NoSuchVdi(String),
    /// 409: a VM has the VDI plugged, or it is read-only.
    #[error("VDI {0} is in use or read-only")]
    InUse(String),
}

/// The VDI of pool `m` that `vdi` names, by ref or by uuid (as the raw VDI
/// HTTP handlers take it).
fn vdi_named<'a>(m: &'a PoolModel, vdi: &str) -> Option<&'a xapi_proto::records::VdiRecord> {
    m.vdis
        .iter()
        .find(|(r, rec)| r.as_str() == vdi || rec.uuid == vdi)
        .map(|(_, rec)| rec)
}

/// The VDI with `uuid` in pool `m`.
fn find_vdi<'a>(
    m: &'a PoolModel,
    uuid: &str,
) -> Result<
    (
        &'a xapi_proto::OpaqueRef,
        &'a xapi_proto::records::VdiRecord,
    ),
    String,
> {
    m.vdis
        .iter()
        .find(|(_, r)| r.uuid == uuid)
        .ok_or_else(|| format!("no VDI {uuid} in pool {}", m.name))
}

impl Sim {
    /// Builds the world a spec describes, seeded with `seed`.
    pub fn new(spec: &WorldSpec, seed: u64) -> Result<Sim, SpecError> {
        spec.check()?;
        let mut rng = SimRng::new(seed);
        let mut pools: Vec<PoolModel> = spec
            .pools
            .iter()
            .map(|p| model::build_pool(p, &mut rng))
            .collect();
        // Disk bytes follow from the seed (and the pool), not from the RNG's stream.
        for (i, pool) in pools.iter_mut().enumerate() {
            for content in pool.vdi_content.values_mut() {
                content.disk.seed = seed ^ ((i as u64 + 1) << 48);
            }
        }
        let mut faults = faults::Faults::arm(&spec.faults, seed, |name| {
            spec.pools.iter().position(|p| p.name == name)
        });
        let schedule = schedule_faults(&mut faults, &pools);
        Ok(Sim {
            pools,
            rng,
            log: EventLog::default(),
            schedule,
            spec: spec.clone(),
            faults,
            now: SimTime::ZERO,
        })
    }

    /// Reads bytes of the VDI with `vdi_uuid` as a delegate with it plugged in
    /// would: a snapshot shows the day it was taken, a live disk today, and
    /// what was written into it (a restore) shows over that.
    pub fn read_vdi(
        &self,
        pool: PoolId,
        vdi_uuid: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), String> {
        let m = &self.pools[pool.0];
        let (vdi, record) = find_vdi(m, vdi_uuid)?;
        if record.vdi_type == xapi_proto::records::VdiType::CbtMetadata {
            return Err(format!(
                "VDI {vdi_uuid} holds CBT metadata only (its data was destroyed)"
            ));
        }
        if offset + buf.len() as u64 > record.virtual_size as u64 {
            return Err(format!("read past the end of VDI {vdi_uuid}"));
        }
        match m.vdi_content.get(vdi) {
            Some(content) => content.disk.read_at(offset, content.day_at(self.now), buf),
            None => buf.fill(0),
        }
        if let Some(blocks) = m.written.get(vdi) {
            let block_bytes = content::BLOCK_BYTES as u64;
            let end = offset + buf.len() as u64;
            for (block, data) in blocks.range(offset / block_bytes..end.div_ceil(block_bytes)) {
                let start = (block * block_bytes).max(offset);
                let stop = (block * block_bytes + data.len() as u64).min(end);
                if start < stop {
                    let from = (start - block * block_bytes) as usize;
                    buf[(start - offset) as usize..(stop - offset) as usize]
                        .copy_from_slice(&data[from..from + (stop - start) as usize]);
                }
            }
        }
        Ok(())
    }

    /// Writes bytes into the VDI with `vdi_uuid`, as a delegate does through a
    /// read-write VBD that is plugged in (restores).
    pub fn write_vdi(
        &mut self,
        pool: PoolId,
        vdi_uuid: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let (modes, read_only) = self.plugged_modes(pool, vdi_uuid)?;
        if !modes.contains(&xapi_proto::records::VbdMode::RW) || read_only {
            return Err(format!("VDI {vdi_uuid} is not plugged read-write"));
        }
        self.write_blocks(pool, vdi_uuid, offset, data)
    }

    /// Writes bytes into a VDI that no VM has plugged, as `/import_raw_vdi` does.
    pub fn import_vdi(
        &mut self,
        pool: PoolId,
        vdi_uuid: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let (modes, read_only) = self.plugged_modes(pool, vdi_uuid)?;
        if !modes.is_empty() || read_only {
            return Err(format!("VDI {vdi_uuid} is in use or read-only"));
        }
        self.write_blocks(pool, vdi_uuid, offset, data)
    }

    /// Makes `len` bytes at `offset` of a VDI no VM has plugged read as
    /// zeros (the blocks a sparse upload leaves out), writing only where
    /// they do not already.
    pub fn import_zeros(
        &mut self,
        pool: PoolId,
        vdi_uuid: &str,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let step = content::BLOCK_BYTES as u64;
        let mut block = vec![0u8; step as usize];
        let mut at = offset;
        while at < offset + len {
            let take = step.min(offset + len - at) as usize;
            self.read_vdi(pool, vdi_uuid, at, &mut block[..take])?;
            if block[..take].iter().any(|b| *b != 0) {
                block[..take].fill(0);
                self.import_vdi(pool, vdi_uuid, at, &block[..take])?;
            }
            at += take as u64;
        }
        Ok(())
    }

    /// Modes of the plugged VBDs of a VDI, and whether the VDI is read-only.
    fn plugged_modes(
        &self,
        pool: PoolId,
        vdi_uuid: &str,
    ) -> Result<(Vec<xapi_proto::records::VbdMode>, bool), String> {
        let m = &self.pools[pool.0];
        let (_, record) = find_vdi(m, vdi_uuid)?;
        let modes = record
            .vbds
            .iter()
            .filter_map(|b| m.vbds.get(b))
            .filter(|b| b.currently_attached)
            .map(|b| b.mode)
            .collect();
        Ok((modes, record.read_only))
    }

    /// The uuid and size of a VDI named by ref or uuid, if it exists.
    pub fn vdi_size(&self, pool: PoolId, vdi: &str) -> Option<(String, u64)> {
        vdi_named(&self.pools[pool.0], vdi).map(|rec| (rec.uuid.clone(), rec.virtual_size as u64))
    }

    /// Checks an upload into `vdi` (a ref or a uuid) with `session` at `now`.
    pub fn import_target(
        &mut self,
        pool: PoolId,
        now: SimTime,
        session: &str,
        vdi: &str,
    ) -> Result<ImportTarget, ImportRefusal> {
        self.advance_to(now);
        if !self.session_is_valid(pool, session) {
            return Err(ImportRefusal::Unauthorized);
        }
        let m = &self.pools[pool.0];
        let record = vdi_named(m, vdi).ok_or_else(|| ImportRefusal::NoSuchVdi(vdi.to_string()))?;
        let (modes, read_only) = self
            .plugged_modes(pool, &record.uuid)
            .map_err(|_| ImportRefusal::NoSuchVdi(vdi.to_string()))?;
        if !modes.is_empty() || read_only {
            return Err(ImportRefusal::InUse(record.uuid.clone()));
        }
        Ok(ImportTarget {
            vdi_uuid: record.uuid.clone(),
            virtual_size: record.virtual_size as u64,
            bandwidth_bytes_per_s: self.import_bandwidth(pool, vdi),
        })
    }

    /// Write bandwidth of the SR of `vdi` (a ref or a uuid) for uploads
    /// (taken as its sequential read bandwidth; the default for an unknown VDI).
    pub fn import_bandwidth(&self, pool: PoolId, vdi: &str) -> f64 {
        let m = &self.pools[pool.0];
        vdi_named(m, vdi)
            .and_then(|rec| m.sr_bandwidth_bytes_per_s.get(&rec.sr))
            .copied()
            .unwrap_or(ops::DEFAULT_SR_BANDWIDTH)
    }

    /// True when `session` is a live session of `pool`.
    pub fn session_is_valid(&self, pool: PoolId, session: &str) -> bool {
        self.pools[pool.0]
            .sessions
            .keys()
            .any(|s| s.as_str() == session)
    }

    fn write_blocks(
        &mut self,
        pool: PoolId,
        vdi_uuid: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let block_bytes = content::BLOCK_BYTES as u64;
        let (vdi, size) = {
            let (vdi, record) = find_vdi(&self.pools[pool.0], vdi_uuid)?;
            (vdi.clone(), record.virtual_size as u64)
        };
        if offset + data.len() as u64 > size {
            return Err(format!("write past the end of VDI {vdi_uuid}"));
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let block = at / block_bytes;
            let within = (at % block_bytes) as usize;
            let block_len = block_bytes.min(size - block * block_bytes) as usize;
            let take = (block_len - within).min(data.len() - done);
            let mut bytes = match self.pools[pool.0]
                .written
                .get(&vdi)
                .and_then(|w| w.get(&block))
            {
                Some(existing) => existing.clone(),
                None => {
                    let mut fresh = vec![0u8; block_len];
                    self.read_vdi(pool, vdi_uuid, block * block_bytes, &mut fresh)?;
                    fresh
                }
            };
            bytes[within..within + take].copy_from_slice(&data[done..done + take]);
            self.pools[pool.0]
                .written
                .entry(vdi.clone())
                .or_default()
                .insert(block, bytes);
            done += take;
        }
        Ok(())
    }

    /// What a snapshot VDI held when it was taken (also after it was destroyed).
    pub fn snapshot_content(&self, pool: PoolId, vdi_uuid: &str) -> Option<&model::VdiContent> {
        self.pools[pool.0].snapshot_content.get(vdi_uuid)
    }

    /// The pool named `name`.
    pub fn pool_id(&self, name: &str) -> Option<PoolId> {
        self.pools.iter().position(|p| p.name == name).map(PoolId)
    }

    /// Read-only view of a pool's objects (for checkers and reports).
    pub fn pool(&self, id: PoolId) -> &PoolModel {
        &self.pools[id.0]
    }

    /// Every pool, in spec order.
    pub fn pools(&self) -> impl Iterator<Item = (PoolId, &PoolModel)> {
        self.pools.iter().enumerate().map(|(i, p)| (PoolId(i), p))
    }

    /// The latest time the simulator has reached.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// The event log so far.
    pub fn events(&self) -> &[Event] {
        self.log.events()
    }

    /// How long `method` takes this time (drawn from the seeded RNG).
    pub fn call_duration(&mut self, method: &str) -> Duration {
        let range = timing::range_for(&self.spec.timing, method);
        self.rng.duration(range)
    }

    /// How long `method` takes on `pool` now: its timing, plus any latency
    /// a fault adds.
    pub fn call_delay(&mut self, pool: PoolId, now: SimTime, method: &str) -> Duration {
        self.call_duration(method) + self.faults.call_latency(pool.0, now, method)
    }

    /// True when a host of `pool` has `address` and is up.
    pub fn host_live_at(&self, pool: PoolId, address: &str) -> bool {
        let m = &self.pools[pool.0];
        m.hosts
            .values()
            .find(|h| h.address == address)
            .and_then(|h| m.host_metrics.get(&h.metrics))
            .is_some_and(|metrics| metrics.live)
    }

    /// Why a client connecting now to the host of `pool` at `addressed` is
    /// refused, if it is: the host is down (crashed, or no host has that
    /// address), or an `xapi_unreachable` fault refuses the master (its
    /// toolstack is not answering; members still answer). The call never
    /// arrives.
    pub fn refusal(&mut self, pool: PoolId, addressed: &str, now: SimTime) -> Option<String> {
        if let Some(down) = self.host_down(pool, addressed, now) {
            return Some(down);
        }
        if addressed != self.master_address(pool) {
            return None;
        }
        let refused = self.fault_fired(
            pool,
            now,
            |f, p| f.unreachable(p, now),
            || "fault: connection to the pool master refused".into(),
        );
        refused.then(|| "connection refused by the pool master".to_string())
    }

    /// True while a served endpoint at `addressed` should listen: its host
    /// is up and, where it is the master (or `addressed` is `None`, the one
    /// endpoint that answers as whoever is master), no `xapi_unreachable`
    /// fault refuses every connection now.
    pub fn listens_at(&mut self, pool: PoolId, addressed: Option<&str>, now: SimTime) -> bool {
        self.advance_to(now);
        let master = self.master_address(pool);
        let host_up = addressed.is_none_or(|a| self.host_live_at(pool, a));
        let is_master = addressed.is_none_or(|a| a == master);
        host_up && !(is_master && self.faults.unreachable_in_full(pool.0, now))
    }

    /// Why the host of `pool` at `addressed` cannot answer now, if it
    /// cannot: it is down (crashed), or no host has that address. A call in
    /// flight to it breaks without taking effect.
    pub fn host_down(&mut self, pool: PoolId, addressed: &str, now: SimTime) -> Option<String> {
        self.advance_to(now);
        let m = &self.pools[pool.0];
        let host = m.hosts.values().find(|h| h.address == addressed);
        let Some(host) = host else {
            return Some(format!("no host at {addressed}"));
        };
        let live = m.host_metrics.get(&host.metrics).is_some_and(|h| h.live);
        (!live).then(|| format!("host {} ({addressed}) is down", host.name_label))
    }

    /// What becomes of the reply to `method`, done now in `pool`: a
    /// `reply_lost` fault loses it if the call `took_effect`, a partition
    /// between the engine and the master holds it (see
    /// [`faults::Faults::reply_path`]). Logged unless it comes straight back.
    pub fn reply_path(
        &mut self,
        pool: PoolId,
        now: SimTime,
        method: &str,
        took_effect: bool,
    ) -> faults::ReplyPath {
        self.advance_to(now);
        let link = faults::NetworkLink::EngineMaster;
        let (path, what) = match self.faults.reply_path(pool.0, now, link) {
            faults::ReplyPath::Clear
                if took_effect && self.faults.reply_lost(pool.0, now, method) =>
            {
                let what = format!("fault: the reply to {method} is lost (it took effect)");
                (faults::ReplyPath::Cut, what)
            }
            clear @ faults::ReplyPath::Clear => return clear,
            held @ faults::ReplyPath::HeldUntil(at) => (
                held,
                format!(
                    "fault: network {link}: the reply to {method} is held until the path heals at {at}"
                ),
            ),
            cut @ faults::ReplyPath::Cut => (
                cut,
                format!(
                    "fault: network {link}: the reply to {method} is cut off (the path never heals)"
                ),
            ),
        };
        let name = self.pools[pool.0].name.clone();
        self.log.push(now, &name, what);
        path
    }

    /// What the network on `link` of `pool` does to a request sent now (to
    /// `to`, for the log): a `network` fault may lose it or delay it.
    pub fn network_delivery(
        &mut self,
        pool: PoolId,
        now: SimTime,
        link: faults::NetworkLink,
        to: &str,
    ) -> faults::Delivery {
        self.network_delivery_ahead(pool, now, Duration::ZERO, link, to)
    }

    /// As [`Sim::network_delivery`], for a request sent `ahead` past `now`
    /// (work that runs off the clock, such as an agent's store requests, and
    /// takes its time later): the faults are those of that moment.
    pub fn network_delivery_ahead(
        &mut self,
        pool: PoolId,
        now: SimTime,
        ahead: Duration,
        link: faults::NetworkLink,
        to: &str,
    ) -> faults::Delivery {
        self.advance_to(now);
        let delivery = self.faults.delivery(pool.0, now.after(ahead), link);
        if delivery == faults::Delivery::Lost {
            let name = self.pools[pool.0].name.clone();
            let when = if ahead.is_zero() {
                String::new()
            } else {
                format!(" ({} s into the work)", ahead.as_secs())
            };
            self.log.push(
                now,
                &name,
                format!("fault: network {link}: a request to {to} lost{when}"),
            );
        }
        delivery
    }

    /// True when the busy agent of the delegate at `ip` crashes now (an
    /// `agent_crash` fault); logged.
    pub fn agent_crash(&mut self, pool: PoolId, now: SimTime, ip: std::net::Ipv4Addr) -> bool {
        self.fault_fired(
            pool,
            now,
            |f, p| f.agent_crashes(p, now),
            || format!("fault: the delegate agent at {ip} crashed"),
        )
    }

    /// Brings the pool to `now`, asks `fires`, and logs `what` when it fired.
    fn fault_fired(
        &mut self,
        pool: PoolId,
        now: SimTime,
        fires: impl FnOnce(&mut faults::Faults, usize) -> bool,
        what: impl FnOnce() -> String,
    ) -> bool {
        self.advance_to(now);
        let fired = fires(&mut self.faults, pool.0);
        if fired {
            let name = self.pools[pool.0].name.clone();
            self.log.push(now, &name, what());
        }
        fired
    }

    /// Logs a fault something outside the pools suffered (the engine's data
    /// store), so the event log holds every fault of the run.
    pub fn note_fault(&mut self, pool: PoolId, now: SimTime, what: String) {
        self.fault_fired(pool, now, |_, _| true, || what);
        self.faults.injected += 1;
    }

    /// How many times a fault fired so far.
    pub fn faults_injected(&self) -> u64 {
        self.faults.injected
    }

    /// How long one request to an appliance's agent takes.
    pub fn agent_duration(&mut self) -> Duration {
        self.rng.duration(self.spec.timing.agent_s)
    }

    /// When the next scheduled guest happening is due (what a blocking
    /// `event.from` waits for in simulated time).
    pub fn next_due(&self) -> Option<SimTime> {
        self.schedule.next_at()
    }

    /// Applies every scheduled event due at or before `now`.
    pub fn advance_to(&mut self, now: SimTime) {
        assert!(
            now >= self.now,
            "simulated time went backwards: {now} < {}",
            self.now
        );
        while let Some((at, pool, event)) = self.schedule.pop_due(now) {
            self.now = at;
            if let Scheduled::TaskDone {
                task,
                on,
                method,
                params,
            } = event
            {
                self.task_done(pool, at, &task, &on, &method, &params);
                continue;
            }
            if let Scheduled::TaskCancelled { task } = event {
                self.schedule
                    .drop_where(|e| matches!(e, Scheduled::TaskDone { task: t, .. } if *t == task));
                let cancelled = Err(XapiError::new(codes::TASK_CANCELLED, [task.as_str()]));
                self.task_finish(pool, at, &task, &cancelled);
                continue;
            }
            let mut ctx = self.ctx(pool, at);
            ctx.apply_scheduled(event);
            self.mark_stale(pool);
        }
        self.now = now;
    }

    /// The address of `pool`'s master now.
    pub fn master_address(&self, pool: PoolId) -> String {
        let m = &self.pools[pool.0];
        m.hosts
            .get(&m.pool.master)
            .map(|h| h.address.clone())
            .unwrap_or_default()
    }

    /// Gives `pool`'s hosts other addresses (`(old, new)` pairs): in host
    /// records, their management PIFs and the configured master's, so that
    /// the addresses clients read are where they can reach the hosts.
    pub fn readdress_hosts(&mut self, pool: PoolId, moves: &[(String, String)]) {
        let m = &mut self.pools[pool.0];
        let new_of = |old: &str| moves.iter().find(|(o, _)| o == old).map(|(_, n)| n.clone());
        for host in m.hosts.values_mut() {
            if let Some(new) = new_of(&host.address) {
                host.address = new;
            }
        }
        for pif in m.pifs.values_mut() {
            if let Some(new) = new_of(&pif.ip) {
                pif.ip = new;
            }
        }
        if let Some(new) = new_of(&m.configured_address) {
            m.configured_address = new;
        }
    }

    /// How many of `pool`'s networks have a DHCP server.
    pub fn dhcp_networks(&self, pool: PoolId) -> usize {
        self.pools[pool.0].dhcp.len()
    }

    /// Moves the DHCP ranges of `pool`'s networks: `to` gets each network's
    /// position among them and its range, and gives the new range. Meant for
    /// serving before any lease is held.
    pub fn move_dhcp_ranges(
        &mut self,
        pool: PoolId,
        to: impl Fn(usize, (Ipv4Addr, Ipv4Addr)) -> (Ipv4Addr, Ipv4Addr),
    ) {
        for (j, server) in self.pools[pool.0].dhcp.values_mut().enumerate() {
            let (first, last) = to(j, server.range());
            server.move_range(first, last);
        }
    }

    /// The address a client of `pool` is configured with (the first master's).
    pub fn configured_address(&self, pool: PoolId) -> String {
        self.pools[pool.0].configured_address.clone()
    }

    /// Performs one XAPI call sent to the host at `addressed` in `pool`: the
    /// master performs it; another member answers HOST_IS_SLAVE with the
    /// master's address and does nothing, as XAPI's pool members do.
    pub fn dispatch_to(
        &mut self,
        pool: PoolId,
        addressed: &str,
        now: SimTime,
        method: &str,
        params: &[Value],
    ) -> Result<Value, XapiError> {
        self.advance_to(now);
        let master = self.master_address(pool);
        if addressed != master {
            return Err(XapiError::new(codes::HOST_IS_SLAVE, [master]));
        }
        self.dispatch(pool, now, method, params)
    }

    /// Performs one XAPI call on `pool`'s master at `now`, after applying what was due.
    pub fn dispatch(
        &mut self,
        pool: PoolId,
        now: SimTime,
        method: &str,
        params: &[Value],
    ) -> Result<Value, XapiError> {
        self.advance_to(now);
        if let Some(inner) = method.strip_prefix("Async.") {
            return self.task_start(pool, now, method, inner, params);
        }
        self.perform_call(pool, now, method, |ctx| {
            dispatch::dispatch(ctx, method, params)
        })
    }

    /// `Async.X.y`, as XAPI has it: checks the call, answers a pending task
    /// at once, and schedules the call's work to land after its duration,
    /// completing the task (see [`Scheduled::TaskDone`]).
    fn task_start(
        &mut self,
        pool: PoolId,
        now: SimTime,
        method: &str,
        inner: &str,
        params: &[Value],
    ) -> Result<Value, XapiError> {
        dispatch::precheck(&self.ctx(pool, now), inner, params)?;
        let task = self.task_create(pool, now, method);
        let duration = self.call_delay(pool, now, inner);
        let on = self.pools[pool.0].pool.master.clone();
        let done = Scheduled::TaskDone {
            task: task.clone(),
            on,
            method: inner.to_string(),
            params: params[1..].to_vec(),
        };
        self.schedule.at(now.after(duration), pool, done);
        Ok(Value::from(task.as_str()))
    }

    /// A task's work is due: it lands (faults apply to it as to the call
    /// made synchronously) and completes the task; a task cancelled
    /// meanwhile ends cancelled without doing it, and one whose host went
    /// down fails without doing it.
    fn task_done(
        &mut self,
        pool: PoolId,
        now: SimTime,
        task: &xapi_proto::OpaqueRef,
        on: &xapi_proto::OpaqueRef,
        method: &str,
        args: &[Value],
    ) {
        // A task destroyed by its client meanwhile still does its work; one
        // being cancelled whose work comes due before it stops was too far
        // along, and ends as if never cancelled.
        let host_up = {
            let m = &self.pools[pool.0];
            m.hosts
                .get(on)
                .and_then(|h| m.host_metrics.get(&h.metrics))
                .is_some_and(|metrics| metrics.live)
        };
        let result = match host_up {
            false => Err(XapiError::internal(format!(
                "{method}: the host running this task went down"
            ))),
            true => self.perform_call(pool, now, method, |ctx| {
                dispatch::perform(ctx, method, args)
            }),
        };
        self.task_finish(pool, now, task, &result);
    }

    /// One call's effect on `pool` at `now`, through `perform`, with the
    /// `xapi_error` faults that strike `method`.
    fn perform_call(
        &mut self,
        pool: PoolId,
        now: SimTime,
        method: &str,
        perform: impl FnOnce(&mut ops::Ctx<'_>) -> Result<Value, XapiError>,
    ) -> Result<Value, XapiError> {
        self.sync_events(pool, now);
        let fault = self.faults.call_error(pool.0, now, method);
        if let Some((error, false)) = &fault {
            let mut ctx = self.ctx(pool, now);
            ctx.log(format!("fault: {method} fails with {}", error.code));
            return Err(error.clone());
        }
        let mut ctx = self.ctx(pool, now);
        let mut result = perform(&mut ctx);
        if let Some((error, true)) = fault
            && result.is_ok()
        {
            ctx.log(format!(
                "fault: {method} took effect, its answer lost ({})",
                error.code
            ));
            result = Err(error);
        }
        if !is_read_only(method) {
            self.mark_stale(pool);
        }
        self.sync_events(pool, now);
        result
    }

    /// Notes that `pool`'s records may have changed, for the event stream.
    fn mark_stale(&mut self, pool: PoolId) {
        if let Some(tracker) = self.pools[pool.0].events.as_mut() {
            tracker.mark_stale();
        }
    }

    /// Makes `pool`'s records carry every XAPI field, as a served pool master's do.
    pub fn serve_full_records(&mut self, pool: PoolId) {
        self.pools[pool.0].full_records = true;
    }

    fn sync_events(&mut self, pool: PoolId, now: SimTime) {
        if !self.pools[pool.0]
            .events
            .as_ref()
            .is_some_and(|t| t.needs_sync())
        {
            return;
        }
        let interests: Vec<_> = self.pools[pool.0]
            .events
            .as_ref()
            .map(|t| t.interests().iter().cloned().collect())
            .unwrap_or_default();
        let records = dispatch::records_for(&self.ctx(pool, now), &interests);
        if let Some(tracker) = self.pools[pool.0].events.as_mut() {
            tracker.sync(now, records);
        }
    }

    /// Creates a pending task for an `Async.*` call.
    fn task_create(&mut self, pool: PoolId, now: SimTime, name: &str) -> xapi_proto::OpaqueRef {
        self.advance_to(now);
        let mut ctx = self.ctx(pool, now);
        let (task, uuid) = model::build::new_ids(ctx.rng);
        let record = xapi_proto::records::TaskRecord {
            uuid,
            name_label: name.to_string(),
            status: xapi_proto::records::TaskStatus::Pending,
            created: ctx.xapi_datetime(),
            resident_on: ctx.m.pool.master.clone(),
            ..Default::default()
        };
        ctx.m.tasks.insert(task.clone(), record);
        ctx.log(format!("task {task} {name} pending"));
        self.mark_stale(pool);
        self.sync_events(pool, now);
        task
    }

    /// Completes a task with the call's result (XML-RPC text of the value, or the error).
    fn task_finish(
        &mut self,
        pool: PoolId,
        now: SimTime,
        task: &xapi_proto::OpaqueRef,
        result: &Result<Value, XapiError>,
    ) {
        self.advance_to(now);
        let mut ctx = self.ctx(pool, now);
        let finished = ctx.xapi_datetime();
        let Some(record) = ctx.m.tasks.get_mut(task) else {
            return; // destroyed by the client meanwhile
        };
        use xapi_proto::records::TaskStatus;
        if !matches!(record.status, TaskStatus::Pending | TaskStatus::Cancelling) {
            return; // it ended already (cancelled before its work was due)
        }
        record.progress = 1.0;
        record.finished = finished;
        match result {
            Err(e) if e.is(codes::TASK_CANCELLED) => {
                record.status = TaskStatus::Cancelled;
                record.error_info = e.description();
            }
            Ok(v) => {
                record.status = xapi_proto::records::TaskStatus::Success;
                record.result = xapi_proto::wire::xmlrpc::render_value(v);
            }
            Err(e) => {
                record.status = xapi_proto::records::TaskStatus::Failure;
                record.error_info = e.description();
            }
        }
        let status = format!("{:?}", record.status).to_lowercase();
        ctx.log(format!("task {task} {status}"));
        self.mark_stale(pool);
        self.sync_events(pool, now);
    }

    /// Who answers the appliance protocol at `ip` in `pool` at `now`.
    pub fn appliance_at(&mut self, pool: PoolId, now: SimTime, ip: Ipv4Addr) -> ApplianceAnswer {
        self.advance_to(now);
        ops::appliance_at(&self.pools[pool.0], ip)
    }

    /// Every address at which a running appliance answers in `pool` now,
    /// with what it answers as (its VM's uuid and `vm-data`), by address.
    pub fn appliances(&mut self, pool: PoolId, now: SimTime) -> Vec<(Ipv4Addr, ApplianceAnswer)> {
        self.advance_to(now);
        let m = &self.pools[pool.0];
        let addresses: std::collections::BTreeSet<Ipv4Addr> = m
            .guests
            .values()
            .filter_map(|g| g.address.map(|(ip, _)| ip))
            .collect();
        addresses
            .into_iter()
            .map(|ip| (ip, ops::appliance_at(m, ip)))
            .filter(|(_, answer)| matches!(answer, ApplianceAnswer::Appliance { .. }))
            .collect()
    }

    /// The disks hot-plugged into the appliance answering at `ip` (devices 1..n).
    pub fn appliance_disks(
        &mut self,
        pool: PoolId,
        now: SimTime,
        ip: Ipv4Addr,
    ) -> Option<Vec<AttachedDisk>> {
        self.advance_to(now);
        ops::appliance_disks(&self.pools[pool.0], ip)
    }

    /// Operator action on the VM `vm_name`: `fail_over` (unblock and start
    /// it), `clone_vm` (clone it as `<name> clone`) or `shutdown_vm`.
    pub fn operate_vm(
        &mut self,
        pool: PoolId,
        now: SimTime,
        action: &str,
        vm_name: &str,
    ) -> Result<(), XapiError> {
        self.advance_to(now);
        let mut ctx = self.ctx(pool, now);
        let done = match action {
            "fail_over" => ctx.fail_over(vm_name),
            "clone_vm" => ctx.operator_clone(vm_name),
            "shutdown_vm" => ctx.operator_shutdown(vm_name),
            "disable_cbt" => ctx.operator_disable_cbt(vm_name),
            "destroy_cbt_metadata" => ctx.operator_destroy_cbt_metadata(vm_name),
            other => Err(XapiError::internal(format!(
                "unknown operator action {other:?}"
            ))),
        };
        self.mark_stale(pool);
        done
    }

    /// Operator action: adds a network interface on the network named
    /// `network_name` to the VM named `vm_name`.
    pub fn add_vif(
        &mut self,
        pool: PoolId,
        now: SimTime,
        vm_name: &str,
        network_name: &str,
    ) -> Result<(), XapiError> {
        self.advance_to(now);
        let mut ctx = self.ctx(pool, now);
        let added = ctx.operator_add_vif(vm_name, network_name);
        self.mark_stale(pool);
        added
    }

    /// Operator action: moves every disk of the VM named `vm_name` to the SR
    /// named `sr_name` (as a storage migration would), keeping the VM's identity.
    pub fn move_vm_disks(
        &mut self,
        pool: PoolId,
        now: SimTime,
        vm_name: &str,
        sr_name: &str,
    ) -> Result<(), XapiError> {
        self.advance_to(now);
        let mut ctx = self.ctx(pool, now);
        let moved = ctx.move_vm_disks(vm_name, sr_name);
        self.mark_stale(pool);
        moved
    }

    fn ctx(&mut self, pool: PoolId, now: SimTime) -> ops::Ctx<'_> {
        ops::Ctx {
            m: &mut self.pools[pool.0],
            rng: &mut self.rng,
            log: &mut self.log,
            schedule: &mut self.schedule,
            spec: &self.spec,
            faults: &mut self.faults,
            pool,
            now,
        }
    }
}

/// The faults that strike at set times, as scheduled happenings. The order of
/// the draws (host crashes, session expiries, SR fills, disabled hosts, master
/// changes) is part
/// of a seed's run.
fn schedule_faults(faults: &mut faults::Faults, pools: &[PoolModel]) -> Schedule {
    let mut schedule = Schedule::default();
    let windows = |faults: &mut faults::Faults, kind| {
        faults
            .windows(kind)
            .into_iter()
            .filter_map(|(pool, name, at, until)| {
                let m = &pools[pool];
                let host = m.hosts.iter().find(|(_, h)| h.name_label == name);
                let sr = m.srs.iter().find(|(_, s)| s.name_label == name);
                let object = match kind {
                    faults::FaultKind::HostCrash
                    | faults::FaultKind::HostDisabled
                    | faults::FaultKind::MasterChange => host.map(|(r, _)| r.clone()),
                    _ => sr.map(|(r, _)| r.clone()),
                }?;
                Some((PoolId(pool), object, at, until))
            })
            .collect::<Vec<_>>()
    };
    for (pool, host, at, back) in windows(faults, faults::FaultKind::HostCrash) {
        schedule.at(at, pool, Scheduled::HostCrash { host: host.clone() });
        if let Some(back) = back {
            schedule.at(back, pool, Scheduled::HostBack { host });
        }
    }
    for (pool, at) in faults.guest_kills() {
        schedule.at(at, PoolId(pool), Scheduled::KillGuests);
    }
    for (pool, at) in faults.session_expiries() {
        schedule.at(at, PoolId(pool), Scheduled::ExpireSessions);
    }
    for (pool, sr, at, freed) in windows(faults, faults::FaultKind::SrFill) {
        schedule.at(at, pool, Scheduled::SrFill { sr: sr.clone() });
        if let Some(freed) = freed {
            schedule.at(freed, pool, Scheduled::SrDrain { sr });
        }
    }
    for (pool, host, at, back) in windows(faults, faults::FaultKind::HostDisabled) {
        schedule.at(at, pool, Scheduled::HostDisable { host: host.clone() });
        if let Some(back) = back {
            schedule.at(back, pool, Scheduled::HostEnable { host });
        }
    }
    for (pool, host, at, back) in windows(faults, faults::FaultKind::MasterChange) {
        schedule.at(at, pool, Scheduled::MasterMove { host });
        if let Some(back) = back {
            let first = pools[pool.0].pool.master.clone();
            schedule.at(back, pool, Scheduled::MasterMove { host: first });
        }
    }
    schedule
}
