#include "gateway/ublk_queue.h"

#include <liburing.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>

#include "common/log.h"
#include "common/protocol.h"
#include "gateway/data_channel.h"
#include "gateway/ublk_ctrl.h"
#include "gateway/ublk_plan.h"

namespace pbrick {
namespace {

using Clock = std::chrono::steady_clock;

// user_data layout: see the header comment.
enum Kind : uint64_t { kIo = 1, kChannel = 2, kTick = 4, kEvent = 5, kCancel = 6 };
constexpr int kKindShift = 56;
constexpr uint64_t pack(Kind kind, uint64_t low) { return (static_cast<uint64_t>(kind) << kKindShift) | low; }
constexpr Kind kind_of(uint64_t ud) { return static_cast<Kind>(ud >> kKindShift); }

constexpr long long kTickNanos = 50ll * 1000 * 1000;
constexpr auto kReconnectInterval = std::chrono::milliseconds(100);

int to_blk_errno(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT: return -ENOSPC;
    case EINVAL: return -EINVAL;
    case EOPNOTSUPP: return -EOPNOTSUPP;
    default: return -EIO;
  }
}

bool is_retryable(int err) { return is_connection_error(err) || err == ESHUTDOWN; }

}  // namespace

struct UblkQueue::Tag {
  UblkQueue* q = nullptr;
  uint16_t tag = 0;
  uint8_t* buf = nullptr;
  uint8_t op = 0;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint64_t len = 0;
  bool zeroed = false;
  std::vector<UblkPiece> pieces;
  uint32_t pending = 0;
  Clock::time_point deadline{};
  Clock::time_point retry_at{};
  std::chrono::milliseconds backoff{20};
  // FUA / FLUSH: syncs still running on the queues asked, and the first error.
  std::atomic<int> group_pending{0};
  std::atomic<int> group_status{0};
};

struct UblkQueue::SyncJob {
  DataChannel::Op op;
  uint8_t scratch = 0;
  UblkQueue* owner = nullptr;   // the queue whose tag waits for it
  UblkQueue* runner = nullptr;  // the queue whose channel runs it
  uint16_t tag = 0;
  int status = 0;
  Clock::time_point deadline{};
};

struct UblkQueue::Impl {
  Impl(Transport transport, uint32_t channel_depth) : channel(DataChannel::Create(transport, channel_depth)) {}
  ~Impl() {
    if (ring_ready) io_uring_queue_exit(&ring);
    if (descs != nullptr) ::munmap(descs, descs_len);
    if (bufs != nullptr) ::munmap(bufs, bufs_len);
  }

  ublksrv_io_desc* descs = nullptr;
  size_t descs_len = 0;
  uint8_t* bufs = nullptr;
  size_t bufs_len = 0;
  std::vector<uint8_t> zeros;
  io_uring ring{};
  bool ring_ready = false;
  std::unique_ptr<DataChannel> channel;
  // Every op for the channel waits here until the channel has room: a
  // request's pieces and the syncs of every queue's FLUSHes can outnumber its
  // slots.
  ChannelBacklog backlog;
  std::vector<Tag> tags;

  UniqueFd event_fd;
  uint64_t event_buf = 0;
  __kernel_timespec tick_ts{};
  uint64_t sqes_inflight = 0;
  Clock::time_point last_connect_attempt{};
  uint32_t aborted = 0;
  bool stopping = false;

  std::vector<Tag*> ready_tags, retry_tags, tags_scratch;
  std::vector<SyncJob*> ready_syncs, retry_syncs, syncs_scratch;
  std::vector<std::unique_ptr<SyncJob>> jobs;
  std::vector<SyncJob*> free_jobs;

