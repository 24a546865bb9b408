//! The wire protocol between the engine and a delegate's agent, and between the
//! agent and the engine's data store. JSON for control messages, binary frames
//! for chunks. Every request carries the delegate's token as a bearer token.

use ads::{Blob, ChunkId, DiskManifest, ReadStats, StoreStats};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The port an agent listens on inside a delegate.
pub const AGENT_PORT: u16 = 7481;
/// Every response from an agent carries this header (with the agent's
/// version), so the engine can tell an agent from some other web server.
pub const AGENT_HEADER: &str = "x-abd-agent";
/// A task-starting request carrying this header starts at most one task per
/// key: sent again (its reply was lost), it answers with the same task.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// `xenstore_data` key carrying the delegate's token.
pub const VM_DATA_TOKEN: &str = "vm-data/abd-token";
/// `xenstore_data` key carrying the URL of the engine's data store.
pub const VM_DATA_STORE_URL: &str = "vm-data/abd-store";

/// Agent endpoints.
pub mod paths {
    pub const HEALTH: &str = "/v1/health";
    pub const IDENTITY: &str = "/v1/identity";
    pub const BACKUP: &str = "/v1/backup";
    pub const RESTORE: &str = "/v1/restore";
    /// `/v1/tasks/{id}`, and `/v1/tasks/{id}/cancel`.
    pub const TASKS: &str = "/v1/tasks";
    /// Store endpoints (served by the engine).
    pub const STORE_CONFIG: &str = "/v1/store/config";
    pub const STORE_MISSING: &str = "/v1/store/missing";
    pub const STORE_CHUNKS: &str = "/v1/store/chunks";
    pub const STORE_READ: &str = "/v1/store/chunks/read";
    pub const STORE_MANIFEST: &str = "/v1/store/manifest";
}

/// A delegate's secret: 256 random bits, hex. Handed to the delegate at
/// provisioning (in `xenstore_data`) and carried by every request. Never
/// printed: `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(String);

impl Token {
    /// Bytes of randomness in a token.
    pub const BYTES: usize = 32;

    /// A token from random bytes.
    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Parses a token's text form (as found in xenstore or a header).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == 2 * Self::BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Token(text.to_ascii_lowercase()))
    }

    /// The text form, for xenstore and headers only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Compares with a presented `Authorization` header value in constant time.
    pub fn matches_bearer(&self, header: &str) -> bool {
        let Some(presented) = header.strip_prefix("Bearer ") else {
            return false;
        };
        let (a, b) = (self.0.as_bytes(), presented.trim().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// `GET /v1/identity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The uuid of the VM the agent runs in.
    pub vm_uuid: String,
    pub agent_version: String,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub tasks_running: usize,
}

/// `POST /v1/backup`: read the disks plugged as `disks[i].device`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    pub disks: Vec<BackupDisk>,
    /// Back up into the engine's data store; `None` only reads the disks
    /// (a read test).
    pub into_store: Option<StoreBackup>,
}

/// One disk to back up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDisk {
    /// XAPI `userdevice` of the plugged disk (1..n).
    pub device: u32,
    /// CBT: the 64 KiB blocks changed since the previous version, as XAPI's
    /// bitmap (base64, most significant bit first). `None` reads it all.
    pub changed_blocks: Option<String>,
}

/// Where a backup goes in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreBackup {
    pub vm: String,
    /// The version to back up incrementally against.
    pub previous: Option<u64>,
}

/// `POST /v1/restore`: write a version's disks onto the disks plugged as
/// `devices` (disk i onto `devices[i]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub vm: String,
    pub version: u64,
    /// The version the target disks already hold: only segments that differ
    /// from it are written (replication).
    pub base: Option<u64>,
    pub devices: Vec<u32>,
}

/// Answer to starting a backup or restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStarted {
    pub task: u64,
}

/// State of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// `GET /v1/tasks/{id}?after=R&wait_ms=W`: answered once the task's revision
/// is above `after`, or after `wait_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task: u64,
    pub state: TaskState,
    /// Goes up with every change.
    pub revision: u64,
    pub disks: Vec<DiskStatus>,
    pub result: Option<TaskResult>,
    pub error: Option<String>,
    /// The task failed because the data store could not be reached: the
    /// same work may succeed when tried again.
    #[serde(default)]
    pub retryable: bool,
}

/// Progress on one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub device: u32,
    pub size_bytes: u64,
    pub done_bytes: u64,
}

/// What a finished task produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskResult {
    /// A backup into the store: chunks stored, no version yet (the engine
    /// commits it).
    Backup {
        disks: Vec<BackedUpDisk>,
        stored: StoreStats,
        /// Store requests sent again because the link lost them.
        #[serde(default)]
        store_retries: u64,
    },
    /// A read test.
    Read { bytes_read: u64 },
    Restore {
        bytes_written: u64,
        /// Store requests sent again because the link lost them.
        #[serde(default)]
        store_retries: u64,
    },
}

/// One disk of a backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackedUpDisk {
    pub device: u32,
    pub manifest: DiskManifest,
    pub read: ReadStats,
}

