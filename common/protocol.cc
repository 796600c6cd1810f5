// Wire protocol v1: encoders and validating decoders (docs/protocol.md).
//
// Every field is moved with explicit little-endian byte loads and stores, never by
// casting a buffer to a struct: the layout on the wire is then independent of the
// host's endianness, alignment and padding rules, and reading a misaligned
// pointer is never undefined behaviour.
//
// The decoders are the trust boundary of the brick: each check below exists so
// that code after it may rely on the value without re-checking. Checks run in a
// fixed order (sizes, then reserved fields, then field domains) so that a given
// malformed message always yields the same errno.

#include "common/protocol.h"

#include <cassert>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

namespace pbrick::proto {
namespace {

// Sequential little-endian writer over a buffer the caller sized.
class Writer {
 public:
  explicit Writer(uint8_t* out) : p_(out) {}

  void u8(uint8_t v) { *p_++ = v; }
  void u16(uint16_t v) {
    p_[0] = static_cast<uint8_t>(v);
    p_[1] = static_cast<uint8_t>(v >> 8);
    p_ += 2;
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; i++) p_[i] = static_cast<uint8_t>(v >> (8 * i));
    p_ += 4;
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; i++) p_[i] = static_cast<uint8_t>(v >> (8 * i));
    p_ += 8;
  }
  template <size_t N>
  void bytes(const std::array<uint8_t, N>& a) {
    std::memcpy(p_, a.data(), N);
    p_ += N;
  }
  const uint8_t* pos() const { return p_; }

 private:
  uint8_t* p_;
};

// Sequential little-endian reader. Callers check the total size first, so the
// reader itself never runs past the end of the span it was given.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : p_(in.data()) {}

  uint8_t u8() { return *p_++; }
  uint16_t u16() {
    uint16_t v = static_cast<uint16_t>(p_[0] | (p_[1] << 8));
    p_ += 2;
    return v;
  }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= static_cast<uint32_t>(p_[i]) << (8 * i);
    p_ += 4;
    return v;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(p_[i]) << (8 * i);
    p_ += 8;
    return v;
  }
  template <size_t N>
  void bytes(std::array<uint8_t, N>* a) {
    std::memcpy(a->data(), p_, N);
    p_ += N;
  }

 private:
  const uint8_t* p_;
};

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

Error bad_size(const char* what, size_t got, size_t want) {
  return Error(EBADMSG, std::string(what) + ": payload is " + std::to_string(got) +
                            " bytes, expected " + std::to_string(want));
}

Error bad_reserved(const char* what) {
  return Error(EBADMSG, std::string(what) + ": reserved field is not zero");
}

Error bad_field(const char* what, const std::string& why) {
  return Error(EINVAL, std::string(what) + ": " + why);
}

bool block_aligned(uint64_t vaddr) { return (vaddr & (kBlockSize - 1)) == 0; }

// The payload length a frame of (opcode, direction, status) may carry. Every
// frame except the data-carrying ones has exactly one legal size; that is what
// lets a receiver reject a lying length before reading the payload.
struct LenRange {
  size_t min;
  size_t max;
};

LenRange allowed_payload(Opcode op, bool reply, uint32_t status) {
  if (reply && status != 0) return {0, 0};  // errors carry no payload
  if (!reply) {
    switch (op) {
      case Opcode::kHello: return {kHelloRequestSize, kHelloRequestSize};
      case Opcode::kAuth: return {kAuthRequestSize, kAuthRequestSize};
      case Opcode::kStat: return {0, 0};
      case Opcode::kAlloc:
      case Opcode::kFree:
      case Opcode::kUnmap: return {kAddrRequestSize, kAddrRequestSize};
      case Opcode::kMap: return {kMapRequestSize, kMapRequestSize};
      case Opcode::kList: return {kListRequestSize, kListRequestSize};
      case Opcode::kRead: return {kIoRequestSize, kIoRequestSize};
      case Opcode::kWrite: return {kIoRequestSize + 1, kIoRequestSize + kMaxIoSize};
      case Opcode::kPersist:
        return {kPersistRequestFixedSize,
                kPersistRequestFixedSize + kMaxPersistRanges * kPersistRangeSize};
      case Opcode::kFence: return {kFenceRequestSize, kFenceRequestSize};
    }
  } else {
    switch (op) {
      case Opcode::kHello: return {kHelloReplySize, kHelloReplySize + kHelloRdmaTrailerSize};
      case Opcode::kAuth: return {0, kHelloRdmaTrailerSize};
      case Opcode::kStat: return {kStatReplySize, kStatReplySize};
      case Opcode::kAlloc:
      case Opcode::kFree:
      case Opcode::kUnmap: return {0, 0};
      case Opcode::kMap: return {kMapReplySize, kMapReplySize};
      case Opcode::kList:
        return {kListReplyFixedSize, kListReplyFixedSize + kMaxListExtents * kExtentSize};
      case Opcode::kRead: return {1, kMaxIoSize};
      case Opcode::kWrite: return {0, 0};
      case Opcode::kPersist: return {0, 0};
      case Opcode::kFence: return {0, 0};
    }
  }
  // Unreachable: decode_header() checked the opcode range before calling.
  return {0, 0};
}

