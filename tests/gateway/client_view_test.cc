// ClientView: conditional and range requests answered from a stored 200 (RFC 9110 §13, §14).
#include "gateway/client_view.h"

#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

using Form = ClientView::Form;

constexpr const char* kModified = "Sun, 06 Nov 1994 08:49:37 GMT";
constexpr const char* kBefore = "Sun, 06 Nov 1994 08:49:36 GMT";
constexpr const char* kAfter = "Mon, 07 Nov 1994 00:00:00 GMT";

CachedResponse stored(std::string etag = "\"v1\"", std::string last_modified = kModified,
                      std::string date = kAfter) {
  CachedResponse r;
  r.body = "0123456789";  // 10 bytes
  if (!date.empty()) r.head = "Date: " + date + "\r\n";
  r.etag = std::move(etag);
  r.last_modified = std::move(last_modified);
  return r;
}

ClientView view(const ClientFields& fields, const CachedResponse& r = stored()) {
  return client_view(fields, r);
}

ClientView range_of(std::string_view range, const CachedResponse& r = stored()) {
  return client_view({.range = range}, r);
}

void expect_part(const ClientView& v, std::uint64_t first, std::uint64_t length) {
  EXPECT_EQ(v.form, Form::kPartial);
  EXPECT_EQ(v.first, first);
  EXPECT_EQ(v.length, length);
}

TEST(ClientView, NoConditionsOrRangeIsTheWholeResponse) {
  EXPECT_EQ(view({}).form, Form::kFull);
}

// §13.1.2: If-None-Match is false, for GET and HEAD a 304, when a listed tag matches weakly.
TEST(ClientView, IfNoneMatchWithAMatchingTagIsNotModified) {
  EXPECT_EQ(view({.if_none_match = "\"v1\""}).form, Form::kNotModified);
  EXPECT_EQ(view({.get = false, .if_none_match = "\"v1\""}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_none_match = "\"a\", \"v1\""}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_none_match = "\"a\"\x1e\"v1\""}).form, Form::kNotModified);  // two lines
  EXPECT_EQ(view({.if_none_match = "\"v2\""}).form, Form::kFull);
  EXPECT_EQ(view({.if_none_match = "\"a\", \"b\""}).form, Form::kFull);
}

// §13.1.2 with §8.8.3.2: If-None-Match uses the weak comparison: W/ on either side still matches.
TEST(ClientView, IfNoneMatchComparesWeakly) {
  EXPECT_EQ(view({.if_none_match = "W/\"v1\""}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_none_match = "\"v1\""}, stored("W/\"v1\"")).form, Form::kNotModified);
}

// §13.1.2: "*" matches any current representation.
TEST(ClientView, IfNoneMatchStarIsNotModified) {
  EXPECT_EQ(view({.if_none_match = "*"}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_none_match = "*"}, stored("")).form, Form::kNotModified);
}

// §13.1.2: a stored answer without an ETag matches no listed tag; a malformed list none either.
TEST(ClientView, IfNoneMatchWithoutAStoredTagOrMalformedIsTheWhole) {
  EXPECT_EQ(view({.if_none_match = "\"v1\""}, stored("")).form, Form::kFull);
  EXPECT_EQ(view({.if_none_match = "v1"}).form, Form::kFull);
  EXPECT_EQ(view({.if_none_match = "\"v1\"x"}).form, Form::kFull);
  EXPECT_EQ(view({.if_none_match = "\"v1"}).form, Form::kFull);
}

// §13.1.3: not modified since the date (Last-Modified earlier or equal) is a 304.
TEST(ClientView, IfModifiedSinceNotLaterThanLastModifiedIsNotModified) {
  EXPECT_EQ(view({.if_modified_since = kModified}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_modified_since = kAfter}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_modified_since = kBefore}).form, Form::kFull);
  // §5.6.7: the obsolete forms are dates too.
  EXPECT_EQ(view({.if_modified_since = "Sunday, 06-Nov-94 08:49:37 GMT"}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_modified_since = "Sun Nov  6 08:49:37 1994"}).form, Form::kNotModified);
}

// §13.1.3: an invalid date, or more than one, is ignored; so is a date with no Last-Modified.
TEST(ClientView, IfModifiedSinceInvalidOrWithoutLastModifiedIsIgnored) {
  EXPECT_EQ(view({.if_modified_since = "yesterday"}).form, Form::kFull);
  EXPECT_EQ(view({.if_modified_since = std::string(kAfter) + "\x1e" + kAfter}).form, Form::kFull);
  EXPECT_EQ(view({.if_modified_since = kAfter}, stored("\"v1\"", "")).form, Form::kFull);
}

// §13.1.3, §13.2.2: If-Modified-Since is ignored when the request has If-None-Match.
TEST(ClientView, IfNoneMatchOverridesIfModifiedSince) {
  EXPECT_EQ(view({.if_none_match = "\"v2\"", .if_modified_since = kAfter}).form, Form::kFull);
  EXPECT_EQ(view({.if_none_match = "\"v1\"", .if_modified_since = kBefore}).form,
            Form::kNotModified);
}

