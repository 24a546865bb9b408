//! What guests do on their own once booted: the appliance reads its network
//! settings from `vm-data/...`, gets an address and reports it.

use super::Ctx;
use crate::schedule::Scheduled;
use crate::spec::GuestKind;
use std::net::Ipv4Addr;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{PowerState, VmGuestMetricsRecord};
use xapi_proto::tags::*;

impl Ctx<'_> {
    /// Applies a guest happening that has come due.
    pub(crate) fn apply_scheduled(&mut self, event: Scheduled) {
        match event {
            Scheduled::GuestBooted { vm, epoch } if self.guest_current(&vm, epoch) => {
                self.guest_booted(&vm, epoch)
            }
            Scheduled::DhcpAttempt { vm, epoch } if self.guest_current(&vm, epoch) => {
                self.dhcp_attempt(&vm, epoch)
            }
            Scheduled::AddressUp { vm, epoch, ip } if self.guest_current(&vm, epoch) => {
                self.address_up(&vm, ip)
            }
            Scheduled::HostCrash { host } => self.host_crash(&host),
            Scheduled::HostBack { host } => self.host_back(&host),
            Scheduled::KillGuests => self.kill_guests(),
            Scheduled::SrFill { sr } => self.sr_fill(&sr),
            Scheduled::SrDrain { sr } => self.sr_drain(&sr),
            Scheduled::HostDisable { host } => self.set_host_enabled(&host, false),
            Scheduled::HostEnable { host } => self.set_host_enabled(&host, true),
            Scheduled::ExpireSessions => {
                self.m.sessions.clear();
                self.faults.injected += 1;
                self.log("fault: the toolstack restarted; every session is invalid".into());
            }
            Scheduled::MasterMove { host } => self.move_master(&host),
            Scheduled::HaTakeover { failed } => self.ha_takeover(&failed),
            // The VM was stopped, restarted or destroyed since: the event is stale.
            _ => {}
        }
    }

    /// A fault: the host goes offline and every VM on it halts at once.
    fn host_crash(&mut self, host: &OpaqueRef) {
        let Some(record) = self.m.hosts.get(host).cloned() else {
            return;
        };
        if let Some(metrics) = self.m.host_metrics.get_mut(&record.metrics) {
            metrics.live = false;
        }
        self.faults.injected += 1;
        self.log(format!("fault: host {} crashed", record.name_label));
        if self.m.pool.master == *host {
            self.master_lost(host, &record.name_label);
        }
        for vm in record.resident_vms {
            let control = self.m.vms.get(&vm).is_some_and(|v| v.is_control_domain);
            if !control {
                self.power_off(&vm);
                self.log(format!("VM {} halted with its host", self.vm_label(&vm)));
            }
        }
    }

    /// A fault: someone stops running appliance guests from outside.
    fn kill_guests(&mut self) {
        let running: Vec<OpaqueRef> = self
            .m
            .guests
            .iter()
            .filter(|(_, g)| g.kind == GuestKind::Appliance)
            .map(|(vm, _)| vm.clone())
            .filter(|vm| {
                self.m
                    .vms
                    .get(vm)
                    .is_some_and(|v| v.power_state == PowerState::Running)
            })
            .collect();
        for vm in running {
            if self.faults.kills_guest(self.pool.0, self.now) {
                self.power_off(&vm);
                self.log(format!(
                    "fault: VM {} stopped from outside",
                    self.vm_label(&vm)
                ));
            }
        }
    }

    /// A fault: something else fills the SR to the brim.
    fn sr_fill(&mut self, sr: &OpaqueRef) {
        let Some(record) = self.m.srs.get_mut(sr) else {
            return;
        };
        let taken = (record.physical_size - record.physical_utilisation).max(0);
        record.physical_utilisation += taken;
        let name = record.name_label.clone();
        *self.m.sr_filled.entry(sr.clone()).or_default() += taken;
        self.faults.injected += 1;
        self.log(format!("fault: SR {name} filled up ({taken} bytes taken)"));
    }

    /// The space a fill took is freed.
    fn sr_drain(&mut self, sr: &OpaqueRef) {
        let taken = self.m.sr_filled.remove(sr).unwrap_or(0);
        let Some(record) = self.m.srs.get_mut(sr) else {
            return;
        };
        record.physical_utilisation = (record.physical_utilisation - taken).max(0);
        let name = record.name_label.clone();
        self.log(format!("SR {name} has its space back ({taken} bytes)"));
    }

    /// The master role moves to `host` (unless it is down); the toolstacks
    /// restart, so every session is lost. Calls to the old master answer
    /// HOST_IS_SLAVE.
    fn move_master(&mut self, host: &OpaqueRef) {
        if self.m.pool.master == *host {
            return;
        }
        let Some(record) = self.m.hosts.get(host) else {
            return;
        };
        let live = self
            .m
            .host_metrics
            .get(&record.metrics)
            .is_some_and(|m| m.live);
        if !live {
            let line = format!(
                "master change to host {} skipped: it is down",
                record.name_label
            );
            self.log(line);
            return;
        }
        let line = format!(
            "fault: pool master moved to host {} ({}); every session is invalid",
            record.name_label, record.address
        );
        self.m.pool.master = host.clone();
        self.m.sessions.clear();
        self.faults.injected += 1;
        self.log(line);
    }

    /// A fault (disable) or its healing (enable): the host's `enabled` flag, as
    /// `host.disable` / `host.enable` set it. Running VMs are not touched.
    fn set_host_enabled(&mut self, host: &OpaqueRef, enabled: bool) {
        let Some(record) = self.m.hosts.get_mut(host) else {
            return;
        };
        record.enabled = enabled;
        let name = record.name_label.clone();
        if enabled {
            self.log(format!("host {name} enabled again"));
        } else {
            self.faults.injected += 1;
            self.log(format!("fault: host {name} disabled (maintenance)"));
        }
    }

    /// The crashed host is back (its VMs stay halted).
    fn host_back(&mut self, host: &OpaqueRef) {
        let Some(record) = self.m.hosts.get(host).cloned() else {
            return;
        };
        if let Some(metrics) = self.m.host_metrics.get_mut(&record.metrics) {
            metrics.live = true;
        }
        if self.m.pool.master == *host {
            // Its XAPI starts afresh: the sessions it held are gone.
            self.m.sessions.clear();
            self.log(format!(
                "host {} is back, and master again; every session is invalid",
                record.name_label
            ));
        } else {
            self.log(format!("host {} is back", record.name_label));
        }
    }

    /// The master host failed: its XAPI is gone with it (members answer
    /// HOST_IS_SLAVE naming it still). With HA on, a member takes over once
    /// HA has declared the master dead.
    fn master_lost(&mut self, host: &OpaqueRef, name: &str) {
        if !self.m.pool.ha_enabled {
            self.log(format!(
                "the pool has no master until {name} is back (HA is off)"
            ));
            return;
        }
        let after = self.rng.duration(self.spec.timing.ha_takeover_s);
        self.schedule.at(
            self.now.after(after),
            self.pool,
            Scheduled::HaTakeover {
                failed: host.clone(),
            },
        );
        self.log(format!(
            "HA: {name} is down; a member takes over in {:.0} s",
            after.as_secs_f64()
        ));
    }

    /// HA's election: the first live member (by name) becomes master, unless
    /// the failed master came back first.
    fn ha_takeover(&mut self, failed: &OpaqueRef) {
        if self.m.pool.master != *failed || self.host_live(failed) {
            return;
        }
        let mut live: Vec<(String, OpaqueRef)> = self
            .m
            .hosts
            .iter()
            .filter(|(h, _)| self.host_live(h))
            .map(|(h, r)| (r.name_label.clone(), h.clone()))
            .collect();
        live.sort();
        match live.into_iter().next() {
            Some((_, host)) => self.move_master(&host),
            None => self.log("HA: no live host to take over as master".into()),
        }
    }

    fn host_live(&self, host: &OpaqueRef) -> bool {
        self.m
            .hosts
            .get(host)
            .and_then(|h| self.m.host_metrics.get(&h.metrics))
            .is_some_and(|m| m.live)
    }

    fn guest_current(&self, vm: &OpaqueRef, epoch: u64) -> bool {
        let running = self
            .m
            .vms
            .get(vm)
            .is_some_and(|v| v.power_state == PowerState::Running);
        running && self.m.guests.get(vm).is_some_and(|g| g.epoch == epoch)
    }

    fn guest_booted(&mut self, vm: &OpaqueRef, epoch: u64) {
        let guest = self.m.guests[vm].clone();
        self.log(format!("guest {} booted", self.vm_label(vm)));
        match guest.kind {
            GuestKind::Generic => {
                if let Some(ip) = guest.static_ip {
                    self.address_up(vm, ip);
                }
            }
            GuestKind::Appliance => {
                let data = self.m.vms[vm].xenstore_data.clone();
                let static_ip = data
                    .get(VM_DATA_IP)
                    .and_then(|s| s.parse::<Ipv4Addr>().ok());
                if data.get(VM_DATA_DHCP).map(String::as_str) == Some("true") {
                    let delay = self.rng.duration(self.spec.timing.dhcp_s);
                    let event = Scheduled::DhcpAttempt {
                        vm: vm.clone(),
                        epoch,
                    };
                    self.schedule.at(self.now.after(delay), self.pool, event);
                } else if let Some(ip) = static_ip {
                    let delay = self.rng.duration(self.spec.timing.static_ip_s);
                    let event = Scheduled::AddressUp {
                        vm: vm.clone(),
                        epoch,
                        ip,
                    };
                    self.schedule.at(self.now.after(delay), self.pool, event);
                } else {
                    self.log(format!(
                        "guest {} has no network settings in vm-data",
                        self.vm_label(vm)
                    ));
                }
            }
        }
    }

    fn dhcp_attempt(&mut self, vm: &OpaqueRef, epoch: u64) {
        let primary = self.m.vms[vm]
            .vifs
            .iter()
            .filter_map(|v| self.m.vifs.get(v))
            .find(|v| v.device == "0" && v.currently_attached)
            .map(|v| (v.network.clone(), v.mac.clone()));
        let ignored = primary.is_some() && self.faults.dhcp_ignores(self.pool.0, self.now);
        let offer = primary
            .as_ref()
            .filter(|_| !ignored)
            .and_then(|(net, mac)| {
                let now = self.now;
                self.m.dhcp.get_mut(net).and_then(|s| s.request(mac, now))
            });
        match offer {
            Some(ip) => {
                let mac = primary.map(|p| p.1).unwrap_or_default();
                self.log(format!(
                    "DHCP leased {ip} to {} (MAC {mac})",
                    self.vm_label(vm)
                ));
                self.address_up(vm, ip);
            }
            None => {
                self.log(format!("DHCP: no offer for {}", self.vm_label(vm)));
                let delay = self.rng.duration(self.spec.timing.dhcp_retry_s);
                let event = Scheduled::DhcpAttempt {
                    vm: vm.clone(),
                    epoch,
                };
                self.schedule.at(self.now.after(delay), self.pool, event);
            }
        }
    }

    fn address_up(&mut self, vm: &OpaqueRef, ip: Ipv4Addr) {
        let now = self.now;
        if let Some(holder) = self.m.guest_at(ip).cloned() {
            let who = |r: &OpaqueRef| {
                let v = &self.m.vms[r];
                (v.name_label.clone(), v.other_config.clone())
            };
            let conflict = crate::model::AddressConflict {
                at: now,
                ip,
                holder: who(&holder),
                newcomer: who(vm),
            };
            self.log(format!(
                "address conflict on {ip}: {} already holds it",
                self.vm_label(&holder)
            ));
            self.m.address_conflicts.push(conflict);
        }
        let kind = {
            let guest = self.m.guests.get_mut(vm).expect("guest of a running VM");
            guest.address = Some((ip, now));
            guest.kind
        };
        self.log(format!("guest {} configured {ip}", self.vm_label(vm)));
        if kind != GuestKind::Appliance {
            return;
        }
        let metrics = self.guest_metrics_of(vm);
        let gm = self
            .m
            .guest_metrics
            .get_mut(&metrics)
            .expect("just ensured");
        gm.networks.insert("0/ip".into(), ip.to_string());
        gm.networks.insert("0/ipv4/0".into(), ip.to_string());
        gm.live = true;
        let record = self.m.vms.get_mut(vm).expect("running VM");
        record
            .xenstore_data
            .insert(VM_DATA_ASSIGNED_IP.into(), ip.to_string());
        self.log(format!(
            "guest {} wrote {VM_DATA_ASSIGNED_IP}={ip}",
            self.vm_label(vm)
        ));
    }

    fn guest_metrics_of(&mut self, vm: &OpaqueRef) -> OpaqueRef {
        let current = self.m.vms[vm].guest_metrics.clone();
        if self.m.guest_metrics.contains_key(&current) {
            return current;
        }
        let (gm_ref, gm_uuid) = super::new_ids(self.rng);
        self.m.guest_metrics.insert(
            gm_ref.clone(),
            VmGuestMetricsRecord {
                uuid: gm_uuid,
                live: true,
                ..Default::default()
            },
        );
        self.m.vms.get_mut(vm).expect("running VM").guest_metrics = gm_ref.clone();
        gm_ref
    }
}
