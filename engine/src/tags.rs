//! Our `other_config` namespace, and the ownership rules built on it.
//!
//! The engine only ever modifies or destroys objects that carry its own
//! engine id; these functions are the one place that decides "is it ours".

use xapi_proto::records::{StringMap, VdiRecord, VdiType, VmRecord};

/// Engine instance that created the object.
pub const ENGINE_ID: &str = "abd:engine-id";
/// What the object is to us: `template`, `delegate` or `snapshot`.
pub const ROLE: &str = "abd:role";
/// The job a delegate or snapshot belongs to.
pub const JOB: &str = "abd:job";
/// Uuid of the template VM itself; clones inherit the key, so a VM is our
/// template only when this equals its own uuid.
pub const TEMPLATE_UUID: &str = "abd:template-uuid";
/// Role value of the delegate template.
pub const ROLE_TEMPLATE: &str = "template";
/// Role value of a delegate VM.
pub const ROLE_DELEGATE: &str = "delegate";
/// Role value of a snapshot the engine took of a protected VM.
pub const ROLE_SNAPSHOT: &str = "snapshot";
/// Role value of a VDI a restore created (the operator's to keep).
pub const ROLE_RESTORED: &str = "restored";
/// Role value of a replica VDI (kept up to date by replication jobs).
pub const ROLE_REPLICA: &str = "replica";
/// Role value of a replica VM: halted, start blocked, its disks the replica VDIs.
pub const ROLE_REPLICA_VM: &str = "replica-vm";
/// Role value of a network interface of a replica VM.
pub const ROLE_REPLICA_VIF: &str = "replica-vif";
/// On a replica VM: the id in the data store (the uuid) of the VM it is a replica of.
pub const REPLICA_OF: &str = "abd:replica-of";
/// On a replica VM or VDI: its own uuid. Clones and snapshots an operator
/// takes of a replica inherit every key, with another uuid: they are never
/// taken for ours.
pub const OWN_UUID: &str = "abd:own-uuid";
/// On a VDI the engine creates: an id unique to that `VDI.create`, so that
/// a VDI whose creation got no answer is found, and never taken for another.
pub const CREATED_AS: &str = "abd:created-as";
/// Role value of a delegate's own disk (cloned from the template's).
pub const ROLE_DELEGATE_DISK: &str = "delegate-disk";
/// Role value of a disk of one of our snapshots, tagged before the snapshot
/// VM is destroyed so that an engine dying in between leaves a findable disk.
pub const ROLE_SNAPSHOT_DISK: &str = "snapshot-disk";
/// Role value of a snapshot disk kept as CBT metadata only (the base of the
/// next incremental backup of that disk).
pub const ROLE_CBT_BASE: &str = "cbt-base";

/// True when the map carries our engine id.
pub fn has_engine_id(other_config: &StringMap, engine_id: &str) -> bool {
    other_config.get(ENGINE_ID).map(String::as_str) == Some(engine_id)
}

/// True when the VM is our delegate template.
pub fn is_our_template(vm: &VmRecord, engine_id: &str) -> bool {
    has_engine_id(&vm.other_config, engine_id)
        && vm.other_config.get(TEMPLATE_UUID) == Some(&vm.uuid)
        && vm.is_a_template
        && !vm.is_a_snapshot
}

/// True when the VM was created by this engine and is not its template:
/// a delegate, a snapshot it took, or a clone interrupted before it was retagged.
pub fn is_our_disposable_vm(vm: &VmRecord, engine_id: &str) -> bool {
    has_engine_id(&vm.other_config, engine_id)
        && !vm.is_control_domain
        && vm.other_config.get(TEMPLATE_UUID) != Some(&vm.uuid)
        && vm.other_config.get(ROLE).map(String::as_str) != Some(ROLE_REPLICA_VM)
}

/// True when the VM is a replica this engine keeps (never reclaimed; nor is
/// a clone of one, which is the operator's).
pub fn is_our_replica_vm(vm: &VmRecord, engine_id: &str) -> bool {
    has_engine_id(&vm.other_config, engine_id)
        && vm.other_config.get(ROLE).map(String::as_str) == Some(ROLE_REPLICA_VM)
        && vm.other_config.get(OWN_UUID) == Some(&vm.uuid)
        && !vm.is_a_snapshot
        && !vm.is_a_template
}

/// True when the VM is a replica VM this engine created but never stamped
/// with its uuid (it died in between): no `OWN_UUID` at all, and no disks
/// yet. A clone of a stamped replica carries a (wrong) `OWN_UUID`, so it is
/// never taken for one.
pub fn is_our_unstamped_replica_vm(vm: &VmRecord, engine_id: &str) -> bool {
    has_engine_id(&vm.other_config, engine_id)
        && vm.other_config.get(ROLE).map(String::as_str) == Some(ROLE_REPLICA_VM)
        && !vm.other_config.contains_key(OWN_UUID)
        && vm.vbds.is_empty()
        && !vm.is_a_snapshot
        && !vm.is_a_template
}

/// True when the VM is one of our delegates (of any job).
pub fn is_our_delegate(vm: &VmRecord, engine_id: &str) -> bool {
    is_our_disposable_vm(vm, engine_id)
        && vm.other_config.get(ROLE).map(String::as_str) == Some(ROLE_DELEGATE)
}

/// True when the VM is a snapshot this engine took.
pub fn is_our_snapshot(vm: &VmRecord, engine_id: &str) -> bool {
    is_our_disposable_vm(vm, engine_id)
        && vm.is_a_snapshot
        && vm.other_config.get(ROLE).map(String::as_str) == Some(ROLE_SNAPSHOT)
}

