"""End to end: nothing a client sends that the key does not name decides what is stored for
everyone, and no private answer is shared. Each case is an attack that once worked."""
import json
import socket
import threading
import unittest
import urllib.parse

from harness import TOKEN, Gateway, eventually, route
from raw_upstream import RawUpstream, Script
from upstream import Upstream

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def q(**params):
    return "?" + urllib.parse.urlencode(params, doseq=True)


def chunked(head, body, trailer):
    """A chunked 200 answer: `head` and `trailer` are lists of header lines."""
    return (("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" +
             "".join(f"{h}\r\n" for h in head) + "\r\n" +
             f"{len(body):x}\r\n{body}\r\n0\r\n" +
             "".join(f"{t}\r\n" for t in trailer) + "\r\n").encode())


class Trailers(unittest.TestCase):
    """A trailer is never part of the head, on either side."""

    @classmethod
    def setUpClass(cls):
        cls.up = RawUpstream()
        cls.gw = Gateway(route("raw", "/raw", cls.up.port, fresh_ttl='"1h"'),
                         cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def test_a_response_trailer_repeating_a_head_field_cannot_make_a_private_answer_shared(self):
        for name, last in (("Content-Type", "Cache-Control: private"),
                           ("Server-Timing", "Set-Cookie: session=victim"),
                           ("Content-Type", "Cache-Control: no-store"),
                           ("Content-Type", "Vary: *")):
            with self.subTest(trailer=name, last=last):
                path = f"/raw/trailer-{len(self.up.requests())}"
                self.up.script(path, Script(chunked(
                    ["Content-Type: text/plain", "Server-Timing: db;dur=1", last], "secret",
                    [f"{name}: text/html"])))
                s, h, body = self.gw.get(path)
                self.assertEqual((s, body), (200, b"secret"))
                self.assertEqual(h["content-type"], "text/plain")  # the trailer's is dropped
                self.assertNotEqual(self.gw.get(path)[1]["x-cache"], "HIT")
                self.assertEqual(len(self.up.requests(path)), 2, "the private answer was stored")

    def test_a_request_trailer_is_never_forwarded_and_the_heads_last_lines_stay(self):
        body = b"hello"
        request = (b"POST /raw/post HTTP/1.1\r\nHost: t\r\nX-Forwarded-User: guest\r\n"
                   b"Transfer-Encoding: chunked\r\nX-Last: kept\r\nConnection: close\r\n\r\n" +
                   f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
                   b"X-Forwarded-User: admin\r\nX-Injected: yes\r\n\r\n")
        answer = self.gw.raw_exchange(request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        seen = self.up.requests("/raw/post")[-1]
        self.assertEqual(seen.headers.get("x-forwarded-user"), "guest")
        self.assertEqual(seen.headers.get("x-last"), "kept")
        self.assertNotIn("x-injected", seen.headers)
        self.assertEqual(seen.body, body)


    def test_endless_chunk_extensions_or_trailers_are_refused_not_buffered(self):
        head = (b"POST /raw/post HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for what, prefix, endless in (("extension", b"1;", b"x" * 65536),
                                      ("trailer", b"0\r\n", b"X-T: " + b"y" * 65536)):
            with self.subTest(what=what):
                with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as s:
                    s.sendall(head + prefix)
                    answer = b""
                    try:
                        for _ in range(64):  # up to 4 MiB, far past any limit
                            s.sendall(endless)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # refused and closed while sending
                    try:
                        while chunk := s.recv(65536):
                            answer += chunk
                    except ConnectionResetError:
                        pass
                    self.assertTrue(answer.startswith(b"HTTP/1.1 4"), answer[:100])

    def test_an_endless_trailer_from_the_upstream_is_a_bad_answer(self):
        path = "/raw/endless-trailer"
        self.up.script(path, Script(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"1\r\nx\r\n0\r\nX-T: " + b"y" * (4 << 20), close=True))
        self.assertEqual(self.gw.get(path)[0], 502)


class TargetedFields(unittest.TestCase):
    """A targeted field replaces Cache-Control only when it parses and says something."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port, fresh_ttl='"1h"'),
                         cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def stored(self, name, **params):
        target = f"/api/{name}" + q(**params)
        self.gw.get(target)
        self.gw.get(target)
        return self.up.count(target) == 1

    def test_a_targeted_field_without_a_usable_directive_leaves_private_in_force(self):
        for name, value in (("Surrogate-Control", 'content="ESI/1.0"'),
                            ("CDN-Cache-Control", ";"),
                            ("CDN-Cache-Control", '"no-store"'),
                            ("CDN-Cache-Control", "max-age=60s"),
                            ("CDN-Cache-Control", "max-age=1.5"),
                            ("CDN-Cache-Control", "foo=bar")):
            with self.subTest(field=name, value=value):
                self.assertFalse(self.stored(f"t{len(value)}{name[0]}", cc="private",
                                             hdr=f"{name}:{value}"))

    def test_a_valid_targeted_field_still_replaces_cache_control(self):
        self.assertTrue(self.stored("valid-cdn", cc="private", hdr="CDN-Cache-Control:max-age=60"))
        self.assertTrue(self.stored("valid-sc", cc="no-store",
                                    hdr='Surrogate-Control:content="ESI/1.0", max-age=60'))
        self.assertFalse(self.stored("sc-nostore", cc="max-age=60",
                                     hdr="Surrogate-Control:no-store"))


class UnkeyedHeaders(unittest.TestCase):
    """A cached fetch sends the upstream only what the key covers (and the fields a correct
    origin names in Vary); a pass-through sends what the client sent."""

    ATTACKS = (("X-HTTP-Method-Override", "DELETE"), ("X-Forwarded-Scheme", "nothttps"),
               ("X-Forwarded-Host", "evil.example"), ("X-Host", "evil.example"),
               ("Forwarded", "host=evil.example"), ("X-Original-URL", "/admin"),
               ("X-Rewrite-URL", "/admin"), ("X-Oversized", "x" * 12000))

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(
            route("api", "/api", cls.up.port, fresh_ttl='"1h"') +
            route("fwd", "/fwd", cls.up.port, fresh_ttl='"1h"', forward_headers='["X-Tenant-Hint"]') +
            route("keyed", "/keyed", cls.up.port, key='["path", "header:X-Lang", "query:echo"]'),
            server_extra='max_header_bytes = "64KiB"', cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def test_headers_the_key_does_not_name_never_reach_the_upstream_of_a_cached_fetch(self):
        for name, value in self.ATTACKS:
            with self.subTest(header=name):
                target = f"/api/{name.lower()}" + q(echo=name)
                s, h, body = self.gw.get(target, {name: value})
                self.assertEqual(json.loads(body)["echo"], None, "forwarded")
                self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        dropped = self.gw.stats()["routes"]["api"]["headers_dropped"]
        self.assertGreaterEqual(dropped, len(self.ATTACKS))

    def test_what_a_correct_origin_varies_on_and_correlation_ids_are_forwarded(self):
        for name in ("Accept", "Accept-Encoding", "Accept-Language", "X-Request-Id",
                     "traceparent", "tracestate"):
            with self.subTest(header=name):
                target = f"/api/neg-{name.lower()}" + q(echo=name)
                s, h, body = self.gw.get(target, {name: "v1"})
                self.assertEqual(json.loads(body)["echo"], ["v1"])

    def test_a_coded_answer_varies_on_accept_encoding_even_if_the_origin_forgot_to_say_so(self):
        target = "/api/gz" + q(hdr="Content-Encoding:gzip", cc="max-age=600")
        self.gw.get(target, {"Accept-Encoding": "gzip"})
        s, h, body = self.gw.get(target, {"Accept-Encoding": "identity"})
        self.assertNotEqual(h["x-cache"], "HIT")
        self.assertEqual(self.gw.get(target, {"Accept-Encoding": "gzip"})[1]["x-cache"], "HIT")

    def test_a_routes_forward_headers_are_forwarded(self):
        s, h, body = self.gw.get("/fwd/x" + q(echo="X-Tenant-Hint"), {"X-Tenant-Hint": "a"})
        self.assertEqual(json.loads(body)["echo"], ["a"])

    def test_keyed_and_learned_vary_headers_are_forwarded(self):
        s, h, body = self.gw.get("/keyed/x" + q(echo="X-Lang"), {"X-Lang": "fr"})
        self.assertEqual(json.loads(body)["echo"], ["fr"])
        target = "/api/vary" + q(vary="X-Color", echo="X-Color", cc="max-age=600")
        s, h, body = self.gw.get(target, {"X-Color": "red"})
        # The first fetch could not know the origin varies on X-Color: its answer (for no
        # X-Color) is not given to a request with one, which is asked again, keyed on it.
        self.assertEqual(json.loads(body)["echo"], ["red"])
        s, h, body = self.gw.get(target, {"X-Color": "red"})
        self.assertEqual((h["x-cache"], json.loads(body)["echo"]), ("HIT", ["red"]))
        s, h, body = self.gw.get(target)
        self.assertEqual((h["x-cache"], json.loads(body)["echo"]), ("HIT", None))
        s, h, body = self.gw.get(target, {"X-Color": "blue"})
        self.assertEqual((h["x-cache"], json.loads(body)["echo"]), ("MISS", ["blue"]))

    def test_a_pass_through_forwards_what_the_client_sent(self):
        s, h, body = self.gw.get("/api/post" + q(echo="X-Custom"), {"X-Custom": "c"},
                                 method="POST", body=b"")
        self.assertEqual(json.loads(body)["echo"], ["c"])

    def test_header_names_with_underscores_are_never_forwarded(self):
        for method, path in (("GET", "/keyed/u"), ("POST", "/api/u")):
            with self.subTest(method=method):
                target = path + q(echo="X_Lang")
                s, h, body = self.gw.get(target, {"X_Lang": "evil"}, method=method,
                                         body=b"" if method == "POST" else None)
                self.assertEqual(json.loads(body)["echo"], None)
        # Keyed as absent, and the upstream got none: a later request without it is that answer.
        s, h, body = self.gw.get("/keyed/u" + q(echo="X_Lang"))
        self.assertEqual(h["x-cache"], "HIT")


class ErrorsAndDefaults(unittest.TestCase):
    """The route's defaults never make an error cacheable."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.strict_up = Upstream()  # a breaker of its own: its errors must not open api's
        cls.gw = Gateway(
            route("api", "/api", cls.up.port, fresh_ttl='"1h"') +
            route("strict", "/strict", cls.strict_up.port, fresh_ttl='"1h"', store_errors="false",
                  retry='{ attempts = 1 }'),
            cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()
        cls.strict_up.stop()

    def twice(self, target):
        self.gw.get(target)
        self.gw.get(target)
        return (self.strict_up if target.startswith("/strict") else self.up).count(target)

    def test_an_error_without_explicit_freshness_is_not_stored(self):
        for status in (404, 405, 410, 414, 501, 400):
            with self.subTest(status=status):
                self.assertEqual(self.twice(f"/api/e{status}" + q(status=status)), 2)
        self.assertEqual(self.twice("/api/ok" + q(status=200)), 1)
        self.assertEqual(self.twice("/api/moved" + q(status=301)), 1)

    def test_an_error_with_explicit_freshness_is_stored_unless_store_errors_is_off(self):
        self.assertEqual(self.twice("/api/f404" + q(status=404, cc="max-age=60")), 1)
        for status in (404, 410, 503):
            with self.subTest(status=status):
                target = f"/strict/f{status}" + q(status=status, cc="max-age=60")
                self.assertEqual(self.twice(target), 2)


class Paths(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port), cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def test_segments_that_some_origins_resolve_as_dot_segments_are_refused(self):
        for target in ("/api/..;/admin", "/api/%2e%2e%3b/admin", "/api/..%00/admin",
                       "/api/.;x=1/admin", "/api/..;jsessionid=1/admin", "/api/%2E%2E;/admin",
                       "/api/a%2f..%2fadmin", "/api/a%5c..%5cadmin"):
            with self.subTest(target=target):
                self.assertEqual(self.gw.get(target)[0], 400)
        self.assertEqual(self.up.state.total, 0)
        for target in ("/api/a;b=1", "/api/...", "/api/..a", "/api/a.."):
            with self.subTest(target=target):
                self.assertEqual(self.gw.get(target)[0], 200)


class MalformedVary(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port, fresh_ttl='"1h"'),
                         cache_extra='store = "none"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def test_a_vary_that_is_not_a_list_of_field_names_is_vary_star(self):
        for vary in ("X-Lang;q=1", '"x-lang"', "X Lang", "X-Lang, (comment)", "X-Lang,,@"):
            with self.subTest(vary=vary):
                target = f"/api/v{len(vary)}" + q(hdr=f"Vary:{vary}")
                self.gw.get(target, {"X-Lang": "en"})
                s, h, body = self.gw.get(target, {"X-Lang": "de"})
                self.assertNotEqual(h["x-cache"], "HIT")
                self.assertEqual(self.up.count(target), 2)


class Revalidation(unittest.TestCase):
    def test_304s_cannot_grow_the_stored_head_past_max_header_bytes(self):
        up = RawUpstream()
        first = ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nETag: \"e1\"\r\n"
                 "Cache-Control: max-age=0\r\n\r\nbody").encode()
        # Each 304 brings ~7 KB of header lines of new names.
        not_modified = [("HTTP/1.1 304 Not Modified\r\nETag: \"e1\"\r\n" +
                         "".join(f"X-New-{r}-{i}: {'v' * 40}\r\n" for i in range(120)) +
                         "\r\n").encode() for r in range(5)]
        # The third 304 would take the stored head past 16 KiB: the answer is fetched whole.
        up.script("/raw/grow", Script(first), Script(not_modified[0]), Script(not_modified[1]),
                  Script(not_modified[2]), Script(first), Script(not_modified[3]))
        gw = Gateway(route("raw", "/raw", up.port, fresh_ttl='"0s"', stale_ttl='"0s"'),
                     cache_extra='store = "none"')
        try:
            for round_ in range(6):
                raw = gw.raw_exchange(b"GET /raw/grow HTTP/1.1\r\nHost: t\r\n"
                                      b"Connection: close\r\n\r\n")
                head, _, body = raw.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:100])
                self.assertEqual(body, b"body")
                self.assertLess(len(head), 16 * 1024 + 512, f"round {round_}: {len(head)} bytes")
            self.assertEqual(len(up.requests("/raw/grow")), 7)
        finally:
            gw.stop()
            up.stop()


class Breaker(unittest.TestCase):
    def test_requests_the_gateway_refuses_to_send_never_open_the_upstreams_breaker(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port,
                           breaker='{ failure_rate = 0.5, window = 20, min_calls = 5 }'),
                     cache_extra='store = "none"')
        try:
            for _ in range(12):
                s, h, body = gw.get("/api/trace", method="TRACE", body=b"payload")
                self.assertLess(s, 500, body)
            self.assertEqual(gw.get("/api/ok")[0], 200)
            self.assertEqual(set(gw.stats()["breakers"].values()), {"closed"})
        finally:
            gw.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main()
