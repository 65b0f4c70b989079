// StoreLayout: the disk tier's keys and charges (store_layout.h).
#include "store/store_layout.h"

#include <cstdio>

namespace unherd::disk {

std::string store_key(std::string_view key) {
  if (!key.empty() && key.size() <= kPlainKey) return std::string(key);
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : key)
    h = (h ^ c) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  std::string out(key.substr(0, kPlainKey));
  out += '\xff';
  out += hex;
  return out;
}

std::string big_endian(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8)
    s[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}

std::uint64_t from_big_endian(std::string_view s) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8 && i < s.size(); ++i)
    v = v << 8 | static_cast<unsigned char>(s[i]);
  return v;
}

std::string expiry_key(std::int64_t dead_after, std::string_view skey) {
  return big_endian(order(dead_after)) + std::string(skey);
}

std::uint64_t charge_of(std::size_t record, std::size_t store_key) {
  constexpr std::size_t kPage = 4096;
  const std::size_t node = record + store_key + 16;
  const std::size_t stored = node > kPage / 2 ? (node + kPage - 1) / kPage * kPage : node;
  return stored + 3 * store_key + 64;
}

}  // namespace unherd::disk