/// On a restored or replica VDI: what it holds, `<vm>@<version>#<disk>` (`vm`
/// the VM's id in the data store, its uuid; disk from 1);
/// `<vm>@updating#<disk>` while a replication writes it.
pub const RESTORED_FROM: &str = "abd:restored-from";

/// True when the VDI was created by a restore or a replication of this engine
/// (it holds a version and is kept).
pub fn is_our_restored_vdi(vdi: &VdiRecord, engine_id: &str) -> bool {
    has_engine_id(&vdi.other_config, engine_id)
        && !vdi.is_a_snapshot
        && match vdi.other_config.get(ROLE).map(String::as_str) {
            Some(ROLE_RESTORED) => true,
            // Replicas are cloned and snapshotted by operators (fail-over
            // tests): only the VDI itself is ours.
            Some(ROLE_REPLICA) => vdi.other_config.get(OWN_UUID) == Some(&vdi.uuid),
            _ => false,
        }
}

/// True when the VDI is a disk of a delegate or snapshot of ours, attached
/// or not. One with our engine id and no role is one too: changing a key is
/// a remove then an add, and a crash between them took its role off (a
/// snapshot disk becoming a CBT base, a delegate's disk being tagged).
pub fn is_our_work_disk(vdi: &VdiRecord, engine_id: &str) -> bool {
    has_engine_id(&vdi.other_config, engine_id)
        && matches!(
            vdi.other_config.get(ROLE).map(String::as_str),
            Some(ROLE_DELEGATE_DISK | ROLE_SNAPSHOT_DISK) | None
        )
}

/// True when the VDI is a disk of a delegate or snapshot of ours whose VM is
/// gone (an engine died between destroying the VM and its disks, or between
/// reducing a snapshot disk to CBT metadata and calling it a base): garbage.
pub fn is_our_orphan_disk(vdi: &VdiRecord, engine_id: &str) -> bool {
    is_our_work_disk(vdi, engine_id) && vdi.vbds.is_empty()
}

/// The keys that make an object ours with `role`, engine id last: an object
/// is ours only once it carries our engine id, so the id goes on when
/// everything else is in place (an engine dying halfway leaves no half-ours object).
pub fn ownership<'a>(engine_id: &'a str, role: &'a str) -> [(&'static str, &'a str); 2] {
    [(ROLE, role), (ENGINE_ID, engine_id)]
}

/// True when the VDI is a CBT base this engine keeps (metadata only).
pub fn is_our_cbt_base(vdi: &VdiRecord, engine_id: &str) -> bool {
    has_engine_id(&vdi.other_config, engine_id)
        && vdi.other_config.get(ROLE).map(String::as_str) == Some(ROLE_CBT_BASE)
        && vdi.vdi_type == VdiType::CbtMetadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(uuid: &str, pairs: &[(&str, &str)], template: bool) -> VmRecord {
        VmRecord {
            uuid: uuid.into(),
            is_a_template: template,
            other_config: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn template_is_recognised_by_its_own_uuid() {
        let template = vm(
            "t",
            &[
                (ENGINE_ID, "e1"),
                (TEMPLATE_UUID, "t"),
                (ROLE, ROLE_TEMPLATE),
            ],
            true,
        );
        assert!(is_our_template(&template, "e1"));
        assert!(!is_our_disposable_vm(&template, "e1"));
        assert!(
            !is_our_template(&template, "e2"),
            "another engine's template"
        );
        // A clone interrupted before retagging still carries the template's keys.
        let clone = vm(
            "c",
            &[
                (ENGINE_ID, "e1"),
                (TEMPLATE_UUID, "t"),
                (ROLE, ROLE_TEMPLATE),
            ],
            true,
        );
        assert!(!is_our_template(&clone, "e1"));
        assert!(is_our_disposable_vm(&clone, "e1"));
    }

    #[test]
    fn a_disk_whose_role_a_crash_took_off_is_still_our_work_disk() {
        let disk = |pairs: &[(&str, &str)]| VdiRecord {
            other_config: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert!(is_our_orphan_disk(&disk(&[(ENGINE_ID, "e1")]), "e1"));
        assert!(!is_our_work_disk(&disk(&[(ENGINE_ID, "e2")]), "e1"));
        assert!(!is_our_work_disk(&disk(&[]), "e1"), "no id: not ours");
        let restored = disk(&[(ENGINE_ID, "e1"), (ROLE, ROLE_RESTORED)]);
        assert!(!is_our_work_disk(&restored, "e1"), "restores are kept");
    }

    #[test]
    fn look_alikes_without_our_tag_are_not_ours() {
        let look_alike = vm("x", &[(ROLE, ROLE_DELEGATE)], false);
        assert!(!is_our_delegate(&look_alike, "e1"));
        assert!(!is_our_disposable_vm(&look_alike, "e1"));
        let tags = [(ENGINE_ID, "e1"), (ROLE, ROLE_REPLICA_VM), (OWN_UUID, "r")];
        let replica = vm("r", &tags, false);
        assert!(is_our_replica_vm(&replica, "e1"));
        assert!(!is_our_disposable_vm(&replica, "e1"), "a replica is kept");
        assert!(!is_our_replica_vm(&replica, "e2"));
        let clone = vm("c", &tags, false);
        assert!(!is_our_replica_vm(&clone, "e1"), "an operator's clone");
        assert!(
            !is_our_disposable_vm(&clone, "e1"),
            "never reclaimed either"
        );
        let delegate = vm("d", &[(ENGINE_ID, "e1"), (ROLE, ROLE_DELEGATE)], false);
        assert!(is_our_delegate(&delegate, "e1"));
        assert!(!is_our_delegate(&delegate, "e2"));
    }
}
