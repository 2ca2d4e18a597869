//! How an incident is stored: a small binary head (what a matching line changes: state,
//! severity, count, times, summary, evidence references), a JSON body written when the
//! incident opens and when a review or approval is added, and a timeline appended one
//! entry at a time. A line that only bumps a count rewrites the head: a few hundred bytes,
//! whatever the incident's history.
//!
//! [`read`] puts the parts back together, so the API serves the same JSON as ever.

use super::{Approval, Incident, Review, State, TimelineEntry};
use crate::detection::Key;
use crate::rules::Severity;
use crate::store::codec::{CodecError, Dec, Enc, Loc};
use crate::store::evidence::{EvidenceLog, resolve};
use crate::store::{Batch, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// Version of the head layout.
const HEAD_VERSION: u8 = 1;

/// What of an incident is already stored, so the next write adds only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Timeline entries stored.
    timeline: usize,
    /// Hash of the stored body.
    body: u64,
}

/// The parts of an incident that rarely change.
#[derive(Serialize, Deserialize)]
struct Body {
    id: String,
    #[serde(default)]
    uid: String,
    rule: String,
    category: String,
    key: Key,
    controls: Vec<String>,
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runbook: Option<String>,
    escalation: String,
    ruleset_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    review: Option<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval: Option<Approval>,
}

/// The body as written, borrowed from the incident.
#[derive(Serialize)]
struct BodyRef<'a> {
    id: &'a str,
    uid: &'a str,
    rule: &'a str,
    category: &'a str,
    key: &'a Key,
    controls: &'a [String],
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    runbook: &'a Option<String>,
    escalation: &'a str,
    ruleset_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    review: &'a Option<Review>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: &'a Option<Approval>,
}

/// The store key of incident `number` (zero-padded so keys sort like ids).
pub fn key(number: u64) -> Vec<u8> {
    format!("{number:020}").into_bytes()
}

