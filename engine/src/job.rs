//! A backup job: a VM list processed at a set concurrency, one delegate per VM
//! in progress. Jobs running at once share the pool and add up.

use crate::accounting::Change;
use crate::backup::{ProtectedVm, back_up_vm};
use crate::cancel::Cancel;
use crate::config::{JobSpec, RestoreVia};
use crate::delegate::{self, Delegate};
use crate::error::EngineError;
use crate::joblog::{JobLog, JobStatus, LineStatus, format_bytes, format_duration};
use crate::journal::{InterruptedRun, JournalRecord, RunJournal};
use crate::pool::Shared;
use crate::pool::{PoolRuntime, Topology, VmLog};
use crate::template::{self, TemplateInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use xapi_proto::OpaqueRef;

/// How one VM of a job went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Ok,
    Warn,
    Failed,
}

/// One VM's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmOutcome {
    pub vm: String,
    pub status: VmStatus,
    /// Why it failed (always set when it failed).
    pub reason: Option<String>,
    /// The delegate that did the work.
    pub delegate: Option<String>,
    /// Bytes read from the VM's disks (written, for restore and replication).
    pub bytes_read: u64,
    /// Encoded bytes of new chunks sent to the data store.
    pub bytes_sent: u64,
    /// Bytes the data store wrote for them.
    pub bytes_stored: u64,
    /// Delegates lost mid-work and replaced (each restart took a new snapshot).
    pub restarts: u32,
    /// It failed because the job or the VM was cancelled (or timed out).
    #[serde(default)]
    pub cancelled: bool,
}

impl VmOutcome {
    /// A VM's turn that needed no delegate and moved no bytes.
    fn without_work(vm: &str, status: VmStatus) -> Self {
        Self {
            vm: vm.to_string(),
            status,
            reason: None,
            delegate: None,
            bytes_read: 0,
            bytes_sent: 0,
            bytes_stored: 0,
            restarts: 0,
            cancelled: false,
        }
    }
}

/// What a job did.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub name: String,
    pub pool: String,
    pub concurrency: usize,
    pub status: JobStatus,
    pub vms: Vec<VmOutcome>,
    pub log: JobLog,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// Everything one VM's task needs.
struct JobContext {
    pool: Arc<PoolRuntime>,
    /// What delegates are made from and attached to (None: the job needs none).
    delegates: Option<DelegateSetup>,
    topo: Topology,
    job: String,
    /// Set for restore and replication jobs.
    write: Option<WriteJob>,
}

/// What a restore or replication writes for the VM the job names `wanted`:
/// its version `version` (else its newest), and the VM's id in the data store.
fn version_to_write(
    ctx: &JobContext,
    wanted: &str,
    version: Option<u64>,
) -> Result<(String, ads::Manifest), String> {
    let Some(store) = ctx.pool.store() else {
        return Err("this engine has no data store".to_string());
    };
    let from_pool = match &ctx.write {
        Some(WriteJob::Restore { from_pool, .. } | WriteJob::Replicate { from_pool, .. }) => {
            from_pool.as_deref()
        }
        None => None,
    };
    let id = store
        .resolve(wanted, from_pool)
        .map_err(|e| match (from_pool, &e) {
            (Some(pool), _) => format!("{e}, backed up from pool {pool}"),
            (None, ads::AdsError::AmbiguousVm { .. }) => {
                format!("{e}, or name the pool it was backed up from (source_pool)")
            }
            (None, _) => e.to_string(),
        })?;
    let manifest = store.manifest(&id, version).map_err(|e| e.to_string())?;
    Ok((id, manifest))
}

/// The template delegates are cloned from and the network they get.
struct DelegateSetup {
    template: TemplateInfo,
    network: OpaqueRef,
}

/// What a restore or replication job writes, and onto which SR.
#[derive(Clone)]
enum WriteJob {
    Restore {
        version: Option<u64>,
        sr: OpaqueRef,
        via: RestoreVia,
        /// Only VMs backed up from this pool (the job's `source_pool`).
        from_pool: Option<String>,
    },
    Replicate {
        sr: OpaqueRef,
        networks: crate::replica_vm::ReplicaNetworks,
        from_pool: Option<String>,
    },
}

/// Runs a backup job on its pool.
pub async fn run(pool: Arc<PoolRuntime>, spec: &JobSpec) -> JobReport {
    run_resuming(pool, spec, None).await
}