// Linux errno numbers of the status codes the protocol defines. The wire value
// is written out instead of taken from <errno.h> so that the wire stays Linux
// numbering even if this file is ever built where errno values differ.
struct WireCode {
  int errnum;
  uint32_t wire;
};
constexpr WireCode kWireCodes[] = {
    {EPERM, 1},      {ENOENT, 2},     {EIO, 5},           {E2BIG, 7},
    {EAGAIN, 11},    {ENOMEM, 12},    {EACCES, 13},       {EFAULT, 14},
    {EBUSY, 16},     {EEXIST, 17},    {EINVAL, 22},       {EFBIG, 27},
    {ENOSPC, 28},    {EROFS, 30},     {ERANGE, 34},       {ENOSYS, 38},
    {EPROTO, 71},    {EBADMSG, 74},   {EOVERFLOW, 75},    {EPROTONOSUPPORT, 93},
    {ENOTSUP, 95},   {ENOBUFS, 105},  {ESHUTDOWN, 108},   {ETIMEDOUT, 110},  {EUCLEAN, 117},
    {EKEYREJECTED, 129},
};
constexpr uint32_t kWireEIO = 5;

#ifdef __linux__
constexpr bool wire_codes_match_host() {
  for (const WireCode& c : kWireCodes) {
    if (static_cast<uint32_t>(c.errnum) != c.wire) return false;
  }
  return true;
}
static_assert(wire_codes_match_host(), "wire status table disagrees with Linux errno numbers");
#endif

// Every frame that may travel on an RDMA connection fits one message.
static_assert(kHeaderSize + kHelloReplySize + kHelloRdmaTrailerSize <= kRdmaMessageSize);
static_assert(kHeaderSize + kPersistRequestFixedSize + kMaxPersistRanges * kPersistRangeSize <=
              kRdmaMessageSize);
static_assert(kHeaderSize + kListReplyFixedSize + kRdmaMaxListExtents * kExtentSize <=
              kRdmaMessageSize);
static_assert(kRdmaMaxListExtents >= 1 && kRdmaMaxListExtents <= kMaxListExtents);

}  // namespace

const char* opcode_name(Opcode op) {
  switch (op) {
    case Opcode::kHello: return "HELLO";
    case Opcode::kAuth: return "AUTH";
    case Opcode::kStat: return "STAT";
    case Opcode::kAlloc: return "ALLOC";
    case Opcode::kFree: return "FREE";
    case Opcode::kMap: return "MAP";
    case Opcode::kUnmap: return "UNMAP";
    case Opcode::kList: return "LIST";
    case Opcode::kRead: return "READ";
    case Opcode::kWrite: return "WRITE";
    case Opcode::kPersist: return "PERSIST";
    case Opcode::kFence: return "FENCE";
  }
  return "?";
}

uint32_t wire_status(int errnum) {
  if (errnum == 0) return 0;
  for (const WireCode& c : kWireCodes) {
    if (c.errnum == errnum) return c.wire;
  }
  return kWireEIO;
}

int errno_from_wire(uint32_t status) {
  if (status == 0) return 0;
  for (const WireCode& c : kWireCodes) {
    if (c.wire == status) return c.errnum;
  }
  return EIO;
}

// ---- Encoding ------------------------------------------------------------------

void encode_header(const FrameHeader& h, uint8_t* out) {
  Writer w(out);
  w.u32(h.magic);
  w.u8(h.version);
  w.u8(static_cast<uint8_t>(h.opcode));
  w.u16(h.flags);
  w.u32(h.status);
  w.u32(h.payload_len);
  w.u64(h.request_id);
  w.u64(h.reserved);
  assert(w.pos() == out + kHeaderSize);
}

