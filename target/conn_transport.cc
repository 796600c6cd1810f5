#include "target/conn_transport.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"

namespace pbrick {

// ---- TCP ----------------------------------------------------------------------

void TcpTransport::arm_recv(Connection& c, EventRing& ring) {
  if (c.closing || c.peer_eof || c.recv_inflight) return;
  // Keep the unread bytes at the front when the tail gets short, so one
  // recv can bring in a whole frame; at most one frame's bytes are moved.
  if (c.in_start > 0 && c.in_cap - c.in_end < std::min<size_t>(64u << 10, c.in_cap / 2)) {
    std::memmove(c.in.get(), c.in.get() + c.in_start, c.in_end - c.in_start);
    c.in_end -= c.in_start;
    c.in_start = 0;
  }
  size_t room = c.in_cap - c.in_end;
  if (room == 0) return;  // a whole frame is buffered; the Server's pump() consumes it
  io_uring_sqe* sqe = ring.get_sqe();
  io_uring_prep_recv(sqe, fd_.get(), c.in.get() + c.in_end, room, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kRecv, c.generation, c.index));
  c.recv_inflight = true;
}

void TcpTransport::flush_output(Connection& c, EventRing& ring) {
  if (c.send_inflight || c.out_start == c.out_end) return;
  io_uring_sqe* sqe = ring.get_sqe();
  io_uring_prep_send(sqe, fd_.get(), c.out.get() + c.out_start, c.out_end - c.out_start, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kSend, c.generation, c.index));
  c.send_inflight = true;
}

void TcpTransport::shutdown_read() { ::shutdown(fd_.get(), SHUT_RD); }
void TcpTransport::shutdown_all() { ::shutdown(fd_.get(), SHUT_RDWR); }

void TcpTransport::on_ring_completion(Connection& c, OpKind kind, int res) {
  if (kind == OpKind::kRecv) {
    c.recv_inflight = false;
    if (res <= 0) {
      if (res < 0) {
        if (res != -ECONNRESET) PBRICK_LOG_DEBUG("%s: recv: %s", c.peer.c_str(), std::strerror(-res));
        c.closing = true;
      }
      c.peer_eof = true;
    } else {
      c.in_end += static_cast<size_t>(res);
    }
  } else if (kind == OpKind::kSend) {
    c.send_inflight = false;
    if (res < 0) {
      PBRICK_LOG_DEBUG("%s: send: %s", c.peer.c_str(), std::strerror(-res));
      c.drop_output();
      c.begin_close();
    } else {
      // Never past out_end, even if the output was dropped meanwhile: the
      // next send would take out_end - out_start bytes.
      c.out_start = std::min(c.out_start + static_cast<size_t>(res), c.out_end);
      if (c.out_start == c.out_end) c.drop_output();
    }
  }
}

// ---- RDMA ---------------------------------------------------------------------

void RdmaTransport::flush_output(Connection& c, EventRing&) {
  // One SEND per reply frame, as long as send buffers are free; the rest
  // goes out as sends complete (on_work_completion).
  while (c.out_end - c.out_start >= proto::kHeaderSize) {
    size_t frame = proto::frame_size({c.out.get() + c.out_start, proto::kHeaderSize});
    Status error = Status::Ok();
    if (!conn_->send_frame({c.out.get() + c.out_start, frame}, &error)) break;
    if (!error) {
      PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), error.error().message().c_str());
      c.drop_output();
      c.begin_close();
      break;
    }
    c.out_start += frame;
  }
  if (c.out_start == c.out_end) c.drop_output();
  c.send_inflight = conn_->sends_in_flight();
}

uint32_t RdmaTransport::max_list_extents(uint32_t asked) const {
  // A reply is one message: fewer extents per page, same paging.
  return std::min(asked, proto::kRdmaMaxListExtents);
}

void RdmaTransport::on_work_completion(Connection& c, const RdmaListener::Completion& wc) {
  if (wc.status != 0) {
    // A flushed WR is the QP going down (we or the peer disconnected);
    // anything else breaks the connection.
    if (wc.status != ECONNRESET) PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), wc.error.c_str());
    if (!wc.is_recv) conn_->on_send_done(wc.slot);
    c.peer_eof = true;
    c.drop_output();
    c.begin_close();
    c.send_inflight = conn_->sends_in_flight();
    return;
  }
  if (!wc.is_recv) {
    conn_->on_send_done(wc.slot);
    return;
  }
  auto msg = conn_->received(wc.slot, wc.byte_len);
  // After a misframed message nothing more is taken (it is answered, after
  // the requests before it, and the connection closes).
  if (c.misframed) return;
  if (msg.size() < proto::kHeaderSize || proto::frame_size(msg) != msg.size()) {
    // Every message is exactly one frame (docs/protocol.md §9.2): one whose
    // header claims another length would glue the next messages' bytes into
    // its payload. A header-level violation (§5), answered in its turn: the
    // header's own checks first (§4), then EBADMSG for the size.
    PBRICK_LOG_WARN("%s: closing connection: a %zu-byte message that is not one whole frame", c.peer.c_str(),
                    msg.size());
    c.misframed = true;
    if (msg.size() >= proto::kHeaderSize) {
      auto header = msg.first(proto::kHeaderSize);
      if (auto echo = proto::salvage_request_header(header)) {
        auto checked = proto::decode_header(header, /*expect_reply=*/false);
        c.misframed_reply.emplace(*echo, checked ? Error(EBADMSG, "message size does not match the frame's payload_len")
                                                 : checked.error());
      }
    }
    return;
  }
  if (c.in_cap - c.in_end < msg.size()) {
    c.grow_buffers();
    std::memmove(c.in.get(), c.in.get() + c.in_start, c.in_end - c.in_start);
    c.in_end -= c.in_start;
    c.in_start = 0;
  }
  if (c.in_cap - c.in_end < msg.size()) {
    PBRICK_LOG_WARN("%s: closing connection: %s", c.peer.c_str(),
                    c.ready() ? "more requests outstanding than allowed"
                              : "more than HELLO/AUTH before the handshake completed");
    c.begin_close();
    return;
  }
  std::memcpy(c.in.get() + c.in_end, msg.data(), msg.size());
  c.in_end += msg.size();
  Status rs = conn_->repost(wc.slot);
  if (!rs) {
    PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), rs.error().message().c_str());
    c.begin_close();
  }
}

}  // namespace pbrick