/// Runs a job; with `earlier`, the run an engine restart interrupted goes on:
/// its log and its finished VMs are carried over and only the rest is done.
pub async fn run_resuming(
    pool: Arc<PoolRuntime>,
    spec: &JobSpec,
    earlier: Option<&InterruptedRun>,
) -> JobReport {
    let shared = Arc::clone(&pool.shared);
    let cancel = Cancel::new();
    let vm_cancels: BTreeMap<String, Cancel> = spec
        .vms
        .iter()
        .map(|vm| (vm.clone(), cancel.child()))
        .collect();
    let journal = RunJournal {
        journal: Arc::clone(&shared.journal),
        job: spec.name.clone(),
        run: shared.journal.next_run(&spec.name),
    };
    // Registered for as long as this future lives, so a job that ended (or
    // whose engine died) never holds its name.
    let control = JobControl {
        cancel: cancel.clone(),
        vms: vm_cancels.clone(),
        journal: journal.clone(),
    };
    let _running = match RunningJob::register(&shared, &spec.name, control) {
        Ok(running) => running,
        Err(e) => return unstartable(&shared, spec, e),
    };
    journal.record(|job, run| JournalRecord::RunStarted {
        job,
        run,
        spec: spec.clone(),
        resumes: earlier.map(|e| e.run),
    });
    // A resumed run carries the interrupted run's log and results, so that it
    // is whole on its own (and can itself be resumed).
    let committed = earlier
        .map(|e| committed_before_restart(&pool, spec, e))
        .unwrap_or_default();
    let mut carried = earlier.map(|e| e.done.clone()).unwrap_or_default();
    carried.extend(committed.iter().map(|(outcome, _)| outcome.clone()));
    let mut carried_log = JobLog::default();
    if let Some(earlier) = earlier {
        for line in &earlier.log.lines {
            journal.record(|job, run| JournalRecord::Line {
                job,
                run,
                line: line.clone(),
            });
        }
        for outcome in &carried {
            journal.record(|job, run| JournalRecord::VmFinished {
                job,
                run,
                outcome: outcome.clone(),
            });
        }
        // Snapshots the cut-short turns took count against their VMs still,
        // should this run be interrupted too.
        for (vm, snapshot_name) in &earlier.snapshots {
            journal.record(|job, run| JournalRecord::Snapshotting {
                job,
                run,
                vm: vm.clone(),
                snapshot_name: snapshot_name.clone(),
            });
        }
        carried_log = earlier.log.clone();
    }
    let started = carried_log
        .lines
        .first()
        .map(|l| Duration::from_millis(l.at_ms))
        .unwrap_or_else(|| shared.now());
    let log = Arc::new(Mutex::new(carried_log));
    let job_log =
        VmLog::new(Arc::clone(&log), Arc::clone(&shared), None).with_journal(Some(journal.clone()));
    let concurrency = spec.concurrency.max(1);
    pool.account(Change::JobStarted { concurrency });
    let to_do: Vec<String> = match earlier {
        None => {
            job_log.progress(format!(
                "Job {} started: {} VMs on pool {} at concurrency {concurrency}",
                spec.name,
                spec.vms.len(),
                pool.name()
            ));
            spec.vms.clone()
        }
        Some(earlier) => {
            let left: Vec<String> = earlier
                .remaining()
                .into_iter()
                .filter(|vm| !committed.iter().any(|(o, _)| &o.vm == vm))
                .collect();
            job_log.warn(format!(
                "Job {} resumed after an engine restart: run {} was interrupted with {} of {} VMs done; {} to do",
                spec.name,
                earlier.run,
                earlier.done.len(),
                spec.vms.len(),
                left.len()
            ));
            for (outcome, seq) in &committed {
                job_log.ok(format!(
                    "{}: version {seq} was committed before the engine stopped; not backed up again",
                    outcome.vm
                ));
            }
            // What was cancelled before the restart stays cancelled.
            for (vm, reason) in &earlier.cancelled_vms {
                if let Some(signal) = vm_cancels.get(vm) {
                    journal.record(|job, run| JournalRecord::Cancelled {
                        job,
                        run,
                        vm: Some(vm.clone()),
                        reason: reason.clone(),
                    });
                    signal.cancel(reason.clone());
                }
            }
            if let Some(reason) = &earlier.cancelled {
                journal.record(|job, run| JournalRecord::Cancelled {
                    job,
                    run,
                    vm: None,
                    reason: reason.clone(),
                });
                cancel.cancel(reason.clone());
            }
            left
        }
    };
    // A VM whose turn an engine restart cut short starts over; the snapshots
    // those turns took count as restarts.
    let mut interrupted_vms = earlier.map(|e| e.in_progress.clone()).unwrap_or_default();
    for (outcome, _) in &committed {
        interrupted_vms.remove(&outcome.vm);
    }
    let mut earlier_snapshots: BTreeMap<String, u32> = BTreeMap::new();
    for (vm, _) in earlier.map(|e| e.snapshots.as_slice()).unwrap_or_default() {
        *earlier_snapshots.entry(vm.clone()).or_default() += 1;
    }
    // A turn cut short is a restart even if it had taken no snapshot yet.
    for vm in &interrupted_vms {
        let count = earlier_snapshots.entry(vm.clone()).or_default();
        *count = (*count).max(1);
    }
    let work = async {
        let outcomes: Vec<VmOutcome> = match prepare(&pool, spec, &job_log).await {
            Ok(ctx) => {
                let batch = Batch {
                    vms: &to_do,
                    log: &log,
                    vm_cancels: &vm_cancels,
                    journal: &journal,
                    started_over: &interrupted_vms,
                    earlier_snapshots: &earlier_snapshots,
                    concurrency,
                };
                process_all(Arc::new(ctx), spec, batch).await
            }
            Err(e) => {
                job_log.fail(format!("Job cannot start: {e}"));
                let reason = format!("job could not start: {e}");
                to_do
                    .iter()
                    .map(|vm| failed(vm, reason.clone(), None))
                    .collect()
            }
        };
        if earlier.is_none() {
            return outcomes;
        }
        let mut outcomes: BTreeMap<String, VmOutcome> =
            outcomes.into_iter().map(|o| (o.vm.clone(), o)).collect();
        outcomes.extend(carried.iter().map(|o| (o.vm.clone(), o.clone())));
        // In the job's order, each VM once.
        let mut seen = std::collections::BTreeSet::new();
        spec.vms
            .iter()
            .filter(|vm| seen.insert(vm.as_str()))
            .filter_map(|vm| outcomes.remove(vm))
            .collect::<Vec<_>>()
    };
    let outcomes = match spec.time_limit_s {
        None => work.await,
        Some(limit_s) => {
            let limit = Duration::from_secs(limit_s);
            // The limit counts from the job's start, across engine restarts.
            let left = limit.saturating_sub(shared.now().saturating_sub(started));
            tokio::pin!(work);
            tokio::select! {
                biased;
                outcomes = &mut work => outcomes,
                _ = tokio::time::sleep(left) => {
                    job_log.fail(format!(
                        "Job time limit of {} reached: cancelling what is not done",
                        format_duration(limit)
                    ));
                    let reason = format!("job time limit of {} reached", format_duration(limit));
                    journal.record(|job, run| JournalRecord::Cancelled {
                        job,
                        run,
                        vm: None,
                        reason: reason.clone(),
                    });
                    cancel.cancel(reason);
                    // The VMs stop at their next wait and clean up after themselves.
                    work.await
                }
            }
        }
    };
    pool.account(Change::JobFinished { concurrency });
    let count = |s| {
        outcomes
            .iter()
            .filter(|o: &&VmOutcome| o.status == s)
            .count()
    };
    let (ok, warned, failed_count) = (
        count(VmStatus::Ok),
        count(VmStatus::Warn),
        count(VmStatus::Failed),
    );
    let status = if cancel.is_cancelled() && outcomes.iter().any(|o| o.cancelled) {
        JobStatus::Cancelled
    } else {
        JobStatus::from_counts(ok, warned, failed_count)
    };
    let total = |f: fn(&VmOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let bytes = total(|o| o.bytes_read);
    let moved = if spec.restore.is_some() || spec.replicate.is_some() {
        format!("{} written", format_bytes(bytes))
    } else if pool.store().is_some() {
        format!(
            "{} read, {} sent, {} stored",
            format_bytes(bytes),
            format_bytes(total(|o| o.bytes_sent)),
            format_bytes(total(|o| o.bytes_stored))
        )
    } else {
        format!("{} read", format_bytes(bytes))
    };
    let line_status = match status {
        JobStatus::Success => LineStatus::Ok,
        JobStatus::SuccessWithWarnings | JobStatus::Partial => LineStatus::Warn,
        JobStatus::Failed | JobStatus::Cancelled => LineStatus::Fail,
    };
    job_log.line(
        line_status,
        format!(
            "Job {} finished: {status} ({ok} ok, {warned} with warnings, {failed_count} failed; {moved} in {})",
            spec.name,
            format_duration(shared.now() - started)
        ),
    );
    journal.record(|job, run| JournalRecord::RunFinished { job, run, status });
    let finished = shared.now();
    let log = log.lock().expect("job log lock poisoned").clone();
    JobReport {
        name: spec.name.clone(),
        pool: pool.name().to_string(),
        concurrency,
        status,
        vms: outcomes,
        log,
        started_ms: started.as_millis() as u64,
        finished_ms: finished.as_millis() as u64,
    }
}

/// VMs of an interrupted backup run whose version was committed (its
/// manifest names a snapshot this run announced) but whose turn the restart
/// cut short before the journal recorded it: done, with the version's number.
fn committed_before_restart(
    pool: &PoolRuntime,
    spec: &JobSpec,
    earlier: &InterruptedRun,
) -> Vec<(VmOutcome, u64)> {
    let Some(store) = pool.store() else {
        return Vec::new();
    };
    if spec.restore.is_some() || spec.replicate.is_some() {
        return Vec::new();
    }
    // Read once: the store is the same for every VM of the run.
    let committed = store.newest_versions_by_snapshot();
    let mut done = Vec::new();
    for vm in &earlier.in_progress {
        let announced: Vec<&String> = (earlier.snapshots.iter())
            .filter(|(v, _)| v == vm)
            .map(|(_, name)| name)
            .collect();
        if let Some(seq) = announced.iter().find_map(|name| committed.get(*name)) {
            // Turns it started over before the committed one still count.
            let outcome = VmOutcome {
                restarts: announced.len().saturating_sub(1) as u32,
                ..VmOutcome::without_work(vm, VmStatus::Ok)
            };
            done.push((outcome, *seq));
        }
    }
    done
}

async fn prepare(
    pool: &Arc<PoolRuntime>,
    spec: &JobSpec,
    log: &VmLog,
) -> Result<JobContext, EngineError> {
    let topo = pool.topology().await?;
    // An upload restore needs no delegate: a broken template does not stop it.
    let uploads = spec
        .restore
        .as_ref()
        .is_some_and(|r| r.via == RestoreVia::Import);
    let delegates = match uploads {
        true => None,
        false => Some(DelegateSetup {
            network: pool.delegate_network(&topo)?,
            template: template::ensure(pool, &topo, log).await?.0,
        }),
    };
    // An object of the pool by name, or a clear error naming what is missing.
    let named = |found: Option<&OpaqueRef>, what: &str, name: &str| {
        found.cloned().ok_or_else(|| EngineError::Config {
            pool: pool.name().to_string(),
            message: format!("no {what} named {name:?}"),
        })
    };
    let sr_named = |name: &Option<String>| match name {
        None => Ok(topo.default_sr.clone()),
        Some(name) => {
            let found = topo.srs.iter().find(|(_, rec)| &rec.name_label == name);
            named(found.map(|(sr, _)| sr), "SR", name)
        }
    };
    let write = match (&spec.restore, &spec.replicate) {
        (Some(r), _) => Some(WriteJob::Restore {
            version: r.version,
            sr: sr_named(&r.sr)?,
            via: r.via,
            from_pool: r.source_pool.clone(),
        }),
        (None, Some(r)) => {
            let mut networks = crate::replica_vm::ReplicaNetworks::new(&topo.networks);
            if let Some(name) = &r.network {
                networks.fallback = Some(named(networks.by_name.get(name), "network", name)?);
            }
            Some(WriteJob::Replicate {
                sr: sr_named(&r.sr)?,
                networks,
                from_pool: r.source_pool.clone(),
            })
        }
        (None, None) => None,
    };
    Ok(JobContext {
        pool: Arc::clone(pool),
        delegates,
        topo,
        job: spec.name.clone(),
        write,
    })
}

/// The VMs one run processes, and what their tasks share.
struct Batch<'a> {
    vms: &'a [String],
    log: &'a Arc<Mutex<JobLog>>,
    vm_cancels: &'a BTreeMap<String, Cancel>,
    journal: &'a RunJournal,
    /// VMs whose earlier turn an engine restart cut short.
    started_over: &'a std::collections::BTreeSet<String>,
    /// Restarts those cut-short turns count for, per VM: one per snapshot
    /// they announced, at least one.
    earlier_snapshots: &'a BTreeMap<String, u32>,
    concurrency: usize,
}

