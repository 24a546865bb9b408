//! Routes an XAPI method call (`Class.method`, params) to the model, checking
//! the session, the parameter count and the parameter types as XAPI does.

use crate::events::Interest;
use crate::ops::Ctx;
use serde::Serialize;
use serde::de::DeserializeOwned;
use xapi_proto::records::StringMap;
use xapi_proto::{OpaqueRef, Value, XapiError, codes};

/// How long a cancelled task takes to stop (at its next cancellation point,
/// its work undone); one whose work comes due first was too far along and
/// does it.
const TASK_CANCEL_TAKES: std::time::Duration = std::time::Duration::from_secs(1);

/// Classes whose records can be read with the generic getters.
const CLASSES: &[&str] = &[
    "pool",
    "host",
    "host_metrics",
    "SR",
    "PBD",
    "network",
    "PIF",
    "VM",
    "VM_guest_metrics",
    "VIF",
    "VBD",
    "VDI",
    "task",
];

/// Calls besides the generic getters: (method, parameter count including
/// the session).
const WRITES: &[(&str, usize)] = &[
    ("VM.create", 2),
    ("VM.add_to_blocked_operations", 4),
    ("VM.remove_from_blocked_operations", 3),
    ("VM.set_blocked_operations", 3),
    ("VM.clone", 3),
    ("VM.copy", 4),
    ("VM.provision", 2),
    ("VM.import", 5),
    ("VM.start", 4),
    ("VM.start_on", 5),
    ("VM.clean_shutdown", 2),
    ("VM.hard_shutdown", 2),
    ("VM.destroy", 2),
    ("VM.snapshot", 3),
    ("VM.set_is_a_template", 3),
    ("VM.set_name_label", 3),
    ("VM.set_name_description", 3),
    ("VM.add_to_other_config", 4),
    ("VM.remove_from_other_config", 3),
    ("VM.add_to_xenstore_data", 4),
    ("VM.remove_from_xenstore_data", 3),
    ("VDI.add_to_other_config", 4),
    ("VDI.remove_from_other_config", 3),
    ("VDI.set_name_label", 3),
    ("VDI.create", 2),
    ("VDI.destroy", 2),
    ("VDI.enable_cbt", 2),
    ("VDI.disable_cbt", 2),
    ("VDI.list_changed_blocks", 3),
    ("VDI.data_destroy", 2),
    ("VM.get_allowed_VIF_devices", 2),
    ("VM.get_allowed_VBD_devices", 2),
    ("VIF.create", 2),
    ("VIF.destroy", 2),
    ("VBD.create", 2),
    ("VBD.plug", 2),
    ("VBD.unplug", 2),
    ("VBD.destroy", 2),
    ("host.compute_free_memory", 2),
    ("task.destroy", 2),
    ("task.cancel", 2),
    ("event.from", 4),
    ("event.inject", 3),
    ("session.logout", 1),
];

/// Every method the dispatcher answers, for `system.listMethods`.
pub(crate) fn method_names() -> Vec<String> {
    let mut names: Vec<String> = vec![
        "session.login_with_password".into(),
        "system.listMethods".into(),
    ];
    names.extend(WRITES.iter().map(|(m, _)| m.to_string()));
    // As XAPI lists them: each call that changes objects also as a task.
    names.extend(
        WRITES
            .iter()
            .filter(|(m, _)| !m.starts_with("session.") && !m.starts_with("event."))
            .map(|(m, _)| format!("Async.{m}")),
    );
    for class in CLASSES {
        for op in ["get_all", "get_all_records", "get_record", "get_by_uuid"] {
            names.push(format!("{class}.{op}"));
        }
        if has_field(class, "name_label") {
            names.push(format!("{class}.get_by_name_label"));
        }
        let fields = xapi_proto::defaults::field_names(class);
        names.extend(fields.iter().map(|f| format!("{class}.get_{f}")));
    }
    names.sort();
    names.dedup();
    names
}

/// True when XAPI's records of `class` carry `field`.
fn has_field(class: &str, field: &str) -> bool {
    xapi_proto::defaults::field_names(class).contains(&field)
}

