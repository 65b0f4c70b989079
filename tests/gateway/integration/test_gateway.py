"""Integration tests: the real `unherd` binary in front of a real counting upstream."""
import json
import os
import resource
import shutil
import re
import signal
import socket
import subprocess
import tempfile
import threading
from email.utils import parsedate_to_datetime
import unittest
import urllib.parse

from harness import BIN, TOKEN, Gateway, eventually, route
from upstream import Upstream


def q(**params):
    return "?" + urllib.parse.urlencode(params)


def held_herd(gw, up, pattern, route_name, targets, headers="", held=1):
    """Sends `targets` as a herd while `up` holds the requests for `pattern`, and ends the hold
    once `held` of them wait there and the gateway has had every request of the herd: the herd
    meets those fetches in flight. Returns the answers, in order."""
    before = gw.stats()["routes"][route_name]["total_requests"]
    up.hold(pattern)
    answers = []
    herd = threading.Thread(target=lambda: answers.extend(gw.herd(targets, headers)))
    herd.start()
    try:
        if not up.wait_held(pattern, held):
            raise AssertionError(f"{up.state.held_count(pattern)} of {held} fetches held")
        arrived = lambda: gw.stats()["routes"][route_name]["total_requests"] - before
        if not eventually(lambda: arrived() >= len(targets), timeout=60):
            raise AssertionError(f"{arrived()} of {len(targets)} requests reached the gateway")
    finally:
        up.release(pattern)
        herd.join(timeout=120)
    return answers


class GatewayCase(unittest.TestCase):
    """One upstream and one gateway per test class."""

    routes_extra = {}

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(cls.routes(cls.up.port))

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    @classmethod
    def routes(cls, port):
        # Requests held at the upstream are never given up on while a test holds them.
        return route("api", "/api", port, timeout='"30s"', max_wait='"30s"',
                     retry='{ attempts = 3, base = "10ms", cap = "50ms", budget = 10.0 }')


class Coalescing(GatewayCase):
    def test_thousand_identical_cold_requests_make_one_upstream_call(self):
        target = "/api/herd"
        answers = held_herd(self.gw, self.up, "/api/herd", "api", [target] * 1000)
        self.assertEqual(self.up.count(target), 1)
        self.assertEqual([a[0] for a in answers], [200] * 1000)
        self.assertEqual(len({a[2] for a in answers}), 1, "every caller gets the same body")
        caches = sorted(a[1]["x-cache"] for a in answers)
        self.assertEqual(caches.count("MISS"), 1)
        self.assertEqual(caches.count("COALESCED") + caches.count("HIT"), 999)

    def test_thousand_requests_over_hundred_keys_make_hundred_calls(self):
        targets = [f"/api/keys/{i % 100}" for i in range(1000)]
        answers = held_herd(self.gw, self.up, "/api/keys/*", "api", targets, held=100)
        self.assertEqual([a[0] for a in answers], [200] * 1000)
        self.assertEqual(sum(self.up.count(t) for t in set(targets)), 100)

    def test_hit_after_miss_with_age_and_request_id(self):
        target = "/api/age"
        s1, h1, b1 = self.gw.get(target, {"X-Request-Id": "client-id-1"})
        self.assertEqual((s1, h1["x-cache"], h1["x-request-id"]), (200, "MISS", "client-id-1"))
        seen = json.loads(self.up.state.headers_seen[-1]["x-request-id"] and "{}")
        s2, h2, b2 = self.gw.get(target)
        self.assertEqual((s2, h2["x-cache"], b2), (200, "HIT", b1))
        self.assertIn("age", h2)
        self.assertEqual(len(h2["x-request-id"]), 16)  # generated
        self.assertEqual(self.up.count(target), 1)
        self.assertEqual(seen, {})

    def test_request_id_is_sent_upstream(self):
        self.gw.get("/api/rid", {"X-Request-Id": "abc-123"})
        self.assertEqual(self.up.state.headers_seen[-1].get("x-request-id"), "abc-123")

    def test_tracing_headers_and_query_order_do_not_split_keys(self):
        self.gw.get("/api/t?a=1&b=2", {"traceparent": "00-1", "X-Request-Id": "x"})
        _, h, _ = self.gw.get("/api/t?b=2&a=1", {"traceparent": "00-2", "X-Request-Id": "y"})
        self.assertEqual(h["x-cache"], "HIT")

    def test_head_is_served_from_the_cache_without_a_body(self):
        self.gw.get("/api/head")
        status, h, body = self.gw.get("/api/head", method="HEAD")
        self.assertEqual((status, h["x-cache"], body), (200, "HIT", b""))
        self.assertGreater(int(h["content-length"]), 0)

    def test_a_hit_is_the_stored_answer_with_this_requests_id_and_is_counted(self):
        target = "/api/fast" + q(cc="max-age=60", etag="v7")
        before = self.gw.stats()["routes"]["api"]
        s1, h1, b1 = self.gw.get(target)
        s2, h2, b2 = self.gw.get(target, {"X-Request-Id": "hit-id-9"})
        self.assertEqual((s2, h2["x-cache"], h2["x-request-id"], b2), (200, "HIT", "hit-id-9", b1))
        self.assertEqual(h2["x-cache-tier"], "memory")
        self.assertEqual(int(h2["content-length"]), len(b1))
        for name in ("content-type", "cache-control", "etag"):
            self.assertEqual(h2[name], h1[name])
        after = self.gw.stats()["routes"]["api"]
        self.assertEqual(after["cache_hits"] - before["cache_hits"], 1)
        self.assertEqual(after["total_requests"] - before["total_requests"], 2)
        self.assertEqual(self.up.count(target), 1)

    def test_a_cached_key_asked_with_a_cookie_still_passes(self):
        target = "/api/fast-cookie"
        self.gw.get(target)
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        self.assertEqual(self.gw.get(target, {"Cookie": "session=1"})[1]["x-cache"], "PASS")
        self.assertEqual(self.up.count(target), 2)

    def test_other_methods_pass_through_uncached(self):
        for _ in range(2):
            status, h, _ = self.gw.get("/api/post", method="POST", body=b"{}")
            self.assertEqual((status, h["x-cache"]), (200, "PASS"))
        self.assertEqual(self.up.count("/api/post"), 2)


