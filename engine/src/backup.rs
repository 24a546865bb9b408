//! The work a delegate does for one protected VM: snapshot the VM, hot-plug the
//! snapshot's disks into the delegate, let the agent read them, detach, and
//! remove the snapshot. The snapshot is the engine's own and never outlives the VM's turn.

use crate::agent::{DiskProgress, ReadReport, StoreTarget};
use crate::delegate::Delegate;
use crate::error::EngineError;
use crate::joblog::{format_bytes, format_duration};
use crate::pool::{PoolRuntime, VmLog};
use crate::tags;
use tokio::time::Instant;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{VbdCreate, VbdMode, VbdType, VdiRecord, VdiType};

/// A VM a backup protects, as found in its pool.
#[derive(Clone, Debug)]
pub struct ProtectedVm {
    pub vm: OpaqueRef,
    /// Its uuid: its id in the data store, so a VM's versions stay its own
    /// whatever it is called and whichever other VM shares its name.
    pub uuid: String,
    /// Its `name_label`, as the job names it.
    pub name: String,
}

/// Backs up one VM through a ready delegate.
pub async fn back_up_vm(
    pool: &PoolRuntime,
    d: &Delegate,
    protected: &ProtectedVm,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let x = &pool.xapi;
    let (vm, vm_name) = (&protected.vm, protected.name.as_str());
    log.cancel().check()?;
    log.progress("Taking hypervisor snapshot");
    let started = Instant::now();
    // The name is unique to this run, and announced before the call: should
    // the engine die before the snapshot is tagged, the next one finds it.
    // With the engine id in it: two engines' runs of a same-named job differ.
    let engine_id = &pool.engine_config().engine_id;
    let snapshot_name = match log.journal() {
        Some(journal) => format!("{engine_id} {job} {vm_name} #{}", journal.run),
        None => format!("{engine_id} {job} {vm_name}"),
    };
    if let Some(journal) = log.journal() {
        // No announcement on disk, no snapshot: a crash must not leave one
        // that nothing names.
        journal
            .try_record(|job, run| crate::journal::JournalRecord::Snapshotting {
                job,
                run,
                vm: vm_name.to_string(),
                snapshot_name: snapshot_name.clone(),
            })
            .map_err(|e| EngineError::Journal(e.to_string()))?;
    }
    let snap = match x.vm_snapshot(vm, &snapshot_name).await {
        Ok(snap) => snap,
        Err(e) => match snapshot_made_anyway(pool, vm, &snapshot_name, &e, job, log).await {
            Some(snap) => snap,
            None => {
                // A cancel stopped the snapshot's task: the VM was cancelled.
                log.cancel().check()?;
                return Err(EngineError::xapi(
                    format!("VM {vm} {vm_name:?}"),
                    "snapshot",
                    e,
                ));
            }
        },
    };
    let tagged = tag_snapshot(pool, &snap, job).await;
    let result = match tagged {
        Ok(()) => {
            log.ok(format!(
                "Snapshot taken ({})",
                format_duration(started.elapsed())
            ));
            attach_and_read(pool, d, &snap, protected, log).await
        }
        Err(e) => Err(e),
    };
    // Only a committed backup turns its snapshot disks into CBT bases.
    let keep = result
        .as_ref()
        .map(|b| b.new_bases.clone())
        .unwrap_or_default();
    match remove_snapshot_keeping(pool, &snap, &|vdi, _| keep.contains(vdi)).await {
        Ok(()) if keep.is_empty() => log.ok("Snapshot removed"),
        Ok(()) => log.ok(format!(
            "Snapshot removed; {} disk(s) kept as CBT metadata for the next backup",
            keep.len()
        )),
        Err(failed) => {
            log.fail(format!(
                "Snapshot {snap} could not be removed: {}",
                failed.error
            ));
            let leftover = crate::reclaim::Leftover::Snapshot {
                vm: snap.clone(),
                name: snapshot_name.clone(),
                claim_for_job: Some(job.to_string()),
                disks: failed.disks,
            };
            crate::reclaim::retry_later(pool, leftover, log);
        }
    }
    if let Ok(backed) = &result {
        retire_bases(pool, &backed.old_bases, log).await;
    }
    result.map(|b| b.report)
}

