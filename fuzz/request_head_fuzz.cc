// Fuzz target: the gateway's client-request path, as serve_connection() in
// src/gateway/http_connection.cc runs it.
//
// The input is what a client sent before closing. As the server does: the raw head is checked
// for obs-fold, Beast's request parser reads the head with the server's header and body limits,
// refuse_framing() judges it, the body is read, and the target is taken to its origin form.
// Beyond "no crash", the invariants the rest of the gateway relies on are checked for every
// request the server would forward.
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "beast_feed.h"
#include "gateway/config.h"
#include "gateway/head_parser.h"
#include "gateway/request_framing.h"
#include "require.h"

namespace {

namespace http = boost::beast::http;
using unherd::gateway::iequals;

using unherd::fuzz::require;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  const ServerConfig limits;

  // The blank line that ends a head, where the server looks for one; a folded head is refused
  // before Beast sees it.
  const auto end = std::min(raw.find("\r\n\r\n"), raw.find("\n\n"));
  if (end != std::string_view::npos && has_obs_fold(raw.substr(0, end + 2))) return 0;

  HeadParser<true, http::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
  parser.trailer_limit(limits.max_header_bytes);
  parser.body_limit(limits.max_body_bytes);
  unherd::fuzz::BeastFeed feed(raw);
  auto ec = feed.until(parser, [](const auto& p) { return p.is_header_done(); });
  if (ec) return 0;  // answered 400, 413 or 431, or the connection closed

  // The server checked for obs-fold exactly the head Beast read: its blank line is the first.
  require(end != std::string_view::npos, "a head was parsed that has no blank line");
  require(feed.used() == end + 4 && raw.substr(end, 4) == "\r\n\r\n",
          "Beast's head ends elsewhere than the blank line the obs-fold check stopped at");

  const auto& head = parser.get();
  if (auto refused = refuse_framing(head, parser.chunked())) {
    require(refused->status == 400 || refused->status == 501 || refused->status == 505,
            "a refusal other than 400, 501 or 505");
    return 0;
  }
  require(head.version() == 10 || head.version() == 11, "a version other than 1.0 or 1.1");
  const std::size_t hosts = head.count(http::field::host);
  require(hosts <= 1 && (head.version() == 10 || hosts == 1),
          "HTTP/1.1 forwarded without exactly one Host");
  if (head.count(http::field::transfer_encoding) > 0) {
    require(head.count(http::field::transfer_encoding) == 1, "two Transfer-Encoding lines");
    require(head.version() == 11, "Transfer-Encoding forwarded on HTTP/1.0");
    require(iequals(last_coding(head[http::field::transfer_encoding]), "chunked"),
            "a final transfer coding other than chunked");
    require(parser.chunked(), "Transfer-Encoding: chunked but the body is not read as chunked");
    require(head.count(http::field::content_length) == 0, "Transfer-Encoding with Content-Length");
  } else {
    require(!parser.chunked(), "a chunked body without Transfer-Encoding");
  }

  const auto head_fields = unherd::fuzz::field_lines(head);
  if (!parser.is_done()) {
    ec = feed.until(parser, [](const auto& p) { return p.is_done(); });
    if (ec) return 0;  // answered 400 or 413
  }
  const auto& msg = parser.get();
  // What the server forwards is read after the body: a trailer must not have changed it.
  require(unherd::fuzz::field_lines(msg) == head_fields,
          "the head's fields changed while the body (and its trailer) was read");
  require(parser.chunked() || parser.trailer_fields() == 0, "trailers without a chunked body");
  require(msg.body().size() <= limits.max_body_bytes, "a body over the limit");
  if (const auto length = parser.content_length(); length && !parser.chunked()) {
    require(msg.body().size() == *length, "a body of another length than Content-Length");
  }

  std::string buffer;
  const std::string_view target = origin_form(msg.target(), buffer);
  require(target == msg.target() || target.starts_with('/'),
          "origin_form made a target that is neither the original nor starts with '/'");
  return 0;
}