/// Checks that `method` exists, has the right parameter count and a live
/// session, without performing it. Returns the session.
pub(crate) fn precheck(ctx: &Ctx<'_>, method: &str, params: &[Value]) -> Result<String, XapiError> {
    let arity = expected_arity(method)
        .ok_or_else(|| XapiError::new(codes::MESSAGE_METHOD_UNKNOWN, [method]))?;
    if params.len() != arity {
        return Err(XapiError::new(
            codes::MESSAGE_PARAMETER_COUNT_MISMATCH,
            [
                method.to_string(),
                arity.to_string(),
                params.len().to_string(),
            ],
        ));
    }
    let session = string_param(params, 0, "session_id")?;
    if !ctx.m.sessions.contains_key(&OpaqueRef(session.clone())) {
        return Err(XapiError::new(codes::SESSION_INVALID, [session]));
    }
    Ok(session)
}

/// Performs one call.
pub(crate) fn dispatch(
    ctx: &mut Ctx<'_>,
    method: &str,
    params: &[Value],
) -> Result<Value, XapiError> {
    if method == "session.login_with_password" {
        return login(ctx, params);
    }
    let session = precheck(ctx, method, params)?;
    if method == "session.logout" {
        ctx.m.sessions.remove(&OpaqueRef(session));
        return Ok(Value::Null);
    }
    perform(ctx, method, &params[1..])
}

/// Performs a call already checked (an accepted task's, whose session may
/// have ended since): `args` without the session.
pub(crate) fn perform(ctx: &mut Ctx<'_>, method: &str, args: &[Value]) -> Result<Value, XapiError> {
    match write(ctx, method, args)? {
        Some(value) => Ok(value),
        None => read(ctx, method, args),
    }
}

fn expected_arity(method: &str) -> Option<usize> {
    if let Some((_, n)) = WRITES.iter().find(|(m, _)| *m == method) {
        return Some(*n);
    }
    let (class, name) = method.split_once('.')?;
    if !CLASSES.contains(&class) {
        return None;
    }
    // As XAPI: get_by_name_label only for classes with a name, and a
    // getter per field.
    match name {
        "get_all" | "get_all_records" => Some(1),
        "get_record" | "get_by_uuid" => Some(2),
        "get_by_name_label" => has_field(class, "name_label").then_some(2),
        n => n
            .strip_prefix("get_")
            .filter(|field| has_field(class, field))
            .map(|_| 2),
    }
}

fn login(ctx: &mut Ctx<'_>, params: &[Value]) -> Result<Value, XapiError> {
    if !(2..=4).contains(&params.len()) {
        return Err(XapiError::new(
            codes::MESSAGE_PARAMETER_COUNT_MISMATCH,
            [
                "session.login_with_password".to_string(),
                "2".into(),
                params.len().to_string(),
            ],
        ));
    }
    let user = string_param(params, 0, "uname")?;
    let password = string_param(params, 1, "pwd")?;
    let creds = &ctx.spec.credentials;
    if user != creds.user || password != creds.password {
        return Err(XapiError::new(
            codes::SESSION_AUTHENTICATION_FAILED,
            [user, "Authentication failure".into()],
        ));
    }
    let session = OpaqueRef::from_uuid(&ctx.rng.uuid());
    ctx.m.sessions.insert(session.clone(), user.clone());
    ctx.log(format!("session.login_with_password {user}"));
    Ok(Value::String(session.0))
}