fn timeline_key(number: u64, index: usize) -> Vec<u8> {
    let mut k = key(number);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

fn state_code(s: State) -> u8 {
    State::ALL.iter().position(|x| *x == s).expect("listed") as u8
}

fn severity_code(s: Severity) -> u8 {
    Severity::ALL.iter().position(|x| *x == s).expect("listed") as u8
}

/// Adds the incident's changes since `mark` (everything when `None`) to `batch`, with the
/// evidence lines it references that `log` has not stored yet; returns what is stored now.
pub fn write(
    store: &Store,
    batch: &mut Batch,
    incident: &Incident,
    mark: Option<Mark>,
    log: &mut EvidenceLog,
) -> Result<Mark, StoreError> {
    let number = Incident::number(&incident.id)
        .ok_or_else(|| StoreError::Codec(CodecError::Malformed("incident ids are INC-<n>")))?;
    let k = key(number);
    let body = serde_json::to_vec(&BodyRef {
        id: &incident.id,
        uid: &incident.uid,
        rule: &incident.rule,
        category: &incident.category,
        key: &incident.key,
        controls: &incident.controls,
        labels: &incident.labels,
        description: &incident.description,
        runbook: &incident.runbook,
        escalation: &incident.escalation,
        ruleset_version: &incident.ruleset_version,
        review: &incident.review,
        approval: &incident.approval,
    })?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let body_hash = h.finish();
    if mark.is_none_or(|m| m.body != body_hash) {
        batch.put_raw(Space::IncidentBodies, &k, body);
    }
    let from = mark.map_or(0, |m| m.timeline.min(incident.timeline.len()));
    for (index, entry) in incident.timeline.iter().enumerate().skip(from) {
        batch.put_raw(
            Space::Timeline,
            &timeline_key(number, index),
            serde_json::to_vec(entry)?,
        );
    }
    let head = {
        let mut sink = |e: &crate::detection::Evidence| log.store(store, batch, e);
        let mut w = Enc::new(&mut sink);
        w.u8(HEAD_VERSION);
        w.u8(state_code(incident.state));
        w.u8(severity_code(incident.severity));
        w.u64(incident.count);
        w.time(incident.first_seen);
        w.time(incident.last_seen);
        w.time(incident.opened_at);
        w.time(incident.updated_at);
        w.opt_time(incident.resumed_at);
        w.opt_time(incident.acknowledged_at);
        w.opt_time(incident.contained_at);
        w.opt_time(incident.closed_at);
        w.str(&incident.summary);
        w.opt_str(incident.silenced_by.as_deref());
        w.bool(incident.drill);
        w.evidence_list(incident.evidence.iter());
        w.u64(incident.timeline.len() as u64);
        w.finish()
    };
    batch.put_raw(Space::Incidents, &k, head);
    Ok(Mark {
        timeline: incident.timeline.len(),
        body: body_hash,
    })
}

/// A head decoded, before the body and timeline are read.
struct Head {
    state: State,
    severity: Severity,
    count: u64,
    times: [chrono::DateTime<chrono::Utc>; 4],
    resumed_at: Option<chrono::DateTime<chrono::Utc>>,
    acknowledged_at: Option<chrono::DateTime<chrono::Utc>>,
    contained_at: Option<chrono::DateTime<chrono::Utc>>,
    closed_at: Option<chrono::DateTime<chrono::Utc>>,
    summary: String,
    silenced_by: Option<String>,
    drill: bool,
    evidence: Vec<crate::detection::Evidence>,
    timeline: usize,
}

/// The lifecycle state in a stored head, read without the rest (loading only the active
/// incidents at start).
pub fn head_state(bytes: &[u8]) -> Result<State, CodecError> {
    let mut r = Dec::plain(bytes);
    r.version(HEAD_VERSION)?;
    State::ALL
        .get(r.u8()? as usize)
        .copied()
        .ok_or(CodecError::Malformed("state"))
}

/// The evidence lines a stored head references (read without looking them up).
pub fn head_refs(bytes: &[u8]) -> Result<Vec<Loc>, CodecError> {
    let mut refs = Vec::new();
    decode_head_with(bytes, &mut |r| {
        refs.push(r);
        Ok(crate::store::codec::placeholder(r))
    })?;
    Ok(refs)
}

fn decode_head(store: &Store, bytes: &[u8]) -> Result<Head, CodecError> {
    decode_head_with(bytes, &mut |loc: Loc| resolve(store, loc))
}

fn decode_head_with(
    bytes: &[u8],
    resolve_line: &mut dyn FnMut(Loc) -> Result<crate::detection::Evidence, CodecError>,
) -> Result<Head, CodecError> {
    let mut r = Dec::new(bytes, resolve_line);
    r.version(HEAD_VERSION)?;
    let state = *State::ALL
        .get(r.u8()? as usize)
        .ok_or(CodecError::Malformed("state"))?;
    let severity = *Severity::ALL
        .get(r.u8()? as usize)
        .ok_or(CodecError::Malformed("severity"))?;
    let count = r.u64()?;
    let times = [r.time()?, r.time()?, r.time()?, r.time()?];
    Ok(Head {
        state,
        severity,
        count,
        times,
        resumed_at: r.opt_time()?,
        acknowledged_at: r.opt_time()?,
        contained_at: r.opt_time()?,
        closed_at: r.opt_time()?,
        summary: r.str()?.to_string(),
        silenced_by: r.opt_str()?.map(str::to_string),
        drill: r.bool()?,
        evidence: r.evidence_list()?,
        timeline: usize::try_from(r.u64()?).map_err(|_| CodecError::Malformed("timeline"))?,
    })
}

/// Puts an incident together from its head (`head_bytes`, stored under `number`), body and
/// timeline, with what is stored of it.
pub fn assemble(
    store: &Store,
    number: u64,
    head_bytes: &[u8],
) -> Result<(Incident, Mark), StoreError> {
    assemble_from(store, number, decode_head(store, head_bytes)?)
}

fn assemble_from(store: &Store, number: u64, head: Head) -> Result<(Incident, Mark), StoreError> {
    let k = key(number);
    let body_bytes = store
        .get_raw(Space::IncidentBodies, &k)?
        .ok_or(CodecError::Malformed("incident without its body"))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body_bytes.hash(&mut h);
    let body_hash = h.finish();
    let body: Body = serde_json::from_slice(&body_bytes)?;
    let mut timeline = Vec::with_capacity(head.timeline);
    for (_, bytes) in store.scan_prefix_raw(Space::Timeline, &k)? {
        timeline.push(serde_json::from_slice::<TimelineEntry>(&bytes)?);
    }
    // Entries past the head's count were written by a commit whose head is the older one:
    // never, as a head and its entries are one batch; shown anyway rather than hidden.
    let [first_seen, last_seen, opened_at, updated_at] = head.times;
    let incident = Incident {
        id: body.id,
        uid: body.uid,
        rule: body.rule,
        severity: head.severity,
        category: body.category,
        state: head.state,
        key: body.key,
        count: head.count,
        first_seen,
        last_seen,
        opened_at,
        updated_at,
        controls: body.controls,
        labels: body.labels,
        summary: head.summary,
        description: body.description,
        runbook: body.runbook,
        resumed_at: head.resumed_at,
        escalation: body.escalation,
        ruleset_version: body.ruleset_version,
        evidence: head.evidence,
        timeline,
        acknowledged_at: head.acknowledged_at,
        contained_at: head.contained_at,
        closed_at: head.closed_at,
        review: body.review,
        approval: body.approval,
        silenced_by: head.silenced_by,
        drill: head.drill,
    };
    let mark = Mark {
        timeline: incident.timeline.len(),
        body: body_hash,
    };
    Ok((incident, mark))
}

fn number_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.parse().ok()
}

