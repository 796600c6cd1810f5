// The volume engine against a real brick (gateway/test_brick.h) over TCP on
// loopback.
#include "gateway/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "common/crc32c.h"
#include "gateway/test_brick.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// The errno of a failed Status, 0 when it succeeded (for EXPECT_EQ).
int errnum_of(const Status& st) { return st.ok() ? 0 : st.error().errnum(); }

struct OpenOptions {
  uint64_t size = 32 * kMiB;
  uint64_t base = 0;
  uint32_t timeout_ms = 10000;
  uint32_t queues = 2;
  uint32_t depth = 16;
  uint32_t poll_us = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("engine"));
    brick_ = std::make_unique<TestBrick>(dir_.path());
    PBRICK_ASSERT_OK(brick_->start());
  }
  void TearDown() override {
    engine_.reset();
    brick_.reset();
  }

  // Opens a volume on the brick and starts engine_ on it. A test asserts on
  // the result (PBRICK_ASSERT_OK) before it touches engine_.
  Status open(const OpenOptions& oo = {}) {
    VolumeOptions vo;
    vo.brick = brick_->client();
    vo.size = oo.size;
    vo.base = oo.base;
    vo.io_timeout_ms = oo.timeout_ms;
    auto volume = Volume::Open(vo);
    if (!volume) return volume.error().wrap("Volume::Open");
    EngineOptions eo;
    eo.queues = oo.queues;
    eo.depth = oo.depth;
    eo.poll_us = oo.poll_us;
    auto engine = Engine::Start(std::move(*volume), eo);
    if (!engine) return engine.error().wrap("Engine::Start");
    engine_ = std::move(*engine);
    return Status::Ok();
  }

  // Call as ASSERT_NO_FATAL_FAILURE(expect_allocated(n)): a failed LIST stops
  // the test. Counts data blocks: the volume's label area (above
  // kLabelAreaStart, gateway/volume_label.h) is not the volume's data.
  void expect_allocated(uint64_t want) {
    auto c = BrickClient::Connect(brick_->client());
    ASSERT_TRUE(c.ok()) << c.error().message();
    auto extents = (*c)->list_all();
    ASSERT_TRUE(extents.ok()) << extents.error().message();
    uint64_t data = 0;
    for (const auto& e : *extents) data += e.start_vaddr < kLabelAreaStart ? e.block_count : 0;
    EXPECT_EQ(data, want);
  }

  static std::vector<uint8_t> random_bytes_of(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::unique_ptr<TestBrick> brick_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, WriteReadAcrossBlocksAndThinProvisioning) {
  PBRICK_ASSERT_OK(open());
  Engine& e = *engine_;
  auto data = random_bytes_of(5 * kMiB, 1);
  const uint64_t offset = kMiB + 123;  // spans blocks 0..3
  ASSERT_TRUE(e.write(data.data(), data.size(), offset, false).ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), offset).ok());
  EXPECT_EQ(back, data);
  ASSERT_NO_FATAL_FAILURE(expect_allocated(4));

  // Never-written bytes, inside and outside touched blocks, read as zeros.
  std::vector<uint8_t> zeros(kMiB, 0), got(kMiB, 0xFF);
  ASSERT_TRUE(e.read(got.data(), got.size(), 20 * kMiB).ok());
  EXPECT_EQ(got, zeros);
  got.assign(123, 0xFF);
  ASSERT_TRUE(e.read(got.data(), 123, kMiB).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(123, 0));
  ASSERT_NO_FATAL_FAILURE(expect_allocated(4));
  EXPECT_TRUE(e.flush().ok());
}

TEST_F(EngineTest, OutOfRangeRequestsAreRefused) {
  PBRICK_ASSERT_OK(open({.size = 8 * kMiB}));
  Engine& e = *engine_;
  uint8_t b[16] = {};
  EXPECT_EQ(errnum_of(e.read(b, 16, 8 * kMiB - 8)), EINVAL);
  EXPECT_EQ(errnum_of(e.write(b, 16, UINT64_MAX - 4, false)), EINVAL);
  std::vector<uint8_t> big(8 * kMiB + 1);
  EXPECT_EQ(errnum_of(e.read(big.data(), big.size(), 0)), EINVAL);
  EXPECT_EQ(errnum_of(e.discard(16, 8 * kMiB, false)), EINVAL);
}

