//! Restore: a version's disk back to bytes, every chunk checked against its
//! address and the whole disk against the digest taken at backup time.

use crate::ChunkId;
use crate::error::{AdsError, Result};
use crate::manifest::{DiskManifest, Manifest, Segment};
use crate::source::{ChunkSource, DiskTarget};
use rayon::prelude::*;

/// Segments restored together.
const BATCH_SEGMENTS: usize = 16;

/// Writes disk `disk_index` of `manifest` to `target`; returns bytes written.
/// `progress` gets bytes done and total after every batch.
pub fn restore_disk(
    store: &dyn ChunkSource,
    manifest: &Manifest,
    disk_index: usize,
    target: &mut dyn DiskTarget,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    restore_disk_over(store, manifest, disk_index, None, target, progress)
}

/// As [`restore_disk`], onto a target that already holds `base` (the same
/// disk in an earlier version): segments whose digest is unchanged are not
/// written (incremental replication). Returns the bytes written.
pub fn restore_disk_over(
    store: &dyn ChunkSource,
    manifest: &Manifest,
    disk_index: usize,
    base: Option<&DiskManifest>,
    target: &mut dyn DiskTarget,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let disk = manifest.disks.get(disk_index).ok_or_else(|| {
        AdsError::Invalid(format!(
            "VM {:?} version {} has {} disk(s), not {}",
            manifest.vm,
            manifest.seq,
            manifest.disks.len(),
            disk_index + 1
        ))
    })?;
    disk.check_shape().map_err(|detail| AdsError::Corrupt {
        path: format!("versions/{}/{}", manifest.vm, manifest.seq).into(),
        what: "manifest",
        detail,
    })?;
    let (mut written, mut done) = (0, 0);
    let zero_block = vec![0u8; disk.segment_bytes as usize];
    for (batch_number, batch) in disk.segments.chunks(BATCH_SEGMENTS).enumerate() {
        let first = batch_number * BATCH_SEGMENTS;
        let unchanged = |i: usize| {
            let index = first + i;
            let len = disk
                .segment_bytes
                .min(disk.size_bytes - index as u64 * disk.segment_bytes);
            base.filter(|b| {
                b.segment_bytes == disk.segment_bytes && b.size_bytes == disk.size_bytes
            })
            .and_then(|b| b.segments.get(index))
            .is_some_and(|old| old.digest(len) == batch[i].digest(len))
        };
        let bytes: Vec<Option<Option<Vec<u8>>>> = batch
            .par_iter()
            .enumerate()
            .map(|(i, segment)| match segment {
                _ if unchanged(i) => Ok(None),
                Segment::Zero => Ok(Some(None)),
                Segment::Data { chunks, .. } => {
                    let mut data =
                        Vec::with_capacity(chunks.iter().map(|(_, l)| *l as usize).sum());
                    let stored: Vec<ChunkId> = chunks
                        .iter()
                        .map(|(id, _)| *id)
                        .filter(|id| !id.is_zero_run())
                        .collect();
                    let mut fetched = store.read_chunks(&stored)?.into_iter();
                    for (id, len) in chunks {
                        if id.is_zero_run() {
                            data.resize(data.len() + *len as usize, 0);
                        } else {
                            let chunk = fetched.next().ok_or(AdsError::MissingChunk { id: *id })?;
                            data.extend_from_slice(&chunk);
                        }
                    }
                    Ok(Some(Some(data)))
                }
            })
            .collect::<Result<_>>()?;
        for (i, data) in bytes.into_iter().enumerate() {
            let index = (first + i) as u64;
            let start = index * disk.segment_bytes;
            let len = disk.segment_bytes.min(disk.size_bytes - start) as usize;
            let write = |target: &mut dyn DiskTarget, data: &[u8]| {
                target.write_at(start, data).map_err(|source| AdsError::Io {
                    path: format!("restore target at offset {start}").into(),
                    source,
                })
            };
            match data {
                // Unchanged since `base`: the target already holds these bytes.
                None => {}
                Some(Some(data)) => {
                    // check_shape proved chunk lengths; a decoded chunk's length is checked too.
                    assert_eq!(data.len(), len, "segment {index} length");
                    write(target, &data)?;
                    written += len as u64;
                }
                Some(None) if target.zeroed() => {}
                Some(None) => {
                    write(target, &zero_block[..len])?;
                    written += len as u64;
                }
            }
            done += len as u64;
        }
        progress(done, disk.size_bytes);
    }
    // Every chunk matched its address, so the segments hash to the manifest's
    // digests; the disk digest ties them to what was read at backup time.
    let got = DiskManifest::digest_of(disk.size_bytes, disk.segment_bytes, &disk.segments);
    if got != disk.digest {
        return Err(AdsError::DigestMismatch {
            vm: manifest.vm.clone(),
            seq: manifest.seq,
            disk: disk_index,
            expected: disk.digest.to_hex(),
            got: got.to_hex(),
        });
    }
    Ok(written)
}
