// Fuzzes the brick's request state machine, not just its decoders: each input
// is a session played against a real Server over an in-memory store, through
// a socketpair handed to Server::adopt().
//
// Input: byte 0 picks the session (its value % 3), the store's medium (its
// value / 3 % 3) and, for sessions 0 and 1, one or two connections (its value
// / 9 % 2); the rest is the byte stream the client sends (frames back to
// back, as on a connection). With two connections each frame goes to the one
// that bit 63 of its request_id names (1: the second), the bytes after the
// last whole frame to the one the second connection's bit names if they hold
// that field, else the first; each connection is sent its share at once, so
// the brick interleaves them as its loop takes them. That reaches FENCE
// cutting off another connection of the same scope. Sessions:
//   0  a brick without a key: the stream starts before HELLO
//   1  a brick with a key: the stream starts before HELLO (the AUTH the
//      fuzzer cannot forge is the attack surface)
//   2  a brick with a key, after a correct HELLO + AUTH made by the harness,
//      which then ALLOCs and MAPs (read-write, shared) the block at vaddr 0:
//      READ, WRITE and PERSIST frames of the stream whose rkey is 1 are
//      rewritten to that handle's rkey, and their remote_addr to the same
//      offset in it, so that the data paths are reachable although rkeys
//      are random
// Media:
//   0  memory with no file behind it: sync points have no fdatasync to wait for
//   1  memory behind a FaultInjectionRegion posing as a page-cache file: every
//      sync point waits for an asynchronous fdatasync through the brick's ring
//   2  the same, with every fdatasync failing (EIO)
//
// Beyond ASan/UBSan it checks what a client may rely on (docs/protocol.md):
//  - every reply is a well-formed reply frame; replies come in request order,
//    echo the opcode byte and request_id of their request, and a success
//    reply's payload passes the client's decoder;
//  - nothing fails with EIO but, on medium 2, READ and PERSIST (the sync
//    points): an in-memory store cannot fail, so EIO would be a failure
//    invented by the brick;
//  - once the client half-closes, the brick answers every whole request it
//    got, unless it closed the connection after an error that closes it
//    (header-level, or a refused handshake) or the other connection sent a
//    FENCE that may cut this one off (§7.9: of a scope this one fenced too,
//    by another writer or by the same writer and channel), and closes
//    within 10 s;
//  - when the connections are gone, every mapping they made is revoked.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/log.h"
#include "common/protocol.h"
#include "common/unique_fd.h"
#include "target/fault_injection_region.h"
#include "target/pmem_region.h"
#include "target/server.h"
#include "target/store.h"

namespace {

using namespace pbrick;
using proto::kHeaderSize;

[[noreturn]] void fail(const char* what, uint64_t detail = 0) {
  std::fprintf(stderr, "server_fuzz: %s (%llu)\n", what, static_cast<unsigned long long>(detail));
  std::abort();
}

constexpr uint64_t kStoreSize = 8 * proto::kBlockSize;  // the map plus a few blocks
constexpr int kCloseTimeoutMs = 10000;

ClusterKey test_key() {
  ClusterKey k;
  const char text[] = "server fuzz cluster key 0123456789";
  k.bytes.assign(text, text + sizeof text - 1);
  return k;
}

void write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;  // the brick closed: what is left is never read
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Reads one whole frame (blocking, bounded by the poll timeout); false at EOF.
bool read_frame(int fd, std::vector<uint8_t>* out) {
  auto read_n = [&](size_t n) {
    size_t start = out->size();
    out->resize(start + n);
    size_t got = 0;
    while (got < n) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, kCloseTimeoutMs) == 0) fail("the brick neither answered nor closed within 10 s");
      ssize_t r = ::recv(fd, out->data() + start + got, n - got, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  };
  out->clear();
  if (!read_n(kHeaderSize)) return false;
  uint32_t len;
  std::memcpy(&len, out->data() + 12, 4);
  if (len > proto::kMaxPayload) fail("reply claims an oversized payload", len);
  return len == 0 || read_n(len);
}

