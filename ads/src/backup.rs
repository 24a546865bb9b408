//! The reading side of a backup: cut a disk into segments, chunk and hash
//! them, ask the store which chunks it lacks, compress and send only those.
//!
//! Work goes in batches of segments, in two overlapping stages on all cores
//! (rayon): batch N+1 is read, chunked and hashed while batch N is checked
//! against the store, compressed and sent. Results keep disk order,
//! so a backup's manifest depends only on the bytes read.

use crate::ChunkId;
use crate::chunking::{self, ChunkSpan, ChunkingParams};
use crate::codec::Compression;
use crate::error::{AdsError, Result};
use crate::manifest::{DiskManifest, Segment};
use crate::source::DiskSource;
use crate::store::{Blob, ChunkSink};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Segments read and processed together (16 x 4 MiB = 64 MiB by default).
const BATCH_SEGMENTS: usize = 16;

/// What a disk backup read and sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Bytes read from the source disk.
    pub bytes_read: u64,
    /// Encoded bytes of new chunks handed to the store.
    pub bytes_sent: u64,
    /// Chunks the version references (with repeats).
    pub chunks_total: u64,
    /// Chunks sent because the store lacked them.
    pub chunks_sent: u64,
    /// Segments kept from the previous version without reading (CBT-clean).
    pub segments_skipped: u64,
    /// Segments read in all.
    pub segments_read: u64,
    /// Bytes of zero segments.
    pub zero_bytes: u64,
}

impl ReadStats {
    /// Adds another disk's numbers.
    pub fn add(&mut self, other: &ReadStats) {
        self.bytes_read += other.bytes_read;
        self.bytes_sent += other.bytes_sent;
        self.chunks_total += other.chunks_total;
        self.chunks_sent += other.chunks_sent;
        self.segments_skipped += other.segments_skipped;
        self.segments_read += other.segments_read;
        self.zero_bytes += other.zero_bytes;
    }
}

/// How to read one disk.
pub struct DiskPlan<'a> {
    pub label: String,
    pub chunking: ChunkingParams,
    pub compression: Compression,
    /// The same disk in the previous version, for incremental backups.
    pub previous: Option<&'a DiskManifest>,
    /// Segments that may have changed since `previous` (from CBT). `None`
    /// reads every segment; clean segments keep the previous chunk list.
    pub changed_segments: Option<&'a [bool]>,
}

/// Which segments a CBT bitmap marks (one bool per 64 KiB block).
pub fn changed_segments_from_blocks(
    params: &ChunkingParams,
    size_bytes: u64,
    changed_blocks: &[bool],
) -> Vec<bool> {
    let blocks_per_segment = (params.segment_bytes / chunking::CBT_BLOCK_BYTES) as usize;
    (0..params.segment_count(size_bytes) as usize)
        .map(|segment| {
            let first = segment * blocks_per_segment;
            let last = (first + blocks_per_segment).min(changed_blocks.len());
            // Blocks beyond the bitmap (a grown disk) count as changed.
            first >= changed_blocks.len() || changed_blocks[first..last].iter().any(|&c| c)
        })
        .collect()
}

/// The 64 KiB blocks of `disk` (a previous version's) that lie in segments
/// referencing a chunk `stored` says the store lacks (one set aside as
/// damaged): an incremental must read those again, not keep their chunk list.
pub fn blocks_of_lost_segments(
    disk: &DiskManifest,
    stored: impl Fn(&ChunkId) -> bool,
) -> Vec<std::ops::Range<usize>> {
    let blocks_per_segment = (disk.segment_bytes / chunking::CBT_BLOCK_BYTES) as usize;
    disk.segments
        .iter()
        .enumerate()
        .filter(|(_, segment)| segment.chunks().iter().any(|(id, _)| !stored(id)))
        .map(|(i, _)| i * blocks_per_segment..(i + 1) * blocks_per_segment)
        .collect()
}

enum Work {
    /// Kept from the previous version.
    Reuse(Segment),
    /// Read into batch buffer `slot`.
    Read { slot: usize, len: usize },
}

