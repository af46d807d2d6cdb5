#!/usr/bin/env python3
"""How often a program that reads slowly shows its reading to the sender's kernel.

A sender on 127.0.0.1 keeps its socket full; a receiver reads 4 KiB at a time at RATE bytes per
second with the kernel's default buffers. The sender notes each time the bytes its peer has
acknowledged (written minus SIOCOUTQ) move on, and prints the longest and the 90th-percentile
gap between two such moves after the first second. Nothing else shows the sender that the peer
reads: this gap is what a proxy has to go on (README, "Limit").

    python3 bench/window-gap.py [RATE ...]     default: 65536 131072 262144 1048576

Linux only; loopback only; about 6 s per rate.
"""

import fcntl
import select
import socket
import struct
import sys
import threading
import time

SIOCOUTQ = 0x5411
CHUNK = 4096
SECONDS = 6.0


def reader(port, rate, stop):
    sock = socket.create_connection(("127.0.0.1", port))
    due = time.monotonic()
    while time.monotonic() < stop:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        due += CHUNK / rate
        if not sock.recv(CHUNK):
            break
    sock.close()


def measure(rate):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    start = time.monotonic()
    stop = start + SECONDS
    port = listener.getsockname()[1]
    thread = threading.Thread(target=reader, args=(port, rate, stop + 1), daemon=True)
    thread.start()
    sock, _ = listener.accept()
    sock.setblocking(False)
    block = b"x" * 65536
    written = last_acked = 0
    last_move = start
    gaps = []
    while time.monotonic() < stop:
        try:
            written += sock.send(block)
        except BlockingIOError:
            pass
        queued = struct.unpack("i", fcntl.ioctl(sock, SIOCOUTQ, b"\0" * 4))[0]
        acked = written - queued
        now = time.monotonic()
        if acked > last_acked:
            if now - start > 1.0:
                gaps.append(now - last_move)
            last_acked, last_move = acked, now
        select.select([], [sock], [], 0.002)
    gaps.append(time.monotonic() - last_move)
    sock.close()
    listener.close()
    gaps.sort()
    return last_acked / SECONDS, gaps[-1], gaps[int(len(gaps) * 0.9)]


def main():
    rates = [int(r) for r in sys.argv[1:]] or [65536, 131072, 262144, 1048576]
    print("read rate   taken/s    longest gap   p90 gap")
    for rate in rates:
        taken, longest, p90 = measure(rate)
        print(f"{rate / 1024:6.0f} KiB/s {taken / 1024:6.0f} KiB/s {longest * 1000:8.0f} ms {p90 * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
