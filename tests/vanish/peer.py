"""A WebSocket peer for tests/vanish.rs, run inside the network namespace the test made.
Standard library only; RFC 6455 by hand, so the test knows exactly what goes on the wire.

    peer.py server ADDR READ_RATE RCVBUF    listens on ADDR, port 0, prints "PORT <n>", serves
                                            one connection
    peer.py client HOST:PORT READ_RATE RCVBUF

After the handshake it prints "OPEN". Then it reads frames: it answers every ping with a pong
carrying the same payload (so it looks alive to wsbeat's heartbeat), discards data payloads,
and prints "READ <n>" each time the data payload read so far crosses a multiple of 256 KiB.
READ_RATE (bytes per second, 0 = as fast as possible) slows its reading down, so that a large
frame toward it stays in flight for a while. RCVBUF (bytes, 0 = the kernel's autotuned default)
fixes its socket's receive buffer: a small one keeps what it has not read on wsbeat's side, so
that a frame toward a slow peer is really still being written. It sends nothing else and never closes: the test
makes its host vanish, then kills it. It exits when stdin closes, so it cannot outlive the test.
"""

import base64
import hashlib
import os
import socket
import struct
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024
REPORT_STEP = 256 * 1024
MAX_HEAD = 16 * 1024
HANDSHAKE_TIMEOUT = 20.0


def say(line):
    print(line, flush=True)


class Peer:
    def __init__(self, sock, client, rate):
        self.sock = sock
        self.client = client
        self.rate = rate
        self.buf = bytearray()
        self.started = time.monotonic()
        self.received = 0  # socket bytes, for the rate limit
        self.payload = 0  # data payload bytes, for the progress lines

    def fill(self):
        data = self.sock.recv(CHUNK)
        if not data:
            raise EOFError("connection closed by the other end")
        self.buf += data
        self.received += len(data)
        if self.rate > 0:
            due = self.started + self.received / self.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("HTTP head too long")
            self.fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end]
        return head

    def skip_payload(self, n):
        while n > 0:
            if not self.buf:
                self.fill()
            k = min(n, len(self.buf))
            del self.buf[:k]
            n -= k
            before = self.payload // REPORT_STEP
            self.payload += k
            if self.payload // REPORT_STEP != before:
                say(f"READ {self.payload}")

    def send(self, opcode, payload):
        head = bytes([0x80 | opcode])
        mask_bit = 0x80 if self.client else 0
        n = len(payload)
        if n < 126:
            head += bytes([mask_bit | n])
        elif n < 65536:
            head += bytes([mask_bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
        if self.client:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.sock.sendall(head + payload)

    def run_frames(self):
        while True:
            b0, b1 = self.take(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self.take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self.take(8))
            key = self.take(4) if b1 & 0x80 else None
            if opcode & 0x08:
                payload = self.take(n)
                if key:
                    payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
                if opcode == 0x9:
                    self.send(0xA, payload)
            else:
                self.skip_payload(n)


def header(head, name):
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            return v.strip()
    raise ValueError(f"no {name} header in {head!r}")


def new_socket(rcvbuf):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return sock


def serve(addr, rate, rcvbuf):
    listener = new_socket(rcvbuf)
    listener.bind((addr, 0))
    listener.listen(1)
    say(f"PORT {listener.getsockname()[1]}")
    listener.settimeout(HANDSHAKE_TIMEOUT)
    sock, _ = listener.accept()
    sock.settimeout(HANDSHAKE_TIMEOUT)
    peer = Peer(sock, client=False, rate=rate)
    key = header(peer.read_head(), "sec-websocket-key").encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    sock.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    sock.settimeout(None)
    say("OPEN")
    peer.run_frames()


def connect(hostport, rate, rcvbuf):
    host, _, port = hostport.rpartition(":")
    sock = new_socket(rcvbuf)
    sock.settimeout(HANDSHAKE_TIMEOUT)
    sock.connect((host, int(port)))
    peer = Peer(sock, client=True, rate=rate)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = peer.read_head()
    if not head.startswith("HTTP/1.1 101"):
        raise ValueError(f"handshake refused: {head!r}")
    sock.settimeout(None)
    say("OPEN")
    peer.run_frames()


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


def main():
    role, where, rate, rcvbuf = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    try:
        (serve if role == "server" else connect)(where, rate, rcvbuf)
    except Exception as e:  # noqa: BLE001 - any failure is reported to the test the same way
        print(f"peer.py {role}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
