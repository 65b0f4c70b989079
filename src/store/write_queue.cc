// WriteQueue: the disk tier's write-behind queue (write_queue.h).
#include "store/write_queue.h"

namespace unherd::disk {

bool WriteQueue::push(WriteOp op, bool always) {
  const std::size_t n = op_bytes(op);
  {
    std::lock_guard lk(mu_);
    if (!open_ || stopping_ || (queued_bytes_ + n > limit_bytes_ && !always)) return false;
    queued_bytes_ += n;
    op.ticket = ++enqueued_;
    queue_.push_back(std::move(op));
  }
  work_cv_.notify_one();
  return true;
}

void WriteQueue::wait_applied() {
  std::unique_lock lk(mu_);
  const std::uint64_t target = enqueued_;
  applied_cv_.wait(lk, [&] { return applied_ >= target || (queue_.empty() && !busy_); });
}

void WriteQueue::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
}

bool WriteQueue::wait_for_work(std::chrono::steady_clock::time_point until) {
  std::unique_lock lk(mu_);
  work_cv_.wait_until(lk, until, [&] { return !queue_.empty() || stopping_; });
  return !(queue_.empty() && stopping_);
}

std::vector<WriteOp> WriteQueue::take_batch() {
  std::vector<WriteOp> batch;
  std::lock_guard lk(mu_);
  std::size_t taken = 0;
  while (!queue_.empty() && batch.size() < 4096 && taken < (16u << 20)) {
    taken += op_bytes(queue_.front());
    queued_bytes_ -= op_bytes(queue_.front());
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  busy_ = !batch.empty();
  return batch;
}

void WriteQueue::batch_done(const std::vector<WriteOp>& batch) {
  {
    std::lock_guard lk(mu_);
    if (!batch.empty()) applied_ = std::max(applied_, batch.back().ticket);
    busy_ = false;
    if (queue_.empty()) applied_ = enqueued_;
  }
  applied_cv_.notify_all();
}

void WriteQueue::all_done() {
  std::lock_guard lk(mu_);
  applied_ = enqueued_;
  applied_cv_.notify_all();
}

}  // namespace unherd::disk
