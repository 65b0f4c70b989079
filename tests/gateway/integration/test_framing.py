"""Request framing, end to end: one row per case, the bytes a client sends and what it must see.

RFC 9112 section 6 (message body length, Content-Length, Transfer-Encoding), 7 (chunked coding),
5 (field syntax), 3 (request line); RFC 9110 section 7.2 (Host). Each row runs on its own
connection to a real gateway whose route points at the counting upstream. After the gateway's
answer a probe request follows on the same connection, which tells whether the connection was
kept. Every row also checks that no request hidden in the body ("smuggled") reached the upstream.

Outcomes:
  served(body)      200, the upstream got the request once, with exactly `body`, no trailer
                    fields among its headers; the connection stays open (HTTP/1.1)
  refused(*status)  one of `status`, the connection is closed, nothing reached the upstream
  local(status)     the gateway answered itself, kept the connection, nothing reached the upstream
  either(a, b)      where the RFC leaves the choice to the recipient
"""
import json
import unittest
import urllib.request
from dataclasses import dataclass

from harness import Gateway, route
from upstream import Upstream


@dataclass(frozen=True)
class Outcome:
    kind: str  # "served", "refused" or "local"
    statuses: tuple = (200,)
    body: bytes = b""
    target: str = None  # served: what the upstream must be asked for; None: the request's target
    closes: bool = False  # served: the connection closes after the answer (HTTP/1.0)
    absent: tuple = ()  # served: header names the upstream must not see


def served(body=b"", target=None, closes=False, absent=()):
    return (Outcome("served", (200,), body, target, closes, absent),)


def refused(*statuses):
    return (Outcome("refused", statuses or (400,)),)


def local(status):
    return (Outcome("local", (status,)),)


def either(*alternatives):
    return tuple(a for alternative in alternatives for a in alternative)


P = b"POST /api/f HTTP/1.1\r\nHost: t\r\n"  # the start of most rows
TE = b"Transfer-Encoding: chunked\r\n"
SMUGGLED = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"  # 39 bytes; must never reach the upstream
assert len(SMUGGLED) == 39

