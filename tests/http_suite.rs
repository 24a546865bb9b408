//! The whole scenario suite with the engine talking XAPI over HTTP to the
//! simulator served on loopback: the same calls at the same simulated times,
//! so the same event log, byte for byte, as the in-process run.

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
    let (_, local) = abd::run_and_check(&scenario, scenario.seed);
    let (_, wired) = abd::run_and_check_with(&scenario, scenario.seed, link);
    assert!(
        wired.ok,
        "{} over {link:?} failed; replay with: abd run {} --xapi ... --seed {}\n{}",
        scenario.name,
        path.display(),
        scenario.seed,
        wired.text()
    );
    assert_eq!(
        local.event_log_digest, wired.event_log_digest,
        "{}: the run over {link:?} differs from the in-process run",
        scenario.name
    );
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
