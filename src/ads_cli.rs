//! `abd ads ...`: the data store on its own, without any pool (restic-like).

use ads::{
    Access, ChunkingParams, Compression, DiskPlan, FileDisk, Store, StoreConfig, VersionDraft,
};
use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// Store commands.
#[derive(Subcommand)]
pub enum AdsCommand {
    /// Creates an empty store in a new or empty directory.
    Init {
        dir: PathBuf,
        /// Chunk compression: none, lz4, zstd (= zstd-1), zstd-N (1-19) or zstd-fast-N (1-7).
        #[arg(long, default_value = "zstd")]
        compression: String,
        /// Average chunk size in KiB (min = avg/4, max = avg*4).
        #[arg(long, default_value_t = 64)]
        chunk_avg_kib: u32,
    },
    /// Backs up a raw disk image, incremental against the VM's last version.
    Backup {
        dir: PathBuf,
        image: PathBuf,
        /// The VM the image belongs to: its versions are kept under this name
        /// (a pool VM's uuid, or any name that is the VM's alone).
        #[arg(long)]
        vm: String,
        /// Print the numbers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the versions in the store.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restores a version's disk to a new raw image file, verified.
    Restore {
        dir: PathBuf,
        /// The VM: its id in the store (a pool VM's uuid), or a name only one
        /// VM in the store has.
        #[arg(long)]
        vm: String,
        /// Version number (default: the newest).
        #[arg(long)]
        version: Option<u64>,
        /// Which disk of the version, from 1.
        #[arg(long, default_value_t = 1)]
        disk: usize,
        /// The file to create (must not exist).
        out: PathBuf,
    },
    /// Re-hashes every chunk and checks every version's references.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Set corrupt chunks aside: never read again, they count as missing,
        /// so the next backup that holds their bytes stores them again.
        #[arg(long)]
        set_aside: bool,
    },
    /// Keeps the newest N versions of each VM and reclaims unreferenced chunks.
    Gc {
        dir: PathBuf,
        #[arg(long)]
        keep: usize,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a store command; `Ok(false)` means it ran and found problems.
pub fn run(command: AdsCommand) -> anyhow::Result<bool> {
    match command {
        AdsCommand::Init {
            dir,
            compression,
            chunk_avg_kib,
        } => init(&dir, &compression, chunk_avg_kib),
        AdsCommand::Backup {
            dir,
            image,
            vm,
            json,
        } => backup(&dir, &image, &vm, json),
        AdsCommand::List { dir, json } => list(&dir, json),
        AdsCommand::Restore {
            dir,
            vm,
            version,
            disk,
            out,
        } => restore(&dir, &vm, version, disk, &out),
        AdsCommand::Verify {
            dir,
            json,
            set_aside,
        } => verify(&dir, json, set_aside),
        AdsCommand::Gc { dir, keep, json } => gc(&dir, keep, json),
    }
}

fn init(dir: &Path, compression: &str, chunk_avg_kib: u32) -> anyhow::Result<bool> {
    let compression = Compression::parse(compression).with_context(|| {
        format!("unknown compression {compression:?}: use none, lz4, zstd or zstd-1..19")
    })?;
    let config = StoreConfig {
        compression,
        chunking: ChunkingParams::with_avg(chunk_avg_kib.saturating_mul(1024)),
        ..StoreConfig::default()
    };
    Store::init(dir, config)?;
    println!("created data store {}", dir.display());
    Ok(true)
}

/// What `abd ads backup --json` prints.
#[derive(Serialize)]
struct BackupReport {
    vm: String,
    version: u64,
    parent: Option<u64>,
    size_bytes: u64,
    bytes_read: u64,
    bytes_sent: u64,
    bytes_stored: u64,
    chunks_new: u64,
    chunks_total: u64,
    dedup_ratio: f64,
    disk_digest: String,
    seconds: f64,
}

fn backup(dir: &Path, image: &Path, vm: &str, json: bool) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut store = Store::open(dir, Access::Write)?;
    store.set_keep_free(Some(ads::DEFAULT_KEEP_FREE_BYTES));
    let mut source =
        FileDisk::open(image).with_context(|| format!("cannot read image {}", image.display()))?;
    let previous = store.latest(vm)?;
    let label = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = store.config().clone();
    let plan = DiskPlan {
        label,
        chunking: config.chunking,
        compression: config.compression,
        previous: previous.as_ref().and_then(|p| p.disks.first()),
        changed_segments: None,
    };
    let bar = progress_bar(ads::DiskSource::size_bytes(&source), "backup");
    let mut txn = store.begin()?;
    let (disk, read) = ads::backup_disk(&plan, &mut source, &mut txn, &mut |done, _| {
        bar.set_position(done)
    })?;
    bar.finish_and_clear();
    let (manifest, stored) = txn.commit(VersionDraft {
        vm: vm.to_string(),
        name: vm.to_string(),
        taken_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        parent_seq: previous.as_ref().map(|p| p.seq),
        vm_record: serde_json::json!({ "source_image": image.display().to_string() }),
        disks: vec![disk],
    })?;
    let report = BackupReport {
        vm: vm.to_string(),
        version: manifest.seq,
        parent: manifest.parent_seq,
        size_bytes: manifest.size_bytes(),
        bytes_read: read.bytes_read,
        bytes_sent: read.bytes_sent,
        bytes_stored: stored.bytes_stored,
        chunks_new: stored.chunks_new,
        chunks_total: read.chunks_total,
        dedup_ratio: ratio(read.bytes_read, read.bytes_sent),
        disk_digest: manifest.disks[0].digest.to_hex(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "VM {:?} version {}{}: read {}, sent {}, stored {} ({} new of {} chunks, {:.1}x) in {:.2} s",
            report.vm,
            report.version,
            report
                .parent
                .map(|p| format!(" (incremental on {p})"))
                .unwrap_or_default(),
            bytes(report.bytes_read),
            bytes(report.bytes_sent),
            bytes(report.bytes_stored),
            report.chunks_new,
            report.chunks_total,
            report.dedup_ratio,
            report.seconds
        );
    }
    Ok(true)
}

fn list(dir: &Path, json: bool) -> anyhow::Result<bool> {
    let store = Store::open(dir, Access::Read)?;
    let manifests = store.all_manifests()?;
    if json {
        let rows: Vec<_> = manifests
            .iter()
            .map(|m| {
                serde_json::json!({
                    "vm": m.vm, "name": m.vm_name(), "version": m.seq, "taken_at": m.taken_at, "parent": m.parent_seq,
                    "disks": m.disks.len(), "size_bytes": m.size_bytes(),
                    "chunks": m.chunk_refs().count(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    if manifests.is_empty() {
        println!("no versions in {}", dir.display());
    }
    // A VM backed up from a pool is kept under its uuid: show it beside the name.
    let ids = manifests.iter().any(|m| m.vm != m.vm_name());
    let id = |m: &ads::Manifest| match ids {
        true => format!(" {:<36}", m.vm),
        false => String::new(),
    };
    println!(
        "{:<24}{} {:>7} {:<22} {:>7} {:>10} {:>8}",
        "VM",
        if ids {
            format!(" {:<36}", "ID")
        } else {
            String::new()
        },
        "VERSION",
        "TAKEN",
        "PARENT",
        "SIZE",
        "CHUNKS"
    );
    for m in &manifests {
        println!(
            "{:<24}{} {:>7} {:<22} {:>7} {:>10} {:>8}",
            m.vm_name(),
            id(m),
            m.seq,
            m.taken_at,
            m.parent_seq.map(|p| p.to_string()).unwrap_or("-".into()),
            bytes(m.size_bytes()),
            m.chunk_refs().count()
        );
    }
    Ok(true)
}

fn restore(
    dir: &Path,
    vm: &str,
    version: Option<u64>,
    disk: usize,
    out: &Path,
) -> anyhow::Result<bool> {
    let store = Store::open(dir, Access::Read)?;
    let id = store.resolve_vm(vm)?;
    let manifest = match version {
        Some(seq) => store.manifest(&id, seq)?,
        None => store
            .latest(&id)?
            .ok_or_else(|| ads::AdsError::NoSuchVm { vm: vm.to_string() })?,
    };
    if disk == 0 || disk > manifest.disks.len() {
        bail!(
            "VM {vm:?} version {} has {} disk(s); --disk {disk} does not exist",
            manifest.seq,
            manifest.disks.len()
        );
    }
    let size = manifest.disks[disk - 1].size_bytes;
    let mut target =
        FileDisk::create(out, size).with_context(|| format!("cannot create {}", out.display()))?;
    let bar = progress_bar(size, "restore");
    let result = ads::restore_disk(&store, &manifest, disk - 1, &mut target, &mut |done, _| {
        bar.set_position(done)
    });
    bar.finish_and_clear();
    if let Err(e) = result.and_then(|n| target.sync().map(|()| n).map_err(ads::AdsError::Source)) {
        let _ = std::fs::remove_file(out);
        return Err(e).context(format!(
            "restore of VM {vm:?} version {} failed; {} removed",
            manifest.seq,
            out.display()
        ));
    }
    println!(
        "restored VM {:?} version {} disk {disk} to {}: {}, digest {} verified",
        vm,
        manifest.seq,
        out.display(),
        bytes(size),
        manifest.disks[disk - 1].digest.short()
    );
    Ok(true)
}

fn verify(dir: &Path, json: bool, set_aside: bool) -> anyhow::Result<bool> {
    let access = if set_aside {
        Access::Write
    } else {
        Access::Read
    };
    let mut store = Store::open(dir, access)?;
    let plan = ads::verify::VerifyPlan::take(&store)?;
    let bar = progress_bar(plan.stored_bytes(), "verifying");
    let report = plan.rehash(&|bytes| bar.inc(bytes)).finish(&store);
    bar.finish_and_clear();
    let set_aside = if set_aside {
        ads::verify::set_aside_corrupt(&mut store, &report)?
    } else {
        0
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked {} packs, {} chunks ({}), {} versions; {} unreferenced chunks",
            report.packs,
            report.chunks,
            bytes(report.bytes_checked),
            report.versions,
            report.unreferenced_chunks
        );
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
        if set_aside > 0 {
            println!(
                "set aside {set_aside} corrupt chunk(s): the next backup that holds their bytes stores them again"
            );
        }
        if report.is_clean() {
            println!("store is clean");
        }
    }
    Ok(report.is_clean())
}

fn gc(dir: &Path, keep: usize, json: bool) -> anyhow::Result<bool> {
    let mut store = Store::open(dir, Access::Write)?;
    let report = ads::gc::gc(&mut store, keep)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "removed {} version(s){}; deleted {} pack(s), rewrote {}, {} chunks, freed {}",
            report.versions_removed.len(),
            match report.versions_removed.as_slice() {
                [] => String::new(),
                list => format!(" ({})", list.join(", ")),
            },
            report.packs_deleted,
            report.packs_rewritten,
            report.chunks_removed,
            bytes(report.bytes_freed)
        );
    }
    Ok(true)
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn ratio(read: u64, sent: u64) -> f64 {
    if sent == 0 {
        read as f64
    } else {
        read as f64 / sent as f64
    }
}

/// Bytes with a binary unit, for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
