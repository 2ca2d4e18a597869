//! Tailing that never loses or repeats a line: real files that really rotate, a writer that
//! keeps writing, a daemon that is killed with SIGKILL.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// Shortest time between two rotations of the workload.
const ROTATION_GAP: Duration = Duration::from_millis(100);

fn setup(paths: &str) -> Setup {
    let s = Setup::new();
    s.write("rules/r.yaml", ACCOUNTING_RULES);
    s.config(&format!(
        "sources:\n  - {{name: app, paths: {paths}, start_at: beginning}}\n"
    ));
    s
}

/// How the writer rotates its log.
#[derive(Clone, Copy, Debug)]
enum Rotation {
    /// rename to `.N`, keep writing a few lines to the old descriptor, then reopen the path.
    RenameCreate,
    /// copy to `.N`, then truncate in place (the writer is paused in between, as logrotate
    /// intends; the lines it would write in that gap are lost for everyone).
    CopyTruncate,
}

/// A logger holding its file open, as daemons do.
struct Writer {
    path: PathBuf,
    file: File,
    generation: u32,
}

impl Writer {
    fn open(path: &Path) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        Writer {
            path: path.to_path_buf(),
            file,
            generation: 0,
        }
    }

    fn line(&mut self, line: &str) {
        self.file.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    /// Rotates; `late` lines still go to the old file when renaming (before the reopen).
    ///
    /// Rotations come at least [`ROTATION_GAP`] apart and four generations are kept, so a
    /// generation lives for several polls before it is deleted (logrotate keeps them for
    /// days); a file created and deleted between two looks cannot be read by anyone.
    fn rotate(&mut self, how: Rotation, late: &mut dyn Iterator<Item = String>) {
        std::thread::sleep(ROTATION_GAP);
        self.generation += 1;
        let target = self.rotated(self.generation);
        match how {
            Rotation::RenameCreate => {
                std::fs::rename(&self.path, &target).unwrap();
                for line in late.take(3) {
                    self.line(&line);
                }
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .unwrap();
            }
            Rotation::CopyTruncate => {
                std::fs::copy(&self.path, &target).unwrap();
                self.file.set_len(0).unwrap();
            }
        }
        // logrotate's `rotate 4`: the oldest generation is deleted.
        if self.generation > 4 {
            let _ = std::fs::remove_file(self.rotated(self.generation - 4));
        }
    }
}

/// Writes the lines with rotations of the given styles at random points (only once the file
/// holds a full fingerprint's worth, as real rotation does), pausing now and then so the
/// daemon reads in between; `between` runs at random points (kills and restarts).
fn run_workload(
    writer: &mut Writer,
    lines: Vec<String>,
    styles: &[Rotation],
    rng: &mut Rng,
    mut between: impl FnMut(&mut Rng),
) {
    let mut lines = lines.into_iter();
    while let Some(line) = lines.next() {
        writer.line(&line);
        match rng.below(400) {
            0..=3 if writer.size() > 600 => {
                let how = styles[rng.below(styles.len() as u64) as usize];
                writer.rotate(how, &mut lines);
            }
            4..=9 => std::thread::sleep(Duration::from_millis(rng.below(30))),
            10 => between(rng),
            _ => {}
        }
    }
}

#[test]
fn rename_and_copytruncate_rotation_lose_and_repeat_nothing() {
    for (paths, seed) in [("[app.log]", 1), ("['app.log*']", 2)] {
        let s = setup(paths);
        let d = s.start();
        let mut rng = Rng::new(seed);
        let keys = 300;
        let mut writer = Writer::open(&s.path("app.log"));
        let lines = accounting_lines(keys, &mut rng);
        run_workload(
            &mut writer,
            lines,
            &[Rotation::RenameCreate, Rotation::CopyTruncate],
            &mut rng,
            |_| {},
        );
        assert!(
            writer.generation >= 4,
            "the workload rotated only {} times",
            writer.generation
        );
        verify_accounting(&d, keys, WAIT);
        let metrics = http("GET", s.port, "/metrics", None, None).unwrap().body;
        assert!(
            metrics.contains("logwarden_file_truncations_total{source=\"app\"}"),
            "{metrics}"
        );
    }
}

