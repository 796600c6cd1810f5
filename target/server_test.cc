// The brick's persistence paths against a real Server over TCP on loopback,
// with the store's region replaced by a FaultInjectionRegion (in memory) that
// fails or holds fdatasync, msync and zeroing on command. Each test names the
// clause of docs/persistence.md it checks.
#include "target/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <atomic>
#include <thread>

#include "common/unique_fd.h"
#include "gateway/engine.h"
#include "gateway/tcp_channel.h"
#include "gateway/volume_label.h"
#include "target/conn_transport.h"
#include "target/connection.h"
#include "target/fault_injection_region.h"
#include "target/listener.h"
#include "target/store.h"

namespace pbrick {
namespace {

using namespace std::chrono_literals;
using Fault = FaultInjectionRegion::Op;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBlock = 2 * kMiB;

class FaultyBrick {
 public:
  // `slow`: with a slow tier, a FaultInjectionRegion too. `track_durable`:
  // the store's region keeps the image a power cut would leave.
  explicit FaultyBrick(bool pmem = false, bool slow = false, bool track_durable = false) {
    auto region = std::make_unique<FaultInjectionRegion>(make_memory_region(64 * kMiB), pmem, track_durable);
    region_ = region.get();
    std::unique_ptr<FaultInjectionRegion> slow_region;
    if (slow) {
      slow_region = std::make_unique<FaultInjectionRegion>(make_memory_region(64 * kMiB), pmem);
      slow_region_ = slow_region.get();
    }
    auto store = Store::Open(std::move(region), {}, std::move(slow_region));
    EXPECT_TRUE(store.ok()) << store.error().message();
    store_ = std::move(*store);
  }
  ~FaultyBrick() { stop(); }

  FaultInjectionRegion& region() { return *region_; }
  FaultInjectionRegion& slow_region() { return *slow_region_; }

  // On loopback TCP (a free port), or on `listen` (a unix socket).
  void start(const Endpoint& listen = Endpoint{"127.0.0.1", 0}, uint32_t stalled_peer_timeout_ms = 60000) {
    ServerOptions so;
    so.listen = listen;
    so.stalled_peer_timeout_ms = stalled_peer_timeout_ms;
    listen_ = listen;
    auto server = Server::Create(*store_, so);
    ASSERT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(*server);
    thread_ = std::thread([this] { EXPECT_TRUE(server_->run().ok()); });
  }

  void stop() {
    if (!thread_.joinable()) return;
    // A held sync would keep the server's ring busy forever.
    region_->hold_syncs(false);
    for (uint64_t i = region_->syncs_completed(); i < region_->syncs_started(); i++) region_->release_sync(0);
    server_->stop();
    thread_.join();
  }

  ClientOptions options() const {
    ClientOptions o;
    o.endpoint = listen_.is_unix() ? listen_ : Endpoint{"127.0.0.1", server_->port()};
    o.features = proto::kFeatureSyncRead | proto::kFeaturePersistRpc;
    return o;
  }