/// Performs a write call; `Ok(None)` when `method` is not a write.
fn write(ctx: &mut Ctx<'_>, method: &str, a: &[Value]) -> Result<Option<Value>, XapiError> {
    let value =
        match method {
            "VM.create" => refv(ctx.vm_create(vm_create_param(a)?)?),
            "VM.set_blocked_operations" => {
                let vm = ref_param(a, 0, "self")?;
                let value: StringMap = record_param(a, 1, "value")?;
                ctx.vm_mut(&vm)?.blocked_operations = value;
                ctx.log(format!("{method} {vm}"));
                Value::Null
            }
            "VM.clone" => {
                refv(ctx.vm_clone(&ref_param(a, 0, "vm")?, &string_param(a, 1, "new_name")?)?)
            }
            "VM.copy" => {
                let (vm, name, sr) = (
                    ref_param(a, 0, "vm")?,
                    string_param(a, 1, "new_name")?,
                    ref_param(a, 2, "sr")?,
                );
                refv(ctx.vm_copy(&vm, &name, &sr)?)
            }
            "VM.snapshot" => {
                refv(ctx.vm_snapshot(&ref_param(a, 0, "vm")?, &string_param(a, 1, "new_name")?)?)
            }
            "VM.provision" => void(ctx.vm_provision(&ref_param(a, 0, "vm")?)?),
            "VM.import" => {
                let refs = ctx.vm_import(&string_param(a, 0, "url")?, &ref_param(a, 1, "sr")?)?;
                Value::Array(refs.into_iter().map(refv).collect())
            }
            "VM.start" => {
                void(ctx.vm_start(&ref_param(a, 0, "vm")?, bool_param(a, 1, "start_paused")?)?)
            }
            "VM.start_on" => {
                let (vm, host, paused) = (
                    ref_param(a, 0, "vm")?,
                    ref_param(a, 1, "host")?,
                    bool_param(a, 2, "start_paused")?,
                );
                void(ctx.vm_start_on(&vm, &host, paused)?)
            }
            "VM.clean_shutdown" => void(ctx.vm_shutdown(&ref_param(a, 0, "vm")?, false)?),
            "VM.hard_shutdown" => void(ctx.vm_shutdown(&ref_param(a, 0, "vm")?, true)?),
            "VM.destroy" => void(ctx.vm_destroy(&ref_param(a, 0, "self")?)?),
            "VM.set_is_a_template" => void(
                ctx.vm_set_is_a_template(&ref_param(a, 0, "self")?, bool_param(a, 1, "value")?)?,
            ),
            "VM.set_name_label" | "VM.set_name_description" | "VDI.set_name_label" => {
                set_name(ctx, method, a)?
            }
            "VM.add_to_other_config"
            | "VDI.add_to_other_config"
            | "VM.add_to_xenstore_data"
            | "VM.add_to_blocked_operations" => map_edit(ctx, method, a, true)?,
            "VM.remove_from_other_config"
            | "VDI.remove_from_other_config"
            | "VM.remove_from_xenstore_data"
            | "VM.remove_from_blocked_operations" => map_edit(ctx, method, a, false)?,
            "VDI.destroy" => void(ctx.vdi_destroy(&ref_param(a, 0, "self")?)?),
            "VDI.create" => refv(ctx.vdi_create(record_param(a, 0, "args")?)?),
            "VDI.data_destroy" => void(ctx.vdi_data_destroy(&ref_param(a, 0, "self")?)?),
            "VDI.enable_cbt" => void(ctx.vdi_set_cbt(&ref_param(a, 0, "self")?, true)?),
            "VDI.disable_cbt" => void(ctx.vdi_set_cbt(&ref_param(a, 0, "self")?, false)?),
            "VDI.list_changed_blocks" => Value::from(ctx.vdi_list_changed_blocks(
                &ref_param(a, 0, "vdi_from")?,
                &ref_param(a, 1, "vdi_to")?,
            )?),
            "VM.get_allowed_VIF_devices" => {
                Value::from(ctx.allowed_vif_devices(&ref_param(a, 0, "vm")?)?)
            }
            "VM.get_allowed_VBD_devices" => {
                let vm = ref_param(a, 0, "vm")?;
                Value::from(ctx.allowed_vbd_devices(ctx.vm(&vm)?))
            }
            "VIF.create" => refv(ctx.vif_create(record_param(a, 0, "args")?)?),
            "VIF.destroy" => void(ctx.vif_destroy(&ref_param(a, 0, "self")?)?),
            "VBD.create" => refv(ctx.vbd_create(record_param(a, 0, "args")?)?),
            "VBD.plug" => void(ctx.vbd_plug(&ref_param(a, 0, "self")?)?),
            "VBD.unplug" => void(ctx.vbd_unplug(&ref_param(a, 0, "self")?)?),
            "VBD.destroy" => void(ctx.vbd_destroy(&ref_param(a, 0, "self")?)?),
            "task.cancel" => {
                // Cooperative, as in XAPI: the task is `cancelling` until its
                // call ends, then `cancelled`. A finished task stays as it is.
                let task = ref_param(a, 0, "task")?;
                let record = ctx
                    .m
                    .tasks
                    .get_mut(&task)
                    .ok_or_else(|| XapiError::handle_invalid("task", task.as_str()))?;
                if record.status == xapi_proto::records::TaskStatus::Pending {
                    record.status = xapi_proto::records::TaskStatus::Cancelling;
                    ctx.log(format!("task {task} cancelling"));
                    let at = ctx.now.after(TASK_CANCEL_TAKES);
                    let pool = ctx.pool;
                    ctx.schedule
                        .at(at, pool, crate::schedule::Scheduled::TaskCancelled { task });
                }
                Value::Null
            }
            "task.destroy" => {
                let task = ref_param(a, 0, "self")?;
                ctx.m
                    .tasks
                    .remove(&task)
                    .ok_or_else(|| XapiError::handle_invalid("task", task.as_str()))?;
                Value::Null
            }
            "event.from" => {
                let entries: Vec<String> = record_param(a, 0, "classes")?;
                let token = string_param(a, 1, "token")?;
                let interests: Vec<Interest> = entries
                    .iter()
                    .filter_map(|e| Interest::parse(e, CLASSES))
                    .collect();
                let current = records_for(ctx, &interests);
                let tracker = events_of(ctx);
                tracker.watch(interests.clone(), current);
                tracker.from(&interests, &token)?
            }
            "event.inject" => {
                let (class, reference) = (string_param(a, 0, "class")?, ref_param(a, 1, "ref")?);
                let now = ctx.now;
                // Clients take the token inject returns as the start of their
                // event loop, for whatever classes they ask next: from here on,
                // every change counts.
                let current = records_for(ctx, &[Interest::All]);
                let tracker = events_of(ctx);
                tracker.watch(vec![Interest::All], current);
                Value::from(tracker.inject(now, &class, &reference)?)
            }
            "host.compute_free_memory" => {
                let host = ref_param(a, 0, "host")?;
                if !ctx.m.hosts.contains_key(&host) {
                    return Err(XapiError::handle_invalid("host", host.as_str()));
                }
                Value::from(ctx.m.host_free_memory(&host))
            }
            _ => return Ok(None),
        };
    Ok(Some(value))
}

