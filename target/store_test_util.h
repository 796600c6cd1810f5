// Test helpers for the store's on-media layout, written from docs/layout.md
// rather than from store.cc, so the tests check the code against the document:
// the version-2 map entry encoding, and a writer of version-1 stores (the
// layout of stores made before map entries had checksums) to test the upgrade.
//
// For store_test.cc and store_crash_test.cc only.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/crc32c.h"
#include "common/units.h"

namespace pbrick::layout_test {

inline constexpr uint64_t kMapOffset = 4096;
inline constexpr uint64_t kKeyTag = 3;    // version 2: bits 0 (VALID) and 1 (VALID2)
inline constexpr uint64_t kKeyTagV1 = 1;  // version 1: bit 0 (VALID)

inline void put_le64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void put_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// The version-2 location word of map entry `entry` holding `key`: slot in bits
// 0..31, tier in bits 32..39, and in bits 40..63 the low 24 bits of CRC-32C
// over key (8 bytes), location with bits 40..63 zero (8), entry index (4).
inline uint64_t v2_location(uint32_t entry, uint64_t key, uint64_t slot, uint8_t tier = 0) {
  const uint64_t location = slot | (uint64_t{tier} << 32);
  uint8_t msg[20];
  put_le64(msg, key);
  put_le64(msg + 8, location);
  put_le32(msg + 16, entry);
  return location | (uint64_t{crc32c(msg, sizeof msg) & 0xFFFFFFu} << 40);
}

// The version-2 key of a block.
inline uint64_t v2_key(uint64_t vaddr) { return vaddr | kKeyTag; }

struct V1Block {
  uint64_t vaddr;
  uint64_t slot;
};

// Slot count and first slot's offset of a region (docs/layout.md, "Sizing"),
// for regions whose map fits in the first 2 MiB.
inline uint64_t small_slot_count(uint64_t region_size) {
  return (region_size - kBlockSize) / kBlockSize;
}

// Writes a version-1 store into [base, base + size) exactly as the version-1
// code formatted and filled it: superblock, then map entry i = blocks[i]
// (key vaddr | VALID, location = slot), the rest of the map zero. Slots are
// left alone. `size` must leave the map within the first 2 MiB.
inline void write_v1_store(uint8_t* base, uint64_t size, const std::vector<V1Block>& blocks,
                           const std::array<uint8_t, 16>& uuid) {
  const uint64_t slots = small_slot_count(size);
  std::memset(base, 0, kBlockSize);
  std::memcpy(base, "PBRKSTOR", 8);
  put_le32(base + 8, 1);  // layout_version
  put_le32(base + 12, 0);
  std::memcpy(base + 16, uuid.data(), 16);
  put_le64(base + 32, size);
  put_le64(base + 40, kBlockSize);
  put_le64(base + 48, slots);
  put_le64(base + 56, kMapOffset);
  put_le64(base + 64, slots);
  put_le64(base + 72, kBlockSize);  // slots_offset
  put_le64(base + 80, 1700000000);  // format_time
  put_le32(base + 4092, crc32c(base, 4092));
  for (size_t i = 0; i < blocks.size(); ++i) {
    put_le64(base + kMapOffset + 16 * i, blocks[i].vaddr | kKeyTagV1);
    put_le64(base + kMapOffset + 16 * i + 8, blocks[i].slot);
  }
}

}  // namespace pbrick::layout_test
