//! The delegate template: one per pool, hidden, tagged as ours. Found where it
//! is (even if an operator moved it to another SR), deployed when missing.

use crate::error::EngineError;
use crate::pool::{PoolRuntime, Topology, VmLog};
use crate::tags;
use xapi_proto::OpaqueRef;
use xapi_proto::records::VmRecord;
use xapi_proto::tags::HIDE_FROM_XENCENTER;

/// Name of the template VM, as XenCenter would show it if it were not hidden.
pub const TEMPLATE_NAME: &str = "abd delegate template";

/// Where the pool's template is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateInfo {
    pub vm: OpaqueRef,
    pub uuid: String,
    /// SR holding its system disk.
    pub sr: OpaqueRef,
    pub sr_name: String,
}

/// How `ensure` got the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateOutcome {
    /// Already known or found by its tag.
    Found,
    /// Found on another SR than last time.
    Moved { from_sr: String },
    /// Deployed because the pool had none.
    Deployed,
}

/// Finds the pool's template or deploys one; serialised per pool.
pub async fn ensure(
    pool: &PoolRuntime,
    topo: &Topology,
    log: &VmLog,
) -> Result<(TemplateInfo, TemplateOutcome), EngineError> {
    let mut cached = pool.template.lock().await;
    let found = find(pool, topo).await?;
    let outcome = match (&found, cached.as_ref()) {
        (Some(now), Some(before)) if now.sr != before.sr => TemplateOutcome::Moved {
            from_sr: before.sr_name.clone(),
        },
        (Some(_), _) => TemplateOutcome::Found,
        (None, _) => TemplateOutcome::Deployed,
    };
    let info = match found {
        Some(info) => info,
        None => {
            log.progress("No delegate template in the pool: deploying one");
            deploy(pool, topo).await?
        }
    };
    match &outcome {
        TemplateOutcome::Found => {
            log.ok(format!("Delegate template found on SR {:?}", info.sr_name))
        }
        TemplateOutcome::Moved { from_sr } => log.ok(format!(
            "Delegate template found on SR {:?} (moved from {from_sr:?})",
            info.sr_name
        )),
        TemplateOutcome::Deployed => log.ok(format!(
            "Delegate template deployed on SR {:?}",
            info.sr_name
        )),
    }
    *cached = Some(info.clone());
    Ok((info, outcome))
}

/// Looks for our template among the pool's VMs.
pub async fn find(
    pool: &PoolRuntime,
    topo: &Topology,
) -> Result<Option<TemplateInfo>, EngineError> {
    let engine_id = &pool.engine_config().engine_id;
    let vms = pool
        .xapi
        .vm_get_all_records()
        .await
        .map_err(|e| EngineError::xapi(format!("pool {}", pool.name()), "listing VMs", e))?;
    let mut ours: Vec<(OpaqueRef, VmRecord)> = vms
        .into_iter()
        .filter(|(_, vm)| tags::is_our_template(vm, engine_id))
        .collect();
    if ours.len() > 1 {
        tracing::warn!(
            pool = pool.name(),
            count = ours.len(),
            "several delegate templates; using the first by uuid"
        );
        ours.sort_by(|a, b| a.1.uuid.cmp(&b.1.uuid));
    }
    let Some((vm_ref, vm)) = ours.into_iter().next() else {
        return Ok(None);
    };
    let sr = system_disk_sr(pool, &vm_ref, &vm).await?;
    Ok(Some(TemplateInfo {
        vm: vm_ref,
        uuid: vm.uuid,
        sr_name: topo.sr_name(&sr),
        sr,
    }))
}

async fn system_disk_sr(
    pool: &PoolRuntime,
    vm_ref: &OpaqueRef,
    vm: &VmRecord,
) -> Result<OpaqueRef, EngineError> {
    for vbd in &vm.vbds {
        let record =
            pool.xapi.vbd_get_record(vbd).await.map_err(|e| {
                EngineError::xapi(format!("template {vm_ref}"), "reading its disks", e)
            })?;
        if record.userdevice == "0" && !record.empty {
            let vdi = pool.xapi.vdi_get_record(&record.vdi).await.map_err(|e| {
                EngineError::xapi(format!("template {vm_ref}"), "reading its disk", e)
            })?;
            return Ok(vdi.sr);
        }
    }
    Err(EngineError::Template(format!(
        "template {vm_ref} has no system disk"
    )))
}

