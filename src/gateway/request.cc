// Request, RequestHead and Reply (request.h).
#include "gateway/request.h"

#include "gateway/forwarding.h"
#include "gateway/text.h"

namespace unherd::gateway {

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

std::optional<std::string_view> RequestHead::header(std::string_view name) const {
  for (const auto& f : headers) {
    if (iequals(f.name, name)) return f.value;
  }
  return std::nullopt;
}

bool Request::header_values(std::string_view name, std::string& out) const {
  return append_values(
      headers, name, out, [](const auto& l) -> std::string_view { return l.first; },
      [](const auto& l) -> std::string_view { return l.second; });
}

bool RequestHead::header_values(std::string_view name, std::string& out) const {
  return append_values(
      headers, name, out, [](const auto& l) { return l.name; },
      [](const auto& l) { return l.value; });
}

Reply Reply::text(unsigned status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  if (!r.body.empty() && r.body.back() != '\n') r.body += '\n';
  return r;
}

unsigned Reply::sent_status() const {
  if (!cached) return status;
  switch (view.form) {
    case ClientView::Form::kNotModified:
      return 304;
    case ClientView::Form::kPartial:
      return 206;
    case ClientView::Form::kUnsatisfiable:
      return 416;
    case ClientView::Form::kFull:
      break;
  }
  return cached->status;
}

}  // namespace unherd::gateway
