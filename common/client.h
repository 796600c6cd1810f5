// A blocking, one-request-at-a-time brick client over TCP or RDMA, for pbrickctl,
// tests and tools. Over RDMA every request is one SEND message and read()/write()
// are one-sided RDMA READ/WRITE through a registered bounce buffer. The gateway's data path does not use it: it keeps many requests in
// flight on its own event loop and shares only the protocol codec.
//
// A BrickClient owns one connection. It is not thread-safe: one thread at a time.
#pragma once

#include <sys/un.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/auth.h"
#include "common/protocol.h"
#include "common/result.h"
#include "common/transport.h"
#include "common/unique_fd.h"

namespace pbrick {

namespace rdma {
class RdmaLink;
struct LinkOptions;
}

// A brick's address: a TCP (or RDMA CM) host and port, or a unix socket's
// path. A unix socket reaches a brick on the gateway's own host only, over
// the TCP transport's protocol: it saves the loopback TCP stack on every
// round trip (docs/performance.md); host and port are then unused.
struct Endpoint {
  Endpoint() = default;
  Endpoint(std::string tcp_host, uint16_t tcp_port) : host(std::move(tcp_host)), port(tcp_port) {}

  std::string host;
  uint16_t port = 0;
  std::string unix_path;
  bool is_unix() const { return !unix_path.empty(); }
  // "HOST:PORT", "[V6ADDR]:PORT" or "unix:PATH", as parse_endpoint reads it.
  std::string to_string() const;
};

// "HOST:PORT", "[V6ADDR]:PORT" or "unix:/ABSOLUTE/PATH" (at most 107 bytes,
// the size of sockaddr_un's path). `what` names the flag or key for the
// error. Port 0 ("any free port") is accepted only for listening addresses.
Result<Endpoint> parse_endpoint(std::string_view text, std::string_view what, bool allow_port_zero = false);

// The prefix of a unix socket's address.
inline constexpr std::string_view kUnixPrefix = "unix:";

// Why an RDMA connection or listener refuses a unix socket's address.
inline constexpr std::string_view kUnixIsForTcp = "a unix socket is for transport tcp; rdma needs HOST:PORT";

// A unix socket endpoint's address, for connect() and bind() (parse_endpoint
// checked the path's length; a longer one is cut).
sockaddr_un unix_address(const Endpoint& ep);

// A unix stream socket's send buffer bounds the bytes on their way to the
// peer: at the usual default (net.core.wmem_default, 208 KiB) a 1 MiB reply
// or a 2 MiB WRITE takes several wake-ups of each side, where loopback TCP
// grows its buffers to 4 MiB by itself. Sets 4 MiB, past net.core.wmem_max
// when the process may (CAP_NET_ADMIN: SO_SNDBUFFORCE). Both ends call it.
void size_unix_send_buffer(int fd);

struct ClientOptions {
  Endpoint endpoint;
  std::optional<ClusterKey> key;
  Transport transport = Transport::kTcp;
  // Offered in HELLO; kFeatureRdma is added for transport rdma.
  uint64_t features = proto::kFeatureSyncRead;
  int timeout_ms = 10000;  // per send/receive; ETIMEDOUT when exceeded
  // The store the brick must serve (HELLO's brick_uuid). A volume sets it to
  // the store it was opened on, so a brick replaced or reformatted behind the
  // same address is refused (kErrWrongStore) instead of serving other data.
  std::optional<std::array<uint8_t, proto::kUuidSize>> store_uuid;
  // Sent as FENCE right after the handshake (docs/protocol.md §7.9), so that
  // nothing an earlier connection of the same writer and channel still
  // carries lands after what this one sends. A brick that does not grant
  // FENCE is used unfenced (BrickClient::fenced() says which).
  std::optional<proto::FenceRequest> fence;
};

// The errno of a brick refused because it serves another store than
// ClientOptions::store_uuid names.
inline constexpr int kErrWrongStore = EMEDIUMTYPE;

// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower case.
std::string format_uuid(const std::array<uint8_t, proto::kUuidSize>& uuid);
// What format_uuid() writes (either case). EINVAL naming `what`.
Result<std::array<uint8_t, proto::kUuidSize>> parse_uuid(std::string_view text, std::string_view what);

class BrickClient {
 public:
  // Connects, says HELLO and authenticates when the brick asks for it. A brick
  // whose proof does not match our key is refused (EKEYREJECTED); a brick that
  // asks for a key we do not have gives EACCES; a brick serving another store
  // than options.store_uuid gives kErrWrongStore, naming both stores.
  static Result<std::unique_ptr<BrickClient>> Connect(const ClientOptions& options);
  // Over RDMA on a link the caller owns (an event loop's, whose PD, CQ and
  // registered memory outlive reconnects): connects `link` and says HELLO.
  // The client borrows the link; destroying the client leaves it connected.
  static Result<std::unique_ptr<BrickClient>> Connect(const ClientOptions& options, rdma::RdmaLink* link,
                                                      const rdma::LinkOptions& link_options);
  ~BrickClient();

