// RequestFraming: which parsed request heads the gateway refuses to forward (RFC 9112 §6, §3.2).
//
// Beast's parser accepts some heads whose body length another server along the way could read
// differently: a Transfer-Encoding whose final coding is not chunked (Beast then reads no body,
// so the body would be parsed as the next request: request smuggling), unknown or repeated
// codings, a Transfer-Encoding on HTTP/1.0, HTTP/1.1 without exactly one Host, and versions
// other than 1.0 and 1.1. The gateway
// answers each with a 4xx (501 for a coding it does not implement) and closes the connection.
// It refuses obs-fold too, found in the raw head before Beast unfolds it (has_obs_fold), and
// takes an absolute-form target as its origin form (origin_form).
// Header-only; no I/O.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/url/parse.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "gateway/text.h"

namespace unherd::gateway {

struct FramingRefusal {
  unsigned status;
  std::string_view reason;
};

// The last coding of a Transfer-Encoding value ("gzip, chunked" -> "chunked"), trimmed; "" for
// an empty last element.
inline std::string_view last_coding(std::string_view value) {
  const auto comma = value.rfind(',');
  return trim(comma == std::string_view::npos ? value : value.substr(comma + 1));
}

// How many elements of a Transfer-Encoding value are "chunked".
inline int count_chunked(std::string_view value) {
  int n = 0;
  while (!value.empty()) {
    const auto comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), "chunked")) ++n;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return n;
}

// `parser_chunked`: whether the parser took the body as chunked. Returns the refusal, or nullopt
// when the head may be forwarded.
template <class Fields>
std::optional<FramingRefusal> refuse_framing(const boost::beast::http::header<true, Fields>& head,
                                             bool parser_chunked) {
  namespace http = boost::beast::http;
  if (head.version() != 10 && head.version() != 11) {
    return FramingRefusal{505, "only HTTP/1.0 and HTTP/1.1 are spoken here"};
  }
  const std::size_t codings = head.count(http::field::transfer_encoding);
  if (codings > 0) {
    if (head.count(http::field::content_length) > 0) {
      return FramingRefusal{400, "Content-Length with Transfer-Encoding is refused"};
    }
    if (head.version() < 11) {
      return FramingRefusal{400, "Transfer-Encoding in an HTTP/1.0 request is refused"};
    }
    const std::string_view value = head[http::field::transfer_encoding];
    // A folded line reaches us unfolded with a space where the fold was: refused, as is any
    // value whose final coding is not chunked or that names chunked more than once.
    if (codings > 1 || !iequals(last_coding(value), "chunked") || value != trim(value) ||
        count_chunked(value) != 1) {
      return FramingRefusal{400, "the final transfer coding must be chunked, once"};
    }
    if (!iequals(value, "chunked")) {
      return FramingRefusal{501, "transfer codings other than chunked are not implemented"};
    }
    // The parser must agree that the body is chunked, or the two would frame it differently.
    if (!parser_chunked) return FramingRefusal{400, "malformed Transfer-Encoding"};
  }
  const std::size_t hosts = head.count(http::field::host);
  if (hosts > 1 || (hosts == 0 && head.version() >= 11)) {
    return FramingRefusal{400, "an HTTP/1.1 request needs exactly one Host"};
  }
  return std::nullopt;
}

// Whether a request head (up to and including its last field's CRLF) continues a line on the
// next: a CRLF followed by a space or tab.
inline bool has_obs_fold(std::string_view head) {
  for (auto at = head.find("\r\n"); at != std::string_view::npos && at + 2 < head.size();
       at = head.find("\r\n", at + 2)) {
    if (head[at + 2] == ' ' || head[at + 2] == '\t') return true;
  }
  return false;
}

// A target in absolute form ("http://host/p?q", which a server must accept, RFC 9112 §3.2.2)
// as the origin form ("/p?q") that routes and keys are made of; other targets as they are.
inline std::string_view origin_form(std::string_view target, std::string& buffer) {
  if (target.starts_with('/')) return target;
  auto uri = boost::urls::parse_absolute_uri(target);
  if (!uri || (uri->scheme() != "http" && uri->scheme() != "https")) return target;
  // Boost.URL 1.81 takes "http://a:1q/" as port "1q" and path "q/": only an authority with a
  // port of digits and a path that is empty or absolute make an origin form.
  const std::string_view port = uri->port();
  const std::string_view path = uri->encoded_path();
  if (!uri->has_authority() || (!path.empty() && path.front() != '/') ||
      port.find_first_not_of("0123456789") != std::string_view::npos) {
    return target;  // not made origin-form: no route matches it, and it is refused
  }
  buffer.assign(uri->encoded_path().empty() ? "/" : std::string_view(uri->encoded_path()));
  if (uri->has_query()) {
    buffer += '?';
    buffer += uri->encoded_query();
  }
  return buffer;
}

}  // namespace unherd::gateway
