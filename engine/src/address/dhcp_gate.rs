//! What a pool's delegates do when its DHCP range runs out. The engine does
//! not know the range; a delegate that gets no address while others of the
//! pool hold theirs may have found it exhausted (a guest that never came up
//! looks the same). Its retry is then *starved*: it waits for an address to
//! be freed and has it first, since fresh delegates wait while any retry is
//! starved (they would take the freed address and leave the starved VM to
//! fail after its last attempt). Once no retry is starved, delegates go as
//! before: nothing is throttled for longer than a misreading costs.

use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore};

/// The pool's DHCP gate.
pub struct DhcpGate {
    state: Mutex<GateState>,
    /// One permit per address freed while a retry was starved.
    freed: Arc<Semaphore>,
    /// Wakes fresh delegates, in the order they came, once none is starved
    /// (a `Notify`: a watch channel wakes in no set order).
    unstarved: Notify,
}

#[derive(Default)]
struct GateState {
    /// Delegates of the pool holding a DHCP address now.
    addressed: usize,
    /// Retries starved now (fresh delegates wait for 0).
    starved: usize,
}

/// A starved retry's priority: fresh delegates wait while it is held, so
/// hold it until the retry has its address (or has failed).
pub struct Starved<'a> {
    gate: &'a DhcpGate,
}

impl Drop for Starved<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.starved = state.starved.saturating_sub(1);
        if state.starved == 0 {
            self.gate.unstarved.notify_waiters();
        }
    }
}

impl Default for DhcpGate {
    fn default() -> Self {
        DhcpGate {
            state: Mutex::default(),
            freed: Arc::new(Semaphore::new(0)),
            unstarved: Notify::new(),
        }
    }
}

impl DhcpGate {
    /// A delegate of the pool got its DHCP address.
    pub fn addressed(&self) {
        self.lock().addressed += 1;
    }

    /// A delegate got no address in time. When others of the pool hold
    /// theirs, its retry is starved: this says how many hold one, with the
    /// retry's priority. `None` when nobody holds an address (the server is
    /// silent, or the guest did not come up): an ordinary retry.
    pub fn starve(&self) -> Option<(usize, Starved<'_>)> {
        let mut state = self.lock();
        if state.addressed == 0 {
            return None;
        }
        state.starved += 1;
        Some((state.addressed, Starved { gate: self }))
    }

    /// For a starved retry: waits until an address is freed (at once when
    /// none is held: nothing would free one).
    pub async fn wait_freed(&self) {
        if self.lock().addressed == 0 {
            return;
        }
        if let Ok(permit) = Arc::clone(&self.freed).acquire_owned().await {
            permit.forget();
        }
    }

    /// For a fresh delegate: waits while any retry is starved. True when it
    /// had to wait.
    pub async fn enter(&self) -> bool {
        let mut waited = false;
        loop {
            let unstarved = self.unstarved.notified();
            tokio::pin!(unstarved);
            // Registered before looking, so a wake in between is not lost.
            unstarved.as_mut().enable();
            if !self.has_starved() {
                return waited;
            }
            unstarved.await;
            waited = true;
        }
    }

    /// True while a retry is starved.
    pub fn has_starved(&self) -> bool {
        self.lock().starved > 0
    }

    /// A delegate of the pool is gone; `had_address` when it held a DHCP
    /// address. That address goes to a starved retry; once none is held,
    /// every starved retry goes (nothing else will free one).
    pub fn released(&self, had_address: bool) {
        if !had_address {
            return;
        }
        let mut state = self.lock();
        state.addressed = state.addressed.saturating_sub(1);
        let starved = state.starved;
        if state.addressed == 0 {
            self.freed.add_permits(starved);
        } else if starved > 0 {
            self.freed.add_permits(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().expect("DHCP gate lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn with_nothing_starved_delegates_go_at_once() {
        let gate = DhcpGate::default();
        assert!(!gate.enter().await);
        assert!(gate.starve().is_none(), "nobody holds an address");
        assert!(!gate.has_starved());
    }

    #[tokio::test(start_paused = true)]
    async fn a_starved_retry_gets_the_next_freed_address_before_fresh_delegates() {
        let gate = Arc::new(DhcpGate::default());
        gate.addressed();
        gate.addressed();
        let (holding, priority) = gate.starve().expect("others hold addresses");
        assert_eq!(holding, 2);
        let fresh_went = Arc::new(AtomicBool::new(false));
        let fresh = {
            let (gate, went) = (Arc::clone(&gate), Arc::clone(&fresh_went));
            tokio::spawn(async move {
                assert!(gate.enter().await, "it had to wait");
                went.store(true, Ordering::SeqCst);
            })
        };
        tokio::task::yield_now().await;
        // A delegate without an address frees none.
        gate.released(false);
        gate.released(true);
        gate.wait_freed().await;
        tokio::task::yield_now().await;
        assert!(
            !fresh_went.load(Ordering::SeqCst),
            "fresh delegates wait until the starved retry has its address"
        );
        gate.addressed();
        drop(priority);
        fresh.await.unwrap();
        assert!(fresh_went.load(Ordering::SeqCst));
        assert!(!gate.has_starved());
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_last_address_goes_every_starved_retry_goes() {
        let gate = Arc::new(DhcpGate::default());
        gate.addressed();
        let (_, first) = gate.starve().unwrap();
        let (_, second) = gate.starve().unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.wait_freed().await })
            })
            .collect();
        gate.released(true);
        for w in waiters {
            w.await.unwrap();
        }
        drop((first, second));
        assert!(!gate.has_starved());
    }

    #[tokio::test(start_paused = true)]
    async fn a_starved_retry_does_not_wait_when_no_address_is_held() {
        let gate = DhcpGate::default();
        gate.addressed();
        let (_, starved) = gate.starve().unwrap();
        gate.released(true);
        gate.wait_freed().await;
        // Its attempt failed another way; it is still starved, and waits
        // for nothing, since nobody holds an address.
        gate.wait_freed().await;
        drop(starved);
    }
}
