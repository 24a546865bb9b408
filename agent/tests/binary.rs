//! The `abd-agent` binary: refuses a malformed token, and serves its API on
//! the given address to requests carrying its token only.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_abd-agent"))
}

#[test]
fn a_malformed_token_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "not-a-token").unwrap();
    let out = agent()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--vm-uuid",
            "vm-1",
            "--store-url",
            "http://x",
        ])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not 64 hex digits"), "{stderr}");
    assert!(
        !stderr.contains("not-a-token"),
        "the token is never echoed: {stderr}"
    );
}

#[test]
fn serves_identity_to_its_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut child = agent()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--vm-uuid",
            "vm-1",
            "--store-url",
            "http://x",
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--devices")
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the agent says where it listens")
            .unwrap();
        assert!(!line.contains(TOKEN), "the token is never logged: {line}");
        if let Some((_, addr)) = line.split_once("listening on ") {
            break addr.trim().to_string();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/identity");
        let reply = http
            .get(&url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        assert!(reply.headers().contains_key("x-abd-agent"));
        assert!(reply.text().await.unwrap().contains("\"vm_uuid\":\"vm-1\""));
        let reply = http.get(&url).send().await.unwrap();
        assert_eq!(reply.status(), 401);
        let reply = http
            .post(format!("http://{addr}/v1/backup"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body("{\"disks\": 3}")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400);
        assert!(reply.text().await.unwrap().contains("backup request"));
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
