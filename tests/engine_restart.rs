//! The engine dies mid-job and a new one takes over: leftovers reclaimed,
//! the run closed as interrupted and resumed, nothing done twice, nothing left.

use abd::scenario::{EngineCrash, Scenario};
use engine::job::VmStatus;
use std::path::PathBuf;

fn scenario() -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/engine-restart.toml");
    Scenario::load(&path).unwrap()
}

fn engine_log_texts(out: &abd::runner::RunOutput) -> Vec<String> {
    out.engine_log
        .lines
        .iter()
        .map(|l| l.text.clone())
        .collect()
}

fn crash_at(scenario: &mut Scenario, at_s: f64) {
    scenario.engine_crashes = vec![EngineCrash {
        at_s: toml::Spanned::new(0..0, at_s),
        down_s: 30.0,
    }];
}

/// The scenario with no crash and no expectations, and the moment just after
/// vm-01's snapshot is taken there (before the engine tags it).
fn just_after_vm01_snapshot() -> (Scenario, f64) {
    let mut s = scenario();
    s.engine_crashes.clear();
    s.expect = Default::default();
    let (calm, _) = abd::run_and_check(&s, s.seed);
    let snapshot = calm
        .events
        .iter()
        .find(|e| e.text.starts_with("VM.snapshot") && e.text.contains("\"vm-01\""))
        .expect("vm-01 is snapshotted");
    (s, snapshot.at.as_ms() as f64 / 1000.0 + 0.001)
}

#[test]
fn a_snapshot_taken_just_before_the_crash_is_found_by_its_announced_name() {
    let (mut s, crash_s) = just_after_vm01_snapshot();
    // The snapshot exists; the engine has not tagged it yet when it dies.
    crash_at(&mut s, crash_s);
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "{}", summary.text());
    let log = engine_log_texts(&out);
    assert!(
        log.iter().any(|l| l
            .contains("removed snapshot \"abd-restart nightly vm-01 #1\" of the interrupted run")),
        "the untagged snapshot was claimed through the journal: {log:#?}"
    );
    let nightly = &out.jobs[0].report;
    let vm01 = nightly.vms.iter().find(|v| v.vm == "vm-01").unwrap();
    assert_eq!(vm01.status, VmStatus::Warn, "started over, and said so");
    assert_eq!(vm01.restarts, 1);
}

#[test]
fn an_announced_snapshot_that_cannot_be_claimed_at_restart_is_claimed_later() {
    let (mut s, crash_s) = just_after_vm01_snapshot();
    crash_at(&mut s, crash_s);
    // While the new engine closes the run, the pool refuses to change other_config.
    s.faults.push(
        toml::from_str(&format!(
            r#"
            kind = "xapi_error"
            pool = "lab"
            method = "VM.add_to_other_config"
            error = ["INTERNAL_ERROR", "the toolstack is busy"]
            from_s = {crash_s}
            count = 1
            "#
        ))
        .unwrap(),
    );
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "nothing left behind: {}", summary.text());
    let log = engine_log_texts(&out);
    let name = "\"abd-restart nightly vm-01 #1\"";
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("Snapshot {name} could not be claimed"))),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("removed leftover snapshot {name} (attempt 2)"))),
        "claimed and removed in the background: {log:#?}"
    );
}

#[test]
fn vms_done_before_the_crash_are_not_processed_again() {
    let s = scenario();
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "{}", summary.text());
    let nightly = &out.jobs[0].report;
    assert_eq!(
        nightly.vms.len(),
        10,
        "every VM once in the whole job's report"
    );
    for vm in &nightly.vms {
        let snapshots = out
            .events
            .iter()
            .filter(|e| e.text.starts_with(&format!("VM.snapshot {:?} ", vm.vm)))
            .count();
        let started_over = nightly.log.lines.iter().any(|l| {
            l.vm.as_deref() == Some(vm.vm.as_str()) && l.text.starts_with("Starting over")
        });
        if started_over {
            // A cut-short turn may have died before or after its snapshot.
            assert!(vm.restarts >= 1, "{}: a restart", vm.vm);
            assert!(
                (1..=1 + vm.restarts as usize).contains(&snapshots),
                "{}: {snapshots} snapshots for {} restarts",
                vm.vm,
                vm.restarts
            );
        } else {
            assert_eq!((snapshots, vm.restarts), (1, 0), "{}: done once", vm.vm);
        }
    }
    let interrupted = out
        .engine_log
        .lines
        .iter()
        .filter(|l| l.text.contains("was interrupted: the engine stopped"))
        .count();
    assert_eq!(interrupted, 2, "each crash's run is closed once");
    assert!(
        !nightly
            .log
            .lines
            .iter()
            .any(|l| l.text.contains("in progress")),
        "no run is left in progress"
    );
}

/// Runs the scenario with the engine dying 1 ms after the first event that
/// `matches` in a calm run: in the middle of whatever the engine does next.
fn crash_just_after(matches: impl Fn(&str) -> bool) -> (abd::runner::RunOutput, Vec<String>) {
    crash_in_just_after(scenario(), matches)
}

