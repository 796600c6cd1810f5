// The handle table on its own, over an in-memory store (TCP-style handles:
// random rkeys and remote addresses; RDMA registration needs a device and is
// covered by the VM tier).
#include "target/handle_table.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>

#include "common/units.h"
#include "target/pmem_region.h"
#include "target/store.h"

namespace pbrick {
namespace {

constexpr uint64_t kA = 0;
constexpr uint64_t kB = kBlockSize;
constexpr uint64_t kUnallocated = 40 * kBlockSize;

std::unique_ptr<Store> open_store() {
  auto store = Store::Open(make_memory_region(32 * kBlockSize), StoreOpenOptions{});
  EXPECT_TRUE(store.ok()) << store.error().message();
  EXPECT_TRUE((*store)->alloc(kA).ok());
  EXPECT_TRUE((*store)->alloc(kB).ok());
  return std::move(*store);
}

class HandleTableTest : public ::testing::Test {
 protected:
  Result<proto::MapReply> map(uint32_t owner, std::vector<uint32_t>& owned, uint64_t vaddr, uint32_t flags) {
    proto::MapRequest req;
    req.vaddr = vaddr;
    req.map_flags = flags;
    return table_.map(owner, owned, req);
  }

  std::unique_ptr<Store> store_ = open_store();
  HandleTable table_{*store_, nullptr};
  std::vector<uint32_t> one_, two_, three_;  // three connections' handles
};

TEST_F(HandleTableTest, MapHandsOutAFreshRkeyAndAnAlignedRandomAddressAndPinsTheBlock) {
  std::set<uint32_t> rkeys;
  for (int i = 0; i < 8; i++) {
    auto r = map(1, one_, kA, proto::kMapWrite | proto::kMapShared);
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_NE(r->rkey, 0u);
    EXPECT_EQ(r->remote_addr % kBlockSize, 0u);
    EXPECT_LT(r->remote_addr, 1ull << 63) << "base + length must never wrap";
    EXPECT_EQ(r->length, kBlockSize);
    EXPECT_EQ(r->map_flags, proto::kMapWrite | proto::kMapShared);
    rkeys.insert(r->rkey);
    ASSERT_TRUE(table_.unmap(one_, kA).ok());
  }
  EXPECT_EQ(rkeys.size(), 8u) << "an rkey is never handed out twice in a row";
  auto r = map(1, one_, kA, proto::kMapWrite);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(store_->pin_count(kA), 1u);
  EXPECT_EQ(one_, std::vector<uint32_t>{r->rkey});
  EXPECT_EQ(table_.find(r->rkey)->owner, 1u);
}

TEST_F(HandleTableTest, AnExclusiveMappingExcludesEveryOther) {
  ASSERT_TRUE(map(1, one_, kA, proto::kMapWrite).ok());
  auto excl = map(2, two_, kA, proto::kMapWrite);
  ASSERT_FALSE(excl.ok());
  EXPECT_EQ(excl.error().errnum(), EBUSY);
  EXPECT_NE(excl.error().message().find("mapped exclusively elsewhere"), std::string::npos)
      << excl.error().message();
  auto shared = map(2, two_, kA, proto::kMapShared);
  ASSERT_FALSE(shared.ok());
  EXPECT_EQ(shared.error().errnum(), EBUSY);
  EXPECT_TRUE(two_.empty()) << "a refused MAP hands out nothing";
  EXPECT_EQ(table_.map_count(kA), 1u);
  EXPECT_EQ(store_->pin_count(kA), 1u);
  // Another block is not affected, and once the holder unmaps the block is free for others.
  EXPECT_TRUE(map(2, two_, kB, proto::kMapWrite).ok());
  ASSERT_TRUE(table_.unmap(one_, kA).ok());
  EXPECT_TRUE(map(2, two_, kA, proto::kMapWrite).ok());
}

TEST_F(HandleTableTest, SharedMappingsCoexistButExcludeAnExclusiveOne) {
  auto a = map(1, one_, kA, proto::kMapShared);
  auto b = map(2, two_, kA, proto::kMapShared | proto::kMapWrite);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->rkey, b->rkey);
  EXPECT_EQ(table_.map_count(kA), 2u);
  EXPECT_EQ(store_->pin_count(kA), 2u);
  auto excl = map(3, three_, kA, 0);
  ASSERT_FALSE(excl.ok());
  EXPECT_EQ(excl.error().errnum(), EBUSY);
  ASSERT_TRUE(table_.unmap(one_, kA).ok());
  EXPECT_EQ(table_.map_count(kA), 1u);
  EXPECT_EQ(store_->pin_count(kA), 1u);
  ASSERT_TRUE(table_.unmap(two_, kA).ok());
  EXPECT_EQ(table_.map_count(kA), 0u);
  EXPECT_EQ(store_->pin_count(kA), 0u);
  EXPECT_TRUE(map(3, three_, kA, 0).ok()) << "exclusive once the last shared mapping is gone";
}

TEST_F(HandleTableTest, OneConnectionMapsABlockOnce) {
  ASSERT_TRUE(map(1, one_, kA, proto::kMapShared).ok());
  auto again = map(1, one_, kA, proto::kMapShared);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().errnum(), EEXIST);
  EXPECT_EQ(one_.size(), 1u);
  EXPECT_EQ(table_.map_count(kA), 1u);
}

