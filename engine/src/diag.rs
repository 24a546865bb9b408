//! The diagnostic job: template -> provision -> boot -> address -> identity ->
//! teardown on one pool, each step passed or failed with its time.

use crate::accounting::Change;
use crate::delegate::{self, Delegate};
use crate::error::EngineError;
use crate::joblog::{JobLog, format_duration};
use crate::pool::{PoolRuntime, VmLog};
use crate::template;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// One step of the diagnostic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiagStep {
    pub name: String,
    pub passed: bool,
    pub duration_ms: u64,
    pub detail: String,
}

/// The diagnostic's result.
#[derive(Clone, Debug, Serialize)]
pub struct DiagReport {
    pub pool: String,
    pub passed: bool,
    pub steps: Vec<DiagStep>,
    pub log: JobLog,
}

struct Steps {
    steps: Vec<DiagStep>,
    log: VmLog,
}

impl Steps {
    fn record<T>(
        &mut self,
        name: &str,
        started: Instant,
        result: &Result<T, EngineError>,
        detail: impl FnOnce(&T) -> String,
    ) -> bool {
        let duration = started.elapsed();
        let (passed, detail) = match result {
            Ok(v) => (true, detail(v)),
            Err(e) => (false, e.to_string()),
        };
        let text = format!(
            "Diag step {name}: {} in {} - {detail}",
            if passed { "passed" } else { "FAILED" },
            format_duration(duration)
        );
        if passed {
            self.log.ok(text)
        } else {
            self.log.fail(text)
        }
        self.steps.push(DiagStep {
            name: name.to_string(),
            passed,
            duration_ms: duration.as_millis() as u64,
            detail,
        });
        passed
    }
}

/// Runs the diagnostic on a pool.
pub async fn run(pool: Arc<PoolRuntime>) -> DiagReport {
    let log = Arc::new(Mutex::new(JobLog::default()));
    let vm_log = VmLog::new(Arc::clone(&log), Arc::clone(&pool.shared), None);
    pool.account(Change::JobStarted { concurrency: 1 });
    vm_log.progress(format!("Diagnostic of pool {} started", pool.name()));
    let mut steps = Steps {
        steps: Vec::new(),
        log: vm_log.clone(),
    };
    let delegate = run_steps(&pool, &mut steps).await;
    if let Some(d) = delegate {
        let started = Instant::now();
        let (name, vm) = (d.name.clone(), d.vm.clone());
        delegate::teardown(&pool, d, &vm_log).await;
        // The delegate itself must be gone (look-alikes with its name are not ours).
        let result: Result<(), EngineError> = match pool.xapi.vm_get_record(&vm).await {
            Err(_) => Ok(()),
            Ok(_) => Err(EngineError::Teardown(format!(
                "{name} ({vm}) still exists after teardown"
            ))),
        };
        steps.record("teardown", started, &result, |_| {
            format!("{name} destroyed with its disks")
        });
    }
    pool.account(Change::JobFinished { concurrency: 1 });
    let passed = steps.steps.iter().all(|s| s.passed) && steps.steps.len() == 6;
    if passed {
        vm_log.ok(format!("Diagnostic of pool {} passed", pool.name()));
    } else {
        vm_log.fail(format!("Diagnostic of pool {} failed", pool.name()));
    }
    let log = log.lock().expect("job log lock poisoned").clone();
    DiagReport {
        pool: pool.name().to_string(),
        passed,
        steps: steps.steps,
        log,
    }
}

/// Runs the steps up to identity; returns the delegate (if one was created) for teardown.
async fn run_steps(pool: &Arc<PoolRuntime>, steps: &mut Steps) -> Option<Delegate> {
    let log = steps.log.clone();
    let started = Instant::now();
    let prepared = async {
        let topo = pool.topology().await?;
        let network = pool.delegate_network(&topo)?;
        let (info, outcome) = template::ensure(pool, &topo, &log).await?;
        Ok((topo, network, info, outcome))
    }
    .await;
    if !steps.record("template", started, &prepared, |(_, _, info, outcome)| {
        format!("{outcome:?} on SR {:?}", info.sr_name)
    }) {
        return None;
    }
    let (topo, network, info, _) = prepared.expect("checked");

    let started = Instant::now();
    let holder = pool.shared.next_holder();
    let created = async {
        let lease = delegate::acquire_address(pool, holder, &log).await?;
        delegate::create(pool, &info, &network, "diagnostic", lease, &log)
            .await
            .map_err(|(e, _)| e)
    }
    .await;
    if !steps.record("provision", started, &created, |d| {
        format!("{} cloned from the template", d.name)
    }) {
        return None;
    }
    let mut d = created.expect("checked");

    let started = Instant::now();
    let booted = delegate::boot(pool, &mut d, &topo, &[], &BTreeSet::new(), &log).await;
    let booted_ok = steps.record("boot", started, &booted, |_| {
        format!("started on {}", d.host_name)
    });
    if !booted_ok {
        return Some(d);
    }
    let permit = booted.expect("checked");

    let started = Instant::now();
    let address = delegate::await_address(pool, &mut d, &log).await;
    drop(permit);
    if !steps.record("address", started, &address, |ip| format!("{ip}")) {
        return Some(d);
    }

    let started = Instant::now();
    let identity = delegate::verify_identity(pool, &d, &log).await;
    steps.record("identity", started, &identity, |_| {
        format!("{} answers as itself", d.name)
    });
    Some(d)
}
