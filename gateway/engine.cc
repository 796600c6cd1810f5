#include "gateway/engine.h"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/uring.h"
#include "gateway/volume_io.h"

namespace pbrick {
namespace {

constexpr long long kTickNanos = 100ll * 1000 * 1000;

// Kinds of the loop's SQEs (Uring's user_data packing); channel SQEs carry
// VolumeChannels' payload.
enum Kind : uint8_t { kEvent = 1, kChannel, kTick, kCancel };

// What a caller hands its loop: a piece's op for a brick, or a sync job.
struct Handoff {
  uint32_t brick = 0;
  DataChannel::Op* op = nullptr;
  SyncJob* sync = nullptr;
};

// Per caller thread: the pieces of its one outstanding request and the count
// of those still in flight. Thread-local, so it outlives every completion that
// touches it (a request's own stack frame would not), and nothing is allocated
// per request once its vectors have grown.
struct Waiter final : PieceSink {
  std::atomic<uint32_t> pending{0};
  std::vector<IoPiece> pieces;
  std::vector<Handoff> batch;
  // A FLUSH's sync job on each loop.
  std::vector<SyncJob> syncs;
  IoRetry retry;

  void push(uint32_t brick, DataChannel::Op* op) override { batch.push_back({brick, op, nullptr}); }
  void one_done();
};

// The caller sleeps on `pending` with a bare futex, not std::atomic::wait:
// libstdc++'s wait yields the CPU a few times before it sleeps, three
// sched_yield calls per 4k QD1 request through the nbdkit plugin (strace),
// each a chance for the scheduler to run something else in the caller's
// place, where the brick's reply takes a round trip anyway.
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free);
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_one(std::atomic<uint32_t>& word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

void Waiter::one_done() {
  if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) futex_wake_one(pending);
}

thread_local Waiter t_waiter;

void piece_done(DataChannel::Op* op, int status) {
  IoPiece* p = static_cast<IoPiece*>(op->ctx);
  p->status = status;
  static_cast<Waiter*>(p->request)->one_done();
}

void sync_done(SyncJob* job) { static_cast<Waiter*>(job->ctx)->one_done(); }

void wait_for(std::atomic<uint32_t>& pending) {
  for (uint32_t v = pending.load(std::memory_order_acquire); v != 0; v = pending.load(std::memory_order_acquire)) {
    futex_wait(pending, v);  // returns at once when `pending` is no longer v
  }
}

// What a blocking caller does with the core's verdict on its request: the
// request's result when it is over, nothing when it goes on (after sleeping
// until its retry time when the core says so).
std::optional<Status> wait_out(const IoRetry& retry, IoRetry::Step step) {
  switch (step) {
    case IoRetry::Step::kDone:
      return Status::Ok();
    case IoRetry::Step::kNow:
      return std::nullopt;
    case IoRetry::Step::kLater:
      std::this_thread::sleep_until(retry.retry_at());
      return std::nullopt;
    case IoRetry::Step::kFail:
      break;
  }
  return Status(retry.error());
}

}  // namespace

// One event loop: a thread, a Uring, and a channel to every brick.
class Engine::Loop {
 public:
  Loop(Volume& volume, uint32_t depth, uint32_t index, std::chrono::microseconds poll)
      : channels_(volume, depth, ring_, kChannel, kCancel, "queue " + std::to_string(index)),
        index_(index),
        poll_(poll),
        direct_(poll.count() == 0) {
    incoming_.reserve(4 * depth);
    taken_.reserve(4 * depth);
    channels_.reserve(4 * depth);
    channels_.set_send_inline(direct_);
  }

  ~Loop() { stop(); }

