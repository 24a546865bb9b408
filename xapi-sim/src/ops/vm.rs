//! VM calls: clone, copy, provision, import, start, shutdown, destroy, snapshot,
//! and edits of the VM's maps.

use super::{Ctx, new_ids};
use crate::model::GuestState;
use crate::schedule::Scheduled;
use crate::spec::GuestKind;
use xapi_proto::records::*;
use xapi_proto::{OpaqueRef, XapiError, codes};

const MIB: i64 = 1024 * 1024;
/// Space a copy-on-write child (clone or snapshot) takes at first.
const COW_CHILD_BYTES: i64 = 8 * MIB;

/// How a VM's disks are duplicated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskCopy {
    /// Copy-on-write children on the same SR (clone).
    CowClone,
    /// Copy-on-write snapshots (snapshot).
    Snapshot,
    /// Full copies onto another SR (copy).
    FullTo,
}

impl Ctx<'_> {
    fn require_power(&self, vm: &OpaqueRef, expected: PowerState) -> Result<(), XapiError> {
        let actual = self.vm(vm)?.power_state;
        if actual != expected {
            return Err(XapiError::vm_bad_power_state(
                vm.as_str(),
                expected.lowercase(),
                actual.lowercase(),
            ));
        }
        Ok(())
    }

    /// `OPERATION_BLOCKED [vm, message]` when `op` is in the VM's
    /// `blocked_operations` (checked before anything else, as XAPI does).
    fn refuse_if_blocked(&self, vm: &OpaqueRef, op: &str) -> Result<(), XapiError> {
        match self.vm(vm)?.blocked_operations.get(op) {
            Some(message) => Err(XapiError::new(
                codes::OPERATION_BLOCKED,
                [vm.as_str(), message.as_str()],
            )),
            None => Ok(()),
        }
    }

    /// `VM.create(record)`: a new halted VM with no devices. As in XAPI, its
    /// memory constraints are checked when it starts.
    pub(crate) fn vm_create(&mut self, spec: VmCreate) -> Result<OpaqueRef, XapiError> {
        let (vm_ref, uuid) = new_ids(self.rng);
        let mut other_config = spec.other_config;
        other_config
            .entry("mac_seed".into())
            .or_insert_with(|| uuid.clone());
        let record = VmRecord {
            uuid,
            name_label: spec.name_label,
            name_description: spec.name_description,
            user_version: spec.user_version,
            is_a_template: spec.is_a_template,
            affinity: spec.affinity,
            memory_static_max: spec.memory_static_max,
            memory_dynamic_max: spec.memory_dynamic_max,
            memory_dynamic_min: spec.memory_dynamic_min,
            memory_static_min: spec.memory_static_min,
            memory_target: spec.memory_dynamic_max,
            vcpus_max: spec.vcpus_max,
            vcpus_at_startup: spec.vcpus_at_startup,
            platform: spec.platform,
            other_config,
            tags: spec.tags,
            domain_type: if spec.domain_type.is_empty() {
                if spec.hvm_boot_policy.is_empty() {
                    "pv"
                } else {
                    "hvm"
                }
                .into()
            } else {
                spec.domain_type
            },
            domid: -1,
            ..Default::default()
        };
        let label = record.name_label.clone();
        self.m.vms.insert(vm_ref.clone(), record);
        self.log(format!("VM.create {vm_ref} {label:?}"));
        Ok(vm_ref)
    }

    fn require_not_template(&self, vm: &OpaqueRef, op: &str) -> Result<(), XapiError> {
        if self.vm(vm)?.is_a_template {
            return Err(XapiError::new(codes::VM_IS_TEMPLATE, [vm.as_str(), op]));
        }
        Ok(())
    }

    pub(crate) fn require_space(&self, sr: &OpaqueRef, bytes: i64) -> Result<(), XapiError> {
        let rec = self
            .m
            .srs
            .get(sr)
            .ok_or_else(|| XapiError::handle_invalid("SR", sr.as_str()))?;
        // An `sr_fill` fault keeps the SR full while it lasts.
        if rec.physical_utilisation + bytes > rec.physical_size || self.m.sr_filled.contains_key(sr)
        {
            return Err(XapiError::new(
                codes::SR_FULL,
                [bytes.to_string(), rec.physical_size.to_string()],
            ));
        }
        Ok(())
    }

    /// `VM.clone(vm, new_name)`: copy-on-write clone on the same SRs.
    pub(crate) fn vm_clone(&mut self, vm: &OpaqueRef, name: &str) -> Result<OpaqueRef, XapiError> {
        self.refuse_if_blocked(vm, "clone")?;
        self.require_power(vm, PowerState::Halted)?;
        let new = self.duplicate_vm(vm, name, DiskCopy::CowClone, None)?;
        self.log(format!("VM.clone {} -> {new} {name:?}", self.vm_label(vm)));
        Ok(new)
    }

    /// `VM.copy(vm, new_name, sr)`: full copy of the disks onto `sr`.
    pub(crate) fn vm_copy(
        &mut self,
        vm: &OpaqueRef,
        name: &str,
        sr: &OpaqueRef,
    ) -> Result<OpaqueRef, XapiError> {
        self.require_power(vm, PowerState::Halted)?;
        let target = if sr.is_null() { None } else { Some(sr.clone()) };
        let new = self.duplicate_vm(vm, name, DiskCopy::FullTo, target)?;
        self.log(format!("VM.copy {} -> {new} {name:?}", self.vm_label(vm)));
        Ok(new)
    }

    /// `VM.snapshot(vm, new_name)`: a snapshot VM with snapshot VDIs.
    pub(crate) fn vm_snapshot(
        &mut self,
        vm: &OpaqueRef,
        name: &str,
    ) -> Result<OpaqueRef, XapiError> {
        self.require_not_template(vm, "snapshot")?;
        let power = self.vm(vm)?.power_state;
        if !matches!(
            power,
            PowerState::Running | PowerState::Halted | PowerState::Suspended
        ) {
            return Err(XapiError::vm_bad_power_state(
                vm.as_str(),
                "running",
                power.lowercase(),
            ));
        }
        let snap = self.duplicate_vm(vm, name, DiskCopy::Snapshot, None)?;
        self.vm_mut(vm)?.snapshots.push(snap.clone());
        self.log(format!(
            "VM.snapshot {} -> {snap} {name:?}",
            self.vm_label(vm)
        ));
        Ok(snap)
    }

    fn duplicate_vm(
        &mut self,
        vm: &OpaqueRef,
        name: &str,
        how: DiskCopy,
        target_sr: Option<OpaqueRef>,
    ) -> Result<OpaqueRef, XapiError> {
        let source = self.vm(vm)?.clone();
        // Space check first: nothing is created unless everything fits.
        let mut needed: std::collections::BTreeMap<OpaqueRef, i64> = Default::default();
        for vdi in self.vm_disk_vdis(&source) {
            let rec = &self.m.vdis[&vdi];
            let sr = target_sr.clone().unwrap_or(rec.sr.clone());
            let bytes = match how {
                DiskCopy::FullTo => rec.physical_utilisation,
                DiskCopy::CowClone | DiskCopy::Snapshot => COW_CHILD_BYTES.min(rec.virtual_size),
            };
            *needed.entry(sr).or_default() += bytes;
        }
        for (sr, bytes) in &needed {
            self.require_space(sr, *bytes)?;
        }
        let (new_ref, new_uuid) = new_ids(self.rng);
        let (is_a_snapshot, snapshot_of, snapshot_time) = self.provenance(how, vm);
        // The VM goes in first: its VBDs and VIFs link themselves to it.
        self.m.vms.insert(
            new_ref.clone(),
            VmRecord {
                uuid: new_uuid,
                name_label: name.to_string(),
                name_description: source.name_description.clone(),
                power_state: PowerState::Halted,
                is_a_template: how != DiskCopy::Snapshot && source.is_a_template,
                is_a_snapshot,
                snapshot_of,
                snapshot_time,
                memory_overhead: source.memory_overhead,
                memory_target: source.memory_target,
                memory_static_max: source.memory_static_max,
                memory_dynamic_max: source.memory_dynamic_max,
                memory_dynamic_min: source.memory_dynamic_min,
                memory_static_min: source.memory_static_min,
                vcpus_max: source.vcpus_max,
                vcpus_at_startup: source.vcpus_at_startup,
                other_config: source.other_config.clone(),
                xenstore_data: source.xenstore_data.clone(),
                platform: source.platform.clone(),
                tags: source.tags.clone(),
                domain_type: source.domain_type.clone(),
                domid: -1,
                ..Default::default()
            },
        );
        for vbd in &source.vbds {
            self.duplicate_vbd(vbd, &new_ref, how, target_sr.as_ref());
        }
        for vif in &source.vifs {
            self.duplicate_vif(vif, &new_ref);
        }
        let guest = self.m.guests.get(vm).cloned().unwrap_or_default();
        self.m.guests.insert(
            new_ref.clone(),
            GuestState {
                kind: guest.kind,
                static_ip: guest.static_ip,
                ..Default::default()
            },
        );
        for sr in needed.keys() {
            self.m.refresh_sr_usage(sr);
        }
        Ok(new_ref)
    }

    /// `(is_a_snapshot, snapshot_of, snapshot_time)` of a duplicate of `of`.
    fn provenance(&self, how: DiskCopy, of: &OpaqueRef) -> (bool, OpaqueRef, String) {
        match how {
            DiskCopy::Snapshot => (true, of.clone(), self.xapi_datetime()),
            DiskCopy::CowClone | DiskCopy::FullTo => (false, OpaqueRef::null(), String::new()),
        }
    }

    fn vm_disk_vdis(&self, vm: &VmRecord) -> Vec<OpaqueRef> {
        vm.vbds
            .iter()
            .filter_map(|b| self.m.vbds.get(b))
            .filter(|b| !b.empty && b.vbd_type == VbdType::Disk)
            .map(|b| b.vdi.clone())
            .collect()
    }

    fn duplicate_vbd(
        &mut self,
        vbd: &OpaqueRef,
        new_vm: &OpaqueRef,
        how: DiskCopy,
        target_sr: Option<&OpaqueRef>,
    ) {
        let source = self.m.vbds[vbd].clone();
        let new_vdi = if source.empty || source.vbd_type != VbdType::Disk {
            source.vdi.clone()
        } else {
            self.duplicate_vdi(&source.vdi, how, target_sr)
        };
        let (vbd_ref, vbd_uuid) = new_ids(self.rng);
        self.m.insert_vbd(
            vbd_ref,
            VbdRecord {
                uuid: vbd_uuid,
                vm: new_vm.clone(),
                vdi: new_vdi,
                userdevice: source.userdevice.clone(),
                bootable: source.bootable,
                mode: source.mode,
                vbd_type: source.vbd_type,
                unpluggable: source.unpluggable,
                empty: source.empty,
                other_config: source.other_config.clone(),
                ..Default::default()
            },
        );
    }

    fn duplicate_vdi(
        &mut self,
        vdi: &OpaqueRef,
        how: DiskCopy,
        target_sr: Option<&OpaqueRef>,
    ) -> OpaqueRef {
        let source = self.m.vdis[vdi].clone();
        let (vdi_ref, vdi_uuid) = new_ids(self.rng);
        let (is_a_snapshot, snapshot_of, snapshot_time) = self.provenance(how, vdi);
        let record = VdiRecord {
            uuid: vdi_uuid,
            name_label: source.name_label.clone(),
            name_description: source.name_description.clone(),
            sr: target_sr.cloned().unwrap_or(source.sr.clone()),
            virtual_size: source.virtual_size,
            physical_utilisation: match how {
                DiskCopy::FullTo => source.physical_utilisation,
                DiskCopy::CowClone | DiskCopy::Snapshot => COW_CHILD_BYTES.min(source.virtual_size),
            },
            vdi_type: source.vdi_type,
            sharable: source.sharable,
            read_only: source.read_only,
            managed: true,
            is_a_snapshot,
            snapshot_of,
            snapshot_time,
            other_config: source.other_config.clone(),
            sm_config: source.sm_config.clone(),
            cbt_enabled: source.cbt_enabled && how == DiskCopy::Snapshot,
            ..Default::default()
        };
        let snapshot_uuid = (how == DiskCopy::Snapshot).then(|| record.uuid.clone());
        self.m.insert_vdi(vdi_ref.clone(), record);
        if let Some(content) = self.m.vdi_content.get(vdi).cloned() {
            let copy = match how {
                // A snapshot freezes the bytes of today.
                DiskCopy::Snapshot => crate::model::VdiContent {
                    frozen_day: Some(content.day_at(self.now)),
                    ..content
                },
                DiskCopy::CowClone | DiskCopy::FullTo => content,
            };
            if let Some(uuid) = snapshot_uuid {
                self.m.snapshot_content.insert(uuid, copy.clone());
            }
            self.m.vdi_content.insert(vdi_ref.clone(), copy);
        }
        // Bytes written into the disk (an import, a restore) come along too.
        if let Some(blocks) = self.m.written.get(vdi).cloned() {
            self.m.written.insert(vdi_ref.clone(), blocks);
        }
        vdi_ref
    }

    fn duplicate_vif(&mut self, vif: &OpaqueRef, new_vm: &OpaqueRef) {
        let source = self.m.vifs[vif].clone();
        let (vif_ref, vif_uuid) = new_ids(self.rng);
        let mac = self.rng.mac();
        self.m.insert_vif(
            vif_ref,
            VifRecord {
                uuid: vif_uuid,
                device: source.device.clone(),
                network: source.network.clone(),
                vm: new_vm.clone(),
                mac,
                mtu: source.mtu,
                other_config: source.other_config.clone(),
                qos_algorithm_type: source.qos_algorithm_type.clone(),
                qos_algorithm_params: source.qos_algorithm_params.clone(),
                mac_autogenerated: true,
                ..Default::default()
            },
        );
    }

    /// XAPI datetime text for now (the simulated epoch is 2026-01-01).
    pub(crate) fn xapi_datetime(&self) -> String {
        let s = self.now.as_ms() / 1000;
        let (days, rem) = (s / 86_400, s % 86_400);
        // Good for the first 31 days of a run, which is all a scenario covers.
        format!(
            "202601{:02}T{:02}:{:02}:{:02}Z",
            1 + days.min(30),
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    /// `VM.provision(vm)`: turns a template clone into a VM.
    pub(crate) fn vm_provision(&mut self, vm: &OpaqueRef) -> Result<(), XapiError> {
        self.require_power(vm, PowerState::Halted)?;
        self.vm_mut(vm)?.is_a_template = false;
        self.log(format!("VM.provision {}", self.vm_label(vm)));
        Ok(())
    }

    /// `VM.set_is_a_template(vm, value)`.
    pub(crate) fn vm_set_is_a_template(
        &mut self,
        vm: &OpaqueRef,
        value: bool,
    ) -> Result<(), XapiError> {
        if value {
            self.require_power(vm, PowerState::Halted)?;
        }
        self.vm_mut(vm)?.is_a_template = value;
        self.log(format!(
            "VM.set_is_a_template {} {value}",
            self.vm_label(vm)
        ));
        Ok(())
    }

    /// `VM.import(url, sr, full_restore, force)`: only the appliance image is known.
    pub(crate) fn vm_import(
        &mut self,
        url: &str,
        sr: &OpaqueRef,
    ) -> Result<Vec<OpaqueRef>, XapiError> {
        let appliance = self.spec.appliance.clone();
        if url != appliance.url {
            return Err(XapiError::new(
                codes::IMPORT_ERROR,
                [format!("cannot fetch {url}: not found")],
            ));
        }
        let sr = if sr.is_null() {
            self.m.pool.default_sr.clone()
        } else {
            sr.clone()
        };
        let disk_bytes = appliance.disk_mib as i64 * MIB;
        self.require_space(&sr, disk_bytes)?;
        let (vm_ref, vm_uuid) = new_ids(self.rng);
        let (vdi_ref, vdi_uuid) = new_ids(self.rng);
        let (vbd_ref, vbd_uuid) = new_ids(self.rng);
        let (vif_ref, vif_uuid) = new_ids(self.rng);
        let mem = appliance.memory_mib as i64 * MIB;
        self.m.vms.insert(
            vm_ref.clone(),
            VmRecord {
                uuid: vm_uuid,
                name_label: "abd-appliance".into(),
                vcpus_max: appliance.vcpus,
                vcpus_at_startup: appliance.vcpus,
                domain_type: "pv".into(),
                domid: -1,
                ..crate::model::fixed_memory(mem)
            },
        );
        self.m.insert_vdi(
            vdi_ref.clone(),
            VdiRecord {
                uuid: vdi_uuid,
                name_label: "abd-appliance system disk".into(),
                sr: sr.clone(),
                virtual_size: disk_bytes,
                physical_utilisation: disk_bytes,
                vdi_type: VdiType::System,
                managed: true,
                ..Default::default()
            },
        );
        self.m.insert_vbd(
            vbd_ref,
            VbdRecord {
                uuid: vbd_uuid,
                vm: vm_ref.clone(),
                vdi: vdi_ref,
                userdevice: "0".into(),
                bootable: true,
                mode: VbdMode::RW,
                vbd_type: VbdType::Disk,
                unpluggable: false,
                ..Default::default()
            },
        );
        let network = self.management_network();
        let mac = self.rng.mac();
        self.m.insert_vif(
            vif_ref,
            VifRecord {
                uuid: vif_uuid,
                device: "0".into(),
                network,
                vm: vm_ref.clone(),
                mac,
                mtu: 1500,
                mac_autogenerated: true,
                ..Default::default()
            },
        );
        self.m.guests.insert(
            vm_ref.clone(),
            GuestState {
                kind: GuestKind::Appliance,
                ..Default::default()
            },
        );
        self.m.refresh_sr_usage(&sr);
        self.log(format!(
            "VM.import {url} -> {vm_ref} on SR {:?}",
            self.m.srs[&sr].name_label
        ));
        Ok(vec![vm_ref])
    }

    fn management_network(&self) -> OpaqueRef {
        self.m
            .pifs
            .values()
            .find(|p| p.management)
            .map(|p| p.network.clone())
            .or_else(|| self.m.networks.keys().next().cloned())
            .unwrap_or_else(OpaqueRef::null)
    }

    /// Why `host` cannot run `vm` now, if it cannot.
    fn host_refusal(&self, vm: &OpaqueRef, host: &OpaqueRef) -> Option<XapiError> {
        let h = self.m.hosts.get(host)?;
        if !self.m.host_metrics.get(&h.metrics).is_some_and(|m| m.live) {
            return Some(XapiError::new(codes::HOST_OFFLINE, [host.as_str()]));
        }
        if !h.enabled {
            return Some(XapiError::new(codes::HOST_DISABLED, [host.as_str()]));
        }
        let record = &self.m.vms[vm];
        for sr in self.m.vm_srs(record) {
            if !self.m.host_sees_sr(host, &sr) {
                return Some(XapiError::new(
                    codes::VM_REQUIRES_SR,
                    [vm.as_str(), sr.as_str()],
                ));
            }
        }
        for vif in &record.vifs {
            let Some(net) = self.m.vifs.get(vif).map(|v| &v.network) else {
                continue;
            };
            let reachable = self
                .m
                .pifs
                .values()
                .any(|p| &p.host == host && &p.network == net && p.currently_attached);
            if !reachable {
                return Some(XapiError::new(
                    codes::VM_REQUIRES_NETWORK,
                    [vm.as_str(), net.as_str()],
                ));
            }
        }
        let needed = record.memory_static_max + record.memory_overhead;
        let available = self.m.host_free_memory(host);
        if needed > available {
            return Some(XapiError::new(
                codes::HOST_NOT_ENOUGH_FREE_MEMORY,
                [needed.to_string(), available.to_string()],
            ));
        }
        None
    }

    /// `VM.start(vm, paused, force)`: XAPI picks the host with the most free memory.
    pub(crate) fn vm_start(&mut self, vm: &OpaqueRef, paused: bool) -> Result<(), XapiError> {
        self.refuse_if_blocked(vm, "start")?;
        self.check_startable(vm)?;
        let mut candidates: Vec<(i64, OpaqueRef)> = self
            .m
            .hosts
            .keys()
            .filter(|h| self.host_refusal(vm, h).is_none())
            .map(|h| (self.m.host_free_memory(h), h.clone()))
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let Some((_, host)) = candidates.into_iter().next() else {
            return Err(XapiError::new::<String>(codes::NO_HOSTS_AVAILABLE, []));
        };
        self.power_on(vm, &host, paused)
    }

    /// `VM.start_on(vm, host, paused, force)`.
    pub(crate) fn vm_start_on(
        &mut self,
        vm: &OpaqueRef,
        host: &OpaqueRef,
        paused: bool,
    ) -> Result<(), XapiError> {
        if !self.m.hosts.contains_key(host) {
            return Err(XapiError::handle_invalid("host", host.as_str()));
        }
        self.refuse_if_blocked(vm, "start_on")?;
        self.check_startable(vm)?;
        if let Some(refusal) = self.host_refusal(vm, host) {
            return Err(refusal);
        }
        self.power_on(vm, host, paused)
    }

    fn check_startable(&self, vm: &OpaqueRef) -> Result<(), XapiError> {
        let record = self.vm(vm)?;
        if record.is_control_domain {
            return Err(XapiError::not_allowed(
                "the control domain cannot be started",
            ));
        }
        if record.is_a_snapshot {
            return Err(XapiError::not_allowed("a snapshot cannot be started"));
        }
        self.require_not_template(vm, "start")?;
        self.require_power(vm, PowerState::Halted)?;
        let m = [
            record.memory_static_min,
            record.memory_dynamic_min,
            record.memory_dynamic_max,
            record.memory_static_max,
        ];
        if m.windows(2).any(|w| w[0] > w[1]) {
            return Err(XapiError::new(
                codes::MEMORY_CONSTRAINT_VIOLATION,
                [
                    "memory_static_min <= memory_dynamic_min <= memory_dynamic_max <= memory_static_max",
                ],
            ));
        }
        for vbd in &record.vbds {
            if let Some(b) = self.m.vbds.get(vbd).filter(|b| !b.empty)
                && let Some(refusal) = self.attach_conflict(vbd, b)
            {
                return Err(refusal);
            }
        }
        Ok(())
    }

    fn power_on(
        &mut self,
        vm: &OpaqueRef,
        host: &OpaqueRef,
        paused: bool,
    ) -> Result<(), XapiError> {
        let domid = 1 + self.m.vms.values().map(|v| v.domid).max().unwrap_or(0);
        let record = self.vm_mut(vm)?;
        record.power_state = if paused {
            PowerState::Paused
        } else {
            PowerState::Running
        };
        record.resident_on = host.clone();
        record.domid = domid;
        let (vbds, vifs) = (record.vbds.clone(), record.vifs.clone());
        for vbd in vbds {
            if let Some(b) = self.m.vbds.get_mut(&vbd) {
                b.currently_attached = !b.empty;
                b.device = crate::model::device_name(&b.userdevice);
            }
        }
        for vif in vifs {
            if let Some(v) = self.m.vifs.get_mut(&vif) {
                v.currently_attached = true;
            }
        }
        if let Some(h) = self.m.hosts.get_mut(host) {
            h.resident_vms.push(vm.clone());
        }
        let guest = self.m.guests.entry(vm.clone()).or_default();
        guest.epoch += 1;
        guest.address = None;
        let epoch = guest.epoch;
        let host_name = self.m.hosts[host].name_label.clone();
        self.log(format!(
            "VM.start {} on {host_name} domid {domid}",
            self.vm_label(vm)
        ));
        let appliance = self.m.guests.get(vm).map(|g| g.kind) == Some(GuestKind::Appliance);
        if !paused && appliance && self.faults.boot_fails(self.pool.0, self.now) {
            self.log(format!(
                "fault: the guest of {} will not boot",
                self.vm_label(vm)
            ));
        } else if !paused {
            let mut boot = self.rng.duration(self.spec.timing.boot_s);
            if appliance {
                let delay = self.faults.boot_delay(self.pool.0, self.now);
                if !delay.is_zero() {
                    boot += delay;
                    self.log(format!(
                        "fault: the guest of {} boots {} s late",
                        self.vm_label(vm),
                        delay.as_secs_f64()
                    ));
                }
            }
            self.schedule.at(
                self.now.after(boot),
                self.pool,
                Scheduled::GuestBooted {
                    vm: vm.clone(),
                    epoch,
                },
            );
        }
        Ok(())
    }

    /// `VM.clean_shutdown` / `VM.hard_shutdown`.
    pub(crate) fn vm_shutdown(&mut self, vm: &OpaqueRef, hard: bool) -> Result<(), XapiError> {
        let power = self.vm(vm)?.power_state;
        let allowed = match hard {
            true => matches!(power, PowerState::Running | PowerState::Paused),
            false => power == PowerState::Running,
        };
        if !allowed {
            return Err(XapiError::vm_bad_power_state(
                vm.as_str(),
                "running",
                power.lowercase(),
            ));
        }
        if self.vm(vm)?.is_control_domain {
            return Err(XapiError::not_allowed(
                "the control domain cannot be shut down",
            ));
        }
        self.power_off(vm);
        let how = if hard {
            "hard_shutdown"
        } else {
            "clean_shutdown"
        };
        self.log(format!("VM.{how} {}", self.vm_label(vm)));
        Ok(())
    }

    /// Halts a VM: detaches its devices, stops its guest, lets its leases lapse.
    pub(crate) fn power_off(&mut self, vm: &OpaqueRef) {
        let Some(record) = self.m.vms.get_mut(vm) else {
            return;
        };
        let host = std::mem::replace(&mut record.resident_on, OpaqueRef::null());
        record.power_state = PowerState::Halted;
        record.domid = -1;
        record
            .xenstore_data
            .remove(xapi_proto::tags::VM_DATA_ASSIGNED_IP);
        let (vbds, vifs, metrics) = (
            record.vbds.clone(),
            record.vifs.clone(),
            record.guest_metrics.clone(),
        );
        if let Some(h) = self.m.hosts.get_mut(&host) {
            h.resident_vms.retain(|v| v != vm);
        }
        for vbd in vbds {
            if let Some(b) = self.m.vbds.get_mut(&vbd) {
                b.currently_attached = false;
            }
        }
        for vif in vifs {
            let Some(v) = self.m.vifs.get_mut(&vif) else {
                continue;
            };
            v.currently_attached = false;
            let (network, mac) = (v.network.clone(), v.mac.clone());
            if let Some(server) = self.m.dhcp.get_mut(&network) {
                server.guest_stopped(&mac, self.now);
            }
        }
        if let Some(g) = self.m.guest_metrics.get_mut(&metrics) {
            g.live = false;
        }
        if let Some(guest) = self.m.guests.get_mut(vm) {
            guest.epoch += 1;
            guest.address = None;
        }
    }

    /// `VM.destroy(vm)`: removes the VM, its VBDs and VIFs; its VDIs stay.
    pub(crate) fn vm_destroy(&mut self, vm: &OpaqueRef) -> Result<(), XapiError> {
        self.refuse_if_blocked(vm, "destroy")?;
        let record = self.vm(vm)?.clone();
        if record.is_control_domain {
            return Err(XapiError::not_allowed(
                "the control domain cannot be destroyed",
            ));
        }
        if record.power_state != PowerState::Halted && record.power_state != PowerState::Suspended {
            return Err(XapiError::vm_bad_power_state(
                vm.as_str(),
                "halted",
                record.power_state.lowercase(),
            ));
        }
        for vbd in &record.vbds {
            self.remove_vbd(vbd);
        }
        for vif in &record.vifs {
            self.remove_vif(vif);
        }
        self.m.guest_metrics.remove(&record.guest_metrics);
        self.m.guests.remove(vm);
        if let Some(parent) = self.m.vms.get_mut(&record.snapshot_of) {
            parent.snapshots.retain(|s| s != vm);
        }
        for snap in &record.snapshots {
            if let Some(s) = self.m.vms.get_mut(snap) {
                s.snapshot_of = OpaqueRef::null();
            }
        }
        let label = self.vm_label(vm);
        self.m.vms.remove(vm);
        self.log(format!("VM.destroy {label} {vm}"));
        Ok(())
    }

    /// The VM named `vm_name` (operator actions name VMs).
    fn vm_named(&self, vm_name: &str) -> Result<OpaqueRef, XapiError> {
        self.m
            .vms
            .iter()
            .find(|(_, v)| v.name_label == vm_name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| XapiError::internal(format!("no VM named {vm_name:?}")))
    }

    /// Operator action: fails over to a VM (a replica), removing what blocks
    /// its start and starting it.
    pub(crate) fn fail_over(&mut self, vm_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        let record = self.vm_mut(&vm)?;
        record.blocked_operations.remove("start");
        record.blocked_operations.remove("start_on");
        self.vm_start(&vm, false)?;
        self.log(format!("operator failed over to {vm_name:?}"));
        Ok(())
    }

    /// Operator action: clones a VM (as `VM.clone` does: every key of its
    /// `other_config` comes along) under the name `<vm_name> clone`.
    pub(crate) fn operator_clone(&mut self, vm_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        let name = format!("{vm_name} clone");
        self.duplicate_vm(&vm, &name, DiskCopy::CowClone, None)?;
        self.log(format!("operator cloned {vm_name:?} as {name:?}"));
        Ok(())
    }

    /// Operator action: gives a VM one more network interface (the next free
    /// device) on the network named `network_name`.
    pub(crate) fn operator_add_vif(
        &mut self,
        vm_name: &str,
        network_name: &str,
    ) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        let network = self
            .m
            .networks
            .iter()
            .find(|(_, n)| n.name_label == network_name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| XapiError::internal(format!("no network named {network_name:?}")))?;
        let used: Vec<String> = self.m.vms[&vm]
            .vifs
            .iter()
            .filter_map(|v| self.m.vifs.get(v))
            .map(|v| v.device.clone())
            .collect();
        let device = (0..)
            .map(|n: u32| n.to_string())
            .find(|d| !used.contains(d))
            .expect("a free device");
        self.vif_create(xapi_proto::records::VifCreate {
            device: device.clone(),
            network,
            vm,
            mtu: 1500,
            ..Default::default()
        })?;
        self.log(format!(
            "operator gave {vm_name:?} interface {device} on {network_name:?}"
        ));
        Ok(())
    }

    /// Operator action: turns CBT off on every disk of a VM
    /// (`VDI.disable_cbt`, as from a UI).
    pub(crate) fn operator_disable_cbt(&mut self, vm_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        for vdi in self.vm_disk_vdis(&self.m.vms[&vm].clone()) {
            self.vdi_set_cbt(&vdi, false)?;
        }
        self.log(format!("operator turned CBT off on {vm_name:?}'s disks"));
        Ok(())
    }

    /// Operator action: destroys the CBT metadata VDIs kept for a VM's disks
    /// (someone tidying up snapshots), as `VDI.destroy` would.
    pub(crate) fn operator_destroy_cbt_metadata(&mut self, vm_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        let disks = self.vm_disk_vdis(&self.m.vms[&vm].clone());
        let metadata: Vec<OpaqueRef> = self
            .m
            .vdis
            .iter()
            .filter(|(_, r)| {
                r.vdi_type == xapi_proto::records::VdiType::CbtMetadata
                    && disks.contains(&r.snapshot_of)
            })
            .map(|(vdi, _)| vdi.clone())
            .collect();
        for vdi in &metadata {
            self.vdi_destroy(vdi)?;
        }
        self.log(format!(
            "operator destroyed {} CBT metadata VDI(s) of {vm_name:?}",
            metadata.len()
        ));
        Ok(())
    }

    /// Operator action: shuts a VM down.
    pub(crate) fn operator_shutdown(&mut self, vm_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        self.vm_shutdown(&vm, true)?;
        self.log(format!("operator shut {vm_name:?} down"));
        Ok(())
    }

    /// Operator action: storage-migrates every disk of a VM to another SR.
    pub(crate) fn move_vm_disks(&mut self, vm_name: &str, sr_name: &str) -> Result<(), XapiError> {
        let vm = self.vm_named(vm_name)?;
        let sr = self
            .m
            .srs
            .iter()
            .find(|(_, s)| s.name_label == sr_name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| XapiError::internal(format!("no SR named {sr_name:?}")))?;
        let vdis = self.vm_disk_vdis(&self.m.vms[&vm].clone());
        let mut touched = vec![sr.clone()];
        for vdi in vdis {
            let old_sr = self.m.vdis[&vdi].sr.clone();
            if let Some(s) = self.m.srs.get_mut(&old_sr) {
                s.vdis.retain(|v| v != &vdi);
            }
            self.m.vdis.get_mut(&vdi).expect("listed").sr = sr.clone();
            self.m
                .srs
                .get_mut(&sr)
                .expect("found")
                .vdis
                .push(vdi.clone());
            touched.push(old_sr);
        }
        for s in touched {
            self.m.refresh_sr_usage(&s);
        }
        self.log(format!(
            "operator moved the disks of {vm_name:?} to SR {sr_name:?}"
        ));
        Ok(())
    }
}
