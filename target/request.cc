// The frame pump and request dispatch: every frame a connection sends, once
// whole, is checked against the handshake, given room for its reply, held
// at its sync point while persistence is due (or, for a MAP, while its
// block is promoted from the slow tier), and served.
#include <endian.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "common/units.h"
#include "target/server_impl.h"

namespace pbrick {

using proto::kHeaderSize;
using proto::Opcode;
using Outcome = PersistenceLedger::Outcome;

namespace {

constexpr size_t kListReplyMax = kHeaderSize + proto::kListReplyFixedSize + proto::kMaxListExtents * proto::kExtentSize;

// The output room a request's reply needs at most.
size_t reply_room(const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  switch (h.opcode) {
    case Opcode::kRead: {
      uint32_t len = proto::peek_io_length(payload);
      return kHeaderSize + (len > proto::kMaxIoSize ? 0 : len);
    }
    case Opcode::kList:
      return kListReplyMax;
    default:
      return kHeaderSize + 256;  // HELLO's reply, the largest fixed one, is 136 bytes
  }
}

}  // namespace

void Server::Impl::pump(Connection& c) {
  bool blocked = false;  // stopped for output room or persistence, not for lack of input
  // The peer is gone (end of stream, or a reset) while the connection may
  // still wait at a sync point and so stay open: its WRITEs not durable yet
  // are orphaned now, so that the next sync point of any connection covers
  // them (docs/protocol.md 11.1), not only once this one is closed. Again
  // at the close, for WRITEs it executes meanwhile.
  if (c.peer_eof) ledger_.orphan(c.sync);
  while (!c.closing && !c.waiting()) {
    c.grow_buffers();
    size_t avail = c.in_end - c.in_start;
    if (avail < kHeaderSize) break;
    const uint8_t* frame = c.in.get() + c.in_start;
    // Every reply needs a header's worth of room, error replies included.
    if (!c.out_room(kHeaderSize)) {
      blocked = true;
      break;
    }
    auto hdr = proto::decode_header({frame, kHeaderSize}, /*expect_reply=*/false);
    if (!hdr) {
      // Framing can no longer be trusted: say why (echoing what looks like the
      // request id) and close once the reply is out. A wrong magic means the
      // peer does not speak this protocol at all: no reply.
      PBRICK_LOG_WARN("%s: closing connection: %s", c.peer.c_str(), hdr.error().message().c_str());
      auto echo = proto::salvage_request_header({frame, kHeaderSize});
      if (echo) c.reply_error(*echo, hdr.error());
      c.begin_close();
      break;
    }
    if (!handshake_allows(c, *hdr)) break;
    size_t total = kHeaderSize + hdr->payload_len;
    if (total > c.in_cap && (!c.ready() || c.recv_inflight)) {
      // Only a ready connection gets the large buffer (grow_buffers(), once
      // its recv completed); a HELLO or AUTH frame always fits the small one.
      if (!c.ready()) {
        PBRICK_LOG_WARN("%s: closing connection: a %zu-byte frame during the handshake", c.peer.c_str(), total);
        c.begin_close();
      }
      break;
    }
    if (avail < total) {
      // Never move bytes under a recv in flight: it writes at the old in_end.
      if (c.in_start + total > c.in_cap && !c.recv_inflight) {
        std::memmove(c.in.get(), frame, avail);
        c.in_start = 0;
        c.in_end = avail;
      }
      break;
    }
    std::span<const uint8_t> payload{frame + kHeaderSize, hdr->payload_len};
    if (!c.out_room(reply_room(*hdr, payload))) {  // resumes when the pending send completes
      blocked = true;
      break;
    }
    if (hdr->opcode == Opcode::kPersist && c.ready()) {
      if (!handle_persist(c, *hdr, payload)) {
        blocked = true;
        break;
      }
      c.in_start += total;
      continue;
    }
    if (hdr->opcode == Opcode::kRead && c.transport->carries_data() && c.ready()) {
      // Sync-read: this READ is answered only once every earlier WRITE on this
      // connection, and every orphaned one, is durable - before any check of
      // the READ itself, so a READ through a dead handle is a sync point too
      // and only EIO means persistence failed (docs/protocol.md §11.1).
      Outcome sync = sync_point(c, ledger_.read_target(c.sync));
      if (sync == Outcome::kWaiting) {
        blocked = true;
        break;
      }
      if (sync == Outcome::kFailed) {
        c.reply_error(*hdr, Error(EIO, "READ: persisting earlier writes failed"));
        c.in_start += total;
        continue;
      }
    }
    if (hdr->opcode == Opcode::kMap && c.ready() && options_.tiering) {
      // MAP of a slow block promotes it first; c waits with the MAP still at
      // the head of `in`, and asks again when the tier wake resumes it.
      TierMap t = tier_before_map(c, *hdr, payload);
      if (t == TierMap::kWait) {
        blocked = true;
        break;
      }
      if (t == TierMap::kReplied) {
        c.in_start += total;
        continue;
      }
    }
    handle_frame(c, *hdr, payload);
    c.in_start += total;
  }
  if (c.in_start == c.in_end && !c.recv_inflight) c.in_start = c.in_end = 0;
  // RDMA: every request before a misframed message is answered; then it is,
  // and the connection closes.
  if (c.misframed && !c.closing && !blocked && !c.waiting() && c.in_start == c.in_end) {
    if (c.misframed_reply && c.out_room(kHeaderSize)) c.reply_error(c.misframed_reply->first, c.misframed_reply->second);
    c.begin_close();
  }
  // A peer that half-closed after its last request still gets every reply;
  // once nothing more can be parsed, the connection winds down. A request
  // waiting for its sync point (or its block's promotion) is not parsed yet:
  // the end of the stream may arrive before the fdatasync completes.
  if (c.peer_eof && !blocked && !c.waiting()) c.closing = true;
  c.transport->flush_output(c, ring_);
  c.transport->arm_recv(c, ring_);
  maybe_close(c);
}

void Server::Impl::handle_frame(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  using State = Connection::State;
  PBRICK_LOG_DEBUG("%s: %s #%llu (%u bytes)", c.peer.c_str(), proto::opcode_name(h.opcode),
                   static_cast<unsigned long long>(h.request_id), h.payload_len);
  if (c.state == State::kHello) {
    handle_hello(c, h, payload);  // handshake_allows() refused anything but HELLO on its header
    return;
  }
  if (h.opcode == Opcode::kHello) {
    c.reply_error(h, Error(EPROTO, "second HELLO"));
    c.begin_close();
    return;
  }
  if (c.state == State::kAuth) {
    handle_auth(c, h, payload);  // handshake_allows() refused anything but AUTH on its header
    return;
  }

  switch (h.opcode) {
    case Opcode::kAuth:
      c.reply_error(h, Error(EPROTO, "AUTH without a key"));
      return;
    case Opcode::kStat: {
      StoreStats s = store_.stats();
      proto::StatReply r;
      r.capacity_blocks = s.capacity_blocks;
      r.free_blocks = s.free_blocks;
      r.allocated_blocks = s.allocated_blocks;
      r.mapped_blocks = s.mapped_blocks;
      r.brick_uuid = store_.uuid();
      r.store_kind = store_.region().is_pmem() ? proto::kStorePmem : proto::kStoreFile;
      if ((c.features & proto::kFeatureTiers) != 0) {  // per-tier counts, only for a peer that knows them
        r.slow_capacity_blocks = static_cast<uint32_t>(s.slow_capacity_blocks);
        r.slow_free_blocks = static_cast<uint32_t>(s.slow_free_blocks);
      }
      proto::encode_stat_reply(r, c.reply_header(h, proto::kStatReplySize));
      return;
    }
    case Opcode::kAlloc:
    case Opcode::kFree: {
      auto req = proto::decode_addr_request(payload);
      if (!req) return c.reply_error(h, req.error());
      Status st = h.opcode == Opcode::kAlloc ? store_.alloc(req->vaddr) : store_.free(req->vaddr);
      if (!st) return c.reply_error(h, st.error());
      c.reply_header(h, 0);
      return;
    }
    case Opcode::kMap:
      handle_map(c, h, payload);
      return;
    case Opcode::kUnmap:
      handle_unmap(c, h, payload);
      return;
    case Opcode::kList: {
      auto req = proto::decode_list_request(payload);
      if (!req) return c.reply_error(h, req.error());
      proto::ListReply r = store_.list(req->cursor, c.transport->max_list_extents(req->max_extents));
      size_t size = proto::list_reply_size(r.extents.size());
      proto::encode_list_reply(r, c.reply_header(h, static_cast<uint32_t>(size)));
      return;
    }
    case Opcode::kRead:
    case Opcode::kWrite:
      if (!c.transport->carries_data()) {
        return c.reply_error(h, Error(EOPNOTSUPP, "data moves by one-sided RDMA on an RDMA connection"));
      }
      handle_io(c, h, payload);
      return;
    case Opcode::kFence:
      handle_fence(c, h, payload);
      return;
    case Opcode::kPersist:
      break;  // handled in pump()
    case Opcode::kHello:
      break;  // handled above
  }
}

Server::Impl::TierMap Server::Impl::tier_before_map(Connection& c, const proto::FrameHeader& h,
                                                    std::span<const uint8_t> payload) {
  auto req = proto::decode_map_request(payload);
  if (!req) return TierMap::kProceed;  // handle_map replies the error
  switch (options_.tiering->prepare_map(req->vaddr)) {
    case Tiering::MapReadiness::kReady:
      return TierMap::kProceed;
    case Tiering::MapReadiness::kWait:
      c.awaiting_tier = true;
      tier_waiters_.emplace_back(c.index, c.generation);
      return TierMap::kWait;
    case Tiering::MapReadiness::kNoFastSlot:
      break;
    case Tiering::MapReadiness::kNoRoom:
      c.reply_error(h, Error(EIO, "map " + format_hex(req->vaddr) +
                                      ": the block is on the slow tier and moving others down to make room for it "
                                      "failed (the brick's log says why); retry later"));
      return TierMap::kReplied;
    case Tiering::MapReadiness::kFailed:
      c.reply_error(h, Error(EIO, "map " + format_hex(req->vaddr) +
                                      ": copying the block up from the slow tier failed (the brick's log says why)"));
      return TierMap::kReplied;
  }
  c.reply_error(h, Error(ENOBUFS, "map " + format_hex(req->vaddr) +
                                      ": the block is on the slow tier and every fast slot is mapped; "
                                      "unmap blocks and retry"));
  return TierMap::kReplied;
}

// The one place a MAP is served.
void Server::Impl::handle_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_map_request(payload);
  if (!req) return c.reply_error(h, req.error());
  auto reply = handles_.map(c.index, c.rkeys, *req);
  if (!reply) return c.reply_error(h, reply.error());
  proto::encode_map_reply(*reply, c.reply_header(h, proto::kMapReplySize));
}

