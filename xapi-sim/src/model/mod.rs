//! The objects of one simulated pool, as XAPI records plus what only the
//! simulator knows (guest state, SR bandwidth, DHCP servers).

pub(crate) mod build;

use crate::dhcp::DhcpServer;
use crate::spec::GuestKind;
use crate::time::SimTime;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xapi_proto::OpaqueRef;
use xapi_proto::records::*;

pub(crate) use build::build_pool;

/// A class's objects by reference; ordered, so every listing is deterministic.
pub type Table<R> = BTreeMap<OpaqueRef, R>;

/// What the simulator knows of a VM's guest beyond its XAPI record.
#[derive(Clone, Debug, Default)]
pub struct GuestState {
    /// How the guest behaves once booted.
    pub kind: GuestKind,
    /// Address a generic guest configures on boot.
    pub static_ip: Option<Ipv4Addr>,
    /// Bumped on every start and stop, so scheduled guest events of an earlier
    /// boot are ignored.
    pub epoch: u64,
    /// The address the guest holds now, and since when.
    pub address: Option<(Ipv4Addr, SimTime)>,
}

/// One pool's objects.
pub struct PoolModel {
    pub name: String,
    pub pool_ref: OpaqueRef,
    pub pool: PoolRecord,
    pub hosts: Table<HostRecord>,
    pub host_metrics: Table<HostMetricsRecord>,
    pub srs: Table<SrRecord>,
    pub pbds: Table<PbdRecord>,
    pub networks: Table<NetworkRecord>,
    pub pifs: Table<PifRecord>,
    pub vms: Table<VmRecord>,
    pub guest_metrics: Table<VmGuestMetricsRecord>,
    pub vifs: Table<VifRecord>,
    pub vbds: Table<VbdRecord>,
    pub vdis: Table<VdiRecord>,
    pub tasks: Table<TaskRecord>,
    /// Live sessions and their user.
    pub sessions: BTreeMap<OpaqueRef, String>,
    /// Space an `sr_fill` fault took on each SR, given back when it heals.
    pub sr_filled: BTreeMap<OpaqueRef, i64>,
    pub guests: BTreeMap<OpaqueRef, GuestState>,
    /// Sequential read bandwidth of each SR, bytes per second.
    pub sr_bandwidth_bytes_per_s: BTreeMap<OpaqueRef, f64>,
    /// DHCP servers by network.
    pub dhcp: BTreeMap<OpaqueRef, DhcpServer>,
    /// Bytes used on each SR by things the model does not track as VDIs.
    pub sr_base_bytes: BTreeMap<OpaqueRef, i64>,
    /// Every time a guest configured an address another running guest held.
    pub address_conflicts: Vec<AddressConflict>,
    /// The event stream, when the pool is served (None in in-process runs).
    pub events: Option<crate::events::EventTracker>,
    /// The address clients are configured with: the first master's.
    pub configured_address: String,
    /// What each VDI holds (protected VMs' disks and their snapshots).
    pub vdi_content: BTreeMap<OpaqueRef, VdiContent>,
    /// Bytes written into VDIs (restores), per 64 KiB block, over their content.
    pub written: BTreeMap<OpaqueRef, BTreeMap<u64, Vec<u8>>>,
    /// Content of every snapshot VDI ever taken, by uuid (kept after destroy,
    /// so a run can check restores against what was snapshotted).
    pub snapshot_content: BTreeMap<String, VdiContent>,
    /// Records carry every XAPI field (defaults for what the model does not
    /// track). On for served pools; in-process runs skip the cost, since the
    /// engine reads only the fields it knows.
    pub full_records: bool,
}

/// The bytes of a VDI: its content model and, for a snapshot, the day it froze.
#[derive(Clone, Debug, PartialEq)]
pub struct VdiContent {
    pub disk: crate::content::DiskContent,
    /// `None` for a live disk (it reads as of the current simulated day).
    pub frozen_day: Option<u32>,
}

impl VdiContent {
    /// The day whose bytes the VDI shows at `now`.
    pub fn day_at(&self, now: crate::time::SimTime) -> u32 {
        self.frozen_day
            .unwrap_or_else(|| crate::content::day_of(now))
    }
}

/// Two running guests on one address at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressConflict {
    pub at: SimTime,
    pub ip: Ipv4Addr,
    /// The guest that held the address first: (name_label, other_config).
    pub holder: (String, xapi_proto::records::StringMap),
    /// The guest that configured it second.
    pub newcomer: (String, xapi_proto::records::StringMap),
}

/// Linux device name of a `userdevice` number: 0 -> xvda, 1 -> xvdb...
pub fn device_name(userdevice: &str) -> String {
    match userdevice.parse::<u8>() {
        Ok(n) if n < 26 => format!("xvd{}", (b'a' + n) as char),
        _ => String::new(),
    }
}

