#include "target/rdma_listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>

#include <cstring>
#include <optional>

#include "common/auth.h"
#include "common/log.h"
#include "common/protocol.h"
#include "target/listener.h"

namespace pbrick {
namespace {

constexpr uint32_t kSlots = proto::kRdmaMaxOutstanding;
constexpr size_t kMsg = proto::kRdmaMessageSize;
// Every connection has at most kSlots receives and kSlots sends outstanding;
// the CQ they share holds twice that per connection (a closed connection's
// flushed completions may still be in it), as far as the device allows.
constexpr uint32_t kCqEntriesPerConnection = 4 * kSlots;

enum : uint64_t { kWrRecv = 1, kWrSend = 2 };

uint64_t wr_id(uint64_t base, uint64_t kind, uint32_t slot) { return (kind << 60) | base | slot; }

// A random I/O virtual address for a registration of `addr`: the same offset
// within an `align`-sized unit (NICs translate by pages, so the page offset
// must match), the rest random below 2^62, so base + length never wraps.
Result<uint64_t> random_iova(const void* addr, uint64_t align) {
  uint64_t r = 0;
  PBRICK_TRY(random_bytes(reinterpret_cast<uint8_t*>(&r), sizeof r));
  r &= (1ull << 62) - 1;
  return (r & ~(align - 1)) | (reinterpret_cast<uint64_t>(addr) & (align - 1));
}

}  // namespace

// ---- RdmaConn ------------------------------------------------------------------

RdmaConn::~RdmaConn() { disconnect(); }

void RdmaConn::disconnect() {
  if (disconnected_ || !id_) return;
  disconnected_ = true;
  // The QP is ours, not the CM id's: rdma_disconnect() does not move it to
  // the error state, so flush it here (its WRs complete as flushed).
  if (qp_) {
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_ERR;
    ibv_modify_qp(qp_.get(), &attr, IBV_QP_STATE);
  }
  rdma_disconnect(id_.get());
}

Status RdmaConn::allow_remote_access() {
  ibv_qp_attr attr{};
  attr.qp_access_flags = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
  int rc = ibv_modify_qp(qp_.get(), &attr, IBV_QP_ACCESS_FLAGS);
  if (rc != 0) return Error(rc, "ibv_modify_qp: granting remote access to the queue pair");
  return Status::Ok();
}

std::string RdmaConn::peer() const {
  if (!id_) return "?";
  sockaddr* sa = rdma_get_peer_addr(id_.get());
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return std::string("rdma:") + host + ":" + serv;
}

bool RdmaConn::send_frame(std::span<const uint8_t> frame, Status* error) {
  if (free_send_.empty()) return false;
  if (frame.size() > kMsg) {
    *error = Error(EMSGSIZE, "reply of " + std::to_string(frame.size()) + " bytes does not fit a message");
    return true;
  }
  uint32_t slot = free_send_.back();
  free_send_.pop_back();
  uint8_t* buf = send_buf_.data() + size_t{slot} * kMsg;
  std::memcpy(buf, frame.data(), frame.size());
  Status st = rdma::post_send(qp_.get(), wr_id(wr_base_, kWrSend, slot), buf, static_cast<uint32_t>(frame.size()),
                              send_mr_->lkey);
  if (!st) {
    free_send_.push_back(slot);
    *error = st;
  }
  return true;
}

std::span<const uint8_t> RdmaConn::received(uint32_t slot, uint32_t len) const {
  return {recv_buf_.data() + size_t{slot} * kMsg, std::min<size_t>(len, kMsg)};
}

Status RdmaConn::repost(uint32_t slot) {
  return rdma::post_recv(qp_.get(), wr_id(wr_base_, kWrRecv, slot), recv_buf_.data() + size_t{slot} * kMsg,
                         static_cast<uint32_t>(kMsg), recv_mr_->lkey);
}

// ---- RdmaListener --------------------------------------------------------------

RdmaListener::~RdmaListener() = default;

Result<std::unique_ptr<RdmaListener>> RdmaListener::Create(const Endpoint& listen, uint8_t* base, uint64_t size,
                                                           uint32_t max_connections, uint32_t bind_retry_ms) {
  std::unique_ptr<RdmaListener> l(new RdmaListener());
  l->max_connections_ = max_connections;
  l->base_ = base;
  l->size_ = size;
  const std::string where = "listen rdma " + listen.to_string();
  if (listen.is_unix()) return Error(EINVAL, where + ": " + std::string(kUnixIsForTcp));
  l->events_.reset(rdma_create_event_channel());
  if (!l->events_) return errno_error(where + ": rdma_create_event_channel (is the rdma_cm module loaded?)");
  int flags = ::fcntl(l->events_->fd, F_GETFL);
  if (flags < 0 || ::fcntl(l->events_->fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno_error(where + ": fcntl");
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(l->events_.get(), &raw, nullptr, RDMA_PS_TCP) != 0) return errno_error(where + ": rdma_create_id");
  l->listen_id_.reset(raw);
  auto addr = rdma::resolve(listen, true);
  if (!addr) return addr.error().wrap(where);
  // A failed rdma_bind_addr leaves the id unbound (idle): it can be bound again.
  Status bound = bind_with_retry(where, "rdma_bind_addr", bind_retry_ms,
                                 [&] { return rdma_bind_addr(raw, reinterpret_cast<sockaddr*>(&*addr)); });
  if (!bound && bound.error().errnum() != EADDRINUSE) {
    return Error(bound.error().errnum(), bound.error().context() + " (no RDMA device on that address?)");
  }
  PBRICK_TRY(bound);
  if (rdma_listen(raw, 128) != 0) return errno_error(where + ": rdma_listen");
  // Bound to one device's address: set the device up now, so the sync page and
  // the CQ exist before the first client.
  if (raw->verbs != nullptr) PBRICK_TRY(l->setup_device(raw->verbs).wrap_error(where));
  return l;
}

uint16_t RdmaListener::port() const { return ntohs(rdma_get_src_port(listen_id_.get())); }

Status RdmaListener::setup_device(ibv_context* verbs) {
  Status st = try_setup_device(verbs);
  if (!st) {
    // Nothing half made stays behind for the next connection to use (a
    // null PD or CQ, a store never checked for registration): it sets the
    // device up again, or fails the same way.
    sync_mr_.reset();
    sync_page_.reset();
    cq_.reset();
    pd_.reset();
    verbs_ = nullptr;
  }
  return st;
}

Status RdmaListener::try_setup_device(ibv_context* verbs) {
  pd_.reset(ibv_alloc_pd(verbs));
  if (!pd_) return errno_error("ibv_alloc_pd");
  ibv_device_attr attr{};
  if (ibv_query_device(verbs, &attr) != 0) return errno_error("ibv_query_device");
  max_rd_atom_ = std::max(1, std::min(attr.max_qp_rd_atom, 16));
  // The kernel's software devices, by the vendor ids they report: rxe's
  // (0xffffff) and siw's ("bmt").
  cpu_copies_ = attr.vendor_id == 0xffffff || attr.vendor_id == 0x626d74;
  uint32_t fit = static_cast<uint32_t>(attr.max_cqe) / kCqEntriesPerConnection;
  if (fit < max_connections_) {
    PBRICK_LOG_WARN("rdma: the device's CQ holds completions of %u connections: at most %u are accepted", fit, fit);
    max_connections_ = fit;
  }
  PBRICK_TRY(cq_.create(verbs, static_cast<int>(max_connections_ * kCqEntriesPerConnection)));
  // The sync region is a page of its own: its contents mean nothing, and it
  // must not expose the store (whose first page holds the superblock).
  sync_page_.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, 4096)));
  if (!sync_page_) return Error(ENOMEM, "the sync region");
  std::memset(sync_page_.get(), 0, 4096);
  auto iova = random_iova(sync_page_.get(), 4096);
  if (!iova) return iova.error();
  sync_mr_.reset(ibv_reg_mr_iova(pd_.get(), sync_page_.get(), 4096, *iova, IBV_ACCESS_REMOTE_READ));
  if (!sync_mr_) return errno_error("ibv_reg_mr of the sync region");
  sync_iova_ = *iova;
  // MAP registers blocks for remote write; the kernel refuses that for files
  // whose pages it tracks for writeback (a file on ext4 or xfs, fsdax). Find
  // out now rather than at the first MAP.
  rdma::MrPtr probe(ibv_reg_mr(pd_.get(), base_, 4096,
                               IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ));
  if (!probe) {
    return errno_error("the store cannot be registered for RDMA writes (a file on a disk filesystem? "
                       "serve a devdax device, or a file on tmpfs or hugetlbfs)");
  }
  PBRICK_LOG_INFO("rdma: serving through device %s%s", ibv_get_device_name(verbs->device),
                  cpu_copies_ ? " (software: its copies are the CPU's, and stay in its caches)" : "");
  verbs_ = verbs;  // set up, whole
  return Status::Ok();
}

