//! Runs a scenario: builds the simulated world, starts the real engine against
//! it on a paused, auto-advancing tokio clock, runs the jobs and actions at
//! their times, and collects what happened.

use crate::scenario::{Action, JobKind, Scenario};
use crate::sim_agents::{SimAgentNet, StoreService};
use crate::sim_link::{SharedSim, SimClock, SimTransport};
use engine::accounting::Accounting;
use engine::agent::{AgentClient, TokenRegistry};
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
    /// VDIs our restores created (the operator's to keep), by uuid.
    pub restored_vdis: Vec<String>,
    /// Snapshot disks we keep as CBT metadata (the next backup's bases).
    pub cbt_bases: usize,
    /// Protected disks with CBT enabled (at most one base each).
    pub cbt_disks: usize,
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
    /// Our replica VMs.
    pub replica_vms: Vec<ReplicaVmEnd>,
}

/// A replica VM at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct ReplicaVmEnd {
    pub name: String,
    pub halted: bool,
    /// The message blocking `start`, if it is blocked.
    pub start_blocked: Option<String>,
    /// Uuids of its disks, by userdevice.
    pub disks: Vec<String>,
    /// Their userdevices.
    pub userdevices: Vec<String>,
    /// Names of the networks of its interfaces, by device.
    pub networks: Vec<String>,
    pub vcpus: i64,
    pub memory_static_max: i64,
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
    /// How many times a `[[fault]]` fired.
    pub faults_injected: u64,
    pub pools: BTreeMap<String, PoolEnd>,
    /// Set when the engine could not even start.
    pub engine_error: Option<String>,
    /// Set when the run reached its limit (see [`Scenario::run_limit_s`])
    /// with jobs still running: they were cancelled, and what names them.
    pub stopped_at_limit: Option<String>,
    /// The data store at the end (scenarios with `data_store = true`).
    pub data: Option<crate::data_check::DataEnd>,
    /// Chunks `chunk_corrupt` faults damaged.
    pub damaged_chunks: Vec<crate::store_faults::Damage>,
}

/// How the engine reaches the simulated pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XapiLink {
    /// Calls go straight into the simulator.
    #[default]
    InProcess,
    /// Calls go over HTTP on loopback to the simulator served as XAPI, in this encoding.
    Http(engine::xapi::Protocol),
}

/// Where simulated delegates are told the data store is (any name: the
/// simulated network routes store requests to the engine's store service).
const SIM_STORE_URL: &str = "http://abd-engine.sim:7480";

/// Runs `scenario` with `seed`, in process. Deterministic: same inputs, same
/// output (apart from `wall`).
pub fn run(scenario: &Scenario, seed: u64) -> RunOutput {
    run_with(scenario, seed, XapiLink::InProcess)
}

