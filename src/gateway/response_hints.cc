// ResponseHints: a sharded, byte-bounded LRU of per-key hints (response_hints.h).
#include "gateway/response_hints.h"

#include <algorithm>
#include <functional>
#include <iterator>

namespace unherd::gateway {

ResponseHints::ResponseHints(std::size_t budget, Clock& clock)
    : clock_(clock), shard_budget_(std::max<std::size_t>(budget / kShards, 1)) {}

ResponseHints::Shard& ResponseHints::shard_of(std::string_view key) {
  return shards_[std::hash<std::string_view>{}(key) % kShards];
}

ResponseHints::Entry* ResponseHints::touch(Shard& shard, std::string_view key, bool create) {
  if (auto it = shard.index.find(key); it != shard.index.end()) {
    shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
    return &*it->second;
  }
  if (!create) return nullptr;
  shard.lru.push_front(Entry{std::string(key), std::nullopt, {}, 0});
  shard.index.emplace(shard.lru.front().key, shard.lru.begin());
  entries_.fetch_add(1, std::memory_order_relaxed);
  return &shard.lru.front();
}

void ResponseHints::erase(Shard& shard, std::list<Entry>::iterator it) {
  shard.bytes -= it->charge;
  shard.index.erase(it->key);
  shard.lru.erase(it);
  entries_.fetch_sub(1, std::memory_order_relaxed);
}

void ResponseHints::recharge(Shard& shard, Entry& entry) {
  std::size_t charge = kEntryOverhead + 2 * entry.key.size();  // the key, and the index's hash
  for (const auto& name : entry.vary)
    charge += sizeof(std::string) + name.size();
  shard.bytes = shard.bytes - entry.charge + charge;
  entry.charge = charge;
  while (shard.bytes > shard_budget_ && !shard.lru.empty()) {
    erase(shard, std::prev(shard.lru.end()));
    forgotten_.fetch_add(1, std::memory_order_relaxed);
  }
}

bool ResponseHints::passing(std::string_view key) {
  if (entries_.load(std::memory_order_relaxed) == 0) return false;
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  auto it = shard.index.find(key);
  if (it == shard.index.end() || !it->second->pass_until) return false;
  if (clock_.now() < *it->second->pass_until) return true;
  it->second->pass_until.reset();  // expired
  if (it->second->vary.empty()) erase(shard, it->second);
  return false;
}

void ResponseHints::remember_pass(std::string_view key, Duration for_how_long) {
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  Entry* e = touch(shard, key, true);
  e->pass_until = clock_.now() + for_how_long;
  recharge(shard, *e);
}

bool ResponseHints::remember_unshareable(std::string_view key, NoCacheReason why) {
  if (why == NoCacheReason::kNone || why == NoCacheReason::kVary ||
      why == NoCacheReason::kVaryUnsent) {
    return false;
  }
  remember_pass(key, kPassFor);
  return true;
}

void ResponseHints::forget(std::string_view key) {
  if (entries_.load(std::memory_order_relaxed) == 0) return;
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  auto it = shard.index.find(key);
  if (it != shard.index.end()) erase(shard, it->second);
}

void ResponseHints::forget_pass(std::string_view key) {
  if (entries_.load(std::memory_order_relaxed) == 0) return;
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  auto it = shard.index.find(key);
  if (it == shard.index.end()) return;
  it->second->pass_until.reset();
  if (it->second->vary.empty()) erase(shard, it->second);
}

std::vector<std::string> ResponseHints::vary(std::string_view primary_key) {
  if (entries_.load(std::memory_order_relaxed) == 0) return {};
  Shard& shard = shard_of(primary_key);
  std::lock_guard lock(shard.mu);
  Entry* e = touch(shard, primary_key, false);
  return e ? e->vary : std::vector<std::string>{};
}

void ResponseHints::learn_vary(std::string_view primary_key, std::vector<std::string> names) {
  Shard& shard = shard_of(primary_key);
  std::lock_guard lock(shard.mu);
  Entry* e = touch(shard, primary_key, true);
  // Names only ever add up: an origin that names a header on some answers only would otherwise
  // flip the key back and forth, and a key on more names than needed is only less shared.
  std::vector<std::string> all;
  std::set_union(e->vary.begin(), e->vary.end(), names.begin(), names.end(),
                 std::back_inserter(all));
  e->vary = std::move(all);
  recharge(shard, *e);
}

ResponseHints::Stats ResponseHints::stats() const {
  Stats s;
  s.budget = shard_budget_ * kShards;
  s.forgotten = forgotten_.load(std::memory_order_relaxed);
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    s.entries += shard.index.size();
    s.bytes += shard.bytes;
  }
  return s;
}

}  // namespace unherd::gateway
