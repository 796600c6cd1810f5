#include "gateway/engine.h"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <span>
#include <thread>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/units.h"
#include "common/uring.h"
#include "gateway/data_channel.h"
#include "gateway/retry.h"

namespace pbrick {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxPieces = Engine::kMaxRequest / proto::kBlockSize + 1;
constexpr long long kTickNanos = 200ll * 1000 * 1000;

// user_data of the loop's SQEs: the operation kind in bits 0..7; for the
// channel's own SQEs (kChannel) its event number in bits 8..15.
enum class LoopOp : uint64_t { kEvent = 1, kChannel, kTick, kCancel };

// Per caller thread: the pieces of its one outstanding request and the count
// of those still in flight. Thread-local, so it outlives every completion that
// touches it (a request's own stack frame would not), and nothing is allocated
// per request.
struct Piece {
  DataChannel::Op op;
  std::atomic<uint32_t>* pending = nullptr;
  int status = 0;
  uint64_t block = 0;
};

struct Waiter {
  std::atomic<uint32_t> pending{0};
  Piece pieces[kMaxPieces];
  DataChannel::Op* batch[kMaxPieces];
  // A FLUSH's sync on each loop: grown on this thread's first flush of an
  // engine with more loops than before, so steady state allocates nothing.
  std::vector<Piece> syncs;
  uint8_t sync_scratch = 0;
};

thread_local Waiter t_waiter;

void piece_done(DataChannel::Op* op, int status) {
  Piece* p = static_cast<Piece*>(op->ctx);
  p->status = status;
  if (p->pending->fetch_sub(1, std::memory_order_acq_rel) == 1) p->pending->notify_one();
}

void wait_for(std::atomic<uint32_t>& pending) {
  for (uint32_t v = pending.load(std::memory_order_acquire); v != 0; v = pending.load(std::memory_order_acquire)) {
    pending.wait(v, std::memory_order_acquire);
  }
}

}  // namespace

// One event loop: a thread, an io_uring, and one DataChannel to the brick.
class Engine::Loop final : public ChannelRing {
 public:
  Loop(Volume& volume, uint32_t depth, uint32_t index)
      : volume_(volume), channel_(DataChannel::Create(volume.options().brick.transport, depth)), index_(index) {
    incoming_.reserve(4 * depth);
    taken_.reserve(4 * depth);
    backlog_.reserve(4 * depth);
  }

  ~Loop() { stop(); }

