// Helpers shared by the on-media formats of the fast store (store.cc) and the
// slow tier (slow_tier.cc): little-endian words, the slot geometry both use
// (docs/layout.md, "Sizing"), random uuids, and the format sequence both
// follow. Pure functions, any thread - but write_formatted(), which writes the
// caller's region (the caller's thread).
#pragma once

#include <sys/random.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/result.h"
#include "common/units.h"
#include "target/pmem_region.h"

namespace pbrick::media {

inline constexpr uint64_t kSuperblockSize = 4096;
inline constexpr uint64_t kMapOffset = kSuperblockSize;
inline constexpr uint64_t kMapEntrySize = 16;

inline uint64_t le64(uint64_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
inline uint32_t le32(uint32_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}
inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return le64(v);
}
inline uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return le32(v);
}
inline void put64(uint8_t* p, uint64_t v) {
  v = le64(v);
  std::memcpy(p, &v, sizeof v);
}
inline void put32(uint8_t* p, uint32_t v) {
  v = le32(v);
  std::memcpy(p, &v, sizeof v);
}
// The native-order word whose in-memory bytes are `bytes`, for store_word_persist.
inline uint64_t word_of(const void* bytes) {
  uint64_t v;
  std::memcpy(&v, bytes, sizeof v);
  return v;
}

inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

inline bool all_zero(const uint8_t* p, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

// slots_offset for a map of n entries: the map end rounded up to 2 MiB, so every
// slot is one 2 MiB-aligned range of the region.
inline uint64_t slots_offset_for(uint64_t n) { return align_up(kMapOffset + kMapEntrySize * n, kBlockSize); }

inline bool fits(uint64_t n, uint64_t region_size) {
  uint64_t slots_bytes = n * kBlockSize;  // n <= region_size / 2 MiB: no overflow
  return slots_bytes <= region_size && slots_offset_for(n) <= region_size - slots_bytes;
}

// The largest n with align_up(4096 + 16 n, 2 MiB) + n * 2 MiB <= region_size.
// Since that left side is at least 4096 + n * (2 MiB + 16), n cannot exceed
// n0 = (region_size - 4096) / (2 MiB + 16); and n0 - 1 always fits (rounding
// adds less than one block, which the dropped slot pays for), so the loop runs
// at most once.
inline uint64_t slot_count_for(uint64_t region_size) {
  if (region_size < kMapOffset) return 0;
  uint64_t n = (region_size - kMapOffset) / (kBlockSize + kMapEntrySize);
  while (n > 0 && !fits(n, region_size)) --n;
  return n;
}

// What the start of a region says about a store on it. kBlank: a new
// region - its superblock and every byte a map for the region's size would
// take are zero (format writes both before anything else). kWipedSuperblock:
// a zero superblock over a map that is not: a store whose superblock was
// overwritten, whose blocks formatting would lose - never taken for blank.
enum class RegionStart { kBlank, kWipedSuperblock, kSuperblock };
inline RegionStart region_start(const uint8_t* base, uint64_t size) {
  if (!all_zero(base, kSuperblockSize)) return RegionStart::kSuperblock;
  uint64_t map_len = kMapEntrySize * slot_count_for(size);
  return all_zero(base + kMapOffset, map_len) ? RegionStart::kBlank : RegionStart::kWipedSuperblock;
}

inline Status fill_random(uint8_t* out, size_t len) {
  while (len > 0) {
    ssize_t n = ::getrandom(out, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("getrandom");
    }
    out += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// A random RFC 4122 version-4 uuid.
inline Result<std::array<uint8_t, 16>> random_uuid() {
  std::array<uint8_t, 16> uuid{};
  PBRICK_TRY(fill_random(uuid.data(), uuid.size()));
  uuid[6] = static_cast<uint8_t>((uuid[6] & 0x0F) | 0x40);  // version 4
  uuid[8] = static_cast<uint8_t>((uuid[8] & 0x3F) | 0x80);  // variant
  return uuid;
}

// The format protocol of a store or a slow tier (docs/layout.md, "Format"),
// every crash window safe:
//   1. the magic word becomes `marker` (one 8-byte store): from here on the
//      region reads as "format interrupted", never as what it held before, so
//      no mixture of an old superblock with a half-zeroed map can ever open;
//   2. the map (and the padding up to the first slot, `slots_offset`) is
//      zeroed durably;
//   3. the new superblock `sb`, with `marker` still in its magic word, is
//      written and persisted: still "interrupted" whatever subset reached
//      media;
//   4. commit point: the magic word becomes `magic` (one 8-byte store); `sb`'s
//      checksum was computed over the final bytes, `magic` included.
// Slots are not touched. Errors are wrapped with `what` ("format store").
inline Status write_formatted(PmemRegion& r, const std::array<uint8_t, kSuperblockSize>& sb, const char (&marker)[8],
                              const char (&magic)[8], uint64_t slots_offset, const char* what) {
  auto fail = [what](const Error& e) { return e.wrap(what); };
  if (Status s = r.store_word_persist(0, word_of(marker)); !s) return fail(s.error());
  if (Status s = r.zero(kMapOffset, slots_offset - kMapOffset); !s) return fail(s.error());
  r.copy_nodrain(8, sb.data() + 8, kSuperblockSize - 8);
  if (Status s = r.persist(0, kSuperblockSize); !s) return fail(s.error());
  if (Status s = r.store_word_persist(0, word_of(magic)); !s) return fail(s.error());
  return Status::Ok();
}

}  // namespace pbrick::media
