//! Pure bookkeeping of a static address plan: which addresses are free, who holds which.
//!
//! No async and no time here, so the rules can be tested exhaustively in isolation; the
//! waiting lives in [`super::queue`].

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use super::AddressError;

/// One operator-configured static address with the settings a delegate needs to use it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct StaticAddress {
    /// The delegate's IPv4 address; unique within a plan.
    pub ip: Ipv4Addr,
    /// Netmask of the delegate's network.
    pub netmask: Ipv4Addr,
    /// Default gateway, if the delegate must reach beyond its own network.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers, in preference order; empty when names are not needed.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

/// Identifies who holds a lease (the engine uses its job id), so releases can be checked.
pub type HolderId = u64;

/// One address of the plan and its current holder, if any.
#[derive(Clone, Debug)]
struct Slot {
    address: StaticAddress,
    holder: Option<HolderId>,
}

/// Leases the addresses of one static plan, one holder per address.
///
/// Free addresses are handed out in the order they became free (initially configuration
/// order), so a just-released address, possibly still in ARP caches, is reused last.
#[derive(Clone, Debug)]
pub struct StaticAllocator {
    /// Every address of the plan, sorted by ip so lookups are binary searches.
    slots: Vec<Slot>,
    /// Indices into `slots` of the free addresses; the front was freed longest ago.
    free: VecDeque<usize>,
    /// How many slots have a holder; kept separately so the counts can be cross-checked.
    leased_count: usize,
}

impl StaticAllocator {
    /// Builds an allocator with every address free, refusing plans that could double-lease
    /// (duplicates) or never lease (empty).
    pub fn new(addresses: Vec<StaticAddress>) -> Result<Self, AddressError> {
        if addresses.is_empty() {
            return Err(AddressError::EmptyList);
        }
        reject_duplicates(&addresses)?;
        let mut slots: Vec<Slot> = addresses
            .iter()
            .cloned()
            .map(|address| Slot {
                address,
                holder: None,
            })
            .collect();
        slots.sort_by_key(|slot| slot.address.ip);
        let free = addresses
            .iter()
            .filter_map(|address| slot_index(&slots, address.ip))
            .collect();
        let allocator = Self {
            slots,
            free,
            leased_count: 0,
        };
        allocator.check_invariants();
        Ok(allocator)
    }

    /// Leases the free address that was returned longest ago to `holder`, or `None` when
    /// every address is leased (the caller decides whether to wait).
    pub fn try_lease(&mut self, holder: HolderId) -> Option<StaticAddress> {
        let index = self.free.pop_front()?;
        let slot = &mut self.slots[index];
        assert!(
            slot.holder.is_none(),
            "free address {} is also leased to holder {:?}",
            slot.address.ip,
            slot.holder
        );
        slot.holder = Some(holder);
        let address = slot.address.clone();
        self.leased_count += 1;
        self.check_invariants();
        Some(address)
    }

    /// Returns `ip` to the end of the free list; only its holder may do so, which catches
    /// double releases and jobs releasing each other's addresses.
    pub fn release(&mut self, ip: Ipv4Addr, holder: HolderId) -> Result<(), AddressError> {
        let index = self.leased_slot_index(ip, holder)?;
        self.slots[index].holder = None;
        self.free.push_back(index);
        self.leased_count -= 1;
        self.check_invariants();
        Ok(())
    }

    /// Moves the lease of `ip` from `from` to `to` without the address ever being free,
    /// so the queue can hand a released address straight to its head waiter.
    pub(crate) fn hand_over(
        &mut self,
        ip: Ipv4Addr,
        from: HolderId,
        to: HolderId,
    ) -> Result<StaticAddress, AddressError> {
        let index = self.leased_slot_index(ip, from)?;
        let slot = &mut self.slots[index];
        slot.holder = Some(to);
        let address = slot.address.clone();
        self.check_invariants();
        Ok(address)
    }