class CacheRules(GatewayCase):
    @classmethod
    def routes(cls, port):
        retry = '{ attempts = 1 }'
        # Requests held at the upstream are never given up on while a test holds them.
        return (route("api", "/api", port, retry=retry, timeout='"30s"', max_wait='"30s"') +
                route("sie", "/sie", port, stale_ttl='"0s"', stale_if_error='"300s"', retry=retry) +
                route("byauth", "/byauth", port, key='["path", "header:Authorization"]'))

    def test_stale_while_revalidate_answers_at_once_and_refreshes_once(self):
        target = "/api/swr" + q(cc="max-age=0, stale-while-revalidate=60")
        _, _, first = self.gw.get(target)
        before = self.gw.stats()["routes"]["api"]
        self.up.hold("/api/swr")  # the refresh waits at the upstream until released
        try:
            answers = self.gw.herd([target] * 20)
            # Answered while the refresh cannot have finished: nobody waited for it.
            self.assertEqual({(a[1]["x-cache"], a[2]) for a in answers}, {("STALE", first)})
            self.assertTrue(self.up.wait_held("/api/swr", 1), "a refresh started")
        finally:
            self.up.release("/api/swr")
        # Every refresh the herd started was in flight before its stale answer was sent; once
        # the gateway has none in flight, each has been to the upstream. (No request here: with
        # max-age=0, one would start the next refresh.)
        self.assertTrue(eventually(lambda: self.gw.stats()["in_flight"] == 0))
        self.assertEqual(self.up.count(target), 2, "exactly one background refresh")
        after = self.gw.stats()["routes"]["api"]
        self.assertEqual(after["upstream_requests"] - before["upstream_requests"], 1)
        self.assertEqual(after["stale_hits"] - before["stale_hits"], 20)
        # The refresh, answered only after the herd was, is what the cache holds now.
        self.assertEqual(json.loads(self.gw.get(target)[2])["n"], 2)

    def test_stale_if_error_serves_the_old_answer_when_the_upstream_fails(self):
        target = "/sie/item" + q(cc="max-age=0")
        s, h, body = self.gw.get(target)
        self.assertEqual((s, h["x-cache"]), (200, "MISS"))
        self.gw_down(True)
        try:
            s2, h2, body2 = self.gw.get(target)
        finally:
            self.gw_down(False)
        self.assertEqual((s2, h2["x-cache"], body2), (200, "STALE", body))

    def test_revalidation_with_etag_and_304_renews_the_entry(self):
        target = "/api/etag" + q(etag='"v1"', cc="max-age=0, stale-while-revalidate=60")
        self.gw.get(target)
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "STALE")
        self.assertTrue(eventually(lambda: self.up.state.not_modified == 1))
        self.assertEqual(self.up.state.headers_seen[-1].get("if-none-match"), '"v1"')

    def test_no_store_private_and_set_cookie_are_never_stored(self):
        for params in ({"cc": "no-store"}, {"cc": "private, max-age=60"}, {"cookie": "1"}):
            target = "/api/ns" + q(**params)
            self.gw.get(target)
            self.gw.get(target)
            self.assertEqual(self.up.count(target), 2, params)

    def test_private_answer_sends_the_herd_upstream_in_parallel(self):
        target = "/api/private" + q(cc="private")
        before = self.gw.stats()["routes"]["api"]["total_requests"]
        self.up.hold("/api/private")
        answers = []
        herd = threading.Thread(target=lambda: answers.extend(self.gw.herd([target] * 20)))
        herd.start()
        try:
            self.assertTrue(self.up.wait_held("/api/private", 1))
            # The whole herd has reached the gateway and waits on the one fetch (a latecomer
            # would otherwise start a fetch of its own that others could join).
            arrived = lambda: self.gw.stats()["routes"]["api"]["total_requests"] - before
            self.assertTrue(eventually(lambda: arrived() >= 20, timeout=60),
                            f"{arrived()} of 20 requests reached the gateway")
            self.up.release("/api/private", n=1)  # the first answer is private: nobody shares it
            # Waiters go upstream together, not one by one: all of them are there at once.
            self.assertTrue(self.up.wait_held("/api/private", 19),
                            f"{self.up.state.held_count('/api/private')} of 19 at the upstream")
        finally:
            self.up.release("/api/private")
            herd.join(timeout=60)
        self.assertEqual([a[0] for a in answers], [200] * 20)
        self.assertEqual(len({json.loads(a[2])["n"] for a in answers}), 20, "each its own answer")
        self.assertEqual(self.up.count(target), 20)
        # Remembered as pass-through: the next request does not queue behind a fetch.
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "PASS")

    def test_authorization_bypasses_the_cache_unless_the_route_keys_on_it(self):
        for _ in range(2):
            s, h, _ = self.gw.get("/api/auth", {"Authorization": "Bearer a"})
            self.assertEqual(h["x-cache"], "PASS")
        self.assertEqual(self.up.count("/api/auth"), 2)
        _, h1, b1 = self.gw.get("/byauth/x", {"Authorization": "Bearer a"})
        _, h2, b2 = self.gw.get("/byauth/x", {"Authorization": "Bearer b"})
        _, h3, b3 = self.gw.get("/byauth/x", {"Authorization": "Bearer a"})
        self.assertEqual((h1["x-cache"], h2["x-cache"], h3["x-cache"]), ("MISS", "MISS", "HIT"))
        self.assertEqual(b3, b1)
        self.assertNotEqual(b1, b2)

    def test_vary_keys_on_the_named_request_headers(self):
        target = "/api/vary" + q(vary="Accept-Language")
        def get(lang):
            s, h, body = self.gw.get(target, {"Accept-Language": lang})
            return h["x-cache"], json.loads(body)["varied"]
        self.assertEqual(get("en"), ("MISS", "en"))  # learns the Vary and stores this variant
        self.assertEqual(get("en"), ("HIT", "en"))
        self.assertEqual(get("fr"), ("MISS", "fr"))
        self.assertEqual(get("fr"), ("HIT", "fr"))
        self.assertEqual(get("en"), ("HIT", "en"))

    def test_herd_on_an_unlearned_vary_never_gets_another_variant(self):
        target = "/api/vary-herd" + q(vary="Accept-Language")
        langs = ["de", "en"] * 10
        answers = held_herd(self.gw, self.up, "/api/vary-herd", "api", [target] * 20,
                            headers=[f"Accept-Language: {l}\r\n" for l in langs])
        self.assertEqual([json.loads(a[2])["varied"] for a in answers], langs)

    def gw_down(self, on):
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.up.port}/__down?on={1 if on else 0}", method="POST")).read()


class Failures(GatewayCase):
    # These tests fail on purpose; the breaker (tested on its own below) is kept out of the way.
    NO_BREAKER = '{ failure_rate = 1.0, window = 1000, min_calls = 1000 }'

    @classmethod
    def routes(cls, port):
        return (route("api", "/api", port, breaker=cls.NO_BREAKER,
                      retry='{ attempts = 3, base = "10ms", cap = "50ms", budget = 10.0 }') +
                route("waits", "/waits", port, max_wait='"300ms"', timeout='"30s"',
                      breaker=cls.NO_BREAKER))

    def control(self, path):
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.up.port}{path}", method="POST")).read()

    def test_retries_recover_a_flaky_upstream(self):
        self.control("/__fail?n=2&status=503")
        s, h, _ = self.gw.get("/api/flaky")
        self.assertEqual((s, h["x-cache"]), (200, "MISS"))
        self.assertEqual(self.up.count("/api/flaky"), 3)

    def test_max_wait_gives_504_and_the_fetch_still_fills_the_cache(self):
        target = "/waits/slow"
        self.up.hold(target)  # until the caller has given up
        try:
            s, _, _ = self.gw.get(target)
            self.assertEqual(s, 504)
        finally:
            self.up.release(target)
        self.assertTrue(eventually(lambda: self.gw.get(target)[1].get("x-cache") == "HIT"))
        self.assertEqual(self.up.count(target), 1)

    def test_garbage_reset_and_truncated_answers_are_502_and_never_cached(self):
        for mode in ("garbage", "reset", "truncate"):
            target = "/api/bad" + q(mode=mode)
            for _ in range(2):
                s, h, _ = self.gw.get(target)
                self.assertEqual(s, 502, mode)
            self.assertGreaterEqual(self.up.count(target), 2, mode)

    def test_no_route_is_404(self):
        self.assertEqual(self.gw.get("/nowhere")[0], 404)


