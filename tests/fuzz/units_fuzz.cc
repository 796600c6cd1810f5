// Fuzzes the parsers of user-supplied sizes and addresses: no crash, errors are
// EINVAL or ERANGE only, and values survive format -> parse.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "common/units.h"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "units_fuzz: %s\n", what);
  std::abort();
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  auto u = pbrick::parse_u64(text, "fuzz");
  if (u.ok()) {
    auto again = pbrick::parse_u64(pbrick::format_hex(*u), "fuzz");
    if (!again.ok() || *again != *u) fail("format_hex does not round-trip");
  } else if (u.error().errnum() != EINVAL && u.error().errnum() != ERANGE) {
    fail("parse_u64 errno");
  }

  auto s = pbrick::parse_size(text, "fuzz");
  if (s.ok()) {
    (void)pbrick::format_size(*s);
    // A plain decimal number means bytes: both parsers must agree on it.
    if (all_digits(text) && (!u.ok() || *u != *s)) fail("parse_size disagrees with parse_u64");
  } else if (s.error().errnum() != EINVAL && s.error().errnum() != ERANGE) {
    fail("parse_size errno");
  }
  return 0;
}
