//! XAPI's event stream for one pool: `event.from` and `event.inject`.
//!
//! The tracker compares the records clients asked about (`*`, a class, or one
//! object as `vm/OpaqueRef:...`) with the copies it saw last, after each call
//! and each guest happening, and turns the differences into add / mod / del
//! events. Nothing is tracked until a client asks, and only what it asked for,
//! so a run that watches one delegate pays for one record per call.
//! `event.inject` starts tracking everything: its token is where clients (Xen
//! Orchestra's) start an event loop over any classes. A token from
//! `event.from` covers the classes that call named.

use crate::time::SimTime;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use xapi_proto::{OpaqueRef, Value, XapiError, codes};

/// Events kept for clients that are behind; older tokens get EVENTS_LOST.
const RETAINED_EVENTS: usize = 100_000;

/// One event as `event.from` returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct XapiEvent {
    pub id: u64,
    pub at: SimTime,
    /// Lowercase class name, as XAPI writes it.
    pub class: String,
    pub operation: &'static str,
    pub reference: OpaqueRef,
    pub snapshot: Value,
}

/// What a client asked `event.from` about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Interest {
    /// `*`: every class.
    All,
    /// A class, by its datamodel name (`VM`).
    Class(String),
    /// One object (`vm/OpaqueRef:...`).
    Object(String, OpaqueRef),
}

impl Interest {
    /// Reads an `event.from` class entry, given the datamodel's class names.
    pub fn parse(entry: &str, classes: &[&str]) -> Option<Interest> {
        if entry == "*" {
            return Some(Interest::All);
        }
        let (class, object) = match entry.split_once('/') {
            Some((class, object)) => (class, Some(object)),
            None => (entry, None),
        };
        let class = classes.iter().find(|c| c.eq_ignore_ascii_case(class))?;
        Some(match object {
            Some(r) => Interest::Object(class.to_string(), OpaqueRef::from(r)),
            None => Interest::Class(class.to_string()),
        })
    }

    fn covers(&self, class: &str, reference: &OpaqueRef) -> bool {
        match self {
            Interest::All => true,
            Interest::Class(c) => c.eq_ignore_ascii_case(class),
            Interest::Object(c, r) => c.eq_ignore_ascii_case(class) && r == reference,
        }
    }
}

/// The event history of one pool.
#[derive(Default)]
pub struct EventTracker {
    seen: BTreeMap<(String, OpaqueRef), Value>,
    events: VecDeque<XapiEvent>,
    next_id: u64,
    interests: BTreeSet<Interest>,
    /// Something may have changed since the last sync.
    stale: bool,
}

/// A token is the id of the last event a client has seen.
fn token(id: u64) -> String {
    format!("{id:020}")
}

impl EventTracker {
    /// What clients asked about so far: the records to pass to [`Self::sync`].
    pub fn interests(&self) -> &BTreeSet<Interest> {
        &self.interests
    }

    /// Notes that records may have changed (a call that writes, a guest
    /// happening): the next [`Self::needs_sync`] says yes.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// True when records may have changed since the last sync.
    pub fn needs_sync(&self) -> bool {
        self.stale && !self.interests.is_empty()
    }

    /// Starts watching `interests`, taking `current` (their records now) as
    /// the baseline: no events for what already exists.
    pub fn watch(
        &mut self,
        interests: Vec<Interest>,
        current: BTreeMap<(String, OpaqueRef), Value>,
    ) {
        self.interests.extend(interests);
        for (key, record) in current {
            self.seen.entry(key).or_insert(record);
        }
    }

