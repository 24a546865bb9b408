//! Everything the engine keeps per pool: the session, the agent channel, the
//! template, the address plan, the boot gate and the idle delegates.

use crate::accounting::{Accounting, Change};
use crate::address::{AddressQueue, HolderId, StaticAllocator};
use crate::agent::AgentClient;
use crate::boot_gate::BootGate;
use crate::config::{Addressing, EngineConfig, PoolConfig};
use crate::delegate::Delegate;
use crate::error::EngineError;
use crate::joblog::{JobLog, LineStatus};
use crate::placement::HostView;
use crate::template::TemplateInfo;
use crate::xapi::{CallError, XapiClient};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{HostRecord, NetworkRecord, SrRecord};

/// State shared by every pool of one engine.
pub struct Shared {
    pub config: EngineConfig,
    /// Engine time zero. The engine reads time only from `tokio::time`.
    pub epoch: Instant,
    pub accounting: Mutex<Accounting>,
    /// The engine's own log: start-up, reclaim, reaping, shutdown.
    pub log: Arc<Mutex<JobLog>>,
    /// Where backups go; without one, delegates only read (timing runs).
    pub store: Option<Arc<crate::datastore::DataStore>>,
    /// Jobs running now, by name: how to cancel them.
    pub(crate) running_jobs: Mutex<BTreeMap<String, crate::job::JobControl>>,
    /// Where job runs are recorded as they happen.
    pub journal: Arc<crate::journal::Journal>,
    /// Tasks the engine runs beside its jobs (idle reapers), aborted when
    /// the engine halts.
    pub(crate) background: Mutex<tokio::task::JoinSet<()>>,
    /// Leftovers the background retries still try to remove.
    pub(crate) leftovers_pending: std::sync::atomic::AtomicUsize,
    /// The wall-clock time at engine time zero, against a real pool: what
    /// backup versions are stamped with. None in simulation, where versions
    /// carry engine time (runs stay a function of their seed).
    pub(crate) wall_at_epoch: Option<std::time::SystemTime>,
    next_holder: AtomicU64,
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new(
        config: EngineConfig,
        store: Option<Arc<crate::datastore::DataStore>>,
    ) -> Self {
        Self::with(
            config,
            store,
            crate::journal::Journal::in_memory(),
            Instant::now(),
        )
    }

    pub(crate) fn with(
        config: EngineConfig,
        store: Option<Arc<crate::datastore::DataStore>>,
        journal: Arc<crate::journal::Journal>,
        epoch: Instant,
    ) -> Self {
        Shared {
            config,
            epoch,
            accounting: Mutex::new(Accounting::default()),
            log: Arc::new(Mutex::new(JobLog::default())),
            store,
            running_jobs: Mutex::default(),
            journal,
            background: Mutex::default(),
            leftovers_pending: Default::default(),
            wall_at_epoch: None,
            next_holder: AtomicU64::new(1),
        }
    }

    /// Engine time now.
    pub fn now(&self) -> Duration {
        Instant::now().duration_since(self.epoch)
    }

    /// When something happens now, as a backup version records it: the
    /// wall-clock date and time (RFC 3339, UTC) against a real pool, engine
    /// time in simulation.
    pub fn timestamp(&self) -> String {
        match self.wall_at_epoch {
            Some(wall) => humantime::format_rfc3339_seconds(wall + self.now()).to_string(),
            None => crate::joblog::format_clock(self.now().as_millis() as u64),
        }
    }

    /// Records an accounting change now.
    pub fn account(&self, pool: &str, change: Change) {
        let at_ms = self.now().as_millis() as u64;
        self.accounting
            .lock()
            .expect("accounting lock poisoned")
            .apply(at_ms, pool, change);
    }

    /// A fresh id for an address holder.
    pub(crate) fn next_holder(&self) -> HolderId {
        self.next_holder.fetch_add(1, Ordering::Relaxed)
    }
}