void encode_hello_request(const HelloRequest& m, uint8_t* out) {
  Writer w(out);
  w.u16(m.min_version);
  w.u16(m.max_version);
  w.u32(0);  // reserved: aligns features
  w.u64(m.features);
  w.bytes(m.client_nonce);
  assert(w.pos() == out + kHelloRequestSize);
}

void encode_hello_reply(const HelloReply& m, uint8_t* out) {
  Writer w(out);
  w.u16(m.version);
  w.u16(0);  // reserved: aligns hello_flags
  w.u32(m.hello_flags);
  w.u64(m.features);
  w.u32(m.max_io_size);
  w.u32(0);  // reserved: aligns brick_uuid to 8
  w.bytes(m.brick_uuid);
  w.bytes(m.server_nonce);
  w.bytes(m.server_proof);
  w.bytes(m.boot_id);
  if (m.has_rdma_trailer) {
    w.u32(m.sync_rkey);
    w.u32(0);  // reserved: aligns sync_addr
    w.u64(m.sync_addr);
  }
  assert(w.pos() == out + hello_reply_size(m));
}

bool hello_has_rdma_trailer(uint64_t features, uint32_t hello_flags) {
  if ((features & kFeatureRdma) == 0) return false;
  return (features & kFeatureAuthTrailer) == 0 || (hello_flags & kHelloAuthRequired) == 0;
}

size_t hello_reply_size(const HelloReply& m) {
  return kHelloReplySize + (m.has_rdma_trailer ? kHelloRdmaTrailerSize : 0);
}

void encode_auth_request(const AuthRequest& m, uint8_t* out) {
  Writer w(out);
  w.bytes(m.client_proof);
  assert(w.pos() == out + kAuthRequestSize);
}

void encode_auth_reply(const AuthReply& m, uint8_t* out) {
  Writer w(out);
  if (m.has_rdma_trailer) {
    w.u32(m.sync_rkey);
    w.u32(0);  // reserved: aligns sync_addr
    w.u64(m.sync_addr);
  }
  assert(w.pos() == out + auth_reply_size(m));
}

size_t auth_reply_size(const AuthReply& m) { return m.has_rdma_trailer ? kHelloRdmaTrailerSize : 0; }

void encode_addr_request(const AddrRequest& m, uint8_t* out) {
  Writer w(out);
  w.u64(m.vaddr);
  assert(w.pos() == out + kAddrRequestSize);
}

void encode_map_request(const MapRequest& m, uint8_t* out) {
  Writer w(out);
  w.u64(m.vaddr);
  w.u32(m.map_flags);
  w.u32(0);  // reserved: pads to 8
  assert(w.pos() == out + kMapRequestSize);
}

void encode_map_reply(const MapReply& m, uint8_t* out) {
  Writer w(out);
  w.u32(m.rkey);
  w.u32(m.map_flags);
  w.u64(m.remote_addr);
  w.u64(m.length);
  assert(w.pos() == out + kMapReplySize);
}

void encode_list_request(const ListRequest& m, uint8_t* out) {
  Writer w(out);
  w.u64(m.cursor);
  w.u32(m.max_extents);
  w.u32(0);  // reserved: pads to 8
  assert(w.pos() == out + kListRequestSize);
}

size_t list_reply_size(size_t extent_count) {
  return kListReplyFixedSize + extent_count * kExtentSize;
}

void encode_list_reply(const ListReply& m, uint8_t* out) {
  // More extents than this would produce a frame every peer must reject.
  assert(m.extents.size() <= kMaxListExtents);
  Writer w(out);
  w.u32(static_cast<uint32_t>(m.extents.size()));
  w.u32(m.list_flags);
  w.u64(m.next_cursor);
  for (const Extent& e : m.extents) {
    w.u64(e.start_vaddr);
    w.u64(e.block_count);
    w.u32(e.extent_flags);
    w.u32(e.tier);
  }
  assert(w.pos() == out + list_reply_size(m.extents.size()));
}

void encode_stat_reply(const StatReply& m, uint8_t* out) {
  Writer w(out);
  w.u64(m.capacity_blocks);
  w.u64(m.free_blocks);
  w.u64(m.allocated_blocks);
  w.u64(m.mapped_blocks);
  w.bytes(m.brick_uuid);
  w.u32(m.block_size);
  w.u16(m.protocol_version);
  w.u16(m.store_kind);
  w.u32(m.slow_capacity_blocks);
  w.u32(m.slow_free_blocks);
  assert(w.pos() == out + kStatReplySize);
}

