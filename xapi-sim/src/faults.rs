//! Faults the simulated world injects: a scenario's `[[fault]]` entries.
//!
//! Each fault is active in a window of simulated time and fires at each
//! opportunity (a call, a boot) with its rate, up to its count. A rate given
//! as `[low, high]` is drawn once per seed, so swarm runs explore different
//! rates and `abd run --seed S` replays the same one. Faults draw from their
//! own seeded generator: adding one does not shift the rest of the run.

use crate::spec::SpecError;
use crate::time::SimTime;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use xapi_proto::XapiError;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A call (`method`, or `*`) fails with `error` and changes nothing.
    XapiError,
    /// A call (`method`, or `*`) takes `latency_s` longer.
    Latency,
    /// A call (`method`, or `*`) takes effect and its reply never comes
    /// back (the connection hangs): the client gives up at its call timeout
    /// not knowing what happened, so it must find out before it retries.
    ReplyLost,
    /// `host` crashes at `from_s` (its VMs halt) and is back at `until_s`.
    HostCrash,
    /// A delegate's guest never finishes booting (no address).
    BootFailure,
    /// A delegate's guest takes `latency_s` longer to boot (each boot with
    /// `rate`): a loaded host, a boot storm, a slow SR.
    SlowBoot,
    /// The DHCP server does not answer (each request with `rate`).
    DhcpDown,
    /// At `from_s`, running delegates (appliance guests) are stopped from
    /// outside, each with `rate` (`count` at most).
    GuestKill,
    /// The SR `sr` fills up at `from_s` (something else writes to it) and
    /// that space is freed at `until_s`.
    SrFill,
    /// Every session of the pool becomes invalid at once (the toolstack
    /// restarted), at `from_s` and then every `every_s` until `until_s`:
    /// calls fail SESSION_INVALID until their client logs in again.
    SessionExpiry,
    /// The agent process in a delegate dies while it works (each request
    /// to a busy agent with `rate`) and is back, with no memory of its
    /// tasks, a few seconds later.
    AgentCrash,
    /// The pool master cannot be reached (each connection refused with
    /// `rate`) from `from_s` to `until_s`: nothing the client sends arrives.
    XapiUnreachable,
    /// `host` is disabled at `from_s` (an operator put it in maintenance: VMs
    /// on it keep running, nothing new starts there) and enabled at `until_s`.
    HostDisabled,
    /// The pool master role moves to `host` at `from_s` (designated, or an HA
    /// failover): the old master answers HOST_IS_SLAVE with the new master's
    /// address, and every session is lost with the toolstack restart. At
    /// `until_s` the role moves back.
    MasterChange,
    /// `count` chunks (default 1) that versions of `pool`'s VMs use are
    /// damaged at rest in the engine's data store at `from_s` (a byte of each
    /// flips in its pack), with `rate`. The scenario runner applies it; the
    /// simulated pools are not touched.
    ChunkCorrupt,
    /// The engine's data store volume fills up at `from_s` (something else
    /// writes to it) and has room again at `until_s`, with `rate`: writes
    /// that need room are refused meanwhile. The scenario runner applies it
    /// to the engine's store; `pool` names any pool of the run.
    StoreFull,
    /// The network on `link` loses each request with `rate` (1.0: a
    /// partition) from `from_s` until healed at `until_s`; with `latency_s`,
    /// requests that get through take that much longer.
    Network,
}

/// A network path a `network` fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkLink {
    /// The engine and the pool master (XAPI).
    EngineMaster,
    /// The engine and its delegates' agents.
    EngineDelegates,
    /// The delegates' agents and the engine's data store.
    DelegatesStore,
}

impl std::fmt::Display for NetworkLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkLink::EngineMaster => "engine <-> pool master",
            NetworkLink::EngineDelegates => "engine <-> delegates",
            NetworkLink::DelegatesStore => "delegates <-> data store",
        })
    }
}

/// What the network does to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delivery {
    /// It arrives after this extra delay.
    Delivered(Duration),
    /// It is lost: the sender times out.
    Lost,
}

/// What the network does to a reply sent on a connection already open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyPath {
    /// It arrives now.
    Clear,
    /// A partition holds it (TCP retransmits) until the path heals then.
    HeldUntil(SimTime),
    /// A partition that never heals cuts it off.
    Cut,
}

/// A fault's chance per opportunity: fixed, or `[low, high]` drawn per seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    Fixed(f64),
    Range([f64; 2]),
}

