// The Server's request state machine over a socketpair (Server::adopt): the
// regressions the request-level fuzzer (tests/fuzz/server_fuzz.cc) found.
#include "target/server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/protocol.h"
#include "target/pmem_region.h"
#include "target/store.h"
#include "target/tiering.h"

namespace pbrick {
namespace {

using proto::kHeaderSize;
using proto::Opcode;

struct Reply {
  Opcode opcode;
  uint64_t request_id;
  uint32_t status;
  std::vector<uint8_t> payload;
};

// A brick over `region` serving one socketpair connection on its own thread.
class ServerHarness {
 public:
  explicit ServerHarness(std::unique_ptr<PmemRegion> region)
      : ServerHarness([&] {
          auto store = Store::Open(std::move(region), StoreOpenOptions{});
          EXPECT_TRUE(store.ok()) << store.error().message();
          return store.ok() ? std::move(*store) : nullptr;
        }()) {}
  // A brick over `store`, with `tiering` (owned by the caller, outliving the
  // harness) when the store has a slow tier.
  explicit ServerHarness(std::unique_ptr<Store> store, Tiering* tiering = nullptr) {
    store_ = std::move(store);
    ServerOptions options;
    options.listen = Endpoint{"127.0.0.1", 0};
    options.tiering = tiering;
    auto server = Server::Create(*store_, options);
    EXPECT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(*server);
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    client_.reset(sv[0]);
    timeval tv{10, 0};
    ::setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    EXPECT_TRUE(server_->adopt(UniqueFd(sv[1])).ok());
    loop_ = std::thread([this] { EXPECT_TRUE(server_->run().ok()); });
  }
  ~ServerHarness() {
    if (!server_) return;
    server_->stop();
    loop_.join();
  }

