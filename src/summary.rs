//! The run summary: built once from a run's output, printed as text or as
//! JSON with stable keys, and checked against the scenario's `[expect]`.

use crate::runner::RunOutput;
use crate::scenario::Scenario;
use engine::joblog::format_clock;
use serde::Serialize;
use std::collections::BTreeMap;

/// One job in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub name: String,
    pub pool: String,
    pub kind: &'static str,
    pub status: String,
    pub concurrency: usize,
    pub vms: usize,
    pub vms_ok: usize,
    pub vms_warn: usize,
    pub vms_failed: usize,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// One pool in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct PoolSummary {
    pub delegates_created: usize,
    pub delegates_destroyed: usize,
    pub delegates_reclaimed: usize,
    pub peak_delegates: usize,
    pub delegates_left: usize,
    pub addresses_leased: usize,
    pub addresses_left: usize,
    pub templates_deployed: usize,
}

/// The whole run, with stable keys.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub ok: bool,
    pub jobs: Vec<JobSummary>,
    pub pools: BTreeMap<String, PoolSummary>,
    pub vms_processed: usize,
    pub vms_failed: usize,
    pub delegates_created: usize,
    pub delegates_left: usize,
    pub addresses_leased: usize,
    pub addresses_left: usize,
    pub peak_delegates: BTreeMap<String, usize>,
    pub xapi_calls: u64,
    /// How many times a `[[fault]]` fired.
    pub faults_injected: u64,
    pub events: usize,
    pub event_log_digest: String,
    pub sim_duration_ms: u64,
    pub wall_ms: u64,
    pub sim_seconds_per_wall_second: f64,
    /// The data store at the end (scenarios with a data store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<crate::data_check::DataEnd>,
    pub check_failures: Vec<String>,
    pub expect_failures: Vec<String>,
}

impl Summary {
    /// Summarises a run, with the checker's and the expectations' findings.
    pub fn new(scenario: &Scenario, out: &RunOutput, check_failures: Vec<String>) -> Summary {
        let jobs: Vec<JobSummary> = scenario
            .jobs
            .iter()
            .zip(&out.jobs)
            .map(|(job, run)| {
                let r = &run.report;
                let count = |s| r.vms.iter().filter(|v| v.status == s).count();
                JobSummary {
                    name: r.name.clone(),
                    pool: r.pool.clone(),
                    kind: match job.kind {
                        crate::scenario::JobKind::Backup => "backup",
                        crate::scenario::JobKind::Diag => "diag",
                        crate::scenario::JobKind::Restore => "restore",
                        crate::scenario::JobKind::Replicate => "replicate",
                    },
                    status: serde_plain(&r.status),
                    concurrency: job.concurrency,
                    vms: r.vms.len(),
                    vms_ok: count(engine::job::VmStatus::Ok),
                    vms_warn: count(engine::job::VmStatus::Warn),
                    vms_failed: count(engine::job::VmStatus::Failed),
                    started_ms: r.started_ms,
                    finished_ms: r.finished_ms,
                }
            })
            .collect();
        let pools: BTreeMap<String, PoolSummary> = out
            .pools
            .iter()
            .map(|(name, end)| {
                let c = out.accounting.pool(name);
                let summary = PoolSummary {
                    delegates_created: c.created,
                    delegates_destroyed: c.destroyed,
                    delegates_reclaimed: c.reclaimed,
                    peak_delegates: c.peak_live,
                    delegates_left: end.delegates_left.len(),
                    addresses_leased: end.addresses_leased,
                    addresses_left: end.dhcp_leases + end.static_leases,
                    templates_deployed: end.templates_deployed,
                };
                (name.clone(), summary)
            })
            .collect();
        let sim_ms = out.sim_end.as_ms();
        let wall_ms = out.wall.as_millis() as u64;
        let mut summary = Summary {
            scenario: out.scenario.clone(),
            seed: out.seed,
            ok: false,
            vms_processed: jobs.iter().map(|j| j.vms_ok + j.vms_warn).sum(),
            vms_failed: jobs.iter().map(|j| j.vms_failed).sum(),
            jobs,
            delegates_created: pools.values().map(|p| p.delegates_created).sum(),
            delegates_left: pools.values().map(|p| p.delegates_left).sum(),
            addresses_leased: pools.values().map(|p| p.addresses_leased).sum(),
            addresses_left: pools.values().map(|p| p.addresses_left).sum(),
            peak_delegates: pools
                .iter()
                .map(|(n, p)| (n.clone(), p.peak_delegates))
                .collect(),
            pools,
            xapi_calls: out.xapi_calls,
            faults_injected: out.faults_injected,
            events: out.events.len(),
            event_log_digest: out.digest.clone(),
            sim_duration_ms: sim_ms,
            wall_ms,
            sim_seconds_per_wall_second: if out.wall.as_secs_f64() > 0.0 {
                (sim_ms as f64 / 1000.0 / out.wall.as_secs_f64()).round()
            } else {
                0.0
            },
            data: out.data.clone(),
            check_failures,
            expect_failures: Vec::new(),
        };
        summary.expect_failures = expectations(scenario, out, &summary);
        summary.ok = summary.check_failures.is_empty() && summary.expect_failures.is_empty();
        summary
    }

