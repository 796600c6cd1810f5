// The volume label: a small record kept on every brick of a volume that says
// which volume the brick's blocks belong to, in which layout, at which place
// in the brick order, and how large the volume is. The byte format and where
// it lives on a brick are specified in docs/layout.md ("Volume label"); this
// header is its code form.
//
// Where: each volume has a reserved *label area* on each of its bricks, two
// 2 MiB blocks in the upper half of the brick's address space, derived from the
// volume's base on that brick (label_vaddr, lock_vaddr). Data addresses stay
// below kLabelAreaStart, so a label area never overlaps any volume's data.
//
//   label block: slot A (4096 B) | slot B (4096 B) | holder record (4096 B) | zeros
//   lock block:  no content; mapped exclusively by the one writer of the volume
//
// A label is written to the slot that does not hold the brick's newest valid
// label (by generation parity when neither does), so an update never
// overwrites the newest valid copy: a torn write leaves it readable.
//
// Decoding is untrusted input (the bytes come from a brick): every decoder
// checks sizes, magic, version, reserved bytes, field domains and the CRC.
// Pure functions; thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/label_area.h"
#include "common/layout.h"
#include "common/protocol.h"
#include "common/result.h"

namespace pbrick {

using Uuid = std::array<uint8_t, proto::kUuidSize>;


inline constexpr uint64_t kLabelSlotSize = 4096;
inline constexpr uint64_t kHolderOffset = 2 * kLabelSlotSize;
inline constexpr uint64_t kLabelReadSize = 3 * kLabelSlotSize;  // both slots + the holder record
inline constexpr uint32_t kMaxLabelBricks = kMaxVolumeBricks;
inline constexpr size_t kMaxVolumeNameLength = 63;

// Label flags.
inline constexpr uint32_t kLabelCommitted = 1u << 0;

// The label area of the volume whose base on this brick is `base`: label block
// at kLabelAreaStart + 2 * base, lock block 2 MiB above it. Distinct bases give
// disjoint areas (bases are 2 MiB aligned, so 2 * base is 4 MiB aligned).
// EINVAL when base is not 2 MiB aligned or above kMaxLabelledBase.
Result<uint64_t> label_vaddr(uint64_t base);
inline uint64_t lock_vaddr_of(uint64_t label_vaddr) { return label_vaddr + proto::kBlockSize; }

struct LabelBrick {
  Uuid store{};       // the brick's store uuid (HELLO brick_uuid)
  uint64_t base = 0;  // the volume's base on that brick
  // Layout mirror: unix seconds since which this brick's copies are stale
  // (it missed writes, recorded in the dirty bitmap); 0: in sync. Always 0
  // for the other layouts.
  uint64_t stale_since = 0;
  // Layout mirror, with stale_since: the boot id of the brick's host as the
  // attachment that recorded the copy stale last saw it (HELLO boot_id);
  // zero when that attachment never reached it, and while in sync. A later
  // attachment that reaches the brick with another boot id knows its host
  // rebooted since, losing writes it may not have made durable before the
  // copy went stale: the whole copy is copied again.
  Uuid boot_id{};
  // The brick's identity in the volume (store and base), not its state.
  bool operator==(const LabelBrick& o) const { return store == o.store && base == o.base; }
};

// Layout mirror: the dirty bitmap in the label block of every in-sync brick,
// one bit per volume block (byte i / 8, bit i % 8) that a stale copy missed
// a write to since it became stale (docs/layout.md, "Mirror: stale copies").
inline constexpr uint64_t kDirtyOffset = 4 * kLabelSlotSize;
inline constexpr uint64_t kMaxMirrorBlocks = (proto::kBlockSize - kDirtyOffset) * 8;

struct VolumeLabel {
  uint32_t flags = 0;        // kLabelCommitted once every brick holds the label
  uint64_t generation = 0;   // 1.. ; +1 on every rewrite
  Uuid volume_uuid{};
  std::string name;          // 0..63 bytes of [A-Za-z0-9._-]; may be empty
  Layout layout = Layout::kSingle;
  uint32_t index = 0;        // this brick's place in `bricks`
  uint64_t size = 0;         // volume size in bytes
  uint64_t created = 0;      // unix seconds of the first attach; informational
  uint32_t copies = 1;       // layout mirror: 2..3 (<= bricks); 1 otherwise
  std::vector<LabelBrick> bricks;  // in volume order; 1..kMaxLabelBricks