  Status start() {
    event_fd_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!event_fd_.valid()) return errno_error("eventfd");
    int err = init_event_ring(256, &ring_);
    if (err < 0) return Error(-err, "io_uring_queue_init");
    ring_ready_ = true;
    PBRICK_TRY(volume_.connect_channel(*channel_));
    thread_ = std::thread([this] { run(); });
    return Status::Ok();
  }

  void stop() {
    if (thread_.joinable()) {
      stopping_.store(true, std::memory_order_release);
      wake();
      thread_.join();
    }
    if (ring_ready_) {
      io_uring_queue_exit(&ring_);
      ring_ready_ = false;
    }
  }

  // From caller threads: queue ops (sync marks a sync request) and wake the loop.
  void submit(DataChannel::Op** ops, size_t n, bool sync) {
    bool need_wake;
    {
      std::lock_guard lock(mu_);
      for (size_t i = 0; i < n; i++) incoming_.push_back({ops[i], sync});
      // One eventfd write per batch the loop takes, not one per caller: a
      // wake already on its way will make the loop take this batch too.
      need_wake = !wake_pending_;
      wake_pending_ = true;
    }
    if (need_wake) wake();
  }

 private:
  struct Pending {
    DataChannel::Op* op;
    bool sync;
  };

  void wake() {
    uint64_t one = 1;
    ssize_t ignored = ::write(event_fd_.get(), &one, sizeof one);
    (void)ignored;
  }

  io_uring_sqe* sqe(LoopOp kind, uint8_t event = 0) {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    while (s == nullptr) {
      io_uring_submit(&ring_);
      s = io_uring_get_sqe(&ring_);
    }
    io_uring_sqe_set_data64(s, static_cast<uint64_t>(kind) | (uint64_t{event} << 8));
    sqes_inflight_++;
    return s;
  }

  io_uring_sqe* channel_sqe(uint8_t event) override { return sqe(LoopOp::kChannel, event); }
  void cancel_channel_sqe(uint8_t event) override {
    io_uring_prep_cancel64(sqe(LoopOp::kCancel), static_cast<uint64_t>(LoopOp::kChannel) | (uint64_t{event} << 8), 0);
  }

  void teardown(const Error& why) {
    if (!channel_->connected() || channel_->tearing_down()) return;
    if (why.errnum() != ESHUTDOWN) {
      PBRICK_LOG_WARN("queue %u: connection to brick %s lost: %s", index_,
                      volume_.options().brick.endpoint.to_string().c_str(), why.message().c_str());
    }
    channel_->teardown(why.errnum());
  }

  void fail(const Pending& p, int status) { p.op->done(p.op, status); }

  void dispatch() {
    Status flushed = channel_->flush(*this);  // completes a finished teardown
    if (!flushed) teardown(flushed.error());
    for (const Pending& p : taken_) backlog_.push(p.op, p.sync);
    taken_.clear();
    if (!backlog_.empty() && !channel_->connected()) {
      // Reconnect, at most every 100 ms; meanwhile fail fast and let the
      // callers retry until their deadline. A brick that serves another
      // store fails them with kErrWrongStore: no retry makes it ours.
      auto now = Clock::now();
      Status st = Error(ECONNREFUSED, "reconnect pending");
      if (now - last_connect_attempt_ >= std::chrono::milliseconds(100)) {
        last_connect_attempt_ = now;
        st = volume_.connect_channel(*channel_);
        if (st.ok()) {
          PBRICK_LOG_NOTICE("queue %u: reconnected to brick %s", index_,
                            volume_.options().brick.endpoint.to_string().c_str());
        }
      }
      if (!st.ok()) {
        int err = st.error().errnum();
        backlog_.fail_all(is_connection_error(err) || err == kErrWrongStore ? err : ECONNREFUSED);
      }
    }
    backlog_.feed(*channel_);
    // Hands what was just queued to the transport in one batch.
    flushed = channel_->flush(*this);
    if (!flushed) teardown(flushed.error());
  }

  void arm_event() {
    io_uring_prep_read(sqe(LoopOp::kEvent), event_fd_.get(), &event_buf_, sizeof event_buf_, 0);
  }

  void arm_tick() {
    tick_ts_.tv_sec = 0;
    tick_ts_.tv_nsec = kTickNanos;
    io_uring_prep_timeout(sqe(LoopOp::kTick), &tick_ts_, 0, 0);
  }

  void on_cqe(io_uring_cqe* cqe) {
    sqes_inflight_--;
    int res = cqe->res;
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    switch (static_cast<LoopOp>(ud & 0xFF)) {
      case LoopOp::kEvent: {
        std::lock_guard lock(mu_);
        taken_.swap(incoming_);
        wake_pending_ = false;
        if (!stopping_.load(std::memory_order_acquire)) arm_event();
        break;
      }
      case LoopOp::kChannel: {
        Status st = channel_->on_cqe(static_cast<uint8_t>(ud >> 8), res);
        if (!st) teardown(st.error());
        break;
      }
      case LoopOp::kTick:
        if (!stopping_.load(std::memory_order_acquire)) {
          auto timeout = std::chrono::milliseconds(volume_.options().io_timeout_ms);
          if (channel_->connected() && channel_->inflight() > 0 &&
              Clock::now() - channel_->last_progress() > timeout) {
            teardown(Error(ETIMEDOUT, "no reply within " + std::to_string(timeout.count()) + " ms"));
          }
          arm_tick();
        }
        break;
      case LoopOp::kCancel:
        break;
    }
  }

  void run() {
    arm_event();
    arm_tick();
    bool cancelled = false;
    while (sqes_inflight_ > 0) {
      if (stopping_.load(std::memory_order_acquire) && !cancelled) {
        cancelled = true;
        teardown(Error(ESHUTDOWN, "stopping"));
        channel_->stop(*this);
        io_uring_prep_cancel64(sqe(LoopOp::kCancel), static_cast<uint64_t>(LoopOp::kTick), 0);
        io_uring_prep_cancel64(sqe(LoopOp::kCancel), static_cast<uint64_t>(LoopOp::kEvent), 0);
      }
      int err = io_uring_submit_and_wait(&ring_, 1);
      if (err < 0 && err != -EINTR) {
        PBRICK_LOG_ERROR("queue %u: io_uring_submit_and_wait: %s", index_, std::strerror(-err));
        break;
      }
      unsigned head, count = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        on_cqe(cqe);
        count++;
      }
      io_uring_cq_advance(&ring_, count);
      dispatch();
    }
    // Whatever is still queued fails: the engine is going away.
    {
      std::lock_guard lock(mu_);
      taken_.insert(taken_.end(), incoming_.begin(), incoming_.end());
      incoming_.clear();
    }
    backlog_.fail_all(ESHUTDOWN);
    for (const Pending& p : taken_) fail(p, ESHUTDOWN);
    taken_.clear();
    channel_->disconnect(ESHUTDOWN);
  }

  Volume& volume_;
  std::unique_ptr<DataChannel> channel_;
  uint32_t index_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  UniqueFd event_fd_;
  io_uring ring_{};
  bool ring_ready_ = false;
  uint64_t event_buf_ = 0;
  __kernel_timespec tick_ts_{};
  uint64_t sqes_inflight_ = 0;
  Clock::time_point last_connect_attempt_{};

  std::mutex mu_;
  std::vector<Pending> incoming_;  // filled by callers under mu_
  bool wake_pending_ = false;      // under mu_: an eventfd write is on its way
  std::vector<Pending> taken_;     // swapped out of incoming_ by the loop
  ChannelBacklog backlog_;         // waiting for a free slot or a connection
};

