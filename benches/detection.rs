//! Criterion benchmark of the detector: lines per second over a realistic auth log for rule
//! sets of 10, 100 and 500 rules. Report ratios between sizes (and `bench/run.sh` against
//! `grep -c`), not absolute figures: machines differ.

#[path = "../bench/support.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use logwarden::detection::Detector;
use logwarden::rules::{RuleContext, RuleSet};
use logwarden::sources::LogLine;
use logwarden::sources::timestamp::TimestampFormat;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

const LINES: u64 = 20_000;

fn detection(c: &mut Criterion) {
    let mut rng = support::Rng::new(7);
    let arrival = chrono::Utc::now();
    let source: Arc<str> = "auth".into();
    let path: Arc<str> = "auth.log".into();
    let lines: Vec<LogLine> = (0..LINES)
        .map(|i| LogLine {
            source: source.clone(),
            path: path.clone(),
            offset: i * 100,
            bytes: support::auth_line(i, &mut rng).into_bytes(),
            arrival,
            time: None,
        })
        .collect();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Elements(LINES));
    group.sample_size(10);
    for total in [10, 100, 500] {
        let dir = tempfile::tempdir().unwrap();
        support::write_rules(&shipped, dir.path(), total).unwrap();
        let set =
            Arc::new(RuleSet::load(&[dir.path().to_path_buf()], &RuleContext::default()).unwrap());
        group.bench_function(format!("{total}_rules"), |b| {
            b.iter(|| {
                let mut detector = Detector::new(set.clone(), &["auth".to_string()]);
                let mut hits = Vec::new();
                for line in &lines {
                    let time = TimestampFormat::Syslog
                        .parse(&line.bytes, arrival)
                        .unwrap_or(arrival);
                    detector.observe(line, time, &mut hits);
                    hits.clear();
                }
                black_box(detector.live_keys())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, detection);
criterion_main!(benches);
