// Structured Field Dictionary parsing (structured_field.h), after RFC 8941 §4.2.
#include "gateway/structured_field.h"

#include <algorithm>

#include "gateway/text.h"

namespace unherd::gateway {
namespace {

bool lcalpha(char c) {
  return c >= 'a' && c <= 'z';
}
bool alpha(char c) {
  return lcalpha(c) || (c >= 'A' && c <= 'Z');
}
bool digit(char c) {
  return c >= '0' && c <= '9';
}

bool base64(char c) {
  return alpha(c) || digit(c) || c == '+' || c == '/' || c == '=';
}

class Parser {
 public:
  explicit Parser(std::string_view in) : in_(in) {}

  std::optional<SfDictionary> dictionary() {
    skip_sp();
    SfDictionary out;
    while (!in_.empty()) {
      std::optional<std::string> key = this->key();
      if (!key) return std::nullopt;
      SfItem value;
      if (take('=')) {
        if (!member_value(value)) return std::nullopt;
      } else if (!parameters()) {  // a bare key is Boolean true
        return std::nullopt;
      }
      auto same =
          std::find_if(out.begin(), out.end(), [&](const auto& m) { return m.first == *key; });
      if (same != out.end()) {
        same->second = std::move(value);
      } else {
        out.emplace_back(std::move(*key), std::move(value));
      }
      skip_ows();
      if (in_.empty()) break;
      if (!take(',')) return std::nullopt;
      skip_ows();
      if (in_.empty()) return std::nullopt;  // a trailing comma
    }
    return out;
  }

 private:
  bool take(char c) {
    if (in_.empty() || in_.front() != c) return false;
    in_.remove_prefix(1);
    return true;
  }
  void skip_sp() {
    while (!in_.empty() && in_.front() == ' ')
      in_.remove_prefix(1);
  }
  void skip_ows() {
    while (!in_.empty() && (in_.front() == ' ' || in_.front() == '\t'))
      in_.remove_prefix(1);
  }

  std::optional<std::string> key() {
    if (in_.empty() || !(lcalpha(in_.front()) || in_.front() == '*')) return std::nullopt;
    std::size_t n = 1;
    while (n < in_.size()) {
      const char c = in_[n];
      if (!(lcalpha(c) || digit(c) || c == '_' || c == '-' || c == '.' || c == '*')) break;
      ++n;
    }
    std::string k(in_.substr(0, n));
    in_.remove_prefix(n);
    return k;
  }

  bool member_value(SfItem& out) {
    if (!in_.empty() && in_.front() == '(') return inner_list(out);
    return bare_item(out) && parameters();
  }

  bool inner_list(SfItem& out) {
    in_.remove_prefix(1);  // '('
    out = SfItem{SfItem::Type::kInnerList};
    for (;;) {
      skip_sp();
      if (take(')')) return parameters();
      SfItem item;
      if (!bare_item(item) || !parameters()) return false;
      if (in_.empty() || (in_.front() != ' ' && in_.front() != ')')) return false;
    }
  }

  bool parameters() {
    while (take(';')) {
      skip_sp();
      if (!key()) return false;
      SfItem ignored;
      if (take('=') && !bare_item(ignored)) return false;
    }
    return true;
  }

  bool bare_item(SfItem& out) {
    if (in_.empty()) return false;
    const char c = in_.front();
    if (c == '-' || digit(c)) return number(out);
    if (c == '"') return string(out);
    if (c == '*' || alpha(c)) return token(out);
    if (c == ':') return binary(out);
    if (c == '?') return boolean(out);
    return false;
  }

  // §4.2.4: at most 15 digits for an Integer; 12 before and 1 to 3 after the point for a Decimal.
  bool number(SfItem& out) {
    const bool negative = take('-');
    std::size_t n = 0, point = std::string_view::npos;
    while (n < in_.size() &&
           (digit(in_[n]) || (in_[n] == '.' && point == std::string_view::npos))) {
      if (in_[n] == '.') {
        if (n > 12) return false;
        point = n;
      }
      ++n;
      if (point == std::string_view::npos ? n > 15 : n > 16) return false;
    }
    if (n == 0 || !digit(in_.front())) return false;
    if (point != std::string_view::npos) {
      const std::size_t fraction = n - point - 1;
      if (fraction < 1 || fraction > 3) return false;
      out = SfItem{SfItem::Type::kDecimal};
    } else {
      std::int64_t v = 0;
      for (std::size_t i = 0; i < n; ++i)
        v = v * 10 + (in_[i] - '0');
      out = SfItem{SfItem::Type::kInteger, negative ? -v : v};
    }
    in_.remove_prefix(n);
    return true;
  }

  bool string(SfItem& out) {
    in_.remove_prefix(1);  // '"'
    out = SfItem{SfItem::Type::kString};
    while (!in_.empty()) {
      const char c = in_.front();
      in_.remove_prefix(1);
      if (c == '"') return true;
      if (c == '\\') {
        if (in_.empty() || (in_.front() != '"' && in_.front() != '\\')) return false;
        out.text += in_.front();
        in_.remove_prefix(1);
      } else if (c < 0x20 || c > 0x7e) {
        return false;
      } else {
        out.text += c;
      }
    }
    return false;  // no closing quote
  }

  bool token(SfItem& out) {
    std::size_t n = 1;
    while (n < in_.size() && (is_tchar(in_[n]) || in_[n] == ':' || in_[n] == '/'))
      ++n;
    out = SfItem{SfItem::Type::kToken};
    out.text = std::string(in_.substr(0, n));
    in_.remove_prefix(n);
    return true;
  }

  bool binary(SfItem& out) {
    in_.remove_prefix(1);  // ':'
    std::size_t n = 0;
    while (n < in_.size() && base64(in_[n]))
      ++n;
    if (n == in_.size() || in_[n] != ':') return false;
    in_.remove_prefix(n + 1);
    out = SfItem{SfItem::Type::kBinary};
    return true;
  }

  bool boolean(SfItem& out) {
    in_.remove_prefix(1);  // '?'
    if (in_.empty() || (in_.front() != '0' && in_.front() != '1')) return false;
    out = SfItem{SfItem::Type::kBoolean, 0, in_.front() == '1'};
    in_.remove_prefix(1);
    return true;
  }

  std::string_view in_;
};

}  // namespace

std::optional<SfDictionary> parse_sf_dictionary(std::string_view value) {
  // Field values never end in whitespace; lines joined by the caller may.
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
    value.remove_suffix(1);
  return Parser(value).dictionary();
}

}  // namespace unherd::gateway
