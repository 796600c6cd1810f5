// A volume: a byte range of `size` bytes laid over one or more bricks' virtual
// address spaces from `base`, so many volumes can share a brick. Byte offset o
// lives in volume block i = o / 2 MiB. Layout single: block i is at
// base + i * 2 MiB of the one brick. Layout stripe over N bricks: block i is
// on brick i mod N at base + (i div N) * 2 MiB (the same base on every brick;
// docs/layout.md). Layout mirror keeps C copies of every block (Placement in
// common/layout.h); the volume's control path works on *units*, one copy of
// one block each (unit == block when C is 1), and which copies a request uses
// is gateway/mirror.h's business.
//
// A volume talks only to the stores it was opened on: Open records each
// brick's store uuid (HELLO's brick_uuid) in its ClientOptions::store_uuid,
// and every later connection to that brick - its control connection and
// every data channel, on every reconnect - refuses a brick that serves
// another store (kErrWrongStore): its I/O fails, it never reads or writes
// another store's blocks.
//
// The Volume owns the control path: per brick one blocking connection that
// allocates, maps, unmaps and frees blocks, and the table of mapped handles
// that every data channel reads. Handles are mapped read-write and shared and
// belong to their brick's control connection; any data connection to that
// brick may use the rkey (the brick's rkeys are not tied to a connection, like
// one RDMA protection domain).
//
// Where a brick is opened and reconnected (one place each, for checks that
// must run on every brick at attach and on every reconnect of its control
// connection): open_brick() and connect_control().
//
// Thread-safe: the fast-path lookups (cached(), allocated()) take a shared lock
// or read an atomic; the slow path (map_block, discard_block) is serialised per
// brick on its control connection and may block for network round trips, so
// frontends call it from their submitting threads, never from a data event
// loop. A brick that is down blocks only the slow path of its own blocks.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/layout.h"
#include "common/result.h"
#include "gateway/mirror.h"
#include "gateway/volume_claim.h"

namespace pbrick {

struct VolumeOptions {
  // Layout single: the brick. With `bricks` given, ignored (Open sets it to
  // bricks[0]).
  ClientOptions brick;
  uint64_t size = 0;  // bytes; a multiple of 4096
  uint64_t base = 0;  // brick virtual address of the volume's first block on each brick; 2 MiB aligned
  // How long I/O waits for a brick that went away (reconnecting and re-mapping)
  // before it fails with EIO.
  uint32_t io_timeout_ms = 30000;
  Layout layout = Layout::kSingle;
  // Layout mirror: copies of every block, kMinCopies..kMaxCopies and at most
  // the brick count; 1 for the other layouts.
  uint32_t copies = 1;
  // Layout mirror: how long a copy's brick may fail (lost connection, no
  // reply) before the copy is marked stale and I/O goes on without it;
  // shorter than io_timeout_ms.
  uint32_t leg_timeout_ms = 5000;
  // Layout mirror: the most a resync copies per second, in MiB, so the
  // volume's own I/O keeps its share of the bricks and the network (like
  // md's sync_speed_max); 0: as fast as it goes.
  uint32_t resync_mib_per_s = 0;
  // Layout mirror: attach even when some bricks cannot be reached (like
  // `mdadm --run`); their copies become stale. Without it such an attach
  // fails, so two gateways that each see half the bricks do not both write.
  bool degraded = false;
  // The bricks in layout order (stripe: at least two); empty means `brick`.
  std::vector<ClientOptions> bricks = {};
  // The volume's name in its label (gateway/volume_label.h); empty: unnamed.
  std::string name{};
  // Set (a recover): open only this volume, already labelled; another
  // volume's label at `base`, or none, fails the open (LabelRequest).
  std::optional<Uuid> volume_uuid{};
  // Read-only attaches map blocks read-only and share the volume with its
  // writer; read-write attaches hold it exclusively (gateway/volume_claim.h).
  bool read_only = false;
  // At most this many blocks stay mapped on each brick (0: no bound): mapping
  // one more first unmaps that brick's least recently used, so the brick may
  // move idle blocks to its slow tier. Independently, a MAP the brick refuses
  // with ENOBUFS (every fast slot mapped) unmaps that brick's least recently
  // used blocks and retries.
  uint64_t max_mapped = 0;
  // A sync sent right behind a lone write while FLUSHes keep coming, which a
  // FLUSH then waits for instead of sending its own (SyncChaining in
  // gateway/volume_io.h). Off: every FLUSH/FUA sends its own syncs.
  bool chain_syncs = true;
};

class DataChannel;

struct BlockHandle {
  uint32_t rkey = 0;  // 0: not mapped
  uint64_t remote_addr = 0;
};

// True for errors that mean "the connection is gone": retry after reconnecting.
bool is_connection_error(int errnum);

class Volume {
 public:
  // Opens every brick (open_brick): connects its control path, records its
  // store (unless its store_uuid names it already: then a brick serving
  // another store is refused) and learns which blocks are allocated (LIST);
  // then checks and claims the volume's labels on all of them (VolumeClaim:
  // EBUSY naming the holder when another writer has the volume).
  // EINVAL for a size that is zero or not a multiple of 4096, a base that is
  // not 2 MiB aligned, a range that wraps the 64-bit address space, or a brick
  // count that does not fit the layout.
  static Result<std::unique_ptr<Volume>> Open(const VolumeOptions& options);
  ~Volume();

