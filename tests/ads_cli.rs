//! `abd ads ...` as an operator uses it, on images from `abd sim image`.

use std::path::Path;
mod common;

use common::abd;

fn ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = abd(args);
    assert_eq!(code, 0, "abd {args:?}\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn backup_incremental_list_restore_verify_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, day0, day1) = (
        tmp.path().join("ads"),
        tmp.path().join("d0.raw"),
        tmp.path().join("d1.raw"),
    );
    ok(&["sim", "image", p(&day0), "--size", "24MiB", "--seed", "3"]);
    ok(&[
        "sim",
        "image",
        p(&day1),
        "--size",
        "24MiB",
        "--seed",
        "3",
        "--day",
        "1",
    ]);
    ok(&["ads", "init", p(&store)]);

    let first: serde_json::Value = serde_json::from_str(&ok(&[
        "ads",
        "backup",
        p(&store),
        p(&day0),
        "--vm",
        "web",
        "--json",
    ]))
    .unwrap();
    for key in [
        "bytes_read",
        "bytes_sent",
        "bytes_stored",
        "chunks_new",
        "chunks_total",
        "seconds",
    ] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    assert_eq!(first["bytes_read"], 24 << 20);
    assert!(
        first["bytes_stored"].as_u64().unwrap() < 24 << 20,
        "{first}"
    );
    let second: serde_json::Value = serde_json::from_str(&ok(&[
        "ads",
        "backup",
        p(&store),
        p(&day1),
        "--vm",
        "web",
        "--json",
    ]))
    .unwrap();
    assert_eq!(second["version"], 2);
    assert_eq!(second["parent"], 1);
    // A day's changes are a few percent: the second version stores little.
    assert!(
        second["bytes_stored"].as_u64().unwrap() * 5 < first["bytes_stored"].as_u64().unwrap(),
        "{second}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&ok(&["ads", "list", p(&store), "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    for (version, image) in [("1", &day0), ("2", &day1)] {
        let out = tmp.path().join(format!("restored-{version}.raw"));
        let said = ok(&[
            "ads",
            "restore",
            p(&store),
            "--vm",
            "web",
            "--version",
            version,
            p(&out),
        ]);
        assert!(said.contains("verified"), "{said}");
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(image).unwrap(),
            "version {version}"
        );
    }
    assert!(ok(&["ads", "verify", p(&store)]).contains("store is clean"));
    let gc: serde_json::Value =
        serde_json::from_str(&ok(&["ads", "gc", p(&store), "--keep", "1", "--json"])).unwrap();
    assert_eq!(gc["versions_removed"][0], "web@1");
    let verify: serde_json::Value =
        serde_json::from_str(&ok(&["ads", "verify", p(&store), "--json"])).unwrap();
    assert_eq!(verify["unreferenced_chunks"], 0);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn wrong_directories_and_targets_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("d.raw");
    ok(&["sim", "image", p(&image), "--size", "1MiB"]);

    let (code, _, stderr) = abd(&["ads", "backup", p(tmp.path()), p(&image), "--vm", "x"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is not an abd data store") && stderr.contains("abd ads init"),
        "{stderr}"
    );

    let missing = tmp.path().join("no-such-store");
    let (code, _, stderr) = abd(&["ads", "list", p(&missing)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the directory does not exist") && stderr.contains("abd ads init"),
        "{stderr}"
    );
    assert!(!missing.exists(), "asking does not create it");

    let (code, _, stderr) = abd(&["ads", "init", p(tmp.path())]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not empty"), "{stderr}");

    let store = tmp.path().join("ads");
    ok(&["ads", "init", p(&store)]);
    ok(&["ads", "backup", p(&store), p(&image), "--vm", "x"]);
    let (code, _, stderr) = abd(&["ads", "restore", p(&store), "--vm", "x", p(&image)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot create"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        1 << 20,
        "existing file untouched"
    );
    let (code, _, stderr) = abd(&[
        "ads",
        "restore",
        p(&store),
        "--vm",
        "x",
        "--version",
        "7",
        p(&tmp.path().join("o")),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("has no version 7 (versions: 1)"),
        "{stderr}"
    );
    let (code, _, stderr) = abd(&[
        "ads",
        "init",
        p(&tmp.path().join("new")),
        "--compression",
        "gzip",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown compression \"gzip\""), "{stderr}");
}

#[test]
fn sim_images_are_a_function_of_seed_and_day() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |n: &str| tmp.path().join(n);
    for (name, seed) in [("a", "9"), ("b", "9"), ("c", "10")] {
        ok(&[
            "sim",
            "image",
            p(&path(name)),
            "--size",
            "4MiB",
            "--seed",
            seed,
        ]);
    }
    let read = |n: &str| std::fs::read(path(n)).unwrap();
    assert!(read("a") == read("b"));
    assert!(read("a") != read("c"));
}

#[test]
fn verify_set_aside_lets_the_next_backup_mend_a_corrupt_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, image) = (tmp.path().join("ads"), tmp.path().join("d0.raw"));
    ok(&["sim", "image", p(&image), "--size", "8MiB", "--seed", "5"]);
    ok(&["ads", "init", p(&store)]);
    ok(&["ads", "backup", p(&store), p(&image), "--vm", "web"]);
    // Flip a byte in the middle of the first pack's first blob.
    let mut dirs = vec![store.join("packs")];
    let mut pack = None;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                pack = pack.or(Some(path));
            }
        }
    }
    let pack = pack.unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64] ^= 0x20;
    std::fs::write(&pack, bytes).unwrap();

    let (code, stdout, _) = abd(&["ads", "verify", p(&store), "--set-aside"]);
    assert_ne!(code, 0, "a damaged store does not verify: {stdout}");
    assert!(stdout.contains("PROBLEM: chunk"), "{stdout}");
    assert!(stdout.contains("affects web@1"), "{stdout}");
    assert!(stdout.contains("set aside 1 corrupt chunk(s)"), "{stdout}");
    let (code, stdout, _) = abd(&["ads", "verify", p(&store)]);
    assert_ne!(code, 0);
    assert!(stdout.contains("set aside as corrupt"), "{stdout}");

    ok(&["ads", "backup", p(&store), p(&image), "--vm", "web"]);
    assert!(ok(&["ads", "verify", p(&store)]).contains("store is clean"));
    let out = tmp.path().join("web1.raw");
    ok(&[
        "ads",
        "restore",
        p(&store),
        "--vm",
        "web",
        "--version",
        "1",
        p(&out),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&image).unwrap());
}
