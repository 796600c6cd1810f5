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
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

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

ClientOptions options_for(const Endpoint& ep) {
  ClientOptions o;
  o.endpoint = ep;
  o.transport = Transport::kRdma;
  o.features = proto::kFeaturePersistRpc;
  o.timeout_ms = 5000;
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
  auto c2 = BrickClient::Connect(options_for(ep));
  step(c2.ok() && (*c2)->stat().ok(), "a well-behaved client is served afterwards");
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: rdma_probe revoke HOST:PORT VADDR | garbage HOST:PORT\n");
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
  std::fprintf(stderr, "usage: rdma_probe revoke HOST:PORT VADDR | garbage HOST:PORT\n");
  return 2;
}
