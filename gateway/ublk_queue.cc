#include "gateway/ublk_queue.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "common/protocol.h"
#include "common/uring.h"
#include "gateway/block_mapper.h"
#include "gateway/data_channel.h"
#include "gateway/ublk_ctrl.h"
#include "gateway/ublk_plan.h"
#include "gateway/volume_io.h"

namespace pbrick {
namespace {

using Clock = std::chrono::steady_clock;

// Kinds of the ring's SQEs: see the header comment.
enum Kind : uint8_t { kIo = 1, kChannel = 2, kTick = 4, kEvent = 5, kCancel = 6 };

constexpr long long kTickNanos = 50ll * 1000 * 1000;

int to_blk_errno(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT: return -ENOSPC;
    case EINVAL: return -EINVAL;
    case EOPNOTSUPP: return -EOPNOTSUPP;
    default: return -EIO;
  }
}

const char* op_name(uint8_t op) {
  switch (op) {
    case UBLK_IO_OP_READ: return "read";
    case UBLK_IO_OP_WRITE: return "write";
    case UBLK_IO_OP_FLUSH: return "flush";
    case UBLK_IO_OP_DISCARD: return "discard";
    case UBLK_IO_OP_WRITE_ZEROES: return "write-zeroes";
    default: return "request";
  }
}

}  // namespace

struct UblkQueue::Tag {
  UblkQueue* q = nullptr;
  uint16_t tag = 0;
  uint8_t* buf = nullptr;
  uint8_t op = 0;
  bool fua = false;
  bool no_unmap = false;
  uint64_t offset = 0;
  uint64_t len = 0;
  bool zeroed = false;
  // DISCARD / WRITE_ZEROES that may free: how far it is planned, and whether
  // a mapper's worker frees a block of it now (plan_discard_step).
  DiscardPlan discard;
  std::vector<IoPiece> pieces;
  uint32_t pending = 0;
  IoRetry retry;
  // FUA / FLUSH: syncs still running on the queues asked, and the first error.
  std::atomic<int> group_pending{0};
  std::atomic<int> group_status{0};
};

// A sync this queue runs on its channels for a FUA or FLUSH tag of `owner`.
struct UblkQueue::SyncWork {
  SyncJob job;
  IoRetry retry;
  UblkQueue* owner = nullptr;   // the queue whose tag waits for it
  UblkQueue* runner = nullptr;  // the queue whose channels run it
  uint16_t tag = 0;
};

struct UblkQueue::Impl {
  ~Impl() {
    if (descs != nullptr) ::munmap(descs, descs_len);
    if (bufs != nullptr) ::munmap(bufs, bufs_len);
  }

  ublksrv_io_desc* descs = nullptr;
  size_t descs_len = 0;
  uint8_t* bufs = nullptr;
  size_t bufs_len = 0;
  std::vector<uint8_t> zeros;
  Uring ring;  // before channels, which arm SQEs on it
  std::unique_ptr<VolumeChannels> channels;
  std::vector<Tag> tags;

  UniqueFd event_fd;
  uint64_t event_buf = 0;
  // After event_fd: its workers wake the ring through it until they are joined.
  std::unique_ptr<BlockMapper> mapper;
  __kernel_timespec tick_ts{};
  uint32_t aborted = 0;
  bool stopping = false;

  std::vector<Tag*> ready_tags, retry_tags, tags_scratch;
  std::vector<SyncWork*> ready_syncs, retry_syncs, syncs_scratch;
  std::vector<std::unique_ptr<SyncWork>> works;
  std::vector<SyncWork*> free_works;

  // A sync from the pool; the pool only grows while more FLUSHes are in
  // flight than ever before, so steady state allocates nothing.
  SyncWork* take_work() {
    if (free_works.empty()) {
      works.push_back(std::make_unique<SyncWork>());
      return works.back().get();
    }
    SyncWork* work = free_works.back();
    free_works.pop_back();
    return work;
  }

