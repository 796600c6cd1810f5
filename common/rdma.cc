#include "common/rdma.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>

#include <cstring>

#include "common/client.h"
#include "common/protocol.h"

namespace pbrick::rdma {
namespace {

enum WrKind : uint64_t { kRecv = 1, kSendMessage = 2, kOneSided = 3 };

// Message send slots: twice the messages a client may have outstanding. A
// slot comes back with its send completion, which RC does not order before
// the peer's reply: a reply can free a credit (the brick's receive) while
// the request's own slot still waits for its completion.
constexpr uint32_t kSendSlots = 2 * proto::kRdmaMaxOutstanding;

uint64_t pack_wr(WrKind kind, uint32_t epoch, uint64_t low) {
  return (static_cast<uint64_t>(kind) << 60) | (static_cast<uint64_t>(epoch & 0xFFF) << 48) |
         (low & ((1ull << 48) - 1));
}
WrKind wr_kind(uint64_t wr_id) { return static_cast<WrKind>(wr_id >> 60); }
uint32_t wr_epoch(uint64_t wr_id) { return static_cast<uint32_t>((wr_id >> 48) & 0xFFF); }
uint64_t wr_low(uint64_t wr_id) { return wr_id & ((1ull << 48) - 1); }

Status set_nonblocking(int fd, const char* what) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno_error(what);
  return Status::Ok();
}

int poll_one(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    int n = ::poll(&p, 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    return n;
  }
}

}  // namespace

CompletionQueue::~CompletionQueue() { reset(); }

void CompletionQueue::reset() {
  if (cq_ && unacked_ > 0) ibv_ack_cq_events(cq_.get(), unacked_);
  unacked_ = 0;
  cq_.reset();  // before the channel it reports to
  channel_.reset();
}

Status CompletionQueue::create(ibv_context* verbs, int entries) {
  reset();
  channel_.reset(ibv_create_comp_channel(verbs));
  if (!channel_) return errno_error("ibv_create_comp_channel");
  PBRICK_TRY(set_nonblocking(channel_->fd, "completion channel: fcntl"));
  cq_.reset(ibv_create_cq(verbs, entries, nullptr, channel_.get(), 0));
  if (!cq_) return errno_error("ibv_create_cq(" + std::to_string(entries) + ")");
  return arm();
}

void CompletionQueue::consume_event() {
  ibv_cq* ev_cq;
  void* ev_ctx;
  if (ibv_get_cq_event(channel_.get(), &ev_cq, &ev_ctx) != 0) return;  // none (EAGAIN)
  // Acknowledging takes a mutex in libibverbs: do it in batches.
  if (++unacked_ >= 64) {
    ibv_ack_cq_events(cq_.get(), unacked_);
    unacked_ = 0;
  }
}

Status CompletionQueue::arm() {
  int rc = ibv_req_notify_cq(cq_.get(), 0);
  if (rc != 0) return Error(rc, "ibv_req_notify_cq");
  return Status::Ok();
}

Status post_send(ibv_qp* qp, uint64_t wr_id, const uint8_t* buf, uint32_t len, uint32_t lkey) {
  ibv_sge sge{reinterpret_cast<uint64_t>(buf), len, lkey};
  ibv_send_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(qp, &wr, &bad);
  if (rc != 0) return Error(rc, "ibv_post_send");
  return Status::Ok();
}

Status post_recv(ibv_qp* qp, uint64_t wr_id, uint8_t* buf, uint32_t len, uint32_t lkey) {
  ibv_sge sge{reinterpret_cast<uint64_t>(buf), len, lkey};
  ibv_recv_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(qp, &wr, &bad);
  if (rc != 0) return Error(rc, "ibv_post_recv");
  return Status::Ok();
}

