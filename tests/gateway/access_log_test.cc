// The access log's JSON text: what a reader of the log gets back for what a client sent.
#include "gateway/access_log.h"

#include <gtest/gtest.h>

#include "gateway/text.h"

namespace unherd::gateway {
namespace {

std::string escaped(std::string_view s) {
  std::string out;
  json_escape(out, s);
  return out;
}

// Well-formed UTF-8 is written as it is, so ids and targets in any script read back as sent.
TEST(AccessLogText, Utf8IsWrittenAsItIs) {
  EXPECT_EQ(escaped("ид-запроса-7"), "ид-запроса-7");
  EXPECT_EQ(escaped("/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80"),
            "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80");
  EXPECT_EQ(escaped("a\"b\\c"), "a\\\"b\\\\c");
}

// What is not UTF-8, and control bytes, are escaped: the line stays one valid JSON object.
TEST(AccessLogText, InvalidBytesAndControlsAreEscaped) {
  EXPECT_EQ(escaped("\n\x01\x7f"), "\\u000a\\u0001\\u007f");
  EXPECT_EQ(escaped("\xff"), "\\u00ff");
  EXPECT_EQ(escaped("\xc3"), "\\u00c3");                                   // cut short
  EXPECT_EQ(escaped("\xc0\xaf"), "\\u00c0\\u00af");                        // overlong '/'
  EXPECT_EQ(escaped("\xed\xa0\x80"), "\\u00ed\\u00a0\\u0080");             // a surrogate
  EXPECT_EQ(escaped("\xf4\x90\x80\x80"), "\\u00f4\\u0090\\u0080\\u0080");  // past U+10FFFF
  EXPECT_EQ(escaped("\xe2\x82"), "\\u00e2\\u0082");
}

// Characters that change what a reader sees (C1 controls, bidi overrides) are escaped.
TEST(AccessLogText, C1AndBidiControlsAreEscaped) {
  EXPECT_EQ(escaped("a\xc2\x9b"
                    "b"),
            "a\\u009bb");
  EXPECT_EQ(escaped("\xe2\x80\xae"
                    "evil"),
            "\\u202eevil");
  EXPECT_EQ(escaped("\xe2\x81\xa6"), "\\u2066");
}

TEST(Utf8, LengthOfTheCharacterAStringStartsWith) {
  EXPECT_EQ(utf8_length("a"), 1u);
  EXPECT_EQ(utf8_length("\xc3\xa9x"), 2u);
  EXPECT_EQ(utf8_length("\xef\xbf\xbf"), 3u);
  EXPECT_EQ(utf8_length("\xf4\x8f\xbf\xbf"), 4u);
  EXPECT_EQ(utf8_length("\x80"), 0u);
  EXPECT_EQ(utf8_length(""), 0u);
}

}  // namespace
}  // namespace unherd::gateway
