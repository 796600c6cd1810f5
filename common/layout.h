// How a volume's blocks are laid over its bricks (docs/layout.md). Shared by
// the cluster file, the frontends' flags and the volume.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "common/result.h"

namespace pbrick {

// kSingle: one brick holds every block of the volume.
// kStripe: N bricks; block i lives on brick (i mod N) at the volume's base +
//   (i div N) * 2 MiB of that brick.
// kMirror: N bricks, C copies (2 or 3, C <= N); copy j of block i lives on
//   brick (i + j) mod N at base + ((i div N) * C + j) * 2 MiB of that brick
//   (gateway/mirror.h).
// The values are the volume label's layout field (docs/layout.md): never
// renumber them.
enum class Layout : uint32_t { kSingle = 0, kStripe = 1, kMirror = 2 };

// Copies a mirrored volume may keep of each block.
inline constexpr uint32_t kMinCopies = 2, kMaxCopies = 3;

const char* layout_name(Layout l);

// Where each copy of each block of a volume lives: a pure function of the
// brick count N and copies C (1 for single and stripe, which makes it the
// stripe formula). A *unit* is one copy of one block, numbered
// block * C + copy; the volume maps, caches and frees units.
//
//   copy j of block i: brick (i + j) mod N, address slot (i div N) * C + j
//   (the brick address is base + slot * 2 MiB)
//
// Within one row of N blocks the copies a brick holds have distinct j, so
// distinct slots; with N == C every brick holds every block.
struct Placement {
  uint32_t bricks = 1;  // N >= 1
  uint32_t copies = 1;  // C, 1 <= C <= N

  uint64_t unit(uint64_t block, uint32_t copy) const { return block * copies + copy; }
  uint64_t block_of(uint64_t unit) const { return unit / copies; }
  uint32_t copy_of(uint64_t unit) const { return static_cast<uint32_t>(unit % copies); }
  uint32_t brick_of(uint64_t unit) const { return static_cast<uint32_t>((block_of(unit) + copy_of(unit)) % bricks); }
  uint64_t slot_of(uint64_t unit) const { return (block_of(unit) / bricks) * copies + copy_of(unit); }
  // The unit at address slot `slot` of `brick` in a volume of `blocks`
  // blocks; none when that slot holds no block of the volume.
  std::optional<uint64_t> unit_at(uint32_t brick, uint64_t slot, uint64_t blocks) const {
    uint64_t row = slot / copies;
    uint32_t copy = static_cast<uint32_t>(slot % copies);
    uint64_t block = row * bricks + (brick + bricks - copy % bricks) % bricks;
    if (block >= blocks) return std::nullopt;
    return unit(block, copy);
  }
  // Address slots a volume of `blocks` blocks spans from its base on a brick
  // (the most any of its bricks uses).
  uint64_t slots_per_brick(uint64_t blocks) const { return (blocks + bricks - 1) / bricks * copies; }
};

// "single" | "stripe" | "mirror"; EINVAL naming `what` (the flag or key) otherwise.
Result<Layout> parse_layout(std::string_view text, std::string_view what);

}  // namespace pbrick
