//! Helpers shared by the CLI tests.

use std::process::Command;

/// Runs `abd` with `args`; returns exit code, stdout and stderr.
pub fn abd(args: &[&str]) -> (i32, String, String) {
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