Engine::Engine(std::unique_ptr<Volume> volume, const EngineOptions& options)
    : volume_(std::move(volume)), options_(options), zeros_(proto::kBlockSize, 0) {}

Engine::~Engine() {
  for (auto& loop : loops_) loop->stop();
}

Result<std::unique_ptr<Engine>> Engine::Start(std::unique_ptr<Volume> volume, const EngineOptions& options) {
  if (options.queues == 0 || options.queues > kMaxQueues) {
    return Error(EINVAL, "queues must be 1.." + std::to_string(kMaxQueues));
  }
  if (options.depth == 0 || options.depth > 4096) return Error(EINVAL, "depth must be 1..4096");
  std::unique_ptr<Engine> engine(new Engine(std::move(volume), options));
  for (uint32_t i = 0; i < options.queues; i++) {
    auto loop = std::make_unique<Loop>(*engine->volume_, options.depth, i);
    Status st = loop->start();
    if (!st) return st.error().wrap("queue " + std::to_string(i));
    engine->loops_.push_back(std::move(loop));
  }
  return engine;
}

Engine::Loop& Engine::my_loop() {
  static std::atomic<uint32_t> next{0};
  thread_local uint32_t mine = next.fetch_add(1, std::memory_order_relaxed);
  return *loops_[mine % loops_.size()];
}

Status Engine::transfer(bool is_write, uint8_t* buf, uint64_t count, uint64_t offset) {
  if (count > kMaxRequest || offset > size() || count > size() - offset) {
    return Error(EINVAL, std::string(is_write ? "write" : "read") + " of " + std::to_string(count) + " bytes at " +
                             std::to_string(offset) + " is outside the volume or too large");
  }
  Waiter& w = t_waiter;
  size_t npieces = 0;
  for (uint64_t done = 0; done < count; npieces++) {
    uint64_t pos = offset + done;
    uint64_t in_block = pos % proto::kBlockSize;
    uint64_t len = std::min<uint64_t>(count - done, proto::kBlockSize - in_block);
    Piece& p = w.pieces[npieces];
    p.block = pos / proto::kBlockSize;
    p.status = -1;  // not done yet
    p.pending = &w.pending;
    p.op.opcode = is_write ? proto::Opcode::kWrite : proto::Opcode::kRead;
    p.op.length = static_cast<uint32_t>(len);
    p.op.buf = buf + done;
    p.op.remote_addr = in_block;  // offset within the block until the handle is known
    p.op.done = piece_done;
    p.op.ctx = &p;
    done += len;
  }

  RetryDeadline retry(std::chrono::milliseconds(volume_->options().io_timeout_ms), std::chrono::milliseconds(20),
                      std::chrono::milliseconds(500));
  Loop& loop = my_loop();
  for (;;) {
    size_t batch = 0;
    for (size_t i = 0; i < npieces; i++) {
      Piece& p = w.pieces[i];
      if (p.status == 0) continue;
      uint64_t in_block = (p.op.buf - buf + offset) % proto::kBlockSize;
      if (!is_write && !volume_->allocated(p.block)) {
        std::memset(p.op.buf, 0, p.op.length);  // never written: zeros, no round trip
        p.status = 0;
        continue;
      }
      auto h = volume_->cached(p.block);
      if (!h) {
        auto mapped = volume_->map_block(p.block, is_write);
        if (!mapped) {
          if (!is_write && mapped.error().errnum() == ENOENT) {
            std::memset(p.op.buf, 0, p.op.length);
            p.status = 0;
            continue;
          }
          return mapped.error();
        }
        h = *mapped;
      }
      p.op.rkey = h->rkey;
      p.op.remote_addr = h->remote_addr + in_block;
      w.batch[batch++] = &p.op;
    }
    if (batch == 0) return Status::Ok();
    w.pending.store(static_cast<uint32_t>(batch), std::memory_order_release);
    loop.submit(w.batch, batch, false);
    wait_for(w.pending);

    bool lost_connection = false;
    for (size_t i = 0; i < npieces; i++) {
      Piece& p = w.pieces[i];
      if (p.status <= 0) continue;
      if (p.status == EKEYREJECTED) {
        // The mapping died (brick restart, discard, reconnect): map again.
        volume_->invalidate(p.block, p.op.rkey);
      } else if (is_connection_error(p.status) || p.status == ESHUTDOWN) {
        lost_connection = true;
      } else {
        return io_error(p.status, std::string(is_write ? "write" : "read") + " at " + std::to_string(offset));
      }
    }
    if (lost_connection && !retry.wait()) {
      return Error(EIO, "brick " + volume_->options().brick.endpoint.to_string() + " unreachable for " +
                            std::to_string(volume_->options().io_timeout_ms) + " ms");
    }
  }
}

