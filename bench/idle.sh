#!/usr/bin/env bash
# The daemon at rest. Starts it with the shipped quickstart config (config/logwarden.yaml,
# its log directories created and holding other files, as /var/log does), lets it settle,
# then over SECONDS prints its CPU use (share of one core), wake-ups per second (context
# switches of all its threads) and resident memory; the same for a baseline daemon with
# the same rules and no sources, run in the same invocation, and the ratios.
# Usage: bench/idle.sh [SECONDS]   (default 30; needs curl; listens on 127.0.0.1:9733).
# LOGWARDEN_BIN runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
source bench/lib.sh

bin=$(realpath "${LOGWARDEN_BIN:-target/release/logwarden}")
[ -n "${LOGWARDEN_BIN:-}" ] || cargo build --release --quiet --bin logwarden

switches() {
  cat /proc/"$pid"/task/*/status 2>/dev/null |
    awk '/ctxt_switches/ { s += $2 } END { printf "%d\n", s }'
}

measure() {
  local config=$1 label=$2
  rm -rf "$work/state"
  LOGWARDEN_TOKEN=bench "$bin" run --config "$config" >/dev/null 2>"$work/daemon.err" &
  pid=$!
  until curl -sf http://127.0.0.1:9733/readyz >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.err" >&2; exit 1; }
    sleep 0.1
  done
  sleep 2
  local c0 s0 c1 s1
  c0=$(cpu_seconds "$pid"); s0=$(switches)
  sleep "$seconds"
  c1=$(cpu_seconds "$pid"); s1=$(switches)
  local rss
  rss=$(awk '/VmRSS/ { printf "%.1f\n", $2 / 1024 }' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  local cpu wakes
  cpu=$(calc "($c1 - $c0) / $seconds * 100")
  wakes=$(calc "($s1 - $s0) / $seconds")
  printf '%-10s %9.3f %10.1f %8.1f\n' "$label" "$cpu" "$wakes" "$rss"
  echo "$cpu $wakes $rss" >"$work/result-$label"
}

# The shipped layout: config/, rules/, var/log/auth.log, var/log/nginx/*.log, plus the
# other files a real log directory holds.
mkdir -p "$work/tree/config" "$work/tree/var/log/nginx"
cp config/logwarden.yaml "$work/tree/config/"
cp -r rules "$work/tree/rules"
: >"$work/tree/var/log/auth.log"
: >"$work/tree/var/log/nginx/access.log"
for i in $(seq 1 50); do
  echo "other" >"$work/tree/var/log/other-$i.log"
  echo "rotated" >"$work/tree/var/log/nginx/access.log.$i"
done
cat >"$work/tree/config/baseline.yaml" <<EOF
state_dir: ../state
rules: [../rules]
listen: 127.0.0.1:9733
sources: []
EOF
sed -i "s|state_dir: ../state|state_dir: $work/state|" "$work/tree/config/logwarden.yaml"
sed -i "s|state_dir: ../state|state_dir: $work/state|" "$work/tree/config/baseline.yaml"

printf '%-10s %9s %10s %8s\n' daemon cpu_% wakeups/s rss_mb
measure "$work/tree/config/baseline.yaml" baseline
measure "$work/tree/config/logwarden.yaml" shipped
read -r bc bw br <"$work/result-baseline"
read -r sc sw sr <"$work/result-shipped"
printf '\nratios, shipped / baseline: cpu %.2fx  wake-ups %.2fx  rss %.2fx\n' \
  "$(calc "($sc + 0.001) / ($bc + 0.001)")" "$(calc "($sw + 0.1) / ($bw + 0.1)")" \
  "$(calc "$sr / $br")"