/// A snapshot that got no answer (its reply lost) may have been taken: a
/// snapshot of `vm` by the run's name that is not tagged yet is the one, and
/// is used (a warning); any other such snapshot goes to the background
/// removals, as does the name when the pool cannot be asked now. `None`: not
/// taken (or the error said it failed).
async fn snapshot_made_anyway(
    pool: &PoolRuntime,
    vm: &OpaqueRef,
    name: &str,
    error: &crate::xapi::CallError,
    job: &str,
    log: &VmLog,
) -> Option<OpaqueRef> {
    let mut found = crate::unanswered::made_anyway(
        pool,
        error,
        untagged_snapshots_named(pool, vm, name),
        || format!("Snapshot {name:?} got no answer ({error}), but it was taken: using it"),
        || crate::reclaim::Leftover::UnansweredSnapshot {
            name: name.to_string(),
            of: vm.clone(),
            job: job.to_string(),
        },
        log,
    )
    .await
    .into_iter();
    let snap = found.next()?;
    for other in found {
        let leftover = crate::reclaim::Leftover::Snapshot {
            vm: other,
            name: name.to_string(),
            claim_for_job: Some(job.to_string()),
            disks: Vec::new(),
        };
        crate::reclaim::retry_later(pool, leftover, log);
    }
    Some(snap)
}

/// Snapshots of `vm` named `name` that are not tagged as ours yet.
pub(crate) async fn untagged_snapshots_named(
    pool: &PoolRuntime,
    vm: &OpaqueRef,
    name: &str,
) -> Result<Vec<OpaqueRef>, crate::xapi::CallError> {
    let engine_id = &pool.engine_config().engine_id;
    let mut found = Vec::new();
    for snap in pool.xapi.vm_get_by_name_label(name).await? {
        let record = pool.xapi.vm_get_record(&snap).await?;
        if record.is_a_snapshot
            && record.snapshot_of == *vm
            && !crate::tags::is_our_snapshot(&record, engine_id)
        {
            found.push(snap);
        }
    }
    Ok(found)
}

/// A VM's backup as far as the snapshot's fate is concerned.
struct Backed {
    report: ReadReport,
    /// Snapshot disks to keep as CBT metadata (the next backup's bases).
    new_bases: Vec<OpaqueRef>,
    /// Uuids of the bases this backup used, no longer needed once it is committed.
    old_bases: Vec<String>,
}

/// Destroys the CBT bases a committed backup replaced (ours only).
async fn retire_bases(pool: &PoolRuntime, uuids: &[String], log: &VmLog) {
    let engine_id = &pool.engine_config().engine_id;
    for uuid in uuids {
        let outcome = async {
            let vdi = match pool.xapi.vdi_get_by_uuid(uuid).await {
                // Already gone (with a snapshot an engine restart removed).
                Err(e) if e.code() == Some(xapi_proto::codes::UUID_INVALID) => return Ok(()),
                other => other?,
            };
            let record = pool.xapi.vdi_get_record(&vdi).await?;
            if tags::is_our_cbt_base(&record, engine_id) {
                pool.xapi.vdi_destroy(&vdi).await?;
            }
            Ok::<(), crate::xapi::CallError>(())
        };
        if let Err(e) = outcome.await {
            log.warn(format!("Old CBT base {uuid} could not be removed: {e}"));
        }
    }
}

pub(crate) async fn tag_snapshot(
    pool: &PoolRuntime,
    snap: &OpaqueRef,
    job: &str,
) -> Result<(), EngineError> {
    let engine_id = pool.engine_config().engine_id.clone();
    let [role, owner] = tags::ownership(&engine_id, tags::ROLE_SNAPSHOT);
    for (key, value) in [role, (tags::JOB, job), owner] {
        pool.xapi
            .vm_set_other_config_key(snap, key, value)
            .await
            .map_err(|e| EngineError::xapi(format!("snapshot {snap}"), "tagging", e))?;
    }
    Ok(())
}

