// Tiering: the slow tier's binding to its store, allocation across tiers, the
// move protocol at every crash point, and the data mover over real files.
#include "target/tiering.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/crc32c.h"
#include "common/units.h"
#include "target/fault_injection_region.h"
#include "target/handle_table.h"
#include "target/pmem_region.h"
#include "target/slow_tier.h"
#include "target/store.h"

namespace pbrick {
namespace {

constexpr uint64_t kRegion = 8ull << 20;  // 3 slots

// A region over an image the test owns, calling `event` before and after each
// persistence step: the crash points of an operation. With `durable`, it also
// keeps what a power cut would leave of the image: the bytes persist(),
// store_word_persist() and zero() made durable, and the copy_nodrain()s a
// drain() (or a persist(), which drains) completed; stores through base()
// reach it only through those.
class SnapRegion final : public PmemRegion {
 public:
  SnapRegion(std::vector<uint8_t>* image, std::function<void()>* event, std::vector<uint8_t>* durable = nullptr)
      : image_(image), event_(event), durable_(durable) {}
  uint8_t* base() override { return image_->data(); }
  uint64_t size() const override { return image_->size(); }
  bool is_pmem() const override { return false; }
  void copy_nodrain(uint64_t off, const void* src, size_t len) override {
    std::memcpy(base() + off, src, len);
    pending_.emplace_back(off, len);
  }
  void drain() override { complete_drain(); }
  Status persist(uint64_t off, uint64_t len) override {
    fire();
    make_durable(off, len);
    complete_drain();
    return Status::Ok();
  }
  Status store_word_persist(uint64_t off, uint64_t value) override {
    fire();
    std::memcpy(base() + off, &value, sizeof value);
    make_durable(off, sizeof value);
    fire();
    return Status::Ok();
  }
  Status zero(uint64_t off, uint64_t len) override {
    fire();
    std::memset(base() + off, 0, len);
    make_durable(off, len);
    fire();
    return Status::Ok();
  }
  int sync_fd() const override { return -1; }

 private:
  void fire() {
    if (*event_) (*event_)();
  }
  void make_durable(uint64_t off, uint64_t len) {
    if (durable_ != nullptr) std::memcpy(durable_->data() + off, base() + off, len);
  }
  void complete_drain() {
    for (const auto& [off, len] : pending_) make_durable(off, len);
    pending_.clear();
  }
  std::vector<uint8_t>* image_;
  std::function<void()>* event_;
  std::vector<uint8_t>* durable_;
  std::vector<std::pair<uint64_t, uint64_t>> pending_;  // copy_nodrain()s not drained yet
};

// Two tiers' images, and what a power cut would leave of each (SnapRegion's
// `durable`): crash points take the durable ones.
struct Images {
  std::vector<uint8_t> fast = std::vector<uint8_t>(kRegion);
  std::vector<uint8_t> slow = std::vector<uint8_t>(kRegion);
  std::vector<uint8_t> fast_durable = std::vector<uint8_t>(kRegion);
  std::vector<uint8_t> slow_durable = std::vector<uint8_t>(kRegion);
  std::function<void()> event;
};

Result<std::unique_ptr<Store>> open(Images& im, bool with_slow = true) {
  return Store::Open(std::make_unique<SnapRegion>(&im.fast, &im.event, &im.fast_durable), StoreOpenOptions{},
                     with_slow ? std::make_unique<SnapRegion>(&im.slow, &im.event, &im.slow_durable) : nullptr);
}

uint64_t va(int i) { return static_cast<uint64_t>(i) * kBlockSize; }

// Fills block `vaddr` (on the fast tier) with a pattern; returns its checksum.
uint32_t fill(Store& s, uint64_t vaddr, uint8_t seed) {
  auto off = s.slot_offset(vaddr);
  EXPECT_TRUE(off) << off.error().message();
  uint8_t* p = s.region().base() + *off;
  for (uint64_t i = 0; i < kBlockSize; i += 4096) std::memset(p + i, seed + i / 4096, 4096);
  // Durable, as a client's writes are once a sync point acknowledged them.
  EXPECT_TRUE(s.region().persist(*off, kBlockSize));
  return crc32c(p, kBlockSize);
}

// The checksum of block `vaddr` wherever it is, read from its tier's medium.
uint32_t sum(Store& s, uint64_t vaddr) {
  auto tier = s.tier_of(vaddr);
  EXPECT_TRUE(tier);
  if (*tier == kTierFast) return crc32c(s.region().base() + *s.slot_offset(vaddr), kBlockSize);
  // A slow block: move it up to read it, as MAP does.
  auto m = s.begin_move(vaddr, kTierFast);
  EXPECT_TRUE(m) << m.error().message();
  s.region().copy_nodrain(m->to_offset, s.slow_tier()->region().base() + m->from_offset, kBlockSize);
  EXPECT_TRUE(s.commit_move(vaddr));
  return crc32c(s.region().base() + *s.slot_offset(vaddr), kBlockSize);
}

// The mover's steps, done synchronously: copy, persist the copy, flip.
// `mid_copy` (if set) runs with half of the copy made: a crash point too.
std::function<void()> mid_copy;
Status move(Store& s, uint64_t vaddr, uint8_t to) {
  auto m = s.begin_move(vaddr, to);
  if (!m) return m.error();
  PmemRegion& from = m->from_tier == kTierFast ? s.region() : s.slow_tier()->region();
  PmemRegion& dest = to == kTierFast ? s.region() : s.slow_tier()->region();
  dest.copy_nodrain(m->to_offset, from.base() + m->from_offset, kBlockSize / 2);
  if (mid_copy) mid_copy();
  dest.copy_nodrain(m->to_offset + kBlockSize / 2, from.base() + m->from_offset + kBlockSize / 2, kBlockSize / 2);
  PBRICK_TRY(dest.persist(m->to_offset, kBlockSize));
  return s.commit_move(vaddr);
}

TEST(SlowTier, CapacityIsFastPlusSlowAndAllocSpillsToSlow) {
  Images im;
  auto s = open(im);
  ASSERT_TRUE(s) << s.error().message();
  StoreStats st = (*s)->stats();
  EXPECT_EQ(st.fast_capacity_blocks, 3u);
  EXPECT_EQ(st.slow_capacity_blocks, 3u);
  EXPECT_EQ(st.capacity_blocks, 6u);
  // All but the last slot: it is kept for moves (one must go down before
  // another can come up).
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*s)->alloc(va(i))) << i;
  EXPECT_EQ(*(*s)->tier_of(va(2)), kTierFast);
  EXPECT_EQ(*(*s)->tier_of(va(3)), kTierSlow);
  Status last = (*s)->alloc(va(5));
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.error().errnum(), ENOSPC);
  EXPECT_NE(last.error().message().find("kept for moving blocks between the tiers"), std::string::npos)
      << last.error().message();
  EXPECT_EQ((*s)->stats().free_blocks, 1u);
  // A slow block cannot be mapped until promoted.
  EXPECT_EQ((*s)->pin(va(3)).error().errnum(), EAGAIN);
  EXPECT_EQ((*s)->slot_offset(va(3)).error().errnum(), EAGAIN);
  proto::ListReply l = (*s)->list(0, 16);
  ASSERT_EQ(l.extents.size(), 2u);
  EXPECT_EQ(l.extents[0].tier, 0u);
  EXPECT_EQ(l.extents[0].block_count, 3u);
  EXPECT_EQ(l.extents[1].tier, 1u);
  EXPECT_EQ(l.extents[1].block_count, 2u);
  // Reopened, the blocks are where they were.
  s->reset();
  auto again = open(im);
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(*(*again)->tier_of(va(4)), kTierSlow);
  EXPECT_EQ((*again)->stats().allocated_blocks, 5u);
  // A slow block is freed like any other; its slot is reused.
  ASSERT_TRUE((*again)->free(va(4)));
  ASSERT_TRUE((*again)->alloc(va(9)));
  EXPECT_EQ(*(*again)->tier_of(va(9)), kTierSlow);
}

