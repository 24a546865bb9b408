//! What simulated disks hold: real, deterministic bytes, made lazily per
//! 64 KiB block from the seed.
//!
//! A disk's blocks are of three kinds, decided per 1 MiB region:
//! - **zero**: never written (sparse);
//! - **system**: the OS image, the same bytes on every disk of one lineage
//!   (VMs cloned from one template share them), text-like and compressible;
//! - **copy**: the VM's own copy of OS bytes from elsewhere on the disk,
//!   shifted by a multiple of 4 KiB (files are block-aligned in a
//!   filesystem, not 64 KiB-aligned): found by content-defined chunking,
//!   missed by fixed blocks;
//! - **unique**: the VM's own data, part text-like and part incompressible.
//!
//! Each day, a fraction of 256 KiB runs is rewritten with new unique bytes;
//! those are the blocks changed-block tracking reports. Nothing is stored:
//! any block of any day is recomputed from (seed, lineage, disk, index, day).

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The simulated day of `now` (day 0 starts the run; disks change each midnight).
pub fn day_of(now: crate::time::SimTime) -> u32 {
    (now.as_ms() / 86_400_000) as u32
}

/// CBT's bitmap as XAPI returns it: one bit per 64 KiB block, most
/// significant bit first, base64-encoded.
pub fn cbt_bitmap_base64(changed: &[bool]) -> String {
    use base64::Engine;
    let mut bytes = vec![0u8; changed.len().div_ceil(8)];
    for (i, _) in changed.iter().enumerate().filter(|(_, c)| **c) {
        bytes[i / 8] |= 0x80 >> (i % 8);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes per block (CBT's granularity).
pub const BLOCK_BYTES: usize = 64 * 1024;
const REGION_BLOCKS: u64 = 16;
const CHANGE_RUN_BLOCKS: u64 = 4;

/// Shares of a disk's regions and how fast it changes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContentProfile {
    /// Share of regions never written.
    pub zero_fraction: f64,
    /// Share of regions holding the lineage's OS image.
    pub system_fraction: f64,
    /// Share of regions holding shifted copies of OS bytes.
    pub copy_fraction: f64,
    /// Share of unique blocks that are text-like (the rest is incompressible).
    pub compressible_fraction: f64,
    /// Share of 256 KiB runs rewritten each day.
    pub daily_change_rate: f64,
    /// Share of the disk, from its start, the guest ever wrote; the rest
    /// holds zeros until a day's changes land there.
    pub used_fraction: f64,
}

impl Default for ContentProfile {
    fn default() -> Self {
        Self {
            zero_fraction: 0.2,
            system_fraction: 0.35,
            copy_fraction: 0.1,
            compressible_fraction: 0.35,
            daily_change_rate: 0.02,
            used_fraction: 1.0,
        }
    }
}

/// The content of one disk.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskContent {
    pub seed: u64,
    /// Disks of one lineage (clones of one template) share their OS blocks.
    pub lineage: u64,
    /// Distinguishes the disk's own data from other disks'.
    pub disk: u64,
    pub size_bytes: u64,
    pub profile: ContentProfile,
}

/// A 64-bit mix (SplitMix64's finaliser) for placement decisions.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5eed, |acc, p| mix(acc ^ mix(*p)))
}

/// A uniform draw in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Zero,
    System,
    Copy,
    Unique,
}

impl DiskContent {
    /// Number of 64 KiB blocks (the last may be short).
    pub fn block_count(&self) -> u64 {
        self.size_bytes.div_ceil(BLOCK_BYTES as u64)
    }

    fn kind(&self, block: u64) -> Kind {
        let used_blocks = (self.block_count() as f64 * self.profile.used_fraction).ceil() as u64;
        if block >= used_blocks {
            return Kind::Zero;
        }
        let region = block / REGION_BLOCKS;
        let draw = unit(hash(&[self.seed, self.lineage, region, 1]));
        if draw < self.profile.zero_fraction {
            Kind::Zero
        } else if draw < self.profile.zero_fraction + self.profile.system_fraction {
            Kind::System
        } else {
            // The VM's own regions: some hold copies of OS files (placed per disk).
            let own_share = 1.0 - self.profile.zero_fraction - self.profile.system_fraction;
            let copy_draw = unit(hash(&[self.seed, self.disk, region, 7]));
            if own_share > 0.0 && copy_draw < self.profile.copy_fraction / own_share {
                Kind::Copy
            } else {
                Kind::Unique
            }
        }
    }

