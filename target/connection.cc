#include "target/connection.h"

#include <endian.h>

#include <cstring>

#include "common/log.h"
#include "target/conn_transport.h"

namespace pbrick {

Connection::Connection(uint32_t index_, uint32_t generation_, std::unique_ptr<ConnTransport> transport_,
                       std::string peer_)
    : transport(std::move(transport_)),
      index(index_),
      generation(generation_),
      accepted_at(Clock::now()),
      peer(std::move(peer_)) {}

Connection::~Connection() = default;

bool Connection::out_room(size_t need) {
  if (out_cap - out_end >= need) return true;
  if (!send_inflight && out_start > 0) {
    std::memmove(out.get(), out.get() + out_start, out_end - out_start);
    out_end -= out_start;
    out_start = 0;
    return out_cap - out_end >= need;
  }
  return false;
}

namespace {

// Replaces `buf` by one of `capacity` bytes holding its unread bytes
// [start, end) at the front.
void regrow(std::unique_ptr<uint8_t[]>& buf, size_t& cap, size_t& start, size_t& end, size_t capacity) {
  std::unique_ptr<uint8_t[]> bigger(new uint8_t[capacity]);
  std::memcpy(bigger.get(), buf.get() + start, end - start);
  end -= start;
  start = 0;
  buf = std::move(bigger);
  cap = capacity;
}

}  // namespace

void Connection::grow_buffers() {
  if (state != State::kReady) return;
  // A recv or send in flight may hold a pointer into the old buffer.
  if (in_cap < kInCapacity && !recv_inflight) regrow(in, in_cap, in_start, in_end, kInCapacity);
  if (out_cap < kOutCapacity && !transport->pins_output(*this)) {
    regrow(out, out_cap, out_start, out_end, kOutCapacity);
  }
}

uint8_t* Connection::reply_header(const proto::FrameHeader& req, uint32_t payload_len) {
  proto::FrameHeader h;
  h.opcode = req.opcode;
  h.flags = proto::kFlagReply;
  h.request_id = req.request_id;
  h.payload_len = payload_len;
  uint8_t* p = out.get() + out_end;
  proto::encode_header(h, p);
  out_end += proto::kHeaderSize + payload_len;
  return p + proto::kHeaderSize;
}

void Connection::reply_error(const proto::FrameHeader& req, const Error& e) {
  PBRICK_LOG_DEBUG("%s: %s", peer.c_str(), e.message().c_str());
  proto::FrameHeader h;
  h.opcode = req.opcode;
  h.flags = proto::kFlagReply;
  h.request_id = req.request_id;
  h.status = proto::wire_status(e.errnum());
  proto::encode_header(h, out.get() + out_end);
  out_end += proto::kHeaderSize;
}

void Connection::begin_close() {
  if (closing) return;
  closing = true;
  // Wakes a pending recv (it completes with 0); output already queued still
  // goes out. An RDMA connection has no pending receive in the ring: the
  // Server's maybe_close() disconnects it once its replies are sent.
  transport->shutdown_read();
}

}  // namespace pbrick
