// Fuzzes the wire protocol decoders the way a brick or a client meets them: the
// input is a byte stream cut into frames (32-byte header, then payload_len bytes)
// and each payload goes to the decoder its header selects.
//
// Besides memory safety (ASan/UBSan), it checks the round-trip property: every
// message a decoder accepts re-encodes to exactly the bytes it was decoded from.
// Since decoders insist on zero reserved fields and every other bit is a field,
// that is the same as "decode(encode(v)) == v" and also proves that no accepted
// input carries information the decoded value lost.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "common/protocol.h"

namespace {

using namespace pbrick::proto;
using Span = std::span<const uint8_t>;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "round-trip mismatch: %s\n", what);
  std::abort();
}

void expect_same(const std::vector<uint8_t>& encoded, Span original, const char* what) {
  if (encoded.size() != original.size() ||
      (!encoded.empty() && std::memcmp(encoded.data(), original.data(), encoded.size()) != 0)) {
    fail(what);
  }
}

// decode(bytes) -> v; encode(v) must equal bytes; decode(encode(v)) must succeed
// and encode to the same bytes again.
template <typename Decode, typename Encode>
void check_round_trip(Span bytes, Decode decode, Encode encode, const char* what) {
  auto v = decode(bytes);
  if (!v.ok()) {
    // A rejection must name a protocol error, never success or garbage.
    int e = v.error().errnum();
    if (e != EBADMSG && e != EINVAL) fail(what);
    return;
  }
  std::vector<uint8_t> out = encode(*v);
  expect_same(out, bytes, what);
  auto again = decode(Span(out));
  if (!again.ok()) fail(what);
  expect_same(encode(*again), Span(out), what);
}

template <typename T, void (*Enc)(const T&, uint8_t*), size_t kSize>
std::vector<uint8_t> fixed(const T& m) {
  std::vector<uint8_t> out(kSize);
  Enc(m, out.data());
  return out;
}

std::vector<uint8_t> list_reply_bytes(const ListReply& m) {
  std::vector<uint8_t> out(list_reply_size(m.extents.size()));
  encode_list_reply(m, out.data());
  return out;
}

// 120 bytes, or 136 with the RDMA trailer.
std::vector<uint8_t> hello_reply_bytes(const HelloReply& m) {
  std::vector<uint8_t> out(hello_reply_size(m));
  encode_hello_reply(m, out.data());
  return out;
}

// Empty, or 16 bytes with the RDMA trailer.
std::vector<uint8_t> auth_reply_bytes(const AuthReply& m) {
  std::vector<uint8_t> out(auth_reply_size(m));
  encode_auth_reply(m, out.data());
  return out;
}

std::vector<uint8_t> persist_request_bytes(const PersistRequest& m) {
  std::vector<uint8_t> out(persist_request_size(m.ranges.size()));
  encode_persist_request(m, out.data());
  return out;
}

void check_io(Span payload, Opcode op) {
  Span data;
  auto v = decode_io_request(payload, op, &data);
  if (!v.ok()) {
    int e = v.error().errnum();
    if (e != EBADMSG && e != EINVAL) fail("io request errno");
    return;
  }
  if (op == Opcode::kWrite) {
    if (data.size() != v->length || data.data() != payload.data() + kIoRequestSize) {
      fail("WRITE data span");
    }
  } else if (!data.empty()) {
    fail("READ data span");
  }
  std::vector<uint8_t> out(kIoRequestSize);
  encode_io_request(*v, out.data());
  out.insert(out.end(), data.begin(), data.end());
  expect_same(out, payload, "io request");
}

void check_payload(Opcode op, bool reply, Span p) {
  if (!reply) {
    switch (op) {
      case Opcode::kHello:
        check_round_trip(p, decode_hello_request,
                         fixed<HelloRequest, encode_hello_request, kHelloRequestSize>, "HELLO request");
        return;
      case Opcode::kAuth:
        check_round_trip(p, decode_auth_request,
                         fixed<AuthRequest, encode_auth_request, kAuthRequestSize>, "AUTH request");
        return;
      case Opcode::kAlloc:
      case Opcode::kFree:
      case Opcode::kUnmap:
        check_round_trip(p, decode_addr_request,
                         fixed<AddrRequest, encode_addr_request, kAddrRequestSize>, "addr request");
        return;
      case Opcode::kMap:
        check_round_trip(p, decode_map_request,
                         fixed<MapRequest, encode_map_request, kMapRequestSize>, "MAP request");
        return;
      case Opcode::kList:
        check_round_trip(p, decode_list_request,
                         fixed<ListRequest, encode_list_request, kListRequestSize>, "LIST request");
        return;
      case Opcode::kRead:
      case Opcode::kWrite:
        check_io(p, op);
        return;
      case Opcode::kPersist:
        check_round_trip(p, decode_persist_request, persist_request_bytes, "PERSIST request");
        return;
      case Opcode::kFence:
        check_round_trip(p, decode_fence_request,
                         fixed<FenceRequest, encode_fence_request, kFenceRequestSize>, "FENCE request");
        return;
      case Opcode::kStat:
        return;  // no payload
    }
    return;
  }
  switch (op) {
    case Opcode::kHello:
      check_round_trip(p, decode_hello_reply, hello_reply_bytes, "HELLO reply");
      return;
    case Opcode::kAuth:
      check_round_trip(p, decode_auth_reply, auth_reply_bytes, "AUTH reply");
      return;
    case Opcode::kMap:
      check_round_trip(p, decode_map_reply, fixed<MapReply, encode_map_reply, kMapReplySize>,
                       "MAP reply");
      return;
    case Opcode::kList:
      check_round_trip(p, decode_list_reply, list_reply_bytes, "LIST reply");
      return;
    case Opcode::kStat:
      check_round_trip(p, decode_stat_reply, fixed<StatReply, encode_stat_reply, kStatReplySize>,
                       "STAT reply");
      return;
    default:
      return;  // empty payloads, and READ data which has no structure
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Span in(data, size);

  // Stream mode: frames back to back, as on a connection. Like a real peer we
  // stop at the first header we cannot trust.
  size_t pos = 0;
  while (size - pos >= kHeaderSize) {
    Span hdr = in.subspan(pos, kHeaderSize);
    auto as_request = decode_header(hdr, false);
    auto as_reply = decode_header(hdr, true);
    if (as_request.ok() && as_reply.ok()) fail("header valid in both directions");
    if (!as_request.ok() && !as_reply.ok()) break;
    const FrameHeader& h = as_request.ok() ? *as_request : *as_reply;
    uint8_t reencoded[kHeaderSize];
    encode_header(h, reencoded);
    if (std::memcmp(reencoded, hdr.data(), kHeaderSize) != 0) fail("header");
    if (h.payload_len > kMaxPayload) fail("header admitted an oversized payload");
    pos += kHeaderSize;
    if (size - pos < h.payload_len) break;  // peer would wait for more bytes
    Span payload = in.subspan(pos, h.payload_len);
    pos += h.payload_len;
    if (h.status == 0) check_payload(h.opcode, h.is_reply(), payload);
  }

  // Direct mode: the whole input as every payload, so the decoders also meet
  // sizes the header check would have filtered out.
  if (size <= kMaxPayload) {
    for (uint8_t op = 1; op <= kMaxOpcode; op++) {
      check_payload(static_cast<Opcode>(op), false, in);
      check_payload(static_cast<Opcode>(op), true, in);
    }
  }
  return 0;
}
