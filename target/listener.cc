// Listening and accepting (TCP and RDMA CM), and the connection slots:
// admission of new connections, the handshake budget, closing.
#include "target/listener.h"

#include <arpa/inet.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "target/server_impl.h"

namespace pbrick {

Status bind_with_retry(const std::string& where, const std::string& what, uint32_t retry_ms,
                       const std::function<int()>& bind) {
  using Clock = std::chrono::steady_clock;
  // A brick restarted right after kill -9 can find its port still held by
  // the old process's io_uring or RDMA CM ids, which the kernel tears down
  // asynchronously: SO_REUSEADDR does not help against a listening socket.
  const auto deadline = Clock::now() + std::chrono::milliseconds(retry_ms);
  bool retrying = false;
  while (bind() != 0) {
    if (errno != EADDRINUSE) return errno_error(where + ": " + what);
    if (Clock::now() >= deadline) {
      return Error(EADDRINUSE, where + ": " + what + ": address still in use after " + std::to_string(retry_ms) +
                                   " ms (is another brick serving this port?)");
    }
    if (!retrying) {
      PBRICK_LOG_NOTICE("%s: address in use (a brick stopped a moment ago may still hold it); "
                        "retrying for up to %u ms", where.c_str(), retry_ms);
      retrying = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (retrying) PBRICK_LOG_NOTICE("%s: bound after retrying", where.c_str());
  return Status::Ok();
}

namespace {

// A unix socket's file left by a brick that was killed (nobody accepts on it)
// is removed; one a live brick serves, or a path that is not a socket, is
// left alone and the listen fails.
Status remove_stale_socket(const Endpoint& endpoint, const std::string& where) {
  struct stat st{};
  if (::lstat(endpoint.unix_path.c_str(), &st) != 0) {
    return errno == ENOENT ? Status::Ok() : errno_error(where + ": stat");
  }
  if (!S_ISSOCK(st.st_mode)) return Error(EEXIST, where + ": the path exists and is not a socket");
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return errno_error(where + ": socket");
  sockaddr_un sun = unix_address(endpoint);
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof sun) == 0) {
    return Error(EADDRINUSE, where + ": another process serves this socket (is another brick running?)");
  }
  if (errno != ECONNREFUSED) return errno_error(where + ": probing the existing socket");
  PBRICK_LOG_NOTICE("%s: removing the socket a stopped brick left", where.c_str());
  if (::unlink(endpoint.unix_path.c_str()) != 0 && errno != ENOENT) return errno_error(where + ": unlink");
  return Status::Ok();
}

// Owner-only (0600): a unix socket reaches the whole store, so only the
// brick's user (and root) may connect; bound before listen(), so nobody
// connects before the mode is set.
Result<UniqueFd> listen_unix(const Endpoint& endpoint) {
  const std::string where = "listen " + endpoint.to_string();
  PBRICK_TRY(remove_stale_socket(endpoint, where));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_error(where + ": socket");
  sockaddr_un sun = unix_address(endpoint);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0) return errno_error(where + ": bind");
  if (::chmod(endpoint.unix_path.c_str(), 0600) != 0) return errno_error(where + ": chmod");
  if (::listen(fd.get(), 128) != 0) return errno_error(where + ": listen");
  return fd;
}

}  // namespace

Result<UniqueFd> listen_stream(const Endpoint& endpoint, uint32_t bind_retry_ms, uint16_t* port) {
  if (endpoint.is_unix()) {
    *port = 0;
    return listen_unix(endpoint);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port_text = std::to_string(endpoint.port);
  const std::string where = "listen " + endpoint.to_string();
  int rc = ::getaddrinfo(endpoint.host.c_str(), port_text.c_str(), &hints, &res);
  if (rc != 0) return Error(EINVAL, where + ": " + gai_strerror(rc));
  Error last(EADDRNOTAVAIL, where);
  UniqueFd listening;
  for (addrinfo* ai = res; ai != nullptr && !listening.valid(); ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = errno_error(where + ": socket");
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    Status bound = bind_with_retry(where, "bind", bind_retry_ms,
                                   [&] { return ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen); });
    if (!bound) {
      last = bound.error();
      continue;
    }
    if (::listen(fd.get(), 128) != 0) {
      last = errno_error(where + ": listen");
      continue;
    }
    listening = std::move(fd);
  }
  ::freeaddrinfo(res);
  if (!listening.valid()) return last;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(listening.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  *port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return listening;
}

std::string peer_name(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_UNIX) return "local";
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof ss, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return std::string(host) + ":" + serv;
}

// ---- Server::Impl: listening and accepting -------------------------------------