class Protocol(GatewayCase):
    """HTTP details that keep connections in step and answers where they belong."""

    @classmethod
    def routes(cls, port):
        return route("api", "/api", port, retry="{ attempts = 1 }")

    def early_hinted(self, target, method="GET", version="1.1", body=b""):
        """The bytes of one exchange: (the interim answers' heads, the final head, its body)."""
        data = self.gw.raw_exchange(
            f"{method} {target} HTTP/{version}\r\nHost: t\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        interim = []
        while data.startswith(b"HTTP/1.1 1"):
            head, _, data = data.partition(b"\r\n\r\n")
            interim.append(head.decode())
        head, _, rest = data.partition(b"\r\n\r\n")
        return interim, head.decode(), rest

    # RFC 9110 §15.2: a proxy forwards 1xx answers, to HTTP/1.1 clients only.
    def test_early_hints_reach_the_client_before_the_answer_on_a_connection_kept_in_step(self):
        for i in range(3):  # the pool reuses one upstream connection for these
            target = "/api/hints" + q(mode="early_hints", i=i)
            interim, head, body = self.early_hinted(target)
            self.assertEqual(len(interim), 1)
            self.assertTrue(interim[0].startswith("HTTP/1.1 103 Early Hints\r\n"))
            self.assertIn("Link: </style.css>; rel=preload", interim[0])
            self.assertTrue(head.startswith("HTTP/1.1 200"), head)
            self.assertEqual(json.loads(body)["target"], target)
        interim, head, _ = self.early_hinted("/api/hints" + q(mode="early_hints", i=9),
                                             version="1.0")
        self.assertEqual((interim, head[:12]), ([], "HTTP/1.1 200"))

    def test_an_early_hints_answer_is_never_cached_the_final_answer_is(self):
        target = "/api/hinted" + q(mode="early_hints", cc="max-age=60")
        interim, h1, b1 = self.early_hinted(target)
        self.assertEqual(len(interim), 1)
        interim, h2, b2 = self.early_hinted(target)
        self.assertEqual(interim, [], "a hit has no early hints")
        self.assertIn("X-Cache: HIT", h2)
        self.assertEqual(b2, b1)
        self.assertNotIn("Link:", h2)  # the 103's fields are not the answer's
        self.assertEqual(self.up.count(target), 1)
        # Passed through: forwarded too.
        interim, head, body = self.early_hinted(target, method="POST", body=b"{}")
        self.assertEqual(len(interim), 1)
        self.assertIn("X-Cache: PASS", head)
        self.assertNotIn("Link:", head)

    def test_head_passed_through_does_not_wait_for_a_body(self):
        # The upstream sends none and keeps the connection: a gateway waiting for one would
        # answer 504 once the attempt's timeout passed.
        s, h, body = self.gw.get("/api/head-pass", {"Cookie": "a=1"}, method="HEAD")
        self.assertEqual((s, h["x-cache"], body), (200, "PASS", b""))

    def test_unknown_methods_are_proxied(self):
        s, h, _ = self.gw.get("/api/m", method="FROB")
        self.assertEqual((s, h["x-cache"]), (501, "PASS"))  # the upstream's own answer

    def test_gateway_made_answers_to_head_have_no_body(self):
        # A second request on the connection: its answer must follow the HEAD answer's header
        # block at once, with nothing (a body) between them.
        data = self.gw.raw_exchange(b"HEAD /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
                                    b"GET /nowhere HTTP/1.1\r\nHost: t\r\nX-Request-Id: next\r\n"
                                    b"Connection: close\r\n\r\n")
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 404"), data)
        self.assertNotIn(b"X-Request-Id: next", head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 404"), "a HEAD answer carries no body")
        self.assertIn(b"X-Request-Id: next", rest.partition(b"\r\n\r\n")[0])

    def test_range_is_not_forwarded_on_the_shared_fetch(self):
        s, h, body = self.gw.get("/api/ranged", {"Range": "bytes=0-3"})
        self.assertEqual((s, body), (206, b'{"ta'))  # cut from the whole answer it fetched
        self.assertNotIn("range", self.up.state.headers_seen[-1])
        self.assertEqual(json.loads(self.gw.get("/api/ranged")[2])["target"], "/api/ranged")

    def test_revalidated_answer_keeps_its_own_cache_control(self):
        target = "/api/nocache" + q(etag='"e1"', cc="no-cache")
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "MISS")
        # no-cache: never served stale, though the route has stale windows; revalidated first.
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "REVALIDATED")
        self.assertEqual(self.up.state.not_modified, 1)
        # Renewed by a 304, a no-cache answer is still never fresh: not a HIT.
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "REVALIDATED")
        self.assertEqual(self.up.state.not_modified, 2)

    def test_purging_a_key_purges_its_vary_variants(self):
        target = "/api/pv" + q(vary="Accept-Language")
        for _ in range(2):
            self.gw.get(target, {"Accept-Language": "en"})
        self.assertEqual(self.gw.get(target, {"Accept-Language": "en"})[1]["x-cache"], "HIT")
        s, _, body = self.gw.get("/purge?" + urllib.parse.urlencode({"key": target}),
                                 method="POST", admin=True,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual((s, json.loads(body)["purged"]), (200, 1))
        self.assertEqual(self.gw.get(target, {"Accept-Language": "en"})[1]["x-cache"], "MISS")


class ClientViews(GatewayCase):
    """Conditional and range requests answered from the stored answer (RFC 9110 §13, §14):
    never an upstream call of their own."""

    LM = "Sun, 06 Nov 1994 08:49:37 GMT"

    def target(self, name):
        return f"/api/view/{name}" + q(etag='"v1"', lm=self.LM, cc="max-age=600")

    def assert_not_modified(self, answer, x_cache):
        s, h, body = answer
        self.assertEqual((s, h["x-cache"], body), (304, x_cache, b""))
        self.assertNotIn("content-length", h)
        self.assertNotIn("content-type", h)  # only the fields a 304 sends (§15.4.5)
        self.assertEqual((h["etag"], h["cache-control"], h["last-modified"]),
                         ('"v1"', "max-age=600", self.LM))
        self.assertIn("x-request-id", h)

    def test_if_none_match_is_answered_304_from_the_cache(self):
        target = self.target("inm")
        self.assert_not_modified(self.gw.get(target, {"If-None-Match": '"v1"'}), "MISS")
        self.assert_not_modified(self.gw.get(target, {"If-None-Match": 'W/"x", W/"v1"'}), "HIT")
        s, h, body = self.gw.get(target, {"If-None-Match": '"v0"'})
        self.assertEqual((s, h["x-cache"], int(h["content-length"])), (200, "HIT", len(body)))
        self.assertEqual(json.loads(body)["n"], 1)
        self.assertEqual(self.up.count(target), 1)
        self.assertNotIn("if-none-match", self.up.state.headers_seen[-1])

    def test_a_stale_answer_is_answered_304_too(self):
        target = "/api/view/stale" + q(etag='"v1"', lm=self.LM,
                                        cc="max-age=0, stale-while-revalidate=600")
        self.gw.get(target)
        s, h, body = self.gw.get(target, {"If-None-Match": '"v1"'})
        self.assertEqual((s, h["x-cache"], body), (304, "STALE", b""))

    def test_if_modified_since_is_answered_304_unless_modified_after_it(self):
        target = self.target("ims")
        self.gw.get(target)
        self.assert_not_modified(self.gw.get(target, {"If-Modified-Since": self.LM}), "HIT")
        self.assert_not_modified(
            self.gw.get(target, {"If-Modified-Since": "Sunday, 06-Nov-94 08:49:37 GMT"}), "HIT")
        earlier = "Sun, 06 Nov 1994 08:49:36 GMT"
        self.assertEqual(self.gw.get(target, {"If-Modified-Since": earlier})[0], 200)
        self.assertEqual(self.gw.get(target, {"If-Modified-Since": "not a date"})[0], 200)
        # If-None-Match decides alone when both are sent (§13.1.3).
        both = {"If-None-Match": '"v0"', "If-Modified-Since": self.LM}
        self.assertEqual(self.gw.get(target, both)[0], 200)
        self.assertEqual(self.up.count(target), 1)

    def test_a_herd_gets_each_its_own_form_of_one_fetch(self):
        target = self.target("herd")
        headers = ['If-None-Match: "v1"\r\n', "Range: bytes=0-9\r\n"] + [""] * 18
        answers = held_herd(self.gw, self.up, "/api/view/herd", "api", [target] * 20, headers)
        self.assertEqual(self.up.count(target), 1)
        self.assertEqual((answers[0][0], answers[0][2]), (304, b""))
        self.assertNotIn("content-length", answers[0][1])
        whole = answers[2][2]
        self.assertEqual(answers[1][0], 206)
        self.assertEqual(answers[1][2], whole[:10])
        self.assertEqual(answers[1][1]["content-range"], f"bytes 0-9/{len(whole)}")
        self.assertEqual([a[0] for a in answers[2:]], [200] * 18)
        self.assertEqual({a[2] for a in answers[2:]}, {whole})
        self.assertEqual(json.loads(whole)["target"], target)

    def test_a_byte_range_is_a_206_slice_of_the_stored_answer(self):
        target = self.target("range")
        whole = self.gw.get(target)[2]
        n = len(whole)
        for spec, first, last in (("bytes=0-3", 0, 3), ("bytes=5-", 5, n - 1),
                                  ("bytes=-7", n - 7, n - 1), ("bytes=2-99999", 2, n - 1)):
            s, h, body = self.gw.get(target, {"Range": spec})
            self.assertEqual((s, h["x-cache"]), (206, "HIT"), spec)
            self.assertEqual(h["content-range"], f"bytes {first}-{last}/{n}", spec)
            self.assertEqual(body, whole[first:last + 1], spec)
            self.assertEqual(int(h["content-length"]), last - first + 1)
            self.assertEqual((h["etag"], h["content-type"]), ('"v1"', "application/json"))
        self.assertEqual(self.up.count(target), 1)

    def test_an_unsatisfiable_range_is_416_with_the_length(self):
        target = self.target("416")
        n = len(self.gw.get(target)[2])
        s, h, body = self.gw.get(target, {"Range": f"bytes={n}-"})
        self.assertEqual((s, h["content-range"], body), (416, f"bytes */{n}", b""))

    def test_ranges_the_gateway_does_not_serve_are_ignored(self):
        target = self.target("ignored")
        whole = self.gw.get(target)[2]
        for spec in ("bytes=0-1,4-5", "items=0-1", "bytes=5-2", "bytes=x-"):
            s, h, body = self.gw.get(target, {"Range": spec})
            self.assertEqual((s, body), (200, whole), spec)
            self.assertNotIn("content-range", h)
        # HEAD has no range handling (§14.2): its Range is ignored too.
        s, h, body = self.gw.get(target, {"Range": "bytes=0-1"}, method="HEAD")
        self.assertEqual((s, body, int(h["content-length"])), (200, b"", len(whole)))

    def test_if_range_honours_the_range_only_for_the_current_answer(self):
        target = self.target("ifrange")
        whole = self.gw.get(target)[2]
        ranged = lambda v: self.gw.get(target, {"Range": "bytes=0-1", "If-Range": v})
        self.assertEqual(ranged('"v1"')[:3:2], (206, whole[:2]))
        self.assertEqual(ranged(self.LM)[:3:2], (206, whole[:2]))
        self.assertEqual(ranged('"v0"')[:3:2], (200, whole))
        self.assertEqual(ranged('W/"v1"')[:3:2], (200, whole))  # weak: never for ranges
        self.assertEqual(ranged("Mon, 07 Nov 1994 08:49:37 GMT")[:3:2], (200, whole))

    def test_a_matching_condition_wins_over_a_range(self):
        target = self.target("both")
        self.gw.get(target)
        self.assert_not_modified(
            self.gw.get(target, {"If-None-Match": '"v1"', "Range": "bytes=0-1"}), "HIT")


class Invalidation(GatewayCase):
    """A successful unsafe request makes the next GET of what it changed a miss (RFC 9111 §4.4)."""

    def cached(self, target):
        """Fetches `target` until the cache answers it; the upstream's count for it then."""
        self.gw.get(target)
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        return self.up.count(target)

    def test_a_successful_unsafe_request_invalidates_its_target(self):
        for method in ("DELETE", "POST", "PUT", "PATCH"):
            target = f"/api/inv/{method.lower()}"
            calls = self.cached(target)
            s, h, _ = self.gw.get(target, method=method, body=b"{}")
            self.assertEqual((s, h["x-cache"]), (200, "PASS"), method)
            s, h, _ = self.gw.get(target)
            self.assertEqual((s, h["x-cache"]), (200, "MISS"), method)
            self.assertEqual(self.up.count(target), calls + 2, method)  # the unsafe one, the GET

    def test_a_created_resources_location_is_invalidated(self):
        created = "/api/inv/items/7"
        calls = self.cached(created)
        post = "/api/inv/items" + q(status=201, hdr="Location:/api/inv/items/7")
        self.assertEqual(self.gw.get(post, method="POST", body=b"{}")[0], 201)
        self.assertEqual(self.gw.get(created)[1]["x-cache"], "MISS")
        self.assertEqual(self.up.count(created), calls + 1)

    def test_same_host_absolute_locations_are_invalidated_other_hosts_never(self):
        ours, theirs = "/api/inv/ours", "/api/inv/theirs"
        self.cached(ours), self.cached(theirs)
        for where in (f"http://127.0.0.1:{self.gw.port}{ours}", f"http://other.test{theirs}",
                      f"http://127.0.0.1:{self.up.port}{theirs}"):
            post = "/api/inv/make" + q(status=201, hdr=f"Content-Location:{where}")
            self.assertEqual(self.gw.get(post, method="POST", body=b"{}")[0], 201)
        self.assertEqual(self.gw.get(ours)[1]["x-cache"], "MISS")
        self.assertEqual(self.gw.get(theirs)[1]["x-cache"], "HIT")

    def test_a_failed_unsafe_request_invalidates_nothing(self):
        target = "/api/inv/failed"
        calls = self.cached(target)
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.up.port}/__fail" + q(n=1, status=500), method="POST")).read()
        self.assertEqual(self.gw.get(target, method="DELETE")[0], 500)
        for status in (404, 409):
            failing = "/api/inv/other" + q(status=status, hdr=f"Location:{target}")
            self.assertEqual(self.gw.get(failing, method="PUT", body=b"{}")[0], status)
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")
        self.assertEqual(self.up.count(target), calls + 1)  # the DELETE only