TEST(SlowTier, RefusesASlowTierOfAnotherStore) {
  Images a;
  ASSERT_TRUE(open(a));
  Images b;
  ASSERT_TRUE(open(b));
  b.slow = a.slow;  // b's brick given a's slow tier
  auto s = open(b);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().errnum(), EUCLEAN);
  EXPECT_NE(s.error().message().find("belongs to the store"), std::string::npos) << s.error().message();
}

TEST(SlowTier, RefusesToOpenWithoutTheSlowTierItsBlocksAreOn) {
  Images im;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->alloc(va(0)));
    ASSERT_TRUE(move(**s, va(0), kTierSlow));
  }
  auto without = open(im, /*with_slow=*/false);
  ASSERT_FALSE(without);
  EXPECT_NE(without.error().message().find("the store has a slow tier (superblock flag)"), std::string::npos)
      << without.error().message();
  std::fill(im.slow.begin(), im.slow.end(), 0);  // a blank file in its place
  auto blank = open(im);
  ASSERT_FALSE(blank);
  EXPECT_NE(blank.error().message().find("blank"), std::string::npos) << blank.error().message();
}

// A slow tier whose superblock alone was zeroed is not a blank one when its
// map holds entries: it is not formatted over, and with its superblock back
// the store opens with every block.
TEST(SlowTier, AZeroedSuperblockOverItsMapIsNotFormatted) {
  Images im;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*s)->alloc(va(i))) << i;  // 3 fast slots: entry 3 in the slow map
  }
  std::vector<uint8_t> superblock(im.slow.begin(), im.slow.begin() + 4096);
  std::fill(im.slow.begin(), im.slow.begin() + 4096, 0);
  auto wiped = open(im);
  ASSERT_FALSE(wiped);
  EXPECT_EQ(wiped.error().errnum(), EUCLEAN);
  EXPECT_NE(wiped.error().message().find("slow tier whose superblock was overwritten"), std::string::npos)
      << wiped.error().message();
  std::copy(superblock.begin(), superblock.end(), im.slow.begin());
  auto again = open(im);
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ((*again)->stats().allocated_blocks, 4u) << "nothing was formatted";
}

// UNMAP of a block this connection has not mapped is ENOENT (docs/protocol.md
// §6) on either tier, not the EAGAIN a MAP of a slow block gets.
TEST(SlowTier, UnmapOfASlowBlockThisConnectionDidNotMapIsENOENT) {
  Images im;
  auto s = open(im);
  ASSERT_TRUE(s);
  ASSERT_TRUE((*s)->alloc(va(0)));
  ASSERT_TRUE(move(**s, va(0), kTierSlow));
  HandleTable table{**s, nullptr};
  std::vector<uint32_t> owned;
  Status st = table.unmap(owned, va(0));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOENT);
  EXPECT_NE(st.error().message().find("not mapped by this connection"), std::string::npos) << st.error().message();
  EXPECT_EQ(table.unmap(owned, va(1)).error().errnum(), ENOENT) << "not allocated";
}

// The map spans both tiers: with the fast map's entries used up, a block's
// entry is in the slow tier's map whichever tier holds its data. A blank
// slow tier in place of the store's own is refused, and left blank, even
// when no block's data is on the slow tier.
TEST(SlowTier, RefusesABlankSlowTierInPlaceOfItsOwn) {
  Images im;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*s)->alloc(va(i))) << i;  // 3 fast slots: entry 3 in the slow map
    ASSERT_TRUE((*s)->free(va(3)));
    ASSERT_TRUE((*s)->free(va(0)));
    ASSERT_TRUE((*s)->alloc(va(5)));  // the free fast slot, through map entry 0 or 3
    ASSERT_TRUE((*s)->alloc(va(6)));
    for (int i : {1, 2, 5, 6}) ASSERT_TRUE((*s)->tier_of(va(i))) << i;
  }
  std::fill(im.slow.begin(), im.slow.end(), 0);
  auto blank = open(im);
  ASSERT_FALSE(blank);
  EXPECT_EQ(blank.error().errnum(), EUCLEAN);
  EXPECT_NE(blank.error().message().find("the slow tier given is blank"), std::string::npos) << blank.error().message();
  EXPECT_TRUE(std::all_of(im.slow.begin(), im.slow.end(), [](uint8_t b) { return b == 0; })) << "formatted anyway";
}

// The same for a slow tier whose own format was cut short (its magic word
// still the format marker): it would be formatted as silently as a blank one.
TEST(SlowTier, RefusesASlowTierWhoseFormatWasCutShortInPlaceOfItsOwn) {
  Images im;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*s)->alloc(va(i))) << i;  // entry 3 in the slow map
  }
  std::fill(im.slow.begin(), im.slow.end(), 0);
  const char marker[8] = {'P', 'B', 'R', 'K', 'S', 'I', 'N', 'I'};  // docs/layout.md, slow tier superblock
  std::copy(marker, marker + 8, im.slow.begin());
  const std::vector<uint8_t> cut_short = im.slow;
  auto refused = open(im);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().errnum(), EUCLEAN);
  EXPECT_NE(refused.error().message().find("never completely formatted"), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(im.slow, cut_short) << "formatted anyway";
}