  std::unique_ptr<BrickClient> connect() const {
    auto c = BrickClient::Connect(options());
    EXPECT_TRUE(c.ok()) << c.error().message();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // Waits until `n` syncs were started (the server runs on its own thread).
  bool wait_syncs_started(uint64_t n) const {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (region_->syncs_started() < n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

 private:
  FaultInjectionRegion* region_ = nullptr;
  FaultInjectionRegion* slow_region_ = nullptr;
  std::unique_ptr<Store> store_;
  Endpoint listen_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

// A one-queue engine on a 16 MiB volume of `brick` (the volume's open error,
// if any, is the result's).
Result<std::unique_ptr<Engine>> start_engine(FaultyBrick& brick) {
  VolumeOptions vo;
  vo.brick = brick.options();
  vo.size = 16 * kMiB;
  auto volume = Volume::Open(vo);
  if (!volume.ok()) return volume.error().wrap("opening the volume");
  EngineOptions eo;
  eo.queues = 1;
  eo.depth = 8;
  return Engine::Start(std::move(*volume), eo);
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

int errnum_of(const Status& st) { return st.ok() ? 0 : st.error().errnum(); }

// A block at `vaddr`, allocated and mapped writable (exclusive), with `seed`'s
// pattern written through it.
proto::MapReply write_block(BrickClient& c, uint64_t vaddr, uint8_t seed) {
  EXPECT_TRUE(c.alloc(vaddr).ok());
  auto m = c.map(vaddr, proto::kMapWrite);
  EXPECT_TRUE(m.ok()) << m.error().message();
  auto data = pattern(4096, seed);
  EXPECT_TRUE(c.write(m->rkey, m->remote_addr, data).ok());
  return *m;
}

int sync_read(BrickClient& c, const proto::MapReply& m) {
  uint8_t byte;
  return errnum_of(c.read(m.rkey, m.remote_addr, {&byte, 1}));
}

// persistence.md, "sync-read": an RDMA READ after RDMA WRITEs is a persistence
// point where the NIC's writes bypass the caches (DDIO off, declared by the
// operator) or where the caches themselves are durable (eADR: the region's
// persistence domain is cpu_cache); nowhere else. A software device (rxe,
// siw) writes with the CPU: into the caches whatever DDIO is, so on pmem
// only eADR makes its writes durable.
TEST(ServerPersistence, SyncReadOverRdmaNeedsDdioOffOrACpuCacheDomain) {
  const PersistenceDomain kUnknown = PersistenceDomain::kUnknown, kAdr = PersistenceDomain::kMemoryController,
                          kEadr = PersistenceDomain::kCpuCache;
  const Persistence kDeclared = Persistence::kSyncRead, kRpc = Persistence::kRpc;
  for (bool pmem : {false, true}) {
    EXPECT_TRUE(sync_read_persists_over_rdma(kDeclared, kUnknown, pmem, false)) << pmem;
    EXPECT_TRUE(sync_read_persists_over_rdma(kDeclared, kAdr, pmem, false)) << pmem;
    EXPECT_TRUE(sync_read_persists_over_rdma(kRpc, kEadr, pmem, false)) << pmem;
    EXPECT_TRUE(sync_read_persists_over_rdma(kRpc, kEadr, pmem, true)) << pmem;
    EXPECT_TRUE(sync_read_persists_over_rdma(kDeclared, kEadr, pmem, true)) << pmem;
    EXPECT_FALSE(sync_read_persists_over_rdma(kRpc, kAdr, pmem, false)) << pmem;
    EXPECT_FALSE(sync_read_persists_over_rdma(kRpc, kUnknown, pmem, false)) << pmem;
    EXPECT_FALSE(sync_read_persists_over_rdma(kRpc, kUnknown, pmem, true)) << pmem;
  }
  // Soft-RoCE with DDIO "off": a file store is as durable as it can be (a
  // brick crash loses nothing, a power loss everything); pmem without eADR
  // would lose what sits in the caches.
  EXPECT_TRUE(sync_read_persists_over_rdma(kDeclared, kUnknown, false, true));
  EXPECT_FALSE(sync_read_persists_over_rdma(kDeclared, kAdr, true, true));
  EXPECT_FALSE(sync_read_persists_over_rdma(kDeclared, kUnknown, true, true));
}

// docs/persistence.md, clause 1: what a sync point acknowledged over TCP is in
// the image a power cut would leave (the region's persistence steps alone
// make it, FaultInjectionRegion's track_durable) - on pmem through the drain
// of the brick's non-temporal stores, on a file through the fdatasync - for a
// sync-read and for a PERSIST naming no range; and a write no sync point
// covered yet is not, so the image is not simply the live memory.
TEST(ServerPersistence, WhatASyncPointAcknowledgedIsInTheImageAPowerCutLeaves) {
  // The 4 KiB at `off` of block `vaddr` in a store opened from `image`.
  auto bytes_at = [](const std::vector<uint8_t>& image, uint64_t vaddr, uint64_t off) {
    auto region = make_memory_region(image.size());
    std::memcpy(region->base(), image.data(), image.size());
    auto store = Store::Open(std::move(region), {});
    EXPECT_TRUE(store.ok()) << store.error().message();
    if (!store.ok()) return std::vector<uint8_t>();
    auto slot = (*store)->slot_offset(vaddr);
    EXPECT_TRUE(slot.ok()) << slot.error().message();
    if (!slot.ok()) return std::vector<uint8_t>();
    const uint8_t* p = (*store)->region().base() + *slot + off;
    return std::vector<uint8_t>(p, p + 4096);
  };
  for (bool pmem : {true, false}) {
    SCOPED_TRACE(pmem ? "pmem" : "file");
    FaultyBrick brick(pmem, /*slow=*/false, /*track_durable=*/true);
    brick.start();
    auto c = brick.connect();
    ASSERT_TRUE(c);
    proto::MapReply a = write_block(*c, 0, 21);
    ASSERT_EQ(sync_read(*c, a), 0);
    EXPECT_EQ(bytes_at(brick.region().durable_image(), 0, 0), pattern(4096, 21)) << "lost: acknowledged by a sync-read";
    write_block(*c, kBlock, 22);
    ASSERT_TRUE(c->persist({}).ok());
    EXPECT_EQ(bytes_at(brick.region().durable_image(), kBlock, 0), pattern(4096, 22))
        << "lost: acknowledged by a PERSIST";
    const auto late = pattern(4096, 23);
    ASSERT_TRUE(c->write(a.rkey, a.remote_addr + 8192, late).ok());  // answered: in the brick's memory
    EXPECT_NE(bytes_at(brick.region().durable_image(), 0, 8192), late) << "a write no sync point covered is in the image";
    brick.stop();
  }
}

// persistence.md, "Failed persistence": the persistence step comes before the
// READ's own checks, so a sync-read through a handle that died since (UNMAP,
// FREE, a reconnect) still reports the failed fdatasync.
TEST(ServerPersistence, SyncReadThroughADeadHandleReportsTheFailedFdatasync) {
  FaultyBrick brick;
  brick.start();
  auto c = brick.connect();
  proto::MapReply m = write_block(*c, 0, 1);
  ASSERT_TRUE(c->unmap(0).ok());
  brick.region().fail(Fault::kSync, EIO);
  EXPECT_EQ(sync_read(*c, m), EIO);
}

// "Failed persistence": once an fdatasync failed, every later sync point
// answers EIO until the brick restarts, whatever later fdatasyncs report.
TEST(ServerPersistence, AFailedFdatasyncFailsEveryLaterSyncPoint) {
  FaultyBrick brick;
  brick.start();
  auto c = brick.connect();
  proto::MapReply m = write_block(*c, 0, 1);
  brick.region().fail(Fault::kSync, EIO);
  EXPECT_EQ(sync_read(*c, m), EIO);
  brick.region().fail(Fault::kSync, 0);  // the disk "works" again
  auto more = pattern(4096, 2);
  ASSERT_TRUE(c->write(m.rkey, m.remote_addr + 4096, more).ok());
  EXPECT_EQ(sync_read(*c, m), EIO) << "a later fdatasync must not cover the lost writes";
  EXPECT_EQ(errnum_of(c->persist({})), EIO);
  // A new connection (a gateway that reconnected) gets no different answer.
  auto d = brick.connect();
  proto::MapReply m2 = write_block(*d, kBlock, 3);
  EXPECT_EQ(sync_read(*d, m2), EIO);
  EXPECT_EQ(errnum_of(d->persist({})), EIO);
  EXPECT_TRUE(d->stat().ok()) << "the brick keeps serving everything but sync points";
}

// "Failed persistence" on pmem: a failed persist (cache flush; msync on a
// file mapped as such) fails every later PERSIST. Over TCP a PERSIST only
// drains (the brick wrote the bytes itself), so the failure here is the one
// of an ALLOC's map entry; an RDMA brick's PERSIST fails the same way on a
// failed flush of a range.
TEST(ServerPersistence, AFailedPersistOfPmemFailsEveryLaterPersist) {
  FaultyBrick brick(/*pmem=*/true);
  brick.start();
  auto c = brick.connect();
  proto::MapReply m = write_block(*c, 0, 1);
  proto::PersistRange range{m.rkey, m.remote_addr, 4096};
  ASSERT_TRUE(c->persist({&range, 1}).ok());
  brick.region().fail(Fault::kStoreWord, EIO);
  EXPECT_EQ(errnum_of(c->alloc(kBlock)), EIO);
  brick.region().fail(Fault::kStoreWord, 0);
  EXPECT_EQ(errnum_of(c->persist({&range, 1})), EIO);
  EXPECT_EQ(errnum_of(c->persist({})), EIO);
  EXPECT_EQ(sync_read(*c, m), EIO);
}

// "Failed persistence": a zeroing (ALLOC, FREE) whose fdatasync failed has
// consumed the kernel's report of lost WRITE data too.
TEST(ServerPersistence, AFailedZeroingFailsLaterSyncPoints) {
  FaultyBrick brick;
  brick.start();
  auto c = brick.connect();
  proto::MapReply m = write_block(*c, 0, 1);
  brick.region().fail(Fault::kZero, EIO);
  EXPECT_EQ(errnum_of(c->alloc(kBlock)), EIO);
  brick.region().fail(Fault::kZero, 0);
  EXPECT_EQ(sync_read(*c, m), EIO);
}

// "Sync points": a connection that closes while its sync-read waits for the
// fdatasync covering its WRITEs has closed before they were durable: another
// connection's sync point covers them too (here a connection that wrote
// nothing, through the handle the writer used, as a gateway's next data
// connection would), and is not answered before that fdatasync completes.
TEST(ServerPersistence, AConnectionClosedWhileItsSyncPointWaitsLeavesItsWritesToTheNextOne) {
  FaultyBrick brick;
  brick.start();
  auto control = brick.connect();  // holds the mapping, as a gateway's control connection does
  ASSERT_TRUE(control->alloc(0).ok());
  auto m = control->map(0, proto::kMapWrite);
  ASSERT_TRUE(m.ok()) << m.error().message();
  brick.region().hold_syncs(true);
  const uint64_t syncs = brick.region().syncs_started();
  {
    auto writer = brick.connect();
    auto data = pattern(4096, 3);
    ASSERT_TRUE(writer->write(m->rkey, m->remote_addr, data).ok());
    // Its sync-read, sent and not waited for: the brick starts an fdatasync
    // and holds the READ until it completes.
    uint8_t frame[proto::kHeaderSize + proto::kIoRequestSize];
    proto::FrameHeader h;
    h.opcode = proto::Opcode::kRead;
    h.request_id = 1000;
    h.payload_len = proto::kIoRequestSize;
    proto::encode_header(h, frame);
    proto::encode_io_request({m->rkey, m->remote_addr, 1}, frame + proto::kHeaderSize);
    ASSERT_TRUE(writer->send_raw(frame).ok());
    ASSERT_TRUE(brick.wait_syncs_started(syncs + 1));
  }  // closed, its sync point still waiting
  std::this_thread::sleep_for(100ms);  // the brick has read the end of its stream
  auto next = brick.connect();
  auto answered = std::async(std::launch::async, [&] { return sync_read(*next, *m); });
  EXPECT_EQ(answered.wait_for(300ms), std::future_status::timeout)
      << "answered while the closed connection's WRITE was still being persisted";
  brick.region().hold_syncs(false);
  for (uint64_t i = brick.region().syncs_completed(); i < brick.region().syncs_started(); i++) {
    brick.region().release_sync(0);
  }
  EXPECT_EQ(answered.get(), 0);
}

// "Sync points": WRITEs of a connection that closed are covered by the next
// sync point of any connection, and only by an fdatasync that started after
// them and completed: a second sync-read must not be answered while the first
// one's fdatasync is still running.
TEST(ServerPersistence, OrphanedWritesWaitForTheFdatasyncThatCoversThem) {
  FaultyBrick brick;
  brick.start();
  brick.region().hold_syncs(true);
  {
    auto a = brick.connect();
    write_block(*a, 0, 1);
  }  // closed with its WRITE unpersisted
  auto b = brick.connect();
  // A's exclusive mapping is revoked once the brick processed the close.
  Result<proto::MapReply> mb = Error(EBUSY, "");
  for (int i = 0; i < 500 && !mb.ok(); i++) {
    mb = b->map(0, proto::kMapShared);
    if (!mb.ok()) std::this_thread::sleep_for(2ms);
  }
  ASSERT_TRUE(mb.ok()) << mb.error().message();
  auto c = brick.connect();
  auto mc = c->map(0, proto::kMapShared);
  ASSERT_TRUE(mc.ok());

  auto first = std::async(std::launch::async, [&] { return sync_read(*b, *mb); });
  ASSERT_TRUE(brick.wait_syncs_started(1));
  auto second = std::async(std::launch::async, [&] { return sync_read(*c, *mc); });
  EXPECT_EQ(second.wait_for(300ms), std::future_status::timeout)
      << "answered while the orphaned WRITE was still being persisted";
  EXPECT_EQ(first.wait_for(0ms), std::future_status::timeout);
  brick.region().release_sync(0);
  EXPECT_EQ(first.get(), 0);
  EXPECT_EQ(second.get(), 0);
  EXPECT_EQ(brick.region().syncs_started(), 1u) << "one fdatasync covers both sync points";
}

// "Sync points": a WRITE made while an fdatasync runs is not covered by it.
TEST(ServerPersistence, ASyncPointDoesNotRideAnFdatasyncThatStartedBeforeItsWrites) {
  FaultyBrick brick;
  brick.start();
  auto x = brick.connect();
  proto::MapReply mx = write_block(*x, 0, 1);
  auto b = brick.connect();
  ASSERT_TRUE(b->alloc(kBlock).ok());
  auto mb = b->map(kBlock, proto::kMapWrite);
  ASSERT_TRUE(mb.ok());
  brick.region().hold_syncs(true);
  auto first = std::async(std::launch::async, [&] { return sync_read(*x, mx); });
  ASSERT_TRUE(brick.wait_syncs_started(1));
  auto data = pattern(4096, 9);
  ASSERT_TRUE(b->write(mb->rkey, mb->remote_addr, data).ok());  // while sync 1 runs
  auto second = std::async(std::launch::async, [&] { return sync_read(*b, *mb); });
  ASSERT_TRUE(brick.wait_syncs_started(2));
  brick.region().release_sync(0);
  EXPECT_EQ(first.get(), 0);
  EXPECT_EQ(second.wait_for(200ms), std::future_status::timeout)
      << "answered by an fdatasync that started before the WRITE";
  brick.region().release_sync(0);
  EXPECT_EQ(second.get(), 0);
}

// A PERSIST over TCP on pmem: the brick wrote every byte itself with
// non-temporal stores, so a drain makes them durable; it does not walk the
// cache lines of every writable mapping on the brick, which a PERSIST naming
// no range (the gateway's over TCP) would otherwise cost while every
// connection waits.
TEST(ServerPersistence, APersistOverTcpOnPmemDrainsInsteadOfFlushingEveryMapping) {
  FaultyBrick brick(/*pmem=*/true);
  brick.start();
  auto c = brick.connect();
  proto::MapReply first{};
  for (uint64_t i = 0; i < 4; i++) {
    proto::MapReply m = write_block(*c, i * kBlock, static_cast<uint8_t>(i));
    if (i == 0) first = m;
  }
  const size_t before = brick.region().persisted_ranges().size();
  EXPECT_TRUE(c->persist({}).ok());
  EXPECT_EQ(brick.region().persisted_ranges().size(), before) << "cache lines of the mappings were flushed";
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(c->read(first.rkey, first.remote_addr, back).ok());
  EXPECT_EQ(back, pattern(4096, 0));
}

// "Start": a brick persists its whole store before serving, pmem too.
TEST(ServerPersistence, APmemStoreIsPersistedWholeBeforeServing) {
  FaultyBrick brick(/*pmem=*/true);
  brick.start();
  bool whole = false;
  for (const auto& [off, len] : brick.region().persisted_ranges()) {
    if (off == 0 && len == brick.region().size()) whole = true;
  }
  EXPECT_TRUE(whole);
}

// The same for a slow tier, whose map holds the entries of the blocks beyond
// the fast tier's: a word a killed brick stored there and had not persisted
// yet must not be served as if it were durable.
TEST(ServerPersistence, ASlowTierIsPersistedWholeBeforeServing) {
  FaultyBrick brick(/*pmem=*/true, /*slow=*/true);
  brick.start();
  bool whole = false;
  for (const auto& [off, len] : brick.slow_region().persisted_ranges()) {
    if (off == 0 && len == brick.slow_region().size()) whole = true;
  }
  EXPECT_TRUE(whole);
}

// A listening socket on 127.0.0.1 with a kernel-chosen port.
UniqueFd listen_on_any_port(uint16_t* port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  EXPECT_EQ(::listen(fd.get(), 1), 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len);
  *port = ntohs(sa.sin_port);
  return fd;
}

// Issue 11 breach 10: a brick restarted right after kill -9 finds its port
// still held while the kernel tears the old process's io_uring down.
TEST(ServerListen, BindRetriesWhileThePortIsStillHeld) {
  FaultyBrick brick;
  uint16_t port = 0;
  UniqueFd holder = listen_on_any_port(&port);
  std::thread release([&] {
    std::this_thread::sleep_for(300ms);
    holder.reset();
  });
  ServerOptions so;
  so.listen = Endpoint{"127.0.0.1", port};
  auto region = std::make_unique<FaultInjectionRegion>(make_memory_region(16 * kMiB), false);
  auto store = Store::Open(std::move(region), {});
  ASSERT_TRUE(store.ok());
  auto server = Server::Create(**store, so);
  release.join();
  ASSERT_TRUE(server.ok()) << server.error().message();
  EXPECT_EQ((*server)->port(), port);
}

TEST(ServerListen, BindGivesUpWithAClearError) {
  uint16_t port = 0;
  UniqueFd holder = listen_on_any_port(&port);
  ServerOptions so;
  so.listen = Endpoint{"127.0.0.1", port};
  so.bind_retry_ms = 300;
  auto store = Store::Open(make_memory_region(16 * kMiB), {});
  ASSERT_TRUE(store.ok());
  auto start = std::chrono::steady_clock::now();
  auto server = Server::Create(**store, so);
  ASSERT_FALSE(server.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(server.error().errnum(), EADDRINUSE);
  EXPECT_NE(server.error().message().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << server.error().message();
  EXPECT_NE(server.error().message().find("still in use after 300 ms"), std::string::npos)
      << server.error().message();
}

// The bind both listeners share (TCP and RDMA CM): a port still in use is
// tried again until it is free; any other error is not.
TEST(ServerListen, BindRetriesOnlyAnAddressInUse) {
  int calls = 0;
  Status st = bind_with_retry("listen rdma 10.0.0.1:7000", "rdma_bind_addr", 5000, [&] {
    if (++calls < 4) {
      errno = EADDRINUSE;
      return -1;
    }
    return 0;
  });
  EXPECT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(calls, 4);

  calls = 0;
  st = bind_with_retry("listen rdma 10.0.0.1:7000", "rdma_bind_addr", 5000, [&] {
    calls++;
    errno = EADDRNOTAVAIL;
    return -1;
  });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(calls, 1) << "only EADDRINUSE is retried";
  EXPECT_EQ(st.error().errnum(), EADDRNOTAVAIL);
  EXPECT_NE(st.error().message().find("listen rdma 10.0.0.1:7000: rdma_bind_addr: "), std::string::npos)
      << st.error().message();

  auto start = std::chrono::steady_clock::now();
  st = bind_with_retry("listen rdma 10.0.0.1:7000", "rdma_bind_addr", 200, [] {
    errno = EADDRINUSE;
    return -1;
  });
  ASSERT_FALSE(st.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 200ms);
  EXPECT_EQ(st.error().errnum(), EADDRINUSE);
  EXPECT_NE(st.error().message().find("rdma_bind_addr: address still in use after 200 ms"), std::string::npos)
      << st.error().message();
}

// A unix socket in a fresh directory of its own.
struct UnixSocketDir {
  UnixSocketDir() {
    char tmpl[] = "/tmp/pbrick-unix-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }
  ~UnixSocketDir() {
    ::unlink(path().c_str());
    ::rmdir(dir.c_str());
  }
  std::string path() const { return dir + "/brick.sock"; }
  Endpoint endpoint() const {
    auto e = parse_endpoint("unix:" + path(), "test");
    EXPECT_TRUE(e.ok());
    return e.ok() ? *e : Endpoint{};
  }
  // A brick's options with this socket as its address.
  ServerOptions server_options() const {
    ServerOptions so;
    so.listen = endpoint();
    return so;
  }
  std::string dir;
};

// A brick on a unix socket serves the gateway's engine (TcpChannel) as it
// does over TCP: data round-trips, a FLUSH completes; the socket is owner-only
// and goes with the brick.
TEST(ServerListen, AUnixSocketServesTheGatewayOwnerOnly) {
  UnixSocketDir d;
  {
    FaultyBrick brick;
    brick.start(d.endpoint());
    struct stat st{};
    ASSERT_EQ(::lstat(d.path().c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    {
      // The client's end holds a 2 MiB frame at once (size_unix_send_buffer):
      // 4 MiB, or as much as net.core.wmem_max lets a process without
      // CAP_NET_ADMIN have (the kernel reports twice what was set).
      auto c = BrickClient::Connect(brick.options());
      ASSERT_TRUE(c.ok()) << c.error().message();
      UniqueFd fd = std::move(**c).take_fd();
      int sndbuf = 0;
      socklen_t len = sizeof sndbuf;
      ASSERT_EQ(::getsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &len), 0);
      long wmem_max = 4 << 20;
      if (FILE* f = std::fopen("/proc/sys/net/core/wmem_max", "r")) {
        if (std::fscanf(f, "%ld", &wmem_max) != 1) wmem_max = 4 << 20;
        std::fclose(f);
      }
      EXPECT_GE(sndbuf, ::geteuid() == 0 ? 4 << 20 : std::min(4L << 20, wmem_max));
    }
    auto engine = start_engine(brick);
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    Engine& e = **engine;
    auto data = pattern(64 * 1024, 9);
    ASSERT_TRUE(e.write(data.data(), data.size(), kBlock + 4096, false).ok());
    ASSERT_TRUE(e.flush().ok());
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE(e.read(back.data(), back.size(), kBlock + 4096).ok());
    EXPECT_EQ(back, data);
    engine->reset();
    brick.stop();
  }
  struct stat st{};
  EXPECT_NE(::lstat(d.path().c_str(), &st), 0) << "the socket outlived its brick";
  EXPECT_EQ(errno, ENOENT);
}

// RDMA has no unix sockets: a brick refuses to listen on one over RDMA, and a
// client refuses to connect to one, before either touches the RDMA CM.
TEST(ServerListen, AUnixSocketIsForTheTcpTransportOnly) {
  UnixSocketDir d;
  auto store = Store::Open(make_memory_region(16 * kMiB), {});
  ASSERT_TRUE(store.ok());
  ServerOptions so = d.server_options();
  so.transport = Transport::kRdma;
  auto server = Server::Create(**store, so);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().errnum(), EINVAL);
  EXPECT_EQ(server.error().context(), "listen rdma unix:" + d.path() + ": " + std::string(kUnixIsForTcp));
  struct stat st{};
  EXPECT_NE(::lstat(d.path().c_str(), &st), 0) << "an RDMA brick created the socket";

  ClientOptions co;
  co.endpoint = d.endpoint();
  co.transport = Transport::kRdma;
  auto client = BrickClient::Connect(co);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.error().errnum(), EINVAL);
  EXPECT_EQ(client.error().context(), "rdma connect unix:" + d.path() + ": " + std::string(kUnixIsForTcp));
}

// A socket a killed brick left (nobody accepts on it) is replaced; a live
// brick's socket and a path that is not a socket are not.
TEST(ServerListen, AUnixSocketReplacesOnlyADeadBricksSocket) {
  UnixSocketDir d;
  auto store = Store::Open(make_memory_region(16 * kMiB), {});
  ASSERT_TRUE(store.ok());
  ServerOptions so = d.server_options();
  {
    // Bound and closed without unlinking: what kill -9 leaves.
    UniqueFd dead(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sun = unix_address(so.listen);
    ASSERT_EQ(::bind(dead.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof sun), 0);
  }
  auto first = Server::Create(**store, so);
  ASSERT_TRUE(first.ok()) << first.error().message();

  auto store2 = Store::Open(make_memory_region(16 * kMiB), {});
  ASSERT_TRUE(store2.ok());
  auto second = Server::Create(**store2, so);
  ASSERT_FALSE(second.ok()) << "a second brick took over a live brick's socket";
  EXPECT_EQ(second.error().errnum(), EADDRINUSE);
  EXPECT_NE(second.error().message().find("listen unix:" + d.path() + ": another process serves this socket"),
            std::string::npos)
      << second.error().message();
  struct stat st{};
  EXPECT_EQ(::lstat(d.path().c_str(), &st), 0) << "the live brick's socket was removed";
  first->reset();

  {
    UniqueFd file(::open(d.path().c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    ASSERT_TRUE(file.valid());
  }
  auto third = Server::Create(**store2, so);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().errnum(), EEXIST);
  EXPECT_NE(third.error().message().find("the path exists and is not a socket"), std::string::npos)
      << third.error().message();
  EXPECT_EQ(::lstat(d.path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "a file that is not a socket was replaced";
}

// The gateway's side of "Failed persistence": a FLUSH whose sync-read goes
// through a handle that a discard killed reports the failed fdatasync.
TEST(GatewayOverFaultyBrick, FlushAfterADiscardReportsTheFailedFdatasync) {
  FaultyBrick brick;
  brick.start();
  auto engine = start_engine(brick);
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  Engine& e = **engine;
  auto data = pattern(4096, 5);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  ASSERT_TRUE(e.flush().ok());
  ASSERT_TRUE(e.write(data.data(), data.size(), kBlock, false).ok());
  ASSERT_TRUE(e.discard(kBlock, kBlock, false).ok());  // frees the block the last WRITE went to
  brick.region().fail(Fault::kSync, EIO);
  Status st = e.flush();
  EXPECT_EQ(errnum_of(st), EIO) << (st.ok() ? "flush succeeded" : st.error().message());
  engine->reset();
}

// docs/protocol.md 7.9: a connection given up with a WRITE the brick still
// holds (behind a sync point whose fdatasync is slow) must not have it land
// after a newer write of the same range - here one sent by another queue,
// whose connection no FENCE of the first queue's channel would cut. The
// request of the held WRITE fails at its deadline, when its connection is
// torn down; the newer write then goes out under a new writer id, whose
// FENCE cuts the old connection off with what it holds. (When the teardown
// comes before that deadline, the request is sent again on a new connection
// of its own queue and succeeds; the attempt is made again until one
// reaches the first case.)
TEST(GatewayOverFaultyBrick, AWriteHeldOnAConnectionGivenUpNeverLandsAfterANewerOne) {
  constexpr uint64_t kRange = 3 * kBlock + 8192;  // the range written three times
  bool reached = false;
  for (int attempt = 0; attempt < 6 && !reached; attempt++) {
    FaultyBrick brick;
    brick.start();
    VolumeOptions vo;
    vo.brick = brick.options();
    vo.size = 16 * kMiB;
    vo.io_timeout_ms = 1000;
    auto volume = Volume::Open(vo);
    ASSERT_TRUE(volume.ok()) << volume.error().message();
    EngineOptions eo;
    eo.queues = 2;
    eo.depth = 8;
    auto engine = Engine::Start(std::move(*volume), eo);
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    Engine& e = **engine;
    auto old_data = pattern(4096, 1), zombie = pattern(4096, 2), newer = pattern(4096, 3);
    ASSERT_TRUE(e.write(old_data.data(), 4096, kRange, false).ok());
    ASSERT_TRUE(e.write(old_data.data(), 4096, kBlock, false).ok());
    ASSERT_TRUE(e.flush().ok());

    // Threads take the engine's loops in turn, at their first request: the
    // first and the third share one, the second has the other.
    auto on_new_thread = [&](std::function<void()> fn) {
      std::promise<void> took;
      auto first = took.get_future();
      std::thread t([&e, &took, fn = std::move(fn)]() mutable {
        std::vector<uint8_t> b(4096);
        (void)e.read(b.data(), b.size(), 0);
        took.set_value();
        fn();
      });
      first.wait();
      return t;
    };
    std::promise<void> go_sync, go_held, go_newer;
    auto sync_go = go_sync.get_future().share(), held_go = go_held.get_future().share(),
         newer_go = go_newer.get_future().share();
    Status synced, held, written;
    std::thread syncer = on_new_thread([&] {
      sync_go.wait();
      synced = e.write(old_data.data(), 4096, kBlock, /*fua=*/true);  // its sync is held
    });
    std::thread newer_writer = on_new_thread([&] {
      newer_go.wait();
      written = e.write(newer.data(), 4096, kRange, false);
    });
    std::thread held_writer = on_new_thread([&] {
      held_go.wait();
      held = e.write(zombie.data(), 4096, kRange, false);  // behind the held sync
    });
    const uint64_t syncs = brick.region().syncs_started();
    brick.region().hold_syncs(true);
    go_sync.set_value();
    ASSERT_TRUE(brick.wait_syncs_started(syncs + 1));
    go_held.set_value();
    syncer.join();
    held_writer.join();
    EXPECT_FALSE(synced.ok());
    go_newer.set_value();
    newer_writer.join();
    EXPECT_TRUE(written.ok()) << written.error().message();
    // The brick's fdatasync completes: what it held of the old connection
    // would be executed now, unless a FENCE cut it off.
    brick.region().hold_syncs(false);
    for (uint64_t i = brick.region().syncs_completed(); i < brick.region().syncs_started(); i++) {
      brick.region().release_sync(0);
    }
    std::this_thread::sleep_for(200ms);
    std::vector<uint8_t> back(4096);
    ASSERT_TRUE(e.read(back.data(), back.size(), kRange).ok());
    if (!held.ok()) {
      reached = true;
      EXPECT_EQ(back, newer) << "the held write landed after the newer one (attempt " << attempt << ")";
    } else {
      EXPECT_EQ(back, newer) << "a write that succeeded first, and then the newer one";
    }
    engine->reset();
  }
  EXPECT_TRUE(reached) << "no attempt had the held write's request fail at its deadline";
}

// A connection whose output was dropped (an eviction, a FENCE) while a send
// of it was in flight: that send's completion must not leave out_start past
// out_end, or the next flush would send (size_t)(out_end - out_start) bytes
// from the buffer on - memory beyond it - to the peer.
TEST(ServerConnection, ASendCompletingAfterItsOutputWasDroppedSendsNothingMore) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd peer(sv[1]);
  Connection c(0, 1, std::make_unique<TcpTransport>(UniqueFd(sv[0])), "test");
  c.out_end = 152;  // a HELLO reply on its way
  c.send_inflight = true;
  c.drop_output();
  c.transport->on_ring_completion(c, OpKind::kSend, 152);
  EXPECT_FALSE(c.send_inflight);
  EXPECT_EQ(c.out_start, 0u);
  EXPECT_EQ(c.out_end, 0u);
}

// A peer that stops reading its replies (the brick's output stuck behind a
// zero window, which keepalive never catches) loses its connection after
// the stalled-peer timeout, and with it its exclusive mapping - a volume's
// lock is exactly that - instead of holding it for ever.
TEST(ServerConnection, APeerThatStopsReadingLosesItsConnectionAndItsMappings) {
  FaultyBrick brick;
  brick.start(Endpoint{"127.0.0.1", 0}, 1000);
  auto stuck = brick.connect();
  ASSERT_NE(stuck, nullptr);
  ASSERT_TRUE(stuck->alloc(0).ok());
  auto m = stuck->map(0, proto::kMapWrite);  // exclusive
  ASSERT_TRUE(m.ok()) << m.error().message();
  // READs of 2 MiB, never read back: more than both ends' socket buffers
  // and the brick's own output buffer hold.
  std::vector<uint8_t> frames;
  for (uint32_t i = 0; i < 24; i++) {
    proto::FrameHeader h;
    h.opcode = proto::Opcode::kRead;
    h.request_id = 1000 + i;
    h.payload_len = proto::kIoRequestSize;
    uint8_t frame[proto::kHeaderSize + proto::kIoRequestSize];
    proto::encode_header(h, frame);
    proto::encode_io_request({m->rkey, m->remote_addr, static_cast<uint32_t>(kMiB * 2)}, frame + proto::kHeaderSize);
    frames.insert(frames.end(), frame, frame + sizeof frame);
  }
  ASSERT_TRUE(stuck->send_raw(frames).ok());
  auto other = brick.connect();
  ASSERT_NE(other, nullptr);
  auto refused = other->map(0, proto::kMapWrite);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errnum(), EBUSY);
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  Result<proto::MapReply> taken = refused;
  while (!taken.ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(200ms);
    taken = other->map(0, proto::kMapWrite);
  }
  EXPECT_TRUE(taken.ok()) << "the stalled peer still holds its exclusive mapping: " << taken.error().message();
}

// A mirror over two bricks, one queue (the volume's open error, if any, is
// the result's).
Result<std::unique_ptr<Engine>> start_mirror(FaultyBrick& b0, FaultyBrick& b1) {
  VolumeOptions vo;
  vo.layout = Layout::kMirror;
  vo.copies = 2;
  vo.bricks = {b0.options(), b1.options()};
  vo.size = 16 * kMiB;
  vo.leg_timeout_ms = 1000;
  vo.io_timeout_ms = 5000;
  auto volume = Volume::Open(vo);
  if (!volume.ok()) return volume.error().wrap("opening the volume");
  EngineOptions eo;
  eo.queues = 1;
  eo.depth = 8;
  return Engine::Start(std::move(*volume), eo);
}

// Two faulty bricks started on loopback and a 2-copy mirror over them
// (start_mirror); `engine` is null, with the reason in `error`, when it
// could not start. The engine goes before the bricks.
struct FaultyMirror {
  FaultyBrick b0, b1;
  std::unique_ptr<Engine> engine;
  std::string error;
  FaultyMirror() {
    b0.start();
    b1.start();
    auto started = start_mirror(b0, b1);
    if (started) {
      engine = std::move(*started);
    } else {
      error = started.error().message();
    }
  }
};

// The volume label as brick `b` holds it (base 0), read from the brick.
Result<VolumeLabel> label_held_by(const FaultyBrick& b) {
  auto c = b.connect();
  if (!c) return Error(ECONNREFUSED, "connect");
  auto vaddr = label_vaddr(0);
  if (!vaddr) return vaddr.error();
  auto m = c->map(*vaddr, proto::kMapShared);
  if (!m) return m.error();
  std::vector<uint8_t> bytes(kDirtyOffset);
  PBRICK_TRY(c->read(m->rkey, m->remote_addr, bytes));
  auto r = read_label_slots(bytes);
  if (!r) return r.error();
  if (!r->label) return Error(ENOENT, "no label");
  return *r->label;
}

// Mirror, "Failed persistence": a brick whose fdatasync failed may have lost
// every write it took since its last good one, whichever blocks they were.
// Its copy is given up whole (every block dirty in the other's bitmap, then
// stale in the labels) and the FLUSH completes on the other copy; with no
// other in-sync copy left, the FLUSH fails as on a single brick.
TEST(GatewayOverFaultyBrick, AMirrorGivesUpTheCopyWhoseFdatasyncFailedAndTheFlushSucceeds) {
  FaultyMirror m;
  ASSERT_TRUE(m.engine) << m.error;
  FaultyBrick &b0 = m.b0, &b1 = m.b1;
  Engine& e = *m.engine;
  Volume& v = e.volume();
  auto first = pattern(4096, 3), second = pattern(4096, 9);
  ASSERT_TRUE(e.write(first.data(), first.size(), 0, false).ok());
  ASSERT_TRUE(e.flush().ok());
  ASSERT_EQ(v.dirty_count(), 0u);

  b1.region().fail(Fault::kSync, EIO);
  ASSERT_TRUE(e.write(second.data(), second.size(), 3 * kBlock, false).ok());
  Status st = e.flush();
  EXPECT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.mirror()->state(0), CopyState::kInSync);
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "every block has a copy on brick 1";
  auto label = label_held_by(b0);  // read back from the brick, not the gateway's memory
  ASSERT_TRUE(label.ok()) << label.error().message();
  EXPECT_NE(label->bricks[1].stale_since, 0u) << "stale in the labels, not only in memory";
  EXPECT_EQ(label->bricks[0].stale_since, 0u);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(e.read(back.data(), back.size(), 3 * kBlock).ok());
  EXPECT_EQ(back, second);

  // Brick 0 now holds the only in-sync copies: its failure fails the FLUSH.
  b0.region().fail(Fault::kSync, EIO);
  ASSERT_TRUE(e.write(first.data(), first.size(), 5 * kBlock, false).ok());
  EXPECT_EQ(errnum_of(e.flush()), EIO);
  EXPECT_EQ(v.mirror()->state(0), CopyState::kInSync) << "the last copy is never given up";
  m.engine.reset();
}

// Mirror over TCP: a READ is a sync point, so a brick whose fdatasync failed
// answers reads with EIO. That copy is given up whole, as a FLUSH's failed
// sync gives it up, and reads go on from the other copy; the last copy is
// not given up, and its read fails.
TEST(GatewayOverFaultyBrick, AMirrorReadThatMeetsAFailedFdatasyncGivesTheCopyUpAndReadsTheOther) {
  FaultyMirror m;
  ASSERT_TRUE(m.engine) << m.error;
  FaultyBrick &b0 = m.b0, &b1 = m.b1;
  Engine& e = *m.engine;
  Volume& v = e.volume();
  auto first = pattern(4096, 4), second = pattern(4096, 8);
  ASSERT_TRUE(e.write(first.data(), first.size(), 3 * kBlock, false).ok());
  ASSERT_TRUE(e.flush().ok());

  b1.region().fail(Fault::kSync, EIO);
  ASSERT_TRUE(e.write(second.data(), second.size(), 3 * kBlock, false).ok());  // not synced on brick 1
  // Reads take turns over the copies: four reach both.
  for (int i = 0; i < 4; i++) {
    std::vector<uint8_t> back(4096);
    Status st = e.read(back.data(), back.size(), 3 * kBlock);
    ASSERT_TRUE(st.ok()) << "read " << i << ": " << st.error().message();
    EXPECT_EQ(back, second) << "read " << i;
  }
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "every block has a copy on brick 1";
  auto label = label_held_by(b0);
  ASSERT_TRUE(label.ok()) << label.error().message();
  EXPECT_NE(label->bricks[1].stale_since, 0u) << "stale in the labels, not only in memory";

  b0.region().fail(Fault::kSync, EIO);
  ASSERT_TRUE(e.write(first.data(), first.size(), 3 * kBlock, false).ok());
  std::vector<uint8_t> back(4096);
  EXPECT_EQ(errnum_of(e.read(back.data(), back.size(), 3 * kBlock)), EIO);
  EXPECT_EQ(v.mirror()->state(0), CopyState::kInSync) << "the last copy is never given up";
  m.engine.reset();
}

// A resync's copies are made durable on the brick they go to; one that
// answers EIO there could not make them durable, nor maybe writes it took
// before it went stale that no dirty bit names: its copy is given up whole
// (every block dirty), not left stale with the bits it had, which a later
// resync would copy and call the copy in sync.
TEST(GatewayOverFaultyBrick, AResyncWhoseCopyCannotBeMadeDurableGivesTheCopyUpWhole) {
  FaultyMirror m;
  ASSERT_TRUE(m.engine) << m.error;
  FaultyBrick& b1 = m.b1;
  Engine& e = *m.engine;
  Volume& v = e.volume();
  auto data = pattern(4096, 7);
  ASSERT_TRUE(e.write(data.data(), data.size(), 3 * kBlock, false).ok());
  ASSERT_TRUE(e.flush().ok());
  ASSERT_TRUE(v.mark_stale(1, 3).ok());
  ASSERT_EQ(v.dirty_count(), 1u);

  // The brick's syncs succeed until the resync begins copying (reaching
  // it again takes some), then fail.
  b1.region().hold_syncs(true);
  e.resync()->poke();
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (v.mirror()->state(1) != CopyState::kResyncing && std::chrono::steady_clock::now() < deadline) {
    if (b1.region().syncs_started() > b1.region().syncs_completed()) b1.region().release_sync(0);
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(v.mirror()->state(1), CopyState::kResyncing);
  b1.region().fail(Fault::kSync, EIO);
  b1.region().hold_syncs(false);
  for (uint64_t i = b1.region().syncs_completed(); i < b1.region().syncs_started(); i++) b1.region().release_sync(EIO);
  deadline = std::chrono::steady_clock::now() + 10s;
  while (v.dirty_count() != v.block_count() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "every block has a copy on brick 1";
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(e.read(back.data(), back.size(), 3 * kBlock).ok());
  EXPECT_EQ(back, data);
  m.engine.reset();
}

// After an unclean detach the repair copies each written block from its
// source. A source whose store failed to persist answers the repair's READ
// (a sync point over TCP) with EIO for as long as it runs: it is given up
// whole, as a read of it gives it up, and the repair ends on the other copy
// (it would otherwise hold the block and try the same source for ever, as
// the brick still answers probes). Giving a copy up whole again writes no
// bitmap: its bits are durable already.
TEST(GatewayOverFaultyBrick, ARepairWhoseSourceAnswersEioGivesItUpAndEnds) {
  FaultyBrick b0, b1;
  b0.start();
  b1.start();
  VolumeOptions vo;
  vo.layout = Layout::kMirror;
  vo.copies = 2;
  vo.bricks = {b0.options(), b1.options()};
  vo.size = 16 * kMiB;
  vo.leg_timeout_ms = 1000;
  vo.io_timeout_ms = 3000;
  auto data = pattern(2 * kBlock, 5);
  {
    auto volume = Volume::Open(vo);
    ASSERT_TRUE(volume.ok()) << volume.error().message();
    auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 8});
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    ASSERT_TRUE((*engine)->write(data.data(), data.size(), kBlock, false).ok());  // blocks 1 and 2
    ASSERT_TRUE((*engine)->flush().ok());
    (*engine)->volume().leave_uncleanly_for_testing();
  }
  vo.resync_mib_per_s = 1;  // two seconds a block
  auto volume = Volume::Open(vo);
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 8});
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  Volume& v = (*engine)->volume();
  const Placement& pl = v.placement();
  ASSERT_EQ(pl.brick_of(pl.unit(2, 0)), 0u) << "brick 0 is block 2's source";
  // Block 1 (source brick 1, copied to brick 0) first: its copy would meet
  // brick 0's failure as the target's.
  auto until = std::chrono::steady_clock::now() + 10s;
  while (v.mirror()->unsettled(1) && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  ASSERT_FALSE(v.mirror()->unsettled(1));
  ASSERT_TRUE(v.mirror()->unsettled(2));
  // Brick 0's store fails to persist, seen by a connection of the test's own.
  b0.region().fail(Fault::kSync, EIO);
  {
    auto c = b0.connect();
    ASSERT_TRUE(c);
    const uint64_t elsewhere = 1ull << 30;
    ASSERT_TRUE(c->alloc(elsewhere).ok());
    auto m = c->map(elsewhere, proto::kMapWrite);
    ASSERT_TRUE(m.ok()) << m.error().message();
    auto bytes = pattern(4096, 1);
    ASSERT_TRUE(c->write(m->rkey, m->remote_addr, bytes).ok());
    EXPECT_EQ(errnum_of(c->read(m->rkey, m->remote_addr, bytes)), EIO);
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (v.mirror()->unsettled_count() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(v.mirror()->unsettled_count(), 0u) << "the repair did not end";
  EXPECT_EQ(v.mirror()->state(0), CopyState::kStale);
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "every block has a copy on brick 0";
  const uint64_t syncs = b1.region().syncs_started();
  auto again = v.sync_failed(0, EIO);
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_TRUE(*again);
  EXPECT_EQ(b1.region().syncs_started(), syncs) << "the bitmap was written again";
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE((*engine)->read(back.data(), back.size(), kBlock).ok());
  EXPECT_EQ(back, data);
  engine->reset();
}

// A write whose copy on a dead brick is given up completes only once that
// copy's stale mark is durable on the other brick (docs/persistence.md,
// "Mirrors"): with the other brick's syncs held, the write waits; released,
// it completes, and the label read back from that brick calls the copy stale.
TEST(GatewayOverFaultyBrick, AStaleMarkIsDurableBeforeTheWriteThatMissedTheCopyCompletes) {
  FaultyMirror m;
  ASSERT_TRUE(m.engine) << m.error;
  FaultyBrick &b0 = m.b0, &b1 = m.b1;
  Engine& e = *m.engine;
  Volume& v = e.volume();
  auto first = pattern(4096, 5), second = pattern(4096, 6);
  ASSERT_TRUE(e.write(first.data(), first.size(), 0, false).ok());
  ASSERT_TRUE(e.flush().ok());

  b1.stop();
  b0.region().hold_syncs(true);
  const uint64_t before = b0.region().syncs_started();
  std::atomic<bool> done{false};
  Status result;
  std::thread writer([&] {
    result = e.write(second.data(), second.size(), 2 * kBlock, false);
    done = true;
  });
  // The leg timeout (1 s) passes; the gateway records brick 1 stale on brick 0.
  EXPECT_TRUE(b0.wait_syncs_started(before + 1)) << "no sync of the stale mark";
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(done) << "the write completed before its copy's stale mark was durable";
  b0.region().hold_syncs(false);
  for (uint64_t i = b0.region().syncs_completed(); i < b0.region().syncs_started(); i++) b0.region().release_sync(0);
  writer.join();
  EXPECT_TRUE(result.ok()) << result.error().message();
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  auto label = label_held_by(b0);
  ASSERT_TRUE(label.ok()) << label.error().message();
  EXPECT_NE(label->bricks[1].stale_since, 0u);
  m.engine.reset();
}

// The request ids of the frames a TcpChannel queued for sending, in order.
std::vector<proto::FrameHeader> sent_headers(TcpChannel& ch) {
  std::vector<uint8_t> bytes;
  iovec iov[16];
  size_t n = ch.send_iov(iov, 16);
  for (size_t i = 0; i < n; i++) {
    auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
    bytes.insert(bytes.end(), p, p + iov[i].iov_len);
  }
  size_t total = bytes.size();
  ch.on_sent(total);
  std::vector<proto::FrameHeader> out;
  for (size_t off = 0; off + proto::kHeaderSize <= total;) {
    auto h = proto::decode_header({bytes.data() + off, proto::kHeaderSize}, /*expect_reply=*/false);
    EXPECT_TRUE(h.ok());
    if (!h.ok()) break;
    out.push_back(*h);
    off += proto::kHeaderSize + h->payload_len;
  }
  return out;
}

void reply(TcpChannel& ch, const proto::FrameHeader& req, int errnum) {
  proto::FrameHeader h;
  h.opcode = req.opcode;
  h.flags = proto::kFlagReply;
  h.request_id = req.request_id;
  h.status = errnum == 0 ? 0 : proto::wire_status(errnum);
  auto space = ch.recv_space();
  proto::encode_header(h, space.data());
  EXPECT_TRUE(ch.on_received(proto::kHeaderSize).ok());
}

struct RecordingOp : DataChannel::Op {
  int status = -1;
  static void record(Op* op, int status) { static_cast<RecordingOp*>(op)->status = status; }
};

// The gateway's side of "Failed persistence": a sync-read refused with
// EKEYREJECTED is not taken for a completed sync. Without PERSIST to confirm
// it (this channel never said HELLO), the sync fails.
TEST(TcpChannelSync, ARefusedSyncReadIsNotACompletedSync) {
  TcpChannel ch(4);
  uint8_t data[16] = {};
  RecordingOp write;
  write.opcode = proto::Opcode::kWrite;
  write.rkey = 7;
  write.length = sizeof data;
  write.buf = data;
  write.done = RecordingOp::record;
  ch.submit(&write);
  auto sent = sent_headers(ch);
  ASSERT_EQ(sent.size(), 1u);
  reply(ch, sent[0], 0);
  ASSERT_EQ(write.status, 0);

  RecordingOp sync;
  sync.done = RecordingOp::record;
  ch.submit_sync(&sync);
  sent = sent_headers(ch);
  ASSERT_EQ(sent.size(), 1u);
  ASSERT_EQ(sent[0].opcode, proto::Opcode::kRead);
  reply(ch, sent[0], EKEYREJECTED);
  EXPECT_EQ(sync.status, EIO);
}

// A FLUSH after a discard over a working brick: the refused sync-read is
// confirmed by a PERSIST (a second fdatasync) and the FLUSH succeeds.
TEST(GatewayOverFaultyBrick, FlushAfterADiscardIsConfirmedByPersist) {
  FaultyBrick brick;
  brick.start();
  auto engine = start_engine(brick);
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  Engine& e = **engine;
  auto data = pattern(4096, 5);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  ASSERT_TRUE(e.write(data.data(), data.size(), kBlock, false).ok());
  ASSERT_TRUE(e.discard(kBlock, kBlock, false).ok());
  uint64_t before = brick.region().syncs_started();
  ASSERT_TRUE(e.flush().ok());
  EXPECT_EQ(brick.region().syncs_started(), before + 2) << "sync-read, then PERSIST";
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(back, data);
  engine->reset();
}

// ---- FENCE (docs/protocol.md §7.9) --------------------------------------------------

proto::FenceRequest fence_of(uint64_t scope, uint8_t writer, uint64_t channel) {
  proto::FenceRequest f;
  f.scope = scope;
  f.writer.fill(writer);
  f.channel = channel;
  return f;
}

void append_frame(std::vector<uint8_t>& out, proto::Opcode op, uint64_t request_id, std::span<const uint8_t> payload) {
  proto::FrameHeader h;
  h.opcode = op;
  h.request_id = request_id;
  h.payload_len = static_cast<uint32_t>(payload.size());
  size_t at = out.size();
  out.resize(at + proto::kHeaderSize);
  proto::encode_header(h, out.data() + at);
  out.insert(out.end(), payload.begin(), payload.end());
}

void append_write(std::vector<uint8_t>& out, uint64_t request_id, const proto::MapReply& m,
                  std::span<const uint8_t> data) {
  std::vector<uint8_t> p(proto::kIoRequestSize);
  proto::encode_io_request({m.rkey, m.remote_addr, static_cast<uint32_t>(data.size())}, p.data());
  p.insert(p.end(), data.begin(), data.end());
  append_frame(out, proto::Opcode::kWrite, request_id, p);
}

bool recv_exactly(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The request ids of the replies that arrive on `fd` until the brick closes
// it (or its receive timeout passes).
std::vector<uint64_t> replies_until_closed(int fd) {
  std::vector<uint64_t> ids;
  uint8_t hdr[proto::kHeaderSize];
  while (recv_exactly(fd, hdr, sizeof hdr)) {
    auto h = proto::decode_header(hdr, /*expect_reply=*/true);
    if (!h) break;
    std::vector<uint8_t> payload(h->payload_len);
    if (!payload.empty() && !recv_exactly(fd, payload.data(), payload.size())) break;
    ids.push_back(h->request_id);
  }
  return ids;
}

// A gateway that gave up on a connection (its reply was late) sends the
// request again on a new one, then newer data. A WRITE the old connection
// still carried - here held behind its PERSIST's fdatasync, as a slow disk
// holds it - must not land over that newer data: the FENCE at the head of the
// new connection cuts the old one off before it is answered.
TEST(ServerFence, AWriteTheOldConnectionStillCarriedNeverLandsOverNewerData) {
  FaultyBrick brick;
  brick.start();
  ClientOptions o = brick.options();
  o.timeout_ms = 3000;
  o.fence = fence_of(0, 0xA1, 3);
  auto old_conn = BrickClient::Connect(o);
  ASSERT_TRUE(old_conn.ok()) << old_conn.error().message();
  ASSERT_TRUE((*old_conn)->fenced());
  ASSERT_TRUE((*old_conn)->alloc(0).ok());
  auto m = (*old_conn)->map(0, proto::kMapWrite | proto::kMapShared);
  ASSERT_TRUE(m.ok()) << m.error().message();
  UniqueFd fd = std::move(**old_conn).take_fd();

  brick.region().hold_syncs(true);
  std::vector<uint8_t> frames;
  append_write(frames, 1001, *m, pattern(4096, 1));
  uint8_t persist[proto::kPersistRequestFixedSize];
  proto::encode_persist_request({}, persist);
  append_frame(frames, proto::Opcode::kPersist, 1002, persist);
  append_write(frames, 1003, *m, pattern(4096, 2));  // what a late delivery would land
  ASSERT_EQ(::send(fd.get(), frames.data(), frames.size(), MSG_NOSIGNAL), static_cast<ssize_t>(frames.size()));
  uint8_t hdr[proto::kHeaderSize];
  ASSERT_TRUE(recv_exactly(fd.get(), hdr, sizeof hdr));
  auto first = proto::decode_header(hdr, true);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->request_id, 1001u);
  EXPECT_EQ(first->status, 0u);
  ASSERT_TRUE(brick.wait_syncs_started(1)) << "the PERSIST never started its fdatasync";

  auto fresh = BrickClient::Connect(o);
  ASSERT_TRUE(fresh.ok()) << fresh.error().message();
  ASSERT_TRUE((*fresh)->fenced());
  auto mf = (*fresh)->map(0, proto::kMapWrite | proto::kMapShared);
  ASSERT_TRUE(mf.ok()) << mf.error().message();
  auto newer = pattern(4096, 3);
  ASSERT_TRUE((*fresh)->write(mf->rkey, mf->remote_addr, newer).ok());

  // The fdatasync the old connection waited for completes: were it still
  // served, its second WRITE would run now.
  brick.region().hold_syncs(false);
  brick.region().release_sync(0);
  std::vector<uint64_t> late = replies_until_closed(fd.get());
  EXPECT_TRUE(late.empty()) << "the fenced connection was answered " << late.size() << " more time(s), the first "
                            << late.front();

  std::vector<uint8_t> got(4096);
  ASSERT_TRUE((*fresh)->read(mf->rkey, mf->remote_addr, got).ok());
  EXPECT_TRUE(got == newer) << (got == pattern(4096, 2) ? "the old connection's WRITE landed over newer data"
                                                          : "the block holds neither write");
}

// Which connections a FENCE cuts off: in its scope, the same writer's
// connection of the same channel and every connection of another writer;
// never the same writer's other channels, nor anything of another scope, nor
// a connection that sent no FENCE.
TEST(ServerFence, AFenceCutsOffTheSameChannelAndOtherWritersInItsScopeOnly) {
  FaultyBrick brick;
  brick.start();
  auto connect = [&](std::optional<proto::FenceRequest> fence) {
    ClientOptions o = brick.options();
    o.fence = fence;
    auto c = BrickClient::Connect(o);
    EXPECT_TRUE(c.ok()) << c.error().message();
    EXPECT_EQ(c.ok() && (*c)->fenced(), fence.has_value());
    return c.ok() ? std::move(*c) : nullptr;
  };
  auto alive = [](BrickClient& c) { return c.stat().ok(); };
  const uint64_t scope = 4 * kBlock, other_scope = 8 * kBlock;
  auto a = connect(fence_of(scope, 1, 0));
  auto b = connect(fence_of(scope, 1, 1));
  auto c = connect(fence_of(other_scope, 1, 0));
  auto plain = connect(std::nullopt);
  ASSERT_TRUE(a && b && c && plain);

  auto a2 = connect(fence_of(scope, 1, 0));  // writer 1 reconnects channel 0
  ASSERT_TRUE(a2);
  EXPECT_FALSE(alive(*a)) << "channel 0's old connection still served";
  EXPECT_TRUE(alive(*b)) << "the same writer's channel 1 was cut off";
  EXPECT_TRUE(alive(*c)) << "a connection of another scope was cut off";
  EXPECT_TRUE(alive(*a2));

  auto d = connect(fence_of(scope, 2, 7));  // writer 2 takes the scope over
  ASSERT_TRUE(d);
  EXPECT_FALSE(alive(*b)) << "the previous writer's channel 1 still served";
  EXPECT_FALSE(alive(*a2)) << "the previous writer's channel 0 still served";
  EXPECT_TRUE(alive(*c));
  EXPECT_TRUE(alive(*plain)) << "a connection that sent no FENCE was cut off";
  EXPECT_TRUE(alive(*d));
}

// The gateway's side of FENCE: a read-write attachment's data paths fence as
// one writer, each on a channel of its own in the volume's scope, so a
// reconnect of one cuts off only its own earlier connection; a read-only
// attachment, which writes nothing, does not fence at all.
TEST(GatewayFence, AReadWriteAttachmentsChannelsFenceAsOneWriterEachOnItsOwnChannel) {
  FaultyBrick brick;
  brick.start();
  VolumeOptions vo;
  vo.brick = brick.options();
  vo.base = 16 * kBlock;
  vo.size = 4 * kBlock;
  auto volume = Volume::Open(vo);
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  ClientOptions o1 = (*volume)->writer_options(0, (*volume)->new_channel_id());
  ClientOptions o2 = (*volume)->writer_options(0, (*volume)->new_channel_id());
  ASSERT_TRUE(o1.fence && o2.fence);
  EXPECT_EQ(o1.fence->scope, vo.base);
  EXPECT_EQ(o1.fence->writer, o2.fence->writer);
  EXPECT_NE(o1.fence->writer, (std::array<uint8_t, proto::kUuidSize>{})) << "no writer id drawn";
  EXPECT_NE(o1.fence->channel, o2.fence->channel);

  auto first = BrickClient::Connect(o1);
  auto other = BrickClient::Connect(o2);
  ASSERT_TRUE(first.ok() && other.ok());
  auto again = BrickClient::Connect(o1);  // channel 1 reconnects
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_TRUE((*again)->fenced());
  EXPECT_FALSE((*first)->stat().ok()) << "the connection channel 1 gave up is still served";
  EXPECT_TRUE((*other)->stat().ok()) << "another channel of the same attachment was cut off";

  VolumeOptions ro = vo;
  ro.read_only = true;
  auto reader = Volume::Open(ro);
  ASSERT_TRUE(reader.ok()) << reader.error().message();
  EXPECT_FALSE((*reader)->writer_options(0, (*reader)->new_channel_id()).fence) << "a read-only attachment fences";
}

}  // namespace
}  // namespace pbrick
