# Shared by the bench scripts (sourced): a work directory removed on exit together with
# the daemon started into $pid, arithmetic, and a process's CPU time.

work=$(mktemp -d)
pid=
# Scripts that start more background processes list them here to have them stopped too.
also_stop=()
cleanup() {
  for p in "${also_stop[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Floating-point arithmetic and comparisons (awk is on every machine; bc is not).
calc() { awk "BEGIN { printf \"%.10g\\n\", ($1) }"; }

# CPU seconds (user + system) process $1 has used.
cpu_seconds() {
  awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / t }' "/proc/$1/stat"
}

# Fails the run, with the daemon's log ($work/daemon.err), if the daemon $pid has exited.
alive() {
  kill -0 "$pid" 2>/dev/null || { cat "$work/daemon.err" >&2; echo "the daemon exited" >&2; exit 1; }
}

# Writes the benches' daemon config to $1: the shipped rule packs, the API on
# 127.0.0.1:$2 (token from LOGWARDEN_TOKEN), one syslog-dated source reading
# $work/log/auth.log, state in $work/state, every incident to the file receiver $3; lines
# in $4 are added to the escalation policy after its first step.
bench_config() {
  cat >"$1" <<CONFIG
state_dir: $work/state
rules: [$PWD/rules]
listen: 127.0.0.1:$2
api:
  tokens:
    - {name: admin, role: admin, token_env: LOGWARDEN_TOKEN}
sources:
  - name: auth
    paths: [$work/log/auth.log]
    timestamp: syslog
receivers:
  - {name: sink, type: file, path: $3}
roles:
  analysts: {receivers: [sink]}
escalation_policies:
  default:
    - notify: [analysts]
${4:-}
CONFIG
}