/// The pool's event stream, started on the first `event.*` call (runs that
/// never ask pay nothing for it).
fn events_of<'a>(ctx: &'a mut Ctx<'_>) -> &'a mut crate::events::EventTracker {
    ctx.m.events.get_or_insert_with(Default::default)
}

/// The records `interests` cover, by (class, ref): what the event tracker compares.
pub(crate) fn records_for(
    ctx: &Ctx<'_>,
    interests: &[Interest],
) -> std::collections::BTreeMap<(String, OpaqueRef), Value> {
    let mut records = std::collections::BTreeMap::new();
    let all = interests.contains(&Interest::All);
    for class in CLASSES {
        let whole = all
            || interests
                .iter()
                .any(|i| matches!(i, Interest::Class(c) if c == class));
        if whole {
            for (r, v) in class_records(ctx, class) {
                records.insert((class.to_string(), r), v);
            }
            continue;
        }
        for interest in interests {
            if let Interest::Object(c, r) = interest
                && c == class
                && let Some(v) = record_of(ctx, class, r)
            {
                records.insert((class.to_string(), r.clone()), v);
            }
        }
    }
    records
}

fn set_name(ctx: &mut Ctx<'_>, method: &str, a: &[Value]) -> Result<Value, XapiError> {
    let target = ref_param(a, 0, "self")?;
    let value = string_param(a, 1, "value")?;
    let (class, field) = method.split_once(".set_").expect("setter name");
    match class {
        "VM" => {
            let vm = ctx.vm_mut(&target)?;
            match field {
                "name_label" => vm.name_label = value.clone(),
                _ => vm.name_description = value.clone(),
            }
        }
        _ => {
            let vdi = ctx
                .m
                .vdis
                .get_mut(&target)
                .ok_or_else(|| XapiError::handle_invalid("VDI", target.as_str()))?;
            vdi.name_label = value.clone();
        }
    }
    ctx.log(format!("{method} {target} {value:?}"));
    Ok(Value::Null)
}

