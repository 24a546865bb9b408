//! XAPI semantics of the simulator, call by call: results, state changes and
//! error codes as XAPI has them.

#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in call lists

use serde_json::json;
use xapi_proto::Value;
use xapi_proto::codes;
use xapi_sim::spec::WorldSpec;
use xapi_sim::time::SimTime;
use xapi_sim::{ApplianceAnswer, PoolId, Sim};

const WORLD: &str = r#"
[timing]
clone_s = [5, 5]

[[pool]]
name = "lab"
hosts = 2
host_memory_gib = 8
dom0_memory_gib = 2
local_sr_gib = 100

[[pool.sr]]
name = "nfs"
size_gib = 100
default = true

[[pool.network]]
name = "net"
management = true
dhcp = { first = "10.0.0.10", last = "10.0.0.10" }

[[pool.vms]]
name = "vm"
count = 2
disks_gib = [10]
memory_gib = 1

[[pool.vms]]
name = "huge"
memory_gib = 7
running = false

[[pool.vms]]
name = "local-vm"
sr = "Local storage on lab-host-2"
memory_gib = 1
"#;

struct World {
    sim: Sim,
    pool: PoolId,
    session: String,
    now_ms: u64,
}

impl World {
    fn new() -> World {
        let spec: WorldSpec = toml::from_str(WORLD).unwrap();
        let mut sim = Sim::new(&spec, 1).unwrap();
        let pool = sim.pool_id("lab").unwrap();
        let session = sim
            .dispatch(
                pool,
                SimTime(0),
                "session.login_with_password",
                &[json!("root"), json!("password")],
            )
            .unwrap();
        World {
            sim,
            pool,
            session: session.as_str().unwrap().to_string(),
            now_ms: 0,
        }
    }

    fn call(&mut self, method: &str, args: &[Value]) -> Result<Value, xapi_proto::XapiError> {
        self.now_ms += 1000;
        let mut params = vec![json!(self.session)];
        params.extend_from_slice(args);
        self.sim
            .dispatch(self.pool, SimTime(self.now_ms), method, &params)
    }