/// Runs `scenario` with `seed`, the engine reaching the pools through `link`.
pub fn run_with(scenario: &Scenario, seed: u64, link: XapiLink) -> RunOutput {
    let wall_start = std::time::Instant::now();
    let sim = Sim::new(&scenario.world(), seed).expect("the scenario was checked");
    let sim: SharedSim = Arc::new(Mutex::new(sim));
    let served = match link {
        XapiLink::InProcess => None,
        XapiLink::Http(protocol) => Some(ServedPools::start(scenario, &sim, protocol)),
    };
    let store_dir = scenario
        .data_store
        .then(|| tempfile::tempdir().expect("a temporary directory for the data store"));
    let mut engine_config = scenario.engine.clone();
    engine_config.store_dir = store_dir.as_ref().map(|d| d.path().join("ads"));
    // The free space of this machine's disk is not part of the scenario.
    engine_config.store_keep_free_bytes = None;
    if engine_config.store_dir.is_some() && engine_config.store_url.is_none() {
        engine_config.store_url = Some(SIM_STORE_URL.into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let damage = Arc::new(std::sync::Mutex::new(Vec::new()));
    let Driven {
        jobs,
        engine_log,
        accounting,
        xapi_calls,
        static_leases,
        engine_error,
        stopped_at_limit,
    } = runtime.block_on(drive(
        scenario,
        engine_config,
        Arc::clone(&sim),
        served.as_ref(),
        seed,
        Arc::clone(&damage),
    ));
    let damaged_chunks = std::mem::take(&mut *damage.lock().expect("damage lock poisoned"));
    drop(runtime);
    if let Some(served) = served {
        served.stop();
    }
    let mut sim = sim.lock().expect("simulator lock poisoned");
    let end = sim.now();
    sim.advance_to(end);
    let pools = pool_ends(scenario, &sim, &static_leases);
    let data = store_dir
        .map(|dir| crate::data_check::check_store(&dir.path().join("ads"), &sim, &damaged_chunks));
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
        faults_injected: sim.faults_injected(),
        pools,
        engine_error,
        stopped_at_limit,
        data,
        damaged_chunks,
    }
}

/// What driving the engines through a scenario gave.
struct Driven {
    jobs: Vec<JobRun>,
    engine_log: JobLog,
    accounting: Accounting,
    xapi_calls: u64,
    /// Static addresses each pool still had leased at the end.
    static_leases: BTreeMap<String, usize>,
    /// Set when the engine could not even start.
    engine_error: Option<String>,
    /// Set when the run reached its limit with jobs still running.
    stopped_at_limit: Option<String>,
}

/// The simulated pools served over HTTP on loopback, on a real-time runtime
/// of their own, with the simulated clock set by the callers.
pub struct ServedPools {
    io: tokio::runtime::Runtime,
    time_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Where each pool's configured master answers.
    urls: BTreeMap<String, String>,
    /// Per pool: each host's model address, and the loopback address it is
    /// served at.
    served_addresses: BTreeMap<String, Arc<BTreeMap<String, String>>>,
    options: engine::xapi::HttpOptions,
}

impl ServedPools {
    /// A fresh HTTP transport to `pool`'s configured master (each engine
    /// start connects anew, as the in-process link does).
    fn transport(&self, pool: &str) -> Arc<engine::xapi::HttpTransport> {
        let transport = engine::xapi::HttpTransport::new(&self.urls[pool], &self.options)
            .expect("a loopback URL");
        Arc::new(transport)
    }
}

impl ServedPools {
    fn start(
        scenario: &Scenario,
        sim: &SharedSim,
        protocol: engine::xapi::Protocol,
    ) -> ServedPools {
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("an I/O runtime");
        let time_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut urls = BTreeMap::new();
        let mut served_addresses = BTreeMap::new();
        for p in &scenario.pools {
            let pool = sim
                .lock()
                .expect("simulator lock")
                .pool_id(&p.name)
                .expect("pool exists");
            let clock = xapi_sim::server::ServeClock::External(Arc::clone(&time_ms));
            let server = xapi_sim::server::PoolServer::new(Arc::clone(sim), pool, clock);
            let endpoints = io
                .block_on(xapi_sim::endpoints::bind_pool(
                    server,
                    "127.0.0.1:0".parse().expect("an address"),
                ))
                .expect("loopback ports for the pool's hosts");
            urls.insert(p.name.clone(), endpoints[0].url.clone());
            let served: BTreeMap<String, String> = endpoints
                .iter()
                .filter_map(|e| {
                    let (served, _port) = e.url.strip_prefix("http://")?.rsplit_once(':')?;
                    Some((e.address.clone(), served.to_string()))
                })
                .collect();
            served_addresses.insert(p.name.clone(), Arc::new(served));
            for endpoint in endpoints {
                let (listener, app) = (endpoint.listener, endpoint.app);
                io.spawn(async move { axum::serve(listener, app).await });
            }
        }
        ServedPools {
            io,
            time_ms,
            urls,
            served_addresses,
            options: engine::xapi::HttpOptions {
                protocol,
                ..Default::default()
            },
        }
    }

    fn stop(self) {
        self.io.shutdown_background();
    }
}

/// What the engine needs to reach the pools, shared by every engine of a run.
struct Links<'a> {
    scenario: &'a Scenario,
    sim: SharedSim,
    served: Option<&'a ServedPools>,
    clock: SimClock,
    tokens: Arc<TokenRegistry>,
    store_service: StoreService,
    activity: Arc<crate::sim_link::Activity>,
}

