//! Runs a scenario: builds the simulated world, starts the real engine against
//! it on a paused, auto-advancing tokio clock, runs the jobs and actions at
//! their times, and collects what happened.

use crate::scenario::{Action, JobKind, Scenario};
use crate::sim_link::{SharedSim, SimAgent, SimClock, SimTransport};
use engine::accounting::Accounting;
use engine::diag::DiagReport;
use engine::job::JobReport;
use engine::joblog::{JobLog, JobStatus};
use engine::xapi::Credentials;
use engine::{Engine, JobSpec, PoolConnection};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_sim::Sim;
use xapi_sim::log::Event;
use xapi_sim::model::AddressConflict;
use xapi_sim::time::SimTime;

/// One job's result (a diagnostic also carries its steps).
#[derive(Clone, Debug)]
pub struct JobRun {
    pub report: JobReport,
    pub diag: Option<DiagReport>,
}

/// What is left in a pool at the end of a run, read from the simulator.
#[derive(Clone, Debug, Default)]
pub struct PoolEnd {
    /// VMs tagged with our engine id that are not the template.
    pub delegates_left: Vec<String>,
    /// Our templates in the pool.
    pub templates: usize,
    /// Snapshots still present.
    pub snapshots_left: Vec<String>,
    /// VDIs no VBD points at.
    pub orphan_vdis: Vec<String>,
    /// DHCP leases still active.
    pub dhcp_leases: usize,
    /// Static addresses the engine still holds.
    pub static_leases: usize,
    /// Addresses delegates were given during the run.
    pub addresses_leased: usize,
    /// Template imports during the run.
    pub templates_deployed: usize,
    /// Address conflicts between two of our delegates.
    pub delegate_conflicts: Vec<AddressConflict>,
    /// Names of every VM in the pool at the end.
    pub vm_names: Vec<String>,
}

/// Everything a run produced.
pub struct RunOutput {
    pub scenario: String,
    pub seed: u64,
    pub jobs: Vec<JobRun>,
    pub engine_log: JobLog,
    pub accounting: Accounting,
    pub events: Vec<Event>,
    pub digest: String,
    pub sim_end: SimTime,
    pub wall: Duration,
    pub xapi_calls: u64,
    pub pools: BTreeMap<String, PoolEnd>,
    /// Set when the engine could not even start.
    pub engine_error: Option<String>,
}

/// Runs `scenario` with `seed`. Deterministic: same inputs, same output
/// (apart from `wall`).
pub fn run(scenario: &Scenario, seed: u64) -> RunOutput {
    let wall_start = std::time::Instant::now();
    let sim = Sim::new(&scenario.world(), seed).expect("the scenario was checked");
    let sim: SharedSim = Arc::new(Mutex::new(sim));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let (jobs, engine_log, accounting, xapi_calls, static_leases, engine_error) =
        runtime.block_on(drive(scenario, Arc::clone(&sim)));
    let mut sim = Arc::try_unwrap(sim)
        .ok()
        .expect("every link is dropped with the runtime")
        .into_inner()
        .expect("simulator lock poisoned");
    let end = sim.now();
    sim.advance_to(end);
    let pools = pool_ends(scenario, &sim, &static_leases);
    let events = sim.events().to_vec();
    let digest = digest(&events, &jobs, &engine_log);
    RunOutput {
        scenario: scenario.name.clone(),
        seed,
        jobs,
        engine_log,
        accounting,
        events,
        digest,
        sim_end: end,
        wall: wall_start.elapsed(),
        xapi_calls,
        pools,
        engine_error,
    }
}

type Driven = (
    Vec<JobRun>,
    JobLog,
    Accounting,
    u64,
    BTreeMap<String, usize>,
    Option<String>,
);

async fn drive(scenario: &Scenario, sim: SharedSim) -> Driven {
    let clock = SimClock::start();
    let connections = scenario
        .pools
        .iter()
        .map(|p| {
            let pool = sim
                .lock()
                .expect("simulator lock")
                .pool_id(&p.name)
                .expect("pool exists");
            PoolConnection {
                config: scenario.pool_config(&p.name),
                transport: Arc::new(SimTransport {
                    sim: Arc::clone(&sim),
                    pool,
                    clock,
                }),
                agent: Arc::new(SimAgent {
                    sim: Arc::clone(&sim),
                    pool,
                    clock,
                }),
                credentials: Credentials {
                    user: scenario.credentials.user.clone(),
                    password: scenario.credentials.password.clone(),
                },
            }
        })
        .collect();
    let engine = match Engine::start(scenario.engine.clone(), connections).await {
        Ok(engine) => Arc::new(engine),
        Err(e) => {
            return (
                Vec::new(),
                JobLog::default(),
                Accounting::default(),
                0,
                BTreeMap::new(),
                Some(e.to_string()),
            );
        }
    };
    let mut actions = Vec::new();
    for action in scenario.actions.clone() {
        let sim = Arc::clone(&sim);
        let engine = Arc::clone(&engine);
        let at = Duration::from_secs_f64(action.at_s);
        actions.push(tokio::spawn(async move {
            tokio::time::sleep_until(clock.instant_at(at)).await;
            perform(&action, &sim, &engine, clock).await;
        }));
    }
    let mut tasks = Vec::new();
    for job in &scenario.jobs {
        let engine = Arc::clone(&engine);
        let spec = JobSpec {
            name: job.name.clone(),
            pool: job.pool.get_ref().clone(),
            vms: scenario.job_vms(job),
            concurrency: job.concurrency,
        };
        let kind = job.kind;
        let start = Duration::from_secs_f64(job.start_s);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(clock.instant_at(start)).await;
            match kind {
                JobKind::Backup => JobRun {
                    report: engine.run_job(&spec).await,
                    diag: None,
                },
                JobKind::Diag => run_diag(&engine, &spec).await,
            }
        }));
    }
    let mut jobs = Vec::new();
    for task in tasks {
        jobs.push(task.await.expect("job tasks do not panic"));
    }
    for action in actions {
        action.await.expect("actions do not panic");
    }
    // Persistent delegates must be gone once the idle limit has passed.
    let idle_wait = scenario
        .pools
        .iter()
        .map(|p| scenario.pool_config(&p.name))
        .filter(|c| c.persistent)
        .map(|c| c.idle_limit() + Duration::from_secs(120))
        .max();
    if let Some(wait) = idle_wait {
        tokio::time::sleep(wait).await;
    }
    let static_leases = engine
        .pools()
        .iter()
        .map(|(name, p)| (name.clone(), p.leased_addresses().len()))
        .collect();
    engine.shutdown().await;
    (
        jobs,
        engine.log(),
        engine.accounting(),
        engine.xapi_calls(),
        static_leases,
        None,
    )
}

