//! The store as its users rely on it: backups restore byte-identical,
//! incrementals read only what changed, a crash at any commit or gc step
//! loses nothing, and damage is reported with the versions it affects.

use ads::store::CommitStep;
use ads::{
    Access, AdsError, ChunkingParams, Compression, DiskPlan, MemDisk, Problem, Store, StoreConfig,
    VersionDraft,
};
use std::path::Path;

/// A small store config so tests make several packs.
fn config() -> StoreConfig {
    StoreConfig {
        chunking: ChunkingParams {
            segment_bytes: 256 * 1024,
            chunk_min_bytes: 4 * 1024,
            chunk_avg_bytes: 16 * 1024,
            chunk_max_bytes: 64 * 1024,
        },
        compression: Compression::Zstd { level: 1 },
        pack_target_bytes: 256 * 1024,
        ..StoreConfig::default()
    }
}

/// A disk of `blocks` 64 KiB blocks: zero, text-like or random by block, from `seed`.
fn disk(seed: u64, blocks: usize) -> MemDisk {
    let mut data = vec![0u8; blocks * 65536];
    for (i, block) in data.chunks_mut(65536).enumerate() {
        let key = blake3::hash(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
        match key.as_bytes()[0] % 4 {
            0 => {}
            1 => {
                let words = b"kernel module config python3 systemd ";
                for (j, b) in block.iter_mut().enumerate() {
                    *b = words[(j * 7 + key.as_bytes()[1] as usize) % words.len()];
                }
            }
            _ => blake3::Hasher::new_keyed(key.as_bytes())
                .finalize_xof()
                .fill(block),
        }
    }
    MemDisk(data)
}

/// Rewrites `blocks` blocks (with new random bytes); returns one bool per block.
fn change(disk: &mut MemDisk, blocks: &[usize], salt: u8) -> Vec<bool> {
    let mut changed = vec![false; disk.0.len() / 65536];
    for &b in blocks {
        blake3::Hasher::new_keyed(&[salt; 32])
            .update(&b.to_le_bytes())
            .finalize_xof()
            .fill(&mut disk.0[b * 65536..(b + 1) * 65536]);
        changed[b] = true;
    }
    changed
}

fn new_store(dir: &Path) -> Store {
    Store::init(dir, config()).unwrap();
    Store::open(dir, Access::Write).unwrap()
}

/// Backs up `disk` as the next version of `vm` (its id is its name); CBT bitmap optional.
fn backup(
    store: &mut Store,
    vm: &str,
    disk: &MemDisk,
    cbt: Option<&[bool]>,
) -> Result<(ads::Manifest, ads::ReadStats), AdsError> {
    backup_as(store, vm, vm, disk, cbt)
}

/// Backs up `disk` as the next version of the VM with id `vm` and name `name`.
fn backup_as(
    store: &mut Store,
    vm: &str,
    name: &str,
    disk: &MemDisk,
    cbt: Option<&[bool]>,
) -> Result<(ads::Manifest, ads::ReadStats), AdsError> {
    let previous = store.latest(vm)?;
    let params = store.config().chunking;
    let changed = cbt.map(|blocks| {
        ads::backup::changed_segments_from_blocks(&params, disk.0.len() as u64, blocks)
    });
    let plan = DiskPlan {
        label: "xvda".into(),
        chunking: params,
        compression: store.config().compression,
        previous: previous.as_ref().and_then(|p| p.disks.first()),
        changed_segments: changed.as_deref(),
    };
    let mut source = disk.clone();
    let mut txn = store.begin()?;
    let (disk_manifest, read) = ads::backup_disk(&plan, &mut source, &mut txn, &mut |_, _| {})?;
    let (manifest, _) = txn.commit(VersionDraft {
        vm: vm.into(),
        name: name.into(),
        taken_at: "day".into(),
        parent_seq: previous.map(|p| p.seq),
        vm_record: serde_json::Value::Null,
        disks: vec![disk_manifest],
    })?;
    Ok((manifest, read))
}

#[test]
fn two_vms_of_one_name_keep_their_own_versions_and_retention_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let (a, b) = (
        "0b7a1c2e-aaaa-4000-8000-00000000000a",
        "6f3d9e10-bbbb-4000-8000-00000000000b",
    );
    let (disk_a, disk_b) = (disk(21, 16), disk(22, 16));
    for _ in 0..3 {
        backup_as(&mut store, a, "web", &disk_a, None).unwrap();
    }
    let (first_b, _) = backup_as(&mut store, b, "web", &disk_b, None).unwrap();
    // B's first version is not an incremental on A's, and numbers its own.
    assert_eq!((first_b.seq, first_b.parent_seq), (1, None));
    assert_eq!(first_b.label(), format!("web@1 [{b}]"));
    assert_eq!(store.versions(a).unwrap(), vec![1, 2, 3]);
    // By id: the one VM; by the shared name: refused, naming both ids.
    assert_eq!(store.resolve_vm(a).unwrap(), a);
    let err = store.resolve_vm("web").unwrap_err().to_string();
    assert!(err.contains(a) && err.contains(b), "{err}");
    assert!(err.contains("name one by its id"), "{err}");
    assert_eq!(store.vms_named("web").unwrap().len(), 2);
    assert!(matches!(
        store.resolve_vm("db"),
        Err(AdsError::NoSuchVm { .. })
    ));
    // Retention counts per VM: keeping 2 drops only A's oldest.
    ads::gc::gc(&mut store, 2).unwrap();
    assert_eq!(store.versions(a).unwrap(), vec![2, 3]);
    assert_eq!(store.versions(b).unwrap(), vec![1]);
    assert_eq!(restore(&store, b, 1).unwrap(), disk_b.0);
    assert_eq!(restore(&store, a, 3).unwrap(), disk_a.0);
}

