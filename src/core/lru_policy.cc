// The default eviction policy (unherd/eviction.h): least recently used.
#include "unherd/eviction.h"

namespace unherd {

LruPolicy::LruPolicy() noexcept {
  head_.prev = head_.next = &head_;
}

void LruPolicy::inserted(PolicyHook* entry) noexcept {
  entry->prev = &head_;
  entry->next = head_.next;
  head_.next->prev = entry;
  head_.next = entry;
}

void LruPolicy::accessed(PolicyHook* entry) noexcept {
  if (head_.next == entry) return;
  erased(entry);
  inserted(entry);
}

void LruPolicy::erased(PolicyHook* entry) noexcept {
  entry->prev->next = entry->next;
  entry->next->prev = entry->prev;
  entry->prev = entry->next = nullptr;
}

PolicyHook* LruPolicy::victim() noexcept {
  return head_.prev == &head_ ? nullptr : head_.prev;
}

std::unique_ptr<EvictionPolicy> make_lru_policy() {
  return std::make_unique<LruPolicy>();
}

}  // namespace unherd
