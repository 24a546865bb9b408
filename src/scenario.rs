//! Scenario files: a simulated world, how the engine uses each pool, the jobs
//! to run and when, operator actions, and the outcomes to expect.

use engine::{EngineConfig, PoolConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;
use xapi_sim::spec::{ApplianceSpec, CredentialsSpec, PoolSpec, TimingSpec, WorldSpec};

/// A parsed and checked scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed used when the command line gives none.
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub timing: TimingSpec,
    #[serde(default)]
    pub appliance: ApplianceSpec,
    #[serde(default)]
    pub credentials: CredentialsSpec,
    /// The simulated pools.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolSpec>,
    /// How the engine uses each pool (by name); pools not listed use defaults.
    #[serde(default, rename = "delegates")]
    pub delegates: Vec<Spanned<PoolConfig>>,
    #[serde(default, rename = "job")]
    pub jobs: Vec<ScenarioJob>,
    #[serde(default, rename = "action")]
    pub actions: Vec<Action>,
    /// Faults the simulated pools inject (`[[fault]]`).
    #[serde(default, rename = "fault")]
    pub faults: Vec<xapi_sim::faults::FaultSpec>,
    /// Times the engine process dies and is started again (`[[engine_crash]]`).
    #[serde(default, rename = "engine_crash")]
    pub engine_crashes: Vec<EngineCrash>,
    /// Topology drawn per seed, for swarm runs (`[swarm]`).
    #[serde(default)]
    pub swarm: Option<SwarmSpec>,
    /// Back up real bytes into a data store (a fresh directory per run), and
    /// check after the run that every version restores byte-identical.
    #[serde(default)]
    pub data_store: bool,
    #[serde(default)]
    pub expect: Expect,
}

fn default_seed() -> u64 {
    1
}

/// What kind of job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Backup,
    /// The diagnostic job (template, provision, boot, address, identity, teardown).
    Diag,
    /// Writes each VM's version from the data store onto new VDIs.
    Restore,
    /// Keeps each VM's newest version as replica VDIs in the job's pool
    /// (the VMs may live in another pool).
    Replicate,
}

/// A job and when it starts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioJob {
    pub name: String,
    pub pool: Spanned<String>,
    #[serde(default)]
    pub kind: JobKind,
    /// VM names; a trailing `*` matches every VM of the pool with that prefix.
    #[serde(default)]
    pub vms: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Simulated time the job starts at, in seconds since the run began.
    #[serde(default)]
    pub start_s: f64,
    /// Restore jobs: the version to restore (default: the newest).
    #[serde(default)]
    pub version: Option<u64>,
    /// Restore and replication jobs: the SR for the VDIs (default: the pool's default SR).
    #[serde(default)]
    pub sr: Option<String>,
    /// Replication jobs: the network for replica VM interfaces whose network
    /// has no namesake in the job's pool.
    #[serde(default)]
    pub network: Option<String>,
    /// Restore jobs: `delegate` (the default) or `import` (the engine uploads
    /// each disk to the pool master, no delegate).
    #[serde(default)]
    pub via: Option<engine::config::RestoreVia>,
    /// Restore and replication jobs: only VMs backed up from this pool, to
    /// tell apart VMs of one name in different pools.
    #[serde(default)]
    pub source_pool: Option<String>,
    /// The job is cancelled once it has run this long (seconds).
    #[serde(default)]
    pub time_limit_s: Option<u64>,
}

fn default_concurrency() -> usize {
    1
}

