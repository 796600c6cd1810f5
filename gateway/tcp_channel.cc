#include "gateway/tcp_channel.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace pbrick {

using proto::kHeaderSize;
using proto::Opcode;

namespace {
constexpr size_t kInCapacity = kHeaderSize + proto::kMaxIoSize + (64u << 10);
constexpr uint64_t kSlotMask = 0xFFFF;
}  // namespace

TcpChannel::TcpChannel(uint32_t depth)
    : depth_(depth), slots_(depth), segments_(4 * static_cast<size_t>(depth)),
      in_(std::make_unique_for_overwrite<uint8_t[]>(kInCapacity)) {
  free_slots_.reserve(depth);
  for (uint32_t i = depth; i > 0; i--) free_slots_.push_back(i - 1);
}

TcpChannel::~TcpChannel() { disconnect(ESHUTDOWN); }

Status TcpChannel::connect(const ClientOptions& options) {
  ClientOptions o = options;
  o.transport = Transport::kTcp;
  o.features |= proto::kFeaturePersistRpc;  // to confirm a sync through a dead handle
  auto client = BrickClient::Connect(o);
  if (!client) return client.error();
  const auto& boot_id = (*client)->hello().boot_id;
  if (ledger_.on_hello(boot_id)) {
    PBRICK_LOG_ERROR("brick %s restarted after a reboot with unflushed writes: they may be lost there (the next flush reports EIO unless other copies have them)",
                     options.endpoint.to_string().c_str());
  }
  const bool persist_rpc = ((*client)->hello().features & proto::kFeaturePersistRpc) != 0;
  attach(std::move(**client).take_fd(), persist_rpc);
  return Status::Ok();
}

void TcpChannel::attach(UniqueFd fd, bool persist_rpc) {
  fd_ = std::move(fd);
  persist_granted_ = persist_rpc;
  // The handshake used timeouts for blocking I/O; the event loop needs none.
  timeval tv{0, 0};
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  in_start_ = in_end_ = 0;
  seg_head_ = seg_count_ = seg_offset_ = 0;
  sent_bytes_ = queued_bytes_;  // what was queued is gone
  send_armed_bytes_ = 0;
  last_progress_ = std::chrono::steady_clock::now();
  tearing_down_ = false;
}

void TcpChannel::teardown(int status) {
  if (!fd_.valid() || tearing_down_) return;
  tearing_down_ = true;
  teardown_status_ = status;
  // The close aborts (RST) instead of ending the stream: its requests fail
  // here and may be sent again on a new connection, so what the kernel still
  // holds of them must never reach the brick after that, as it would from a
  // graceful close once a partition heals - a WRITE landing after newer data.
  // What the brick already received is the new connection's FENCE's to cut
  // off (docs/protocol.md §7.9).
  const linger abort_on_close{1, 0};
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  // Wakes the recv and send in flight; flush() closes once both are back.
  ::shutdown(fd_.get(), SHUT_RDWR);
}

Status TcpChannel::flush(ChannelRing& ring) {
  if (tearing_down_ && !send_inflight_ && !recv_inflight_) {
    disconnect(teardown_status_);
    tearing_down_ = false;
  }
  if (!fd_.valid() || tearing_down_) return Status::Ok();
  if (!send_inflight_) {
    size_t n = send_iov(iov_, kMaxIov);
    if (n > 0 && send_inline_) {
      msg_ = {};
      msg_.msg_iov = iov_;
      msg_.msg_iovlen = n;
      ssize_t sent = ::sendmsg(fd_.get(), &msg_, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return Error(errno, "send to the brick");
      }
      if (sent > 0) {
        on_sent(static_cast<size_t>(sent));
        n = send_iov(iov_, kMaxIov);  // what the socket had no room for
      }
    }
    if (n > 0) {
      msg_ = {};
      msg_.msg_iov = iov_;
      msg_.msg_iovlen = n;
      io_uring_prep_sendmsg(ring.channel_sqe(kSend), fd_.get(), &msg_, MSG_NOSIGNAL);
      send_inflight_ = true;
      send_armed_bytes_ = 0;
      for (size_t i = 0; i < n; i++) send_armed_bytes_ += iov_[i].iov_len;
    }
  }
  if (!recv_inflight_ && !stopping_) {
    auto space = recv_space();
    io_uring_prep_recv(ring.channel_sqe(kRecv), fd_.get(), space.data(), space.size(), 0);
    recv_inflight_ = true;
  }
  return Status::Ok();
}

