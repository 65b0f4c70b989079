#include "gateway/response.h"

#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

CachedResponse sample() {
  CachedResponse r;
  r.status = 203;
  r.status_line = "HTTP/1.1 203 Non-Authoritative Information\r\n";
  r.head = "Content-Type: text/plain\r\nETag: \"v7\"\r\n";
  r.body = std::string("binary\0body", 11);
  r.cache_control = "max-age=60";
  r.etag = "\"v7\"";
  r.last_modified = "Tue, 24 Nov 2026 10:00:00 GMT";
  r.initial_age = std::chrono::seconds(12);
  r.vary = {"accept-language", "accept-encoding"};
  return r;
}

TEST(ResponseCodec, RoundTripsEveryField) {
  const CachedResponse in = sample();
  auto out = decode_response(encode_response(in));
  ASSERT_TRUE(out);
  const CachedResponse& r = **out;
  EXPECT_EQ(r.status, in.status);
  EXPECT_EQ(r.status_line, in.status_line);
  EXPECT_EQ(r.head, in.head);
  EXPECT_EQ(r.body, in.body);
  EXPECT_EQ(r.cache_control, in.cache_control);
  EXPECT_EQ(r.etag, in.etag);
  EXPECT_EQ(r.last_modified, in.last_modified);
  EXPECT_EQ(r.initial_age, in.initial_age);
  EXPECT_EQ(r.vary, in.vary);
  EXPECT_TRUE(r.shareable);
}

TEST(ResponseCodec, RefusesTruncatedPaddedOrForeignBytes) {
  const std::string bytes = encode_response(sample());
  for (std::size_t n = 0; n < bytes.size(); ++n)
    EXPECT_FALSE(decode_response(std::string_view(bytes).substr(0, n))) << n;
  EXPECT_FALSE(decode_response(bytes + "x"));
  std::string other_version = bytes;
  other_version[0] = 2;
  EXPECT_FALSE(decode_response(other_version));
}

}  // namespace
}  // namespace unherd::gateway
