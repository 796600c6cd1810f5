#include "gateway/volume_io.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "common/log.h"
#include "common/units.h"
#include "gateway/block_mapper.h"
#include "gateway/mirror.h"

namespace pbrick {
namespace {

constexpr auto kReconnectInterval = std::chrono::milliseconds(100);
constexpr auto kFirstBackoff = std::chrono::milliseconds(20);
constexpr auto kMaxBackoff = std::chrono::milliseconds(500);

}  // namespace

// A request failed: each brick its unfinished WRITE pieces were for owes the
// next FLUSH a report (Volume::note_write_failed).
void note_failed_writes(Volume& volume, std::span<const IoPiece> pieces) {
  for (const IoPiece& p : pieces) {
    if (p.is_write && p.status != 0) volume.note_write_failed(p.brick);
  }
}

Fate fate_of(int status) {
  if (status == 0) return Fate::kDone;
  if (status == kErrHeld) return Fate::kWait;
  if (status == EKEYREJECTED) return Fate::kRemap;
  if (is_connection_error(status)) return Fate::kReconnect;  // ESHUTDOWN included
  return Fate::kFail;
}

Error io_error(const Volume& volume, uint32_t brick, int status, std::string_view what) {
  if (status == kErrWrongStore) {
    std::string why = volume.refusal(brick);
    return Error(status, std::string(what) + ": " + (why.empty() ? "brick " + volume.brick_name(brick) +
                                                                        " serves another store"
                                                                  : why));
  }
  if (volume.brick_count() == 1) return Error(status, std::string(what));
  return Error(status, std::string(what) + " on brick " + volume.brick_name(brick));
}

namespace {
// One piece per block touched; each piece's bytes are at `buf` + its offset
// in the range, or at `buf` itself for every piece when `one_source` (a block
// of zeros).
void plan_blocks(const Volume& volume, bool is_write, uint64_t offset, uint64_t len, uint8_t* buf, bool one_source,
                 void* request, std::vector<IoPiece>& pieces) {
  for (uint64_t done = 0; done < len;) {
    uint64_t pos = offset + done;
    uint32_t in_block = static_cast<uint32_t>(pos % proto::kBlockSize);
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len - done, proto::kBlockSize - in_block));
    plan_block(volume, is_write, pos / proto::kBlockSize, in_block, n, one_source ? buf : buf + done, request, pieces);
    done += n;
  }
}
}  // namespace

void plan_rw(const Volume& volume, bool is_write, uint64_t offset, uint64_t len, uint8_t* buf, void* request,
             std::vector<IoPiece>& pieces) {
  plan_blocks(volume, is_write, offset, len, buf, false, request, pieces);
}

void plan_zero_fill(const Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                    std::vector<IoPiece>& pieces) {
  plan_blocks(volume, true, offset, len, zeros, true, request, pieces);
}

namespace {
// Whether [pos, end) covers the whole 2 MiB block starting at `pos` (a last
// block cut short by the volume's size never is): what a discard may FREE.
bool covers_whole_block(const Volume& volume, uint64_t pos, uint64_t end) {
  return pos % proto::kBlockSize == 0 && end - pos >= proto::kBlockSize && pos + proto::kBlockSize <= volume.size();
}
}  // namespace

Result<uint64_t> plan_discard(Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                              std::vector<IoPiece>& pieces) {
  uint64_t size = volume.size();
  uint64_t end = offset + len;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block = pos / proto::kBlockSize;
    uint64_t block_start = block * proto::kBlockSize;
    uint64_t block_end = std::min(block_start + proto::kBlockSize, size);
    uint64_t piece_end = std::min(end, block_end);
    bool whole = covers_whole_block(volume, pos, end);
    // Each copy of the block (one unless mirrored) is freed, or zeroed
    // through the data path when it cannot be.
    size_t first = pieces.size();
    plan_block(volume, true, block, static_cast<uint32_t>(pos - block_start), static_cast<uint32_t>(piece_end - pos),
               zeros, request, pieces);
    // Mirror: the block's writes count from here, before any copy is
    // skipped or freed (mirror.h). A block a resync copies is not waited for
    // here: the caller goes on from it later.
    if (begin_writes(volume, std::span<IoPiece>(pieces).subspan(first))) {
      pieces.resize(first);
      end_writes(volume, pieces);
      return pos;
    }
    auto fail = [&](const Error& e) -> Error {
      end_writes(volume, pieces);  // the request fails: none of its pieces goes out
      pieces.resize(first);
      return e;
    };
    size_t kept = first;
    for (size_t k = first; k < pieces.size(); k++) {
      uint64_t unit = pieces[k].block;
      auto stale = skip_stale_copy(volume, pieces[k]);  // mirror: recorded dirty instead
      if (!stale) return fail(stale.error());
      // A copy skipped or freed is done; the block stays counted while a
      // zero-fill piece of it is still to go out.
      if (!*stale && volume.allocated(unit)) {
        Status st = whole ? volume.discard_block(unit) : Status(Error(EBUSY, "partial"));
        if (!st && st.error().errnum() != EBUSY) {
          // Mirror: a copy whose brick failed (past the leg timeout) is
          // given up as a write's would be - stale, the block dirty - or
          // the copies freed already would read as zeros beside its old bytes.
          auto handled = volume.mirror() != nullptr && (st.error().errnum() == EIO ||
                                                        is_connection_error(st.error().errnum()))
                             ? leg_failed(volume, pieces[k])
                             : Result<bool>(false);
          if (!handled) return fail(handled.error());
          if (!*handled) return fail(st.error());
        }
        if (!st) {
          if (kept != k) {
            pieces[kept] = pieces[k];
            pieces[k].counted = false;  // its count moved with it: a failure ends it once
          }
          kept++;
          continue;
        }
      }
      end_writes(volume, std::span<IoPiece>(&pieces[k], 1));
    }
    pieces.resize(kept);
    pos = piece_end;
  }
  return end;
}

