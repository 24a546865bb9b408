//! Chunk compression. A chunk that does not shrink is stored raw.

use serde::{Deserialize, Serialize};

/// How a stored blob is encoded (one byte in pack trailers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobCodec {
    Raw = 0,
    Lz4 = 1,
    Zstd = 2,
}

impl BlobCodec {
    /// The codec a stored byte names.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Raw),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// The compression a store applies to new chunks. Fixed when a store is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "codec")]
pub enum Compression {
    None,
    Lz4,
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Self::Zstd { level: 1 }
    }
}

impl Compression {
    /// Parses `none`, `lz4`, `zstd` (the default, zstd level 1), `zstd-N`
    /// (levels 1-19) or `zstd-fast-N` (zstd's faster negative levels, 1-7).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "lz4" => Some(Self::Lz4),
            "zstd" => Some(Self::default()),
            _ => {
                if let Some(fast) = text.strip_prefix("zstd-fast-") {
                    let speed: i32 = fast.parse().ok()?;
                    return (1..=7)
                        .contains(&speed)
                        .then_some(Self::Zstd { level: -speed });
                }
                let level: i32 = text.strip_prefix("zstd-")?.parse().ok()?;
                (1..=19).contains(&level).then_some(Self::Zstd { level })
            }
        }
    }

    /// Encodes `raw`; keeps it raw when compression saves less than 1/32,
    /// or when samples show it is incompressible (media, encrypted or
    /// already compressed data), without paying for a full attempt.
    pub fn encode(&self, raw: &[u8]) -> (BlobCodec, Vec<u8>) {
        if *self == Self::None || looks_incompressible(raw) {
            return (BlobCodec::Raw, raw.to_vec());
        }
        let encoded = match self {
            Self::None => None,
            Self::Lz4 => Some((BlobCodec::Lz4, lz4_flex::compress(raw))),
            Self::Zstd { level } => ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(l, _)| l != level) {
                    *slot = zstd::bulk::Compressor::new(*level)
                        .ok()
                        .map(|c| (*level, c));
                }
                let (_, compressor) = slot.as_mut()?;
                compressor
                    .compress(raw)
                    .ok()
                    .map(|data| (BlobCodec::Zstd, data))
            }),
        };
        match encoded {
            Some((codec, data)) if data.len() < raw.len() - raw.len() / 32 => (codec, data),
            _ => (BlobCodec::Raw, raw.to_vec()),
        }
    }
}

thread_local! {
    /// One zstd context per thread, reused across chunks.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Bytes sampled at each of two places to judge compressibility.
const PROBE_BYTES: usize = 4096;

/// True when LZ4 cannot shrink two samples (at 1/4 and 3/4 of the chunk).
fn looks_incompressible(raw: &[u8]) -> bool {
    if raw.len() < 4 * PROBE_BYTES {
        return false;
    }
    [raw.len() / 4, raw.len() * 3 / 4].iter().all(|&at| {
        let sample = &raw[at - PROBE_BYTES / 2..at + PROBE_BYTES / 2];
        lz4_flex::compress(sample).len() >= PROBE_BYTES - PROBE_BYTES / 32
    })
}

/// Decodes a blob of known raw length; `Err` names what went wrong.
pub fn decode(codec: BlobCodec, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let raw = match codec {
        BlobCodec::Raw => stored.to_vec(),
        BlobCodec::Lz4 => lz4_flex::decompress(stored, raw_len).map_err(|e| format!("lz4: {e}"))?,
        BlobCodec::Zstd => {
            zstd::bulk::decompress(stored, raw_len).map_err(|e| format!("zstd: {e}"))?
        }
    };
    if raw.len() != raw_len {
        return Err(format!("decoded {} bytes, expected {raw_len}", raw.len()));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_falls_back_to_raw() {
        let text = b"backup delegate ".repeat(1000);
        let mut noise = vec![0u8; 16_000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        for compression in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd { level: 1 },
        ] {
            for raw in [&text[..], &noise[..]] {
                let (codec, stored) = compression.encode(raw);
                assert_eq!(decode(codec, &stored, raw.len()).unwrap(), raw);
            }
        }
        assert_eq!(Compression::Lz4.encode(&noise).0, BlobCodec::Raw);
        assert_eq!(Compression::Lz4.encode(&text).0, BlobCodec::Lz4);
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            Compression::parse("zstd-3"),
            Some(Compression::Zstd { level: 3 })
        );
        assert_eq!(Compression::parse("lz4"), Some(Compression::Lz4));
        assert_eq!(
            Compression::parse("zstd-fast-3"),
            Some(Compression::Zstd { level: -3 })
        );
        assert_eq!(Compression::parse("zstd-fast-9"), None);
        assert_eq!(Compression::parse("zstd-99"), None);
        assert_eq!(Compression::parse("gzip"), None);
    }

    #[test]
    fn corrupt_blob_is_an_error() {
        let (codec, mut stored) = Compression::Zstd { level: 1 }.encode(&b"abc".repeat(500));
        stored.truncate(stored.len() / 2);
        assert!(decode(codec, &stored, 1500).is_err());
    }
}
