//! The `abd` command as users meet it: exit codes and messages.

use std::process::Command;

fn abd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_abd"))
        .args(args)
        .output()
        .expect("abd runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scenario(name: &str) -> String {
    format!("{}/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_good_run_exits_zero_and_prints_logs_and_summary() {
    let (code, stdout, _) = abd(&["run", &scenario("quickstart.toml")]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("== job nightly (pool lab) =="));
    assert!(stdout.contains("Job nightly finished: success"));
    assert!(stdout.contains("Checks: all passed"));
}

#[test]
fn json_output_is_json_with_the_digest() {
    let (code, stdout, _) = abd(&["run", &scenario("quickstart.toml"), "--json", "--seed", "5"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(v["seed"], 5);
    assert_eq!(v["event_log_digest"].as_str().map(str::len), Some(64));
}

#[test]
fn a_malformed_scenario_names_file_line_and_field_and_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("abd-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\n[[pool]]\nname = \"p\"\nhosts = \"two\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = abd(&["run", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "nothing runs: {stdout}");
    assert!(stderr.contains("bad.toml:4:"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn an_unmet_expectation_fails_and_prints_the_replay_command() {
    let dir = std::env::temp_dir().join(format!("abd-cli-expect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(scenario("quickstart.toml"))
        .unwrap()
        .replace(
            "peak_delegates = { lab = 2 }",
            "peak_delegates = { lab = 5 }",
        );
    let path = dir.join("wrong-peak.toml");
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = abd(&["run", path.to_str().unwrap(), "--quiet", "--seed", "3"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("pool lab: peak delegates 2, expected 5"),
        "{stdout}"
    );
    assert!(stderr.contains("--seed 3"), "{stderr}");
    assert!(stderr.contains("abd run"), "{stderr}");
}
