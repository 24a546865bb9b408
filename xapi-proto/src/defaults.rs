//! Every field XAPI returns in a record, with the value XAPI gives a field
//! the model does not track. Clients build accessors from the first record
//! they see, so served records carry all of them.
//!
//! `record_fields.json` lists, per class, field names and default values as
//! XAPI's public datamodel declares them: `doc/data/xenapi.json` (last
//! generated May 2024), plus the fields the datamodel's OCaml source
//! (`ocaml/idl/`) added since, up to xen-api of August 2026.

use crate::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Field name, default value and whether it is a datetime, per class, in
/// datamodel order.
type Defaults = BTreeMap<String, Vec<(String, Value, bool)>>;

fn defaults() -> &'static Defaults {
    static DEFAULTS: OnceLock<Defaults> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let raw: BTreeMap<String, Vec<Value>> =
            serde_json::from_str(include_str!("record_fields.json"))
                .expect("record_fields.json is valid");
        raw.into_iter()
            .map(|(class, fields)| {
                let fields = fields
                    .into_iter()
                    .filter_map(|f| {
                        Some((
                            f.get("name")?.as_str()?.to_string(),
                            f.get("default")?.clone(),
                            f.get("type")?.as_str()? == "datetime",
                        ))
                    })
                    .collect();
                (class, fields)
            })
            .collect()
    })
}

/// Adds every field of `class` that `record` lacks, with XAPI's default,
/// and marks its datetime fields as such (so XML-RPC sends them as
/// `dateTime.iso8601`, see [`crate::wire::datetime`]).
pub fn complete(class: &str, record: &mut Value) {
    let (Some(fields), Value::Object(map)) = (defaults().get(class), record) else {
        return;
    };
    for (name, default, is_datetime) in fields {
        let value = map.entry(name.clone()).or_insert_with(|| default.clone());
        if *is_datetime && let Some(text) = value.as_str() {
            // A time the model never set is XAPI's epoch, never empty.
            let text = match text {
                "" => default.as_str().unwrap_or_default(),
                set => set,
            };
            *value = crate::wire::datetime(text);
        }
    }
}

/// The fields XAPI returns for `class` (empty for an unknown class).
pub fn field_names(class: &str) -> Vec<&'static str> {
    defaults()
        .get(class)
        .map(|f| f.iter().map(|(n, _, _)| n.as_str()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::*;
    use serde::Serialize;

    /// The model's record has only XAPI's fields, each of the JSON kind XAPI
    /// gives it, and a completed record has exactly XAPI's fields.
    fn check<R: Serialize + Default>(class: &str) {
        let names = field_names(class);
        assert!(!names.is_empty(), "{class}: no datamodel fields");
        let ours = serde_json::to_value(R::default()).unwrap();
        let reference: BTreeMap<&str, &Value> = defaults()[class]
            .iter()
            .map(|(n, v, _)| (n.as_str(), v))
            .collect();
        for (field, value) in ours.as_object().unwrap() {
            let expected = reference
                .get(field.as_str())
                .unwrap_or_else(|| panic!("{class}.{field} is not an XAPI field"));
            let kind = |v: &Value| match v {
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                Value::String(_) => "string",
                Value::Bool(_) => "bool",
                Value::Array(_) => "array",
                Value::Object(_) => "map",
                Value::Null => "null",
            };
            assert_eq!(
                kind(value),
                kind(expected),
                "{class}.{field}: {value} vs XAPI's {expected}"
            );
        }
        let mut completed = ours.clone();
        complete(class, &mut completed);
        let got: Vec<&String> = completed.as_object().unwrap().keys().collect();
        assert_eq!(
            got.len(),
            names.len(),
            "{class}: completed record has {} fields, XAPI {}",
            got.len(),
            names.len()
        );
    }

    #[test]
    fn datetime_fields_are_marked_and_render_as_xml_rpc_datetimes() {
        let mut vm = serde_json::to_value(VmRecord::default()).unwrap();
        complete("VM", &mut vm);
        let marked = &vm["snapshot_time"];
        assert_eq!(crate::wire::as_datetime(marked), Some("19700101T00:00:00Z"));
        let xml = crate::wire::xmlrpc::render_value(marked);
        assert_eq!(
            xml,
            "<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>"
        );
        let mut plain = vm.clone();
        crate::wire::plain_datetimes(&mut plain);
        assert_eq!(plain["snapshot_time"], "19700101T00:00:00Z");
        assert_eq!(plain["name_label"], vm["name_label"]);
    }

    #[test]
    fn records_match_the_datamodel() {
        check::<PoolRecord>("pool");
        check::<HostRecord>("host");
        check::<HostMetricsRecord>("host_metrics");
        check::<SrRecord>("SR");
        check::<PbdRecord>("PBD");
        check::<NetworkRecord>("network");
        check::<PifRecord>("PIF");
        check::<VmRecord>("VM");
        check::<VmGuestMetricsRecord>("VM_guest_metrics");
        check::<VifRecord>("VIF");
        check::<VbdRecord>("VBD");
        check::<VdiRecord>("VDI");
        check::<TaskRecord>("task");
    }
}
