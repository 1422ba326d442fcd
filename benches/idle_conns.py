#!/usr/bin/env python3
"""Resident memory of tandem-server holding many idle connections.

Starts a private server (release build by default), measures its RSS, opens N connections
(optionally sending one PING on each, so every connection has allocated and then released
its buffers), and measures again: right after, and after the idle sweep has run.

    python3 benches/idle_conns.py --conns 10000 [--ping] [--server-bin target/release/tandem-server]
"""
import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

FRAME_LEN = 4096


def ping_frame(req_id):
    header = bytearray(48)
    header[0:4] = b"TDM\x01"
    struct.pack_into("<QII", header, 8, req_id, 0x01, 0)  # id, command PING, flags
    crc = zlib.crc32(bytes(header[8:48])) & 0xFFFFFFFF
    struct.pack_into("<I", header, 4, crc)
    return bytes(header) + bytes(FRAME_LEN - 48)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--ping", action="store_true", help="send one PING per connection and read the reply")
    ap.add_argument("--server-bin", default="target/release/tandem-server")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.conns + 64:
        sys.exit(f"open-file hard limit {hard} is too low for {args.conns} connections")

    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [args.server_bin, "--listen", "127.0.0.1:0", "--data", data,
             "--max-connections", str(args.conns + 100), "--idle-timeout", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
            addr = (host, int(port))
            base = rss_kib(server.pid)
            socks = []
            frame = ping_frame(1)
            for i in range(args.conns):
                s = socket.create_connection(addr)
                if args.ping:
                    s.sendall(frame)
                    got = 0
                    while got < FRAME_LEN:
                        chunk = s.recv(FRAME_LEN - got)
                        if not chunk:
                            sys.exit(f"connection {i} closed by the server")
                        got += len(chunk)
                socks.append(s)
            # Make sure the server has accepted them all: one more round trip on a new one.
            probe = socket.create_connection(addr)
            probe.sendall(ping_frame(2))
            probe.recv(FRAME_LEN)
            right_after = rss_kib(server.pid)
            time.sleep(2.5)  # the idle sweep frees buffers of connections quiet for 1 s
            settled = rss_kib(server.pid)
            n = len(socks)
            print(f"connections: {n} ({'one PING each' if args.ping else 'never used'})")
            print(f"rss before: {base / 1024:.1f} MiB")
            print(f"rss with connections: {right_after / 1024:.1f} MiB right after, {settled / 1024:.1f} MiB after the idle sweep")
            print(f"per connection: {(settled - base) * 1024 / n:.0f} bytes (after sweep), {(right_after - base) * 1024 / n:.0f} bytes (right after)")
            for s in socks:
                s.close()
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
