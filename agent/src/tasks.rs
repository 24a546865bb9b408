//! An agent's long-running tasks: their status (watched by long polls), and
//! cancellation.

use crate::protocol::{DiskStatus, TaskResult, TaskState, TaskStatus};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Finished tasks kept for their status to be read.
const KEEP_FINISHED: usize = 32;

/// One task.
pub struct Task {
    status: watch::Sender<TaskStatus>,
    cancelled: Arc<AtomicBool>,
    cancel_signal: tokio::sync::Notify,
    /// Set when a request to the data store could not get through.
    store_unreachable: Arc<AtomicBool>,
}

impl Task {
    fn new(id: u64, devices: &[u32]) -> Self {
        let status = TaskStatus {
            task: id,
            state: TaskState::Running,
            revision: 0,
            disks: devices
                .iter()
                .map(|&device| DiskStatus {
                    device,
                    size_bytes: 0,
                    done_bytes: 0,
                })
                .collect(),
            result: None,
            error: None,
            retryable: false,
        };
        Self {
            status: watch::channel(status).0,
            cancelled: Arc::new(AtomicBool::new(false)),
            cancel_signal: tokio::sync::Notify::new(),
            store_unreachable: Arc::new(AtomicBool::new(false)),
        }
    }

    fn update(&self, change: impl FnOnce(&mut TaskStatus)) {
        self.status.send_modify(|s| {
            change(s);
            s.revision += 1;
        });
    }

    /// The current status.
    pub fn status(&self) -> TaskStatus {
        self.status.borrow().clone()
    }

    /// Waits until the revision is above `after` (or the task is no longer
    /// running), up to `wait`; returns the status then.
    pub async fn wait_past(&self, after: u64, wait: std::time::Duration) -> TaskStatus {
        let mut watcher = self.status.subscribe();
        let _ = tokio::time::timeout(
            wait,
            watcher.wait_for(|s| s.revision > after || s.state != TaskState::Running),
        )
        .await;
        self.status()
    }

    pub(crate) fn set_disk_size(&self, disk: usize, size_bytes: u64) {
        self.update(|s| {
            if let Some(d) = s.disks.get_mut(disk) {
                d.size_bytes = size_bytes;
            }
        });
    }

    pub(crate) fn set_disk_done(&self, disk: usize, done_bytes: u64) {
        self.update(|s| {
            if let Some(d) = s.disks.get_mut(disk) {
                d.done_bytes = done_bytes;
            }
        });
    }

    /// A progress callback for worker threads.
    pub(crate) fn progress_reporter(&self, disk: usize) -> impl Fn(u64) + Send + 'static {
        let status = self.status.clone();
        move |done| {
            status.send_modify(|s| {
                if let Some(d) = s.disks.get_mut(disk) {
                    d.done_bytes = done;
                }
                s.revision += 1;
            })
        }
    }

    pub(crate) fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancelled)
    }

    pub(crate) fn check_cancelled(&self) -> Result<(), String> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err("task cancelled".into());
        }
        Ok(())
    }

    /// Asks the task to stop: at its next read or write, or at once while it
    /// waits.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_signal.notify_waiters();
    }

    /// Runs `work` until it ends or the task is cancelled.
    pub(crate) async fn unless_cancelled<T>(
        &self,
        work: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let signalled = self.cancel_signal.notified();
        self.check_cancelled()?;
        tokio::select! {
            biased;
            outcome = work => outcome,
            () = signalled => Err("task cancelled".into()),
        }
    }

    /// The flag the task's store link raises when the store cannot be reached.
    pub(crate) fn store_unreachable_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.store_unreachable)
    }

    /// True while the task runs.
    pub fn is_running(&self) -> bool {
        self.status.borrow().state == TaskState::Running
    }

    pub(crate) fn finish(&self, outcome: Result<TaskResult, String>) {
        let cancelled = self.cancelled.load(Ordering::SeqCst);
        self.update(|s| match outcome {
            Ok(result) => {
                s.state = TaskState::Succeeded;
                s.result = Some(result);
            }
            Err(error) => {
                s.state = if cancelled {
                    TaskState::Cancelled
                } else {
                    TaskState::Failed
                };
                s.error = Some(error);
                s.retryable = !cancelled && self.store_unreachable.load(Ordering::SeqCst);
            }
        });
    }
}

/// The tasks of one agent, by id.
#[derive(Default)]
pub struct Tasks {
    next: u64,
    by_id: BTreeMap<u64, Arc<Task>>,
    /// Tasks by the idempotency key of the request that started them.
    by_key: BTreeMap<String, u64>,
}

impl Tasks {
    /// A new running task over `devices`.
    pub fn start(&mut self, devices: &[u32]) -> Arc<Task> {
        self.next += 1;
        let task = Arc::new(Task::new(self.next, devices));
        self.by_id.insert(self.next, Arc::clone(&task));
        let finished: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, t)| !t.is_running())
            .map(|(id, _)| *id)
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            self.by_id.remove(id);
        }
        let by_id = &self.by_id;
        self.by_key.retain(|_, id| by_id.contains_key(id));
        task
    }

    /// The task a request with idempotency `key` already started, if any.
    pub fn started_by(&self, key: &str) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// Remembers that `key` started task `id`.
    pub fn note_key(&mut self, key: String, id: u64) {
        self.by_key.insert(key, id);
    }

    /// Task `id`, if known.
    pub fn get(&self, id: u64) -> Option<Arc<Task>> {
        self.by_id.get(&id).cloned()
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.by_id.values().filter(|t| t.is_running()).count()
    }
}

/// Shared handle to an agent's tasks.
pub type SharedTasks = Arc<Mutex<Tasks>>;
