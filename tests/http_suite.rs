//! The whole scenario suite with the engine talking XAPI over HTTP to the
//! simulator served on loopback: the same calls at the same simulated times,
//! so the same event log, byte for byte, as the in-process run.
//!
//! One documented difference: served hosts answer at loopback addresses
//! (host k at 127.0.0.k), so when the master moves the engine log names the
//! served address it follows where the in-process run names the model's
//! (192.0.2.k). Lines are compared with that mapping undone.

use abd::runner::XapiLink;
use abd::scenario::Scenario;
use engine::xapi::Protocol;
use std::path::PathBuf;

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check_same_over(link: XapiLink, path: &std::path::Path) {
    let scenario = Scenario::load(path).unwrap();
    let (local_run, local) = abd::run_and_check(&scenario, scenario.seed);
    let (wired_run, wired) = abd::run_and_check_with(&scenario, scenario.seed, link);
    assert!(
        wired.ok,
        "{} over {link:?} failed; replay with: abd run {} --xapi ... --seed {}\n{}",
        scenario.name,
        path.display(),
        scenario.seed,
        wired.text()
    );
    let lines = |run: &abd::runner::RunOutput| -> Vec<String> {
        let jobs = run.jobs.iter().flat_map(|j| &j.report.log.lines);
        jobs.chain(&run.engine_log.lines)
            .map(|l| l.to_string().replace("127.0.0.", "192.0.2."))
            .collect()
    };
    let events = |run: &abd::runner::RunOutput| -> Vec<String> {
        run.events.iter().map(|e| e.to_string()).collect()
    };
    assert_eq!(
        events(&local_run),
        events(&wired_run),
        "{}: the simulator's events over {link:?} differ from the in-process run",
        scenario.name
    );
    assert_eq!(
        lines(&local_run),
        lines(&wired_run),
        "{}: the job logs over {link:?} differ from the in-process run",
        scenario.name
    );
    let moved = lines(&local_run).iter().any(|l| l.contains("master moved"));
    if !moved {
        assert_eq!(local.event_log_digest, wired.event_log_digest);
    }
    assert_eq!(local.xapi_calls, wired.xapi_calls);
}

#[test]
fn every_scenario_over_xml_rpc_matches_in_process() {
    for path in scenarios() {
        check_same_over(XapiLink::Http(Protocol::XmlRpc), &path);
    }
}

#[test]
fn scenarios_over_json_rpc_match_in_process() {
    for name in [
        "quickstart.toml",
        "two-pools.toml",
        "collision.toml",
        "diag.toml",
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(name);
        check_same_over(XapiLink::Http(Protocol::JsonRpc), &path);
    }
}
