#!/usr/bin/env bash
# A distributed brute force against the daemon with the shipped rule packs: ATTACKERS
# addresses each fail 5 SSH logins (as one non-root user, so each opens exactly one
# incident) within a minute, all appended to the watched file at once. Run first with BASELINE attackers, then with ATTACKERS, in the same invocation,
# and prints for each:
#   open_s     seconds from the append until every attacker's incident is open
#   worst_*    the slowest answer of /healthz, /metrics and GET /api/v1/incidents/INC-1,
#              asked every 0.2 s while the burst is worked through (10 s time-out)
#   sent_s     seconds from the append until every opening notification is written (the
#              file receiver writes them one after another)
#   idle_cpu   share of one core used over 10 s once all incidents are open and notified
#   rss_mb     resident memory then
#   state      size of the state directory then
#   notify_s   seconds from appending one more attacker's 5 lines until its incident's
#              notification is written by the file receiver
# and the ratios of the large run to the baseline.
# Usage: bench/scale.sh [ATTACKERS] [BASELINE]   (default 20000 1000; needs curl;
# listens on 127.0.0.1:9797). LOGWARDEN_BIN runs that binary instead of building one
# (to compare two builds on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
attackers=${1:-20000}
baseline=${2:-1000}
port=9797
source bench/lib.sh

bin=${LOGWARDEN_BIN:-target/release/logwarden}
[ -n "${LOGWARDEN_BIN:-}" ] || cargo build --release --quiet --bin logwarden

metric_sum() {
  curl -sf -m 10 "http://127.0.0.1:$port/metrics" |
    awk -v m="$1" '$1 ~ "^"m"({|$)" { s += $2 } END { printf "%d\n", s }'
}

# Five failed logins for each of N addresses from 10.A.B.C, dated now, interleaved the way
# a botnet's spread-out attempts arrive (address after address, round after round).
attack_lines() {
  local n=$1 first=$2
  awk -v n="$n" -v first="$first" -v stamp="$(date '+%b %e %H:%M:%S')" 'BEGIN {
    for (round = 0; round < 5; round++)
      for (i = first; i < first + n; i++)
        printf "%s web1 sshd[%d]: Failed password for deploy from 10.%d.%d.%d port %d ssh2\n",
          stamp, 1000 + i % 30000, int(i / 65536) % 256, int(i / 256) % 256, i % 256 + 1,
          40000 + round
  }'
}

# Asks the three endpoints every 0.2 s and keeps each one's slowest answer.
probe() {
  local out=$1 h=0 m=0 i=0 t
  while :; do
    t=$(curl -s -o /dev/null -m 10 -w '%{time_total}' "http://127.0.0.1:$port/healthz" || echo 10)
    h=$(calc "$t > $h ? $t : $h")
    t=$(curl -s -o /dev/null -m 10 -w '%{time_total}' "http://127.0.0.1:$port/metrics" || echo 10)
    m=$(calc "$t > $m ? $t : $m")
    t=$(curl -s -o /dev/null -m 10 -w '%{time_total}' -H "Authorization: Bearer bench" \
      "http://127.0.0.1:$port/api/v1/incidents/INC-1" || echo 10)
    i=$(calc "$t > $i ? $t : $i")
    echo "$h $m $i" >"$out"
    sleep 0.2
  done
}

run_one() {
  local n=$1
  rm -rf "$work/state" "$work/log" "$work/out.jsonl"
  mkdir -p "$work/log"
  : >"$work/log/auth.log"
  bench_config "$work/bench.yaml" "$port" "$work/out.jsonl" \
    "    - {after: 30m, notify: [analysts], repeat: 30m}"
  LOGWARDEN_TOKEN=bench "$bin" run --config "$work/bench.yaml" >/dev/null 2>"$work/daemon.err" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do alive; sleep 0.1; done
  attack_lines "$n" 0 >"$work/attack.log"
  echo "10 0 0" >"$work/probe"
  probe "$work/probe" &
  prober=$!
  also_stop=("$prober")
  local start end
  start=$(date +%s.%N)
  cat "$work/attack.log" >>"$work/log/auth.log"
  until [ "$(metric_sum logwarden_incidents_opened_total)" -ge "$n" ]; do
    alive
    [ "$(calc "$(date +%s.%N) - $start > 600")" = 1 ] && { echo "not all open after 600 s" >&2; exit 1; }
    sleep 0.2
  done
  end=$(date +%s.%N)
  until [ "$(wc -l <"$work/out.jsonl" 2>/dev/null || echo 0)" -ge "$n" ]; do
    alive
    [ "$(calc "$(date +%s.%N) - $start > 600")" = 1 ] && { echo "not all notified after 600 s" >&2; exit 1; }
    sleep 0.2
  done
  local sent
  sent=$(date +%s.%N)
  kill "$prober"; wait "$prober" 2>/dev/null || true; also_stop=()
  read -r worst_h worst_m worst_i <"$work/probe"
  open_s=$(calc "$end - $start")
  sent_s=$(calc "$sent - $start")
  local c0 c1
  c0=$(cpu_seconds "$pid"); sleep 10; c1=$(cpu_seconds "$pid")
  idle=$(calc "($c1 - $c0) / 10")
  rss=$(awk '/VmRSS/ { printf "%.0f\n", $2 / 1024 }' "/proc/$pid/status")
  # One more attacker: how long until its notification is written.
  local before newcomer
  newcomer=$(attack_lines 1 "$((n + 1))" | head -1 | sed -E 's/.* from ([0-9.]+) .*/\1/')
  before=$(grep -c "\"$newcomer\"" "$work/out.jsonl" || true)
  start=$(date +%s.%N)
  attack_lines 1 "$((n + 1))" >>"$work/log/auth.log"
  until [ "$(grep -c "\"$newcomer\"" "$work/out.jsonl" || true)" -gt "$before" ]; do
    alive
    [ "$(calc "$(date +%s.%N) - $start > 60")" = 1 ] && { echo "no notification after 60 s" >&2; exit 1; }
    sleep 0.02
  done
  notify_s=$(calc "$(date +%s.%N) - $start")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  printf '%-9d %8.1f %8.1f %9.3f %9.3f %9.3f %9.3f %7d %9.3f %8s\n' "$n" "$open_s" "$sent_s" \
    "$worst_h" "$worst_m" "$worst_i" "$idle" "$rss" "$notify_s" "$(du -sh "$work/state" | cut -f1)"
  echo "$open_s $idle $notify_s $worst_m" >"$work/result-$n"
}

printf '%-9s %8s %8s %9s %9s %9s %9s %7s %9s %8s\n' attackers open_s sent_s worst_hz worst_met \
  worst_get idle_cpu rss_mb notify_s state
run_one "$baseline"
run_one "$attackers"
read -r bo bi bn bm <"$work/result-$baseline"
read -r lo li ln lm <"$work/result-$attackers"
echo
echo "ratios, $attackers attackers / $baseline:"
printf '  attackers %.1fx  time to open %.2fx  idle cpu %.2fx  notification latency %.2fx  worst /metrics %.2fx\n' \
  "$(calc "$attackers / $baseline")" "$(calc "$lo / $bo")" "$(calc "($li + 0.0001) / ($bi + 0.0001)")" \
  "$(calc "$ln / $bn")" "$(calc "($lm + 0.0001) / ($bm + 0.0001)")"
