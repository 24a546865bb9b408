//! The engine's side of the conversation with a delegate's agent (the
//! `abd-agent` protocol over HTTP, through an [`AgentLink`]), and the tokens
//! that authenticate it.

mod client;
mod link;
mod tokens;

pub use abd_agent::protocol::Token;
pub use client::AgentClient;
pub use link::{AgentLink, HttpAgentLink, LinkError};
pub use tokens::TokenRegistry;

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

/// What a delegate read (or, for a restore, wrote).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadReport {
    /// Disks read, in device order.
    pub disks: usize,
    /// Bytes read in all (written, for a restore).
    pub bytes_read: u64,
    /// Disks written into the data store (empty when there is no store).
    pub written: Vec<WrittenDisk>,
    /// What the store took for them.
    pub stored: ads::StoreStats,
    /// How long the agent was out of reach while it worked (it worked on).
    pub out_of_reach: std::time::Duration,
    /// Data store requests the agent sent again because its link lost them.
    pub store_retries: u64,
}

/// One disk a delegate backed up into the data store (chunks stored, no version yet).
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenDisk {
    /// XAPI `userdevice` of the disk in the delegate (1..n).
    pub userdevice: String,
    pub manifest: ads::DiskManifest,
    pub read: ads::ReadStats,
}

/// Where a delegate puts what it reads: the engine's data store, incremental
/// against the VM's previous version.
pub struct StoreTarget<'a> {
    /// The VM's id in the store (its uuid).
    pub vm_id: &'a str,
    pub previous: Option<&'a ads::Manifest>,
    /// Per disk (device order): the 64 KiB blocks CBT reports changed since
    /// `previous`, or `None` to read the whole disk.
    pub changed_blocks: Vec<Option<Vec<bool>>>,
}

/// What a delegate writes on restore: a version from the engine's data store,
/// disk i onto the disk plugged as device i+1.
pub struct RestoreSource<'a> {
    pub manifest: &'a ads::Manifest,
    /// The version the target disks already hold (replication): only the
    /// segments that differ from it are written.
    pub base: Option<&'a ads::Manifest>,
}

/// Why a request to an agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Nothing answered at the address.
    #[error("no delegate agent answers at {ip}")]
    Unreachable { ip: Ipv4Addr },
    /// The request went out but no whole reply came back (timed out, the
    /// connection broke): it may or may not have been acted on.
    #[error("delegate agent at {ip}: no reply ({message})")]
    NoReply { ip: Ipv4Addr, message: String },
    /// Something answered that is not this delegate's agent (an address collision).
    #[error("{ip} is answered by a host that is not this delegate (address collision?)")]
    Foreign { ip: Ipv4Addr },
    /// The agent answered with an error.
    #[error("delegate agent at {ip}: {message}")]
    Failed { ip: Ipv4Addr, message: String },
    /// The agent answered that it has no such thing (HTTP 404).
    #[error("delegate agent at {ip}: {message}")]
    NotFound { ip: Ipv4Addr, message: String },
    /// The agent no longer knows the task it was running: its process
    /// restarted and the work is gone (the delegate may still be fine).
    #[error("delegate agent at {ip} lost task {task} (the agent restarted)")]
    TaskLost { ip: Ipv4Addr, task: u64 },
    /// The work failed because the agent could not reach the data store:
    /// the same work may succeed when tried again.
    #[error("delegate agent at {ip}: {message}")]
    StoreUnreachable { ip: Ipv4Addr, message: String },
}
