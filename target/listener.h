// The brick's TCP listening socket. (RDMA CM listening is rdma_listener.h;
// accepting on either, and the connection slots, are Server::Impl's in
// listener.cc.)
//
// Threading: any thread; the Server calls them from Create() (listening)
// and the loop thread (naming peers).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "common/client.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace pbrick {

// Binds (SO_REUSEADDR) and listens on `endpoint`, trying each address it
// resolves to. A port still held (EADDRINUSE: typically by the io_uring of a
// brick killed a moment ago, which the kernel tears down asynchronously) is
// tried again for `bind_retry_ms`. Port 0 picks a free port: `*port` is the
// one bound.
Result<UniqueFd> listen_tcp(const Endpoint& endpoint, uint32_t bind_retry_ms, uint16_t* port);

// "host:port" of a peer address, numeric; "?" when it cannot be named.
std::string peer_name(const sockaddr_storage& ss);

}  // namespace pbrick
