//! Guest-side happenings due at a later simulated time.

use crate::PoolId;
use crate::time::SimTime;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xapi_proto::OpaqueRef;

/// Something a guest does on its own, after a delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scheduled {
    /// The guest OS finished booting (boot `epoch` of the VM).
    GuestBooted { vm: OpaqueRef, epoch: u64 },
    /// The guest sends a DHCP request.
    DhcpAttempt { vm: OpaqueRef, epoch: u64 },
    /// The guest has configured `ip`.
    AddressUp {
        vm: OpaqueRef,
        epoch: u64,
        ip: Ipv4Addr,
    },
    /// A fault: the host crashes; its VMs halt.
    HostCrash { host: OpaqueRef },
    /// The crashed host is back.
    HostBack { host: OpaqueRef },
    /// A fault: running appliance guests are stopped from outside.
    KillGuests,
    /// A fault: every session of the pool becomes invalid.
    ExpireSessions,
    /// A fault: the SR fills up.
    SrFill { sr: OpaqueRef },
    /// The space the fill took is freed.
    SrDrain { sr: OpaqueRef },
    /// A fault: the host is disabled (maintenance).
    HostDisable { host: OpaqueRef },
    /// The disabled host is enabled again.
    HostEnable { host: OpaqueRef },
    /// The pool master role moves to `host` (a fault, or moving back).
    MasterMove { host: OpaqueRef },
    /// HA's election after the master host `failed`: a live member takes over.
    HaTakeover { failed: OpaqueRef },
    /// An `Async.*` call's work is done: `method` (without the prefix) lands
    /// with `params` and completes `task`, unless the task was cancelled or
    /// the host it runs on (`on`) went down meanwhile.
    TaskDone {
        task: OpaqueRef,
        on: OpaqueRef,
        method: String,
        params: Vec<serde_json::Value>,
    },
    /// A cancelled task has stopped: it ends `cancelled`, and its work
    /// (its `TaskDone`) never comes.
    TaskCancelled { task: OpaqueRef },
}

/// Due events ordered by (time, insertion order): ties resolve the same way every run.
#[derive(Default)]
pub(crate) struct Schedule {
    next_seq: u64,
    due: BTreeMap<(SimTime, u64), (PoolId, Scheduled)>,
}

impl Schedule {
    pub(crate) fn at(&mut self, at: SimTime, pool: PoolId, event: Scheduled) {
        self.due.insert((at, self.next_seq), (pool, event));
        self.next_seq += 1;
    }

    /// When the next event is due.
    pub(crate) fn next_at(&self) -> Option<SimTime> {
        self.due.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Drops the events `unwanted` picks (work that will not happen).
    pub(crate) fn drop_where(&mut self, unwanted: impl Fn(&Scheduled) -> bool) {
        self.due.retain(|_, (_, event)| !unwanted(event));
    }

    pub(crate) fn pop_due(&mut self, now: SimTime) -> Option<(SimTime, PoolId, Scheduled)> {
        let (&(at, seq), _) = self.due.first_key_value()?;
        if at > now {
            return None;
        }
        let (pool, event) = self.due.remove(&(at, seq)).expect("first key exists");
        Some((at, pool, event))
    }
}
