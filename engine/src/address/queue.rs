//! A static address plan shared by the jobs of one pool, with a fair FIFO wait.
//!
//! A request that finds no free address (or finds others already waiting) joins the back of
//! the queue; a released address goes straight to the head waiter. Waiters that time out or
//! are cancelled leave the queue, and an address handed to one at that very moment is passed
//! on, never lost. The lock is a plain mutex that is never held across an `.await`.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AddressError, HolderId, StaticAddress, StaticAllocator};

/// A static address plan shared by every job of a pool; cheap to clone (Arc inside).
#[derive(Clone)]
pub struct AddressQueue {
    inner: Arc<Mutex<Inner>>,
}

/// The shared state behind the lock.
#[derive(Debug)]
struct Inner {
    allocator: StaticAllocator,
    /// Requests waiting for an address, oldest first.
    waiters: VecDeque<Waiter>,
    /// Source of waiter tickets, so a giving-up waiter can find its own entry.
    next_ticket: u64,
}

/// One queued request; the address is sent through `sender` already leased to `holder`.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    holder: HolderId,
    sender: oneshot::Sender<StaticAddress>,
}

/// What a request gets on arrival: an address now, or a place in the queue.
enum Admission {
    Leased(StaticAddress),
    Queued {
        ahead: usize,
        ticket: u64,
        receiver: oneshot::Receiver<StaticAddress>,
    },
}

impl AddressQueue {
    /// Shares `allocator` among the pool's jobs; it should have no leases yet.
    pub fn new(allocator: StaticAllocator) -> Self {
        let inner = Inner {
            allocator,
            waiters: VecDeque::new(),
            next_ticket: 0,
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Leases an address for `holder`, waiting in FIFO order up to `wait_limit`.
    /// `on_wait(ahead)` is called once, synchronously, only if the caller has to wait, with how
    /// many requests are ahead of it (so the engine can log "waiting for a free address (2 ahead)").
    ///
    /// Dropping the returned future while it waits removes the request from the queue.
    pub async fn lease(
        &self,
        holder: HolderId,
        wait_limit: Duration,
        on_wait: impl FnOnce(usize),
    ) -> Result<Lease, AddressError> {
        let started = Instant::now();
        let mut pending = match self.admit(holder) {
            Admission::Leased(address) => return Ok(Lease::new(self.clone(), address, holder)),
            Admission::Queued {
                ahead,
                ticket,
                receiver,
            } => {
                let pending = PendingWait {
                    queue: self,
                    ticket,
                    holder,
                    receiver,
                    answered: false,
                };
                // Called with the lock released, so it may look at the queue.
                on_wait(ahead);
                pending
            }
        };
        match tokio::time::timeout(wait_limit, &mut pending.receiver).await {
            Ok(Ok(address)) => {
                pending.answered = true;
                Ok(Lease::new(self.clone(), address, holder))
            }
            Ok(Err(_closed)) => unreachable!(
                "address queue dropped a waiter without answering it; \
                 waiters leave the queue only with an address or through their own drop"
            ),
            Err(_elapsed) => {
                // Leave the queue first, so an address handed over meanwhile moves on.
                drop(pending);
                Err(self.wait_limit_error(started))
            }
        }
    }

    /// How many addresses the plan has.
    pub fn capacity(&self) -> usize {
        self.lock().allocator.capacity()
    }

    /// How many addresses are free; stays 0 while anyone waits, as releases go to waiters.
    pub fn free_count(&self) -> usize {
        self.lock().allocator.free_count()
    }

    /// How many requests are queued for an address.
    pub fn waiting_count(&self) -> usize {
        self.lock().waiters.len()
    }

    /// How many addresses are leased (including ones handed to a waiter not yet resumed).
    pub fn leased_count(&self) -> usize {
        self.lock().allocator.leased_count()
    }

    /// Snapshot of current leases (ip -> holder), ordered by ip; for checkers and reports.
    pub fn leases(&self) -> Vec<(StaticAddress, HolderId)> {
        self.lock()
            .allocator
            .leases()
            .map(|(address, holder)| (address.clone(), holder))
            .collect()
    }

    /// Leases at once if nobody waits and an address is free; otherwise joins the queue.
    fn admit(&self, holder: HolderId) -> Admission {
        let mut inner = self.lock();
        if inner.waiters.is_empty()
            && let Some(address) = inner.allocator.try_lease(holder)
        {
            return Admission::Leased(address);
        }
        let (sender, receiver) = oneshot::channel();
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        let ahead = inner.waiters.len();
        inner.waiters.push_back(Waiter {
            ticket,
            holder,
            sender,
        });
        inner.check_invariants();
        Admission::Queued {
            ahead,
            ticket,
            receiver,
        }
    }

    /// Removes a giving-up waiter; if an address was already handed to it, passes that on.
    fn abandon_wait(
        &self,
        ticket: u64,
        holder: HolderId,
        receiver: &mut oneshot::Receiver<StaticAddress>,
    ) {
        let Some(mut inner) = self.lock_without_panicking() else {
            return;
        };
        if let Some(position) = inner
            .waiters
            .iter()
            .position(|waiter| waiter.ticket == ticket)
        {
            inner.waiters.remove(position);
            inner.check_invariants();
            return;
        }
        // Not queued any more: it was answered. Hand-overs happen under this lock, so the
        // address (if any) is already in the channel.
        receiver.close();
        if let Ok(address) = receiver.try_recv()
            && let Err(error) = inner.return_address(address.ip, holder)
        {
            tracing::error!(%error, ip = %address.ip, holder, "could not pass on an address handed to a waiter that gave up");
        }
    }

    /// Returns a lease's address to the head waiter or the free list; used by [`Lease`].
    fn give_back(&self, ip: Ipv4Addr, holder: HolderId) {
        let Some(mut inner) = self.lock_without_panicking() else {
            return;
        };
        if let Err(error) = inner.return_address(ip, holder) {
            tracing::error!(%error, %ip, holder, "could not return a leased address");
            debug_assert!(
                std::thread::panicking(),
                "could not return leased address {ip}: {error}"
            );
        }
    }

    fn wait_limit_error(&self, started: Instant) -> AddressError {
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        AddressError::WaitLimit {
            waited_ms,
            capacity: self.capacity(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("address queue lock poisoned")
    }

    /// For drop paths: a panic there (maybe during unwinding) would abort the process,
    /// so a poisoned lock is logged and the address is left as is.
    fn lock_without_panicking(&self) -> Option<MutexGuard<'_, Inner>> {
        match self.inner.lock() {
            Ok(inner) => Some(inner),
            Err(_poisoned) => {
                tracing::error!("address queue lock poisoned; an address is not returned");
                None
            }
        }
    }
}

impl fmt::Debug for AddressQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.try_lock() {
            Ok(inner) => f
                .debug_struct("AddressQueue")
                .field("capacity", &inner.allocator.capacity())
                .field("free", &inner.allocator.free_count())
                .field("waiting", &inner.waiters.len())
                .finish(),
            Err(_) => f.write_str("AddressQueue { <locked> }"),
        }
    }
}

impl Inner {
    /// Hands `ip` (held by `holder`) to the first waiter still listening, else frees it.
    fn return_address(&mut self, ip: Ipv4Addr, holder: HolderId) -> Result<(), AddressError> {
        let mut current_holder = holder;
        while let Some(waiter) = self.waiters.pop_front() {
            let address = match self.allocator.hand_over(ip, current_holder, waiter.holder) {
                Ok(address) => address,
                Err(error) => {
                    // Only the caller's own (ip, holder) can be wrong; keep the waiter's place.
                    self.waiters.push_front(waiter);
                    return Err(error);
                }
            };
            current_holder = waiter.holder;
            if waiter.sender.send(address).is_ok() {
                self.check_invariants();
                return Ok(());
            }
            // That waiter is gone (cannot happen while waiters clean up after themselves,
            // but costs nothing to handle): try the next one.
        }
        self.allocator.release(ip, current_holder)?;
        self.check_invariants();
        Ok(())
    }

