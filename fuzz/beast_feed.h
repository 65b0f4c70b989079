// BeastFeed: hands a fuzz input to a Beast parser the way http::read_header / http::read do on a
// socket that delivered those bytes and then closed.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace unherd::fuzz {

class BeastFeed {
 public:
  explicit BeastFeed(std::string_view bytes) : bytes_(bytes) {}

  // Puts bytes into `parser` until done(parser) holds or an error; at the end of the input the
  // parser is told the stream ended (put_eof), as read() does on end_of_stream.
  template <class Parser, class Done>
  boost::beast::error_code until(Parser& parser, Done done) {
    namespace http = boost::beast::http;
    boost::beast::error_code ec;
    while (!done(parser)) {
      const std::string_view rest = bytes_.substr(used_);
      if (rest.empty()) {
        if (!parser.got_some()) return http::error::end_of_stream;  // closed before a byte
        parser.put_eof(ec);
        if (!ec && !done(parser)) ec = http::error::partial_message;
        return ec;
      }
      const std::size_t n = parser.put(boost::asio::buffer(rest.data(), rest.size()), ec);
      used_ += n;
      if (ec == http::error::need_more || (!ec && n == 0)) {
        ec = {};
        if (n == 0) {  // more than has arrived is needed: the stream ends here
          if (!parser.got_some()) return http::error::end_of_stream;
          parser.put_eof(ec);
          if (!ec && !done(parser)) ec = http::error::partial_message;
          return ec;
        }
      } else if (ec) {
        return ec;
      }
    }
    return ec;
  }

  // Bytes the parser has taken so far.
  std::size_t used() const { return used_; }

 private:
  std::string_view bytes_;
  std::size_t used_ = 0;
};

// A message's fields, in order: what a property compares before and after a body.
template <class Fields>
std::vector<std::pair<std::string, std::string>> field_lines(const Fields& fields) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& f : fields)
    out.emplace_back(std::string(f.name_string()), std::string(f.value()));
  return out;
}

}  // namespace unherd::fuzz
