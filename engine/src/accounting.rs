//! Delegate accounting: how many delegates each pool has, how many are busy,
//! and what the running jobs allow. Pure bookkeeping; the engine feeds it
//! every change and it checks the bounds on each one.

use serde::Serialize;
use std::collections::BTreeMap;

/// Counters of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounts {
    /// Delegate VMs that exist now (from clone to destroy).
    pub live: usize,
    /// Delegates working for a VM now.
    pub busy: usize,
    /// Most delegates that existed at once.
    pub peak_live: usize,
    /// Most delegates busy at once.
    pub peak_busy: usize,
    /// Delegates cloned in this run.
    pub created: usize,
    /// Delegates destroyed in this run.
    pub destroyed: usize,
    /// Leftovers of earlier runs destroyed at start.
    pub reclaimed: usize,
    /// Sum of the concurrency of the jobs running in the pool now.
    pub allowed: usize,
}

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    JobStarted { concurrency: usize },
    JobFinished { concurrency: usize },
    DelegateCreated,
    DelegateDestroyed,
    Reclaimed,
    DelegateBusy,
    DelegateIdle,
}

/// The accounting of every pool.
#[derive(Clone, Debug, Default)]
pub struct Accounting {
    pools: BTreeMap<String, PoolCounts>,
    persistent: BTreeMap<String, bool>,
    violations: Vec<String>,
}

impl Accounting {
    /// Declares a pool; persistent pools may keep idle delegates beyond what jobs allow.
    pub fn add_pool(&mut self, pool: &str, persistent: bool) {
        self.pools.entry(pool.to_string()).or_default();
        self.persistent.insert(pool.to_string(), persistent);
    }

    /// Applies a change at engine time `at_ms` and checks the bounds.
    pub fn apply(&mut self, at_ms: u64, pool: &str, change: Change) {
        let c = self.pools.entry(pool.to_string()).or_default();
        let underflow = match change {
            Change::JobStarted { concurrency } => {
                c.allowed += concurrency;
                false
            }
            Change::JobFinished { concurrency } => sub(&mut c.allowed, concurrency),
            Change::DelegateCreated => {
                c.live += 1;
                c.created += 1;
                false
            }
            Change::DelegateDestroyed => {
                c.destroyed += 1;
                sub(&mut c.live, 1)
            }
            Change::Reclaimed => {
                c.reclaimed += 1;
                false
            }
            Change::DelegateBusy => {
                c.busy += 1;
                false
            }
            Change::DelegateIdle => sub(&mut c.busy, 1),
        };
        c.peak_live = c.peak_live.max(c.live);
        c.peak_busy = c.peak_busy.max(c.busy);
        let c = c.clone();
        if underflow {
            self.violate(
                at_ms,
                pool,
                format!("{change:?} with nothing to take it from"),
            );
        }
        if c.busy > c.allowed {
            self.violate(
                at_ms,
                pool,
                format!(
                    "{} busy delegates but running jobs allow {}",
                    c.busy, c.allowed
                ),
            );
        }
        let persistent = self.persistent.get(pool).copied().unwrap_or(false);
        if !persistent && c.live > c.allowed {
            self.violate(
                at_ms,
                pool,
                format!(
                    "{} delegates exist but running jobs allow {}",
                    c.live, c.allowed
                ),
            );
        }
        if c.busy > c.live {
            self.violate(
                at_ms,
                pool,
                format!("{} busy delegates but only {} exist", c.busy, c.live),
            );
        }
    }

    fn violate(&mut self, at_ms: u64, pool: &str, what: String) {
        let message = format!("{} pool {pool}: {what}", crate::joblog::format_clock(at_ms));
        tracing::error!("delegate accounting: {message}");
        debug_assert!(false, "delegate accounting: {message}");
        self.violations.push(message);
    }

    /// Counters of a pool.
    pub fn pool(&self, pool: &str) -> PoolCounts {
        self.pools.get(pool).cloned().unwrap_or_default()
    }

    /// Counters of every pool, by name.
    pub fn pools(&self) -> &BTreeMap<String, PoolCounts> {
        &self.pools
    }

    /// The accounting of a whole run across an engine restart: `self` is the
    /// engine that died, `later` the one that took over. Totals add up,
    /// peaks are the higher, and what exists now is what `later` counts
    /// (the dead engine's delegates are `later`'s reclaimed leftovers).
    pub fn followed_by(mut self, later: &Accounting) -> Accounting {
        for (pool, next) in &later.pools {
            let c = self.pools.entry(pool.clone()).or_default();
            c.created += next.created;
            c.destroyed += next.destroyed;
            c.reclaimed += next.reclaimed;
            c.peak_live = c.peak_live.max(next.peak_live);
            c.peak_busy = c.peak_busy.max(next.peak_busy);
            c.live = next.live;
            c.busy = next.busy;
            c.allowed = next.allowed;
        }
        self.persistent.extend(later.persistent.clone());
        self.violations.extend(later.violations.iter().cloned());
        self
    }

    /// Bounds that were broken (empty in a correct run).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}

fn sub(x: &mut usize, n: usize) -> bool {
    match x.checked_sub(n) {
        Some(v) => {
            *x = v;
            false
        }
        None => {
            *x = 0;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_jobs_add_up_and_peaks_are_kept() {
        let mut a = Accounting::default();
        a.add_pool("p", false);
        a.apply(0, "p", Change::JobStarted { concurrency: 2 });
        a.apply(0, "p", Change::JobStarted { concurrency: 1 });
        for _ in 0..3 {
            a.apply(1, "p", Change::DelegateCreated);
            a.apply(2, "p", Change::DelegateBusy);
        }
        a.apply(3, "p", Change::DelegateIdle);
        a.apply(3, "p", Change::DelegateDestroyed);
        let c = a.pool("p");
        assert_eq!(
            (
                c.live,
                c.busy,
                c.peak_live,
                c.peak_busy,
                c.created,
                c.destroyed
            ),
            (2, 2, 3, 3, 3, 1)
        );
        assert!(a.violations().is_empty());
    }

    #[test]
    fn more_busy_than_allowed_is_a_violation() {
        let mut a = Accounting::default();
        a.add_pool("p", true);
        a.apply(0, "p", Change::JobStarted { concurrency: 1 });
        a.apply(1, "p", Change::DelegateCreated);
        a.apply(1, "p", Change::DelegateBusy);
        a.apply(1, "p", Change::DelegateCreated);
        assert!(
            a.violations().is_empty(),
            "an idle persistent delegate may exist beyond the job's allowance"
        );
        let result = std::panic::catch_unwind(move || {
            a.apply(2, "p", Change::DelegateBusy);
            a.violations().len()
        });
        // Debug builds assert; release builds record the violation.
        assert!(result.is_err() || result.unwrap() == 1);
    }
}
