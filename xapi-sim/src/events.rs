//! XAPI's event stream for one pool: `event.from` and `event.inject`.
//!
//! The tracker compares every record with the copy it saw last, after each
//! call and each guest happening, and turns the differences into add / mod /
//! del events. Only served pools track events; in-process runs pay nothing.

use crate::time::SimTime;
use std::collections::{BTreeMap, VecDeque};
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

/// The event history of one pool.
#[derive(Default)]
pub struct EventTracker {
    seen: BTreeMap<(String, OpaqueRef), Value>,
    events: VecDeque<XapiEvent>,
    next_id: u64,
}

/// A token is the id of the last event a client has seen.
fn token(id: u64) -> String {
    format!("{id:020}")
}

impl EventTracker {
    /// Records the differences between `now_records` and what was seen before.
    pub fn sync(&mut self, at: SimTime, now_records: BTreeMap<(String, OpaqueRef), Value>) {
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

    /// `event.from(classes, token)`: events after `token` for `classes` ("*" = all),
    /// or, for an empty token, every current object as `add`.
    pub fn from(&self, classes: &[String], since: &str) -> Result<Value, XapiError> {
        let wanted = |class: &str| {
            classes
                .iter()
                .any(|c| c == "*" || c.eq_ignore_ascii_case(class))
        };
        let events: Vec<Value> = if since.is_empty() {
            self.seen
                .iter()
                .filter(|((class, _), _)| wanted(class))
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
                .filter(|e| e.id > since && wanted(&e.class))
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
