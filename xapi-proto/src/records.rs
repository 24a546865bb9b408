//! Typed XAPI records with XAPI's exact field names.
//!
//! Records serialize to the JSON-RPC value space (int64 as numbers) and
//! deserialize leniently (int64 as numbers or as the strings XML-RPC carries;
//! missing fields take XAPI's defaults), so one set of types serves both codecs.

use crate::OpaqueRef;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, PickFirst, serde_as};
use std::collections::BTreeMap;

/// A `(string -> string) map` field.
pub type StringMap = BTreeMap<String, String>;

/// `vm_power_state`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum PowerState {
    #[default]
    Halted,
    Paused,
    Running,
    Suspended,
}

impl PowerState {
    /// The lowercase form XAPI uses in error parameters.
    pub fn lowercase(self) -> &'static str {
        match self {
            PowerState::Halted => "halted",
            PowerState::Paused => "paused",
            PowerState::Running => "running",
            PowerState::Suspended => "suspended",
        }
    }
}

/// `vbd_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VbdMode {
    #[default]
    RW,
    RO,
}

/// `vbd_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VbdType {
    #[default]
    Disk,
    CD,
    Floppy,
}

/// `vdi_type` (the subset pools commonly carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VdiType {
    System,
    #[default]
    User,
    Ephemeral,
    Suspend,
    Crashdump,
    #[serde(rename = "ha_statefile")]
    HaStatefile,
    Metadata,
    #[serde(rename = "redo_log")]
    RedoLog,
    Rrd,
    #[serde(rename = "pvs_cache")]
    PvsCache,
    #[serde(rename = "cbt_metadata")]
    CbtMetadata,
}

/// `task_status_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    #[default]
    Pending,
    Success,
    Failure,
    Cancelling,
    Cancelled,
}

/// `pool` record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PoolRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub master: OpaqueRef,
    #[serde(rename = "default_SR")]
    pub default_sr: OpaqueRef,
    #[serde(rename = "suspend_image_SR")]
    pub suspend_image_sr: OpaqueRef,
    #[serde(rename = "crash_dump_SR")]
    pub crash_dump_sr: OpaqueRef,
    pub other_config: StringMap,
    pub tags: Vec<String>,
    /// XAPI's high availability: a failed master is replaced by a member.
    pub ha_enabled: bool,
}

/// `host` record.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HostRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub hostname: String,
    pub address: String,
    pub enabled: bool,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "API_version_major")]
    pub api_version_major: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "API_version_minor")]
    pub api_version_minor: i64,
    #[serde(rename = "API_version_vendor")]
    pub api_version_vendor: String,
    pub software_version: StringMap,
    pub cpu_info: StringMap,
    #[serde(rename = "resident_VMs")]
    pub resident_vms: Vec<OpaqueRef>,
    #[serde(rename = "PIFs")]
    pub pifs: Vec<OpaqueRef>,
    #[serde(rename = "PBDs")]
    pub pbds: Vec<OpaqueRef>,
    pub metrics: OpaqueRef,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_overhead: i64,
    pub other_config: StringMap,
    pub tags: Vec<String>,
}

/// `host_metrics` record.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HostMetricsRecord {
    pub uuid: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_total: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_free: i64,
    pub live: bool,
    pub last_updated: String,
    pub other_config: StringMap,
}

/// `SR` record.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SrRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    #[serde(rename = "type")]
    pub sr_type: String,
    pub content_type: String,
    pub shared: bool,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub physical_size: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub physical_utilisation: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub virtual_allocation: i64,
    #[serde(rename = "VDIs")]
    pub vdis: Vec<OpaqueRef>,
    #[serde(rename = "PBDs")]
    pub pbds: Vec<OpaqueRef>,
    pub other_config: StringMap,
    pub sm_config: StringMap,
    pub tags: Vec<String>,
}

