//! The work a delegate does for one protected VM: snapshot the VM, hot-plug the
//! snapshot's disks into the delegate, let the agent read them, detach, and
//! remove the snapshot. The snapshot is the engine's own and never outlives the VM's turn.

use crate::agent::{DiskProgress, ReadReport, StoreTarget};
use crate::delegate::Delegate;
use crate::error::EngineError;
use crate::joblog::{LineStatus, format_bytes, format_duration};
use crate::pool::{PoolRuntime, VmLog};
use crate::tags;
use tokio::time::Instant;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{VbdCreate, VbdMode, VbdType};

/// Backs up one VM through a ready delegate.
pub async fn back_up_vm(
    pool: &PoolRuntime,
    d: &Delegate,
    vm: &OpaqueRef,
    vm_name: &str,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let x = &pool.xapi;
    log.progress("Taking hypervisor snapshot");
    let started = Instant::now();
    let snap = x
        .vm_snapshot(vm, &format!("abd {job} {vm_name}"))
        .await
        .map_err(|e| EngineError::xapi(format!("VM {vm} {vm_name:?}"), "snapshot", e))?;
    let tagged = tag_snapshot(pool, &snap, job).await;
    let result = match tagged {
        Ok(()) => {
            log.ok(format!(
                "Snapshot taken ({})",
                format_duration(started.elapsed())
            ));
            attach_and_read(pool, d, &snap, vm_name, log).await
        }
        Err(e) => Err(e),
    };
    match remove_snapshot(pool, &snap).await {
        Ok(()) => log.ok("Snapshot removed"),
        Err(e) => log.fail(format!("Snapshot {snap} could not be removed: {e}")),
    }
    result
}

async fn tag_snapshot(pool: &PoolRuntime, snap: &OpaqueRef, job: &str) -> Result<(), EngineError> {
    let engine_id = pool.engine_config().engine_id.clone();
    for (key, value) in [
        (tags::ENGINE_ID, engine_id.as_str()),
        (tags::ROLE, tags::ROLE_SNAPSHOT),
        (tags::JOB, job),
    ] {
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
    vm_name: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let x = &pool.xapi;
    let record = x
        .vm_get_record(snap)
        .await
        .map_err(|e| EngineError::xapi(format!("snapshot {snap}"), "reading", e))?;
    let mut disks = Vec::new();
    for vbd in &record.vbds {
        let b = x
            .vbd_get_record(vbd)
            .await
            .map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "reading", e))?;
        if !b.empty && b.vbd_type == VbdType::Disk {
            disks.push((b.userdevice.parse::<u32>().unwrap_or(u32::MAX), b.vdi));
        }
    }
    disks.sort();
    let mut plugged = Vec::new();
    let mut result = Ok(());
    for (i, (_, vdi)) in disks.iter().enumerate() {
        match attach(pool, d, vdi, i + 1).await {
            Ok(vbd) => plugged.push(vbd),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let read = match result {
        Ok(()) => {
            let ip = d.ip.expect("a ready delegate has an address");
            let on_progress = |p: DiskProgress| {
                let status = if p.percent >= 100 {
                    LineStatus::Ok
                } else {
                    LineStatus::InProgress
                };
                log.line(
                    status,
                    format!(
                        "Processing disk {} [{}]: {}%",
                        p.disk_index,
                        format_bytes(p.size_bytes),
                        p.percent
                    ),
                );
            };
            let previous = match pool.store() {
                Some(store) => store
                    .latest(vm_name)
                    .map_err(|e| EngineError::Store(e.to_string()))?,
                None => None,
            };
            let target = pool.store().map(|store| StoreTarget {
                store,
                vm_name,
                previous: previous.as_ref(),
            });
            pool.agent
                .read_disks(ip, target, &on_progress)
                .await
                .map_err(EngineError::from)
        }
        Err(e) => Err(e),
    };
    let detached = detach(pool, &plugged).await;
    let report = read?;
    detached?;
    if let Some(store) = pool.store() {
        commit_version(pool, store, snap, vm_name, &report, log).await?;
    }
    Ok(report)
}

/// Commits the VM's new version once every disk is stored and detached, and
/// logs what the backup read, sent and stored.
async fn commit_version(
    pool: &PoolRuntime,
    store: &crate::datastore::DataStore,
    snap: &OpaqueRef,
    vm_name: &str,
    report: &ReadReport,
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
    let previous = store
        .latest(vm_name)
        .map_err(|e| EngineError::Store(e.to_string()))?;
    let snapshot_uuid = pool
        .xapi
        .vm_get_record(snap)
        .await
        .map(|r| r.uuid)
        .unwrap_or_default();
    let disks_meta: Vec<serde_json::Value> = report
        .written
        .iter()
        .map(|d| serde_json::json!({ "userdevice": d.userdevice, "snapshot_vdi_uuid": d.vdi_uuid }))
        .collect();
    let manifest = store
        .commit(ads::VersionDraft {
            vm: vm_name.to_string(),
            taken_at: crate::joblog::format_clock(pool.shared.now().as_millis() as u64),
            parent_seq: previous.map(|p| p.seq),
            vm_record: serde_json::json!({
                "pool": pool.config.name,
                "snapshot_uuid": snapshot_uuid,
                "disks": disks_meta,
            }),
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

async fn attach(
    pool: &PoolRuntime,
    d: &Delegate,
    vdi: &OpaqueRef,
    device: usize,
) -> Result<OpaqueRef, EngineError> {
    let spec = VbdCreate {
        vm: d.vm.clone(),
        vdi: vdi.clone(),
        userdevice: device.to_string(),
        bootable: false,
        mode: VbdMode::RO,
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
        let _ = pool.xapi.vbd_destroy(&vbd).await;
        return Err(EngineError::xapi(d.label(), "plugging a snapshot disk", e));
    }
    Ok(vbd)
}

/// Unplugs and destroys the work VBDs; checks each is really unplugged first.
async fn detach(pool: &PoolRuntime, vbds: &[OpaqueRef]) -> Result<(), EngineError> {
    let mut first_error = None;
    for vbd in vbds {
        let step = async {
            pool.xapi.vbd_unplug(vbd).await?;
            let after = pool.xapi.vbd_get_record(vbd).await?;
            if after.currently_attached {
                return Err(crate::xapi::CallError::Transport(
                    "VBD still attached after unplug".into(),
                ));
            }
            pool.xapi.vbd_destroy(vbd).await
        };
        if let Err(e) = step.await {
            first_error.get_or_insert(EngineError::xapi(format!("VBD {vbd}"), "detaching", e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Destroys a snapshot this engine took, with its snapshot disks.
pub(crate) async fn remove_snapshot(
    pool: &PoolRuntime,
    snap: &OpaqueRef,
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let record = x
        .vm_get_record(snap)
        .await
        .map_err(|e| EngineError::xapi(format!("snapshot {snap}"), "reading", e))?;
    if !tags::is_our_snapshot(&record, &pool.engine_config().engine_id) {
        return Err(EngineError::NotOurs {
            action: "destroy",
            object: format!("VM {snap} {:?}", record.name_label),
        });
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
            vdis.push(b.vdi);
        }
    }
    let object = format!("snapshot {snap}");
    let fail = |step: &'static str| {
        let object = object.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    x.vm_destroy(snap).await.map_err(fail("destroy"))?;
    for vdi in vdis {
        x.vdi_destroy(&vdi)
            .await
            .map_err(fail("destroying a snapshot disk"))?;
    }
    Ok(())
}