    /// True when `block` was rewritten on `day` (days start at 1).
    pub fn changed_on(&self, block: u64, day: u32) -> bool {
        day > 0
            && unit(hash(&[
                self.seed,
                self.disk,
                block / CHANGE_RUN_BLOCKS,
                day as u64,
                2,
            ])) < self.profile.daily_change_rate
    }

    /// The last day up to `day` on which `block` was rewritten (0: never).
    fn last_change(&self, block: u64, day: u32) -> u32 {
        (1..=day)
            .rev()
            .find(|d| self.changed_on(block, *d))
            .unwrap_or(0)
    }

    /// Blocks that changed after `since_day` up to `day`, one bool per block.
    pub fn changed_blocks(&self, since_day: u32, day: u32) -> Vec<bool> {
        (0..self.block_count())
            .map(|b| (since_day + 1..=day).any(|d| self.changed_on(b, d)))
            .collect()
    }

    /// Fills `out` (at most one block) with block `block` as it is on `day`.
    pub fn fill_block(&self, block: u64, day: u32, out: &mut [u8]) {
        debug_assert!(out.len() <= BLOCK_BYTES);
        let version = self.last_change(block, day);
        let (kind, key) = match (version, self.kind(block)) {
            (0, Kind::Zero) => {
                out.fill(0);
                return;
            }
            (0, Kind::Copy) => {
                self.fill_copy(block, out);
                return;
            }
            (0, Kind::System) => (Kind::System, 0),
            (0, Kind::Unique) => (Kind::Unique, hash(&[self.seed, self.disk, block, 4])),
            (v, _) => (
                Kind::Unique,
                hash(&[self.seed, self.disk, block, 5, v as u64]),
            ),
        };
        if kind == Kind::System {
            self.fill_system(block, out);
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        if unit(mix(key)) < self.profile.compressible_fraction {
            fill_text(&mut rng, self.lineage, out);
        } else {
            rng.fill_bytes(out);
        }
    }

    /// OS bytes of lineage block `index` (whether or not this disk holds it there).
    fn fill_system(&self, index: u64, out: &mut [u8]) {
        let mut rng = ChaCha8Rng::seed_from_u64(hash(&[self.seed, self.lineage, index, 3]));
        fill_text(&mut rng, self.lineage, out);
    }

    /// A copy region: OS bytes from another region, shifted by 4-60 KiB.
    fn fill_copy(&self, block: u64, out: &mut [u8]) {
        let region = block / REGION_BLOCKS;
        let regions = self.block_count().div_ceil(REGION_BLOCKS).max(1);
        // Copy from a region that holds OS bytes on this disk, when one is found.
        let pick = (0..64)
            .map(|attempt| hash(&[self.seed, self.disk, region, 6, attempt]))
            .find(|h| self.kind((h % regions) * REGION_BLOCKS) == Kind::System)
            .unwrap_or_else(|| hash(&[self.seed, self.disk, region, 6]));
        let source_region = pick % regions;
        let shift = 4096 * (1 + (pick >> 32) % 15) as usize;
        let first = source_region * REGION_BLOCKS + block % REGION_BLOCKS;
        SCRATCH.with(|scratch| {
            let mut pair = scratch.borrow_mut();
            pair.resize(2 * BLOCK_BYTES, 0);
            self.fill_system(first, &mut pair[..BLOCK_BYTES]);
            self.fill_system(first + 1, &mut pair[BLOCK_BYTES..]);
            out.copy_from_slice(&pair[shift..shift + out.len()]);
        });
    }

    /// Reads `buf.len()` bytes at `offset` as the disk is on `day`.
    pub fn read_at(&self, offset: u64, day: u32, buf: &mut [u8]) {
        let mut block_buf = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / BLOCK_BYTES as u64;
            let within = (at % BLOCK_BYTES as u64) as usize;
            let block_len =
                BLOCK_BYTES.min((self.size_bytes - block * BLOCK_BYTES as u64) as usize);
            let take = (block_len - within).min(buf.len() - done);
            if within == 0 && take == block_len {
                self.fill_block(block, day, &mut buf[done..done + take]);
            } else {
                block_buf.resize(BLOCK_BYTES, 0);
                self.fill_block(block, day, &mut block_buf[..block_len]);
                buf[done..done + take].copy_from_slice(&block_buf[within..within + take]);
            }
            done += take;
        }
    }
}

