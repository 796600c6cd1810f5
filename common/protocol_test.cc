// Tests for the wire protocol codec: byte layouts, round trips, and one test per
// class of malformed input, each asserting the errno the spec assigns to it.

#include "common/protocol.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <vector>

namespace pbrick::proto {
namespace {

using Bytes = std::vector<uint8_t>;

// Little-endian field of `size` bytes at `off`: how the tests read layouts,
// independent of the codec under test.
uint64_t le_at(const Bytes& b, size_t off, size_t size) {
  uint64_t v = 0;
  for (size_t i = 0; i < size; i++) v |= static_cast<uint64_t>(b.at(off + i)) << (8 * i);
  return v;
}

void put_le(Bytes* b, size_t off, size_t size, uint64_t v) {
  for (size_t i = 0; i < size; i++) b->at(off + i) = static_cast<uint8_t>(v >> (8 * i));
}

template <size_t N>
std::array<uint8_t, N> pattern(uint8_t start) {
  std::array<uint8_t, N> a{};
  for (size_t i = 0; i < N; i++) a[i] = static_cast<uint8_t>(start + i);
  return a;
}

Bytes header_bytes(const FrameHeader& h) {
  Bytes b(kHeaderSize);
  encode_header(h, b.data());
  return b;
}

FrameHeader request(Opcode op, uint32_t payload_len) {
  FrameHeader h;
  h.opcode = op;
  h.payload_len = payload_len;
  h.request_id = 42;
  return h;
}

FrameHeader reply(Opcode op, uint32_t payload_len, uint32_t status = 0) {
  FrameHeader h = request(op, payload_len);
  h.flags = kFlagReply;
  h.status = status;
  return h;
}

template <typename T>
int err_of(const Result<T>& r) {
  return r.ok() ? 0 : r.error().errnum();
}

int header_err(const FrameHeader& h, bool expect_reply) {
  Bytes b = header_bytes(h);
  return err_of(decode_header(b, expect_reply));
}

Bytes hello_request_bytes(const HelloRequest& m) {
  Bytes b(kHelloRequestSize);
  encode_hello_request(m, b.data());
  return b;
}
Bytes hello_reply_bytes(const HelloReply& m) {
  Bytes b(hello_reply_size(m));
  encode_hello_reply(m, b.data());
  return b;
}
// A valid HELLO reply of an RDMA connection: feature and trailer together.
HelloReply rdma_hello_reply() {
  HelloReply m;
  m.features = kFeatureRdma | kFeaturePersistRpc;
  m.has_rdma_trailer = true;
  m.sync_rkey = 0x5eed1234;
  m.sync_addr = 0x7f1200003000;
  return m;
}
Bytes addr_bytes(uint64_t vaddr) {
  Bytes b(kAddrRequestSize);
  encode_addr_request(AddrRequest{vaddr}, b.data());
  return b;
}
Bytes map_request_bytes(const MapRequest& m) {
  Bytes b(kMapRequestSize);
  encode_map_request(m, b.data());
  return b;
}
Bytes map_reply_bytes(const MapReply& m) {
  Bytes b(kMapReplySize);
  encode_map_reply(m, b.data());
  return b;
}
Bytes list_request_bytes(const ListRequest& m) {
  Bytes b(kListRequestSize);
  encode_list_request(m, b.data());
  return b;
}
Bytes list_reply_bytes(const ListReply& m) {
  Bytes b(list_reply_size(m.extents.size()));
  encode_list_reply(m, b.data());
  return b;
}
Bytes stat_reply_bytes(const StatReply& m) {
  Bytes b(kStatReplySize);
  encode_stat_reply(m, b.data());
  return b;
}
Bytes persist_bytes(const PersistRequest& m) {
  Bytes b(persist_request_size(m.ranges.size()));
  encode_persist_request(m, b.data());
  return b;
}
PersistRequest sample_persist_request() {
  PersistRequest m;
  m.ranges.push_back({0x1234abcd, 0x7f3a00000000, 4096});
  m.ranges.push_back({0x1234abcd, 0x7f3a00100000, 1});
  m.ranges.push_back({0x0badf00d, 0x7f4400000000, kBlockSize});
  return m;
}
Bytes io_bytes(const IoRequest& m, size_t data_len = 0) {
  Bytes b(kIoRequestSize + data_len);
  encode_io_request(m, b.data());
  for (size_t i = 0; i < data_len; i++) b[kIoRequestSize + i] = static_cast<uint8_t>(i * 7);
  return b;
}

ListReply sample_list_reply() {
  ListReply m;
  m.list_flags = kListMore;
  m.next_cursor = 0x40000000;
  m.extents.push_back({0, 3, 0, 0});
  m.extents.push_back({0x800000, 1, kExtentMapped, 2});
  m.extents.push_back({0x20000000, 7, 0, 1});
  return m;
}

// ---- Layouts ---------------------------------------------------------------------

// The HELLO frame shown byte by byte in docs/protocol.md.
TEST(ProtocolLayout, HelloRequestFrameMatchesSpecExample) {
  FrameHeader h = request(Opcode::kHello, kHelloRequestSize);
  h.request_id = 1;
  HelloRequest m;
  m.min_version = 1;
  m.max_version = 1;
  m.features = kFeatureSyncRead;
  m.client_nonce = pattern<kNonceSize>(0);
  Bytes frame(kHeaderSize + kHelloRequestSize);
  encode_header(h, frame.data());
  encode_hello_request(m, frame.data() + kHeaderSize);

  const Bytes expected = {
      0x50, 0x42, 0x52, 0x4b, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00,
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
      0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
  };
  EXPECT_EQ(frame, expected);
  EXPECT_EQ(std::memcmp(frame.data(), "PBRK", 4), 0);
}

TEST(ProtocolPeek, FrameSizeSalvagedHeaderAndIoLength) {
  FrameHeader h;
  h.opcode = Opcode::kWrite;
  h.payload_len = 4096 + kIoRequestSize;
  h.request_id = 0x1122334455667788ull;
  uint8_t frame[kHeaderSize + kIoRequestSize];
  encode_header(h, frame);
  IoRequest io;
  io.rkey = 7;
  io.remote_addr = 1ull << 21;
  io.length = 4096;
  encode_io_request(io, frame + kHeaderSize);
  EXPECT_EQ(frame_size({frame, kHeaderSize}), kHeaderSize + 4096 + kIoRequestSize);
  EXPECT_EQ(peek_io_length({frame + kHeaderSize, kIoRequestSize}), 4096u);

  // A header decode_header() refuses (reserved field set) still names its
  // request id and opcode for the error reply...
  frame[24] = 1;
  ASSERT_FALSE(decode_header({frame, kHeaderSize}, false).ok());
  auto echo = salvage_request_header({frame, kHeaderSize});
  ASSERT_TRUE(echo.has_value());
  EXPECT_EQ(echo->request_id, 0x1122334455667788ull);
  EXPECT_EQ(echo->opcode, Opcode::kWrite);
  // ...an unknown opcode byte comes back as it was...
  frame[5] = 0xEE;
  EXPECT_EQ(static_cast<uint8_t>(salvage_request_header({frame, kHeaderSize})->opcode), 0xEE);
  // ...but with a wrong magic nothing can be believed.
  frame[0] ^= 0xFF;
  EXPECT_FALSE(salvage_request_header({frame, kHeaderSize}).has_value());
}

TEST(ProtocolLayout, HeaderFieldOffsets) {
  FrameHeader h;
  h.opcode = Opcode::kWrite;
  h.flags = kFlagReply;
  h.status = 0x11223344;
  h.payload_len = 0x55667788;
  h.request_id = 0x0102030405060708;
  Bytes b = header_bytes(h);
  EXPECT_EQ(le_at(b, 0, 4), kMagic);
  EXPECT_EQ(le_at(b, 4, 1), 1u);
  EXPECT_EQ(le_at(b, 5, 1), 10u);
  EXPECT_EQ(le_at(b, 6, 2), kFlagReply);
  EXPECT_EQ(le_at(b, 8, 4), 0x11223344u);
  EXPECT_EQ(le_at(b, 12, 4), 0x55667788u);
  EXPECT_EQ(le_at(b, 16, 8), 0x0102030405060708u);
  EXPECT_EQ(le_at(b, 24, 8), 0u);
}

TEST(ProtocolLayout, HelloReplyFieldOffsets) {
  HelloReply m;
  m.version = 1;
  m.hello_flags = kHelloAuthRequired;
  m.features = 0xA1A2A3A4A5A6A7A8;
  m.max_io_size = 0x12345;
  m.brick_uuid = pattern<kUuidSize>(0x10);
  m.server_nonce = pattern<kNonceSize>(0x40);
  m.server_proof = pattern<kProofSize>(0x80);
  m.boot_id = pattern<kUuidSize>(0xC0);
  Bytes b = hello_reply_bytes(m);
  EXPECT_EQ(le_at(b, 0, 2), 1u);
  EXPECT_EQ(le_at(b, 2, 2), 0u);
  EXPECT_EQ(le_at(b, 4, 4), kHelloAuthRequired);
  EXPECT_EQ(le_at(b, 8, 8), 0xA1A2A3A4A5A6A7A8u);
  EXPECT_EQ(le_at(b, 16, 4), 0x12345u);
  EXPECT_EQ(le_at(b, 20, 4), 0u);
  EXPECT_EQ(b[24], 0x10);
  EXPECT_EQ(b[40], 0x40);
  EXPECT_EQ(b[72], 0x80);
  EXPECT_EQ(b[103], 0x80 + 31);
  EXPECT_EQ(b[104], 0xC0);
  EXPECT_EQ(b[119], 0xC0 + 15);
  EXPECT_EQ(b.size(), kHelloReplySize);
}

TEST(ProtocolLayout, HelloReplyRdmaTrailerOffsets) {
  HelloReply m = rdma_hello_reply();
  m.sync_rkey = 0x11223344;
  m.sync_addr = 0x0102030405060708;
  m.boot_id = pattern<kUuidSize>(0xC0);
  Bytes b = hello_reply_bytes(m);
  ASSERT_EQ(b.size(), 136u);
  EXPECT_EQ(hello_reply_size(m), kHelloReplySize + kHelloRdmaTrailerSize);
  EXPECT_EQ(b[119], 0xC0 + 15);  // the 120-byte part is unchanged
  EXPECT_EQ(le_at(b, 120, 4), 0x11223344u);
  EXPECT_EQ(le_at(b, 124, 4), 0u);
  EXPECT_EQ(le_at(b, 128, 8), 0x0102030405060708u);
}

TEST(ProtocolLayout, PersistRequestOffsets) {
  Bytes b = persist_bytes(sample_persist_request());
  ASSERT_EQ(b.size(), 8u + 3 * 24);
  EXPECT_EQ(le_at(b, 0, 4), 3u);
  EXPECT_EQ(le_at(b, 4, 4), 0u);
  EXPECT_EQ(le_at(b, 8, 4), 0x1234abcdu);
  EXPECT_EQ(le_at(b, 12, 4), 0u);
  EXPECT_EQ(le_at(b, 16, 8), 0x7f3a00000000u);
  EXPECT_EQ(le_at(b, 24, 8), 4096u);
  EXPECT_EQ(le_at(b, 8 + 48, 4), 0x0badf00du);
  EXPECT_EQ(le_at(b, 8 + 48 + 8, 8), 0x7f4400000000u);
  EXPECT_EQ(le_at(b, 8 + 48 + 16, 8), kBlockSize);
  EXPECT_EQ(persist_bytes({}), Bytes(8, 0));
}

TEST(ProtocolLayout, FenceRequestOffsets) {
  FenceRequest m;
  m.scope = 0x7f3a00200000u;
  for (size_t i = 0; i < m.writer.size(); i++) m.writer[i] = static_cast<uint8_t>(0xA0 + i);
  m.channel = 0x0102030405060708u;
  Bytes b(kFenceRequestSize);
  encode_fence_request(m, b.data());
  EXPECT_EQ(le_at(b, 0, 8), 0x7f3a00200000u);
  EXPECT_EQ(b[8], 0xA0);
  EXPECT_EQ(b[23], 0xAF);
  EXPECT_EQ(le_at(b, 24, 8), 0x0102030405060708u);
  auto d = decode_fence_request(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->scope, m.scope);
  EXPECT_EQ(d->writer, m.writer);
  EXPECT_EQ(d->channel, m.channel);
  for (size_t size : {size_t{0}, kFenceRequestSize - 1, kFenceRequestSize + 1}) {
    b.resize(size);
    auto bad = decode_fence_request(b);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().errnum(), EBADMSG);
  }
}

TEST(ProtocolLayout, ConstantsMatchSpec) {
  EXPECT_EQ(kFeatureSyncRead, 1u);
  EXPECT_EQ(kFeaturePersistRpc, 2u);
  EXPECT_EQ(kFeatureRdma, 4u);
  EXPECT_EQ(kFeatureAuthTrailer, 8u);
  EXPECT_EQ(kFeatureTiers, 16u);
  EXPECT_EQ(kFeatureFence, 32u);
  EXPECT_EQ(kKnownFeatures, 63u);
  EXPECT_EQ(static_cast<int>(Opcode::kPersist), 11);
  EXPECT_EQ(static_cast<int>(Opcode::kFence), 12);
  EXPECT_EQ(kFenceRequestSize, 32u);
  EXPECT_EQ(kHelloRdmaTrailerSize, 16u);
  EXPECT_EQ(kPersistRequestFixedSize, 8u);
  EXPECT_EQ(kPersistRangeSize, 24u);
  EXPECT_EQ(kMaxPersistRanges, 128u);
  EXPECT_EQ(persist_request_size(0), 8u);
  EXPECT_EQ(persist_request_size(kMaxPersistRanges), 8u + 24 * 128);
  EXPECT_EQ(kRdmaMessageSize, 4096u);
  EXPECT_EQ(kRdmaMaxOutstanding, 16u);
  EXPECT_EQ(kRdmaMaxListExtents, 168u);  // (4096 - 32 - 16) / 24
  // The frames an RDMA connection carries fit one message.
  EXPECT_LE(kHeaderSize + list_reply_size(kRdmaMaxListExtents), kRdmaMessageSize);
  EXPECT_GT(kHeaderSize + list_reply_size(kRdmaMaxListExtents + 1), kRdmaMessageSize);
  EXPECT_LE(kHeaderSize + persist_request_size(kMaxPersistRanges), kRdmaMessageSize);
  EXPECT_LE(kHeaderSize + kHelloReplySize + kHelloRdmaTrailerSize, kRdmaMessageSize);
}

TEST(ProtocolLayout, OtherMessageFieldOffsets) {
  Bytes map_req = map_request_bytes({0x600000, kMapWrite | kMapShared});
  EXPECT_EQ(le_at(map_req, 0, 8), 0x600000u);
  EXPECT_EQ(le_at(map_req, 8, 4), kMapWrite | kMapShared);
  EXPECT_EQ(le_at(map_req, 12, 4), 0u);

  Bytes map_rep = map_reply_bytes({0xdeadbeef, kMapWrite, 0x7f0000200000, kBlockSize});
  EXPECT_EQ(le_at(map_rep, 0, 4), 0xdeadbeefu);
  EXPECT_EQ(le_at(map_rep, 4, 4), kMapWrite);
  EXPECT_EQ(le_at(map_rep, 8, 8), 0x7f0000200000u);
  EXPECT_EQ(le_at(map_rep, 16, 8), kBlockSize);

  Bytes list_req = list_request_bytes({0x400000, 17});
  EXPECT_EQ(le_at(list_req, 0, 8), 0x400000u);
  EXPECT_EQ(le_at(list_req, 8, 4), 17u);

  Bytes list_rep = list_reply_bytes(sample_list_reply());
  EXPECT_EQ(le_at(list_rep, 0, 4), 3u);
  EXPECT_EQ(le_at(list_rep, 4, 4), kListMore);
  EXPECT_EQ(le_at(list_rep, 8, 8), 0x40000000u);
  EXPECT_EQ(le_at(list_rep, 16 + 24, 8), 0x800000u);
  EXPECT_EQ(le_at(list_rep, 16 + 24 + 8, 8), 1u);
  EXPECT_EQ(le_at(list_rep, 16 + 24 + 16, 4), kExtentMapped);
  EXPECT_EQ(le_at(list_rep, 16 + 24 + 20, 4), 2u);

  StatReply st;
  st.capacity_blocks = 1;
  st.free_blocks = 2;
  st.allocated_blocks = 3;
  st.mapped_blocks = 4;
  st.brick_uuid = pattern<kUuidSize>(0x30);
  st.store_kind = kStorePmem;
  Bytes stat = stat_reply_bytes(st);
  EXPECT_EQ(le_at(stat, 0, 8), 1u);
  EXPECT_EQ(le_at(stat, 8, 8), 2u);
  EXPECT_EQ(le_at(stat, 16, 8), 3u);
  EXPECT_EQ(le_at(stat, 24, 8), 4u);
  EXPECT_EQ(stat[32], 0x30);
  EXPECT_EQ(le_at(stat, 48, 4), kBlockSize);
  EXPECT_EQ(le_at(stat, 52, 2), 1u);
  EXPECT_EQ(le_at(stat, 54, 2), kStorePmem);
  EXPECT_EQ(le_at(stat, 56, 8), 0u);

  Bytes io = io_bytes({0xcafe, 0x7f0000200010, 4096});
  EXPECT_EQ(le_at(io, 0, 4), 0xcafeu);
  EXPECT_EQ(le_at(io, 4, 4), 0u);
  EXPECT_EQ(le_at(io, 8, 8), 0x7f0000200010u);
  EXPECT_EQ(le_at(io, 16, 4), 4096u);
  EXPECT_EQ(le_at(io, 20, 4), 0u);
}

// ---- Round trips -------------------------------------------------------------------

TEST(ProtocolRoundTrip, Header) {
  for (bool is_reply : {false, true}) {
    for (uint8_t op = 1; op <= kMaxOpcode; op++) {
      FrameHeader h;
      h.opcode = static_cast<Opcode>(op);
      h.flags = is_reply ? kFlagReply : 0;
      // Replies are error replies (empty payload); requests get a legal length.
      static const uint32_t kRequestLen[] = {0, 48, 32, 0, 8, 8, 16, 8, 16, 24, 24 + 512, 8 + 24, 32};
      static_assert(std::size(kRequestLen) == kMaxOpcode + 1);
      h.status = is_reply ? wire_status(EINVAL) : 0;
      h.payload_len = is_reply ? 0 : kRequestLen[op];
      h.request_id = 0xFEDCBA9876543210u + op;
      auto d = decode_header(header_bytes(h), is_reply);
      ASSERT_TRUE(d.ok()) << d.error().message();
      EXPECT_EQ(d->magic, kMagic);
      EXPECT_EQ(d->version, kVersion1);
      EXPECT_EQ(d->opcode, h.opcode);
      EXPECT_EQ(d->flags, h.flags);
      EXPECT_EQ(d->status, h.status);
      EXPECT_EQ(d->payload_len, h.payload_len);
      EXPECT_EQ(d->request_id, h.request_id);
      EXPECT_EQ(d->is_reply(), is_reply);
    }
  }
}

TEST(ProtocolRoundTrip, HeaderIgnoresBytesAfterTheFirst32) {
  Bytes b = header_bytes(request(Opcode::kStat, 0));
  b.push_back(0xFF);
  EXPECT_TRUE(decode_header(b, false).ok());
}

TEST(ProtocolRoundTrip, HelloRequest) {
  HelloRequest m;
  m.min_version = 1;
  m.max_version = 7;
  m.features = kFeatureSyncRead | (1ull << 63);  // unknown bits pass through
  m.client_nonce = pattern<kNonceSize>(9);
  auto d = decode_hello_request(hello_request_bytes(m));
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->min_version, 1);
  EXPECT_EQ(d->max_version, 7);
  EXPECT_EQ(d->features, m.features);
  EXPECT_EQ(d->client_nonce, m.client_nonce);
}

