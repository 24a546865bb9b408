//! What an earlier engine left behind, found and removed at start: its
//! delegates, its snapshots, the disks of either whose VM it destroyed just
//! before it died, and the runs it never finished.
//!
//! Only objects carrying this engine's id are touched, plus the snapshots a
//! run's journal announced by a name unique to that run (an engine that died
//! between `VM.snapshot` and tagging left those untagged). A leftover that
//! cannot be removed now (the pool refuses for a while) is retried in the
//! background, by reference only: a later pass never sweeps up what the
//! engine's own running jobs have since created.

use crate::accounting::Change;
use crate::backup::{remove_snapshot, tag_snapshot};
use crate::delegate::destroy_delegate_vm;
use crate::error::EngineError;
use crate::joblog::format_duration;
use crate::journal::InterruptedRun;
use crate::pool::{PoolRuntime, VmLog};
use crate::tags;
use crate::xapi::CallError;
use std::sync::Arc;
use std::time::Duration;
use xapi_proto::OpaqueRef;
use xapi_proto::codes;
use xapi_proto::records::VmRecord;

/// One thing an earlier engine left, or a teardown of this one could not finish.
#[derive(Clone, Debug)]
pub(crate) enum Leftover {
    Delegate {
        vm: OpaqueRef,
        name: String,
        job: String,
        /// A leftover of an earlier engine (counted as reclaimed when gone);
        /// false for this engine's own failed teardowns (already counted).
        earlier: bool,
        /// Set when a removal destroyed the VM but not all its disks: these
        /// are what is left to remove.
        disks: Vec<OpaqueRef>,
    },
    Snapshot {
        vm: OpaqueRef,
        name: String,
        /// Set when this engine took the snapshot itself (by this ref, under
        /// this run-unique name) and tagging it may have failed: it is tagged
        /// for that job before it is removed.
        claim_for_job: Option<String>,
        /// Its disks (ref, uuid), when a removal that failed read them: once
        /// the snapshot VM is gone, these are what is left to remove.
        disks: Vec<(OpaqueRef, String)>,
    },
    Disk {
        vdi: OpaqueRef,
        name: String,
        uuid: String,
    },
    /// A CBT base no VM's newest version names: a crash came between the
    /// commit that replaced it and its removal.
    CbtBase { vdi: OpaqueRef, uuid: String },
    /// A disk of one of our snapshots that the newest version of its VM names
    /// as its CBT base: a crash came after the commit, before it was reduced
    /// to CBT metadata. Reduced now, not destroyed.
    UnfinishedBase { vdi: OpaqueRef, uuid: String },
    /// A VDI a failed restore created that could not be removed then.
    RestoredDisk { vdi: OpaqueRef },
    /// A delegate clone whose reply was lost and that could not be looked
    /// for then: removed if it was made (found by its new name).
    UnansweredClone { name: String, template_uuid: String },
    /// A VDI whose creation got no answer and that could not be looked for
    /// then: removed if it was made (found by its name and creation id).
    UnansweredDisk { name: String, created_as: String },
    /// A snapshot of `of` whose reply was lost and that could not be looked
    /// for then: tagged for `job` and removed if it was taken (found by the
    /// run's name).
    UnansweredSnapshot {
        name: String,
        of: OpaqueRef,
        job: String,
    },
    /// A snapshot an interrupted run announced (its run-unique name, of the
    /// VM named `vm_name`) that could not be looked for or claimed when the
    /// run was closed: tagged for `job` and removed once found.
    AnnouncedSnapshot {
        name: String,
        vm_name: String,
        job: String,
    },
}

impl Leftover {
    /// The pool object this leftover is (looked for by name when none).
    fn object(&self) -> Option<&OpaqueRef> {
        match self {
            Leftover::Delegate { vm, .. } | Leftover::Snapshot { vm, .. } => Some(vm),
            Leftover::Disk { vdi, .. }
            | Leftover::CbtBase { vdi, .. }
            | Leftover::UnfinishedBase { vdi, .. }
            | Leftover::RestoredDisk { vdi } => Some(vdi),
            Leftover::UnansweredClone { .. }
            | Leftover::UnansweredDisk { .. }
            | Leftover::UnansweredSnapshot { .. }
            | Leftover::AnnouncedSnapshot { .. } => None,
        }
    }

