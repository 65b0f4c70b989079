// Request, RequestHead and Reply: a client request as the proxy sees it, and what it answers.
//
// Request owns a whole request (the slow path, and anything that outlives the read). RequestHead
// is a view of a request's head into the server's parse buffers, enough to answer a cache hit
// without copying. Reply is either a stored or fetched upstream response or a reply the gateway
// made itself. Plain values: no locking.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/client_view.h"
#include "gateway/interim.h"
#include "gateway/response.h"

namespace unherd::gateway {

struct Request {
  std::string method = "GET";
  std::string target = "/";
  unsigned version = 11;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = true;
  // Where the upstream's 103 Early Hints for this request go (interim.h); empty: nowhere.
  std::weak_ptr<InterimSink> interim;

  // The first value of a header, by case-insensitive name.
  std::optional<std::string_view> header(std::string_view name) const;
  // Appends every line of a header, in order, joined by kLineSeparator. False if there is none.
  bool header_values(std::string_view name, std::string& out) const;
};

// A request's head as the server parsed it: views into the parser's buffers, valid during the
// call they are passed to. Enough to answer a cache hit without copying the request.
struct RequestHead {
  struct Field {
    std::string_view name, value;
  };
  std::string_view method, target;
  std::span<const Field> headers;

  std::optional<std::string_view> header(std::string_view name) const;
  // Appends every line of a header, in order, joined by kLineSeparator. False if there is none.
  bool header_values(std::string_view name, std::string& out) const;
};

// What to send back. Either a stored/fetched upstream response (`cached`), whole or in the form
// `view` says (304, 206, 416), or a reply the gateway made itself (`status`, `body`);
// `extra_head` holds other per-request header lines.
struct Reply {
  ResponsePtr cached;
  ClientView view;  // of `cached`: the whole unless the request's conditions or Range say
  unsigned status = 200;
  std::string content_type = "text/plain";
  std::string body;
  std::string extra_head;
  std::string_view x_cache;                 // X-Cache (static text); also for the access log
  std::optional<std::chrono::seconds> age;  // Age, for answers from the cache
  std::string_view tier;                    // X-Cache-Tier: where a cached answer came from
  double upstream_ms = 0;                   // time this request waited on the upstream (access log)
  bool head_only = false;

  static Reply text(unsigned status, std::string body);
  // The status the client is sent.
  unsigned sent_status() const;
};

}  // namespace unherd::gateway
