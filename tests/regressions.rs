//! Replays every seed in `tests/regressions.toml`: runs that once failed must
//! stay sound (the invariant checks pass).

use std::path::PathBuf;

#[derive(serde::Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    scenario: String,
    seed: u64,
    found: String,
}

#[test]
fn seeds_that_once_failed_stay_sound() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/regressions.toml")).unwrap();
    let cases: Cases = toml::from_str(&text).unwrap();
    assert!(!cases.case.is_empty());
    for case in cases.case {
        let path = root.join(&case.scenario);
        let scenario = abd::scenario::Scenario::load(&path).unwrap();
        let (_, summary) = abd::run_and_check(&scenario, case.seed);
        assert!(
            summary.check_failures.is_empty(),
            "{} seed {} (once: {}) fails again: {:?}\nreplay with: abd run {} --seed {}",
            case.scenario,
            case.seed,
            case.found,
            summary.check_failures,
            case.scenario,
            case.seed
        );
    }
}