  const VolumeOptions& options() const { return options_; }
  uint64_t size() const { return options_.size; }
  uint64_t block_count() const { return block_count_; }
  Layout layout() const { return options_.layout; }
  const Placement& placement() const { return placement_; }
  // Layout mirror: which bricks hold in-sync copies; null for the others.
  const MirrorState* mirror() const { return mirror_.get(); }
  MirrorState* mirror() { return mirror_.get(); }
  uint32_t copies() const { return placement_.copies; }
  // Units (copies of blocks): the index space of the methods below.
  uint64_t unit_count() const { return block_count_ * placement_.copies; }

  // The layout: which brick holds unit `index` (a copy of a block; the block
  // itself unless mirrored), and where on it.
  uint32_t brick_count() const { return static_cast<uint32_t>(bricks_.size()); }
  uint32_t brick_of(uint64_t index) const { return placement_.brick_of(index); }
  uint64_t block_vaddr(uint64_t index) const { return options_.base + placement_.slot_of(index) * proto::kBlockSize; }
  ClientOptions brick_options(uint32_t brick) const;
  // "HOST:PORT" of a brick, for messages.
  std::string brick_name(uint32_t brick) const;
  // Changes when the brick is replaced (replace_brick), or its writer id
  // (new_writer): a data channel connected at another epoch reaches the old
  // brick, or FENCEs under the old id, and must reconnect.
  uint64_t brick_epoch(uint32_t brick) const;
  // A new writer id for the brick's data connections (any thread), which all
  // reconnect under it: the first FENCE under it cuts every connection of
  // the old one off (docs/protocol.md 7.9), whichever queue's it was. For a
  // connection given up with requests unanswered, which the brick may still
  // execute: a request that failed with them must not see them land after a
  // newer write that another queue sends.
  Status new_writer(uint32_t brick);

  // The cached handle of a block, if it is mapped; marks it used (LRU).
  std::optional<BlockHandle> cached(uint64_t index) const;
  // Whether the brick holds unit `index` (reads of other units return zeros
  // without a network round trip).
  bool allocated(uint64_t index) const;
  // Whether volume block `block` may hold data: a copy of it is allocated
  // (a mirror's block i is units placement().unit(i, j), not unit i).
  bool block_allocated(uint64_t block) const;

  // Maps the block, allocating it first when `for_write` (thin provisioning).
  // For a read of a block that is not allocated: ENOENT. Retries through
  // reconnects until io_timeout_ms, then EIO. May unmap least recently used
  // blocks first (max_mapped, ENOBUFS): I/O racing with such an unmap gets
  // EKEYREJECTED from the brick and maps again, like after a brick restart.
  Result<BlockHandle> map_block(uint64_t index, bool for_write);

