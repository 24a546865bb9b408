//! One delegate's life: clone -> configure -> boot -> address -> identity ->
//! (work) -> teardown. Each step is its own function so the diagnostic job can
//! time it; `provision` strings them together with bounded retries.

use crate::accounting::Change;
use crate::address::{HolderId, Lease, StaticAddress};
use crate::agent::AgentError;
use crate::config::Addressing;
use crate::error::EngineError;
use crate::joblog::format_duration;
use crate::placement::choose_host;
use crate::pool::{PoolRuntime, Topology, VmLog};
use crate::tags;
use crate::template::TemplateInfo;
use abd_agent::protocol::{VM_DATA_STORE_URL, VM_DATA_TOKEN};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::time::Instant;
use xapi_proto::OpaqueRef;
use xapi_proto::records::{PowerState, VifCreate, VmRecord};
use xapi_proto::tags::*;

/// A delegate VM the engine created and owns.
pub struct Delegate {
    pub vm: OpaqueRef,
    pub uuid: String,
    /// `ABD <n>`.
    pub name: String,
    /// Host it runs on (null until booted).
    pub host: OpaqueRef,
    pub host_name: String,
    /// Address it reported (None until it did).
    pub ip: Option<Ipv4Addr>,
    /// Disks that came with the clone, destroyed with it.
    pub own_vdis: Vec<OpaqueRef>,
    /// SRs of those disks: the delegate's host must see them.
    pub own_srs: Vec<OpaqueRef>,
    /// Static address lease, returned at teardown.
    pub lease: Option<Lease>,
    /// The token its agent accepts (revoked at teardown).
    pub token: crate::agent::Token,
    /// True once the VM exists and is counted as live.
    counted: bool,
}

impl Delegate {
    /// `ABD 3 (OpaqueRef:...)` for error messages.
    pub fn label(&self) -> String {
        format!("VM {} {:?}", self.vm, self.name)
    }
}

/// Takes a static address for `holder` if the pool uses static addressing,
/// waiting in the fair queue (and saying so in the log).
pub async fn acquire_address(
    pool: &PoolRuntime,
    holder: HolderId,
    log: &VmLog,
) -> Result<Option<Lease>, EngineError> {
    let Some(queue) = &pool.addresses else {
        return Ok(None);
    };
    let started = Instant::now();
    let limit = pool.engine_config().address_wait_limit();
    let waiting = queue.lease(holder, limit, |ahead| {
        log.progress(format!(
            "Waiting for a free delegate address ({ahead} ahead in the queue, up to {})",
            format_duration(limit)
        ))
    });
    // A dropped waiter leaves the queue, and an address already handed to it
    // goes back to the free list.
    let lease = log.cancel().wait(waiting).await??;
    let waited = started.elapsed();
    if waited > Duration::ZERO {
        log.ok(format!(
            "Got delegate address {} after waiting {}",
            lease.address().ip,
            format_duration(waited)
        ));
    }
    Ok(Some(lease))
}

/// Clones the template into a new delegate and configures it (not yet booted).
pub async fn create(
    pool: &PoolRuntime,
    template: &TemplateInfo,
    network: &OpaqueRef,
    job: &str,
    lease: Option<Lease>,
    log: &VmLog,
) -> Result<Delegate, (EngineError, Option<Lease>)> {
    let x = &pool.xapi;
    let number = pool.next_delegate_number();
    let name = format!("ABD {number}");
    let started = Instant::now();
    let vm = match x.vm_clone(&template.vm, &name).await {
        Ok(vm) => vm,
        Err(e) => match clone_made_anyway(pool, template, &name, &e, log).await {
            Some(vm) => vm,
            None => {
                return Err((
                    EngineError::xapi(format!("template {}", template.vm), "clone", e),
                    lease,
                ));
            }
        },
    };
    pool.account(Change::DelegateCreated);
    let mut delegate = Delegate {
        vm,
        uuid: String::new(),
        name,
        host: OpaqueRef::null(),
        host_name: String::new(),
        ip: None,
        own_vdis: Vec::new(),
        own_srs: Vec::new(),
        lease,
        token: pool.agent.tokens().issue(),
        counted: true,
    };
    match configure(pool, &mut delegate, network, job).await {
        Ok(()) => {
            log.ok(format!(
                "{} provisioned from the template ({})",
                delegate.name,
                format_duration(started.elapsed())
            ));
            Ok(delegate)
        }
        Err(e) => {
            teardown(pool, delegate, log).await;
            Err((e, None))
        }
    }
}