  const proto::HelloReply& hello() const { return hello_; }
  // Whether the brick answered the FENCE of ClientOptions::fence.
  bool fenced() const { return fenced_; }
  // RDMA: the brick's sync region (the RDMA trailer of the HELLO reply, or of
  // the AUTH reply when the brick requires AUTH: docs/protocol.md §9.4).
  struct SyncRegion {
    uint32_t rkey = 0;
    uint64_t addr = 0;
  };
  const std::optional<SyncRegion>& sync_region() const { return sync_region_; }

  Result<proto::StatReply> stat();
  Status alloc(uint64_t vaddr);
  Status free(uint64_t vaddr);
  Result<proto::MapReply> map(uint64_t vaddr, uint32_t map_flags);
  Status unmap(uint64_t vaddr);
  Result<proto::ListReply> list(uint64_t cursor, uint32_t max_extents);
  // Every page, with extents continuing across a page boundary merged.
  Result<std::vector<proto::Extent>> list_all();

  // TCP: READ/WRITE frames. RDMA: one-sided READ/WRITE; a dead rkey fails in
  // the NIC with EKEYREJECTED and breaks the queue pair (later calls fail).
  Status write(uint32_t rkey, uint64_t remote_addr, std::span<const uint8_t> data);
  Status read(uint32_t rkey, uint64_t remote_addr, std::span<uint8_t> out);

  // Asks the brick to make `ranges` durable (PERSIST; none: every writable
  // mapping). Requires kFeaturePersistRpc.
  Status persist(std::span<const proto::PersistRange> ranges);

  // Hands the connected, authenticated socket to an event loop (TCP only).
  UniqueFd take_fd() && { return std::move(fd_); }

  // Sends raw bytes on the connection (tests of malformed input); over RDMA
  // they go as one message.
  Status send_raw(std::span<const uint8_t> bytes);

 private:
  BrickClient(UniqueFd fd, std::unique_ptr<rdma::RdmaLink> owned_link, rdma::RdmaLink* link, int timeout_ms);
  static Result<std::unique_ptr<BrickClient>> Handshake(std::unique_ptr<BrickClient> client,
                                                        const ClientOptions& options, uint64_t features);
  Status send_bytes(std::span<const uint8_t> bytes, const std::string& what);
  Status call_rdma(const proto::FrameHeader& h, std::span<const uint8_t> hdr, std::span<const uint8_t> payload,
                   std::span<const uint8_t> data, const std::string& what);
  Status rdma_io(bool write, uint32_t rkey, uint64_t remote_addr, uint8_t* buf, size_t len);

  // Sends one request and receives its reply header + payload into reply_.
  // A nonzero status becomes an Error with context "<OP> ...".
  Status call(proto::Opcode op, std::span<const uint8_t> payload,
              std::span<const uint8_t> data, const std::string& what);

  UniqueFd fd_;
  // RDMA read()/write(): registered on first use. Declared before the link,
  // so freed after its queue pair and registrations are gone: an operation a
  // timeout gave up on may still land in it until then.
  std::vector<uint8_t> bounce_;
  std::unique_ptr<rdma::RdmaLink> owned_link_;
  rdma::RdmaLink* link_ = nullptr;  // owned_link_, or a caller's
  int timeout_ms_ = 10000;
  uint64_t next_request_id_ = 1;
  bool fenced_ = false;
  proto::HelloReply hello_;
  std::optional<SyncRegion> sync_region_;
  std::vector<uint8_t> reply_;  // payload of the last reply
  // Set while a request is out and its reply (or its RDMA completion) not
  // wholly taken. A call that ends without it - a timeout, a reply lost half
  // way, one that matches no request - leaves the stream out of step: a late
  // reply would be read as the next request's. Every later call then fails
  // at once with ENOTCONN, a lost connection to its callers, who connect
  // again (docs/protocol.md §5: such a connection is closed).
  bool out_of_step_ = false;
  Status check_in_step(const std::string& what) const;
};

// Merges extents that continue each other (same flags and tier, adjacent).
void merge_extents(std::vector<proto::Extent>& extents);

}  // namespace pbrick
