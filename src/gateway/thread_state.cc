// ThreadState: one gateway thread's upstream connection pools (thread_state.h).
#include "gateway/thread_state.h"

namespace unherd::gateway {

ThreadState::ThreadState(boost::asio::any_io_executor executor, const ServerConfig& server)
    : executor_(std::move(executor)),
      max_connections_(server.upstream_connections),
      max_body_(64u << 20),
      idle_timeout_(server.upstream_idle_timeout),
      max_head_(server.max_header_bytes) {}

void ThreadState::close_idle() {
  for (auto& [name, client] : clients_)
    client->close_idle();
}

UpstreamClient& ThreadState::client(const UpstreamUrl& upstream) {
  auto& c = clients_[upstream.to_string()];
  if (!c) {
    c = std::make_unique<UpstreamClient>(executor_, upstream, max_connections_, max_body_,
                                         idle_timeout_, max_head_);
  }
  return *c;
}

}  // namespace unherd::gateway
