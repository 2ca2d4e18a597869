//! The worker that carries out containment effects, outside the pipeline thread: a slow or
//! failing firewall never holds up detection. Each effect is tried with backoff; the final
//! result goes back to the pipeline as an [`Outcome`], which records it.
//!
//! nftables operations are written to be idempotent, so an effect repeated after a crash
//! (its outcome was never recorded) leaves the same state: applying adds the element, deletes
//! it and adds it again with the timeout in one transaction (no "exists" error, a fresh
//! timeout); lifting adds it without a timeout and deletes it (no "not found" error).

use super::{Containment, Effect, Op, Outcome};
use crate::config::{ActionConfig, ActionKind, Config};
use crate::metrics::Metrics;
use chrono::Utc;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Tries per effect before it is recorded as failed.
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest an `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends effects to the worker.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::UnboundedSender<Effect>,
}

impl Worker {
    /// Hands an effect over (its record is durable); never blocks.
    pub fn send(&self, effect: Effect) {
        if self.tx.send(effect).is_err() {
            tracing::warn!("containment worker stopped; the effect resumes at the next start");
        }
    }
}

/// The nftables ruleset an action needs: its table, sets and drop rule, created (again)
/// idempotently. `flush chain` makes a restart with the same settings leave one rule pair.
pub fn setup_script(action: &ActionConfig) -> String {
    let (t, hook, prio) = (&action.table, action.hook.as_str(), action.priority);
    format!(
        "add table inet {t}\n\
         add set inet {t} ban4 {{ type ipv4_addr; flags timeout; }}\n\
         add set inet {t} ban6 {{ type ipv6_addr; flags timeout; }}\n\
         add chain inet {t} {hook} {{ type filter hook {hook} priority {prio}; policy accept; }}\n\
         flush chain inet {t} {hook}\n\
         add rule inet {t} {hook} ip saddr @ban4 drop\n\
         add rule inet {t} {hook} ip6 saddr @ban6 drop\n"
    )
}

/// The set an address goes into.
fn set_of(ip: IpAddr) -> &'static str {
    match ip.to_canonical() {
        IpAddr::V4(_) => "ban4",
        IpAddr::V6(_) => "ban6",
    }
}

/// The nft script that applies (for `secs`) or lifts a ban, idempotently.
pub fn ban_script(table: &str, ip: IpAddr, op: Op, secs: u64) -> String {
    let ip = ip.to_canonical();
    let set = set_of(ip);
    let element = format!("inet {table} {set} {{ {ip} }}");
    match op {
        Op::Apply => format!(
            "add element {element}\ndelete element {element}\nadd element inet {table} {set} {{ {ip} timeout {secs}s }}\n"
        ),
        Op::Undo => format!("add element {element}\ndelete element {element}\n"),
    }
}

/// Starts the worker on the current runtime: sets up the nftables tables (unless
/// `dry_run`), then carries out effects as they come, reporting outcomes.
pub fn spawn(
    config: &Config,
    outcomes: mpsc::UnboundedSender<Outcome>,
    metrics: Arc<Metrics>,
) -> Worker {
    let (tx, mut rx) = mpsc::unbounded_channel::<Effect>();
    let actions: Arc<HashMap<String, ActionConfig>> = Arc::new(
        config
            .actions
            .iter()
            .map(|a| (a.name.clone(), a.clone()))
            .collect(),
    );
    let dry_run = config.dry_run;
    tokio::spawn(async move {
        if !dry_run {
            set_up(&actions).await;
        }
        // Effects on the same containment run in the order decided (a release decided while
        // the ban is still being applied must not overtake it): each waits for the one
        // before it. Effects on different containments run side by side.
        let mut last: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        while let Some(effect) = rx.recv().await {
            if last.len() > 1024 {
                last.retain(|_, task| !task.is_finished());
            }
            let key = effect.containment.key();
            let before = last.remove(&key);
            let (actions, outcomes, metrics) = (actions.clone(), outcomes.clone(), metrics.clone());
            let task = tokio::spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                let outcome = carry_out(&actions, &effect, &metrics).await;
                let _ = outcomes.send(outcome);
            });
            last.insert(key, task);
        }
    });
    Worker { tx }
}

/// Creates each distinct nftables table once; a failure is logged (each ban then retries
/// the setup before it gives up).
async fn set_up(actions: &HashMap<String, ActionConfig>) {
    let mut done = BTreeSet::new();
    for a in actions.values().filter(|a| a.kind == ActionKind::Nftables) {
        if done.insert((a.table.clone(), a.hook.as_str())) {
            match nft(&setup_script(a)).await {
                Ok(()) => {
                    tracing::info!(table = %a.table, hook = a.hook.as_str(), priority = a.priority, "nftables ban sets ready")
                }
                Err(e) => tracing::error!(table = %a.table, error = %e, "cannot set up nftables"),
            }
        }
    }
}

/// Why a containment action failed. It travels to the pipeline in an [`Outcome`] and is
/// kept, as text, as the containment's `reason`; it holds text rather than the I/O error
/// itself so an outcome can be cloned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("no such action")]
    NoSuchAction,
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("{0}")]
    Template(String),
    #[error("cannot render {arg:?}: {reason}")]
    Render { arg: String, reason: String },
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program}: {reason}")]
    Io { program: String, reason: String },
    #[error("{program} exited with status {code}: {stderr}")]
    Exit {
        program: String,
        code: i32,
        stderr: String,
    },
    #[error("nft did not finish in time")]
    NftTimeout,
    #[error("nft failed: {0}")]
    Nft(String),
}

/// Tries an effect with backoff; each failed try is counted.
async fn carry_out(
    actions: &HashMap<String, ActionConfig>,
    effect: &Effect,
    metrics: &Metrics,
) -> Outcome {
    let c = &effect.containment;
    let mut backoff = FIRST_BACKOFF;
    let mut result = Err(ActionError::NoSuchAction);
    if let Some(holder) = &effect.still_held_by {
        tracing::info!(action = %c.action, target = %c.target, %holder, "target stays contained for another incident");
        result = Ok(0);
    } else if let Some(action) = actions.get(&c.action) {
        for attempt in 1..=ATTEMPTS {
            result = once(action, c, effect.op).await;
            match &result {
                Ok(_) => break,
                Err(e) => {
                    metrics
                        .actions
                        .with_label_values(&[&c.action, "error"])
                        .inc();
                    tracing::warn!(action = %c.action, target = %c.target, attempt, error = %e, "containment action failed");
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    withhold_for_tests().await;
    Outcome {
        key: c.key(),
        op: effect.op,
        result,
        at: Utc::now(),
    }
}

/// Test-only fault injection: with `LOGWARDEN_TEST_WITHHOLD_OUTCOMES=1` in the environment of
/// a debug build, the worker acts but never reports, as if killed between acting and
/// recording; the suite proves the next start records the containment exactly once.
#[cfg(debug_assertions)]
async fn withhold_for_tests() {
    if std::env::var("LOGWARDEN_TEST_WITHHOLD_OUTCOMES").is_ok_and(|v| v == "1") {
        std::future::pending::<()>().await;
    }
}

/// Release builds: no fault injection.
#[cfg(not(debug_assertions))]
async fn withhold_for_tests() {}

/// One try: the exit status, or why it failed.
async fn once(action: &ActionConfig, c: &Containment, op: Op) -> Result<i32, ActionError> {
    match action.kind {
        ActionKind::Nftables => {
            let ip: IpAddr = c
                .target
                .parse()
                .map_err(|_| ActionError::NotAnAddress(c.target.clone()))?;
            let secs = c.remaining_secs(Utc::now());
            let script = ban_script(&action.table, ip, op, secs);
            match nft(&script).await {
                Ok(()) => Ok(0),
                // The table may be gone (flushed ruleset, reboot): set it up and try again.
                Err(_) => {
                    nft(&setup_script(action)).await?;
                    nft(&script).await.map(|()| 0)
                }
            }
        }
        ActionKind::Command => {
            let argv = match op {
                Op::Apply => &action.argv,
                Op::Undo if action.undo.is_empty() => return Ok(0),
                Op::Undo => &action.undo,
            };
            let argv = render(argv, c)?;
            run(&argv, &action.env, action.timeout.0).await
        }
    }
}

/// Renders each argument from the containment and its incident (no shell ever sees them).
pub fn render(argv: &[String], c: &Containment) -> Result<Vec<String>, ActionError> {
    let context = serde_json::json!({
        "incident": {"id": c.incident, "rule": c.rule, "key": c.key_fields},
        "key": c.key_fields,
        "target": c.target,
        "action": c.action,
        "duration": c.duration_secs,
    });
    argv.iter()
        .map(|arg| {
            let env = crate::config::compile_template(arg)
                .map_err(|e| ActionError::Template(e.to_string()))?;
            env.get_template("arg")
                .and_then(|t| t.render(&context))
                .map_err(|e| ActionError::Render {
                    arg: arg.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Runs a program without a shell, with only `env` and `PATH`, killed after `timeout`.
async fn run(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<i32, ActionError> {
    let (program, args) = argv.split_first().ok_or(ActionError::EmptyArgv)?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| ActionError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| ActionError::Timeout {
            program: program.clone(),
            timeout,
        })?
        .map_err(|e| ActionError::Io {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    let code = output.status.code().unwrap_or(-1);
    if output.status.success() {
        Ok(code)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(ActionError::Exit {
            program: program.clone(),
            code,
            stderr: stderr.trim().chars().take(300).collect(),
        })
    }
}

/// An I/O error talking to nft.
fn nft_io(e: &std::io::Error) -> ActionError {
    ActionError::Io {
        program: "nft".into(),
        reason: e.to_string(),
    }
}

/// Runs an nft script (`nft -f -`).
async fn nft(script: &str) -> Result<(), ActionError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ActionError::Spawn {
            program: "nft".into(),
            reason: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| nft_io(&e))?;
    }
    let output = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ActionError::NftTimeout)?
        .map_err(|e| nft_io(&e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ActionError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::containment::Status;
    use std::path::Path;

    fn command_action(argv: &str, undo: &str) -> ActionConfig {
        let text = format!(
            "state_dir: s\nactions:\n  - {{name: run, type: command, argv: {argv}, undo: {undo}, timeout: 5s}}\n"
        );
        Config::parse(Path::new("/c.yaml"), &text).unwrap().actions[0].clone()
    }

    fn containment(target: &str) -> Containment {
        Containment {
            incident: "INC-3".into(),
            rule: "ssh-bruteforce".into(),
            key_fields: [("ip".to_string(), target.to_string())].into(),
            action: "run".into(),
            target: target.into(),
            duration_secs: 60,
            status: Status::Pending,
            allowed_by: "logwarden".into(),
            requested_at: Utc::now(),
            applied_at: None,
            until: None,
            released_at: None,
            released_by: None,
            reason: None,
            exit_status: None,
        }
    }

    /// A command action runs its argv rendered from the incident, without a shell (a
    /// target full of shell syntax stays one argument), and its undo at the end.
    #[tokio::test]
    async fn a_command_runs_rendered_without_a_shell_and_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let action = command_action(
            &format!("[touch, '{d}/{{{{ key.ip }}}}-{{{{ incident.id }}}}']"),
            &format!("[rm, '{d}/{{{{ target }}}}-{{{{ incident.id }}}}']"),
        );
        let tricky = "198.51.100.7; touch pwned";
        let c = containment(tricky);
        assert_eq!(once(&action, &c, Op::Apply).await, Ok(0));
        let made = dir.path().join(format!("{tricky}-INC-3"));
        assert!(made.exists());
        assert!(!dir.path().join("pwned").exists());
        assert_eq!(once(&action, &c, Op::Undo).await, Ok(0));
        assert!(!made.exists());
    }

    /// A failing command is tried again with backoff, each try counted, and reported as
    /// failed with its exit status.
    #[tokio::test]
    async fn a_failing_action_is_retried_counted_and_reported() {
        let action = command_action("[sh, -c, 'echo nope >&2; exit 3']", "[]");
        let metrics = Metrics::new();
        let actions = HashMap::from([("run".to_string(), action)]);
        let effect = Effect {
            op: Op::Apply,
            containment: containment("198.51.100.7"),
            still_held_by: None,
        };
        let outcome = carry_out(&actions, &effect, &metrics).await;
        let why = outcome.result.unwrap_err().to_string();
        assert!(why.contains("status 3") && why.contains("nope"), "{why}");
        assert_eq!(
            metrics.actions.with_label_values(&["run", "error"]).get(),
            u64::from(ATTEMPTS)
        );
    }

    #[test]
    fn ban_scripts_pick_the_set_by_family_and_are_idempotent_transactions() {
        let v4 = ban_script("lw", "198.51.100.7".parse().unwrap(), Op::Apply, 3);
        assert_eq!(
            v4,
            "add element inet lw ban4 { 198.51.100.7 }\ndelete element inet lw ban4 { 198.51.100.7 }\nadd element inet lw ban4 { 198.51.100.7 timeout 3s }\n"
        );
        let mapped = ban_script("lw", "::ffff:198.51.100.7".parse().unwrap(), Op::Undo, 3);
        assert!(mapped.contains("ban4 { 198.51.100.7 }"), "{mapped}");
        let v6 = ban_script("lw", "2001:db8::7".parse().unwrap(), Op::Undo, 3);
        assert_eq!(
            v6,
            "add element inet lw ban6 { 2001:db8::7 }\ndelete element inet lw ban6 { 2001:db8::7 }\n"
        );
    }
}