int errno_from_wc(ibv_wc_status status) {
  switch (status) {
    case IBV_WC_SUCCESS: return 0;
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_REM_INV_REQ_ERR: return EKEYREJECTED;
    case IBV_WC_WR_FLUSH_ERR: return ECONNRESET;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR: return ETIMEDOUT;
    // Everything else is the transport's (local or remote QP, a bad or missing
    // response, a fatal NIC error): the QP is in the error state and the
    // op's outcome at the brick unknown. Never EIO: that would read as the
    // brick failing to make data durable (a sync-read given up as a lost
    // copy, a FLUSH failed for good) where a new connection retries it.
    default: return ECONNRESET;
  }
}

std::string wc_error_text(const ibv_wc& wc) {
  std::string text = ibv_wc_status_str(wc.status);
  if (wc.status == IBV_WC_REM_ACCESS_ERR) text += " (the brick's NIC refused the rkey: unmapped, or not writable)";
  return text + " (vendor error " + std::to_string(wc.vendor_err) + ")";
}

Result<sockaddr_storage> resolve(const Endpoint& ep, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string port = std::to_string(ep.port);
  int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Error(ENOENT, ep.to_string() + ": " + gai_strerror(rc));
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  return ss;
}

Result<rdma_cm_event*> next_cm_event(rdma_event_channel* channel, int timeout_ms) {
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel, &ev) == 0) return ev;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_error("rdma_get_cm_event");
    int n = poll_one(channel->fd, timeout_ms);
    if (n < 0) return errno_error("poll on the RDMA CM channel");
    if (n == 0) return Error(ETIMEDOUT, "no answer from the RDMA connection manager");
  }
}

RdmaLink::RdmaLink() = default;
RdmaLink::~RdmaLink() = default;

Status RdmaLink::add_region(void* base, size_t len) {
  Region r{static_cast<uint8_t*>(base), len, nullptr};
  if (pd_) {
    r.mr.reset(ibv_reg_mr(pd_.get(), base, len, IBV_ACCESS_LOCAL_WRITE));
    if (!r.mr) return errno_error("ibv_reg_mr of " + std::to_string(len) + " bytes of I/O buffers");
  }
  regions_.push_back(std::move(r));
  return Status::Ok();
}

uint32_t RdmaLink::lkey(const void* p, size_t len) const {
  auto* b = static_cast<const uint8_t*>(p);
  for (const Region& r : regions_) {
    if (b >= r.base && b + len <= r.base + r.len && r.mr) return r.mr->lkey;
  }
  return 0;
}

int RdmaLink::cm_fd() const { return events_ ? events_->fd : -1; }

Status RdmaLink::setup_device(ibv_context* verbs, const LinkOptions& options) {
  Status st = try_setup_device(verbs, options);
  if (!st) {
    // Nothing half made stays for the next connect (a null message MR, I/O
    // buffers without one: lkey 0): it sets the device up again, or fails the
    // same way. MRs go before the PD they belong to.
    for (Region& r : regions_) r.mr.reset();
    recv_mr_.reset();
    send_mr_.reset();
    cq_.reset();
    pd_.reset();
    verbs_ = nullptr;
  }
  return st;
}

Status RdmaLink::try_setup_device(ibv_context* verbs, const LinkOptions& options) {
  pd_.reset(ibv_alloc_pd(verbs));
  if (!pd_) return errno_error("ibv_alloc_pd");
  // Twice what one QP can have outstanding: the flushed completions of a torn
  // down QP may still sit in the CQ when its successor's start to arrive.
  int entries = static_cast<int>(2 * (options.one_sided_depth + kSendSlots + proto::kRdmaMaxOutstanding + 8));
  PBRICK_TRY(cq_.create(verbs, entries));
  recv_bufs_.assign(proto::kRdmaMaxOutstanding * proto::kRdmaMessageSize, 0);
  send_bufs_.assign(kSendSlots * proto::kRdmaMessageSize, 0);
  recv_mr_.reset(ibv_reg_mr(pd_.get(), recv_bufs_.data(), recv_bufs_.size(), IBV_ACCESS_LOCAL_WRITE));
  send_mr_.reset(ibv_reg_mr(pd_.get(), send_bufs_.data(), send_bufs_.size(), IBV_ACCESS_LOCAL_WRITE));
  if (!recv_mr_ || !send_mr_) return errno_error("ibv_reg_mr of the message buffers");
  for (Region& r : regions_) {
    if (r.mr) continue;
    r.mr.reset(ibv_reg_mr(pd_.get(), r.base, r.len, IBV_ACCESS_LOCAL_WRITE));
    if (!r.mr) return errno_error("ibv_reg_mr of " + std::to_string(r.len) + " bytes of I/O buffers");
  }
  verbs_ = verbs;  // set up, whole
  return Status::Ok();
}