void Server::Impl::handle_unmap(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_addr_request(payload);
  if (!req) return c.reply_error(h, req.error());
  Status st = handles_.unmap(c.rkeys, req->vaddr);
  if (!st) return c.reply_error(h, st.error());
  c.reply_header(h, 0);
}

void Server::Impl::handle_io(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  std::span<const uint8_t> data;
  auto req = proto::decode_io_request(payload, h.opcode, &data);
  if (!req) return c.reply_error(h, req.error());
  const Handle* hd = nullptr;
  auto offset = handles_.resolve(req->rkey, req->remote_addr, req->length, &hd);
  if (!offset) return c.reply_error(h, offset.error());
  if (h.opcode == Opcode::kWrite) {
    if ((hd->map_flags & proto::kMapWrite) == 0) {
      return c.reply_error(h, Error(EACCES, "WRITE through a read-only mapping"));
    }
    store_.region().copy_nodrain(*offset, data.data(), data.size());
    ledger_.note_write(c.sync);
    c.reply_header(h, 0);
    return;
  }
  uint8_t* out = c.reply_header(h, req->length);
  std::memcpy(out, store_.region().base() + *offset, req->length);
}

// A writer that gives up on a connection (a timeout, a reset) sends its
// requests again on a new one, and then newer data. Whatever the old
// connection still carried - frames in this brick's receive buffer, frames
// parsed but held at a sync point or behind a promotion, one-sided writes on
// its queue pair - must not land after that. The FENCE at the head of the new
// connection cuts every such connection off before it is answered, and the
// loop, which alone executes requests, parses nothing more of them.
void Server::Impl::handle_fence(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  if ((c.features & proto::kFeatureFence) == 0) {
    return c.reply_error(h, Error(EOPNOTSUPP, "FENCE without the FENCE feature"));
  }
  auto req = proto::decode_fence_request(payload);
  if (!req) return c.reply_error(h, req.error());
  for (auto& slot : conns_) {
    if (!slot || slot.get() == &c || !slot->fence || slot->fence->scope != req->scope) continue;
    Connection& old = *slot;
    // The same writer's other channels stay; its old connection of this
    // channel, and every connection of another writer, go.
    if (old.fence->writer == req->writer && old.fence->channel != req->channel) continue;
    PBRICK_LOG_NOTICE("%s: closing the connection: %s took its place (FENCE of scope %s)", old.peer.c_str(),
                      c.peer.c_str(), format_hex(req->scope).c_str());
    old.fence.reset();
    // Its peer gave it up: what it still holds of replies goes nowhere (unless
    // a send in flight points into it; that one fails on the shut socket).
    if (!old.transport->pins_output(old)) old.drop_output();
    old.transport->cut_off();
    // Its executed WRITEs are covered by the next sync point of any connection
    // from now on, not from whenever its close completes.
    ledger_.orphan(old.sync);
    old.begin_close();
    maybe_close(old);  // at once when nothing of it is in flight (old may be gone after this)
  }
  c.fence = *req;
  c.reply_header(h, 0);
}