async fn process_all(ctx: Arc<JobContext>, spec: &JobSpec, batch: Batch<'_>) -> Vec<VmOutcome> {
    let slots = Arc::new(Semaphore::new(batch.concurrency));
    let total = batch.vms.len();
    // A JoinSet: dropping the job (its engine died) aborts every VM's task.
    let mut tasks = JoinSet::new();
    for (i, vm_name) in batch.vms.iter().enumerate() {
        let ctx = Arc::clone(&ctx);
        let slots = Arc::clone(&slots);
        let journal = batch.journal.clone();
        let started_over = batch.started_over.contains(vm_name);
        let earlier_snapshots = batch.earlier_snapshots.get(vm_name).copied().unwrap_or(0);
        let vm_log = VmLog::new(
            Arc::clone(batch.log),
            Arc::clone(&ctx.pool.shared),
            Some(vm_name.clone()),
        )
        .with_cancel(batch.vm_cancels[vm_name].clone())
        .with_journal(Some(journal.clone()));
        let vm_name = vm_name.clone();
        tasks.spawn(async move {
            // The slot is held from provisioning through teardown, so a job never
            // has more delegates than its concurrency.
            let mut outcome = match vm_log.cancel().wait(slots.acquire_owned()).await {
                Ok(slot) => {
                    let _slot = slot.expect("job semaphore never closes");
                    journal.record(|job, run| JournalRecord::VmStarted {
                        job,
                        run,
                        vm: vm_name.clone(),
                    });
                    vm_log.progress(format!("Processing VM {}/{total}", i + 1));
                    if started_over {
                        vm_log.warn(
                            "Starting over: an engine restart cut its earlier turn short \
                             (what that turn left was removed at restart)",
                        );
                    }
                    // A cancel also stops calls waiting out an unreachable
                    // pool (what they could not clean up is retried later)
                    // and cancels the tasks of clones, snapshots and starts.
                    let give_up = vm_log.cancel().token();
                    crate::xapi::giving_up_on(give_up, process_vm(&ctx, &vm_name, &vm_log)).await
                }
                Err(e) => {
                    vm_log.fail(format!("VM not processed: {e}"));
                    failed_by(&vm_name, &e, None)
                }
            };
            outcome.restarts += earlier_snapshots;
            journal.record(|job, run| JournalRecord::VmFinished {
                job,
                run,
                outcome: outcome.clone(),
            });
            (i, outcome)
        });
    }
    let mut outcomes: Vec<Option<VmOutcome>> = vec![None; total];
    let vms = batch.vms;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, outcome)) => outcomes[i] = Some(outcome),
            Err(e) => tracing::error!(job = %spec.name, "a VM task died: {e}"),
        }
    }
    outcomes
        .into_iter()
        .zip(vms)
        .map(|(outcome, vm)| {
            outcome.unwrap_or_else(|| failed(vm, "internal error: its task died".into(), None))
        })
        .collect()
}

