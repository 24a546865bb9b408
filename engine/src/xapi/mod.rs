//! How the engine talks XAPI: a transport that carries one call, and a typed
//! client with a session on top of it.

mod client;
mod http;
pub mod vhd_stream;

pub use client::{
    Credentials, EventBatch, Reachability, ReachabilityHook, XapiClient, XapiEvent,
    decode_cbt_bitmap, giving_up_on,
};
pub use http::{CALL_TIMEOUT, HttpOptions, HttpTransport, Protocol, TlsPolicy};

use async_trait::async_trait;
use std::sync::Arc;
use xapi_proto::{Value, XapiError};

/// Writes a whole disk image, in order from offset 0, into what it is given.
pub type ImageWriter = dyn Fn(&mut dyn ads::DiskTarget) -> Result<(), String> + Send + Sync;

/// Told how many bytes of an upload have gone out so far (from 0 again when
/// an upload is retried).
pub type OnSent = dyn Fn(u64) + Send + Sync;

/// A disk image for `/import_raw_vdi`: its size, the writer that produces
/// its bytes (called again when an upload is retried) and who hears how far
/// the upload got. A sparse image names the blocks that hold data; it goes
/// out as a dynamic VHD (`format=vhd`) without the others, which the writer
/// leaves out and the pool fills with zeros.
#[derive(Clone)]
pub struct RawImage {
    /// Bytes the image holds (the VDI's virtual size).
    pub size: u64,
    pub write: Arc<ImageWriter>,
    /// Hears bytes gone out of [`wire_bytes`](Self::wire_bytes).
    pub on_sent: Arc<OnSent>,
    /// Per block of [`xapi_proto::vhd::BLOCK_BYTES`]: holds data (sparse images).
    pub allocated: Option<Arc<Vec<bool>>>,
}

impl RawImage {
    /// An image of `size` bytes that `write` produces; nobody hears progress.
    pub fn new(size: u64, write: Arc<ImageWriter>) -> Self {
        Self {
            size,
            write,
            on_sent: Arc::new(|_| {}),
            allocated: None,
        }
    }

    /// The same image, sent sparse: only the `allocated` blocks hold data.
    pub fn sparse(self, allocated: Vec<bool>) -> Self {
        assert_eq!(
            allocated.len() as u64,
            self.size.div_ceil(xapi_proto::vhd::BLOCK_BYTES),
            "one flag per block"
        );
        Self {
            allocated: Some(Arc::new(allocated)),
            ..self
        }
    }

    /// Bytes the upload carries: the image, or its VHD when sparse.
    pub fn wire_bytes(&self) -> u64 {
        match &self.allocated {
            Some(allocated) => vhd_stream::wire_bytes(self.size, allocated),
            None => self.size,
        }
    }

    /// The same image, telling `on_sent` how far its upload got.
    pub fn reporting(self, on_sent: Arc<OnSent>) -> Self {
        Self { on_sent, ..self }
    }
}

/// Carries one XAPI call to a pool master and brings back its result.
///
/// The in-process simulator adapter and the HTTP transport implement this;
/// the engine never knows which one it talks to.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Performs `method` with `params` (session first, as on the wire).
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError>;

    /// Sends later calls to the pool master at `address` (what a member's
    /// HOST_IS_SLAVE names); true when that changed where calls go (another
    /// call may have followed the move first). Transports bound to one
    /// endpoint cannot.
    fn redirect(&self, address: &str) -> Result<bool, CallError> {
        Err(CallError::Transport(format!(
            "the pool master moved to {address}, and this link cannot follow it"
        )))
    }

    /// Performs one call on the host at `address`, leaving where other calls
    /// go alone (for looking for a master that cannot be reached).
    async fn call_to(
        &self,
        address: &str,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, CallError> {
        let _ = (method, params);
        Err(CallError::Unreachable(format!(
            "this link cannot call the host at {address}"
        )))
    }

    /// Uploads `image` into the VDI `vdi` (a ref) with `session`, as
    /// `PUT /import_raw_vdi?format=raw` does: the whole disk, in order.
    async fn import_raw_vdi(
        &self,
        session: &str,
        vdi: &str,
        image: RawImage,
    ) -> Result<(), CallError> {
        let _ = (session, image);
        Err(CallError::Transport(format!(
            "this link cannot upload disk images (VDI {vdi})"
        )))
    }

    /// The address of the host calls go to now, for links that can
    /// [`redirect`](Transport::redirect).
    fn address(&self) -> Option<String> {
        None
    }
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// XAPI answered with an error.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// The call did not get through (timeout, malformed reply): it may or may
    /// not have taken effect.
    #[error("transport: {0}")]
    Transport(String),
    /// The pool could not be reached at all (connection refused, no route):
    /// nothing was sent, so the call is safe to try again.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The reply did not have the shape the method promises.
    #[error("unexpected reply to {method}: {detail}")]
    Decode { method: String, detail: String },
}

impl CallError {
    /// The XAPI error code, if XAPI answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Xapi(e) => Some(&e.code),
            _ => None,
        }
    }

    /// True when the call may have taken effect though it failed: no
    /// answer came (the reply was lost), or XAPI's INTERNAL_ERROR (which
    /// promises nothing about what was done). What it would have created is
    /// to be looked for before the work is retried.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(self, CallError::Transport(_) | CallError::Decode { .. })
            || self.code() == Some(xapi_proto::codes::INTERNAL_ERROR)
    }
}