Status TcpChannel::on_cqe(uint8_t event, int res) {
  if (event == kSend) {
    send_inflight_ = false;
    send_armed_bytes_ = 0;
    if (res < 0) return Error(-res, "send to the brick");
    on_sent(static_cast<size_t>(res));
    return Status::Ok();
  }
  recv_inflight_ = false;
  if (res == 0) return Error(ECONNRESET, "the brick closed the connection");
  if (res < 0) return Error(-res, "receive from the brick");
  if (tearing_down_) return Status::Ok();
  // A reply that makes no sense: the gateway gives the connection up while
  // the brick may still hold requests of it (VolumeChannels::teardown).
  Status st = on_received(static_cast<size_t>(res));
  if (!st) return Error(EPROTO, st.error().message());
  return Status::Ok();
}

void TcpChannel::stop(ChannelRing& ring) {
  (void)ring;  // teardown's shutdown() brings the send and recv back
  stopping_ = true;
}

void TcpChannel::disconnect(int status) {
  fd_.reset();
  seg_head_ = seg_count_ = seg_offset_ = 0;
  sent_bytes_ = queued_bytes_;  // what was queued is gone
  send_armed_bytes_ = 0;
  in_start_ = in_end_ = 0;
  for (uint32_t i = 0; i < depth_; i++) {
    if (slots_[i].op != nullptr) complete(i, status);
  }
}

void TcpChannel::push_segment(const uint8_t* data, size_t len) {
  size_t tail = (seg_head_ + seg_count_) % segments_.size();
  segments_[tail] = Segment{data, len};
  seg_count_++;
  queued_bytes_ += len;
}

uint32_t TcpChannel::enqueue(Op* op, bool is_sync) {
  if (inflight() == 0) last_progress_ = std::chrono::steady_clock::now();
  uint32_t index = free_slots_.back();
  free_slots_.pop_back();
  Slot& slot = slots_[index];
  slot.op = op;
  slot.is_sync = is_sync;
  slot.sequence = next_sequence_++;
  proto::FrameHeader h;
  h.opcode = op->opcode;
  h.request_id = (slot.sequence << 16) | index;
  if (op->opcode == Opcode::kPersist) {  // naming no range: every writable mapping
    h.payload_len = static_cast<uint32_t>(proto::persist_request_size(0));
    proto::encode_header(h, slot.wire.data());
    proto::encode_persist_request({}, slot.wire.data() + kHeaderSize);
    push_segment(slot.wire.data(), kHeaderSize + h.payload_len);
    slot.sent_by = queued_bytes_;
    return index;
  }
  h.payload_len = static_cast<uint32_t>(proto::kIoRequestSize + (op->opcode == Opcode::kWrite ? op->length : 0));
  proto::encode_header(h, slot.wire.data());
  proto::encode_io_request({op->rkey, op->remote_addr, op->length}, slot.wire.data() + kHeaderSize);
  push_segment(slot.wire.data(), slot.wire.size());
  if (op->opcode == Opcode::kWrite) push_segment(op->buf, op->length);
  slot.sent_by = queued_bytes_;
  return index;
}

void TcpChannel::submit(Op* op) {
  if (op->opcode == Opcode::kWrite) {
    ledger_.wrote();
    last_write_rkey_ = op->rkey;
    last_write_addr_ = op->remote_addr;
  }
  enqueue(op, false);
}

void TcpChannel::submit_sync(Op* op) {
  if (int now = ledger_.start_sync(op->chained); now >= 0) {
    op->done(op, now);
    return;
  }
  op->opcode = Opcode::kRead;
  op->rkey = last_write_rkey_;
  op->remote_addr = last_write_addr_;
  op->length = 1;
  op->buf = &sync_scratch_;
  slots_[enqueue(op, true)].covers_write_seq = ledger_.write_seq();
}

size_t TcpChannel::send_iov(iovec* iov, size_t max) const {
  size_t n = 0;
  for (size_t i = 0; i < seg_count_ && n < max; i++) {
    const Segment& s = segments_[(seg_head_ + i) % segments_.size()];
    size_t skip = i == 0 ? seg_offset_ : 0;
    iov[n].iov_base = const_cast<uint8_t*>(s.data + skip);
    iov[n].iov_len = s.len - skip;
    n++;
  }
  return n;
}

