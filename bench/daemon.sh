#!/usr/bin/env bash
# End-to-end speed of the daemon: tailing one file, detection with the shipped packs,
# incidents, escalation, the audit chain and the sled commits, with a file receiver writing
# to /dev/null. For each of bench/run.sh's two logs, appends the whole log to a watched
# file and times until every match is counted (`logwarden_rule_matches_total` reaches
# the count the detector alone finds). Prints lines/s and the size of the state directory.
# Usage: bench/daemon.sh [LINES]   (needs curl; listens on 127.0.0.1:9798)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
source bench/lib.sh

cargo build --release --quiet --bin logwarden --example detect_bench
bin=target/release/examples/detect_bench
"$bin" gen-log "$lines" "$work/attack-heavy.log"
awk '/Failed|Invalid user|incorrect|Accepted/ { if (NR % 10 == 0) print; next } { print }' \
  "$work/attack-heavy.log" >"$work/benign-heavy.log"

mkdir -p "$work/cfg" "$work/log"
cat >"$work/cfg/bench.yaml" <<EOF
state_dir: ../state
rules: [$PWD/rules]
listen: 127.0.0.1:9798
api:
  tokens:
    - {name: admin, role: admin, token_env: LOGWARDEN_TOKEN}
sources:
  - name: auth
    paths: [../log/auth.log]
    timestamp: syslog
receivers:
  - name: sink
    type: file
    path: /dev/null
roles:
  analysts: {receivers: [sink]}
escalation_policies:
  default:
    - notify: [analysts]
EOF

# Fails the run, with the daemon's log, if the daemon has exited.
alive() {
  kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.err" >&2; echo "the daemon exited" >&2; exit 1; }
}

matches_counted() {
  curl -sf http://127.0.0.1:9798/metrics |
    awk '/^logwarden_rule_matches_total/ { s += $2 } END { printf "%d\n", s }'
}

printf '%-13s %9s %9s %12s %7s\n' log lines seconds lines/s state
for log in attack-heavy benign-heavy; do
  file="$work/$log.log"
  count=$(wc -l <"$file")
  want=$("$bin" run rules "$file" | sed -E 's/.*"matches": ([0-9]+).*/\1/')
  rm -rf "$work/state"
  : >"$work/log/auth.log"
  LOGWARDEN_TOKEN=bench target/release/logwarden run --config "$work/cfg/bench.yaml" \
    >/dev/null 2>"$work/daemon.err" &
  pid=$!
  until curl -sf http://127.0.0.1:9798/readyz >/dev/null; do alive; sleep 0.1; done
  start=$(date +%s.%N)
  cat "$file" >>"$work/log/auth.log"
  until [ "$(matches_counted)" -ge "$want" ]; do alive; sleep 0.1; done
  end=$(date +%s.%N)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  secs=$(calc "$end - $start")
  printf '%-13s %9d %9.2f %12.0f %7s\n' "$log" "$count" "$secs" \
    "$(calc "$count / $secs")" "$(du -sh "$work/state" | cut -f1)"
done
