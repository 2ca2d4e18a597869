//! `logwarden check`: exit 0 with a summary, or exit 1 with one `path:line:col: message`
//! per problem — one test per class of problem.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const CONFIG: &str = "state_dir: state\nrules: [rules]\nsources:\n  - {name: auth, paths: [auth.log]}\nreceivers:\n  - {name: console, type: file, path: '-'}\nroles:\n  analysts: {receivers: [console]}\nescalation_policies:\n  default:\n    - notify: [analysts]\n";

const GOOD_RULE: &str = "  - id: good\n    match: 'sshd\\[\\d+\\]: Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: moderate\n";

/// Runs `check` on a config dir (with the log file its source reads, so no host warning);
/// returns exit code and stdout lines.
fn check(dir: &Path) -> (i32, Vec<String>) {
    if !dir.join("auth.log").exists() {
        std::fs::write(dir.join("auth.log"), "").unwrap();
    }
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(dir.join("logwarden.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code().unwrap(),
        stdout.lines().map(str::to_string).collect(),
    )
}

/// Writes the standard config plus `rules/a.yaml` = `rules:\n` + `rule_text`, runs check and
/// expects exactly one problem at `line:col` containing `message`.
fn expect_rule_error(rule_text: &str, line: usize, col: usize, message: &str) {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let rules = s.write("rules/a.yaml", &format!("rules:\n{rule_text}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines.len(), 1, "one line per problem: {lines:?}");
    let prefix = format!("{}:{line}:{col}: ", rules.display());
    assert!(
        lines[0].starts_with(&prefix),
        "want {prefix}…, got {}",
        lines[0]
    );
    assert!(
        lines[0].contains(message),
        "want {message:?} in {}",
        lines[0]
    );
}

#[test]
fn a_valid_config_prints_a_summary() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    s.write(
        "rules/b.yml",
        &format!("rules:\n{}", GOOD_RULE.replace("id: good", "id: good-two")),
    );
    let b = s.path("rules/b.yml");
    s.write("rules/ignored.txt", "not a rule file");
    // The two rules count the same lines under the same key: valid, but worth a warning.
    assert_eq!(
        check(s.dir.path()),
        (
            0,
            vec![
                format!(
                    "warning: {}:3:5: rule \"good-two\" has the same match and key as rule \"good\" ({}): both count the same lines",
                    b.display(),
                    s.path("rules/a.yaml").display()
                ),
                "ok: 2 rules in 2 files".to_string()
            ]
        )
    );
}

#[test]
fn the_shipped_config_and_rules_pass() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logwarden.yaml");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // Warnings about this host (log files, token variables) may come first.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.last().unwrap().starts_with("ok: "), "{stdout}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("warning: ")),
        "{stdout}"
    );
}

#[test]
fn unknown_rule_key() {
    let text = GOOD_RULE.replace(
        "    severity: moderate\n",
        "    severity: moderate\n    treshold: 5\n",
    );
    expect_rule_error(&text, 7, 5, "unknown field `treshold`");
}

#[test]
fn bad_regex_carries_the_regex_crates_message() {
    let text = GOOD_RULE.replace(
        "Failed password for (?P<user>",
        "Failed password for ((?P<user>",
    );
    // At the unclosed parenthesis inside the pattern.
    expect_rule_error(&text, 3, 46, "bad regex in match: unclosed group");
}

#[test]
fn group_by_naming_a_missing_capture() {
    let text = GOOD_RULE.replace("group_by: [ip]", "group_by: [src]");
    expect_rule_error(
        &text,
        4,
        5,
        "group_by names \"src\", which is not a named capture",
    );
}

#[test]
fn bad_duration() {
    let text = GOOD_RULE.replace("within: 1m", "within: 1 minute");
    expect_rule_error(&text, 5, 35, "unknown unit");
}

#[test]
fn unknown_source() {
    let text = GOOD_RULE.replace("    group_by", "    sources: [nginx]\n    group_by");
    expect_rule_error(&text, 4, 5, "unknown source \"nginx\"");
}

