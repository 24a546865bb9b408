//! The engine's data store (ADS): one store directory for every job. Agents
//! write chunks into it (data first); the engine commits a VM's version only
//! after its whole backup succeeded, so a failed backup leaves no version.

use ads::{Access, AdsError, Manifest, Store, StoreStats, Transaction, VersionDraft};
use std::path::Path;
use std::sync::Mutex;

/// A store shared by the engine's jobs and the agents it drives.
pub struct DataStore {
    store: Mutex<Store>,
}

impl DataStore {
    /// Opens the store in `dir`, creating it when the directory is new or empty.
    pub fn open_or_init(dir: &Path) -> Result<Self, AdsError> {
        let is_new = !dir.exists() || dir.read_dir().is_ok_and(|mut d| d.next().is_none());
        if is_new {
            Store::init(dir, ads::StoreConfig::default())?;
        }
        Ok(Self {
            store: Mutex::new(Store::open(dir, Access::Write)?),
        })
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

    /// Runs `write` in a transaction and makes its chunks durable and indexed
    /// (no version yet). Returns what `write` returned and what the store took.
    pub fn write_chunks<T>(
        &self,
        write: impl FnOnce(&mut Transaction<'_>) -> Result<T, AdsError>,
    ) -> Result<(T, StoreStats), AdsError> {
        let mut store = self.lock();
        let mut txn = store.begin()?;
        let value = write(&mut txn)?;
        let stats = txn.flush()?;
        Ok((value, stats))
    }

    /// Commits a version whose chunks are all stored.
    pub fn commit(&self, draft: VersionDraft) -> Result<Manifest, AdsError> {
        let mut store = self.lock();
        store.begin()?.commit(draft).map(|(manifest, _)| manifest)
    }

    /// Runs `read` with the store (listing, restore, verification).
    pub fn with_store<T>(&self, read: impl FnOnce(&Store) -> T) -> T {
        read(&self.lock())
    }
}