    fn ok(&mut self, method: &str, args: &[Value]) -> Value {
        self.call(method, args)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn err(&mut self, method: &str, args: &[Value]) -> Vec<String> {
        self.call(method, args).expect_err(method).description()
    }

    fn vm(&mut self, name: &str) -> Value {
        self.ok("VM.get_by_name_label", &[json!(name)])[0].clone()
    }

    fn vm_count(&mut self, name: &str) -> usize {
        self.ok("VM.get_by_name_label", &[json!(name)])
            .as_array()
            .unwrap()
            .len()
    }

    fn wait(&mut self, seconds: u64) {
        self.now_ms += seconds * 1000;
        self.sim.advance_to(SimTime(self.now_ms));
    }

    /// Imports the appliance and clones a delegate-like VM from it.
    fn appliance_clone(&mut self, name: &str) -> Value {
        let url = xapi_sim::spec::ApplianceSpec::default().url;
        let sr = self
            .ok("pool.get_all_records", &[])
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()["default_SR"]
            .clone();
        let imported = self.ok("VM.import", &[json!(url), sr, json!(false), json!(false)]);
        self.ok("VM.clone", &[imported[0].clone(), json!(name)])
    }
}

#[test]
fn sessions_and_arity_are_checked() {
    let mut w = World::new();
    let bad = w.sim.dispatch(
        w.pool,
        SimTime(0),
        "session.login_with_password",
        &[json!("root"), json!("nope")],
    );
    assert_eq!(bad.unwrap_err().code, codes::SESSION_AUTHENTICATION_FAILED);
    let stale = w.sim.dispatch(
        w.pool,
        SimTime(0),
        "VM.get_all",
        &[json!("OpaqueRef:stale")],
    );
    assert_eq!(
        stale.unwrap_err().description(),
        ["SESSION_INVALID", "OpaqueRef:stale"]
    );
    assert_eq!(
        w.err("VM.get_record", &[]),
        [
            "MESSAGE_PARAMETER_COUNT_MISMATCH",
            "VM.get_record",
            "2",
            "1"
        ]
    );
    assert_eq!(
        w.err("VM.frobnicate", &[json!("x")]),
        ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    );
    assert_eq!(
        w.err("VM.get_record", &[json!("OpaqueRef:nope")]),
        ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    );
    w.ok("session.logout", &[]);
    assert_eq!(w.err("VM.get_all", &[])[0], "SESSION_INVALID");
}

#[test]
fn records_and_getters_use_xapi_field_names() {
    let mut w = World::new();
    let vm = w.vm("vm-01");
    let record = w.ok("VM.get_record", &[vm.clone()]);
    assert_eq!(record["power_state"], "Running");
    assert_eq!(w.ok("VM.get_power_state", &[vm.clone()]), "Running");
    assert_eq!(w.ok("VM.get_VBDs", &[vm.clone()]), record["VBDs"]);
    let uuid = record["uuid"].clone();
    assert_eq!(w.ok("VM.get_by_uuid", &[uuid]), vm);
    assert_eq!(
        w.err("VM.get_by_uuid", &[json!("no-such-uuid")]),
        ["UUID_INVALID", "VM", "no-such-uuid"]
    );
    let hosts = w.ok("host.get_all", &[]);
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    let free = w.ok("host.compute_free_memory", &[hosts[0].clone()]);
    assert!(free.as_i64().unwrap() > 0);
}

#[test]
fn power_state_and_template_rules() {
    let mut w = World::new();
    let vm = w.vm("vm-01");
    let ref_str = vm.as_str().unwrap().to_string();
    assert_eq!(
        w.err("VM.clone", &[vm.clone(), json!("x")]),
        ["VM_BAD_POWER_STATE", &ref_str, "halted", "running"]
    );
    assert_eq!(
        w.err("VM.destroy", &[vm.clone()]),
        ["VM_BAD_POWER_STATE", &ref_str, "halted", "running"]
    );
    w.ok("VM.clean_shutdown", &[vm.clone()]);
    assert_eq!(
        w.err("VM.clean_shutdown", &[vm.clone()]),
        ["VM_BAD_POWER_STATE", &ref_str, "running", "halted"]
    );
    w.ok("VM.set_is_a_template", &[vm.clone(), json!(true)]);
    assert_eq!(
        w.err("VM.start", &[vm.clone(), json!(false), json!(false)]),
        ["VM_IS_TEMPLATE", &ref_str, "start"]
    );
    let clone = w.ok("VM.clone", &[vm.clone(), json!("copy")]);
    assert_eq!(
        w.ok("VM.get_is_a_template", &[clone.clone()]),
        true,
        "a clone of a template is a template"
    );
    w.ok("VM.provision", &[clone.clone()]);
    assert_eq!(w.ok("VM.get_is_a_template", &[clone]), false);
}

#[test]
fn other_config_edits_follow_xapi() {
    let mut w = World::new();
    let vm = w.vm("vm-02");
    w.ok(
        "VM.add_to_other_config",
        &[vm.clone(), json!("k"), json!("v")],
    );
    let dup = w.err(
        "VM.add_to_other_config",
        &[vm.clone(), json!("k"), json!("w")],
    );
    assert_eq!(dup[0], "MAP_DUPLICATE_KEY");
    w.ok("VM.remove_from_other_config", &[vm.clone(), json!("k")]);
    w.ok(
        "VM.remove_from_other_config",
        &[vm.clone(), json!("missing")],
    );
    assert_eq!(w.ok("VM.get_other_config", &[vm]), json!({}));
}

#[test]
fn start_on_checks_storage_and_memory() {
    let mut w = World::new();
    let local = w.vm("local-vm");
    w.ok("VM.clean_shutdown", &[local.clone()]);
    let hosts = w.ok("host.get_all_records", &[]);
    let host = |name: &str| {
        hosts
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, h)| h["name_label"] == name)
            .map(|(r, _)| json!(r))
            .unwrap()
    };
    let e = w.err(
        "VM.start_on",
        &[
            local.clone(),
            host("lab-host-1"),
            json!(false),
            json!(false),
        ],
    );
    assert_eq!(
        e[0],
        codes::VM_REQUIRES_SR,
        "host 1 cannot see host 2's local SR"
    );
    w.ok(
        "VM.start_on",
        &[
            local.clone(),
            host("lab-host-2"),
            json!(false),
            json!(false),
        ],
    );
    assert_eq!(w.ok("VM.get_resident_on", &[local]), host("lab-host-2"));
    // 8 GiB hosts with 2 GiB dom0 and a 1 GiB VM each: a 7 GiB VM fits nowhere.
    let huge = w.vm("huge");
    let e = w.err(
        "VM.start_on",
        &[huge.clone(), host("lab-host-1"), json!(false), json!(false)],
    );
    assert_eq!(e[0], codes::HOST_NOT_ENOUGH_FREE_MEMORY);
    assert_eq!(e[1], (7i64 << 30).to_string(), "needed");
    assert_eq!(
        w.err("VM.start", &[huge, json!(false), json!(false)]),
        ["NO_HOSTS_AVAILABLE"]
    );
}

