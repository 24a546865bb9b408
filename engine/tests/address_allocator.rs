//! State-machine test of `StaticAllocator` against a plain reference model.
//!
//! The model is the specification in its simplest form: an ordered free list (front = freed
//! longest ago, initially configuration order) and a map ip -> holder. Random sequences of
//! leases, correct releases and wrong releases must give the same answers from both, and
//! the allocator's invariants must hold after every step.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use engine::address::{AddressError, HolderId, StaticAddress, StaticAllocator};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// Last octets the plans are drawn from; `UNKNOWN_LASTS` are never in a plan.
const PLAN_LASTS: std::ops::RangeInclusive<u8> = 1..=12;
const UNKNOWN_LASTS: std::ops::RangeInclusive<u8> = 13..=14;
const MAX_PLAN_SIZE: usize = 6;
/// Few holders, so the same holder often holds several addresses and wrong releases collide.
const HOLDERS: std::ops::Range<HolderId> = 0..4;

prop_state_machine! {
    #![proptest_config(Config {
        cases: 256,
        ..Config::default()
    })]

    #[test]
    fn address_allocator_matches_reference_model(sequential 1..64 => AllocatorTest);
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn static_address(ip: Ipv4Addr) -> StaticAddress {
    StaticAddress {
        ip,
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns: Vec::new(),
    }
}

/// The reference: what the allocator should look like, and what the last step should have returned.
#[derive(Clone, Debug)]
struct Model {
    /// The plan in configuration order.
    plan: Vec<Ipv4Addr>,
    /// Free addresses; the front was freed longest ago.
    free: VecDeque<Ipv4Addr>,
    leased: BTreeMap<Ipv4Addr, HolderId>,
    /// What the allocator must answer to the transition just applied.
    expected: Expected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Nothing,
    Leased(Option<Ipv4Addr>),
    Released { ip: Ipv4Addr, holder: HolderId },
    Refused(AddressError),
}

#[derive(Clone, Debug)]
enum Transition {
    /// `try_lease(holder)`.
    Lease(HolderId),
    /// Release by its holder of the n-th current lease (in ip order).
    Release(Index),
    /// A release that must be refused: unknown ip, free ip, or someone else's lease.
    ReleaseWrong { ip: Ipv4Addr, holder: HolderId },
}

impl Model {
    fn lease(&mut self, holder: HolderId) {
        let chosen = self.free.pop_front();
        if let Some(ip) = chosen {
            self.leased.insert(ip, holder);
        }
        self.expected = Expected::Leased(chosen);
    }

    fn release_nth(&mut self, index: &Index) {
        let nth = index.index(self.leased.len());
        let (ip, holder) = self
            .leased
            .iter()
            .nth(nth)
            .map(|(&ip, &holder)| (ip, holder))
            .expect("precondition: something is leased");
        self.leased.remove(&ip);
        self.free.push_back(ip);
        self.expected = Expected::Released { ip, holder };
    }

    fn refusal(&self, ip: Ipv4Addr, holder: HolderId) -> Option<AddressError> {
        if !self.plan.contains(&ip) {
            return Some(AddressError::UnknownAddress { ip });
        }
        match self.leased.get(&ip) {
            None => Some(AddressError::NotLeased { ip }),
            Some(&actual) if actual != holder => {
                Some(AddressError::WrongHolder { ip, holder, actual })
            }
            Some(_) => None,
        }
    }
}

struct AllocatorModel;

impl ReferenceStateMachine for AllocatorModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        let lasts: Vec<u8> = PLAN_LASTS.collect();
        proptest::sample::subsequence(lasts, 1..=MAX_PLAN_SIZE)
            .prop_shuffle()
            .prop_map(|lasts| {
                let plan: Vec<Ipv4Addr> = lasts.into_iter().map(ip).collect();
                Model {
                    free: plan.iter().copied().collect(),
                    plan,
                    leased: BTreeMap::new(),
                    expected: Expected::Nothing,
                }
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let lease = HOLDERS.prop_map(Transition::Lease);
        let release_wrong =
            (*PLAN_LASTS.start()..=*UNKNOWN_LASTS.end(), HOLDERS).prop_map(|(last, holder)| {
                Transition::ReleaseWrong {
                    ip: ip(last),
                    holder,
                }
            });
        if state.leased.is_empty() {
            prop_oneof![3 => lease, 1 => release_wrong].boxed()
        } else {
            let release = any::<Index>().prop_map(Transition::Release);
            prop_oneof![3 => lease, 2 => release, 1 => release_wrong].boxed()
        }
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            Transition::Lease(_) => true,
            Transition::Release(_) => !state.leased.is_empty(),
            Transition::ReleaseWrong { ip, holder } => state.refusal(*ip, *holder).is_some(),
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        match transition {
            Transition::Lease(holder) => state.lease(*holder),
            Transition::Release(index) => state.release_nth(index),
            Transition::ReleaseWrong { ip, holder } => {
                let error = state
                    .refusal(*ip, *holder)
                    .expect("precondition: the release is wrong");
                state.expected = Expected::Refused(error);
            }
        }
        state
    }
}