TEST(ProtocolRoundTrip, HelloReply) {
  HelloReply m;
  m.version = 1;
  m.hello_flags = kHelloAuthRequired;
  m.features = kFeatureSyncRead;
  m.max_io_size = kMaxIoSize;
  m.brick_uuid = pattern<kUuidSize>(1);
  m.server_nonce = pattern<kNonceSize>(2);
  m.server_proof = pattern<kProofSize>(3);
  m.boot_id = pattern<kUuidSize>(4);
  auto d = decode_hello_reply(hello_reply_bytes(m));
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->version, 1);
  EXPECT_EQ(d->hello_flags, kHelloAuthRequired);
  EXPECT_EQ(d->features, kFeatureSyncRead);
  EXPECT_EQ(d->max_io_size, kMaxIoSize);
  EXPECT_EQ(d->brick_uuid, m.brick_uuid);
  EXPECT_EQ(d->server_nonce, m.server_nonce);
  EXPECT_EQ(d->server_proof, m.server_proof);
  EXPECT_EQ(d->boot_id, m.boot_id);
  EXPECT_FALSE(d->has_rdma_trailer);
  EXPECT_EQ(d->sync_rkey, 0u);
  EXPECT_EQ(d->sync_addr, 0u);
}

TEST(ProtocolRoundTrip, HelloReplyWithRdmaTrailer) {
  HelloReply m = rdma_hello_reply();
  m.hello_flags = kHelloAuthRequired;
  m.brick_uuid = pattern<kUuidSize>(1);
  m.boot_id = pattern<kUuidSize>(4);
  Bytes b = hello_reply_bytes(m);
  EXPECT_EQ(b.size(), 136u);
  auto d = decode_hello_reply(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->features, kFeatureRdma | kFeaturePersistRpc);
  EXPECT_TRUE(d->has_rdma_trailer);
  EXPECT_EQ(d->sync_rkey, 0x5eed1234u);
  EXPECT_EQ(d->sync_addr, 0x7f1200003000u);
  EXPECT_EQ(d->brick_uuid, m.brick_uuid);
  EXPECT_EQ(d->boot_id, m.boot_id);
  EXPECT_EQ(hello_reply_bytes(*d), b);
}

