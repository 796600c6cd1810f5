#include "gateway/block_mapper.h"

#include <pthread.h>

#include <algorithm>

namespace pbrick {

BlockMapper::BlockMapper(Volume& volume, size_t max_waiters, std::function<void()> wake)
    : volume_(volume), wake_(std::move(wake)), waits_(max_waiters), waiter_pool_(max_waiters) {
  free_waits_.reserve(max_waiters);
  for (Wait& w : waits_) free_waits_.push_back(&w);
  for (Waiter& w : waiter_pool_) {
    w.next = free_waiters_;
    free_waiters_ = &w;
  }
  active_.reserve(max_waiters);
  done_.reserve(max_waiters);
  taken_.reserve(max_waiters);
  for (uint32_t b = 0; b < volume_.brick_count(); b++) {
    workers_.push_back(std::make_unique<Worker>());
    Worker& worker = *workers_.back();
    worker.thread = std::thread([this, &worker] { work(worker); });
    pthread_setname_np(worker.thread.native_handle(), "pbrick-map");
  }
}

BlockMapper::~BlockMapper() {
  for (auto& worker : workers_) {
    {
      std::lock_guard lock(worker->mu);
      worker->stop = true;
    }
    worker->cv.notify_one();
  }
  for (auto& worker : workers_) worker->thread.join();
}

bool BlockMapper::park(void* request, uint64_t block, bool for_write) {
  if (free_waiters_ == nullptr) return false;
  Wait* wait = nullptr;
  for (Wait* w : active_) {
    if (w->discard == nullptr && w->block == block) {
      wait = w;  // a mapping of this block is under way: share it
      break;
    }
  }
  bool start = wait == nullptr;
  if (start) {
    if (free_waits_.empty()) return false;
    wait = free_waits_.back();
    free_waits_.pop_back();
    wait->block = block;
    wait->for_write = for_write;
    wait->discard = nullptr;
    wait->status = Status::Ok();
    wait->waiters = nullptr;
    wait->next = nullptr;
    active_.push_back(wait);
  }
  Waiter* waiter = free_waiters_;
  free_waiters_ = waiter->next;
  waiter->request = request;
  waiter->next = wait->waiters;
  wait->waiters = waiter;
  if (start) {
    maps_started_.fetch_add(1, std::memory_order_relaxed);
    enqueue(wait);
  }
  return true;
}

void BlockMapper::enqueue(Wait* wait) {
  Worker& worker = *workers_[volume_.brick_of(wait->block)];
  {
    std::lock_guard lock(worker.mu);
    if (worker.tail != nullptr) {
      worker.tail->next = wait;
    } else {
      worker.head = wait;
    }
    worker.tail = wait;
  }
  worker.cv.notify_one();
}

bool BlockMapper::park_discard(void* request, DiscardPlan& plan, std::vector<IoPiece>& pieces) {
  if (free_waiters_ == nullptr || free_waits_.empty()) return false;
  Wait* wait = free_waits_.back();
  free_waits_.pop_back();
  // The worker of the copy whose brick is known unreachable, if any: its
  // FREE is the one that waits (the others are quick), and only that
  // brick's mappings should queue behind it.
  const uint64_t block = plan.from / proto::kBlockSize;
  const Placement& pl = volume_.placement();
  wait->block = pl.unit(block, 0);
  if (const MirrorState* mirror = volume_.mirror(); mirror != nullptr) {
    for (uint32_t copy = 0; copy < pl.copies; copy++) {
      if (!mirror->reachable(pl.brick_of(pl.unit(block, copy)))) {
        wait->block = pl.unit(block, copy);
        break;
      }
    }
  }
  wait->for_write = true;
  wait->discard = &plan;
  wait->pieces = &pieces;
  wait->discard_request = request;
  wait->status = Status::Ok();
  wait->next = nullptr;
  Waiter* waiter = free_waiters_;
  free_waiters_ = waiter->next;
  waiter->request = request;
  waiter->next = nullptr;
  wait->waiters = waiter;
  active_.push_back(wait);
  enqueue(wait);
  return true;
}

void BlockMapper::release(Wait* w) {
  auto it = std::find(active_.begin(), active_.end(), w);
  *it = active_.back();
  active_.pop_back();
  w->waiters = nullptr;
  free_waits_.push_back(w);
}

void BlockMapper::work(Worker& worker) {
  for (;;) {
    Wait* w;
    {
      std::unique_lock lock(worker.mu);
      worker.cv.wait(lock, [&] { return worker.stop || worker.head != nullptr; });
      if (worker.stop) return;
      w = worker.head;
      worker.head = w->next;
      if (worker.head == nullptr) worker.tail = nullptr;
    }
    if (w->discard != nullptr) {
      DiscardPlan& plan = *w->discard;
      auto planned = plan_discard(volume_, plan.from, plan.parked_end - plan.from, plan.zeros, w->discard_request,
                                  *w->pieces);
      if (planned) {
        plan.worked_to = *planned;
      } else {
        plan.error = planned.error();
      }
      w->status = Status::Ok();  // the outcome is the plan's
    } else if (auto mapped = volume_.map_block(w->block, w->for_write);
               mapped.ok() || (!w->for_write && mapped.error().errnum() == ENOENT)) {
      w->status = Status::Ok();  // ENOENT: freed meanwhile, the read is zeros
    } else {
      w->status = mapped.error();
    }
    {
      std::lock_guard lock(done_mu_);
      done_.push_back(w);
    }
    wake_();
  }
}

}  // namespace pbrick
