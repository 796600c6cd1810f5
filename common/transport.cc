#include "common/transport.h"

#include <string>

namespace pbrick {

const char* transport_name(Transport t) { return t == Transport::kRdma ? "rdma" : "tcp"; }

const char* persistence_name(Persistence p) { return p == Persistence::kSyncRead ? "sync-read" : "rpc"; }

Result<Transport> parse_transport(std::string_view text, std::string_view what) {
  if (text == "tcp") return Transport::kTcp;
  if (text == "rdma") return Transport::kRdma;
  return Error(EINVAL, std::string(what) + ": unknown transport '" + std::string(text) + "' (expected tcp or rdma)");
}

Result<Persistence> parse_persistence(std::string_view text, std::string_view what) {
  if (text == "sync-read") return Persistence::kSyncRead;
  if (text == "rpc") return Persistence::kRpc;
  return Error(EINVAL,
               std::string(what) + ": unknown persistence '" + std::string(text) + "' (expected sync-read or rpc)");
}

}  // namespace pbrick
