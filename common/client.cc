#include "common/client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "common/log.h"
#include "common/rdma.h"
#include "common/units.h"

namespace pbrick {

std::string Endpoint::to_string() const {
  if (is_unix()) return std::string(kUnixPrefix) + unix_path;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string format_uuid(const std::array<uint8_t, proto::kUuidSize>& u) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return buf;
}

Result<std::array<uint8_t, proto::kUuidSize>> parse_uuid(std::string_view text, std::string_view what) {
  std::array<uint8_t, proto::kUuidSize> u{};
  auto bad = [&] {
    return Error(EINVAL, std::string(what) + ": '" + std::string(text) +
                             "' is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hexadecimal)");
  };
  if (text.size() != 36) return bad();
  size_t pos = 0;
  for (size_t i = 0; i < u.size(); i++) {
    if (pos == 8 || pos == 13 || pos == 18 || pos == 23) {
      if (text[pos] != '-') return bad();
      pos++;
    }
    auto nibble = [](char ch) -> int {
      if (ch >= '0' && ch <= '9') return ch - '0';
      if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
      if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
      return -1;
    };
    int hi = nibble(text[pos]), lo = nibble(text[pos + 1]);
    if (hi < 0 || lo < 0) return bad();
    u[i] = static_cast<uint8_t>(hi << 4 | lo);
    pos += 2;
  }
  return u;
}

Result<Endpoint> parse_endpoint(std::string_view text, std::string_view what, bool allow_port_zero) {
  auto bad = [&](const std::string& why) {
    return Error(EINVAL, std::string(what) + ": invalid address '" + std::string(text) + "': " + why);
  };
  Endpoint ep;
  if (text.starts_with(kUnixPrefix)) {
    std::string_view path = text.substr(kUnixPrefix.size());
    if (path.empty() || path.front() != '/') return bad("expected unix:/ABSOLUTE/PATH");
    if (path.size() >= sizeof(sockaddr_un::sun_path)) {
      return bad("a unix socket's path has at most " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
    }
    if (path.find('\0') != std::string_view::npos) return bad("NUL in the path");
    ep.unix_path = std::string(path);
    return ep;
  }
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("expected [ADDRESS]:PORT");
    }
    ep.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("expected HOST:PORT");
    ep.host = std::string(text.substr(0, colon));
    port_text = text.substr(colon + 1);
  }
  if (ep.host.empty()) return bad("empty host");
  auto port = parse_u64(port_text, what);
  if (!port) return bad("port is not a number");
  if (*port > 65535 || (*port == 0 && !allow_port_zero)) {
    return bad(allow_port_zero ? "port must be 0..65535" : "port must be 1..65535");
  }
  ep.port = static_cast<uint16_t>(*port);
  return ep;
}

sockaddr_un unix_address(const Endpoint& ep) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, ep.unix_path.data(), std::min(ep.unix_path.size(), sizeof sun.sun_path - 1));
  return sun;
}

void size_unix_send_buffer(int fd) {
  int bytes = 4 << 20;
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  }
}

