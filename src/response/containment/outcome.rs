//! Recording what the worker did with an effect: applied, re-applied after a start,
//! failed, or lifted, with the incident's timeline and the audit entries that go with it.
//!
//! Apart from the rest of the book because it is the other half of the flow (outcomes in,
//! where the book's decisions are effects out).

use super::{Book, Containment, Op, Outcome, Recorded, Status};
use crate::audit::{AuditEvent, DAEMON};
use crate::incidents::Incident;
use crate::incidents::timeline::TimelineKind;
use chrono::TimeDelta;

impl Book {
    /// The incident an outcome concerns, if the record is still live.
    pub fn incident_of(&self, outcome: &Outcome) -> Option<String> {
        self.live.get(&outcome.key).map(|c| c.incident.clone())
    }

    /// Records what the worker did: applied (in force until its end), re-applied after a
    /// start, failed, or lifted. Timeline entries go on `incident`, the record into `changed`.
    ///
    /// Over 100 lines because it is one `match` over (operation, result, status) whose arms
    /// each say what that case does to the record; split, the cases would no longer be
    /// checked side by side.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        incident: &mut Incident,
        changed: &mut Vec<Containment>,
    ) -> Recorded {
        let mut recorded = Recorded::default();
        let Some(mut c) = self.live.remove(&outcome.key) else {
            return recorded;
        };
        let now = outcome.at;
        let (event, label, text) = match (outcome.op, &outcome.result, c.status) {
            (Op::Apply, Ok(exit), Status::Active) => {
                // Re-applied after a start: the record already says so.
                c.exit_status = Some(*exit);
                (AuditEvent::ContainmentReapplied, "reapplied", None)
            }
            (Op::Apply, Ok(exit), Status::Pending) => {
                c.status = Status::Active;
                c.applied_at = Some(now);
                c.until = now.checked_add_signed(
                    TimeDelta::try_seconds(c.duration_secs as i64).unwrap_or(TimeDelta::MAX),
                );
                c.exit_status = Some(*exit);
                recorded.contained = true;
                (
                    AuditEvent::ContainmentApplied,
                    "applied",
                    Some(format!(
                        "{} {} for {}s, allowed by {} (exit status {exit})",
                        c.action, c.target, c.duration_secs, c.allowed_by
                    )),
                )
            }
            (Op::Apply, Err(why), Status::Pending) => {
                c.status = Status::Failed;
                c.reason = Some(why.to_string());
                (
                    AuditEvent::ContainmentFailed,
                    "failed",
                    Some(format!("{} {}: failed: {why}", c.action, c.target)),
                )
            }
            (Op::Undo, Ok(exit), Status::Releasing) => {
                c.status = Status::Released;
                c.released_at = Some(now);
                c.exit_status = Some(*exit);
                (
                    AuditEvent::ContainmentReleased,
                    "released",
                    Some(format!(
                        "{} {}: lifted ({}) by {}",
                        c.action,
                        c.target,
                        c.reason.as_deref().unwrap_or("released"),
                        c.released_by.as_deref().unwrap_or(DAEMON)
                    )),
                )
            }
            (Op::Undo, Err(why), Status::Releasing) => {
                // Stays `releasing`: the next start tries again.
                let text = format!("{} {}: lifting failed: {why}", c.action, c.target);
                self.counts.push((c.action.clone(), "undo_failed"));
                recorded
                    .audit
                    .push(self.entry(AuditEvent::ContainmentUndoFailed, DAEMON, &c));
                incident.record(now, TimelineKind::Containment, DAEMON, Some(text));
                self.live.insert(c.key(), c);
                return recorded;
            }
            (Op::Apply, Err(why), Status::Active) => {
                tracing::error!(key = %outcome.key, error = %why, "cannot re-apply a containment");
                self.counts.push((c.action.clone(), "failed"));
                self.expiry.schedule(c.key(), c.until);
                self.live.insert(c.key(), c);
                return recorded;
            }
            // Stale (released meanwhile): nothing to record.
            _ => {
                self.live.insert(c.key(), c);
                return recorded;
            }
        };
        self.counts.push((c.action.clone(), label));
        let actor = match outcome.op {
            Op::Apply => DAEMON.to_string(),
            Op::Undo => c.released_by.clone().unwrap_or_else(|| DAEMON.into()),
        };
        recorded.audit.push(self.entry(event, &actor, &c));
        if let Some(text) = text {
            let name = if outcome.op == Op::Undo {
                TimelineKind::Released
            } else {
                TimelineKind::Containment
            };
            incident.record(now, name, &actor, Some(text));
        }
        changed.push(c.clone());
        if c.status.is_live() {
            self.expiry.schedule(c.key(), c.until);
            self.live.insert(c.key(), c);
        }
        recorded
    }
}
