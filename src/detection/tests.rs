//! The detector's tests: matching, windows, exceptions, key floods, reloads, restores and
//! expiry, each through [`super::Detector`]'s public calls and its state.

use super::*;

const T0: i64 = 1_700_000_000_000;

fn rules(yaml: &str) -> Arc<RuleSet> {
    RuleSet::from_yaml(yaml)
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn line(text: &str) -> LogLine {
    LogLine {
        source: "auth".into(),
        path: "auth.log".into(),
        offset: 0,
        bytes: text.as_bytes().to_vec(),
        arrival: at(T0),
        time: None,
    }
}

/// What a commit would store of `d`'s changed state, as a restart reads it back.
fn saved(d: &mut Detector) -> Vec<SavedWindow> {
    d.take_dirty()
        .into_iter()
        .map(|(id, s)| (id, s.cloned().unwrap()))
        .collect()
}

/// Feeds `text` at `ms`; returns the hits.
fn feed(d: &mut Detector, ms: i64, text: &str) -> Vec<Hit> {
    let mut hits = Vec::new();
    d.observe(&line(text), at(ms), &mut hits);
    hits
}

fn opened(hits: &[Hit]) -> Vec<(&str, u64)> {
    hits.iter()
        .filter_map(|h| h.crossed.as_ref().map(|c| (h.rule.id(), c.count)))
        .collect()
}

const EXCEPTIONS: &str = r#"
lists:
  trusted: [10.0.0.0/8, "::1"]
  admins: [root, admin]
rules:
  - id: allowed
    match: 'fail user=(?P<user>\S+) ip=(?P<ip>\S+)'
    allow: {ip: ["@trusted", 192.168.1.1]}
    threshold: {count: 1, within: 1m}
    severity: low
  - id: admins-only
    match: 'fail user=(?P<user>\S+) ip=(?P<ip>\S+)'
    group_by: [user]
    only: {user: ["@admins"]}
    threshold: {count: 1, within: 1m}
    severity: low
"#;

#[test]
fn allow_and_only_decide_what_is_counted() {
    let mut d = Detector::new(rules(EXCEPTIONS), &["auth".into()]);
    let ids =
        |hits: Vec<Hit>| -> Vec<String> { hits.iter().map(|h| h.rule.id().to_string()).collect() };
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=bob ip=10.2.3.4")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=bob ip=0:0::1")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=bob ip=192.168.1.1")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=bob ip=11.0.0.1")),
        vec!["allowed"]
    );
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=root ip=10.0.0.1")),
        vec!["admins-only"],
        "allow of one rule does not apply to another"
    );
    assert_eq!(
        ids(feed(&mut d, T0, "fail user=admin ip=203.0.113.9")),
        vec!["allowed", "admins-only"]
    );
}

const SEQUENCE: &str = r#"
rules:
  - id: breach
    group_by: [ip]
    sequence:
      within: 10m
      steps:
        - {match: 'Failed password for \S+ from (?P<ip>\S+)', count: 2}
        - {match: 'Accepted \w+ for \S+ from (?P<ip>\S+)'}
    severity: critical
"#;

