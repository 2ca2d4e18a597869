//! The sled engine behind its write-ahead journal, tested on real files: the overlay read
//! against a model, checkpoints, crashes (a store dropped without closing), torn and
//! corrupt journal records.

use super::*;

fn put(k: &str, v: &str) -> Write {
    (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
}

fn all(engine: &SledEngine, prefix: &str) -> Vec<(String, String)> {
    let end = super::super::engine::prefix_end(prefix.as_bytes());
    engine
        .range(prefix.as_bytes(), end.as_deref())
        .map(|item| {
            let (k, v) = item.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect()
}

/// Reopens the engine in `dir` once the last handle let go of sled's file lock.
fn open_again(dir: &Path) -> SledEngine {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledEngine::open(dir) {
            Ok(engine) => return engine,
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

#[test]
fn reads_see_the_overlay_over_sled_and_removals_hide_sled_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = SledEngine::open(dir.path()).unwrap();
    engine
        .apply(vec![put("t/a", "1"), put("t/b", "1"), put("t/c", "1")])
        .unwrap();
    engine.flush().unwrap();
    engine
        .deferred()
        .checkpoint(&engine.handles().unwrap())
        .unwrap();
    assert!(
        engine.deferred().overlay.is_empty(),
        "sled took the overlay"
    );
    engine
        .apply(vec![
            put("t/b", "2"),
            (b"t/c".to_vec(), None),
            put("t/d", "2"),
            put("u/a", "2"),
        ])
        .unwrap();
    assert_eq!(
        all(&engine, "t/"),
        vec![
            ("t/a".into(), "1".into()),
            ("t/b".into(), "2".into()),
            ("t/d".into(), "2".into())
        ]
    );
    assert_eq!(engine.get(b"t/c").unwrap(), None);
    assert_eq!(engine.get(b"t/b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        engine.last_with_prefix(b"t/").unwrap(),
        Some((b"t/d".to_vec(), b"2".to_vec()))
    );
    engine.apply(vec![(b"t/d".to_vec(), None)]).unwrap();
    // sled's last pair (t/c) is removed in the overlay: the one before it is last.
    assert_eq!(
        engine.last_with_prefix(b"t/").unwrap(),
        Some((b"t/b".to_vec(), b"2".to_vec()))
    );
}

#[test]
fn synced_writes_sled_never_took_are_replayed_on_open_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = SledEngine::open(dir.path()).unwrap();
        engine
            .apply(vec![put("t/a", "1"), put("t/b", "1")])
            .unwrap();
        engine.flush().unwrap();
        engine
            .apply(vec![put("t/b", "2"), (b"t/a".to_vec(), None)])
            .unwrap();
        engine.flush().unwrap();
        assert!(
            !engine.deferred().overlay.is_empty(),
            "no checkpoint yet: sled has not taken the writes"
        );
    }
    // A torn record after the synced ones (a crash in the middle of an append).
    let wal = dir.path().join("wal");
    let last = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&last, bytes).unwrap();
    let engine = open_again(dir.path());
    assert_eq!(all(&engine, "t/"), vec![("t/b".into(), "2".into())]);
    // The torn tail is gone: what is appended next reads back after another reopen.
    engine.apply(vec![put("t/c", "3")]).unwrap();
    engine.flush().unwrap();
    drop(engine);
    let engine = open_again(dir.path());
    assert_eq!(
        all(&engine, "t/"),
        vec![("t/b".into(), "2".into()), ("t/c".into(), "3".into())]
    );
    assert!(!engine.is_empty().unwrap());
}

/// The journal's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs
}

/// An engine in `dir` holding `t/a` and `t/b` from two synced batches sled never
/// took, and the journal segment they are in.
fn two_synced_batches(dir: &Path) -> (SledEngine, PathBuf) {
    let engine = SledEngine::open(dir).unwrap();
    engine.apply(vec![put("t/a", "1")]).unwrap();
    engine.apply(vec![put("t/b", "2")]).unwrap();
    engine.flush().unwrap();
    let seg = segments(dir).pop().unwrap();
    (engine, seg)
}

/// Bytes that deflate does not shrink (so a few batches fill several test segments).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'!' + ((x >> 33) % 90) as u8)
        })
        .collect()
}