/// A stored incident's number and the state its head holds (or why it cannot be decoded).
pub type StoredState = (u64, Result<State, CodecError>);

/// Every stored incident's number and state, read from the heads alone (cheap: no body,
/// timeline or evidence); a head that cannot be decoded gives its error.
pub fn states(store: &Store) -> Result<Vec<StoredState>, StoreError> {
    Ok(store
        .scan_raw(Space::Incidents)?
        .into_iter()
        .filter_map(|(k, head)| Some((number_of(&k)?, head_state(&head))))
        .collect())
}

/// Incident `number`, if stored: closed incidents live only in the store, not in the book.
pub fn read(store: &Store, number: u64) -> Result<Option<Incident>, StoreError> {
    match store.get_raw(Space::Incidents, &key(number))? {
        Some(head) => Ok(Some(assemble(store, number, &head)?.0)),
        None => Ok(None),
    }
}

/// The fleet-unique uids of the stored incidents these ids name, each read once; an id of
/// no stored incident is left out. For what leaves the host by local id (audit exports).
pub fn uids<'a>(
    store: &Store,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    let mut uids = std::collections::HashMap::new();
    for id in ids {
        if uids.contains_key(id) {
            continue;
        }
        let Some(number) = crate::base::ids::incident_number(id) else {
            continue;
        };
        if let Some(incident) = read(store, number)? {
            uids.insert(id.to_string(), incident.uid);
        }
    }
    Ok(uids)
}

/// Every stored incident, by number, for which `wanted` accepts the head's state.
pub fn scan(
    store: &Store,
    mut wanted: impl FnMut(State) -> bool,
) -> Result<Vec<(u64, Incident, Mark)>, StoreError> {
    let mut out = Vec::new();
    for (k, head) in store.scan_raw(Space::Incidents)? {
        let Some(number) = number_of(&k) else {
            continue;
        };
        let readable = head_state(&head)
            .map_err(StoreError::from)
            .and_then(|state| match wanted(state) {
                true => assemble(store, number, &head).map(Some),
                false => Ok(None),
            });
        match readable {
            Ok(Some((incident, mark))) => out.push((number, incident, mark)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(incident = number, error = %e, "skipping unreadable incident")
            }
        }
    }
    Ok(out)
}

