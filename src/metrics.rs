//! Prometheus metrics: one registry, typed handles, names as the interface fixes them.
//!
//! Everything a scrape shows is registered here so the names live in one place and
//! `promtool check metrics` can lint the whole exposition at once.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for response-time KPIs: from seconds (automated detection) to days (slow closes).
const KPI_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0, 604800.0,
];

/// Buckets for notification delivery: from a fast webhook to a day of retries.
const DELIVERY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// Every metric the daemon exports on `/metrics`, in one registry; the components that
/// update them share one instance.
pub struct Metrics {
    registry: Registry,
    /// `logwarden_lines_read_total{source}`: lines every kind of source handed to detection.
    pub lines_read: IntCounterVec,
    /// `logwarden_bytes_read_total{source}`: bytes read from files (file sources only).
    pub bytes_read: IntCounterVec,
    /// Lines cut at `max_line_bytes`, by source.
    pub lines_truncated: IntCounterVec,
    /// Lines whose own time could not be read (arrival time used), by source.
    pub lines_without_time: IntCounterVec,
    /// Lines dated too far ahead of the wall clock (evaluated at arrival), by source.
    pub lines_future: IntCounterVec,
    /// Lines dated too far behind the wall clock (evaluated at arrival), by source.
    pub lines_ancient: IntCounterVec,
    /// Files that were rotated away (renamed or deleted) while tailed, by source.
    pub file_rotations: IntCounterVec,
    /// Files found shorter than the read offset (copytruncate), by source.
    pub file_truncations: IntCounterVec,
    /// Files currently tracked, by source.
    pub files_watched: IntGaugeVec,
    /// Seconds between the newest line time of a source's latest batch and its
    /// evaluation, by source.
    pub source_lag: GaugeVec,
    /// Times a journal source's saved position was gone (vacuumed or rotated away) and
    /// reading resumed at the next entry, by source.
    pub journal_gaps: IntCounterVec,
    /// Times a journal source's `journalctl` ended and was restarted, by source.
    pub journal_restarts: IntCounterVec,
    /// Syslog frames dropped, by source and reason (oversized, malformed, connection_refused).
    pub syslog_frames_dropped: IntCounterVec,
    /// Syslog TCP connections the daemon closed, by source and reason (idle, frame_timeout,
    /// frame_too_long).
    pub syslog_connections_closed: IntCounterVec,
    /// Syslog datagrams the kernel dropped because the UDP receive buffer was full, by source.
    pub syslog_udp_kernel_drops: IntCounterVec,
    /// Lines that matched a rule and were counted, by rule.
    pub rule_matches: IntCounterVec,
    /// Incidents opened, by rule and severity.
    pub incidents_opened: IntCounterVec,
    /// Incidents not yet closed, by severity and state.
    pub incidents_open: IntGaugeVec,
    /// First evidence line's time to incident opened, by severity.
    pub time_to_detect: HistogramVec,
    /// Opened to acknowledged, by severity.
    pub time_to_acknowledge: HistogramVec,
    /// Opened to contained, by severity.
    pub time_to_contain: HistogramVec,
    /// Opened to closed, by severity.
    pub time_to_resolve: HistogramVec,
    /// SLA outcomes (`met`, `missed`) of lifecycle stages as they are reached, by severity,
    /// stage and drill; only stages the config sets an SLA for.
    pub sla_outcomes: IntCounterVec,
    /// The SLAs `sla_outcomes` judges by (set by [`Metrics::preset`]).
    slas: std::sync::RwLock<crate::incidents::sla::Slas>,
    /// Notification outcomes (`delivered`, `retried`, `dead`), by receiver.
    pub notifications: IntCounterVec,
    /// Notifications in the outbox not yet delivered, by receiver.
    pub outbox_pending: IntGaugeVec,
    /// Notifications kept as dead letters, by receiver.
    pub dead_letters: IntGaugeVec,
    /// Seconds from a notification's creation to its delivery, by receiver.
    pub notification_latency: HistogramVec,
    /// `logwarden_rules_loaded`: rules in force, set at start and by every reload that
    /// swapped the rules.
    pub rules_loaded: IntGauge,
    /// Sequence number of the last audit chain head signed and published.
    pub audit_head_sequence: IntGauge,
    /// Rule reloads refused because a rule file was broken (the old rules kept running).
    pub rule_reload_failures: IntCounter,
    /// Keys dropped (fewest matches first) because a rule reached its `max_keys`, by rule.
    pub rule_keys_evicted: IntCounterVec,
    /// API calls refused (401 or 403), by status.
    pub api_refused: IntCounterVec,
    /// Store commits that failed (the batch is retried).
    pub store_errors: IntCounter,
    /// Bytes of keys and values the pipeline committed to the store.
    pub store_written: IntCounter,
    /// Bytes the store handed to the disk, by part (`engine`, `evidence`,
    /// `window_changes`, `window_snapshots`).
    pub store_part_written: IntCounterVec,
    /// Refreshes of values read from the system (kernel counters), run before each scrape.
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
    /// Containment action outcomes (`requested`, `applied`, `reapplied`, `released`,
    /// `refused`, `held`, `dry_run`, `error` per failed try, `failed`, `undo_failed`), by action.
    pub actions: IntCounterVec,
    /// Targets contained now, by action.
    pub contained_targets: IntGaugeVec,
}

