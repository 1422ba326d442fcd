#!/usr/bin/env bash
# A/B two (or more) tandem-server binaries with the same client, alternating them round by
# round, as compare.sh does for servers of different kinds. Each run: a fresh server on a
# private port and temp dir (--fsync never, or $AB_FSYNC), a prefill, 1 s warm-up, then PUT and GET.
#
# Usage: benches/ab.sh ROUNDS BIN_A BIN_B [-- tandem-bench args]
#   default tandem-bench args: -c 50 -P 16 -d 4000 -r 10000 --duration 3
# Example (is a change worth it?):
#   cp target/release/tandem-server /tmp/before   # ... change, rebuild ...
#   benches/ab.sh 3 /tmp/before target/release/tandem-server
# Prints one line per run: binary, then ops/s and p99 (us) of each test (PUT and GET unless the
# args name -t), the compactions and compaction's write amplification over the whole run
# (record bytes compaction copied per record byte written, prefill included; "wa ?" from a
# server whose STATS lack those counters).
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,/^set/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
ROUNDS=$1; shift
BINS=()
while [[ $# -gt 0 && $1 != -- ]]; do BINS+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(-c 50 -P 16 -d 4000 -r 10000 --duration 3)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${TANDEM_BENCH:-$ROOT/target/release/tandem-bench}
CLI=${TANDEM_CLI:-$ROOT/target/release/tandem-cli}
[[ -x $BENCH && -x $CLI ]] || { echo "ab.sh: build tandem-bench and tandem-cli first (cargo build --release)" >&2; exit 2; }
TESTS=(-t put,get)
for a in "${ARGS[@]}"; do [[ $a == -t || $a == --tests* ]] && TESTS=(); done
WORK=$(mktemp -d)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq "$ROUNDS"); do
    for bin in "${BINS[@]}"; do
        rm -rf "$WORK/data" "$WORK/out"
        "$bin" --listen 127.0.0.1:0 --data "$WORK/data" --fsync "${AB_FSYNC:-never}" >"$WORK/out" 2>/dev/null &
        PID=$!
        ADDR=""
        for _ in $(seq 200); do
            ADDR=$(sed -n 's/^tandem-server listening on //p' "$WORK/out")
            [[ -n $ADDR ]] && break
            sleep 0.05
        done
        [[ -n $ADDR ]] || { echo "ab.sh: $bin did not start" >&2; exit 1; }
        "$BENCH" -s "$ADDR" "${ARGS[@]}" --prefill --warmup 1 "${TESTS[@]}" -q --json >"$WORK/json" 2>"$WORK/err" || true
        "$CLI" -s "$ADDR" stats >"$WORK/stats" 2>/dev/null || true
        kill "$PID"; wait "$PID" 2>/dev/null || true
        python3 - "$bin" "$WORK/json" "$WORK/stats" <<'PY'
import json, sys
tests = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
stats = dict(l.strip().split(":", 1) for l in open(sys.argv[3]) if ":" in l)
written = int(stats.get("storage_bytes_written", 0))
wa = "%.3f" % (int(stats["storage_compaction_bytes_copied"]) / written) if written else "?"
print(sys.argv[1], " ".join("%s %d p99 %d" % (t["test"], t["ops_per_sec"], t["p99_us"])
                            for t in tests if t["test"] != "prefill"),
      "compactions", stats.get("storage_compactions", "?"), "wa", wa)
PY
    done
done