Status RdmaLink::post_recv(uint32_t slot) {
  return rdma::post_recv(id_->qp, pack_wr(kRecv, epoch_, slot),
                         recv_bufs_.data() + size_t{slot} * proto::kRdmaMessageSize,
                         static_cast<uint32_t>(proto::kRdmaMessageSize), recv_mr_->lkey);
}

Status RdmaLink::connect(const Endpoint& ep, const LinkOptions& options, int timeout_ms) {
  disconnect();
  const std::string what = "rdma connect " + ep.to_string();
  if (ep.is_unix()) return Error(EINVAL, what + ": " + std::string(kUnixIsForTcp));
  if (!events_) {
    events_.reset(rdma_create_event_channel());
    if (!events_) return errno_error(what + ": rdma_create_event_channel (is the rdma_cm module loaded?)");
    PBRICK_TRY(set_nonblocking(events_->fd, "rdma event channel: fcntl"));
  }
  auto addr = resolve(ep, false);
  if (!addr) return addr.error().wrap(what);
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(events_.get(), &raw, nullptr, RDMA_PS_TCP) != 0) return errno_error(what + ": rdma_create_id");
  CmIdPtr id(raw);

  // Address and route resolution, then the connection: each step answers with
  // one CM event on our channel.
  auto expect = [&](rdma_cm_event_type want, const char* step) -> Status {
    auto ev = next_cm_event(events_.get(), timeout_ms);
    if (!ev) return ev.error().wrap(what + ": " + step);
    rdma_cm_event_type got = (*ev)->event;
    int status = (*ev)->status;
    rdma_ack_cm_event(*ev);
    if (got == want) return Status::Ok();
    std::string text = std::string(step) + ": " + rdma_event_str(got);
    switch (got) {
      case RDMA_CM_EVENT_REJECTED:
        return Error(ECONNREFUSED, what + ": " + text + " (is a brick serving --transport rdma there?)");
      case RDMA_CM_EVENT_ADDR_ERROR:
      case RDMA_CM_EVENT_ROUTE_ERROR:
        return Error(EHOSTUNREACH, what + ": " + text + " (no RDMA device reaches that address?)");
      case RDMA_CM_EVENT_UNREACHABLE:
      case RDMA_CM_EVENT_CONNECT_ERROR:
        return Error(ECONNREFUSED, what + ": " + text + " (status " + std::to_string(status) + ")");
      default: return Error(ECONNRESET, what + ": " + text);
    }
  };
  if (rdma_resolve_addr(id.get(), nullptr, reinterpret_cast<sockaddr*>(&*addr), timeout_ms) != 0) {
    return errno_error(what + ": rdma_resolve_addr");
  }
  PBRICK_TRY(expect(RDMA_CM_EVENT_ADDR_RESOLVED, "resolving the address"));
  if (rdma_resolve_route(id.get(), timeout_ms) != 0) return errno_error(what + ": rdma_resolve_route");
  PBRICK_TRY(expect(RDMA_CM_EVENT_ROUTE_RESOLVED, "resolving the route"));

  if (verbs_ != nullptr && verbs_ != id->verbs) {
    return Error(EXDEV, what + ": the route now leads through another RDMA device; restart to re-register memory");
  }
  if (verbs_ == nullptr) PBRICK_TRY(setup_device(id->verbs, options));
  max_sge_ = options.max_sge;

  ibv_qp_init_attr attr{};
  attr.send_cq = cq_.cq();
  attr.recv_cq = cq_.cq();
  attr.qp_type = IBV_QPT_RC;
  attr.cap.max_send_wr = options.one_sided_depth + kSendSlots + 4;
  attr.cap.max_recv_wr = proto::kRdmaMaxOutstanding;
  attr.cap.max_send_sge = options.max_sge;
  attr.cap.max_recv_sge = 1;
  if (rdma_create_qp(id.get(), pd_.get(), &attr) != 0) return errno_error(what + ": rdma_create_qp");
  epoch_++;
  id_ = std::move(id);
  free_send_slots_.clear();
  for (uint32_t i = 0; i < kSendSlots; i++) free_send_slots_.push_back(i);
  for (uint32_t i = 0; i < proto::kRdmaMaxOutstanding; i++) {
    Status st = post_recv(i);
    if (!st) {
      disconnect();
      return st.error().wrap(what);
    }
  }
  ibv_device_attr dev{};
  ibv_query_device(id_->verbs, &dev);
  rdma_conn_param param{};
  // RDMA READs we may have outstanding at the brick (sync-reads, tool reads).
  param.initiator_depth = static_cast<uint8_t>(std::min(dev.max_qp_init_rd_atom, 16));
  param.responder_resources = 0;
  param.retry_count = 7;
  param.rnr_retry_count = 7;
  if (rdma_connect(id_.get(), &param) != 0) {
    Status st = errno_error(what + ": rdma_connect");
    disconnect();
    return st;
  }
  Status st = expect(RDMA_CM_EVENT_ESTABLISHED, "connecting");
  if (!st) {
    disconnect();
    return st;
  }
  cm_disconnected_ = false;
  return Status::Ok();
}