async fn process_vm(ctx: &JobContext, vm_name: &str, log: &VmLog) -> VmOutcome {
    let started = Instant::now();
    let pool = &ctx.pool;
    // The replica VM found before the delegate was spent (replication).
    let mut known_replica = None;
    // A restore or replication needs no VM in the pool (it may be gone, or in
    // another pool), only the target SR and a version to write.
    let (vm, vm_id, required_srs) = match &ctx.write {
        Some(write) => {
            let (version, sr) = match write {
                WriteJob::Restore { version, sr, .. } => (*version, sr),
                WriteJob::Replicate { sr, .. } => (None, sr),
            };
            // Check the version before spending a delegate on it.
            let (vm_id, manifest) = match version_to_write(ctx, vm_name, version) {
                Ok(found) => found,
                Err(reason) => {
                    log.fail(format!("Nothing to write: {reason}"));
                    return failed(vm_name, reason, None);
                }
            };
            // A replica someone failed over to is theirs now: no delegate is
            // spent on it (`replicate_vm` checks again, with the delegate up).
            if matches!(write, WriteJob::Replicate { .. })
                && let Ok(Some((replica, record))) =
                    crate::replica_vm::find(pool, &manifest, log).await
            {
                if crate::replica_vm::in_use(&record) {
                    log.warn(crate::replica_vm::left_alone(&record));
                    return VmOutcome::without_work(vm_name, VmStatus::Warn);
                }
                known_replica = Some(replica);
            }
            (None, vm_id, vec![sr.clone()])
        }
        None => match locate_vm(pool, vm_name).await {
            Ok((vm, srs)) => {
                let uuid = vm.uuid.clone();
                (Some(vm), uuid, srs)
            }
            Err(reason) => {
                log.fail(reason.clone());
                return failed(vm_name, reason, None);
            }
        },
    };
    let upload = match &ctx.write {
        Some(WriteJob::Restore {
            version,
            sr,
            via: RestoreVia::Import,
            ..
        }) => Some((*version, sr)),
        _ => None,
    };
    let done = match upload {
        Some((version, sr)) => Delegated {
            work: crate::restore::restore_vm_by_upload(pool, &vm_id, version, sr, &ctx.job, log)
                .await,
            delegate: None,
            attempts: 1,
        },
        None => {
            let target = VmTarget {
                vm: vm.as_ref(),
                vm_id: &vm_id,
                required_srs: &required_srs,
                known_replica: known_replica.as_ref(),
            };
            work_on_delegates(ctx, target, log).await
        }
    };
    let (work, delegate_name, attempt) = (done.work, done.delegate, done.attempts);
    match work {
        Ok(report) => {
            let warned = log.warned();
            log.ok(format!(
                "VM done: {} {} {} disk(s) in {}",
                format_bytes(report.bytes_read),
                if ctx.write.is_some() {
                    "written to"
                } else {
                    "read from"
                },
                report.disks,
                format_duration(started.elapsed())
            ));
            VmOutcome {
                vm: vm_name.to_string(),
                status: if warned { VmStatus::Warn } else { VmStatus::Ok },
                reason: None,
                delegate: delegate_name,
                bytes_read: report.bytes_read,
                bytes_sent: report.written.iter().map(|w| w.read.bytes_sent).sum(),
                bytes_stored: report.stored.bytes_stored,
                restarts: attempt - 1,
                cancelled: false,
            }
        }
        Err(e) => {
            log.fail(format!("VM not processed: {e}"));
            VmOutcome {
                restarts: attempt - 1,
                ..failed_by(vm_name, &e, delegate_name)
            }
        }
    }
}