/// Two rules and a sequence step with one pattern: it runs once per line, yet each rule
/// counts under its own key, and the next line is read afresh.
#[test]
fn rules_sharing_a_pattern_each_count_under_their_own_key() {
    const PATTERN: &str = r"Failed for (?P<user>\S+) from (?P<ip>\S+)";
    let d = &mut Detector::new(
        rules(&format!(
            r#"
rules:
  - id: by-ip
    match: '{PATTERN}'
    group_by: [ip]
    threshold: {{count: 2, within: 1m}}
    severity: low
  - id: by-user
    match: '{PATTERN}'
    group_by: [user]
    threshold: {{count: 2, within: 1m}}
    severity: low
  - id: then-accepted
    group_by: [ip]
    sequence:
      within: 1m
      steps:
        - {{match: '{PATTERN}', count: 1}}
        - {{match: 'Accepted for \S+ from (?P<ip>\S+)'}}
    severity: high
"#
        )),
        &["auth".into()],
    );
    let keys = |hits: &[Hit]| -> Vec<(String, Key)> {
        hits.iter()
            .map(|h| (h.rule.id().to_string(), h.key.to_map()))
            .collect()
    };
    let key = |field: &str, value: &str| Key::from([(field.into(), value.into())]);
    let hits = feed(d, T0, "Failed for root from 1.1.1.1");
    assert_eq!(
        keys(&hits),
        vec![
            ("by-ip".into(), key("ip", "1.1.1.1")),
            ("by-user".into(), key("user", "root")),
            ("then-accepted".into(), key("ip", "1.1.1.1")),
        ]
    );
    assert_eq!(hits[1].captures.get("ip"), Some("1.1.1.1"));
    let hits = feed(d, T0 + 1, "Failed for admin from 2.2.2.2");
    assert_eq!(keys(&hits)[0], ("by-ip".into(), key("ip", "2.2.2.2")));
    assert_eq!(keys(&hits)[1], ("by-user".into(), key("user", "admin")));
    assert!(feed(d, T0 + 2, "Failed for nobody").is_empty());
    let hits = feed(d, T0 + 3, "Failed for root from 3.3.3.3");
    assert_eq!(opened(&hits), vec![("by-user", 2)]);
    assert_eq!(
        opened(&feed(d, T0 + 4, "Accepted for root from 3.3.3.3")),
        vec![("then-accepted", 2)]
    );
}

#[test]
fn sequence_steps_are_found_by_the_combined_pass_and_keyed() {
    let mut d = Detector::new(rules(SEQUENCE), &["auth".into()]);
    feed(&mut d, T0, "Failed password for a from 1.1.1.1");
    feed(&mut d, T0 + 1, "Failed password for a from 2.2.2.2");
    assert!(
        opened(&feed(
            &mut d,
            T0 + 2,
            "Accepted password for a from 1.1.1.1"
        ))
        .is_empty()
    );
    feed(&mut d, T0 + 3, "Failed password for a from 1.1.1.1");
    let hits = feed(&mut d, T0 + 4, "Accepted publickey for a from 1.1.1.1");
    assert_eq!(opened(&hits), vec![("breach", 3)]);
    assert_eq!(
        hits[0].key.to_map(),
        Key::from([("ip".into(), "1.1.1.1".into())])
    );
}

const FLOOD: &str = r#"
rules:
  - id: flood
    match: 'from (?P<ip>\S+)'
    group_by: [ip]
    threshold: {count: 3, within: 1h}
    max_keys: 50
    severity: low
"#;

#[test]
fn a_key_flood_evicts_one_time_keys_first_and_is_counted() {
    let mut d = Detector::new(rules(FLOOD), &["auth".into()]);
    feed(&mut d, T0, "from victim");
    feed(&mut d, T0, "from victim");
    for n in 0..1000 {
        feed(
            &mut d,
            T0 + n,
            &format!("from 198.51.{}.{}", n / 256, n % 256),
        );
    }
    // 1001 keys (victim and 1000 flood addresses) into 50 places: every key is either
    // held or counted as evicted.
    let live = d.live_keys();
    assert!((47..=50).contains(&live), "{live} keys");
    let evicted = d.take_evictions()["flood"] as usize;
    assert_eq!(live + evicted, 1001);
    // Evicted keys are deleted from the store with the next commit.
    let gone = d.take_dirty().iter().filter(|(_, s)| s.is_none()).count();
    assert_eq!(gone, evicted);
    // The victim, oldest of all but with two matches, outlived twenty times its table
    // of one-time keys: its third match opens the incident.
    assert_eq!(opened(&feed(&mut d, T0 + 2000, "from victim")).len(), 1);
}

