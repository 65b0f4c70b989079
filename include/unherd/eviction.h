// EvictionPolicy: decides which cache entry goes when a cache shard is over its capacity.
//
// The cache links each entry into its shard's policy through a PolicyHook embedded in the entry
// and calls the policy with the shard's lock held, so a policy needs no locking of its own. LRU
// is the default; a policy that keeps more state (segmented LRU, CLOCK, TinyLFU) implements the
// same four calls.
#pragma once

#include <memory>

namespace unherd {

struct PolicyHook {
  PolicyHook* prev = nullptr;
  PolicyHook* next = nullptr;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  // A new entry joined the shard.
  virtual void inserted(PolicyHook* entry) noexcept = 0;
  // An entry was read.
  virtual void accessed(PolicyHook* entry) noexcept = 0;
  // An entry is leaving the shard (erased, replaced or evicted). REQUIRES: it was inserted.
  virtual void erased(PolicyHook* entry) noexcept = 0;
  // The entry to evict next, or nullptr if the shard is empty. Does not unlink it.
  virtual PolicyHook* victim() noexcept = 0;
};

// Least recently used first: a doubly-linked list, most recent at the front.
class LruPolicy final : public EvictionPolicy {
 public:
  LruPolicy() noexcept;
  void inserted(PolicyHook* entry) noexcept override;
  void accessed(PolicyHook* entry) noexcept override;
  void erased(PolicyHook* entry) noexcept override;
  PolicyHook* victim() noexcept override;

 private:
  PolicyHook head_;  // head_.next is the most recent, head_.prev the least recent
};

std::unique_ptr<EvictionPolicy> make_lru_policy();

}  // namespace unherd