  struct Msg {
    bool flush_done;  // false: a sync request from `owner`
    UblkQueue* owner;
    uint16_t tag;
  };
  std::mutex inbox_mu;
  std::vector<Msg> inbox, taken;
  bool wake_pending = false;

  std::mutex ready_mu;
  std::condition_variable ready_cv;
  bool ready_done = false;
  Status ready_status;
};

UblkQueue::UblkQueue(UblkDevice& dev, uint16_t q_id, std::optional<cpu_set_t> cpus)
    : dev_(dev), q_id_(q_id), cpus_(cpus) {}

UblkQueue::~UblkQueue() { join(); }

Status UblkQueue::start() {
  PBRICK_TRY(prepare());
  return launch();
}

Status UblkQueue::prepare() {
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.bufs_len = static_cast<size_t>(dev_.depth) * dev_.max_io_bytes;
  void* p = ::mmap(nullptr, m.bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) return errno_error("allocating the I/O buffers of queue " + std::to_string(q_id_));
  m.bufs = static_cast<uint8_t*>(p);
  m.zeros.assign(proto::kBlockSize, 0);
  m.tags = std::vector<Tag>(dev_.depth);
  for (uint16_t i = 0; i < dev_.depth; i++) {
    m.tags[i].q = this;
    m.tags[i].tag = i;
    m.tags[i].buf = m.bufs + static_cast<size_t>(i) * dev_.max_io_bytes;
    m.tags[i].pieces.reserve(4);
  }
  m.ready_tags.reserve(dev_.depth);
  m.tags_scratch.reserve(dev_.depth);
  m.retry_tags.reserve(dev_.depth);
  m.event_fd.reset(::eventfd(0, EFD_CLOEXEC));
  if (!m.event_fd.valid()) return errno_error("eventfd");
  // Mappings of blocks not mapped yet run on the mapper's workers, which wake
  // this queue through its eventfd; a tag waits in at most one of them.
  m.mapper = std::make_unique<BlockMapper>(*dev_.volume, dev_.depth, [fd = m.event_fd.get()] {
    uint64_t one = 1;
    ssize_t ignored = ::write(fd, &one, sizeof one);
    (void)ignored;
  });
  // Every brick's channel on the ring: two SQEs each, on top of the tags'.
  Status st = m.ring.init(dev_.depth + 32 + 2 * dev_.volume->brick_count());
  if (!st) return st.error().wrap("queue " + std::to_string(q_id_));
  // Channel slots: two pieces per tag at most, plus syncs (FUA / FLUSH from
  // every queue).
  uint32_t channel_depth = 2u * dev_.depth + 64;
  if (channel_depth > 65535) channel_depth = 65535;
  m.channels = std::make_unique<VolumeChannels>(
      *dev_.volume, channel_depth, m.ring, kChannel, kCancel,
      "ublk" + std::to_string(dev_.dev_id) + " queue " + std::to_string(q_id_));
  // At most a round of pieces per tag, and a sync per tag of every queue.
  m.channels->reserve((kMaxPiecesPerRound + dev_.queues.size() + 1) * dev_.depth);
  // Over RDMA the per-tag buffers are registered once: data moves straight
  // between them and the bricks (ublk copies between them and the bio).
  st = m.channels->add_buffer_region(m.bufs, m.bufs_len);
  if (st.ok()) st = m.channels->add_buffer_region(m.zeros.data(), m.zeros.size());  // WRITE_ZEROES source
  if (st.ok()) {
    Status connected = m.channels->connect();
    if (!connected && dev_.connect_lazily) {
      PBRICK_LOG_WARN("ublk%u queue %u: %s: connecting again when it has I/O", dev_.dev_id, q_id_,
                      connected.error().message().c_str());
    } else {
      st = connected;
    }
  }
  if (!st) return st.error().wrap("queue " + std::to_string(q_id_));
  return Status::Ok();
}