// A store check without the slow tier passes over blocks on it only when the
// store has one: in a store whose superblock says it never had a slow tier,
// an entry naming it is a problem (the brick refuses to open such a store).
TEST(SlowTier, ACheckOfAStoreWithoutTheFlagReportsABlockOnTheSlowTier) {
  Images im;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->alloc(va(0)));
    ASSERT_TRUE(move(**s, va(0), kTierSlow));
  }
  StoreCheckReport flagged = Store::Check(im.fast.data(), im.fast.size());
  EXPECT_TRUE(flagged.map_problems.empty());
  EXPECT_TRUE(flagged.slow_unchecked);
  // The flag cleared, the superblock's checksum (its last word) made anew.
  ASSERT_EQ(im.fast[12], 1);
  im.fast[12] = 0;
  const uint32_t crc = crc32c(im.fast.data(), 4092);
  std::memcpy(im.fast.data() + 4092, &crc, 4);
  ASSERT_FALSE(open(im, /*with_slow=*/false)) << "the brick opens it";
  StoreCheckReport report = Store::Check(im.fast.data(), im.fast.size());
  EXPECT_EQ(report.superblock_error, "");
  EXPECT_FALSE(report.slow_unchecked);
  ASSERT_EQ(report.map_problems.size(), 1u);
  EXPECT_NE(report.map_problems[0].what.find("on the slow tier, but the brick has no slow tier"), std::string::npos)
      << report.map_problems[0].what;
}

// A store check given a slow tier the store has not attached yet - blank,
// or its format cut short - checks the store and says so, as the brick
// would format that slow tier at its start; given such a slow tier in
// place of its own, a store that has one is not clean.
TEST(SlowTier, ACheckWithASlowTierNotAttachedYetPassesTheStore) {
  Images im;
  ASSERT_TRUE(Store::Open(std::make_unique<SnapRegion>(&im.fast, &im.event), StoreOpenOptions{}));
  const char marker[8] = {'P', 'B', 'R', 'K', 'S', 'I', 'N', 'I'};
  for (bool cut_short : {false, true}) {
    std::fill(im.slow.begin(), im.slow.end(), 0);
    if (cut_short) std::copy(marker, marker + 8, im.slow.begin());
    StoreCheckReport report = Store::Check(im.fast.data(), im.fast.size(), im.slow.data(), im.slow.size());
    EXPECT_TRUE(report.clean()) << report.superblock_error;
    EXPECT_TRUE(report.slow_not_attached);
    EXPECT_FALSE(report.slow_checked);
  }
  ASSERT_TRUE(open(im));  // attaches (formats) the slow tier: the flag is set
  std::fill(im.slow.begin(), im.slow.end(), 0);
  StoreCheckReport report = Store::Check(im.fast.data(), im.fast.size(), im.slow.data(), im.slow.size());
  EXPECT_FALSE(report.clean());
  EXPECT_FALSE(report.slow_not_attached);
}

// Attaching a slow tier sets a superblock flag with two stores (checksum, then
// flag word): a crash between them leaves a store that still opens, as having
// the flag, and only with its slow tier.
TEST(SlowTier, FlagSurvivesACrashBetweenItsTwoStores) {
  Images im;
  ASSERT_TRUE(Store::Open(std::make_unique<SnapRegion>(&im.fast, &im.event, &im.fast_durable), StoreOpenOptions{}));
  EXPECT_EQ(im.fast[12], 0);  // flags
  std::vector<std::vector<uint8_t>> crashes;
  im.event = [&] { crashes.push_back(im.fast_durable); };
  ASSERT_TRUE(open(im));
  im.event = nullptr;
  EXPECT_EQ(im.fast[12], 1);
  int refused = 0;
  for (const auto& fast : crashes) {
    Images c;
    c.fast = fast;
    c.slow = im.slow;
    auto with = open(c);
    ASSERT_TRUE(with) << with.error().message();
    EXPECT_EQ(c.fast[12], 1);
    c.fast = fast;
    if (!open(c, /*with_slow=*/false)) ++refused;
  }
  // Once the checksum word is written (the last crash points), the store
  // needs its slow tier.
  EXPECT_GE(refused, 1);
}

TEST(SlowTier, DemotionCandidateIsTheLeastRecentlyUnmapped) {
  Images im;
  auto s = open(im);
  ASSERT_TRUE(s);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*s)->alloc(va(i)));
  EXPECT_EQ(*(*s)->demotion_candidate(), va(0));
  ASSERT_TRUE((*s)->pin(va(0)));
  EXPECT_EQ(*(*s)->demotion_candidate(), va(1));
  ASSERT_TRUE((*s)->pin(va(1)));
  ASSERT_TRUE((*s)->pin(va(2)));
  EXPECT_FALSE((*s)->demotion_candidate());
  (*s)->unpin(va(2));
  (*s)->unpin(va(0));
  EXPECT_EQ(*(*s)->demotion_candidate(), va(2));
  // A mapped block never moves.
  EXPECT_EQ((*s)->begin_move(va(1), kTierSlow).error().errnum(), EBUSY);
  // A moving block is neither mappable nor freeable, and an aborted move leaves it.
  ASSERT_TRUE((*s)->begin_move(va(2), kTierSlow));
  EXPECT_EQ((*s)->pin(va(2)).error().errnum(), EAGAIN);
  EXPECT_EQ((*s)->free(va(2)).error().errnum(), EBUSY);
  (*s)->abort_move(va(2));
  EXPECT_EQ(*(*s)->tier_of(va(2)), kTierFast);
  EXPECT_EQ((*s)->stats().slow_free_blocks, 3u);
  ASSERT_TRUE((*s)->pin(va(2)));
}

