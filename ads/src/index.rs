//! The chunk index: where each chunk lives. A cache of the pack trailers.
//!
//! Index files (`index/<checksum>.idx`) list the entries of the packs a commit
//! wrote. They are only an accelerator: on open, packs no index file covers
//! are read from their trailers, and entries of vanished packs are dropped.

use crate::ChunkId;
use crate::codec::BlobCodec;
use crate::error::{IoContext, Result};
use crate::pack::{self, PackEntry, PackName};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ABDIDX01";

/// Where a chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackName,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: BlobCodec,
}

/// Problems met while loading, reported by `verify` (loading goes on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexIssue {
    /// An index file could not be read; its packs were re-read instead.
    BadIndexFile { path: PathBuf, detail: String },
    /// A pack's trailer is unreadable: its chunks are unavailable.
    BadPack { pack: PackName, detail: String },
}

/// All chunks of the store, keyed by address.
#[derive(Default)]
pub struct ChunkIndex {
    chunks: HashMap<ChunkId, Location>,
    /// Every sealed pack with its entries, in name order.
    packs: BTreeMap<PackName, Vec<PackEntry>>,
    /// Index files currently on disk.
    files: BTreeSet<PathBuf>,
    /// Stored blobs found corrupt and set aside (pack, offset) -> chunk: never
    /// read, never copied; the chunk counts as missing until stored again.
    damaged: BTreeMap<(PackName, u64), ChunkId>,
    pub issues: Vec<IndexIssue>,
}

impl ChunkIndex {
    /// Loads the index files under `index_dir`, then adds any pack under
    /// `packs_dir` they do not cover. Returns the index and the packs that
    /// were read from their trailers (so a writer can index them).
    /// Blobs in `damaged` are left out of the chunk map.
    pub fn load(
        index_dir: &Path,
        packs_dir: &Path,
        damaged: BTreeMap<(PackName, u64), ChunkId>,
    ) -> Result<(Self, Vec<PackName>)> {
        let mut index = Self {
            damaged,
            ..Self::default()
        };
        let on_disk = list_packs(packs_dir)?;
        let mut from_files: BTreeMap<PackName, Vec<PackEntry>> = BTreeMap::new();
        for path in list_with_extension(index_dir, "idx")? {
            match read_index_file(&path) {
                Ok(packs) => {
                    from_files.extend(packs);
                    index.files.insert(path);
                }
                Err(detail) => index.issues.push(IndexIssue::BadIndexFile { path, detail }),
            }
        }
        let mut unindexed = Vec::new();
        for (name, path) in &on_disk {
            let entries = match from_files.remove(name) {
                Some(entries) => entries,
                None => match pack::read_trailer(path) {
                    Ok(entries) => {
                        unindexed.push(name.clone());
                        entries
                    }
                    Err(e) => {
                        index.issues.push(IndexIssue::BadPack {
                            pack: name.clone(),
                            detail: e.to_string(),
                        });
                        continue;
                    }
                },
            };
            index.add_pack(name.clone(), entries);
        }
        Ok((index, unindexed))
    }

    /// Adds a sealed pack's entries. An already-known chunk keeps its first
    /// location; a damaged blob gives none.
    pub fn add_pack(&mut self, name: PackName, entries: Vec<PackEntry>) {
        for entry in &entries {
            if self.is_damaged(&name, entry.offset) {
                continue;
            }
            self.chunks.entry(entry.id).or_insert_with(|| Location {
                pack: name.clone(),
                offset: entry.offset,
                stored_len: entry.stored_len,
                raw_len: entry.raw_len,
                codec: entry.codec,
            });
        }
        self.packs.insert(name, entries);
    }

    /// Where `id` is stored, if anywhere.
    pub fn get(&self, id: &ChunkId) -> Option<&Location> {
        self.chunks.get(id)
    }

    /// True when `id` is stored.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    /// Number of distinct chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Sealed packs with their entries, in name order.
    pub fn packs(&self) -> &BTreeMap<PackName, Vec<PackEntry>> {
        &self.packs
    }

    /// Index files on disk.
    pub fn files(&self) -> &BTreeSet<PathBuf> {
        &self.files
    }

    /// Records that an index file now exists.
    pub fn note_file(&mut self, path: PathBuf) {
        self.files.insert(path);
    }

    /// Forgets index files (after they were deleted).
    pub fn forget_files(&mut self) {
        self.files.clear();
    }

    /// True when the blob at `offset` of `pack` was found corrupt and set aside.
    pub fn is_damaged(&self, pack: &str, offset: u64) -> bool {
        // Asked for every blob on load and in verify: no key to build when
        // nothing is damaged, the usual case.
        !self.damaged.is_empty() && self.damaged.contains_key(&(pack.to_string(), offset))
    }