/// [`crash_just_after`] in another scenario.
fn crash_in_just_after(
    mut s: Scenario,
    matches: impl Fn(&str) -> bool,
) -> (abd::runner::RunOutput, Vec<String>) {
    s.engine_crashes.clear();
    s.expect = Default::default();
    let (calm, _) = abd::run_and_check(&s, s.seed);
    let event = calm
        .events
        .iter()
        .find(|e| matches(&e.text))
        .expect("the calm run has the event");
    crash_at(&mut s, event.at.as_ms() as f64 / 1000.0 + 0.001);
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "{}", summary.text());
    let log = out
        .engine_log
        .lines
        .iter()
        .map(|l| l.text.clone())
        .collect();
    (out, log)
}

#[test]
fn a_delegate_disk_left_by_a_crash_in_teardown_is_removed() {
    // The delegate VM is destroyed; its own disk would be next.
    let (_, log) = crash_just_after(|e| e.starts_with("VM.destroy \"ABD 1\""));
    assert!(
        log.iter()
            .any(|l| l.contains("removed leftover disk \"abd-appliance system disk\"")),
        "{log:#?}"
    );
}

#[test]
fn a_snapshot_disk_left_by_a_crash_in_snapshot_removal_is_removed() {
    let (_, log) =
        crash_just_after(|e| e.starts_with("VM.destroy \"abd-restart nightly vm-01 #1\""));
    assert!(
        log.iter()
            .any(|l| l.contains("removed leftover disk \"vm-01 disk 0\"")),
        "{log:#?}"
    );
}

#[test]
fn a_leftover_that_resists_at_start_is_retried_until_gone() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/leftovers.toml");
    let mut s = Scenario::load(&path).unwrap();
    // The pool refuses the first two destroys: at start, and at the first retry.
    s.faults.push(
        toml::from_str(
            r#"
            kind = "xapi_error"
            pool = "lab"
            method = "VM.destroy"
            error = ["INTERNAL_ERROR", "the toolstack is busy"]
            count = 2
            "#,
        )
        .unwrap(),
    );
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "{}", summary.text());
    let log = engine_log_texts(&out);
    assert!(
        log.iter()
            .any(|l| l.contains("could not be removed") && l.contains("retrying in 30.0 s")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("reclaimed leftover delegate \"ABD 7\"")
                && l.contains("(attempt 3)")),
        "{log:#?}"
    );
}

#[test]
fn a_vm_committed_just_before_the_crash_is_not_backed_up_again() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/engine-restart-data.toml");
    let mut s = Scenario::load(&path).unwrap();
    s.engine_crashes.clear();
    s.expect = Default::default();
    let (calm, _) = abd::run_and_check(&s, s.seed);
    // The engine dies 1 ms after the first commit: the version is whole in
    // the store, but the VM's turn (snapshot removal, teardown) is not over.
    let commit = calm.jobs[0]
        .report
        .log
        .lines
        .iter()
        .find(|l| l.text.contains("committed to the data store"))
        .expect("the calm run commits versions");
    let vm = commit.vm.clone().expect("a VM's line");
    crash_at(&mut s, commit.at_ms as f64 / 1000.0 + 0.001);
    let (out, summary) = abd::run_and_check(&s, s.seed);
    assert!(summary.ok, "{}", summary.text());
    let lines: Vec<&str> = out.jobs[0]
        .report
        .log
        .lines
        .iter()
        .map(|l| l.text.as_str())
        .collect();
    let kept =
        format!("{vm}: version 1 was committed before the engine stopped; not backed up again");
    assert!(lines.contains(&kept.as_str()), "{lines:#?}");
    let commits = |out: &abd::runner::RunOutput| {
        out.jobs[0]
            .report
            .log
            .lines
            .iter()
            .filter(|l| l.vm.as_deref() == Some(&vm) && l.text.starts_with("Version "))
            .count()
    };
    assert_eq!(commits(&out), 1, "one version of {vm}, as in the calm run");
    assert_eq!(commits(&calm), 1);
    let outcome = out.jobs[0].report.vms.iter().find(|o| o.vm == vm).unwrap();
    assert_eq!(outcome.status, VmStatus::Ok);
    // The leftover snapshot's disk was the version's CBT base: reclaim kept
    // it as CBT metadata, so the next night reads only changed blocks.
    let next_night: Vec<&str> = out.jobs[1]
        .report
        .log
        .lines
        .iter()
        .filter(|l| l.vm.as_deref() == Some(&vm))
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        next_night.iter().any(|l| l.contains("blocks changed")),
        "{next_night:#?}"
    );
    assert!(
        !next_night.iter().any(|l| l.contains("full read")),
        "{next_night:#?}"
    );
}

#[test]
fn a_replica_vm_created_just_before_the_crash_is_adopted_not_made_twice() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/replication.toml");
    let s = Scenario::load(&path).unwrap();
    let (out, _) = crash_in_just_after(s, |e| {
        e.starts_with("VM.create") && e.ends_with("\"app-01 (replica)\"")
    });
    let log: Vec<&str> = out
        .jobs
        .iter()
        .flat_map(|j| &j.report.log.lines)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.contains("Adopting replica VM \"app-01 (replica)\"")),
        "{log:#?}"
    );
    let dr = &out.pools["dr"];
    let mut names: Vec<&str> = dr.replica_vms.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["app-01 (replica)", "app-02 (replica)", "app-03 (replica)"],
        "one replica VM per VM"
    );
    let adopted = &dr
        .replica_vms
        .iter()
        .find(|r| r.name.starts_with("app-01"))
        .unwrap();
    assert!(adopted.start_blocked.is_some(), "{adopted:?}");
    assert_eq!(adopted.disks.len(), 1, "{adopted:?}");
}