impl Links<'_> {
    fn connections(&self) -> Vec<PoolConnection> {
        let (sim, clock) = (&self.sim, self.clock);
        self.scenario
            .pools
            .iter()
            .map(|p| {
                let pool = sim
                    .lock()
                    .expect("simulator lock")
                    .pool_id(&p.name)
                    .expect("pool exists");
                let transport: Arc<dyn engine::xapi::Transport> = match self.served {
                    None => Arc::new(SimTransport::new(
                        Arc::clone(sim),
                        pool,
                        clock,
                        Arc::clone(&self.activity),
                    )),
                    Some(served) => Arc::new(crate::sim_link::HttpLink {
                        sim: Arc::clone(sim),
                        pool,
                        clock,
                        served_time_ms: Arc::clone(&served.time_ms),
                        http: served.transport(&p.name),
                        served: Arc::clone(&served.served_addresses[&p.name]),
                        io: served.io.handle().clone(),
                        activity: Arc::clone(&self.activity),
                    }),
                };
                PoolConnection {
                    config: self.scenario.pool_config(&p.name),
                    transport,
                    agent: Arc::new(AgentClient::new(
                        Arc::new(SimAgentNet::new(
                            Arc::clone(sim),
                            pool,
                            clock,
                            Arc::clone(&self.store_service),
                        )),
                        Arc::clone(&self.tokens),
                    )),
                    credentials: Credentials {
                        user: self.scenario.credentials.user.clone(),
                        password: self.scenario.credentials.password.clone(),
                    },
                    // As an operator lists them (`--pool-host`): the
                    // pool's hosts, for a restart while the master is down.
                    other_hosts: sim
                        .lock()
                        .expect("simulator lock")
                        .pool(pool)
                        .hosts
                        .values()
                        .map(|h| h.address.clone())
                        .collect(),
                }
            })
            .collect()
    }
}

/// The job of a scenario as the engine runs it.
fn job_spec(scenario: &Scenario, job: &crate::scenario::ScenarioJob) -> JobSpec {
    JobSpec {
        name: job.name.clone(),
        pool: job.pool.get_ref().clone(),
        vms: scenario.job_vms(job),
        concurrency: job.concurrency,
        restore: (job.kind == JobKind::Restore).then(|| engine::config::RestoreSpec {
            version: job.version,
            sr: job.sr.clone(),
            via: job.via.unwrap_or_default(),
            source_pool: job.source_pool.clone(),
        }),
        replicate: (job.kind == JobKind::Replicate).then(|| engine::config::ReplicateSpec {
            sr: job.sr.clone(),
            network: job.network.clone(),
            source_pool: job.source_pool.clone(),
        }),
        time_limit_s: job.time_limit_s,
    }
}