#[test]
fn a_bit_flipped_record_in_the_middle_refuses_to_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let first_len;
    {
        let engine = SledEngine::open(dir.path()).unwrap();
        engine.apply(vec![put("t/a", "1")]).unwrap();
        engine.flush().unwrap();
        first_len = std::fs::metadata(&segments(dir.path())[0]).unwrap().len();
        engine.apply(vec![put("t/b", "2")]).unwrap();
        engine.apply(vec![put("t/c", "3")]).unwrap();
        engine.flush().unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    // The first record's last payload byte: two whole records follow it.
    bytes[first_len as usize - 1] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match SledEngine::open(dir.path()) {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => break e,
            Ok(_) => panic!("a corrupt journal record in the middle was skipped"),
        }
    };
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::CorruptJournal { .. })
            && message.contains(&seg.display().to_string())
            && message.contains("checksum mismatch"),
        "{message}"
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len as u64,
        "nothing was cut from the journal"
    );
    // Repaired (the bit flipped back), it opens with every committed write.
    bytes[first_len as usize - 1] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let engine = open_again(dir.path());
    assert_eq!(
        all(&engine, "t/"),
        vec![
            ("t/a".into(), "1".into()),
            ("t/b".into(), "2".into()),
            ("t/c".into(), "3".into())
        ]
    );
}

#[test]
fn a_torn_last_record_left_as_zeros_or_half_written_is_cut_and_the_rest_kept() {
    for tail in [vec![0u8; 4096], {
        // A whole header claiming 100 bytes with only 20 written.
        let mut t = vec![100, 0, 0, 0, 9, 9, 9, 9, 1, 1];
        t.extend_from_slice(&[5; 20]);
        t
    }] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, seg) = two_synced_batches(dir.path());
        drop(engine);
        let whole = std::fs::metadata(&seg).unwrap().len();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&tail);
        std::fs::write(&seg, bytes).unwrap();
        let engine = open_again(dir.path());
        assert_eq!(
            all(&engine, "t/"),
            vec![("t/a".into(), "1".into()), ("t/b".into(), "2".into())]
        );
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    }
}

/// A crash after sled took a checkpoint (and flushed) but before the journal segments
/// it covers were removed: the old segments are still there on open and nothing in
/// them is applied over the newer state.
#[test]
fn a_crash_between_sleds_flush_and_the_segments_removal_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let kept = tempfile::tempdir().unwrap();
    {
        let engine = SledEngine::open(dir.path()).unwrap();
        // Enough incompressible bytes for several segments.
        for n in 0..8u64 {
            engine
                .apply(vec![put(&format!("t/{n}"), &noise(n, 20_000))])
                .unwrap();
            engine.flush().unwrap();
        }
        engine.apply(vec![put("t/x", "old")]).unwrap();
        engine.flush().unwrap();
        assert!(segments(dir.path()).len() > 2, "several segments");
        for seg in segments(dir.path()) {
            std::fs::copy(&seg, kept.path().join(seg.file_name().unwrap())).unwrap();
        }
        engine
            .deferred()
            .checkpoint(&engine.handles().unwrap())
            .unwrap();
        // After the checkpoint: t/x replaced, t/0 removed (only in the journal).
        engine
            .apply(vec![put("t/x", "new"), (b"t/0".to_vec(), None)])
            .unwrap();
        engine.flush().unwrap();
    }
    // The segments the checkpoint removed come back, as if it crashed before removing.
    for old in std::fs::read_dir(kept.path()).unwrap() {
        let old = old.unwrap().path();
        let to = dir.path().join("wal").join(old.file_name().unwrap());
        if !to.exists() {
            std::fs::copy(&old, &to).unwrap();
        }
    }
    let engine = open_again(dir.path());
    let got = all(&engine, "t/");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["t/1", "t/2", "t/3", "t/4", "t/5", "t/6", "t/7", "t/x"]
    );
    assert_eq!(got[0].1, noise(1, 20_000));
    assert_eq!(engine.get(b"t/x").unwrap(), Some(b"new".to_vec()));
    drop(engine);
    // And again, after that reopen's own replay.
    let engine = open_again(dir.path());
    assert_eq!(all(&engine, "t/"), got);
}

