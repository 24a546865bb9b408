//! Builds a pool's objects from its spec.

use super::{GuestState, PoolModel};
use crate::dhcp::DhcpServer;
use crate::rng::SimRng;
use crate::spec::{PoolSpec, SrSpec};
use std::collections::BTreeMap;
use xapi_proto::OpaqueRef;
use xapi_proto::records::*;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// XAPI version the simulated hosts report (XenServer 8 / XCP-ng 8.3).
pub const API_VERSION: (i64, i64) = (2, 21);

fn gib(x: f64) -> i64 {
    (x * GIB).round() as i64
}

/// A fresh (ref, uuid) pair; XAPI refs and uuids are unrelated values.
pub(crate) fn new_ids(rng: &mut SimRng) -> (OpaqueRef, String) {
    (OpaqueRef::from_uuid(&rng.uuid()), rng.uuid())
}

/// Builds every object of one pool, deterministically from `rng`.
pub(crate) fn build_pool(spec: &PoolSpec, rng: &mut SimRng) -> PoolModel {
    let (pool_ref, pool_uuid) = new_ids(rng);
    let mut m = PoolModel {
        name: spec.name.clone(),
        pool_ref,
        pool: PoolRecord {
            uuid: pool_uuid,
            name_label: spec.name.clone(),
            ..Default::default()
        },
        hosts: BTreeMap::new(),
        host_metrics: BTreeMap::new(),
        srs: BTreeMap::new(),
        pbds: BTreeMap::new(),
        networks: BTreeMap::new(),
        pifs: BTreeMap::new(),
        vms: BTreeMap::new(),
        guest_metrics: BTreeMap::new(),
        vifs: BTreeMap::new(),
        vbds: BTreeMap::new(),
        vdis: BTreeMap::new(),
        tasks: BTreeMap::new(),
        sessions: BTreeMap::new(),
        sr_filled: BTreeMap::new(),
        guests: BTreeMap::new(),
        sr_bandwidth_bytes_per_s: BTreeMap::new(),
        dhcp: BTreeMap::new(),
        sr_base_bytes: BTreeMap::new(),
        address_conflicts: Vec::new(),
        events: None,
        vdi_content: BTreeMap::new(),
        written: BTreeMap::new(),
        snapshot_content: BTreeMap::new(),
        full_records: false,
        configured_address: String::new(),
    };
    let hosts = build_hosts(&mut m, spec, rng);
    m.pool.master = hosts[0].clone();
    m.pool.ha_enabled = spec.ha;
    m.configured_address = m.hosts[&hosts[0]].address.clone();
    let networks = build_networks(&mut m, spec, &hosts, rng);
    let srs = build_srs(&mut m, spec, &hosts, rng);
    m.pool.default_sr = default_sr(spec, &srs);
    build_vms(&mut m, spec, &hosts, &networks, &srs, rng);
    let sr_refs: Vec<OpaqueRef> = m.srs.keys().cloned().collect();
    for sr in &sr_refs {
        m.refresh_sr_usage(sr);
    }
    m
}

