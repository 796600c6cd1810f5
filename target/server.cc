// The event loop (server_impl.h lists the other files of the Server).
#include "target/server.h"

#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/log.h"
#include "common/units.h"
#include "target/server_impl.h"

namespace pbrick {
namespace {

constexpr unsigned kRingEntries = 1024;
constexpr long long kTickNanos = 1000ll * 1000 * 1000;

// The host's boot id (random per boot): a gateway that sees it unchanged after
// reconnecting knows the brick's memory, and so its unpersisted writes, survived.
std::array<uint8_t, proto::kUuidSize> read_boot_id() {
  std::array<uint8_t, proto::kUuidSize> id{};
  FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == nullptr) return id;
  char text[64] = {};
  size_t n = std::fread(text, 1, sizeof text - 1, f);
  std::fclose(f);
  size_t out = 0;
  for (size_t i = 0; i + 1 < n && out < id.size(); i++) {
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) continue;
    id[out++] = static_cast<uint8_t>(hi << 4 | lo);
    i++;
  }
  return id;
}

}  // namespace

bool sync_read_persists_over_rdma(Persistence declared, PersistenceDomain domain, bool store_is_pmem,
                                  bool cpu_copies) {
  if (domain == PersistenceDomain::kCpuCache) return true;
  return declared == Persistence::kSyncRead && !(cpu_copies && store_is_pmem);
}

Server::Impl::Impl(Store& store, const ServerOptions& options)
    : store_(store), options_(options), ledger_(store.region(), *this),
      boot_id_(options.boot_id.value_or(read_boot_id())) {}

Server::Impl::~Impl() {
  // A unix socket's file goes with the brick that served it (one a killed
  // brick leaves is removed by the next one, listener.cc) - unless the path
  // names another socket now: a brick started while this one drained took
  // the path over (this one's listener was shut down, so the new one found
  // nobody accepting there).
  struct stat st{};
  if (listen_fd_.valid() && unix_socket_file_ && ::lstat(options_.listen.unix_path.c_str(), &st) == 0 &&
      std::make_pair(st.st_dev, st.st_ino) == *unix_socket_file_) {
    ::unlink(options_.listen.unix_path.c_str());
  }
}

Status Server::Impl::init() {
  // docs/protocol.md §11: the whole store is persisted before any connection
  // is accepted, so a sync point on a new connection covers everything the
  // brick holds - WRITE data a previous brick process left in the page cache
  // (a file store) or in the CPU caches (pmem: a killed process's stores are
  // still only in the caches) included.
  PmemRegion& region = store_.region();
  auto started = Clock::now();
  Status persisted = region.persist(0, region.size());
  if (!persisted) return persisted.error().wrap("persisting the store before serving");
  // The slow tier too: the map entries of the blocks beyond the fast tier's
  // live in its map.
  if (SlowTier* slow = store_.slow_tier()) {
    persisted = slow->region().persist(0, slow->region().size());
    if (!persisted) return persisted.error().wrap("persisting the slow tier before serving");
  }
  PBRICK_LOG_INFO("persisted the whole store (%s) in %lld ms", format_size(region.size()).c_str(),
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             Clock::now() - started).count()));
  PBRICK_TRY(listen());
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  signal_fd_.reset(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd_.valid()) return errno_error("signalfd");
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!stop_fd_.valid()) return errno_error("eventfd");
  PBRICK_TRY(ring_.init(kRingEntries));
  if (options_.tiering) options_.tiering->set_wake([this] { post_tier_wake(); });
  return Status::Ok();
}

void Server::Impl::stop() {
  uint64_t one = 1;
  ssize_t ignored = ::write(stop_fd_.get(), &one, sizeof one);
  (void)ignored;
}

// One read of each in flight at a time: begin_stop cancels one of each, and
// a second left pending would keep run() from ever returning.
void Server::Impl::arm_signal() {
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_read(sqe, signal_fd_.get(), &siginfo_, sizeof siginfo_, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kSignal, 0, 0));
}

void Server::Impl::arm_stop() {
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_read(sqe, stop_fd_.get(), &stop_buf_, sizeof stop_buf_, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kStop, 0, 0));
}

void Server::Impl::arm_tick() {
  tick_ts_.tv_sec = kTickNanos / 1000000000;
  tick_ts_.tv_nsec = kTickNanos % 1000000000;
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTick, 0, 0));
}

