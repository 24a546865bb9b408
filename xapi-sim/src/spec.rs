//! What a simulated world is made of: pools, hosts, storage, networks, VMs and
//! the timing of every operation. Scenario files deserialize into these types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A `[lo, hi]` range of seconds; durations are drawn uniformly from it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecondsRange(pub f64, pub f64);

impl SecondsRange {
    fn check(&self, field: &str) -> Result<(), SpecError> {
        if !(self.0 >= 0.0 && self.1 >= self.0 && self.1.is_finite()) {
            return Err(SpecError::new(format!(
                "timing.{field}: range [{}, {}] must satisfy 0 <= lo <= hi",
                self.0, self.1
            )));
        }
        Ok(())
    }
}

/// The whole simulated world.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WorldSpec {
    /// How long operations take.
    pub timing: TimingSpec,
    /// The delegate appliance image the pools can import.
    pub appliance: ApplianceSpec,
    /// Credentials every pool master accepts.
    pub credentials: CredentialsSpec,
    /// The pools.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolSpec>,
    /// Faults injected during the run.
    #[serde(default, rename = "fault")]
    pub faults: Vec<crate::faults::FaultSpec>,
}

/// Login accepted by the simulated pool masters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsSpec {
    pub user: String,
    pub password: String,
}

impl Default for CredentialsSpec {
    fn default() -> Self {
        CredentialsSpec {
            user: "root".into(),
            password: "password".into(),
        }
    }
}

/// The appliance image (an XVA at a URL) that `VM.import` recognises.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceSpec {
    /// URL the engine imports the appliance from.
    pub url: String,
    /// Size of the appliance's system disk.
    pub disk_mib: u64,
    /// Memory of the appliance VM.
    pub memory_mib: u64,
    /// vCPUs of the appliance VM.
    pub vcpus: i64,
}

impl Default for ApplianceSpec {
    fn default() -> Self {
        ApplianceSpec {
            url: "file:///opt/abd/abd-appliance.xva".into(),
            disk_mib: 256,
            memory_mib: 256,
            vcpus: 1,
        }
    }
}

/// Durations of operations, in seconds, drawn uniformly from each range.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingSpec {
    /// Reads: get_record, getters, get_all...
    pub read_s: SecondsRange,
    /// Small writes: other_config / xenstore_data edits, set_* calls, VIF/VBD create.
    pub write_s: SecondsRange,
    pub login_s: SecondsRange,
    pub clone_s: SecondsRange,
    pub copy_s: SecondsRange,
    pub provision_s: SecondsRange,
    pub import_s: SecondsRange,
    /// The `VM.start` call itself (domain build).
    pub start_s: SecondsRange,
    /// Guest OS boot, after `VM.start` returns, until the appliance reads its settings.
    pub boot_s: SecondsRange,
    /// DHCP exchange, once booted.
    pub dhcp_s: SecondsRange,
    /// Static address configuration, once booted.
    pub static_ip_s: SecondsRange,
    /// Delay between DHCP attempts when no lease is offered.
    pub dhcp_retry_s: SecondsRange,
    pub shutdown_s: SecondsRange,
    pub hard_shutdown_s: SecondsRange,
    pub destroy_s: SecondsRange,
    pub snapshot_s: SecondsRange,
    pub vbd_plug_s: SecondsRange,
    pub vbd_unplug_s: SecondsRange,
    pub vdi_destroy_s: SecondsRange,
    /// One request to an appliance over the network (identity, progress).
    pub agent_s: SecondsRange,
    /// With HA on: from the master host's failure until a member is master
    /// (HA's host-failure timeout, then the election).
    pub ha_takeover_s: SecondsRange,
}

impl Default for TimingSpec {
    fn default() -> Self {
        TimingSpec {
            read_s: SecondsRange(0.002, 0.010),
            write_s: SecondsRange(0.010, 0.040),
            login_s: SecondsRange(0.050, 0.150),
            clone_s: SecondsRange(1.0, 3.0),
            copy_s: SecondsRange(20.0, 60.0),
            provision_s: SecondsRange(0.2, 0.5),
            import_s: SecondsRange(30.0, 60.0),
            start_s: SecondsRange(2.0, 5.0),
            boot_s: SecondsRange(15.0, 40.0),
            dhcp_s: SecondsRange(1.0, 3.0),
            static_ip_s: SecondsRange(0.2, 0.5),
            dhcp_retry_s: SecondsRange(8.0, 12.0),
            shutdown_s: SecondsRange(4.0, 6.0),
            hard_shutdown_s: SecondsRange(1.0, 2.0),
            destroy_s: SecondsRange(0.5, 1.5),
            snapshot_s: SecondsRange(1.0, 3.0),
            vbd_plug_s: SecondsRange(0.5, 1.5),
            vbd_unplug_s: SecondsRange(0.5, 1.5),
            vdi_destroy_s: SecondsRange(0.3, 1.0),
            agent_s: SecondsRange(0.005, 0.020),
            ha_takeover_s: SecondsRange(60.0, 90.0),
        }
    }
}

