//! Version manifests: what one backup of one VM holds.
//!
//! A manifest names every disk's segments in order; a segment is a zero run
//! or an ordered chunk list. Writing the manifest (atomically, last) is what
//! commits a version: it exists whole or not at all.

use crate::ChunkId;
use crate::chunking::{disk_digest, segment_digest, zero_segment_digest};
use serde::{Deserialize, Serialize};

/// Manifest format written by this build.
pub const MANIFEST_FORMAT: u32 = 1;

/// One committed backup version of one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The VM's id in the store, under which its versions are numbered and
    /// kept: its uuid when backed up from a pool (so two VMs of one name never
    /// share versions), the name it was given otherwise.
    pub vm: String,
    /// The VM's name when this version was taken; empty in manifests written
    /// before names and ids were kept apart (the id was the name then).
    #[serde(default)]
    pub name: String,
    /// 1, 2, 3... per VM, in commit order.
    pub seq: u64,
    /// When the source was read, as the caller states it (simulated or wall time).
    pub taken_at: String,
    /// The version this one was made incremental against, if any.
    pub parent_seq: Option<u64>,
    /// The VM's metadata (its XAPI record when backed up from a pool).
    #[serde(default)]
    pub vm_record: serde_json::Value,
    pub disks: Vec<DiskManifest>,
}

/// One disk of a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskManifest {
    /// The disk's name at the source (device, VDI name or image file).
    pub label: String,
    pub size_bytes: u64,
    pub segment_bytes: u64,
    /// Digest over the size and every segment digest (see [`disk_digest`]).
    pub digest: ChunkId,
    pub segments: Vec<Segment>,
}

/// One segment of a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    Zero,
    Data {
        digest: ChunkId,
        chunks: Vec<(ChunkId, u32)>,
    },
}

impl Segment {
    /// A data segment with its digest computed from its chunks.
    pub fn data(chunks: Vec<(ChunkId, u32)>) -> Self {
        Self::Data {
            digest: segment_digest(&chunks),
            chunks,
        }
    }

    /// The segment's digest; zero segments need their length.
    pub fn digest(&self, len: u64) -> ChunkId {
        match self {
            Self::Zero => zero_segment_digest(len),
            Self::Data { digest, .. } => *digest,
        }
    }

    /// Chunks referenced (none for a zero run).
    pub fn chunks(&self) -> &[(ChunkId, u32)] {
        match self {
            Self::Zero => &[],
            Self::Data { chunks, .. } => chunks,
        }
    }
}

impl DiskManifest {
    /// Builds a disk manifest, computing its digest.
    pub fn new(label: String, size_bytes: u64, segment_bytes: u64, segments: Vec<Segment>) -> Self {
        let digest = Self::digest_of(size_bytes, segment_bytes, &segments);
        Self {
            label,
            size_bytes,
            segment_bytes,
            digest,
            segments,
        }
    }

    /// Recomputes the digest from segments (used on restore and verify).
    pub fn digest_of(size_bytes: u64, segment_bytes: u64, segments: &[Segment]) -> ChunkId {
        disk_digest(
            size_bytes,
            segments.iter().enumerate().map(|(i, s)| {
                let start = i as u64 * segment_bytes;
                s.digest(segment_bytes.min(size_bytes.saturating_sub(start)))
            }),
        )
    }

    /// Checks the manifest's own consistency; `Err` names what is wrong.
    pub fn check_shape(&self) -> Result<(), String> {
        let expected = self.size_bytes.div_ceil(self.segment_bytes.max(1));
        if self.segment_bytes == 0 || self.segments.len() as u64 != expected {
            return Err(format!(
                "disk {:?}: {} segments for {} bytes in segments of {}",
                self.label,
                self.segments.len(),
                self.size_bytes,
                self.segment_bytes
            ));
        }
        for (i, segment) in self.segments.iter().enumerate() {
            let start = i as u64 * self.segment_bytes;
            let len = self.segment_bytes.min(self.size_bytes - start);
            if let Segment::Data { digest, chunks } = segment {
                let sum: u64 = chunks.iter().map(|(_, l)| *l as u64).sum();
                if sum != len {
                    return Err(format!(
                        "disk {:?} segment {i}: chunks cover {sum} bytes, segment has {len}",
                        self.label
                    ));
                }
                if *digest != segment_digest(chunks) {
                    return Err(format!(
                        "disk {:?} segment {i}: digest does not match its chunks",
                        self.label
                    ));
                }
            }
        }
        if Self::digest_of(self.size_bytes, self.segment_bytes, &self.segments) != self.digest {
            return Err(format!(
                "disk {:?}: disk digest does not match its segments",
                self.label
            ));
        }
        Ok(())
    }
}

impl Manifest {
    /// Every stored chunk this version references, with repeats (zero runs excluded).
    pub fn chunk_refs(&self) -> impl Iterator<Item = &(ChunkId, u32)> {
        self.disks
            .iter()
            .flat_map(|d| d.segments.iter().flat_map(|s| s.chunks().iter()))
            .filter(|(id, _)| !id.is_zero_run())
    }

    /// Total logical size of the version's disks.
    pub fn size_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size_bytes).sum()
    }

    /// The VM's name when this version was taken.
    pub fn vm_name(&self) -> &str {
        match self.name.is_empty() {
            true => &self.vm,
            false => &self.name,
        }
    }

    /// How reports name this version: see [`version_label`].
    pub fn label(&self) -> String {
        version_label(self.vm_name(), &self.vm, self.seq)
    }
}

/// How reports name version `seq` of a VM: `name@seq`, followed by the VM's id
/// in brackets when the id is not the name (two VMs may share a name).
pub fn version_label(name: &str, vm: &str, seq: u64) -> String {
    match name == vm || name.is_empty() {
        true => format!("{vm}@{seq}"),
        false => format!("{name}@{seq} [{vm}]"),
    }
}

/// Directory name for a VM: safe characters kept, others as `%XX`.
pub fn vm_dir_name(vm: &str) -> String {
    let mut out = String::new();
    for byte in vm.bytes() {
        if byte.is_ascii_alphanumeric()
            || byte == b'-'
            || byte == b'_'
            || (byte == b'.' && !out.is_empty())
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_become_safe_directory_names() {
        assert_eq!(vm_dir_name("web-01"), "web-01");
        assert_eq!(vm_dir_name("a b/c"), "a%20b%2Fc");
        assert_eq!(vm_dir_name(".."), "%2E.");
    }

    #[test]
    fn a_version_is_named_by_its_vm_name_and_by_its_id_when_they_differ() {
        assert_eq!(version_label("web-01", "web-01", 3), "web-01@3");
        assert_eq!(version_label("", "web-01", 3), "web-01@3");
        assert_eq!(
            version_label("web-01", "5d1e9f4a-0000-4000-8000-000000000001", 2),
            "web-01@2 [5d1e9f4a-0000-4000-8000-000000000001]"
        );
    }

    #[test]
    fn shape_check_names_the_problem() {
        let chunk = (ChunkId::of(b"x"), 100u32);
        let disk = DiskManifest::new(
            "d".into(),
            150,
            100,
            vec![Segment::data(vec![chunk]), Segment::Zero],
        );
        assert!(disk.check_shape().is_ok());
        let mut bad = disk.clone();
        bad.size_bytes = 250;
        assert!(bad.check_shape().unwrap_err().contains("segments"));
        let mut bad = disk;
        bad.segments[0] = Segment::Data {
            digest: ChunkId::of(b"y"),
            chunks: vec![chunk],
        };
        assert!(bad.check_shape().unwrap_err().contains("digest"));
    }
}