// Every crash point of a demotion and of a promotion: an image taken before and
// after every persistence step opens, holds every block exactly once with its
// data, and keeps working.
void crash_points(bool promote) {
  Images im;
  std::map<uint64_t, uint32_t> sums;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE((*s)->alloc(va(i)));
      sums[va(i)] = fill(**s, va(i), static_cast<uint8_t>(i * 7 + 1));
    }
    ASSERT_TRUE((*s)->alloc(va(3)));  // on the slow tier: zeros
    sums[va(3)] = crc32c(std::vector<uint8_t>(kBlockSize).data(), kBlockSize);
    if (promote) {
      ASSERT_TRUE(move(**s, va(1), kTierSlow));  // a free fast slot to promote into
    }
  }
  const uint64_t target = promote ? va(3) : va(0);
  std::vector<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> crashes;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    im.event = [&] { crashes.emplace_back(im.fast_durable, im.slow_durable); };
    mid_copy = im.event;
    ASSERT_TRUE(move(**s, target, promote ? kTierFast : kTierSlow));
    im.event = nullptr;
    mid_copy = nullptr;
  }
  // Half copied, copy persisted, before and after the flip.
  ASSERT_EQ(crashes.size(), 4u);
  int old_seen = 0, new_seen = 0;
  for (size_t k = 0; k < crashes.size(); ++k) {
    SCOPED_TRACE("crash point " + std::to_string(k));
    Images c;
    c.fast = crashes[k].first;
    c.slow = crashes[k].second;
    auto s = open(c);
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ((*s)->stats().allocated_blocks, 4u);
    EXPECT_EQ((*s)->stats().free_blocks, 2u);
    const uint8_t tier = *(*s)->tier_of(target);
    ((tier == kTierSlow) != promote ? old_seen : new_seen)++;
    for (auto [vaddr, crc] : sums) {
      if ((*s)->stats().fast_free_blocks == 0 && *(*s)->tier_of(vaddr) == kTierSlow) {
        ASSERT_TRUE(move(**s, *(*s)->demotion_candidate(), kTierSlow));
      }
      EXPECT_EQ(sum(**s, vaddr), crc) << format_hex(vaddr);
    }
    // It keeps working: a new block, and every block freed.
    ASSERT_TRUE((*s)->alloc(va(20)));
    for (auto [vaddr, crc] : sums) ASSERT_TRUE((*s)->free(vaddr));
    EXPECT_EQ((*s)->stats().free_blocks, 5u);
  }
  EXPECT_GT(old_seen, 0);
  EXPECT_GT(new_seen, 0);
}

TEST(TierMoveCrash, DemotionAtEveryCrashPoint) { crash_points(/*promote=*/false); }
TEST(TierMoveCrash, PromotionAtEveryCrashPoint) { crash_points(/*promote=*/true); }

// A batch as the mover makes it (target/tiering.h): every copy, then one sync
// of the destination covering them all, then the flips one by one. Every
// crash point - mid-copy, before and after the sync, between the flips -
// leaves each block exactly once with its data; some crash points have one
// block moved and the other not.
void batch_crash_points(bool promote) {
  Images im;
  std::map<uint64_t, uint32_t> sums;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE((*s)->alloc(va(i)));
      sums[va(i)] = fill(**s, va(i), static_cast<uint8_t>(i * 5 + 2));
    }
    if (promote) {  // two blocks down, so that two come up in one batch
      ASSERT_TRUE(move(**s, va(0), kTierSlow));
      ASSERT_TRUE(move(**s, va(1), kTierSlow));
    }
  }
  const std::vector<uint64_t> batch = {va(0), va(1)};
  const uint8_t to = promote ? kTierFast : kTierSlow;
  std::vector<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> crashes;
  {
    auto s = open(im);
    ASSERT_TRUE(s);
    im.event = [&] { crashes.emplace_back(im.fast_durable, im.slow_durable); };
    std::vector<Store::Move> moves;
    for (uint64_t v : batch) {
      auto m = (*s)->begin_move(v, to);
      ASSERT_TRUE(m) << m.error().message();
      moves.push_back(*m);
    }
    PmemRegion& from = promote ? (*s)->slow_tier()->region() : (*s)->region();
    PmemRegion& dest = promote ? (*s)->region() : (*s)->slow_tier()->region();
    for (const auto& m : moves) dest.copy_nodrain(m.to_offset, from.base() + m.from_offset, kBlockSize / 2);
    im.event();  // mid-copy
    for (const auto& m : moves) {
      dest.copy_nodrain(m.to_offset + kBlockSize / 2, from.base() + m.from_offset + kBlockSize / 2, kBlockSize / 2);
    }
    ASSERT_TRUE(dest.persist(0, dest.size()));  // the one sync
    for (uint64_t v : batch) ASSERT_TRUE((*s)->commit_move(v));
    im.event = nullptr;
  }
  // Mid-copy, the sync, before and after each of the two flips.
  ASSERT_EQ(crashes.size(), 6u);
  int none = 0, some = 0, all = 0;
  for (size_t k = 0; k < crashes.size(); ++k) {
    SCOPED_TRACE("crash point " + std::to_string(k));
    Images c;
    c.fast = crashes[k].first;
    c.slow = crashes[k].second;
    auto s = open(c);
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ((*s)->stats().allocated_blocks, 3u);
    EXPECT_EQ((*s)->stats().free_blocks, 3u);
    int moved = 0;
    for (uint64_t v : batch) moved += *(*s)->tier_of(v) == to ? 1 : 0;
    (moved == 0 ? none : moved == 2 ? all : some)++;
    for (auto [vaddr, crc] : sums) {
      if ((*s)->stats().fast_free_blocks == 0 && *(*s)->tier_of(vaddr) == kTierSlow) {
        ASSERT_TRUE(move(**s, *(*s)->demotion_candidate(), kTierSlow));
      }
      EXPECT_EQ(sum(**s, vaddr), crc) << format_hex(vaddr);
    }
    ASSERT_TRUE((*s)->alloc(va(20)));
    for (auto [vaddr, crc] : sums) ASSERT_TRUE((*s)->free(vaddr));
    EXPECT_EQ((*s)->stats().free_blocks, 5u);
  }
  EXPECT_GT(none, 0);
  EXPECT_GT(some, 0);
  EXPECT_GT(all, 0);
}

TEST(TierMoveCrash, DemotionBatchAtEveryCrashPoint) { batch_crash_points(/*promote=*/false); }
TEST(TierMoveCrash, PromotionBatchAtEveryCrashPoint) { batch_crash_points(/*promote=*/true); }