#[test]
fn unknown_escalation_policy() {
    let text = format!("{GOOD_RULE}    escalation: pager\n");
    expect_rule_error(&text, 7, 5, "unknown escalation policy \"pager\"");
}

#[test]
fn duplicate_rule_ids_across_files() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    let b = s.write("rules/b.yaml", &format!("rules:\n{GOOD_RULE}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{}:2:5: duplicate rule id \"good\"", b.display())),
        "{}",
        lines[0]
    );
}

#[test]
fn role_naming_an_unknown_receiver() {
    let s = Setup::new();
    let config = s.write(
        "logwarden.yaml",
        &CONFIG.replace("receivers: [console]", "receivers: [console, pagerduty]"),
    );
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        vec![format!(
            "{}:8:3: role \"analysts\" names unknown receiver \"pagerduty\"",
            config.display()
        )]
    );
}

#[test]
fn unknown_config_key_and_bad_yaml() {
    let s = Setup::new();
    let config = s.write(
        "logwarden.yaml",
        &CONFIG.replace("state_dir: state", "state_dir: state\nstate_dri: x"),
    );
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with(&format!(
            "{}:2:1: unknown field `state_dri`",
            config.display()
        )),
        "{}",
        lines[0]
    );

    s.write("logwarden.yaml", CONFIG);
    let rules = s.write(
        "rules/a.yaml",
        "rules:\n  - id: x\n    match: 'unterminated\n",
    );
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with(&format!("{}:", rules.display())),
        "{lines:?}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let text = format!(
        "rules:\n{}{}",
        GOOD_RULE
            .replace("id: good", "id: one")
            .replace("group_by: [ip]", "group_by: [nope]"),
        GOOD_RULE.replace("id: good", "id: Two")
    );
    let rules = s.write("rules/a.yaml", &text);
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        lines
            .iter()
            .map(|l| l.split(": ").next().unwrap().to_string())
            .collect::<Vec<_>>(),
        vec![
            format!("{}:4:5", rules.display()),
            format!("{}:7:5", rules.display())
        ]
    );
}

#[test]
fn a_rule_without_a_kind_block() {
    let text = GOOD_RULE.replace("    threshold: {count: 5, within: 1m}\n", "");
    expect_rule_error(&text, 2, 5, "needs exactly one kind block");
}

#[test]
fn two_kind_blocks_name_the_second() {
    let text = GOOD_RULE.replace(
        "    severity: moderate\n",
        "    severity: moderate\n    distinct: {field: user, count: 3, within: 1m}\n",
    );
    expect_rule_error(
        &text,
        7,
        5,
        "more than one kind block (threshold and distinct)",
    );
}

#[test]
fn every_kind_validates_its_block() {
    let kinds = [
        "spike: {window: 1m, baseline: 0, factor: 10, min_count: 20}",
        "absence: {within: 1h, count: 0}",
        "distinct: {field: nope, count: 3, within: 1m}",
        "sequence: {within: 1m, steps: []}",
    ];
    let messages = [
        "spike baseline must be between 1 and 1000",
        "absence count must be at least 1",
        "distinct field \"nope\" is not a named capture",
        "sequence needs at least one step",
    ];
    for (kind, message) in kinds.iter().zip(messages) {
        let mut text = GOOD_RULE.replace("threshold: {count: 5, within: 1m}", kind);
        if kind.starts_with("sequence") {
            text = text.replace("group_by: [ip]", "group_by: []").replace(
                "    match: 'sshd\\[\\d+\\]: Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n",
                "",
            );
            expect_rule_error(&text, 4, 5, message);
        } else {
            expect_rule_error(&text, 5, 5, message);
        }
    }
}