fn build_hosts(m: &mut PoolModel, spec: &PoolSpec, rng: &mut SimRng) -> Vec<OpaqueRef> {
    let mut hosts = Vec::new();
    for i in 1..=spec.hosts {
        let (host_ref, host_uuid) = new_ids(rng);
        let (metrics_ref, metrics_uuid) = new_ids(rng);
        let name = spec.host_name(i);
        m.host_metrics.insert(
            metrics_ref.clone(),
            HostMetricsRecord {
                uuid: metrics_uuid,
                memory_total: gib(spec.host_memory_gib),
                memory_free: gib(spec.host_memory_gib - spec.dom0_memory_gib),
                live: true,
                last_updated: "19700101T00:00:00Z".into(),
                ..Default::default()
            },
        );
        let mut cpu_info = BTreeMap::new();
        cpu_info.insert("cpu_count".to_string(), spec.host_cpus.to_string());
        m.hosts.insert(
            host_ref.clone(),
            HostRecord {
                uuid: host_uuid,
                name_label: name.clone(),
                hostname: name.clone(),
                address: format!("192.0.2.{i}"),
                enabled: true,
                api_version_major: super::build::API_VERSION.0,
                api_version_minor: super::build::API_VERSION.1,
                api_version_vendor: "XenSource".into(),
                cpu_info,
                metrics: metrics_ref,
                ..Default::default()
            },
        );
        // Every host runs its control domain, which holds dom0's memory.
        let (dom0_ref, dom0_uuid) = new_ids(rng);
        let dom0_mem = gib(spec.dom0_memory_gib);
        m.vms.insert(
            dom0_ref.clone(),
            VmRecord {
                uuid: dom0_uuid,
                name_label: format!("Control domain on host: {name}"),
                power_state: PowerState::Running,
                is_control_domain: true,
                resident_on: host_ref.clone(),
                vcpus_max: 4,
                vcpus_at_startup: 4,
                domid: 0,
                domain_type: "pv".into(),
                ..super::fixed_memory(dom0_mem)
            },
        );
        m.guests.insert(dom0_ref.clone(), GuestState::default());
        m.hosts
            .get_mut(&host_ref)
            .expect("just inserted")
            .resident_vms
            .push(dom0_ref);
        hosts.push(host_ref);
    }
    hosts
}

fn build_networks(
    m: &mut PoolModel,
    spec: &PoolSpec,
    hosts: &[OpaqueRef],
    rng: &mut SimRng,
) -> BTreeMap<String, OpaqueRef> {
    let mut specs = spec.networks.clone();
    if specs.is_empty() {
        specs.push(crate::spec::NetworkSpec {
            name: "Pool-wide network associated with eth0".into(),
            bridge: None,
            vlan: -1,
            mtu: 1500,
            management: true,
            dhcp: None,
        });
    }
    let management_index = specs.iter().position(|n| n.management).unwrap_or(0);
    let mut by_name = BTreeMap::new();
    for (i, net) in specs.iter().enumerate() {
        let (net_ref, net_uuid) = new_ids(rng);
        let mut record = NetworkRecord {
            uuid: net_uuid,
            name_label: net.name.clone(),
            bridge: net.bridge.clone().unwrap_or_else(|| format!("xenbr{i}")),
            mtu: net.mtu,
            ..Default::default()
        };
        for (h, host) in hosts.iter().enumerate() {
            let (pif_ref, pif_uuid) = new_ids(rng);
            let management = i == management_index;
            m.pifs.insert(
                pif_ref.clone(),
                PifRecord {
                    uuid: pif_uuid,
                    device: format!("eth{}", if net.vlan >= 0 { 0 } else { i }),
                    network: net_ref.clone(),
                    host: host.clone(),
                    mac: rng.mac(),
                    mtu: net.mtu,
                    vlan: net.vlan,
                    ip: if management {
                        format!("192.0.2.{}", h + 1)
                    } else {
                        String::new()
                    },
                    netmask: if management {
                        "255.255.255.0".into()
                    } else {
                        String::new()
                    },
                    management,
                    currently_attached: true,
                    ..Default::default()
                },
            );
            record.pifs.push(pif_ref.clone());
            m.hosts
                .get_mut(host)
                .expect("host exists")
                .pifs
                .push(pif_ref);
        }
        if let Some(dhcp) = &net.dhcp {
            m.dhcp.insert(net_ref.clone(), DhcpServer::new(dhcp));
        }
        m.networks.insert(net_ref.clone(), record);
        by_name.insert(net.name.clone(), net_ref);
    }
    // The management network is reachable by the name "" too (the default).
    let management = by_name[&specs[management_index].name].clone();
    by_name.insert(String::new(), management);
    by_name
}