Status UblkQueue::launch() {
  Impl& m = *impl_;
  long page = ::sysconf(_SC_PAGESIZE);
  m.descs_len = (dev_.depth * sizeof(ublksrv_io_desc) + page - 1) / page * page;
  // Each queue's descriptors sit at a page-rounded stride of the largest
  // queue (the driver's ublk_max_cmd_buf_size()): 96 KiB, a whole number of
  // 4 KiB pages, but not of 64 KiB ones.
  const off_t stride = (static_cast<off_t>(UBLK_MAX_QUEUE_DEPTH) * sizeof(ublksrv_io_desc) + page - 1) / page * page;
  off_t off = UBLKSRV_CMD_BUF_OFFSET + static_cast<off_t>(q_id_) * stride;
  void* p = ::mmap(nullptr, m.descs_len, PROT_READ, MAP_SHARED | MAP_POPULATE, dev_.cdev_fd, off);
  if (p == MAP_FAILED) return errno_error("mmap of the ublk descriptors of queue " + std::to_string(q_id_));
  m.descs = static_cast<ublksrv_io_desc*>(p);
  thread_ = std::thread([this] { run(); });
  pthread_setname_np(thread_.native_handle(), ("pbrick-q" + std::to_string(q_id_)).c_str());  // ps, top, tests
  return Status::Ok();
}

Status UblkQueue::wait_ready() {
  std::unique_lock lock(impl_->ready_mu);
  impl_->ready_cv.wait(lock, [this] { return impl_->ready_done; });
  return impl_->ready_status;
}

void UblkQueue::join() {
  if (thread_.joinable()) thread_.join();
}

bool UblkQueue::needs_sync() const { return impl_->channels->needs_sync(); }

void UblkQueue::post(bool flush_done, UblkQueue* owner, uint16_t tag) {
  Impl& m = *impl_;
  bool wake;
  {
    std::lock_guard lock(m.inbox_mu);
    m.inbox.push_back({flush_done, owner, tag});
    // One eventfd write per batch the queue takes from its inbox.
    wake = !m.wake_pending;
    m.wake_pending = true;
  }
  if (wake) {
    uint64_t one = 1;
    ssize_t ignored = ::write(m.event_fd.get(), &one, sizeof one);
    (void)ignored;
  }
}

void UblkQueue::post_sync(UblkQueue* owner, uint16_t tag) { post(false, owner, tag); }

void UblkQueue::post_flush_done(uint16_t tag) { post(true, nullptr, tag); }

void UblkQueue::arm_event() {
  Impl& m = *impl_;
  io_uring_prep_read(m.ring.sqe(Uring::pack(kEvent, 0)), m.event_fd.get(), &m.event_buf, sizeof m.event_buf, 0);
}

void UblkQueue::arm_tick() {
  Impl& m = *impl_;
  m.tick_ts.tv_sec = 0;
  m.tick_ts.tv_nsec = kTickNanos;
  io_uring_prep_timeout(m.ring.sqe(Uring::pack(kTick, 0)), &m.tick_ts, 0, 0);
}

// FETCH_REQ (result INT32_MIN, never a real result: fetch) or COMMIT_AND_FETCH_REQ.
void UblkQueue::commit(Tag& t, int result) {
  io_uring_sqe* sqe = impl_->ring.sqe(Uring::pack(kIo, t.tag));
  uint64_t ud = sqe->user_data;
  std::memset(sqe, 0, sizeof *sqe);
  sqe->user_data = ud;
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = dev_.cdev_fd;
  bool fetch = result == INT32_MIN;
  if (dev_.ioctl_encode) {
    sqe->cmd_op = fetch ? UBLK_U_IO_FETCH_REQ : UBLK_U_IO_COMMIT_AND_FETCH_REQ;
  } else {
    sqe->cmd_op = fetch ? UBLK_IO_FETCH_REQ : UBLK_IO_COMMIT_AND_FETCH_REQ;
  }
  auto* cmd = reinterpret_cast<ublksrv_io_cmd*>(&sqe->addr3);
  cmd->q_id = q_id_;
  cmd->tag = t.tag;
  cmd->result = fetch ? 0 : result;
  cmd->addr = reinterpret_cast<uint64_t>(t.buf);
}

