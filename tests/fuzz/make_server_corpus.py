#!/usr/bin/env python3
# Writes the seed corpus for server_fuzz (tests/fuzz/corpus/server/): one
# session per file, byte 0 choosing it (% 3 - 0: no key, 1: key, before HELLO;
# 2: key, after the harness's own HELLO + AUTH; // 3 % 3 the store's medium;
# // 9 % 2 one or two connections), then the frames the client sends, laid
# out as in docs/protocol.md.
# Run once from the repository root; the outputs are committed.
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "server")
MAGIC = 0x4B524250
MB2 = 2 << 20
SYNC_READ, PERSIST_RPC, FENCE_FEATURE = 1 << 0, 1 << 1, 1 << 5
HELLO, AUTH, STAT, ALLOC, FREE, MAP, UNMAP, LIST, READ, WRITE, PERSIST, FENCE = range(1, 13)
NO_KEY, KEY, AUTHENTICATED = 0, 1, 2


def frame(op, payload=b"", rid=1, claimed=None):
    n = len(payload) if claimed is None else claimed
    return struct.pack("<IBBHIIQQ", MAGIC, 1, op, 0, 0, n, rid, 0) + payload


def hello(rid=1, features=SYNC_READ | PERSIST_RPC):
    return frame(HELLO, struct.pack("<HHIQ", 1, 1, 0, features) + bytes(range(32)), rid)


def addr(op, vaddr, rid):
    return frame(op, struct.pack("<Q", vaddr), rid)


def map_(vaddr, flags, rid):
    return frame(MAP, struct.pack("<QII", vaddr, flags, 0), rid)


def io(op, rkey, remote, length, data=b"", rid=1):
    return frame(op, struct.pack("<IIQII", rkey, 0, remote, length, 0) + data, rid)


def persist(ranges, rid):
    body = struct.pack("<II", len(ranges), 0)
    for rkey, remote, length in ranges:
        body += struct.pack("<IIQQ", rkey, 0, remote, length)
    return frame(PERSIST, body, rid)


def fence(scope, writer, channel, rid):
    return frame(FENCE, struct.pack("<Q", scope) + bytes([writer]) * 16 + struct.pack("<Q", channel), rid)


# The brick's rkeys and addresses are random: a seed cannot know them. In the
# authenticated session the harness maps vaddr 0 itself and rewrites rkey 1
# (and the remote_addr's offset) to its handle; other rkeys are refused.
control = (addr(ALLOC, 0, 2) + addr(ALLOC, MB2, 3) + map_(0, 3, 4) + map_(MB2, 1, 5) + frame(STAT, rid=6) +
           frame(LIST, struct.pack("<QII", 0, 4096, 0), rid=7) + addr(UNMAP, 0, 8) + addr(FREE, 0, 9))
data = (io(WRITE, 0x1234ABCD, 0x7F3A00000000, 8, b"pbrick!\n", rid=10) +
        io(READ, 0x1234ABCD, 0x7F3A00000000, 8, rid=11) +
        persist([(0x1234ABCD, 0x7F3A00000000, 4096)], 12) + persist([], 13))

