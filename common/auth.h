// Cluster-key authentication for HELLO (docs/protocol.md, "Authentication").
//
// Both sides prove knowledge of a shared key without sending it: the server's
// proof is HMAC-SHA256(key, "pbrick-v1 server" || client_nonce || server_nonce),
// the client's is HMAC-SHA256(key, "pbrick-v1 client" || server_nonce || client_nonce).
// Fresh random nonces on each side make a recorded exchange useless for replay.
// Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/protocol.h"
#include "common/result.h"

namespace pbrick {

using Nonce = std::array<uint8_t, proto::kNonceSize>;
using Proof = std::array<uint8_t, proto::kProofSize>;

// A cluster key read from a file: the file's bytes with one trailing newline
// removed. Refused (EINVAL) when shorter than 16 bytes, EACCES when the file is
// readable by group or others (a secret), errno of open/read otherwise.
struct ClusterKey {
  std::vector<uint8_t> bytes;
};
Result<ClusterKey> load_key_file(const std::string& path);

// Cryptographically random bytes (RAND_bytes).
Status random_bytes(uint8_t* out, size_t len);

Proof server_proof(const ClusterKey& key, const Nonce& client_nonce, const Nonce& server_nonce);
Proof client_proof(const ClusterKey& key, const Nonce& server_nonce, const Nonce& client_nonce);

// Constant-time comparison.
bool proofs_equal(const Proof& a, const Proof& b);

}  // namespace pbrick
