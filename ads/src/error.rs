//! Errors of the data store. Every variant names the file or object at fault.

use crate::ChunkId;
use std::path::PathBuf;

/// Everything the store can report.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an abd data store (no {marker}); create one with `abd ads init {path}`")]
    NotAStore { path: PathBuf, marker: &'static str },
    #[error(
        "no data store at {path}: the directory does not exist (create one with `abd ads init {path}`)"
    )]
    NoSuchStore { path: PathBuf },
    #[error("{path} is not empty; `abd ads init` only creates a store in a new or empty directory")]
    NotEmpty { path: PathBuf },
    #[error("{path}: store format {found} is not supported (this build reads format {supported})")]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: store is in use by another process (lock held)")]
    Locked { path: PathBuf },
    #[error("{path}: corrupt {what}: {detail}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("chunk {id} is missing from the store")]
    MissingChunk { id: ChunkId },
    #[error("chunk {id} in {pack} at offset {offset} is corrupt: {detail}")]
    CorruptChunk {
        id: ChunkId,
        pack: String,
        offset: u64,
        detail: String,
    },
    #[error("no version of VM {vm:?} in the store")]
    NoSuchVm { vm: String },
    #[error("several VMs in the store are named {name:?} (ids {ids}); name one by its id")]
    AmbiguousVm { name: String, ids: String },
    #[error("VM {vm:?} has no version {seq} (versions: {available})")]
    NoSuchVersion {
        vm: String,
        seq: u64,
        available: String,
    },
    #[error(
        "disk {disk} of VM {vm:?} version {seq} restored with digest {got}, expected {expected}"
    )]
    DigestMismatch {
        vm: String,
        seq: u64,
        disk: usize,
        expected: String,
        got: String,
    },
    #[error(
        "data store full: {used_bytes} of {capacity_bytes} bytes used, {needed_bytes} more needed"
    )]
    Full {
        capacity_bytes: u64,
        used_bytes: u64,
        needed_bytes: u64,
    },
    #[error(
        "data store disk full: {} has {free_bytes} bytes free; {needed_bytes} more would leave less than the {keep_free_bytes} kept free",
        path.display()
    )]
    DiskFull {
        path: PathBuf,
        free_bytes: u64,
        needed_bytes: u64,
        keep_free_bytes: u64,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("source: {0}")]
    Source(#[source] std::io::Error),
    /// A store reached over the network failed or answered badly.
    #[error("data store at {url}: {detail}")]
    Remote { url: String, detail: String },
    #[error("simulated crash at {0}")]
    Crashed(crate::CommitStep),
}

/// Result with [`AdsError`].
pub type Result<T, E = AdsError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| AdsError::Io {
            path: path.into(),
            source,
        })
    }
}