void encode_io_request(const IoRequest& m, uint8_t* out) {
  Writer w(out);
  w.u32(m.rkey);
  w.u32(0);  // reserved: aligns remote_addr
  w.u64(m.remote_addr);
  w.u32(m.length);
  w.u32(0);  // reserved: pads to 8
  assert(w.pos() == out + kIoRequestSize);
}

size_t persist_request_size(size_t range_count) {
  return kPersistRequestFixedSize + range_count * kPersistRangeSize;
}

void encode_persist_request(const PersistRequest& m, uint8_t* out) {
  // More ranges than this would produce a frame every brick must reject.
  assert(m.ranges.size() <= kMaxPersistRanges);
  Writer w(out);
  w.u32(static_cast<uint32_t>(m.ranges.size()));
  w.u32(0);  // reserved: aligns the ranges
  for (const PersistRange& range : m.ranges) {
    w.u32(range.rkey);
    w.u32(0);  // reserved: aligns remote_addr
    w.u64(range.remote_addr);
    w.u64(range.length);
  }
  assert(w.pos() == out + persist_request_size(m.ranges.size()));
}

void encode_fence_request(const FenceRequest& m, uint8_t* out) {
  Writer w(out);
  w.u64(m.scope);
  w.bytes(m.writer);
  w.u64(m.channel);
  assert(w.pos() == out + kFenceRequestSize);
}

// ---- Decoding ------------------------------------------------------------------

size_t frame_size(std::span<const uint8_t> header) {
  Reader r(header.subspan(12, 4));
  return kHeaderSize + r.u32();
}

std::optional<FrameHeader> salvage_request_header(std::span<const uint8_t> header) {
  Reader r(header);
  if (r.u32() != kMagic) return std::nullopt;
  FrameHeader h;
  r.u8();  // version
  h.opcode = static_cast<Opcode>(r.u8());
  Reader id(header.subspan(16, 8));
  h.request_id = id.u64();
  return h;
}

uint32_t peek_io_length(std::span<const uint8_t> payload) {
  Reader r(payload.subspan(16, 4));
  return r.u32();
}

Result<FrameHeader> decode_header(std::span<const uint8_t> bytes, bool expect_reply) {
  if (bytes.size() < kHeaderSize) {
    return Error(EBADMSG, "frame header: truncated (" + std::to_string(bytes.size()) + " of " +
                              std::to_string(kHeaderSize) + " bytes)");
  }
  Reader r(bytes);
  FrameHeader h;
  h.magic = r.u32();
  h.version = r.u8();
  uint8_t opcode = r.u8();
  h.flags = r.u16();
  h.status = r.u32();
  h.payload_len = r.u32();
  h.request_id = r.u64();
  h.reserved = r.u64();

  // Magic first: a peer that is not speaking pbrick at all should be told so,
  // not that some field of what it sent is out of range.
  if (h.magic != kMagic) return Error(EPROTO, "frame header: bad magic " + hex(h.magic));
  if (h.version < kMinVersion || h.version > kMaxVersion) {
    return Error(EPROTONOSUPPORT,
                 "frame header: unsupported protocol version " + std::to_string(h.version));
  }
  if ((h.flags & ~kKnownHeaderFlags) != 0) {
    return Error(EPROTO, "frame header: unknown flags " + hex(h.flags));
  }
  if (h.reserved != 0) return Error(EPROTO, "frame header: reserved field is not zero");
  if (h.is_reply() != expect_reply) {
    return Error(EPROTO, expect_reply ? "frame header: expected a reply, got a request"
                                      : "frame header: expected a request, got a reply");
  }
  if (!expect_reply && h.status != 0) {
    return Error(EPROTO, "frame header: request carries status " + std::to_string(h.status));
  }
  if (opcode < 1 || opcode > kMaxOpcode) {
    return Error(EBADMSG, "frame header: unknown opcode " + std::to_string(opcode));
  }
  h.opcode = static_cast<Opcode>(opcode);
  LenRange allowed = allowed_payload(h.opcode, expect_reply, h.status);
  if (h.payload_len < allowed.min || h.payload_len > allowed.max) {
    std::string want = allowed.min == allowed.max
                           ? std::to_string(allowed.min)
                           : std::to_string(allowed.min) + ".." + std::to_string(allowed.max);
    return Error(EBADMSG, std::string("frame header: ") + opcode_name(h.opcode) +
                              (expect_reply ? " reply" : " request") + " with payload_len " +
                              std::to_string(h.payload_len) + ", allowed " + want);
  }
  if (expect_reply && h.opcode == Opcode::kList && h.status == 0 &&
      (h.payload_len - kListReplyFixedSize) % kExtentSize != 0) {
    return Error(EBADMSG, "frame header: LIST reply payload_len " +
                              std::to_string(h.payload_len) + " is not a whole number of extents");
  }
  if (expect_reply && h.opcode == Opcode::kHello && h.status == 0 &&
      h.payload_len != kHelloReplySize && h.payload_len != kHelloReplySize + kHelloRdmaTrailerSize) {
    return Error(EBADMSG, "frame header: HELLO reply with payload_len " +
                              std::to_string(h.payload_len) + ", allowed " +
                              std::to_string(kHelloReplySize) + " or " +
                              std::to_string(kHelloReplySize + kHelloRdmaTrailerSize));
  }
  if (expect_reply && h.opcode == Opcode::kAuth && h.status == 0 && h.payload_len != 0 &&
      h.payload_len != kHelloRdmaTrailerSize) {
    return Error(EBADMSG, "frame header: AUTH reply with payload_len " + std::to_string(h.payload_len) +
                              ", allowed 0 or " + std::to_string(kHelloRdmaTrailerSize));
  }
  if (!expect_reply && h.opcode == Opcode::kPersist &&
      (h.payload_len - kPersistRequestFixedSize) % kPersistRangeSize != 0) {
    return Error(EBADMSG, "frame header: PERSIST request payload_len " +
                              std::to_string(h.payload_len) + " is not a whole number of ranges");
  }
  return h;
}

