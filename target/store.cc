// The store: superblock, map and slots in one PmemRegion. docs/layout.md is the
// byte-level description; the constants below are its code form.
#include "target/store.h"

#include <sys/random.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <string>

#include "common/crc32c.h"
#include "common/log.h"
#include "common/units.h"
#include "target/media_util.h"

namespace pbrick {
namespace {

// ---- Superblock (offset 0, 4096 bytes, little-endian) -------------------------
using namespace media;  // little-endian words, geometry (target/media_util.h)
constexpr char kMagic[8] = {'P', 'B', 'R', 'K', 'S', 'T', 'O', 'R'};
// Written over the magic while a format is in progress (see format()).
constexpr char kFormatMarker[8] = {'P', 'B', 'R', 'K', 'I', 'N', 'I', 'T'};
// Version 2 adds a checksum to every map entry; version 1 stores are upgraded
// in place by Open() (upgrade_map()).
constexpr uint32_t kLayoutVersion = 2;
constexpr uint32_t kLayoutVersionV1 = 1;
// Free slots an ALLOC zeroes at most before it reports ENOSPC, when the
// first ones have no space behind them (Store::alloc).
constexpr size_t kAllocSpaceTries = 8;
constexpr size_t kSbMagic = 0;
constexpr size_t kSbVersion = 8;
constexpr size_t kSbFlags = 12;
// Flags: the store has a slow tier (docs/layout.md, "Slow tier"); set once,
// when a slow tier is first attached, and never cleared. A build that knows no
// flags refuses the store, as does Open() without the slow tier.
constexpr uint32_t kSbFlagSlowTier = 1u << 0;
constexpr uint32_t kKnownSbFlags = kSbFlagSlowTier;
constexpr size_t kSbUuid = 16;
constexpr size_t kSbRegionSize = 32;
constexpr size_t kSbBlockSize = 40;
constexpr size_t kSbSlotCount = 48;
constexpr size_t kSbMapOffset = 56;
constexpr size_t kSbMapEntries = 64;
constexpr size_t kSbSlotsOffset = 72;
constexpr size_t kSbFormatTime = 80;
constexpr size_t kSbReserved = 88;  // zeros up to kSbCrc
constexpr size_t kSbCrc = 4092;     // crc32c of bytes [0, kSbCrc)

// ---- Map (16-byte entries from kMapOffset) -------------------------------------
// Key word: 0 = free; else the 2 MiB-aligned vaddr in bits 21..63 and a tag in
// bits 0..20. Version 2 tags an allocated entry with two bits (VALID, bit 0,
// and VALID2, bit 1), so no single flipped bit turns a free key (0) into an
// allocated one or back. Version 1 had VALID only.
constexpr uint64_t kKeyTagMask = kBlockSize - 1;  // bits 0..20
constexpr uint64_t kKeyVaddrMask = ~(kBlockSize - 1);
constexpr uint64_t kKeyTag = 3;    // version 2: VALID | VALID2
constexpr uint64_t kKeyTagV1 = 1;  // version 1: VALID
// Location word, version 2: slot in bits 0..31, tier in bits 32..39, and in
// bits 40..63 the low 24 bits of CRC-32C over the key word, the location word
// with bits 40..63 zero, and the entry index (entry_check()).
constexpr uint64_t kLocationSlotMask = 0xFFFFFFFFull;
constexpr unsigned kLocationTierShift = 32;
constexpr unsigned kLocationCheckShift = 40;
constexpr uint64_t kLocationCheckedMask = (1ull << kLocationCheckShift) - 1;
// Location word, version 1: slot in bits 0..55, tier in bits 56..63 (always 0),
// so bits 32..63 of a version-1 location are zero.
constexpr uint8_t kTierPmem = 0;

// Entry indices are 32-bit in memory (BlockInfo::entry); that caps a store at
// 2^32 - 1 slots, about 8 PiB, far beyond any pmem device.
constexpr uint64_t kMaxSlots = std::numeric_limits<uint32_t>::max();

// The 24-bit checksum of a version-2 map entry: CRC-32C of 20 bytes (the key
// word, the location word with its check bits zero, the entry index, all
// little-endian), low 24 bits. It covers the entry index so that an entry copied
// to another place in the map does not verify either.
uint32_t entry_check(uint32_t entry, uint64_t key, uint64_t location) {
  uint8_t msg[20];
  put64(msg, key);
  put64(msg + 8, location & kLocationCheckedMask);
  put32(msg + 16, entry);
  return crc32c(msg, sizeof msg) & 0xFFFFFFu;
}

uint64_t make_location(uint32_t entry, uint64_t key, uint64_t slot, uint8_t tier) {
  const uint64_t location = slot | (static_cast<uint64_t>(tier) << kLocationTierShift);
  return location | (static_cast<uint64_t>(entry_check(entry, key, location)) << kLocationCheckShift);
}

std::string hex(uint64_t v) { return format_hex(v); }

Error corrupt(const std::string& what) { return Error(EUCLEAN, what); }

// For a map entry that does not verify: which single flipped bit would explain
// it, as a hint for the operator (the store never repairs by itself). A bit of
// either word whose flip yields a version-2 entry that verifies, with tier 0
// and a slot in range, is a candidate; one candidate is reported as the likely
// original entry, several as ambiguous.
std::string single_bit_hint(uint32_t entry, uint64_t key, uint64_t location, uint64_t slot_count) {
  std::string found;
  int candidates = 0;
  for (int word = 0; word < 2; ++word) {
    for (unsigned bit = 0; bit < 64; ++bit) {
      const uint64_t k = word == 0 ? key ^ (1ull << bit) : key;
      const uint64_t l = word == 1 ? location ^ (1ull << bit) : location;
      if ((k & kKeyTagMask) != kKeyTag) continue;
      if ((l >> kLocationCheckShift) != entry_check(entry, k, l)) continue;
      if (((l >> kLocationTierShift) & 0xFF) != kTierPmem) continue;
      if ((l & kLocationSlotMask) >= slot_count) continue;
      if (++candidates == 1) {
        found = "bit " + std::to_string(bit) + " of the " + (word == 0 ? "key" : "location") +
                " word flipped: with it restored the entry is block " + hex(k & kKeyVaddrMask) +
                " in slot " + std::to_string(l & kLocationSlotMask);
      }
    }
  }
  if (candidates == 0) return "";
  if (candidates > 1) return " (" + std::to_string(candidates) + " different single-bit repairs verify)";
  return " (likely one flipped bit: " + found + ")";
}

// A read-only view of a store image for Check(): nothing may write it.
class ReadOnlyRegion final : public PmemRegion {
 public:
  ReadOnlyRegion(const uint8_t* base, uint64_t size) : base_(base), size_(size) {}
  uint8_t* base() override { return const_cast<uint8_t*>(base_); }
  uint64_t size() const override { return size_; }
  bool is_pmem() const override { return false; }
  void copy_nodrain(uint64_t, const void*, size_t) override { std::abort(); }
  void drain() override {}
  Status persist(uint64_t, uint64_t) override { return Error(EROFS, "store check: read-only"); }
  Status store_word_persist(uint64_t, uint64_t) override {
    return Error(EROFS, "store check: read-only");
  }
  Status zero(uint64_t, uint64_t) override { return Error(EROFS, "store check: read-only"); }
  int sync_fd() const override { return -1; }