Status Engine::read(void* buf, uint64_t count, uint64_t offset) {
  return transfer(false, static_cast<uint8_t*>(buf), count, offset);
}

Status Engine::write(const void* buf, uint64_t count, uint64_t offset, bool fua) {
  // The data path only reads from `buf`; the channel's Op is shared with reads.
  PBRICK_TRY(transfer(true, const_cast<uint8_t*>(static_cast<const uint8_t*>(buf)), count, offset));
  if (fua) return sync_loops(false);
  return Status::Ok();
}

Status Engine::flush() { return sync_loops(true); }

// Sync-read on our own loop (FUA) or on every loop (FLUSH), retrying through
// reconnects: the brick persists what it holds at the sync point, whichever
// connection carried the writes.
Status Engine::sync_loops(bool all) {
  Waiter& w = t_waiter;
  size_t n = all ? loops_.size() : 1;
  if (w.syncs.size() < n) w.syncs.resize(n);
  std::span<Piece> syncs(w.syncs.data(), n);
  for (Piece& p : syncs) p.status = -1;
  RetryDeadline retry(std::chrono::milliseconds(volume_->options().io_timeout_ms), std::chrono::milliseconds(20),
                      std::chrono::milliseconds(500));
  for (;;) {
    uint32_t submitted = 0;
    for (const Piece& p : syncs) submitted += p.status != 0;
    if (submitted == 0) return Status::Ok();
    w.pending.store(submitted, std::memory_order_release);
    for (size_t i = 0; i < n; i++) {
      Piece& p = syncs[i];
      if (p.status == 0) continue;
      p.pending = &w.pending;
      p.op = DataChannel::Op{};
      p.op.buf = &w.sync_scratch;
      p.op.done = piece_done;
      p.op.ctx = &p;
      DataChannel::Op* op = &p.op;
      (all ? *loops_[i] : my_loop()).submit(&op, 1, true);
    }
    wait_for(w.pending);
    bool again = false;
    for (const Piece& p : syncs) {
      if (p.status <= 0) continue;
      if (is_connection_error(p.status) || p.status == ESHUTDOWN) {
        again = true;
      } else {
        return io_error(p.status, "flush");
      }
    }
    if (!again) return Status::Ok();
    if (!retry.wait()) {
      return Error(EIO, "flush: brick " + volume_->options().brick.endpoint.to_string() + " unreachable");
    }
  }
}

Error Engine::io_error(int status, const std::string& what) const {
  if (status == kErrWrongStore) {
    std::string why = volume_->refusal();
    return Error(status, what + ": " + (why.empty() ? "the brick serves another store" : why));
  }
  return Error(status, what);
}

Status Engine::discard(uint64_t count, uint64_t offset, bool fua) {
  if (offset > size() || count > size() - offset) {
    return Error(EINVAL, "discard of " + std::to_string(count) + " bytes at " + std::to_string(offset) +
                             " is outside the volume");
  }
  bool zeroed = false;
  uint64_t end = offset + count;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block = pos / proto::kBlockSize;
    uint64_t block_start = block * proto::kBlockSize;
    uint64_t block_end = std::min(block_start + proto::kBlockSize, size());
    uint64_t piece_end = std::min(end, block_end);
    bool whole = pos == block_start && piece_end == block_end && block_end - block_start == proto::kBlockSize;
    if (volume_->allocated(block)) {
      Status st = whole ? volume_->discard_block(block) : Error(EBUSY, "partial");
      if (!st) {
        if (st.error().errnum() != EBUSY) return st;
        // Partial block, or someone else maps it: write zeros instead.
        PBRICK_TRY(transfer(true, zeros_.data(), piece_end - pos, pos));
        zeroed = true;
      }
    }
    pos = piece_end;
  }
  if (fua && zeroed) return sync_loops(false);
  return Status::Ok();
}

}  // namespace pbrick