    /// The summary as people read it.
    pub fn text(&self) -> String {
        let mut s = format!("Scenario {} (seed {})\n", self.scenario, self.seed);
        s += "Jobs:\n";
        // Columns as wide as the longest name, so long names keep them aligned.
        let widest = |len: fn(&JobSummary) -> usize, at_least: usize| {
            self.jobs.iter().map(len).max().unwrap_or(0).max(at_least)
        };
        let name_width = widest(|j| j.name.len(), 16);
        let pool_width = widest(|j| j.pool.len(), 10);
        for j in &self.jobs {
            s += &format!(
                "  {:<name_width$} {:<9} pool {:<pool_width$} {:>4} VMs at {}  {:<22} ok {} warn {} failed {}  {} -> {}\n",
                j.name,
                j.kind,
                j.pool,
                j.vms,
                j.concurrency,
                j.status.replace('_', " "),
                j.vms_ok,
                j.vms_warn,
                j.vms_failed,
                format_clock(j.started_ms),
                format_clock(j.finished_ms)
            );
        }
        if let Some(d) = &self.data {
            s += &format!(
                "Data store: {} versions, {} logical, {} stored ({:.1}x); {} disks restored byte-identical; {} restored VDIs checked\n",
                d.versions,
                engine::joblog::format_bytes(d.logical_bytes),
                engine::joblog::format_bytes(d.stored_bytes),
                d.logical_bytes as f64 / d.stored_bytes.max(1) as f64,
                d.disks_restored,
                d.restored_vdis_checked
            );
            if !d.damaged_versions.is_empty() {
                s += &format!(
                    "  damaged at rest and not mended (restore refuses them): {}\n",
                    d.damaged_versions.join(", ")
                );
            }
        }
        s += "Pools:\n";
        for (name, p) in &self.pools {
            s += &format!(
                "  {name}: delegates created {}, destroyed {}, reclaimed {}, peak {}, left {}; addresses leased {}, left {}; templates deployed {}\n",
                p.delegates_created,
                p.delegates_destroyed,
                p.delegates_reclaimed,
                p.peak_delegates,
                p.delegates_left,
                p.addresses_leased,
                p.addresses_left,
                p.templates_deployed
            );
        }
        s += &format!(
            "VMs processed {}, failed {}; XAPI calls {}\n",
            self.vms_processed, self.vms_failed, self.xapi_calls
        );
        if self.faults_injected > 0 {
            s += &format!("Faults injected: {}\n", self.faults_injected);
        }
        s += &format!(
            "Simulated {} in {:.3} s wall ({} simulated s per wall s)\n",
            format_clock(self.sim_duration_ms),
            self.wall_ms as f64 / 1000.0,
            self.sim_seconds_per_wall_second
        );
        s += &format!(
            "Event log: {} events, digest {}\n",
            self.events, self.event_log_digest
        );
        match self.check_failures.as_slice() {
            [] => s += "Checks: all passed\n",
            failures => {
                s += "Checks FAILED:\n";
                failures.iter().for_each(|f| s += &format!("  - {f}\n"));
            }
        }
        match self.expect_failures.as_slice() {
            [] => s += "Expectations: all held\n",
            failures => {
                s += "Expectations NOT MET:\n";
                failures.iter().for_each(|f| s += &format!("  - {f}\n"));
            }
        }
        s
    }
}

fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What the scenario's `[expect]` section asks that did not happen.
fn expectations(scenario: &Scenario, out: &RunOutput, s: &Summary) -> Vec<String> {
    let e = &scenario.expect;
    let mut failures = Vec::new();
    for (job, want) in &e.jobs {
        let got = s
            .jobs
            .iter()
            .find(|j| &j.name == job)
            .map(|j| j.status.clone())
            .unwrap_or_default();
        if &got != want {
            failures.push(format!("job {job}: status {got}, expected {want}"));
        }
    }
    for (pool, want) in &e.peak_delegates {
        let got = s.peak_delegates.get(pool).copied().unwrap_or(0);
        if got != *want {
            failures.push(format!(
                "pool {pool}: peak delegates {got}, expected {want}"
            ));
        }
    }
    let mut exact = |name: &str, want: Option<usize>, got: usize| {
        if let Some(want) = want
            && got != want
        {
            failures.push(format!("{name}: {got}, expected {want}"));
        }
    };
    exact(
        "delegates_created",
        e.delegates_created,
        s.delegates_created,
    );
    exact("delegates_left", e.delegates_left, s.delegates_left);
    exact("addresses_left", e.addresses_left, s.addresses_left);
    exact("vms_failed", e.vms_failed, s.vms_failed);
    let data = out.data.clone().unwrap_or_default();
    exact("data_versions", e.data_versions, data.versions);
    exact("restored_vdis", e.restored_vdis, data.restored_vdis_checked);
    exact(
        "replica_vms",
        e.replica_vms,
        out.pools.values().map(|p| p.replica_vms.len()).sum(),
    );
    exact(
        "data_damaged_versions",
        e.data_damaged_versions,
        data.damaged_versions.len(),
    );
    exact(
        "reclaimed",
        e.reclaimed,
        s.pools.values().map(|p| p.delegates_reclaimed).sum(),
    );
    if let Some(max) = e.delegates_created_at_most
        && s.delegates_created > max
    {
        failures.push(format!(
            "delegates_created: {}, expected at most {max}",
            s.delegates_created
        ));
    }
    for (pool, want) in &e.diag_passed {
        let got = out
            .jobs
            .iter()
            .filter_map(|j| j.diag.as_ref())
            .find(|d| &d.pool == pool)
            .map(|d| d.passed);
        if got != Some(*want) {
            failures.push(format!(
                "pool {pool}: diagnostic passed = {got:?}, expected {want}"
            ));
        }
    }
    for (pool, want) in &e.templates_deployed {
        let got = s.pools.get(pool).map(|p| p.templates_deployed).unwrap_or(0);
        if got != *want {
            failures.push(format!(
                "pool {pool}: templates deployed {got}, expected {want}"
            ));
        }
    }
    for (pool, names) in &e.vms_present {
        let present = out
            .pools
            .get(pool)
            .map(|p| p.vm_names.as_slice())
            .unwrap_or_default();
        for name in names.iter().filter(|n| !present.contains(n)) {
            failures.push(format!("pool {pool}: VM {name:?} is gone"));
        }
    }
    if let Some(max) = e.data_stored_fraction_at_most {
        let fraction = data.stored_bytes as f64 / data.logical_bytes.max(1) as f64;
        if fraction > max {
            failures.push(format!(
                "data stored fraction {fraction:.3}, expected at most {max}"
            ));
        }
    }
    for needle in &e.log_contains {
        let found = out
            .jobs
            .iter()
            .flat_map(|j| j.report.log.lines.iter())
            .chain(out.engine_log.lines.iter())
            .any(|l| l.to_string().contains(needle.as_str()));
        if !found {
            failures.push(format!("no log line contains {needle:?}"));
        }
    }
    failures
}
