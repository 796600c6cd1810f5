// The gateway's bound on mapped blocks (VolumeOptions::max_mapped): at most N
// blocks stay mapped on a brick, and mapping one more lets go of the least
// recently used, so the brick may demote it (docs/config.md, max_mapped).
#include <gtest/gtest.h>

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

TEST(MaxMapped, KeepsAtMostNMappedAndLetsGoOfTheLeastRecentlyUsed) {
  TestDir dir;
  PBRICK_ASSERT_OK(dir.make("maxmapped"));
  {
    TestBrick brick(dir.path());
    PBRICK_ASSERT_OK(brick.start());
    VolumeOptions vo;
    vo.bricks.push_back(brick.client());
    vo.size = 32 * kBlock;
    vo.max_mapped = 16;
    auto volume = Volume::Open(vo);
    ASSERT_TRUE(volume.ok()) << volume.error().message();
    auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 16});
    ASSERT_TRUE(engine.ok()) << engine.error().message();
    std::vector<uint8_t> buf(4096, 0x5a);
    // Blocks 0..19 written in turn: the first four were let go.
    for (uint64_t i = 0; i < 20; i++) PBRICK_ASSERT_OK((*engine)->write(buf.data(), buf.size(), i * kBlock, false));
    std::set<uint64_t> want;
    for (uint64_t i = 4; i < 20; i++) want.insert(i);
    EXPECT_EQ(mapped_blocks(brick), want);
    // Block 4 used again, then a new block: 5 is now the least recently used.
    PBRICK_ASSERT_OK((*engine)->read(buf.data(), buf.size(), 4 * kBlock));
    PBRICK_ASSERT_OK((*engine)->write(buf.data(), buf.size(), 20 * kBlock, false));
    want.erase(5);
    want.insert(20);
    EXPECT_EQ(mapped_blocks(brick), want);
    // A block let go is mapped again when used, its data intact.
    std::vector<uint8_t> back(4096);
    PBRICK_ASSERT_OK((*engine)->read(back.data(), back.size(), 0));
    EXPECT_EQ(back, buf);
    EXPECT_EQ(mapped_blocks(brick).size(), 16u);
    EXPECT_EQ(mapped_blocks(brick).count(0), 1u);
  }
}

}  // namespace
}  // namespace pbrick