impl Default for Rate {
    fn default() -> Self {
        Rate::Fixed(1.0)
    }
}

/// One `[[fault]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// The pool it happens in.
    pub pool: String,
    /// Active from this simulated time, in seconds.
    #[serde(default)]
    pub from_s: f64,
    /// Healed at this simulated time; absent: active to the end.
    pub until_s: Option<f64>,
    #[serde(default)]
    pub rate: Rate,
    /// At most this many times.
    pub count: Option<u32>,
    /// `xapi_error`, `latency`: the method (`VM.start`), or `*` for every
    /// call but `session.*` and `event.*`.
    pub method: Option<String>,
    /// `xapi_error`: the error code, then its parameters.
    #[serde(default)]
    pub error: Vec<String>,
    /// `xapi_error`: the call takes effect and only its answer is the error
    /// (a reply lost to a timeout): retries must be safe.
    #[serde(default)]
    pub after_effect: bool,
    /// `latency`: seconds added to each matching call; `network`: to each
    /// request that gets through; `slow_boot`: to each boot it strikes.
    pub latency_s: Option<f64>,
    /// `host_crash`, `host_disabled`, `master_change`: the host, by name.
    pub host: Option<String>,
    /// `session_expiry`: repeat this often (seconds) until `until_s`.
    pub every_s: Option<f64>,
    /// `sr_fill`: the SR, by name.
    pub sr: Option<String>,
    /// `network`: the path it strikes.
    pub link: Option<NetworkLink>,
}

impl FaultSpec {
    /// Checks the entry; errors name the field.
    pub fn check(&self, index: usize) -> Result<(), SpecError> {
        let fail = |what: String| Err(SpecError::new(format!("fault {}: {what}", index + 1)));
        let needs_method = matches!(
            self.kind,
            FaultKind::XapiError | FaultKind::Latency | FaultKind::ReplyLost
        );
        if needs_method && self.method.is_none() {
            return fail(format!("{:?} needs `method`", self.kind));
        }
        if self.kind == FaultKind::XapiError && self.error.is_empty() {
            return fail("xapi_error needs `error` (the code, then its parameters)".into());
        }
        if self.latency_s.is_some_and(|l| l < 0.0) {
            return fail("`latency_s` must be >= 0".into());
        }
        if matches!(self.kind, FaultKind::Latency | FaultKind::SlowBoot) && self.latency_s.is_none()
        {
            return fail(format!("{:?} needs `latency_s` >= 0", self.kind));
        }
        if matches!(
            self.kind,
            FaultKind::HostCrash | FaultKind::HostDisabled | FaultKind::MasterChange
        ) && self.host.is_none()
        {
            return fail(format!("{:?} needs `host`", self.kind));
        }
        if self.kind == FaultKind::Network && self.link.is_none() {
            return fail(
                "network needs `link` (engine_master, engine_delegates or delegates_store)".into(),
            );
        }
        if self.kind == FaultKind::SrFill && self.sr.is_none() {
            return fail("sr_fill needs `sr`".into());
        }
        if self.until_s.is_some_and(|u| u < self.from_s) {
            return fail("`until_s` is before `from_s`".into());
        }
        let (lo, hi) = match self.rate {
            Rate::Fixed(r) => (r, r),
            Rate::Range([lo, hi]) => (lo, hi),
        };
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
            return fail(format!(
                "`rate` must lie in 0..1, low <= high, not {lo}..{hi}"
            ));
        }
        Ok(())
    }

    fn active_at(&self, now: SimTime) -> bool {
        now >= seconds(self.from_s) && self.until_s.is_none_or(|u| now < seconds(u))
    }

    fn covers_method(&self, method: &str) -> bool {
        match self.method.as_deref() {
            Some("*") => !method.starts_with("session.") && !method.starts_with("event."),
            Some(m) => m == method,
            None => false,
        }
    }
}

/// Simulated time `s` seconds in.
fn seconds(s: f64) -> SimTime {
    SimTime((s * 1000.0).round() as u64)
}

/// A fault of the run, with its rate resolved for the seed.
#[derive(Clone, Debug)]
struct Armed {
    spec: FaultSpec,
    pool: usize,
    rate: f64,
    fired: u32,
}

impl Armed {
    /// True when this fault is of `kind`, in `pool`, active at `now` and not spent.
    fn eligible(&self, pool: usize, now: SimTime, kind: FaultKind) -> bool {
        self.pool == pool
            && self.spec.kind == kind
            && self.spec.active_at(now)
            && self.spec.count.is_none_or(|c| self.fired < c)
    }