#[test]
fn sigkill_in_a_write_burst_then_restart_counts_every_line_once() {
    let s = setup("[app.log]");
    let mut daemon = Some(s.start());
    let mut rng = Rng::new(7);
    let keys = 400;
    let mut writer = Writer::open(&s.path("app.log"));
    let lines = accounting_lines(keys, &mut rng);
    let mut kills = 0;
    run_workload(
        &mut writer,
        lines,
        &[Rotation::RenameCreate, Rotation::CopyTruncate],
        &mut rng,
        |rng| {
            if kills < 4 {
                daemon.take().unwrap().kill();
                kills += 1;
                // Lines (and rotations) keep coming while the daemon is down.
                std::thread::sleep(Duration::from_millis(rng.below(100)));
                daemon = Some(s.start());
            }
        },
    );
    assert!(
        kills >= 2,
        "the workload killed the daemon only {kills} times"
    );
    verify_accounting(daemon.as_ref().unwrap(), keys, WAIT);
}

#[test]
fn randomized_appends_rotations_truncations_and_restarts() {
    for seed in [11u64, 12, 13] {
        let s = setup("['app.log*']");
        let mut d = s.start();
        let mut rng = Rng::new(seed);
        let keys = 120;
        let mut writer = Writer::open(&s.path("app.log"));
        let mut marker = 0;
        let lines = accounting_lines(keys, &mut rng);
        for chunk in lines.chunks(60) {
            for line in chunk {
                writer.line(line);
            }
            match rng.below(6) {
                0 if writer.size() > 600 => {
                    writer.rotate(Rotation::RenameCreate, &mut std::iter::empty())
                }
                1 if writer.size() > 600 => {
                    writer.rotate(Rotation::CopyTruncate, &mut std::iter::empty())
                }
                2 => {
                    // A plain truncation (`> app.log`) destroys what was not read yet, so it
                    // comes only after the daemon has caught up.
                    marker += 1;
                    writer.line(&format!("MARKER {marker}"));
                    wait_for("the daemon to catch up", WAIT, || {
                        d.incidents().into_iter().find(|i| {
                            i["rule"] == "marker"
                                && i["key"]["n"] == serde_json::json!(marker.to_string())
                        })
                    });
                    writer.file.set_len(0).unwrap();
                }
                3 => {
                    if rng.below(2) == 0 {
                        d.kill();
                    } else {
                        d.stop();
                    }
                    d = s.start();
                }
                _ => {}
            }
        }
        verify_accounting(&d, keys, WAIT);
    }
}

#[test]
fn window_state_survives_a_restart() {
    let s = setup("[app.log]");
    let d = s.start();
    let mut w = Writer::open(&s.path("app.log"));
    for n in 0..3 {
        w.line(&format!("app[1]: event key=g1 n={n} x"));
    }
    w.line("MARKER 1");
    wait_for("the first three lines to be evaluated", WAIT, || {
        d.incidents().into_iter().find(|i| i["rule"] == "marker")
    });
    d.kill();
    let d = s.start();
    for n in 3..5 {
        w.line(&format!("app[1]: event key=g1 n={n} x"));
    }
    let incident = d.wait_incident("count5", WAIT);
    assert_eq!(incident["count"], 5);
    assert_eq!(
        incident["evidence"].as_array().unwrap().len(),
        5,
        "evidence from both runs"
    );
}

/// The `count5` incidents once the marker `marker` (written after the lines) is evaluated.
fn count5_after_marker(
    d: &Daemon,
    marker: u32,
) -> std::collections::BTreeMap<String, (u64, usize)> {
    wait_for("the last marker to be evaluated", WAIT, || {
        d.incidents().into_iter().find(|i| {
            i["rule"] == "marker" && i["key"]["n"] == serde_json::json!(marker.to_string())
        })
    });
    count5_incidents(d)
}

#[test]
fn sigkill_mid_window_opens_the_incidents_a_run_without_the_kill_opens() {
    // 60 keys reach the threshold (5 lines), 60 never do (4); the kill comes after half of
    // the lines, when many keys of both kinds are part-way through their window.
    let mut rng = Rng::new(21);
    let lines = accounting_lines(60, &mut rng);
    let (first, second) = lines.split_at(lines.len() / 2);
    let part_way = first
        .iter()
        .filter_map(|l| l.split("key=").nth(1)?.split(' ').next())
        .filter(|k| second.iter().any(|l| l.contains(&format!("key={k} "))))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(part_way > 30, "only {part_way} keys span the kill");
    let run = |kill: bool| {
        let s = setup("[app.log]");
        let mut d = s.start();
        let mut w = Writer::open(&s.path("app.log"));
        for line in first {
            w.line(line);
        }
        w.line("MARKER 1");
        count5_after_marker(&d, 1);
        if kill {
            d.kill();
            d = s.start();
        }
        for line in second {
            w.line(line);
        }
        w.line("MARKER 2");
        count5_after_marker(&d, 2)
    };
    let straight = run(false);
    assert_eq!(straight.len(), 60, "{straight:?}");
    assert!(straight.values().all(|c| *c == (5, 5)), "{straight:?}");
    assert_eq!(run(true), straight);
}