void RdmaLink::disconnect() {
  if (!id_) return;
  rdma_disconnect(id_.get());
  // Destroying the QP stops every DMA into our buffers before anything of
  // theirs is reused; completions still in the CQ carry the old epoch.
  id_.reset();
  queued_.clear();
  queued_sges_.clear();
  // Drain CM events of the old id (DISCONNECTED and the like) so a later
  // connect() reads only its own.
  rdma_cm_event* ev = nullptr;
  while (events_ && rdma_get_cm_event(events_.get(), &ev) == 0) rdma_ack_cm_event(ev);
}

Status RdmaLink::send_message(std::span<const uint8_t> frame) {
  if (!id_) return Error(ENOTCONN, "rdma send: not connected");
  if (frame.size() > proto::kRdmaMessageSize) return Error(EMSGSIZE, "rdma send: frame larger than a message");
  if (free_send_slots_.empty()) return Error(EAGAIN, "rdma send: every message slot is in flight");
  PBRICK_TRY(post_queued());
  uint32_t slot = free_send_slots_.back();
  free_send_slots_.pop_back();
  uint8_t* buf = send_bufs_.data() + size_t{slot} * proto::kRdmaMessageSize;
  std::memcpy(buf, frame.data(), frame.size());
  Status st = rdma::post_send(id_->qp, pack_wr(kSendMessage, epoch_, slot), buf,
                              static_cast<uint32_t>(frame.size()), send_mr_->lkey);
  if (!st) {
    free_send_slots_.push_back(slot);
    return st.error().wrap("rdma send");
  }
  return Status::Ok();
}