namespace {

Status send_all(int fd, const uint8_t* p, size_t len, const char* what) {
  while (len > 0) {
    ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Error(ETIMEDOUT, std::string(what) + ": send timed out");
      return errno_error(std::string(what) + ": send");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status recv_all(int fd, uint8_t* p, size_t len, const char* what) {
  while (len > 0) {
    ssize_t n = ::recv(fd, p, len, 0);
    if (n == 0) return Error(ECONNRESET, std::string(what) + ": connection closed by the brick");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Error(ETIMEDOUT, std::string(what) + ": no reply from the brick");
      return errno_error(std::string(what) + ": receive");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// A blocking connect under SO_SNDTIMEO. An interrupted one (a signal, or
// io_uring task work queued to this thread) goes on in the kernel: wait for
// it rather than fail a connection that is about to succeed.
Status connect_socket(int fd, const sockaddr* addr, socklen_t len, int timeout_ms, const std::string& what) {
  if (::connect(fd, addr, len) == 0) return Status::Ok();
  const std::string no_answer = what + ": no answer within " + std::to_string(timeout_ms) + " ms";
  if (errno == EINPROGRESS) return Error(ETIMEDOUT, no_answer);
  if (errno != EINTR) return errno_error(what);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error(ETIMEDOUT, no_answer);
    pollfd p{fd, POLLOUT, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return errno_error(what + ": poll");
    if (rc == 0) continue;
    int err = 0;
    socklen_t err_len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) return errno_error(what + ": SO_ERROR");
    if (err != 0) return Error(err, what);
    return Status::Ok();
  }
}

// Sends and receives time out after timeout_ms, as the connect does.
void set_timeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

Result<UniqueFd> connect_unix(const Endpoint& ep, int timeout_ms) {
  const std::string what = "connect " + ep.to_string();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_error(what + ": socket");
  set_timeouts(fd.get(), timeout_ms);
  size_unix_send_buffer(fd.get());
  sockaddr_un sun = unix_address(ep);
  PBRICK_TRY(connect_socket(fd.get(), reinterpret_cast<const sockaddr*>(&sun), sizeof sun, timeout_ms, what));
  return fd;
}

Result<UniqueFd> connect_stream(const Endpoint& ep, int timeout_ms) {
  if (ep.is_unix()) return connect_unix(ep, timeout_ms);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(ep.port);
  int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Error(ENOENT, "connect " + ep.to_string() + ": " + gai_strerror(rc));
  Error last(ECONNREFUSED, "connect " + ep.to_string());
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = errno_error("connect " + ep.to_string() + ": socket");
      continue;
    }
    set_timeouts(fd.get(), timeout_ms);
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Status st = connect_socket(fd.get(), ai->ai_addr, ai->ai_addrlen, timeout_ms, "connect " + ep.to_string());
    if (st.ok()) {
      ::freeaddrinfo(res);
      return fd;
    }
    last = st.error();
  }
  ::freeaddrinfo(res);
  return last;
}

}  // namespace

BrickClient::BrickClient(UniqueFd fd, std::unique_ptr<rdma::RdmaLink> owned_link, rdma::RdmaLink* link,
                         int timeout_ms)
    : fd_(std::move(fd)), owned_link_(std::move(owned_link)), link_(link), timeout_ms_(timeout_ms) {
  if (owned_link_) link_ = owned_link_.get();
}

BrickClient::~BrickClient() = default;

Result<std::unique_ptr<BrickClient>> BrickClient::Connect(const ClientOptions& options) {
  if (options.transport == Transport::kRdma) {
    auto link = std::make_unique<rdma::RdmaLink>();
    rdma::LinkOptions lo;
    lo.one_sided_depth = 4;
    PBRICK_TRY(link->connect(options.endpoint, lo, options.timeout_ms));
    std::unique_ptr<BrickClient> client(new BrickClient(UniqueFd(), std::move(link), nullptr, options.timeout_ms));
    return Handshake(std::move(client), options, options.features | proto::kFeatureRdma | proto::kFeatureAuthTrailer);
  }
  auto fd = connect_stream(options.endpoint, options.timeout_ms);
  if (!fd) return fd.error();
  std::unique_ptr<BrickClient> client(new BrickClient(std::move(*fd), nullptr, nullptr, options.timeout_ms));
  return Handshake(std::move(client), options,
                   options.features & ~(proto::kFeatureRdma | proto::kFeatureAuthTrailer));
}

Result<std::unique_ptr<BrickClient>> BrickClient::Connect(const ClientOptions& options, rdma::RdmaLink* link,
                                                          const rdma::LinkOptions& link_options) {
  PBRICK_TRY(link->connect(options.endpoint, link_options, options.timeout_ms));
  std::unique_ptr<BrickClient> client(new BrickClient(UniqueFd(), nullptr, link, options.timeout_ms));
  auto done =
      Handshake(std::move(client), options, options.features | proto::kFeatureRdma | proto::kFeatureAuthTrailer);
  if (!done) link->disconnect();
  return done;
}

Result<std::unique_ptr<BrickClient>> BrickClient::Handshake(std::unique_ptr<BrickClient> client,
                                                            const ClientOptions& options, uint64_t features) {
  proto::HelloRequest hello;
  // Every client understands the STAT reply's slow tier counts.
  hello.features = features | proto::kFeatureTiers | (options.fence ? proto::kFeatureFence : 0);
  PBRICK_TRY(random_bytes(hello.client_nonce.data(), hello.client_nonce.size()));
  uint8_t payload[proto::kHelloRequestSize];
  proto::encode_hello_request(hello, payload);
  Status said = client->call(proto::Opcode::kHello, payload, {}, "HELLO " + options.endpoint.to_string());
  if (!said) {
    if (said.error().errnum() == EOPNOTSUPP && (features & proto::kFeatureSyncRead) != 0) {
      return Error(EOPNOTSUPP, "HELLO " + options.endpoint.to_string() +
                                   ": the brick refuses sync-read persistence over RDMA (it has not declared "
                                   "DDIO off on its storage NIC: --persistence sync-read, or its RDMA device is "
                                   "software, and its store's persistence domain does not include the CPU "
                                   "caches; its log says which); use persistence rpc");
    }
    return said.error();
  }
  auto reply = proto::decode_hello_reply(client->reply_);
  if (!reply) return reply.error().wrap("HELLO " + options.endpoint.to_string());
  // docs/protocol.md §8.2 and §10: a version we offered, features we offered.
  if (reply->version < hello.min_version || reply->version > hello.max_version) {
    return Error(EPROTONOSUPPORT, "HELLO " + options.endpoint.to_string() + ": the brick chose protocol version " +
                                      std::to_string(reply->version) + ", not one of the offered " +
                                      std::to_string(hello.min_version) + ".." + std::to_string(hello.max_version));
  }
  if ((reply->features & ~hello.features) != 0) {
    return Error(EPROTO, "HELLO " + options.endpoint.to_string() + ": the brick granted features never offered (" +
                             format_hex(reply->features & ~hello.features) + ")");
  }
  if (client->link_ && (reply->features & proto::kFeatureRdma) == 0) {
    return Error(EPROTO, "HELLO " + options.endpoint.to_string() + ": the brick did not accept the RDMA transport");
  }
  client->hello_ = *reply;
  if (reply->has_rdma_trailer) client->sync_region_ = {reply->sync_rkey, reply->sync_addr};

  if (options.key && (reply->hello_flags & proto::kHelloAuthRequired) == 0) {
    // We were told to authenticate; a brick that does not ask may be an impostor.
    return Error(EKEYREJECTED, "HELLO " + options.endpoint.to_string() +
                                   ": the brick does not ask for the cluster key we were given");
  }
  if ((reply->hello_flags & proto::kHelloAuthRequired) != 0) {
    if (!options.key) {
      return Error(EACCES, "HELLO " + options.endpoint.to_string() +
                               ": the brick requires the cluster key, and no key file was given");
    }
    Proof expected = server_proof(*options.key, hello.client_nonce, reply->server_nonce);
    if (!proofs_equal(expected, reply->server_proof)) {
      return Error(EKEYREJECTED, "HELLO " + options.endpoint.to_string() +
                                     ": the brick does not know our cluster key (wrong key file?)");
    }
    proto::AuthRequest auth;
    auth.client_proof = client_proof(*options.key, reply->server_nonce, hello.client_nonce);
    uint8_t auth_payload[proto::kAuthRequestSize];
    proto::encode_auth_request(auth, auth_payload);
    PBRICK_TRY(client->call(proto::Opcode::kAuth, auth_payload, {}, "AUTH " + options.endpoint.to_string()));
    auto auth_reply = proto::decode_auth_reply(client->reply_);
    if (!auth_reply) return auth_reply.error().wrap("AUTH " + options.endpoint.to_string());
    if (auth_reply->has_rdma_trailer) {
      // Only over RDMA with AUTH_TRAILER granted (docs/protocol.md 7.2).
      if (!client->link_ || (reply->features & proto::kFeatureAuthTrailer) == 0) {
        return Error(EPROTO, "AUTH " + options.endpoint.to_string() + ": an RDMA trailer the brick may not send here");
      }
      client->sync_region_ = {auth_reply->sync_rkey, auth_reply->sync_addr};
    }
  }
  if (client->link_ && !client->sync_region_) {
    return Error(EPROTO, "HELLO " + options.endpoint.to_string() + ": the brick named no sync region");
  }
  if (options.store_uuid && reply->brick_uuid != *options.store_uuid) {
    // Its blocks are not ours: reading them would return other data.
    return Error(kErrWrongStore, "brick " + options.endpoint.to_string() + " serves store " +
                                     format_uuid(reply->brick_uuid) + ", not store " +
                                     format_uuid(*options.store_uuid) +
                                     " (replaced or reformatted?): refusing it");
  }
  if (options.fence && (reply->features & proto::kFeatureFence) != 0) {
    uint8_t p[proto::kFenceRequestSize];
    proto::encode_fence_request(*options.fence, p);
    PBRICK_TRY(client->call(proto::Opcode::kFence, p, {}, "FENCE " + options.endpoint.to_string()));
    client->fenced_ = true;
  } else if (options.fence) {
    PBRICK_LOG_WARN("brick %s does not know FENCE (an older version): what a connection given up on still "
                    "carried may land after what this one sends",
                    options.endpoint.to_string().c_str());
  }
  return client;
}

Status BrickClient::send_raw(std::span<const uint8_t> bytes) { return send_bytes(bytes, "send"); }

Status BrickClient::send_bytes(std::span<const uint8_t> bytes, const std::string& what) {
  if (!link_) return send_all(fd_.get(), bytes.data(), bytes.size(), what.c_str());
  // Send slots come back with their completions, which waiting for replies
  // reaps. Polling here would swallow a message that is already in (a test's
  // unanswered send_raw), so only when every slot is taken.
  Status st = link_->send_message(bytes);
  if (!st && st.error().errnum() == EAGAIN) {
    PBRICK_TRY(link_->poll([](const rdma::RdmaLink::Completion&) {}));
    st = link_->send_message(bytes);
  }
  return st.wrap_error(what);
}

Status BrickClient::check_in_step(const std::string& what) const {
  if (!out_of_step_) return Status::Ok();
  return Error(ENOTCONN, what + ": connection given up (an earlier request's reply never came whole, or came late)");
}

Status BrickClient::call(proto::Opcode op, std::span<const uint8_t> payload, std::span<const uint8_t> data,
                         const std::string& what) {
  PBRICK_TRY(check_in_step(what));
  out_of_step_ = true;  // until the reply is taken whole
  proto::FrameHeader h;
  h.opcode = op;
  h.request_id = next_request_id_++;
  h.payload_len = static_cast<uint32_t>(payload.size() + data.size());
  uint8_t hdr[proto::kHeaderSize];
  proto::encode_header(h, hdr);
  if (link_) return call_rdma(h, hdr, payload, data, what);
  PBRICK_TRY(send_all(fd_.get(), hdr, sizeof hdr, what.c_str()));
  PBRICK_TRY(send_all(fd_.get(), payload.data(), payload.size(), what.c_str()));
  if (!data.empty()) PBRICK_TRY(send_all(fd_.get(), data.data(), data.size(), what.c_str()));

  uint8_t rhdr[proto::kHeaderSize];
  PBRICK_TRY(recv_all(fd_.get(), rhdr, sizeof rhdr, what.c_str()));
  auto reply = proto::decode_header(rhdr, /*expect_reply=*/true);
  if (!reply) return reply.error().wrap(what + ": bad reply from the brick");
  if (reply->opcode != op || reply->request_id != h.request_id) {
    return Error(EPROTO, what + ": reply does not match the request");
  }
  reply_.resize(reply->payload_len);  // bounded by decode_header (at most kMaxIoSize)
  PBRICK_TRY(recv_all(fd_.get(), reply_.data(), reply_.size(), what.c_str()));
  out_of_step_ = false;
  if (reply->status != 0) return Error(proto::errno_from_wire(reply->status), what);
  return Status::Ok();
}

Status BrickClient::call_rdma(const proto::FrameHeader& h, std::span<const uint8_t> hdr,
                              std::span<const uint8_t> payload, std::span<const uint8_t> data,
                              const std::string& what) {
  if (!data.empty()) return Error(EOPNOTSUPP, what + ": data frames do not travel over RDMA");
  if (hdr.size() + payload.size() > proto::kRdmaMessageSize) return Error(EMSGSIZE, what + ": request too large");
  // (call() marked the connection out of step until the reply is taken.)
  uint8_t frame[proto::kRdmaMessageSize];
  std::memcpy(frame, hdr.data(), hdr.size());
  if (!payload.empty()) std::memcpy(frame + hdr.size(), payload.data(), payload.size());
  PBRICK_TRY(send_bytes({frame, hdr.size() + payload.size()}, what));
  bool got = false;
  Status bad = Status::Ok();
  auto on = [&](const rdma::RdmaLink::Completion& c) {
    if (c.kind != rdma::RdmaLink::Completion::Kind::kMessage || got) return;
    got = true;
    auto reply = proto::decode_header(c.message.first(std::min(c.message.size(), proto::kHeaderSize)), true);
    if (c.message.size() < proto::kHeaderSize || !reply) {
      bad = Error(EPROTO, what + ": bad reply from the brick");
      return;
    }
    if (reply->opcode != h.opcode || reply->request_id != h.request_id ||
        c.message.size() != proto::kHeaderSize + reply->payload_len) {
      // Named in full: a test that sent a stray frame checks what answered it.
      bad = Error(EPROTO, what + ": reply does not match the request (a " + proto::opcode_name(reply->opcode) +
                              " reply, status " + std::to_string(reply->status) + ")");
      return;
    }
    reply_.assign(c.message.begin() + proto::kHeaderSize, c.message.end());
    out_of_step_ = false;
    if (reply->status != 0) bad = Error(proto::errno_from_wire(reply->status), what);
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  while (!got) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error(ETIMEDOUT, what + ": no reply from the brick");
    Status st = link_->wait(static_cast<int>(left.count()), on);
    if (got) break;
    if (!st && st.error().errnum() != ETIMEDOUT) return st.error().wrap(what);
    PBRICK_TRY(link_->check_cm_events().wrap_error(what));
  }
  return bad;
}

Status BrickClient::rdma_io(bool write, uint32_t rkey, uint64_t remote_addr, uint8_t* buf, size_t len) {
  const std::string what = std::string(write ? "rdma write " : "rdma read ") + format_hex(remote_addr);
  PBRICK_TRY(check_in_step(what));
  if (bounce_.empty()) {
    // Only tools move data through a BrickClient: a control connection never
    // pins this.
    bounce_.assign(proto::kMaxIoSize, 0);
    Status st = link_->add_region(bounce_.data(), bounce_.size());
    if (!st) {
      bounce_.clear();
      return st.error().wrap(what);
    }
  }
  std::span<uint8_t> bounce(bounce_);
  for (size_t done = 0; done < len;) {
    size_t n = std::min(len - done, bounce.size());
    if (write) std::memcpy(bounce.data(), buf + done, n);
    ibv_sge sge{reinterpret_cast<uint64_t>(bounce.data()), static_cast<uint32_t>(n), link_->lkey(bounce.data(), n)};
    link_->queue_rdma(write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ, &sge, 1, rkey, remote_addr + done, 1);
    // Until its completion: a late one would pass for the next operation's,
    // and the bounce buffer still be read or filled.
    out_of_step_ = true;
    PBRICK_TRY(link_->post_queued().wrap_error(what));
    bool got = false;
    Status result = Status::Ok();
    auto on = [&](const rdma::RdmaLink::Completion& c) {
      if (c.kind != rdma::RdmaLink::Completion::Kind::kOneSided) return;
      got = true;
      out_of_step_ = false;
      if (c.status != 0) result = Error(c.status, what + ": " + c.error);
    };
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    while (!got) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Error(ETIMEDOUT, what + ": no completion");
      Status st = link_->wait(static_cast<int>(left.count()), on);
      // The WR's own completion says why first; flushed receives follow it.
      if (!got && !st && st.error().errnum() != ETIMEDOUT) return st.error().wrap(what);
    }
    PBRICK_TRY(result);
    if (!write) std::memcpy(buf + done, bounce.data(), n);
    done += n;
  }
  return Status::Ok();
}

