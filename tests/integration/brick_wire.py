"""The brick's TCP framing (docs/protocol.md §3-4), for the raw-frame test clients.

Shared by garbage.py and handshake_flood.py: one definition of the header and
of reading a reply, so both speak the documented format.
"""
import socket
import struct

MAGIC = 0x4B524250
HDR = struct.Struct("<IBBHIIQQ")  # magic version opcode flags status payload_len request_id reserved
HELLO, AUTH, STAT, ALLOC, FREE, MAP, UNMAP, LIST, READ, WRITE = range(1, 11)
REPLY = 1  # the flags bit of a reply
TIMEOUT = 5.0


def header(opcode, payload_len, request_id=1, magic=MAGIC, version=1, flags=0, status=0, reserved=0):
    return HDR.pack(magic, version, opcode, flags, status, payload_len, request_id, reserved)


def connect(host, port):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def recv_exact(s, n, reset_is_close=False):
    """n bytes, or None when the brick closed first (and, with reset_is_close,
    when it reset the connection; otherwise ConnectionResetError propagates)."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            if reset_is_close:
                return None
            raise
        if not chunk:
            return None
        buf += chunk
    return buf


def read_reply(s, reset_is_close=False):
    """(opcode, status, payload), or None when the brick closed. A frame that is
    not a reply (bad magic, no REPLY flag) raises RuntimeError."""
    raw = recv_exact(s, HDR.size, reset_is_close)
    if raw is None:
        return None
    magic, _, opcode, flags, status, plen, _, _ = HDR.unpack(raw)
    if magic != MAGIC or not flags & REPLY:
        raise RuntimeError(f"not a reply frame: magic {magic:#x}, flags {flags:#x}")
    payload = recv_exact(s, plen, reset_is_close) if plen else b""
    return opcode, status, payload