#[test]
fn a_sequence_with_a_top_level_match_and_a_step_without_the_key() {
    let text = "  - id: breach\n    match: 'x'\n    group_by: [ip]\n    sequence:\n      within: 10m\n      steps:\n        - {match: 'Failed password for \\S+ from (?P<ip>\\S+)', count: 5}\n        - {match: 'Accepted'}\n    severity: critical\n";
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let rules = s.write("rules/a.yaml", &format!("rules:\n{text}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    let p = rules.display();
    assert_eq!(
        lines,
        vec![
            format!("{p}:3:5: a sequence rule has no top-level match: each step has its own"),
            format!(
                "{p}:4:5: group_by names \"ip\", which is not a named capture of sequence step 2"
            ),
        ]
    );
}

#[test]
fn unknown_list_and_bad_cidr() {
    let text = format!("{GOOD_RULE}    allow: {{ip: ['@nope']}}\n");
    expect_rule_error(&text, 7, 5, "allow.ip: unknown list \"@nope\"");
    let text = format!("{GOOD_RULE}    only: {{ip: [10.0.0.0/40]}}\n");
    expect_rule_error(&text, 7, 5, "invalid prefix length");
}

/// Runs check on `rules/a.yaml` = `text` and returns (exit code, stdout lines, rule path).
fn check_rules(text: &str) -> (i32, Vec<String>, String) {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let rules = s.write("rules/a.yaml", text);
    let (code, lines) = check(s.dir.path());
    (code, lines, rules.display().to_string())
}

#[test]
fn warnings_for_rules_that_can_never_fire_and_unused_lists() {
    let text = format!(
        "lists:\n  admins: [root]\n  nobody: []\n  unused: [x]\nrules:\n{}{}{}",
        GOOD_RULE.replace("id: good", "id: excluded").replace(
            "    severity: moderate\n",
            "    severity: moderate\n    only: {ip: [10.1.0.0/16]}\n    allow: {ip: [10.0.0.0/8]}\n",
        ),
        GOOD_RULE
            .replace("id: good", "id: empty-only")
            .replace("group_by: [ip]", "group_by: [user]")
            .replace("    severity: moderate\n", "    severity: moderate\n    only: {ip: ['@nobody']}\n"),
        GOOD_RULE
            .replace("id: good", "id: one-value")
            .replace("(?P<ip>\\S+)'", "(?P<ip>\\S+) port'")
            .replace("threshold: {count: 5, within: 1m}", "distinct: {field: ip, count: 2, within: 1m}")
            .replace("    severity: moderate\n", "    severity: moderate\n    only: {ip: ['@admins']}\n"),
    );
    let (code, lines, p) = check_rules(&text);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines,
        vec![
            format!(
                "warning: {p}:11:5: rule \"excluded\" can never fire: every value only.ip admits is excluded by allow.ip"
            ),
            format!(
                "warning: {p}:18:5: rule \"empty-only\" can never fire: only.ip admits no value"
            ),
            format!(
                "warning: {p}:22:5: rule \"one-value\" can never fire: distinct counts \"ip\", which is also in group_by: each key has one value, never 2"
            ),
            format!(
                "warning: {p}:22:5: rule \"one-value\" can never fire: only.ip admits 1 value(s), fewer than distinct count 2"
            ),
            format!("warning: {p}:4:3: list \"unused\" is not used by any rule"),
            "ok: 3 rules in 1 files".to_string(),
        ]
    );
}

#[test]
fn check_format_json_reports_errors_and_warnings_for_tools() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    s.write(
        "rules/a.yaml",
        &format!("lists:\n  unused: [x]\nrules:\n{GOOD_RULE}"),
    );
    let run = |s: &Setup| {
        let out = Command::new(bin())
            .args(["check", "--format", "json", "--config"])
            .arg(s.path("logwarden.yaml"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code().unwrap(), v)
    };
    let (code, v) = run(&s);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(
        (v["rules"].as_u64(), v["files"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["warnings"][0]["line"], 2);
    assert_eq!(v["warnings"][0]["col"], 3);
    assert_eq!(
        v["warnings"][0]["message"],
        "list \"unused\" is not used by any rule"
    );

    s.write(
        "rules/a.yaml",
        &format!("rules:\n{}", GOOD_RULE.replace("within: 1m", "within: 1x")),
    );
    let (code, v) = run(&s);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert!(v["rules"].is_null());
    assert_eq!(v["errors"][0]["line"], 5);
    assert!(
        v["errors"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("rules/a.yaml")
    );
}

#[test]
fn the_shipped_example_of_every_kind_passes() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let s = Setup::new();
    s.write(
        "logwarden.yaml",
        &CONFIG
            .replace("rules: [rules]", &format!("rules: [{}]", rules.display()))
            .replace(
                "  - {name: auth, paths: [auth.log]}",
                "  - {name: auth, paths: [auth.log]}\n  - {name: web, paths: [web.log]}",
            ),
    );
    s.write("web.log", "");
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 0, "{lines:?}");
    assert!(lines.iter().all(|l| !l.starts_with("warning")), "{lines:?}");
}

/// Writes a config whose receivers are `receivers` (YAML list items) plus a good rule, runs
/// check and returns its output lines (exit code 1 asserted).
fn check_receivers(receivers: &str) -> (std::path::PathBuf, Vec<String>) {
    let s = Setup::new();
    let config = s.write(
        "logwarden.yaml",
        &CONFIG.replace(
            "receivers:\n  - {name: console, type: file, path: '-'}\n",
            &format!("receivers:\n  - {{name: console, type: file, path: '-'}}\n{receivers}"),
        ),
    );
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1, "{lines:?}");
    (config, lines)
}

#[test]
fn receiver_problems_are_reported_at_their_place() {
    let (config, lines) = check_receivers(
        "  - name: pd\n    type: webhook\n    url: http://127.0.0.1:1/\n    format: pagerduty\n    events: [opened, updated]\n\
         \x20 - name: tpl\n    type: webhook\n    url: http://127.0.0.1:1/\n    template: |\n      {\"a\": {{ incident.id }},\n       \"b\": {{ incident.id }\n      }\n\
         \x20 - name: retry\n    type: webhook\n    url: http://127.0.0.1:1/\n    retry: {initial: 10m, max: 1m}\n",
    );
    let p = config.display();
    let want = [
        format!(
            "{p}:10:5: receiver \"pd\": format pagerduty needs exactly one of routing_key_file or routing_key_env"
        ),
        format!("{p}:11:5: receiver \"pd\": `updated` is not a notification event"),
        format!("{p}:17:8: receiver \"tpl\": template: syntax error"),
        format!("{p}:22:5: receiver \"retry\": retry.initial (10m) is longer than retry.max (1m)"),
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for w in want {
        assert!(
            lines.iter().any(|l| l.starts_with(&w)),
            "want {w}… in {lines:#?}"
        );
    }
}

#[test]
fn a_misspelled_receiver_key_or_bad_rate_limit_is_an_error_at_the_key() {
    let (config, lines) = check_receivers(
        "  - name: hook\n    type: webhook\n    url: http://127.0.0.1:1/\n    secret_fiel: s\n",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    let want = format!("{}:10:5: ", config.display());
    assert!(
        lines[0].starts_with(&want) && lines[0].contains("unknown field `secret_fiel`"),
        "{lines:?}"
    );
    let (_, lines) = check_receivers(
        "  - {name: hook, type: webhook, url: 'http://127.0.0.1:1/', rate_limit: 120/day}\n",
    );
    assert!(
        lines[0].contains("rate_limit \"120/day\" must be N/s, N/m or N/h"),
        "{lines:?}"
    );
}

/// `logwarden` is the built-in source of detections: rules may name it under any config,
/// and a config source cannot take the name.
#[test]
fn the_detection_source_is_known_to_rules_and_reserved_in_configs() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    s.write(
        "rules/a.yaml",
        "rules:\n  - id: again\n    sources: [logwarden]\n    match: '^incident rule=good key=\\{\"ip\":\"(?P<ip>[^\"]*)\"\\}$'\n    group_by: [ip]\n    threshold: {count: 3, within: 24h}\n    severity: critical\n",
    );
    let (code, lines) = check(s.dir.path());
    assert_eq!(
        (code, lines.last().cloned()),
        (0, Some("ok: 1 rules in 1 files".into())),
        "{lines:?}"
    );
    s.write(
        "logwarden.yaml",
        &CONFIG.replace("{name: auth,", "{name: logwarden,"),
    );
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("source name \"logwarden\" is reserved")),
        "{lines:?}"
    );
}

