// Fuzz target: an upstream's answer, read as UpstreamClient::send() in src/gateway/upstream.cc
// reads it, then judged as the proxy judges what it may store.
//
// Input: one flags byte (bit 0: the request was HEAD; bit 1: a small body limit, the next byte),
// then the bytes the upstream sent before closing. As send() does: interim answers (1xx) are
// read and passed over, at most kMaxInterim of them, a 101 is refused; each answer's header is
// read, then its body (none for HEAD); a trailer never changes the head (HeadParser);
// a transfer coding other than chunked is refused. The headers are then turned into the facts
// response_policy() decides on, as build_response() in src/gateway/upstream_answer.cc does, and
// the stored form is encoded and decoded again.
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "beast_feed.h"
#include "gateway/cache_rules.h"
#include "gateway/head_parser.h"
#include "gateway/response.h"
#include "gateway/text.h"
#include "require.h"

namespace {

namespace http = boost::beast::http;
using unherd::gateway::iequals;

using unherd::fuzz::require;

constexpr int kMaxInterim = 8;  // as in upstream.cc

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  if (size < 2) return 0;
  const bool head = data[0] & 1;
  const std::size_t max_body = (data[0] & 2) ? data[1] : std::size_t{64} << 20;
  const std::string_view raw(reinterpret_cast<const char*>(data) + 2, size - 2);

  unherd::fuzz::BeastFeed feed(raw);
  std::optional<HeadParser<false, http::string_body>> parser;
  std::vector<std::pair<std::string, std::string>> header_fields;
  boost::beast::error_code ec;
  for (int interim = 0; !ec; ++interim) {
    parser.emplace();
    parser->body_limit(max_body);
    parser->skip(head);
    ec = feed.until(*parser, [](const auto& p) { return p.is_header_done(); });
    header_fields = unherd::fuzz::field_lines(parser->get());
    if (!ec && !parser->is_done()) {
      ec = feed.until(*parser, [](const auto& p) { return p.is_done(); });
    }
    const unsigned status = parser->get().result_int();
    if (ec || status < 100 || status >= 200) break;
    if (status == 101) return 0;           // refused: kBadResponse
    if (interim == kMaxInterim) return 0;  // refused: too many interim answers
  }
  if (ec) return 0;  // kBadResponse, kTooLarge or kReset

  const auto te = parser->get()[http::field::transfer_encoding];
  if (!te.empty() && !iequals(te, "chunked")) return 0;  // refused: unsupported coding

  require(parser->is_done(), "an answer taken before its end");
  // Beast reads any three digits; send() takes 000 to 099 as a final answer too.
  require(parser->get().result_int() < 100 || parser->get().result_int() >= 200,
          "an interim answer taken as the answer");
  const bool chunked = parser->chunked();
  const bool need_eof = parser->need_eof();
  require(chunked || parser->trailer_fields() == 0, "trailers without a chunked body");
  auto res = parser->release();
  // send() copies the fields after the body: a trailer must not have changed the head.
  require(unherd::fuzz::field_lines(res) == header_fields,
          "the head's fields changed while the body (and its trailer) was read");
  require(!head || res.body().empty(), "a body in an answer to HEAD");
  require(res.body().size() <= max_body, "a body over the limit");
  require(!need_eof || feed.used() == raw.size(), "bytes after an answer that ends at close");

  const auto& headers = header_fields;

  // What build_response() gathers for the policy (hop-by-hop fields aside).
  CachedResponse out;
  out.status = res.result_int();
  out.status_line =
      "HTTP/1.1 " + std::to_string(out.status) + " " + std::string(res.reason()) + "\r\n";
  std::string vary, cache_control;
  ResponseFacts facts;
  facts.status = out.status;
  for (const auto& [name, value] : headers) {
    if (iequals(name, "cache-control")) {
      cache_control += (cache_control.empty() ? "" : ",") + value;
    }
    if (iequals(name, "set-cookie")) facts.has_set_cookie = true;
    if (iequals(name, "vary")) vary += (vary.empty() ? "" : ",") + value;
    if (iequals(name, "etag")) out.etag = value;
    if (iequals(name, "last-modified")) out.last_modified = value;
    out.head += name + ": " + value + "\r\n";
  }
  facts.cache_control = cache_control;
  facts.vary = vary;
  out.vary = vary_headers(vary);
  out.body = res.body();
  const StorePolicy policy = response_policy(
      facts,
      RouteTtl{std::chrono::seconds(10), std::chrono::seconds(60), std::chrono::seconds(300)});
  if (!policy.store) return 0;
  require(policy.ttl.fresh.count() >= 0 && policy.ttl.stale_while_revalidate.count() >= 0 &&
              policy.ttl.stale_if_error.count() >= 0,
          "a negative TTL");
  // What is stored goes to the lower tiers in this form, and must come back whole.
  const auto bytes = encode_response(out);
  const auto back = decode_response(bytes);
  require(back.has_value(), "an upstream answer that does not decode once encoded");
  require((*back)->head == out.head && (*back)->body == out.body && (*back)->status == out.status &&
              (*back)->vary == out.vary,
          "an upstream answer that changes when encoded and decoded");
  return 0;
}
