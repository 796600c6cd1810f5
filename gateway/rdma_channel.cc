#include "gateway/rdma_channel.h"

#include <poll.h>

#include <cstring>

#include "common/log.h"

namespace pbrick {

using proto::Opcode;

namespace {
constexpr uint64_t kSlotMask = 0xFFFF;
constexpr size_t kSyncReadBytes = 8;
}  // namespace

RdmaChannel::RdmaChannel(uint32_t depth) : depth_(depth), slots_(depth) {
  free_slots_.reserve(depth);
  for (uint32_t i = depth; i > 0; i--) free_slots_.push_back(i - 1);
  sges_.reserve(kMaxChunksPerOp);
  persist_req_.ranges.reserve(proto::kMaxPersistRanges);
  waiting_persists_.reserve(depth);
  message_.resize(proto::kHeaderSize + proto::persist_request_size(proto::kMaxPersistRanges));
  scratch_.assign(64, 0);
}

RdmaChannel::~RdmaChannel() { teardown(ESHUTDOWN); }

Status RdmaChannel::add_buffer_region(uint8_t* base, size_t len) {
  have_regions_ = true;
  return link_.add_region(base, len);
}

Status RdmaChannel::connect(const ClientOptions& options) {
  teardown(ECONNRESET);
  if (!own_memory_added_) {
    // First connect: the channel's own memory joins the registered regions.
    static_assert(kBounceChunks <= 65535);
    if (!have_regions_) {
      bounce_.assign(kBounceChunks * kChunkSize, 0);
      PBRICK_TRY(link_.add_region(bounce_.data(), bounce_.size()));
      for (uint32_t i = kBounceChunks; i > 0; i--) free_chunks_.push_back(static_cast<uint16_t>(i - 1));
    }
    PBRICK_TRY(link_.add_region(scratch_.data(), scratch_.size()));
    own_memory_added_ = true;
  }
  ClientOptions o = options;
  o.transport = Transport::kRdma;
  rpc_ = (options.features & proto::kFeaturePersistRpc) != 0;
  rdma::LinkOptions lo;
  lo.one_sided_depth = depth_ + 8;
  lo.max_sge = kMaxChunksPerOp;
  auto client = BrickClient::Connect(o, &link_, lo);
  if (!client) return client.error();
  const proto::HelloReply& hello = (*client)->hello();
  if (!rpc_ && (hello.features & proto::kFeatureSyncRead) == 0) {
    link_.disconnect();
    return Error(EOPNOTSUPP, "brick " + options.endpoint.to_string() + " does not offer sync-read persistence");
  }
  if (rpc_ && (hello.features & proto::kFeaturePersistRpc) == 0) {
    link_.disconnect();
    return Error(EOPNOTSUPP, "brick " + options.endpoint.to_string() + " does not offer PERSIST");
  }
  if (ledger_.on_hello(hello.boot_id)) {
    PBRICK_LOG_ERROR("brick %s restarted after a reboot with unflushed writes: they may be lost there (the next flush reports EIO unless other copies have them)",
                     options.endpoint.to_string().c_str());
  }
  sync_rkey_ = (*client)->sync_region()->rkey;  // Connect() checked there is one
  sync_addr_ = (*client)->sync_region()->addr;
  error_ = Status::Ok();
  last_progress_ = std::chrono::steady_clock::now();
  return Status::Ok();
}

bool RdmaChannel::full() const {
  if (free_slots_.empty()) return true;
  return !bounce_.empty() && free_chunks_.size() < kMaxChunksPerOp;
}

uint32_t RdmaChannel::take_slot(Op* op, Kind kind) {
  if (inflight() == 0) last_progress_ = std::chrono::steady_clock::now();
  uint32_t index = free_slots_.back();
  free_slots_.pop_back();
  Slot& s = slots_[index];
  s.op = op;
  s.kind = kind;
  s.sequence = next_sequence_++ & 0xFFFFFFFF;
  s.nchunks = 0;
  return index;
}

void RdmaChannel::note_write(const Op& op) {
  ledger_.wrote();
  if (rpc_) dirty_.wrote(op.rkey, op.remote_addr, op.length);
}

void RdmaChannel::submit(Op* op) {
  uint32_t index = take_slot(op, Kind::kData);
  Slot& s = slots_[index];
  bool write = op->opcode == Opcode::kWrite;
  if (write) note_write(*op);
  sges_.clear();
  uint32_t lkey = link_.lkey(op->buf, op->length);
  if (lkey != 0) {
    sges_.push_back({reinterpret_cast<uint64_t>(op->buf), op->length, lkey});
  } else if (!bounce_.empty()) {
    uint32_t bounce_lkey = link_.lkey(bounce_.data(), bounce_.size());
    for (uint32_t done = 0; done < op->length; done += static_cast<uint32_t>(kChunkSize)) {
      uint16_t chunk = free_chunks_.back();
      free_chunks_.pop_back();
      s.chunks[s.nchunks++] = chunk;
      uint32_t n = std::min<uint32_t>(op->length - done, kChunkSize);
      uint8_t* p = bounce_.data() + size_t{chunk} * kChunkSize;
      if (write) std::memcpy(p, op->buf + done, n);
      sges_.push_back({reinterpret_cast<uint64_t>(p), n, bounce_lkey});
    }
  } else {
    complete(index, EFAULT);  // the owner registered its buffers, and this is not one of them
    return;
  }
  link_.queue_rdma(write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ, sges_.data(), static_cast<int>(sges_.size()),
                   op->rkey, op->remote_addr, (s.sequence << 16) | index);
}

void RdmaChannel::submit_sync(Op* op) {
  if (int now = ledger_.start_sync(op->chained); now >= 0) {
    op->done(op, now);
    return;
  }
  if (rpc_) {
    uint32_t index = take_slot(op, Kind::kPersist);
    slots_[index].covers_write_seq = ledger_.write_seq();
    if (persists_inflight_ < proto::kRdmaMaxOutstanding) {
      send_persist(index);
    } else {
      // No message credit left: it goes out when a reply frees one, naming
      // whatever was written until then (at least what it covers).
      waiting_persists_.push(index);
    }
    return;
  }
  uint32_t index = take_slot(op, Kind::kSyncRead);
  Slot& s = slots_[index];
  s.covers_write_seq = ledger_.write_seq();
  ibv_sge sge{reinterpret_cast<uint64_t>(scratch_.data()), static_cast<uint32_t>(kSyncReadBytes),
              link_.lkey(scratch_.data(), scratch_.size())};
  link_.queue_rdma(IBV_WR_RDMA_READ, &sge, 1, sync_rkey_, sync_addr_, (s.sequence << 16) | index);
}

void RdmaChannel::send_persist(uint32_t index) {
  Slot& s = slots_[index];
  persist_req_.ranges.clear();
  if (!dirty_.all()) persist_req_.ranges.assign(dirty_.ranges().begin(), dirty_.ranges().end());
  if (persist_req_.ranges.empty() && !dirty_.all() && persists_inflight_ > 0) {
    // Nothing written since the PERSIST in flight named its ranges (a second
    // FLUSH or FUA before its reply): this one only has to come after it,
    // and replies come in order. Naming no range would make the brick flush
    // every block mapped writable on it; one range through no live handle is
    // skipped (docs/protocol.md 7.8) and costs it nothing.
    persist_req_.ranges.push_back({0, 0, 1});
  }
  dirty_.clear();
  size_t payload = proto::persist_request_size(persist_req_.ranges.size());
  proto::FrameHeader h;
  h.opcode = Opcode::kPersist;
  h.request_id = (s.sequence << 16) | index;
  h.payload_len = static_cast<uint32_t>(payload);
  proto::encode_header(h, message_.data());
  proto::encode_persist_request(persist_req_, message_.data() + proto::kHeaderSize);
  s.sent = true;
  persists_inflight_++;
  Status st = link_.send_message({message_.data(), proto::kHeaderSize + payload});
  if (!st) fail_connection(st.error().message());
}

void RdmaChannel::fail_connection(const std::string& why) {
  if (error_.ok()) error_ = Error(ECONNRESET, why);
}

void RdmaChannel::complete(uint32_t index, int status) {
  Slot& s = slots_[index];
  Op* op = s.op;
  s.op = nullptr;
  for (uint8_t i = 0; i < s.nchunks; i++) free_chunks_.push_back(s.chunks[i]);
  s.nchunks = 0;
  if (s.kind == Kind::kPersist && s.sent) persists_inflight_--;
  s.sent = false;
  free_slots_.push_back(index);
  op->done(op, status);
}

void RdmaChannel::on_completion(const rdma::RdmaLink::Completion& c) {
  last_progress_ = std::chrono::steady_clock::now();
  if (c.kind == rdma::RdmaLink::Completion::Kind::kMessage) return on_reply(c.message);
  uint32_t index = static_cast<uint32_t>(c.cookie & kSlotMask);
  if (index >= depth_ || slots_[index].op == nullptr || slots_[index].sequence != (c.cookie >> 16)) return;
  Slot& s = slots_[index];
  int status = c.status;
  if (status != 0) {
    // The QP is in the error state now: everything after this WR is flushed.
    // This op keeps its own status (EKEYREJECTED: map again); the connection's
    // is ECONNRESET, so the other ops in flight, a sync among them, are sent
    // again after the reconnect instead of taking this one's error.
    fail_connection(status != ECONNRESET ? "brick " + c.error : "work request flushed");
  } else if (s.kind == Kind::kSyncRead) {
    ledger_.synced(s.covers_write_seq);
  } else if (s.nchunks > 0 && s.op->opcode == Opcode::kRead) {
    for (uint32_t i = 0, done = 0; i < s.nchunks; i++, done += static_cast<uint32_t>(kChunkSize)) {
      uint32_t n = std::min<uint32_t>(s.op->length - done, kChunkSize);
      std::memcpy(s.op->buf + done, bounce_.data() + size_t{s.chunks[i]} * kChunkSize, n);
    }
  }
  complete(index, status);
}

void RdmaChannel::on_reply(std::span<const uint8_t> message) {
  if (message.size() < proto::kHeaderSize) return fail_connection("short message from the brick");
  auto h = proto::decode_header(message.first(proto::kHeaderSize), /*expect_reply=*/true);
  if (!h) return fail_connection(h.error().message());
  // Every message is exactly one frame (docs/protocol.md 9.2).
  if (message.size() != proto::kHeaderSize + h->payload_len) {
    return fail_connection("a " + std::to_string(message.size()) + "-byte message from the brick that is not one "
                           "whole frame");
  }
  uint32_t index = static_cast<uint32_t>(h->request_id & kSlotMask);
  if (h->opcode != Opcode::kPersist || index >= depth_ || slots_[index].op == nullptr ||
      slots_[index].kind != Kind::kPersist || slots_[index].sequence != (h->request_id >> 16)) {
    return fail_connection("reply from brick matches no request in flight");
  }
  int status = h->status == 0 ? 0 : proto::errno_from_wire(h->status);
  Slot& s = slots_[index];
  // Replies come in request order: this one covers every PERSIST sent before.
  if (status == 0) ledger_.synced(s.covers_write_seq);
  complete(index, status);
  if (!waiting_persists_.empty() && persists_inflight_ < proto::kRdmaMaxOutstanding) {
    send_persist(waiting_persists_.pop());
  }
}

void RdmaChannel::teardown(int status) {
  if (link_.connected()) link_.disconnect();
  if (ledger_.unsynced()) {
    // Ranges named on this QP may die with it; the next PERSIST names all.
    dirty_.set_all();
  }
  waiting_persists_.clear();
  for (uint32_t i = 0; i < depth_; i++) {
    if (slots_[i].op != nullptr) complete(i, status);
  }
  persists_inflight_ = 0;
  error_ = Status::Ok();
}

Status RdmaChannel::flush(ChannelRing& ring) {
  if (!error_.ok()) return error_;
  if (link_.connected()) {
    Status st = link_.post_queued();
    if (!st) return Error(ECONNRESET, st.error().message());
  }
  if (stopping_) return Status::Ok();
  if (!cq_poll_inflight_ && link_.completion_fd() >= 0) {
    io_uring_prep_poll_add(ring.channel_sqe(kCqPoll), link_.completion_fd(), POLLIN);
    cq_poll_inflight_ = true;
  }
  if (!cm_poll_inflight_ && link_.cm_fd() >= 0) {
    io_uring_prep_poll_add(ring.channel_sqe(kCmPoll), link_.cm_fd(), POLLIN);
    cm_poll_inflight_ = true;
  }
  return Status::Ok();
}

Status RdmaChannel::on_cqe(uint8_t event, int res) {
  if (event == kCqPoll) {
    cq_poll_inflight_ = false;
    if (res < 0 && res != -ECANCELED) {
      // The connection is given up, and its ops with it: as a lost one (they
      // are sent again on a new one), not with the poll's own errno.
      return Error(ECONNRESET, std::string("poll on the completion channel: ") + std::strerror(-res));
    }
    Status st = link_.poll([this](const rdma::RdmaLink::Completion& c) { on_completion(c); });
    if (!st && link_.connected()) fail_connection(st.error().message());
  } else {
    cm_poll_inflight_ = false;
    Status st = link_.check_cm_events();  // drains the channel even between connections
    if (!st && link_.connected()) fail_connection(st.error().message());
  }
  Status error = error_;
  error_ = Status::Ok();
  return error;
}

void RdmaChannel::stop(ChannelRing& ring) {
  stopping_ = true;
  if (cq_poll_inflight_) ring.cancel_channel_sqe(kCqPoll);
  if (cm_poll_inflight_) ring.cancel_channel_sqe(kCmPoll);
}

}  // namespace pbrick