/// Brings a metric up to date from outside the process just before a scrape, so values the
/// kernel keeps cost nothing between scrapes.
pub type ScrapeHook = Box<dyn Fn() + Send + Sync>;

impl Metrics {
    /// Registers every metric.
    ///
    /// Far over 100 lines on purpose: it is the one list of every series the daemon exports,
    /// each name with its help text and labels, read top to bottom like the `/metrics` page;
    /// split by area, a reader looking for a series would have to search several places.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let lines_read = counter("logwarden_lines_read_total", "Log lines read.", &["source"]);
        let actions = counter(
            "logwarden_actions_total",
            "Containment action outcomes, by action.",
            &["action", "outcome"],
        );
        let contained_targets = gauge(
            "logwarden_contained_targets",
            "Targets (addresses) contained now, by action.",
            &["action"],
        );
        let bytes_read = counter("logwarden_bytes_read_total", "Log bytes read.", &["source"]);
        let lines_truncated = counter(
            "logwarden_lines_truncated_total",
            "Log lines cut at max_line_bytes.",
            &["source"],
        );
        let lines_without_time = counter(
            "logwarden_lines_without_timestamp_total",
            "Log lines whose own time could not be read; arrival time was used.",
            &["source"],
        );
        let lines_future = counter(
            "logwarden_lines_future_total",
            "Log lines dated further ahead of the wall clock than line_time.max_ahead; evaluated at arrival.",
            &["source"],
        );
        let lines_ancient = counter(
            "logwarden_lines_ancient_total",
            "Log lines dated further behind the wall clock than line_time.max_behind; evaluated at arrival.",
            &["source"],
        );
        let file_rotations = counter(
            "logwarden_file_rotations_total",
            "Tailed files renamed or deleted away from their path.",
            &["source"],
        );
        let file_truncations = counter(
            "logwarden_file_truncations_total",
            "Tailed files found shorter than the read offset and re-read from the start.",
            &["source"],
        );
        let files_watched = gauge(
            "logwarden_files_watched",
            "Files currently tailed.",
            &["source"],
        );
        let source_lag = GaugeVec::new(
            Opts::new(
                "logwarden_source_lag_seconds",
                "Seconds from the newest line time in a source's latest batch to its evaluation.",
            ),
            &["source"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(source_lag.clone()))
            .expect("unique metric");
        let journal_gaps = counter(
            "logwarden_journal_gaps_total",
            "Journal positions found gone (vacuumed or rotated away); reading resumed at the next entry.",
            &["source"],
        );
        let journal_restarts = counter(
            "logwarden_journal_restarts_total",
            "Times a journal source's journalctl ended and was started again.",
            &["source"],
        );
        let syslog_frames_dropped = counter(
            "logwarden_syslog_frames_dropped_total",
            "Syslog frames dropped (oversized, malformed, connection refused).",
            &["source", "reason"],
        );
        let syslog_connections_closed = counter(
            "logwarden_syslog_connections_closed_total",
            "Syslog TCP connections closed by the daemon (idle, frame_timeout, frame_too_long).",
            &["source", "reason"],
        );
        let syslog_udp_kernel_drops = counter(
            "logwarden_syslog_udp_kernel_drops_total",
            "Syslog datagrams the kernel dropped because the UDP receive buffer was full.",
            &["source"],
        );
        let rule_matches = counter(
            "logwarden_rule_matches_total",
            "Lines that matched a rule and were counted.",
            &["rule"],
        );
        let incidents_opened = counter(
            "logwarden_incidents_opened_total",
            "Incidents opened.",
            &["rule", "severity"],
        );
        let incidents_open = gauge(
            "logwarden_incidents_open",
            "Incidents not yet closed.",
            &["severity", "state"],
        );
        // `drill` keeps exercises (`logwarden drill`) out of the real response figures.
        let kpi = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(KPI_BUCKETS.to_vec()),
                &["severity", "drill"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let time_to_detect = kpi(
            "logwarden_time_to_detect_seconds",
            "Seconds from an incident's first evidence line to its opening.",
        );
        let time_to_acknowledge = kpi(
            "logwarden_time_to_acknowledge_seconds",
            "Seconds from an incident's opening to its acknowledgement.",
        );
        let time_to_contain = kpi(
            "logwarden_time_to_contain_seconds",
            "Seconds from an incident's opening to its containment.",
        );
        let time_to_resolve = kpi(
            "logwarden_time_to_resolve_seconds",
            "Seconds from an incident's opening to its closing (false positives excluded).",
        );
        let sla_outcomes = counter(
            "logwarden_incident_sla_outcomes_total",
            "Lifecycle stages (acknowledge, contain, resolve) reached within (met) or after (missed) the SLA the config sets for the incident's severity.",
            &["severity", "stage", "outcome", "drill"],
        );
        let notifications = counter(
            "logwarden_notifications_total",
            "Notification outcomes: delivered, retried (an attempt failed, another follows), dead (given up, kept as a dead letter).",
            &["receiver", "outcome"],
        );
        let outbox_pending = gauge(
            "logwarden_outbox_pending",
            "Notifications in the outbox not yet delivered.",
            &["receiver"],
        );
        let dead_letters = gauge(
            "logwarden_notifications_dead_letters",
            "Notifications given up on and kept as dead letters until re-sent.",
            &["receiver"],
        );
        let notification_latency = HistogramVec::new(
            HistogramOpts::new(
                "logwarden_notification_delivery_seconds",
                "Seconds from a notification's creation to its delivery, retries included.",
            )
            .buckets(DELIVERY_BUCKETS.to_vec()),
            &["receiver"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(notification_latency.clone()))
            .expect("unique metric");
        let rules_loaded = IntGauge::new("logwarden_rules_loaded", "Rules currently loaded.")
            .expect("valid metric");
        registry
            .register(Box::new(rules_loaded.clone()))
            .expect("unique metric");
        let audit_head_sequence = IntGauge::new(
            "logwarden_audit_head_sequence",
            "Sequence number of the last audit chain head signed and published.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_head_sequence.clone()))
            .expect("unique metric");
        let rule_reload_failures = IntCounter::new(
            "logwarden_rule_reload_failures_total",
            "Rule reloads refused because a rule file was broken; the old rules kept running.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(rule_reload_failures.clone()))
            .expect("unique metric");
        let rule_keys_evicted = counter(
            "logwarden_rule_keys_evicted_total",
            "Keys dropped because a rule reached its max_keys: those with the fewest matches first, least recently used among equals.",
            &["rule"],
        );
        let api_refused = counter(
            "logwarden_api_refused_total",
            "API calls refused for a missing or unknown token (401) or too small a role (403).",
            &["status"],
        );
        let store_errors = IntCounter::new(
            "logwarden_store_errors_total",
            "Store commits that failed and were retried.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("unique metric");
        let store_written = IntCounter::new(
            "logwarden_store_written_bytes_total",
            "Bytes of keys and values the pipeline committed to its store (before the storage engine's own overhead).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_written.clone()))
            .expect("unique metric");
        let store_part_written = IntCounterVec::new(
            Opts::new(
                "logwarden_store_part_written_bytes_total",
                "Bytes the store handed to the disk, by part: keys and values applied by the storage engine, records appended to the evidence and window journals.",
            ),
            &["part"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_part_written.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new("logwarden_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            lines_read,
            bytes_read,
            lines_truncated,
            lines_without_time,
            lines_future,
            lines_ancient,
            file_rotations,
            file_truncations,
            files_watched,
            source_lag,
            journal_gaps,
            journal_restarts,
            syslog_frames_dropped,
            syslog_connections_closed,
            syslog_udp_kernel_drops,
            rule_matches,
            incidents_opened,
            incidents_open,
            time_to_detect,
            time_to_acknowledge,
            time_to_contain,
            time_to_resolve,
            sla_outcomes,
            slas: Default::default(),
            notifications,
            outbox_pending,
            dead_letters,
            notification_latency,
            rules_loaded,
            audit_head_sequence,
            rule_reload_failures,
            rule_keys_evicted,
            api_refused,
            store_errors,
            store_written,
            store_part_written,
            scrape_hooks: Default::default(),
            actions,
            contained_targets,
        }
    }

    /// Runs `hook` before every scrape from now on.
    pub fn before_scrape(&self, hook: ScrapeHook) {
        self.scrape_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Gives every documented series of this config and rule set its zero, so a dashboard
    /// shows 0 from the start instead of "no data" until the first event.
    pub fn preset(&self, config: &crate::config::Config, rules: &crate::rules::RuleSet) {
        for source in &config.sources {
            self.lines_read.with_label_values(&[&source.name]);
            if let Some(listen) = &source.syslog
                && listen.udp.is_some()
            {
                self.syslog_udp_kernel_drops
                    .with_label_values(&[&source.name]);
            }
        }
        for receiver in &config.receivers {
            for outcome in ["delivered", "retried", "dead"] {
                self.notifications
                    .with_label_values(&[receiver.name(), outcome]);
            }
            self.outbox_pending.with_label_values(&[receiver.name()]);
        }
        for severity in crate::rules::Severity::ALL {
            for drill in ["false", "true"] {
                for kpi in [
                    &self.time_to_detect,
                    &self.time_to_acknowledge,
                    &self.time_to_contain,
                    &self.time_to_resolve,
                ] {
                    kpi.with_label_values(&[severity.as_str(), drill]);
                }
            }
        }
        for (severity, stages) in &config.slas {
            for stage in crate::incidents::sla::Stage::ALL {
                if stage.limit(stages).is_none() {
                    continue;
                }
                for outcome in [
                    crate::incidents::sla::Outcome::Met,
                    crate::incidents::sla::Outcome::Missed,
                ] {
                    for drill in ["false", "true"] {
                        self.sla_outcomes.with_label_values(&[
                            severity.as_str(),
                            stage.as_str(),
                            outcome.as_str(),
                            drill,
                        ]);
                    }
                }
            }
        }
        *self.slas.write().unwrap_or_else(|e| e.into_inner()) = config.slas.clone();
        for action in &config.actions {
            for outcome in ["applied", "released", "refused", "failed"] {
                self.actions.with_label_values(&[&action.name, outcome]);
            }
            self.contained_targets.with_label_values(&[&action.name]);
        }
        self.preset_rules(rules);
    }

    /// The zero series of each rule: its matches, and its incidents at each severity it can
    /// open with (called again after a reload for the new rules).
    pub fn preset_rules(&self, rules: &crate::rules::RuleSet) {
        use crate::rules::SeveritySpec;
        for rule in &rules.rules {
            self.rule_matches.with_label_values(&[rule.id()]);
            let severities: Vec<crate::rules::Severity> = match &rule.def.severity {
                SeveritySpec::Fixed(s) => vec![*s],
                SeveritySpec::Tiers(tiers) => tiers.keys().copied().collect(),
            };
            for severity in severities {
                self.incidents_opened
                    .with_label_values(&[rule.id(), severity.as_str()]);
            }
        }
    }

    /// Counts whether a stage reached `seconds` after the incident opened met its SLA
    /// (nothing when the config sets none for it).
    pub fn sla_outcome(
        &self,
        severity: crate::rules::Severity,
        stage: crate::incidents::sla::Stage,
        seconds: f64,
        drill: bool,
    ) {
        let slas = self.slas.read().unwrap_or_else(|e| e.into_inner());
        let Some(limit) = slas.get(&severity).and_then(|s| stage.limit(s)) else {
            return;
        };
        let outcome = crate::incidents::sla::judge(limit, seconds);
        self.sla_outcomes
            .with_label_values(&[
                severity.as_str(),
                stage.as_str(),
                outcome.as_str(),
                if drill { "true" } else { "false" },
            ])
            .inc();
    }

    /// The text exposition for a scrape.
    pub fn render(&self) -> String {
        for hook in self
            .scrape_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hook();
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
