// Helpers shared by the core tests: a gate that holds fetches until a test releases them, and a
// bounded wait for a condition that other threads make true.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "unherd/tier.h"

namespace unherd::testing {

// Fetchers block on wait() until the test calls open().
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Waits (yielding, bounded by a generous real-time limit so a broken test fails rather than
// hangs) until pred() holds. This waits for other threads to reach a point, not for time to pass.
inline bool eventually(const std::function<bool()>& pred) {
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > limit) return false;
    std::this_thread::yield();
  }
  return true;
}

// Holds one thread at its second hash of a key: in a Coordinator, after its cache lookup and
// before it joins or creates the key's flight. A thread arms it with pause_after_one_hash().
struct PausingHash {
  static inline Gate* reached = nullptr;            // opened when the armed thread is held
  static inline Gate* release = nullptr;            // the armed thread goes on once this opens
  static inline thread_local int hashes_left = -1;  // -1: this thread is not armed

  static void pause_after_one_hash() { hashes_left = 1; }
  std::size_t operator()(const std::string& key) const {
    if (hashes_left >= 0 && hashes_left-- == 0) {
      reached->open();
      release->wait();
    }
    return std::hash<std::string>{}(key);
  }
};

// A thread-safe Tier over a map, counting its reads; records past dead_after() are not returned.
class CountingTier final : public Tier {
 public:
  explicit CountingTier(std::string name = "map") : name_(std::move(name)) {}
  std::string_view name() const noexcept override { return name_; }
  std::optional<TierRecord> lookup(std::string_view key, WallTime now) override {
    reads.fetch_add(1);
    std::lock_guard lock(mu);
    auto it = records.find(std::string(key));
    if (it == records.end() || now >= it->second.dead_after()) return std::nullopt;
    return it->second;
  }
  void insert(std::string_view key, TierRecord record) override {
    std::lock_guard lock(mu);
    records[std::string(key)] = std::move(record);
  }
  bool erase(std::string_view key) override {
    std::lock_guard lock(mu);
    return records.erase(std::string(key)) > 0;
  }
  std::size_t purge_prefix(std::string_view prefix) override {
    std::lock_guard lock(mu);
    return std::erase_if(records, [&](auto& kv) { return kv.first.starts_with(prefix); });
  }
  TierStats stats() const override { return {}; }
  void reset_stats() override {}

  std::mutex mu;
  std::map<std::string, TierRecord> records;
  std::atomic<int> reads{0};

 private:
  std::string name_;
};

}  // namespace unherd::testing