/// A clone that got no answer (its reply lost) may have been made: the
/// delegate's name is new, so a fresh clone of `template` by that name is the
/// one, and is used (a warning). When the pool cannot be asked now, a clone
/// by that name is left to the background removals. `None`: not made (or
/// the error said the clone failed).
async fn clone_made_anyway(
    pool: &PoolRuntime,
    template: &TemplateInfo,
    name: &str,
    error: &crate::xapi::CallError,
    log: &VmLog,
) -> Option<OpaqueRef> {
    crate::unanswered::made_anyway(
        pool,
        error,
        fresh_clones_of(pool, &template.uuid, name),
        || format!("Cloning {name} got no answer ({error}), but the clone was made: using it"),
        || crate::reclaim::Leftover::UnansweredClone {
            name: name.to_string(),
            template_uuid: template.uuid.clone(),
        },
        log,
    )
    .await
    .into_iter()
    .next()
}

/// This engine's clones of the template with uuid `template_uuid` named
/// `name` that were never configured (still marked as the template's).
pub(crate) async fn fresh_clones_of(
    pool: &PoolRuntime,
    template_uuid: &str,
    name: &str,
) -> Result<Vec<OpaqueRef>, crate::xapi::CallError> {
    let x = &pool.xapi;
    let engine_id = &pool.engine_config().engine_id;
    let mut found = Vec::new();
    for vm in x.vm_get_by_name_label(name).await? {
        let record = x.vm_get_record(&vm).await?;
        let fresh = tags::is_our_disposable_vm(&record, engine_id)
            && record.uuid != template_uuid
            && record
                .other_config
                .get(tags::TEMPLATE_UUID)
                .map(String::as_str)
                == Some(template_uuid)
            && record.other_config.get(tags::ROLE).map(String::as_str) == Some(tags::ROLE_TEMPLATE)
            && !record.is_a_snapshot;
        if fresh {
            found.push(vm);
        }
    }
    Ok(found)
}

async fn configure(
    pool: &PoolRuntime,
    d: &mut Delegate,
    network: &OpaqueRef,
    job: &str,
) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let label = d.label();
    let fail = |step: &'static str| {
        let object = label.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    x.vm_provision(&d.vm).await.map_err(fail("provision"))?;
    // The clone carries the template's keys: make it a delegate of this job.
    x.vm_set_other_config_key(&d.vm, tags::ROLE, tags::ROLE_DELEGATE)
        .await
        .map_err(fail("tagging"))?;
    x.vm_set_other_config_key(&d.vm, tags::JOB, job)
        .await
        .map_err(fail("tagging"))?;
    let record = x.vm_get_record(&d.vm).await.map_err(fail("reading"))?;
    if record
        .other_config
        .get(HIDE_FROM_XENCENTER)
        .map(String::as_str)
        != Some("true")
    {
        x.vm_set_other_config_key(&d.vm, HIDE_FROM_XENCENTER, "true")
            .await
            .map_err(fail("hiding"))?;
    }
    d.uuid = record.uuid.clone();
    let disks = own_disks(pool, &record)
        .await
        .map_err(fail("reading its disks"))?;
    tag_own_disks(pool, &disks)
        .await
        .map_err(fail("tagging its disk"))?;
    // Known only once tagged: a teardown of a delegate whose disks are not
    // known yet reads and tags them itself.
    d.own_vdis = disks.iter().map(|disk| disk.vdi.clone()).collect();
    d.own_srs = disks.into_iter().map(|disk| disk.sr).collect();
    for vif in &record.vifs {
        x.vif_destroy(vif)
            .await
            .map_err(fail("removing a cloned VIF"))?;
    }
    let vif = VifCreate {
        device: "0".into(),
        network: network.clone(),
        vm: d.vm.clone(),
        mac: String::new(),
        mtu: 1500,
        ..Default::default()
    };
    x.vif_create(&vif).await.map_err(fail("creating its VIF"))?;
    for (key, value) in network_settings(
        &pool.config.addressing,
        d.lease.as_ref().map(|l| l.address()),
        &d.name,
    ) {
        x.vm_set_xenstore_key(&d.vm, &key, &value)
            .await
            .map_err(fail("writing network settings"))?;
    }
    x.vm_set_xenstore_key(&d.vm, VM_DATA_TOKEN, d.token.expose())
        .await
        .map_err(fail("handing over its token"))?;
    if let (Some(_), Some(url)) = (pool.store(), &pool.engine_config().store_url) {
        x.vm_set_xenstore_key(&d.vm, VM_DATA_STORE_URL, url)
            .await
            .map_err(fail("handing over the data store's address"))?;
    }
    Ok(())
}

