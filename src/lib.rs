//! The `abd` command and scenario runner: the one place that joins the engine
//! to the simulator.

pub mod checks;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod sim_link;
pub mod summary;

use scenario::Scenario;
use summary::Summary;

/// Runs a scenario with a seed and checks it: the summary says whether the
/// invariants and the expectations held.
pub fn run_and_check(scenario: &Scenario, seed: u64) -> (runner::RunOutput, Summary) {
    let out = runner::run(scenario, seed);
    let problems = checks::check(scenario, &out);
    let summary = Summary::new(scenario, &out, problems);
    (out, summary)
}