  Status start() {
    event_fd_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!event_fd_.valid()) return errno_error("eventfd");
    PBRICK_TRY(ring_.init(256));
    PBRICK_TRY(channels_.connect());
    std::promise<Status> ready;
    auto started = ready.get_future();
    thread_ = std::thread([this, &ready] { run(ready); });
    Status st = started.get();
    if (!st) thread_.join();
    return st;
  }

  void stop() {
    if (thread_.joinable()) {
      stopping_.store(true, std::memory_order_release);
      wake();
      thread_.join();
    }
  }

  // Any thread: whether this loop's channels carried writes not synced yet.
  bool needs_sync() const { return channels_.needs_sync(); }
  uint64_t syncs_sent(uint32_t brick) const { return channels_.syncs_sent(brick); }
  uint64_t syncs_chained() const { return channels_.syncs_chained(); }
  Engine::PollStats poll_stats() const {
    return {polls_won_.load(std::memory_order_relaxed), polls_lost_.load(std::memory_order_relaxed)};
  }
  uint64_t direct_submits() const { return direct_submits_.load(std::memory_order_relaxed); }
  uint64_t queued_submits() const { return queued_submits_.load(std::memory_order_relaxed); }

  // From caller threads: hands work to the loop. While the loop sleeps in its
  // ring, the caller sends the work itself (the loop's channels, under
  // drive_mu_): a TCP request goes out in the caller's own sendmsg, an RDMA
  // one in its own ibv_post_send, and the loop wakes only for the reply.
  // Otherwise (the loop is awake, or polls its ring) the work is queued for
  // the loop, which takes it before it sleeps again.
  void submit(const Handoff* items, size_t n) {
    if (submit_directly(items, n)) return;
    bool need_wake;
    {
      std::lock_guard lock(mu_);
      incoming_.insert(incoming_.end(), items, items + n);
      queued_submits_.store(queued_submits_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      // An awake loop looks at incoming_ before it sleeps. One eventfd write
      // per batch the loop takes, not one per caller: a wake already on its
      // way will make the loop take this batch too.
      need_wake = sleeping_ && !wake_pending_;
      if (need_wake) wake_pending_ = true;
    }
    if (need_wake) wake();
  }

 private:
  // submit(), done by the caller: only while the loop sleeps in wait() (it
  // holds drive_mu_ at every other time) and the ring has room for what
  // dispatch() may arm, since a caller must never submit to the loop's ring.
  // Whatever needs the loop afterwards reaches it through the channels' SQEs:
  // the reply's completion, or, when an SQE was left to submit (a send the
  // socket had no room for), an eventfd wake-up.
  bool submit_directly(const Handoff* items, size_t n) {
    if (!direct_) return false;
    std::unique_lock drive(drive_mu_, std::try_to_lock);
    if (!drive.owns_lock()) return false;
    if (stopping_.load(std::memory_order_acquire) || ring_.sq_space_left() < channels_.max_sqes_per_dispatch()) {
      return false;
    }
    taken_.insert(taken_.end(), items, items + n);
    dispatch();
    direct_submits_.store(direct_submits_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    bool need_wake = ring_.sq_pending() > 0;
    drive.unlock();
    if (need_wake) wake();
    return true;
  }

  void wake() {
    uint64_t one = 1;
    ssize_t ignored = ::write(event_fd_.get(), &one, sizeof one);
    (void)ignored;
  }

  void arm_event() {
    io_uring_prep_read(ring_.sqe(Uring::pack(kEvent, 0)), event_fd_.get(), &event_buf_, sizeof event_buf_, 0);
  }

  void arm_tick() {
    tick_ts_.tv_sec = 0;
    tick_ts_.tv_nsec = kTickNanos;
    io_uring_prep_timeout(ring_.sqe(Uring::pack(kTick, 0)), &tick_ts_, 0, 0);
  }

  void dispatch() {
    for (const Handoff& h : taken_) {
      if (h.sync != nullptr) {
        channels_.sync(*h.sync);
      } else {
        channels_.push(h.brick, h.op);
      }
    }
    taken_.clear();
    channels_.dispatch();
  }

  void on_cqe(uint64_t ud, int res) {
    switch (Uring::kind_of(ud)) {
      case kEvent: {
        std::lock_guard lock(mu_);
        take_incoming_locked();
        wake_pending_ = false;
        if (!stopping_.load(std::memory_order_acquire)) arm_event();
        break;
      }
      case kChannel:
        channels_.on_cqe(Uring::payload_of(ud), res);
        break;
      case kTick:
        if (!stopping_.load(std::memory_order_acquire)) {
          channels_.on_tick();
          arm_tick();
        }
        break;
      default:
        break;
    }
  }

  // Moves what callers queued into taken_. The loop thread, holding mu_ and
  // drive_mu_.
  void take_incoming_locked() {
    taken_.insert(taken_.end(), incoming_.begin(), incoming_.end());
    incoming_.clear();
  }

  static void fail(const Handoff& h, int status) {
    if (h.sync != nullptr) {
      h.sync->status = status;
      h.sync->done(h.sync);
    } else {
      h.op->done(h.op, status);
    }
  }

  // Before the loop sleeps: takes what callers queued meanwhile (true), or
  // marks the loop asleep, so the next caller wakes it (false).
  bool take_incoming_or_sleep() {
    std::lock_guard lock(mu_);
    if (!incoming_.empty()) {
      take_incoming_locked();
      return true;
    }
    sleeping_ = true;
    return false;
  }

  // Submits what is armed and sleeps until a completion comes. With direct
  // submits, drive_mu_ is let go for the sleep alone: the kernel must not see
  // the submission queue while a caller fills it (Uring::wait()).
  int sleep(std::unique_lock<std::mutex>& drive) {
    if (!direct_) {
      // Poll only while a reply is due: an idle loop sleeps at once.
      auto poll = channels_.busy() ? poll_ : std::chrono::microseconds(0);
      return ring_.submit_and_wait_polling(poll);
    }
    if (ring_.sq_pending() > 0) {
      int err = ring_.submit();
      if (err < 0) return err;
    }
    drive.unlock();
    int err = ring_.wait();
    drive.lock();
    return err;
  }

  void run(std::promise<Status>& ready) {
    std::unique_lock drive(drive_mu_);
    Status st = ring_.enable();
    ready.set_value(st);  // `ready` is gone after this
    if (!st) return;
    arm_event();
    arm_tick();
    bool cancelled = false;
    while (ring_.inflight() > 0) {
      if (stopping_.load(std::memory_order_acquire) && !cancelled) {
        cancelled = true;
        channels_.stop();
        ring_.cancel(Uring::pack(kCancel, 0), Uring::pack(kTick, 0));
        ring_.cancel(Uring::pack(kCancel, 0), Uring::pack(kEvent, 0));
      }
      int err = 0;
      if (take_incoming_or_sleep()) {
        if (ring_.sq_pending() > 0) err = ring_.submit();  // what is armed goes on, no wait
      } else {
        err = sleep(drive);
        std::lock_guard lock(mu_);
        sleeping_ = false;
      }
      if (err == -EAGAIN || err == -EBUSY) {
        // Short of memory, or completions to reap first: reap, then again.
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      } else if (err < 0 && err != -EINTR) {
        // Nothing would read this ring again, and every caller bound to it
        // would wait for ever: the process goes (nbdkit is restarted; a
        // client retries) rather than hang.
        PBRICK_LOG_ERROR("queue %u: io_uring_enter: %s; exiting", index_, std::strerror(-err));
        std::_Exit(EXIT_FAILURE);
      }
      ring_.drain([this](uint64_t ud, int res) { on_cqe(ud, res); });
      dispatch();
      polls_won_.store(ring_.polls_won(), std::memory_order_relaxed);
      polls_lost_.store(ring_.polls_lost(), std::memory_order_relaxed);
    }
    // Whatever is still queued fails: the engine is going away.
    {
      std::lock_guard lock(mu_);
      take_incoming_locked();
    }
    channels_.finish(ESHUTDOWN);
    for (const Handoff& h : taken_) fail(h, ESHUTDOWN);
    taken_.clear();
  }

  Uring ring_;  // before channels_, which arm SQEs on it
  VolumeChannels channels_;
  uint32_t index_;
  std::chrono::microseconds poll_;
  std::atomic<uint64_t> polls_won_{0}, polls_lost_{0};  // copies of ring_'s, for other threads
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  UniqueFd event_fd_;
  uint64_t event_buf_ = 0;
  __kernel_timespec tick_ts_{};

  // Whether callers may submit directly (submit()): not with polling, where
  // the loop never sleeps in wait().
  const bool direct_;
  // Counters written under a lock (one writer at a time, so no locked
  // read-modify-write), atomic for readers on other threads.
  std::atomic<uint64_t> direct_submits_{0};  // written under drive_mu_
  std::atomic<uint64_t> queued_submits_{0};  // written under mu_
  // Held by the loop thread except while it sleeps in its ring (sleep());
  // a caller holding it drives channels_ and ring_'s SQEs in its place.
  std::mutex drive_mu_;

  std::mutex mu_;
  std::vector<Handoff> incoming_;  // filled by callers under mu_
  bool wake_pending_ = false;      // under mu_: an eventfd write is on its way
  bool sleeping_ = false;          // under mu_: the loop sleeps (or is about to) and needs a wake-up
  std::vector<Handoff> taken_;     // under drive_mu_: what the loop took from incoming_, or a caller's own
};

Engine::Engine(std::unique_ptr<Volume> volume, const EngineOptions& options)
    : volume_(std::move(volume)), options_(options), zeros_(proto::kBlockSize, 0) {}

Engine::~Engine() {
  for (auto& loop : loops_) loop->stop();
  // Nothing runs on the volume now: a mirror detaches cleanly (or says why
  // the next attach repairs its copies).
  resync_.reset();
  Status st = volume_->close();
  if (!st) PBRICK_LOG_WARN("volume detach: %s", st.error().message().c_str());
}

Result<std::unique_ptr<Engine>> Engine::Start(std::unique_ptr<Volume> volume, const EngineOptions& options) {
  if (options.queues == 0 || options.queues > kMaxQueues) {
    return Error(EINVAL, "queues must be 1.." + std::to_string(kMaxQueues));
  }
  if (options.depth == 0 || options.depth > 4096) return Error(EINVAL, "depth must be 1..4096");
  if (options.poll_us > kMaxPollUs) return Error(EINVAL, "poll must be 0.." + std::to_string(kMaxPollUs) + " us");
  std::unique_ptr<Engine> engine(new Engine(std::move(volume), options));
  for (uint32_t i = 0; i < options.queues; i++) {
    auto loop = std::make_unique<Loop>(*engine->volume_, options.depth, i, std::chrono::microseconds(options.poll_us));
    Status st = loop->start();
    if (!st) return st.error().wrap("queue " + std::to_string(i));
    engine->loops_.push_back(std::move(loop));
  }
  engine->resync_ = MirrorResync::Start(*engine->volume_);
  return engine;
}

Engine::Loop& Engine::my_loop() {
  static std::atomic<uint32_t> next{0};
  thread_local uint32_t mine = next.fetch_add(1, std::memory_order_relaxed);
  return *loops_[mine % loops_.size()];
}

Status Engine::transfer(bool is_write, uint8_t* buf, uint64_t count, uint64_t offset) {
  if (offset > size() || count > size() - offset) {
    return Error(EINVAL, std::string(is_write ? "write" : "read") + " of " + std::to_string(count) + " bytes at " +
                             std::to_string(offset) + " is outside the volume");
  }
  // At most kMaxRequest at a time (what the per-thread pieces are sized
  // for): nbdkit hands a client that did not negotiate block sizes up to
  // 64 MiB in one call.
  Waiter& w = t_waiter;
  for (uint64_t done = 0; done < count;) {
    const uint64_t n = std::min(count - done, kMaxRequest);
    w.pieces.clear();
    plan_rw(*volume_, is_write, offset + done, n, buf + done, &w, w.pieces);
    PBRICK_TRY(run_pieces(is_write ? "write" : "read"));
    done += n;
  }
  return Status::Ok();
}

Status Engine::run_pieces(const char* what) {
  Waiter& w = t_waiter;
  Loop& loop = my_loop();
  w.retry.start(std::chrono::milliseconds(volume_->options().io_timeout_ms));
  for (;;) {
    w.batch.clear();
    // A whole request per round: it is at most kMaxRequest (or a discard's
    // zero-fill pieces), and the loop's backlog holds what its channels cannot
    // take yet.
    auto queued = queue_round(*volume_, w.pieces, w, piece_done, SIZE_MAX);
    if (!queued) return queued.error();
    if (*queued != 0) {  // 0: done, or held back (settle says which)
      w.pending.store(static_cast<uint32_t>(*queued), std::memory_order_release);
      loop.submit(w.batch.data(), w.batch.size());
      wait_for(w.pending);
    }
    if (auto over = wait_out(w.retry, w.retry.settle(*volume_, w.pieces, what))) return *over;
  }
}

Status Engine::read(void* buf, uint64_t count, uint64_t offset) {
  return transfer(false, static_cast<uint8_t*>(buf), count, offset);
}

Status Engine::write(const void* buf, uint64_t count, uint64_t offset, bool fua) {
  // The data path only reads from `buf`; the channel's Op is shared with reads.
  PBRICK_TRY(transfer(true, const_cast<uint8_t*>(static_cast<const uint8_t*>(buf)), count, offset));
  if (fua) return sync_loops(false, offset, count);
  return Status::Ok();
}

Status Engine::flush() { return sync_loops(true); }

Status Engine::answer_for(Session& session, Status result) const {
  uint64_t lost = volume_->writes_lost();  // counted before the sync that met it completed
  uint64_t told = session.losses_told.load(std::memory_order_acquire);
  if (lost <= told) return result;
  if (!result && result.error().errnum() != EIO) return result;  // not a report of lost writes: tell it next time
  // One request of the session takes the report (several may complete at
  // once); the count only moves forward.
  bool mine = false;
  while (lost > told && !mine) {
    mine = session.losses_told.compare_exchange_weak(told, lost, std::memory_order_acq_rel);
  }
  if (!result || !mine) return result;
  return Error(EIO, "writes completed before a brick's host rebooted may be lost there (reported to every client "
                    "connected then; the gateway's log names the brick)");
}

// FUA: the bricks of [offset, offset + len) on our own loop, which wrote it;
// FLUSH: those of every loop. Only loops with writes not synced yet are asked
// (the core keeps that so across reconnects), and each syncs only the bricks
// it wrote to. Retried through reconnects until the io_timeout.
Status Engine::sync_loops(bool all, uint64_t offset, uint64_t len) {
  Waiter& w = t_waiter;
  if (w.syncs.size() < loops_.size()) w.syncs.resize(loops_.size());
  Loop& mine = my_loop();
  volume_->note_sync_request();
  w.retry.start(std::chrono::milliseconds(volume_->options().io_timeout_ms));
  for (;;) {
    uint32_t asked = 0;
    for (size_t i = 0; i < loops_.size(); i++) {
      Loop& loop = *loops_[i];
      SyncJob& job = w.syncs[i];
      job.status = -1;  // not asked
      if ((!all && &loop != &mine) || !loop.needs_sync()) continue;
      job.status = 0;
      job.done = sync_done;
      job.ctx = &w;
      if (all) {
        job.bricks.clear();
      } else {
        bricks_of_range(*volume_, offset, len, job.bricks);
      }
      asked++;
    }
    if (asked == 0) return Status::Ok();
    w.pending.store(asked, std::memory_order_release);
    for (size_t i = 0; i < loops_.size(); i++) {
      if (w.syncs[i].status == -1) continue;
      Handoff h{0, nullptr, &w.syncs[i]};
      loops_[i]->submit(&h, 1);
    }
    wait_for(w.pending);
    // The worst outcome decides: an error that fails over one that is retried.
    const SyncJob* worst = nullptr;
    for (const SyncJob& job : w.syncs) {
      if (job.status <= 0) continue;
      if (worst == nullptr || fate_of(job.status) == Fate::kFail) worst = &job;
    }
    if (worst == nullptr) return Status::Ok();
    if (auto over = wait_out(w.retry, w.retry.settle_sync(*volume_, worst->status, worst->brick, "flush"))) {
      return *over;
    }
  }
}

uint64_t Engine::syncs_sent(uint32_t brick) const {
  uint64_t n = 0;
  for (const auto& loop : loops_) n += loop->syncs_sent(brick);
  return n;
}

uint64_t Engine::syncs_chained() const {
  uint64_t n = 0;
  for (const auto& loop : loops_) n += loop->syncs_chained();
  return n;
}

Engine::PollStats Engine::poll_stats() const {
  PollStats total;
  for (const auto& loop : loops_) {
    PollStats p = loop->poll_stats();
    total.won += p.won;
    total.lost += p.lost;
  }
  return total;
}

Engine::SubmitStats Engine::submit_stats() const {
  SubmitStats total;
  for (const auto& loop : loops_) {
    total.direct += loop->direct_submits();
    total.queued += loop->queued_submits();
  }
  return total;
}

Status Engine::discard(uint64_t count, uint64_t offset, bool fua, bool keep_allocated) {
  if (offset > size() || count > size() - offset) {
    return Error(EINVAL, "discard of " + std::to_string(count) + " bytes at " + std::to_string(offset) +
                             " is outside the volume");
  }
  Waiter& w = t_waiter;
  w.pieces.clear();
  if (keep_allocated) {
    plan_zero_fill(*volume_, offset, count, zeros_.data(), &w, w.pieces);
  } else {
    // A block a mirror's resync holds is waited for here, on the caller's
    // thread: it has no other request under way that the resync could be
    // waiting for.
    for (uint64_t pos = offset, end = offset + count;;) {
      auto planned = plan_discard(*volume_, pos, end - pos, zeros_.data(), &w, w.pieces);
      if (!planned) return planned.error();
      pos = *planned;
      if (pos == end) break;
      std::this_thread::sleep_for(kHeldWait);
    }
  }
  bool zeroed = !w.pieces.empty();
  PBRICK_TRY(run_pieces(keep_allocated ? "zero" : "discard"));
  if (fua && zeroed) return sync_loops(false, offset, count);
  return Status::Ok();
}

}  // namespace pbrick
