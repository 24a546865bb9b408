//! A background thread that appends blobs to packs and seals them, so that
//! writing and syncing overlap with chunking and compression.

use crate::error::{AdsError, Result};
use crate::pack::{self, PackEntry, PackName, PackWriter};
use crate::store::{Blob, CommitStep};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Batches of blobs in flight between senders and the writer (a bound on memory).
const QUEUE_BATCHES: usize = 4;

/// Packs a writer thread sealed, with the bytes they take on disk.
pub(crate) struct Sealed {
    pub packs: Vec<(PackName, Vec<PackEntry>)>,
    pub bytes_stored: u64,
}

/// Handle to the writer thread of one transaction.
pub(crate) struct PackWriterThread {
    queue: Option<SyncSender<Vec<Blob>>>,
    thread: Option<JoinHandle<Result<Sealed>>>,
}

/// Where and how the writer thread writes.
pub(crate) struct WriterSetup {
    pub packs_dir: PathBuf,
    /// Temporary names are `<tmp_prefix>-<n>.tmp` in `packs_dir`.
    pub tmp_prefix: String,
    pub pack_target_bytes: u64,
    /// Tear the last pack instead of sealing it (crash tests).
    pub tear_last_pack: bool,
}

impl PackWriterThread {
    pub fn start(setup: WriterSetup) -> Self {
        let (queue, blobs) = sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("ads-pack-writer".into())
            .spawn(move || write_packs(setup, blobs))
            .expect("spawn pack writer");
        Self {
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    /// Queues blobs; if the writer failed, returns its error.
    pub fn send(&mut self, blobs: Vec<Blob>) -> Result<()> {
        let queue = self.queue.as_ref().expect("writer open");
        if queue.send(blobs).is_err() {
            // The writer stopped early: its result holds why.
            return Err(self
                .finish()
                .err()
                .unwrap_or_else(|| AdsError::Invalid("pack writer stopped".into())));
        }
        Ok(())
    }

    /// Seals the last pack and returns every sealed pack.
    pub fn finish(&mut self) -> Result<Sealed> {
        self.queue.take();
        match self.thread.take() {
            Some(thread) => thread.join().expect("pack writer panicked"),
            None => Err(AdsError::Invalid("pack writer already finished".into())),
        }
    }
}

impl Drop for PackWriterThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

fn write_packs(setup: WriterSetup, blobs: Receiver<Vec<Blob>>) -> Result<Sealed> {
    let mut sealed = Sealed {
        packs: Vec::new(),
        bytes_stored: 0,
    };
    let mut writer: Option<PackWriter> = None;
    let mut tmp_count = 0;
    let seal = |writer: PackWriter, sealed: &mut Sealed| -> Result<()> {
        let (name, entries) = writer.finish(&setup.packs_dir)?;
        sealed.bytes_stored += pack::pack_path(&setup.packs_dir, &name)
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        sealed.packs.push((name, entries));
        Ok(())
    };
    for batch in blobs {
        for blob in batch {
            if writer.is_none() {
                tmp_count += 1;
                let tmp = setup
                    .packs_dir
                    .join(format!("{}-{tmp_count}.tmp", setup.tmp_prefix));
                writer = Some(PackWriter::create(tmp)?);
            }
            let w = writer.as_mut().expect("writer");
            w.append(blob.id, blob.codec, blob.raw_len, &blob.data)?;
            if w.len_bytes() >= setup.pack_target_bytes {
                seal(writer.take().expect("writer"), &mut sealed)?;
            }
        }
    }
    if let Some(w) = writer {
        if setup.tear_last_pack {
            w.abandon_torn();
            return Err(AdsError::Crashed(CommitStep::PackWrite));
        }
        seal(w, &mut sealed)?;
    }
    Ok(sealed)
}