  // Forgets `rkey` for the block if it is still the cached one: the brick said
  // it is dead (EKEYREJECTED), so the next access maps again.
  void invalidate(uint64_t index, uint32_t rkey);

  // A read-write attachment's data paths write to the bricks through
  // connections that say FENCE first (docs/protocol.md §7.9): as this
  // attachment (a random writer id) on a channel of their own, so that a
  // reconnect cuts off what the connection it replaces still carried, and a
  // later attachment of the volume cuts off what this one left behind.
  // A channel id, unique within this attachment. Any thread.
  uint64_t new_channel_id() { return next_channel_.fetch_add(1, std::memory_order_relaxed); }
  // brick_options(brick), plus the FENCE of `channel` when read-write.
  ClientOptions writer_options(uint32_t brick, uint64_t channel) const;

  // (Re)connects data channel `channel_id` (new_channel_id()) to brick
  // `brick` of this volume, with the brick's store check and a short
  // handshake timeout. EBUSY, without connecting, once another attachment
  // took the volume's lock on that brick (the last FENCE wins at the brick,
  // so a writer that lost the lock must not send one). Any thread (each on
  // its own channel).
  Status connect_channel(DataChannel& channel, uint32_t brick, uint64_t channel_id);

  // Why `brick` was last refused for serving another store (brick and both
  // store uuids), for the errors of I/O that failed because of it; empty when
  // its last connection succeeded. Any thread.
  std::string refusal(uint32_t brick) const;

  // A WRITE to `brick` failed (its range is undefined now): the next FLUSH
  // asks that brick even where no write reached it, so a flush after failed
  // writes reports a brick it cannot reach instead of succeeding without it.
  // Any thread.
  void note_write_failed(uint32_t brick);
  uint64_t write_failures(uint32_t brick) const;

