// The volume engine for frontends whose callers block per request (the nbdkit
// plugin: nbdkit runs each NBD request on one of its worker threads).
//
// The engine is the volume I/O core (volume_io.h) plus a thread hand-off: it
// runs `queues` event loops, each one thread with one io_uring and one
// pipelined DataChannel to every brick of the volume (VolumeChannels). A
// caller thread is bound to one loop (round robin on first use); the core
// plans its request and resolves each piece's handle on the caller's thread
// (the Volume's slow path runs there, never on a loop); the engine hands the
// pieces to the caller's loop in one batch and sleeps until they complete,
// then lets the core decide what next. So many requests are in flight per
// connection, no thread exists per request, and nothing is allocated per
// request in steady state (pieces live in a thread-local of the caller).
//
// FLUSH asks every loop whose channels carried writes since their last sync
// to sync exactly those bricks, and completes after all of them: a flush from
// any caller persists the writes every caller has seen completed (NBD
// multi-conn safe). A loop with nothing to sync is not woken.
//
// Sending: while a caller's loop sleeps in its ring, the caller sends its
// pieces itself, on the loop's channels (a TCP sendmsg, an RDMA
// ibv_post_send) under a lock the loop holds whenever it is awake; the loop
// wakes for the reply alone. A caller that finds its loop awake queues the
// pieces for it instead, and the loop takes them before it sleeps again, so
// no eventfd write is needed then either. Either way one loop thread
// receives every reply of its channels.
//
// Waiting: a loop sleeps in its ring until a completion or a caller's wake-up
// comes. With poll_us, a loop that has I/O in flight first polls its ring for
// up to that long (Uring::submit_and_wait_polling), so a brick reply that
// comes within the bound costs the loop no sleep and wake-up; an idle loop
// never polls. A polling loop takes every caller's pieces itself (it never
// lets go of its lock to sleep in a way a caller could use).
//
// Thread-safe: read/write/flush/discard from any number of threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "gateway/resync.h"
#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

struct EngineOptions {
  uint32_t queues = 2;   // event loops, i.e. connections per brick
  uint32_t depth = 128;  // requests in flight per connection
  // Bounded busy-polling: while a loop has I/O in flight, it checks its ring
  // for completions for up to this long before it sleeps (0: never, it
  // sleeps at once). Trades CPU for a wake-up per reply; a loop with
  // nothing in flight never spins.
  uint32_t poll_us = 0;
};

class Engine {
 public:
  // Largest request sent as one; frontends advertise it (nbdkit block_size
  // maximum). A larger read or write goes as such parts in turn.
  static constexpr uint64_t kMaxRequest = 16ull << 20;
  static constexpr uint32_t kMaxQueues = 64;
  static constexpr uint32_t kMaxPollUs = pbrick::kMaxPollUs;

  static Result<std::unique_ptr<Engine>> Start(std::unique_ptr<Volume> volume, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  Volume& volume() { return *volume_; }
  // Mirror: the resync thread (null for the other layouts).
  MirrorResync* resync() { return resync_.get(); }
  uint64_t size() const { return volume_->size(); }

  // Byte ranges must lie inside the volume (EINVAL).
  // Errors: EIO once a brick stayed unreachable for the volume's io_timeout;
  // kErrWrongStore at once while a brick serves another store than the one
  // the volume was opened on (see volume.h).
  Status read(void* buf, uint64_t count, uint64_t offset);
  Status write(const void* buf, uint64_t count, uint64_t offset, bool fua);
  Status flush();
  // One client of a frontend that serves several at once (an NBD connection
  // under multi-conn). Writes a brick's reboot lost (data_channel.h) fail the
  // first FLUSH that meets them with EIO, whichever client sent it; so that
  // every client open at the loss hears of it, as Linux tells each open file
  // of a writeback error, a session's own FLUSH or FUA also fails EIO once for
  // losses found since the session began or was last told. A session begun
  // after a loss is not told of it.
  struct Session {
    explicit Session(uint64_t told) : losses_told(told) {}
    std::atomic<uint64_t> losses_told;
  };
  Session begin_session() const { return Session(volume_->writes_lost()); }
  // What a FLUSH or FUA request of `session` answers, given `result`, the
  // engine's answer to it: EIO tells the session of every loss so far (one
  // of its requests running at once gets it). Call after the request
  // completed; any thread.
  Status answer_for(Session& session, Status result) const;

  // TRIM and WRITE_ZEROES: whole 2 MiB blocks are freed at the brick (they read
  // back as zeros); the partial blocks at either end are zero-filled. With
  // `keep_allocated` (a zero that must leave the range provisioned: NBD's
  // NO_HOLE) every byte is written with zeros instead, allocating holes.
  Status discard(uint64_t count, uint64_t offset, bool fua, bool keep_allocated = false);

  // Syncs sent to brick `brick` (of the volume's layout) so far, over all
  // loops (statistics: a FLUSH asks only the bricks that were written).
  uint64_t syncs_sent(uint32_t brick) const;
  // Syncs chained to lone writes so far, over all loops and bricks
  // (statistics; VolumeOptions::chain_syncs).
  uint64_t syncs_chained() const;

  // Waits of the loops that a completion ended within the poll bound, and
  // waits that slept after it (statistics; both 0 without poll_us).
  struct PollStats {
    uint64_t won = 0, lost = 0;
  };
  PollStats poll_stats() const;
  // Batches of pieces or syncs the callers sent themselves, and those they
  // queued for a loop, over all loops (statistics: see Sending above; no
  // direct ones with poll_us).
  struct SubmitStats {
    uint64_t direct = 0, queued = 0;
  };
  SubmitStats submit_stats() const;

  class Loop;

 private:
  Engine(std::unique_ptr<Volume> volume, const EngineOptions& options);
  Loop& my_loop();
  Status transfer(bool is_write, uint8_t* buf, uint64_t count, uint64_t offset);
  // Sends the calling thread's planned pieces round by round until they are
  // done or the core gives up.
  Status run_pieces(const char* what);
  Status sync_loops(bool all, uint64_t offset = 0, uint64_t len = 0);

  std::unique_ptr<Volume> volume_;
  EngineOptions options_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<uint8_t> zeros_;  // one block of zeros for zero-filling
  // Mirror: resyncs stale copies once their bricks are back (resync.h).
  // Last: stopped before the loops and the volume go.
  std::unique_ptr<MirrorResync> resync_;
};

}  // namespace pbrick
