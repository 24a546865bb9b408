//! The disks plugged into the delegate: one trait, read by the agent the same
//! way whether they are `/dev/xvdX` in a real delegate or a simulated pool's
//! VDIs.

use ads::{DiskSource, DiskTarget, FileDisk};
use async_trait::async_trait;
use std::io;
use std::path::PathBuf;

/// Progress callback: bytes of the disk done so far.
pub type OnBytes<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// The disks plugged into this delegate, by XAPI `userdevice`.
#[async_trait]
pub trait DeviceSet: Send + Sync {
    /// Opens the disk plugged as `device` for reading.
    fn open_read(&self, device: u32) -> io::Result<Box<dyn DiskSource>>;

    /// Opens the disk plugged as `device` for writing.
    fn open_write(&self, device: u32) -> io::Result<Box<dyn DiskTarget + Send>>;

    /// Called after `bytes` of `device` were read or written: a simulated
    /// disk takes their time here (reporting progress) and fails if it went
    /// away meanwhile. Real disks took their time already.
    async fn pace(&self, _device: u32, _bytes: u64, _progress: OnBytes<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Reads every byte of `device` and drops it (a read test); returns the
    /// bytes read.
    async fn read_through(&self, device: u32, progress: OnBytes<'_>) -> io::Result<u64>;
}

/// Xen block devices: `userdevice` n is `<dir>/xvd<a+n>` (`/dev/xvdb` for 1).
pub struct BlockDevices {
    dir: PathBuf,
}

impl BlockDevices {
    /// Devices under `dir` (`/dev` in a delegate; a directory of image files
    /// named `xvdb`, `xvdc`, ... in tests).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of `device`.
    pub fn path(&self, device: u32) -> io::Result<PathBuf> {
        if device > 25 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device {device} has no xvd name"),
            ));
        }
        Ok(self
            .dir
            .join(format!("xvd{}", (b'a' + device as u8) as char)))
    }
}

#[async_trait]
impl DeviceSet for BlockDevices {
    fn open_read(&self, device: u32) -> io::Result<Box<dyn DiskSource>> {
        let path = self.path(device)?;
        let disk = FileDisk::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Box::new(disk))
    }

    fn open_write(&self, device: u32) -> io::Result<Box<dyn DiskTarget + Send>> {
        let path = self.path(device)?;
        let disk = FileDisk::open_rw(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Box::new(disk))
    }

    async fn read_through(&self, device: u32, progress: OnBytes<'_>) -> io::Result<u64> {
        let mut disk = self.open_read(device)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reading = tokio::task::spawn_blocking(move || {
            let size = disk.size_bytes();
            let mut buf = vec![0u8; 4 << 20];
            let mut done = 0;
            while done < size {
                let n = buf.len().min((size - done) as usize);
                disk.read_at(done, &mut buf[..n])?;
                done += n as u64;
                let _ = tx.send(done);
            }
            Ok::<u64, io::Error>(done)
        });
        while let Some(done) = rx.recv().await {
            progress(done);
        }
        reading.await.map_err(io::Error::other)?
    }
}
