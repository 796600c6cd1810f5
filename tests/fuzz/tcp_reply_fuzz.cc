// Fuzzes the gateway's side of a TCP data connection: what a brick (or
// whatever answers in its place) sends back to a TcpChannel with requests in
// flight. The channel is driven through its byte-moving core (send_iov /
// on_sent / recv_space / on_received), as a loop would drive it, with no
// socket and no ring.
//
// Input:
//   byte 0   bit 0: the brick granted PERSIST_RPC (a refused sync READ is
//            confirmed by a PERSIST); bit 1: the requests' bytes are taken
//            off the send queue as they are queued (a brick can only answer
//            what it received, but it can guess request ids: with the bit
//            clear every request stays queued); bit 2: after each receive, a
//            new WRITE takes the slot of each request that completed (up to
//            16 in all), as a loop with more work does
//   byte 1   the size of each receive, 1 + 61 * value bytes
//   byte 2   n: 1 + value % 16 requests, one byte each next:
//              bits 0-1: 0, 3 READ; 1 WRITE; 2 a sync (FLUSH), chained when
//              bit 2 is set; bits 3-7: READ/WRITE length, (value + 1) * 512
//   the rest the byte stream the brick sends
//
// Request ids are predictable (slot i is taken by the i-th request, its
// sequence number is i + 1), so seeds (make_tcp_reply_corpus.py) answer them.
//
// Beyond ASan/UBSan (every buffer is a heap block of exactly its length) it
// checks what DataChannel promises its callers (gateway/data_channel.h):
//  - every op's done runs exactly once, with 0 or a positive errno, by the
//    time the channel disconnects;
//  - a READ that succeeds got exactly its length of payload: the bytes of
//    its buffer are those the reply carried (checked by the harness's own
//    walk of the stream for frames naming the READ's request id);
//  - the channel always has room for the rest of a frame it accepted
//    (recv_space() never empty while on_received() accepts);
//  - what the channel sends is whole request frames, no more than the
//    requests made (a send queue that overflowed, or a slot taken again while
//    its bytes were still queued, would lose, repeat or overwrite some).
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "common/log.h"
#include "common/protocol.h"
#include "gateway/tcp_channel.h"

namespace {

using namespace pbrick;
using proto::kHeaderSize;
using proto::Opcode;

[[noreturn]] void fail(const char* what, uint64_t detail = 0) {
  std::fprintf(stderr, "tcp_reply_fuzz: %s (%llu)\n", what, static_cast<unsigned long long>(detail));
  std::abort();
}

constexpr uint32_t kDepth = 16;

struct Request {
  DataChannel::Op op;
  std::unique_ptr<uint8_t[]> buf;  // READ destination / WRITE source, exactly op.length bytes
  uint32_t length = 0;
  bool read = false;   // a READ of the caller's (not a sync)
  bool sync = false;
  bool followed = false;  // a new WRITE was submitted once this one completed
  uint64_t request_id = 0;  // on the wire: slot | sequence << 16
  int calls = 0;
  int status = -1;
};

void on_done(DataChannel::Op* op, int status) {
  auto* r = static_cast<Request*>(op->ctx);
  r->calls++;
  r->status = status;
  if (r->calls > 1) fail("an op completed twice", r->request_id);
  if (status < 0) fail("an op completed with a negative status", static_cast<uint64_t>(-status));
}

// Takes everything queued off the send queue, as a socket that takes it all,
// and appends it to `wire`.
void drain(TcpChannel& channel, std::vector<uint8_t>* wire) {
  iovec iov[64];
  size_t n;
  while ((n = channel.send_iov(iov, 64)) > 0) {
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
      const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
      wire->insert(wire->end(), p, p + iov[i].iov_len);
      bytes += iov[i].iov_len;
    }
    channel.on_sent(bytes);
  }
}

// Whether `wire` is whole request frames back to back, each with a header
// the brick accepts: what a send queue that lost or repeated a segment would
// not be.
bool whole_requests(std::span<const uint8_t> wire) {
  size_t pos = 0;
  while (pos < wire.size()) {
    if (wire.size() - pos < kHeaderSize) return false;
    auto h = proto::decode_header(wire.subspan(pos, kHeaderSize), /*expect_reply=*/false);
    if (!h || wire.size() - pos - kHeaderSize < h->payload_len) return false;
    pos += kHeaderSize + h->payload_len;
  }
  return true;
}