Result<std::vector<uint8_t>> call(int fd, proto::Opcode op, std::span<const uint8_t> payload, uint64_t rid) {
  std::vector<uint8_t> buf(kHeaderSize + payload.size());
  proto::FrameHeader h;
  h.opcode = op;
  h.payload_len = static_cast<uint32_t>(payload.size());
  h.request_id = rid;
  proto::encode_header(h, buf.data());
  if (!payload.empty()) std::memcpy(buf.data() + kHeaderSize, payload.data(), payload.size());
  write_all(fd, buf.data(), buf.size());
  std::vector<uint8_t> reply;
  if (!read_frame(fd, &reply)) return Error(ECONNRESET, "closed");
  auto rh = proto::decode_header({reply.data(), kHeaderSize}, true);
  if (!rh) return rh.error();
  if (rh->status != 0) return Error(proto::errno_from_wire(rh->status), proto::opcode_name(op));
  reply.erase(reply.begin(), reply.begin() + kHeaderSize);
  return reply;
}

// rkey 1 in READ/WRITE/PERSIST frames of `stream` -> the harness's handle.
void rewrite_handles(std::vector<uint8_t>& stream, const proto::MapReply& handle) {
  auto fix = [&](uint8_t* rkey_at, uint8_t* addr_at) {
    uint32_t rkey;
    std::memcpy(&rkey, rkey_at, 4);
    if (rkey != 1) return;
    uint64_t addr;
    std::memcpy(&addr, addr_at, 8);
    addr = handle.remote_addr + (addr & (proto::kBlockSize - 1));
    std::memcpy(rkey_at, &handle.rkey, 4);
    std::memcpy(addr_at, &addr, 8);
  };
  size_t pos = 0;
  while (stream.size() - pos >= kHeaderSize) {
    auto h = proto::decode_header({stream.data() + pos, kHeaderSize}, false);
    if (!h || stream.size() - pos - kHeaderSize < h->payload_len) return;
    uint8_t* p = stream.data() + pos + kHeaderSize;
    if (h->opcode == proto::Opcode::kRead || h->opcode == proto::Opcode::kWrite) {
      fix(p, p + 8);
    } else if (h->opcode == proto::Opcode::kPersist) {
      for (size_t off = proto::kPersistRequestFixedSize; off + proto::kPersistRangeSize <= h->payload_len;
           off += proto::kPersistRangeSize) {
        fix(p + off, p + off + 8);
      }
    }
    pos += kHeaderSize + h->payload_len;
  }
}

// The harness's own handshake for session 2. Returns false if the brick
// refused it (which it must not).
bool authenticate(int fd, const ClusterKey& key) {
  proto::HelloRequest hello;
  for (size_t i = 0; i < hello.client_nonce.size(); i++) hello.client_nonce[i] = static_cast<uint8_t>(i);
  uint8_t buf[kHeaderSize + proto::kHelloRequestSize];
  proto::FrameHeader h;
  h.opcode = proto::Opcode::kHello;
  h.payload_len = proto::kHelloRequestSize;
  h.request_id = 0xAAAA;
  proto::encode_header(h, buf);
  proto::encode_hello_request(hello, buf + kHeaderSize);
  write_all(fd, buf, sizeof buf);
  std::vector<uint8_t> reply;
  if (!read_frame(fd, &reply)) return false;
  auto rh = proto::decode_header({reply.data(), kHeaderSize}, true);
  if (!rh || rh->status != 0) return false;
  auto hr = proto::decode_hello_reply({reply.data() + kHeaderSize, rh->payload_len});
  if (!hr) return false;
  proto::AuthRequest auth;
  auth.client_proof = client_proof(key, hr->server_nonce, hello.client_nonce);
  uint8_t abuf[kHeaderSize + proto::kAuthRequestSize];
  h.opcode = proto::Opcode::kAuth;
  h.payload_len = proto::kAuthRequestSize;
  h.request_id = 0xBBBB;
  proto::encode_header(h, abuf);
  proto::encode_auth_request(auth, abuf + kHeaderSize);
  write_all(fd, abuf, sizeof abuf);
  if (!read_frame(fd, &reply)) return false;
  rh = proto::decode_header({reply.data(), kHeaderSize}, true);
  return rh && rh->status == 0;
}

struct Request {
  uint8_t opcode;
  uint64_t request_id;
  bool header_ok;  // its header passes the checks of docs/protocol.md §4
};