namespace {
// Whether plan_discard would FREE some copy of the block at `pos` (a whole
// block, some copy allocated): the control round trips a loop must not wait on.
bool frees_a_copy(const Volume& volume, uint64_t pos, uint64_t end) {
  if (!covers_whole_block(volume, pos, end)) return false;
  const uint64_t block = pos / proto::kBlockSize;
  const Placement& pl = volume.placement();
  for (uint32_t copy = 0; copy < pl.copies; copy++) {
    if (volume.allocated(pl.unit(block, copy))) return true;
  }
  return false;
}
}  // namespace

Result<DiscardStep> plan_discard_step(Volume& volume, DiscardPlan& plan, void* request, std::vector<IoPiece>& pieces,
                                      BlockMapper* mapper) {
  if (plan.parked) {
    // A worker planned [from, parked_end), or part of it.
    plan.parked = false;
    if (!plan.error) return plan.error.error();
    const bool held = plan.worked_to == plan.from;
    plan.from = plan.worked_to;
    if (held) return DiscardStep::kHeld;
  }
  while (plan.from < plan.end) {
    // The blocks before the next one to free: no round trip.
    uint64_t inline_end = plan.from;
    while (inline_end < plan.end && !frees_a_copy(volume, inline_end, plan.end)) {
      inline_end = std::min(plan.end, (inline_end / proto::kBlockSize + 1) * proto::kBlockSize);
    }
    if (inline_end > plan.from) {
      auto planned = plan_discard(volume, plan.from, inline_end - plan.from, plan.zeros, request, pieces);
      if (!planned) return planned.error();
      const bool held = *planned != inline_end;
      plan.from = *planned;
      if (held) return DiscardStep::kHeld;
      continue;
    }
    const uint64_t block_end = plan.from + proto::kBlockSize;
    plan.parked_end = block_end;
    plan.worked_to = plan.from;
    plan.error = Status::Ok();
    plan.parked = true;
    if (mapper != nullptr && mapper->park_discard(request, plan, pieces)) return DiscardStep::kParked;
    plan.parked = false;
    auto planned = plan_discard(volume, plan.from, block_end - plan.from, plan.zeros, request, pieces);
    if (!planned) return planned.error();
    const bool held = *planned != block_end;
    plan.from = *planned;
    if (held) return DiscardStep::kHeld;
  }
  return DiscardStep::kPlanned;
}

void bricks_of_range(const Volume& volume, uint64_t offset, uint64_t len, std::vector<uint8_t>& bricks) {
  const Placement& pl = volume.placement();
  bricks.assign(volume.brick_count(), 0);
  if (len == 0) return;
  uint32_t marked = 0;
  const uint64_t last = (offset + len - 1) / proto::kBlockSize;
  for (uint64_t block = offset / proto::kBlockSize; block <= last && marked < bricks.size(); block++) {
    for (uint32_t j = 0; j < pl.copies; j++) {
      uint8_t& b = bricks[pl.brick_of(pl.unit(block, j))];
      if (b == 0) marked++;
      b = 1;
    }
  }
}

namespace {
Result<size_t> queue_pieces(Volume& volume, std::span<IoPiece> pieces, PieceSink& sink,
                            void (*done)(DataChannel::Op* op, int status), size_t max, BlockMapper* mapper);
}  // namespace

Result<size_t> queue_round(Volume& volume, std::span<IoPiece> pieces, PieceSink& sink,
                           void (*done)(DataChannel::Op* op, int status), size_t max, BlockMapper* mapper) {
  // First every piece of the round gets its handle (or its zeros), then the
  // round is sent: a request that waits for a mapping sends nothing meanwhile.
  // A mirror's writes count on their blocks first, before any copy is
  // skipped as stale (mirror.h: a resync must see them).
  if (begin_writes(volume, pieces)) {
    // A resync copies a block this request writes: nothing is sent; the
    // request waits a moment (Fate::kWait) and starts again.
    for (IoPiece& p : pieces) {
      if (p.status != 0) p.status = kErrHeld;
    }
    return 0;
  }
  Result<size_t> queued = queue_pieces(volume, pieces, sink, done, max, mapper);
  // Failed: the request is over. Nothing sent is not enough: a piece may
  // wait for its brick (ETIMEDOUT) after others landed, and the request stays
  // counted until IoRetry::settle says it completed or failed.
  if (!queued) end_writes(volume, pieces);
  return queued;
}

