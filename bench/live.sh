#!/usr/bin/env bash
# What a live SSH brute force costs the host: the daemon with the shipped rule packs tails
# an auth log that an attack appends to at RATE lines/s for SECONDS s (OpenSSH's messages of
# a password-guessing botnet: a few heavy hitters and many addresses trying a few times,
# each line dated when it is written). Prints
#   written   bytes the daemon wrote to disk (/proc/PID/io write_bytes) ÷ bytes of log read
#   committed bytes of keys and values it committed to its store ÷ bytes of log (what the
#             storage engine was asked to write; "-" for a build without the metric)
#   state     size of the state directory on disk ÷ bytes of log
#   rss_mb    peak resident memory (VmHWM)
#   lag_s     seconds from the last line written until every match is counted
#             (logwarden_rule_matches_total reaches what the detector alone finds)
# With BASELINE=/path/to/an/other/logwarden, runs that binary first on the same log and
# prints the ratios of this build to it. LOGWARDEN_BIN=/path/to/logwarden measures that
# binary instead of building this tree (the detector that counts the expected matches must
# then be built already).
# Usage: [BASELINE=BIN] bench/live.sh [RATE] [SECONDS]   (default 3000 20; needs curl and
# python3; listens on 127.0.0.1:9799)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-3000}
seconds=${2:-20}
port=9799
source bench/lib.sh

if [ -z "${LOGWARDEN_BIN:-}" ]; then
  cargo build --release --quiet --bin logwarden --example detect_bench
fi
detect=target/release/examples/detect_bench

bench_config "$work/live.yaml" "$port" /dev/null

# Appends the attack to $1 at $rate lines/s for $seconds s, each line stamped when written.
attack() {
  python3 - "$1" "$rate" "$seconds" <<'EOF'
import random, sys, time
path, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(7)
heavy = [f"203.0.113.{i}" for i in range(1, 9)]
users = ["root", "admin", "test", "oracle", "ubuntu", "postgres", "git", "user", "pi", "ftpuser"]
def address():
    if rng.random() < 0.5:
        return rng.choice(heavy)
    return f"198.{51 + rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
def lines(stamp):
    ip, user, pid = address(), rng.choice(users), rng.randrange(1000, 60000)
    port = rng.randrange(30000, 60000)
    head = f"{stamp} web1 sshd[{pid}]: "
    if user == "root":
        return [head + f"Failed password for root from {ip} port {port} ssh2",
                head + f"Received disconnect from {ip} port {port}:11: Bye Bye [preauth]"]
    return [head + f"Invalid user {user} from {ip} port {port}",
            head + f"pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}",
            head + f"Failed password for invalid user {user} from {ip} port {port} ssh2",
            head + f"Connection closed by invalid user {user} {ip} port {port} [preauth]"]
tick = 0.1
per_tick = rate * tick
start = time.monotonic()
written = 0
with open(path, "a") as out:
    n = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int(min(elapsed + tick, seconds) * rate)
        stamp = time.strftime("%b %e %H:%M:%S")
        chunk = []
        while written + len(chunk) < due:
            chunk.extend(lines(stamp))
        chunk = chunk[: due - written]
        out.write("".join(l + "\n" for l in chunk))
        out.flush()
        written += len(chunk)
        time.sleep(max(0.0, start + (n + 1) * tick - time.monotonic()))
        n += 1
EOF
}

matches_counted() {
  curl -sf -m 10 "http://127.0.0.1:$port/metrics" |
    awk '/^logwarden_rule_matches_total/ { s += $2 } END { printf "%d\n", s }'
}
io_written() { awk '/^write_bytes:/ { print $2 }' "/proc/$pid/io"; }

# Runs BIN on a fresh state and attack log; sets written, state, rss_mb, lag_s.
run_one() {
  local bin=$1
  rm -rf "$work/state" "$work/log"
  mkdir -p "$work/log"
  : >"$work/log/auth.log"
  LOGWARDEN_TOKEN=bench "$bin" run --config "$work/live.yaml" >/dev/null 2>"$work/daemon.err" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do alive; sleep 0.1; done
  local before
  before=$(io_written)
  attack "$work/log/auth.log"
  local last
  last=$(date +%s.%N)
  local want
  want=$("$detect" run rules "$work/log/auth.log" | sed -E 's/.*"matches": ([0-9]+).*/\1/')
  until [ "$(matches_counted)" -ge "$want" ]; do alive; sleep 0.1; done
  lag_s=$(calc "$(date +%s.%N) - $last")
  # Let sled's periodic flush finish what the last commit started.
  sleep 2
  local log_bytes
  log_bytes=$(stat -c %s "$work/log/auth.log")
  written=$(calc "($(io_written) - $before) / $log_bytes")
  rss_mb=$(awk '/^VmHWM:/ { printf "%.0f\n", $2 / 1024 }' "/proc/$pid/status")
  committed=$(curl -sf -m 10 "http://127.0.0.1:$port/metrics" |
    awk -v b="$log_bytes" '/^logwarden_store_written_bytes_total/ { printf "%.2f×\n", $2 / b; f = 1 } END { if (!f) print "-" }')
  # Where those bytes went (engine, journals by record kind), for builds that count them.
  curl -sf -m 10 "http://127.0.0.1:$port/metrics" |
    awk -v b="$log_bytes" -F'[{}"= ]+' '/^logwarden_store_part_written_bytes_total/ { printf "  %s %.2f×", $3, $NF / b; f = 1 } END { if (f) print "   (handed to the disk ÷ log)" }'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  state=$(calc "$(du -s --block-size=1 "$work/state" | cut -f1) / $log_bytes")
  # Where the state directory's bytes are (engine, journals), for builds that have them.
  for part in db wal evidence windows; do
    if [ -d "$work/state/$part" ]; then
      printf '  %s/ %.2f×' "$part" "$(calc "$(du -s --block-size=1 "$work/state/$part" | cut -f1) / $log_bytes")"
    fi
  done
  echo
  lines=$(wc -l <"$work/log/auth.log")
  printf '%-9s %7d lines %6.1f MB  written %6.2f×  committed %6s  state %6.2f×  rss_mb %5d  lag_s %6.2f\n' \
    "$2" "$lines" "$(calc "$log_bytes / 1e6")" "$written" "$committed" "$state" "$rss_mb" "$lag_s"
}

if [ -n "${BASELINE:-}" ]; then
  run_one "$BASELINE" baseline
  b_written=$written b_state=$state b_rss=$rss_mb b_lag=$lag_s
fi
run_one "${LOGWARDEN_BIN:-target/release/logwarden}" this
if [ -n "${BASELINE:-}" ]; then
  printf 'this ÷ baseline: written %.3f  state %.3f  rss %.3f  lag %.3f\n' \
    "$(calc "$written / $b_written")" "$(calc "$state / $b_state")" \
    "$(calc "$rss_mb / $b_rss")" "$(calc "$lag_s / ($b_lag > 0 ? $b_lag : 1)")"
fi
