//! The engine: connects to pools, reclaims what earlier runs left behind, runs
//! backup jobs and diagnostics, and tears idle delegates down at shutdown.

use crate::accounting::Accounting;
use crate::agent::AgentClient;
use crate::config::{EngineConfig, JobSpec, PoolConfig};
use crate::diag::{self, DiagReport};
use crate::error::EngineError;
use crate::job::{self, JobReport};
use crate::joblog::JobLog;
use crate::journal::{InterruptedRun, Journal};
use crate::pool::{PoolRuntime, Shared, VmLog};
use crate::xapi::{Credentials, Transport, XapiClient};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How to reach one pool.
pub struct PoolConnection {
    pub config: PoolConfig,
    pub transport: Arc<dyn Transport>,
    pub agent: Arc<AgentClient>,
    pub credentials: Credentials,
    /// Addresses of the pool's other hosts, asked where the master is when
    /// it cannot be reached before any host record was read.
    pub other_hosts: Vec<String>,
}

/// A running engine.
pub struct Engine {
    shared: Arc<Shared>,
    pools: BTreeMap<String, Arc<PoolRuntime>>,
    /// Runs an earlier engine left unfinished, found at start (to resume or abandon).
    interrupted: std::sync::Mutex<Vec<InterruptedRun>>,
}

/// How an engine starts besides its configuration.
#[derive(Default)]
pub struct StartOptions {
    /// The job journal (default: `EngineConfig::journal_file`, else memory).
    pub journal: Option<Arc<Journal>>,
    /// Engine time zero (default: now, less the time the journal already
    /// covers, so that engine time goes on across restarts).
    pub epoch: Option<tokio::time::Instant>,
    /// The wall-clock time now, against a real pool: backup versions are
    /// stamped with dates. Without it (simulation) they carry engine time.
    pub wall_clock_now: Option<std::time::SystemTime>,
}

impl Engine {
    /// Connects to every pool and reclaims leftovers of earlier runs (delegates
    /// and snapshots tagged with this engine's id that no job owns).
    pub async fn start(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
    ) -> Result<Engine, EngineError> {
        Self::open(config, connections, true, StartOptions::default()).await
    }

    /// [`Engine::start`] with a given journal and epoch. Runs the journal
    /// shows unfinished (the engine before this one died) are closed as
    /// interrupted, the snapshots they were taking removed, and kept for
    /// [`Engine::resume`].
    pub async fn start_with(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
        options: StartOptions,
    ) -> Result<Engine, EngineError> {
        Self::open(config, connections, true, options).await
    }

    /// Connects to every pool and changes nothing (for `validate` and the
    /// operator's template commands).
    pub async fn connect(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
    ) -> Result<Engine, EngineError> {
        Self::open(config, connections, false, StartOptions::default()).await
    }

