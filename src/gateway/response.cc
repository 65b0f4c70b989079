// CachedResponse (response.h) and its versioned record codec for the lower tiers.
#include "gateway/response.h"

#include <cstdint>
#include <cstring>

namespace unherd::gateway {

// Layout: u8 version | u16 status | u32 initial age | u16 vary count
//         | then each string as u32 length + bytes: status_line, head, body, (a field once
//           used for Cache-Control, now written empty and skipped), etag, last_modified, and
//           the vary names.
namespace {

constexpr std::uint8_t kVersion = 1;

template <class T>
void put(std::string& out, T v) {
  char b[sizeof v];
  std::memcpy(b, &v, sizeof v);
  out.append(b, sizeof v);
}

void put_string(std::string& out, std::string_view s) {
  put(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <class T>
  bool get(T& v) {
    if (in_.size() < sizeof v) return false;
    std::memcpy(&v, in_.data(), sizeof v);
    in_.remove_prefix(sizeof v);
    return true;
  }
  bool get_string(std::string& s) {
    std::uint32_t n = 0;
    if (!get(n) || in_.size() < n) return false;
    s.assign(in_.substr(0, n));
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// What a string costs beyond its own size: nothing while it fits inside (the small-string
// buffer), else its heap block's capacity and the allocator's header.
std::size_t heap_of(const std::string& s) {
  return s.capacity() > 15 ? s.capacity() + 1 + 16 : 0;
}

}  // namespace

std::size_t CachedResponse::charge() const {
  // The fixed part: this object with its control block and the allocator's header, and the
  // cache's map node (key object, entry, cached hash, links) with its bucket and header.
  constexpr std::size_t kFixed = sizeof(CachedResponse) + 16 + 16 + 176 + 8;
  std::size_t n = kFixed + heap_of(status_line) + heap_of(head) + heap_of(body) + heap_of(etag) +
                  heap_of(last_modified);
  if (!vary.empty()) n += vary.capacity() * sizeof(std::string) + 16;
  for (const auto& v : vary)
    n += heap_of(v);
  return n;
}

std::string encode_response(const CachedResponse& r) {
  std::string out;
  out.reserve(64 + r.status_line.size() + r.head.size() + r.body.size() + r.etag.size() +
              r.last_modified.size());
  put(out, kVersion);
  put(out, static_cast<std::uint16_t>(r.status));
  put(out, static_cast<std::uint32_t>(r.initial_age.count()));
  put(out, static_cast<std::uint16_t>(r.vary.size()));
  for (std::string_view s :
       {std::string_view(r.status_line), std::string_view(r.head), std::string_view(r.body),
        std::string_view(), std::string_view(r.etag), std::string_view(r.last_modified)}) {
    put_string(out, s);
  }
  for (const auto& v : r.vary)
    put_string(out, v);
  return out;
}

std::optional<ResponsePtr> decode_response(std::string_view bytes) {
  Reader in(bytes);
  std::uint8_t version = 0;
  std::uint16_t status = 0, vary = 0;
  std::uint32_t age = 0;
  if (!in.get(version) || version != kVersion || !in.get(status) || !in.get(age) || !in.get(vary)) {
    return std::nullopt;
  }
  auto r = std::make_shared<CachedResponse>();
  r->status = status;
  r->initial_age = std::chrono::seconds(age);
  std::string unused;  // the Cache-Control field of older records: the head has it too
  for (std::string* s :
       {&r->status_line, &r->head, &r->body, &unused, &r->etag, &r->last_modified}) {
    if (!in.get_string(*s)) return std::nullopt;
  }
  r->vary.resize(vary);
  for (auto& v : r->vary) {
    if (!in.get_string(v)) return std::nullopt;
  }
  if (!in.done() || status < 100 || status > 999) return std::nullopt;
  return r;
}

}  // namespace unherd::gateway