#[test]
fn a_deleted_file_is_drained_and_closed() {
    let s = setup("[app.log]");
    let d = s.start();
    let mut w = Writer::open(&s.path("app.log"));
    for n in 0..5 {
        w.line(&format!("app[1]: event key=g1 n={n} x"));
    }
    assert_eq!(d.wait_incident("count5", WAIT)["count"], 5);
    std::fs::remove_file(s.path("app.log")).unwrap();
    // Written after the unlink, through the still-open descriptor: still read.
    for n in 0..5 {
        w.line(&format!("app[1]: event key=g2 n={n} x"));
    }
    drop(w);
    wait_for("both incidents", WAIT, || {
        (d.incidents().len() == 2).then_some(())
    });
    let pid = d.child.id();
    wait_for(
        "the deleted file to be closed",
        Duration::from_secs(10),
        || {
            let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().contains("(deleted)"))
                });
            (!held).then_some(())
        },
    );
    let metrics = http("GET", s.port, "/metrics", None, None).unwrap().body;
    assert!(
        metrics.contains("logwarden_files_watched{source=\"app\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_new_file_under_a_watched_glob_is_read_within_a_second() {
    let s = setup("['logs/*.log']");
    std::fs::create_dir_all(s.path("logs")).unwrap();
    let d = s.start();
    let mut w = Writer::open(&s.path("logs/new.log"));
    let written = std::time::Instant::now();
    for n in 0..5 {
        w.line(&format!("app[1]: event key=g1 n={n} x"));
    }
    d.wait_incident("count5", Duration::from_secs(5));
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a new file took {took:?} to be read"
    );
}

#[test]
fn a_thousand_file_glob_is_read_fairly_with_bounded_descriptors() {
    let s = setup("['many/*.log']");
    std::fs::create_dir_all(s.path("many")).unwrap();
    let files = 1000;
    for i in 0..files {
        let lines: Vec<String> = (0..5)
            .map(|n| format!("app[1]: event key=g{i} n={n} x"))
            .collect();
        s.append(&format!("many/f{i:04}.log"), &lines);
    }
    // One busy file with a lot of other traffic must not starve the rest.
    let busy: Vec<String> = (0..200_000)
        .map(|n| format!("app[2]: busy line {n} with nothing to match here"))
        .collect();
    s.append("many/busy.log", &busy);
    let d = s.start();
    let pid = d.child.id();
    let mut max_fds = 0;
    let start = std::time::Instant::now();
    loop {
        max_fds = max_fds.max(open_fds(pid));
        let n = d.incidents().len();
        if n == files {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {n} of {files} incidents"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = http("GET", s.port, "/metrics", None, None).unwrap().body;
    let read: u64 = metrics
        .lines()
        .find(|l| l.starts_with("logwarden_lines_read_total{source=\"app\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        read < (files * 5 + busy.len()) as u64,
        "the small files waited for the busy one to be read to its end"
    );
    assert!(
        max_fds < 256 + 64,
        "{max_fds} descriptors open for {files} files"
    );
    assert!(metrics.contains(&format!(
        "logwarden_files_watched{{source=\"app\"}} {}",
        files + 1
    )));
}

#[test]
fn stdin_is_a_source() {
    let s = Setup::new();
    s.write("rules/r.yaml", ACCOUNTING_RULES);
    let config = s.config("sources:\n  - {name: app, paths: ['-']}\n");
    let mut child = KillOnDrop(
        std::process::Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(File::create(s.path("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    for n in 0..5 {
        writeln!(stdin, "app[1]: event key=g1 n={n} x").unwrap();
    }
    stdin.flush().unwrap();
    let incident = wait_for("the stdin incident", WAIT, || {
        let r = http("GET", s.port, "/api/v1/incidents", Some(&s.token), None).ok()?;
        r.json().as_array()?.first().cloned()
    });
    assert_eq!(incident["count"], 5);
    assert_eq!(incident["evidence"][0]["path"], "-");
    drop(stdin);
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(s.path("daemon.log")).unwrap()
    );
}
