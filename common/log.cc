#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>

namespace pbrick {
namespace {
std::atomic<int> g_max_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_prefix{true};
}  // namespace

void set_log_level(LogLevel max_level) { g_max_level = static_cast<int>(max_level); }
void set_log_prefix(bool enabled) { g_prefix = enabled; }

bool set_log_level_by_name(const char* name) {
  static const struct {
    const char* name;
    LogLevel level;
  } kLevels[] = {{"error", LogLevel::kError},
                 {"warning", LogLevel::kWarning},
                 {"notice", LogLevel::kNotice},
                 {"info", LogLevel::kInfo},
                 {"debug", LogLevel::kDebug}};
  for (const auto& l : kLevels) {
    if (std::strcmp(l.name, name) == 0) {
      set_log_level(l.level);
      return true;
    }
  }
  return false;
}

void log(LogLevel level, const char* fmt, ...) {
  if (static_cast<int>(level) > g_max_level.load(std::memory_order_relaxed)) return;
  char line[1024];
  int n = 0;
  if (g_prefix.load(std::memory_order_relaxed)) {
    n = std::snprintf(line, sizeof line, "<%d>", static_cast<int>(level));
  }
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  if (m < 0) return;
  size_t len = static_cast<size_t>(n) + static_cast<size_t>(m);
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, len);
  (void)ignored;
}

}  // namespace pbrick