#[test]
fn reload_keeps_state_of_unchanged_rules_only() {
    let two = format!(
        "{FLOOD}  - id: other\n    match: 'other (?P<ip>\\S+)'\n    threshold: {{count: 3, within: 1h}}\n    severity: low\n"
    );
    let mut d = Detector::new(rules(&two), &["auth".into()]);
    for _ in 0..2 {
        feed(&mut d, T0, "from 1.1.1.1");
        feed(&mut d, T0, "other 1.1.1.1");
    }
    d.take_dirty();
    let changed = two.replace("other (?P<ip>", "other  ?(?P<ip>");
    let change = d.replace_rules(rules(&changed));
    assert_eq!(
        (change.changed, change.added, change.removed),
        (vec!["other".to_string()], vec![], vec![])
    );
    assert_ne!(change.old_version, change.new_version);
    let deleted: Vec<String> = d.take_dirty().into_iter().map(|(id, _)| id.rule).collect();
    assert_eq!(deleted, vec!["other".to_string()]);
    assert_eq!(
        opened(&feed(&mut d, T0, "from 1.1.1.1")),
        vec![("flood", 3)]
    );
    assert!(
        opened(&feed(&mut d, T0, "other 1.1.1.1")).is_empty(),
        "other starts again"
    );
}

/// A swap that removes the first rule's table moves the others' tables: each unchanged
/// rule still counts into its own state (its third match crosses), and the rule that comes
/// back starts again, whatever the tables' order and the rules' addresses before.
#[test]
fn after_a_swap_each_rule_counts_into_its_own_table() {
    let rule = |id: &str| {
        format!(
            "  - id: {id}\n    match: '{id} (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {{count: 3, within: 1h}}\n    severity: low\n"
        )
    };
    let all = format!("rules:\n{}{}{}", rule("a"), rule("b"), rule("c"));
    let without_a = format!("rules:\n{}{}", rule("b"), rule("c"));
    let mut d = Detector::new(rules(&all), &["auth".into()]);
    for text in [
        "a 1.1.1.1",
        "b 1.1.1.1",
        "c 1.1.1.1",
        "c 1.1.1.1",
        "b 1.1.1.1",
    ] {
        assert!(opened(&feed(&mut d, T0, text)).is_empty());
    }
    assert_eq!(
        d.replace_rules(rules(&without_a)).removed,
        vec!["a".to_string()]
    );
    assert_eq!(opened(&feed(&mut d, T0, "c 1.1.1.1")), vec![("c", 3)]);
    assert!(
        opened(&feed(&mut d, T0, "a 1.1.1.1")).is_empty(),
        "a is gone"
    );
    d.replace_rules(rules(&all));
    assert!(opened(&feed(&mut d, T0, "a 1.1.1.1")).is_empty());
    assert!(
        opened(&feed(&mut d, T0, "a 1.1.1.1")).is_empty(),
        "a starts again"
    );
    assert_eq!(opened(&feed(&mut d, T0, "b 1.1.1.1")), vec![("b", 3)]);
    assert_eq!(opened(&feed(&mut d, T0, "a 1.1.1.1")), vec![("a", 3)]);
}

const ABSENCE: &str = r#"
rules:
  - id: heartbeat
    match: 'heartbeat'
    absence: {within: 1m}
    severity: high
  - id: per-host
    match: 'backup done on (?P<host>\S+)'
    group_by: [host]
    absence: {within: 1m, count: 1}
    severity: high
"#;

#[test]
fn absence_clock_starts_at_first_load_and_survives_a_restart() {
    let set = rules(ABSENCE);
    let mut d = Detector::new(set.clone(), &["auth".into()]);
    let mut hits = Vec::new();
    d.advance(at(T0), &mut hits);
    feed(&mut d, T0 + 10_000, "backup done on db1");
    let saved = saved(&mut d);
    assert_eq!(saved.len(), 2);
    // Restart 59 s later: the stored clock start holds, so nothing yet...
    let mut d = Detector::new(set, &["auth".into()]);
    let json = serde_json::to_string(&saved).unwrap();
    assert!(
        d.restore(serde_json::from_str::<Vec<SavedWindow>>(&json).unwrap())
            .is_empty()
    );
    d.advance(at(T0 + 59_999), &mut hits);
    assert!(hits.is_empty());
    // ... and at one minute the whole-rule heartbeat is absent, the host not yet.
    d.advance(at(T0 + 60_000), &mut hits);
    assert_eq!(opened(&hits), vec![("heartbeat", 0)]);
    assert!(hits[0].evidence.is_none() && hits[0].key.is_empty());
    hits.clear();
    d.advance(at(T0 + 70_001), &mut hits);
    assert_eq!(opened(&hits), vec![("per-host", 0)]);
    assert_eq!(
        &*hits[0].crossed.as_ref().unwrap().evidence[0].line,
        "backup done on db1"
    );
    // Lines come back: the gap ends, recorded on the hit.
    let back = feed(&mut d, T0 + 80_000, "backup done on db1");
    assert_eq!(back[0].resumed, Some(at(T0 + 80_000)));
}

