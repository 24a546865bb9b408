//! The engine: connects to pools, reclaims what earlier runs left behind, runs
//! backup jobs and diagnostics, and tears idle delegates down at shutdown.

use crate::accounting::{Accounting, Change};
use crate::agent::AgentClient;
use crate::backup::remove_snapshot;
use crate::config::{EngineConfig, JobSpec, PoolConfig};
use crate::delegate::destroy_delegate_vm;
use crate::diag::{self, DiagReport};
use crate::error::EngineError;
use crate::job::{self, JobReport};
use crate::joblog::JobLog;
use crate::pool::{PoolRuntime, Shared, VmLog};
use crate::tags;
use crate::xapi::{Credentials, Transport, XapiClient};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How to reach one pool.
pub struct PoolConnection {
    pub config: PoolConfig,
    pub transport: Arc<dyn Transport>,
    pub agent: Arc<AgentClient>,
    pub credentials: Credentials,
}

/// A running engine.
pub struct Engine {
    shared: Arc<Shared>,
    pools: BTreeMap<String, Arc<PoolRuntime>>,
}

impl Engine {
    /// Connects to every pool and reclaims leftovers of earlier runs (delegates
    /// and snapshots tagged with this engine's id that no job owns).
    pub async fn start(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
    ) -> Result<Engine, EngineError> {
        Self::open(config, connections, true).await
    }

    /// Connects to every pool and changes nothing (for `validate` and the
    /// operator's template commands).
    pub async fn connect(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
    ) -> Result<Engine, EngineError> {
        Self::open(config, connections, false).await
    }