/// Writes lines about one VM (or the job itself) into a shared job log.
#[derive(Clone)]
pub struct VmLog {
    pub(crate) log: Arc<Mutex<JobLog>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) vm: Option<String>,
    /// Set once this logger (or a clone) wrote a warning.
    warned: Arc<std::sync::atomic::AtomicBool>,
    /// The VM's cancellation signal. It travels with the logger because every
    /// step that logs about a VM is a step that may be asked to stop.
    cancel: crate::cancel::Cancel,
    /// Where the lines are also recorded (a job run's loggers).
    journal: Option<crate::journal::RunJournal>,
}

impl VmLog {
    /// A logger writing into `log`, about `vm` (None: about the job).
    pub fn new(log: Arc<Mutex<JobLog>>, shared: Arc<Shared>, vm: Option<String>) -> Self {
        VmLog {
            log,
            shared,
            vm,
            warned: Arc::default(),
            cancel: crate::cancel::Cancel::new(),
            journal: None,
        }
    }

    /// The same logger, also recording its lines in a run's journal.
    pub fn with_journal(mut self, journal: Option<crate::journal::RunJournal>) -> Self {
        self.journal = journal;
        self
    }

    /// The run's journal, for a job run's loggers.
    pub(crate) fn journal(&self) -> Option<&crate::journal::RunJournal> {
        self.journal.as_ref()
    }

    /// The same logger, stopping when `cancel` is raised.
    pub fn with_cancel(mut self, cancel: crate::cancel::Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// The VM's (or job's) cancellation signal.
    pub fn cancel(&self) -> &crate::cancel::Cancel {
        &self.cancel
    }

    /// True once a warning was written through this logger or a clone of it.
    pub fn warned(&self) -> bool {
        self.warned.load(Ordering::Relaxed)
    }

    /// Appends a line now.
    pub fn line(&self, status: LineStatus, text: impl Into<String>) {
        if status == LineStatus::Warn {
            self.warned.store(true, Ordering::Relaxed);
        }
        let at = self.shared.now();
        let mut log = self.log.lock().expect("job log lock poisoned");
        log.push(at, status, self.vm.as_deref(), text);
        if let (Some(journal), Some(line)) = (&self.journal, log.lines.last()) {
            journal.record(|job, run| crate::journal::JournalRecord::Line {
                job,
                run,
                line: line.clone(),
            });
        }
    }
    pub fn ok(&self, text: impl Into<String>) {
        self.line(LineStatus::Ok, text)
    }
    /// A disk transfer's progress line: `<verb> disk i [size]: NN%`, ok at 100%.
    pub fn disk_progress(&self, verb: &str, p: crate::agent::DiskProgress) {
        let status = if p.percent >= 100 {
            crate::joblog::LineStatus::Ok
        } else {
            crate::joblog::LineStatus::InProgress
        };
        self.line(
            status,
            format!(
                "{verb} disk {} [{}]: {}%",
                p.disk_index,
                crate::joblog::format_bytes(p.size_bytes),
                p.percent
            ),
        );
    }

    pub fn warn(&self, text: impl Into<String>) {
        self.line(LineStatus::Warn, text)
    }
    pub fn fail(&self, text: impl Into<String>) {
        self.line(LineStatus::Fail, text)
    }
    pub fn progress(&self, text: impl Into<String>) {
        self.line(LineStatus::InProgress, text)
    }
}

/// How long a host XAPI reported offline or disabled is avoided.
pub const HOST_DOWN_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// A delegate kept running idle for reuse (persistent mode).
pub(crate) struct IdleDelegate {
    pub delegate: Delegate,
    pub generation: u64,
}

/// One pool as the engine drives it.
pub struct PoolRuntime {
    pub(crate) shared: Arc<Shared>,
    pub config: PoolConfig,
    pub xapi: XapiClient,
    pub agent: Arc<AgentClient>,
    pub(crate) addresses: Option<AddressQueue>,
    /// With DHCP: where delegates wait once the range is found exhausted.
    pub(crate) dhcp_gate: crate::address::DhcpGate,
    pub(crate) boot_gate: BootGate,
    pub(crate) template: tokio::sync::Mutex<Option<TemplateInfo>>,
    pub(crate) idle: Mutex<Vec<IdleDelegate>>,
    idle_generation: AtomicU64,
    /// Hosts XAPI recently reported offline or disabled, with when.
    down_hosts: Mutex<BTreeMap<OpaqueRef, tokio::time::Instant>>,
    next_number: AtomicU64,
    /// Static addresses of delegates whose teardown failed: held until the
    /// VM is really gone, so no one else is given an address still in use.
    held_leases: Mutex<BTreeMap<OpaqueRef, crate::address::Lease>>,
    /// This runtime itself, for background work that outlives a call.
    me: std::sync::Weak<PoolRuntime>,
}

/// The pool's hosts, storage and networks, read at job start.
pub struct Topology {
    pub hosts: BTreeMap<OpaqueRef, HostRecord>,
    pub live_hosts: BTreeSet<OpaqueRef>,
    pub host_srs: BTreeMap<OpaqueRef, BTreeSet<OpaqueRef>>,
    pub srs: BTreeMap<OpaqueRef, SrRecord>,
    pub networks: BTreeMap<OpaqueRef, NetworkRecord>,
    pub default_sr: OpaqueRef,
    pub management_network: OpaqueRef,
}

impl Topology {
    /// Name of a host, or its ref.
    pub fn host_name(&self, host: &OpaqueRef) -> String {
        self.hosts
            .get(host)
            .map(|h| h.name_label.clone())
            .unwrap_or_else(|| host.to_string())
    }

