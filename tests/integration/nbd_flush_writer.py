#!/usr/bin/env python3
"""Crash-test client for the pbrick NBD export: writes numbered records and
logs which of them a completed FLUSH acknowledged, or verifies them later.

A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple replies,
one request at a time) written against the NBD protocol document, so it needs
nothing but python3.

  nbd_flush_writer.py write SOCKET --round R --records N --flush-every K --ack-log FILE
      Writes records 0..N-1 (record i: 64 KiB at offset i * 64 KiB, contents a
      function of (R, i)). After every K writes, and after the last, it sends
      FLUSH; when the FLUSH succeeds it appends the number of records that
      flush covers to FILE (one line each, written and fsynced at once).
      Exits 0 when every request succeeded, 1 (naming the failed request)
      otherwise.

  nbd_flush_writer.py verify SOCKET --round R --records N
      Reads records 0..N-1 and checks their contents; prints
      "verified N records" and exits 0, or names each bad record and exits 1.

  nbd_flush_writer.py large SOCKET --bytes N
      As a client that never asked for block size limits may: one WRITE of N
      bytes (a function of N) at offset 1 MiB + 512, FLUSH, one READ of them
      back; prints "wrote and read back N bytes in one request each" and exits
      0, or says what differs and exits 1.
"""

import argparse
import hashlib
import os
import socket
import struct
import sys

RECORD = 64 * 1024

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLYMAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3


class NbdError(Exception):
    pass


class NbdClient:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.handle = 0
        self.size = None
        self._handshake()

    def _recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise NbdError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def _handshake(self):
        magic, opt, hflags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt != IHAVEOPT or not hflags & FLAG_FIXED_NEWSTYLE:
            raise NbdError("not a fixed newstyle NBD server")
        cflags = FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)
        self.sock.sendall(struct.pack(">I", cflags))
        name = b""
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            if magic != REPLYMAGIC:
                raise NbdError("bad option reply magic")
            payload = self._recv(length)
            if rtype & 0x80000000:
                raise NbdError("NBD_OPT_GO refused: reply 0x%x %s" % (rtype, payload.decode(errors="replace")))
            if rtype == REP_INFO and len(payload) >= 12:
                (info,) = struct.unpack(">H", payload[:2])
                if info == INFO_EXPORT:
                    self.size, _ = struct.unpack(">QH", payload[2:12])
            if rtype == REP_ACK:
                break
        if self.size is None:
            raise NbdError("server did not send the export size")

    def _request(self, cmd, offset, length, data=b""):
        self.handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self.handle, offset, length) + data)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self.handle:
            raise NbdError("bad reply (magic 0x%x, handle %d)" % (magic, handle))
        if error:
            raise NbdError("%s at %d+%d failed: %s" % (
                {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_FLUSH: "FLUSH"}[cmd], offset, length,
                os.strerror(error) if error < 200 else "NBD error %d" % error))
        return self._recv(length) if cmd == CMD_READ else b""

    def pread(self, offset, length):
        return self._request(CMD_READ, offset, length)

    def pwrite(self, offset, data):
        self._request(CMD_WRITE, offset, len(data), data)

    def flush(self):
        self._request(CMD_FLUSH, 0, 0)

    def close(self):
        try:
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        finally:
            self.sock.close()


def record(rnd, i):
    """64 KiB that name the round and the record and differ everywhere."""
    seed = hashlib.sha256(b"pbrick-nbd-crash %d %d" % (rnd, i)).digest()
    head = struct.pack("<8sQQ", b"PBRKREC\0", rnd, i)
    body = (seed * (RECORD // len(seed) + 1))[: RECORD - len(head)]
    return head + body


def describe(data):
    magic, rnd, i = struct.unpack("<8sQQ", data[:24])
    if magic != b"PBRKREC\0":
        return "no record header (first bytes %s)" % data[:16].hex()
    return "record %d of round %d" % (i, rnd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["write", "verify", "large"])
    ap.add_argument("socket")
    ap.add_argument("--round", type=int)
    ap.add_argument("--records", type=int)
    ap.add_argument("--flush-every", type=int, default=8)
    ap.add_argument("--ack-log")
    ap.add_argument("--bytes", type=int)
    a = ap.parse_args()
    if a.mode == "large" and a.bytes is None:
        ap.error("large needs --bytes")
    if a.mode != "large" and (a.round is None or a.records is None):
        ap.error("%s needs --round and --records" % a.mode)

    try:
        c = NbdClient(a.socket)
        if a.mode == "large":
            # Every 4 KiB names its own index: a part that lands elsewhere shows.
            seed = hashlib.sha256(b"pbrick-nbd-large %d" % a.bytes).digest()
            filler = (seed * (4096 // len(seed)))[8:]
            data = b"".join(struct.pack("<Q", k) + filler for k in range(a.bytes // 4096 + 1))[: a.bytes]
            at = 1024 * 1024 + 512
            c.pwrite(at, data)
            c.flush()
            got = c.pread(at, a.bytes)
            c.close()
            if got != data:
                first = next(i for i in range(a.bytes) if got[i] != data[i])
                print("read back differs from byte %d on" % first)
                return 1
            print("wrote and read back %d bytes in one request each" % a.bytes)
            return 0
        if a.records * RECORD > c.size:
            sys.exit("export of %d bytes is too small for %d records" % (c.size, a.records))
        if a.mode == "write":
            log = open(a.ack_log, "a")

            def ack(n):
                c.flush()
                log.write("%d\n" % n)
                log.flush()
                os.fsync(log.fileno())

            for i in range(a.records):
                c.pwrite(i * RECORD, record(a.round, i))
                if (i + 1) % a.flush_every == 0:
                    ack(i + 1)
            if a.records % a.flush_every:
                ack(a.records)
            c.close()
            print("wrote and flushed %d records" % a.records)
            return 0
        bad = 0
        for i in range(a.records):
            got = c.pread(i * RECORD, RECORD)
            if got != record(a.round, i):
                bad += 1
                print("record %d of round %d is wrong: found %s" % (i, a.round, describe(got)))
        c.close()
        if bad:
            print("%d of %d records wrong" % (bad, a.records))
            return 1
        print("verified %d records" % a.records)
        return 0
    except (NbdError, OSError) as e:
        print("nbd_flush_writer: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