/// Backs up one disk into `sink`; returns its manifest and what was read and sent.
/// `progress` is called with bytes done and total after every batch.
pub fn backup_disk(
    plan: &DiskPlan<'_>,
    source: &mut dyn DiskSource,
    sink: &mut (dyn ChunkSink + Send),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(DiskManifest, ReadStats)> {
    let params = plan.chunking;
    let size_bytes = source.size_bytes();
    let segment_count = params.segment_count(size_bytes);
    let previous = plan
        .previous
        .filter(|p| p.segment_bytes == params.segment_bytes);
    let mut stats = ReadStats::default();
    let mut segments = Vec::with_capacity(segment_count as usize);
    let mut buffers: Vec<Vec<u8>> = (0..BATCH_SEGMENTS).map(|_| Vec::new()).collect();
    let mut spare: Vec<Vec<u8>> = (0..BATCH_SEGMENTS).map(|_| Vec::new()).collect();

    let plan_batch = |first: u64| -> Vec<(u64, Work)> {
        let mut slot = 0;
        (first..(first + BATCH_SEGMENTS as u64).min(segment_count))
            .map(|index| {
                let (start, len) = params.segment_range(index, size_bytes);
                let clean = plan
                    .changed_segments
                    .is_some_and(|changed| !changed.get(index as usize).copied().unwrap_or(true));
                let kept = previous.and_then(|p| {
                    let same_len = p.size_bytes >= start + len as u64
                        && params.segment_range(index, p.size_bytes).1 == len;
                    (clean && same_len).then(|| p.segments[index as usize].clone())
                });
                let work = match kept {
                    Some(segment) => Work::Reuse(segment),
                    None => {
                        slot += 1;
                        Work::Read {
                            slot: slot - 1,
                            len,
                        }
                    }
                };
                (index, work)
            })
            .collect()
    };
    let read_batch = |source: &mut dyn DiskSource,
                      batch: &[(u64, Work)],
                      buffers: &mut [Vec<u8>]|
     -> Result<u64> {
        let mut read = 0;
        for (index, work) in batch {
            if let Work::Read { slot, len } = work {
                let buffer = &mut buffers[*slot];
                buffer.resize(*len, 0);
                source
                    .read_at(index * params.segment_bytes, buffer)
                    .map_err(AdsError::Source)?;
                read += *len as u64;
            }
        }
        Ok(read)
    };

    // Two stages overlap: while batch N is checked against the store,
    // compressed and sent, batch N+1 is read and chunked.
    let mut first = 0;
    let mut batch = plan_batch(first);
    stats.bytes_read += read_batch(source, &batch, &mut buffers)?;
    let mut cut = cut_batch(plan, &batch, &buffers);
    while first < segment_count {
        let next_first = first + BATCH_SEGMENTS as u64;
        let next_batch = plan_batch(next_first);
        let (read_next, processed) = rayon::join(
            || -> Result<_> {
                let read = read_batch(source, &next_batch, &mut spare)?;
                Ok((read, cut_batch(plan, &next_batch, &spare)))
            },
            || send_batch(plan, &batch, &buffers, cut, sink),
        );
        let (batch_segments, batch_stats) = processed?;
        let (read, next_cut) = read_next?;
        stats.bytes_read += read;
        stats.add(&batch_stats);
        segments.extend(batch_segments);
        std::mem::swap(&mut buffers, &mut spare);
        batch = next_batch;
        cut = next_cut;
        first = next_first;
        progress((first * params.segment_bytes).min(size_bytes), size_bytes);
    }
    assert_eq!(
        segments.len() as u64,
        segment_count,
        "one entry per segment"
    );
    let disk = DiskManifest::new(
        plan.label.clone(),
        size_bytes,
        params.segment_bytes,
        segments,
    );
    Ok((disk, stats))
}

/// Chunk lists of a batch's read segments (`None` for kept or zero segments).
type BatchCut = Vec<Option<Vec<ChunkSpan>>>;

/// Chunks and hashes the segments of a batch that were read.
fn cut_batch(plan: &DiskPlan<'_>, batch: &[(u64, Work)], buffers: &[Vec<u8>]) -> BatchCut {
    batch
        .par_iter()
        .map(|(_, work)| match work {
            Work::Reuse(_) => None,
            Work::Read { slot, .. } => {
                let data = &buffers[*slot];
                (!chunking::is_zero(data)).then(|| chunking::chunk_segment(&plan.chunking, data))
            }
        })
        .collect()
}

/// Dedups and sends one chunked batch; returns its segments in order.
fn send_batch(
    plan: &DiskPlan<'_>,
    batch: &[(u64, Work)],
    buffers: &[Vec<u8>],
    cut: BatchCut,
    sink: &mut (dyn ChunkSink + Send),
) -> Result<(Vec<Segment>, ReadStats)> {
    let mut stats = ReadStats::default();

    // Ask the store about each distinct chunk once.
    let mut seen = HashSet::new();
    let mut candidates: Vec<(usize, ChunkSpan)> = Vec::new();
    for ((_, work), spans) in batch.iter().zip(&cut) {
        if let (Work::Read { slot, .. }, Some(spans)) = (work, spans) {
            for span in spans {
                if !span.id.is_zero_run() && seen.insert(span.id) {
                    candidates.push((*slot, *span));
                }
            }
        }
    }
    let ids: Vec<ChunkId> = candidates.iter().map(|(_, s)| s.id).collect();
    let missing = sink.missing(&ids)?;
    let blobs: Vec<Blob> = candidates
        .par_iter()
        .zip(missing.par_iter())
        .filter(|(_, missing)| **missing)
        .map(|((slot, span), _)| {
            let raw = &buffers[*slot][span.offset as usize..(span.offset + span.len) as usize];
            let (codec, data) = plan.compression.encode(raw);
            Blob {
                id: span.id,
                raw_len: span.len,
                codec,
                data,
            }
        })
        .collect();
    stats.chunks_sent = blobs.len() as u64;
    stats.bytes_sent = blobs.iter().map(|b| b.data.len() as u64).sum();
    sink.put(blobs)?;

    let mut segments = Vec::with_capacity(batch.len());
    for ((_, work), spans) in batch.iter().zip(cut) {
        let segment = match (work, spans) {
            (Work::Reuse(segment), _) => {
                stats.segments_skipped += 1;
                segment.clone()
            }
            (Work::Read { len, .. }, None) => {
                stats.segments_read += 1;
                stats.zero_bytes += *len as u64;
                Segment::Zero
            }
            (Work::Read { .. }, Some(spans)) => {
                stats.segments_read += 1;
                Segment::data(spans.iter().map(|s| (s.id, s.len)).collect())
            }
        };
        stats.chunks_total += segment
            .chunks()
            .iter()
            .filter(|(id, _)| !id.is_zero_run())
            .count() as u64;
        segments.push(segment);
    }
    Ok((segments, stats))
}