Result<HelloRequest> decode_hello_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "HELLO request";
  if (bytes.size() != kHelloRequestSize) return bad_size(kWhat, bytes.size(), kHelloRequestSize);
  Reader r(bytes);
  HelloRequest m;
  m.min_version = r.u16();
  m.max_version = r.u16();
  uint32_t reserved = r.u32();
  m.features = r.u64();  // unknown feature bits are legal: they are simply not granted
  r.bytes(&m.client_nonce);
  if (reserved != 0) return bad_reserved(kWhat);
  if (m.min_version < 1) return bad_field(kWhat, "min_version is 0");
  if (m.min_version > m.max_version) {
    return bad_field(kWhat, "min_version " + std::to_string(m.min_version) + " > max_version " +
                                std::to_string(m.max_version));
  }
  return m;
}

Result<HelloReply> decode_hello_reply(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "HELLO reply";
  if (bytes.size() != kHelloReplySize && bytes.size() != kHelloReplySize + kHelloRdmaTrailerSize) {
    return Error(EBADMSG, std::string(kWhat) + ": payload is " + std::to_string(bytes.size()) +
                              " bytes, expected " + std::to_string(kHelloReplySize) + " or " +
                              std::to_string(kHelloReplySize + kHelloRdmaTrailerSize));
  }
  Reader r(bytes);
  HelloReply m;
  m.version = r.u16();
  uint16_t reserved1 = r.u16();
  m.hello_flags = r.u32();
  m.features = r.u64();
  m.max_io_size = r.u32();
  uint32_t reserved2 = r.u32();
  r.bytes(&m.brick_uuid);
  r.bytes(&m.server_nonce);
  r.bytes(&m.server_proof);
  r.bytes(&m.boot_id);
  uint32_t reserved3 = 0;
  m.has_rdma_trailer = bytes.size() > kHelloReplySize;
  if (m.has_rdma_trailer) {
    m.sync_rkey = r.u32();
    reserved3 = r.u32();
    m.sync_addr = r.u64();
  }
  // The trailer's presence is a size rule tied to feature bits and flags: a
  // reply that disagrees with itself is malformed, not merely out of range.
  bool want_trailer = hello_has_rdma_trailer(m.features, m.hello_flags);
  if (m.has_rdma_trailer && (m.features & kFeatureRdma) == 0) {
    return Error(EBADMSG, std::string(kWhat) + ": RDMA trailer without the RDMA feature");
  }
  if (m.has_rdma_trailer && !want_trailer) {
    return Error(EBADMSG, std::string(kWhat) + ": RDMA trailer before AUTH although AUTH_TRAILER was granted");
  }
  if (!m.has_rdma_trailer && want_trailer) {
    return Error(EBADMSG, std::string(kWhat) + ": RDMA feature without the RDMA trailer");
  }
  if (reserved1 != 0 || reserved2 != 0 || reserved3 != 0) return bad_reserved(kWhat);
  // Whether the chosen version is one the client offered is the client's check;
  // 0 is never a version.
  if (m.version < 1) return bad_field(kWhat, "version is 0");
  // A client sizes its I/O by max_io_size; frames above kMaxIoSize would be
  // rejected by decode_header() anyway, and 0 would make I/O impossible.
  if (m.max_io_size < 1 || m.max_io_size > kMaxIoSize) {
    return bad_field(kWhat, "max_io_size " + std::to_string(m.max_io_size) + " not in 1.." +
                                std::to_string(kMaxIoSize));
  }
  return m;
}