fn build_srs(
    m: &mut PoolModel,
    spec: &PoolSpec,
    hosts: &[OpaqueRef],
    rng: &mut SimRng,
) -> BTreeMap<String, OpaqueRef> {
    let mut specs: Vec<SrSpec> = spec.srs.clone();
    if spec.local_sr_gib > 0.0 {
        for i in 1..=spec.hosts {
            specs.push(SrSpec {
                name: spec.local_sr_name(i),
                sr_type: "ext".into(),
                shared: false,
                size_gib: spec.local_sr_gib,
                used_gib: 0.0,
                bandwidth_mib_s: 400.0,
                default: false,
                host: Some(i),
            });
        }
    }
    let mut by_name = BTreeMap::new();
    for sr in &specs {
        let (sr_ref, sr_uuid) = new_ids(rng);
        let mut record = SrRecord {
            uuid: sr_uuid,
            name_label: sr.name.clone(),
            sr_type: sr.sr_type.clone(),
            content_type: "user".into(),
            shared: sr.shared && sr.host.is_none(),
            physical_size: gib(sr.size_gib),
            ..Default::default()
        };
        let attached_hosts: Vec<&OpaqueRef> = match sr.host {
            Some(h) => vec![&hosts[h as usize - 1]],
            None => hosts.iter().collect(),
        };
        for host in attached_hosts {
            let (pbd_ref, pbd_uuid) = new_ids(rng);
            m.pbds.insert(
                pbd_ref.clone(),
                PbdRecord {
                    uuid: pbd_uuid,
                    host: host.clone(),
                    sr: sr_ref.clone(),
                    currently_attached: true,
                    ..Default::default()
                },
            );
            record.pbds.push(pbd_ref.clone());
            m.hosts
                .get_mut(host)
                .expect("host exists")
                .pbds
                .push(pbd_ref);
        }
        m.srs.insert(sr_ref.clone(), record);
        m.sr_bandwidth_bytes_per_s
            .insert(sr_ref.clone(), sr.bandwidth_mib_s * MIB);
        m.sr_base_bytes.insert(sr_ref.clone(), gib(sr.used_gib));
        by_name.insert(sr.name.clone(), sr_ref);
    }
    by_name
}

fn default_sr(spec: &PoolSpec, srs: &BTreeMap<String, OpaqueRef>) -> OpaqueRef {
    let chosen = spec
        .srs
        .iter()
        .find(|s| s.default)
        .or_else(|| spec.srs.iter().find(|s| s.shared && s.host.is_none()))
        .or_else(|| spec.srs.first());
    match chosen {
        Some(s) => srs[&s.name].clone(),
        None => srs.values().next().cloned().unwrap_or_else(OpaqueRef::null),
    }
}

fn build_vms(
    m: &mut PoolModel,
    spec: &PoolSpec,
    hosts: &[OpaqueRef],
    networks: &BTreeMap<String, OpaqueRef>,
    srs: &BTreeMap<String, OpaqueRef>,
    rng: &mut SimRng,
) {
    let mut next_host = 0usize;
    for group in &spec.vm_groups {
        let sr_name = group
            .sr
            .clone()
            .or_else(|| m.srs.get(&m.pool.default_sr).map(|s| s.name_label.clone()));
        // The SR of each disk: its own, or the group's.
        let disk_sr_names: Vec<Option<String>> = match &group.disk_srs {
            Some(names) => names.iter().cloned().map(Some).collect(),
            None => vec![sr_name.clone(); group.disk_count()],
        };
        let disk_srs: Vec<Option<OpaqueRef>> = disk_sr_names
            .iter()
            .map(|name| name.as_ref().and_then(|n| srs.get(n)).cloned())
            .collect();
        // A VM with a disk on a host's local SR runs on that host.
        let local_host = disk_sr_names.iter().flatten().find_map(|name| {
            spec.srs
                .iter()
                .find(|s| &s.name == name)
                .and_then(|s| s.host)
                .or_else(|| (1..=spec.hosts).find(|h| &spec.local_sr_name(*h) == name))
        });
        let network = networks[group.network.as_deref().unwrap_or("")].clone();
        for name in group.names() {
            let host_index = group
                .host
                .or(local_host)
                .map(|h| h as usize - 1)
                .unwrap_or_else(|| {
                    let h = next_host % hosts.len();
                    next_host += 1;
                    h
                });
            let host = &hosts[host_index];
            build_vm(m, rng, &name, group, host, &disk_srs, &network);
        }
    }
}