// AUTH_TRAILER with AUTH_REQUIRED: the HELLO reply names nothing of the
// brick's memory; the trailer comes in the AUTH reply.
TEST(ProtocolRoundTrip, HelloReplyAuthTrailerMovesTheTrailerToAuth) {
  HelloReply m;
  m.features = kFeatureRdma | kFeatureAuthTrailer | kFeaturePersistRpc;
  m.hello_flags = kHelloAuthRequired;
  EXPECT_FALSE(hello_has_rdma_trailer(m.features, m.hello_flags));
  Bytes b = hello_reply_bytes(m);
  EXPECT_EQ(b.size(), kHelloReplySize);
  auto d = decode_hello_reply(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_FALSE(d->has_rdma_trailer);
  // A trailer there anyway is malformed: the brick named its memory before AUTH.
  m.has_rdma_trailer = true;
  m.sync_rkey = 1;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EBADMSG);
  // Without AUTH_REQUIRED the HELLO ends the handshake and carries it.
  m.hello_flags = 0;
  EXPECT_TRUE(hello_has_rdma_trailer(m.features, m.hello_flags));
  EXPECT_TRUE(decode_hello_reply(hello_reply_bytes(m)).ok());
  m.has_rdma_trailer = false;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EBADMSG);
}

TEST(ProtocolRoundTrip, AuthReplyEmptyAndWithRdmaTrailer) {
  AuthReply empty;
  EXPECT_EQ(auth_reply_size(empty), 0u);
  auto d = decode_auth_reply({});
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->has_rdma_trailer);

  AuthReply m;
  m.has_rdma_trailer = true;
  m.sync_rkey = 0x11223344;
  m.sync_addr = 0x0102030405060708;
  Bytes b(auth_reply_size(m));
  ASSERT_EQ(b.size(), 16u);
  encode_auth_reply(m, b.data());
  EXPECT_EQ(le_at(b, 0, 4), 0x11223344u);
  EXPECT_EQ(le_at(b, 4, 4), 0u);
  EXPECT_EQ(le_at(b, 8, 8), 0x0102030405060708u);
  d = decode_auth_reply(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_TRUE(d->has_rdma_trailer);
  EXPECT_EQ(d->sync_rkey, m.sync_rkey);
  EXPECT_EQ(d->sync_addr, m.sync_addr);
}