/// Plugs the snapshot's disks into the delegate (devices 1..n, read-only),
/// has the agent read them, and always detaches them again.
async fn attach_and_read(
    pool: &PoolRuntime,
    d: &Delegate,
    snap: &OpaqueRef,
    protected: &ProtectedVm,
    log: &VmLog,
) -> Result<Backed, EngineError> {
    let x = &pool.xapi;
    let record = x
        .vm_get_record(snap)
        .await
        .map_err(|e| EngineError::xapi(format!("snapshot {snap}"), "reading", e))?;
    let mut disks = Vec::new();
    let mut bootable = std::collections::BTreeMap::new();
    for vbd in &record.vbds {
        let b = x
            .vbd_get_record(vbd)
            .await
            .map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "reading", e))?;
        if !b.empty && b.vbd_type == VbdType::Disk {
            let device = b.userdevice.parse::<u32>().unwrap_or(u32::MAX);
            bootable.insert(b.vdi.clone(), (b.userdevice.clone(), b.bootable));
            disks.push((device, b.vdi));
        }
    }
    disks.sort();
    // Where each disk sits in the VM (for a replica): userdevice, bootable.
    let devices: Vec<(String, bool)> = disks.iter().map(|(_, vdi)| bootable[vdi].clone()).collect();
    let previous = match pool.store() {
        Some(store) => store
            .latest(&protected.uuid)
            .map_err(|e| EngineError::Store(e.to_string()))?,
        None => None,
    };
    let cbt = match pool.store() {
        Some(_) => Some(cbt_plan(pool, &disks, previous.as_ref(), log).await),
        None => None,
    };
    let vdis: Vec<OpaqueRef> = disks.iter().map(|(_, vdi)| vdi.clone()).collect();
    let (plugged, result) = attach_all(pool, d, &vdis, VbdMode::RO).await;
    let read = match result {
        Ok(()) => {
            let ip = d.ip.expect("a ready delegate has an address");
            let on_progress = |p: DiskProgress| log.disk_progress("Processing", p);
            let target = pool.store().map(|_| StoreTarget {
                vm_id: &protected.uuid,
                previous: previous.as_ref(),
                changed_blocks: cbt
                    .as_ref()
                    .map(|c| c.changed_blocks.clone())
                    .unwrap_or_default(),
            });
            let still_running = || crate::delegate::still_running(pool, d);
            // Dropping the read on cancellation cancels the agent's task.
            log.cancel()
                .wait(pool.agent.read_disks(
                    ip,
                    &d.token,
                    vdis.len(),
                    target,
                    &on_progress,
                    &still_running,
                ))
                .await
                .and_then(|read| read.map_err(EngineError::from))
        }
        Err(e) => Err(e),
    };
    let detached = detach(pool, &plugged).await;
    let report = read?;
    detached?;
    warn_out_of_reach(d, &report, log);
    let mut backed = Backed {
        report,
        new_bases: Vec::new(),
        old_bases: Vec::new(),
    };
    if let (Some(store), Some(cbt)) = (pool.store(), cbt) {
        let read = (&backed.report, devices.as_slice());
        commit_version(pool, store, snap, protected, read, &cbt, log).await?;
        backed.new_bases = cbt.new_bases;
        backed.old_bases = cbt.old_bases;
    }
    Ok(backed)
}

/// What CBT says about a VM's disks before they are read.
struct CbtPlan {
    /// Per disk: changed 64 KiB blocks since the base, or `None` (read it all).
    changed_blocks: Vec<Option<Vec<bool>>>,
    /// Per disk: uuid of the snapshot VDI to record as the next base, if CBT is on.
    base_uuids: Vec<Option<String>>,
    /// Per disk: uuid of the snapshot VDI read (empty if its record was unreadable).
    vdi_uuids: Vec<String>,
    new_bases: Vec<OpaqueRef>,
    old_bases: Vec<String>,
    /// The version the plan is relative to (the new version's parent).
    parent_seq: Option<u64>,
}