TEST_F(HandleTableTest, MapAndUnmapOfUnknownBlocksFailWithTheStoresErrorAndLeaveNoState) {
  auto r = map(1, one_, kUnallocated, proto::kMapWrite);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errnum(), ENOENT);
  EXPECT_EQ(table_.map_count(kUnallocated), 0u);
  EXPECT_EQ(table_.size(), 0u);
  auto unaligned = map(1, one_, kA + 4096, proto::kMapWrite);
  ASSERT_FALSE(unaligned.ok());
  EXPECT_EQ(unaligned.error().errnum(), EINVAL);

  Status st = table_.unmap(one_, kUnallocated);
  EXPECT_EQ(st.error().errnum(), ENOENT);
  // Allocated but not mapped by this connection (another one maps it).
  ASSERT_TRUE(map(2, two_, kA, proto::kMapWrite).ok());
  st = table_.unmap(one_, kA);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOENT);
  EXPECT_NE(st.error().message().find("not mapped by this connection"), std::string::npos);
  EXPECT_EQ(store_->pin_count(kA), 1u) << "another connection's UNMAP leaves the mapping alone";
}

TEST_F(HandleTableTest, ResolveChecksTheRkeyAndTheRangeAndRevocationKillsTheRkey) {
  auto r = map(1, one_, kB, proto::kMapWrite);
  ASSERT_TRUE(r.ok());
  auto slot = store_->slot_offset(kB);
  ASSERT_TRUE(slot.ok());
  const Handle* hd = nullptr;
  auto off = table_.resolve(r->rkey, r->remote_addr + 4096, 512, &hd);
  ASSERT_TRUE(off.ok()) << off.error().message();
  EXPECT_EQ(*off, *slot + 4096);
  EXPECT_EQ(hd->vaddr, kB);
  EXPECT_TRUE(table_.resolve(r->rkey, r->remote_addr, kBlockSize, &hd).ok()) << "the whole block";

  EXPECT_EQ(table_.resolve(r->rkey, r->remote_addr + kBlockSize - 1, 2, &hd).error().errnum(), ERANGE);
  EXPECT_EQ(table_.resolve(r->rkey, r->remote_addr - 1, 1, &hd).error().errnum(), ERANGE);
  EXPECT_EQ(table_.resolve(r->rkey, r->remote_addr + kBlockSize + 1, 0, &hd).error().errnum(), ERANGE);
  EXPECT_EQ(table_.resolve(r->rkey, r->remote_addr, ~0ull, &hd).error().errnum(), ERANGE) << "no wrap";
  EXPECT_EQ(table_.resolve(r->rkey ^ 1, r->remote_addr, 1, &hd).error().errnum(), EKEYREJECTED);

  table_.revoke(r->rkey);
  EXPECT_EQ(table_.resolve(r->rkey, r->remote_addr, 1, &hd).error().errnum(), EKEYREJECTED);
  EXPECT_EQ(store_->pin_count(kB), 0u);
  EXPECT_TRUE(store_->free(kB).ok()) << "a revoked handle no longer pins its block";
}

TEST_F(HandleTableTest, RevokeAllDropsEveryHandleOfAClosingConnectionAndOnlyThose) {
  ASSERT_TRUE(map(1, one_, kA, proto::kMapShared).ok());
  ASSERT_TRUE(map(1, one_, kB, proto::kMapWrite).ok());
  auto other = map(2, two_, kA, proto::kMapShared);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(store_->free(kB).error().errnum(), EBUSY) << "a mapped block cannot be freed";
  table_.revoke_all(one_);
  EXPECT_TRUE(one_.empty());
  EXPECT_EQ(table_.size(), 1u);
  EXPECT_EQ(store_->pin_count(kA), 1u);
  EXPECT_EQ(store_->pin_count(kB), 0u);
  EXPECT_TRUE(store_->free(kB).ok());
  const Handle* hd = nullptr;
  EXPECT_TRUE(table_.resolve(other->rkey, other->remote_addr, 1, &hd).ok());
}

TEST_F(HandleTableTest, PersistRangesFollowLiveHandlesOnly) {
  auto w = map(1, one_, kA, proto::kMapWrite);
  auto ro = map(2, two_, kB, 0);
  ASSERT_TRUE(w.ok() && ro.ok());
  uint64_t slot_a = *store_->slot_offset(kA), slot_b = *store_->slot_offset(kB);

  // No range named: every writable mapping's whole block.
  const auto& all = table_.persist_ranges(proto::PersistRequest{});
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].offset, slot_a);
  EXPECT_EQ(all[0].len, kBlockSize);

  proto::PersistRequest req;
  req.ranges.push_back({w->rkey, w->remote_addr + 8192, 100});
  req.ranges.push_back({ro->rkey, ro->remote_addr, 4096});
  req.ranges.push_back({w->rkey, w->remote_addr + kBlockSize - 10, 100});  // outside: skipped
  req.ranges.push_back({w->rkey ^ 1, w->remote_addr, 1});                  // no such rkey: skipped
  const auto& named = table_.persist_ranges(req);
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[0].offset, slot_a + 8192);
  EXPECT_EQ(named[0].len, 100u);
  EXPECT_EQ(named[1].offset, slot_b);
  EXPECT_EQ(named[1].len, 4096u);

  // Through a handle revoked since: skipped (a TCP handle leaves nothing
  // behind to persist; its WRITEs are the persistence ledger's).
  table_.revoke(w->rkey);
  EXPECT_EQ(table_.revoked_dirty(), 0u);
  const auto& after = table_.persist_ranges(req);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].offset, slot_b);
}

}  // namespace
}  // namespace pbrick