    /// Name of an SR, or its ref.
    pub fn sr_name(&self, sr: &OpaqueRef) -> String {
        self.srs
            .get(sr)
            .map(|s| s.name_label.clone())
            .unwrap_or_else(|| sr.to_string())
    }

    /// True when `host` has every SR of `srs` attached.
    pub fn host_sees(&self, host: &OpaqueRef, srs: &[OpaqueRef]) -> bool {
        self.host_srs
            .get(host)
            .is_some_and(|seen| srs.iter().all(|s| seen.contains(s)))
    }
}

impl PoolRuntime {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: PoolConfig,
        xapi: XapiClient,
        agent: Arc<AgentClient>,
    ) -> Result<Arc<PoolRuntime>, EngineError> {
        let addresses = match &config.addressing {
            Addressing::Dhcp => None,
            Addressing::Static { addresses } => {
                let allocator =
                    StaticAllocator::new(addresses.clone()).map_err(|e| EngineError::Config {
                        pool: config.name.clone(),
                        message: e.to_string(),
                    })?;
                Some(AddressQueue::new(allocator))
            }
        };
        shared
            .accounting
            .lock()
            .expect("accounting lock poisoned")
            .add_pool(&config.name, config.persistent);
        Ok(Arc::new_cyclic(|me| PoolRuntime {
            me: me.clone(),
            held_leases: Mutex::default(),
            boot_gate: BootGate::new(config.boot_cap_per_pool, config.boot_cap_per_host),
            dhcp_gate: crate::address::DhcpGate::default(),
            shared,
            config,
            xapi,
            agent,
            addresses,
            template: tokio::sync::Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            idle_generation: AtomicU64::new(0),
            next_number: AtomicU64::new(1),
            down_hosts: Mutex::new(BTreeMap::new()),
        }))
    }

    /// This runtime as an `Arc` (for background work).
    pub(crate) fn shared_self(&self) -> Arc<PoolRuntime> {
        self.me.upgrade().expect("a pool runtime lives in an Arc")
    }

    /// Keeps `lease` until `vm` is destroyed (its teardown failed).
    pub(crate) fn hold_lease(&self, vm: &OpaqueRef, lease: crate::address::Lease) {
        self.held_leases
            .lock()
            .expect("held leases lock poisoned")
            .insert(vm.clone(), lease);
    }