Result<AuthRequest> decode_auth_request(std::span<const uint8_t> bytes) {
  if (bytes.size() != kAuthRequestSize) {
    return bad_size("AUTH request", bytes.size(), kAuthRequestSize);
  }
  Reader r(bytes);
  AuthRequest m;
  r.bytes(&m.client_proof);
  return m;
}

Result<AuthReply> decode_auth_reply(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "AUTH reply";
  AuthReply m;
  if (bytes.empty()) return m;
  if (bytes.size() != kHelloRdmaTrailerSize) {
    return Error(EBADMSG, std::string(kWhat) + ": payload is " + std::to_string(bytes.size()) +
                              " bytes, expected 0 or " + std::to_string(kHelloRdmaTrailerSize));
  }
  Reader r(bytes);
  m.has_rdma_trailer = true;
  m.sync_rkey = r.u32();
  uint32_t reserved = r.u32();
  m.sync_addr = r.u64();
  if (reserved != 0) return bad_reserved(kWhat);
  return m;
}

Result<AddrRequest> decode_addr_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "block address request";
  if (bytes.size() != kAddrRequestSize) return bad_size(kWhat, bytes.size(), kAddrRequestSize);
  Reader r(bytes);
  AddrRequest m;
  m.vaddr = r.u64();
  if (!block_aligned(m.vaddr)) return bad_field(kWhat, "vaddr " + hex(m.vaddr) + " is not 2 MiB aligned");
  return m;
}

Result<MapRequest> decode_map_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "MAP request";
  if (bytes.size() != kMapRequestSize) return bad_size(kWhat, bytes.size(), kMapRequestSize);
  Reader r(bytes);
  MapRequest m;
  m.vaddr = r.u64();
  m.map_flags = r.u32();
  uint32_t reserved = r.u32();
  if (reserved != 0) return bad_reserved(kWhat);
  if (!block_aligned(m.vaddr)) return bad_field(kWhat, "vaddr " + hex(m.vaddr) + " is not 2 MiB aligned");
  // Unknown MAP flags are refused rather than ignored: a flag asks for access
  // semantics, and silently granting something weaker would be unsafe.
  if ((m.map_flags & ~kKnownMapFlags) != 0) {
    return bad_field(kWhat, "unknown map flags " + hex(m.map_flags));
  }
  return m;
}

Result<MapReply> decode_map_reply(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "MAP reply";
  if (bytes.size() != kMapReplySize) return bad_size(kWhat, bytes.size(), kMapReplySize);
  Reader r(bytes);
  MapReply m;
  m.rkey = r.u32();
  m.map_flags = r.u32();
  m.remote_addr = r.u64();
  m.length = r.u64();
  if ((m.map_flags & ~kKnownMapFlags) != 0) {
    return bad_field(kWhat, "unknown map flags " + hex(m.map_flags));
  }
  if (m.length < 1 || m.length > kBlockSize) {
    return bad_field(kWhat, "length " + std::to_string(m.length) + " not in 1.." +
                                std::to_string(kBlockSize));
  }
  // The client does arithmetic on [remote_addr, remote_addr + length).
  if (m.remote_addr > UINT64_MAX - m.length) {
    return bad_field(kWhat, "remote range " + hex(m.remote_addr) + "+" + hex(m.length) + " wraps");
  }
  return m;
}