// PERSIST names ranges through live handles (or none: every writable
// mapping). pmem: cache flush + drain of each range (which never modifies the
// data, so writes other queue pairs make meanwhile are safe). A file store:
// one fdatasync through io_uring, the reply waiting for it. (Over RDMA a file
// store can only be tmpfs or hugetlbfs - the kernel refuses to let a NIC pin
// pages it tracks for writeback - so pages dirtied behind the kernel's back
// never need writing back.) Returns false while that fdatasync runs.
bool Server::Impl::handle_persist(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  if (c.sync.sync_target != 0) return finish_persist(c, h);  // resumed after its fdatasync
  auto req = proto::decode_persist_request(payload);
  if (!req) {
    c.reply_error(h, req.error());
    return true;
  }
  PmemRegion& region = store_.region();
  // Over TCP the brick wrote every byte itself, with non-temporal stores the
  // drain below makes durable: flushing the ranges would only walk their
  // cache lines - every writable mapping of the brick for a PERSIST that
  // names none - while every connection waits. Over RDMA the NIC wrote them.
  if (region.is_pmem() && !c.transport->carries_data()) {
    for (const HandleTable::Range& r : handles_.persist_ranges(*req)) {
      Status st = region.persist(r.offset, r.len);
      if (!st) {
        // The region is marked failed: sync points answer EIO from now on.
        PBRICK_LOG_ERROR("%s: PERSIST: %s", c.peer.c_str(), st.error().message().c_str());
        break;
      }
    }
  }
  // pmem: the drain covers TCP WRITEs (non-temporal stores), also those
  // through handles that died since. A file store: one fdatasync that starts
  // now covers the ranges, and every earlier TCP WRITE too.
  c.sync.sync_target = ledger_.persist_target();
  return finish_persist(c, h);
}

bool Server::Impl::finish_persist(Connection& c, const proto::FrameHeader& h) {
  switch (sync_point(c, c.sync.sync_target)) {
    case Outcome::kWaiting:
      return false;
    case Outcome::kFailed:
      c.reply_error(h, Error(EIO, "PERSIST: persisting the store failed"));
      return true;
    case Outcome::kDurable:
      c.reply_header(h, 0);
      return true;
  }
  return true;
}

}  // namespace pbrick
