// The brick's store: a superblock, a persistent logical->physical map of 2 MiB
// blocks, and the 2 MiB slots, all inside one PmemRegion. docs/layout.md
// describes every byte.
//
// Crash consistency: every map update commits with one failure-atomic 8-byte
// store (PmemRegion::store_word_persist), so a crash at any instruction leaves
// either the old or the new state of an entry, never a torn one.
//
// The in-memory index (vaddr -> slot, pin counts) is rebuilt from the persistent
// map in Open().
//
// Thread-compatible: the brick's event loop thread is the only caller.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "common/protocol.h"
#include "common/result.h"
#include "common/units.h"
#include "target/pmem_region.h"

namespace pbrick {

// The smallest region that holds a store: the superblock and a one-entry map
// (padded to 2 MiB so slots stay 2 MiB aligned) plus one 2 MiB slot.
inline constexpr uint64_t kMinStoreSize = 2 * kBlockSize;

struct StoreOpenOptions {
  // Format the region even when it holds something (a pbrick store or not).
  bool force_format = false;
  // Format a region whose superblock area is all zeros (a new file or device).
  bool format_if_blank = true;
};

struct StoreStats {
  uint64_t capacity_blocks = 0;
  uint64_t free_blocks = 0;
  uint64_t allocated_blocks = 0;
  uint64_t mapped_blocks = 0;  // blocks with pin count > 0
};

class Store {
 public:
  // Opens the store in `region`: validates the superblock (magic, layout version,
  // checksum, sizes consistent with the region) and rebuilds the index from the
  // map. A region that is neither blank nor a pbrick store is refused with
  // EUCLEAN ("not a pbrick store") unless force_format; a corrupt map (a
  // duplicate vaddr or slot, a location out of range) is refused with EUCLEAN
  // naming the entry.
  static Result<std::unique_ptr<Store>> Open(std::unique_ptr<PmemRegion> region,
                                             const StoreOpenOptions& options);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Allocates a block at `vaddr`; the block reads as zeros. EINVAL when vaddr is
  // not 2 MiB aligned, EEXIST when already allocated, ENOSPC when no slot is free.
  Status alloc(uint64_t vaddr);

  // Returns the block's space. EINVAL (unaligned), ENOENT (not allocated),
  // EBUSY (pinned, i.e. mapped).
  Status free(uint64_t vaddr);

  // Byte offset of the block's slot within the region. EINVAL/ENOENT as above.
  Result<uint64_t> slot_offset(uint64_t vaddr) const;

  // Pin counts back the "mapped" state: a pinned block cannot be freed (and,
  // later, will not be moved to a slower tier). unpin() of an unpinned block is
  // a programming error.
  Status pin(uint64_t vaddr);
  void unpin(uint64_t vaddr);
  uint32_t pin_count(uint64_t vaddr) const;

  // Extents of allocated blocks with vaddr >= cursor, adjacent blocks with the
  // same mapped state and tier coalesced, at most `max_extents` of them.
  // `list_flags`/`next_cursor` follow the LIST reply semantics of the protocol.
  proto::ListReply list(uint64_t cursor, uint32_t max_extents) const;

  StoreStats stats() const;
  const std::array<uint8_t, 16>& uuid() const { return uuid_; }
  PmemRegion& region() { return *region_; }

 private:
  struct BlockInfo {
    uint64_t slot = 0;
    uint32_t entry = 0;
    uint32_t pins = 0;
    uint8_t tier = 0;  // always 0 (this region) until slower tiers exist
  };

  explicit Store(std::unique_ptr<PmemRegion> region);

  Status format();
  Status load();           // validates the superblock, fills geometry and uuid
  Status rebuild_index();  // validates the map, fills index_ and the free lists
  Status check_vaddr(const char* op, uint64_t vaddr) const;
  uint64_t entry_offset(uint32_t entry) const;

  std::unique_ptr<PmemRegion> region_;
  std::array<uint8_t, 16> uuid_{};
  uint64_t slot_count_ = 0;
  uint64_t map_offset_ = 0;
  uint64_t slots_offset_ = 0;
  std::map<uint64_t, BlockInfo> index_;  // vaddr -> block
  std::vector<uint64_t> free_slots_;     // min-heap: the lowest free slot is reused first
  std::vector<uint32_t> free_entries_;   // min-heap of map entries with key 0
  uint64_t mapped_blocks_ = 0;
};

}  // namespace pbrick
