//! The one ordered log of every state change in the simulated world.

use crate::time::SimTime;

/// One state change: when, in which pool, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When it happened.
    pub at: SimTime,
    /// The pool it happened in (by name).
    pub pool: String,
    /// What happened, in stable wording.
    pub text: String,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.at, self.pool, self.text)
    }
}

/// Append-only event log. Times never go backwards.
#[derive(Default)]
pub struct EventLog {
    events: Vec<Event>,
}

impl EventLog {
    /// Appends an event; asserts time is monotonic.
    pub fn push(&mut self, at: SimTime, pool: &str, text: String) {
        if let Some(last) = self.events.last() {
            assert!(
                at >= last.at,
                "event log time went backwards: {at} < {}",
                last.at
            );
        }
        tracing::trace!(target: "xapi_sim::event", "{at} {pool} {text}");
        self.events.push(Event {
            at,
            pool: pool.to_string(),
            text,
        });
    }

    /// Every event so far, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}
