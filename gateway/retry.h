// Waiting out a brick that went away: retries with exponential backoff until
// a deadline, and the last retry happens at the deadline, not a backoff
// step before it.
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>

namespace pbrick {

class RetryDeadline {
 public:
  using Clock = std::chrono::steady_clock;

  RetryDeadline(std::chrono::milliseconds timeout, std::chrono::milliseconds first_backoff,
                std::chrono::milliseconds max_backoff)
      : RetryDeadline(Clock::now(), timeout, first_backoff, max_backoff) {}
  // Counting from `since` (when the brick was first found unreachable).
  RetryDeadline(Clock::time_point since, std::chrono::milliseconds timeout, std::chrono::milliseconds first_backoff,
                std::chrono::milliseconds max_backoff)
      : deadline_(since + timeout), backoff_(first_backoff), max_backoff_(max_backoff) {}

  // Sleeps before the next attempt; false once the deadline has passed (give up).
  bool wait() {
    auto now = Clock::now();
    if (now >= deadline_) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now);
    std::this_thread::sleep_for(std::min(backoff_, left));
    backoff_ = std::min(backoff_ * 2, max_backoff_);
    return true;
  }

 private:
  Clock::time_point deadline_;
  std::chrono::milliseconds backoff_;
  std::chrono::milliseconds max_backoff_;
};

}  // namespace pbrick
