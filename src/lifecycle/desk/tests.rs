//! Unit tests of the [`Desk`](super::Desk) on a real store: who is told what as an incident
//! escalates, one audit record per commit, and a clock that visits only what is due. Apart
//! from `desk.rs` because their fixture and scenarios are a third of the file and the desk
//! reads better without them in the way.

use super::*;
use crate::incidents::sample_incident;
use crate::lifecycle::{Action, Request};
use crate::store;

const CONFIG: &str = r#"state_dir: s
receivers:
  - {name: first, type: file, path: '-', events: [opened, severity_changed, acknowledged]}
  - {name: later, type: file, path: '-', events: [escalated, severity_changed]}
roles:
  analysts: {receivers: [first]}
  lead: {receivers: [later]}
escalation_policies:
  default:
    - notify: [analysts]
    - {after: 1h, notify: [lead]}
"#;

/// A store, the config above and its outbox, in a directory removed at the end.
struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
    outbox: Outbox,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outbox = Outbox::new(store.clone(), &config).unwrap();
        Fixture {
            _dir: dir,
            config,
            store,
            outbox,
        }
    }

    fn desk(&self) -> Desk {
        Desk::new(
            &self.store,
            &self.config,
            AuditLog::open(&self.store).unwrap(),
        )
        .unwrap()
    }

    fn book(&self) -> IncidentBook {
        IncidentBook::load(&self.store, "web1").unwrap()
    }

    /// Commits what the desk decided, as the pipeline does; returns its audit entries.
    fn commit(&self, desk: &mut Desk) -> Vec<Entry> {
        let mut batch = store::Batch::new();
        let written = desk
            .take_effects()
            .write(&self.store, &self.outbox, &mut batch)
            .unwrap();
        self.store.commit(batch).unwrap();
        written.audit
    }
}

#[test]
fn later_events_go_to_the_receivers_reached_so_far_and_updates_are_audited_once() {
    let f = Fixture::new();
    let outbox = f.outbox.clone();
    let (mut desk, mut book) = (f.desk(), f.book());
    let incident = sample_incident();
    let now = incident.opened_at;
    let event = |kind| IncidentEvent {
        kind,
        incident: incident.clone(),
    };
    desk.dispatch(
        &mut book,
        &[
            event(EventKind::Opened),
            event(EventKind::Updated),
            event(EventKind::Updated),
            event(EventKind::SeverityChanged),
        ],
        &outbox,
        now,
    );
    let audit = f.commit(&mut desk);
    let sent: Vec<(String, EventKind)> = outbox
        .pending()
        .unwrap()
        .into_iter()
        .map(|r| (r.receiver, r.event))
        .collect();
    // `later` chose severity_changed but its step has not fired: it hears nothing yet.
    assert_eq!(
        sent,
        [
            ("first".to_string(), EventKind::Opened),
            ("first".to_string(), EventKind::SeverityChanged),
        ]
    );
    let audit: Vec<&str> = audit.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        audit,
        [
            "incident.opened",
            "incident.severity_changed",
            "incident.updated"
        ]
    );
    let tracker = &desk.trackers[&incident.id];
    assert_eq!(tracker.reached, BTreeSet::from(["first".to_string()]));
}

#[test]
fn count_bumps_of_many_incidents_make_one_audit_record_per_commit() {
    let f = Fixture::new();
    let outbox = f.outbox.clone();
    let (mut desk, mut book) = (f.desk(), f.book());
    let events: Vec<IncidentEvent> = (1..=300)
        .map(|n| {
            let mut incident = sample_incident();
            incident.id = format!("INC-{n}");
            incident.count = n;
            IncidentEvent {
                kind: EventKind::Updated,
                incident,
            }
        })
        .collect();
    desk.dispatch(&mut book, &events, &outbox, sample_incident().opened_at);
    let audit = desk.take_effects().audit_entries().to_vec();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].event, "incident.updated");
    assert_eq!(audit[0].incident, None);
    let counts = audit[0].details["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 300);
    assert_eq!(counts["INC-7"], 7);
}

/// Five thousand open incidents: a tick with nothing due does no work per incident
/// (a walk over all of them, as a clock without a due-time queue makes, takes seconds
/// here), each incident's next step fires exactly at its time, and an acknowledged
/// incident leaves the queue.
#[test]
fn the_clock_looks_only_at_what_is_due_however_many_incidents_are_open() {
    const OPEN: usize = 5_000;
    let f = Fixture::new();
    let (store, outbox) = (f.store.clone(), f.outbox.clone());
    let mut batch = store::Batch::new();
    let opened = sample_incident().opened_at;
    for n in 1..=OPEN {
        let mut incident = sample_incident();
        incident.id = format!("INC-{n}");
        incident.key =
            BTreeMap::from([("ip".to_string(), format!("10.0.{}.{}", n / 250, n % 250))]);
        // Opened a second apart: the one-hour step falls due one incident per second.
        incident.opened_at = opened + chrono::Duration::seconds(n as i64);
        incident.put(&store, &mut batch).unwrap();
    }
    store.commit(batch).unwrap();
    let (mut desk, mut book) = (f.desk(), f.book());
    desk.track_active(&store, &book).unwrap();
    assert_eq!(desk.scheduled(), OPEN);

    let hour = chrono::Duration::hours(1);
    let started = std::time::Instant::now();
    for second in 0..50 {
        let now = opened + chrono::Duration::seconds(second) + chrono::Duration::minutes(30);
        assert!(!desk.tick(&mut book, &outbox, now));
    }
    let idle = started.elapsed();
    assert!(
        idle < std::time::Duration::from_secs(1),
        "50 idle ticks took {idle:?}"
    );

    // INC-1's step is due at its opening + 1 h, INC-2's a second later.
    let due = opened + chrono::Duration::seconds(1) + hour;
    assert!(!desk.tick(&mut book, &outbox, due - chrono::Duration::milliseconds(1)));
    assert!(desk.tick(&mut book, &outbox, due));
    let audit = f.commit(&mut desk);
    let sent: Vec<(String, String)> = outbox
        .pending()
        .unwrap()
        .into_iter()
        .map(|r| (r.incident, r.receiver))
        .collect();
    assert_eq!(sent, [("INC-1".to_string(), "later".to_string())]);
    assert_eq!(audit.len(), 1);
    // Fired and not repeating: out of the queue.
    assert_eq!(desk.scheduled(), OPEN - 1);

    // Acknowledged before its time: INC-2 leaves the queue and never fires.
    desk.command(
        &mut book,
        &store,
        &outbox,
        "oncall",
        Request::Incident {
            id: "INC-2".into(),
            action: Action::Ack { note: None },
        },
        due,
    )
    .unwrap();
    assert_eq!(desk.scheduled(), OPEN - 2);
    assert!(!desk.tick(&mut book, &outbox, due + chrono::Duration::seconds(1)));
    // INC-3 is due a second after INC-2 would have been.
    assert!(desk.tick(&mut book, &outbox, due + chrono::Duration::seconds(2)));
}