fn restore(store: &Store, vm: &str, seq: u64) -> Result<Vec<u8>, AdsError> {
    let manifest = store.manifest(vm, seq)?;
    let mut target = MemDisk::default();
    ads::restore_disk(store, &manifest, 0, &mut target, &mut |_, _| {})?;
    target.0.resize(manifest.disks[0].size_bytes as usize, 0);
    Ok(target.0)
}

#[test]
fn versions_restore_byte_identical_and_incrementals_read_only_changed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let mut day = disk(1, 96);
    let (v1, read1) = backup(&mut store, "web", &day, None).unwrap();
    assert_eq!(read1.bytes_read, day.0.len() as u64);
    let mut days = vec![day.clone()];
    for (n, blocks) in [[3usize, 40], [41, 90]].iter().enumerate() {
        let cbt = change(&mut day, blocks, n as u8 + 1);
        let (v, read) = backup(&mut store, "web", &day, Some(&cbt)).unwrap();
        // Two changed blocks in two different 256 KiB segments: two segments read.
        assert_eq!(read.bytes_read, 2 * 256 * 1024, "day {}", n + 2);
        assert_eq!(read.segments_skipped, 24 - 2);
        assert_eq!(v.parent_seq, Some(v.seq - 1));
        days.push(day.clone());
    }
    assert_eq!(v1.seq, 1);
    assert_eq!(store.versions("web").unwrap(), vec![1, 2, 3]);
    for (i, expected) in days.iter().enumerate() {
        assert!(
            restore(&store, "web", i as u64 + 1).unwrap() == expected.0,
            "version {}",
            i + 1
        );
    }
    assert!(ads::verify(&store).unwrap().is_clean());
}

#[test]
fn shared_blocks_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let base = disk(7, 64);
    backup(&mut store, "a", &base, None).unwrap();
    let before = store.index().chunk_count();
    let mut clone = base.clone();
    change(&mut clone, &[10], 9);
    let (_, read) = backup(&mut store, "b", &clone, None).unwrap();
    // Only chunks around the one changed block are new.
    assert!(read.bytes_sent < 4 * 65536, "sent {}", read.bytes_sent);
    assert!(store.index().chunk_count() - before <= 8);
    assert!(restore(&store, "b", 1).unwrap() == clone.0);
}