void TcpChannel::on_sent(size_t n) {
  sent_bytes_ += n;
  while (n > 0 && seg_count_ > 0) {
    const Segment& s = segments_[seg_head_];
    size_t left = s.len - seg_offset_;
    if (n < left) {
      seg_offset_ += n;
      return;
    }
    n -= left;
    seg_offset_ = 0;
    seg_head_ = (seg_head_ + 1) % segments_.size();
    seg_count_--;
  }
}

std::span<uint8_t> TcpChannel::recv_space() {
  if (in_start_ > 0 && kInCapacity - in_end_ < (64u << 10)) {
    std::memmove(in_.get(), in_.get() + in_start_, in_end_ - in_start_);
    in_end_ -= in_start_;
    in_start_ = 0;
  }
  return {in_.get() + in_end_, kInCapacity - in_end_};
}

void TcpChannel::complete(uint32_t index, int status) {
  Slot& slot = slots_[index];
  Op* op = slot.op;
  slot.op = nullptr;
  free_slots_.push_back(index);
  op->done(op, status);
}

Status TcpChannel::on_received(size_t n) {
  in_end_ += n;
  last_progress_ = std::chrono::steady_clock::now();
  for (;;) {
    size_t avail = in_end_ - in_start_;
    if (avail < kHeaderSize) break;
    const uint8_t* frame = in_.get() + in_start_;
    auto h = proto::decode_header({frame, kHeaderSize}, /*expect_reply=*/true);
    if (!h) return h.error().wrap("reply from brick");
    size_t total = kHeaderSize + h->payload_len;
    if (avail < total) {
      if (in_start_ + total > kInCapacity) {
        std::memmove(in_.get(), frame, avail);
        in_start_ = 0;
        in_end_ = avail;
      }
      break;
    }
    uint32_t index = static_cast<uint32_t>(h->request_id & kSlotMask);
    if (index >= depth_ || slots_[index].op == nullptr || slots_[index].sequence != (h->request_id >> 16) ||
        slots_[index].op->opcode != h->opcode) {
      return Error(EPROTO, "reply from brick matches no request in flight");
    }
    Slot& slot = slots_[index];
    // A brick answers a request once it read all of it: after the request's
    // last byte was sent, or handed to the kernel in the send still in flight
    // (a send that io_uring passes to a worker blocks until all of it is out,
    // and the brick may answer its first requests before its completion). A
    // reply to one not handed over yet would free its slot - the header
    // buffer and the WRITE's data the send queue still points at - for the
    // next request to overwrite.
    if (slot.sent_by > sent_bytes_ + send_armed_bytes_) {
      return Error(EPROTO, "reply from brick to a request not sent yet");
    }
    int status = h->status == 0 ? 0 : proto::errno_from_wire(h->status);
    if (status == 0 && h->opcode == Opcode::kRead) {
      if (h->payload_len != slot.op->length) return Error(EPROTO, "READ reply of the wrong length");
      std::memcpy(slot.op->buf, frame + kHeaderSize, h->payload_len);
    }
    if (slot.is_sync && status == 0) ledger_.synced(slot.covers_write_seq);
    if (slot.is_sync && h->opcode == Opcode::kRead && (status == EKEYREJECTED || status == ERANGE)) {
      // The handle died since the WRITE (a discard, an unmap). The brick
      // persists before it looks at the handle, but a refusal does not prove
      // that: a PERSIST of every writable mapping does (its only success is
      // durability, and on a file store it is a whole-store fdatasync).
      in_start_ += total;
      Op* op = slot.op;
      uint64_t covers = slot.covers_write_seq;
      slot.op = nullptr;
      free_slots_.push_back(index);
      if (!persist_granted_) {
        op->done(op, EIO);
        continue;
      }
      op->opcode = Opcode::kPersist;
      slots_[enqueue(op, true)].covers_write_seq = covers;
      continue;
    }
    in_start_ += total;
    complete(index, status);
  }
  if (in_start_ == in_end_) in_start_ = in_end_ = 0;
  return Status::Ok();
}

}  // namespace pbrick