namespace {

Result<size_t> queue_pieces(Volume& volume, std::span<IoPiece> pieces, PieceSink& sink,
                            void (*done)(DataChannel::Op* op, int status), size_t max, BlockMapper* mapper) {
  size_t round = 0;
  for (IoPiece& p : pieces) {
    if (p.status == 0) continue;
    if (round == max) {
      p.status = -1;  // the next round's
      continue;
    }
    auto stale = skip_stale_copy(volume, p);  // mirror: a stale copy's miss is recorded, not sent
    if (!stale) {
      note_failed_writes(volume, pieces);
      return stale.error();
    }
    if (*stale) continue;
    uint32_t moves = 0;  // mirror: a read whose copy could not be mapped tries the others
  resolve:
    // Never written: zeros, no round trip. Not on a read-only attachment,
    // whose map is the one it learned at attach (its writer may have written
    // the block since): map_block asks the brick, and its ENOENT is zeros.
    const bool unallocated = !volume.allocated(p.block);
    if (!p.is_write && unallocated && !volume.options().read_only) {
      std::memset(p.buf, 0, p.len);
      p.status = 0;
      continue;
    }
    auto h = volume.cached(p.block);
    if (!h) {
      // A mirror maps here, not on the mapper's workers: a copy whose mapping
      // fails must be marked stale and the piece moved to another copy
      // (leg_failed below), which the mapper's all-or-nothing outcome per
      // request cannot do.
      // (Not a read-only attachment's block it does not know allocated: the
      // mapper's ENOENT would only send the piece here again.)
      if (mapper != nullptr && volume.copies() == 1 && !(unallocated && volume.options().read_only) &&
          mapper->park(p.request, p.block, p.is_write)) {
        return kWaitingForMap;
      }
      const MirrorState* mirror = volume.mirror();
      if (mirror != nullptr && mirror->unreachable_for(p.brick, std::chrono::milliseconds(volume.options().leg_timeout_ms))) {
        // Its brick has been unreachable for the leg timeout already: no
        // mapping attempt, which would block this thread that long again. A
        // read tries another copy; else the piece waits like one whose
        // connection is lost (IoRetry: a write's copy is given up, the last
        // copy waited for until the I/O timeout) and the resync thread's
        // probe tells when the brick is back.
        if (!p.is_write && moves < volume.copies()) {
          auto other = read_elsewhere(volume, p.block);
          if (other && *other) {
            p.block = volume.placement().unit(volume.placement().block_of(p.block), **other);
            p.brick = volume.placement().brick_of(p.block);
            moves++;
            goto resolve;
          }
        }
        p.status = ETIMEDOUT;
        continue;
      }
      auto mapped = volume.map_block(p.block, p.is_write);
      if (!mapped) {
        if (!p.is_write && mapped.error().errnum() == ENOENT) {
          std::memset(p.buf, 0, p.len);
          p.status = 0;
          continue;
        }
        if (mapped.error().errnum() == EIO || is_connection_error(mapped.error().errnum())) {
          auto handled =
              moves < volume.copies() ? leg_failed(volume, p, mapped.error().errnum()) : Result<bool>(false);
          if (handled && *handled) {
            if (p.is_write) continue;  // the copy is stale now, the miss recorded
            moves++;
            goto resolve;  // the read, on another copy
          }
          if (!handled) {
            note_failed_writes(volume, pieces);
            return handled.error();
          }
          if (volume.mirror() != nullptr && !volume.mirror()->reachable(p.brick)) {
            // The last copy that can take the piece, unreachable for the leg
            // timeout: waited for like a lost connection (IoRetry), up to the
            // I/O timeout, as in any layout.
            p.status = ETIMEDOUT;
            continue;
          }
        }
        note_failed_writes(volume, pieces);
        return mapped.error();
      }
      h = *mapped;
    }
    p.op = DataChannel::Op{};
    p.op.opcode = p.is_write ? proto::Opcode::kWrite : proto::Opcode::kRead;
    p.op.rkey = h->rkey;
    p.op.remote_addr = h->remote_addr + p.in_block;
    p.op.length = p.len;
    p.op.buf = p.buf;
    p.op.ctx = &p;
    p.op.done = done;
    p.status = -1;
    round++;
  }
  // The round's pieces are the first `round` still to do (a piece left
  // waiting for its unreachable brick carries that status instead).
  size_t queued = 0;
  for (IoPiece& p : pieces) {
    if (queued == round) break;
    if (p.status != -1) continue;
    sink.push(p.brick, &p.op);
    queued++;
  }
  return queued;
}

}  // namespace

