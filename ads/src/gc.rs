//! Retention and garbage collection (mark and sweep with pack rewrite).
//!
//! Order on disk: old manifests are removed first (retention's commit point);
//! then live chunks of partly dead packs are copied into new packs, synced and
//! indexed; then old index files, then old packs, are deleted. A crash at any
//! point leaves every kept version whole; leftovers are reclaimed next time.

use crate::ChunkId;
use crate::error::{AdsError, IoContext, Result};
use crate::index;
use crate::pack::{self, PackEntry, PackName, PackWriter};
use crate::store::{Access, CommitStep, Store};
use serde::Serialize;
use std::collections::HashSet;
use std::fs;

/// What [`gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// `vm@seq` of versions removed by retention.
    pub versions_removed: Vec<String>,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub chunks_removed: u64,
    pub bytes_freed: u64,
}

/// Keeps the newest `keep` versions of every VM, then reclaims unreferenced chunks.
pub fn gc(store: &mut Store, keep: usize) -> Result<GcReport> {
    if keep == 0 {
        return Err(AdsError::Invalid("--keep must be at least 1".into()));
    }
    if store.access() != Access::Write {
        return Err(AdsError::Invalid("store opened read-only".into()));
    }
    let mut report = GcReport::default();

    // Retention: removing a manifest is the commit point of dropping a version.
    for vm in store.vms()? {
        let versions = store.versions(&vm)?;
        let excess = versions.len().saturating_sub(keep);
        // Named as the VM is now (its newest version's name).
        let name = match excess {
            0 => String::new(),
            _ => (store.latest(&vm).ok().flatten())
                .map(|m| m.vm_name().to_string())
                .unwrap_or_default(),
        };
        for seq in &versions[..excess] {
            let path = store.manifest_path(&vm, *seq);
            fs::remove_file(&path).at(&path)?;
            let label = crate::manifest::version_label(&name, &vm, *seq);
            report.versions_removed.push(label);
        }
        if excess > 0 {
            let dir = store.manifest_path(&vm, 0);
            pack::sync_dir(dir.parent().expect("vm dir"))?;
        }
    }
    // By name, for whoever reads the list (VMs are kept by id).
    report.versions_removed.sort();

    // Mark.
    let mut live: HashSet<ChunkId> = HashSet::new();
    for manifest in store.all_manifests()? {
        live.extend(manifest.chunk_refs().map(|(id, _)| *id));
    }

    // Sweep: decide per pack.
    let packs_dir = store.packs_dir();
    let mut dead_packs: Vec<PackName> = Vec::new();
    let mut rewrite: Vec<(PackName, Vec<PackEntry>)> = Vec::new();
    let mut copied: HashSet<ChunkId> = HashSet::new();
    // A damaged blob is never copied: its pack is rewritten without it.
    let damaged = store.index().damaged().clone();
    let keeps = |name: &str, e: &PackEntry| {
        live.contains(&e.id) && !damaged.contains_key(&(name.to_string(), e.offset))
    };
    for (name, entries) in store.index().packs() {
        let live_count = entries.iter().filter(|e| keeps(name, e)).count();
        if live_count == entries.len() {
            continue;
        }
        dead_packs.push(name.clone());
        if live_count > 0 {
            rewrite.push((name.clone(), entries.clone()));
        }
    }
    if dead_packs.is_empty() {
        return Ok(report);
    }
    let dead_set: HashSet<&PackName> = dead_packs.iter().collect();
    // Chunks also held by a pack we keep need no copy.
    for (name, entries) in store.index().packs() {
        if !dead_set.contains(name) {
            copied.extend(entries.iter().map(|e| e.id));
        }
    }

    let mut new_packs: Vec<(PackName, Vec<PackEntry>)> = Vec::new();
    let mut writer: Option<PackWriter> = None;
    for (name, entries) in &rewrite {
        let path = pack::pack_path(&packs_dir, name);
        let file = store.pack_file(name)?;
        for entry in entries {
            if !keeps(name, entry) || !copied.insert(entry.id) {
                continue;
            }
            let data = pack::read_blob(&file, &path, entry.offset, entry.stored_len)?;
            if writer.is_none() {
                let tmp = store.next_tmp_path(&packs_dir);
                writer = Some(PackWriter::create(tmp)?);
            }
            let w = writer.as_mut().expect("writer");
            w.append(entry.id, entry.codec, entry.raw_len, &data)?;
            if w.len_bytes() >= store.config().pack_target_bytes {
                new_packs.push(writer.take().expect("writer").finish(&packs_dir)?);
            }
        }
        report.packs_rewritten += 1;
    }
    if let Some(w) = writer.take() {
        if store.crash_at == Some(CommitStep::GcPackWrite) {
            w.abandon_torn();
            return Err(AdsError::Crashed(CommitStep::GcPackWrite));
        }
        new_packs.push(w.finish(&packs_dir)?);
    }
    store.crash(CommitStep::GcPackWrite)?;

    // New index: every kept pack plus the new ones, in one file.
    let old_files: Vec<_> = store.index().files().iter().cloned().collect();
    let mut all: Vec<(PackName, Vec<PackEntry>)> = store
        .index()
        .packs()
        .iter()
        .filter(|(name, _)| !dead_set.contains(name))
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    all.extend(new_packs.iter().cloned());
    let index_dir = store.index_dir();
    let new_file = index::write_index_file(&index_dir, &all)?;
    store.crash(CommitStep::GcIndexSwap)?;
    for file in old_files.iter().filter(|f| **f != new_file) {
        fs::remove_file(file).at(file)?;
    }
    pack::sync_dir(&index_dir)?;
    store.index.forget_files();
    store.index.note_file(new_file);
    store.crash(CommitStep::GcPackDelete)?;

    store.forget_open_packs();
    // A new pack may take the name of a dead one (same chunks, same order):
    // that file is the new pack now, and stays.
    let new_names: Vec<PackName> = new_packs.iter().map(|(n, _)| n.clone()).collect();
    for name in dead_packs.iter().filter(|n| !new_names.contains(n)) {
        let path = pack::pack_path(&packs_dir, name);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        report.chunks_removed += store.index().packs()[name]
            .iter()
            .filter(|e| !live.contains(&e.id))
            .count() as u64;
        fs::remove_file(&path).at(&path)?;
        report.bytes_freed += size;
        report.packs_deleted += 1;
    }
    for (name, _) in &new_packs {
        let size = fs::metadata(pack::pack_path(&packs_dir, name))
            .map(|m| m.len())
            .unwrap_or(0);
        report.bytes_freed = report.bytes_freed.saturating_sub(size);
    }
    store.reload_index()?;
    store.sealed_anew(&new_names)?;
    store.prune_damaged()?;
    store.recount_used()?;
    Ok(report)
}
