#include "gateway/resync.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <optional>
#include <vector>

#include "common/client.h"
#include "common/log.h"
#include "common/units.h"
#include "gateway/mirror.h"
#include "gateway/volume.h"

namespace pbrick {
namespace {

using Clock = std::chrono::steady_clock;

// A sync-read on `c` (docs/protocol.md 11.1): over RDMA of the brick's sync
// region (a READ through a handle revoked meanwhile would break the queue
// pair), over TCP through the handle `rkey` of what was written. A READ the
// brick refuses (the handle died) proves nothing: the caller writes again.
Status sync_read(BrickClient& c, uint32_t rkey, uint64_t remote_addr) {
  uint8_t scratch[8];
  if (const auto& region = c.sync_region()) return c.read(region->rkey, region->addr, {scratch, sizeof scratch});
  return c.read(rkey, remote_addr, {scratch, sizeof scratch});
}

// Makes `len` bytes written at `remote_addr` over `c` durable: PERSIST of the
// range where the brick grants it, else a sync-read (docs/persistence.md).
Status make_durable(BrickClient& c, uint32_t rkey, uint64_t remote_addr, uint64_t len) {
  const uint64_t features = c.hello().features;
  if (features & proto::kFeaturePersistRpc) {
    proto::PersistRange r{rkey, remote_addr, len};
    return c.persist({&r, 1});
  }
  if (features & proto::kFeatureSyncRead) return sync_read(c, rkey, remote_addr);
  return Error(EOPNOTSUPP, "the brick granted neither PERSIST nor sync-read: a copy cannot be made durable");
}

// One resync's connections (its own, so copies never wait behind the
// volume's control path) and its block buffer.
class Copier {
 public:
  // `repair`: copies of unsettled blocks (MirrorState::unsettled) from their
  // source to in-sync or resyncing targets (set_target), not a resync's.
  Copier(Volume& volume, uint32_t target, uint64_t channel_id, bool repair = false)
      : volume_(volume), channel_id_(channel_id), repair_(repair), target_(target), clients_(volume.brick_count()) {
    buf_.resize(proto::kBlockSize);
  }
  void set_target(uint32_t target) { target_ = target; }

