// How a volume's blocks are laid over its bricks (docs/layout.md). Shared by
// the cluster file, the frontends' flags and the volume.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/result.h"

namespace pbrick {

// kSingle: one brick holds every block of the volume.
// kStripe: N bricks; block i lives on brick (i mod N) at the volume's base +
//   (i div N) * 2 MiB of that brick.
// The values are the volume label's layout field (docs/layout.md): never
// renumber them.
enum class Layout : uint32_t { kSingle = 0, kStripe = 1 };

const char* layout_name(Layout l);

// "single" | "stripe"; EINVAL naming `what` (the flag or key) otherwise.
Result<Layout> parse_layout(std::string_view text, std::string_view what);

}  // namespace pbrick
