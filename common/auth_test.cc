// Tests for cluster-key proofs and key file loading.

#include "common/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace pbrick {
namespace {

// errno of loading `path`, 0 on success.
int load_err(const std::string& path) {
  auto key = load_key_file(path);
  return key.ok() ? 0 : key.error().errnum();
}

ClusterKey key_of(const std::string& s) { return ClusterKey{std::vector<uint8_t>(s.begin(), s.end())}; }

Nonce nonce_from(uint8_t start) {
  Nonce n{};
  for (size_t i = 0; i < n.size(); i++) n[i] = static_cast<uint8_t>(start + i);
  return n;
}

Proof proof_from_hex(const char* hex) {
  Proof p{};
  for (size_t i = 0; i < p.size(); i++) {
    p[i] = static_cast<uint8_t>(std::stoul(std::string(hex + 2 * i, 2), nullptr, 16));
  }
  return p;
}

// Known answers computed independently (Python: hmac.new(key, label + n1 + n2,
// sha256)), pinning the MAC input layout documented in docs/protocol.md:
// label (16 bytes, no NUL) || first nonce || second nonce.
TEST(Auth, ProofsMatchKnownAnswers) {
  ClusterKey key = key_of("pbrick test key 0123456789");
  Nonce client_nonce = nonce_from(0x00);
  Nonce server_nonce = nonce_from(0x80);
  EXPECT_EQ(server_proof(key, client_nonce, server_nonce),
            proof_from_hex("9b827afd575237583993e661793113cee0ea2bf9974964d1da846775d15b34e3"));
  EXPECT_EQ(client_proof(key, server_nonce, client_nonce),
            proof_from_hex("6710f680a6e8e45dea8e5cf0e5727ea1b6b1498ea6881f3cadc76b195cc2e7c6"));
}

TEST(Auth, ProofsDifferByRole) {
  ClusterKey key = key_of("0123456789abcdef0123456789abcdef");
  Nonce a = nonce_from(1), b = nonce_from(2);
  // Same nonce order for both: only the label differs, so a server proof can
  // never be replayed as a client proof (reflection).
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), client_proof(key, a, b)));
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), client_proof(key, b, a)));
}

TEST(Auth, ProofsDifferByNonceAndKey) {
  ClusterKey key = key_of("0123456789abcdef0123456789abcdef");
  Nonce a = nonce_from(1), b = nonce_from(2), c = nonce_from(3);
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), server_proof(key, c, b)));
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), server_proof(key, a, c)));
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), server_proof(key, b, a)));
  EXPECT_FALSE(proofs_equal(client_proof(key, a, b), client_proof(key, a, c)));
  ClusterKey other = key_of("0123456789abcdef0123456789abcdeF");
  EXPECT_FALSE(proofs_equal(server_proof(key, a, b), server_proof(other, a, b)));
}

TEST(Auth, ProofsEqualForSameInputs) {
  ClusterKey key = key_of("0123456789abcdef");
  Nonce a = nonce_from(7), b = nonce_from(9);
  EXPECT_TRUE(proofs_equal(server_proof(key, a, b), server_proof(key, a, b)));
  EXPECT_TRUE(proofs_equal(client_proof(key, b, a), client_proof(key, b, a)));
  Proof p = server_proof(key, a, b);
  Proof q = p;
  q[31] ^= 1;
  EXPECT_FALSE(proofs_equal(p, q));
}

TEST(Auth, RandomBytesAreFreshAndFillTheBuffer) {
  Nonce a{}, b{};
  ASSERT_TRUE(random_bytes(a.data(), a.size()).ok());
  ASSERT_TRUE(random_bytes(b.data(), b.size()).ok());
  EXPECT_NE(a, b);
  EXPECT_NE(a, Nonce{});
  EXPECT_TRUE(random_bytes(nullptr, 0).ok());
}

// A temporary key file in $TMPDIR, removed at scope exit.
class TempKeyFile {
 public:
  TempKeyFile(const std::string& contents, mode_t mode) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/pbrick-key-XXXXXX";
    int fd = ::mkstemp(path_.data());
    EXPECT_GE(fd, 0) << std::strerror(errno);
    if (fd < 0) return;
    EXPECT_EQ(::write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
    EXPECT_EQ(::fchmod(fd, mode), 0);
    ::close(fd);
  }
  ~TempKeyFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(AuthKeyFile, LoadsKeyAndStripsOneTrailingNewline) {
  TempKeyFile f("0123456789abcdef-secret\n", 0600);
  auto key = load_key_file(f.path());
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(std::string(key->bytes.begin(), key->bytes.end()), "0123456789abcdef-secret");

  TempKeyFile two("0123456789abcdef\n\n", 0400);
  auto key2 = load_key_file(two.path());
  ASSERT_TRUE(key2.ok()) << key2.error().message();
  EXPECT_EQ(std::string(key2->bytes.begin(), key2->bytes.end()), "0123456789abcdef\n");
}

TEST(AuthKeyFile, KeyWithoutNewlineIsUsedVerbatim) {
  std::string raw("\x00\x01\xff binary key bytes", 20);
  TempKeyFile f(raw, 0600);
  auto key = load_key_file(f.path());
  ASSERT_TRUE(key.ok()) << key.error().message();
  EXPECT_EQ(std::string(key->bytes.begin(), key->bytes.end()), raw);
}

TEST(AuthKeyFile, TooShortIsEinval) {
  TempKeyFile f("short\n", 0600);
  auto key = load_key_file(f.path());
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().errnum(), EINVAL);
  // 16 bytes plus newline: the newline does not count toward the minimum.
  TempKeyFile g("0123456789abcde\n", 0600);
  EXPECT_EQ(load_err(g.path()), EINVAL);
  TempKeyFile empty("", 0600);
  EXPECT_EQ(load_err(empty.path()), EINVAL);
}

TEST(AuthKeyFile, GroupOrWorldAccessibleIsEacces) {
  for (mode_t mode : {0644, 0640, 0604, 0660, 0602, 0610}) {
    TempKeyFile f("0123456789abcdef0123456789abcdef\n", mode);
    auto key = load_key_file(f.path());
    ASSERT_FALSE(key.ok()) << std::oct << mode;
    EXPECT_EQ(key.error().errnum(), EACCES);
    EXPECT_NE(key.error().context().find(f.path()), std::string::npos) << key.error().context();
    EXPECT_NE(key.error().context().find("chmod 600"), std::string::npos) << key.error().context();
  }
}

TEST(AuthKeyFile, TooLargeIsEinval) {
  TempKeyFile f(std::string(100000, 'k'), 0600);
  EXPECT_EQ(load_err(f.path()), EINVAL);
}

TEST(AuthKeyFile, MissingFileIsEnoent) {
  auto key = load_key_file("/nonexistent/pbrick/cluster.key");
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.error().errnum(), ENOENT);
}

TEST(AuthKeyFile, DirectoryIsRefused) {
  EXPECT_EQ(load_err("/"), EINVAL);
}

}  // namespace
}  // namespace pbrick