    /// True when `cause` says this leftover is gone (someone else removed
    /// it): HANDLE_INVALID naming it. One naming another object (a VBD gone
    /// with its disk) says nothing of it.
    fn is_gone_by(&self, cause: &CallError) -> bool {
        let CallError::Xapi(e) = cause else {
            return false;
        };
        e.is(codes::HANDLE_INVALID)
            && self
                .object()
                .is_none_or(|object| e.params.iter().any(|p| p == object.as_str()))
    }

    /// What removing it is called in the log.
    fn verb(&self) -> &'static str {
        match self {
            Leftover::Delegate { earlier: true, .. } => "reclaimed",
            Leftover::UnfinishedBase { .. } => "kept",
            _ => "removed",
        }
    }

    fn describe(&self) -> String {
        match self {
            Leftover::Delegate {
                name,
                job,
                earlier: true,
                ..
            } => format!("leftover delegate {name:?} of job {job:?}"),
            Leftover::Delegate { name, .. } => format!("delegate {name:?}"),
            Leftover::Snapshot { name, .. } => format!("leftover snapshot {name:?}"),
            Leftover::Disk { name, uuid, .. } => format!("leftover disk {name:?} ({uuid})"),
            Leftover::CbtBase { uuid, .. } => format!("replaced CBT base {uuid}"),
            Leftover::UnfinishedBase { uuid, .. } => {
                format!("snapshot disk {uuid} as CBT metadata (the next incremental's base)")
            }
            Leftover::RestoredDisk { vdi } => format!("disk {vdi} of a failed restore"),
            Leftover::UnansweredClone { name, .. } => {
                format!("delegate {name:?}, if its unanswered clone was made,")
            }
            Leftover::UnansweredSnapshot { name, .. } => {
                format!("snapshot {name:?}, if its unanswered snapshot was taken,")
            }
            Leftover::AnnouncedSnapshot { name, .. } => {
                format!("snapshot {name:?} of the interrupted run, if it was taken,")
            }
            Leftover::UnansweredDisk { name, .. } => {
                format!("disk {name:?}, if its unanswered creation made it,")
            }
        }
    }

    async fn remove(&mut self, pool: &PoolRuntime) -> Result<(), EngineError> {
        match self {
            Leftover::Delegate {
                vm,
                name,
                earlier,
                disks,
                ..
            } => {
                // Known disks may outlive the VM (a removal that stopped
                // after destroying it), or not (its destroy failed).
                let vm_gone = !disks.is_empty()
                    && pool
                        .xapi
                        .vm_get_record(vm)
                        .await
                        .is_err_and(|e| e.code() == Some(codes::HANDLE_INVALID));
                if vm_gone {
                    remove_disks_left(pool, name, disks).await?;
                } else {
                    destroy_delegate_vm(pool, vm, disks)
                        .await
                        .map_err(|failed| {
                            // A failure that says nothing of the disks (a
                            // read that failed) keeps the ones known.
                            if !failed.disks_left.is_empty() {
                                *disks = failed.disks_left;
                            }
                            failed.error
                        })?;
                }
                pool.release_held_lease(vm);
                if *earlier {
                    pool.account(Change::Reclaimed);
                }
                Ok(())
            }
            Leftover::Snapshot {
                vm,
                name,
                claim_for_job,
                disks,
            } => {
                let record = match pool.xapi.vm_get_record(vm).await {
                    // The VM went, its disks maybe not (a removal that
                    // failed after destroying it).
                    Err(e) if e.code() == Some(codes::HANDLE_INVALID) && !disks.is_empty() => {
                        return crate::backup::remove_snapshot_disks_left(pool, disks).await;
                    }
                    read => {
                        read.map_err(|e| EngineError::xapi(format!("snapshot {vm}"), "reading", e))?
                    }
                };
                if let Some(job) = claim_for_job {
                    let engine_id = &pool.engine_config().engine_id;
                    let untagged_ours = record.is_a_snapshot
                        && &record.name_label == name
                        && !tags::is_our_snapshot(&record, engine_id);
                    if untagged_ours {
                        crate::backup::tag_snapshot(pool, vm, job).await?;
                    }
                }
                remove_snapshot(pool, vm).await.map_err(|failed| {
                    if !failed.disks.is_empty() {
                        *disks = failed.disks;
                    }
                    failed.error
                })
            }
            Leftover::Disk { vdi, name, .. } => {
                let what = format!("VDI {vdi} {name:?}");
                destroy_vdi_if_ours(pool, vdi, &what, tags::is_our_orphan_disk).await
            }
            Leftover::UnansweredClone {
                name,
                template_uuid,
            } => {
                let found = crate::delegate::fresh_clones_of(pool, template_uuid, name)
                    .await
                    .map_err(|e| EngineError::xapi(format!("VM {name:?}"), "looking up", e))?;
                for vm in found {
                    if let Err(failed) = destroy_delegate_vm(pool, &vm, &[]).await {
                        // What is left is a delegate of ours, known by ref now.
                        *self = Leftover::Delegate {
                            vm,
                            name: name.clone(),
                            job: String::new(),
                            earlier: false,
                            disks: failed.disks_left,
                        };
                        return Err(failed.error);
                    }
                }
                Ok(())
            }
            Leftover::UnansweredSnapshot { name, of, job } => {
                let found = crate::backup::untagged_snapshots_named(pool, of, name)
                    .await
                    .map_err(|e| EngineError::xapi(format!("VM {name:?}"), "looking up", e))?;
                let found = found.into_iter().map(|snap| (snap, false)).collect();
                if let Err((left, e)) = claim_and_remove(pool, found, name, job).await {
                    *self = left;
                    return Err(e);
                }
                Ok(())
            }
            Leftover::AnnouncedSnapshot { name, vm_name, job } => {
                let vms = pool.xapi.vm_get_all_records().await.map_err(|e| {
                    EngineError::xapi(format!("snapshot {name:?}"), "looking up", e)
                })?;
                let engine_id = &pool.engine_config().engine_id;
                let found = announced_snapshots(&vms, vm_name, name, engine_id);
                if let Err((left, e)) = claim_and_remove(pool, found, name, job).await {
                    *self = left;
                    return Err(e);
                }
                Ok(())
            }
            Leftover::UnansweredDisk { name, created_as } => {
                let found = crate::restore::vdis_created_as(pool, name, created_as)
                    .await
                    .map_err(|e| EngineError::xapi(format!("VDI {name:?}"), "looking up", e))?;
                for vdi in found {
                    let what = format!("VDI {vdi} {name:?}");
                    pool.xapi
                        .vdi_destroy(&vdi)
                        .await
                        .map_err(|e| EngineError::xapi(what, "destroy", e))?;
                }
                Ok(())
            }
            Leftover::RestoredDisk { vdi } => {
                let what = format!("VDI {vdi} of a failed restore");
                destroy_vdi_if_ours(pool, vdi, &what, tags::is_our_restored_vdi).await
            }
            Leftover::CbtBase { vdi, uuid } => {
                let what = format!("CBT base {uuid}");
                destroy_vdi_if_ours(pool, vdi, &what, tags::is_our_cbt_base).await
            }
            Leftover::UnfinishedBase { vdi, uuid } => {
                let record = pool
                    .xapi
                    .vdi_get_record(vdi)
                    .await
                    .map_err(|e| EngineError::xapi(format!("CBT base {uuid}"), "reading", e))?;
                let engine_id = &pool.engine_config().engine_id;
                if !tags::is_our_orphan_disk(&record, engine_id) {
                    if tags::is_our_work_disk(&record, engine_id) {
                        return Err(EngineError::StillAttached(format!("CBT base {uuid}")));
                    }
                    return Err(EngineError::NotOurs {
                        action: "reduce to CBT metadata",
                        object: format!("VDI {vdi} {:?}", record.name_label),
                    });
                }
                crate::backup::reduce_to_cbt_base(pool, vdi, Some(&record)).await
            }
        }
    }
}