#[test]
fn the_appliance_gets_a_dhcp_lease_reports_it_and_releases_it_with_its_vif() {
    let mut w = World::new();
    let a = w.appliance_clone("ABD 1");
    w.ok("VM.provision", &[a.clone()]);
    w.ok("VM.set_is_a_template", &[a.clone(), json!(false)]);
    w.ok(
        "VM.add_to_xenstore_data",
        &[a.clone(), json!("vm-data/dhcp"), json!("true")],
    );
    w.ok("VM.start", &[a.clone(), json!(false), json!(false)]);
    w.wait(60);
    let data = w.ok("VM.get_xenstore_data", &[a.clone()]);
    assert_eq!(data["vm-data/assigned-ip"], "10.0.0.10");
    let uuid = w.ok("VM.get_uuid", &[a.clone()]);
    let answer = w
        .sim
        .appliance_at(w.pool, SimTime(w.now_ms), "10.0.0.10".parse().unwrap());
    let ApplianceAnswer::Appliance { vm_uuid, vm_data } = answer else {
        panic!("an appliance should answer, got {answer:?}");
    };
    assert_eq!(vm_uuid, uuid.as_str().unwrap());
    assert!(
        vm_data.keys().all(|k| k.starts_with("vm-data/")),
        "the guest sees only its vm-data keys: {vm_data:?}"
    );

    // The range holds one address: a second appliance gets no lease, so no address.
    let b = w.appliance_clone("ABD 2");
    w.ok("VM.provision", &[b.clone()]);
    w.ok(
        "VM.add_to_xenstore_data",
        &[b.clone(), json!("vm-data/dhcp"), json!("true")],
    );
    w.ok("VM.start", &[b.clone(), json!(false), json!(false)]);
    w.wait(60);
    assert!(
        w.ok("VM.get_xenstore_data", &[b.clone()])
            .get("vm-data/assigned-ip")
            .is_none()
    );

    // Destroying the first appliance's VIF releases the lease; the second one gets it on retry.
    w.ok("VM.hard_shutdown", &[a.clone()]);
    let vifs = w.ok("VM.get_VIFs", &[a.clone()]);
    w.ok("VIF.destroy", &[vifs[0].clone()]);
    w.wait(30);
    assert_eq!(
        w.ok("VM.get_xenstore_data", &[b])["vm-data/assigned-ip"],
        "10.0.0.10"
    );
}

#[test]
fn snapshot_disks_plug_read_only_and_block_destroy_while_attached() {
    let mut w = World::new();
    let vm = w.vm("vm-01");
    let snap = w.ok("VM.snapshot", &[vm.clone(), json!("snap")]);
    let snap_rec = w.ok("VM.get_record", &[snap.clone()]);
    assert_eq!(snap_rec["is_a_snapshot"], true);
    assert_eq!(snap_rec["snapshot_of"], vm);
    let vbd = w.ok("VBD.get_record", &[snap_rec["VBDs"][0].clone()]);
    let vdi = vbd["VDI"].clone();
    assert_eq!(w.ok("VDI.get_is_a_snapshot", &[vdi.clone()]), true);

    let a = w.appliance_clone("worker");
    w.ok("VM.provision", &[a.clone()]);
    w.ok("VM.start", &[a.clone(), json!(false), json!(false)]);
    let new_vbd = w.ok(
        "VBD.create",
        &[json!({"VM": a, "VDI": vdi, "userdevice": "1", "bootable": false, "mode": "RO", "type": "Disk",
                  "unpluggable": true, "empty": false, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})],
    );
    w.ok("VBD.plug", &[new_vbd.clone()]);
    assert_eq!(
        w.err("VBD.plug", &[new_vbd.clone()])[0],
        codes::DEVICE_ALREADY_ATTACHED
    );
    assert_eq!(
        w.err("VDI.destroy", &[vdi.clone()]),
        ["VDI_IN_USE", vdi.as_str().unwrap(), "destroy"]
    );
    w.ok("VBD.unplug", &[new_vbd.clone()]);
    assert_eq!(
        w.err("VBD.unplug", &[new_vbd.clone()])[0],
        codes::DEVICE_ALREADY_DETACHED
    );
    w.ok("VBD.destroy", &[new_vbd]);
    w.ok("VM.destroy", &[snap]);
    w.ok("VDI.destroy", &[vdi]);
}