Result<ListRequest> decode_list_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "LIST request";
  if (bytes.size() != kListRequestSize) return bad_size(kWhat, bytes.size(), kListRequestSize);
  Reader r(bytes);
  ListRequest m;
  m.cursor = r.u64();
  m.max_extents = r.u32();
  uint32_t reserved = r.u32();
  if (reserved != 0) return bad_reserved(kWhat);
  if (m.max_extents < 1 || m.max_extents > kMaxListExtents) {
    return bad_field(kWhat, "max_extents " + std::to_string(m.max_extents) + " not in 1.." +
                                std::to_string(kMaxListExtents));
  }
  return m;
}

Result<ListReply> decode_list_reply(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "LIST reply";
  if (bytes.size() < kListReplyFixedSize ||
      (bytes.size() - kListReplyFixedSize) % kExtentSize != 0 ||
      (bytes.size() - kListReplyFixedSize) / kExtentSize > kMaxListExtents) {
    return Error(EBADMSG, std::string(kWhat) + ": payload of " + std::to_string(bytes.size()) +
                              " bytes is not 16 + 24 * n with n <= " +
                              std::to_string(kMaxListExtents));
  }
  size_t n = (bytes.size() - kListReplyFixedSize) / kExtentSize;
  Reader r(bytes);
  ListReply m;
  uint32_t count = r.u32();
  m.list_flags = r.u32();
  m.next_cursor = r.u64();
  if (count != n) {
    return bad_field(kWhat, "count " + std::to_string(count) + " but payload holds " +
                                std::to_string(n) + " extents");
  }
  if ((m.list_flags & ~kListMore) != 0) {
    return bad_field(kWhat, "unknown list flags " + hex(m.list_flags));
  }
  m.extents.reserve(n);
  auto bad_extent = [&](size_t i, const std::string& why) {
    return bad_field(kWhat, "extent " + std::to_string(i) + ": " + why);
  };
  // A client merges and walks these extents; rejecting overlaps, misalignment and
  // wrap-around here keeps that code free of defensive checks.
  uint64_t prev_end = 0;  // end of the previous extent; 0 also when it reached 2^64
  for (size_t i = 0; i < n; i++) {
    Extent e;
    e.start_vaddr = r.u64();
    e.block_count = r.u64();
    e.extent_flags = r.u32();
    e.tier = r.u32();
    if (!block_aligned(e.start_vaddr)) {
      return bad_extent(i, "start " + hex(e.start_vaddr) + " is not 2 MiB aligned");
    }
    if (e.block_count < 1) return bad_extent(i, "block_count is 0");
    uint64_t room = (UINT64_MAX - e.start_vaddr) / kBlockSize + 1;  // blocks below 2^64
    if (e.block_count > room) return bad_extent(i, "extends past 2^64");
    if (i > 0 && (prev_end == 0 || e.start_vaddr < prev_end)) {
      return bad_extent(i, "does not start after the previous extent");
    }
    if ((e.extent_flags & ~kExtentMapped) != 0) {
      return bad_extent(i, "unknown flags " + hex(e.extent_flags));
    }
    // Wraps to 0 exactly when the extent ends at 2^64; nothing may follow it.
    prev_end = e.start_vaddr + e.block_count * kBlockSize;
    m.extents.push_back(e);
  }
  return m;
}

Result<StatReply> decode_stat_reply(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "STAT reply";
  if (bytes.size() != kStatReplySize) return bad_size(kWhat, bytes.size(), kStatReplySize);
  Reader r(bytes);
  StatReply m;
  m.capacity_blocks = r.u64();
  m.free_blocks = r.u64();
  m.allocated_blocks = r.u64();
  m.mapped_blocks = r.u64();
  r.bytes(&m.brick_uuid);
  m.block_size = r.u32();
  m.protocol_version = r.u16();
  m.store_kind = r.u16();
  m.slow_capacity_blocks = r.u32();
  m.slow_free_blocks = r.u32();
  if (m.slow_capacity_blocks > m.capacity_blocks || m.slow_free_blocks > m.slow_capacity_blocks) {
    return bad_field(kWhat, "slow tier of " + std::to_string(m.slow_capacity_blocks) + " blocks, " +
                                std::to_string(m.slow_free_blocks) + " free, in a capacity of " +
                                std::to_string(m.capacity_blocks));
  }
  // Every address calculation in a client assumes 2 MiB blocks.
  if (m.block_size != kBlockSize) {
    return bad_field(kWhat, "block_size " + std::to_string(m.block_size) + ", expected " +
                                std::to_string(kBlockSize));
  }
  return m;
}

