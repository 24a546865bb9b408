//! The `abd` command as users meet it: exit codes and messages.

mod common;

use common::abd;
use std::process::Command;

/// A shipped scenario's path (or `name` itself when it is a path already).
fn scenario(name: &str) -> String {
    match name.starts_with('/') {
        true => name.to_string(),
        false => format!("{}/scenarios/{name}", env!("CARGO_MANIFEST_DIR")),
    }
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
    /// Every line it printed before serving (pools, certificates, members).
    lines: Vec<String>,
}

impl Served {
    fn start(scenario_file: &str) -> Served {
        Served::start_with(scenario_file, &["--listen", "127.0.0.1:0"], 1)
    }

    /// Serves with `extra` arguments, reading the first `lines` lines it
    /// prints (pools, certificates, members).
    fn start_with(scenario_file: &str, extra: &[&str], lines: usize) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_abd"))
            .args(["sim", "serve", &scenario(scenario_file), "--speed", "1000"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("abd sim serve starts");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut printed = Vec::new();
        while printed.len() < lines {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("abd sim serve stopped after printing {printed:?}");
            }
            printed.push(line.trim_end().to_string());
        }
        let lines = printed;
        let url = lines[0]
            .split_whitespace()
            .nth(3)
            .expect("pool <name> xapi <url>")
            .to_string();
        Served { child, url, lines }
    }