Status BrickClient::persist(std::span<const proto::PersistRange> ranges) {
  proto::PersistRequest req;
  req.ranges.assign(ranges.begin(), ranges.end());
  std::vector<uint8_t> p(proto::persist_request_size(req.ranges.size()));
  proto::encode_persist_request(req, p.data());
  return call(proto::Opcode::kPersist, p, {}, "persist");
}

Result<proto::StatReply> BrickClient::stat() {
  PBRICK_TRY(call(proto::Opcode::kStat, {}, {}, "stat"));
  return proto::decode_stat_reply(reply_);
}

Status BrickClient::alloc(uint64_t vaddr) {
  uint8_t p[proto::kAddrRequestSize];
  proto::encode_addr_request({vaddr}, p);
  return call(proto::Opcode::kAlloc, p, {}, "alloc " + format_hex(vaddr));
}

Status BrickClient::free(uint64_t vaddr) {
  uint8_t p[proto::kAddrRequestSize];
  proto::encode_addr_request({vaddr}, p);
  return call(proto::Opcode::kFree, p, {}, "free " + format_hex(vaddr));
}

Result<proto::MapReply> BrickClient::map(uint64_t vaddr, uint32_t map_flags) {
  uint8_t p[proto::kMapRequestSize];
  proto::encode_map_request({vaddr, map_flags}, p);
  PBRICK_TRY(call(proto::Opcode::kMap, p, {}, "map " + format_hex(vaddr)));
  auto m = proto::decode_map_reply(reply_);
  if (m && m->map_flags != map_flags) {
    m = Error(EPROTO, "map " + format_hex(vaddr) + ": the brick mapped it with flags " + std::to_string(m->map_flags) +
                          ", not the " + std::to_string(map_flags) + " asked for");
  }
  // A brick whose reply cannot be taken for what was asked is not trusted
  // with more requests (docs/protocol.md 5); the connection is given up, and
  // with it whatever the brick mapped for this one.
  if (!m) out_of_step_ = true;
  return m;
}