// §14.1.1, §15.3.7: bytes=first-last is those bytes, last-pos clamped to the body.
TEST(ClientView, ByteRangeIsThoseBytes) {
  expect_part(range_of("bytes=2-5"), 2, 4);
  expect_part(range_of("bytes=0-0"), 0, 1);
  expect_part(range_of("bytes=5-100"), 5, 5);
  expect_part(range_of("bytes=5-99999999999999999999999"), 5, 5);
  expect_part(range_of("Bytes= 9-9 "), 9, 1);  // units are case-insensitive; OWS
}

// §14.1.1: bytes=first- is from there to the end.
TEST(ClientView, OpenByteRangeRunsToTheEnd) {
  expect_part(range_of("bytes=7-"), 7, 3);
  expect_part(range_of("bytes=0-"), 0, 10);
}

// §14.1.1: bytes=-n is the last n bytes, the whole body when it is shorter.
TEST(ClientView, SuffixRangeIsTheLastBytes) {
  expect_part(range_of("bytes=-3"), 7, 3);
  expect_part(range_of("bytes=-10"), 0, 10);
  expect_part(range_of("bytes=-500"), 0, 10);
}

// §14.1.1, §15.5.17: a first-pos at or past the end, or a zero suffix, cannot be satisfied.
TEST(ClientView, RangePastTheEndIsUnsatisfiable) {
  EXPECT_EQ(range_of("bytes=10-").form, Form::kUnsatisfiable);
  EXPECT_EQ(range_of("bytes=10-20").form, Form::kUnsatisfiable);
  EXPECT_EQ(range_of("bytes=99999999999999999999-").form, Form::kUnsatisfiable);
  EXPECT_EQ(range_of("bytes=-0").form, Form::kUnsatisfiable);
  CachedResponse empty = stored();
  empty.body.clear();
  EXPECT_EQ(range_of("bytes=0-", empty).form, Form::kUnsatisfiable);
}

// §14.2: a server may ignore Range: multiple ranges, other units, malformed specs.
TEST(ClientView, MultipleMalformedOrOtherUnitRangesAreIgnored) {
  for (const char* ignored : {"bytes=0-1,3-4",
                              "bytes=0-1\x1e"
                              "bytes=3-4",
                              "items=0-1", "bytes 0-1", "bytes=", "bytes=-", "bytes=a-b",
                              "bytes=5-2", "bytes=1-2-3", "bytes=+1-2", "bytes=0x1-2", "=0-1"}) {
    EXPECT_EQ(range_of(ignored).form, Form::kFull) << ignored;
  }
}

// §14.2: range handling is defined for GET only; a HEAD's Range is ignored.
TEST(ClientView, HeadIgnoresRange) {
  EXPECT_EQ(view({.get = false, .range = "bytes=0-1"}).form, Form::kFull);
}

// §13.1.5: If-Range with an entity-tag honours the range only on a strong match.
TEST(ClientView, IfRangeEntityTagMustMatchStrongly) {
  expect_part(view({.range = "bytes=0-1", .if_range = "\"v1\""}), 0, 2);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = "\"v2\""}).form, Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = "W/\"v1\""}).form, Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = "\"v1\""}, stored("W/\"v1\"")).form,
            Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = "\"v1\""}, stored("")).form, Form::kFull);
  // A failed If-Range sends the whole, even for a range that could not be satisfied.
  EXPECT_EQ(view({.range = "bytes=50-", .if_range = "\"v2\""}).form, Form::kFull);
}

// §13.1.5: If-Range with a date honours the range only if it equals Last-Modified exactly.
TEST(ClientView, IfRangeDateMustEqualLastModified) {
  expect_part(view({.range = "bytes=0-1", .if_range = kModified}), 0, 2);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = kAfter}).form, Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = kBefore}).form, Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = kModified}, stored("\"v1\"", "")).form,
            Form::kFull);
  EXPECT_EQ(view({.range = "bytes=0-1", .if_range = "garbage"}).form, Form::kFull);
}

// §13.1.5 with §8.8.2.2: a Last-Modified date is a strong validator only if the stored answer's
// Date is at least a second after it; a weak one never honours the range.
TEST(ClientView, IfRangeDateMustBeAStrongValidator) {
  for (const char* date : {kModified, kBefore, ""}) {
    EXPECT_EQ(
        view({.range = "bytes=0-1", .if_range = kModified}, stored("\"v1\"", kModified, date)).form,
        Form::kFull)
        << date;
  }
  expect_part(view({.range = "bytes=0-1", .if_range = kModified},
                   stored("\"v1\"", kModified, "Sun, 06 Nov 1994 08:49:38 GMT")),
              0, 2);
}

// §13.2.2: preconditions are evaluated before Range: a matching condition is a 304, not a 206.
TEST(ClientView, NotModifiedWinsOverRange) {
  EXPECT_EQ(view({.if_none_match = "\"v1\"", .range = "bytes=0-1"}).form, Form::kNotModified);
  EXPECT_EQ(view({.if_modified_since = kModified, .range = "bytes=0-1"}).form, Form::kNotModified);
  expect_part(view({.if_none_match = "\"v2\"", .range = "bytes=0-1"}), 0, 2);
}

}  // namespace
}  // namespace unherd::gateway
