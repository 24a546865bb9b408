//! How long each XAPI method takes, by kind of work.

use crate::spec::{SecondsRange, TimingSpec};

/// The duration range for `method` (`Class.name`). An `Async.` call only
/// creates its task, a write; its work takes the call's own time after.
pub(crate) fn range_for(t: &TimingSpec, method: &str) -> SecondsRange {
    if method.starts_with("Async.") {
        return t.write_s;
    }
    let (class, name) = method.split_once('.').unwrap_or(("", method));
    match (class, name) {
        ("session", "login_with_password") => t.login_s,
        ("VM", "clone") => t.clone_s,
        ("VM", "copy") => t.copy_s,
        ("VM", "provision") => t.provision_s,
        ("VM", "import") => t.import_s,
        ("VM", "start" | "start_on") => t.start_s,
        ("VM", "clean_shutdown") => t.shutdown_s,
        ("VM", "hard_shutdown") => t.hard_shutdown_s,
        ("VM", "destroy") => t.destroy_s,
        ("VM", "snapshot") => t.snapshot_s,
        ("VBD", "plug") => t.vbd_plug_s,
        ("VBD", "unplug") => t.vbd_unplug_s,
        ("VDI", "destroy") => t.vdi_destroy_s,
        (_, n) if n.starts_with("get_") || n == "compute_free_memory" => t.read_s,
        _ => t.write_s,
    }
}