    async fn open(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
        reclaim: bool,
    ) -> Result<Engine, EngineError> {
        let store = match &config.store_dir {
            Some(dir) => Some(Arc::new(
                crate::datastore::DataStore::open_or_init(dir)
                    .map_err(|e| EngineError::Store(e.to_string()))?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared::new(config, store));
        let engine_log = VmLog::new(Arc::clone(&shared.log), Arc::clone(&shared), None);
        engine_log.progress(format!("Engine {} starting", shared.config.engine_id));
        let mut pools = BTreeMap::new();
        for c in connections {
            let name = c.config.name.clone();
            let xapi = XapiClient::login(c.transport, c.credentials)
                .await
                .map_err(|e| EngineError::xapi(format!("pool {name}"), "login", e))?;
            let pool = Arc::new(PoolRuntime::new(
                Arc::clone(&shared),
                c.config,
                xapi,
                c.agent,
            )?);
            if reclaim {
                reclaim_leftovers(&pool, &engine_log).await?;
            }
            pools.insert(name, pool);
        }
        engine_log.ok(format!("Engine ready: {} pool(s)", pools.len()));
        Ok(Engine { shared, pools })
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Result<&Arc<PoolRuntime>, EngineError> {
        self.pools
            .get(name)
            .ok_or_else(|| EngineError::UnknownPool(name.to_string()))
    }

    /// The engine's data store, if it has one (to serve it to agents with
    /// [`crate::store_server::router`]).
    pub fn data_store(&self) -> Option<&Arc<crate::datastore::DataStore>> {
        self.shared.store.as_ref()
    }

    /// Every pool, by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<PoolRuntime>> {
        &self.pools
    }

    /// Runs a backup job to its end.
    pub async fn run_job(&self, spec: &JobSpec) -> JobReport {
        match self.pool(&spec.pool) {
            Ok(pool) => job::run(Arc::clone(pool), spec).await,
            Err(e) => job::unstartable(&self.shared, spec, e),
        }
    }

    /// Cancels a running job (`vm: None`) or one VM of it. The VMs stop at
    /// their next wait, clean up what they created and fail with `reason`;
    /// VMs already done keep their result.
    /// A refusal (no such job or VM running) is logged and returned.
    pub fn cancel(&self, job: &str, vm: Option<&str>, reason: &str) -> Result<(), EngineError> {
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        let result = self.signal_cancel(job, vm, reason, &log);
        if let Err(e) = &result {
            log.fail(format!("Cancel refused: {e}"));
        }
        result
    }

    fn signal_cancel(
        &self,
        job: &str,
        vm: Option<&str>,
        reason: &str,
        log: &VmLog,
    ) -> Result<(), EngineError> {
        let running = self
            .shared
            .running_jobs
            .lock()
            .expect("running jobs lock poisoned");
        let control = running
            .get(job)
            .ok_or_else(|| EngineError::JobControl(format!("no job {job:?} is running")))?;
        match vm {
            None => {
                control.cancel.cancel(reason);
                log.warn(format!("Job {job}: cancel requested ({reason})"));
            }
            Some(vm) => {
                let signal = control.vms.get(vm).ok_or_else(|| {
                    EngineError::JobControl(format!("job {job:?} has no VM {vm:?}"))
                })?;
                signal.cancel(reason);
                log.warn(format!("Job {job}: cancel of VM {vm} requested ({reason})"));
            }
        }
        Ok(())
    }

    /// Names of the jobs running now.
    pub fn running_jobs(&self) -> Vec<String> {
        self.shared
            .running_jobs
            .lock()
            .expect("running jobs lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Runs the diagnostic job on a pool.
    pub async fn run_diag(&self, pool: &str) -> Result<DiagReport, EngineError> {
        Ok(diag::run(Arc::clone(self.pool(pool)?)).await)
    }

    /// Operator action: deletes the pool's template (refused while delegates
    /// exist). True if there was one to delete.
    pub async fn template_delete(&self, pool: &str) -> Result<bool, EngineError> {
        let pool = self.pool(pool)?;
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        let result = async {
            let topo = pool.topology().await?;
            crate::template::delete(pool, &topo).await
        }
        .await;
        match &result {
            Ok(true) => log.ok(format!("Pool {}: delegate template deleted", pool.name())),
            Ok(false) => log.ok(format!(
                "Pool {}: no delegate template to delete",
                pool.name()
            )),
            Err(e) => log.fail(format!(
                "Pool {}: template delete refused: {e}",
                pool.name()
            )),
        }
        result
    }

    /// Operator action: finds the pool's template, or deploys one.
    pub async fn template_deploy(
        &self,
        pool: &str,
    ) -> Result<
        (
            crate::template::TemplateInfo,
            crate::template::TemplateOutcome,
        ),
        EngineError,
    > {
        let pool = self.pool(pool)?;
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        let topo = pool.topology().await?;
        crate::template::ensure(pool, &topo, &log).await
    }

    /// Operator action: replaces the pool's template with a freshly imported one
    /// (refused while delegates exist).
    pub async fn template_redeploy(
        &self,
        pool: &str,
    ) -> Result<crate::template::TemplateInfo, EngineError> {
        let pool = self.pool(pool)?;
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        let result = async {
            let topo = pool.topology().await?;
            crate::template::redeploy(pool, &topo).await
        }
        .await;
        match &result {
            Ok(info) => log.ok(format!(
                "Pool {}: delegate template redeployed on SR {:?}",
                pool.name(),
                info.sr_name
            )),
            Err(e) => log.fail(format!(
                "Pool {}: template redeploy refused: {e}",
                pool.name()
            )),
        }
        result
    }

    /// Read-only check of a pool: what is there and what would stop a job.
    pub async fn validate(
        &self,
        pool: &str,
    ) -> Result<crate::validate::ValidationReport, EngineError> {
        Ok(crate::validate::validate(self.pool(pool)?).await)
    }

    /// Tears down idle delegates (persistent mode) and logs out.
    pub async fn shutdown(&self) {
        let engine_log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        for pool in self.pools.values() {
            pool.drain_idle(&engine_log).await;
            if let Err(e) = pool.xapi.logout().await {
                tracing::debug!(pool = pool.name(), error = %e, "logout failed");
            }
        }
        engine_log.ok("Engine stopped");
    }

    /// Delegate accounting so far.
    pub fn accounting(&self) -> Accounting {
        self.shared
            .accounting
            .lock()
            .expect("accounting lock poisoned")
            .clone()
    }

    /// The engine's own log (start-up, reclaim, reaping, shutdown).
    pub fn log(&self) -> JobLog {
        self.shared
            .log
            .lock()
            .expect("engine log lock poisoned")
            .clone()
    }

    /// XAPI calls made so far, all pools.
    pub fn xapi_calls(&self) -> u64 {
        self.pools.values().map(|p| p.xapi.call_count()).sum()
    }
}

/// Destroys delegates and snapshots tagged with our engine id: at start no job owns any.
async fn reclaim_leftovers(pool: &PoolRuntime, log: &VmLog) -> Result<(), EngineError> {
    let engine_id = pool.engine_config().engine_id.clone();
    let vms = pool
        .xapi
        .vm_get_all_records()
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "listing VMs", e))?;
    let (snapshots, delegates): (Vec<_>, Vec<_>) = vms
        .into_iter()
        .filter(|(_, vm)| tags::is_our_disposable_vm(vm, &engine_id))
        .partition(|(_, vm)| vm.is_a_snapshot);
    // Delegates first: they may still have snapshot disks plugged in.
    for (vm_ref, vm) in delegates {
        let job = vm
            .other_config
            .get(tags::JOB)
            .cloned()
            .unwrap_or_else(|| "?".into());
        match destroy_delegate_vm(pool, &vm_ref, &[]).await {
            Ok(()) => {
                pool.account(Change::Reclaimed);
                log.warn(format!(
                    "Pool {}: reclaimed leftover delegate {:?} of job {job:?}",
                    pool.name(),
                    vm.name_label
                ));
            }
            Err(e) => log.fail(format!(
                "Pool {}: leftover delegate {:?} could not be reclaimed: {e}",
                pool.name(),
                vm.name_label
            )),
        }
    }
    for (snap_ref, snap) in snapshots {
        match remove_snapshot(pool, &snap_ref).await {
            Ok(()) => log.warn(format!(
                "Pool {}: removed leftover snapshot {:?}",
                pool.name(),
                snap.name_label
            )),
            Err(e) => log.fail(format!(
                "Pool {}: leftover snapshot {:?} could not be removed: {e}",
                pool.name(),
                snap.name_label
            )),
        }
    }
    Ok(())
}