// nbdkit passes a client that did not negotiate block sizes requests up to
// 64 MiB: more than kMaxRequest goes in parts, every byte where it belongs.
TEST_F(EngineTest, ARequestLargerThanKMaxRequestGoesInParts) {
  PBRICK_ASSERT_OK(open({.size = 48 * kMiB}));
  Engine& e = *engine_;
  const uint64_t len = 2 * Engine::kMaxRequest + 12345, at = kMiB + 512;
  auto data = random_bytes_of(len, 17);
  PBRICK_ASSERT_OK(e.write(data.data(), len, at, true));
  std::vector<uint8_t> back(len);
  PBRICK_ASSERT_OK(e.read(back.data(), len, at));
  EXPECT_EQ(crc32c(back.data(), len), crc32c(data.data(), len));
  // And in smaller reads, so a part written to the wrong place shows.
  for (uint64_t off = 0; off < len; off += 3 * kMiB) {
    const uint64_t n = std::min<uint64_t>(3 * kMiB, len - off);
    std::vector<uint8_t> part(n);
    PBRICK_ASSERT_OK(e.read(part.data(), n, at + off));
    EXPECT_EQ(std::memcmp(part.data(), data.data() + off, n), 0) << "at " << off;
  }
}

TEST_F(EngineTest, DiscardFreesWholeBlocksAndZeroesPartialOnes) {
  PBRICK_ASSERT_OK(open());
  Engine& e = *engine_;
  auto data = random_bytes_of(6 * kMiB, 2);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  ASSERT_NO_FATAL_FAILURE(expect_allocated(3));
  // [1 MiB, 5 MiB): block 1 is whole, blocks 0 and 2 are partial.
  ASSERT_TRUE(e.discard(4 * kMiB, kMiB, true).ok());
  ASSERT_NO_FATAL_FAILURE(expect_allocated(2));
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  for (size_t i = 0; i < back.size(); i++) {
    uint8_t want = (i >= kMiB && i < 5 * kMiB) ? 0 : data[i];
    ASSERT_EQ(back[i], want) << "byte " << i;
  }
  // A write after a discard allocates the block again.
  ASSERT_TRUE(e.write(data.data(), 4096, 2 * kMiB, false).ok());
  ASSERT_NO_FATAL_FAILURE(expect_allocated(3));
}

TEST_F(EngineTest, ManyThreadsKeepTheirDataApart) {
  PBRICK_ASSERT_OK(open({.size = 64 * kMiB}));
  Engine& e = *engine_;
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
  ASSERT_TRUE(other.ok()) << other.error().message();
  PBRICK_ASSERT_OK(open({.size = 4 * kMiB}));
  Engine& e = *engine_;
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
  // Data, then the two volumes' label areas (kLabelAreaStart + 2 * base).
  std::erase_if(*extents, [](const proto::Extent& x) { return x.start_vaddr >= kLabelAreaStart; });
  ASSERT_EQ(extents->size(), 2u);
  EXPECT_EQ((*extents)[0].start_vaddr, 0u);
  EXPECT_EQ((*extents)[1].start_vaddr, 0x40000000u);
}

TEST_F(EngineTest, IoRidesOutABrickRestart) {
  PBRICK_ASSERT_OK(open({.size = 16 * kMiB, .timeout_ms = 20000}));
  Engine& e = *engine_;
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
  Status restarted = brick_->start();
  writer.join();
  PBRICK_ASSERT_OK(restarted);
  EXPECT_TRUE(writer_ok.load());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(back, data);
}

TEST_F(EngineTest, BrickGoneLongerThanTheTimeoutFailsWithEioThenRecovers) {
  PBRICK_ASSERT_OK(open({.size = 8 * kMiB, .timeout_ms = 600}));
  Engine& e = *engine_;
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
  Status flushed = e.flush();
  ASSERT_FALSE(flushed.ok());
  EXPECT_EQ(flushed.error().errnum(), EIO);
  PBRICK_ASSERT_OK(brick_->start());
  ASSERT_TRUE(e.write(data.data(), data.size(), 2 * kMiB, false).ok());
  ASSERT_TRUE(e.flush().ok());
  std::vector<uint8_t> back(kMiB);
  ASSERT_TRUE(e.read(back.data(), back.size(), 2 * kMiB).ok());
  EXPECT_EQ(back, data);
}

