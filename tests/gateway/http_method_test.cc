#include "gateway/http_method.h"

#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

// RFC 9110 §9.2.2, one line per method.
TEST(HttpMethod, IdempotentMethodsAreThoseOfRfc9110) {
  for (const char* m : {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
    EXPECT_TRUE(idempotent_method(m)) << m;
  for (const char* m : {"POST", "PATCH", "CONNECT", "get", "Put", "", "PROPFIND"})
    EXPECT_FALSE(idempotent_method(m)) << m;
}

}  // namespace
}  // namespace unherd::gateway