/// Runs the scenario's jobs and actions on one engine after another: the
/// first runs until the first `[[engine_crash]]`, where it dies (its tasks
/// are dropped, nothing is cleaned up); the next starts `down_s` later with
/// the same journal, reclaims what the dead one left, closes its unfinished
/// runs and resumes them, and so on.
async fn drive(
    scenario: &Scenario,
    engine_config: engine::config::EngineConfig,
    sim: SharedSim,
    served: Option<&ServedPools>,
    seed: u64,
    damage: Arc<std::sync::Mutex<Vec<crate::store_faults::Damage>>>,
) -> Driven {
    let clock = SimClock::start();
    let links = Links {
        scenario,
        sim: Arc::clone(&sim),
        served,
        clock,
        tokens: Arc::new(TokenRegistry::seeded(seed)),
        store_service: StoreService::default(),
        activity: Arc::default(),
    };
    let journal = engine::journal::Journal::in_memory();
    let mut results: Vec<Option<JobRun>> = vec![None; scenario.jobs.len()];
    let mut pending: Vec<usize> = (0..scenario.jobs.len()).collect();
    let mut pending_actions: Vec<Action> = scenario.actions.clone();
    let mut pending_store_faults: Vec<(usize, xapi_sim::faults::FaultSpec)> = scenario
        .faults
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, f)| f.kind == xapi_sim::faults::FaultKind::ChunkCorrupt)
        .collect();
    let full_windows = crate::store_faults::full_windows(&scenario.faults, seed);
    // When a store volume fills (true) or has room again (false), in order.
    let mut pending_full: Vec<(f64, bool)> = full_windows
        .iter()
        .flat_map(|w| [Some((w.from_s, true)), w.until_s.map(|u| (u, false))])
        .flatten()
        .collect();
    let mut engine_log = JobLog::default();
    let mut accounting: Option<Accounting> = None;
    let mut xapi_calls = 0;
    let mut incarnation = 0;
    loop {
        let crash = scenario.engine_crashes.get(incarnation);
        let crash_at = crash.map(|c| clock.instant_at(Duration::from_secs_f64(*c.at_s.get_ref())));
        let engine = match start_supervised(
            &engine_config,
            &links,
            &journal,
            clock,
            &mut engine_log,
        )
        .await
        {
            Ok(engine) => {
                if let Some(store) = engine.data_store() {
                    let service =
                        engine::store_server::router(Arc::clone(store), Arc::clone(&links.tokens));
                    *links.store_service.lock().expect("store service lock") = Some(service);
                }
                Arc::new(engine)
            }
            Err(e) => {
                let jobs = results.into_iter().flatten().collect();
                return Driven {
                    jobs,
                    engine_log,
                    accounting: accounting.unwrap_or_default(),
                    xapi_calls,
                    static_leases: BTreeMap::new(),
                    engine_error: Some(e.to_string()),
                    stopped_at_limit: None,
                };
            }
        };
        let before_crash = |at: Duration| crash_at.is_none_or(|c| clock.instant_at(at) < c);
        let mut actions = tokio::task::JoinSet::new();
        let (now_actions, later): (Vec<Action>, Vec<Action>) = pending_actions
            .into_iter()
            .partition(|a| before_crash(Duration::from_secs_f64(a.at_s)));
        pending_actions = later;
        for action in now_actions {
            let sim = Arc::clone(&sim);
            let engine = Arc::clone(&engine);
            let at = Duration::from_secs_f64(action.at_s);
            actions.spawn(async move {
                tokio::time::sleep_until(clock.instant_at(at)).await;
                perform(&action, &sim, &engine, clock).await;
            });
        }
        // A volume that filled while the engine was down is still full.
        if volume_full_now(&full_windows, clock) {
            let capacity = engine_config.store_capacity_bytes;
            fill_store(&engine, &full_windows, (true, capacity), &sim, clock);
        }
        let (now_full, later): (Vec<_>, Vec<_>) = pending_full
            .into_iter()
            .partition(|(at_s, _)| before_crash(Duration::from_secs_f64(*at_s)));
        pending_full = later;
        for (at_s, full) in now_full {
            let (sim, engine, windows) =
                (Arc::clone(&sim), Arc::clone(&engine), full_windows.clone());
            let change = (full, engine_config.store_capacity_bytes);
            actions.spawn(async move {
                tokio::time::sleep_until(clock.instant_at(Duration::from_secs_f64(at_s))).await;
                fill_store(&engine, &windows, change, &sim, clock);
            });
        }
        // Store faults due before this engine dies strike it; later ones wait.
        let (now_faults, later): (Vec<_>, Vec<_>) = pending_store_faults.into_iter().partition(
            |(_, f): &(usize, xapi_sim::faults::FaultSpec)| {
                before_crash(Duration::from_secs_f64(f.from_s))
            },
        );
        pending_store_faults = later;
        for (i, fault) in now_faults {
            let (sim, engine) = (Arc::clone(&sim), Arc::clone(&engine));
            let damage = Arc::clone(&damage);
            let rng = crate::store_faults::rng(seed ^ i as u64);
            actions.spawn(async move {
                let at = Duration::from_secs_f64(fault.from_s);
                tokio::time::sleep_until(clock.instant_at(at)).await;
                corrupt_store(&fault, rng, &sim, &engine, clock, &damage);
            });
        }
        let mut tasks = tokio::task::JoinSet::new();
        for run in engine.take_interrupted_runs() {
            let Some(index) = scenario.jobs.iter().position(|j| j.name == run.spec.name) else {
                continue;
            };
            let engine = Arc::clone(&engine);
            tasks.spawn(async move {
                let report = engine.resume(&run).await;
                (index, JobRun { report, diag: None })
            });
        }
        let (starting, waiting): (Vec<usize>, Vec<usize>) = pending
            .iter()
            .partition(|&&i| before_crash(Duration::from_secs_f64(scenario.jobs[i].start_s)));
        pending = waiting;
        for &index in &starting {
            let job = &scenario.jobs[index];
            let engine = Arc::clone(&engine);
            let spec = job_spec(scenario, job);
            let kind = job.kind;
            let start = Duration::from_secs_f64(job.start_s);
            tasks.spawn(async move {
                // A job due while the engine was down starts once it is back.
                tokio::time::sleep_until(clock.instant_at(start)).await;
                let run = match kind {
                    JobKind::Backup | JobKind::Restore | JobKind::Replicate => JobRun {
                        report: engine.run_job(&spec).await,
                        diag: None,
                    },
                    JobKind::Diag => run_diag(&engine, &spec).await,
                };
                (index, run)
            });
        }
        let mut stopped_at_limit = None;
        let crashed = {
            let collect = async {
                while let Some(done) = tasks.join_next().await {
                    let (index, run) = done.expect("job tasks do not panic");
                    results[index] = Some(run);
                }
                while let Some(done) = actions.join_next().await {
                    done.expect("actions do not panic");
                }
            };
            tokio::pin!(collect);
            match crash_at {
                None => {
                    let limit = clock.instant_at(Duration::from_secs_f64(scenario.run_limit_s()));
                    if !done_by(&mut collect, limit).await {
                        stopped_at_limit =
                            Some(stop_at_limit(scenario, &engine, &mut collect).await);
                    }
                    false
                }
                // The engine dies at its time, busy or idle: what is due
                // later (jobs, actions, faults) is the next engine's.
                Some(at) => {
                    if done_by(&mut collect, at).await {
                        tokio::time::sleep_until(at).await;
                    }
                    true
                }
            }
        };
        if stopped_at_limit.is_some() {
            // What would not end even when cancelled is dropped where it is.
            stop_where_they_are(&mut tasks, &mut actions, &mut results).await;
            let now_ms = clock.now().as_ms();
            for (index, slot) in results.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = Some(never_ended(scenario, index, now_ms));
                }
            }
        }
        if !crashed {
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
            // What a failed cleanup left is being retried: give it its time
            // (bounded; the checks then say what is still there).
            let patience = tokio::time::Instant::now() + Duration::from_secs(12 * 3600);
            while engine.leftovers_pending() > 0 && tokio::time::Instant::now() < patience {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let static_leases = engine
                .pools()
                .iter()
                .map(|(name, p)| (name.clone(), p.leased_addresses().len()))
                .collect();
            engine.shutdown().await;
            engine_log.lines.extend(engine.log().lines);
            let accounting = match accounting {
                Some(earlier) => earlier.followed_by(&engine.accounting()),
                None => engine.accounting(),
            };
            xapi_calls += engine.xapi_calls();
            let jobs = results
                .into_iter()
                .map(|r| r.expect("every job ran to its end"))
                .collect();
            return Driven {
                jobs,
                engine_log,
                accounting,
                xapi_calls,
                static_leases,
                engine_error: None,
                stopped_at_limit,
            };
        }
        // The engine dies: its jobs and actions stop where they are.
        stop_where_they_are(&mut tasks, &mut actions, &mut results).await;
        engine.halt();
        // Its data store goes with it: refused until the next engine serves it.
        links
            .store_service
            .lock()
            .expect("store service lock")
            .take();
        engine_log.lines.extend(engine.log().lines);
        let down_s = crash.map_or(0.0, |c| c.down_s);
        engine_log.push(
            tokio::time::Instant::now().duration_since(clock.instant_at(Duration::ZERO)),
            engine::joblog::LineStatus::Fail,
            None,
            format!("Engine process died (simulated crash); a new one starts in {down_s} s"),
        );
        let unfinished: Vec<String> = journal
            .unfinished_runs()
            .into_iter()
            .map(|r| r.spec.name)
            .collect();
        // A job the journal never saw start (a diagnostic, or one killed before
        // its first step) is started again by the next engine.
        for index in starting {
            if results[index].is_none() && !unfinished.contains(&scenario.jobs[index].name) {
                pending.push(index);
            }
        }
        pending.sort();
        accounting = Some(match accounting {
            Some(earlier) => earlier.followed_by(&engine.accounting()),
            None => engine.accounting(),
        });
        xapi_calls += engine.xapi_calls();
        drop(engine);
        let down = Duration::from_secs_f64(down_s);
        tokio::time::sleep_until(crash_at.expect("crashed") + down).await;
        incarnation += 1;
    }
}