class SaturatedPool(unittest.TestCase):
    def test_gateway_survives_callers_giving_up_while_queued_for_a_connection(self):
        up = Upstream()
        gw = Gateway(route("api", "/api", up.port, max_wait='"300ms"', timeout='"300ms"',
                           retry='{ attempts = 2, base = "10ms", cap = "10ms", budget = 10.0 }',
                           breaker='{ failure_rate = 1.0, window = 1000, min_calls = 1000 }'),
                     server_extra="upstream_connections = 1")
        try:
            up.hold("/api/slow/*")  # answered only after every caller gave up
            targets = [f"/api/slow/{i}" for i in range(8)]
            answers = gw.herd(targets)
            self.assertTrue(all(a[0] in (502, 504) for a in answers), [a[0] for a in answers])
            up.release("/api/slow/*")  # the late answers arrive on connections given up on
            s, _, body = gw.get("/api/after")
            self.assertEqual((s, json.loads(body)["target"]), (200, "/api/after"))
            self.assertIsNone(gw.proc.poll())
        finally:
            gw.stop()
            up.stop()


class Breaker(unittest.TestCase):
    def test_open_fast_503_without_upstream_call_then_half_open_then_closed(self):
        up = Upstream()
        gw = Gateway(route("b", "/b", up.port, retry="{ attempts = 1 }", stale_if_error='"0s"',
                           breaker='{ failure_rate = 0.5, window = 4, min_calls = 4, '
                                   'open_for = "1s", half_open_calls = 1 }'))
        try:
            up.state.down = True
            for i in range(4):
                self.assertEqual(gw.get(f"/b/{i}")[0], 503)
            calls = up.state.total
            s, h, _ = gw.get("/b/next")  # answered by the gateway: the upstream is not asked
            self.assertEqual(s, 503)
            self.assertIn("retry-after", h)
            self.assertEqual(up.state.total, calls, "no upstream call while open")
            health = json.loads(gw.get("/health", admin=True)[2])
            self.assertEqual(list(health["upstreams"].values()), ["open"])
            up.state.down = False
            # open_for is 1 s of real time; the half-open probe then succeeds and closes it.
            self.assertTrue(eventually(lambda: gw.get("/b/probe")[0] == 200, timeout=30))
            health = json.loads(gw.get("/health", admin=True)[2])
            self.assertEqual(list(health["upstreams"].values()), ["closed"])
        finally:
            gw.stop()
            up.stop()


