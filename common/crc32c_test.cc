// Tests for the software CRC-32C.

#include "common/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace pbrick {
namespace {

TEST(Crc32c, CheckValue) {
  // The standard check value of CRC-32C (Castagnoli), e.g. RFC 3720 / iSCSI.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
}

TEST(Crc32c, EmptyIsZeroAndKeepsSeed) {
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
  EXPECT_EQ(crc32c(nullptr, 0, 0x12345678), 0x12345678u);
}

TEST(Crc32c, KnownVectors) {
  // RFC 3720 B.4: 32 bytes of zeros, 32 bytes of 0xFF, 32 ascending bytes.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), ascending(32);
  for (size_t i = 0; i < 32; i++) ascending[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
}

TEST(Crc32c, ChainingEqualsOneShot) {
  const char* text = "The quick brown fox jumps over the lazy dog";
  size_t len = std::strlen(text);
  uint32_t whole = crc32c(text, len);
  for (size_t split = 0; split <= len; split++) {
    uint32_t first = crc32c(text, split);
    EXPECT_EQ(crc32c(text + split, len - split, first), whole) << split;
  }
  uint32_t three = crc32c(text + 20, len - 20, crc32c(text + 7, 13, crc32c(text, 7)));
  EXPECT_EQ(three, whole);
}

TEST(Crc32c, DetectsSingleBitFlips) {
  std::vector<uint8_t> buf(4096);
  for (size_t i = 0; i < buf.size(); i++) buf[i] = static_cast<uint8_t>(i * 31 + 7);
  uint32_t good = crc32c(buf.data(), buf.size());
  for (size_t bit = 0; bit < buf.size() * 8; bit += 97) {
    buf[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_NE(crc32c(buf.data(), buf.size()), good) << bit;
    buf[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
}

}  // namespace
}  // namespace pbrick