void IoRetry::start(std::chrono::milliseconds timeout) {
  started_ = IoClock::now();
  timeout_ = timeout;
  deadline_ = started_ + timeout;
  backoff_ = kFirstBackoff;
}

IoRetry::Step IoRetry::settle(Volume& volume, std::span<IoPiece> pieces, std::string_view what) {
  bool again = false;    // a piece must be sent again (its mapping died)
  bool pending = false;  // pieces beyond the last round: not sent yet
  bool held = false;
  int lost = 0;
  uint32_t lost_brick = 0;
  // Mirror: the piece's copy given up (leg_failed). Empty when it was not
  // (the piece fails or waits as in any layout); false when the labels could
  // not record it (the request fails, error_ set); true when it goes on.
  auto give_up_copy = [&](IoPiece& p) -> std::optional<bool> {
    auto handled = leg_failed(volume, p);
    if (!handled) {
      error_ = handled.error();
      note_failed_writes(volume, pieces);
      end_writes(volume, pieces);
      return false;
    }
    if (!*handled) return std::nullopt;
    if (p.status == -1) again = true;
    return true;
  };
  for (IoPiece& p : pieces) {
    if (p.status == 0) continue;
    if (p.status == -1) {
      // Beyond the last round's pieces. A request that is still moving (a
      // large WRITE_ZEROES takes many rounds behind a slow link) is not
      // timed out: the deadline is for waiting on an unreachable brick.
      pending = true;
      continue;
    }
    switch (fate_of(p.status)) {
      case Fate::kDone:
        break;
      case Fate::kRemap:
        volume.invalidate(p.block, p.op.rkey);  // the mapping died: map again
        p.status = -1;
        again = true;
        break;
      case Fate::kWait:
        p.status = -1;
        held = true;
        break;
      case Fate::kReconnect: {
        // Mirror: a read goes to another copy at once (and later reads
        // leave the brick alone until it is reachable again); a write's
        // copy is left behind (stale) once its brick failed for the leg
        // timeout.
        if (volume.mirror() != nullptr) volume.note_reachable(p.brick, false);
        const auto leg_timeout = std::chrono::milliseconds(volume.options().leg_timeout_ms);
        if (volume.mirror() != nullptr &&
            (!p.is_write || !volume.mirror()->in_sync(p.brick) || IoClock::now() - started_ >= leg_timeout ||
             volume.mirror()->unreachable_for(p.brick, leg_timeout))) {
          auto given_up = give_up_copy(p);
          if (given_up && !*given_up) return Step::kFail;
          if (given_up) break;
        }
        lost = p.status;
        lost_brick = p.brick;
        p.status = -1;
        break;
      }
      case Fate::kFail:
        if (volume.mirror() != nullptr && p.is_write && (p.status == kErrWrongStore || p.status == EIO)) {
          // Mirror: a write's copy whose brick now serves another store, or
          // failed the op itself, is given up (stale, the block dirty):
          // failing the request after the other copies took the write would
          // leave in-sync copies that differ. (A read's EIO: below.)
          auto given_up = give_up_copy(p);
          if (given_up && !*given_up) return Step::kFail;
          if (given_up) break;
        }
        if (volume.mirror() != nullptr && !p.is_write && p.status == EIO) {
          // Mirror: a READ is a sync point over TCP, and a brick answers one
          // with EIO only when it could not make its writes durable: that
          // copy is given up whole, as a FLUSH's failed sync gives it up,
          // and the read goes to another copy. The last copy of some block
          // is not given up, and the read fails (so it never spins between
          // copies that all fail).
          auto given_up = volume.sync_failed(p.brick, EIO);
          if (!given_up) {
            PBRICK_LOG_ERROR("brick %s: %s", volume.brick_name(p.brick).c_str(), given_up.error().message().c_str());
          } else if (*given_up) {
            auto moved = give_up_copy(p);
            if (moved && !*moved) return Step::kFail;
            if (moved) break;
          }
        }
        error_ = io_error(volume, p.brick, p.status,
                          std::string(what) + " of " + std::to_string(p.len) + " bytes in block " +
                              std::to_string(volume.placement().block_of(p.block)));
        note_failed_writes(volume, pieces);
        end_writes(volume, pieces);
        return Step::kFail;
    }
  }
  Step step = Step::kDone;
  if (lost != 0) {
    step = later(volume, lost_brick, lost, what);
  } else if (held) {
    wait_held();
    step = Step::kLater;
  } else if (again) {
    step = IoClock::now() >= deadline_ ? later(volume, lost_brick, ETIMEDOUT, what) : Step::kNow;
  } else if (pending) {
    // A round done, more to go: the wait for a brick lost later counts from
    // here, so a large request that keeps moving is not failed at the first
    // reconnect it meets past its arrival's deadline.
    deadline_ = std::max(deadline_, IoClock::now() + timeout_);
    step = Step::kNow;
  }
  if (step == Step::kFail) note_failed_writes(volume, pieces);
  if (step == Step::kDone || step == Step::kFail) end_writes(volume, pieces);
  return step;
}

