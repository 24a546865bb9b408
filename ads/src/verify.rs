//! Verification: re-hash every stored chunk and check every manifest's
//! references. Problems are reported precisely, with the versions they hurt.

use crate::ChunkId;
use crate::codec;
use crate::error::Result;
use crate::index::IndexIssue;
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

/// One bad blob a re-hash found: id, pack, offset, why, and whether its
/// bytes were read (false for an I/O error, which may pass).
type BadBlob = (ChunkId, PackName, u64, String, bool);

/// One pack's re-hash: bytes verified, entries, the bad blobs, and the file
/// read (device, inode), to tell a pack replaced meanwhile.
struct PackCheck {
    name: PackName,
    bytes: u64,
    entries: u64,
    bad: Vec<BadBlob>,
    file: Option<(u64, u64)>,
}

/// Checks the whole store. Reading goes on past problems.
pub fn verify(store: &Store) -> Result<VerifyReport> {
    Ok(VerifyPlan::take(store)?.rehash(&|_| {}).finish(store))
}

/// A verification in three steps, so that a store shared with writers is
/// held only to copy what to check and to weigh what was found, not while
/// every pack is read: [`VerifyPlan::take`] (store held) copies the index and
/// the manifests, [`VerifyPlan::rehash`] (store not needed) re-hashes the
/// packs, which never change once sealed, and [`Rehashed::finish`] (store
/// held) drops findings in packs gc removed or replaced meanwhile. Versions
/// committed after `take` are checked next time.
pub struct VerifyPlan {
    packs_dir: std::path::PathBuf,
    /// Index and manifest problems, found while taking the plan.
    early: Vec<Problem>,
    /// Missing and set-aside chunks versions reference.
    late: Vec<Problem>,
    users: HashMap<ChunkId, Vec<String>>,
    /// Every pack with its entries not set aside, and how many it holds.
    packs: Vec<(PackName, Vec<pack::PackEntry>, u64)>,
    versions: u64,
    set_aside: u64,
    unreferenced_chunks: u64,
}

