// One ublk hardware queue of pbrick-gateway: a thread pinned to one CPU, one
// io_uring, and one pipelined DataChannel to the brick driven from that same
// ring. The ring carries both the ublk URING_CMDs (FETCH_REQ and
// COMMIT_AND_FETCH_REQ on /dev/ublkcN, one per tag, always one outstanding)
// and the brick socket's sendmsg/recv, so a request goes from the kernel to
// the brick and back without a thread hop.
//
// user_data of every SQE on a queue ring:
//   bits 56..63  kind: 1 ublk tag command (FETCH or COMMIT_AND_FETCH)
//                      2 brick sendmsg, 3 brick recv
//                      4 tick timer (retries, reconnects, stall detection)
//                      5 eventfd read (messages from other queues)
//                      6 cancel
//   bits 0..15   the tag, for kind 1; 0 otherwise
//
// Copy mode: each tag owns a buffer of max_io_buf_bytes (one aligned
// allocation of depth x max_io_buf_bytes per queue), passed as the `addr` of
// its FETCH/COMMIT_AND_FETCH; the kernel copies WRITE data into it before it
// hands the request over and READ data out of it on commit.
//
// Per request (ublk_plan.h, which tests drive without a kernel): READ/WRITE
// are split at 2 MiB block boundaries (at most two pieces, max_io_buf_bytes
// <= 2 MiB). The handle comes from Volume::cached();
// a block not mapped yet is mapped with Volume::map_block ON THIS THREAD (a
// blocking control round trip that stalls this queue meanwhile: acceptable
// for v1, it happens once per block). Reads of unallocated blocks are zeros
// without a round trip. EKEYREJECTED invalidates the handle and retries;
// connection loss reconnects the channel (at most every 100 ms) and retries
// until the volume's io_timeout, then the request completes with -EIO; a
// brick that serves another store than the volume's fails it at once with
// -EIO. Every op reaches the channel through a ChannelBacklog that holds what
// does not fit its slots (a discard's zero-fill pieces, the syncs of every
// queue's FLUSHes) until slots free up.
// FUA writes are followed by a sync-read on this queue's channel. FLUSH must
// persist writes completed on any queue, so it asks every queue (itself
// included, through the same message path) to sync its own channel and
// completes when all have: the only cross-thread hop, and only for FLUSH.
// DISCARD and WRITE_ZEROES free whole 2 MiB blocks (Volume::discard_block,
// blocking, on this thread) and zero-fill partial blocks with writes.
//
// Every request is committed with a result on every path.
#pragma once

#include <linux/ublk_cmd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "gateway/data_channel.h"
#include "gateway/volume.h"

struct io_uring_sqe;
struct io_uring_cqe;

namespace pbrick {

class UblkQueue;

// State every queue of one device shares.
struct UblkDevice {
  Volume* volume = nullptr;
  uint32_t dev_id = 0;
  uint16_t depth = 0;
  uint32_t max_io_bytes = 0;
  int cdev_fd = -1;
  bool ioctl_encode = true;  // UBLK_U_IO_* (ioctl-encoded) rather than the legacy numbers
  std::vector<UblkQueue*> queues;
};

class UblkQueue final : public ChannelRing {
 public:
  UblkQueue(UblkDevice& dev, uint16_t q_id, int cpu);
  ~UblkQueue();
  UblkQueue(const UblkQueue&) = delete;
  UblkQueue& operator=(const UblkQueue&) = delete;

  // Maps the descriptors, allocates buffers, creates the ring, connects the
  // channel and starts the thread, which submits a FETCH_REQ for every tag.
  Status start();
  // Blocks until the thread submitted its FETCHes (or failed: the error).
  Status wait_ready();
  // Waits for the thread: it ends once the kernel aborted every tag (STOP_DEV,
  // or the device going away).
  void join();

  // From any thread: sync this queue's channel for FLUSH tag `tag` of queue
  // `owner`; the owner is told through its inbox when the last one finishes.
  void post_sync(UblkQueue* owner, uint16_t tag);

  struct Tag;
  struct SyncJob;

 private:
  void run();
  void post_flush_done(uint16_t tag);
  void post(bool flush_done, UblkQueue* owner, uint16_t tag);
  void on_cqe(io_uring_cqe* cqe);
  void handle_request(Tag& t);
  void submit_data(Tag& t);
  void advance(Tag& t);
  void do_discard(Tag& t);
  void start_sync_group(Tag& t, bool all_queues);
  void start_sync_job(SyncJob* job);
  void advance_sync(SyncJob* job);
  void finish_sync(SyncJob* job, int status);
  void commit(Tag& t, int result);
  // 0 when the channel is connected (reconnecting at most every 100 ms),
  // else the errno to fail waiting ops with.
  int ensure_connected();
  void teardown(const Error& why);
  io_uring_sqe* channel_sqe(uint8_t event) override;
  void cancel_channel_sqe(uint8_t event) override;
  void dispatch_channel();
  void on_tick();
  void take_inbox();
  io_uring_sqe* get_sqe(uint64_t user_data);
  void arm_event();
  void arm_tick();

  UblkDevice& dev_;
  uint16_t q_id_;
  int cpu_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace pbrick
