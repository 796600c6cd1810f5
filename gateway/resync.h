// Resync of a mirrored volume's stale copies, online (docs/layout.md,
// "Mirror: stale copies"). One thread per mirrored volume:
//
//  1. Every second it tries to reach each stale brick (Volume::try_reach:
//     the same store, its label an older generation of this volume), and
//     each in-sync brick that reads leave alone since its I/O failed
//     (Volume::probe; MirrorState::reachable).
//  2. Reached: the brick becomes *resyncing* (Volume::begin_resync): from
//     then on every write reaches it, no read does. The blocks to copy are
//     the ones whose dirty bit is set (a replaced brick: every block), read
//     after that switch, so none a write skipped the brick for is missed.
//     Before it, while still stale, its data connections go under a new
//     writer id (Volume::renew_writer) and the resync's connection FENCEs
//     every older one off (a write one still carried would land after its
//     block's copy; failing now, it is a miss the bitmap records).
//  3. Each such block is copied from an in-sync copy: it waits until no
//     write is counted on the block (MirrorState::writes_in_flight; new
//     writes to it wait meanwhile, MirrorState::hold), reads an in-sync
//     copy - a reachable one, the next after a failure; one whose host
//     rebooted since is given up first (Volume::check_boot), unless it holds
//     the last in-sync copy of some block - writes it to the brick and makes
//     it durable there (PERSIST, or a sync-read); when a write to the block
//     started meanwhile (MirrorState::write_seq changed) the block is copied
//     again, so a copy never overwrites newer data. A block freed meanwhile
//     is freed on the brick too (zeroed where the brick cannot free it yet).
//     With VolumeOptions::resync_mib_per_s the copies wait so that they stay
//     within that rate.
//  4. Every block copied, and one sync point on the brick (what it holds of
//     writes sent before it went stale is durable): Volume::finish_resync
//     writes the label that says the brick is in sync on every brick (and
//     clears the bitmap once no copy is stale). A write to the brick that
//     fails, or a failed copy, puts it back to stale (its dirty bits were
//     never cleared) and it is tried again later. That run skips the blocks
//     an earlier one copied that no write or discard began on since (their
//     write_seq has not moved; the copies were made durable one by one),
//     unless the brick serves another store now.
//
// After an unclean detach (mirror.h, unsettled blocks) the same thread
// repairs, block by block at the same rate bound, under the same hold: each
// unsettled block is copied from its source to the other copies, then
// settled; a stale brick's resync copies its unsettled blocks too (from the
// source), so no copy keeps bytes its reads never returned.
//
// Progress is in MirrorState::progress(); `on_change` is called (on the
// resync thread) within a second of every change of a copy's state (a leg
// failure on an I/O thread included) and about once a second while a resync
// runs, so a frontend can show it (systemd STATUS, `list`).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/protocol.h"
#include "common/result.h"

namespace pbrick {

class Volume;

// What a mirrored volume's copies are doing, for people and programs:
// summary: "in sync", "degraded: brick H:P stale since 2026-12-02T12:00:00Z",
// "degraded: brick H:P resyncing 42 % (ETA 12 s)" (several bricks joined by
// "; "). json: {"copies":C,"bricks":[{"target":"H:P","state":"in-sync"|
// "stale"|"resyncing","stale_since":"...","resync_percent":N,"eta_s":N},...]}
// (stale_since for copies not in sync; the resync keys while resyncing).
// While blocks are unsettled (mirror.h) the summary ends in "; repairing
// after an unclean detach: N block(s) left".
std::string mirror_summary(const Volume& volume);
std::string mirror_json(const Volume& volume);

class MirrorResync {
 public:
  // Starts the thread for a mirrored volume; null for the other layouts.
  // `volume` must outlive the returned object.
  static std::unique_ptr<MirrorResync> Start(Volume& volume, std::function<void()> on_change = {});
  // Stops the thread (a resync under way stops between blocks; the brick
  // stays stale) and joins it.
  ~MirrorResync();
  MirrorResync(const MirrorResync&) = delete;
  MirrorResync& operator=(const MirrorResync&) = delete;

  // Try stale bricks now instead of at the next second (tests; a replace).
  void poke();

 private:
  MirrorResync(Volume& volume, std::function<void()> on_change);
  void run();
  Status resync(uint32_t brick);
  // About a second's worth of the unsettled blocks (mirror.h), from where
  // the last call stopped: each is copied from its source to every other
  // copy that is in sync or resyncing (a stale one gets its dirty bit
  // instead), then settled.
  Status repair();
  // After each block of a resync or repair that began at `started` and has
  // copied `bytes`: waits while it is ahead of the resync rate, and calls
  // on_change_ when `reported` is a second old (then sets it).
  void pace(uint64_t bytes, std::chrono::steady_clock::time_point started,
            std::chrono::steady_clock::time_point& reported);
  bool stopping() const { return stop_.load(std::memory_order_acquire); }

  Volume& volume_;
  // What the resync's connections' FENCE names, the same for every resync run,
  // so that a run's connections cut off what an earlier run's left behind.
  const uint64_t channel_id_;
  std::function<void()> on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool poked_ = false;  // under mu_
  std::atomic<bool> stop_{false};
  // By brick: the blocks runs that failed later copied there, with the
  // write_seq each copy was current with, and the store they went to (its
  // HELLO's brick uuid). Cleared when a run finishes. Resync thread only.
  struct CopiedBefore {
    std::array<uint8_t, proto::kUuidSize> store{};
    std::unordered_map<uint64_t, uint64_t> seq;
  };
  std::vector<CopiedBefore> copied_before_;
  uint64_t repair_next_ = 0;  // the block repair() looks at next (resync thread)
  uint64_t repaired_ = 0;     // blocks repair() settled so far (resync thread)
  std::thread thread_;
};

}  // namespace pbrick
