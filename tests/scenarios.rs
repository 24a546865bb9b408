//! Every shipped scenario: its checks and expectations hold, the same seed
//! gives the same event-log digest, and another seed changes timings but not
//! outcomes (scenarios with faults: another seed stays sound).

use abd::scenario::Scenario;
use abd::summary::Summary;
use std::path::PathBuf;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the shipped scenarios in {dir:?}"
    );
    files
}

fn run(path: &std::path::Path, seed: Option<u64>) -> Summary {
    let scenario = Scenario::load(path).unwrap_or_else(|e| panic!("{e}"));
    let seed = seed.unwrap_or(scenario.seed);
    let (_, summary) = abd::run_and_check(&scenario, seed);
    assert!(
        summary.ok,
        "{} seed {seed} failed; replay with: abd run {} --seed {seed}\n{}",
        scenario.name,
        path.display(),
        summary.text()
    );
    summary
}

/// What must not depend on the seed: which jobs ended how, and how many
/// delegates and addresses were used and left.
fn outcomes(s: &Summary) -> String {
    let jobs: Vec<String> = s
        .jobs
        .iter()
        .map(|j| {
            format!(
                "{}={} ok{} warn{} failed{}",
                j.name, j.status, j.vms_ok, j.vms_warn, j.vms_failed
            )
        })
        .collect();
    format!(
        "{jobs:?} created={} left={} addresses_left={} peak={:?}",
        s.delegates_created, s.delegates_left, s.addresses_left, s.peak_delegates
    )
}

#[test]
fn every_scenario_holds_and_is_deterministic() {
    for path in scenario_files() {
        let first = run(&path, None);
        let again = run(&path, None);
        assert_eq!(
            first.event_log_digest,
            again.event_log_digest,
            "{}: same seed, different event log",
            path.display()
        );
        assert_eq!(first.events, again.events);
    }
}

#[test]
fn another_seed_changes_timings_not_outcomes() {
    for path in scenario_files() {
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Faults (an engine crash, a store that fills up) land on whatever
        // the timing and the seeded disk content put in their way: another
        // seed is another run, which must still be sound.
        if !scenario.faults.is_empty()
            || !scenario.engine_crashes.is_empty()
            || scenario.engine.store_capacity_bytes.is_some()
        {
            let seed = scenario.seed + 1000;
            let (_, other) = abd::run_and_check(&scenario, seed);
            assert!(
                other.check_failures.is_empty(),
                "{} seed {seed}: {:?}; replay with: abd run {} --seed {seed}",
                scenario.name,
                other.check_failures,
                path.display()
            );
            continue;
        }
        let base = run(&path, None);
        let other = run(&path, Some(base.seed + 1000));
        assert_ne!(
            base.event_log_digest,
            other.event_log_digest,
            "{}: a different seed should change timings",
            path.display()
        );
        assert_eq!(
            outcomes(&base),
            outcomes(&other),
            "{}: outcomes depend on the seed",
            path.display()
        );
    }
}

#[test]
fn json_summary_has_stable_keys() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/two-jobs.toml");
    let summary = run(&path, None);
    let json = serde_json::to_value(&summary).unwrap();
    for key in [
        "event_log_digest",
        "peak_delegates",
        "delegates_created",
        "delegates_left",
        "addresses_left",
        "jobs",
        "sim_duration_ms",
        "wall_ms",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(
        json["peak_delegates"]["prod"], 3,
        "two jobs at 2 + 1 add up to exactly 3"
    );
    assert_eq!(json["jobs"][0]["status"], "success");
}

/// XAPI calls of the quickstart job with boots of `boot_s` seconds, with
/// `event.from` answered or (`events = false`) refused as unknown.
fn quickstart_calls(boot_s: u32, events: bool) -> u64 {
    quickstart_calls_with(&format!("boot_s = [{boot_s}, {boot_s}]"), events)
}

/// XAPI calls of the quickstart job with `timing` (lines of its `[timing]`),
/// with `event.from` answered or (`events = false`) refused as unknown.
fn quickstart_calls_with(timing: &str, events: bool) -> u64 {
    let mut text = variant("quickstart.toml", timing, None);
    if !events {
        text.push_str(
            "\n[[fault]]\nkind = \"xapi_error\"\npool = \"lab\"\nmethod = \"event.from\"\n\
             error = [\"MESSAGE_METHOD_UNKNOWN\", \"event.from\"]\nrate = 1.0\n",
        );
    }
    let scenario =
        Scenario::parse("quickstart-variant.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let (_, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{timing}, events {events}:\n{}", summary.text());
    summary.xapi_calls
}

/// The shipped scenario `file` with `timing` (lines of its `[timing]`) and,
/// when given, `ending` (TOML) in place of its `[expect]` section and what
/// follows it.
fn variant(file: &str, timing: &str, ending: Option<&str>) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[[pool]]",
        &format!("[timing]\n{timing}\n\n[[pool]]"),
        1,
    );
    match ending {
        Some(ending) => {
            let expect = text.find("[expect]").expect("the scenario has [expect]");
            format!("{}{ending}", &text[..expect])
        }
        None => text,
    }
}

