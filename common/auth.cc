// Cluster-key authentication (docs/protocol.md, "Authentication").

#include "common/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/log.h"
#include "common/unique_fd.h"

namespace pbrick {
namespace {

// A key shorter than this is more likely a mistake (an empty or truncated file)
// than a secret.
constexpr size_t kMinKeyBytes = 16;
// Key files are a few dozen bytes; the cap only keeps a wrong path (a log file,
// a device) from being slurped into memory.
constexpr size_t kMaxKeyBytes = 4096;

// Domain-separation labels: 16 bytes each, no terminating NUL on the wire of the
// MAC input. Distinct labels make a server proof useless as a client proof even
// when an attacker reflects the nonces back.
constexpr char kServerLabel[] = "pbrick-v1 server";
constexpr char kClientLabel[] = "pbrick-v1 client";
constexpr size_t kLabelSize = sizeof(kServerLabel) - 1;
static_assert(sizeof(kClientLabel) - 1 == kLabelSize);

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  if (code == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof buf);
  return buf;
}

// HMAC-SHA256(key, label || first || second).
Proof compute_proof(const ClusterKey& key, const char* label, const Nonce& first,
                    const Nonce& second) {
  uint8_t msg[kLabelSize + 2 * proto::kNonceSize];
  std::memcpy(msg, label, kLabelSize);
  std::memcpy(msg + kLabelSize, first.data(), first.size());
  std::memcpy(msg + kLabelSize + first.size(), second.data(), second.size());

  // OpenSSL may reject a null key pointer even with length 0.
  static const uint8_t kEmpty = 0;
  const uint8_t* key_data = key.bytes.empty() ? &kEmpty : key.bytes.data();

  Proof proof{};
  unsigned int len = 0;
  if (key.bytes.size() > INT_MAX ||
      HMAC(EVP_sha256(), key_data, static_cast<int>(key.bytes.size()), msg, sizeof msg,
           proof.data(), &len) == nullptr ||
      len != proof.size()) {
    // There is no safe value to return: if both sides fell back to the same
    // constant, any peer would authenticate. HMAC-SHA256 failing means the crypto
    // library itself is unusable.
    PBRICK_LOG_ERROR("HMAC-SHA256 failed: %s", openssl_error().c_str());
    std::abort();
  }
  return proof;
}

}  // namespace

Result<ClusterKey> load_key_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return errno_error("open key file " + path);

  // fstat the descriptor we read, not the path, so the mode we check is the
  // mode of the bytes we use.
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return errno_error("stat key file " + path);
  if (!S_ISREG(st.st_mode)) return Error(EINVAL, "key file " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error(EACCES, "key file " + path + " is accessible by group or others (mode " + mode +
                             "); run chmod 600 " + path);
  }

  ClusterKey key;
  key.bytes.resize(kMaxKeyBytes + 1);
  size_t got = 0;
  while (got < key.bytes.size()) {
    ssize_t n = ::read(fd.get(), key.bytes.data() + got, key.bytes.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      Error err = errno_error("read key file " + path);
      OPENSSL_cleanse(key.bytes.data(), key.bytes.size());
      return err;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > kMaxKeyBytes) {
    OPENSSL_cleanse(key.bytes.data(), key.bytes.size());
    return Error(EINVAL, "key file " + path + " is larger than " + std::to_string(kMaxKeyBytes) +
                             " bytes; is this the right file?");
  }
  // Editors and `echo` add a newline; the key is what is on the line.
  if (got > 0 && key.bytes[got - 1] == '\n') got--;
  if (got < kMinKeyBytes) {
    OPENSSL_cleanse(key.bytes.data(), key.bytes.size());
    return Error(EINVAL, "key file " + path + " holds " + std::to_string(got) +
                             " bytes; a cluster key needs at least " +
                             std::to_string(kMinKeyBytes));
  }
  // Wipe the unused tail before shrinking: resize does not clear it.
  OPENSSL_cleanse(key.bytes.data() + got, key.bytes.size() - got);
  key.bytes.resize(got);
  return key;
}

Status random_bytes(uint8_t* out, size_t len) {
  while (len > 0) {
    int chunk = len > INT_MAX ? INT_MAX : static_cast<int>(len);
    if (RAND_bytes(out, chunk) != 1) {
      return Error(EIO, "RAND_bytes: " + openssl_error());
    }
    out += chunk;
    len -= static_cast<size_t>(chunk);
  }
  return Status::Ok();
}

Proof server_proof(const ClusterKey& key, const Nonce& client_nonce, const Nonce& server_nonce) {
  return compute_proof(key, kServerLabel, client_nonce, server_nonce);
}

Proof client_proof(const ClusterKey& key, const Nonce& server_nonce, const Nonce& client_nonce) {
  return compute_proof(key, kClientLabel, server_nonce, client_nonce);
}

bool proofs_equal(const Proof& a, const Proof& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace pbrick