// A store of 16 MiB fast over 16 MiB slow, both files in a directory of the
// test's own (removed with what is in it when the test ends).
class TieredStore {
 public:
  explicit TieredStore(const std::string& name)
      : dir_(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    auto fast = open_pmem_region({dir_ + "/fast", 16ull << 20, true});
    auto slow = open_pmem_region({dir_ + "/slow", 16ull << 20, true});
    if (!fast || !slow) {
      error_ = (!fast ? fast.error() : slow.error()).message();
      return;
    }
    auto s = Store::Open(std::move(*fast), StoreOpenOptions{}, std::move(*slow));
    if (!s) {
      error_ = s.error().message();
      return;
    }
    store_ = std::move(*s);
  }
  ~TieredStore() {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Empty when the store opened.
  const std::string& error() const { return error_; }
  Store& store() { return *store_; }
  std::string slow_path() const { return dir_ + "/slow"; }

 private:
  std::string dir_;
  std::string error_;
  std::unique_ptr<Store> store_;
};

// Runs `t`'s completions until nothing moves.
void wait_until_idle(Tiering& t) {
  for (int i = 0; i < 1000 && t.busy(); ++i) {
    pollfd p{t.event_fd(), POLLIN, 0};
    ASSERT_GE(::poll(&p, 1, 5000), 0);
    t.on_event();
  }
  ASSERT_FALSE(t.busy());
}

// Runs `t`'s completions until it started a sync of `region` beyond `n` (none
// coming fails the test), then a while longer: a flip that waits for that
// sync must not come meanwhile.
void run_past_a_held_sync(Tiering& t, const FaultInjectionRegion& region, uint64_t n) {
  for (int i = 0; i < 100 && region.syncs_started() <= n; ++i) {
    pollfd p{t.event_fd(), POLLIN, 0};
    ASSERT_GE(::poll(&p, 1, 100), 0);
    t.on_event();
  }
  ASSERT_GT(region.syncs_started(), n) << "no sync of the copy";
  for (int i = 0; i < 20; ++i) {
    pollfd p{t.event_fd(), POLLIN, 0};
    ::poll(&p, 1, 5);
    t.on_event();
  }
}

// The data mover over real files on a disk file system (O_DIRECT): background
// demotion down to the watermark, then promotion on MAP, data intact.
TEST(Tiering, DemotesInTheBackgroundAndPromotesOnMap) {
  TieredStore tiered("pbrick-tiering");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  const uint64_t fast_slots = store.stats().fast_capacity_blocks;
  std::map<uint64_t, uint32_t> sums;
  for (uint64_t i = 0; i < fast_slots; ++i) {
    ASSERT_TRUE(store.alloc(va(static_cast<int>(i))));
    sums[va(static_cast<int>(i))] = fill(store, va(static_cast<int>(i)), static_cast<uint8_t>(i + 3));
  }
  std::set<uint64_t> data_slots;  // every fast slot holds one of them now
  for (auto [vaddr, crc] : sums) data_slots.insert(*store.slot_offset(vaddr));
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 2, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  int wakes = 0;
  (*t)->set_wake([&] { ++wakes; });
  auto wait_idle = [&] { wait_until_idle(**t); };
  (*t)->tick();
  wait_idle();
  EXPECT_EQ(store.stats().fast_free_blocks, 2u);
  // The fast slots the demotions freed still hold the blocks' bytes: scribbled
  // over, so that a promotion into them that copied nothing fails the checks.
  for (uint64_t off : data_slots) {
    bool used = false;
    for (auto [vaddr, crc] : sums) used = used || (*store.tier_of(vaddr) == kTierFast && *store.slot_offset(vaddr) == off);
    if (!used) std::memset(store.region().base() + off, 0xAB, kBlockSize);
  }
  EXPECT_EQ((*t)->demotions(), 2u);
  EXPECT_EQ((*t)->batches(), 1u);  // both copies, then one fdatasync
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);  // least recently unmapped first
  EXPECT_EQ(*store.tier_of(va(1)), kTierSlow);
  // MAP of a slow block waits for its promotion.
  for (uint64_t i = 2; i < fast_slots; ++i) ASSERT_TRUE(store.pin(va(static_cast<int>(i))));
  // Two MAPs: the first starts a batch at once, the second waits for the
  // next (a batch takes what is queued when its direction is free).
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait);
  EXPECT_EQ((*t)->prepare_map(va(1)), Tiering::MapReadiness::kWait);
  wait_idle();
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kReady);
  EXPECT_EQ((*t)->prepare_map(va(1)), Tiering::MapReadiness::kReady);
  EXPECT_EQ((*t)->promotions(), 2u);
  EXPECT_EQ((*t)->batches(), 3u);
  EXPECT_GT(wakes, 0);
  // Fill the fast tier with mapped blocks: a slow block can no longer come up.
  ASSERT_TRUE(store.pin(va(0)));
  ASSERT_TRUE(store.pin(va(1)));
  ASSERT_TRUE(store.alloc(va(40)));
  EXPECT_EQ(*store.tier_of(va(40)), kTierSlow);
  EXPECT_EQ((*t)->prepare_map(va(40)), Tiering::MapReadiness::kNoFastSlot);
  for (auto [vaddr, crc] : sums) {
    EXPECT_EQ(crc32c(store.region().base() + *store.slot_offset(vaddr), kBlockSize), crc) << format_hex(vaddr);
  }
  t->reset();
}

// Two MAPs race for the one fast slot not mapped. The block promoted for the
// first must not go straight back down to make room for the second before
// its own MAP is served: each promotion would demote the other's block, for
// ever, and neither MAP would be answered. The second is told there is no
// fast slot (its MAP answers ENOBUFS; the gateway unmaps and retries).
TEST(Tiering, ABlockPromotedForAMapIsNotDemotedForAnotherBeforeItsMapIsServed) {
  TieredStore tiered("pbrick-tiering-race");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  const uint64_t fast_slots = store.stats().fast_capacity_blocks;
  for (uint64_t i = 0; i < fast_slots; ++i) ASSERT_TRUE(store.alloc(va(static_cast<int>(i))));
  const uint64_t x = va(40), y = va(41);
  ASSERT_TRUE(store.alloc(x));
  ASSERT_TRUE(store.alloc(y));
  ASSERT_EQ(*store.tier_of(x), kTierSlow);
  ASSERT_EQ(*store.tier_of(y), kTierSlow);
  // Every fast block mapped but va(0), the only one free to go down.
  for (uint64_t i = 1; i < fast_slots; ++i) ASSERT_TRUE(store.pin(va(static_cast<int>(i))));
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 0, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_EQ((*t)->prepare_map(x), Tiering::MapReadiness::kWait);
  EXPECT_EQ((*t)->prepare_map(y), Tiering::MapReadiness::kWait);
  for (int i = 0; i < 200 && (*t)->busy(); ++i) {
    pollfd p{(*t)->event_fd(), POLLIN, 0};
    ASSERT_GE(::poll(&p, 1, 5000), 0);
    (*t)->on_event();
  }
  ASSERT_FALSE((*t)->busy()) << "still moving after " << (*t)->promotions() << " promotions and "
                             << (*t)->demotions() << " demotions";
  EXPECT_EQ((*t)->promotions(), 1u);
  EXPECT_EQ((*t)->prepare_map(x), Tiering::MapReadiness::kReady) << "the first MAP's block went back down";
  EXPECT_EQ(*store.tier_of(y), kTierSlow);
  t->reset();
}

