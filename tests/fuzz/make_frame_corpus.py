#!/usr/bin/env python3
# Writes the seed corpus for frame_fuzz (tests/fuzz/corpus/frame/): one valid
# frame or short frame stream per file, laid out as in docs/protocol.md.
# Run once from the repository root; the outputs are committed.
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frame")
MAGIC = 0x4B524250
REPLY = 1
MB2 = 2 << 20
SYNC_READ, PERSIST_RPC, RDMA, AUTH_TRAILER = 1 << 0, 1 << 1, 1 << 2, 1 << 3


def frame(op, payload=b"", reply=False, status=0, rid=1):
    return struct.pack("<IBBHIIQQ", MAGIC, 1, op, REPLY if reply else 0, status,
                       len(payload), rid, 0) + payload


def nonce(start):
    return bytes((start + i) & 0xFF for i in range(32))


HELLO_REQ = struct.pack("<HHIQ", 1, 1, 0, SYNC_READ) + nonce(0)
HELLO_REP = (struct.pack("<HHIQII", 1, 0, 1, SYNC_READ, MB2, 0) + bytes(range(16)) + nonce(0x40) +
             nonce(0x80) + bytes(range(0xE0, 0xF0)))
# An RDMA connection: the reply grants RDMA and carries the 16-byte trailer
# (sync_rkey, reserved, sync_addr) after the 120 bytes above.
HELLO_REQ_RDMA = struct.pack("<HHIQ", 1, 1, 0, SYNC_READ | PERSIST_RPC | RDMA) + nonce(0)
HELLO_REP_RDMA = (struct.pack("<HHIQII", 1, 0, 1, PERSIST_RPC | RDMA, MB2, 0) + bytes(range(16)) +
                  nonce(0x40) + nonce(0x80) + bytes(range(0xE0, 0xF0)) +
                  struct.pack("<IIQ", 0x5EED1234, 0, 0x7F1200003000))
# A brick with a key over RDMA (AUTH_TRAILER): the HELLO reply has
# AUTH_REQUIRED and no trailer; the AUTH reply carries it.
HELLO_REQ_RDMA_KEY = struct.pack("<HHIQ", 1, 1, 0, PERSIST_RPC | RDMA | AUTH_TRAILER) + nonce(0)
HELLO_REP_RDMA_KEY = (struct.pack("<HHIQII", 1, 0, 1, PERSIST_RPC | RDMA | AUTH_TRAILER, MB2, 0) +
                      bytes(range(16)) + nonce(0x40) + nonce(0x80) + bytes(range(0xE0, 0xF0)))
AUTH_REP_RDMA = struct.pack("<IIQ", 0x5EED1234, 0, 0x3A5C00200000)
AUTH_REQ = nonce(0xC0)
STAT_REP = struct.pack("<QQQQ", 1024, 1000, 24, 3) + bytes(range(16)) + struct.pack("<IHHQ", MB2, 1, 1, 0)
MAP_REQ = struct.pack("<QII", 3 * MB2, 3, 0)
MAP_REP = struct.pack("<IIQQ", 0x1234ABCD, 3, 0x7F3A00000000, MB2)
LIST_REQ = struct.pack("<QII", 0, 4096, 0)
LIST_REP = (struct.pack("<IIQ", 2, 1, 10 * MB2) + struct.pack("<QQII", 0, 3, 0, 0) +
            struct.pack("<QQII", 5 * MB2, 2, 1, 0))
READ_REQ = struct.pack("<IIQII", 0x1234ABCD, 0, 0x7F3A00000000, 16, 0)
WRITE_REQ = struct.pack("<IIQII", 0x1234ABCD, 0, 0x7F3A00000010, 8, 0) + b"pbrick!\n"
# PERSIST: range_count, reserved, then ranges (rkey, reserved, remote_addr, length).
PERSIST_REQ = (struct.pack("<II", 2, 0) + struct.pack("<IIQQ", 0x1234ABCD, 0, 0x7F3A00000000, 4096) +
               struct.pack("<IIQQ", 0x1234ABCD, 0, 0x7F3A00100010, 8))