/// The SR a new template goes to: the configured one, else the pool's default
/// SR if shared, else any shared SR; a local SR only in a one-host pool.
pub fn choose_sr(pool: &PoolRuntime, topo: &Topology) -> Result<OpaqueRef, EngineError> {
    if let Some(name) = &pool.config.template_sr {
        return topo
            .srs
            .iter()
            .find(|(_, s)| &s.name_label == name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| {
                EngineError::Template(format!("no SR named {name:?} in pool {}", pool.name()))
            });
    }
    let is_user_sr = |sr: &xapi_proto::records::SrRecord| sr.content_type != "iso";
    if let Some(default) = topo.srs.get(&topo.default_sr)
        && (default.shared || topo.hosts.len() == 1)
    {
        return Ok(topo.default_sr.clone());
    }
    if let Some((r, _)) = topo.srs.iter().find(|(_, s)| s.shared && is_user_sr(s)) {
        return Ok(r.clone());
    }
    if topo.hosts.len() == 1
        && let Some((r, _)) = topo.srs.iter().find(|(_, s)| is_user_sr(s))
    {
        return Ok(r.clone());
    }
    Err(EngineError::Template(format!(
        "pool {} has {} hosts and no shared SR to hold the template",
        pool.name(),
        topo.hosts.len()
    )))
}

/// Imports the appliance and makes it our hidden, tagged template.
pub async fn deploy(pool: &PoolRuntime, topo: &Topology) -> Result<TemplateInfo, EngineError> {
    let sr = choose_sr(pool, topo)?;
    let x = &pool.xapi;
    let url = &pool.engine_config().appliance_url;
    let object = format!("template in pool {}", pool.name());
    let imported = x
        .vm_import(url, &sr)
        .await
        .map_err(|e| EngineError::xapi(&object, "import", e))?;
    let vm_ref = imported
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Template(format!("importing {url} produced no VM")))?;
    match finish_import(pool, topo, &vm_ref, sr).await {
        Ok(info) => Ok(info),
        Err(e) => {
            // We imported it: whatever stopped us, it must not stay behind.
            discard_import(pool, &vm_ref).await;
            Err(e)
        }
    }
}

/// Tags, names and marks a freshly imported appliance as our template.
async fn finish_import(
    pool: &PoolRuntime,
    topo: &Topology,
    vm_ref: &OpaqueRef,
    sr: OpaqueRef,
) -> Result<TemplateInfo, EngineError> {
    let x = &pool.xapi;
    let vm_ref = vm_ref.clone();
    let object = format!("template {vm_ref}");
    let fail = |step: &'static str| {
        let object = object.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    let vm = x.vm_get_record(&vm_ref).await.map_err(fail("reading"))?;
    // Tag first, so that whatever happens next the VM is recognisably ours.
    let engine_id = pool.engine_config().engine_id.clone();
    for (key, value) in [
        (tags::ENGINE_ID, engine_id.as_str()),
        (tags::ROLE, tags::ROLE_TEMPLATE),
        (tags::TEMPLATE_UUID, vm.uuid.as_str()),
        (HIDE_FROM_XENCENTER, "true"),
    ] {
        x.vm_set_other_config_key(&vm_ref, key, value)
            .await
            .map_err(fail("tagging"))?;
    }
    x.vm_set_name_label(&vm_ref, TEMPLATE_NAME)
        .await
        .map_err(fail("naming"))?;
    x.vm_set_name_description(
        &vm_ref,
        "Backup delegate template (managed by abd; do not edit)",
    )
    .await
    .map_err(fail("describing"))?;
    // Delegates get their own VIF on the chosen network; the template needs none.
    for vif in &vm.vifs {
        x.vif_destroy(vif).await.map_err(fail("removing its VIF"))?;
    }
    x.vm_set_is_a_template(&vm_ref, true)
        .await
        .map_err(fail("marking as template"))?;
    Ok(TemplateInfo {
        vm: vm_ref,
        uuid: vm.uuid,
        sr_name: topo.sr_name(&sr),
        sr,
    })
}