void UblkQueue::handle_request(Tag& t) {
  const UblkRequest r = decode_request(impl_->descs[t.tag]);
  t.op = r.op;
  t.fua = r.fua;
  t.no_unmap = r.no_unmap;
  t.offset = r.offset;
  t.len = r.len;
  t.retry.start(std::chrono::milliseconds(dev_.volume->options().io_timeout_ms));
  t.zeroed = false;
  t.pieces.clear();
  uint64_t size = dev_.volume->size();
  switch (t.op) {
    case UBLK_IO_OP_READ:
    case UBLK_IO_OP_WRITE:
      if (t.offset > size || t.len > size - t.offset || t.len > dev_.max_io_bytes) return commit(t, -EINVAL);
      plan_rw(*dev_.volume, t.op == UBLK_IO_OP_WRITE, t.offset, t.len, t.buf, &t, t.pieces);
      return submit_data(t);
    case UBLK_IO_OP_FLUSH:
      return start_sync_group(t, true);
    case UBLK_IO_OP_DISCARD:
    case UBLK_IO_OP_WRITE_ZEROES:
      if (t.offset > size || t.len > size - t.offset) return commit(t, -EINVAL);
      if (t.op == UBLK_IO_OP_WRITE_ZEROES && t.no_unmap) {
        // The range must stay allocated (REQ_NOUNMAP): zeros are written.
        plan_zero_fill(*dev_.volume, t.offset, t.len, impl_->zeros.data(), &t, t.pieces);
        t.zeroed = !t.pieces.empty();
        return submit_data(t);
      }
      t.discard.from = t.offset;
      t.discard.end = t.offset + t.len;
      t.discard.zeros = impl_->zeros.data();
      t.discard.parked = false;
      return do_discard(t);
    default:
      return commit(t, -EOPNOTSUPP);
  }
}

// (Re)queues the pieces not done yet: one round.
void UblkQueue::submit_data(Tag& t) {
  auto done = [](DataChannel::Op* op, int status) {
    IoPiece* piece = static_cast<IoPiece*>(op->ctx);
    piece->status = status;
    Tag* tag = static_cast<Tag*>(piece->request);
    if (--tag->pending == 0) tag->q->impl_->ready_tags.push_back(tag);
  };
  auto queued = queue_round(*dev_.volume, t.pieces, *impl_->channels, done, kMaxPiecesPerRound, impl_->mapper.get());
  if (!queued) {
    PBRICK_LOG_ERROR("ublk%u queue %u: %s", dev_.dev_id, q_id_, queued.error().message().c_str());
    return commit(t, to_blk_errno(queued.error().errnum()));
  }
  if (*queued == kWaitingForMap) return;  // take_maps() plans it again
  if (*queued == 0) return advance(t);
  t.pending = static_cast<uint32_t>(*queued);
}

// All pieces of the tag's current round finished: the core says what next.
void UblkQueue::advance(Tag& t) {
  switch (t.retry.settle(*dev_.volume, t.pieces, op_name(t.op))) {
    case IoRetry::Step::kDone:
      break;
    case IoRetry::Step::kNow:
      return submit_data(t);
    case IoRetry::Step::kLater:
      impl_->retry_tags.push_back(&t);
      return;
    case IoRetry::Step::kFail:
      PBRICK_LOG_ERROR("ublk%u queue %u: %s", dev_.dev_id, q_id_, t.retry.error().message().c_str());
      return commit(t, to_blk_errno(t.retry.error().errnum()));
  }
  if (t.fua && (t.op == UBLK_IO_OP_WRITE || t.zeroed)) return start_sync_group(t, false);
  commit(t, (t.op == UBLK_IO_OP_READ || t.op == UBLK_IO_OP_WRITE) ? static_cast<int>(t.len) : 0);
}

