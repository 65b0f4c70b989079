// WriteQueue: the disk tier's write-behind queue — puts, recency touches and erases waiting for
// the tier's writer thread, bounded in bytes.
//
// Callers push and never wait on the disk: a full queue, a stopping one, or one whose store is
// off (`open` false) refuses the write. The writer takes batches, applies them and reports them
// done; wait_applied() lets a caller wait until what it queued has been applied (or taken off).
//
// Thread safety: every member may be called from any thread; one thread is the writer
// (wait_for_work, take_batch, batch_done, all_done).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "unherd/tier.h"

namespace unherd::disk {

struct WriteOp {
  // kPurgePrefix: `key` is a prefix; every record whose key starts with it goes.
  enum Kind { kPut, kTouch, kErase, kPurgePrefix } kind = kPut;
  std::string key;
  TierRecord record;
  std::uint64_t ticket = 0;  // set by push
  // An erase or purge readers already treat as done (a tombstone): cleared once it commits.
  bool tombstoned = false;
};

class WriteQueue {
 public:
  // `limit_bytes`: what queued ops may hold; `open`: while false, pushes are refused.
  WriteQueue(std::size_t limit_bytes, const std::atomic<bool>& open)
      : limit_bytes_(limit_bytes), open_(open) {}
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  // Queues op; returns false if it was dropped (the queue is full — unless `always`: removals
  // must never be lost — or the tier is closed).
  bool push(WriteOp op, bool always = false);
  // Removes queued puts and touches of the keys pred accepts. Returns how many puts.
  template <class Pred>
  std::size_t remove_if(Pred pred);
  // Waits until everything queued before the call is applied or removed.
  void wait_applied();
  // Tells the writer to finish what is queued and stop.
  void stop();

  // Writer: waits for work until `until`. Returns false once stopping with nothing queued.
  bool wait_for_work(std::chrono::steady_clock::time_point until);
  // Writer: the next batch (at most 4096 ops, 16 MiB), in order; possibly empty.
  std::vector<WriteOp> take_batch();
  // Writer: the batch from take_batch() is applied (or given up).
  void batch_done(const std::vector<WriteOp>& batch);
  // Writer, when it stops: everything queued counts as applied.
  void all_done();

 private:
  static std::size_t op_bytes(const WriteOp& op) {
    return op.key.size() + op.record.value.size() + sizeof(WriteOp);
  }

  const std::size_t limit_bytes_;
  const std::atomic<bool>& open_;
  std::mutex mu_;  // protects everything below
  std::condition_variable work_cv_, applied_cv_;
  std::deque<WriteOp> queue_;
  std::size_t queued_bytes_ = 0;
  std::uint64_t enqueued_ = 0, applied_ = 0;
  bool busy_ = false, stopping_ = false;
};

template <class Pred>
std::size_t WriteQueue::remove_if(Pred pred) {
  std::size_t puts = 0;
  std::lock_guard lk(mu_);
  std::erase_if(queue_, [&](const WriteOp& op) {
    if ((op.kind != WriteOp::kPut && op.kind != WriteOp::kTouch) || !pred(op.key)) return false;
    puts += op.kind == WriteOp::kPut;
    queued_bytes_ -= op_bytes(op);
    return true;
  });
  if (queue_.empty()) applied_ = enqueued_;
  applied_cv_.notify_all();
  return puts;
}

}  // namespace unherd::disk