Status BrickClient::unmap(uint64_t vaddr) {
  uint8_t p[proto::kAddrRequestSize];
  proto::encode_addr_request({vaddr}, p);
  return call(proto::Opcode::kUnmap, p, {}, "unmap " + format_hex(vaddr));
}

Result<proto::ListReply> BrickClient::list(uint64_t cursor, uint32_t max_extents) {
  uint8_t p[proto::kListRequestSize];
  proto::encode_list_request({cursor, max_extents}, p);
  PBRICK_TRY(call(proto::Opcode::kList, p, {}, "list from " + format_hex(cursor)));
  auto l = proto::decode_list_reply(reply_);
  if (!l) out_of_step_ = true;  // as for MAP
  return l;
}

void merge_extents(std::vector<proto::Extent>& extents) {
  size_t out = 0;
  for (size_t i = 0; i < extents.size(); i++) {
    if (out > 0) {
      proto::Extent& prev = extents[out - 1];
      const proto::Extent& cur = extents[i];
      if (prev.extent_flags == cur.extent_flags && prev.tier == cur.tier &&
          prev.start_vaddr + prev.block_count * proto::kBlockSize == cur.start_vaddr) {
        prev.block_count += cur.block_count;
        continue;
      }
    }
    extents[out++] = extents[i];
  }
  extents.resize(out);
}

