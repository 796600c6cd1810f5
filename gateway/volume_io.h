// The volume I/O core: what every frontend does with a volume's data, written
// once. The nbdkit engine (engine.h) adds only its hand-off from caller
// threads to event loops, the ublk queue (ublk_queue.h) only FETCH/COMMIT and
// its ring; neither knows about blocks, bricks, handles or retries.
//
// A request (READ / WRITE / DISCARD / WRITE_ZEROES of a byte range, FUA, FLUSH)
// goes through the core like this:
//
//  1. plan_rw() / plan_discard() turn it into IoPieces, one per (brick, block)
//     it touches: the layout (Volume::brick_of, block_vaddr) decides where each
//     lives; a mirrored volume's writes become one piece per in-sync copy and
//     its reads take one copy (gateway/mirror.h). A discard frees whole blocks at once and becomes zero-fill WRITE
//     pieces only for what it cannot free (partial blocks; blocks someone else
//     maps, whose FREE the brick refuses with EBUSY).
//  2. queue_round() resolves each piece still to do: reads of unallocated
//     blocks are zeros without a round trip; a block not mapped yet is mapped
//     (allocated first for a write: thin provisioning), on the caller's
//     thread, or, given a BlockMapper (block_mapper.h), on its control
//     worker while the request waits and the loop serves others; the rest go
//     to the PieceSink (the loop's channel to the piece's brick).
//  3. Once every op of the round completed, IoRetry::settle() applies the one
//     set of retry rules (fate_of): EKEYREJECTED forgets the handle and sends
//     again at once (remapped); a lost connection sends again after a backoff
//     until the volume's io_timeout, then fails with EIO naming the brick; a
//     brick serving another store, or any other error, fails at once.
//  4. FUA and FLUSH: VolumeChannels::sync() syncs exactly the channels of a
//     loop that carried writes since their last completed sync (nothing when
//     there were none), and those of bricks where a write failed since (a
//     FLUSH after failed writes reports a brick it cannot reach instead of
//     succeeding without it); FLUSH asks every loop whose needs_sync() is true.
//     While FLUSH/FUA keep coming, a WRITE sent alone on an RDMA sync-read
//     connection gets a sync-read chained right behind it (SyncChaining): a
//     writer at queue depth 1 that flushes after each write finds the write
//     synced, or its sync on the way, when it flushes, and its FLUSH sends
//     nothing (it waits for that sync if it has not completed yet).
//
// VolumeChannels is the data side of one event loop: one DataChannel to every
// brick of the volume, driven from the loop's Uring, with the reconnect,
// stall-detection and write-tracking rules every loop shares.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/uring.h"
#include "config/cluster_config.h"  // kMaxPollUs
#include "gateway/data_channel.h"
#include "gateway/volume.h"

namespace pbrick {

class BlockMapper;  // block_mapper.h

using IoClock = std::chrono::steady_clock;

// What a completed op's status means for its request; the only place that
// decides which errors are retried.
enum class Fate {
  kDone,       // 0
  kRemap,      // EKEYREJECTED: the handle died (brick restart, discard, remap): map again, send again
  kReconnect,  // the connection is gone (is_connection_error, ESHUTDOWN): send again after a backoff
  kWait,       // kErrHeld: a mirror's resync holds the block (nothing was sent): again in a moment
  kFail,       // anything else, kErrWrongStore included: the request fails
};
// The status queue_round gives the pieces of a request it held back
// (mirror.h); no errno, so no brick's reply is ever taken for it.
inline constexpr int kErrHeld = 0x10000;
// How long a request a resync holds back waits before it tries again.
inline constexpr auto kHeldWait = std::chrono::milliseconds(2);
Fate fate_of(int status);

// The error of I/O to `brick` that failed with `status`: a brick refused for
// serving another store is named with both stores (Volume::refusal).
Error io_error(const Volume& volume, uint32_t brick, int status, std::string_view what);

// A piece of a request: bytes inside one block, on the block's brick.
struct IoPiece {
  DataChannel::Op op;
  void* request = nullptr;  // the owner's request
  uint64_t block = 0;       // the unit: volume block index * copies + copy (the block unless mirrored)
  uint32_t brick = 0;       // Volume::brick_of(block)
  uint32_t in_block = 0;
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  bool is_write = false;
  // Mirror: counted on its block's write counters (begin_writes, mirror.h)
  // until its request completed.
  bool counted = false;
  int status = -1;  // -1: to do; 0: done; > 0: errno of the last attempt
};

// Where a round's ops go: the channel of a loop to the piece's brick.
class PieceSink {
 public:
  virtual void push(uint32_t brick, DataChannel::Op* op) = 0;

