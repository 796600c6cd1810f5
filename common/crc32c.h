// CRC-32C (Castagnoli), as used for the store superblock checksum. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pbrick {

// crc32c(nullptr, 0) == 0; crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t len, uint32_t seed = 0);

}  // namespace pbrick
