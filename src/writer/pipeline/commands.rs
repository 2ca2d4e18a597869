//! What reaches the pipeline besides log lines: lifecycle and silence commands from the
//! API, containment outcomes, drills. Each is carried out by the single writer like a step
//! (stored with its notifications and audit record in one commit, then answered), so a
//! command never races the lines' commits; kept apart from the line path it interleaves with.

use super::commit::drill_label;
use super::{NotStored, Pipeline};
use crate::incidents::IncidentEvent;
use crate::lifecycle::{Command, Measure, Request};
use crate::store;
use chrono::Utc;

impl Pipeline {
    /// Carries out a lifecycle or silence change: stored with its notifications and audit
    /// record in one batch, flushed, then answered.
    pub(super) async fn command(&mut self, command: Command) -> Result<(), NotStored> {
        let mut batch = store::Batch::new();
        let mut opened = Vec::new();
        // Only the pipeline knows the rules a silence must be able to match.
        let refused = match &command.request {
            Request::CreateSilence(new) => {
                crate::response::silences::check_matchers(&new.matchers, self.engine.rules())
                    .err()
                    .map(|e| e.to_string())
            }
            _ => None,
        };
        let result = match command.request {
            _ if refused.is_some() => Err(crate::lifecycle::Refusal::Invalid(
                refused.unwrap_or_default(),
            )),
            Request::Drill { rule } => self.open_drill(&rule, &command.actor, &mut opened),
            request => self.desk.command(
                self.engine.book_mut(),
                &self.store,
                &self.outbox,
                &command.actor,
                request,
                Utc::now(),
            ),
        };
        let built = self.write_changes_and_effects(&mut batch);
        let audit = match built {
            Ok(written) => written.audit,
            Err(e) => {
                let _ = command.reply.send(Err(crate::lifecycle::Refusal::Internal(
                    "the change could not be stored".into(),
                )));
                return self.cannot_build(e);
            }
        };
        if result.is_ok() || !audit.is_empty() {
            if let Err(e) = self.make_durable(batch, audit).await {
                let _ = command.reply.send(Err(crate::lifecycle::Refusal::Internal(
                    "the change could not be stored".into(),
                )));
                return Err(e);
            }
            self.evidence.committed();
        } else {
            self.evidence.abandoned();
        }
        self.hand_over_effects();
        if let Ok(done) = &result {
            self.observe(&done.kpis);
            self.outbox.wake();
            self.update_open_gauge();
        }
        self.after_commit(opened).await;
        let _ = command.reply.send(result.map(|d| d.reply));
        Ok(())
    }

    /// After a start: containments left pending, active or being lifted are resumed (see
    /// [`crate::response::containment::Book::resume`]).
    pub(super) async fn resume_containments(&mut self) -> Result<(), NotStored> {
        let mut changed = Vec::new();
        if let Err(e) = self
            .desk
            .containments
            .resume(&self.store, Utc::now(), &mut changed)
        {
            tracing::error!(error = %e, "cannot read containments; they resume at the next start");
            return Ok(());
        }
        let mut effects = crate::lifecycle::effects::Effects::default();
        effects.containments(changed);
        let mut batch = store::Batch::new();
        let audit = match effects.write(&self.store, &self.outbox, &mut batch) {
            Ok(written) => written.audit,
            Err(e) => return self.cannot_build(e),
        };
        self.make_durable(batch, audit).await?;
        self.hand_over_effects();
        Ok(())
    }

    /// Records a containment outcome with its timeline, audit and state change.
    pub(super) async fn record_outcome(
        &mut self,
        outcome: crate::response::containment::Outcome,
    ) -> Result<(), NotStored> {
        let mut batch = store::Batch::new();
        let kpis = match self.desk.record_outcome(
            self.engine.book_mut(),
            &self.store,
            &self.outbox,
            &outcome,
        ) {
            Ok(kpis) => kpis,
            Err(e) => return self.cannot_build(e),
        };
        let built = self.write_changes_and_effects(&mut batch);
        let audit = match built {
            Ok(written) => written.audit,
            Err(e) => return self.cannot_build(e),
        };
        self.make_durable(batch, audit).await?;
        self.evidence.committed();
        self.observe(&kpis);
        self.hand_over_effects();
        self.outbox.wake();
        self.update_open_gauge();
        Ok(())
    }

    /// Committed containment effects go to the worker; their counts and the contained
    /// targets to the metrics.
    pub(super) fn hand_over_effects(&mut self) {
        let effects = self.desk.containments.take_effects();
        if let Some(worker) = &self.worker {
            for effect in effects {
                worker.send(effect);
            }
        }
        let counts = self.desk.containments.take_counts();
        if counts.is_empty() {
            return;
        }
        for (action, outcome) in counts {
            self.metrics
                .actions
                .with_label_values(&[&action, outcome])
                .inc();
        }
        for (action, n) in self.desk.containments.active_per_action() {
            self.metrics
                .contained_targets
                .with_label_values(&[&action])
                .set(n);
        }
    }

    pub(super) fn observe(&self, kpis: &[crate::lifecycle::Kpi]) {
        for kpi in kpis {
            let histogram = match kpi.measure {
                Measure::Acknowledge => &self.metrics.time_to_acknowledge,
                Measure::Contain => &self.metrics.time_to_contain,
                Measure::Resolve => &self.metrics.time_to_resolve,
            };
            histogram
                .with_label_values(&[kpi.severity.as_str(), drill_label(kpi.drill)])
                .observe(kpi.seconds);
            self.metrics
                .sla_outcome(kpi.severity, kpi.measure.into(), kpi.seconds, kpi.drill);
        }
    }

    /// Opens a drill incident for a rule: a synthetic match that crosses the rule at once,
    /// marked as a drill, then the same path as a detection (escalation, receivers, audit).
    pub(super) fn open_drill(
        &mut self,
        rule_id: &str,
        actor: &str,
        opened: &mut Vec<IncidentEvent>,
    ) -> Result<crate::lifecycle::Done, crate::lifecycle::Refusal> {
        let rules = self.engine.rules().clone();
        let rule = rules
            .rule(rule_id)
            .ok_or_else(|| crate::lifecycle::Refusal::NotFound(format!("no rule {rule_id}")))?;
        let now = Utc::now();
        let hit = crate::response::drill::synthetic_hit(rule, actor, now);
        let mut event = self
            .engine
            .book_mut()
            .apply(hit, &rules, now)
            .ok_or_else(|| {
                crate::lifecycle::Refusal::Internal("the drill opened nothing".into())
            })?;
        let incident = self
            .engine
            .book_mut()
            .active_mut(&event.incident.id)
            .ok_or_else(|| {
                crate::lifecycle::Refusal::Internal("the drill incident vanished".into())
            })?;
        crate::response::drill::mark(incident, actor, now);
        event.incident = incident.clone();
        self.desk.dispatch(
            self.engine.book_mut(),
            std::slice::from_ref(&event),
            &self.outbox,
            now,
        );
        let reply = serde_json::to_value(&event.incident)
            .map_err(|e| crate::lifecycle::Refusal::Internal(e.to_string()))?;
        opened.push(event);
        Ok(crate::lifecycle::Done {
            reply,
            kpis: Vec::new(),
        })
    }
}
