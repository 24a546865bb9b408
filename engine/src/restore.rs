//! Restore and replication: a VM's version from the data store written onto
//! VDIs in a pool by a delegate, through read-write VBDs, verified against the
//! digest taken at backup time.
//!
//! - A restore writes a version onto new VDIs, tagged as restored by us and
//!   left for the operator; a failed restore removes the VDIs it created. It
//!   goes through a delegate, or (`via = import`) the engine uploads each
//!   disk to the pool master itself.
//! - A replication keeps the newest version as replica VDIs: written whole the
//!   first time, then only the segments that changed since the version they
//!   hold. While they are written they are marked `updating`, so an
//!   interrupted update is rewritten whole next time, never trusted. Around
//!   them stands a halted replica VM (`replica_vm.rs`); once someone starts
//!   it (a fail-over), replication leaves its disks alone.

use crate::agent::{DiskProgress, ReadReport, RestoreSource};
use crate::backup::{attach_all, detach};
use crate::datastore::DataStore;
use crate::delegate::Delegate;
use crate::error::EngineError;
use crate::joblog::format_bytes;
use crate::pool::{PoolRuntime, VmLog};
use crate::replica_vm::ReplicaNetworks;
use crate::tags;
use crate::xapi::RawImage;
use crate::xapi::vhd_stream::blocks_touched;
use std::sync::{Arc, Mutex};
use xapi_proto::OpaqueRef;
use xapi_proto::records::{VbdMode, VdiCreate, VdiType};

/// Writes `vm_id`'s version (`version`, else its newest) onto new VDIs on `sr`.
pub async fn restore_vm(
    pool: &PoolRuntime,
    d: &Delegate,
    vm_id: &str,
    version: Option<u64>,
    sr: &OpaqueRef,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let manifest = begin_restore(pool, vm_id, version, "", log)?;
    let mut created = Vec::new();
    let outcome = async {
        for i in 0..manifest.disks.len() {
            let vdi = create_vdi(pool, &manifest, i, sr, tags::ROLE_RESTORED, job, log).await?;
            created.push(vdi);
        }
        write_version(pool, d, &manifest, None, &created, log).await
    }
    .await;
    finish_restore(pool, outcome, &created, log).await
}

/// Writes `vm_id`'s version (`version`, else its newest) onto new VDIs on
/// `sr` without a delegate: the engine restores each disk from the store as
/// it uploads it to the pool master (`PUT /import_raw_vdi`), checked against
/// the backup's digest on the way. Every byte, zeros too, crosses the
/// engine's link to the pool.
pub async fn restore_vm_by_upload(
    pool: &PoolRuntime,
    vm_id: &str,
    version: Option<u64>,
    sr: &OpaqueRef,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let manifest = begin_restore(pool, vm_id, version, " by upload to the pool master", log)?;
    let store = pool
        .shared_store()
        .ok_or_else(|| EngineError::Store("this engine has no data store".into()))?;
    let mut created = Vec::new();
    let count = manifest.disks.len();
    let outcome = async {
        let mut report = ReadReport::default();
        for i in 0..count {
            let vdi = create_vdi(pool, &manifest, i, sr, tags::ROLE_RESTORED, job, log).await?;
            created.push(vdi.clone());
            let size_bytes = manifest.disks[i].size_bytes;
            let progress = |percent| DiskProgress {
                disk_index: i + 1,
                disk_count: count,
                size_bytes,
                percent,
            };
            log.disk_progress("Uploading", progress(0));
            let image = disk_image(Arc::clone(&store), manifest.clone(), i);
            if let Some(allocated) = &image.allocated {
                log.ok(format!(
                    "Disk {} goes as a sparse VHD: {} of {} blocks hold data ({} to send)",
                    i + 1,
                    allocated.iter().filter(|a| **a).count(),
                    allocated.len(),
                    format_bytes(image.wire_bytes())
                ));
            }
            let on_sent = upload_progress(log.clone(), progress(0), image.wire_bytes());
            let image = image.reporting(on_sent);
            // Dropping the upload on cancellation breaks its connection.
            log.cancel()
                .wait(pool.xapi.vdi_import_raw(&vdi, &image))
                .await?
                .map_err(|e| EngineError::xapi(format!("VDI {vdi}"), "uploading a disk", e))?;
            log.disk_progress("Uploading", progress(100));
            report.disks += 1;
            report.bytes_read += size_bytes;
        }
        Ok(report)
    }
    .await;
    finish_restore(pool, outcome, &created, log).await
}