  bool committed() const { return (flags & kLabelCommitted) != 0; }
  // Same volume, layout, copies, name and brick order (size, generation, flags and
  // index may differ).
  bool same_identity(const VolumeLabel& other) const;
};

// "volume UUID 'NAME'", for messages.
std::string volume_desc(const VolumeLabel& label);

// One 4096-byte label slot. `label` must satisfy what decode_label checks.
std::array<uint8_t, kLabelSlotSize> encode_label(const VolumeLabel& label);
// One slot: EBADMSG for a wrong size, magic, version or CRC or a nonzero
// reserved byte; EINVAL for a field outside its domain.
Result<VolumeLabel> decode_label(std::span<const uint8_t> slot);

// What the label block of a brick says: the newest valid slot, if any.
struct LabelRead {
  std::optional<VolumeLabel> label;  // absent: both slots are all zeros
  bool torn = false;                 // a nonzero slot failed to decode (the other was used)
};
// `block` holds at least both slots. EUCLEAN naming both slots' errors when
// neither decodes and at least one is not all zeros (a damaged label is never
// taken for "no label").
Result<LabelRead> read_label_slots(std::span<const uint8_t> block);

// Who holds the volume for writing (written by the holder after it took the
// lock; read by an attacher that was refused, to name the holder).
struct HolderRecord {
  Uuid volume_uuid{};
  uint64_t pid = 0;
  uint64_t since = 0;  // unix seconds
  std::string host;     // <= 63 bytes, printable ASCII
  std::string program;  // <= 31 bytes, printable ASCII
  // Drawn by each read-write attach: whether the record is this attachment's
  // own (pid, host and program can repeat across containers). Zero in
  // records of gateways that did not write it yet.
  Uuid attachment{};
  // Unix seconds at which that attachment detached cleanly: every write it
  // took had completed on every in-sync copy and was made durable there
  // (Volume::close). Zero while it is attached, and for ever when it was
  // killed: the next read-write attach of a mirror then repairs the copies
  // (mirror.h, unsettled blocks).
  uint64_t closed = 0;
  // "pbrick-gateway pid 1234 on host-a since 2026-12-02T12:00:00Z"
  std::string to_string() const;
};
std::array<uint8_t, kLabelSlotSize> encode_holder(const HolderRecord& holder);
Result<HolderRecord> decode_holder(std::span<const uint8_t> slot);

// ---- Checks --------------------------------------------------------------------
// What the attacher was asked for, and what each brick turned out to be.
struct LabelRequest {
  std::string name;  // empty: any
  Layout layout = Layout::kSingle;
  uint64_t size = 0;
  bool read_only = false;
  uint32_t copies = 1;  // layout mirror: 2..3
  // Set: the volume must be this one, already labelled (a recover: the
  // device was attached to it). No label is then an error, not a first
  // attach, and another volume's label is refused.
  std::optional<Uuid> volume_uuid{};
};
struct BrickSeen {
  std::string endpoint;  // for messages: "host:port"
  Uuid store{};          // from HELLO
  uint64_t base = 0;
  LabelRead read;
  // The holder record beside the label (none: all zeros, or no label block);
  // holder_damaged when it is not all zeros and does not decode.
  std::optional<HolderRecord> holder;
  bool holder_damaged = false;
  // Layout mirror, attached --degraded: the brick could not be reached; its
  // place is taken on the other bricks' word (it becomes stale).
  bool absent = false;
};

// What the attach must do, decided before anything is written.
struct LabelPlan {
  enum class Action {
    kNone,    // every brick holds the committed label the request matches
    kCreate,  // no committed label anywhere: first attach (two phases)
    kUpdate,  // committed label; rewrite every brick at `target` (grow, or finish an interrupted write)
  };
  Action action = Action::kNone;
  VolumeLabel target;  // the committed label every brick holds afterwards (index set per brick)
};

// Checks the labels every brick of the volume holds against each other and the
// request, and decides the plan. Errors name the brick (its place and endpoint)
// and what differs: EMEDIUMTYPE for a brick that belongs elsewhere (another
// volume, another place, reformatted: no label or another store while the
// others have one), EINVAL for a shrink or a layout/name/brick-count mismatch,
// EROFS when a read-only attach would have to write. `now` and `fresh_uuid`
// fill a new label (kCreate).
Result<LabelPlan> plan_labels(std::span<const BrickSeen> bricks, const LabelRequest& request, uint64_t now,
                              const Uuid& fresh_uuid);

}  // namespace pbrick
