// Invalidation after unsafe requests (RFC 9111 §4.4).
#include "gateway/invalidation.h"

#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

using Targets = std::vector<std::string>;

Targets after(std::string_view method, unsigned status, std::string_view head = "",
              std::optional<std::string_view> host = "shop.test") {
  return invalidated_targets(method, "/items?page=2", host, status, head);
}

// §4.4: a non-error answer to an unsafe method invalidates the target URI.
TEST(Invalidation, UnsafeMethodsWithA2xxOr3xxInvalidateTheTarget) {
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "FROB"}) {
    EXPECT_EQ(after(method, 200), Targets{"/items?page=2"}) << method;
  }
  EXPECT_EQ(after("POST", 204), Targets{"/items?page=2"});
  EXPECT_EQ(after("POST", 303), Targets{"/items?page=2"});
}

// §4.4: only unsafe methods invalidate (§9.2.1: GET, HEAD, OPTIONS, TRACE are safe).
TEST(Invalidation, SafeMethodsInvalidateNothing) {
  for (const char* method : {"GET", "HEAD", "OPTIONS", "TRACE"}) {
    EXPECT_TRUE(after(method, 200, "Location: /items/7\r\n").empty()) << method;
  }
}

// §4.4: "non-error status code" (2xx, 3xx): a failed request changed nothing to invalidate.
TEST(Invalidation, ErrorAnswersInvalidateNothing) {
  for (unsigned status : {100u, 400u, 404u, 409u, 500u, 503u}) {
    EXPECT_TRUE(after("DELETE", status, "Location: /items/7\r\n").empty()) << status;
  }
}

// §4.4: the Location and Content-Location URIs are invalidated too, relative ones resolved
// against the target URI.
TEST(Invalidation, LocationAndContentLocationOnTheSameHostAreInvalidated) {
  EXPECT_EQ(after("POST", 201, "Location: /items/7\r\n"), (Targets{"/items?page=2", "/items/7"}));
  EXPECT_EQ(after("POST", 201, "Location: items/7?x=1\r\n"),
            (Targets{"/items?page=2", "/items/7?x=1"}));
  EXPECT_EQ(after("PUT", 200, "Content-Location: http://SHOP.test/items/8\r\n"),
            (Targets{"/items?page=2", "/items/8"}));
  EXPECT_EQ(after("POST", 201, "Location: /a\r\nContent-Location: /b\r\n"),
            (Targets{"/items?page=2", "/a", "/b"}));
  EXPECT_EQ(after("POST", 201, "Location: /items?page=2\r\n"), Targets{"/items?page=2"});
}

// §4.4: a cache must not invalidate a URI whose host differs from the target URI's.
TEST(Invalidation, AnotherOriginsUrisAreNeverInvalidated) {
  for (const char* head :
       {"Location: http://other.test/items/7\r\n", "Location: //other.test/items/7\r\n",
        "Content-Location: http://shop.test:8080/items/7\r\n",
        "Location: https://shop.test/items/7\r\n",
        "Location: http://shop.test@other.test/items/7\r\n", "Location: not a uri\r\n",
        // The origin is scheme, host and port: the same host under another scheme is another.
        "Location: ftp://shop.test/items/7\r\n", "Location: https://shop.test:80/items/7\r\n",
        "Content-Location: ws://shop.test/items/7\r\n"}) {
    EXPECT_EQ(after("POST", 201, head), Targets{"/items?page=2"}) << head;
  }
  // Ports are compared with the default filled in.
  EXPECT_EQ(
      invalidated_targets("POST", "/a", "shop.test:80", 201, "Location: http://shop.test/b\r\n"),
      (Targets{"/a", "/b"}));
}

// §4.4: without a Host only references that name no host can be the same origin.
TEST(Invalidation, WithoutAHostOnlyHostlessReferencesAreInvalidated) {
  EXPECT_EQ(after("POST", 201, "Location: /items/7\r\n", std::nullopt),
            (Targets{"/items?page=2", "/items/7"}));
  EXPECT_EQ(after("POST", 201, "Location: http://shop.test/items/7\r\n", std::nullopt),
            Targets{"/items?page=2"});
}

}  // namespace
}  // namespace unherd::gateway