void IoRetry::wait_held() {
  retry_at_ = IoClock::now() + kHeldWait;  // a block copy takes milliseconds; no backoff, no deadline
}

IoRetry::Step IoRetry::settle_sync(Volume& volume, int status, uint32_t brick, std::string_view what) {
  switch (fate_of(status)) {
    case Fate::kDone:
      return Step::kDone;
    case Fate::kReconnect: {
      MirrorState* mirror = volume.mirror();
      const auto leg_timeout = std::chrono::milliseconds(volume.options().leg_timeout_ms);
      if (mirror != nullptr) volume.note_reachable(brick, false);
      if (mirror != nullptr && mirror->in_sync(brick) && mirror->may_lose(volume.placement(), brick) &&
          (IoClock::now() - started_ >= leg_timeout || mirror->unreachable_for(brick, leg_timeout))) {
        // What it acknowledged and has not synced is still on it unless its
        // host rebooted, which a reconnect notices (lost_writes).
        Status st = volume.mark_stale(brick);
        if (st) return Step::kNow;
        PBRICK_LOG_WARN("%s", st.error().message().c_str());
      }
      return later(volume, brick, status, what);
    }
    case Fate::kRemap:
    case Fate::kWait:  // never a sync's status
    case Fate::kFail:
      break;
  }
  error_ = io_error(volume, brick, status, what);
  return Step::kFail;
}

// A brick was unreachable: again after the backoff, the last attempt at the
// deadline (not a backoff step before it), then EIO.
IoRetry::Step IoRetry::later(const Volume& volume, uint32_t brick, int status, std::string_view what) {
  auto now = IoClock::now();
  if (now >= deadline_) {
    error_ = Error(EIO, std::string(what) + ": brick " + volume.brick_name(brick) + " unreachable for " +
                            std::to_string(volume.options().io_timeout_ms) + " ms (last error: " +
                            std::strerror(status) + ")");
    return Step::kFail;
  }
  retry_at_ = std::min(now + backoff_, deadline_);
  backoff_ = std::min(backoff_ * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxBackoff));
  return Step::kLater;
}

// One brick's connection, with the ops waiting for it and its write tracking.
struct VolumeChannels::LinkRing final : ChannelRing {
  VolumeChannels* owner = nullptr;
  uint32_t brick = 0;

  uint64_t user_data(uint8_t event) const {
    return Uring::pack(owner->channel_kind_, (uint64_t{brick} << 8) | event);
  }
  io_uring_sqe* channel_sqe(uint8_t event) override { return owner->ring_.sqe(user_data(event)); }
  void cancel_channel_sqe(uint8_t event) override {
    owner->ring_.cancel(Uring::pack(owner->cancel_kind_, 0), user_data(event));
  }
};

struct VolumeChannels::Link {
  std::unique_ptr<DataChannel> channel;
  ChannelBacklog backlog;
  LinkRing ring;
  IoClock::time_point last_connect_attempt{};
  uint64_t epoch = 0;  // Volume::brick_epoch this link last saw
  // WRITEs pushed, and the count the last completed sync covered: the brick
  // needs a sync while they differ. Written by the loop, read by any thread.
  // One is owed from the start (SyncLedger): the first FLUSH reaches every
  // brick, covering what an earlier process may have left unsynced there.
  std::atomic<uint64_t> writes{1};
  std::atomic<uint64_t> synced{0};
  // Volume::write_failures of the brick that the last completed sync saw:
  // while they differ, a sync goes to the brick anyway (see volume.h).
  std::atomic<uint64_t> failures_synced{0};
  std::atomic<uint64_t> syncs_sent{0};
  std::atomic<uint64_t> syncs_chained{0};
  // The sync chained behind a lone WRITE (push), at most one in flight; its
  // completion moves `synced` like a FLUSH's would. The write completes on
  // its own; a FLUSH that comes while the chained sync is still on its way
  // and covers every write so far waits for it (chained_waiters, linked
  // through SyncJob::Part::next) instead of sending another.
  SyncChaining chaining;
  SyncJob::Part chained;
  bool chained_inflight = false;
  SyncJob::Part* chained_waiters = nullptr;

  bool needs_sync(const Volume& volume) const {
    // A mirror's stale copy is synced by its resync, not by FLUSH: the
    // writes it missed are in the in-sync bricks' dirty bitmaps. A
    // resyncing one is synced (what a FLUSH covered stays durable on it
    // once it is in sync), but its failure fails no FLUSH (sync_part_done).
    if (volume.mirror() != nullptr && volume.mirror()->state(ring.brick) == CopyState::kStale) return false;
    return writes.load(std::memory_order_acquire) != synced.load(std::memory_order_acquire) ||
           volume.write_failures(ring.brick) != failures_synced.load(std::memory_order_acquire);
  }
};