  // FLUSH and FUA requests the frontends were given, counted before they look
  // for loops to sync (also when none needs one): VolumeChannels chains a
  // sync to a lone WRITE only while they keep coming (SyncChaining). Any thread.
  void note_sync_request() { sync_requests_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t sync_requests() const { return sync_requests_.load(std::memory_order_relaxed); }

  // Reconnects that found a brick's host rebooted under unsynced writes no
  // other copy answers for (the channel's next sync reports EIO once), so
  // far. A loop thread counts one before that sync can complete; frontends
  // with several clients (Engine::Session) tell each of them. Any thread.
  void note_writes_lost() { writes_lost_.fetch_add(1, std::memory_order_release); }
  uint64_t writes_lost() const { return writes_lost_.load(std::memory_order_acquire); }

  // Layout mirror. mark_stale: records durably in the labels of the other
  // in-sync bricks (generation + 1) that `brick`'s copies are stale, then
  // stops reading them; with `missed`, that block's dirty bit goes to their
  // bitmaps first (a write the copy missed: never a stale label without the
  // bit, which a crash between the two would leave, and the resync would
  // skip the block). A brick with write failures not yet accounted for
  // (write_failures, since its copy was last given up whole) is given up
  // whole instead: every block of its copy dirty. mark_dirty: sets block
  // `block`'s dirty bit durably
  // in the bitmap of every in-sync brick, once per block (later calls return
  // at once). Both block on control round trips; any thread.
  Status mark_stale(uint32_t brick, std::optional<uint64_t> missed = std::nullopt);
  Status mark_dirty(uint64_t block);
  bool dirty(uint64_t block) const;
  uint64_t dirty_count() const;
  // A write to `block` skips `brick`'s copy: true once the block's dirty bit
  // is durable, with `brick` still stale; false when `brick` is no longer
  // stale (resyncing: the copy must be written). Checked under the label
  // mutex the state changes under, so no miss is recorded after a resync
  // began reading the bitmap.
  // A label update that failed may have left a newer label than the last
  // committed one on some bricks (labels_unsettled_), one that may call this
  // copy in sync: the labels are written again, at a new generation, before
  // the first miss is recorded, or the call fails.
  Result<bool> record_miss(uint64_t block, uint32_t brick);
  // Tests only: `fail` is asked before each label write of a label update
  // with the brick's index; true fails that write as an unreachable brick's.
  // Empty: none fails. Not while label updates run.
  void fail_label_writes_for_testing(std::function<bool(uint32_t brick)> fail) {
    std::lock_guard label_lock(label_mu_);
    label_write_fault_ = std::move(fail);
  }
  // Layout mirror: I/O to `brick` (or a connection attempt) found it
  // reachable or not (MirrorState::reachable); logs a change. Any thread.
  void note_reachable(uint32_t brick, bool reachable);
  // From the resync thread, for an in-sync brick left out of the reads: one
  // request on its control connection, connecting it first when there is
  // none or it fails; reachable again when that works.
  Status probe(uint32_t brick);
  // Layout mirror, read-only attachment (the resync thread, each second): the
  // newest label the bricks it reaches hold decides which copies it reads,
  // as at attach: not one its writer has recorded stale since, again one the
  // writer brought back in sync.
  Status follow_writer_labels();

  // Layout mirror, resync (gateway/resync.h), from the resync thread:
  // try_reach: one attempt to connect a stale brick's control connection
  // (its store, its label: older than the volume's, same place; the lock).
  // renew_writer (stale): a new writer id for its data connections, which
  // reconnect under it (the first FENCE under it cuts the older ones off).
  // begin_resync: stale -> resyncing, from now on written; learns which of
  // its units the brick holds. finish_resync: resyncing -> in sync, durably:
  // a new label generation on every brick says so (and once no brick is
  // stale, the dirty bitmap is cleared); ECANCELED when it was aborted.
  // abort_resync (any thread): resyncing -> stale; the labels still say so.
  // False when the copy is in sync (its resync finished first): a failure
  // on it is then an in-sync copy's.
  Status try_reach(uint32_t brick);
  Status renew_writer(uint32_t brick);
  Status begin_resync(uint32_t brick);
  Status finish_resync(uint32_t brick);
  bool abort_resync(uint32_t brick, const std::string& why);
  // Every block's dirty bit (a copy of the in-memory bitmap).
  std::vector<bool> dirty_blocks() const;

  // Layout mirror: brick `brick` (by place) is replaced by `target`, an
  // empty brick (no label at the volume's base; not a store of the volume):
  // the old copy is marked stale first if it was not, every block with a
  // copy there is marked dirty durably, then a new label generation names
  // the new store in that place, stale; the resync (resync.h) then copies
  // every such block. EEXIST for a target that holds a label or serves a
  // store of the volume; EIO when the copy cannot go (the last in-sync copy
  // of some block). Blocks on control round trips; any thread but I/O loops.
  Status replace_brick(uint32_t brick, const ClientOptions& target);

  // Layout mirror: `brick`'s host rebooted while writes to it were not
  // synced (DataChannel::writes_maybe_lost, or a new boot id when a stale
  // brick is reached again): they may be lost there, so every block with a
  // copy on it is marked dirty, durably, and it is marked stale (a resync
  // then copies all of it). EIO when it holds the last in-sync copy of some
  // block (then the writes are lost as on a single brick: the FLUSH says so).
  // Once per boot of that host (`boot_id`): every loop's connection meets it,
  // and the one full copy covers them all.
  // Blocks on control round trips; called on a loop thread on that rare event.
  Status lost_writes(uint32_t brick, const std::array<uint8_t, proto::kUuidSize>& boot_id);
  // Layout mirror, read-write: a connection (a data channel's reconnect, the
  // resync thread's probe) found `brick`'s host in boot `boot_id`. When this
  // attachment knows its copy there under another boot, the copy is given up
  // as by lost_writes, whichever connection held the unsynced writes: true
  // then. A stale copy is left to try_reach. Not under control_mu; blocks on
  // control round trips when it gives the copy up.
  Result<bool> check_boot(uint32_t brick, const std::array<uint8_t, proto::kUuidSize>& boot_id);
  // Whether this attachment knows `brick`'s copy complete under another boot
  // than `boot_id` (what check_boot would give it up for). Changes nothing.
  bool boot_differs(uint32_t brick, const std::array<uint8_t, proto::kUuidSize>& boot_id);
  // Layout mirror: a sync on `brick` failed with the brick's own error (EIO:
  // its store could not make writes durable), so writes it took since its
  // last good sync may be gone there, beyond what the bitmap records. Its
  // copy is given up as in lost_writes (every block dirty, durably, then
  // stale; a resync copies all of it) and true is returned: the sync counts
  // as done on the other copies. False when that cannot be (not a mirror, a
  // read-only attachment, or the last in-sync copy of some block): the sync
  // fails as on a single brick. Blocks on control round trips; called on a
  // loop thread on that rare event.
  Result<bool> sync_failed(uint32_t brick, int errnum);
  // The volume's label as this attachment last wrote or read it.
  VolumeLabel label() const;

  // Layout mirror, read-write: detaches cleanly, once no I/O runs any more
  // (the frontend's queues and the resync thread stopped): every in-sync
  // brick makes everything it took durable, then every brick's holder record
  // says closed. Without it (a killed gateway, or an error here) the next
  // read-write attach takes every written block's copies for possibly
  // different and repairs them (mirror.h, unsettled blocks). EAGAIN while
  // blocks of this attachment's repair are left: they stay to repair. Nothing
  // for the other layouts and read-only attachments. Blocks on control round
  // trips. EIO, and no record, while writes to an in-sync brick failed
  // (write_failures, since its copy was last given up whole): copies may
  // differ. Runs once: later calls do nothing.
  // One thread, after the I/O stopped.
  Status close();
  // Tests only: close() does nothing, as when the gateway is killed.
  void leave_uncleanly_for_testing() { leave_uncleanly_ = true; }

  // Frees a whole block (unmap + free); it then reads as zeros. When the brick
  // refuses because someone else maps it (EBUSY), returns EBUSY so the caller
  // can zero it through the data path instead.
  Status discard_block(uint64_t index);

 private:
  struct Brick;
  explicit Volume(const VolumeOptions& options);
  // Opening one brick at attach: connect, record the store, LIST its blocks.
  Status open_brick(uint32_t brick);
  // (Re)connecting one brick's control connection, with its control_mu held:
  // at open and on every reconnect.
  Status connect_control(uint32_t brick);
  template <typename Fn>
  auto with_control(uint32_t brick, Fn&& fn) -> decltype(fn(std::declval<BrickClient&>()));
  // Logs a refusal of the brick once (not on every reconnect attempt of every
  // channel) and keeps it for refusal(); a success forgets it.
  void note_connect(uint32_t brick, const Status& st);
  void set_allocated(uint64_t index, bool value);
  void clear_handles(uint32_t brick);
  // With handles_mu_ held exclusively: a unit's handle set (kept in its
  // brick's list of mapped units, stamped as used) or forgotten.
  void set_handle_locked(uint64_t index, const BlockHandle& h);
  void forget_handle_locked(uint64_t index);
  // Calls fn(unit) for every unit on `brick`, in address order.
  template <typename Fn>
  void for_each_unit_on(uint32_t brick, Fn&& fn) const;
  // With the brick's control_mu held: unmaps its least recently used mapped
  // block; false when none of its blocks is mapped. (Per brick: a victim on
  // another brick would need that brick's control_mu too.)
  bool unmap_lru(uint32_t brick);
  // Layout mirror, at Open: copy states from the label, dirty bits from an
  // in-sync brick's bitmap.
  Status load_mirror_state();
  // Layout mirror, at Open, once the bricks missing at a degraded attach are
  // stale: each stale copy reached from another boot than the label's (it
  // went stale in that one) has every block marked dirty (lost_writes).
  Status check_stale_boots();
  // Layout mirror, at Open after an unclean detach: every block a copy of
  // which is allocated is unsettled.
  void unsettle_written_blocks();
  // With the brick's control_mu held: which of our units it holds (LIST).
  Status learn_allocated(uint32_t brick);
  // With label_mu_ held: writes the label at a new generation to every
  // brick that holds in-sync copies afterwards, durably: `going` become
  // stale, `joining` (resynced) in sync, `renamed` (a replaced brick) takes
  // its new identity and state. A brick that cannot take it goes stale too (the
  // joining one stays stale), with one more generation. True when `joining`
  // joined. EIO when some block would have no in-sync copy left. Until one
  // commits, the labels are unsettled (record_miss).
  Result<bool> write_label_set(std::vector<uint32_t> going, std::optional<uint32_t> joining,
                               std::optional<std::pair<uint32_t, LabelBrick>> renamed);
  // With label_mu_ held: every block with a copy on `brick` dirty, durably
  // in the bitmaps of the in-sync bricks; how many.
  Result<uint64_t> dirty_all_of(uint32_t brick);
  // lost_writes / sync_failed: every block of `brick` dirty, then the copy
  // stale (in the labels when it was in sync). Under label_mu_. The count of
  // blocks marked.
  Result<uint64_t> give_up_copy_locked(uint32_t brick);
  // With label_mu_ held: mark_dirty's work.
  Status mark_dirty_locked(uint64_t block);
  // Writes the byte of `block`'s dirty bit (the bits set so far and it) to
  // the bitmap of every in-sync brick but `except`. With `failed`, a brick
  // that fails for a lost connection or EIO is added there (to go stale with
  // the copy that missed the write) instead of failing the call.
  Status write_dirty_byte_locked(uint64_t block, std::optional<uint32_t> except, std::vector<uint32_t>* failed);
  // The dirty bits as the label block stores them (byte i / 8, bit i % 8).
  std::vector<uint8_t> dirty_bitmap() const;
  // Writes `bits` as brick `b`'s dirty bitmap (its control connection,
  // reconnecting as with_control does).
  Status write_bitmap(uint32_t b, std::span<const uint8_t> bits);
  uint64_t mapped_count(uint32_t brick) const;

  VolumeOptions options_;
  uint64_t block_count_ = 0;
  Placement placement_;
  std::unique_ptr<MirrorState> mirror_;
  std::vector<std::unique_ptr<Brick>> bricks_;
  // Set by Open once every brick's label passed; retaken on every reconnect
  // of a brick's control connection (connect_control).
  std::optional<VolumeClaim> claim_;
  bool leave_uncleanly_ = false;  // leave_uncleanly_for_testing
  bool close_tried_ = false;      // close() ran (later calls do nothing)

  mutable std::shared_mutex handles_mu_;
  std::vector<BlockHandle> handles_;             // by unit
  // Last use of each block's handle (a stamp of use_clock_): the LRU order.
  // Relaxed atomics: a stale stamp only makes an unmap choice less exact.
  mutable std::vector<std::atomic<uint64_t>> used_;
  mutable std::atomic<uint64_t> use_clock_{0};
  std::vector<uint64_t> mapped_at_;  // by unit: its place in its brick's mapped list while mapped (handles_mu_)
  std::vector<std::atomic<uint64_t>> allocated_;  // bitset by unit
  // Layout mirror: serialises label updates (mark_stale, mark_dirty); taken
  // before any brick's control_mu.
  std::mutex label_mu_;
  // Set while a label update runs and left set when it fails (some bricks may
  // hold its uncommitted label); cleared when one commits. Written under
  // label_mu_, read by record_miss's fast path without it.
  std::atomic<bool> labels_unsettled_{false};
  uint64_t followed_generation_ = 0;  // follow_writer_labels: the newest label applied (resync thread)
  std::function<bool(uint32_t)> label_write_fault_;  // fail_label_writes_for_testing; under label_mu_
  std::vector<std::atomic<uint64_t>> dirty_;  // bitset by block: durable in the labels
  std::atomic<uint64_t> sync_requests_{0};
  std::atomic<uint64_t> writes_lost_{0};
  std::atomic<uint64_t> next_channel_{0};
};

}  // namespace pbrick