/// Aborts the jobs and actions still running, keeping the reports of the
/// jobs that ended meanwhile.
async fn stop_where_they_are(
    tasks: &mut tokio::task::JoinSet<(usize, JobRun)>,
    actions: &mut tokio::task::JoinSet<()>,
    results: &mut [Option<JobRun>],
) {
    tasks.abort_all();
    while let Some(done) = tasks.join_next().await {
        if let Ok((index, run)) = done {
            results[index] = Some(run);
        }
    }
    actions.abort_all();
    while actions.join_next().await.is_some() {}
}

/// True when `work` ends by `deadline`; false when the deadline comes first
/// (the work is left where it is, to go on or be dropped).
async fn done_by(
    work: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    deadline: tokio::time::Instant,
) -> bool {
    tokio::select! {
        biased;
        () = work.as_mut() => true,
        () = tokio::time::sleep_until(deadline) => false,
    }
}

/// How long jobs cancelled at the run's limit get to end.
const LIMIT_GRACE: Duration = Duration::from_secs(3600);

/// The run reached its limit with jobs still running (a hang, or a job far
/// slower than it should be): cancels them all, gives them [`LIMIT_GRACE`]
/// to end, and says what happened.
async fn stop_at_limit(
    scenario: &Scenario,
    engine: &engine::Engine,
    work: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> String {
    let limit_s = scenario.run_limit_s();
    let reason = format!("the run reached its limit at {limit_s:.0} s");
    for job in &scenario.jobs {
        // Jobs that are over (or never started) refuse: nothing to do.
        let _ = engine.cancel(&job.name, None, &reason);
    }
    let grace = tokio::time::Instant::now() + LIMIT_GRACE;
    let ended = done_by(work, grace).await;
    format!(
        "{reason} with jobs still running; they were cancelled{}",
        if ended {
            ""
        } else {
            " and still had not ended an hour later (dropped)"
        }
    )
}

/// The report of a job that never ended: the run stopped it at its limit.
fn never_ended(scenario: &Scenario, index: usize, now_ms: u64) -> JobRun {
    let job = &scenario.jobs[index];
    let mut log = JobLog::default();
    log.push(
        Duration::from_millis(now_ms),
        engine::joblog::LineStatus::Fail,
        None,
        format!(
            "Job {} never ended: the run stopped it at its limit",
            job.name
        ),
    );
    JobRun {
        report: JobReport {
            name: job.name.clone(),
            pool: job.pool.get_ref().clone(),
            concurrency: job.concurrency,
            status: engine::joblog::JobStatus::Failed,
            vms: Vec::new(),
            log,
            started_ms: (job.start_s * 1000.0) as u64,
            finished_ms: now_ms,
        },
        diag: None,
    }
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
        kind @ ("fail_over"
        | "clone_vm"
        | "shutdown_vm"
        | "disable_cbt"
        | "destroy_cbt_metadata") => {
            let mut s = sim.lock().expect("simulator lock");
            let id = s.pool_id(pool).expect("checked pool");
            let vm = action.vm.as_deref().unwrap_or_default();
            if let Err(e) = s.operate_vm(id, clock.now(), kind, vm) {
                tracing::warn!("action {kind} failed: {e}");
            }
        }
        "add_vif" => {
            let mut s = sim.lock().expect("simulator lock");
            let id = s.pool_id(pool).expect("checked pool");
            let (vm, network) = (
                action.vm.as_deref().unwrap_or_default(),
                action.network.as_deref().unwrap_or_default(),
            );
            if let Err(e) = s.add_vif(id, clock.now(), vm, network) {
                tracing::warn!("action add_vif failed: {e}");
            }
        }
        "template_delete" => {
            let _ = engine.template_delete(pool).await;
        }
        "template_redeploy" => {
            let _ = engine.template_redeploy(pool).await;
        }
        "store_capacity" => engine.set_store_capacity(action.bytes),
        "verify_store" => {
            // The outcome is in the engine log.
            let _ = engine.verify_store();
        }
        "cancel_job" => {
            let job = action.job.as_deref().unwrap_or_default();
            let reason = match &action.vm {
                None => "cancelled by the operator".to_string(),
                Some(vm) => format!("VM {vm} cancelled by the operator"),
            };
            // A refusal is in the engine log; a scenario may expect one.
            let _ = engine.cancel(job, action.vm.as_deref(), &reason);
        }
        other => unreachable!("scenario check rejects action {other:?}"),
    }
}