class Admin(GatewayCase):
    def test_stats_health_metrics(self):
        self.gw.get("/api/s1")
        self.gw.get("/api/s1")
        s, _, body = self.gw.get("/stats", admin=True)
        stats = json.loads(body)
        for field in ("total_requests", "cache_hits", "stale_hits", "coalesced_requests",
                      "upstream_requests", "api_calls_saved", "hit_rate_percent", "in_flight",
                      "retries", "breakers", "routes"):
            self.assertIn(field, stats)
        self.assertGreaterEqual(stats["routes"]["api"]["cache_hits"], 1)
        s, _, body = self.gw.get("/health", admin=True)
        self.assertEqual((s, json.loads(body)["status"]), (200, "ok"))
        s, h, body = self.gw.get("/metrics", admin=True)
        self.assertEqual(s, 200)
        self.assertIn(b'unherd_requests_total{cache="hit",route="api"}', body)

    def test_admin_posts_need_the_token(self):
        self.assertEqual(self.gw.get("/stats/reset", method="POST", admin=True)[0], 401)
        self.assertEqual(self.gw.get("/purge?prefix=/api", method="POST", admin=True,
                                     headers={"Authorization": "Bearer wrong"})[0], 401)

    def test_purge_by_key_and_prefix_and_reset(self):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        self.gw.get("/api/p/1")
        self.gw.get("/api/p/2")
        s, _, body = self.gw.get("/purge?key=/api/p/1", method="POST", admin=True, headers=auth)
        self.assertEqual((s, json.loads(body)["purged"]), (200, 1))
        self.assertEqual(self.gw.get("/api/p/1")[1]["x-cache"], "MISS")
        s, _, body = self.gw.get("/purge?prefix=/api/p/", method="POST", admin=True, headers=auth)
        self.assertEqual(json.loads(body)["purged"], 2)
        self.assertEqual(self.gw.get("/stats/reset", method="POST", admin=True, headers=auth)[0], 200)
        self.assertEqual(json.loads(self.gw.get("/stats", admin=True)[2])["total_requests"], 0)

    def test_access_log_is_json_lines(self):
        self.gw.get("/api/logged", {"X-Request-Id": "log-me"})
        def logged():
            with open(self.gw.access_log) as f:
                return [json.loads(l) for l in f if "log-me" in l]
        self.assertTrue(eventually(lambda: len(logged()) == 1))
        entry = logged()[0]
        for field in ("time", "request_id", "method", "path", "status", "x_cache",
                      "upstream_ms", "total_ms"):
            self.assertIn(field, entry)
        self.assertEqual((entry["status"], entry["x_cache"]), (200, "MISS"))


