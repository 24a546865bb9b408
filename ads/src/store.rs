//! The store on disk: configuration, lock, versions, chunk reads, and the
//! commit protocol for new versions.
//!
//! Layout of a store directory:
//! - `ads.json`: format, chunking and compression (written last by `init`);
//! - `lock`: held shared by readers, exclusively by writers;
//! - `packs/XX/<name>.pack`: chunks, see [`crate::pack`];
//! - `index/<checksum>.idx`: the chunk index cache, see [`crate::index`];
//! - `versions/<vm>/<seq>.json`: one manifest per committed version.
//!
//! Commit order: packs are synced and renamed into place, then an index file
//! is written, then the manifest (tmp, sync, rename, sync dir). A crash at
//! any point leaves either a whole new version or none, plus at most some
//! unreferenced chunks that `gc` reclaims.

use crate::ChunkId;
use crate::chunking::ChunkingParams;
use crate::codec::{self, BlobCodec, Compression};
use crate::error::{AdsError, IoContext, Result};
use crate::index::{self, ChunkIndex};
use crate::manifest::{self, DiskManifest, MANIFEST_FORMAT, Manifest};
use crate::pack::{self, PackEntry, PackName};
use crate::writer::{PackWriterThread, Sealed, WriterSetup};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Store format written by this build.
pub const STORE_FORMAT: u32 = 1;
const MARKER: &str = "ads.json";
/// Blobs found corrupt and set aside, kept across opens (absent: none).
const DAMAGED: &str = "damaged.json";

/// One damaged blob, as `damaged.json` lists it.
#[derive(Serialize, Deserialize)]
struct DamagedBlob {
    chunk: String,
    pack: PackName,
    offset: u64,
}

/// Reads `damaged.json` in `dir` (none when absent).
fn read_damaged(dir: &Path) -> Result<BTreeMap<(PackName, u64), ChunkId>> {
    let path = dir.join(DAMAGED);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(AdsError::Io { path, source: e }),
    };
    let corrupt = |detail: String| AdsError::Corrupt {
        path: path.clone(),
        what: "list of damaged chunks",
        detail,
    };
    let blobs: Vec<DamagedBlob> =
        serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    blobs
        .into_iter()
        .map(|b| {
            let id = ChunkId::from_hex(&b.chunk)
                .ok_or_else(|| corrupt(format!("bad chunk address {:?}", b.chunk)))?;
            Ok(((b.pack, b.offset), id))
        })
        .collect()
}

/// A store's fixed settings, kept in `ads.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: u32,
    pub chunking: ChunkingParams,
    pub compression: Compression,
    /// A pack is sealed once it holds this many bytes.
    pub pack_target_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            format: STORE_FORMAT,
            chunking: ChunkingParams::default(),
            compression: Compression::default(),
            pack_target_bytes: 32 * 1024 * 1024,
        }
    }
}

/// How a store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Shared lock: list, restore, verify.
    Read,
    /// Exclusive lock: backup, gc.
    Write,
}

/// A point in a commit (or gc) where a test can make the store "crash".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommitStep {
    /// A pack half written under its temporary name.
    PackWrite,
    /// Packs sealed and in place, no index file yet.
    PackSealed,
    /// The index file half written.
    IndexWrite,
    /// The manifest half written under its temporary name.
    ManifestWrite,
    /// The manifest written and synced, not yet renamed.
    ManifestRename,
    /// The manifest renamed: the version exists.
    Committed,
    /// gc: old manifests removed, new packs half written.
    GcPackWrite,
    /// gc: new packs and index written, old index files not yet removed.
    GcIndexSwap,
    /// gc: old index files removed, old packs not yet deleted.
    GcPackDelete,
}

impl CommitStep {
    /// Every step of a backup commit, in order.
    pub const COMMIT: [Self; 6] = [
        Self::PackWrite,
        Self::PackSealed,
        Self::IndexWrite,
        Self::ManifestWrite,
        Self::ManifestRename,
        Self::Committed,
    ];
    /// Every step of a gc, in order.
    pub const GC: [Self; 3] = [Self::GcPackWrite, Self::GcIndexSwap, Self::GcPackDelete];
}