    /// Fairness: an address is free only when nobody waits for one.
    fn check_invariants(&self) {
        debug_assert!(
            self.waiters.is_empty() || self.allocator.free_count() == 0,
            "{} requests wait while {} addresses are free",
            self.waiters.len(),
            self.allocator.free_count()
        );
    }
}

/// A queued request; leaves the queue on drop unless it got its address.
struct PendingWait<'a> {
    queue: &'a AddressQueue,
    ticket: u64,
    holder: HolderId,
    receiver: oneshot::Receiver<StaticAddress>,
    answered: bool,
}

impl Drop for PendingWait<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.queue
                .abandon_wait(self.ticket, self.holder, &mut self.receiver);
        }
    }
}

/// A leased address. Returned to the plan by `release()` or, as a safety net, on drop.
#[derive(Debug)]
pub struct Lease {
    queue: AddressQueue,
    address: StaticAddress,
    holder: HolderId,
    returned: bool,
}

impl Lease {
    fn new(queue: AddressQueue, address: StaticAddress, holder: HolderId) -> Self {
        Self {
            queue,
            address,
            holder,
            returned: false,
        }
    }

    /// The address and its network settings, to configure the delegate with.
    pub fn address(&self) -> &StaticAddress {
        &self.address
    }

    /// Who holds this lease.
    pub fn holder(&self) -> HolderId {
        self.holder
    }

    /// Returns the address on teardown; the next waiter (if any) gets it at once.
    pub fn release(mut self) {
        self.return_once();
    }

