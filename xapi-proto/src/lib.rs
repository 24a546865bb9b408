//! What the abd engine and the XAPI simulator both speak.
//!
//! XAPI object references, typed records with XAPI's own field names, the value
//! model carried by calls (the JSON-RPC value space), and XAPI's error codes.
//! Nothing here performs I/O or knows about backup delegates.

pub mod defaults;
pub mod error;
pub mod records;
pub mod refs;
pub mod tags;
pub mod vhd;
pub mod wire;

pub use error::{XapiError, codes};
pub use refs::OpaqueRef;

/// A value carried by an XAPI call or returned by one (JSON-RPC value space;
/// the XML-RPC codec maps onto it).
pub type Value = serde_json::Value;

/// True for XAPI calls that change nothing (getters, `event.from`, ...):
/// after one, the event stream has nothing new to look for, and one whose
/// reply was lost can be sent again.
pub fn is_read_only(method: &str) -> bool {
    let name = method.rsplit('.').next().unwrap_or(method);
    name.starts_with("get")
        || method.starts_with("system.")
        || matches!(method, "event.from" | "host.compute_free_memory")
}
