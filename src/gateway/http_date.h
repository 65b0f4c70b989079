// HTTP-date (RFC 9110 §5.6.7): the timestamps of Date, Last-Modified, Expires, If-Modified-Since
// and If-Range, read and written.
//
// parse_http_date() accepts the three forms a recipient must: IMF-fixdate ("Sun, 06 Nov 1994
// 08:49:37 GMT") and the obsolete RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime
// ("Sun Nov  6 08:49:37 1994") forms, exactly as the grammar spells them (names are
// case-sensitive, no surrounding whitespace; the day name is not checked against the date).
// Anything else, or a calendar date that does not exist, is nullopt: a recipient ignores an invalid
// date. Dates beyond what the clock can hold (about 1678 to 2262) are clamped to its ends.
// format_http_date() writes IMF-fixdate, the only form a sender may generate. Pure functions,
// safe from any thread.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace unherd::gateway {

using HttpTime = std::chrono::system_clock::time_point;

// The time `text` names, or nullopt if it is not an HTTP-date. An RFC 850 date's two-digit year
// is the one that puts it no more than 50 years after `now` (RFC 9110 §5.6.7).
std::optional<HttpTime> parse_http_date(std::string_view text, HttpTime now);
std::optional<HttpTime> parse_http_date(std::string_view text);  // now: the system clock's

// `t`, to the second (rounded down), as IMF-fixdate.
std::string format_http_date(HttpTime t);

}  // namespace unherd::gateway