/// Asks XAPI which blocks changed since each disk's base (the previous
/// backup's snapshot disk, kept as CBT metadata). A disk without CBT, or
/// without a usable base, is read whole; losing a base is a warning.
async fn cbt_plan(
    pool: &PoolRuntime,
    disks: &[(u32, OpaqueRef)],
    previous: Option<&ads::Manifest>,
    log: &VmLog,
) -> CbtPlan {
    let engine_id = &pool.engine_config().engine_id;
    let mut plan = CbtPlan {
        changed_blocks: Vec::new(),
        base_uuids: Vec::new(),
        vdi_uuids: Vec::new(),
        new_bases: Vec::new(),
        old_bases: Vec::new(),
        parent_seq: previous.map(|p| p.seq),
    };
    for (i, (_, vdi)) in disks.iter().enumerate() {
        let n = i + 1;
        let record = match pool.xapi.vdi_get_record(vdi).await {
            Ok(r) => r,
            Err(e) => {
                log.warn(format!(
                    "Disk {n}: cannot read its VDI ({e}); reading the whole disk"
                ));
                plan.changed_blocks.push(None);
                plan.base_uuids.push(None);
                plan.vdi_uuids.push(String::new());
                continue;
            }
        };
        plan.vdi_uuids.push(record.uuid.clone());
        let base_uuid =
            previous.and_then(|p| p.vm_record["disks"][i]["cbt_base_vdi_uuid"].as_str());
        if !record.cbt_enabled {
            match base_uuid {
                // An incremental chain ends: never silently.
                Some(base_uuid) => {
                    log.warn(format!(
                        "[CBT] Disk {n}: CBT was turned off since the last backup; falling back to a full read (deduplicated)"
                    ));
                    plan.old_bases.push(base_uuid.to_string());
                }
                None => log.ok(format!(
                    "Disk {n}: CBT is not enabled; reading the whole disk (deduplicated)"
                )),
            }
            plan.changed_blocks.push(None);
            plan.base_uuids.push(None);
            continue;
        }
        plan.base_uuids.push(Some(record.uuid.clone()));
        plan.new_bases.push(vdi.clone());
        let Some(base_uuid) = base_uuid else {
            log.ok(format!(
                "[CBT] Disk {n}: first backup with CBT; reading the whole disk"
            ));
            plan.changed_blocks.push(None);
            continue;
        };
        plan.old_bases.push(base_uuid.to_string());
        let changed = async {
            let base = pool
                .xapi
                .vdi_get_by_uuid(base_uuid)
                .await
                .map_err(|e| e.to_string())?;
            let base_record = pool
                .xapi
                .vdi_get_record(&base)
                .await
                .map_err(|e| e.to_string())?;
            if !tags::is_our_cbt_base(&base_record, engine_id) {
                return Err("the base is not a CBT base of ours".to_string());
            }
            let bitmap = pool
                .xapi
                .vdi_list_changed_blocks(&base, vdi)
                .await
                .map_err(|e| e.to_string())?;
            crate::xapi::decode_cbt_bitmap(&bitmap, record.virtual_size as u64)
        };
        match changed.await {
            Ok(mut blocks) => {
                let count = blocks.iter().filter(|c| **c).count();
                log.ok(format!(
                    "[CBT] Disk {n}: {count}/{} blocks changed",
                    blocks.len()
                ));
                // Segments CBT calls clean whose old chunks were set aside.
                let lost: Vec<_> = lost_segments(pool, previous, i)
                    .into_iter()
                    .map(|r| r.start.min(blocks.len())..r.end.min(blocks.len()))
                    .filter(|r| blocks[r.clone()].iter().all(|changed| !changed))
                    .collect();
                if !lost.is_empty() {
                    log.warn(format!(
                        "Disk {n}: {} unchanged segment(s) of version {} lost chunks in the data store (set aside as damaged); reading them again",
                        lost.len(),
                        plan.parent_seq.unwrap_or_default()
                    ));
                    for range in lost {
                        blocks[range].fill(true);
                    }
                }
                plan.changed_blocks.push(Some(blocks));
            }
            Err(e) => {
                log.warn(format!(
                    "[CBT] Disk {n}: base {base_uuid} unusable ({e}); falling back to a full read"
                ));
                plan.changed_blocks.push(None);
            }
        }
    }
    plan
}

/// Says so when the delegate's agent was out of reach while it worked, or
/// had to send data store requests again.
pub(crate) fn warn_out_of_reach(d: &Delegate, report: &ReadReport, log: &VmLog) {
    if report.store_retries > 0 {
        log.warn(format!(
            "{}'s agent had to send {} data store request(s) again (the network lost them); the work went through",
            d.name, report.store_retries
        ));
    }
    if !report.out_of_reach.is_zero() {
        log.warn(format!(
            "{}'s agent was out of reach for {} while it worked; it worked on and finished",
            d.name,
            crate::joblog::format_duration(report.out_of_reach)
        ));
    }
}