  // A sync job from the pool; the pool only grows while more FLUSHes are in
  // flight than ever before, so steady state allocates nothing.
  SyncJob* take_job() {
    if (free_jobs.empty()) {
      jobs.push_back(std::make_unique<SyncJob>());
      return jobs.back().get();
    }
    SyncJob* job = free_jobs.back();
    free_jobs.pop_back();
    return job;
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

UblkQueue::UblkQueue(UblkDevice& dev, uint16_t q_id, int cpu) : dev_(dev), q_id_(q_id), cpu_(cpu) {}

UblkQueue::~UblkQueue() { join(); }

Status UblkQueue::start() {
  // Channel slots: two pieces per tag at most, plus syncs (FUA / FLUSH from
  // every queue).
  uint32_t channel_depth = 2u * dev_.depth + 64;
  if (channel_depth > 65535) channel_depth = 65535;
  impl_ = std::make_unique<Impl>(dev_.volume->options().brick.transport, channel_depth);
  Impl& m = *impl_;
  long page = ::sysconf(_SC_PAGESIZE);
  m.descs_len = (dev_.depth * sizeof(ublksrv_io_desc) + page - 1) / page * page;
  off_t off = UBLKSRV_CMD_BUF_OFFSET +
              static_cast<off_t>(q_id_) * UBLK_MAX_QUEUE_DEPTH * static_cast<off_t>(sizeof(ublksrv_io_desc));
  void* p = ::mmap(nullptr, m.descs_len, PROT_READ, MAP_SHARED | MAP_POPULATE, dev_.cdev_fd, off);
  if (p == MAP_FAILED) return errno_error("mmap of the ublk descriptors of queue " + std::to_string(q_id_));
  m.descs = static_cast<ublksrv_io_desc*>(p);
  m.bufs_len = static_cast<size_t>(dev_.depth) * dev_.max_io_bytes;
  p = ::mmap(nullptr, m.bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
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
  // At most a round of pieces per tag, and a sync per tag of every queue.
  m.backlog.reserve((kMaxPiecesPerRound + dev_.queues.size() + 1) * dev_.depth);
  m.ready_tags.reserve(dev_.depth);
  m.tags_scratch.reserve(dev_.depth);
  m.retry_tags.reserve(dev_.depth);
  m.event_fd.reset(::eventfd(0, EFD_CLOEXEC));
  if (!m.event_fd.valid()) return errno_error("eventfd");
  int err = io_uring_queue_init(dev_.depth + 32, &m.ring, 0);
  if (err < 0) return Error(-err, "io_uring_queue_init for queue " + std::to_string(q_id_));
  m.ring_ready = true;
  // Over RDMA the per-tag buffers are registered once: data moves straight
  // between them and the brick (ublk copies between them and the bio).
  Status st = m.channel->add_buffer_region(m.bufs, m.bufs_len);
  if (st.ok()) st = m.channel->add_buffer_region(m.zeros.data(), m.zeros.size());  // WRITE_ZEROES source
  if (!st) return st.error().wrap("queue " + std::to_string(q_id_));
  st = dev_.volume->connect_channel(*m.channel);
  if (!st) return st.error().wrap("queue " + std::to_string(q_id_));
  thread_ = std::thread([this] { run(); });
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

io_uring_sqe* UblkQueue::get_sqe(uint64_t user_data) {
  Impl& m = *impl_;
  io_uring_sqe* s = io_uring_get_sqe(&m.ring);
  while (s == nullptr) {
    io_uring_submit(&m.ring);
    s = io_uring_get_sqe(&m.ring);
  }
  io_uring_sqe_set_data64(s, user_data);
  m.sqes_inflight++;
  return s;
}

void UblkQueue::arm_event() {
  Impl& m = *impl_;
  io_uring_prep_read(get_sqe(pack(kEvent, 0)), m.event_fd.get(), &m.event_buf, sizeof m.event_buf, 0);
}

void UblkQueue::arm_tick() {
  Impl& m = *impl_;
  m.tick_ts.tv_sec = 0;
  m.tick_ts.tv_nsec = kTickNanos;
  io_uring_prep_timeout(get_sqe(pack(kTick, 0)), &m.tick_ts, 0, 0);
}

// FETCH_REQ (result < 0 is never sent: fetch) or COMMIT_AND_FETCH_REQ.
void UblkQueue::commit(Tag& t, int result) {
  io_uring_sqe* sqe = get_sqe(pack(kIo, t.tag));
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

int UblkQueue::ensure_connected() {
  Impl& m = *impl_;
  if (m.channel->connected()) return 0;
  auto now = Clock::now();
  if (now - m.last_connect_attempt < kReconnectInterval) return ECONNREFUSED;
  m.last_connect_attempt = now;
  Status st = dev_.volume->connect_channel(*m.channel);
  if (!st) {
    // A brick that serves another store fails the I/O (the volume logged
    // why); anything else is retried until the request's deadline.
    int err = st.error().errnum();
    return is_connection_error(err) || err == kErrWrongStore ? err : ECONNREFUSED;
  }
  PBRICK_LOG_NOTICE("ublk%u queue %u: reconnected to brick %s", dev_.dev_id, q_id_,
                    dev_.volume->options().brick.endpoint.to_string().c_str());
  return 0;
}

void UblkQueue::teardown(const Error& why) {
  Impl& m = *impl_;
  if (!m.channel->connected() || m.channel->tearing_down()) return;
  if (why.errnum() != ESHUTDOWN) {
    PBRICK_LOG_WARN("ublk%u queue %u: connection to brick %s lost: %s", dev_.dev_id, q_id_,
                    dev_.volume->options().brick.endpoint.to_string().c_str(), why.message().c_str());
  }
  m.channel->teardown(why.errnum());
}

io_uring_sqe* UblkQueue::channel_sqe(uint8_t event) { return get_sqe(pack(kChannel, event)); }

void UblkQueue::cancel_channel_sqe(uint8_t event) {
  io_uring_prep_cancel64(get_sqe(pack(kCancel, 0)), pack(kChannel, event), 0);
}

void UblkQueue::handle_request(Tag& t) {
  const ublksrv_io_desc& d = impl_->descs[t.tag];
  t.op = static_cast<uint8_t>(d.op_flags & 0xff);
  t.flags = d.op_flags >> 8;
  t.offset = d.start_sector << 9;
  t.len = static_cast<uint64_t>(d.nr_sectors) << 9;
  t.deadline = Clock::now() + std::chrono::milliseconds(dev_.volume->options().io_timeout_ms);
  t.backoff = std::chrono::milliseconds(20);
  t.zeroed = false;
  t.pieces.clear();
  uint64_t size = dev_.volume->size();
  switch (t.op) {
    case UBLK_IO_OP_READ:
    case UBLK_IO_OP_WRITE:
      if (t.offset > size || t.len > size - t.offset || t.len > dev_.max_io_bytes) return commit(t, -EINVAL);
      plan_rw(t.op == UBLK_IO_OP_WRITE, t.offset, t.len, t.buf, &t, t.pieces);
      return submit_data(t);
    case UBLK_IO_OP_FLUSH:
      return start_sync_group(t, true);
    case UBLK_IO_OP_DISCARD:
    case UBLK_IO_OP_WRITE_ZEROES:
      if (t.offset > size || t.len > size - t.offset) return commit(t, -EINVAL);
      return do_discard(t);
    default:
      return commit(t, -EOPNOTSUPP);
  }
}

// (Re)queues every piece not done yet: one round.
void UblkQueue::submit_data(Tag& t) {
  auto queued = queue_pieces(*dev_.volume, t.pieces, impl_->backlog, [](DataChannel::Op* op, int status) {
    UblkPiece* piece = static_cast<UblkPiece*>(op->ctx);
    piece->status = status;
    Tag* tag = static_cast<Tag*>(piece->request);
    if (--tag->pending == 0) tag->q->impl_->ready_tags.push_back(tag);
  });
  if (!queued) {
    PBRICK_LOG_ERROR("ublk%u queue %u: %s", dev_.dev_id, q_id_, queued.error().message().c_str());
    return commit(t, to_blk_errno(queued.error().errnum()));
  }
  if (*queued == 0) return advance(t);
  t.pending = static_cast<uint32_t>(*queued);
}

// All pieces of the tag's current attempt finished: retry, sync or commit.
void UblkQueue::advance(Tag& t) {
  Impl& m = *impl_;
  bool retry_conn = false, again = false;
  for (UblkPiece& p : t.pieces) {
    if (p.status == 0) continue;
    if (p.status == -1) {
      again = true;  // beyond the last round's pieces
    } else if (p.status == EKEYREJECTED) {
      dev_.volume->invalidate(p.block, p.op.rkey);  // the mapping died: map again
      p.status = -1;
      again = true;
    } else if (is_retryable(p.status)) {
      p.status = -1;
      retry_conn = true;
    } else {
      PBRICK_LOG_ERROR("ublk%u queue %u: %s of %u bytes at block %llu: %s", dev_.dev_id, q_id_,
                       p.is_write ? "write" : "read", p.len, static_cast<unsigned long long>(p.block),
                       std::strerror(p.status));
      return commit(t, to_blk_errno(p.status));
    }
  }
  if (retry_conn || again) {
    auto now = Clock::now();
    if (now > t.deadline) {
      PBRICK_LOG_ERROR("ublk%u queue %u: brick %s unreachable for %u ms: failing I/O at %llu", dev_.dev_id, q_id_,
                       dev_.volume->options().brick.endpoint.to_string().c_str(),
                       dev_.volume->options().io_timeout_ms, static_cast<unsigned long long>(t.offset));
      return commit(t, -EIO);
    }
    if (retry_conn) {
      t.retry_at = now + t.backoff;
      t.backoff = std::min(t.backoff * 2, std::chrono::milliseconds(500));
      m.retry_tags.push_back(&t);
      return;
    }
    return submit_data(t);
  }
  bool fua = (t.flags & UBLK_IO_F_FUA) != 0;
  if (fua && (t.op == UBLK_IO_OP_WRITE || t.zeroed)) return start_sync_group(t, false);
  commit(t, (t.op == UBLK_IO_OP_READ || t.op == UBLK_IO_OP_WRITE) ? static_cast<int>(t.len) : 0);
}

// DISCARD / WRITE_ZEROES: whole blocks are freed at the brick, partial ones
// (or whole ones the brick refuses to free: EBUSY) are written with zeros.
void UblkQueue::do_discard(Tag& t) {
  size_t before = t.pieces.size();
  Status st = plan_discard(*dev_.volume, t.offset, t.len, impl_->zeros.data(), &t, t.pieces);
  if (!st) {
    PBRICK_LOG_ERROR("ublk%u queue %u: discard: %s", dev_.dev_id, q_id_, st.error().message().c_str());
    return commit(t, to_blk_errno(st.error().errnum()));
  }
  t.zeroed = t.pieces.size() > before;
  submit_data(t);
}

// FUA (this queue only) or FLUSH (every queue): each syncs its own channel.
void UblkQueue::start_sync_group(Tag& t, bool all_queues) {
  size_t n = all_queues ? dev_.queues.size() : 1;
  t.group_status.store(0, std::memory_order_relaxed);
  t.group_pending.store(static_cast<int>(n), std::memory_order_release);
  for (size_t i = 0; i < n; i++) {
    UblkQueue* target = all_queues ? dev_.queues[i] : this;
    if (target == this) {
      Impl& m = *impl_;
      SyncJob* job = m.take_job();
      job->owner = this;
      job->tag = t.tag;
      job->deadline = t.deadline;
      start_sync_job(job);
    } else {
      target->post_sync(this, t.tag);
    }
  }
}

void UblkQueue::start_sync_job(SyncJob* job) {
  Impl& m = *impl_;
  job->runner = this;
  job->status = -1;
  job->op = DataChannel::Op{};
  job->op.buf = &job->scratch;
  job->op.ctx = job;
  job->op.done = [](DataChannel::Op* op, int status) {
    SyncJob* j = static_cast<SyncJob*>(op->ctx);
    j->status = status;
    j->runner->impl_->ready_syncs.push_back(j);
  };
  m.backlog.push(&job->op, true);
}

void UblkQueue::advance_sync(SyncJob* job) {
  Impl& m = *impl_;
  if (job->status == 0) return finish_sync(job, 0);
  if (is_retryable(job->status) || job->status < 0) {
    if (Clock::now() > job->deadline) return finish_sync(job, EIO);
    m.retry_syncs.push_back(job);
    return;
  }
  finish_sync(job, job->status);
}

void UblkQueue::finish_sync(SyncJob* job, int status) {
  Impl& m = *impl_;
  UblkQueue* owner = job->owner;
  uint16_t tag = job->tag;
  m.free_jobs.push_back(job);
  Tag& t = owner->impl_->tags[tag];
  if (status != 0) {
    int expected = 0;
    t.group_status.compare_exchange_strong(expected, status, std::memory_order_acq_rel);
  }
  if (t.group_pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (owner == this) {
    int st = t.group_status.load(std::memory_order_acquire);
    if (st != 0) return commit(t, to_blk_errno(st));
    commit(t, t.op == UBLK_IO_OP_WRITE ? static_cast<int>(t.len) : 0);
  } else {
    owner->post_flush_done(tag);
  }
}

void UblkQueue::take_inbox() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.inbox_mu);
    m.taken.swap(m.inbox);
    m.wake_pending = false;
  }
  for (const Impl::Msg& msg : m.taken) {
    Tag& t = m.tags[msg.tag];
    if (msg.flush_done) {
      int st = t.group_status.load(std::memory_order_acquire);
      if (st != 0) {
        commit(t, to_blk_errno(st));
      } else {
        commit(t, t.op == UBLK_IO_OP_WRITE ? static_cast<int>(t.len) : 0);
      }
      continue;
    }
    SyncJob* job = m.take_job();
    job->owner = msg.owner;
    job->tag = msg.tag;
    job->deadline = Clock::now() + std::chrono::milliseconds(dev_.volume->options().io_timeout_ms);
    start_sync_job(job);
  }
  m.taken.clear();
}

void UblkQueue::dispatch_channel() {
  Impl& m = *impl_;
  // Completes a finished teardown; reconnects when ops wait (or fails them
  // for their requests to retry or give up); feeds the channel what fits;
  // hands queued work to the transport in one batch and keeps the channel's
  // SQEs armed.
  Status st = m.channel->flush(*this);
  if (!st) teardown(st.error());
  if (!m.backlog.empty() && !m.channel->connected()) {
    if (int err = ensure_connected(); err != 0) m.backlog.fail_all(err);
  }
  m.backlog.feed(*m.channel);
  st = m.channel->flush(*this);
  if (!st) teardown(st.error());
}

void UblkQueue::on_tick() {
  Impl& m = *impl_;
  auto now = Clock::now();
  auto timeout = std::chrono::milliseconds(dev_.volume->options().io_timeout_ms);
  if (m.channel->connected() && m.channel->inflight() > 0 && now - m.channel->last_progress() > timeout) {
    teardown(Error(ETIMEDOUT, "no reply within " + std::to_string(timeout.count()) + " ms"));
  }
  if (!m.retry_tags.empty()) {
    std::vector<Tag*> due;
    size_t keep = 0;
    for (Tag* t : m.retry_tags) {
      if (t->retry_at <= now) {
        due.push_back(t);
      } else {
        m.retry_tags[keep++] = t;
      }
    }
    m.retry_tags.resize(keep);
    for (Tag* t : due) submit_data(*t);
  }
  if (!m.retry_syncs.empty()) {
    std::vector<SyncJob*> due;
    due.swap(m.retry_syncs);
    for (SyncJob* j : due) start_sync_job(j);
  }
}

void UblkQueue::on_cqe(io_uring_cqe* cqe) {
  Impl& m = *impl_;
  m.sqes_inflight--;
  int res = cqe->res;
  uint64_t ud = io_uring_cqe_get_data64(cqe);
  switch (kind_of(ud)) {
    case kIo: {
      Tag& t = m.tags[ud & 0xFFFF];
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
    case kChannel: {
      Status st = m.channel->on_cqe(static_cast<uint8_t>(ud & 0xFF), res);
      if (!st) teardown(st.error());
      break;
    }
    case kTick:
      if (!m.stopping) {
        on_tick();
        arm_tick();
      }
      break;
    case kEvent:
      take_inbox();
      if (!m.stopping) arm_event();
      break;
    case kCancel:
      break;
  }
}

void UblkQueue::run() {
  Impl& m = *impl_;
  if (cpu_ >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
      PBRICK_LOG_WARN("ublk%u queue %u: cannot pin to CPU %d: %s", dev_.dev_id, q_id_, cpu_, std::strerror(errno));
    }
  }
  for (Tag& t : m.tags) commit(t, INT32_MIN);  // FETCH_REQ
  arm_event();
  arm_tick();
  int err = io_uring_submit(&m.ring);
  {
    std::lock_guard lock(m.ready_mu);
    m.ready_done = true;
    if (err < 0) m.ready_status = Error(-err, "queue " + std::to_string(q_id_) + ": submitting FETCH_REQ");
  }
  m.ready_cv.notify_all();
  if (err < 0) return;

  for (;;) {
    if (!m.stopping && m.aborted >= dev_.depth) {
      // STOP_DEV (or the device went away): every tag came back aborted.
      m.stopping = true;
      teardown(Error(ESHUTDOWN, "stopping"));
      m.channel->stop(*this);
      io_uring_prep_cancel64(get_sqe(pack(kCancel, 0)), pack(kTick, 0), 0);
      io_uring_prep_cancel64(get_sqe(pack(kCancel, 0)), pack(kEvent, 0), 0);
    }
    if (m.sqes_inflight == 0) break;
    err = io_uring_submit_and_wait(&m.ring, 1);
    if (err < 0 && err != -EINTR) {
      PBRICK_LOG_ERROR("ublk%u queue %u: io_uring_submit_and_wait: %s", dev_.dev_id, q_id_, std::strerror(-err));
      break;
    }
    unsigned head, count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&m.ring, head, cqe) {
      on_cqe(cqe);
      count++;
    }
    io_uring_cq_advance(&m.ring, count);
    for (int round = 0; round < 64; round++) {
      // Swapped with scratch lists that keep their capacity: no allocation
      // per request in steady state.
      m.tags_scratch.clear();
      m.tags_scratch.swap(m.ready_tags);
      for (Tag* t : m.tags_scratch) advance(*t);
      m.syncs_scratch.clear();
      m.syncs_scratch.swap(m.ready_syncs);
      for (SyncJob* j : m.syncs_scratch) advance_sync(j);
      dispatch_channel();
      if (m.ready_tags.empty() && m.ready_syncs.empty()) break;
    }
  }
  m.backlog.fail_all(ESHUTDOWN);
  m.channel->disconnect(ESHUTDOWN);
}

}  // namespace pbrick
