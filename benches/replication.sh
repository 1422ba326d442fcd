#!/usr/bin/env bash
# Replicated Tandem beside a standalone Tandem server and beside Redis with synchronous
# replication, measured by the same client (tandem-bench) back to back, several rounds,
# alternating the order of the targets. Prints medians (min-max) and the ratios
# cluster/standalone and cluster/redis-wait for throughput and latency.
#
# Targets, each started fresh on private loopback ports and temp dirs for every run:
#   standalone   one tandem-server
#   cluster      tandem-coordinator + three tandem-servers (R = 3); the load goes to the primary
#   redis-wait   a Redis primary with two replicas; every SET is followed by WAIT 2 0
#                (tandem-bench --protocol resp --wait 2), i.e. synchronous to both replicas
#
# Needs redis-server for redis-wait (apt-get install redis-server), or pass
# --targets "standalone cluster". Builds the release binaries.
#
# Usage: benches/replication.sh [options]
#   --rounds N          rounds (default 3)
#   --duration SECS     measured seconds per test (default 3)
#   --shapes "C:P ..."  connections:pipeline (default "1:1 50:1 50:16")
#   --size B            value bytes (default 4000)
#   --tests "T ..."     tandem-bench tests (default "put get")
#   --targets "X ..."   any of standalone cluster redis-wait (default all three)
#   --fsync MODE        every tandem-server's --fsync (default never; Redis has no persistence)
#   --server-args "..." more flags for every tandem-server, e.g. "--busy-poll-us 30"
#   --out FILE          also write the table (markdown) to FILE
#
# Run as root, it re-runs itself in its own session with a raised CPU share, as compare.sh
# does, so that other processes on the machine disturb it less.
set -euo pipefail

ORIGINAL_ARGS=("$@")
ROUNDS=3
DURATION=3
SHAPES="1:1 50:1 50:16"
SIZE=4000
TESTS="put get"
TARGETS="standalone cluster redis-wait"
FSYNC=never
SERVER_ARGS=""
OUT=""
KEYSPACE=10000

die() { echo "replication.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --shapes) SHAPES=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --tests) TESTS=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --fsync) FSYNC=$2; shift 2 ;;
        --server-args) SERVER_ARGS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
for t in $TARGETS; do [[ $t == standalone || $t == cluster || $t == redis-wait ]] || die "unknown target $t"; done
if [[ " $TARGETS " == *" redis-wait "* ]] && ! command -v redis-server >/dev/null; then
    die "redis-server not found: install it (apt-get install redis-server) or pass --targets \"standalone cluster\""
fi

if [[ -z ${TANDEM_REPL_SESSION:-} ]] && command -v setsid >/dev/null; then
    export TANDEM_REPL_SESSION=1
    exec setsid --wait "$0" "${ORIGINAL_ARGS[@]}"
fi
[[ $EUID -eq 0 && -w /proc/self/autogroup ]] && echo -15 >/proc/self/autogroup

ROOT=$(cd "$(dirname "$0")/.." && pwd)
echo "replication.sh: building release binaries ..." >&2
(cd "$ROOT" && cargo build --release --quiet -p tandem-benches -p tandem-server -p tandem-client)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tandem-repl.XXXXXX")
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        port_in_use "$port" || { echo "$port"; return; }
    done
}
wait_port() { for _ in $(seq 1 200); do port_in_use "$1" && return 0; sleep 0.05; done; die "nothing listens on $1"; }

# Starts target $1; sets BENCH_ARGS (how tandem-bench reaches it).
start_target() {
    local dir
    dir=$(mktemp -d "$WORK/$1.XXXXXX")
    case $1 in
        standalone)
            local port; port=$(free_port)
            # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
            "$BIN/tandem-server" --listen "127.0.0.1:$port" --data "$dir/data" --fsync "$FSYNC" $SERVER_ARGS \
                >/dev/null 2>"$dir/log" &
            PIDS+=($!)
            wait_port "$port"
            BENCH_ARGS=(-s "127.0.0.1:$port")
            ;;
        cluster)
            local cport i port first=""
            cport=$(free_port)
            "$BIN/tandem-coordinator" --listen "127.0.0.1:$cport" --data "$dir/coord" >/dev/null 2>"$dir/coord.log" &
            PIDS+=($!)
            for i in 1 2 3; do
                port=$(free_port)
                [[ -z $first ]] && first=$port
                "$BIN/tandem-server" --listen "127.0.0.1:$port" --data "$dir/s$i" --coordinator "127.0.0.1:$cport" \
                    --id "s$i" --fsync "$FSYNC" $SERVER_ARGS >/dev/null 2>"$dir/s$i.log" &
                PIDS+=($!)
                wait_port "$port"
            done
            # Until the view is full and its primary serves.
            local ok=""
            for _ in $(seq 1 200); do
                local v addr
                v=$("$BIN/tandem-cli" --coordinator "127.0.0.1:$cport" --timeout 300 view --json 2>/dev/null || true)
                if echo "$v" | grep -q '"backups":\[{[^]]*},{'; then
                    addr=$(echo "$v" | sed -E 's/.*"primary":\{"id":"[^"]*","addr":"([^"]*)".*/\1/')
                    if "$BIN/tandem-cli" status --server "$addr" --json 2>/dev/null | grep -q '"serving":true'; then
                        ok=1
                        break
                    fi
                fi
                sleep 0.05
            done
            [[ -n $ok ]] || die "the cluster did not form"
            BENCH_ARGS=(--coordinator "127.0.0.1:$cport")
            ;;
        redis-wait)
            local p0 p1 p2 p
            p0=$(free_port); p1=$(free_port); p2=$(free_port)
            redis-server --port "$p0" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
                --repl-diskless-sync-delay 0 --logfile "$dir/r0.log" --daemonize no >/dev/null &
            PIDS+=($!)
            wait_port "$p0"
            for p in "$p1" "$p2"; do
                redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
                    --logfile "$dir/r$p.log" --replicaof 127.0.0.1 "$p0" --daemonize no >/dev/null &
                PIDS+=($!)
                wait_port "$p"
            done
            # Until both replicas are in sync (WAIT 2 would otherwise block or count short).
            local online=""
            for _ in $(seq 1 400); do
                if [[ $(redis-cli -p "$p0" info replication 2>/dev/null | grep -c "state=online") == 2 ]]; then
                    online=1
                    break
                fi
                sleep 0.05
            done
            [[ -n $online ]] || die "the Redis replicas did not come online"
            
            BENCH_ARGS=(-s "127.0.0.1:$p0" --protocol resp --wait 2)
            ;;
    esac
}