// The requests a brick can delimit in `stream`: whole frames, and a header it
// rejects (which gets a reply; nothing after it does). A wrong magic ends the
// stream without a reply. A frame cut short by the end comes last: it is
// answered only if refused on its header (before the handshake), so it is
// not counted in `*whole`.
std::vector<Request> delimit(std::span<const uint8_t> stream, size_t* whole) {
  std::vector<Request> out;
  *whole = 0;
  size_t pos = 0;
  while (stream.size() - pos >= kHeaderSize) {
    auto hdr = stream.subspan(pos, kHeaderSize);
    uint32_t magic;
    std::memcpy(&magic, hdr.data(), 4);
    if (magic != proto::kMagic) break;
    uint64_t rid;
    std::memcpy(&rid, hdr.data() + 16, 8);
    auto h = proto::decode_header(hdr, false);
    out.push_back({hdr[5], rid, h.ok()});
    if (!h) {
      *whole = out.size();
      break;
    }
    if (stream.size() - pos - kHeaderSize < h->payload_len) break;
    *whole = out.size();
    pos += kHeaderSize + h->payload_len;
  }
  return out;
}

// Error replies after which the brick may close the connection
// (docs/protocol.md §5, §7.1, §7.2, §8.1): an error for a header that fails
// its checks, any refusal of HELLO or AUTH (the handshake cannot complete
// any more), or a request out of the handshake's order (EPROTO before
// HELLO, EACCES before AUTH; the oracle does not follow the handshake, so
// EACCES is excused whatever its cause). A payload that fails its checks
// (EBADMSG for a reserved byte) leaves the connection serving.
bool closes_connection(const Request& request, uint32_t status) {
  if (status == 0) return false;
  if (!request.header_ok) return true;
  if (request.opcode == static_cast<uint8_t>(proto::Opcode::kHello) ||
      request.opcode == static_cast<uint8_t>(proto::Opcode::kAuth)) {
    return true;
  }
  for (int e : {EPROTO, EPROTONOSUPPORT, EACCES}) {
    if (status == proto::wire_status(e)) return true;
  }
  return false;
}

void check_success_payload(proto::Opcode op, std::span<const uint8_t> p) {
  switch (op) {
    case proto::Opcode::kHello:
      if (!proto::decode_hello_reply(p)) fail("HELLO reply the client decoder refuses");
      return;
    case proto::Opcode::kAuth:
      if (!proto::decode_auth_reply(p)) fail("AUTH reply the client decoder refuses");
      return;
    case proto::Opcode::kStat:
      if (!proto::decode_stat_reply(p)) fail("STAT reply the client decoder refuses");
      return;
    case proto::Opcode::kMap:
      if (!proto::decode_map_reply(p)) fail("MAP reply the client decoder refuses");
      return;
    case proto::Opcode::kList:
      if (!proto::decode_list_reply(p)) fail("LIST reply the client decoder refuses");
      return;
    default:
      return;
  }
}

// One client connection: what the harness sends on it and what came back.
struct Conn {
  UniqueFd fd;
  std::vector<uint8_t> out;
  std::vector<uint8_t> replies;
};

// Bit 63 of the request_id of the header at `hdr` (at least 24 bytes).
bool second_connection(const uint8_t* hdr) { return (hdr[23] & 0x80) != 0; }

// Splits `stream` between two connections (see the top of this file).
void split(std::span<const uint8_t> stream, std::vector<uint8_t>* first, std::vector<uint8_t>* second) {
  size_t pos = 0;
  while (stream.size() - pos >= kHeaderSize) {
    auto h = proto::decode_header(stream.subspan(pos, kHeaderSize), false);
    if (!h || stream.size() - pos - kHeaderSize < h->payload_len) break;
    std::vector<uint8_t>* to = second_connection(stream.data() + pos) ? second : first;
    to->insert(to->end(), stream.begin() + pos, stream.begin() + pos + kHeaderSize + h->payload_len);
    pos += kHeaderSize + h->payload_len;
  }
  std::vector<uint8_t>* rest = stream.size() - pos >= 24 && second_connection(stream.data() + pos) ? second : first;
  rest->insert(rest->end(), stream.begin() + pos, stream.end());
}