  // Appends one request frame to what send() writes.
  void queue(Opcode op, std::span<const uint8_t> payload, uint64_t request_id) {
    proto::FrameHeader h;
    h.opcode = op;
    h.payload_len = static_cast<uint32_t>(payload.size());
    h.request_id = request_id;
    size_t at = pending_.size();
    pending_.resize(at + kHeaderSize + payload.size());
    proto::encode_header(h, pending_.data() + at);
    if (!payload.empty()) std::memcpy(pending_.data() + at + kHeaderSize, payload.data(), payload.size());
  }
  void send() {
    ASSERT_EQ(::send(client_.get(), pending_.data(), pending_.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(pending_.size()));
    pending_.clear();
  }
  void half_close() { ::shutdown(client_.get(), SHUT_WR); }
  // Stops the brick and hands its store back (for a next harness).
  std::unique_ptr<Store> release_store() {
    server_->stop();
    loop_.join();
    server_.reset();
    return std::move(store_);
  }

  // The next reply, or nullopt when the brick closed (or 10 s passed).
  std::optional<Reply> next() {
    uint8_t hdr[kHeaderSize];
    if (!read_n(hdr, sizeof hdr)) return std::nullopt;
    auto h = proto::decode_header(hdr, true);
    EXPECT_TRUE(h.ok()) << h.error().message();
    if (!h) return std::nullopt;
    Reply r{h->opcode, h->request_id, h->status, std::vector<uint8_t>(h->payload_len)};
    if (!r.payload.empty() && !read_n(r.payload.data(), r.payload.size())) return std::nullopt;
    return r;
  }

  // HELLO, ALLOC + MAP read-write of vaddr 0; returns the handle.
  proto::MapReply hello_and_map() {
    proto::HelloRequest hello;
    uint8_t hp[proto::kHelloRequestSize];
    proto::encode_hello_request(hello, hp);
    queue(Opcode::kHello, hp, 1);
    uint8_t ap[proto::kAddrRequestSize];
    proto::encode_addr_request({0}, ap);
    queue(Opcode::kAlloc, ap, 2);
    uint8_t mp[proto::kMapRequestSize];
    proto::encode_map_request({0, proto::kMapWrite}, mp);
    queue(Opcode::kMap, mp, 3);
    send();
    for (int i = 0; i < 2; i++) {
      auto r = next();
      EXPECT_TRUE(r && r->status == 0) << (r ? "request " + std::to_string(r->request_id) + " status " +
                                                   std::to_string(r->status)
                                             : std::string("closed"));
    }
    auto r = next();
    EXPECT_TRUE(r && r->status == 0 && r->opcode == Opcode::kMap);
    auto handle = proto::decode_map_reply(r ? r->payload : std::vector<uint8_t>{});
    EXPECT_TRUE(handle.ok());
    return handle.ok() ? *handle : proto::MapReply{};
  }

  void queue_io(Opcode op, const proto::MapReply& h, uint64_t offset, std::span<const uint8_t> data,
                uint32_t read_len, uint64_t request_id) {
    std::vector<uint8_t> p(proto::kIoRequestSize);
    uint32_t len = op == Opcode::kWrite ? static_cast<uint32_t>(data.size()) : read_len;
    proto::encode_io_request({h.rkey, h.remote_addr + offset, len}, p.data());
    p.insert(p.end(), data.begin(), data.end());
    queue(op, p, request_id);
  }

 private:
  bool read_n(uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t r = ::recv(client_.get(), p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        if (r < 0) std::fprintf(stderr, "recv: %s\n", std::strerror(errno));
        return false;
      }
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  std::unique_ptr<Store> store_;
  std::unique_ptr<Server> server_;
  UniqueFd client_;
  std::thread loop_;
  std::vector<uint8_t> pending_;
};

// A region with no file to fdatasync (an in-memory store) has nothing to wait
// for at a sync point: a sync-read is answered with the data, not with EIO
// from an fdatasync of fd -1.
TEST(ServerTest, SyncReadOnMemoryStoreReturnsTheData) {
  ServerHarness s(make_memory_region(8 * proto::kBlockSize));
  proto::MapReply h = s.hello_and_map();
  const uint8_t data[] = {'a', 'b', 'c', 'd'};
  s.queue_io(Opcode::kWrite, h, 4096, data, 0, 10);
  s.queue_io(Opcode::kRead, h, 4096, {}, sizeof data, 11);
  s.send();
  auto w = s.next();
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status, 0u);
  auto r = s.next();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->opcode, Opcode::kRead);
  EXPECT_EQ(r->status, 0u) << "errno " << proto::errno_from_wire(r->status);
  EXPECT_EQ(r->payload, std::vector<uint8_t>(data, data + sizeof data));
}

// A client that half-closes right after its last request still gets every
// reply (docs/protocol.md §3), also when the brick is waiting for the
// fdatasync of a sync-read at the moment the end of the stream arrives.
TEST(ServerTest, HalfCloseDuringSyncReadStillGetsEveryReply) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp != nullptr ? tmp : "/tmp") + "/pbrick-server-test-XXXXXX";
  int fd = ::mkstemp(path.data());
  ASSERT_GE(fd, 0);
  ::close(fd);
  ::unlink(path.c_str());
  auto region = open_pmem_region(RegionOptions{path, 8 * proto::kBlockSize, true});
  ASSERT_TRUE(region.ok()) << region.error().message();
  {
    ServerHarness s(std::move(*region));
    proto::MapReply h = s.hello_and_map();
    std::vector<uint8_t> data(256 * 1024, 0x5A);
    s.queue_io(Opcode::kWrite, h, 0, data, 0, 10);
    s.queue_io(Opcode::kRead, h, 0, {}, 16, 11);
    s.queue(Opcode::kStat, {}, 12);
    s.send();
    s.half_close();
    for (uint64_t id : {10u, 11u, 12u}) {
      auto r = s.next();
      ASSERT_TRUE(r) << "no reply to request " << id << ": the brick closed first";
      EXPECT_EQ(r->request_id, id);
      EXPECT_EQ(r->status, 0u);
    }
    EXPECT_FALSE(s.next()) << "the brick closes after the last reply";
  }
  ::unlink(path.c_str());
}

