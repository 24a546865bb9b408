//! Content-defined chunking inside fixed, aligned segments.
//!
//! A disk is cut into segments of `segment_bytes` (aligned to CBT's 64 KiB
//! blocks), and each segment is cut by FastCDC (v2020) on its own. A change
//! therefore only re-chunks the segments it touches, and a CBT-clean segment
//! keeps the previous version's chunk list without being read.

use crate::ChunkId;
use serde::{Deserialize, Serialize};

/// CBT's granularity: one bit of `VDI.list_changed_blocks` covers 64 KiB.
pub const CBT_BLOCK_BYTES: u64 = 64 * 1024;

/// How disks are cut. Fixed when a store is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingParams {
    pub segment_bytes: u64,
    pub chunk_min_bytes: u32,
    pub chunk_avg_bytes: u32,
    pub chunk_max_bytes: u32,
}

impl Default for ChunkingParams {
    fn default() -> Self {
        Self {
            segment_bytes: 4 * 1024 * 1024,
            chunk_min_bytes: 16 * 1024,
            chunk_avg_bytes: 64 * 1024,
            chunk_max_bytes: 256 * 1024,
        }
    }
}

impl ChunkingParams {
    /// Parameters with the given average chunk size (min = avg/4, max = avg*4).
    pub fn with_avg(chunk_avg_bytes: u32) -> Self {
        Self {
            chunk_min_bytes: chunk_avg_bytes / 4,
            chunk_avg_bytes,
            chunk_max_bytes: chunk_avg_bytes.saturating_mul(4),
            ..Self::default()
        }
    }

    /// Checks the limits FastCDC and CBT impose; names the bad value.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020 as cdc;
        if self.segment_bytes == 0 || !self.segment_bytes.is_multiple_of(CBT_BLOCK_BYTES) {
            return Err(format!(
                "segment_bytes {} is not a positive multiple of 64 KiB",
                self.segment_bytes
            ));
        }
        let (min, avg, max) = (
            self.chunk_min_bytes as usize,
            self.chunk_avg_bytes as usize,
            self.chunk_max_bytes as usize,
        );
        let in_limits = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if !in_limits {
            return Err(format!(
                "chunk sizes min {min} / avg {avg} / max {max} are outside FastCDC's limits"
            ));
        }
        Ok(())
    }

    /// Number of segments of a disk of `size_bytes`.
    pub fn segment_count(&self, size_bytes: u64) -> u64 {
        size_bytes.div_ceil(self.segment_bytes)
    }

    /// Byte range of segment `index` in a disk of `size_bytes`.
    pub fn segment_range(&self, index: u64, size_bytes: u64) -> (u64, usize) {
        let start = index * self.segment_bytes;
        let len = self.segment_bytes.min(size_bytes - start);
        (start, len as usize)
    }
}

/// One chunk of a segment: where it is and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub offset: u32,
    pub len: u32,
    pub id: ChunkId,
}

/// Cuts `segment` into content-defined chunks and hashes each one. Runs of
/// whole zero 64 KiB blocks become [`ChunkId::ZERO_RUN`] spans: never stored,
/// never hashed, and they keep chunk boundaries stable around sparse areas.
pub fn chunk_segment(params: &ChunkingParams, segment: &[u8]) -> Vec<ChunkSpan> {
    let block = CBT_BLOCK_BYTES as usize;
    let mut spans = Vec::new();
    let mut run_start = 0;
    let mut run_zero = None;
    let flush = |start: usize, end: usize, zero: bool, spans: &mut Vec<ChunkSpan>| {
        if zero {
            spans.push(ChunkSpan {
                offset: start as u32,
                len: (end - start) as u32,
                id: ChunkId::ZERO_RUN,
            });
        } else {
            chunk_data(params, segment, start, end, spans);
        }
    };
    for start in (0..segment.len()).step_by(block) {
        let end = (start + block).min(segment.len());
        let zero = is_zero(&segment[start..end]);
        match run_zero {
            Some(previous) if previous != zero => {
                flush(run_start, start, previous, &mut spans);
                run_start = start;
            }
            _ => {}
        }
        run_zero = Some(zero);
    }
    if let Some(zero) = run_zero {
        flush(run_start, segment.len(), zero, &mut spans);
    }
    spans
}

