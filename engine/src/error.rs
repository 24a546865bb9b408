//! Engine errors, each naming the object and the step that failed.

use crate::address::AddressError;
use crate::agent::AgentError;
use crate::placement::PlacementError;
use crate::xapi::CallError;

/// Why an engine operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The configuration does not fit the pool.
    #[error("pool {pool}: {message}")]
    Config { pool: String, message: String },
    /// A pool the engine does not know.
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    /// An XAPI call failed; names the object and the step.
    #[error("{object}: {step} failed: {cause}")]
    Xapi {
        object: String,
        step: &'static str,
        /// Part of the message, so deliberately not a `source` (no repeated chains).
        cause: CallError,
    },
    /// No delegate address could be had.
    #[error("{0}")]
    Address(#[from] AddressError),
    /// No host can run the delegate.
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    /// The delegate booted but reported no address in time.
    #[error("{delegate}: no address reported within {waited_s} s")]
    AddressTimeout { delegate: String, waited_s: u64 },
    /// Whatever answers at the delegate's address is not that delegate.
    #[error("{delegate}: identity check at {ip} failed: {detail}")]
    Identity {
        delegate: String,
        ip: String,
        detail: String,
    },
    /// The data store failed (it names the file or object).
    #[error("data store: {0}")]
    Store(String),
    /// The delegate's agent failed.
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// The engine refused to touch an object it did not create.
    #[error("refusing to {action} {object}: not created by this engine")]
    NotOurs {
        action: &'static str,
        object: String,
    },
    /// A disk of ours is still attached, so it cannot go yet.
    #[error("{0} is still attached to a VM")]
    StillAttached(String),
    /// The template cannot be deployed or used.
    #[error("template: {0}")]
    Template(String),
    /// The job journal cannot be read or written.
    #[error("{0}")]
    Journal(String),
    /// No delegate could be made ready for a VM.
    #[error("no delegate: {0}")]
    NoDelegate(Box<EngineError>),
    /// The operator cancelled the work, or its job reached its time limit.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A job name that is not running (for cancel), or already is (for a start).
    #[error("{0}")]
    JobControl(String),
    /// A delegate that should be gone is still there.
    #[error("teardown: {0}")]
    Teardown(String),
}

impl EngineError {
    /// Wraps a failed XAPI call with the object and step it concerned.
    pub fn xapi(object: impl Into<String>, step: &'static str, source: CallError) -> Self {
        EngineError::Xapi {
            object: object.into(),
            step,
            cause: source,
        }
    }

    /// True when the failure is about the host the delegate ran on, so another
    /// host may do better.
    /// True when XAPI said the host is offline or disabled: other delegates
    /// should avoid it for a while too.
    pub fn is_host_down(&self) -> bool {
        matches!(self, EngineError::Xapi { cause, .. } if matches!(
            cause.code(),
            Some(xapi_proto::codes::HOST_OFFLINE | xapi_proto::codes::HOST_DISABLED)
        ))
    }

    pub fn is_host_related(&self) -> bool {
        match self {
            EngineError::Xapi { cause, .. } => matches!(
                cause.code(),
                Some(
                    xapi_proto::codes::HOST_NOT_ENOUGH_FREE_MEMORY
                        | xapi_proto::codes::HOST_OFFLINE
                        | xapi_proto::codes::HOST_DISABLED
                        | xapi_proto::codes::VM_REQUIRES_SR
                        | xapi_proto::codes::VM_REQUIRES_NETWORK
                )
            ),
            EngineError::AddressTimeout { .. } => true,
            _ => false,
        }
    }
}