// The server's tiering hooks: a MAP of a block on the slow tier waits for its
// promotion (the requests behind it on the connection wait with it, replies
// stay in order) and then succeeds - MAP of a slow block fails in the store,
// so its success shows the promotion ran first; STAT carries the slow tier's
// counts only for a client that offered TIERS.
TEST(ServerTest, MapOfASlowBlockWaitsForItsPromotionAndStatShowsTiers) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("pbrick-server-tier-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    auto fast = open_pmem_region({dir + "/fast", 16ull << 20, true});
    ASSERT_TRUE(fast) << fast.error().message();
    auto slow = open_pmem_region({dir + "/slow", 16ull << 20, true});
    ASSERT_TRUE(slow) << slow.error().message();
    auto store = Store::Open(std::move(*fast), StoreOpenOptions{}, std::move(*slow));
    ASSERT_TRUE(store) << store.error().message();
    const uint64_t fast_slots = (*store)->stats().fast_capacity_blocks;
    const uint64_t slow_slots = (*store)->stats().slow_capacity_blocks;
    // Every fast slot taken, then one block on the slow tier.
    for (uint64_t i = 0; i <= fast_slots; i++) ASSERT_TRUE((*store)->alloc(i * proto::kBlockSize));
    const uint64_t slow_block = fast_slots * proto::kBlockSize;
    ASSERT_EQ(*(*store)->tier_of(slow_block), kTierSlow);
    auto tiering = Tiering::Create(**store, TieringOptions{dir + "/slow", 1, 1ull << 30});
    ASSERT_TRUE(tiering) << tiering.error().message();

    for (bool tiers : {false, true}) {
      ServerHarness s(std::move(*store), tiering->get());
      proto::HelloRequest hello;
      hello.features = tiers ? proto::kFeatureTiers : 0;
      uint8_t hp[proto::kHelloRequestSize];
      proto::encode_hello_request(hello, hp);
      s.queue(Opcode::kHello, hp, 1);
      s.queue(Opcode::kStat, {}, 2);
      uint8_t mp[proto::kMapRequestSize];
      proto::encode_map_request({slow_block, proto::kMapWrite}, mp);
      s.queue(Opcode::kMap, mp, 3);
      s.queue(Opcode::kStat, {}, 4);
      s.send();
      for (uint64_t id : {1u, 2u, 3u, 4u}) {
        auto r = s.next();
        ASSERT_TRUE(r) << "no reply to request " << id;
        EXPECT_EQ(r->request_id, id);
        EXPECT_EQ(r->status, 0u) << "request " << id << ": errno " << proto::errno_from_wire(r->status);
        if (r->opcode != Opcode::kStat) continue;
        auto stat = proto::decode_stat_reply(r->payload);
        ASSERT_TRUE(stat) << stat.error().message();
        EXPECT_EQ(stat->slow_capacity_blocks, tiers ? slow_slots : 0u);
        // At least one block is on the slow tier (the one mapped, or the one
        // demoted to make room for it; background demotion may add more).
        if (tiers) {
          EXPECT_LT(stat->slow_free_blocks, slow_slots);
        } else {
          EXPECT_EQ(stat->slow_free_blocks, 0u);
        }
        if (id == 4) {
          EXPECT_EQ(stat->mapped_blocks, 1u);
        }
      }
      store = s.release_store();
    }
    EXPECT_GE((*tiering)->promotions(), 1u);
    EXPECT_EQ(*(*store)->tier_of(slow_block), kTierFast);
    tiering->reset();
  }
  std::filesystem::remove_all(dir);
}

// FENCE is served only to a connection whose HELLO was granted the FENCE
// feature (docs/protocol.md §7.9): otherwise EOPNOTSUPP, and the connection
// goes on serving.
TEST(ServerTest, FenceWithoutTheFenceFeatureIsRefusedAndTheConnectionServesOn) {
  ServerHarness s(make_memory_region(8 * proto::kBlockSize));
  proto::HelloRequest hello;  // no kFeatureFence
  uint8_t hp[proto::kHelloRequestSize];
  proto::encode_hello_request(hello, hp);
  s.queue(Opcode::kHello, hp, 1);
  proto::FenceRequest fence;
  fence.scope = proto::kBlockSize;
  fence.writer.fill(7);
  uint8_t fp[proto::kFenceRequestSize];
  proto::encode_fence_request(fence, fp);
  s.queue(Opcode::kFence, fp, 2);
  s.queue(Opcode::kStat, {}, 3);
  s.send();
  auto h = s.next();
  ASSERT_TRUE(h);
  ASSERT_EQ(h->status, 0u);
  auto f = s.next();
  ASSERT_TRUE(f) << "the brick closed instead of refusing the FENCE";
  EXPECT_EQ(f->request_id, 2u);
  EXPECT_EQ(f->status, proto::wire_status(EOPNOTSUPP));
  auto st = s.next();
  ASSERT_TRUE(st) << "the brick closed after refusing the FENCE";
  EXPECT_EQ(st->request_id, 3u);
  EXPECT_EQ(st->status, 0u);
}

}  // namespace
}  // namespace pbrick