/// A VM record whose memory is fixed at `bytes` (static = dynamic = target).
pub fn fixed_memory(bytes: i64) -> VmRecord {
    VmRecord {
        memory_static_max: bytes,
        memory_dynamic_max: bytes,
        memory_dynamic_min: bytes,
        memory_static_min: bytes,
        memory_target: bytes,
        ..Default::default()
    }
}

impl PoolModel {
    /// Adds a VIF and links it from its VM and its network.
    pub fn insert_vif(&mut self, vif: OpaqueRef, record: VifRecord) {
        if let Some(vm) = self.vms.get_mut(&record.vm) {
            vm.vifs.push(vif.clone());
        }
        if let Some(net) = self.networks.get_mut(&record.network) {
            net.vifs.push(vif.clone());
        }
        self.vifs.insert(vif, record);
    }

    /// Adds a VBD and links it from its VM and its VDI.
    pub fn insert_vbd(&mut self, vbd: OpaqueRef, record: VbdRecord) {
        if let Some(vm) = self.vms.get_mut(&record.vm) {
            vm.vbds.push(vbd.clone());
        }
        if let Some(vdi) = self.vdis.get_mut(&record.vdi) {
            vdi.vbds.push(vbd.clone());
        }
        self.vbds.insert(vbd, record);
    }

    /// Adds a VDI and links it from its SR (and from the VDI it is a snapshot of).
    pub fn insert_vdi(&mut self, vdi: OpaqueRef, record: VdiRecord) {
        if let Some(sr) = self.srs.get_mut(&record.sr) {
            sr.vdis.push(vdi.clone());
        }
        if let Some(parent) = self.vdis.get_mut(&record.snapshot_of) {
            parent.snapshots.push(vdi.clone());
        }
        self.vdis.insert(vdi, record);
    }

    /// The SRs a host can reach (attached PBDs).
    pub fn host_srs(&self, host: &OpaqueRef) -> Vec<OpaqueRef> {
        self.pbds
            .values()
            .filter(|p| &p.host == host && p.currently_attached)
            .map(|p| p.sr.clone())
            .collect()
    }

    /// True when `host` has an attached PBD for `sr`.
    pub fn host_sees_sr(&self, host: &OpaqueRef, sr: &OpaqueRef) -> bool {
        self.pbds
            .values()
            .any(|p| &p.host == host && &p.sr == sr && p.currently_attached)
    }

    /// Memory a host can still give to a new VM, in bytes.
    pub fn host_free_memory(&self, host: &OpaqueRef) -> i64 {
        let Some(h) = self.hosts.get(host) else {
            return 0;
        };
        let total = self
            .host_metrics
            .get(&h.metrics)
            .map(|m| m.memory_total)
            .unwrap_or(0);
        let used: i64 = self
            .vms
            .values()
            .filter(|vm| &vm.resident_on == host && vm.power_state != PowerState::Halted)
            .map(|vm| vm.memory_static_max + vm.memory_overhead)
            .sum();
        (total - h.memory_overhead - used).max(0)
    }

    /// True when the host is enabled and live.
    pub fn host_usable(&self, host: &OpaqueRef) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.enabled && self.host_metrics.get(&h.metrics).is_some_and(|m| m.live))
    }

    /// Distinct SRs holding the VDIs of the VM's non-empty VBDs.
    pub fn vm_srs(&self, vm: &VmRecord) -> Vec<OpaqueRef> {
        let mut srs: Vec<OpaqueRef> = vm
            .vbds
            .iter()
            .filter_map(|b| self.vbds.get(b))
            .filter(|b| !b.empty)
            .filter_map(|b| self.vdis.get(&b.vdi))
            .map(|d| d.sr.clone())
            .collect();
        srs.sort();
        srs.dedup();
        srs
    }

    /// The VM (running, appliance or not) whose guest holds `ip` longest.
    pub fn guest_at(&self, ip: Ipv4Addr) -> Option<&OpaqueRef> {
        self.guests
            .iter()
            .filter_map(|(vm, g)| match g.address {
                Some((a, since)) if a == ip => Some((since, vm)),
                _ => None,
            })
            .filter(|(_, vm)| {
                self.vms
                    .get(*vm)
                    .is_some_and(|r| r.power_state == PowerState::Running)
            })
            .min()
            .map(|(_, vm)| vm)
    }

    /// Recomputes an SR's utilisation from its VDIs.
    pub fn refresh_sr_usage(&mut self, sr: &OpaqueRef) {
        let (phys, virt) = self
            .vdis
            .values()
            .filter(|d| &d.sr == sr)
            .fold((0i64, 0i64), |(p, v), d| {
                (p + d.physical_utilisation, v + d.virtual_size)
            });
        if let Some(rec) = self.srs.get_mut(sr) {
            let base = self.sr_base_bytes.get(sr).copied().unwrap_or(0);
            rec.physical_utilisation = base + phys;
            rec.virtual_allocation = base + virt;
        }
    }
}