/// Random puts and removals over keys that are in sled, in the overlay, or both, with
/// checkpoints and crashes (dropped without a close) in between: every read (get,
/// ranges with and without an end, last of a prefix) matches a plain ordered map.
#[test]
fn reads_through_the_overlay_match_a_model_across_checkpoints_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut engine = SledEngine::open(dir.path()).unwrap();
    let mut x: u64 = 42;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let key = |n: u64| format!("{}/{:02}", ["a", "b", "c"][(n % 3) as usize], n);
    for step in 0..400u64 {
        let mut writes = Vec::new();
        for _ in 0..1 + next(4) {
            let k = key(next(40));
            if next(3) == 0 {
                model.remove(&k);
                writes.push((k.into_bytes(), None));
            } else {
                let v = format!("v{step}");
                model.insert(k.clone(), v.clone());
                writes.push(put(&k, &v));
            }
        }
        engine.apply(writes).unwrap();
        engine.flush().unwrap();
        match next(20) {
            0 => engine
                .deferred()
                .checkpoint(&engine.handles().unwrap())
                .unwrap(),
            1 => {
                drop(engine);
                engine = open_again(dir.path());
            }
            _ => {}
        }
        for prefix in ["a/", "b/", "c/"] {
            let want: Vec<(String, String)> = model
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(all(&engine, prefix), want, "step {step} prefix {prefix}");
            assert_eq!(
                engine.last_with_prefix(prefix.as_bytes()).unwrap(),
                want.last()
                    .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes())),
                "step {step} last of {prefix}"
            );
        }
        let (from, to) = (key(next(40)), key(next(40)));
        let got: Vec<String> = engine
            .range(from.as_bytes(), None)
            .map(|item| String::from_utf8(item.unwrap().0).unwrap())
            .collect();
        let want: Vec<String> = model
            .range(from.clone()..)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(got, want, "step {step} from {from}");
        if from < to {
            let got: Vec<String> = engine
                .range(from.as_bytes(), Some(to.as_bytes()))
                .map(|item| String::from_utf8(item.unwrap().0).unwrap())
                .collect();
            let want: Vec<String> = model
                .range(from.clone()..to.clone())
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(got, want, "step {step} {from}..{to}");
        }
        let k = key(next(40));
        assert_eq!(
            engine.get(k.as_bytes()).unwrap(),
            model.get(&k).map(|v| v.clone().into_bytes())
        );
    }
}

/// A reopen after an I/O error that meets a corrupt record keeps the engine closed
/// (every write refused, so the writer keeps reporting the store as failing) instead
/// of going on without the writes after it.
#[test]
fn a_reopen_that_meets_a_corrupt_record_leaves_the_engine_refusing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, seg) = two_synced_batches(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[HEADER + 1] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let error = engine.reopen().unwrap_err();
    assert!(
        matches!(error, StoreError::CorruptJournal { .. }),
        "{error}"
    );
    assert!(matches!(
        engine.apply(vec![put("t/c", "3")]),
        Err(StoreError::Reopening)
    ));
    assert!(matches!(engine.flush(), Err(StoreError::Reopening)));
    // Repaired, the next reopen brings every committed write back.
    bytes[HEADER + 1] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    engine.reopen().unwrap();
    assert_eq!(
        all(&engine, "t/"),
        vec![("t/a".into(), "1".into()), ("t/b".into(), "2".into())]
    );
}
