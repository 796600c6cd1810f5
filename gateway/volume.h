// A volume: a byte range of `size` bytes laid over a brick's virtual address
// space from `base`, so many volumes can share one brick. Byte offset o lives
// in block (o / 2 MiB), whose brick virtual address is base + block * 2 MiB.
//
// A volume talks only to the store it was opened on: Open records the store's
// uuid (HELLO's brick_uuid) in options().brick.store_uuid, and every later
// connection - the control connection and every data channel, on every
// reconnect - refuses a brick that serves another store (kErrWrongStore): its
// I/O fails, it never reads or writes another store's blocks.
//
// The Volume owns the control path: one blocking connection to the brick that
// allocates, maps, unmaps and frees blocks, and the table of mapped handles
// that every data channel reads. Handles are mapped read-write and shared and
// belong to the control connection; any data connection may use the rkey (the
// brick's rkeys are not tied to a connection, like one RDMA protection domain).
//
// Thread-safe: the fast-path lookups (cached(), allocated()) take a shared lock
// or read an atomic; the slow path (map_block, discard_block) is serialised on
// the control connection and may block for network round trips, so frontends
// call it from their submitting threads, never from a data event loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/result.h"

namespace pbrick {

struct VolumeOptions {
  ClientOptions brick;
  uint64_t size = 0;  // bytes; a multiple of 4096
  uint64_t base = 0;  // brick virtual address of the volume's first block; 2 MiB aligned
  // How long I/O waits for a brick that went away (reconnecting and re-mapping)
  // before it fails with EIO.
  uint32_t io_timeout_ms = 30000;
  // At most this many blocks stay mapped (0: no bound): mapping one more first
  // unmaps the least recently used, so the brick may move idle blocks to its
  // slow tier. Independently, a MAP the brick refuses with ENOBUFS (every fast
  // slot mapped) unmaps least recently used blocks and retries.
  uint64_t max_mapped = 0;
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
  // Connects the control path, records the brick's store (unless
  // options.brick.store_uuid names it already: then a brick serving another
  // store is refused) and learns which blocks are allocated (LIST).
  // EINVAL for a size that is zero or not a multiple of 4096, a base that is
  // not 2 MiB aligned, or a range that wraps the 64-bit address space.
  static Result<std::unique_ptr<Volume>> Open(const VolumeOptions& options);

  const VolumeOptions& options() const { return options_; }
  uint64_t size() const { return options_.size; }
  uint64_t block_count() const { return block_count_; }
  uint64_t block_vaddr(uint64_t index) const { return options_.base + index * proto::kBlockSize; }

  // The cached handle of a block, if it is mapped; marks it used (LRU).
  std::optional<BlockHandle> cached(uint64_t index) const;
  // Whether the brick holds the block (reads of other blocks return zeros
  // without a network round trip).
  bool allocated(uint64_t index) const;

  // Maps the block, allocating it first when `for_write` (thin provisioning).
  // For a read of a block that is not allocated: ENOENT. Retries through
  // reconnects until io_timeout_ms, then EIO. May unmap least recently used
  // blocks first (max_mapped, ENOBUFS): I/O racing with such an unmap gets
  // EKEYREJECTED from the brick and maps again, like after a brick restart.
  Result<BlockHandle> map_block(uint64_t index, bool for_write);

  // Forgets `rkey` for the block if it is still the cached one: the brick said
  // it is dead (EKEYREJECTED), so the next access maps again.
  void invalidate(uint64_t index, uint32_t rkey);

  // (Re)connects a data channel of this volume to its brick, with the
  // volume's store check and a short handshake timeout. Any thread (each on
  // its own channel).
  Status connect_channel(DataChannel& channel);

  // Why the brick was last refused for serving another store (brick and both
  // store uuids), for the errors of I/O that failed because of it; empty when
  // the last connection succeeded. Any thread.
  std::string refusal() const;

  // Frees a whole block (unmap + free); it then reads as zeros. When the brick
  // refuses because someone else maps it (EBUSY), returns EBUSY so the caller
  // can zero it through the data path instead.
  Status discard_block(uint64_t index);

 private:
  explicit Volume(const VolumeOptions& options);
  Status connect_control();  // with control_mu_ held
  template <typename Fn>
  auto with_control(Fn&& fn) -> decltype(fn(std::declval<BrickClient&>()));
  // Logs a refusal of the brick once (not on every reconnect attempt of every
  // channel) and keeps it for refusal(); a success forgets it.
  void note_connect(const Status& st);
  void set_allocated(uint64_t index, bool value);
  void clear_all_handles();
  // With control_mu_ held: unmaps the least recently used mapped block; false
  // when none is mapped.
  bool unmap_lru();
  uint64_t mapped_count() const;

  VolumeOptions options_;
  uint64_t block_count_ = 0;

  mutable std::mutex refusal_mu_;
  std::string refusal_;  // under refusal_mu_

  std::mutex control_mu_;  // serialises the control connection
  std::unique_ptr<BrickClient> control_;

  mutable std::shared_mutex handles_mu_;
  std::vector<BlockHandle> handles_;             // by block index
  uint64_t mapped_ = 0;                          // handles with rkey != 0, under handles_mu_
  // Last use of each block's handle (a stamp of use_clock_): the LRU order.
  // Relaxed atomics: a stale stamp only makes an unmap choice less exact.
  mutable std::vector<std::atomic<uint64_t>> used_;
  mutable std::atomic<uint64_t> use_clock_{0};
  std::vector<std::atomic<uint64_t>> allocated_;  // bitset by block index
};

}  // namespace pbrick