#[test]
fn a_crash_at_any_commit_step_leaves_whole_versions_only() {
    for step in CommitStep::COMMIT {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = new_store(tmp.path());
        let day1 = disk(2, 48);
        backup(&mut store, "db", &day1, None).unwrap();
        let mut day2 = day1.clone();
        change(&mut day2, &[1, 2, 30], 5);
        day2.0.extend_from_slice(&disk(3, 8).0);
        store.set_crash_point(Some(step));
        let err = backup(&mut store, "db", &day2, None).unwrap_err();
        assert!(
            matches!(err, AdsError::Crashed(s) if s == step),
            "{step}: {err}"
        );
        drop(store);

        let store = Store::open(tmp.path(), Access::Write).unwrap();
        let report = ads::verify(&store).unwrap();
        assert!(report.is_clean(), "{step}: {:?}", report.problems);
        let expected: Vec<u64> = if step == CommitStep::Committed {
            vec![1, 2]
        } else {
            vec![1]
        };
        assert_eq!(store.versions("db").unwrap(), expected, "{step}");
        assert!(restore(&store, "db", 1).unwrap() == day1.0, "{step}");
        if step == CommitStep::Committed {
            assert!(restore(&store, "db", 2).unwrap() == day2.0, "{step}");
        }
        // No temporary file survives a writer's open.
        let leftovers = walk(tmp.path())
            .into_iter()
            .filter(|p| p.ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "{step}");
        // And the store takes the next backup.
        let mut store = store;
        let (v, _) = backup(&mut store, "db", &day2, None).unwrap();
        assert!(restore(&store, "db", v.seq).unwrap() == day2.0, "{step}");
    }
}

#[test]
fn a_crash_at_any_gc_step_keeps_the_kept_versions() {
    for step in CommitStep::GC {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = new_store(tmp.path());
        let mut day = disk(4, 32);
        let mut kept = Vec::new();
        for n in 0..3u8 {
            let blocks: Vec<usize> = (0..8).map(|i| i * 4 + n as usize).collect();
            change(&mut day, &blocks, n + 20);
            backup(&mut store, "app", &day, None).unwrap();
            kept.push(day.clone());
        }
        store.set_crash_point(Some(step));
        let err = ads::gc::gc(&mut store, 1).unwrap_err();
        assert!(
            matches!(err, AdsError::Crashed(s) if s == step),
            "{step}: {err}"
        );
        drop(store);

        let mut store = Store::open(tmp.path(), Access::Write).unwrap();
        assert_eq!(store.versions("app").unwrap(), vec![3], "{step}");
        let report = ads::verify(&store).unwrap();
        assert!(report.is_clean(), "{step}: {:?}", report.problems);
        assert!(restore(&store, "app", 3).unwrap() == kept[2].0, "{step}");
        ads::gc::gc(&mut store, 1).unwrap();
        let report = ads::verify(&store).unwrap();
        assert!(
            report.is_clean() && report.unreferenced_chunks == 0,
            "{step}: {report:?}"
        );
        assert!(restore(&store, "app", 3).unwrap() == kept[2].0, "{step}");
    }
}

#[test]
fn retention_keeps_the_newest_versions_and_gc_frees_space() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let mut day = disk(5, 32);
    let mut versions = Vec::new();
    for n in 0..4u8 {
        change(&mut day, &[n as usize * 7, n as usize * 7 + 1], n + 40);
        backup(&mut store, "mail", &day, None).unwrap();
        versions.push(day.clone());
    }
    backup(&mut store, "other", &disk(6, 8), None).unwrap();
    let report = ads::gc::gc(&mut store, 2).unwrap();
    assert_eq!(report.versions_removed, vec!["mail@1", "mail@2"]);
    assert!(
        report.chunks_removed > 0 && report.bytes_freed > 0,
        "{report:?}"
    );
    assert_eq!(store.versions("mail").unwrap(), vec![3, 4]);
    assert_eq!(store.versions("other").unwrap(), vec![1]);
    assert!(restore(&store, "mail", 3).unwrap() == versions[2].0);
    assert!(restore(&store, "mail", 4).unwrap() == versions[3].0);
    let verify = ads::verify(&store).unwrap();
    assert!(
        verify.is_clean() && verify.unreferenced_chunks == 0,
        "{verify:?}"
    );
    assert!(matches!(
        ads::gc::gc(&mut store, 0),
        Err(AdsError::Invalid(_))
    ));
}

/// Flips `mask` into a byte of the first data chunk of `version` at rest;
/// returns that chunk.
fn damage_first_data_chunk(store: &Store, version: &ads::Manifest, mask: u8) -> ads::ChunkId {
    let victim = version
        .chunk_refs()
        .map(|(id, _)| *id)
        .find(|id| !id.is_zero_run())
        .unwrap();
    let location = store.index().get(&victim).unwrap().clone();
    let pack = ads::pack::pack_path(&store.root().join("packs"), &location.pack);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[location.offset as usize + location.stored_len as usize / 2] ^= mask;
    std::fs::write(&pack, bytes).unwrap();
    victim
}