    /// Damaged blobs set aside: (pack, offset) -> chunk.
    pub fn damaged(&self) -> &BTreeMap<(PackName, u64), ChunkId> {
        &self.damaged
    }

    /// Sets the blob of `id` at `offset` of `pack` aside: the chunk is served
    /// from another good copy if a pack holds one, else it counts as missing
    /// (so the next backup that has it stores it again).
    pub fn set_aside(&mut self, id: ChunkId, pack: &str, offset: u64) {
        self.damaged.insert((pack.to_string(), offset), id);
        let here = self
            .chunks
            .get(&id)
            .is_some_and(|l| l.pack == pack && l.offset == offset);
        if !here {
            return;
        }
        self.chunks.remove(&id);
        let other = self.packs.iter().find_map(|(name, entries)| {
            entries
                .iter()
                .find(|e| e.id == id && !self.is_damaged(name, e.offset))
                .map(|e| (name.clone(), *e))
        });
        if let Some((name, entry)) = other {
            self.chunks.insert(
                id,
                Location {
                    pack: name,
                    offset: entry.offset,
                    stored_len: entry.stored_len,
                    raw_len: entry.raw_len,
                    codec: entry.codec,
                },
            );
        }
    }

    /// A pack named `name` was just sealed, whole and good: a pack name is the
    /// checksum of its trailer, so a pack with the same chunks in the same
    /// order takes the name of an earlier one, and its file replaces the old
    /// one. Damage recorded under that name is gone with the old file: it is
    /// forgotten, and the pack's chunks located again. True when any was.
    pub fn clear_damage(&mut self, name: &str) -> bool {
        let before = self.damaged.len();
        self.damaged.retain(|(pack, _), _| pack != name);
        if self.damaged.len() == before {
            return false;
        }
        if let Some(entries) = self.packs.get(name) {
            for entry in entries {
                self.chunks.entry(entry.id).or_insert_with(|| Location {
                    pack: name.to_string(),
                    offset: entry.offset,
                    stored_len: entry.stored_len,
                    raw_len: entry.raw_len,
                    codec: entry.codec,
                });
            }
        }
        true
    }

    /// Removes a pack (after gc deleted it) and the locations that point into it.
    pub fn remove_pack(&mut self, name: &str) {
        self.damaged.retain(|(pack, _), _| pack != name);
        if let Some(entries) = self.packs.remove(name) {
            for entry in entries {
                if self.chunks.get(&entry.id).is_some_and(|l| l.pack == name) {
                    self.chunks.remove(&entry.id);
                }
            }
        }
    }
}

/// Writes an index file listing `packs`; returns its path. Atomic (tmp + rename).
pub fn write_index_file(index_dir: &Path, packs: &[(PackName, Vec<PackEntry>)]) -> Result<PathBuf> {
    let mut body = MAGIC.to_vec();
    body.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (name, entries) in packs {
        let raw_name = blake3::Hash::from_hex(name).expect("pack names are hex");
        body.extend_from_slice(raw_name.as_bytes());
        body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        pack::encode_entries(entries, &mut body);
    }
    let checksum = blake3::hash(&body);
    body.extend_from_slice(checksum.as_bytes());
    let path = index_dir.join(format!("{}.idx", checksum.to_hex()));
    crate::store::write_atomic(&path, &body)?;
    Ok(path)
}

fn read_index_file(path: &Path) -> std::result::Result<BTreeMap<PackName, Vec<PackEntry>>, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..8] != MAGIC {
        return Err("not an index file".into());
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err("checksum mismatch".into());
    }
    let mut at = 8;
    let mut take = |n: usize| -> std::result::Result<&[u8], String> {
        let slice = body.get(at..at + n).ok_or("truncated")?;
        at += n;
        Ok(slice)
    };
    let pack_count = u32::from_le_bytes(take(4)?.try_into().expect("4"));
    let mut packs = BTreeMap::new();
    for _ in 0..pack_count {
        let name = blake3::Hash::from_bytes(take(32)?.try_into().expect("32"))
            .to_hex()
            .to_string();
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
        let entries = pack::decode_entries(take(count * 49)?)?;
        packs.insert(name, entries);
    }
    Ok(packs)
}

/// Every sealed pack under `packs_dir`, by name.
pub fn list_packs(packs_dir: &Path) -> Result<BTreeMap<PackName, PathBuf>> {
    let mut packs = BTreeMap::new();
    for sub in fs::read_dir(packs_dir).at(packs_dir)? {
        let sub = sub.at(packs_dir)?.path();
        if !sub.is_dir() {
            continue;
        }
        for path in list_with_extension(&sub, "pack")? {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if name.len() == 64 && blake3::Hash::from_hex(name).is_ok() {
                packs.insert(name.to_string(), path);
            }
        }
    }
    Ok(packs)
}

/// Files in `dir` with the given extension, sorted.
pub(crate) fn list_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.extension().is_some_and(|e| e == extension) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