Result<std::optional<RdmaListener::Event>> RdmaListener::next_event() {
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(events_.get(), &ev) != 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::optional<Event>();
    return errno_error("rdma_get_cm_event");
  }
  Event e;
  e.name = rdma_event_str(ev->event);
  e.id = ev->id;
  e.context = reinterpret_cast<uint64_t>(ev->id->context);
  switch (ev->event) {
    case RDMA_CM_EVENT_CONNECT_REQUEST: e.kind = Event::Kind::kConnectRequest; break;
    case RDMA_CM_EVENT_ESTABLISHED: e.kind = Event::Kind::kEstablished; break;
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_REJECTED: e.kind = Event::Kind::kDisconnected; break;
    case RDMA_CM_EVENT_DEVICE_REMOVAL: e.kind = Event::Kind::kDeviceRemoval; break;
    default: e.kind = Event::Kind::kOther; break;
  }
  rdma_ack_cm_event(ev);
  return std::optional<Event>(std::move(e));
}

void RdmaListener::reject(rdma_cm_id* id) {
  rdma_reject(id, nullptr, 0);
  rdma_destroy_id(id);
}

Result<std::unique_ptr<RdmaConn>> RdmaListener::accept(rdma_cm_id* id, uint32_t generation, uint32_t index) {
  std::unique_ptr<RdmaConn> c(new RdmaConn());
  c->id_.reset(id);  // from here on destroyed with the connection, also on error
  Status st = set_up(*c, id, generation, index);
  if (!st) {
    rdma_reject(id, nullptr, 0);  // the client hears at once instead of timing out
    c->disconnected_ = true;
    return st.error();
  }
  return c;
}