  // Copies block `block` to its copy on the target (see resync.h, step 3).
  // Returns the block's write counter (MirrorState::write_seq) the copy is
  // current with: no write to the block began after it was read. ECANCELED
  // when the resync was stopped meanwhile.
  Result<uint64_t> copy(uint64_t block, const std::atomic<bool>& stop) {
    const Placement& pl = volume_.placement();
    MirrorState& mirror = *volume_.mirror();
    uint64_t unit = 0;
    for (uint32_t j = 0; j < pl.copies; j++) {
      if (pl.brick_of(pl.unit(block, j)) == target_) unit = pl.unit(block, j);
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(volume_.options().io_timeout_ms);
    mirror.hold(block);
    struct Release {
      MirrorState& m;
      ~Release() { m.release(); }
    } release{mirror};
    for (uint32_t attempt = 0;; attempt++) {
      const CopyState state = mirror.state(target_);
      if (stop.load(std::memory_order_acquire) || (repair_ ? state == CopyState::kStale : state != CopyState::kResyncing)) {
        return Error(ECANCELED, repair_ ? "repair stopped" : "resync stopped");
      }
      if (attempt > 0) {
        if (Clock::now() >= deadline) {
          return Error(ETIMEDOUT, "block " + std::to_string(block) + ": the writes under way did not finish in " +
                                      std::to_string(volume_.options().io_timeout_ms) + " ms");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(attempt < 10 ? 200 : 2000));
      }
      // Held, new writes to the block wait; the ones under way finish.
      const uint64_t seq = mirror.write_seq(block);
      if (mirror.writes_in_flight(block)) continue;
      auto done = copy_once(block, unit);
      if (!done) return done.error();
      if (!*done) continue; // a mapping died or a source failed: again
      if (mirror.write_seq(block) == seq && !mirror.writes_in_flight(block)) return seq;
      copied_again_++;  // a write (to another block sharing the counter) began meanwhile
    }
  }

  // Connects to the target (its FENCE cuts the connections from before the
  // resync off: Volume::begin_resync), before anything is copied.
  // Returns the store the target serves (its HELLO's brick uuid).
  Result<std::array<uint8_t, proto::kUuidSize>> connect_target() {
    auto dst = client(target_);
    if (!dst) return dst.error();
    return (*dst)->hello().brick_uuid;
  }
  // Before the target's label says in sync: what it holds of writes sent
  // before it went stale, never synced there, is durable.
  // A sync point with no range of its own: PERSIST of every writable
  // mapping, the sync region over RDMA, or over TCP a READ through a live
  // handle of a block the brick holds (none: it holds nothing to sync).
  Status sync_target() {
    auto dst = client(target_);
    if (!dst) return dst.error();
    BrickClient& c = **dst;
    Status st;
    if ((c.hello().features & proto::kFeaturePersistRpc) != 0) {
      st = c.persist({});
    } else if (c.sync_region() || (c.hello().features & proto::kFeatureSyncRead) == 0) {
      st = make_durable(c, 0, 0, 0);
    } else {
      const Placement& pl = volume_.placement();
      std::optional<uint64_t> held;
      for (uint64_t u = 0; u < volume_.unit_count() && !held; u++) {
        if (pl.brick_of(u) == target_ && volume_.allocated(u)) held = u;
      }
      if (!held) return Status::Ok();
      auto h = volume_.map_block(*held, false);
      if (!h) return h.error().wrap("mapping a block to sync brick " + volume_.brick_name(target_));
      st = make_durable(c, h->rkey, h->remote_addr, 0);
    }
    if (!st) {
      target_failed(st);
      drop(target_);
    }
    return st;
  }

  uint64_t copied_again() const { return copied_again_; }
  uint64_t bytes() const { return bytes_; }

 private:
  // One attempt: false when it must be made again (a handle died, the
  // source failed); an error when the target failed.
  Result<bool> copy_once(uint64_t block, uint64_t unit) {
    const Placement& pl = volume_.placement();
    const MirrorState& mirror = *volume_.mirror();
    // An in-sync copy - a reachable one while there is one - and after a
    // source failed, the next in turn (a copy whose brick fails but is not
    // given up yet would otherwise be read again until the deadline, every
    // run).
    uint64_t in_sync[kMaxCopies], reachable[kMaxCopies];
    uint32_t n_in_sync = 0, n_reachable = 0;
    for (uint32_t j = 0; j < pl.copies; j++) {
      uint64_t u = pl.unit(block, j);
      if (u == unit || !mirror.in_sync(pl.brick_of(u))) continue;
      in_sync[n_in_sync++] = u;
      if (mirror.reachable(pl.brick_of(u))) reachable[n_reachable++] = u;
    }
    if (n_in_sync == 0) return Error(EIO, "block " + std::to_string(block) + " has no in-sync copy");
    uint64_t source = n_reachable > 0 ? reachable[source_turn_ % n_reachable] : in_sync[source_turn_ % n_in_sync];
    if (mirror.unsettled(block)) {
      // Its copies may differ: every one gets the bytes its reads return.
      source = pl.unit(block, mirror.source_copy(pl, block));
      if (source == unit) return true;  // the others were given up: the target is the source now
    }
    if (!volume_.allocated(source)) {
      // Never written, or freed while the target was stale: the target's copy goes too.
      if (!volume_.allocated(unit)) return true;
      Status st = volume_.discard_block(unit);
      if (st) return true;
      // EBUSY: mapped by another connection (a reader's), or moving between
      // tiers; it reads as zeros once written so, as a discard does then.
      if (st.error().errnum() != EBUSY) return st.error().wrap("freeing block " + std::to_string(block));
      std::fill(buf_.begin(), buf_.end(), 0);
      return write_target(block, unit);
    }
    auto from = volume_.map_block(source, false);
    if (!from) {
      if (from.error().errnum() == ENOENT) return false;  // freed meanwhile: the next attempt sees it
      PBRICK_LOG_WARN("resync: block %llu on brick %s: %s", static_cast<unsigned long long>(block),
                      volume_.brick_name(pl.brick_of(source)).c_str(), from.error().message().c_str());
      source_turn_++;
      return false;
    }
    const uint32_t source_brick = pl.brick_of(source);
    auto src = client(source_brick);
    if (!src) {
      source_turn_++;
      return false;
    }
    // Its host rebooted since the copy was known complete: what it took
    // unsynced may be gone there. Given up, and another copy is the source.
    // One that holds the last in-sync copy of some block cannot be given up
    // (its loss is the writers' to learn, from their FLUSH): another copy of
    // this block is read while there is one, else this one, as reads do.
    const auto& boot = (*src)->hello().boot_id;
    if (mirror.may_lose(pl, source_brick)) {
      auto rebooted = volume_.check_boot(source_brick, boot);
      if (!rebooted) return rebooted.error().wrap("block " + std::to_string(block));
      if (*rebooted) {
        drop(source_brick);
        return false;
      }
    } else if (n_in_sync > 1 && volume_.boot_differs(source_brick, boot)) {
      source_turn_++;
      return false;
    }
    Status st = (*src)->read(from->rkey, from->remote_addr, buf_);
    if (!st) {
      // The mapping died (EKEYREJECTED): mapped again. Over RDMA that broke
      // the queue pair too, so the connection goes either way.
      if (st.error().errnum() == EKEYREJECTED) {
        volume_.invalidate(source, from->rkey);
      } else {
        source_turn_++;
      }
      if (st.error().errnum() == EIO) {
        // The source could not make its writes durable (over TCP a READ is
        // a sync point): given up whole, as a read of it gives it up
        // (IoRetry::settle), so the next attempt reads another copy - also
        // of an unsettled block, whose source is otherwise fixed.
        auto given_up = volume_.sync_failed(source_brick, EIO);
        if (!given_up) {
          PBRICK_LOG_ERROR("brick %s: %s", volume_.brick_name(source_brick).c_str(),
                           given_up.error().message().c_str());
        }
      }
      drop(source_brick);
      return false;
    }
    if (!mirror.in_sync(source_brick)) return false;  // given up meanwhile: read another copy
    return write_target(block, unit);
  }

  // buf_ to the target's copy of the block, made durable there. False when
  // it must be made again (the mapping died).
  Result<bool> write_target(uint64_t block, uint64_t unit) {
    auto to = volume_.map_block(unit, true);
    if (!to) return to.error().wrap("mapping block " + std::to_string(block));
    auto dst = client(target_);
    if (!dst) return dst.error();
    Status st = (*dst)->write(to->rkey, to->remote_addr, buf_);
    if (st) st = make_durable(**dst, to->rkey, to->remote_addr, buf_.size());
    if (!st) {
      target_failed(st);
      drop(target_);  // over RDMA a dead mapping broke the queue pair as well
      if (st.error().errnum() == EKEYREJECTED) {
        volume_.invalidate(unit, to->rkey);
        return false;
      }
      return st.error().wrap("writing block " + std::to_string(block));
    }
    bytes_ += buf_.size();
    return true;
  }

  // A target that answers EIO could not make what it took durable: the
  // copy's bytes, and maybe writes it took before that no dirty bit names.
  // Its copy is given up whole (every block copied again), as a FLUSH's
  // failed sync gives it up; not when it holds the last in-sync copy of some
  // block (the writers' FLUSH fails then).
  void target_failed(const Status& st) {
    if (st.error().errnum() != EIO) return;
    auto given_up = volume_.sync_failed(target_, EIO);
    if (!given_up) {
      PBRICK_LOG_ERROR("brick %s: %s", volume_.brick_name(target_).c_str(), given_up.error().message().c_str());
    }
  }

  Result<BrickClient*> client(uint32_t b) {
    if (!clients_[b]) {
      ClientOptions o = volume_.writer_options(b, channel_id_);
      // A copy holds its block (writes to it wait): a brick that does not
      // answer fails the copy within the leg timeout (at least 2 s: a
      // store's fdatasync behind a sync-read may take that), not the
      // client's own 10 s per step.
      const int bound = static_cast<int>(std::max<uint32_t>(volume_.options().leg_timeout_ms, 2000));
      o.timeout_ms = std::min(o.timeout_ms, bound);
      auto c = BrickClient::Connect(o);
      if (!c) return c.error().wrap("brick " + volume_.brick_name(b));
      clients_[b] = std::move(*c);
    }
    return clients_[b].get();
  }
  void drop(uint32_t b) { clients_[b].reset(); }

  Volume& volume_;
  const uint64_t channel_id_;
  const bool repair_;
  uint32_t target_;
  std::vector<std::unique_ptr<BrickClient>> clients_;
  std::vector<uint8_t> buf_;
  uint64_t copied_again_ = 0;
  uint64_t bytes_ = 0;
  uint32_t source_turn_ = 0;  // which in-sync copy a block is read from (copy_once)
};

}  // namespace

std::unique_ptr<MirrorResync> MirrorResync::Start(Volume& volume, std::function<void()> on_change) {
  if (volume.mirror() == nullptr) return nullptr;
  std::unique_ptr<MirrorResync> r(new MirrorResync(volume, std::move(on_change)));
  r->thread_ = std::thread([p = r.get()] { p->run(); });
  return r;
}

MirrorResync::MirrorResync(Volume& volume, std::function<void()> on_change)
    : volume_(volume),
      channel_id_(volume.new_channel_id()),
      on_change_(std::move(on_change)),
      copied_before_(volume.brick_count()) {}

MirrorResync::~MirrorResync() {
  {
    std::lock_guard lock(mu_);
    stop_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MirrorResync::poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  cv_.notify_all();
}

// A resyncing copy's progress for people: percent done, and the seconds
// left at the rate so far (none before the first block, or when the clock
// went back). Before its run's first count (started 0: the last run's are
// still there) it is at 0 %.
struct ShownProgress {
  uint64_t percent = 0;
  std::optional<uint64_t> eta_s;
};
ShownProgress shown_progress(const MirrorState::Progress& p) {
  ShownProgress s;
  if (p.started == 0 || p.total == 0) return s;
  const uint64_t done = std::min(p.done, p.total);  // the three counts are read one by one
  s.percent = done * 100 / p.total;
  const uint64_t now = static_cast<uint64_t>(std::time(nullptr));
  if (done != 0 && now >= p.started) s.eta_s = (now - p.started) * (p.total - done) / done;
  return s;
}

std::string mirror_summary(const Volume& volume) {
  const MirrorState& mirror = *volume.mirror();
  const VolumeLabel label = volume.label();
  std::string out;
  for (uint32_t b = 0; b < volume.brick_count(); b++) {
    CopyState st = mirror.state(b);
    if (st == CopyState::kInSync) continue;
    out += out.empty() ? "degraded: " : "; ";
    out += "brick " + volume.brick_name(b) + " ";
    if (st == CopyState::kResyncing) {
      const ShownProgress p = shown_progress(mirror.progress(b));
      out += "resyncing " + std::to_string(p.percent) + " %";
      if (p.eta_s) out += " (ETA " + std::to_string(*p.eta_s) + " s)";
    } else {
      out += "stale since " + format_time(label.bricks[b].stale_since);
    }
  }
  if (out.empty()) out = "in sync";
  if (const uint64_t left = mirror.unsettled_count(); left != 0) {
    out += "; repairing after an unclean detach: " + std::to_string(left) + " block(s) left";
  }
  return out;
}

std::string mirror_json(const Volume& volume) {
  const MirrorState& mirror = *volume.mirror();
  const VolumeLabel label = volume.label();
  std::string out = "{\"copies\":" + std::to_string(volume.copies()) + ",\"bricks\":[";
  for (uint32_t b = 0; b < volume.brick_count(); b++) {
    CopyState st = mirror.state(b);
    out += b ? ",{" : "{";
    out += "\"target\":\"" + volume.brick_name(b) + "\",\"state\":\"" + copy_state_name(st) + "\"";
    if (st != CopyState::kInSync) out += ",\"stale_since\":\"" + format_time(label.bricks[b].stale_since) + "\"";
    if (st == CopyState::kResyncing) {
      const ShownProgress p = shown_progress(mirror.progress(b));
      out += ",\"resync_percent\":" + std::to_string(p.percent);
      if (p.eta_s) out += ",\"eta_s\":" + std::to_string(*p.eta_s);
    }
    out += "}";
  }
  return out + "]}";
}

void MirrorResync::run() {
  MirrorState& mirror = *volume_.mirror();
  std::string shown;
  while (!stopping()) {
    // A copy's state may change on any I/O thread (a leg failure): shown
    // within a second.
    if (std::string now = mirror_summary(volume_); now != shown) {
      shown = now;
      if (on_change_) on_change_();
    }
    if (volume_.options().read_only) {
      // Its writer marks copies stale: stop reading them within a second.
      Status st = volume_.follow_writer_labels();
      if (!st) PBRICK_LOG_DEBUG("following the writer's labels: %s", st.error().message().c_str());
    }
    for (uint32_t b = 0; b < volume_.brick_count() && !stopping(); b++) {
      if (mirror.in_sync(b) && !mirror.reachable(b)) {
        // Left out of the reads since its I/O failed: back when this works.
        Status st = volume_.probe(b);
        if (!st) {
          PBRICK_LOG_DEBUG("brick %s still unreachable: %s", volume_.brick_name(b).c_str(),
                           st.error().message().c_str());
        }
        continue;
      }
      // A read-only attachment resyncs nothing: that writes the copy and the
      // labels, which are its writer's to write.
      if (mirror.state(b) != CopyState::kStale || volume_.options().read_only) continue;
      Status st = volume_.try_reach(b);
      if (!st) {
        PBRICK_LOG_DEBUG("resync: brick %s not back yet: %s", volume_.brick_name(b).c_str(),
                         st.error().message().c_str());
        continue;
      }
      st = resync(b);
      if (!st) {
        volume_.abort_resync(b, st.error().message());
        mirror.set_progress(b, {});
      }
      if (on_change_) on_change_();
    }
    bool more = false;
    if (mirror.unsettled_count() != 0 && !volume_.options().read_only && !stopping()) {
      Status st = repair();
      if (!st) PBRICK_LOG_WARN("%s (tried again in a second)", st.error().message().c_str());
      // A pass that went well goes on at once, after the checks above.
      more = st.ok() && mirror.unsettled_count() != 0;
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, more ? std::chrono::seconds(0) : std::chrono::seconds(1),
                 [&] { return poked_ || stopping(); });
    poked_ = false;
  }
}

void MirrorResync::pace(uint64_t bytes, Clock::time_point started, Clock::time_point& reported) {
  const uint64_t rate = uint64_t{volume_.options().resync_mib_per_s} << 20;  // bytes a second; 0: no bound
  if (rate != 0) {
    // Ahead of the rate: wait until the bytes copied so far are due (a
    // stop ends the wait; the caller's next copy then sees it).
    auto due = started + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(static_cast<double>(bytes) / static_cast<double>(rate)));
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, due, [&] { return stopping(); });
  }
  if (on_change_ && Clock::now() - reported >= std::chrono::seconds(1)) {
    reported = Clock::now();
    on_change_();
  }
}

Status MirrorResync::repair() {
  MirrorState& mirror = *volume_.mirror();
  const Placement& pl = volume_.placement();
  Copier copier(volume_, 0, channel_id_, true);
  const auto t0 = Clock::now();
  auto reported = t0;
  uint64_t repaired = 0;
  // About a second at a time, from where the last pass stopped: the
  // thread's other work (probes, resyncs of bricks back) is not held up for
  // the whole repair.
  for (uint64_t n = 0; n < volume_.block_count() && !stopping() && Clock::now() - t0 < std::chrono::seconds(1);
       n++) {
    const uint64_t block = repair_next_;
    repair_next_ = (repair_next_ + 1) % volume_.block_count();
    if (!mirror.unsettled(block)) continue;
    const uint32_t source = mirror.source_copy(pl, block);
    for (uint32_t j = 0; j < pl.copies; j++) {
      const uint32_t target = pl.brick_of(pl.unit(block, j));
      if (j == source) continue;
      // A stale copy gets the block's dirty bit, durably (its resync copies
      // it, from the source); one resyncing or in sync gets the bytes now.
      if (mirror.state(target) == CopyState::kStale) {
        auto missed = volume_.record_miss(block, target);
        if (!missed) return missed.error().wrap("repair of block " + std::to_string(block));
        if (*missed) continue;
      }
      copier.set_target(target);
      auto copied = copier.copy(block, stop_);
      if (!copied) {
        // A brick that is down, the target's or the source's, is given up
        // as a write would give it up (stale, this block dirty first):
        // otherwise the repair would fail on it every second for as long
        // as nothing writes. The next pass takes the block again, with the
        // copies in sync then.
        bool gave_up = false;
        if (copied.error().errnum() != ECANCELED && !stopping()) {
          for (uint32_t b : {target, pl.brick_of(pl.unit(block, source))}) {
            if (mirror.in_sync(b) && !volume_.probe(b).ok() && mirror.may_lose(pl, b) &&
                volume_.mark_stale(b, block).ok()) {
              gave_up = true;
            }
          }
        }
        if (gave_up) return Status::Ok();
        return copied.error().wrap("repair of block " + std::to_string(block) + " on brick " +
                                   volume_.brick_name(target));
      }
    }
    if (mirror.source_copy(pl, block) != source) {
      // The source was given up while the others were copied from it: its
      // copy, which the loop above skipped, gets no dirty bit from this
      // pass, and the others may hold its bytes or the new source's. The
      // block stays unsettled: the next pass copies it from the new source
      // and records the miss of the old one, stale now.
      continue;
    }
    mirror.settle(block);
    repaired++;
    pace(copier.bytes(), t0, reported);
  }
  repaired_ += repaired;
  if (mirror.unsettled_count() == 0) {
    PBRICK_LOG_NOTICE("volume at %s: the copies of every block written before the unclean detach hold the same "
                      "bytes again (%llu repaired)",
                      format_hex(volume_.options().base).c_str(), static_cast<unsigned long long>(repaired_));
  }
  if (on_change_) on_change_();
  return Status::Ok();
}

Status MirrorResync::resync(uint32_t b) {
  MirrorState& mirror = *volume_.mirror();
  const Placement& pl = volume_.placement();
  // Every older connection there cut off first (resync.h, 2), while it is
  // still stale; then it becomes resyncing.
  PBRICK_TRY(volume_.renew_writer(b));
  Copier copier(volume_, b, channel_id_);
  auto store = copier.connect_target();
  if (!store) return store.error().wrap("resync of brick " + volume_.brick_name(b));
  // What an earlier run copied to another store (a replaced brick) is not there.
  CopiedBefore& before = copied_before_[b];
  if (before.store != *store) {
    before.store = *store;
    before.seq.clear();
  }
  PBRICK_TRY(volume_.begin_resync(b));
  // The blocks to copy: read after the brick became resyncing (resync.h, 2),
  // but for those an earlier run copied that no write or discard began on
  // since (every write counted from here on reaches the brick as well).
  std::vector<bool> dirty = volume_.dirty_blocks();
  std::vector<uint64_t> blocks;
  size_t skipped = 0;
  for (uint64_t i = 0; i < volume_.block_count(); i++) {
    // An unsettled block's copy there may differ from its source too.
    if (!dirty[i] && !mirror.unsettled(i)) continue;
    for (uint32_t j = 0; j < pl.copies; j++) {
      if (pl.brick_of(pl.unit(i, j)) == b) {
        auto it = before.seq.find(i);
        if (it != before.seq.end() && it->second == mirror.write_seq(i) && !mirror.writes_in_flight(i)) {
          skipped++;
        } else {
          blocks.push_back(i);
        }
        break;
      }
    }
  }
  const uint64_t started = static_cast<uint64_t>(std::time(nullptr));
  mirror.set_progress(b, {0, blocks.size(), started});
  PBRICK_LOG_NOTICE("volume at %s: brick %s is back: resyncing %zu dirty blocks of %llu (%zu more copied before)",
                    format_hex(volume_.options().base).c_str(), volume_.brick_name(b).c_str(), blocks.size(),
                    static_cast<unsigned long long>(volume_.block_count()), skipped);
  if (on_change_) on_change_();
  const auto t0 = Clock::now();
  auto reported = t0;
  for (size_t k = 0; k < blocks.size(); k++) {
    auto copied = copier.copy(blocks[k], stop_);
    if (!copied) return copied.error().wrap("resync of brick " + volume_.brick_name(b));
    before.seq[blocks[k]] = *copied;
    mirror.set_progress(b, {k + 1, blocks.size(), started});
    pace(copier.bytes(), t0, reported);
  }
  PBRICK_TRY(copier.sync_target().wrap_error("resync of brick " + volume_.brick_name(b)));
  PBRICK_TRY(volume_.finish_resync(b));
  before.seq.clear();
  mirror.set_progress(b, {blocks.size(), blocks.size(), 0});  // the last resync's count stays
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  PBRICK_LOG_NOTICE("volume at %s: brick %s resynced: %zu blocks copied (%llu copied again after a write) in %.1f s, "
                    "%.1f MiB/s",
                    format_hex(volume_.options().base).c_str(), volume_.brick_name(b).c_str(), blocks.size(),
                    static_cast<unsigned long long>(copier.copied_again()), secs,
                    secs > 0 ? static_cast<double>(copier.bytes()) / (1 << 20) / secs : 0.0);
  return Status::Ok();
}

}  // namespace pbrick