    /// Records the differences between `now_records` (every record of the
    /// interests) and what was seen before.
    pub fn sync(&mut self, at: SimTime, now_records: BTreeMap<(String, OpaqueRef), Value>) {
        self.stale = false;
        let gone: Vec<(String, OpaqueRef)> = self
            .seen
            .keys()
            .filter(|k| !now_records.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let snapshot = self.seen.remove(&key).expect("listed");
            self.push(at, &key, "del", snapshot);
        }
        for (key, record) in now_records {
            let operation = match self.seen.get(&key) {
                None => "add",
                Some(before) if before != &record => "mod",
                Some(_) => continue,
            };
            self.push(at, &key, operation, record.clone());
            self.seen.insert(key, record);
        }
        // An object that is gone has had its `del`: stop watching it.
        let seen = &self.seen;
        self.interests.retain(|i| match i {
            Interest::Object(class, r) => seen.contains_key(&(class.clone(), r.clone())),
            _ => true,
        });
    }

    fn push(
        &mut self,
        at: SimTime,
        (class, reference): &(String, OpaqueRef),
        operation: &'static str,
        snapshot: Value,
    ) {
        self.next_id += 1;
        self.events.push_back(XapiEvent {
            id: self.next_id,
            at,
            class: class.to_lowercase(),
            operation,
            reference: reference.clone(),
            snapshot,
        });
        if self.events.len() > RETAINED_EVENTS {
            self.events.pop_front();
        }
    }

    /// `event.inject(class, ref)`: a `mod` event for the object; returns its token.
    pub fn inject(
        &mut self,
        at: SimTime,
        class: &str,
        reference: &OpaqueRef,
    ) -> Result<String, XapiError> {
        let key = self
            .seen
            .keys()
            .find(|(c, r)| c.eq_ignore_ascii_case(class) && r == reference)
            .cloned()
            .ok_or_else(|| XapiError::handle_invalid(class, reference.as_str()))?;
        let snapshot = self.seen[&key].clone();
        self.push(at, &key, "mod", snapshot);
        Ok(token(self.next_id))
    }

    /// `event.from(classes, token)`: events after `token` for `classes`,
    /// or, for an empty token, every current object of them as `add`.
    pub fn from(&self, classes: &[Interest], since: &str) -> Result<Value, XapiError> {
        let wanted_object = |class: &str, r: &OpaqueRef| classes.iter().any(|i| i.covers(class, r));
        let wanted = |class: &str| {
            classes.iter().any(|i| match i {
                Interest::All => true,
                Interest::Class(c) | Interest::Object(c, _) => c.eq_ignore_ascii_case(class),
            })
        };
        let events: Vec<Value> = if since.is_empty() {
            self.seen
                .iter()
                .filter(|((class, r), _)| wanted_object(class, r))
                .map(|((class, r), snapshot)| {
                    event_value(&XapiEvent {
                        id: self.next_id,
                        at: SimTime::ZERO,
                        class: class.to_lowercase(),
                        operation: "add",
                        reference: r.clone(),
                        snapshot: snapshot.clone(),
                    })
                })
                .collect()
        } else {
            let since: u64 = since
                .split(',')
                .next()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| {
                    XapiError::new(
                        codes::INTERNAL_ERROR,
                        [format!("invalid event token {since:?}")],
                    )
                })?;
            let oldest = self
                .events
                .front()
                .map(|e| e.id)
                .unwrap_or(self.next_id + 1);
            if since + 1 < oldest && since < self.next_id {
                return Err(XapiError::new::<String>(codes::EVENTS_LOST, []));
            }
            self.events
                .iter()
                .filter(|e| e.id > since && wanted_object(&e.class, &e.reference))
                .map(event_value)
                .collect()
        };
        let mut counts = serde_json::Map::new();
        for (class, _) in self.seen.keys() {
            if wanted(class) {
                let n = counts.entry(class.to_lowercase()).or_insert(Value::from(0));
                *n = Value::from(n.as_i64().unwrap_or(0) + 1);
            }
        }
        Ok(serde_json::json!({
            "events": events,
            "valid_ref_counts": counts,
            "token": token(self.next_id),
        }))
    }
}

fn event_value(e: &XapiEvent) -> Value {
    serde_json::json!({
        "id": e.id,
        "timestamp": format!("{}", e.at.as_ms() as f64 / 1000.0),
        "class": e.class,
        "operation": e.operation,
        "ref": e.reference.as_str(),
        "snapshot": e.snapshot,
    })
}
