//! The job journal: what the engine started, what each VM came to, the job
//! log lines, and the snapshots it was about to take, written as they happen
//! so that an engine that dies mid-job leaves a record the next one reads.
//!
//! On start the engine closes every run that began but never ended as
//! *interrupted* (never left "in progress"), removes the snapshots those runs
//! were taking, and can resume each run with the VMs it had not finished.
//! A journal is a file of JSON lines (state records are synced before the
//! step they announce) or, for simulations, memory that outlives the engine.

use crate::config::JobSpec;
use crate::job::VmOutcome;
use crate::joblog::{JobLog, JobStatus, LogLine};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One record of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum JournalRecord {
    /// A job run began (run numbers count per job name from 1). A run that
    /// `resumes` an interrupted one closes it: it carries its log and results.
    RunStarted {
        job: String,
        run: u64,
        spec: JobSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumes: Option<u64>,
    },
    /// The operator cancelled the run (`vm: None`) or one VM of it, or the
    /// run reached its time limit: a resumed run does not do that work.
    Cancelled {
        job: String,
        run: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
        reason: String,
    },
    /// A VM's turn began (it may take snapshots and delegates from here on).
    VmStarted { job: String, run: u64, vm: String },
    /// The engine is about to snapshot `vm` under this unique name.
    Snapshotting {
        job: String,
        run: u64,
        vm: String,
        snapshot_name: String,
    },
    /// A VM's turn ended.
    VmFinished {
        job: String,
        run: u64,
        outcome: VmOutcome,
    },
    /// A line of the job's log.
    Line {
        job: String,
        run: u64,
        line: LogLine,
    },
    /// The run ended with this status.
    RunFinished {
        job: String,
        run: u64,
        status: JobStatus,
    },
    /// A later engine found the run unfinished and closed it without resuming it.
    RunInterrupted { job: String, run: u64 },
    /// Older finished runs were dropped when the journal was compacted: the
    /// highest run number each job had, and the engine time of the last log
    /// line then, so run numbers and engine time still only go up.
    Compacted {
        runs: BTreeMap<String, u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_line_ms: Option<u64>,
    },
}

/// Finished runs a compacted journal keeps per job (the newest), with their logs.
pub const FINISHED_RUNS_KEPT: usize = 10;

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} is in use by another engine process")]
    Locked { path: PathBuf },
    #[error("journal {path}: line {line}: not a journal record: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

/// A run that began and never ended: what the next engine needs to close
/// and resume it.
#[derive(Clone, Debug)]
pub struct InterruptedRun {
    pub spec: JobSpec,
    pub run: u64,
    /// VMs whose turn ended, with how.
    pub done: Vec<VmOutcome>,
    /// VMs whose turn began but did not end.
    pub in_progress: BTreeSet<String>,
    /// Snapshot names announced by VMs that did not end (some may exist):
    /// (VM, snapshot name), one per snapshot taken, so also how many each took.
    pub snapshots: Vec<(String, String)>,
    /// The run's log as far as it got.
    pub log: JobLog,
    /// Why the whole run was cancelled, if it was.
    pub cancelled: Option<String>,
    /// VMs cancelled one by one, with why.
    pub cancelled_vms: BTreeMap<String, String>,
}

impl InterruptedRun {
    /// The VMs still to do, in the job's order.
    pub fn remaining(&self) -> Vec<String> {
        let done: BTreeSet<&str> = self.done.iter().map(|o| o.vm.as_str()).collect();
        self.spec
            .vms
            .iter()
            .filter(|vm| !done.contains(vm.as_str()))
            .cloned()
            .collect()
    }
}

/// The journal. Cheap to share; appends are ordered by one lock.
pub struct Journal {
    inner: Mutex<Inner>,
}

struct Inner {
    records: Vec<JournalRecord>,
    file: Option<JournalFile>,
}

/// The file behind a journal, and how much of it holds whole records. The
/// lock file beside it (`<journal>.lock`) is locked for this process: the
/// journal itself is replaced when it is compacted.
struct JournalFile {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    _lock: std::fs::File,
}

impl Journal {
    /// A journal kept in memory (simulations: it outlives the engine that writes it).
    pub fn in_memory() -> Arc<Journal> {
        Arc::new(Journal {
            inner: Mutex::new(Inner {
                records: Vec::new(),
                file: None,
            }),
        })
    }