Status RdmaListener::set_up(RdmaConn& conn, rdma_cm_id* id, uint32_t generation, uint32_t index) {
  RdmaConn* c = &conn;
  if (verbs_ == nullptr) PBRICK_TRY(setup_device(id->verbs));
  if (id->verbs != verbs_) return Error(EXDEV, "connection through another RDMA device than the first");
  c->wr_base_ = (static_cast<uint64_t>(generation & 0xFFFFFF) << 36) | (static_cast<uint64_t>(index & 0xFFFFF) << 16);
  id->context = reinterpret_cast<void*>((static_cast<uint64_t>(generation) << 32) | index);

  ibv_qp_init_attr attr{};
  attr.send_cq = cq_.cq();
  attr.recv_cq = cq_.cq();
  attr.qp_type = IBV_QPT_RC;
  attr.cap.max_send_wr = kSlots;
  attr.cap.max_recv_wr = kSlots;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  // Not rdma_create_qp(): rdma_accept() would then move the QP to RTS with
  // the CM's access flags (remote write, and remote read with responder
  // resources) before the peer said a word. This QP starts with none.
  c->qp_.reset(ibv_create_qp(pd_.get(), &attr));
  if (!c->qp_) return errno_error("ibv_create_qp");
  // Clients READ (sync-reads, reads of data) with as many outstanding as the
  // device allows; we never READ from them.
  const uint8_t responder_resources = static_cast<uint8_t>(max_rd_atom_);
  // RTS before the receives are posted (a QP in RESET takes none) and before
  // the peer hears of it (rdma_accept sends the reply).
  PBRICK_TRY(bring_up(*c, id, responder_resources));
  c->recv_buf_.assign(kSlots * kMsg, 0);
  c->send_buf_.assign(kSlots * kMsg, 0);
  c->recv_mr_.reset(ibv_reg_mr(pd_.get(), c->recv_buf_.data(), c->recv_buf_.size(), IBV_ACCESS_LOCAL_WRITE));
  c->send_mr_.reset(ibv_reg_mr(pd_.get(), c->send_buf_.data(), c->send_buf_.size(), IBV_ACCESS_LOCAL_WRITE));
  if (!c->recv_mr_ || !c->send_mr_) return errno_error("ibv_reg_mr of message buffers");
  for (uint32_t i = 0; i < kSlots; i++) {
    c->free_send_.push_back(i);
    PBRICK_TRY(c->repost(i));
  }
  rdma_conn_param param{};
  param.responder_resources = responder_resources;
  param.initiator_depth = 0;
  param.rnr_retry_count = 7;
  param.qp_num = c->qp_->qp_num;
  if (rdma_accept(id, &param) != 0) return errno_error("rdma_accept");
  return Status::Ok();
}

