//! Invariants checked after every run, from the simulator's state and the
//! engine's reports: nothing leaked, no address held twice, concurrency
//! bounds kept, every VM accounted for, statuses consistent with the logs.

use crate::runner::RunOutput;
use crate::scenario::{JobKind, Scenario};
use engine::job::VmStatus;
use engine::joblog::JobStatus;

/// Every broken invariant, in words (empty when the run is sound).
pub fn check(scenario: &Scenario, out: &RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(why) = &out.stopped_at_limit {
        problems.push(format!("the run did not end by itself: {why}"));
    }
    if let Some(e) = &out.engine_error {
        problems.push(format!("engine did not start: {e}"));
        return problems;
    }
    if let Some(data) = &out.data {
        problems.extend(data.problems.iter().cloned());
    }
    for (pool, end) in &out.pools {
        if !end.delegates_left.is_empty() {
            problems.push(format!(
                "pool {pool}: delegates left behind: {:?}",
                end.delegates_left
            ));
        }
        if !end.snapshots_left.is_empty() {
            problems.push(format!(
                "pool {pool}: snapshots left behind: {:?}",
                end.snapshots_left
            ));
        }
        if end.cbt_bases > end.cbt_disks {
            problems.push(format!(
                "pool {pool}: {} CBT bases kept for {} CBT-enabled disks (old bases leaked)",
                end.cbt_bases, end.cbt_disks
            ));
        }
        if !end.orphan_vdis.is_empty() {
            problems.push(format!(
                "pool {pool}: VDIs left without a VM: {:?}",
                end.orphan_vdis
            ));
        }
        if end.dhcp_leases + end.static_leases > 0 {
            problems.push(format!(
                "pool {pool}: addresses still leased: {} DHCP, {} static",
                end.dhcp_leases, end.static_leases
            ));
        }
        for c in &end.delegate_conflicts {
            problems.push(format!(
                "pool {pool}: {} leased twice at {}: {} and {}",
                c.ip, c.at, c.holder.0, c.newcomer.0
            ));
        }
        if end.templates > 1 {
            problems.push(format!("pool {pool}: {} delegate templates", end.templates));
        }
    }
    problems.extend(
        out.accounting
            .violations()
            .iter()
            .map(|v| format!("accounting: {v}")),
    );
    for (job, run) in scenario.jobs.iter().zip(&out.jobs) {
        let report = &run.report;
        if job.kind == JobKind::Diag {
            continue;
        }
        let expected = scenario.job_vms(job);
        let got: Vec<&str> = report.vms.iter().map(|v| v.vm.as_str()).collect();
        if got != expected {
            problems.push(format!(
                "job {}: VMs accounted {got:?}, expected {expected:?}",
                job.name
            ));
        }
        for vm in &report.vms {
            if vm.status == VmStatus::Failed && vm.reason.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "job {}: VM {} failed without a reason",
                    job.name, vm.vm
                ));
            }
        }
        let count = |s| report.vms.iter().filter(|v| v.status == s).count();
        let status = JobStatus::from_counts(
            count(VmStatus::Ok),
            count(VmStatus::Warn),
            count(VmStatus::Failed),
        );
        let cancelled_vms = report.vms.iter().any(|v| v.cancelled);
        if report.status == JobStatus::Cancelled && !cancelled_vms {
            problems.push(format!(
                "job {}: status cancelled but none of its VMs was",
                job.name
            ));
        } else if report.status != JobStatus::Cancelled && status != report.status {
            problems.push(format!(
                "job {}: status {} but its VMs say {status}",
                job.name, report.status
            ));
        }
        let last = report
            .log
            .lines
            .last()
            .map(|l| l.text.as_str())
            .unwrap_or("");
        if !last.contains(&format!("finished: {}", report.status)) {
            problems.push(format!(
                "job {}: log does not end with its final status",
                job.name
            ));
        }
    }
    problems.extend(snapshot_counts(scenario, out));
    problems.extend(convergence(scenario, out));
    problems
}

/// Liveness, for scenarios with `[swarm]`: once the last fault healed, every
/// job is over within `converge_within_s`.
fn convergence(scenario: &Scenario, out: &RunOutput) -> Vec<String> {
    let Some(deadline_s) = scenario.converge_deadline_s() else {
        return Vec::new();
    };
    out.jobs
        .iter()
        .filter(|run| run.report.finished_ms as f64 > deadline_s * 1000.0)
        .map(|run| {
            format!(
                "job {}: still running at {deadline_s:.0} s, after every fault healed (no convergence)",
                run.report.name
            )
        })
        .collect()
}

/// Each VM is snapshotted at most once per job that lists it (plus once per
/// delegate lost mid-work, which starts the VM over), and at least once when
/// it was processed.
fn snapshot_counts(scenario: &Scenario, out: &RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    let mut listed: std::collections::BTreeMap<(String, String), (usize, usize)> =
        Default::default();
    for (job, run) in scenario.jobs.iter().zip(&out.jobs) {
        if matches!(job.kind, JobKind::Restore | JobKind::Replicate) {
            continue; // they take no snapshot
        }
        for vm in &run.report.vms {
            let e = listed
                .entry((job.pool.get_ref().clone(), vm.vm.clone()))
                .or_default();
            e.0 += 1 + vm.restarts as usize;
            if vm.status != VmStatus::Failed {
                e.1 += 1;
            }
        }
    }
    for ((pool, vm), (jobs, processed)) in listed {
        let needle = format!("VM.snapshot {vm:?} ");
        let snaps = out
            .events
            .iter()
            .filter(|e| e.pool == pool && e.text.starts_with(&needle))
            .count();
        if snaps > jobs {
            problems.push(format!(
                "pool {pool}: VM {vm} snapshotted {snaps} times, {jobs} allowed by its jobs and restarts"
            ));
        }
        if snaps < processed {
            problems.push(format!(
                "pool {pool}: VM {vm} reported processed {processed} times but snapshotted {snaps}"
            ));
        }
    }
    problems
}