/// Which VM a job's work is for, and what its delegate must see.
struct VmTarget<'a> {
    /// The VM (backups; restores and replications work from the store).
    vm: Option<&'a ProtectedVm>,
    /// The VM's id in the data store.
    vm_id: &'a str,
    required_srs: &'a [OpaqueRef],
    /// The replica VM found before a delegate was spent (replication).
    known_replica: Option<&'a OpaqueRef>,
}

/// What a VM's work came to, and on which delegate.
struct Delegated {
    work: Result<crate::agent::ReadReport, EngineError>,
    delegate: Option<String>,
    /// Delegates it took (or tried to get).
    attempts: u32,
}

/// Does a VM's work on a delegate; a delegate lost during the work (its VM
/// stopped, its agent restarted, the store out of its reach) is replaced,
/// up to [`VM_ATTEMPTS`] delegates.
async fn work_on_delegates(ctx: &JobContext, target: VmTarget<'_>, log: &VmLog) -> Delegated {
    let VmTarget {
        vm,
        vm_id,
        required_srs,
        known_replica,
    } = target;
    let pool = &ctx.pool;
    let mut attempt = 1;
    loop {
        let delegate = match acquire_delegate(ctx, required_srs, log).await {
            Ok(d) => d,
            Err(e) => {
                return Delegated {
                    work: Err(e),
                    delegate: None,
                    attempts: attempt,
                };
            }
        };
        pool.account(Change::DelegateBusy);
        let work = match (&ctx.write, vm) {
            (Some(WriteJob::Restore { version, sr, .. }), _) => {
                crate::restore::restore_vm(pool, &delegate, vm_id, *version, sr, &ctx.job, log)
                    .await
            }
            (Some(WriteJob::Replicate { sr, networks, .. }), _) => {
                let target = crate::restore::ReplicaTarget {
                    sr,
                    networks,
                    known_vm: known_replica,
                };
                crate::restore::replicate_vm(pool, &delegate, vm_id, target, &ctx.job, log).await
            }
            (None, Some(vm)) => back_up_vm(pool, &delegate, vm, &ctx.job, log).await,
            (None, None) => unreachable!("a backup job located its VM"),
        };
        pool.account(Change::DelegateIdle);
        let delegate_name = delegate.name.clone();
        let cancelled = matches!(work, Err(EngineError::Cancelled(_)));
        let task_lost = matches!(
            work,
            Err(EngineError::Agent(
                crate::agent::AgentError::TaskLost { .. }
            ))
        );
        let store_unreachable = matches!(
            work,
            Err(EngineError::Agent(
                crate::agent::AgentError::StoreUnreachable { .. }
            ))
        );
        let lost = work.is_err()
            && !cancelled
            && (task_lost || store_unreachable || delegate_lost(pool, &delegate).await);
        release(pool, delegate, work.is_ok(), log).await;
        if lost && attempt < VM_ATTEMPTS {
            let cause = work
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let why = if task_lost {
                "its agent restarted and lost the work"
            } else if store_unreachable {
                "its agent could not reach the data store"
            } else {
                "its VM stopped running"
            };
            log.warn(format!(
                "{delegate_name} was lost during the work ({why}; {cause}); \
             starting over with a new delegate"
            ));
            attempt += 1;
            continue;
        }
        return Delegated {
            work,
            delegate: Some(delegate_name),
            attempts: attempt,
        };
    }
}