TEST(ProtocolPayloadReject, AuthReplyOtherSizesAndReservedAreEbadmsg) {
  Bytes b(16, 0);
  b[4] = 1;  // reserved
  EXPECT_EQ(err_of(decode_auth_reply(b)), EBADMSG);
  for (size_t n : {1u, 8u, 15u, 17u, 32u}) {
    EXPECT_EQ(err_of(decode_auth_reply(Bytes(n, 0))), EBADMSG) << n;
  }
}

TEST(ProtocolRoundTrip, AuthRequest) {
  AuthRequest m;
  m.client_proof = pattern<kProofSize>(0xA0);
  Bytes b(kAuthRequestSize);
  encode_auth_request(m, b.data());
  auto d = decode_auth_request(b);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->client_proof, m.client_proof);
}

TEST(ProtocolRoundTrip, AddrRequest) {
  for (uint64_t vaddr : {uint64_t{0}, kBlockSize, uint64_t{0x123} << 21, ~(kBlockSize - 1)}) {
    auto d = decode_addr_request(addr_bytes(vaddr));
    ASSERT_TRUE(d.ok()) << d.error().message();
    EXPECT_EQ(d->vaddr, vaddr);
  }
}

TEST(ProtocolRoundTrip, MapRequest) {
  for (uint32_t flags : {0u, kMapWrite, kMapShared, kMapWrite | kMapShared}) {
    auto d = decode_map_request(map_request_bytes({0xA00000, flags}));
    ASSERT_TRUE(d.ok()) << d.error().message();
    EXPECT_EQ(d->vaddr, 0xA00000u);
    EXPECT_EQ(d->map_flags, flags);
  }
}

TEST(ProtocolRoundTrip, MapReply) {
  MapReply m{0x89abcdef, kMapWrite | kMapShared, 0x7ffe00000000, kBlockSize};
  auto d = decode_map_reply(map_reply_bytes(m));
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->rkey, m.rkey);
  EXPECT_EQ(d->map_flags, m.map_flags);
  EXPECT_EQ(d->remote_addr, m.remote_addr);
  EXPECT_EQ(d->length, m.length);
}

TEST(ProtocolRoundTrip, ListRequest) {
  for (uint32_t max : {1u, 100u, kMaxListExtents}) {
    auto d = decode_list_request(list_request_bytes({0x1200000, max}));
    ASSERT_TRUE(d.ok()) << d.error().message();
    EXPECT_EQ(d->cursor, 0x1200000u);
    EXPECT_EQ(d->max_extents, max);
  }
}

TEST(ProtocolRoundTrip, ListReply) {
  ListReply m = sample_list_reply();
  Bytes b = list_reply_bytes(m);
  EXPECT_EQ(b.size(), kListReplyFixedSize + 3 * kExtentSize);
  auto d = decode_list_reply(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->list_flags, m.list_flags);
  EXPECT_EQ(d->next_cursor, m.next_cursor);
  EXPECT_EQ(d->extents, m.extents);
}

TEST(ProtocolRoundTrip, ListReplyEmptyAndFull) {
  ListReply empty;
  auto d0 = decode_list_reply(list_reply_bytes(empty));
  ASSERT_TRUE(d0.ok());
  EXPECT_TRUE(d0->extents.empty());

  ListReply full;
  for (uint64_t i = 0; i < kMaxListExtents; i++) full.extents.push_back({i * 2 * kBlockSize, 1, 0, 0});
  Bytes b = list_reply_bytes(full);
  EXPECT_EQ(b.size(), kListReplyFixedSize + kMaxListExtents * kExtentSize);
  auto d = decode_list_reply(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->extents, full.extents);
}

TEST(ProtocolRoundTrip, ListReplyExtentEndingAtTopOfAddressSpace) {
  ListReply m;
  m.extents.push_back({~(kBlockSize - 1), 1, 0, 0});
  auto d = decode_list_reply(list_reply_bytes(m));
  ASSERT_TRUE(d.ok()) << d.error().message();
  ListReply whole;
  whole.extents.push_back({0, uint64_t{1} << 43, 0, 0});  // all of 2^64
  EXPECT_TRUE(decode_list_reply(list_reply_bytes(whole)).ok());
}

TEST(ProtocolRoundTrip, StatReply) {
  StatReply m;
  m.capacity_blocks = 1000;
  m.free_blocks = 600;
  m.allocated_blocks = 400;
  m.mapped_blocks = 12;
  m.brick_uuid = pattern<kUuidSize>(0x55);
  m.store_kind = kStorePmem;
  auto d = decode_stat_reply(stat_reply_bytes(m));
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->capacity_blocks, 1000u);
  EXPECT_EQ(d->free_blocks, 600u);
  EXPECT_EQ(d->allocated_blocks, 400u);
  EXPECT_EQ(d->mapped_blocks, 12u);
  EXPECT_EQ(d->brick_uuid, m.brick_uuid);
  EXPECT_EQ(d->block_size, kBlockSize);
  EXPECT_EQ(d->protocol_version, kVersion1);
  EXPECT_EQ(d->store_kind, kStorePmem);
}

TEST(ProtocolRoundTrip, ReadRequest) {
  IoRequest m{0x01020304, 0x7f0000200000, kMaxIoSize};
  std::span<const uint8_t> data(reinterpret_cast<const uint8_t*>("x"), 1);
  auto d = decode_io_request(io_bytes(m), Opcode::kRead, &data);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->rkey, m.rkey);
  EXPECT_EQ(d->remote_addr, m.remote_addr);
  EXPECT_EQ(d->length, m.length);
  EXPECT_TRUE(data.empty());
  EXPECT_TRUE(decode_io_request(io_bytes(m), Opcode::kRead, nullptr).ok());
}

TEST(ProtocolRoundTrip, WriteRequestPointsAtData) {
  for (uint32_t len : {1u, 4096u, kMaxIoSize}) {
    Bytes b = io_bytes({7, 0x200000, len}, len);
    std::span<const uint8_t> data;
    auto d = decode_io_request(b, Opcode::kWrite, &data);
    ASSERT_TRUE(d.ok()) << d.error().message();
    EXPECT_EQ(d->length, len);
    EXPECT_EQ(data.data(), b.data() + kIoRequestSize);
    EXPECT_EQ(data.size(), len);
  }
}

