//! What an agent's tasks do: back up the plugged disks into the store (or only
//! read them), or restore a version onto them.

use crate::devices::DeviceSet;
use crate::protocol::{self, BackedUpDisk, BackupRequest, RestoreRequest, TaskResult, Token};
use crate::store_link::{RemoteStore, StoreLink};
use crate::tasks::Task;
use ads::{DiskSource, DiskTarget};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where the heavy work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// On a blocking worker thread, reporting progress as it reads (a real delegate).
    Worker,
    /// Right away on the calling task: the work takes no time on the clock,
    /// and the devices' `pace` reports progress (a simulated delegate).
    Inline,
}

/// Runs `work` as `execution` says.
async fn execute<T: Send + 'static>(
    execution: Execution,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match execution {
        Execution::Inline => Ok(work()),
        Execution::Worker => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| format!("worker thread: {e}")),
    }
}

/// What the work needs from its agent.
pub struct Context {
    pub devices: Arc<dyn DeviceSet>,
    pub store: Option<Arc<dyn StoreLink>>,
    pub token: Token,
    pub execution: Execution,
}

impl Context {
    /// The data store for `task`'s work; a request that cannot get through
    /// marks the task's failure as one that may pass.
    fn remote_store(&self, task: &Task) -> Result<RemoteStore, String> {
        let link = self
            .store
            .clone()
            .ok_or("this agent was given no data store (vm-data/abd-store)")?;
        let link = Arc::new(NoticedLink {
            inner: link,
            unreachable: task.store_unreachable_flag(),
        });
        Ok(RemoteStore::new(link, self.token.clone()))
    }
}

/// A store link whose flag says whether the last request could not get
/// through (a retry that did clears it).
struct NoticedLink {
    inner: Arc<dyn StoreLink>,
    unreachable: Arc<AtomicBool>,
}

impl StoreLink for NoticedLink {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn send(
        &self,
        request: axum::http::Request<Vec<u8>>,
    ) -> Result<axum::http::Response<Vec<u8>>, String> {
        let sent = self.inner.send(request);
        self.unreachable.store(sent.is_err(), Ordering::SeqCst);
        sent
    }

    fn pause(&self, pause: std::time::Duration) {
        self.inner.pause(pause)
    }
}

/// A disk that stops at the next read or write once its task is cancelled.
struct Cancellable<D> {
    inner: D,
    cancelled: Arc<AtomicBool>,
}

impl<D> Cancellable<D> {
    fn check(&self) -> io::Result<()> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "task cancelled"));
        }
        Ok(())
    }
}

impl DiskSource for Cancellable<Box<dyn DiskSource>> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check()?;
        self.inner.read_at(offset, buf)
    }
}

impl DiskTarget for Cancellable<Box<dyn DiskTarget + Send>> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write_at(offset, data)
    }
    fn zeroed(&self) -> bool {
        self.inner.zeroed()
    }
}

fn device_error(device: u32, e: impl std::fmt::Display) -> String {
    format!("disk {device}: {e}")
}