// The FENCEs the brick can take from `stream`: whole frames with a valid
// header and payload, in order.
std::vector<proto::FenceRequest> fences_in(std::span<const uint8_t> stream) {
  std::vector<proto::FenceRequest> out;
  size_t pos = 0;
  while (stream.size() - pos >= kHeaderSize) {
    auto h = proto::decode_header(stream.subspan(pos, kHeaderSize), false);
    if (!h || stream.size() - pos - kHeaderSize < h->payload_len) break;
    if (h->opcode == proto::Opcode::kFence) {
      auto f = proto::decode_fence_request(stream.subspan(pos + kHeaderSize, h->payload_len));
      if (f) out.push_back(*f);
    }
    pos += kHeaderSize + h->payload_len;
  }
  return out;
}

// Whether a FENCE of `other` may close the connection that sent `own`
// (docs/protocol.md §7.9): one of its FENCEs names the scope of one of this
// connection's, and either the same writer and channel or another writer.
// A connection that sent no FENCE is never closed by another's.
bool may_be_fenced_off(std::span<const uint8_t> own, std::span<const uint8_t> other) {
  std::vector<proto::FenceRequest> mine = fences_in(own);
  for (const proto::FenceRequest& f : fences_in(other)) {
    for (const proto::FenceRequest& m : mine) {
      if (f.scope == m.scope && (f.writer != m.writer || f.channel == m.channel)) return true;
    }
  }
  return false;
}

// Sends every connection's share while collecting replies, so neither side's
// socket buffer fills up and stalls the other; half-closes each once it is
// all sent, and returns when the brick closed every one.
void exchange(Conn* conns, int n) {
  size_t sent[2] = {0, 0};
  bool eof[2] = {false, false};
  for (int c = 0; c < n; c++) {
    if (conns[c].out.empty()) ::shutdown(conns[c].fd.get(), SHUT_WR);
  }
  for (;;) {
    pollfd p[2];
    int live[2], k = 0;
    for (int c = 0; c < n; c++) {
      if (eof[c]) continue;
      p[k] = {conns[c].fd.get(), static_cast<short>(POLLIN | (sent[c] < conns[c].out.size() ? POLLOUT : 0)), 0};
      live[k++] = c;
    }
    if (k == 0) return;
    if (::poll(p, static_cast<nfds_t>(k), kCloseTimeoutMs) == 0) fail("the brick neither answered nor closed within 10 s");
    for (int i = 0; i < k; i++) {
      Conn& conn = conns[live[i]];
      const int c = live[i];
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[65536];
        ssize_t r = ::recv(conn.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) conn.replies.insert(conn.replies.end(), buf, buf + r);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) eof[c] = true;
      }
      if ((p[i].revents & POLLOUT) && sent[c] < conn.out.size()) {
        ssize_t w = ::send(conn.fd.get(), conn.out.data() + sent[c], conn.out.size() - sent[c],
                           MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) sent[c] += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN && errno != EINTR) sent[c] = conn.out.size();  // closed by the brick
        if (sent[c] == conn.out.size()) ::shutdown(conn.fd.get(), SHUT_WR);
      }
    }
  }
}

