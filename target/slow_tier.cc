// The slow tier's superblock and geometry. docs/layout.md ("Slow tier") is the
// byte-level description; the constants below are its code form.
#include "target/slow_tier.h"

#include <cstring>
#include <ctime>
#include <string>

#include "common/client.h"
#include "common/crc32c.h"
#include "common/log.h"
#include "common/units.h"
#include "target/media_util.h"

namespace pbrick {
namespace {

using namespace media;

// ---- Slow tier superblock (offset 0, 4096 bytes, little-endian) ----------------
constexpr char kSlowMagic[8] = {'P', 'B', 'R', 'K', 'S', 'L', 'O', 'W'};
// Written over the magic while a format is in progress (as for the fast store).
constexpr char kSlowFormatMarker[8] = {'P', 'B', 'R', 'K', 'S', 'I', 'N', 'I'};
constexpr uint32_t kSlowLayoutVersion = 1;
constexpr size_t kSbMagic = 0;
constexpr size_t kSbVersion = 8;
constexpr size_t kSbFlags = 12;
constexpr size_t kSbUuid = 16;
constexpr size_t kSbFastUuid = 32;
constexpr size_t kSbRegionSize = 48;
constexpr size_t kSbBlockSize = 56;
constexpr size_t kSbSlotCount = 64;
constexpr size_t kSbMapOffset = 72;
constexpr size_t kSbMapEntries = 80;
constexpr size_t kSbSlotsOffset = 88;
constexpr size_t kSbFormatTime = 96;
constexpr size_t kSbReserved = 104;  // zeros up to kSbCrc
constexpr size_t kSbCrc = 4092;      // crc32c of bytes [0, kSbCrc)

Error corrupt(const std::string& what) { return Error(EUCLEAN, "slow tier: " + what); }

std::string uuid_text(const std::array<uint8_t, 16>& u) { return format_uuid(u); }

bool format_interrupted(const uint8_t* sb) {
  return std::memcmp(sb + kSbMagic, kSlowFormatMarker, sizeof kSlowFormatMarker) == 0;
}

}  // namespace

bool SlowTier::Unformatted(const uint8_t* base, uint64_t size) {
  return format_interrupted(base) || region_start(base, size) == RegionStart::kBlank;
}

Result<std::unique_ptr<SlowTier>> SlowTier::Open(std::unique_ptr<PmemRegion> region,
                                                 const std::array<uint8_t, 16>& fast_uuid,
                                                 const SlowTierOpenOptions& options) {
  if (!region) return Error(EINVAL, "open slow tier: no region");
  if (region->size() < 2 * kBlockSize) {
    return Error(EINVAL, "slow tier of " + format_size(region->size()) + " is too small: the minimum is " +
                             format_size(2 * kBlockSize) + " (superblock and map padded to 2 MiB, plus one slot)");
  }
  if (slot_count_for(region->size()) > 0xFFFFFFFFull) {
    return Error(EFBIG, "slow tier of " + format_size(region->size()) + " needs more than 2^32 - 1 slots");
  }
  std::unique_ptr<SlowTier> tier(new SlowTier(std::move(region)));
  const uint8_t* sb = tier->region_->base();
  const RegionStart start = region_start(sb, tier->region_->size());
  const bool blank = start == RegionStart::kBlank;
  const bool interrupted = format_interrupted(sb);
  if (start == RegionStart::kWipedSuperblock && !options.force_format) {
    return corrupt("the superblock is all zeros but the block map after it is not: a slow tier whose superblock "
                   "was overwritten, not a new region; formatting it (--force-format) would lose every block on it");
  }
  if (options.force_format || ((blank || interrupted) && options.format_if_blank)) {
    if (!blank && !interrupted) PBRICK_LOG_WARN("slow tier: force-formatting a slow tier that is not blank");
    PBRICK_TRY(tier->format(fast_uuid));
  } else if (blank || interrupted) {
    return corrupt(blank ? "blank (no slow tier); format it to create one"
                         : "an earlier format was interrupted; format it again");
  } else {
    PBRICK_TRY(tier->load(fast_uuid));
  }
  return tier;
}

// Format protocol: the same four steps as the fast store's (docs/layout.md,
// "Format"): marker word, zeroed map, superblock with the marker, commit word.
Status SlowTier::format(const std::array<uint8_t, 16>& fast_uuid) {
  PmemRegion& r = *region_;
  const uint64_t size = r.size();
  const uint64_t slots = slot_count_for(size);
  const uint64_t slots_offset = slots_offset_for(slots);
  auto uuid = random_uuid();
  if (!uuid) return uuid.error();

  std::array<uint8_t, kSuperblockSize> sb{};
  std::memcpy(sb.data() + kSbMagic, kSlowMagic, sizeof kSlowMagic);
  put32(sb.data() + kSbVersion, kSlowLayoutVersion);
  std::memcpy(sb.data() + kSbUuid, uuid->data(), 16);
  std::memcpy(sb.data() + kSbFastUuid, fast_uuid.data(), 16);
  put64(sb.data() + kSbRegionSize, size);
  put64(sb.data() + kSbBlockSize, kBlockSize);
  put64(sb.data() + kSbSlotCount, slots);
  put64(sb.data() + kSbMapOffset, kMapOffset);
  put64(sb.data() + kSbMapEntries, slots);
  put64(sb.data() + kSbSlotsOffset, slots_offset);
  put64(sb.data() + kSbFormatTime, static_cast<uint64_t>(std::time(nullptr)));
  put32(sb.data() + kSbCrc, crc32c(sb.data(), kSbCrc));

  static_assert(kSbMagic == 0, "write_formatted() writes the magic word at offset 0");
  PBRICK_TRY(write_formatted(r, sb, kSlowFormatMarker, kSlowMagic, slots_offset, "format slow tier"));

  uuid_ = *uuid;
  fast_uuid_ = fast_uuid;
  slot_count_ = slots;
  map_offset_ = kMapOffset;
  slots_offset_ = slots_offset;
  PBRICK_LOG_NOTICE("slow tier: formatted %s: %llu slots of 2 MiB for store %s", format_size(size).c_str(),
                    static_cast<unsigned long long>(slots), uuid_text(fast_uuid).c_str());
  return Status::Ok();
}

Status SlowTier::load(const std::array<uint8_t, 16>& fast_uuid) {
  const uint8_t* sb = region_->base();
  const uint64_t size = region_->size();
  if (std::memcmp(sb + kSbMagic, kSlowMagic, sizeof kSlowMagic) != 0) {
    return corrupt("not a pbrick slow tier (bad magic); use force-format to overwrite it");
  }
  if (uint32_t v = load32(sb + kSbVersion); v != kSlowLayoutVersion) {
    return corrupt("unsupported layout version " + std::to_string(v) + " (this build understands " +
                   std::to_string(kSlowLayoutVersion) + ")");
  }
  if (uint32_t stored = load32(sb + kSbCrc), crc = crc32c(sb, kSbCrc); stored != crc) {
    return corrupt("superblock checksum mismatch (stored " + format_hex(stored) + ", computed " +
                   format_hex(crc) + "): the superblock is corrupt");
  }
  if (uint32_t flags = load32(sb + kSbFlags); flags != 0) {
    return corrupt("superblock has unknown flags " + format_hex(flags));
  }
  if (!all_zero(sb + kSbReserved, kSbCrc - kSbReserved)) {
    return corrupt("superblock reserved bytes [" + std::to_string(kSbReserved) + ", " + std::to_string(kSbCrc) +
                   ") are not zero");
  }
  std::array<uint8_t, 16> owner;
  std::memcpy(owner.data(), sb + kSbFastUuid, 16);
  if (owner != fast_uuid) {
    return corrupt("belongs to the store " + uuid_text(owner) + ", not to this brick's store " +
                   uuid_text(fast_uuid) + "; refusing it (its blocks are that brick's data)");
  }
  const uint64_t slots = slot_count_for(size);
  if (uint64_t rs = load64(sb + kSbRegionSize); rs != size) {
    return corrupt("superblock says the file is " + std::to_string(rs) + " bytes but it is " +
                   std::to_string(size) + " (was it resized?)");
  }
  if (load64(sb + kSbBlockSize) != kBlockSize || load64(sb + kSbSlotCount) != slots ||
      load64(sb + kSbMapOffset) != kMapOffset || load64(sb + kSbMapEntries) != slots ||
      load64(sb + kSbSlotsOffset) != slots_offset_for(slots)) {
    return corrupt("superblock geometry (block_size, slot_count, map_offset, map_entries, slots_offset) does "
                   "not match a file of " + std::to_string(size) + " bytes");
  }
  std::memcpy(uuid_.data(), sb + kSbUuid, 16);
  fast_uuid_ = owner;
  slot_count_ = slots;
  map_offset_ = kMapOffset;
  slots_offset_ = slots_offset_for(slots);
  return Status::Ok();
}

}  // namespace pbrick