/// The version a restore writes, announced in the log (`how` it is written).
fn begin_restore(
    pool: &PoolRuntime,
    vm_id: &str,
    version: Option<u64>,
    how: &str,
    log: &VmLog,
) -> Result<ads::Manifest, EngineError> {
    let (_, manifest) = version_of(pool, vm_id, version)?;
    log.ok(format!(
        "Restoring version {} ({} disk(s), taken {}){how}",
        manifest.seq,
        manifest.disks.len(),
        manifest.taken_at
    ));
    Ok(manifest)
}

/// Disk `disk` of `manifest` as an upload: restored from `store` in order,
/// every chunk checked against its address and the whole against the disk's
/// digest (a mismatch fails the upload). A disk with empty stretches goes
/// out sparse: the blocks no stored chunk touches (zero segments, zero runs
/// inside data segments) are left out.
fn disk_image(store: Arc<DataStore>, manifest: ads::Manifest, disk: usize) -> RawImage {
    let shape = &manifest.disks[disk];
    let allocated = blocks_touched(shape.size_bytes, stored_ranges(shape));
    let size = shape.size_bytes;
    let image = RawImage::new(
        size,
        Arc::new(move |target| {
            ads::restore_disk(store.as_ref(), &manifest, disk, target, &mut |_, _| {})
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    );
    match allocated.iter().all(|a| *a) {
        true => image,
        false => image.sparse(allocated),
    }
}

/// The (offset, length) ranges of `disk` its stored chunks hold: all but
/// its zero segments and zero runs.
fn stored_ranges(disk: &ads::DiskManifest) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for (i, segment) in disk.segments.iter().enumerate() {
        let ads::Segment::Data { chunks, .. } = segment else {
            continue;
        };
        let mut offset = i as u64 * disk.segment_bytes;
        for (id, len) in chunks {
            if !id.is_zero_run() {
                ranges.push((offset, *len as u64));
            }
            offset += *len as u64;
        }
    }
    ranges
}

/// Logs an upload's progress at each quarter it passes, once each (a retried
/// upload does not repeat them); 100% is left to the upload's end, which is
/// when the pool has taken the disk.
fn upload_progress(log: VmLog, disk: DiskProgress, wire_bytes: u64) -> Arc<crate::xapi::OnSent> {
    let shown = Mutex::new(0u8);
    Arc::new(move |sent| {
        let percent = (sent.min(wire_bytes) * 100)
            .checked_div(wire_bytes)
            .unwrap_or(0) as u8;
        let mut shown = shown.lock().expect("progress lock poisoned");
        while *shown + 25 <= percent.min(99) {
            *shown += 25;
            log.disk_progress(
                "Uploading",
                DiskProgress {
                    percent: *shown,
                    ..disk
                },
            );
        }
    })
}

/// Names the VDIs a restore wrote, or, when it failed, removes them: no
/// half-restored disks.
async fn finish_restore(
    pool: &PoolRuntime,
    outcome: Result<ReadReport, EngineError>,
    created: &[OpaqueRef],
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    match &outcome {
        Ok(_) => {
            for vdi in created {
                let uuid = pool
                    .xapi
                    .vdi_get_record(vdi)
                    .await
                    .map(|r| r.uuid)
                    .unwrap_or_default();
                log.ok(format!(
                    "Restored into VDI {uuid} (verified against the backup's digest)"
                ));
            }
        }
        Err(_) => destroy_vdis(pool, created, log).await,
    }
    outcome
}

/// Where a replication writes.
pub struct ReplicaTarget<'a> {
    /// SR of the replica VDIs.
    pub sr: &'a OpaqueRef,
    /// Networks for the replica VM's interfaces.
    pub networks: &'a ReplicaNetworks,
    /// The replica VM, when it was found before the delegate was spent.
    pub known_vm: Option<&'a OpaqueRef>,
}

