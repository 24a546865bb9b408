//! Pack files: many compressed chunks in one file, with a self-describing trailer.
//!
//! Layout: `ABDPACK1`, the blobs back to back, then one 49-byte entry per blob
//! (id, offset, stored length, raw length, codec), the entry count, a BLAKE3
//! checksum of the entries, and `ABDPEND1`. A pack is named by that checksum,
//! so the index can always be rebuilt from the packs alone.

use crate::ChunkId;
use crate::codec::BlobCodec;
use crate::direct::AppendFile;
use crate::error::{AdsError, IoContext, Result};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: &[u8; 8] = b"ABDPACK1";
const FOOTER: &[u8; 8] = b"ABDPEND1";
const ENTRY_BYTES: usize = 32 + 8 + 4 + 4 + 1;
const TAIL_BYTES: usize = 4 + 32 + 8;

/// One blob in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: BlobCodec,
}

/// A pack's name: the hex checksum of its trailer.
pub type PackName = String;

/// Path of a pack inside a store's `packs/` directory.
pub fn pack_path(packs_dir: &Path, name: &str) -> PathBuf {
    packs_dir.join(&name[..2]).join(format!("{name}.pack"))
}

/// Serialises entries as a trailer body (without count, checksum, footer).
pub(crate) fn encode_entries(entries: &[PackEntry], out: &mut Vec<u8>) {
    for entry in entries {
        out.extend_from_slice(&entry.id.0);
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out.extend_from_slice(&entry.stored_len.to_le_bytes());
        out.extend_from_slice(&entry.raw_len.to_le_bytes());
        out.push(entry.codec as u8);
    }
}

/// Parses a trailer body produced by [`encode_entries`].
pub(crate) fn decode_entries(body: &[u8]) -> std::result::Result<Vec<PackEntry>, String> {
    if !body.len().is_multiple_of(ENTRY_BYTES) {
        return Err(format!("entry table of {} bytes", body.len()));
    }
    body.chunks_exact(ENTRY_BYTES)
        .map(|raw| {
            let codec =
                BlobCodec::from_byte(raw[48]).ok_or(format!("unknown codec {}", raw[48]))?;
            Ok(PackEntry {
                id: ChunkId(raw[..32].try_into().expect("32")),
                offset: u64::from_le_bytes(raw[32..40].try_into().expect("8")),
                stored_len: u32::from_le_bytes(raw[40..44].try_into().expect("4")),
                raw_len: u32::from_le_bytes(raw[44..48].try_into().expect("4")),
                codec,
            })
        })
        .collect()
}

/// Writes one pack under a temporary name; [`PackWriter::finish`] seals it.
pub struct PackWriter {
    tmp_path: PathBuf,
    out: AppendFile,
    entries: Vec<PackEntry>,
    len: u64,
}

impl PackWriter {
    /// Starts a pack at `tmp_path` (the caller picks a unique name).
    pub fn create(tmp_path: PathBuf) -> Result<Self> {
        let mut out = AppendFile::create(&tmp_path).at(&tmp_path)?;
        out.write_all(HEADER).at(&tmp_path)?;
        Ok(Self {
            tmp_path,
            out,
            entries: Vec::new(),
            len: HEADER.len() as u64,
        })
    }

