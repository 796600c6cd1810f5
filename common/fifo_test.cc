#include "common/fifo.h"

#include <gtest/gtest.h>

#include <deque>

namespace pbrick {
namespace {

TEST(Fifo, TakesEntriesInTheOrderTheyCame) {
  Fifo<int> f;
  std::deque<int> want;
  int next = 0;
  for (int round = 0; round < 1000; round++) {
    for (int k = 0; k < round % 7 + 1; k++) {
      f.push(next);
      want.push_back(next++);
    }
    for (int k = 0; k < round % 5 + 1 && !want.empty(); k++) {
      ASSERT_FALSE(f.empty());
      ASSERT_EQ(f.pop(), want.front());
      want.pop_front();
    }
    ASSERT_EQ(f.size(), want.size());
  }
  while (!want.empty()) {
    ASSERT_EQ(f.pop(), want.front());
    want.pop_front();
  }
  EXPECT_TRUE(f.empty());
}

// Under sustained load the queue is never empty: one in, one out, with 100
// waiting all the time. Its vector stays within twice that (rounded up to the
// vector's growth), however long the load lasts.
TEST(Fifo, ANeverEmptyQueueKeepsItsCapacity) {
  Fifo<int> f;
  f.reserve(16);
  for (int i = 0; i < 100; i++) f.push(i);
  for (int i = 100; i < 1000000; i++) {
    f.push(i);
    ASSERT_EQ(f.pop(), i - 100);
  }
  EXPECT_EQ(f.size(), 100u);
  EXPECT_LE(f.capacity(), 512u);
  // Emptied, it starts from the front again.
  while (!f.empty()) f.pop();
  const size_t capacity = f.capacity();
  for (int i = 0; i < 100; i++) f.push(i);
  EXPECT_EQ(f.capacity(), capacity);
}

}  // namespace
}  // namespace pbrick
