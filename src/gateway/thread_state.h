// ThreadState: one gateway thread's Upstreams — a connection pool (UpstreamClient) per upstream,
// opened on first use.
//
// Thread safety: none; it belongs to the thread whose executor it was made with.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "gateway/config.h"
#include "gateway/upstream.h"
#include "gateway/upstreams.h"

namespace unherd::gateway {

class ThreadState final : public Upstreams {
 public:
  // `budget`: the in-flight budget every thread's upstream answers share.
  ThreadState(boost::asio::any_io_executor executor, const ServerConfig& server,
              std::shared_ptr<InflightBudget> budget);
  UpstreamClient& client(const UpstreamUrl& upstream) override;
  // Closes every pool's connections idle past upstream_idle_timeout.
  void close_idle();
  boost::asio::any_io_executor executor() const { return executor_; }

 private:
  boost::asio::any_io_executor executor_;
  UpstreamClient::Options options_;
  std::map<std::string, std::unique_ptr<UpstreamClient>> clients_;
};

}  // namespace unherd::gateway
