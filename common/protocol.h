// pbrick wire protocol v1: frame header and one message per brick operation.
//
// The byte-level specification is docs/protocol.md; this header is its code form.
// Every multi-byte field is little-endian. A frame is a 32-byte header followed by
// `payload_len` bytes whose layout depends on the opcode and on the REPLY flag.
//
// Decoders never trust the peer: decode_header() checks magic, version, flags,
// reserved fields, the opcode and that payload_len is one the opcode allows (one
// exact size for most frames; a bounded range for data, LIST replies and PERSIST
// requests), so a caller can size nothing by the peer: it reads at most
// kMaxPayload bytes into a buffer it allocated up front.
// The decode_* functions then validate each field of the payload.
//
// The same frames run over TCP (a byte stream) and over RDMA (one SEND per
// frame, see the kRdma* constants and docs/protocol.md "RDMA transport").
//
// All functions are pure and thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/result.h"

namespace pbrick::proto {

inline constexpr uint32_t kMagic = 0x4B524250;  // "PBRK" as bytes on the wire
inline constexpr uint8_t kVersion1 = 1;
inline constexpr uint8_t kMinVersion = 1;
inline constexpr uint8_t kMaxVersion = 1;

inline constexpr size_t kHeaderSize = 32;
inline constexpr uint64_t kBlockSize = 2ull << 20;
// Largest READ/WRITE data length: one whole block.
inline constexpr uint32_t kMaxIoSize = 2u << 20;
inline constexpr size_t kIoRequestSize = 24;  // READ/WRITE fixed part
// Largest payload of any frame (a WRITE request carrying kMaxIoSize bytes).
inline constexpr size_t kMaxPayload = kIoRequestSize + kMaxIoSize;
inline constexpr uint32_t kMaxListExtents = 4096;
inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kProofSize = 32;  // HMAC-SHA256
inline constexpr size_t kUuidSize = 16;

enum class Opcode : uint8_t {
  kHello = 1,
  kAuth = 2,
  kStat = 3,
  kAlloc = 4,
  kFree = 5,
  kMap = 6,
  kUnmap = 7,
  kList = 8,
  kRead = 9,
  kWrite = 10,
  kPersist = 11,
  kFence = 12,
};
inline constexpr uint8_t kMaxOpcode = 12;
const char* opcode_name(Opcode op);

// Header flags.
inline constexpr uint16_t kFlagReply = 1u << 0;
inline constexpr uint16_t kKnownHeaderFlags = kFlagReply;

// Feature bits negotiated in HELLO: the reply carries the intersection of what
// both sides offered. Unknown bits are ignored, never an error.
inline constexpr uint64_t kFeatureSyncRead = 1ull << 0;  // READ after WRITEs waits for persistence
// The PERSIST opcode is available: the brick makes named ranges durable on
// request and replies when they are.
inline constexpr uint64_t kFeaturePersistRpc = 1ull << 1;
// The connection is an RDMA (RC queue pair) connection: MAP returns real NIC
// rkeys and addresses, READ/WRITE frames are refused with EOPNOTSUPP (data moves
// by one-sided RDMA), and the HELLO reply carries the RDMA trailer. Granted only
// on RDMA connections; a client over TCP never gets it.
inline constexpr uint64_t kFeatureRdma = 1ull << 2;
// On an RDMA connection to a brick that requires AUTH, the RDMA trailer (the
// sync region) comes in the AUTH reply instead of the HELLO reply, so that a
// peer that has not proved the cluster key learns nothing of the brick's
// memory. A brick with a key refuses RDMA clients that do not offer it.
inline constexpr uint64_t kFeatureAuthTrailer = 1ull << 3;
// The STAT reply carries the slow tier's capacity and free blocks (bytes
// 56..63, zero without this feature); LIST extents carry a tier (always did).
// Granted whenever offered: a brick without a slow tier reports 0 slow blocks.
inline constexpr uint64_t kFeatureTiers = 1ull << 4;
// The FENCE opcode is available (docs/protocol.md §7.9).
inline constexpr uint64_t kFeatureFence = 1ull << 5;
// Every bit this version defines. A brick grants only the bits that hold on the
// connection at hand (kFeatureRdma on RDMA connections only, kFeatureSyncRead
// over RDMA only with --persistence sync-read), so it must not simply grant
// `offered & kKnownFeatures`.
inline constexpr uint64_t kKnownFeatures =
    kFeatureSyncRead | kFeaturePersistRpc | kFeatureRdma | kFeatureAuthTrailer | kFeatureTiers | kFeatureFence;

// HELLO reply flags.
inline constexpr uint32_t kHelloAuthRequired = 1u << 0;

// MAP flags.
inline constexpr uint32_t kMapWrite = 1u << 0;   // read-write; read-only when clear
inline constexpr uint32_t kMapShared = 1u << 1;  // others may map too; exclusive when clear
inline constexpr uint32_t kKnownMapFlags = kMapWrite | kMapShared;

// LIST reply flags and extent flags.
inline constexpr uint32_t kListMore = 1u << 0;
inline constexpr uint32_t kExtentMapped = 1u << 0;

// STAT store kinds.
inline constexpr uint16_t kStoreFile = 0;  // page cache + msync/fdatasync
inline constexpr uint16_t kStorePmem = 1;  // real persistent memory: cache flush + drain

struct FrameHeader {
  uint32_t magic = kMagic;
  uint8_t version = kVersion1;
  Opcode opcode = Opcode::kHello;
  uint16_t flags = 0;
  uint32_t status = 0;  // 0 in requests; in replies 0 or a wire status (see wire_status)
  uint32_t payload_len = 0;
  uint64_t request_id = 0;
  uint64_t reserved = 0;

