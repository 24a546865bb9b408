//! The halted VM that makes a replica's disks a VM in the target pool. It is
//! made from the configuration recorded with the version, its start is
//! blocked (a replica is a copy to fail over to or clone, not to run by
//! accident), its VBDs are the replica VDIs, and its VIFs sit on the networks
//! of the same names (or on the network the job names). Later runs keep the
//! same VM and only fix its disks, so its uuid stays valid for the operator.

use crate::error::EngineError;
use crate::pool::{PoolRuntime, VmLog};
use crate::tags;
use crate::vm_config::{VifConfig, VmConfig};
use std::collections::BTreeMap;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{
    NetworkRecord, PowerState, VbdCreate, VbdMode, VbdType, VifCreate, VmCreate, VmRecord,
};

/// What a replica VM's blocked start says to whoever tries it.
pub const START_BLOCKED: &str =
    "This is a replica kept by abd: clone it to use it, or remove this block to fail over";

/// Where a replica VM's interfaces go in the target pool.
#[derive(Clone, Debug, Default)]
pub struct ReplicaNetworks {
    /// The pool's networks by name (the first by ref when names repeat).
    pub by_name: BTreeMap<String, OpaqueRef>,
    /// For interfaces whose network has no namesake (the job's `network`).
    pub fallback: Option<OpaqueRef>,
}

impl ReplicaNetworks {
    /// The networks of a pool, without a fallback.
    pub fn new(networks: &BTreeMap<OpaqueRef, NetworkRecord>) -> Self {
        let mut by_name = BTreeMap::new();
        for (network, record) in networks {
            by_name
                .entry(record.name_label.clone())
                .or_insert_with(|| network.clone());
        }
        Self {
            by_name,
            fallback: None,
        }
    }

    fn for_vif(&self, vif: &VifConfig) -> Option<&OpaqueRef> {
        self.by_name.get(&vif.network).or(self.fallback.as_ref())
    }
}

/// The name a replica VM of the VM `vm_name` is created with.
fn replica_name(vm_name: &str) -> String {
    format!("{vm_name} (replica)")
}

/// Our replica VM of `manifest`'s VM in this pool, if there is one: looked
/// for by the name it was created with (a few records), else, since an
/// operator may have renamed it, among all the pool's VMs. It is known by the
/// VM's id in the data store (`abd:replica-of`), never by name. A replica VM
/// an engine created but died before stamping with its uuid is adopted here:
/// stamped, then fixed up by [`ensure`] like any other.
pub async fn find(
    pool: &PoolRuntime,
    manifest: &ads::Manifest,
    log: &VmLog,
) -> Result<Option<(OpaqueRef, VmRecord)>, EngineError> {
    let vm_id = manifest.vm.as_str();
    let named = pool
        .xapi
        .vm_get_by_name_label(&replica_name(manifest.vm_name()))
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "finding VMs", e))?;
    for vm in named {
        if let Ok(record) = pool.xapi.vm_get_record(&vm).await
            && is_replica_of(&record, pool, vm_id)
        {
            return Ok(Some((vm, record)));
        }
    }
    let all = pool
        .xapi
        .vm_get_all_records()
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "listing VMs", e))?;
    if let Some((vm, record)) = all.iter().find(|(_, r)| is_replica_of(r, pool, vm_id)) {
        return Ok(Some((vm.clone(), record.clone())));
    }
    let engine_id = &pool.engine_config().engine_id;
    let Some((vm, mut record)) = all.into_iter().find(|(_, r)| {
        tags::is_our_unstamped_replica_vm(r, engine_id)
            && r.other_config.get(tags::REPLICA_OF).map(String::as_str) == Some(vm_id)
    }) else {
        return Ok(None);
    };
    pool.xapi
        .vm_set_other_config_key(&vm, tags::OWN_UUID, &record.uuid)
        .await
        .map_err(|e| EngineError::xapi(format!("replica VM of {vm_id}"), "stamping", e))?;
    record
        .other_config
        .insert(tags::OWN_UUID.to_string(), record.uuid.clone());
    log.ok(format!(
        "Adopting replica VM {:?}, which an interrupted run created but never finished",
        record.name_label
    ));
    Ok(Some((vm, record)))
}

