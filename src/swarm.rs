//! `abd swarm`: one scenario over many seeds. Each seed also draws the
//! scenario's fault rates and `[swarm]` topology, so rare combinations get
//! explored; every run is judged by the invariant checks (safety) and by
//! convergence once faults heal (liveness). A failing seed is printed with
//! the one command that replays it.

use crate::scenario::Scenario;
use serde::Serialize;
use std::path::Path;

/// One seed's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SeedOutcome {
    pub seed: u64,
    /// Final status of each job, in order.
    pub jobs: Vec<String>,
    pub vms_ok: usize,
    pub vms_failed: usize,
    pub delegates_created: usize,
    pub faults_injected: u64,
    pub sim_ms: u64,
    /// What the checks found (empty: the run is sound).
    pub problems: Vec<String>,
}

/// A swarm's outcomes, with how fast it ran.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmReport {
    pub scenario: String,
    pub outcomes: Vec<SeedOutcome>,
    pub wall_ms: u64,
}

impl SwarmReport {
    /// The seeds whose runs were not sound.
    pub fn failures(&self) -> impl Iterator<Item = &SeedOutcome> {
        self.outcomes.iter().filter(|o| !o.problems.is_empty())
    }

    /// Seeds per wall-clock second, and simulated hours per wall-clock second.
    pub fn speed(&self) -> (f64, f64) {
        let wall_s = (self.wall_ms.max(1)) as f64 / 1000.0;
        let sim_h: f64 = self
            .outcomes
            .iter()
            .map(|o| o.sim_ms as f64 / 3_600_000.0)
            .sum();
        (self.outcomes.len() as f64 / wall_s, sim_h / wall_s)
    }

    /// The table `abd swarm` prints, then each failure with its replay command.
    pub fn text(&self, path: &Path) -> String {
        let mut s = format!(
            "{:>8}  {:<36} {:>5} {:>6} {:>9} {:>6} {:>10}  verdict\n",
            "seed", "jobs", "ok", "failed", "delegates", "faults", "sim time"
        );
        for o in &self.outcomes {
            s += &format!(
                "{:>8}  {:<36} {:>5} {:>6} {:>9} {:>6} {:>10}  {}\n",
                o.seed,
                o.jobs.join(","),
                o.vms_ok,
                o.vms_failed,
                o.delegates_created,
                o.faults_injected,
                engine::joblog::format_clock(o.sim_ms),
                if o.problems.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                }
            );
        }
        let failed: Vec<&SeedOutcome> = self.failures().collect();
        let (seeds_per_s, sim_h_per_s) = self.speed();
        s += &format!(
            "{} seeds, {} failed; {:.1} seeds per wall second, {:.1} simulated hours per wall second\n",
            self.outcomes.len(),
            failed.len(),
            seeds_per_s,
            sim_h_per_s
        );
        for o in failed {
            s += &format!(
                "seed {} FAILED: replay with: abd run {} --seed {}\n",
                o.seed,
                path.display(),
                o.seed
            );
            for p in &o.problems {
                s += &format!("  - {p}\n");
            }
        }
        s
    }
}

/// Runs `scenario` with seeds `start..start + seeds`.
pub fn run(scenario: &Scenario, start: u64, seeds: u64) -> SwarmReport {
    let wall = std::time::Instant::now();
    let outcomes = (start..start.saturating_add(seeds))
        .map(|seed| run_seed(scenario, seed))
        .collect();
    SwarmReport {
        scenario: scenario.name.clone(),
        outcomes,
        wall_ms: wall.elapsed().as_millis() as u64,
    }
}

/// One seed's run, judged. A run that panics is a failing seed like any
/// other (the panic's message is its problem), so the swarm goes on and
/// names it with its replay command.
fn run_seed(scenario: &Scenario, seed: u64) -> SeedOutcome {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::run_and_check(scenario, seed)
    }));
    let (_, summary) = match run {
        Ok(judged) => judged,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            return SeedOutcome {
                seed,
                jobs: Vec::new(),
                vms_ok: 0,
                vms_failed: 0,
                delegates_created: 0,
                faults_injected: 0,
                sim_ms: 0,
                problems: vec![format!("the run panicked: {message}")],
            };
        }
    };
    SeedOutcome {
        seed,
        jobs: summary.jobs.iter().map(|j| j.status.clone()).collect(),
        vms_ok: summary.vms_processed,
        vms_failed: summary.vms_failed,
        delegates_created: summary.delegates_created,
        faults_injected: summary.faults_injected,
        sim_ms: summary.sim_duration_ms,
        problems: summary.check_failures,
    }
}