impl TimingSpec {
    fn check(&self) -> Result<(), SpecError> {
        let all = [
            ("read_s", self.read_s),
            ("write_s", self.write_s),
            ("login_s", self.login_s),
            ("clone_s", self.clone_s),
            ("copy_s", self.copy_s),
            ("provision_s", self.provision_s),
            ("import_s", self.import_s),
            ("start_s", self.start_s),
            ("boot_s", self.boot_s),
            ("dhcp_s", self.dhcp_s),
            ("static_ip_s", self.static_ip_s),
            ("dhcp_retry_s", self.dhcp_retry_s),
            ("shutdown_s", self.shutdown_s),
            ("hard_shutdown_s", self.hard_shutdown_s),
            ("destroy_s", self.destroy_s),
            ("snapshot_s", self.snapshot_s),
            ("vbd_plug_s", self.vbd_plug_s),
            ("vbd_unplug_s", self.vbd_unplug_s),
            ("vdi_destroy_s", self.vdi_destroy_s),
            ("agent_s", self.agent_s),
            ("ha_takeover_s", self.ha_takeover_s),
        ];
        all.iter().try_for_each(|(name, r)| r.check(name))
    }
}

/// One pool: a master and members, storage, networks, VMs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    /// Number of hosts; the first is the master. Named `<pool>-host-<n>`.
    #[serde(default = "default_hosts")]
    pub hosts: u32,
    #[serde(default = "default_host_memory_gib")]
    pub host_memory_gib: f64,
    #[serde(default = "default_host_cpus")]
    pub host_cpus: u32,
    /// Memory the control domain keeps on every host.
    #[serde(default = "default_dom0_memory_gib")]
    pub dom0_memory_gib: f64,
    /// Give every host a local SR "Local storage on <host>" of this size (0 = none).
    #[serde(default)]
    pub local_sr_gib: f64,
    #[serde(default, rename = "sr")]
    pub srs: Vec<SrSpec>,
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkSpec>,
    #[serde(default, rename = "vms")]
    pub vm_groups: Vec<VmGroupSpec>,
    /// XAPI high availability is on: when the master host fails, a live
    /// member takes the master role over after `timing.ha_takeover_s`.
    /// Without it, the pool's XAPI is gone until the master is back.
    #[serde(default)]
    pub ha: bool,
}

fn default_hosts() -> u32 {
    1
}
fn default_host_memory_gib() -> f64 {
    64.0
}
fn default_host_cpus() -> u32 {
    16
}
fn default_dom0_memory_gib() -> f64 {
    2.0
}

/// A storage repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrSpec {
    pub name: String,
    /// SR type as XAPI names it: nfs, lvmoiscsi, lvmohba, ext, lvm, smb...
    #[serde(default = "default_sr_type", rename = "type")]
    pub sr_type: String,
    #[serde(default = "default_true")]
    pub shared: bool,
    pub size_gib: f64,
    #[serde(default)]
    pub used_gib: f64,
    /// Sequential read bandwidth one reader gets.
    #[serde(default = "default_bandwidth")]
    pub bandwidth_mib_s: f64,
    /// The pool's default SR.
    #[serde(default)]
    pub default: bool,
    /// For a local SR: the host (by index, 1-based) that has it.
    #[serde(default)]
    pub host: Option<u32>,
}

fn default_sr_type() -> String {
    "nfs".into()
}
fn default_true() -> bool {
    true
}
fn default_bandwidth() -> f64 {
    200.0
}