TEST(ProtocolRoundTrip, PersistRequest) {
  PersistRequest m = sample_persist_request();
  Bytes b = persist_bytes(m);
  auto d = decode_persist_request(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  ASSERT_EQ(d->ranges.size(), 3u);
  for (size_t i = 0; i < 3; i++) {
    EXPECT_EQ(d->ranges[i].rkey, m.ranges[i].rkey);
    EXPECT_EQ(d->ranges[i].remote_addr, m.ranges[i].remote_addr);
    EXPECT_EQ(d->ranges[i].length, m.ranges[i].length);
  }
  EXPECT_EQ(persist_bytes(*d), b);
}

TEST(ProtocolRoundTrip, PersistRequestEmptyAndFull) {
  auto d0 = decode_persist_request(persist_bytes({}));  // "everything mapped writable"
  ASSERT_TRUE(d0.ok()) << d0.error().message();
  EXPECT_TRUE(d0->ranges.empty());

  PersistRequest full;
  for (uint32_t i = 0; i < kMaxPersistRanges; i++) {
    full.ranges.push_back({i, uint64_t{i} * kBlockSize, kBlockSize});
  }
  Bytes b = persist_bytes(full);
  EXPECT_EQ(b.size(), 8u + 24 * kMaxPersistRanges);
  auto d = decode_persist_request(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->ranges.size(), kMaxPersistRanges);
  EXPECT_EQ(persist_bytes(*d), b);
}

TEST(ProtocolRoundTrip, PersistRangeEndingJustBelowTopOfAddressSpace) {
  PersistRequest m;
  m.ranges.push_back({1, ~uint64_t{0} - kBlockSize, kBlockSize});  // ends at 2^64 - 1
  EXPECT_TRUE(decode_persist_request(persist_bytes(m)).ok());
}

// ---- Header rejections: one test per class ---------------------------------------

TEST(ProtocolHeaderReject, TruncatedIsEbadmsg) {
  Bytes b = header_bytes(request(Opcode::kStat, 0));
  for (size_t n : {size_t{0}, size_t{1}, size_t{16}, kHeaderSize - 1}) {
    EXPECT_EQ(err_of(decode_header(std::span<const uint8_t>(b.data(), n), false)), EBADMSG) << n;
  }
}

TEST(ProtocolHeaderReject, BadMagicIsEproto) {
  FrameHeader h = request(Opcode::kStat, 0);
  h.magic = 0x4B524251;
  EXPECT_EQ(header_err(h, false), EPROTO);
  h.magic = 0x504B5242;  // "PBRK" written big-endian
  EXPECT_EQ(header_err(h, false), EPROTO);
}

TEST(ProtocolHeaderReject, BadVersionIsEprotonosupport) {
  for (uint8_t v : {0, 2, 255}) {
    FrameHeader h = request(Opcode::kHello, kHelloRequestSize);  // HELLO too: always version 1
    h.version = v;
    EXPECT_EQ(header_err(h, false), EPROTONOSUPPORT) << int(v);
    FrameHeader r = reply(Opcode::kStat, kStatReplySize);
    r.version = v;
    EXPECT_EQ(header_err(r, true), EPROTONOSUPPORT) << int(v);
  }
}

TEST(ProtocolHeaderReject, UnknownFlagBitsAreEproto) {
  for (uint16_t bit = 1; bit < 16; bit++) {
    FrameHeader h = request(Opcode::kStat, 0);
    h.flags = static_cast<uint16_t>(1u << bit);
    EXPECT_EQ(header_err(h, false), EPROTO) << bit;
  }
}

TEST(ProtocolHeaderReject, NonzeroReservedIsEproto) {
  FrameHeader h = request(Opcode::kStat, 0);
  h.reserved = 1ull << 40;
  EXPECT_EQ(header_err(h, false), EPROTO);
  FrameHeader r = reply(Opcode::kStat, kStatReplySize);
  r.reserved = 1;
  EXPECT_EQ(header_err(r, true), EPROTO);
}

TEST(ProtocolHeaderReject, WrongDirectionIsEproto) {
  EXPECT_EQ(header_err(reply(Opcode::kStat, kStatReplySize), false), EPROTO);
  EXPECT_EQ(header_err(request(Opcode::kStat, 0), true), EPROTO);
}

TEST(ProtocolHeaderReject, RequestWithStatusIsEproto) {
  FrameHeader h = request(Opcode::kStat, 0);
  h.status = wire_status(EIO);
  EXPECT_EQ(header_err(h, false), EPROTO);
}

TEST(ProtocolHeaderReject, UnknownOpcodeIsEbadmsg) {
  for (int op : {0, kMaxOpcode + 1, 0x7F, 0xFF}) {
    Bytes b = header_bytes(request(Opcode::kStat, 0));
    b[5] = static_cast<uint8_t>(op);
    EXPECT_EQ(err_of(decode_header(b, false)), EBADMSG) << op;
    Bytes r = header_bytes(reply(Opcode::kAuth, 0));
    r[5] = static_cast<uint8_t>(op);
    EXPECT_EQ(err_of(decode_header(r, true)), EBADMSG) << op;
  }
}

struct FixedLen {
  Opcode op;
  uint32_t len;
};

TEST(ProtocolHeaderReject, RequestPayloadLenNotExactIsEbadmsg) {
  const FixedLen kRequests[] = {
      {Opcode::kHello, 48}, {Opcode::kAuth, 32}, {Opcode::kStat, 0}, {Opcode::kAlloc, 8},
      {Opcode::kFree, 8},   {Opcode::kUnmap, 8}, {Opcode::kMap, 16}, {Opcode::kList, 16},
      {Opcode::kRead, 24},
  };
  for (const FixedLen& f : kRequests) {
    SCOPED_TRACE(opcode_name(f.op));
    EXPECT_EQ(header_err(request(f.op, f.len), false), 0);
    if (f.len > 0) {
      EXPECT_EQ(header_err(request(f.op, f.len - 1), false), EBADMSG);
    }
    EXPECT_EQ(header_err(request(f.op, f.len + 1), false), EBADMSG);
    EXPECT_EQ(header_err(request(f.op, 0xFFFFFFFFu), false), EBADMSG);
  }
}

TEST(ProtocolHeaderReject, WriteRequestPayloadLenOutOfRangeIsEbadmsg) {
  EXPECT_EQ(header_err(request(Opcode::kWrite, 0), false), EBADMSG);
  EXPECT_EQ(header_err(request(Opcode::kWrite, kIoRequestSize), false), EBADMSG);
  EXPECT_EQ(header_err(request(Opcode::kWrite, kIoRequestSize + 1), false), 0);
  EXPECT_EQ(header_err(request(Opcode::kWrite, kMaxPayload), false), 0);
  EXPECT_EQ(header_err(request(Opcode::kWrite, kMaxPayload + 1), false), EBADMSG);
  EXPECT_EQ(header_err(request(Opcode::kWrite, 0xFFFFFFFFu), false), EBADMSG);
}

TEST(ProtocolHeaderReject, SuccessReplyPayloadLenNotExactIsEbadmsg) {
  const FixedLen kReplies[] = {
      {Opcode::kHello, kHelloReplySize}, {Opcode::kAuth, 0},  {Opcode::kAuth, 16}, {Opcode::kStat, 64},
      {Opcode::kAlloc, 0},
      {Opcode::kFree, 0},    {Opcode::kUnmap, 0}, {Opcode::kMap, 24},  {Opcode::kWrite, 0},
      {Opcode::kPersist, 0},
  };
  for (const FixedLen& f : kReplies) {
    SCOPED_TRACE(opcode_name(f.op));
    EXPECT_EQ(header_err(reply(f.op, f.len), true), 0);
    if (f.len > 0) {
      EXPECT_EQ(header_err(reply(f.op, f.len - 1), true), EBADMSG);
    }
    EXPECT_EQ(header_err(reply(f.op, f.len + 1), true), EBADMSG);
  }
}

TEST(ProtocolHeaderReject, ReadReplyPayloadLenOutOfRangeIsEbadmsg) {
  EXPECT_EQ(header_err(reply(Opcode::kRead, 0), true), EBADMSG);
  EXPECT_EQ(header_err(reply(Opcode::kRead, 1), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kRead, kMaxIoSize), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kRead, kMaxIoSize + 1), true), EBADMSG);
}

TEST(ProtocolHeaderReject, ListReplyPayloadLenNotWholeExtentsIsEbadmsg) {
  EXPECT_EQ(header_err(reply(Opcode::kList, 16), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kList, 16 + 24), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kList, 16 + 24 * kMaxListExtents), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kList, 15), true), EBADMSG);
  EXPECT_EQ(header_err(reply(Opcode::kList, 17), true), EBADMSG);
  EXPECT_EQ(header_err(reply(Opcode::kList, 16 + 23), true), EBADMSG);
  EXPECT_EQ(header_err(reply(Opcode::kList, 16 + 24 * (kMaxListExtents + 1)), true), EBADMSG);
}

