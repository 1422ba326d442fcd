#!/usr/bin/env bash
# Issue #10 on a real small file system: a server whose disk has room for about one segment and a
# half, written by overwrites of 8 keys with 4000-byte values (all dead bytes but 32 KB), then
# restarted and written again. Needs root (mount). Prints refused writes, STATS and disk use.
#
#   storage/scripts/small_disk.sh [tmpfs|ext4] [DISK_MIB=100] [SEGMENT_MIB=64] [PUTS=40000]
#
# Binaries from $TANDEM_BIN_DIR (default target/release). Exit status 0 if no write was refused.
set -euo pipefail
fs=${1:-tmpfs} disk=${2:-100} seg=${3:-64} puts=${4:-40000}
bin=${TANDEM_BIN_DIR:-target/release}
work=$(mktemp -d)
mnt=$work/mnt
mkdir "$mnt"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
if [ "$fs" = tmpfs ]; then
    mount -t tmpfs -o size="${disk}m" tmpfs "$mnt"
else
    truncate -s "${disk}M" "$work/disk.img"
    mkfs.ext4 -q "$work/disk.img"
    mount -o loop "$work/disk.img" "$mnt"
fi

start() {
    "$bin/tandem-server" --listen 127.0.0.1:0 --data "$mnt/data" --segment-mib "$seg" >"$work/out" 2>>"$work/log" &
    pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/^tandem-server listening on //p' "$work/out")
        [ -n "$addr" ] && return
        sleep 0.1
    done
    echo "server did not start:" >&2
    cat "$work/log" >&2
    exit 2
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
load() { # $1 = number of PUTs; prints the CLI's summary line
    awk -v n="$1" 'BEGIN { v = sprintf("%4000s", ""); gsub(/ /, "v", v); for (i = 0; i < n; i++) print "put k" i % 8 " " v }' |
        "$bin/tandem-cli" --server "$addr" --pipe 2>/dev/null || true
}
stats() {
    "$bin/tandem-cli" --server "$addr" stats | grep -E '^(storage_errors|storage_segments|storage_live_bytes|storage_dead_bytes|storage_disk_bytes|storage_compactions)' | tr '\n' ' '
    echo
    df -h "$mnt" | tail -1
}

echo "== $fs of ${disk} MiB, ${seg} MiB segments, $puts PUTs of 8 keys x 4000 bytes"
start
load "$puts"
stats
stop
echo "== after a restart, $((puts / 4)) more PUTs"
start
summary=$(load $((puts / 4)))
echo "$summary"
stats
stop
ls -l "$mnt/data"
case "$summary" in *"errors 0,"*) exit 0 ;; *) exit 1 ;; esac
