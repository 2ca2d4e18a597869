//! Whether the stored incidents are what their audit records say.
//!
//! Every change of an incident's state goes through the API or the daemon, which write the
//! change and its audit record in one batch. An incident closed, reopened or deleted by
//! editing the store has no such record: replaying the records' states
//! (`incident.opened` → open, `incident.transitioned`/`incident.resolved` → `to`) and
//! comparing them with the stored incidents shows it.

use super::{AuditEvent, Record};
use crate::incidents::State;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;

/// One incident whose stored state disagrees with its audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The incident's id (`INC-7`): what its audit records name it by.
    pub incident: String,
    /// What is wrong, in words.
    pub reason: String,
}

/// What the records say of one incident: the record that opened it and its last state.
struct Recorded {
    opened_at_seq: Option<u64>,
    state: Option<String>,
    last_seq: u64,
}

/// Every incident whose stored state differs from the state its records leave it in, that
/// is stored without a record opening it, or that records opened and the store lost.
/// Records that cannot be read are skipped here (`verify` reports them).
pub fn mismatches(store: &Store) -> Result<Vec<Mismatch>, StoreError> {
    let mut recorded: BTreeMap<String, Recorded> = BTreeMap::new();
    for record in super::records(store, None, None)? {
        let Some(id) = incident_of(&record) else {
            continue;
        };
        let to = match record.event.known() {
            Some(AuditEvent::IncidentOpened) => Some(State::Open.as_str().to_string()),
            Some(AuditEvent::IncidentTransitioned | AuditEvent::IncidentResolved) => {
                record.details["to"].as_str().map(str::to_string)
            }
            _ => None,
        };
        let entry = recorded.entry(id.to_string()).or_insert(Recorded {
            opened_at_seq: None,
            state: None,
            last_seq: record.seq,
        });
        if record.event == AuditEvent::IncidentOpened {
            entry.opened_at_seq.get_or_insert(record.seq);
        }
        if let Some(to) = to {
            entry.state = Some(to);
            entry.last_seq = record.seq;
        }
    }
    let mut found = Vec::new();
    let mut stored: BTreeMap<String, State> = BTreeMap::new();
    for (number, state) in crate::incidents::stored::states(store)? {
        let id = crate::base::ids::incident_id(number);
        match state {
            Ok(state) => {
                stored.insert(id, state);
            }
            Err(e) => found.push(Mismatch {
                incident: id,
                reason: format!("its stored head is unreadable: {e}"),
            }),
        }
    }
    for (id, state) in &stored {
        let reason = match recorded.get(id) {
            Some(Recorded {
                opened_at_seq: Some(_),
                state: Some(expected),
                last_seq,
            }) if expected != state.as_str() => format!(
                "stored as {state}, but its audit records leave it {expected} (record {last_seq}): changed outside the API"
            ),
            Some(Recorded {
                opened_at_seq: Some(_),
                ..
            }) => continue,
            _ => "stored, but no audit record opened it: added outside the daemon".to_string(),
        };
        found.push(Mismatch {
            incident: id.clone(),
            reason,
        });
    }
    let unreadable: Vec<String> = found.iter().map(|m| m.incident.clone()).collect();
    for (id, r) in &recorded {
        if unreadable.contains(id) {
            continue;
        }
        if let (Some(seq), false) = (r.opened_at_seq, stored.contains_key(id)) {
            found.push(Mismatch {
                incident: id.clone(),
                reason: format!(
                    "opened by audit record {seq}, but no longer in the store: deleted outside the API"
                ),
            });
        }
    }
    found.sort_by(|a, b| {
        let n = |id: &str| crate::base::ids::incident_number(id).unwrap_or(u64::MAX);
        n(&a.incident).cmp(&n(&b.incident))
    });
    Ok(found)
}

fn incident_of(record: &Record) -> Option<&str> {
    record.incident.as_deref().filter(|id| !id.is_empty())
}
