// Maps blocks off an event loop: the blocking control work of a block's first
// access (ALLOC + MAP of a first write, MAP of a block not mapped yet; over
// RDMA the brick registers the block's memory region meanwhile, and a brick
// that is down keeps the control path retrying until the volume's
// io_timeout) runs on control worker threads, while the loop keeps serving
// every request whose blocks are mapped. The way ublksrv does blocking work
// beside its queues (ublksrv_aio.h): a worker does it and wakes the queue's
// ring through an eventfd.
//
// An event loop (the ublk queue) owns one BlockMapper, with one worker thread
// per brick of the volume (the Volume serialises control work per brick
// anyway, so a down brick holds up only its own blocks' mappings):
//
//  1. queue_round (volume_io.h), given the mapper, finds a piece whose block
//     has no handle and calls park(request, block, for_write) instead of
//     Volume::map_block: the request sends nothing of that round and waits.
//     Requests waiting for the same block share one mapping.
//  2. A worker runs Volume::map_block (its retry and timeout rules: a brick
//     unreachable for io_timeout gives EIO naming it), then calls `wake`.
//  3. The loop, woken, calls take_done(fn): fn(request, status) for every
//     request of each finished mapping. Status ok (ENOENT of a read included:
//     the block was freed, it now reads as zeros): plan the request again
//     (queue_round finds the handle); an error: the request fails with it.
//     A request that joined a mapping already under way shares its outcome.
//
// A DISCARD's FREE of a whole block is the same kind of blocking control
// work (UNMAP + FREE, a down brick retried until the io_timeout): the loop
// hands it, a block at a time, to the worker of the block's brick with
// park_discard (volume_io.h, plan_discard_step), and plans on once
// take_done hands the request back.
//
// Nothing is allocated per request once started: waits and waiter nodes come
// from pools sized for `max_waiters` (the loop's requests in flight); park()
// returns false only when they are exhausted, and the caller then maps on its
// own thread as before.
//
// Thread: park() and take_done() on the loop thread only; `wake` runs on a
// worker thread; the constructor and destructor on the loop's owner (the
// destructor joins the workers: every parked request must have been taken
// back, or it waits for the mappings under way to end).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/result.h"
#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

class BlockMapper {
 public:
  BlockMapper(Volume& volume, size_t max_waiters, std::function<void()> wake);
  ~BlockMapper();
  BlockMapper(const BlockMapper&) = delete;
  BlockMapper& operator=(const BlockMapper&) = delete;

  // Loop thread: `request` waits until `block` is mapped (allocated first
  // when `for_write`). A request parks at most once at a time. False: no room
  // (more waiters than max_waiters), map on the caller's thread.
  bool park(void* request, uint64_t block, bool for_write);

  // Loop thread: a worker runs plan_discard over [plan.from, plan.parked_end)
  // (one block: its FREEs are control round trips) into `pieces`, records
  // where it got to in `plan` (volume_io.h, plan_discard_step), and hands
  // `request` back through take_done like a mapping. `plan` and `pieces` are
  // the worker's until then. False: no room, plan on the caller's thread.
  bool park_discard(void* request, DiscardPlan& plan, std::vector<IoPiece>& pieces);

  // Loop thread: fn(void* request, const Status& status) for every request of
  // each mapping finished since the last call (see above). fn may park again.
  template <typename Fn>
  void take_done(Fn&& fn) {
    {
      std::lock_guard lock(done_mu_);
      taken_.swap(done_);
    }
    for (Wait* w : taken_) {
      Waiter* head = w->waiters;
      Status status = std::move(w->status);  // no allocation unless it failed
      release(w);  // before fn: a request may park on the same block again
      while (head != nullptr) {
        Waiter* next = head->next;
        void* request = head->request;
        head->next = free_waiters_;
        free_waiters_ = head;
        fn(request, static_cast<const Status&>(status));
        head = next;
      }
    }
    taken_.clear();
  }

  // Mappings started so far (statistics, tests: waiters that share one count
  // once). Any thread.
  uint64_t maps_started() const { return maps_started_.load(std::memory_order_relaxed); }

 private:
  struct Waiter {
    void* request = nullptr;
    Waiter* next = nullptr;
  };
  struct Wait {
    uint64_t block = 0;
    bool for_write = false;
    DiscardPlan* discard = nullptr;  // a discard's block: not shared, not a mapping
    std::vector<IoPiece>* pieces = nullptr;
    void* discard_request = nullptr;
    Waiter* waiters = nullptr;  // loop thread only
    Wait* next = nullptr;       // in a worker's queue
    Status status;              // set by the worker before it hands the wait back
  };
  struct Worker {
    std::mutex mu;
    std::condition_variable cv;
    Wait* head = nullptr;
    Wait* tail = nullptr;
    bool stop = false;
    std::thread thread;
  };

  void work(Worker& worker);
  void enqueue(Wait* wait);  // to the worker of its block's brick
  void release(Wait* w);

  Volume& volume_;
  std::function<void()> wake_;
  std::vector<Wait> waits_;
  std::vector<Wait*> free_waits_;
  std::vector<Wait*> active_;  // mappings under way, for requests to join
  std::vector<Waiter> waiter_pool_;
  Waiter* free_waiters_ = nullptr;

  std::mutex done_mu_;
  std::vector<Wait*> done_;  // finished, not taken yet
  std::vector<Wait*> taken_;

  std::vector<std::unique_ptr<Worker>> workers_;  // by brick
  std::atomic<uint64_t> maps_started_{0};
};

}  // namespace pbrick