 protected:
  ~PieceSink() = default;
};

// Pieces a request sends per round by default; the rest wait for the next.
inline constexpr size_t kMaxPiecesPerRound = 8;

// READ / WRITE of `len` bytes at `offset` of the volume through `buf`:
// appends one piece per block touched.
void plan_rw(const Volume& volume, bool is_write, uint64_t offset, uint64_t len, uint8_t* buf, void* request,
             std::vector<IoPiece>& pieces);

// WRITE_ZEROES that must leave the range allocated (ublk's NOUNMAP, NBD's
// zero without MAY_TRIM): a zero-fill WRITE piece from `zeros` (one block of
// zeros) for every block touched, allocated ones and holes alike; the writes
// allocate the holes. Nothing is freed.
void plan_zero_fill(const Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                    std::vector<IoPiece>& pieces);

// DISCARD / WRITE_ZEROES of `len` bytes at `offset`: frees each whole
// allocated block (Volume::discard_block: blocking control round trips) and
// appends a zero-fill WRITE piece from `zeros` (one block of zeros) for each
// allocated range it does not free. Returns where it stopped: `offset + len`
// when the whole range is planned; before it, the start of a block a
// mirror's resync holds (nothing from there on is freed or planned). It does
// not wait there: a write the caller's thread has under way may be what the
// resync waits for. The caller plans the rest from that position a moment
// later (kHeldWait), appending to the same `pieces`; the pieces planned so far
// are then not counted on their blocks' write counters (mirror.h), which
// queue_round's first round does. Error: a FREE that failed otherwise.
Result<uint64_t> plan_discard(Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                              std::vector<IoPiece>& pieces);

// plan_discard for an event loop that must not block: the blocks whose FREE
// takes control round trips go to a BlockMapper's worker one at a time, the
// rest is planned on the caller's thread. A request's DISCARD / WRITE_ZEROES
// (one that may free) keeps one DiscardPlan from its start to its end.
struct DiscardPlan {
  uint64_t from = 0;  // planned up to here
  uint64_t end = 0;
  uint8_t* zeros = nullptr;
  // Set while a worker plans [from, parked_end): it writes `worked_to` (where
  // plan_discard stopped) or `error`, then hands the request back.
  bool parked = false;
  uint64_t parked_end = 0;
  uint64_t worked_to = 0;
  Status error;
};
enum class DiscardStep {
  kPlanned,  // every block planned: the pieces go out
  kParked,   // a worker frees a block: wait for the mapper to hand the request back
  kHeld,     // a mirror's resync holds the next block: plan on a moment later
};
// Plans on from `plan.from` (each call after a kParked one: once the mapper
// handed the request back). Without a mapper, or with its waits all taken,
// frees on the caller's thread. Error: as plan_discard's.
Result<DiscardStep> plan_discard_step(Volume& volume, DiscardPlan& plan, void* request, std::vector<IoPiece>& pieces,
                                      BlockMapper* mapper);

// The bricks that hold some copy of a block of [offset, offset + len): a FUA
// request's sync goes to these only (SyncJob::bricks). `bricks` gets one
// entry per brick, nonzero for those; its capacity is kept.
void bricks_of_range(const Volume& volume, uint64_t offset, uint64_t len, std::vector<uint8_t>& bricks);

// queue_round's answer when the request waits for a block's mapping.
inline constexpr size_t kWaitingForMap = SIZE_MAX;

// One round of a request: resolves the handle of each piece still to do
// (see above) and pushes up to `max` of them to `sink`; each completes
// through `done` (op.ctx is the piece). Pieces beyond `max` stay to do for
// the next round. Returns how many were pushed (0: none needs the network),
// or the error of a failed mapping. Without `mapper` a block not mapped yet
// is mapped here, blocking on the control path; with it, the request parks
// on the block (BlockMapper::park, piece.request identifies it), nothing is
// pushed and the answer is kWaitingForMap: the mapper hands the request back
// when the block is mapped, to be planned again with queue_round.
Result<size_t> queue_round(Volume& volume, std::span<IoPiece> pieces, PieceSink& sink,
                           void (*done)(DataChannel::Op* op, int status), size_t max = kMaxPiecesPerRound,
                           BlockMapper* mapper = nullptr);

// A request failed: each brick its unfinished WRITE pieces were for owes the
// next FLUSH a report (Volume::note_write_failed). For a request that failed
// outside queue_round and IoRetry (its mapping, by a BlockMapper).
void note_failed_writes(Volume& volume, std::span<const IoPiece> pieces);

// The retry and timeout rules of one request (see above). Owned by the
// request; one thread at a time.
class IoRetry {
 public:
  enum class Step { kDone, kNow, kLater, kFail };

