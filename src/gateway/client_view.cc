// Conditional and range requests answered from a stored response (client_view.h).
#include "gateway/client_view.h"

#include <limits>

#include "gateway/cache_key.h"
#include "gateway/stored_head.h"
#include "gateway/text.h"

namespace unherd::gateway {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t';
}

// A run of digits as a number, saturating at 2^64-1; nullopt if `s` is empty or not all digits.
std::optional<std::uint64_t> number(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::uint64_t n = 0;
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    n = n > (kMax - digit) / 10 ? kMax : n * 10 + digit;
  }
  return n;
}

// entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, read from the front of `s`.
struct EntityTag {
  bool weak = false;
  std::string_view opaque;  // with its quotes
};
std::optional<EntityTag> read_entity_tag(std::string_view& s) {
  EntityTag tag;
  if (s.substr(0, 2) == "W/") {
    tag.weak = true;
    s.remove_prefix(2);
  }
  if (s.empty() || s.front() != '"') return std::nullopt;
  const auto close = s.find('"', 1);
  if (close == std::string_view::npos) return std::nullopt;
  for (char c : s.substr(1, close - 1)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u == 0x7f) return std::nullopt;  // etagc: no controls, spaces or DEL
  }
  tag.opaque = s.substr(0, close + 1);
  s.remove_prefix(close + 1);
  return tag;
}

// A whole field value that is one entity-tag, or nullopt.
std::optional<EntityTag> entity_tag(std::string_view value) {
  value = trim(value);
  auto tag = read_entity_tag(value);
  if (!tag || !value.empty()) return std::nullopt;
  return tag;
}

// An HTTP-date field value: one line, one date (§13.1.3: a list of them is ignored).
std::optional<HttpTime> date_field(std::string_view value, HttpTime now) {
  return parse_http_date(trim(value), now);
}

}  // namespace

std::optional<ByteRange> parse_range(std::string_view value) {
  // ranges-specifier = range-unit "=" range-set; range units are case-insensitive (§14.1).
  const auto equals = value.find('=');
  if (equals == std::string_view::npos || !iequals(value.substr(0, equals), "bytes")) {
    return std::nullopt;
  }
  std::string_view spec = value.substr(equals + 1);
  // range-set = 1#range-spec: empty list elements and OWS around them are allowed, but a
  // second range-spec makes it a multiple-range request.
  while (!spec.empty() && (is_space(spec.front()) || spec.front() == ','))
    spec.remove_prefix(1);
  while (!spec.empty() && (is_space(spec.back()) || spec.back() == ','))
    spec.remove_suffix(1);
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  ByteRange range;
  const std::string_view before = spec.substr(0, dash), after = spec.substr(dash + 1);
  if (before.empty()) {  // suffix-range = "-" suffix-length
    range.last = number(after);
    if (!range.last) return std::nullopt;
    return range;
  }
  range.first = number(before);
  if (!range.first) return std::nullopt;
  if (!after.empty()) {
    range.last = number(after);
    // An int-range whose last-pos is less than its first-pos is invalid (§14.1.1).
    if (!range.last || *range.last < *range.first) return std::nullopt;
  }
  return range;
}

bool none_match_fails(std::string_view if_none_match, std::string_view etag) {
  std::string_view list = trim(if_none_match);
  if (list == "*") return true;
  const auto stored = entity_tag(etag);
  bool matched = false;
  // #entity-tag, its lines joined by kLineSeparator.
  for (;;) {
    while (!list.empty() &&
           (is_space(list.front()) || list.front() == ',' || list.front() == kLineSeparator)) {
      list.remove_prefix(1);
    }
    if (list.empty()) return matched;
    const auto tag = read_entity_tag(list);
    if (!tag) return false;
    // Weak comparison (§8.8.3.2): the opaque tags match, whether either is weak or not.
    if (stored && tag->opaque == stored->opaque) matched = true;
    if (!list.empty() && !is_space(list.front()) && list.front() != ',' &&
        list.front() != kLineSeparator) {
      return false;
    }
  }
}

ClientView client_view(const ClientFields& fields, const CachedResponse& stored) {
  using Form = ClientView::Form;
  const HttpTime now = std::chrono::system_clock::now();
  // §13.2.2 step 3: If-None-Match; step 4: If-Modified-Since only without it (§13.1.3).
  if (fields.if_none_match) {
    if (none_match_fails(*fields.if_none_match, stored.etag)) return {Form::kNotModified};
  } else if (fields.if_modified_since && !stored.last_modified.empty()) {
    const auto since = date_field(*fields.if_modified_since, now);
    const auto modified = date_field(stored.last_modified, now);
    if (since && modified && *modified <= *since) return {Form::kNotModified};
  }
  // §14.2: range handling is defined for GET only; §13.2.2 step 5: If-Range decides whether
  // the range is honoured.
  if (!fields.get || !fields.range) return {};
  const auto range = parse_range(*fields.range);
  if (!range) return {};
  if (fields.if_range) {
    // §13.1.5: an entity-tag must match strongly; a date must equal Last-Modified exactly...
    if (const auto tag = entity_tag(*fields.if_range)) {
      const auto current = entity_tag(stored.etag);
      if (tag->weak || !current || current->weak || current->opaque != tag->opaque) return {};
    } else {
      // ...and only a strong one (§8.8.2.2): the stored answer's Date is at least a second after
      // its Last-Modified, so it cannot have changed again within that second.
      const auto date = date_field(*fields.if_range, now);
      const auto modified = date_field(stored.last_modified, now);
      const auto stored_date = first_field(stored.head, "date");
      const auto sent = stored_date ? date_field(*stored_date, now) : std::nullopt;
      if (!date || !modified || *date != *modified || !sent ||
          *sent - *modified < std::chrono::seconds(1)) {
        return {};
      }
    }
  }
  const std::uint64_t total = stored.body.size();
  if (!range->first) {
    // suffix-range: the last n bytes, all of them if the body is shorter (§14.1.1). A zero
    // length is unsatisfiable; an empty body has no bytes to send in a 206: it is sent whole.
    if (*range->last == 0) return {Form::kUnsatisfiable};
    if (total == 0) return {};
    const std::uint64_t n = std::min(*range->last, total);
    return {Form::kPartial, total - n, n};
  }
  // int-range: satisfiable when first-pos is within the body (§14.1.1); last-pos is clamped.
  if (*range->first >= total) return {Form::kUnsatisfiable};
  const std::uint64_t last = std::min(range->last.value_or(total - 1), total - 1);
  return {Form::kPartial, *range->first, last - *range->first + 1};
}

}  // namespace unherd::gateway
