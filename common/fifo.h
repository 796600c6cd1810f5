// Fifo<T>: a first-in first-out queue on one vector, for hot paths that must
// not allocate once warm. Taking from the front only moves a read position;
// the consumed front is dropped when the vector is full and it makes up at
// least half of it (each entry is moved at most once per such drop, so a push
// costs O(1) amortized), and the vector grows only while more than half of it
// is waiting. So a queue that is never empty under sustained load - entries
// come in as fast as others go out - keeps the capacity of about twice its
// longest wait, where dropping the front only once empty would grow it
// without bound. Not thread-safe: one owner.
#pragma once

#include <cstddef>
#include <vector>

namespace pbrick {

template <typename T>
class Fifo {
 public:
  void reserve(size_t n) { items_.reserve(n); }
  bool empty() const { return head_ == items_.size(); }
  size_t size() const { return items_.size() - head_; }
  size_t capacity() const { return items_.capacity(); }

  void push(const T& item) {
    if (items_.size() == items_.capacity() && head_ != 0 && head_ >= items_.size() / 2) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    items_.push_back(item);
  }
  // The oldest entry; the queue must not be empty.
  T pop() {
    T item = items_[head_++];
    if (head_ == items_.size()) clear();
    return item;
  }
  // Drops every entry; the capacity stays.
  void clear() {
    items_.clear();
    head_ = 0;
  }

 private:
  std::vector<T> items_;
  size_t head_ = 0;  // items_[head_..] wait
};

}  // namespace pbrick
