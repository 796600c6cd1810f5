// Logging to stderr in the form journald understands: each line starts with a
// syslog priority prefix "<N>" (sd-daemon(3)), so `journalctl -p err` works
// when a unit runs the daemon, and plain stderr stays readable in a terminal.
// Safe to call from any thread (each line is one write(2)).
#pragma once

#include <cstdarg>

namespace pbrick {

enum class LogLevel { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

void set_log_level(LogLevel max_level);
// Sets the level from its name (error, warning, notice, info, debug), as the
// daemons' --log-level takes it; false for an unknown name.
bool set_log_level_by_name(const char* name);
// When false, the "<N>" prefixes are left out (interactive CLI use).
void set_log_prefix(bool enabled);

void log(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace pbrick

#define PBRICK_LOG_ERROR(...) ::pbrick::log(::pbrick::LogLevel::kError, __VA_ARGS__)
#define PBRICK_LOG_WARN(...) ::pbrick::log(::pbrick::LogLevel::kWarning, __VA_ARGS__)
#define PBRICK_LOG_NOTICE(...) ::pbrick::log(::pbrick::LogLevel::kNotice, __VA_ARGS__)
#define PBRICK_LOG_INFO(...) ::pbrick::log(::pbrick::LogLevel::kInfo, __VA_ARGS__)
#define PBRICK_LOG_DEBUG(...) ::pbrick::log(::pbrick::LogLevel::kDebug, __VA_ARGS__)
