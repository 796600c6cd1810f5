// rdma_probe: checks an RDMA brick from the wire up, for the system tests
// (tests/vm/rdma.bats). Each mode prints what it saw, one line per step, and
// exits 0 only when the brick behaved as docs/protocol.md says.
//
//   rdma_probe revoke HOST:PORT VADDR
//     On ONE connection and queue pair: alloc + map VADDR read-write, RDMA
//     WRITE a pattern and READ it back, UNMAP, then READ through the old
//     handle again: the NIC must refuse it (remote access error). A second
//     connection then finds the brick serving and the pattern intact.
//   rdma_probe garbage HOST:PORT
//     Messages no client should send (bad magic, a frame before HELLO, a
//     length that lies, READ/WRITE frames over RDMA): the brick must close or
//     refuse each, and still serve a well-behaved client afterwards.
//   rdma_probe preauth HOST:PORT KEYFILE VADDR
//     Against a brick with a cluster key: a keyed client maps VADDR and
//     writes a pattern; peers that never authenticated (no HELLO at all,
//     HELLO only, a wrong AUTH) learn no rkey or address (HELLO names none)
//     and their RDMA READs through the keyed client's real handle are
//     refused by the NIC. An authenticated peer's READ with a guessed rkey is
//     refused with a remote access error, handle addresses are unrelated to
//     each other, and the real handle works from another authenticated
//     connection (handles are shared between authenticated connections).
//   rdma_probe order HOST:PORT VADDR
//     A message goes out after the one-sided WRs queued before it, as a
//     PERSIST must reach the brick after the WRITEs it covers: on one link a
//     WRITE of a pattern is queued (not posted), then a PERSIST is sent.
//     Nothing may be left queued, the WRITE completes before the PERSIST's
//     reply arrives, the reply is OK, and the pattern reads back.
//   rdma_probe vanish HOST:PORT VADDR
//     A child process maps VADDR exclusively (as a gateway holds a volume's
//     lock), sends more STATs than it has receives posted, so that replies
//     wait at its NIC, and exits without disconnecting, as a killed gateway
//     does. The brick must release the mapping at once: another client maps
//     VADDR exclusively within 2 s, where waiting for the stuck replies to
//     time out would take the QP's retries (seconds).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/client.h"
#include "common/protocol.h"
#include "common/rdma.h"
#include "common/units.h"

