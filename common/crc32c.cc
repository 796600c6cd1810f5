// Table-driven CRC-32C: reflected, polynomial 0x82F63B78, initial value and final
// XOR 0xFFFFFFFF. One table lookup per byte is plenty for the superblock checksum
// this guards; nothing on the data path is checksummed in software.

#include "common/crc32c.h"

#include <array>

namespace pbrick {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // Castagnoli, bit-reversed

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ ((crc & 1) ? kPoly : 0);
    table[i] = crc;
  }
  return table;
}

// Built at compile time: no initialisation order or thread-safety questions.
constexpr std::array<uint32_t, 256> kTable = make_table();

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t seed) {
  // `seed` is a previous finished CRC (or 0). Undoing its final XOR resumes the
  // register where that computation stopped, so crc32c(b, crc32c(a)) == crc32c(a||b).
  uint32_t crc = ~seed;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < len; i++) crc = (crc >> 8) ^ kTable[(crc ^ p[i]) & 0xFF];
  return ~crc;
}

}  // namespace pbrick