Status Server::Impl::listen() {
  if (options_.transport == Transport::kRdma) {
    auto l = RdmaListener::Create(options_.listen, store_.region().base(), store_.region().size(),
                                  options_.max_connections + options_.max_handshakes, options_.bind_retry_ms);
    if (!l) return l.error();
    listener_ = std::move(*l);
    port_ = listener_->port();
    handles_.set_listener(listener_.get());
    return Status::Ok();
  }
  auto fd = listen_stream(options_.listen, options_.bind_retry_ms, &port_);
  if (!fd) return fd.error();
  listen_fd_ = std::move(*fd);
  if (options_.listen.is_unix()) {
    struct stat st{};
    if (::lstat(options_.listen.unix_path.c_str(), &st) == 0) unix_socket_file_ = std::make_pair(st.st_dev, st.st_ino);
  }
  return Status::Ok();
}

Status Server::Impl::adopt(UniqueFd fd) {
  if (listener_) return Error(EINVAL, "adopt: an RDMA brick serves RDMA connections only");
  admit_handshake();
  add_connection(take_slot(), next_generation_++ & 0xFFFFFF, std::make_unique<TcpTransport>(std::move(fd)),
                 "adopted");
  return Status::Ok();
}

void Server::Impl::arm_accept() {
  if (listener_) return arm_rdma();
  if (stopping_ || accept_inflight_) return;
  accept_addrlen_ = sizeof accept_addr_;
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_accept(sqe, listen_fd_.get(), reinterpret_cast<sockaddr*>(&accept_addr_), &accept_addrlen_,
                       SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kAccept, 0, 0));
  accept_inflight_ = true;
}

void Server::Impl::arm_rdma() {
  if (stopping_) return;
  if (!cm_poll_inflight_) {
    io_uring_sqe* sqe = ring_.get_sqe();
    io_uring_prep_poll_add(sqe, listener_->cm_fd(), POLLIN);
    io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCmPoll, 0, 0));
    cm_poll_inflight_ = true;
  }
  if (!cq_poll_inflight_ && listener_->cq_fd() >= 0) {
    io_uring_sqe* sqe = ring_.get_sqe();
    io_uring_prep_poll_add(sqe, listener_->cq_fd(), POLLIN);
    io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCqPoll, 0, 0));
    cq_poll_inflight_ = true;
  }
}

void Server::Impl::on_accept(int res) {
  accept_inflight_ = false;
  if (res < 0) {
    if (!stopping_ && res != -EINVAL) {
      PBRICK_LOG_WARN("accept: %s", std::strerror(-res));
      // EMFILE and friends: don't spin; the tick re-arms.
      if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) return;
    }
    if (!stopping_) arm_accept();
    return;
  }
  UniqueFd fd(res);
  if (stopping_) return;
  admit_handshake();
  // Connections that were evicted or refused are still closing; past this
  // many objects the brick stops accepting until they are gone.
  if (open_connections_ >= size_t{options_.max_connections} + 2 * size_t{options_.max_handshakes}) {
    PBRICK_LOG_WARN("refusing connection from %s: %zu connections open", peer_name(accept_addr_).c_str(),
                    open_connections_);
    arm_accept();
    return;
  }
  if (options_.listen.is_unix()) {
    size_unix_send_buffer(fd.get());
  } else {
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // The brick only answers: a peer whose host lost power or whose network
    // went away leaves an idle connection that never fails, holding its slot
    // (max_connections) and its mappings (the blocks stay pinned) for ever.
    // Probed after 30 s idle, closed after 3 unanswered probes 10 s apart.
    int idle = 30, interval = 10, count = 3;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    // A peer that stops reading its replies keeps ACKing with a zero
    // window, which keepalive never catches: its connection would hold its
    // slot, buffers and mappings (an exclusive one is a volume's lock) for
    // ever, a closing one too (it waits for its last send). Data the peer
    // has not taken for stalled_peer_timeout_ms fails the connection.
    unsigned user_timeout_ms = options_.stalled_peer_timeout_ms;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
  }
  add_connection(take_slot(), next_generation_++ & 0xFFFFFF, std::make_unique<TcpTransport>(std::move(fd)),
                 peer_name(accept_addr_));
  arm_accept();
}

