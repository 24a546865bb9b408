//! The agent's side of the data store: the engine serves its store over HTTP
//! and the agent uses it as an `ads` chunk sink (backup) and chunk source
//! (restore). Every chunk read back is checked against its address here, so
//! nothing on the wire is trusted.

use crate::protocol::{self, ErrorBody, ManifestRequest, Token, paths};
use ads::{AdsError, Blob, ChunkId, ChunkSink, ChunkSource, Manifest, StoreConfig, StoreStats};
use axum::http::{Request, Response, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Largest body of one chunk upload.
const PUT_BATCH_BYTES: usize = 16 << 20;

/// Pauses before each new attempt of a store request that could not get
/// through (every store request is safe to repeat: chunks are addressed by
/// their content). Five attempts in all, over about fifteen seconds of pauses.
const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Longest wait for a connection to the store before an attempt counts as lost.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Carries one HTTP request to the store and blocks until the answer is in.
/// Called from the agent's worker threads, never from async code.
pub trait StoreLink: Send + Sync {
    /// Where the store is, for messages.
    fn url(&self) -> String;
    /// Sends `request` (path and query only in its URI).
    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, String>;
    /// Waits `pause` before a request is tried again, on the link's clock.
    fn pause(&self, pause: Duration);
}

/// The store over real HTTP (reqwest, on the agent's runtime).
pub struct HttpStoreLink {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpStoreLink {
    /// A link to the store at `base` (`http://engine:7480`), driven on `runtime`.
    pub fn new(base: &str, runtime: tokio::runtime::Handle) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client,
            runtime,
        })
    }
}

impl StoreLink for HttpStoreLink {
    fn url(&self) -> String {
        self.base.clone()
    }

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, String> {
        // Run on the agent's runtime: the request's timeout needs its timer.
        self.runtime
            .block_on(crate::http::exchange(&self.client, &self.base, request))
            .map_err(|e| e.to_string())
    }

    fn pause(&self, pause: Duration) {
        // A worker thread, off the runtime: a plain sleep holds up nothing else.
        std::thread::sleep(pause);
    }
}

/// The store as an in-process HTTP service (a simulated delegate talking to
/// the engine in the same process): the same requests, no socket.
pub struct ServiceLink {
    pub name: String,
    pub service: axum::Router,
}

impl StoreLink for ServiceLink {
    fn url(&self) -> String {
        self.name.clone()
    }

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, String> {
        futures_executor::block_on(crate::http::call_service(&self.service, request))
    }

    /// In the same process there is no network to wait for.
    fn pause(&self, _pause: Duration) {}
}

/// The engine's data store, as the agent uses it.
pub struct RemoteStore {
    link: Arc<dyn StoreLink>,
    token: Token,
    /// What the store took for this agent's uploads.
    stats: StoreStats,
    /// Requests sent again because the link lost them.
    retries: AtomicU64,
}

impl RemoteStore {
    pub fn new(link: Arc<dyn StoreLink>, token: Token) -> Self {
        Self {
            link,
            token,
            stats: StoreStats::default(),
            retries: AtomicU64::new(0),
        }
    }

    fn error(&self, detail: impl Into<String>) -> AdsError {
        AdsError::Remote {
            url: self.link.url(),
            detail: detail.into(),
        }
    }

    fn call(&self, path: &str, content_type: &str, body: Vec<u8>) -> ads::Result<Vec<u8>> {
        let response = self.send_retrying(path, content_type, body)?;
        let status = response.status();
        let body = response.into_body();
        if status != StatusCode::OK {
            let detail = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(self.error(format!("{path}: HTTP {status}: {detail}")));
        }
        Ok(body)
    }