/// Every call the engine makes as a task, taking `s` seconds.
fn long_calls_taking(s: u32) -> String {
    [
        "clone_s",
        "provision_s",
        "start_s",
        "snapshot_s",
        "shutdown_s",
    ]
    .map(|name| format!("{name} = [{s}, {s}]"))
    .join("\n")
}

#[test]
fn long_calls_run_as_tasks_cost_no_more_calls_when_slow_and_are_read_where_events_fail() {
    // With event.from, tasks ten times as long cost (almost) no more calls.
    let fast = quickstart_calls_with(&long_calls_taking(3), true);
    let slow = quickstart_calls_with(&long_calls_taking(30), true);
    assert!(
        slow <= fast + fast / 50,
        "event.from: {fast} calls with 3 s tasks, {slow} with 30 s tasks"
    );
    // A pool that refuses event.from has its tasks read: still every VM
    // done, and the longer the tasks, the more reads.
    let fast_polled = quickstart_calls_with(&long_calls_taking(3), false);
    let slow_polled = quickstart_calls_with(&long_calls_taking(30), false);
    assert!(
        slow_polled > fast_polled + 12 * 5 * 3,
        "polling: {fast_polled} calls with 3 s tasks, {slow_polled} with 30 s tasks"
    );
}

#[test]
fn waiting_for_an_address_costs_no_more_calls_for_a_slow_boot_and_polls_where_events_fail() {
    // With event.from, a boot nine times as slow costs (almost) no more calls.
    let (fast, slow) = (quickstart_calls(10, true), quickstart_calls(90, true));
    assert!(
        slow <= fast + fast / 50,
        "event.from: {fast} calls with 10 s boots, {slow} with 90 s boots"
    );
    // A pool that refuses event.from is polled: still every VM done, and the
    // slower the boot, the more calls.
    let (fast_polled, slow_polled) = (quickstart_calls(10, false), quickstart_calls(90, false));
    assert!(
        slow_polled > fast_polled + 12 * 20,
        "polling: {fast_polled} calls with 10 s boots, {slow_polled} with 90 s boots"
    );
}

#[test]
fn cancelling_a_job_cancels_the_tasks_it_waits_for() {
    // Clones take ten minutes; the job is cancelled at 5 minutes, while its
    // first two delegates are being cloned.
    let text = variant(
        "quickstart.toml",
        "clone_s = [600, 600]",
        Some(
            "[[action]]\nat_s = 300\npool = \"lab\"\nkind = \"cancel_job\"\njob = \"nightly\"\n\n\
             [expect]\njobs = { nightly = \"cancelled\" }\ndelegates_left = 0\naddresses_left = 0\n",
        ),
    );
    let scenario =
        Scenario::parse("cancel-mid-clone.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let (run, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
    let finished_s = summary.jobs[0].finished_ms / 1000;
    assert!(
        (300..330).contains(&finished_s),
        "the job ends soon after its cancel, not when the clones would have: {finished_s} s"
    );
    let said = |text: &str| run.events.iter().filter(|e| e.text.contains(text)).count();
    assert_eq!(said("cancelling"), 2, "both clone tasks were cancelled");
    assert_eq!(said(" cancelled"), 2);
    assert_eq!(said("\"ABD "), 0, "and neither clone was made");
}

#[test]
fn a_lost_reply_to_a_clone_slower_than_the_call_timeout_finds_the_clone_once_made() {
    // Clones take 15 minutes, longer than the 10 minutes the engine waits
    // for a reply: when the reply (its task) is lost, the engine waits for
    // the pool's clone tasks to end before it looks for the clone by name.
    let text = variant(
        "fault-lost-reply.toml",
        "clone_s = [900, 900]",
        Some(
            "[expect]\nvms_failed = 0\ndelegates_left = 0\naddresses_left = 0\n\
             log_contains = [\"but the clone was made: using it\"]\n",
        ),
    );
    let scenario =
        Scenario::parse("slow-clone-lost-reply.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let (_, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
}

#[test]
fn a_run_past_its_limit_is_stopped_cleanly_and_fails_naming_why() {
    // Clones take ten minutes, and the run's limit (its convergence
    // deadline) is at two: the jobs are cancelled there, clean up, and the
    // run fails instead of running on.
    let text = variant(
        "quickstart.toml",
        "clone_s = [600, 600]\n\n[swarm]\nconverge_within_s = 120",
        None,
    );
    let scenario = Scenario::parse("past-its-limit.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let (_, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(!summary.ok, "{}", summary.text());
    let stopped = "the run did not end by itself: the run reached its limit at 120 s";
    assert!(
        summary
            .check_failures
            .iter()
            .any(|p| p.starts_with(stopped)),
        "{:?}",
        summary.check_failures
    );
    assert!(
        summary.check_failures.iter().all(|p| !p.contains("left")),
        "what the cancelled jobs made is cleaned up: {:?}",
        summary.check_failures
    );
    assert_eq!(summary.jobs[0].status, "cancelled", "{}", summary.text());
    let finished_s = summary.jobs[0].finished_ms / 1000;
    assert!((120..180).contains(&finished_s), "{finished_s} s");
}
