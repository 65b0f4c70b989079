// A DiskTier on its own: a record written before the store is closed is read back after it is
// reopened, as a gateway finds its cache again after a restart. Usage: store_example DIRECTORY
// (the directory is replaced).
#include <unherd/disk_tier.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  const std::string path = argc > 1 ? argv[1] : "store_example.db";
  std::filesystem::remove_all(path);

  const auto now = std::chrono::system_clock::now();
  {
    unherd::DiskTier disk({.path = path, .budget = 64u << 20});
    disk.insert("price:SKU123", {.value = R"({"sku":"SKU123","price":42.5})",
                                 .stored_at = now,
                                 .fresh_until = now + 10min,
                                 .stale_until = now + 1h,
                                 .stale_if_error_until = now + 1h});
    disk.sync();  // what a clean shutdown does
  }

  unherd::DiskTier reopened({.path = path, .budget = 64u << 20});
  const auto record = reopened.lookup("price:SKU123", now);
  const auto stats = reopened.stats();
  std::printf("after reopening %s\n", path.c_str());
  std::printf("  entries:      %llu\n", static_cast<unsigned long long>(stats.entries));
  std::printf("  price:SKU123: %s\n", record ? record->value.c_str() : "(missing)");
  return record ? 0 : 1;
}
