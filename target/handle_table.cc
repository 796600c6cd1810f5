#include "target/handle_table.h"

#include <cstring>
#include <string>

#include "common/auth.h"
#include "common/log.h"
#include "common/units.h"
#include "target/rdma_listener.h"

namespace pbrick {

Result<uint32_t> HandleTable::fresh_rkey() {
  for (int attempt = 0; attempt < 64; attempt++) {
    if (rkey_pool_pos_ + 4 > rkey_pool_.size()) {
      rkey_pool_.resize(4096);
      PBRICK_TRY(random_bytes(rkey_pool_.data(), rkey_pool_.size()));
      rkey_pool_pos_ = 0;
    }
    uint32_t rkey;
    std::memcpy(&rkey, rkey_pool_.data() + rkey_pool_pos_, sizeof rkey);
    rkey_pool_pos_ += sizeof rkey;
    if (rkey != 0 && handles_.find(rkey) == handles_.end()) return rkey;
  }
  return Error(EAGAIN, "map: could not draw a fresh rkey");
}

Result<proto::MapReply> HandleTable::map(uint32_t owner, std::vector<uint32_t>& owned,
                                         const proto::MapRequest& req) {
  const std::string what = "map " + format_hex(req.vaddr);
  auto slot = store_.slot_offset(req.vaddr);
  if (!slot) return slot.error();
  for (uint32_t rkey : owned) {
    if (handles_.at(rkey).vaddr == req.vaddr) return Error(EEXIST, what + ": already mapped by this connection");
  }
  MapState& ms = map_state_[req.vaddr];
  bool shared = (req.map_flags & proto::kMapShared) != 0;
  auto fail = [&](const Error& e) -> Error {
    if (ms.count == 0) map_state_.erase(req.vaddr);
    return e;
  };
  if ((!shared && ms.count > 0) || (shared && ms.exclusive)) {
    return fail(Error(EBUSY, what + ": mapped exclusively elsewhere"));
  }
  uint32_t rkey = 0;
  uint64_t remote_base = 0;
  rdma::MrPtr mr;
  if (listener_ != nullptr) {
    // A memory region with exactly the access the flags allow: the NIC itself
    // refuses a WRITE through a read-only handle, and UNMAP kills the rkey.
    auto reg = listener_->register_block(*slot, proto::kBlockSize, (req.map_flags & proto::kMapWrite) != 0);
    if (!reg) return fail(reg.error().wrap(what));
    mr = std::move(reg->mr);
    rkey = mr->rkey;
    remote_base = reg->remote_addr;
  } else {
    auto fresh = fresh_rkey();
    if (!fresh) return fail(fresh.error());
    rkey = *fresh;
    // The remote address is random too (like ibv_reg_mr_iova), 2 MiB aligned and
    // far enough from the top that base + length never wraps.
    Status st = random_bytes(reinterpret_cast<uint8_t*>(&remote_base), sizeof remote_base);
    if (!st) return fail(st.error());
    remote_base &= ~(proto::kBlockSize - 1);
    remote_base &= (1ull << 63) - 1;
  }
  Status st = store_.pin(req.vaddr);
  if (!st) return fail(st.error());
  ms.count++;
  ms.exclusive = !shared;
  handles_[rkey] = Handle{req.vaddr, remote_base, *slot, req.map_flags, owner, std::move(mr)};
  owned.push_back(rkey);
  proto::MapReply r;
  r.rkey = rkey;
  r.map_flags = req.map_flags;
  r.remote_addr = remote_base;
  r.length = proto::kBlockSize;
  return r;
}

void HandleTable::revoke(uint32_t rkey) {
  auto it = handles_.find(rkey);
  if (it == handles_.end()) return;
  uint64_t vaddr = it->second.vaddr;
  // Clients may have written through it without a PERSIST yet.
  const bool dirty = it->second.mr && (it->second.map_flags & proto::kMapWrite) != 0;
  if (dirty) revoked_dirty_.push_back(it->second.slot_offset);
  handles_.erase(it);  // deregisters its memory: no RDMA WRITE lands through it after this
  // Without PERSISTs (sync-read clients) the list would only grow: flush the
  // blocks' cache lines now - after the deregistration, or a WRITE landing
  // between the flush and it would be in no list a later PERSIST covers.
  if (dirty && revoked_dirty_.size() >= 1024) {
    for (uint64_t offset : revoked_dirty_) {
      if (!store_.region().is_pmem()) break;
      Status st = store_.region().persist(offset, proto::kBlockSize);
      if (!st) PBRICK_LOG_ERROR("%s", st.error().message().c_str());
    }
    revoked_dirty_.clear();
  }
  store_.unpin(vaddr);
  auto ms = map_state_.find(vaddr);
  if (ms != map_state_.end() && --ms->second.count == 0) map_state_.erase(ms);
}

void HandleTable::revoke_all(std::vector<uint32_t>& owned) {
  for (uint32_t rkey : owned) revoke(rkey);
  owned.clear();
}

Status HandleTable::unmap(std::vector<uint32_t>& owned, uint64_t vaddr) {
  size_t revoked = 0;
  for (size_t i = 0; i < owned.size();) {
    auto it = handles_.find(owned[i]);
    if (it != handles_.end() && it->second.vaddr == vaddr) {
      revoke(owned[i]);
      owned[i] = owned.back();
      owned.pop_back();
      revoked++;
    } else {
      i++;
    }
  }
  if (revoked == 0) {
    // The store's error for an address that names no block (EINVAL, ENOENT);
    // a block on the slow tier or moving (EAGAIN for a MAP) is one this
    // connection has not mapped like any other.
    auto slot = store_.slot_offset(vaddr);
    if (!slot && slot.error().errnum() != EAGAIN) return slot.error();
    return Error(ENOENT, "unmap " + format_hex(vaddr) + ": not mapped by this connection");
  }
  return Status::Ok();
}

Result<uint64_t> HandleTable::resolve(uint32_t rkey, uint64_t remote_addr, uint64_t length,
                                      const Handle** handle) const {
  auto it = handles_.find(rkey);
  if (it == handles_.end()) return Error(EKEYREJECTED, "rkey " + format_hex(rkey) + " is not valid");
  const Handle& hd = it->second;
  if (remote_addr < hd.remote_base || remote_addr - hd.remote_base > proto::kBlockSize ||
      length > proto::kBlockSize - (remote_addr - hd.remote_base)) {
    return Error(ERANGE, "access outside the mapped block");
  }
  *handle = &hd;
  return hd.slot_offset + (remote_addr - hd.remote_base);
}

const std::vector<HandleTable::Range>& HandleTable::persist_ranges(const proto::PersistRequest& req) {
  ranges_.clear();
  if (req.ranges.empty()) {
    for (const auto& [rkey, hd] : handles_) {
      if ((hd.map_flags & proto::kMapWrite) != 0) ranges_.push_back({hd.slot_offset, proto::kBlockSize});
    }
  } else {
    for (const proto::PersistRange& pr : req.ranges) {
      // A range through a handle revoked since (its rkey unknown, or reused
      // for another block) is skipped: revoking a writable RDMA handle put
      // its block on revoked_dirty_, persisted below.
      const Handle* hd = nullptr;
      auto offset = resolve(pr.rkey, pr.remote_addr, pr.length, &hd);
      if (!offset) continue;
      ranges_.push_back({*offset, pr.length});
    }
  }
  for (uint64_t offset : revoked_dirty_) ranges_.push_back({offset, proto::kBlockSize});
  revoked_dirty_.clear();
  return ranges_;
}

}  // namespace pbrick