/// A group's lineage key: a stable hash of its name.
fn lineage_of(group: &str) -> u64 {
    group.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// One VM of a group: its record, disk i on `disk_srs[i]` (no disks where an
/// SR is missing), one VIF on `network`, its guest.
fn build_vm(
    m: &mut PoolModel,
    rng: &mut SimRng,
    name: &str,
    group: &crate::spec::VmGroupSpec,
    host: &OpaqueRef,
    disk_srs: &[Option<OpaqueRef>],
    network: &OpaqueRef,
) {
    let (vm_ref, vm_uuid) = new_ids(rng);
    let running = group.running && !group.template;
    m.vms.insert(
        vm_ref.clone(),
        VmRecord {
            uuid: vm_uuid,
            name_label: name.to_string(),
            power_state: if running {
                PowerState::Running
            } else {
                PowerState::Halted
            },
            is_a_template: group.template,
            resident_on: if running {
                host.clone()
            } else {
                OpaqueRef::null()
            },
            vcpus_max: 2,
            vcpus_at_startup: 2,
            other_config: group.other_config.clone(),
            domain_type: "hvm".into(),
            domid: if running { 1 } else { -1 },
            ..super::fixed_memory(gib(group.memory_gib))
        },
    );
    if running {
        m.hosts
            .get_mut(host)
            .expect("host exists")
            .resident_vms
            .push(vm_ref.clone());
    }
    let sizes: Vec<i64> = match (&group.disks_mib, disk_srs.iter().all(Option::is_some)) {
        (_, false) => Vec::new(),
        (Some(mib), true) => mib.iter().map(|m| (*m as i64) << 20).collect(),
        (None, true) => group.disks_gib.iter().map(|g| gib(*g)).collect(),
    };
    for (d, size) in sizes.into_iter().enumerate() {
        let sr = disk_srs[d].as_ref().expect("disks only with an SR");
        let (vdi_ref, vdi_uuid) = new_ids(rng);
        let (vbd_ref, vbd_uuid) = new_ids(rng);
        m.insert_vdi(
            vdi_ref.clone(),
            VdiRecord {
                uuid: vdi_uuid,
                name_label: format!("{name} disk {d}"),
                sr: sr.clone(),
                virtual_size: size,
                physical_utilisation: size,
                vdi_type: if d == 0 {
                    VdiType::System
                } else {
                    VdiType::User
                },
                managed: true,
                cbt_enabled: group.cbt,
                ..Default::default()
            },
        );
        // The run's seed is filled in by `Sim::new`; VMs of one group share a
        // template, hence their OS blocks (the lineage).
        let disk_key = m.vdi_content.len() as u64 + 1;
        m.vdi_content.insert(
            vdi_ref.clone(),
            super::VdiContent {
                disk: crate::content::DiskContent {
                    seed: 0,
                    lineage: lineage_of(&group.name),
                    disk: disk_key,
                    size_bytes: size as u64,
                    profile: crate::content::ContentProfile {
                        used_fraction: group.disk_used,
                        ..Default::default()
                    },
                },
                frozen_day: None,
            },
        );
        let userdevice = d.to_string();
        m.insert_vbd(
            vbd_ref,
            VbdRecord {
                uuid: vbd_uuid,
                vm: vm_ref.clone(),
                vdi: vdi_ref,
                device: if running {
                    super::device_name(&userdevice)
                } else {
                    String::new()
                },
                userdevice,
                bootable: d == 0,
                mode: VbdMode::RW,
                vbd_type: VbdType::Disk,
                unpluggable: true,
                currently_attached: running,
                ..Default::default()
            },
        );
    }
    let (vif_ref, vif_uuid) = new_ids(rng);
    m.insert_vif(
        vif_ref,
        VifRecord {
            uuid: vif_uuid,
            device: "0".into(),
            network: network.clone(),
            vm: vm_ref.clone(),
            mac: rng.mac(),
            mtu: 1500,
            currently_attached: running,
            mac_autogenerated: true,
            ..Default::default()
        },
    );
    let address = match (running, group.ip) {
        (true, Some(ip)) => Some((ip, crate::time::SimTime::ZERO)),
        _ => None,
    };
    m.guests.insert(
        vm_ref,
        GuestState {
            kind: group.guest,
            static_ip: group.ip,
            epoch: 0,
            address,
        },
    );
}