/// Runs `check` with `--format` and returns (exit code, stdout, stderr).
fn check_raw(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(dir.join("logwarden.yaml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_planted_mistake_is_reported_in_one_run_at_its_place() {
    let s = Setup::new();
    let config = s.write(
        "logwarden.yaml",
        &CONFIG
            .replace("state_dir: state", "state_dir: state\nlisen: 127.0.0.1:9733")
            .replace(
                "  - {name: auth, paths: [auth.log]}",
                "  - {name: auth, paths: [auth.log]}\n  - name: net\n    syslgo: {udp: 127.0.0.1:5514}",
            ),
    );
    let rules = s.write(
        "rules/a.yaml",
        concat!(
            "rules:\n",
            "  - id: one\n",
            "    match: 'from (?P<ip>\\S+'\n",
            "    group_by: [ip]\n",
            "    treshold: {count: 5, within: 1m}\n",
            "    severity: hihg\n",
            "  - id: two\n",
            "    match: 'from (?P<ip>\\S+)'\n",
            "    group_by: [src]\n",
            "    threshold: {count: 5, within: 1 minute}\n",
            "    severity: moderate\n",
            "    summary: '{{ count }} from {{ addr }}'\n",
        ),
    );
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1, "{lines:?}");
    let c = config.display();
    let r = rules.display();
    let want = [
        format!("{c}:2:1: unknown field `lisen`; did you mean `listen`?"),
        format!("{c}:7:5: unknown field `syslgo`; did you mean `syslog`?"),
        format!("{r}:5:5: unknown field `treshold`; did you mean `threshold`?"),
        format!("{r}:6:15: unknown variant `hihg`; did you mean `high`?"),
        // At the unclosed parenthesis, inside the pattern.
        format!("{r}:3:18: bad regex in match: unclosed group"),
        format!("{r}:10:35: duration \"1 minute\" has unknown unit"),
        format!("{r}:9:5: group_by names \"src\", which is not a named capture of match"),
        format!("{r}:12:5: summary uses `addr`, which the rule does not capture"),
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "want {want}…\n got {line}");
    }
    // The same findings for tools.
    let (code, json, _) = check_raw(s.dir.path(), &["--format", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"].as_array().unwrap().len(), want.len());
    assert_eq!(report["errors"][3]["line"], 6);
    assert_eq!(report["errors"][3]["col"], 15);
}

#[test]
fn a_rule_file_that_defines_nothing_is_an_error() {
    for text in [
        "",
        "# all rules moved elsewhere\n",
        "rules:\n",
        "rules: []\nlists: {}\n",
    ] {
        let s = Setup::new();
        s.write("logwarden.yaml", CONFIG);
        s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
        let empty = s.write("rules/b.yaml", text);
        let (code, lines) = check(s.dir.path());
        assert_eq!(code, 1, "{text:?}: {lines:?}");
        assert_eq!(
            lines,
            [format!(
                "{}:1:1: defines no rules; delete the file to remove its rules",
                empty.display()
            )],
            "{text:?}"
        );
    }
}

#[test]
fn bytes_that_are_not_yaml_text_are_placed_exactly() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let path = s.write("rules/a.yaml", "");
    let mut bytes = format!("rules:\n{GOOD_RULE}").into_bytes();
    // Line 3 is `    match: 'sshd…`: an invalid byte as its 14th character.
    let at = bytes.iter().position(|&b| b == b'\'').unwrap() + 2;
    bytes[at] = 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with(&format!("{}:3:14: invalid UTF-8", path.display())),
        "{lines:?}"
    );
    bytes[at] = 0x1b;
    std::fs::write(&path, &bytes).unwrap();
    let (_, lines) = check(s.dir.path());
    assert!(
        lines[0].starts_with(&format!(
            "{}:3:14: control character U+001B",
            path.display()
        )),
        "{lines:?}"
    );
}