VolumeChannels::VolumeChannels(Volume& volume, uint32_t depth, Uring& ring, uint8_t channel_kind,
                               uint8_t cancel_kind, std::string label, const ChannelFactory& make_channel)
    : volume_(volume),
      channel_id_(volume.new_channel_id()),
      ring_(ring),
      channel_kind_(channel_kind), cancel_kind_(cancel_kind), label_(std::move(label)) {
  for (uint32_t b = 0; b < volume.brick_count(); b++) {
    auto link = std::make_unique<Link>();
    link->channel =
        make_channel ? make_channel(b, depth) : DataChannel::Create(volume.brick_options(b).transport, depth);
    link->ring.owner = this;
    link->ring.brick = b;
    links_.push_back(std::move(link));
  }
}

VolumeChannels::~VolumeChannels() = default;

Status VolumeChannels::add_buffer_region(uint8_t* base, size_t len) {
  for (auto& link : links_) PBRICK_TRY(link->channel->add_buffer_region(base, len));
  return Status::Ok();
}

Status VolumeChannels::connect() {
  for (uint32_t b = 0; b < links_.size(); b++) {
    if (volume_.mirror() != nullptr && !volume_.mirror()->in_sync(b)) continue;  // a stale copy gets no I/O
    Status st = volume_.connect_channel(*links_[b]->channel, b, channel_id_);
    if (!st) return links_.size() == 1 ? st.error() : st.error().wrap("brick " + volume_.brick_name(b));
  }
  return Status::Ok();
}

void VolumeChannels::reserve(size_t n) {
  for (auto& link : links_) link->backlog.reserve(n);
}

void VolumeChannels::set_send_inline(bool on) {
  for (auto& link : links_) link->channel->set_send_inline(on);
}

void VolumeChannels::push(uint32_t brick, DataChannel::Op* op) {
  Link& link = *links_[brick];
  if (op->opcode != proto::Opcode::kWrite) return link.backlog.push(op, false);
  uint64_t writes = link.writes.fetch_add(1, std::memory_order_release) + 1;
  bool lone = volume_.options().chain_syncs && !link.chained_inflight && link.backlog.empty() &&
              link.channel->inflight() == 0 && link.channel->connected();
  bool chain = link.chaining.chain(lone, link.channel->sync_is_one_sided(), volume_.sync_requests(), writes);
  link.backlog.push(op, false);
  if (!chain) return;
  // Right behind the write, in order on the same queue pair or connection (a
  // sync-read in the same doorbell, over TCP in the same sendmsg): when it
  // completes, every write pushed so far (this one and all before, on this
  // connection or one lost since) is durable, as after a FLUSH's sync.
  SyncJob::Part& part = link.chained;
  part.job = nullptr;
  part.channels = this;
  part.brick = brick;
  part.covers = writes;
  part.op = DataChannel::Op{};
  part.op.buf = &part.scratch;
  part.op.ctx = &part;
  part.op.done = chained_sync_done;
  part.op.chained = true;
  link.chained_inflight = true;
  link.syncs_chained.fetch_add(1, std::memory_order_relaxed);
  link.backlog.push(&part.op, true);
}

// A chained sync's failure is nobody's error: the write reports its own, and
// the FLUSH parts that waited for it send their own sync now, which meets
// whatever made it fail (a lost connection, writes lost to a reboot: EIO)
// under the usual rules.
void VolumeChannels::chained_sync_done(DataChannel::Op* op, int status) {
  auto* part = static_cast<SyncJob::Part*>(op->ctx);
  Link& link = *part->channels->links_[part->brick];
  link.chained_inflight = false;
  if (status == 0 && part->covers > link.synced.load(std::memory_order_relaxed)) {
    link.synced.store(part->covers, std::memory_order_release);
  }
  SyncJob::Part* waiter = link.chained_waiters;
  link.chained_waiters = nullptr;
  while (waiter != nullptr) {
    SyncJob::Part* next = waiter->next;
    waiter->next = nullptr;
    if (status == 0) {
      sync_part_done(&waiter->op, 0);
    } else {
      link.syncs_sent.fetch_add(1, std::memory_order_relaxed);
      link.backlog.push(&waiter->op, true);
    }
    waiter = next;
  }
}

bool VolumeChannels::needs_sync() const {
  for (const auto& link : links_) {
    if (link->needs_sync(volume_)) return true;
  }
  return false;
}

uint64_t VolumeChannels::syncs_sent(uint32_t brick) const {
  return links_[brick]->syncs_sent.load(std::memory_order_relaxed);
}

uint64_t VolumeChannels::syncs_chained() const {
  uint64_t n = 0;
  for (const auto& link : links_) n += link->syncs_chained.load(std::memory_order_relaxed);
  return n;
}