    /// Who holds `ip` now; `None` if it is free or not in the plan.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<HolderId> {
        let index = slot_index(&self.slots, ip)?;
        self.slots[index].holder
    }

    /// How many addresses the plan has, i.e. how many delegates can run at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many addresses can be leased right now without waiting.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// How many addresses are held by a delegate.
    pub fn leased_count(&self) -> usize {
        self.leased_count
    }

    /// Current leases ordered by ip, for reports and checkers that need a stable order.
    pub fn leases(&self) -> impl Iterator<Item = (&StaticAddress, HolderId)> {
        self.slots
            .iter()
            .filter_map(|slot| slot.holder.map(|holder| (&slot.address, holder)))
    }

    /// Finds `ip`'s slot and checks that `holder` holds it, naming the exact problem otherwise.
    fn leased_slot_index(&self, ip: Ipv4Addr, holder: HolderId) -> Result<usize, AddressError> {
        let index = slot_index(&self.slots, ip).ok_or(AddressError::UnknownAddress { ip })?;
        match self.slots[index].holder {
            None => Err(AddressError::NotLeased { ip }),
            Some(actual) if actual != holder => {
                Err(AddressError::WrongHolder { ip, holder, actual })
            }
            Some(_) => Ok(index),
        }
    }

    /// Cheap count check always; the full cross-check (linear) in debug builds only.
    fn check_invariants(&self) {
        assert_eq!(
            self.free.len() + self.leased_count,
            self.slots.len(),
            "free + leased addresses must equal the plan's capacity"
        );
        debug_assert!(self.free_and_leased_are_disjoint_and_complete());
    }

    /// Every address is exactly once either in the free list or leased, never both.
    fn free_and_leased_are_disjoint_and_complete(&self) -> bool {
        let mut free_indices = BTreeSet::new();
        for &index in &self.free {
            let is_new = free_indices.insert(index);
            let slot_exists = index < self.slots.len();
            if !is_new || !slot_exists || self.slots[index].holder.is_some() {
                return false;
            }
        }
        let leased_slots = self
            .slots
            .iter()
            .filter(|slot| slot.holder.is_some())
            .count();
        leased_slots == self.leased_count && free_indices.len() + leased_slots == self.slots.len()
    }
}

/// Binary search of the ip-sorted slots.
fn slot_index(slots: &[Slot], ip: Ipv4Addr) -> Option<usize> {
    slots.binary_search_by_key(&ip, |slot| slot.address.ip).ok()
}