Result<IoRequest> decode_io_request(std::span<const uint8_t> bytes, Opcode op,
                                    std::span<const uint8_t>* data) {
  if (op != Opcode::kRead && op != Opcode::kWrite) {
    return Error(EINVAL, std::string("I/O request: opcode ") + opcode_name(op) + " is not READ or WRITE");
  }
  const char* what = op == Opcode::kRead ? "READ request" : "WRITE request";
  if (op == Opcode::kRead && bytes.size() != kIoRequestSize) {
    return bad_size(what, bytes.size(), kIoRequestSize);
  }
  if (op == Opcode::kWrite && (bytes.size() <= kIoRequestSize || bytes.size() > kMaxPayload)) {
    return Error(EBADMSG, std::string(what) + ": payload is " + std::to_string(bytes.size()) +
                              " bytes, expected " + std::to_string(kIoRequestSize + 1) + ".." +
                              std::to_string(kMaxPayload));
  }
  Reader r(bytes);
  IoRequest m;
  m.rkey = r.u32();
  uint32_t reserved1 = r.u32();
  m.remote_addr = r.u64();
  m.length = r.u32();
  uint32_t reserved2 = r.u32();
  if (reserved1 != 0 || reserved2 != 0) return bad_reserved(what);
  if (m.length < 1 || m.length > kMaxIoSize) {
    return bad_field(what, "length " + std::to_string(m.length) + " not in 1.." +
                               std::to_string(kMaxIoSize));
  }
  if (op == Opcode::kWrite) {
    if (bytes.size() - kIoRequestSize != m.length) {
      return bad_field(what, "length " + std::to_string(m.length) + " but " +
                                 std::to_string(bytes.size() - kIoRequestSize) +
                                 " data bytes follow");
    }
    if (data != nullptr) *data = bytes.subspan(kIoRequestSize);
  } else if (data != nullptr) {
    *data = {};
  }
  return m;
}

Result<PersistRequest> decode_persist_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "PERSIST request";
  if (bytes.size() < kPersistRequestFixedSize ||
      (bytes.size() - kPersistRequestFixedSize) % kPersistRangeSize != 0 ||
      (bytes.size() - kPersistRequestFixedSize) / kPersistRangeSize > kMaxPersistRanges) {
    return Error(EBADMSG, std::string(kWhat) + ": payload of " + std::to_string(bytes.size()) +
                              " bytes is not 8 + 24 * n with n <= " +
                              std::to_string(kMaxPersistRanges));
  }
  size_t n = (bytes.size() - kPersistRequestFixedSize) / kPersistRangeSize;
  Reader r(bytes);
  uint32_t count = r.u32();
  uint32_t reserved = r.u32();
  // Unlike LIST's count (a field of a well-sized reply), a wrong range_count is
  // a size rule: the brick must not guess which of the two the client meant.
  if (count != n) {
    return Error(EBADMSG, std::string(kWhat) + ": range_count " + std::to_string(count) +
                              " but payload holds " + std::to_string(n) + " ranges");
  }
  PersistRequest m;
  m.ranges.resize(n);
  bool reserved_set = reserved != 0;
  for (PersistRange& range : m.ranges) {
    range.rkey = r.u32();
    reserved_set |= r.u32() != 0;
    range.remote_addr = r.u64();
    range.length = r.u64();
  }
  if (reserved_set) return bad_reserved(kWhat);
  for (size_t i = 0; i < n; i++) {
    const PersistRange& range = m.ranges[i];
    // The brick looks each range up in a handle, like a READ/WRITE: a range
    // never spans blocks and its end is computed without overflow.
    if (range.length < 1 || range.length > kBlockSize) {
      return bad_field(kWhat, "range " + std::to_string(i) + ": length " +
                                  std::to_string(range.length) + " not in 1.." +
                                  std::to_string(kBlockSize));
    }
    if (range.remote_addr > UINT64_MAX - range.length) {
      return bad_field(kWhat, "range " + std::to_string(i) + ": " + hex(range.remote_addr) + "+" +
                                  hex(range.length) + " wraps");
    }
  }
  return m;
}

Result<FenceRequest> decode_fence_request(std::span<const uint8_t> bytes) {
  static const char kWhat[] = "FENCE request";
  if (bytes.size() != kFenceRequestSize) return bad_size(kWhat, bytes.size(), kFenceRequestSize);
  Reader r(bytes);
  FenceRequest m;
  m.scope = r.u64();
  r.bytes(&m.writer);
  m.channel = r.u64();
  return m;
}

}  // namespace pbrick::proto