/// Block ranges of disk `i` of `previous` whose segments reference chunks the
/// data store no longer has: CBT says they are clean, but their old chunk
/// list cannot be kept.
fn lost_segments(
    pool: &PoolRuntime,
    previous: Option<&ads::Manifest>,
    i: usize,
) -> Vec<std::ops::Range<usize>> {
    let (Some(store), Some(disk)) = (pool.store(), previous.and_then(|p| p.disks.get(i))) else {
        return Vec::new();
    };
    store.with_store(|s| {
        ads::backup::blocks_of_lost_segments(disk, |id| id.is_zero_run() || s.index().contains(id))
    })
}

/// Commits the VM's new version once every disk is stored and detached, and
/// logs what the backup read, sent and stored.
async fn commit_version(
    pool: &PoolRuntime,
    store: &crate::datastore::DataStore,
    snap: &OpaqueRef,
    protected: &ProtectedVm,
    (report, devices): (&ReadReport, &[(String, bool)]),
    cbt: &CbtPlan,
    log: &VmLog,
) -> Result<(), EngineError> {
    let mut read = ads::ReadStats::default();
    for disk in &report.written {
        read.add(&disk.read);
    }
    let dedup = read.bytes_read as f64 / read.bytes_sent.max(1) as f64;
    log.ok(format!(
        "Read {}, sent {}, stored {} ({} new of {} chunks, dedup {dedup:.1}x)",
        format_bytes(read.bytes_read),
        format_bytes(read.bytes_sent),
        format_bytes(report.stored.bytes_stored),
        report.stored.chunks_new,
        read.chunks_total,
    ));
    let snap_record = pool.xapi.vm_get_record(snap).await.ok();
    let snapshot_uuid = snap_record
        .as_ref()
        .map(|r| r.uuid.clone())
        .unwrap_or_default();
    // What a replication rebuilds the VM from; a version without it is still
    // a whole backup of the disks.
    let config = match &snap_record {
        Some(record) => crate::vm_config::read(pool, snap, record, &protected.name).await,
        None => Err(EngineError::Store(
            "the snapshot's record was unreadable".into(),
        )),
    };
    let config = match config {
        Ok(config) => serde_json::to_value(config).expect("configurations serialise"),
        Err(e) => {
            log.warn(format!(
                "The VM's configuration is not recorded with this version: {e}"
            ));
            serde_json::Value::Null
        }
    };
    let disks_meta: Vec<serde_json::Value> = report
        .written
        .iter()
        .zip(cbt.base_uuids.iter().zip(&cbt.vdi_uuids))
        .enumerate()
        .map(|(i, (d, (base, vdi_uuid)))| {
            let (vm_userdevice, bootable) = devices.get(i).cloned().unwrap_or_default();
            serde_json::json!({
                "userdevice": d.userdevice,
                "vm_userdevice": vm_userdevice,
                "bootable": bootable,
                "snapshot_vdi_uuid": vdi_uuid,
                "cbt_base_vdi_uuid": base,
            })
        })
        .collect();
    let mut vm_record = serde_json::json!({
        "pool": pool.config.name,
        "snapshot_uuid": snapshot_uuid,
        // An engine restarted after the commit knows the run got this far.
        "snapshot_name": snap_record.as_ref().map(|r| r.name_label.clone()),
        "disks": disks_meta,
    });
    vm_record[crate::vm_config::MANIFEST_KEY] = config;
    let manifest = store
        .commit(ads::VersionDraft {
            vm: protected.uuid.clone(),
            name: protected.name.clone(),
            taken_at: pool.shared.timestamp(),
            parent_seq: cbt.parent_seq,
            vm_record,
            disks: report.written.iter().map(|d| d.manifest.clone()).collect(),
        })
        .map_err(|e| EngineError::Store(e.to_string()))?;
    log.ok(format!(
        "Version {} committed to the data store{}",
        manifest.seq,
        manifest
            .parent_seq
            .map(|p| format!(" (incremental on version {p})"))
            .unwrap_or_default()
    ));
    Ok(())
}

/// Plugs `vdis` into the delegate as devices 1..n, stopping at the first
/// failure. Returns the VBDs plugged so far (to detach in every case) and
/// whether all were.
pub(crate) async fn attach_all(
    pool: &PoolRuntime,
    d: &Delegate,
    vdis: &[OpaqueRef],
    mode: VbdMode,
) -> (Vec<OpaqueRef>, Result<(), EngineError>) {
    let mut plugged = Vec::new();
    for (i, vdi) in vdis.iter().enumerate() {
        match attach_as(pool, d, vdi, i + 1, mode).await {
            Ok(vbd) => plugged.push(vbd),
            Err(e) => return (plugged, Err(e)),
        }
    }
    (plugged, Ok(()))
}