    /// Sends a request, again after a pause each time it cannot get through
    /// (an answer, even a refusal, is not retried).
    fn send_retrying(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> ads::Result<Response<Vec<u8>>> {
        let request = |body: Vec<u8>| {
            Request::post(path)
                .header(header::AUTHORIZATION, self.token.bearer())
                .header(header::CONTENT_TYPE, content_type)
                .body(body)
                .map_err(|e| self.error(e.to_string()))
        };
        let mut pauses = RETRY_PAUSES.iter();
        let mut attempts = 1;
        loop {
            let Some(pause) = pauses.next() else {
                // The last attempt: the body is not needed again.
                return self
                    .link
                    .send(request(body)?)
                    .map_err(|e| self.error(format!("{path}: {e} ({attempts} attempts)")));
            };
            match self.link.send(request(body.clone())?) {
                Ok(response) => return Ok(response),
                Err(e) => {
                    tracing::warn!(store = %self.link.url(), path, attempt = attempts, "store request did not get through, trying again: {e}");
                    self.link.pause(*pause);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    attempts += 1;
                }
            }
        }
    }

    fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> ads::Result<T> {
        let body = serde_json::to_vec(body).expect("request serialises");
        let reply = self.call(path, "application/json", body)?;
        serde_json::from_slice(&reply).map_err(|e| self.error(format!("{path}: bad answer: {e}")))
    }

    /// The store's chunking and compression.
    pub fn config(&self) -> ads::Result<StoreConfig> {
        self.call_json(paths::STORE_CONFIG, &())
    }

    /// Version `seq` of `vm`.
    pub fn manifest(&self, vm: &str, seq: u64) -> ads::Result<Manifest> {
        self.call_json(
            paths::STORE_MANIFEST,
            &ManifestRequest {
                vm: vm.to_string(),
                seq,
            },
        )
    }

    /// Requests sent again so far because the link lost them.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// What the store took for the chunks sent so far.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    fn upload(&mut self, blobs: &[Blob]) -> ads::Result<()> {
        let body = protocol::encode_blobs(blobs);
        let stats: StoreStats = {
            let reply = self.call(paths::STORE_CHUNKS, "application/octet-stream", body)?;
            serde_json::from_slice(&reply)
                .map_err(|e| self.error(format!("chunk upload: bad answer: {e}")))?
        };
        self.stats.bytes_received += stats.bytes_received;
        self.stats.bytes_stored += stats.bytes_stored;
        self.stats.chunks_new += stats.chunks_new;
        Ok(())
    }
}

const OCTETS: &str = "application/octet-stream";

impl ChunkSink for RemoteStore {
    fn missing(&mut self, ids: &[ChunkId]) -> ads::Result<Vec<bool>> {
        let reply = self.call(paths::STORE_MISSING, OCTETS, protocol::encode_ids(ids))?;
        if reply.len() != ids.len() {
            return Err(self.error(format!(
                "asked about {} chunks, got {} answers",
                ids.len(),
                reply.len()
            )));
        }
        Ok(reply.into_iter().map(|b| b != 0).collect())
    }

    fn put(&mut self, blobs: Vec<Blob>) -> ads::Result<()> {
        let mut start = 0;
        let mut bytes = 0;
        for (i, blob) in blobs.iter().enumerate() {
            if bytes > 0 && bytes + blob.data.len() > PUT_BATCH_BYTES {
                self.upload(&blobs[start..i])?;
                (start, bytes) = (i, 0);
            }
            bytes += blob.data.len();
        }
        if start < blobs.len() {
            self.upload(&blobs[start..])?;
        }
        Ok(())
    }
}

impl ChunkSource for RemoteStore {
    fn read_chunks(&self, ids: &[ChunkId]) -> ads::Result<Vec<Vec<u8>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self.call(paths::STORE_READ, OCTETS, protocol::encode_ids(ids))?;
        let chunks = protocol::decode_frames(&reply).map_err(|e| self.error(e))?;
        if chunks.len() != ids.len() {
            return Err(self.error(format!(
                "asked for {} chunks, got {}",
                ids.len(),
                chunks.len()
            )));
        }
        for (id, chunk) in ids.iter().zip(&chunks) {
            if ChunkId::of(chunk) != *id {
                return Err(self.error(format!("chunk {} arrived with other content", id.short())));
            }
        }
        Ok(chunks)
    }
}
