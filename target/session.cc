// The handshake (docs/protocol.md: HELLO, then AUTH when the brick has a
// cluster key) and admission past it.
#include <algorithm>
#include <string>

#include "common/auth.h"
#include "common/log.h"
#include "target/server_impl.h"

namespace pbrick {

using proto::Opcode;

bool Server::Impl::handshake_allows(Connection& c, const proto::FrameHeader& h) {
  if (c.ready()) return true;
  // The decision is made on the header alone: the payload of a frame refused
  // here is never read, so a peer that proved nothing cannot make the brick
  // wait for (and hold) up to 2 MiB of it.
  bool hello_state = c.state == Connection::State::kHello;
  Opcode expected = hello_state ? Opcode::kHello : Opcode::kAuth;
  if (h.opcode == expected) return true;
  Error e = hello_state ? Error(EPROTO, "first frame must be HELLO")
                        : Error(EACCES, std::string(proto::opcode_name(h.opcode)) + " before AUTH");
  PBRICK_LOG_WARN("%s: refused: %s before %s", c.peer.c_str(), proto::opcode_name(h.opcode),
                  hello_state ? "HELLO" : "authentication");
  c.reply_error(h, e);
  c.begin_close();
  return false;
}

void Server::Impl::handle_hello(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto refuse = [&](const Error& e) {
    c.reply_error(h, e);
    c.begin_close();
  };
  auto req = proto::decode_hello_request(payload);
  if (!req) return refuse(req.error());
  uint16_t version = std::min<uint16_t>(req->max_version, proto::kMaxVersion);
  if (version < req->min_version || version < proto::kMinVersion) {
    return refuse(Error(EPROTONOSUPPORT, "no common protocol version"));
  }
  proto::HelloReply r;
  r.version = version;
  r.features = req->features & proto::kKnownFeatures;
  if (c.transport->kind() == Transport::kRdma) {
    if ((req->features & proto::kFeatureRdma) == 0) {
      return refuse(Error(EPROTONOSUPPORT, "RDMA connection without the RDMA feature"));
    }
    if (options_.key && (req->features & proto::kFeatureAuthTrailer) == 0) {
      // Such a client expects the sync region in this reply, before it
      // proved the key: nothing of the brick's memory is named before AUTH.
      PBRICK_LOG_WARN("%s: refused: an RDMA client without AUTH_TRAILER (too old for a brick with a key)",
                      c.peer.c_str());
      return refuse(Error(EPROTONOSUPPORT, "RDMA with a cluster key needs AUTH_TRAILER"));
    }
    const bool software = listener_ && listener_->cpu_copies();
    if ((req->features & proto::kFeatureSyncRead) != 0 &&
        !sync_read_persists_over_rdma(options_.persistence, store_.region().persistence_domain(),
                                      store_.region().is_pmem(), software)) {
      if (options_.persistence == Persistence::kSyncRead) {
        PBRICK_LOG_WARN("%s: refused: sync-read persistence asked for, but this brick's RDMA device is software "
                        "(soft-RoCE, siw): what it writes stays in the CPU caches whatever DDIO is, and its pmem "
                        "store's persistence domain (%s) does not include them",
                        c.peer.c_str(), persistence_domain_name(store_.region().persistence_domain()));
      } else {
        PBRICK_LOG_WARN("%s: refused: sync-read persistence asked for, but this brick has not declared DDIO off "
                        "on its storage NIC (start it with --persistence sync-read once DDIO is off) and its "
                        "store's persistence domain does not include the CPU caches",
                        c.peer.c_str());
      }
      return refuse(Error(EOPNOTSUPP, "sync-read needs DDIO off"));
    }
  } else {
    r.features &= ~(proto::kFeatureRdma | proto::kFeatureAuthTrailer);
  }
  r.brick_uuid = store_.uuid();
  r.boot_id = boot_id_;
  c.features = r.features;
  c.client_nonce = req->client_nonce;
  if (options_.key) {
    Status st = random_bytes(c.server_nonce.data(), c.server_nonce.size());
    if (!st) return refuse(st.error());
    r.hello_flags |= proto::kHelloAuthRequired;
    r.server_nonce = c.server_nonce;
    r.server_proof = server_proof(*options_.key, c.client_nonce, c.server_nonce);
    c.state = Connection::State::kAuth;
  } else if (!complete_handshake(c, h)) {
    return;
  }
  if (proto::hello_has_rdma_trailer(r.features, r.hello_flags)) {
    r.has_rdma_trailer = true;
    r.sync_rkey = listener_->sync_rkey();
    r.sync_addr = listener_->sync_addr();
  }
  proto::encode_hello_reply(r, c.reply_header(h, static_cast<uint32_t>(proto::hello_reply_size(r))));
}

void Server::Impl::handle_auth(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_auth_request(payload);
  if (!req || !proofs_equal(req->client_proof, client_proof(*options_.key, c.server_nonce, c.client_nonce))) {
    PBRICK_LOG_WARN("%s: refused: wrong cluster key", c.peer.c_str());
    c.reply_error(h, Error(EACCES, "AUTH: wrong key"));
    c.begin_close();
    return;
  }
  if (!complete_handshake(c, h)) return;
  proto::AuthReply r;
  if (c.transport->kind() == Transport::kRdma) {
    // Only now, with the key proved, the sync region (AUTH_TRAILER, which an
    // RDMA client of a brick with a key must offer).
    r.has_rdma_trailer = true;
    r.sync_rkey = listener_->sync_rkey();
    r.sync_addr = listener_->sync_addr();
  }
  proto::encode_auth_reply(r, c.reply_header(h, static_cast<uint32_t>(proto::auth_reply_size(r))));
}

bool Server::Impl::complete_handshake(Connection& c, const proto::FrameHeader& h) {
  if (ready_connections_ >= options_.max_connections) {
    PBRICK_LOG_WARN("%s: refused: %u connections are open (--max-connections)", c.peer.c_str(),
                    options_.max_connections);
    c.reply_error(h, Error(EAGAIN, "the brick serves its maximum number of connections"));
    c.begin_close();
    return false;
  }
  Status st = c.transport->allow_remote_access();
  if (!st) {
    PBRICK_LOG_ERROR("%s: %s", c.peer.c_str(), st.error().message().c_str());
    c.reply_error(h, st.error());
    c.begin_close();
    return false;
  }
  if (c.counts_as_handshake) {
    c.counts_as_handshake = false;
    pending_handshakes_--;
  }
  ready_connections_++;
  c.state = Connection::State::kReady;
  return true;
}

}  // namespace pbrick