/// True while a `store_full` window covers the present.
fn volume_full_now(windows: &[crate::store_faults::FullWindow], clock: SimClock) -> bool {
    let now_s = clock.now().as_ms() as f64 / 1000.0;
    windows.iter().any(|w| w.covers(now_s))
}

/// A `store_full` window begins (`full`) or ends: the engine's data store
/// has no room for anything more (its capacity becomes what it holds), or
/// its configured capacity again once no window covers the present. The
/// event log says so.
fn fill_store(
    engine: &Engine,
    windows: &[crate::store_faults::FullWindow],
    (full, configured_bytes): (bool, Option<u64>),
    sim: &SharedSim,
    clock: SimClock,
) {
    let Some(store) = engine.data_store() else {
        return;
    };
    let text = match (full, volume_full_now(windows, clock)) {
        (true, _) => {
            let used = store.with_store(|s| s.used_bytes());
            store.set_capacity(Some(used));
            format!("fault: the data store's volume is full ({used} bytes stored)")
        }
        (false, true) => return,
        (false, false) => {
            store.set_capacity(configured_bytes);
            "fault healed: the data store's volume has room again".to_string()
        }
    };
    let mut sim = sim.lock().expect("simulator lock");
    if let Some(pool) = windows.first().and_then(|w| sim.pool_id(&w.pool)) {
        sim.note_fault(pool, clock.now(), text);
    }
}