    /// Idempotent, so `release()` followed by the drop returns the address exactly once.
    fn return_once(&mut self) {
        if !self.returned {
            self.returned = true;
            self.queue.give_back(self.address.ip, self.holder);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.return_once();
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Mutex as StdMutex;
    use std::task::{Context, Waker};

    use tokio::task::{JoinHandle, yield_now};

    use super::*;

    const WAIT_LIMIT: Duration = Duration::from_secs(600);

    fn address(last: u8) -> StaticAddress {
        StaticAddress {
            ip: ip(last),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            gateway: None,
            dns: Vec::new(),
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    /// A queue over `10.0.0.<last>` for each `last`, in that configuration order.
    fn queue(lasts: &[u8]) -> AddressQueue {
        let allocator =
            StaticAllocator::new(lasts.iter().copied().map(address).collect()).expect("valid plan");
        AddressQueue::new(allocator)
    }

    /// Checks counts (and that nothing leaked: free + leased == capacity).
    fn check(queue: &AddressQueue, free: usize, leased: usize, waiting: usize) {
        assert_eq!(
            (
                queue.free_count(),
                queue.leased_count(),
                queue.waiting_count()
            ),
            (free, leased, waiting),
            "(free, leased, waiting)"
        );
        assert_eq!(free + leased, queue.capacity(), "an address leaked");
    }

    async fn lease_now(queue: &AddressQueue, holder: HolderId) -> Lease {
        queue
            .lease(holder, WAIT_LIMIT, |ahead| {
                panic!("holder {holder} should not wait ({ahead} ahead)")
            })
            .await
            .expect("a free address")
    }

    /// Spawns a waiting request and lets it join the queue before returning.
    async fn spawn_waiter(
        queue: &AddressQueue,
        holder: HolderId,
        wait_limit: Duration,
        aheads: &Arc<StdMutex<Vec<(HolderId, usize)>>>,
    ) -> JoinHandle<Result<Lease, AddressError>> {
        let queue = queue.clone();
        let aheads = Arc::clone(aheads);
        let handle = tokio::spawn(async move {
            queue
                .lease(holder, wait_limit, |ahead| {
                    aheads.lock().expect("test lock").push((holder, ahead));
                })
                .await
        });
        yield_now().await;
        handle
    }

    async fn joined(handle: JoinHandle<Result<Lease, AddressError>>) -> Lease {
        handle.await.expect("task ran").expect("got an address")
    }

    #[tokio::test(start_paused = true)]
    async fn leases_until_exhausted_then_queues() {
        let queue = queue(&[10, 11]);
        let first = lease_now(&queue, 1).await;
        let second = lease_now(&queue, 2).await;
        assert_eq!((first.address().ip, first.holder()), (ip(10), 1));
        assert_eq!((second.address().ip, second.holder()), (ip(11), 2));
        check(&queue, 0, 2, 0);
        assert_eq!(queue.leases(), vec![(address(10), 1), (address(11), 2)]);
        let aheads = Arc::default();
        let waiter = spawn_waiter(&queue, 3, WAIT_LIMIT, &aheads).await;
        check(&queue, 0, 2, 1);
        assert!(!waiter.is_finished());
        second.release();
        let third = joined(waiter).await;
        assert_eq!(third.address().ip, ip(11));
        check(&queue, 0, 2, 0);
        drop(first);
        drop(third);
        check(&queue, 2, 0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let queue = queue(&[10, 11]);
        let first = lease_now(&queue, 1).await;
        let second = lease_now(&queue, 2).await;
        let aheads = Arc::default();
        let waiter_a = spawn_waiter(&queue, 10, WAIT_LIMIT, &aheads).await;
        let waiter_b = spawn_waiter(&queue, 11, WAIT_LIMIT, &aheads).await;
        let waiter_c = spawn_waiter(&queue, 12, WAIT_LIMIT, &aheads).await;
        check(&queue, 0, 2, 3);

        second.release();
        let lease_a = joined(waiter_a).await;
        assert_eq!(lease_a.address().ip, ip(11));
        first.release();
        let lease_b = joined(waiter_b).await;
        assert_eq!(lease_b.address().ip, ip(10));
        yield_now().await;
        assert!(!waiter_c.is_finished(), "third waiter must still wait");
        check(&queue, 0, 2, 1);

        lease_a.release();
        let lease_c = joined(waiter_c).await;
        assert_eq!(lease_c.address().ip, ip(11));
        assert_eq!(queue.leases(), vec![(address(10), 11), (address(11), 12)]);
        check(&queue, 0, 2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_wait_reports_requests_ahead() {
        let queue = queue(&[10]);
        let held = lease_now(&queue, 1).await;
        let aheads = Arc::new(StdMutex::new(Vec::new()));
        let waiters = [
            spawn_waiter(&queue, 2, WAIT_LIMIT, &aheads).await,
            spawn_waiter(&queue, 3, WAIT_LIMIT, &aheads).await,
            spawn_waiter(&queue, 4, WAIT_LIMIT, &aheads).await,
        ];
        assert_eq!(
            *aheads.lock().expect("test lock"),
            vec![(2, 0), (3, 1), (4, 2)]
        );
        // The head waiter is answered (not yet resumed); a newcomer still queues behind the others.
        held.release();
        let newcomer = spawn_waiter(&queue, 5, WAIT_LIMIT, &aheads).await;
        assert_eq!(aheads.lock().expect("test lock").last(), Some(&(5, 2)));
        for waiter in waiters {
            joined(waiter).await.release();
        }
        assert_eq!(joined(newcomer).await.holder(), 5);
        check(&queue, 1, 0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_limit_fails_after_exactly_the_limit() {
        let queue = queue(&[10, 11]);
        let _first = lease_now(&queue, 1).await;
        let _second = lease_now(&queue, 2).await;
        let started = Instant::now();
        let error = queue
            .lease(3, WAIT_LIMIT, |_| {})
            .await
            .expect_err("nothing is released");
        assert_eq!(started.elapsed(), WAIT_LIMIT);
        assert_eq!(
            error,
            AddressError::WaitLimit {
                waited_ms: 600_000,
                capacity: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "no free delegate address after 600 s (all 2 static addresses in use)"
        );
        check(&queue, 0, 2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_leaves_the_queue() {
        let queue = queue(&[10]);
        let held = lease_now(&queue, 1).await;
        let aheads = Arc::default();
        let cancelled = spawn_waiter(&queue, 2, WAIT_LIMIT, &aheads).await;
        let patient = spawn_waiter(&queue, 3, WAIT_LIMIT, &aheads).await;
        check(&queue, 0, 1, 2);
        cancelled.abort();
        yield_now().await;
        check(&queue, 0, 1, 1);
        held.release();
        let lease = joined(patient).await;
        assert_eq!(lease.holder(), 3);
        drop(lease);
        check(&queue, 1, 0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn address_handed_to_a_cancelled_waiter_goes_to_the_next() {
        let queue = queue(&[10]);
        let held = lease_now(&queue, 1).await;
        let aheads = Arc::default();
        let cancelled = spawn_waiter(&queue, 2, WAIT_LIMIT, &aheads).await;
        let patient = spawn_waiter(&queue, 3, WAIT_LIMIT, &aheads).await;
        // Handed to holder 2, which is cancelled before it resumes.
        held.release();
        assert_eq!(queue.leases(), vec![(address(10), 2)]);
        cancelled.abort();
        let lease = joined(patient).await;
        assert_eq!(lease.holder(), 3);
        check(&queue, 0, 1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn address_handed_to_a_dropped_waiter_returns_to_the_free_list() {
        let queue = queue(&[10]);
        let held = lease_now(&queue, 1).await;
        let mut on_wait_calls = 0;
        {
            let mut waiting = pin!(queue.lease(2, WAIT_LIMIT, |_| on_wait_calls += 1));
            let mut context = Context::from_waker(Waker::noop());
            assert!(waiting.as_mut().poll(&mut context).is_pending());
            check(&queue, 0, 1, 1);
            held.release();
            check(&queue, 0, 1, 0);
            // Dropped with the address in its channel, never polled again.
        }
        assert_eq!(on_wait_calls, 1);
        check(&queue, 1, 0, 0);
        assert_eq!(lease_now(&queue, 3).await.address().ip, ip(10));
    }

    #[tokio::test(start_paused = true)]
    async fn release_at_the_wait_limit_does_not_leak() {
        let queue = queue(&[10]);
        let held = lease_now(&queue, 1).await;
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(WAIT_LIMIT).await;
            held.release();
        });
        let outcome = queue.lease(2, WAIT_LIMIT, |_| {}).await;
        releaser.await.expect("releaser ran");
        match outcome {
            Ok(lease) => {
                check(&queue, 0, 1, 0);
                drop(lease);
            }
            Err(error) => assert!(matches!(error, AddressError::WaitLimit { .. })),
        }
        check(&queue, 1, 0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn release_then_drop_returns_exactly_once() {
        let queue = queue(&[10, 11]);
        let first = lease_now(&queue, 1).await;
        let second = lease_now(&queue, 2).await;
        first.release();
        check(&queue, 1, 1, 0);
        drop(second);
        check(&queue, 2, 0, 0);
        // Free order: 10 was returned first, so it is leased first again.
        assert_eq!(lease_now(&queue, 3).await.address().ip, ip(10));
    }

    #[test]
    fn lease_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let queue = queue(&[10]);
        let future = queue.lease(1, WAIT_LIMIT, |_| {});
        assert_send(&future);
    }
}
