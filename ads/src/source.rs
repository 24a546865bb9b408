//! Where disk bytes come from and go to: one reader trait, one writer trait.
//!
//! A delegate reads an attached disk (`/dev/xvdX` on a real pool, a simulated
//! VDI in simulation); `abd ads backup` reads an image file. All are
//! [`DiskSource`]s. Restores write to a [`DiskTarget`].

use crate::ChunkId;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A disk to read: its size and random reads.
pub trait DiskSource: Send {
    /// Size of the disk in bytes.
    fn size_bytes(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies inside the disk.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Where restore gets chunks: the store itself, or a store reached over the
/// network. Every chunk returned has been checked against its address.
pub trait ChunkSource: Sync {
    /// The decoded bytes of `ids`, in order.
    fn read_chunks(&self, ids: &[ChunkId]) -> crate::Result<Vec<Vec<u8>>>;
}

impl ChunkSource for crate::Store {
    fn read_chunks(&self, ids: &[ChunkId]) -> crate::Result<Vec<Vec<u8>>> {
        ids.iter().map(|id| self.read_chunk(id)).collect()
    }
}

/// A disk to write on restore.
pub trait DiskTarget {
    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// True when unwritten ranges already read as zeros (a new sparse file).
    fn zeroed(&self) -> bool {
        false
    }
}

/// A raw image file or block device.
pub struct FileDisk {
    file: File,
    size_bytes: u64,
    zeroed: bool,
}

impl FileDisk {
    /// Opens `path` for reading; its size is its length (or a device's size).
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path)?;
        let size_bytes = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            size_bytes,
            zeroed: false,
        })
    }

    /// Opens an existing file or block device to restore onto.
    pub fn open_rw(path: &std::path::Path) -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::options().read(true).write(true).open(path)?;
        let size_bytes = file.seek(SeekFrom::End(0))?;
        Ok(Self {
            file,
            size_bytes,
            zeroed: false,
        })
    }

    /// Creates a new sparse file of `size_bytes` to restore into.
    pub fn create(path: &std::path::Path, size_bytes: u64) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        file.set_len(size_bytes)?;
        Ok(Self {
            file,
            size_bytes,
            zeroed: true,
        })
    }

    /// Syncs written data to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl DiskSource for FileDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl DiskTarget for FileDisk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn zeroed(&self) -> bool {
        self.zeroed
    }
}

/// A disk held in memory (tests, benches, simulated VDIs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisk(pub Vec<u8>);

impl DiskSource for MemDisk {
    fn size_bytes(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        let bytes = self.0.get(start..start + buf.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            )
        })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl DiskTarget for MemDisk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset as usize + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}