/// A `chunk_corrupt` fault strikes (with its rate): chunks of the engine's
/// data store are damaged at rest; the event log says which.
fn corrupt_store(
    fault: &xapi_sim::faults::FaultSpec,
    mut rng: rand_chacha::ChaCha8Rng,
    sim: &SharedSim,
    engine: &Engine,
    clock: SimClock,
    damage: &std::sync::Mutex<Vec<crate::store_faults::Damage>>,
) {
    use rand::RngExt;
    let rate = match fault.rate {
        xapi_sim::faults::Rate::Fixed(r) => r,
        xapi_sim::faults::Rate::Range([lo, hi]) if hi > lo => rng.random_range(lo..=hi),
        xapi_sim::faults::Rate::Range([lo, _]) => lo,
    };
    let Some(store) = engine.data_store() else {
        return;
    };
    if !rng.random_bool(rate.clamp(0.0, 1.0)) {
        return;
    }
    let count = fault.count.unwrap_or(1);
    let done =
        store.with_store(|s| crate::store_faults::corrupt_chunks(s, &fault.pool, count, &mut rng));
    let mut sim = sim.lock().expect("simulator lock");
    let Some(pool) = sim.pool_id(&fault.pool) else {
        return;
    };
    match done {
        Ok(found) => {
            for d in &found {
                let text = format!(
                    "fault: data store chunk {} in pack {} at offset {} damaged at rest (used by {})",
                    d.chunk.short(),
                    d.pack,
                    d.offset,
                    d.users.join(", ")
                );
                sim.note_fault(pool, clock.now(), text);
            }
            damage.lock().expect("damage lock poisoned").extend(found);
        }
        Err(e) => tracing::warn!("chunk_corrupt could not damage the store: {e}"),
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
            cbt_bases: m
                .vdis
                .values()
                .filter(|d| engine::tags::is_our_cbt_base(d, engine_id))
                .count(),
            cbt_disks: m
                .vdis
                .values()
                .filter(|d| d.cbt_enabled && !d.is_a_snapshot && !d.vbds.is_empty())
                .count(),
            restored_vdis: m
                .vdis
                .values()
                .filter(|d| engine::tags::is_our_restored_vdi(d, engine_id))
                .map(|d| d.uuid.clone())
                .collect(),
            orphan_vdis: m
                .vdis
                .values()
                .filter(|d| {
                    d.vbds.is_empty()
                        && !engine::tags::is_our_cbt_base(d, engine_id)
                        && !engine::tags::is_our_restored_vdi(d, engine_id)
                })
                .map(|d| format!("{} {:?}", d.uuid, d.name_label))
                .collect(),
            dhcp_leases: m
                .dhcp
                .values()
                .map(|s| s.active_leases(sim.now()).len())
                .sum(),
            static_leases: static_leases.get(&m.name).copied().unwrap_or(0),
            addresses_leased: count_events(sim, &m.name, "wrote vm-data/assigned-ip"),
            templates_deployed: sim
                .events()
                .iter()
                .filter(|e| e.pool == m.name && e.text.starts_with("VM.import "))
                .count(),
            delegate_conflicts: m
                .address_conflicts
                .iter()
                .filter(|c| ours(&c.holder.1) && ours(&c.newcomer.1))
                .cloned()
                .collect(),
            vm_names: m.vms.values().map(|v| v.name_label.clone()).collect(),
            replica_vms: m
                .vms
                .values()
                .filter(|v| engine::tags::is_our_replica_vm(v, engine_id))
                .map(|v| replica_vm_end(m, v))
                .collect(),
        };
        out.insert(m.name.clone(), end);
    }
    out
}