// Flips a bit of the location word of `vaddr`'s map entry on the medium, as
// a media error would: the block is quarantined from then on.
void damage_entry(Store& store, uint64_t vaddr) {
  uint8_t* map = store.region().base() + 4096;  // the map follows the superblock page
  for (uint64_t e = 0;; ++e) {
    ASSERT_LT(e, 4096u) << "no map entry for " << format_hex(vaddr);
    uint64_t key;
    std::memcpy(&key, map + 16 * e, 8);
    if (key != 0 && (key & ~(kBlockSize - 1)) == vaddr) {
      map[16 * e + 8] ^= 0x40;
      return;
    }
  }
}

// A block whose map entry stopped verifying (quarantined, EUCLEAN) cannot be
// moved. At the head of the demotion order it must not stop every demotion
// behind it; on the slow tier its MAP must report the damage, not a fast
// tier with no room.
TEST(Tiering, AQuarantinedBlockNeitherStopsDemotionsNorPassesForAFullFastTier) {
  TieredStore tiered("pbrick-tiering-quarantine");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  const uint64_t fast_slots = store.stats().fast_capacity_blocks;
  for (uint64_t i = 0; i < fast_slots; ++i) ASSERT_TRUE(store.alloc(va(static_cast<int>(i))));
  damage_entry(store, va(0));  // the first to go down
  ASSERT_TRUE(store.quarantined(va(0)));
  ASSERT_FALSE(store.quarantined(va(1)));
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 2, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  auto wait_idle = [&] { wait_until_idle(**t); };
  (*t)->tick();
  wait_idle();
  EXPECT_EQ((*t)->demotions(), 2u) << "demotion stopped at the quarantined block";
  EXPECT_EQ(store.stats().fast_free_blocks, 2u);
  EXPECT_EQ(*store.tier_of(va(0)), kTierFast);
  EXPECT_EQ(*store.tier_of(va(1)), kTierSlow);

  // va(1), on the slow tier, is damaged too: its MAP goes on to report it.
  damage_entry(store, va(1));
  EXPECT_EQ((*t)->prepare_map(va(1)), Tiering::MapReadiness::kReady);
  Status pinned = store.pin(va(1));
  ASSERT_FALSE(pinned.ok());
  EXPECT_EQ(pinned.error().errnum(), EUCLEAN) << pinned.error().message();
  t->reset();
}

// A brick allocated as full as it goes: a block on the slow tier still comes
// up for its MAP (one block goes down into the slot ALLOC keeps free, then
// this one up into the fast slot that leaves), with its data.
TEST(Tiering, OnAFullBrickASlowBlockStillComesUpForItsMap) {
  TieredStore tiered("pbrick-tiering-full");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  std::map<uint64_t, uint32_t> sums;
  int n = 0;
  for (;; ++n) {
    Status st = store.alloc(va(n));
    if (!st) {
      ASSERT_EQ(st.error().errnum(), ENOSPC) << st.error().message();
      break;
    }
    if (*store.tier_of(va(n)) == kTierFast) sums[va(n)] = fill(store, va(n), static_cast<uint8_t>(n + 1));
  }
  const uint64_t slow_block = va(n - 1);
  ASSERT_EQ(*store.tier_of(slow_block), kTierSlow);
  ASSERT_EQ(store.stats().free_blocks, 1u);
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 1, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_EQ((*t)->prepare_map(slow_block), Tiering::MapReadiness::kWait);
  for (int i = 0; i < 20 && (*t)->prepare_map(slow_block) == Tiering::MapReadiness::kWait; ++i) {
    wait_until_idle(**t);
  }
  EXPECT_EQ((*t)->prepare_map(slow_block), Tiering::MapReadiness::kReady);
  EXPECT_EQ(*store.tier_of(slow_block), kTierFast);
  EXPECT_TRUE(store.pin(slow_block));
  for (auto [vaddr, crc] : sums) {
    auto tier = store.tier_of(vaddr);
    ASSERT_TRUE(tier);
    if (*tier == kTierFast) {
      EXPECT_EQ(crc32c(store.region().base() + *store.slot_offset(vaddr), kBlockSize), crc) << format_hex(vaddr);
    }
  }
  t->reset();
}

// The slow tier cannot be read (here: its slots cut off the file, so every
// read comes back short). The MAP that waited for the promotion is told it
// failed (the brick answers EIO) instead of the promotion being queued again
// for ever; a later MAP tries again.
TEST(Tiering, AMapWhosePromotionFailsIsToldSoOnce) {
  TieredStore tiered("pbrick-tiering-badread");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  const uint64_t fast_slots = store.stats().fast_capacity_blocks;
  for (uint64_t i = 0; i < fast_slots; ++i) ASSERT_TRUE(store.alloc(va(static_cast<int>(i))));
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 2, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  (*t)->tick();
  wait_until_idle(**t);
  ASSERT_EQ(*store.tier_of(va(0)), kTierSlow);
  // Nothing else moves (a demotion would write the file out again).
  for (uint64_t i = 2; i < fast_slots; ++i) ASSERT_TRUE(store.pin(va(static_cast<int>(i))));
  // The slow tier's slots begin at 2 MiB (superblock and map padded to 2 MiB).
  ASSERT_EQ(::truncate(tiered.slow_path().c_str(), 2 << 20), 0);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait);
  wait_until_idle(**t);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kFailed);
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait) << "the next MAP tries again";
  wait_until_idle(**t);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kFailed);
  EXPECT_EQ((*t)->promotions(), 0u);
  t->reset();
}

// A tiered store whose fast tier is a FaultInjectionRegion (`pmem`: taken for
// persistent memory, else a file store) and whose slow tier is a file: every
// fast slot allocated, block 0 filled with `seed`'s pattern and demoted,
// blocks 2.. pinned, so the next promotion is block 0's, into one of the two
// free fast slots.
struct DemotedBlock {
  std::string dir;
  FaultInjectionRegion* fast = nullptr;
  std::unique_ptr<Store> store;
  std::unique_ptr<Tiering> tiering;
  uint32_t crc = 0;

