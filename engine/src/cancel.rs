//! Stopping work early: the operator cancels a job or one of its VMs, or a
//! job reaches its time limit.
//!
//! Cancellation never drops a step that changes a pool halfway. It interrupts
//! only waits (for a job slot, an address, a boot slot, a backoff, the
//! delegate's address, the agent's work, an unreachable pool) and passes
//! itself on to the XAPI task a step waits for (a clone, a snapshot, a start:
//! `task.cancel`, then the task is followed to its end); the step then fails
//! and, the signal being raised, counts as [`EngineError::Cancelled`]; the
//! ordinary failure path cleans up (detach, snapshot removal, teardown),
//! exactly as for any other failure.

use crate::error::EngineError;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A cancellation signal with its reason. A VM's signal is a child of its
/// job's: cancelling the job cancels every VM, cancelling a VM only that VM.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    parent_reason: Option<Arc<Mutex<Option<String>>>>,
}

impl Cancel {
    /// A signal nobody has raised yet.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// A signal raised with this one, or on its own.
    pub fn child(&self) -> Cancel {
        Cancel {
            token: self.token.child_token(),
            reason: Arc::default(),
            parent_reason: Some(Arc::clone(&self.reason)),
        }
    }

    /// Raises the signal. The first reason given is the one reported.
    pub fn cancel(&self, reason: impl Into<String>) {
        {
            let mut held = self.reason.lock().expect("cancel reason lock poisoned");
            if held.is_none() {
                *held = Some(reason.into());
            }
        }
        self.token.cancel();
    }

    /// True once this signal (or its parent) was raised.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it was raised: its own reason, else its parent's.
    pub fn reason(&self) -> Option<String> {
        if !self.is_cancelled() {
            return None;
        }
        let own = self.reason.lock().expect("cancel reason lock poisoned");
        if own.is_some() {
            return own.clone();
        }
        let parent = self.parent_reason.as_ref()?;
        let reason = parent.lock().expect("cancel reason lock poisoned").clone();
        reason.or_else(|| Some("cancelled".into()))
    }

    /// `Err(Cancelled)` once raised: a check between steps.
    pub fn check(&self) -> Result<(), EngineError> {
        match self.reason() {
            Some(reason) => Err(EngineError::Cancelled(reason)),
            None => Ok(()),
        }
    }

    /// Waits for `fut` unless the signal is raised first (then `fut` is dropped:
    /// only pass futures that are safe to drop, i.e. waits).
    pub async fn wait<T>(&self, fut: impl Future<Output = T>) -> Result<T, EngineError> {
        self.check()?;
        tokio::select! {
            biased;
            _ = self.token.cancelled() => Err(self.check().expect_err("raised")),
            value = fut => Ok(value),
        }
    }

    /// [`Cancel::wait`] for a fallible wait.
    pub async fn guard<T>(
        &self,
        fut: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        self.wait(fut).await?
    }

    /// The underlying token (raised with this signal), for code below the
    /// engine that can only stop waiting, such as the XAPI client.
    pub fn token(&self) -> tokio_util::sync::CancellationToken {
        self.token.clone()
    }

    /// Resolves once the signal is raised.
    pub async fn raised(&self) {
        self.token.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_job_cancel_reaches_its_vms_with_the_job_reason() {
        let job = Cancel::new();
        let (a, b) = (job.child(), job.child());
        a.cancel("operator cancelled vm-01");
        assert!(a.is_cancelled() && !b.is_cancelled() && !job.is_cancelled());
        job.cancel("time limit reached");
        job.cancel("a later reason is ignored");
        assert_eq!(b.reason().as_deref(), Some("time limit reached"));
        assert_eq!(a.reason().as_deref(), Some("operator cancelled vm-01"));
        assert!(matches!(job.check(), Err(EngineError::Cancelled(r)) if r == "time limit reached"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_cancelled_and_not_before() {
        let c = Cancel::new();
        let raiser = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            raiser.cancel("stop");
        });
        let started = tokio::time::Instant::now();
        let waited = c.wait(tokio::time::sleep(Duration::from_secs(60))).await;
        assert!(matches!(waited, Err(EngineError::Cancelled(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let quick = Cancel::new().wait(async { 7 }).await;
        assert_eq!(quick.ok(), Some(7));
    }
}