// NBD multi-conn: the brick's host reboots under a write no FLUSH covered.
// The first FLUSH to meet the loss fails with EIO, whichever connection sent
// it; every other connection open then fails its next FLUSH once too (its
// writes may be among those lost), and one that connected later is not told.
// One loop: with more, each connection's own report (an earlier process may
// have left writes unsynced on any of them) makes the count of EIOs depend on
// which loops the FLUSHes reach first.
TEST_F(EngineTest, WritesLostToABrickRebootAreReportedToEveryClientConnectedThen) {
  PBRICK_ASSERT_OK(open({.size = 8 * kMiB, .queues = 1}));
  Engine& e = *engine_;
  Engine::Session writer = e.begin_session(), other = e.begin_session();
  auto data = random_bytes_of(kMiB, 7);
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  brick_->stop();
  std::array<uint8_t, proto::kUuidSize> rebooted{};
  rebooted.fill(0x5a);
  PBRICK_ASSERT_OK(brick_->start("brick.store", rebooted));
  Status first = e.answer_for(other, e.flush());
  EXPECT_EQ(errnum_of(first), EIO) << "the FLUSH that met the loss";
  Engine::Session later = e.begin_session();
  Status writers = e.answer_for(writer, e.flush());
  ASSERT_FALSE(writers.ok()) << "the writer's own FLUSH succeeded after its write was lost";
  EXPECT_EQ(writers.error().errnum(), EIO);
  EXPECT_NE(writers.error().message().find("rebooted"), std::string::npos) << writers.error().message();
  EXPECT_EQ(errnum_of(e.answer_for(writer, e.flush())), 0) << "told once";
  EXPECT_EQ(errnum_of(e.answer_for(other, e.flush())), 0) << "told once";
  EXPECT_EQ(errnum_of(e.answer_for(later, e.flush())), 0) << "connected after the loss";
  // A FUA write tells a session as a FLUSH does.
  Engine::Session fua_writer = e.begin_session();
  ASSERT_TRUE(e.write(data.data(), data.size(), 0, false).ok());
  brick_->stop();
  rebooted.fill(0xa5);
  PBRICK_ASSERT_OK(brick_->start("brick.store", rebooted));
  EXPECT_EQ(errnum_of(e.answer_for(later, e.flush())), EIO);
  EXPECT_EQ(errnum_of(e.answer_for(fua_writer, e.write(data.data(), 4096, 0, true))), EIO);
  EXPECT_EQ(errnum_of(e.answer_for(fua_writer, e.write(data.data(), 4096, 0, true))), 0);
}

// More loops than a request has pieces (10), and the most the engine takes:
// every caller thread, bound to its own loop, writes its own range and
// flushes; a FLUSH syncs every loop. What each wrote reads back with the same
// checksum, through this engine and through a new volume after the brick
// restarted on its store.
class EngineQueuesTest : public EngineTest, public ::testing::WithParamInterface<uint32_t> {};