/// Brings `vm_id`'s replica on `target.sr` to its newest version: its
/// disks, then the halted replica VM around them.
pub async fn replicate_vm(
    pool: &PoolRuntime,
    d: &Delegate,
    vm_id: &str,
    target: ReplicaTarget<'_>,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let ReplicaTarget { sr, networks, .. } = target;
    let (store, manifest) = version_of(pool, vm_id, None)?;
    // Looked at again now the delegate is up: someone may have failed over.
    let replica_vm = crate::replica_vm::find_again(pool, &manifest, target.known_vm, log).await?;
    if let Some((_, record)) = replica_vm
        .as_ref()
        .filter(|(_, r)| crate::replica_vm::in_use(r))
    {
        log.warn(crate::replica_vm::left_alone(record));
        return Ok(ReadReport::default());
    }
    let (replica, held) = find_replica(pool, vm_id, &manifest).await?;
    if held == Some(manifest.seq) {
        log.ok(format!("Replica already holds version {}", manifest.seq));
        crate::replica_vm::ensure(pool, replica_vm, &manifest, &replica, networks, job, log)
            .await?;
        return Ok(ReadReport::default());
    }
    let base = held.and_then(|seq| store.manifest(vm_id, Some(seq)).ok());
    let targets = match (&base, replica.is_empty()) {
        (Some(base), _) => {
            log.ok(format!(
                "Updating the replica from version {} to {}",
                base.seq, manifest.seq
            ));
            replica
        }
        (None, fresh) => {
            if !fresh {
                log.warn("The replica is incomplete or its version is gone; rewriting it whole");
                destroy_vdis(pool, &replica, log).await;
            }
            log.ok(format!("Creating the replica at version {}", manifest.seq));
            let mut created = Vec::new();
            for i in 0..manifest.disks.len() {
                match create_vdi(pool, &manifest, i, sr, tags::ROLE_REPLICA, job, log).await {
                    Ok(vdi) => created.push(vdi),
                    Err(e) => {
                        destroy_vdis(pool, &created, log).await;
                        return Err(e);
                    }
                }
            }
            created
        }
    };
    // Marked while written: an interrupted update is never taken for a version.
    label_vdis(pool, &targets, vm_id, "updating").await?;
    let outcome = write_version(pool, d, &manifest, base.as_ref(), &targets, log).await;
    match &outcome {
        Ok(report) => {
            label_vdis(pool, &targets, vm_id, &manifest.seq.to_string()).await?;
            log.ok(format!(
                "Replica at version {}: {} written (verified against the backup's digest)",
                manifest.seq,
                format_bytes(report.bytes_read)
            ));
            crate::replica_vm::ensure(pool, replica_vm, &manifest, &targets, networks, job, log)
                .await?;
        }
        Err(_) if base.is_none() => destroy_vdis(pool, &targets, log).await,
        Err(_) => log.warn("The replica update failed; the next run rewrites it whole"),
    }
    outcome
}

/// The engine's store and `vm_id`'s version (`version`, else its newest).
fn version_of<'a>(
    pool: &'a PoolRuntime,
    vm_id: &str,
    version: Option<u64>,
) -> Result<(&'a crate::datastore::DataStore, ads::Manifest), EngineError> {
    let store = store_of(pool)?;
    let manifest = store
        .manifest(vm_id, version)
        .map_err(|e| EngineError::Store(e.to_string()))?;
    Ok((store, manifest))
}

fn store_of(pool: &PoolRuntime) -> Result<&crate::datastore::DataStore, EngineError> {
    pool.store()
        .ok_or_else(|| EngineError::Store("this engine has no data store".into()))
}

