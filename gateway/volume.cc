#include "gateway/volume.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>

#include "common/auth.h"
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
    case EHOSTDOWN:
    case ENETDOWN:
    case ENETRESET:
    case ENONET:
    case ESHUTDOWN:
      return true;
    default:
      return false;
  }
}

struct Volume::Brick {
  // store_uuid set once the brick was opened. Changed only by replace_brick,
  // under control_mu and options_mu; read under either.
  ClientOptions options;
  mutable std::mutex options_mu;
  // +1 when replaced, or when its writer id changes: data channels reconnect.
  std::atomic<uint64_t> epoch{0};
  // The writer id its data connections' FENCE names (under options_mu): the
  // attachment's, drawn again when a resync begins (begin_resync).
  std::array<uint8_t, proto::kUuidSize> writer{};
  // The boot id of its host at the last control connection (under control_mu).
  std::optional<std::array<uint8_t, proto::kUuidSize>> boot_id;
  // Layout mirror: the boot of its host under which this attachment's copy
  // there is complete as far as FLUSH promised - the one seen at open, or the
  // one a loss was answered for (lost_writes: the resync rebuilds the copy
  // under it). A connection that finds another one gives the copy up
  // (check_boot). Under label_mu_.
  std::optional<std::array<uint8_t, proto::kUuidSize>> copy_boot;

  std::mutex control_mu;  // serialises the control connection
  std::unique_ptr<BrickClient> control;
  // Under control_mu: since when every control call failed for a lost
  // connection (unset: the last one reached the brick), when the last failed
  // attempt ended and whether it took a second or more (a host that does
  // not answer at all). Calls made after the brick has been unreachable for
  // the timeout do not wait it out again one by one (with_control).
  std::optional<std::chrono::steady_clock::time_point> unreachable_since;
  std::chrono::steady_clock::time_point last_failed_attempt{};
  bool last_attempt_slow = false;

  mutable std::mutex refusal_mu;
  std::string refusal;  // under refusal_mu

  std::atomic<uint64_t> write_failures{0};
  // Under the Volume's label_mu_: write_failures when its copy was last given
  // up whole (every block dirty): the failures before it are accounted for.
  uint64_t failures_given_up = 0;

  // Another attachment took the volume's lock on this brick while our control
  // connection was down (its reacquire said EBUSY): our data channels must not
  // connect there, as their FENCE would cut the new writer's connections off.
  // Cleared when a later reacquire takes the lock again.
  std::atomic<bool> lock_lost{false};

  // Its units whose handle has rkey != 0, in no order (under the Volume's
  // handles_mu_): what unmap_lru() chooses from, so an unmap costs a walk of
  // the blocks mapped on this brick, not of the volume.
  std::vector<uint64_t> mapped;
};

Volume::Volume(const VolumeOptions& options)
    : options_(options),
      block_count_((options.size + proto::kBlockSize - 1) / proto::kBlockSize),
      placement_{static_cast<uint32_t>(std::max<size_t>(options.bricks.size(), 1)),
                 options.layout == Layout::kMirror ? options.copies : 1},
      handles_(block_count_ * placement_.copies),
      used_(block_count_ * placement_.copies),
      mapped_at_(block_count_ * placement_.copies),
      allocated_((block_count_ * placement_.copies + 63) / 64),
      dirty_(options.layout == Layout::kMirror ? (block_count_ + 63) / 64 : 0) {
  if (options_.bricks.empty()) options_.bricks.push_back(options_.brick);
  options_.copies = placement_.copies;
  if (options_.layout == Layout::kMirror) mirror_ = std::make_unique<MirrorState>(placement_.bricks, block_count_);
  for (const ClientOptions& o : options_.bricks) {
    bricks_.push_back(std::make_unique<Brick>());
    bricks_.back()->options = o;
  }
}

Volume::~Volume() = default;

Result<std::unique_ptr<Volume>> Volume::Open(const VolumeOptions& options) {
  if (options.size == 0 || options.size % 4096 != 0) {
    return Error(EINVAL, "volume size " + std::to_string(options.size) + " must be a nonzero multiple of 4096");
  }
  if (options.base % proto::kBlockSize != 0) {
    return Error(EINVAL, "volume base " + format_hex(options.base) + " must be 2 MiB aligned");
  }
  // Blocks live below the label area (2^63 on each brick), and the block
  // count must not wrap when rounded up.
  if (options.size > kLabelAreaStart) {
    return Error(EINVAL, "volume size " + std::to_string(options.size) + " is larger than a brick's address space (" +
                             format_size(kLabelAreaStart) + ")");
  }
  size_t n = std::max<size_t>(options.bricks.size(), 1);
  if (options.layout == Layout::kSingle && n != 1) {
    return Error(EINVAL, "layout single takes one brick, not " + std::to_string(n));
  }
  if (options.layout == Layout::kStripe && n < 2) {
    return Error(EINVAL, "layout stripe takes at least two bricks");
  }
  if (options.layout == Layout::kMirror &&
      (options.copies < kMinCopies || options.copies > kMaxCopies || options.copies > n)) {
    return Error(EINVAL, "layout mirror keeps 2 or 3 copies on at least as many bricks, not " +
                             std::to_string(options.copies) + " copies on " + std::to_string(n) + " bricks");
  }
  if (options.layout == Layout::kMirror &&
      options.size / proto::kBlockSize + (options.size % proto::kBlockSize != 0) > kMaxMirrorBlocks) {
    return Error(EINVAL, "a mirrored volume has at most " + std::to_string(kMaxMirrorBlocks) +
                             " blocks (its dirty bitmap fills the label block)");
  }
  if (options.layout == Layout::kMirror && options.leg_timeout_ms >= options.io_timeout_ms) {
    return Error(EINVAL, "the leg timeout (" + std::to_string(options.leg_timeout_ms) +
                             " ms) must be shorter than the I/O timeout (" + std::to_string(options.io_timeout_ms) +
                             " ms)");
  }
  for (size_t i = 0; i < options.bricks.size(); i++) {
    for (size_t j = 0; j < i; j++) {
      if (options.bricks[i].endpoint.to_string() == options.bricks[j].endpoint.to_string()) {
        return Error(EINVAL, "brick " + options.bricks[i].endpoint.to_string() + " is named twice");
      }
    }
  }
  uint64_t blocks = (options.size + proto::kBlockSize - 1) / proto::kBlockSize;
  Placement placement{static_cast<uint32_t>(n), options.layout == Layout::kMirror ? options.copies : 1};
  uint64_t per_brick = placement.slots_per_brick(blocks);
  if (options.base + (per_brick - 1) * proto::kBlockSize < options.base) {
    return Error(EINVAL, "volume at " + format_hex(options.base) + " of " + format_size(options.size) +
                             " runs past the end of the brick's address space");
  }
  std::unique_ptr<Volume> volume(new Volume(options));
  std::vector<uint32_t> missing;  // a mirror's bricks not reached (--degraded)
  for (uint32_t b = 0; b < volume->brick_count(); b++) {
    Status st = volume->open_brick(b);
    if (!st && options.layout == Layout::kMirror && is_connection_error(st.error().errnum())) {
      if (!options.degraded) {
        return st.error().wrap("brick " + volume->brick_name(b) +
                               " of a mirror is unreachable (--degraded, or degraded=true, runs the volume without it)");
      }
      PBRICK_LOG_WARN("brick %s unreachable (%s): attaching degraded without it", volume->brick_name(b).c_str(),
                      st.error().message().c_str());
      missing.push_back(b);
      volume->bricks_[b]->control.reset();
      continue;
    }
    if (!st) return volume->brick_count() == 1 ? st.error() : st.error().wrap("brick " + volume->brick_name(b));
  }
  for (uint32_t b = 0; b < volume->brick_count(); b++) volume->options_.bricks[b] = volume->bricks_[b]->options;
  volume->options_.brick = volume->bricks_[0]->options;
  // Every brick is connected and its store known: check the volume's labels
  // as a set and take the one-writer lock (volume_claim.h). Nothing is written
  // on any brick unless every brick passed.
  std::vector<ClaimBrick> claim_bricks;
  for (uint32_t b = 0; b < volume->brick_count(); b++) {
    claim_bricks.push_back({volume->bricks_[b]->control.get(), volume->brick_name(b), options.base});
  }
  auto claim = VolumeClaim::Acquire(claim_bricks, {options.name, options.layout, options.size, options.read_only,
                                                   volume->copies(), options.volume_uuid});
  if (!claim) return claim.error().wrap("volume open");
  volume->claim_ = std::move(*claim);
  if (!options.read_only) {
    for (auto& brick : volume->bricks_) PBRICK_TRY(random_bytes(brick->writer.data(), brick->writer.size()));
  }
  if (volume->mirror_) {
    const VolumeLabel l = volume->claim_->label();
    for (uint32_t b : missing) volume->bricks_[b]->options.store_uuid = l.bricks[b].store;  // only that store, later
    for (uint32_t b = 0; b < volume->brick_count(); b++) {
      if (l.bricks[b].stale_since == 0) volume->bricks_[b]->copy_boot = volume->bricks_[b]->boot_id;
    }
    PBRICK_TRY(volume->load_mirror_state());
    for (uint32_t b : missing) {
      Status st = volume->mark_stale(b);
      if (!st) return st.error().wrap("volume open, degraded");
    }
    // After the missing bricks are stale: their bitmaps are not written.
    PBRICK_TRY(volume->check_stale_boots());
    if (volume->claim_->last_writer_left_uncleanly()) {
      volume->unsettle_written_blocks();
      // A brick not reached may hold blocks no reached copy holds (a
      // discard that freed the others first): none of them is unsettled,
      // so every block of its copy is dirty, and its resync copies it whole.
      std::lock_guard label_lock(volume->label_mu_);
      for (uint32_t b : missing) {
        auto marked = volume->dirty_all_of(b);
        if (!marked) return marked.error().wrap("volume open, degraded after an unclean detach");
      }
    }
  }
  return volume;
}