void Server::Impl::on_cm_events() {
  // A bounded batch: a peer flooding connection requests must not keep the
  // loop from completions, syncs and the watchdog (the poll fires again).
  constexpr int kMaxEventsPerTurn = 32;
  for (int n = 0; n < kMaxEventsPerTurn; n++) {
    auto ev = listener_->next_event();
    if (!ev) {
      PBRICK_LOG_ERROR("rdma: %s", ev.error().message().c_str());
      break;
    }
    if (!*ev) break;
    const RdmaListener::Event& e = **ev;
    using Kind = RdmaListener::Event::Kind;
    if (e.kind == Kind::kDeviceRemoval) {
      // The listening id died with the device: this brick would stay up,
      // and ready to the service manager, and never accept again. It stops
      // with an error instead, so that it is started again (on the device
      // that comes back, with a new PD and CQ).
      if (!fatal_) fatal_ = Error(ENODEV, "rdma: the RDMA device was removed (" + e.name + ")");
      stopping_ = true;
      break;
    }
    if (e.kind == Kind::kConnectRequest) {
      admit_handshake();
      if (open_connections_ >= listener_->max_connections()) {
        PBRICK_LOG_WARN("refusing an RDMA connection: %u queue pairs open", listener_->max_connections());
        listener_->reject(e.id);
        continue;
      }
      uint32_t index = take_slot();
      uint32_t generation = next_generation_++ & 0xFFFFFF;
      auto rc = listener_->accept(e.id, generation, index);
      if (!rc) {
        PBRICK_LOG_WARN("refusing an RDMA connection: %s", rc.error().message().c_str());
        free_slots_.push_back(index);
        continue;
      }
      std::string peer = (*rc)->peer();
      add_connection(index, generation, std::make_unique<RdmaTransport>(std::move(*rc)), std::move(peer));
      continue;
    }
    Connection* c = find(static_cast<uint32_t>(e.context), static_cast<uint32_t>(e.context >> 32));
    if (c == nullptr) continue;
    if (e.kind == Kind::kDisconnected) {
      PBRICK_LOG_DEBUG("%s: %s", c->peer.c_str(), e.name.c_str());
      c->peer_eof = true;
      c->drop_output();  // nobody is left to read replies
      // A reply already posted is never acknowledged by a peer that is gone:
      // it would hold the connection, and its mappings (a volume's lock
      // among them), until the QP's retries ran out, seconds later, or for
      // ever while a receiver-not-ready peer lives on. Moving the QP to the
      // error state flushes it now.
      c->transport->cut_off();
      c->begin_close();
      maybe_close(*c);
    }
  }
  arm_rdma();
}

// ---- Server::Impl: connection slots ---------------------------------------------

Connection& Server::Impl::add_connection(uint32_t index, uint32_t generation,
                                         std::unique_ptr<ConnTransport> transport, std::string peer) {
  conns_[index] = std::make_unique<Connection>(index, generation, std::move(transport), std::move(peer));
  Connection& c = *conns_[index];
  open_connections_++;
  pending_handshakes_++;
  PBRICK_LOG_DEBUG("%s: connected", c.peer.c_str());
  c.transport->arm_recv(c, ring_);
  return c;
}

uint32_t Server::Impl::take_slot() {
  if (!free_slots_.empty()) {
    uint32_t index = free_slots_.back();
    free_slots_.pop_back();
    return index;
  }
  conns_.emplace_back();
  return static_cast<uint32_t>(conns_.size() - 1);
}

Connection* Server::Impl::find(uint32_t index, uint32_t generation) {
  if (index >= conns_.size() || !conns_[index] || conns_[index]->generation != generation) return nullptr;
  return conns_[index].get();
}

void Server::Impl::admit_handshake() {
  if (pending_handshakes_ < options_.max_handshakes) return;
  Connection* oldest = nullptr;
  for (auto& c : conns_) {
    if (c && c->counts_as_handshake && (oldest == nullptr || c->accepted_at < oldest->accepted_at)) {
      oldest = c.get();
    }
  }
  if (oldest == nullptr) return;
  PBRICK_LOG_WARN("%s: closing the oldest connection still in its handshake: %u are (--max-handshakes)",
                  oldest->peer.c_str(), options_.max_handshakes);
  oldest->counts_as_handshake = false;
  pending_handshakes_--;
  // Its unsent replies go, unless a send of them is in flight: that send
  // still reads the buffer and advances out_start when it completes.
  if (!oldest->transport->pins_output(*oldest)) oldest->drop_output();
  close_now(*oldest);
}

void Server::Impl::close_now(Connection& c) {
  c.begin_close();
  if (!c.transport->closes_in_ring()) maybe_close(c);
}

void Server::Impl::maybe_close(Connection& c) {
  if (!c.closing) return;
  if (!c.send_inflight && c.out_start != c.out_end && !stopping_) {
    c.transport->flush_output(c, ring_);
    return;
  }
  if (!c.idle()) return;
  size_t revoked = c.rkeys.size();
  handles_.revoke_all(c.rkeys);
  // Its unpersisted WRITEs are now covered by the next sync point of any connection.
  ledger_.orphan(c.sync);
  c.transport->disconnect();
  PBRICK_LOG_DEBUG("%s: connection closed (%zu mappings revoked)", c.peer.c_str(), revoked);
  uint32_t index = c.index;
  if (c.counts_as_handshake) pending_handshakes_--;
  if (c.ready()) ready_connections_--;
  conns_[index].reset();
  free_slots_.push_back(index);
  open_connections_--;
  if (!stopping_) arm_accept();
}

}  // namespace pbrick