void Server::Impl::start_sync(uint64_t number) {
  io_uring_sqe* sqe = ring_.get_sqe();
  store_.region().prep_sync(sqe);
  io_uring_sqe_set_data64(sqe, UserData::pack_sync(number));
}

void Server::Impl::on_sync_done(uint64_t number, int res) {
  for (auto [index, generation] : ledger_.on_sync_done(number, res)) {
    Connection* c = find(index, generation);
    if (c == nullptr) continue;
    c->sync.awaiting_sync = false;
    pump(*c);
  }
}

void Server::Impl::arm_tier_poll() {
  if (!options_.tiering || tier_poll_inflight_) return;
  tier_poll_inflight_ = true;
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_poll_add(sqe, options_.tiering->event_fd(), POLLIN);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTierPoll, 0, 0));
}

void Server::Impl::post_tier_wake() {
  if (tier_wake_posted_ || tier_waiters_.empty()) return;
  tier_wake_posted_ = true;
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTierWake, 0, 0));
}

void Server::Impl::on_tier_wake() {
  // Each waiter asks again (tier_before_map) and may wait again.
  tier_waking_.swap(tier_waiters_);
  for (auto [index, generation] : tier_waking_) {
    Connection* c = find(index, generation);
    if (c == nullptr) continue;
    c->awaiting_tier = false;
    pump(*c);
  }
  tier_waking_.clear();
}

void Server::Impl::on_cq() {
  Status st = listener_->poll_cq([this](const RdmaListener::Completion& wc) {
    Connection* c = find(wc.index, wc.generation);
    if (c == nullptr) return;
    c->transport->on_work_completion(*c, wc);
    pending_.push_back(wc.index);
  });
  if (!st) PBRICK_LOG_ERROR("rdma: %s", st.error().message().c_str());
  // Each touched connection once, after the whole batch: frames are parsed
  // and replies sent per connection, not per completion.
  for (uint32_t index : pending_) {
    if (index < conns_.size() && conns_[index]) pump(*conns_[index]);
  }
  pending_.clear();
  arm_rdma();
}

void Server::Impl::update_status() {
  StoreStats s = store_.stats();
  sd_notifyf(0, "STATUS=serving on %s: %zu connections, %llu/%llu blocks allocated, %llu mapped",
             bound_endpoint().to_string().c_str(), open_connections_,
             static_cast<unsigned long long>(s.allocated_blocks), static_cast<unsigned long long>(s.capacity_blocks),
             static_cast<unsigned long long>(s.mapped_blocks));
}

void Server::Impl::on_tick() {
  auto now = Clock::now();
  if (watchdog_usec_ != 0 &&
      now - last_watchdog_ >= std::chrono::microseconds(watchdog_usec_ / 2)) {
    sd_notify(0, "WATCHDOG=1");
    last_watchdog_ = now;
    update_status();
  }
  for (auto& c : conns_) {
    if (c && !c->ready() && !c->closing &&
        now - c->accepted_at > std::chrono::milliseconds(options_.handshake_timeout_ms)) {
      PBRICK_LOG_WARN("%s: closing connection: no handshake within %u ms", c->peer.c_str(),
                      options_.handshake_timeout_ms);
      close_now(*c);
    }
  }
  if (!accept_inflight_) arm_accept();
  if (options_.tiering) options_.tiering->tick();  // background demotion step
}

void Server::Impl::handle_cqe(io_uring_cqe* cqe) {
  ring_.completed();
  uint64_t ud = io_uring_cqe_get_data64(cqe);
  int res = cqe->res;
  OpKind kind = UserData::kind(ud);
  switch (kind) {
    case OpKind::kAccept:
      on_accept(res);
      return;
    case OpKind::kSignal:
      if (res == static_cast<int>(sizeof siginfo_)) {
        PBRICK_LOG_NOTICE("received %s, shutting down", strsignal(static_cast<int>(siginfo_.ssi_signo)));
        stopping_ = true;
      } else if (!stopping_) {
        arm_signal();
      }
      return;
    case OpKind::kStop:
      if (res == static_cast<int>(sizeof stop_buf_)) {
        PBRICK_LOG_NOTICE("stop requested, shutting down");
        stopping_ = true;
      } else if (!stopping_) {
        arm_stop();
      }
      return;
    case OpKind::kTick:
      if (!stopping_) {
        on_tick();
        arm_tick();
      }
      return;
    case OpKind::kCancel:
      return;
    case OpKind::kCmPoll:
      cm_poll_inflight_ = false;
      if (!stopping_) on_cm_events();
      return;
    case OpKind::kCqPoll:
      cq_poll_inflight_ = false;
      if (!stopping_) on_cq();
      return;
    case OpKind::kFsync:
      on_sync_done(UserData::sync_number(ud), res);
      return;
    case OpKind::kTierPoll:
      tier_poll_inflight_ = false;
      if (!stopping_) {
        options_.tiering->on_event();
        arm_tier_poll();
      }
      return;
    case OpKind::kTierWake:
      tier_wake_posted_ = false;
      on_tier_wake();
      return;
    case OpKind::kRecv:
    case OpKind::kSend:
      break;
  }
  Connection* c = find(UserData::index(ud), UserData::generation(ud));
  if (c == nullptr) {
    PBRICK_LOG_ERROR("completion for a closed connection (slot %u)", UserData::index(ud));
    return;
  }
  c->transport->on_ring_completion(*c, kind, res);
  pump(*c);
}

