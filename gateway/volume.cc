#include "gateway/volume.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "common/log.h"
#include "common/units.h"
#include "gateway/data_channel.h"
#include "gateway/retry.h"

namespace pbrick {

bool is_connection_error(int errnum) {
  switch (errnum) {
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ENOTCONN:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ESHUTDOWN:
      return true;
    default:
      return false;
  }
}

Volume::Volume(const VolumeOptions& options)
    : options_(options),
      block_count_((options.size + proto::kBlockSize - 1) / proto::kBlockSize),
      handles_(block_count_),
      used_(block_count_),
      allocated_((block_count_ + 63) / 64) {}

Result<std::unique_ptr<Volume>> Volume::Open(const VolumeOptions& options) {
  if (options.size == 0 || options.size % 4096 != 0) {
    return Error(EINVAL, "volume size " + std::to_string(options.size) + " must be a nonzero multiple of 4096");
  }
  if (options.base % proto::kBlockSize != 0) {
    return Error(EINVAL, "volume base " + format_hex(options.base) + " must be 2 MiB aligned");
  }
  uint64_t blocks = (options.size + proto::kBlockSize - 1) / proto::kBlockSize;
  if (options.base + (blocks - 1) * proto::kBlockSize < options.base) {
    return Error(EINVAL, "volume at " + format_hex(options.base) + " of " + format_size(options.size) +
                             " runs past the end of the brick's address space");
  }
  std::unique_ptr<Volume> volume(new Volume(options));
  std::lock_guard lock(volume->control_mu_);
  PBRICK_TRY(volume->connect_control());
  // From now on every connection must reach this store (see volume.h).
  if (!volume->options_.brick.store_uuid) volume->options_.brick.store_uuid = volume->control_->hello().brick_uuid;
  // Learn which of our blocks the brick already holds, one LIST page at a time.
  uint64_t cursor = options.base;
  uint64_t end = options.base + (blocks - 1) * proto::kBlockSize;
  for (;;) {
    auto page = volume->control_->list(cursor, proto::kMaxListExtents);
    if (!page) return page.error().wrap("volume open");
    for (const auto& e : page->extents) {
      for (uint64_t i = 0; i < e.block_count; i++) {
        uint64_t vaddr = e.start_vaddr + i * proto::kBlockSize;
        if (vaddr < options.base || vaddr > end) continue;
        volume->set_allocated((vaddr - options.base) / proto::kBlockSize, true);
      }
    }
    if ((page->list_flags & proto::kListMore) == 0 || page->next_cursor > end || page->next_cursor <= cursor) break;
    cursor = page->next_cursor;
  }
  return volume;
}

Status Volume::connect_control() {
  control_.reset();
  clear_all_handles();  // mappings belong to the control connection and die with it
  auto client = BrickClient::Connect(options_.brick);
  if (!client) {
    note_connect(client.error());
    return client.error();
  }
  control_ = std::move(*client);
  note_connect(Status::Ok());
  return Status::Ok();
}

Status Volume::connect_channel(DataChannel& channel) {
  ClientOptions o = options_.brick;
  // A data channel's handshake must not stall its loop for long.
  o.timeout_ms = std::min(o.timeout_ms, 2000);
  Status st = channel.connect(o);
  note_connect(st);
  return st;
}

void Volume::note_connect(const Status& st) {
  std::lock_guard lock(refusal_mu_);
  if (st.ok()) {
    refusal_.clear();
    return;
  }
  if (st.error().errnum() != kErrWrongStore || st.error().context() == refusal_) return;
  refusal_ = st.error().context();
  PBRICK_LOG_ERROR("volume at %s: %s; its I/O fails until the brick of store %s is back",
                   format_hex(options_.base).c_str(), st.error().message().c_str(),
                   format_uuid(*options_.brick.store_uuid).c_str());
}

std::string Volume::refusal() const {
  std::lock_guard lock(refusal_mu_);
  return refusal_;
}

void Volume::clear_all_handles() {
  std::unique_lock lock(handles_mu_);
  for (auto& h : handles_) h = BlockHandle{};
  mapped_ = 0;
}

uint64_t Volume::mapped_count() const {
  std::shared_lock lock(handles_mu_);
  return mapped_;
}

bool Volume::unmap_lru() {
  uint64_t victim = 0;
  uint64_t oldest = UINT64_MAX;
  {
    std::unique_lock lock(handles_mu_);
    for (uint64_t i = 0; i < handles_.size(); ++i) {
      if (handles_[i].rkey == 0) continue;
      uint64_t stamp = used_[i].load(std::memory_order_relaxed);
      if (stamp < oldest) {
        oldest = stamp;
        victim = i;
      }
    }
    if (oldest == UINT64_MAX) return false;
    // Forget it first: new I/O maps again; I/O already using the rkey gets
    // EKEYREJECTED once the brick revoked it, and maps again too.
    handles_[victim] = BlockHandle{};
    --mapped_;
  }
  if (control_) {
    Status st = control_->unmap(block_vaddr(victim));
    if (!st && st.error().errnum() != ENOENT) {
      PBRICK_LOG_WARN("volume at %s: unmap of idle block %s: %s", format_hex(options_.base).c_str(),
                      format_hex(block_vaddr(victim)).c_str(), st.error().message().c_str());
    }
  }
  return true;
}

void Volume::set_allocated(uint64_t index, bool value) {
  uint64_t bit = 1ull << (index % 64);
  if (value) {
    allocated_[index / 64].fetch_or(bit, std::memory_order_release);
  } else {
    allocated_[index / 64].fetch_and(~bit, std::memory_order_release);
  }
}

bool Volume::allocated(uint64_t index) const {
  return (allocated_[index / 64].load(std::memory_order_acquire) >> (index % 64)) & 1;
}

std::optional<BlockHandle> Volume::cached(uint64_t index) const {
  std::shared_lock lock(handles_mu_);
  const BlockHandle& h = handles_[index];
  if (h.rkey == 0) return std::nullopt;
  used_[index].store(use_clock_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return h;
}

void Volume::invalidate(uint64_t index, uint32_t rkey) {
  std::unique_lock lock(handles_mu_);
  if (handles_[index].rkey == rkey && rkey != 0) {
    handles_[index] = BlockHandle{};
    --mapped_;
  }
}

// Runs fn on the control connection, reconnecting (with backoff) while the
// failure is a lost connection, until io_timeout_ms has passed.
template <typename Fn>
auto Volume::with_control(Fn&& fn) -> decltype(fn(std::declval<BrickClient&>())) {
  RetryDeadline retry(std::chrono::milliseconds(options_.io_timeout_ms), std::chrono::milliseconds(50),
                      std::chrono::milliseconds(1000));
  for (;;) {
    Error last(EIO, "");
    if (control_) {
      auto r = fn(*control_);
      if (r.ok() || !is_connection_error(r.error().errnum())) return r;
      last = r.error();
      control_.reset();
      clear_all_handles();
    } else {
      Status st = connect_control();
      if (st.ok()) continue;
      last = st.error();
      if (!is_connection_error(last.errnum()) && last.errnum() != ENOENT) return last;
    }
    PBRICK_LOG_WARN("brick %s: %s; reconnecting", options_.brick.endpoint.to_string().c_str(),
                    last.message().c_str());
    if (!retry.wait()) {
      return Error(EIO, "brick " + options_.brick.endpoint.to_string() + " unreachable for " +
                            std::to_string(options_.io_timeout_ms) + " ms (last error: " + last.message() + ")");
    }
  }
}

Result<BlockHandle> Volume::map_block(uint64_t index, bool for_write) {
  std::lock_guard lock(control_mu_);
  // Another thread may have mapped it while we waited for the lock.
  if (auto h = cached(index)) return *h;
  uint64_t vaddr = block_vaddr(index);
  if (!for_write && !allocated(index)) return Error(ENOENT, "block " + format_hex(vaddr) + " not allocated");
  if (options_.max_mapped != 0) {
    while (mapped_count() >= options_.max_mapped && unmap_lru()) {
    }
  }
  RetryDeadline full(std::chrono::milliseconds(options_.io_timeout_ms), std::chrono::milliseconds(5),
                     std::chrono::milliseconds(200));
  Result<proto::MapReply> mapped = Error(EIO, "");
  for (;;) {
    mapped = with_control([&](BrickClient& c) -> Result<proto::MapReply> {
      if (for_write && !allocated(index)) {
        Status st = c.alloc(vaddr);
        if (!st && st.error().errnum() != EEXIST) return st.error();
      }
      return c.map(vaddr, proto::kMapWrite | proto::kMapShared);
    });
    if (mapped || mapped.error().errnum() != ENOBUFS) break;
    // The block is on the brick's slow tier and every fast slot is mapped:
    // let go of our least recently used block so the brick can demote it, or
    // (holding none) wait for other clients to let go.
    if (!unmap_lru() && !full.wait()) break;
  }
  if (!mapped) {
    if (mapped.error().errnum() == ENOENT) set_allocated(index, false);
    return mapped.error();
  }
  set_allocated(index, true);
  BlockHandle h{mapped->rkey, mapped->remote_addr};
  std::unique_lock hl(handles_mu_);
  if (handles_[index].rkey == 0) ++mapped_;
  handles_[index] = h;
  used_[index].store(use_clock_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return h;
}

Status Volume::discard_block(uint64_t index) {
  std::lock_guard lock(control_mu_);
  if (!allocated(index)) return Status::Ok();
  uint64_t vaddr = block_vaddr(index);
  bool was_mapped = cached(index).has_value();
  {
    std::unique_lock hl(handles_mu_);
    if (handles_[index].rkey != 0) --mapped_;
    handles_[index] = BlockHandle{};
  }
  auto r = with_control([&](BrickClient& c) -> Result<bool> {
    if (was_mapped) {
      Status st = c.unmap(vaddr);
      if (!st && st.error().errnum() != ENOENT) return st.error();
    }
    Status st = c.free(vaddr);
    if (!st && st.error().errnum() != ENOENT) return st.error();
    return true;
  });
  if (!r) return r.error();
  set_allocated(index, false);
  return Status::Ok();
}

}  // namespace pbrick