fn replica_vm_end(
    m: &xapi_sim::model::PoolModel,
    vm: &xapi_proto::records::VmRecord,
) -> ReplicaVmEnd {
    let mut disks: Vec<(String, String)> = vm
        .vbds
        .iter()
        .filter_map(|b| m.vbds.get(b))
        .filter_map(|b| Some((b.userdevice.clone(), m.vdis.get(&b.vdi)?.uuid.clone())))
        .collect();
    disks.sort();
    let mut networks: Vec<(String, String)> = vm
        .vifs
        .iter()
        .filter_map(|v| m.vifs.get(v))
        .filter_map(|v| {
            Some((
                v.device.clone(),
                m.networks.get(&v.network)?.name_label.clone(),
            ))
        })
        .collect();
    networks.sort();
    ReplicaVmEnd {
        name: vm.name_label.clone(),
        halted: vm.power_state == xapi_proto::records::PowerState::Halted,
        start_blocked: vm.blocked_operations.get("start").cloned(),
        userdevices: disks.iter().map(|d| d.0.clone()).collect(),
        disks: disks.into_iter().map(|d| d.1).collect(),
        networks: networks.into_iter().map(|n| n.1).collect(),
        vcpus: vm.vcpus_max,
        memory_static_max: vm.memory_static_max,
    }
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

/// Starts made before an engine that cannot start (its pool out of reach
/// for longer than it waits) is given up on.
const ENGINE_START_ATTEMPTS: u32 = 5;
/// Pause before the next start, as a service manager restarting a failed
/// service waits.
const ENGINE_RESTART_PAUSE: Duration = Duration::from_secs(60);

/// Starts an engine as a service manager would: one that fails to start is
/// started again after a pause, a few times, each failure in the engine log.
async fn start_supervised(
    engine_config: &engine::config::EngineConfig,
    links: &Links<'_>,
    journal: &Arc<engine::journal::Journal>,
    clock: SimClock,
    engine_log: &mut JobLog,
) -> Result<Engine, engine::EngineError> {
    let mut attempt = 1;
    loop {
        let options = engine::StartOptions {
            journal: Some(Arc::clone(journal)),
            epoch: Some(clock.instant_at(Duration::ZERO)),
            // Versions carry simulated time: a run is a function of its seed.
            wall_clock_now: None,
        };
        match Engine::start_with(engine_config.clone(), links.connections(), options).await {
            Ok(engine) => return Ok(engine),
            Err(e) if attempt < ENGINE_START_ATTEMPTS => {
                engine_log.push(
                    tokio::time::Instant::now().duration_since(clock.instant_at(Duration::ZERO)),
                    engine::joblog::LineStatus::Warn,
                    None,
                    format!(
                        "Engine did not start ({e}); its service manager starts it again in {}",
                        engine::joblog::format_duration(ENGINE_RESTART_PAUSE)
                    ),
                );
                tokio::time::sleep(ENGINE_RESTART_PAUSE).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