/// Our replica VDIs of `vm_id` in disk order, and the version they all hold
/// (`None` when there are none, or they do not form one whole version).
async fn find_replica(
    pool: &PoolRuntime,
    vm_id: &str,
    manifest: &ads::Manifest,
) -> Result<(Vec<OpaqueRef>, Option<u64>), EngineError> {
    let engine_id = &pool.engine_config().engine_id;
    let all = pool
        .xapi
        .vdi_get_all_records()
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "listing VDIs", e))?;
    let mut found: Vec<(usize, String, OpaqueRef, i64)> = Vec::new();
    for (vdi, record) in all {
        let role = record.other_config.get(tags::ROLE).map(String::as_str);
        if !tags::is_our_restored_vdi(&record, engine_id) || role != Some(tags::ROLE_REPLICA) {
            continue;
        }
        let held = record
            .other_config
            .get(tags::RESTORED_FROM)
            .cloned()
            .unwrap_or_default();
        let Some((version, disk)) = held.rsplit_once('#') else {
            continue;
        };
        let Some((vm, seq)) = version.rsplit_once('@') else {
            continue;
        };
        if vm == vm_id {
            found.push((
                disk.parse().unwrap_or(0),
                seq.to_string(),
                vdi,
                record.virtual_size,
            ));
        }
    }
    found.sort();
    let whole = found.len() == manifest.disks.len()
        && found.iter().enumerate().all(|(i, (disk, seq, _, size))| {
            *disk == i + 1 && *seq == found[0].1 && *size as u64 == manifest.disks[i].size_bytes
        });
    let held = whole
        .then(|| found.first().and_then(|f| f.1.parse().ok()))
        .flatten();
    Ok((found.into_iter().map(|f| f.2).collect(), held))
}

/// Sets what each VDI holds: `<vm>@<state>#<disk>`.
async fn label_vdis(
    pool: &PoolRuntime,
    vdis: &[OpaqueRef],
    vm: &str,
    state: &str,
) -> Result<(), EngineError> {
    for (i, vdi) in vdis.iter().enumerate() {
        pool.xapi
            .vdi_set_other_config_key(vdi, tags::RESTORED_FROM, &format!("{vm}@{state}#{}", i + 1))
            .await
            .map_err(|e| EngineError::xapi(format!("VDI {vdi}"), "labelling a replica", e))?;
    }
    Ok(())
}

/// A `VDI.create` that got no answer (its reply lost) may have made the VDI:
/// the one named `name` carrying this creation's `created_as` id is it, and
/// is used (a warning). When the pool cannot be asked now, it is left to the
/// background removals. `None`: not made (or the error said it failed).
async fn vdi_made_anyway(
    pool: &PoolRuntime,
    name: &str,
    created_as: &str,
    error: &crate::xapi::CallError,
    log: &VmLog,
) -> Option<OpaqueRef> {
    crate::unanswered::made_anyway(
        pool,
        error,
        vdis_created_as(pool, name, created_as),
        || format!("Creating VDI {name:?} got no answer ({error}), but it was made: using it"),
        || crate::reclaim::Leftover::UnansweredDisk {
            name: name.to_string(),
            created_as: created_as.to_string(),
        },
        log,
    )
    .await
    .into_iter()
    .next()
}

/// This engine's VDIs named `name` made by the `VDI.create` with id `created_as`.
pub(crate) async fn vdis_created_as(
    pool: &PoolRuntime,
    name: &str,
    created_as: &str,
) -> Result<Vec<OpaqueRef>, crate::xapi::CallError> {
    let engine_id = &pool.engine_config().engine_id;
    let mut found = Vec::new();
    for vdi in pool.xapi.vdi_get_by_name_label(name).await? {
        let record = pool.xapi.vdi_get_record(&vdi).await?;
        if tags::has_engine_id(&record.other_config, engine_id)
            && record
                .other_config
                .get(tags::CREATED_AS)
                .map(String::as_str)
                == Some(created_as)
        {
            found.push(vdi);
        }
    }
    Ok(found)
}