fn map_edit(ctx: &mut Ctx<'_>, method: &str, a: &[Value], add: bool) -> Result<Value, XapiError> {
    let target = ref_param(a, 0, "self")?;
    let key = string_param(a, 1, "key")?;
    let (class, op) = method.split_once('.').expect("method name");
    let field = op
        .strip_prefix("add_to_")
        .or_else(|| op.strip_prefix("remove_from_"))
        .expect("map edit name");
    let map: &mut StringMap = match (class, field) {
        ("VM", "other_config") => &mut ctx.vm_mut(&target)?.other_config,
        ("VM", "blocked_operations") => &mut ctx.vm_mut(&target)?.blocked_operations,
        ("VM", _) => &mut ctx.vm_mut(&target)?.xenstore_data,
        _ => {
            &mut ctx
                .m
                .vdis
                .get_mut(&target)
                .ok_or_else(|| XapiError::handle_invalid("VDI", target.as_str()))?
                .other_config
        }
    };
    if add {
        let value = string_param(a, 2, "value")?;
        if map.contains_key(&key) {
            return Err(XapiError::new(
                codes::MAP_DUPLICATE_KEY,
                [class, field, target.as_str(), key.as_str()],
            ));
        }
        map.insert(key.clone(), value.clone());
        ctx.log(format!("{method} {target} {key}={value}"));
    } else if map.remove(&key).is_some() {
        ctx.log(format!("{method} {target} {key}"));
    }
    Ok(Value::Null)
}

fn read(ctx: &mut Ctx<'_>, method: &str, a: &[Value]) -> Result<Value, XapiError> {
    let (class, name) = method.split_once('.').expect("checked by arity");
    match name {
        "get_all" => Ok(Value::Array(
            class_records(ctx, class)
                .into_keys()
                .map(|r| Value::String(r.0))
                .collect(),
        )),
        "get_all_records" => Ok(Value::Object(
            class_records(ctx, class)
                .into_iter()
                .map(|(r, v)| (r.0, v))
                .collect(),
        )),
        "get_by_uuid" => {
            let uuid = string_param(a, 0, "uuid")?;
            class_records(ctx, class)
                .into_iter()
                .find(|(_, v)| v["uuid"] == uuid.as_str())
                .map(|(r, _)| Value::String(r.0))
                .ok_or_else(|| XapiError::uuid_invalid(class, &uuid))
        }
        "get_by_name_label" => {
            let label = string_param(a, 0, "label")?;
            Ok(Value::Array(
                class_records(ctx, class)
                    .into_iter()
                    .filter(|(_, v)| v["name_label"] == label.as_str())
                    .map(|(r, _)| Value::String(r.0))
                    .collect(),
            ))
        }
        _ => {
            let target = ref_param(a, 0, "self")?;
            let record = record_of(ctx, class, &target)
                .ok_or_else(|| XapiError::handle_invalid(class, target.as_str()))?;
            if name == "get_record" {
                return Ok(record);
            }
            let field = name.strip_prefix("get_").expect("getter");
            record
                .get(field)
                .cloned()
                .ok_or_else(|| XapiError::new(codes::MESSAGE_METHOD_UNKNOWN, [method]))
        }
    }
}

/// A record as XAPI returns it: the model's fields, and (for served pools)
/// XAPI's defaults for the rest.
fn to_value<R: Serialize>(full: bool, class: &str, r: &R) -> Value {
    let mut v = serde_json::to_value(r).expect("records serialize");
    if full {
        xapi_proto::defaults::complete(class, &mut v);
    }
    v
}

fn table_values<R: Serialize>(
    full: bool,
    class: &str,
    t: &crate::model::Table<R>,
) -> Vec<(OpaqueRef, Value)> {
    t.iter()
        .map(|(r, v)| (r.clone(), to_value(full, class, v)))
        .collect()
}

/// Every record of a class, ordered by reference.
fn class_records(ctx: &Ctx<'_>, class: &str) -> std::collections::BTreeMap<OpaqueRef, Value> {
    let m = &*ctx.m;
    let rows = match class {
        "pool" => vec![(m.pool_ref.clone(), to_value(m.full_records, class, &m.pool))],
        "host" => table_values(m.full_records, class, &m.hosts),
        "host_metrics" => table_values(m.full_records, class, &m.host_metrics),
        "SR" => table_values(m.full_records, class, &m.srs),
        "PBD" => table_values(m.full_records, class, &m.pbds),
        "network" => table_values(m.full_records, class, &m.networks),
        "PIF" => table_values(m.full_records, class, &m.pifs),
        "VM" => table_values(m.full_records, class, &m.vms),
        "VM_guest_metrics" => table_values(m.full_records, class, &m.guest_metrics),
        "VIF" => table_values(m.full_records, class, &m.vifs),
        "VBD" => table_values(m.full_records, class, &m.vbds),
        "VDI" => table_values(m.full_records, class, &m.vdis),
        "task" => table_values(m.full_records, class, &m.tasks),
        _ => vec![],
    };
    rows.into_iter().collect()
}

