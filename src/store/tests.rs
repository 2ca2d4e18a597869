//! The store's own tests: both engines, reopening, journal snapshots.

use super::*;

/// Opens the store in `dir` again once the last one let go of it: sled's flusher
/// thread releases the file lock a moment after the last handle is dropped, and on a
/// loaded machine the reopen can come first (polled, up to 10 s).
fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("reopen: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    }
}

/// An evidence line dated 5 s after the epoch.
fn a_line() -> Evidence {
    Evidence {
        source: "auth".into(),
        path: "auth.log".into(),
        offset: 7,
        time: chrono::DateTime::from_timestamp_millis(5_000).unwrap(),
        line: "a line".into(),
    }
}

/// The store reads and writes the same through either engine.
#[test]
fn both_engines_serve_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    for store in [Store::open(dir.path()).unwrap(), Store::memory()] {
        let mut batch = Batch::new();
        for n in [3u64, 1, 2] {
            batch.put(Space::Silences, &n.to_be_bytes(), &n).unwrap();
        }
        batch.put(Space::Incidents, b"x", &"other table").unwrap();
        let line = a_line();
        let at = batch.add_evidence(&store, &line);
        batch.put_raw(Space::Windows, b"rule\0k", vec![9]);
        let first = batch.take_id(&store);
        store.commit(batch).unwrap();
        let keys: Vec<u64> = store
            .scan::<u64>(Space::Silences)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(keys, [1, 2, 3]);
        assert_eq!(store.last_raw(Space::Silences).unwrap().unwrap().1, b"3");
        let (page, more) = store
            .page(Space::Silences, Some(&1u64.to_be_bytes()), 1, |_, v| {
                Ok(Some(v.to_vec()))
            })
            .unwrap();
        assert_eq!((page, more.is_some()), (vec![b"2".to_vec()], true));
        let mut batch = Batch::new();
        batch.remove(Space::Silences, &2u64.to_be_bytes());
        assert!(batch.take_id(&store) > first, "ids only grow");
        store.commit(batch).unwrap();
        assert_eq!(store.keys(Space::Silences).unwrap().len(), 2);
        assert_eq!(store.evidence(at).unwrap().line, line.line);
        assert_eq!(store.evidence_blocks(), [(at.block, 5_000)]);
        assert_eq!(
            store.scan_raw(Space::Windows).unwrap(),
            [(b"rule\0k".to_vec(), vec![9])]
        );
        assert_eq!(
            store.get::<u64>(Space::Meta, FORMAT_KEY).unwrap(),
            Some(FORMAT)
        );
    }
}

#[test]
fn committed_records_survive_reopening_and_an_uncommitted_journal_tail_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let line = a_line();
    let at;
    {
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        at = batch.add_evidence(&store, &line);
        batch.put_raw(Space::Windows, b"w1", vec![1]);
        batch.put_raw(Space::Windows, b"w2", vec![2]);
        batch.put(Space::Incidents, b"1", &"one").unwrap();
        batch.put(Space::Checkpoints, b"1:2", &7u64).unwrap();
        batch.put(Space::Incidents, b"2", &"two").unwrap();
        store.commit(batch).unwrap();
        let mut batch = Batch::new();
        batch.remove(Space::Incidents, b"2");
        batch.remove(Space::Windows, b"w2");
        store.commit(batch).unwrap();
        store.flush_blocking().unwrap();
    }
    // A commit whose records reached the journals (one torn) but not the engine.
    let journals = [dir.path().join("evidence"), dir.path().join("windows")];
    let sizes: Vec<u64> = journals
        .iter()
        .map(|j| std::fs::metadata(j.join("00000000.seg")).unwrap().len())
        .collect();
    for j in &journals {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(j.join("00000000.seg"))
            .unwrap();
        f.write_all(&[42; 25]).unwrap();
        std::fs::write(j.join("00000001.seg"), [42; 10]).unwrap();
    }
    let store = reopen(dir.path());
    let incidents: Vec<(Vec<u8>, String)> = store.scan(Space::Incidents).unwrap();
    assert_eq!(incidents, vec![(b"1".to_vec(), "one".to_string())]);
    assert_eq!(
        store.get::<u64>(Space::Checkpoints, b"1:2").unwrap(),
        Some(7)
    );
    assert_eq!(store.evidence(at).unwrap().line, line.line);
    assert_eq!(
        store.scan_raw(Space::Windows).unwrap(),
        [(b"w1".to_vec(), vec![1])]
    );
    for (j, size) in journals.iter().zip(sizes) {
        assert_eq!(
            std::fs::metadata(j.join("00000000.seg")).unwrap().len(),
            size,
            "the uncommitted tail of {j:?} is cut off"
        );
        assert!(!j.join("00000001.seg").exists());
    }
}

