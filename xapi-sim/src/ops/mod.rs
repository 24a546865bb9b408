//! XAPI semantics: what each call does to the model, with XAPI's error codes.

mod devices;
mod guest;
mod vm;

use crate::model::PoolModel;
use crate::rng::SimRng;
use crate::schedule::Schedule;
use crate::spec::{GuestKind, WorldSpec};
use crate::time::SimTime;
use crate::{AttachedDisk, EventLog, PoolId};
use std::net::Ipv4Addr;
use xapi_proto::records::{PowerState, VmRecord};
use xapi_proto::{OpaqueRef, XapiError};

/// Bandwidth of an SR the spec gives none (bytes per second).
pub(crate) const DEFAULT_SR_BANDWIDTH: f64 = 100.0 * 1024.0 * 1024.0;

pub(crate) use crate::model::build::new_ids;

/// Everything one call or scheduled event may touch.
pub(crate) struct Ctx<'a> {
    pub m: &'a mut PoolModel,
    pub rng: &'a mut SimRng,
    pub log: &'a mut EventLog,
    pub schedule: &'a mut Schedule,
    pub spec: &'a WorldSpec,
    pub faults: &'a mut crate::faults::Faults,
    pub pool: PoolId,
    pub now: SimTime,
}

impl Ctx<'_> {
    /// Records a state change in the event log.
    pub(crate) fn log(&mut self, text: String) {
        self.log.push(self.now, &self.m.name, text);
    }

    pub(crate) fn vm(&self, vm: &OpaqueRef) -> Result<&VmRecord, XapiError> {
        self.m
            .vms
            .get(vm)
            .ok_or_else(|| XapiError::handle_invalid("VM", vm.as_str()))
    }

    pub(crate) fn vm_mut(&mut self, vm: &OpaqueRef) -> Result<&mut VmRecord, XapiError> {
        self.m
            .vms
            .get_mut(vm)
            .ok_or_else(|| XapiError::handle_invalid("VM", vm.as_str()))
    }

    /// `"name" OpaqueRef:...` for log lines.
    pub(crate) fn vm_label(&self, vm: &OpaqueRef) -> String {
        match self.m.vms.get(vm) {
            Some(r) => format!("{:?}", r.name_label),
            None => vm.to_string(),
        }
    }
}

/// What answers an appliance-protocol request sent to an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplianceAnswer {
    /// An appliance answered: its own VM uuid, and the `vm-data/...` keys
    /// of its xenstore (what the guest was told at provisioning).
    Appliance {
        vm_uuid: String,
        vm_data: std::collections::BTreeMap<String, String>,
    },
    /// A host answered that does not speak the appliance protocol.
    Foreign,
    /// Nothing answers at that address.
    Nobody,
}

pub(crate) fn appliance_at(m: &PoolModel, ip: Ipv4Addr) -> ApplianceAnswer {
    let Some(vm) = m.guest_at(ip) else {
        return ApplianceAnswer::Nobody;
    };
    match m.guests.get(vm).map(|g| g.kind) {
        Some(GuestKind::Appliance) => ApplianceAnswer::Appliance {
            vm_uuid: m.vms[vm].uuid.clone(),
            vm_data: m.vms[vm]
                .xenstore_data
                .iter()
                .filter(|(k, _)| k.starts_with(xapi_proto::tags::VM_DATA_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
        _ => ApplianceAnswer::Foreign,
    }
}

pub(crate) fn appliance_disks(m: &PoolModel, ip: Ipv4Addr) -> Option<Vec<AttachedDisk>> {
    let vm = m.guest_at(ip)?;
    if m.guests.get(vm).map(|g| g.kind) != Some(GuestKind::Appliance) {
        return None;
    }
    let record = &m.vms[vm];
    if record.power_state != PowerState::Running {
        return None;
    }
    let mut disks: Vec<AttachedDisk> = record
        .vbds
        .iter()
        .filter_map(|b| m.vbds.get(b))
        .filter(|b| b.currently_attached && !b.empty && b.userdevice != "0")
        .filter_map(|b| {
            let vdi = m.vdis.get(&b.vdi)?;
            Some(AttachedDisk {
                userdevice: b.userdevice.clone(),
                vdi_uuid: vdi.uuid.clone(),
                virtual_size: vdi.virtual_size,
                bandwidth_bytes_per_s: m
                    .sr_bandwidth_bytes_per_s
                    .get(&vdi.sr)
                    .copied()
                    .unwrap_or(DEFAULT_SR_BANDWIDTH),
            })
        })
        .collect();
    disks.sort_by(|a, b| {
        let key = |d: &AttachedDisk| d.userdevice.parse::<u32>().unwrap_or(u32::MAX);
        key(a).cmp(&key(b))
    });
    Some(disks)
}