    /// Opens (or creates) a journal file, locks it for this process, and
    /// reads what it holds. A last line cut short (the engine died writing
    /// it) is dropped; any other line that is not a record is an error naming
    /// the line, and the file is left as it is. Finished runs beyond the
    /// newest [`FINISHED_RUNS_KEPT`] of each job are compacted away: the
    /// shorter journal is written beside the old one and renamed over it, so
    /// a crash leaves one or the other, whole.
    pub fn open(path: &Path) -> Result<Arc<Journal>, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let lock = lock_beside(path)?;
        let mut file = open_journal(path).map_err(io)?;
        let (records, len) = read_records(path, &mut file)?;
        let (records, len) = match compacted(&records) {
            None => {
                use std::io::Seek;
                // Drop a torn tail so the next record starts on a line of its own.
                file.set_len(len).map_err(io)?;
                file.seek(std::io::SeekFrom::Start(len)).map_err(io)?;
                (records, len)
            }
            Some(kept) => {
                let len = replace_with(path, &kept).map_err(io)?;
                file = open_journal(path).map_err(io)?;
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(len)).map_err(io)?;
                (kept, len)
            }
        };
        Ok(Arc::new(Journal {
            inner: Mutex::new(Inner {
                records,
                file: Some(JournalFile {
                    path: path.to_path_buf(),
                    file,
                    len,
                    _lock: lock,
                }),
            }),
        }))
    }

    /// Appends a record. State records reach the disk before this returns
    /// (log lines are written but not synced one by one). A write that fails
    /// halfway is cut off again, so the file holds only whole records.
    pub fn append(&self, record: JournalRecord) -> Result<(), JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        if let Some(f) = &mut inner.file {
            let mut text = serde_json::to_string(&record).expect("records serialise");
            text.push('\n');
            let io = |source| JournalError::Io {
                path: f.path.clone(),
                source,
            };
            let written = f.file.write_all(text.as_bytes()).and_then(|()| {
                match matches!(record, JournalRecord::Line { .. }) {
                    true => Ok(()),
                    false => f.file.sync_data(),
                }
            });
            if let Err(e) = written {
                use std::io::Seek;
                let _ = f.file.set_len(f.len);
                let _ = f.file.seek(std::io::SeekFrom::Start(f.len));
                return Err(io(e));
            }
            f.len += text.len() as u64;
        }
        inner.records.push(record);
        Ok(())
    }

    /// The next run number of `job`.
    pub fn next_run(&self, job: &str) -> u64 {
        let inner = self.inner.lock().expect("journal lock poisoned");
        inner
            .records
            .iter()
            .filter_map(|r| match r {
                JournalRecord::RunStarted { job: j, run, .. } if j == job => Some(*run),
                JournalRecord::Compacted { runs, .. } => runs.get(job).copied(),
                _ => None,
            })
            .max()
            .unwrap_or(0)
            + 1
    }

    /// Engine time of the last log line recorded, in milliseconds.
    pub fn last_line_ms(&self) -> Option<u64> {
        let inner = self.inner.lock().expect("journal lock poisoned");
        last_line_ms(&inner.records)
    }

    /// Every run that began and was neither finished nor closed, oldest first.
    pub fn unfinished_runs(&self) -> Vec<InterruptedRun> {
        let inner = self.inner.lock().expect("journal lock poisoned");
        let mut runs: BTreeMap<(String, u64), InterruptedRun> = BTreeMap::new();
        let mut order = Vec::new();
        for record in &inner.records {
            match record {
                JournalRecord::RunStarted {
                    job,
                    run,
                    spec,
                    resumes,
                } => {
                    if let Some(earlier) = resumes {
                        runs.remove(&(job.clone(), *earlier));
                    }
                    order.push((job.clone(), *run));
                    runs.insert(
                        (job.clone(), *run),
                        InterruptedRun {
                            spec: spec.clone(),
                            run: *run,
                            done: Vec::new(),
                            in_progress: BTreeSet::new(),
                            snapshots: Vec::new(),
                            log: JobLog::default(),
                            cancelled: None,
                            cancelled_vms: BTreeMap::new(),
                        },
                    );
                }
                JournalRecord::Cancelled {
                    job,
                    run,
                    vm,
                    reason,
                } => {
                    if let Some(r) = runs.get_mut(&(job.clone(), *run)) {
                        match vm {
                            None => {
                                r.cancelled.get_or_insert_with(|| reason.clone());
                            }
                            Some(vm) => {
                                r.cancelled_vms
                                    .entry(vm.clone())
                                    .or_insert_with(|| reason.clone());
                            }
                        }
                    }
                }
                JournalRecord::VmStarted { job, run, vm } => {
                    if let Some(r) = runs.get_mut(&(job.clone(), *run)) {
                        r.in_progress.insert(vm.clone());
                    }
                }
                JournalRecord::Snapshotting {
                    job,
                    run,
                    vm,
                    snapshot_name,
                } => {
                    if let Some(r) = runs.get_mut(&(job.clone(), *run)) {
                        r.snapshots.push((vm.clone(), snapshot_name.clone()));
                    }
                }
                JournalRecord::VmFinished { job, run, outcome } => {
                    if let Some(r) = runs.get_mut(&(job.clone(), *run)) {
                        r.in_progress.remove(&outcome.vm);
                        r.snapshots.retain(|(vm, _)| vm != &outcome.vm);
                        r.done.push(outcome.clone());
                    }
                }
                JournalRecord::Line { job, run, line } => {
                    if let Some(r) = runs.get_mut(&(job.clone(), *run)) {
                        r.log.lines.push(line.clone());
                    }
                }
                JournalRecord::RunFinished { job, run, .. }
                | JournalRecord::RunInterrupted { job, run } => {
                    runs.remove(&(job.clone(), *run));
                }
                JournalRecord::Compacted { .. } => {}
            }
        }
        order
            .into_iter()
            .filter_map(|key| runs.remove(&key))
            .collect()
    }
}