/// `PBD` record: an SR plugged into a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PbdRecord {
    pub uuid: String,
    pub host: OpaqueRef,
    #[serde(rename = "SR")]
    pub sr: OpaqueRef,
    pub device_config: StringMap,
    pub currently_attached: bool,
    pub other_config: StringMap,
}

/// `network` record.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub bridge: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "MTU")]
    pub mtu: i64,
    #[serde(rename = "PIFs")]
    pub pifs: Vec<OpaqueRef>,
    #[serde(rename = "VIFs")]
    pub vifs: Vec<OpaqueRef>,
    pub other_config: StringMap,
    pub purpose: Vec<String>,
    pub tags: Vec<String>,
}

/// `PIF` record: a host's interface on a network.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PifRecord {
    pub uuid: String,
    pub device: String,
    pub network: OpaqueRef,
    pub host: OpaqueRef,
    #[serde(rename = "MAC")]
    pub mac: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "MTU")]
    pub mtu: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "VLAN")]
    pub vlan: i64,
    #[serde(rename = "IP")]
    pub ip: String,
    pub netmask: String,
    pub gateway: String,
    #[serde(rename = "DNS")]
    pub dns: String,
    pub management: bool,
    pub currently_attached: bool,
    pub other_config: StringMap,
}

/// `VM` record (templates, snapshots and the control domain are VMs too).
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VmRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub power_state: PowerState,
    pub allowed_operations: Vec<String>,
    pub current_operations: StringMap,
    pub is_a_template: bool,
    pub is_default_template: bool,
    pub is_a_snapshot: bool,
    pub snapshot_of: OpaqueRef,
    pub snapshots: Vec<OpaqueRef>,
    pub snapshot_time: String,
    pub is_control_domain: bool,
    pub resident_on: OpaqueRef,
    pub affinity: OpaqueRef,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_overhead: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_target: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_static_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_dynamic_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_dynamic_min: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_static_min: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "VCPUs_max")]
    pub vcpus_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "VCPUs_at_startup")]
    pub vcpus_at_startup: i64,
    #[serde(rename = "VIFs")]
    pub vifs: Vec<OpaqueRef>,
    #[serde(rename = "VBDs")]
    pub vbds: Vec<OpaqueRef>,
    pub guest_metrics: OpaqueRef,
    pub metrics: OpaqueRef,
    pub other_config: StringMap,
    pub xenstore_data: StringMap,
    pub platform: StringMap,
    pub tags: Vec<String>,
    pub blocked_operations: StringMap,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub domid: i64,
    pub domain_type: String,
    pub ha_always_run: bool,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub user_version: i64,
}

/// `VM_guest_metrics` record (what the guest agent reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VmGuestMetricsRecord {
    pub uuid: String,
    pub os_version: StringMap,
    pub networks: StringMap,
    pub other: StringMap,
    pub live: bool,
    pub last_updated: String,
    pub other_config: StringMap,
}

/// `VIF` record.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VifRecord {
    pub uuid: String,
    pub device: String,
    pub network: OpaqueRef,
    #[serde(rename = "VM")]
    pub vm: OpaqueRef,
    #[serde(rename = "MAC")]
    pub mac: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "MTU")]
    pub mtu: i64,
    pub currently_attached: bool,
    pub other_config: StringMap,
    pub qos_algorithm_type: String,
    pub qos_algorithm_params: StringMap,
    #[serde(rename = "MAC_autogenerated")]
    pub mac_autogenerated: bool,
}

/// `VBD` record: a disk (VDI) attached to a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VbdRecord {
    pub uuid: String,
    #[serde(rename = "VM")]
    pub vm: OpaqueRef,
    #[serde(rename = "VDI")]
    pub vdi: OpaqueRef,
    pub device: String,
    pub userdevice: String,
    pub bootable: bool,
    pub mode: VbdMode,
    #[serde(rename = "type")]
    pub vbd_type: VbdType,
    pub unpluggable: bool,
    pub empty: bool,
    pub currently_attached: bool,
    pub other_config: StringMap,
    pub qos_algorithm_type: String,
    pub qos_algorithm_params: StringMap,
}

