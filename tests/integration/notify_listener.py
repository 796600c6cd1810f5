#!/usr/bin/env python3
"""A stand-in for systemd's notification socket, for the integration tests.

    notify_listener.py SOCKET LOG

Binds a unix datagram socket at SOCKET (point NOTIFY_SOCKET at it) and appends
one line per line of every datagram received to LOG:

    <seconds since the listener started, 3 decimals> <sender pid or -> <line>

e.g. "1.503 4242 WATCHDOG=1". Each line is flushed as it arrives, so a test can
poll LOG. The credentials of the sender are read as systemd does (SO_PASSCRED),
which lets a test check which process sent a message. Exits on SIGTERM or
SIGINT, removing SOCKET.
"""
import os
import signal
import socket
import struct
import sys
import time


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: notify_listener.py SOCKET LOG\n")
        return 2
    path, log_path = sys.argv[1], sys.argv[2]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)

    def stop(_signum, _frame):
        try:
            os.unlink(path)
        except OSError:
            pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    start = time.monotonic()
    cred_size = struct.calcsize("3i")
    with open(log_path, "a", buffering=1) as log:
        # A line the test waits for, so it knows the socket is bound.
        log.write("%.3f - LISTENING\n" % 0.0)
        while True:
            data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(cred_size))
            pid = "-"
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= cred_size:
                    pid = str(struct.unpack("3i", payload[:cred_size])[0])
            stamp = time.monotonic() - start
            for line in data.decode("utf-8", "replace").split("\n"):
                if line:
                    log.write("%.3f %s %s\n" % (stamp, pid, line))


if __name__ == "__main__":
    sys.exit(main())
