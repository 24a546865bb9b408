//! Caps on delegates booting at once, per host and per pool (no boot storms).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use xapi_proto::OpaqueRef;

/// The boot caps of one pool. Waiters are served in arrival order.
pub struct BootGate {
    pool: Arc<Semaphore>,
    per_host_cap: usize,
    hosts: Mutex<BTreeMap<OpaqueRef, Arc<Semaphore>>>,
}

/// Held while a delegate boots; dropping it lets the next one boot.
pub struct BootPermit {
    _pool: OwnedSemaphorePermit,
    _host: Option<OwnedSemaphorePermit>,
}

/// A pool permit, waiting for its host to be chosen.
pub struct PoolBootSlot {
    permit: OwnedSemaphorePermit,
}

impl BootGate {
    /// Caps: `per_pool` boots in the pool, `per_host` on any one host (both at least 1).
    pub fn new(per_pool: usize, per_host: usize) -> Self {
        BootGate {
            pool: Arc::new(Semaphore::new(per_pool.max(1))),
            per_host_cap: per_host.max(1),
            hosts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Waits for a pool-wide boot slot.
    pub async fn pool_slot(&self) -> PoolBootSlot {
        let permit = self
            .pool
            .clone()
            .acquire_owned()
            .await
            .expect("boot gate never closes");
        PoolBootSlot { permit }
    }

    fn host_semaphore(&self, host: &OpaqueRef) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().expect("boot gate lock poisoned");
        hosts
            .entry(host.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host_cap)))
            .clone()
    }

    /// Boots in flight on `host` now.
    pub fn booting_on(&self, host: &OpaqueRef) -> usize {
        self.per_host_cap - self.host_semaphore(host).available_permits()
    }

    /// Turns a pool slot into a boot permit on `host`, waiting for the host's cap.
    pub async fn enter(&self, slot: PoolBootSlot, host: &OpaqueRef) -> BootPermit {
        let host_permit = self
            .host_semaphore(host)
            .acquire_owned()
            .await
            .expect("boot gate never closes");
        BootPermit {
            _pool: slot.permit,
            _host: Some(host_permit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_boots_per_host_and_pool() {
        let gate = BootGate::new(2, 1);
        let h1 = OpaqueRef::from("h1");
        let h2 = OpaqueRef::from("h2");
        let a = gate.enter(gate.pool_slot().await, &h1).await;
        assert_eq!(gate.booting_on(&h1), 1);
        let b = gate.enter(gate.pool_slot().await, &h2).await;
        // The pool cap (2) is reached: a third boot waits.
        let third = tokio::time::timeout(std::time::Duration::from_secs(1), gate.pool_slot()).await;
        assert!(third.is_err());
        drop(a);
        let slot = gate.pool_slot().await;
        // Host 2 is at its cap (1): entering it waits until b is done.
        let blocked =
            tokio::time::timeout(std::time::Duration::from_secs(1), gate.enter(slot, &h2)).await;
        assert!(blocked.is_err());
        drop(b);
        assert_eq!(gate.booting_on(&h2), 0);
    }
}