/// `VDI` record: a virtual disk on an SR.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VdiRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    #[serde(rename = "SR")]
    pub sr: OpaqueRef,
    #[serde(rename = "VBDs")]
    pub vbds: Vec<OpaqueRef>,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub virtual_size: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub physical_utilisation: i64,
    #[serde(rename = "type")]
    pub vdi_type: VdiType,
    pub sharable: bool,
    pub read_only: bool,
    pub managed: bool,
    pub missing: bool,
    pub is_a_snapshot: bool,
    pub snapshot_of: OpaqueRef,
    pub snapshots: Vec<OpaqueRef>,
    pub snapshot_time: String,
    pub cbt_enabled: bool,
    pub other_config: StringMap,
    pub sm_config: StringMap,
    pub tags: Vec<String>,
}

/// `task` record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TaskRecord {
    pub uuid: String,
    pub name_label: String,
    pub name_description: String,
    pub status: TaskStatus,
    pub progress: f64,
    pub created: String,
    pub finished: String,
    pub resident_on: OpaqueRef,
    #[serde(rename = "type")]
    pub result_type: String,
    pub result: String,
    pub error_info: Vec<String>,
    pub other_config: StringMap,
}

/// The record argument of `VM.create`: every field XAPI requires there, plus
/// the names and `domain_type`. Deserialized from a VM's record, it is that
/// VM's configuration as `VM.create` takes it (what a replica is made from).
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VmCreate {
    pub name_label: String,
    pub name_description: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub user_version: i64,
    pub is_a_template: bool,
    pub affinity: OpaqueRef,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_static_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_dynamic_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_dynamic_min: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub memory_static_min: i64,
    #[serde(rename = "VCPUs_params")]
    pub vcpus_params: StringMap,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "VCPUs_max")]
    pub vcpus_max: i64,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "VCPUs_at_startup")]
    pub vcpus_at_startup: i64,
    pub actions_after_shutdown: String,
    pub actions_after_reboot: String,
    pub actions_after_crash: String,
    #[serde(rename = "PV_bootloader")]
    pub pv_bootloader: String,
    #[serde(rename = "PV_kernel")]
    pub pv_kernel: String,
    #[serde(rename = "PV_ramdisk")]
    pub pv_ramdisk: String,
    #[serde(rename = "PV_args")]
    pub pv_args: String,
    #[serde(rename = "PV_bootloader_args")]
    pub pv_bootloader_args: String,
    #[serde(rename = "PV_legacy_args")]
    pub pv_legacy_args: String,
    #[serde(rename = "HVM_boot_policy")]
    pub hvm_boot_policy: String,
    #[serde(rename = "HVM_boot_params")]
    pub hvm_boot_params: StringMap,
    pub platform: StringMap,
    #[serde(rename = "PCI_bus")]
    pub pci_bus: String,
    pub other_config: StringMap,
    pub recommendations: String,
    pub domain_type: String,
    pub tags: Vec<String>,
}

impl VmCreate {
    /// Fields `VM.create` refuses a record without (XAPI's datamodel).
    pub const REQUIRED_FIELDS: [&'static str; 25] = [
        "user_version",
        "is_a_template",
        "affinity",
        "memory_static_max",
        "memory_dynamic_max",
        "memory_dynamic_min",
        "memory_static_min",
        "VCPUs_params",
        "VCPUs_max",
        "VCPUs_at_startup",
        "actions_after_shutdown",
        "actions_after_reboot",
        "actions_after_crash",
        "PV_bootloader",
        "PV_kernel",
        "PV_ramdisk",
        "PV_args",
        "PV_bootloader_args",
        "PV_legacy_args",
        "HVM_boot_policy",
        "HVM_boot_params",
        "platform",
        "PCI_bus",
        "other_config",
        "recommendations",
    ];
}