/// FastCDC over `segment[start..end]`, appending spans with segment offsets.
fn chunk_data(
    params: &ChunkingParams,
    segment: &[u8],
    start: usize,
    end: usize,
    spans: &mut Vec<ChunkSpan>,
) {
    let data = &segment[start..end];
    spans.extend(
        fastcdc::v2020::FastCDC::new(
            data,
            params.chunk_min_bytes as usize,
            params.chunk_avg_bytes as usize,
            params.chunk_max_bytes as usize,
        )
        .map(|chunk| ChunkSpan {
            offset: (start + chunk.offset) as u32,
            len: chunk.length as u32,
            id: ChunkId::of(&data[chunk.offset..chunk.offset + chunk.length]),
        }),
    );
}

/// True when every byte is zero (sparse regions are stored as zero runs).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words
        .by_ref()
        .all(|word| u128::from_ne_bytes(word.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// The digest of a segment: BLAKE3 over its chunk addresses and lengths in order.
/// Zero segments have their own digest, keyed by length.
pub fn segment_digest(chunks: &[(ChunkId, u32)]) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"abd-segment-v1");
    for (id, len) in chunks {
        hasher.update(&id.0);
        hasher.update(&len.to_le_bytes());
    }
    ChunkId(*hasher.finalize().as_bytes())
}

/// The digest of a zero segment of `len` bytes.
pub fn zero_segment_digest(len: u64) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"abd-zero-v1");
    hasher.update(&len.to_le_bytes());
    ChunkId(*hasher.finalize().as_bytes())
}

/// The digest of a whole disk: BLAKE3 over its size and segment digests.
/// With every chunk verified on restore, it proves the restored disk is
/// byte-identical to what was read at backup time (a Merkle tree of depth 2).
pub fn disk_digest(size_bytes: u64, segment_digests: impl IntoIterator<Item = ChunkId>) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"abd-disk-v1");
    hasher.update(&size_bytes.to_le_bytes());
    for digest in segment_digests {
        hasher.update(&digest.0);
    }
    ChunkId(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_segment_in_order() {
        let params = ChunkingParams::default();
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let spans = chunk_segment(&params, &data);
        let mut next = 0u32;
        for span in &spans {
            assert_eq!(span.offset, next);
            assert!(span.len <= params.chunk_max_bytes);
            next += span.len;
        }
        assert_eq!(next as usize, data.len());
        assert!(spans.len() > 5, "{} chunks", spans.len());
    }

    #[test]
    fn zero_blocks_become_zero_runs() {
        let params = ChunkingParams::default();
        let mut data = vec![0u8; 1 << 20];
        let mut noise = vec![0u8; 200_000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        data[300_000..500_000].copy_from_slice(&noise);
        let spans = chunk_segment(&params, &data);
        let zero: u32 = spans
            .iter()
            .filter(|s| s.id.is_zero_run())
            .map(|s| s.len)
            .sum();
        // Blocks 0-3 and 8-15 are all zero; 4-7 hold the noise.
        assert_eq!(zero, 12 * 65536);
        assert!(spans[0].id.is_zero_run() && spans.last().unwrap().id.is_zero_run());
        let covered: u32 = spans.iter().map(|s| s.len).sum();
        assert_eq!(covered as usize, data.len());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        let mut data = vec![0u8; 4099];
        data[4098] = 1;
        assert!(!is_zero(&data));
        data[4098] = 0;
        data[7] = 1;
        assert!(!is_zero(&data));
        assert!(is_zero(&[]));
    }

    #[test]
    fn params_are_checked() {
        assert!(ChunkingParams::default().validate().is_ok());
        let bad = ChunkingParams {
            segment_bytes: 1000,
            ..ChunkingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("segment_bytes"));
        let bad = ChunkingParams {
            chunk_min_bytes: 8,
            ..ChunkingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("min 8"));
    }
}