/// Locks `<path>.lock` for this process: two engines on one journal would
/// close each other's live runs.
fn lock_beside(path: &Path) -> Result<std::fs::File, JournalError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let io = |source| JournalError::Io {
        path: lock_path.clone(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

fn open_journal(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// The records of a journal file, and how many of its bytes hold them.
fn read_records(
    path: &Path,
    file: &mut std::fs::File,
) -> Result<(Vec<JournalRecord>, u64), JournalError> {
    use std::io::Read;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)
        .map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // Every complete line is a record. Bytes after the last newline are a
    // record the engine died writing: its step never began (a record is on
    // disk before its step starts), so it is dropped.
    let mut records = Vec::new();
    let mut len = 0u64;
    let mut lines: Vec<&[u8]> = raw.split(|b| *b == b'\n').collect();
    lines.pop();
    for (i, line) in lines.iter().enumerate() {
        let record =
            serde_json::from_slice::<JournalRecord>(line).map_err(|e| JournalError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                detail: e.to_string(),
            })?;
        records.push(record);
        len += line.len() as u64 + 1;
    }
    Ok((records, len))
}

/// Writes `records` to `<path>.compact`, syncs it, and renames it over
/// `path` (then syncs the directory); returns the new length.
fn replace_with(path: &Path, records: &[JournalRecord]) -> std::io::Result<u64> {
    let mut name = path.as_os_str().to_owned();
    name.push(".compact");
    let fresh = PathBuf::from(name);
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record).expect("records serialise"));
        text.push('\n');
    }
    let mut file = std::fs::File::create(&fresh)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(text.len() as u64)
}

/// The job and run a record belongs to (None for a compaction record).
fn run_of(record: &JournalRecord) -> Option<(&str, u64)> {
    match record {
        JournalRecord::RunStarted { job, run, .. }
        | JournalRecord::Cancelled { job, run, .. }
        | JournalRecord::VmStarted { job, run, .. }
        | JournalRecord::Snapshotting { job, run, .. }
        | JournalRecord::VmFinished { job, run, .. }
        | JournalRecord::Line { job, run, .. }
        | JournalRecord::RunFinished { job, run, .. }
        | JournalRecord::RunInterrupted { job, run } => Some((job, *run)),
        JournalRecord::Compacted { .. } => None,
    }
}

/// Engine time of the latest log line the records know of.
fn last_line_ms(records: &[JournalRecord]) -> Option<u64> {
    records
        .iter()
        .filter_map(|r| match r {
            JournalRecord::Line { line, .. } => Some(line.at_ms),
            JournalRecord::Compacted { last_line_ms, .. } => *last_line_ms,
            _ => None,
        })
        .max()
}