    /// Returns the address `vm` held, now that it is gone.
    pub(crate) fn release_held_lease(&self, vm: &OpaqueRef) {
        let held = self
            .held_leases
            .lock()
            .expect("held leases lock poisoned")
            .remove(vm);
        if let Some(lease) = held {
            lease.release();
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Engine-wide settings.
    pub fn engine_config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Notes that XAPI reported `host` offline or disabled: placement avoids
    /// it for [`HOST_DOWN_MEMORY`].
    pub fn mark_host_down(&self, host: &OpaqueRef) {
        self.down_hosts
            .lock()
            .expect("down hosts lock poisoned")
            .insert(host.clone(), tokio::time::Instant::now());
    }

    /// Hosts reported down within the last [`HOST_DOWN_MEMORY`].
    pub fn hosts_down(&self) -> Vec<OpaqueRef> {
        let now = tokio::time::Instant::now();
        let mut down = self.down_hosts.lock().expect("down hosts lock poisoned");
        down.retain(|_, at| now.duration_since(*at) < HOST_DOWN_MEMORY);
        down.keys().cloned().collect()
    }

    /// The engine's data store, if it has one.
    pub fn store(&self) -> Option<&crate::datastore::DataStore> {
        self.shared.store.as_deref()
    }

    /// The engine's data store, to hand to work that outlives a borrow.
    pub(crate) fn shared_store(&self) -> Option<Arc<crate::datastore::DataStore>> {
        self.shared.store.clone()
    }

    /// Records an accounting change for this pool.
    pub(crate) fn account(&self, change: Change) {
        self.shared.account(&self.config.name, change)
    }

    /// The next delegate number (`ABD <n>`).
    pub(crate) fn next_delegate_number(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::Relaxed)
    }

    /// Static addresses leased now (ip, holder); empty under DHCP.
    pub fn leased_addresses(&self) -> Vec<(std::net::Ipv4Addr, HolderId)> {
        self.addresses
            .as_ref()
            .map(|q| q.leases().into_iter().map(|(a, h)| (a.ip, h)).collect())
            .unwrap_or_default()
    }

    /// Number of idle delegates kept for reuse.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("idle lock poisoned").len()
    }

    /// Reads hosts, storage and networks; an error names the pool.
    pub async fn topology(&self) -> Result<Topology, EngineError> {
        self.load_topology()
            .await
            .map_err(|e| EngineError::xapi(format!("pool {}", self.name()), "reading the pool", e))
    }

    /// Reads hosts, storage and networks.
    pub async fn load_topology(&self) -> Result<Topology, CallError> {
        let pool = self.xapi.pool_get_all_records().await?;
        let default_sr = pool
            .values()
            .next()
            .map(|p| p.default_sr.clone())
            .unwrap_or_default();
        let hosts = self.xapi.host_get_all_records().await?;
        let mut live_hosts = BTreeSet::new();
        for (host_ref, host) in &hosts {
            let metrics = self.xapi.host_metrics_get_record(&host.metrics).await?;
            if metrics.live {
                live_hosts.insert(host_ref.clone());
            }
        }
        let mut host_srs: BTreeMap<OpaqueRef, BTreeSet<OpaqueRef>> = BTreeMap::new();
        for pbd in self.xapi.pbd_get_all_records().await?.into_values() {
            if pbd.currently_attached {
                host_srs.entry(pbd.host).or_default().insert(pbd.sr);
            }
        }
        let srs = self.xapi.sr_get_all_records().await?;
        let networks = self.xapi.network_get_all_records().await?;
        let management_network = self
            .xapi
            .pif_get_all_records()
            .await?
            .into_values()
            .find(|p| p.management)
            .map(|p| p.network)
            .or_else(|| networks.keys().next().cloned())
            .unwrap_or_default();
        Ok(Topology {
            hosts,
            live_hosts,
            host_srs,
            srs,
            networks,
            default_sr,
            management_network,
        })
    }