/// An operator action at a simulated time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Simulated time of the action, in seconds since the run began.
    pub at_s: f64,
    pub pool: Spanned<String>,
    /// `move_vm_disks` (storage-migrate `vm`'s disks to `sr`), `fail_over` (unblock
    /// and start `vm`, as an operator failing over to a replica), `clone_vm` (clone
    /// `vm` as `<vm> clone`), `shutdown_vm`, `add_vif` (give `vm` an interface on
    /// `network`), `template_delete`
    /// or `template_redeploy` (the operator's template actions, through the engine),
    /// `cancel_job` (cancel `job`, or only its VM `vm`), `store_capacity` (the
    /// operator grew or shrank the data store: `bytes`, absent for no limit),
    /// `verify_store` (verify the data store; corrupt chunks are set aside).
    pub kind: Spanned<String>,
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub sr: Option<String>,
    /// `cancel_job`: the job, by name.
    #[serde(default)]
    pub job: Option<String>,
    /// `store_capacity`: the data store's new capacity (absent: unlimited).
    #[serde(default)]
    pub bytes: Option<u64>,
    /// `add_vif`: the network, by name.
    #[serde(default)]
    pub network: Option<String>,
}

/// The engine dies at `at_s` (no cleanup of any kind) and a new engine with
/// the same id and journal starts `down_s` later.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineCrash {
    pub at_s: Spanned<f64>,
    #[serde(default = "default_down_s")]
    pub down_s: f64,
}

fn default_down_s() -> f64 {
    60.0
}

/// What a seed varies besides fault rates: `[low, high]` ranges, drawn per
/// seed, so `abd run --seed S` replays exactly what `abd swarm` ran.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SwarmSpec {
    /// Hosts per pool.
    pub hosts: Option<[u32; 2]>,
    /// Concurrency of every job.
    pub concurrency: Option<[usize; 2]>,
    /// After the last fault heals, every job must be over within this many
    /// seconds of simulated time (liveness).
    #[serde(default = "default_converge_s")]
    pub converge_within_s: f64,
    /// The engine dies once, at a time drawn from this range (seconds)...
    pub engine_crash_at_s: Option<[f64; 2]>,
    /// ...and is down for a time drawn from this range (seconds)...
    #[serde(default = "default_engine_down_s")]
    pub engine_down_s: [f64; 2],
    /// ...in this share of the seeds.
    #[serde(default = "default_engine_crash_rate")]
    pub engine_crash_rate: f64,
}

fn default_engine_down_s() -> [f64; 2] {
    [10.0, 120.0]
}

fn default_engine_crash_rate() -> f64 {
    1.0
}

fn default_converge_s() -> f64 {
    6.0 * 3600.0
}

/// Outcomes the run must show; absent keys are not checked.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Final status per job name: success, success_with_warnings, partial, failed.
    #[serde(default)]
    pub jobs: BTreeMap<String, String>,
    /// Exact peak of concurrent delegates per pool.
    #[serde(default)]
    pub peak_delegates: BTreeMap<String, usize>,
    pub delegates_created: Option<usize>,
    pub delegates_created_at_most: Option<usize>,
    pub delegates_left: Option<usize>,
    pub addresses_left: Option<usize>,
    pub vms_failed: Option<usize>,
    pub reclaimed: Option<usize>,
    /// Diagnostic outcome per pool.
    #[serde(default)]
    pub diag_passed: BTreeMap<String, bool>,
    /// Template deployments expected in the run, per pool.
    #[serde(default)]
    pub templates_deployed: BTreeMap<String, usize>,
    /// Lines the job logs must contain (substring match, any job).
    #[serde(default)]
    pub log_contains: Vec<String>,
    /// VMs (by name) that must still exist at the end, per pool.
    #[serde(default)]
    pub vms_present: BTreeMap<String, Vec<String>>,
    /// Versions in the data store at the end.
    pub data_versions: Option<usize>,
    /// VDIs written by restore jobs (each checked byte for byte).
    pub restored_vdis: Option<usize>,
    /// Replica VMs at the end, in all pools (each halted, start blocked, its
    /// disks the replica VDIs).
    pub replica_vms: Option<usize>,
    /// Stored bytes over the logical bytes of every version, at most.
    pub data_stored_fraction_at_most: Option<f64>,
    /// Versions still damaged at the end by `chunk_corrupt` faults (their
    /// restore must fail, naming the chunk).
    pub data_damaged_versions: Option<usize>,
}