bool VolumeChannels::busy() const {
  for (const auto& link : links_) {
    if (!link->backlog.empty() || link->channel->inflight() > 0) return true;
  }
  return false;
}

void VolumeChannels::sync(SyncJob& job) {
  if (job.parts.size() < links_.size()) job.parts.resize(links_.size());
  job.status = 0;
  job.brick = 0;
  job.pending = 0;
  for (uint32_t b = 0; b < links_.size(); b++) {
    Link& link = *links_[b];
    if (!job.bricks.empty() && job.bricks[b] == 0) continue;
    if (!link.needs_sync(volume_)) continue;
    uint64_t writes = link.writes.load(std::memory_order_relaxed);
    SyncJob::Part& part = job.parts[b];
    part.job = &job;
    part.channels = this;
    part.brick = b;
    part.covers = writes;
    part.failures = volume_.write_failures(b);
    part.op = DataChannel::Op{};
    part.op.buf = &part.scratch;
    part.op.ctx = &part;
    part.op.done = sync_part_done;
    job.pending++;
    if (link.chained_inflight && link.chained.covers == writes &&
        part.failures == link.failures_synced.load(std::memory_order_relaxed)) {
      // The sync chained to the last write is on its way and covers every
      // write: this part completes with it.
      part.next = link.chained_waiters;
      link.chained_waiters = &part;
      continue;
    }
    link.syncs_sent.fetch_add(1, std::memory_order_relaxed);
    link.backlog.push(&part.op, true);
  }
  if (job.pending == 0) job.done(&job);
}

void VolumeChannels::sync_part_done(DataChannel::Op* op, int status) {
  auto* part = static_cast<SyncJob::Part*>(op->ctx);
  SyncJob& job = *part->job;
  Volume& volume = part->channels->volume_;
  if (status == EIO && volume.mirror() != nullptr) {
    // The brick could not make its writes durable: that copy is given up
    // (all of it copied again later) and the FLUSH completes on the others;
    // the last copy of some block cannot be, and the FLUSH fails.
    auto given_up = volume.sync_failed(part->brick, status);
    if (!given_up) {
      PBRICK_LOG_ERROR("%s: brick %s: %s", part->channels->label_.c_str(), volume.brick_name(part->brick).c_str(),
                       given_up.error().message().c_str());
    } else if (*given_up) {
      status = 0;
    }
  }
  if (status != 0 && volume.mirror() != nullptr && !volume.mirror()->in_sync(part->brick)) {
    // A copy not in sync holds nothing a FLUSH promises: it goes (back) to
    // stale and the FLUSH completes on the others.
    // (In sync again meanwhile, its resync finished: the failure is an
    // in-sync copy's, and the FLUSH does not complete on the others alone.)
    if (volume.abort_resync(part->brick, std::string("a sync failed: ") + std::strerror(status))) status = 0;
  }
  if (status == 0) {
    // Every WRITE pushed before the sync is durable now; what was pushed
    // since still needs a sync.
    Link& link = *part->channels->links_[part->brick];
    uint64_t synced = link.synced.load(std::memory_order_relaxed);
    if (part->covers > synced) link.synced.store(part->covers, std::memory_order_release);
    if (part->failures > link.failures_synced.load(std::memory_order_relaxed)) {
      link.failures_synced.store(part->failures, std::memory_order_release);
    }
  } else if (job.status == 0 || fate_of(job.status) != Fate::kFail) {
    job.status = status;
    job.brick = part->brick;
  }
  if (--job.pending == 0) job.done(&job);
}

void VolumeChannels::teardown(Link& link, const Error& why) {
  if (!link.channel->connected() || link.channel->tearing_down()) return;
  if (why.errnum() != ESHUTDOWN) {
    PBRICK_LOG_WARN("%s: connection to brick %s lost: %s", label_.c_str(), volume_.brick_name(link.ring.brick).c_str(),
                    why.message().c_str());
  }
  const bool unanswered = link.channel->inflight() > 0;
  // A reply that made no sense (EPROTO) says nothing against the requests:
  // they are sent again on a new connection, as after a reset.
  link.channel->teardown(why.errnum() == EPROTO ? ECONNRESET : why.errnum());
  // Given up by the gateway (no reply in time, a reply that makes no sense)
  // with requests unanswered: the brick may still execute them (frames it
  // holds behind a sync point; closing stops nothing, docs/protocol.md 7.9).
  // Their requests may fail now, at their deadline, with nothing sent again
  // on this link to FENCE it; a newer write of the same range then goes out
  // on another queue's connection and could be overtaken. Under a new writer
  // id every link to the brick reconnects first, and the first FENCE cuts
  // this one off. Not for a connection the brick closed or reset, nor one
  // whose RDMA queue pair failed (a remote access error stops the brick's
  // end too): nothing of it runs on there.
  const bool given_up = why.errnum() == ETIMEDOUT || why.errnum() == EPROTO;
  if (unanswered && given_up && !volume_.options().read_only) {
    Status st = volume_.new_writer(link.ring.brick);
    if (!st) PBRICK_LOG_ERROR("%s: brick %s: %s", label_.c_str(), volume_.brick_name(link.ring.brick).c_str(),
                              st.error().message().c_str());
  }
}

