//! Restore: a VM's version from the data store back onto new VDIs in a pool,
//! written by a delegate through read-write VBDs and verified against the
//! digest taken at backup time. The new VDIs are tagged as restored by us and
//! left for the operator; a failed restore removes the VDIs it created.

use crate::agent::{DiskProgress, ReadReport, RestoreSource};
use crate::backup::{attach_as, detach};
use crate::delegate::Delegate;
use crate::error::EngineError;
use crate::pool::{PoolRuntime, VmLog};
use crate::tags;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{VbdMode, VdiCreate, VdiType};

/// Writes `vm_name`'s version (`version`, else its newest) onto new VDIs on `sr`.
pub async fn restore_vm(
    pool: &PoolRuntime,
    d: &Delegate,
    vm_name: &str,
    version: Option<u64>,
    sr: &OpaqueRef,
    job: &str,
    log: &VmLog,
) -> Result<ReadReport, EngineError> {
    let store = pool
        .store()
        .ok_or_else(|| EngineError::Store("this engine has no data store".into()))?;
    let manifest = store
        .manifest(vm_name, version)
        .map_err(|e| EngineError::Store(e.to_string()))?;
    log.ok(format!(
        "Restoring version {} ({} disk(s), taken {})",
        manifest.seq,
        manifest.disks.len(),
        manifest.taken_at
    ));
    let engine_id = pool.engine_config().engine_id.clone();
    let mut created = Vec::new();
    let mut plugged = Vec::new();
    let mut result = Ok(());
    for (i, disk) in manifest.disks.iter().enumerate() {
        let spec = VdiCreate {
            name_label: format!("{vm_name} restored v{} disk {}", manifest.seq, i + 1),
            name_description: format!("Restored by abd job {job}"),
            sr: sr.clone(),
            virtual_size: disk.size_bytes as i64,
            vdi_type: VdiType::User,
            other_config: [
                (tags::ENGINE_ID.to_string(), engine_id.clone()),
                (tags::ROLE.to_string(), tags::ROLE_RESTORED.to_string()),
                (tags::JOB.to_string(), job.to_string()),
                (
                    tags::RESTORED_FROM.to_string(),
                    format!("{vm_name}@{}#{}", manifest.seq, i + 1),
                ),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let step = async {
            let vdi = pool
                .xapi
                .vdi_create(&spec)
                .await
                .map_err(|e| EngineError::xapi(format!("SR {sr}"), "creating a VDI", e))?;
            created.push(vdi.clone());
            let vbd = attach_as(pool, d, &vdi, i + 1, VbdMode::RW).await?;
            plugged.push(vbd);
            Ok::<(), EngineError>(())
        };
        if let Err(e) = step.await {
            result = Err(e);
            break;
        }
    }
    let written = match result {
        Ok(()) => {
            let ip = d.ip.expect("a ready delegate has an address");
            let on_progress = |p: DiskProgress| log.disk_progress("Writing", p);
            pool.agent
                .write_disks(
                    ip,
                    RestoreSource {
                        store,
                        manifest: &manifest,
                    },
                    &on_progress,
                )
                .await
                .map_err(EngineError::from)
        }
        Err(e) => Err(e),
    };
    let detached = detach(pool, &plugged).await;
    let outcome = written.and_then(|report| detached.map(|()| report));
    match &outcome {
        Ok(_) => {
            for vdi in &created {
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
        Err(_) => {
            // No half-restored disks: remove what this restore created.
            for vdi in &created {
                if let Err(e) = pool.xapi.vdi_destroy(vdi).await {
                    log.warn(format!(
                        "VDI {vdi} of the failed restore could not be removed: {e}"
                    ));
                }
            }
        }
    }
    outcome
}