 private:
  const uint8_t* base_;
  uint64_t size_;
};

// The size refusals of Open() and Check().
Status check_region_size(uint64_t size) {
  if (size < kMinStoreSize) {
    return Error(EINVAL, "region of " + format_size(size) +
                             " is too small for a store: the minimum is " +
                             format_size(kMinStoreSize) +
                             " (superblock and map padded to 2 MiB, plus one 2 MiB slot)");
  }
  if (slot_count_for(size) > kMaxSlots) {
    return Error(EFBIG, "region of " + format_size(size) + " needs more than " +
                            std::to_string(kMaxSlots) + " slots, the most a store supports");
  }
  return Status::Ok();
}

}  // namespace

Store::Store(std::unique_ptr<PmemRegion> region) : region_(std::move(region)) {}

Result<std::unique_ptr<Store>> Store::Open(std::unique_ptr<PmemRegion> region,
                                           const StoreOpenOptions& options,
                                           std::unique_ptr<PmemRegion> slow_region) {
  if (!region) return Error(EINVAL, "open store: no region");
  PBRICK_TRY(check_region_size(region->size()));

  std::unique_ptr<Store> store(new Store(std::move(region)));
  const uint8_t* sb = store->region_->base();
  const RegionStart start = region_start(sb, store->region_->size());
  const bool blank = start == RegionStart::kBlank;
  const bool interrupted = std::memcmp(sb + kSbMagic, kFormatMarker, sizeof kFormatMarker) == 0;
  if (start == RegionStart::kWipedSuperblock && !options.force_format) {
    return corrupt("the superblock is all zeros but the block map after it is not: a store whose superblock was "
                   "overwritten, not a new region; formatting it (--force-format) would lose every block on it");
  }

  bool do_format = options.force_format;
  if (blank || interrupted) {
    // A region without a store: new, or one whose format never committed (its
    // old contents, if any, are already gone; see format()).
    if (!options.format_if_blank && !options.force_format) {
      return corrupt(blank ? "region is blank (no pbrick store); format it to create one"
                           : "an earlier format of this region was interrupted; format it again");
    }
    do_format = true;
  }

  if (do_format) {
    if (!blank && !interrupted) {
      PBRICK_LOG_WARN("store: force-formatting a region that is not blank; its contents are lost");
    }
    PBRICK_TRY(store->format());
  } else {
    PBRICK_TRY(store->load());
  }
  bool slow_formatted = false;
  if (slow_region) {
    // Blank, or a format cut short: SlowTier::Open formats it.
    const bool slow_blank = SlowTier::Unformatted(slow_region->base(), slow_region->size());
    // A store that has had a slow tier keeps map entries there (the map spans
    // both), for blocks on either tier: a blank one in its place (a lost disk,
    // a wrong path, another one whose format was cut short) would make them
    // vanish and their fast slots look free. Refused before anything is
    // formatted. (A pending flag: the slow tier was being attached when the
    // brick stopped, and its own format may have been cut short.)
    if (slow_blank && store->has_slow_flag_ && !store->slow_flag_pending_ && !options.force_format) {
      return corrupt("the store has a slow tier (superblock flag), but the slow tier given is blank (or was never "
                     "completely formatted): the blocks and map entries on its own would be lost; give the brick "
                     "its own slow tier");
    }
    SlowTierOpenOptions slow_options;
    slow_options.force_format = options.force_format;
    slow_options.format_if_blank = options.format_if_blank;
    auto slow = SlowTier::Open(std::move(slow_region), store->uuid_, slow_options);
    if (!slow) return slow.error();
    store->slow_ = std::move(*slow);
    slow_formatted = slow_blank || options.force_format;
    if (!store->has_slow_flag_ || store->slow_flag_pending_) PBRICK_TRY(store->set_slow_flag());
  } else if (store->has_slow_flag_) {
    return corrupt("the store has a slow tier (superblock flag), and its blocks may be there: give the brick "
                   "its slow tier (--slow-store)");
  }
  std::string first_problem;
  uint64_t problems = 0;
  store->scan_map([&](uint64_t, std::string what) {
    if (problems++ == 0) first_problem = std::move(what);
  });
  if (problems > 0) {
    if (problems > 1) {
      first_problem += " (and " + std::to_string(problems - 1) + " more problems in the map)";
    }
    return corrupt(first_problem + "; `pbrickctl fsck` lists every problem");
  }
  if (slow_formatted && store->slow_blocks_in_fast_map_ > 0) {
    return corrupt("the store has " + std::to_string(store->slow_blocks_in_fast_map_) +
                   " blocks on its slow tier, but the slow tier given is blank (or was just formatted): "
                   "give the brick its own slow tier");
  }
  if (store->layout_version_ == kLayoutVersionV1) PBRICK_TRY(store->upgrade_map());
  return store;
}

StoreCheckReport Store::Check(const uint8_t* base, uint64_t size, const uint8_t* slow_base, uint64_t slow_size) {
  StoreCheckReport report;
  if (Status s = check_region_size(size); !s) {
    report.superblock_error = s.error().context();
    return report;
  }
  if (RegionStart start = region_start(base, size); start != RegionStart::kSuperblock) {
    report.superblock_error = start == RegionStart::kBlank
                                  ? "region is blank (no pbrick store)"
                                  : "the superblock is all zeros but the block map after it is not (a store whose "
                                    "superblock was overwritten)";
    return report;
  }
  if (std::memcmp(base + kSbMagic, kFormatMarker, sizeof kFormatMarker) == 0) {
    report.superblock_error = "a format of this region was interrupted (no pbrick store)";
    return report;
  }
  Store store(std::make_unique<ReadOnlyRegion>(base, size));
  if (Status s = store.load(); !s) {
    report.superblock_error = s.error().context();
    return report;
  }
  // Blocks on a slow tier not given are passed over only when the store has
  // one (its flag): an entry naming the slow tier of a store that never had
  // one is a problem, as the brick finds when it opens the store.
  store.slow_unchecked_ = slow_base == nullptr && store.has_slow_flag_;
  if (slow_base != nullptr && (!store.has_slow_flag_ || store.slow_flag_pending_) &&
      SlowTier::Unformatted(slow_base, slow_size)) {
    report.slow_not_attached = true;
  } else if (slow_base != nullptr) {
    // Never formats: a blank or half-formatted slow tier of a store that has
    // one is a problem here (the brick refuses it too).
    auto slow = SlowTier::Open(std::make_unique<ReadOnlyRegion>(slow_base, slow_size), store.uuid_,
                               SlowTierOpenOptions{.force_format = false, .format_if_blank = false});
    if (!slow) {
      report.superblock_error = slow.error().context();
      return report;
    }
    store.slow_ = std::move(*slow);
    report.slow_checked = true;
    report.slow_slot_count = store.slow_->slot_count();
  }
  store.scan_map([&](uint64_t entry, std::string what) {
    report.map_problems.push_back({entry, std::move(what)});
  });
  report.slow_unchecked = slow_base == nullptr && store.has_slow_flag_;
  report.layout_version = store.layout_version_;
  report.upgrade_interrupted = store.upgrade_interrupted_;
  report.uuid = store.uuid_;
  report.slot_count = store.slot_count_;
  for (const auto& [vaddr, block] : store.index_) report.slow_blocks += block.tier == kTierSlow ? 1 : 0;
  report.allocated_blocks = store.index_.size();
  report.entries_to_upgrade = store.v1_entries_.size();
  return report;
}

// Format protocol (docs/layout.md, "Format"): media::write_formatted() with
// the "PBRKINIT" marker and the "PBRKSTOR" magic.
Status Store::format() {
  PmemRegion& r = *region_;
  const uint64_t size = r.size();
  const uint64_t slots = slot_count_for(size);
  const uint64_t slots_offset = slots_offset_for(slots);

  auto random = random_uuid();
  if (!random) return random.error();
  const std::array<uint8_t, 16> uuid = *random;

  std::array<uint8_t, kSuperblockSize> sb{};
  std::memcpy(sb.data() + kSbMagic, kMagic, sizeof kMagic);
  put32(sb.data() + kSbVersion, kLayoutVersion);
  put32(sb.data() + kSbFlags, 0);
  std::memcpy(sb.data() + kSbUuid, uuid.data(), uuid.size());
  put64(sb.data() + kSbRegionSize, size);
  put64(sb.data() + kSbBlockSize, kBlockSize);
  put64(sb.data() + kSbSlotCount, slots);
  put64(sb.data() + kSbMapOffset, kMapOffset);
  put64(sb.data() + kSbMapEntries, slots);
  put64(sb.data() + kSbSlotsOffset, slots_offset);
  put64(sb.data() + kSbFormatTime, static_cast<uint64_t>(std::time(nullptr)));
  put32(sb.data() + kSbCrc, crc32c(sb.data(), kSbCrc));

  static_assert(kSbMagic == 0, "write_formatted() writes the magic word at offset 0");
  PBRICK_TRY(write_formatted(r, sb, kFormatMarker, kMagic, slots_offset, "format store"));

  uuid_ = uuid;
  layout_version_ = kLayoutVersion;
  upgrade_interrupted_ = false;
  slot_count_ = slots;
  map_offset_ = kMapOffset;
  slots_offset_ = slots_offset;
  PBRICK_LOG_NOTICE("store: formatted %s: %llu slots of 2 MiB, map at %s, slots at %s",
                    format_size(size).c_str(), static_cast<unsigned long long>(slots),
                    hex(kMapOffset).c_str(), hex(slots_offset).c_str());
  return Status::Ok();
}

// The superblock checksum the bytes at `sb` would have with `version` in the
// version field: an upgrade writes that checksum before the version (upgrade_map()).
// The same with `flags` in the flags field (set_slow_flag()).
static uint32_t superblock_crc_with_flags(const uint8_t* sb, uint32_t flags) {
  std::array<uint8_t, kSbCrc> copy;
  std::memcpy(copy.data(), sb, kSbCrc);
  put32(copy.data() + kSbFlags, flags);
  return crc32c(copy.data(), kSbCrc);
}

static uint32_t superblock_crc_with_version(const uint8_t* sb, uint32_t version) {
  std::array<uint8_t, kSbCrc> copy;
  std::memcpy(copy.data(), sb, kSbCrc);
  put32(copy.data() + kSbVersion, version);
  return crc32c(copy.data(), kSbCrc);
}

Status Store::load() {
  const uint8_t* sb = region_->base();
  const uint64_t size = region_->size();
  if (std::memcmp(sb + kSbMagic, kMagic, sizeof kMagic) != 0) {
    return corrupt("not a pbrick store (bad magic); use force-format to overwrite it");
  }
  uint32_t version = load32(sb + kSbVersion);
  if (version != kLayoutVersion && version != kLayoutVersionV1) {
    return corrupt("unsupported store layout version " + std::to_string(version) +
                   " (this build understands versions " + std::to_string(kLayoutVersionV1) +
                   " and " + std::to_string(kLayoutVersion) + ")");
  }
  uint32_t stored_crc = load32(sb + kSbCrc);
  uint32_t crc = crc32c(sb, kSbCrc);
  bool upgrade_interrupted = false;
  bool slow_flag_pending = false;
  if (stored_crc != crc) {
    // The one state a crash can leave with a checksum that does not match:
    // an upgrade wrote the version-2 checksum but not yet the version word.
    // Or setting the slow tier flag wrote the new checksum but not the flag.
    if (version == kLayoutVersionV1 &&
        stored_crc == superblock_crc_with_version(sb, kLayoutVersion)) {
      upgrade_interrupted = true;
    } else if (stored_crc == superblock_crc_with_flags(sb, load32(sb + kSbFlags) | kSbFlagSlowTier)) {
      slow_flag_pending = true;
    } else {
      return corrupt("superblock checksum mismatch (stored " + hex(stored_crc) + ", computed " +
                     hex(crc) + "): the superblock is corrupt");
    }
  }
  // Past the checksum, anything unexpected was written that way: by a newer
  // layout or a bug, not by media corruption. Refuse rather than guess.
  if (uint32_t flags = load32(sb + kSbFlags); (flags & ~kKnownSbFlags) != 0) {
    return corrupt("superblock has unknown flags " + hex(flags));
  }
  if (!all_zero(sb + kSbReserved, kSbCrc - kSbReserved)) {
    return corrupt("superblock reserved bytes [" + std::to_string(kSbReserved) + ", " +
                   std::to_string(kSbCrc) + ") are not zero");
  }
  uint64_t region_size = load64(sb + kSbRegionSize);
  if (region_size != size) {
    return corrupt("superblock says the region is " + std::to_string(region_size) +
                   " bytes but it is " + std::to_string(size) +
                   " (was the file or device resized?)");
  }
  uint64_t block_size = load64(sb + kSbBlockSize);
  if (block_size != kBlockSize) {
    return corrupt("superblock block_size " + std::to_string(block_size) + " is not " +
                   std::to_string(kBlockSize));
  }
  const uint64_t slots = slot_count_for(size);
  uint64_t slot_count = load64(sb + kSbSlotCount);
  if (slot_count != slots) {
    return corrupt("superblock slot_count " + std::to_string(slot_count) + " is not the " +
                   std::to_string(slots) + " a region of " + std::to_string(size) + " bytes holds");
  }
  uint64_t map_offset = load64(sb + kSbMapOffset);
  if (map_offset != kMapOffset) {
    return corrupt("superblock map_offset " + hex(map_offset) + " is not " + hex(kMapOffset));
  }
  uint64_t map_entries = load64(sb + kSbMapEntries);
  if (map_entries != slots) {
    return corrupt("superblock map_entries " + std::to_string(map_entries) + " is not slot_count " +
                   std::to_string(slots));
  }
  uint64_t slots_offset = load64(sb + kSbSlotsOffset);
  if (slots_offset != slots_offset_for(slots)) {
    return corrupt("superblock slots_offset " + hex(slots_offset) + " is not " +
                   hex(slots_offset_for(slots)));
  }
  std::memcpy(uuid_.data(), sb + kSbUuid, uuid_.size());
  slot_count_ = slots;
  map_offset_ = map_offset;
  slots_offset_ = slots_offset;
  layout_version_ = version;
  upgrade_interrupted_ = upgrade_interrupted;
  has_slow_flag_ = slow_flag_pending || (load32(sb + kSbFlags) & kSbFlagSlowTier) != 0;
  slow_flag_pending_ = slow_flag_pending;
  return Status::Ok();
}

void Store::scan_map(const ProblemSink& problem) {
  constexpr uint32_t kNoEntry = std::numeric_limits<uint32_t>::max();
  index_.clear();
  free_slots_.clear();
  slow_free_slots_.clear();
  free_entries_.clear();
  v1_entries_.clear();
  lru_.clear();
  mapped_blocks_ = 0;
  slow_blocks_in_fast_map_ = 0;

  // A version-1 store may hold entries of both formats: version 1, and (after
  // an interrupted upgrade) version 2 or its first half, the new location
  // under the old key. The slow tier's map never held version-1 entries.
  const bool v1_store = layout_version_ == kLayoutVersionV1;
  const uint64_t slow_slots = slow_ ? slow_->slot_count() : 0;
  std::vector<uint32_t> slot_owner[2] = {std::vector<uint32_t>(slot_count_, kNoEntry),
                                         std::vector<uint32_t>(slow_slots, kNoEntry)};
  const uint64_t entries = entry_count();
  for (uint64_t e = 0; e < entries; ++e) {
    const auto entry = static_cast<uint32_t>(e);
    const uint8_t* p = entry_ptr(entry);
    const uint64_t key = load64(p);
    const uint64_t location = load64(p + 8);
    // A free entry is exactly key 0; its location word is stale and ignored.
    if (key == 0) {
      free_entries_.push_back(entry);
      continue;
    }
    const std::string where = "map entry " + std::to_string(e) + ": ";
    const uint64_t tag = key & kKeyTagMask;
    const uint64_t vaddr = key & kKeyVaddrMask;
    const bool v1_allowed = v1_store && e < slot_count_;
    if (tag != kKeyTag && !(v1_allowed && tag == kKeyTagV1)) {
      problem(e, where + "key " + hex(key) + " has reserved bits set or lacks the VALID bits " +
                     "(bits 0..20 of an allocated entry's key are " + hex(kKeyTag) + ")" +
                     single_bit_hint(entry, key, location, slot_count_));
      continue;
    }
    uint64_t slot;
    unsigned tier;
    if (tag == kKeyTagV1 && (location >> kLocationTierShift) == 0) {
      // Version 1, not converted yet: slot in the low bits, tier 0.
      slot = location;
      tier = kTierPmem;
    } else {
      const auto stored = static_cast<uint32_t>(location >> kLocationCheckShift);
      const uint32_t computed = entry_check(entry, vaddr | kKeyTag, location);
      if (stored != computed) {
        problem(e, where + "checksum mismatch: key " + hex(key) + " (block " + hex(vaddr) +
                       "), location " + hex(location) + ": stored check " + hex(stored) +
                       ", computed " + hex(computed) + "; the entry is corrupt" +
                       single_bit_hint(entry, key, location, slot_count_));
        continue;
      }
      slot = location & kLocationSlotMask;
      tier = static_cast<unsigned>((location >> kLocationTierShift) & 0xFF);
    }
    if (tier != kTierFast && tier != kTierSlow) {
      problem(e, where + "block " + hex(vaddr) + " is on tier " + std::to_string(tier) +
                     ", which this build does not support");
      continue;
    }
    if (tier == kTierSlow && e < slot_count_) ++slow_blocks_in_fast_map_;
    if (tier == kTierSlow && !slow_) {
      if (slow_unchecked_) {  // Check() of the fast store alone
        auto [it, inserted] = index_.emplace(vaddr, BlockInfo{slot, entry, 0, kTierSlow, false, false, 0, location, {}});
        if (!inserted) {
          problem(e, where + "block " + hex(vaddr) + " is also mapped by map entry " +
                         std::to_string(it->second.entry));
        }
        continue;
      }
      problem(e, where + "block " + hex(vaddr) + " is on the slow tier, but the brick has no slow tier "
                     "(give it --slow-store)");
      continue;
    }
    const uint64_t tier_slots = tier == kTierFast ? slot_count_ : slow_slots;
    if (slot >= tier_slots) {
      problem(e, where + "block " + hex(vaddr) + " points to slot " + std::to_string(slot) + " of the " +
                     (tier == kTierFast ? "fast" : "slow") + " tier, out of range (it has " +
                     std::to_string(tier_slots) + " slots)");
      continue;
    }
    if (slot_owner[tier][slot] != kNoEntry) {
      problem(e, where + "block " + hex(vaddr) + " uses " + (tier == kTierFast ? "" : "slow tier ") + "slot " +
                     std::to_string(slot) + ", which map entry " + std::to_string(slot_owner[tier][slot]) +
                     " also uses");
      continue;
    }
    const auto t = static_cast<uint8_t>(tier);
    const uint64_t v2_location = make_location(entry, vaddr | kKeyTag, slot, t);
    auto [it, inserted] = index_.emplace(vaddr, BlockInfo{slot, entry, 0, t, false, false, 0, v2_location, {}});
    if (!inserted) {
      problem(e, where + "block " + hex(vaddr) + " is also mapped by map entry " +
                     std::to_string(it->second.entry));
      continue;
    }
    slot_owner[tier][slot] = entry;
    if (tag != kKeyTag) v1_entries_.push_back(entry);
  }
  for (uint64_t s = 0; s < slot_count_; ++s) {
    if (slot_owner[0][s] == kNoEntry) free_slots_.push_back(s);
  }
  for (uint64_t s = 0; s < slow_slots; ++s) {
    if (slot_owner[1][s] == kNoEntry) slow_free_slots_.push_back(s);
  }
  // Ascending vectors are already valid min-heaps; make_heap documents the intent.
  std::make_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
  std::make_heap(slow_free_slots_.begin(), slow_free_slots_.end(), std::greater<>());
  std::make_heap(free_entries_.begin(), free_entries_.end(), std::greater<>());
  // Nothing is mapped after an open: every fast block is a demotion candidate,
  // in address order.
  for (auto& [vaddr, block] : index_) {
    if (block.tier == kTierFast) lru_add(vaddr, block);
  }
}

// Upgrade protocol (docs/layout.md, "Upgrade from version 1"). Every word
// written is one aligned 8-byte store, and every state in between is one that
// load() and scan_map() accept with the same blocks:
//   1. each version-1 entry gets its version-2 location (checksummed for the
//      version-2 key), under its still version-1 key; then the map is persisted;
//   2. each such entry gets its version-2 key; the map is persisted;
//   3. the superblock word holding the checksum gets the checksum of the
//      version-2 superblock (a version-1 superblock with that checksum is
//      recognised as "upgrade interrupted");
//   4. commit: the version word becomes 2.
// The word-by-word copies of steps 1 and 2 cost one persist of the map each,
// not one per entry, which matters for a store of millions of entries on a file.
Status Store::upgrade_map() {
  PmemRegion& r = *region_;
  auto fail = [](const Error& e) { return e.wrap("upgrade store to layout version 2"); };
  const uint8_t* base = r.base();
  const uint64_t map_len = slot_count_ * kMapEntrySize;
  auto block_of = [&](uint32_t entry) -> const std::pair<const uint64_t, BlockInfo>& {
    return *index_.find(load64(base + entry_offset(entry)) & kKeyVaddrMask);
  };
  for (uint32_t entry : v1_entries_) {
    const BlockInfo& block = block_of(entry).second;
    const uint64_t off = entry_offset(entry) + 8;
    if (load64(base + off) != block.location) {
      const uint64_t word = le64(block.location);
      r.copy_nodrain(off, &word, sizeof word);
    }
  }
  if (!v1_entries_.empty()) {
    if (Status s = r.persist(map_offset_, map_len); !s) return fail(s.error());
  }
  for (uint32_t entry : v1_entries_) {
    const uint64_t word = le64(block_of(entry).first | kKeyTag);
    r.copy_nodrain(entry_offset(entry), &word, sizeof word);
  }
  if (!v1_entries_.empty()) {
    if (Status s = r.persist(map_offset_, map_len); !s) return fail(s.error());
  }

  std::array<uint8_t, kSuperblockSize> sb;
  std::memcpy(sb.data(), base, kSuperblockSize);
  put32(sb.data() + kSbVersion, kLayoutVersion);
  put32(sb.data() + kSbCrc, crc32c(sb.data(), kSbCrc));
  constexpr size_t kCrcWord = kSbCrc - 4;  // reserved bytes 4088..4091 and the checksum
  if (Status s = r.store_word_persist(kCrcWord, word_of(sb.data() + kCrcWord)); !s) {
    return fail(s.error());
  }
  if (Status s = r.store_word_persist(kSbVersion, word_of(sb.data() + kSbVersion)); !s) {
    return fail(s.error());
  }
  PBRICK_LOG_NOTICE("store: upgraded from layout version 1 to 2: %zu map entries now carry a checksum%s",
                    v1_entries_.size(),
                    upgrade_interrupted_ ? " (an earlier upgrade was interrupted)" : "");
  layout_version_ = kLayoutVersion;
  upgrade_interrupted_ = false;
  v1_entries_.clear();
  v1_entries_.shrink_to_fit();
  return Status::Ok();
}

uint64_t Store::entry_count() const { return slot_count_ + (slow_ ? slow_->slot_count() : 0); }

uint64_t Store::entry_offset(uint32_t entry) const {
  if (entry < slot_count_) return map_offset_ + entry * kMapEntrySize;
  return slow_->map_offset() + (entry - slot_count_) * kMapEntrySize;
}

PmemRegion& Store::entry_region(uint32_t entry) const {
  return entry < slot_count_ ? *region_ : slow_->region();
}

const uint8_t* Store::entry_ptr(uint32_t entry) const { return entry_region(entry).base() + entry_offset(entry); }

PmemRegion& Store::tier_region(uint8_t tier) const { return tier == kTierFast ? *region_ : slow_->region(); }

uint64_t Store::tier_slot_offset(uint8_t tier, uint64_t slot) const {
  return tier == kTierFast ? slots_offset_ + slot * kBlockSize : slow_->slot_byte_offset(slot);
}

void Store::lru_add(uint64_t vaddr, BlockInfo& block, bool coldest) {
  if (block.in_lru) return;
  block.lru = coldest ? lru_.insert(lru_.begin(), vaddr) : lru_.insert(lru_.end(), vaddr);
  block.in_lru = true;
}

void Store::lru_remove(BlockInfo& block) {
  if (!block.in_lru) return;
  lru_.erase(block.lru);
  block.in_lru = false;
}

Status Store::check_vaddr(const char* op, uint64_t vaddr) const {
  if ((vaddr & (kBlockSize - 1)) != 0) {
    return Error(EINVAL, std::string(op) + " " + hex(vaddr) + ": address is not 2 MiB aligned");
  }
  return Status::Ok();
}

Status Store::verify_entry(const char* op, uint64_t vaddr, const BlockInfo& block) const {
  const uint8_t* p = entry_ptr(block.entry);
  const uint64_t key = load64(p);
  const uint64_t location = load64(p + 8);
  const uint64_t want_key = vaddr | kKeyTag;
  if (key == want_key && location == block.location) [[likely]] {
    return Status::Ok();
  }
  std::string what = std::string(op) + " " + hex(vaddr) + ": map entry " +
                     std::to_string(block.entry) + " of the block changed on the medium (key " +
                     hex(key) + ", location " + hex(location) + "; expected key " + hex(want_key) +
                     ", location " + hex(block.location) +
                     "): the block is quarantined; stop the brick and run `pbrickctl fsck`";
  PBRICK_LOG_ERROR("%s", what.c_str());
  return corrupt(what);
}

// Alloc protocol (docs/layout.md, "Alloc"): the slot is zeroed durably, then
// the entry's location word is written while its key is still 0 (a free entry's
// location is ignored, so this is invisible), then the key store commits. A
// crash before the commit leaves the entry free; after it, the block exists and
// its slot is already zero.
Status Store::alloc(uint64_t vaddr) {
  PBRICK_TRY(check_vaddr("alloc", vaddr));
  if (auto it = index_.find(vaddr); it != index_.end()) {
    PBRICK_TRY(verify_entry("alloc", vaddr, it->second));
    return Error(EEXIST, "alloc " + hex(vaddr) + ": block already allocated");
  }
  const uint8_t tier = !free_slots_.empty() ? kTierFast : kTierSlow;
  std::vector<uint64_t>& free_slots = tier_free(tier);
  if (free_slots.empty() || free_entries_.empty()) {
    return Error(ENOSPC, "alloc " + hex(vaddr) + ": no free slot (all " + std::to_string(entry_count()) +
                             " blocks are allocated)");
  }
  // With a slow tier the last free slot stays free: a move takes a slot
  // before it gives one back, and with none a block on the slow tier could
  // never come up to be mapped (nothing could go down to make room).
  if (slow_ && free_slots_.size() + slow_free_slots_.size() == 1) {
    return Error(ENOSPC, "alloc " + hex(vaddr) + ": no free slot (the last one of a brick with a slow tier is "
                                                 "kept for moving blocks between the tiers)");
  }
  const uint32_t entry = free_entries_.front();
  const uint64_t off = entry_offset(entry);
  PmemRegion& map_region = entry_region(entry);
  const std::string what = "alloc " + hex(vaddr);
  if (const uint64_t key = load64(entry_ptr(entry)); key != 0) {
    // Something wrote a free entry. Never reuse it; the next Open() reports it.
    std::pop_heap(free_entries_.begin(), free_entries_.end(), std::greater<>());
    free_entries_.pop_back();
    std::string problem = what + ": map entry " + std::to_string(entry) +
                          " should be free but holds key " + hex(key) +
                          "; the entry is quarantined; stop the brick and run `pbrickctl fsck`";
    PBRICK_LOG_ERROR("%s", problem.c_str());
    return corrupt(problem);
  }

  // The lowest free slot first. One whose space is gone (a hole: the
  // fallocate of its zeroing found the file system full) stays first in the
  // heap, and would fail every ALLOC with ENOSPC while the other free slots
  // still hold their space: the next ones are tried (a few: each try of a
  // slot that holds its space gives it up and takes it back).
  uint64_t slot = free_slots.front();
  Status zeroed = tier_region(tier).zero(tier_slot_offset(tier, slot), kBlockSize);
  if (!zeroed && zeroed.error().errnum() == ENOSPC && free_slots.size() > 1) {
    std::vector<uint64_t> others(free_slots);
    std::sort(others.begin(), others.end());
    const size_t tries = std::min<size_t>(others.size(), kAllocSpaceTries);
    for (size_t i = 1; i < tries; ++i) {
      Status st = tier_region(tier).zero(tier_slot_offset(tier, others[i]), kBlockSize);
      if (st || st.error().errnum() != ENOSPC) {
        slot = others[i];
        zeroed = std::move(st);
        break;
      }
    }
  }
  if (!zeroed) return zeroed.error().wrap(what);
  // The location carries the checksum of the key it is about to get.
  const uint64_t key = vaddr | kKeyTag;
  const uint64_t location = make_location(entry, key, slot, tier);
  if (Status s = map_region.store_word_persist(off + 8, le64(location)); !s) {
    return s.error().wrap(what);
  }
  if (Status s = map_region.store_word_persist(off, le64(key)); !s) {
    // Persistence failed, so the key may or may not be on media. Put key 0 back
    // (best effort) so memory at least agrees with the index, which still has
    // the entry free.
    (void)map_region.store_word_persist(off, 0);
    return s.error().wrap(what);
  }

  if (slot == free_slots.front()) {
    std::pop_heap(free_slots.begin(), free_slots.end(), std::greater<>());
    free_slots.pop_back();
  } else {
    free_slots.erase(std::find(free_slots.begin(), free_slots.end(), slot));
    std::make_heap(free_slots.begin(), free_slots.end(), std::greater<>());
  }
  std::pop_heap(free_entries_.begin(), free_entries_.end(), std::greater<>());
  free_entries_.pop_back();
  auto it = index_.emplace(vaddr, BlockInfo{slot, entry, 0, tier, false, false, 0, location, {}}).first;
  if (tier == kTierFast) lru_add(vaddr, it->second);
  return Status::Ok();
}

// Free protocol (docs/layout.md, "Free"): the key store (key = 0) commits; the
// slot is then zeroed to return the space and scrub the data. A crash between
// the two leaves a free slot with old data, which the next alloc zeros anyway.
Status Store::free(uint64_t vaddr) {
  PBRICK_TRY(check_vaddr("free", vaddr));
  auto it = index_.find(vaddr);
  if (it == index_.end()) return Error(ENOENT, "free " + hex(vaddr) + ": block not allocated");
  const BlockInfo block = it->second;
  PBRICK_TRY(verify_entry("free", vaddr, block));
  if (block.pins > 0) {
    return Error(EBUSY, "free " + hex(vaddr) + ": block is mapped (" + std::to_string(block.pins) +
                            " mappings)");
  }
  if (block.moving) return Error(EBUSY, "free " + hex(vaddr) + ": block is moving between tiers; retry");
  const uint64_t off = entry_offset(block.entry);
  PmemRegion& map_region = entry_region(block.entry);
  if (Status s = map_region.store_word_persist(off, 0); !s) {
    (void)map_region.store_word_persist(off, le64(vaddr | kKeyTag));  // as in alloc
    return s.error().wrap("free " + hex(vaddr));
  }

  lru_remove(it->second);
  index_.erase(it);
  std::vector<uint64_t>& free_slots = tier_free(block.tier);
  free_slots.push_back(block.slot);
  std::push_heap(free_slots.begin(), free_slots.end(), std::greater<>());
  free_entries_.push_back(block.entry);
  std::push_heap(free_entries_.begin(), free_entries_.end(), std::greater<>());

  if (Status s = tier_region(block.tier).zero(tier_slot_offset(block.tier, block.slot), kBlockSize); !s) {
    PBRICK_LOG_WARN("free %s: could not zero slot %llu (alloc will): %s", hex(vaddr).c_str(),
                    static_cast<unsigned long long>(block.slot), s.error().message().c_str());
  }
  return Status::Ok();
}

Result<uint64_t> Store::slot_offset(uint64_t vaddr) const {
  PBRICK_TRY(check_vaddr("block", vaddr));
  auto it = index_.find(vaddr);
  if (it == index_.end()) return Error(ENOENT, "block " + hex(vaddr) + ": not allocated");
  PBRICK_TRY(verify_entry("block", vaddr, it->second));
  if (it->second.tier != kTierFast || it->second.moving) {
    return Error(EAGAIN, "block " + hex(vaddr) + ": on the slow tier or moving; promote it first");
  }
  return slots_offset_ + it->second.slot * kBlockSize;
}

Status Store::pin(uint64_t vaddr) {
  PBRICK_TRY(check_vaddr("map", vaddr));
  auto it = index_.find(vaddr);
  if (it == index_.end()) return Error(ENOENT, "map " + hex(vaddr) + ": block not allocated");
  BlockInfo& block = it->second;
  PBRICK_TRY(verify_entry("map", vaddr, block));
  if (block.pins == std::numeric_limits<uint32_t>::max()) {
    return Error(EBUSY, "map " + hex(vaddr) + ": too many mappings");
  }
  if (block.tier != kTierFast || block.moving) {
    return Error(EAGAIN, "map " + hex(vaddr) + ": on the slow tier or moving; promote it first");
  }
  lru_remove(block);
  if (block.pins++ == 0) ++mapped_blocks_;
  return Status::Ok();
}

void Store::unpin(uint64_t vaddr) {
  auto it = index_.find(vaddr);
  if (it == index_.end() || it->second.pins == 0) {
    // A caller bug; keep the counters sane rather than wrapping around.
    PBRICK_LOG_ERROR("unpin %s: block is not pinned", hex(vaddr).c_str());
    assert(false && "unpin of a block that is not pinned");
    return;
  }
  if (--it->second.pins == 0) {
    --mapped_blocks_;
    lru_add(vaddr, it->second);
  }
}

uint32_t Store::pin_count(uint64_t vaddr) const {
  auto it = index_.find(vaddr);
  return it == index_.end() ? 0 : it->second.pins;
}

proto::ListReply Store::list(uint64_t cursor, uint32_t max_extents) const {
  // A reply must fit one frame; the protocol caps the extent count.
  max_extents = std::min(max_extents, proto::kMaxListExtents);
  proto::ListReply reply;
  auto it = index_.lower_bound(cursor);
  for (; it != index_.end(); ++it) {
    const uint64_t vaddr = it->first;
    const BlockInfo& block = it->second;
    // LIST has no per-block status: a block whose entry changed is still
    // listed (it exists), logged here, and refused by MAP.
    (void)verify_entry("list", vaddr, block);
    const uint32_t flags = block.pins > 0 ? proto::kExtentMapped : 0;
    if (!reply.extents.empty()) {
      proto::Extent& last = reply.extents.back();
      // vaddr > last.start_vaddr, so the difference cannot overflow, unlike
      // start + count * 2 MiB for an extent ending at the top of the space.
      if ((vaddr - last.start_vaddr) >> kBlockShift == last.block_count &&
          last.extent_flags == flags && last.tier == block.tier) {
        ++last.block_count;
        continue;
      }
    }
    if (reply.extents.size() == max_extents) break;
    reply.extents.push_back(proto::Extent{vaddr, 1, flags, block.tier});
  }
  if (it != index_.end()) {
    reply.list_flags |= proto::kListMore;
    // Just past the last block covered. That block is below `it`, so it is not
    // the top block of the address space and adding 2 MiB cannot overflow. With
    // max_extents 0 nothing is covered and the caller resumes where it asked.
    if (reply.extents.empty()) {
      reply.next_cursor = cursor;
    } else {
      const proto::Extent& last = reply.extents.back();
      reply.next_cursor = last.start_vaddr + (last.block_count << kBlockShift);
    }
  }
  return reply;
}

StoreStats Store::stats() const {
  StoreStats s;
  s.fast_capacity_blocks = slot_count_;
  s.fast_free_blocks = free_slots_.size();
  s.slow_capacity_blocks = slow_ ? slow_->slot_count() : 0;
  s.slow_free_blocks = slow_free_slots_.size();
  s.capacity_blocks = s.fast_capacity_blocks + s.slow_capacity_blocks;
  s.free_blocks = s.fast_free_blocks + s.slow_free_blocks;
  s.allocated_blocks = index_.size();
  s.mapped_blocks = mapped_blocks_;
  return s;
}

// Move protocol (docs/layout.md, "Move"): the caller has made the copy in the
// reserved slot durable before commit_move(); the flip is one store of the
// entry's location word (same key, new slot and tier, new check), so a crash
// leaves the entry naming exactly one of the two copies, both complete. The old
// slot becomes free only after the flip; its stale bytes are overwritten by the
// next move into it or zeroed by the next alloc.
Result<Store::Move> Store::begin_move(uint64_t vaddr, uint8_t to_tier) {
  PBRICK_TRY(check_vaddr("move", vaddr));
  if (!slow_) return Error(EINVAL, "move " + hex(vaddr) + ": the brick has no slow tier");
  auto it = index_.find(vaddr);
  if (it == index_.end()) return Error(ENOENT, "move " + hex(vaddr) + ": block not allocated");
  BlockInfo& block = it->second;
  if (Status v = verify_entry("move", vaddr, block); !v) {
    lru_remove(block);  // quarantined: never a demotion candidate again
    return v.error();
  }
  if (block.pins > 0) return Error(EBUSY, "move " + hex(vaddr) + ": block is mapped");
  if (block.moving) return Error(EBUSY, "move " + hex(vaddr) + ": block is already moving");
  if (block.tier == to_tier) return Error(EALREADY, "move " + hex(vaddr) + ": already on that tier");
  std::vector<uint64_t>& free_slots = tier_free(to_tier);
  if (free_slots.empty()) {
    return Error(ENOSPC, "move " + hex(vaddr) + ": no free slot on the " +
                             (to_tier == kTierFast ? "fast" : "slow") + " tier");
  }
  std::pop_heap(free_slots.begin(), free_slots.end(), std::greater<>());
  block.dest_slot = free_slots.back();
  free_slots.pop_back();
  block.moving = true;
  lru_remove(block);
  Move m;
  m.vaddr = vaddr;
  m.from_tier = block.tier;
  m.to_tier = to_tier;
  m.from_offset = tier_slot_offset(block.tier, block.slot);
  m.to_offset = tier_slot_offset(to_tier, block.dest_slot);
  return m;
}

Status Store::commit_move(uint64_t vaddr) {
  auto it = index_.find(vaddr);
  if (it == index_.end() || !it->second.moving) {
    return Error(EINVAL, "commit move " + hex(vaddr) + ": no move in progress");
  }
  BlockInfo& block = it->second;
  const std::string what = "move " + hex(vaddr);
  if (Status s = verify_entry("move", vaddr, block); !s) {
    abort_move(vaddr);
    return s;
  }
  const auto to_tier = static_cast<uint8_t>(block.tier == kTierFast ? kTierSlow : kTierFast);
  const uint64_t location = make_location(block.entry, vaddr | kKeyTag, block.dest_slot, to_tier);
  PmemRegion& map_region = entry_region(block.entry);
  if (Status s = map_region.store_word_persist(entry_offset(block.entry) + 8, le64(location)); !s) {
    // Whether the new word reached the medium is unknown; put the old one back
    // so memory agrees with the index, which keeps the old copy. Unless that is
    // durable, the medium may still name the destination slot for this block:
    // it is not handed out again until the brick restarts (and reads the map).
    Status restored = map_region.store_word_persist(entry_offset(block.entry) + 8, le64(block.location));
    if (!restored) {
      PBRICK_LOG_ERROR("%s: tier %u slot %llu left unused until the brick restarts (the map may name it): %s",
                       what.c_str(), static_cast<unsigned>(to_tier), static_cast<unsigned long long>(block.dest_slot),
                       restored.error().message().c_str());
    }
    abort_move(vaddr, /*withhold_destination=*/!restored);
    return s.error().wrap(what);
  }
  std::vector<uint64_t>& old_free = tier_free(block.tier);
  old_free.push_back(block.slot);
  std::push_heap(old_free.begin(), old_free.end(), std::greater<>());
  block.slot = block.dest_slot;
  block.tier = to_tier;
  block.location = location;
  block.moving = false;
  if (to_tier == kTierFast) lru_add(vaddr, block);
  return Status::Ok();
}

void Store::abort_move(uint64_t vaddr, bool withhold_destination) {
  auto it = index_.find(vaddr);
  if (it == index_.end() || !it->second.moving) return;
  BlockInfo& block = it->second;
  const auto to_tier = static_cast<uint8_t>(block.tier == kTierFast ? kTierSlow : kTierFast);
  if (!withhold_destination) {
    std::vector<uint64_t>& free_slots = tier_free(to_tier);
    free_slots.push_back(block.dest_slot);
    std::push_heap(free_slots.begin(), free_slots.end(), std::greater<>());
  }
  block.moving = false;
  if (block.tier == kTierFast) lru_add(vaddr, block, /*coldest=*/true);
}

void Store::release_slot(uint8_t tier, uint64_t offset) {
  const uint64_t base = tier_slot_offset(tier, 0);
  std::vector<uint64_t>& free_slots = tier_free(tier);
  free_slots.push_back((offset - base) / kBlockSize);
  std::push_heap(free_slots.begin(), free_slots.end(), std::greater<>());
}

Result<uint8_t> Store::tier_of(uint64_t vaddr) const {
  auto it = index_.find(vaddr);
  if (it == index_.end()) return Error(ENOENT, "block " + hex(vaddr) + ": not allocated");
  return it->second.tier;
}

bool Store::quarantined(uint64_t vaddr) const {
  auto it = index_.find(vaddr);
  if (it == index_.end()) return false;
  const uint8_t* p = entry_ptr(it->second.entry);
  return load64(p) != (vaddr | kKeyTag) || load64(p + 8) != it->second.location;
}

bool Store::moving(uint64_t vaddr) const {
  auto it = index_.find(vaddr);
  return it != index_.end() && it->second.moving;
}

std::optional<uint64_t> Store::demotion_candidate() const {
  if (lru_.empty()) return std::nullopt;
  return lru_.front();
}

// Setting the slow tier flag changes two words of the superblock: first the
// checksum word gets the checksum of the superblock with the flag, then the
// word holding version and flags gets the flag. load() takes a superblock whose
// checksum matches only with the flag as having it (and this completes it).
Status Store::set_slow_flag() {
  PmemRegion& r = *region_;
  std::array<uint8_t, kSuperblockSize> sb;
  std::memcpy(sb.data(), r.base(), kSuperblockSize);
  put32(sb.data() + kSbFlags, load32(sb.data() + kSbFlags) | kSbFlagSlowTier);
  put32(sb.data() + kSbCrc, crc32c(sb.data(), kSbCrc));
  constexpr size_t kCrcWord = kSbCrc - 4;
  auto fail = [](const Error& e) { return e.wrap("mark the store as having a slow tier"); };
  if (Status s = r.store_word_persist(kCrcWord, word_of(sb.data() + kCrcWord)); !s) return fail(s.error());
  if (Status s = r.store_word_persist(kSbVersion, word_of(sb.data() + kSbVersion)); !s) return fail(s.error());
  has_slow_flag_ = true;
  slow_flag_pending_ = false;
  return Status::Ok();
}

}  // namespace pbrick
