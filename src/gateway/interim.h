// InterimSink: where the upstream's interim answers (103 Early Hints) go — the client connection
// whose request the upstream call is for, while that request is being answered.
//
// A request carries a weak_ptr to its connection's sink (none for HTTP/1.0 clients, who must not
// be sent 1xx answers, RFC 9110 §15.2); the connection drops the sink once it has answered, so
// an interim answer that comes later (a fetch that outlived its request, a refresh started by
// it) goes nowhere, never into another request's answer. Interim answers are never stored.
//
// Thread safety: a sink is used on its connection's thread only (the upstream call runs on the
// io_context of the request that started it).
#pragma once

#include <memory>
#include <string>

namespace unherd::gateway {

class InterimSink {
 public:
  virtual ~InterimSink() = default;
  // Queues one interim answer, whole ("HTTP/1.1 103 Early Hints\r\n" ... "\r\n"), for the client.
  virtual void send(std::string bytes) = 0;
};

}  // namespace unherd::gateway