thread_local! {
    /// Two blocks of OS bytes for a shifted copy, reused (no allocation per block).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Text-like bytes: words from a lineage's vocabulary, lines of varying length.
fn fill_text(rng: &mut ChaCha8Rng, lineage: u64, out: &mut [u8]) {
    const WORDS: [&str; 32] = [
        "lib", "usr", "share", "config", "kernel", "module", "systemd", "network", "service",
        "python3", "package", "version", "debian", "x86_64", "locale", "include", "header",
        "static", "dynamic", "error", "return", "struct", "const", "string", "value", "import",
        "export", "default", "target", "install", "update", "cache",
    ];
    let salt = (lineage % 251) as u8;
    let mut at = 0;
    'fill: loop {
        // One draw gives four words, each with the separator that follows it.
        let draw: u64 = rng.random();
        for part in 0..4 {
            let bits = (draw >> (16 * part)) as u32;
            let word = WORDS[(bits & 31) as usize].as_bytes();
            let take = word.len().min(out.len() - at);
            out[at..at + take].copy_from_slice(&word[..take]);
            at += take;
            if at == out.len() {
                break 'fill;
            }
            out[at] = match (bits >> 5) & 15 {
                0 => b'\n',
                1 => b'/',
                2 => b'0' + ((bits >> 9) % 10) as u8,
                3 => salt.max(b'!'),
                _ => b' ',
            };
            at += 1;
            if at == out.len() {
                break 'fill;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(disk: u64) -> DiskContent {
        DiskContent {
            seed: 7,
            lineage: 1,
            disk,
            size_bytes: 64 << 20,
            profile: ContentProfile::default(),
        }
    }

    #[test]
    fn same_inputs_same_bytes_and_clones_share_system_blocks() {
        let (a, b) = (disk(1), disk(2));
        let mut x = vec![0u8; 8 << 20];
        let mut y = vec![0u8; 8 << 20];
        a.read_at(0, 0, &mut x);
        let mut again = vec![0u8; 8 << 20];
        a.read_at(0, 0, &mut again);
        assert_eq!(x, again);
        b.read_at(0, 0, &mut y);
        let blocks = x.len() / BLOCK_BYTES;
        let shared = (0..blocks)
            .filter(|i| {
                x[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]
                    == y[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]
            })
            .count();
        assert!(
            shared > 0 && shared < blocks,
            "{shared} of {blocks} blocks shared"
        );
    }

    #[test]
    fn only_changed_blocks_differ_between_days() {
        let a = disk(1);
        let changed = a.changed_blocks(1, 2);
        let count = changed.iter().filter(|c| **c).count();
        assert!(count > 0 && count < changed.len() / 10, "{count} changed");
        let mut day1 = vec![0u8; BLOCK_BYTES];
        let mut day2 = vec![0u8; BLOCK_BYTES];
        for (block, was_changed) in changed.iter().enumerate() {
            a.fill_block(block as u64, 1, &mut day1);
            a.fill_block(block as u64, 2, &mut day2);
            assert_eq!(day1 != day2, *was_changed, "block {block}");
        }
    }

    #[test]
    fn unaligned_reads_match_block_reads() {
        let a = disk(3);
        let mut whole = vec![0u8; 3 * BLOCK_BYTES];
        a.read_at(0, 1, &mut whole);
        let mut part = vec![0u8; 100_000];
        a.read_at(1234, 1, &mut part);
        assert_eq!(&whole[1234..101_234], &part[..]);
    }
}