/// Names the first ip (in configuration order) that appears twice.
fn reject_duplicates(addresses: &[StaticAddress]) -> Result<(), AddressError> {
    let mut seen = BTreeSet::new();
    match addresses.iter().find(|address| !seen.insert(address.ip)) {
        Some(duplicate) => Err(AddressError::DuplicateAddress { ip: duplicate.ip }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `10.0.0.<last>/24` via `10.0.0.1`.
    fn address(last: u8) -> StaticAddress {
        StaticAddress {
            ip: Ipv4Addr::new(10, 0, 0, last),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    /// A plan of `10.0.0.<last>` for each `last`, in that configuration order.
    fn plan(lasts: &[u8]) -> StaticAllocator {
        StaticAllocator::new(lasts.iter().copied().map(address).collect()).expect("valid plan")
    }

    /// Checks the counts and that `leases()` lists exactly `expected` (ip last octet, holder).
    fn check(allocator: &StaticAllocator, expected: &[(u8, HolderId)]) {
        let leases: Vec<(Ipv4Addr, HolderId)> = allocator
            .leases()
            .map(|(address, holder)| (address.ip, holder))
            .collect();
        let expected: Vec<(Ipv4Addr, HolderId)> = expected
            .iter()
            .map(|&(last, holder)| (ip(last), holder))
            .collect();
        assert_eq!(leases, expected);
        assert_eq!(allocator.leased_count(), expected.len());
        assert_eq!(
            allocator.free_count() + allocator.leased_count(),
            allocator.capacity()
        );
        for (ip, holder) in expected {
            assert_eq!(allocator.holder_of(ip), Some(holder));
        }
    }

    #[test]
    fn leases_in_configuration_order_until_exhausted() {
        let mut allocator = plan(&[12, 10, 11]);
        assert_eq!(allocator.capacity(), 3);
        check(&allocator, &[]);
        assert_eq!(allocator.try_lease(1), Some(address(12)));
        assert_eq!(allocator.try_lease(2), Some(address(10)));
        assert_eq!(allocator.try_lease(3), Some(address(11)));
        assert_eq!(allocator.try_lease(4), None);
        assert_eq!(allocator.free_count(), 0);
        check(&allocator, &[(10, 2), (11, 3), (12, 1)]);
    }

    #[test]
    fn released_address_is_reused_last() {
        let mut allocator = plan(&[10, 11, 12]);
        assert_eq!(allocator.try_lease(1), Some(address(10)));
        allocator.release(ip(10), 1).expect("holder releases");
        check(&allocator, &[]);
        assert_eq!(allocator.try_lease(2), Some(address(11)));
        assert_eq!(allocator.try_lease(3), Some(address(12)));
        assert_eq!(allocator.try_lease(4), Some(address(10)));
        check(&allocator, &[(10, 4), (11, 2), (12, 3)]);
    }

    #[test]
    fn release_checks_holder_and_state() {
        let mut allocator = plan(&[10, 11]);
        assert_eq!(allocator.try_lease(1), Some(address(10)));
        assert_eq!(
            allocator.release(ip(10), 2),
            Err(AddressError::WrongHolder {
                ip: ip(10),
                holder: 2,
                actual: 1
            })
        );
        assert_eq!(
            allocator.release(ip(11), 1),
            Err(AddressError::NotLeased { ip: ip(11) })
        );
        assert_eq!(
            allocator.release(ip(99), 1),
            Err(AddressError::UnknownAddress { ip: ip(99) })
        );
        check(&allocator, &[(10, 1)]);
        allocator.release(ip(10), 1).expect("holder releases");
        assert_eq!(
            allocator.release(ip(10), 1),
            Err(AddressError::NotLeased { ip: ip(10) })
        );
        check(&allocator, &[]);
    }

    #[test]
    fn rejects_duplicates_and_empty_plans() {
        let duplicated = vec![address(10), address(11), address(10)];
        assert_eq!(
            StaticAllocator::new(duplicated).err(),
            Some(AddressError::DuplicateAddress { ip: ip(10) })
        );
        let mut same_ip_other_gateway = address(11);
        same_ip_other_gateway.gateway = None;
        assert_eq!(
            StaticAllocator::new(vec![address(11), same_ip_other_gateway]).err(),
            Some(AddressError::DuplicateAddress { ip: ip(11) })
        );
        assert_eq!(
            StaticAllocator::new(Vec::new()).err(),
            Some(AddressError::EmptyList)
        );
    }

    #[test]
    fn hand_over_moves_lease_without_freeing() {
        let mut allocator = plan(&[10]);
        assert_eq!(allocator.try_lease(1), Some(address(10)));
        assert_eq!(allocator.hand_over(ip(10), 1, 2), Ok(address(10)));
        check(&allocator, &[(10, 2)]);
        assert_eq!(allocator.free_count(), 0);
        assert_eq!(
            allocator.hand_over(ip(10), 1, 3),
            Err(AddressError::WrongHolder {
                ip: ip(10),
                holder: 1,
                actual: 2
            })
        );
    }

    #[test]
    fn static_address_deserialises_without_dns() {
        let parsed: StaticAddress =
            serde_json::from_str(r#"{"ip":"10.0.0.5","netmask":"255.255.255.0","gateway":null}"#)
                .expect("valid json");
        assert_eq!(parsed.ip, ip(5));
        assert!(parsed.dns.is_empty());
    }
}
