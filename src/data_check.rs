//! After a run with a data store: every version restores byte-identical to
//! what its snapshot held in the simulator, and the store verifies clean.
//! Chunks a `chunk_corrupt` fault damaged are the one exception allowed: a
//! version that still uses one with no good copy must fail to restore (never
//! restore wrong bytes), and verification may name those chunks only.

use ads::{Access, MemDisk, Store};
use serde::Serialize;
use std::path::Path;
use xapi_sim::Sim;

/// What the data store holds at the end of a run, and what is wrong with it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataEnd {
    pub versions: usize,
    /// Logical size of every version's disks.
    pub logical_bytes: u64,
    /// Bytes of pack files on disk.
    pub stored_bytes: u64,
    /// Disks restored and compared byte for byte.
    pub disks_restored: usize,
    /// VDIs written by restore jobs, compared byte for byte with their version's snapshot.
    pub restored_vdis_checked: usize,
    /// Versions still damaged by chunks damaged at rest (`vm@seq`).
    pub damaged_versions: Vec<String>,
    pub problems: Vec<String>,
}

/// What the snapshot behind disk `disk` (from 0) of `manifest` held.
fn snapshot_bytes(sim: &Sim, manifest: &ads::Manifest, disk: usize) -> Result<Vec<u8>, String> {
    let pool = manifest.vm_record["pool"]
        .as_str()
        .and_then(|p| sim.pool_id(p));
    let uuid = manifest.vm_record["disks"][disk]["snapshot_vdi_uuid"]
        .as_str()
        .unwrap_or_default();
    let content = pool
        .and_then(|p| sim.snapshot_content(p, uuid))
        .ok_or_else(|| format!("no snapshot {uuid:?} in the simulator"))?;
    let mut expected = vec![0u8; content.disk.size_bytes as usize];
    content
        .disk
        .read_at(0, content.frozen_day.unwrap_or(0), &mut expected);
    Ok(expected)
}

/// Restores every version in the store at `dir` and compares it with the
/// simulator's record of the snapshot it was read from; then compares every
/// VDI a restore job wrote with the version it names.
pub fn check_store(dir: &Path, sim: &Sim, damage: &[crate::store_faults::Damage]) -> DataEnd {
    let mut end = DataEnd::default();
    let store = match Store::open(dir, Access::Read) {
        Ok(store) => store,
        Err(e) => {
            end.problems.push(format!("data store: {e}"));
            return end;
        }
    };
    let damaged: std::collections::BTreeSet<String> =
        damage.iter().map(|d| d.chunk.to_hex()).collect();
    match ads::verify(&store) {
        Ok(report) => {
            for problem in &report.problems {
                match problem {
                    ads::Problem::BadIndexFile { .. } => {}
                    ads::Problem::CorruptChunk { chunk, affects, .. }
                    | ads::Problem::MissingChunk { chunk, affects }
                    | ads::Problem::DamagedChunk { chunk, affects }
                        if damaged.contains(chunk) =>
                    {
                        end.damaged_versions.extend(affects.iter().cloned());
                    }
                    other => end.problems.push(format!("data store: {other}")),
                }
            }
            end.damaged_versions.sort();
            end.damaged_versions.dedup();
        }
        Err(e) => end.problems.push(format!("data store verify: {e}")),
    }
    end.stored_bytes = ads::index::list_packs(&dir.join("packs"))
        .map(|packs| {
            packs
                .values()
                .filter_map(|p| p.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let manifests = match store.all_manifests() {
        Ok(m) => m,
        Err(e) => {
            end.problems.push(format!("data store: {e}"));
            return end;
        }
    };
    for manifest in &manifests {
        end.versions += 1;
        end.logical_bytes += manifest.size_bytes();
        let version = manifest.label();
        let pool = manifest.vm_record["pool"]
            .as_str()
            .and_then(|p| sim.pool_id(p));
        for (i, disk) in manifest.disks.iter().enumerate() {
            let uuid = manifest.vm_record["disks"][i]["snapshot_vdi_uuid"]
                .as_str()
                .unwrap_or_default();
            let Some(content) = pool.and_then(|p| sim.snapshot_content(p, uuid)) else {
                end.problems.push(format!(
                    "{version} disk {}: no snapshot {uuid:?} in the simulator",
                    i + 1
                ));
                continue;
            };
            let mut expected = vec![0u8; content.disk.size_bytes as usize];
            content
                .disk
                .read_at(0, content.frozen_day.unwrap_or(0), &mut expected);
            let mut restored = MemDisk::default();
            let restore = ads::restore_disk(&store, manifest, i, &mut restored, &mut |_, _| {});
            if end.damaged_versions.contains(&version) {
                // Damaged: the restore must refuse, naming a damaged chunk.
                match restore {
                    Err(e) if damaged.iter().any(|c| e.to_string().contains(c)) => {}
                    Err(e) => end.problems.push(format!(
                        "{version} disk {}: damaged, but its restore failed otherwise: {e}",
                        i + 1
                    )),
                    Ok(_) if restored.0 == expected => end.disks_restored += 1,
                    Ok(_) => end.problems.push(format!(
                        "{version} disk {}: damaged, and its restore gave wrong bytes without an error",
                        i + 1
                    )),
                }
                continue;
            }
            match restore {
                Ok(_) if restored.0 == expected => end.disks_restored += 1,
                Ok(_) => end.problems.push(format!(
                    "{version} disk {}: restored bytes differ from the snapshot's ({} bytes)",
                    i + 1,
                    disk.size_bytes
                )),
                Err(e) => end
                    .problems
                    .push(format!("{version} disk {}: restore failed: {e}", i + 1)),
            }
        }
    }
    check_restored_vdis(sim, &manifests, &mut end);
    end
}

/// Every VDI a restore wrote (tagged `abd:restored-from`) holds its version's bytes.
fn check_restored_vdis(sim: &Sim, manifests: &[ads::Manifest], end: &mut DataEnd) {
    for (pool, m) in sim.pools() {
        for vdi in m.vdis.values() {
            let Some(from) = vdi.other_config.get(engine::tags::RESTORED_FROM) else {
                continue;
            };
            let found = from.rsplit_once('#').and_then(|(version, disk)| {
                let (vm, seq) = version.rsplit_once('@')?;
                let (seq, disk): (u64, usize) = (seq.parse().ok()?, disk.parse().ok()?);
                let manifest = manifests.iter().find(|m| m.vm == vm && m.seq == seq)?;
                Some((manifest, disk.checked_sub(1)?))
            });
            let Some((manifest, disk)) = found else {
                end.problems.push(format!(
                    "restored VDI {}: unknown source {from:?}",
                    vdi.uuid
                ));
                continue;
            };
            let mut got = vec![0u8; vdi.virtual_size as usize];
            let read = sim.read_vdi(pool, &vdi.uuid, 0, &mut got);
            match (read, snapshot_bytes(sim, manifest, disk)) {
                (Ok(()), Ok(expected)) if got == expected => end.restored_vdis_checked += 1,
                (Ok(()), Ok(_)) => end.problems.push(format!(
                    "restored VDI {} ({from}) differs from the backup",
                    vdi.uuid
                )),
                (Err(e), _) | (_, Err(e)) => end
                    .problems
                    .push(format!("restored VDI {} ({from}): {e}", vdi.uuid)),
            }
        }
    }
}