void RdmaLink::queue_rdma(ibv_wr_opcode opcode, const ibv_sge* sges, int nsge, uint32_t rkey,
                          uint64_t remote_addr, uint64_t cookie) {
  ibv_send_wr wr{};
  wr.wr_id = pack_wr(kOneSided, epoch_, cookie);
  // sg_list holds the index into queued_sges_ until post_queued(): the vector
  // may grow meanwhile.
  wr.sg_list = reinterpret_cast<ibv_sge*>(static_cast<uintptr_t>(queued_sges_.size()));
  wr.num_sge = nsge;
  wr.opcode = opcode;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.rkey = rkey;
  wr.wr.rdma.remote_addr = remote_addr;
  queued_sges_.insert(queued_sges_.end(), sges, sges + nsge);
  queued_.push_back(wr);
}

Status RdmaLink::post_queued() {
  if (queued_.empty()) return Status::Ok();
  if (!id_) return Error(ENOTCONN, "rdma: not connected");
  for (size_t i = 0; i < queued_.size(); i++) {
    queued_[i].sg_list = queued_sges_.data() + reinterpret_cast<uintptr_t>(queued_[i].sg_list);
    queued_[i].next = i + 1 < queued_.size() ? &queued_[i + 1] : nullptr;
  }
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(id_->qp, queued_.data(), &bad);
  queued_.clear();
  queued_sges_.clear();
  if (rc != 0) return Error(rc, "rdma: ibv_post_send");
  return Status::Ok();
}

Status RdmaLink::poll(const std::function<void(const Completion&)>& fn) {
  if (!cq_.cq()) return Status::Ok();
  Status first = Status::Ok();
  Status drained = cq_.drain([&](const ibv_wc& wc) {
    if (!id_ || wr_epoch(wc.wr_id) != (epoch_ & 0xFFF)) return;  // an earlier connection's
    Completion c{};
    c.status = errno_from_wc(wc.status);
    if (c.status != 0) c.error = wc_error_text(wc);
    switch (wr_kind(wc.wr_id)) {
      case kRecv: {
        if (c.status != 0) {
          if (first.ok()) first = Error(c.status, "rdma receive: " + c.error);
          return;
        }
        uint32_t slot = static_cast<uint32_t>(wr_low(wc.wr_id));
        c.kind = Completion::Kind::kMessage;
        c.message = {recv_bufs_.data() + size_t{slot} * proto::kRdmaMessageSize, wc.byte_len};
        fn(c);
        if (id_) {
          Status st = post_recv(slot);
          if (!st && first.ok()) first = st;
        }
        return;
      }
      case kSendMessage:
        free_send_slots_.push_back(static_cast<uint32_t>(wr_low(wc.wr_id)));
        if (c.status != 0 && first.ok()) first = Error(c.status, "rdma send: " + c.error);
        return;
      case kOneSided:
        c.kind = Completion::Kind::kOneSided;
        c.cookie = wr_low(wc.wr_id);
        fn(c);
        return;
    }
  });
  PBRICK_TRY(drained);
  return first;
}

Status RdmaLink::wait(int timeout_ms, const std::function<void(const Completion&)>& fn) {
  int n = poll_one(cq_.fd(), timeout_ms);
  if (n < 0) return errno_error("poll on the completion channel");
  if (n == 0) return Error(ETIMEDOUT, "no completion from the RDMA device");
  return poll(fn);
}

Status RdmaLink::check_cm_events() {
  if (!events_) return Status::Ok();
  rdma_cm_event* ev = nullptr;
  while (rdma_get_cm_event(events_.get(), &ev) == 0) {
    bool ours = id_ && ev->id == id_.get();
    rdma_cm_event_type type = ev->event;
    rdma_ack_cm_event(ev);
    if (ours && (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_DEVICE_REMOVAL ||
                 type == RDMA_CM_EVENT_TIMEWAIT_EXIT)) {
      cm_disconnected_ = true;
    }
  }
  if (cm_disconnected_) return Error(ECONNRESET, "the brick closed the RDMA connection");
  return Status::Ok();
}

}  // namespace pbrick::rdma