TEST(ProtocolHeaderReject, HelloReplyPayloadLenNot120Or136IsEbadmsg) {
  EXPECT_EQ(header_err(reply(Opcode::kHello, 120), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kHello, 136), true), 0);
  for (uint32_t len : {0u, 119u, 121u, 128u, 135u, 137u, 152u, 0xFFFFFFFFu}) {
    EXPECT_EQ(header_err(reply(Opcode::kHello, len), true), EBADMSG) << len;
  }
  // The trailer exists only in replies: a HELLO request is still exactly 48.
  EXPECT_EQ(header_err(request(Opcode::kHello, 48 + 16), false), EBADMSG);
}

TEST(ProtocolHeaderReject, PersistRequestPayloadLenNotWholeRangesIsEbadmsg) {
  EXPECT_EQ(header_err(request(Opcode::kPersist, 8), false), 0);
  EXPECT_EQ(header_err(request(Opcode::kPersist, 8 + 24), false), 0);
  EXPECT_EQ(header_err(request(Opcode::kPersist, 8 + 24 * kMaxPersistRanges), false), 0);
  for (uint32_t len : {0u, 4u, 7u, 9u, 8u + 23, 8u + 25, 8u + 24 * kMaxPersistRanges - 1,
                       8u + 24 * (kMaxPersistRanges + 1), 0xFFFFFFFFu}) {
    EXPECT_EQ(header_err(request(Opcode::kPersist, len), false), EBADMSG) << len;
  }
}

TEST(ProtocolHeaderReject, PersistReplyWithPayloadIsEbadmsg) {
  EXPECT_EQ(header_err(reply(Opcode::kPersist, 0), true), 0);
  EXPECT_EQ(header_err(reply(Opcode::kPersist, 8), true), EBADMSG);
  EXPECT_EQ(header_err(reply(Opcode::kPersist, 0, wire_status(EKEYREJECTED)), true), 0);
}

TEST(ProtocolHeaderReject, ErrorReplyWithPayloadIsEbadmsg) {
  for (uint8_t op = 1; op <= kMaxOpcode; op++) {
    SCOPED_TRACE(static_cast<int>(op));
    EXPECT_EQ(header_err(reply(static_cast<Opcode>(op), 0, wire_status(ENOENT)), true), 0);
    EXPECT_EQ(header_err(reply(static_cast<Opcode>(op), 1, wire_status(ENOENT)), true), EBADMSG);
    EXPECT_EQ(header_err(reply(static_cast<Opcode>(op), 24, wire_status(EIO)), true), EBADMSG);
  }
}

// ---- Payload rejections: one test per class ---------------------------------------

