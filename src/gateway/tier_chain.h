// The cache tiers below memory that the gateway's configuration asks for ([cache] store): part of
// the composition root, the one place that names concrete tiers. Proxy is handed the chain and
// knows only Tier.
#pragma once

#include <memory>
#include <vector>

#include "gateway/config.h"
#include "unherd/clock.h"
#include "unherd/tier.h"

namespace unherd::gateway {

// Opens the tiers of `cache`, in lookup order: the disk tier for store = "disk", none for
// "none". A store that cannot be opened still yields its tier, unavailable (see DiskTier).
std::vector<std::shared_ptr<Tier>> make_tier_chain(const CacheConfig& cache, Clock& clock);

}  // namespace unherd::gateway