/// The `vm-data/...` keys that tell the appliance how to get its address.
pub fn network_settings(
    addressing: &Addressing,
    address: Option<&StaticAddress>,
    name: &str,
) -> Vec<(String, String)> {
    let hostname = name.to_lowercase().replace(' ', "-");
    let mut settings = vec![(VM_DATA_HOSTNAME.to_string(), hostname)];
    match (addressing, address) {
        (Addressing::Static { .. }, Some(a)) => {
            settings.push((VM_DATA_IP.into(), a.ip.to_string()));
            settings.push((VM_DATA_NETMASK.into(), a.netmask.to_string()));
            if let Some(gw) = a.gateway {
                settings.push((VM_DATA_GATEWAY.into(), gw.to_string()));
            }
            if !a.dns.is_empty() {
                let dns: Vec<String> = a.dns.iter().map(|d| d.to_string()).collect();
                settings.push((VM_DATA_DNS.into(), dns.join(",")));
            }
        }
        _ => settings.push((VM_DATA_DHCP.into(), "true".into())),
    }
    settings
}

/// The disks that came with a delegate's clone: its system disk (device 0),
/// never a snapshot disk attached for work.
async fn own_disks(
    pool: &PoolRuntime,
    vm: &VmRecord,
) -> Result<Vec<OwnDisk>, crate::xapi::CallError> {
    let engine_id = &pool.engine_config().engine_id;
    let mut disks = Vec::new();
    for vbd in &vm.vbds {
        let record = pool.xapi.vbd_get_record(vbd).await?;
        if record.userdevice == "0" && !record.empty {
            let vdi = pool.xapi.vdi_get_record(&record.vdi).await?;
            if !vdi.is_a_snapshot {
                disks.push(OwnDisk {
                    vdi: record.vdi,
                    sr: vdi.sr,
                    tagged: tags::has_engine_id(&vdi.other_config, engine_id)
                        && vdi.other_config.get(tags::ROLE).map(String::as_str)
                            == Some(tags::ROLE_DELEGATE_DISK),
                });
            }
        }
    }
    Ok(disks)
}

/// A disk of a delegate's own (its system disk, cloned from the template).
struct OwnDisk {
    vdi: OpaqueRef,
    sr: OpaqueRef,
    /// Tagged as this engine's delegate disk already.
    tagged: bool,
}

/// Tags the delegate's disks that are not yet: they outlive the VM for a
/// moment at teardown, and tagged they are found again (as orphans) if the
/// engine dies in that moment.
async fn tag_own_disks(
    pool: &PoolRuntime,
    disks: &[OwnDisk],
) -> Result<(), crate::xapi::CallError> {
    let engine_id = &pool.engine_config().engine_id;
    for disk in disks.iter().filter(|disk| !disk.tagged) {
        for (key, value) in tags::ownership(engine_id, tags::ROLE_DELEGATE_DISK) {
            pool.xapi
                .vdi_set_other_config_key(&disk.vdi, key, value)
                .await?;
        }
    }
    Ok(())
}

