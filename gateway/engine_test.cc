// The volume engine against a real brick (Store + Server on a file store in a
// temporary directory, served from a thread of the test) over TCP on loopback.
#include "gateway/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "target/server.h"
#include "target/store.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class Brick {
 public:
  explicit Brick(std::string dir) : dir_(std::move(dir)) {}
  ~Brick() { stop(); }

  void start() {
    RegionOptions ro;
    ro.path = dir_ + "/brick.store";
    ro.size = 128 * kMiB;
    auto region = open_pmem_region(ro);
    ASSERT_TRUE(region.ok()) << region.error().message();
    auto store = Store::Open(std::move(*region), {});
    ASSERT_TRUE(store.ok()) << store.error().message();
    store_ = std::move(*store);
    ServerOptions so;
    so.listen = Endpoint{"127.0.0.1", port_};
    auto server = Server::Create(*store_, so);
    ASSERT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(*server);
    port_ = server_->port();
    thread_ = std::thread([this] {
      Status st = server_->run();
      EXPECT_TRUE(st.ok());
    });
  }

  void stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
    server_.reset();
    store_.reset();
  }

  ClientOptions client() const {
    ClientOptions o;
    o.endpoint = Endpoint{"127.0.0.1", port_};
    return o;
  }

  uint64_t allocated_blocks() const {
    auto c = BrickClient::Connect(client());
    EXPECT_TRUE(c.ok());
    auto s = (*c)->stat();
    EXPECT_TRUE(s.ok());
    return s->allocated_blocks;
  }

 private:
  std::string dir_;
  uint16_t port_ = 0;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pbrick-engine-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    brick_ = std::make_unique<Brick>(dir_);
    brick_->start();
  }
  void TearDown() override {
    engine_.reset();
    brick_.reset();
    std::filesystem::remove_all(dir_);
  }

  Engine& open(uint64_t size = 32 * kMiB, uint64_t base = 0, uint32_t timeout_ms = 10000) {
    VolumeOptions vo;
    vo.brick = brick_->client();
    vo.size = size;
    vo.base = base;
    vo.io_timeout_ms = timeout_ms;
    auto volume = Volume::Open(vo);
    EXPECT_TRUE(volume.ok()) << volume.error().message();
    EngineOptions eo;
    eo.queues = 2;
    eo.depth = 16;
    auto engine = Engine::Start(std::move(*volume), eo);
    EXPECT_TRUE(engine.ok()) << engine.error().message();
    engine_ = std::move(*engine);
    return *engine_;
  }

  static std::vector<uint8_t> random_bytes_of(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  }

  std::string dir_;
  std::unique_ptr<Brick> brick_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, WriteReadAcrossBlocksAndThinProvisioning) {
  Engine& e = open();
  auto data = random_bytes_of(5 * kMiB, 1);
  const uint64_t offset = kMiB + 123;  // spans blocks 0..3
  ASSERT_TRUE(e.write(data.data(), data.size(), offset, false).ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), offset).ok());
  EXPECT_EQ(back, data);
  EXPECT_EQ(brick_->allocated_blocks(), 4u);

  // Never-written bytes, inside and outside touched blocks, read as zeros.
  std::vector<uint8_t> zeros(kMiB, 0), got(kMiB, 0xFF);
  ASSERT_TRUE(e.read(got.data(), got.size(), 20 * kMiB).ok());
  EXPECT_EQ(got, zeros);
  got.assign(123, 0xFF);
  ASSERT_TRUE(e.read(got.data(), 123, kMiB).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(123, 0));
  EXPECT_EQ(brick_->allocated_blocks(), 4u);
  EXPECT_TRUE(e.flush().ok());
}

TEST_F(EngineTest, OutOfRangeAndOversizedRequestsAreRefused) {
  Engine& e = open(8 * kMiB);
  uint8_t b[16] = {};
  EXPECT_EQ(e.read(b, 16, 8 * kMiB - 8).error().errnum(), EINVAL);
  EXPECT_EQ(e.write(b, 16, UINT64_MAX - 4, false).error().errnum(), EINVAL);
  std::vector<uint8_t> big(Engine::kMaxRequest + 1);
  EXPECT_EQ(e.read(big.data(), big.size(), 0).error().errnum(), EINVAL);
  EXPECT_EQ(e.discard(16, 8 * kMiB, false).error().errnum(), EINVAL);
}

TEST_F(EngineTest, DiscardFreesWholeBlocksAndZeroesPartialOnes) {
  Engine& e = open();
  auto data = random_bytes_of(6 * kMiB, 2);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  EXPECT_EQ(brick_->allocated_blocks(), 3u);
  // [1 MiB, 5 MiB): block 1 is whole, blocks 0 and 2 are partial.
  ASSERT_TRUE(e.discard(4 * kMiB, kMiB, true).ok());
  EXPECT_EQ(brick_->allocated_blocks(), 2u);
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  for (size_t i = 0; i < back.size(); i++) {
    uint8_t want = (i >= kMiB && i < 5 * kMiB) ? 0 : data[i];
    ASSERT_EQ(back[i], want) << "byte " << i;
  }
  // A write after a discard allocates the block again.
  ASSERT_TRUE(e.write(data.data(), 4096, 2 * kMiB, false).ok());
  EXPECT_EQ(brick_->allocated_blocks(), 3u);
}