TEST_P(EngineQueuesTest, EveryLoopFlushesAndDataKeepsItsChecksums) {
  const uint32_t queues = GetParam();
  constexpr uint64_t kChunk = 96 * 1024;  // crosses a block boundary every few threads
  PBRICK_ASSERT_OK(open({.size = 16 * kMiB, .queues = queues, .depth = 4}));
  Engine& e = *engine_;
  std::vector<std::vector<uint8_t>> data(queues);
  std::vector<uint32_t> sums(queues);
  for (uint32_t t = 0; t < queues; t++) {
    data[t] = random_bytes_of(kChunk, 1000 + t);
    sums[t] = crc32c(data[t].data(), kChunk);
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < queues; t++) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; round++) {
        Status st = e.write(data[t].data(), kChunk, t * kChunk, round == 1);
        if (st.ok()) st = e.flush();
        if (!st.ok()) {
          ADD_FAILURE() << "thread " << t << ": " << st.error().message();
          failures++;
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  auto check = [&](Engine& engine, const char* when) {
    std::vector<uint8_t> back(kChunk);
    for (uint32_t t = 0; t < queues; t++) {
      Status st = engine.read(back.data(), kChunk, t * kChunk);
      ASSERT_TRUE(st.ok()) << when << ": " << st.error().message();
      EXPECT_EQ(crc32c(back.data(), kChunk), sums[t]) << when << ": range of thread " << t;
    }
  };
  ASSERT_NO_FATAL_FAILURE(check(e, "before the restart"));
  engine_.reset();
  brick_->stop();
  PBRICK_ASSERT_OK(brick_->start());
  PBRICK_ASSERT_OK(open({.size = 16 * kMiB, .queues = queues, .depth = 4}));
  ASSERT_NO_FATAL_FAILURE(check(*engine_, "after the restart"));
}

INSTANTIATE_TEST_SUITE_P(Queues, EngineQueuesTest, ::testing::Values(10u, Engine::kMaxQueues));

// With bounded polling the data path is the same (checksums through
// write, FLUSH, read), every wait with I/O in flight goes through the poll,
// a loop with nothing in flight never polls (its 100 ms ticks while idle
// add no poll), and no caller sends in a polling loop's place.
TEST_F(EngineTest, PollingLoopsKeepDataAndNeverPollWhenIdle) {
  PBRICK_ASSERT_OK(open({.size = 16 * kMiB, .poll_us = 200}));
  Engine& e = *engine_;
  auto data = random_bytes_of(3 * kMiB, 7);
  for (uint64_t off = 0; off < data.size(); off += 4096) {
    ASSERT_TRUE(e.write(data.data() + off, 4096, off, false).ok()) << off;
  }
  ASSERT_TRUE(e.flush().ok());
  std::vector<uint8_t> back(data.size());
  for (uint64_t off = 0; off < back.size(); off += 64 * 1024) {
    ASSERT_TRUE(e.read(back.data() + off, 64 * 1024, off).ok()) << off;
  }
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  Engine::PollStats busy = e.poll_stats();
  EXPECT_GE(busy.won + busy.lost, 768u + 48u) << "a wait with I/O in flight did not poll";
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  Engine::PollStats idle = e.poll_stats();
  EXPECT_EQ(idle.won, busy.won);
  EXPECT_EQ(idle.lost, busy.lost);
  EXPECT_EQ(e.submit_stats().direct, 0u) << "a polling loop let a caller send";
  EXPECT_GE(e.submit_stats().queued, 768u + 48u + 1u);
}

// A caller whose loop sleeps sends its request itself (Engine: Sending): at
// QD1 nearly every request goes out that way, FLUSH included, and the data
// is what was written - also for a request larger than the socket takes at
// once, whose rest the loop sends after the caller's wake-up.
TEST_F(EngineTest, ACallerWhoseLoopSleepsSendsItsOwnRequests) {
  PBRICK_ASSERT_OK(open({.size = 32 * kMiB, .queues = 1}));
  Engine& e = *engine_;
  auto small = random_bytes_of(2 * kMiB, 11);
  constexpr uint64_t kSmallIos = 512;  // 4 KiB writes, then 4 KiB reads
  for (uint64_t off = 0; off < small.size(); off += 4096) {
    ASSERT_TRUE(e.write(small.data() + off, 4096, off, false).ok()) << off;
    std::this_thread::sleep_for(std::chrono::microseconds(50));  // the loop goes back to sleep
  }
  ASSERT_TRUE(e.flush().ok());
  std::vector<uint8_t> back(small.size());
  for (uint64_t off = 0; off < back.size(); off += 4096) {
    ASSERT_TRUE(e.read(back.data() + off, 4096, off).ok()) << off;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(small.data(), small.size()));
  Engine::SubmitStats submits = e.submit_stats();
  EXPECT_EQ(submits.direct + submits.queued, 2 * kSmallIos + 1);
  EXPECT_GE(submits.direct, (2 * kSmallIos + 1) * 9 / 10) << "callers did not send their own requests";

  auto large = random_bytes_of(Engine::kMaxRequest, 12);
  ASSERT_TRUE(e.write(large.data(), large.size(), 8 * kMiB, true).ok());
  std::vector<uint8_t> large_back(large.size());
  ASSERT_TRUE(e.read(large_back.data(), large_back.size(), 8 * kMiB).ok());
  EXPECT_EQ(crc32c(large_back.data(), large_back.size()), crc32c(large.data(), large.size()));
  ASSERT_TRUE(e.read(back.data(), back.size(), 0).ok());
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(small.data(), small.size()));
}

TEST_F(EngineTest, PollBoundAboveTheMaximumIsRefused) {
  auto volume = Volume::Open({.brick = brick_->client(), .size = 4 * kMiB});
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  auto engine = Engine::Start(std::move(*volume), {.poll_us = Engine::kMaxPollUs + 1});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().errnum(), EINVAL);
  EXPECT_NE(engine.error().message().find("poll must be 0..1000 us"), std::string::npos) << engine.error().message();
}