  void set_up(const std::string& name, bool pmem, uint8_t seed) {
    dir = std::filesystem::temp_directory_path() / ("pbrick-tiering-" + name + "-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    auto fault = std::make_unique<FaultInjectionRegion>(make_memory_region(16ull << 20), pmem);
    fast = fault.get();
    auto slow = open_pmem_region({dir + "/slow", 16ull << 20, true});
    ASSERT_TRUE(slow) << slow.error().message();
    auto opened = Store::Open(std::move(fault), StoreOpenOptions{}, std::move(*slow));
    ASSERT_TRUE(opened) << opened.error().message();
    store = std::move(*opened);
    const uint64_t fast_slots = store->stats().fast_capacity_blocks;
    for (uint64_t i = 0; i < fast_slots; ++i) ASSERT_TRUE(store->alloc(va(static_cast<int>(i))));
    crc = fill(*store, va(0), seed);
    auto t = Tiering::Create(*store, TieringOptions{dir + "/slow", 2, 1ull << 30});
    ASSERT_TRUE(t) << t.error().message();
    tiering = std::move(*t);
    tiering->tick();
    wait_until_idle(*tiering);
    ASSERT_EQ(*store->tier_of(va(0)), kTierSlow);
    for (uint64_t i = 2; i < fast_slots; ++i) ASSERT_TRUE(store->pin(va(static_cast<int>(i))));
  }
  // A MAP of block 0 waits for its promotion, then finds it on the fast
  // tier with its bytes.
  void expect_a_map_promotes_block0() {
    EXPECT_EQ(tiering->prepare_map(va(0)), Tiering::MapReadiness::kWait);
    wait_until_idle(*tiering);
    EXPECT_EQ(tiering->prepare_map(va(0)), Tiering::MapReadiness::kReady);
    ASSERT_EQ(*store->tier_of(va(0)), kTierFast);
    EXPECT_EQ(sum(*store, va(0)), crc);
  }
  ~DemotedBlock() {
    tiering.reset();
    store.reset();
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
};

// The copy of a promotion succeeds but its flip (the map entry's store)
// cannot be made durable: the MAP waiting for it is told the promotion
// failed, as for a failed copy, instead of waiting while the same move is
// made and undone over and over; the slot it would have moved to is not
// offered again. Once the map can be written, a MAP promotes the block.
TEST(Tiering, AMapWhosePromotionCannotBeCommittedIsToldSo) {
  DemotedBlock d;
  ASSERT_NO_FATAL_FAILURE(d.set_up("badflip", /*pmem=*/true, 41));
  FaultInjectionRegion* fast = d.fast;
  Store& store = *d.store;
  auto* t = &d.tiering;

  const uint64_t fast_free = store.stats().fast_free_blocks;
  fast->fail(FaultInjectionRegion::Op::kStoreWord, EIO);  // va(0)'s map entry is in the fast region
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait);
  wait_until_idle(**t);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kFailed);
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);
  EXPECT_EQ((*t)->promotions(), 0u);
  // Neither the flip nor putting the old word back was durable: the medium
  // may name the fast slot for va(0), so no ALLOC may take it.
  EXPECT_EQ(store.stats().fast_free_blocks, fast_free - 1);

  fast->fail(FaultInjectionRegion::Op::kStoreWord, 0);
  d.expect_a_map_promotes_block0();
}

// The fast slot a promotion would copy into cannot be given space (a hole a
// zeroing left on a full file system: a copy through the mapping would be
// SIGBUS): the MAP is told the promotion failed, the block stays on the slow
// tier intact, and once there is space a MAP promotes it.
TEST(Tiering, APromotionWhoseSlotHasNoSpaceFailsItsMap) {
  DemotedBlock d;
  ASSERT_NO_FATAL_FAILURE(d.set_up("nospace", /*pmem=*/false, 43));
  FaultInjectionRegion* fast = d.fast;
  Store& store = *d.store;
  auto* t = &d.tiering;
  const uint64_t fast_free = store.stats().fast_free_blocks;

  fast->fail(FaultInjectionRegion::Op::kReserve, ENOSPC);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kFailed);
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);
  EXPECT_EQ((*t)->promotions(), 0u);
  EXPECT_LT(store.stats().fast_free_blocks, fast_free) << "the slots without space are kept aside";

  fast->fail(FaultInjectionRegion::Op::kReserve, 0);
  (*t)->tick();  // gives them their space and back
  EXPECT_EQ(store.stats().fast_free_blocks, fast_free);
  d.expect_a_map_promotes_block0();
}

// A promotion's flip waits for the sync of its copy: while that sync is held
// the map still names the slow slot (in memory and in the map's words); a
// sync that fails gives the promotion up, the block stays where it was; one
// that succeeds flips it.
TEST(Tiering, APromotionFlipsOnlyOnceItsCopyIsSynced) {
  DemotedBlock d;
  ASSERT_NO_FATAL_FAILURE(d.set_up("heldsync", /*pmem=*/false, 47));
  FaultInjectionRegion* fast = d.fast;
  Store& store = *d.store;
  auto* t = &d.tiering;
  const uint32_t crc = d.crc;
  auto slow_blocks_in_the_map = [&] { return Store::Check(fast->base(), fast->size()).slow_blocks; };
  const uint64_t slow_before = slow_blocks_in_the_map();
  ASSERT_GE(slow_before, 1u);

  fast->hold_syncs(true);
  uint64_t started = fast->syncs_started();
  ASSERT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait);
  ASSERT_NO_FATAL_FAILURE(run_past_a_held_sync(**t, *fast, started));
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow) << "flipped before its copy was durable";
  EXPECT_EQ(slow_blocks_in_the_map(), slow_before);
  fast->release_sync(EIO);
  wait_until_idle(**t);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kFailed);
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);
  EXPECT_EQ(slow_blocks_in_the_map(), slow_before);

  started = fast->syncs_started();
  ASSERT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kWait);
  ASSERT_NO_FATAL_FAILURE(run_past_a_held_sync(**t, *fast, started));
  EXPECT_EQ(*store.tier_of(va(0)), kTierSlow);
  fast->release_sync(0);
  wait_until_idle(**t);
  EXPECT_EQ((*t)->prepare_map(va(0)), Tiering::MapReadiness::kReady);
  EXPECT_EQ(*store.tier_of(va(0)), kTierFast);
  EXPECT_EQ(slow_blocks_in_the_map(), slow_before - 1);
  EXPECT_EQ(sum(store, va(0)), crc);
  fast->hold_syncs(false);
  t->reset();
}

