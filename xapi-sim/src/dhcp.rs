//! A DHCP server on a simulated network: exclusive leases from a range.

use crate::spec::DhcpSpec;
use crate::time::SimTime;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// One lease: the MAC holding it, and when it lapses (None while the guest runs
/// and keeps renewing it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DhcpLease {
    mac: String,
    expires_at: Option<SimTime>,
}

/// A DHCP server: hands out each address of its range to one MAC at a time.
#[derive(Clone, Debug)]
pub struct DhcpServer {
    first: u32,
    last: u32,
    lease_time: Duration,
    /// The server answers nothing while down.
    pub down: bool,
    leases: BTreeMap<u32, DhcpLease>,
}

impl DhcpServer {
    /// A server as the spec describes it.
    pub fn new(spec: &DhcpSpec) -> Self {
        DhcpServer {
            first: u32::from(spec.first),
            last: u32::from(spec.last),
            lease_time: Duration::from_secs(spec.lease_s),
            down: spec.down,
            leases: BTreeMap::new(),
        }
    }

    /// A DHCP request from `mac`: renews its lease, or offers the lowest free
    /// address; None when the server is down or the range is exhausted.
    pub fn request(&mut self, mac: &str, now: SimTime) -> Option<Ipv4Addr> {
        if self.down {
            return None;
        }
        self.leases
            .retain(|_, l| l.expires_at.is_none_or(|t| t > now));
        if let Some((ip, lease)) = self.leases.iter_mut().find(|(_, l)| l.mac == mac) {
            lease.expires_at = None;
            return Some(Ipv4Addr::from(*ip));
        }
        let free = (self.first..=self.last).find(|ip| !self.leases.contains_key(ip))?;
        self.leases.insert(
            free,
            DhcpLease {
                mac: mac.to_string(),
                expires_at: None,
            },
        );
        Some(Ipv4Addr::from(free))
    }

    /// The guest behind `mac` stopped renewing: its lease lapses after the lease time.
    pub fn guest_stopped(&mut self, mac: &str, now: SimTime) {
        let lease_time = self.lease_time;
        for lease in self.leases.values_mut().filter(|l| l.mac == mac) {
            lease.expires_at = Some(now.after(lease_time));
        }
    }

    /// The VIF with `mac` is gone: its lease is released at once.
    pub fn release_mac(&mut self, mac: &str) -> Option<Ipv4Addr> {
        let ip = *self.leases.iter().find(|(_, l)| l.mac == mac)?.0;
        self.leases.remove(&ip);
        Some(Ipv4Addr::from(ip))
    }

    /// Leases not yet lapsed at `now`, as (address, MAC), ordered by address.
    pub fn active_leases(&self, now: SimTime) -> Vec<(Ipv4Addr, String)> {
        self.leases
            .iter()
            .filter(|(_, l)| l.expires_at.is_none_or(|t| t > now))
            .map(|(ip, l)| (Ipv4Addr::from(*ip), l.mac.clone()))
            .collect()
    }

    /// Size of the range.
    pub fn capacity(&self) -> u32 {
        self.last - self.first + 1
    }

    /// The range handed out.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last))
    }

    /// Hands out `first..=last` instead; leases held keep their addresses.
    pub fn move_range(&mut self, first: Ipv4Addr, last: Ipv4Addr) {
        self.first = u32::from(first);
        self.last = u32::from(last).max(self.first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(first: &str, last: &str) -> DhcpServer {
        DhcpServer::new(&DhcpSpec {
            first: first.parse().unwrap(),
            last: last.parse().unwrap(),
            lease_s: 60,
            down: false,
        })
    }

    #[test]
    fn leases_are_exclusive_and_released_with_the_vif() {
        let mut s = server("10.0.0.10", "10.0.0.11");
        let t = SimTime(0);
        assert_eq!(s.request("aa", t), Some("10.0.0.10".parse().unwrap()));
        assert_eq!(s.request("bb", t), Some("10.0.0.11".parse().unwrap()));
        assert_eq!(s.request("cc", t), None, "range exhausted");
        assert_eq!(
            s.request("aa", t),
            Some("10.0.0.10".parse().unwrap()),
            "renewal"
        );
        assert_eq!(s.release_mac("aa"), Some("10.0.0.10".parse().unwrap()));
        assert_eq!(s.request("cc", t), Some("10.0.0.10".parse().unwrap()));
    }

    #[test]
    fn a_stopped_guest_keeps_its_lease_until_it_lapses() {
        let mut s = server("10.0.0.10", "10.0.0.10");
        s.request("aa", SimTime(0));
        s.guest_stopped("aa", SimTime(1_000));
        assert_eq!(s.request("bb", SimTime(60_999)), None);
        assert_eq!(
            s.request("bb", SimTime(61_000)),
            Some("10.0.0.10".parse().unwrap())
        );
    }

    #[test]
    fn a_down_server_offers_nothing() {
        let mut s = server("10.0.0.10", "10.0.0.20");
        s.down = true;
        assert_eq!(s.request("aa", SimTime(0)), None);
    }
}
