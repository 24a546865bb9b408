//! Where a delegate boots: a host that can see the protected VM's storage and
//! the delegate's own disk, with memory to spare, booting the fewest delegates.

use std::collections::BTreeSet;
use xapi_proto::OpaqueRef;

/// What placement needs to know about one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    pub host: OpaqueRef,
    pub name: String,
    /// Enabled and live.
    pub usable: bool,
    /// SRs the host has attached.
    pub srs: BTreeSet<OpaqueRef>,
    /// Bytes a new VM can get.
    pub free_memory: i64,
    /// Delegates booting on it now.
    pub booting: usize,
}

/// Why no host fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no usable host sees every SR the delegate needs ({missing})")]
    NoHostSeesStorage { missing: String },
    #[error("no host that sees the storage has {needed_bytes} bytes of free memory")]
    NoHostWithMemory { needed_bytes: i64 },
    #[error("every host that fits has already failed for this delegate")]
    AllExcluded,
}

/// Picks the host for a delegate: sees all `required_srs`, has `memory_needed`,
/// is not `excluded`; fewest boots in flight, then most free memory, then name.
pub fn choose_host<'a>(
    hosts: &'a [HostView],
    required_srs: &[OpaqueRef],
    memory_needed: i64,
    excluded: &BTreeSet<OpaqueRef>,
) -> Result<&'a HostView, PlacementError> {
    let seeing: Vec<&HostView> = hosts
        .iter()
        .filter(|h| h.usable && required_srs.iter().all(|sr| h.srs.contains(sr)))
        .collect();
    if seeing.is_empty() {
        let missing = required_srs
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PlacementError::NoHostSeesStorage { missing });
    }
    let with_memory: Vec<&HostView> = seeing
        .into_iter()
        .filter(|h| h.free_memory >= memory_needed)
        .collect();
    if with_memory.is_empty() {
        return Err(PlacementError::NoHostWithMemory {
            needed_bytes: memory_needed,
        });
    }
    with_memory
        .into_iter()
        .filter(|h| !excluded.contains(&h.host))
        .min_by(|a, b| {
            a.booting
                .cmp(&b.booting)
                .then(b.free_memory.cmp(&a.free_memory))
                .then(a.name.cmp(&b.name))
        })
        .ok_or(PlacementError::AllExcluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, srs: &[&str], free_gib: i64, booting: usize) -> HostView {
        HostView {
            host: OpaqueRef::from(name),
            name: name.into(),
            usable: true,
            srs: srs.iter().map(|s| OpaqueRef::from(*s)).collect(),
            free_memory: free_gib << 30,
            booting,
        }
    }

    fn check(
        hosts: &[HostView],
        srs: &[&str],
        excluded: &[&str],
        expect: Result<&str, PlacementError>,
    ) {
        let srs: Vec<OpaqueRef> = srs.iter().map(|s| OpaqueRef::from(*s)).collect();
        let excluded = excluded.iter().map(|s| OpaqueRef::from(*s)).collect();
        let got = choose_host(hosts, &srs, 1 << 30, &excluded).map(|h| h.name.as_str());
        assert_eq!(got, expect);
    }

    #[test]
    fn picks_a_host_that_sees_the_storage() {
        let hosts = [
            host("h1", &["shared"], 8, 0),
            host("h2", &["shared", "local2"], 4, 0),
        ];
        check(&hosts, &["shared", "local2"], &[], Ok("h2"));
        check(&hosts, &["shared"], &[], Ok("h1"));
    }

    #[test]
    fn spreads_boots_then_prefers_free_memory() {
        let hosts = [
            host("h1", &["s"], 8, 1),
            host("h2", &["s"], 4, 0),
            host("h3", &["s"], 6, 0),
        ];
        check(&hosts, &["s"], &[], Ok("h3"));
        check(&hosts, &["s"], &["h3"], Ok("h2"));
    }

    #[test]
    fn explains_why_nothing_fits() {
        let hosts = [host("h1", &["s"], 0, 0)];
        check(
            &hosts,
            &["other"],
            &[],
            Err(PlacementError::NoHostSeesStorage {
                missing: "other".into(),
            }),
        );
        check(
            &hosts,
            &["s"],
            &[],
            Err(PlacementError::NoHostWithMemory {
                needed_bytes: 1 << 30,
            }),
        );
        let hosts = [host("h1", &["s"], 8, 0)];
        check(&hosts, &["s"], &["h1"], Err(PlacementError::AllExcluded));
    }
}