    /// The URL printed for pool `name`.
    fn pool_url(&self, name: &str) -> &str {
        let prefix = format!("pool {name} xapi ");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no pool {name} in {:?}", self.lines))
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
    login_as(url, "root", "password").expect("root logs in")
}

/// A session as `user`, or XAPI's error.
fn login_as(
    url: &str,
    user: &str,
    password: &str,
) -> Result<
    (
        tokio::runtime::Runtime,
        engine::xapi::HttpTransport,
        serde_json::Value,
    ),
    engine::xapi::CallError,
> {
    use engine::xapi::{HttpOptions, HttpTransport, Transport};
    use serde_json::json;
    let http = HttpTransport::new(url, &HttpOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = rt.block_on(http.call(
        "session.login_with_password",
        vec![json!(user), json!(password)],
    ))?;
    Ok((rt, http, session))
}

/// The uuid of the served pool's VM named `name`, seen by `user`.
fn vm_uuid(url: &str, (user, password): (&str, &str), name: &str) -> String {
    use engine::xapi::Transport;
    let (rt, http, session) = login_as(url, user, password).expect("logs in");
    rt.block_on(async {
        let vms = http
            .call(
                "VM.get_by_name_label",
                vec![session.clone(), serde_json::json!(name)],
            )
            .await
            .unwrap();
        let vm = vms[0].clone();
        let uuid = http.call("VM.get_uuid", vec![session, vm]).await.unwrap();
        uuid.as_str().unwrap().to_string()
    })
}

/// The served pool's delegate templates: uuid and other_config of each.
fn delegate_templates(url: &str) -> Vec<(String, serde_json::Value)> {
    use engine::xapi::Transport;
    let (rt, http, session) = login(url);
    let vms = rt
        .block_on(http.call("VM.get_all_records", vec![session]))
        .unwrap();
    vms.as_object()
        .unwrap()
        .values()
        .filter(|vm| vm["is_a_template"] == serde_json::json!(true))
        .filter(|vm| vm["other_config"]["abd:role"] == "template")
        .map(|vm| {
            (
                vm["uuid"].as_str().unwrap().to_string(),
                vm["other_config"].clone(),
            )
        })
        .collect()
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
    // Redeploying replaces the template with a new one, hidden as the first.
    let first = delegate_templates(&served.url);
    assert_eq!(
        pool(&["template", "redeploy"]).1,
        "delegate template: redeployed on SR \"nfs\"\n"
    );
    let second = delegate_templates(&served.url);
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert_ne!(first[0].0, second[0].0, "a new template");
    assert_eq!(second[0].1["HideFromXenCenter"], "true");
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

/// An engine configuration for the served pool `lab`, in `dir`.
fn engine_config(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("engine.toml");
    std::fs::write(
        &config,
        "[engine]\nprovision_attempts = 1\n[delegates]\nname = \"lab\"\n",
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

#[test]
fn real_pool_diag_runs_the_lifecycle_over_http_and_cleans_up() {
    // On loopback each served delegate's agent listens at its address: the
    // whole diagnostic passes over real XAPI and the agent's HTTP.
    let served = Served::start("leftovers.toml");
    let pw = password_file("diag", "password");
    let dir = std::env::temp_dir().join(format!("abd-cli-diag-{}", std::process::id()));
    let config = engine_config(&dir);
    let diag = |url: &str| {
        abd(&[
            "diag",
            "--pool",
            url,
            "--password-file",
            &pw,
            "--config",
            &config,
        ])
    };
    let (code, stdout, stderr) = diag(&served.url);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for step in [
        "template",
        "provision",
        "boot",
        "address",
        "identity",
        "teardown",
    ] {
        assert!(
            stdout.contains(&format!("Diag step {step}: passed")),
            "{step}: {stdout}"
        );
    }
    assert!(
        stdout.contains("Diagnostic of pool lab: passed"),
        "{stdout}"
    );
    // Only our own delegate came and went; the look-alikes are untouched.
    for name in ["ABD 1", "ABD 2"] {
        assert_eq!(vms_named(&served.url, name), 1, "{name}");
    }
    // Served off loopback, nothing answers for the delegate at its (model)
    // address, or something that is not its agent (which of the two depends
    // on the machine's network): the diagnostic fails at the agent step
    // with a clear reason, and still tears the delegate down.
    let off_loopback = Served::start_with("leftovers.toml", &["--listen", "0.0.0.0:0"], 1);
    let (code, stdout, stderr) = diag(&off_loopback.url);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("Diagnostic of pool lab: FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("Diag step identity: FAILED"), "{stdout}");
    assert!(stdout.contains("torn down"), "{stdout}");
    for name in ["ABD 1", "ABD 2"] {
        assert_eq!(vms_named(&off_loopback.url, name), 1, "{name}");
    }
}

/// How many VMs the served pool has that are snapshots, and how many VDIs.
fn snapshots_and_vdis(url: &str) -> (usize, usize) {
    use engine::xapi::Transport;
    let (rt, http, session) = login(url);
    rt.block_on(async {
        let vms = http
            .call("VM.get_all_records", vec![session.clone()])
            .await
            .unwrap();
        let snapshots = vms
            .as_object()
            .unwrap()
            .values()
            .filter(|vm| vm["is_a_snapshot"] == serde_json::json!(true))
            .count();
        let vdis = http.call("VDI.get_all", vec![session]).await.unwrap();
        (snapshots, vdis.as_array().unwrap().len())
    })
}

#[test]
fn real_pool_backup_runs_a_job_through_served_delegates_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("abd-cli-backup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // leftovers.toml, with small disks so the real bytes go by quickly.
    let text = std::fs::read_to_string(scenario("leftovers.toml")).unwrap();
    let small = text.replace("disks_gib = [10]", "disks_gib = [0.0625]");
    assert_ne!(small, text, "leftovers.toml has its 10 GiB VMs");
    let scenario_file = dir.join("small.toml");
    std::fs::write(&scenario_file, small).unwrap();
    let served = Served::start(scenario_file.to_str().unwrap());
    let before = snapshots_and_vdis(&served.url);
    let store = dir.join("store");
    let store = store.to_str().unwrap();
    assert_eq!(abd(&["ads", "init", store]).0, 0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (store_url, store_listen) = (
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    );
    let pw = password_file("backup", "password");
    let config = engine_config(&dir);
    // A real-pool command on the served pool, with its data store served to
    // the delegates.
    let with_store = |command: &str, vms: &[&str]| {
        let mut args = vec![
            command,
            "--pool",
            &served.url,
            "--password-file",
            &pw,
            "--config",
            &config,
            "--store",
            store,
            "--store-url",
            &store_url,
            "--store-listen",
            &store_listen,
        ];
        for vm in vms {
            args.extend(["--vm", vm]);
        }
        abd(&args)
    };
    let (code, stdout, stderr) = with_store("backup", &["vm-01", "vm-02"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("Job backup finished: success (2 ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Version 1 committed to the data store"),
        "{stdout}"
    );
    // Delegates and snapshots are gone (one VDI more: the delegate
    // template's disk, which the job deployed and keeps); the look-alikes
    // were never touched.
    assert_eq!(snapshots_and_vdis(&served.url), (before.0, before.1 + 1));
    for name in ["ABD 1", "ABD 2", "ABD 7"] {
        assert_eq!(vms_named(&served.url, name), 1, "{name}");
    }
    // Each version is dated by the wall clock, and restores the disk the
    // pool holds, byte for byte.
    let (code, listed, _) = abd(&["ads", "list", store, "--json"]);
    assert_eq!(code, 0);
    let versions: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{listed}");
    for version in versions.as_array().unwrap() {
        let taken = version["taken_at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(taken).is_ok(), "{taken}");
    }
    let image = dir.join("vm-01.img");
    let (code, stdout, stderr) = abd(&[
        "ads",
        "restore",
        store,
        "--vm",
        "vm-01",
        image.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let original = exported(&served.url, "vm-01 disk 0");
    assert_eq!(std::fs::read(&image).unwrap(), original);
    // A restore through a delegate: its agent reads the store and writes a
    // new VDI in the pool, which then holds the original bytes.
    let (code, stdout, stderr) = with_store("restore", &["vm-01"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Restored into VDI"), "{stdout}");
    assert_eq!(exported(&served.url, "vm-01 restored v1 disk 1"), original);
    let (snapshots, vdis) = snapshots_and_vdis(&served.url);
    assert_eq!(
        (snapshots, vdis),
        (before.0, before.1 + 2),
        "template and restored disks only"
    );
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

#[test]
fn sim_serve_takes_credentials_and_seed_and_gives_each_pool_the_next_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let flags = [
        "--listen",
        &listen,
        "--user",
        "backup",
        "--password",
        "s3cret",
        "--seed",
        "7",
    ];
    // East's pool and member lines, then west's.
    let served = Served::start_with("two-pools.toml", &flags, 3);
    assert_eq!(served.pool_url("east"), format!("http://127.0.0.1:{port}"));
    assert_eq!(
        served.pool_url("west"),
        format!("http://127.0.0.1:{}", port + 1)
    );
    // East's second host answers at the next loopback address, same port.
    assert!(
        served.lines.contains(&format!(
            "  member east-host-2 xapi http://127.0.0.2:{port}"
        )),
        "{:?}",
        served.lines
    );
    let refused = login_as(served.pool_url("west"), "root", "password").err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains("SESSION_AUTHENTICATION_FAILED")),
        "{refused:?}"
    );
    let ours = vm_uuid(served.pool_url("west"), ("backup", "s3cret"), "west-vm-01");
    // The seed decides the world: the same seed gives the same uuids.
    let same = Served::start_with(
        "two-pools.toml",
        &["--listen", "127.0.0.1:0", "--seed", "7"],
        3,
    );
    let other = Served::start_with(
        "two-pools.toml",
        &["--listen", "127.0.0.1:0", "--seed", "8"],
        3,
    );
    let root = ("root", "password");
    assert_eq!(vm_uuid(same.pool_url("west"), root, "west-vm-01"), ours);
    assert_ne!(vm_uuid(other.pool_url("west"), root, "west-vm-01"), ours);
}

#[test]
fn https_pools_are_verified_by_default_and_trusted_only_on_request() {
    let dir = std::env::temp_dir().join(format!("abd-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tls_dir = dir.join("certs");
    let tls_dir = tls_dir.to_str().unwrap();
    let served = Served::start_with(
        "leftovers.toml",
        &["--listen", "127.0.0.1:0", "--tls", tls_dir],
        3,
    );
    let cert = format!("{tls_dir}/lab.pem");
    assert!(
        served.url.starts_with("https://127.0.0.1:"),
        "{}",
        served.url
    );
    assert_eq!(served.lines[1], format!("  certificate {cert}"));
    let pw = password_file("tls", "password");
    let validate = |url: &str, extra: &[&str]| {
        let mut args = vec!["validate", "--pool", url, "--password-file", pw.as_str()];
        args.extend(extra);
        abd(&args)
    };
    // Verified by default: a self-signed certificate is refused, and the
    // error says what to do.
    let (code, stdout, stderr) = validate(&served.url, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("certificate") && stderr.contains("--trust-cert"),
        "{stderr}"
    );
    // Trusting the pool's certificate, or (lab) skipping the check, connects.
    for extra in [&["--trust-cert", cert.as_str()][..], &["--insecure"]] {
        let (code, stdout, stderr) = validate(&served.url, extra);
        assert_eq!(code, 0, "{extra:?}: {stdout}{stderr}");
        assert!(stdout.contains("Nothing blocks jobs"), "{stdout}");
    }
    // The member's endpoint presents the same certificate: the client follows
    // HOST_IS_SLAVE to the master over HTTPS, still verifying.
    let member = served
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("  member lab-host-2 xapi "))
        .expect("a member line");
    assert!(member.starts_with("https://127.0.0.2:"), "{member}");
    let (code, stdout, stderr) = validate(member, &["--trust-cert", &cert]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Another pool's certificate is no good for this one.
    let other_dir = dir.join("other");
    let other = Served::start_with(
        "quickstart.toml",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls",
            other_dir.to_str().unwrap(),
        ],
        1,
    );
    let other_cert = other_dir.join("lab.pem");
    let (code, _, stderr) = validate(&served.url, &["--trust-cert", other_cert.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("certificate"), "{stderr}");
    drop(other);
    // A file that holds no certificate is named as such.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (code, _, stderr) = validate(&served.url, &["--trust-cert", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("junk.pem"), "{stderr}");
}