#[test]
fn restore_drops_state_of_changed_rules() {
    let mut d = Detector::new(rules(FLOOD), &["auth".into()]);
    feed(&mut d, T0, "from 1.1.1.1");
    let saved = saved(&mut d);
    let mut changed = Detector::new(
        rules(&FLOOD.replace("count: 3", "count: 2")),
        &["auth".into()],
    );
    assert_eq!(changed.restore(saved.clone()).len(), 1);
    let mut same = Detector::new(rules(FLOOD), &["auth".into()]);
    assert!(same.restore(saved).is_empty());
    feed(&mut same, T0, "from 1.1.1.1");
    assert_eq!(
        opened(&feed(&mut same, T0, "from 1.1.1.1")),
        vec![("flood", 3)]
    );
}

/// Every expiring kind on one line format, with a small key bound so eviction (which
/// ranks keys by what expiry left them) takes part too.
const EXPIRING: &str = r#"
rules:
  - id: threshold
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [ip]
    threshold: {count: 4, within: 30s}
    max_keys: 12
    severity: low
  - id: distinct
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [ip]
    distinct: {field: user, count: 4, within: 20s}
    severity: low
  - id: spike
    match: 'a (?P<ip>\S+) (?P<user>\S+)'
    group_by: [user]
    spike: {window: 10s, baseline: 2, factor: 3, min_count: 3}
    severity: low
  - id: sequence
    group_by: [ip]
    sequence:
      within: 40s
      steps:
        - {match: 'a (?P<ip>\S+) ', count: 2}
        - {match: 'b (?P<ip>\S+)'}
    severity: low
"#;

/// The expiry this replaced, kept as the reference: every key of every rule, each tick.
fn expire_every_key(d: &mut Detector, now: DateTime<Utc>) {
    let now_ms = now.timestamp_millis();
    for rule in &d.rules.rules {
        let Some(table) = d.tables.get_mut(rule.id()) else {
            continue;
        };
        for key in table.retain(|_, state| !state.expire(&rule.kind, now_ms)) {
            mark(&mut d.dirty, rule.id(), &key);
        }
    }
}