class BadInput(GatewayCase):
    def test_malformed_request_is_400(self):
        self.assertEqual(self.gw.raw(b"NOT A REQUEST\r\n\r\n"), 400)

    def test_oversized_header_block_is_431(self):
        self.assertEqual(self.gw.raw(b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 +
                                     b"\r\n\r\n"), 431)

    def test_oversized_body_is_413(self):
        self.assertEqual(self.gw.raw(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000"
                                     b"\r\n\r\nabc"), 413)

    def test_request_smuggling_attempts_are_400(self):
        self.assertEqual(self.gw.raw(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\nabc"), 400)
        self.assertEqual(self.gw.raw(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                     b"Content-Length: 4\r\n\r\nabcd"), 400)
        self.assertEqual(self.up.count("/api/x"), 0)

    def test_bad_config_exits_2_naming_key_and_line(self):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('[[routes]]\nname = "a"\nprefix = "/"\nupstream = "http://127.0.0.1:1"\n'
                    'fresh_tll = "1s"\n')
        for cmd in ("check", "serve"):
            r = subprocess.run([BIN, cmd, "--config", f.name], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 2, cmd)
            self.assertIn(":5:", r.stderr)
            self.assertIn("routes[0].fresh_tll", r.stderr)
        os.unlink(f.name)


class Poisoning(GatewayCase):
    """No request may be answered with what another request was answered, unless the upstream
    could not tell the two apart; no one's private answer goes to anyone else."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.failing = Upstream()  # its own breaker: the error answers below must not trip ours
        cls.gw = Gateway(
            route("api", "/api", cls.up.port) +
            route("err", "/err", cls.failing.port, retry='{ attempts = 1 }', timeout='"30s"',
                  max_wait='"30s"',
                  breaker='{ window = 1000, min_calls = 1000 }') +
            route("tenant", "/tenant", cls.up.port,
                  key='["path", "header:X-Tenant", "query:echo"]') +
            route("product", "/product", cls.up.port, key='["path", "query:productId"]') +
            # An operator's word that the origin's answer does not depend on X-Cc: forwarded.
            route("hfp", "/hfp", cls.up.port, forward_headers='["X-Cc"]'),
            server_extra='max_header_bytes = "64KiB"')

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.failing.stop()

    def test_repeated_header_lines_do_not_share_a_key_with_the_first_line(self):
        target = "/tenant/t" + q(echo="X-Tenant")
        attacker = self.gw.raw_exchange(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\n"
                                        b"X-Tenant: en\r\nX-Tenant: evil\r\n"
                                        b"Connection: close\r\n\r\n")
        self.assertIn(b'"echo": ["en", "evil"]', attacker)
        s, h, body = self.gw.get(target, {"X-Tenant": "en"})
        self.assertEqual(json.loads(body)["echo"], ["en"])
        self.assertEqual(h["x-cache"], "MISS")

    def test_learned_vary_keys_on_every_line(self):
        target = "/api/v" + q(vary="X-Lang", echo="X-Lang", cc="max-age=600")
        self.gw.get(target, {"X-Lang": "en"})  # learns the Vary
        attack = (b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\nX-Lang: en\r\n"
                  b"X-Lang: evil\r\nConnection: close\r\n\r\n")
        for _ in range(2):
            self.assertIn(b'"echo": ["en", "evil"]', self.gw.raw_exchange(attack))
        for _ in range(2):
            s, h, body = self.gw.get(target, {"X-Lang": "en"})
            self.assertEqual(json.loads(body)["echo"], ["en"])

    def test_a_repeated_keyed_query_parameter_is_keyed_on_every_value(self):
        for attack in ("productId=1&productId=666", "productId=1&product%49d=666"):
            with self.subTest(attack=attack):
                base = f"/product/p{len(attack)}"
                s, h, body = self.gw.get(base + "?" + attack)
                self.assertEqual(h["x-cache"], "MISS")
                s, h, body = self.gw.get(base + "?productId=1")
                self.assertEqual(h["x-cache"], "MISS")
                self.assertEqual(json.loads(body)["query"], {"productId": ["1"]})

    def test_names_that_decode_alike_keep_their_order_in_the_key(self):
        first = self.gw.get("/api/order?a=1&%61=2")
        second = self.gw.get("/api/order?%61=2&a=1")
        self.assertEqual(second[1]["x-cache"], "MISS")
        self.assertNotEqual(json.loads(first[2])["target"], json.loads(second[2])["target"])

    def test_a_header_the_request_drops_by_connection_is_absent_from_the_key(self):
        target = "/tenant/dropped" + q(echo="X-Tenant")
        attack = (b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\nX-Tenant: victim\r\n"
                  b"Connection: close, X-Tenant\r\n\r\n")
        self.assertIn(b'"echo": null', self.gw.raw_exchange(attack))  # the upstream got none
        s, h, body = self.gw.get(target, {"X-Tenant": "victim"})
        self.assertEqual(json.loads(body)["echo"], ["victim"])
        self.assertEqual(h["x-cache"], "MISS")

    def test_query_parameters_the_key_leaves_out_are_not_forwarded(self):
        s, h, body = self.gw.get("/product/reflect?productId=1&callback=alert(document.domain)")
        self.assertEqual(json.loads(body)["query"], {"productId": ["1"]})
        s, h, body = self.gw.get("/product/reflect?productId=1")
        self.assertEqual(h["x-cache"], "HIT")
        self.assertNotIn(b"alert", body)

    def test_dot_segments_are_refused(self):
        for target in ("/api/../tenant/x", "/api/%2e%2e/tenant/x", "/api/./x"):
            self.assertEqual(self.gw.get(target)[0], 400, target)
        self.assertEqual(self.up.count("/tenant/x"), 0)

    def test_an_answer_that_may_not_be_stored_is_not_given_to_waiters(self):
        target = "/err/forbidden" + q(status=403)
        answers = held_herd(self.gw, self.failing, "/err/forbidden", "err", [target] * 10)
        self.assertEqual({a[0] for a in answers}, {403})
        self.assertNotIn("COALESCED", {a[1]["x-cache"] for a in answers})
        self.assertEqual(self.failing.count(target), 10, "each asks for its own")

    def test_one_private_answer_does_not_keep_a_key_out_of_the_cache(self):
        # The upstream's Cache-Control follows a header the key ignores (and the route forwards):
        # anyone can provoke one private answer, and the key is marked hit-for-pass. The next
        # shareable answer ends it.
        target = "/hfp/x" + q(cc="max-age=600")
        self.assertEqual(self.gw.get(target, {"X-Cc": "private"})[1]["x-cache"], "MISS")
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "PASS")  # marked: passes once
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "MISS")  # cached again
        self.assertEqual(self.gw.get(target)[1]["x-cache"], "HIT")

    def test_thousands_of_query_parameters_are_refused_with_414(self):
        target = "/api/many?" + "&".join(f"k{9999 - i}=1" for i in range(3200))
        s, h, body = self.gw.get(target)
        self.assertEqual(s, 414)
        self.assertEqual(self.up.count(target), 0)

    def test_a_private_error_answer_is_never_shared_with_the_herd(self):
        for params in ({"status": 500, "cookie": 1}, {"status": 429, "cookie": 1},
                       {"status": 503, "cc": "private"}):
            with self.subTest(**params):
                target = "/err/e" + q(**params)
                answers = held_herd(self.gw, self.failing, "/err/e", "err", [target] * 30)
                self.assertEqual({a[0] for a in answers}, {params["status"]})
                self.assertEqual(self.failing.count(target), 30, "each waiter asks for its own")
                if "cookie" in params:
                    cookies = [a[1]["set-cookie"] for a in answers]
                    self.assertEqual(len(set(cookies)), 30, "one session cookie per client")

    def test_the_upstreams_copies_of_the_gateways_own_headers_are_dropped(self):
        target = "/api/own?" + urllib.parse.urlencode(
            {"cc": "max-age=600",
             "hdr": ["X-Request-Id:upstream-id", "X-Cache:HIT", "X-Cache-Tier:disk"]}, doseq=True)
        for expected in ("MISS", "HIT"):
            raw = self.gw.raw_exchange(f"GET {target} HTTP/1.1\r\nHost: t\r\n"
                                       f"X-Request-Id: mine-{expected}\r\n"
                                       "Connection: close\r\n\r\n".encode())
            head = raw.split(b"\r\n\r\n")[0].decode().lower()
            self.assertEqual(head.count("x-request-id:"), 1, head)
            self.assertIn(f"x-request-id: mine-{expected}".lower(), head)
            self.assertEqual(head.count("x-cache:"), 1, head)
            self.assertIn(f"x-cache: {expected}".lower(), head)
            self.assertNotIn("x-cache-tier: disk", head)


class Connections(unittest.TestCase):
    """Keep-alive, pipelining and the idle and send deadlines of client connections."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway(route("api", "/api", cls.up.port),
                         server_extra='idle_timeout = "1s"\nsend_timeout = "1s"')

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.up.stop()

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.gw.port), timeout=10)

    @staticmethod
    def read_until_closed(sock):
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data

    def test_an_idle_connection_is_closed_after_idle_timeout(self):
        with self.connect() as sock:
            sock.settimeout(30)  # far past idle_timeout: a connection left open fails here
            sock.sendall(b"GET /api/idle HTTP/1.1\r\nHost: t\r\n\r\n")  # kept alive
            answer = self.read_until_closed(sock)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1, "closed with nothing more said")

    def test_a_request_head_that_stalls_is_closed(self):
        with self.connect() as sock:
            sock.sendall(b"GET /api/stall HTTP/1.1\r\nHost: t\r\nX-Half: ")
            self.assertEqual(self.read_until_closed(sock), b"")
        self.assertEqual(self.up.count("/api/stall"), 0)

    def test_pipelined_requests_are_answered_in_order_on_one_connection(self):
        self.gw.get("/api/pipe/a")  # cached: the pipeline mixes hits and a miss
        with self.connect() as sock:
            sock.sendall(b"GET /api/pipe/a HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /api/pipe/b HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /api/pipe/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = self.read_until_closed(sock)
        caches = re.findall(rb"X-Cache: (\w+)", data)
        self.assertEqual(caches, [b"HIT", b"MISS", b"HIT"])
        self.assertEqual(data.count(b"HTTP/1.1 200"), 3)
        self.assertIn(b"/api/pipe/b", data.split(b"HTTP/1.1 200")[2])

    def test_many_connections_opened_at_once_are_all_served(self):
        # New connections go to the least-loaded thread: some change threads on the way.
        socks = [self.connect() for _ in range(24)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(f"GET /api/many/{i % 3} HTTP/1.1\r\nHost: t\r\n"
                             "Connection: close\r\n\r\n".encode())
            answers = [self.read_until_closed(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        self.assertTrue(all(a.startswith(b"HTTP/1.1 200") for a in answers))
        self.assertEqual(sum(self.up.count(f"/api/many/{i}") for i in range(3)), 3)


class Lifecycle(unittest.TestCase):
    def setUp(self):
        self.up = Upstream()
        self.gw = Gateway(route("api", "/api", self.up.port))

    def tearDown(self):
        self.gw.stop(signal.SIGKILL)
        self.up.stop()

    def test_sigterm_finishes_requests_in_flight_then_exits_0(self):
        result = {}
        target = "/api/slow"
        self.up.hold(target)  # in flight until the gateway is seen draining
        t = threading.Thread(target=lambda: result.update(answer=self.gw.get(target)))
        t.start()
        try:
            self.assertTrue(self.up.wait_held(target, 1))
            self.gw.send_signal(signal.SIGTERM)
            health = lambda: json.loads(self.gw.get("/health", admin=True)[2])["status"]
            self.assertTrue(eventually(lambda: health() == "draining"))
        finally:
            self.up.release(target)
        t.join(timeout=20)
        self.assertEqual(result["answer"][0], 200)
        code = self.gw.proc.wait(timeout=20)
        self.assertEqual(code, 0, self.gw.proc.stderr.read()[-4000:])

    def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(self):
        self.assertEqual(self.gw.get("/new/x")[0], 404)
        self.gw.write_config(route("api", "/api", self.up.port) + route("new", "/new", self.up.port))
        self.gw.send_signal(signal.SIGHUP)
        self.assertTrue(eventually(lambda: self.gw.get("/new/x")[0] == 200))
        self.gw.write_config(route("api", "/api", self.up.port) + 'bogus = "x"\n')
        self.gw.send_signal(signal.SIGHUP)
        self.assertTrue(self.gw.wait_for_stderr("reload refused"), "the reload was tried")
        self.assertEqual(self.gw.get("/new/y")[0], 200)
        self.assertIsNone(self.gw.proc.poll())


def corrupt_everywhere(store_dir, needle):
    """Overwrites a byte in every copy of `needle` in the store's data file (LMDB copies pages on
    write, so older copies can linger in free pages). Returns how many copies it found."""
    path = os.path.join(store_dir, "data.mdb")
    with open(path, "r+b") as f:
        data = f.read()
        found, at = 0, data.find(needle)
        while at != -1:
            f.seek(at + len(needle) // 2)
            f.write(b"#")
            found += 1
            at = data.find(needle, at + 1)
    return found


class Store(unittest.TestCase):
    """The disk tier: restarts, crashes, corruption, a broken store, the budget, a full disk.
    Every gateway here runs on a store directory of the test's own."""

    def setUp(self):
        self.up = Upstream()
        self.gateways = []
        self.store = os.path.join(tempfile.mkdtemp(prefix="unherd-store-"), "cache")

    def tearDown(self):
        for gw in self.gateways:
            gw.stop(signal.SIGKILL)
        self.up.stop()
        shutil.rmtree(os.path.dirname(self.store), ignore_errors=True)

    def start(self, cache_extra="", **kw):
        routes = (route("api", "/api", self.up.port) +
                  route("short", "/short", self.up.port, stale_ttl='"0s"',
                        stale_if_error='"0s"'))
        gw = Gateway(routes, cache_extra=cache_extra, store_dir=self.store, **kw)
        self.gateways.append(gw)
        return gw

    def disk(self, gw):
        return gw.stats()["tiers"]["disk"]

    def test_a_restart_answers_from_disk_without_calling_upstream(self):
        targets = [f"/api/item/{i}" for i in range(100)]
        gw = self.start()
        first = {t: gw.get(t) for t in targets}
        self.assertEqual({a[1]["x-cache"] for a in first.values()}, {"MISS"})
        self.assertEqual(gw.stop(signal.SIGTERM), 0)  # no wait for the disk: shutdown drains it

        calls = self.up.state.total
        gw = self.start()
        after = {t: gw.get(t) for t in targets}
        self.assertEqual(self.up.state.total, calls, "0 upstream calls after the restart")
        for t, (status, headers, body) in after.items():
            self.assertEqual((status, headers["x-cache"], headers["x-cache-tier"]),
                             (200, "HIT", "disk"), t)
            self.assertEqual(body, first[t][2], t)
            self.assertIn("age", headers)
        again = gw.get(targets[0])
        self.assertEqual((again[1]["x-cache"], again[1]["x-cache-tier"]), ("HIT", "memory"))
        disk = self.disk(gw)
        self.assertEqual((disk["hits"], disk["entries"]), (100, 100))

    def test_after_a_restart_expired_entries_are_not_fresh_and_stale_rules_apply(self):
        gone = "/short/gone" + q(cc="max-age=1")
        stale = "/short/stale" + q(cc="max-age=1, stale-while-revalidate=300")
        clock = "/short/clock" + q(cc="max-age=1")  # stored last: the last of the three to expire
        gw = self.start()
        dated = [parsedate_to_datetime(gw.get(t)[1]["date"]) for t in (gone, stale)]
        # Real processes, real clock. Ages count in whole seconds, so an answer dated second D
        # with max-age=1 is fresh until at most D + 2. Once the gateway fetches `clock` again (a
        # MISS: no stale window on this route) with a Date two seconds past the others', both
        # have run out.
        def clock_past_the_others():
            _, h, _ = gw.get(clock)
            return h["x-cache"] == "MISS" and (
                parsedate_to_datetime(h["date"]) - max(dated)).total_seconds() >= 2
        self.assertTrue(eventually(clock_past_the_others))
        gw.stop(signal.SIGTERM)

        gw = self.start()
        status, headers, _ = gw.get(gone)
        self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
        self.assertEqual(self.up.count(gone), 2)
        status, headers, _ = gw.get(stale)
        self.assertEqual((status, headers["x-cache"], headers["x-cache-tier"]),
                         (200, "STALE", "disk"))
        self.assertGreaterEqual(int(headers["age"]), 1)
        self.assertTrue(eventually(lambda: self.up.count(stale) == 2), "one background refresh")
        self.assertTrue(eventually(lambda: gw.get(stale)[1]["x-cache"] == "HIT"))
        # (A refreshed answer whose fetch straddles a second is stale on arrival, and the next
        # request refreshes again: so at least, not exactly, the one.)
        self.assertGreaterEqual(self.up.count(stale), 2)

    def test_kill_9_under_load_then_restart_serves_whole_entries_only(self):
        targets = [f"/api/load/{i}" + q(pad=2000) for i in range(200)]
        gw = self.start()
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    gw.herd(targets[:100])
                    gw.herd(targets[100:])
                except Exception:
                    return  # the gateway was killed under us

        t = threading.Thread(target=load)
        t.start()
        self.assertTrue(eventually(lambda: self.disk(gw)["entries"] >= 100, timeout=30))
        gw.proc.kill()  # SIGKILL: no drain, no sync
        gw.proc.wait()
        stop.set()
        t.join(timeout=60)

        calls_before = self.up.state.total
        gw = self.start()
        answers = gw.herd(targets)
        tiers = [h.get("x-cache-tier") for _, h, _ in answers]
        self.assertGreaterEqual(tiers.count("disk"), 100)
        for target, (status, headers, body) in zip(targets, answers):
            self.assertEqual(status, 200)
            doc = json.loads(body)  # whole: every answer parses, and is this target's
            self.assertEqual(doc["target"], target)
            self.assertEqual(len(doc["pad"]), 2000)
        self.assertEqual(self.up.state.total - calls_before, tiers.count(None))
        self.assertEqual(self.disk(gw)["corrupt"], 0)

    def test_a_corrupt_record_is_a_miss_not_garbage(self):
        target = "/api/precious" + q(pad=300, pad_char="Q")
        gw = self.start()
        good = gw.get(target)[2]
        gw.stop(signal.SIGTERM)
        self.assertGreater(corrupt_everywhere(self.store, b"Q" * 300), 0)

        gw = self.start()
        status, headers, body = gw.get(target)
        self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
        self.assertEqual(len(json.loads(body)["pad"]), 300)
        self.assertNotIn(b"#", body)
        self.assertEqual(self.up.count(target), 2)
        self.assertEqual(self.disk(gw)["corrupt"], 1)
        self.assertNotEqual(body, good)  # a new fetch (n = 2), not the stored bytes

    def test_a_store_that_cannot_be_opened_is_moved_aside_and_the_gateway_serves(self):
        os.makedirs(self.store)
        with open(os.path.join(self.store, "data.mdb"), "wb") as f:
            f.write(b"this is not a database " * 4096)
        gw = self.start()
        aside = [d for d in os.listdir(os.path.dirname(self.store)) if ".broken-" in d]
        self.assertEqual(len(aside), 1)
        self.assertEqual(gw.get("/api/after")[1]["x-cache"], "MISS")
        self.assertEqual(gw.get("/api/after")[1]["x-cache"], "HIT")
        health = json.loads(gw.get("/health", admin=True)[2])
        self.assertEqual(health["tiers"], {"memory": "ok", "disk": "ok"})
        gw.stop()
        self.assertIn(self.store, gw.stderr_text)  # diagnostics go to stderr
        self.assertIn("moved it to", gw.stderr_text)

    def test_a_store_cut_short_at_rest_is_set_aside_not_read(self):
        targets = [f"/api/cut/{i}" + q(pad=3000) for i in range(100)]
        gw = self.start()
        for t in targets:
            gw.get(t)
        self.assertEqual(gw.stop(signal.SIGTERM), 0)
        data = os.path.join(self.store, "data.mdb")
        os.truncate(data, os.path.getsize(data) // 3)  # reading past the cut would be SIGBUS

        gw = self.start()
        for t in targets:
            status, headers, body = gw.get(t)
            self.assertEqual((status, headers["x-cache"]), (200, "MISS"), t)
            self.assertEqual(json.loads(body)["target"], t)
        self.assertIsNone(gw.proc.poll())
        health = json.loads(gw.get("/health", admin=True)[2])
        self.assertEqual((health["status"], health["tiers"]["disk"]), ("ok", "ok"))
        gw.stop()
        self.assertIn("damaged", gw.stderr_text)  # diagnostics go to stderr
        self.assertIn("moved it to", gw.stderr_text)

    def test_a_store_the_gateway_may_not_open_is_left_untouched_and_health_is_degraded(self):
        gw = self.start()
        gw.get("/api/warm")
        self.assertEqual(gw.stop(signal.SIGTERM), 0)
        before = sorted(os.listdir(self.store))
        os.chmod(self.store, 0)

        def as_a_plain_user():
            # Root reads through file modes; without these two capabilities it does not.
            import ctypes
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: gone once exec recomputes them

        gw = self.start(preexec_fn=as_a_plain_user)
        self.assertEqual(gw.get("/api/cold")[1]["x-cache"], "MISS")
        self.assertEqual(gw.get("/api/cold")[1]["x-cache"], "HIT")  # from memory
        status, _, body = gw.get("/health", admin=True)
        health = json.loads(body)
        self.assertEqual((status, health["status"], health["tiers"]["disk"]),
                         (200, "degraded", "unavailable"))
        self.assertIn(self.store, health["degraded"]["disk"])
        self.assertIn("Permission denied", health["degraded"]["disk"])
        gw.stop(signal.SIGTERM)
        self.assertIn(self.store, gw.stderr_text)
        self.assertIn("Permission denied", gw.stderr_text)

        os.chmod(self.store, 0o700)
        self.assertEqual(sorted(os.listdir(self.store)), before)
        self.assertEqual([d for d in os.listdir(os.path.dirname(self.store)) if ".broken-" in d],
                         [])
        gw = self.start()
        self.assertEqual(gw.get("/api/warm")[1].get("x-cache-tier"), "disk")

    def test_the_disk_budget_is_kept(self):
        gw = self.start(cache_extra='disk = "256KiB"')
        for i in range(400):
            self.assertEqual(gw.get(f"/api/budget/{i}" + q(pad=1024))[0], 200)
        self.assertTrue(eventually(lambda: self.disk(gw)["writes"] == 400))
        disk = self.disk(gw)
        self.assertLessEqual(disk["bytes"], 256 * 1024)
        self.assertGreater(disk["evictions"], 0)
        self.assertEqual(disk["entries"], 400 - disk["evictions"])
        self.assertEqual(disk["dropped_writes"], 0)
        # The newest are on disk, the oldest went first.
        gw.stop(signal.SIGTERM)
        gw = self.start(cache_extra='disk = "256KiB"')
        self.assertEqual(gw.get("/api/budget/399" + q(pad=1024))[1].get("x-cache-tier"), "disk")
        self.assertEqual(gw.get("/api/budget/0" + q(pad=1024))[1]["x-cache"], "MISS")

    def test_a_full_disk_drops_disk_writes_and_serving_goes_on(self):
        limit = 2 << 20  # files this process writes stop growing at 2 MiB

        def small_disk():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        gw = self.start(preexec_fn=small_disk)
        targets = [f"/api/full/{i}" + q(pad=64 * 1024) for i in range(60)]
        for t in targets:
            self.assertEqual(gw.get(t)[0], 200)
        self.assertTrue(eventually(lambda: self.disk(gw)["dropped_writes"] > 0, timeout=20))
        for t in targets:
            status, headers, body = gw.get(t)
            self.assertEqual((status, headers["x-cache"], headers["x-cache-tier"]),
                             (200, "HIT", "memory"))
        self.assertIsNone(gw.proc.poll())
        self.assertEqual(self.up.state.total, len(targets))


if __name__ == "__main__":
    unittest.main()
