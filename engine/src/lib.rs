//! The abd engine: provisions and drives backup delegates (ABDs) in
//! XenServer / XCP-ng pools.
//!
//! The engine talks to pools only through [`xapi::Transport`] and to delegates
//! only through [`agent::AgentClient`] (the `abd-agent` protocol over an
//! [`agent::AgentLink`]); it reads time only from `tokio::time`,
//! so the same code runs on a paused clock against the simulator and on the
//! wall clock against a real pool. It never depends on the simulator.

pub mod accounting;
pub mod address;
pub mod agent;
mod backup;
pub mod boot_gate;
pub mod cancel;
pub mod config;
pub mod datastore;
pub mod delegate;
pub mod diag;
pub mod engine;
pub mod error;
pub mod job;
pub mod joblog;
pub mod journal;
pub mod placement;
pub mod pool;
mod reclaim;
mod replica_vm;
pub mod restore;
pub mod store_check;
pub mod store_server;
pub mod tags;
pub mod template;
mod unanswered;
pub mod validate;
pub mod vm_config;
pub mod xapi;

pub use config::{Addressing, EngineConfig, JobSpec, PoolConfig};
pub use engine::{Engine, PoolConnection, StartOptions};
pub use error::EngineError;