    /// True when this is a `network` fault on `link` of `pool`, active at
    /// `at` and not spent.
    fn strikes(&self, pool: usize, link: NetworkLink, at: SimTime) -> bool {
        self.eligible(pool, at, FaultKind::Network) && self.spec.link == Some(link)
    }
}

/// The run's faults.
pub struct Faults {
    armed: Vec<Armed>,
    rng: ChaCha8Rng,
    /// How many times a fault fired.
    pub injected: u64,
}

impl Faults {
    /// Arms `specs` for `seed`; `pool_of` maps a pool name to its index.
    pub fn arm(specs: &[FaultSpec], seed: u64, pool_of: impl Fn(&str) -> Option<usize>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_756c_7473);
        let armed = specs
            .iter()
            .filter_map(|spec| {
                let rate = match spec.rate {
                    Rate::Fixed(r) => r,
                    Rate::Range([lo, hi]) if hi > lo => rng.random_range(lo..=hi),
                    Rate::Range([lo, _]) => lo,
                };
                Some(Armed {
                    pool: pool_of(&spec.pool)?,
                    spec: spec.clone(),
                    rate,
                    fired: 0,
                })
            })
            .collect();
        Faults {
            armed,
            rng,
            injected: 0,
        }
    }

    /// Fires the first active fault of `kind` in `pool` that `matches` and
    /// wins its draw; returns its spec.
    fn fire(
        &mut self,
        pool: usize,
        now: SimTime,
        kind: FaultKind,
        matches: impl Fn(&FaultSpec) -> bool,
    ) -> Option<FaultSpec> {
        for fault in &mut self.armed {
            if !fault.eligible(pool, now, kind) || !matches(&fault.spec) {
                continue;
            }
            if self.rng.random_range(0.0..1.0) < fault.rate {
                fault.fired += 1;
                self.injected += 1;
                return Some(fault.spec.clone());
            }
        }
        None
    }

    /// [`Self::fire`] for faults that add up: every active fault of `kind`
    /// that matches draws, and each that wins fires.
    fn fire_each(
        &mut self,
        pool: usize,
        now: SimTime,
        kind: FaultKind,
        matches: impl Fn(&FaultSpec) -> bool,
    ) -> Vec<FaultSpec> {
        let mut fired = Vec::new();
        for fault in &mut self.armed {
            if fault.eligible(pool, now, kind)
                && matches(&fault.spec)
                && self.rng.random_range(0.0..1.0) < fault.rate
            {
                fault.fired += 1;
                self.injected += 1;
                fired.push(fault.spec.clone());
            }
        }
        fired
    }

    /// The error `method` fails with now, if a fault says so, and whether
    /// the call takes effect first.
    pub fn call_error(
        &mut self,
        pool: usize,
        now: SimTime,
        method: &str,
    ) -> Option<(XapiError, bool)> {
        let spec = self.fire(pool, now, FaultKind::XapiError, |s| s.covers_method(method))?;
        let (code, params) = spec.error.split_first().expect("checked: error has a code");
        Some((
            XapiError::new(code, params.iter().cloned()),
            spec.after_effect,
        ))
    }

    /// True when the reply to `method`, done now, is lost. A fault on
    /// `VM.clone` also loses the reply to `Async.VM.clone` (its task).
    pub fn reply_lost(&mut self, pool: usize, now: SimTime, method: &str) -> bool {
        let method = method.strip_prefix("Async.").unwrap_or(method);
        self.fire(pool, now, FaultKind::ReplyLost, |s| s.covers_method(method))
            .is_some()
    }

    /// Extra time `method` takes now: what every `latency` fault that
    /// strikes it adds (a loaded master, and a slow SR under its snapshots).
    pub fn call_latency(&mut self, pool: usize, now: SimTime, method: &str) -> Duration {
        self.fire_each(pool, now, FaultKind::Latency, |s| s.covers_method(method))
            .iter()
            .filter_map(|s| s.latency_s)
            .map(Duration::from_secs_f64)
            .sum()
    }

    /// What the network on `link` of `pool` does to a request sent now.
    pub fn delivery(&mut self, pool: usize, now: SimTime, link: NetworkLink) -> Delivery {
        let mut delay = Duration::ZERO;
        for fault in &mut self.armed {
            if !fault.strikes(pool, link, now) {
                continue;
            }
            if let Some(latency) = fault.spec.latency_s {
                delay += Duration::from_secs_f64(latency);
            }
            // A partition (rate 1) draws nothing: the same whatever the order of requests.
            let lost = fault.rate >= 1.0
                || (fault.rate > 0.0 && self.rng.random_range(0.0..1.0) < fault.rate);
            if lost {
                fault.fired += 1;
                self.injected += 1;
                return Delivery::Lost;
            }
        }
        Delivery::Delivered(delay)
    }

    /// What a partition on `link` of `pool` does to a reply sent at `now`
    /// on an open connection: held until every partition covering it has
    /// healed (back to back ones included). Lossy links pass replies (TCP
    /// resends what they drop), and nothing is drawn.
    pub fn reply_path(&self, pool: usize, now: SimTime, link: NetworkLink) -> ReplyPath {
        let mut at = now;
        loop {
            let heal = self
                .armed
                .iter()
                .filter(|f| f.rate >= 1.0 && f.strikes(pool, link, at))
                .map(|f| f.spec.until_s.map(seconds))
                .max_by_key(|until| until.unwrap_or(SimTime(u64::MAX)));
            match heal {
                None if at == now => return ReplyPath::Clear,
                None => return ReplyPath::HeldUntil(at),
                Some(None) => return ReplyPath::Cut,
                Some(Some(until)) => at = until,
            }
        }
    }

    /// True when a busy delegate agent's process dies now.
    pub fn agent_crashes(&mut self, pool: usize, now: SimTime) -> bool {
        self.fire(pool, now, FaultKind::AgentCrash, |_| true)
            .is_some()
    }

    /// True when a connection to the pool's master is refused now.
    pub fn unreachable(&mut self, pool: usize, now: SimTime) -> bool {
        self.fire(pool, now, FaultKind::XapiUnreachable, |_| true)
            .is_some()
    }

    /// True while an `xapi_unreachable` fault of `pool` refuses every
    /// connection (one at rate 1 with no count, active now). Asking draws
    /// nothing: a served master stops listening for as long as this holds.
    pub fn unreachable_in_full(&self, pool: usize, now: SimTime) -> bool {
        self.armed.iter().any(|fault| {
            fault.pool == pool
                && fault.spec.kind == FaultKind::XapiUnreachable
                && fault.spec.active_at(now)
                && fault.spec.count.is_none()
                && fault.rate >= 1.0
        })
    }

    /// True when a delegate's guest booting now should never come up.
    pub fn boot_fails(&mut self, pool: usize, now: SimTime) -> bool {
        self.fire(pool, now, FaultKind::BootFailure, |_| true)
            .is_some()
    }

    /// How much longer a delegate's guest booting now takes.
    pub fn boot_delay(&mut self, pool: usize, now: SimTime) -> Duration {
        self.fire(pool, now, FaultKind::SlowBoot, |_| true)
            .and_then(|s| s.latency_s)
            .map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    /// When sessions expire: (pool, time), each kept by its rate.
    pub fn session_expiries(&mut self) -> Vec<(usize, SimTime)> {
        let mut times = Vec::new();
        for fault in &self.armed {
            if fault.spec.kind != FaultKind::SessionExpiry {
                continue;
            }
            let mut at = fault.spec.from_s;
            let until = fault.spec.until_s.unwrap_or(at);
            loop {
                if self.rng.random_range(0.0..1.0) < fault.rate {
                    times.push((fault.pool, seconds(at)));
                }
                match fault.spec.every_s.filter(|e| *e > 0.0) {
                    Some(every) if at + every < until => at += every,
                    _ => break,
                }
            }
        }
        times
    }

    /// True when the DHCP server ignores a request now.
    pub fn dhcp_ignores(&mut self, pool: usize, now: SimTime) -> bool {
        self.fire(pool, now, FaultKind::DhcpDown, |_| true)
            .is_some()
    }

    /// True when a running delegate is to be killed now (at a `guest_kill`'s time).
    pub fn kills_guest(&mut self, pool: usize, now: SimTime) -> bool {
        self.fire(pool, now, FaultKind::GuestKill, |_| true)
            .is_some()
    }

    /// When `guest_kill` faults strike: (pool, time).
    pub fn guest_kills(&self) -> Vec<(usize, SimTime)> {
        self.armed
            .iter()
            .filter(|f| f.spec.kind == FaultKind::GuestKill)
            .map(|f| (f.pool, seconds(f.spec.from_s)))
            .collect()
    }

    /// Faults of `kind` that strike one named object for a window, to
    /// schedule: (pool, the object's name, from, until), each kept or dropped
    /// by its rate (`host_crash`: the host; `sr_fill`: the SR).
    pub fn windows(&mut self, kind: FaultKind) -> Vec<(usize, String, SimTime, Option<SimTime>)> {
        let mut windows = Vec::new();
        for fault in &self.armed {
            if fault.spec.kind != kind || self.rng.random_range(0.0..1.0) >= fault.rate {
                continue;
            }
            let target = match kind {
                FaultKind::HostCrash | FaultKind::HostDisabled | FaultKind::MasterChange => {
                    fault.spec.host.clone()
                }
                FaultKind::SrFill => fault.spec.sr.clone(),
                _ => None,
            };
            windows.push((
                fault.pool,
                target.expect("checked: a window fault names its object"),
                seconds(fault.spec.from_s),
                fault.spec.until_s.map(seconds),
            ));
        }
        windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(toml_faults: &str) -> Faults {
        #[derive(Deserialize)]
        struct List {
            fault: Vec<FaultSpec>,
        }
        let list: List = toml::from_str(toml_faults).unwrap();
        for (i, spec) in list.fault.iter().enumerate() {
            spec.check(i).unwrap();
        }
        Faults::arm(&list.fault, 7, |_| Some(0))
    }

    const LINK: NetworkLink = NetworkLink::EngineMaster;

    #[test]
    fn a_reply_waits_for_back_to_back_partitions_to_heal_and_lossy_links_pass_it() {
        let faults = armed(
            r#"
            [[fault]]
            kind = "network"
            link = "engine_master"
            pool = "lab"
            from_s = 100
            until_s = 160
            [[fault]]
            kind = "network"
            link = "engine_master"
            pool = "lab"
            from_s = 160
            until_s = 200
            [[fault]]
            kind = "network"
            link = "engine_master"
            pool = "lab"
            rate = 0.9
            from_s = 300
            until_s = 400
            [[fault]]
            kind = "network"
            link = "engine_delegates"
            pool = "lab"
            from_s = 500
            "#,
        );
        assert_eq!(faults.reply_path(0, seconds(99.0), LINK), ReplyPath::Clear);
        assert_eq!(
            faults.reply_path(0, seconds(120.0), LINK),
            ReplyPath::HeldUntil(seconds(200.0))
        );
        assert_eq!(faults.reply_path(0, seconds(200.0), LINK), ReplyPath::Clear);
        assert_eq!(faults.reply_path(0, seconds(350.0), LINK), ReplyPath::Clear);
        assert_eq!(faults.reply_path(0, seconds(600.0), LINK), ReplyPath::Clear);
        assert_eq!(
            faults.reply_path(0, seconds(600.0), NetworkLink::EngineDelegates),
            ReplyPath::Cut
        );
    }

    #[test]
    fn latencies_that_strike_one_call_add_up() {
        let mut faults = armed(
            r#"
            [[fault]]
            kind = "latency"
            pool = "lab"
            method = "*"
            latency_s = 1.0
            [[fault]]
            kind = "latency"
            pool = "lab"
            method = "VM.snapshot"
            latency_s = 45.0
            count = 1
            "#,
        );
        let now = seconds(10.0);
        assert_eq!(
            faults.call_latency(0, now, "VM.snapshot"),
            Duration::from_secs(46)
        );
        assert_eq!(
            faults.call_latency(0, now, "VM.snapshot"),
            Duration::from_secs(1)
        );
        assert_eq!(
            faults.call_latency(0, now, "session.login_with_password"),
            Duration::ZERO
        );
    }

    #[test]
    fn a_lost_reply_strikes_its_method_as_often_as_counted() {
        let mut faults = armed(
            r#"
            [[fault]]
            kind = "reply_lost"
            pool = "lab"
            method = "VM.clone"
            count = 2
            "#,
        );
        let now = seconds(10.0);
        assert!(!faults.reply_lost(0, now, "VM.start"));
        assert!(faults.reply_lost(0, now, "VM.clone"));
        assert!(faults.reply_lost(0, now, "VM.clone"));
        assert!(!faults.reply_lost(0, now, "VM.clone"));
        let unnamed = FaultSpec {
            method: None,
            ..toml::from_str::<FaultSpec>("kind = \"reply_lost\"\npool = \"lab\"").unwrap()
        };
        let err = unnamed.check(0).unwrap_err().to_string();
        assert!(err.contains("needs `method`"), "{err}");
    }
}