/// The records without the finished runs older than each job's newest
/// [`FINISHED_RUNS_KEPT`], led by one `Compacted` record; None when there
/// is nothing to drop. Unfinished runs are always kept whole.
fn compacted(records: &[JournalRecord]) -> Option<Vec<JournalRecord>> {
    let mut finished: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        match record {
            JournalRecord::RunFinished { job, run, .. }
            | JournalRecord::RunInterrupted { job, run } => {
                finished.entry(job).or_default().insert(*run);
            }
            // A run that resumes another closes it.
            JournalRecord::RunStarted {
                job,
                resumes: Some(earlier),
                ..
            } => {
                finished.entry(job).or_default().insert(*earlier);
            }
            JournalRecord::Compacted { runs, .. } => {
                for (job, run) in runs {
                    let top = highest.entry(job.clone()).or_default();
                    *top = (*top).max(*run);
                }
            }
            _ => {}
        }
        if let Some((job, run)) = run_of(record) {
            let top = highest.entry(job.to_string()).or_default();
            *top = (*top).max(run);
        }
    }
    let dropped: BTreeSet<(&str, u64)> = finished
        .iter()
        .flat_map(|(job, runs)| {
            let old = runs.len().saturating_sub(FINISHED_RUNS_KEPT);
            runs.iter().take(old).map(move |run| (*job, *run))
        })
        .collect();
    if dropped.is_empty() {
        return None;
    }
    let mut kept = vec![JournalRecord::Compacted {
        runs: highest,
        last_line_ms: last_line_ms(records),
    }];
    kept.extend(
        records
            .iter()
            .filter(|r| run_of(r).is_some_and(|key| !dropped.contains(&key)))
            .cloned(),
    );
    Some(kept)
}

/// Where one job run writes in the journal.
#[derive(Clone)]
pub struct RunJournal {
    pub(crate) journal: Arc<Journal>,
    pub(crate) job: String,
    pub(crate) run: u64,
}

impl RunJournal {
    /// Appends a record; a journal that cannot be written is logged, and the
    /// work goes on (the pool matters more than the record of it).
    pub(crate) fn record(&self, make: impl FnOnce(String, u64) -> JournalRecord) {
        if let Err(e) = self.try_record(make) {
            tracing::error!(job = %self.job, run = self.run, "journal write failed: {e}");
        }
    }