/// Destroys the disks a delegate's removal left after destroying its VM,
/// dropping each from `disks` once gone (already gone counts).
async fn remove_disks_left(
    pool: &PoolRuntime,
    name: &str,
    disks: &mut Vec<OpaqueRef>,
) -> Result<(), EngineError> {
    while let Some(vdi) = disks.first().cloned() {
        let what = format!("VDI {vdi} of delegate {name:?}");
        match destroy_vdi_if_ours(pool, &vdi, &what, tags::is_our_orphan_disk).await {
            Err(EngineError::Xapi { cause, .. })
                if cause.code() == Some(xapi_proto::codes::HANDLE_INVALID) => {}
            other => other?,
        }
        disks.remove(0);
    }
    Ok(())
}

/// Destroys `vdi` once its record, read now, shows it is ours in the way
/// `ours` checks (the tag check before every destructive call). A work disk
/// of ours that is still attached (its delegate not removed yet) is
/// [`EngineError::StillAttached`], for a later pass.
async fn destroy_vdi_if_ours(
    pool: &PoolRuntime,
    vdi: &OpaqueRef,
    what: &str,
    ours: fn(&xapi_proto::records::VdiRecord, &str) -> bool,
) -> Result<(), EngineError> {
    let record = pool
        .xapi
        .vdi_get_record(vdi)
        .await
        .map_err(|e| EngineError::xapi(what.to_string(), "reading", e))?;
    let engine_id = &pool.engine_config().engine_id;
    if !ours(&record, engine_id) && tags::is_our_work_disk(&record, engine_id) {
        return Err(EngineError::StillAttached(what.to_string()));
    }
    if !ours(&record, engine_id) {
        return Err(EngineError::NotOurs {
            action: "destroy",
            object: what.to_string(),
        });
    }
    pool.xapi
        .vdi_destroy(vdi)
        .await
        .map_err(|e| EngineError::xapi(what.to_string(), "destroy", e))
}

