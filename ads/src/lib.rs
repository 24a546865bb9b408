//! The abd data store (ADS): where backups live.
//!
//! Disks are cut into aligned segments, each cut into content-defined chunks
//! (FastCDC) addressed by BLAKE3 and compressed; chunks go into pack files,
//! and each backup version is a manifest listing its chunks in order. A
//! version is committed by writing its manifest last, so it exists whole or
//! not at all. Nothing here knows about pools, delegates or simulation: the
//! reading side ([`backup`]) works on any [`DiskSource`], the store side on
//! any [`ChunkSink`] caller.

pub mod backup;
pub mod chunking;
pub mod codec;
mod direct;
mod error;
pub mod gc;
mod id;
pub mod index;
pub mod manifest;
pub mod pack;
pub mod restore;
pub mod source;
pub mod store;
pub mod verify;
mod writer;

pub use backup::{DiskPlan, ReadStats, backup_disk};
pub use chunking::ChunkingParams;
pub use codec::Compression;
pub use error::{AdsError, Result};
pub use id::ChunkId;
pub use manifest::{DiskManifest, Manifest, Segment};
pub use restore::{restore_disk, restore_disk_over};
pub use source::{ChunkSource, DiskSource, DiskTarget, FileDisk, MemDisk};
pub use store::{
    Access, Blob, ChunkSink, CommitStep, Store, StoreConfig, StoreStats, Transaction, VersionDraft,
};
pub use verify::{Problem, VerifyReport, verify};

/// What a store writing on a real disk leaves free unless told otherwise
/// ([`Store::set_keep_free`]).
pub const DEFAULT_KEEP_FREE_BYTES: u64 = 1 << 30;