/// Boots the delegate on a host that sees `required_srs`, within the boot caps.
/// Returns the boot permit, held until the delegate has its address.
pub async fn boot(
    pool: &PoolRuntime,
    d: &mut Delegate,
    topo: &Topology,
    required_srs: &[OpaqueRef],
    excluded: &BTreeSet<OpaqueRef>,
    log: &VmLog,
) -> Result<crate::boot_gate::BootPermit, EngineError> {
    let slot = log.cancel().wait(pool.boot_gate.pool_slot()).await?;
    let mut needs = required_srs.to_vec();
    needs.extend(d.own_srs.iter().cloned());
    needs.sort();
    needs.dedup();
    let views = pool
        .host_views(topo, &needs)
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "reading hosts", e))?;
    let memory_needed = pool
        .xapi
        .vm_get_record(&d.vm)
        .await
        .map(|r| r.memory_static_max + r.memory_overhead)
        .map_err(|e| EngineError::xapi(d.label(), "reading", e))?;
    let down: BTreeSet<OpaqueRef> = pool.hosts_down().into_iter().collect();
    let mut avoid = excluded.clone();
    avoid.extend(down.iter().cloned());
    let host = match choose_host(&views, &needs, memory_needed, &avoid) {
        // Every fitting host was tried: the failures may not have been the
        // hosts' fault (a guest that did not boot), so try again anywhere
        // XAPI has not reported down.
        Err(crate::placement::PlacementError::AllExcluded) => {
            log.warn("Every fitting host already failed this delegate once; trying them again");
            choose_host(&views, &needs, memory_needed, &down)?
        }
        other => other?,
    };
    let (host_ref, host_name) = (host.host.clone(), host.name.clone());
    let permit = log
        .cancel()
        .wait(pool.boot_gate.enter(slot, &host_ref))
        .await?;
    let started = Instant::now();
    // The target host, even if the start fails: a retry then knows what to avoid.
    d.host = host_ref.clone();
    d.host_name = host_name.clone();
    if let Err(e) = pool.xapi.vm_start_on(&d.vm, &host_ref).await {
        // An unanswered start may have started it: then it is booting.
        let running =
            e.may_have_taken_effect()
                && pool.xapi.vm_get_record(&d.vm).await.is_ok_and(|r| {
                    r.power_state == PowerState::Running && r.resident_on == host_ref
                });
        if !running {
            return Err(EngineError::xapi(
                format!("{} on {host_name}", d.label()),
                "start",
                e,
            ));
        }
        log.warn(format!(
            "Starting {} got no answer ({e}), but it is running on {host_name}: carrying on",
            d.name
        ));
    }
    log.ok(format!(
        "{} started on {} ({})",
        d.name,
        d.host_name,
        format_duration(started.elapsed())
    ));
    Ok(permit)
}

/// Longest single `event.from` wait, in seconds.
const MAX_EVENT_WAIT_S: f64 = 60.0;

/// Waits for the appliance to write `vm-data/assigned-ip`. Watches the VM
/// with `event.from`, so the number of calls does not grow with boot time;
/// polls `xenstore_data` where events are not available.
pub async fn await_address(
    pool: &PoolRuntime,
    d: &mut Delegate,
    log: &VmLog,
) -> Result<Ipv4Addr, EngineError> {
    let cfg = pool.engine_config();
    let started = Instant::now();
    let deadline = started + cfg.address_timeout();
    // Both only read, so a cancellation may drop them mid-call.
    let cancel = log.cancel();
    let ip = match cancel.guard(watch_for_address(pool, d, deadline)).await {
        Ok(Some(ip)) => ip,
        Ok(None) => cancel.guard(poll_for_address(pool, d, deadline)).await?,
        Err(e) => return Err(e),
    };
    d.ip = Some(ip);
    let how = if pool.addresses.is_some() {
        "static"
    } else {
        pool.dhcp_gate.addressed();
        "DHCP"
    };
    log.ok(format!(
        "{} booted with address {ip} ({how}) after {}",
        d.name,
        format_duration(started.elapsed())
    ));
    Ok(ip)
}