/// How often, and how patiently, leftovers that resisted are retried.
const RETRY_FIRST_S: u64 = 30;
const RETRY_MAX_S: u64 = 600;
const RETRY_PASSES: u32 = 12;

/// The pause after pass `attempt` (the first pass at start is 1): doubling
/// from [`RETRY_FIRST_S`] up to [`RETRY_MAX_S`].
fn wait_after(attempt: u32) -> Duration {
    let s = RETRY_FIRST_S << (attempt.saturating_sub(1)).min(16);
    Duration::from_secs(s.min(RETRY_MAX_S))
}

/// Removes what earlier runs of this engine left (at start no job owns any
/// of it). What resists is retried in the background.
pub(crate) async fn reclaim_leftovers(
    pool: &Arc<PoolRuntime>,
    log: &VmLog,
) -> Result<(), EngineError> {
    let leftovers = find(pool).await?;
    let resisting = pass(pool, leftovers, log, None).await;
    retry_in_background(pool, resisting);
    Ok(())
}

/// Hands what this engine could not remove (a teardown or a snapshot removal
/// that failed) to the background retries.
pub(crate) fn retry_later(pool: &PoolRuntime, leftover: Leftover, log: &VmLog) {
    log.warn(format!(
        "Pool {}: {} will be removed in the background (retrying in {})",
        pool.name(),
        leftover.describe(),
        format_duration(wait_after(1))
    ));
    retry_in_background(&pool.shared_self(), vec![leftover]);
}