/// Every rule's keys and states, in order.
fn snapshot(d: &Detector) -> BTreeMap<(String, Fields), KeyState> {
    d.tables
        .iter()
        .flat_map(|(rule, table)| {
            table
                .keys()
                .map(|k| {
                    let state = table.get(&k).unwrap().clone();
                    ((rule.clone(), k), state)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What a commit would store: each changed key with its state (`None`: deleted).
fn dirty(d: &mut Detector) -> Vec<(String, Key, Option<KeyState>)> {
    let mut dirty: Vec<_> = d
        .take_dirty()
        .into_iter()
        .map(|(id, s)| (id.rule, id.key, s.cloned()))
        .collect();
    dirty.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    dirty
}

/// Random lines (a fifth of them late, some past every window) and clock ticks (now and
/// then a step back) into a detector expiring through its queue and one expiring every
/// key: the same keys go at the same ticks, with the same states, hits, stored changes
/// and evictions.
#[test]
fn queued_expiry_forgets_exactly_what_a_pass_over_every_key_forgets() {
    for seed in 0..12 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let set = rules(EXPIRING);
        let mut queued = Detector::new(set.clone(), &["auth".into()]);
        let mut every = Detector::new(set, &["auth".into()]);
        let (ips, users) = (rng.u32(2..40), rng.u32(1..8));
        let mut clock = T0;
        let mut expired = 0;
        for _ in 0..1_500 {
            if rng.u8(0..10) == 0 {
                clock += rng.i64(-2_000..8_000);
                queued.expire(at(clock));
                expire_every_key(&mut every, at(clock));
                assert_eq!(snapshot(&queued), snapshot(&every), "seed {seed}");
                let changed = dirty(&mut queued);
                expired += changed.iter().filter(|c| c.2.is_none()).count();
                assert_eq!(changed, dirty(&mut every), "seed {seed}");
                continue;
            }
            let time = match rng.u8(0..10) {
                0 => clock - rng.i64(0..60_000),
                1 => clock - rng.i64(0..5_000),
                _ => clock + rng.i64(0..1_000),
            };
            let text = if rng.u8(0..6) == 0 {
                format!("b 10.0.0.{}", rng.u32(0..ips))
            } else {
                format!("a 10.0.0.{} u{}", rng.u32(0..ips), rng.u32(0..users))
            };
            let key = |h: &Hit| (h.rule.id().to_string(), h.key.clone(), h.crossed.clone());
            let (a, b) = (
                feed(&mut queued, time, &text),
                feed(&mut every, time, &text),
            );
            assert_eq!(
                a.iter().map(key).collect::<Vec<_>>(),
                b.iter().map(key).collect::<Vec<_>>(),
                "seed {seed}"
            );
        }
        assert_eq!(queued.take_evictions(), every.take_evictions());
        assert!(expired > 0, "seed {seed}: the run expired keys");
    }
}

/// A detector restored from the store queues its keys too: they expire on time.
#[test]
fn restored_keys_expire_at_their_time() {
    let mut d = Detector::new(rules(EXPIRING), &["auth".into()]);
    feed(&mut d, T0, "a 10.0.0.1 u1");
    let saved = saved(&mut d);
    let mut d = Detector::new(rules(EXPIRING), &["auth".into()]);
    assert!(d.restore(saved).is_empty());
    let live = d.live_keys();
    d.expire(at(T0 + 20_000));
    assert_eq!(d.live_keys(), live, "nothing is older than its window yet");
    d.expire(at(T0 + 30_001));
    assert_eq!(d.live_keys(), 1, "only the sequence's 40 s are left");
    d.expire(at(T0 + 40_001));
    assert_eq!(d.live_keys(), 0);
}

/// A commit's changed windows as `each_dirty` gives them (store key, rule hash, state) are
/// what `take_dirty` gives, keyed by `window_key`: the same rows land in the store either
/// way, keys of several values (including ones JSON escapes) and gone keys included.
#[test]
fn each_dirty_stores_the_keys_and_states_take_dirty_names() {
    let set = rules(
        r#"
rules:
  - id: pairs
    match: 'fail user=(?P<user>\S+) ip=(?P<ip>\S+)'
    group_by: [user, ip]
    threshold: {count: 3, within: 1m}
    severity: low
"#,
    );
    let mut by_id = Detector::new(set.clone(), &["auth".into()]);
    let mut by_key = Detector::new(set, &["auth".into()]);
    let mut compared = 0;
    for round in 0..3i64 {
        for i in 0..40 {
            let text = format!("fail user=u\"{}\\x ip=10.0.{}.{}", i % 7, round, i % 5);
            feed(&mut by_id, T0 + round * 120_000 + i, &text);
            feed(&mut by_key, T0 + round * 120_000 + i, &text);
        }
        let mut want: Vec<(Vec<u8>, String, Option<KeyState>)> = by_id
            .take_dirty()
            .into_iter()
            .map(|(id, s)| (window_key(&id), id.rule_hash.clone(), s.cloned()))
            .collect();
        let mut got = Vec::new();
        by_key.each_dirty(|key, hash, s| got.push((key.to_vec(), hash.to_string(), s.cloned())));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!want.is_empty(), "round {round} changes keys");
        assert_eq!(got, want, "round {round}");
        compared += want.len();
    }
    assert!(compared > 35, "many windows compared: {compared}");
}

const EVIDENCE_RULES: &str = r#"
rules:
  - id: threshold
    match: 'fail (?P<ip>\S+) (?P<user>\S+) n='
    group_by: [ip]
    threshold: {count: 4, within: 1h}
    severity: low
  - id: distinct
    match: 'fail (?P<ip>\S+) (?P<user>\S+) n='
    group_by: [ip]
    distinct: {field: user, count: 3, within: 1h}
    severity: low
  - id: sequence
    group_by: [ip]
    sequence:
      within: 1h
      steps:
        - {match: 'fail (?P<ip>\S+) ', count: 2}
        - {match: 'ok (?P<ip>\S+) '}
    severity: low
"#;

/// Every hit and crossing shows its own lines: each evidence line's text is the one fed at
/// its offset and time (not another line's), a crossing holds no line twice and only lines
/// of its key, and a threshold crossing holds exactly the key's lines since its last one
/// (none lost) — over thousands of lines from many keys, of varying lengths, counted by
/// three rules each, with the clock expiring keys in between and every hit made.
#[test]
fn evidence_shows_each_counted_line_once_with_its_own_text() {
    let mut d = Detector::new(rules(EVIDENCE_RULES), &["auth".into()]);
    // Offset -> (time, text) of every line fed.
    let mut fed: BTreeMap<u64, (i64, String)> = BTreeMap::new();
    // Threshold model: per ip, the offsets counted since its last crossing.
    let mut pending: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut crossings, mut hits_seen) = (BTreeMap::<String, usize>::new(), 0);
    let mut seed: u64 = 0x853c_49e6_748f_ea9b;
    for n in 0..6_000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let ms = T0 + n as i64 * 700;
        let ip = format!("10.0.{}.{}", seed % 7, (seed >> 8) % 40);
        let ok = seed.is_multiple_of(9);
        let text = if ok {
            format!("ok {ip} n={n}")
        } else {
            let pad = "x".repeat((seed >> 16) as usize % 300);
            format!("fail {ip} u{} n={n} {pad}", (seed >> 12) % 4)
        };
        let offset = n * 1_000 + 17;
        fed.insert(offset, (ms, text.clone()));
        if !ok {
            pending.entry(ip.clone()).or_default().push(offset);
        }
        let mut l = line(&text);
        l.offset = offset;
        let mut hits = Vec::new();
        d.observe(&l, at(ms), &mut hits);
        for hit in &hits {
            hits_seen += 1;
            let own = hit.evidence.as_ref().expect("a line's hit shows the line");
            assert_eq!((own.offset, &*own.line), (offset, text.as_str()));
            assert_eq!(own.time, at(ms));
            let Some(crossed) = &hit.crossed else {
                continue;
            };
            *crossings.entry(hit.rule.id().to_string()).or_default() += 1;
            let offsets: Vec<u64> = crossed.evidence.iter().map(|e| e.offset).collect();
            let mut unique = offsets.clone();
            unique.dedup();
            assert_eq!(unique, offsets, "{}: a line twice", hit.rule.id());
            for e in &crossed.evidence {
                let (t, want) = &fed[&e.offset];
                assert_eq!(
                    (&*e.line, e.time),
                    (want.as_str(), at(*t)),
                    "another line's text"
                );
                assert!(
                    e.line.contains(&format!(" {ip} ")),
                    "{}: a line of another key",
                    hit.rule.id()
                );
            }
            assert!(
                offsets.windows(2).all(|w| fed[&w[0]].0 <= fed[&w[1]].0),
                "oldest first"
            );
            if hit.rule.id() == "threshold" {
                assert_eq!(offsets, pending.remove(&ip).unwrap(), "lines lost");
                assert_eq!(crossed.count, 4);
            }
            if hit.rule.id() == "sequence" {
                assert_eq!(offsets.last(), Some(&offset));
                assert_eq!(crossed.evidence.len(), 3);
            }
        }
        if n % 500 == 499 {
            d.expire(at(ms));
        }
    }
    assert!(hits_seen > 6_000, "every match is a hit here: {hits_seen}");
    for rule in ["threshold", "distinct", "sequence"] {
        assert!(
            crossings.get(rule).copied().unwrap_or(0) > 20,
            "{crossings:?}"
        );
    }
}
