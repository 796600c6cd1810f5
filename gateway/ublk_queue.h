// One ublk hardware queue of pbrick-gateway: a thread (on any CPU, or with
// attach --pin-queues on the CPUs the kernel maps to the queue), one io_uring
// (common/uring.h), and the volume I/O core's channels to every brick
// (VolumeChannels, volume_io.h) driven from that same ring. The ring carries
// both the ublk URING_CMDs (FETCH_REQ and COMMIT_AND_FETCH_REQ on /dev/ublkcN,
// one per tag, always one outstanding) and the bricks' sockets (or RDMA
// completion channels), so a request goes from the kernel to a brick and back
// without a thread hop.
//
// Kinds of the ring's SQEs (Uring's user_data packing; payload in brackets):
//   1 ublk tag command, FETCH or COMMIT_AND_FETCH [the tag]
//   2 a brick channel's SQE [VolumeChannels' brick and event]
//   4 tick timer (retries, reconnects, stall detection)
//   5 eventfd read (messages from other queues, mappings finished)
//   6 cancel
//
// Copy mode: each tag owns a buffer of max_io_buf_bytes (one aligned
// allocation of depth x max_io_buf_bytes per queue), passed as the `addr` of
// its FETCH/COMMIT_AND_FETCH; the kernel copies WRITE data into it before it
// hands the request over and READ data out of it on commit.
//
// What a request does to the volume is the core's (volume_io.h): its pieces,
// their handles, zero-filled reads of unallocated blocks, discards, retries
// and timeouts, which bricks a sync goes to. The queue only turns a tag into
// a core request and the outcome into a COMMIT. A block not mapped yet is
// mapped by the queue's BlockMapper (block_mapper.h): its control workers do
// the blocking ALLOC + MAP (a brick that is down: until the io_timeout) and
// wake this ring through the eventfd; the tags waiting for that block are
// parked meanwhile (several on one block share one mapping), then planned
// again, or failed with the mapping's error; every other tag keeps flowing.
// Requests waiting for a retry are resent from the tick. Errors are committed as -EIO (-ENOSPC, -EINVAL,
// -EOPNOTSUPP where they apply).
// FUA writes are followed by a sync of the bricks this queue wrote to. FLUSH
// must persist writes completed on any queue, so it asks every queue that has
// unsynced writes (itself included, through the same message path) to sync
// its own channels and completes when all have: the only cross-thread hop,
// and only for FLUSH.
//
// Every request is committed with a result on every path.
//
// Waiting: the thread sleeps in io_uring_submit_and_wait. With a poll bound
// (UblkDevice::poll) it first checks the ring without sleeping, for up to the
// bound, but only while its channels have I/O in flight to a brick
// (VolumeChannels::busy): an idle queue never spins.
#pragma once

#include <linux/ublk_cmd.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "gateway/data_channel.h"
#include "gateway/volume.h"


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
  // While a queue has I/O in flight to a brick, it checks its ring for up to
  // this long before it sleeps (0: it sleeps at once; attach --poll-us).
  std::chrono::microseconds poll{0};
  // recover: a queue whose bricks refuse its data connections at start still
  // starts, and connects when it has I/O (which waits for the bricks until
  // the I/O timeout, as after any connection loss). Once the kernel began
  // the recovery, a queue that fails to start leaves the device beyond any
  // later recover.
  bool connect_lazily = false;
};

class UblkQueue final {
 public:
  // `cpus`: the CPUs the queue's thread may run on (nullopt: any, as the
  // process may).
  UblkQueue(UblkDevice& dev, uint16_t q_id, std::optional<cpu_set_t> cpus);
  ~UblkQueue();
  UblkQueue(const UblkQueue&) = delete;
  UblkQueue& operator=(const UblkQueue&) = delete;

  // prepare() then launch().
  Status start();
  // What can fail and needs no char device: allocates the buffers, creates
  // the ring, registers the buffers and connects the channels (recover
  // does all of it, for every queue, before the kernel begins the recovery:
  // a queue that fails after that leaves the device beyond any later one).
  Status prepare();
  // Maps the descriptors from UblkDevice::cdev_fd and starts the thread,
  // which submits a FETCH_REQ for every tag. After prepare().
  Status launch();
  // Blocks until the thread submitted its FETCHes (or failed: the error).
  Status wait_ready();
  // Waits for the thread: it ends once the kernel aborted every tag (STOP_DEV,
  // or the device going away).
  void join();

  // From any thread: sync this queue's channels for FLUSH tag `tag` of queue
  // `owner`; the owner is told through its inbox when the last one finishes.
  void post_sync(UblkQueue* owner, uint16_t tag);
  // Any thread: whether this queue's channels carried writes not synced yet.
  bool needs_sync() const;

  struct Tag;
  struct SyncWork;

 private:
  void run();
  void post_flush_done(uint16_t tag);
  void post(bool flush_done, UblkQueue* owner, uint16_t tag);
  void on_cqe(uint64_t user_data, int res);
  void handle_request(Tag& t);
  void submit_data(Tag& t);
  void advance(Tag& t);
  void do_discard(Tag& t);
  void resume(Tag& t);
  void start_sync_group(Tag& t, bool all_queues);
  // `fua`: only the bricks the owner's tag wrote to (SyncJob::bricks).
  void start_sync(UblkQueue* owner, uint16_t tag, bool fua);
  void advance_sync(SyncWork* work);
  void finish_sync(SyncWork* work, int status);
  void finish_group(Tag& t);
  void commit(Tag& t, int result);
  void on_tick();
  void take_inbox();
  void take_maps();
  void arm_event();
  void arm_tick();

  UblkDevice& dev_;
  uint16_t q_id_;
  std::optional<cpu_set_t> cpus_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace pbrick