fn retry_in_background(pool: &Arc<PoolRuntime>, resisting: Vec<Leftover>) {
    if resisting.is_empty() {
        return;
    }
    let pool_ref = Arc::clone(pool);
    // Later passes may come after the job that failed is over: the engine
    // log is where they are told.
    let log = VmLog::new(Arc::clone(&pool.shared.log), Arc::clone(&pool.shared), None);
    let pending = &pool.shared.leftovers_pending;
    pending.fetch_add(resisting.len(), std::sync::atomic::Ordering::Relaxed);
    let mut background = pool
        .shared
        .background
        .lock()
        .expect("background lock poisoned");
    background.spawn(async move {
        let pending = &pool_ref.shared.leftovers_pending;
        let mut resisting = resisting;
        for attempt in 2..=RETRY_PASSES + 1 {
            tokio::time::sleep(wait_after(attempt - 1)).await;
            let last = attempt == RETRY_PASSES + 1;
            let before = resisting.len();
            resisting = pass(&pool_ref, resisting, &log, Some((attempt, last))).await;
            let settled = if last {
                before
            } else {
                before - resisting.len()
            };
            pending.fetch_sub(settled, std::sync::atomic::Ordering::Relaxed);
            if resisting.is_empty() || last {
                return;
            }
        }
    });
}

/// Everything of ours no job owns: delegates first (they may still have
/// snapshot disks plugged in), then snapshots, then orphaned disks.
async fn find(pool: &PoolRuntime) -> Result<Vec<Leftover>, EngineError> {
    let engine_id = pool.engine_config().engine_id.clone();
    let listing = |what: &'static str| {
        let pool = pool.name().to_string();
        move |e| EngineError::xapi(format!("pool {pool}"), what, e)
    };
    let vms = pool
        .xapi
        .vm_get_all_records()
        .await
        .map_err(listing("listing VMs"))?;
    let mut found = Vec::new();
    // Plugs that go with the delegates removed first: a snapshot disk held
    // only by them (one a dying engine left attached) is an orphan once
    // they are gone.
    let mut going_with_delegates = std::collections::BTreeSet::new();
    for (vm, record) in &vms {
        if tags::is_our_disposable_vm(record, &engine_id) && !record.is_a_snapshot {
            going_with_delegates.extend(record.vbds.iter().cloned());
            found.push(Leftover::Delegate {
                earlier: true,
                disks: Vec::new(),
                vm: vm.clone(),
                name: record.name_label.clone(),
                job: record
                    .other_config
                    .get(tags::JOB)
                    .cloned()
                    .unwrap_or_else(|| "?".into()),
            });
        }
    }
    for (vm, record) in &vms {
        // Not tagged whole: a run's journal names it (see `close_interrupted`).
        if tags::is_our_snapshot(record, &engine_id) {
            found.push(Leftover::Snapshot {
                vm: vm.clone(),
                name: record.name_label.clone(),
                claim_for_job: None,
                disks: Vec::new(),
            });
        }
    }
    let vdis = pool
        .xapi
        .vdi_get_all_records()
        .await
        .map_err(listing("listing VDIs"))?;
    let bases = bases_in_use(pool).unwrap_or_default();
    for (vdi, record) in &vdis {
        // A disk of ours with no role lost it to a crash mid-retag: a
        // snapshot disk on its way to be a CBT base, or a delegate's disk.
        let snapshot_disk = matches!(
            record.other_config.get(tags::ROLE).map(String::as_str),
            Some(tags::ROLE_SNAPSHOT_DISK) | None
        );
        // A delegate's own disks go with it; a snapshot disk does not.
        let held_only_by_delegates =
            snapshot_disk && record.vbds.iter().all(|v| going_with_delegates.contains(v));
        let orphan = tags::is_our_work_disk(record, &engine_id)
            && (record.vbds.is_empty() || held_only_by_delegates);
        if orphan && snapshot_disk && bases.contains(&record.uuid) {
            found.push(Leftover::UnfinishedBase {
                vdi: vdi.clone(),
                uuid: record.uuid.clone(),
            });
        } else if orphan {
            found.push(Leftover::Disk {
                vdi: vdi.clone(),
                name: record.name_label.clone(),
                uuid: record.uuid.clone(),
            });
        }
    }
    if let Some(named) = bases_in_use(pool) {
        for (vdi, record) in &vdis {
            if tags::is_our_cbt_base(record, &engine_id) && !named.contains(&record.uuid) {
                found.push(Leftover::CbtBase {
                    vdi: vdi.clone(),
                    uuid: record.uuid.clone(),
                });
            }
        }
    }
    Ok(found)
}

