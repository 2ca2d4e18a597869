#!/usr/bin/env bash
# End-to-end speed of the daemon: tailing one file, detection with the shipped packs,
# incidents, escalation, the audit chain and the sled commits, with a file receiver writing
# to /dev/null. For each of bench/run.sh's two logs, appends the whole log to a watched
# file and times until every match is counted (`logwarden_rule_matches_total` reaches
# the count the detector alone finds). Prints lines/s, the daemon's CPU seconds (user +
# system, all threads: steadier than wall time on a shared machine), those of its pipeline
# thread alone (the one that bounds a burst) and the size of the state directory.
# Usage: bench/daemon.sh [LINES]   (needs curl; listens on 127.0.0.1:9798)
# LOGWARDEN_BIN=PATH runs another build of the daemon (e.g. a copy of an earlier one).
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
source bench/lib.sh

cargo build --release --quiet --bin logwarden --example detect_bench
bin=target/release/examples/detect_bench
daemon=${LOGWARDEN_BIN:-target/release/logwarden}
"$bin" gen-log "$lines" "$work/attack-heavy.log"
awk '/Failed|Invalid user|incorrect|Accepted/ { if (NR % 10 == 0) print; next } { print }' \
  "$work/attack-heavy.log" >"$work/benign-heavy.log"

mkdir -p "$work/log"
bench_config "$work/bench.yaml" 9798 /dev/null


# CPU seconds (user + system) of process $1's thread named $2 (0 if there is none).
thread_cpu_seconds() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm")" = "$2" ]; then cpu_seconds "$1/task/${t##*/}"; return; fi
  done
  echo 0
}

matches_counted() {
  curl -sf http://127.0.0.1:9798/metrics |
    awk '/^logwarden_rule_matches_total/ { s += $2 } END { printf "%d\n", s }'
}

echo "daemon: $daemon; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-13s %9s %9s %12s %7s %10s %7s\n' log lines seconds lines/s cpu_s pipeline_s state
for log in attack-heavy benign-heavy; do
  file="$work/$log.log"
  count=$(wc -l <"$file")
  want=$("$bin" run rules "$file" | sed -E 's/.*"matches": ([0-9]+).*/\1/')
  rm -rf "$work/state"
  : >"$work/log/auth.log"
  LOGWARDEN_TOKEN=bench "$daemon" run --config "$work/bench.yaml" \
    >/dev/null 2>"$work/daemon.err" &
  pid=$!
  until curl -sf http://127.0.0.1:9798/readyz >/dev/null; do alive; sleep 0.1; done
  start=$(date +%s.%N)
  cat "$file" >>"$work/log/auth.log"
  until [ "$(matches_counted)" -ge "$want" ]; do alive; sleep 0.1; done
  end=$(date +%s.%N)
  cpu=$(cpu_seconds "$pid")
  pipeline=$(thread_cpu_seconds "$pid" pipeline)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  secs=$(calc "$end - $start")
  printf '%-13s %9d %9.2f %12.0f %7.2f %10.2f %7s\n' "$log" "$count" "$secs" \
    "$(calc "$count / $secs")" "$cpu" "$pipeline" "$(du -sh "$work/state" | cut -f1)"
done