    async fn open(
        config: EngineConfig,
        connections: Vec<PoolConnection>,
        reclaim: bool,
        options: StartOptions,
    ) -> Result<Engine, EngineError> {
        let journal = match (options.journal, &config.journal_file) {
            (Some(journal), _) => journal,
            (None, Some(path)) => {
                Journal::open(path).map_err(|e| EngineError::Journal(e.to_string()))?
            }
            (None, None) => Journal::in_memory(),
        };
        let epoch = options.epoch.unwrap_or_else(|| {
            let covered = Duration::from_millis(journal.last_line_ms().map_or(0, |ms| ms + 1));
            let now = tokio::time::Instant::now();
            now.checked_sub(covered).unwrap_or(now)
        });
        let store = match &config.store_dir {
            Some(dir) => Some(Arc::new(
                crate::datastore::DataStore::open_or_init(
                    dir,
                    config.store_capacity_bytes,
                    config.store_keep_free_bytes,
                )
                .map_err(|e| EngineError::Store(e.to_string()))?,
            )),
            None => None,
        };
        let mut shared = Shared::with(config, store, journal, epoch);
        shared.wall_at_epoch = options
            .wall_clock_now
            .and_then(|wall| wall.checked_sub(shared.now()));
        let shared = Arc::new(shared);
        let engine_log = VmLog::new(Arc::clone(&shared.log), Arc::clone(&shared), None);
        engine_log.progress(format!("Engine {} starting", shared.config.engine_id));
        let mut pools = BTreeMap::new();
        for c in connections {
            let name = c.config.name.clone();
            let limit = shared.config.xapi_unreachable_limit();
            let configured = c.transport.address();
            let transport = Arc::clone(&c.transport);
            let xapi = XapiClient::login_knowing(c.transport, c.credentials, limit, c.other_hosts)
                .await
                .map_err(|e| EngineError::xapi(format!("pool {name}"), "login", e))?
                .with_reachability_hook(reachability_log(&shared, &name));
            if let (Some(configured), Some(now)) = (configured, transport.address())
                && configured != now
            {
                engine_log.warn(format!(
                    "Pool {name}: the master is at {now}, not at {configured} as configured \
                     (found at login; update the pool's address)"
                ));
            }
            let pool = PoolRuntime::new(Arc::clone(&shared), c.config, xapi, c.agent)?;
            if reclaim {
                crate::reclaim::reclaim_leftovers(&pool, &engine_log).await?;
            }
            pools.insert(name, pool);
        }
        let mut interrupted = Vec::new();
        if reclaim {
            for run in shared.journal.unfinished_runs() {
                match pools.get(&run.spec.pool) {
                    Some(pool) => {
                        crate::reclaim::close_interrupted(pool, &run, &engine_log).await;
                        interrupted.push(run);
                    }
                    None => engine_log.warn(format!(
                        "Job {} (run {}) on pool {} is unfinished, but this engine is not connected to that pool; left for one that is",
                        run.spec.name, run.run, run.spec.pool
                    )),
                }
            }
        }
        engine_log.ok(format!("Engine ready: {} pool(s)", pools.len()));
        Ok(Engine {
            shared,
            pools,
            interrupted: std::sync::Mutex::new(interrupted),
        })
    }

    /// Hands out, once, the runs the engine before this one left unfinished
    /// (their leftovers were removed at start). Each should be given to
    /// [`Engine::resume`] or [`Engine::abandon`]; until then the journal keeps
    /// it open, so a crash in between loses nothing.
    pub fn take_interrupted_runs(&self) -> Vec<InterruptedRun> {
        std::mem::take(&mut *self.interrupted.lock().expect("interrupted lock poisoned"))
    }

    /// Closes an interrupted run without resuming it (its VMs wait for the
    /// job's next run).
    pub fn abandon(&self, run: &InterruptedRun) -> Result<(), EngineError> {
        self.shared
            .journal
            .append(crate::journal::JournalRecord::RunInterrupted {
                job: run.spec.name.clone(),
                run: run.run,
            })
            .map_err(|e| EngineError::Journal(e.to_string()))?;
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        log.warn(format!(
            "Job {} (run {}): closed without resuming it; {} VM(s) were not done",
            run.spec.name,
            run.run,
            run.remaining().len()
        ));
        Ok(())
    }

    /// Goes on with a run an engine restart interrupted: its finished VMs
    /// keep their results, the others are done now, and the report covers
    /// the whole job.
    pub async fn resume(&self, run: &InterruptedRun) -> JobReport {
        let report = match self.pool(&run.spec.pool) {
            Ok(pool) => job::run_resuming(Arc::clone(pool), &run.spec, Some(run)).await,
            Err(e) => job::unstartable(&self.shared, &run.spec, e),
        };
        self.after_job(&run.spec);
        report
    }