/// A network, with an optional DHCP server on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    /// Bridge name; defaults to `xenbr<index>`.
    #[serde(default)]
    pub bridge: Option<String>,
    /// VLAN tag, -1 for untagged.
    #[serde(default = "default_vlan")]
    pub vlan: i64,
    #[serde(default = "default_mtu")]
    pub mtu: i64,
    /// The hosts' management interfaces are on this network.
    #[serde(default)]
    pub management: bool,
    #[serde(default)]
    pub dhcp: Option<DhcpSpec>,
}

fn default_vlan() -> i64 {
    -1
}
fn default_mtu() -> i64 {
    1500
}

/// A DHCP server: an inclusive address range and the lease time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpSpec {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
    /// The server answers no requests (down).
    #[serde(default)]
    pub down: bool,
}

fn default_lease_s() -> u64 {
    3600
}

/// What a VM's guest does once booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// An ordinary guest: configures `ip` if given, answers no appliance protocol.
    #[default]
    Generic,
    /// The delegate appliance: reads `vm-data/...`, writes `vm-data/assigned-ip`,
    /// answers identity requests.
    Appliance,
}

/// One VM, or a numbered group of alike VMs (`<prefix>-01` ...).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmGroupSpec {
    /// Name of a single VM, or the prefix of a group when `count` is set.
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    /// Disk sizes, one per disk.
    #[serde(default = "default_disks")]
    pub disks_gib: Vec<f64>,
    /// Disk sizes in MiB (instead of `disks_gib`): small disks whose bytes a
    /// run really reads.
    #[serde(default)]
    pub disks_mib: Option<Vec<u64>>,
    /// Share of each disk the guest has written, from its start (the rest
    /// was never written and reads as zeros, as on a thin disk whose
    /// filesystem is partly full); 1.0, the default, leaves every region to
    /// the content model.
    #[serde(default = "default_disk_used")]
    pub disk_used: f64,
    /// Changed-block tracking enabled on the VMs' disks (by the operator).
    #[serde(default)]
    pub cbt: bool,
    /// SR (by name) holding the disks.
    pub sr: Option<String>,
    /// SR (by name) of each disk in order, for VMs whose disks span several
    /// SRs (instead of `sr`).
    #[serde(default)]
    pub disk_srs: Option<Vec<String>>,
    #[serde(default = "default_vm_memory_gib")]
    pub memory_gib: f64,
    #[serde(default = "default_true")]
    pub running: bool,
    /// Host (1-based index) the VM runs on; default spreads running VMs.
    #[serde(default)]
    pub host: Option<u32>,
    /// Network (by name) of its VIF; default the management network.
    #[serde(default)]
    pub network: Option<String>,
    /// A static address the guest configures on boot (to model collisions).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub guest: GuestKind,
    #[serde(default)]
    pub template: bool,
    #[serde(default)]
    pub other_config: BTreeMap<String, String>,
}

fn default_disks() -> Vec<f64> {
    vec![20.0]
}
fn default_disk_used() -> f64 {
    1.0
}
fn default_vm_memory_gib() -> f64 {
    2.0
}

impl VmGroupSpec {
    /// How many disks each VM of the group has.
    pub fn disk_count(&self) -> usize {
        match &self.disks_mib {
            Some(mib) => mib.len(),
            None => self.disks_gib.len(),
        }
    }

    /// The names of the VMs this entry stands for.
    pub fn names(&self) -> Vec<String> {
        match self.count {
            None => vec![self.name.clone()],
            Some(n) => {
                let width = n.to_string().len().max(2);
                (1..=n)
                    .map(|i| format!("{}-{:0width$}", self.name, i))
                    .collect()
            }
        }
    }
}

/// A world description that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// What is wrong, naming the field.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(message: String) -> Self {
        SpecError { message }
    }
}