FILES = {
    "no_key_session": bytes([NO_KEY]) + hello() + control + data,
    "no_key_stat_only": bytes([NO_KEY]) + hello() + frame(STAT, rid=2),
    "no_key_second_hello": bytes([NO_KEY]) + hello() + hello(rid=2),
    "no_key_frame_before_hello": bytes([NO_KEY]) + addr(ALLOC, 0, 1),
    "no_key_big_frame_before_hello": bytes([NO_KEY]) + frame(WRITE, b"x" * 64, claimed=24 + MB2),
    "no_key_fences": bytes([NO_KEY]) + hello(features=SYNC_READ | PERSIST_RPC | FENCE_FEATURE) +
    fence(0, 1, 0, 2) + fence(0, 1, 0, 3) + fence(0, 2, 5, 4) + control + data +
    frame(FENCE, b"\0" * 31, rid=20),
    "no_key_fence_not_granted": bytes([NO_KEY]) + hello() + fence(MB2, 1, 1, 2) + frame(STAT, rid=3),
    "key_hello_then_stat": bytes([KEY]) + hello() + frame(STAT, rid=2),
    "key_wrong_auth": bytes([KEY]) + hello() + frame(AUTH, bytes(32), rid=2),
    "key_auth_without_hello": bytes([KEY]) + frame(AUTH, bytes(32)),
    "authenticated_session": bytes([AUTHENTICATED]) + control + data,
    "authenticated_auth_again": bytes([AUTHENTICATED]) + frame(AUTH, bytes(32), rid=2),
    "authenticated_write_read": bytes([AUTHENTICATED]) + io(WRITE, 1, 4096, 4, b"abcd", rid=4) +
    io(READ, 1, 4096, 4, rid=5) + persist([(1, 4096, 4)], 6) + io(READ, 1, MB2 - 4, 8, rid=7),
    "authenticated_unmap_then_read": bytes([AUTHENTICATED]) + io(WRITE, 1, 0, 1, b"z", rid=2) +
    addr(UNMAP, 0, 3) + io(READ, 1, 0, 1, rid=4) + addr(FREE, 0, 5),
}

# Two connections (byte 0 // 9 % 2 == 1): a frame whose request_id has bit 63
# set goes to the second. Both say HELLO and FENCE; the second's FENCE cuts
# the first off when it names the same scope and the same writer and channel
# (a reconnect) or another writer, and leaves it alone for another scope.
B = 1 << 63
TWO = 9


def both_fence(second_scope, second_writer, second_channel):
    feats = SYNC_READ | PERSIST_RPC | FENCE_FEATURE
    first = (hello(rid=1, features=feats) + fence(0, 1, 0, 2) + addr(ALLOC, 0, 3) + map_(0, 3, 4) +
             io(WRITE, 0x1234ABCD, 0, 4, b"abcd", rid=5) + frame(STAT, rid=6) + addr(FREE, MB2, 7))
    second = (hello(rid=B | 1, features=feats) + fence(second_scope, second_writer, second_channel, B | 2) +
              addr(ALLOC, MB2, B | 3) + frame(STAT, rid=B | 4) + persist([], B | 5))
    # Interleaved frame by frame, as two queues would send them.
    out, a, b = b"", split_frames(first), split_frames(second)
    for i in range(max(len(a), len(b))):
        out += (a[i] if i < len(a) else b"") + (b[i] if i < len(b) else b"")
    return out


def split_frames(stream):
    frames, pos = [], 0
    while pos < len(stream):
        n = struct.unpack_from("<I", stream, pos + 12)[0]
        frames.append(stream[pos:pos + 32 + n])
        pos += 32 + n
    return frames


FILES["two_fence_reconnect"] = bytes([NO_KEY + TWO]) + both_fence(0, 1, 0)
FILES["two_fence_other_writer"] = bytes([NO_KEY + TWO]) + both_fence(0, 2, 0)
FILES["two_fence_other_scope"] = bytes([NO_KEY + TWO]) + both_fence(MB2, 1, 0)
FILES["two_fence_same_writer_other_channel"] = bytes([NO_KEY + TWO]) + both_fence(0, 1, 1)
FILES["two_key_sessions"] = bytes([KEY + TWO]) + hello() + hello(rid=B | 1) + frame(AUTH, bytes(32), rid=B | 2)
FILES["file_two_fence_reconnect"] = bytes([NO_KEY + 3 + TWO]) + both_fence(0, 1, 0)

# The same sessions on the other media (byte 0 // 3): 1 a store posing as a
# page-cache file (sync points wait for an fdatasync), 2 one whose fdatasync
# fails.
for medium, prefix in ((1, "file_"), (2, "failing_sync_")):
    for name in ("no_key_session", "no_key_fences", "authenticated_session", "authenticated_write_read",
                 "authenticated_unmap_then_read"):
        blob = FILES[name]
        FILES[prefix + name] = bytes([blob[0] + 3 * medium]) + blob[1:]

os.makedirs(OUT, exist_ok=True)
for name, blob in FILES.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(blob)
print(f"wrote {len(FILES)} files to {OUT}")