PERSIST_ALL_REQ = struct.pack("<II", 0, 0)  # every block mapped writable
# FENCE: scope, writer (16 bytes), channel.
FENCE_REQ = struct.pack("<Q", 0x40000000) + bytes(range(0xA0, 0xB0)) + struct.pack("<Q", 3)

FILES = {
    "hello_request": frame(1, HELLO_REQ),
    "hello_reply": frame(1, HELLO_REP, reply=True),
    "hello_reply_eprotonosupport": frame(1, reply=True, status=93),
    "auth_request": frame(2, AUTH_REQ, rid=2),
    "auth_reply_eacces": frame(2, reply=True, status=13, rid=2),
    "stat_request": frame(3),
    "stat_reply": frame(3, STAT_REP, reply=True),
    "alloc_request": frame(4, struct.pack("<Q", 3 * MB2)),
    "alloc_reply_enospc": frame(4, reply=True, status=28),
    "free_request": frame(5, struct.pack("<Q", 3 * MB2)),
    "map_request": frame(6, MAP_REQ),
    "map_reply": frame(6, MAP_REP, reply=True),
    "unmap_request": frame(7, struct.pack("<Q", 3 * MB2)),
    "list_request": frame(8, LIST_REQ),
    "list_reply": frame(8, LIST_REP, reply=True),
    "read_request": frame(9, READ_REQ),
    "read_reply": frame(9, bytes(16), reply=True),
    "write_request": frame(10, WRITE_REQ),
    "write_reply": frame(10, reply=True),
    "hello_request_rdma": frame(1, HELLO_REQ_RDMA),
    "hello_reply_rdma": frame(1, HELLO_REP_RDMA, reply=True),
    "hello_request_rdma_key": frame(1, HELLO_REQ_RDMA_KEY),
    "hello_reply_rdma_key": frame(1, HELLO_REP_RDMA_KEY, reply=True),
    "auth_reply_rdma": frame(2, AUTH_REP_RDMA, reply=True, rid=2),
    "persist_request": frame(11, PERSIST_REQ),
    "persist_request_all": frame(11, PERSIST_ALL_REQ),
    "fence_request": frame(12, FENCE_REQ),
    "fence_reply": frame(12, reply=True),
    "persist_reply": frame(11, reply=True),
    "persist_reply_ekeyrejected": frame(11, reply=True, status=129),
    # A client's session: HELLO, AUTH, ALLOC, MAP, WRITE, READ (sync-read).
    "session_requests": (frame(1, HELLO_REQ, rid=1) + frame(2, AUTH_REQ, rid=2) +
                         frame(4, struct.pack("<Q", 3 * MB2), rid=3) + frame(6, MAP_REQ, rid=4) +
                         frame(10, WRITE_REQ, rid=5) + frame(9, READ_REQ, rid=6)),
    "session_replies": (frame(1, HELLO_REP, reply=True, rid=1) + frame(2, reply=True, rid=2) +
                        frame(4, reply=True, rid=3) + frame(6, MAP_REP, reply=True, rid=4) +
                        frame(10, reply=True, rid=5) + frame(9, bytes(16), reply=True, rid=6)),
    # The control frames of an RDMA session (data moves by RDMA READ/WRITE, not
    # in frames): HELLO, AUTH, ALLOC, MAP, PERSIST.
    "rdma_session_requests": (frame(1, HELLO_REQ_RDMA, rid=1) + frame(2, AUTH_REQ, rid=2) +
                              frame(4, struct.pack("<Q", 3 * MB2), rid=3) + frame(6, MAP_REQ, rid=4) +
                              frame(11, PERSIST_REQ, rid=5)),
    "rdma_session_replies": (frame(1, HELLO_REP_RDMA, reply=True, rid=1) + frame(2, reply=True, rid=2) +
                             frame(4, reply=True, rid=3) + frame(6, MAP_REP, reply=True, rid=4) +
                             frame(11, reply=True, rid=5)),
}

os.makedirs(OUT, exist_ok=True)
for name, data in FILES.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(FILES)} files to {OUT}")