fn address_timeout(pool: &PoolRuntime, d: &Delegate) -> EngineError {
    EngineError::AddressTimeout {
        delegate: d.label(),
        waited_s: pool.engine_config().address_timeout_s,
    }
}

/// The address in a VM record (or event snapshot), once the guest wrote it.
fn assigned_ip(xenstore_data: &serde_json::Value) -> Option<Ipv4Addr> {
    xenstore_data[VM_DATA_ASSIGNED_IP].as_str()?.parse().ok()
}

/// Follows the delegate's VM with `event.from` until its address shows.
/// `Ok(None)` when the pool does not answer events (then the caller polls).
async fn watch_for_address(
    pool: &PoolRuntime,
    d: &Delegate,
    deadline: Instant,
) -> Result<Option<Ipv4Addr>, EngineError> {
    let classes = vec![format!("vm/{}", d.vm)];
    let mut token = String::new();
    loop {
        // The first call (empty token) returns the VM as it is now, at once.
        let wait = match token.is_empty() {
            true => 0.0,
            false => deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .min(MAX_EVENT_WAIT_S),
        };
        let batch = match pool.xapi.event_from(&classes, &token, wait).await {
            Ok(batch) => batch,
            Err(e) if token.is_empty() => {
                tracing::debug!(vm = %d.vm, "event.from unavailable ({e}); polling for the address");
                return Ok(None);
            }
            Err(e) => return Err(EngineError::xapi(d.label(), "watching for its address", e)),
        };
        token = batch.token;
        for event in batch.events.iter().filter(|e| e.reference == d.vm) {
            if event.operation == "del" {
                return Err(EngineError::Teardown(format!(
                    "{} was destroyed while waiting for its address",
                    d.label()
                )));
            }
            if let Some(ip) = assigned_ip(&event.snapshot["xenstore_data"]) {
                return Ok(Some(ip));
            }
        }
        if Instant::now() >= deadline {
            return Err(address_timeout(pool, d));
        }
    }
}

/// Reads `xenstore_data` every `address_poll_interval_s` until the address shows.
async fn poll_for_address(
    pool: &PoolRuntime,
    d: &Delegate,
    deadline: Instant,
) -> Result<Ipv4Addr, EngineError> {
    let cfg = pool.engine_config();
    loop {
        let data = pool
            .xapi
            .vm_get_xenstore_data(&d.vm)
            .await
            .map_err(|e| EngineError::xapi(d.label(), "reading xenstore_data", e))?;
        if let Some(ip) = data
            .get(VM_DATA_ASSIGNED_IP)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            return Ok(ip);
        }
        if Instant::now() >= deadline {
            return Err(address_timeout(pool, d));
        }
        let next = (Instant::now() + cfg.address_poll_interval()).min(deadline);
        tokio::time::sleep_until(next).await;
    }
}

