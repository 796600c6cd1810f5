// One client connection of the brick: its handshake state, input and output
// buffers, handles and persistence state, and the transport that moves its
// bytes (conn_transport.h: a TCP stream or RDMA messages, behind one
// interface, so nothing above it asks which one it is).
//
// Buffers: until its handshake completes a connection holds one page in and
// one page out (a peer that proved nothing cannot make the brick hold more);
// grow_buffers() gives a ready connection full-size ones. Frames are parsed
// from `in` (request.cc), replies are appended to `out` and sent by the
// transport.
//
// Threading: the Server's loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/protocol.h"
#include "common/result.h"
#include "target/persistence_ledger.h"

namespace pbrick {

class ConnTransport;

// Input holds at least one whole frame of the largest kind plus room to read
// ahead; output holds the largest reply (a READ of kMaxIoSize) plus a batch of
// small replies. Both are allocated once per connection; pages never touched
// are never committed.
inline constexpr size_t kInCapacity = proto::kHeaderSize + proto::kMaxPayload + (64u << 10);
inline constexpr size_t kOutCapacity = proto::kHeaderSize + proto::kMaxIoSize + (128u << 10);
// Until its handshake completes a connection may only send HELLO and AUTH
// (80 and 64 bytes with their headers; any other frame is refused on its
// header), so it gets buffers of one page each.
inline constexpr size_t kHandshakeCapacity = 4096;
static_assert(proto::kHeaderSize + proto::kHelloRequestSize <= kHandshakeCapacity);
static_assert(proto::kHeaderSize + proto::kHelloReplySize + proto::kHelloRdmaTrailerSize <= kHandshakeCapacity);
static_assert(proto::kRdmaMessageSize <= kHandshakeCapacity);

struct Connection {
  enum class State { kHello, kAuth, kReady };
  using Clock = std::chrono::steady_clock;

  Connection(uint32_t index, uint32_t generation, std::unique_ptr<ConnTransport> transport, std::string peer);
  ~Connection();

  std::unique_ptr<ConnTransport> transport;
  uint32_t index = 0;
  uint32_t generation = 0;
  State state = State::kHello;
  bool closing = false;
  bool peer_eof = false;
  // RDMA: a message that was not one whole frame arrived (docs/protocol.md
  // §9.2). Nothing after it is taken; the requests before it are answered
  // first, then `misframed` with its error (if its header could be read),
  // then the connection closes (pump).
  bool misframed = false;
  std::optional<std::pair<proto::FrameHeader, Error>> misframed_reply;
  bool recv_inflight = false;
  bool send_inflight = false;
  SyncState sync;  // persistence_ledger.h
  // A MAP at the head of `in` waits for its block's promotion (target/tiering.h);
  // the server's tier wake resumes it (pump) like a sync completion.
  bool awaiting_tier = false;
  uint64_t features = 0;  // negotiated in HELLO (proto::kFeature*)
  // What its FENCE named (docs/protocol.md §7.9); a later FENCE of the same
  // scope closes this connection unless it names the same writer and another channel.
  std::optional<proto::FenceRequest> fence;
  Clock::time_point accepted_at;
  std::string peer;
  bool counts_as_handshake = true;  // one of the pending handshakes (not yet ready, not evicted)
  std::unique_ptr<uint8_t[]> in{new uint8_t[kHandshakeCapacity]};
  size_t in_cap = kHandshakeCapacity;
  size_t in_start = 0, in_end = 0;
  std::unique_ptr<uint8_t[]> out{new uint8_t[kHandshakeCapacity]};
  size_t out_cap = kHandshakeCapacity;
  size_t out_start = 0, out_end = 0;
  Nonce client_nonce{}, server_nonce{};
  std::vector<uint32_t> rkeys;  // handles this connection mapped (handle_table.h)

  bool idle() const { return !recv_inflight && !send_inflight; }
  bool ready() const { return state == State::kReady; }
  // Parsing stopped until a completion resumes it (an fdatasync or a promotion).
  bool waiting() const { return sync.awaiting_sync || awaiting_tier; }

  // Whether `need` more bytes fit `out`, moving unsent bytes to the front
  // when no send holds a pointer into it.
  bool out_room(size_t need);
  // Full-size buffers for a ready connection, once no I/O uses the small ones.
  void grow_buffers();
  // Appends a reply header to `out` for `req` and reserves `payload_len`
  // bytes after it; returns where the payload goes. The caller checked
  // out_room().
  uint8_t* reply_header(const proto::FrameHeader& req, uint32_t payload_len);
  // Appends an error reply (header only, status from `e`) for `req`.
  void reply_error(const proto::FrameHeader& req, const Error& e);
  // Stops reading: output already queued still goes out; the Server's
  // maybe_close() finishes the connection once nothing is in flight.
  void begin_close();
  // Forgets queued output (nobody is left to read it, or it may not go out).
  void drop_output() { out_start = out_end = 0; }
};

}  // namespace pbrick
