//! Read-only check of a pool before any job runs: what is there, and what
//! would stop a job. Touches nothing.

use crate::config::Addressing;
use crate::joblog::format_bytes;
use crate::pool::PoolRuntime;
use crate::template;
use serde::Serialize;

/// What `validate` found.
#[derive(Clone, Debug, Serialize)]
pub struct ValidationReport {
    pub pool: String,
    pub api_version: String,
    /// One line per host: name, enabled, live, free memory.
    pub hosts: Vec<String>,
    pub default_sr: Option<String>,
    pub networks: Vec<String>,
    pub delegate_network: Option<String>,
    /// SR of the delegate template, if deployed.
    pub template: Option<String>,
    /// Delegates the address plan allows at once (None: DHCP, bounded by its range).
    pub delegates_allowed: Option<usize>,
    /// What would stop a job, in words; empty when jobs can run.
    pub blockers: Vec<String>,
}

/// Checks a pool without changing anything.
pub async fn validate(pool: &PoolRuntime) -> ValidationReport {
    let mut report = ValidationReport {
        pool: pool.name().to_string(),
        api_version: String::new(),
        hosts: Vec::new(),
        default_sr: None,
        networks: Vec::new(),
        delegate_network: None,
        template: None,
        delegates_allowed: match &pool.config.addressing {
            Addressing::Dhcp => None,
            Addressing::Static { addresses } => Some(addresses.len()),
        },
        blockers: Vec::new(),
    };
    let topo = match pool.load_topology().await {
        Ok(t) => t,
        Err(e) => {
            report.blockers.push(format!("cannot read the pool: {e}"));
            return report;
        }
    };
    if let Some(master) = pool
        .xapi
        .pool_get_all_records()
        .await
        .ok()
        .and_then(|p| p.into_values().next())
        && let Some(h) = topo.hosts.get(&master.master)
    {
        report.api_version = format!("{}.{}", h.api_version_major, h.api_version_minor);
    }
    let mut usable = 0;
    for (host_ref, host) in &topo.hosts {
        let live = topo.live_hosts.contains(host_ref);
        let free = pool
            .xapi
            .host_compute_free_memory(host_ref)
            .await
            .unwrap_or(0);
        if live && host.enabled {
            usable += 1;
        }
        report.hosts.push(format!(
            "{} (enabled {}, live {live}, {} free)",
            host.name_label,
            host.enabled,
            format_bytes(free.max(0) as u64)
        ));
    }
    if usable == 0 {
        report
            .blockers
            .push("no host is both enabled and live".into());
    }
    report.default_sr = topo.srs.get(&topo.default_sr).map(|sr| {
        let free = (sr.physical_size - sr.physical_utilisation).max(0) as u64;
        format!(
            "{} ({}, {}, {} free)",
            sr.name_label,
            sr.sr_type,
            if sr.shared { "shared" } else { "local" },
            format_bytes(free)
        )
    });
    report.networks = topo
        .networks
        .values()
        .map(|n| n.name_label.clone())
        .collect();
    match pool.delegate_network(&topo) {
        Ok(net) => report.delegate_network = topo.networks.get(&net).map(|n| n.name_label.clone()),
        Err(e) => report.blockers.push(e.to_string()),
    }
    match template::find(pool, &topo).await {
        Ok(Some(t)) => report.template = Some(t.sr_name),
        Ok(None) => {
            if let Err(e) = template::choose_sr(pool, &topo) {
                report
                    .blockers
                    .push(format!("no template and nowhere to deploy one: {e}"));
            }
        }
        Err(e) => report.blockers.push(e.to_string()),
    }
    if report.delegates_allowed == Some(0) {
        report
            .blockers
            .push("the static address list is empty".into());
    }
    report
}
