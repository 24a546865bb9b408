//! Dedup ratio by chunk size on the simulator's seeded disk content.
//!
//! Twelve 64 MiB disks cloned from one template (shared OS blocks, zero
//! regions, shifted copies, unique data), as on day 0 and after day 1's
//! changes. For each average chunk size: distinct chunks, the bytes they
//! hold, and the ratio of logical bytes to distinct bytes; fixed 64 KiB
//! blocks are the baseline. Run: `cargo run --release --example dedup_ratio [SEED]`.

use ads::{ChunkId, ChunkingParams};
use std::collections::HashSet;
use xapi_sim::content::{ContentProfile, DiskContent};

const DISKS: u64 = 12;
const DISK_BYTES: u64 = 64 << 20;

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let disks: Vec<Vec<u8>> = (1..=DISKS)
        .flat_map(|disk| {
            let content = DiskContent {
                seed,
                lineage: 1,
                disk,
                size_bytes: DISK_BYTES,
                profile: ContentProfile::default(),
            };
            [0, 1].map(|day| {
                let mut data = vec![0u8; DISK_BYTES as usize];
                content.read_at(0, day, &mut data);
                data
            })
        })
        .collect();
    let logical = disks.len() as u64 * DISK_BYTES;
    println!(
        "seed {seed}: {DISKS} disks x 64 MiB, days 0 and 1 ({} MiB logical)",
        logical >> 20
    );
    println!(
        "{:>14} {:>10} {:>14} {:>8}",
        "chunking", "chunks", "distinct MiB", "ratio"
    );
    let report = |name: String, chunks: &HashSet<(ChunkId, u32)>| {
        let distinct: u64 = chunks.iter().map(|(_, len)| *len as u64).sum();
        println!(
            "{name:>14} {:>10} {:>14.1} {:>8.2}",
            chunks.len(),
            distinct as f64 / (1 << 20) as f64,
            logical as f64 / distinct as f64
        );
    };
    let mut fixed = HashSet::new();
    for disk in &disks {
        for block in disk.chunks(64 << 10) {
            if !ads::chunking::is_zero(block) {
                fixed.insert((ChunkId::of(block), block.len() as u32));
            }
        }
    }
    report("fixed 64K".into(), &fixed);
    for avg_kib in [8u32, 16, 32, 64, 128, 256, 1024] {
        let params = ChunkingParams::with_avg(avg_kib * 1024);
        let mut chunks = HashSet::new();
        for disk in &disks {
            for segment in disk.chunks(params.segment_bytes as usize) {
                for span in ads::chunking::chunk_segment(&params, segment) {
                    if !span.id.is_zero_run() {
                        chunks.insert((span.id, span.len));
                    }
                }
            }
        }
        report(format!("fastcdc {avg_kib}K"), &chunks);
    }
}
