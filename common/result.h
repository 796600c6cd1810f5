// The one error type of pbrick: an errno value plus a human-readable context.
//
// Every fallible function returns Status (no value) or Result<T>. Errors carry
// the errno that best describes them (that is what crosses the wire, see
// docs/protocol.md) and a context string naming the operation and the object,
// e.g. "alloc 0x200000: block already allocated". Thread-compatible value types.
#pragma once

#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace pbrick {

class Error {
 public:
  Error(int errnum, std::string context) : errnum_(errnum), context_(std::move(context)) {}

  int errnum() const { return errnum_; }
  const std::string& context() const { return context_; }

  // "context: strerror (ENAME)" — the one-line form used in logs and CLI output.
  std::string message() const;

  // Prepends an outer context: "outer: inner".
  Error wrap(const std::string& outer) const { return Error(errnum_, outer + ": " + context_); }

 private:
  int errnum_;
  std::string context_;
};

// Symbolic name of an errno value ("ENOSPC"), or "E<number>" when unknown.
const char* errno_name(int errnum);

// Builds an Error from the current errno.
inline Error errno_error(std::string context) { return Error(errno, std::move(context)); }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}

  static Status Ok() { return Status(); }
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { assert(!ok_); return error_; }
  // This status, its error (if any) wrapped in `outer`.
  Status wrap_error(const std::string& outer) const { return ok_ ? Status() : Status(error_.wrap(outer)); }

 private:
  Error error_{0, ""};
  bool ok_ = true;
};

}  // namespace pbrick

// Propagates a failed Status/Result from the enclosing function.
#define PBRICK_TRY(expr)                          \
  do {                                            \
    auto pbrick_try_r_ = (expr);                  \
    if (!pbrick_try_r_.ok()) return pbrick_try_r_.error(); \
  } while (0)