/// The CBT bases the newest version of each VM in the data store names (the
/// only ones an incremental can use). None, when no base counts as
/// replaced: without a readable store, or with one that holds no version at
/// all (a fresh store, or the wrong one mounted, says nothing about bases).
pub(crate) fn bases_in_use(pool: &PoolRuntime) -> Option<std::collections::BTreeSet<String>> {
    pool.store()?.with_store(|store| {
        let mut named = std::collections::BTreeSet::new();
        let vms = store.vms().ok()?;
        if vms.is_empty() {
            return None;
        }
        for vm in vms {
            let Some(latest) = store.latest(&vm).ok()? else {
                continue;
            };
            let disks = latest.vm_record["disks"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            named.extend(
                disks
                    .iter()
                    .filter_map(|d| d["cbt_base_vdi_uuid"].as_str().map(str::to_string)),
            );
        }
        Some(named)
    })
}

/// Tries each leftover once; returns those that resisted. `retry` is
/// (attempt, last attempt?) for background passes.
async fn pass(
    pool: &PoolRuntime,
    leftovers: Vec<Leftover>,
    log: &VmLog,
    retry: Option<(u32, bool)>,
) -> Vec<Leftover> {
    let mut resisting = Vec::new();
    for mut leftover in leftovers {
        let (what, verb) = (leftover.describe(), leftover.verb());
        let result = leftover.remove(pool).await;
        let gone = match &result {
            Err(EngineError::Xapi { cause, .. }) => leftover.is_gone_by(cause),
            _ => false,
        };
        match (result, retry) {
            (Ok(()), None) => log.warn(format!("Pool {}: {verb} {what}", pool.name())),
            (Ok(()), Some((attempt, _))) => log.warn(format!(
                "Pool {}: {verb} {what} (attempt {attempt})",
                pool.name()
            )),
            // Someone else removed it meanwhile: nothing left to do.
            (Err(_), _) if gone => {
                if let Leftover::Delegate { vm, .. } = &leftover {
                    pool.release_held_lease(vm);
                }
            }
            // Retrying cannot make it ours.
            (Err(e @ EngineError::NotOurs { .. }), _) => {
                log.fail(format!("Pool {}: {what} is left alone: {e}", pool.name()))
            }
            (Err(e), Some((_, true))) => log.fail(format!(
                "Pool {}: {what} could not be removed, giving up: {e}",
                pool.name()
            )),
            (Err(e), _) => {
                let attempt = retry.map_or(1, |(attempt, _)| attempt);
                log.warn(format!(
                    "Pool {}: {what} could not be removed ({e}); retrying in {}",
                    pool.name(),
                    format_duration(wait_after(attempt))
                ));
                resisting.push(leftover);
            }
        }
    }
    resisting
}

/// Closes a run the previous engine left unfinished: records it as
/// interrupted and removes the snapshots it announced but may not have
/// tagged yet (found by their unique name; taken of the VM the journal names).
pub(crate) async fn close_interrupted(pool: &PoolRuntime, run: &InterruptedRun, log: &VmLog) {
    let engine_id = pool.engine_config().engine_id.clone();
    // A VM that started over within the run announced its name twice.
    let mut announced = run.snapshots.clone();
    announced.sort();
    announced.dedup();
    let job = &run.spec.name;
    // What cannot be looked for, claimed or removed now is retried in the
    // background (the pool may be out of reach for longer than a call waits).
    let later = |leftover| retry_later(pool, leftover, log);
    let vms = match announced.is_empty() {
        true => Default::default(),
        false => match pool.xapi.vm_get_all_records().await {
            Ok(vms) => vms,
            Err(e) => {
                log.fail(format!(
                    "Pool {}: could not look for the interrupted run's snapshots: {e}",
                    pool.name()
                ));
                for (vm_name, name) in &announced {
                    later(Leftover::AnnouncedSnapshot {
                        name: name.clone(),
                        vm_name: vm_name.clone(),
                        job: job.clone(),
                    });
                }
                Default::default()
            }
        },
    };
    for (vm_name, snapshot_name) in &announced {
        for (snap, ours) in announced_snapshots(&vms, vm_name, snapshot_name, &engine_id) {
            if !ours && let Err(e) = tag_snapshot(pool, &snap, job).await {
                log.fail(format!(
                    "Snapshot {snapshot_name:?} could not be claimed: {e}"
                ));
                later(Leftover::Snapshot {
                    vm: snap,
                    name: snapshot_name.clone(),
                    claim_for_job: Some(job.clone()),
                    disks: Vec::new(),
                });
                continue;
            }
            match remove_snapshot(pool, &snap).await {
                Ok(()) => log.warn(format!(
                    "Pool {}: removed snapshot {snapshot_name:?} of the interrupted run",
                    pool.name()
                )),
                Err(failed) => {
                    log.fail(format!(
                        "Pool {}: snapshot {snapshot_name:?} of the interrupted run could not be removed: {}",
                        pool.name(),
                        failed.error
                    ));
                    later(Leftover::Snapshot {
                        vm: snap,
                        name: snapshot_name.clone(),
                        claim_for_job: None,
                        disks: failed.disks,
                    });
                }
            }
        }
    }
    log.warn(format!(
        "Job {} (run {}) was interrupted: the engine stopped while it ran, with {} of {} VMs done",
        run.spec.name,
        run.run,
        run.done.len(),
        run.spec.vms.len()
    ));
}

/// Tags each snapshot of `found` that is not ours yet (`false`) for `job`, then
/// removes it. A removal that fails leaves a snapshot of ours known by ref:
/// returned as the leftover to retry, with the error.
async fn claim_and_remove(
    pool: &PoolRuntime,
    found: Vec<(OpaqueRef, bool)>,
    name: &str,
    job: &str,
) -> Result<(), (Leftover, EngineError)> {
    for (snap, ours) in found {
        let left = |disks| Leftover::Snapshot {
            vm: snap.clone(),
            name: name.to_string(),
            claim_for_job: Some(job.to_string()),
            disks,
        };
        if !ours && let Err(e) = tag_snapshot(pool, &snap, job).await {
            return Err((left(Vec::new()), e));
        }
        if let Err(failed) = remove_snapshot(pool, &snap).await {
            return Err((left(failed.disks), failed.error));
        }
    }
    Ok(())
}

/// The snapshots named `snapshot_name` of the VM named `vm_name` among `vms`
/// (an interrupted run announced that name, unique to it, before taking
/// one), each with whether it already carries our tags. Ours by the journal:
/// not tagged whole only if the engine died between the snapshot and its
/// tags. One carrying another engine's id is someone else's, never claimed.
fn announced_snapshots(
    vms: &std::collections::BTreeMap<OpaqueRef, VmRecord>,
    vm_name: &str,
    snapshot_name: &str,
    engine_id: &str,
) -> Vec<(OpaqueRef, bool)> {
    let taken_of = |of: &OpaqueRef| vms.get(of).is_some_and(|r| r.name_label == vm_name);
    vms.iter()
        .filter(|(_, r)| {
            r.is_a_snapshot && r.name_label == snapshot_name && taken_of(&r.snapshot_of)
        })
        .filter(|(_, r)| {
            r.other_config
                .get(tags::ENGINE_ID)
                .is_none_or(|id| id == engine_id)
        })
        .map(|(snap, r)| (snap.clone(), tags::is_our_snapshot(r, engine_id)))
        .collect()
}
