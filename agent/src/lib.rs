//! `abd-agent`: the program inside a backup delegate.
//!
//! The engine drives it over HTTP ([`server::router`]), with the delegate's
//! token on every request: identity and health, backup of the disks plugged
//! into the delegate, restore onto them, task progress (long polls) and
//! cancel. Backups go into the engine's data store, which the engine serves
//! over HTTP too ([`store_link`]): the agent asks which chunks the store lacks
//! and sends only those.
//!
//! Disks are a [`devices::DeviceSet`]: `/dev/xvdX` in a real delegate, the
//! simulator's VDIs in a simulated one. The protocol lives in [`protocol`];
//! the engine's client side is `engine::agent`.

pub mod devices;
pub mod http;
pub mod protocol;
pub mod server;
pub mod store_link;
pub mod tasks;
pub mod work;

pub use devices::{BlockDevices, DeviceSet};
pub use protocol::Token;
pub use server::{Agent, AgentConfig, router};
pub use store_link::{HttpStoreLink, RemoteStore, ServiceLink, StoreLink};
pub use work::Execution;