/// Plugs `vdi` into the delegate as `device`, read-only or read-write.
async fn attach_as(
    pool: &PoolRuntime,
    d: &Delegate,
    vdi: &OpaqueRef,
    device: usize,
    mode: VbdMode,
) -> Result<OpaqueRef, EngineError> {
    let spec = VbdCreate {
        vm: d.vm.clone(),
        vdi: vdi.clone(),
        userdevice: device.to_string(),
        bootable: false,
        mode,
        vbd_type: VbdType::Disk,
        unpluggable: true,
        empty: false,
        ..Default::default()
    };
    let vbd = pool
        .xapi
        .vbd_create(&spec)
        .await
        .map_err(|e| EngineError::xapi(d.label(), "attaching a snapshot disk", e))?;
    if let Err(e) = pool.xapi.vbd_plug(&vbd).await {
        // The plug may have taken effect with its reply lost: the VBD's
        // state, not the answer, says whether the disk is attached.
        let attached = pool
            .xapi
            .vbd_get_record(&vbd)
            .await
            .is_ok_and(|r| r.currently_attached);
        if attached {
            tracing::warn!(%vbd, error = %e, "VBD.plug failed but the disk is attached");
            return Ok(vbd);
        }
        let _ = pool.xapi.vbd_destroy(&vbd).await;
        return Err(EngineError::xapi(d.label(), "plugging a snapshot disk", e));
    }
    Ok(vbd)
}

