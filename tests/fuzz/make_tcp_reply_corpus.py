#!/usr/bin/env python3
# Writes the seed corpus for tcp_reply_fuzz (tests/fuzz/corpus/tcp_reply/):
# requests in flight on a TcpChannel and a brick's answers to them, laid out
# as tcp_reply_fuzz.cc reads its input. Run once from the repository root;
# the outputs are committed.
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "tcp_reply")
MAGIC = 0x4B524250
REPLY = 1
READ, WRITE, PERSIST = 9, 10, 11
EIO, EKEYREJECTED = 5, 129


def reply(op, slot, payload=b"", status=0, seq=None):
    """A reply to the request in `slot` (sequence slot + 1 unless given)."""
    rid = ((slot + 1 if seq is None else seq) << 16) | slot
    return struct.pack("<IBBHIIQQ", MAGIC, 1, op, REPLY, status, len(payload), rid, 0) + payload


def req_read(kb):  # a READ of kb KiB (a multiple of 512 bytes)
    return ((kb * 2 - 1) << 3) | 0


def req_write(kb):
    return ((kb * 2 - 1) << 3) | 1


SYNC, SYNC_CHAINED = 2, 6


# flags: 1 PERSIST_RPC granted, 2 sends taken off the queue at once, 4 a new
# WRITE into each slot a reply freed.
def seed(flags, piece, requests, stream):
    return bytes([flags, piece, len(requests) - 1]) + bytes(requests) + stream


def data(n, start):
    return bytes((start + i * 7) & 0xFF for i in range(n))


SEEDS = {
    # Two 4 KiB READs answered in order, received a byte at a time.
    "reads_in_order": seed(2, 0, [req_read(4), req_read(4)],
                           reply(READ, 0, data(4096, 1)) + reply(READ, 1, data(4096, 2))),
    # The same answered out of order, in large receives.
    "reads_out_of_order": seed(2, 200, [req_read(4), req_read(1)],
                               reply(READ, 1, data(1024, 3)) + reply(READ, 0, data(4096, 4))),
    # A WRITE, then a FLUSH: a 1-byte sync READ through the written handle.
    "write_then_sync": seed(2, 3, [req_write(4), SYNC],
                            reply(WRITE, 0) + reply(READ, 1, b"\x00")),
    # The sync READ refused (the handle died): with PERSIST_RPC a PERSIST
    # naming no range confirms it, in the slot the READ left (sequence 3).
    "sync_refused_persist": seed(3, 5, [req_write(4), SYNC_CHAINED],
                                 reply(WRITE, 0) + reply(READ, 1, status=EKEYREJECTED) +
                                 reply(PERSIST, 1, seq=3)),
    # Without PERSIST_RPC the same refusal fails the FLUSH with EIO.
    "sync_refused_no_persist": seed(2, 5, [req_write(4), SYNC],
                                    reply(WRITE, 0) + reply(READ, 1, status=EKEYREJECTED)),
    # Errors carry no payload.
    "read_error": seed(2, 1, [req_read(2), req_write(2)],
                       reply(READ, 0, status=EIO) + reply(WRITE, 1, status=EKEYREJECTED)),
    # A reply naming a request not in flight (wrong sequence): the channel
    # refuses the stream.
    "stray_reply": seed(2, 10, [req_read(1)], reply(READ, 0, data(1024, 5), seq=9)),
    # Every slot in flight, all WRITEs but one sync, the sync refused and
    # confirmed, the rest answered.
    "full_queue": seed(3, 50, [req_write(1)] * 15 + [SYNC],
                       b"".join(reply(WRITE, i) for i in range(15)) +
                       reply(READ, 15, status=EKEYREJECTED) + reply(PERSIST, 15, seq=17)),
    # Nothing taken off the send queue, every slot a WRITE, and the brick
    # answers four of them before their bytes left (guessing the ids): the
    # channel refuses that (new WRITEs taking the slots would overwrite what
    # is still to be sent).
    "answered_before_sent": seed(4, 50, [req_write(1)] * 16,
                                 b"".join(reply(WRITE, i) for i in range(4))),
}

os.makedirs(OUT, exist_ok=True)
for name, blob in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(blob)