/// Pack files in a store's `packs/` directory.
fn pack_files(root: &Path) -> std::collections::BTreeSet<String> {
    walk(&root.join("packs")).into_iter().collect()
}

#[test]
fn a_verification_whose_packs_gc_removed_while_it_read_them_stays_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let mut day = disk(5, 32);
    for n in 0..4u8 {
        change(&mut day, &[n as usize * 7, n as usize * 7 + 1], n + 40);
        backup(&mut store, "mail", &day, None).unwrap();
    }
    let plan = ads::verify::VerifyPlan::take(&store).unwrap();
    let packs_before = pack_files(tmp.path());

    // With the store free again, gc drops versions and their packs, and a
    // new version is committed.
    ads::gc::gc(&mut store, 2).unwrap();
    backup(&mut store, "other", &disk(6, 8), None).unwrap();
    assert!(
        !packs_before.is_subset(&pack_files(tmp.path())),
        "gc removed no pack the plan holds"
    );

    let read = std::sync::atomic::AtomicU64::new(0);
    let to_read = plan.stored_bytes();
    let report = plan
        .rehash(&|bytes| {
            read.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        })
        .finish(&store);
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        report.versions, 4,
        "the versions there when the plan was taken"
    );
    assert_eq!(read.into_inner(), to_read);
    let now = ads::verify(&store).unwrap();
    assert!(now.is_clean() && now.versions == 3, "{now:?}");
}