// The payload of the reply that completes READ `request_id`, found by the
// harness's own walk of `stream`: the first whole frame naming it, if that is
// a success of the READ's length (nullptr otherwise). The channel completes a
// READ at its first reply; the walk stops where a header does not decode, as
// the channel does.
const uint8_t* read_reply_payload(std::span<const uint8_t> stream, uint64_t request_id, uint32_t length) {
  for (size_t at = 0; stream.size() - at >= kHeaderSize;) {
    auto h = proto::decode_header(stream.subspan(at, kHeaderSize), /*expect_reply=*/true);
    if (!h) break;
    if (stream.size() - at - kHeaderSize < h->payload_len) break;
    if (h->request_id == request_id && h->opcode == Opcode::kRead) {
      return h->status == 0 && h->payload_len == length ? stream.data() + at + kHeaderSize : nullptr;
    }
    at += kHeaderSize + h->payload_len;
  }
  return nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  pbrick::set_log_level(pbrick::LogLevel::kError);  // keep stderr for findings
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const bool persist_rpc = (data[0] & 1) != 0;
  const bool drain_sends = (data[0] & 2) != 0;
  const bool follow_up = (data[0] & 4) != 0;
  const size_t piece = 1 + 61 * size_t{data[1]};
  const size_t n = 1 + data[2] % kDepth;
  if (size < 3 + n) return 0;
  std::span<const uint8_t> stream(data + 3 + n, size - 3 - n);

  std::deque<Request> requests(n);  // follow-ups are appended: addresses stay
  size_t enqueued = 0, syncs = 0, queued_bytes = 0, follow_ups = 0;
  std::vector<uint8_t> wire;  // every byte the channel sent
  {
    TcpChannel channel(kDepth);
    channel.attach(UniqueFd(), persist_rpc);
    for (size_t i = 0; i < n; i++) {
      Request& r = requests[i];
      const uint8_t b = data[3 + i];
      r.op.done = on_done;
      r.op.ctx = &r;
      r.op.rkey = 7;
      r.op.remote_addr = uint64_t{i} << 21;
      switch (b & 3) {
        case 2:
          r.sync = true;
          r.op.chained = (b & 4) != 0;
          channel.submit_sync(&r.op);
          if (r.calls == 1) continue;  // nothing written to sync: done at once, nothing sent
          syncs++;
          break;
        default:
          r.length = (uint32_t{b} >> 3) * 512 + 512;
          r.buf = std::make_unique<uint8_t[]>(r.length);
          std::memset(r.buf.get(), 0xA5, r.length);
          r.op.opcode = (b & 3) == 1 ? Opcode::kWrite : Opcode::kRead;
          r.read = r.op.opcode == Opcode::kRead;
          r.op.length = r.length;
          r.op.buf = r.buf.get();
          channel.submit(&r.op);
      }
      // Slot k is the k-th taken (none is freed before the replies), its
      // sequence number k + 1.
      r.request_id = (uint64_t{enqueued} + 1) << 16 | enqueued;
      enqueued++;
      queued_bytes += kHeaderSize + proto::kIoRequestSize + (r.op.opcode == Opcode::kWrite ? r.length : 0);
      if (drain_sends) drain(channel, &wire);
    }

    // The brick's bytes, a receive at a time, until the channel refuses them.
    for (std::span<const uint8_t> left = stream; !left.empty();) {
      std::span<uint8_t> space = channel.recv_space();
      if (space.empty()) fail("no room to receive the rest of a frame");
      size_t take = std::min({piece, space.size(), left.size()});
      std::memcpy(space.data(), left.data(), take);
      left = left.subspan(take);
      if (!channel.on_received(take)) break;
      for (size_t i = 0; follow_up && i < requests.size() && follow_ups < kDepth && !channel.full(); i++) {
        if (requests[i].calls == 0 || requests[i].followed) continue;
        requests[i].followed = true;
        Request& r = requests.emplace_back();
        r.length = 512;
        r.buf = std::make_unique<uint8_t[]>(r.length);
        std::memset(r.buf.get(), 0x5A, r.length);
        r.op = {Opcode::kWrite, 7, 0, r.length, r.buf.get(), on_done, &r, false};
        channel.submit(&r.op);
        queued_bytes += kHeaderSize + proto::kIoRequestSize + r.length;
        follow_ups++;
      }
      if (drain_sends) drain(channel, &wire);
    }
    // What went out is whole request frames, never more than the requests
    // made plus a PERSIST for each sync (a refused one is confirmed by one): a
    // send queue that overflowed would lose or repeat segments.
    drain(channel, &wire);
    if (!whole_requests(wire)) fail("the bytes sent are not whole request frames", wire.size());
    if (wire.size() > queued_bytes + syncs * (kHeaderSize + proto::persist_request_size(0))) {
      fail("more sent than the requests made", wire.size());
    }
    channel.disconnect(ESHUTDOWN);
  }

  for (const Request& r : requests) {
    if (r.calls != 1) fail("an op did not complete", r.request_id);
    if (!r.read || r.status != 0) continue;
    const uint8_t* sent = read_reply_payload(stream, r.request_id, r.length);
    if (sent == nullptr) fail("a READ succeeded without a reply carrying its data", r.request_id);
    if (std::memcmp(sent, r.buf.get(), r.length) != 0) fail("a READ's buffer differs from its reply", r.request_id);
  }
  return 0;
}
