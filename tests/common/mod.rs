//! Test harness: the real binary, real files, real HTTP on 127.0.0.1, real signals.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_logwarden")
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a test that needs an external peer must fail instead of skipping.
pub fn peers_required() -> bool {
    std::env::var("LOGWARDEN_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Finds an external program; skips loudly (or fails under LOGWARDEN_REQUIRE_PEERS=1).
pub fn peer(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !peers_required(),
            "{program} (Debian package {package}) is required: LOGWARDEN_REQUIRE_PEERS=1"
        );
        eprintln!(
            "\n!!! SKIPPED: {program} not installed (apt-get install {package}); set LOGWARDEN_REQUIRE_PEERS=1 to make this a failure\n"
        );
    }
    found
}

/// The stdout of a command that must have succeeded; else fails with its exit code and
/// both outputs.
pub fn stdout_of_success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command with `input` on its stdin and collects its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A child process killed when the test ends, pass or fail: no daemon outlives its test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lints a metrics exposition with `promtool check metrics` (Debian package `prometheus`);
/// skips loudly when promtool is missing, fails under LOGWARDEN_REQUIRE_PEERS=1.
pub fn assert_promtool_clean(exposition: &str) {
    let Some(promtool) = peer("promtool", "prometheus") else {
        return;
    };
    let out = run_with_stdin(
        Command::new(promtool).args(["check", "metrics"]),
        exposition.as_bytes(),
    );
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Generous: a loaded CI machine is slow, and a hung daemon still fails the test.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Response { status, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    /// The body exactly as sent (signatures are over these bytes).
    pub raw: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
    /// When the request arrived (timing assertions judge arrivals, not when a busy test
    /// thread got round to looking).
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Received {
    /// A header's value (names are compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a [`Receiver`] answers: the status, and how long it waits before answering.
#[derive(Clone)]
struct Behaviour {
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

/// A real webhook receiver on 127.0.0.1, answering 200 to every POST unless told otherwise.
pub struct Receiver {
    pub port: u16,
    rx: mpsc::Receiver<Received>,
    behaviour: Behaviour,
}

impl Receiver {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Listens on a given port (0: any), e.g. one a daemon has been failing to reach.
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let behaviour = Behaviour {
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let b = behaviour.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (tx, b) = (tx.clone(), b.clone());
                std::thread::spawn(move || serve_one(stream, tx, b));
            }
        });
        Receiver {
            port,
            rx,
            behaviour,
        }
    }

    /// Answers every later request with `status`.
    pub fn answer(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Waits this long before answering each later request (a slow receiver).
    pub fn delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Next request, within `limit`.
    pub fn next(&self, limit: Duration) -> Option<Received> {
        self.rx.recv_timeout(limit).ok()
    }

    /// Everything received so far.
    pub fn drain(&self) -> Vec<Received> {
        self.rx.try_iter().collect()
    }
}

fn serve_one(stream: TcpStream, tx: mpsc::Sender<Received>, behaviour: Behaviour) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
                headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut raw = vec![0; length];
        if reader.read_exact(&mut raw).is_err() {
            return;
        }
        let delay = behaviour.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let status = behaviour.status.load(Ordering::SeqCst);
        let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
        let _ = tx.send(Received {
            path,
            headers,
            body,
            raw,
            status,
            at: chrono::Utc::now(),
        });
        let reply = format!("HTTP/1.1 {status} Status\r\nContent-Length: 0\r\n\r\n");
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A temp directory holding a config, rules and log files for one daemon.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub token: String,
}

impl Setup {
    pub fn new() -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        // LOGWARDEN_TEST_KEEP=1 keeps each test's directory (config, logs, daemon logs, state)
        // for inspection after a failure.
        if std::env::var("LOGWARDEN_TEST_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        Setup {
            dir,
            port: free_port(),
            token: "test-token-0123456789".to_string(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `logwarden.yaml` with the given sources/receivers/roles/policies sections
    /// (YAML text) plus the common parts.
    pub fn config(&self, body: &str) -> PathBuf {
        self.write("token", &self.token);
        let text = format!(
            "state_dir: state\nrules: [rules]\nlisten: 127.0.0.1:{}\napi:\n  tokens:\n    - {{name: tester, role: admin, token_file: token}}\n{body}",
            self.port
        );
        self.write("logwarden.yaml", &text)
    }

    /// [`Setup::config`] with one source (`name: path`, read from the beginning, with this
    /// `timestamp`) and every incident written as JSON lines to `out.jsonl`.
    pub fn console_config(&self, source: &str, path: &str, timestamp: &str) -> PathBuf {
        self.config(&format!(
            "sources:\n  - {{name: {source}, paths: [{path}], start_at: beginning, timestamp: {timestamp}}}\n\
             receivers:\n  - {{name: console, type: file, path: out.jsonl}}\n\
             roles:\n  analysts: {{receivers: [console]}}\n\
             escalation_policies:\n  default:\n    - notify: [analysts]\n"
        ))
    }

    pub fn append(&self, rel: &str, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(rel))
            .unwrap();
        for l in lines {
            f.write_all(l.as_bytes()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f.flush().unwrap();
    }

    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.path("logwarden.yaml"), self.port, &self.token, env)
    }
}

/// A running `logwarden run`.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub token: String,
    pub stderr_path: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, port: u16, token: &str) -> Self {
        Self::start_with_env(config, port, token, &[])
    }

    pub fn start_with_env(config: &Path, port: u16, token: &str, env: &[(&str, &str)]) -> Self {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = config.with_file_name(format!("daemon-{n}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            port,
            token: token.to_string(),
            stderr_path,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        let start = Instant::now();
        loop {
            if let Ok(r) = http("GET", port, "/readyz", None, None)
                && r.status == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited with {status} before ready:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Response {
        http("GET", self.port, path, Some(&self.token), None).unwrap()
    }

    pub fn incidents(&self) -> Vec<serde_json::Value> {
        let r = self.get("/api/v1/incidents");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json().as_array().unwrap().clone()
    }

    /// Waits until an incident of `rule` exists and returns it.
    pub fn wait_incident(&self, rule: &str, limit: Duration) -> serde_json::Value {
        wait_for(&format!("an incident of {rule}"), limit, || {
            self.incidents().into_iter().find(|i| i["rule"] == rule)
        })
    }

    /// SIGTERM, then waits for a clean exit; returns how long it took.
    pub fn stop(mut self) -> Duration {
        let start = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
        start.elapsed()
    }

    /// SIGTERM, then a clean exit within `limit` (a hung shutdown fails with the daemon's
    /// log instead of hanging the test); returns how long it took.
    pub fn stop_within(mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_for("the daemon's exit after SIGTERM", limit, || {
            self.child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
        start.elapsed()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An sshd failure line at `Nov 22 10:MM:SS` (syslog format).
pub fn ssh_fail(ip: &str, seconds: u32) -> String {
    format!(
        "Nov 22 10:{:02}:{:02} web1 sshd[811]: Failed password for invalid user admin from {ip} port {} ssh2",
        seconds / 60,
        seconds % 60,
        40000 + seconds
    )
}

/// A small seeded PRNG (xorshift64*), so randomized tests are reproducible from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Count-5 accounting workload: for each of `keys` keys, 5 lines of `g<i>` (exactly one
/// incident each, count 5) and 4 lines of `h<i>` (none), shuffled. A lost line leaves a `g`
/// without its incident; a doubled line opens an `h` incident or makes a count 6.
pub fn accounting_lines(keys: usize, rng: &mut Rng) -> Vec<String> {
    let mut lines = Vec::with_capacity(keys * 9);
    for i in 0..keys {
        for n in 0..5 {
            lines.push(format!(
                "app[{}]: event key=g{i} n={n} padding-to-make-lines-realistic",
                100 + i
            ));
        }
        for n in 0..4 {
            lines.push(format!(
                "app[{}]: event key=h{i} n={n} padding-to-make-lines-realistic",
                100 + i
            ));
        }
    }
    rng.shuffle(&mut lines);
    lines
}

/// Rules for [`accounting_lines`] plus a marker rule for barriers.
pub const ACCOUNTING_RULES: &str = r#"
rules:
  - id: count5
    match: 'event key=(?P<k>[gh]\d+) '
    group_by: [k]
    threshold: {count: 5, within: 1d}
    severity: low
  - id: marker
    match: 'MARKER (?P<n>\d+)'
    group_by: [n]
    threshold: {count: 1, within: 1s}
    severity: low
"#;

/// The `count5` incidents of [`ACCOUNTING_RULES`]: key → (count, evidence lines).
pub fn count5_incidents(d: &Daemon) -> std::collections::BTreeMap<String, (u64, usize)> {
    d.incidents()
        .into_iter()
        .filter(|i| i["rule"] == "count5")
        .map(|i| {
            (
                i["key"]["k"].as_str().unwrap().to_string(),
                (
                    i["count"].as_u64().unwrap(),
                    i["evidence"].as_array().map_or(0, Vec::len),
                ),
            )
        })
        .collect()
}

/// Waits until every `g` key has its incident, then checks the accounting exactly.
///
/// A loaded machine (CI builds beside the test) makes a daemon slow, not wrong: the wait
/// goes on while incidents keep arriving and fails only after `stall` without progress
/// (or three minutes in all), saying how far evaluation got.
pub fn verify_accounting(d: &Daemon, keys: usize, stall: Duration) {
    let counts = |d: &Daemon| -> std::collections::BTreeMap<String, u64> {
        count5_incidents(d)
            .into_iter()
            .map(|(k, (count, _))| (k, count))
            .collect()
    };
    let start = Instant::now();
    let mut last_progress = (Instant::now(), 0usize);
    loop {
        let seen = counts(d);
        let missing: Vec<String> = (0..keys)
            .map(|i| format!("g{i}"))
            .filter(|k| !seen.contains_key(k))
            .collect();
        let wrong: Vec<(&String, &u64)> = seen
            .iter()
            .filter(|(k, c)| k.starts_with('h') || **c != 5)
            .collect();
        assert!(wrong.is_empty(), "lines read twice: {wrong:?}\n{}", d.log());
        if missing.is_empty() {
            break;
        }
        if seen.len() > last_progress.1 {
            last_progress = (Instant::now(), seen.len());
        }
        let stalled = last_progress.0.elapsed() > stall;
        assert!(
            !stalled && start.elapsed() < Duration::from_secs(180),
            "lines lost: no incident for {} of {keys} keys after {:?} ({:?} without a new incident), e.g. {:?}\n{}",
            missing.len(),
            start.elapsed(),
            last_progress.0.elapsed(),
            &missing[..missing.len().min(5)],
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to `limit`) for the daemon to close the connection; false if it stays open.
pub fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine; keep reading to the end.
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of one series in `/metrics` (e.g. `logwarden_outbox_pending{receiver="hook"}`),
/// 0 when absent.
pub fn metric(port: u16, series: &str) -> f64 {
    let text = http("GET", port, "/metrics", None, None).unwrap().body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on 127.0.0.1, killed when
/// dropped, pass or fail.
pub struct Alertmanager {
    /// Its HTTP port.
    pub port: u16,
    /// Its gossip port (TCP and UDP), when clustered.
    pub cluster_port: Option<u16>,
    log: PathBuf,
    _child: KillOnDrop,
}

impl Alertmanager {
    /// Starts one with `config` (YAML) and storage under `dir`. `cluster`: its own gossip
    /// port and its peers' gossip ports, all on 127.0.0.1; `None` runs it alone.
    pub fn start(
        program: &Path,
        dir: &Path,
        config: &str,
        port: u16,
        cluster: Option<(u16, &[u16])>,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("alertmanager.log");
        let mut cmd = Command::new(program);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        match cluster {
            None => {
                cmd.arg("--cluster.listen-address=");
            }
            Some((own, peers)) => {
                cmd.arg(format!("--cluster.listen-address=127.0.0.1:{own}"))
                    .arg(format!("--cluster.advertise-address=127.0.0.1:{own}"))
                    // Short, so the member that waits for its peer's notification log
                    // decides soon (the default is 15s).
                    .arg("--cluster.peer-timeout=2s")
                    .arg("--cluster.pushpull-interval=2s")
                    .arg("--cluster.reconnect-interval=1s");
                for peer in peers {
                    cmd.arg(format!("--cluster.peer=127.0.0.1:{peer}"));
                }
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut am = Alertmanager {
            port,
            cluster_port: cluster.map(|(own, _)| own),
            log,
            _child: KillOnDrop(child),
        };
        wait_for("Alertmanager to be ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = am._child.0.try_wait() {
                panic!("alertmanager exited with {status}: {}", am.log());
            }
            http("GET", port, "/-/ready", None, None)
                .ok()
                .filter(|r| r.status == 200)
        });
        am.port = port;
        am
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The alerts it lists as firing (resolved ones are not listed).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let r = http("GET", self.port, "/api/v2/alerts", None, None).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.json().as_array().unwrap().clone()
    }

    /// How many cluster members it knows, itself included.
    pub fn peers(&self) -> usize {
        let r = http("GET", self.port, "/api/v2/status", None, None).unwrap();
        r.json()["cluster"]["peers"]
            .as_array()
            .map_or(0, |p| p.len())
    }
}

/// A moderate `ssh-bruteforce` rule: five failed logins from one address (`ip`) in a minute.
pub const SSH_BRUTEFORCE_RULE: &str = "rules:\n  - id: ssh-bruteforce\n    match: 'Failed password for \\S+ from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: moderate\n";

/// Five failed logins from `ip`: one `ssh-bruteforce` incident.
pub fn ssh_attack(ip: &str) -> Vec<String> {
    (0..5)
        .map(|i| format!("sshd[1]: Failed password for root from {ip} port {i} ssh2"))
        .collect()
}

impl Daemon {
    /// Takes a (low or moderate) incident through every lifecycle state to closed, as a
    /// responder would.
    pub fn close_incident(&self, id: &str) {
        for to in [
            "acknowledged",
            "contained",
            "eradicated",
            "recovered",
            "closed",
        ] {
            let r = http(
                "POST",
                self.port,
                &format!("/api/v1/incidents/{id}/transition"),
                Some(&self.token),
                Some(&format!("{{\"to\": \"{to}\"}}")),
            )
            .unwrap();
            assert_eq!(r.status, 200, "{to}: {}", r.body);
        }
    }
}

/// The audit records of a stopped daemon's state directory (`logwarden audit export`).
pub fn audit_export(state_dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["audit", "export", "--format", "jsonl", "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sshd brute-force rule (5 failures from one address within a minute).
pub const SSH_RULES: &str = r#"
rules:
  - id: ssh-bruteforce
    match: 'sshd\[\d+\]: Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>\S+) port \d+'
    group_by: [ip]
    threshold: {count: 5, within: 1m}
    severity: moderate
"#;