#[test]
fn a_corrupt_chunk_is_still_reported_when_writes_come_between_the_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let (va, _) = backup(&mut store, "a", &disk(8, 16), None).unwrap();
    let victim = damage_first_data_chunk(&store, &va, 0x40);

    let plan = ads::verify::VerifyPlan::take(&store).unwrap();
    backup(&mut store, "b", &disk(9, 16), None).unwrap();
    let report = plan.rehash(&|_| {}).finish(&store);
    let corrupt: Vec<_> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::CorruptChunk { chunk, affects, .. } => Some((chunk.clone(), affects.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(corrupt, vec![(victim.to_hex(), vec!["a@1".to_string()])]);
}

#[test]
fn a_corrupt_chunk_is_reported_with_the_versions_it_affects_and_nothing_else_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let a = disk(8, 16);
    let b = disk(9, 16);
    let (va, _) = backup(&mut store, "a", &a, None).unwrap();
    backup(&mut store, "a", &a, None).unwrap();
    backup(&mut store, "b", &b, None).unwrap();
    // Damage one byte of a chunk only VM a uses.
    let victim = va
        .chunk_refs()
        .map(|(id, _)| *id)
        .find(|id| {
            !store
                .manifest("b", 1)
                .unwrap()
                .chunk_refs()
                .any(|(o, _)| o == id)
        })
        .unwrap();
    let location = store.index().get(&victim).unwrap().clone();
    let pack = ads::pack::pack_path(&tmp.path().join("packs"), &location.pack);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[location.offset as usize + location.stored_len as usize / 2] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    drop(store);

    let store = Store::open(tmp.path(), Access::Read).unwrap();
    let report = ads::verify(&store).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    match &report.problems[0] {
        Problem::CorruptChunk {
            chunk,
            pack,
            affects,
            ..
        } => {
            assert_eq!(chunk, &victim.to_hex());
            assert_eq!(pack, &location.pack);
            assert_eq!(affects, &vec!["a@1".to_string(), "a@2".to_string()]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = restore(&store, "a", 1).unwrap_err();
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(restore(&store, "b", 1).unwrap() == b.0);
}

#[test]
fn a_lost_pack_or_index_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let a = disk(10, 16);
    backup(&mut store, "a", &a, None).unwrap();
    drop(store);
    // A damaged index file is only a cache: rebuilt from the packs.
    for idx in std::fs::read_dir(tmp.path().join("index")).unwrap() {
        std::fs::write(idx.unwrap().path(), b"garbage").unwrap();
    }
    let store = Store::open(tmp.path(), Access::Read).unwrap();
    let report = ads::verify(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(matches!(report.problems[0], Problem::BadIndexFile { .. }));
    assert!(restore(&store, "a", 1).unwrap() == a.0);
    drop(store);
    // A deleted pack: its chunks are missing, and the report says which versions suffer.
    let pack = walk(&tmp.path().join("packs"))
        .into_iter()
        .find(|p| p.ends_with(".pack"))
        .unwrap();
    std::fs::remove_file(pack).unwrap();
    let store = Store::open(tmp.path(), Access::Read).unwrap();
    let report = ads::verify(&store).unwrap();
    let missing: Vec<_> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::MissingChunk { affects, .. } => Some(affects.clone()),
            _ => None,
        })
        .collect();
    assert!(!missing.is_empty() && missing.iter().all(|a| a == &vec!["a@1".to_string()]));
}

#[test]
fn foreign_directories_locks_and_bad_arguments_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Store::open(tmp.path(), Access::Read).err().unwrap();
    assert!(
        err.to_string().contains("is not an abd data store"),
        "{err}"
    );
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let err = Store::init(tmp.path(), config()).unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes.txt")).unwrap(),
        "mine"
    );

    let dir = tmp.path().join("store");
    let _writer = new_store(&dir);
    let err = Store::open(&dir, Access::Write).err().unwrap();
    assert!(matches!(err, AdsError::Locked { .. }), "{err}");
    let err = Store::open(&dir, Access::Read).err().unwrap();
    assert!(matches!(err, AdsError::Locked { .. }), "{err}");
    drop(_writer);
    let reader = Store::open(&dir, Access::Read).unwrap();
    let err = reader.manifest("nobody", 1).unwrap_err();
    assert!(
        err.to_string().contains("no version of VM \"nobody\""),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn restoring_over_an_older_version_writes_only_changed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let mut day = disk(11, 64);
    backup(&mut store, "rep", &day, None).unwrap();
    let v1 = store.manifest("rep", 1).unwrap();
    let cbt = change(&mut day, &[5, 50], 3);
    backup(&mut store, "rep", &day, Some(&cbt)).unwrap();
    let v2 = store.manifest("rep", 2).unwrap();

    let mut replica = MemDisk::default();
    ads::restore_disk(&store, &v1, 0, &mut replica, &mut |_, _| {}).unwrap();
    let written = ads::restore_disk_over(
        &store,
        &v2,
        0,
        Some(&v1.disks[0]),
        &mut replica,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(written, 2 * 256 * 1024, "two changed segments");
    assert!(replica.0 == day.0);
}

#[test]
fn a_full_store_refuses_the_backup_whole_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = new_store(dir.path());
    let a = disk(1, 32);
    backup(&mut store, "a", &a, None).unwrap();
    let used = store.used_bytes();
    assert!(used > 0);
    // Room for a few more chunks, not for another VM's whole disk.
    store.set_capacity(Some(used + 64 * 1024));
    let refused = backup(&mut store, "b", &disk(2, 32), None);
    match refused {
        Err(AdsError::Full {
            capacity_bytes,
            needed_bytes,
            ..
        }) => {
            assert_eq!(capacity_bytes, used + 64 * 1024);
            assert!(needed_bytes > 0);
        }
        other => panic!("expected a full store, got {other:?}"),
    }
    assert!(
        store.versions("b").unwrap().is_empty(),
        "no half version of b"
    );
    assert_eq!(restore(&store, "a", 1).unwrap(), a.0, "a is whole");
    assert!(ads::verify(&store).unwrap().is_clean());
    // With room again, b goes in.
    store.set_capacity(None);
    backup(&mut store, "b", &disk(2, 32), None).unwrap();
    assert!(ads::verify(&store).unwrap().is_clean());
}

#[test]
fn a_store_whose_disk_would_run_low_refuses_the_backup_naming_the_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = new_store(dir.path());
    let a = disk(3, 32);
    backup(&mut store, "a", &a, None).unwrap();
    let free = store.free_bytes().unwrap();
    assert!(free > 0, "the filesystem reports its free space");
    // Keeping more free than the disk has: every new chunk is refused.
    store.set_keep_free(Some(u64::MAX / 2));
    match backup(&mut store, "b", &disk(4, 32), None) {
        Err(e @ AdsError::DiskFull { .. }) => {
            let AdsError::DiskFull {
                free_bytes,
                needed_bytes,
                keep_free_bytes,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert!(*free_bytes > 0 && *needed_bytes > 0);
            assert_eq!(*keep_free_bytes, u64::MAX / 2);
            assert!(e.to_string().contains("bytes free"), "{e}");
        }
        other => panic!("expected a full disk, got {other:?}"),
    }
    assert!(store.versions("b").unwrap().is_empty(), "no half version");
    assert_eq!(restore(&store, "a", 1).unwrap(), a.0, "a is whole");
    // An unchanged backup of a needs no new chunk: the reserve does not stop it.
    backup(&mut store, "a", &a, None).unwrap();
    store.set_keep_free(Some(0));
    backup(&mut store, "b", &disk(4, 32), None).unwrap();
    assert!(ads::verify(&store).unwrap().is_clean());
}