// A size near 2^64 would wrap the block count when rounded up to blocks.
TEST_F(EngineTest, AVolumeLargerThanABricksAddressSpaceIsRefused) {
  auto volume = Volume::Open({.brick = brick_->client(), .size = ~uint64_t{4095}});
  ASSERT_FALSE(volume.ok());
  EXPECT_EQ(volume.error().errnum(), EINVAL);
  EXPECT_NE(volume.error().message().find("larger than a brick's address space"), std::string::npos)
      << volume.error().message();
}

TEST_F(EngineTest, QueuesOutsideOneToMaxAreRefused) {
  auto volume = Volume::Open({.brick = brick_->client(), .size = 4 * kMiB});
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  auto engine = Engine::Start(std::move(*volume), {.queues = Engine::kMaxQueues + 1});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().errnum(), EINVAL);
  EXPECT_NE(engine.error().message().find("queues must be 1..64"), std::string::npos) << engine.error().message();
}

// A client that expects a store refuses a brick serving another one, naming
// both; the right store is accepted.
TEST_F(EngineTest, ClientRefusesABrickOfAnotherStore) {
  auto stat = brick_->stat();
  ASSERT_TRUE(stat.ok()) << stat.error().message();
  ClientOptions o = brick_->client();
  o.store_uuid = stat->brick_uuid;
  auto right = BrickClient::Connect(o);
  ASSERT_TRUE(right.ok()) << right.error().message();
  auto other = stat->brick_uuid;
  other[0] ^= 0xFF;
  o.store_uuid = other;
  auto wrong = BrickClient::Connect(o);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().errnum(), kErrWrongStore);
  const std::string msg = wrong.error().message();
  EXPECT_NE(msg.find(format_uuid(stat->brick_uuid)), std::string::npos) << msg;
  EXPECT_NE(msg.find(format_uuid(other)), std::string::npos) << msg;
  EXPECT_NE(msg.find(o.endpoint.to_string()), std::string::npos) << msg;
}

// A freshly formatted brick on the old brick's port: the engine's loops
// (reads, writes to mapped blocks, flushes) and the control connection
// (writes that map) refuse it with an error naming both stores, at once and
// never with its zeros; nothing is allocated on it. With the right brick
// back, the flushed data is there.
TEST_F(EngineTest, ABrickOfAnotherStoreIsRefusedAfterAReconnect) {
  PBRICK_ASSERT_OK(open({.size = 16 * kMiB, .timeout_ms = 5000}));
  Engine& e = *engine_;
  auto data = random_bytes_of(3 * kMiB, 7);
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(e.flush());
  auto ours = brick_->stat();
  ASSERT_TRUE(ours.ok()) << ours.error().message();

  brick_->stop();
  PBRICK_ASSERT_OK(brick_->start("replacement.store"));
  auto theirs = brick_->stat();
  ASSERT_TRUE(theirs.ok()) << theirs.error().message();
  ASSERT_NE(theirs->brick_uuid, ours->brick_uuid);

  auto expect_refused = [&](const Status& st, const char* what) {
    ASSERT_FALSE(st.ok()) << what << " succeeded on another store";
    EXPECT_EQ(st.error().errnum(), kErrWrongStore) << what << ": " << st.error().message();
    EXPECT_NE(st.error().message().find(format_uuid(ours->brick_uuid)), std::string::npos)
        << what << ": " << st.error().message();
    EXPECT_NE(st.error().message().find(format_uuid(theirs->brick_uuid)), std::string::npos)
        << what << ": " << st.error().message();
  };
  auto started = std::chrono::steady_clock::now();
  std::vector<uint8_t> back(data.size(), 0xEE);
  ASSERT_NO_FATAL_FAILURE(expect_refused(e.read(back.data(), back.size(), 0), "read of flushed data"));
  ASSERT_NO_FATAL_FAILURE(expect_refused(e.write(data.data(), 4096, 0, false), "write to a mapped block"));
  ASSERT_NO_FATAL_FAILURE(expect_refused(e.write(data.data(), 4096, 8 * kMiB, false), "write to a new block"));
  ASSERT_NO_FATAL_FAILURE(expect_refused(e.flush(), "flush"));
  // Refused, not waited out as if the brick were unreachable.
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(2500));
  ASSERT_NO_FATAL_FAILURE(expect_allocated(0));

  brick_->stop();
  PBRICK_ASSERT_OK(brick_->start());
  std::fill(back.begin(), back.end(), 0xEE);
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  PBRICK_ASSERT_OK(e.flush());
}

}  // namespace
}  // namespace pbrick