// DISCARD / WRITE_ZEROES: the core frees whole blocks and plans zero-fill
// writes for the rest. A block whose FREE takes control round trips (a brick
// that is down: up to the io_timeout) is freed by the mapper's worker for its
// brick, as a first mapping is; take_maps() goes on from there. A block a
// mirror's resync holds is planned again from retry_tags: this thread must
// not sleep on it, since a write of this queue that the resync waits for
// completes only here.
void UblkQueue::do_discard(Tag& t) {
  auto step = plan_discard_step(*dev_.volume, t.discard, &t, t.pieces, impl_->mapper.get());
  if (!step) {
    PBRICK_LOG_ERROR("ublk%u queue %u: discard: %s", dev_.dev_id, q_id_, step.error().message().c_str());
    return commit(t, to_blk_errno(step.error().errnum()));
  }
  switch (*step) {
    case DiscardStep::kParked:
      return;
    case DiscardStep::kHeld:
      t.retry.wait_held();
      impl_->retry_tags.push_back(&t);
      return;
    case DiscardStep::kPlanned:
      break;
  }
  t.zeroed = !t.pieces.empty();
  submit_data(t);
}

// A tag whose retry time came: its discard goes on being planned, or its
// pieces not done yet go out again.
void UblkQueue::resume(Tag& t) {
  const bool planning = (t.op == UBLK_IO_OP_DISCARD || t.op == UBLK_IO_OP_WRITE_ZEROES) && !t.no_unmap &&
                        (t.discard.parked || t.discard.from != t.discard.end);
  if (planning) return do_discard(t);
  submit_data(t);
}

// FUA (this queue) or FLUSH (every queue): each queue with unsynced writes
// syncs its own channels; one with none is not asked.
void UblkQueue::start_sync_group(Tag& t, bool all_queues) {
  dev_.volume->note_sync_request();
  t.group_status.store(0, std::memory_order_relaxed);
  // One count for this function itself, so the group cannot finish while it
  // is still asking queues.
  t.group_pending.store(1, std::memory_order_release);
  for (UblkQueue* q : dev_.queues) {
    if ((!all_queues && q != this) || !q->needs_sync()) continue;
    t.group_pending.fetch_add(1, std::memory_order_acq_rel);
    if (q == this) {
      start_sync(this, t.tag, !all_queues);
    } else {
      q->post_sync(this, t.tag);
    }
  }
  if (t.group_pending.fetch_sub(1, std::memory_order_acq_rel) == 1) finish_group(t);
}

void UblkQueue::start_sync(UblkQueue* owner, uint16_t tag, bool fua) {
  Impl& m = *impl_;
  SyncWork* work = m.take_work();
  work->owner = owner;
  work->runner = this;
  work->tag = tag;
  if (fua) {
    const Tag& t = owner->impl_->tags[tag];
    bricks_of_range(*dev_.volume, t.offset, t.len, work->job.bricks);
  } else {
    work->job.bricks.clear();
  }
  work->retry.start(std::chrono::milliseconds(dev_.volume->options().io_timeout_ms));
  work->job.ctx = work;
  work->job.done = [](SyncJob* job) {
    auto* w = static_cast<SyncWork*>(job->ctx);
    w->runner->impl_->ready_syncs.push_back(w);
  };
  m.channels->sync(work->job);
}

void UblkQueue::advance_sync(SyncWork* work) {
  switch (work->retry.settle_sync(*dev_.volume, work->job.status, work->job.brick, "flush")) {
    case IoRetry::Step::kDone:
      return finish_sync(work, 0);
    case IoRetry::Step::kNow:
      // A copy was given up (stale): the sync goes on without it, and again
      // to every other brick still unsynced - the job kept one brick's
      // failure, others may have failed with it (as Engine::sync_loops).
      impl_->channels->sync(work->job);
      return;
    case IoRetry::Step::kLater:
      impl_->retry_syncs.push_back(work);
      return;
    case IoRetry::Step::kFail:
      PBRICK_LOG_ERROR("ublk%u queue %u: %s", dev_.dev_id, q_id_, work->retry.error().message().c_str());
      return finish_sync(work, work->retry.error().errnum());
  }
}

