//! The engine's data store (ADS): one store directory for every job. Agents
//! write chunks into it (data first, over [`crate::store_server`]); the engine
//! commits a VM's version only after its whole backup succeeded, so a failed
//! backup leaves no version.

use ads::{Access, AdsError, Blob, ChunkId, ChunkSink, Manifest, Store, StoreStats, VersionDraft};
use std::path::Path;
use std::sync::Mutex;

/// A store shared by the engine's jobs and the agents it drives.
pub struct DataStore {
    store: Mutex<Store>,
}

impl DataStore {
    /// Opens the store in `dir`, creating it when the directory is new or
    /// empty; writes past `capacity_bytes`, or that would leave less than
    /// `keep_free_bytes` free on its filesystem, are refused.
    pub fn open_or_init(
        dir: &Path,
        capacity_bytes: Option<u64>,
        keep_free_bytes: Option<u64>,
    ) -> Result<Self, AdsError> {
        let is_new = !dir.exists() || dir.read_dir().is_ok_and(|mut d| d.next().is_none());
        if is_new {
            Store::init(dir, ads::StoreConfig::default())?;
        }
        let mut store = Store::open(dir, Access::Write)?;
        store.set_capacity(capacity_bytes);
        store.set_keep_free(keep_free_bytes);
        Ok(Self {
            store: Mutex::new(store),
        })
    }

    /// Sets the most the store's packs may take (None: no limit).
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.lock().set_capacity(capacity_bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("data store lock poisoned")
    }

    /// The newest version of `vm`, the base of an incremental backup.
    pub fn latest(&self, vm: &str) -> Result<Option<Manifest>, AdsError> {
        self.lock().latest(vm)
    }

    /// Version `version` of `vm`, or its newest.
    pub fn manifest(&self, vm: &str, version: Option<u64>) -> Result<Manifest, AdsError> {
        let store = self.lock();
        match version {
            Some(seq) => store.manifest(vm, seq),
            None => store
                .latest(vm)?
                .ok_or_else(|| AdsError::NoSuchVm { vm: vm.to_string() }),
        }
    }

    /// The id of the VM a restore or replication names: its id (uuid) in the
    /// store, or a name only one VM has, among those backed up from the pool
    /// `from_pool` when given. An error names what is missing or ambiguous.
    pub fn resolve(&self, wanted: &str, from_pool: Option<&str>) -> Result<String, AdsError> {
        let named = self
            .lock()
            .vms_named(wanted)?
            .into_iter()
            .filter(|m| from_pool.is_none_or(|pool| m.vm_record["pool"].as_str() == Some(pool)))
            .collect();
        ads::store::one_vm(wanted, named)
    }

    /// The snapshot each VM's newest version was read from (its run-unique
    /// name), with that version's number: what an interrupted run committed.
    pub fn newest_versions_by_snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        let store = self.lock();
        let vms = store.vms().unwrap_or_default();
        vms.iter()
            .filter_map(|vm| store.latest(vm).ok().flatten())
            .filter_map(|latest| {
                let name = latest.vm_record["snapshot_name"].as_str()?.to_string();
                Some((name, latest.seq))
            })
            .collect()
    }

    /// The store's fixed settings (chunking, compression).
    pub fn config(&self) -> ads::StoreConfig {
        self.lock().config().clone()
    }

    /// For each id, true when the store lacks the chunk.
    pub fn missing(&self, ids: &[ChunkId]) -> Vec<bool> {
        let store = self.lock();
        ids.iter()
            .map(|id| !id.is_zero_run() && !store.index().contains(id))
            .collect()
    }

    /// Stores `blobs` and makes them durable and indexed (no version yet).
    /// Every blob is checked against its address first: a bad one is refused
    /// and nothing of the batch is stored.
    pub fn put(&self, blobs: Vec<Blob>) -> Result<StoreStats, AdsError> {
        for blob in &blobs {
            blob.verify().map_err(AdsError::Invalid)?;
        }
        let mut store = self.lock();
        let mut txn = store.begin()?;
        txn.put(blobs)?;
        txn.flush()
    }

    /// The decoded bytes of `ids`, each checked against its address.
    pub fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>, AdsError> {
        ads::ChunkSource::read_chunks(&*self.lock(), ids)
    }

    /// Commits a version whose chunks are all stored.
    pub fn commit(&self, draft: VersionDraft) -> Result<Manifest, AdsError> {
        let mut store = self.lock();
        store.begin()?.commit(draft).map(|(manifest, _)| manifest)
    }

    /// Verifies the store and sets aside the corrupt chunks it found;
    /// returns the report and how many were newly set aside.
    /// The store is held only to plan the check and to weigh its findings:
    /// uploads and commits go on while the packs are re-hashed.
    pub fn verify_and_set_aside(&self) -> Result<(ads::VerifyReport, usize), AdsError> {
        self.verify_with_progress(&|_| {})
    }

    /// [`Self::verify_and_set_aside`], calling `progress` with the stored
    /// bytes of each blob re-hashed.
    pub fn verify_with_progress(
        &self,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(ads::VerifyReport, usize), AdsError> {
        let plan = ads::verify::VerifyPlan::take(&self.lock())?;
        let rehashed = plan.rehash(progress);
        let mut store = self.lock();
        let report = rehashed.finish(&store);
        let set_aside = ads::verify::set_aside_corrupt(&mut store, &report)?;
        Ok((report, set_aside))
    }

    /// Applies retention (keep the newest `keep` versions of each VM) and
    /// reclaims unreferenced chunks, if `quiet()` says, with the store held,
    /// that nothing is writing to it or reading from it now; None otherwise.
    pub fn retain(
        &self,
        keep: usize,
        quiet: impl FnOnce() -> bool,
    ) -> Result<Option<ads::gc::GcReport>, AdsError> {
        let mut store = self.lock();
        if !quiet() {
            return Ok(None);
        }
        ads::gc::gc(&mut store, keep).map(Some)
    }

    /// Runs `read` with the store (listing, restore, verification).
    pub fn with_store<T>(&self, read: impl FnOnce(&Store) -> T) -> T {
        read(&self.lock())
    }
}

impl ads::ChunkSource for DataStore {
    fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Vec<u8>>, AdsError> {
        DataStore::read_chunks(self, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_rehashed_with_the_store_free_for_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open_or_init(&dir.path().join("ads"), None, None).unwrap();
        let blobs: Vec<Blob> = (0..4u8)
            .map(|i| {
                let raw = vec![i; 10_000];
                let (codec, data) = ads::Compression::default().encode(&raw);
                Blob {
                    id: ChunkId::of(&raw),
                    raw_len: raw.len() as u32,
                    codec,
                    data,
                }
            })
            .collect();
        store.put(blobs).unwrap();

        let free_while_rehashing = std::sync::atomic::AtomicBool::new(true);
        let (report, _) = store
            .verify_with_progress(&|_| {
                if store.store.try_lock().is_err() {
                    free_while_rehashing.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .unwrap();
        assert_eq!(report.chunks, 4);
        assert!(
            free_while_rehashing.into_inner(),
            "the store was held while packs were read"
        );
    }
}
