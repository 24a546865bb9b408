//! The engine's side of the conversation with a delegate's agent.

use async_trait::async_trait;
use std::net::Ipv4Addr;

/// Progress of reading one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskProgress {
    /// 1-based index of the disk among those attached.
    pub disk_index: usize,
    /// How many disks are attached.
    pub disk_count: usize,
    /// Size of this disk.
    pub size_bytes: u64,
    /// Percent of this disk done (0-100).
    pub percent: u8,
}

/// What a delegate read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadReport {
    /// Disks read, in device order.
    pub disks: usize,
    /// Bytes read in all.
    pub bytes_read: u64,
    /// Disks written into the data store (empty when there is no store).
    pub written: Vec<WrittenDisk>,
    /// What the store took for them.
    pub stored: ads::StoreStats,
}

/// One disk a delegate backed up into the data store (chunks stored, no version yet).
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenDisk {
    /// XAPI `userdevice` of the disk in the delegate (1..n).
    pub userdevice: String,
    /// The snapshot VDI that was read.
    pub vdi_uuid: String,
    pub manifest: ads::DiskManifest,
    pub read: ads::ReadStats,
}

/// Where a delegate puts what it reads: the engine's data store, incremental
/// against the VM's previous version.
pub struct StoreTarget<'a> {
    pub store: &'a crate::datastore::DataStore,
    pub vm_name: &'a str,
    pub previous: Option<&'a ads::Manifest>,
    /// Per disk (device order): the 64 KiB blocks CBT reports changed since
    /// `previous`, or `None` to read the whole disk.
    pub changed_blocks: Vec<Option<Vec<bool>>>,
}

/// Why a request to an agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Nothing answered at the address.
    #[error("no delegate agent answers at {ip}")]
    Unreachable { ip: Ipv4Addr },
    /// Something answered that is not a delegate agent (an address collision).
    #[error("{ip} is answered by a host that is not a delegate (address collision?)")]
    Foreign { ip: Ipv4Addr },
    /// The agent answered with an error.
    #[error("delegate agent at {ip}: {message}")]
    Failed { ip: Ipv4Addr, message: String },
}

/// What a delegate writes on restore: a version from the engine's data store,
/// disk i onto the disk plugged as device i+1.
pub struct RestoreSource<'a> {
    pub store: &'a crate::datastore::DataStore,
    pub manifest: &'a ads::Manifest,
    /// The version the target disks already hold (replication): only the
    /// segments that differ from it are written.
    pub base: Option<&'a ads::Manifest>,
}

/// Talks to the agent inside a running delegate, by its address.
#[async_trait]
pub trait DelegateAgent: Send + Sync {
    /// The VM uuid the delegate at `ip` reports as its own.
    async fn identity(&self, ip: Ipv4Addr) -> Result<String, AgentError>;

    /// Reads every disk hot-plugged into the delegate at `ip` (devices 1..n),
    /// into `target` when there is one, calling `progress` as it goes.
    async fn read_disks(
        &self,
        ip: Ipv4Addr,
        target: Option<StoreTarget<'_>>,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError>;

    /// Writes `source`'s disks onto the disks hot-plugged read-write into the
    /// delegate at `ip` (devices 1..n), each verified against its digest.
    /// The report's `bytes_read` counts the bytes written.
    async fn write_disks(
        &self,
        ip: Ipv4Addr,
        source: RestoreSource<'_>,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError>;
}