TEST_F(EngineTest, ManyThreadsKeepTheirDataApart) {
  Engine& e = open(64 * kMiB);
  constexpr int kThreads = 8;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      const uint64_t region = 8 * kMiB, base = t * region;
      std::vector<uint8_t> shadow(region, 0), buf(256 * 1024);
      for (int i = 0; i < 150; i++) {
        uint64_t len = 1 + rng() % buf.size();
        uint64_t off = rng() % (region - len);
        if (rng() % 3 != 0) {
          for (uint64_t k = 0; k < len; k++) buf[k] = static_cast<uint8_t>(rng());
          Status st = e.write(buf.data(), len, base + off, rng() % 8 == 0);
          if (!st.ok()) {
            ADD_FAILURE() << "write: " << st.error().message();
            failures++;
          }
          std::copy(buf.begin(), buf.begin() + static_cast<long>(len), shadow.begin() + static_cast<long>(off));
        } else {
          Status st = e.read(buf.data(), len, base + off);
          if (!st.ok()) {
            ADD_FAILURE() << "read: " << st.error().message();
            failures++;
          }
          auto mismatch = std::mismatch(buf.begin(), buf.begin() + static_cast<long>(len),
                                        shadow.begin() + static_cast<long>(off));
          if (mismatch.first != buf.begin() + static_cast<long>(len)) {
            ADD_FAILURE() << "thread " << t << " read of " << len << " at " << base + off << " differs at +"
                          << (mismatch.first - buf.begin());
            failures++;
          }
        }
        if (i % 50 == 0) {
          Status st = e.flush();
          if (!st.ok()) {
            ADD_FAILURE() << "flush: " << st.error().message();
            failures++;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(EngineTest, VolumesAtDifferentBasesAreIndependent) {
  VolumeOptions vo;
  vo.brick = brick_->client();
  vo.size = 4 * kMiB;
  vo.base = 0x40000000;
  auto other_volume = Volume::Open(vo);
  ASSERT_TRUE(other_volume.ok());
  auto other = Engine::Start(std::move(*other_volume), {});
  ASSERT_TRUE(other.ok());
  Engine& e = open(4 * kMiB, 0);
  auto a = random_bytes_of(kMiB, 3), b = random_bytes_of(kMiB, 4);
  ASSERT_TRUE(e.write(a.data(), a.size(), 0, false).ok());
  ASSERT_TRUE((*other)->write(b.data(), b.size(), 0, false).ok());
  std::vector<uint8_t> back(kMiB);
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(back, a);
  ASSERT_TRUE((*other)->read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(back, b);
  auto c = BrickClient::Connect(brick_->client());
  ASSERT_TRUE(c.ok());
  auto extents = (*c)->list_all();
  ASSERT_TRUE(extents.ok());
  ASSERT_EQ(extents->size(), 2u);
  EXPECT_EQ((*extents)[0].start_vaddr, 0u);
  EXPECT_EQ((*extents)[1].start_vaddr, 0x40000000u);
}

TEST_F(EngineTest, IoRidesOutABrickRestart) {
  Engine& e = open(16 * kMiB, 0, 20000);
  auto data = random_bytes_of(16 * kMiB, 5);
  ASSERT_TRUE(e.write(data.data(), 8 * kMiB, 0, false).ok());
  ASSERT_TRUE(e.flush().ok());
  std::atomic<bool> writer_ok{true};
  std::thread writer([&] {
    for (uint64_t off = 8 * kMiB; off < 16 * kMiB; off += 256 * 1024) {
      if (!e.write(data.data() + off, 256 * 1024, off, false).ok()) writer_ok = false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!e.flush().ok()) writer_ok = false;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  brick_->stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  brick_->start();
  writer.join();
  EXPECT_TRUE(writer_ok.load());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(back, data);
}

TEST_F(EngineTest, BrickGoneLongerThanTheTimeoutFailsWithEioThenRecovers) {
  Engine& e = open(8 * kMiB, 0, 600);
  auto data = random_bytes_of(kMiB, 6);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  brick_->stop();
  auto start = std::chrono::steady_clock::now();
  Status st = e.write(data.data(), data.size(), 2 * kMiB, false);
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EIO) << st.error().message();
  // The whole timeout is waited out, not a backoff step less.
  EXPECT_GE(waited, std::chrono::milliseconds(600));
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_EQ(e.flush().error().errnum(), EIO);
  brick_->start();
  ASSERT_TRUE(e.write(data.data(), data.size(), 2 * kMiB, false).ok());
  ASSERT_TRUE(e.flush().ok());
  std::vector<uint8_t> back(kMiB);
  ASSERT_TRUE(e.read(back.data(), back.size(), 2 * kMiB).ok());
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace pbrick