/// Unplugs and destroys the work VBDs; checks each is really unplugged first.
pub(crate) async fn detach(pool: &PoolRuntime, vbds: &[OpaqueRef]) -> Result<(), EngineError> {
    let mut first_error = None;
    for vbd in vbds {
        let step = async {
            // The state decides, not the answer: an unplug whose reply was
            // lost, or of a disk whose VM has halted, has detached all the same.
            let unplugged = pool.xapi.vbd_unplug(vbd).await;
            let after = pool.xapi.vbd_get_record(vbd).await?;
            if after.currently_attached {
                return Err(unplugged.err().unwrap_or_else(|| {
                    crate::xapi::CallError::Transport("VBD still attached after unplug".into())
                }));
            }
            pool.xapi.vbd_destroy(vbd).await
        };
        if let Err(e) = step.await {
            first_error.get_or_insert(EngineError::xapi(format!("VBD {vbd}"), "detaching", e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Reduces one of our snapshot disks to CBT metadata and tags it as our base.
pub(crate) async fn reduce_to_cbt_base(
    pool: &PoolRuntime,
    vdi: &OpaqueRef,
    known: Option<&VdiRecord>,
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let fail = |step: &'static str| move |e| EngineError::xapi(format!("VDI {vdi}"), step, e);
    // Already reduced when a crash or a failed call came before its tag.
    let reduced = known.is_some_and(|r| r.vdi_type == VdiType::CbtMetadata);
    if !reduced {
        x.vdi_data_destroy(vdi)
            .await
            .map_err(fail("reducing a snapshot disk to CBT metadata"))?;
    }
    x.vdi_set_other_config_key(vdi, tags::ROLE, tags::ROLE_CBT_BASE)
        .await
        .map_err(fail("tagging a CBT base"))
}

/// Destroys a snapshot this engine took (a leftover), with its snapshot
/// disks, except those the newest version of a VM names as its CBT base: a
/// crash after that version's commit left them, and the next incremental
/// needs them (reduced to CBT metadata).
pub(crate) async fn remove_snapshot(
    pool: &PoolRuntime,
    snap: &OpaqueRef,
) -> Result<(), SnapshotRemovalFailed> {
    let bases = crate::reclaim::bases_in_use(pool).unwrap_or_default();
    remove_snapshot_keeping(pool, snap, &|_, uuid| bases.contains(uuid)).await
}

/// A snapshot removal that failed, with the snapshot's disks as far as they
/// were read (by ref and uuid): what a retry must still remove once the
/// snapshot VM itself is gone.
#[derive(Debug)]
pub(crate) struct SnapshotRemovalFailed {
    pub error: EngineError,
    pub disks: Vec<(OpaqueRef, String)>,
}

impl From<EngineError> for SnapshotRemovalFailed {
    fn from(error: EngineError) -> Self {
        SnapshotRemovalFailed {
            error,
            disks: Vec::new(),
        }
    }
}

/// Destroys a snapshot this engine took; its disks are destroyed too, except
/// those `keep` picks (by ref and uuid), which are reduced to CBT metadata and
/// tagged as our bases.
async fn remove_snapshot_keeping(
    pool: &PoolRuntime,
    snap: &OpaqueRef,
    keep: &(dyn Fn(&OpaqueRef, &str) -> bool + Sync),
) -> Result<(), SnapshotRemovalFailed> {
    let x = &pool.xapi;
    let record = x
        .vm_get_record(snap)
        .await
        .map_err(|e| EngineError::xapi(format!("snapshot {snap}"), "reading", e))?;
    if !tags::is_our_snapshot(&record, &pool.engine_config().engine_id) {
        return Err(EngineError::NotOurs {
            action: "destroy",
            object: format!("VM {snap} {:?}", record.name_label),
        }
        .into());
    }
    let mut vdis = Vec::new();
    for vbd in &record.vbds {
        let b = x
            .vbd_get_record(vbd)
            .await
            .map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "reading", e))?;
        if b.empty {
            continue;
        }
        let vdi = x
            .vdi_get_record(&b.vdi)
            .await
            .map_err(|e| EngineError::xapi(format!("VDI {}", b.vdi), "reading", e))?;
        if vdi.is_a_snapshot {
            vdis.push((b.vdi, vdi.uuid));
        }
    }
    let object = format!("snapshot {snap}");
    let fail = |step: &'static str| {
        let object = object.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    let engine_id = pool.engine_config().engine_id.clone();
    let with_disks = |error: EngineError| SnapshotRemovalFailed {
        error,
        disks: vdis.clone(),
    };
    // Disks first: once the snapshot VM is gone they are found only by tag.
    for (vdi, _) in &vdis {
        for (key, value) in tags::ownership(&engine_id, tags::ROLE_SNAPSHOT_DISK) {
            x.vdi_set_other_config_key(vdi, key, value)
                .await
                .map_err(fail("tagging a snapshot disk"))
                .map_err(with_disks)?;
        }
    }
    x.vm_destroy_confirmed(snap)
        .await
        .map_err(fail("destroy"))
        .map_err(with_disks)?;
    for (vdi, uuid) in &vdis {
        if keep(vdi, uuid) {
            reduce_to_cbt_base(pool, vdi, None)
                .await
                .map_err(with_disks)?;
        } else {
            x.vdi_destroy(vdi)
                .await
                .map_err(fail("destroying a snapshot disk"))
                .map_err(with_disks)?;
        }
    }
    Ok(())
}

/// Finishes a snapshot removal that failed after its VM was destroyed: each
/// disk still there and ours is destroyed (or, when the newest version of its
/// VM names it as CBT base, reduced to metadata). A disk still attached
/// (its delegate not torn down yet) waits for the next try.
pub(crate) async fn remove_snapshot_disks_left(
    pool: &PoolRuntime,
    disks: &[(OpaqueRef, String)],
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let engine_id = &pool.engine_config().engine_id;
    let bases = crate::reclaim::bases_in_use(pool).unwrap_or_default();
    for (vdi, uuid) in disks {
        let object = format!("snapshot disk {uuid}");
        let record = match x.vdi_get_record(vdi).await {
            Ok(record) => record,
            Err(e) if e.code() == Some(xapi_proto::codes::HANDLE_INVALID) => continue,
            Err(e) => return Err(EngineError::xapi(object, "reading", e)),
        };
        if tags::is_our_cbt_base(&record, engine_id) {
            continue;
        }
        if !tags::is_our_orphan_disk(&record, engine_id) {
            let attached =
                tags::has_engine_id(&record.other_config, engine_id) && !record.vbds.is_empty();
            if attached {
                return Err(EngineError::Teardown(format!(
                    "{object} still has {} VBD(s)",
                    record.vbds.len()
                )));
            }
            return Err(EngineError::NotOurs {
                action: "destroy",
                object,
            });
        }
        if bases.contains(uuid) {
            reduce_to_cbt_base(pool, vdi, Some(&record)).await?;
        } else {
            x.vdi_destroy(vdi)
                .await
                .map_err(|e| EngineError::xapi(object, "destroy", e))?;
        }
    }
    Ok(())
}