Status Volume::open_brick(uint32_t b) {
  Brick& brick = *bricks_[b];
  std::lock_guard lock(brick.control_mu);
  PBRICK_TRY(connect_control(b));
  // From now on every connection to this brick must reach this store (see
  // volume.h).
  if (!brick.options.store_uuid) brick.options.store_uuid = brick.control->hello().brick_uuid;
  return learn_allocated(b);
}

Status Volume::learn_allocated(uint32_t b) {
  Brick& brick = *bricks_[b];
  // Learn which of our blocks the brick already holds, one LIST page at a time.
  uint64_t on_brick = placement_.slots_per_brick(block_count_);
  if (on_brick == 0) return Status::Ok();
  uint64_t cursor = options_.base;
  uint64_t end = options_.base + (on_brick - 1) * proto::kBlockSize;
  for (;;) {
    auto page = brick.control->list(cursor, proto::kMaxListExtents);
    if (!page) return page.error().wrap("volume open");
    for (const auto& e : page->extents) {
      for (uint64_t i = 0; i < e.block_count; i++) {
        uint64_t vaddr = e.start_vaddr + i * proto::kBlockSize;
        if (vaddr < options_.base || vaddr > end) continue;
        auto unit = placement_.unit_at(b, (vaddr - options_.base) / proto::kBlockSize, block_count_);
        if (unit) set_allocated(*unit, true);
      }
    }
    if ((page->list_flags & proto::kListMore) == 0 || page->next_cursor > end || page->next_cursor <= cursor) break;
    cursor = page->next_cursor;
  }
  return Status::Ok();
}

ClientOptions Volume::brick_options(uint32_t b) const {
  std::lock_guard lock(bricks_[b]->options_mu);
  return bricks_[b]->options;
}

std::string Volume::brick_name(uint32_t b) const {
  std::lock_guard lock(bricks_[b]->options_mu);
  return bricks_[b]->options.endpoint.to_string();
}

uint64_t Volume::brick_epoch(uint32_t b) const { return bricks_[b]->epoch.load(std::memory_order_acquire); }

Status Volume::connect_control(uint32_t b) {
  Brick& brick = *bricks_[b];
  brick.control.reset();
  clear_handles(b);  // mappings belong to the control connection and die with it
  auto client = BrickClient::Connect(brick.options);
  if (!client) {
    note_connect(b, client.error());
    return client.error();
  }
  if (claim_) {
    // A mirror's stale brick holds an older label (it missed the ones
    // that call it stale).
    const bool stale = mirror_ && !mirror_->in_sync(b);
    Status st = claim_->reacquire(b, ClaimBrick{client->get(), brick_name(b), options_.base}, stale);
    note_connect(b, st);
    if (!st && st.error().errnum() == EBUSY && !options_.read_only) brick.lock_lost.store(true);
    if (!st) return st;
    brick.lock_lost.store(false);
  }
  brick.control = std::move(*client);
  brick.boot_id = brick.control->hello().boot_id;
  brick.unreachable_since.reset();  // reached (also outside with_control: a probe, a resync's reach)
  note_connect(b, Status::Ok());
  return Status::Ok();
}

ClientOptions Volume::writer_options(uint32_t b, uint64_t channel) const {
  ClientOptions o = brick_options(b);
  if (!options_.read_only) {
    proto::FenceRequest f;
    f.scope = options_.base;
    std::lock_guard lock(bricks_[b]->options_mu);
    f.writer = bricks_[b]->writer;
    f.channel = channel;
    o.fence = f;
  }
  return o;
}

Status Volume::connect_channel(DataChannel& channel, uint32_t b, uint64_t channel_id) {
  if (bricks_[b]->lock_lost.load()) {
    return Error(EBUSY, "brick " + brick_name(b) + ": another attachment holds the volume's lock there now; "
                                                   "this one sends it nothing more");
  }
  ClientOptions o = writer_options(b, channel_id);
  // A data channel's handshake must not stall its loop for long.
  o.timeout_ms = std::min(o.timeout_ms, 2000);
  Status st = channel.connect(o);
  note_connect(b, st);
  return st;
}

void Volume::note_connect(uint32_t b, const Status& st) {
  if (mirror_ && (st.ok() || is_connection_error(st.error().errnum()))) note_reachable(b, st.ok());
  Brick& brick = *bricks_[b];
  std::lock_guard lock(brick.refusal_mu);
  if (st.ok()) {
    brick.refusal.clear();
    return;
  }
  if (st.error().errnum() != kErrWrongStore || st.error().context() == brick.refusal) return;
  brick.refusal = st.error().context();
  PBRICK_LOG_ERROR("volume at %s: %s; its I/O fails until the brick of store %s is back",
                   format_hex(options_.base).c_str(), st.error().message().c_str(),
                   format_uuid(*brick_options(b).store_uuid).c_str());
}

