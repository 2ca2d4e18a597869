//! The book of live containments: the decisions about them, made on the pipeline thread and
//! returned as data (records to commit, effects for the worker, audit entries).
//!
//! Apart from the record types (`containment`) because those are what the store, the API
//! and the CLI read; the book is what only the pipeline runs. How the worker's outcomes
//! are recorded is in `outcome`.

use super::{Containment, Counts, Effect, NeverContainError, Op, Protected, Status, all};
use crate::audit::{AuditEvent, DAEMON, Entry};
use crate::base::due::DueQueue;
use crate::config::{ActionConfig, ActionKind, ApprovalPolicy, Config};
use crate::incidents::Incident;
use crate::incidents::timeline::TimelineKind;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

/// The live containments and the decisions about them, owned by the pipeline thread.
pub struct Book {
    pub(super) actions: HashMap<String, ActionConfig>,
    pub(super) dry_run: bool,
    pub(super) never_contain: Vec<String>,
    pub(super) protected: Protected,
    pub(super) live: BTreeMap<String, Containment>,
    pub(super) expiry: DueQueue<String>,
    pub(super) effects: Vec<Effect>,
    pub(super) counts: Counts,
}

impl Book {
    /// The configured actions, with nothing live yet (see [`Book::resume`]). Until
    /// [`Book::use_lists`] gives it the rule files' lists, only the built-in protections and
    /// the plain entries of `never_contain` apply.
    pub fn new(config: &Config) -> Self {
        let plain: Vec<String> = config
            .never_contain
            .iter()
            .filter(|e| !e.starts_with('@'))
            .cloned()
            .collect();
        let protected = Protected::new(&plain, &Default::default()).unwrap_or_default();
        Book {
            actions: config
                .actions
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect(),
            dry_run: config.dry_run,
            never_contain: config.never_contain.clone(),
            protected,
            live: BTreeMap::new(),
            expiry: DueQueue::default(),
            effects: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Loads the live containments after a start and decides what each needs: a pending one
    /// is applied, an active one re-applied for its remaining time (a reboot empties
    /// nftables sets), one past its end or being lifted is lifted. Changed records go into `changed`.
    pub fn resume(
        &mut self,
        store: &Store,
        now: DateTime<Utc>,
        changed: &mut Vec<Containment>,
    ) -> Result<(), StoreError> {
        for mut c in all(store)?.into_iter().filter(|c| c.status.is_live()) {
            if c.status == Status::Active && c.until.is_some_and(|u| u <= now) {
                c.status = Status::Releasing;
                c.released_by = Some(DAEMON.into());
                c.reason = Some("expired".into());
                changed.push(c.clone());
            }
            if c.status == Status::Active {
                self.expiry.schedule(c.key(), c.until);
            }
            self.live.insert(c.key(), c);
        }
        // Decided once all are loaded: lifting a target must see the others holding it.
        let resumed: Vec<Containment> = self.live.values().cloned().collect();
        for c in resumed {
            match c.status {
                Status::Pending | Status::Active => self.effects.push(Effect::apply(c)),
                Status::Releasing => self.lift(c),
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolves `never_contain`'s `@lists` from the rule files' lists (at start and after a
    /// reload); on an error (an unknown list) the protections in force stay.
    pub fn use_lists(
        &mut self,
        lists: &crate::rules::values::Lists,
    ) -> Result<(), NeverContainError> {
        self.protected = Protected::new(&self.never_contain, lists)?;
        Ok(())
    }

    /// Decides the containments a fired step calls for: refused for a protected or missing
    /// target, held for approval, recorded only under `dry_run`, or pending (an effect).
    /// A target already contained by the same action is left as it is. Timeline entries go
    /// on `incident`, changed records into `changed`; the audit entries are returned.
    pub fn request(
        &mut self,
        incident: &mut Incident,
        actions: &[String],
        allowed_by: &str,
        now: DateTime<Utc>,
        changed: &mut Vec<Containment>,
    ) -> Vec<Entry> {
        let mut audit = Vec::new();
        for name in actions {
            let Some(action) = self.actions.get(name).cloned() else {
                continue;
            };
            let target = incident.key.get(&action.target).cloned();
            let mut c = Containment {
                incident: incident.id.clone(),
                rule: incident.rule.clone(),
                key_fields: incident.key.clone().into_iter().collect(),
                action: name.clone(),
                target: target.clone().unwrap_or_default(),
                duration_secs: action.duration.0.as_secs().max(1),
                status: Status::Pending,
                allowed_by: allowed_by.to_string(),
                requested_at: now,
                applied_at: None,
                until: None,
                released_at: None,
                released_by: None,
                reason: None,
                exit_status: None,
            };
            if self.live.contains_key(&c.key()) {
                continue;
            }
            let refusal = match &target {
                None => Some(format!(
                    "the incident has no key field {:?} to contain",
                    action.target
                )),
                Some(t) => self
                    .protected
                    .refusal(t, action.kind == ActionKind::Nftables),
            };
            let (status, event, outcome, text) = if let Some(reason) = refusal {
                c.reason = Some(reason.clone());
                (
                    Status::Refused,
                    AuditEvent::ContainmentRefused,
                    "refused",
                    format!("{name} {}: refused: {reason}", c.target),
                )
            } else if action.approval == ApprovalPolicy::Required && incident.approval.is_none() {
                (
                    Status::Held,
                    AuditEvent::ContainmentHeld,
                    "held",
                    format!("{name} {}: held until an approver approves", c.target),
                )
            } else if self.dry_run || incident.drill {
                // A drill exercises the response path; it never bans anyone.
                (
                    Status::DryRun,
                    AuditEvent::ContainmentDryRun,
                    "dry_run",
                    format!(
                        "{name} {} for {}s: dry run, nothing changed",
                        c.target, c.duration_secs
                    ),
                )
            } else {
                (
                    Status::Pending,
                    AuditEvent::ContainmentRequested,
                    "requested",
                    format!("{name} {} for {}s: requested", c.target, c.duration_secs),
                )
            };
            c.status = status;
            // An action that needs approval on an incident already approved: the approver
            // allowed it.
            if action.approval == ApprovalPolicy::Required
                && let Some(a) = &incident.approval
            {
                c.allowed_by = a.by.clone();
            }
            incident.record(now, TimelineKind::Containment, DAEMON, Some(text));
            self.counts.push((name.clone(), outcome));
            audit.push(self.entry(event, DAEMON, &c));
            changed.push(c.clone());
            if status == Status::Pending {
                self.effects.push(Effect::apply(c.clone()));
            }
            if status.is_live() {
                self.live.insert(c.key(), c);
            }
        }
        audit
    }

    /// An approver approved the incident: its held containments go ahead, allowed by them.
    pub fn approve(
        &mut self,
        incident: &mut Incident,
        approver: &str,
        now: DateTime<Utc>,
        changed: &mut Vec<Containment>,
    ) -> Vec<Entry> {
        let mut audit = Vec::new();
        let held: Vec<String> = self
            .of(&incident.id)
            .filter(|c| c.status == Status::Held)
            .map(Containment::key)
            .collect();
        for key in held {
            let Some(c) = self.live.get_mut(&key) else {
                continue;
            };
            c.allowed_by = approver.to_string();
            c.status = if self.dry_run || incident.drill {
                Status::DryRun
            } else {
                Status::Pending
            };
            let c = c.clone();
            incident.record(
                now,
                TimelineKind::Containment,
                approver,
                Some(format!("{} {}: approved", c.action, c.target)),
            );
            audit.push(self.entry(AuditEvent::ContainmentApproved, approver, &c));
            changed.push(c.clone());
            if c.status == Status::Pending {
                self.effects.push(Effect::apply(c));
            } else {
                self.live.remove(&key);
            }
        }
        audit
    }

    /// Lifts every live containment of the incident (`release` by a responder, or a false
    /// positive): a held one is dropped, a pending or active one lifted by an effect. `None`
    /// when the incident has nothing to release.
    pub fn release(
        &mut self,
        incident: &mut Incident,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
        changed: &mut Vec<Containment>,
    ) -> Option<Vec<Entry>> {
        let keys: Vec<String> = self
            .of(&incident.id)
            .filter(|c| c.status != Status::Releasing)
            .map(Containment::key)
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut audit = Vec::new();
        for key in keys {
            let Some(mut c) = self.live.remove(&key) else {
                continue;
            };
            self.expiry.schedule(key.clone(), None);
            c.released_by = Some(actor.to_string());
            c.reason = Some(reason.to_string());
            if c.status == Status::Held {
                c.status = Status::Released;
                c.released_at = Some(now);
                incident.record(
                    now,
                    TimelineKind::Released,
                    actor,
                    Some(format!(
                        "{} {}: dropped before it was approved ({reason})",
                        c.action, c.target
                    )),
                );
                audit.push(self.entry(AuditEvent::ContainmentReleased, actor, &c));
            } else {
                c.status = Status::Releasing;
                self.live.insert(key, c.clone());
                self.lift(c.clone());
            }
            changed.push(c.clone());
        }
        Some(audit)
    }

    /// Active containments whose time is up are lifted (effects); changed records into `changed`.
    pub fn expire_due(&mut self, now: DateTime<Utc>, changed: &mut Vec<Containment>) {
        for key in self.expiry.take_due(now) {
            let Some(c) = self.live.get_mut(&key) else {
                continue;
            };
            if c.status != Status::Active {
                continue;
            }
            c.status = Status::Releasing;
            c.released_by = Some(DAEMON.into());
            c.reason = Some("expired".into());
            let c = c.clone();
            changed.push(c.clone());
            self.lift(c);
        }
    }

    /// Lifts a containment by an effect, unless another incident's containment holds the
    /// same target by the same action: then the target stays contained and only this
    /// record is closed.
    pub(super) fn lift(&mut self, c: Containment) {
        let holder = self
            .live
            .values()
            .find(|o| {
                o.action == c.action
                    && o.target == c.target
                    && o.incident != c.incident
                    && matches!(o.status, Status::Pending | Status::Active)
            })
            .map(|o| o.incident.clone());
        self.effects.push(Effect {
            op: Op::Undo,
            containment: c,
            still_held_by: holder,
        });
    }

    /// Whether the incident has a live containment.
    pub fn has_live(&self, incident: &str) -> bool {
        self.of(incident).next().is_some()
    }

    /// Effects decided since the last call, to hand to the worker once committed.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Outcome counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Active containments per action, for `logwarden_contained_targets`.
    pub fn active_per_action(&self) -> BTreeMap<String, i64> {
        let mut n: BTreeMap<String, i64> = self.actions.keys().map(|a| (a.clone(), 0)).collect();
        for c in self.live.values().filter(|c| c.status == Status::Active) {
            *n.entry(c.action.clone()).or_default() += 1;
        }
        n
    }

    /// The live containments of an incident.
    fn of<'a>(&'a self, incident: &'a str) -> impl Iterator<Item = &'a Containment> + 'a {
        self.live.values().filter(move |c| c.incident == incident)
    }

    /// The audit entry of a containment event.
    pub(super) fn entry(&self, event: AuditEvent, actor: &str, c: &Containment) -> Entry {
        Entry::new(
            event,
            actor,
            Some(&c.incident),
            json!({
                "action": c.action,
                "target": c.target,
                "duration_secs": c.duration_secs,
                "allowed_by": c.allowed_by,
                "exit_status": c.exit_status,
                "until": c.until,
                "reason": c.reason,
                "released_by": c.released_by,
                "dry_run": c.status == Status::DryRun,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;
    use crate::response::containment::*;
    use crate::store;
    use chrono::TimeDelta;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "state_dir: s\nactions:\n  - {{name: ban-ip, type: nftables, duration: 60s{extra}}}\nnever_contain: [192.0.2.0/24]\n"
        );
        Config::parse(Path::new("/c.yaml"), &text).unwrap()
    }

    /// A step calling for `ban-ip` on the incident.
    fn ban(
        book: &mut Book,
        incident: &mut Incident,
        now: DateTime<Utc>,
        changed: &mut Vec<Containment>,
    ) -> Vec<Entry> {
        book.request(incident, &["ban-ip".into()], "logwarden", now, changed)
    }

    /// Stores the changed records as the pipeline would.
    fn commit(store: &Store, changed: Vec<Containment>) {
        let mut batch = store::Batch::new();
        for c in &changed {
            batch
                .put(Space::Containments, c.key().as_bytes(), c)
                .unwrap();
        }
        store.commit(batch).unwrap();
    }

    fn events(audit: &[Entry]) -> Vec<&str> {
        audit.iter().map(|e| e.event.as_str()).collect()
    }

    fn ok(effect: &Effect, at: DateTime<Utc>) -> Outcome {
        Outcome {
            key: effect.containment.key(),
            op: effect.op,
            result: Ok(0),
            at,
        }
    }

    /// The record is the intent: a worker killed before its outcome was recorded leaves it
    /// pending, the next start applies it again, and it is recorded as applied once; a start
    /// after its end lifts it.
    #[test]
    fn a_containment_is_applied_once_across_a_crash_and_lifted_after_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = config("");
        let mut incident = sample_incident();
        let t0 = incident.opened_at;
        let mut book = Book::new(&config);
        let mut batch = Vec::new();
        let audit = ban(&mut book, &mut incident, t0, &mut batch);
        assert_eq!(events(&audit), ["containment.requested"]);
        commit(&store, batch);
        let effects = book.take_effects();
        assert_eq!(effects.len(), 1);
        assert_eq!(effects[0].op, Op::Apply);
        // A repeating step asks again: the live containment stands, nothing new.
        let mut batch = Vec::new();
        assert!(ban(&mut book, &mut incident, t0, &mut batch).is_empty());
        assert!(book.take_effects().is_empty());

        // Killed between acting and recording: the next start acts again.
        let mut book = Book::new(&config);
        let mut batch = Vec::new();
        book.resume(&store, t0, &mut batch).unwrap();
        let effects = book.take_effects();
        assert_eq!(effects.len(), 1);
        assert_eq!(effects[0].op, Op::Apply);
        let mut batch = Vec::new();
        let recorded = book.record(&ok(&effects[0], t0), &mut incident, &mut batch);
        assert!(recorded.contained);
        assert_eq!(events(&recorded.audit), ["containment.applied"]);
        commit(&store, batch);
        assert_eq!(book.active_per_action()["ban-ip"], 1);

        // A start within the ban re-applies it for the rest of its time.
        let mut book = Book::new(&config);
        let later = t0 + TimeDelta::seconds(45);
        book.resume(&store, later, &mut Vec::new()).unwrap();
        let effects = book.take_effects();
        assert_eq!(effects[0].op, Op::Apply);
        assert_eq!(effects[0].containment.remaining_secs(later), 15);
        let recorded = book.record(&ok(&effects[0], later), &mut incident, &mut Vec::new());
        assert!(!recorded.contained);
        assert_eq!(events(&recorded.audit), ["containment.reapplied"]);

        // A start after its end lifts it, and the lifting is recorded.
        let mut book = Book::new(&config);
        let end = t0 + TimeDelta::seconds(61);
        let mut batch = Vec::new();
        book.resume(&store, end, &mut batch).unwrap();
        commit(&store, batch);
        let effects = book.take_effects();
        assert_eq!(effects[0].op, Op::Undo);
        let mut batch = Vec::new();
        let recorded = book.record(&ok(&effects[0], end), &mut incident, &mut batch);
        assert_eq!(events(&recorded.audit), ["containment.released"]);
        commit(&store, batch);
        let stored = of_incident(&store, &incident.id).unwrap();
        assert_eq!(stored[0].status, Status::Released);
        assert_eq!(stored[0].reason.as_deref(), Some("expired"));
        assert_eq!(incident.timeline.last().unwrap().event, "released");
    }

    #[test]
    fn protected_held_and_dry_run_containments_do_nothing() {
        let mut batch = Vec::new();
        let mut incident = sample_incident();
        let now = incident.opened_at;
        incident.key.insert("ip".into(), "192.0.2.4".into());
        let mut book = Book::new(&config(""));
        let audit = ban(&mut book, &mut incident, now, &mut batch);
        assert_eq!(events(&audit), ["containment.refused"]);
        assert!(book.take_effects().is_empty());
        assert_eq!(book.take_counts(), [("ban-ip".to_string(), "refused")]);

        let mut incident = sample_incident();
        let mut book = Book::new(&config(", approval: required"));
        let audit = ban(&mut book, &mut incident, now, &mut batch);
        assert_eq!(events(&audit), ["containment.held"]);
        assert!(book.take_effects().is_empty());
        let audit = book.approve(&mut incident, "boss", now, &mut batch);
        assert_eq!(events(&audit), ["containment.approved"]);
        let effects = book.take_effects();
        assert_eq!(effects[0].containment.allowed_by, "boss");

        let mut config = config("");
        config.dry_run = true;
        let mut book = Book::new(&config);
        let audit = ban(&mut book, &mut incident, now, &mut batch);
        assert_eq!(events(&audit), ["containment.dry_run"]);
        assert!(book.take_effects().is_empty());
        assert!(!book.has_live(&incident.id));
    }

    /// Two incidents (two rules) ban the same address: lifting one leaves the address
    /// banned for the other.
    #[test]
    fn a_target_held_by_another_incident_stays_contained() {
        let mut batch = Vec::new();
        let mut book = Book::new(&config(""));
        let mut first = sample_incident();
        let mut second = sample_incident();
        second.id = "INC-2".into();
        let now = first.opened_at;
        for incident in [&mut first, &mut second] {
            ban(&mut book, incident, now, &mut batch);
        }
        for effect in book.take_effects() {
            book.record(&ok(&effect, now), &mut first.clone(), &mut batch);
        }
        book.release(&mut first, "oncall", "released", now, &mut batch)
            .unwrap();
        let lift = book.take_effects();
        assert_eq!(lift[0].op, Op::Undo);
        assert_eq!(lift[0].still_held_by.as_deref(), Some("INC-2"));
        book.record(&ok(&lift[0], now), &mut first, &mut batch);
        book.release(&mut second, "oncall", "released", now, &mut batch)
            .unwrap();
        assert_eq!(book.take_effects()[0].still_held_by, None);
    }
}