// INIT, RTR and RTS with the attributes the connection manager computed for
// this connection, except the access flags: none until allow_remote_access().
Status RdmaListener::bring_up(RdmaConn& c, rdma_cm_id* id, uint8_t responder_resources) {
  ibv_qp_attr attr{};
  int mask = 0;
  attr.qp_state = IBV_QPS_INIT;
  if (rdma_init_qp_attr(id, &attr, &mask) != 0) return errno_error("rdma_init_qp_attr(INIT)");
  attr.qp_access_flags = 0;
  mask |= IBV_QP_ACCESS_FLAGS;
  int rc = ibv_modify_qp(c.qp_.get(), &attr, mask);
  if (rc != 0) return Error(rc, "ibv_modify_qp(INIT)");

  attr = {};
  attr.qp_state = IBV_QPS_RTR;
  if (rdma_init_qp_attr(id, &attr, &mask) != 0) return errno_error("rdma_init_qp_attr(RTR)");
  // As librdmacm does: on an InfiniBand port, bits 21..24 of the mask the
  // kernel returns are RoCE-only attributes the port would refuse.
  ibv_port_attr port{};
  if (ibv_query_port(id->verbs, id->port_num, &port) == 0 && port.link_layer == IBV_LINK_LAYER_INFINIBAND) {
    mask &= ~0xe00000;
  }
  attr.max_dest_rd_atomic = responder_resources;
  rc = ibv_modify_qp(c.qp_.get(), &attr, mask);
  if (rc != 0) return Error(rc, "ibv_modify_qp(RTR)");

  attr = {};
  attr.qp_state = IBV_QPS_RTS;
  if (rdma_init_qp_attr(id, &attr, &mask) != 0) return errno_error("rdma_init_qp_attr(RTS)");
  attr.max_rd_atomic = 0;  // we never READ from clients
  rc = ibv_modify_qp(c.qp_.get(), &attr, mask);
  if (rc != 0) return Error(rc, "ibv_modify_qp(RTS)");
  return Status::Ok();
}

Status RdmaListener::poll_cq(const std::function<void(const Completion&)>& fn) {
  if (!cq_.cq()) return Status::Ok();
  return cq_.drain([&](const ibv_wc& wc) {
    Completion c{};
    c.is_recv = (wc.wr_id >> 60) == kWrRecv;
    c.generation = static_cast<uint32_t>((wc.wr_id >> 36) & 0xFFFFFF);
    c.index = static_cast<uint32_t>((wc.wr_id >> 16) & 0xFFFFF);
    c.slot = static_cast<uint32_t>(wc.wr_id & 0xFFFF);
    c.byte_len = wc.byte_len;
    c.status = rdma::errno_from_wc(wc.status);
    if (c.status != 0) c.error = rdma::wc_error_text(wc);
    fn(c);
  });
}

Result<RdmaListener::Registration> RdmaListener::register_block(uint64_t offset, uint64_t len, bool writable) {
  if (!pd_) return Error(ENODEV, "no RDMA device set up");
  if (offset > size_ || len > size_ - offset) return Error(ERANGE, "block outside the store");
  int access = IBV_ACCESS_REMOTE_READ;
  if (writable) access |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
  auto iova = random_iova(base_ + offset, proto::kBlockSize);
  if (!iova) return iova.error();
  Registration r;
  r.mr.reset(ibv_reg_mr_iova(pd_.get(), base_ + offset, len, *iova, access));
  if (!r.mr) return errno_error("ibv_reg_mr of a 2 MiB block");
  r.remote_addr = *iova;
  return r;
}

}  // namespace pbrick