void Volume::note_reachable(uint32_t b, bool reachable) {
  if (!mirror_ || !mirror_->set_reachable(b, reachable)) return;
  if (reachable) {
    PBRICK_LOG_NOTICE("volume at %s: brick %s is reachable again: reads use its copies",
                      format_hex(options_.base).c_str(), brick_name(b).c_str());
  } else {
    PBRICK_LOG_WARN("volume at %s: brick %s is unreachable: reads use the other copies while there are",
                    format_hex(options_.base).c_str(), brick_name(b).c_str());
  }
}

std::string Volume::refusal(uint32_t b) const {
  const Brick& brick = *bricks_[b];
  std::lock_guard lock(brick.refusal_mu);
  return brick.refusal;
}

void Volume::note_write_failed(uint32_t b) { bricks_[b]->write_failures.fetch_add(1, std::memory_order_release); }

uint64_t Volume::write_failures(uint32_t b) const {
  return bricks_[b]->write_failures.load(std::memory_order_acquire);
}

template <typename Fn>
void Volume::for_each_unit_on(uint32_t b, Fn&& fn) const {
  const uint64_t slots = placement_.slots_per_brick(block_count_);
  for (uint64_t slot = 0; slot < slots; slot++) {
    if (auto unit = placement_.unit_at(b, slot, block_count_)) fn(*unit);
  }
}

void Volume::clear_handles(uint32_t b) {
  std::unique_lock lock(handles_mu_);
  for (uint64_t i : bricks_[b]->mapped) handles_[i] = BlockHandle{};
  bricks_[b]->mapped.clear();
}

