//! The job logs of the fault scenarios, word for word: what an operator reads
//! when XAPI refuses calls, a host crashes or delegates do not boot. Any change
//! to the engine's behaviour under these faults shows here.

use abd::scenario::Scenario;
use std::path::PathBuf;

fn run(name: &str) -> abd::runner::RunOutput {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml"));
    let scenario = Scenario::load(&path).unwrap();
    let (out, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
    out
}

fn job_log(name: &str) -> String {
    run(name)
        .jobs
        .iter()
        .flat_map(|j| j.report.log.lines.iter())
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The engine's own log, then the jobs'.
fn engine_and_job_log(name: &str) -> String {
    let out = run(name);
    let jobs = out.jobs.iter().flat_map(|j| j.report.log.lines.iter());
    out.engine_log
        .lines
        .iter()
        .chain(jobs)
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn fault_xapi_errors_log() {
    insta::assert_snapshot!("fault_xapi_errors", job_log("fault-xapi-errors"));
}

#[test]
fn fault_host_crash_log() {
    insta::assert_snapshot!("fault_host_crash", job_log("fault-host-crash"));
}

#[test]
fn fault_master_crash_log() {
    insta::assert_snapshot!(
        "fault_master_crash",
        engine_and_job_log("fault-master-crash")
    );
}

#[test]
fn fault_master_crash_ha_log() {
    insta::assert_snapshot!(
        "fault_master_crash_ha",
        engine_and_job_log("fault-master-crash-ha")
    );
}

#[test]
fn fault_boot_failure_log() {
    insta::assert_snapshot!("fault_boot_failure", job_log("fault-boot-failure"));
}

#[test]
fn fault_dhcp_down_log() {
    insta::assert_snapshot!("fault_dhcp_down", job_log("fault-dhcp-down"));
}

#[test]
fn cbt_fallback_log() {
    insta::assert_snapshot!("cbt_fallback", job_log("cbt-fallback"));
}

#[test]
fn fault_dhcp_exhausted_log() {
    insta::assert_snapshot!("fault_dhcp_exhausted", job_log("fault-dhcp-exhausted"));
}

#[test]
fn fault_delegate_killed_log() {
    insta::assert_snapshot!("fault_delegate_killed", job_log("fault-delegate-killed"));
}

#[test]
fn fault_sr_full_log() {
    insta::assert_snapshot!("fault_sr_full", job_log("fault-sr-full"));
}

#[test]
fn cancel_log() {
    insta::assert_snapshot!("cancel", job_log("cancel"));
}

#[test]
fn fault_host_disabled_log() {
    insta::assert_snapshot!("fault_host_disabled", job_log("fault-host-disabled"));
}

#[test]
fn engine_restart_log() {
    insta::assert_snapshot!("engine_restart", job_log("engine-restart"));
}

#[test]
fn fault_xapi_unreachable_log() {
    insta::assert_snapshot!("fault_xapi_unreachable", job_log("fault-xapi-unreachable"));
}

#[test]
fn fault_agent_crash_log() {
    insta::assert_snapshot!("fault_agent_crash", job_log("fault-agent-crash"));
}

#[test]
fn fault_store_full_log() {
    insta::assert_snapshot!("fault_store_full", job_log("fault-store-full"));
}

#[test]
fn fault_master_change_log() {
    insta::assert_snapshot!(
        "fault_master_change",
        engine_and_job_log("fault-master-change")
    );
}

#[test]
fn fault_chunk_corrupt_log() {
    insta::assert_snapshot!(
        "fault_chunk_corrupt",
        engine_and_job_log("fault-chunk-corrupt")
    );
}

#[test]
fn fault_network_log() {
    insta::assert_snapshot!("fault_network", job_log("fault-network"));
}

#[test]
fn engine_restart_data_log() {
    insta::assert_snapshot!(
        "engine_restart_data",
        engine_and_job_log("engine-restart-data")
    );
}

#[test]
fn cancel_unreachable_log() {
    insta::assert_snapshot!(
        "cancel_unreachable",
        engine_and_job_log("cancel-unreachable")
    );
}

#[test]
fn retention_log() {
    insta::assert_snapshot!("retention", engine_and_job_log("retention"));
}

#[test]
fn restore_upload_log() {
    insta::assert_snapshot!("restore_upload", job_log("restore-upload"));
}

#[test]
fn engine_restart_master_down_log() {
    insta::assert_snapshot!(
        "engine_restart_master_down",
        engine_and_job_log("engine-restart-master-down")
    );
}

#[test]
fn fault_lost_reply_log() {
    insta::assert_snapshot!("fault_lost_reply", job_log("fault-lost-reply"));
}

#[test]
fn fault_lost_reply_restore_log() {
    insta::assert_snapshot!(
        "fault_lost_reply_restore",
        job_log("fault-lost-reply-restore")
    );
}

#[test]
fn same_names_log() {
    insta::assert_snapshot!("same_names", job_log("same-names"));
}

#[test]
fn fault_slow_boot_log() {
    insta::assert_snapshot!("fault_slow_boot", job_log("fault-slow-boot"));
}

#[test]
fn fault_latency_log() {
    insta::assert_snapshot!("fault_latency", job_log("fault-latency"));
}

#[test]
fn fault_store_volume_full_log() {
    insta::assert_snapshot!(
        "fault_store_volume_full",
        job_log("fault-store-volume-full")
    );
}

#[test]
fn multi_sr_log() {
    insta::assert_snapshot!("multi_sr", engine_and_job_log("multi-sr"));
}
