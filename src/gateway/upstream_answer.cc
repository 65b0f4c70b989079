// What an upstream's answer means to the gateway (upstream_answer.h).
#include "gateway/upstream_answer.h"

#include <algorithm>
#include <charconv>
#include <cstdint>

#include "gateway/forwarding.h"
#include "gateway/http_date.h"
#include "gateway/text.h"

namespace unherd::gateway {

RetryVerdict classify_upstream(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const UpstreamStatusError& e) {
    const unsigned s = e.response->status;
    return {s == 502 || s == 503 || s == 504 || s == 429, e.retry_after};
  } catch (const UpstreamError& e) {
    using Kind = UpstreamError::Kind;
    return {e.kind == Kind::kConnect || e.kind == Kind::kReset || e.kind == Kind::kTimeout, {}};
  } catch (...) {
    return classify_default(error);
  }
}

std::optional<Duration> parse_retry_after(std::string_view v) {
  unsigned long secs = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return std::chrono::seconds(std::min(secs, 3600ul));
}

std::optional<Duration> retry_after_of(const UpstreamResponse& response) {
  std::optional<Duration> retry_after;
  for (const auto& [name, value] : response.headers) {
    if (iequals(name, "retry-after")) retry_after = parse_retry_after(value);
  }
  return retry_after;
}

namespace {

void append_line(std::string& head, std::string_view name, std::string_view value) {
  head += name;
  head += ": ";
  head += value;
  head += "\r\n";
}

void join(std::string& list, std::string_view value) {
  if (!list.empty()) list += ',';
  list += value;
}

// The name: value lines of a stored header block.
HeaderLines parse_head(std::string_view head) {
  HeaderLines lines;
  while (!head.empty()) {
    const auto eol = head.find("\r\n");
    const std::string_view line = head.substr(0, eol);
    head = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    lines.emplace_back(std::string(line.substr(0, colon)),
                       std::string(trim(line.substr(colon + 1))));
  }
  return lines;
}

std::string_view header_of(const UpstreamResponse& r, std::string_view name) {
  for (const auto& [n, v] : r.headers) {
    if (iequals(n, name)) return v;
  }
  return {};
}

// An entity-tag without its weakness indicator: what weak comparison compares.
std::string_view opaque_tag(std::string_view etag) {
  etag = trim(etag);
  if (etag.starts_with("W/")) etag.remove_prefix(2);
  return etag;
}

}  // namespace

BuiltResponse build_response(UpstreamResponse& r, const RouteTtl& rules, const AnswerTimes& times) {
  auto out = std::make_shared<CachedResponse>();
  out->status = r.status;
  out->status_line = "HTTP/1.1 " + std::to_string(r.status) + " " + r.reason + "\r\n";
  ResponseFacts facts;
  facts.status = r.status;
  facts.request_time = times.request;
  facts.response_time = times.response;
  std::string cache_control, vary, pragma;
  std::vector<std::string> targeted(rules.targeted.size());  // per configured field, its lines
  std::vector<bool> targeted_seen(rules.targeted.size());
  std::optional<std::string_view> expires, date;
  bool encoded = false;
  bool expires_conflict = false, age_seen = false;
  const std::string options = connection_options(r.headers);
  for (auto& [name, value] : r.headers) {
    if (iequals(name, "age")) {  // §5.1: the first value counts; the gateway sends its own
      if (!age_seen) facts.age = age_value(value);
      age_seen = true;
      continue;
    }
    if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec == std::errc() && end == value.data() + value.size()) out->declared_length = n;
    }
    if (hop_by_hop(name, options) || gateway_own(name)) continue;
    if (iequals(name, "cache-control")) join(cache_control, value);
    if (iequals(name, "pragma")) join(pragma, value);
    for (std::size_t i = 0; i < rules.targeted.size(); ++i) {
      if (!iequals(name, rules.targeted[i])) continue;
      join(targeted[i], value);
      targeted_seen[i] = true;
    }
    if (iequals(name, "set-cookie")) facts.has_set_cookie = true;
    if (iequals(name, "vary")) join(vary, value);
    if (iequals(name, "content-encoding") && !iequals(trim(value), "identity")) encoded = true;
    if (iequals(name, "etag") && out->etag.empty()) out->etag = value;
    if (iequals(name, "last-modified") && out->last_modified.empty()) out->last_modified = value;
    if (iequals(name, "date") && !date) date = value;
    if (iequals(name, "expires")) {
      if (expires && *expires != value) expires_conflict = true;  // §4.2.1: stale
      if (!expires) expires = value;
    }
    append_line(out->head, name, value);
  }
  if (!date) {
    // RFC 9110 §6.6.1: a recipient with a clock records when an answer without Date came, in
    // a Date it adds, before caching or forwarding it.
    append_line(out->head, "Date", format_http_date(times.response));
    facts.date = times.response;
  }
  facts.cache_control = cache_control;
  facts.pragma = pragma;
  for (std::size_t i = 0; i < targeted.size(); ++i) {
    if (targeted_seen[i]) facts.targeted.push_back({rules.targeted[i], targeted[i]});
  }
  // Accept-Encoding reaches the upstream unkeyed (a correct origin names it in Vary): a coded
  // body is taken to vary on it even where the origin forgot to say so, or a gzip answer would
  // be stored for clients that cannot read it.
  if (encoded) join(vary, "accept-encoding");
  facts.vary = vary;
  facts.has_validator = !out->etag.empty() || !out->last_modified.empty();
  if (date) facts.date = parse_http_date(*date, times.response);
  if (expires) {
    facts.has_expires = true;
    if (!expires_conflict) facts.expires = parse_http_date(*expires, times.response);
  }
  if (!out->last_modified.empty()) {
    facts.last_modified = parse_http_date(out->last_modified, times.response);
  }
  out->vary = vary_headers(vary);
  out->body = std::move(r.body);
  out->rest = std::move(r.rest);
  out->inflight = std::move(r.inflight);
  BuiltResponse b{nullptr, response_policy(facts, rules)};
  if (out->rest && b.policy.store) {  // too long to hold, so to store or share
    b.policy.store = false;
    b.policy.reason = NoCacheReason::kTooLarge;
  }
  out->initial_age = b.policy.initial_age;
  // An answer that may not be stored may not be reused for another request either (RFC 9111
  // §3, §4): coalesced waiters ask for their own. Error answers (5xx, 429, and the errors that
  // are heuristically cacheable: 404, 405, 410, 414) whose status alone keeps them out of the
  // cache are the exception: every waiter of a failing fetch gets its error at once, or an
  // outage (or a herd on a missing resource) would send the whole herd upstream one by one.
  const bool error =
      r.status >= 500 || r.status == 429 || (r.status >= 400 && cacheable_status(r.status));
  if (!b.policy.store && !(error && b.policy.reason == NoCacheReason::kStatus)) {
    out->shareable = false;
    out->not_shareable_reason = b.policy.reason;
  }
  if (r.status == 206) {  // one client's range of the resource, never another's answer
    out->shareable = false;
    out->not_shareable_reason = NoCacheReason::kPartial;
  }
  if (out->rest && out->shareable) {  // a stream, read once: its one client's
    out->shareable = false;
    out->not_shareable_reason = NoCacheReason::kTooLarge;
  }
  b.response = std::move(out);
  return b;
}