/// How long an agent out of reach is asked again for its identity.
const IDENTITY_PATIENCE: Duration = Duration::from_secs(60);
const IDENTITY_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Asks whoever answers at the delegate's address for its VM uuid and checks
/// it is this delegate (an address collision fails here).
pub async fn verify_identity(
    pool: &PoolRuntime,
    d: &Delegate,
    log: &VmLog,
) -> Result<(), EngineError> {
    let ip =
        d.ip.expect("identity is checked after the address is known");
    // The guest reported its address, so it is up: an agent out of reach may
    // be the network between us (a partition) and is given a while.
    let asked = tokio::time::Instant::now();
    let mut out_of_reach = false;
    let answered = loop {
        match pool.agent.identity(ip, &d.token).await {
            Err(AgentError::Unreachable { .. })
                if asked.elapsed() < IDENTITY_PATIENCE && still_running(pool, d).await =>
            {
                out_of_reach = true;
                tokio::time::sleep(IDENTITY_RETRY_PAUSE).await;
            }
            other => {
                break other.map_err(|e| EngineError::Identity {
                    delegate: d.label(),
                    ip: ip.to_string(),
                    detail: e.to_string(),
                })?;
            }
        }
    };
    let waited = asked.elapsed();
    if out_of_reach {
        log.warn(format!(
            "{}'s agent at {ip} answered only after {} out of reach",
            d.name,
            format_duration(waited)
        ));
    }
    if answered != d.uuid {
        return Err(EngineError::Identity {
            delegate: d.label(),
            ip: ip.to_string(),
            detail: format!(
                "VM {answered} answered instead of {} (address collision)",
                d.uuid
            ),
        });
    }
    log.ok(format!("{} identity verified at {ip}", d.name));
    Ok(())
}

