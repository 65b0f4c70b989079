"""A misbehaving upstream, end to end: what a client sees and what the upstream saw.

The upstream is `raw_upstream.RawUpstream`, which writes scripted bytes verbatim. Most cases
have the upstream leave bytes on a keep-alive connection that are not part of any answer it
was asked for (past a Content-Length, a body on a HEAD, 204 or 304 answer, written while the
connection was idle) and shaped as a complete, cacheable answer: the next request the gateway
sends on that connection must get its own answer, never those bytes. The requests of one case
go on one client connection, so one gateway thread (and its one upstream pool) serves them all.
"""
import http.client
import subprocess
import tempfile
import unittest

from harness import BIN, Gateway, route
from raw_upstream import RawUpstream, Script, ok

# A complete answer an upstream might leave behind; if a gateway reads it as the answer to a
# later request, that request's URL is cached as POISON for ten minutes.
POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: max-age=600\r\n\r\nPOISON"


class Client:
    """One keep-alive client connection to the gateway."""

    def __init__(self, gw):
        self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def request(self, method, target, headers=None, body=None):
        self.conn.request(method, target, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def close(self):
        self.conn.close()


class FaultCase(unittest.TestCase):
    server_extra = ""

    def setUp(self):
        self.up = RawUpstream()
        self.addCleanup(self.up.stop)
        self.gw = Gateway(route("api", "/api", self.up.port, retry="{ attempts = 1 }",
                                stale_ttl='"0s"'), server_extra=self.server_extra)
        self.addCleanup(self.gw.stop)
        self.client = Client(self.gw)
        self.addCleanup(self.client.close)

    def assert_own_answer_and_cached(self, target):
        """A request for `target` after the fault gets its own answer from the upstream, and
        the answer cached for `target` is that one."""
        status, headers, body = self.client.request("GET", target)
        self.assertEqual((status, body), (200, target.encode()), "its own answer, not POISON")
        self.assertEqual(headers["x-cache"], "MISS")
        status, headers, body = self.client.request("GET", target)
        self.assertEqual((status, headers["x-cache"], body), (200, "HIT", target.encode()))
        self.assertEqual(len(self.up.requests(target)), 1, "asked upstream once")


class UpstreamFaults(FaultCase):
    def test_a_well_framed_answer_leaves_its_connection_to_the_next_request(self):
        # What the cases below rely on: one client's requests share one upstream connection.
        self.client.request("GET", "/api/a")
        self.client.request("GET", "/api/b")
        self.assertEqual([(s.conn, s.target) for s in self.up.requests()],
                         [(1, "/api/a"), (1, "/api/b")])

    def test_bytes_past_the_content_length_are_not_the_next_answer(self):
        self.up.script("/api/extra", Script(ok(b"A", "Cache-Control: max-age=600") + POISON))
        status, headers, body = self.client.request("GET", "/api/extra")
        self.assertEqual((status, headers["x-cache"], body), (200, "MISS", b"A"))
        self.assert_own_answer_and_cached("/api/other")

    def test_a_body_on_an_answer_to_head_is_not_the_next_answer(self):
        # A request with a cookie passes through, as HEAD; the upstream sends a body anyway.
        self.up.script("/api/head", Script(ok(POISON)))
        status, headers, body = self.client.request("HEAD", "/api/head", {"Cookie": "c=1"})
        self.assertEqual((status, headers["x-cache"], body), (200, "PASS", b""))
        self.assertEqual([(s.method, s.conn) for s in self.up.requests("/api/head")], [("HEAD", 1)])
        self.assert_own_answer_and_cached("/api/other")

    def test_a_body_on_a_204_is_not_the_next_answer(self):
        self.up.script("/api/empty", Script(b"HTTP/1.1 204 No Content\r\n\r\n" + POISON))
        status, headers, body = self.client.request("GET", "/api/empty")
        self.assertEqual((status, body), (204, b""))
        self.assert_own_answer_and_cached("/api/other")

    def test_a_body_on_a_304_is_not_the_next_answer(self):
        # no-cache with stale_ttl 0: the second request waits for the revalidation.
        self.up.script("/api/reval",
                       Script(ok(b"v1", 'ETag: "v1"', "Cache-Control: no-cache")),
                       Script(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n' + POISON))
        self.assertEqual(self.client.request("GET", "/api/reval")[2], b"v1")
        status, headers, body = self.client.request("GET", "/api/reval")
        self.assertEqual((status, body), (200, b"v1"))
        seen = self.up.requests("/api/reval")
        self.assertEqual(len(seen), 2)
        self.assertEqual(seen[1].headers.get("if-none-match"), '"v1"', "a revalidation")
        self.assert_own_answer_and_cached("/api/other")

    def test_bytes_sent_on_an_idle_connection_are_not_the_next_answer(self):
        self.up.script("/api/idle", Script(ok(b"I", "Cache-Control: max-age=600"), later=POISON))
        self.assertEqual(self.client.request("GET", "/api/idle")[2], b"I")
        self.up.send_later()  # returns once the bytes wait on the gateway's pooled connection
        self.assert_own_answer_and_cached("/api/other")

    def test_101_to_a_request_without_upgrade_is_502(self):
        self.up.script("/api/switch", Script(b"HTTP/1.1 101 Switching Protocols\r\n"
                                             b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                                             + POISON))
        status, headers, body = self.client.request("GET", "/api/switch")
        self.assertEqual((status, headers["x-cache"]), (502, "MISS"))
        self.assertEqual(len(self.up.requests("/api/switch")), 1)
        self.assert_own_answer_and_cached("/api/other")

    def test_post_after_the_upstream_closed_the_idle_connection_is_sent_once(self):
        self.up.script("/api/first", Script(ok(b"F"), close=True))
        self.assertEqual(self.client.request("GET", "/api/first")[2], b"F")
        self.assertTrue(self.up.wait_for(lambda u: 1 in u.ended), "the upstream closed it")
        status, headers, body = self.client.request("POST", "/api/post", body=b"payload")
        self.assertEqual((status, headers["x-cache"]), (200, "PASS"))
        posts = self.up.requests("/api/post")
        self.assertEqual([(s.method, s.body) for s in posts], [("POST", b"payload")], "exactly once")
        self.assertNotEqual(posts[0].conn, 1, "on a new connection")


    def test_headers_an_answer_names_in_connection_are_not_forwarded(self):
        # RFC 9110 7.6.1: a field named in Connection belongs to that connection only.
        self.up.script("/api/conn", Script(ok(b"C", "Connection: X-Internal",
                                              "X-Internal: secret")))
        status, headers, body = self.client.request("GET", "/api/conn")
        self.assertEqual((status, body), (200, b"C"))
        self.assertNotIn("x-internal", headers)

    def test_trailer_fields_of_an_answer_are_not_its_header_fields(self):
        # RFC 9110 6.5.1: trailer fields are not merged into the header section.
        self.up.script("/api/trailers", Script(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=600\r\n\r\n"
            b"1\r\nT\r\n0\r\nX-Trailer: t\r\nCache-Control: no-store\r\n\r\n"))
        status, headers, body = self.client.request("GET", "/api/trailers")
        self.assertEqual((status, body, headers.get("cache-control")), (200, b"T", "max-age=600"))
        self.assertNotIn("x-trailer", headers)
        self.assertEqual(self.client.request("GET", "/api/trailers")[1]["x-cache"], "HIT")


class UpstreamIdleTimeout(FaultCase):
    server_extra = 'upstream_idle_timeout = "1s"'

    def test_an_idle_pooled_connection_is_closed_after_the_idle_timeout(self):
        self.assertEqual(self.client.request("GET", "/api/one")[2], b"/api/one")
        first = self.up.requests("/api/one")[0].conn
        # The gateway closes it as it expires, with no request to prompt it.
        self.assertTrue(self.up.wait_for(lambda u: first in u.eof, timeout=30),
                        "the gateway closed the expired connection")
        self.assertEqual(self.client.request("GET", "/api/two")[2], b"/api/two")
        self.assertNotEqual(self.up.requests("/api/two")[0].conn, first, "on a new connection")

    def test_a_connection_used_within_the_idle_timeout_is_reused(self):
        self.client.request("GET", "/api/a")
        self.client.request("GET", "/api/b")
        self.assertEqual([s.conn for s in self.up.requests()], [1, 1])


class UpstreamIdleTimeoutDefault(unittest.TestCase):
    def test_the_default_idle_timeout_is_4s(self):
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(route("a", "/", 1))
            f.flush()
            out = subprocess.run([BIN, "check", "--config", f.name], capture_output=True,
                                 text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('upstream_idle_timeout = "4s"', out.stdout)


if __name__ == "__main__":
    unittest.main()
