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
pub mod wire;

pub use error::{XapiError, codes};
pub use refs::OpaqueRef;

/// A value carried by an XAPI call or returned by one (JSON-RPC value space;
/// the XML-RPC codec maps onto it).
pub type Value = serde_json::Value;
