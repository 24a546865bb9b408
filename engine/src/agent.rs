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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Disks read, in device order.
    pub disks: usize,
    /// Bytes read in all.
    pub bytes_read: u64,
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

/// Talks to the agent inside a running delegate, by its address.
#[async_trait]
pub trait DelegateAgent: Send + Sync {
    /// The VM uuid the delegate at `ip` reports as its own.
    async fn identity(&self, ip: Ipv4Addr) -> Result<String, AgentError>;

    /// Reads every disk hot-plugged into the delegate at `ip` (devices 1..n),
    /// calling `progress` as it goes.
    async fn read_disks(
        &self,
        ip: Ipv4Addr,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError>;
}