/// How many delegates one VM may go through when they are lost mid-work.
const VM_ATTEMPTS: u32 = 2;

/// An idle delegate that sees `required_srs`, or a newly provisioned one.
async fn acquire_delegate(
    ctx: &JobContext,
    required_srs: &[OpaqueRef],
    log: &VmLog,
) -> Result<Delegate, EngineError> {
    log.cancel().check()?;
    let pool = &ctx.pool;
    if let Some(d) = pool.take_idle(&ctx.topo, required_srs) {
        log.ok(format!(
            "Reusing idle delegate {} on {}",
            d.name, d.host_name
        ));
        if let Err(e) = pool
            .xapi
            .vm_set_other_config_key(&d.vm, crate::tags::JOB, &ctx.job)
            .await
        {
            tracing::warn!(delegate = %d.name, error = %e, "could not retag reused delegate");
        }
        return Ok(d);
    }
    let Some(setup) = &ctx.delegates else {
        return Err(EngineError::Config {
            pool: pool.name().to_string(),
            message: format!("job {} was set up without delegates", ctx.job),
        });
    };
    log.progress("Provisioning a delegate");
    delegate::provision(
        pool,
        &setup.template,
        &ctx.topo,
        &setup.network,
        required_srs,
        &ctx.job,
        log,
    )
    .await
    .map_err(|e| match e {
        EngineError::Cancelled(_) => e,
        other => EngineError::NoDelegate(Box::new(other)),
    })
}