TEST(ProtocolPayloadReject, WrongSizeIsEbadmsg) {
  for (int delta : {-1, 1}) {
    SCOPED_TRACE(delta);
    auto resize = [delta](Bytes b) {
      b.resize(b.size() + delta);
      return b;
    };
    EXPECT_EQ(err_of(decode_hello_request(resize(hello_request_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_hello_reply(resize(hello_reply_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_auth_request(resize(Bytes(kAuthRequestSize)))), EBADMSG);
    EXPECT_EQ(err_of(decode_addr_request(resize(addr_bytes(0)))), EBADMSG);
    EXPECT_EQ(err_of(decode_map_request(resize(map_request_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_map_reply(resize(map_reply_bytes({1, 0, 0, kBlockSize})))), EBADMSG);
    EXPECT_EQ(err_of(decode_list_request(resize(list_request_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_list_reply(resize(list_reply_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_stat_reply(resize(stat_reply_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_io_request(resize(io_bytes({1, 0, 1})), Opcode::kRead, nullptr)), EBADMSG);
    EXPECT_EQ(err_of(decode_hello_reply(resize(hello_reply_bytes(rdma_hello_reply())))), EBADMSG);
    EXPECT_EQ(err_of(decode_persist_request(resize(persist_bytes({})))), EBADMSG);
    EXPECT_EQ(err_of(decode_persist_request(resize(persist_bytes(sample_persist_request())))), EBADMSG);
  }
  EXPECT_EQ(err_of(decode_hello_request({})), EBADMSG);
  EXPECT_EQ(err_of(decode_stat_reply({})), EBADMSG);
}

TEST(ProtocolPayloadReject, WriteWithoutDataOrTooLargeIsEbadmsg) {
  EXPECT_EQ(err_of(decode_io_request(io_bytes({1, 0, 1}), Opcode::kWrite, nullptr)), EBADMSG);
  Bytes short_fixed = io_bytes({1, 0, 1});
  short_fixed.resize(kIoRequestSize - 1);
  EXPECT_EQ(err_of(decode_io_request(short_fixed, Opcode::kWrite, nullptr)), EBADMSG);
  Bytes huge = io_bytes({1, 0, kMaxIoSize}, kMaxIoSize + 1);
  EXPECT_EQ(err_of(decode_io_request(huge, Opcode::kWrite, nullptr)), EBADMSG);
}

TEST(ProtocolPayloadReject, ListReplyNotWholeExtentsIsEbadmsg) {
  Bytes b = list_reply_bytes(sample_list_reply());
  b.resize(b.size() - 1);
  EXPECT_EQ(err_of(decode_list_reply(b)), EBADMSG);
  ListReply too_many;
  for (uint64_t i = 0; i <= kMaxListExtents; i++) too_many.extents.push_back({i * kBlockSize, 1, 0, 0});
  Bytes big(list_reply_size(too_many.extents.size()));
  // encode_list_reply() asserts on this; build the frame by hand.
  put_le(&big, 0, 4, too_many.extents.size());
  for (size_t i = 0; i < too_many.extents.size(); i++) {
    put_le(&big, 16 + 24 * i, 8, too_many.extents[i].start_vaddr);
    put_le(&big, 16 + 24 * i + 8, 8, 1);
  }
  EXPECT_EQ(err_of(decode_list_reply(big)), EBADMSG);
}

// Sets each reserved byte range in turn and expects EBADMSG.
template <typename Decode>
void expect_reserved_rejected(Bytes good, std::initializer_list<std::pair<size_t, size_t>> ranges,
                              Decode decode) {
  ASSERT_EQ(err_of(decode(good)), 0);
  for (auto [off, size] : ranges) {
    for (size_t i = 0; i < size; i++) {
      Bytes b = good;
      b.at(off + i) = 0x80;
      EXPECT_EQ(err_of(decode(b)), EBADMSG) << "reserved byte at offset " << off + i;
    }
  }
}

TEST(ProtocolPayloadReject, HelloReplySizeBetween120And136IsEbadmsg) {
  Bytes b = hello_reply_bytes(rdma_hello_reply());
  for (size_t n : {size_t{0}, size_t{121}, size_t{128}, size_t{135}, size_t{152}}) {
    Bytes c = b;
    c.resize(n);
    EXPECT_EQ(err_of(decode_hello_reply(c)), EBADMSG) << n;
  }
}

TEST(ProtocolPayloadReject, HelloReplyTrailerWithoutRdmaFeatureIsEbadmsg) {
  HelloReply m = rdma_hello_reply();
  m.features = kFeatureSyncRead | kFeaturePersistRpc;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EBADMSG);
  m.features = 0;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EBADMSG);
}

TEST(ProtocolPayloadReject, HelloReplyRdmaFeatureWithoutTrailerIsEbadmsg) {
  HelloReply m = rdma_hello_reply();
  m.has_rdma_trailer = false;
  Bytes b = hello_reply_bytes(m);
  EXPECT_EQ(b.size(), kHelloReplySize);
  EXPECT_EQ(err_of(decode_hello_reply(b)), EBADMSG);
  // The same reply cut short: a 136-byte reply whose trailer went missing.
  Bytes cut = hello_reply_bytes(rdma_hello_reply());
  cut.resize(kHelloReplySize);
  EXPECT_EQ(err_of(decode_hello_reply(cut)), EBADMSG);
}

TEST(ProtocolPayloadReject, HelloRequestReservedIsEbadmsg) {
  expect_reserved_rejected(hello_request_bytes({}), {{4, 4}},
                           [](const Bytes& b) { return decode_hello_request(b); });
}

TEST(ProtocolPayloadReject, HelloReplyReservedIsEbadmsg) {
  expect_reserved_rejected(hello_reply_bytes({}), {{2, 2}, {20, 4}},
                           [](const Bytes& b) { return decode_hello_reply(b); });
}

TEST(ProtocolPayloadReject, HelloReplyTrailerReservedIsEbadmsg) {
  expect_reserved_rejected(hello_reply_bytes(rdma_hello_reply()), {{2, 2}, {20, 4}, {124, 4}},
                           [](const Bytes& b) { return decode_hello_reply(b); });
}

TEST(ProtocolPayloadReject, PersistRequestReservedIsEbadmsg) {
  expect_reserved_rejected(persist_bytes({}), {{4, 4}},
                           [](const Bytes& b) { return decode_persist_request(b); });
  expect_reserved_rejected(persist_bytes(sample_persist_request()),
                           {{4, 4}, {8 + 4, 4}, {8 + 24 + 4, 4}, {8 + 48 + 4, 4}},
                           [](const Bytes& b) { return decode_persist_request(b); });
}

TEST(ProtocolPayloadReject, PersistRequestCountMismatchIsEbadmsg) {
  Bytes b = persist_bytes(sample_persist_request());
  for (uint32_t count : {0u, 2u, 4u, kMaxPersistRanges, kMaxPersistRanges + 1, 0xFFFFFFFFu}) {
    put_le(&b, 0, 4, count);
    EXPECT_EQ(err_of(decode_persist_request(b)), EBADMSG) << count;
  }
  Bytes empty = persist_bytes({});
  put_le(&empty, 0, 4, 1);  // one range announced, none present
  EXPECT_EQ(err_of(decode_persist_request(empty)), EBADMSG);
}

TEST(ProtocolPayloadReject, PersistRequestTooManyRangesIsEbadmsg) {
  // encode_persist_request() asserts on this; build the payload by hand.
  Bytes b(persist_request_size(kMaxPersistRanges + 1));
  put_le(&b, 0, 4, kMaxPersistRanges + 1);
  for (size_t i = 0; i <= kMaxPersistRanges; i++) put_le(&b, 8 + 24 * i + 16, 8, 1);
  EXPECT_EQ(err_of(decode_persist_request(b)), EBADMSG);
}

TEST(ProtocolPayloadReject, PersistRangeLengthOutOfRangeIsEinval) {
  for (uint64_t len : {uint64_t{0}, kBlockSize + 1, ~uint64_t{0}}) {
    for (size_t which = 0; which < 3; which++) {
      PersistRequest m = sample_persist_request();
      m.ranges[which].length = len;
      EXPECT_EQ(err_of(decode_persist_request(persist_bytes(m))), EINVAL) << len << " in " << which;
    }
  }
}

TEST(ProtocolPayloadReject, PersistRangeWrapsIsEinval) {
  PersistRequest m = sample_persist_request();
  m.ranges[2].remote_addr = ~uint64_t{0} - 100;
  m.ranges[2].length = 101;  // would end exactly at 2^64
  EXPECT_EQ(err_of(decode_persist_request(persist_bytes(m))), EINVAL);
  m.ranges[2].length = kBlockSize;
  EXPECT_EQ(err_of(decode_persist_request(persist_bytes(m))), EINVAL);
  m.ranges[2].remote_addr = ~uint64_t{0};
  m.ranges[2].length = 1;
  EXPECT_EQ(err_of(decode_persist_request(persist_bytes(m))), EINVAL);
  m.ranges[2].length = 100;
  m.ranges[2].remote_addr = ~uint64_t{0} - 100;  // ends at 2^64 - 1
  EXPECT_EQ(err_of(decode_persist_request(persist_bytes(m))), 0);
}

TEST(ProtocolPayloadReject, MapRequestReservedIsEbadmsg) {
  expect_reserved_rejected(map_request_bytes({}), {{12, 4}},
                           [](const Bytes& b) { return decode_map_request(b); });
}

TEST(ProtocolPayloadReject, ListRequestReservedIsEbadmsg) {
  expect_reserved_rejected(list_request_bytes({}), {{12, 4}},
                           [](const Bytes& b) { return decode_list_request(b); });
}

TEST(ProtocolPayload, StatReplySlowTierBytes) {
  StatReply m;
  m.capacity_blocks = 100;
  m.free_blocks = 60;
  m.slow_capacity_blocks = 0x01020304;
  m.capacity_blocks = 0x01020304 + 16;
  m.slow_free_blocks = 0x00A0B0C0;
  Bytes b = stat_reply_bytes(m);
  EXPECT_EQ(Bytes(b.begin() + 56, b.end()), (Bytes{0x04, 0x03, 0x02, 0x01, 0xC0, 0xB0, 0xA0, 0x00}));
  auto d = decode_stat_reply(b);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->slow_capacity_blocks, 0x01020304u);
  EXPECT_EQ(d->slow_free_blocks, 0x00A0B0C0u);
}

TEST(ProtocolPayloadReject, StatSlowTierLargerThanCapacityIsEinval) {
  StatReply m;
  m.capacity_blocks = 10;
  m.slow_capacity_blocks = 11;
  EXPECT_EQ(err_of(decode_stat_reply(stat_reply_bytes(m))), EINVAL);
  m.slow_capacity_blocks = 5;
  m.slow_free_blocks = 6;
  EXPECT_EQ(err_of(decode_stat_reply(stat_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, IoRequestReservedIsEbadmsg) {
  expect_reserved_rejected(io_bytes({1, 0, 1}), {{4, 4}, {20, 4}}, [](const Bytes& b) {
    return decode_io_request(b, Opcode::kRead, nullptr);
  });
  expect_reserved_rejected(io_bytes({1, 0, 3}, 3), {{4, 4}, {20, 4}}, [](const Bytes& b) {
    return decode_io_request(b, Opcode::kWrite, nullptr);
  });
}

TEST(ProtocolPayloadReject, HelloMinVersionZeroIsEinval) {
  EXPECT_EQ(err_of(decode_hello_request(hello_request_bytes({0, 1, 0, {}}))), EINVAL);
  EXPECT_EQ(err_of(decode_hello_request(hello_request_bytes({0, 0, 0, {}}))), EINVAL);
}

TEST(ProtocolPayloadReject, HelloMinAboveMaxIsEinval) {
  EXPECT_EQ(err_of(decode_hello_request(hello_request_bytes({2, 1, 0, {}}))), EINVAL);
  EXPECT_EQ(err_of(decode_hello_request(hello_request_bytes({2, 2, 0, {}}))), 0);
}

TEST(ProtocolPayloadReject, HelloReplyVersionZeroIsEinval) {
  HelloReply m;
  m.version = 0;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, HelloReplyMaxIoSizeOutOfRangeIsEinval) {
  HelloReply m;
  m.max_io_size = 0;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EINVAL);
  m.max_io_size = kMaxIoSize + 1;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), EINVAL);
  m.max_io_size = 4096;
  EXPECT_EQ(err_of(decode_hello_reply(hello_reply_bytes(m))), 0);
}

TEST(ProtocolPayloadReject, UnalignedBlockAddressIsEinval) {
  for (uint64_t vaddr : {uint64_t{1}, uint64_t{4096}, kBlockSize / 2, kBlockSize + 512, ~uint64_t{0}}) {
    SCOPED_TRACE(vaddr);
    EXPECT_EQ(err_of(decode_addr_request(addr_bytes(vaddr))), EINVAL);
    EXPECT_EQ(err_of(decode_map_request(map_request_bytes({vaddr, 0}))), EINVAL);
  }
}

TEST(ProtocolPayloadReject, MapRequestUnknownFlagsIsEinval) {
  for (uint32_t bit = 2; bit < 32; bit++) {
    EXPECT_EQ(err_of(decode_map_request(map_request_bytes({0, 1u << bit}))), EINVAL) << bit;
  }
}

TEST(ProtocolPayloadReject, MapReplyUnknownFlagsIsEinval) {
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 1u << 2, 0, kBlockSize}))), EINVAL);
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 1u << 31, 0, kBlockSize}))), EINVAL);
}