#[test]
fn a_disk_another_vm_writes_cannot_be_attached_read_write() {
    let mut w = World::new();
    let owner = w.vm("vm-01");
    let vbds = w.ok("VM.get_VBDs", &[owner.clone()]);
    let vdi = w.ok("VBD.get_VDI", &[vbds[0].clone()]);
    let vbd_on = |w: &mut World, vm: &Value, mode: &str| {
        w.ok(
            "VBD.create",
            &[json!({"VM": vm, "VDI": vdi, "userdevice": "1", "bootable": false, "mode": mode, "type": "Disk",
                      "unpluggable": true, "empty": false, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})],
        )
    };

    // A halted VM with the running owner's disk does not start.
    let other = w.appliance_clone("other");
    w.ok("VM.provision", &[other.clone()]);
    let rw = vbd_on(&mut w, &other, "RW");
    assert_eq!(
        w.err("VM.start", &[other.clone(), json!(false), json!(false)]),
        ["VDI_IN_USE", vdi.as_str().unwrap()]
    );
    assert_eq!(w.ok("VM.get_power_state", &[other.clone()]), "Halted");

    // Once the owner is halted it does, and then the owner cannot.
    w.ok("VM.hard_shutdown", &[owner.clone()]);
    w.ok("VM.start", &[other.clone(), json!(false), json!(false)]);
    assert_eq!(
        w.err("VM.start", &[owner.clone(), json!(false), json!(false)]),
        ["VDI_IN_USE", vdi.as_str().unwrap()]
    );

    // Nor can a third VM plug it, even read-only, while it is written.
    let reader = w.appliance_clone("reader");
    w.ok("VM.provision", &[reader.clone()]);
    w.ok("VM.start", &[reader.clone(), json!(false), json!(false)]);
    let ro = vbd_on(&mut w, &reader, "RO");
    assert_eq!(
        w.err("VBD.plug", &[ro.clone()]),
        ["VDI_IN_USE", vdi.as_str().unwrap()]
    );
    w.ok("VBD.unplug", &[rw]);
    w.ok("VBD.plug", &[ro]);
}

#[test]
fn sr_full_refuses_a_clone_and_creates_nothing() {
    let mut w = World::new();
    let vm = w.vm("vm-02");
    w.ok("VM.clean_shutdown", &[vm.clone()]);
    let before = w.ok("VM.get_all", &[]).as_array().unwrap().len();
    let sr = w
        .ok("pool.get_all_records", &[])
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["default_SR"]
        .clone();
    // Full 10 GiB copies fill the 100 GiB SR within a few rounds.
    for i in 0..20 {
        if w.call("VM.copy", &[vm.clone(), json!(format!("c{i}")), sr.clone()])
            .is_err()
        {
            break;
        }
    }
    let after_fill = w.ok("VM.get_all", &[]).as_array().unwrap().len();
    assert!(after_fill > before);
    let vdis_before = w.ok("VDI.get_all", &[]).as_array().unwrap().len();
    let full = w.err("VM.copy", &[vm, json!("one-more"), sr]);
    assert_eq!(full[0], codes::SR_FULL);
    assert_eq!(
        w.ok("VM.get_all", &[]).as_array().unwrap().len(),
        after_fill,
        "no VM created"
    );
    assert_eq!(
        w.ok("VDI.get_all", &[]).as_array().unwrap().len(),
        vdis_before,
        "no VDI created"
    );
}

