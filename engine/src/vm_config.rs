//! What a backup version records of its VM's configuration, so that a
//! replication can rebuild the VM around its disks in another pool: the VM
//! record as `VM.create` takes it, and each network interface with the name of
//! its network (refs mean nothing in another pool).

use crate::error::EngineError;
use crate::pool::PoolRuntime;
use serde::{Deserialize, Serialize};
use xapi_proto::OpaqueRef;
use xapi_proto::records::{VmCreate, VmRecord};

/// Key of the configuration in a manifest's `vm_record`.
pub const MANIFEST_KEY: &str = "config";

/// A VM's configuration, as recorded with each of its versions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The VM record's configuration fields (names as the VM had them).
    pub record: VmCreate,
    /// Network interfaces, by device.
    pub vifs: Vec<VifConfig>,
}

/// One network interface of a recorded VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifConfig {
    pub device: String,
    pub mac: String,
    pub mtu: i64,
    /// `name_label` of the network it was on.
    pub network: String,
}

impl VmConfig {
    /// The configuration a manifest's `vm_record` holds, if it holds one
    /// (versions written before configurations were recorded do not).
    pub fn of_manifest(manifest: &ads::Manifest) -> Option<Self> {
        serde_json::from_value(manifest.vm_record.get(MANIFEST_KEY)?.clone()).ok()
    }
}

/// Reads the configuration of `snap` (whose record is `snap_record`), a
/// snapshot of the VM `vm_name`: the source VM's name, the snapshot's settings
/// (a snapshot keeps the VM's), and none of our own `other_config` keys.
pub async fn read(
    pool: &PoolRuntime,
    snap: &OpaqueRef,
    snap_record: &VmRecord,
    vm_name: &str,
) -> Result<VmConfig, EngineError> {
    let x = &pool.xapi;
    let reading = |e| EngineError::xapi(format!("snapshot {snap}"), "reading its configuration", e);
    let mut record = x.vm_get_config(snap).await.map_err(reading)?;
    record.name_label = vm_name.to_string();
    record.is_a_template = false;
    record.affinity = OpaqueRef::null();
    record
        .other_config
        .retain(|key, _| !key.starts_with("abd:") && key != "mac_seed");
    let mut vifs = Vec::new();
    for vif in &snap_record.vifs {
        let r = x.vif_get_record(vif).await.map_err(reading)?;
        let network = x
            .network_get_name_label(&r.network)
            .await
            .map_err(reading)?;
        vifs.push(VifConfig {
            device: r.device,
            mac: r.mac,
            mtu: r.mtu,
            network,
        });
    }
    vifs.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(VmConfig { record, vifs })
}