impl VerifyPlan {
    /// Copies what a verification checks: which versions use which chunks,
    /// every pack's entries, and the references that are nowhere.
    pub fn take(store: &Store) -> Result<Self> {
        let mut early = Vec::new();
        for issue in &store.index().issues {
            early.push(match issue {
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
        let mut versions = 0;
        for vm in store.vms()? {
            for seq in store.versions(&vm)? {
                match store.manifest(&vm, seq) {
                    Ok(manifest) => {
                        let version = manifest.label();
                        if let Some(detail) =
                            manifest.disks.iter().find_map(|d| d.check_shape().err())
                        {
                            early.push(Problem::BadManifest {
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
                        versions += 1;
                    }
                    Err(e) => early.push(Problem::BadManifest {
                        version: format!("{vm}@{seq}"),
                        detail: e.to_string(),
                    }),
                }
            }
        }

        // References to chunks that are nowhere.
        let index = store.index();
        let missing: BTreeSet<ChunkId> = users
            .keys()
            .filter(|id| !index.contains(id))
            .copied()
            .collect();
        let set_aside: BTreeSet<ChunkId> = index.damaged().values().copied().collect();
        let late = missing
            .into_iter()
            .map(|id| {
                let (chunk, affects) = (id.to_hex(), users[&id].clone());
                if set_aside.contains(&id) {
                    Problem::DamagedChunk { chunk, affects }
                } else {
                    Problem::MissingChunk { chunk, affects }
                }
            })
            .collect();
        let stored: BTreeSet<ChunkId> = index
            .packs()
            .values()
            .flat_map(|entries| entries.iter().map(|e| e.id))
            .collect();
        let unreferenced_chunks = stored.iter().filter(|id| !users.contains_key(id)).count() as u64;
        let packs = index
            .packs()
            .iter()
            .map(|(name, entries)| {
                let live = entries
                    .iter()
                    .filter(|e| !index.is_damaged(name, e.offset))
                    .cloned()
                    .collect();
                (name.clone(), live, entries.len() as u64)
            })
            .collect();
        Ok(Self {
            packs_dir: store.root().join("packs"),
            early,
            late,
            users,
            packs,
            versions,
            set_aside: index.damaged().len() as u64,
            unreferenced_chunks,
        })
    }

    /// Stored bytes the re-hash reads (for progress).
    pub fn stored_bytes(&self) -> u64 {
        self.packs
            .iter()
            .flat_map(|(_, entries, _)| entries.iter().map(|e| u64::from(e.stored_len)))
            .sum()
    }

    /// Re-hashes every blob of every pack (packs in parallel), calling
    /// `progress` with the stored bytes of each blob read.
    pub fn rehash(self, progress: &(dyn Fn(u64) + Sync)) -> Rehashed {
        let checks = self
            .packs
            .par_iter()
            .map(|(name, entries, held)| {
                check_pack(&self.packs_dir, name, entries, *held, progress)
            })
            .collect();
        Rehashed { plan: self, checks }
    }
}

/// Re-hashes one pack's `entries` (of the `held` it holds).
fn check_pack(
    packs_dir: &std::path::Path,
    name: &PackName,
    entries: &[pack::PackEntry],
    held: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> PackCheck {
    use std::os::unix::fs::MetadataExt;
    let mut check = PackCheck {
        name: name.clone(),
        bytes: 0,
        entries: held,
        bad: Vec::new(),
        file: None,
    };
    let path = pack::pack_path(packs_dir, name);
    let opened = std::fs::File::open(&path).and_then(|file| {
        let meta = file.metadata()?;
        Ok((file, (meta.dev(), meta.ino())))
    });
    let file = match opened {
        Ok((file, identity)) => {
            check.file = Some(identity);
            file
        }
        Err(e) => {
            let detail = crate::AdsError::Io {
                path: path.clone(),
                source: e,
            }
            .to_string();
            progress(entries.iter().map(|e| u64::from(e.stored_len)).sum());
            for entry in entries {
                check
                    .bad
                    .push((entry.id, name.clone(), entry.offset, detail.clone(), false));
            }
            return check;
        }
    };
    for entry in entries {
        progress(u64::from(entry.stored_len));
        let stored = match pack::read_blob(&file, &path, entry.offset, entry.stored_len) {
            Ok(stored) => stored,
            Err(e) => {
                // A pack cut short lost the bytes; any other error may pass.
                let truncated = matches!(&e, crate::AdsError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::UnexpectedEof);
                check.bad.push((
                    entry.id,
                    name.clone(),
                    entry.offset,
                    e.to_string(),
                    truncated,
                ));
                continue;
            }
        };
        let outcome = codec::decode(entry.codec, &stored, entry.raw_len as usize).and_then(|raw| {
            (ChunkId::of(&raw) == entry.id)
                .then_some(raw.len())
                .ok_or_else(|| "content does not match its address".to_string())
        });
        match outcome {
            Ok(len) => check.bytes += len as u64,
            Err(detail) => check
                .bad
                .push((entry.id, name.clone(), entry.offset, detail, true)),
        }
    }
    check
}

/// A plan whose packs were re-hashed, to be weighed against the store.
pub struct Rehashed {
    plan: VerifyPlan,
    checks: Vec<PackCheck>,
}

impl Rehashed {
    /// The report: findings in a pack that gc removed, or that was sealed
    /// anew, since the plan was taken are dropped (that file is no longer
    /// the store's), as are blobs set aside meanwhile.
    pub fn finish(self, store: &Store) -> VerifyReport {
        use std::os::unix::fs::MetadataExt;
        let Rehashed { plan, checks } = self;
        let index = store.index();
        let mut report = VerifyReport {
            versions: plan.versions,
            set_aside: plan.set_aside,
            unreferenced_chunks: plan.unreferenced_chunks,
            problems: plan.early,
            ..VerifyReport::default()
        };
        for check in checks {
            report.packs += 1;
            report.bytes_checked += check.bytes;
            report.chunks += check.entries;
            if check.bad.is_empty() {
                continue;
            }
            let path = pack::pack_path(&plan.packs_dir, &check.name);
            let now = std::fs::metadata(&path)
                .ok()
                .map(|meta| (meta.dev(), meta.ino()));
            let same_file = index.packs().contains_key(&check.name)
                && (check.file.is_none() || check.file == now);
            if !same_file {
                continue;
            }
            for (id, pack, offset, detail, read) in check.bad {
                if index.is_damaged(&pack, offset) {
                    continue;
                }
                let (chunk, affects) = (
                    id.to_hex(),
                    plan.users.get(&id).cloned().unwrap_or_default(),
                );
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
        report.problems.extend(plan.late);
        report
    }
}
