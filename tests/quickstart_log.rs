//! The quickstart job log, word for word: the log is a product artefact with
//! stable wording, and this snapshot shows any change to it.

use abd::scenario::Scenario;
use std::path::PathBuf;

#[test]
fn quickstart_job_log() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/quickstart.toml");
    let scenario = Scenario::load(&path).unwrap();
    let (out, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
    let log: Vec<String> = out
        .engine_log
        .lines
        .iter()
        .chain(out.jobs.iter().flat_map(|j| j.report.log.lines.iter()))
        .map(|l| l.to_string())
        .collect();
    insta::assert_snapshot!("quickstart_job_log", log.join("\n"));
}
