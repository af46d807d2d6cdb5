#!/usr/bin/env python3
"""Hostile-input figures of one wsbeat binary, for the before/after table of the hardening work.

Usage: scripts/hostile.py PATH/TO/wsbeat [SILENT_SECONDS]

Starts the binary on loopback ports in front of its own --demo upstream and prints one line per
figure: the status a 64 KiB request head gets, how many of 50 silent admin connections are
still open after SILENT_SECONDS (default 7) and how many descriptors wsbeat holds for them, the
status of CONNECT and of a /../ path, the client listener's backlog (ss), and what clients get
when wsbeat runs out of descriptors under small open-files limits.
Only loopback is used; every wait is bounded.
"""
import json
import os
import socket
import subprocess
import sys
import time


def start(binary, nofile=None):
    argv = [binary, "--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--log-format", "json", "--worker-threads", "1"]
    if nofile is not None:
        argv = ["sh", "-c", 'ulimit -n "$1"; shift; exec "$@"', "sh", str(nofile)] + argv
    # Read by versions that have the flag, ignored by older ones: no limit to protect wsbeat.
    env = dict(os.environ, WSBEAT_MAX_CONNECTIONS="100000")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    deadline = time.time() + 10
    while time.time() < deadline:
        line = proc.stdout.readline()
        try:
            fields = json.loads(line)["fields"]
        except (ValueError, KeyError):
            continue
        if fields.get("message") == "listening":
            def addr(a):
                host, port = a.rsplit(":", 1)
                return host, int(port)
            return proc, addr(fields["listen_addr"]), addr(fields["admin_addr"])
    proc.kill()
    sys.exit("wsbeat did not log 'listening'")


def status(addr, request, timeout=5):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return "EOF"
            data += chunk
        return data.split(b"\r\n", 1)[0].decode()


def upgrade(path, extra=b""):
    return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + b"\r\n")


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def silent_still_open(addr, n, seconds, pid):
    before = fds(pid)
    conns = [socket.create_connection(addr, timeout=2) for _ in range(n)]
    time.sleep(1)
    print("descriptors wsbeat holds for %d silent admin connections: %d"
          % (n, fds(pid) - before))
    time.sleep(seconds - 1)
    still = 0
    for c in conns:
        c.setblocking(False)
        try:
            still += 0 if c.recv(1) == b"" else 1
        except BlockingIOError:
            still += 1
        except OSError:
            pass
        c.close()
    return still


def exhaust(binary):
    """Under small open-files limits, opens sessions until one is refused; returns the status
    lines of the refusals (wsbeat's own descriptors run out, not the upstream's)."""
    refusals = []
    for nofile in range(24, 32):
        proc, addr, _ = start(binary, nofile)
        held = []
        try:
            for _ in range(64):
                try:
                    s = socket.create_connection(addr, timeout=0.5)
                    held.append(s)
                    s.sendall(upgrade(b"/"))
                    line = s.recv(4096).split(b"\r\n", 1)[0].decode()
                except OSError:
                    break
                if not line.startswith("HTTP/1.1 101"):
                    refusals.append(line)
                    break
        finally:
            for s in held:
                s.close()
            proc.kill()
            proc.wait()
    return refusals


def main():
    binary = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 7
    proc, addr, admin = start(binary)
    try:
        big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"x" * 4000) for i in range(16))
        print("64 KiB request head:", status(addr, upgrade(b"/", big)))
        print("CONNECT:", status(addr, b"CONNECT bank.example:443 HTTP/1.1\r\nHost: bank.example:443\r\n\r\n"))
        print("GET /../secret upgrade:", status(addr, upgrade(b"/../secret")))
        print("GET /%2e%2e/secret upgrade:", status(addr, upgrade(b"/%2e%2e/secret")))
        ss = subprocess.run(["ss", "-ltnH", "sport = :%d" % addr[1]], capture_output=True, text=True)
        print("client listener backlog (ss Send-Q):", ss.stdout.split()[2] if ss.stdout else "?")
        print("silent admin connections still open after %gs: %d of 50"
              % (seconds, silent_still_open(admin, 50, seconds, proc.pid)))
    finally:
        proc.kill()
        proc.wait()
    print("out of descriptors (--demo upstream in the same process, open-files limit 24-31):",
          exhaust(binary))


if __name__ == "__main__":
    main()
