//! Verification: re-hash every stored chunk and check every manifest's
//! references. Problems are reported precisely, with the versions they hurt.

use crate::ChunkId;
use crate::codec;
use crate::error::Result;
use crate::index::IndexIssue;
use crate::manifest::Manifest;
use crate::pack::{self, PackName};
use crate::store::Store;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// One problem found by [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// A stored chunk does not decode or does not match its address.
    CorruptChunk {
        chunk: String,
        pack: PackName,
        offset: u64,
        detail: String,
        /// `vm@seq` of every version that references it.
        affects: Vec<String>,
    },
    /// A stored chunk could not be read (an I/O error, not its bytes): it
    /// may read again later, so it is never set aside.
    UnreadableChunk {
        chunk: String,
        pack: PackName,
        offset: u64,
        detail: String,
        affects: Vec<String>,
    },
    /// A version references a chunk the store does not have.
    MissingChunk { chunk: String, affects: Vec<String> },
    /// A version references a chunk that was found corrupt and set aside,
    /// and no backup has stored it again since.
    DamagedChunk { chunk: String, affects: Vec<String> },
    /// A pack's trailer cannot be read: its chunks are lost.
    BadPack { pack: PackName, detail: String },
    /// An index file is damaged (harmless: it is rebuilt from packs).
    BadIndexFile { path: String, detail: String },
    /// A manifest cannot be read or is inconsistent.
    BadManifest { version: String, detail: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let affects = |list: &[String]| match list {
            [] => "no version uses it".to_string(),
            list => format!("affects {}", list.join(", ")),
        };
        match self {
            Problem::CorruptChunk {
                chunk,
                pack,
                offset,
                detail,
                affects: a,
            } => write!(
                f,
                "chunk {chunk} in pack {pack} at {offset}: {detail}; {}",
                affects(a)
            ),
            Problem::UnreadableChunk {
                chunk,
                pack,
                offset,
                detail,
                affects: a,
            } => write!(
                f,
                "chunk {chunk} in pack {pack} at {offset} could not be read ({detail}); {}",
                affects(a)
            ),
            Problem::MissingChunk { chunk, affects: a } => {
                write!(f, "chunk {chunk} is missing; {}", affects(a))
            }
            Problem::DamagedChunk { chunk, affects: a } => write!(
                f,
                "chunk {chunk} was set aside as corrupt and not stored again since; {}",
                affects(a)
            ),
            Problem::BadPack { pack, detail } => write!(f, "pack {pack}: {detail}"),
            Problem::BadIndexFile { path, detail } => {
                write!(f, "index file {path}: {detail} (rebuilt from packs)")
            }
            Problem::BadManifest { version, detail } => write!(f, "version {version}: {detail}"),
        }
    }
}

/// Sets aside every corrupt blob `report` found (see
/// [`Store::set_aside_damaged`]); returns how many were newly set aside.
pub fn set_aside_corrupt(store: &mut Store, report: &VerifyReport) -> Result<usize> {
    let blobs: Vec<(ChunkId, PackName, u64)> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::CorruptChunk {
                chunk,
                pack,
                offset,
                ..
            } => Some((ChunkId::from_hex(chunk)?, pack.clone(), *offset)),
            _ => None,
        })
        .collect();
    store.set_aside_damaged(&blobs)
}

/// What [`verify`] checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub packs: u64,
    pub chunks: u64,
    pub bytes_checked: u64,
    pub versions: u64,
    /// Chunks no version references (reclaimed by gc).
    pub unreferenced_chunks: u64,
    /// Blobs found corrupt earlier and set aside (not read again; gc drops them).
    pub set_aside: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems
            .iter()
            .all(|p| matches!(p, Problem::BadIndexFile { .. }))
    }
}

/// One pack's outcome: bytes verified, entries, and bad blobs (id, pack,
/// offset, why, and whether its bytes were read: false for an I/O error).
type PackCheck = (u64, u64, Vec<(ChunkId, PackName, u64, String, bool)>);