/// A scenario that cannot run; names the file, the line and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}{line}: {message}", line = .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and checks scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            file: file.to_string(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        scenario.check(file, text)?;
        Ok(scenario)
    }

    /// The world the simulator builds.
    pub fn world(&self) -> WorldSpec {
        WorldSpec {
            timing: self.timing.clone(),
            appliance: self.appliance.clone(),
            credentials: self.credentials.clone(),
            pools: self.pools.clone(),
            faults: self.faults.clone(),
        }
    }

    /// The scenario as seed `seed` runs it: `[swarm]` ranges drawn.
    pub fn for_seed(&self, seed: u64) -> Scenario {
        use rand::{RngExt, SeedableRng};
        let mut scenario = self.clone();
        let Some(swarm) = &self.swarm else {
            return scenario;
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0073_7761_726d);
        if let Some([lo, hi]) = swarm.hosts {
            for pool in &mut scenario.pools {
                pool.hosts = rng.random_range(lo.min(hi)..=hi.max(lo));
            }
        }
        if let Some([lo, hi]) = swarm.concurrency {
            for job in &mut scenario.jobs {
                job.concurrency = rng.random_range(lo.min(hi)..=hi.max(lo));
            }
        }
        if let Some([lo, hi]) = swarm.engine_crash_at_s
            && rng.random_bool(swarm.engine_crash_rate.clamp(0.0, 1.0))
        {
            let at_s = rng.random_range(lo.min(hi)..=hi.max(lo));
            let [down_lo, down_hi] = swarm.engine_down_s;
            let down_s = rng.random_range(down_lo.min(down_hi)..=down_hi.max(down_lo));
            // Whole milliseconds, so that the replay command reads the same.
            let ms = |s: f64| (s * 1000.0).round() / 1000.0;
            scenario.engine_crashes = vec![EngineCrash {
                at_s: Spanned::new(0..0, ms(at_s)),
                down_s: ms(down_s),
            }];
        }
        scenario
    }

    /// When every job must be over by (liveness), with `[swarm]`: the last
    /// fault's healing plus `converge_within_s`.
    pub fn converge_deadline_s(&self) -> Option<f64> {
        let swarm = self.swarm.as_ref()?;
        let healed = self
            .faults
            .iter()
            .map(|f| f.until_s.unwrap_or(f.from_s))
            .chain(
                self.engine_crashes
                    .iter()
                    .map(|c| c.at_s.get_ref() + c.down_s),
            )
            .fold(0.0, f64::max);
        Some(healed + swarm.converge_within_s)
    }

    /// When a run stops waiting for its jobs, in simulated seconds: with
    /// `[swarm]`, the convergence deadline; otherwise two days after the
    /// last thing the scenario schedules (a job's start, a fault, an
    /// action, an engine crash). Far past any sound run's end, it turns a
    /// hang into a failing run that names its seed.
    pub fn run_limit_s(&self) -> f64 {
        if let Some(deadline) = self.converge_deadline_s() {
            return deadline;
        }
        let last = self
            .jobs
            .iter()
            .map(|j| j.start_s)
            .chain(self.faults.iter().map(|f| f.until_s.unwrap_or(f.from_s)))
            .chain(self.actions.iter().map(|a| a.at_s))
            .chain(
                self.engine_crashes
                    .iter()
                    .map(|c| c.at_s.get_ref() + c.down_s),
            )
            .fold(0.0, f64::max);
        last + 2.0 * 86_400.0
    }

    /// The engine's settings for a pool (defaults when none are given).
    pub fn pool_config(&self, pool: &str) -> PoolConfig {
        self.delegates
            .iter()
            .map(|d| d.get_ref())
            .find(|d| d.name == pool)
            .cloned()
            .unwrap_or_else(|| PoolConfig::new(pool))
    }

    /// Every VM name of a pool, as the simulator will create them.
    pub fn vm_names(&self, pool: &str) -> Vec<String> {
        self.pools
            .iter()
            .filter(|p| p.name == pool)
            .flat_map(|p| {
                p.vm_groups
                    .iter()
                    .filter(|g| !g.template)
                    .flat_map(|g| g.names())
            })
            .collect()
    }

    /// The job's VM list with `prefix*` patterns expanded, in order, without repeats.
    pub fn job_vms(&self, job: &ScenarioJob) -> Vec<String> {
        // A restore's or replication's VMs may live in other pools; their
        // versions are in the store.
        let all = match (job.kind, &job.source_pool) {
            (JobKind::Restore | JobKind::Replicate, Some(source)) => self.vm_names(source),
            (JobKind::Replicate, None) => self
                .pools
                .iter()
                .flat_map(|p| self.vm_names(&p.name))
                .collect(),
            _ => self.vm_names(job.pool.get_ref()),
        };
        let mut out: Vec<String> = Vec::new();
        let patterns = job
            .vms
            .as_ref()
            .map(|v| v.get_ref().as_slice())
            .unwrap_or_default();
        for pattern in patterns {
            let matches: Vec<String> = match pattern.strip_suffix('*') {
                Some(prefix) => all
                    .iter()
                    .filter(|n| n.starts_with(prefix))
                    .cloned()
                    .collect(),
                None => vec![pattern.clone()],
            };
            for m in matches {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    fn check(&self, file: &str, text: &str) -> Result<(), ScenarioError> {
        let err = |line: Option<usize>, message: String| ScenarioError {
            file: file.to_string(),
            line,
            message,
        };
        self.world()
            .check()
            .map_err(|e| err(locate_spec_error(text, &e.message), e.message))?;
        let pools: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        for d in &self.delegates {
            if !pools.contains(&d.get_ref().name.as_str()) {
                let line = Some(line_of(text, d.span().start));
                return Err(err(
                    line,
                    format!("delegates.name: no pool named {:?}", d.get_ref().name),
                ));
            }
        }
        let mut job_names = Vec::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let line = Some(line_of(text, job.pool.span().start));
            if !pools.contains(&job.pool.get_ref().as_str()) {
                return Err(err(
                    line,
                    format!("job[{i}].pool: no pool named {:?}", job.pool.get_ref()),
                ));
            }
            if job_names.contains(&job.name) {
                return Err(err(
                    line,
                    format!("job[{i}].name: duplicate job name {:?}", job.name),
                ));
            }
            job_names.push(job.name.clone());
            if job.concurrency == 0 {
                return Err(err(
                    line,
                    format!("job[{i}].concurrency: must be at least 1"),
                ));
            }
            if job.via.is_some() && job.kind != JobKind::Restore {
                return Err(err(
                    line,
                    format!("job[{i}].via: only a restore job takes `via`"),
                ));
            }
            match (&job.source_pool, job.kind) {
                (Some(source), _) if !pools.contains(&source.as_str()) => {
                    return Err(err(
                        line,
                        format!("job[{i}].source_pool: no pool named {source:?}"),
                    ));
                }
                (Some(_), JobKind::Backup | JobKind::Diag) => {
                    return Err(err(
                        line,
                        format!("job[{i}].source_pool: only restore and replication jobs take it"),
                    ));
                }
                _ => {}
            }
            if !(job.start_s >= 0.0 && job.start_s.is_finite()) {
                return Err(err(line, format!("job[{i}].start_s: must be a time >= 0")));
            }
            if job.kind != JobKind::Diag && self.job_vms(job).is_empty() {
                let at = job
                    .vms
                    .as_ref()
                    .map(|v| v.span().start)
                    .unwrap_or(job.pool.span().start);
                let line = Some(line_of(text, at));
                return Err(err(
                    line,
                    format!(
                        "job[{i}].vms: selects no VM of pool {:?}",
                        job.pool.get_ref()
                    ),
                ));
            }
        }
        for (i, action) in self.actions.iter().enumerate() {
            let line = Some(line_of(text, action.kind.span().start));
            if !pools.contains(&action.pool.get_ref().as_str()) {
                return Err(err(
                    line,
                    format!(
                        "action[{i}].pool: no pool named {:?}",
                        action.pool.get_ref()
                    ),
                ));
            }
            let kind = action.kind.get_ref().as_str();
            if action.bytes.is_some() && kind != "store_capacity" {
                return Err(err(line, format!("action[{i}]: {kind} takes no `bytes`")));
            }
            match (kind, &action.network) {
                ("add_vif", None) => {
                    return Err(err(line, format!("action[{i}]: add_vif needs `network`")));
                }
                ("add_vif", Some(_)) => {}
                (_, Some(_)) => {
                    return Err(err(line, format!("action[{i}]: {kind} takes no `network`")));
                }
                _ => {}
            }
            match (kind, &action.job) {
                ("cancel_job", None) => {
                    return Err(err(line, format!("action[{i}]: cancel_job needs `job`")));
                }
                ("cancel_job", Some(job)) if !job_names.contains(job) => {
                    return Err(err(line, format!("action[{i}].job: no job named {job:?}")));
                }
                ("cancel_job", _) => {}
                (_, Some(_)) => {
                    return Err(err(line, format!("action[{i}]: {kind} takes no `job`")));
                }
                _ => {}
            }
            match (kind, &action.vm, &action.sr) {
                ("move_vm_disks", Some(_), Some(_))
                | (
                    "template_delete" | "template_redeploy" | "store_capacity" | "verify_store",
                    None,
                    None,
                )
                | ("cancel_job", _, None) => {}
                (kind, Some(_), None) if acts_on_one_vm(kind) => {}
                ("store_capacity", _, _) => {
                    return Err(err(
                        line,
                        format!("action[{i}]: store_capacity takes only `bytes`"),
                    ));
                }
                ("cancel_job", _, Some(_)) => {
                    return Err(err(line, format!("action[{i}]: cancel_job takes no `sr`")));
                }
                ("move_vm_disks", _, _) => {
                    return Err(err(
                        line,
                        format!("action[{i}]: move_vm_disks needs `vm` and `sr`"),
                    ));
                }
                (kind, _, _) if acts_on_one_vm(kind) => {
                    return Err(err(
                        line,
                        format!("action[{i}]: {kind} needs `vm` and takes no `sr`"),
                    ));
                }
                ("template_delete" | "template_redeploy" | "verify_store", _, _) => {
                    return Err(err(
                        line,
                        format!(
                            "action[{i}]: {} takes no `vm` or `sr`",
                            action.kind.get_ref()
                        ),
                    ));
                }
                (other, _, _) => {
                    return Err(err(
                        line,
                        format!(
                            "action[{i}].kind: unknown action {other:?} (known: move_vm_disks, fail_over, clone_vm, shutdown_vm, add_vif, disable_cbt, destroy_cbt_metadata, template_delete, template_redeploy, cancel_job, store_capacity, verify_store)"
                        ),
                    ));
                }
            }
        }
        let store_fault = self.faults.iter().find(|f| {
            use xapi_sim::faults::FaultKind;
            matches!(f.kind, FaultKind::ChunkCorrupt | FaultKind::StoreFull)
        });
        if let (Some(fault), false) = (store_fault, self.data_store) {
            let kind = serde_json::to_value(fault.kind).expect("kinds serialise");
            return Err(err(
                None,
                format!(
                    "fault kind {} needs data_store = true",
                    kind.as_str().unwrap_or("?")
                ),
            ));
        }
        let mut up_again_s = 0.0;
        for (i, crash) in self.engine_crashes.iter().enumerate() {
            let line = Some(line_of(text, crash.at_s.span().start));
            let at_s = *crash.at_s.get_ref();
            if !(at_s >= up_again_s && crash.down_s >= 0.0) {
                return Err(err(
                    line,
                    format!(
                        "engine_crash[{i}]: crashes must come in order, each after the engine is up again ({up_again_s} s), with down_s >= 0"
                    ),
                ));
            }

            up_again_s = at_s + crash.down_s;
        }
        for job in self.expect.jobs.keys() {
            if !job_names.contains(job) {
                return Err(err(None, format!("expect.jobs: no job named {job:?}")));
            }
        }
        Ok(())
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line a simulator spec error points at (`pool[i] ... .vms[j]`),
/// by counting table headers.
fn locate_spec_error(text: &str, message: &str) -> Option<usize> {
    let index_after = |key: &str, from: &str| -> Option<usize> {
        let rest = &from[from.find(key)? + key.len()..];
        rest[..rest.find(']')?].parse().ok()
    };
    let pool = index_after("pool[", message)?;
    let headers: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| l.starts_with("[["))
        .collect();
    let pool_positions: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| *l == "[[pool]]")
        .map(|(i, _)| i)
        .collect();
    let start = *pool_positions.get(pool)?;
    let end = pool_positions
        .get(pool + 1)
        .copied()
        .unwrap_or(headers.len());
    for (key, header) in [
        (".vms[", "[[pool.vms]]"),
        (".sr[", "[[pool.sr]]"),
        (".network[", "[[pool.network]]"),
    ] {
        if let Some(j) = index_after(key, message) {
            return headers[start..end]
                .iter()
                .filter(|(_, l)| *l == header)
                .nth(j)
                .map(|(n, _)| *n);
        }
    }
    Some(headers[start].0)
}

/// Operator actions on one VM (`vm`, and no `sr`).
fn acts_on_one_vm(kind: &str) -> bool {
    matches!(
        kind,
        "fail_over"
            | "clone_vm"
            | "shutdown_vm"
            | "add_vif"
            | "disable_cbt"
            | "destroy_cbt_metadata"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[[pool]]
name = "lab"
hosts = 2
[[pool.sr]]
name = "nfs"
size_gib = 100
[[pool.vms]]
name = "vm"
count = 3
[[job]]
name = "nightly"
pool = "lab"
vms = ["vm-*"]
"#;

    fn check_error(text: &str, expect_line: usize, expect_in_message: &str) {
        let e = Scenario::parse("s.toml", text).expect_err("should be rejected");
        assert_eq!(e.line, Some(expect_line), "{e}");
        assert!(e.message.contains(expect_in_message), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("s.toml:{expect_line}: ")),
            "{e}"
        );
    }

    #[test]
    fn a_good_scenario_parses_and_expands_patterns() {
        let s = Scenario::parse("s.toml", MINIMAL).unwrap();
        assert_eq!(s.job_vms(&s.jobs[0]), ["vm-01", "vm-02", "vm-03"]);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        check_error(
            &MINIMAL.replace("hosts = 2", "hosts = 2\nhostz = 3"),
            6,
            "unknown field `hostz`",
        );
        check_error(
            &MINIMAL.replace("size_gib = 100", "size_gib = \"big\""),
            8,
            "invalid type",
        );
        check_error(
            &MINIMAL.replace("pool = \"lab\"\nvms", "pool = \"nope\"\nvms"),
            14,
            "job[0].pool: no pool named \"nope\"",
        );
        check_error(
            &MINIMAL.replace("vms = [\"vm-*\"]", "vms = [\"db-*\"]"),
            15,
            "selects no VM",
        );
        check_error(
            &MINIMAL.replace("count = 3", "count = 3\nsr = \"missing\""),
            9,
            "vms[0].sr: no SR named \"missing\"",
        );
        check_error(
            &MINIMAL.replace("name = \"nfs\"", "name = \"nfs\"\nhost = 9"),
            6,
            "host 9 does not exist",
        );
    }
}