#[test]
fn cbt_reports_the_blocks_a_day_changed_and_data_destroy_keeps_only_metadata() {
    let mut w = World::new();
    let vm = w.vm("vm-01");
    let disk_of = |w: &mut World, vm: &Value| {
        let rec = w.ok("VM.get_record", &[vm.clone()]);
        w.ok("VBD.get_record", &[rec["VBDs"][0].clone()])["VDI"].clone()
    };
    let live = disk_of(&mut w, &vm);
    let snap1 = w.ok("VM.snapshot", &[vm.clone(), json!("day 0")]);
    let base = disk_of(&mut w, &snap1);
    assert_eq!(
        w.err("VDI.list_changed_blocks", &[base.clone(), base.clone()]),
        ["VDI_NO_CBT_METADATA", base.as_str().unwrap()]
    );
    assert_eq!(
        w.err("VDI.data_destroy", &[base.clone()])[0],
        codes::VDI_NO_CBT_METADATA
    );

    // The operator enables CBT; a snapshot on day 0 and one on day 1.
    w.ok("VDI.enable_cbt", &[live.clone()]);
    let snap1 = w.ok("VM.snapshot", &[vm.clone(), json!("day 0 cbt")]);
    let day0 = disk_of(&mut w, &snap1);
    assert_eq!(w.ok("VDI.get_cbt_enabled", &[day0.clone()]), true);
    w.wait(86_400);
    let snap2 = w.ok("VM.snapshot", &[vm.clone(), json!("day 1 cbt")]);
    let day1 = disk_of(&mut w, &snap2);
    let bitmap = w.ok("VDI.list_changed_blocks", &[day0.clone(), day1.clone()]);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(bitmap.as_str().unwrap())
        .unwrap();
    assert_eq!(
        bytes.len(),
        10 * 16384 / 8,
        "one bit per 64 KiB of a 10 GiB disk"
    );
    let changed: u32 = bytes.iter().map(|b| b.count_ones()).sum();
    assert!(
        changed > 0 && changed < 10 * 16384 / 10,
        "{changed} blocks changed in a day"
    );
    // The same snapshot twice: nothing changed.
    let same = w.ok("VDI.list_changed_blocks", &[day1.clone(), day1.clone()]);
    let same = base64::engine::general_purpose::STANDARD
        .decode(same.as_str().unwrap())
        .unwrap();
    assert!(same.iter().all(|b| *b == 0));

    // Reduced to metadata, a snapshot disk still answers CBT but holds no data.
    w.ok("VM.destroy", &[snap1]);
    w.ok("VDI.data_destroy", &[day0.clone()]);
    assert_eq!(w.ok("VDI.get_type", &[day0.clone()]), "cbt_metadata");
    let uuid = w.ok("VDI.get_uuid", &[day0.clone()]);
    let mut buf = [0u8; 16];
    let err = w
        .sim
        .read_vdi(w.pool, uuid.as_str().unwrap(), 0, &mut buf)
        .unwrap_err();
    assert!(err.contains("CBT metadata only"), "{err}");
    assert_eq!(w.ok("VDI.list_changed_blocks", &[day0, day1]), bitmap);
}