  // A new request: it waits for an unreachable brick until `timeout` from now.
  void start(std::chrono::milliseconds timeout);

  // After every op of a round completed: forgets dead handles and says what
  // next. kNow: queue the next round; kLater: at retry_at(); kFail: error().
  Step settle(Volume& volume, std::span<IoPiece> pieces, std::string_view what);
  // The same for a sync that completed with `status` (SyncJob::status).
  // Mirror: a copy whose brick stays unreachable past the leg timeout is
  // given up (stale, as a write's leg would be) and the sync goes on
  // without it (kNow), when the other copies hold every block.
  Step settle_sync(Volume& volume, int status, uint32_t brick, std::string_view what);
  // A resync holds a block the request must plan (plan_discard): again at
  // retry_at(), kHeldWait from now.
  void wait_held();

  IoClock::time_point retry_at() const { return retry_at_; }
  const Error& error() const { return error_; }

 private:
  Step later(const Volume& volume, uint32_t brick, int status, std::string_view what);

  IoClock::time_point started_{};
  std::chrono::milliseconds timeout_{0};
  IoClock::time_point deadline_{};
  IoClock::time_point retry_at_{};
  std::chrono::milliseconds backoff_{20};
  Error error_{0, ""};
};

class VolumeChannels;

// Whether VolumeChannels::push chains a sync behind a WRITE: only a write
// with nothing else queued or in flight on its connection (a writer at queue
// depth 1; deeper queues share one sync per FLUSH anyway), and only while the
// volume keeps getting FLUSH/FUA requests. How many writes after the last
// such request are still chained depends on what a sync costs the brick:
// - one-sided (an RDMA sync-read: one more work request in the same
//   doorbell, answered by the brick's NIC): up to kMaxUnasked, so a writer
//   that stopped flushing stops paying for it;
// - a request the brick serves (over TCP every READ is a sync point, over
//   RDMA with rpc a PERSIST; on a disk-backed file store either costs an
//   fdatasync): only the first write after a FLUSH or FUA, and only while
//   one came after every write on this connection (fsync after each write,
//   as a log or a database commit does). Then the chained sync is the one
//   the coming FLUSH would send, one round trip sooner, and a writer that
//   flushes every few writes gets no sync it would not have caused.
// One per link; the loop's thread only.
class SyncChaining {
 public:
  static constexpr uint32_t kMaxUnasked = 8;
  // `lone`: the write is alone on its connection; `one_sided`: the
  // connection's sync costs the brick nothing; `sync_requests`:
  // Volume::sync_requests() now; `writes`: the link's writes, this one
  // included.
  bool chain(bool lone, bool one_sided, uint64_t sync_requests, uint64_t writes) {
    bool first_since_request = false;
    if (sync_requests != seen_) {
      // The writes since the last change seen (none before the first).
      flushed_after_each_ = seen_ != 0 && writes - writes_when_seen_ == 1;
      seen_ = sync_requests;
      unasked_ = 0;
      first_since_request = true;
      writes_when_seen_ = writes;
    }
    if (!lone || sync_requests == 0) return false;
    if (!one_sided) return first_since_request && flushed_after_each_;
    if (unasked_ >= kMaxUnasked) return false;
    unasked_++;
    return true;
  }

 private:
  uint64_t seen_ = 0;
  uint32_t unasked_ = 0;             // one-sided: writes chained since seen_ changed
  uint64_t writes_when_seen_ = 0;    // the link's writes when seen_ last changed
  bool flushed_after_each_ = false;  // one write between its last two changes
};

// A sync of one loop's channels (FUA, or a FLUSH's share on that loop).
// Reused; nothing is allocated once `parts` has grown to the brick count.
struct SyncJob {
  // Called on the loop thread once every brick's sync is back (at once, from
  // VolumeChannels::sync, when no brick needed one).
  void (*done)(SyncJob* job) = nullptr;
  void* ctx = nullptr;
  int status = 0;       // 0, or an errno: one that fails (Fate::kFail) over one that is retried
  uint32_t brick = 0;   // the brick `status` came from

