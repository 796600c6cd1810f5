#include "gateway/ublk_ctrl.h"

#include <fcntl.h>

#include <cstring>
#include <chrono>
#include <string>
#include <thread>

namespace pbrick {

const char* ublk_state_name(uint16_t state) {
  switch (state) {
    case UBLK_S_DEV_DEAD: return "dead";
    case UBLK_S_DEV_LIVE: return "live";
    case UBLK_S_DEV_QUIESCED: return "quiesced";
    case UBLK_S_DEV_FAIL_IO: return "fail-io";
    default: return "unknown";
  }
}

UblkControl::UblkControl(UblkControl&& other) noexcept
    : fd_(std::move(other.fd_)), ring_(std::move(other.ring_)), ioctl_encode_(other.ioctl_encode_),
      features_(other.features_), broken_(std::move(other.broken_)) {}

UblkControl::~UblkControl() = default;

Result<UblkControl> UblkControl::Open() {
  UblkControl c;
  c.fd_.reset(::open("/dev/ublk-control", O_RDWR | O_CLOEXEC));
  if (!c.fd_.valid()) return errno_error("open /dev/ublk-control (is ublk_drv loaded?)");
  c.ring_ = std::make_unique<Uring>();
  Status st = c.ring_->init(4, IORING_SETUP_SQE128);
  if (st) st = c.ring_->enable();
  if (!st) return st.error().wrap("io_uring (SQE128) for ublk control");
  // GET_FEATURES exists only ioctl-encoded; a kernel without it predates the
  // encoding too.
  uint64_t features = 0;
  auto r = c.command(UBLK_CMD_GET_FEATURES, true, UINT32_MAX, &features, sizeof features, 0, "GET_FEATURES");
  if (!c.broken_.empty()) return r.error();  // not "a kernel without GET_FEATURES"
  if (r) {
    c.features_ = features;
    c.ioctl_encode_ = (features & UBLK_F_CMD_IOCTL_ENCODE) != 0;
  } else {
    c.features_ = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
    c.ioctl_encode_ = false;
  }
  return c;
}

Result<int> UblkControl::command(unsigned nr, bool read_dir, uint32_t dev_id, void* buf, uint16_t len,
                                 uint64_t data0, const char* what) {
  if (!broken_.empty()) return Error(EIO, std::string(what) + ": ublk control unusable since " + broken_);
  io_uring_sqe* sqe = ring_->sqe(nr);
  std::memset(sqe, 0, 2 * sizeof(*sqe));  // SQE128
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_.get();
  if (ioctl_encode_) {
    sqe->cmd_op = read_dir ? _IOR('u', nr, struct ublksrv_ctrl_cmd) : _IOWR('u', nr, struct ublksrv_ctrl_cmd);
  } else {
    sqe->cmd_op = nr;
  }
  auto* cmd = reinterpret_cast<ublksrv_ctrl_cmd*>(sqe->cmd);
  cmd->dev_id = dev_id;
  cmd->queue_id = static_cast<uint16_t>(-1);
  cmd->addr = reinterpret_cast<uint64_t>(buf);
  cmd->len = len;
  cmd->data[0] = data0;
  io_uring_sqe_set_data64(sqe, nr);
  int res = 0;
  // EAGAIN / EBUSY: the kernel is short of memory or has completions to
  // flush; the command waits in the ring and is submitted again.
  for (int busy = 0; ring_->inflight() > 0;) {
    int err = ring_->submit_and_wait(1);
    if (err == -EAGAIN || err == -EBUSY) {
      if (++busy > 1000) err = -ETIMEDOUT;
      if (err != -ETIMEDOUT) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
    }
    if (err < 0 && err != -EINTR) {
      broken_ = std::string(what) + " could not be waited for";
      return Error(-err, std::string(what) + ": io_uring_submit_and_wait");
    }
    ring_->drain([&res](uint64_t, int r) { res = r; });
  }
  if (res < 0) return Error(-res, std::string(what) + " of ublk device " + std::to_string(static_cast<int32_t>(dev_id)));
  return res;
}

Status UblkControl::add_dev(ublksrv_ctrl_dev_info* info) {
  auto r = command(UBLK_CMD_ADD_DEV, false, info->dev_id, info, sizeof *info, 0, "ADD_DEV");
  if (!r) return r.error();
  return Status::Ok();
}

Status UblkControl::set_params(uint32_t dev_id, ublk_params* params) {
  params->len = sizeof *params;
  auto r = command(UBLK_CMD_SET_PARAMS, false, dev_id, params, sizeof *params, 0, "SET_PARAMS");
  if (!r) return r.error();
  return Status::Ok();
}

Result<ublk_params> UblkControl::get_params(uint32_t dev_id) {
  ublk_params params{};
  params.len = sizeof params;
  auto r = command(UBLK_CMD_GET_PARAMS, true, dev_id, &params, sizeof params, 0, "GET_PARAMS");
  if (!r) return r.error();
  return params;
}

Status UblkControl::start_dev(uint32_t dev_id, pid_t pid) {
  auto r = command(UBLK_CMD_START_DEV, false, dev_id, nullptr, 0, static_cast<uint64_t>(pid), "START_DEV");
  if (!r) return r.error();
  return Status::Ok();
}

Status UblkControl::stop_dev(uint32_t dev_id) {
  auto r = command(UBLK_CMD_STOP_DEV, false, dev_id, nullptr, 0, 0, "STOP_DEV");
  if (!r) return r.error();
  return Status::Ok();
}

Status UblkControl::del_dev(uint32_t dev_id) {
  auto r = command(UBLK_CMD_DEL_DEV, false, dev_id, nullptr, 0, 0, "DEL_DEV");
  if (!r) return r.error();
  return Status::Ok();
}

Status UblkControl::del_dev_async(uint32_t dev_id) {
  auto r = command(UBLK_CMD_DEL_DEV_ASYNC, true, dev_id, nullptr, 0, 0, "DEL_DEV_ASYNC");
  if (!r) return r.error();
  return Status::Ok();
}

Result<ublksrv_ctrl_dev_info> UblkControl::get_dev_info(uint32_t dev_id) {
  ublksrv_ctrl_dev_info info{};
  auto r = command(UBLK_CMD_GET_DEV_INFO, true, dev_id, &info, sizeof info, 0, "GET_DEV_INFO");
  if (!r) return r.error();
  return info;
}

Result<cpu_set_t> UblkControl::get_queue_affinity(uint32_t dev_id, uint16_t q_id) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  // The queue's number travels in data[0]; the kernel fills in a bitmap of
  // its possible CPUs, at most `len` bytes of it.
  auto r = command(UBLK_CMD_GET_QUEUE_AFFINITY, true, dev_id, &cpus, sizeof cpus, q_id, "GET_QUEUE_AFFINITY");
  if (!r) return r.error();
  return cpus;
}

Status UblkControl::start_user_recovery(uint32_t dev_id) {
  auto r = command(UBLK_CMD_START_USER_RECOVERY, false, dev_id, nullptr, 0, 0, "START_USER_RECOVERY");
  if (!r) return r.error();
  return Status::Ok();
}

Status UblkControl::end_user_recovery(uint32_t dev_id, pid_t pid) {
  auto r = command(UBLK_CMD_END_USER_RECOVERY, false, dev_id, nullptr, 0, static_cast<uint64_t>(pid),
                   "END_USER_RECOVERY");
  if (!r) return r.error();
  return Status::Ok();
}

}  // namespace pbrick