/// Checks the whole store. Reading goes on past problems.
pub fn verify(store: &Store) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    for issue in &store.index().issues {
        report.problems.push(match issue {
            IndexIssue::BadIndexFile { path, detail } => Problem::BadIndexFile {
                path: path.display().to_string(),
                detail: detail.clone(),
            },
            IndexIssue::BadPack { pack, detail } => Problem::BadPack {
                pack: pack.clone(),
                detail: detail.clone(),
            },
        });
    }

    // Which versions reference which chunks.
    let mut users: HashMap<ChunkId, Vec<String>> = HashMap::new();
    let mut manifests: Vec<Manifest> = Vec::new();
    for vm in store.vms()? {
        for seq in store.versions(&vm)? {
            let version = format!("{vm}@{seq}");
            match store.manifest(&vm, seq) {
                Ok(manifest) => {
                    if let Some(detail) = manifest.disks.iter().find_map(|d| d.check_shape().err())
                    {
                        report.problems.push(Problem::BadManifest {
                            version: version.clone(),
                            detail,
                        });
                    }
                    for (id, _) in manifest.chunk_refs() {
                        let list = users.entry(*id).or_default();
                        if list.last() != Some(&version) {
                            list.push(version.clone());
                        }
                    }
                    manifests.push(manifest);
                }
                Err(e) => report.problems.push(Problem::BadManifest {
                    version,
                    detail: e.to_string(),
                }),
            }
        }
    }
    report.versions = manifests.len() as u64;
    report.set_aside = store.index().damaged().len() as u64;

    // Re-hash every blob of every pack.
    let packs: Vec<(&PackName, &Vec<pack::PackEntry>)> = store.index().packs().iter().collect();
    let checked: Vec<PackCheck> = packs
        .par_iter()
        .map(|(name, entries)| {
            let mut bad = Vec::new();
            let mut bytes = 0;
            let path = pack::pack_path(&store.root().join("packs"), name);
            let file = match store.pack_file(name) {
                Ok(file) => file,
                Err(e) => {
                    for entry in entries.iter() {
                        bad.push((
                            entry.id,
                            (*name).clone(),
                            entry.offset,
                            e.to_string(),
                            false,
                        ));
                    }
                    return (0, entries.len() as u64, bad);
                }
            };
            for entry in entries.iter() {
                if store.index().is_damaged(name, entry.offset) {
                    continue;
                }
                let stored = match pack::read_blob(&file, &path, entry.offset, entry.stored_len) {
                    Ok(stored) => stored,
                    Err(e) => {
                        // A pack cut short lost the bytes; any other error may pass.
                        let truncated = matches!(&e, crate::AdsError::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::UnexpectedEof);
                        bad.push((
                            entry.id,
                            (*name).clone(),
                            entry.offset,
                            e.to_string(),
                            truncated,
                        ));
                        continue;
                    }
                };
                let outcome =
                    codec::decode(entry.codec, &stored, entry.raw_len as usize).and_then(|raw| {
                        (ChunkId::of(&raw) == entry.id)
                            .then_some(raw.len())
                            .ok_or_else(|| "content does not match its address".to_string())
                    });
                match outcome {
                    Ok(len) => bytes += len as u64,
                    Err(detail) => {
                        bad.push((entry.id, (*name).clone(), entry.offset, detail, true))
                    }
                }
            }
            (bytes, entries.len() as u64, bad)
        })
        .collect();
    for (bytes, count, bad) in checked {
        report.packs += 1;
        report.bytes_checked += bytes;
        report.chunks += count;
        for (id, pack, offset, detail, read) in bad {
            let (chunk, affects) = (id.to_hex(), users.get(&id).cloned().unwrap_or_default());
            report.problems.push(match read {
                true => Problem::CorruptChunk {
                    chunk,
                    pack,
                    offset,
                    detail,
                    affects,
                },
                false => Problem::UnreadableChunk {
                    chunk,
                    pack,
                    offset,
                    detail,
                    affects,
                },
            });
        }
    }

    // References to chunks that are nowhere.
    let mut missing: BTreeSet<ChunkId> = BTreeSet::new();
    for id in users.keys() {
        if !store.index().contains(id) {
            missing.insert(*id);
        }
    }
    let set_aside: BTreeSet<ChunkId> = store.index().damaged().values().copied().collect();
    for id in missing {
        let (chunk, affects) = (id.to_hex(), users[&id].clone());
        report.problems.push(if set_aside.contains(&id) {
            Problem::DamagedChunk { chunk, affects }
        } else {
            Problem::MissingChunk { chunk, affects }
        });
    }
    let stored: BTreeSet<ChunkId> = store
        .index()
        .packs()
        .values()
        .flat_map(|entries| entries.iter().map(|e| e.id))
        .collect();
    report.unreferenced_chunks = stored.iter().filter(|id| !users.contains_key(id)).count() as u64;
    Ok(report)
}