void VolumeChannels::dispatch() {
  for (auto& lp : links_) {
    Link& link = *lp;
    if (uint64_t epoch = volume_.brick_epoch(link.ring.brick); epoch != link.epoch) {
      // The brick was replaced (this connection reaches the old one), or a
      // resync begins there (the connection is under the old writer id).
      link.epoch = epoch;
      teardown(link, Error(ESHUTDOWN, "brick replaced or resyncing"));
    }
    Status st = link.channel->flush(link.ring);  // completes a finished teardown
    if (!st) teardown(link, st.error());
    if (!link.backlog.empty() && !link.channel->connected()) {
      auto now = IoClock::now();
      if (now - link.last_connect_attempt >= kReconnectInterval) {
        link.last_connect_attempt = now;
        st = volume_.connect_channel(*link.channel, link.ring.brick, channel_id_);
        if (st.ok()) {
          PBRICK_LOG_NOTICE("%s: reconnected to brick %s", label_.c_str(), volume_.brick_name(link.ring.brick).c_str());
          if (volume_.mirror() != nullptr && link.channel->writes_maybe_lost()) {
            // Its host rebooted under our unsynced writes: that copy goes
            // stale (whole), and what waits for it goes to the other copies.
            Status lost = volume_.lost_writes(link.ring.brick, link.channel->boot_id());
            if (!lost) PBRICK_LOG_ERROR("%s: %s", label_.c_str(), lost.error().message().c_str());
            if (lost) {
              link.channel->forget_lost_writes();  // the resync answers for them, not an EIO
              link.backlog.fail_all(ECONNRESET);
            }
          }
          if (volume_.mirror() != nullptr) {
            // Its host may have rebooted under writes another loop's
            // connection holds unsynced: that one may reconnect much later,
            // and meanwhile reads here must not take its copy for current.
            auto given_up = volume_.check_boot(link.ring.brick, link.channel->boot_id());
            if (!given_up) PBRICK_LOG_ERROR("%s: %s", label_.c_str(), given_up.error().message().c_str());
            if (given_up && *given_up) link.backlog.fail_all(ECONNRESET);  // planned again, on the other copies
          }
          if (link.channel->writes_maybe_lost()) volume_.note_writes_lost();
        } else {
          // The waiting ops' requests retry until their deadline, unless the
          // brick serves another store: no retry makes it ours.
          int err = st.error().errnum();
          link.backlog.fail_all(is_connection_error(err) || err == kErrWrongStore ? err : ENOTCONN);
        }
      }
      // Otherwise the ops wait for the next attempt.
    }
    link.backlog.feed(*link.channel);
    // Hands what was just queued to the transport in one batch.
    st = link.channel->flush(link.ring);
    if (!st) teardown(link, st.error());
  }
}

void VolumeChannels::on_cqe(uint64_t payload, int res) {
  uint32_t brick = static_cast<uint32_t>(payload >> 8);
  if (brick >= links_.size()) return;
  Link& link = *links_[brick];
  Status st = link.channel->on_cqe(static_cast<uint8_t>(payload & 0xFF), res);
  if (!st) teardown(link, st.error());
}

void VolumeChannels::on_tick() {
  // A mirror's copy that does not answer is given up after the leg timeout
  // when the others can go on without it; one they cannot spare (the last
  // reachable copy of some block) is slow, not gone: tearing its connection
  // down would only make every request start over on it.
  const MirrorState* mirror = volume_.mirror();
  const auto io_timeout = std::chrono::milliseconds(volume_.options().io_timeout_ms);
  const auto leg_timeout = std::chrono::milliseconds(volume_.options().leg_timeout_ms);
  auto now = IoClock::now();
  for (auto& link : links_) {
    DataChannel& c = *link->channel;
    auto timeout = mirror != nullptr && mirror->may_spare(volume_.placement(), link->ring.brick) ? leg_timeout
                                                                                                : io_timeout;
    if (c.connected() && c.inflight() > 0 && now - c.last_progress() > timeout) {
      teardown(*link, Error(ETIMEDOUT, "no reply within " + std::to_string(timeout.count()) + " ms"));
    }
  }
}

void VolumeChannels::stop() {
  for (auto& link : links_) {
    teardown(*link, Error(ESHUTDOWN, "stopping"));
    link->channel->stop(link->ring);
  }
}

void VolumeChannels::finish(int status) {
  for (auto& link : links_) {
    link->backlog.fail_all(status);
    link->channel->disconnect(status);
    // FLUSH parts that waited for a chained sync came back to the backlog.
    link->backlog.fail_all(status);
  }
}

}  // namespace pbrick
