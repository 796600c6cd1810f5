// The brick's store: a superblock, a persistent logical->physical map of 2 MiB
// blocks, and the 2 MiB slots, all inside one PmemRegion. docs/layout.md
// describes every byte.
//
// Crash consistency: every map update commits with one failure-atomic 8-byte
// store (PmemRegion::store_word_persist), so a crash at any instruction leaves
// either the old or the new state of an entry, never a torn one.
//
// Integrity: every allocated map entry carries a checksum (layout version 2),
// verified in Open() for every entry and again, against the in-memory index,
// whenever a block is used (MAP, ALLOC, FREE, LIST). A corrupt entry is never
// interpreted: Open() refuses the store, a block whose entry changed while the
// brick runs is quarantined (every use fails with EUCLEAN naming the entry).
// Open() upgrades a version-1 store (no checksums) in place, crash-safely.
//
// The in-memory index (vaddr -> slot, pin counts) is rebuilt from the persistent
// map in Open().
//
// Thread-compatible: the brick's event loop thread is the only caller.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
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

// What an offline check of a store found (Store::Check, `pbrickctl fsck`).
struct StoreCheckReport {
  struct Problem {
    uint64_t entry;    // map entry index
    std::string what;  // "map entry N: ..." naming the block and what is wrong
  };
  // Empty when the superblock is valid; otherwise why it is not, and the map
  // was not read.
  std::string superblock_error;
  uint32_t layout_version = 0;
  // A version-1 store whose upgrade to version 2 was interrupted after its map
  // was converted (docs/layout.md, "Upgrade from version 1").
  bool upgrade_interrupted = false;
  std::array<uint8_t, 16> uuid{};
  uint64_t slot_count = 0;
  uint64_t allocated_blocks = 0;
  // Entries still in the version-1 format (no checksum): Open() converts them.
  uint64_t entries_to_upgrade = 0;
  std::vector<Problem> map_problems;

  bool clean() const { return superblock_error.empty() && map_problems.empty(); }
};

class Store {
 public:
  // Opens the store in `region`: validates the superblock (magic, layout version,
  // checksum, sizes consistent with the region) and rebuilds the index from the
  // map. A region that is neither blank nor a pbrick store is refused with
  // EUCLEAN ("not a pbrick store") unless force_format; a corrupt map (a
  // duplicate vaddr or slot, a location out of range) is refused with EUCLEAN
  // naming the entry.
  // A map entry whose checksum does not match is refused the same way, naming
  // the entry, the block it claims and what is wrong. A version-1 store is
  // upgraded to version 2 before Open() returns.
  static Result<std::unique_ptr<Store>> Open(std::unique_ptr<PmemRegion> region,
                                             const StoreOpenOptions& options);

  // Checks the store image [base, base + size) the way Open() does, but reports
  // every problem instead of the first, and never writes. `base` must stay
  // unchanged during the call (check a stopped brick's store).
  static StoreCheckReport Check(const uint8_t* base, uint64_t size);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Allocates a block at `vaddr`; the block reads as zeros. EINVAL when vaddr is
  // not 2 MiB aligned, EEXIST when already allocated, ENOSPC when no slot is free.
  Status alloc(uint64_t vaddr);

  // Returns the block's space. EINVAL (unaligned), ENOENT (not allocated),
  // EBUSY (pinned, i.e. mapped).
  //
  // alloc, free, slot_offset and pin first compare the block's map entry on the
  // medium with the index: if it changed (a flipped bit, a stray write) they
  // fail with EUCLEAN naming the entry, and keep failing: the block is
  // quarantined until the store is checked offline.
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
    uint8_t tier = 0;       // always 0 (this region) until slower tiers exist
    uint64_t location = 0;  // the entry's location word as it must be on media
  };
  // Receives each problem scan_map() finds: map entry index and message.
  using ProblemSink = std::function<void(uint64_t entry, std::string what)>;

  explicit Store(std::unique_ptr<PmemRegion> region);

  Status format();
  Status load();  // validates the superblock, fills geometry and uuid
  // Validates every map entry and fills index_ and the free lists; each
  // invalid entry goes to `problem` (and is left out of the index).
  void scan_map(const ProblemSink& problem);
  Status upgrade_map();  // version 1 -> 2, docs/layout.md "Upgrade from version 1"
  Status check_vaddr(const char* op, uint64_t vaddr) const;
  // EUCLEAN unless the block's map entry on media is what the index says.
  Status verify_entry(const char* op, uint64_t vaddr, const BlockInfo& block) const;
  uint64_t entry_offset(uint32_t entry) const;

  std::unique_ptr<PmemRegion> region_;
  std::array<uint8_t, 16> uuid_{};
  uint64_t slot_count_ = 0;
  uint64_t map_offset_ = 0;
  uint64_t slots_offset_ = 0;
  uint32_t layout_version_ = 0;
  bool upgrade_interrupted_ = false;
  std::vector<uint32_t> v1_entries_;  // entries to convert to version 2 (upgrade_map)
  std::map<uint64_t, BlockInfo> index_;  // vaddr -> block
  std::vector<uint64_t> free_slots_;     // min-heap: the lowest free slot is reused first
  std::vector<uint32_t> free_entries_;   // min-heap of map entries with key 0
  uint64_t mapped_blocks_ = 0;
};

}  // namespace pbrick
