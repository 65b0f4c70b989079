// ThreadState: one gateway thread's upstream connection pools (thread_state.h).
#include "gateway/thread_state.h"

namespace unherd::gateway {

ThreadState::ThreadState(boost::asio::any_io_executor executor, const ServerConfig& server,
                         std::shared_ptr<InflightBudget> budget)
    : executor_(std::move(executor)),
      options_{server.upstream_connections, server.upstream_idle_timeout, server.max_header_bytes,
               std::move(budget)} {}

void ThreadState::close_idle() {
  for (auto& [name, client] : clients_)
    client->close_idle();
}

UpstreamClient& ThreadState::client(const UpstreamUrl& upstream) {
  auto& c = clients_[upstream.to_string()];
  if (!c) {
    c = std::make_unique<UpstreamClient>(executor_, upstream, options_);
  }
  return *c;
}

}  // namespace unherd::gateway
