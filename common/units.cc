#include "common/units.h"

#include <cctype>
#include <cstdio>
#include <ctime>

namespace pbrick {
namespace {

Error bad(std::string_view what, std::string_view text, const char* why) {
  return Error(EINVAL, std::string(what) + ": invalid value '" + std::string(text) + "': " + why);
}

}  // namespace

Result<uint64_t> parse_u64(std::string_view text, std::string_view what) {
  if (text.empty()) return bad(what, text, "empty");
  unsigned base = 10;
  std::string_view digits = text;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  }
  uint64_t value = 0;
  for (char c : digits) {
    unsigned d;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      return bad(what, text, base == 16 ? "expected hexadecimal digits" : "expected a number (decimal or 0x...)");
    }
    if (value > (UINT64_MAX - d) / base) {
      return Error(ERANGE, std::string(what) + ": value '" + std::string(text) + "' does not fit in 64 bits");
    }
    value = value * base + d;
  }
  return value;
}

Result<uint64_t> parse_size(std::string_view text, std::string_view what) {
  size_t end = 0;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) end++;
  if (end == 0) return bad(what, text, "expected a size such as 512M or 4G");
  std::string_view suffix = text.substr(end);
  if (!suffix.empty() && suffix[0] == '.') return bad(what, text, "fractions are not accepted (write 1536M, not 1.5G)");
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    return bad(what, text, "sizes are decimal with a unit (such as 1G), not hexadecimal");
  }
  unsigned shift = 0;
  if (!suffix.empty()) {
    char unit = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    switch (unit) {
      case 'B': shift = 0; break;
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      case 'P': shift = 50; break;
      default: return bad(what, text, "unknown unit (use K, M, G, T or P)");
    }
    std::string_view rest = suffix.substr(1);
    if (unit == 'B') {
      if (!rest.empty()) return bad(what, text, "unknown unit (use K, M, G, T or P)");
    } else if (!(rest.empty() || rest == "B" || rest == "b" || rest == "iB" || rest == "ib")) {
      return bad(what, text, "unknown unit (use K, M, G, T or P)");
    }
  }
  auto number = parse_u64(text.substr(0, end), what);
  if (!number) return number.error();
  if (shift != 0 && *number > (UINT64_MAX >> shift)) {
    return Error(ERANGE, std::string(what) + ": size '" + std::string(text) + "' does not fit in 64 bits");
  }
  return *number << shift;
}

std::string format_size(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  unsigned unit = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    unit++;
  }
  char buf[64];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", value, kUnits[unit]);
  }
  return buf;
}

std::string format_time(uint64_t unix_seconds) {
  char when[32] = "?";
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm{};
  if (gmtime_r(&t, &tm) != nullptr) std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return when;
}

std::string format_hex(uint64_t value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

}  // namespace pbrick
