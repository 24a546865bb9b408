//! The `abd` command and scenario runner: the one place that joins the engine
//! to the simulator.

pub mod ads_cli;
pub mod checks;
pub mod data_check;
pub mod disk_image;
pub mod real_pool;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod served_agents;
pub mod sim_agents;
pub mod sim_link;
pub mod store_faults;
pub mod summary;
pub mod swarm;

use scenario::Scenario;
use summary::Summary;

/// Runs a scenario with a seed and checks it: the summary says whether the
/// invariants and the expectations held.
pub fn run_and_check(scenario: &Scenario, seed: u64) -> (runner::RunOutput, Summary) {
    run_and_check_with(scenario, seed, runner::XapiLink::InProcess)
}

/// As [`run_and_check`], with the engine reaching the pools through `link`.
pub fn run_and_check_with(
    scenario: &Scenario,
    seed: u64,
    link: runner::XapiLink,
) -> (runner::RunOutput, Summary) {
    let scenario = &scenario.for_seed(seed);
    let out = runner::run_with(scenario, seed, link);
    let problems = checks::check(scenario, &out);
    let summary = Summary::new(scenario, &out, problems);
    (out, summary)
}