namespace {

using namespace pbrick;

int g_failures = 0;

void step(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok:  " : "FAIL:", what.c_str());
  if (!ok) g_failures++;
}

ClientOptions options_for(const Endpoint& ep, std::optional<ClusterKey> key = std::nullopt) {
  ClientOptions o;
  o.endpoint = ep;
  o.transport = Transport::kRdma;
  o.features = proto::kFeaturePersistRpc;
  o.timeout_ms = 5000;
  o.key = std::move(key);
  return o;
}

int revoke(const Endpoint& ep, uint64_t vaddr) {
  auto c = BrickClient::Connect(options_for(ep));
  if (!c) {
    step(false, "connect: " + c.error().message());
    return 1;
  }
  BrickClient& client = **c;
  Status st = client.alloc(vaddr);
  step(st.ok() || st.error().errnum() == EEXIST, "alloc " + format_hex(vaddr));
  auto h = client.map(vaddr, proto::kMapWrite);
  if (!h) {
    step(false, "map: " + h.error().message());
    return 1;
  }
  step(true, "map rw: rkey " + format_hex(h->rkey) + " at " + format_hex(h->remote_addr));
  std::vector<uint8_t> pattern(64 * 1024), back(pattern.size());
  for (size_t i = 0; i < pattern.size(); i++) pattern[i] = static_cast<uint8_t>(i * 7 + 3);
  st = client.write(h->rkey, h->remote_addr + 4096, pattern);
  step(st.ok(), "RDMA WRITE of 64 KiB through the handle" + (st.ok() ? "" : ": " + st.error().message()));
  st = client.read(h->rkey, h->remote_addr + 4096, back);
  step(st.ok() && back == pattern, "RDMA READ returns what was written");
  proto::PersistRange range{h->rkey, h->remote_addr + 4096, pattern.size()};
  st = client.persist({&range, 1});
  step(st.ok(), "PERSIST of the written range" + (st.ok() ? "" : ": " + st.error().message()));
  st = client.unmap(vaddr);
  step(st.ok(), "UNMAP on the same connection");
  st = client.read(h->rkey, h->remote_addr + 4096, back);
  bool refused = !st.ok() && st.error().errnum() == EKEYREJECTED &&
                 st.error().context().find("remote access error") != std::string::npos;
  step(refused, "RDMA READ through the revoked rkey on the same QP is refused by the NIC: " +
                    (st.ok() ? std::string("it succeeded") : st.error().message()));

  auto c2 = BrickClient::Connect(options_for(ep));
  if (!c2) {
    step(false, "second connection: " + c2.error().message());
    return 1;
  }
  auto stat = (*c2)->stat();
  step(stat.ok(), "the brick still serves: stat on a new connection");
  auto h2 = (*c2)->map(vaddr, 0);
  if (h2) {
    std::fill(back.begin(), back.end(), 0);
    st = (*c2)->read(h2->rkey, h2->remote_addr + 4096, back);
    step(st.ok() && back == pattern, "the data written before the revocation is intact (new read-only handle)");
    std::vector<uint8_t> one(1, 0x55);
    st = (*c2)->write(h2->rkey, h2->remote_addr, one);
    step(!st.ok() && st.error().errnum() == EKEYREJECTED,
         "RDMA WRITE through a read-only handle is refused by the NIC: " +
             (st.ok() ? std::string("it succeeded") : st.error().message()));
  } else {
    step(false, "map again: " + h2.error().message());
  }
  return g_failures == 0 ? 0 : 1;
}

// Sends `bytes` as one message on a fresh, un-greeted connection and reports
// what came back: a reply's status, or that the brick hung up.
std::string send_raw(const Endpoint& ep, const std::vector<uint8_t>& bytes, bool* hung_up, uint32_t* status) {
  rdma::RdmaLink link;
  rdma::LinkOptions lo;
  Status st = link.connect(ep, lo, 5000);
  if (!st) return "connect: " + st.error().message();
  st = link.send_message(bytes);
  if (!st) return "send: " + st.error().message();
  *hung_up = false;
  *status = 0;
  bool got = false;
  for (int i = 0; i < 50 && !got && !*hung_up; i++) {
    Status w = link.wait(100, [&](const rdma::RdmaLink::Completion& c) {
      if (c.kind != rdma::RdmaLink::Completion::Kind::kMessage || c.message.size() < proto::kHeaderSize) return;
      auto h = proto::decode_header(c.message.first(proto::kHeaderSize), true);
      if (h) *status = h->status;
      got = true;
    });
    if (!w.ok() && w.error().errnum() != ETIMEDOUT) *hung_up = true;
    if (!link.check_cm_events().ok()) *hung_up = true;
  }
  // After a reply, the brick closes a connection it can no longer trust.
  for (int i = 0; i < 30 && got && !*hung_up; i++) {
    Status w = link.wait(100, [](const rdma::RdmaLink::Completion&) {});
    if (!w.ok() && w.error().errnum() != ETIMEDOUT) *hung_up = true;
    if (!link.check_cm_events().ok()) *hung_up = true;
  }
  return got ? "reply status " + std::to_string(*status) : "no reply";
}

std::vector<uint8_t> frame(proto::Opcode op, std::span<const uint8_t> payload, uint32_t claimed_len) {
  proto::FrameHeader h;
  h.opcode = op;
  h.request_id = 7;
  h.payload_len = claimed_len;
  std::vector<uint8_t> out(proto::kHeaderSize + payload.size());
  proto::encode_header(h, out.data());
  std::memcpy(out.data() + proto::kHeaderSize, payload.data(), payload.size());
  return out;
}

int garbage(const Endpoint& ep) {
  bool hung_up = false;
  uint32_t status = 0;
  std::vector<uint8_t> junk(64, 0xAB);
  std::string r = send_raw(ep, junk, &hung_up, &status);
  step(hung_up && r == "no reply", "bad magic: the brick hangs up without a reply (" + r + ")");

  uint8_t addr[proto::kAddrRequestSize];
  proto::encode_addr_request({0}, addr);
  r = send_raw(ep, frame(proto::Opcode::kAlloc, addr, sizeof addr), &hung_up, &status);
  step(hung_up && status == proto::wire_status(EPROTO), "ALLOC before HELLO: EPROTO, then closed (" + r + ")");

  r = send_raw(ep, frame(proto::Opcode::kAlloc, addr, 4000), &hung_up, &status);
  step(hung_up, "a frame whose length claims more than the message holds: closed (" + r + ")");

  // A greeted client sending a READ frame: refused, connection kept.
  auto c = BrickClient::Connect(options_for(ep));
  if (!c) {
    step(false, "connect: " + c.error().message());
    return 1;
  }
  uint8_t io[proto::kIoRequestSize];
  proto::encode_io_request({1, 0, 16}, io);
  Status st = (*c)->send_raw(frame(proto::Opcode::kRead, io, sizeof io));
  step(st.ok(), "READ frame sent over RDMA");
  // The READ's reply arrives before the STAT's, so STAT reports it.
  auto stat = (*c)->stat();
  std::string want = "a READ reply, status " + std::to_string(proto::wire_status(EOPNOTSUPP));
  step(!stat.ok() && stat.error().context().find(want) != std::string::npos,
       "the READ frame is refused with EOPNOTSUPP: " + (stat.ok() ? std::string("no error") : stat.error().message()));
  // A greeted client's message that is not one whole frame (a MAP header
  // claiming its 16-byte payload, sent without it): EBADMSG for the MAP, then
  // closed - the next message (STAT) is never glued into the MAP's payload.
  auto c3 = BrickClient::Connect(options_for(ep));
  if (!c3) {
    step(false, "connect: " + c3.error().message());
    return 1;
  }
  st = (*c3)->send_raw(frame(proto::Opcode::kMap, {}, proto::kMapRequestSize));
  step(st.ok(), "a MAP header without its payload sent as one message");
  stat = (*c3)->stat();
  want = "a MAP reply, status " + std::to_string(proto::wire_status(EBADMSG));
  step(!stat.ok() && stat.error().context().find(want) != std::string::npos,
       "the short message is refused with EBADMSG: " + (stat.ok() ? std::string("no error") : stat.error().message()));
  stat = (*c3)->stat();
  step(!stat.ok(),
       "and its connection closed: " + (stat.ok() ? std::string("a STAT was answered") : stat.error().message()));

  // A request sent before a misframed message is answered first (one reply
  // per request, in order: docs/protocol.md §3), even within one batch of
  // completions at the brick.
  auto c4 = BrickClient::Connect(options_for(ep));
  if (!c4) {
    step(false, "connect: " + c4.error().message());
    return 1;
  }
  st = (*c4)->send_raw(frame(proto::Opcode::kStat, {}, 0));
  if (st) st = (*c4)->send_raw(frame(proto::Opcode::kMap, {}, proto::kMapRequestSize));
  step(st.ok(), "a STAT, then a MAP header without its payload, sent back to back");
  stat = (*c4)->stat();
  want = "a STAT reply, status 0";
  step(!stat.ok() && stat.error().context().find(want) != std::string::npos,
       "the STAT before the misframed message is answered first: " +
           (stat.ok() ? std::string("no error") : stat.error().message()));

  auto c2 = BrickClient::Connect(options_for(ep));
  step(c2.ok() && (*c2)->stat().ok(), "a well-behaved client is served afterwards");
  return g_failures == 0 ? 0 : 1;
}

// An RDMA READ of `len` bytes through (rkey, addr) on `link`: "ok", or the
// work completion's error (the NIC's answer), or why it never completed.
std::string read_through(rdma::RdmaLink& link, std::vector<uint8_t>& buf, uint32_t rkey, uint64_t addr,
                         size_t len, int* errnum) {
  *errnum = 0;
  ibv_sge sge{reinterpret_cast<uint64_t>(buf.data()), static_cast<uint32_t>(len), link.lkey(buf.data(), len)};
  link.queue_rdma(IBV_WR_RDMA_READ, &sge, 1, rkey, addr, 1);
  Status st = link.post_queued();
  if (!st) {
    *errnum = st.error().errnum();
    return "post: " + st.error().message();
  }
  std::string result = "no completion within 5 s";
  bool got = false;
  for (int i = 0; i < 50 && !got; i++) {
    Status w = link.wait(100, [&](const rdma::RdmaLink::Completion& c) {
      if (c.kind != rdma::RdmaLink::Completion::Kind::kOneSided) return;
      got = true;
      *errnum = c.status;
      result = c.status == 0 ? "ok" : c.error;
    });
    if (!got && !w.ok() && w.error().errnum() != ETIMEDOUT) {
      *errnum = w.error().errnum();
      result = w.error().message();
      break;
    }
  }
  if (!got && *errnum == 0) *errnum = ETIMEDOUT;
  return result;
}

// The NIC refused: a remote access error or (a queue pair without remote
// access rights, on some NICs) a remote invalid request error.
bool refused_by_nic(int errnum, const std::string& text) {
  return errnum == EKEYREJECTED &&
         (text.find("remote access error") != std::string::npos ||
          text.find("remote invalid request error") != std::string::npos);
}

// A raw RDMA connection with one registered 64 KiB buffer, greeted or not.
struct RawPeer {
  rdma::RdmaLink link;
  std::vector<uint8_t> buf = std::vector<uint8_t>(64 * 1024);
  std::string connect(const Endpoint& ep) {
    Status st = link.add_region(buf.data(), buf.size());
    if (st) st = link.connect(ep, rdma::LinkOptions{}, 5000);
    return st ? "" : st.error().message();
  }
  // Sends one frame and returns its reply's header and payload.
  std::string call(std::span<const uint8_t> frame_bytes, proto::FrameHeader* h, std::vector<uint8_t>* payload) {
    Status st = link.send_message(frame_bytes);
    if (!st) return "send: " + st.error().message();
    bool got = false;
    std::string why = "no reply within 5 s";
    for (int i = 0; i < 50 && !got; i++) {
      Status w = link.wait(100, [&](const rdma::RdmaLink::Completion& c) {
        if (c.kind != rdma::RdmaLink::Completion::Kind::kMessage) return;
        got = true;
        auto d = proto::decode_header(c.message.first(std::min(c.message.size(), proto::kHeaderSize)), true);
        if (!d) {
          why = "bad reply: " + d.error().message();
          return;
        }
        *h = *d;
        payload->assign(c.message.begin() + proto::kHeaderSize, c.message.end());
        why.clear();
      });
      if (!got && !w.ok() && w.error().errnum() != ETIMEDOUT) return w.error().message();
    }
    return why;
  }
};

std::vector<uint8_t> hello_frame(uint64_t features) {
  proto::HelloRequest hello;
  hello.features = features;
  for (size_t i = 0; i < hello.client_nonce.size(); i++) hello.client_nonce[i] = static_cast<uint8_t>(i * 31 + 7);
  uint8_t payload[proto::kHelloRequestSize];
  proto::encode_hello_request(hello, payload);
  return frame(proto::Opcode::kHello, payload, sizeof payload);
}

int preauth(const Endpoint& ep, const std::string& key_file, uint64_t vaddr) {
  auto key = load_key_file(key_file);
  if (!key) {
    step(false, "key file: " + key.error().message());
    return 1;
  }
  auto a = BrickClient::Connect(options_for(ep, *key));
  if (!a) {
    step(false, "keyed client: " + a.error().message());
    return 1;
  }
  BrickClient& owner = **a;
  step(owner.sync_region().has_value(), "the keyed client got the sync region after AUTH");
  Status st = owner.alloc(vaddr);
  step(st.ok() || st.error().errnum() == EEXIST, "alloc " + format_hex(vaddr));
  auto h = owner.map(vaddr, proto::kMapWrite | proto::kMapShared);
  if (!h) {
    step(false, "map: " + h.error().message());
    return 1;
  }
  std::vector<uint8_t> pattern(4096);
  for (size_t i = 0; i < pattern.size(); i++) pattern[i] = static_cast<uint8_t>(i * 13 + 5);
  st = owner.write(h->rkey, h->remote_addr, pattern);
  step(st.ok(), "the keyed client wrote a pattern through its handle" + (st.ok() ? "" : ": " + st.error().message()));
  const uint32_t sync_rkey = owner.sync_region() ? owner.sync_region()->rkey : 0;
  const uint64_t sync_addr = owner.sync_region() ? owner.sync_region()->addr : 0;

  int errnum = 0;
  {
    RawPeer p;
    std::string err = p.connect(ep);
    step(err.empty(), "a peer connects and says nothing" + (err.empty() ? "" : ": " + err));
    std::string r = read_through(p.link, p.buf, h->rkey, h->remote_addr, pattern.size(), &errnum);
    step(refused_by_nic(errnum, r), "its RDMA READ through the keyed client's handle is refused by the NIC: " + r);
  }
  {
    RawPeer p;
    std::string err = p.connect(ep);
    proto::FrameHeader rh;
    std::vector<uint8_t> payload;
    if (err.empty()) {
      err = p.call(hello_frame(proto::kFeatureRdma | proto::kFeatureAuthTrailer | proto::kFeaturePersistRpc), &rh,
                   &payload);
    }
    bool hello_ok = err.empty() && rh.status == 0;
    auto hello = proto::decode_hello_reply(payload);
    step(hello_ok && hello && (hello->hello_flags & proto::kHelloAuthRequired) != 0 && !hello->has_rdma_trailer &&
             payload.size() == proto::kHelloReplySize,
         "HELLO before AUTH: AUTH_REQUIRED, 120 bytes, no rkey and no address (" +
             (err.empty() ? std::to_string(payload.size()) + " bytes, status " + std::to_string(rh.status) : err) +
             ")");
    std::string r = read_through(p.link, p.buf, h->rkey, h->remote_addr, pattern.size(), &errnum);
    step(refused_by_nic(errnum, r), "after HELLO, before AUTH: a READ through the keyed client's handle is refused by the NIC: " + r);
  }
  {
    RawPeer p;
    std::string err = p.connect(ep);
    if (err.empty()) {
      std::string r = read_through(p.link, p.buf, sync_rkey, sync_addr, 8, &errnum);
      step(refused_by_nic(errnum, r), "an unauthenticated READ of the sync region (rkey from another connection) is refused by the NIC: " + r);
    }
  }
  {
    RawPeer p;
    std::string err = p.connect(ep);
    proto::FrameHeader rh;
    std::vector<uint8_t> payload;
    if (err.empty()) err = p.call(hello_frame(proto::kFeatureRdma | proto::kFeaturePersistRpc), &rh, &payload);
    step(err.empty() && rh.status == proto::wire_status(EPROTONOSUPPORT),
         "an RDMA HELLO without AUTH_TRAILER to a brick with a key: EPROTONOSUPPORT (" +
             (err.empty() ? "status " + std::to_string(rh.status) : err) + ")");
  }
  {
    RawPeer p;
    std::string err = p.connect(ep);
    proto::FrameHeader rh;
    std::vector<uint8_t> payload;
    if (err.empty()) {
      err = p.call(hello_frame(proto::kFeatureRdma | proto::kFeatureAuthTrailer), &rh, &payload);
    }
    if (err.empty()) {
      uint8_t proof[proto::kAuthRequestSize] = {};  // not the key's
      err = p.call(frame(proto::Opcode::kAuth, proof, sizeof proof), &rh, &payload);
    }
    step(err.empty() && rh.status == proto::wire_status(EACCES) && payload.empty(),
         "a wrong AUTH: EACCES, and no trailer (" + (err.empty() ? "status " + std::to_string(rh.status) : err) + ")");
  }

  auto b = BrickClient::Connect(options_for(ep, *key));
  if (!b) {
    step(false, "second keyed client: " + b.error().message());
    return 1;
  }
  std::vector<uint8_t> back(pattern.size());
  st = (*b)->read(h->rkey ^ 0x5A, h->remote_addr, back);
  step(!st.ok() && st.error().errnum() == EKEYREJECTED &&
           st.error().message().find("remote access error") != std::string::npos,
       "an authenticated READ with a guessed rkey is refused with a remote access error: " +
           (st.ok() ? std::string("it succeeded") : st.error().message()));
  auto b2 = BrickClient::Connect(options_for(ep, *key));
  if (!b2) {
    step(false, "third keyed client: " + b2.error().message());
    return 1;
  }
  st = (*b2)->read(h->rkey, h->remote_addr, back);
  step(st.ok() && back == pattern, "another authenticated connection reads the pattern through the shared handle");
  Status st2 = (*b2)->alloc(vaddr + proto::kBlockSize);
  auto h2 = (*b2)->map(vaddr + proto::kBlockSize, proto::kMapShared);
  if (h2 && (st2.ok() || st2.error().errnum() == EEXIST)) {
    uint64_t gap = h2->remote_addr > h->remote_addr ? h2->remote_addr - h->remote_addr : h->remote_addr - h2->remote_addr;
    uint64_t sync_gap = sync_addr > h->remote_addr ? sync_addr - h->remote_addr : h->remote_addr - sync_addr;
    step(gap > (1ull << 40) && sync_gap > (1ull << 40),
         "handle and sync addresses are unrelated (" + format_hex(h->remote_addr) + ", " +
             format_hex(h2->remote_addr) + ", sync " + format_hex(sync_addr) + ")");
  } else {
    step(false, "map of a second block: " + (h2 ? st2.error().message() : h2.error().message()));
  }
  return g_failures == 0 ? 0 : 1;
}

int order(const Endpoint& ep, uint64_t vaddr) {
  rdma::RdmaLink link;
  std::vector<uint8_t> pattern(256 * 1024), back(pattern.size());
  for (size_t i = 0; i < pattern.size(); i++) pattern[i] = static_cast<uint8_t>(i * 13 + 5);
  Status st = link.add_region(pattern.data(), pattern.size());
  if (!st) {
    step(false, "register the pattern: " + st.error().message());
    return 1;
  }
  auto c = BrickClient::Connect(options_for(ep), &link, rdma::LinkOptions{});
  if (!c) {
    step(false, "connect: " + c.error().message());
    return 1;
  }
  st = (*c)->alloc(vaddr);
  step(st.ok() || st.error().errnum() == EEXIST, "alloc " + format_hex(vaddr));
  auto h = (*c)->map(vaddr, proto::kMapWrite);
  if (!h) {
    step(false, "map: " + h.error().message());
    return 1;
  }
  ibv_sge sge{reinterpret_cast<uint64_t>(pattern.data()), static_cast<uint32_t>(pattern.size()),
              link.lkey(pattern.data(), pattern.size())};
  link.queue_rdma(IBV_WR_RDMA_WRITE, &sge, 1, h->rkey, h->remote_addr, 1);
  step(link.queued() == 1, "a 256 KiB RDMA WRITE queued, not posted");
  proto::PersistRequest req;
  req.ranges.push_back({h->rkey, h->remote_addr, pattern.size()});
  std::vector<uint8_t> msg(proto::kHeaderSize + proto::persist_request_size(1));
  proto::FrameHeader hdr;
  hdr.opcode = proto::Opcode::kPersist;
  hdr.request_id = 0x7700;
  hdr.payload_len = static_cast<uint32_t>(msg.size() - proto::kHeaderSize);
  proto::encode_header(hdr, msg.data());
  proto::encode_persist_request(req, msg.data() + proto::kHeaderSize);
  st = link.send_message(msg);
  step(st.ok(), "PERSIST of the range sent" + (st.ok() ? "" : ": " + st.error().message()));
  step(link.queued() == 0, "sending the message posted the WRITE queued before it (" +
                               std::to_string(link.queued()) + " left queued)");
  bool wrote = false, replied = false, write_first = false;
  int write_status = -1;
  uint32_t reply_status = ~0u;
  for (int i = 0; i < 100 && !(wrote && replied); i++) {
    Status w = link.wait(100, [&](const rdma::RdmaLink::Completion& comp) {
      if (comp.kind == rdma::RdmaLink::Completion::Kind::kOneSided && comp.cookie == 1) {
        wrote = true;
        write_status = comp.status;
        write_first = !replied;
      } else if (comp.kind == rdma::RdmaLink::Completion::Kind::kMessage &&
                 comp.message.size() >= proto::kHeaderSize) {
        auto rh = proto::decode_header(comp.message.first(proto::kHeaderSize), true);
        if (rh && rh->request_id == 0x7700) {
          replied = true;
          reply_status = rh->status;
        }
      }
    });
    if (!w.ok() && w.error().errnum() != ETIMEDOUT) {
      step(false, "waiting for the completions: " + w.error().message());
      return 1;
    }
  }
  step(wrote && write_status == 0, "the WRITE completed" + (wrote ? "" : std::string(": never")));
  step(replied && reply_status == 0, "the PERSIST was answered OK");
  step(write_first, "the WRITE completed before the PERSIST's reply came");
  st = (*c)->read(h->rkey, h->remote_addr, back);
  step(st.ok() && back == pattern, "the pattern reads back");
  return g_failures == 0 ? 0 : 1;
}

int vanish(const Endpoint& ep, uint64_t vaddr) {
  // The child owns every RDMA resource of the dying client; this process
  // opens none before the child is gone.
  pid_t child = fork();
  if (child < 0) {
    step(false, std::string("fork: ") + std::strerror(errno));
    return 1;
  }
  if (child == 0) {
    rdma::RdmaLink link;
    auto c = BrickClient::Connect(options_for(ep), &link, rdma::LinkOptions{});
    if (!c) {
      step(false, "connect: " + c.error().message());
      std::fflush(stdout);
      _exit(1);
    }
    Status st = (*c)->alloc(vaddr);
    step(st.ok() || st.error().errnum() == EEXIST, "alloc " + format_hex(vaddr));
    auto h = (*c)->map(vaddr, 0);
    step(h.ok(), "map read-only, exclusive" + (h.ok() ? "" : ": " + h.error().message()));
    // Never polled: its receives are not posted again, so the brick's later
    // replies meet a receiver not ready and stay in flight (RNR retries).
    int sent = 0;
    for (uint32_t i = 0; i < proto::kRdmaMaxOutstanding + 8; i++) {
      if (!link.send_message(frame(proto::Opcode::kStat, {}, 0)).ok()) break;
      sent++;
    }
    step(sent > static_cast<int>(proto::kRdmaMaxOutstanding), std::to_string(sent) + " STATs sent, none read");
    std::fflush(stdout);
    ::usleep(300 * 1000);  // the brick has answered what it can
    _exit(g_failures == 0 ? 0 : 1);  // no disconnect: the kernel tears the QP down
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  step(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the client holding the mapping exited without disconnecting");
  auto started = std::chrono::steady_clock::now();
  auto c = BrickClient::Connect(options_for(ep));
  if (!c) {
    step(false, "connect: " + c.error().message());
    return 1;
  }
  Result<proto::MapReply> h = Error(EBUSY, "not tried");
  long waited_ms = 0;
  for (;;) {
    h = (*c)->map(vaddr, 0);
    waited_ms = static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - started)
                                      .count());
    if (h || h.error().errnum() != EBUSY || waited_ms >= 10000) break;
    ::usleep(50 * 1000);
  }
  step(h.ok() && waited_ms < 2000, "another client maps it exclusively " +
                                       (h.ok() ? "after " + std::to_string(waited_ms) + " ms"
                                               : "never in " + std::to_string(waited_ms) + " ms: " +
                                                     h.error().message()));
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

constexpr char kUsage[] =
    "usage: rdma_probe revoke HOST:PORT VADDR | garbage HOST:PORT | preauth HOST:PORT KEYFILE VADDR |\n"
    "                  order HOST:PORT VADDR | vanish HOST:PORT VADDR\n";

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string mode = argv[1];
  auto ep = pbrick::parse_endpoint(argv[2], "HOST:PORT");
  if (!ep) {
    std::fprintf(stderr, "rdma_probe: %s\n", ep.error().message().c_str());
    return 2;
  }
  if (mode == "revoke" && argc == 4) {
    auto vaddr = pbrick::parse_u64(argv[3], "VADDR");
    if (!vaddr) return 2;
    return revoke(*ep, *vaddr);
  }
  if (mode == "garbage" && argc == 3) return garbage(*ep);
  if (mode == "order" && argc == 4) {
    auto vaddr = pbrick::parse_u64(argv[3], "VADDR");
    if (!vaddr) return 2;
    return order(*ep, *vaddr);
  }
  if (mode == "vanish" && argc == 4) {
    auto vaddr = pbrick::parse_u64(argv[3], "VADDR");
    if (!vaddr) return 2;
    return vanish(*ep, *vaddr);
  }
  if (mode == "preauth" && argc == 5) {
    auto vaddr = pbrick::parse_u64(argv[4], "VADDR");
    if (!vaddr) return 2;
    return preauth(*ep, argv[3], *vaddr);
  }
  std::fputs(kUsage, stderr);
  return 2;
}