/// Gets a delegate ready for work: address, clone, boot, address, identity.
/// A delegate that fails to boot or to get its address is destroyed and
/// retried (bounded, with backoff), on another host when its host was the problem.
pub async fn provision(
    pool: &PoolRuntime,
    template: &TemplateInfo,
    topo: &Topology,
    network: &OpaqueRef,
    required_srs: &[OpaqueRef],
    job: &str,
    log: &VmLog,
) -> Result<Delegate, EngineError> {
    let cfg = pool.engine_config();
    let holder = pool.shared.next_holder();
    let mut lease = acquire_address(pool, holder, log).await?;
    let mut excluded = BTreeSet::new();
    let attempts = cfg.provision_attempts.max(1);
    let mut backoff = Duration::from_secs(cfg.retry_backoff_s);
    // Held while a retry waits for a DHCP address to be freed, and until it
    // has one: fresh delegates of the pool wait meanwhile.
    let mut starved = None;
    for attempt in 1..=attempts {
        wait_for_dhcp_turn(pool, starved.is_some(), log).await?;
        let mut d = match create(pool, template, network, job, lease.take(), log).await {
            Ok(d) => d,
            Err((e, returned)) => {
                lease = returned;
                // Cancelled meanwhile (a wait it was in gave up): no retry.
                log.cancel().check()?;
                if attempt == attempts {
                    return Err(e);
                }
                log.warn(format!(
                    "Provisioning failed (attempt {attempt}/{attempts}): {e}; retrying in {}",
                    format_duration(backoff)
                ));
                log.cancel().wait(tokio::time::sleep(backoff)).await?;
                backoff *= 2;
                continue;
            }
        };
        let result = async {
            let _permit = boot(pool, &mut d, topo, required_srs, &excluded, log).await?;
            await_address(pool, &mut d, log).await?;
            verify_identity(pool, &d, log).await
        }
        .await;
        match result {
            Ok(()) => return Ok(d),
            Err(e) => {
                let host = d.host.clone();
                let host_name = d.host_name.clone();
                lease = d.lease.take();
                starved = None;
                // Only a retry that follows can be starved.
                if attempt < attempts
                    && matches!(e, EngineError::AddressTimeout { .. })
                    && pool.addresses.is_none()
                    && let Some((holding, priority)) = pool.dhcp_gate.starve()
                {
                    log.warn(format!(
                        "{} got no DHCP address while {holding} other delegate(s) of the pool hold theirs: the DHCP range may be exhausted (or the guest did not come up); the retry waits for a freed address, and new delegates wait for the retry",
                        d.name
                    ));
                    starved = Some(priority);
                }
                teardown(pool, d, log).await;
                // Someone else answers on that address: try another one. The
                // released address goes to the back of the free list.
                if matches!(e, EngineError::Identity { .. }) && lease.is_some() {
                    drop(lease.take());
                    lease = acquire_address(pool, holder, log).await?;
                }
                log.cancel().check()?;
                if attempt == attempts
                    || matches!(e, EngineError::Placement(_) | EngineError::Cancelled(_))
                {
                    return Err(e);
                }
                if e.is_host_down() && !host.is_null() {
                    pool.mark_host_down(&host);
                }
                let elsewhere = if e.is_host_related() && !host.is_null() {
                    excluded.insert(host);
                    format!(" on another host than {host_name}")
                } else {
                    String::new()
                };
                log.warn(format!(
                    "Delegate failed (attempt {attempt}/{attempts}): {e}; retrying{elsewhere} in {}",
                    format_duration(backoff)
                ));
                log.cancel().wait(tokio::time::sleep(backoff)).await?;
                backoff *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// With DHCP, before a delegate is made (cancellable): a starved retry
/// waits for an address to be freed; a fresh delegate waits while any retry
/// of the pool is starved.
async fn wait_for_dhcp_turn(
    pool: &PoolRuntime,
    starved: bool,
    log: &VmLog,
) -> Result<(), EngineError> {
    if pool.addresses.is_some() {
        return Ok(());
    }
    let gate = &pool.dhcp_gate;
    if starved {
        log.progress("Waiting for a DHCP address to be freed");
        return log.cancel().wait(gate.wait_freed()).await;
    }
    if gate.has_starved() {
        log.progress("Waiting: a delegate of the pool that got no DHCP address goes first");
    }
    log.cancel().wait(gate.enter()).await.map(|_| ())
}

/// Shuts the delegate down and destroys it with its VIFs and its own disks,
/// then returns its address. Only touches a VM tagged as our delegate.
/// Failures are logged, never raised: teardown is best effort and says what it left.
pub async fn teardown(pool: &PoolRuntime, d: Delegate, log: &VmLog) {
    let started = Instant::now();
    // Its DHCP address is taken as freed even if the teardown fails: a
    // waiting delegate that then finds none is retried (liveness first).
    pool.dhcp_gate
        .released(pool.addresses.is_none() && d.ip.is_some());
    match destroy_delegate_vm(pool, &d.vm, &d.own_vdis).await {
        Ok(()) => log.ok(format!(
            "{} torn down ({})",
            d.name,
            format_duration(started.elapsed())
        )),
        Err(failed) => {
            log.fail(format!("{} teardown incomplete: {}", d.name, failed.error));
            // Its address stays taken while the VM may still use it.
            if let Some(lease) = d.lease {
                pool.hold_lease(&d.vm, lease);
            }
            pool.agent.tokens().revoke(&d.token);
            if d.counted {
                pool.account(Change::DelegateDestroyed);
            }
            let leftover = crate::reclaim::Leftover::Delegate {
                vm: d.vm,
                name: d.name,
                job: String::new(),
                earlier: false,
                disks: failed.disks_left,
            };
            crate::reclaim::retry_later(pool, leftover, log);
            return;
        }
    }
    if d.counted {
        pool.account(Change::DelegateDestroyed);
    }
    pool.agent.tokens().revoke(&d.token);
    if let Some(lease) = d.lease {
        lease.release();
    }
}

/// A delegate's removal that stopped partway: why, and the disks still to
/// destroy (after the VM, when it is still there).
pub(crate) struct DelegateRemovalFailed {
    pub error: EngineError,
    pub disks_left: Vec<OpaqueRef>,
}

impl From<EngineError> for DelegateRemovalFailed {
    fn from(error: EngineError) -> Self {
        DelegateRemovalFailed {
            error,
            disks_left: Vec::new(),
        }
    }
}

/// Destroys a delegate VM: detaches work disks, shuts it down, destroys the VM
/// and the disks that came with its clone. Refuses anything not tagged as ours.
pub(crate) async fn destroy_delegate_vm(
    pool: &PoolRuntime,
    vm: &OpaqueRef,
    own_vdis: &[OpaqueRef],
) -> Result<(), DelegateRemovalFailed> {
    let x = &pool.xapi;
    let record = x
        .vm_get_record(vm)
        .await
        .map_err(|e| EngineError::xapi(format!("VM {vm}"), "reading", e))?;
    let label = format!("VM {vm} {:?}", record.name_label);
    if !tags::is_our_disposable_vm(&record, &pool.engine_config().engine_id) {
        return Err(EngineError::NotOurs {
            action: "destroy",
            object: label,
        }
        .into());
    }
    let fail = |step: &'static str| {
        let object = label.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    // The VM may halt under us (its host crashed): a step that fails
    // because it already halted is done, not an error.
    let halted = || async { x.vm_get_power_state(vm).await.ok() == Some(PowerState::Halted) };
    if record.power_state != PowerState::Halted {
        if let Err(e) = detach_work_disks(pool, &record).await
            && !halted().await
        {
            return Err(e.into());
        }
        if let Err(e) = x.vm_clean_shutdown(vm).await
            && !halted().await
        {
            tracing::warn!(vm = %vm, error = %e, "clean shutdown failed; forcing");
            if let Err(e) = x.vm_hard_shutdown(vm).await
                && !halted().await
            {
                return Err(fail("hard shutdown")(e).into());
            }
        }
    }
    let own: Vec<OpaqueRef> = if own_vdis.is_empty() {
        // Read again: the work disks' VBDs detached above are gone.
        let record = x.vm_get_record(vm).await.map_err(fail("reading"))?;
        let disks = own_disks(pool, &record)
            .await
            .map_err(fail("reading its disks"))?;
        // Cut short before its disks were tagged (a lost reply, a failure
        // while provisioning): tagged now, before the VM goes.
        tag_own_disks(pool, &disks)
            .await
            .map_err(fail("tagging its disk"))?;
        disks.into_iter().map(|disk| disk.vdi).collect()
    } else {
        own_vdis.to_vec()
    };
    // A destroy whose reply was lost may have destroyed it: the pool says.
    if let Err(e) = x.vm_destroy_confirmed(vm).await {
        return Err(DelegateRemovalFailed {
            error: fail("destroy")(e),
            disks_left: own,
        });
    }
    for (i, vdi) in own.iter().enumerate() {
        if let Err(e) = x.vdi_destroy(vdi).await {
            return Err(DelegateRemovalFailed {
                error: fail("destroying its disk")(e),
                disks_left: own[i..].to_vec(),
            });
        }
    }
    Ok(())
}

/// Unplugs and removes the VBDs of work disks (devices 1..n) of a running
/// delegate; the disks themselves belong to snapshots and are not touched.
/// A VBD already gone is done (it goes with its VDI when a snapshot's
/// removal destroyed the disk it attached).
async fn detach_work_disks(pool: &PoolRuntime, vm: &VmRecord) -> Result<(), EngineError> {
    let x = &pool.xapi;
    let gone = |e: &crate::xapi::CallError| e.code() == Some(xapi_proto::codes::HANDLE_INVALID);
    for vbd in &vm.vbds {
        let record = match x.vbd_get_record(vbd).await {
            Err(e) if gone(&e) => continue,
            read => read.map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "reading", e))?,
        };
        if record.userdevice == "0" {
            continue;
        }
        if record.currently_attached {
            match x.vbd_unplug(vbd).await {
                Err(e) if gone(&e) => continue,
                unplugged => {
                    unplugged.map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "unplug", e))?
                }
            }
        }
        match x.vbd_destroy(vbd).await {
            Err(e) if gone(&e) => {}
            destroyed => {
                destroyed.map_err(|e| EngineError::xapi(format!("VBD {vbd}"), "destroy", e))?
            }
        }
    }
    Ok(())
}

/// Whether `d`'s VM still runs, asked while its agent cannot be reached (a
/// failed question counts as yes: only XAPI's word that it stopped ends the wait).
pub(crate) fn still_running<'a>(
    pool: &'a PoolRuntime,
    d: &'a Delegate,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        pool.xapi
            .vm_get_power_state(&d.vm)
            .await
            .map_or(true, |state| state == PowerState::Running)
    })
}