  bool is_reply() const { return (flags & kFlagReply) != 0; }
};

struct HelloRequest {
  uint16_t min_version = kMinVersion;
  uint16_t max_version = kMaxVersion;
  uint64_t features = 0;
  std::array<uint8_t, kNonceSize> client_nonce{};
};
inline constexpr size_t kHelloRequestSize = 48;

struct HelloReply {
  uint16_t version = kVersion1;
  uint32_t hello_flags = 0;
  uint64_t features = 0;
  uint32_t max_io_size = kMaxIoSize;
  std::array<uint8_t, kUuidSize> brick_uuid{};
  std::array<uint8_t, kNonceSize> server_nonce{};
  std::array<uint8_t, kProofSize> server_proof{};  // zeros when no key is configured
  // The brick host's boot id: unchanged across brick restarts unless the host
  // rebooted, i.e. unless unpersisted data in its memory may have been lost.
  std::array<uint8_t, kUuidSize> boot_id{};
  // RDMA trailer, present exactly when `features` has kFeatureRdma and the
  // trailer does not come in the AUTH reply instead (hello_has_rdma_trailer):
  // the brick's sync region, a small read-only memory region a client targets
  // with its sync-read (an RDMA READ after its writes on the same queue pair).
  bool has_rdma_trailer = false;
  uint32_t sync_rkey = 0;
  uint64_t sync_addr = 0;
};
inline constexpr size_t kHelloReplySize = 120;  // without the RDMA trailer
inline constexpr size_t kHelloRdmaTrailerSize = 16;
// Whether a HELLO reply with these features and flags carries the RDMA
// trailer: on RDMA connections, unless AUTH_TRAILER moved it to the AUTH reply
// of a brick that requires AUTH.
bool hello_has_rdma_trailer(uint64_t features, uint32_t hello_flags);

struct AuthRequest {
  std::array<uint8_t, kProofSize> client_proof{};
};
inline constexpr size_t kAuthRequestSize = 32;

// A successful AUTH reply is empty, or carries the RDMA trailer (16 bytes, the
// same layout as the HELLO reply's) when the connection granted kFeatureRdma
// and kFeatureAuthTrailer.
struct AuthReply {
  bool has_rdma_trailer = false;
  uint32_t sync_rkey = 0;
  uint64_t sync_addr = 0;
};

// ALLOC, FREE and UNMAP carry just the block's virtual address.
struct AddrRequest {
  uint64_t vaddr = 0;
};
inline constexpr size_t kAddrRequestSize = 8;

struct MapRequest {
  uint64_t vaddr = 0;
  uint32_t map_flags = 0;
};
inline constexpr size_t kMapRequestSize = 16;

// The RDMA handle: exactly what an RDMA initiator needs (rkey + remote address).
struct MapReply {
  uint32_t rkey = 0;
  uint32_t map_flags = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;
};
inline constexpr size_t kMapReplySize = 24;

struct ListRequest {
  uint64_t cursor = 0;  // list allocated blocks with vaddr >= cursor
  uint32_t max_extents = kMaxListExtents;
};
inline constexpr size_t kListRequestSize = 16;

struct Extent {
  uint64_t start_vaddr = 0;
  uint64_t block_count = 0;
  uint32_t extent_flags = 0;
  uint32_t tier = 0;
  bool operator==(const Extent&) const = default;
};
inline constexpr size_t kExtentSize = 24;

struct ListReply {
  uint32_t list_flags = 0;  // kListMore: call again with next_cursor
  uint64_t next_cursor = 0;
  std::vector<Extent> extents;
};
inline constexpr size_t kListReplyFixedSize = 16;

struct StatReply {
  uint64_t capacity_blocks = 0;
  uint64_t free_blocks = 0;
  uint64_t allocated_blocks = 0;
  uint64_t mapped_blocks = 0;
  std::array<uint8_t, kUuidSize> brick_uuid{};
  uint32_t block_size = static_cast<uint32_t>(kBlockSize);
  uint16_t protocol_version = kVersion1;
  uint16_t store_kind = kStoreFile;
  // With kFeatureTiers: the part of capacity_blocks and free_blocks (which
  // count both tiers) that is on the slow tier; zero without the feature.
  uint32_t slow_capacity_blocks = 0;
  uint32_t slow_free_blocks = 0;
};
inline constexpr size_t kStatReplySize = 64;

// READ and WRITE fixed part; a WRITE request is followed by `length` data bytes,
// a READ reply carries `length` data bytes.
struct IoRequest {
  uint32_t rkey = 0;
  uint64_t remote_addr = 0;
  uint32_t length = 0;
};

// PERSIST: make the named ranges durable. A range lies inside one handle, like
// a READ/WRITE; no ranges at all means every block currently mapped writable on
// the brick. The reply is empty: status 0 once everything named is durable.
struct PersistRange {
  uint32_t rkey = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;  // 1..kBlockSize
};
struct PersistRequest {
  std::vector<PersistRange> ranges;  // at most kMaxPersistRanges
};
inline constexpr size_t kPersistRequestFixedSize = 8;  // range_count + reserved
inline constexpr size_t kPersistRangeSize = 24;
inline constexpr uint32_t kMaxPersistRanges = 128;

// FENCE: this connection takes the place of every earlier connection of the
// same writer and channel in `scope`, and of every connection another writer
// fenced in `scope`: the brick closes them before it replies, and nothing
// they sent that it had not yet executed is executed. The reply is empty.
struct FenceRequest {
  uint64_t scope = 0;                     // what is written: a volume's base address on the brick
  std::array<uint8_t, kUuidSize> writer{};  // the writing attachment, random per attachment
  uint64_t channel = 0;                   // one of the writer's connections to this brick
};
inline constexpr size_t kFenceRequestSize = 32;

// ---- RDMA transport ------------------------------------------------------------
// Every SEND carries exactly one whole frame of at most this many bytes, and
// every receive buffer is this size (READ/WRITE frames, the only larger ones,
// are refused on RDMA connections).
inline constexpr size_t kRdmaMessageSize = 4096;
// A client never has more than this many requests outstanding on one RDMA
// connection. Each request gets exactly one reply, so both sides keep this many
// receives posted and a SEND never meets a missing receive (no RNR).
inline constexpr uint32_t kRdmaMaxOutstanding = 16;
// Most extents a brick puts in a LIST reply on an RDMA connection; it sets
// kListMore when it stopped there, and clients page as usual.
inline constexpr uint32_t kRdmaMaxListExtents =
    static_cast<uint32_t>((kRdmaMessageSize - kHeaderSize - kListReplyFixedSize) / kExtentSize);

// ---- Errors on the wire ------------------------------------------------------
// The one place where errno values are mapped to wire status codes and back.
// Wire status codes use Linux errno numbering for the values listed in
// docs/protocol.md; anything else travels as EIO.
uint32_t wire_status(int errnum);
int errno_from_wire(uint32_t status);

// ---- Encoding ------------------------------------------------------------------
// Each encoder writes exactly its *Size bytes (or the stated size) at `out`.
void encode_header(const FrameHeader& h, uint8_t* out);
void encode_hello_request(const HelloRequest& m, uint8_t* out);
// Writes hello_reply_size(m) bytes: kHelloReplySize, plus kHelloRdmaTrailerSize
// when m.has_rdma_trailer.
void encode_hello_reply(const HelloReply& m, uint8_t* out);
size_t hello_reply_size(const HelloReply& m);
void encode_auth_request(const AuthRequest& m, uint8_t* out);
// Writes auth_reply_size(m) bytes: 0, or kHelloRdmaTrailerSize with the trailer.
void encode_auth_reply(const AuthReply& m, uint8_t* out);
size_t auth_reply_size(const AuthReply& m);
void encode_addr_request(const AddrRequest& m, uint8_t* out);
void encode_map_request(const MapRequest& m, uint8_t* out);
void encode_map_reply(const MapReply& m, uint8_t* out);
void encode_list_request(const ListRequest& m, uint8_t* out);
// Writes kListReplyFixedSize + extents.size() * kExtentSize bytes.
void encode_list_reply(const ListReply& m, uint8_t* out);
size_t list_reply_size(size_t extent_count);
void encode_stat_reply(const StatReply& m, uint8_t* out);
void encode_io_request(const IoRequest& m, uint8_t* out);  // kIoRequestSize bytes
// Writes persist_request_size(m.ranges.size()) bytes.
void encode_persist_request(const PersistRequest& m, uint8_t* out);
size_t persist_request_size(size_t range_count);
void encode_fence_request(const FenceRequest& m, uint8_t* out);  // kFenceRequestSize bytes

// ---- Decoding ------------------------------------------------------------------
// Validates a header read from the peer. `expect_reply` says which direction we
// are decoding: a server passes false, a client true. Errors are EPROTO (bad
// magic, unknown flags, nonzero reserved, reply bit wrong), EPROTONOSUPPORT
// (version), EBADMSG (unknown opcode, payload length not allowed for the opcode).
// For a reply with nonzero status the payload must be empty.
Result<FrameHeader> decode_header(std::span<const uint8_t> bytes, bool expect_reply);

// Peeks at fields of a frame without validating it, for a peer that must size
// a buffer or say why it closes before (or instead of) decode_header():
// The frame's whole size as its header says: kHeaderSize + payload_len. Only
// for frames this side encoded itself (`header` holds at least kHeaderSize bytes).
size_t frame_size(std::span<const uint8_t> header);
// What of a request header that decode_header() refused can still be echoed
// in the error reply: its opcode byte (as it came, possibly unknown) and its
// request id. nullopt when the magic is not ours: the peer does not speak
// this protocol and nothing in the header can be believed.
std::optional<FrameHeader> salvage_request_header(std::span<const uint8_t> header);
// The length field of a READ or WRITE request's fixed part (`payload` holds
// at least kIoRequestSize bytes), unvalidated: decode_io_request() checks it.
uint32_t peek_io_length(std::span<const uint8_t> payload);

// Payload decoders: `bytes` is exactly the payload. EBADMSG on a wrong size or a
// nonzero reserved field, EINVAL on a field value outside its domain (documented
// per message in docs/protocol.md).
Result<HelloRequest> decode_hello_request(std::span<const uint8_t> bytes);
// Exactly kHelloReplySize bytes, or kHelloReplySize + kHelloRdmaTrailerSize
// when hello_has_rdma_trailer(features, hello_flags); a reply whose size
// disagrees with its own features and flags is EBADMSG.
Result<HelloReply> decode_hello_reply(std::span<const uint8_t> bytes);
Result<AuthRequest> decode_auth_request(std::span<const uint8_t> bytes);
// Empty, or exactly the 16-byte RDMA trailer; anything else is EBADMSG.
Result<AuthReply> decode_auth_reply(std::span<const uint8_t> bytes);
Result<AddrRequest> decode_addr_request(std::span<const uint8_t> bytes);
Result<MapRequest> decode_map_request(std::span<const uint8_t> bytes);
Result<MapReply> decode_map_reply(std::span<const uint8_t> bytes);
Result<ListRequest> decode_list_request(std::span<const uint8_t> bytes);
Result<ListReply> decode_list_reply(std::span<const uint8_t> bytes);
Result<StatReply> decode_stat_reply(std::span<const uint8_t> bytes);
// For WRITE, `bytes` is the whole payload: the fixed part plus exactly `length`
// data bytes (`data` is set to point at them). For READ, exactly the fixed part.
Result<IoRequest> decode_io_request(std::span<const uint8_t> bytes, Opcode op,
                                    std::span<const uint8_t>* data);
// range_count must match the payload size and reserved fields must be zero
// (EBADMSG); each range needs length 1..kBlockSize and must not wrap (EINVAL).
Result<PersistRequest> decode_persist_request(std::span<const uint8_t> bytes);
// Exactly kFenceRequestSize bytes (EBADMSG); every value of every field is legal.
Result<FenceRequest> decode_fence_request(std::span<const uint8_t> bytes);

}  // namespace pbrick::proto
