#include "gateway/volume_label.h"

#include <algorithm>
#include <cstring>
#include <ctime>

#include "common/client.h"
#include "common/crc32c.h"
#include "common/units.h"

namespace pbrick {

namespace {

constexpr char kLabelMagic[8] = {'P', 'B', 'R', 'K', 'V', 'L', 'B', 'L'};
constexpr char kHolderMagic[8] = {'P', 'B', 'R', 'K', 'H', 'O', 'L', 'D'};
constexpr uint16_t kLabelVersion = 1;
constexpr size_t kCrcOffset = kLabelSlotSize - 4;

// Label slot offsets (docs/layout.md, "Volume label").
constexpr size_t kOffFlags = 12, kOffGeneration = 16, kOffVolumeUuid = 24, kOffLayout = 40, kOffIndex = 44,
                 kOffBrickCount = 48, kOffNameLen = 52, kOffName = 56, kOffSize = 120, kOffCreated = 128,
                 kOffCopies = 136, kOffBricks = 144, kBrickEntrySize = 32,
                 kOffBootIds = kOffBricks + kMaxLabelBricks * kBrickEntrySize;
static_assert(kOffBootIds + kMaxLabelBricks * proto::kUuidSize <= kCrcOffset, "the boot id table fits the slot");
// Holder record offsets.
constexpr size_t kOffHolderUuid = 16, kOffPid = 32, kOffSince = 40, kOffHost = 48, kHostField = 64,
                 kOffProgram = 112, kProgramField = 32, kOffAttachment = 144, kOffClosed = 160,
                 kHolderEnd = 168;

void put16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

bool all_zero(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

bool valid_name(const std::string& name) {
  if (name.size() > kMaxVolumeNameLength) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

bool printable(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

// Common framing of both record kinds: size, magic, version, CRC.
Status check_frame(std::span<const uint8_t> slot, const char (&magic)[8], const char* what) {
  if (slot.size() != kLabelSlotSize) {
    return Error(EBADMSG, std::string(what) + ": " + std::to_string(slot.size()) + " bytes, expected 4096");
  }
  if (std::memcmp(slot.data(), magic, 8) != 0) return Error(EBADMSG, std::string(what) + ": bad magic");
  uint32_t want = get32(slot.data() + kCrcOffset);
  uint32_t got = crc32c(slot.data(), kCrcOffset);
  if (want != got) return Error(EBADMSG, std::string(what) + ": checksum mismatch");
  if (get16(slot.data() + 8) != kLabelVersion) {
    return Error(EBADMSG, std::string(what) + ": unknown version " + std::to_string(get16(slot.data() + 8)));
  }
  if (get16(slot.data() + 10) != 0) return Error(EBADMSG, std::string(what) + ": nonzero reserved bytes");
  return Status::Ok();
}

void seal(std::array<uint8_t, kLabelSlotSize>& out, const char (&magic)[8]) {
  std::memcpy(out.data(), magic, 8);
  put16(out.data() + 8, kLabelVersion);
  put32(out.data() + kCrcOffset, crc32c(out.data(), kCrcOffset));
}

// A NUL-padded text field: `len` bytes, text then zeros, at most len - 1 text.
Result<std::string> get_text(const uint8_t* p, size_t len, const char* what) {
  size_t n = 0;
  while (n < len && p[n] != 0) n++;
  if (n == len) return Error(EINVAL, std::string(what) + " is not terminated");
  if (!all_zero(p + n, len - n)) return Error(EBADMSG, std::string(what) + ": bytes after the terminator");
  std::string s(reinterpret_cast<const char*>(p), n);
  if (!printable(s)) return Error(EINVAL, std::string(what) + " is not printable ASCII");
  return s;
}

std::string brick_desc(size_t i, const BrickSeen& b) {
  return "brick " + std::to_string(i) + " (" + b.endpoint + ")";
}

std::string brick_order(const VolumeLabel& l) {
  std::string out;
  for (size_t i = 0; i < l.bricks.size(); i++) {
    out += (i ? ", " : "") + format_uuid(l.bricks[i].store);
  }
  return out;
}

}  // namespace

std::string volume_desc(const VolumeLabel& l) {
  return "volume " + format_uuid(l.volume_uuid) + (l.name.empty() ? "" : " '" + l.name + "'");
}


Result<uint64_t> label_vaddr(uint64_t base) {
  if (base % proto::kBlockSize != 0) return Error(EINVAL, "volume base " + format_hex(base) + " is not 2 MiB aligned");
  if (base > kMaxLabelledBase) {
    return Error(EINVAL, "volume base " + format_hex(base) + " is above " + format_hex(kMaxLabelledBase) +
                             ": no room for its label area");
  }
  return kLabelAreaStart + 2 * base;
}

bool VolumeLabel::same_identity(const VolumeLabel& o) const {
  return volume_uuid == o.volume_uuid && name == o.name && layout == o.layout && copies == o.copies &&
         bricks == o.bricks;
}

std::array<uint8_t, kLabelSlotSize> encode_label(const VolumeLabel& l) {
  std::array<uint8_t, kLabelSlotSize> out{};
  uint8_t* p = out.data();
  put32(p + kOffFlags, l.flags);
  put64(p + kOffGeneration, l.generation);
  std::memcpy(p + kOffVolumeUuid, l.volume_uuid.data(), proto::kUuidSize);
  put32(p + kOffLayout, static_cast<uint32_t>(l.layout));
  put32(p + kOffIndex, l.index);
  size_t n = std::min<size_t>(l.bricks.size(), kMaxLabelBricks);
  put32(p + kOffBrickCount, static_cast<uint32_t>(n));
  size_t name_len = std::min(l.name.size(), kMaxVolumeNameLength);
  put32(p + kOffNameLen, static_cast<uint32_t>(name_len));
  std::memcpy(p + kOffName, l.name.data(), name_len);
  put64(p + kOffSize, l.size);
  put64(p + kOffCreated, l.created);
  put32(p + kOffCopies, l.layout == Layout::kMirror ? l.copies : 0);
  for (size_t i = 0; i < n; i++) {
    uint8_t* e = p + kOffBricks + i * kBrickEntrySize;
    std::memcpy(e, l.bricks[i].store.data(), proto::kUuidSize);
    put64(e + 16, l.bricks[i].base);
    put64(e + 24, l.layout == Layout::kMirror ? l.bricks[i].stale_since : 0);
    if (l.layout == Layout::kMirror && l.bricks[i].stale_since != 0) {
      std::memcpy(p + kOffBootIds + i * proto::kUuidSize, l.bricks[i].boot_id.data(), proto::kUuidSize);
    }
  }
  seal(out, kLabelMagic);
  return out;
}

Result<VolumeLabel> decode_label(std::span<const uint8_t> slot) {
  PBRICK_TRY(check_frame(slot, kLabelMagic, "volume label"));
  const uint8_t* p = slot.data();
  VolumeLabel l;
  l.flags = get32(p + kOffFlags);
  if ((l.flags & ~kLabelCommitted) != 0) return Error(EINVAL, "volume label: unknown flags " + format_hex(l.flags));
  l.generation = get64(p + kOffGeneration);
  if (l.generation == 0) return Error(EINVAL, "volume label: generation 0");
  std::memcpy(l.volume_uuid.data(), p + kOffVolumeUuid, proto::kUuidSize);
  uint32_t layout = get32(p + kOffLayout);
  if (layout > static_cast<uint32_t>(Layout::kMirror)) {
    return Error(EINVAL, "volume label: unknown layout " + std::to_string(layout));
  }
  l.layout = static_cast<Layout>(layout);
  l.index = get32(p + kOffIndex);
  uint32_t n = get32(p + kOffBrickCount);
  if (n == 0 || n > kMaxLabelBricks) return Error(EINVAL, "volume label: brick count " + std::to_string(n));
  if (l.layout == Layout::kSingle && n != 1) {
    return Error(EINVAL, "volume label: layout single with " + std::to_string(n) + " bricks");
  }
  if (l.index >= n) return Error(EINVAL, "volume label: place " + std::to_string(l.index) + " of " + std::to_string(n));
  uint32_t name_len = get32(p + kOffNameLen);
  if (name_len > kMaxVolumeNameLength) return Error(EINVAL, "volume label: name length " + std::to_string(name_len));
  if (!all_zero(p + kOffName + name_len, 64 - name_len)) return Error(EBADMSG, "volume label: bytes after the name");
  l.name.assign(reinterpret_cast<const char*>(p + kOffName), name_len);
  if (!valid_name(l.name)) return Error(EINVAL, "volume label: name has characters outside [A-Za-z0-9._-]");
  l.size = get64(p + kOffSize);
  if (l.size == 0 || l.size % 4096 != 0) return Error(EINVAL, "volume label: size " + std::to_string(l.size));
  // Before any arithmetic on it: a size near 2^64 would wrap the block count.
  if (l.size > kLabelAreaStart) return Error(EINVAL, "volume label: size " + std::to_string(l.size) + " is beyond "
                                                     "the label areas");
  l.created = get64(p + kOffCreated);
  uint32_t copies = get32(p + kOffCopies);
  if (l.layout == Layout::kMirror) {
    if (copies < kMinCopies || copies > kMaxCopies || copies > n) {
      return Error(EINVAL, "volume label: layout mirror with " + std::to_string(copies) + " copies on " +
                               std::to_string(n) + " bricks");
    }
    l.copies = copies;
    if ((l.size + proto::kBlockSize - 1) / proto::kBlockSize > kMaxMirrorBlocks) {
      return Error(EINVAL, "volume label: a mirror of " + std::to_string(l.size) + " bytes has more blocks than its "
                           "dirty bitmap holds");
    }
  } else if (copies != 0) {
    return Error(EINVAL, "volume label: copies " + std::to_string(copies) + " outside layout mirror");
  }
  if (!all_zero(p + 140, 4)) return Error(EBADMSG, "volume label: nonzero reserved bytes");
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t* e = p + kOffBricks + i * kBrickEntrySize;
    LabelBrick b;
    std::memcpy(b.store.data(), e, proto::kUuidSize);
    b.base = get64(e + 16);
    if (b.base % proto::kBlockSize != 0 || b.base > kMaxLabelledBase) {
      return Error(EINVAL, "volume label: brick " + std::to_string(i) + " base " + format_hex(b.base));
    }
    b.stale_since = get64(e + 24);
    if (l.layout != Layout::kMirror && b.stale_since != 0) {
      return Error(EBADMSG, "volume label: nonzero reserved bytes");
    }
    std::memcpy(b.boot_id.data(), p + kOffBootIds + i * proto::kUuidSize, proto::kUuidSize);
    if (b.stale_since == 0 && b.boot_id != Uuid{}) {
      return Error(EBADMSG, "volume label: brick " + std::to_string(i) + " in sync with a boot id");
    }
    l.bricks.push_back(b);
  }
  // Blocks beyond the volume's end on a brick must stay below the label areas.
  uint64_t blocks = (l.size + proto::kBlockSize - 1) / proto::kBlockSize;
  uint64_t per_brick = Placement{n, l.copies}.slots_per_brick(blocks);
  for (const LabelBrick& b : l.bricks) {
    if (per_brick > (kLabelAreaStart - b.base) / proto::kBlockSize) {
      return Error(EINVAL, "volume label: data of " + format_size(l.size) + " at " + format_hex(b.base) +
                               " reaches the label areas");
    }
  }
  size_t end = kOffBricks + n * kBrickEntrySize;
  size_t boot_ids_end = kOffBootIds + n * proto::kUuidSize;
  if (!all_zero(p + end, kOffBootIds - end) || !all_zero(p + boot_ids_end, kCrcOffset - boot_ids_end)) {
    return Error(EBADMSG, "volume label: nonzero reserved bytes");
  }
  return l;
}

Result<LabelRead> read_label_slots(std::span<const uint8_t> block) {
  if (block.size() < 2 * kLabelSlotSize) return Error(EINVAL, "volume label: short read");
  LabelRead out;
  std::string errors;
  for (int s = 0; s < 2; s++) {
    auto slot = block.subspan(s * kLabelSlotSize, kLabelSlotSize);
    if (all_zero(slot.data(), slot.size())) continue;
    auto l = decode_label(slot);
    if (!l) {
      out.torn = true;
      errors += std::string(errors.empty() ? "" : "; ") + "slot " + (s == 0 ? "A" : "B") + ": " + l.error().context();
      continue;
    }
    if (!out.label || l->generation > out.label->generation) out.label = std::move(*l);
  }
  if (!out.label && out.torn) return Error(EUCLEAN, "damaged volume label (" + errors + ")");
  return out;
}

std::string HolderRecord::to_string() const {
  return program + " pid " + std::to_string(pid) + " on " + host + " since " + format_time(since);
}

std::array<uint8_t, kLabelSlotSize> encode_holder(const HolderRecord& h) {
  std::array<uint8_t, kLabelSlotSize> out{};
  uint8_t* p = out.data();
  std::memcpy(p + kOffHolderUuid, h.volume_uuid.data(), proto::kUuidSize);
  put64(p + kOffPid, h.pid);
  put64(p + kOffSince, h.since);
  std::memcpy(p + kOffHost, h.host.data(), std::min(h.host.size(), kHostField - 1));
  std::memcpy(p + kOffProgram, h.program.data(), std::min(h.program.size(), kProgramField - 1));
  std::memcpy(p + kOffAttachment, h.attachment.data(), h.attachment.size());
  put64(p + kOffClosed, h.closed);
  seal(out, kHolderMagic);
  return out;
}

Result<HolderRecord> decode_holder(std::span<const uint8_t> slot) {
  PBRICK_TRY(check_frame(slot, kHolderMagic, "holder record"));
  const uint8_t* p = slot.data();
  if (!all_zero(p + 12, 4) || !all_zero(p + kHolderEnd, kCrcOffset - kHolderEnd)) {
    return Error(EBADMSG, "holder record: nonzero reserved bytes");
  }
  HolderRecord h;
  std::memcpy(h.volume_uuid.data(), p + kOffHolderUuid, proto::kUuidSize);
  h.pid = get64(p + kOffPid);
  h.since = get64(p + kOffSince);
  auto host = get_text(p + kOffHost, kHostField, "holder record: host");
  if (!host) return host.error();
  auto program = get_text(p + kOffProgram, kProgramField, "holder record: program");
  if (!program) return program.error();
  h.host = std::move(*host);
  h.program = std::move(*program);
  std::memcpy(h.attachment.data(), p + kOffAttachment, h.attachment.size());
  h.closed = get64(p + kOffClosed);
  return h;
}

Result<LabelPlan> plan_labels(std::span<const BrickSeen> bricks, const LabelRequest& req, uint64_t now,
                              const Uuid& fresh_uuid) {
  const size_t n = bricks.size();
  if (n == 0 || n > kMaxLabelBricks) {
    return Error(EINVAL, "a volume has 1.." + std::to_string(kMaxLabelBricks) + " bricks, not " + std::to_string(n));
  }
  if (req.layout == Layout::kSingle && n != 1) {
    return Error(EINVAL, "layout single takes one brick, not " + std::to_string(n));
  }
  const uint32_t req_copies = req.layout == Layout::kMirror ? req.copies : 1;
  if (req.layout == Layout::kMirror && (req_copies < kMinCopies || req_copies > kMaxCopies || req_copies > n)) {
    return Error(EINVAL, "layout mirror keeps 2 or 3 copies on at least as many bricks, not " +
                             std::to_string(req_copies) + " on " + std::to_string(n));
  }
  if (!valid_name(req.name)) return Error(EINVAL, "volume name '" + req.name + "' is not 0..63 of [A-Za-z0-9._-]");
  // The authority: the committed label of the highest generation on any brick.
  const VolumeLabel* auth = nullptr;
  size_t auth_at = 0;
  uint64_t max_generation = 0;
  for (size_t i = 0; i < n; i++) {
    const auto& l = bricks[i].read.label;
    if (!l) continue;
    max_generation = std::max(max_generation, l->generation);
    if (l->committed() && (auth == nullptr || l->generation > auth->generation)) {
      auth = &*l;
      auth_at = i;
    }
  }
  LabelPlan plan;
  for (size_t i = 0; i < n; i++) {
    if (!bricks[i].absent) continue;
    if (req.layout != Layout::kMirror) return Error(EINVAL, brick_desc(i, bricks[i]) + " is missing");
    if (auth == nullptr) {
      return Error(ENODEV, brick_desc(i, bricks[i]) + " is missing and the volume has no label yet: a new mirror "
                                                      "starts with every brick");
    }
  }
  if (auth == nullptr && req.volume_uuid) {
    return Error(kErrWrongStore, brick_desc(0, bricks[0]) + (n > 1 ? " and its other bricks hold" : " holds") +
                                     " no label at base " + format_hex(bricks[0].base) + ": volume " +
                                     format_uuid(*req.volume_uuid) +
                                     " is not there (the volume deleted, or the brick reformatted); not making a "
                                     "new one under what was written to it");
  }
  if (auth == nullptr) {
    // No brick holds a committed label: a first attach, or one that was
    // interrupted before any brick committed (so no data was written through
    // it, and its prepared labels may be overwritten).
    if (req.read_only) {
      return Error(EROFS, "the volume has no label on " + brick_desc(0, bricks[0]) +
                              (n > 1 ? " or its other bricks" : "") + "; attach it read-write once to label it");
    }
    plan.action = LabelPlan::Action::kCreate;
    VolumeLabel& t = plan.target;
    t.flags = kLabelCommitted;
    t.generation = max_generation + 2;  // phase 1 writes generation - 1, uncommitted
    t.volume_uuid = fresh_uuid;
    t.name = req.name;
    t.layout = req.layout;
    t.copies = req_copies;
    t.size = req.size;
    t.created = now;
    for (const BrickSeen& b : bricks) t.bricks.push_back(LabelBrick{b.store, b.base});
    return plan;
  }
  const std::string vol = volume_desc(*auth);
  const std::string auth_brick = brick_desc(auth_at, bricks[auth_at]);
  if (req.volume_uuid && auth->volume_uuid != *req.volume_uuid) {
    return Error(kErrWrongStore, "the label on " + auth_brick + " at base " + format_hex(bricks[auth_at].base) +
                                     " is of " + vol + ", not of volume " + format_uuid(*req.volume_uuid) +
                                     ": another volume took its place");
  }
  if (auth->bricks.size() != n) {
    return Error(EINVAL, vol + " has " + std::to_string(auth->bricks.size()) + " bricks by the label on " + auth_brick +
                             ", but " + std::to_string(n) + " were given");
  }
  if (auth->layout != req.layout) {
    return Error(EINVAL, vol + " has layout " + layout_name(auth->layout) + " by the label on " + auth_brick +
                             ", but layout " + layout_name(req.layout) + " was given");
  }
  if (auth->copies != req_copies) {
    return Error(EINVAL, vol + " keeps " + std::to_string(auth->copies) + " copies by the label on " + auth_brick +
                             ", but " + std::to_string(req_copies) + " were given");
  }
  if (!req.name.empty() && !auth->name.empty() && req.name != auth->name) {
    return Error(EINVAL, "the label on " + auth_brick + " names " + vol + ", not '" + req.name + "'");
  }
  if (auth->layout == Layout::kMirror) {
    // Mirror: the generations order the copies. Two labels that each mark
    // another brick stale, with neither newer than the other, or a brick
    // the authority calls stale that itself went on to mark an in-sync one
    // stale, were written by two attachments that each saw half the bricks:
    // no order is right, so none is taken.
    for (size_t i = 0; i < n; i++) {
      const auto& l = bricks[i].read.label;
      if (bricks[i].absent || !l || !l->committed() || l->volume_uuid != auth->volume_uuid ||
          l->bricks.size() != n) {
        continue;
      }
      for (size_t j = 0; j < n; j++) {
        bool here = l->bricks[j].stale_since != 0, there = auth->bricks[j].stale_since != 0;
        if (here == there) continue;
        if (l->generation == auth->generation || (here && !there && auth->bricks[i].stale_since != 0)) {
          return Error(EUCLEAN, brick_desc(i, bricks[i]) + " (generation " + std::to_string(l->generation) +
                                    ") and " + auth_brick + " (generation " + std::to_string(auth->generation) +
                                    ") disagree about which copies of " + vol + " are current (brick " +
                                    std::to_string(j) + " " + (here ? "stale" : "in sync") + " by one, " +
                                    (there ? "stale" : "in sync") +
                                    " by the other): written apart, they cannot be ordered");
        }
      }
    }
  }
  bool needs_write = false;
  uint64_t max_size = 0, min_size = UINT64_MAX;
  for (size_t i = 0; i < n; i++) {
    const BrickSeen& b = bricks[i];
    if (b.absent) continue;  // a mirror's missing brick: Volume::Open marks it stale
    const std::string desc = brick_desc(i, b);
    const LabelBrick& want = auth->bricks[i];
    if (b.store != want.store) {
      for (size_t j = 0; j < n; j++) {
        if (auth->bricks[j].store == b.store) {
          return Error(kErrWrongStore, desc + " is brick " + std::to_string(j) + " of " + vol +
                                           ": wrong brick order (the label's order by store: " + brick_order(*auth) +
                                           ")");
        }
      }
      return Error(kErrWrongStore, desc + " serves store " + format_uuid(b.store) + ", but the label on " +
                                       auth_brick + " names store " + format_uuid(want.store) + " as brick " +
                                       std::to_string(i) + " of " + vol + ": a wrong or reformatted brick");
    }
    if (b.base != want.base) {
      return Error(EINVAL, desc + ": base " + format_hex(b.base) + " given, but " + vol + " is at " +
                               format_hex(want.base) + " on it");
    }
    const auto& l = b.read.label;
    if (!l && auth->layout == Layout::kMirror && want.stale_since != 0) {
      needs_write = true;  // a mirror's replacement brick, stale until its resync copied every block
      continue;
    }
    if (!l) {
      return Error(kErrWrongStore, desc + " holds no label of " + vol + " at base " + format_hex(b.base) +
                                       " although " + auth_brick + " does: the label was lost (brick reformatted?)");
    }
    if (!l->same_identity(*auth)) {
      std::string what = l->volume_uuid != auth->volume_uuid ? "holds the label of another volume, " + volume_desc(*l)
                         : l->bricks != auth->bricks        ? "holds a label of " + vol + " with another brick order"
                                                            : "holds a label of " + vol + " that differs in name or layout";
      return Error(kErrWrongStore, desc + " " + what + " (the label on " + auth_brick + " is of " + vol + ")");
    }
    if (l->index != i) {
      return Error(kErrWrongStore, desc + " is brick " + std::to_string(l->index) + " of " + vol + " by its label");
    }
    if (l->committed()) {
      max_size = std::max(max_size, l->size);
      min_size = std::min(min_size, l->size);
    }
    if (!l->committed() || l->generation != auth->generation || l->size != req.size) needs_write = true;
  }
  if (req.size < max_size) {
    std::string why = min_size < max_size ? " (a grow to " + format_size(max_size) + " was interrupted)" : "";
    return Error(EINVAL, "shrinking " + vol + " from " + format_size(max_size) + " to " + format_size(req.size) +
                             " is refused" + why);
  }
  plan.target = *auth;
  plan.target.size = req.size;
  if (!needs_write) return plan;
  if (req.read_only) {
    if (req.size > max_size) {
      return Error(EROFS, "growing " + vol + " from " + format_size(max_size) + " to " + format_size(req.size) +
                              " needs a read-write attach");
    }
    return plan;  // an interrupted update: serve what every label covers; a writer finishes it
  }
  plan.action = LabelPlan::Action::kUpdate;
  plan.target.flags = kLabelCommitted;
  plan.target.generation = max_generation + 1;
  return plan;
}

}  // namespace pbrick