    /// Appends a record that must be on disk before its step may begin.
    pub(crate) fn try_record(
        &self,
        make: impl FnOnce(String, u64) -> JournalRecord,
    ) -> Result<(), JournalError> {
        self.journal.append(make(self.job.clone(), self.run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::VmStatus;

    fn spec(vms: &[&str]) -> JobSpec {
        JobSpec {
            name: "nightly".into(),
            pool: "lab".into(),
            vms: vms.iter().map(|s| s.to_string()).collect(),
            concurrency: 2,
            restore: None,
            replicate: None,
            time_limit_s: None,
        }
    }

    fn outcome(vm: &str) -> VmOutcome {
        VmOutcome {
            vm: vm.into(),
            status: VmStatus::Ok,
            reason: None,
            delegate: Some("ABD 1".into()),
            bytes_read: 1,
            bytes_sent: 0,
            bytes_stored: 0,
            restarts: 0,
            cancelled: false,
        }
    }

    fn write_interrupted_run(journal: &Journal) {
        let (job, run) = ("nightly".to_string(), 1);
        let records = [
            JournalRecord::RunStarted {
                job: job.clone(),
                run,
                spec: spec(&["a", "b", "c"]),
                resumes: None,
            },
            JournalRecord::VmStarted {
                job: job.clone(),
                run,
                vm: "a".into(),
            },
            JournalRecord::VmFinished {
                job: job.clone(),
                run,
                outcome: outcome("a"),
            },
            JournalRecord::VmStarted {
                job: job.clone(),
                run,
                vm: "b".into(),
            },
            JournalRecord::Snapshotting {
                job: job.clone(),
                run,
                vm: "b".into(),
                snapshot_name: "abd nightly b run 1".into(),
            },
        ];
        for r in records {
            journal.append(r).unwrap();
        }
    }

    #[test]
    fn an_unfinished_run_knows_what_was_done_and_what_was_under_way() {
        let journal = Journal::in_memory();
        write_interrupted_run(&journal);
        let runs = journal.unfinished_runs();
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert_eq!(
            r.done.iter().map(|o| o.vm.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(r.remaining(), ["b", "c"]);
        assert!(r.in_progress.contains("b"));
        assert_eq!(r.snapshots, [("b".into(), "abd nightly b run 1".into())]);
        assert_eq!(journal.next_run("nightly"), 2);
        journal
            .append(JournalRecord::RunInterrupted {
                job: "nightly".into(),
                run: 1,
            })
            .unwrap();
        assert!(
            journal.unfinished_runs().is_empty(),
            "closed runs stay closed"
        );
    }

    #[test]
    fn a_resuming_run_closes_the_one_it_resumes_and_cancels_carry_over() {
        let journal = Journal::in_memory();
        write_interrupted_run(&journal);
        let cancel = JournalRecord::Cancelled {
            job: "nightly".into(),
            run: 1,
            vm: Some("c".into()),
            reason: "operator".into(),
        };
        journal.append(cancel).unwrap();
        let earlier = journal.unfinished_runs().remove(0);
        assert_eq!(
            earlier.cancelled_vms.get("c").map(String::as_str),
            Some("operator")
        );
        // The engine died again before the resumed run began: still there.
        assert_eq!(journal.unfinished_runs().len(), 1);
        journal
            .append(JournalRecord::RunStarted {
                job: "nightly".into(),
                run: 2,
                spec: spec(&["a", "b", "c"]),
                resumes: Some(1),
            })
            .unwrap();
        let now = journal.unfinished_runs();
        assert_eq!(now.len(), 1, "only the resuming run is open");
        assert_eq!(now[0].run, 2);
    }

    #[test]
    fn a_file_journal_survives_reopening_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        write_interrupted_run(&Journal::open(&path).unwrap());
        // The engine died while writing its next record.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"record":"vm_fini"#).unwrap();
        drop(f);
        let reopened = Journal::open(&path).unwrap();
        assert_eq!(reopened.unfinished_runs()[0].remaining(), ["b", "c"]);
        reopened
            .append(JournalRecord::RunInterrupted {
                job: "nightly".into(),
                run: 1,
            })
            .unwrap();
        assert!(
            matches!(Journal::open(&path), Err(JournalError::Locked { .. })),
            "a second engine cannot open a journal in use"
        );
        drop(reopened);
        let again = Journal::open(&path).unwrap();
        assert!(again.unfinished_runs().is_empty());
        assert_eq!(again.next_run("nightly"), 2);
    }

    /// A whole run of `job`: started, one VM done, a log line at `at_ms`, finished.
    fn write_finished_run(journal: &Journal, job: &str, run: u64, at_ms: u64) {
        let job = job.to_string();
        let records = [
            JournalRecord::RunStarted {
                job: job.clone(),
                run,
                spec: spec(&["a"]),
                resumes: None,
            },
            JournalRecord::VmFinished {
                job: job.clone(),
                run,
                outcome: outcome("a"),
            },
            JournalRecord::Line {
                job: job.clone(),
                run,
                line: LogLine {
                    at_ms,
                    status: crate::joblog::LineStatus::Ok,
                    vm: None,
                    text: format!("run {run} done"),
                },
            },
            JournalRecord::RunFinished {
                job,
                run,
                status: JobStatus::Success,
            },
        ];
        for r in records {
            journal.append(r).unwrap();
        }
    }

    #[test]
    fn reopening_compacts_old_finished_runs_and_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let journal = Journal::open(&path).unwrap();
            write_interrupted_run(&journal);
            for run in 2..=16 {
                write_finished_run(&journal, "nightly", run, run * 1000);
            }
            // Another job's one run, older than nightly's last.
            write_finished_run(&journal, "weekly", 1, 500);
        }
        let before = std::fs::metadata(&path).unwrap().len();
        let journal = Journal::open(&path).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < before, "{after} bytes of {before}");
        // The interrupted run is whole; numbering and engine time go on.
        let runs = journal.unfinished_runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].remaining(), ["b", "c"]);
        assert_eq!(runs[0].snapshots.len(), 1);
        assert_eq!(journal.next_run("nightly"), 17);
        assert_eq!(journal.next_run("weekly"), 2);
        assert_eq!(journal.last_line_ms(), Some(16_000));
        // The newest finished runs of each job keep their records.
        let kept: BTreeSet<(String, u64)> = {
            let inner = journal.inner.lock().unwrap();
            inner
                .records
                .iter()
                .filter_map(|r| match r {
                    JournalRecord::RunFinished { job, run, .. } => Some((job.clone(), *run)),
                    _ => None,
                })
                .collect()
        };
        let mut expected: BTreeSet<(String, u64)> =
            (7..=16).map(|run| ("nightly".to_string(), run)).collect();
        expected.insert(("weekly".into(), 1));
        assert_eq!(kept, expected);
        // Appends go on after the compacted records, and a reopen reads them all.
        write_finished_run(&journal, "nightly", 17, 17_000);
        drop(journal);
        let again = Journal::open(&path).unwrap();
        assert_eq!(again.next_run("nightly"), 18);
        assert_eq!(again.unfinished_runs().len(), 1);
        assert!(!dir.path().join("journal.jsonl.compact").exists());
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        write_interrupted_run(&Journal::open(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("vm_started", "vm_stxrted", 1);
        std::fs::write(&path, damaged).unwrap();
        match Journal::open(&path) {
            Err(JournalError::Corrupt { line, .. }) => assert_eq!(line, 2),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a damaged journal opened"),
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text.replacen("vm_started", "vm_stxrted", 1),
            "nothing was changed"
        );
    }
}