/// One record, without serializing the whole class.
fn record_of(ctx: &Ctx<'_>, class: &str, r: &OpaqueRef) -> Option<Value> {
    let m = &*ctx.m;
    match class {
        "pool" => (r == &m.pool_ref).then(|| to_value(m.full_records, class, &m.pool)),
        "host" => m.hosts.get(r).map(|v| to_value(m.full_records, class, v)),
        "host_metrics" => m
            .host_metrics
            .get(r)
            .map(|v| to_value(m.full_records, class, v)),
        "SR" => m.srs.get(r).map(|v| to_value(m.full_records, class, v)),
        "PBD" => m.pbds.get(r).map(|v| to_value(m.full_records, class, v)),
        "network" => m
            .networks
            .get(r)
            .map(|v| to_value(m.full_records, class, v)),
        "PIF" => m.pifs.get(r).map(|v| to_value(m.full_records, class, v)),
        "VM" => m.vms.get(r).map(|v| to_value(m.full_records, class, v)),
        "VM_guest_metrics" => m
            .guest_metrics
            .get(r)
            .map(|v| to_value(m.full_records, class, v)),
        "VIF" => m.vifs.get(r).map(|v| to_value(m.full_records, class, v)),
        "VBD" => m.vbds.get(r).map(|v| to_value(m.full_records, class, v)),
        "VDI" => m.vdis.get(r).map(|v| to_value(m.full_records, class, v)),
        "task" => m.tasks.get(r).map(|v| to_value(m.full_records, class, v)),
        _ => None,
    }
}

/// XAPI's void result.
fn void(_: ()) -> Value {
    Value::Null
}

fn refv(r: OpaqueRef) -> Value {
    Value::String(r.0)
}

fn field_type_error(name: &str) -> XapiError {
    XapiError::new(codes::FIELD_TYPE_ERROR, [name])
}

fn string_param(a: &[Value], i: usize, name: &str) -> Result<String, XapiError> {
    match a.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(field_type_error(name)),
    }
}

fn ref_param(a: &[Value], i: usize, name: &str) -> Result<OpaqueRef, XapiError> {
    string_param(a, i, name).map(OpaqueRef)
}

fn bool_param(a: &[Value], i: usize, name: &str) -> Result<bool, XapiError> {
    match a.get(i) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "false" || s == "0" => Ok(false),
        _ => Err(field_type_error(name)),
    }
}

/// The record of `VM.create`: each field XAPI requires must be there.
fn vm_create_param(a: &[Value]) -> Result<xapi_proto::records::VmCreate, XapiError> {
    let fields = a.first().and_then(Value::as_object);
    let fields = fields.ok_or_else(|| field_type_error("args"))?;
    if let Some(missing) = xapi_proto::records::VmCreate::REQUIRED_FIELDS
        .iter()
        .find(|name| !fields.contains_key(**name))
    {
        return Err(field_type_error(missing));
    }
    record_param(a, 0, "args")
}

fn record_param<T: DeserializeOwned>(a: &[Value], i: usize, name: &str) -> Result<T, XapiError> {
    let v = a.get(i).ok_or_else(|| field_type_error(name))?;
    serde_json::from_value(v.clone()).map_err(|e| field_type_error(&format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_methods_names_every_getter_that_answers() {
        let listed = super::method_names();
        for method in [
            "VM.get_by_name_label",
            "VM.get_power_state",
            "VDI.get_by_name_label",
            "VDI.get_virtual_size",
            "host.get_API_version_major",
            "VBD.get_userdevice",
            "task.get_status",
        ] {
            assert!(listed.iter().any(|m| m == method), "{method} is not listed");
        }
        assert!(!listed.iter().any(|m| m == "VBD.get_by_name_label"));
        assert!(listed.iter().any(|m| m == "Async.VM.clone"));
        assert!(!listed.iter().any(|m| m == "Async.VM.get_record"));
        for method in &listed {
            if method.starts_with("system.") || method.starts_with("session.") {
                continue;
            }
            let call = method.strip_prefix("Async.").unwrap_or(method);
            assert!(
                super::expected_arity(call).is_some(),
                "{method} is listed, not answered"
            );
        }
    }
}
