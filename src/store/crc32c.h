// Crc32c: the CRC-32C (Castagnoli) checksum that guards each disk-tier record
// (record_codec.h), with SSE4.2's instruction when the CPU has it and a table otherwise.
// Pure function; no state beyond a constant table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace unherd::record {

// CRC-32C of n bytes, continuing `crc` (0 to start).
std::uint32_t crc32c(const void* data, std::size_t n, std::uint32_t crc = 0);

}  // namespace unherd::record
