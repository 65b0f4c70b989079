// HTTP-date (RFC 9110 §5.6.7): the three forms a recipient accepts, and what it refuses.
#include "gateway/http_date.h"

#include <gtest/gtest.h>

namespace unherd::gateway {
namespace {

using namespace std::chrono;

// 1994-11-06 08:49:37 UTC, the RFC's own example.
const HttpTime kExample = sys_days(1994y / November / 6) + 8h + 49min + 37s;
const HttpTime kNow = sys_days(2026y / January / 1);

// §5.6.7: IMF-fixdate is the preferred form.
TEST(HttpDate, ReadsImfFixdate) {
  EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", kNow), kExample);
}

// §5.6.7: a recipient accepts the obsolete RFC 850 form.
TEST(HttpDate, ReadsRfc850Form) {
  EXPECT_EQ(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", kNow), kExample);
}

// §5.6.7: an RFC 850 year more than 50 years in the future is the most recent past one with
// the same last two digits.
TEST(HttpDate, Rfc850TwoDigitYearsAreNoMoreThanFiftyYearsAhead) {
  EXPECT_EQ(parse_http_date("Thursday, 01-Jan-76 00:00:00 GMT", kNow),
            sys_days(2076y / January / 1));
  EXPECT_EQ(parse_http_date("Friday, 01-Jan-77 00:00:00 GMT", kNow), sys_days(1977y / January / 1));
}

// §5.6.7: and the obsolete asctime form, whose day of the month is space-padded.
TEST(HttpDate, ReadsAsctimeForm) {
  EXPECT_EQ(parse_http_date("Sun Nov  6 08:49:37 1994", kNow), kExample);
  EXPECT_EQ(parse_http_date("Sun Nov 06 08:49:37 1994", kNow), kExample);
}

// §5.6.7: the names are case-sensitive, the widths fixed; a recipient ignores an invalid date.
TEST(HttpDate, RefusesWhatTheGrammarDoesNot) {
  for (const char* bad : {
           "",
           "Sun, 06 Nov 1994 08:49:37 UTC",
           "sun, 06 Nov 1994 08:49:37 GMT",
           "Sun, 06 nov 1994 08:49:37 GMT",
           "Sun, 6 Nov 1994 08:49:37 GMT",
           "Sun, 06 Nov 94 08:49:37 GMT",
           " Sun, 06 Nov 1994 08:49:37 GMT",
           "Sun, 06 Nov 1994 08:49:37 GMT ",
           "Sun, 06 Nov 1994 08:49 GMT",
           "Sun, 06 Nov 1994 24:00:00 GMT",
           "Sun, 06 Nov 1994 08:60:00 GMT",
           "Sun, 31 Nov 1994 08:49:37 GMT",
           "Sun, 29 Feb 1900 08:49:37 GMT",
           "Sun, +6 Nov 1994 08:49:37 GMT",
           "Sun Nov   6 08:49:37 1994",
           "Sun, 06-Nov-94 08:49:37 GMT",
           "Sunday, 06 Nov 1994 08:49:37 GMT",
           "1994-11-06T08:49:37Z",
           "784111777",
       }) {
    EXPECT_EQ(parse_http_date(bad, kNow), std::nullopt) << '"' << bad << '"';
  }
}

// §5.6.7: a leap day exists in leap years, and a leap second in the grammar.
TEST(HttpDate, ReadsLeapDaysAndLeapSeconds) {
  EXPECT_EQ(parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT", kNow), sys_days(2000y / 2 / 29));
  EXPECT_EQ(parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT", kNow), sys_days(2017y / 1 / 1));
}

// §5.6.7 allows years 0000 to 9999; the clock holds less: far dates are its ends, not errors.
TEST(HttpDate, ClampsDatesBeyondTheClocksRange) {
  const auto latest = parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT", kNow);
  ASSERT_TRUE(latest);
  EXPECT_GT(*latest, sys_days(2262y / 1 / 1));
  EXPECT_EQ(parse_http_date(format_http_date(*latest), kNow), latest);
  const auto earliest = parse_http_date("Mon, 01 Jan 0001 00:00:00 GMT", kNow);
  ASSERT_TRUE(earliest);
  EXPECT_LT(*earliest, sys_days(1678y / 1 / 1));
  EXPECT_EQ(parse_http_date(format_http_date(*earliest), kNow), earliest);
}

// §5.6.7: a sender generates IMF-fixdate, in GMT, with the right day name.
TEST(HttpDate, WritesImfFixdateThatReadsBack) {
  EXPECT_EQ(format_http_date(kExample), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(format_http_date(kExample + 999ms), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(format_http_date(sys_days(2000y / 2 / 29)), "Tue, 29 Feb 2000 00:00:00 GMT");
  const HttpTime t = sys_days(2031y / 7 / 4) + 23h + 5min + 9s;
  EXPECT_EQ(parse_http_date(format_http_date(t), kNow), t);
}

}  // namespace
}  // namespace unherd::gateway