Result<std::vector<proto::Extent>> BrickClient::list_all() {
  std::vector<proto::Extent> all;
  uint64_t cursor = 0;
  for (;;) {
    auto page = list(cursor, proto::kMaxListExtents);
    if (!page) return page.error();
    all.insert(all.end(), page->extents.begin(), page->extents.end());
    if ((page->list_flags & proto::kListMore) == 0) break;
    if (page->next_cursor <= cursor) return Error(EPROTO, "list: the brick's cursor did not advance");
    cursor = page->next_cursor;
  }
  merge_extents(all);
  return all;
}

Status BrickClient::write(uint32_t rkey, uint64_t remote_addr, std::span<const uint8_t> data) {
  if (link_) return rdma_io(true, rkey, remote_addr, const_cast<uint8_t*>(data.data()), data.size());
  uint8_t p[proto::kIoRequestSize];
  proto::encode_io_request({rkey, remote_addr, static_cast<uint32_t>(data.size())}, p);
  return call(proto::Opcode::kWrite, p, data, "write " + format_hex(remote_addr));
}

Status BrickClient::read(uint32_t rkey, uint64_t remote_addr, std::span<uint8_t> out) {
  if (link_) return rdma_io(false, rkey, remote_addr, out.data(), out.size());
  uint8_t p[proto::kIoRequestSize];
  proto::encode_io_request({rkey, remote_addr, static_cast<uint32_t>(out.size())}, p);
  PBRICK_TRY(call(proto::Opcode::kRead, p, {}, "read " + format_hex(remote_addr)));
  if (reply_.size() != out.size()) return Error(EPROTO, "read " + format_hex(remote_addr) + ": short reply");
  std::memcpy(out.data(), reply_.data(), out.size());
  return Status::Ok();
}

}  // namespace pbrick