// The same for a demotion, whose sync is the slow tier's fdatasync: while it
// is held the map still names the fast slot (in memory and in the map's
// words), a failed one gives that move up with the block on the fast tier
// intact, and one that succeeds flips it.
TEST(Tiering, ADemotionFlipsOnlyOnceItsCopyIsSynced) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("pbrick-tiering-demotesync-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto slow_file = open_pmem_region({dir + "/slow", 16ull << 20, true});
  ASSERT_TRUE(slow_file) << slow_file.error().message();
  auto fault = std::make_unique<FaultInjectionRegion>(std::move(*slow_file), /*pmem=*/false);
  FaultInjectionRegion* slow = fault.get();
  auto opened = Store::Open(make_memory_region(16ull << 20), StoreOpenOptions{}, std::move(fault));
  ASSERT_TRUE(opened) << opened.error().message();
  std::unique_ptr<Store> store = std::move(*opened);
  const uint64_t fast_slots = store->stats().fast_capacity_blocks;
  for (uint64_t i = 0; i < fast_slots; ++i) ASSERT_TRUE(store->alloc(va(static_cast<int>(i))));
  const uint32_t crc = fill(*store, va(0), 53);
  auto fast_slot = store->slot_offset(va(0));
  ASSERT_TRUE(fast_slot);
  // While the block moves, its bytes are read where they are.
  auto sum_in_fast_slot = [&] { return crc32c(store->region().base() + *fast_slot, kBlockSize); };
  for (uint64_t i = 1; i < fast_slots; ++i) ASSERT_TRUE(store->pin(va(static_cast<int>(i))));
  auto in_the_map = [&] { return Store::Check(store->region().base(), store->region().size()).slow_blocks; };
  ASSERT_EQ(in_the_map(), 0u);
  auto t = Tiering::Create(*store, TieringOptions{dir + "/slow", 2, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();

  slow->hold_syncs(true);
  uint64_t started = slow->syncs_started();
  (*t)->tick();
  ASSERT_NO_FATAL_FAILURE(run_past_a_held_sync(**t, *slow, started));
  EXPECT_EQ(*store->tier_of(va(0)), kTierFast) << "flipped before its copy was durable";
  EXPECT_EQ(in_the_map(), 0u);
  // The failed sync gives the move up (the slot goes back to the free list:
  // its copy succeeded) and pauses demotions for a second: nothing moves
  // down meanwhile, not even at a tick. Then the mover tries again, and
  // that sync is held too.
  started = slow->syncs_started();
  slow->release_sync(EIO);
  const auto failed_at = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    pollfd p{(*t)->event_fd(), POLLIN, 0};
    ::poll(&p, 1, 5);
    (*t)->on_event();
  }
  (*t)->tick();
  EXPECT_FALSE((*t)->busy()) << "a demotion started right after one failed";
  EXPECT_EQ(slow->syncs_started(), started);
  std::this_thread::sleep_until(failed_at + std::chrono::milliseconds(1100));
  (*t)->tick();
  ASSERT_NO_FATAL_FAILURE(run_past_a_held_sync(**t, *slow, started));
  EXPECT_EQ((*t)->demotions(), 0u);
  EXPECT_EQ(*store->tier_of(va(0)), kTierFast);
  EXPECT_EQ(in_the_map(), 0u);
  EXPECT_EQ(sum_in_fast_slot(), crc);
  slow->release_sync(0);
  wait_until_idle(**t);
  EXPECT_EQ((*t)->demotions(), 1u);
  EXPECT_EQ(*store->tier_of(va(0)), kTierSlow);
  EXPECT_EQ(in_the_map(), 1u);
  EXPECT_EQ(sum(*store, va(0)), crc);
  slow->hold_syncs(false);
  t->reset();
  store.reset();
  std::filesystem::remove_all(dir);
}

// Writes to the slow tier fail (here: beyond the process's file size limit).
// A failed demotion must not take the same slot again and again, for ever:
// each slot that failed is left alone until the brick restarts. Nor does it
// take the next free slot at once, which would use them all up: demotions
// pause after the failed batch. Every block stays on the fast tier intact,
// and a MAP of a slow block that needs room is told at once (EIO) rather
// than waiting for demotions that do not come.
TEST(Tiering, ASlowSlotThatCannotBeWrittenIsNotTriedAgainAndDemotionsPause) {
  TieredStore tiered("pbrick-tiering-badwrite");
  ASSERT_EQ(tiered.error(), "");
  Store& store = tiered.store();
  const uint64_t fast_slots = store.stats().fast_capacity_blocks;
  const uint64_t slow_slots = store.stats().slow_free_blocks;
  ASSERT_GT(slow_slots, 0u);
  std::map<uint64_t, uint32_t> sums;
  for (uint64_t i = 0; i < fast_slots; ++i) {
    ASSERT_TRUE(store.alloc(va(static_cast<int>(i))));
    sums[va(static_cast<int>(i))] = fill(store, va(static_cast<int>(i)), static_cast<uint8_t>(i + 7));
  }
  const uint64_t on_slow = va(static_cast<int>(fast_slots));
  ASSERT_TRUE(store.alloc(on_slow));  // the fast tier is full: it goes to the slow tier
  ASSERT_EQ(*store.tier_of(on_slow), kTierSlow);
  const uint64_t slow_free = store.stats().slow_free_blocks;
  auto t = Tiering::Create(store, TieringOptions{tiered.slow_path(), 2, 1ull << 30});
  ASSERT_TRUE(t) << t.error().message();
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit limit = old_limit;
  limit.rlim_cur = 2 << 20;  // below every slot of the slow tier: each write fails EFBIG
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  (*t)->tick();
  for (int i = 0; i < 200 && (*t)->busy(); ++i) {
    pollfd p{(*t)->event_fd(), POLLIN, 0};
    ASSERT_GE(::poll(&p, 1, 5000), 0);
    (*t)->on_event();
  }
  const bool settled = !(*t)->busy();
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_TRUE(settled) << "demotions kept failing";
  EXPECT_EQ((*t)->demotions(), 0u);
  const uint64_t withheld = slow_free - store.stats().slow_free_blocks;
  EXPECT_GE(withheld, 1u) << "a slot that failed is offered again";
  EXPECT_LE(withheld, Tiering::kMaxBatch) << "demotions went on after a batch failed";
  (*t)->tick();
  EXPECT_FALSE((*t)->busy()) << "a tick started a demotion during the pause";
  EXPECT_EQ((*t)->prepare_map(on_slow), Tiering::MapReadiness::kNoRoom);
  EXPECT_FALSE((*t)->busy());
  for (auto [vaddr, crc] : sums) {
    ASSERT_EQ(*store.tier_of(vaddr), kTierFast);
    EXPECT_EQ(crc32c(store.region().base() + *store.slot_offset(vaddr), kBlockSize), crc) << format_hex(vaddr);
  }
  t->reset();
}

}  // namespace
}  // namespace pbrick