ROWS = [
    # name                               bytes sent                                                                   outcome
    # -- Content-Length (RFC 9112 6.3, RFC 9110 8.6)
    ("cl_only",                          P + b"Content-Length: 5\r\n\r\nhello",                                       served(b"hello")),
    ("cl_zero",                          P + b"Content-Length: 0\r\n\r\n",                                            served(b"")),
    ("cl_leading_zeros",                 P + b"Content-Length: 005\r\n\r\nhello",                                     served(b"hello")),
    ("cl_trailing_whitespace",           P + b"Content-Length: 5 \r\n\r\nhello",                                      served(b"hello")),
    ("cl_duplicated_same_value",         P + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",                  either(served(b"hello"), refused(400))),
    ("cl_list_same_value",               P + b"Content-Length: 5, 5\r\n\r\nhello",                                    either(served(b"hello"), refused(400))),
    ("cl_duplicated_different_values",   P + b"Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello" + SMUGGLED,      refused(400)),
    ("cl_list_different_values",         P + b"Content-Length: 5, 44\r\n\r\nhello" + SMUGGLED,                        refused(400)),
    ("cl_list_5_6",                      P + b"Content-Length: 5, 6\r\n\r\nhello!",                                   refused(400)),
    ("cl_negative",                      P + b"Content-Length: -5\r\n\r\nhello",                                      refused(400)),
    ("cl_plus_sign",                     P + b"Content-Length: +5\r\n\r\nhello",                                      refused(400)),
    ("cl_non_numeric",                   P + b"Content-Length: five\r\n\r\nhello",                                    refused(400)),
    ("cl_hex",                           P + b"Content-Length: 0x5\r\n\r\nhello",                                     refused(400)),
    ("cl_empty",                         P + b"Content-Length: \r\n\r\nhello",                                        refused(400)),
    ("cl_inner_space",                   P + b"Content-Length: 4 4\r\n\r\nhello" + SMUGGLED,                          refused(400)),
    ("cl_overflows_64_bits",             P + b"Content-Length: 18446744073709551621\r\n\r\nhello",                    refused(400, 413)),
    ("cl_space_before_colon",            P + b"Content-Length : 5\r\n\r\nhello",                                      refused(400)),
    # -- Content-Length with Transfer-Encoding (RFC 9112 6.1, 6.3)
    ("cl_then_te_chunked",               P + b"Content-Length: 44\r\n" + TE + b"\r\n0\r\n\r\n" + SMUGGLED,           refused(400)),
    ("te_chunked_then_cl",               P + TE + b"Content-Length: 44\r\n\r\n0\r\n\r\n" + SMUGGLED,                 refused(400)),
    ("cl_zero_with_te_chunked",          P + b"Content-Length: 0\r\n" + TE + b"\r\n5\r\nhello\r\n0\r\n\r\n",           refused(400)),
    # -- chunked (RFC 9112 7.1)
    ("te_chunked",                       P + TE + b"\r\n5\r\nhello\r\n0\r\n\r\n",                                     served(b"hello")),
    ("te_chunked_empty_body",            P + TE + b"\r\n0\r\n\r\n",                                                   served(b"")),
    ("te_chunked_many_chunks",           P + TE + b"\r\n1\r\nh\r\n3\r\nell\r\n1\r\no\r\n0\r\n\r\n",                   served(b"hello")),
    ("te_chunked_size_upper_hex",        P + TE + b"\r\nA\r\n0123456789\r\n0\r\n\r\n",                                served(b"0123456789")),
    ("te_chunked_size_lower_hex",        P + TE + b"\r\na\r\n0123456789\r\n0\r\n\r\n",                                served(b"0123456789")),
    ("te_chunked_size_two_digits",       P + TE + b"\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n",                       served(b"z" * 26)),
    ("te_chunked_size_leading_zeros",    P + TE + b"\r\n0005\r\nhello\r\n0\r\n\r\n",                                  served(b"hello")),
    ("te_chunked_coding_case",           P + b"Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",             served(b"hello")),
    ("te_chunk_extension",               P + TE + b"\r\n5;name=value\r\nhello\r\n0\r\n\r\n",                          served(b"hello")),
    ("te_chunk_extension_no_value",      P + TE + b"\r\n5;name\r\nhello\r\n0\r\n\r\n",                                served(b"hello")),
    ("te_chunk_extension_quoted",        P + TE + b'\r\n5;n="a;b\\"c"\r\nhello\r\n0\r\n\r\n',                         served(b"hello")),
    ("te_chunk_extensions_two",          P + TE + b"\r\n5;a=1;b=2\r\nhello\r\n0\r\n\r\n",                             served(b"hello")),
    ("te_last_chunk_extension",          P + TE + b"\r\n5\r\nhello\r\n0;done\r\n\r\n",                                served(b"hello")),
    ("te_chunked_trailer_fields",        P + TE + b"\r\n5\r\nhello\r\n0\r\nX-Trailer-A: 1\r\nX-Trailer-B: 2\r\n\r\n", served(b"hello")),
    ("te_chunked_trailer_content_length", P + TE + b"\r\n5\r\nhello\r\n0\r\nContent-Length: 44\r\n\r\n",              either(served(b"hello"), refused(400))),
    # -- Transfer-Encoding other than one "chunked" (RFC 9112 6.1, 6.3: 400 and close)
    ("te_chunked_identity",              P + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,     refused(400)),
    ("te_identity",                      P + b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED,              refused(400)),
    ("te_xchunked",                      P + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,              refused(400)),
    ("te_chunked_suffix",                P + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n" + SMUGGLED,              refused(400)),
    ("te_gzip",                          P + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n" + SMUGGLED,                  refused(400)),
    ("te_gzip_chunked",                  P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,         refused(400, 501)),
    ("te_chunked_chunked",               P + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,      refused(400)),
    ("te_two_lines_chunked",             P + TE + TE + b"\r\n0\r\n\r\n" + SMUGGLED,                                   refused(400)),
    ("te_two_lines_identity_chunked",    P + b"Transfer-Encoding: identity\r\n" + TE + b"\r\n0\r\n\r\n" + SMUGGLED,   refused(400)),
    ("te_two_lines_chunked_identity",    P + TE + b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED,         refused(400)),
    ("te_empty",                         P + b"Transfer-Encoding: \r\n\r\n0\r\n\r\n" + SMUGGLED,                      refused(400)),
    ("te_obs_fold_value_on_next_line",   P + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,           refused(400)),
    ("te_obs_fold_second_coding",        P + b"Transfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,         refused(400)),
    ("te_space_before_colon",            P + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,              refused(400)),
    ("te_vertical_tab",                  P + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,           refused(400)),
    ("te_on_http_1_0",                   b"POST /api/f HTTP/1.0\r\nHost: t\r\n" + TE + b"\r\n0\r\n\r\n" + SMUGGLED,   refused(400)),
    # -- malformed chunked bodies (RFC 9112 7.1)
    ("chunk_size_overflow",              P + TE + b"\r\n10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED,          refused(400, 413)),
    ("chunk_size_bad_char",              P + TE + b"\r\n5x\r\nhello\r\n0\r\n\r\n",                                   refused(400)),
    ("chunk_size_not_hex",               P + TE + b"\r\ng\r\nhello\r\n0\r\n\r\n",                                    refused(400)),
    ("chunk_size_negative",              P + TE + b"\r\n-5\r\nhello\r\n0\r\n\r\n",                                   refused(400)),
    ("chunk_size_0x",                    P + TE + b"\r\n0x5\r\nhello\r\n0\r\n\r\n",                                  refused(400)),
    ("chunk_size_leading_space",         P + TE + b"\r\n 5\r\nhello\r\n0\r\n\r\n",                                   refused(400)),
    ("chunk_size_empty",                 P + TE + b"\r\n\r\nhello\r\n0\r\n\r\n",                                     refused(400)),
    ("chunk_data_without_crlf",          P + TE + b"\r\n5\r\nhello0\r\n\r\n" + SMUGGLED,                              refused(400)),
    ("chunk_data_longer_than_size",      P + TE + b"\r\n3\r\nhello\r\n0\r\n\r\n",                                    refused(400)),
    ("chunk_lines_lf_only",              P + TE + b"\r\n5\nhello\n0\n\n" + SMUGGLED,                                  refused(400)),
    ("chunk_size_line_lf_only",          P + TE + b"\r\n5\nhello\r\n0\r\n\r\n",                                      refused(400)),
    ("chunk_data_end_lf_only",           P + TE + b"\r\n5\r\nhello\n0\r\n\r\n",                                      refused(400)),
    ("chunk_extension_bare_lf",          P + TE + b"\r\n5;a\nb\r\nhello\r\n0\r\n\r\n" + SMUGGLED,                     refused(400)),
    ("chunk_extension_bare_cr",          P + TE + b"\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",                               refused(400)),
    # -- field syntax (RFC 9112 5, RFC 9110 5.5)
    ("bare_lf_line_endings",             b"POST /api/f HTTP/1.1\nHost: t\nContent-Length: 5\n\nhello",                either(served(b"hello"), refused(400))),
    ("header_value_nul",                 P + b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",                         refused(400)),
    ("header_value_bare_cr",             P + b"X-A: a\rb\r\nContent-Length: 5\r\n\r\nhello",                           refused(400)),
    ("header_name_space_before_colon",   P + b"X-A : 1\r\nContent-Length: 5\r\n\r\nhello",                             refused(400)),
    ("header_without_colon",             P + b"X-A\r\nContent-Length: 5\r\n\r\nhello",                                 refused(400)),
    ("header_empty_name",                P + b": 1\r\nContent-Length: 5\r\n\r\nhello",                                 refused(400)),
    ("header_obs_fold",                  P + b"X-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",                   either(served(b"hello"), refused(400))),
    ("connection_option_names_header",   P + b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nContent-Length: 0\r\n\r\n", served(absent=("x-drop",))),
    ("header_first_line_obs_fold",       b"POST /api/f HTTP/1.1\r\n Host: t\r\nContent-Length: 5\r\n\r\nhello",       refused(400)),
    # -- Host (RFC 9110 7.2, RFC 9112 3.2: exactly one in HTTP/1.1)
    ("host_missing_http_1_1",            b"GET /api/f/host-missing HTTP/1.1\r\n\r\n",                                  refused(400)),
    ("host_twice",                       b"GET /api/f/host-twice HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",              refused(400)),
    ("host_twice_same_value",            b"GET /api/f/host-twice-same HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n",         refused(400)),
    ("host_missing_http_1_0",            b"GET /api/f/host-missing-10 HTTP/1.0\r\n\r\n",                               served(closes=True)),
    # -- request line (RFC 9112 3)
    ("absolute_form",                    b"GET http://t/api/f/absolute HTTP/1.1\r\nHost: t\r\n\r\n",                   either(served(target="/api/f/absolute"), refused(400))),
    ("asterisk_form_on_get",             b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",                                         either(refused(400), local(404))),
    ("target_control_char",              b"GET /api/f/a\x01b HTTP/1.1\r\nHost: t\r\n\r\n",                               refused(400)),
    ("request_line_two_spaces",          b"GET  /api/f/two-spaces HTTP/1.1\r\nHost: t\r\n\r\n",                         refused(400)),
    ("request_line_trailing_space",      b"GET /api/f/trailing-space HTTP/1.1 \r\nHost: t\r\n\r\n",                    refused(400)),
    ("request_line_no_version",          b"GET /api/f/no-version\r\nHost: t\r\n\r\n",                                  refused(400)),
    ("version_lower_case",               b"GET /api/f/lower http/1.1\r\nHost: t\r\n\r\n",                              refused(400)),
    ("version_http_2_0",                 b"GET /api/f/v20 HTTP/2.0\r\nHost: t\r\n\r\n",                                refused(400, 505)),
    ("version_http_1_2",                 b"GET /api/f/v12 HTTP/1.2\r\nHost: t\r\n\r\n",                                either(served(), refused(400, 505))),
    # -- limits
    ("header_block_too_large",           b"GET /api/f/big HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", refused(431)),
    ("cl_body_too_large",                P + b"Content-Length: 5000000\r\n\r\nhello",                                  refused(413)),
    ("chunked_body_too_large",           P + TE + b"\r\n200000\r\nhello",                                              refused(413)),
    # -- nothing after a refusal is read as a request
    ("pipelined_after_bad_field",        b"GET /api/f/r1 HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\nGET /api/f/after1 HTTP/1.1\r\nHost: t\r\n\r\n", refused(400)),
    ("pipelined_after_missing_host",     b"GET /api/f/r2 HTTP/1.1\r\n\r\nGET /api/f/after2 HTTP/1.1\r\nHost: t\r\n\r\n",             refused(400)),
    ("pipelined_after_bad_te",           P + b"Transfer-Encoding: gzip\r\n\r\n" + SMUGGLED,                            refused(400)),
]


def request_target(data):
    return data.split(b"\n", 1)[0].split(b" ")[1].decode()


class Framing(unittest.TestCase):
    """The table above, one subtest per row, on one gateway and one counting upstream."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port, retry="{ attempts = 1 }"))

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def run_row(self, data, alternatives):
        st = self.up.state
        total_before = st.total
        targets = {a.target or request_target(data) for a in alternatives if a.kind == "served"}
        counts_before = {t: self.up.count(t) for t in targets}
        smuggled_before = self.up.count("/api/smuggled")
        answers, closed = self.gw.exchange(data)
        forwarded = st.total - total_before
        seen = {"answers": [(s, b[:80]) for s, _, b in answers], "closed": closed,
                "forwarded": forwarded}
        self.assertEqual(self.up.count("/api/smuggled"), smuggled_before,
                         f"a smuggled request got through: {seen}")
        self.assertEqual(len(answers), 1, f"one answer, nothing read as a second request: {seen}")
        status = answers[0][0]
        outcome = next((a for a in alternatives if status in a.statuses), None)
        self.assertIsNotNone(outcome, f"status not among {alternatives}: {seen}")
        if outcome.kind == "served":
            self.assertEqual(forwarded, 1, f"the upstream got it once: {seen}")
            self.assertEqual(closed, outcome.closes, f"connection closed: {seen}")
            headers, body = st.headers_seen[-1], st.bodies_seen[-1]
            target = outcome.target or request_target(data)
            self.assertEqual(self.up.count(target) - counts_before[target], 1,
                             f"asked upstream for {target}: {seen}")
            self.assertEqual(body, outcome.body)
            self.assertNotIn("transfer-encoding", headers)
            self.assertEqual([h for h in headers if h.startswith("x-trailer")], [],
                             "trailer fields are not headers")
            if body:
                self.assertEqual(headers.get("content-length"), str(len(body)))
            for name in outcome.absent:
                self.assertNotIn(name, headers, f"{name} reached the upstream")
        elif outcome.kind == "refused":
            self.assertTrue(closed, f"the connection is closed after a refusal: {seen}")
            self.assertEqual(forwarded, 0, f"nothing of a refused request reaches the upstream: {seen}")
        else:
            self.assertFalse(closed, f"kept: {seen}")
            self.assertEqual(forwarded, 0, f"answered by the gateway itself: {seen}")

    def test_table(self):
        names = [name for name, _, _ in ROWS]
        self.assertEqual(len(names), len(set(names)), "row names are unique")
        for name, data, alternatives in ROWS:
            with self.subTest(name):
                self.run_row(data, alternatives)

    def test_trailer_fields_are_not_sent_upstream_as_headers(self):
        data = (b"POST /api/f/trailers HTTP/1.1\r\nHost: t\r\n" + TE +
                b"\r\n5\r\nhello\r\n0\r\nX-Trailer-Secret: s\r\nAuthorization: Bearer t\r\n\r\n")
        answers, closed = self.gw.exchange(data)
        self.assertEqual(([a[0] for a in answers], closed), ([200], False))
        with urllib.request.urlopen(f"http://127.0.0.1:{self.up.port}/__headers") as r:
            last = json.loads(r.read())[-1]
        self.assertNotIn("x-trailer-secret", last)
        self.assertNotIn("authorization", last)
        self.assertEqual(self.up.state.bodies_seen[-1], b"hello")


if __name__ == "__main__":
    unittest.main()
