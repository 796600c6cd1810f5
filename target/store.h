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
#include <list>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "common/protocol.h"
#include "common/result.h"
#include "common/units.h"
#include "target/pmem_region.h"
#include "target/slow_tier.h"

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
  uint64_t capacity_blocks = 0;  // both tiers
  uint64_t free_blocks = 0;      // both tiers
  uint64_t allocated_blocks = 0;
  uint64_t mapped_blocks = 0;  // blocks with pin count > 0
  uint64_t fast_capacity_blocks = 0;
  uint64_t fast_free_blocks = 0;
  uint64_t slow_capacity_blocks = 0;  // 0 without a slow tier
  uint64_t slow_free_blocks = 0;
};

// Tiers, as in the map entry's location word and the LIST extent's tier.
inline constexpr uint8_t kTierFast = 0;
inline constexpr uint8_t kTierSlow = 1;

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
  // Check() with a slow tier: its slots; its blocks are among allocated_blocks.
  bool slow_checked = false;
  // The superblock says the store has a slow tier, and none was given: the
  // map entries in its map were not read.
  bool slow_unchecked = false;
  // Check() with a slow tier that is blank or whose format was cut short, of
  // a store that has not attached one yet (no flag, or its flag pending):
  // nothing of the store can be on it, and the brick formats it when it
  // starts with it. Not read further; not a problem.
  bool slow_not_attached = false;
  uint64_t slow_slot_count = 0;
  uint64_t slow_blocks = 0;
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
  //
  // With `slow_region`, the store has a slow tier in it (target/slow_tier.h),
  // opened (or formatted, by the same options) for this store; the map then
  // spans both tiers (docs/layout.md, "Slow tier"). A store whose map names
  // blocks on the slow tier is refused without one, and with a slow tier that
  // had to be formatted (a blank file cannot hold those blocks).
  static Result<std::unique_ptr<Store>> Open(std::unique_ptr<PmemRegion> region,
                                             const StoreOpenOptions& options,
                                             std::unique_ptr<PmemRegion> slow_region = nullptr);

  // Checks the store image [base, base + size) the way Open() does, but reports
  // every problem instead of the first, and never writes. `base` must stay
  // unchanged during the call (check a stopped brick's store). With the slow
  // tier's image [slow_base, slow_base + slow_size), its superblock and its
  // binding to this store are checked as Open() checks them (a problem there
  // is a superblock_error naming the slow tier), and the map entries of
  // both tiers as Open() would (slots in range, no slot used twice on either
  // tier); without it, entries naming the slow tier are accepted unchecked.
  static StoreCheckReport Check(const uint8_t* base, uint64_t size, const uint8_t* slow_base = nullptr,
                                uint64_t slow_size = 0);

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Allocates a block at `vaddr`; the block reads as zeros. EINVAL when vaddr is
  // not 2 MiB aligned, EEXIST when already allocated, ENOSPC when no slot is free.
  // The block lands on the fast tier when a fast slot is free, on the slow
  // tier otherwise.
  Status alloc(uint64_t vaddr);

  // Returns the block's space. EINVAL (unaligned), ENOENT (not allocated),
  // EBUSY (pinned, i.e. mapped).
  //
  // alloc, free, slot_offset and pin first compare the block's map entry on the
  // medium with the index: if it changed (a flipped bit, a stray write) they
  // fail with EUCLEAN naming the entry, and keep failing: the block is
  // quarantined until the store is checked offline.
  Status free(uint64_t vaddr);

  // Byte offset of the block's slot within the region. EINVAL/ENOENT as above;
  // EAGAIN when the block is not on the fast tier or is moving (promote first).
  Result<uint64_t> slot_offset(uint64_t vaddr) const;

  // Pin counts back the "mapped" state: a pinned block cannot be freed (and,
  // be moved to another tier). pin() refuses (EAGAIN) a block that is not on
  // the fast tier or is moving. unpin() of an unpinned block is a programming
  // error.
  Status pin(uint64_t vaddr);
  void unpin(uint64_t vaddr);
  uint32_t pin_count(uint64_t vaddr) const;

  // Extents of allocated blocks with vaddr >= cursor, adjacent blocks with the
  // same mapped state and tier coalesced, at most `max_extents` of them.
  // `list_flags`/`next_cursor` follow the LIST reply semantics of the protocol.
  proto::ListReply list(uint64_t cursor, uint32_t max_extents) const;

  StoreStats stats() const;

  // ---- Tiering (driven by target/tiering.h) ----------------------------------
  // Moving a block: begin_move() reserves a free slot on `to_tier` and marks the
  // block moving (not mappable, not freeable); the caller copies the 2 MiB from
  // `from_offset` of the source tier's medium to `to_offset` of the destination
  // tier's medium and makes the copy durable; commit_move() then flips the
  // block's location word with one failure-atomic 8-byte store and returns the
  // old slot to the free list. A crash before the flip leaves the old copy as
  // the block, after it the new one; the other slot is free either way
  // (docs/layout.md, "Move"). abort_move() gives up a move before its flip.
  struct Move {
    uint64_t vaddr = 0;
    uint8_t from_tier = 0, to_tier = 0;
    uint64_t from_offset = 0, to_offset = 0;  // byte offsets within each tier's medium
  };
  // EINVAL (unaligned, no slow tier), ENOENT (not allocated), EBUSY (mapped or
  // already moving), EALREADY (already on `to_tier`), ENOSPC (no free slot there),
  // EUCLEAN (quarantined: it also leaves the demotion candidates for good).
  Result<Move> begin_move(uint64_t vaddr, uint8_t to_tier);
  Status commit_move(uint64_t vaddr);
  // `withhold_destination`: the reserved slot does not go back to the free
  // list (it could not be written); a later Open finds it free.
  void abort_move(uint64_t vaddr, bool withhold_destination = false);
  // A slot withheld that way back on the free list (`offset`: its byte offset
  // in tier `tier`'s medium, as Move::to_offset), once it can be used again.
  void release_slot(uint8_t tier, uint64_t offset);
  // ENOENT when not allocated; otherwise the tier the block is on now.
  Result<uint8_t> tier_of(uint64_t vaddr) const;
  // True when `vaddr` is allocated and its map entry no longer verifies: the
  // block is quarantined (every use fails with EUCLEAN). Logs nothing.
  bool quarantined(uint64_t vaddr) const;
  bool moving(uint64_t vaddr) const;
  // The fast-tier block unmapped longest ago (allocated, never mapped since the
  // store was opened, counts as unmapped at that time) that is not moving; none
  // when every fast block is mapped or moving.
  std::optional<uint64_t> demotion_candidate() const;
  SlowTier* slow_tier() { return slow_.get(); }
  const std::array<uint8_t, 16>& uuid() const { return uuid_; }
  PmemRegion& region() { return *region_; }

 private:
  struct BlockInfo {
    uint64_t slot = 0;
    uint32_t entry = 0;
    uint32_t pins = 0;
    uint8_t tier = 0;       // kTierFast or kTierSlow
    bool moving = false;    // between begin_move and commit_move/abort_move
    bool in_lru = false;    // on lru_: fast, unpinned, not moving
    uint64_t dest_slot = 0; // while moving: the reserved slot on the other tier
    uint64_t location = 0;  // the entry's location word as it must be on media
    std::list<uint64_t>::iterator lru;
  };
  // Receives each problem scan_map() finds: map entry index and message.
  using ProblemSink = std::function<void(uint64_t entry, std::string what)>;

  explicit Store(std::unique_ptr<PmemRegion> region);

  Status format();
  Status load();  // validates the superblock, fills geometry and uuid
  // Validates every map entry and fills index_ and the free lists; each
  // invalid entry goes to `problem` (and is left out of the index).
  void scan_map(const ProblemSink& problem);
  Status upgrade_map();
  Status set_slow_flag();  // docs/layout.md, "Slow tier"  // version 1 -> 2, docs/layout.md "Upgrade from version 1"
  Status check_vaddr(const char* op, uint64_t vaddr) const;
  // EUCLEAN unless the block's map entry on media is what the index says.
  Status verify_entry(const char* op, uint64_t vaddr, const BlockInfo& block) const;
  // Map entries are numbered across both maps: the fast store's first, then
  // the slow tier's. entry_offset() is within entry_region().
  uint64_t entry_offset(uint32_t entry) const;
  PmemRegion& entry_region(uint32_t entry) const;
  const uint8_t* entry_ptr(uint32_t entry) const;
  uint64_t entry_count() const;
  PmemRegion& tier_region(uint8_t tier) const;
  uint64_t tier_slot_offset(uint8_t tier, uint64_t slot) const;
  std::vector<uint64_t>& tier_free(uint8_t tier) { return tier == kTierFast ? free_slots_ : slow_free_slots_; }
  void lru_add(uint64_t vaddr, BlockInfo& block, bool coldest = false);
  void lru_remove(BlockInfo& block);

  std::unique_ptr<PmemRegion> region_;
  std::array<uint8_t, 16> uuid_{};
  uint64_t slot_count_ = 0;
  uint64_t map_offset_ = 0;
  uint64_t slots_offset_ = 0;
  uint32_t layout_version_ = 0;
  bool upgrade_interrupted_ = false;
  std::vector<uint32_t> v1_entries_;  // entries to convert to version 2 (upgrade_map)
  std::map<uint64_t, BlockInfo> index_;  // vaddr -> block
  std::vector<uint64_t> free_slots_;     // fast tier, min-heap: the lowest free slot is reused first
  std::vector<uint64_t> slow_free_slots_;  // slow tier, min-heap
  std::unique_ptr<SlowTier> slow_;
  // Check(): a fast store alone; entries on the slow tier are accepted unchecked.
  bool slow_unchecked_ = false;
  bool has_slow_flag_ = false;      // superblock flag: the store has a slow tier
  bool slow_flag_pending_ = false;  // its checksum was written, the flag not yet
  uint64_t slow_blocks_in_fast_map_ = 0;  // set by scan_map, for Open()'s blank-slow-tier refusal
  std::list<uint64_t> lru_;              // fast unpinned blocks, least recently unmapped first
  std::vector<uint32_t> free_entries_;   // min-heap of map entries with key 0
  uint64_t mapped_blocks_ = 0;
};

}  // namespace pbrick