  struct Part {
    DataChannel::Op op;
    SyncJob* job = nullptr;
    VolumeChannels* channels = nullptr;
    uint32_t brick = 0;
    uint64_t covers = 0;    // the brick's write count when the sync was queued
    uint64_t failures = 0;  // and its Volume::write_failures
    uint8_t scratch = 0;
    Part* next = nullptr;   // waiting for the same chained sync (VolumeChannels)
  };
  std::vector<Part> parts;  // one per brick
  uint32_t pending = 0;
  // A FUA request's: nonzero for the bricks it wrote to (bricks_of_range),
  // the only ones synced - a brick it did not write to, down or owed a sync
  // for failed writes, is a FLUSH's business. Empty: every brick that needs
  // one (a FLUSH).
  std::vector<uint8_t> bricks;
};

// One event loop's connections to every brick of a volume (see above).
//
// SQEs of the channels carry Uring::pack(channel_kind, brick << 8 | event);
// the loop passes their completions to on_cqe(payload, res), and cancels
// through SQEs of cancel_kind whose completions it ignores.
//
// Thread: the loop's thread only, except needs_sync() (any thread).
class VolumeChannels final : public PieceSink {
 public:
  // Makes the channel to `brick` (tests inject their own transport); the
  // default is DataChannel::Create with the brick's transport.
  using ChannelFactory = std::function<std::unique_ptr<DataChannel>(uint32_t brick, uint32_t depth)>;

  VolumeChannels(Volume& volume, uint32_t depth, Uring& ring, uint8_t channel_kind, uint8_t cancel_kind,
                 std::string label, const ChannelFactory& make_channel = nullptr);
  ~VolumeChannels();
  VolumeChannels(const VolumeChannels&) = delete;
  VolumeChannels& operator=(const VolumeChannels&) = delete;

  // Registers memory the ops' buffers live in with every channel (RDMA). Before connect().
  Status add_buffer_region(uint8_t* base, size_t len);
  // Connects every brick, blocking; before the loop runs.
  Status connect();
  // Reserves room for `n` ops waiting per brick (steady state allocates nothing).
  void reserve(size_t n);
  // DataChannel::set_send_inline on every brick's channel.
  void set_send_inline(bool on);
  // The most SQEs one dispatch() can take from the ring.
  size_t max_sqes_per_dispatch() const { return kMaxSqesPerLink * links_.size(); }

  // A READ or WRITE op for `brick`; it waits until the channel has room and a
  // connection. A WRITE marks the brick as needing a sync, and may get one
  // chained behind it (SyncChaining).
  void push(uint32_t brick, DataChannel::Op* op) override;
  // Syncs every brick for which needs_sync() holds (see SyncJob).
  void sync(SyncJob& job);
  // Whether a brick was written since its last completed sync (a lost
  // connection keeps it so: the next sync on the new one covers those
  // writes), or had a write fail since. Any thread: a FLUSH reads it to skip
  // loops with nothing to sync.
  bool needs_sync() const;
  // Syncs sent to `brick` so far for FLUSH/FUA, and chained to lone writes
  // (statistics). Any thread.
  uint64_t syncs_sent(uint32_t brick) const;
  uint64_t syncs_chained() const;
  // Whether an op or a sync is waiting for a channel or in flight on one: a
  // completion is due (the loop may poll for it instead of sleeping, for up
  // to kMaxPollUs).
  bool busy() const;

  // Once per loop iteration: finishes teardowns, reconnects a brick that has
  // ops waiting (at most every 100 ms; a failed attempt fails them with its
  // errno; a failed handshake counts as a lost connection unless the brick
  // serves another store), feeds the channels and hands their work to the ring.
  void dispatch();
  // A completion of a channel SQE.
  void on_cqe(uint64_t payload, int res);
  // Periodically (the loop's tick): tears down a connection that had ops in
  // flight and made no progress for the volume's io_timeout.
  void on_tick();
  // The loop is stopping: tear down, arm nothing more, cancel what is armed.
  void stop();
  // At loop exit, once no SQE is in flight: fails every op still waiting or
  // in flight with `status`.
  void finish(int status);

 private:
  struct Link;
  struct LinkRing;
  // Each of dispatch()'s two flushes of a channel arms at most two SQEs
  // (TCP: a send and a recv; RDMA: its two polls).
  static constexpr size_t kMaxSqesPerLink = 4;
  void teardown(Link& link, const Error& why);
  static void sync_part_done(DataChannel::Op* op, int status);
  static void chained_sync_done(DataChannel::Op* op, int status);

  Volume& volume_;
  const uint64_t channel_id_;  // what its connections' FENCE names (Volume::new_channel_id)
  Uring& ring_;
  uint8_t channel_kind_, cancel_kind_;
  std::string label_;
  std::vector<std::unique_ptr<Link>> links_;  // by brick
};

}  // namespace pbrick
