//! Faults of the engine's data store that a scenario scripts: chunks damaged
//! at rest (`chunk_corrupt`). The pools are not involved; the runner flips a
//! byte of each chosen chunk in its pack file, under the running engine.

use ads::{ChunkId, Store};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};

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