/// Backs up (or only reads) the disks of `request`.
pub async fn backup(
    ctx: &Context,
    task: &Task,
    request: BackupRequest,
) -> Result<TaskResult, String> {
    let mut sources = Vec::new();
    for disk in &request.disks {
        let source = ctx
            .devices
            .open_read(disk.device)
            .map_err(|e| device_error(disk.device, e))?;
        task.set_disk_size(sources.len(), source.size_bytes());
        sources.push(source);
    }
    let Some(into) = request.into_store else {
        let mut bytes_read = 0;
        for (i, disk) in request.disks.iter().enumerate() {
            task.check_cancelled()?;
            let on_bytes = |done| task.set_disk_done(i, done);
            bytes_read += ctx
                .devices
                .read_through(disk.device, &on_bytes)
                .await
                .map_err(|e| device_error(disk.device, format!("read failed: {e}")))?;
        }
        return Ok(TaskResult::Read { bytes_read });
    };
    let remote = ctx.remote_store(task)?;
    let vm = into.vm.clone();
    let (mut remote, config, previous) = execute(ctx.execution, move || {
        let config = remote.config()?;
        let previous = into
            .previous
            .map(|seq| remote.manifest(&vm, seq))
            .transpose()?;
        Ok::<_, ads::AdsError>((remote, config, previous))
    })
    .await?
    .map_err(|e| e.to_string())?;
    let mut disks = Vec::new();
    for ((i, disk), source) in request.disks.iter().enumerate().zip(sources) {
        task.check_cancelled()?;
        let size = source.size_bytes();
        let changed_segments = match &disk.changed_blocks {
            Some(bitmap) => {
                let blocks = size.div_ceil(ads::chunking::CBT_BLOCK_BYTES) as usize;
                let blocks = protocol::decode_blocks(bitmap, blocks)
                    .map_err(|e| device_error(disk.device, e))?;
                Some(ads::backup::changed_segments_from_blocks(
                    &config.chunking,
                    size,
                    &blocks,
                ))
            }
            None => None,
        };
        let previous_disk = previous.as_ref().and_then(|p| p.disks.get(i).cloned());
        let mut source = Cancellable {
            inner: source,
            cancelled: task.cancel_flag(),
        };
        let (label, config) = (format!("disk {}", disk.device), config.clone());
        let report = (ctx.execution == Execution::Worker).then(|| task.progress_reporter(i));
        let (back, outcome) = execute(ctx.execution, move || {
            let plan = ads::DiskPlan {
                label,
                chunking: config.chunking,
                compression: config.compression,
                previous: previous_disk.as_ref(),
                changed_segments: changed_segments.as_deref(),
            };
            let mut progress = |done: u64, _total: u64| {
                if let Some(report) = &report {
                    report(done)
                }
            };
            let outcome = ads::backup_disk(&plan, &mut source, &mut remote, &mut progress);
            (remote, outcome)
        })
        .await?;
        remote = back;
        let (manifest, read) = outcome.map_err(|e| device_error(disk.device, e))?;
        let on_bytes = |done| task.set_disk_done(i, done);
        ctx.devices
            .pace(disk.device, read.bytes_read, &on_bytes)
            .await
            .map_err(|e| device_error(disk.device, format!("read failed: {e}")))?;
        disks.push(BackedUpDisk {
            device: disk.device,
            manifest,
            read,
        });
    }
    Ok(TaskResult::Backup {
        disks,
        stored: remote.stats(),
        store_retries: remote.retries(),
    })
}

/// Restores a version onto the disks of `request`.
pub async fn restore(
    ctx: &Context,
    task: &Task,
    request: RestoreRequest,
) -> Result<TaskResult, String> {
    let remote = ctx.remote_store(task)?;
    let (vm, version, base) = (request.vm.clone(), request.version, request.base);
    let (remote, manifest, base) = execute(ctx.execution, move || {
        let manifest = remote.manifest(&vm, version)?;
        let base = base.map(|seq| remote.manifest(&vm, seq)).transpose()?;
        Ok::<_, ads::AdsError>((remote, manifest, base))
    })
    .await?
    .map_err(|e| e.to_string())?;
    if request.devices.len() != manifest.disks.len() {
        return Err(format!(
            "{} disk(s) plugged, version {} of {:?} has {}",
            request.devices.len(),
            manifest.seq,
            manifest.vm,
            manifest.disks.len()
        ));
    }
    let (remote, manifest, base) = (Arc::new(remote), Arc::new(manifest), Arc::new(base));
    let mut targets = Vec::new();
    for (i, device) in request.devices.iter().enumerate() {
        let target = ctx
            .devices
            .open_write(*device)
            .map_err(|e| device_error(*device, e))?;
        task.set_disk_size(i, manifest.disks[i].size_bytes);
        targets.push(target);
    }
    let mut bytes_written = 0;
    for ((i, device), target) in request.devices.iter().enumerate().zip(targets) {
        task.check_cancelled()?;
        let mut target = Cancellable {
            inner: target,
            cancelled: task.cancel_flag(),
        };
        let (remote, manifest, base) = (remote.clone(), manifest.clone(), base.clone());
        let report = (ctx.execution == Execution::Worker).then(|| task.progress_reporter(i));
        let written = execute(ctx.execution, move || {
            let mut progress = |done: u64, _total: u64| {
                if let Some(report) = &report {
                    report(done)
                }
            };
            let base_disk = base.as_ref().as_ref().and_then(|b| b.disks.get(i));
            ads::restore_disk_over(
                remote.as_ref(),
                &manifest,
                i,
                base_disk,
                &mut target,
                &mut progress,
            )
        })
        .await?
        .map_err(|e| device_error(*device, format!("restore failed: {e}")))?;
        let on_bytes = |done| task.set_disk_done(i, done);
        ctx.devices
            .pace(*device, written, &on_bytes)
            .await
            .map_err(|e| device_error(*device, format!("write failed: {e}")))?;
        bytes_written += written;
    }
    Ok(TaskResult::Restore {
        bytes_written,
        store_retries: remote.retries(),
    })
}