void UblkQueue::finish_sync(SyncWork* work, int status) {
  Impl& m = *impl_;
  UblkQueue* owner = work->owner;
  uint16_t tag = work->tag;
  m.free_works.push_back(work);
  Tag& t = owner->impl_->tags[tag];
  if (status != 0) {
    int expected = 0;
    t.group_status.compare_exchange_strong(expected, status, std::memory_order_acq_rel);
  }
  if (t.group_pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (owner == this) {
    finish_group(t);
  } else {
    owner->post_flush_done(tag);
  }
}

// On the tag's own queue, once every sync of its group is back.
void UblkQueue::finish_group(Tag& t) {
  int st = t.group_status.load(std::memory_order_acquire);
  if (st != 0) return commit(t, to_blk_errno(st));
  commit(t, t.op == UBLK_IO_OP_WRITE ? static_cast<int>(t.len) : 0);
}

// Tags whose block's mapping finished: planned again, or failed with the
// mapping's error (a brick unreachable for the io_timeout: EIO naming it);
// tags whose discard's block a worker freed: planned on (resume).
void UblkQueue::take_maps() {
  impl_->mapper->take_done([this](void* request, const Status& st) {
    Tag& t = *static_cast<Tag*>(request);
    if (st) return resume(t);
    note_failed_writes(*dev_.volume, t.pieces);
    PBRICK_LOG_ERROR("ublk%u queue %u: %s", dev_.dev_id, q_id_, st.error().message().c_str());
    commit(t, to_blk_errno(st.error().errnum()));
  });
}

void UblkQueue::take_inbox() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.inbox_mu);
    m.taken.swap(m.inbox);
    m.wake_pending = false;
  }
  for (const Impl::Msg& msg : m.taken) {
    if (msg.flush_done) {
      finish_group(m.tags[msg.tag]);
    } else {
      start_sync(msg.owner, msg.tag, false);
    }
  }
  m.taken.clear();
}

// Moves the entries of `waiting` whose retry time has come to `due`.
template <typename T>
void take_due(std::vector<T*>& waiting, std::vector<T*>& due, Clock::time_point now) {
  due.clear();
  size_t keep = 0;
  for (T* x : waiting) {
    if (x->retry.retry_at() <= now) {
      due.push_back(x);
    } else {
      waiting[keep++] = x;
    }
  }
  waiting.resize(keep);
}

void UblkQueue::on_tick() {
  Impl& m = *impl_;
  m.channels->on_tick();
  auto now = Clock::now();
  take_due(m.retry_tags, m.tags_scratch, now);
  for (Tag* t : m.tags_scratch) resume(*t);
  take_due(m.retry_syncs, m.syncs_scratch, now);
  for (SyncWork* w : m.syncs_scratch) m.channels->sync(w->job);
}

void UblkQueue::on_cqe(uint64_t ud, int res) {
  Impl& m = *impl_;
  switch (Uring::kind_of(ud)) {
    case kIo: {
      Tag& t = m.tags[Uring::payload_of(ud) & 0xFFFF];
      if (res == UBLK_IO_RES_OK) {
        handle_request(t);
      } else {
        if (res != UBLK_IO_RES_ABORT) {
          PBRICK_LOG_ERROR("ublk%u queue %u tag %u: ublk command failed: %s", dev_.dev_id, q_id_, t.tag,
                           std::strerror(-res));
        }
        m.aborted++;
      }
      break;
    }
    case kChannel:
      m.channels->on_cqe(Uring::payload_of(ud), res);
      break;
    case kTick:
      if (!m.stopping) {
        on_tick();
        arm_tick();
      }
      break;
    case kEvent:
      take_inbox();
      take_maps();
      if (!m.stopping) arm_event();
      break;
    default:
      break;
  }
}

