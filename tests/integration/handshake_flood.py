#!/usr/bin/env python3
"""Unauthenticated peers against a brick's connection budget and buffers.

Usage:
  handshake_flood.py slots HOST PORT KEYFILE MAX_CONNECTIONS
    Idle sockets that never say HELLO must not lock keyed clients out, and
    authenticated clients keep their slots while more idle sockets arrive.
  handshake_flood.py frames HOST PORT KEYFILE BRICK_PID
    Before the handshake completes, only HELLO/AUTH-sized frames are read: a
    larger frame is refused on its header, and partial 2 MiB frames from many
    peers pin no memory in the brick.
Prints one line per step; exits 0 when every step behaved as documented.
"""
import hashlib
import hmac
import os
import socket
import struct
import sys
import time

import brick_wire
from brick_wire import HDR, MAGIC, TIMEOUT, connect

HELLO, AUTH, STAT, WRITE = brick_wire.HELLO, brick_wire.AUTH, brick_wire.STAT, brick_wire.WRITE
EACCES, EAGAIN, EPROTO = 13, 11, 71
AUTH_REQUIRED = 1
MiB = 1 << 20
failures = []


def read_reply(s):
    return brick_wire.read_reply(s, reset_is_close=True)


def step(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures.append(what)


def frame(opcode, payload=b"", request_id=1, claimed_len=None):
    n = len(payload) if claimed_len is None else claimed_len
    return HDR.pack(MAGIC, 1, opcode, 0, 0, n, request_id, 0) + payload


def closed_by_brick(s):
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def session(host, port, key):
    """HELLO + AUTH; returns (socket, None) or (None, why)."""
    s = connect(host, port)
    client_nonce = os.urandom(32)
    s.sendall(frame(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0) + client_nonce))
    r = read_reply(s)
    if r is None:
        return None, "closed before the HELLO reply"
    if r[1] != 0:
        return None, "HELLO status %d" % r[1]
    flags = struct.unpack_from("<I", r[2], 4)[0]
    server_nonce = r[2][40:72]
    if not flags & AUTH_REQUIRED:
        return None, "the brick does not require AUTH"
    proof = hmac.new(key, b"pbrick-v1 client" + server_nonce + client_nonce, hashlib.sha256).digest()
    s.sendall(frame(AUTH, proof, request_id=2))
    r = read_reply(s)
    if r is None:
        return None, "closed before the AUTH reply"
    if r[1] != 0:
        s.close()
        return None, "AUTH status %d" % r[1]
    return s, None


def stat(s):
    try:
        s.sendall(frame(STAT, request_id=3))
        r = read_reply(s)
    except OSError as e:
        return "error: %s" % e
    if r is None:
        return "closed"
    return "status %d" % r[1]


def idle_sockets(host, port, n):
    out = []
    for _ in range(n):
        out.append(connect(host, port))
    time.sleep(0.3)  # the brick accepts them
    return out


def slots(host, port, key, max_connections):
    idle = idle_sockets(host, port, 24)
    sessions = []
    for i in range(max_connections):
        s, why = session(host, port, key)
        if s is None:
            step(False, "keyed client %d of %d with 24 idle sockets open: %s" % (i + 1, max_connections, why))
            return
        sessions.append(s)
    step(True, "%d keyed clients authenticated while 24 unauthenticated sockets sat idle" % max_connections)
    idle += idle_sockets(host, port, 100)
    answers = [stat(s) for s in sessions]
    step(all(a == "status 0" for a in answers),
         "after 100 more idle sockets the %d authenticated clients are still served (%s)" %
         (max_connections, ", ".join(sorted(set(answers)))))
    s, why = session(host, port, key)
    step(s is None and why == "AUTH status %d" % EAGAIN,
         "one authenticated client too many is refused with EAGAIN after AUTH (%s)" % (why or "accepted"))
    sessions.pop().close()
    time.sleep(0.2)
    s, why = session(host, port, key)
    step(s is not None and stat(s) == "status 0",
         "with a slot free again, a keyed client gets in past 124 idle sockets (%s)" % (why or "served"))
    for s in idle:
        s.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def frames(host, port, key, pid):
    big = 24 + 2 * MiB
    s = connect(host, port)
    s.settimeout(2.0)
    s.sendall(frame(WRITE, b"", claimed_len=big) + b"x" * 1000)
    try:
        r = read_reply(s)
    except socket.timeout:
        r = "no reply within 2 s"
    step(isinstance(r, tuple) and r[1] == EPROTO and closed_by_brick(s),
         "a WRITE header claiming 2 MiB before HELLO: EPROTO on its header, then closed (%s)" % (r,))

    s = connect(host, port)
    s.sendall(frame(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0) + os.urandom(32)))
    r = read_reply(s)
    step(r is not None and r[1] == 0, "HELLO answered")
    s.settimeout(2.0)
    s.sendall(frame(WRITE, b"", request_id=2, claimed_len=big) + b"x" * 1000)
    try:
        r = read_reply(s)
    except socket.timeout:
        r = "no reply within 2 s"
    step(isinstance(r, tuple) and r[1] == EACCES and closed_by_brick(s),
         "a WRITE header claiming 2 MiB after HELLO, before AUTH: EACCES on its header, then closed (%s)" % (r,))

    before = rss_kib(pid)
    peers = []
    for _ in range(24):
        p = connect(host, port)
        p.settimeout(2.0)
        try:
            p.sendall(frame(WRITE, b"", claimed_len=big) + b"y" * MiB)
        except OSError:
            pass  # the brick closed on the header: what it should do
        peers.append(p)
    time.sleep(0.5)
    grown = rss_kib(pid) - before
    step(grown < 8 * 1024,
         "24 peers sending 1 MiB of a 2 MiB frame before HELLO: the brick grew by %d KiB (limit 8192)" % grown)
    for p in peers:
        p.close()
    s, why = session(host, port, key)
    step(s is not None and stat(s) == "status 0", "a keyed client is served afterwards (%s)" % (why or "served"))


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ("slots", "frames"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port, keyfile, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    key = open(keyfile, "rb").read()
    if key.endswith(b"\n"):
        key = key[:-1]
    if sys.argv[1] == "slots":
        slots(host, port, key, n)
    else:
        frames(host, port, key, n)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