/// [`find`], reading only `known`'s record when it was found before (and is
/// still ours), without listing every VM of the pool again.
pub async fn find_again(
    pool: &PoolRuntime,
    manifest: &ads::Manifest,
    known: Option<&OpaqueRef>,
    log: &VmLog,
) -> Result<Option<(OpaqueRef, VmRecord)>, EngineError> {
    if let Some(vm) = known
        && let Ok(record) = pool.xapi.vm_get_record(vm).await
        && is_replica_of(&record, pool, &manifest.vm)
    {
        return Ok(Some((vm.clone(), record)));
    }
    find(pool, manifest, log).await
}

/// Our replica VM of the VM whose id in the data store is `vm_id`.
fn is_replica_of(record: &VmRecord, pool: &PoolRuntime, vm_id: &str) -> bool {
    tags::is_our_replica_vm(record, &pool.engine_config().engine_id)
        && record
            .other_config
            .get(tags::REPLICA_OF)
            .map(String::as_str)
            == Some(vm_id)
}

/// Makes the replica VM of `manifest` hold `vdis` (in disk order): creates it
/// when `existing` is `None`, else fixes its disks and labels.
pub async fn ensure(
    pool: &PoolRuntime,
    existing: Option<(OpaqueRef, VmRecord)>,
    manifest: &ads::Manifest,
    vdis: &[OpaqueRef],
    networks: &ReplicaNetworks,
    job: &str,
    log: &VmLog,
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let holds = format!("{}@{}", manifest.vm, manifest.seq);
    let description = format!(
        "Replica of {} (uuid {}) at version {} (taken {}), kept by abd job {job}",
        manifest.vm_name(),
        manifest.vm,
        manifest.seq,
        manifest.taken_at
    );
    let failed = |what| failed_on(manifest, what);
    let engine_id = &pool.engine_config().engine_id;
    let (vm, attached) = match existing {
        Some((vm, _)) => {
            // Read again: rewriting the disks whole took their VBDs with them.
            let record = x.vm_get_record(&vm).await.map_err(failed("reading"))?;
            let mut attached = Vec::new();
            for vbd in &record.vbds {
                let r = x
                    .vbd_get_record(vbd)
                    .await
                    .map_err(failed("reading a VBD"))?;
                if r.empty {
                    continue;
                }
                if vdis.contains(&r.vdi) {
                    attached.push(r.vdi);
                    continue;
                }
                // A disk of ours that is no longer the replica's goes; any
                // other disk (the operator's) stays.
                let stale = x
                    .vdi_get_record(&r.vdi)
                    .await
                    .is_ok_and(|d| tags::is_our_restored_vdi(&d, engine_id));
                if stale {
                    x.vbd_destroy(vbd).await.map_err(failed("removing a VBD"))?;
                }
            }
            // An engine that died right after creating it left it unblocked
            // and without interfaces (`in_use` knows such a VM by its
            // having no disks yet).
            if !record.blocked_operations.contains_key("start") {
                block_start(pool, &vm).await?;
            }
            sync_vifs(pool, &vm, &record.vifs, manifest, networks, log).await?;
            x.vm_set_name_description(&vm, &description)
                .await
                .map_err(failed("labelling"))?;
            x.vm_set_other_config_key(&vm, tags::RESTORED_FROM, &holds)
                .await
                .map_err(failed("labelling"))?;
            (vm, attached)
        }
        None => {
            let vm = create(pool, manifest, &holds, &description, networks, job, log).await?;
            (vm, Vec::new())
        }
    };
    for (i, vdi) in vdis.iter().enumerate() {
        if attached.contains(vdi) {
            continue;
        }
        // Where the disk sat in the source VM (versions that did not record
        // it: in disk order from 0, the first bootable).
        let recorded = &manifest.vm_record["disks"][i];
        let userdevice = recorded["vm_userdevice"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map_or_else(|| i.to_string(), str::to_string);
        let spec = VbdCreate {
            vm: vm.clone(),
            vdi: vdi.clone(),
            userdevice,
            bootable: recorded["bootable"].as_bool().unwrap_or(i == 0),
            mode: VbdMode::RW,
            vbd_type: VbdType::Disk,
            unpluggable: true,
            ..Default::default()
        };
        x.vbd_create(&spec)
            .await
            .map_err(failed("attaching a disk"))?;
    }
    Ok(())
}

/// Creates the replica VM (no disks yet), its start blocked, with its VIFs.
async fn create(
    pool: &PoolRuntime,
    manifest: &ads::Manifest,
    holds: &str,
    description: &str,
    networks: &ReplicaNetworks,
    job: &str,
    log: &VmLog,
) -> Result<OpaqueRef, EngineError> {
    let x = &pool.xapi;
    let failed = |what| failed_on(manifest, what);
    let mut record = match VmConfig::of_manifest(manifest) {
        Some(config) => config.record,
        None => {
            log.warn(format!(
                "Version {} records no VM configuration (an older engine wrote it): \
                 the replica VM gets 1 vCPU and 1 GiB and no network interface",
                manifest.seq
            ));
            minimal_config()
        }
    };
    record.name_label = replica_name(manifest.vm_name());
    record.name_description = description.to_string();
    let engine_id = &pool.engine_config().engine_id;
    for (key, value) in [
        (tags::JOB, job),
        (tags::REPLICA_OF, manifest.vm.as_str()),
        (tags::RESTORED_FROM, holds),
    ]
    .into_iter()
    .chain(tags::ownership(engine_id, tags::ROLE_REPLICA_VM))
    {
        record
            .other_config
            .insert(key.to_string(), value.to_string());
    }
    let vm = x.vm_create(&record).await.map_err(failed("creating"))?;
    // Ours only once it carries its own uuid (see OWN_UUID).
    let uuid = x.vm_get_record(&vm).await.map_err(failed("reading"))?.uuid;
    x.vm_set_other_config_key(&vm, tags::OWN_UUID, &uuid)
        .await
        .map_err(failed("stamping"))?;
    block_start(pool, &vm).await?;
    add_vifs(pool, &vm, manifest, networks, log).await?;
    log.ok(format!(
        "Replica VM {:?} created (halted, start blocked)",
        record.name_label
    ));
    Ok(vm)
}

/// The error of `what` failing on the replica VM of `manifest`'s VM.
fn failed_on(
    manifest: &ads::Manifest,
    what: &'static str,
) -> impl FnOnce(crate::xapi::CallError) -> EngineError {
    let object = format!("replica VM of {}", manifest.vm_name());
    move |e| EngineError::xapi(object, what, e)
}

/// Blocks the replica's start: it is a copy, not to be run by accident.
async fn block_start(pool: &PoolRuntime, vm: &OpaqueRef) -> Result<(), EngineError> {
    // VM.create ignores blocked_operations: they are set on the new VM.
    for operation in ["start", "start_on"] {
        pool.xapi
            .vm_add_to_blocked_operations(vm, operation, START_BLOCKED)
            .await
            .map_err(|e| EngineError::xapi(format!("replica VM {vm}"), "blocking its start", e))?;
    }
    Ok(())
}

/// Gives a new replica the recorded VM's interfaces.
async fn add_vifs(
    pool: &PoolRuntime,
    vm: &OpaqueRef,
    manifest: &ads::Manifest,
    networks: &ReplicaNetworks,
    log: &VmLog,
) -> Result<(), EngineError> {
    sync_vifs(pool, vm, &[], manifest, networks, log).await
}

/// Makes the replica's interfaces those of the recorded VM, each on the
/// network of the same name (or the job's); one with nowhere to go is left
/// out, and said so. Interfaces of ours the source no longer has, or whose
/// network changed, go; an interface someone else added stays.
async fn sync_vifs(
    pool: &PoolRuntime,
    vm: &OpaqueRef,
    existing: &[OpaqueRef],
    manifest: &ads::Manifest,
    networks: &ReplicaNetworks,
    log: &VmLog,
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let failed = |what| move |e| EngineError::xapi(format!("replica VM {vm}"), what, e);
    let engine_id = &pool.engine_config().engine_id;
    let recorded = VmConfig::of_manifest(manifest)
        .map(|c| c.vifs)
        .unwrap_or_default();
    let wanted: Vec<(&VifConfig, Option<&OpaqueRef>)> = recorded
        .iter()
        .map(|vif| (vif, networks.for_vif(vif)))
        .collect();
    let mut devices_in_use = Vec::new();
    for vif in existing {
        let r = x
            .vif_get_record(vif)
            .await
            .map_err(failed("reading an interface"))?;
        let still_wanted = wanted
            .iter()
            .any(|(w, net)| w.device == r.device && *net == Some(&r.network) && w.mac == r.mac);
        if still_wanted || !tags::has_engine_id(&r.other_config, engine_id) {
            devices_in_use.push(r.device);
            continue;
        }
        x.vif_destroy(vif)
            .await
            .map_err(failed("removing a network interface"))?;
        log.ok(format!(
            "Interface {} of the replica no longer matches the source's: removed",
            r.device
        ));
    }
    for (vif, network) in wanted {
        if devices_in_use.contains(&vif.device) {
            continue;
        }
        let Some(network) = network else {
            log.ok(format!(
                "Interface {} was on network {:?}, which pool {} lacks: the replica has no \
                 interface {} (name a network for the job to map it to)",
                vif.device,
                vif.network,
                pool.name(),
                vif.device
            ));
            continue;
        };
        let spec = VifCreate {
            device: vif.device.clone(),
            network: network.clone(),
            vm: vm.clone(),
            mac: vif.mac.clone(),
            mtu: vif.mtu,
            other_config: tags::ownership(engine_id, tags::ROLE_REPLICA_VIF)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        x.vif_create(&spec)
            .await
            .map_err(failed("adding a network interface"))?;
    }
    Ok(())
}

/// A configuration for a version that recorded none: small and bootable.
fn minimal_config() -> VmCreate {
    const GIB: i64 = 1 << 30;
    VmCreate {
        memory_static_max: GIB,
        memory_dynamic_max: GIB,
        memory_dynamic_min: GIB,
        memory_static_min: GIB,
        vcpus_max: 1,
        vcpus_at_startup: 1,
        actions_after_shutdown: "destroy".into(),
        actions_after_reboot: "restart".into(),
        actions_after_crash: "restart".into(),
        hvm_boot_policy: "BIOS order".into(),
        hvm_boot_params: [("order".to_string(), "dc".to_string())].into(),
        ..Default::default()
    }
}

/// The warning for a replica VM that [`in_use`] finds running.
pub fn left_alone(record: &VmRecord) -> String {
    let state = match record.power_state {
        PowerState::Halted => "no longer start-blocked".to_string(),
        other => other.lowercase().to_string(),
    };
    format!(
        "The replica VM {:?} is {state} (failed over to?): its disks are left as they are",
        record.name_label
    )
}

/// True when someone failed over to the replica VM: it runs, or its start
/// is no longer blocked although it has its disks (an operator removed the
/// block; it may have run and been shut down since). Its disks are then the
/// operator's, and replication leaves them alone for good.
pub fn in_use(record: &VmRecord) -> bool {
    record.power_state != PowerState::Halted
        || (!record.blocked_operations.contains_key("start") && !record.vbds.is_empty())
}