    /// The network delegates attach to: the configured one, or the management network.
    pub fn delegate_network(&self, topo: &Topology) -> Result<OpaqueRef, EngineError> {
        match &self.config.network {
            None => Ok(topo.management_network.clone()),
            Some(name) => topo
                .networks
                .iter()
                .find(|(_, n)| &n.name_label == name)
                .map(|(r, _)| r.clone())
                .ok_or_else(|| EngineError::Config {
                    pool: self.config.name.clone(),
                    message: format!("no network named {name:?} in the pool"),
                }),
        }
    }

    /// Hosts as placement sees them now (free memory asked of XAPI).
    pub async fn host_views(
        &self,
        topo: &Topology,
        required_srs: &[OpaqueRef],
    ) -> Result<Vec<HostView>, CallError> {
        let mut views = Vec::new();
        for (host_ref, host) in &topo.hosts {
            let usable = host.enabled && topo.live_hosts.contains(host_ref);
            let sees = topo.host_sees(host_ref, required_srs);
            // Free memory is only worth a call for hosts that could take the delegate.
            let free_memory = if usable && sees {
                self.xapi.host_compute_free_memory(host_ref).await?
            } else {
                0
            };
            views.push(HostView {
                host: host_ref.clone(),
                name: host.name_label.clone(),
                usable,
                srs: topo.host_srs.get(host_ref).cloned().unwrap_or_default(),
                free_memory,
                booting: self.boot_gate.booting_on(host_ref),
            });
        }
        Ok(views)
    }

    /// Takes an idle delegate whose host sees `required_srs`, most recently idled first.
    pub(crate) fn take_idle(
        &self,
        topo: &Topology,
        required_srs: &[OpaqueRef],
    ) -> Option<Delegate> {
        let mut idle = self.idle.lock().expect("idle lock poisoned");
        let index = idle
            .iter()
            .rposition(|d| topo.host_sees(&d.delegate.host, required_srs))?;
        Some(idle.remove(index).delegate)
    }

    /// Keeps a ready delegate idle; it is torn down if still idle after the idle limit.
    pub(crate) fn put_idle(self: &Arc<Self>, delegate: Delegate, log: &VmLog) {
        let generation = self.idle_generation.fetch_add(1, Ordering::Relaxed);
        let limit = self.config.idle_limit();
        log.ok(format!(
            "{} kept idle for reuse (reaped after {})",
            delegate.name,
            crate::joblog::format_duration(limit)
        ));
        self.idle
            .lock()
            .expect("idle lock poisoned")
            .push(IdleDelegate {
                delegate,
                generation,
            });
        let pool = Arc::clone(self);
        let reaper_log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        let mut background = self
            .shared
            .background
            .lock()
            .expect("background lock poisoned");
        while background.try_join_next().is_some() {}
        background.spawn(async move {
            tokio::time::sleep(limit).await;
            let expired = {
                let mut idle = pool.idle.lock().expect("idle lock poisoned");
                idle.iter()
                    .position(|d| d.generation == generation)
                    .map(|i| idle.remove(i).delegate)
            };
            if let Some(delegate) = expired {
                reaper_log.progress(format!(
                    "Pool {}: {} idle for {}: reaping",
                    pool.name(),
                    delegate.name,
                    crate::joblog::format_duration(limit)
                ));
                crate::delegate::teardown(&pool, delegate, &reaper_log).await;
            }
        });
    }

    /// Tears down every idle delegate now (engine shutdown).
    pub(crate) async fn drain_idle(&self, log: &VmLog) {
        let drained: Vec<IdleDelegate> =
            std::mem::take(&mut *self.idle.lock().expect("idle lock poisoned"));
        for idle in drained {
            crate::delegate::teardown(self, idle.delegate, log).await;
        }
    }
}
