// The slow tier of a brick: a file or block device on SSD or disk that holds
// 2 MiB blocks moved out of the fast store (docs/layout.md, "Slow tier").
//
// Its head (superblock and map) is reached through a PmemRegion mapping of the
// whole file, so its map entries get the same failure-atomic 8-byte store as
// the fast store's; its slots are read and written by the brick's data mover
// (target/tiering.h) with io_uring and O_DIRECT, never through the mapping.
//
// The superblock binds the slow tier to its fast store: it carries the fast
// store's uuid, and Open() refuses a slow tier that belongs to another store.
//
// Thread-compatible: the brick's event loop thread is the only caller.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "common/result.h"
#include "target/pmem_region.h"

namespace pbrick {

struct SlowTierOpenOptions {
  // Format the slow tier even when it holds something.
  bool force_format = false;
  // Format a slow tier whose superblock area is all zeros (a new file).
  bool format_if_blank = true;
};

class SlowTier {
 public:
  // Opens the slow tier in `region` for the fast store `fast_uuid`: validates
  // its superblock (magic, version, checksum, sizes consistent with the
  // region) and its binding. A slow tier that belongs to another fast store is
  // refused with EUCLEAN naming both uuids (formatting it anew with
  // force_format destroys the blocks the other brick moved there).
  static Result<std::unique_ptr<SlowTier>> Open(std::unique_ptr<PmemRegion> region,
                                                const std::array<uint8_t, 16>& fast_uuid,
                                                const SlowTierOpenOptions& options);

  // True for a region Open() would format without force_format: blank, or
  // a format interrupted before its commit point (format marker in the magic
  // word). Either holds no block of any store.
  static bool Unformatted(const uint8_t* base, uint64_t size);

  SlowTier(const SlowTier&) = delete;
  SlowTier& operator=(const SlowTier&) = delete;

  uint64_t slot_count() const { return slot_count_; }
  uint64_t map_offset() const { return map_offset_; }
  uint64_t slots_offset() const { return slots_offset_; }
  // Byte offset of slot `slot` in the file.
  uint64_t slot_byte_offset(uint64_t slot) const { return slots_offset_ + slot * (2ull << 20); }
  const std::array<uint8_t, 16>& uuid() const { return uuid_; }
  const std::array<uint8_t, 16>& fast_uuid() const { return fast_uuid_; }
  PmemRegion& region() { return *region_; }

 private:
  explicit SlowTier(std::unique_ptr<PmemRegion> region) : region_(std::move(region)) {}
  Status format(const std::array<uint8_t, 16>& fast_uuid);
  Status load(const std::array<uint8_t, 16>& fast_uuid);

  std::unique_ptr<PmemRegion> region_;
  std::array<uint8_t, 16> uuid_{};
  std::array<uint8_t, 16> fast_uuid_{};
  uint64_t slot_count_ = 0;
  uint64_t map_offset_ = 0;
  uint64_t slots_offset_ = 0;
};

}  // namespace pbrick
