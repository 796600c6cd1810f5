#!/usr/bin/env python3
# Writes the seed corpus for label_fuzz (tests/fuzz/corpus/label/): label slots,
# holder records and whole label blocks laid out as in docs/layout.md ("Volume
# label"), written from that document, not from the C++ encoder.
# Run once from the repository root; the outputs are committed.
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "label")
SLOT = 4096


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def seal(body):
    body = body.ljust(SLOT - 4, b"\0")
    return body + struct.pack("<I", crc32c(body))


def label(gen, flags=1, layout=1, index=0, bricks=3, name=b"vol0", size=96 << 20):
    b = b"PBRKVLBL" + struct.pack("<HHIQ", 1, 0, flags, gen)
    b += bytes(range(0x10, 0x20))  # volume uuid
    b += struct.pack("<IIII", layout, index, bricks, len(name)) + name.ljust(64, b"\0")
    b += struct.pack("<QQQ", size, 1700000000, 0)
    for i in range(bricks):
        b += bytes([(0x40 + 16 * i) & 0xff] * 16) + struct.pack("<QQ", (4 << 20) * i, 0)
    return seal(b)


def holder():
    b = b"PBRKHOLD" + struct.pack("<HHI", 1, 0, 0) + bytes(range(0x10, 0x20))
    b += struct.pack("<QQ", 4242, 1764676800) + b"host-a".ljust(64, b"\0") + b"nbdkit".ljust(32, b"\0")
    return seal(b)


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "label_stripe": label(7),
        "label_single_uncommitted": label(1, flags=0, layout=0, bricks=1, name=b""),
        "label_64_bricks": label(3, index=63, bricks=64, name=b"x" * 63),
        "holder": holder(),
        "block_two_generations": label(8) + label(7) + holder(),
        "block_torn": label(8)[:100] + b"\xff" * (SLOT - 100) + label(7) + holder(),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


main()
