//! Faults of the engine's data store that a scenario scripts: chunks damaged
//! at rest (`chunk_corrupt`), and its volume filling up (`store_full`). The
//! pools are not involved: the runner flips a byte of each chosen chunk in its
//! pack file, under the running engine, and leaves the store no room while a
//! volume is full.

use ads::{ChunkId, Store};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use xapi_sim::faults::{FaultKind, FaultSpec, Rate};

/// A chunk damaged at rest: where, and which versions use it.
#[derive(Clone, Debug)]
pub struct Damage {
    pub chunk: ChunkId,
    pub pack: String,
    pub offset: u64,
    pub users: Vec<String>,
}

/// Picks `count` distinct chunks that versions of `pool`'s VMs use (seeded:
/// the same every run of a seed) and flips one byte of each in its pack.
/// Returns what it damaged; errors name the file.
pub fn corrupt_chunks(
    store: &Store,
    pool: &str,
    count: u32,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Damage>, String> {
    let manifests = store.all_manifests().map_err(|e| e.to_string())?;
    let of_pool = |m: &&ads::Manifest| m.vm_record["pool"].as_str() == Some(pool);
    let candidates: Vec<ChunkId> = manifests
        .iter()
        .filter(of_pool)
        .flat_map(|m| m.chunk_refs().map(|(id, _)| *id))
        .filter(|id| !id.is_zero_run() && store.index().contains(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut chosen = BTreeSet::new();
    while chosen.len() < (count as usize).min(candidates.len()) {
        chosen.insert(candidates[rng.random_range(0..candidates.len())]);
    }
    let packs = store.root().join("packs");
    let mut damage = Vec::new();
    for chunk in chosen {
        let location = store
            .index()
            .get(&chunk)
            .expect("a candidate is stored")
            .clone();
        let path = ads::pack::pack_path(&packs, &location.pack);
        let at = location.offset + u64::from(location.stored_len) / 2;
        flip_byte(&path, at).map_err(|e| format!("{}: {e}", path.display()))?;
        let users = manifests
            .iter()
            .filter(|m| m.chunk_refs().any(|(id, _)| *id == chunk))
            .map(ads::Manifest::label)
            .collect();
        damage.push(Damage {
            chunk,
            pack: location.pack,
            offset: location.offset,
            users,
        });
    }
    Ok(damage)
}

/// A `store_full` fault that strikes this seed: the data store's volume is
/// full from `from_s` until `until_s` (none: to the end of the run).
#[derive(Clone, Debug, PartialEq)]
pub struct FullWindow {
    pub pool: String,
    pub from_s: f64,
    pub until_s: Option<f64>,
}

impl FullWindow {
    /// True while the volume is full, `at_s` into the run.
    pub fn covers(&self, at_s: f64) -> bool {
        self.from_s <= at_s && self.until_s.is_none_or(|until| at_s < until)
    }
}

/// The `store_full` windows of `faults` that strike this seed, each kept or
/// dropped by its rate (drawn once per seed, on a generator of its own).
pub fn full_windows(faults: &[FaultSpec], seed: u64) -> Vec<FullWindow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0066_756c_6c00);
    faults
        .iter()
        .filter(|f| f.kind == FaultKind::StoreFull)
        .filter(|f| {
            let rate = match f.rate {
                Rate::Fixed(r) => r,
                Rate::Range([lo, hi]) if hi > lo => rng.random_range(lo..=hi),
                Rate::Range([lo, _]) => lo,
            };
            rng.random_bool(rate.clamp(0.0, 1.0))
        })
        .map(|f| FullWindow {
            pool: f.pool.clone(),
            from_s: f.from_s,
            until_s: f.until_s,
        })
        .collect()
}

/// The generator `chunk_corrupt` faults draw from, for `seed`.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x0063_6f72_7275_7074)
}

fn flip_byte(path: &std::path::Path, at: u64) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0x40;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&byte)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(text: &str) -> FaultSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_full_window_strikes_by_its_rate_and_covers_its_time() {
        let always = fault("kind = \"store_full\"\npool = \"lab\"\nfrom_s = 100\nuntil_s = 200");
        let never = fault("kind = \"store_full\"\npool = \"lab\"\nrate = 0.0");
        let other = fault("kind = \"sr_fill\"\npool = \"lab\"\nsr = \"nfs\"");
        let windows = full_windows(&[always, never, other], 7);
        assert_eq!(
            windows,
            [FullWindow {
                pool: "lab".into(),
                from_s: 100.0,
                until_s: Some(200.0)
            }]
        );
        let w = &windows[0];
        assert!(!w.covers(99.9) && w.covers(100.0) && w.covers(199.9) && !w.covers(200.0));
    }
}
