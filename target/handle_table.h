// The brick's handles: what MAP hands out (an rkey and a remote address for
// one block), who holds them, and their revocation.
//
// A block is mapped exclusively by one handle, or shared by any number of
// read-only or writable MAP_SHARED handles; never both. Every handle pins its
// block in the store (it cannot be freed while mapped). Over RDMA a handle is
// a memory region registered with exactly the access its flags allow, so the
// NIC itself refuses a WRITE through a read-only handle, and revoking it
// deregisters the region: the rkey dies in the NIC. Over TCP the rkey and the
// remote address are random (like ibv_reg_mr_iova) and the Server checks
// every READ/WRITE against them (resolve()).
//
// Revoking a writable RDMA handle may leave data clients wrote through it
// without a PERSIST yet: its block is remembered (revoked_dirty) and persisted
// with the next PERSIST (persist_ranges()).
//
// Threading: the Server's loop thread only (it also uses the Store).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/protocol.h"
#include "common/rdma.h"
#include "common/result.h"
#include "target/store.h"

namespace pbrick {

class RdmaListener;

struct Handle {
  uint64_t vaddr = 0;
  uint64_t remote_base = 0;
  uint64_t slot_offset = 0;
  uint32_t map_flags = 0;
  uint32_t owner = 0;  // the mapping connection's slot
  rdma::MrPtr mr;      // RDMA: the registration; deregistering kills the rkey in the NIC
};

class HandleTable {
 public:
  // `listener`: the RDMA brick's listener, which registers blocks; null on a
  // TCP brick.
  HandleTable(Store& store, RdmaListener* listener) : store_(store), listener_(listener) {}
  HandleTable(const HandleTable&) = delete;
  // The RDMA brick's listener, known once it listens: before the first map().
  void set_listener(RdmaListener* listener) { listener_ = listener; }
  HandleTable& operator=(const HandleTable&) = delete;

  // MAP of `req.vaddr` for the connection in slot `owner`, whose handles are
  // `owned` (the new rkey is appended). Errors: the store's (no such block),
  // EEXIST (this connection maps it already), EBUSY (mapped exclusively
  // elsewhere, or exclusive asked while shared elsewhere), and registration
  // or pin failures; nothing changes on error.
  Result<proto::MapReply> map(uint32_t owner, std::vector<uint32_t>& owned, const proto::MapRequest& req);

  // UNMAP: revokes every handle in `owned` on `vaddr` and drops it from
  // `owned`. The store's error for an unknown block, else ENOENT when
  // `owned` has none on it.
  Status unmap(std::vector<uint32_t>& owned, uint64_t vaddr);

  // Revokes one handle (unknown rkeys are ignored).
  void revoke(uint32_t rkey);
  // Revokes every handle in `owned` (a closing connection's) and clears it.
  void revoke_all(std::vector<uint32_t>& owned);

  // The store offset of an access of `length` bytes at `remote_addr`
  // through `rkey`: EKEYREJECTED for an rkey no handle has, ERANGE outside
  // the mapped block. `handle` is set to the handle.
  Result<uint64_t> resolve(uint32_t rkey, uint64_t remote_addr, uint64_t length, const Handle** handle) const;

  struct Range {
    uint64_t offset, len;
  };
  // The store ranges a PERSIST covers: its ranges through live handles
  // (ranges through dead or reused rkeys, or outside their block, are
  // skipped), or every writable handle's block when it names none; plus
  // every block of a writable RDMA handle revoked since the last call.
  // Valid until the next call.
  const std::vector<Range>& persist_ranges(const proto::PersistRequest& req);

  size_t size() const { return handles_.size(); }
  const Handle* find(uint32_t rkey) const {
    auto it = handles_.find(rkey);
    return it == handles_.end() ? nullptr : &it->second;
  }
  // How many handles map `vaddr`, and whether one does exclusively.
  uint32_t map_count(uint64_t vaddr) const {
    auto it = map_state_.find(vaddr);
    return it == map_state_.end() ? 0 : it->second.count;
  }
  size_t revoked_dirty() const { return revoked_dirty_.size(); }

 private:
  struct MapState {
    uint32_t count = 0;
    bool exclusive = false;
  };
  Result<uint32_t> fresh_rkey();

  Store& store_;
  RdmaListener* listener_;
  std::unordered_map<uint32_t, Handle> handles_;      // rkey -> handle
  std::unordered_map<uint64_t, MapState> map_state_;  // vaddr -> who maps it
  std::vector<uint64_t> revoked_dirty_;  // slots of writable RDMA handles revoked since the last PERSIST
  std::vector<Range> ranges_;            // persist_ranges()'s result
  std::vector<uint8_t> rkey_pool_;       // random bytes for rkeys
  size_t rkey_pool_pos_ = 0;
};

}  // namespace pbrick
