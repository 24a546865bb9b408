//! An append-only file written with direct I/O (`O_DIRECT`) where the
//! filesystem allows it: pack bytes go from an aligned buffer straight to the
//! disk, without a copy into the page cache and a later writeback (a fifth of
//! a first backup's CPU time otherwise). Where direct I/O is refused (tmpfs,
//! some network filesystems) the file is written the ordinary way.

use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of direct writes: buffer address, file offset and length.
const ALIGN: usize = 4096;
/// Bytes gathered before a direct write.
const BUFFER_BYTES: usize = 4 << 20;

/// Appends bytes to a new file; [`AppendFile::finish`] writes the rest and
/// hands the file back (to sync it).
pub(crate) struct AppendFile {
    file: File,
    /// Over-allocated by `ALIGN`; the block starts at `start`.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes waiting in the buffer.
    filled: usize,
    /// Bytes already in the file.
    written: u64,
    direct: bool,
}

impl AppendFile {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let direct = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(OFlags::DIRECT.bits() as i32)
            .open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                (File::create(path)?, false)
            }
            Err(e) => return Err(e),
        };
        let buffer = if direct {
            vec![0; BUFFER_BYTES + ALIGN]
        } else {
            Vec::new()
        };
        let start = buffer.as_ptr().align_offset(ALIGN);
        Ok(Self {
            file,
            buffer,
            start,
            filled: 0,
            written: 0,
            direct,
        })
    }

    /// Appends `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if !self.direct {
                self.file.write_all_at(data, self.written)?;
                self.written += data.len() as u64;
                return Ok(());
            }
            let take = (BUFFER_BYTES - self.filled).min(data.len());
            let at = self.start + self.filled;
            self.buffer[at..at + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == BUFFER_BYTES {
                self.write_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes whatever is buffered and returns the file (not yet synced).
    pub fn finish(mut self) -> io::Result<File> {
        if self.direct {
            self.write_blocks()?;
            // The tail is not a whole block: it goes the ordinary way.
            self.stop_direct()?;
        }
        Ok(self.file)
    }

    /// Cuts the file to `len` bytes, or to what reached it if that is less
    /// (the buffer is dropped unwritten), as a crash mid-write would leave it.
    pub fn tear(self, len: u64) {
        let _ = self.file.set_len(len.min(self.written));
    }

    /// Writes the buffer's whole blocks directly; the remainder moves to the front.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = self.filled / ALIGN * ALIGN;
        if whole == 0 {
            return Ok(());
        }
        let block = &self.buffer[self.start..self.start + whole];
        match self.file.write_all_at(block, self.written) {
            Ok(()) => {}
            // Refused after all (the filesystem or device alignment differs):
            // write everything the ordinary way from here on.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                return self.stop_direct();
            }
            Err(e) => return Err(e),
        }
        self.written += whole as u64;
        let (from, to) = (self.start + whole, self.start + self.filled);
        self.buffer.copy_within(from..to, self.start);
        self.filled -= whole;
        Ok(())
    }

    /// Turns direct I/O off and writes out the buffer (once).
    fn stop_direct(&mut self) -> io::Result<()> {
        if !self.direct {
            return Ok(());
        }
        let flags = fcntl_getfl(&self.file)?;
        fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
        self.direct = false;
        let pending = &self.buffer[self.start..self.start + self.filled];
        self.file.write_all_at(pending, self.written)?;
        self.written += self.filled as u64;
        self.filled = 0;
        self.buffer = Vec::new();
        self.start = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bytes_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = AppendFile::create(&path).unwrap();
        let mut expected = Vec::new();
        // Pieces that straddle blocks and the buffer's end.
        for i in 0..300u32 {
            let piece = vec![(i % 251) as u8; 1 + (i as usize * 7919) % 70_000];
            file.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        file.finish().unwrap().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
