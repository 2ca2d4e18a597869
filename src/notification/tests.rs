//! Unit tests of the [`Outbox`](super::Outbox) on a real store: one copy per cluster
//! member, kept open incidents, shared idempotency keys and re-sent dead letters. Apart
//! from `mod.rs` so the module's file holds the outbox alone.

use super::*;
use crate::incidents::Incident;

use super::route::tests::CONFIG;

fn outbox() -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let outbox = Outbox::new(store, &config).unwrap();
    (dir, outbox)
}

fn event(kind: EventKind) -> IncidentEvent {
    let mut incident: Incident = crate::incidents::sample_incident();
    incident.escalation = "default".into();
    IncidentEvent { kind, incident }
}

#[test]
fn a_cluster_gets_one_copy_per_member_and_open_incidents_are_kept_for_re_sending() {
    let dir = tempfile::tempdir().unwrap();
    let text = "state_dir: s\nhost: web1\nreceivers:\n  - {name: am, type: webhook, format: alertmanager, urls: ['http://a:9093', 'http://b:9093/api/v2/alerts']}\n";
    let config = Config::parse(&dir.path().join("c.yaml"), text).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let o = Outbox::new(store.clone(), &config).unwrap();
    assert_eq!(o.host(), "web1");
    let am = ["am".to_string()];
    let mut batch = store::Batch::new();
    o.enqueue_to(&mut batch, &event(EventKind::Opened), &am, false)
        .unwrap();
    store.commit(batch).unwrap();
    let pending = o.pending().unwrap();
    let members: Vec<Option<&str>> = pending.iter().map(|r| r.member.as_deref()).collect();
    assert_eq!(
        members,
        [Some("http://a:9093"), Some("http://b:9093/api/v2/alerts")]
    );
    assert_eq!(pending[0].idempotency_key, pending[1].idempotency_key);
    assert!(pending.iter().all(|r| r.incident_uid() == "web1/INC-1"));
    let firing = o.firing("am").unwrap();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing["web1/INC-1"]["labels"]["incident"], "web1/INC-1");
    assert!(o.firing("other").unwrap().is_empty());

    let mut batch = store::Batch::new();
    o.enqueue_to(&mut batch, &event(EventKind::Closed), &am, false)
        .unwrap();
    store.commit(batch).unwrap();
    assert_eq!(o.pending().unwrap().len(), 4);
    assert!(o.firing("am").unwrap().is_empty(), "a close stops re-sends");
}

#[tokio::test]
async fn one_event_shares_its_idempotency_key_and_dead_letters_can_be_resent() {
    let (_dir, o) = outbox();
    let mut batch = store::Batch::new();
    let analysts = ["all", "hook", "pd"].map(String::from);
    let everyone = ["all", "hook", "lead", "pd"].map(String::from);
    let written = |batch: &mut store::Batch, kind, reached: &[String]| {
        o.enqueue_to(batch, &event(kind), reached, false)
            .unwrap()
            .len()
    };
    assert_eq!(written(&mut batch, EventKind::Opened, &analysts), 3);
    assert_eq!(written(&mut batch, EventKind::Closed, &everyone), 4);
    o.store().commit(batch).unwrap();
    let pending = o.pending().unwrap();
    assert_eq!(pending.len(), 7);
    let keys: BTreeSet<&str> = pending.iter().map(|r| r.idempotency_key.as_str()).collect();
    assert_eq!(keys.len(), 2, "one key per event: {keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("web1/INC-1-")));

    let first = pending[0].clone();
    let mut batch = store::Batch::new();
    batch.remove(Space::Outbox, &Record::key(first.id));
    batch
        .put(Space::DeadLetters, &Record::key(first.id), &first)
        .unwrap();
    o.store().commit(batch).unwrap();
    assert!(matches!(
        o.resend(u64::MAX, "oncall").await.unwrap(),
        Resent::NotFound
    ));
    let Resent::Queued(again) = o.resend(first.id, "oncall").await.unwrap() else {
        panic!("not re-sent");
    };
    assert_ne!(again.id, first.id);
    assert_eq!(again.idempotency_key, first.idempotency_key);
    assert_eq!(again.body, first.body);
    assert!(o.dead_letters().unwrap().is_empty());
    assert_eq!(o.pending().unwrap().len(), 7);
}