struct AllocatorTest;

impl StateMachineTest for AllocatorTest {
    type SystemUnderTest = StaticAllocator;
    type Reference = AllocatorModel;

    fn init_test(model: &Model) -> StaticAllocator {
        let addresses = model.plan.iter().copied().map(static_address).collect();
        StaticAllocator::new(addresses).expect("generated plans have no duplicates")
    }

    /// `model` is the state after the transition; `model.expected` is the required answer.
    fn apply(
        mut allocator: StaticAllocator,
        model: &Model,
        transition: Transition,
    ) -> StaticAllocator {
        match transition {
            Transition::Lease(holder) => check_lease(&mut allocator, model, holder),
            Transition::Release(index) => check_release(&mut allocator, model, &index),
            Transition::ReleaseWrong { ip, holder } => {
                let answer = allocator.release(ip, holder);
                let Expected::Refused(error) = &model.expected else {
                    panic!("model expected {:?} for a wrong release", model.expected);
                };
                assert_eq!(answer.as_ref(), Err(error));
                assert!(answer.unwrap_err().to_string().contains(&ip.to_string()));
            }
        }
        allocator
    }

    fn check_invariants(allocator: &StaticAllocator, model: &Model) {
        let capacity = model.plan.len();
        assert_eq!(allocator.capacity(), capacity);
        assert_eq!(allocator.free_count() + allocator.leased_count(), capacity);
        assert_eq!(allocator.free_count(), model.free.len());

        let leases: Vec<(Ipv4Addr, HolderId)> = allocator
            .leases()
            .map(|(address, holder)| (address.ip, holder))
            .collect();
        assert!(
            leases.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "leases must be strictly ordered by ip (no address leased twice): {leases:?}"
        );
        let expected: Vec<(Ipv4Addr, HolderId)> = model
            .leased
            .iter()
            .map(|(&ip, &holder)| (ip, holder))
            .collect();
        assert_eq!(leases, expected);
        assert_eq!(allocator.leased_count(), leases.len());

        for &ip in &model.plan {
            assert_eq!(allocator.holder_of(ip), model.leased.get(&ip).copied());
        }
    }
}

fn check_lease(allocator: &mut StaticAllocator, model: &Model, holder: HolderId) {
    let was_full = allocator.free_count() == 0;
    let chosen = allocator.try_lease(holder);
    assert_eq!(
        chosen.is_none(),
        was_full,
        "try_lease returns None exactly when every address is leased"
    );
    let chosen_ip = chosen.as_ref().map(|address| address.ip);
    assert_eq!(Expected::Leased(chosen_ip), model.expected);
    if let Some(address) = chosen {
        assert_eq!(
            address,
            static_address(address.ip),
            "settings travel with the ip"
        );
        assert_eq!(allocator.holder_of(address.ip), Some(holder));
    }
}

fn check_release(allocator: &mut StaticAllocator, model: &Model, index: &Index) {
    let nth = index.index(allocator.leased_count());
    let (ip, holder) = allocator
        .leases()
        .nth(nth)
        .map(|(address, holder)| (address.ip, holder))
        .expect("the model only releases when something is leased");
    assert_eq!(Expected::Released { ip, holder }, model.expected);
    assert_eq!(allocator.release(ip, holder), Ok(()));
    assert_eq!(allocator.holder_of(ip), None);
    assert_eq!(
        leased_in_turn(allocator.clone()).last(),
        Some(&ip),
        "a released address can be leased again, after every other free one"
    );
}

/// Leases every free address of a copy, in the order the allocator hands them out.
fn leased_in_turn(mut allocator: StaticAllocator) -> Vec<Ipv4Addr> {
    std::iter::from_fn(|| allocator.try_lease(HolderId::MAX).map(|address| address.ip)).collect()
}
