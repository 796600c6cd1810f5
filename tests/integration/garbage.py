#!/usr/bin/env python3
"""Sends malformed frames to a brick and checks it answers or closes, never hangs.

Usage: garbage.py [--skip-auth] HOST PORT
Exits 0 when every connection got the documented treatment, 1 otherwise.
"""
import os
import random
import socket
import struct
import sys

from brick_wire import HELLO, AUTH, STAT, ALLOC, MAP, LIST, WRITE, TIMEOUT
from brick_wire import connect, header, read_reply

EACCES, EPROTO, EBADMSG, EPROTONOSUPPORT, EINVAL = 13, 71, 74, 93, 22
failures = []


def hello_payload():
    return struct.pack("<HHIQ", 1, 1, 0, 1) + os.urandom(32)


def expect_closed(s, name):
    """The brick must close the connection (after at most one error reply)."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except socket.timeout:
        failures.append(f"{name}: connection still open after {TIMEOUT}s")
    except ConnectionResetError:
        return True
    return False


def case_error_then_close(host, port, name, frame, want_status):
    s = connect(host, port)
    s.sendall(frame)
    try:
        reply = read_reply(s)
    except (socket.timeout, ConnectionResetError) as e:
        failures.append(f"{name}: {e}")
        return
    if want_status is None:
        if reply is not None:
            failures.append(f"{name}: got a reply {reply[:2]}, want the connection closed without one")
    elif reply is None:
        failures.append(f"{name}: closed without an error reply")
    elif reply[1] != want_status:
        failures.append(f"{name}: status {reply[1]}, want {want_status}")
    expect_closed(s, name)
    s.close()
    print(f"ok: {name}")


def handshake(s):
    s.sendall(header(HELLO, 48) + hello_payload())
    reply = read_reply(s)
    assert reply is not None and reply[1] == 0, f"HELLO failed: {reply}"
    return reply


def main():
    args = sys.argv[1:]
    skip_auth = args and args[0] == "--skip-auth"
    if skip_auth:
        args = args[1:]
    host, port = args[0], int(args[1])

    if skip_auth:
        s = connect(host, port)
        handshake(s)
        s.sendall(header(ALLOC, 8) + struct.pack("<Q", 0x40000000))
        reply = read_reply(s)
        print(f"ALLOC before AUTH: status {reply[1] if reply else 'closed'}")
        expect_closed(s, "alloc before auth")
        return 1 if failures else 0

    # A peer that stalls halfway through a header must not block anyone else.
    staller = connect(host, port)
    staller.sendall(header(HELLO, 48)[:13])

    case_error_then_close(host, port, "bad magic", header(HELLO, 48, magic=0xDEADBEEF) + hello_payload(), None)
    case_error_then_close(host, port, "bad version", header(HELLO, 48, version=9) + hello_payload(), EPROTONOSUPPORT)
    case_error_then_close(host, port, "unknown opcode", header(200, 0), EBADMSG)
    case_error_then_close(host, port, "opcode zero", header(0, 0), EBADMSG)
    case_error_then_close(host, port, "unknown flag", header(HELLO, 48, flags=0x80) + hello_payload(), EPROTO)
    case_error_then_close(host, port, "reply flag in request", header(HELLO, 48, flags=1) + hello_payload(), EPROTO)
    case_error_then_close(host, port, "nonzero status in request", header(HELLO, 48, status=5) + hello_payload(), EPROTO)
    case_error_then_close(host, port, "nonzero reserved", header(HELLO, 48, reserved=1) + hello_payload(), EPROTO)
    case_error_then_close(host, port, "HELLO with wrong length", header(HELLO, 47) + hello_payload()[:47], EBADMSG)
    case_error_then_close(host, port, "huge WRITE length", header(WRITE, 0xFFFFFFF0), EBADMSG)
    case_error_then_close(host, port, "frame before HELLO", header(STAT, 0), EPROTO)
    case_error_then_close(host, port, "HELLO min > max",
                          header(HELLO, 48) + struct.pack("<HHIQ", 2, 1, 0, 0) + os.urandom(32), EINVAL)
    case_error_then_close(host, port, "no common version",
                          header(HELLO, 48) + struct.pack("<HHIQ", 7, 9, 0, 0) + os.urandom(32), EPROTONOSUPPORT)

    # Field errors after a good handshake get an error reply; the connection lives on.
    s = connect(host, port)
    handshake(s)
    s.sendall(header(ALLOC, 8, request_id=7) + struct.pack("<Q", 0x1234))
    reply = read_reply(s)
    if reply is None or reply[1] != EINVAL:
        failures.append(f"unaligned ALLOC: {reply}")
    s.sendall(header(MAP, 16, request_id=8) + struct.pack("<QII", 0, 0x80, 0))
    reply = read_reply(s)
    if reply is None or reply[1] != EINVAL:
        failures.append(f"MAP with unknown flags: {reply}")
    s.sendall(header(STAT, 0, request_id=9))
    reply = read_reply(s)
    if reply is None or reply[1] != 0 or len(reply[2]) != 64:
        failures.append(f"STAT after field errors: {reply}")
    # Then a header-level error on the same connection closes it.
    s.sendall(header(LIST, 17, request_id=10) + b"\0" * 17)
    reply = read_reply(s)
    if reply is None or reply[1] != EBADMSG:
        failures.append(f"LIST with wrong length: {reply}")
    expect_closed(s, "LIST with wrong length")
    print("ok: field errors keep the connection, framing errors close it")

    # Truncated frames: the peer goes away mid-frame.
    for cut in (1, 16, 31, 40, 60):
        s = connect(host, port)
        s.sendall((header(HELLO, 48) + hello_payload())[:cut])
        s.shutdown(socket.SHUT_WR)
        expect_closed(s, f"truncated at {cut}")
        s.close()
    print("ok: truncated frames")

    # Random bytes, with and without a valid handshake first.
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    for i in range(40):
        s = connect(host, port)
        if i % 2:
            handshake(s)
        s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048))))
        s.shutdown(socket.SHUT_WR)
        expect_closed(s, f"random bytes #{i}")
        s.close()
    print("ok: random bytes")

    # The stalled peer did not stop the others; a fresh client is served.
    s = connect(host, port)
    handshake(s)
    s.sendall(header(STAT, 0))
    reply = read_reply(s)
    if reply is None or reply[1] != 0:
        failures.append(f"STAT while a peer stalls: {reply}")
    s.close()
    staller.close()
    print("ok: a stalled peer blocks nobody")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