#[test]
fn window_snapshots_let_old_segments_go_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = std::collections::BTreeMap::new();
    {
        let store = Store::open(dir.path()).unwrap();
        // Incompressible values, so the journal grows past a few segments.
        let mut x: u64 = 1;
        for commit in 0..400u32 {
            let mut batch = Batch::new();
            for k in 0..20u32 {
                let key = format!("w{}", (commit * 7 + k) % 300).into_bytes();
                let value: Vec<u8> = (0..200)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                batch.put_raw(Space::Windows, &key, value.clone());
                expected.insert(key, value);
            }
            store.commit(batch).unwrap();
            store.flush_blocking().unwrap();
        }
        let segs = std::fs::read_dir(dir.path().join("windows"))
            .unwrap()
            .count();
        assert!(segs <= 6, "{segs} window segments kept");
        // Read in the same process (the last commit's changes are not in the table yet),
        // in key order.
        let read = store.scan_raw(Space::Windows).unwrap();
        assert_eq!(read, expected.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(
            store.get_raw(Space::Windows, b"w7").unwrap(),
            expected.get(&b"w7"[..]).cloned()
        );
    }
    let store = reopen(dir.path());
    let read: std::collections::BTreeMap<_, _> = store
        .scan_raw(Space::Windows)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(read, expected);
}

/// The journals' committed ends are a meta record that, between checkpoints, lives only in
/// the engine's write-ahead journal: a crash before sled takes it must still cut the
/// evidence journal to the committed end, not to sled's older end (which would drop
/// committed evidence) and not past it (which would keep an uncommitted tail).
#[test]
fn a_crash_before_the_checkpoint_cuts_the_evidence_journal_to_the_committed_end() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("evidence").join("00000000.seg");
    let (first, second, committed_len) = {
        let store = Store::open(dir.path()).unwrap();
        let mut at = Vec::new();
        for text in ["first line", "second line"] {
            let mut batch = Batch::new();
            let line = Evidence {
                line: text.into(),
                ..a_line()
            };
            at.push(batch.add_evidence(&store, &line));
            store.commit(batch).unwrap();
            store.flush_blocking().unwrap();
        }
        assert!(
            !store.checkpoint_due(),
            "the test relies on sled not having taken the ends yet"
        );
        let len = std::fs::metadata(&segment).unwrap().len();
        // An evidence record appended for a commit that never happened.
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[7; 64]);
        std::fs::write(&segment, bytes).unwrap();
        // Dropped without a close: sled never took the overlay.
        (at[0], at[1], len)
    };
    let store = reopen(dir.path());
    assert_eq!(&*store.evidence(first).unwrap().line, "first line");
    assert_eq!(&*store.evidence(second).unwrap().line, "second line");
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        committed_len,
        "the uncommitted tail is cut, and nothing committed"
    );
}

/// The same after [`Store::reopen`] (what the writer does after an I/O error): the engine
/// replays its journal, the evidence journal is cut to the committed end read from it, and
/// later commits land after that end and survive a crash.
#[test]
fn a_reopen_between_checkpoints_keeps_committed_evidence_and_cuts_only_the_uncommitted_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("evidence").join("00000000.seg");
    let store = Store::open(dir.path()).unwrap();
    let commit_line = |text: &str| {
        let mut batch = Batch::new();
        let line = Evidence {
            line: text.into(),
            ..a_line()
        };
        let at = batch.add_evidence(&store, &line);
        store.commit(batch).unwrap();
        store.flush_blocking().unwrap();
        at
    };
    let first = commit_line("first line");
    let committed_len = std::fs::metadata(&segment).unwrap().len();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[7; 64]);
    std::fs::write(&segment, bytes).unwrap();
    store.reopen().unwrap();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), committed_len);
    assert_eq!(&*store.evidence(first).unwrap().line, "first line");
    let second = commit_line("second line");
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(&*store.evidence(first).unwrap().line, "first line");
    assert_eq!(&*store.evidence(second).unwrap().line, "second line");
}
