// Uring (common/uring.h) on this kernel: set-up with whatever fallback the
// kernel needs, the user_data packing, SQE-full retry, and a ring created on
// one thread and driven by another.
#include "common/uring.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace pbrick {
namespace {

TEST(UringTest, UserDataPackingKeepsKindAndPayloadApart) {
  constexpr uint64_t ud = Uring::pack(5, 0x00ABCDEF01234567ull);
  static_assert(Uring::kind_of(ud) == 5);
  static_assert(Uring::payload_of(ud) == 0x00ABCDEF01234567ull);
  EXPECT_EQ(Uring::kind_of(Uring::pack(255, Uring::kPayloadMask)), 255);
  EXPECT_EQ(Uring::payload_of(Uring::pack(255, Uring::kPayloadMask)), Uring::kPayloadMask);
  // A payload wider than 56 bits is cut, never spilled into the kind.
  EXPECT_EQ(Uring::kind_of(Uring::pack(1, ~0ull)), 1);
}

// More NOPs than the ring has SQEs: sqe() submits to make room, every
// completion comes back once with its own user_data, and inflight() counts
// down to zero. The ring is created here and driven by another thread, as
// the event loops do (enable() there).
TEST(UringTest, MoreSqesThanEntriesOnAnotherThread) {
  Uring ring;
  ASSERT_TRUE(ring.init(4).ok());
  constexpr int kNops = 37;
  std::vector<int> seen(kNops, 0);
  std::string failure;
  std::thread loop([&] {
    Status st = ring.enable();
    if (!st) {
      failure = st.error().message();
      return;
    }
    for (int i = 0; i < kNops; i++) io_uring_prep_nop(ring.sqe(Uring::pack(3, static_cast<uint64_t>(i))));
    if (ring.inflight() != kNops) failure = "inflight " + std::to_string(ring.inflight());
    while (ring.inflight() > 0) {
      int err = ring.submit_and_wait(1);
      if (err < 0 && err != -EINTR) {
        failure = "submit_and_wait: " + std::to_string(err);
        return;
      }
      ring.drain([&](uint64_t ud, int res) {
        if (Uring::kind_of(ud) != 3 || res != 0) failure = "unexpected completion";
        seen[Uring::payload_of(ud)]++;
      });
    }
  });
  loop.join();
  EXPECT_EQ(failure, "");
  EXPECT_EQ(seen, std::vector<int>(kNops, 1));
  // Where the kernel has them (6.1+), the ring is single-issuer with deferred
  // task work; where it does not, it fell back instead of failing.
  unsigned f = ring.flags();
  EXPECT_TRUE((f & IORING_SETUP_SINGLE_ISSUER) != 0 || (f & IORING_SETUP_COOP_TASKRUN) != 0 || f == 0);
}

// Bounded polling: a completion that comes within the bound ends the wait
// without a sleep, one that comes later than the bound is waited for asleep,
// and both are counted.
TEST(UringTest, PollingWaitsEndByPollingOrSleepAfterTheBound) {
  Uring ring;
  ASSERT_TRUE(ring.init(8).ok());
  std::string failure;
  std::thread loop([&] {
    if (Status st = ring.enable(); !st) {
      failure = st.error().message();
      return;
    }
    // A timer of 1 ms against a bound of 2 s: polling sees it (its
    // completion is posted only when this thread enters the ring).
    __kernel_timespec soon{0, 1000 * 1000};
    io_uring_prep_timeout(ring.sqe(Uring::pack(1, 0)), &soon, 0, 0);
    int err = ring.submit_and_wait_polling(std::chrono::seconds(2));
    unsigned n = ring.drain([&](uint64_t ud, int res) {
      if (Uring::kind_of(ud) != 1 || res != -ETIME) failure = "not the 1 ms timer";
    });
    if (err < 0 || n != 1) failure = "1 ms: err " + std::to_string(err) + ", " + std::to_string(n) + " completions";
    // A timer of 30 ms against a bound of 200 us: the wait sleeps after the bound.
    __kernel_timespec later{0, 30 * 1000 * 1000};
    io_uring_prep_timeout(ring.sqe(Uring::pack(2, 0)), &later, 0, 0);
    auto t0 = std::chrono::steady_clock::now();
    err = ring.submit_and_wait_polling(std::chrono::microseconds(200));
    auto waited = std::chrono::steady_clock::now() - t0;
    n = ring.drain([&](uint64_t ud, int res) {
      if (Uring::kind_of(ud) != 2 || res != -ETIME) failure = "not the timer";
    });
    if (err < 0 || n != 1) failure = "timer: err " + std::to_string(err) + ", " + std::to_string(n) + " completions";
    if (waited < std::chrono::milliseconds(25)) failure = "the timer's wait ended early";
  });
  loop.join();
  EXPECT_EQ(failure, "");
  EXPECT_EQ(ring.polls_won(), 1u);
  EXPECT_EQ(ring.polls_lost(), 1u);
  EXPECT_EQ(ring.inflight(), 0u);
}

}  // namespace
}  // namespace pbrick