#[test]
fn a_chunk_set_aside_is_stored_again_by_the_next_backup_that_has_it_and_gc_drops_the_bad_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let a = disk(21, 16);
    let (va, _) = backup(&mut store, "a", &a, None).unwrap();
    let victim = damage_first_data_chunk(&store, &va, 0x01);

    // Verification finds it; setting it aside survives a reopen.
    let report = ads::verify(&store).unwrap();
    assert_eq!(
        ads::verify::set_aside_corrupt(&mut store, &report).unwrap(),
        1
    );
    assert_eq!(
        ads::verify::set_aside_corrupt(&mut store, &report).unwrap(),
        0
    );
    drop(store);
    let mut store = Store::open(tmp.path(), Access::Write).unwrap();
    assert!(
        !store.index().contains(&victim),
        "a set-aside chunk counts as missing"
    );
    let report = ads::verify(&store).unwrap();
    assert_eq!(report.set_aside, 1);
    assert!(
        matches!(&report.problems[..], [Problem::DamagedChunk { chunk, affects }]
            if *chunk == victim.to_hex() && affects == &["a@1".to_string()]),
        "{:?}",
        report.problems
    );
    let err = restore(&store, "a", 1).unwrap_err();
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");

    // The next full read of the same disk stores the chunk again: both versions restore.
    backup(&mut store, "a", &a, None).unwrap();
    let report = ads::verify(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(restore(&store, "a", 1).unwrap(), a.0);
    assert_eq!(restore(&store, "a", 2).unwrap(), a.0);

    // gc rewrites the pack without the bad copy and forgets it.
    ads::gc::gc(&mut store, 2).unwrap();
    let report = ads::verify(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.set_aside, 0);
    drop(store);
    let store = Store::open(tmp.path(), Access::Read).unwrap();
    assert_eq!(restore(&store, "a", 1).unwrap(), a.0);
}

#[test]
fn a_damaged_list_that_cannot_be_read_is_named_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    drop(new_store(tmp.path()));
    std::fs::write(tmp.path().join("damaged.json"), b"{not json").unwrap();
    let err = Store::open(tmp.path(), Access::Write).err().unwrap();
    assert!(err.to_string().contains("damaged.json"), "{err}");
    assert_eq!(
        std::fs::read(tmp.path().join("damaged.json")).unwrap(),
        b"{not json"
    );
}

#[test]
fn a_chunk_stored_again_in_a_pack_of_the_same_name_mends_the_damage() {
    // A one-chunk disk: its pack holds that chunk alone, and storing the
    // chunk again writes a pack with the very same name.
    let tmp = tempfile::tempdir().unwrap();
    let mut store = new_store(tmp.path());
    let tiny = MemDisk((0..4096u32).map(|i| (i * 7 + 3) as u8).collect());
    let (v1, _) = backup(&mut store, "t", &tiny, None).unwrap();
    let victim = v1.chunk_refs().map(|(id, _)| *id).next().unwrap();
    let location = store.index().get(&victim).unwrap().clone();
    assert_eq!(store.index().packs()[&location.pack].len(), 1);
    let pack = ads::pack::pack_path(&tmp.path().join("packs"), &location.pack);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[location.offset as usize + 1] ^= 0x10;
    std::fs::write(&pack, bytes).unwrap();
    let report = ads::verify(&store).unwrap();
    assert_eq!(
        ads::verify::set_aside_corrupt(&mut store, &report).unwrap(),
        1
    );

    let (v2, _) = backup(&mut store, "t", &tiny, None).expect("the damaged chunk is stored again");
    assert_eq!(
        store.index().get(&victim).unwrap().pack,
        location.pack,
        "same name"
    );
    let report = ads::verify(&store).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.set_aside, 0, "the damage went with the old file");
    assert_eq!(restore(&store, "t", v1.seq).unwrap(), tiny.0);
    assert_eq!(restore(&store, "t", v2.seq).unwrap(), tiny.0);
    drop(store);
    let store = Store::open(tmp.path(), Access::Read).unwrap();
    assert_eq!(restore(&store, "t", v1.seq).unwrap(), tiny.0);
}