/// Destroys an appliance we imported but could not make our template, with
/// its disks (best effort, logged).
async fn discard_import(pool: &PoolRuntime, vm: &OpaqueRef) {
    let x = &pool.xapi;
    let mut disks = Vec::new();
    if let Ok(record) = x.vm_get_record(vm).await {
        for vbd in &record.vbds {
            if let Ok(b) = x.vbd_get_record(vbd).await
                && !b.empty
            {
                disks.push(b.vdi);
            }
        }
    }
    if let Err(e) = tag_disks_as_ours(pool, &disks).await {
        tracing::warn!(%vm, error = %e, "could not tag a half-deployed template's disks");
    }
    if let Err(e) = x.vm_destroy_confirmed(vm).await {
        tracing::warn!(%vm, error = %e, "could not remove a half-deployed template");
        return;
    }
    for vdi in disks {
        if let Err(e) = x.vdi_destroy(&vdi).await {
            tracing::warn!(%vdi, error = %e, "could not remove a half-deployed template's disk");
        }
    }
}

/// Tags a template's disks as ours before its VM goes: an engine that dies
/// once the VM is gone leaves disks the next one's reclaim knows as ours.
async fn tag_disks_as_ours(
    pool: &PoolRuntime,
    disks: &[OpaqueRef],
) -> Result<(), crate::xapi::CallError> {
    let engine_id = &pool.engine_config().engine_id;
    for vdi in disks {
        for (key, value) in tags::ownership(engine_id, tags::ROLE_DELEGATE_DISK) {
            pool.xapi.vdi_set_other_config_key(vdi, key, value).await?;
        }
    }
    Ok(())
}

/// Deletes the pool's template (refused while delegates exist). True if one was deleted.
pub async fn delete(pool: &PoolRuntime, topo: &Topology) -> Result<bool, EngineError> {
    let live = pool
        .shared
        .accounting
        .lock()
        .expect("accounting lock poisoned")
        .pool(pool.name())
        .live;
    if live > 0 {
        return Err(EngineError::Template(format!(
            "{live} delegates exist in pool {}; delete the template when they are gone",
            pool.name()
        )));
    }
    let mut cached = pool.template.lock().await;
    let Some(info) = find(pool, topo).await? else {
        *cached = None;
        return Ok(false);
    };
    let x = &pool.xapi;
    let object = format!("template {}", info.vm);
    let fail = |step: &'static str| {
        let object = object.clone();
        move |e| EngineError::xapi(object, step, e)
    };
    let vm = x.vm_get_record(&info.vm).await.map_err(fail("reading"))?;
    if !tags::is_our_template(&vm, &pool.engine_config().engine_id) {
        return Err(EngineError::NotOurs {
            action: "delete",
            object: format!("VM {} {:?}", info.vm, vm.name_label),
        });
    }
    let mut vdis = Vec::new();
    for vbd in &vm.vbds {
        let record = x
            .vbd_get_record(vbd)
            .await
            .map_err(fail("reading its disks"))?;
        if !record.empty {
            vdis.push(record.vdi);
        }
    }
    tag_disks_as_ours(pool, &vdis)
        .await
        .map_err(fail("tagging its disks"))?;
    x.vm_destroy_confirmed(&info.vm)
        .await
        .map_err(fail("destroy"))?;
    for vdi in vdis {
        x.vdi_destroy(&vdi)
            .await
            .map_err(fail("destroying its disk"))?;
    }
    *cached = None;
    Ok(true)
}

/// Replaces the template with a freshly imported one.
pub async fn redeploy(pool: &PoolRuntime, topo: &Topology) -> Result<TemplateInfo, EngineError> {
    delete(pool, topo).await?;
    let info = deploy(pool, topo).await?;
    *pool.template.lock().await = Some(info.clone());
    Ok(info)
}