TEST(ProtocolPayloadReject, MapReplyLengthOutOfRangeIsEinval) {
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, 0x200000, 0}))), EINVAL);
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, 0x200000, kBlockSize + 1}))), EINVAL);
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, 0x200000, 1}))), 0);
}

TEST(ProtocolPayloadReject, MapReplyRangeWrapsIsEinval) {
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, ~uint64_t{0} - 100, kBlockSize}))), EINVAL);
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, ~(kBlockSize - 1), kBlockSize}))), EINVAL);
  EXPECT_EQ(err_of(decode_map_reply(map_reply_bytes({1, 0, ~kBlockSize + 1 - kBlockSize, kBlockSize}))), 0);
}

TEST(ProtocolPayloadReject, ListMaxExtentsOutOfRangeIsEinval) {
  EXPECT_EQ(err_of(decode_list_request(list_request_bytes({0, 0}))), EINVAL);
  EXPECT_EQ(err_of(decode_list_request(list_request_bytes({0, kMaxListExtents + 1}))), EINVAL);
  EXPECT_EQ(err_of(decode_list_request(list_request_bytes({0, 0xFFFFFFFFu}))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyCountMismatchIsEinval) {
  Bytes b = list_reply_bytes(sample_list_reply());
  put_le(&b, 0, 4, 2);
  EXPECT_EQ(err_of(decode_list_reply(b)), EINVAL);
  put_le(&b, 0, 4, 4);
  EXPECT_EQ(err_of(decode_list_reply(b)), EINVAL);
  put_le(&b, 0, 4, kMaxListExtents + 1);
  EXPECT_EQ(err_of(decode_list_reply(b)), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyUnknownListFlagsIsEinval) {
  ListReply m = sample_list_reply();
  m.list_flags = kListMore | (1u << 5);
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyZeroBlockCountIsEinval) {
  ListReply m = sample_list_reply();
  m.extents[1].block_count = 0;
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyUnknownExtentFlagsIsEinval) {
  ListReply m = sample_list_reply();
  m.extents[2].extent_flags = 1u << 1;
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyUnalignedExtentIsEinval) {
  ListReply m = sample_list_reply();
  m.extents[0].start_vaddr = 4096;
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyExtentPastTopOfAddressSpaceIsEinval) {
  ListReply m;
  m.extents.push_back({~(kBlockSize - 1), 2, 0, 0});
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
  m.extents[0] = {0, ~uint64_t{0}, 0, 0};
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, ListReplyUnorderedOrOverlappingExtentsIsEinval) {
  ListReply overlap = sample_list_reply();
  overlap.extents[1].start_vaddr = 2 * kBlockSize;  // inside extent 0 (blocks 0..2)
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(overlap))), EINVAL);
  ListReply unordered = sample_list_reply();
  std::swap(unordered.extents[1], unordered.extents[2]);
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(unordered))), EINVAL);
  ListReply after_top;
  after_top.extents.push_back({~(kBlockSize - 1), 1, 0, 0});
  after_top.extents.push_back({0, 1, 0, 0});
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(after_top))), EINVAL);
  // Touching (not coalesced, e.g. different flags) is fine.
  ListReply touching;
  touching.extents.push_back({0, 2, 0, 0});
  touching.extents.push_back({2 * kBlockSize, 1, kExtentMapped, 0});
  EXPECT_EQ(err_of(decode_list_reply(list_reply_bytes(touching))), 0);
}

TEST(ProtocolPayloadReject, StatWrongBlockSizeIsEinval) {
  StatReply m;
  m.block_size = 4096;
  EXPECT_EQ(err_of(decode_stat_reply(stat_reply_bytes(m))), EINVAL);
  m.block_size = 0;
  EXPECT_EQ(err_of(decode_stat_reply(stat_reply_bytes(m))), EINVAL);
}

TEST(ProtocolPayloadReject, IoLengthOutOfRangeIsEinval) {
  EXPECT_EQ(err_of(decode_io_request(io_bytes({1, 0, 0}), Opcode::kRead, nullptr)), EINVAL);
  EXPECT_EQ(err_of(decode_io_request(io_bytes({1, 0, kMaxIoSize + 1}), Opcode::kRead, nullptr)), EINVAL);
  EXPECT_EQ(err_of(decode_io_request(io_bytes({1, 0, 0xFFFFFFFFu}), Opcode::kRead, nullptr)), EINVAL);
  Bytes w = io_bytes({1, 0, 0}, 1);
  EXPECT_EQ(err_of(decode_io_request(w, Opcode::kWrite, nullptr)), EINVAL);
}

TEST(ProtocolPayloadReject, WriteLengthDisagreesWithDataIsEinval) {
  Bytes b = io_bytes({1, 0, 100}, 99);
  EXPECT_EQ(err_of(decode_io_request(b, Opcode::kWrite, nullptr)), EINVAL);
  b = io_bytes({1, 0, 100}, 101);
  EXPECT_EQ(err_of(decode_io_request(b, Opcode::kWrite, nullptr)), EINVAL);
}

TEST(ProtocolPayloadReject, IoDecoderWithOtherOpcodeIsEinval) {
  EXPECT_EQ(err_of(decode_io_request(io_bytes({1, 0, 1}), Opcode::kMap, nullptr)), EINVAL);
}

// ---- Status codes and names -------------------------------------------------------

TEST(ProtocolStatus, WireCodesAreLinuxErrnoNumbersAndRoundTrip) {
  const std::pair<int, uint32_t> kCodes[] = {
      {EPERM, 1},     {ENOENT, 2},       {EIO, 5},           {E2BIG, 7},     {EAGAIN, 11},
      {ENOMEM, 12},   {EACCES, 13},      {EFAULT, 14},       {EBUSY, 16},    {EEXIST, 17},
      {EINVAL, 22},   {EFBIG, 27},       {ENOSPC, 28},       {EROFS, 30},    {ERANGE, 34},
      {ENOSYS, 38},   {EPROTO, 71},      {EBADMSG, 74},      {EOVERFLOW, 75}, {EPROTONOSUPPORT, 93},
      {ENOTSUP, 95},  {ENOBUFS, 105},    {ESHUTDOWN, 108},   {ETIMEDOUT, 110}, {EUCLEAN, 117},
      {EKEYREJECTED, 129},
  };
  for (auto [errnum, wire] : kCodes) {
    EXPECT_EQ(wire_status(errnum), wire) << errno_name(errnum);
    EXPECT_EQ(errno_from_wire(wire), errnum) << errno_name(errnum);
  }
  EXPECT_EQ(wire_status(0), 0u);
  EXPECT_EQ(errno_from_wire(0), 0);
}

TEST(ProtocolStatus, UnknownCodesBecomeEio) {
  for (int errnum : {ENODEV, EPIPE, ECONNRESET, EINTR, EBADF, -1, 100000}) {
    EXPECT_EQ(wire_status(errnum), 5u) << errnum;
  }
  for (uint32_t wire : {3u, 4u, 19u, 32u, 104u, 1000u, 0xFFFFFFFFu}) {
    EXPECT_EQ(errno_from_wire(wire), EIO) << wire;
  }
}

TEST(ProtocolStatus, OpcodeNames) {
  const char* const kNames[] = {"HELLO", "AUTH", "STAT", "ALLOC", "FREE",   "MAP",
                                "UNMAP", "LIST", "READ", "WRITE", "PERSIST", "FENCE"};
  static_assert(std::size(kNames) == kMaxOpcode);
  for (uint8_t op = 1; op <= kMaxOpcode; op++) {
    EXPECT_STREQ(opcode_name(static_cast<Opcode>(op)), kNames[op - 1]);
  }
  EXPECT_STREQ(opcode_name(static_cast<Opcode>(0)), "?");
  EXPECT_STREQ(opcode_name(static_cast<Opcode>(kMaxOpcode + 1)), "?");
}

}  // namespace
}  // namespace pbrick::proto