/// Performs an operator action. Refusals are logged by the engine, not raised:
/// a scenario may expect an action to be refused.
async fn perform(action: &Action, sim: &SharedSim, engine: &Engine, clock: SimClock) {
    let pool = action.pool.get_ref();
    match action.kind.get_ref().as_str() {
        "move_vm_disks" => {
            let mut s = sim.lock().expect("simulator lock");
            let id = s.pool_id(pool).expect("checked pool");
            let (vm, sr) = (
                action.vm.as_deref().unwrap_or_default(),
                action.sr.as_deref().unwrap_or_default(),
            );
            if let Err(e) = s.move_vm_disks(id, clock.now(), vm, sr) {
                tracing::warn!("action move_vm_disks failed: {e}");
            }
        }
        "template_delete" => {
            let _ = engine.template_delete(pool).await;
        }
        "template_redeploy" => {
            let _ = engine.template_redeploy(pool).await;
        }
        other => unreachable!("scenario check rejects action {other:?}"),
    }
}

async fn run_diag(engine: &Engine, spec: &JobSpec) -> JobRun {
    let diag = engine.run_diag(&spec.pool).await.expect("checked pool");
    let start = diag.log.lines.first().map(|l| l.at_ms).unwrap_or(0);
    let end = diag.log.lines.last().map(|l| l.at_ms).unwrap_or(0);
    let report = JobReport {
        name: spec.name.clone(),
        pool: spec.pool.clone(),
        concurrency: 1,
        status: if diag.passed {
            JobStatus::Success
        } else {
            JobStatus::Failed
        },
        vms: Vec::new(),
        log: diag.log.clone(),
        started_ms: start,
        finished_ms: end,
    };
    JobRun {
        report,
        diag: Some(diag),
    }
}

fn pool_ends(
    scenario: &Scenario,
    sim: &Sim,
    static_leases: &BTreeMap<String, usize>,
) -> BTreeMap<String, PoolEnd> {
    let engine_id = &scenario.engine.engine_id;
    let ours = |oc: &xapi_proto::records::StringMap| engine::tags::has_engine_id(oc, engine_id);
    let mut out = BTreeMap::new();
    for (_, m) in sim.pools() {
        let vms = m.vms.values();
        let end = PoolEnd {
            delegates_left: vms
                .clone()
                .filter(|v| engine::tags::is_our_disposable_vm(v, engine_id))
                .map(|v| v.name_label.clone())
                .collect(),
            templates: vms
                .clone()
                .filter(|v| engine::tags::is_our_template(v, engine_id))
                .count(),
            snapshots_left: vms
                .clone()
                .filter(|v| v.is_a_snapshot)
                .map(|v| v.name_label.clone())
                .collect(),
            orphan_vdis: m
                .vdis
                .values()
                .filter(|d| d.vbds.is_empty())
                .map(|d| format!("{} {:?}", d.uuid, d.name_label))
                .collect(),
            dhcp_leases: m
                .dhcp
                .values()
                .map(|s| s.active_leases(sim.now()).len())
                .sum(),
            static_leases: static_leases.get(&m.name).copied().unwrap_or(0),
            addresses_leased: count_events(sim, &m.name, "wrote vm-data/assigned-ip"),
            templates_deployed: count_events(sim, &m.name, "VM.import "),
            delegate_conflicts: m
                .address_conflicts
                .iter()
                .filter(|c| ours(&c.holder.1) && ours(&c.newcomer.1))
                .cloned()
                .collect(),
            vm_names: m.vms.values().map(|v| v.name_label.clone()).collect(),
        };
        out.insert(m.name.clone(), end);
    }
    out
}

fn count_events(sim: &Sim, pool: &str, needle: &str) -> usize {
    sim.events()
        .iter()
        .filter(|e| e.pool == pool && e.text.contains(needle))
        .count()
}

/// BLAKE3 over the simulator's event log, then every job log, then the engine log.
fn digest(events: &[Event], jobs: &[JobRun], engine_log: &JobLog) -> String {
    let mut h = blake3::Hasher::new();
    for e in events {
        h.update(e.to_string().as_bytes());
        h.update(b"\n");
    }
    for job in jobs {
        h.update(format!("job {}\n", job.report.name).as_bytes());
        for line in &job.report.log.lines {
            h.update(line.to_string().as_bytes());
            h.update(b"\n");
        }
    }
    for line in &engine_log.lines {
        h.update(line.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}