void UblkQueue::run() {
  Impl& m = *impl_;
  if (cpus_ && sched_setaffinity(0, sizeof *cpus_, &*cpus_) != 0) {
    PBRICK_LOG_WARN("ublk%u queue %u: cannot pin to its CPUs: %s", dev_.dev_id, q_id_, std::strerror(errno));
  }
  Status st = m.ring.enable();  // this thread issues every SQE of the ring
  int err = 0;
  if (st) {
    for (Tag& t : m.tags) commit(t, INT32_MIN);  // FETCH_REQ
    arm_event();
    arm_tick();
    err = m.ring.submit();
    if (err < 0) st = Error(-err, "queue " + std::to_string(q_id_) + ": submitting FETCH_REQ");
  }
  {
    std::lock_guard lock(m.ready_mu);
    m.ready_done = true;
    m.ready_status = st;
  }
  m.ready_cv.notify_all();
  if (!st) return;

  for (;;) {
    if (!m.stopping && m.aborted >= dev_.depth) {
      // STOP_DEV (or the device went away): every tag came back aborted.
      m.stopping = true;
      m.channels->stop();
      m.ring.cancel(Uring::pack(kCancel, 0), Uring::pack(kTick, 0));
      m.ring.cancel(Uring::pack(kCancel, 0), Uring::pack(kEvent, 0));
    }
    if (m.ring.inflight() == 0) break;
    // Polling only with --poll-us and a brick I/O in flight: busy() walks the
    // channels, so it is not asked when polling is off.
    const bool poll = dev_.poll.count() > 0 && m.channels->busy();
    err = m.ring.submit_and_wait_polling(poll ? dev_.poll : std::chrono::microseconds(0));
    if (err == -EAGAIN || err == -EBUSY) {
      // Short of memory, or completions to reap first: reap, then again.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } else if (err < 0 && err != -EINTR) {
      // This queue cannot go on, and its tags would never be answered. The
      // whole daemon goes instead: the device holds their I/O (user
      // recovery) and a restarted daemon (recover) takes it over.
      PBRICK_LOG_ERROR("ublk%u queue %u: io_uring_submit_and_wait: %s; exiting so that the device can be "
                       "recovered (its I/O is held, not failed)",
                       dev_.dev_id, q_id_, std::strerror(-err));
      std::_Exit(EXIT_FAILURE);
    }
    m.ring.drain([this](uint64_t ud, int res) { on_cqe(ud, res); });
    for (int round = 0; round < 64; round++) {
      // Swapped with scratch lists that keep their capacity: no allocation
      // per request in steady state.
      m.tags_scratch.clear();
      m.tags_scratch.swap(m.ready_tags);
      for (Tag* t : m.tags_scratch) advance(*t);
      m.syncs_scratch.clear();
      m.syncs_scratch.swap(m.ready_syncs);
      for (SyncWork* w : m.syncs_scratch) advance_sync(w);
      m.channels->dispatch();
      if (m.ready_tags.empty() && m.ready_syncs.empty()) break;
    }
  }
  m.channels->finish(ESHUTDOWN);
  uint64_t chained = m.channels->syncs_chained(), sent = 0;
  for (uint32_t b = 0; b < dev_.volume->brick_count(); b++) sent += m.channels->syncs_sent(b);
  if (chained + sent > 0) {
    PBRICK_LOG_INFO("ublk%u queue %u: %llu syncs chained to lone writes, %llu syncs sent for FLUSH/FUA",
                    dev_.dev_id, q_id_, static_cast<unsigned long long>(chained),
                    static_cast<unsigned long long>(sent));
  }
  if (dev_.poll.count() > 0) {
    PBRICK_LOG_INFO("ublk%u queue %u: --poll-us %lld: %llu waits ended by polling, %llu slept after it", dev_.dev_id,
                    q_id_, static_cast<long long>(dev_.poll.count()),
                    static_cast<unsigned long long>(m.ring.polls_won()),
                    static_cast<unsigned long long>(m.ring.polls_lost()));
  }
}

}  // namespace pbrick
