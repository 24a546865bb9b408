//! Delegate IPv4 addresses: static address plans leased one delegate at a time.
//!
//! [`StaticAllocator`] is the pure bookkeeping (which address is free, who holds which);
//! [`AddressQueue`] puts it behind a fair FIFO wait so a job without a free address waits
//! its turn instead of failing at once. Everything is deterministic: ordered containers
//! only, `tokio::time` only, no randomness.

use std::net::Ipv4Addr;

pub mod allocator;
pub mod dhcp_gate;
pub mod queue;

pub use allocator::{HolderId, StaticAddress, StaticAllocator};
pub use dhcp_gate::DhcpGate;
pub use queue::{AddressQueue, Lease};

/// Errors of address leasing.
///
/// Each names the address (or the plan's size) so an operator can fix the pool's
/// configuration or see which delegate holds what without reading logs.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The configured static list names the same IP twice, which would let two delegates share it.
    #[error("static address {ip} is listed more than once in the pool's address plan")]
    DuplicateAddress {
        /// The repeated address.
        ip: Ipv4Addr,
    },
    /// A static plan without any address could never start a delegate.
    #[error("the static address plan lists no address (list at least one, or use DHCP)")]
    EmptyList,
    /// A release of an address that is currently free: a double release or a bookkeeping bug.
    #[error("cannot release address {ip}: it is not leased")]
    NotLeased {
        /// The address that was released while free.
        ip: Ipv4Addr,
    },
    /// A release by someone other than the holder, refused so one job cannot free another's address.
    #[error("cannot release address {ip} for holder {holder}: it is leased to holder {actual}")]
    WrongHolder {
        /// The address whose release was refused.
        ip: Ipv4Addr,
        /// Who asked to release it.
        holder: HolderId,
        /// Who actually holds it.
        actual: HolderId,
    },
    /// The address is not part of this pool's static plan at all.
    #[error("address {ip} is not in the static address plan")]
    UnknownAddress {
        /// The address that is not in the plan.
        ip: Ipv4Addr,
    },
    /// The request waited its whole wait limit in the queue without an address becoming free.
    #[error(
        "no free delegate address after {} ({})",
        display_seconds(*.waited_ms),
        describe_all_in_use(*.capacity)
    )]
    WaitLimit {
        /// How long the request waited, in milliseconds of (possibly simulated) time.
        waited_ms: u64,
        /// How many static addresses the plan has, all of them in use.
        capacity: usize,
    },
}

/// "600 s" for whole seconds, "1.5 s" otherwise: reads well for typical minute-scale limits.
fn display_seconds(duration_ms: u64) -> String {
    let seconds = duration_ms / 1000;
    let remainder_ms = duration_ms % 1000;
    if remainder_ms == 0 {
        format!("{seconds} s")
    } else {
        let fraction = format!("{remainder_ms:03}");
        format!("{seconds}.{} s", fraction.trim_end_matches('0'))
    }
}

/// Says why nothing was free, in the plan's own terms.
fn describe_all_in_use(capacity: usize) -> String {
    if capacity == 1 {
        "the only static address is in use".to_owned()
    } else {
        format!("all {capacity} static addresses in use")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_limit_message_names_duration_and_capacity() {
        let error = AddressError::WaitLimit {
            waited_ms: 600_000,
            capacity: 2,
        };
        assert_eq!(
            error.to_string(),
            "no free delegate address after 600 s (all 2 static addresses in use)"
        );
        let error = AddressError::WaitLimit {
            waited_ms: 1_500,
            capacity: 1,
        };
        assert_eq!(
            error.to_string(),
            "no free delegate address after 1.5 s (the only static address is in use)"
        );
    }

    #[test]
    fn messages_name_the_address() {
        let ip = Ipv4Addr::new(10, 0, 0, 7);
        let errors = [
            AddressError::DuplicateAddress { ip },
            AddressError::NotLeased { ip },
            AddressError::WrongHolder {
                ip,
                holder: 1,
                actual: 2,
            },
            AddressError::UnknownAddress { ip },
        ];
        for error in errors {
            assert!(error.to_string().contains("10.0.0.7"), "{error}");
        }
        let wrong = AddressError::WrongHolder {
            ip,
            holder: 1,
            actual: 2,
        };
        assert_eq!(
            wrong.to_string(),
            "cannot release address 10.0.0.7 for holder 1: it is leased to holder 2"
        );
    }
}