/// True when the delegate's VM is gone or no longer running (its host
/// crashed, or someone stopped it): the work failed for the delegate's sake,
/// not the VM's.
async fn delegate_lost(pool: &PoolRuntime, d: &Delegate) -> bool {
    match pool.xapi.vm_get_power_state(&d.vm).await {
        Ok(state) => state != xapi_proto::records::PowerState::Running,
        Err(e) => e.code() == Some(xapi_proto::codes::HANDLE_INVALID),
    }
}

/// Finds the VM by name and the SRs its disks are on.
async fn locate_vm(
    pool: &PoolRuntime,
    name: &str,
) -> Result<(ProtectedVm, Vec<OpaqueRef>), String> {
    let x = &pool.xapi;
    let candidates = x
        .vm_get_by_name_label(name)
        .await
        .map_err(|e| format!("looking up the VM failed: {e}"))?;
    let mut vms = Vec::new();
    for vm in candidates {
        let record = x
            .vm_get_record(&vm)
            .await
            .map_err(|e| format!("reading VM {vm} failed: {e}"))?;
        if !record.is_a_template && !record.is_a_snapshot && !record.is_control_domain {
            vms.push((vm, record));
        }
    }
    let (vm, record) = match vms.len() {
        0 => return Err(format!("no VM named {name:?} in pool {}", pool.name())),
        1 => vms.pop().expect("one"),
        n => {
            return Err(format!(
                "{n} VMs are named {name:?} in pool {}; names must be unique",
                pool.name()
            ));
        }
    };
    let mut srs = Vec::new();
    for vbd in &record.vbds {
        let b = x
            .vbd_get_record(vbd)
            .await
            .map_err(|e| format!("reading VBD {vbd} failed: {e}"))?;
        if b.empty {
            continue;
        }
        let vdi = x
            .vdi_get_record(&b.vdi)
            .await
            .map_err(|e| format!("reading VDI {} failed: {e}", b.vdi))?;
        srs.push(vdi.sr);
    }
    srs.sort();
    srs.dedup();
    let protected = ProtectedVm {
        vm,
        uuid: record.uuid,
        name: name.to_string(),
    };
    Ok((protected, srs))
}

