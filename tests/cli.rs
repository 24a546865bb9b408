//! The `abd` command as users meet it: exit codes and messages.

mod common;

use common::abd;
use std::process::Command;

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

/// `abd sim serve` on a free port, killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Served {
    fn start(scenario_file: &str) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_abd"))
            .args([
                "sim",
                "serve",
                &scenario(scenario_file),
                "--listen",
                "127.0.0.1:0",
                "--speed",
                "1000",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("abd sim serve starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .nth(3)
            .expect("pool <name> xapi <url>")
            .to_string();
        Served { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session on the served pool (over XML-RPC), and a runtime to call it on.
fn login(
    url: &str,
) -> (
    tokio::runtime::Runtime,
    engine::xapi::HttpTransport,
    serde_json::Value,
) {
    use engine::xapi::{HttpOptions, HttpTransport, Transport};
    use serde_json::json;
    let http = HttpTransport::new(url, &HttpOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = rt
        .block_on(http.call(
            "session.login_with_password",
            vec![json!("root"), json!("password")],
        ))
        .unwrap();
    (rt, http, session)
}

/// How many VMs the served pool has with this name.
fn vms_named(url: &str, name: &str) -> usize {
    use engine::xapi::Transport;
    let (rt, http, session) = login(url);
    let vms = rt
        .block_on(http.call(
            "VM.get_by_name_label",
            vec![session, serde_json::json!(name)],
        ))
        .unwrap();
    vms.as_array().unwrap().len()
}

fn password_file(name: &str, password: &str) -> String {
    let dir = std::env::temp_dir().join(format!("abd-cli-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn real_pool_mode_validates_and_manages_only_its_own_template() {
    let served = Served::start("leftovers.toml");
    let pw = password_file("good", "password");
    let pool = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend([
            "--pool",
            served.url.as_str(),
            "--password-file",
            pw.as_str(),
        ]);
        abd(&args)
    };
    let (code, stdout, _) = pool(&["validate"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("XAPI 2.21")
            && stdout.contains("not deployed")
            && stdout.contains("Nothing blocks jobs"),
        "{stdout}"
    );
    assert_eq!(
        pool(&["template", "deploy"]).1,
        "delegate template: deployed on SR \"nfs\"\n"
    );
    assert_eq!(
        pool(&["template", "deploy", "--json-rpc"]).1,
        "delegate template: already present on SR \"nfs\"\n"
    );
    assert_eq!(
        pool(&["template", "delete"]).1,
        "delegate template: deleted\n"
    );
    assert_eq!(
        pool(&["template", "delete"]).1,
        "delegate template: none to delete\n"
    );
    // The untagged look-alike "ABD 1" and another engine's "ABD 2" were never touched.
    for name in ["ABD 1", "ABD 2", "ABD 7"] {
        assert_eq!(vms_named(&served.url, name), 1, "{name}");
    }
    let (_, json, _) = pool(&["validate", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["template"], serde_json::Value::Null);
    assert!(report["blockers"].as_array().unwrap().is_empty());
}

#[test]
fn a_wrong_password_is_a_clean_error_that_never_shows_the_password() {
    let served = Served::start("quickstart.toml");
    let pw = password_file("bad", "s3cret-wrong");
    let (code, stdout, stderr) = abd(&["validate", "--pool", &served.url, "--password-file", &pw]);
    assert_eq!(code, 1);
    assert!(stderr.contains("SESSION_AUTHENTICATION_FAILED"), "{stderr}");
    assert!(!stderr.contains("s3cret") && !stdout.contains("s3cret"));
}

#[test]
fn real_pool_diag_runs_the_lifecycle_over_http_and_cleans_up() {
    // The served simulator's delegates get addresses in its own (simulated)
    // network, where no agent listens for this process: the diagnostic goes
    // through clone, boot and address over real XAPI, fails at the agent step
    // (identity) with a clear reason, and still tears the delegate down.
    let served = Served::start("leftovers.toml");
    let pw = password_file("diag", "password");
    let dir = std::env::temp_dir().join(format!("abd-cli-diag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("engine.toml");
    std::fs::write(
        &config,
        "[engine]\nprovision_attempts = 1\n[delegates]\nname = \"lab\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = abd(&[
        "diag",
        "--pool",
        &served.url,
        "--password-file",
        &pw,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("Diagnostic of pool lab: FAILED"),
        "{stdout}"
    );
    // Nothing, or something that is not this delegate's agent, answers there
    // (which of the two depends on the machine's network).
    assert!(stdout.contains("Diag step identity: FAILED"), "{stdout}");
    assert!(stdout.contains("torn down"), "{stdout}");
    // Only our own delegate came and went; the look-alikes are untouched.
    for name in ["ABD 1", "ABD 2"] {
        assert_eq!(vms_named(&served.url, name), 1, "{name}");
    }
}

#[test]
fn real_pool_restore_by_upload_writes_the_version_byte_for_byte() {
    let dir = std::env::temp_dir().join(format!("abd-cli-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (image, store) = (dir.join("app.img"), dir.join("store"));
    let (image, store) = (image.to_str().unwrap(), store.to_str().unwrap());
    for args in [
        vec!["sim", "image", image, "--size", "6MiB"],
        vec!["ads", "init", store],
        vec!["ads", "backup", store, image, "--vm", "app"],
    ] {
        let (code, stdout, stderr) = abd(&args);
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
    }
    let served = Served::start("quickstart.toml");
    let pw = password_file("restore", "password");
    let restore = |vm: &str| {
        abd(&[
            "restore",
            "--pool",
            &served.url,
            "--password-file",
            &pw,
            "--store",
            store,
            "--vm",
            vm,
            "--via",
            "import",
        ])
    };
    let (code, stdout, stderr) = restore("app");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("by upload to the pool master") && stdout.contains("Restored into VDI"),
        "{stdout}"
    );
    // What the pool holds now is the image, byte for byte.
    let expected = std::fs::read(image).unwrap();
    assert_eq!(exported(&served.url, "app restored v1 disk 1"), expected);
    // A VM the store has no version of: a clear reason, and no VDI made.
    let (code, stdout, _) = restore("nope");
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Nothing to write"), "{stdout}");
}

/// The bytes of the served pool's VDI named `name` (`/export_raw_vdi`).
fn exported(url: &str, name: &str) -> Vec<u8> {
    use engine::xapi::Transport;
    let (rt, http, session) = login(url);
    rt.block_on(async {
        let vdis = http
            .call(
                "VDI.get_by_name_label",
                vec![session.clone(), serde_json::json!(name)],
            )
            .await
            .unwrap();
        let vdis = vdis.as_array().unwrap();
        assert_eq!(vdis.len(), 1, "one VDI named {name:?}");
        let (vdi, session) = (vdis[0].as_str().unwrap(), session.as_str().unwrap());
        let export = format!("{url}/export_raw_vdi?vdi={vdi}&session_id={session}&format=raw");
        let reply = reqwest::get(export).await.unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
        reply.bytes().await.unwrap().to_vec()
    })
}