/// The record argument of `VIF.create`.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VifCreate {
    pub device: String,
    pub network: OpaqueRef,
    #[serde(rename = "VM")]
    pub vm: OpaqueRef,
    #[serde(rename = "MAC")]
    pub mac: String,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    #[serde(rename = "MTU")]
    pub mtu: i64,
    pub other_config: StringMap,
    pub qos_algorithm_type: String,
    pub qos_algorithm_params: StringMap,
}

/// The record argument of `VBD.create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VbdCreate {
    #[serde(rename = "VM")]
    pub vm: OpaqueRef,
    #[serde(rename = "VDI")]
    pub vdi: OpaqueRef,
    pub userdevice: String,
    pub bootable: bool,
    pub mode: VbdMode,
    #[serde(rename = "type")]
    pub vbd_type: VbdType,
    pub unpluggable: bool,
    pub empty: bool,
    pub other_config: StringMap,
    pub qos_algorithm_type: String,
    pub qos_algorithm_params: StringMap,
}

/// The record argument of `VDI.create`.
#[serde_as]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VdiCreate {
    pub name_label: String,
    pub name_description: String,
    #[serde(rename = "SR")]
    pub sr: OpaqueRef,
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub virtual_size: i64,
    #[serde(rename = "type")]
    pub vdi_type: VdiType,
    pub sharable: bool,
    pub read_only: bool,
    pub other_config: StringMap,
    pub sm_config: StringMap,
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_fields_accept_strings_and_numbers() {
        let from_xmlrpc: VdiRecord =
            serde_json::from_value(serde_json::json!({"virtual_size": "1073741824"})).unwrap();
        let from_jsonrpc: VdiRecord =
            serde_json::from_value(serde_json::json!({"virtual_size": 1073741824})).unwrap();
        assert_eq!(from_xmlrpc.virtual_size, 1 << 30);
        assert_eq!(from_jsonrpc, from_xmlrpc);
    }

    /// XML-RPC carries every int64 as a string: each record must read back
    /// from its own serialization with all numbers turned into strings.
    fn reads_with_ints_as_strings<
        R: Serialize + serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
    >() {
        fn stringify(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Number(n) if n.is_i64() => {
                    serde_json::Value::String(n.to_string())
                }
                serde_json::Value::Object(m) => {
                    m.into_iter().map(|(k, v)| (k, stringify(v))).collect()
                }
                serde_json::Value::Array(a) => a.into_iter().map(stringify).collect(),
                other => other,
            }
        }
        let as_xmlrpc = stringify(serde_json::to_value(R::default()).unwrap());
        let back: R = serde_json::from_value(as_xmlrpc)
            .unwrap_or_else(|e| panic!("{}: {e}", std::any::type_name::<R>()));
        assert_eq!(back, R::default());
    }

    #[test]
    fn every_record_reads_int64_as_strings() {
        reads_with_ints_as_strings::<PoolRecord>();
        reads_with_ints_as_strings::<HostRecord>();
        reads_with_ints_as_strings::<HostMetricsRecord>();
        reads_with_ints_as_strings::<SrRecord>();
        reads_with_ints_as_strings::<PbdRecord>();
        reads_with_ints_as_strings::<NetworkRecord>();
        reads_with_ints_as_strings::<PifRecord>();
        reads_with_ints_as_strings::<VmRecord>();
        reads_with_ints_as_strings::<VmGuestMetricsRecord>();
        reads_with_ints_as_strings::<VifRecord>();
        reads_with_ints_as_strings::<VbdRecord>();
        reads_with_ints_as_strings::<VdiRecord>();
        reads_with_ints_as_strings::<TaskRecord>();
        reads_with_ints_as_strings::<VifCreate>();
        reads_with_ints_as_strings::<VbdCreate>();
    }

    #[test]
    fn field_names_are_xapis() {
        let v = serde_json::to_value(VmRecord::default()).unwrap();
        for key in ["VIFs", "VBDs", "VCPUs_max", "power_state", "xenstore_data"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["power_state"], "Halted");
        assert_eq!(v["snapshot_of"], "OpaqueRef:NULL");
    }
}
