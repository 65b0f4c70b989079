// Fuzz target: the HTTP-date and Range parsers (http_date.h, client_view.h), and the view of a
// stored response they decide, on hostile field values.
//
// The input is newline-separated: an HTTP-date, a Range value, If-None-Match,
// If-Modified-Since, If-Range, the stored ETag, its Last-Modified, then the stored body. A date
// that parses must format back to the same second and parse again to it; a range must be
// well-ordered; a partial view must lie inside the body and be non-empty.
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/client_view.h"
#include "gateway/http_date.h"
#include "require.h"

namespace {

using unherd::fuzz::require;

// The next line of `in` (all of it if there is no newline), removed from `in`.
std::string_view next_line(std::string_view& in) {
  const auto nl = in.find('\n');
  const std::string_view line = in.substr(0, nl);
  in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
  return line;
}

std::optional<std::string_view> field(std::string_view line) {
  if (line.empty()) return std::nullopt;
  return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace unherd::gateway;
  using namespace std::chrono;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const HttpTime now = sys_days(2026y / January / 1);

  const std::string_view date = next_line(in);
  if (const auto t = parse_http_date(date, now)) {
    require(*t == floor<seconds>(*t), "a date finer than a second");
    const std::string text = format_http_date(*t);
    require(text.size() == 29, "IMF-fixdate is not 29 characters");
    require(parse_http_date(text, now) == *t, "a formatted date does not read back");
  }

  const std::string_view range = next_line(in);
  if (const auto r = parse_range(range)) {
    require(r->first || r->last, "a range with neither end");
    require(!r->first || !r->last || *r->first <= *r->last, "a range ending before it starts");
  }

  ClientFields fields;
  fields.range = field(range);
  fields.if_none_match = field(next_line(in));
  fields.if_modified_since = field(next_line(in));
  fields.if_range = field(next_line(in));
  CachedResponse stored;
  stored.etag = next_line(in);
  stored.last_modified = next_line(in);
  stored.body = in;
  const ClientView v = client_view(fields, stored);
  if (v.form == ClientView::Form::kPartial) {
    require(fields.get && fields.range, "a part nobody asked for");
    require(v.length > 0, "an empty part");
    require(v.first < stored.body.size() && v.length <= stored.body.size() - v.first,
            "a part outside the body");
  }
  if (v.form == ClientView::Form::kUnsatisfiable) require(fields.range.has_value(), "416 unasked");
  return 0;
}