run_one() { # target shape round
    local target=$1 shape=$2 round=$3 c p tests line
    c=${shape%%:*}; p=${shape##*:}
    start_target "$target"
    tests=$(echo "$TESTS" | tr ' ' ',')
    # --prefill writes every key first, so GETs hit; one JSON object per test follows.
    "$BIN/tandem-bench" "${BENCH_ARGS[@]}" -c "$c" -P "$p" -d "$SIZE" -r "$KEYSPACE" -t "$tests" \
        --duration "$DURATION" --prefill --json 2>/dev/null >"$WORK/run.json" || true
    python3 - "$WORK/run.json" "$target" "$shape" "$round" >>"$RESULTS" <<'PY'
import json, sys
path, target, shape, rnd = sys.argv[1:5]
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    print("\t".join([target, shape, r["test"].lower(), rnd, str(r["ops_per_sec"]), str(r["p50_us"]),
                     str(r["p99_us"]), str(r["errors"])]))
PY
    grep -P "^$target\t$shape\t.*\t$round\t" "$RESULTS" | awk -F'\t' '{print "round " $4 " " $1 " " $2 " " $3 ": " $5 " ops/s p50 " $6 " us p99 " $7 " us errors " $8}' >&2
    stop_all
}

read -r -a target_list <<<"$TARGETS"
for round in $(seq 1 "$ROUNDS"); do
    for shape in $SHAPES; do
        n=${#target_list[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "${target_list[$(((i + round) % n))]}" "$shape" "$round"
        done
    done
done

python3 - "$RESULTS" "$TARGETS" "$SIZE" "$FSYNC" "$ROUNDS" "$DURATION" "$SERVER_ARGS" >"$WORK/table.md" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
targets = sys.argv[2].split()
size, fsync, rounds, duration = sys.argv[3:7]
extra = (", tandem-server " + sys.argv[7]) if len(sys.argv) > 7 and sys.argv[7] else ""
data = {}
for t, shape, test, rnd, ops, p50, p99, err in rows:
    data.setdefault((shape, test, t), []).append((float(ops), float(p50), float(p99), err))
def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[0], xs[-1]
print(f"{size}-byte values, --fsync {fsync}{extra}, {rounds} rounds x {duration} s, medians (min-max)\n")
print("| shape | test | " + " | ".join(f"{t} ops/s" for t in targets) + " | " + " | ".join(f"{t} p50/p99 us" for t in targets) + " | cluster/standalone | cluster/redis-wait |")
print("| --- | --- | " + " | ".join(["---"] * (2 * len(targets))) + " | --- | --- |")
for (shape, test) in sorted({(s, te) for s, te, _ in data}, key=lambda x: (int(x[0].split(":")[0]), int(x[0].split(":")[1]), x[1])):
    cells, lat, meds = [], [], {}
    for t in targets:
        runs = data.get((shape, test, t), [])
        if not runs:
            cells.append("-"); lat.append("-"); continue
        m, lo, hi = med([r[0] for r in runs])
        meds[t] = (m, med([r[1] for r in runs])[0], med([r[2] for r in runs])[0])
        bad = any(r[3] not in ("0",) for r in runs)
        cells.append(f"{m:,.0f} ({lo:,.0f}-{hi:,.0f}){' !errors' if bad else ''}")
        lat.append(f"{meds[t][1]:,.0f} / {meds[t][2]:,.0f}")
    def ratio(a, b):
        if a in meds and b in meds and meds[b][0] > 0:
            return f"{meds[a][0] / meds[b][0]:.2f}x ops, p50 {meds[a][1] / max(meds[b][1], 1):.2f}x"
        return "-"
    print(f"| {shape} | {test} | " + " | ".join(cells) + " | " + " | ".join(lat) + f" | {ratio('cluster', 'standalone')} | {ratio('cluster', 'redis-wait')} |")
PY
cat "$WORK/table.md"
[[ -n $OUT ]] && cp "$WORK/table.md" "$OUT"
if awk -F'\t' '$8 != "0" { bad = 1 } END { exit !bad }' "$RESULTS"; then
    echo "replication.sh: some runs counted errors (see the table)" >&2
    exit 1
fi