/// Peak RSS of the children this process has waited for, in KiB (Linux reports KiB).
fn children_max_rss_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

#[test]
fn deep_nesting_and_huge_patterns_are_refused_before_the_expensive_step() {
    let s = Setup::new();
    s.write("logwarden.yaml", CONFIG);
    let deep = s.write(
        "rules/a.yaml",
        &format!("rules:\n  - id: x\n    labels: {}\n", "[".repeat(100_000)),
    );
    let started = std::time::Instant::now();
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with(&format!("{}:3:", deep.display())) && lines[0].contains("nesting"),
        "{lines:?}"
    );
    // Loose: the quadratic path took ~50 s; a linear refusal takes milliseconds.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // A 3 MB pattern (inside the file-size bound) is refused without compiling it.
    let big = s.write(
        "rules/a.yaml",
        &format!(
            "rules:\n  - id: x\n    match: '{}'\n    threshold: {{count: 1, within: 1m}}\n    severity: low\n",
            "(a|b)".repeat(600_000)
        ),
    );
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with(&format!(
            "{}:3:12: bad regex in match: pattern is 3000000 bytes",
            big.display()
        )),
        "{lines:?}"
    );
    // The refusal must not cost the ~1 GB compiling it would (the bound is loose).
    let rss_mib = children_max_rss_kib() / 1024;
    assert!(rss_mib < 400, "check used {rss_mib} MiB");
}