/// `POST /v1/store/manifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRequest {
    pub vm: String,
    pub seq: u64,
}

/// An error body, from the agent or the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Packs 64 KiB-block flags into XAPI's CBT bitmap form.
pub fn encode_blocks(blocks: &[bool]) -> String {
    use base64::Engine;
    let mut bytes = vec![0u8; blocks.len().div_ceil(8)];
    for (i, _) in blocks.iter().enumerate().filter(|(_, b)| **b) {
        bytes[i / 8] |= 0x80 >> (i % 8);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Unpacks XAPI's CBT bitmap into `count` block flags.
pub fn decode_blocks(text: &str, count: usize) -> Result<Vec<bool>, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("changed-block bitmap is not base64: {e}"))?;
    if bytes.len() * 8 < count {
        return Err(format!(
            "changed-block bitmap covers {} blocks, the disk has {count}",
            bytes.len() * 8
        ));
    }
    Ok((0..count)
        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect())
}

/// Chunk ids, 32 bytes each, back to back.
pub fn encode_ids(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// The inverse of [`encode_ids`].
pub fn decode_ids(body: &[u8]) -> Result<Vec<ChunkId>, String> {
    if !body.len().is_multiple_of(32) {
        return Err(format!(
            "a list of chunk ids is {} bytes, not a multiple of 32",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().expect("32 bytes")))
        .collect())
}

/// Blobs as frames: id (32), raw length (u32 LE), codec (u8), data length
/// (u32 LE), data.
pub fn encode_blobs(blobs: &[Blob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blobs.iter().map(|b| 41 + b.data.len()).sum());
    for blob in blobs {
        out.extend_from_slice(&blob.id.0);
        out.extend_from_slice(&blob.raw_len.to_le_bytes());
        out.push(blob.codec as u8);
        out.extend_from_slice(&(blob.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&blob.data);
    }
    out
}

/// The inverse of [`encode_blobs`]; names what is wrong with a bad body.
pub fn decode_blobs(mut body: &[u8]) -> Result<Vec<Blob>, String> {
    let mut blobs = Vec::new();
    while !body.is_empty() {
        if body.len() < 41 {
            return Err(format!(
                "blob frame {} is truncated ({} bytes)",
                blobs.len(),
                body.len()
            ));
        }
        let id = ChunkId(body[..32].try_into().expect("32 bytes"));
        let raw_len = u32::from_le_bytes(body[32..36].try_into().expect("4 bytes"));
        let codec = ads::codec::BlobCodec::from_byte(body[36])
            .ok_or_else(|| format!("blob {} has unknown codec {}", id.short(), body[36]))?;
        let len = u32::from_le_bytes(body[37..41].try_into().expect("4 bytes")) as usize;
        let data = body
            .get(41..41 + len)
            .ok_or_else(|| format!("blob {} is truncated", id.short()))?;
        blobs.push(Blob {
            id,
            raw_len,
            codec,
            data: data.to_vec(),
        });
        body = &body[41 + len..];
    }
    Ok(blobs)
}

/// Byte strings as frames: length (u32 LE), bytes.
pub fn encode_frames(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| 4 + i.len()).sum());
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The inverse of [`encode_frames`].
pub fn decode_frames(mut body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut items = Vec::new();
    while !body.is_empty() {
        let len = body
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or("frame length is truncated")?;
        let item = body
            .get(4..4 + len)
            .ok_or_else(|| format!("frame {} is truncated", items.len()))?;
        items.push(item.to_vec());
        body = &body[4 + len..];
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hide_and_compare() {
        let token = Token::from_bytes([0xab; 32]);
        assert_eq!(format!("{token:?}"), "Token(<hidden>)");
        assert!(token.matches_bearer(&token.bearer()));
        assert!(!token.matches_bearer(&Token::from_bytes([0xac; 32]).bearer()));
        assert!(!token.matches_bearer(token.expose()));
        assert_eq!(Token::parse(token.expose()), Some(token));
        assert_eq!(Token::parse("abc"), None);
    }

    #[test]
    fn block_bitmaps_round_trip_msb_first() {
        let blocks = [true, false, false, false, false, false, false, true, true];
        let text = encode_blocks(&blocks);
        assert_eq!(text, "gYA=");
        assert_eq!(decode_blocks(&text, 9).unwrap(), blocks);
        assert!(decode_blocks(&text, 17).unwrap_err().contains("covers 16"));
    }

    #[test]
    fn frames_round_trip_and_reject_truncation() {
        let blobs = vec![Blob {
            id: ChunkId::of(b"x"),
            raw_len: 1,
            codec: ads::codec::BlobCodec::Raw,
            data: b"x".to_vec(),
        }];
        let body = encode_blobs(&blobs);
        assert_eq!(decode_blobs(&body).unwrap(), blobs);
        assert!(decode_blobs(&body[..body.len() - 1]).is_err());
        let frames = vec![b"ab".to_vec(), Vec::new()];
        assert_eq!(decode_frames(&encode_frames(&frames)).unwrap(), frames);
        assert!(decode_ids(&[0; 33]).is_err());
    }
}
