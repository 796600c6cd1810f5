// The ublk control device (/dev/ublk-control) and the bits of the ublk uapi
// that Debian 12's <linux/ublk_cmd.h> predates.
//
// Control commands are IORING_OP_URING_CMD on a private io_uring created with
// IORING_SETUP_SQE128 (struct ublksrv_ctrl_cmd is 32 bytes and lives in the
// SQE's command area). Commands are sent ioctl-encoded (_IOWR('u', NR, ...))
// when the kernel reports UBLK_F_CMD_IOCTL_ENCODE in GET_FEATURES (every
// kernel since 6.0 that has GET_FEATURES; 6.12 requires it unless built with
// the legacy opcodes), else with the legacy bare numbers.
//
// Not thread-safe: the thread that opened a UblkControl drives it (its ring
// is a single-issuer one where the kernel has those, common/uring.h).
#pragma once

#include <linux/ublk_cmd.h>
#include <liburing.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/uring.h"
#include "common/unique_fd.h"

// --- uapi additions (kernel 6.1 .. 6.12), defined only where missing ----------
#ifndef UBLK_F_UNPRIVILEGED_DEV
#define UBLK_F_UNPRIVILEGED_DEV (1ULL << 5)
#endif
#ifndef UBLK_F_CMD_IOCTL_ENCODE
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#endif
#ifndef UBLK_F_USER_COPY
#define UBLK_F_USER_COPY (1ULL << 7)
#endif
#ifndef UBLK_F_USER_RECOVERY_FAIL_IO
#define UBLK_F_USER_RECOVERY_FAIL_IO (1ULL << 9)
#endif
#ifndef UBLK_CMD_GET_FEATURES
#define UBLK_CMD_GET_FEATURES 0x13
#endif
#ifndef UBLK_U_CMD_GET_FEATURES
#define UBLK_U_CMD_GET_FEATURES _IOR('u', UBLK_CMD_GET_FEATURES, struct ublksrv_ctrl_cmd)
#endif
#ifndef UBLK_U_IO_FETCH_REQ
#define UBLK_U_IO_FETCH_REQ _IOWR('u', UBLK_IO_FETCH_REQ, struct ublksrv_io_cmd)
#endif
#ifndef UBLK_U_IO_COMMIT_AND_FETCH_REQ
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ _IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, struct ublksrv_io_cmd)
#endif
// Linux 6.11+: DEL_DEV that returns at once; the device goes once its char
// device is released (by the exit of a daemon whose queues still hold it).
#ifndef UBLK_CMD_DEL_DEV_ASYNC
#define UBLK_CMD_DEL_DEV_ASYNC 0x14
#endif
#ifndef UBLK_S_DEV_FAIL_IO
#define UBLK_S_DEV_FAIL_IO 3
#endif
// The per-queue I/O descriptor array is mmap()ed from the char device at
// queue_id * (this many descriptors) * sizeof(ublksrv_io_desc).
#ifndef UBLK_MAX_QUEUE_DEPTH
#define UBLK_MAX_QUEUE_DEPTH 4096
#endif
#ifndef UBLKSRV_CMD_BUF_OFFSET
#define UBLKSRV_CMD_BUF_OFFSET 0
#endif

namespace pbrick {

const char* ublk_state_name(uint16_t state);

class UblkControl {
 public:
  // Opens /dev/ublk-control (ENOENT: no ublk_drv) and learns the features.
  static Result<UblkControl> Open();
  UblkControl(UblkControl&& other) noexcept;
  UblkControl& operator=(UblkControl&&) = delete;
  ~UblkControl();

  uint64_t features() const { return features_; }

  // dev_info->dev_id == UINT32_MAX lets the kernel pick the id; it is filled in.
  Status add_dev(ublksrv_ctrl_dev_info* info);
  Status set_params(uint32_t dev_id, ublk_params* params);
  // The parameters SET_PARAMS gave the device (its size, block size, attrs).
  Result<ublk_params> get_params(uint32_t dev_id);
  Status start_dev(uint32_t dev_id, pid_t daemon_pid);  // blocks until every queue fetched
  Status stop_dev(uint32_t dev_id);
  Status del_dev(uint32_t dev_id);  // waits until the char device is released
  // Deletes without waiting (EOPNOTSUPP before Linux 6.11): for a daemon that
  // fails with its queues still holding the char device and then exits.
  Status del_dev_async(uint32_t dev_id);
  Result<ublksrv_ctrl_dev_info> get_dev_info(uint32_t dev_id);
  // The CPUs whose requests the kernel hands to queue `q_id` (after ADD_DEV).
  Result<cpu_set_t> get_queue_affinity(uint32_t dev_id, uint16_t q_id);
  Status start_user_recovery(uint32_t dev_id);
  Status end_user_recovery(uint32_t dev_id, pid_t daemon_pid);

 private:
  UblkControl() = default;
  // Returns the CQE's result (>= 0) or the error.
  Result<int> command(unsigned nr, bool read_dir, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                      const char* what);

  UniqueFd fd_;
  std::unique_ptr<Uring> ring_;  // SQE128, driven by the thread that opened it
  bool ioctl_encode_ = true;
  uint64_t features_ = 0;
  // A command whose completion could not be waited for may still complete:
  // its result must not be taken for a later command's, so none is sent.
  std::string broken_;
};

}  // namespace pbrick