impl std::fmt::Display for CommitStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// An open store.
pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    pub(crate) index: ChunkIndex,
    access: Access,
    _lock: File,
    pub(crate) crash_at: Option<CommitStep>,
    open_packs: Mutex<BTreeMap<PackName, Arc<File>>>,
    tmp_seq: u64,
    /// Bytes the sealed packs take.
    used_bytes: u64,
    /// Writes that would take the packs past this are refused whole.
    capacity_bytes: Option<u64>,
    /// Writes that would leave less free on the store's filesystem are
    /// refused whole.
    keep_free_bytes: Option<u64>,
}

impl Store {
    /// Creates a store in `dir` (which must be new or empty).
    pub fn init(dir: &Path, config: StoreConfig) -> Result<()> {
        config.chunking.validate().map_err(AdsError::Invalid)?;
        if dir.exists() {
            if !dir.is_dir() || fs::read_dir(dir).at(dir)?.next().is_some() {
                return Err(AdsError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        } else {
            fs::create_dir_all(dir).at(dir)?;
        }
        for sub in ["packs", "index", "versions"] {
            fs::create_dir(dir.join(sub)).at(dir.join(sub))?;
        }
        File::create(dir.join("lock")).at(dir.join("lock"))?;
        let text = serde_json::to_vec_pretty(&config).expect("config serialises");
        write_atomic(&dir.join(MARKER), &text)
    }

    /// Opens the store in `dir`, taking its lock.
    pub fn open(dir: &Path, access: Access) -> Result<Self> {
        let marker = dir.join(MARKER);
        if !dir.exists() {
            return Err(AdsError::NoSuchStore {
                path: dir.to_path_buf(),
            });
        }
        if !marker.is_file() {
            return Err(AdsError::NotAStore {
                path: dir.to_path_buf(),
                marker: MARKER,
            });
        }
        let text = fs::read(&marker).at(&marker)?;
        let format = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_u64()))
            .unwrap_or(0) as u32;
        if format != STORE_FORMAT {
            return Err(AdsError::UnsupportedFormat {
                path: dir.to_path_buf(),
                found: format,
                supported: STORE_FORMAT,
            });
        }
        let config: StoreConfig = serde_json::from_slice(&text).map_err(|e| AdsError::Corrupt {
            path: marker.clone(),
            what: "store configuration",
            detail: e.to_string(),
        })?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .at(&lock_path)?;
        let locked = match access {
            Access::Read => lock.try_lock_shared(),
            Access::Write => lock.try_lock(),
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(AdsError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(AdsError::Io {
                    path: lock_path,
                    source: e,
                });
            }
        }
        if access == Access::Write {
            remove_temporaries(dir)?;
        }
        let damaged = read_damaged(dir)?;
        let (index, unindexed) = ChunkIndex::load(&dir.join("index"), &dir.join("packs"), damaged)?;
        let mut store = Self {
            root: dir.to_path_buf(),
            config,
            index,
            access,
            _lock: lock,
            crash_at: None,
            open_packs: Mutex::new(BTreeMap::new()),
            tmp_seq: 0,
            used_bytes: 0,
            capacity_bytes: None,
            keep_free_bytes: None,
        };
        store.recount_used()?;
        if access == Access::Write && !unindexed.is_empty() {
            // Packs sealed by a commit that crashed before its index file.
            let packs: Vec<(PackName, Vec<PackEntry>)> = unindexed
                .into_iter()
                .map(|name| {
                    let entries = store.index.packs()[&name].clone();
                    (name, entries)
                })
                .collect();
            let path = index::write_index_file(&store.index_dir(), &packs)?;
            store.index.note_file(path);
        }
        Ok(store)
    }

    /// Refuses writes that would take the packs past `capacity_bytes` (the
    /// disk the store is on, less what must stay free), with
    /// [`AdsError::Full`]; what is already stored is never touched.
    pub fn set_capacity(&mut self, capacity_bytes: Option<u64>) {
        self.capacity_bytes = capacity_bytes;
    }

    /// Refuses writes that would leave less than `keep_free_bytes` free on
    /// the filesystem the store is on (read as each batch comes), with
    /// [`AdsError::DiskFull`], before the disk itself runs out mid-pack. The
    /// pack writer may lag a batch or two behind: the reserve covers it.
    pub fn set_keep_free(&mut self, keep_free_bytes: Option<u64>) {
        self.keep_free_bytes = keep_free_bytes;
    }

