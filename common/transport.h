// How a client reaches a brick, and how it learns that its writes are durable.
// Shared by the daemons' flags, the cluster file and the volume engine; the
// engine itself only sees a DataChannel and never branches on the transport.
#pragma once

#include <string_view>

#include "common/result.h"

namespace pbrick {

// kTcp: every operation is a frame on a TCP stream; the brick's CPU moves data.
// kRdma: control frames are SEND/RECV messages on an RC queue pair; data moves
//   by one-sided RDMA READ/WRITE, without the brick's CPU.
enum class Transport { kTcp, kRdma };

// How a client learns that a write is persistent (docs/persistence.md).
// kSyncRead: a read after the writes on the same connection; over RDMA only
//   true when the storage NIC's writes bypass the CPU cache (DDIO off).
// kRpc: the brick persists the named ranges on request (PERSIST) and replies.
enum class Persistence { kSyncRead, kRpc };

const char* transport_name(Transport t);
const char* persistence_name(Persistence p);

// "tcp" | "rdma"; EINVAL naming `what` (the flag or key) otherwise.
Result<Transport> parse_transport(std::string_view text, std::string_view what);
// "sync-read" | "rpc"; EINVAL naming `what` otherwise.
Result<Persistence> parse_persistence(std::string_view text, std::string_view what);

}  // namespace pbrick