impl WorldSpec {
    /// Checks the references and ranges inside the spec; names the first problem.
    pub fn check(&self) -> Result<(), SpecError> {
        self.timing.check()?;
        for (i, fault) in self.faults.iter().enumerate() {
            fault.check(i)?;
            let Some(pool) = self.pools.iter().find(|p| p.name == fault.pool) else {
                return Err(SpecError::new(format!(
                    "fault {}: no pool named {:?}",
                    i + 1,
                    fault.pool
                )));
            };
            if let Some(sr) = &fault.sr
                && !pool.srs.iter().any(|s| &s.name == sr)
            {
                return Err(SpecError::new(format!(
                    "fault {}: pool {:?} has no SR named {sr:?}",
                    i + 1,
                    fault.pool
                )));
            }
            if let Some(host) = &fault.host
                && !(1..=pool.hosts).any(|n| *host == format!("{}-host-{n}", pool.name))
            {
                return Err(SpecError::new(format!(
                    "fault {}: pool {:?} has no host named {host:?}",
                    i + 1,
                    fault.pool
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if !names.insert(pool.name.as_str()) {
                return Err(SpecError::new(format!(
                    "pool[{i}].name: duplicate pool name {:?}",
                    pool.name
                )));
            }
            pool.check(i)?;
        }
        Ok(())
    }
}

impl PoolSpec {
    fn check(&self, i: usize) -> Result<(), SpecError> {
        let at = |field: &str| format!("pool[{i}] ({}).{field}", self.name);
        if self.hosts == 0 {
            return Err(SpecError::new(format!(
                "{}: a pool needs at least one host",
                at("hosts")
            )));
        }
        if self.srs.iter().filter(|s| s.default).count() > 1 {
            return Err(SpecError::new(format!(
                "{}: more than one SR has default = true",
                at("sr")
            )));
        }
        for (j, sr) in self.srs.iter().enumerate() {
            if let Some(h) = sr.host
                && (h == 0 || h > self.hosts)
            {
                return Err(SpecError::new(format!(
                    "{}: host {h} does not exist (the pool has {} hosts)",
                    at(&format!("sr[{j}].host")),
                    self.hosts
                )));
            }
            if sr.size_gib <= 0.0 || sr.used_gib < 0.0 || sr.used_gib > sr.size_gib {
                return Err(SpecError::new(format!(
                    "{}: size_gib must be > 0 and used_gib within it",
                    at(&format!("sr[{j}]"))
                )));
            }
        }
        for (j, net) in self.networks.iter().enumerate() {
            if let Some(d) = &net.dhcp
                && u32::from(d.first) > u32::from(d.last)
            {
                return Err(SpecError::new(format!(
                    "{}: first {} is after last {}",
                    at(&format!("network[{j}].dhcp")),
                    d.first,
                    d.last
                )));
            }
        }
        for (j, group) in self.vm_groups.iter().enumerate() {
            let named_srs = group.sr.iter().map(|sr| (sr, "sr".to_string()));
            let disk_srs = group.disk_srs.iter().flatten().enumerate();
            for (sr, field) in
                named_srs.chain(disk_srs.map(|(d, sr)| (sr, format!("disk_srs[{d}]"))))
            {
                if !self.srs.iter().any(|s| &s.name == sr) && !self.is_local_sr_name(sr) {
                    return Err(SpecError::new(format!(
                        "{}: no SR named {sr:?} in this pool",
                        at(&format!("vms[{j}].{field}"))
                    )));
                }
            }
            if let Some(disk_srs) = &group.disk_srs {
                let disks = group.disk_count();
                if group.sr.is_some() || disk_srs.len() != disks {
                    return Err(SpecError::new(format!(
                        "{}: one SR per disk ({disks}), instead of `sr`",
                        at(&format!("vms[{j}].disk_srs"))
                    )));
                }
            }
            if let Some(net) = &group.network
                && !self.networks.iter().any(|n| &n.name == net)
            {
                return Err(SpecError::new(format!(
                    "{}: no network named {net:?} in this pool",
                    at(&format!("vms[{j}].network"))
                )));
            }
            if !(0.0..=1.0).contains(&group.disk_used) {
                return Err(SpecError::new(format!(
                    "{}: {} is not a share of the disk (0.0 to 1.0)",
                    at(&format!("vms[{j}].disk_used")),
                    group.disk_used
                )));
            }
            if let Some(h) = group.host
                && (h == 0 || h > self.hosts)
            {
                return Err(SpecError::new(format!(
                    "{}: host {h} does not exist (the pool has {} hosts)",
                    at(&format!("vms[{j}].host")),
                    self.hosts
                )));
            }
        }
        Ok(())
    }

    /// Name of host `index` (1-based).
    pub fn host_name(&self, index: u32) -> String {
        format!("{}-host-{index}", self.name)
    }

    /// Name of the local SR of host `index` (1-based), when `local_sr_gib > 0`.
    pub fn local_sr_name(&self, index: u32) -> String {
        format!("Local storage on {}", self.host_name(index))
    }

    fn is_local_sr_name(&self, name: &str) -> bool {
        self.local_sr_gib > 0.0 && (1..=self.hosts).any(|h| self.local_sr_name(h) == name)
    }
}
