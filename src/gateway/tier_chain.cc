// The tiers the configuration asks for (tier_chain.h).
#include "gateway/tier_chain.h"

#include <spdlog/spdlog.h>

#include "unherd/disk_tier.h"

namespace unherd::gateway {

std::vector<std::shared_ptr<Tier>> make_tier_chain(const CacheConfig& cache, Clock& clock) {
  std::vector<std::shared_ptr<Tier>> tiers;
  if (cache.store == "disk") {
    tiers.push_back(std::make_shared<DiskTier>(
        DiskTierOptions{.path = cache.path,
                        .budget = cache.disk,
                        .warn = [](const std::string& m) { spdlog::warn("{}", m); }},
        clock));
  }
  return tiers;
}

}  // namespace unherd::gateway