/// After a VM's turn: keep the delegate idle (persistent pools, healthy
/// delegates) or tear it down.
async fn release(pool: &Arc<PoolRuntime>, d: Delegate, healthy: bool, log: &VmLog) {
    if pool.config.persistent && healthy {
        pool.put_idle(d, log);
    } else {
        log.progress(format!("Tearing down {}", d.name));
        delegate::teardown(pool, d, log).await;
    }
}

/// The outcome of a VM that could not be processed.
pub(crate) fn failed(vm: &str, reason: String, delegate: Option<String>) -> VmOutcome {
    VmOutcome {
        vm: vm.to_string(),
        status: VmStatus::Failed,
        reason: Some(reason),
        delegate,
        bytes_read: 0,
        bytes_sent: 0,
        bytes_stored: 0,
        restarts: 0,
        cancelled: false,
    }
}

/// The outcome of a VM that failed with `e` (marked when it was a cancellation).
fn failed_by(vm: &str, e: &EngineError, delegate: Option<String>) -> VmOutcome {
    VmOutcome {
        cancelled: matches!(e, EngineError::Cancelled(_)),
        ..failed(vm, e.to_string(), delegate)
    }
}

/// The report of a job that could not start at all.
pub(crate) fn unstartable(shared: &Shared, spec: &JobSpec, e: EngineError) -> JobReport {
    let mut log = JobLog::default();
    let now = shared.now();
    log.push(
        now,
        LineStatus::Fail,
        None,
        format!("Job {} cannot start: {e}", spec.name),
    );
    JobReport {
        name: spec.name.clone(),
        pool: spec.pool.clone(),
        concurrency: spec.concurrency,
        status: JobStatus::Failed,
        vms: spec
            .vms
            .iter()
            .map(|vm| failed(vm, e.to_string(), None))
            .collect(),
        log,
        started_ms: now.as_millis() as u64,
        finished_ms: now.as_millis() as u64,
    }
}

/// A job's entry in the engine's table of running jobs, removed when dropped.
struct RunningJob {
    shared: Arc<Shared>,
    name: String,
}

/// What the engine keeps of a running job: how to cancel it and each VM.
pub(crate) struct JobControl {
    pub(crate) cancel: Cancel,
    pub(crate) vms: BTreeMap<String, Cancel>,
    /// Where a cancellation is recorded, so that it outlives the engine.
    pub(crate) journal: RunJournal,
}

impl JobControl {
    /// Cancels the whole run (`vm: None`) or one VM, and records it.
    pub(crate) fn cancel(&self, vm: Option<&str>, reason: &str) -> Result<(), EngineError> {
        let signal = match vm {
            None => &self.cancel,
            Some(vm) => self.vms.get(vm).ok_or_else(|| {
                EngineError::JobControl(format!("job {:?} has no VM {vm:?}", self.journal.job))
            })?,
        };
        self.journal.record(|job, run| JournalRecord::Cancelled {
            job,
            run,
            vm: vm.map(str::to_string),
            reason: reason.to_string(),
        });
        signal.cancel(reason);
        Ok(())
    }
}

impl RunningJob {
    fn register(
        shared: &Arc<Shared>,
        name: &str,
        control: JobControl,
    ) -> Result<RunningJob, EngineError> {
        let mut running = shared
            .running_jobs
            .lock()
            .expect("running jobs lock poisoned");
        if running.contains_key(name) {
            return Err(EngineError::JobControl(format!(
                "job {name:?} is already running"
            )));
        }
        running.insert(name.to_string(), control);
        Ok(RunningJob {
            shared: Arc::clone(shared),
            name: name.to_string(),
        })
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Ok(mut running) = self.shared.running_jobs.lock() {
            running.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;

    #[test]
    fn a_job_name_runs_once_at_a_time_and_is_free_when_its_run_ends() {
        let shared = Arc::new(Shared::new(EngineConfig::default(), None));
        let control = |job: &str| JobControl {
            cancel: Cancel::new(),
            vms: BTreeMap::new(),
            journal: RunJournal {
                journal: Arc::clone(&shared.journal),
                job: job.into(),
                run: 1,
            },
        };
        let first = RunningJob::register(&shared, "nightly", control("nightly")).expect("first");
        let again = RunningJob::register(&shared, "nightly", control("nightly"));
        assert!(
            matches!(&again, Err(EngineError::JobControl(m)) if m.contains("already running")),
            "a second run of a running job is refused"
        );
        assert!(RunningJob::register(&shared, "weekly", control("weekly")).is_ok());
        drop(first);
        assert!(
            RunningJob::register(&shared, "nightly", control("nightly")).is_ok(),
            "no ghost lock once the run is gone"
        );
    }
}
