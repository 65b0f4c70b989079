// HeadParser: Beast's message parser, except that nothing after a message's head can change it.
//
// A chunked body may end with trailer fields. Beast's own parser inserts them into the message's
// field container, beside the head's fields (next to the first field of the same name), where
// they pass for header fields: a trailer `Cache-Control: public` beside a head's `private`, a
// request trailer `X-Forwarded-User: admin` forwarded upstream as a header, and code that copied
// "the first N fields" losing the head's last lines instead. Here a trailer is parsed (the
// framing needs it), its bytes counted and bounded, and dropped: the fields a caller reads after
// the body are exactly the head's. Both sides of the gateway parse with it — client requests
// (http_connection.cc) and upstream answers (upstream.cc) — and the fuzz targets check the
// property on arbitrary input.
//
// Include it only where Beast's parser is compiled anyway: it is all of Beast's HTTP parser.
#pragma once

#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstddef>

namespace unherd::gateway {

template <bool isRequest, class Body, class Allocator = std::allocator<char>>
class HeadParser : public boost::beast::http::parser<isRequest, Body, Allocator> {
  using Base = boost::beast::http::parser<isRequest, Body, Allocator>;

 public:
  using Base::Base;

  // Trailer bytes at most (names and values), past which the message is refused as
  // header_limit: a trailer is never stored or forwarded, and must not grow without bound.
  void trailer_limit(std::size_t bytes) { trailer_limit_ = bytes; }
  // Trailer fields seen and dropped.
  std::size_t trailer_fields() const { return trailer_fields_; }

 private:
  void on_field_impl(boost::beast::http::field name, boost::beast::string_view name_string,
                     boost::beast::string_view value, boost::beast::error_code& ec) override {
    if (!this->is_header_done()) {
      this->get().insert(name, name_string, value);
      return;
    }
    ++trailer_fields_;
    trailer_bytes_ += name_string.size() + value.size();
    if (trailer_bytes_ > trailer_limit_) ec = boost::beast::http::error::header_limit;
  }

  std::size_t trailer_limit_ = 8192;
  std::size_t trailer_bytes_ = 0;
  std::size_t trailer_fields_ = 0;
};

}  // namespace unherd::gateway
