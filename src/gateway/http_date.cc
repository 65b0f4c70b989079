// HTTP-date parsing and formatting (http_date.h).
#include "gateway/http_date.h"

#include <algorithm>
#include <array>
#include <cstdio>

namespace unherd::gateway {

namespace {

using namespace std::chrono;

constexpr std::array<std::string_view, 7> kDays = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr std::array<std::string_view, 7> kLongDays = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                                       "Thursday", "Friday", "Saturday"};
constexpr std::array<std::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

// Reads `text` from the front, in the grammar's fixed-width pieces; any mismatch fails it.
class Reader {
 public:
  explicit Reader(std::string_view text) : rest_(text) {}
  bool done() const { return rest_.empty(); }
  bool literal(std::string_view s) {
    if (rest_.substr(0, s.size()) != s) return false;
    rest_.remove_prefix(s.size());
    return true;
  }
  // Exactly `width` digits; a leading space stands for a zero when `space_padded`.
  bool digits(int width, int& out, bool space_padded = false) {
    if (rest_.size() < static_cast<std::size_t>(width)) return false;
    out = 0;
    for (int i = 0; i < width; ++i) {
      const char c = rest_[static_cast<std::size_t>(i)];
      if (space_padded && i == 0 && c == ' ') continue;
      if (c < '0' || c > '9') return false;
      out = out * 10 + (c - '0');
    }
    rest_.remove_prefix(static_cast<std::size_t>(width));
    return true;
  }
  // One of `names`; its index in `index`.
  template <std::size_t N>
  bool one_of(const std::array<std::string_view, N>& names, int& index) {
    for (std::size_t i = 0; i < N; ++i) {
      if (literal(names[i])) {
        index = static_cast<int>(i);
        return true;
      }
    }
    return false;
  }
  // time-of-day = hour ":" minute ":" second
  bool time_of_day(int& h, int& m, int& s) {
    return digits(2, h) && literal(":") && digits(2, m) && literal(":") && digits(2, s);
  }

 private:
  std::string_view rest_;
};

std::optional<HttpTime> make_time(int y, int month_index, int d, int h, int m, int s) {
  // second allows 60 (a leap second); the grammar's two digits allow more than the clock has.
  if (h > 23 || m > 59 || s > 60) return std::nullopt;
  const year_month_day date{year(y), month(static_cast<unsigned>(month_index + 1)),
                            day(static_cast<unsigned>(d))};
  if (!date.ok()) return std::nullopt;
  // In seconds any four-digit year fits; the clock's own ticks (nanoseconds) reach only about
  // 1678 to 2262, so dates beyond are clamped to its ends (a far-off Expires stays far off).
  const sys_seconds t = sys_days(date) + hours(h) + minutes(m) + seconds(s);
  static const sys_seconds latest = floor<seconds>(HttpTime::max());
  static const sys_seconds earliest = ceil<seconds>(HttpTime::min());
  return HttpTime(std::clamp(t, earliest, latest));
}

// IMF-fixdate = day-name "," SP day SP month SP year SP time-of-day SP "GMT"
std::optional<HttpTime> imf_fixdate(std::string_view text) {
  Reader r(text);
  int wd, d, mo, y, h, m, s;
  if (r.one_of(kDays, wd) && r.literal(", ") && r.digits(2, d) && r.literal(" ") &&
      r.one_of(kMonths, mo) && r.literal(" ") && r.digits(4, y) && r.literal(" ") &&
      r.time_of_day(h, m, s) && r.literal(" GMT") && r.done()) {
    return make_time(y, mo, d, h, m, s);
  }
  return std::nullopt;
}

// rfc850-date = day-name-l "," SP day "-" month "-" 2DIGIT SP time-of-day SP "GMT"
std::optional<HttpTime> rfc850_date(std::string_view text, HttpTime now) {
  Reader r(text);
  int wd, d, mo, yy, h, m, s;
  if (!(r.one_of(kLongDays, wd) && r.literal(", ") && r.digits(2, d) && r.literal("-") &&
        r.one_of(kMonths, mo) && r.literal("-") && r.digits(2, yy) && r.literal(" ") &&
        r.time_of_day(h, m, s) && r.literal(" GMT") && r.done())) {
    return std::nullopt;
  }
  // The most recent year with these last two digits that is at most 50 years ahead of now.
  const int this_year = static_cast<int>(year_month_day(floor<days>(now)).year());
  int y = this_year - this_year % 100 + yy;
  if (y > this_year + 50) y -= 100;
  return make_time(y, mo, d, h, m, s);
}

// asctime-date = day-name SP month SP ( 2DIGIT / ( SP DIGIT )) SP time-of-day SP year
std::optional<HttpTime> asctime_date(std::string_view text) {
  Reader r(text);
  int wd, d, mo, y, h, m, s;
  if (r.one_of(kDays, wd) && r.literal(" ") && r.one_of(kMonths, mo) && r.literal(" ") &&
      r.digits(2, d, true) && r.literal(" ") && r.time_of_day(h, m, s) && r.literal(" ") &&
      r.digits(4, y) && r.done()) {
    return make_time(y, mo, d, h, m, s);
  }
  return std::nullopt;
}

}  // namespace

std::optional<HttpTime> parse_http_date(std::string_view text, HttpTime now) {
  // The forms differ by their fourth character: ',' (IMF), ' ' (asctime), a letter (RFC 850).
  if (text.size() < 4) return std::nullopt;
  if (text[3] == ',') return imf_fixdate(text);
  if (text[3] == ' ') return asctime_date(text);
  return rfc850_date(text, now);
}

std::optional<HttpTime> parse_http_date(std::string_view text) {
  return parse_http_date(text, system_clock::now());
}

std::string format_http_date(HttpTime t) {
  // In seconds: the clock's earliest day starts before the earliest time its ticks can hold.
  const sys_seconds secs = floor<seconds>(t);
  const sys_days day_start = floor<days>(secs);
  const year_month_day date(day_start);
  const hh_mm_ss<seconds> time(secs - day_start);
  char out[32];
  std::snprintf(out, sizeof out, "%s, %02u %s %04d %02d:%02d:%02d GMT",
                kDays[weekday(day_start).c_encoding()].data(), static_cast<unsigned>(date.day()),
                kMonths[static_cast<unsigned>(date.month()) - 1].data(),
                static_cast<int>(date.year()), static_cast<int>(time.hours().count()),
                static_cast<int>(time.minutes().count()), static_cast<int>(time.seconds().count()));
  return out;
}

}  // namespace unherd::gateway