#[test]
fn event_from_follows_one_object_and_reports_only_what_changed() {
    let mut w = World::new();
    let watched = w.vm("local-vm");
    let other = w.appliance_clone("ABD 1");
    let class = format!("vm/{}", watched.as_str().unwrap());
    // An empty token: the object as it is now, and nothing else.
    let first = w.ok("event.from", &[json!([class]), json!(""), json!(0.0)]);
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!(events[0]["operation"], "add");
    assert_eq!(events[0]["ref"], watched);
    let token = first["token"].clone();
    // A change elsewhere is not reported; a change to the object is, once.
    w.ok("VM.set_name_label", &[other.clone(), json!("renamed")]);
    let quiet = w.ok("event.from", &[json!([class]), token.clone(), json!(0.0)]);
    assert!(quiet["events"].as_array().unwrap().is_empty(), "{quiet}");
    w.ok(
        "VM.set_name_description",
        &[watched.clone(), json!("watched")],
    );
    let changed = w.ok(
        "event.from",
        &[json!([class]), quiet["token"].clone(), json!(0.0)],
    );
    let events = changed["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{changed}");
    assert_eq!(events[0]["operation"], "mod");
    assert_eq!(events[0]["snapshot"]["name_description"], "watched");
    // A guest happening (the appliance writing its address) is an event too.
    let class = format!("vm/{}", other.as_str().unwrap());
    w.ok("VM.provision", &[other.clone()]);
    w.ok("VM.set_is_a_template", &[other.clone(), json!(false)]);
    w.ok(
        "VM.add_to_xenstore_data",
        &[other.clone(), json!("vm-data/dhcp"), json!("true")],
    );
    let start = w.ok("event.from", &[json!([class]), json!(""), json!(0.0)]);
    w.ok("VM.start", &[other.clone(), json!(false), json!(false)]);
    w.wait(60);
    let booted = w.ok(
        "event.from",
        &[json!([class]), start["token"].clone(), json!(0.0)],
    );
    let wrote_ip = booted["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["snapshot"]["xenstore_data"]["vm-data/assigned-ip"].is_string());
    assert!(wrote_ip, "{booted}");
}

/// What an `Async.VM.clone` of the halted `huge` named `name` made of its task and VM
/// once its time has passed: the task record, and the VMs named `name`.
fn async_clone(w: &mut World, name: &str, cancel: bool) -> (Value, Value) {
    let vm = w.vm("huge");
    let task = w.ok("Async.VM.clone", &[vm, json!(name)]);
    // The same instant: the clone (5 s) cannot have finished.
    w.now_ms -= 1000;
    assert_eq!(w.ok("task.get_status", &[task.clone()]), "pending");
    w.now_ms -= 1000;
    assert_eq!(w.vm_count(name), 0, "the work lands when its time is up");
    if cancel {
        w.now_ms -= 1000;
        w.ok("task.cancel", &[task.clone()]);
        w.now_ms -= 1000;
        assert_eq!(w.ok("task.get_status", &[task.clone()]), "cancelling");
    }
    w.wait(10);
    let record = w.ok("task.get_record", &[task]);
    let named = w.ok("VM.get_by_name_label", &[json!(name)]);
    (record, named)
}

#[test]
fn an_async_call_answers_a_pending_task_that_its_work_completes_later() {
    let mut w = World::new();
    let (record, named) = async_clone(&mut w, "copy", false);
    assert_eq!(record["status"], "success", "{record}");
    assert_eq!(record["progress"], 1.0);
    // The result is the call's, as XML-RPC text.
    let made = xapi_proto::wire::xmlrpc::parse_value(record["result"].as_str().unwrap()).unwrap();
    assert_eq!(named, json!([made]));
}

#[test]
fn an_async_call_that_fails_fails_its_task_with_the_calls_error() {
    let mut w = World::new();
    let task = w.ok(
        "Async.VM.start",
        &[json!("OpaqueRef:nope"), json!(false), json!(false)],
    );
    w.wait(10);
    let record = w.ok("task.get_record", &[task]);
    assert_eq!(record["status"], "failure");
    assert_eq!(
        record["error_info"],
        json!(["HANDLE_INVALID", "VM", "OpaqueRef:nope"])
    );
    // What no call could do is refused before any task exists.
    assert_eq!(
        w.err("Async.VM.clone", &[json!("OpaqueRef:x")]),
        ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.clone", "3", "2"]
    );
}

#[test]
fn task_cancel_is_cooperative_and_leaves_finished_tasks_alone() {
    let mut w = World::new();
    let (record, named) = async_clone(&mut w, "copy", true);
    assert_eq!(record["status"], "cancelled");
    let task = record["uuid"].clone();
    assert_eq!(named, json!([]), "a cancelled clone makes nothing");
    let task = w.ok("task.get_by_uuid", &[task]);
    assert_eq!(record["error_info"], json!(["TASK_CANCELLED", task]));
    // Cancelling a finished task changes nothing; an unknown one is a bad handle.
    w.ok("task.cancel", &[task.clone()]);
    assert_eq!(w.ok("task.get_status", &[task]), "cancelled");
    assert_eq!(
        w.err("task.cancel", &[json!("OpaqueRef:nope")]),
        ["HANDLE_INVALID", "task", "OpaqueRef:nope"]
    );
}

#[test]
fn a_task_cancelled_too_late_to_stop_does_its_work() {
    let mut w = World::new();
    let vm = w.vm("huge");
    let task = w.ok("Async.VM.clone", &[vm, json!("late")]);
    // The clone takes 5 s and a cancel 1 s: cancelled 4.5 s in, it ends done.
    w.now_ms += 3500;
    w.ok("task.cancel", &[task.clone()]);
    w.now_ms -= 1000;
    assert_eq!(w.ok("task.get_status", &[task.clone()]), "cancelling");
    w.wait(5);
    assert_eq!(w.ok("task.get_status", &[task]), "success");
    assert_eq!(w.vm_count("late"), 1);
}

#[test]
fn only_real_getters_answer() {
    let mut w = World::new();
    assert!(
        w.ok("VDI.get_by_name_label", &[json!("nothing")])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // XAPI has get_by_name_label only for classes with a name.
    assert_eq!(
        w.err("VBD.get_by_name_label", &[json!("x")]),
        ["MESSAGE_METHOD_UNKNOWN", "VBD.get_by_name_label"]
    );
    let vm = w.vm("vm-01");
    assert_eq!(w.ok("VM.get_name_label", &[vm.clone()]), "vm-01");
    assert_eq!(
        w.err("VM.get_no_such_field", &[vm]),
        ["MESSAGE_METHOD_UNKNOWN", "VM.get_no_such_field"]
    );
}

#[test]
fn allowed_devices_are_those_no_vif_or_vbd_holds_and_a_vif_device_is_a_number() {
    let mut w = World::new();
    let vm = w.vm("vm-01");
    let vif_devices = |w: &mut World| -> Vec<String> {
        serde_json::from_value(w.ok("VM.get_allowed_VIF_devices", &[vm.clone()])).unwrap()
    };
    let vbd_devices = |w: &mut World| -> Vec<String> {
        serde_json::from_value(w.ok("VM.get_allowed_VBD_devices", &[vm.clone()])).unwrap()
    };
    // vm-01 has one VIF (device 0) and one disk (userdevice 0).
    let all_but_0: Vec<String> = (1..=15).map(|n| n.to_string()).collect();
    assert_eq!(vif_devices(&mut w), all_but_0);
    let vbds = vbd_devices(&mut w);
    assert_eq!(
        (vbds.len(), vbds[0].as_str(), vbds[253].as_str()),
        (254, "1", "254")
    );

    let network = w.ok("network.get_all", &[])[0].clone();
    let vif = |device: &str| {
        json!({"device": device, "network": network, "VM": vm, "MAC": "", "MTU": "1500",
               "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    };
    assert_eq!(
        w.err("VIF.create", &[vif("eth1")]),
        ["INVALID_DEVICE", "eth1"]
    );
    assert_eq!(w.err("VIF.create", &[vif("")]), ["INVALID_DEVICE", ""]);
    // Devices are numbers: "00" is device 0, which vm-01 has.
    assert_eq!(
        w.err("VIF.create", &[vif("00")]),
        ["DEVICE_ALREADY_EXISTS", "00"]
    );
    assert_eq!(
        w.err("VIF.create", &[vif("0")]),
        ["DEVICE_ALREADY_EXISTS", "0"]
    );
    w.ok("VIF.create", &[vif("3")]);
    assert!(!vif_devices(&mut w).contains(&"3".to_string()));
    assert_eq!(vif_devices(&mut w).len(), 14);

    // A VBD made with `autodetect` takes the first allowed device.
    let vdi = w.ok("VM.get_VBDs", &[vm.clone()]);
    let vdi = w.ok("VBD.get_VDI", &[vdi[0].clone()]);
    let cd = w.ok(
        "VBD.create",
        &[
            json!({"VM": vm, "VDI": vdi, "userdevice": "autodetect", "bootable": false,
                 "mode": "RO", "type": "Disk", "empty": false, "other_config": {},
                 "qos_algorithm_type": "", "qos_algorithm_params": {}}),
        ],
    );
    assert_eq!(w.ok("VBD.get_userdevice", &[cd]), "1");
    assert_eq!(vbd_devices(&mut w)[0], "2");
    // Unknown VMs are HANDLE_INVALID, as anywhere.
    assert_eq!(
        w.err("VM.get_allowed_VIF_devices", &[json!("OpaqueRef:nope")]),
        ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    );
}
