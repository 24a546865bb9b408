//! State-machine test of the delegate `Accounting` against a reference model.
//!
//! The model is the engine's protocol in its plainest form: jobs start with a
//! concurrency, create delegates up to it, mark them busy and idle, destroy
//! them, and finish once their delegates are gone (two jobs at once add up).
//! Random sequences must give the model's counters exactly, and never a
//! violation (a violation panics in debug builds).

use engine::accounting::{Accounting, Change, PoolCounts};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const POOL: &str = "lab";

prop_state_machine! {
    #![proptest_config(Config {
        cases: 256,
        ..Config::default()
    })]

    #[test]
    fn accounting_matches_reference_model(sequential 1..80 => AccountingTest);
}

#[derive(Clone, Debug)]
struct Job {
    concurrency: usize,
    /// Its delegates: busy or idle.
    delegates: Vec<bool>,
}

#[derive(Clone, Debug)]
struct Model {
    jobs: Vec<Job>,
    created: usize,
    destroyed: usize,
    peak_live: usize,
    peak_busy: usize,
    /// The change the last transition stands for.
    change: Option<Change>,
}

impl Model {
    fn live(&self) -> usize {
        self.jobs.iter().map(|j| j.delegates.len()).sum()
    }

    fn busy(&self) -> usize {
        self.jobs
            .iter()
            .map(|j| j.delegates.iter().filter(|b| **b).count())
            .sum()
    }

    fn counts(&self) -> PoolCounts {
        PoolCounts {
            live: self.live(),
            busy: self.busy(),
            peak_live: self.peak_live,
            peak_busy: self.peak_busy,
            created: self.created,
            destroyed: self.destroyed,
            reclaimed: 0,
            allowed: self.jobs.iter().map(|j| j.concurrency).sum(),
        }
    }

    /// Jobs where `pick` finds something to act on, and the delegate it picks.
    fn candidates(&self, pick: impl Fn(&Job) -> Option<usize>) -> Vec<(usize, usize)> {
        self.jobs
            .iter()
            .enumerate()
            .filter_map(|(j, job)| pick(job).map(|d| (j, d)))
            .collect()
    }

    fn spare(job: &Job) -> Option<usize> {
        (job.delegates.len() < job.concurrency).then_some(job.delegates.len())
    }

    fn with_state(job: &Job, busy: bool) -> Option<usize> {
        job.delegates.iter().position(|b| *b == busy)
    }
}

#[derive(Clone, Debug)]
enum Transition {
    StartJob(usize),
    /// Finish a job whose delegates are all gone.
    FinishJob(Index),
    Create(Index),
    Busy(Index),
    Idle(Index),
    Destroy(Index),
}

struct AccountingModel;

impl ReferenceStateMachine for AccountingModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            jobs: Vec::new(),
            created: 0,
            destroyed: 0,
            peak_live: 0,
            peak_busy: 0,
            change: None,
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Transition> {
        prop_oneof![
            1 => (1usize..=4).prop_map(Transition::StartJob),
            1 => any::<Index>().prop_map(Transition::FinishJob),
            3 => any::<Index>().prop_map(Transition::Create),
            3 => any::<Index>().prop_map(Transition::Busy),
            3 => any::<Index>().prop_map(Transition::Idle),
            2 => any::<Index>().prop_map(Transition::Destroy),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            Transition::StartJob(_) => true,
            Transition::FinishJob(_) => state.jobs.iter().any(|j| j.delegates.is_empty()),
            Transition::Create(_) => !state.candidates(Model::spare).is_empty(),
            Transition::Busy(_) | Transition::Destroy(_) => {
                !state.candidates(|j| Model::with_state(j, false)).is_empty()
            }
            Transition::Idle(_) => !state.candidates(|j| Model::with_state(j, true)).is_empty(),
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        let change = match transition {
            Transition::StartJob(concurrency) => {
                state.jobs.push(Job {
                    concurrency: *concurrency,
                    delegates: Vec::new(),
                });
                Change::JobStarted {
                    concurrency: *concurrency,
                }
            }
            Transition::FinishJob(index) => {
                let done: Vec<usize> = (0..state.jobs.len())
                    .filter(|j| state.jobs[*j].delegates.is_empty())
                    .collect();
                let job = state.jobs.remove(done[index.index(done.len())]);
                Change::JobFinished {
                    concurrency: job.concurrency,
                }
            }
            Transition::Create(index) => {
                let c = state.candidates(Model::spare);
                let (j, _) = c[index.index(c.len())];
                state.jobs[j].delegates.push(false);
                state.created += 1;
                Change::DelegateCreated
            }
            Transition::Busy(index) | Transition::Destroy(index) => {
                let c = state.candidates(|j| Model::with_state(j, false));
                let (j, d) = c[index.index(c.len())];
                if matches!(transition, Transition::Busy(_)) {
                    state.jobs[j].delegates[d] = true;
                    Change::DelegateBusy
                } else {
                    state.jobs[j].delegates.remove(d);
                    state.destroyed += 1;
                    Change::DelegateDestroyed
                }
            }
            Transition::Idle(index) => {
                let c = state.candidates(|j| Model::with_state(j, true));
                let (j, d) = c[index.index(c.len())];
                state.jobs[j].delegates[d] = false;
                Change::DelegateIdle
            }
        };
        state.peak_live = state.peak_live.max(state.live());
        state.peak_busy = state.peak_busy.max(state.busy());
        state.change = Some(change);
        state
    }
}

struct AccountingTest;

impl StateMachineTest for AccountingTest {
    type SystemUnderTest = Accounting;
    type Reference = AccountingModel;

    fn init_test(_: &Model) -> Accounting {
        let mut accounting = Accounting::default();
        accounting.add_pool(POOL, false);
        accounting
    }

    fn apply(mut accounting: Accounting, model: &Model, _: Transition) -> Accounting {
        let change = model.change.expect("every transition is a change");
        accounting.apply(0, POOL, change);
        assert_eq!(accounting.pool(POOL), model.counts(), "after {change:?}");
        assert!(accounting.violations().is_empty());
        accounting
    }
}