/// A new VDI for disk `i` of `manifest`, tagged as ours with `role` and with
/// an id unique to this creation, so that a lost reply is resolved.
async fn create_vdi(
    pool: &PoolRuntime,
    manifest: &ads::Manifest,
    i: usize,
    sr: &OpaqueRef,
    role: &str,
    job: &str,
    log: &VmLog,
) -> Result<OpaqueRef, EngineError> {
    let created_as = pool.agent.tokens().unique_id();
    let what = if role == tags::ROLE_REPLICA {
        "replica"
    } else {
        "restored"
    };
    let spec = VdiCreate {
        name_label: format!(
            "{} {what} v{} disk {}",
            manifest.vm_name(),
            manifest.seq,
            i + 1
        ),
        name_description: format!("Written by abd job {job}"),
        sr: sr.clone(),
        virtual_size: manifest.disks[i].size_bytes as i64,
        vdi_type: VdiType::User,
        other_config: [
            (tags::ENGINE_ID, pool.engine_config().engine_id.clone()),
            (tags::ROLE, role.to_string()),
            (tags::JOB, job.to_string()),
            (
                tags::RESTORED_FROM,
                format!("{}@{}#{}", manifest.vm, manifest.seq, i + 1),
            ),
            (tags::CREATED_AS, created_as.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        ..Default::default()
    };
    let vdi = match pool.xapi.vdi_create(&spec).await {
        Ok(vdi) => vdi,
        Err(e) => match vdi_made_anyway(pool, &spec.name_label, &created_as, &e, log).await {
            Some(vdi) => vdi,
            None => return Err(EngineError::xapi(format!("SR {sr}"), "creating a VDI", e)),
        },
    };
    if role == tags::ROLE_REPLICA {
        // A replica VDI is ours only with its own uuid on it (see OWN_UUID);
        // one that cannot be stamped goes at once (we just made it).
        let stamped = async {
            let uuid = pool.xapi.vdi_get_record(&vdi).await?.uuid;
            pool.xapi
                .vdi_set_other_config_key(&vdi, tags::OWN_UUID, &uuid)
                .await
        }
        .await;
        if let Err(e) = stamped {
            let _ = pool.xapi.vdi_destroy(&vdi).await;
            return Err(EngineError::xapi(
                format!("VDI {vdi}"),
                "stamping a replica",
                e,
            ));
        }
    }
    Ok(vdi)
}

/// Plugs `targets` read-write into the delegate (devices 1..n), has its agent
/// write the version (over `base` when the targets hold it), and always unplugs.
async fn write_version(
    pool: &PoolRuntime,
    d: &Delegate,
    manifest: &ads::Manifest,
    base: Option<&ads::Manifest>,
    targets: &[OpaqueRef],
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    store_of(pool)?;
    let (plugged, result) = attach_all(pool, d, targets, VbdMode::RW).await;
    let written = match result {
        Ok(()) => {
            let ip = d.ip.expect("a ready delegate has an address");
            let on_progress = |p: DiskProgress| log.disk_progress("Writing", p);
            let source = RestoreSource { manifest, base };
            let still_running = || crate::delegate::still_running(pool, d);
            // Dropping the write on cancellation cancels the agent's task.
            log.cancel()
                .wait(
                    pool.agent
                        .write_disks(ip, &d.token, source, &on_progress, &still_running),
                )
                .await
                .and_then(|written| written.map_err(EngineError::from))
        }
        Err(e) => Err(e),
    };
    let detached = detach(pool, &plugged).await;
    if let Ok(report) = &written {
        crate::backup::warn_out_of_reach(d, report, log);
    }
    written.and_then(|report| detached.map(|()| report))
}

/// Destroys VDIs this engine created; one that cannot be removed now (its
/// record unreadable, the destroy refused) is retried in the background.
async fn destroy_vdis(pool: &PoolRuntime, vdis: &[OpaqueRef], log: &VmLog) {
    let engine_id = &pool.engine_config().engine_id;
    for vdi in vdis {
        let outcome = match pool.xapi.vdi_get_record(vdi).await {
            Ok(r) if !tags::is_our_restored_vdi(&r, engine_id) => continue,
            Ok(_) => pool.xapi.vdi_destroy(vdi).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            log.warn(format!("VDI {vdi} could not be removed now: {e}"));
            let leftover = crate::reclaim::Leftover::RestoredDisk { vdi: vdi.clone() };
            crate::reclaim::retry_later(pool, leftover, log);
        }
    }
}