    /// Appends one encoded blob.
    pub fn append(
        &mut self,
        id: ChunkId,
        codec: BlobCodec,
        raw_len: u32,
        data: &[u8],
    ) -> Result<PackEntry> {
        self.out.write_all(data).at(&self.tmp_path)?;
        let entry = PackEntry {
            id,
            offset: self.len,
            stored_len: data.len() as u32,
            raw_len,
            codec,
        };
        self.len += data.len() as u64;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Bytes written so far.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Number of blobs so far.
    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// Keeps half of what was written and stops, as a crash mid-write would.
    pub(crate) fn abandon_torn(self) {
        self.out.tear(self.len / 2);
    }

    /// Writes the trailer, syncs, and renames the pack into `packs_dir`.
    /// Returns its name and entries.
    pub fn finish(mut self, packs_dir: &Path) -> Result<(PackName, Vec<PackEntry>)> {
        let mut body = Vec::with_capacity(self.entries.len() * ENTRY_BYTES + TAIL_BYTES);
        encode_entries(&self.entries, &mut body);
        body.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let checksum = blake3::hash(&body);
        body.extend_from_slice(checksum.as_bytes());
        body.extend_from_slice(FOOTER);
        self.out.write_all(&body).at(&self.tmp_path)?;
        let file = self.out.finish().at(&self.tmp_path)?;
        file.sync_all().at(&self.tmp_path)?;
        let name = checksum.to_hex().to_string();
        let final_path = pack_path(packs_dir, &name);
        let dir = final_path.parent().expect("pack dir");
        let new_dir = !dir.exists();
        fs::create_dir_all(dir).at(dir)?;
        fs::rename(&self.tmp_path, &final_path).at(&final_path)?;
        sync_dir(dir)?;
        // A subdirectory made for this pack must itself survive a power
        // loss, or the pack goes with it while the index naming it stays.
        if new_dir {
            sync_dir(packs_dir)?;
        }
        Ok((name, self.entries))
    }
}

/// Reads and checks the trailer of the pack at `path`.
pub fn read_trailer(path: &Path) -> Result<Vec<PackEntry>> {
    let corrupt = |detail: String| AdsError::Corrupt {
        path: path.to_path_buf(),
        what: "pack",
        detail,
    };
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    if len < (HEADER.len() + TAIL_BYTES) as u64 {
        return Err(corrupt(format!("only {len} bytes")));
    }
    let mut tail = [0u8; TAIL_BYTES];
    file.read_exact_at(&mut tail, len - TAIL_BYTES as u64)
        .at(path)?;
    if &tail[36..] != FOOTER {
        return Err(corrupt("no trailer (torn or truncated)".into()));
    }
    let count = u32::from_le_bytes(tail[..4].try_into().expect("4")) as u64;
    let table_len = count * ENTRY_BYTES as u64;
    if table_len + (HEADER.len() + TAIL_BYTES) as u64 > len {
        return Err(corrupt(format!(
            "{count} entries do not fit in {len} bytes"
        )));
    }
    let mut body = vec![0u8; table_len as usize + 4];
    file.read_exact_at(&mut body, len - TAIL_BYTES as u64 - table_len)
        .at(path)?;
    if blake3::hash(&body).as_bytes() != &tail[4..36] {
        return Err(corrupt("trailer checksum mismatch".into()));
    }
    let entries = decode_entries(&body[..table_len as usize]).map_err(corrupt)?;
    let data_end = len - TAIL_BYTES as u64 - table_len;
    if let Some(bad) = entries
        .iter()
        .find(|e| e.offset < HEADER.len() as u64 || e.offset + e.stored_len as u64 > data_end)
    {
        return Err(corrupt(format!(
            "blob {} lies outside the data area",
            bad.id
        )));
    }
    Ok(entries)
}

/// Reads one stored blob (still encoded).
pub fn read_blob(file: &File, path: &Path, offset: u64, stored_len: u32) -> Result<Vec<u8>> {
    let mut data = vec![0u8; stored_len as usize];
    file.read_exact_at(&mut data, offset).at(path)?;
    Ok(data)
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;

    #[test]
    fn written_pack_reads_back_and_detects_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut writer = PackWriter::create(dir.join("p.tmp")).unwrap();
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for blob in &blobs {
            let (codec, data) = Compression::Lz4.encode(blob);
            writer
                .append(ChunkId::of(blob), codec, blob.len() as u32, &data)
                .unwrap();
        }
        let (name, entries) = writer.finish(&dir).unwrap();
        let path = pack_path(&dir, &name);
        assert_eq!(read_trailer(&path).unwrap(), entries);
        let file = File::open(&path).unwrap();
        let e = entries[3];
        let stored = read_blob(&file, &path, e.offset, e.stored_len).unwrap();
        assert_eq!(
            crate::codec::decode(e.codec, &stored, e.raw_len as usize).unwrap(),
            blobs[3]
        );

        let len = fs::metadata(&path).unwrap().len();
        let torn = dir.join("torn.pack");
        fs::copy(&path, &torn).unwrap();
        File::options()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(
            read_trailer(&torn)
                .unwrap_err()
                .to_string()
                .contains("torn")
        );

        let flipped = dir.join("flipped.pack");
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - TAIL_BYTES - 10;
        bytes[at] ^= 1;
        fs::write(&flipped, bytes).unwrap();
        assert!(
            read_trailer(&flipped)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }
}