void Server::Impl::begin_stop() {
  sd_notify(0, "STOPPING=1");
  // Wake every pending operation so the loop can drain: closed sockets
  // complete their recv/accept, the rest is cancelled.
  ::shutdown(listen_fd_.get(), SHUT_RDWR);
  for (auto& c : conns_) {
    if (c) {
      c->closing = true;
      c->transport->shutdown_all();
    }
  }
  for (OpKind kind : {OpKind::kTick, OpKind::kSignal, OpKind::kStop, OpKind::kAccept, OpKind::kCmPoll,
                      OpKind::kCqPoll, OpKind::kTierPoll}) {
    io_uring_sqe* sqe = ring_.get_sqe();
    io_uring_prep_cancel64(sqe, UserData::pack(kind, 0, 0), 0);
    io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
  }
}

Status Server::Impl::run() {
  arm_signal();
  arm_stop();
  arm_tick();
  arm_accept();
  arm_tier_poll();
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0) watchdog_usec_ = usec;
  last_watchdog_ = Clock::now();
  const char* sync_read = "served (over TCP the brick persists before it answers)";
  if (options_.transport == Transport::kRdma) {
    // The device is known once bound to an address (a wildcard: at the
    // first connection, which HELLO then checks).
    const bool software = listener_ && listener_->cpu_copies();
    const bool pmem = store_.region().is_pmem();
    const bool cpu_cache = store_.region().persistence_domain() == PersistenceDomain::kCpuCache;
    sync_read = options_.persistence == Persistence::kSyncRead && !(software && pmem)
                    ? "served (DDIO off, as --persistence declares)"
                : cpu_cache ? "served (the store's persistence domain includes the CPU caches)"
                : options_.persistence == Persistence::kSyncRead
                    ? "refused (DDIO off is declared, but the RDMA device is software: what it writes stays in "
                      "the CPU caches, which the store's persistence domain leaves out): PERSIST only"
                    : "refused (neither DDIO off declared nor a cpu_cache persistence domain): PERSIST only";
  }
  PBRICK_LOG_NOTICE("serving on %s (%s store, %s; sync-read %s)",
                    bound_endpoint().to_string().c_str(),
                    store_.region().is_pmem() ? "pmem" : "file",
                    options_.key ? "cluster key required" : "no authentication", sync_read);
  sd_notify(0, "READY=1");
  update_status();
  if (watchdog_usec_ != 0) sd_notify(0, "WATCHDOG=1");

  bool shut = false;
  while (ring_.inflight() > 0) {
    if (stopping_ && !shut) {
      shut = true;
      begin_stop();
    }
    int err = io_uring_submit_and_wait(ring_.get(), 1);
    if (err < 0 && err != -EINTR) return Error(-err, "io_uring_submit_and_wait");
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      handle_cqe(cqe);
      count++;
    }
    io_uring_cq_advance(ring_.get(), count);
  }
  for (auto& c : conns_) {
    if (c) {
      handles_.revoke_all(c->rkeys);
      c.reset();
    }
  }
  PBRICK_LOG_NOTICE("stopped");
  if (fatal_) return *fatal_;
  return Status::Ok();
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::Create(Store& store, const ServerOptions& options) {
  auto impl = std::make_unique<Impl>(store, options);
  PBRICK_TRY(impl->init());
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

uint16_t Server::port() const { return impl_->port(); }
Status Server::adopt(UniqueFd fd) { return impl_->adopt(std::move(fd)); }
Status Server::run() { return impl_->run(); }
void Server::stop() { impl_->stop(); }

}  // namespace pbrick
