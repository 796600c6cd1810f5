// The gateway's bound on mapped blocks (VolumeOptions::max_mapped): at most N
// blocks stay mapped on a brick, and mapping one more lets go of the least
// recently used, so the brick may demote it (docs/config.md, max_mapped).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "common/label_area.h"
#include "gateway/engine.h"
#include "gateway/test_brick.h"
#include "gateway/volume.h"

namespace pbrick {
namespace {

constexpr uint64_t kBlock = 2ull << 20;

// The volume's data blocks the brick lists as mapped (its label area aside).
std::set<uint64_t> mapped_blocks(const TestBrick& brick) {
  std::set<uint64_t> mapped;
  auto c = BrickClient::Connect(brick.client());
  EXPECT_TRUE(c.ok()) << c.error().message();
  if (!c.ok()) return mapped;
  auto extents = (*c)->list_all();
  EXPECT_TRUE(extents.ok()) << extents.error().message();
  if (!extents.ok()) return mapped;
  for (const auto& e : *extents) {
    if ((e.extent_flags & proto::kExtentMapped) == 0) continue;
    for (uint64_t k = 0; k < e.block_count; k++) {
      const uint64_t vaddr = e.start_vaddr + k * kBlock;
      if (vaddr < kLabelAreaStart) mapped.insert(vaddr / kBlock);
    }
  }
  return mapped;
}

// A brick, and on it a volume of `blocks` blocks with max_mapped 16 under an
// engine of one queue.
class MaxMapped : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("maxmapped"));
    brick_ = std::make_unique<TestBrick>(dir_.path());
    PBRICK_ASSERT_OK(brick_->start());
  }
  void TearDown() override {
    engine_.reset();
    brick_.reset();
  }

  Status start(uint64_t blocks) {
    VolumeOptions vo;
    vo.bricks.push_back(brick_->client());
    vo.size = blocks * kBlock;
    vo.max_mapped = 16;
    auto volume = Volume::Open(vo);
    if (!volume) return volume.error().wrap("Volume::Open");
    auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 16});
    if (!engine) return engine.error().wrap("Engine::Start");
    engine_ = std::move(*engine);
    return Status::Ok();
  }

  TestDir dir_;  // before the brick: removed after it stops
  std::unique_ptr<TestBrick> brick_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(MaxMapped, KeepsAtMostNMappedAndLetsGoOfTheLeastRecentlyUsed) {
  PBRICK_ASSERT_OK(start(32));
  Engine& e = *engine_;
  TestBrick& brick = *brick_;
  std::vector<uint8_t> buf(4096, 0x5a);
  // Blocks 0..19 written in turn: the first four were let go.
  for (uint64_t i = 0; i < 20; i++) PBRICK_ASSERT_OK(e.write(buf.data(), buf.size(), i * kBlock, false));
  std::set<uint64_t> want;
  for (uint64_t i = 4; i < 20; i++) want.insert(i);
  EXPECT_EQ(mapped_blocks(brick), want);
  // Block 4 used again, then a new block: 5 is now the least recently used.
  PBRICK_ASSERT_OK(e.read(buf.data(), buf.size(), 4 * kBlock));
  PBRICK_ASSERT_OK(e.write(buf.data(), buf.size(), 20 * kBlock, false));
  want.erase(5);
  want.insert(20);
  EXPECT_EQ(mapped_blocks(brick), want);
  // A block let go is mapped again when used, its data intact.
  std::vector<uint8_t> back(4096);
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 0));
  EXPECT_EQ(back, buf);
  EXPECT_EQ(mapped_blocks(brick).size(), 16u);
  EXPECT_EQ(mapped_blocks(brick).count(0), 1u);
}

// A block used between every two new ones keeps its mapping while 47 others
// come and go through the other 15 slots; every block keeps its data. (The
// test brick's store holds about 60 blocks.)
TEST_F(MaxMapped, ABlockInUseKeepsItsMappingWhileIdleOnesComeAndGo) {
  PBRICK_ASSERT_OK(start(64));
  Engine& e = *engine_;
  TestBrick& brick = *brick_;
  auto pattern = [](uint64_t block) { return std::vector<uint8_t>(4096, static_cast<uint8_t>(block * 7 + 1)); };
  constexpr uint64_t kHot = 0;
  PBRICK_ASSERT_OK(e.write(pattern(kHot).data(), 4096, kHot * kBlock, false));
  // Every MAP returns a new rkey: the same one means never unmapped.
  const std::optional<BlockHandle> hot = e.volume().cached(kHot);
  ASSERT_TRUE(hot.has_value());
  std::vector<uint8_t> back(4096);
  constexpr uint64_t kLast = 47;
  for (uint64_t i = 1; i <= kLast; i++) {
    PBRICK_ASSERT_OK(e.write(pattern(i).data(), 4096, i * kBlock, false));
    const std::optional<BlockHandle> now = e.volume().cached(kHot);
    ASSERT_TRUE(now.has_value() && now->rkey == hot->rkey) << "the block in use was let go for block " << i;
    PBRICK_ASSERT_OK(e.read(back.data(), back.size(), kHot * kBlock));
    ASSERT_EQ(back, pattern(kHot)) << "after block " << i;
    if (i % 8 == 0) {
      std::set<uint64_t> mapped = mapped_blocks(brick);
      EXPECT_EQ(mapped.size(), std::min<uint64_t>(i + 1, 16)) << "after block " << i;
      EXPECT_EQ(mapped.count(kHot), 1u) << "after block " << i;
    }
  }
  // Discarded blocks leave the count: four new ones then take their places
  // without letting any other block go.
  const std::set<uint64_t> before = mapped_blocks(brick);
  ASSERT_EQ(before.size(), 16u);
  PBRICK_ASSERT_OK(e.discard(4 * kBlock, (kLast - 3) * kBlock, false));
  std::set<uint64_t> kept = before;
  for (uint64_t i = kLast - 3; i <= kLast; i++) kept.erase(i);
  ASSERT_EQ(mapped_blocks(brick), kept);
  std::set<uint64_t> want = kept;
  for (uint64_t i = kLast + 1; i <= kLast + 4; i++) {
    PBRICK_ASSERT_OK(e.write(pattern(i).data(), 4096, i * kBlock, false));
    want.insert(i);
  }
  EXPECT_EQ(mapped_blocks(brick), want) << "a block was let go although discards had made room";
  for (uint64_t i = 1; i <= kLast + 4; i++) {
    PBRICK_ASSERT_OK(e.read(back.data(), back.size(), i * kBlock));
    if (i > kLast - 4 && i <= kLast) {
      EXPECT_EQ(back, std::vector<uint8_t>(4096, 0)) << "discarded block " << i;
    } else {
      EXPECT_EQ(back, pattern(i)) << "block " << i;
    }
  }
  EXPECT_LE(mapped_blocks(brick).size(), 16u);
}

}  // namespace
}  // namespace pbrick