void Volume::set_handle_locked(uint64_t index, const BlockHandle& h) {
  if (handles_[index].rkey == 0) {
    std::vector<uint64_t>& mapped = bricks_[brick_of(index)]->mapped;
    mapped_at_[index] = mapped.size();
    mapped.push_back(index);
  }
  handles_[index] = h;
  used_[index].store(use_clock_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

void Volume::forget_handle_locked(uint64_t index) {
  if (handles_[index].rkey == 0) return;
  std::vector<uint64_t>& mapped = bricks_[brick_of(index)]->mapped;
  const uint64_t last = mapped.back();  // takes its place
  mapped[mapped_at_[index]] = last;
  mapped_at_[last] = mapped_at_[index];
  mapped.pop_back();
  handles_[index] = BlockHandle{};
}

uint64_t Volume::mapped_count(uint32_t b) const {
  std::shared_lock lock(handles_mu_);
  return bricks_[b]->mapped.size();
}

bool Volume::unmap_lru(uint32_t b) {
  Brick& brick = *bricks_[b];
  uint64_t victim = 0;
  uint64_t oldest = UINT64_MAX;
  {
    std::unique_lock lock(handles_mu_);
    if (brick.mapped.empty()) return false;
    for (uint64_t i : brick.mapped) {
      uint64_t stamp = used_[i].load(std::memory_order_relaxed);
      if (stamp < oldest) {
        oldest = stamp;
        victim = i;
      }
    }
    // Forget it first: new I/O maps again; I/O already using the rkey gets
    // EKEYREJECTED once the brick revoked it, and maps again too.
    forget_handle_locked(victim);
  }
  if (brick.control) {
    Status st = brick.control->unmap(block_vaddr(victim));
    if (!st && st.error().errnum() != ENOENT) {
      PBRICK_LOG_WARN("brick %s: unmap of idle block %s: %s", brick_name(b).c_str(),
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

bool Volume::block_allocated(uint64_t block) const {
  for (uint32_t j = 0; j < placement_.copies; j++) {
    if (allocated(placement_.unit(block, j))) return true;
  }
  return false;
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
  if (handles_[index].rkey == rkey && rkey != 0) forget_handle_locked(index);
}

// Runs fn on the brick's control connection (its control_mu held),
// reconnecting (with backoff) while the failure is a lost connection, until
// io_timeout_ms has passed.
template <typename Fn>
auto Volume::with_control(uint32_t b, Fn&& fn) -> decltype(fn(std::declval<BrickClient&>())) {
  Brick& brick = *bricks_[b];
  using Clock = std::chrono::steady_clock;
  // A mirror's copy waits only the leg timeout: then I/O goes on without it.
  const uint32_t timeout_ms = mirror_ ? options_.leg_timeout_ms : options_.io_timeout_ms;
  const auto now = Clock::now();
  // The wait counts from when the brick was first found unreachable: the
  // requests parked behind one another on a dead brick (one control call at
  // a time) fail together, not one timeout each. One unreachable past the
  // timeout gets one attempt a call (a refused connection costs nothing, and
  // the brick may be back) - none within a second of an attempt that took a
  // second or more to fail (a host that does not answer: each attempt would
  // wait for the connect timeout).
  RetryDeadline retry(brick.unreachable_since ? std::min(*brick.unreachable_since, now) : now,
                      std::chrono::milliseconds(timeout_ms), std::chrono::milliseconds(50),
                      std::chrono::milliseconds(1000));
  const bool overdue =
      brick.unreachable_since && now - *brick.unreachable_since >= std::chrono::milliseconds(timeout_ms);
  if (overdue && !brick.control && brick.last_attempt_slow &&
      now - brick.last_failed_attempt < std::chrono::seconds(1)) {
    return Error(EIO, "brick " + brick_name(b) + " unreachable for " +
                          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             now - *brick.unreachable_since).count()) +
                          " ms");
  }
  for (;;) {
    Error last(EIO, "");
    const auto attempt = Clock::now();
    if (brick.control) {
      auto r = fn(*brick.control);
      if (r.ok() || !is_connection_error(r.error().errnum())) {
        brick.unreachable_since.reset();
        return r;
      }
      last = r.error();
      brick.control.reset();
      clear_handles(b);
    } else {
      Status st = connect_control(b);
      if (st.ok()) continue;
      last = st.error();
      if (!is_connection_error(last.errnum()) && last.errnum() != ENOENT) return last;
    }
    brick.last_failed_attempt = Clock::now();
    brick.last_attempt_slow = brick.last_failed_attempt - attempt >= std::chrono::seconds(1);
    if (!brick.unreachable_since) brick.unreachable_since = attempt;
    PBRICK_LOG_WARN("brick %s: %s; reconnecting", brick_name(b).c_str(), last.message().c_str());
    if (!retry.wait()) {
      return Error(EIO, "brick " + brick_name(b) + " unreachable for " + std::to_string(timeout_ms) +
                            " ms (last error: " + last.message() + ")");
    }
  }
}

Result<BlockHandle> Volume::map_block(uint64_t index, bool for_write) {
  uint32_t b = brick_of(index);
  std::lock_guard lock(bricks_[b]->control_mu);
  // Another thread may have mapped it while we waited for the lock.
  if (auto h = cached(index)) return *h;
  uint64_t vaddr = block_vaddr(index);
  // A read-only attachment shares the volume with a writer that allocates
  // blocks after it learned the map: a clear bit means "ask the brick".
  if (!for_write && !allocated(index) && !options_.read_only) {
    return Error(ENOENT, "block " + format_hex(vaddr) + " not allocated");
  }
  if (for_write && options_.read_only) return Error(EROFS, "volume attached read-only");
  if (options_.max_mapped != 0) {
    while (mapped_count(b) >= options_.max_mapped && unmap_lru(b)) {
    }
  }
  RetryDeadline full(std::chrono::milliseconds(options_.io_timeout_ms), std::chrono::milliseconds(5),
                     std::chrono::milliseconds(200));
  Result<proto::MapReply> mapped = Error(EIO, "");
  for (;;) {
    mapped = with_control(b, [&](BrickClient& c) -> Result<proto::MapReply> {
      if (for_write && !allocated(index)) {
        Status st = c.alloc(vaddr);
        if (!st && st.error().errnum() != EEXIST) return st.error();
      }
      return c.map(vaddr, options_.read_only ? proto::kMapShared : proto::kMapWrite | proto::kMapShared);
    });
    if (mapped || mapped.error().errnum() != ENOBUFS) break;
    // The block is on the brick's slow tier and every fast slot is mapped:
    // let go of our least recently used block on that brick so it can demote
    // it, or (holding none there) wait for other clients to let go.
    if (!unmap_lru(b) && !full.wait()) break;
  }
  if (!mapped) {
    if (mapped.error().errnum() == ENOENT) set_allocated(index, false);
    return mapped.error();
  }
  set_allocated(index, true);
  BlockHandle h{mapped->rkey, mapped->remote_addr};
  std::unique_lock hl(handles_mu_);
  set_handle_locked(index, h);
  return h;
}

Status Volume::load_mirror_state() {
  const VolumeLabel l = claim_->label();
  int source = -1;
  for (uint32_t b = 0; b < brick_count(); b++) {
    if (l.bricks[b].stale_since != 0) {
      mirror_->set_state(b, CopyState::kStale);
      PBRICK_LOG_WARN("volume %s: brick %s holds stale copies (stale since %llu); they are not read",
                      format_uuid(l.volume_uuid).c_str(), brick_name(b).c_str(),
                      static_cast<unsigned long long>(l.bricks[b].stale_since));
    } else if (source < 0 && bricks_[b]->control) {  // not a brick missing at a degraded attach
      source = static_cast<int>(b);
    }
  }
  if (source < 0) {
    return Error(EIO, "volume " + format_uuid(l.volume_uuid) + ": no reachable brick holds in-sync copies");
  }
  if (source == 0 && std::all_of(l.bricks.begin(), l.bricks.end(), [](const LabelBrick& lb) {
        return lb.stale_since == 0;
      })) {
    return Status::Ok();  // nothing is stale: the bitmap is clear
  }
  // The dirty bits recorded so far, so later ones are added to them: the
  // source's, and those of every other reachable in-sync brick (a brick that
  // a gateway before finish_resync wrote the whole bitmap to may hold fewer
  // than the others; a bit too many only makes a resync copy more).
  for (uint32_t b = static_cast<uint32_t>(source); b < brick_count(); b++) {
    Brick& brick = *bricks_[b];
    if (l.bricks[b].stale_since != 0 || !brick.control) continue;
    std::lock_guard lock(brick.control_mu);
    auto bytes = VolumeClaim::read_dirty(ClaimBrick{brick.control.get(), brick_name(b), options_.base},
                                         (block_count_ + 7) / 8);
    if (!bytes && b == static_cast<uint32_t>(source)) {
      return bytes.error().wrap("volume open: dirty bitmap on brick " + brick_name(b));
    }
    if (!bytes) {
      PBRICK_LOG_WARN("volume open: dirty bitmap on brick %s: %s (the other in-sync bricks' are used)",
                      brick_name(b).c_str(), bytes.error().message().c_str());
      continue;
    }
    for (uint64_t i = 0; i < block_count_; i++) {
      if (((*bytes)[i / 8] >> (i % 8)) & 1) dirty_[i / 64].fetch_or(1ull << (i % 64), std::memory_order_relaxed);
    }
  }
  return Status::Ok();
}

void Volume::unsettle_written_blocks() {
  for (uint64_t block = 0; block < block_count_; block++) {
    if (block_allocated(block)) mirror_->set_unsettled(block);
  }
  PBRICK_LOG_WARN("volume %s: its last writer did not detach cleanly: the copies of %llu written block(s) may "
                  "differ; they are read from one copy each until the others hold the same bytes",
                  format_uuid(claim_->label().volume_uuid).c_str(),
                  static_cast<unsigned long long>(mirror_->unsettled_count()));
}

Status Volume::close() {
  if (!mirror_ || options_.read_only || !claim_ || leave_uncleanly_ || close_tried_) return Status::Ok();
  close_tried_ = true;
  if (const uint64_t left = mirror_->unsettled_count(); left != 0) {
    return Error(EAGAIN, std::to_string(left) + " block(s) whose copies may differ were not repaired yet; the next "
                                                "attach repairs them");
  }
  // A request that failed after some copies took it (a copy that could not
  // be given up: the last in-sync one of some block) left copies that differ.
  for (uint32_t b = 0; b < brick_count(); b++) {
    std::lock_guard label_lock(label_mu_);
    if (mirror_->in_sync(b) && write_failures(b) != bricks_[b]->failures_given_up) {
      return Error(EIO, "writes to brick " + brick_name(b) + " failed: its copies may differ from the others'; the "
                        "next attach repairs them");
    }
  }
  // Every in-sync copy durable first: a record that says closed promises
  // copies that are the same on every medium, not only in the bricks'
  // caches. A PERSIST naming no range covers every WRITE the brick answered,
  // on any connection (docs/protocol.md 11.2); on a connection of its own,
  // as the control connection offers no PERSIST. Under the boot the copy is
  // known complete in: a host that rebooted since may have lost some.
  for (uint32_t b = 0; b < brick_count(); b++) {
    if (!mirror_->in_sync(b)) continue;
    const std::string where = "brick " + brick_name(b) + ": sync before detaching";
    ClientOptions o = brick_options(b);
    // PERSIST alone: a brick in rpc mode refuses an RDMA HELLO offering sync-read.
    o.features = (o.features & ~proto::kFeatureSyncRead) | proto::kFeaturePersistRpc;
    auto c = BrickClient::Connect(o);
    if (!c) return c.error().wrap(where);
    if (((*c)->hello().features & proto::kFeaturePersistRpc) == 0) {
      return Error(EOPNOTSUPP, where + ": the brick does not grant PERSIST");
    }
    {
      std::lock_guard label_lock(label_mu_);
      if (bricks_[b]->copy_boot != (*c)->hello().boot_id) {
        return Error(EIO, where + ": its host rebooted since its copy was complete");
      }
    }
    PBRICK_TRY((*c)->persist({}).wrap_error(where));
  }
  // On the in-sync bricks it must land (the next attach reads theirs); a
  // stale copy's is written where it can be, or a later attach that finds
  // that brick in sync again would repair for nothing.
  for (uint32_t b = 0; b < brick_count(); b++) {
    Status st;
    {
      std::lock_guard lock(bricks_[b]->control_mu);
      if (mirror_->in_sync(b)) {
        // Reconnecting if it must (a brick restarted while the volume was idle).
        st = with_control(b, [&](BrickClient& c) {
          return claim_->record_closed(b, ClaimBrick{&c, brick_name(b), options_.base});
        });
      } else if (bricks_[b]->control) {
        st = claim_->record_closed(b, ClaimBrick{bricks_[b]->control.get(), brick_name(b), options_.base});
      }
    }
    if (!st && mirror_->in_sync(b)) return st;
  }
  return Status::Ok();
}

Status Volume::check_stale_boots() {
  if (options_.read_only) return Status::Ok();  // a reader neither resyncs nor writes bitmaps
  const VolumeLabel l = claim_->label();
  // A stale copy's host that rebooted since the copy went stale may have
  // lost writes it took before, which the bitmap does not hold: the label
  // says which boot the copy went stale in. A brick not reached yet is
  // compared when it is (try_reach).
  for (uint32_t b = 0; b < brick_count(); b++) {
    const Uuid& then = l.bricks[b].boot_id;
    if (l.bricks[b].stale_since == 0 || then == Uuid{}) continue;
    std::optional<Uuid> now;
    {
      std::lock_guard lock(bricks_[b]->control_mu);
      if (!bricks_[b]->control) {
        bricks_[b]->boot_id = then;
        continue;
      }
      now = bricks_[b]->boot_id;
    }
    if (now && *now != then) PBRICK_TRY(lost_writes(b, *now).wrap_error("volume open"));
  }
  return Status::Ok();
}

VolumeLabel Volume::label() const { return claim_->label(); }

bool Volume::dirty(uint64_t block) const {
  return !dirty_.empty() && ((dirty_[block / 64].load(std::memory_order_acquire) >> (block % 64)) & 1);
}

uint64_t Volume::dirty_count() const {
  uint64_t n = 0;
  for (const auto& w : dirty_) n += static_cast<uint64_t>(__builtin_popcountll(w.load(std::memory_order_acquire)));
  return n;
}

Status Volume::mark_stale(uint32_t b, std::optional<uint64_t> missed) {
  std::lock_guard label_lock(label_mu_);
  if (!mirror_->in_sync(b)) return Status::Ok();
  if (options_.read_only) {
    // A reader writes no label (its writer may be writing them): it leaves
    // the copy alone, in this attachment only. Only a degraded attach gets
    // here: a reader never writes, so no write leg fails.
    mirror_->set_state(b, CopyState::kStale);
    PBRICK_LOG_WARN("volume %s: brick %s unreachable: this read-only attachment does not read its copies",
                    format_uuid(claim_->label().volume_uuid).c_str(), brick_name(b).c_str());
    return Status::Ok();
  }
  if (write_failures(b) != bricks_[b]->failures_given_up) {
    // Writes to it failed while it could not be given up (it held the last
    // in-sync copy of some block): its copy may differ from the others in
    // blocks no bit names. Given up whole, so its resync copies them.
    auto blocks = give_up_copy_locked(b);
    if (!blocks) return blocks.error();
    PBRICK_LOG_WARN("volume %s: writes to brick %s failed before it went stale: all %llu blocks of its copy will be "
                    "copied to it again",
                    format_uuid(claim_->label().volume_uuid).c_str(), brick_name(b).c_str(),
                    static_cast<unsigned long long>(*blocks));
    return Status::Ok();
  }
  std::vector<uint32_t> going{b};
  const bool bit = missed && !dirty(*missed);
  // The bit before the label that makes it count. An in-sync brick that
  // cannot take it goes stale with `b` (as one that cannot take the label).
  if (bit) PBRICK_TRY(write_dirty_byte_locked(*missed, b, &going));
  auto joined = write_label_set(going, std::nullopt, std::nullopt);
  if (!joined) return joined.error();
  if (bit) dirty_[*missed / 64].fetch_or(1ull << (*missed % 64), std::memory_order_release);
  return Status::Ok();
}

Status Volume::replace_brick(uint32_t b, const ClientOptions& target) {
  if (!mirror_) return Error(EINVAL, std::string("only a mirror's brick can be replaced, not one of layout ") +
                                         layout_name(options_.layout));
  if (b >= brick_count()) return Error(EINVAL, "the volume has no brick " + std::to_string(b));
  // The labels and bitmaps are its writer's to write: a reader's would be
  // built on the label it learned at attach, overwrite newer ones and bring a
  // copy its writer gave up back in sync.
  if (options_.read_only) return Error(EROFS, "volume attached read-only: its writer replaces bricks");
  // An in-sync copy may be what reads of blocks still unsettled return
  // (mirror.h); giving it up would change those bytes under the readers.
  if (const uint64_t left = mirror_->unsettled_count(); left != 0 && mirror_->in_sync(b)) {
    return Error(EBUSY, "brick " + brick_name(b) + " holds copies that reads use while " + std::to_string(left) +
                            " block(s) are repaired after an unclean detach: replace it once that is done, or once "
                            "it is stale");
  }
  // The new brick: the old one's transport and key, another endpoint, its own store.
  ClientOptions t = brick_options(b);
  t.endpoint = target.endpoint;
  t.store_uuid.reset();
  const std::string name = t.endpoint.to_string();
  auto c = BrickClient::Connect(t);
  if (!c) return c.error().wrap("replacement brick " + name);
  const Uuid store = (*c)->hello().brick_uuid;
  {
    const VolumeLabel l = claim_->label();
    for (uint32_t s = 0; s < brick_count(); s++) {
      if (l.bricks[s].store == store) {
        return Error(EEXIST, name + " serves store " + format_uuid(store) + ", brick " + std::to_string(s) + " (" +
                                 brick_name(s) + ") of the volume");
      }
    }
  }
  PBRICK_TRY(VolumeClaim::check_unlabelled(ClaimBrick{c->get(), name, options_.base}));
  c->reset();

  std::lock_guard label_lock(label_mu_);
  const std::string old_name = brick_name(b);
  if (mirror_->state(b) == CopyState::kResyncing) mirror_->set_state(b, CopyState::kStale);
  if (mirror_->in_sync(b)) {
    auto r = write_label_set({b}, std::nullopt, std::nullopt);
    if (!r) return r.error();
  }
  // Every block with a copy there is dirty, durably, before the label names
  // the new store: a restart then copies all of them.
  auto blocks = dirty_all_of(b);
  if (!blocks) return blocks.error();
  bricks_[b]->failures_given_up = write_failures(b);  // the new store gets every block
  const uint64_t now = static_cast<uint64_t>(std::time(nullptr));
  auto r = write_label_set({}, std::nullopt, std::make_pair(b, LabelBrick{store, options_.base, now}));
  if (!r) return r.error();
  {
    // From now on every connection to place b reaches the new store.
    std::lock_guard lock(bricks_[b]->control_mu);
    std::lock_guard olock(bricks_[b]->options_mu);
    bricks_[b]->options = t;
    bricks_[b]->options.store_uuid = store;
    bricks_[b]->control.reset();
  }
  clear_handles(b);
  bricks_[b]->epoch.fetch_add(1, std::memory_order_acq_rel);
  PBRICK_LOG_NOTICE("volume %s: brick %s replaced by %s (store %s); %llu blocks to copy to it",
                    format_uuid(claim_->label().volume_uuid).c_str(), old_name.c_str(), name.c_str(),
                    format_uuid(store).c_str(), static_cast<unsigned long long>(*blocks));
  return Status::Ok();
}

Result<uint64_t> Volume::dirty_all_of(uint32_t b) {
  // The bits go to the bitmaps first and into dirty_ after: a set bit in
  // dirty_ is one that is durable (record_miss's fast path and
  // mark_dirty_locked rely on it), and a failed write leaves dirty_ as it was.
  std::vector<uint8_t> bits = dirty_bitmap();
  std::vector<uint64_t> of_b;
  bool all_dirty = true;
  for (uint64_t i = 0; i < block_count_; i++) {
    for (uint32_t j = 0; j < placement_.copies; j++) {
      if (placement_.brick_of(placement_.unit(i, j)) != b) continue;
      bits[i / 8] = static_cast<uint8_t>(bits[i / 8] | (1u << (i % 8)));
      of_b.push_back(i);
      all_dirty = all_dirty && dirty(i);
    }
  }
  // Given up whole before (every read of a failed brick's copy may ask):
  // the bits are durable already.
  if (all_dirty) return static_cast<uint64_t>(of_b.size());
  for (uint32_t s = 0; s < brick_count(); s++) {
    if (!mirror_->in_sync(s) || s == b) continue;
    Status st = write_bitmap(s, bits);
    if (!st) return st.error().wrap("recording the blocks of brick " + brick_name(b) + " dirty on brick " + brick_name(s));
  }
  for (uint64_t i : of_b) dirty_[i / 64].fetch_or(1ull << (i % 64), std::memory_order_release);
  return static_cast<uint64_t>(of_b.size());
}

Result<uint64_t> Volume::give_up_copy_locked(uint32_t b) {
  // The last in-sync copy of some block cannot go. Refused before any bit is
  // set: with no other in-sync brick to take the bitmap, bits set in dirty_
  // would not be durable (and record_miss's fast path trusts them).
  if (mirror_->in_sync(b) && !mirror_->may_lose(placement_, b)) {
    return Error(EIO, "brick " + brick_name(b) + " holds the last in-sync copy of some blocks");
  }
  // First the bits (while it is in sync they mean nothing), then the label
  // that makes them count: never a stale brick whose misses are not recorded.
  const uint64_t failures = write_failures(b);
  auto blocks = dirty_all_of(b);
  if (!blocks) return blocks.error();
  bricks_[b]->failures_given_up = failures;
  if (mirror_->state(b) == CopyState::kResyncing) mirror_->set_state(b, CopyState::kStale);
  if (mirror_->in_sync(b)) {
    auto r = write_label_set({b}, std::nullopt, std::nullopt);
    if (!r) return r.error();
  }
  return *blocks;
}

Result<bool> Volume::sync_failed(uint32_t b, int errnum) {
  if (!mirror_ || options_.read_only) return false;
  std::lock_guard label_lock(label_mu_);
  if (mirror_->in_sync(b) && !mirror_->may_lose(placement_, b)) return false;
  const bool given_up_before = mirror_->state(b) == CopyState::kStale;
  auto blocks = give_up_copy_locked(b);
  if (!blocks) return blocks.error();
  if (given_up_before) return true;  // said once, when it went
  PBRICK_LOG_WARN("volume %s: a sync on brick %s failed (%s): writes it took since its last good sync may be lost "
                  "there; all %llu blocks of its copy will be copied to it again",
                  format_uuid(claim_->label().volume_uuid).c_str(), brick_name(b).c_str(), std::strerror(errnum),
                  static_cast<unsigned long long>(*blocks));
  return true;
}

Status Volume::lost_writes(uint32_t b, const std::array<uint8_t, proto::kUuidSize>& boot_id) {
  std::lock_guard label_lock(label_mu_);
  if (bricks_[b]->copy_boot == boot_id) return Status::Ok();  // this boot's loss is answered for
  auto blocks = give_up_copy_locked(b);
  if (!blocks) return blocks.error();
  bricks_[b]->copy_boot = boot_id;
  PBRICK_LOG_WARN("volume %s: the host of brick %s rebooted under unsynced writes: all %llu blocks of its copy "
                  "will be copied to it again",
                  format_uuid(claim_->label().volume_uuid).c_str(), brick_name(b).c_str(),
                  static_cast<unsigned long long>(*blocks));
  return Status::Ok();
}

Status Volume::try_reach(uint32_t b) {
  std::optional<std::array<uint8_t, proto::kUuidSize>> before, after;
  {
    std::lock_guard lock(bricks_[b]->control_mu);
    before = bricks_[b]->boot_id;
    PBRICK_TRY(connect_control(b));
    after = bricks_[b]->boot_id;
  }
  // Its host rebooted since this attachment last reached it: writes it took
  // before it went stale may be lost there, beyond what the bitmap records.
  if (before && after && after != before) PBRICK_TRY(lost_writes(b, *after));
  if (after && mirror_) {
    std::lock_guard label_lock(label_mu_);
    if (!bricks_[b]->copy_boot) bricks_[b]->copy_boot = after;  // first reached now: its resync copies under it
  }
  return Status::Ok();
}

bool Volume::boot_differs(uint32_t b, const std::array<uint8_t, proto::kUuidSize>& boot_id) {
  std::lock_guard label_lock(label_mu_);
  return bricks_[b]->copy_boot && *bricks_[b]->copy_boot != boot_id;
}

Result<bool> Volume::check_boot(uint32_t b, const std::array<uint8_t, proto::kUuidSize>& boot_id) {
  if (!mirror_ || options_.read_only) return false;
  {
    std::lock_guard label_lock(label_mu_);
    std::optional<std::array<uint8_t, proto::kUuidSize>>& known = bricks_[b]->copy_boot;
    if (!known) known = boot_id;
    // Stale (perhaps just now, by another connection that met this boot
    // first, while this one waited for the lock): its ops go elsewhere. A
    // stale copy is compared when the resync reaches it (try_reach).
    if (mirror_->state(b) == CopyState::kStale) return true;
    if (*known == boot_id) return false;
  }
  // Another boot than the one its copy is known complete in: what it took
  // before (acknowledged, maybe not yet synced - on this loop's connection or
  // any other's) may be gone there. Never read as current until resynced.
  PBRICK_TRY(lost_writes(b, boot_id));
  return true;
}

Status Volume::probe(uint32_t b) {
  std::array<uint8_t, proto::kUuidSize> boot{};
  {
    std::lock_guard lock(bricks_[b]->control_mu);
    Brick& brick = *bricks_[b];
    if (brick.control && brick.control->stat().ok()) {
      note_reachable(b, true);
      return Status::Ok();
    }
    PBRICK_TRY(connect_control(b));  // notes the outcome
    boot = brick.boot_id.value_or(boot);
  }
  auto given_up = check_boot(b, boot);  // not under control_mu: label_mu_ comes first
  if (!given_up) return given_up.error();
  return Status::Ok();
}

Status Volume::follow_writer_labels() {
  if (!mirror_ || !options_.read_only) return Status::Ok();
  const VolumeLabel ours = claim_->label();
  std::optional<VolumeLabel> newest;
  // Every brick it reaches: the label that gives a copy up is not written to
  // that copy's brick, and may be on one this attachment does not read now.
  for (uint32_t b = 0; b < brick_count(); b++) {
    std::lock_guard lock(bricks_[b]->control_mu);
    Brick& brick = *bricks_[b];
    auto read = [&] { return VolumeClaim::read_label(ClaimBrick{brick.control.get(), brick_name(b), options_.base}); };
    Result<std::optional<VolumeLabel>> l = Error(ENOTCONN, "no control connection");
    if (brick.control) l = read();
    if (!brick.control || (!l && is_connection_error(l.error().errnum()))) {
      // One attempt a round (the brick restarted, or was away): not the
      // retries of I/O, which would hold this thread for the leg timeout.
      if (!connect_control(b)) continue;
      l = read();
    }
    if (!l) {
      PBRICK_LOG_DEBUG("volume %s: %s", format_uuid(ours.volume_uuid).c_str(), l.error().message().c_str());
      continue;
    }
    if (!*l || !(*l)->same_identity(ours)) continue;
    if (!newest || (*l)->generation > newest->generation) newest = **l;
  }
  if (!newest || newest->generation <= std::max(followed_generation_, ours.generation)) return Status::Ok();
  followed_generation_ = newest->generation;
  std::lock_guard label_lock(label_mu_);
  for (uint32_t b = 0; b < brick_count(); b++) {
    const bool stale = newest->bricks[b].stale_since != 0;
    if (stale == !mirror_->in_sync(b)) continue;
    // As an attach now would see them: a copy the writer gave up is not
    // read, one it resynced since is read again.
    mirror_->set_state(b, stale ? CopyState::kStale : CopyState::kInSync);
    PBRICK_LOG_WARN("volume %s: its writer recorded brick %s %s (generation %llu): this read-only attachment %s",
                    format_uuid(ours.volume_uuid).c_str(), brick_name(b).c_str(), stale ? "stale" : "in sync",
                    static_cast<unsigned long long>(newest->generation),
                    stale ? "no longer reads its copies" : "reads its copies again");
  }
  return Status::Ok();
}

Status Volume::renew_writer(uint32_t b) {
  if (mirror_->state(b) != CopyState::kStale) return Error(EALREADY, "brick " + brick_name(b) + " is not stale");
  // Its data connections from before it went stale may still carry writes
  // the brick holds (a connection given up as too slow; closing it stops
  // nothing, docs/protocol.md 7.9): landing after the resync copied their
  // block they would leave old bytes on a copy called in sync. Under a new
  // writer id, the resync's first FENCE cuts every earlier connection of this
  // attachment there off, and the data channels reconnect under the new one.
  // While the copy is still stale, so what fails with those connections is a
  // miss it records, not a failure that stops the resync.
  return new_writer(b);
}

Status Volume::new_writer(uint32_t b) {
  std::array<uint8_t, proto::kUuidSize> fresh{};
  PBRICK_TRY(random_bytes(fresh.data(), fresh.size()));
  {
    std::lock_guard lock(bricks_[b]->options_mu);
    bricks_[b]->writer = fresh;
  }
  bricks_[b]->epoch.fetch_add(1, std::memory_order_acq_rel);
  return Status::Ok();
}

Status Volume::begin_resync(uint32_t b) {
  std::lock_guard label_lock(label_mu_);
  if (mirror_->state(b) != CopyState::kStale) return Error(EALREADY, "brick " + brick_name(b) + " is not stale");
  {
    // Which of its units it holds: a block freed while it was stale is freed
    // on it too. Nothing maps or writes its units while it is stale.
    std::lock_guard lock(bricks_[b]->control_mu);
    if (!bricks_[b]->control) PBRICK_TRY(connect_control(b));
    for_each_unit_on(b, [&](uint64_t u) { set_allocated(u, false); });
    PBRICK_TRY(learn_allocated(b).wrap_error("brick " + brick_name(b)));
  }
  // From here on writes reach it; the bitmap read after this store holds
  // every block a write skipped it for (record_miss).
  mirror_->set_state(b, CopyState::kResyncing);
  return Status::Ok();
}

bool Volume::abort_resync(uint32_t b, const std::string& why) {
  std::lock_guard label_lock(label_mu_);
  if (mirror_->state(b) != CopyState::kResyncing) return !mirror_->in_sync(b);
  mirror_->set_state(b, CopyState::kStale);
  PBRICK_LOG_WARN("volume %s: resync of brick %s stopped (%s); it stays stale", format_uuid(claim_->label().volume_uuid).c_str(),
                  brick_name(b).c_str(), why.c_str());
  return true;
}

Status Volume::finish_resync(uint32_t b) {
  std::lock_guard label_lock(label_mu_);
  if (mirror_->state(b) != CopyState::kResyncing) return Error(ECANCELED, "resync of brick " + brick_name(b) + " stopped");
  // The brick joining must hold the misses recorded so far before a label
  // says it is in sync: an in-sync brick's bitmap is the one the next
  // attachment may read alone (load_mirror_state), and the bits set while
  // this brick was away were written to the others only. A copy still stale
  // needs them, and so does one that goes stale in the very label update
  // that joins this brick (its label write fails): a later miss of a block
  // whose bit is set takes record_miss's fast path and writes nothing.
  // label_mu_ keeps new bits out meanwhile (mark_dirty_locked).
  if (dirty_count() > 0) {
    Status st = write_bitmap(b, dirty_bitmap());
    if (!st) return st.error().wrap("brick " + brick_name(b) + ": recording the misses of the copies still stale");
  }
  auto joined = write_label_set({}, b, std::nullopt);
  if (!joined) return joined.error();
  if (!*joined) return Error(EIO, "brick " + brick_name(b) + " could not take the label that says it is in sync");
  for (uint32_t s = 0; s < brick_count(); s++) {
    if (!mirror_->in_sync(s)) return Status::Ok();  // another copy is stale: its misses stay recorded
  }
  // No copy is stale: the bitmap is cleared (after the label: a bit left set
  // only makes a later resync copy more).
  for (auto& w : dirty_) w.store(0, std::memory_order_release);
  const std::vector<uint8_t> zeros((block_count_ + 7) / 8, 0);
  for (uint32_t s = 0; s < brick_count(); s++) {
    Status st = write_bitmap(s, zeros);
    if (!st) PBRICK_LOG_WARN("brick %s: clearing the dirty bitmap: %s", brick_name(s).c_str(), st.error().message().c_str());
  }
  return Status::Ok();
}

Result<bool> Volume::write_label_set(std::vector<uint32_t> going, std::optional<uint32_t> joining,
                                     std::optional<std::pair<uint32_t, LabelBrick>> renamed) {
  // Each attempt uses a new generation, so labels of one generation always
  // agree: a brick that cannot take the label goes stale too (going), a
  // joining brick that cannot take it stays stale.
  const uint64_t now = static_cast<uint64_t>(std::time(nullptr));
  auto listed = [](const std::vector<uint32_t>& v, uint32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); };
  // What the update records, for errors ("the labels" when it only writes
  // again what this attachment knows: record_miss).
  std::string change = "the labels";
  if (!going.empty()) {
    change = "brick " + brick_name(going.front()) + " stale";
  } else if (joining) {
    change = "brick " + brick_name(*joining) + " in sync";
  } else if (renamed) {
    change = "brick " + brick_name(renamed->first) + " replaced";
  }
  for (;;) {
    auto holds = [&](uint32_t c) { return (mirror_->in_sync(c) && !listed(going, c)) || joining == c; };
    for (uint32_t first = 0; first < brick_count(); first++) {
      bool any = false;
      for (uint32_t j = 0; j < placement_.copies; j++) any = any || holds((first + j) % brick_count());
      if (!any) {
        return Error(EIO, "recording " + change + ": no in-sync copy of some blocks is reachable");
      }
    }
    VolumeLabel next = claim_->label();
    next.generation = claim_->next_generation();
    claim_->propose(next);
    labels_unsettled_.store(true, std::memory_order_release);
    for (uint32_t g : going) {
      if (next.bricks[g].stale_since != 0) continue;
      next.bricks[g].stale_since = now;
      // The boot its copy is known complete in (label_mu_ is held): a later
      // attachment that finds another one copies the whole copy again.
      next.bricks[g].boot_id = bricks_[g]->copy_boot.value_or(Uuid{});
    }
    if (renamed) next.bricks[renamed->first] = renamed->second;
    if (joining) {
      next.bricks[*joining].stale_since = 0;
      next.bricks[*joining].boot_id = Uuid{};
    }
    bool lost_one = false;
    for (uint32_t s = 0; s < brick_count() && !lost_one; s++) {
      if (!holds(s)) continue;
      std::lock_guard lock(bricks_[s]->control_mu);
      auto r = label_write_fault_ && label_write_fault_(s)
                   ? Result<bool>(Error(ECONNRESET, "label write to brick " + brick_name(s) + " failed (test)"))
                   : with_control(s, [&](BrickClient& c) -> Result<bool> {
                       PBRICK_TRY(VolumeClaim::write_label_to(ClaimBrick{&c, brick_name(s), options_.base}, s, next));
                       return true;
                     });
      if (r) continue;
      if (r.error().errnum() != EIO && !is_connection_error(r.error().errnum())) {
        return r.error().wrap("recording " + change + " on brick " + brick_name(s));
      }
      PBRICK_LOG_WARN("brick %s: %s", brick_name(s).c_str(), r.error().message().c_str());
      if (joining == s) {
        joining.reset();  // it stays stale
      } else {
        going.push_back(s);
      }
      lost_one = true;
    }
    if (lost_one) continue;
    claim_->commit(next);
    labels_unsettled_.store(false, std::memory_order_release);
    for (uint32_t g : going) {
      mirror_->set_state(g, CopyState::kStale);
      PBRICK_LOG_WARN("volume %s: brick %s is stale (generation %llu); the volume is degraded",
                      format_uuid(next.volume_uuid).c_str(), brick_name(g).c_str(),
                      static_cast<unsigned long long>(next.generation));
    }
    if (joining) {
      mirror_->set_state(*joining, CopyState::kInSync);
      PBRICK_LOG_NOTICE("volume %s: brick %s is in sync (generation %llu)", format_uuid(next.volume_uuid).c_str(),
                        brick_name(*joining).c_str(), static_cast<unsigned long long>(next.generation));
    }
    return joining.has_value();
  }
}

Status Volume::mark_dirty(uint64_t block) {
  if (dirty(block)) return Status::Ok();
  std::lock_guard label_lock(label_mu_);
  return mark_dirty_locked(block);
}

Result<bool> Volume::record_miss(uint64_t block, uint32_t brick) {
  // Fast path: the bit is durable already; a resync that begins after this
  // read copies the block once this request's writes are done (they count
  // on the block since before the state was read, mirror.h). The bit is read
  // first: set under label_mu_ after a begin_resync, it shows the brick
  // resyncing to the state read that follows it. Read the other way round,
  // a stale state read before begin_resync and a bit set by another copy's
  // miss after the resync took its list of blocks would skip this copy of a
  // block the resync never copies.
  if (!labels_unsettled_.load(std::memory_order_acquire) && dirty(block) &&
      mirror_->state(brick) == CopyState::kStale) {
    return true;
  }
  std::lock_guard label_lock(label_mu_);
  if (mirror_->state(brick) != CopyState::kStale) return false;
  if (labels_unsettled_.load(std::memory_order_relaxed)) {
    // A failed update may have left a label newer than ours that calls this
    // copy in sync; the next attachment would follow it and ignore the bit.
    // The labels say what this attachment knows first, at a newer generation.
    auto settled = write_label_set({}, std::nullopt, std::nullopt);
    if (!settled) return settled.error().wrap("writing the labels again before brick " + brick_name(brick) +
                                              " misses a write");
    if (mirror_->state(brick) != CopyState::kStale) return false;
  }
  PBRICK_TRY(mark_dirty_locked(block));
  return true;
}

Status Volume::write_bitmap(uint32_t b, std::span<const uint8_t> bits) {
  std::lock_guard lock(bricks_[b]->control_mu);
  auto r = with_control(b, [&](BrickClient& c) -> Result<bool> {
    PBRICK_TRY(VolumeClaim::write_dirty(ClaimBrick{&c, brick_name(b), options_.base}, bits));
    return true;
  });
  if (!r) return r.error();
  return Status::Ok();
}

std::vector<uint8_t> Volume::dirty_bitmap() const {
  std::vector<uint8_t> bits((block_count_ + 7) / 8, 0);
  for (uint64_t i = 0; i < block_count_; i++) {
    if (dirty(i)) bits[i / 8] = static_cast<uint8_t>(bits[i / 8] | (1u << (i % 8)));
  }
  return bits;
}

std::vector<bool> Volume::dirty_blocks() const {
  std::vector<bool> out(block_count_);
  for (uint64_t i = 0; i < block_count_; i++) out[i] = dirty(i);
  return out;
}

Status Volume::mark_dirty_locked(uint64_t block) {
  if (dirty(block)) return Status::Ok();
  PBRICK_TRY(write_dirty_byte_locked(block, std::nullopt, nullptr));
  dirty_[block / 64].fetch_or(1ull << (block % 64), std::memory_order_release);
  return Status::Ok();
}

Status Volume::write_dirty_byte_locked(uint64_t block, std::optional<uint32_t> except, std::vector<uint32_t>* failed) {
  // The byte holds the bits already durable and this one: the bitmap only
  // grows while a copy is stale, and this attachment is its only writer.
  uint8_t byte = static_cast<uint8_t>(1u << (block % 8));
  for (uint64_t i = block & ~uint64_t{7}; i < std::min(block_count_, (block & ~uint64_t{7}) + 8); i++) {
    if (dirty(i)) byte = static_cast<uint8_t>(byte | (1u << (i % 8)));
  }
  for (uint32_t s = 0; s < brick_count(); s++) {
    if (!mirror_->in_sync(s) || s == except) continue;
    std::lock_guard lock(bricks_[s]->control_mu);
    auto r = with_control(s, [&](BrickClient& c) -> Result<bool> {
      PBRICK_TRY(VolumeClaim::record_dirty(ClaimBrick{&c, brick_name(s), options_.base}, block / 8, byte));
      return true;
    });
    if (r) continue;
    if (failed != nullptr && (r.error().errnum() == EIO || is_connection_error(r.error().errnum()))) {
      PBRICK_LOG_WARN("brick %s: %s", brick_name(s).c_str(), r.error().message().c_str());
      failed->push_back(s);
      continue;
    }
    return r.error().wrap("recording block " + std::to_string(block) + " dirty on brick " + brick_name(s));
  }
  return Status::Ok();
}

Status Volume::discard_block(uint64_t index) {
  uint32_t b = brick_of(index);
  std::lock_guard lock(bricks_[b]->control_mu);
  if (options_.read_only) return Error(EROFS, "volume attached read-only");
  if (!allocated(index)) return Status::Ok();
  uint64_t vaddr = block_vaddr(index);
  bool was_mapped = cached(index).has_value();
  {
    std::unique_lock hl(handles_mu_);
    forget_handle_locked(index);
  }
  auto r = with_control(b, [&](BrickClient& c) -> Result<bool> {
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