/// The highest stored incident number (0 when none).
pub fn last_number(store: &Store) -> Result<u64, StoreError> {
    Ok(store
        .last_raw(Space::Incidents)?
        .and_then(|(k, _)| number_of(&k))
        .unwrap_or(0))
}

/// One page of incidents after number `after`, those `keep` accepts, and whether more
/// may follow (see [`Store::page`]).
pub fn page(
    store: &Store,
    after: Option<u64>,
    limit: usize,
    keep: impl FnMut(&Incident) -> bool,
) -> Result<(Vec<Incident>, bool), StoreError> {
    page_with(store, after, limit, true, keep)
}

/// [`page`] without looking up the evidence lines (each incident's `evidence` is empty):
/// for reading every incident's lifecycle, as the population export does.
pub fn page_without_evidence(
    store: &Store,
    after: Option<u64>,
    limit: usize,
    keep: impl FnMut(&Incident) -> bool,
) -> Result<(Vec<Incident>, bool), StoreError> {
    page_with(store, after, limit, false, keep)
}

fn page_with(
    store: &Store,
    after: Option<u64>,
    limit: usize,
    evidence: bool,
    mut keep: impl FnMut(&Incident) -> bool,
) -> Result<(Vec<Incident>, bool), StoreError> {
    let after = after.map(key);
    let (page, more) = store.page(Space::Incidents, after.as_deref(), limit, |k, bytes| {
        let number = number_of(k).ok_or(CodecError::Malformed("incident key is not a number"))?;
        let head = if evidence {
            decode_head(store, bytes)?
        } else {
            let mut head =
                decode_head_with(bytes, &mut |r| Ok(crate::store::codec::placeholder(r)))?;
            head.evidence.clear();
            head
        };
        let (incident, _) = assemble_from(store, number, head)?;
        Ok(keep(&incident).then_some(incident))
    })?;
    Ok((page, more.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::TimelineKind;
    use crate::incidents::sample_incident;

    #[test]
    fn an_incident_reads_back_as_it_was_written_and_a_count_bump_writes_little() {
        let store = Store::memory();
        let mut log = EvidenceLog::default();
        let mut incident = sample_incident();
        incident.review = None;
        let line = |offset: u64| crate::detection::Evidence {
            source: "auth".into(),
            path: "/var/log/auth.log".into(),
            offset,
            time: incident.first_seen,
            line: "sshd[1]: Failed password for root from 203.0.113.7 port 22 ssh2".into(),
        };
        incident.evidence = (0..5).map(|n| line(n * 80)).collect();
        let mut batch = Batch::new();
        let mark = write(&store, &mut batch, &incident, None, &mut log).unwrap();
        store.commit(batch).unwrap();
        assert_eq!(read(&store, 1).unwrap().unwrap(), incident);

        // One more matching line: head only (and the new line).
        incident.count += 1;
        incident.evidence.push(line(400));
        let mut batch = Batch::new();
        let mark = write(&store, &mut batch, &incident, Some(mark), &mut log).unwrap();
        batch.seal();
        let bytes = batch_bytes(&batch);
        assert!(bytes < 600, "a count bump wrote {bytes} bytes");
        store.commit(batch).unwrap();
        assert_eq!(read(&store, 1).unwrap().unwrap(), incident);

        // A note appends one timeline entry; a review rewrites the body.
        incident.record(
            incident.opened_at,
            TimelineKind::Note,
            "oncall",
            Some("seen".into()),
        );
        incident.review = Some(Review {
            root_cause: "weak password".into(),
            lessons_learned: "keys".into(),
            actions: vec![],
            by: "lead".into(),
            at: incident.opened_at,
        });
        let mut batch = Batch::new();
        write(&store, &mut batch, &incident, Some(mark), &mut log).unwrap();
        store.commit(batch).unwrap();
        let (all, more) = page(&store, None, 10, |_| true).unwrap();
        assert_eq!((all, more), (vec![incident], false));
    }

    fn batch_bytes(batch: &Batch) -> usize {
        batch.bytes()
    }
}
