// Parsing of user-supplied sizes ("512M", "4G") and addresses ("0x200000", "2097152").
// Pure functions, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace pbrick {

inline constexpr uint64_t kBlockSize = 2ull << 20;  // 2 MiB: the unit of everything a brick does.
inline constexpr uint64_t kBlockShift = 21;

// Accepts a decimal number with an optional binary suffix K, M, G, T, P (also KiB, MiB, ...
// and lower case); no suffix means bytes. EINVAL for anything else, ERANGE on overflow.
// `what` names the flag or key in the error ("--size").
Result<uint64_t> parse_size(std::string_view text, std::string_view what);

// Accepts 0x-prefixed hexadecimal or decimal unsigned 64-bit integers.
Result<uint64_t> parse_u64(std::string_view text, std::string_view what);

// "1.0 GiB", "512 MiB", "4096 B".
std::string format_size(uint64_t bytes);

// "0x0000000000200000"-style lower-case hex with 0x prefix, no padding.
std::string format_hex(uint64_t value);

// Unix seconds as "2026-12-02T12:00:00Z" (UTC); "?" when out of range.
std::string format_time(uint64_t unix_seconds);

}  // namespace pbrick
