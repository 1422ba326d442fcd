#!/usr/bin/env bash
# Measures failover with default timings: from SIGKILL of the primary to the first write
# acknowledged by its successor. Starts a coordinator and three servers on loopback (fresh
# data directories), then for each round: kill -9 the primary, try a PUT on every other
# server in a tight loop until one acknowledges it, print the time, restart the killed server
# and wait until the view is full again.
#
#   benches/failover.sh [--rounds N] [--bin DIR] [--fsync MODE]
#
# Prints one line per round and a summary (median, min, max in ms). Needs the release build:
# cargo build --release.
set -euo pipefail

ROUNDS=5
BIN=target/release
FSYNC=never
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --fsync) FSYNC="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "failover.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for b in tandem-server tandem-coordinator tandem-cli; do
  [ -x "$BIN/$b" ] || { echo "failover.sh: $BIN/$b not found; run cargo build --release" >&2; exit 2; }
done

DIR=$(mktemp -d /tmp/tandem-failover.XXXXXX)
COORD=127.0.0.1:7190
PORTS=(7191 7192 7193)
declare -A PID
cleanup() {
  for id in "${!PID[@]}"; do kill -9 "${PID[$id]}" 2>/dev/null || true; done
  [ -n "${CPID:-}" ] && kill -9 "$CPID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

start_server() { # id port
  "$BIN/tandem-server" --listen "127.0.0.1:$2" --data "$DIR/$1" --coordinator "$COORD" --id "$1" \
    --fsync "$FSYNC" > /dev/null 2>> "$DIR/$1.log" &
  PID[$1]=$!
  disown "$!" # no "Killed" notices from the shell
}

"$BIN/tandem-coordinator" --listen "$COORD" --data "$DIR/coordinator" > /dev/null 2> "$DIR/coordinator.log" &
CPID=$!
disown "$CPID"
for i in 0 1 2; do start_server "s$((i + 1))" "${PORTS[$i]}"; done

view_json() { "$BIN/tandem-cli" --coordinator "$COORD" --timeout 500 view --json 2>/dev/null || true; }
# Waits until the view has a primary and two backups, and the primary serves.
wait_full() {
  for _ in $(seq 1 200); do
    local v; v=$(view_json)
    if echo "$v" | grep -q '"backups":\[{[^]]*},{'; then
      local addr; addr=$(echo "$v" | sed -E 's/.*"primary":\{"id":"[^"]*","addr":"([^"]*)".*/\1/')
      if "$BIN/tandem-cli" status --server "$addr" --json 2>/dev/null | grep -q '"serving":true'; then
        return 0
      fi
    fi
    sleep 0.05
  done
  echo "failover.sh: the group did not re-form: $(view_json)" >&2
  exit 1
}

now_ns() { date +%s%N; }
RESULTS=()
wait_full
for round in $(seq 1 "$ROUNDS"); do
  v=$(view_json)
  pid_id=$(echo "$v" | sed -E 's/.*"primary":\{"id":"([^"]*)".*/\1/')
  pid_addr=$(echo "$v" | sed -E 's/.*"primary":\{"id":"[^"]*","addr":"([^"]*)".*/\1/')
  "$BIN/tandem-cli" --server "$pid_addr" put "before-$round" x > /dev/null
  others=()
  for i in 0 1 2; do
    [ "127.0.0.1:${PORTS[$i]}" = "$pid_addr" ] || others+=("127.0.0.1:${PORTS[$i]}")
  done
  t0=$(now_ns)
  kill -9 "${PID[$pid_id]}"
  done_ms=""
  while [ -z "$done_ms" ]; do
    for addr in "${others[@]}"; do
      if "$BIN/tandem-cli" --server "$addr" --timeout 200 put "after-$round" x > /dev/null 2>&1; then
        done_ms=$(( ($(now_ns) - t0) / 1000000 ))
        echo "round $round: killed primary $pid_id; $addr acknowledged a write after $done_ms ms"
        break
      fi
    done
    if [ $(( ($(now_ns) - t0) / 1000000 )) -gt 20000 ]; then
      echo "failover.sh: no successor within 20 s: $(view_json)" >&2
      exit 1
    fi
  done
  RESULTS+=("$done_ms")
  port=${pid_addr##*:}
  while kill -0 "${PID[$pid_id]}" 2>/dev/null; do sleep 0.01; done
  start_server "$pid_id" "$port"
  wait_full
done
sorted=$(printf '%s\n' "${RESULTS[@]}" | sort -n)
n=${#RESULTS[@]}
median=$(echo "$sorted" | sed -n "$(( (n + 1) / 2 ))p")
echo "failover (SIGKILL of the primary -> first acknowledged write through its successor), $n rounds:" \
  "median $median ms, min $(echo "$sorted" | head -1) ms, max $(echo "$sorted" | tail -1) ms"
