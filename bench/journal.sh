#!/usr/bin/env bash
# Cost of the journal source: the same LINES sshd entries read (1) by journalctl alone
# into /dev/null (the floor: the journal source runs it), (2) by the daemon from a journal
# directory, and (3) by the daemon from a file holding the same lines, both with no rules so
# the source and the commits are measured, not detection. Prints lines/s and the ratios.
# Usage: bench/journal.sh [LINES]   (needs curl, journalctl, systemd-journal-remote;
# listens on 127.0.0.1:9799)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-100000}
remote=
for p in /lib/systemd/systemd-journal-remote /usr/lib/systemd/systemd-journal-remote; do
  [ -x "$p" ] && remote=$p && break
done
[ -n "$remote" ] || { echo "systemd-journal-remote not installed" >&2; exit 2; }
source bench/lib.sh
now() { date +%s.%N; }

cargo build --release --quiet --bin logwarden
bin=target/release/logwarden

# The entries, an hour ago at one per millisecond, as export format and as log lines.
start_us=$(( $(date +%s) * 1000000 - 3600000000 ))
awk -v n="$lines" -v t0="$start_us" -v exp_out="$work/entries.export" -v log_out="$work/auth.log" 'BEGIN {
  for (i = 0; i < n; i++) {
    t = t0 + i * 1000
    msg = sprintf("Failed password for invalid user admin from 10.%d.%d.%d port %d ssh2", int(i / 65536) % 256, int(i / 256) % 256, i % 256, 40000 + i % 20000)
    printf "__REALTIME_TIMESTAMP=%.0f\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=web1\nSYSLOG_IDENTIFIER=sshd\n_PID=811\nMESSAGE=%s\n\n", t, i + 1, msg > exp_out
    printf "%s web1 sshd[811]: %s\n", strftime("%Y-%m-%dT%H:%M:%S", int(t / 1000000), 1) sprintf(".%06d+00:00", t % 1000000), msg > log_out
  }
}'
mkdir -p "$work/journal" "$work/rules"
"$remote" --output="$work/journal/system.journal" "$work/entries.export" 2>/dev/null

t0=$(now)
journalctl --directory "$work/journal" --output=export --all \
  --output-fields=MESSAGE,_HOSTNAME,SYSLOG_IDENTIFIER,_COMM,_PID,SYSLOG_PID >/dev/null
floor=$(calc "$(now) - $t0")

# Seconds until the daemon with this source has read every line.
read_all() {
  rm -rf "$work/state"
  cat >"$work/bench.yaml" <<EOF
state_dir: state
rules: [rules]
listen: 127.0.0.1:9799
sources:
  - name: auth
    start_at: beginning
$1
EOF
  local t0
  t0=$(now)
  "$bin" run --config "$work/bench.yaml" 2>"$work/daemon.err" &
  pid=$!
  until [ "$(curl -sf http://127.0.0.1:9799/metrics | awk '/^logwarden_lines_read_total\{source="auth"\}/ { print $2 }')" = "$lines" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.err" >&2; exit 1; }
    sleep 0.02
  done
  calc "$(now) - $t0"
  kill "$pid"; wait "$pid" || true; pid=
}
journal=$(read_all "    journal: {directory: journal}")
file=$(read_all "    paths: [auth.log]
    timestamp: rfc3339")

printf '%-26s %9s %12s\n' reader seconds lines/s
printf '%-26s %9.3f %12.0f\n' "journalctl alone (floor)" "$floor" "$(calc "$lines / $floor")"
printf '%-26s %9.3f %12.0f\n' "journal source" "$journal" "$(calc "$lines / $journal")"
printf '%-26s %9.3f %12.0f\n' "file source, same lines" "$file" "$(calc "$lines / $file")"
printf 'journal source / journalctl alone: %.2fx the time; / file source: %.2fx\n' \
  "$(calc "$journal / $floor")" "$(calc "$journal / $file")"