// The replies of one connection against what it sent (see the top of this
// file). `eio_allowed`: the store's fdatasync fails (sync points may say so).
// `may_be_cut_off`: another connection sent a FENCE that may close this one.
void check_replies(const Conn& conn, bool eio_allowed, bool may_be_cut_off) {
  std::span<const uint8_t> stream(conn.out);
  const std::vector<uint8_t>& replies = conn.replies;
  size_t whole = 0;
  std::vector<Request> requests = delimit(stream, &whole);
  size_t pos = 0, n = 0;
  uint32_t last_status = 0;
  while (pos < replies.size()) {
    if (replies.size() - pos < kHeaderSize) fail("a truncated reply header", replies.size() - pos);
    std::span<const uint8_t> hdr(replies.data() + pos, kHeaderSize);
    uint32_t magic, status, len;
    uint16_t flags;
    uint64_t rid, reserved;
    std::memcpy(&magic, hdr.data(), 4);
    std::memcpy(&flags, hdr.data() + 6, 2);
    std::memcpy(&status, hdr.data() + 8, 4);
    std::memcpy(&len, hdr.data() + 12, 4);
    std::memcpy(&rid, hdr.data() + 16, 8);
    std::memcpy(&reserved, hdr.data() + 24, 8);
    if (magic != proto::kMagic || flags != proto::kFlagReply || reserved != 0 || hdr[4] != proto::kVersion1) {
      fail("a malformed reply header", n);
    }
    if (n >= requests.size()) fail("more replies than requests", n);
    if (hdr[5] != requests[n].opcode || rid != requests[n].request_id) fail("a reply out of order", n);
    const bool sync_point = hdr[5] == static_cast<uint8_t>(proto::Opcode::kRead) ||
                            hdr[5] == static_cast<uint8_t>(proto::Opcode::kPersist);
    if (status == proto::wire_status(EIO) && !(eio_allowed && sync_point)) fail("EIO from an in-memory store", n);
    if (replies.size() - pos - kHeaderSize < len) fail("a truncated reply payload", n);
    if (status != 0 && len != 0) fail("an error reply with a payload", n);
    if (status == 0) {
      auto h = proto::decode_header(hdr, true);
      if (!h) fail("a success reply the client decoder refuses", n);
      check_success_payload(h->opcode, {replies.data() + pos + kHeaderSize, len});
    }
    pos += kHeaderSize + len;
    last_status = status;
    n++;
  }
  if (n < whole && !may_be_cut_off && (n == 0 || !closes_connection(requests[n - 1], last_status))) {
    fail("the brick closed without answering every request", n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  set_log_level(LogLevel::kError);  // refusals are the point; keep stderr for findings
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int session = data[0] % 3;
  const int medium = data[0] / 3 % 3;
  std::vector<uint8_t> bytes(data + 1, data + size);

  std::unique_ptr<PmemRegion> region = make_memory_region(kStoreSize);
  if (medium != 0) {
    auto file_like = std::make_unique<FaultInjectionRegion>(std::move(region), /*pmem=*/false);
    if (medium == 2) file_like->fail(FaultInjectionRegion::Op::kSync, EIO);
    region = std::move(file_like);
  }
  auto store = Store::Open(std::move(region), StoreOpenOptions{});
  if (!store) fail("in-memory store");
  ServerOptions options;
  options.listen = Endpoint{"127.0.0.1", 0};
  if (session != 0) options.key = test_key();
  auto server = Server::Create(**store, options);
  if (!server) fail("Server::Create");
  const bool two = session != 2 && data[0] / 9 % 2 == 1;
  Conn conns[2];
  for (int c = 0; c < (two ? 2 : 1); c++) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
    conns[c].fd.reset(sv[0]);
    if (!(*server)->adopt(UniqueFd(sv[1]))) fail("adopt");
  }
  std::thread loop([&] {
    Status st = (*server)->run();
    if (!st) fail("Server::run failed");
  });

  if (session == 2) {
    const int fd = conns[0].fd.get();
    if (!authenticate(fd, *options.key)) fail("a correct HELLO + AUTH was refused");
    uint8_t p[proto::kMapRequestSize];
    proto::encode_addr_request({0}, p);
    if (!call(fd, proto::Opcode::kAlloc, {p, proto::kAddrRequestSize}, 0xCCCC)) fail("harness ALLOC");
    proto::encode_map_request({0, proto::kMapWrite | proto::kMapShared}, p);
    auto m = call(fd, proto::Opcode::kMap, p, 0xDDDD);
    if (!m) fail("harness MAP");
    auto handle = proto::decode_map_reply(*m);
    if (!handle) fail("harness MAP reply");
    rewrite_handles(bytes, *handle);
  }
  if (two) {
    split(bytes, &conns[0].out, &conns[1].out);
  } else {
    conns[0].out = std::move(bytes);
  }
  exchange(conns, two ? 2 : 1);
  (*server)->stop();
  loop.join();

  for (int c = 0; c < (two ? 2 : 1); c++) {
    bool may_be_cut_off = two && may_be_fenced_off(conns[c].out, conns[1 - c].out);
    check_replies(conns[c], medium == 2, may_be_cut_off);
  }
  StoreStats stats = (*store)->stats();
  if (stats.mapped_blocks != 0) fail("mappings survived their connection", stats.mapped_blocks);
  if (stats.allocated_blocks + stats.free_blocks != stats.capacity_blocks) fail("store counters disagree");
  return 0;
}