    /// The engine dies here (a simulated crash): every task it runs beside
    /// its jobs is aborted, nothing is cleaned up. Jobs stop when their
    /// futures are dropped. What it leaves is the next engine's to reclaim.
    pub fn halt(&self) {
        self.shared
            .background
            .lock()
            .expect("background lock poisoned")
            .abort_all();
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

    /// Runs a backup job to its end (then applies retention, see
    /// [`EngineConfig::keep_versions`](crate::config::EngineConfig)).
    pub async fn run_job(&self, spec: &JobSpec) -> JobReport {
        let report = match self.pool(&spec.pool) {
            Ok(pool) => job::run(Arc::clone(pool), spec).await,
            Err(e) => job::unstartable(&self.shared, spec, e),
        };
        self.after_job(spec);
        report
    }

    /// Retention after a backup job, when no job uses the store any more
    /// (the last job to end applies it): gc must not sweep chunks a running
    /// backup uploaded and has not committed yet, nor packs a restore reads.
    fn after_job(&self, spec: &JobSpec) {
        let (Some(keep), Some(store)) = (self.shared.config.keep_versions, &self.shared.store)
        else {
            return;
        };
        if spec.restore.is_some() || spec.replicate.is_some() {
            return;
        }
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        match store.retain(keep, || self.running_jobs().is_empty()) {
            Ok(None) => log.ok(format!(
                "Retention after job {}: left to the last running job",
                spec.name
            )),
            Ok(Some(r)) => log.ok(format!(
                "Retention after job {} (newest {keep} per VM): removed {} version(s){}; deleted {} pack(s), rewrote {}, freed {}",
                spec.name,
                r.versions_removed.len(),
                match r.versions_removed.is_empty() {
                    true => String::new(),
                    false => format!(" ({})", r.versions_removed.join(", ")),
                },
                r.packs_deleted,
                r.packs_rewritten,
                crate::joblog::format_bytes(r.bytes_freed)
            )),
            Err(e) => log.fail(format!(
                "Retention after job {} failed (nothing removed that a version uses): {e}",
                spec.name
            )),
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
        control.cancel(vm, reason)?;
        match vm {
            None => log.warn(format!("Job {job}: cancel requested ({reason})")),
            Some(vm) => log.warn(format!("Job {job}: cancel of VM {vm} requested ({reason})")),
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

    /// Tears down idle delegates (persistent mode), stops the background
    /// retries (saying what they had left) and logs out.
    pub async fn shutdown(&self) {
        let engine_log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        for pool in self.pools.values() {
            pool.drain_idle(&engine_log).await;
        }
        let pending = self
            .shared
            .leftovers_pending
            .load(std::sync::atomic::Ordering::Relaxed);
        if pending > 0 {
            engine_log.warn(format!(
                "{pending} leftover(s) could not be removed yet; the next start of engine {} removes them",
                self.shared.config.engine_id
            ));
        }
        self.halt();
        for pool in self.pools.values() {
            if let Err(e) = pool.xapi.logout().await {
                tracing::debug!(pool = pool.name(), error = %e, "logout failed");
            }
        }
        engine_log.ok("Engine stopped");
    }

    /// Operator action: the data store may now take up to `capacity_bytes`
    /// (None: up to its disk), e.g. after its volume grew.
    pub fn set_store_capacity(&self, capacity_bytes: Option<u64>) {
        if let Some(store) = &self.shared.store {
            store.set_capacity(capacity_bytes);
            let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
            log.ok(match capacity_bytes {
                Some(bytes) => format!(
                    "Data store capacity set to {}",
                    crate::joblog::format_bytes(bytes)
                ),
                None => "Data store capacity limit lifted".to_string(),
            });
        }
    }

    /// Operator action (or a scheduled check): verifies the data store, logs
    /// every problem with the versions it hurts, and sets corrupt chunks aside
    /// so the next backup that holds their bytes stores them again.
    pub fn verify_store(&self) -> Result<crate::store_check::StoreCheck, EngineError> {
        let store = self
            .shared
            .store
            .as_ref()
            .ok_or_else(|| EngineError::Store("this engine has no data store".into()))?;
        let log = VmLog::new(Arc::clone(&self.shared.log), Arc::clone(&self.shared), None);
        crate::store_check::verify_and_set_aside(store, &log)
    }

    /// Leftovers the background retries still try to remove.
    pub fn leftovers_pending(&self) -> usize {
        self.shared
            .leftovers_pending
            .load(std::sync::atomic::Ordering::Relaxed)
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

/// Writes a pool's reachability changes into the engine log.
fn reachability_log(shared: &Arc<Shared>, pool: &str) -> crate::xapi::ReachabilityHook {
    let log = VmLog::new(Arc::clone(&shared.log), Arc::clone(shared), None);
    let pool = pool.to_string();
    Arc::new(move |change| match change {
        crate::xapi::Reachability::Lost { why, limit } => log.warn(format!(
            "Pool {pool}: XAPI unreachable ({why}); each call waits up to {} for it",
            crate::joblog::format_duration(limit)
        )),
        crate::xapi::Reachability::Back { after } => log.ok(format!(
            "Pool {pool}: XAPI reachable again after {}",
            crate::joblog::format_duration(after)
        )),
        crate::xapi::Reachability::MasterMoved { address } => log.warn(format!(
            "Pool {pool}: the pool master moved to {address}; following it"
        )),
    })
}