#[test]
fn warnings_name_log_paths_and_secret_files_missing_on_this_host() {
    let s = Setup::new();
    let config = s.write(
        "logwarden.yaml",
        &CONFIG
            .replace("paths: [auth.log]", "paths: [missing.log, 'logs/*.log']")
            .replace(
                "state_dir: state",
                "state_dir: state\napi:\n  tokens:\n    - {name: admin, role: admin, token_file: tokens/admin}",
            ),
    );
    s.write("rules/a.yaml", &format!("rules:\n{GOOD_RULE}"));
    let (code, stdout, _) = check_raw(s.dir.path(), &[]);
    assert_eq!(code, 0, "{stdout}");
    let c = config.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "warning: {c}:7:26: source \"auth\": no file matches"
        )),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "warning: {c}:7:39: source \"auth\": no file matches"
        )),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(&format!("warning: {c}:4:46: token \"admin\": cannot read")),
        "{stdout}"
    );
    assert_eq!(lines[3], "ok: 1 rules in 1 files");
}

#[test]
fn containment_actions_and_never_contain_lists_are_checked_at_their_place() {
    let s = Setup::new();
    let config = format!(
        "{CONFIG}      contain: [ban-ip, nuke]\nactions:\n  - {{name: ban-ip, type: nftables, duration: 1h}}\nnever_contain: ['@trusted-nets', '@office']\n"
    );
    s.write("logwarden.yaml", &config);
    s.write(
        "rules/a.yaml",
        &format!("lists:\n  trusted-nets: [192.0.2.0/24]\nrules:\n{GOOD_RULE}    allow:\n      ip: ['@trusted-nets']\n"),
    );
    let path = s.path("logwarden.yaml");
    let (code, lines) = check(s.dir.path());
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines.contains(&format!(
            "{}:12:7: escalation policy \"default\" names unknown action \"nuke\"",
            path.display()
        )),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{}:15:1: never_contain names unknown list \"@office\"",
            path.display()
        ))),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("@trusted-nets")),
        "{lines:?}"
    );
}