bool renews(const CachedResponse& previous, const UpstreamResponse& not_modified) {
  const std::string_view etag = header_of(not_modified, "etag");
  if (!etag.empty()) return opaque_tag(etag) == opaque_tag(previous.etag);
  const std::string_view last_modified = header_of(not_modified, "last-modified");
  if (!last_modified.empty() && !previous.last_modified.empty()) {
    return trim(last_modified) == trim(previous.last_modified);
  }
  return true;
}

std::optional<BuiltResponse> renew_response(const CachedResponse& previous,
                                            const UpstreamResponse& not_modified,
                                            const RouteTtl& rules, const AnswerTimes& times,
                                            std::size_t max_head_bytes) {
  // The stored fields, less those the 304 brings anew; then the 304's (its Age among them).
  // A 304 without Date is dated when it came: the stored Date would make it as old as the
  // stored answer (RFC 9110 §6.6.1).
  HeaderLines fields = not_modified.headers;
  const bool dated = std::any_of(fields.begin(), fields.end(), [](const auto& f) {
    return iequals(f.first, "date") && !trim(f.second).empty();
  });
  if (!dated) {
    std::erase_if(fields, [](const auto& f) { return iequals(f.first, "date"); });
    fields.emplace_back("Date", format_http_date(times.response));
  }
  const std::string options = connection_options(fields);
  // Fields a 304 never changes: those describing the stored body it does not carry, and the
  // validator it was matched by.
  auto kept = [&](std::string_view name) {
    for (std::string_view field :
         {"content-length", "content-encoding", "content-range", "content-md5", "etag"}) {
      if (iequals(name, field)) return true;
    }
    return hop_by_hop(name, options) || gateway_own(name);
  };
  auto updates = [&](std::string_view name) {
    for (const auto& [n, v] : fields) {
      if (iequals(n, name) && !kept(n)) return true;
    }
    return false;
  };
  UpstreamResponse merged;
  merged.status = previous.status;
  for (auto& line : parse_head(previous.head)) {
    if (!updates(line.first)) merged.headers.push_back(std::move(line));
  }
  for (const auto& [name, value] : fields) {
    if (!kept(name)) merged.headers.emplace_back(name, value);
  }
  std::size_t head_bytes = 0;
  for (const auto& [name, value] : merged.headers)
    head_bytes += name.size() + value.size() + 4;
  if (head_bytes > std::max(max_head_bytes, previous.head.size())) return std::nullopt;
  merged.body = previous.body;
  BuiltResponse b = build_response(merged, rules, times);
  b.response->status_line = previous.status_line;
  b.response->revalidated = true;
  return b;
}

BuiltResponse accept_response(UpstreamResponse& r, const RouteTtl& rules, const AnswerTimes& times,
                              const void* owner) {
  const std::optional<Duration> retry_after = retry_after_of(r);
  BuiltResponse built = build_response(r, rules, times);
  if (built.response->status >= 500 || built.response->status == 429) {
    throw UpstreamStatusError(built.response, retry_after, owner, built.policy);
  }
  return built;
}

}  // namespace unherd::gateway