    /// Bytes free for this user on the filesystem the store is on.
    pub fn free_bytes(&self) -> Result<u64> {
        let stat = rustix::fs::statvfs(&self.root).map_err(|e| AdsError::Io {
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Bytes the sealed packs take now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Counts the bytes of the sealed packs again (after a GC).
    pub(crate) fn recount_used(&mut self) -> Result<()> {
        let mut used = 0;
        for path in index::list_packs(&self.packs_dir())?.values() {
            used += fs::metadata(path).at(path)?.len();
        }
        self.used_bytes = used;
        Ok(())
    }

    /// How the store was opened.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Re-reads the index from disk (after gc changed the packs).
    pub(crate) fn reload_index(&mut self) -> Result<()> {
        self.forget_open_packs();
        let damaged = read_damaged(&self.root)?;
        self.index = ChunkIndex::load(&self.index_dir(), &self.packs_dir(), damaged)?.0;
        Ok(())
    }

    /// Sets corrupt blobs aside for good (`damaged.json`, written atomically):
    /// they are never read or copied again, and a chunk with no other good
    /// copy counts as missing, so the next backup that holds its bytes stores
    /// it again and the versions that use it restore once more. Returns how
    /// many were newly set aside.
    pub fn set_aside_damaged(&mut self, blobs: &[(ChunkId, PackName, u64)]) -> Result<usize> {
        if self.access != Access::Write {
            return Err(AdsError::Invalid("store opened read-only".into()));
        }
        let mut added = 0;
        for (id, pack, offset) in blobs {
            if !self.index.is_damaged(pack, *offset) {
                self.index.set_aside(*id, pack, *offset);
                added += 1;
            }
        }
        if added > 0 {
            self.write_damaged()?;
        }
        Ok(added)
    }

    /// Packs `names` were just sealed whole: damage recorded under their names
    /// (an earlier file with the same name, now replaced) is forgotten.
    pub(crate) fn sealed_anew(&mut self, names: &[PackName]) -> Result<()> {
        let mut cleared = false;
        for name in names {
            cleared |= self.index.clear_damage(name);
        }
        if cleared {
            // Open handles still read the replaced (damaged) files.
            self.forget_open_packs();
            self.write_damaged()?;
        }
        Ok(())
    }

    /// Forgets damaged blobs of packs that are gone (gc deleted them).
    pub(crate) fn prune_damaged(&mut self) -> Result<()> {
        let gone: Vec<PackName> = self
            .index
            .damaged()
            .keys()
            .map(|(pack, _)| pack.clone())
            .filter(|pack| !self.index.packs().contains_key(pack))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for pack in &gone {
            self.index.remove_pack(pack);
        }
        self.write_damaged()
    }

    /// Writes the damaged-blob list as the index holds it.
    pub(crate) fn write_damaged(&self) -> Result<()> {
        let blobs: Vec<DamagedBlob> = self
            .index
            .damaged()
            .iter()
            .map(|((pack, offset), id)| DamagedBlob {
                chunk: id.to_hex(),
                pack: pack.clone(),
                offset: *offset,
            })
            .collect();
        let text = serde_json::to_vec_pretty(&blobs).expect("damaged list serialises");
        write_atomic(&self.root.join(DAMAGED), &text)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's fixed settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The chunk index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Makes the next commit or gc stop at `step` as if the process died there.
    pub fn set_crash_point(&mut self, step: Option<CommitStep>) {
        self.crash_at = step;
    }

    pub(crate) fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub(crate) fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }

    pub(crate) fn crash(&self, step: CommitStep) -> Result<()> {
        match self.crash_at {
            Some(at) if at == step => Err(AdsError::Crashed(step)),
            _ => Ok(()),
        }
    }

    pub(crate) fn next_tmp_path(&mut self, dir: &Path) -> PathBuf {
        self.tmp_seq += 1;
        dir.join(format!("{}-{}.tmp", std::process::id(), self.tmp_seq))
    }

    /// Names of the VMs with at least one version, sorted.
    pub fn vms(&self) -> Result<Vec<String>> {
        let mut vms = Vec::new();
        let dir = self.versions_dir();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            if let Some(seq) = self.version_numbers_in(&path)?.first() {
                vms.push(self.read_manifest_file(&path.join(version_file(*seq)))?.vm);
            }
        }
        vms.sort();
        Ok(vms)
    }

    fn version_numbers_in(&self, vm_dir: &Path) -> Result<Vec<u64>> {
        if !vm_dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut seqs: Vec<u64> = index::list_with_extension(vm_dir, "json")?
            .iter()
            .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Committed version numbers of `vm`, oldest first.
    pub fn versions(&self, vm: &str) -> Result<Vec<u64>> {
        self.version_numbers_in(&self.vm_dir(vm))
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.versions_dir().join(manifest::vm_dir_name(vm))
    }

    /// Reads version `seq` of `vm`.
    pub fn manifest(&self, vm: &str, seq: u64) -> Result<Manifest> {
        let versions = self.versions(vm)?;
        if versions.is_empty() {
            return Err(AdsError::NoSuchVm { vm: vm.to_string() });
        }
        if !versions.contains(&seq) {
            return Err(AdsError::NoSuchVersion {
                vm: vm.to_string(),
                seq,
                available: versions
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.read_manifest_file(&self.vm_dir(vm).join(version_file(seq)))
    }

    /// The newest version of `vm`, if any.
    pub fn latest(&self, vm: &str) -> Result<Option<Manifest>> {
        match self.versions(vm)?.last() {
            Some(seq) => self.manifest(vm, *seq).map(Some),
            None => Ok(None),
        }
    }

    /// The newest version of each VM that `wanted` names: the VM whose id it
    /// is, else every VM whose newest version bears that name (several VMs,
    /// in different pools say, may share one).
    pub fn vms_named(&self, wanted: &str) -> Result<Vec<Manifest>> {
        if let Some(latest) = self.latest(wanted)? {
            return Ok(vec![latest]);
        }
        let mut named = Vec::new();
        for vm in self.vms()? {
            if let Some(latest) = self.latest(&vm)?
                && latest.vm_name() == wanted
            {
                named.push(latest);
            }
        }
        Ok(named)
    }

    /// The id of the one VM `wanted` names (its id, or a name only one VM
    /// has); an error says when none does, or lists the VMs that share it.
    pub fn resolve_vm(&self, wanted: &str) -> Result<String> {
        one_vm(wanted, self.vms_named(wanted)?)
    }

    /// Every committed manifest, by VM then sequence.
    pub fn all_manifests(&self) -> Result<Vec<Manifest>> {
        let mut all = Vec::new();
        for vm in self.vms()? {
            for seq in self.versions(&vm)? {
                all.push(self.read_manifest_file(&self.manifest_path(&vm, seq))?);
            }
        }
        Ok(all)
    }

    pub(crate) fn manifest_path(&self, vm: &str, seq: u64) -> PathBuf {
        self.vm_dir(vm).join(version_file(seq))
    }

    fn read_manifest_file(&self, path: &Path) -> Result<Manifest> {
        let text = fs::read(path).at(path)?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| AdsError::Corrupt {
            path: path.to_path_buf(),
            what: "manifest",
            detail: e.to_string(),
        })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(AdsError::Corrupt {
                path: path.to_path_buf(),
                what: "manifest",
                detail: format!(
                    "format {} (this build reads {MANIFEST_FORMAT})",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    pub(crate) fn pack_file(&self, name: &str) -> Result<Arc<File>> {
        let mut open = self.open_packs.lock().expect("pack cache");
        if let Some(file) = open.get(name) {
            return Ok(file.clone());
        }
        let path = pack::pack_path(&self.packs_dir(), name);
        let file = Arc::new(File::open(&path).at(&path)?);
        open.insert(name.to_string(), file.clone());
        Ok(file)
    }

    pub(crate) fn forget_open_packs(&self) {
        self.open_packs.lock().expect("pack cache").clear();
    }

    /// Reads chunk `id`, decodes it and checks its address.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let location = self
            .index
            .get(id)
            .ok_or(AdsError::MissingChunk { id: *id })?;
        let file = self.pack_file(&location.pack)?;
        let path = pack::pack_path(&self.packs_dir(), &location.pack);
        let stored = pack::read_blob(&file, &path, location.offset, location.stored_len)?;
        let corrupt = |detail: String| AdsError::CorruptChunk {
            id: *id,
            pack: location.pack.clone(),
            offset: location.offset,
            detail,
        };
        let raw =
            codec::decode(location.codec, &stored, location.raw_len as usize).map_err(corrupt)?;
        if ChunkId::of(&raw) != *id {
            return Err(corrupt("content does not match its address".into()));
        }
        Ok(raw)
    }

    /// Starts writing a new version. Needs [`Access::Write`].
    pub fn begin(&mut self) -> Result<Transaction<'_>> {
        if self.access != Access::Write {
            return Err(AdsError::Invalid("store opened read-only".into()));
        }
        Ok(Transaction {
            store: self,
            writer: None,
            pending: HashSet::new(),
            stats: StoreStats::default(),
        })
    }
}

fn version_file(seq: u64) -> String {
    format!("{seq:010}.json")
}

/// What the store side of a backup received and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Encoded bytes received for new chunks.
    pub bytes_received: u64,
    /// Bytes appended to packs (blobs, headers and trailers).
    pub bytes_stored: u64,
    /// Chunks that were new to the store.
    pub chunks_new: u64,
}

/// A chunk as the sender encoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub id: ChunkId,
    pub raw_len: u32,
    pub codec: BlobCodec,
    pub data: Vec<u8>,
}

impl Blob {
    /// Checks that the blob decodes to content matching its address.
    pub fn verify(&self) -> std::result::Result<(), String> {
        let raw = codec::decode(self.codec, &self.data, self.raw_len as usize)
            .map_err(|e| format!("chunk {}: {e}", self.id.short()))?;
        if ChunkId::of(&raw) != self.id {
            return Err(format!(
                "chunk {}: content does not match its address",
                self.id.short()
            ));
        }
        Ok(())
    }
}

/// The store side of source-side dedup: which chunks are lacking, and taking them.
pub trait ChunkSink {
    /// For each id, true when the store lacks it.
    fn missing(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// Stores blobs (ids the store already has are skipped).
    fn put(&mut self, blobs: Vec<Blob>) -> Result<()>;
}

/// A version being written. Dropping it without [`Transaction::commit`] leaves
/// only unreferenced chunks behind.
pub struct Transaction<'a> {
    store: &'a mut Store,
    writer: Option<PackWriterThread>,
    pending: HashSet<ChunkId>,
    stats: StoreStats,
}

/// Contents of a version to commit.
pub struct VersionDraft {
    /// The VM's id in the store (see [`Manifest::vm`]).
    pub vm: String,
    /// The VM's name now.
    pub name: String,
    pub taken_at: String,
    pub parent_seq: Option<u64>,
    pub vm_record: serde_json::Value,
    pub disks: Vec<DiskManifest>,
}

impl Transaction<'_> {
    /// The store being written.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Bytes and chunks taken so far.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Seals the open pack and indexes the packs written so far, so a later
    /// transaction can commit a version that uses their chunks (data first,
    /// version later). Returns what the store took.
    pub fn flush(&mut self) -> Result<StoreStats> {
        let sealed = match self.writer.take() {
            Some(mut writer) => writer.finish()?,
            None => Sealed {
                packs: Vec::new(),
                bytes_stored: 0,
            },
        };
        self.stats.bytes_stored += sealed.bytes_stored;
        self.store.used_bytes += sealed.bytes_stored;
        self.store.crash(CommitStep::PackSealed)?;
        if !sealed.packs.is_empty() {
            let index_dir = self.store.index_dir();
            if self.store.crash_at == Some(CommitStep::IndexWrite) {
                let tmp = self.store.next_tmp_path(&index_dir);
                fs::write(&tmp, b"ABDIDX01\x05\0").at(&tmp)?;
                return Err(AdsError::Crashed(CommitStep::IndexWrite));
            }
            let path = index::write_index_file(&index_dir, &sealed.packs)?;
            self.store.index.note_file(path);
            let names: Vec<PackName> = sealed.packs.iter().map(|(n, _)| n.clone()).collect();
            for (name, entries) in sealed.packs {
                self.store.index.add_pack(name, entries);
            }
            self.store.sealed_anew(&names)?;
            self.pending.clear();
        }
        Ok(self.stats)
    }

    /// Seals the last pack, indexes the new packs and writes the manifest.
    /// Returns the version's manifest and what the store took for it.
    pub fn commit(mut self, draft: VersionDraft) -> Result<(Manifest, StoreStats)> {
        for disk in &draft.disks {
            disk.check_shape().map_err(AdsError::Invalid)?;
            for (id, len) in disk.segments.iter().flat_map(|s| s.chunks()) {
                let known =
                    id.is_zero_run() || self.pending.contains(id) || self.store.index.contains(id);
                if !known {
                    return Err(AdsError::MissingChunk { id: *id });
                }
                debug_assert!(*len > 0);
            }
        }
        self.flush()?;
        let seq = self
            .store
            .versions(&draft.vm)?
            .last()
            .map_or(1, |last| last + 1);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            vm: draft.vm,
            name: draft.name,
            seq,
            taken_at: draft.taken_at,
            parent_seq: draft.parent_seq,
            vm_record: draft.vm_record,
            disks: draft.disks,
        };
        let text = serde_json::to_vec(&manifest).expect("manifest serialises");
        let path = self.store.manifest_path(&manifest.vm, seq);
        let dir = path.parent().expect("vm dir").to_path_buf();
        fs::create_dir_all(&dir).at(&dir)?;
        let tmp = self.store.next_tmp_path(&dir);
        let torn = self.store.crash_at == Some(CommitStep::ManifestWrite);
        fs::write(
            &tmp,
            if torn {
                &text[..text.len() / 2]
            } else {
                &text[..]
            },
        )
        .at(&tmp)?;
        self.store.crash(CommitStep::ManifestWrite)?;
        File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        self.store.crash(CommitStep::ManifestRename)?;
        fs::rename(&tmp, &path).at(&path)?;
        pack::sync_dir(&dir)?;
        pack::sync_dir(&self.store.versions_dir())?;
        self.store.crash(CommitStep::Committed)?;
        tracing::debug!(vm = %manifest.vm, seq, "version committed");
        Ok((manifest, self.stats))
    }
}

impl ChunkSink for Transaction<'_> {
    fn missing(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(ids
            .iter()
            .map(|id| !self.pending.contains(id) && !self.store.index.contains(id))
            .collect())
    }

    fn put(&mut self, blobs: Vec<Blob>) -> Result<()> {
        let fresh: Vec<Blob> = blobs
            .into_iter()
            .filter(|b| !self.store.index.contains(&b.id) && !self.pending.contains(&b.id))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        // Refused whole, before anything is written: the batch is not taken.
        let needed: u64 = fresh.iter().map(|b| b.data.len() as u64).sum();
        if let Some(capacity) = self.store.capacity_bytes {
            let used = self.store.used_bytes + self.stats.bytes_received;
            if used + needed > capacity {
                return Err(AdsError::Full {
                    capacity_bytes: capacity,
                    used_bytes: used,
                    needed_bytes: needed,
                });
            }
        }
        if let Some(keep_free) = self.store.keep_free_bytes {
            let free = self.store.free_bytes()?;
            if free < needed.saturating_add(keep_free) {
                return Err(AdsError::DiskFull {
                    path: self.store.root.clone(),
                    free_bytes: free,
                    needed_bytes: needed,
                    keep_free_bytes: keep_free,
                });
            }
        }
        let mut fresh = fresh;
        fresh.retain(|blob| self.pending.insert(blob.id));
        for blob in &fresh {
            self.stats.bytes_received += blob.data.len() as u64;
            self.stats.chunks_new += 1;
        }
        if self.writer.is_none() {
            self.store.tmp_seq += 1;
            self.writer = Some(PackWriterThread::start(WriterSetup {
                packs_dir: self.store.packs_dir(),
                tmp_prefix: format!("{}-{}", std::process::id(), self.store.tmp_seq),
                pack_target_bytes: self.store.config.pack_target_bytes,
                tear_last_pack: self.store.crash_at == Some(CommitStep::PackWrite),
            }));
        }
        self.writer.as_mut().expect("writer").send(fresh)
    }
}

/// Writes `bytes` to `path` atomically: tmp file, sync, rename, sync dir.
/// The id of the one VM among `named` (what [`Store::vms_named`] found for
/// `wanted`), or an error saying there is none or listing them all.
pub fn one_vm(wanted: &str, mut named: Vec<Manifest>) -> Result<String> {
    match named.len() {
        0 => Err(AdsError::NoSuchVm {
            vm: wanted.to_string(),
        }),
        1 => Ok(named.pop().expect("one").vm),
        _ => Err(AdsError::AmbiguousVm {
            name: wanted.to_string(),
            ids: named
                .iter()
                .map(|m| m.vm.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).at(&tmp)?;
    File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
    fs::rename(&tmp, path).at(path)?;
    pack::sync_dir(path.parent().expect("parent"))
}

/// Removes temporary files a crashed writer left (only under the write lock).
fn remove_temporaries(root: &Path) -> Result<()> {
    let mut dirs = vec![root.join("packs"), root.join("index")];
    let versions = root.join("versions");
    for entry in fs::read_dir(&versions).at(&versions)? {
        let path = entry.at(&versions)?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    for dir in dirs {
        for tmp in index::list_with_extension(&dir, "tmp")? {
            tracing::info!(path = %tmp.display(), "removing leftover of an interrupted write");
            fs::remove_file(&tmp).at(&tmp)?;
        }
    }
    Ok(())
}
