// The brick's TCP listening socket, and the bind retry RDMA CM listening
// (rdma_listener.h) shares. (Accepting on either, and the connection slots,
// are Server::Impl's in listener.cc.)
//
// Threading: any thread; the Server calls them from Create() (listening)
// and the loop thread (naming peers).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <string>

#include "common/client.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace pbrick {

// Binds (SO_REUSEADDR) and listens on `endpoint`, trying each address it
// resolves to. A port still held (EADDRINUSE: typically by the io_uring of a
// brick killed a moment ago, which the kernel tears down asynchronously) is
// tried again for `bind_retry_ms`. Port 0 picks a free port: `*port` is the
// one bound. A unix socket (`*port` 0) replaces the file a killed brick left
// (nobody accepts on it), never a live brick's socket or a file that is not
// a socket, and is made owner-only (0600).
Result<UniqueFd> listen_stream(const Endpoint& endpoint, uint32_t bind_retry_ms, uint16_t* port);

// The bind of a listener, TCP or RDMA CM: calls `bind` (0, or -1 with errno
// set) again every 50 ms while it fails with EADDRINUSE, for up to
// `retry_ms`, saying so in the log once; any other error fails at once.
// Errors name `where` and `what` (the call, with a hint), and a port still in
// use after `retry_ms` says so.
Status bind_with_retry(const std::string& where, const std::string& what, uint32_t retry_ms,
                       const std::function<int()>& bind);

// "host:port" of a peer address, numeric; "local" for a unix socket's peer;
// "?" when it cannot be named.
std::string peer_name(const sockaddr_storage& ss);

}  // namespace pbrick
