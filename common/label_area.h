// Where a volume's label area lies in a brick's address space (docs/layout.md,
// "Volume label"): shared by the gateway, which reads and writes labels
// (gateway/volume_label.h), and the cluster file's checks, which keep every
// volume's data below the label areas and the areas apart. Constants only.
#pragma once

#include <cstdint>

namespace pbrick {

// Data addresses of every volume end at or below this; label areas live above.
inline constexpr uint64_t kLabelAreaStart = 1ull << 63;
// Each volume's label area on a brick: label block + lock block, at
// kLabelAreaStart + 2 * base (disjoint for distinct 2 MiB aligned bases).
inline constexpr uint64_t kLabelArea = 4ull << 20;
// Largest base a labelled volume may have: its label area must fit below 2^64.
inline constexpr uint64_t kMaxLabelledBase = (1ull << 62) - (2ull << 20);
// Most bricks a volume may span (the label's brick table).
inline constexpr uint32_t kMaxVolumeBricks = 64;

}  // namespace pbrick
