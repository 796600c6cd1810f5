// The brick's server: one thread, one io_uring, every connection's receive,
// send and persistence (fdatasync) driven as io_uring operations. There is no
// per-request or per-connection thread: control operations and, over TCP, the
// one-sided READ/WRITE stand-ins are all served from the event loop. Over RDMA
// the loop also polls the RDMA CM channel and the completion channel
// (target/rdma_listener.h) and never sees data: clients READ and WRITE the
// registered blocks with one-sided RDMA.
//
// The pieces, one file each, are listed in target/server_impl.h: the event
// loop, listening and connection slots, the handshake, request dispatch, a
// connection and its transport (TCP or RDMA behind one interface), the handle
// table, the persistence ledger (which fdatasync covers which WRITEs) and the
// ring with its user_data packing (event_ring.h).
//
// Threading: Create(), run() and the destructor on the same thread. The Store
// is used only from that thread while run() executes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "common/auth.h"
#include "common/client.h"
#include "common/result.h"
#include "common/transport.h"
#include "common/unique_fd.h"
#include "target/pmem_region.h"
#include "target/store.h"

namespace pbrick {

// Whether an RDMA READ after RDMA WRITEs on one queue pair makes them durable
// on this brick (docs/persistence.md "sync-read"): the store is persistent
// memory on a platform that flushes the CPU caches on power loss (eADR:
// `domain` kCpuCache), where whatever the NIC wrote into the caches - DDIO
// on, or soft-RoCE's memcpy - is already durable; or the operator declared
// DDIO off (`declared` kSyncRead) - which means nothing when the device is
// software (`cpu_copies`: its writes are CPU stores, left in the caches) and
// the store is persistent memory (`store_is_pmem`; a file store loses
// everything with the host's power whatever the device).
bool sync_read_persists_over_rdma(Persistence declared, PersistenceDomain domain, bool store_is_pmem,
                                  bool cpu_copies);

struct ServerOptions {
  Endpoint listen;
  // kRdma: RDMA CM on `listen`; control frames as SEND/RECV messages, data by
  // the clients' one-sided READ/WRITE into memory regions MAP registers.
  Transport transport = Transport::kTcp;
  // kSyncRead declares that the storage NIC writes straight to the persistence
  // domain (DDIO off), so an RDMA READ after RDMA WRITEs makes them durable;
  // without it (and without a store whose persistence domain includes the CPU
  // caches: sync_read_persists_over_rdma) an RDMA client asking for sync-read
  // is refused. PERSIST (rpc) is always served; over TCP the brick's CPU
  // persists before answering a sync-read, so both work there.
  Persistence persistence = Persistence::kRpc;
  std::optional<ClusterKey> key;
  // Connections past their handshake (HELLO, and AUTH when a key is set); one
  // more is refused with EAGAIN once its handshake succeeds.
  uint32_t max_connections = 128;
  // Connections still in their handshake count separately, so peers that
  // never prove the key cannot take the slots of those that did. When this
  // many are pending, a new connection closes the oldest of them. Until the
  // handshake completes a connection reads only HELLO/AUTH-sized frames into
  // one-page buffers (over RDMA: its queue pair has no remote access).
  uint32_t max_handshakes = 64;
  // A connection that has not finished HELLO (and AUTH, when a key is set)
  // within this time is closed, so idle half-open peers cannot pin slots.
  uint32_t handshake_timeout_ms = 10000;
  // TCP: a peer that leaves the brick's replies unread (a zero window) or
  // unacknowledged this long loses its connection (TCP_USER_TIMEOUT): its
  // slot, buffers and mappings - an exclusive one is a volume's lock - are
  // freed. Well above a gateway's I/O timeout (30 s by default).
  uint32_t stalled_peer_timeout_ms = 60000;
  // A port still held (EADDRINUSE: typically by the io_uring or the RDMA CM
  // ids of a brick killed a moment ago, which the kernel tears down
  // asynchronously) is tried again for this long before Create() fails.
  uint32_t bind_retry_ms = 5000;
  // The boot id HELLO reports; unset: the host's. Tests stand in for a
  // reboot of the brick's host with another one.
  std::optional<std::array<uint8_t, proto::kUuidSize>> boot_id;
  // The brick's data mover when the store has a slow tier (owned by the
  // caller, outliving the server): MAP promotes slow blocks through it, the
  // tick drives background demotion. Null: a store with one tier.
  class Tiering* tiering = nullptr;
};

class Server {
 public:
  // Persists the whole store (docs/protocol.md §11), then binds and listens
  // (SO_REUSEADDR; a port still in use is retried for bind_retry_ms); port 0
  // picks a free port (see port()).
  static Result<std::unique_ptr<Server>> Create(Store& store, const ServerOptions& options);
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const;

  // Serves `fd`, an already-connected stream socket (one end of a socketpair,
  // say), exactly as a connection accepted on the listening socket: the same
  // handshake budget, buffers and checks. For tests and fuzzers that drive a
  // real Server without a network (tests/fuzz/server_fuzz.cc); the daemon
  // never calls it. Call it on the thread that calls run(), before run().
  Status adopt(UniqueFd fd);

  // Serves until SIGTERM or SIGINT arrives; the caller must have blocked both
  // signals in every thread (run() reads them through a signalfd). Sends
  // READY=1 to systemd once accepting, WATCHDOG=1 when a watchdog is configured,
  // STATUS= lines, and STOPPING=1 on the way out. Returns after every
  // connection is closed and its mappings are revoked.
  Status run();

  // Makes run() return as if SIGTERM had arrived. Safe from any thread (tests
  // and embedders run the server on a thread of their own).
  void stop();

  class Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pbrick
